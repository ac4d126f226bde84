//! Upload sessions as S3 multipart uploads.
//!
//! A session's bytes go to a multipart upload of `_uploads/<id>/data` (the key
//! distribution uses), in parts of at least `part_size` (S3 wants at least 5 MiB for every
//! part but the last). Bytes that do not yet make a part wait in memory, so a session
//! holds at most about `part_size` bytes; the multipart upload is only started once the
//! first part is full, so small blobs never use one. Once it is started, what a chunk
//! leaves over is sent as a part of its own when it is at least 5 MiB, so the state a
//! node hands to the next stays small.
//!
//! State. The session lives in memory in this process (one lock per session), and is also
//! written to `_uploads/<id>/pierstate` at the end of every append: a JSON line (S3 upload
//! id, parts with their ETags and sizes, whether the upload was completed) followed by the
//! bytes not yet sent as a part, and the running hash of the parts
//! ([`ResumableHasher`] state). It is one object, written in one PUT, so it is never
//! half-updated. A process that does not know a session (after a restart, or another node)
//! loads it from there; `startedat` alone means an empty session. When the hash state is
//! missing or unusable (a commit with another algorithm, a failed part), commit verifies
//! by reading the completed object back. Two processes appending to the same session at
//! once are serialized by a [`super::SessionLocks`] when one is configured (Redis leases
//! when scaled out): the second waits, reloads the state and sees where the first left it.
//!
//! Commit. Small sessions (no part sent): hash the buffered bytes, PutObject to the blob's
//! key. Larger ones: when the hash is known and wrong, abort (nothing was ever written
//! where a blob is read); when right and the blob is already stored, abort and link. Else
//! send the rest as the last part, CompleteMultipartUpload to `_uploads/<id>/data`, verify
//! (read back when the hash was lost), CopyObject to the blob's key (UploadPartCopy in
//! parts above 5 GiB), remove the session's keys. The blob's key only ever receives a
//! verified, complete object, in one request.

use std::io;
use std::path::PathBuf;
use std::time::{Duration, SystemTime};

use async_trait::async_trait;
use bytes::{Bytes, BytesMut};
use futures_util::StreamExt;
use pier_oci::{Algorithm, Digest, RepoName, ResumableHasher};

use super::S3Store;
use super::bucket::{Part, dir_prefix, hash_object, key};
use crate::{ByteStream, Result, StorageError, UploadId, UploadStatus, UploadStore};

/// S3 allows at most this many parts in one upload.
const MAX_PARTS: usize = 10_000;

/// What the bucket keeps of a session besides the buffered bytes.
#[derive(Debug, Default, serde::Serialize, serde::Deserialize)]
struct SavedState {
    upload_id: Option<String>,
    parts: Vec<Part>,
    /// Whether the multipart upload was completed into `_uploads/<id>/data`.
    #[serde(default)]
    completed: bool,
    /// The running hash of the parts ([`ResumableHasher::to_bytes`]).
    #[serde(default)]
    hash: Option<Vec<u8>>,
    /// How many buffered bytes follow the JSON line.
    tail: u64,
}

/// An upload session as this process knows it.
pub(crate) struct Session {
    /// The S3 multipart upload of `_uploads/<id>/data`, once the first part was sent.
    upload_id: Option<String>,
    parts: Vec<Part>,
    completed: bool,
    /// Bytes received after the parts.
    tail: BytesMut,
    /// Hash of the bytes sent as parts; `None` when lost (read back at commit).
    hasher: Option<ResumableHasher>,
    /// Whether the bucket's copy of the state is behind.
    dirty: bool,
    /// ETag of the state object this copy matches (`None`: no state object); when the
    /// bucket's differs, another node appended and this copy is reloaded.
    etag: Option<String>,
}

impl Session {
    fn fresh() -> Session {
        Session {
            upload_id: None,
            parts: Vec::new(),
            completed: false,
            tail: BytesMut::new(),
            hasher: Some(ResumableHasher::new(Algorithm::Sha256)),
            dirty: false,
            etag: None,
        }
    }

    fn offset(&self) -> u64 {
        self.parts.iter().map(|p| p.size).sum::<u64>() + self.tail.len() as u64
    }

    fn encode(&self) -> Bytes {
        let saved = SavedState {
            upload_id: self.upload_id.clone(),
            parts: self.parts.clone(),
            completed: self.completed,
            hash: self.hasher.as_ref().map(ResumableHasher::to_bytes),
            tail: self.tail.len() as u64,
        };
        let mut out = serde_json::to_vec(&saved).expect("session state serializes");
        out.push(b'\n');
        out.extend_from_slice(&self.tail);
        Bytes::from(out)
    }

    fn decode(data: &Bytes) -> Option<Session> {
        let nl = data.iter().position(|&b| b == b'\n')?;
        let saved: SavedState = serde_json::from_slice(&data[..nl]).ok()?;
        let tail = data.slice(nl + 1..);
        if tail.len() as u64 != saved.tail {
            return None;
        }
        let sent: u64 = saved.parts.iter().map(|p| p.size).sum();
        let hasher = match &saved.hash {
            Some(b) => ResumableHasher::from_bytes(b)
                .ok()
                .filter(|h| h.len() == sent),
            None => saved
                .parts
                .is_empty()
                .then(|| ResumableHasher::new(Algorithm::Sha256)),
        };
        Some(Session {
            upload_id: saved.upload_id,
            parts: saved.parts,
            completed: saved.completed,
            tail: BytesMut::from(&tail[..]),
            hasher,
            dirty: false,
            etag: None,
        })
    }
}

/// The keys of one session.
struct Keys {
    data: String,
    started_at: String,
    state: String,
}

/// Runs CPU work (hashing) off the runtime.
async fn blocking<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> Result<T> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| StorageError::Task(io::Error::other(e)))
}

impl S3Store {
    fn keys(&self, repo: &RepoName, id: &UploadId) -> Keys {
        let layout = &self.bucket.layout;
        Keys {
            data: key(&layout.upload_data(repo, id)),
            started_at: key(&layout.upload_started_at(repo, id)),
            state: key(&layout.upload_dir(repo, id).join("pierstate")),
        }
    }

    fn session(
        &self,
        repo: &RepoName,
        id: &UploadId,
    ) -> std::sync::Arc<tokio::sync::Mutex<Option<Session>>> {
        let mut map = self.sessions.lock().expect("session map poisoned");
        map.entry((repo.clone(), id.clone())).or_default().clone()
    }

    fn forget_session(&self, repo: &RepoName, id: &UploadId) {
        let mut map = self.sessions.lock().expect("session map poisoned");
        map.remove(&(repo.clone(), id.clone()));
    }

    /// The session's state from the bucket; `None` if the session does not exist.
    async fn load(&self, repo: &RepoName, id: &UploadId) -> Result<Option<Session>> {
        let keys = self.keys(repo, id);
        // The ETag first: a write between the two reads only makes the next check reload.
        let etag = self.bucket.etag(&keys.state).await?;
        match self.bucket.get_small(&keys.state).await? {
            Some(data) => Session::decode(&data)
                .map(|mut s| {
                    s.etag = etag;
                    Some(s)
                })
                .ok_or_else(|| StorageError::Io {
                    op: "read upload state",
                    path: PathBuf::from(format!("s3://{}/{}", self.bucket.name, keys.state)),
                    source: io::Error::new(io::ErrorKind::InvalidData, "malformed"),
                }),
            None if self.bucket.exists(&keys.started_at).await? => Ok(Some(Session::fresh())),
            None => Ok(None),
        }
    }

    /// The session behind a locked slot, loaded from the bucket when this process does not
    /// know it yet.
    async fn loaded<'a>(
        &self,
        slot: &'a mut Option<Session>,
        repo: &RepoName,
        id: &UploadId,
    ) -> Result<&'a mut Session> {
        // A copy in memory is used only while the bucket's state is the one it matches:
        // consecutive requests of one upload may reach different nodes.
        let stale = match slot.as_ref() {
            None => true,
            Some(st) => self.bucket.etag(&self.keys(repo, id).state).await? != st.etag,
        };
        if stale {
            *slot = self.load(repo, id).await?;
        }
        slot.as_mut()
            .ok_or_else(|| StorageError::UploadNotFound(id.to_string()))
    }

    async fn save(&self, repo: &RepoName, id: &UploadId, st: &mut Session) -> Result<()> {
        let state_key = self.keys(repo, id).state;
        self.bucket.put(&state_key, st.encode()).await?;
        st.etag = self.bucket.etag(&state_key).await?;
        st.dirty = false;
        Ok(())
    }

    /// Sends the buffered bytes as the next part, hashing them meanwhile. On failure the
    /// bytes stay buffered and the hash as it was.
    async fn flush_part(&self, repo: &RepoName, id: &UploadId, st: &mut Session) -> Result<()> {
        if st.parts.len() >= MAX_PARTS {
            return Err(StorageError::Io {
                op: "upload part",
                path: PathBuf::from(self.keys(repo, id).data),
                source: io::Error::other(format!(
                    "the upload exceeds S3's {MAX_PARTS} parts of {} bytes",
                    self.part_size
                )),
            });
        }
        let data_key = self.keys(repo, id).data;
        let upload_id = match &st.upload_id {
            Some(u) => u.clone(),
            None => {
                let u = self.bucket.create_multipart(&data_key).await?;
                st.upload_id = Some(u.clone());
                st.dirty = true;
                u
            }
        };
        let data = st.tail.split().freeze();
        let number = st.parts.len() as i32 + 1;
        let before = st.hasher.clone();
        let hashing = st.hasher.take().map(|mut h| {
            let data = data.clone();
            tokio::task::spawn_blocking(move || {
                h.update(&data);
                h
            })
        });
        let sent = self
            .bucket
            .upload_part(&data_key, &upload_id, number, data.clone())
            .await;
        let hashed = match hashing {
            Some(t) => t.await.ok(),
            None => None,
        };
        match sent {
            Ok(part) => {
                st.parts.push(part);
                st.hasher = hashed;
                st.dirty = true;
                Ok(())
            }
            Err(e) => {
                let mut tail = BytesMut::with_capacity(data.len() + st.tail.len());
                tail.extend_from_slice(&data);
                tail.extend_from_slice(&st.tail);
                st.tail = tail;
                st.hasher = before;
                Err(e)
            }
        }
    }

    /// The cross-node lock of a session (see [`super::locks`]).
    async fn cross_node_lock(
        &self,
        repo: &RepoName,
        id: &UploadId,
    ) -> Result<Option<super::locks::Held>> {
        super::locks::acquire(
            self.locks.as_ref(),
            format!("upload:{repo}:{id}"),
            self.lock_wait,
        )
        .await
        .map_err(|super::locks::LockError::Busy| StorageError::Io {
            op: "lock upload session",
            path: PathBuf::from(self.keys(repo, id).state),
            source: io::Error::new(
                io::ErrorKind::WouldBlock,
                "another node kept writing this upload session; retry",
            ),
        })
    }

    /// Aborts the session's multipart upload and removes its keys.
    async fn discard(&self, repo: &RepoName, id: &UploadId, st: &mut Session) -> Result<()> {
        let keys = self.keys(repo, id);
        if let Some(u) = st.upload_id.take()
            && !st.completed
        {
            self.bucket.abort_multipart(&keys.data, &u).await?;
        }
        self.delete_keys(vec![keys.state, keys.data, keys.started_at])
            .await
    }

    /// Copies a verified object into place: CopyObject up to 5 GiB, UploadPartCopy above.
    async fn copy_into_place(&self, src: &str, dst: &str, size: u64) -> Result<()> {
        if size <= self.single_copy_max {
            return self.bucket.copy(src, dst).await;
        }
        let upload_id = self.bucket.create_multipart(dst).await?;
        let part = self.copy_part.max(size.div_ceil(MAX_PARTS as u64));
        let mut parts = Vec::new();
        let mut start = 0;
        let copied: Result<()> = async {
            while start < size {
                let end = (start + part).min(size) - 1;
                let number = parts.len() as i32 + 1;
                parts.push(
                    self.bucket
                        .upload_part_copy(src, dst, &upload_id, number, (start, end))
                        .await?,
                );
                start = end + 1;
            }
            self.bucket
                .complete_multipart(dst, &upload_id, &parts)
                .await
        }
        .await;
        if copied.is_err() {
            let _ = self.bucket.abort_multipart(dst, &upload_id).await;
        }
        copied
    }

    async fn append_inner(
        &self,
        repo: &RepoName,
        id: &UploadId,
        start: Option<u64>,
        mut body: ByteStream,
    ) -> Result<UploadStatus> {
        let slot = self.session(repo, id);
        let mut guard = slot.lock().await;
        let _held = self.cross_node_lock(repo, id).await?;
        let st = self.loaded(&mut guard, repo, id).await?;
        let offset = st.offset();
        if let Some(s) = start
            && s != offset
        {
            return Err(StorageError::OffsetMismatch {
                expected: offset,
                got: s,
            });
        }
        let mut failed = None;
        while let Some(item) = body.next().await {
            match item {
                Ok(chunk) => {
                    if chunk.is_empty() {
                        continue;
                    }
                    st.tail.extend_from_slice(&chunk);
                    st.dirty = true;
                    if st.tail.len() >= self.part_size
                        && let Err(e) = self.flush_part(repo, id, st).await
                    {
                        failed = Some(e);
                        break;
                    }
                }
                Err(e) => {
                    failed = Some(StorageError::Body(e));
                    break;
                }
            }
        }
        // Once the upload is multipart, a remainder big enough for a part is sent now
        // rather than kept in the state object: the next chunk, which may land on another
        // node, then loads a few hundred bytes of state instead of megabytes.
        // Not an error when it fails: the bytes stay buffered in the state, as before.
        if failed.is_none()
            && st.upload_id.is_some()
            && st.tail.len() >= super::MIN_PART_SIZE
            && let Err(e) = self.flush_part(repo, id, st).await
        {
            tracing::warn!(upload = %id, error = %e, "sending the chunk's remainder as a part failed; kept in the session state");
        }
        // What arrived is kept, also when the body failed: the client may resume.
        let saved = if st.dirty {
            self.save(repo, id, st).await
        } else {
            Ok(())
        };
        if let Some(e) = failed {
            return Err(e);
        }
        saved?;
        Ok(UploadStatus {
            id: id.clone(),
            offset: st.offset(),
        })
    }

    async fn commit_inner(&self, repo: &RepoName, id: &UploadId, digest: &Digest) -> Result<u64> {
        let slot = self.session(repo, id);
        let mut guard = slot.lock().await;
        let _held = self.cross_node_lock(repo, id).await?;
        let st = self.loaded(&mut guard, repo, id).await?;
        let size = st.offset();
        let keys = self.keys(repo, id);
        let blob_key = key(&self.bucket.layout.blob_data(digest));

        let mismatch = |computed: Digest| StorageError::DigestMismatch {
            expected: digest.clone(),
            computed,
        };

        if st.parts.is_empty() && !st.completed {
            // Small: everything is in memory.
            let data = Bytes::copy_from_slice(&st.tail);
            let (alg, d) = (digest.algorithm(), data.clone());
            let computed = blocking(move || Digest::of(alg, &d)).await?;
            if &computed != digest {
                self.discard(repo, id, st).await?;
                return Err(mismatch(computed));
            }
            if !self.bucket.exists(&blob_key).await? {
                self.bucket.put(&blob_key, data).await?;
            }
        } else {
            // The hash, when the running one survived and is of the right algorithm.
            let known = match &st.hasher {
                Some(h) if h.algorithm() == digest.algorithm() && !st.completed => {
                    let (mut h, tail) = (h.clone(), Bytes::copy_from_slice(&st.tail));
                    Some(
                        blocking(move || {
                            h.update(&tail);
                            h.finish()
                        })
                        .await?,
                    )
                }
                _ => None,
            };
            let mut in_place = false;
            if let Some(computed) = &known {
                if computed != digest {
                    self.discard(repo, id, st).await?;
                    return Err(mismatch(computed.clone()));
                }
                in_place = self.bucket.exists(&blob_key).await?;
            }
            if !in_place {
                if !st.completed {
                    if !st.tail.is_empty() {
                        self.flush_part(repo, id, st).await?;
                    }
                    let upload_id = st.upload_id.clone().ok_or_else(|| StorageError::Io {
                        op: "read upload state",
                        path: PathBuf::from(&keys.state),
                        source: io::Error::new(
                            io::ErrorKind::InvalidData,
                            "parts without upload id",
                        ),
                    })?;
                    self.bucket
                        .complete_multipart(&keys.data, &upload_id, &st.parts)
                        .await?;
                    st.completed = true;
                    // A crash from here on leaves a session that commits from the
                    // completed object.
                    self.save(repo, id, st).await?;
                }
                if known.is_none() {
                    let (computed, _) =
                        hash_object(&self.bucket, &keys.data, digest.algorithm()).await?;
                    if &computed != digest {
                        self.discard(repo, id, st).await?;
                        return Err(mismatch(computed));
                    }
                }
                if !self.bucket.exists(&blob_key).await? {
                    self.copy_into_place(&keys.data, &blob_key, size).await?;
                }
            }
        }
        self.discard(repo, id, st).await?;
        self.write_link(&self.bucket.layout.layer_link(repo, digest), digest)
            .await?;
        Ok(size)
    }

    /// Forgets the in-memory state of a session the bucket does not know, or that ended.
    fn forget_unless_ok<T>(&self, repo: &RepoName, id: &UploadId, res: &Result<T>, ended: bool) {
        let unknown = matches!(res, Err(StorageError::UploadNotFound(_)));
        let mismatch = matches!(res, Err(StorageError::DigestMismatch { .. }));
        if unknown || mismatch || (ended && res.is_ok()) {
            self.forget_session(repo, id);
        }
    }

    /// Every session in the bucket with the time it was last written.
    async fn stored_sessions(&self) -> Result<Vec<(RepoName, UploadId, SystemTime)>> {
        let mut out = Vec::new();
        for (name, meta) in self.walk_repos().await? {
            if !meta.iter().any(|m| m == "_uploads") {
                continue;
            }
            let Ok(repo) = name.parse::<RepoName>() else {
                continue;
            };
            let prefix = dir_prefix(&self.bucket.layout.uploads_dir(&repo));
            let (objects, _) = self.bucket.list(&prefix, false).await?;
            let mut by_id: std::collections::BTreeMap<String, SystemTime> = Default::default();
            for o in objects {
                let Some((id, _)) = o.key.strip_prefix(&prefix).and_then(|r| r.split_once('/'))
                else {
                    continue;
                };
                let t = by_id.entry(id.to_owned()).or_insert(o.modified);
                *t = (*t).max(o.modified);
            }
            for (id, modified) in by_id {
                if let Some(id) = UploadId::parse(&id) {
                    out.push((repo.clone(), id, modified));
                }
            }
        }
        Ok(out)
    }
}

#[async_trait]
impl UploadStore for S3Store {
    async fn create(&self, repo: &RepoName) -> Result<UploadStatus> {
        let id = UploadId::new_random();
        let now = super::rfc3339(SystemTime::now());
        self.bucket
            .put(&self.keys(repo, &id).started_at, Bytes::from(now))
            .await?;
        let slot = self.session(repo, &id);
        *slot.lock().await = Some(Session::fresh());
        Ok(UploadStatus { id, offset: 0 })
    }

    async fn status(&self, repo: &RepoName, id: &UploadId) -> Result<UploadStatus> {
        let slot = self.session(repo, id);
        let mut guard = slot.lock().await;
        let res = self
            .loaded(&mut guard, repo, id)
            .await
            .map(|st| UploadStatus {
                id: id.clone(),
                offset: st.offset(),
            });
        drop(guard);
        self.forget_unless_ok(repo, id, &res, false);
        res
    }

    async fn append(
        &self,
        repo: &RepoName,
        id: &UploadId,
        start: Option<u64>,
        body: ByteStream,
    ) -> Result<UploadStatus> {
        let res = self.append_inner(repo, id, start, body).await;
        self.forget_unless_ok(repo, id, &res, false);
        res
    }

    async fn commit(&self, repo: &RepoName, id: &UploadId, digest: &Digest) -> Result<u64> {
        let res = self.commit_inner(repo, id, digest).await;
        self.forget_unless_ok(repo, id, &res, true);
        res
    }

    async fn abort(&self, repo: &RepoName, id: &UploadId) -> Result<()> {
        let slot = self.session(repo, id);
        let mut guard = slot.lock().await;
        let _held = self.cross_node_lock(repo, id).await?;
        let res = match self.loaded(&mut guard, repo, id).await {
            Ok(st) => self.discard(repo, id, st).await,
            Err(e) => Err(e),
        };
        drop(guard);
        if res.is_ok() || matches!(res, Err(StorageError::UploadNotFound(_))) {
            self.forget_session(repo, id);
        }
        res
    }

    async fn expire(&self, idle: Duration) -> Result<usize> {
        let now = SystemTime::now();
        let mut removed = 0;
        for (repo, id, modified) in self.stored_sessions().await? {
            if now.duration_since(modified).unwrap_or_default() < idle {
                continue;
            }
            let slot = self.session(&repo, &id);
            // A session busy with a request is not idle.
            let Ok(mut guard) = slot.try_lock() else {
                continue;
            };
            match self.loaded(&mut guard, &repo, &id).await {
                Ok(st) => self.discard(&repo, &id, st).await?,
                // Leftovers without a start time: remove what is there.
                Err(StorageError::UploadNotFound(_)) => {
                    let k = self.keys(&repo, &id);
                    self.delete_keys(vec![k.state, k.data]).await?;
                }
                Err(e) => return Err(e),
            }
            drop(guard);
            self.forget_session(&repo, &id);
            removed += 1;
            tracing::info!(repository = %repo, upload = %id, "expired idle upload session");
        }
        Ok(removed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn state_round_trips() {
        let mut st = Session::fresh();
        st.upload_id = Some("u-1".into());
        st.parts.push(Part {
            number: 1,
            etag: "\"abc\"".into(),
            size: 5,
        });
        st.hasher.as_mut().unwrap().update(b"hello");
        st.tail.extend_from_slice(b"\n tail with a newline\n");
        let back = Session::decode(&st.encode()).unwrap();
        assert_eq!(back.upload_id.as_deref(), Some("u-1"));
        assert_eq!(back.parts.len(), 1);
        assert_eq!(&back.tail[..], &st.tail[..]);
        assert_eq!(back.offset(), st.offset());
        assert_eq!(back.hasher, st.hasher);
    }

    #[test]
    fn unusable_state_is_refused_or_loses_only_the_hash() {
        assert!(Session::decode(&Bytes::from_static(b"not json\n")).is_none());
        // The tail is shorter than recorded: refused.
        let mut with_tail = Session::fresh();
        with_tail.tail.extend_from_slice(b"xy");
        let mut cut = with_tail.encode().to_vec();
        cut.pop();
        assert!(Session::decode(&Bytes::from(cut)).is_none());
        // A hash that does not cover exactly the parts is dropped (read back at commit).
        let mut st = Session::fresh();
        st.parts.push(Part {
            number: 1,
            etag: "e".into(),
            size: 10,
        });
        st.hasher.as_mut().unwrap().update(b"short");
        assert!(Session::decode(&st.encode()).unwrap().hasher.is_none());
    }
}
