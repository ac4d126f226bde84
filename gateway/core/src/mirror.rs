//! The pull-through mirror: requests for mirrored repositories are answered from the local
//! store, and misses are fetched from the upstream once, however many clients ask at the
//! same time. Blob bytes stream to every waiting client while they arrive (a late joiner
//! reads what has arrived, then follows), are verified against their digest at the end,
//! and only then become visible in the store; a mismatch aborts every client and keeps
//! nothing. Tags are revalidated with a HEAD after a TTL and served stale when the upstream
//! fails.

use std::collections::{HashMap, VecDeque};
use std::io;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use bytes::Bytes;
use futures_util::StreamExt;
use pier_oci::{Digest, Manifest, Reference, RepoName, Tag};
use pier_storage::{BlobRead, ByteStream, IngestStore, RangeSpec};
use pier_upstream::{BlobFetched, ManifestFetched, Upstream, UpstreamError};
use tokio::sync::watch;

use crate::fleet::{PeerSource, Peers};
use crate::registry::ManifestContent;
use crate::{CoreError, Registry, Result};

/// How many times a broken upstream transfer is resumed with a Range request.
const MAX_RESUMES: u32 = 5;
/// Largest read from the store handed to a client of a fill at a time.
const FOLLOW_CHUNK: u64 = 256 * 1024;
/// Stored bytes of a fill kept in memory besides what is still being stored: clients up to
/// this far behind the source are served from memory, the others from the store.
const RECENT_MAX: u64 = 8 * 1024 * 1024;
/// Chunks received and waiting for the store (the source slows down beyond).
const STORE_QUEUE: usize = 32;
/// Lifetime of a cross-node fill lease; renewed every third of it while the fill runs.
const FILL_LEASE_TTL: Duration = Duration::from_secs(15);
/// How long a node waits for another node's fill to land in the shared store.
const FILL_WAIT_MAX: Duration = Duration::from_secs(600);
/// How long "the upstream does not have it" is remembered.
const NEGATIVE_TTL: Duration = Duration::from_secs(5);

/// One upstream registry and how names map to it.
pub struct UpstreamSpec {
    /// A repository name component: `/v2/<name>/...` reaches this upstream, and its
    /// content is stored under `<name>/<remote repository>`.
    pub name: String,
    /// The registry host containerd names in `?ns=` (e.g. `docker.io`).
    pub namespace: String,
    /// How long a tag is served without asking the upstream again.
    pub tag_ttl: Duration,
    /// After the TTL, how long the cached tag is still served at once while a background
    /// HEAD revalidates it (stale-while-revalidate); zero: revalidate before answering.
    pub stale_while_revalidate: Duration,
    /// Docker Hub: one-component names are `library/<name>`.
    pub docker_hub: bool,
    /// Keep serving a cached tag the upstream no longer has.
    pub keep_deleted: bool,
    /// The platforms (`os/arch[/variant]`) whose index children are fetched with the
    /// index; the others on their first pull. Empty: every child.
    pub platforms: Vec<String>,
    pub client: Arc<dyn Upstream>,
}

pub struct MirrorConfig {
    pub upstreams: Vec<UpstreamSpec>,
    /// Index into `upstreams` of the upstream every other name goes to.
    pub default: Option<usize>,
    /// First name components that stay local (writable) beside a default upstream.
    pub local_namespaces: Vec<String>,
}

/// Where a request's repository lives (see [`Mirror::place`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Place {
    /// A local repository: readable and writable as the access policy says.
    Local,
    /// Content of an upstream, kept under [`Target::local`]: read-only to clients.
    Mirrored(Target),
    /// `?ns=` named a registry that no upstream is: nothing to read, nothing to write.
    UnknownNamespace(String),
}

impl Place {
    /// The repository whose content a request for `requested` reaches: what access is
    /// decided on.
    pub fn served<'a>(&'a self, requested: &'a RepoName) -> &'a RepoName {
        match self {
            Place::Mirrored(t) => &t.local,
            Place::Local | Place::UnknownNamespace(_) => requested,
        }
    }
}

/// Where a mirrored request goes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Target {
    upstream: usize,
    /// The fleet peer this request came from ([`Mirror::peer_target`]): it is answered
    /// from this node's cache or its upstream, never from another peer.
    peer: Option<Arc<str>>,
    /// The repository's name at the upstream.
    pub remote: RepoName,
    /// Where its content is kept locally.
    pub local: RepoName,
}

impl Target {
    /// The fleet peer this request came from, if one did.
    pub fn from_peer(&self) -> Option<&str> {
        self.peer.as_deref()
    }
}

/// A blob read through the mirror.
pub enum MirrorBlob {
    /// Served from the store.
    Stored(BlobRead),
    /// Following a fill from the upstream.
    Streaming {
        size: Option<u64>,
        range: Option<(u64, u64)>,
        body: ByteStream,
    },
}

#[derive(Clone, Default)]
struct Progress {
    /// Bytes stored (readable through [`Fill::reader`]).
    available: u64,
    /// Bytes received from the source (the newest in [`Fill::recent`]).
    received: u64,
    /// Every byte is stored and matched the digest: clients may have the last byte, while
    /// the store makes the blob durable (the commit's fsync or object-store calls are no
    /// client's wait). A commit failing after this ends no client's stream.
    verified: bool,
    done: Option<std::result::Result<(), Arc<str>>>,
}

/// A blob being fetched from an upstream.
struct Fill {
    reader: Arc<dyn pier_storage::PartialReader>,
    size: Option<u64>,
    progress: watch::Receiver<Progress>,
    /// The fleet peer the bytes come from now (`None`: the upstream).
    source: Mutex<Option<Arc<str>>>,
    /// The newest received chunks by offset: what is not stored yet, and up to
    /// [`RECENT_MAX`] bytes that are. Clients that keep up are served from here, so bytes
    /// go from the source to them while the store writes and hashes the same buffers.
    recent: Mutex<Recent>,
}

impl Fill {
    /// The blob's size once every byte is stored and verified.
    fn verified_size(&self) -> Option<u64> {
        let p = self.progress.borrow();
        p.verified.then_some(p.available)
    }
}

#[derive(Default)]
struct Recent {
    chunks: VecDeque<(u64, Bytes)>,
    bytes: u64,
}

impl Recent {
    fn push(&mut self, offset: u64, chunk: Bytes) {
        self.bytes += chunk.len() as u64;
        self.chunks.push_back((offset, chunk));
    }

    /// Drops the oldest chunks that are stored, down to [`RECENT_MAX`] bytes.
    fn trim(&mut self, stored: u64) {
        while self.bytes > RECENT_MAX
            && let Some((off, c)) = self.chunks.front()
            && off + c.len() as u64 <= stored
        {
            self.bytes -= c.len() as u64;
            self.chunks.pop_front();
        }
    }

    /// Bytes from `pos` (short of `limit`) if a chunk in memory holds `pos`.
    fn slice(&self, pos: u64, limit: u64) -> Option<Bytes> {
        let i = self.chunks.partition_point(|(off, _)| *off <= pos);
        let (off, c) = self.chunks.get(i.checked_sub(1)?)?;
        let end = (off + c.len() as u64).min(limit);
        (end > pos).then(|| c.slice((pos - off) as usize..(end - off) as usize))
    }
}

/// Per-key async locks, removed when nobody holds or waits for them.
#[derive(Default)]
struct KeyedLocks(Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>);

struct KeyGuard<'a> {
    guard: Option<tokio::sync::OwnedMutexGuard<()>>,
    key: String,
    locks: &'a KeyedLocks,
}

impl KeyedLocks {
    async fn lock(&self, key: String) -> KeyGuard<'_> {
        let m = self
            .0
            .lock()
            .expect("locks poisoned")
            .entry(key.clone())
            .or_default()
            .clone();
        let guard = m.lock_owned().await;
        KeyGuard {
            guard: Some(guard),
            key,
            locks: self,
        }
    }
}

impl Drop for KeyGuard<'_> {
    fn drop(&mut self) {
        drop(self.guard.take());
        let mut map = self.locks.0.lock().expect("locks poisoned");
        if map
            .get(&self.key)
            .is_some_and(|m| Arc::strong_count(m) == 1)
        {
            map.remove(&self.key);
        }
    }
}

/// Mirror counters, exported in the Prometheus text format.
#[derive(Default)]
struct Counters {
    blob_hits: AtomicU64,
    blob_misses: AtomicU64,
    blob_coalesced: AtomicU64,
    manifest_hits: AtomicU64,
    manifest_misses: AtomicU64,
    stale_serves: AtomicU64,
    upstream_bytes: AtomicU64,
    /// Blob bytes received from fleet peers instead of the upstream.
    peer_bytes: AtomicU64,
    /// Requests a fleet peer answered instead of the upstream.
    peer_answers: AtomicU64,
    /// Blob bytes answered from the cache (what upstreams did not have to send again).
    cache_bytes: AtomicU64,
    fill_failures: AtomicU64,
    evictions: AtomicU64,
}

/// The mirror's counters at one moment ([`Mirror::stats`]).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct MirrorStats {
    /// Blob requests served from the cache.
    pub blob_hits: u64,
    /// Blob fetches started from an upstream.
    pub blob_misses: u64,
    /// Blob requests that joined a fetch in progress.
    pub blob_coalesced: u64,
    pub manifest_hits: u64,
    pub manifest_misses: u64,
    /// Cached tags served because the upstream failed.
    pub stale_serves: u64,
    /// Blob bytes received from upstreams.
    pub upstream_bytes: u64,
    /// Blob bytes received from fleet peers instead of the upstream.
    pub peer_bytes: u64,
    /// Upstream requests saved: requests a fleet peer answered instead.
    pub peer_answers: u64,
    /// Blob bytes answered from the cache: what the upstreams were spared.
    pub cache_bytes: u64,
    pub fill_failures: u64,
    /// Cached blobs removed by the size bound.
    pub evictions: u64,
}

fn bump(c: &AtomicU64) {
    c.fetch_add(1, Ordering::Relaxed);
}

pub struct Mirror {
    counters: Counters,
    registry: Arc<Registry>,
    ingest: Arc<dyn IngestStore>,
    config: MirrorConfig,
    fills: Mutex<HashMap<Digest, Arc<Fill>>>,
    locks: KeyedLocks,
    /// When a tag was last confirmed with the upstream.
    validated: moka::sync::Cache<(RepoName, Tag), Instant>,
    /// When a cached blob was last served (eviction order; file times after a restart).
    last_used: moka::sync::Cache<Digest, SystemTime>,
    /// Short-lived "not found upstream" answers, so repeated misses don't each ask.
    negative: moka::sync::Cache<String, ()>,
    /// Tags with a background revalidation in flight (stale-while-revalidate).
    revalidating: moka::sync::Cache<(RepoName, Tag), ()>,
    /// Cross-node fill leases, when nodes share blob storage.
    leases: Option<Arc<dyn crate::Leases>>,
    /// Told about every manifest fetched from an upstream and stored (events).
    observer: Option<Arc<dyn FillObserver>>,
    /// The other nodes of an edge fleet, asked before the upstream.
    peers: Option<Arc<dyn Peers>>,
}

/// Told when the mirror stored a manifest it fetched from an upstream (the binary turns
/// it into a `mirror-fill` event). Called on the fill's task: must not block.
pub trait FillObserver: Send + Sync {
    fn manifest_filled(
        &self,
        repository: &RepoName,
        tag: Option<&Tag>,
        digest: &Digest,
        media_type: &str,
        size: u64,
    );
}

/// What one eviction pass did.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct EvictReport {
    /// Bytes of mirrored blobs before the pass.
    pub cached_bytes: u64,
    pub evicted: Vec<Digest>,
    pub evicted_bytes: u64,
}

fn upstream_err(e: UpstreamError, unknown: impl FnOnce() -> CoreError) -> CoreError {
    if e.is_not_found() {
        unknown()
    } else {
        CoreError::Upstream(e)
    }
}

impl Mirror {
    pub fn new(
        registry: Arc<Registry>,
        ingest: Arc<dyn IngestStore>,
        config: MirrorConfig,
    ) -> Mirror {
        Mirror {
            counters: Counters::default(),
            registry,
            ingest,
            config,
            fills: Mutex::new(HashMap::new()),
            locks: KeyedLocks::default(),
            validated: moka::sync::Cache::builder().max_capacity(100_000).build(),
            last_used: moka::sync::Cache::builder().max_capacity(1_000_000).build(),
            negative: moka::sync::Cache::builder()
                .max_capacity(100_000)
                .time_to_live(NEGATIVE_TTL)
                .build(),
            revalidating: moka::sync::Cache::builder()
                .max_capacity(100_000)
                .time_to_live(Duration::from_secs(60))
                .build(),
            leases: None,
            observer: None,
            peers: None,
        }
    }

    /// Asks the fleet's owner of each blob, manifest and tag before the upstream.
    pub fn with_peers(mut self, peers: Arc<dyn Peers>) -> Mirror {
        self.peers = Some(peers);
        self
    }

    /// The peers to ask for `key` before the upstream: none for a peer's own request.
    fn sources(&self, t: &Target, key: &str) -> VecDeque<PeerSource> {
        match (&self.peers, &t.peer) {
            (Some(p), None) => p
                .ahead(t.upstream, &format!("{}/{key}", self.upstream(t).name))
                .into(),
            _ => VecDeque::new(),
        }
    }

    /// Whether to go on to the next source after `peer` failed with `e`: yes, except on
    /// a 429 (the fleet's budget is spent: going around it would spend it twice). A
    /// failing peer is cooled down; a "not found" or "busy" answer is no fault.
    fn peer_failed(&self, peer: &PeerSource, e: &UpstreamError) -> bool {
        if matches!(e, UpstreamError::TooManyRequests { .. }) {
            return false;
        }
        let fault = !e.is_not_found() && !matches!(e, UpstreamError::Status { status: 409, .. });
        if let (Some(p), true) = (&self.peers, fault) {
            p.failed(&peer.id, &e.to_string());
        }
        tracing::debug!(peer = %peer.id, error = %e, "fleet peer did not answer; asking the next source");
        true
    }

    /// `op` on the first source that answers: the peers in order, then the upstream.
    async fn ask<T, F, Fut>(
        &self,
        t: &Target,
        sources: &VecDeque<PeerSource>,
        op: F,
    ) -> std::result::Result<T, UpstreamError>
    where
        F: Fn(Arc<dyn Upstream>) -> Fut,
        Fut: std::future::Future<Output = std::result::Result<T, UpstreamError>>,
    {
        for p in sources {
            match op(p.client.clone()).await {
                Ok(v) => {
                    bump(&self.counters.peer_answers);
                    return Ok(v);
                }
                Err(e) if self.peer_failed(p, &e) => {}
                Err(e) => return Err(e),
            }
        }
        op(self.upstream(t).client.clone()).await
    }

    /// Opens `digest` at `offset` from the first source that answers: the peers in
    /// order, then the upstream. Also returns the peer that answered (`None`: the
    /// upstream) and the peers not asked yet.
    async fn open_blob(
        &self,
        t: &Target,
        mut sources: VecDeque<PeerSource>,
        digest: &Digest,
        offset: u64,
    ) -> std::result::Result<(BlobFetched, Option<PeerSource>, VecDeque<PeerSource>), UpstreamError>
    {
        while let Some(p) = sources.pop_front() {
            match p.client.get_blob(&t.remote, digest, offset).await {
                Ok(b) => {
                    bump(&self.counters.peer_answers);
                    return Ok((b, Some(p), sources));
                }
                Err(e) if self.peer_failed(&p, &e) => {}
                Err(e) => return Err(e),
            }
        }
        let b = (self.upstream(t).client)
            .get_blob(&t.remote, digest, offset)
            .await?;
        Ok((b, None, sources))
    }

    /// Where a fleet peer's request for `remote` of the upstream named `upstream` goes:
    /// answered from this node's cache or its upstream, never another peer's.
    pub fn peer_target(&self, upstream: &str, remote: &str, peer: &str) -> Option<Target> {
        let i = self
            .config
            .upstreams
            .iter()
            .position(|u| u.name == upstream)?;
        let mut t = self.target(i, remote)?;
        t.peer = Some(Arc::from(peer));
        Some(t)
    }

    /// Coordinates fills with other nodes sharing the blob store: one node fetches a
    /// cold blob from the upstream, the others wait for it to land in the shared store.
    pub fn with_leases(mut self, leases: Arc<dyn crate::Leases>) -> Mirror {
        self.leases = Some(leases);
        self
    }

    /// Reports manifests fetched from upstreams to `observer`.
    pub fn with_fill_observer(mut self, observer: Arc<dyn FillObserver>) -> Mirror {
        self.observer = Some(observer);
        self
    }

    /// Takes the cross-node lease for a fill of `digest`, or waits until another node's
    /// fill has stored it. `Ok(true)`: this node fetches (and must release the lease);
    /// `Ok(false)`: the blob is in the store now. Without leases, or when the lease
    /// service fails, this node fetches (availability over deduplication).
    async fn lease_or_wait(&self, digest: &Digest) -> Result<bool> {
        let Some(leases) = &self.leases else {
            return Ok(true);
        };
        let name = format!("fill {digest}");
        let start = Instant::now();
        let mut pause = Duration::from_millis(50);
        loop {
            match leases.try_acquire(&name, FILL_LEASE_TTL).await {
                Ok(true) => {
                    // Stored by another node between our stat and the lease?
                    if self.registry.stores().blobs.stat(digest).await?.is_some() {
                        let _ = leases.release(&name).await;
                        return Ok(false);
                    }
                    return Ok(true);
                }
                Ok(false) => {}
                Err(e) => {
                    tracing::warn!(digest = %digest, error = %e, "fill lease unavailable; fetching without cross-node coordination");
                    return Ok(true);
                }
            }
            if start.elapsed() == Duration::ZERO {
                bump(&self.counters.blob_coalesced);
            }
            tokio::time::sleep(pause).await;
            pause = (pause * 2).min(Duration::from_millis(500));
            if self.registry.stores().blobs.stat(digest).await?.is_some() {
                bump(&self.counters.blob_coalesced);
                return Ok(false);
            }
            if start.elapsed() > FILL_WAIT_MAX {
                return Err(CoreError::Upstream(UpstreamError::Protocol(format!(
                    "another node's fetch of {digest} did not finish within {FILL_WAIT_MAX:?}"
                ))));
            }
        }
    }

    /// Keeps the mirrored blobs within `max_bytes`: when over, removes the least recently
    /// used down to 90 % of the bound. Never touches blobs that a local (pushed) repository
    /// links or that are being fetched; a client already reading an evicted blob keeps its
    /// open file and finishes. Evicted blobs are fetched again on the next request.
    pub async fn evict(&self, max_bytes: u64) -> Result<EvictReport> {
        let stores = self.registry.stores();
        let mut mirrored: HashMap<Digest, Vec<RepoName>> = HashMap::new();
        let mut local: std::collections::HashSet<Digest> = std::collections::HashSet::new();
        for repo in stores.repos.repositories_with_blobs().await? {
            let first = repo.components().next().unwrap_or("");
            let is_mirror = self.config.upstreams.iter().any(|u| u.name == first);
            for d in stores.repos.linked_blobs(&repo).await? {
                if is_mirror {
                    mirrored.entry(d).or_default().push(repo.clone());
                } else {
                    local.insert(d);
                }
            }
        }
        let mut candidates = Vec::new();
        let mut report = EvictReport::default();
        let files: HashMap<Digest, pier_storage::BlobEntry> = stores
            .blobs
            .list()
            .await?
            .into_iter()
            .map(|e| (e.digest.clone(), e))
            .collect();
        for (d, repos) in mirrored {
            let Some(entry) = files.get(&d) else { continue };
            report.cached_bytes += entry.size;
            if local.contains(&d) || self.fills.lock().expect("fills poisoned").contains_key(&d) {
                continue;
            }
            let used = self.last_used.get(&d).unwrap_or(entry.modified);
            candidates.push((used, entry.size, d, repos));
        }
        if report.cached_bytes <= max_bytes {
            return Ok(report);
        }
        candidates.sort_by_key(|c| c.0);
        let target = max_bytes / 10 * 9;
        let mut remaining = report.cached_bytes;
        for (_, size, d, repos) in candidates {
            if remaining <= target {
                break;
            }
            for repo in &repos {
                self.registry
                    .blob_delete(repo, &d)
                    .await
                    .or_else(|e| match e {
                        CoreError::BlobUnknown(_) => Ok(()),
                        e => Err(e),
                    })?;
            }
            stores.blobs.delete(&d).await?;
            self.last_used.invalidate(&d);
            remaining -= size;
            report.evicted_bytes += size;
            report.evicted.push(d);
        }
        self.counters
            .evictions
            .fetch_add(report.evicted.len() as u64, Ordering::Relaxed);
        Ok(report)
    }

    /// A read-only snapshot of the mirror's counters (the admin API serves it).
    pub fn stats(&self) -> MirrorStats {
        let c = &self.counters;
        let get = |v: &AtomicU64| v.load(Ordering::Relaxed);
        MirrorStats {
            blob_hits: get(&c.blob_hits),
            blob_misses: get(&c.blob_misses),
            blob_coalesced: get(&c.blob_coalesced),
            manifest_hits: get(&c.manifest_hits),
            manifest_misses: get(&c.manifest_misses),
            stale_serves: get(&c.stale_serves),
            upstream_bytes: get(&c.upstream_bytes),
            peer_bytes: get(&c.peer_bytes),
            peer_answers: get(&c.peer_answers),
            cache_bytes: get(&c.cache_bytes),
            fill_failures: get(&c.fill_failures),
            evictions: get(&c.evictions),
        }
    }

    /// Adds the mirror's counters to `registry` (read from the mirror at scrape time).
    pub fn register_metrics(
        self: &Arc<Self>,
        registry: &mut prometheus_client::registry::Registry,
    ) {
        registry.register_collector(Box::new(MirrorSeries(self.clone())));
    }

    fn target(&self, upstream: usize, remote: &str) -> Option<Target> {
        let spec = &self.config.upstreams[upstream];
        let remote = if spec.docker_hub && !remote.contains('/') {
            format!("library/{remote}")
        } else {
            remote.to_owned()
        };
        Some(Target {
            upstream,
            peer: None,
            local: format!("{}/{remote}", spec.name).parse().ok()?,
            remote: remote.parse().ok()?,
        })
    }

    /// Where a request's repository lives: by containerd's `?ns=`, by a path prefix
    /// naming an upstream, by the default upstream, or locally. An `?ns=` naming no
    /// configured upstream is [`Place::UnknownNamespace`]: never local, so a write can't
    /// land in an upstream's cache namespace by naming a bogus registry.
    pub fn place(&self, repo: &RepoName, ns: Option<&str>) -> Place {
        if let Some(ns) = ns
            && !self.config.upstreams.iter().any(|u| u.namespace == ns)
        {
            return Place::UnknownNamespace(ns.to_owned());
        }
        match self.route(repo, ns) {
            Some(t) => Place::Mirrored(t),
            None => Place::Local,
        }
    }

    /// Whether (and where) a repository is mirrored: by containerd's `?ns=`, by a path
    /// prefix naming an upstream, or by the default upstream.
    pub fn route(&self, repo: &RepoName, ns: Option<&str>) -> Option<Target> {
        let ups = &self.config.upstreams;
        if let Some(ns) = ns {
            let i = ups.iter().position(|u| u.namespace == ns)?;
            return self.target(i, repo.as_str());
        }
        let (first, rest) = match repo.as_str().split_once('/') {
            Some((f, r)) => (f, Some(r)),
            None => (repo.as_str(), None),
        };
        if let (Some(i), Some(rest)) = (ups.iter().position(|u| u.name == first), rest) {
            return self.target(i, rest);
        }
        let i = self.config.default?;
        if self.config.local_namespaces.iter().any(|l| l == first) {
            return None;
        }
        self.target(i, repo.as_str())
    }

    /// Maps an upstream error, remembering "not found" under `key` for a few seconds.
    fn remember(
        &self,
        key: String,
        e: UpstreamError,
        unknown: impl FnOnce() -> CoreError,
    ) -> CoreError {
        if e.is_not_found() {
            self.negative.insert(key, ());
        }
        upstream_err(e, unknown)
    }

    fn upstream(&self, t: &Target) -> &UpstreamSpec {
        &self.config.upstreams[t.upstream]
    }

    // ---- manifests ----

    /// A manifest by tag or digest, from the store or the upstream.
    pub async fn manifest(
        self: &Arc<Self>,
        t: &Target,
        reference: &Reference,
    ) -> Result<Arc<ManifestContent>> {
        match reference {
            Reference::Digest(d) => {
                if let Some(m) = self.local_manifest(t, reference).await? {
                    bump(&self.counters.manifest_hits);
                    return Ok(m);
                }
                let sources = self.sources(t, &d.to_string());
                let _guard = self
                    .locks
                    .lock(lock_name(&sources, format!("{}@{d}", t.local)))
                    .await;
                if let Some(m) = self.local_manifest(t, reference).await? {
                    return Ok(m);
                }
                let key = format!("m {}@{d}", t.local);
                if self.negative.contains_key(&key) {
                    return Err(CoreError::ManifestUnknown(d.to_string()));
                }
                bump(&self.counters.manifest_misses);
                let remote = &t.remote;
                let fetched = self
                    .ask(t, &sources, |c| async move {
                        c.get_manifest(remote, reference).await
                    })
                    .await
                    .map_err(|e| {
                        self.remember(key, e, || CoreError::ManifestUnknown(d.to_string()))
                    })?;
                self.store_manifest(t, None, d, fetched).await
            }
            Reference::Tag(tag) => self.manifest_by_tag(t, tag).await,
        }
    }

    async fn local_manifest(
        &self,
        t: &Target,
        reference: &Reference,
    ) -> Result<Option<Arc<ManifestContent>>> {
        match self.registry.manifest_get(&t.local, reference).await {
            Ok(m) => Ok(Some(m)),
            Err(CoreError::ManifestUnknown(_)) => Ok(None),
            Err(e) => Err(e),
        }
    }

    fn fresh(&self, t: &Target, tag: &Tag) -> bool {
        let ttl = self.upstream(t).tag_ttl;
        self.validated
            .get(&(t.local.clone(), tag.clone()))
            .is_some_and(|at| at.elapsed() < ttl)
    }

    /// Past the TTL but within the stale-while-revalidate window.
    fn stale_usable(&self, t: &Target, tag: &Tag) -> bool {
        let u = self.upstream(t);
        !u.stale_while_revalidate.is_zero()
            && self
                .validated
                .get(&(t.local.clone(), tag.clone()))
                .is_some_and(|at| at.elapsed() < u.tag_ttl + u.stale_while_revalidate)
    }

    async fn manifest_by_tag(
        self: &Arc<Self>,
        t: &Target,
        tag: &Tag,
    ) -> Result<Arc<ManifestContent>> {
        let reference = Reference::Tag(tag.clone());
        let local = self.local_manifest(t, &reference).await?;
        if let Some(m) = &local
            && self.fresh(t, tag)
        {
            bump(&self.counters.manifest_hits);
            return Ok(m.clone());
        }
        if let Some(m) = &local
            && self.stale_usable(t, tag)
        {
            bump(&self.counters.manifest_hits);
            let key = (t.local.clone(), tag.clone());
            if self
                .revalidating
                .entry(key.clone())
                .or_insert(())
                .is_fresh()
            {
                let (me, t, tag) = (self.clone(), t.clone(), tag.clone());
                tokio::spawn(async move {
                    if let Err(e) = me.revalidate_tag(&t, &tag).await {
                        tracing::warn!(repository = %t.remote, tag = %tag, error = %e, "background revalidation failed");
                    }
                    me.revalidating.invalidate(&key);
                });
            }
            return Ok(m.clone());
        }
        self.revalidate_tag(t, tag).await
    }

    /// Asks the upstream about a tag (HEAD, then GET when it moved) under the tag's lock.
    async fn revalidate_tag(
        self: &Arc<Self>,
        t: &Target,
        tag: &Tag,
    ) -> Result<Arc<ManifestContent>> {
        let reference = Reference::Tag(tag.clone());
        let local = self.local_manifest(t, &reference).await?;
        let sources = self.sources(t, &format!("{}:{tag}", t.remote));
        let _guard = self
            .locks
            .lock(lock_name(&sources, format!("{}:{tag}", t.local)))
            .await;
        let local = match self.fresh(t, tag) {
            // Another request revalidated while this one waited.
            true => match self.local_manifest(t, &reference).await? {
                Some(m) => return Ok(m),
                None => None,
            },
            false => local,
        };
        let client = &self.upstream(t).client;
        let key = (t.local.clone(), tag.clone());
        let unknown = || CoreError::ManifestUnknown(tag.to_string());
        let negative_key = format!("m {}:{tag}", t.local);
        if local.is_none() && self.negative.contains_key(&negative_key) {
            return Err(unknown());
        }
        // The upstream asked for a pause (429): what is held is served without asking.
        if let Some(m) = &local
            && let Some(left) = client.paused_for()
        {
            bump(&self.counters.stale_serves);
            tracing::debug!(upstream = %self.upstream(t).name, repository = %t.remote, tag = %tag,
                pause_left_s = left.as_secs(), "upstream paused after a 429; serving the cached tag");
            return Ok(m.clone());
        }
        let remote = &t.remote;
        let head = self
            .ask(t, &sources, |c| {
                let reference = &reference;
                async move { c.head_manifest(remote, reference).await }
            })
            .await;
        match head {
            Ok(head) => {
                if let Some(m) = local.filter(|m| m.digest == head.digest) {
                    bump(&self.counters.manifest_hits);
                    self.validated.insert(key, Instant::now());
                    return Ok(m);
                }
                let by_digest = Reference::Digest(head.digest.clone());
                // Moved to a manifest already held (pulled by digest, or an index child):
                // retag it without downloading it again.
                if let Some(m) = self.local_manifest(t, &by_digest).await? {
                    bump(&self.counters.manifest_hits);
                    self.registry
                        .manifest_put_mirrored(
                            &t.local,
                            Some(tag),
                            &m.digest,
                            Some(&m.media_type),
                            m.bytes.clone(),
                        )
                        .await?;
                    self.validated.insert(key, Instant::now());
                    return Ok(m);
                }
                bump(&self.counters.manifest_misses);
                let by_digest = &by_digest;
                let fetched = self
                    .ask(t, &sources, |c| async move {
                        c.get_manifest(remote, by_digest).await
                    })
                    .await
                    .map_err(|e| upstream_err(e, unknown))?;
                let m = self
                    .store_manifest(t, Some(tag), &head.digest, fetched)
                    .await?;
                self.validated.insert(key, Instant::now());
                Ok(m)
            }
            Err(e) if e.is_not_found() => match local {
                Some(m) if self.upstream(t).keep_deleted => {
                    tracing::info!(repository = %t.remote, tag = %tag, "tag deleted upstream; serving the cached copy (keep_deleted)");
                    Ok(m)
                }
                None => {
                    self.negative.insert(negative_key, ());
                    Err(unknown())
                }
                Some(_) => {
                    // Gone upstream: no stale serving of it from now on.
                    self.validated.invalidate(&key);
                    Err(unknown())
                }
            },
            Err(e) => match local {
                Some(m) => {
                    bump(&self.counters.stale_serves);
                    // Ask again after another TTL, not on every request while it is down.
                    self.validated.insert(key, Instant::now());
                    tracing::warn!(
                        upstream = %self.upstream(t).name, repository = %t.remote, tag = %tag,
                        error = %e, "upstream unavailable; serving the cached tag (stale-if-error)"
                    );
                    Ok(m)
                }
                None => Err(CoreError::Upstream(e)),
            },
        }
    }

    /// Verifies and stores a manifest fetched from the upstream; an index's children (of
    /// the upstream's `platforms`) are fetched in the background so pulls by platform work
    /// from the cache later, without the upstream, and each costs one request now.
    async fn store_manifest(
        self: &Arc<Self>,
        t: &Target,
        tag: Option<&Tag>,
        digest: &Digest,
        fetched: ManifestFetched,
    ) -> Result<Arc<ManifestContent>> {
        let computed = Digest::of(digest.algorithm(), &fetched.bytes);
        if &computed != digest {
            return Err(CoreError::Upstream(UpstreamError::Protocol(format!(
                "upstream served manifest bytes with digest {computed} for {digest}"
            ))));
        }
        let platforms = &self.upstream(t).platforms;
        let parsed = Manifest::parse(&fetched.bytes, Some(&fetched.media_type)).ok();
        // A signature, attestation or other artifact about another manifest (a `subject`,
        // or cosign's `sha256-<hex>.sig|att|sbom` tags): its own referrers are nobody's
        // concern, and the policies read these while deciding about their subject.
        let about_another = parsed.as_ref().is_some_and(|m| m.subject.is_some())
            || tag.is_some_and(|t| is_cosign_tag(t.as_str()));
        let children: Vec<Digest> = parsed
            .map(|m| {
                (m.manifests.into_iter())
                    .filter(|c| c.is_for(platforms))
                    .map(|c| c.digest)
                    .collect()
            })
            .unwrap_or_default();
        // Admission before anything is kept: a refused manifest is neither cached nor
        // served, and its children are not fetched.
        let content = Arc::new(MirrorContent {
            mirror: self.clone(),
            t: t.clone(),
        });
        // What refers to it at the upstream (signature bundles), for the policies: only
        // when one governs the repository, and nothing when the upstream cannot say.
        let referrers = if !about_another && self.registry.admission_governs(&t.local) {
            match self.upstream(t).client.referrers(&t.remote, digest).await {
                Ok(r) => r,
                Err(e) => {
                    tracing::debug!(repository = %t.remote, digest = %digest, error = %e, "upstream referrers unavailable to the admission policies");
                    Vec::new()
                }
            }
        } else {
            Vec::new()
        };
        self.registry
            .admit_fill(
                &t.local,
                tag,
                digest,
                (&fetched.media_type, &fetched.bytes),
                referrers,
                content,
            )
            .await?;
        let size = fetched.bytes.len() as u64;
        self.registry
            .manifest_put_mirrored(
                &t.local,
                tag,
                digest,
                Some(&fetched.media_type),
                fetched.bytes,
            )
            .await?;
        if let Some(o) = &self.observer {
            o.manifest_filled(&t.local, tag, digest, &fetched.media_type, size);
        }
        for child in children {
            tokio::spawn(self.clone().fetch_child(t.clone(), child));
        }
        self.registry
            .manifest_get(&t.local, &Reference::Digest(digest.clone()))
            .await
    }

    /// Fetches an index child in the background (boxed: the fetch may recurse).
    fn fetch_child(
        self: Arc<Self>,
        t: Target,
        child: Digest,
    ) -> std::pin::Pin<Box<dyn std::future::Future<Output = ()> + Send>> {
        Box::pin(async move {
            if let Err(e) = self.manifest(&t, &Reference::Digest(child.clone())).await {
                tracing::warn!(repository = %t.remote, digest = %child, error = %e, "fetching an index child failed");
            }
        })
    }

    // ---- blobs ----

    /// The size of a blob: stored, being fetched, or as the upstream says.
    pub async fn blob_size(&self, t: &Target, digest: &Digest) -> Result<u64> {
        match self.registry.blob_size(&t.local, digest).await {
            Err(CoreError::BlobUnknown(_)) => {}
            other => return other,
        }
        if let Some(size) = self
            .fills
            .lock()
            .expect("fills poisoned")
            .get(digest)
            .and_then(|f| f.size.or_else(|| f.verified_size()))
        {
            return Ok(size);
        }
        let key = format!("b {}@{digest}", t.local);
        if self.negative.contains_key(&key) {
            return Err(CoreError::BlobUnknown(digest.clone()));
        }
        let sources = self.sources(t, &digest.to_string());
        let remote = &t.remote;
        self.ask(
            t,
            &sources,
            |c| async move { c.head_blob(remote, digest).await },
        )
        .await
        .map_err(|e| self.remember(key, e, || CoreError::BlobUnknown(digest.clone())))
    }

    /// A blob from the store, or streamed from a (shared) fetch from the upstream.
    pub async fn blob(
        self: &Arc<Self>,
        t: &Target,
        digest: &Digest,
        range: Option<RangeSpec>,
    ) -> Result<MirrorBlob> {
        if let Some(read) = self.stored(t, digest, range).await? {
            bump(&self.counters.blob_hits);
            if let BlobRead::Content { size, range, .. } = &read {
                let n = range.map_or(*size, |(s, e)| e - s + 1);
                self.counters.cache_bytes.fetch_add(n, Ordering::Relaxed);
            }
            self.last_used.insert(digest.clone(), SystemTime::now());
            return Ok(MirrorBlob::Stored(read));
        }
        // A fill whose every byte is here and matched the digest (only its commit runs)
        // answers as the cache does: a hit, of known size.
        let (fill, size, hit) = match self.verified_fill(digest) {
            Some((fill, size)) => (fill, Some(size), true),
            None => match self.fill(t, digest).await? {
                Some(fill) => {
                    let size = fill.size;
                    (fill, size, false)
                }
                None => {
                    // Stored while this request waited for the fetch to start.
                    return self
                        .stored(t, digest, range)
                        .await?
                        .map(MirrorBlob::Stored)
                        .ok_or_else(|| CoreError::BlobUnknown(digest.clone()));
                }
            },
        };
        let (start, end, resolved) = match (range, size) {
            (None, size) => (0, size, None),
            (Some(r), Some(size)) => {
                let (s, e) = r
                    .resolve(size)
                    .ok_or(CoreError::RangeNotSatisfiable { size })?;
                (s, Some(e + 1), Some((s, e)))
            }
            (Some(r), None) => {
                // Unknown length: wait for the whole blob, then serve the range.
                let mut rx = fill.progress.clone();
                while rx.borrow_and_update().done.is_none() {
                    if rx.changed().await.is_err() {
                        break;
                    }
                }
                return self
                    .stored(t, digest, Some(r))
                    .await?
                    .map(MirrorBlob::Stored)
                    .ok_or_else(|| CoreError::BlobUnknown(digest.clone()));
            }
        };
        if hit {
            bump(&self.counters.blob_hits);
            let n = end.map_or(0, |e| e - start);
            self.counters.cache_bytes.fetch_add(n, Ordering::Relaxed);
        }
        Ok(MirrorBlob::Streaming {
            size,
            range: resolved,
            body: follow(fill, start, end),
        })
    }

    async fn stored(
        &self,
        t: &Target,
        digest: &Digest,
        range: Option<RangeSpec>,
    ) -> Result<Option<BlobRead>> {
        match self.registry.blob_read(&t.local, digest, range).await {
            Ok(r) => return Ok(Some(r)),
            Err(CoreError::BlobUnknown(_)) => {}
            Err(e) => return Err(e),
        }
        // Content-addressed: bytes another mirrored repository already verified serve here too.
        if self.registry.stores().blobs.stat(digest).await?.is_some() {
            self.registry
                .stores()
                .repos
                .link_blob(&t.local, digest)
                .await?;
            return match self.registry.blob_read(&t.local, digest, range).await {
                Ok(r) => Ok(Some(r)),
                Err(CoreError::BlobUnknown(_)) => Ok(None),
                Err(e) => Err(e),
            };
        }
        Ok(None)
    }

    /// The fill for `digest`: joins the one in progress or starts one. `None` when the blob
    /// was stored meanwhile.
    async fn fill(self: &Arc<Self>, t: &Target, digest: &Digest) -> Result<Option<Arc<Fill>>> {
        if let Some(f) = self.joinable(t, digest)? {
            return Ok(Some(f));
        }
        // Fills from a peer wait on their own lock: a peer's request, filled from the
        // upstream, never waits for this node's request to that peer (or to another).
        let sources = self.sources(t, &digest.to_string());
        let _guard = self
            .locks
            .lock(lock_name(&sources, format!("blob {digest}")))
            .await;
        if let Some(f) = self.joinable(t, digest)? {
            return Ok(Some(f));
        }
        if self.registry.stores().blobs.stat(digest).await?.is_some() {
            return Ok(None);
        }
        let key = format!("b {}@{digest}", t.local);
        if self.negative.contains_key(&key) {
            return Err(CoreError::BlobUnknown(digest.clone()));
        }
        if !self.lease_or_wait(digest).await? {
            return Ok(None);
        }
        let (fetched, source, rest) = match self.open_blob(t, sources, digest, 0).await {
            Ok(f) => f,
            Err(e) => {
                self.release_lease(digest).await;
                return Err(self.remember(key, e, || CoreError::BlobUnknown(digest.clone())));
            }
        };
        bump(&self.counters.blob_misses);
        let ingest = match self.ingest.begin_ingest(&t.local, digest).await {
            Ok(i) => i,
            Err(e) => {
                self.release_lease(digest).await;
                return Err(e.into());
            }
        };
        let (tx, rx) = watch::channel(Progress::default());
        let fill = Arc::new(Fill {
            reader: ingest.reader(),
            size: fetched.size,
            progress: rx,
            source: Mutex::new(source.as_ref().map(|p| p.id.clone())),
            recent: Mutex::new(Recent::default()),
        });
        // A peer's request (under the other lock) may have started the same fill
        // meanwhile: then join it. Its lease, if any, is this node's too.
        let started = {
            let mut fills = self.fills.lock().expect("fills poisoned");
            match fills.get(digest) {
                Some(f) => Some(f.clone()),
                None => {
                    fills.insert(digest.clone(), fill.clone());
                    None
                }
            }
        };
        if let Some(f) = started {
            ingest.abort().await;
            bump(&self.counters.blob_coalesced);
            return Ok(Some(f));
        }
        match &source {
            Some(p) => {
                tracing::info!(peer = %p.id, repository = %t.remote, digest = %digest, size = ?fetched.size, "fetching blob from its fleet owner")
            }
            None => {
                tracing::info!(upstream = %self.upstream(t).name, repository = %t.remote, digest = %digest, size = ?fetched.size, "fetching blob from upstream")
            }
        }
        let from = Sources {
            current: source,
            rest,
        };
        tokio::spawn(self.clone().run_fill(
            t.clone(),
            digest.clone(),
            (ingest, fill.clone()),
            (fetched, from),
            tx,
        ));
        Ok(Some(fill))
    }

    /// The fill of `digest` and the blob's size, if every byte of it is stored and
    /// verified (its commit is what runs).
    fn verified_fill(&self, digest: &Digest) -> Option<(Arc<Fill>, u64)> {
        let fills = self.fills.lock().expect("fills poisoned");
        let f = fills.get(digest)?;
        Some((f.clone(), f.verified_size()?))
    }

    /// The fill of `digest` in progress, if a request may join it: not a peer's request
    /// for a blob this node is fetching from that same peer (they would wait on each
    /// other).
    fn joinable(&self, t: &Target, digest: &Digest) -> Result<Option<Arc<Fill>>> {
        let fills = self.fills.lock().expect("fills poisoned");
        let Some(f) = fills.get(digest) else {
            return Ok(None);
        };
        if let Some(asker) = &t.peer
            && f.source.lock().expect("fill source poisoned").as_ref() == Some(asker)
        {
            return Err(CoreError::PeerBusy(digest.clone()));
        }
        bump(&self.counters.blob_coalesced);
        Ok(Some(f.clone()))
    }

    async fn release_lease(&self, digest: &Digest) {
        if let Some(l) = &self.leases
            && let Err(e) = l.release(&format!("fill {digest}")).await
        {
            tracing::warn!(digest = %digest, error = %e, "releasing the fill lease failed; it expires by itself");
        }
    }

    async fn run_fill(
        self: Arc<Self>,
        t: Target,
        digest: Digest,
        (ingest, fill): (Box<dyn pier_storage::Ingest>, Arc<Fill>),
        (first, mut from): (BlobFetched, Sources),
        tx: watch::Sender<Progress>,
    ) {
        let tx = Arc::new(tx);
        // The store writes and hashes on its own task while the source keeps sending.
        let (chunks, queue) = tokio::sync::mpsc::channel::<Bytes>(STORE_QUEUE);
        let writer = tokio::spawn(store_chunks(ingest, queue, fill.clone(), tx.clone()));
        let mut received = 0u64;
        let renewer = self.leases.clone().map(|leases| {
            let name = format!("fill {digest}");
            tokio::spawn(async move {
                loop {
                    tokio::time::sleep(FILL_LEASE_TTL / 3).await;
                    if !matches!(leases.renew(&name, FILL_LEASE_TTL).await, Ok(true)) {
                        tracing::warn!(lease = %name, "fill lease lost; another node may fetch the blob too");
                    }
                }
            })
        });
        let mut stream = first.stream;
        let mut resumes = 0;
        let transferred: std::result::Result<(), String> = loop {
            match stream.next().await {
                Some(Ok(chunk)) => {
                    let n = chunk.len() as u64;
                    match (&from.current, &self.peers) {
                        (Some(p), Some(peers)) => {
                            self.counters.peer_bytes.fetch_add(n, Ordering::Relaxed);
                            peers.received(&p.id, n);
                        }
                        _ => {
                            self.counters.upstream_bytes.fetch_add(n, Ordering::Relaxed);
                        }
                    }
                    (fill.recent.lock().expect("recent poisoned")).push(received, chunk.clone());
                    received += n;
                    tx.send_modify(|p| p.received = received);
                    if chunks.send(chunk).await.is_err() {
                        break Err("storing the blob failed".to_owned());
                    }
                }
                Some(Err(e)) if resumes < MAX_RESUMES => {
                    resumes += 1;
                    let offset = received;
                    tracing::warn!(digest = %digest, offset, error = %e, attempt = resumes, peer = ?from.current.as_ref().map(|p| &p.id), "transfer broke; resuming");
                    // A peer that broke off (killed, partitioned) is cooled down and the
                    // transfer resumes from the next source.
                    let mut rest = std::mem::take(&mut from.rest);
                    if let Some(p) = from.current.take() {
                        if let Some(peers) = &self.peers {
                            peers.failed(&p.id, &format!("transfer broke: {e}"));
                        }
                    } else {
                        rest.clear();
                    }
                    match self.open_blob(&t, rest, &digest, offset).await {
                        Ok((b, current, rest)) => {
                            stream = b.stream;
                            *fill.source.lock().expect("fill source poisoned") =
                                current.as_ref().map(|p| p.id.clone());
                            from = Sources { current, rest };
                        }
                        Err(e) => break Err(format!("resuming the transfer failed: {e}")),
                    }
                }
                Some(Err(e)) => break Err(format!("upstream transfer failed: {e}")),
                None => break Ok(()),
            }
        };
        drop(chunks);
        let (mut ingest, stored) = match writer.await {
            Ok(done) => done,
            Err(e) => {
                tracing::error!(digest = %digest, error = %e, "the store task of a fill failed");
                self.release_lease(&digest).await;
                self.fills.lock().expect("fills poisoned").remove(&digest);
                tx.send_modify(|p| p.done = Some(Err(Arc::from("storing the blob failed"))));
                return;
            }
        };
        let transferred = transferred.and(stored);
        // Every byte is stored, the last one still held back from the clients: the tests
        // pause here to prove that nothing reaches a client whole before the digest check.
        // (`FAILPOINTS=mirror-fill-before-verify=return(MS)`).
        #[cfg(feature = "failpoints")]
        crate::fail_pause("mirror-fill-before-verify").await;
        let outcome = match transferred {
            Ok(()) => {
                match ingest.verify().await {
                    Ok(()) => {
                        tx.send_modify(|p| p.verified = true);
                        // The tests hold the commit here to prove that clients have every
                        // byte before the blob is durable
                        // (`FAILPOINTS=mirror-fill-before-commit=return(MS)`).
                        #[cfg(feature = "failpoints")]
                        crate::fail_pause("mirror-fill-before-commit").await;
                        (self.registry.storage_timings())
                            .time("blob_put", ingest.commit())
                            .await
                            .map(drop)
                            .map_err(|e| e.to_string())
                    }
                    Err(e) => {
                        // A peer that served bytes of another digest is cooled down.
                        if let (
                            pier_storage::StorageError::DigestMismatch { .. },
                            Some(p),
                            Some(peers),
                        ) = (&e, &from.current, &self.peers)
                        {
                            peers.failed(&p.id, &format!("served bytes that do not verify: {e}"));
                        }
                        Err(e.to_string())
                    }
                }
            }
            Err(e) => {
                ingest.abort().await;
                Err(e)
            }
        };
        match &outcome {
            Ok(()) => {
                self.last_used.insert(digest.clone(), SystemTime::now());
                tracing::info!(digest = %digest, "blob fetched from upstream and verified")
            }
            Err(e) => {
                bump(&self.counters.fill_failures);
                tracing::error!(digest = %digest, error = %e, "blob fetch failed; nothing cached")
            }
        }
        if let Some(r) = renewer {
            r.abort();
        }
        self.release_lease(&digest).await;
        self.fills.lock().expect("fills poisoned").remove(&digest);
        tx.send_modify(|p| p.done = Some(outcome.map_err(Arc::from)));
    }
}

/// Stores a fill's chunks as they come, a batch per write, and tells its clients how far
/// the store is. Returns the ingest, and whether every chunk was stored.
async fn store_chunks(
    mut ingest: Box<dyn pier_storage::Ingest>,
    mut queue: tokio::sync::mpsc::Receiver<Bytes>,
    fill: Arc<Fill>,
    tx: Arc<watch::Sender<Progress>>,
) -> (
    Box<dyn pier_storage::Ingest>,
    std::result::Result<(), String>,
) {
    let mut batch = Vec::new();
    while queue.recv_many(&mut batch, STORE_QUEUE).await > 0 {
        if let Err(e) = ingest.write_batch(std::mem::take(&mut batch)).await {
            return (ingest, Err(format!("storing the blob failed: {e}")));
        }
        let stored = ingest.written();
        (fill.recent.lock().expect("recent poisoned")).trim(stored);
        tx.send_modify(|p| p.available = stored);
    }
    (ingest, Ok(()))
}

/// Where a fill's bytes come from: the peer answering now (`None`: the upstream), and the
/// peers to try after it, in order.
struct Sources {
    current: Option<PeerSource>,
    rest: VecDeque<PeerSource>,
}

/// The lock for `key`: requests that ask peers first lock apart from requests answered
/// from the upstream, so the latter (every peer's request) never wait for the former.
fn lock_name(sources: &VecDeque<PeerSource>, key: String) -> String {
    if sources.is_empty() {
        key
    } else {
        format!("peer {key}")
    }
}

/// Streams bytes `[start, end)` of a fill as they become available: from memory while
/// the client keeps up with the source, else from the store. The blob's last byte is held
/// back until the digest is verified, so no client ever receives a whole blob that turns
/// out corrupt: a mismatch ends every response with an error instead.
fn follow(fill: Arc<Fill>, start: u64, end: Option<u64>) -> ByteStream {
    let rx = fill.progress.clone();
    let state = (fill, rx, start, false);
    Box::pin(futures_util::stream::unfold(
        state,
        move |(fill, mut rx, pos, finished)| async move {
            if finished || end.is_some_and(|e| pos >= e) {
                return None;
            }
            loop {
                let p = rx.borrow_and_update().clone();
                // Once verified, a failing commit ends no client's stream.
                if !p.verified
                    && let Some(Err(msg)) = &p.done
                {
                    let e = io::Error::other(format!("upstream fetch failed: {msg}"));
                    return Some((Err(e), (fill, rx, pos, true)));
                }
                let verified = p.verified || p.done.is_some();
                let releasable = if verified {
                    p.available
                } else {
                    p.received.max(p.available).saturating_sub(1)
                };
                let limit = releasable.min(end.unwrap_or(u64::MAX));
                if limit > pos {
                    let recent = (fill.recent.lock().expect("recent poisoned")).slice(pos, limit);
                    if let Some(b) = recent {
                        let next = pos + b.len() as u64;
                        return Some((Ok(b), (fill, rx, next, false)));
                    }
                    let stored = limit.min(p.available);
                    if stored > pos {
                        let n = (stored - pos).min(FOLLOW_CHUNK);
                        return match fill.reader.read_at(pos, n as usize).await {
                            Ok(b) => Some((Ok(b), (fill, rx, pos + n, false))),
                            Err(e) => Some((Err(e), (fill, rx, pos, true))),
                        };
                    }
                }
                if verified && limit <= pos {
                    return None;
                }
                if rx.changed().await.is_err() {
                    let e = io::Error::other("the upstream fetch ended without a result");
                    return Some((Err(e), (fill, rx, pos, true)));
                }
            }
        },
    ))
}

/// The mirror's counters as Prometheus series (each named with `_total` once encoded).
struct MirrorSeries(Arc<Mirror>);

impl std::fmt::Debug for MirrorSeries {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("MirrorSeries")
    }
}

impl prometheus_client::collector::Collector for MirrorSeries {
    fn encode(
        &self,
        mut encoder: prometheus_client::encoding::DescriptorEncoder<'_>,
    ) -> std::fmt::Result {
        use prometheus_client::encoding::EncodeMetric as _;
        use prometheus_client::metrics::MetricType;
        use prometheus_client::metrics::counter::ConstCounter;
        let c = &self.0.counters;
        let rows = [
            (
                "pier_mirror_blob_hits",
                "Blob requests served from the cache.",
                &c.blob_hits,
            ),
            (
                "pier_mirror_blob_misses",
                "Blob fetches started from an upstream.",
                &c.blob_misses,
            ),
            (
                "pier_mirror_blob_coalesced",
                "Blob requests that joined a fetch in progress.",
                &c.blob_coalesced,
            ),
            (
                "pier_mirror_manifest_hits",
                "Manifest requests served from the cache.",
                &c.manifest_hits,
            ),
            (
                "pier_mirror_manifest_misses",
                "Manifests fetched from an upstream.",
                &c.manifest_misses,
            ),
            (
                "pier_mirror_stale_serves",
                "Cached tags served because the upstream failed.",
                &c.stale_serves,
            ),
            (
                "pier_mirror_upstream_bytes",
                "Blob bytes received from upstreams.",
                &c.upstream_bytes,
            ),
            (
                "pier_mirror_peer_bytes",
                "Blob bytes received from fleet peers instead of the upstream.",
                &c.peer_bytes,
            ),
            (
                "pier_mirror_peer_answers",
                "Upstream requests saved: blob, manifest and tag requests a fleet peer answered.",
                &c.peer_answers,
            ),
            (
                "pier_mirror_cache_bytes",
                "Blob bytes answered from the cache (not fetched from an upstream again).",
                &c.cache_bytes,
            ),
            (
                "pier_mirror_fill_failures",
                "Upstream fetches that failed or did not verify.",
                &c.fill_failures,
            ),
        ];
        for (name, help, v) in rows {
            ConstCounter::new(v.load(Ordering::Relaxed)).encode(encoder.encode_descriptor(
                name,
                help,
                None,
                MetricType::Counter,
            )?)?;
        }
        Ok(())
    }
}

/// What an admission policy reads while a manifest is filled: the upstream's content,
/// through the mirror (signature manifests and payloads are cached like any other).
/// cosign's tag of a signature, attestation or SBOM: `sha256-<64 hex>.sig|att|sbom`.
fn is_cosign_tag(tag: &str) -> bool {
    let Some((hex, suffix)) = tag
        .strip_prefix("sha256-")
        .and_then(|rest| rest.split_once('.'))
    else {
        return false;
    };
    hex.len() == 64
        && hex.bytes().all(|b| b.is_ascii_hexdigit())
        && matches!(suffix, "sig" | "att" | "sbom")
}

struct MirrorContent {
    mirror: Arc<Mirror>,
    t: Target,
}

#[async_trait::async_trait]
impl pier_auth::admission::ContentReader for MirrorContent {
    async fn manifest(
        &self,
        reference: &str,
    ) -> std::result::Result<pier_auth::admission::ReadManifest, pier_auth::admission::ReadError>
    {
        use pier_auth::admission::ReadError;
        let r: Reference = reference.parse().map_err(|_| ReadError::NotFound)?;
        match self.mirror.manifest(&self.t, &r).await {
            Ok(m) => Ok(pier_auth::admission::ReadManifest {
                digest: m.digest.to_string(),
                media_type: m.media_type.clone(),
                bytes: m.bytes.clone(),
            }),
            Err(
                CoreError::ManifestUnknown(_)
                | CoreError::NameUnknown(_)
                | CoreError::Upstream(UpstreamError::NotFound),
            ) => Err(ReadError::NotFound),
            Err(e) => Err(ReadError::Unavailable(e.to_string())),
        }
    }

    async fn blob(
        &self,
        digest: &str,
        max_size: u64,
    ) -> std::result::Result<Bytes, pier_auth::admission::ReadError> {
        use pier_auth::admission::ReadError;
        let d: Digest = digest.parse().map_err(|_| ReadError::NotFound)?;
        let unavailable = |e: CoreError| match e {
            CoreError::BlobUnknown(_) | CoreError::Upstream(UpstreamError::NotFound) => {
                ReadError::NotFound
            }
            e => ReadError::Unavailable(e.to_string()),
        };
        let max = max_size.min(pier_auth::admission::MAX_READ);
        if self
            .mirror
            .blob_size(&self.t, &d)
            .await
            .map_err(unavailable)?
            > max
        {
            return Err(ReadError::TooLarge);
        }
        let body = match self
            .mirror
            .blob(&self.t, &d, None)
            .await
            .map_err(unavailable)?
        {
            MirrorBlob::Stored(BlobRead::Content {
                body: pier_storage::BlobBody::Bytes(b),
                ..
            }) => return Ok(b),
            MirrorBlob::Stored(BlobRead::Content {
                body: pier_storage::BlobBody::Stream(s),
                ..
            }) => s,
            MirrorBlob::Streaming { body, .. } => body,
            MirrorBlob::Stored(BlobRead::Redirect(_)) => {
                return Err(ReadError::Unavailable(
                    "the storage answers with a redirect".into(),
                ));
            }
        };
        crate::admission::collect_bounded(body, max).await
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::AtomicUsize;

    use bytes::Bytes;
    use pier_oci::{Algorithm, media_types};
    use pier_storage::BlobBody;
    use pier_storage::fs::FsStore;
    use pier_upstream::ManifestHead;

    use super::*;
    use crate::Leases as _;
    use crate::Stores;

    /// An in-process upstream: serves fixed content slowly, counts blob GETs.
    struct FakeUpstream {
        /// The first blob transfer breaks after this many bytes (0: never).
        break_after: AtomicUsize,
        blob_offsets: Mutex<Vec<u64>>,
        tag_gone: std::sync::atomic::AtomicBool,
        manifest_heads: AtomicUsize,
        blob: Vec<u8>,
        serve_corrupt: std::sync::atomic::AtomicBool,
        blob_gets: AtomicUsize,
        manifest: Bytes,
    }

    #[async_trait::async_trait]
    impl Upstream for FakeUpstream {
        fn name(&self) -> &str {
            "fake"
        }
        async fn get_manifest(
            &self,
            _: &RepoName,
            r: &Reference,
        ) -> Result<ManifestFetched, UpstreamError> {
            match r {
                Reference::Tag(t)
                    if t.as_str() == "v1" && !self.tag_gone.load(Ordering::SeqCst) => {}
                Reference::Digest(d) if *d == Digest::of(Algorithm::Sha256, &self.manifest) => {}
                _ => return Err(UpstreamError::NotFound),
            }
            Ok(ManifestFetched {
                bytes: self.manifest.clone(),
                media_type: media_types::OCI_MANIFEST.into(),
                digest: None,
            })
        }
        async fn head_manifest(
            &self,
            _: &RepoName,
            r: &Reference,
        ) -> Result<ManifestHead, UpstreamError> {
            self.manifest_heads.fetch_add(1, Ordering::SeqCst);
            let m = self.get_manifest(&"x".parse().unwrap(), r).await?;
            Ok(ManifestHead {
                digest: Digest::of(Algorithm::Sha256, &m.bytes),
                media_type: m.media_type,
                size: m.bytes.len() as u64,
            })
        }
        async fn head_blob(&self, _: &RepoName, _: &Digest) -> Result<u64, UpstreamError> {
            Ok(self.blob.len() as u64)
        }
        async fn get_blob(
            &self,
            _: &RepoName,
            digest: &Digest,
            offset: u64,
        ) -> Result<BlobFetched, UpstreamError> {
            self.blob_gets.fetch_add(1, Ordering::SeqCst);
            if *digest != Digest::of(Algorithm::Sha256, &self.blob) {
                return Err(UpstreamError::NotFound);
            }
            self.blob_offsets.lock().unwrap().push(offset);
            let mut data = self.blob[offset as usize..].to_vec();
            if self.serve_corrupt.load(Ordering::SeqCst) {
                data[0] ^= 0xff;
            }
            let mut chunks: Vec<io::Result<Bytes>> = data
                .chunks(64 * 1024)
                .map(|c| Ok(Bytes::copy_from_slice(c)))
                .collect();
            let cut = self.break_after.swap(0, Ordering::SeqCst) / (64 * 1024);
            if cut > 0 && cut < chunks.len() {
                chunks.truncate(cut);
                chunks.push(Err(io::Error::new(
                    io::ErrorKind::ConnectionReset,
                    "upstream died",
                )));
            }
            // Slow enough that concurrent requests overlap the fill.
            let stream = futures_util::stream::iter(chunks).then(|c| async move {
                tokio::time::sleep(Duration::from_millis(2)).await;
                c
            });
            Ok(BlobFetched {
                size: Some(self.blob.len() as u64),
                stream: Box::pin(stream),
            })
        }
    }

    fn setup(
        dir: &std::path::Path,
        blob: Vec<u8>,
    ) -> (Arc<Mirror>, Arc<FakeUpstream>, Target, Digest) {
        setup_with(dir, blob, Duration::from_secs(60), false)
    }

    fn setup_with(
        dir: &std::path::Path,
        blob: Vec<u8>,
        tag_ttl: Duration,
        keep_deleted: bool,
    ) -> (Arc<Mirror>, Arc<FakeUpstream>, Target, Digest) {
        setup_full(dir, blob, tag_ttl, Duration::ZERO, keep_deleted)
    }

    /// A mirror config with `up` as the default upstream (and `team/` kept local).
    fn one_upstream(
        up: Arc<FakeUpstream>,
        tag_ttl: Duration,
        stale_while_revalidate: Duration,
        keep_deleted: bool,
    ) -> MirrorConfig {
        MirrorConfig {
            upstreams: vec![UpstreamSpec {
                name: "up".into(),
                namespace: "up.example".into(),
                tag_ttl,
                stale_while_revalidate,
                docker_hub: true,
                keep_deleted,
                platforms: Vec::new(),
                client: up,
            }],
            default: Some(0),
            local_namespaces: vec!["team".into()],
        }
    }

    fn setup_full(
        dir: &std::path::Path,
        blob: Vec<u8>,
        tag_ttl: Duration,
        stale_while_revalidate: Duration,
        keep_deleted: bool,
    ) -> (Arc<Mirror>, Arc<FakeUpstream>, Target, Digest) {
        let store = Arc::new(FsStore::new(dir).unwrap());
        let registry = Arc::new(Registry::new(Stores::from_backend(store.clone())));
        let d = Digest::of(Algorithm::Sha256, &blob);
        let manifest = Bytes::from(format!(
            r#"{{"schemaVersion":2,"mediaType":"{}","config":{{"mediaType":"application/vnd.oci.image.config.v1+json","digest":"{d}","size":{}}},"layers":[]}}"#,
            media_types::OCI_MANIFEST,
            blob.len()
        ));
        let up = Arc::new(FakeUpstream {
            break_after: AtomicUsize::new(0),
            blob_offsets: Mutex::new(Vec::new()),
            tag_gone: false.into(),
            manifest_heads: AtomicUsize::new(0),
            blob,
            serve_corrupt: false.into(),
            blob_gets: AtomicUsize::new(0),
            manifest,
        });
        let config = one_upstream(up.clone(), tag_ttl, stale_while_revalidate, keep_deleted);
        let mirror = Arc::new(Mirror::new(registry, store, config));
        let t = mirror.route(&"alpine".parse().unwrap(), None).unwrap();
        (mirror, up, t, d)
    }

    /// Waits for the fill of `d` to end: its clients have every byte once the digest
    /// matched, while the commit (fsync, rename into place) may still run.
    async fn committed(m: &Mirror, d: &Digest) {
        for _ in 0..500 {
            if !m.fills.lock().unwrap().contains_key(d) {
                return;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        panic!("the fill of {d} did not end");
    }

    async fn read_all(m: MirrorBlob) -> io::Result<Vec<u8>> {
        let mut s = match m {
            MirrorBlob::Streaming { body, .. } => body,
            MirrorBlob::Stored(BlobRead::Content {
                body: BlobBody::Bytes(b),
                ..
            }) => return Ok(b.to_vec()),
            MirrorBlob::Stored(BlobRead::Content {
                body: BlobBody::Stream(s),
                ..
            }) => s,
            MirrorBlob::Stored(BlobRead::Redirect(_)) => panic!("redirect"),
        };
        let mut out = Vec::new();
        while let Some(c) = s.next().await {
            out.extend_from_slice(&c?);
        }
        Ok(out)
    }

    #[test]
    fn recent_chunks_serve_what_they_hold_and_keep_only_what_is_not_stored() {
        let mut r = Recent::default();
        let chunk = |n: usize, b: u8| Bytes::from(vec![b; n]);
        let mb = 1024 * 1024;
        for i in 0..10u8 {
            r.push(u64::from(i) * mb as u64, chunk(mb, i));
        }
        // A slice stops at the chunk's end and at the limit.
        assert_eq!(r.slice(0, u64::MAX).map(|b| b.len()), Some(mb));
        let b = r.slice(3 * mb as u64 + 10, 3 * mb as u64 + 20).unwrap();
        assert_eq!((b.len(), b[0]), (10, 3));
        assert!(
            r.slice(10 * mb as u64, u64::MAX).is_none(),
            "not received yet"
        );
        // Nothing stored: nothing goes, however much is held.
        r.trim(0);
        assert_eq!(r.chunks.len(), 10);
        // All stored: down to RECENT_MAX (8 MiB), the oldest first.
        r.trim(10 * mb as u64);
        assert_eq!(r.bytes, RECENT_MAX);
        assert!(
            r.slice(0, u64::MAX).is_none(),
            "the oldest chunk left memory"
        );
        assert_eq!(r.slice(2 * mb as u64, u64::MAX).map(|b| b[0]), Some(2));
    }

    #[test]
    fn routes_names() {
        let dir = tempfile::tempdir().unwrap();
        let (m, _, t, _) = setup(dir.path(), vec![1]);
        assert_eq!(t.remote.as_str(), "library/alpine");
        assert_eq!(t.local.as_str(), "up/library/alpine");
        let by_prefix = m
            .route(&"up/library/alpine".parse().unwrap(), None)
            .unwrap();
        assert_eq!(by_prefix, t);
        let by_ns = m
            .route(&"library/alpine".parse().unwrap(), Some("up.example"))
            .unwrap();
        assert_eq!(by_ns, t);
        assert!(m.route(&"team/app".parse().unwrap(), None).is_none());
        assert!(
            m.route(&"x".parse().unwrap(), Some("other.example"))
                .is_none()
        );
        // A bogus ?ns= is never local: the cache namespace can't be written through it.
        let cached: RepoName = "up/library/alpine".parse().unwrap();
        assert_eq!(
            m.place(&cached, Some("bogus")),
            Place::UnknownNamespace("bogus".into())
        );
        assert_eq!(m.place(&cached, None), Place::Mirrored(t.clone()));
        let team: RepoName = "team/app".parse().unwrap();
        assert_eq!(m.place(&team, None), Place::Local);
        let alpine: RepoName = "library/alpine".parse().unwrap();
        let by_ns = m.place(&alpine, Some("up.example"));
        assert_eq!(by_ns.served(&alpine), &t.local);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn concurrent_misses_share_one_fetch() {
        let dir = tempfile::tempdir().unwrap();
        let blob: Vec<u8> = (0..3_000_000u32).map(|i| (i % 253) as u8).collect();
        let (m, up, t, d) = setup(dir.path(), blob.clone());
        let mut tasks = Vec::new();
        for i in 0..20 {
            let (m, t, d) = (m.clone(), t.clone(), d.clone());
            tasks.push(tokio::spawn(async move {
                // late joiners arrive while the fill is under way
                tokio::time::sleep(Duration::from_millis(i * 3)).await;
                read_all(m.blob(&t, &d, None).await.unwrap()).await.unwrap()
            }));
        }
        for task in tasks {
            assert!(task.await.unwrap() == blob, "a client got wrong bytes");
        }
        committed(&m, &d).await;
        assert_eq!(
            up.blob_gets.load(Ordering::SeqCst),
            1,
            "one upstream fetch for all"
        );
        // now served from the store, with ranges
        let again = m
            .blob(&t, &d, Some(RangeSpec::FromTo(10, 19)))
            .await
            .unwrap();
        assert!(matches!(again, MirrorBlob::Stored(_)));
        assert_eq!(read_all(again).await.unwrap(), &blob[10..20]);
        assert_eq!(up.blob_gets.load(Ordering::SeqCst), 1);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn corrupt_upstream_caches_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let blob = vec![7u8; 500_000];
        let (m, up, t, d) = setup(dir.path(), blob.clone());
        up.serve_corrupt.store(true, Ordering::SeqCst);
        let res = read_all(m.blob(&t, &d, None).await.unwrap()).await;
        assert!(res.is_err(), "a corrupt transfer must abort the client");
        assert!(m.registry.stores().blobs.stat(&d).await.unwrap().is_none());
        up.serve_corrupt.store(false, Ordering::SeqCst);
        assert_eq!(
            read_all(m.blob(&t, &d, None).await.unwrap()).await.unwrap(),
            blob
        );
        assert_eq!(up.blob_gets.load(Ordering::SeqCst), 2);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn eviction_keeps_the_bound_and_content_stays_correct() {
        let dir = tempfile::tempdir().unwrap();
        let blob = vec![9u8; 400_000];
        let (m, up, t, d) = setup(dir.path(), blob.clone());
        assert_eq!(
            read_all(m.blob(&t, &d, None).await.unwrap()).await.unwrap(),
            blob
        );
        committed(&m, &d).await;
        // a locally pushed blob is never evicted
        let local_repo: RepoName = "team/app".parse().unwrap();
        let local_blob = vec![3u8; 300_000];
        let ld = Digest::of(Algorithm::Sha256, &local_blob);
        let body: pier_storage::ByteStream = Box::pin(futures_util::stream::iter(vec![Ok(
            Bytes::from(local_blob.clone()),
        )]));
        m.registry
            .upload_monolithic(&local_repo, &ld, body)
            .await
            .unwrap();
        // within the bound: nothing happens
        let r = m.evict(1_000_000).await.unwrap();
        assert_eq!(r.cached_bytes, 400_000);
        assert!(r.evicted.is_empty());
        // over the bound: the mirrored blob goes, the local one stays
        let r = m.evict(100_000).await.unwrap();
        assert_eq!(r.evicted, vec![d.clone()]);
        assert!(m.registry.stores().blobs.stat(&d).await.unwrap().is_none());
        assert!(m.registry.stores().blobs.stat(&ld).await.unwrap().is_some());
        // and is fetched again, correctly, on the next request
        assert_eq!(
            read_all(m.blob(&t, &d, None).await.unwrap()).await.unwrap(),
            blob
        );
        assert_eq!(up.blob_gets.load(Ordering::SeqCst), 2);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn broken_transfer_resumes_from_the_offset_reached() {
        let dir = tempfile::tempdir().unwrap();
        let blob: Vec<u8> = (0..1_000_000u32).map(|i| (i % 241) as u8).collect();
        let (m, up, t, d) = setup(dir.path(), blob.clone());
        up.break_after.store(5 * 64 * 1024, Ordering::SeqCst);
        assert!(read_all(m.blob(&t, &d, None).await.unwrap()).await.unwrap() == blob);
        assert_eq!(
            *up.blob_offsets.lock().unwrap(),
            vec![0, 5 * 64 * 1024],
            "resumed with a range, not from 0"
        );
        committed(&m, &d).await;
        assert!(m.registry.stores().blobs.stat(&d).await.unwrap().is_some());
    }

    #[tokio::test]
    async fn misses_upstream_are_remembered_briefly() {
        let dir = tempfile::tempdir().unwrap();
        let (m, up, t, _) = setup(dir.path(), vec![5; 10]);
        let unknown = Digest::of(Algorithm::Sha256, b"nobody has this");
        for _ in 0..3 {
            assert!(matches!(
                m.blob(&t, &unknown, None).await,
                Err(CoreError::BlobUnknown(_))
            ));
        }
        assert_eq!(
            up.blob_gets.load(Ordering::SeqCst),
            1,
            "one upstream request for three misses"
        );
        for _ in 0..2 {
            assert!(matches!(
                m.manifest(&t, &"nope".parse().unwrap()).await,
                Err(CoreError::ManifestUnknown(_))
            ));
        }
    }

    /// Two "nodes" (two mirrors) over one shared store and one lease table: concurrent
    /// cold requests on both make exactly one upstream fetch, and both serve the bytes.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn nodes_sharing_a_store_fetch_a_cold_blob_once() {
        let dir = tempfile::tempdir().unwrap();
        let blob: Vec<u8> = (0..3_000_000u32).map(|i| (i % 251) as u8).collect();
        let (a, up, t, d) = setup(dir.path(), blob.clone());
        let leases = crate::MemoryLeases::default();
        // Node B: its own Mirror (own in-process coalescing) on the same directory and
        // upstream, sharing the lease table with node A.
        let store = Arc::new(FsStore::new(dir.path()).unwrap());
        let registry = Arc::new(Registry::new(Stores::from_backend(store.clone())));
        let ttl = Duration::from_secs(60);
        let config = one_upstream(up.clone(), ttl, Duration::ZERO, false);
        let b = Arc::new(
            Mirror::new(registry, store, config).with_leases(Arc::new(leases.for_owner("b"))),
        );
        // Node A gets leases too (rebuild it on the same parts).
        let a = Arc::new(
            Mirror::new(
                a.registry.clone(),
                a.ingest.clone(),
                one_upstream(up.clone(), ttl, Duration::ZERO, false),
            )
            .with_leases(Arc::new(leases.for_owner("a"))),
        );
        let mut tasks = Vec::new();
        for i in 0..12 {
            let node = if i % 2 == 0 { a.clone() } else { b.clone() };
            let (t, d) = (t.clone(), d.clone());
            tasks.push(tokio::spawn(async move {
                read_all(node.blob(&t, &d, None).await.unwrap())
                    .await
                    .unwrap()
            }));
        }
        for task in tasks {
            assert_eq!(task.await.unwrap(), blob);
        }
        assert_eq!(
            up.blob_gets.load(Ordering::SeqCst),
            1,
            "one upstream fetch across both nodes"
        );
        assert!(
            !leases.held(&format!("fill {d}")).await.unwrap(),
            "the lease was released"
        );
    }

    #[tokio::test]
    async fn stale_while_revalidate_answers_at_once_and_refreshes_behind() {
        let dir = tempfile::tempdir().unwrap();
        let (m, up, t, _) = setup_full(
            dir.path(),
            vec![1],
            Duration::ZERO,
            Duration::from_secs(60),
            false,
        );
        let tag: Reference = "v1".parse().unwrap();
        let first = m.manifest(&t, &tag).await.unwrap();
        let heads = up.manifest_heads.load(Ordering::SeqCst);
        // Past the TTL, inside the window: the upstream is gone, yet the cached tag is
        // answered at once and a background HEAD asks about it.
        up.tag_gone.store(true, Ordering::SeqCst);
        let stale = m.manifest(&t, &tag).await.unwrap();
        assert_eq!(stale.digest, first.digest);
        let mut asked = false;
        for _ in 0..100 {
            if up.manifest_heads.load(Ordering::SeqCst) > heads {
                asked = true;
                break;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        assert!(asked, "a background revalidation asked the upstream");
        // It learnt the tag is gone: no more stale answers.
        let mut gone = false;
        for _ in 0..100 {
            if matches!(
                m.manifest(&t, &tag).await,
                Err(CoreError::ManifestUnknown(_))
            ) {
                gone = true;
                break;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        assert!(gone, "a tag deleted upstream stops being served");
    }

    #[tokio::test]
    async fn tags_deleted_upstream() {
        for keep in [false, true] {
            let dir = tempfile::tempdir().unwrap();
            let (m, up, t, _) = setup_with(dir.path(), vec![1], Duration::ZERO, keep);
            let tag: Reference = "v1".parse().unwrap();
            let first = m.manifest(&t, &tag).await.unwrap();
            up.tag_gone.store(true, Ordering::SeqCst);
            match m.manifest(&t, &tag).await {
                Ok(again) => assert!(keep && again.digest == first.digest, "keep_deleted={keep}"),
                Err(CoreError::ManifestUnknown(_)) => {
                    assert!(!keep, "keep_deleted must keep serving")
                }
                Err(e) => panic!("{e}"),
            }
        }
    }

    #[tokio::test]
    async fn manifests_by_tag_and_digest() {
        let dir = tempfile::tempdir().unwrap();
        let (m, up, t, _) = setup(dir.path(), vec![1, 2, 3]);
        let by_tag = m.manifest(&t, &"v1".parse().unwrap()).await.unwrap();
        assert_eq!(by_tag.bytes, up.manifest);
        let by_digest = m
            .manifest(&t, &Reference::Digest(by_tag.digest.clone()))
            .await
            .unwrap();
        assert_eq!(by_digest.digest, by_tag.digest);
        assert!(matches!(
            m.manifest(&t, &"nope".parse().unwrap()).await,
            Err(CoreError::ManifestUnknown(_))
        ));
    }
}
