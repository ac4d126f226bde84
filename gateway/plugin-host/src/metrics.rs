//! Per-plugin counters and a latency histogram; the binary's metrics registry reads them
//! through [`PluginSeries`].

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use pier_auth::PolicyFailure;
use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric as _};
use prometheus_client::metrics::MetricType;
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::histogram::Histogram;

/// Upper bounds of the latency buckets, in seconds: a warm instance answers in about a
/// microsecond, a plugin calling out over HTTP or hitting its deadline takes seconds.
const BUCKETS: [f64; 12] = [
    0.000_001, 0.000_002, 0.000_005, 0.000_01, 0.000_02, 0.000_05, 0.000_1, 0.001, 0.01, 0.1, 1.0,
    10.0,
];
const FAILURES: [PolicyFailure; 6] = [
    PolicyFailure::Trap,
    PolicyFailure::Timeout,
    PolicyFailure::OutOfMemory,
    PolicyFailure::Overloaded,
    PolicyFailure::Unavailable,
    PolicyFailure::InvalidResult,
];

/// Counters of one plugin (they survive reloads).
pub struct PluginMetrics {
    name: String,
    calls: AtomicU64,
    denials: AtomicU64,
    errors: [AtomicU64; 6],
    instances_created: AtomicU64,
    reloads: AtomicU64,
    duration: Histogram,
    sum_ns: AtomicU64,
}

impl PluginMetrics {
    pub fn new(name: &str) -> PluginMetrics {
        PluginMetrics {
            name: name.to_owned(),
            calls: AtomicU64::new(0),
            denials: AtomicU64::new(0),
            errors: Default::default(),
            instances_created: AtomicU64::new(0),
            reloads: AtomicU64::new(0),
            duration: Histogram::new(BUCKETS),
            sum_ns: AtomicU64::new(0),
        }
    }

    pub(crate) fn call(&self, took: Duration) {
        self.calls.fetch_add(1, Ordering::Relaxed);
        self.duration.observe(took.as_secs_f64());
        self.sum_ns
            .fetch_add(took.as_nanos() as u64, Ordering::Relaxed);
    }

    pub(crate) fn denial(&self) {
        self.denials.fetch_add(1, Ordering::Relaxed);
    }

    pub(crate) fn error(&self, kind: PolicyFailure) {
        if let Some(i) = FAILURES.iter().position(|f| *f == kind) {
            self.errors[i].fetch_add(1, Ordering::Relaxed);
        }
    }

    pub(crate) fn instance_created(&self) {
        self.instances_created.fetch_add(1, Ordering::Relaxed);
    }

    pub(crate) fn reloaded(&self) {
        self.reloads.fetch_add(1, Ordering::Relaxed);
    }

    /// Counts of failures of one kind (tests and the admin API read it).
    pub fn errors(&self, kind: PolicyFailure) -> u64 {
        FAILURES
            .iter()
            .position(|f| *f == kind)
            .map(|i| self.errors[i].load(Ordering::Relaxed))
            .unwrap_or(0)
    }

    pub fn calls(&self) -> u64 {
        self.calls.load(Ordering::Relaxed)
    }

    /// Calls answered with a denial (the admin API reads it).
    pub fn denials(&self) -> u64 {
        self.denials.load(Ordering::Relaxed)
    }

    /// Instances created since start (the admin API reads it).
    pub fn instances_created(&self) -> u64 {
        self.instances_created.load(Ordering::Relaxed)
    }

    /// Versions swapped in since start (the admin API reads it).
    pub fn reloads(&self) -> u64 {
        self.reloads.load(Ordering::Relaxed)
    }

    /// Total time spent in calls, in seconds (the admin API reads it).
    pub fn call_seconds(&self) -> f64 {
        self.sum_ns.load(Ordering::Relaxed) as f64 / 1e9
    }

    /// `(kind, count)` of failures for every kind (the admin API reads it).
    pub fn errors_by_kind(&self) -> Vec<(&'static str, u64)> {
        FAILURES
            .iter()
            .enumerate()
            .map(|(i, f)| (f.as_str(), self.errors[i].load(Ordering::Relaxed)))
            .collect()
    }

    /// This plugin's series alone, in the Prometheus text format (as the binary's
    /// registry encodes them through [`PluginSeries`]; tests read it).
    pub fn render(self: &Arc<Self>, out: &mut String) {
        let me = self.clone();
        let mut registry = prometheus_client::registry::Registry::default();
        registry.register_collector(Box::new(PluginSeries(move || vec![me.clone()])));
        // Writing to a String cannot fail.
        let _ = prometheus_client::encoding::prometheus_text::encode(out, &registry);
    }
}

/// Reads one counter of a plugin.
type Read = fn(&PluginMetrics) -> u64;

/// Every plugin's series (authorizers, notifiers, replicators), each family once with a
/// `plugin` label per plugin; `list` names the plugins when scraped (reloads keep their
/// counters, so the list can be taken fresh each time).
pub struct PluginSeries<F>(pub F);

impl<F> std::fmt::Debug for PluginSeries<F> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("PluginSeries")
    }
}

impl<F> Collector for PluginSeries<F>
where
    F: Fn() -> Vec<Arc<PluginMetrics>> + Send + Sync + 'static,
{
    fn encode(&self, mut encoder: DescriptorEncoder<'_>) -> std::fmt::Result {
        let plugins = (self.0)();
        if plugins.is_empty() {
            return Ok(());
        }
        let counters: [(&str, &str, Read); 5] = [
            ("pier_plugin_calls", "Calls of the plugin.", |m| m.calls()),
            (
                "pier_plugin_denials",
                "Calls the plugin answered with a denial.",
                |m| m.denials(),
            ),
            (
                "pier_plugin_traps",
                "Calls that trapped, timed out or ran out of memory.",
                |m| {
                    [
                        PolicyFailure::Trap,
                        PolicyFailure::Timeout,
                        PolicyFailure::OutOfMemory,
                    ]
                    .iter()
                    .map(|k| m.errors(*k))
                    .sum()
                },
            ),
            (
                "pier_plugin_instances_created",
                "Plugin instances created.",
                |m| m.instances_created(),
            ),
            (
                "pier_plugin_reloads",
                "New versions of the plugin swapped in.",
                |m| m.reloads(),
            ),
        ];
        for (name, help, value) in counters {
            let mut family = encoder.encode_descriptor(name, help, None, MetricType::Counter)?;
            for p in &plugins {
                ConstCounter::new(value(p))
                    .encode(family.encode_family(&[("plugin", p.name.as_str())])?)?;
            }
        }
        let mut family = encoder.encode_descriptor(
            "pier_plugin_errors",
            "Failed plugin calls by kind of failure.",
            None,
            MetricType::Counter,
        )?;
        for p in &plugins {
            for (kind, n) in p.errors_by_kind() {
                ConstCounter::new(n).encode(
                    family.encode_family(&[("plugin", p.name.as_str()), ("kind", kind)])?,
                )?;
            }
        }
        let mut family = encoder.encode_descriptor(
            "pier_plugin_call_duration_seconds",
            "Latency of plugin calls.",
            None,
            MetricType::Histogram,
        )?;
        for p in &plugins {
            p.duration
                .encode(family.encode_family(&[("plugin", p.name.as_str())])?)?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn text(plugins: Vec<Arc<PluginMetrics>>) -> String {
        let mut registry = prometheus_client::registry::Registry::default();
        registry.register_collector(Box::new(PluginSeries(move || plugins.clone())));
        let mut out = String::new();
        prometheus_client::encoding::prometheus_text::encode(&mut out, &registry).unwrap();
        out
    }

    #[test]
    fn each_family_once_with_every_plugin() {
        let a = Arc::new(PluginMetrics::new("a"));
        let b = Arc::new(PluginMetrics::new("b"));
        a.call(Duration::from_micros(3));
        b.call(Duration::from_millis(2));
        b.error(PolicyFailure::Timeout);
        let out = text(vec![a, b]);
        assert_eq!(
            out.matches("# TYPE pier_plugin_calls_total counter\n")
                .count(),
            1,
            "{out}"
        );
        assert!(
            out.contains("pier_plugin_calls_total{plugin=\"a\"} 1\n"),
            "{out}"
        );
        assert!(
            out.contains("pier_plugin_traps_total{plugin=\"b\"} 1\n"),
            "{out}"
        );
        assert!(
            out.contains("pier_plugin_errors_total{plugin=\"b\",kind=\"timeout\"} 1\n"),
            "{out}"
        );
        assert!(
            out.contains("pier_plugin_call_duration_seconds_bucket{plugin=\"a\",le=\"5e-06\"} 1\n"),
            "{out}"
        );
        assert!(
            out.contains("pier_plugin_call_duration_seconds_count{plugin=\"b\"} 1\n"),
            "{out}"
        );
        assert!(
            out.contains("# TYPE pier_plugin_call_duration_seconds histogram\n"),
            "{out}"
        );
    }

    #[test]
    fn label_values_are_escaped() {
        // A plugin's name comes from the configuration: quotes, backslashes and newlines
        // in it must not break the exposition.
        let p = Arc::new(PluginMetrics::new("we\"ird\\na\nme"));
        p.call(Duration::from_micros(1));
        let out = text(vec![p]);
        assert!(
            out.contains("pier_plugin_calls_total{plugin=\"we\\\"ird\\\\na\\nme\"} 1\n"),
            "{out}"
        );
        assert!(!out.contains("we\"ird"), "{out}");
    }
}
