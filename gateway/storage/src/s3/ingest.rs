//! Mirror fills: a blob of known digest, written from a trusted stream and readable while
//! it is written.
//!
//! The digest is known from the start, so the bytes go straight to a multipart upload of
//! the blob's own key: parts of `part_size`, hashed as they arrive; at commit the last part
//! is sent and, only if the digest matched, CompleteMultipartUpload makes the object appear
//! whole (else the upload is aborted). Content smaller than a part is sent with one
//! PutObject after the check. No copy, no temporary key.
//!
//! An incomplete multipart upload cannot be read, so readers are served from a local spool
//! file that receives every byte too (created in the spool directory and unlinked at once:
//! it goes away with the last reader). Memory holds at most one part.

use std::fs::File;
use std::io;
use std::path::Path;
use std::sync::Arc;

use async_trait::async_trait;
use bytes::{Bytes, BytesMut};
use pier_oci::{Digest, Hasher, RepoName};

use super::S3Store;
use super::bucket::{Bucket, Part, key};
use crate::{Ingest, IngestStore, PartialReader, Result, StorageError};

#[async_trait]
impl IngestStore for S3Store {
    async fn begin_ingest(&self, repo: &RepoName, digest: &Digest) -> Result<Box<dyn Ingest>> {
        let dir = self.spool_dir.clone();
        let spool = tokio::task::spawn_blocking(move || spool_file(&dir))
            .await
            .map_err(|e| StorageError::Task(io::Error::other(e)))??;
        Ok(Box::new(S3Ingest {
            bucket: self.bucket.clone(),
            repo: repo.clone(),
            digest: digest.clone(),
            key: key(&self.bucket.layout.blob_data(digest)),
            part_size: self.part_size,
            spool: Arc::new(spool),
            hasher: Some(digest.algorithm().hasher()),
            written: 0,
            buffer: BytesMut::new(),
            upload_id: None,
            parts: Vec::new(),
            verified: false,
        }))
    }
}

/// A new file in `dir`, already unlinked.
fn spool_file(dir: &Path) -> Result<File> {
    let path = dir.join(format!(".pier-ingest-{}", uuid::Uuid::new_v4()));
    let file = std::fs::OpenOptions::new()
        .create_new(true)
        .read(true)
        .write(true)
        .open(&path)
        .map_err(StorageError::io("create", &path))?;
    std::fs::remove_file(&path).map_err(StorageError::io("remove", &path))?;
    Ok(file)
}

struct S3Ingest {
    bucket: Arc<Bucket>,
    repo: RepoName,
    digest: Digest,
    /// The blob's data key, which the multipart upload writes.
    key: String,
    part_size: usize,
    spool: Arc<File>,
    /// `None` after a failed write: commit then fails.
    hasher: Option<Hasher>,
    written: u64,
    /// Bytes not yet sent as a part.
    buffer: BytesMut,
    upload_id: Option<String>,
    parts: Vec<Part>,
    verified: bool,
}

impl S3Ingest {
    async fn send_part(&mut self) -> Result<()> {
        let upload_id = match &self.upload_id {
            Some(u) => u.clone(),
            None => {
                let u = self.bucket.create_multipart(&self.key).await?;
                self.upload_id = Some(u.clone());
                u
            }
        };
        let data = self.buffer.split().freeze();
        let number = self.parts.len() as i32 + 1;
        let part = self
            .bucket
            .upload_part(&self.key, &upload_id, number, data)
            .await?;
        self.parts.push(part);
        Ok(())
    }

    async fn abort_upload(&mut self) {
        if let Some(u) = self.upload_id.take()
            && let Err(e) = self.bucket.abort_multipart(&self.key, &u).await
        {
            tracing::warn!(error = %e, key = %self.key, "could not abort a mirror fill's multipart upload");
        }
    }

    async fn publish(&mut self) -> Result<()> {
        match self.upload_id.clone() {
            None => {
                let data = self.buffer.split().freeze();
                self.bucket.put(&self.key, data).await
            }
            Some(u) => {
                if !self.buffer.is_empty() {
                    self.send_part().await?;
                }
                self.bucket
                    .complete_multipart(&self.key, &u, &self.parts)
                    .await?;
                self.upload_id = None;
                Ok(())
            }
        }
    }
}

struct SpoolReader(Arc<File>);

#[async_trait]
impl PartialReader for SpoolReader {
    async fn read_at(&self, offset: u64, len: usize) -> io::Result<Bytes> {
        use std::os::unix::fs::FileExt;
        let file = self.0.clone();
        // Bytes already written are never rewritten: the spool only grows.
        tokio::task::spawn_blocking(move || {
            let mut buf = vec![0u8; len];
            file.read_exact_at(&mut buf, offset)?;
            Ok(Bytes::from(buf))
        })
        .await
        .map_err(io::Error::other)?
    }
}

#[async_trait]
impl Ingest for S3Ingest {
    async fn write(&mut self, chunk: Bytes) -> Result<()> {
        let mut hasher = self
            .hasher
            .take()
            .expect("ingest used after a failed write");
        let file = self.spool.clone();
        let offset = self.written;
        let data = chunk.clone();
        let hasher = tokio::task::spawn_blocking(move || {
            use std::os::unix::fs::FileExt;
            file.write_all_at(&data, offset)
                .map_err(StorageError::io("write", "<ingest spool>"))?;
            hasher.update(&data);
            Ok::<_, StorageError>(hasher)
        })
        .await
        .map_err(|e| StorageError::Task(io::Error::other(e)))??;
        self.written += chunk.len() as u64;
        self.buffer.extend_from_slice(&chunk);
        if self.buffer.len() >= self.part_size {
            // The hash stays taken if the part fails: the fill cannot be committed.
            self.send_part().await?;
        }
        self.hasher = Some(hasher);
        Ok(())
    }

    fn written(&self) -> u64 {
        self.written
    }

    fn reader(&self) -> Arc<dyn PartialReader> {
        Arc::new(SpoolReader(self.spool.clone()))
    }

    async fn verify(&mut self) -> Result<()> {
        if self.verified {
            return Ok(());
        }
        if let Err(e) = crate::check_ingest_digest(self.hasher.take(), &self.digest) {
            self.abort_upload().await;
            return Err(e);
        }
        self.verified = true;
        Ok(())
    }

    async fn commit(mut self: Box<Self>) -> Result<u64> {
        self.verify().await?;
        if let Err(e) = self.publish().await {
            self.abort_upload().await;
            return Err(e);
        }
        let link = key(&self.bucket.layout.layer_link(&self.repo, &self.digest));
        self.bucket
            .put(&link, Bytes::from(self.digest.to_string()))
            .await?;
        Ok(self.written)
    }

    async fn abort(mut self: Box<Self>) {
        self.abort_upload().await;
    }
}

impl Drop for S3Ingest {
    /// Dropped without commit or abort (the fill's task went away): abort the multipart
    /// upload in the background, so its parts are not kept (and billed) forever.
    fn drop(&mut self) {
        if let Some(u) = self.upload_id.take()
            && let Ok(rt) = tokio::runtime::Handle::try_current()
        {
            let (bucket, key) = (self.bucket.clone(), self.key.clone());
            rt.spawn(async move {
                let _ = bucket.abort_multipart(&key, &u).await;
            });
        }
    }
}
