//! The dashboard's history: the admin counters sampled every `history_every` (default
//! 10 s) and kept for a day, so the console's charts show the last hour as soon as the
//! page opens, not only what was sampled while it was open. Kept in
//! `ROOT/pier/history.jsonl` (a JSON line per sample, appended as taken, rewritten once a
//! day's worth has been appended), so the charts survive restarts; the counters continue
//! from the last saved sample, so a rate across a restart stays right (the time Pier was
//! down reads as no traffic).

use std::collections::VecDeque;
use std::io::Write as _;
use std::path::PathBuf;
use std::sync::{Mutex, Weak};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};

use crate::router::AdminState;

/// How long samples are kept.
pub const KEEP: Duration = Duration::from_secs(24 * 3600);
/// The most samples one answer holds (longer spans are thinned evenly).
pub const MAX_POINTS: usize = 360;

/// Cumulative counters at one moment (rates come from the difference of two samples).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
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

impl Sample {
    /// These counters carried on from `base` (the last sample before a restart).
    fn after(&self, base: &Sample) -> Sample {
        Sample {
            at_ms: self.at_ms,
            requests: base.requests + self.requests,
            bytes_sent: base.bytes_sent + self.bytes_sent,
            blob_lookups: base.blob_lookups + self.blob_lookups,
            blob_hits: base.blob_hits + self.blob_hits,
            upstream_bytes: base.upstream_bytes + self.upstream_bytes,
            cache_bytes: base.cache_bytes + self.cache_bytes,
            plugin_calls: base.plugin_calls + self.plugin_calls,
            plugin_seconds: base.plugin_seconds + self.plugin_seconds,
        }
    }
}

struct Samples {
    kept: VecDeque<Sample>,
    /// Added to this process's counters: the last sample of the previous run.
    base: Sample,
    /// Lines appended to the file since it was last rewritten.
    appended: usize,
    /// A write to the file failed (said once, not every sample).
    warned: bool,
}

/// The samples of the last [`KEEP`].
pub struct History {
    pub every: Duration,
    file: Option<PathBuf>,
    samples: Mutex<Samples>,
}

impl History {
    /// In memory only.
    pub fn new(every: Duration) -> History {
        History {
            every,
            file: None,
            samples: Mutex::new(Samples {
                kept: VecDeque::new(),
                base: Sample::default(),
                appended: 0,
                warned: false,
            }),
        }
    }

    /// Kept in `file`: the last day of it read back (a torn last line is skipped), the
    /// file rewritten with just that.
    pub fn open(every: Duration, file: PathBuf) -> History {
        let mut h = History::new(every);
        let cutoff = now_ms().saturating_sub(KEEP.as_millis() as u64);
        let kept: VecDeque<Sample> = match std::fs::read_to_string(&file) {
            Ok(text) => text
                .lines()
                .filter_map(|l| serde_json::from_str::<Sample>(l).ok())
                .filter(|s| s.at_ms >= cutoff)
                .collect(),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => VecDeque::new(),
            Err(e) => {
                tracing::warn!(file = %file.display(), error = %e, "the dashboard history could not be read; starting a new one");
                VecDeque::new()
            }
        };
        let cap = h.capacity();
        {
            let s = h.samples.get_mut().unwrap_or_else(|p| p.into_inner());
            s.base = kept.back().cloned().unwrap_or_default();
            s.kept = kept;
            while s.kept.len() > cap {
                s.kept.pop_front();
            }
        }
        h.file = Some(file);
        h.rewrite(&mut h.samples.lock().unwrap_or_else(|p| p.into_inner()));
        h
    }

    fn capacity(&self) -> usize {
        (KEEP.as_millis() / self.every.as_millis().max(1)).max(1) as usize
    }

    /// Adds a sample of this process's counters (file I/O: call it off the async
    /// workers).
    pub fn push(&self, raw: Sample) {
        let cap = self.capacity();
        let mut q = self.samples.lock().unwrap_or_else(|p| p.into_inner());
        let s = raw.after(&q.base);
        q.kept.push_back(s.clone());
        while q.kept.len() > cap {
            q.kept.pop_front();
        }
        let Some(file) = &self.file else { return };
        q.appended += 1;
        if q.appended >= cap {
            self.rewrite(&mut q);
            return;
        }
        let line = serde_json::to_string(&s).unwrap_or_default() + "\n";
        let appended = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(file)
            .and_then(|mut f| f.write_all(line.as_bytes()));
        self.written(&mut q, appended);
    }

    /// Writes the kept samples as the whole file (temporary file, then renamed).
    fn rewrite(&self, q: &mut Samples) {
        let Some(file) = &self.file else { return };
        let tmp = file.with_extension("jsonl.tmp");
        let mut text = String::new();
        for s in &q.kept {
            text.push_str(&serde_json::to_string(s).unwrap_or_default());
            text.push('\n');
        }
        let r = file
            .parent()
            .map_or(Ok(()), std::fs::create_dir_all)
            .and_then(|()| std::fs::write(&tmp, text))
            .and_then(|()| std::fs::rename(&tmp, file));
        q.appended = 0;
        self.written(q, r);
    }

    fn written(&self, q: &mut Samples, r: std::io::Result<()>) {
        match r {
            Ok(()) => q.warned = false,
            Err(e) if !q.warned => {
                q.warned = true;
                let file = self.file.as_deref().unwrap_or(std::path::Path::new("-"));
                tracing::warn!(file = %file.display(), error = %e, "writing the dashboard history failed; it is kept in memory meanwhile");
            }
            Err(_) => {}
        }
    }

    /// Samples taken at or after `since_ms`, oldest first, at most [`MAX_POINTS`]: a
    /// longer run is thinned to every k-th sample, always keeping the newest (the
    /// counters are cumulative, so thinning loses resolution, not totals).
    pub fn since(&self, since_ms: u64) -> Vec<Sample> {
        let q = self.samples.lock().unwrap_or_else(|p| p.into_inner());
        let all: Vec<&Sample> = q.kept.iter().filter(|s| s.at_ms >= since_ms).collect();
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
    for (_, p) in state.plugins.authorizers() {
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
        let s = sample(&st);
        let every = st.history.every;
        // The file append (and the daily rewrite) off the async workers.
        let _ = tokio::task::spawn_blocking(move || st.history.push(s)).await;
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
    fn a_restart_reads_the_file_back_and_the_counters_carry_on() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("pier").join("history.jsonl");
        let now = now_ms();
        let h = History::open(Duration::from_secs(10), file.clone());
        h.push(Sample {
            at_ms: now - 20_000,
            requests: 5,
            plugin_seconds: 0.5,
            ..Sample::default()
        });
        h.push(Sample {
            at_ms: now - 10_000,
            requests: 7,
            plugin_seconds: 0.75,
            ..Sample::default()
        });
        drop(h);
        // A torn line (a crash mid-append) and a sample older than a day are dropped.
        let mut text = std::fs::read_to_string(&file).unwrap();
        text.push_str("{\"at_ms\": 12");
        let old = Sample {
            at_ms: now - KEEP.as_millis() as u64 - 1,
            ..Sample::default()
        };
        text.insert_str(0, &(serde_json::to_string(&old).unwrap() + "\n"));
        std::fs::write(&file, text).unwrap();

        let h = History::open(Duration::from_secs(10), file.clone());
        assert_eq!(
            h.since(0).iter().map(|s| s.requests).collect::<Vec<_>>(),
            [5, 7]
        );
        // The new process counts from 0: its samples continue from 7.
        h.push(Sample {
            at_ms: now,
            requests: 2,
            plugin_seconds: 0.25,
            ..Sample::default()
        });
        let all = h.since(0);
        assert_eq!(all.last().unwrap().requests, 9);
        assert_eq!(all.last().unwrap().plugin_seconds, 1.0);
        // The file was rewritten clean, then appended to.
        let lines: Vec<Sample> = std::fs::read_to_string(&file)
            .unwrap()
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect();
        assert_eq!(lines, all);
    }

    #[test]
    fn the_file_is_rewritten_once_a_days_worth_was_appended() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("history.jsonl");
        let h = History::open(Duration::from_secs(3600), file.clone());
        let now = now_ms();
        for i in 0..60u64 {
            h.push(at(now - (60 - i) * 60_000 + 1));
        }
        // Rewritten with the 24 kept after every 24 appends: the file holds less than two
        // days' worth whatever the uptime.
        let lines = std::fs::read_to_string(&file).unwrap().lines().count();
        assert!(lines < 48, "{lines} lines for 60 samples");
        assert_eq!(h.since(0).len(), 24);
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
