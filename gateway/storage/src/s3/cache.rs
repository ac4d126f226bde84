//! The local read cache in front of the S3 backend: blobs on local disk, bounded by bytes
//! and evicted least recently used, and small blobs (manifests, configs) also in memory.
//!
//! Blobs are content-addressed and never change, so a copy is valid for as long as the blob
//! exists; deleting a blob through the store drops the copy. (A blob deleted by another
//! node stays cached here: repository links, which decide what may be read, are always
//! read from S3.)
//!
//! Layout under the cache directory:
//! ```text
//! <alg>/<first two hex>/<hex>   a verified blob, written whole and renamed into place
//! tmp/<uuid>                    a fill in progress; the directory is emptied at start
//! ```
//!
//! A miss is served from S3 while the bytes are teed into a temporary file by a blocking
//! thread that hashes them ([`ReadCache::tee`]). Only when the stream ended whole and the
//! digest and size matched is the file fsynced and renamed into place; a client that goes
//! away abandons the file, and a mismatch also ends the client's stream with an error. Of
//! concurrent misses of one blob only the first fills; the others stream from S3 without
//! a copy. A range read on a miss streams the range and starts one background fill of
//! the whole blob. Blobs larger than the whole cache are not cached.
//!
//! The recency order lives in memory; after a restart it starts from the files' times.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::fs::{self, File};
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};

use bytes::Bytes;
use futures_util::StreamExt;
use pier_oci::{Algorithm, Digest};

use super::SMALL_BLOB;
use crate::fs::{read_range, stream_file};
use crate::{BlobBody, BlobRead, ByteStream, RangeSpec, Result, StorageError};

/// Chunks in flight between a client's stream and the thread writing the copy.
const TEE_QUEUE: usize = 64;

/// A size setting: a number of bytes or a string for [`crate::parse_size`].
pub(crate) fn de_size<'de, D: serde::Deserializer<'de>>(d: D) -> Result<u64, D::Error> {
    #[derive(serde::Deserialize)]
    #[serde(untagged)]
    enum Size {
        Bytes(u64),
        Text(String),
    }
    match <Size as serde::Deserialize>::deserialize(d)? {
        Size::Bytes(n) => Ok(n),
        Size::Text(s) => crate::parse_size(&s).map_err(serde::de::Error::custom),
    }
}

/// The cache; cheap to clone (background fills hold one).
#[derive(Clone)]
pub(crate) struct ReadCache {
    inner: Arc<Inner>,
}

struct Inner {
    dir: PathBuf,
    max_bytes: u64,
    index: Mutex<Index>,
    /// Whole small blobs; `None` when the memory cache is off.
    memory: Option<moka::sync::Cache<Digest, Bytes>>,
}

/// What is on disk, in recency order.
#[derive(Default)]
struct Index {
    entries: HashMap<Digest, Entry>,
    /// Tick of last use -> blob; the first is the least recently used.
    by_use: BTreeMap<u64, Digest>,
    tick: u64,
    bytes: u64,
    /// Blobs being copied in.
    filling: HashSet<Digest>,
    /// Blobs deleted while being copied in: their copy is not published.
    cancelled: HashSet<Digest>,
}

struct Entry {
    size: u64,
    tick: u64,
}

impl Index {
    fn insert(&mut self, digest: Digest, size: u64) {
        self.remove(&digest);
        self.tick += 1;
        self.by_use.insert(self.tick, digest.clone());
        self.entries.insert(
            digest,
            Entry {
                size,
                tick: self.tick,
            },
        );
        self.bytes += size;
    }

    /// Marks the blob used; its size if present.
    fn touch(&mut self, digest: &Digest) -> Option<u64> {
        self.tick += 1;
        let tick = self.tick;
        let e = self.entries.get_mut(digest)?;
        self.by_use.remove(&e.tick);
        e.tick = tick;
        self.by_use.insert(tick, digest.clone());
        Some(e.size)
    }

    fn remove(&mut self, digest: &Digest) -> bool {
        let Some(e) = self.entries.remove(digest) else {
            return false;
        };
        self.by_use.remove(&e.tick);
        self.bytes -= e.size;
        true
    }

    /// Least recently used blobs to drop so that `bytes <= max`.
    fn evict(&mut self, max: u64) -> Vec<Digest> {
        let mut out = Vec::new();
        while self.bytes > max {
            let Some((_, d)) = self.by_use.pop_first() else {
                break;
            };
            let e = self.entries.remove(&d).expect("indexed");
            self.bytes -= e.size;
            out.push(d);
        }
        out
    }
}

/// The right to copy one blob in; others missing the same blob meanwhile do not copy it.
pub(crate) struct Fill {
    inner: Arc<Inner>,
    digest: Digest,
    size: u64,
}

impl Drop for Fill {
    fn drop(&mut self) {
        let mut index = self.inner.lock();
        index.filling.remove(&self.digest);
        index.cancelled.remove(&self.digest);
    }
}

enum Msg {
    Chunk(Bytes),
    End,
}

fn is_missing(e: &io::Error) -> bool {
    e.kind() == io::ErrorKind::NotFound
}

fn task_err(e: tokio::task::JoinError) -> StorageError {
    StorageError::Task(io::Error::other(e))
}

/// The error for content whose digest is not its key's.
pub(crate) fn corrupt(digest: &Digest, computed: &Digest, size: u64) -> io::Error {
    io::Error::new(
        io::ErrorKind::InvalidData,
        format!("stored blob {digest} has the wrong content ({computed}, {size} bytes)"),
    )
}

impl ReadCache {
    /// Opens (creating) the cache in `dir`: indexes the blobs already there, removes
    /// abandoned fills and trims to `max_bytes`. `memory_bytes` 0 means no memory cache.
    pub(crate) fn open(dir: &Path, max_bytes: u64, memory_bytes: u64) -> Result<ReadCache> {
        let tmp = dir.join("tmp");
        if let Err(e) = fs::remove_dir_all(&tmp)
            && !is_missing(&e)
        {
            return Err(StorageError::io("remove", &tmp)(e));
        }
        fs::create_dir_all(&tmp).map_err(StorageError::io("create directory", &tmp))?;
        let mut found = scan(dir)?;
        found.sort_by_key(|f| f.2);
        let mut index = Index::default();
        for (digest, size, _) in found {
            index.insert(digest, size);
        }
        let inner = Inner {
            dir: dir.to_owned(),
            max_bytes,
            index: Mutex::new(index),
            memory: (memory_bytes > 0).then(|| {
                moka::sync::Cache::builder()
                    .max_capacity(memory_bytes)
                    .weigher(|_: &Digest, v: &Bytes| u32::try_from(v.len()).unwrap_or(u32::MAX))
                    .build()
            }),
        };
        let victims = inner.lock().evict(max_bytes);
        for d in victims {
            let _ = fs::remove_file(inner.path(&d));
        }
        Ok(ReadCache {
            inner: Arc::new(inner),
        })
    }

    /// Size of the blob, if cached on disk.
    pub(crate) fn stat(&self, digest: &Digest) -> Option<u64> {
        self.inner.lock().touch(digest)
    }

    /// Whether the blob is cached on disk (without marking it used).
    pub(crate) fn contains(&self, digest: &Digest) -> bool {
        self.inner.lock().entries.contains_key(digest)
    }

    /// Drops the blob from memory and disk.
    pub(crate) async fn remove(&self, digest: &Digest) -> Result<()> {
        if let Some(m) = &self.inner.memory {
            m.invalidate(digest);
        }
        let inner = self.inner.clone();
        let digest = digest.clone();
        tokio::task::spawn_blocking(move || {
            let mut index = inner.lock();
            index.remove(&digest);
            if index.filling.contains(&digest) {
                index.cancelled.insert(digest.clone());
            }
            let path = inner.path(&digest);
            match fs::remove_file(&path) {
                Err(e) if !is_missing(&e) => Err(StorageError::io("remove", path)(e)),
                _ => Ok(()),
            }
        })
        .await
        .map_err(task_err)?
    }

    /// The blob (or range) from memory or disk; `None` on a miss.
    pub(crate) async fn read(
        &self,
        digest: &Digest,
        range: Option<RangeSpec>,
    ) -> Result<Option<BlobRead>> {
        if let Some(data) = self.inner.memory.as_ref().and_then(|m| m.get(digest)) {
            self.inner.lock().touch(digest);
            return content(data, range).map(Some);
        }
        let Some(indexed) = self.inner.lock().touch(digest) else {
            return Ok(None);
        };
        let path = self.inner.path(digest);
        let opened = tokio::task::spawn_blocking(move || -> Result<_> {
            let file = match File::open(&path) {
                Ok(f) => f,
                Err(e) if is_missing(&e) => return Ok(None),
                Err(e) => return Err(StorageError::io("open", path)(e)),
            };
            let size = file
                .metadata()
                .map_err(StorageError::io("stat", &path))?
                .len();
            if size != indexed {
                return Ok(None);
            }
            if size <= SMALL_BLOB {
                let data = read_range(&file, 0, size).map_err(StorageError::io("read", &path))?;
                return Ok(Some((Err(data), size)));
            }
            Ok(Some((Ok(file), size)))
        })
        .await
        .map_err(task_err)??;
        let Some((file, size)) = opened else {
            // Removed behind our back (or replaced): forget it, read from S3.
            self.inner.lock().remove(digest);
            return Ok(None);
        };
        match file {
            Err(data) => {
                if let Some(m) = &self.inner.memory {
                    m.insert(digest.clone(), data.clone());
                }
                content(data, range).map(Some)
            }
            Ok(file) => {
                let (start, end) = match range {
                    None => (0, size - 1),
                    Some(r) => r
                        .resolve(size)
                        .ok_or(StorageError::RangeNotSatisfiable { size })?,
                };
                let body = if end - start < SMALL_BLOB {
                    let data = tokio::task::spawn_blocking(move || {
                        read_range(&file, start, end - start + 1)
                    })
                    .await
                    .map_err(task_err)?
                    .map_err(StorageError::io("read", self.inner.path(digest)))?;
                    BlobBody::Bytes(data)
                } else {
                    BlobBody::Stream(stream_file(file, start, end - start + 1))
                };
                Ok(Some(BlobRead::Content {
                    size,
                    range: range.map(|_| (start, end)),
                    body,
                }))
            }
        }
    }

    /// Starts copying in a blob of `size` bytes, unless it is cached, being copied, or
    /// larger than the cache.
    pub(crate) fn begin_fill(&self, digest: &Digest, size: u64) -> Option<Fill> {
        if size > self.inner.max_bytes {
            return None;
        }
        let mut index = self.inner.lock();
        if index.entries.contains_key(digest) || !index.filling.insert(digest.clone()) {
            return None;
        }
        Some(Fill {
            inner: self.inner.clone(),
            digest: digest.clone(),
            size,
        })
    }

    /// Keeps a small whole blob the caller verified: in memory now, on disk soon.
    pub(crate) fn keep_small(&self, digest: &Digest, data: Bytes) {
        if let Some(m) = &self.inner.memory {
            m.insert(digest.clone(), data.clone());
        }
        let Some(fill) = self.begin_fill(digest, data.len() as u64) else {
            return;
        };
        tokio::task::spawn_blocking(move || {
            let tmp = fill.inner.tmp_path();
            let res = (|| {
                let mut f = File::create(&tmp)?;
                f.write_all(&data)?;
                f.sync_all()
            })();
            match res {
                Ok(()) => fill.publish(&tmp),
                Err(e) => {
                    tracing::warn!(digest = %fill.digest, error = %e, "s3 cache: write failed");
                    let _ = fs::remove_file(&tmp);
                }
            }
        });
    }

    /// Streams `body` (the whole blob, `fill.size` bytes) to the caller while copying it
    /// in. The copy is published only if the stream ends whole with the right digest; a
    /// wrong digest also ends the caller's stream with an error.
    pub(crate) fn tee(fill: Fill, body: ByteStream) -> ByteStream {
        let (tx, rx) = tokio::sync::mpsc::channel(TEE_QUEUE);
        let (verdict_tx, verdict_rx) = tokio::sync::oneshot::channel();
        let remaining = fill.size;
        tokio::task::spawn_blocking(move || fill.write(rx, verdict_tx));
        struct State {
            body: ByteStream,
            /// Bytes still expected; the chunk that reaches the size is the last.
            remaining: u64,
            tx: Option<tokio::sync::mpsc::Sender<Msg>>,
            verdict: tokio::sync::oneshot::Receiver<io::Result<()>>,
        }
        impl State {
            /// Ends the copy; the verdict on the content when there is one.
            async fn end(&mut self) -> io::Result<()> {
                let Some(tx) = self.tx.take() else {
                    return Ok(());
                };
                if tx.send(Msg::End).await.is_err() {
                    return Ok(());
                }
                (&mut self.verdict).await.unwrap_or(Ok(()))
            }
        }
        let state = State {
            body,
            remaining,
            tx: Some(tx),
            verdict: verdict_rx,
        };
        // The last chunk is held back until the digest was checked: an HTTP server stops
        // polling a body once it has sent Content-Length bytes, so the end of the stream
        // may never be asked for, and a client must not get a wrong blob whole.
        Box::pin(futures_util::stream::unfold(
            Some(state),
            |state| async move {
                let mut st = state?;
                match st.body.next().await {
                    Some(Ok(chunk)) => {
                        let n = chunk.len() as u64;
                        if let Some(tx) = &st.tx
                            && tx.send(Msg::Chunk(chunk.clone())).await.is_err()
                        {
                            // The copy failed (disk full...): serve on without it.
                            st.tx = None;
                        }
                        if n >= st.remaining
                            && let Err(e) = st.end().await
                        {
                            return Some((Err(e), None));
                        }
                        st.remaining = st.remaining.saturating_sub(n);
                        Some((Ok(chunk), Some(st)))
                    }
                    // Dropping the sender without `End` abandons the copy.
                    Some(Err(e)) => Some((Err(e), None)),
                    None => match st.end().await {
                        Ok(()) => None,
                        Err(e) => Some((Err(e), None)),
                    },
                }
            },
        ))
    }
}

impl Fill {
    /// The copying thread: hashes and writes what the stream hands over; at `End`
    /// verifies, answers the stream, then fsyncs and publishes. Without `End`, abandons.
    fn write(
        self,
        mut rx: tokio::sync::mpsc::Receiver<Msg>,
        verdict: tokio::sync::oneshot::Sender<io::Result<()>>,
    ) {
        let tmp = self.inner.tmp_path();
        let mut file = match File::create(&tmp) {
            Ok(f) => f,
            Err(e) => {
                tracing::warn!(path = %tmp.display(), error = %e, "s3 cache: create failed");
                return;
            }
        };
        let mut hasher = self.digest.algorithm().hasher();
        let mut written = 0u64;
        let complete = loop {
            match rx.blocking_recv() {
                Some(Msg::Chunk(c)) => {
                    hasher.update(&c);
                    written += c.len() as u64;
                    if let Err(e) = file.write_all(&c) {
                        tracing::warn!(digest = %self.digest, error = %e, "s3 cache: write failed");
                        break false;
                    }
                }
                Some(Msg::End) => break true,
                None => break false,
            }
        };
        drop(rx);
        if !complete {
            let _ = fs::remove_file(&tmp);
            return;
        }
        let computed = hasher.finish();
        if computed != self.digest || written != self.size {
            let _ = fs::remove_file(&tmp);
            tracing::error!(digest = %self.digest, %computed, written, "S3 object has the wrong content: not cached");
            let _ = verdict.send(Err(corrupt(&self.digest, &computed, written)));
            return;
        }
        let _ = verdict.send(Ok(()));
        match file.sync_all() {
            Ok(()) => self.publish(&tmp),
            Err(e) => {
                tracing::warn!(digest = %self.digest, error = %e, "s3 cache: fsync failed");
                let _ = fs::remove_file(&tmp);
            }
        }
    }

    /// Renames the verified copy into place and makes room (blocking).
    fn publish(&self, tmp: &Path) {
        let inner = &self.inner;
        let path = inner.path(&self.digest);
        let mut index = inner.lock();
        if index.cancelled.remove(&self.digest) {
            let _ = fs::remove_file(tmp);
            return;
        }
        let res = path
            .parent()
            .map_or(Ok(()), fs::create_dir_all)
            .and_then(|()| fs::rename(tmp, &path));
        if let Err(e) = res {
            tracing::warn!(path = %path.display(), error = %e, "s3 cache: publish failed");
            let _ = fs::remove_file(tmp);
            return;
        }
        index.insert(self.digest.clone(), self.size);
        // Removed while the lock is held, so that a concurrent fill of a victim cannot
        // publish in between and lose its file.
        for d in index.evict(inner.max_bytes) {
            let _ = fs::remove_file(inner.path(&d));
        }
    }
}

impl Inner {
    fn lock(&self) -> MutexGuard<'_, Index> {
        self.index.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn path(&self, digest: &Digest) -> PathBuf {
        let hex = digest.hex();
        self.dir
            .join(digest.algorithm().as_str())
            .join(&hex[..2])
            .join(hex)
    }

    fn tmp_path(&self) -> PathBuf {
        self.dir
            .join("tmp")
            .join(uuid::Uuid::new_v4().simple().to_string())
    }
}

/// Cached blobs found in `dir`: digest, size, modification time.
fn scan(dir: &Path) -> Result<Vec<(Digest, u64, std::time::SystemTime)>> {
    let mut out = Vec::new();
    let list = |d: &Path| -> Result<Vec<(String, PathBuf)>> {
        let entries = match fs::read_dir(d) {
            Ok(e) => e,
            Err(e) if is_missing(&e) => return Ok(Vec::new()),
            Err(e) => return Err(StorageError::io("list", d)(e)),
        };
        Ok(entries
            .filter_map(|e| {
                let e = e.ok()?;
                Some((e.file_name().into_string().ok()?, e.path()))
            })
            .collect())
    };
    for (alg, alg_dir) in list(dir)? {
        let Some(alg) = Algorithm::parse(&alg) else {
            continue;
        };
        for (_, two_dir) in list(&alg_dir)? {
            for (hex, path) in list(&two_dir)? {
                let Ok(digest) = Digest::from_parts(alg, &hex) else {
                    continue;
                };
                if let Ok(m) = fs::metadata(&path)
                    && m.is_file()
                {
                    let t = m.modified().unwrap_or(std::time::SystemTime::UNIX_EPOCH);
                    out.push((digest, m.len(), t));
                }
            }
        }
    }
    Ok(out)
}

/// A read answered from whole bytes in memory.
fn content(data: Bytes, range: Option<RangeSpec>) -> Result<BlobRead> {
    let size = data.len() as u64;
    let Some(r) = range else {
        return Ok(BlobRead::Content {
            size,
            range: None,
            body: BlobBody::Bytes(data),
        });
    };
    let (start, end) = r
        .resolve(size)
        .ok_or(StorageError::RangeNotSatisfiable { size })?;
    Ok(BlobRead::Content {
        size,
        range: Some((start, end)),
        body: BlobBody::Bytes(data.slice(start as usize..=end as usize)),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::parse_size;

    #[test]
    fn sizes_parse() {
        assert_eq!(parse_size("10GiB"), Ok(10 << 30));
        assert_eq!(parse_size("64M"), Ok(64 << 20));
        assert_eq!(parse_size("500MB"), Ok(500_000_000));
        assert!(parse_size("lots").is_err());
    }

    #[test]
    fn index_evicts_least_recently_used() {
        let d = |s: &[u8]| Digest::of(Algorithm::Sha256, s);
        let mut i = Index::default();
        i.insert(d(b"a"), 10);
        i.insert(d(b"b"), 10);
        i.insert(d(b"c"), 10);
        assert_eq!(i.touch(&d(b"a")), Some(10));
        assert_eq!(i.evict(20), vec![d(b"b")]);
        assert_eq!(i.bytes, 20);
        assert!(i.remove(&d(b"c")));
        assert!(!i.remove(&d(b"c")));
        assert_eq!(i.evict(0), vec![d(b"a")]);
        assert!(i.entries.is_empty() && i.by_use.is_empty());
    }

    #[tokio::test]
    async fn a_delete_cancels_a_fill_in_progress() {
        let dir = tempfile::tempdir().unwrap();
        let c = ReadCache::open(dir.path(), 100, 0).unwrap();
        let d = Digest::of(Algorithm::Sha256, b"x");
        let f = c.begin_fill(&d, 1).unwrap();
        c.remove(&d).await.unwrap();
        let tmp = c.inner.tmp_path();
        fs::write(&tmp, b"x").unwrap();
        f.publish(&tmp);
        assert!(!c.contains(&d) && !tmp.exists());
        drop(f);
        let f = c.begin_fill(&d, 1).unwrap();
        fs::write(&tmp, b"x").unwrap();
        f.publish(&tmp);
        assert!(c.contains(&d), "a later fill publishes");
    }

    #[tokio::test]
    async fn reopening_indexes_and_trims() {
        let dir = tempfile::tempdir().unwrap();
        let c = ReadCache::open(dir.path(), 100, 0).unwrap();
        let blobs: Vec<(Digest, Bytes)> = (0..3u8)
            .map(|i| {
                let data = Bytes::from(vec![i; 40]);
                (Digest::of(Algorithm::Sha256, &data), data)
            })
            .collect();
        for (d, data) in &blobs {
            let f = c.begin_fill(d, 40).unwrap();
            let tmp = c.inner.tmp_path();
            fs::write(&tmp, data).unwrap();
            f.publish(&tmp);
        }
        assert!(!c.contains(&blobs[0].0), "evicted");
        assert!(c.contains(&blobs[1].0) && c.contains(&blobs[2].0));
        fs::write(dir.path().join("tmp/leftover"), b"x").unwrap();
        drop(c);
        let c = ReadCache::open(dir.path(), 40, 0).unwrap();
        assert_eq!(c.inner.lock().bytes, 40);
        assert_eq!(fs::read_dir(dir.path().join("tmp")).unwrap().count(), 0);
    }
}
