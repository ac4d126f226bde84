//! Mark and sweep garbage collection.
//!
//! Mark: every manifest linked in a repository (with `untagged`, only manifests reachable
//! from a tag — through index children and referrers), and the blobs they reference.
//! Sweep: blobs nobody marked, older than the grace period, so content pushed while the
//! collection runs (blobs whose manifest has not arrived yet) is never removed.
//!
//! Online: a [`GcFence`] (one per [`Registry`]) makes a collection safe while the same
//! process serves pushes. Every write that makes content referenced (a manifest put,
//! a mount, an upload commit) names its digests to the fence before checking that they
//! exist and holds the fence until it is linked; a collection takes the fence to start
//! and, for each removal, to check those names and delete. So either the sweep sees the
//! digest and keeps it, or the write's check sees the blob gone and fails cleanly
//! (`MANIFEST_BLOB_UNKNOWN`, the client uploads again): a stored manifest never names
//! content the collection removed.
//!
//! Scaled out ([`GcPeers`], Redis): a collection is announced to every node sharing the
//! storage; while it runs, each node's fenced writes record the digests they reference
//! in the shared state, and then check that the collection is not removing them; the
//! collection, for each removal, marks the digest as being removed and then checks that
//! no write recorded it. Each side writes its mark before it reads the other's, so at
//! least one of them sees the other: the collection keeps the digest, or the write fails
//! cleanly (503, the client retries). A collection waits [`SETTLE`] after announcing
//! itself, so writes that looked before the announcement (nodes read it at most every
//! second) have linked what they reference by the time it marks. An offline `pier gc` beside running servers is not
//! fenced.

use std::collections::{BTreeSet, HashMap, HashSet};
use std::sync::Mutex;
use std::time::{Duration, SystemTime};

use pier_oci::{Digest, Manifest, Reference, RepoName};
use tokio::sync::{RwLock, RwLockReadGuard};

use crate::{CoreError, Registry, Result};

/// How long a collection waits between announcing itself to the other nodes and marking.
pub const SETTLE: Duration = Duration::from_secs(2);

/// The other nodes sharing the storage, as a collection coordinates with them (see the
/// module documentation).
#[async_trait::async_trait]
pub trait GcPeers: Send + Sync {
    /// Announces a collection; `false` when one already runs on some node.
    async fn begin(&self) -> Result<bool>;
    /// Ends it (forgets what was recorded).
    async fn end(&self) -> Result<()>;
    /// While a collection runs on some node: records that a write references `digests`,
    /// and returns one of them the collection is removing (the write must fail), if any.
    async fn touch(&self, digests: &[Digest]) -> Result<Option<Digest>>;
    /// Marks `digest` as being removed; `false` when a write recorded it (keep it).
    async fn claim(&self, digest: &Digest) -> Result<bool>;
}

/// Serializes an online collection with the writes that reference content (see the
/// module documentation).
#[derive(Default)]
pub struct GcFence {
    /// Writes hold it shared from their existence check until the link; a collection
    /// holds it exclusively to start and around each removal.
    gate: RwLock<()>,
    state: Mutex<FenceState>,
    /// The other nodes, when scaled out.
    peers: Option<std::sync::Arc<dyn GcPeers>>,
}

#[derive(Default)]
struct FenceState {
    running: bool,
    /// Digests writes referenced since the running collection started.
    touched: HashSet<Digest>,
}

impl GcFence {
    /// Whether a collection is running in this process.
    pub fn running(&self) -> bool {
        self.state.lock().expect("gc fence poisoned").running
    }

    /// Starts a collection; `None` while another one runs. The collection ends when the
    /// returned run is dropped.
    pub async fn begin(&self) -> Option<GcRun<'_>> {
        if self.running() {
            return None;
        }
        // Writes in flight finish first: whatever they link, the marking sees.
        let _all = self.gate.write().await;
        let mut s = self.state.lock().expect("gc fence poisoned");
        if s.running {
            return None;
        }
        s.running = true;
        s.touched.clear();
        Some(GcRun { fence: self })
    }

    /// Coordinates with the other nodes sharing the storage through `peers`.
    pub(crate) fn set_peers(&mut self, peers: std::sync::Arc<dyn GcPeers>) {
        self.peers = Some(peers);
    }

    /// Whether collections coordinate with other nodes.
    pub fn shared(&self) -> bool {
        self.peers.is_some()
    }

    /// Names the digests a write is about to reference; hold the guard until they are
    /// linked. Fails when a collection on another node is removing one of them.
    pub(crate) async fn enter<'a>(
        &self,
        digests: impl IntoIterator<Item = &'a Digest>,
    ) -> Result<RwLockReadGuard<'_, ()>> {
        let digests: Vec<Digest> = digests.into_iter().cloned().collect();
        let guard = self.gate.read().await;
        {
            let mut s = self.state.lock().expect("gc fence poisoned");
            if s.running {
                s.touched.extend(digests.iter().cloned());
            }
        }
        if let Some(p) = &self.peers
            && let Some(d) = p.touch(&digests).await?
        {
            return Err(CoreError::Coordination(format!(
                "a garbage collection is removing {d}; push it again"
            )));
        }
        Ok(guard)
    }

    /// Runs `remove` unless a write referenced `digest` during the collection; whether
    /// it ran.
    async fn remove_unless_touched<F>(&self, digest: &Digest, remove: F) -> Result<bool>
    where
        F: std::future::Future<Output = Result<()>>,
    {
        let _all = self.gate.write().await;
        if self
            .state
            .lock()
            .expect("gc fence poisoned")
            .touched
            .contains(digest)
        {
            return Ok(false);
        }
        if let Some(p) = &self.peers
            && !p.claim(digest).await?
        {
            return Ok(false);
        }
        // The scale-out test pauses here, between the claim and the removal:
        // `FAILPOINTS=gc-before-remove=return(MS)` waits MS milliseconds.
        #[cfg(feature = "failpoints")]
        crate::fail_pause("gc-before-remove").await;
        remove.await?;
        Ok(true)
    }
}

/// A running collection (from [`GcFence::begin`]); dropping it ends the collection.
pub struct GcRun<'a> {
    fence: &'a GcFence,
}

impl Drop for GcRun<'_> {
    fn drop(&mut self) {
        let mut s = self.fence.state.lock().expect("gc fence poisoned");
        s.running = false;
        s.touched.clear();
    }
}

#[derive(Debug, Clone)]
pub struct GcOptions {
    pub dry_run: bool,
    /// Also remove manifests no tag reaches.
    pub untagged: bool,
    /// Blobs modified more recently than this are kept.
    pub grace: Duration,
}

/// What a collection freed (or, in a dry run, would free).
#[derive(Debug, Default, Clone)]
pub struct GcReport {
    pub manifests_removed: Vec<(RepoName, Digest)>,
    pub blobs_removed: Vec<(Digest, u64)>,
    pub blobs_kept_by_grace: usize,
    pub blobs_marked: usize,
    /// Unreferenced when marked, referenced again by a push while the collection ran.
    pub kept_in_use: usize,
}

impl GcReport {
    pub fn bytes_freed(&self) -> u64 {
        self.blobs_removed.iter().map(|(_, s)| s).sum()
    }
}

/// Runs one collection, calling `progress` with a line per item freed; `None` when
/// another collection is running in this process (or, scaled out, on another node).
pub async fn collect(
    registry: &Registry,
    opts: &GcOptions,
    progress: impl FnMut(&str),
) -> Result<Option<GcReport>> {
    let fence = registry.gc_fence();
    let Some(run) = fence.begin().await else {
        return Ok(None);
    };
    if let Some(p) = &fence.peers {
        if !p.begin().await? {
            return Ok(None);
        }
        // Writes that looked before the announcement link what they reference meanwhile.
        tokio::time::sleep(SETTLE).await;
    }
    let report = run_collection(&run, registry, opts, progress).await;
    if let Some(p) = &fence.peers
        && let Err(e) = p.end().await
    {
        tracing::warn!(error = %e, "ending the shared garbage collection failed; its marks expire");
    }
    drop(run);
    if let Some(q) = registry.quotas() {
        q.forget_all();
    }
    report.map(Some)
}

async fn run_collection(
    run: &GcRun<'_>,
    registry: &Registry,
    opts: &GcOptions,
    mut progress: impl FnMut(&str),
) -> Result<GcReport> {
    let fence = run.fence;
    let stores = registry.stores();
    let mut report = GcReport::default();
    let mut marked: HashSet<Digest> = HashSet::new();
    // Listed before marking: what is stored later is not swept by this collection.
    let now = SystemTime::now();
    let blobs = stores.blobs.list().await?;
    let modified: HashMap<&Digest, SystemTime> =
        blobs.iter().map(|b| (&b.digest, b.modified)).collect();
    let recent = |d: &Digest| {
        modified
            .get(d)
            .is_none_or(|m| now.duration_since(*m).unwrap_or_default() < opts.grace)
    };

    for repo in stores.repos.repositories().await? {
        let linked: BTreeSet<Digest> = stores
            .manifests
            .manifests(&repo)
            .await?
            .into_iter()
            .collect();
        let mut keep: BTreeSet<Digest> = if opts.untagged {
            let mut roots = Vec::new();
            for t in stores.manifests.tags(&repo).await?.unwrap_or_default() {
                if let Some(d) = stores.manifests.resolve_tag(&repo, &t).await? {
                    roots.push(d);
                }
            }
            reachable(registry, &repo, roots).await?
        } else {
            linked.clone()
        };
        for d in &linked {
            if keep.contains(d) {
                continue;
            }
            // Pushed by digest a moment ago: its index or tag may be on its way.
            if recent(d) {
                progress(&format!(
                    "manifest {repo}@{d}: untagged but newer than the grace period, kept"
                ));
                keep.insert(d.clone());
                continue;
            }
            if !opts.dry_run {
                let removed = fence
                    .remove_unless_touched(
                        d,
                        registry.manifest_delete(&repo, &Reference::Digest(d.clone())),
                    )
                    .await?;
                if !removed {
                    progress(&format!(
                        "manifest {repo}@{d}: pushed again meanwhile, kept"
                    ));
                    report.kept_in_use += 1;
                    keep.insert(d.clone());
                    continue;
                }
            }
            progress(&format!("manifest {repo}@{d}: untagged, removing"));
            report.manifests_removed.push((repo.clone(), d.clone()));
        }
        for d in keep.iter().filter(|d| linked.contains(d)) {
            marked.insert(d.clone());
            // Everything a manifest names is kept, even in a manifest this version cannot
            // parse; a manifest that cannot be read stops the collection instead of
            // letting its blobs be swept.
            match registry
                .manifest_get(&repo, &Reference::Digest(d.clone()))
                .await
            {
                Ok(content) => match Manifest::referenced_digests(&content.bytes) {
                    Ok(ds) => marked.extend(ds),
                    Err(e) => {
                        return Err(CoreError::ManifestInvalid(e));
                    }
                },
                Err(CoreError::ManifestUnknown(_)) => {}
                Err(e) => return Err(e),
            }
        }
    }
    report.blobs_marked = marked.len();

    for blob in &blobs {
        if marked.contains(&blob.digest) {
            continue;
        }
        if now.duration_since(blob.modified).unwrap_or_default() < opts.grace {
            report.blobs_kept_by_grace += 1;
            continue;
        }
        if !opts.dry_run {
            let delete = async {
                stores.blobs.delete(&blob.digest).await?;
                Ok(())
            };
            if !fence.remove_unless_touched(&blob.digest, delete).await? {
                progress(&format!(
                    "blob {}: referenced by a push meanwhile, kept",
                    blob.digest
                ));
                report.kept_in_use += 1;
                continue;
            }
        }
        progress(&format!(
            "blob {}: {} bytes, unreferenced, removing",
            blob.digest, blob.size
        ));
        report.blobs_removed.push((blob.digest.clone(), blob.size));
    }
    Ok(report)
}

/// Manifests of `repo` reachable from `roots`: index children and referrers, transitively.
pub async fn reachable(
    registry: &Registry,
    repo: &RepoName,
    roots: Vec<Digest>,
) -> Result<BTreeSet<Digest>> {
    let stores = registry.stores();
    let mut seen = BTreeSet::new();
    let mut todo = roots;
    while let Some(d) = todo.pop() {
        if !seen.insert(d.clone()) {
            continue;
        }
        if let Ok(content) = registry
            .manifest_get(repo, &Reference::Digest(d.clone()))
            .await
            && let Ok(m) = Manifest::parse(&content.bytes, Some(&content.media_type))
        {
            todo.extend(m.manifests.iter().map(|c| c.digest.clone()));
        }
        todo.extend(stores.manifests.referrers(repo, &d).await?);
    }
    Ok(seen)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn digest(b: &[u8]) -> Digest {
        Digest::of(pier_oci::Algorithm::Sha256, b)
    }

    #[tokio::test]
    async fn one_collection_at_a_time() {
        let fence = GcFence::default();
        assert!(!fence.running());
        let run = fence.begin().await.expect("the first collection starts");
        assert!(fence.running());
        assert!(fence.begin().await.is_none(), "a second one is refused");
        drop(run);
        assert!(!fence.running());
        assert!(fence.begin().await.is_some(), "and may start once it ended");
    }

    #[tokio::test]
    async fn what_a_write_references_during_a_collection_is_not_removed() {
        let fence = GcFence::default();
        let (a, b) = (digest(b"a"), digest(b"b"));
        // Before any collection, writes leave nothing behind.
        drop(fence.enter([&a]).await);
        let _run = fence.begin().await.unwrap();
        drop(fence.enter([&a]).await);
        let mut removed = Vec::new();
        for d in [&a, &b] {
            if fence
                .remove_unless_touched(d, async { Ok(()) })
                .await
                .unwrap()
            {
                removed.push(d.clone());
            }
        }
        assert_eq!(removed, [b], "a was referenced meanwhile: kept");
    }

    #[tokio::test]
    async fn a_collection_waits_for_writes_in_flight() {
        let fence = std::sync::Arc::new(GcFence::default());
        let d = digest(b"x");
        let write = fence.enter([&d]).await;
        let f = fence.clone();
        let started = tokio::spawn(async move { f.begin().await.is_some() });
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert!(!started.is_finished(), "begin waits for the write's link");
        drop(write);
        assert!(started.await.unwrap());
    }
}
