//! The dashboard's history: the admin counters sampled every `history_every` (default
//! 10 s) and kept in memory for a day, so the console's charts show the last hour as soon
//! as the page opens, not only what was sampled while it was open. Lost at restart.

use std::collections::VecDeque;
use std::sync::{Mutex, Weak};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use crate::admin::AdminState;

/// How long samples are kept.
pub const KEEP: Duration = Duration::from_secs(24 * 3600);
/// The most samples one answer holds (longer spans are thinned evenly).
pub const MAX_POINTS: usize = 360;

/// Cumulative counters at one moment (rates come from the difference of two samples).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Sample {
    /// Unix milliseconds.
    pub at_ms: u64,
    pub requests: u64,
    pub bytes_sent: u64,
    /// Mirror blob requests, and those served without a fetch of their own.
    pub blob_lookups: u64,
    pub blob_hits: u64,
    pub upstream_bytes: u64,
    pub cache_bytes: u64,
    pub plugin_calls: u64,
    pub plugin_seconds: f64,
}

/// The samples of the last [`KEEP`].
pub struct History {
    pub every: Duration,
    samples: Mutex<VecDeque<Sample>>,
}

impl History {
    pub fn new(every: Duration) -> History {
        History {
            every,
            samples: Mutex::new(VecDeque::new()),
        }
    }

    fn capacity(&self) -> usize {
        (KEEP.as_millis() / self.every.as_millis().max(1)).max(1) as usize
    }

    pub fn push(&self, s: Sample) {
        let cap = self.capacity();
        let mut q = self.samples.lock().unwrap_or_else(|p| p.into_inner());
        q.push_back(s);
        while q.len() > cap {
            q.pop_front();
        }
    }

    /// Samples taken at or after `since_ms`, oldest first, at most [`MAX_POINTS`]: a
    /// longer run is thinned to every k-th sample, always keeping the newest (the
    /// counters are cumulative, so thinning loses resolution, not totals).
    pub fn since(&self, since_ms: u64) -> Vec<Sample> {
        let q = self.samples.lock().unwrap_or_else(|p| p.into_inner());
        let all: Vec<&Sample> = q.iter().filter(|s| s.at_ms >= since_ms).collect();
        let step = all.len().div_ceil(MAX_POINTS).max(1);
        let last = all.len().saturating_sub(1);
        all.iter()
            .enumerate()
            .filter(|(i, _)| (last - i).is_multiple_of(step))
            .map(|(_, s)| (*s).clone())
            .collect()
    }
}

pub fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// The counters of `state` now.
fn sample(state: &AdminState) -> Sample {
    let (requests, bytes_sent) = state.metrics.totals();
    let m = state.mirror.as_ref().map(|m| m.stats()).unwrap_or_default();
    let mut s = Sample {
        at_ms: now_ms(),
        requests,
        bytes_sent,
        blob_lookups: m.blob_hits + m.blob_misses + m.blob_coalesced,
        blob_hits: m.blob_hits + m.blob_coalesced,
        upstream_bytes: m.upstream_bytes,
        cache_bytes: m.cache_bytes,
        ..Sample::default()
    };
    let mut add = |m: &pier_plugin_host::PluginMetrics| {
        s.plugin_calls += m.calls();
        s.plugin_seconds += m.call_seconds();
    };
    for (_, p) in &state.plugins.authorizers {
        add(p.metrics());
    }
    if let Some(e) = &state.events {
        for (_, n) in &e.notifiers {
            add(n.metrics());
        }
        for (_, r) in &e.replicators {
            add(r.metrics());
        }
    }
    s
}

/// Samples `state` every `history.every` until the admin state is gone.
pub async fn run(state: Weak<AdminState>) {
    loop {
        let Some(st) = state.upgrade() else { return };
        st.history.push(sample(&st));
        let every = st.history.every;
        drop(st);
        tokio::time::sleep(every).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(ms: u64) -> Sample {
        Sample {
            at_ms: ms,
            requests: ms,
            ..Sample::default()
        }
    }

    #[test]
    fn keeps_a_day_and_thins_long_spans_keeping_the_newest() {
        let h = History::new(Duration::from_secs(3600));
        for i in 0..30 {
            h.push(at(i));
        }
        let all = h.since(0);
        assert_eq!(all.len(), 24, "a day of hourly samples");
        assert_eq!(all[0].at_ms, 6);
        assert_eq!(h.since(20).len(), 10);

        let h = History::new(Duration::from_millis(10));
        for i in 0..1000 {
            h.push(at(i));
        }
        let thin = h.since(0);
        assert!(thin.len() <= MAX_POINTS, "{}", thin.len());
        assert!(thin.len() >= MAX_POINTS / 2, "{}", thin.len());
        assert_eq!(thin.last().unwrap().at_ms, 999, "the newest is kept");
        assert!(thin.windows(2).all(|w| w[0].at_ms < w[1].at_ms));
        assert_eq!(h.since(990).len(), 10, "short spans are whole");
    }
}
