//! The registry use cases.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use bytes::Bytes;
use futures_util::StreamExt;
use pier_oci::{
    Algorithm, Descriptor, Digest, MAX_MANIFEST_SIZE, Manifest, ManifestError, Reference, RepoName,
    Tag, media_types,
};
use pier_storage::{
    BlobBody, BlobRead, BlobStore, ByteStream, ManifestStore, RangeSpec, RepoStore, UploadId,
    UploadStatus, UploadStore,
};

use crate::admission::{Caller, Gate, RepoContent, bounded};
use crate::quota::{Quotas, Usage, project_of};
use crate::{CoreError, Page, Result, paginate};
use pier_auth::admission::{AdmissionRequest, ContentReader, MAX_REFERRERS, Referrer, Stage};

/// The storage roles the registry works on. One backend may fill all of them.
#[derive(Clone)]
pub struct Stores {
    pub blobs: Arc<dyn BlobStore>,
    pub repos: Arc<dyn RepoStore>,
    pub manifests: Arc<dyn ManifestStore>,
    pub uploads: Arc<dyn UploadStore>,
}

impl Stores {
    /// All roles from one backend.
    pub fn from_backend<S>(backend: Arc<S>) -> Stores
    where
        S: BlobStore + RepoStore + ManifestStore + UploadStore,
    {
        Stores {
            blobs: backend.clone(),
            repos: backend.clone(),
            manifests: backend.clone(),
            uploads: backend,
        }
    }
}

/// A manifest as served.
#[derive(Debug, Clone)]
pub struct ManifestContent {
    pub digest: Digest,
    pub media_type: String,
    pub bytes: Bytes,
    pub subject: Option<Digest>,
}

/// The outcome of a manifest push.
#[derive(Debug, Clone)]
pub struct PutManifest {
    pub digest: Digest,
    pub subject: Option<Digest>,
}

/// Manifests by digest are immutable, so they can be cached without invalidation.
type ManifestCache = moka::sync::Cache<Digest, Arc<ManifestContent>>;

/// A cache of answers read from storage (links, tags). Changes made through this registry
/// invalidate it; the time to live bounds how long a change by another process (an
/// offline `pier gc`, another registry on the same directory) goes unseen. A generation
/// counter keeps a read that raced a change from putting the old answer back.
struct ReadCache<K, V> {
    cache: moka::sync::Cache<K, V>,
    generation: AtomicU64,
}

impl<K, V> ReadCache<K, V>
where
    K: std::hash::Hash + Eq + Send + Sync + Clone + 'static,
    V: Clone + Send + Sync + 'static,
{
    fn new(ttl: Duration) -> Self {
        ReadCache {
            cache: moka::sync::Cache::builder()
                .max_capacity(200_000)
                .time_to_live(ttl)
                .build(),
            generation: AtomicU64::new(0),
        }
    }

    /// Answers from the cache, or from `lookup`, remembering `Some` answers.
    async fn get<F>(&self, key: K, lookup: F) -> Result<Option<V>>
    where
        F: std::future::Future<Output = pier_storage::Result<Option<V>>>,
    {
        if let Some(v) = self.cache.get(&key) {
            return Ok(Some(v));
        }
        let generation = self.generation.load(Ordering::SeqCst);
        let found = lookup.await?;
        if let Some(v) = &found {
            self.cache.insert(key.clone(), v.clone());
            // A change since the lookup may have come before the insert: undo it.
            if self.generation.load(Ordering::SeqCst) != generation {
                self.cache.invalidate(&key);
            }
        }
        Ok(found)
    }

    /// Call after the stored answer changed.
    fn changed(&self, key: &K) {
        self.generation.fetch_add(1, Ordering::SeqCst);
        self.cache.invalidate(key);
    }

    fn clear(&self) {
        self.generation.fetch_add(1, Ordering::SeqCst);
        self.cache.invalidate_all();
    }
}

/// A change to what a registry answers, announced to other nodes sharing the storage so
/// they drop their cached answer at once instead of after its time to live.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Change {
    Tag(RepoName, Tag),
    BlobLink(RepoName, Digest),
    ManifestLink(RepoName, Digest),
}

impl Change {
    /// `t REPO TAG`, `b REPO DIGEST`, `m REPO DIGEST`.
    pub fn encode(&self) -> String {
        match self {
            Change::Tag(r, t) => format!("t {r} {t}"),
            Change::BlobLink(r, d) => format!("b {r} {d}"),
            Change::ManifestLink(r, d) => format!("m {r} {d}"),
        }
    }

    pub fn decode(s: &str) -> Option<Change> {
        let mut it = s.split(' ');
        let (kind, repo, last) = (it.next()?, it.next()?.parse().ok()?, it.next()?);
        if it.next().is_some() {
            return None;
        }
        match kind {
            "t" => Some(Change::Tag(repo, last.parse().ok()?)),
            "b" => Some(Change::BlobLink(repo, last.parse().ok()?)),
            "m" => Some(Change::ManifestLink(repo, last.parse().ok()?)),
            _ => None,
        }
    }
}

/// Where a registry announces its changes (Redis pub/sub when scaled out).
pub trait ChangeSink: Send + Sync {
    fn publish(&self, change: Change);
}

const LINK_TTL: Duration = Duration::from_secs(30);
const TAG_TTL: Duration = Duration::from_secs(5);

type Links = ReadCache<(RepoName, Digest), ()>;

pub struct Registry {
    stores: Stores,
    manifest_cache: ManifestCache,
    blob_links: Links,
    manifest_links: Links,
    tags: ReadCache<(RepoName, Tag), Digest>,
    sink: Option<Arc<dyn ChangeSink>>,
    /// Keeps an online garbage collection from removing what a write references.
    gc: crate::gc::GcFence,
    timings: crate::StorageTimings,
    /// The admission policies; `None`: everything is admitted.
    gate: Option<Arc<Gate>>,
    /// Project quotas; `None`: no limits.
    quotas: Option<Arc<Quotas>>,
}

/// Every digest storing `manifest` as `digest` makes it name: itself, its blobs and
/// layers, its children (what an online garbage collection must not remove meanwhile).
fn referenced<'a>(manifest: &'a Manifest, digest: &'a Digest) -> impl Iterator<Item = &'a Digest> {
    manifest
        .blob_references()
        .map(|d| &d.digest)
        .chain(manifest.manifests.iter().map(|c| &c.digest))
        .chain([digest])
}

/// The media type to serve stored manifest bytes with.
pub(crate) fn media_type_of(bytes: &[u8]) -> String {
    #[derive(serde::Deserialize)]
    struct Probe {
        #[serde(rename = "mediaType")]
        media_type: Option<String>,
    }
    match serde_json::from_slice::<Probe>(bytes) {
        Ok(Probe {
            media_type: Some(mt),
        }) => mt,
        _ => Manifest::parse(bytes, None)
            .map(|m| m.kind.media_type())
            .unwrap_or(media_types::OCI_MANIFEST)
            .to_owned(),
    }
}

impl Registry {
    pub fn new(stores: Stores) -> Registry {
        Registry {
            stores,
            manifest_cache: moka::sync::Cache::builder()
                .max_capacity(64 * 1024 * 1024)
                .weigher(|_, v: &Arc<ManifestContent>| v.bytes.len().try_into().unwrap_or(u32::MAX))
                .build(),
            blob_links: ReadCache::new(LINK_TTL),
            manifest_links: ReadCache::new(LINK_TTL),
            tags: ReadCache::new(TAG_TTL),
            sink: None,
            gc: crate::gc::GcFence::default(),
            timings: crate::StorageTimings::default(),
            gate: None,
            quotas: None,
        }
    }

    /// Coordinates garbage collections with the other nodes sharing the storage.
    pub fn with_gc_peers(mut self, peers: Arc<dyn crate::gc::GcPeers>) -> Registry {
        self.gc.set_peers(peers);
        self
    }

    /// Counts each project's storage and refuses pushes over its limit.
    pub fn with_quotas(mut self, quotas: Arc<Quotas>) -> Registry {
        self.quotas = Some(quotas);
        self
    }

    pub fn quotas(&self) -> Option<&Arc<Quotas>> {
        self.quotas.as_ref()
    }

    /// Whether an admission policy decides about `repo`.
    pub fn admission_governs(&self, repo: &RepoName) -> bool {
        self.gate.as_ref().is_some_and(|g| g.governs(repo))
    }

    /// What the manifests of `project`'s repositories reference (each digest once).
    pub async fn project_usage(&self, project: &str) -> Result<Arc<Usage>> {
        if let Some(u) = self.quotas.as_ref().and_then(|q| q.cached(project)) {
            return Ok(u);
        }
        let usage = Arc::new(Usage::default());
        for repo in self.stores.repos.repositories().await? {
            if project_of(&repo) != project {
                continue;
            }
            for d in self.stores.manifests.manifests(&repo).await? {
                let content = match self.load_manifest(&d).await {
                    Ok(c) => c,
                    Err(CoreError::ManifestUnknown(_)) => continue,
                    Err(e) => return Err(e),
                };
                let len = content.bytes.len() as u64;
                match Manifest::parse(&content.bytes, Some(&content.media_type)) {
                    Ok(m) => usage.add_manifest(&d, len, &m),
                    Err(_) => usage.add(&d, len),
                }
            }
        }
        if let Some(q) = &self.quotas {
            q.keep(project, usage.clone());
        }
        Ok(usage)
    }

    /// Refuses a blob of `size` bytes that alone would take `repo`'s project over its
    /// limit (an upload whose size is known); blobs the project holds already are free.
    pub async fn quota_allows_blob(
        &self,
        repo: &RepoName,
        digest: &Digest,
        size: u64,
    ) -> Result<()> {
        let Some(q) = &self.quotas else {
            return Ok(());
        };
        let project = project_of(repo);
        let Some(limit) = q.limit(project).await? else {
            return Ok(());
        };
        let usage = self.project_usage(project).await?;
        if usage.contains(digest) || usage.bytes() + size <= limit {
            return Ok(());
        }
        Err(CoreError::QuotaExceeded {
            project: project.to_owned(),
            used: usage.bytes(),
            limit,
            needed: size,
        })
    }

    /// After a commit: an upload over the quota leaves the repository again.
    async fn quota_after_commit(&self, repo: &RepoName, digest: &Digest, size: u64) -> Result<u64> {
        if let Err(e) = self.quota_allows_blob(repo, digest, size).await {
            self.stores.repos.unlink_blob(repo, digest).await?;
            self.blob_links.changed(&(repo.clone(), digest.clone()));
            self.announce(Change::BlobLink(repo.clone(), digest.clone()));
            return Err(e);
        }
        Ok(size)
    }

    /// Asks `gate`'s policies before manifests are stored, served, deleted or cached from
    /// an upstream.
    pub fn with_gate(mut self, gate: Arc<Gate>) -> Registry {
        self.gate = Some(gate);
        self
    }

    /// Announces every change to `sink` (other nodes sharing the storage).
    pub fn with_change_sink(mut self, sink: Arc<dyn ChangeSink>) -> Registry {
        self.sink = Some(sink);
        self
    }

    fn announce(&self, change: Change) {
        if let Some(s) = &self.sink {
            s.publish(change);
        }
    }

    /// A change another node made: drop the cached answer.
    pub fn apply_remote(&self, change: &Change) {
        match change {
            Change::Tag(r, t) => self.tags.changed(&(r.clone(), t.clone())),
            Change::BlobLink(r, d) => self.blob_links.changed(&(r.clone(), d.clone())),
            Change::ManifestLink(r, d) => self.manifest_links.changed(&(r.clone(), d.clone())),
        }
    }

    /// Announcements may have been missed (the bus reconnected): drop every cached answer.
    pub fn forget_cached(&self) {
        self.tags.clear();
        self.blob_links.clear();
        self.manifest_links.clear();
    }

    async fn blob_linked(&self, repo: &RepoName, digest: &Digest) -> Result<bool> {
        let lookup = self.stores.repos.blob_linked(repo, digest);
        let key = (repo.clone(), digest.clone());
        Ok(self
            .blob_links
            .get(key, async { lookup.await.map(|l| l.then_some(())) })
            .await?
            .is_some())
    }

    async fn manifest_linked(&self, repo: &RepoName, digest: &Digest) -> Result<bool> {
        let lookup = self.stores.manifests.manifest_linked(repo, digest);
        let key = (repo.clone(), digest.clone());
        Ok(self
            .manifest_links
            .get(key, async { lookup.await.map(|l| l.then_some(())) })
            .await?
            .is_some())
    }

    async fn resolve_tag(&self, repo: &RepoName, tag: &Tag) -> Result<Option<Digest>> {
        let lookup = self.stores.manifests.resolve_tag(repo, tag);
        self.tags.get((repo.clone(), tag.clone()), lookup).await
    }

    /// The digest a tag points at (through the tag cache); `None` when it is not set.
    pub async fn tag_digest(&self, repo: &RepoName, tag: &Tag) -> Result<Option<Digest>> {
        self.resolve_tag(repo, tag).await
    }

    pub fn stores(&self) -> &Stores {
        &self.stores
    }

    /// The storage operations' latency histogram (the mirror's fills feed it too).
    pub fn storage_timings(&self) -> &crate::StorageTimings {
        &self.timings
    }

    /// Adds the storage latency histogram to the binary's metrics registry.
    pub fn register_metrics(&self, registry: &mut prometheus_client::registry::Registry) {
        self.timings.register(registry);
    }

    /// What an online garbage collection of this registry coordinates with.
    pub fn gc_fence(&self) -> &crate::gc::GcFence {
        &self.gc
    }

    // ---- blobs ----

    /// Size of a blob the repository holds.
    pub async fn blob_size(&self, repo: &RepoName, digest: &Digest) -> Result<u64> {
        if !self.blob_linked(repo, digest).await? {
            return Err(CoreError::BlobUnknown(digest.clone()));
        }
        self.timings
            .time("blob_stat", self.stores.blobs.stat(digest))
            .await?
            .ok_or_else(|| CoreError::BlobUnknown(digest.clone()))
    }

    pub async fn blob_read(
        &self,
        repo: &RepoName,
        digest: &Digest,
        range: Option<RangeSpec>,
    ) -> Result<BlobRead> {
        if !self.blob_linked(repo, digest).await? {
            return Err(CoreError::BlobUnknown(digest.clone()));
        }
        Ok(self
            .timings
            .time("blob_get", self.stores.blobs.read(digest, range))
            .await?)
    }

    /// Where a client may fetch the blob itself (a presigned object-store URL), when the
    /// storage hands such URLs out; `None`: read it through [`Registry::blob_read`].
    pub async fn blob_redirect(&self, repo: &RepoName, digest: &Digest) -> Result<Option<String>> {
        if !self.blob_linked(repo, digest).await? {
            return Err(CoreError::BlobUnknown(digest.clone()));
        }
        Ok(self.stores.blobs.redirect(digest).await?)
    }

    /// Removes the blob from the repository (its bytes go at the next garbage collection).
    pub async fn blob_delete(&self, repo: &RepoName, digest: &Digest) -> Result<()> {
        let unlinked = self.stores.repos.unlink_blob(repo, digest).await?;
        self.blob_links.changed(&(repo.clone(), digest.clone()));
        self.announce(Change::BlobLink(repo.clone(), digest.clone()));
        if !unlinked {
            return Err(CoreError::BlobUnknown(digest.clone()));
        }
        Ok(())
    }

    // ---- uploads ----

    pub async fn upload_start(&self, repo: &RepoName) -> Result<UploadStatus> {
        Ok(self.stores.uploads.create(repo).await?)
    }

    /// Cross-repository mount: links `digest` from `from` into `repo` when `from` holds it.
    /// Returns the size when mounted.
    pub async fn mount(
        &self,
        repo: &RepoName,
        from: &RepoName,
        digest: &Digest,
    ) -> Result<Option<u64>> {
        let _gc = self.gc.enter([digest]).await?;
        if !self.stores.repos.blob_linked(from, digest).await? {
            return Ok(None);
        }
        let stat = self.stores.blobs.stat(digest);
        let Some(size) = self.timings.time("blob_stat", stat).await? else {
            return Ok(None);
        };
        self.stores.repos.link_blob(repo, digest).await?;
        Ok(Some(size))
    }

    pub async fn upload_status(&self, repo: &RepoName, id: &UploadId) -> Result<UploadStatus> {
        Ok(self.stores.uploads.status(repo, id).await?)
    }

    pub async fn upload_append(
        &self,
        repo: &RepoName,
        id: &UploadId,
        start: Option<u64>,
        body: ByteStream,
    ) -> Result<UploadStatus> {
        let append = self.stores.uploads.append(repo, id, start, body);
        Ok(self.timings.time("upload_append", append).await?)
    }

    /// Appends the optional last chunk and commits the upload as `digest`.
    pub async fn upload_finish(
        &self,
        repo: &RepoName,
        id: &UploadId,
        digest: &Digest,
        last_chunk: Option<(Option<u64>, ByteStream)>,
    ) -> Result<u64> {
        if let Some((start, body)) = last_chunk {
            let append = self.stores.uploads.append(repo, id, start, body);
            self.timings.time("upload_append", append).await?;
        }
        // Around the commit only: a body streaming in never holds a collection back.
        let _gc = self.gc.enter([digest]).await?;
        let commit = self.stores.uploads.commit(repo, id, digest);
        let size = self.timings.time("upload_commit", commit).await?;
        self.quota_after_commit(repo, digest, size).await
    }

    /// A whole blob in one request.
    pub async fn upload_monolithic(
        &self,
        repo: &RepoName,
        digest: &Digest,
        body: ByteStream,
    ) -> Result<u64> {
        let session = self.stores.uploads.create(repo).await?;
        let res = async {
            let append = self.stores.uploads.append(repo, &session.id, Some(0), body);
            self.timings.time("upload_append", append).await?;
            let _gc = self.gc.enter([digest]).await?;
            let commit = self.stores.uploads.commit(repo, &session.id, digest);
            Ok::<u64, CoreError>(self.timings.time("upload_commit", commit).await?)
        }
        .await;
        if res.is_err() {
            // Nothing partial stays behind; the session may already be gone.
            let _ = self.stores.uploads.abort(repo, &session.id).await;
        }
        self.quota_after_commit(repo, digest, res?).await
    }

    pub async fn upload_cancel(&self, repo: &RepoName, id: &UploadId) -> Result<()> {
        Ok(self.stores.uploads.abort(repo, id).await?)
    }

    // ---- manifests ----

    async fn resolve(&self, repo: &RepoName, reference: &Reference) -> Result<Digest> {
        let digest = match reference {
            Reference::Digest(d) => d.clone(),
            Reference::Tag(t) => self
                .resolve_tag(repo, t)
                .await?
                .ok_or_else(|| CoreError::ManifestUnknown(t.to_string()))?,
        };
        if !self.manifest_linked(repo, &digest).await? {
            return Err(CoreError::ManifestUnknown(reference.to_string()));
        }
        Ok(digest)
    }

    async fn load_manifest(&self, digest: &Digest) -> Result<Arc<ManifestContent>> {
        if let Some(m) = self.manifest_cache.get(digest) {
            return Ok(m);
        }
        let read = self.stores.blobs.read(digest, None);
        let bytes = match self.timings.time("manifest_get", read).await {
            Ok(BlobRead::Content {
                body: BlobBody::Bytes(b),
                ..
            }) => b,
            Ok(BlobRead::Content {
                body: BlobBody::Stream(mut s),
                size,
                ..
            }) => {
                let mut buf =
                    bytes::BytesMut::with_capacity(size.min(MAX_MANIFEST_SIZE as u64) as usize);
                while let Some(chunk) = s.next().await {
                    let chunk = chunk.map_err(|e| {
                        CoreError::Storage(pier_storage::StorageError::Io {
                            op: "read manifest",
                            path: digest.to_string().into(),
                            source: e,
                        })
                    })?;
                    buf.extend_from_slice(&chunk);
                }
                buf.freeze()
            }
            Ok(BlobRead::Redirect(_)) => {
                return Err(CoreError::ManifestUnknown(digest.to_string()));
            }
            Err(pier_storage::StorageError::BlobNotFound(_)) => {
                return Err(CoreError::ManifestUnknown(digest.to_string()));
            }
            Err(e) => return Err(e.into()),
        };
        let subject = Manifest::parse(&bytes, None)
            .ok()
            .and_then(|m| m.subject.map(|s| s.digest));
        let content = Arc::new(ManifestContent {
            digest: digest.clone(),
            media_type: media_type_of(&bytes),
            bytes,
            subject,
        });
        self.manifest_cache.insert(digest.clone(), content.clone());
        Ok(content)
    }

    pub async fn manifest_get(
        &self,
        repo: &RepoName,
        reference: &Reference,
    ) -> Result<Arc<ManifestContent>> {
        let digest = self.resolve(repo, reference).await?;
        self.load_manifest(&digest).await
    }

    /// Validates and stores a manifest, tagging it when `reference` is a tag.
    pub async fn manifest_put(
        &self,
        repo: &RepoName,
        reference: &Reference,
        content_type: Option<&str>,
        bytes: Bytes,
        by: &Caller,
    ) -> Result<PutManifest> {
        let manifest = Manifest::parse(&bytes, content_type)?;
        let algorithm = match reference {
            Reference::Digest(d) => d.algorithm(),
            Reference::Tag(_) => Algorithm::Sha256,
        };
        let digest = Digest::of(algorithm, &bytes);
        if let Reference::Digest(expected) = reference
            && expected != &digest
        {
            return Err(CoreError::DigestMismatch {
                expected: expected.clone(),
                computed: digest,
            });
        }
        let _gc = self.gc.enter(referenced(&manifest, &digest)).await?;
        for d in manifest.blob_references() {
            if !self.blob_linked(repo, &d.digest).await? {
                return Err(CoreError::ManifestBlobUnknown(d.digest.clone()));
            }
            match self
                .timings
                .time("blob_stat", self.stores.blobs.stat(&d.digest))
                .await?
            {
                None => return Err(CoreError::ManifestBlobUnknown(d.digest.clone())),
                // A client trusting the descriptor would read past the blob's end or stop
                // short of it: refuse it where it is written.
                Some(size) if size != d.size => {
                    return Err(CoreError::ManifestInvalid(ManifestError::BadDescriptor {
                        field: "descriptor size",
                        reason: format!(
                            "{} says {} bytes, but the blob holds {size}",
                            d.digest, d.size
                        ),
                    }));
                }
                Some(_) => {}
            }
        }
        for child in &manifest.manifests {
            if !self
                .stores
                .manifests
                .manifest_linked(repo, &child.digest)
                .await?
            {
                return Err(CoreError::ManifestBlobUnknown(child.digest.clone()));
            }
        }
        let tag = match reference {
            Reference::Tag(t) => Some(t),
            Reference::Digest(_) => None,
        };
        let media_type = content_type
            .map(str::to_owned)
            .unwrap_or_else(|| media_type_of(&bytes));
        self.admit(Stage::Push, repo, tag, &digest, &media_type, &bytes, by)
            .await?;
        let Some(q) = self.quotas.clone() else {
            return self
                .store_manifest(repo, tag, digest, manifest, bytes)
                .await;
        };
        let project = project_of(repo);
        let Some(limit) = q.limit(project).await? else {
            let put = self
                .store_manifest(repo, tag, digest, manifest, bytes)
                .await;
            q.forget(project);
            return put;
        };
        // Checked and stored one push at a time per project.
        let lock = q.lock(project);
        let _one = lock.lock().await;
        let usage = self.project_usage(project).await?;
        let len = bytes.len() as u64;
        let needed = usage.added_by(&digest, len, &manifest);
        if needed > 0 && usage.bytes() + needed > limit {
            return Err(CoreError::QuotaExceeded {
                project: project.to_owned(),
                used: usage.bytes(),
                limit,
                needed,
            });
        }
        let (counted_digest, counted) = (digest.clone(), manifest.clone());
        let put = self
            .store_manifest(repo, tag, digest, manifest, bytes)
            .await;
        match &put {
            // In place: every holder of this usage sees it.
            Ok(_) => usage.add_manifest(&counted_digest, len, &counted),
            Err(_) => q.forget(project),
        }
        put
    }

    /// Stores a manifest copied from an upstream registry: it must parse and hash to
    /// `digest`, but its blobs and children are fetched later, on demand.
    pub async fn manifest_put_mirrored(
        &self,
        repo: &RepoName,
        tag: Option<&Tag>,
        digest: &Digest,
        content_type: Option<&str>,
        bytes: Bytes,
    ) -> Result<PutManifest> {
        let manifest = Manifest::parse(&bytes, content_type)?;
        let computed = Digest::of(digest.algorithm(), &bytes);
        if &computed != digest {
            return Err(CoreError::DigestMismatch {
                expected: digest.clone(),
                computed,
            });
        }
        let _gc = self.gc.enter(referenced(&manifest, &computed)).await?;
        self.store_manifest(repo, tag, computed, manifest, bytes)
            .await
    }

    async fn store_manifest(
        &self,
        repo: &RepoName,
        tag: Option<&Tag>,
        digest: Digest,
        manifest: Manifest,
        bytes: Bytes,
    ) -> Result<PutManifest> {
        let put = async {
            self.stores.blobs.put(&digest, bytes).await?;
            self.stores.manifests.link_manifest(repo, &digest).await
        };
        self.timings.time("manifest_put", put).await?;
        let subject = manifest.subject.map(|s| s.digest);
        if let Some(s) = &subject {
            self.stores.manifests.add_referrer(repo, s, &digest).await?;
        }
        if let Some(t) = tag {
            self.stores.manifests.set_tag(repo, t, &digest).await?;
            self.tags.changed(&(repo.clone(), t.clone()));
            self.announce(Change::Tag(repo.clone(), t.clone()));
        }
        Ok(PutManifest { digest, subject })
    }

    /// [`manifest_delete`](Self::manifest_delete) for `by`, when the admission policies
    /// let it (a client's, the admin API's or a replication job's delete).
    pub async fn manifest_delete_by(
        &self,
        repo: &RepoName,
        reference: &Reference,
        by: &Caller,
    ) -> Result<()> {
        if self.gate.as_ref().is_some_and(|g| g.governs(repo)) {
            // What is not there is not there: the delete below says so.
            if let Ok(m) = self.manifest_get(repo, reference).await {
                let tag = match reference {
                    Reference::Tag(t) => Some(t),
                    Reference::Digest(_) => None,
                };
                self.admit(
                    Stage::Delete,
                    repo,
                    tag,
                    &m.digest,
                    &m.media_type,
                    &m.bytes,
                    by,
                )
                .await?;
            }
        }
        self.manifest_delete(repo, reference).await
    }

    /// Asks the admission policies whether `by` may pull `m` (got by `reference`); an
    /// admit is remembered a while ([`crate::admission::PULL_DECISION_TTL`]).
    pub async fn admit_pull(
        &self,
        repo: &RepoName,
        reference: &Reference,
        m: &ManifestContent,
        by: &Caller,
    ) -> Result<()> {
        let tag = match reference {
            Reference::Tag(t) => Some(t),
            Reference::Digest(_) => None,
        };
        self.admit(
            Stage::Pull,
            repo,
            tag,
            &m.digest,
            &m.media_type,
            &m.bytes,
            by,
        )
        .await
    }

    /// Asks the admission policies whether a manifest fetched from an upstream may be
    /// cached and served (Pier itself asks); they read the upstream's content through
    /// `content` (the mirror).
    /// `referrers`: the upstream's, as the cache has none of them yet.
    pub(crate) async fn admit_fill(
        &self,
        repo: &RepoName,
        tag: Option<&Tag>,
        digest: &Digest,
        (media_type, bytes): (&str, &Bytes),
        referrers: Vec<Descriptor>,
        content: Arc<dyn ContentReader>,
    ) -> Result<()> {
        self.admit_reading(
            (Stage::MirrorFill, repo, tag, digest),
            media_type,
            bytes,
            &Caller::pier(),
            Some((content, referrers)),
        )
        .await
    }

    /// One admission decision, when a policy governs `repo`: the request is built from
    /// the manifest and what this repository holds around it (referrers, cosign tags,
    /// the tag's current digest, the tags on the manifest).
    #[allow(clippy::too_many_arguments)]
    async fn admit(
        &self,
        stage: Stage,
        repo: &RepoName,
        tag: Option<&Tag>,
        digest: &Digest,
        media_type: &str,
        bytes: &Bytes,
        by: &Caller,
    ) -> Result<()> {
        self.admit_reading((stage, repo, tag, digest), media_type, bytes, by, None)
            .await
    }

    /// [`admit`](Self::admit), the policies reading `content` and told of its
    /// referrers (this repository's own when `None`).
    async fn admit_reading(
        &self,
        (stage, repo, tag, digest): (Stage, &RepoName, Option<&Tag>, &Digest),
        media_type: &str,
        bytes: &Bytes,
        by: &Caller,
        elsewhere: Option<(Arc<dyn ContentReader>, Vec<Descriptor>)>,
    ) -> Result<()> {
        let Some(gate) = self.gate.as_ref().filter(|g| g.governs(repo)) else {
            return Ok(());
        };
        if gate.admitted(stage, repo, digest) {
            return Ok(());
        }
        // Pull admits are remembered: one decision for the requests missing at once.
        let _flight = match stage {
            Stage::Pull => Some(gate.flight(stage, repo, digest).await),
            Stage::MirrorFill | Stage::Push | Stage::Delete => None,
        };
        if gate.admitted(stage, repo, digest) {
            return Ok(());
        }
        let subject_digest = Manifest::parse(bytes, Some(media_type))
            .ok()
            .and_then(|m| m.subject.map(|s| s.digest.to_string()));
        let (content, referrers) = match elsewhere {
            Some((c, r)) => (Some(c), r),
            None => match self.referrers(repo, digest, None).await {
                Ok(r) => (None, r),
                Err(CoreError::NameUnknown(_)) => (None, Vec::new()),
                Err(e) => return Err(e),
            },
        };
        let referrers = referrers
            .into_iter()
            .take(MAX_REFERRERS)
            .map(|d| Referrer {
                digest: d.digest.to_string(),
                media_type: d.media_type,
                artifact_type: d.artifact_type,
                annotations: d.annotations.unwrap_or_default().into_iter().collect(),
            })
            .collect();
        let mut signature_tags = Vec::new();
        for suffix in ["sig", "att", "sbom"] {
            let name = format!("{}-{}.{suffix}", digest.algorithm(), digest.hex());
            if let Ok(t) = name.parse::<Tag>()
                && self.resolve_tag(repo, &t).await?.is_some()
            {
                signature_tags.push(name);
            }
        }
        let current_digest = match (stage, tag) {
            (Stage::Push | Stage::Delete, Some(t)) => {
                self.resolve_tag(repo, t).await?.map(|d| d.to_string())
            }
            _ => None,
        };
        let mut tags = Vec::new();
        if stage == Stage::Delete && tag.is_none() {
            for t in self.stores.manifests.tags(repo).await?.unwrap_or_default() {
                if self.resolve_tag(repo, &t).await?.as_ref() == Some(digest) {
                    tags.push(t.to_string());
                }
            }
        }
        let request = AdmissionRequest {
            stage,
            repository: repo.to_string(),
            tag: tag.map(|t| t.to_string()),
            digest: digest.to_string(),
            media_type: media_type.to_owned(),
            manifest: bounded(bytes),
            manifest_size: bytes.len() as u64,
            subject_digest,
            referrers,
            signature_tags,
            current_digest,
            tags,
            caller: by.subject.clone(),
            client: by.client.clone(),
        };
        let content = content.unwrap_or_else(|| {
            Arc::new(RepoContent {
                stores: self.stores.clone(),
                repo: repo.clone(),
            })
        });
        gate.decide(&request, content).await
    }

    /// Deleting by tag removes the tag only; by digest, the manifest and every tag on it.
    pub async fn manifest_delete(&self, repo: &RepoName, reference: &Reference) -> Result<()> {
        let deleted = self.delete_manifest(repo, reference).await;
        if let Some(q) = &self.quotas {
            q.forget(project_of(repo));
        }
        deleted
    }

    async fn delete_manifest(&self, repo: &RepoName, reference: &Reference) -> Result<()> {
        match reference {
            Reference::Tag(t) => {
                let deleted = self.stores.manifests.delete_tag(repo, t).await?;
                self.tags.changed(&(repo.clone(), t.clone()));
                self.announce(Change::Tag(repo.clone(), t.clone()));
                if !deleted {
                    return Err(CoreError::ManifestUnknown(t.to_string()));
                }
            }
            Reference::Digest(d) => {
                if !self.stores.manifests.manifest_linked(repo, d).await? {
                    return Err(CoreError::ManifestUnknown(d.to_string()));
                }
                let subject = self
                    .load_manifest(d)
                    .await
                    .ok()
                    .and_then(|m| m.subject.clone());
                for t in self.stores.manifests.tags(repo).await?.unwrap_or_default() {
                    if self.stores.manifests.resolve_tag(repo, &t).await?.as_ref() == Some(d) {
                        self.stores.manifests.delete_tag(repo, &t).await?;
                        self.tags.changed(&(repo.clone(), t.clone()));
                        self.announce(Change::Tag(repo.clone(), t.clone()));
                    }
                }
                if let Some(s) = subject {
                    self.stores.manifests.remove_referrer(repo, &s, d).await?;
                }
                self.stores.manifests.unlink_manifest(repo, d).await?;
                self.manifest_links.changed(&(repo.clone(), d.clone()));
                self.announce(Change::ManifestLink(repo.clone(), d.clone()));
            }
        }
        Ok(())
    }

    // ---- listings ----

    pub async fn tags(
        &self,
        repo: &RepoName,
        n: Option<usize>,
        last: Option<&str>,
    ) -> Result<Page<Tag>> {
        let unknown = || CoreError::NameUnknown(repo.clone());
        if let Some(n) = n {
            let (items, more) = self
                .stores
                .manifests
                .tags_after(repo, last, n)
                .await?
                .ok_or_else(unknown)?;
            let next_last = match more {
                true => items.last().map(|t| t.as_str().to_owned()),
                false => None,
            };
            return Ok(Page { items, next_last });
        }
        let tags = self
            .stores
            .manifests
            .tags(repo)
            .await?
            .ok_or_else(unknown)?;
        Ok(paginate(tags, n, last))
    }

    /// When `tag` was last set (pushed, refreshed from an upstream, replicated), as the
    /// storage records it; `None` when the tag is gone or the backend cannot tell.
    pub async fn tag_modified(
        &self,
        repo: &RepoName,
        tag: &Tag,
    ) -> Result<Option<std::time::SystemTime>> {
        Ok(self.stores.manifests.tag_modified(repo, tag).await?)
    }

    pub async fn catalog(&self, n: Option<usize>, last: Option<&str>) -> Result<Page<RepoName>> {
        let repos = self.stores.repos.repositories().await?;
        Ok(paginate(repos, n, last))
    }

    /// Descriptors of the manifests whose subject is `subject`, optionally only those of
    /// one artifact type.
    pub async fn referrers(
        &self,
        repo: &RepoName,
        subject: &Digest,
        artifact_type: Option<&str>,
    ) -> Result<Vec<Descriptor>> {
        let mut out = Vec::new();
        for d in self.stores.manifests.referrers(repo, subject).await? {
            if !self.manifest_linked(repo, &d).await? {
                continue;
            }
            let content = match self.load_manifest(&d).await {
                Ok(c) => c,
                Err(CoreError::ManifestUnknown(_)) => continue,
                Err(e) => return Err(e),
            };
            let Ok(m) = Manifest::parse(&content.bytes, Some(&content.media_type)) else {
                continue;
            };
            let at = m.effective_artifact_type().map(str::to_owned);
            if artifact_type.is_some() && artifact_type != at.as_deref() {
                continue;
            }
            out.push(Descriptor {
                media_type: content.media_type.clone(),
                digest: d,
                size: content.bytes.len() as u64,
                urls: None,
                annotations: m.annotations.clone(),
                artifact_type: at,
                platform: None,
            });
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn changes_round_trip_and_junk_is_refused() {
        let d: Digest = format!("sha256:{}", "ab".repeat(32)).parse().unwrap();
        for c in [
            Change::Tag("team/app".parse().unwrap(), "v1".parse().unwrap()),
            Change::BlobLink("a".parse().unwrap(), d.clone()),
            Change::ManifestLink("a/b/c".parse().unwrap(), d),
        ] {
            assert_eq!(Change::decode(&c.encode()), Some(c));
        }
        for junk in [
            "",
            "t",
            "t a",
            "x a b",
            "t a b c",
            "t BAD v1",
            "b a notadigest",
        ] {
            assert_eq!(Change::decode(junk), None, "{junk:?}");
        }
    }

    /// A sink that records what a registry announces.
    struct Recorder(std::sync::Mutex<Vec<Change>>);

    impl ChangeSink for Recorder {
        fn publish(&self, change: Change) {
            self.0.lock().unwrap().push(change);
        }
    }

    async fn put(reg: &Registry, repo: &RepoName, tag: &Tag, n: u8) -> Digest {
        let config = vec![n; 3];
        let cd = Digest::of(pier_oci::Algorithm::Sha256, &config);
        let body = futures_util::stream::iter([Ok::<_, std::io::Error>(Bytes::from(config))]);
        reg.upload_monolithic(repo, &cd, Box::pin(body))
            .await
            .unwrap();
        let m = format!(
            r#"{{"schemaVersion":2,"mediaType":"application/vnd.oci.image.manifest.v1+json","config":{{"mediaType":"application/vnd.oci.image.config.v1+json","digest":"{cd}","size":3}},"layers":[]}}"#
        );
        reg.manifest_put(
            repo,
            &Reference::Tag(tag.clone()),
            Some("application/vnd.oci.image.manifest.v1+json"),
            Bytes::from(m),
            &Caller::pier(),
        )
        .await
        .unwrap()
        .digest
    }

    #[tokio::test]
    async fn a_moved_tag_is_announced_and_a_remote_change_drops_the_cached_answer() {
        let dir = tempfile::tempdir().unwrap();
        let store = Arc::new(pier_storage::fs::FsStore::new(dir.path()).unwrap());
        let rec = Arc::new(Recorder(std::sync::Mutex::new(Vec::new())));
        let a = Registry::new(Stores::from_backend(store.clone())).with_change_sink(rec.clone());
        let b = Registry::new(Stores::from_backend(store));
        let repo: RepoName = "team/app".parse().unwrap();
        let tag: Tag = "latest".parse().unwrap();
        let first = put(&a, &repo, &tag, 1).await;
        let r = Reference::Tag(tag.clone());
        assert_eq!(
            b.manifest_get(&repo, &r).await.unwrap().digest,
            first,
            "b caches the tag"
        );
        let second = put(&a, &repo, &tag, 2).await;
        assert!(
            rec.0
                .lock()
                .unwrap()
                .contains(&Change::Tag(repo.clone(), tag.clone()))
        );
        assert_eq!(
            b.manifest_get(&repo, &r).await.unwrap().digest,
            first,
            "b still on its cache"
        );
        b.apply_remote(&Change::Tag(repo.clone(), tag.clone()));
        assert_eq!(
            b.manifest_get(&repo, &r).await.unwrap().digest,
            second,
            "b after the announcement"
        );
    }

    /// Denies pushes over a tag that points elsewhere, deletes of `keep`, and counts calls;
    /// fails when `broken`.
    struct NoOverwrite {
        calls: std::sync::Mutex<Vec<AdmissionRequest>>,
        broken: std::sync::atomic::AtomicBool,
        generation: AtomicU64,
    }

    #[async_trait::async_trait]
    impl pier_auth::admission::Admission for NoOverwrite {
        fn name(&self) -> &str {
            "no-overwrite"
        }
        fn governs(&self, repository: &str) -> bool {
            repository.starts_with("team/")
        }
        fn generation(&self) -> u64 {
            self.generation.load(Ordering::SeqCst)
        }
        async fn admit(
            &self,
            r: &AdmissionRequest,
            content: Arc<dyn pier_auth::admission::ContentReader>,
        ) -> std::result::Result<pier_auth::Decision, pier_auth::PolicyError> {
            self.calls.lock().unwrap().push(r.clone());
            if self.broken.load(Ordering::SeqCst) {
                return Err(pier_auth::PolicyError {
                    plugin: "no-overwrite".into(),
                    kind: pier_auth::PolicyFailure::Trap,
                    message: "trapped".into(),
                });
            }
            // What it reads is the repository's own content.
            if r.stage == Stage::Push
                && let Some(cur) = &r.current_digest
            {
                let old = content.manifest(cur).await.unwrap();
                assert_eq!(old.digest, *cur);
                assert!(content.blob(cur, 1 << 20).await.is_ok());
                assert!(content.manifest("other").await.is_err());
                if cur != &r.digest {
                    return Ok(pier_auth::Decision::Deny(format!(
                        "{} is immutable",
                        r.tag.as_deref().unwrap_or("")
                    )));
                }
            }
            let keep = |t: &str| t == "keep";
            if r.stage == Stage::Delete
                && (r.tag.as_deref().is_some_and(keep) || r.tags.iter().any(|t| keep(t)))
            {
                return Ok(pier_auth::Decision::Deny("keep stays".into()));
            }
            Ok(pier_auth::Decision::Allow)
        }
    }

    /// Admits everything; pulls after a pause, counted.
    struct SlowAdmit(AtomicU64);

    #[async_trait::async_trait]
    impl pier_auth::admission::Admission for SlowAdmit {
        fn name(&self) -> &str {
            "slow"
        }
        fn governs(&self, _: &str) -> bool {
            true
        }
        fn generation(&self) -> u64 {
            1
        }
        async fn admit(
            &self,
            r: &AdmissionRequest,
            _: Arc<dyn pier_auth::admission::ContentReader>,
        ) -> std::result::Result<pier_auth::Decision, pier_auth::PolicyError> {
            if r.stage == Stage::Pull {
                self.0.fetch_add(1, Ordering::SeqCst);
                tokio::time::sleep(std::time::Duration::from_millis(50)).await;
            }
            Ok(pier_auth::Decision::Allow)
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn pulls_missing_the_decision_cache_at_once_make_one_decision() {
        let dir = tempfile::tempdir().unwrap();
        let store = Arc::new(pier_storage::fs::FsStore::new(dir.path()).unwrap());
        let policy = Arc::new(SlowAdmit(AtomicU64::new(0)));
        let reg = Arc::new(
            Registry::new(Stores::from_backend(store))
                .with_gate(Arc::new(Gate::new(vec![policy.clone()]))),
        );
        let repo: RepoName = "team/app".parse().unwrap();
        let tag: Tag = "v1".parse().unwrap();
        put(&reg, &repo, &tag, 1).await;
        let r = Reference::Tag(tag);
        let content = reg.manifest_get(&repo, &r).await.unwrap();
        let pulls: Vec<_> = (0..16)
            .map(|_| {
                let (reg, repo, r, content) =
                    (reg.clone(), repo.clone(), r.clone(), content.clone());
                tokio::spawn(
                    async move { reg.admit_pull(&repo, &r, &content, &Caller::pier()).await },
                )
            })
            .collect();
        for p in pulls {
            p.await.unwrap().unwrap();
        }
        assert_eq!(
            policy.0.load(Ordering::SeqCst),
            1,
            "one decision for 16 pulls"
        );
        let gate = reg.gate.as_ref().unwrap();
        assert!(gate.flights_in_progress() == 0, "no flight left behind");
    }

    #[tokio::test]
    async fn admission_refuses_before_storing_remembers_pulls_and_fails_closed() {
        let dir = tempfile::tempdir().unwrap();
        let store = Arc::new(pier_storage::fs::FsStore::new(dir.path()).unwrap());
        let policy = Arc::new(NoOverwrite {
            calls: Default::default(),
            broken: Default::default(),
            generation: AtomicU64::new(1),
        });
        let reg = Registry::new(Stores::from_backend(store))
            .with_gate(Arc::new(Gate::new(vec![policy.clone()])));
        let repo: RepoName = "team/app".parse().unwrap();
        let keep: Tag = "keep".parse().unwrap();
        let first = put(&reg, &repo, &keep, 1).await;
        // Over an existing tag: refused, nothing moved.
        let config = vec![2u8; 3];
        let cd = Digest::of(pier_oci::Algorithm::Sha256, &config);
        let body = futures_util::stream::iter([Ok::<_, std::io::Error>(Bytes::from(config))]);
        reg.upload_monolithic(&repo, &cd, Box::pin(body))
            .await
            .unwrap();
        let m = format!(
            r#"{{"schemaVersion":2,"mediaType":"application/vnd.oci.image.manifest.v1+json","config":{{"mediaType":"application/vnd.oci.image.config.v1+json","digest":"{cd}","size":3}},"layers":[]}}"#
        );
        let err = reg
            .manifest_put(
                &repo,
                &Reference::Tag(keep.clone()),
                None,
                Bytes::from(m.clone()),
                &Caller::pier(),
            )
            .await
            .unwrap_err();
        assert!(
            matches!(&err, CoreError::Denied { policy, reason } if policy == "no-overwrite" && reason == "keep is immutable"),
            "{err:?}"
        );
        let second = Digest::of(pier_oci::Algorithm::Sha256, m.as_bytes());
        assert!(matches!(
            reg.manifest_get(&repo, &Reference::Digest(second)).await,
            Err(CoreError::ManifestUnknown(_))
        ));
        assert_eq!(
            reg.tag_digest(&repo, &keep).await.unwrap(),
            Some(first.clone())
        );
        // Deletes of the tag, or of the manifest it is on: refused.
        for r in [
            Reference::Tag(keep.clone()),
            Reference::Digest(first.clone()),
        ] {
            let err = reg
                .manifest_delete_by(&repo, &r, &Caller::pier())
                .await
                .unwrap_err();
            assert!(matches!(err, CoreError::Denied { .. }), "{r}: {err:?}");
        }
        let calls = policy.calls.lock().unwrap().clone();
        let by_digest = calls.last().unwrap();
        assert_eq!(by_digest.tags, vec!["keep".to_owned()]);
        assert_eq!(by_digest.stage, Stage::Delete);
        // Pulls: asked once, then remembered, until the policy changes.
        let m = reg
            .manifest_get(&repo, &Reference::Tag(keep.clone()))
            .await
            .unwrap();
        let count = || policy.calls.lock().unwrap().len();
        let before = count();
        for _ in 0..3 {
            reg.admit_pull(&repo, &Reference::Tag(keep.clone()), &m, &Caller::pier())
                .await
                .unwrap();
        }
        assert_eq!(count(), before + 1);
        policy.generation.store(2, Ordering::SeqCst);
        policy.broken.store(true, Ordering::SeqCst);
        let err = reg
            .admit_pull(&repo, &Reference::Tag(keep.clone()), &m, &Caller::pier())
            .await
            .unwrap_err();
        assert!(matches!(err, CoreError::PolicyFailed(_)), "{err:?}");
        // A repository it does not govern: never asked.
        let other: RepoName = "other/app".parse().unwrap();
        let before = count();
        put(&reg, &other, &keep, 3).await;
        put(&reg, &other, &keep, 4).await;
        assert_eq!(count(), before);
    }
}
