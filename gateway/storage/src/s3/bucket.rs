//! The few S3 calls the backend makes, on one bucket, with their errors mapped to
//! [`StorageError`]. Keys are built from [`Layout`] paths, so every key the backend touches
//! comes from a validated newtype.

use std::io;
use std::path::{Path, PathBuf};
use std::time::SystemTime;

use aws_sdk_s3::Client;
use aws_sdk_s3::config::http::HttpResponse;
use aws_sdk_s3::error::{DisplayErrorContext, SdkError};
use aws_sdk_s3::primitives::ByteStream as S3Body;
use aws_sdk_s3::types::{CompletedMultipartUpload, CompletedPart};
use bytes::Bytes;
use futures_util::StreamExt;

use crate::paths::Layout;
use crate::{ByteStream, Result, StorageError};

/// One part of a multipart upload, as CompleteMultipartUpload needs it back.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub(crate) struct Part {
    pub(crate) number: i32,
    pub(crate) etag: String,
    pub(crate) size: u64,
}

/// An object as listed.
pub(crate) struct Listed {
    pub(crate) key: String,
    pub(crate) size: u64,
    pub(crate) modified: SystemTime,
}

/// The bucket, the key layout under its prefix, and the client.
pub(crate) struct Bucket {
    pub(crate) client: Client,
    pub(crate) name: String,
    pub(crate) layout: Layout,
}

/// The key of a layout path: layout paths are built only from validated, ASCII components.
pub(crate) fn key(path: &Path) -> String {
    path.to_str().expect("layout paths are ASCII").to_owned()
}

/// The key prefix of everything under a layout directory (with the trailing `/`).
pub(crate) fn dir_prefix(path: &Path) -> String {
    let mut k = key(path);
    if !k.is_empty() && !k.ends_with('/') {
        k.push('/');
    }
    k
}

fn status<E>(e: &SdkError<E, HttpResponse>) -> Option<u16> {
    e.raw_response().map(|r| r.status().as_u16())
}

/// Whether a failed call failed because the key (or the multipart upload) is not there.
pub(crate) fn is_not_found<E>(e: &SdkError<E, HttpResponse>) -> bool {
    status(e) == Some(404)
}

impl Bucket {
    /// The error for a failed call on `key`: the SDK's whole error chain, flattened;
    /// [`StorageError::Unavailable`] when the bucket could not be reached or asked to slow
    /// down, so clients get a 503 to retry instead of a 500.
    pub(crate) fn err<E>(
        &self,
        op: &'static str,
        key: &str,
        e: SdkError<E, HttpResponse>,
    ) -> StorageError
    where
        E: std::error::Error + Send + Sync + 'static,
    {
        let unavailable = matches!(e, SdkError::DispatchFailure(_) | SdkError::TimeoutError(_))
            || status(&e) == Some(503);
        let path = PathBuf::from(format!("s3://{}/{key}", self.name));
        let source = io::Error::other(DisplayErrorContext(e).to_string());
        if unavailable {
            StorageError::Unavailable { op, path, source }
        } else {
            StorageError::Io { op, path, source }
        }
    }

    /// Size of the object, if there.
    pub(crate) async fn head(&self, key: &str) -> Result<Option<u64>> {
        match self
            .client
            .head_object()
            .bucket(&self.name)
            .key(key)
            .send()
            .await
        {
            Ok(out) => Ok(Some(out.content_length().unwrap_or(0).max(0) as u64)),
            Err(e) if is_not_found(&e) => Ok(None),
            Err(e) => Err(self.err("stat", key, e)),
        }
    }

    /// The object's ETag, if there: changes whenever the object is written.
    pub(crate) async fn etag(&self, key: &str) -> Result<Option<String>> {
        match self
            .client
            .head_object()
            .bucket(&self.name)
            .key(key)
            .send()
            .await
        {
            Ok(out) => Ok(Some(out.e_tag().unwrap_or_default().to_owned())),
            Err(e) if is_not_found(&e) => Ok(None),
            Err(e) => Err(self.err("stat", key, e)),
        }
    }

    /// When the object was last written (`LastModified`), if there.
    pub(crate) async fn modified(&self, key: &str) -> Result<Option<std::time::SystemTime>> {
        match self
            .client
            .head_object()
            .bucket(&self.name)
            .key(key)
            .send()
            .await
        {
            Ok(out) => Ok(out
                .last_modified()
                .and_then(|t| std::time::SystemTime::try_from(*t).ok())),
            Err(e) if is_not_found(&e) => Ok(None),
            Err(e) => Err(self.err("stat", key, e)),
        }
    }

    pub(crate) async fn exists(&self, key: &str) -> Result<bool> {
        Ok(self.head(key).await?.is_some())
    }

    /// The whole object, if there. For small objects (links, session state).
    pub(crate) async fn get_small(&self, key: &str) -> Result<Option<Bytes>> {
        let out = match self
            .client
            .get_object()
            .bucket(&self.name)
            .key(key)
            .send()
            .await
        {
            Ok(out) => out,
            Err(e) if is_not_found(&e) => return Ok(None),
            Err(e) => return Err(self.err("read", key, e)),
        };
        let data = out.body.collect().await.map_err(|e| StorageError::Io {
            op: "read",
            path: PathBuf::from(format!("s3://{}/{key}", self.name)),
            source: io::Error::other(e),
        })?;
        Ok(Some(data.into_bytes()))
    }

    /// Writes a whole object in one request (atomic: readers see the old or the new one).
    pub(crate) async fn put(&self, key: &str, data: Bytes) -> Result<()> {
        let len = data.len() as i64;
        self.client
            .put_object()
            .bucket(&self.name)
            .key(key)
            .content_length(len)
            .body(S3Body::from(data))
            .send()
            .await
            .map_err(|e| self.err("write", key, e))?;
        Ok(())
    }

    /// Removes one object (S3 answers the same whether it was there or not).
    pub(crate) async fn delete(&self, key: &str) -> Result<()> {
        self.client
            .delete_object()
            .bucket(&self.name)
            .key(key)
            .send()
            .await
            .map_err(|e| self.err("remove", key, e))?;
        Ok(())
    }

    /// Every object under `prefix` (and, with `delimiter`, the common prefixes one level
    /// down), following continuation tokens.
    pub(crate) async fn list(
        &self,
        prefix: &str,
        delimiter: bool,
    ) -> Result<(Vec<Listed>, Vec<String>)> {
        let mut objects = Vec::new();
        let mut prefixes = Vec::new();
        let mut token: Option<String> = None;
        loop {
            let mut req = self
                .client
                .list_objects_v2()
                .bucket(&self.name)
                .prefix(prefix)
                .set_continuation_token(token.take());
            if delimiter {
                req = req.delimiter("/");
            }
            let out = req.send().await.map_err(|e| self.err("list", prefix, e))?;
            for o in out.contents() {
                let Some(key) = o.key() else { continue };
                objects.push(Listed {
                    key: key.to_owned(),
                    size: o.size().unwrap_or(0).max(0) as u64,
                    modified: o
                        .last_modified()
                        .and_then(|t| SystemTime::try_from(*t).ok())
                        .unwrap_or(SystemTime::UNIX_EPOCH),
                });
            }
            prefixes.extend(
                out.common_prefixes()
                    .iter()
                    .filter_map(|p| p.prefix().map(str::to_owned)),
            );
            match out.next_continuation_token() {
                Some(t) if out.is_truncated() == Some(true) => token = Some(t.to_owned()),
                _ => break,
            }
        }
        Ok((objects, prefixes))
    }

    /// Whether anything at all is stored under `prefix`.
    pub(crate) async fn any_under(&self, prefix: &str) -> Result<bool> {
        let out = self
            .client
            .list_objects_v2()
            .bucket(&self.name)
            .prefix(prefix)
            .max_keys(1)
            .send()
            .await
            .map_err(|e| self.err("list", prefix, e))?;
        Ok(!out.contents().is_empty())
    }

    /// Names one level below `prefix` (common prefixes, without `prefix` and the `/`).
    pub(crate) async fn child_dirs(&self, prefix: &str) -> Result<Vec<String>> {
        let (_, dirs) = self.list(prefix, true).await?;
        Ok(dirs
            .iter()
            .filter_map(|d| d.strip_prefix(prefix))
            .map(|d| d.trim_end_matches('/').to_owned())
            .filter(|d| !d.is_empty())
            .collect())
    }

    pub(crate) async fn create_multipart(&self, key: &str) -> Result<String> {
        let out = self
            .client
            .create_multipart_upload()
            .bucket(&self.name)
            .key(key)
            .send()
            .await
            .map_err(|e| self.err("start multipart upload", key, e))?;
        out.upload_id()
            .map(str::to_owned)
            .ok_or_else(|| StorageError::Io {
                op: "start multipart upload",
                path: PathBuf::from(format!("s3://{}/{key}", self.name)),
                source: io::Error::other("the server returned no upload id"),
            })
    }

    pub(crate) async fn upload_part(
        &self,
        key: &str,
        upload_id: &str,
        number: i32,
        data: Bytes,
    ) -> Result<Part> {
        let size = data.len() as u64;
        let out = self
            .client
            .upload_part()
            .bucket(&self.name)
            .key(key)
            .upload_id(upload_id)
            .part_number(number)
            .content_length(size as i64)
            .body(S3Body::from(data))
            .send()
            .await
            .map_err(|e| self.err("upload part", key, e))?;
        Ok(Part {
            number,
            etag: out.e_tag().unwrap_or_default().to_owned(),
            size,
        })
    }

    /// Copies `[start, end]` of `src` as a part (server side).
    pub(crate) async fn upload_part_copy(
        &self,
        src: &str,
        key: &str,
        upload_id: &str,
        number: i32,
        (start, end): (u64, u64),
    ) -> Result<Part> {
        let out = self
            .client
            .upload_part_copy()
            .bucket(&self.name)
            .key(key)
            .upload_id(upload_id)
            .part_number(number)
            .copy_source(format!("{}/{src}", self.name))
            .copy_source_range(format!("bytes={start}-{end}"))
            .send()
            .await
            .map_err(|e| self.err("copy part", key, e))?;
        let etag = out
            .copy_part_result()
            .and_then(|r| r.e_tag())
            .unwrap_or_default()
            .to_owned();
        Ok(Part {
            number,
            etag,
            size: end - start + 1,
        })
    }

    /// Makes the object of a multipart upload appear, whole, at its key.
    pub(crate) async fn complete_multipart(
        &self,
        key: &str,
        upload_id: &str,
        parts: &[Part],
    ) -> Result<()> {
        let parts = parts
            .iter()
            .map(|p| {
                CompletedPart::builder()
                    .part_number(p.number)
                    .e_tag(&p.etag)
                    .build()
            })
            .collect();
        self.client
            .complete_multipart_upload()
            .bucket(&self.name)
            .key(key)
            .upload_id(upload_id)
            .multipart_upload(
                CompletedMultipartUpload::builder()
                    .set_parts(Some(parts))
                    .build(),
            )
            .send()
            .await
            .map_err(|e| self.err("complete multipart upload", key, e))?;
        Ok(())
    }

    /// Discards a multipart upload and its parts; one already gone is not an error.
    pub(crate) async fn abort_multipart(&self, key: &str, upload_id: &str) -> Result<()> {
        match self
            .client
            .abort_multipart_upload()
            .bucket(&self.name)
            .key(key)
            .upload_id(upload_id)
            .send()
            .await
        {
            Ok(_) => Ok(()),
            Err(e) if is_not_found(&e) => Ok(()),
            Err(e) => Err(self.err("abort multipart upload", key, e)),
        }
    }

    /// Server-side copy of a whole object of at most 5 GiB.
    pub(crate) async fn copy(&self, src: &str, dst: &str) -> Result<()> {
        self.client
            .copy_object()
            .bucket(&self.name)
            .key(dst)
            .copy_source(format!("{}/{src}", self.name))
            .send()
            .await
            .map_err(|e| self.err("copy", dst, e))?;
        Ok(())
    }

    /// Reads an object, or the inclusive range `[start, end]` of it. `None` if not there.
    pub(crate) async fn get(
        &self,
        key: &str,
        range: Option<(u64, u64)>,
    ) -> Result<Option<(u64, S3Body)>> {
        let req = self
            .client
            .get_object()
            .bucket(&self.name)
            .key(key)
            .set_range(range.map(|(s, e)| format!("bytes={s}-{e}")));
        match req.send().await {
            Ok(out) => Ok(Some((
                out.content_length().unwrap_or(0).max(0) as u64,
                out.body,
            ))),
            Err(e) if is_not_found(&e) => Ok(None),
            Err(e) => Err(self.err("read", key, e)),
        }
    }
}

/// An S3 response body as a [`ByteStream`].
pub(crate) fn body_stream(body: S3Body) -> ByteStream {
    Box::pin(futures_util::stream::unfold(body, |mut body| async move {
        body.next()
            .await
            .map(|item| (item.map_err(io::Error::other), body))
    }))
}

/// Hashes a whole object by reading it back.
pub(crate) async fn hash_object(
    bucket: &Bucket,
    key: &str,
    algorithm: pier_oci::Algorithm,
) -> Result<(pier_oci::Digest, u64)> {
    let Some((_, body)) = bucket.get(key, None).await? else {
        return Err(StorageError::Io {
            op: "read back",
            path: PathBuf::from(format!("s3://{}/{key}", bucket.name)),
            source: io::ErrorKind::NotFound.into(),
        });
    };
    let mut stream = body_stream(body);
    let mut h = algorithm.hasher();
    let mut n = 0u64;
    while let Some(chunk) = stream.next().await {
        let chunk = chunk.map_err(|e| StorageError::Io {
            op: "read back",
            path: PathBuf::from(format!("s3://{}/{key}", bucket.name)),
            source: e,
        })?;
        h.update(&chunk);
        n += chunk.len() as u64;
    }
    Ok((h.finish(), n))
}
