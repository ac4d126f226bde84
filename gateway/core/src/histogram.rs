//! A latency histogram on atomics, for the series observed on every request.
//!
//! prometheus-client's `Histogram` takes a mutex per observation; every request observes
//! one (request latency, storage operations), so on a busy node the two runtime threads
//! queue on it. This one counts with relaxed atomic adds and is read only when `/metrics`
//! is scraped. It is small, fixed-bucket and encodes through prometheus-client's own
//! encoder, so the exposition format stays the crate's.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use prometheus_client::encoding::{EncodeMetric, MetricEncoder, NoLabelSet};
use prometheus_client::metrics::{MetricType, TypedMetric};

/// Durations by fixed upper bounds (seconds, ascending) and `+Inf`; clones share counts.
#[derive(Clone, Debug)]
pub struct AtomicHistogram(Arc<Inner>);

#[derive(Debug)]
struct Inner {
    bounds: &'static [f64],
    /// One per bound, then `+Inf`: the observations that fell into each (not cumulative).
    buckets: Box<[AtomicU64]>,
    sum_nanos: AtomicU64,
}

impl AtomicHistogram {
    pub fn new(bounds: &'static [f64]) -> AtomicHistogram {
        debug_assert!(bounds.windows(2).all(|w| w[0] < w[1]), "bounds ascend");
        AtomicHistogram(Arc::new(Inner {
            bounds,
            buckets: (0..=bounds.len()).map(|_| AtomicU64::new(0)).collect(),
            sum_nanos: AtomicU64::new(0),
        }))
    }

    pub fn observe(&self, took: Duration) {
        let secs = took.as_secs_f64();
        // The first bucket whose bound is >= the value (`le` is inclusive).
        let i = self.0.bounds.partition_point(|b| *b < secs);
        self.0.buckets[i].fetch_add(1, Ordering::Relaxed);
        let nanos = u64::try_from(took.as_nanos()).unwrap_or(u64::MAX);
        self.0.sum_nanos.fetch_add(nanos, Ordering::Relaxed);
    }

    /// `(sum in seconds, count, per-bucket counts with their bounds)`; the count is the
    /// buckets' total, so `_count` always equals the `+Inf` bucket.
    fn snapshot(&self) -> (f64, u64, Vec<(f64, u64)>) {
        let buckets: Vec<(f64, u64)> = (self.0.bounds.iter().copied())
            .chain(std::iter::once(f64::INFINITY))
            .zip(self.0.buckets.iter().map(|b| b.load(Ordering::Relaxed)))
            .collect();
        let count = buckets.iter().map(|(_, n)| n).sum();
        let sum = self.0.sum_nanos.load(Ordering::Relaxed) as f64 / 1e9;
        (sum, count, buckets)
    }
}

impl TypedMetric for AtomicHistogram {
    const TYPE: MetricType = MetricType::Histogram;
}

impl EncodeMetric for AtomicHistogram {
    fn encode(&self, mut encoder: MetricEncoder<'_>) -> Result<(), std::fmt::Error> {
        let (sum, count, buckets) = self.snapshot();
        encoder.encode_histogram::<NoLabelSet>(sum, count, &buckets, None)
    }

    fn metric_type(&self) -> MetricType {
        Self::TYPE
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use prometheus_client::encoding::text::encode;
    use prometheus_client::registry::Registry;

    /// The same text prometheus-client's own histogram gives for the same observations.
    #[test]
    fn encodes_like_the_crates_histogram() {
        const BOUNDS: [f64; 3] = [0.001, 0.01, 0.1];
        let ours = AtomicHistogram::new(&BOUNDS);
        let theirs = prometheus_client::metrics::histogram::Histogram::new(BOUNDS);
        for ms in [0.5, 1.0, 3.0, 10.0, 50.0, 2000.0] {
            ours.observe(Duration::from_secs_f64(ms / 1000.0));
            theirs.observe(ms / 1000.0);
        }
        fn text(m: impl prometheus_client::registry::Metric) -> String {
            let mut r = Registry::default();
            r.register("t", "h", m);
            let mut s = String::new();
            encode(&mut s, &r).unwrap();
            s
        }
        let a = text(ours);
        let b = text(theirs);
        // Sums differ in the last digits (nanoseconds vs f64 seconds); buckets must not.
        let buckets = |s: &str| {
            s.lines()
                .filter(|l| !l.starts_with("t_sum"))
                .map(str::to_owned)
                .collect::<Vec<_>>()
        };
        assert_eq!(buckets(&a), buckets(&b), "ours:\n{a}\ntheirs:\n{b}");
        assert!(a.contains("t_bucket{le=\"0.001\"} 2"), "{a}");
        assert!(a.contains("t_count 6"), "{a}");
    }
}
