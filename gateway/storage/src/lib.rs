//! Storage roles for Pier and their backends.
//!
//! Small traits, one per role: [`BlobStore`] (content-addressed bytes), [`RepoStore`]
//! (which blobs a repository may serve, which repositories exist), [`ManifestStore`]
//! (manifest revisions, tags, referrers) and [`UploadStore`] (resumable upload sessions
//! that commit into the blob store). Storage never sees HTTP: a read can answer with bytes,
//! a stream, or (for object stores) a URL to redirect to, as data.
#![deny(unsafe_code)]
#![deny(rust_2018_idioms)]

use std::io;
use std::path::PathBuf;
use std::pin::Pin;
use std::time::{Duration, SystemTime};

use async_trait::async_trait;
use bytes::Bytes;
use futures_util::Stream;
use pier_oci::{Digest, RepoName, Tag};

pub mod fs;
pub mod paths;
#[cfg(feature = "s3")]
pub mod s3;
#[cfg(any(test, feature = "testsuite"))]
pub mod testsuite;

/// A stream of bytes, as read from a client or from storage.
pub type ByteStream = Pin<Box<dyn Stream<Item = io::Result<Bytes>> + Send + 'static>>;

/// Parses durations as humantime writes them (`500ms`, `90s`, `10m`, `1h30m`, `2d`); a bare
/// number is seconds. At most 100 years.
pub fn parse_duration(s: &str) -> Result<std::time::Duration, String> {
    let s = s.trim();
    let d = if !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit()) {
        std::time::Duration::from_secs(
            s.parse()
                .map_err(|_| format!("duration {s:?} is too long: at most 100 years"))?,
        )
    } else {
        humantime::parse_duration(s)
            .map_err(|e| format!("invalid duration {s:?}: {e} (e.g. 30s, 10m, 1h30m, 2d)"))?
    };
    checked_duration(d, s)
}

/// The longest duration a setting may have: longer ones would overflow the clock
/// arithmetic (`now + ttl`) they are used in.
pub const MAX_DURATION: std::time::Duration = std::time::Duration::from_secs(100 * 365 * 86_400);

fn checked_duration(d: std::time::Duration, s: &str) -> Result<std::time::Duration, String> {
    if d > MAX_DURATION {
        return Err(format!("duration {s:?} is too long: at most 100 years"));
    }
    Ok(d)
}

/// Parses `123`, `500MB`, `10GiB`, `2T` (K/M/G/T are powers of 1024, KB/MB/GB/TB of 1000),
pub fn parse_size(s: &str) -> Result<u64, String> {
    let s = s.trim();
    let split = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
    let (num, unit) = s.split_at(split);
    let n: u64 = num
        .parse()
        .map_err(|_| format!("invalid size {s:?}: expected e.g. 500MB, 10GiB"))?;
    let mult: u64 = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 1,
        "k" | "kib" => 1 << 10,
        "m" | "mib" => 1 << 20,
        "g" | "gib" => 1 << 30,
        "t" | "tib" => 1 << 40,
        "kb" => 1_000,
        "mb" => 1_000_000,
        "gb" => 1_000_000_000,
        "tb" => 1_000_000_000_000,
        other => return Err(format!("invalid size unit {other:?} in {s:?}")),
    };
    n.checked_mul(mult)
        .ok_or_else(|| format!("size {s:?} is too large"))
}

pub type Result<T, E = StorageError> = std::result::Result<T, E>;

#[derive(Debug, thiserror::Error)]
pub enum StorageError {
    #[error("blob {0} not found")]
    BlobNotFound(Digest),
    #[error("upload session {0} not found")]
    UploadNotFound(String),
    #[error("chunk starts at byte {got} but the upload session is at byte {expected}")]
    OffsetMismatch { expected: u64, got: u64 },
    #[error("range not satisfiable for a blob of {size} bytes")]
    RangeNotSatisfiable { size: u64 },
    #[error("uploaded content has digest {computed}, not {expected}")]
    DigestMismatch { expected: Digest, computed: Digest },
    #[error("reading the request body failed")]
    Body(#[source] io::Error),
    #[error("storage I/O failed: {op} {}", path.display())]
    Io {
        op: &'static str,
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("storage task failed")]
    Task(#[source] io::Error),
    /// The backend could not be reached or asked to slow down (S3: no connection, a
    /// timeout, 503): the same request may succeed later.
    #[error("storage backend unavailable: {op} {}", path.display())]
    Unavailable {
        op: &'static str,
        path: PathBuf,
        #[source]
        source: io::Error,
    },
}

impl StorageError {
    pub(crate) fn io(
        op: &'static str,
        path: impl Into<PathBuf>,
    ) -> impl FnOnce(io::Error) -> StorageError {
        let path = path.into();
        move |source| StorageError::Io { op, path, source }
    }
}

/// An upload session id: a UUID as Pier makes them, or any `[A-Za-z0-9_-]{1,128}` id another
/// registry left in the same directory.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct UploadId(String);

impl UploadId {
    pub fn new_random() -> UploadId {
        UploadId(uuid::Uuid::new_v4().to_string())
    }

    pub fn parse(s: &str) -> Option<UploadId> {
        let ok = !s.is_empty()
            && s.len() <= 128
            && s.bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
        ok.then(|| UploadId(s.to_owned()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Display for UploadId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

/// A requested byte range, before it is resolved against the blob's size.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RangeSpec {
    /// `bytes=a-b` (inclusive)
    FromTo(u64, u64),
    /// `bytes=a-`
    From(u64),
    /// `bytes=-n`: the last n bytes
    Suffix(u64),
}

impl RangeSpec {
    /// The inclusive `(start, end)` this range selects in a blob of `size` bytes.
    pub fn resolve(self, size: u64) -> Option<(u64, u64)> {
        let (start, end) = match self {
            RangeSpec::FromTo(a, b) => (a, b.min(size.checked_sub(1)?)),
            RangeSpec::From(a) => (a, size.checked_sub(1)?),
            RangeSpec::Suffix(0) => return None,
            RangeSpec::Suffix(n) => (size.saturating_sub(n), size.checked_sub(1)?),
        };
        (start <= end && start < size).then_some((start, end))
    }
}

/// Bytes of a blob read from storage.
pub enum BlobBody {
    /// Small content, read whole.
    Bytes(Bytes),
    /// Large content, streamed.
    Stream(ByteStream),
}

/// The answer to a blob read.
pub enum BlobRead {
    Content {
        /// Size of the whole blob.
        size: u64,
        /// The inclusive byte range served, when a range was asked for.
        range: Option<(u64, u64)>,
        body: BlobBody,
    },
    /// The client should fetch the bytes from this URL (object stores).
    Redirect(String),
}

/// A blob as listed for garbage collection.
#[derive(Debug, Clone)]
pub struct BlobEntry {
    pub digest: Digest,
    pub size: u64,
    pub modified: SystemTime,
}

/// Where an upload session stands.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UploadStatus {
    pub id: UploadId,
    /// Bytes received so far.
    pub offset: u64,
}

/// Content-addressed blob bytes, shared by all repositories.
#[async_trait]
pub trait BlobStore: Send + Sync + 'static {
    /// Size of the blob, if stored.
    async fn stat(&self, digest: &Digest) -> Result<Option<u64>>;
    /// Reads the blob, or a range of it.
    async fn read(&self, digest: &Digest, range: Option<RangeSpec>) -> Result<BlobRead>;
    /// Stores small content (manifests) after checking it hashes to `digest`.
    async fn put(&self, digest: &Digest, data: Bytes) -> Result<()>;
    /// Removes the blob's bytes; false if it was not there.
    async fn delete(&self, digest: &Digest) -> Result<bool>;
    /// Every stored blob.
    async fn list(&self) -> Result<Vec<BlobEntry>>;
    /// A URL clients may fetch the blob from directly (an object store's presigned URL),
    /// when the backend is configured to hand them out; `None`: serve the bytes.
    async fn redirect(&self, _digest: &Digest) -> Result<Option<String>> {
        Ok(None)
    }
}

/// Repositories and the blobs linked into them.
#[async_trait]
pub trait RepoStore: Send + Sync + 'static {
    async fn repo_exists(&self, repo: &RepoName) -> Result<bool>;
    /// All repositories holding manifests, sorted (the catalog).
    async fn repositories(&self) -> Result<Vec<RepoName>>;
    /// All repositories holding manifests or blobs, sorted.
    async fn repositories_with_blobs(&self) -> Result<Vec<RepoName>>;
    async fn link_blob(&self, repo: &RepoName, digest: &Digest) -> Result<()>;
    async fn blob_linked(&self, repo: &RepoName, digest: &Digest) -> Result<bool>;
    async fn unlink_blob(&self, repo: &RepoName, digest: &Digest) -> Result<bool>;
    /// Every blob linked into the repository, sorted.
    async fn linked_blobs(&self, repo: &RepoName) -> Result<Vec<Digest>>;
}

/// Manifest revisions, tags and referrers of a repository. Manifest bytes live in the
/// blob store.
#[async_trait]
pub trait ManifestStore: Send + Sync + 'static {
    async fn link_manifest(&self, repo: &RepoName, digest: &Digest) -> Result<()>;
    async fn manifest_linked(&self, repo: &RepoName, digest: &Digest) -> Result<bool>;
    async fn unlink_manifest(&self, repo: &RepoName, digest: &Digest) -> Result<bool>;
    async fn manifests(&self, repo: &RepoName) -> Result<Vec<Digest>>;
    async fn resolve_tag(&self, repo: &RepoName, tag: &Tag) -> Result<Option<Digest>>;
    async fn set_tag(&self, repo: &RepoName, tag: &Tag, digest: &Digest) -> Result<()>;
    async fn delete_tag(&self, repo: &RepoName, tag: &Tag) -> Result<bool>;
    /// When the tag was last set (its `current/link` written: a push, a mirror refresh,
    /// a replication); `None` when the tag does not exist or the backend cannot tell.
    async fn tag_modified(&self, _repo: &RepoName, _tag: &Tag) -> Result<Option<SystemTime>> {
        Ok(None)
    }
    /// Tags of the repository, sorted; `None` when the repository does not exist.
    async fn tags(&self, repo: &RepoName) -> Result<Option<Vec<Tag>>>;
    /// At most `limit` tags sorted after `last`, and whether more follow; `None` when the
    /// repository does not exist. Backends that can stop early (not checking every tag
    /// of a large repository for one page) override it.
    async fn tags_after(
        &self,
        repo: &RepoName,
        last: Option<&str>,
        limit: usize,
    ) -> Result<Option<(Vec<Tag>, bool)>> {
        let Some(all) = self.tags(repo).await? else {
            return Ok(None);
        };
        let mut after = all
            .into_iter()
            .filter(|t| last.is_none_or(|l| t.as_str() > l));
        let page: Vec<Tag> = after.by_ref().take(limit).collect();
        let more = after.next().is_some();
        Ok(Some((page, more)))
    }
    async fn add_referrer(
        &self,
        repo: &RepoName,
        subject: &Digest,
        referrer: &Digest,
    ) -> Result<()>;
    async fn remove_referrer(
        &self,
        repo: &RepoName,
        subject: &Digest,
        referrer: &Digest,
    ) -> Result<()>;
    async fn referrers(&self, repo: &RepoName, subject: &Digest) -> Result<Vec<Digest>>;
}

/// Resumable upload sessions. A committed upload becomes a blob linked into its repository.
#[async_trait]
pub trait UploadStore: Send + Sync + 'static {
    async fn create(&self, repo: &RepoName) -> Result<UploadStatus>;
    async fn status(&self, repo: &RepoName, id: &UploadId) -> Result<UploadStatus>;
    /// Appends the body at `start` (must equal the current offset when given).
    async fn append(
        &self,
        repo: &RepoName,
        id: &UploadId,
        start: Option<u64>,
        body: ByteStream,
    ) -> Result<UploadStatus>;
    /// Verifies the content against `digest`, makes it a blob and links it into `repo`;
    /// returns its size. On a digest mismatch the session is discarded.
    async fn commit(&self, repo: &RepoName, id: &UploadId, digest: &Digest) -> Result<u64>;
    async fn abort(&self, repo: &RepoName, id: &UploadId) -> Result<()>;
    /// Removes sessions idle for longer than `idle`; returns how many.
    async fn expire(&self, idle: Duration) -> Result<usize>;
}

/// Writing a blob whose digest is known in advance from a trusted stream (a mirror
/// fill), readable while it is written. The shape of a cache miss handler: write, then
/// `commit` (verify and publish) or `abort`; nothing is visible before `commit`.
#[async_trait]
pub trait IngestStore: Send + Sync + 'static {
    async fn begin_ingest(&self, repo: &RepoName, digest: &Digest) -> Result<Box<dyn Ingest>>;
}

#[async_trait]
pub trait Ingest: Send + Sync {
    /// Appends bytes, hashing them.
    async fn write(&mut self, chunk: Bytes) -> Result<()>;
    /// Appends chunks in order, hashing them (one write per chunk unless a backend does
    /// better).
    async fn write_batch(&mut self, chunks: Vec<Bytes>) -> Result<()> {
        for c in chunks {
            self.write(c).await?;
        }
        Ok(())
    }
    /// Bytes written so far.
    fn written(&self) -> u64;
    /// Reads what has been written, while writing goes on and after commit.
    fn reader(&self) -> std::sync::Arc<dyn PartialReader>;
    /// Checks the digest of everything written. Once it passed, the bytes may be served
    /// (they are readable through [`Ingest::reader`]) while [`Ingest::commit`] makes them
    /// durable: a mirror's clients need not wait for the fsync or the object store. On a
    /// mismatch nothing is kept, and commit fails.
    async fn verify(&mut self) -> Result<()>;
    /// Verifies the digest (unless [`Ingest::verify`] did) and makes the blob durable and
    /// visible, linked into the repository; returns its size. On a mismatch nothing is kept.
    async fn commit(self: Box<Self>) -> Result<u64>;
    async fn abort(self: Box<Self>);
}

/// The check behind [`Ingest::verify`]: the hash of what was written against the digest
/// expected (no hasher: a write failed, and nothing can be verified).
fn check_ingest_digest(hasher: Option<pier_oci::Hasher>, expected: &Digest) -> Result<()> {
    match hasher.map(pier_oci::Hasher::finish) {
        Some(computed) if &computed == expected => Ok(()),
        Some(computed) => Err(StorageError::DigestMismatch {
            expected: expected.clone(),
            computed,
        }),
        None => Err(StorageError::Task(io::Error::other(
            "ingest verified after a failed write",
        ))),
    }
}

#[async_trait]
pub trait PartialReader: Send + Sync {
    async fn read_at(&self, offset: u64, len: usize) -> io::Result<Bytes>;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ranges_resolve() {
        assert_eq!(RangeSpec::FromTo(0, 9).resolve(100), Some((0, 9)));
        assert_eq!(RangeSpec::FromTo(90, 200).resolve(100), Some((90, 99)));
        assert_eq!(RangeSpec::From(10).resolve(100), Some((10, 99)));
        assert_eq!(RangeSpec::Suffix(5).resolve(100), Some((95, 99)));
        assert_eq!(RangeSpec::Suffix(500).resolve(100), Some((0, 99)));
        assert_eq!(RangeSpec::From(100).resolve(100), None);
        assert_eq!(RangeSpec::FromTo(5, 4).resolve(100), None);
        assert_eq!(RangeSpec::Suffix(0).resolve(100), None);
        assert_eq!(RangeSpec::From(0).resolve(0), None);
    }

    #[test]
    fn upload_ids_are_path_safe() {
        assert!(UploadId::parse("..").is_none());
        assert!(UploadId::parse("a/b").is_none());
        assert!(UploadId::parse("").is_none());
        assert!(UploadId::parse(UploadId::new_random().as_str()).is_some());
    }
}
