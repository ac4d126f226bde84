//! Request metrics, registered in the binary's one Prometheus registry.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

use pier_core::AtomicHistogram;

const BUCKETS: [f64; 10] = [0.0005, 0.001, 0.005, 0.01, 0.05, 0.1, 0.5, 1.0, 5.0, 30.0];

/// The `method` label: the methods HTTP defines, anything else `other`, so a client can't
/// grow the series without bound by inventing method names.
fn method_label(method: &str) -> &'static str {
    const KNOWN: [&str; 9] = [
        "GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS", "TRACE", "CONNECT",
    ];
    KNOWN.into_iter().find(|m| *m == method).unwrap_or("other")
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RequestLabels {
    route: &'static str,
    method: &'static str,
    status: u16,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RouteLabels {
    route: &'static str,
}

type HistogramFamily<S> = Family<S, AtomicHistogram, fn() -> AtomicHistogram>;

/// Counters shared by every connection.
pub struct Metrics {
    requests: Family<RequestLabels, Counter>,
    durations: HistogramFamily<RouteLabels>,
    /// Requests answered, summed over every label (the admin API's history reads it).
    answered: AtomicU64,
    bytes_sent: Counter,
    bytes_received: Counter,
    in_flight: Gauge,
}

impl Default for Metrics {
    fn default() -> Metrics {
        Metrics {
            requests: Family::default(),
            durations: Family::new_with_constructor(|| AtomicHistogram::new(&BUCKETS)),
            answered: AtomicU64::new(0),
            bytes_sent: Counter::default(),
            bytes_received: Counter::default(),
            in_flight: Gauge::default(),
        }
    }
}

/// Marks a request in flight until dropped.
pub struct InFlight(Arc<Metrics>);

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.in_flight.dec();
    }
}

impl Metrics {
    pub fn start(self: &Arc<Self>) -> InFlight {
        self.in_flight.inc();
        InFlight(self.clone())
    }

    pub fn record(
        &self,
        route: &'static str,
        method: &str,
        status: u16,
        sent: u64,
        received: u64,
        took: Duration,
    ) {
        self.requests
            .get_or_create(&RequestLabels {
                route,
                method: method_label(method),
                status,
            })
            .inc();
        self.durations
            .get_or_create(&RouteLabels { route })
            .observe(took);
        self.answered.fetch_add(1, Ordering::Relaxed);
        self.bytes_sent.inc_by(sent);
        self.bytes_received.inc_by(received);
    }

    /// Requests answered and response bytes sent since start.
    pub fn totals(&self) -> (u64, u64) {
        (self.answered.load(Ordering::Relaxed), self.bytes_sent.get())
    }

    /// Adds the request series to `registry` (they share their values with `self`).
    pub fn register(&self, registry: &mut Registry) {
        registry.register(
            "pier_http_requests",
            "Registry requests by route, method and status",
            self.requests.clone(),
        );
        registry.register(
            "pier_http_request_duration_seconds",
            "Registry request latency by route",
            self.durations.clone(),
        );
        registry.register(
            "pier_http_response_bytes",
            "Bytes of response bodies sent",
            self.bytes_sent.clone(),
        );
        registry.register(
            "pier_http_request_bytes",
            "Bytes of request bodies announced",
            self.bytes_received.clone(),
        );
        registry.register(
            "pier_http_requests_in_flight",
            "Requests being served",
            self.in_flight.clone(),
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_counts() {
        let m = Metrics::default();
        m.record("blob", "GET", 200, 10, 0, Duration::from_millis(2));
        m.record("blob", "GET", 200, 5, 0, Duration::from_millis(2));
        let mut registry = Registry::default();
        m.register(&mut registry);
        let mut text = String::new();
        prometheus_client::encoding::prometheus_text::encode(&mut text, &registry).unwrap();
        assert!(
            text.contains(
                "pier_http_requests_total{route=\"blob\",method=\"GET\",status=\"200\"} 2"
            ),
            "{text}"
        );
        assert!(
            text.contains("# TYPE pier_http_requests_total counter\n"),
            "{text}"
        );
        assert!(text.contains("pier_http_response_bytes_total 15"), "{text}");
        assert!(
            text.contains(
                "pier_http_request_duration_seconds_bucket{route=\"blob\",le=\"0.005\"} 2"
            ),
            "{text}"
        );
        assert!(
            text.contains(
                "pier_http_request_duration_seconds_bucket{route=\"blob\",le=\"0.001\"} 0"
            ),
            "{text}"
        );
        assert_eq!(m.totals(), (2, 15));
    }
}

#[cfg(test)]
mod label_tests {
    #[test]
    fn unknown_methods_share_one_label() {
        assert_eq!(super::method_label("GET"), "GET");
        assert_eq!(super::method_label("PATCH"), "PATCH");
        assert_eq!(super::method_label("XYZZY-1"), "other");
        assert_eq!(super::method_label("get"), "other");
    }
}
