//! When each tag was last pulled, for the admin API's tag list (`lastPull`).
//!
//! Noting a pull is an in-memory update: a shared read lock and an atomic store (a write
//! lock only the first time a tag or digest is seen). [`PullLog::run`] writes the whole map
//! to `<root>/pier/activity/pulls.json` (temp file, fsync, rename) every few seconds when
//! it changed, and [`PullLog::flush`] once more at shutdown, so it survives restarts; a
//! crash loses at most the last interval.
//!
//! Pulls by tag and pulls by digest are kept apart (a client that resolves a tag with HEAD
//! and then GETs the digest, as containerd does, pulls the digest only). A tag's last pull
//! is the later of its own and its digest's, counting the digest's only when it came after
//! the tag was last set.
//!
//! At most `max` tags and digests are kept; past that the least recently pulled tenth is
//! dropped. Each node knows the pulls it served: nodes sharing storage don't merge them.

use std::collections::HashMap;
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError, RwLock};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use pier_http::activity::PullRecorder;
use pier_oci::{Digest, Reference, RepoName, Tag};
use serde::{Deserialize, Serialize};

/// What was pulled.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
enum Pulled {
    Tag(RepoName, Tag),
    Digest(RepoName, Digest),
}

/// One line of the file.
#[derive(Serialize, Deserialize)]
struct Entry {
    repository: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    tag: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    digest: Option<String>,
    /// Unix seconds.
    at: u64,
}

impl Entry {
    fn new(key: &Pulled, at: u64) -> Entry {
        let (repository, tag, digest) = match key {
            Pulled::Tag(r, t) => (r, Some(t.to_string()), None),
            Pulled::Digest(r, d) => (r, None, Some(d.to_string())),
        };
        Entry {
            repository: repository.to_string(),
            tag,
            digest,
            at,
        }
    }

    fn key(&self) -> Option<Pulled> {
        let repo: RepoName = self.repository.parse().ok()?;
        match (&self.tag, &self.digest) {
            (Some(t), None) => Some(Pulled::Tag(repo, t.parse().ok()?)),
            (None, Some(d)) => Some(Pulled::Digest(repo, d.parse().ok()?)),
            _ => None,
        }
    }
}

#[derive(Serialize, Deserialize)]
struct File {
    pulls: Vec<Entry>,
}

/// The last pull of each tag and digest, bounded, persisted in the background.
pub struct PullLog {
    path: PathBuf,
    max: usize,
    /// Unix seconds of the last pull.
    entries: RwLock<HashMap<Pulled, AtomicU64>>,
    /// Changed since the last flush.
    dirty: AtomicBool,
    /// One writer of the file at a time (a flush outlives an aborted task).
    writing: Arc<Mutex<()>>,
}

fn now_secs() -> u64 {
    secs(SystemTime::now())
}

fn secs(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs())
}

impl PullLog {
    /// The log kept in `path`, with what it held. An unreadable file is logged and
    /// started over: this is advice for operators, not registry data.
    pub fn open(path: PathBuf, max: usize) -> PullLog {
        let max = max.max(1);
        let mut entries: Vec<(Pulled, u64)> = match std::fs::read(&path) {
            Ok(bytes) => match serde_json::from_slice::<File>(&bytes) {
                Ok(f) => f
                    .pulls
                    .iter()
                    .filter_map(|e| Some((e.key()?, e.at)))
                    .collect(),
                Err(e) => {
                    tracing::warn!(path = %path.display(), error = %e, "pull log unreadable; starting over");
                    Vec::new()
                }
            },
            Err(e) if e.kind() == io::ErrorKind::NotFound => Vec::new(),
            Err(e) => {
                tracing::warn!(path = %path.display(), error = %e, "pull log unreadable; starting over");
                Vec::new()
            }
        };
        if entries.len() > max {
            entries.sort_unstable_by_key(|(_, at)| std::cmp::Reverse(*at));
            entries.truncate(max);
        }
        PullLog {
            path,
            max,
            entries: RwLock::new(
                entries
                    .into_iter()
                    .map(|(k, at)| (k, AtomicU64::new(at)))
                    .collect(),
            ),
            dirty: AtomicBool::new(false),
            writing: Arc::new(Mutex::new(())),
        }
    }

    /// Notes a pull at `at` (Unix seconds). The time is stored before the log is marked
    /// changed, and both in one order with [`PullLog::flush`]'s (`SeqCst`), so a flush that
    /// finds the mark clear has seen the time.
    fn note(&self, key: Pulled, at: u64) {
        let known = {
            let map = self.entries.read().unwrap_or_else(PoisonError::into_inner);
            map.get(&key)
                .map(|t| t.fetch_max(at, Ordering::SeqCst))
                .is_some()
        };
        if !known {
            let mut map = self.entries.write().unwrap_or_else(PoisonError::into_inner);
            if !map.contains_key(&key) && map.len() >= self.max {
                evict(&mut map, (self.max - self.max / 10).min(self.max - 1));
            }
            map.entry(key)
                .or_insert_with(|| AtomicU64::new(0))
                .fetch_max(at, Ordering::SeqCst);
        }
        // Read first: most pulls find it set and leave the cache line shared.
        if !self.dirty.load(Ordering::SeqCst) {
            self.dirty.store(true, Ordering::SeqCst);
        }
    }

    /// When `tag` was last pulled, in Unix seconds: by its name, or by `digest` (what it
    /// points at) after `tag_set` (when it was last set, if known).
    pub fn last_pull(
        &self,
        repo: &RepoName,
        tag: &Tag,
        digest: &Digest,
        tag_set: Option<SystemTime>,
    ) -> Option<u64> {
        let map = self.entries.read().unwrap_or_else(PoisonError::into_inner);
        let at = |k: Pulled| map.get(&k).map(|t| t.load(Ordering::Relaxed));
        let by_tag = at(Pulled::Tag(repo.clone(), tag.clone()));
        let since = tag_set.map(secs);
        let by_digest = at(Pulled::Digest(repo.clone(), digest.clone()))
            .filter(|&t| since.is_none_or(|s| t >= s));
        by_tag.max(by_digest)
    }

    /// Writes the log to its file if it changed since the last write.
    pub async fn flush(&self) -> io::Result<()> {
        if !self.dirty.swap(false, Ordering::SeqCst) {
            return Ok(());
        }
        let file = {
            let map = self.entries.read().unwrap_or_else(PoisonError::into_inner);
            File {
                pulls: map
                    .iter()
                    .map(|(k, t)| Entry::new(k, t.load(Ordering::SeqCst)))
                    .collect(),
            }
        };
        let path = self.path.clone();
        let writing = self.writing.clone();
        let written = tokio::task::spawn_blocking(move || {
            let _one = writing.lock().unwrap_or_else(PoisonError::into_inner);
            write_atomic(&path, &serde_json::to_vec(&file).map_err(io::Error::other)?)
        })
        .await
        .map_err(io::Error::other)
        .and_then(|r| r);
        if written.is_err() {
            self.dirty.store(true, Ordering::SeqCst);
        }
        written
    }

    /// Flushes every `every` until aborted.
    pub async fn run(self: Arc<Self>, every: Duration) {
        let mut tick = tokio::time::interval(every);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            if let Err(e) = self.flush().await {
                tracing::warn!(path = %self.path.display(), error = %e, "writing the pull log failed");
            }
        }
    }
}

impl PullRecorder for PullLog {
    fn pulled(&self, repo: &RepoName, reference: &Reference) {
        let key = match reference {
            Reference::Tag(t) => Pulled::Tag(repo.clone(), t.clone()),
            Reference::Digest(d) => Pulled::Digest(repo.clone(), d.clone()),
        };
        self.note(key, now_secs());
    }
}

/// Drops the least recently pulled entries until `keep` remain.
fn evict(map: &mut HashMap<Pulled, AtomicU64>, keep: usize) {
    let Some(drop) = map.len().checked_sub(keep).filter(|&n| n > 0) else {
        return;
    };
    let mut by_age: Vec<(u64, Pulled)> = map
        .iter()
        .map(|(k, t)| (t.load(Ordering::Relaxed), k.clone()))
        .collect();
    by_age.select_nth_unstable_by_key(drop - 1, |(at, _)| *at);
    for (_, k) in by_age.into_iter().take(drop) {
        map.remove(&k);
    }
}

fn write_atomic(path: &Path, data: &[u8]) -> io::Result<()> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)?;
    }
    let tmp = path.with_extension("json.tmp");
    let mut f = std::fs::File::create(&tmp)?;
    f.write_all(data)?;
    f.sync_all()?;
    std::fs::rename(&tmp, path)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn repo() -> RepoName {
        "team/app".parse().unwrap()
    }

    fn tag(s: &str) -> Tag {
        s.parse().unwrap()
    }

    fn digest(s: &str) -> Digest {
        Digest::of(pier_oci::Algorithm::Sha256, s.as_bytes())
    }

    #[tokio::test]
    async fn pulls_survive_a_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("pier/activity/pulls.json");
        let log = PullLog::open(path.clone(), 100);
        let (v1, d) = (tag("v1"), digest("m"));
        assert_eq!(log.last_pull(&repo(), &v1, &d, None), None);
        log.note(Pulled::Tag(repo(), v1.clone()), 100);
        log.note(Pulled::Tag(repo(), v1.clone()), 90);
        log.note(Pulled::Digest(repo(), d.clone()), 50);
        assert_eq!(log.last_pull(&repo(), &v1, &d, None), Some(100));
        log.flush().await.unwrap();
        assert!(!log.dirty.load(Ordering::Relaxed));

        let again = PullLog::open(path, 100);
        assert_eq!(again.last_pull(&repo(), &v1, &d, None), Some(100));
        // The digest pull alone, by another tag on the same digest.
        assert_eq!(again.last_pull(&repo(), &tag("v2"), &d, None), Some(50));
    }

    #[test]
    fn digest_pulls_count_only_after_the_tag_was_set() {
        let log = PullLog::open(PathBuf::from("/nonexistent/pulls.json"), 100);
        let (v1, d) = (tag("v1"), digest("m"));
        log.pulled(&repo(), &Reference::Digest(d.clone()));
        let now = now_secs();
        let before = UNIX_EPOCH + Duration::from_secs(now - 10);
        let after = UNIX_EPOCH + Duration::from_secs(now + 10);
        assert_eq!(log.last_pull(&repo(), &v1, &d, Some(before)), Some(now));
        assert_eq!(log.last_pull(&repo(), &v1, &d, Some(after)), None);
        assert_eq!(log.last_pull(&repo(), &v1, &digest("other"), None), None);
    }

    #[tokio::test]
    async fn memory_is_bounded_and_the_oldest_go() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("pulls.json");
        let log = PullLog::open(path.clone(), 10);
        for i in 0..25u64 {
            log.note(Pulled::Tag(repo(), tag(&format!("t{i}"))), 1000 + i);
            assert!(log.entries.read().unwrap().len() <= 10);
        }
        let d = digest("none");
        assert_eq!(log.last_pull(&repo(), &tag("t24"), &d, None), Some(1024));
        assert_eq!(log.last_pull(&repo(), &tag("t0"), &d, None), None);
        log.flush().await.unwrap();
        // A file bigger than the bound (written by a node with a larger one) is trimmed
        // to the newest.
        assert_eq!(
            PullLog::open(path.clone(), 3).entries.read().unwrap().len(),
            3
        );
        let small = PullLog::open(path, 3);
        assert_eq!(small.last_pull(&repo(), &tag("t24"), &d, None), Some(1024));
    }

    #[test]
    fn an_unreadable_file_starts_over() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("pulls.json");
        std::fs::write(&path, b"{not json").unwrap();
        let log = PullLog::open(path, 10);
        assert!(log.entries.read().unwrap().is_empty());
    }
}
