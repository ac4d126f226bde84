//! [`Source`] and [`Destination`] over another registry's HTTP API.
//!
//! A blob goes up in chunks: `POST` a session, `PATCH` chunks with `Content-Range`,
//! `PUT ?digest=`. Every byte handed to a chunk is hashed; the hash state is saved at
//! each acknowledged chunk. After a failure the session's `GET` tells how many bytes the
//! registry holds (`Range: 0-N`); the upload goes on from there, asking the source for
//! the rest only (re-hashing from the last saved state up to N when N falls inside a
//! chunk). When the session is gone (distribution cancels a session whose last PATCH
//! was cut) the blob starts again in a new one.

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use futures_util::StreamExt;
use pier_oci::{Descriptor, Digest, Reference, RepoName, ResumableHasher, Tag};
use pier_upstream::{Mount, UploadSession, Upstream, UpstreamClient, UpstreamError};
use tracing::{debug, warn};

use crate::copy::Meter;
use crate::endpoint::{BlobTransfer, Destination, Source, SourceBlob, SourceManifest};
use crate::{ByteStream, RateLimiter, ReplicateError, RetryPolicy, Side};

/// Largest piece handed to the HTTP body at once (the rate limiter's granularity).
const MAX_PIECE: usize = 256 * 1024;
/// Hash states kept for resuming (the newest acknowledged chunks).
const CHECKPOINTS: usize = 4;

/// A registry read over HTTP (pull mode, tests).
pub struct RemoteSource {
    client: Arc<UpstreamClient>,
    name: String,
}

impl RemoteSource {
    pub fn new(client: Arc<UpstreamClient>) -> RemoteSource {
        let name = client.name().to_owned();
        RemoteSource { client, name }
    }
}

/// `repo:tag` or `repo@digest`, for messages.
fn at(repo: &RepoName, reference: &Reference) -> String {
    match reference {
        Reference::Tag(tag) => format!("{repo}:{tag}"),
        Reference::Digest(digest) => format!("{repo}@{digest}"),
    }
}

fn src_err(context: String, e: UpstreamError) -> ReplicateError {
    ReplicateError::upstream(Side::Source, context, e)
}

fn dst_err(context: String, e: UpstreamError) -> ReplicateError {
    ReplicateError::upstream(Side::Destination, context, e)
}

#[async_trait]
impl Source for RemoteSource {
    fn describe(&self) -> String {
        self.name.clone()
    }

    async fn manifest(
        &self,
        repo: &RepoName,
        reference: &Reference,
    ) -> Result<SourceManifest, ReplicateError> {
        let what = || format!("manifest {}", at(repo, reference));
        let fetched = self
            .client
            .get_manifest(repo, reference)
            .await
            .map_err(|e| src_err(what(), e))?;
        let algorithm = match (reference, &fetched.digest) {
            (Reference::Digest(d), _) | (_, Some(d)) => d.algorithm(),
            _ => pier_oci::Algorithm::Sha256,
        };
        let digest = Digest::of(algorithm, &fetched.bytes);
        if let Some(claimed) = &fetched.digest
            && claimed.algorithm() == algorithm
            && *claimed != digest
        {
            return Err(ReplicateError::DigestMismatch {
                what: what(),
                expected: claimed.clone(),
                actual: digest,
            });
        }
        Ok(SourceManifest {
            bytes: fetched.bytes,
            media_type: fetched.media_type,
            digest,
        })
    }

    async fn blob(
        &self,
        repo: &RepoName,
        digest: &Digest,
        offset: u64,
    ) -> Result<SourceBlob, ReplicateError> {
        let fetched = self
            .client
            .get_blob(repo, digest, offset)
            .await
            .map_err(|e| src_err(format!("blob {repo}@{digest}"), e))?;
        Ok(SourceBlob {
            size: fetched.size,
            stream: fetched.stream,
        })
    }

    async fn referrers(
        &self,
        repo: &RepoName,
        digest: &Digest,
    ) -> Result<Vec<Descriptor>, ReplicateError> {
        self.client
            .referrers(repo, digest)
            .await
            .map_err(|e| src_err(format!("referrers of {repo}@{digest}"), e))
    }

    async fn tags(&self, repo: &RepoName) -> Result<Vec<Tag>, ReplicateError> {
        self.client
            .tags(repo)
            .await
            .map_err(|e| src_err(format!("tags of {repo}"), e))
    }
}

/// How blobs go up to a [`RemoteDestination`].
#[derive(Debug, Clone)]
pub struct UploadOptions {
    /// Bytes per `PATCH` (the most a failure can cost to send again).
    pub chunk_size: u64,
    /// Attempts per blob (resuming each time) before the blob, and the job, fail.
    pub retry: RetryPolicy,
}

impl Default for UploadOptions {
    fn default() -> Self {
        UploadOptions {
            chunk_size: 16 * 1024 * 1024,
            retry: RetryPolicy {
                max_attempts: 5,
                base: Duration::from_millis(500),
                cap: Duration::from_secs(10),
            },
        }
    }
}

/// A registry written over HTTP(S): one per replication target, shared by its jobs
/// (the rate limiter is the target's).
pub struct RemoteDestination {
    client: Arc<UpstreamClient>,
    name: String,
    options: UploadOptions,
    limiter: Arc<RateLimiter>,
}

impl RemoteDestination {
    pub fn new(
        client: Arc<UpstreamClient>,
        options: UploadOptions,
        limiter: Arc<RateLimiter>,
    ) -> RemoteDestination {
        let name = client.name().to_owned();
        RemoteDestination {
            client,
            name,
            options: UploadOptions {
                chunk_size: options.chunk_size.max(1),
                ..options
            },
            limiter,
        }
    }

    /// One try at finishing the upload from wherever `state` stands.
    async fn upload_attempt(
        &self,
        repo: &RepoName,
        blob: &BlobTransfer<'_>,
        state: &mut UploadState,
    ) -> Result<(), ReplicateError> {
        let err = |e| dst_err(format!("upload of {repo}@{}", blob.digest), e);
        if state.stale
            && let Some(session) = state.session.clone()
        {
            match self.client.upload_status(repo, &session).await {
                Ok(now) => {
                    debug!(%repo, digest = %blob.digest, offset = now.offset, "resuming upload");
                    blob.meter.add_resume(now.offset);
                    state.session = Some(now);
                }
                Err(UpstreamError::NotFound) => {
                    debug!(%repo, digest = %blob.digest, "upload session gone; starting the blob again");
                    state.restart();
                }
                Err(e) => return Err(err(e)),
            }
            state.stale = false;
        }
        let mut session = match state.session.clone() {
            Some(session) => session,
            None => {
                let session = self.client.start_upload(repo).await.map_err(err)?;
                state.session = Some(session.clone());
                session
            }
        };
        if session.offset > blob.size {
            // Nonsense from the registry: start over.
            state.restart();
            return Err(ReplicateError::other(
                Side::Destination,
                format!("upload of {repo}@{}", blob.digest),
                true,
                format!("registry holds {} bytes of {}", session.offset, blob.size),
            ));
        }
        let feed = Feed::open(blob, state.checkpoint_for(session.offset), session.offset).await?;
        while session.offset < blob.size {
            let len = self.options.chunk_size.min(blob.size - session.offset);
            let body = feed.chunk(len, self.limiter.clone(), blob.meter);
            let result = self.client.upload_chunk(repo, &session, len, body).await;
            let feed_error = feed.take_error();
            session = match result {
                Ok(next) => next,
                // A source failure surfaces as a body error: report the source's.
                Err(e) => return Err(feed_error.unwrap_or_else(|| err(e))),
            };
            state.session = Some(session.clone());
            state.save(session.offset, feed.hasher_at(session.offset));
        }
        feed.expect_end(blob).await?;
        let actual = feed.finish();
        if actual != *blob.digest {
            state.restart();
            return Err(ReplicateError::DigestMismatch {
                what: format!("blob {}", blob.digest),
                expected: blob.digest.clone(),
                actual,
            });
        }
        self.client
            .finish_upload(repo, &session, blob.digest)
            .await
            .map_err(err)?;
        Ok(())
    }
}

/// What an interrupted upload keeps: the session and hash states at acknowledged offsets.
struct UploadState {
    session: Option<UploadSession>,
    /// `(offset, hash of bytes 0..offset)`, oldest first; offset 0 is implied.
    checkpoints: Vec<(u64, ResumableHasher)>,
    algorithm: pier_oci::Algorithm,
    /// A failure happened since `session` was last confirmed.
    stale: bool,
}

impl UploadState {
    fn restart(&mut self) {
        self.session = None;
        self.checkpoints.clear();
    }

    fn save(&mut self, offset: u64, hasher: Option<ResumableHasher>) {
        if let Some(hasher) = hasher {
            self.checkpoints.push((offset, hasher));
            if self.checkpoints.len() > CHECKPOINTS {
                self.checkpoints.remove(0);
            }
        }
    }

    /// The newest saved hash state at or before `offset`.
    fn checkpoint_for(&self, offset: u64) -> (u64, ResumableHasher) {
        self.checkpoints
            .iter()
            .rev()
            .find(|(at, _)| *at <= offset)
            .cloned()
            .unwrap_or_else(|| (0, ResumableHasher::new(self.algorithm)))
    }
}

/// The source's bytes of one blob, hashed as they are handed out.
struct Feed {
    inner: Arc<tokio::sync::Mutex<FeedInner>>,
}

struct FeedInner {
    stream: ByteStream,
    pending: Bytes,
    /// Offset of the next byte handed out.
    pos: u64,
    hasher: ResumableHasher,
    /// The last source error, kept for the report (the HTTP body only sees an io error).
    error: Option<ReplicateError>,
}

impl FeedInner {
    async fn next_piece(&mut self, max: usize) -> Result<Option<Bytes>, ReplicateError> {
        while self.pending.is_empty() {
            match self.stream.next().await {
                None => return Ok(None),
                Some(Ok(bytes)) => self.pending = bytes,
                Some(Err(e)) => {
                    return Err(ReplicateError::other(Side::Source, "blob read", true, e));
                }
            }
        }
        let n = max.min(self.pending.len());
        let piece = self.pending.split_to(n);
        self.hasher.update(&piece);
        self.pos += n as u64;
        Ok(Some(piece))
    }
}

impl Feed {
    /// The source from checkpoint `from`, read and hashed (not sent) up to `offset`.
    async fn open(
        blob: &BlobTransfer<'_>,
        (from, hasher): (u64, ResumableHasher),
        offset: u64,
    ) -> Result<Feed, ReplicateError> {
        let stream = blob.source.open(from).await?;
        let mut inner = FeedInner {
            stream,
            pending: Bytes::new(),
            pos: from,
            hasher,
            error: None,
        };
        while inner.pos < offset {
            let max = (offset - inner.pos).min(MAX_PIECE as u64) as usize;
            if inner.next_piece(max).await?.is_none() {
                return Err(ReplicateError::SizeMismatch {
                    digest: blob.digest.clone(),
                    expected: blob.size,
                    actual: inner.pos,
                });
            }
        }
        if from < offset {
            debug!(digest = %blob.digest, from, offset, "re-hashed source bytes up to the resume offset");
        }
        Ok(Feed {
            inner: Arc::new(tokio::sync::Mutex::new(inner)),
        })
    }

    /// A body of exactly `len` bytes taken from the feed (an error if the source ends
    /// first), paced by `limiter`, counted in `meter`.
    fn chunk(&self, len: u64, limiter: Arc<RateLimiter>, meter: &Meter) -> ByteStream {
        let inner = self.inner.clone();
        let meter = meter.clone();
        Box::pin(futures_util::stream::unfold(len, move |left| {
            let inner = inner.clone();
            let limiter = limiter.clone();
            let meter = meter.clone();
            async move {
                if left == 0 {
                    return None;
                }
                let mut feed = inner.lock().await;
                let max = left.min(MAX_PIECE as u64) as usize;
                let piece = match feed.next_piece(max).await {
                    Ok(Some(piece)) => piece,
                    Ok(None) => {
                        let e = std::io::Error::new(
                            std::io::ErrorKind::UnexpectedEof,
                            "the source blob ended early",
                        );
                        feed.error = Some(ReplicateError::other(
                            Side::Source,
                            "blob read",
                            true,
                            "the source blob ended before its size",
                        ));
                        return Some((Err(e), 0));
                    }
                    Err(e) => {
                        let io = std::io::Error::other(e.to_string());
                        feed.error = Some(e);
                        return Some((Err(io), 0));
                    }
                };
                drop(feed);
                limiter.acquire(piece.len() as u64).await;
                meter.add_bytes(piece.len() as u64);
                let left = left - piece.len() as u64;
                Some((Ok(piece), left))
            }
        }))
    }

    fn take_error(&self) -> Option<ReplicateError> {
        self.inner.try_lock().ok().and_then(|mut f| f.error.take())
    }

    /// The hash state when exactly `offset` bytes were handed out.
    fn hasher_at(&self, offset: u64) -> Option<ResumableHasher> {
        let inner = self.inner.try_lock().ok()?;
        (inner.pos == offset).then(|| inner.hasher.clone())
    }

    /// The source has no bytes beyond the blob's size.
    async fn expect_end(&self, blob: &BlobTransfer<'_>) -> Result<(), ReplicateError> {
        let mut inner = self.inner.lock().await;
        let pos = inner.pos;
        let extra = inner.pending.len() as u64
            + match inner.stream.next().await {
                Some(Ok(bytes)) => bytes.len() as u64,
                _ => 0,
            };
        if extra > 0 {
            return Err(ReplicateError::SizeMismatch {
                digest: blob.digest.clone(),
                expected: blob.size,
                actual: pos + extra,
            });
        }
        Ok(())
    }

    fn finish(self) -> Digest {
        match Arc::try_unwrap(self.inner) {
            Ok(inner) => inner.into_inner().hasher.finish(),
            Err(shared) => shared
                .try_lock()
                .map(|f| f.hasher.clone().finish())
                .expect("feed is idle once its chunks are sent"),
        }
    }
}

#[async_trait]
impl Destination for RemoteDestination {
    fn describe(&self) -> String {
        self.name.clone()
    }

    async fn has_blob(&self, repo: &RepoName, digest: &Digest) -> Result<bool, ReplicateError> {
        self.client
            .blob_exists(repo, digest)
            .await
            .map(|size| size.is_some())
            .map_err(|e| dst_err(format!("blob {repo}@{digest}"), e))
    }

    async fn mount_blob(
        &self,
        repo: &RepoName,
        digest: &Digest,
        from: &RepoName,
    ) -> Result<bool, ReplicateError> {
        match self.client.mount_blob(repo, digest, from).await {
            Ok(Mount::Mounted) => Ok(true),
            Ok(Mount::Upload(session)) => {
                if let Err(error) = self.client.cancel_upload(repo, &session).await {
                    debug!(%repo, %error, "could not cancel the session a refused mount opened");
                }
                Ok(false)
            }
            Err(e) if e.is_retryable() => Err(dst_err(
                format!("mount of {digest} from {from} into {repo}"),
                e,
            )),
            Err(error) => {
                debug!(%repo, %from, %digest, %error, "mount refused");
                Ok(false)
            }
        }
    }

    async fn put_blob(
        &self,
        repo: &RepoName,
        blob: &BlobTransfer<'_>,
    ) -> Result<(), ReplicateError> {
        let mut state = UploadState {
            session: None,
            checkpoints: Vec::new(),
            algorithm: blob.digest.algorithm(),
            stale: false,
        };
        let policy = self.options.retry;
        let mut waits = policy.backoff_policy().waits();
        let mut attempt = 1;
        loop {
            let error = match self.upload_attempt(repo, blob, &mut state).await {
                Ok(()) => return Ok(()),
                Err(error) => error,
            };
            if !error.is_retryable() || !policy.allows(attempt) {
                if let Some(session) = &state.session {
                    let _ = self.client.cancel_upload(repo, session).await;
                }
                return Err(error);
            }
            let wait = waits.next().unwrap_or(policy.cap);
            warn!(destination = %self.name, %repo, digest = %blob.digest, attempt,
                wait_ms = wait.as_millis() as u64, %error, "blob upload failed; resuming");
            tokio::time::sleep(wait).await;
            attempt += 1;
            blob.meter.add_retry();
            // The next attempt first asks the registry where the upload stands.
            state.stale = state.session.is_some();
        }
    }

    async fn manifest_digest(
        &self,
        repo: &RepoName,
        reference: &Reference,
    ) -> Result<Option<Digest>, ReplicateError> {
        self.client
            .manifest_digest(repo, reference)
            .await
            .map_err(|e| dst_err(format!("manifest {}", at(repo, reference)), e))
    }

    async fn delete_manifest(
        &self,
        repo: &RepoName,
        reference: &Reference,
    ) -> Result<(), ReplicateError> {
        match self.client.delete_manifest(repo, reference).await {
            Ok(()) => Ok(()),
            // Already gone there: what a deletion wants.
            Err(e) if e.is_not_found() => Ok(()),
            Err(e) => Err(dst_err(format!("delete {}", at(repo, reference)), e)),
        }
    }

    async fn put_manifest(
        &self,
        repo: &RepoName,
        reference: &Reference,
        media_type: &str,
        bytes: Bytes,
    ) -> Result<(), ReplicateError> {
        let expected = match reference {
            Reference::Digest(d) => Some(d.clone()),
            Reference::Tag(_) => None,
        };
        let stored = self
            .client
            .put_manifest(repo, reference, media_type, bytes.clone())
            .await
            .map_err(|e| dst_err(format!("manifest {}", at(repo, reference)), e))?;
        let expected = expected.unwrap_or_else(|| Digest::of(pier_oci::Algorithm::Sha256, &bytes));
        if let Some(stored) = stored
            && stored.algorithm() == expected.algorithm()
            && stored != expected
        {
            return Err(ReplicateError::DigestMismatch {
                what: format!("manifest {repo}:{reference} as stored"),
                expected,
                actual: stored,
            });
        }
        Ok(())
    }
}
