//! Filesystem backend in CNCF distribution's layout (see [`crate::paths`]).
//!
//! Writes are crash-safe: content goes to a temporary sibling, is fsynced and renamed into
//! place, so a blob, link or tag is only ever seen whole. Upload sessions are plain files
//! (`_uploads/<id>/data`), so they survive restarts; their running hash is kept in memory
//! and recomputed from the file when the process restarted in between.

use std::collections::HashMap;
use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use async_trait::async_trait;
use bytes::Bytes;
use futures_util::StreamExt;
use pier_oci::{Algorithm, Digest, Hasher, RepoName, Tag};

use crate::paths::{Layout, REPO_META_DIRS};
use crate::{
    BlobBody, BlobEntry, BlobRead, BlobStore, ByteStream, Ingest, IngestStore, ManifestStore,
    PartialReader, RangeSpec, RepoStore, Result, StorageError, UploadId, UploadStatus, UploadStore,
};

/// Blobs up to this size are read whole; larger ones are streamed in [`CHUNK`]s.
const SMALL_BLOB: u64 = 2 * 1024 * 1024;
/// Reads at least this large are served from a memory map instead of a copy.
const MMAP_MIN: u64 = 64 * 1024;
const CHUNK: usize = 256 * 1024;
/// While an upload streams in, its bytes are handed to the disk every this many bytes, so
/// the fsync at commit has little left to do.
const WRITEBACK_EVERY: u64 = 32 * 1024 * 1024;
/// Upload chunks are gathered into batches of this many bytes before they are hashed and
/// written...
const COALESCE: usize = 1024 * 1024;
/// ...or of this many chunks (a vectored write takes at most IOV_MAX = 1024 buffers).
const MAX_IOVECS: usize = 512;

/// Chunks of an upload handed to the hashing and writing threads together.
type Batch = Arc<Vec<Bytes>>;

/// Writes every chunk of `batch` with vectored writes; on failure, how much was written.
fn write_batch(file: &mut File, batch: &[Bytes]) -> Result<u64, (u64, io::Error)> {
    let mut slices: Vec<io::IoSlice<'_>> = batch.iter().map(|b| io::IoSlice::new(b)).collect();
    let mut bufs = &mut slices[..];
    let mut written = 0u64;
    while !bufs.is_empty() {
        match file.write_vectored(bufs) {
            Ok(0) => return Err((written, io::ErrorKind::WriteZero.into())),
            Ok(n) => {
                written += n as u64;
                io::IoSlice::advance_slices(&mut bufs, n);
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err((written, e)),
        }
    }
    Ok(written)
}

/// State of an upload session that only lives in memory.
#[derive(Default)]
struct Session {
    /// Running hash of `data[..hashed_to]`.
    hasher: Option<Hasher>,
    hashed_to: u64,
}

type SessionKey = (RepoName, UploadId);

/// The filesystem store. Implements every storage role.
pub struct FsStore {
    layout: Layout,
    sessions: Mutex<HashMap<SessionKey, Arc<tokio::sync::Mutex<Session>>>>,
    catalog: CatalogCache,
    /// Setting and deleting one tag are one directory's writes and its removal: they take
    /// turns (a stripe per tag hash), or a removal meets a new file ("Directory not
    /// empty") and a write meets a removed directory (ENOENT).
    tag_locks: Vec<tokio::sync::Mutex<()>>,
}

/// How long an upload's status waits for a PATCH in progress to finish writing.
const STATUS_WAIT: Duration = Duration::from_secs(1);

/// Stripes of [`FsStore::tag_locks`].
const TAG_LOCKS: usize = 64;

/// How long a walked catalog answers [`RepoStore::repositories`] (a repository this store
/// creates shows at once; one made or removed by another process on the same root, e.g.
/// an offline `pier gc`, within this). At 1 s, console browsing of 10,000 repositories
/// still cost the registry ~15 % of a core in walks (benches/admin).
const CATALOG_TTL: Duration = Duration::from_secs(5);

/// The last catalog walk, shared by the listings that follow it. A walk reads every
/// repository directory (10,000 repositories: ~150 ms, most of it in the kernel) and the
/// admin API lists a page at a time, so without this every page walked everything again,
/// and console users browsing took the registry's CPU (benches/admin).
#[derive(Default)]
struct CatalogCache {
    /// Bumped when this store may have created a repository the snapshot lacks.
    generation: std::sync::atomic::AtomicU64,
    snapshot: Mutex<Option<CatalogSnapshot>>,
    /// One walk at a time; callers arriving meanwhile take its result.
    walking: tokio::sync::Mutex<()>,
}

/// One walk's result.
struct CatalogSnapshot {
    walked_at: std::time::Instant,
    /// [`CatalogCache::generation`] when the walk started.
    generation: u64,
    /// Sorted.
    names: Arc<Vec<RepoName>>,
}

impl CatalogCache {
    fn fresh(&self) -> Option<Arc<Vec<RepoName>>> {
        let current = self.generation.load(std::sync::atomic::Ordering::Acquire);
        let snap = self.snapshot.lock().expect("catalog cache poisoned");
        match &*snap {
            Some(s) if s.generation == current && s.walked_at.elapsed() < CATALOG_TTL => {
                Some(s.names.clone())
            }
            _ => None,
        }
    }

    /// After a manifest or tag was written in `repo`.
    fn touched(&self, repo: &RepoName) {
        let listed = self
            .snapshot
            .lock()
            .expect("catalog cache poisoned")
            .as_ref()
            .is_some_and(|s| s.names.binary_search(repo).is_ok());
        if !listed {
            self.generation
                .fetch_add(1, std::sync::atomic::Ordering::AcqRel);
        }
    }
}

async fn blocking<T: Send + 'static>(f: impl FnOnce() -> Result<T> + Send + 'static) -> Result<T> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| StorageError::Task(io::Error::other(e)))?
}

fn tmp_sibling(path: &Path) -> PathBuf {
    let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("file");
    path.with_file_name(format!("{name}.tmp-{}", uuid::Uuid::new_v4()))
}

/// Creates `path`'s missing parent directories, each made durable (the directory holding
/// it fsynced): a file renamed into a new directory must not vanish with the directory
/// after a power cut.
fn create_parent(path: &Path) -> Result<()> {
    let parent = path.parent().expect("storage paths have parents");
    if parent.is_dir() {
        return Ok(());
    }
    let mut missing = Vec::new();
    let mut dir = parent;
    while !dir.exists() {
        missing.push(dir);
        match dir.parent() {
            Some(p) => dir = p,
            None => break,
        }
    }
    fs::create_dir_all(parent).map_err(StorageError::io("create directory", parent))?;
    for created in missing.iter().rev() {
        if let Some(holder) = created.parent() {
            fsync_dir(holder);
        }
    }
    Ok(())
}

fn fsync_dir(dir: &Path) {
    // Best effort: makes a rename durable across power loss. Not all filesystems allow it.
    if let Ok(d) = File::open(dir) {
        let _ = d.sync_all();
    }
}

/// Writes `data` to `path` atomically and durably: temp sibling, fsync, rename, fsync of
/// the directory (without it the rename, the last step of an acknowledged push, can be
/// lost to a power cut: the power-loss test in clients_crash.rs showed it).
fn write_atomic(path: &Path, data: &[u8]) -> Result<()> {
    create_parent(path)?;
    let tmp = tmp_sibling(path);
    let res = (|| -> io::Result<()> {
        let mut f = File::create(&tmp)?;
        f.write_all(data)?;
        f.sync_all()?;
        fs::rename(&tmp, path)?;
        fsync_dir(path.parent().expect("storage paths have parents"));
        Ok(())
    })();
    if let Err(e) = res {
        let _ = fs::remove_file(&tmp);
        return Err(StorageError::Io {
            op: "write",
            path: path.to_owned(),
            source: e,
        });
    }
    Ok(())
}

fn read_link(path: &Path) -> Result<Option<Digest>> {
    match fs::read_to_string(path) {
        Ok(s) => Ok(s.trim().parse().ok()),
        Err(e) if is_missing(&e) => Ok(None),
        Err(e) => Err(StorageError::Io {
            op: "read link",
            path: path.to_owned(),
            source: e,
        }),
    }
}

fn is_missing(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::NotFound | io::ErrorKind::NotADirectory
    )
}

/// Removes a directory tree; false if it did not exist.
fn remove_tree(path: &Path) -> Result<bool> {
    match fs::remove_dir_all(path) {
        Ok(()) => Ok(true),
        Err(e) if is_missing(&e) => Ok(false),
        Err(e) => Err(StorageError::Io {
            op: "remove",
            path: path.to_owned(),
            source: e,
        }),
    }
}

fn exists(path: &Path) -> Result<bool> {
    match fs::metadata(path) {
        Ok(_) => Ok(true),
        Err(e) if is_missing(&e) => Ok(false),
        Err(e) => Err(StorageError::Io {
            op: "stat",
            path: path.to_owned(),
            source: e,
        }),
    }
}

/// Names of the entries of a directory; empty if it does not exist.
fn dir_names(dir: &Path) -> Result<Vec<String>> {
    let rd = match fs::read_dir(dir) {
        Ok(rd) => rd,
        Err(e) if is_missing(&e) => return Ok(Vec::new()),
        Err(e) => return Err(StorageError::io("list", dir)(e)),
    };
    let mut names = Vec::new();
    for entry in rd {
        let entry = entry.map_err(StorageError::io("list", dir))?;
        if let Some(n) = entry.file_name().to_str() {
            names.push(n.to_owned());
        }
    }
    Ok(names)
}

/// Digests linked under `dir/<alg>/<hex>/link`.
fn linked_digests(dir: &Path) -> Result<Vec<Digest>> {
    let mut out = Vec::new();
    for alg in Algorithm::ALL {
        for hex in dir_names(&dir.join(alg.as_str()))? {
            if let Ok(d) = Digest::from_parts(alg, &hex)
                && exists(&dir.join(alg.as_str()).join(&hex).join("link"))?
            {
                out.push(d);
            }
        }
    }
    out.sort();
    Ok(out)
}

/// Reads `len` bytes at `start`: mapped when large enough that one copy less pays for the
/// mapping, read otherwise. Reads are positional, so readers may share a descriptor (and
/// its offset) with a writer appending to the file.
pub(crate) fn read_range(file: &File, start: u64, len: u64) -> io::Result<Bytes> {
    use std::os::unix::fs::FileExt;
    if len >= MMAP_MIN
        && let Some(b) = map_range(file, start, len)
    {
        return Ok(b);
    }
    let mut buf = vec![0u8; len as usize];
    file.read_exact_at(&mut buf, start)?;
    Ok(Bytes::from(buf))
}

/// Maps a range of a blob read-only. Blob files are immutable: they are written under a
/// temporary name and renamed into place, and removed only by unlinking, never truncated,
/// so a mapping cannot lose its pages (which is what makes mapping unsound in general).
#[allow(unsafe_code)]
fn map_range(file: &File, start: u64, len: u64) -> Option<Bytes> {
    // SAFETY: see above; the file behind `file` is never modified once visible.
    let map = unsafe {
        memmap2::MmapOptions::new()
            .offset(start)
            .len(usize::try_from(len).ok()?)
            .populate()
            .map(file)
    }
    .ok()?;
    Some(Bytes::from_owner(map))
}

/// Starts writing back `len` dirty bytes of `file` from `offset` without waiting for them.
#[allow(unsafe_code)]
fn start_writeback(file: &File, offset: u64, len: u64) {
    use std::os::fd::AsRawFd;
    let (Ok(off), Ok(n)) = (i64::try_from(offset), i64::try_from(len)) else {
        return;
    };
    // SAFETY: sync_file_range only reads its integer arguments; the fd is owned by `file`,
    // which outlives the call. Failure only means the fsync at commit does more work.
    unsafe {
        libc::sync_file_range(file.as_raw_fd(), off, n, libc::SYNC_FILE_RANGE_WRITE);
    }
}

fn hash_file(path: &Path, algorithm: Algorithm) -> Result<(Digest, u64)> {
    let mut f = File::open(path).map_err(StorageError::io("open", path))?;
    let mut h = algorithm.hasher();
    let mut buf = vec![0u8; 1 << 20];
    let mut n = 0u64;
    loop {
        let r = f.read(&mut buf).map_err(StorageError::io("read", path))?;
        if r == 0 {
            break;
        }
        h.update(&buf[..r]);
        n += r as u64;
    }
    Ok((h.finish(), n))
}

/// Streams `len` bytes of `file` from `start` in chunks. Each chunk is read on a blocking
/// thread only when the consumer asks for the previous one (one chunk ahead), so a client
/// that stops reading parks no thread: the read is done and waits as data, and the stream
/// is dropped with its connection. (A thread per stream that waited to hand over its next
/// chunk let a few hundred non-reading clients take every blocking thread of the runtime.)
pub(crate) fn stream_file(file: File, start: u64, len: u64) -> ByteStream {
    type Read = tokio::task::JoinHandle<io::Result<Bytes>>;
    struct State {
        file: Arc<File>,
        off: u64,
        end: u64,
        next: Option<Read>,
    }
    impl State {
        /// Starts reading the chunk at `off`, if any is left.
        fn read_ahead(&mut self) {
            if self.off >= self.end {
                self.next = None;
                return;
            }
            let n = (CHUNK as u64).min(self.end - self.off);
            let (file, off) = (self.file.clone(), self.off);
            self.off += n;
            // A mapped window costs no copy and no heap; it leaves the process's memory
            // when the client has been sent it.
            self.next = Some(tokio::task::spawn_blocking(move || {
                read_range(&file, off, n)
            }));
        }
    }
    let mut state = State {
        file: Arc::new(file),
        off: start,
        end: start + len,
        next: None,
    };
    state.read_ahead();
    Box::pin(futures_util::stream::unfold(state, |mut st| async move {
        let read = st.next.take()?;
        let item = match read.await {
            Ok(item) => item,
            Err(e) => Err(io::Error::other(format!("blob read task failed: {e}"))),
        };
        if item.is_err() {
            st.off = st.end;
        } else {
            st.read_ahead();
        }
        Some((item, st))
    }))
}

impl FsStore {
    /// A store rooted at `root` (the directory that holds `docker/registry/v2`).
    pub fn new(root: &Path) -> Result<FsStore> {
        let layout = Layout::new(root);
        fs::create_dir_all(layout.base())
            .map_err(StorageError::io("create directory", layout.base()))?;
        Ok(FsStore {
            layout,
            sessions: Mutex::new(HashMap::new()),
            catalog: CatalogCache::default(),
            tag_locks: (0..TAG_LOCKS)
                .map(|_| tokio::sync::Mutex::new(()))
                .collect(),
        })
    }

    fn tag_lock(&self, repo: &RepoName, tag: &Tag) -> &tokio::sync::Mutex<()> {
        use std::hash::{Hash, Hasher};
        let mut h = std::collections::hash_map::DefaultHasher::new();
        (repo, tag).hash(&mut h);
        &self.tag_locks[(h.finish() % TAG_LOCKS as u64) as usize]
    }

    pub fn layout(&self) -> &Layout {
        &self.layout
    }

    fn session(&self, repo: &RepoName, id: &UploadId) -> Arc<tokio::sync::Mutex<Session>> {
        let mut map = self.sessions.lock().expect("session map poisoned");
        map.entry((repo.clone(), id.clone())).or_default().clone()
    }

    fn forget_session(&self, repo: &RepoName, id: &UploadId) {
        let mut map = self.sessions.lock().expect("session map poisoned");
        map.remove(&(repo.clone(), id.clone()));
    }

    /// Current length of an upload session's data, off the runtime.
    async fn upload_len(&self, repo: &RepoName, id: &UploadId) -> Result<u64> {
        let path = self.layout.upload_data(repo, id);
        let id = id.to_string();
        blocking(move || match fs::metadata(&path) {
            Ok(m) => Ok(m.len()),
            Err(e) if is_missing(&e) => Err(StorageError::UploadNotFound(id)),
            Err(e) => Err(StorageError::io("stat", path)(e)),
        })
        .await
    }
}

/// Walks `repositories/` for directories holding `_manifests` (as distribution does).
/// With `with_blobs`, also directories holding only `_layers`.
fn walk_repos(dir: &Path, prefix: &str, with_blobs: bool, out: &mut Vec<RepoName>) -> Result<()> {
    let names = dir_names(dir)?;
    if names
        .iter()
        .any(|n| n == "_manifests" || (with_blobs && n == "_layers"))
        && let Ok(name) = prefix.parse()
    {
        out.push(name);
    }
    for n in names {
        if n.starts_with('_') || n.contains(".tmp-") {
            continue;
        }
        let child = dir.join(&n);
        if child.is_dir() {
            let p = if prefix.is_empty() {
                n
            } else {
                format!("{prefix}/{n}")
            };
            walk_repos(&child, &p, with_blobs, out)?;
        }
    }
    Ok(())
}

/// Every upload session directory: (repo, id, last modified).
fn walk_uploads(
    layout: &Layout,
    dir: &Path,
    prefix: &str,
    out: &mut Vec<(RepoName, UploadId, SystemTime)>,
) -> Result<()> {
    for n in dir_names(dir)? {
        let child = dir.join(&n);
        if n == "_uploads" {
            let Ok(repo) = prefix.parse::<RepoName>() else {
                continue;
            };
            for id in dir_names(&child)? {
                let Some(id) = UploadId::parse(&id) else {
                    continue;
                };
                let data = layout.upload_data(&repo, &id);
                let dir = layout.upload_dir(&repo, &id);
                let modified = fs::metadata(&data)
                    .or_else(|_| fs::metadata(&dir))
                    .and_then(|m| m.modified())
                    .unwrap_or(SystemTime::UNIX_EPOCH);
                out.push((repo.clone(), id, modified));
            }
        } else if !REPO_META_DIRS.contains(&n.as_str()) && child.is_dir() {
            let p = if prefix.is_empty() {
                n
            } else {
                format!("{prefix}/{n}")
            };
            walk_uploads(layout, &child, &p, out)?;
        }
    }
    Ok(())
}

#[async_trait]
impl BlobStore for FsStore {
    async fn stat(&self, digest: &Digest) -> Result<Option<u64>> {
        let path = self.layout.blob_data(digest);
        blocking(move || match fs::metadata(&path) {
            Ok(m) => Ok(Some(m.len())),
            Err(e) if is_missing(&e) => Ok(None),
            Err(e) => Err(StorageError::io("stat", path)(e)),
        })
        .await
    }

    async fn read(&self, digest: &Digest, range: Option<RangeSpec>) -> Result<BlobRead> {
        let path = self.layout.blob_data(digest);
        let digest = digest.clone();
        let (file, size, start, len, resolved) = blocking(move || {
            let file = match File::open(&path) {
                Ok(f) => f,
                Err(e) if is_missing(&e) => return Err(StorageError::BlobNotFound(digest)),
                Err(e) => return Err(StorageError::io("open", path)(e)),
            };
            let size = file
                .metadata()
                .map_err(StorageError::io("stat", &path))?
                .len();
            let (start, end, resolved) = match range {
                None if size == 0 => (0, 0, None),
                None => (0, size - 1, None),
                Some(r) => {
                    let (s, e) = r
                        .resolve(size)
                        .ok_or(StorageError::RangeNotSatisfiable { size })?;
                    (s, e, Some((s, e)))
                }
            };
            let len = if size == 0 { 0 } else { end - start + 1 };
            if len <= SMALL_BLOB {
                let bytes =
                    read_range(&file, start, len).map_err(StorageError::io("read", &path))?;
                return Ok((Err(bytes), size, start, len, resolved));
            }
            Ok((Ok(file), size, start, len, resolved))
        })
        .await?;
        let body = match file {
            Err(bytes) => BlobBody::Bytes(bytes),
            Ok(file) => BlobBody::Stream(stream_file(file, start, len)),
        };
        Ok(BlobRead::Content {
            size,
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
        let path = self.layout.blob_data(digest);
        blocking(move || {
            if exists(&path)? {
                return Ok(());
            }
            write_atomic(&path, &data)?;
            fsync_dir(path.parent().expect("blob dir"));
            Ok(())
        })
        .await
    }

    async fn delete(&self, digest: &Digest) -> Result<bool> {
        let dir = self.layout.blob_dir(digest);
        blocking(move || remove_tree(&dir)).await
    }

    async fn list(&self) -> Result<Vec<BlobEntry>> {
        let root = self.layout.blobs_root();
        blocking(move || {
            let mut out = Vec::new();
            for alg in Algorithm::ALL {
                let alg_dir = root.join(alg.as_str());
                for prefix in dir_names(&alg_dir)? {
                    for hex in dir_names(&alg_dir.join(&prefix))? {
                        let Ok(digest) = Digest::from_parts(alg, &hex) else {
                            continue;
                        };
                        let data = alg_dir.join(&prefix).join(&hex).join("data");
                        if let Ok(m) = fs::metadata(&data) {
                            out.push(BlobEntry {
                                digest,
                                size: m.len(),
                                modified: m.modified().unwrap_or(SystemTime::UNIX_EPOCH),
                            });
                        }
                    }
                }
            }
            Ok(out)
        })
        .await
    }
}

#[async_trait]
impl RepoStore for FsStore {
    async fn repo_exists(&self, repo: &RepoName) -> Result<bool> {
        let path = self.layout.repo(repo);
        blocking(move || exists(&path)).await
    }

    async fn repositories(&self) -> Result<Vec<RepoName>> {
        if let Some(names) = self.catalog.fresh() {
            return Ok(names.as_ref().clone());
        }
        let _walking = self.catalog.walking.lock().await;
        if let Some(names) = self.catalog.fresh() {
            return Ok(names.as_ref().clone());
        }
        let generation = self
            .catalog
            .generation
            .load(std::sync::atomic::Ordering::Acquire);
        let root = self.layout.repos_root();
        let names = blocking(move || {
            let mut out = Vec::new();
            walk_repos(&root, "", false, &mut out)?;
            out.sort();
            Ok(out)
        })
        .await?;
        *self
            .catalog
            .snapshot
            .lock()
            .expect("catalog cache poisoned") = Some(CatalogSnapshot {
            walked_at: std::time::Instant::now(),
            generation,
            names: Arc::new(names.clone()),
        });
        Ok(names)
    }

    async fn repositories_with_blobs(&self) -> Result<Vec<RepoName>> {
        let root = self.layout.repos_root();
        blocking(move || {
            let mut out = Vec::new();
            walk_repos(&root, "", true, &mut out)?;
            out.sort();
            Ok(out)
        })
        .await
    }

    async fn link_blob(&self, repo: &RepoName, digest: &Digest) -> Result<()> {
        let path = self.layout.layer_link(repo, digest);
        let data = self.layout.blob_data(digest);
        let content = digest.to_string();
        blocking(move || {
            // A blob linked again is in use again: restart its garbage-collection grace.
            if let Ok(f) = OpenOptions::new().write(true).open(&data) {
                let _ = f.set_modified(SystemTime::now());
            }
            write_atomic(&path, content.as_bytes())
        })
        .await
    }

    async fn blob_linked(&self, repo: &RepoName, digest: &Digest) -> Result<bool> {
        let path = self.layout.layer_link(repo, digest);
        blocking(move || exists(&path)).await
    }

    async fn unlink_blob(&self, repo: &RepoName, digest: &Digest) -> Result<bool> {
        let path = self.layout.layer_link(repo, digest);
        let dir = path.parent().expect("link dir").to_owned();
        blocking(move || remove_tree(&dir)).await
    }

    async fn linked_blobs(&self, repo: &RepoName) -> Result<Vec<Digest>> {
        let dir = self.layout.repo(repo).join("_layers");
        blocking(move || linked_digests(&dir)).await
    }
}

#[async_trait]
impl ManifestStore for FsStore {
    async fn link_manifest(&self, repo: &RepoName, digest: &Digest) -> Result<()> {
        let path = self.layout.revision_link(repo, digest);
        let content = digest.to_string();
        let written = blocking(move || write_atomic(&path, content.as_bytes())).await;
        self.catalog.touched(repo);
        written
    }

    async fn manifest_linked(&self, repo: &RepoName, digest: &Digest) -> Result<bool> {
        let path = self.layout.revision_link(repo, digest);
        blocking(move || exists(&path)).await
    }

    async fn unlink_manifest(&self, repo: &RepoName, digest: &Digest) -> Result<bool> {
        let dir = self
            .layout
            .revision_link(repo, digest)
            .parent()
            .expect("link dir")
            .to_owned();
        blocking(move || remove_tree(&dir)).await
    }

    async fn manifests(&self, repo: &RepoName) -> Result<Vec<Digest>> {
        let dir = self.layout.revisions_dir(repo);
        blocking(move || linked_digests(&dir)).await
    }

    async fn resolve_tag(&self, repo: &RepoName, tag: &Tag) -> Result<Option<Digest>> {
        let path = self.layout.tag_current_link(repo, tag);
        blocking(move || read_link(&path)).await
    }

    async fn set_tag(&self, repo: &RepoName, tag: &Tag, digest: &Digest) -> Result<()> {
        let current = self.layout.tag_current_link(repo, tag);
        let index = self.layout.tag_index_link(repo, tag, digest);
        let content = digest.to_string();
        let _turn = self.tag_lock(repo, tag).lock().await;
        let written = blocking(move || {
            write_atomic(&index, content.as_bytes())?;
            write_atomic(&current, content.as_bytes())
        })
        .await;
        self.catalog.touched(repo);
        written
    }

    async fn delete_tag(&self, repo: &RepoName, tag: &Tag) -> Result<bool> {
        let dir = self.layout.tag_dir(repo, tag);
        let _turn = self.tag_lock(repo, tag).lock().await;
        blocking(move || remove_tree(&dir)).await
    }

    async fn tag_modified(&self, repo: &RepoName, tag: &Tag) -> Result<Option<SystemTime>> {
        // `set_tag` replaces the link by a rename, so its mtime is the last time it was set.
        let path = self.layout.tag_current_link(repo, tag);
        blocking(
            move || match fs::metadata(&path).and_then(|m| m.modified()) {
                Ok(t) => Ok(Some(t)),
                Err(e) if is_missing(&e) => Ok(None),
                Err(e) => Err(StorageError::Io {
                    op: "stat link",
                    path,
                    source: e,
                }),
            },
        )
        .await
    }

    async fn tags(&self, repo: &RepoName) -> Result<Option<Vec<Tag>>> {
        let repo_dir = self.layout.repo(repo);
        let dir = self.layout.tags_dir(repo);
        blocking(move || {
            if !exists(&repo_dir)? {
                return Ok(None);
            }
            let mut tags: Vec<Tag> = Vec::new();
            for n in dir_names(&dir)? {
                if let Ok(t) = n.parse::<Tag>()
                    && exists(&dir.join(&n).join("current/link"))?
                {
                    tags.push(t);
                }
            }
            tags.sort();
            Ok(Some(tags))
        })
        .await
    }

    /// Sorts the tag directory's names and checks `current/link` only until the page is
    /// full: a page of a repository with 10,000 tags costs one directory read and about
    /// `limit` stats, not 10,000.
    async fn tags_after(
        &self,
        repo: &RepoName,
        last: Option<&str>,
        limit: usize,
    ) -> Result<Option<(Vec<Tag>, bool)>> {
        let repo_dir = self.layout.repo(repo);
        let dir = self.layout.tags_dir(repo);
        let last = last.map(str::to_owned);
        blocking(move || {
            if !exists(&repo_dir)? {
                return Ok(None);
            }
            let mut names: Vec<Tag> = dir_names(&dir)?
                .into_iter()
                .filter(|n| last.as_deref().is_none_or(|l| n.as_str() > l))
                .filter_map(|n| n.parse::<Tag>().ok())
                .collect();
            names.sort();
            let mut page = Vec::new();
            for t in names {
                if !exists(&dir.join(t.as_str()).join("current/link"))? {
                    continue;
                }
                if page.len() == limit {
                    return Ok(Some((page, true)));
                }
                page.push(t);
            }
            Ok(Some((page, false)))
        })
        .await
    }

    async fn add_referrer(
        &self,
        repo: &RepoName,
        subject: &Digest,
        referrer: &Digest,
    ) -> Result<()> {
        let path = self.layout.referrer_link(repo, subject, referrer);
        let content = referrer.to_string();
        blocking(move || write_atomic(&path, content.as_bytes())).await
    }

    async fn remove_referrer(
        &self,
        repo: &RepoName,
        subject: &Digest,
        referrer: &Digest,
    ) -> Result<()> {
        let dir = self
            .layout
            .referrer_link(repo, subject, referrer)
            .parent()
            .expect("link dir")
            .to_owned();
        blocking(move || remove_tree(&dir).map(|_| ())).await
    }

    async fn referrers(&self, repo: &RepoName, subject: &Digest) -> Result<Vec<Digest>> {
        let dir = self.layout.referrers_dir(repo, subject);
        blocking(move || linked_digests(&dir)).await
    }
}

#[async_trait]
impl UploadStore for FsStore {
    async fn create(&self, repo: &RepoName) -> Result<UploadStatus> {
        let id = UploadId::new_random();
        let (layout, r, i) = (self.layout.clone(), repo.clone(), id.clone());
        blocking(move || create_upload_files(&layout, &r, &i).map(drop)).await?;
        let session = self.session(repo, &id);
        session.lock().await.hasher = Some(Algorithm::Sha256.hasher());
        Ok(UploadStatus { id, offset: 0 })
    }

    async fn status(&self, repo: &RepoName, id: &UploadId) -> Result<UploadStatus> {
        // A PATCH that just ended (its client went away) finishes writing within moments:
        // wait for it, so the offset is final. One still streaming (slowly, maybe on
        // purpose) must not hold the status hostage: then the offset is what is on disk.
        let session = self.session(repo, id);
        let _guard = tokio::time::timeout(STATUS_WAIT, session.lock()).await.ok();
        match self.upload_len(repo, id).await {
            Ok(offset) => Ok(UploadStatus {
                id: id.clone(),
                offset,
            }),
            Err(e) => {
                drop(_guard);
                self.forget_session(repo, id);
                Err(e)
            }
        }
    }

    async fn append(
        &self,
        repo: &RepoName,
        id: &UploadId,
        start: Option<u64>,
        body: ByteStream,
    ) -> Result<UploadStatus> {
        let res = self.append_inner(repo, id, start, body).await;
        self.forget_unknown(repo, id, &res);
        res
    }

    async fn commit(&self, repo: &RepoName, id: &UploadId, digest: &Digest) -> Result<u64> {
        let res = self.commit_inner(repo, id, digest).await;
        self.forget_unknown(repo, id, &res);
        res
    }

    async fn abort(&self, repo: &RepoName, id: &UploadId) -> Result<()> {
        // Without waiting for a PATCH in progress: it notices the session is gone when
        // its body ends and answers "unknown upload" (a commit still takes turns).
        let dir = self.layout.upload_dir(repo, id);
        let id_str = id.to_string();
        let removed = blocking(move || remove_tree(&dir)).await;
        self.forget_session(repo, id);
        match removed? {
            true => Ok(()),
            false => Err(StorageError::UploadNotFound(id_str)),
        }
    }

    async fn expire(&self, idle: Duration) -> Result<usize> {
        let root = self.layout.repos_root();
        let layout = self.layout.clone();
        let found = blocking(move || {
            let mut out = Vec::new();
            walk_uploads(&layout, &root, "", &mut out)?;
            Ok(out)
        })
        .await?;
        let now = SystemTime::now();
        let mut removed = 0;
        for (repo, id, modified) in found {
            if now.duration_since(modified).unwrap_or_default() < idle {
                continue;
            }
            let session = self.session(&repo, &id);
            // A session busy with a request is not idle.
            let Ok(guard) = session.try_lock() else {
                continue;
            };
            let dir = self.layout.upload_dir(&repo, &id);
            if blocking(move || remove_tree(&dir)).await? {
                removed += 1;
                tracing::info!(repository = %repo, upload = %id, "expired idle upload session");
            }
            drop(guard);
            self.forget_session(&repo, &id);
        }
        Ok(removed)
    }
}

impl FsStore {
    /// Forgets the in-memory state of a session the disk does not know.
    fn forget_unknown<T>(&self, repo: &RepoName, id: &UploadId, res: &Result<T>) {
        if matches!(res, Err(StorageError::UploadNotFound(_))) {
            self.forget_session(repo, id);
        }
    }

    async fn append_inner(
        &self,
        repo: &RepoName,
        id: &UploadId,
        start: Option<u64>,
        mut body: ByteStream,
    ) -> Result<UploadStatus> {
        let session = self.session(repo, id);
        let mut st = session.lock().await;
        let path = self.layout.upload_data(repo, id);
        let open_path = path.clone();
        let id_str = id.to_string();
        let (file, offset) = blocking(move || {
            let f = match OpenOptions::new().append(true).open(&open_path) {
                Ok(f) => f,
                Err(e) if is_missing(&e) => return Err(StorageError::UploadNotFound(id_str)),
                Err(e) => return Err(StorageError::io("open", open_path)(e)),
            };
            let len = f
                .metadata()
                .map_err(StorageError::io("stat", &open_path))?
                .len();
            Ok((f, len))
        })
        .await?;
        if let Some(s) = start
            && s != offset
        {
            return Err(StorageError::OffsetMismatch {
                expected: offset,
                got: s,
            });
        }
        let hasher = if st.hashed_to == offset {
            st.hasher.take()
        } else {
            None
        };

        // Hash and write on two blocking threads while this task reads the network.
        let (wtx, mut wrx) = tokio::sync::mpsc::channel::<Batch>(4);
        let writer = tokio::task::spawn_blocking(move || {
            let mut file = file;
            let mut written = 0u64;
            let mut flushed = offset;
            while let Some(batch) = wrx.blocking_recv() {
                match write_batch(&mut file, &batch) {
                    Ok(n) => written += n,
                    Err((n, e)) => return (written + n, Some(e)),
                }
                if offset + written - flushed >= WRITEBACK_EVERY {
                    start_writeback(&file, flushed, offset + written - flushed);
                    flushed = offset + written;
                }
            }
            (written, None)
        });
        let (htx, hasher_task) = match hasher {
            Some(mut h) => {
                let (htx, mut hrx) = tokio::sync::mpsc::channel::<Batch>(4);
                let task = tokio::task::spawn_blocking(move || {
                    while let Some(batch) = hrx.blocking_recv() {
                        batch.iter().for_each(|c| h.update(c));
                    }
                    h
                });
                (Some(htx), Some(task))
            }
            None => (None, None),
        };
        // Batch the network's small chunks (without copying them): fewer thread wake-ups
        // and one vectored write per batch.
        let mut pending: Vec<Bytes> = Vec::new();
        let mut pending_len = 0;
        let mut body_err = None;
        loop {
            let item = body.next().await;
            let flush = match &item {
                Some(Ok(chunk)) => {
                    pending_len += chunk.len();
                    pending.push(chunk.clone());
                    pending_len >= COALESCE || pending.len() >= MAX_IOVECS
                }
                Some(Err(_)) | None => true,
            };
            if flush && !pending.is_empty() {
                let batch: Batch = Arc::new(std::mem::take(&mut pending));
                pending_len = 0;
                if let Some(htx) = &htx {
                    // The hasher only stops early if its thread died; the writer decides.
                    let _ = htx.send(batch.clone()).await;
                }
                if wtx.send(batch).await.is_err() {
                    break;
                }
            }
            match item {
                Some(Ok(_)) => {}
                Some(Err(e)) => {
                    body_err = Some(e);
                    break;
                }
                None => break,
            }
        }
        drop((wtx, htx));
        let task_err = |e: tokio::task::JoinError| StorageError::Task(io::Error::other(e));
        let (written, write_err) = writer.await.map_err(task_err)?;
        let hasher = match hasher_task {
            Some(t) => Some(t.await.map_err(task_err)?),
            None => None,
        };
        // After a failed write the file and the hash may disagree: rehash at commit.
        let hasher = if write_err.is_some() { None } else { hasher };
        st.hashed_to = if hasher.is_some() {
            offset + written
        } else {
            0
        };
        st.hasher = hasher;
        if let Some(e) = write_err {
            return Err(StorageError::io("write", path)(e));
        }
        if let Some(e) = body_err {
            return Err(StorageError::Body(e));
        }
        // Cancelled while the body streamed: the bytes went to an unlinked file.
        let check = path.clone();
        if !blocking(move || exists(&check)).await? {
            return Err(StorageError::UploadNotFound(id.to_string()));
        }
        Ok(UploadStatus {
            id: id.clone(),
            offset: offset + written,
        })
    }

    async fn commit_inner(&self, repo: &RepoName, id: &UploadId, digest: &Digest) -> Result<u64> {
        let session = self.session(repo, id);
        let mut st = session.lock().await;
        let len = self.upload_len(repo, id).await?;
        let data = self.layout.upload_data(repo, id);
        let upload_dir = self.layout.upload_dir(repo, id);
        let computed = match st.hasher.take() {
            Some(h) if st.hashed_to == len && h.algorithm() == digest.algorithm() => h.finish(),
            _ => {
                let (path, alg) = (data.clone(), digest.algorithm());
                blocking(move || hash_file(&path, alg)).await?.0
            }
        };
        st.hashed_to = 0;
        if &computed != digest {
            let dir = upload_dir.clone();
            blocking(move || remove_tree(&dir)).await?;
            drop(st);
            self.forget_session(repo, id);
            return Err(StorageError::DigestMismatch {
                expected: digest.clone(),
                computed,
            });
        }
        let (layout, r, i, d) = (
            self.layout.clone(),
            repo.clone(),
            id.clone(),
            digest.clone(),
        );
        blocking(move || publish_upload(&layout, &r, &i, &d)).await?;
        drop(st);
        self.forget_session(repo, id);
        Ok(len)
    }
}

/// Creates an upload session's directory, empty data file and start time; returns the data
/// file opened for appending.
fn create_upload_files(layout: &Layout, repo: &RepoName, id: &UploadId) -> Result<File> {
    let data = layout.upload_data(repo, id);
    create_parent(&data)?;
    let file = OpenOptions::new()
        .create_new(true)
        .append(true)
        .read(true)
        .open(&data)
        .map_err(StorageError::io("create", &data))?;
    let now = humantime_rfc3339(SystemTime::now());
    write_atomic(&layout.upload_started_at(repo, id), now.as_bytes())?;
    Ok(file)
}

/// Makes a verified upload a blob: fsync, rename into place (or keep the copy already
/// there), link it into the repository, remove the session.
fn publish_upload(layout: &Layout, repo: &RepoName, id: &UploadId, digest: &Digest) -> Result<()> {
    let data = layout.upload_data(repo, id);
    let blob = layout.blob_data(digest);
    File::open(&data)
        .and_then(|f| f.sync_all())
        .map_err(StorageError::io("fsync", &data))?;
    if exists(&blob)? {
        // In use again: restart its garbage-collection grace.
        if let Ok(f) = OpenOptions::new().write(true).open(&blob) {
            let _ = f.set_modified(SystemTime::now());
        }
    } else {
        create_parent(&blob)?;
        // The crash tests stop the process on either side of the rename
        // (`FAILPOINTS=fs-commit-before-rename=return` aborts here).
        #[cfg(feature = "failpoints")]
        fail::fail_point!("fs-commit-before-rename", |_| std::process::abort());
        fs::rename(&data, &blob).map_err(StorageError::io("rename into", &blob))?;
        fsync_dir(blob.parent().expect("blob dir"));
        #[cfg(feature = "failpoints")]
        fail::fail_point!("fs-commit-after-rename", |_| std::process::abort());
    }
    write_atomic(
        &layout.layer_link(repo, digest),
        digest.to_string().as_bytes(),
    )?;
    remove_tree(&layout.upload_dir(repo, id))?;
    Ok(())
}

#[async_trait]
impl IngestStore for FsStore {
    async fn begin_ingest(&self, repo: &RepoName, digest: &Digest) -> Result<Box<dyn Ingest>> {
        let id = UploadId::new_random();
        let (layout, r, i) = (self.layout.clone(), repo.clone(), id.clone());
        let file = blocking(move || create_upload_files(&layout, &r, &i)).await?;
        Ok(Box::new(FsIngest {
            layout: self.layout.clone(),
            repo: repo.clone(),
            id,
            digest: digest.clone(),
            file: Arc::new(file),
            hasher: Some(digest.algorithm().hasher()),
            written: 0,
            verified: false,
        }))
    }
}

/// A blob being written from a known source (a mirror fill), in an upload session
/// directory so that a crash leaves it to upload expiry.
struct FsIngest {
    layout: Layout,
    repo: RepoName,
    id: UploadId,
    digest: Digest,
    file: Arc<File>,
    /// `None` after a failed write or once verified.
    hasher: Option<Hasher>,
    written: u64,
    verified: bool,
}

struct FsPartialReader(Arc<File>);

#[async_trait]
impl PartialReader for FsPartialReader {
    async fn read_at(&self, offset: u64, len: usize) -> io::Result<Bytes> {
        let file = self.0.clone();
        // Bytes already written are never rewritten (the file only grows, and is only ever
        // unlinked), so they read like a finished blob.
        tokio::task::spawn_blocking(move || read_range(&file, offset, len as u64))
            .await
            .map_err(io::Error::other)?
    }
}

#[async_trait]
impl Ingest for FsIngest {
    async fn write(&mut self, chunk: Bytes) -> Result<()> {
        self.write_batch(vec![chunk]).await
    }

    /// One trip to the blocking pool for the whole batch.
    async fn write_batch(&mut self, chunks: Vec<Bytes>) -> Result<()> {
        let mut hasher = self
            .hasher
            .take()
            .expect("ingest used after a failed write");
        let file = self.file.clone();
        let len: u64 = chunks.iter().map(|c| c.len() as u64).sum();
        let path = self.layout.upload_data(&self.repo, &self.id);
        // Written and hashed on two threads at once: on a cold blob the hash is the
        // larger cost, and the two only share the (reference-counted) buffers.
        let to_hash = chunks.clone();
        let write = blocking(move || {
            for chunk in &chunks {
                (&*file)
                    .write_all(chunk)
                    .map_err(StorageError::io("write", path.clone()))?;
            }
            Ok(())
        });
        let hash = blocking(move || {
            for chunk in &to_hash {
                hasher.update(chunk);
            }
            Ok(hasher)
        });
        let (written, hasher) = tokio::join!(write, hash);
        written?;
        self.hasher = Some(hasher?);
        self.written += len;
        Ok(())
    }

    fn written(&self) -> u64 {
        self.written
    }

    fn reader(&self) -> Arc<dyn PartialReader> {
        Arc::new(FsPartialReader(self.file.clone()))
    }

    async fn verify(&mut self) -> Result<()> {
        if self.verified {
            return Ok(());
        }
        if let Err(e) = crate::check_ingest_digest(self.hasher.take(), &self.digest) {
            let dir = self.layout.upload_dir(&self.repo, &self.id);
            blocking(move || remove_tree(&dir)).await?;
            return Err(e);
        }
        self.verified = true;
        Ok(())
    }

    async fn commit(mut self: Box<Self>) -> Result<u64> {
        self.verify().await?;
        let this = *self;
        let written = this.written;
        blocking(move || publish_upload(&this.layout, &this.repo, &this.id, &this.digest)).await?;
        Ok(written)
    }

    async fn abort(self: Box<Self>) {
        let dir = self.layout.upload_dir(&self.repo, &self.id);
        let _ = blocking(move || remove_tree(&dir)).await;
    }
}

/// RFC 3339 UTC timestamp, as distribution writes `startedat`.
fn humantime_rfc3339(t: SystemTime) -> String {
    let secs = t
        .duration_since(SystemTime::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    let days = (secs / 86_400) as i64;
    let rem = secs % 86_400;
    // Civil from days (Howard Hinnant's algorithm).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}Z",
        rem / 3600,
        (rem % 3600) / 60,
        rem % 60
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rfc3339() {
        assert_eq!(
            humantime_rfc3339(SystemTime::UNIX_EPOCH),
            "1970-01-01T00:00:00Z"
        );
        let t = SystemTime::UNIX_EPOCH + Duration::from_secs(1_795_000_000);
        assert_eq!(humantime_rfc3339(t), "2026-11-18T11:06:40Z");
    }

    /// A committed upload becomes the blob by a rename of its file (the same inode), so a
    /// crash at any moment leaves either no blob or the whole one: a copy into place would
    /// leave a partial blob behind when the process dies mid-copy.
    #[tokio::test]
    async fn a_commit_renames_the_upload_into_place() {
        use std::os::unix::fs::MetadataExt;
        let dir = tempfile::tempdir().unwrap();
        let store = FsStore::new(dir.path()).unwrap();
        let repo: RepoName = "a/b".parse().unwrap();
        let data = vec![7u8; 300_000];
        let d = Digest::of(Algorithm::Sha256, &data);
        let id = store.create(&repo).await.unwrap().id;
        let body: ByteStream = Box::pin(futures_util::stream::iter([Ok::<_, std::io::Error>(
            Bytes::from(data.clone()),
        )]));
        store.append(&repo, &id, Some(0), body).await.unwrap();
        let upload = store.layout.upload_data(&repo, &id);
        let inode = fs::metadata(&upload).unwrap().ino();
        assert_eq!(
            store.commit(&repo, &id, &d).await.unwrap(),
            data.len() as u64
        );
        let blob = store.layout.blob_data(&d);
        assert_eq!(fs::read(&blob).unwrap(), data);
        assert_eq!(
            fs::metadata(&blob).unwrap().ino(),
            inode,
            "the blob is not the upload's file renamed"
        );
        assert!(!upload.exists(), "the upload's file is still there");
    }

    #[tokio::test]
    async fn unknown_sessions_leave_no_state() {
        let dir = tempfile::tempdir().unwrap();
        let store = FsStore::new(dir.path()).unwrap();
        let repo: RepoName = "a/b".parse().unwrap();
        let d = Digest::of(Algorithm::Sha256, b"x");
        for _ in 0..3 {
            let id = UploadId::new_random();
            let body: ByteStream = Box::pin(futures_util::stream::empty());
            assert!(matches!(
                store.append(&repo, &id, None, body).await,
                Err(StorageError::UploadNotFound(_))
            ));
            assert!(store.commit(&repo, &id, &d).await.is_err());
            assert!(store.status(&repo, &id).await.is_err());
            assert!(store.abort(&repo, &id).await.is_err());
        }
        assert_eq!(store.sessions.lock().unwrap().len(), 0);
    }

    #[tokio::test]
    async fn the_catalog_is_walked_once_per_ttl_and_sees_own_writes_at_once() {
        let dir = tempfile::tempdir().unwrap();
        let store = FsStore::new(dir.path()).unwrap();
        let d = Digest::of(Algorithm::Sha256, b"m");
        let a: RepoName = "a/one".parse().unwrap();
        store.link_manifest(&a, &d).await.unwrap();
        assert_eq!(store.repositories().await.unwrap(), vec![a.clone()]);
        // Made by another process: served from the snapshot until it expires.
        let b: RepoName = "b/two".parse().unwrap();
        fs::create_dir_all(store.layout.repo(&b).join("_manifests")).unwrap();
        assert_eq!(store.repositories().await.unwrap(), vec![a.clone()]);
        // Made through this store: at once.
        let c: RepoName = "c/three".parse().unwrap();
        store.set_tag(&c, &"v1".parse().unwrap(), &d).await.unwrap();
        assert_eq!(
            store.repositories().await.unwrap(),
            vec![a.clone(), b.clone(), c.clone()]
        );
        // A write to a listed repository keeps the snapshot.
        store.link_manifest(&a, &d).await.unwrap();
        assert!(store.catalog.fresh().is_some());
        *store.catalog.snapshot.lock().unwrap() = None;
        assert_eq!(store.repositories().await.unwrap().len(), 3);
    }

    #[tokio::test]
    async fn fs_store_passes_the_suite() {
        let dir = tempfile::tempdir().unwrap();
        let store = Arc::new(FsStore::new(dir.path()).unwrap());
        crate::testsuite::run_all(store).await;
    }
}
