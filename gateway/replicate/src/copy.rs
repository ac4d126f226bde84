//! Copying one image: manifests (index children first), blobs a few at a time,
//! referrers after their subject, the tag last.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{SystemTime, UNIX_EPOCH};

use async_trait::async_trait;
use bytes::Bytes;
use futures_util::future::BoxFuture;
use futures_util::{FutureExt, TryStreamExt};
use pier_oci::{Descriptor, Digest, Manifest, Reference, RepoName, Tag};
use serde::{Deserialize, Serialize};
use tracing::{debug, info};

use crate::endpoint::{BlobOpener, BlobTransfer, Destination, Source};
use crate::{ByteStream, ReplicateError};

/// How to copy.
#[derive(Debug, Clone)]
pub struct CopyOptions {
    /// Blobs transferred at the same time.
    pub concurrency: usize,
    /// Copy the referrers (signatures, SBOMs) of every manifest, recursively.
    pub referrers: bool,
    /// Repositories of the destination to try mounting a missing blob from.
    pub mount_from: Vec<RepoName>,
    /// Where blobs were seen on the destination by earlier copies (shared per
    /// destination): tried as mount sources too.
    pub hints: Option<Arc<MountHints>>,
}

impl Default for CopyOptions {
    fn default() -> Self {
        CopyOptions {
            concurrency: 4,
            referrers: true,
            mount_from: Vec::new(),
            hints: None,
        }
    }
}

/// Remembers one destination repository per blob digest, for later mounts (what
/// skopeo's blob-info cache does). Bounded: the oldest half is dropped when full.
#[derive(Debug, Default)]
pub struct MountHints {
    seen: Mutex<HashMap<Digest, RepoName>>,
}

const MAX_HINTS: usize = 100_000;

impl MountHints {
    pub fn new() -> MountHints {
        MountHints::default()
    }

    pub fn record(&self, digest: &Digest, repo: &RepoName) {
        let mut seen = self.seen.lock().expect("hints lock");
        if seen.len() >= MAX_HINTS {
            seen.clear();
        }
        seen.insert(digest.clone(), repo.clone());
    }

    pub fn get(&self, digest: &Digest) -> Option<RepoName> {
        self.seen.lock().expect("hints lock").get(digest).cloned()
    }
}

/// Counters of one job, shared by its transfers (cheap to clone).
#[derive(Debug, Clone, Default)]
pub struct Meter {
    inner: Arc<Counters>,
}

#[derive(Debug, Default)]
struct Counters {
    bytes: AtomicU64,
    blobs_copied: AtomicU64,
    blobs_skipped: AtomicU64,
    blobs_mounted: AtomicU64,
    manifests: AtomicU64,
    manifests_skipped: AtomicU64,
    resumes: AtomicU64,
    resumed_bytes_saved: AtomicU64,
    retries: AtomicU64,
}

impl Meter {
    /// Bytes sent to the destination.
    pub fn add_bytes(&self, n: u64) {
        self.inner.bytes.fetch_add(n, Ordering::Relaxed);
    }

    /// An upload went on from `offset` instead of starting again.
    pub fn add_resume(&self, offset: u64) {
        self.inner.resumes.fetch_add(1, Ordering::Relaxed);
        self.inner
            .resumed_bytes_saved
            .fetch_add(offset, Ordering::Relaxed);
    }

    /// A blob transfer failed and was tried again.
    pub fn add_retry(&self) {
        self.inner.retries.fetch_add(1, Ordering::Relaxed);
    }

    pub fn bytes(&self) -> u64 {
        self.inner.bytes.load(Ordering::Relaxed)
    }

    fn bump(counter: &AtomicU64) {
        counter.fetch_add(1, Ordering::Relaxed);
    }
}

/// What one job did: the job log's record of it.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct JobReport {
    /// Unix time in milliseconds.
    pub started_ms: u64,
    pub finished_ms: u64,
    /// The digest the reference resolved to.
    pub digest: Option<Digest>,
    /// Bytes sent to the destination (blob chunks and manifests).
    pub bytes: u64,
    pub blobs_copied: u64,
    /// Already at the destination.
    pub blobs_skipped: u64,
    /// Linked from another repository of the destination.
    pub blobs_mounted: u64,
    /// Manifests written.
    pub manifests: u64,
    /// Manifests the destination already had.
    pub manifests_skipped: u64,
    /// Uploads that went on from the registry's offset after a failure.
    pub resumes: u64,
    /// Bytes those resumes did not send again.
    pub resumed_bytes_saved: u64,
    /// Blob transfers tried again.
    pub blob_retries: u64,
    pub error: Option<String>,
}

impl JobReport {
    fn from_meter(meter: &Meter, started_ms: u64) -> JobReport {
        let c = &meter.inner;
        let get = |a: &AtomicU64| a.load(Ordering::Relaxed);
        JobReport {
            started_ms,
            finished_ms: now_ms(),
            digest: None,
            bytes: get(&c.bytes),
            blobs_copied: get(&c.blobs_copied),
            blobs_skipped: get(&c.blobs_skipped),
            blobs_mounted: get(&c.blobs_mounted),
            manifests: get(&c.manifests),
            manifests_skipped: get(&c.manifests_skipped),
            resumes: get(&c.resumes),
            resumed_bytes_saved: get(&c.resumed_bytes_saved),
            blob_retries: get(&c.retries),
            error: None,
        }
    }

    /// Add another job's counts (a repository sync of several tags).
    pub fn absorb(&mut self, other: &JobReport) {
        self.bytes += other.bytes;
        self.blobs_copied += other.blobs_copied;
        self.blobs_skipped += other.blobs_skipped;
        self.blobs_mounted += other.blobs_mounted;
        self.manifests += other.manifests;
        self.manifests_skipped += other.manifests_skipped;
        self.resumes += other.resumes;
        self.resumed_bytes_saved += other.resumed_bytes_saved;
        self.blob_retries += other.blob_retries;
        self.finished_ms = self.finished_ms.max(other.finished_ms);
    }
}

pub(crate) fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// A copy that failed: what it did before, and why it stopped.
#[derive(Debug, thiserror::Error)]
#[error("{error}")]
pub struct CopyFailed {
    pub report: JobReport,
    #[source]
    pub error: ReplicateError,
}

struct Job<'a> {
    source: &'a dyn Source,
    dest: &'a dyn Destination,
    src_repo: &'a RepoName,
    dst_repo: &'a RepoName,
    opts: &'a CopyOptions,
    meter: Meter,
    blobs_done: Mutex<HashSet<Digest>>,
    manifests_done: Mutex<HashSet<Digest>>,
}

/// Copy `reference` of `src_repo` on `source` to `dst_repo` on `dest`: everything by
/// digest, the tag (when `reference` is one) last.
pub async fn copy_image(
    source: &dyn Source,
    dest: &dyn Destination,
    src_repo: &RepoName,
    dst_repo: &RepoName,
    reference: &Reference,
    opts: &CopyOptions,
) -> Result<JobReport, CopyFailed> {
    let started_ms = now_ms();
    let job = Job {
        source,
        dest,
        src_repo,
        dst_repo,
        opts,
        meter: Meter::default(),
        blobs_done: Mutex::new(HashSet::new()),
        manifests_done: Mutex::new(HashSet::new()),
    };
    info!(source = %source.describe(), destination = %dest.describe(), %src_repo, %dst_repo,
        %reference, "replication started");
    let result = async {
        let top = job.copy_manifest(reference.clone()).await?;
        if let Reference::Tag(tag) = reference {
            job.put_tag(tag, &top).await?;
        }
        Ok::<_, ReplicateError>(top.digest)
    }
    .await;
    let mut report = JobReport::from_meter(&job.meter, started_ms);
    match result {
        Ok(digest) => {
            report.digest = Some(digest);
            info!(%src_repo, %dst_repo, %reference, bytes = report.bytes, copied = report.blobs_copied,
                skipped = report.blobs_skipped, mounted = report.blobs_mounted,
                resumes = report.resumes, "replication finished");
            Ok(report)
        }
        Err(error) => {
            report.error = Some(error.to_string());
            info!(%src_repo, %dst_repo, %reference, %error, retryable = error.is_retryable(), "replication failed");
            Err(CopyFailed { report, error })
        }
    }
}

/// Pull mode: copy every tag of each repository (or those `filter` accepts) from
/// `source` to the same name on `dest`. Stops at the first failure.
pub async fn sync_repositories(
    source: &dyn Source,
    dest: &dyn Destination,
    repos: &[RepoName],
    filter: &(dyn Fn(&RepoName, &Tag) -> bool + Send + Sync),
    opts: &CopyOptions,
) -> Result<JobReport, CopyFailed> {
    let mut total = JobReport {
        started_ms: now_ms(),
        ..JobReport::default()
    };
    for repo in repos {
        let tags = source.tags(repo).await.map_err(|error| CopyFailed {
            report: total.clone(),
            error,
        })?;
        for tag in tags.into_iter().filter(|t| filter(repo, t)) {
            let reference = Reference::Tag(tag);
            match copy_image(source, dest, repo, repo, &reference, opts).await {
                Ok(report) => total.absorb(&report),
                Err(mut failed) => {
                    total.absorb(&failed.report);
                    total.error = Some(failed.error.to_string());
                    failed.report = total;
                    return Err(failed);
                }
            }
        }
    }
    total.finished_ms = now_ms();
    Ok(total)
}

/// A manifest copied (or found) at the destination.
struct Copied {
    digest: Digest,
    media_type: String,
    bytes: Bytes,
}

impl Job<'_> {
    fn copy_manifest(&self, reference: Reference) -> BoxFuture<'_, Result<Copied, ReplicateError>> {
        async move {
            let m = self.source.manifest(self.src_repo, &reference).await?;
            let digest = m.digest.clone();
            let by_digest = Reference::Digest(digest.clone());
            let copied = Copied {
                digest: digest.clone(),
                media_type: m.media_type.clone(),
                bytes: m.bytes.clone(),
            };
            if !self
                .manifests_done
                .lock()
                .expect("lock")
                .insert(digest.clone())
            {
                return Ok(copied);
            }
            let present = self.dest.manifest_digest(self.dst_repo, &by_digest).await?;
            if present.as_ref() == Some(&digest) {
                debug!(repo = %self.dst_repo, %digest, "manifest already at the destination");
                Meter::bump(&self.meter.inner.manifests_skipped);
            } else {
                let parsed = Manifest::parse(&m.bytes, Some(&m.media_type)).map_err(|source| {
                    ReplicateError::Manifest {
                        digest: digest.clone(),
                        source,
                    }
                })?;
                if parsed.kind.is_index() {
                    for child in &parsed.manifests {
                        self.copy_manifest(Reference::Digest(child.digest.clone()))
                            .await?;
                    }
                } else {
                    let blobs: Vec<Descriptor> = parsed.blob_references().cloned().collect();
                    self.copy_blobs(blobs).await?;
                }
                self.dest
                    .put_manifest(self.dst_repo, &by_digest, &m.media_type, m.bytes.clone())
                    .await?;
                self.meter.add_bytes(m.bytes.len() as u64);
                Meter::bump(&self.meter.inner.manifests);
            }
            if self.opts.referrers {
                let referrers = match self.source.referrers(self.src_repo, &digest).await {
                    Ok(list) => list,
                    Err(e) if e.is_not_found() => Vec::new(),
                    Err(e) => return Err(e),
                };
                for referrer in referrers {
                    self.copy_manifest(Reference::Digest(referrer.digest))
                        .await?;
                }
            }
            Ok(copied)
        }
        .boxed()
    }

    async fn put_tag(&self, tag: &Tag, top: &Copied) -> Result<(), ReplicateError> {
        let reference = Reference::Tag(tag.clone());
        if self.dest.manifest_digest(self.dst_repo, &reference).await? == Some(top.digest.clone()) {
            return Ok(());
        }
        self.dest
            .put_manifest(
                self.dst_repo,
                &reference,
                &top.media_type,
                top.bytes.clone(),
            )
            .await?;
        self.meter.add_bytes(top.bytes.len() as u64);
        Ok(())
    }

    async fn copy_blobs(&self, blobs: Vec<Descriptor>) -> Result<(), ReplicateError> {
        let todo: Vec<Descriptor> = {
            let mut done = self.blobs_done.lock().expect("lock");
            blobs
                .into_iter()
                .filter(|d| done.insert(d.digest.clone()))
                .collect()
        };
        futures_util::stream::iter(todo.into_iter().map(Ok))
            .try_for_each_concurrent(self.opts.concurrency.max(1), |d| async move {
                self.copy_blob(&d).await
            })
            .await
    }

    async fn copy_blob(&self, d: &Descriptor) -> Result<(), ReplicateError> {
        let repo = self.dst_repo;
        if self.dest.has_blob(repo, &d.digest).await? {
            Meter::bump(&self.meter.inner.blobs_skipped);
            self.remember(&d.digest);
            return Ok(());
        }
        let mut candidates: Vec<RepoName> = Vec::new();
        if let Some(hint) = self.opts.hints.as_ref().and_then(|h| h.get(&d.digest)) {
            candidates.push(hint);
        }
        candidates.extend(self.opts.mount_from.iter().cloned());
        let mut tried = HashSet::new();
        for from in candidates {
            if from == *repo || !tried.insert(from.clone()) {
                continue;
            }
            if self.dest.mount_blob(repo, &d.digest, &from).await? {
                Meter::bump(&self.meter.inner.blobs_mounted);
                self.remember(&d.digest);
                return Ok(());
            }
        }
        let opener = Opener {
            source: self.source,
            repo: self.src_repo,
            digest: &d.digest,
            size: d.size,
        };
        self.dest
            .put_blob(
                repo,
                &BlobTransfer {
                    digest: &d.digest,
                    size: d.size,
                    source: &opener,
                    meter: &self.meter,
                },
            )
            .await?;
        Meter::bump(&self.meter.inner.blobs_copied);
        self.remember(&d.digest);
        Ok(())
    }

    fn remember(&self, digest: &Digest) {
        if let Some(hints) = &self.opts.hints {
            hints.record(digest, self.dst_repo);
        }
    }
}

struct Opener<'a> {
    source: &'a dyn Source,
    repo: &'a RepoName,
    digest: &'a Digest,
    size: u64,
}

#[async_trait]
impl BlobOpener for Opener<'_> {
    async fn open(&self, offset: u64) -> Result<ByteStream, ReplicateError> {
        let blob = self.source.blob(self.repo, self.digest, offset).await?;
        if let Some(size) = blob.size
            && size != self.size
        {
            return Err(ReplicateError::SizeMismatch {
                digest: self.digest.clone(),
                expected: self.size,
                actual: size,
            });
        }
        Ok(blob.stream)
    }
}
