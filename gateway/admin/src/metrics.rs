//! The one metrics registry `/metrics` serves: every part registers its own series (with
//! HELP and TYPE), plus the process's and the build's.

use std::sync::Arc;

use pier_core::{Mirror, Registry};
use pier_http::{AccessControl, Metrics};
use pier_plugin_host::PluginMetrics;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;

/// What registers series.
pub struct Parts<'a> {
    /// `(version, commit)` for `pier_build_info`.
    pub build: (&'static str, &'static str),
    pub metrics: &'a Arc<Metrics>,
    pub registry: &'a Arc<Registry>,
    pub upstreams: &'a pier_upstream::UpstreamTimings,
    pub budgets: &'a pier_upstream::UpstreamBudgets,
    pub mirror: Option<&'a Arc<Mirror>>,
    pub access: Option<&'a Arc<AccessControl>>,
    /// The authorizer plugins' series (the notifiers' and replicators' come with `events`).
    pub authorizers: Vec<Arc<PluginMetrics>>,
    pub events: Option<&'a Arc<pier_dispatch::EventsRuntime>>,
}

pub fn registry(p: Parts<'_>) -> prometheus_client::registry::Registry {
    let mut series = prometheus_client::registry::Registry::default();
    let build = Family::<[(&'static str, &'static str); 2], Gauge>::default();
    let (version, commit) = p.build;
    build
        .get_or_create(&[("version", version), ("commit", commit)])
        .set(1);
    series.register(
        "pier_build_info",
        "Pier's version and the commit it was built from (always 1)",
        build,
    );
    series.register_collector(Box::new(crate::process::ProcessCollector));
    p.metrics.register(&mut series);
    p.registry.register_metrics(&mut series);
    p.upstreams.register(&mut series);
    p.budgets.register(&mut series);
    if let Some(m) = p.mirror {
        m.register_metrics(&mut series);
    }
    if let Some(a) = p.access {
        a.register_metrics(&mut series);
    }
    // Every plugin's series in one set of families; a plugin's counters survive its
    // reloads, so the list taken now stays right.
    let mut plugins = p.authorizers;
    if let Some(e) = p.events {
        e.register_metrics(&mut series);
        plugins.extend(e.plugin_metrics());
    }
    series.register_collector(Box::new(pier_plugin_host::PluginSeries(move || {
        plugins.clone()
    })));
    series
}
