//! Writing to a registry (replication targets) and the read calls replication needs
//! beyond the mirror's: blob HEAD with a push token, cross-repository mount, upload
//! sessions (POST, PATCH chunks with `Content-Range`, status GET, PUT `?digest=`,
//! DELETE), manifest PUT, the referrers API and the tag list.
//!
//! Every call but a chunk PATCH retries like a read (connection errors, timeouts, 5xx,
//! 429). A PATCH streams its body once: after a failure the caller asks
//! [`UpstreamClient::upload_status`] where the upload stands and sends the rest.

use std::sync::Mutex;

use bytes::Bytes;
use http::header::{CONTENT_LENGTH, CONTENT_RANGE, CONTENT_TYPE, HeaderValue, LOCATION};
use http::{Method, StatusCode, Uri};
use pier_oci::{Descriptor, Digest, MAX_MANIFEST_SIZE, Reference, RepoName, Tag};
use tracing::debug;

use super::{
    Payload, UpstreamClient, content_length, header_digest, percent_encode, read_limited,
    resolve_location,
};
use crate::{ByteStream, UpstreamError};

/// Largest referrers index or tag list page read.
const MAX_LIST_BODY: usize = 4 * 1024 * 1024;

/// An upload session on a registry: where to send the next chunk, and how many bytes
/// the registry has acknowledged.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UploadSession {
    /// The absolute URL of the session (the last `Location` the registry sent).
    pub location: Uri,
    /// Bytes the registry holds: the next chunk starts here.
    pub offset: u64,
}

/// What a cross-repository mount did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Mount {
    /// `201`: the blob is now in the repository.
    Mounted,
    /// `202`: the registry did not mount and opened an upload session instead.
    Upload(UploadSession),
}

impl UpstreamClient {
    /// HEAD a blob with a push token: `Some(size)` when the repository has it.
    pub async fn blob_exists(
        &self,
        repo: &RepoName,
        digest: &Digest,
    ) -> Result<Option<u64>, UpstreamError> {
        let call = &self.push_call(Method::HEAD, repo, format!("blobs/{digest}"));
        match self
            .with_retries(call, |attempt| self.exchange(call, attempt))
            .await
        {
            Ok(response) => Ok(Some(content_length(response.headers()).unwrap_or(0))),
            Err(UpstreamError::NotFound) => Ok(None),
            Err(error) => Err(error),
        }
    }

    /// `POST /v2/<repo>/blobs/uploads/?mount=<digest>&from=<from>`. The token asks for
    /// `pull,push` on `repo` and `pull` on `from`.
    pub async fn mount_blob(
        &self,
        repo: &RepoName,
        digest: &Digest,
        from: &RepoName,
    ) -> Result<Mount, UpstreamError> {
        let mut call = self.push_call(
            Method::POST,
            repo,
            format!(
                "blobs/uploads/?mount={}&from={}",
                percent_encode(&digest.to_string()),
                percent_encode(from.as_str())
            ),
        );
        call.scope = format!("repository:{repo}:pull,push repository:{from}:pull");
        call.headers
            .push((CONTENT_LENGTH, HeaderValue::from_static("0")));
        let call = &call;
        let response = self
            .with_retries(call, |attempt| self.exchange(call, attempt))
            .await?;
        if response.status() == StatusCode::CREATED {
            debug!(upstream = %self.name, %repo, %from, %digest, "blob mounted");
            return Ok(Mount::Mounted);
        }
        let base = self.origin_uri(&call.path)?;
        Ok(Mount::Upload(session_from(&base, response.headers(), 0)?))
    }

    /// `POST /v2/<repo>/blobs/uploads/`: a new upload session.
    pub async fn start_upload(&self, repo: &RepoName) -> Result<UploadSession, UpstreamError> {
        let mut call = self.push_call(Method::POST, repo, "blobs/uploads/".to_owned());
        call.headers
            .push((CONTENT_LENGTH, HeaderValue::from_static("0")));
        let call = &call;
        let response = self
            .with_retries(call, |attempt| self.exchange(call, attempt))
            .await?;
        if response.status() != StatusCode::ACCEPTED {
            return Err(UpstreamError::Protocol(format!(
                "upload start answered {} instead of 202",
                response.status()
            )));
        }
        let base = self.origin_uri(&call.path)?;
        session_from(&base, response.headers(), 0)
    }

    /// `PATCH` one chunk of `len` bytes at `session.offset` (`Content-Range:
    /// START-END`). Sent once (the body streams); the new session says where the next
    /// chunk goes.
    pub async fn upload_chunk(
        &self,
        repo: &RepoName,
        session: &UploadSession,
        len: u64,
        body: ByteStream,
    ) -> Result<UploadSession, UpstreamError> {
        if len == 0 {
            return Ok(session.clone());
        }
        let mut call = self.push_call(Method::PATCH, repo, String::new());
        call.path = session.location.path().to_owned();
        call.target = Some(session.location.clone());
        let range = format!("{}-{}", session.offset, session.offset + len - 1);
        call.headers.extend([
            (
                CONTENT_TYPE,
                HeaderValue::from_static("application/octet-stream"),
            ),
            (CONTENT_LENGTH, header_value(&len.to_string())?),
            (CONTENT_RANGE, header_value(&range)?),
        ]);
        call.body = Payload::Stream(Mutex::new(Some(body)));
        let response = self.exchange(&call, 0).await.map_err(|f| f.error)?;
        let mut next = session_from(&session.location, response.headers(), session.offset + len)?;
        if next.offset == 0 && session.offset + len == 1 {
            // `Range: 0-0` after a one-byte blob: one byte held.
            next.offset = 1;
        }
        if next.offset != session.offset + len {
            return Err(UpstreamError::Protocol(format!(
                "registry acknowledged {} bytes after a chunk ending at {}",
                next.offset,
                session.offset + len
            )));
        }
        Ok(next)
    }

    /// `GET` the session: how many bytes the registry holds (its `Range: 0-N`).
    /// `NotFound` when the session is gone.
    pub async fn upload_status(
        &self,
        repo: &RepoName,
        session: &UploadSession,
    ) -> Result<UploadSession, UpstreamError> {
        let mut call = self.push_call(Method::GET, repo, String::new());
        call.path = session.location.path().to_owned();
        call.target = Some(session.location.clone());
        let call = &call;
        let response = self
            .with_retries(call, |attempt| self.exchange(call, attempt))
            .await
            .map_err(|error| match error {
                // distribution answers a session it cannot resume with 400
                // BLOB_UPLOAD_INVALID (and cancels it): gone all the same.
                UpstreamError::Status { status: 400, .. } => UpstreamError::NotFound,
                other => other,
            })?;
        let offset = parse_range_end(response.headers()).ok_or_else(|| {
            UpstreamError::Protocol("upload status without a Range header".to_owned())
        })?;
        session_from(&session.location, response.headers(), offset)
    }

    /// `PUT <session>?digest=<digest>` with an empty body: the blob is committed.
    pub async fn finish_upload(
        &self,
        repo: &RepoName,
        session: &UploadSession,
        digest: &Digest,
    ) -> Result<(), UpstreamError> {
        let location = session.location.to_string();
        let separator = if session.location.query().is_some() {
            '&'
        } else {
            '?'
        };
        let target: Uri = format!(
            "{location}{separator}digest={}",
            percent_encode(&digest.to_string())
        )
        .parse()
        .map_err(|e| UpstreamError::Protocol(format!("bad upload URL {location}: {e}")))?;
        let mut call = self.push_call(Method::PUT, repo, String::new());
        call.path = target.path().to_owned();
        call.target = Some(target);
        call.headers
            .push((CONTENT_LENGTH, HeaderValue::from_static("0")));
        let call = &call;
        let response = self
            .with_retries(call, |attempt| self.exchange(call, attempt))
            .await?;
        if let Some(stored) = header_digest(response.headers())
            && stored != *digest
        {
            return Err(UpstreamError::Protocol(format!(
                "registry stored {stored} for {digest}"
            )));
        }
        Ok(())
    }

    /// `DELETE` the session (best effort: errors are only logged by callers).
    pub async fn cancel_upload(
        &self,
        repo: &RepoName,
        session: &UploadSession,
    ) -> Result<(), UpstreamError> {
        let mut call = self.push_call(Method::DELETE, repo, String::new());
        call.path = session.location.path().to_owned();
        call.target = Some(session.location.clone());
        self.exchange(&call, 0).await.map_err(|f| f.error)?;
        Ok(())
    }

    /// HEAD a manifest with a push token: its digest when the repository has it.
    pub async fn manifest_digest(
        &self,
        repo: &RepoName,
        reference: &Reference,
    ) -> Result<Option<Digest>, UpstreamError> {
        let mut call = self.push_call(Method::HEAD, repo, format!("manifests/{reference}"));
        call.headers.push((
            http::header::ACCEPT,
            HeaderValue::from_static(super::MANIFEST_ACCEPT),
        ));
        let call = &call;
        match self
            .with_retries(call, |attempt| self.exchange(call, attempt))
            .await
        {
            Ok(response) => Ok(match (header_digest(response.headers()), reference) {
                (Some(digest), _) => Some(digest),
                (None, Reference::Digest(digest)) => Some(digest.clone()),
                (None, Reference::Tag(_)) => None,
            }),
            Err(UpstreamError::NotFound) => Ok(None),
            Err(error) => Err(error),
        }
    }

    /// `PUT /v2/<repo>/manifests/<reference>`; the digest the registry reports.
    pub async fn put_manifest(
        &self,
        repo: &RepoName,
        reference: &Reference,
        media_type: &str,
        bytes: Bytes,
    ) -> Result<Option<Digest>, UpstreamError> {
        if bytes.len() > MAX_MANIFEST_SIZE {
            return Err(UpstreamError::Protocol(format!(
                "manifest of {} bytes is over the {MAX_MANIFEST_SIZE} byte limit",
                bytes.len()
            )));
        }
        let mut call = self.push_call(Method::PUT, repo, format!("manifests/{reference}"));
        call.headers.extend([
            (CONTENT_TYPE, header_value(media_type)?),
            (CONTENT_LENGTH, header_value(&bytes.len().to_string())?),
        ]);
        call.body = Payload::Bytes(bytes);
        let call = &call;
        let response = self
            .with_retries(call, |attempt| self.exchange(call, attempt))
            .await?;
        Ok(header_digest(response.headers()))
    }

    /// `DELETE /v2/<repo>/manifests/<reference>` with a `delete` token: removes a tag
    /// (where the registry allows it) or a manifest.
    pub async fn delete_manifest(
        &self,
        repo: &RepoName,
        reference: &Reference,
    ) -> Result<(), UpstreamError> {
        let mut call = self.call(Method::DELETE, repo, format!("manifests/{reference}"));
        call.scope = format!("repository:{repo}:delete");
        let call = &call;
        self.with_retries(call, |attempt| self.exchange(call, attempt))
            .await
            .map(drop)
    }

    /// `GET /v2/<repo>/referrers/<digest>`: the descriptors of the manifests whose
    /// `subject` is `digest`. A registry without the referrers API (`404`) has none.
    pub async fn referrers(
        &self,
        repo: &RepoName,
        digest: &Digest,
    ) -> Result<Vec<Descriptor>, UpstreamError> {
        let mut call = self.call(Method::GET, repo, format!("referrers/{digest}"));
        call.headers.push((
            http::header::ACCEPT,
            HeaderValue::from_static(pier_oci::media_types::OCI_INDEX),
        ));
        let call = &call;
        let body = match self
            .with_retries(call, |attempt| async move {
                let response = self.exchange(call, attempt).await?;
                let uri = self.origin_uri(&call.path)?;
                read_limited(response.into_body(), MAX_LIST_BODY, self.timeout, &uri).await
            })
            .await
        {
            Ok(body) => body,
            Err(UpstreamError::NotFound) => return Ok(Vec::new()),
            Err(error) => return Err(error),
        };
        #[derive(serde::Deserialize)]
        struct Index {
            #[serde(default)]
            manifests: Vec<Descriptor>,
        }
        let index: Index = serde_json::from_slice(&body)
            .map_err(|e| UpstreamError::Protocol(format!("invalid referrers index: {e}")))?;
        Ok(index.manifests)
    }

    /// Every tag of `repo`, following `Link: <...>; rel="next"` pages.
    pub async fn tags(&self, repo: &RepoName) -> Result<Vec<Tag>, UpstreamError> {
        #[derive(serde::Deserialize)]
        struct TagList {
            #[serde(default)]
            tags: Option<Vec<String>>,
        }
        let mut out = Vec::new();
        let mut next: Option<Uri> = None;
        for _page in 0..10_000 {
            let mut call = self.call(Method::GET, repo, "tags/list?n=1000".to_owned());
            if let Some(target) = next.take() {
                call.path = target.path().to_owned();
                call.target = Some(target);
            }
            let call = &call;
            let (link, body) = self
                .with_retries(call, |attempt| async move {
                    let response = self.exchange(call, attempt).await?;
                    let link = response
                        .headers()
                        .get(http::header::LINK)
                        .and_then(|v| v.to_str().ok())
                        .map(str::to_owned);
                    let uri = self.origin_uri(&call.path)?;
                    let body =
                        read_limited(response.into_body(), MAX_LIST_BODY, self.timeout, &uri)
                            .await?;
                    Ok((link, body))
                })
                .await?;
            let list: TagList = serde_json::from_slice(&body)
                .map_err(|e| UpstreamError::Protocol(format!("invalid tag list: {e}")))?;
            for tag in list.tags.unwrap_or_default() {
                match tag.parse::<Tag>() {
                    Ok(tag) => out.push(tag),
                    Err(error) => {
                        debug!(upstream = %self.name, %repo, tag, %error, "skipping invalid tag")
                    }
                }
            }
            match link.as_deref().and_then(next_link) {
                Some(path) => {
                    let base = self.origin_uri(&call.path)?;
                    next = Some(resolve_location(&base, &path)?);
                }
                None => return Ok(out),
            }
        }
        Ok(out)
    }
}

fn header_value(value: &str) -> Result<HeaderValue, UpstreamError> {
    HeaderValue::try_from(value)
        .map_err(|_| UpstreamError::Protocol(format!("{value:?} is not usable in a header")))
}

/// The session a `202` describes: its `Location` resolved against the URL that
/// answered, and its acknowledged offset (`Range: 0-N` → N+1; `default` without one).
fn session_from(
    base: &Uri,
    headers: &http::HeaderMap,
    default: u64,
) -> Result<UploadSession, UpstreamError> {
    let location = headers
        .get(LOCATION)
        .and_then(|v| v.to_str().ok())
        .ok_or_else(|| UpstreamError::Protocol("upload response without a Location".to_owned()))?;
    Ok(UploadSession {
        location: resolve_location(base, location)?,
        offset: parse_range_end(headers).unwrap_or(default),
    })
}

/// `Range: 0-N` (or `bytes=0-N`) → N+1 bytes held. distribution and Pier send `0-0`
/// for an empty session; a registry that holds one byte would send the same, so `0-0`
/// counts as empty (that byte is sent again, which a registry must accept).
fn parse_range_end(headers: &http::HeaderMap) -> Option<u64> {
    let value = headers.get(http::header::RANGE)?.to_str().ok()?.trim();
    let value = value.strip_prefix("bytes=").unwrap_or(value);
    let (start, end) = value.split_once('-')?;
    let _start: u64 = start.trim().parse().ok()?;
    let end: u64 = end.trim().parse().ok()?;
    Some(if end == 0 { 0 } else { end + 1 })
}

/// The target of `rel="next"` in a `Link` header.
fn next_link(header: &str) -> Option<String> {
    header.split(',').find_map(|part| {
        let (target, params) = part.split_once(';')?;
        params
            .split(';')
            .any(|p| p.trim().replace(' ', "") == "rel=\"next\"" || p.trim() == "rel=next")
            .then(|| {
                target
                    .trim()
                    .trim_start_matches('<')
                    .trim_end_matches('>')
                    .to_owned()
            })
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_acknowledged_offsets() {
        let mut headers = http::HeaderMap::new();
        headers.insert(http::header::RANGE, HeaderValue::from_static("0-1023"));
        assert_eq!(parse_range_end(&headers), Some(1024));
        headers.insert(http::header::RANGE, HeaderValue::from_static("0-0"));
        assert_eq!(parse_range_end(&headers), Some(0));
        headers.insert(http::header::RANGE, HeaderValue::from_static("bytes=0-9"));
        assert_eq!(parse_range_end(&headers), Some(10));
        headers.insert(http::header::RANGE, HeaderValue::from_static("junk"));
        assert_eq!(parse_range_end(&headers), None);
    }

    #[test]
    fn finds_the_next_page() {
        assert_eq!(
            next_link(r#"</v2/a/tags/list?n=2&last=b>; rel="next""#).as_deref(),
            Some("/v2/a/tags/list?n=2&last=b")
        );
        assert_eq!(next_link(r#"</x>; rel="prev""#), None);
    }

    #[test]
    fn sessions_resolve_relative_locations() {
        let base: Uri = "http://127.0.0.1:5000/v2/a/blobs/uploads/".parse().unwrap();
        let mut headers = http::HeaderMap::new();
        headers.insert(
            LOCATION,
            HeaderValue::from_static("/v2/a/blobs/uploads/u1?_state=x"),
        );
        headers.insert(http::header::RANGE, HeaderValue::from_static("0-99"));
        let s = session_from(&base, &headers, 0).unwrap();
        assert_eq!(
            s.location.to_string(),
            "http://127.0.0.1:5000/v2/a/blobs/uploads/u1?_state=x"
        );
        assert_eq!(s.offset, 100);
    }
}
