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
//! dropped. Each node knows the pulls it served; scaled out (`[redis]`, a [`SharedPulls`]),
//! each flush also merges this node's new pulls into the shared record, and the admin API
//! answers the later of this node's and the shared time, so every node shows the pulls
//! any node served (another node's within a flush interval).

use std::collections::HashMap;
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError, RwLock};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use async_trait::async_trait;
use pier_http::activity::PullRecorder;
use pier_oci::{Digest, Reference, RepoName, Tag};
use serde::{Deserialize, Serialize};

/// What was pulled.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
enum Pulled {
    Tag(RepoName, Tag),
    Digest(RepoName, Digest),
}

impl Pulled {
    /// Its name in the shared record: `repo:tag` or `repo@digest`.
    fn field(&self) -> String {
        match self {
            Pulled::Tag(r, t) => format!("{r}:{t}"),
            Pulled::Digest(r, d) => format!("{r}@{d}"),
        }
    }
}

/// Pulls recorded by every node (`[redis]`): fields as [`Pulled::field`], Unix seconds.
#[async_trait]
pub trait SharedPulls: Send + Sync {
    /// Keeps the later of each stored time and the one given.
    async fn merge(&self, pulls: &[(String, u64)]) -> Result<(), String>;
    /// The stored time of each field.
    async fn get(&self, fields: &[String]) -> Result<Vec<Option<u64>>, String>;
}

/// One tag's or digest's last pull here, and how much of it the shared record has.
#[derive(Default)]
struct Seen {
    at: AtomicU64,
    shared: AtomicU64,
}

impl Seen {
    fn at(at: u64) -> Seen {
        Seen {
            at: AtomicU64::new(at),
            shared: AtomicU64::new(0),
        }
    }
}

/// Merged into the shared record at most this many at a time.
const SHARE_BATCH: usize = 500;

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
    entries: RwLock<HashMap<Pulled, Seen>>,
    /// Scaled out: the record every node merges into.
    shared: Option<Arc<dyn SharedPulls>>,
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
                    .map(|(k, at)| (k, Seen::at(at)))
                    .collect(),
            ),
            shared: None,
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
                .map(|t| t.at.fetch_max(at, Ordering::SeqCst))
                .is_some()
        };
        if !known {
            let mut map = self.entries.write().unwrap_or_else(PoisonError::into_inner);
            if !map.contains_key(&key) && map.len() >= self.max {
                evict(&mut map, (self.max - self.max / 10).min(self.max - 1));
            }
            map.entry(key)
                .or_default()
                .at
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
        let at = |k: Pulled| map.get(&k).map(|t| t.at.load(Ordering::Relaxed));
        combine(
            at(Pulled::Tag(repo.clone(), tag.clone())),
            at(Pulled::Digest(repo.clone(), digest.clone())),
            tag_set,
        )
    }

    /// Pulls go to (and are read from) `shared` too.
    pub fn with_shared(mut self, shared: Arc<dyn SharedPulls>) -> PullLog {
        self.shared = Some(shared);
        self
    }

    /// [`PullLog::last_pull`] of each (tag, digest, tag set), the later of this node's and
    /// the shared record's when scaled out (this node's alone if the record can't be read).
    pub async fn last_pulls(
        &self,
        repo: &RepoName,
        tags: &[(Tag, Digest, Option<SystemTime>)],
    ) -> Vec<Option<u64>> {
        let local: Vec<Option<u64>> = tags
            .iter()
            .map(|(t, d, set)| self.last_pull(repo, t, d, *set))
            .collect();
        let Some(shared) = &self.shared else {
            return local;
        };
        let fields: Vec<String> = tags
            .iter()
            .flat_map(|(t, d, _)| {
                [
                    Pulled::Tag(repo.clone(), t.clone()).field(),
                    Pulled::Digest(repo.clone(), d.clone()).field(),
                ]
            })
            .collect();
        let got = match shared.get(&fields).await {
            Ok(g) if g.len() == fields.len() => g,
            Ok(_) => return local,
            Err(e) => {
                tracing::warn!(error = %e, "reading the shared last pulls failed; showing this node's");
                return local;
            }
        };
        tags.iter()
            .zip(got.chunks(2))
            .zip(local)
            .map(|(((_, _, set), pair), mine)| combine(pair[0], pair[1], *set).max(mine))
            .collect()
    }

    /// Merges the pulls the shared record lacks into it.
    pub async fn share(&self) -> Result<(), String> {
        let Some(shared) = &self.shared else {
            return Ok(());
        };
        let news: Vec<(Pulled, u64)> = {
            let map = self.entries.read().unwrap_or_else(PoisonError::into_inner);
            map.iter()
                .filter_map(|(k, t)| {
                    let at = t.at.load(Ordering::SeqCst);
                    (at > t.shared.load(Ordering::SeqCst)).then(|| (k.clone(), at))
                })
                .collect()
        };
        for batch in news.chunks(SHARE_BATCH) {
            let fields: Vec<(String, u64)> = batch.iter().map(|(k, at)| (k.field(), *at)).collect();
            shared.merge(&fields).await?;
            let map = self.entries.read().unwrap_or_else(PoisonError::into_inner);
            for (k, at) in batch {
                if let Some(t) = map.get(k) {
                    t.shared.fetch_max(*at, Ordering::SeqCst);
                }
            }
        }
        Ok(())
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
                    .map(|(k, t)| Entry::new(k, t.at.load(Ordering::SeqCst)))
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

    /// [`PullLog::flush`] and [`PullLog::share`], failures logged (both are retried at the
    /// next call).
    pub async fn persist(&self) {
        if let Err(e) = self.flush().await {
            tracing::warn!(path = %self.path.display(), error = %e, "writing the pull log failed");
        }
        if let Err(e) = self.share().await {
            tracing::warn!(error = %e, "sharing this node's pulls failed");
        }
    }

    /// Persists every `every` until aborted.
    pub async fn run(self: Arc<Self>, every: Duration) {
        let mut tick = tokio::time::interval(every);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            self.persist().await;
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

/// A tag's last pull from its own and its digest's, the digest's only after `tag_set`.
fn combine(
    by_tag: Option<u64>,
    by_digest: Option<u64>,
    tag_set: Option<SystemTime>,
) -> Option<u64> {
    let since = tag_set.map(secs);
    by_tag.max(by_digest.filter(|&t| since.is_none_or(|s| t >= s)))
}

/// Drops the least recently pulled entries until `keep` remain.
fn evict(map: &mut HashMap<Pulled, Seen>, keep: usize) {
    let Some(drop) = map.len().checked_sub(keep).filter(|&n| n > 0) else {
        return;
    };
    let mut by_age: Vec<(u64, Pulled)> = map
        .iter()
        .map(|(k, t)| (t.at.load(Ordering::Relaxed), k.clone()))
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

    /// The shared record as Redis keeps it (the Lua merge keeps the later time), in a map:
    /// the Redis side itself is tested in pier-cluster and tests/tests/scaleout.
    #[derive(Default)]
    struct MapRecord {
        map: Mutex<HashMap<String, u64>>,
        merges: AtomicU64,
    }

    #[async_trait]
    impl SharedPulls for MapRecord {
        async fn merge(&self, pulls: &[(String, u64)]) -> Result<(), String> {
            self.merges.fetch_add(1, Ordering::SeqCst);
            let mut m = self.map.lock().unwrap();
            for (f, at) in pulls {
                let cur = m.entry(f.clone()).or_default();
                *cur = (*cur).max(*at);
            }
            Ok(())
        }
        async fn get(&self, fields: &[String]) -> Result<Vec<Option<u64>>, String> {
            let m = self.map.lock().unwrap();
            Ok(fields.iter().map(|f| m.get(f).copied()).collect())
        }
    }

    #[tokio::test]
    async fn every_node_shows_the_pulls_any_node_shared() {
        let dir = tempfile::tempdir().unwrap();
        let record = Arc::new(MapRecord::default());
        let a = PullLog::open(dir.path().join("a.json"), 100).with_shared(record.clone());
        let b = PullLog::open(dir.path().join("b.json"), 100).with_shared(record.clone());
        let (v1, d) = (tag("v1"), digest("m"));
        let page = [(v1.clone(), d.clone(), None)];
        a.note(Pulled::Tag(repo(), v1.clone()), 100);
        assert_eq!(b.last_pulls(&repo(), &page).await, [None], "not shared yet");
        assert_eq!(a.last_pulls(&repo(), &page).await, [Some(100)], "a's own");
        a.share().await.unwrap();
        assert_eq!(b.last_pulls(&repo(), &page).await, [Some(100)]);
        assert_eq!(record.map.lock().unwrap()["team/app:v1"], 100);

        // Nothing new: nothing sent.
        let merges = record.merges.load(Ordering::SeqCst);
        a.share().await.unwrap();
        assert_eq!(record.merges.load(Ordering::SeqCst), merges);

        // b pulls the digest later; a's older pull does not lower the record.
        b.note(Pulled::Digest(repo(), d.clone()), 150);
        b.share().await.unwrap();
        a.note(Pulled::Tag(repo(), v1.clone()), 120);
        a.share().await.unwrap();
        assert_eq!(a.last_pulls(&repo(), &page).await, [Some(150)]);
        // The digest's pull counts only after the tag was set.
        let set_later = [(v1, d, Some(UNIX_EPOCH + Duration::from_secs(200)))];
        assert_eq!(a.last_pulls(&repo(), &set_later).await, [Some(120)]);
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
