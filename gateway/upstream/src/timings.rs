//! `pier_upstream_request_duration_seconds{upstream}`: how long upstream exchanges take
//! until the response headers (or the failure), per configured upstream.

use std::time::Duration;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::histogram::Histogram;

/// From a few milliseconds (a registry next door) to the client's 30 s timeout.
const BUCKETS: [f64; 13] = [
    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 20.0, 30.0,
];

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct UpstreamLabels {
    upstream: String,
}

/// One histogram family shared by every upstream client (clones share it).
#[derive(Clone)]
pub struct UpstreamTimings(Family<UpstreamLabels, Histogram, fn() -> Histogram>);

impl Default for UpstreamTimings {
    fn default() -> UpstreamTimings {
        UpstreamTimings(Family::new_with_constructor(|| Histogram::new(BUCKETS)))
    }
}

impl UpstreamTimings {
    pub(crate) fn observe(&self, upstream: &str, took: Duration) {
        self.0
            .get_or_create(&UpstreamLabels {
                upstream: upstream.to_owned(),
            })
            .observe(took.as_secs_f64());
    }

    pub fn register(&self, registry: &mut prometheus_client::registry::Registry) {
        registry.register(
            "pier_upstream_request_duration_seconds",
            "Upstream requests until their response headers or failure, by configured \
             upstream",
            self.0.clone(),
        );
    }
}
