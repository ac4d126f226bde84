//! Request metrics in the Prometheus text format.

use std::collections::BTreeMap;
use std::fmt::Write;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

const BUCKETS: [f64; 10] = [0.0005, 0.001, 0.005, 0.01, 0.05, 0.1, 0.5, 1.0, 5.0, 30.0];

#[derive(Default, Clone)]
struct Histogram {
    counts: [u64; BUCKETS.len()],
    count: u64,
    sum: f64,
}

/// The `method` label: the methods HTTP defines, anything else `other`, so a client can't
/// grow the series without bound by inventing method names.
fn method_label(method: &str) -> &'static str {
    const KNOWN: [&str; 9] = [
        "GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS", "TRACE", "CONNECT",
    ];
    KNOWN.into_iter().find(|m| *m == method).unwrap_or("other")
}

/// Counters shared by every connection.
#[derive(Default)]
pub struct Metrics {
    requests: Mutex<BTreeMap<(&'static str, String, u16), u64>>,
    durations: Mutex<BTreeMap<&'static str, Histogram>>,
    bytes_sent: AtomicU64,
    bytes_received: AtomicU64,
    in_flight: AtomicI64,
}

/// Marks a request in flight until dropped.
pub struct InFlight(Arc<Metrics>);

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.in_flight.fetch_sub(1, Ordering::Relaxed);
    }
}

impl Metrics {
    pub fn start(self: &Arc<Self>) -> InFlight {
        self.in_flight.fetch_add(1, Ordering::Relaxed);
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
        *self
            .requests
            .lock()
            .expect("metrics poisoned")
            .entry((route, method_label(method).to_owned(), status))
            .or_default() += 1;
        let secs = took.as_secs_f64();
        let mut d = self.durations.lock().expect("metrics poisoned");
        let h = d.entry(route).or_default();
        for (i, b) in BUCKETS.iter().enumerate() {
            if secs <= *b {
                h.counts[i] += 1;
            }
        }
        h.count += 1;
        h.sum += secs;
        self.bytes_sent.fetch_add(sent, Ordering::Relaxed);
        self.bytes_received.fetch_add(received, Ordering::Relaxed);
    }

    /// Requests answered and response bytes sent since start.
    pub fn totals(&self) -> (u64, u64) {
        let requests = self
            .durations
            .lock()
            .expect("metrics poisoned")
            .values()
            .map(|h| h.count)
            .sum();
        (requests, self.bytes_sent.load(Ordering::Relaxed))
    }

    /// The Prometheus exposition text.
    pub fn render(&self) -> String {
        let mut out = String::new();
        out.push_str(
            "# HELP pier_http_requests_total Registry requests by route, method and status.\n",
        );
        out.push_str("# TYPE pier_http_requests_total counter\n");
        for ((route, method, status), n) in self.requests.lock().expect("metrics poisoned").iter() {
            let _ = writeln!(
                out,
                "pier_http_requests_total{{route=\"{route}\",method=\"{method}\",status=\"{status}\"}} {n}"
            );
        }
        out.push_str(
            "# HELP pier_http_request_duration_seconds Registry request latency by route.\n",
        );
        out.push_str("# TYPE pier_http_request_duration_seconds histogram\n");
        for (route, h) in self.durations.lock().expect("metrics poisoned").iter() {
            for (i, b) in BUCKETS.iter().enumerate() {
                let _ = writeln!(
                    out,
                    "pier_http_request_duration_seconds_bucket{{route=\"{route}\",le=\"{b}\"}} {}",
                    h.counts[i]
                );
            }
            let _ = writeln!(
                out,
                "pier_http_request_duration_seconds_bucket{{route=\"{route}\",le=\"+Inf\"}} {}",
                h.count
            );
            let _ = writeln!(
                out,
                "pier_http_request_duration_seconds_sum{{route=\"{route}\"}} {}",
                h.sum
            );
            let _ = writeln!(
                out,
                "pier_http_request_duration_seconds_count{{route=\"{route}\"}} {}",
                h.count
            );
        }
        let gauges = [
            (
                "pier_http_response_bytes_total",
                "counter",
                "Bytes of response bodies sent.",
                self.bytes_sent.load(Ordering::Relaxed) as i64,
            ),
            (
                "pier_http_request_bytes_total",
                "counter",
                "Bytes of request bodies announced.",
                self.bytes_received.load(Ordering::Relaxed) as i64,
            ),
            (
                "pier_http_requests_in_flight",
                "gauge",
                "Requests being served.",
                self.in_flight.load(Ordering::Relaxed),
            ),
        ];
        for (name, kind, help, v) in gauges {
            let _ = writeln!(
                out,
                "# HELP {name} {help}\n# TYPE {name} {kind}\n{name} {v}"
            );
        }
        out
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
        let text = m.render();
        assert!(
            text.contains(
                "pier_http_requests_total{route=\"blob\",method=\"GET\",status=\"200\"} 2"
            ),
            "{text}"
        );
        assert!(text.contains("pier_http_response_bytes_total 15"), "{text}");
        assert!(
            text.contains(
                "pier_http_request_duration_seconds_bucket{route=\"blob\",le=\"0.005\"} 2"
            )
        );
        assert!(
            text.contains(
                "pier_http_request_duration_seconds_bucket{route=\"blob\",le=\"0.001\"} 0"
            )
        );
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
