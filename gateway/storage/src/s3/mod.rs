//! S3 backend (cargo feature `s3`) in CNCF distribution's key layout.
//!
//! Keys are the paths of [`crate::paths::Layout`] under the configured prefix (distribution's
//! S3 driver `rootdirectory`), so Pier can serve a bucket distribution or Harbor wrote, and
//! the reverse: `<prefix>/docker/registry/v2/blobs/sha256/<2>/<hex>/data`,
//! `<prefix>/docker/registry/v2/repositories/<name>/_layers/...` and so on. Directories do
//! not exist on S3: a "directory" is the set of keys under its prefix, listed with
//! ListObjectsV2 (with the `/` delimiter where only the next level is needed), paginated.
//!
//! Visibility: a blob's `data` key only ever appears whole and verified. Small content is
//! written with one PutObject after its digest was checked; upload sessions are verified
//! before they are copied into place (module `uploads`); mirror fills write a multipart
//! upload straight to the blob's key and complete it only once the digest matched (module
//! `ingest`). S3 writes of one key are atomic, so concurrent writers of the same
//! (content-addressed) blob are harmless.
//!
//! Upload sessions use distribution's keys plus one (module `uploads`):
//! ```text
//! repositories/<name>/_uploads/<id>/startedat   RFC 3339 start time (as distribution)
//! repositories/<name>/_uploads/<id>/data        multipart upload target, completed at commit
//! repositories/<name>/_uploads/<id>/pierstate   Pier's: S3 upload id, parts, running hash
//!                                               state, and the bytes not yet sent as a part
//! ```
//!
//! Blob reads go through a local read cache when `cache_dir` is set (module `cache`): disk,
//! bounded by `cache_max_size` and evicted least recently used, plus small blobs in memory;
//! a miss streams from S3 while a copy is made and verified.
//!
//! Not done (yet): reads answered with presigned URLs ([`crate::BlobRead::Redirect`]: the
//! core reads manifests through the same `read` and takes a redirect for "unknown", so
//! this needs the caller to say when a redirect is welcome);
//! bumping a blob's modification time when it is linked again (S3 cannot touch an object
//! without rewriting it, so garbage collection must use its own grace period); finding
//! multipart uploads orphaned by a crash (s3s-fs has no ListMultipartUploads): configure
//! the bucket's `AbortIncompleteMultipartUpload` lifecycle rule.

mod bucket;
mod cache;
mod ingest;
mod locks;
mod uploads;

pub use locks::SessionLocks;

use std::collections::{BTreeSet, HashMap};
use std::io;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::SystemTime;

use async_trait::async_trait;
use aws_sdk_s3::config::{BehaviorVersion, Credentials, Region};
use bytes::Bytes;
use pier_oci::{Algorithm, Digest, RepoName, Tag};

use crate::paths::Layout;
use crate::{
    BlobBody, BlobEntry, BlobRead, BlobStore, ManifestStore, RangeSpec, RepoStore, Result,
    StorageError, UploadId,
};
use bucket::{Bucket, body_stream, dir_prefix, key};

/// The smallest part S3 accepts (except for the last one of an upload).
pub const MIN_PART_SIZE: usize = 5 * 1024 * 1024;
/// The largest object a single CopyObject may copy.
const MAX_SINGLE_COPY: u64 = 5 * 1024 * 1024 * 1024;
/// Part size of a multipart (UploadPartCopy) copy of a larger object.
const COPY_PART: u64 = 1024 * 1024 * 1024;
/// Concurrent DeleteObject requests when a directory is removed.
const DELETE_CONCURRENCY: usize = 8;
/// Reads up to this size are answered with the bytes, larger ones with a stream.
const SMALL_BLOB: u64 = 2 * 1024 * 1024;

/// Where the S3 backend keeps its data and how it reaches it.
#[derive(Clone, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct S3Config {
    /// Endpoint of an S3-compatible server (`http://127.0.0.1:9000`); AWS when absent.
    #[serde(default)]
    pub endpoint: Option<String>,
    #[serde(default = "default_region")]
    pub region: String,
    pub bucket: String,
    /// Key prefix of everything Pier stores (distribution's `rootdirectory`), without
    /// leading or trailing `/`; empty for the bucket's root.
    #[serde(default)]
    pub prefix: String,
    /// Static credentials; when absent, the SDK's default chain (environment, profile,
    /// web identity, ECS / instance metadata).
    #[serde(default)]
    pub access_key: Option<String>,
    #[serde(default)]
    pub secret_key: Option<String>,
    /// Path-style URLs (`endpoint/bucket/key`), which most S3-compatible servers need.
    #[serde(default)]
    pub force_path_style: bool,
    /// Size of the parts uploads are sent in; at least [`MIN_PART_SIZE`]. Also the most an
    /// upload session holds in memory.
    #[serde(default = "default_part_size")]
    pub part_size: usize,
    /// Directory for the local copy a mirror fill is read back from while it is written;
    /// the system's temporary directory when absent.
    #[serde(default)]
    pub spool_dir: Option<PathBuf>,
    /// Directory of the local read cache of blobs; no cache when absent. (The server
    /// defaults it to `<root>/s3-cache`.)
    #[serde(default)]
    pub cache_dir: Option<PathBuf>,
    /// Bound on the bytes of blobs the read cache keeps on disk (`"10GiB"`, or a number of
    /// bytes); 0 turns the cache off.
    #[serde(
        default = "default_cache_max_size",
        deserialize_with = "cache::de_size"
    )]
    pub cache_max_size: u64,
    /// Bound on the bytes of small blobs (up to 2 MiB: manifests, configs) the read cache
    /// also keeps in memory; 0 for none.
    #[serde(
        default = "default_memory_cache_size",
        deserialize_with = "cache::de_size"
    )]
    pub memory_cache_size: u64,
    /// Answer blob GETs with a `307` to a presigned S3 URL valid this many seconds instead
    /// of serving the bytes (clients then read from S3 directly; the read cache is not
    /// used for those reads); off when absent. Manifests are always served by Pier.
    #[serde(default)]
    pub redirect_secs: Option<u64>,
}

fn default_cache_max_size() -> u64 {
    10 << 30
}

fn default_memory_cache_size() -> u64 {
    64 << 20
}

fn default_region() -> String {
    "us-east-1".to_owned()
}

fn default_part_size() -> usize {
    // distribution's S3 driver default chunk size
    10 * 1024 * 1024
}

impl S3Config {
    /// A configuration with defaults for everything but the bucket.
    pub fn new(bucket: impl Into<String>) -> S3Config {
        S3Config {
            endpoint: None,
            region: default_region(),
            bucket: bucket.into(),
            prefix: String::new(),
            access_key: None,
            secret_key: None,
            force_path_style: false,
            part_size: default_part_size(),
            spool_dir: None,
            cache_dir: None,
            cache_max_size: default_cache_max_size(),
            memory_cache_size: default_memory_cache_size(),
            redirect_secs: None,
        }
    }
}

impl std::fmt::Debug for S3Config {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("S3Config")
            .field("endpoint", &self.endpoint)
            .field("region", &self.region)
            .field("bucket", &self.bucket)
            .field("prefix", &self.prefix)
            .field("access_key", &self.access_key)
            .field(
                "secret_key",
                &self.secret_key.as_ref().map(|_| "<redacted>"),
            )
            .field("force_path_style", &self.force_path_style)
            .field("part_size", &self.part_size)
            .field("spool_dir", &self.spool_dir)
            .field("cache_dir", &self.cache_dir)
            .field("cache_max_size", &self.cache_max_size)
            .field("memory_cache_size", &self.memory_cache_size)
            .finish()
    }
}

/// In-memory state of upload sessions this process works on, by (repository, id).
type Sessions =
    Mutex<HashMap<(RepoName, UploadId), Arc<tokio::sync::Mutex<Option<uploads::Session>>>>>;

/// The S3 store. Implements every storage role.
pub struct S3Store {
    bucket: Arc<Bucket>,
    part_size: usize,
    spool_dir: PathBuf,
    /// Objects larger than this are copied part by part (tests lower both).
    single_copy_max: u64,
    copy_part: u64,
    sessions: Sessions,
    /// The local read cache of blobs, when configured.
    cache: Option<cache::ReadCache>,
    /// Lifetime of presigned blob URLs, when reads are redirected.
    redirect: Option<std::time::Duration>,
    /// Locks on upload sessions shared with other nodes, when scaled out, and how long a
    /// request waits for one.
    locks: Option<Arc<dyn SessionLocks>>,
    lock_wait: std::time::Duration,
}

fn config_err(msg: impl Into<String>) -> StorageError {
    StorageError::Io {
        op: "configure S3",
        path: PathBuf::new(),
        source: io::Error::new(io::ErrorKind::InvalidInput, msg.into()),
    }
}

impl S3Store {
    /// Serializes appends and commits of one upload session across nodes with `locks`;
    /// a request waits up to `wait` for a session another node is writing.
    pub fn with_session_locks(
        mut self,
        locks: Arc<dyn SessionLocks>,
        wait: std::time::Duration,
    ) -> S3Store {
        self.locks = Some(locks);
        self.lock_wait = wait;
        self
    }

    /// Builds the client from `config`. Makes no request: see [`S3Store::check`].
    pub async fn connect(config: S3Config) -> Result<S3Store> {
        use aws_smithy_http_client::tls::{Provider, rustls_provider::CryptoMode};
        let http = aws_smithy_http_client::Builder::new()
            .tls_provider(Provider::Rustls(CryptoMode::Ring))
            .build_https();
        let mut builder = match (&config.access_key, &config.secret_key) {
            (Some(ak), Some(sk)) => aws_sdk_s3::Config::builder()
                .behavior_version(BehaviorVersion::latest())
                .credentials_provider(Credentials::new(ak, sk, None, None, "pier-config")),
            (None, None) => {
                let shared = aws_config::defaults(BehaviorVersion::latest())
                    .region(Region::new(config.region.clone()))
                    .http_client(http.clone())
                    .load()
                    .await;
                aws_sdk_s3::config::Builder::from(&shared)
            }
            _ => return Err(config_err("access_key and secret_key go together")),
        };
        builder = builder
            .http_client(http)
            .region(Region::new(config.region.clone()))
            .force_path_style(config.force_path_style)
            // Digests are verified by Pier; CRC checksums on every part cost CPU and are not
            // understood by every S3-compatible server.
            .request_checksum_calculation(
                aws_sdk_s3::config::RequestChecksumCalculation::WhenRequired,
            )
            .response_checksum_validation(
                aws_sdk_s3::config::ResponseChecksumValidation::WhenRequired,
            );
        if let Some(endpoint) = &config.endpoint {
            builder = builder.endpoint_url(endpoint);
        }
        Self::with_client(aws_sdk_s3::Client::from_conf(builder.build()), config)
    }

    /// A store using an already built client (for custom SDK settings); the credential and
    /// endpoint fields of `config` are ignored.
    pub fn with_client(client: aws_sdk_s3::Client, config: S3Config) -> Result<S3Store> {
        if config.bucket.is_empty() {
            return Err(config_err("the S3 bucket name is empty"));
        }
        if config.part_size < MIN_PART_SIZE {
            return Err(config_err(format!(
                "part_size {} is below S3's minimum of {MIN_PART_SIZE}",
                config.part_size
            )));
        }
        let prefix = config.prefix.trim_matches('/');
        if prefix.split('/').any(|c| c == "." || c == "..") {
            return Err(config_err("the S3 prefix may not contain . or .."));
        }
        // Indexes the files already cached (blocking, once at start).
        let cache = match &config.cache_dir {
            Some(dir) if config.cache_max_size > 0 => Some(cache::ReadCache::open(
                dir,
                config.cache_max_size,
                config.memory_cache_size,
            )?),
            _ => None,
        };
        Ok(S3Store {
            bucket: Arc::new(Bucket {
                client,
                name: config.bucket,
                layout: Layout::new(Path::new(prefix)),
            }),
            part_size: config.part_size,
            spool_dir: config.spool_dir.unwrap_or_else(std::env::temp_dir),
            single_copy_max: MAX_SINGLE_COPY,
            copy_part: COPY_PART,
            sessions: Mutex::new(HashMap::new()),
            cache,
            redirect: config
                .redirect_secs
                .filter(|&n| n > 0)
                .map(std::time::Duration::from_secs),
            locks: None,
            lock_wait: locks::DEFAULT_WAIT,
        })
    }

    /// Checks that the bucket is reachable with the credentials given (HeadBucket).
    pub async fn check(&self) -> Result<()> {
        let b = &self.bucket;
        b.client
            .head_bucket()
            .bucket(&b.name)
            .send()
            .await
            .map_err(|e| b.err("open bucket", "", e))?;
        Ok(())
    }

    pub fn layout(&self) -> &Layout {
        &self.bucket.layout
    }

    /// The SDK client (for what the roles do not cover, such as creating the bucket).
    pub fn client(&self) -> &aws_sdk_s3::Client {
        &self.bucket.client
    }

    pub fn bucket_name(&self) -> &str {
        &self.bucket.name
    }

    /// Whether the blob is in the local read cache on disk.
    pub fn is_cached(&self, digest: &Digest) -> bool {
        self.cache.as_ref().is_some_and(|c| c.contains(digest))
    }

    /// Copies the whole blob into the read cache in the background (after a range read
    /// missed), unless it is there, being copied, or too large.
    fn fill_in_background(&self, digest: &Digest, size: u64) {
        use futures_util::StreamExt;
        let Some(fill) = self.cache.as_ref().and_then(|c| c.begin_fill(digest, size)) else {
            return;
        };
        let bucket = self.bucket.clone();
        let k = key(&bucket.layout.blob_data(digest));
        tokio::spawn(async move {
            let Ok(Some((len, body))) = bucket.get(&k, None).await else {
                return;
            };
            if len != size {
                return;
            }
            let mut s = cache::ReadCache::tee(fill, body_stream(body));
            while let Some(item) = s.next().await {
                if item.is_err() {
                    return;
                }
            }
        });
    }

    /// Checks small whole content read from S3 against its digest before it is cached.
    async fn verify_small(&self, digest: &Digest, k: &str, data: Bytes) -> Result<()> {
        let d = digest.clone();
        let (computed, len) = tokio::task::spawn_blocking(move || {
            (Digest::of(d.algorithm(), &data), data.len() as u64)
        })
        .await
        .map_err(|e| StorageError::Task(io::Error::other(e)))?;
        if &computed == digest {
            return Ok(());
        }
        tracing::error!(%digest, %computed, "S3 object has the wrong content");
        Err(StorageError::Io {
            op: "verify",
            path: PathBuf::from(format!("s3://{}/{k}", self.bucket.name)),
            source: cache::corrupt(digest, &computed, len),
        })
    }

    /// Lowers the size above which a committed upload is copied into place part by part,
    /// and that of the parts (tests use it to exercise the > 5 GiB path).
    #[doc(hidden)]
    pub fn with_copy_limits(mut self, single_copy_max: u64, copy_part: u64) -> S3Store {
        self.single_copy_max = single_copy_max;
        self.copy_part = copy_part.max(MIN_PART_SIZE as u64);
        self
    }

    fn layout_key(&self, path: &Path) -> String {
        key(path)
    }

    /// Digests linked under `dir/<alg>/<hex>/link`, sorted.
    async fn linked_digests(&self, dir: &Path) -> Result<Vec<Digest>> {
        let prefix = dir_prefix(dir);
        let (objects, _) = self.bucket.list(&prefix, false).await?;
        let mut out = BTreeSet::new();
        for o in objects {
            let Some(rest) = o.key.strip_prefix(&prefix) else {
                continue;
            };
            let mut parts = rest.split('/');
            if let (Some(alg), Some(hex), Some("link"), None) =
                (parts.next(), parts.next(), parts.next(), parts.next())
                && let Some(alg) = Algorithm::parse(alg)
                && let Ok(d) = Digest::from_parts(alg, hex)
            {
                out.insert(d);
            }
        }
        Ok(out.into_iter().collect())
    }

    async fn read_link(&self, path: &Path) -> Result<Option<Digest>> {
        let data = self.bucket.get_small(&key(path)).await?;
        Ok(data.and_then(|d| std::str::from_utf8(&d).ok()?.trim().parse().ok()))
    }

    async fn write_link(&self, path: &Path, digest: &Digest) -> Result<()> {
        self.bucket
            .put(&key(path), Bytes::from(digest.to_string()))
            .await
    }

    /// Removes one object; false if it was not there.
    async fn remove_key(&self, path: &Path) -> Result<bool> {
        let k = key(path);
        if !self.bucket.exists(&k).await? {
            return Ok(false);
        }
        self.bucket.delete(&k).await?;
        Ok(true)
    }

    /// Removes every key under a directory; false if there was none.
    async fn remove_tree(&self, dir: &Path) -> Result<bool> {
        let prefix = dir_prefix(dir);
        let (objects, _) = self.bucket.list(&prefix, false).await?;
        if objects.is_empty() {
            return Ok(false);
        }
        self.delete_keys(objects.into_iter().map(|o| o.key).collect())
            .await?;
        Ok(true)
    }

    /// Removes keys with concurrent DeleteObject calls (DeleteObjects would save requests,
    /// but needs a Content-MD5 or checksum header that not every S3-compatible server takes).
    async fn delete_keys(&self, keys: Vec<String>) -> Result<()> {
        use futures_util::StreamExt;
        let bucket = &self.bucket;
        let results: Vec<Result<()>> = futures_util::stream::iter(keys)
            .map(|k| async move { bucket.delete(&k).await })
            .buffer_unordered(DELETE_CONCURRENCY)
            .collect()
            .await;
        results.into_iter().collect()
    }

    /// Walks `repositories/` one level at a time (ListObjectsV2 with a delimiter), as
    /// distribution walks its directories: every repository directory with the names of
    /// the `_*` directories it holds. Does not descend into `_*` directories.
    async fn walk_repos(&self) -> Result<Vec<(String, Vec<String>)>> {
        use futures_util::StreamExt;
        let root = dir_prefix(&self.bucket.layout.repos_root());
        let mut out = Vec::new();
        let mut frontier = vec![String::new()];
        while !frontier.is_empty() {
            let bucket = &self.bucket;
            let root = &root;
            let listed: Vec<Result<(String, Vec<String>)>> =
                futures_util::stream::iter(frontier.drain(..))
                    .map(|rel| async move {
                        let children = bucket.child_dirs(&format!("{root}{rel}")).await?;
                        Ok((rel, children))
                    })
                    .buffer_unordered(8)
                    .collect()
                    .await;
            for item in listed {
                let (rel, children) = item?;
                let (meta, sub): (Vec<String>, Vec<String>) =
                    children.into_iter().partition(|c| c.starts_with('_'));
                if !rel.is_empty() && !meta.is_empty() {
                    out.push((rel.trim_end_matches('/').to_owned(), meta));
                }
                frontier.extend(sub.into_iter().map(|c| format!("{rel}{c}/")));
            }
        }
        Ok(out)
    }

    async fn repos_with(&self, with_blobs: bool) -> Result<Vec<RepoName>> {
        let mut out: Vec<RepoName> = self
            .walk_repos()
            .await?
            .into_iter()
            .filter(|(_, meta)| {
                meta.iter()
                    .any(|m| m == "_manifests" || (with_blobs && m == "_layers"))
            })
            .filter_map(|(name, _)| name.parse().ok())
            .collect();
        out.sort();
        Ok(out)
    }
}

/// The parts of a blob data key under `blobs/`: `<alg>/<2>/<hex>/data`.
fn parse_blob_key(rest: &str) -> Option<Digest> {
    let mut parts = rest.split('/');
    let (alg, two, hex, data) = (parts.next()?, parts.next()?, parts.next()?, parts.next()?);
    if data != "data" || parts.next().is_some() || !hex.starts_with(two) || two.len() != 2 {
        return None;
    }
    Digest::from_parts(Algorithm::parse(alg)?, hex).ok()
}

#[async_trait]
impl BlobStore for S3Store {
    async fn redirect(&self, digest: &Digest) -> Result<Option<String>> {
        let Some(ttl) = self.redirect else {
            return Ok(None);
        };
        let k = self.layout_key(&self.bucket.layout.blob_data(digest));
        let presigning = aws_sdk_s3::presigning::PresigningConfig::expires_in(ttl)
            .map_err(|e| config_err(format!("presigned URL lifetime {ttl:?}: {e}")))?;
        let req = self
            .bucket
            .client
            .get_object()
            .bucket(&self.bucket.name)
            .key(&k)
            .presigned(presigning)
            .await
            .map_err(|e| StorageError::Io {
                op: "presign GetObject",
                path: PathBuf::from(format!("s3://{}/{k}", self.bucket.name)),
                source: io::Error::other(e.to_string()),
            })?;
        Ok(Some(req.uri().to_owned()))
    }

    async fn stat(&self, digest: &Digest) -> Result<Option<u64>> {
        if let Some(size) = self.cache.as_ref().and_then(|c| c.stat(digest)) {
            return Ok(Some(size));
        }
        self.bucket
            .head(&self.layout_key(&self.bucket.layout.blob_data(digest)))
            .await
    }

    async fn read(&self, digest: &Digest, range: Option<RangeSpec>) -> Result<BlobRead> {
        if let Some(cache) = &self.cache
            && let Some(hit) = cache.read(digest, range).await?
        {
            return Ok(hit);
        }
        let k = self.layout_key(&self.bucket.layout.blob_data(digest));
        // A range needs the size first (to resolve suffixes and answer 416 with it).
        let (size, resolved) = match range {
            None => (None, None),
            Some(r) => {
                let size = self
                    .bucket
                    .head(&k)
                    .await?
                    .ok_or_else(|| StorageError::BlobNotFound(digest.clone()))?;
                let resolved = r
                    .resolve(size)
                    .ok_or(StorageError::RangeNotSatisfiable { size })?;
                (Some(size), Some(resolved))
            }
        };
        let (len, body) = self
            .bucket
            .get(&k, resolved)
            .await?
            .ok_or_else(|| StorageError::BlobNotFound(digest.clone()))?;
        let body = if len <= SMALL_BLOB {
            let data = body.collect().await.map_err(|e| StorageError::Io {
                op: "read",
                path: PathBuf::from(format!("s3://{}/{k}", self.bucket.name)),
                source: io::Error::other(e),
            })?;
            let data = data.into_bytes();
            match (&self.cache, size) {
                (Some(cache), None) => {
                    self.verify_small(digest, &k, data.clone()).await?;
                    cache.keep_small(digest, data.clone());
                }
                (Some(_), Some(size)) => self.fill_in_background(digest, size),
                (None, _) => {}
            }
            BlobBody::Bytes(data)
        } else {
            let stream = body_stream(body);
            match (&self.cache, size) {
                (Some(cache), None) => match cache.begin_fill(digest, len) {
                    Some(fill) => BlobBody::Stream(cache::ReadCache::tee(fill, stream)),
                    None => BlobBody::Stream(stream),
                },
                (Some(_), Some(size)) => {
                    self.fill_in_background(digest, size);
                    BlobBody::Stream(stream)
                }
                (None, _) => BlobBody::Stream(stream),
            }
        };
        Ok(BlobRead::Content {
            size: size.unwrap_or(len),
            range: resolved,
            body,
        })
    }

    async fn put(&self, digest: &Digest, data: Bytes) -> Result<()> {
        let computed = Digest::of(digest.algorithm(), &data);
        if &computed != digest {
            return Err(StorageError::DigestMismatch {
                expected: digest.clone(),
                computed,
            });
        }
        let k = self.layout_key(&self.bucket.layout.blob_data(digest));
        if self.bucket.exists(&k).await? {
            return Ok(());
        }
        self.bucket.put(&k, data).await
    }

    async fn delete(&self, digest: &Digest) -> Result<bool> {
        if let Some(cache) = &self.cache {
            cache.remove(digest).await?;
        }
        self.remove_key(&self.bucket.layout.blob_data(digest)).await
    }

    async fn list(&self) -> Result<Vec<BlobEntry>> {
        let prefix = dir_prefix(&self.bucket.layout.blobs_root());
        let (objects, _) = self.bucket.list(&prefix, false).await?;
        Ok(objects
            .into_iter()
            .filter_map(|o| {
                let digest = parse_blob_key(o.key.strip_prefix(&prefix)?)?;
                Some(BlobEntry {
                    digest,
                    size: o.size,
                    modified: o.modified,
                })
            })
            .collect())
    }
}

#[async_trait]
impl RepoStore for S3Store {
    async fn repo_exists(&self, repo: &RepoName) -> Result<bool> {
        self.bucket
            .any_under(&dir_prefix(&self.bucket.layout.repo(repo)))
            .await
    }

    async fn repositories(&self) -> Result<Vec<RepoName>> {
        self.repos_with(false).await
    }

    async fn repositories_with_blobs(&self) -> Result<Vec<RepoName>> {
        self.repos_with(true).await
    }

    async fn link_blob(&self, repo: &RepoName, digest: &Digest) -> Result<()> {
        self.write_link(&self.bucket.layout.layer_link(repo, digest), digest)
            .await
    }

    async fn blob_linked(&self, repo: &RepoName, digest: &Digest) -> Result<bool> {
        self.bucket
            .exists(&key(&self.bucket.layout.layer_link(repo, digest)))
            .await
    }

    async fn unlink_blob(&self, repo: &RepoName, digest: &Digest) -> Result<bool> {
        self.remove_key(&self.bucket.layout.layer_link(repo, digest))
            .await
    }

    async fn linked_blobs(&self, repo: &RepoName) -> Result<Vec<Digest>> {
        self.linked_digests(&self.bucket.layout.repo(repo).join("_layers"))
            .await
    }
}

#[async_trait]
impl ManifestStore for S3Store {
    async fn link_manifest(&self, repo: &RepoName, digest: &Digest) -> Result<()> {
        self.write_link(&self.bucket.layout.revision_link(repo, digest), digest)
            .await
    }

    async fn manifest_linked(&self, repo: &RepoName, digest: &Digest) -> Result<bool> {
        self.bucket
            .exists(&key(&self.bucket.layout.revision_link(repo, digest)))
            .await
    }

    async fn unlink_manifest(&self, repo: &RepoName, digest: &Digest) -> Result<bool> {
        self.remove_key(&self.bucket.layout.revision_link(repo, digest))
            .await
    }

    async fn manifests(&self, repo: &RepoName) -> Result<Vec<Digest>> {
        self.linked_digests(&self.bucket.layout.revisions_dir(repo))
            .await
    }

    async fn resolve_tag(&self, repo: &RepoName, tag: &Tag) -> Result<Option<Digest>> {
        self.read_link(&self.bucket.layout.tag_current_link(repo, tag))
            .await
    }

    async fn set_tag(&self, repo: &RepoName, tag: &Tag, digest: &Digest) -> Result<()> {
        let layout = &self.bucket.layout;
        self.write_link(&layout.tag_index_link(repo, tag, digest), digest)
            .await?;
        self.write_link(&layout.tag_current_link(repo, tag), digest)
            .await
    }

    async fn delete_tag(&self, repo: &RepoName, tag: &Tag) -> Result<bool> {
        self.remove_tree(&self.bucket.layout.tag_dir(repo, tag))
            .await
    }

    async fn tag_modified(&self, repo: &RepoName, tag: &Tag) -> Result<Option<SystemTime>> {
        self.bucket
            .modified(&key(&self.bucket.layout.tag_current_link(repo, tag)))
            .await
    }

    async fn tags(&self, repo: &RepoName) -> Result<Option<Vec<Tag>>> {
        let layout = &self.bucket.layout;
        let prefix = dir_prefix(&layout.tags_dir(repo));
        // One listing of the tags directory finds every `<tag>/current/link`; the index
        // links listed with them are skipped.
        let (objects, _) = self.bucket.list(&prefix, false).await?;
        let mut tags: Vec<Tag> = objects
            .iter()
            .filter_map(|o| o.key.strip_prefix(&prefix)?.strip_suffix("/current/link"))
            .filter(|t| !t.contains('/'))
            .filter_map(|t| t.parse().ok())
            .collect();
        if tags.is_empty() && !self.repo_exists(repo).await? {
            return Ok(None);
        }
        tags.sort();
        Ok(Some(tags))
    }

    async fn add_referrer(
        &self,
        repo: &RepoName,
        subject: &Digest,
        referrer: &Digest,
    ) -> Result<()> {
        self.write_link(
            &self.bucket.layout.referrer_link(repo, subject, referrer),
            referrer,
        )
        .await
    }

    async fn remove_referrer(
        &self,
        repo: &RepoName,
        subject: &Digest,
        referrer: &Digest,
    ) -> Result<()> {
        self.remove_key(&self.bucket.layout.referrer_link(repo, subject, referrer))
            .await
            .map(drop)
    }

    async fn referrers(&self, repo: &RepoName, subject: &Digest) -> Result<Vec<Digest>> {
        self.linked_digests(&self.bucket.layout.referrers_dir(repo, subject))
            .await
    }
}

/// RFC 3339 UTC time, as distribution writes `startedat`.
fn rfc3339(t: SystemTime) -> String {
    aws_sdk_s3::primitives::DateTime::from(t)
        .fmt(aws_sdk_s3::primitives::DateTimeFormat::DateTime)
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn blob_keys_parse() {
        let d = Digest::of(Algorithm::Sha256, b"x");
        let hex = d.hex();
        assert_eq!(
            parse_blob_key(&format!("sha256/{}/{hex}/data", &hex[..2])),
            Some(d.clone())
        );
        assert_eq!(parse_blob_key(&format!("sha256/zz/{hex}/data")), None);
        assert_eq!(
            parse_blob_key(&format!("sha256/{}/{hex}/data/x", &hex[..2])),
            None
        );
        assert_eq!(
            parse_blob_key(&format!("sha256/{}/{hex}/link", &hex[..2])),
            None
        );
    }

    #[test]
    fn startedat_is_rfc3339() {
        let t = SystemTime::UNIX_EPOCH + std::time::Duration::from_secs(1_795_000_000);
        assert_eq!(rfc3339(t), "2026-11-18T11:06:40Z");
    }

    #[test]
    fn secrets_stay_out_of_debug() {
        let mut c = S3Config::new("b");
        c.secret_key = Some("hunter2".into());
        assert!(!format!("{c:?}").contains("hunter2"));
    }
}
