//! Per-plugin counters and a latency histogram, rendered for Prometheus.

use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use pier_auth::PolicyFailure;

/// Upper bounds of the latency buckets, in microseconds.
const BUCKETS_US: [u64; 10] = [1, 2, 5, 10, 20, 50, 100, 1_000, 10_000, 100_000];
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
    buckets: [AtomicU64; 10],
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
            buckets: Default::default(),
            sum_ns: AtomicU64::new(0),
        }
    }

    pub(crate) fn call(&self, took: Duration) {
        self.calls.fetch_add(1, Ordering::Relaxed);
        let us = took.as_micros() as u64;
        for (i, b) in BUCKETS_US.iter().enumerate() {
            if us <= *b {
                self.buckets[i].fetch_add(1, Ordering::Relaxed);
            }
        }
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

    /// Appends this plugin's series to a Prometheus text exposition.
    pub fn render(&self, out: &mut String) {
        let n = &self.name;
        let _ = writeln!(
            out,
            "pier_plugin_calls_total{{plugin=\"{n}\"}} {}",
            self.calls()
        );
        let _ = writeln!(
            out,
            "pier_plugin_denials_total{{plugin=\"{n}\"}} {}",
            self.denials.load(Ordering::Relaxed)
        );
        for (i, f) in FAILURES.iter().enumerate() {
            let _ = writeln!(
                out,
                "pier_plugin_errors_total{{plugin=\"{n}\",kind=\"{}\"}} {}",
                f.as_str(),
                self.errors[i].load(Ordering::Relaxed)
            );
        }
        let traps: u64 = [
            PolicyFailure::Trap,
            PolicyFailure::Timeout,
            PolicyFailure::OutOfMemory,
        ]
        .iter()
        .map(|k| self.errors(*k))
        .sum();
        let _ = writeln!(out, "pier_plugin_traps_total{{plugin=\"{n}\"}} {traps}");
        let _ = writeln!(
            out,
            "pier_plugin_instances_created_total{{plugin=\"{n}\"}} {}",
            self.instances_created.load(Ordering::Relaxed)
        );
        let _ = writeln!(
            out,
            "pier_plugin_reloads_total{{plugin=\"{n}\"}} {}",
            self.reloads.load(Ordering::Relaxed)
        );
        for (i, b) in BUCKETS_US.iter().enumerate() {
            let _ = writeln!(
                out,
                "pier_plugin_call_duration_seconds_bucket{{plugin=\"{n}\",le=\"{}\"}} {}",
                *b as f64 / 1e6,
                self.buckets[i].load(Ordering::Relaxed)
            );
        }
        let _ = writeln!(
            out,
            "pier_plugin_call_duration_seconds_bucket{{plugin=\"{n}\",le=\"+Inf\"}} {}",
            self.calls()
        );
        let _ = writeln!(
            out,
            "pier_plugin_call_duration_seconds_sum{{plugin=\"{n}\"}} {}",
            self.sum_ns.load(Ordering::Relaxed) as f64 / 1e9
        );
        let _ = writeln!(
            out,
            "pier_plugin_call_duration_seconds_count{{plugin=\"{n}\"}} {}",
            self.calls()
        );
    }
}
