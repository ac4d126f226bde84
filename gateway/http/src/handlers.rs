//! One function per endpoint and method.

use std::sync::Arc;

use bytes::Bytes;
use http::{HeaderMap, HeaderValue, Method, Request, Response, StatusCode, header};
use http_body_util::{BodyExt, Limited};
use hyper::body::{Body as _, Incoming};
use pier_core::{ManifestContent, Mirror, MirrorBlob, Page, Place, Target};
use pier_oci::{Digest, MAX_MANIFEST_SIZE, Reference, RepoName, media_types};
use pier_storage::{BlobBody, BlobRead, UploadId, UploadStatus};
use serde_json::json;

use crate::AppState;
use crate::body::{RespBody, empty, full, request_stream, stream};
use crate::error::ApiError;
use crate::events::{ManifestAction, ManifestEvent};
use crate::range::{parse_content_range, parse_range};
use crate::route::Route;

type HandlerResult = Result<Response<RespBody>, ApiError>;

/// Where a request's repository lives: local unless a mirror is configured and routes it.
pub(crate) fn place(state: &AppState, route: &Route, req: &Request<Incoming>) -> Place {
    match (&state.mirror, route.repository()) {
        (Some(mirror), Some(repo)) => {
            let params = query_params(req);
            mirror.place(repo, query(&params, "ns"))
        }
        _ => Place::Local,
    }
}

pub(crate) async fn dispatch(
    state: &Arc<AppState>,
    route: Route,
    place: Place,
    req: Request<Incoming>,
) -> HandlerResult {
    let method = req.method().clone();
    match (place, &state.mirror) {
        (Place::Mirrored(target), Some(mirror)) => {
            return mirrored(state, mirror, &target, route, req).await;
        }
        (Place::UnknownNamespace(ns), _) => {
            let repo = route
                .repository()
                .map(|r| r.to_string())
                .unwrap_or_default();
            return Err(if method == Method::GET || method == Method::HEAD {
                ApiError::NamespaceUnknown { repo, ns }
            } else {
                ApiError::MirrorReadOnly(repo)
            });
        }
        _ => {}
    }
    match (route, &method) {
        (Route::Base, &Method::GET | &Method::HEAD) => Ok(json_response(
            StatusCode::OK,
            b"{}".as_slice().into(),
            &method,
        )),
        (Route::Catalog, &Method::GET) => catalog(state, &req).await,
        (Route::Tags(repo), &Method::GET) => tags(state, &repo, &req).await,
        (Route::Manifest(repo, r), &Method::GET | &Method::HEAD) => {
            manifest_get(state, &repo, &r, &req).await
        }
        (Route::Manifest(repo, r), &Method::PUT) => manifest_put(state, &repo, &r, req).await,
        (Route::Manifest(repo, r), &Method::DELETE) => {
            state
                .registry
                .manifest_delete_by(&repo, &r, &caller(&req))
                .await?;
            if let Some(sink) = &state.events {
                let (tag, digest) = match r {
                    Reference::Tag(t) => (Some(t), None),
                    Reference::Digest(d) => (None, Some(d)),
                };
                sink.record(ManifestEvent {
                    action: ManifestAction::Deleted,
                    repository: repo,
                    tag,
                    digest,
                    media_type: None,
                    size: None,
                    actor: actor(&req),
                })
                .await
                .map_err(ApiError::EventNotRecorded)?;
            }
            Ok(status_only(StatusCode::ACCEPTED))
        }
        (Route::Blob(repo, d), &Method::HEAD) => blob_head(state, &repo, &d).await,
        (Route::Blob(repo, d), &Method::GET) => blob_get(state, &repo, &d, &req).await,
        (Route::Blob(repo, d), &Method::DELETE) => {
            state.registry.blob_delete(&repo, &d).await?;
            Ok(status_only(StatusCode::ACCEPTED))
        }
        (Route::UploadStart(repo), &Method::POST) => upload_start(state, &repo, req).await,
        (Route::Upload(repo, id), &Method::GET) => {
            let st = state.registry.upload_status(&repo, &id).await?;
            Ok(upload_response(StatusCode::NO_CONTENT, &repo, &st))
        }
        (Route::Upload(repo, id), &Method::PATCH) => upload_patch(state, &repo, &id, req).await,
        (Route::Upload(repo, id), &Method::PUT) => upload_put(state, &repo, &id, req).await,
        (Route::Upload(repo, id), &Method::DELETE) => {
            state.registry.upload_cancel(&repo, &id).await?;
            Ok(status_only(StatusCode::NO_CONTENT))
        }
        (Route::Referrers(repo, d), &Method::GET) => referrers(state, &repo, &d, &req).await,
        (_, m) => Err(ApiError::MethodNotAllowed(m.clone())),
    }
}

/// A request for a mirrored repository: reads go through the mirror, writes are refused.
pub(crate) async fn mirrored(
    state: &AppState,
    mirror: &Arc<Mirror>,
    t: &Target,
    route: Route,
    req: Request<Incoming>,
) -> HandlerResult {
    let method = req.method().clone();
    match (route, &method) {
        (Route::Manifest(_, r), &Method::GET | &Method::HEAD) => {
            let m = mirror.manifest(t, &r).await?;
            // A fleet peer's fill is not a pull of this node's clients (each node admits
            // what it serves to its own).
            if t.from_peer().is_none() {
                state
                    .registry
                    .admit_pull(&t.local, &r, &m, &caller(&req))
                    .await?;
                note_pull(state, &t.local, &r, &req);
            }
            Ok(manifest_response(&m, &req))
        }
        (Route::Blob(_, d), &Method::HEAD) => {
            Ok(blob_head_response(&d, mirror.blob_size(t, &d).await?))
        }
        (Route::Blob(_, d), &Method::GET) => {
            let range = match header_str(req.headers(), header::RANGE) {
                Some(h) => parse_range(h)?,
                None => None,
            };
            match mirror.blob(t, &d, range).await? {
                MirrorBlob::Stored(read) => Ok(blob_read_response(&d, read)),
                MirrorBlob::Streaming { size, range, body } => {
                    let mut r = Response::new(stream(body));
                    match (range, size) {
                        (Some((s, e)), Some(size)) => {
                            *r.status_mut() = StatusCode::PARTIAL_CONTENT;
                            set(&mut r, "Content-Range", &format!("bytes {s}-{e}/{size}"));
                            set(&mut r, "Content-Length", &(e - s + 1).to_string());
                        }
                        (_, Some(size)) => set(&mut r, "Content-Length", &size.to_string()),
                        _ => {}
                    }
                    set(&mut r, "Content-Type", "application/octet-stream");
                    set(&mut r, "Docker-Content-Digest", &d.to_string());
                    set(&mut r, "ETag", &etag(&d));
                    Ok(r)
                }
            }
        }
        (Route::Tags(_), &Method::GET) => tags(state, &t.local, &req).await,
        (Route::Referrers(_, d), &Method::GET) => referrers(state, &t.local, &d, &req).await,
        (route, _) => Err(ApiError::MirrorReadOnly(
            route
                .repository()
                .map(|r| r.to_string())
                .unwrap_or_default(),
        )),
    }
}

// ---- helpers ----

fn query_params(req: &Request<Incoming>) -> Vec<(String, String)> {
    req.uri()
        .query()
        .map(crate::query::parse)
        .unwrap_or_default()
}

fn query<'a>(params: &'a [(String, String)], key: &str) -> Option<&'a str> {
    params
        .iter()
        .find(|(k, _)| k == key)
        .map(|(_, v)| v.as_str())
}

fn header_str(h: &HeaderMap, name: header::HeaderName) -> Option<&str> {
    h.get(name).and_then(|v| v.to_str().ok())
}

fn status_only(status: StatusCode) -> Response<RespBody> {
    let mut r = Response::new(empty());
    *r.status_mut() = status;
    r.headers_mut()
        .insert(header::CONTENT_LENGTH, HeaderValue::from_static("0"));
    r
}

fn set(r: &mut Response<RespBody>, name: &'static str, value: &str) {
    if let Ok(v) = HeaderValue::from_str(value) {
        r.headers_mut().insert(name, v);
    }
}

fn json_response(status: StatusCode, body: Bytes, method: &Method) -> Response<RespBody> {
    let len = body.len();
    let mut r = Response::new(if method == Method::HEAD {
        empty()
    } else {
        full(body)
    });
    *r.status_mut() = status;
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    set(&mut r, "Content-Length", &len.to_string());
    r
}

fn etag(d: &Digest) -> String {
    format!("\"{d}\"")
}

fn not_modified(req: &Request<Incoming>, d: &Digest) -> bool {
    header_str(req.headers(), header::IF_NONE_MATCH)
        .is_some_and(|v| v.split(',').any(|t| t.trim() == etag(d) || t.trim() == "*"))
}

fn upload_location(repo: &RepoName, id: &UploadId) -> String {
    format!("/v2/{repo}/blobs/uploads/{id}")
}

fn upload_response(status: StatusCode, repo: &RepoName, st: &UploadStatus) -> Response<RespBody> {
    let mut r = status_only(status);
    set(&mut r, "Location", &upload_location(repo, &st.id));
    set(
        &mut r,
        "Range",
        &format!("0-{}", st.offset.saturating_sub(1)),
    );
    set(&mut r, "Docker-Upload-UUID", st.id.as_str());
    r
}

fn blob_created(repo: &RepoName, d: &Digest) -> Response<RespBody> {
    let mut r = status_only(StatusCode::CREATED);
    set(&mut r, "Location", &format!("/v2/{repo}/blobs/{d}"));
    set(&mut r, "Docker-Content-Digest", &d.to_string());
    r
}

fn page_size(params: &[(String, String)]) -> Result<Option<usize>, ApiError> {
    query(params, "n")
        .map(|n| {
            n.parse::<usize>()
                .map_err(|_| ApiError::BadPageSize(n.to_owned()))
        })
        .transpose()
}

fn link_next<T>(r: &mut Response<RespBody>, base: &str, n: Option<usize>, page: &Page<T>) {
    if let (Some(n), Some(last)) = (n, &page.next_last) {
        set(
            r,
            "Link",
            &format!("<{base}?n={n}&last={last}>; rel=\"next\""),
        );
    }
}

/// The request body when the client sent one.
fn has_body(body: &Incoming, headers: &HeaderMap) -> bool {
    if body.is_end_stream() {
        return false;
    }
    header_str(headers, header::CONTENT_LENGTH).is_none_or(|v| v.trim() != "0")
}

// ---- listings ----

async fn catalog(state: &AppState, req: &Request<Incoming>) -> HandlerResult {
    let params = query_params(req);
    let n = page_size(&params)?;
    let page = match (&state.access, req.extensions().get::<crate::auth::Caller>()) {
        (Some(ac), Some(caller)) => {
            // Only what the caller may search; filtered before paging so pages stay full.
            let all = state.registry.catalog(None, None).await?.items;
            let client = req
                .extensions()
                .get::<crate::auth::ConnInfo>()
                .map(|c| c.peer.to_string())
                .unwrap_or_default();
            let mut visible = Vec::new();
            for r in all {
                if ac.may_search(&caller.0, r.as_str(), &client).await? {
                    visible.push(r);
                }
            }
            pier_core::paginate(visible, n, query(&params, "last"))
        }
        _ => state.registry.catalog(n, query(&params, "last")).await?,
    };
    let names: Vec<&str> = page.items.iter().map(|r| r.as_str()).collect();
    let body = serde_json::to_vec(&json!({ "repositories": names })).unwrap_or_default();
    let mut r = json_response(StatusCode::OK, body.into(), &Method::GET);
    link_next(&mut r, "/v2/_catalog", n, &page);
    Ok(r)
}

async fn tags(state: &AppState, repo: &RepoName, req: &Request<Incoming>) -> HandlerResult {
    let params = query_params(req);
    let n = page_size(&params)?;
    let page = state.registry.tags(repo, n, query(&params, "last")).await?;
    let tags: Vec<&str> = page.items.iter().map(|t| t.as_str()).collect();
    let body =
        serde_json::to_vec(&json!({ "name": repo.as_str(), "tags": tags })).unwrap_or_default();
    let mut r = json_response(StatusCode::OK, body.into(), &Method::GET);
    link_next(&mut r, &format!("/v2/{repo}/tags/list"), n, &page);
    Ok(r)
}

async fn referrers(
    state: &AppState,
    repo: &RepoName,
    subject: &Digest,
    req: &Request<Incoming>,
) -> HandlerResult {
    let params = query_params(req);
    let filter = query(&params, "artifactType").filter(|s| !s.is_empty());
    let manifests = state.registry.referrers(repo, subject, filter).await?;
    let body = serde_json::to_vec(&json!({
        "schemaVersion": 2,
        "mediaType": media_types::OCI_INDEX,
        "manifests": manifests,
    }))
    .unwrap_or_default();
    let mut r = json_response(StatusCode::OK, body.into(), &Method::GET);
    set(&mut r, "Content-Type", media_types::OCI_INDEX);
    if filter.is_some() {
        set(&mut r, "OCI-Filters-Applied", "artifactType");
    }
    Ok(r)
}

// ---- manifests ----

async fn manifest_get(
    state: &AppState,
    repo: &RepoName,
    reference: &Reference,
    req: &Request<Incoming>,
) -> HandlerResult {
    let m = state.registry.manifest_get(repo, reference).await?;
    state
        .registry
        .admit_pull(repo, reference, &m, &caller(req))
        .await?;
    note_pull(state, repo, reference, req);
    if req.method() == Method::GET
        && let Some(sink) = state.events.as_ref().filter(|s| s.wants_pulls())
    {
        // Pulls are not worth waiting for: recorded in the background.
        let sink = sink.clone();
        let event = ManifestEvent {
            action: ManifestAction::Pulled,
            repository: repo.clone(),
            tag: match reference {
                Reference::Tag(t) => Some(t.clone()),
                Reference::Digest(_) => None,
            },
            digest: Some(m.digest.clone()),
            media_type: Some(m.media_type.clone()),
            size: Some(m.bytes.len() as u64),
            actor: actor(req),
        };
        tokio::spawn(async move {
            if let Err(e) = sink.record(event).await {
                tracing::warn!(error = %e, "recording a pull event failed");
            }
        });
    }
    Ok(manifest_response(&m, req))
}

/// A GET of a manifest is a pull (a HEAD only checks).
fn note_pull(state: &AppState, repo: &RepoName, reference: &Reference, req: &Request<Incoming>) {
    if req.method() == Method::GET
        && let Some(p) = &state.pulls
    {
        p.pulled(repo, reference);
    }
}

/// The authenticated subject of a request, for events.
fn actor(req: &Request<Incoming>) -> Option<String> {
    match &req.extensions().get::<crate::auth::Caller>()?.0 {
        pier_auth::Subject::Anonymous => None,
        pier_auth::Subject::User(i) => Some(i.name.clone()),
        pier_auth::Subject::Robot(r) => Some(r.name.clone()),
    }
}

/// Who a request comes from, for admission policies: the verified subject (anonymous
/// without access control) and the client's address.
fn caller(req: &Request<Incoming>) -> pier_core::Caller {
    if let Some(c) = req.extensions().get::<pier_core::Caller>() {
        return c.clone();
    }
    pier_core::Caller {
        subject: pier_auth::Subject::Anonymous,
        client: req
            .extensions()
            .get::<crate::auth::ConnInfo>()
            .map(|c| c.peer.to_string())
            .unwrap_or_default(),
    }
}

fn manifest_response(m: &ManifestContent, req: &Request<Incoming>) -> Response<RespBody> {
    let head = req.method() == Method::HEAD;
    let cached = not_modified(req, &m.digest);
    let mut r = Response::new(if head || cached {
        empty()
    } else {
        full(m.bytes.clone())
    });
    if cached {
        *r.status_mut() = StatusCode::NOT_MODIFIED;
    }
    set(&mut r, "Content-Type", &m.media_type);
    set(&mut r, "Content-Length", &m.bytes.len().to_string());
    set(&mut r, "Docker-Content-Digest", &m.digest.to_string());
    set(&mut r, "ETag", &etag(&m.digest));
    r
}

async fn manifest_put(
    state: &AppState,
    repo: &RepoName,
    reference: &Reference,
    req: Request<Incoming>,
) -> HandlerResult {
    let declared: Option<u64> =
        header_str(req.headers(), header::CONTENT_LENGTH).and_then(|v| v.parse().ok());
    if declared.is_some_and(|n| n > MAX_MANIFEST_SIZE as u64) {
        return Err(ApiError::ManifestTooLarge);
    }
    let content_type = header_str(req.headers(), header::CONTENT_TYPE).map(str::to_owned);
    let who = actor(&req);
    let by = caller(&req);
    // A manifest (at most 4 MiB) arrives whole within the idle timeout.
    let collected = tokio::time::timeout(
        state.body_pace.idle,
        Limited::new(req.into_body(), MAX_MANIFEST_SIZE).collect(),
    )
    .await
    .map_err(|_| ApiError::Body("the manifest body did not arrive in time".into()))?;
    let bytes = collected
        .map_err(|e| {
            if e.is::<http_body_util::LengthLimitError>() {
                ApiError::ManifestTooLarge
            } else {
                ApiError::Body(e.to_string())
            }
        })?
        .to_bytes();
    let size = bytes.len() as u64;
    let put = state
        .registry
        .manifest_put(repo, reference, content_type.as_deref(), bytes, &by)
        .await?;
    if let Some(sink) = &state.events {
        sink.record(ManifestEvent {
            action: ManifestAction::Pushed,
            repository: repo.clone(),
            tag: match reference {
                Reference::Tag(t) => Some(t.clone()),
                Reference::Digest(_) => None,
            },
            digest: Some(put.digest.clone()),
            media_type: content_type.clone(),
            size: Some(size),
            actor: who,
        })
        .await
        .map_err(ApiError::EventNotRecorded)?;
    }
    let mut r = status_only(StatusCode::CREATED);
    set(
        &mut r,
        "Location",
        &format!("/v2/{repo}/manifests/{}", put.digest),
    );
    set(&mut r, "Docker-Content-Digest", &put.digest.to_string());
    if let Some(s) = &put.subject {
        set(&mut r, "OCI-Subject", &s.to_string());
    }
    Ok(r)
}

// ---- blobs ----

async fn blob_head(state: &AppState, repo: &RepoName, d: &Digest) -> HandlerResult {
    Ok(blob_head_response(
        d,
        state.registry.blob_size(repo, d).await?,
    ))
}

fn blob_head_response(d: &Digest, size: u64) -> Response<RespBody> {
    let mut r = status_only(StatusCode::OK);
    set(&mut r, "Content-Length", &size.to_string());
    set(&mut r, "Content-Type", "application/octet-stream");
    set(&mut r, "Docker-Content-Digest", &d.to_string());
    set(&mut r, "ETag", &etag(d));
    set(&mut r, "Accept-Ranges", "bytes");
    r
}

async fn blob_get(
    state: &AppState,
    repo: &RepoName,
    d: &Digest,
    req: &Request<Incoming>,
) -> HandlerResult {
    let range = match header_str(req.headers(), header::RANGE) {
        Some(h) => parse_range(h)?,
        None => None,
    };
    if let Some(url) = state.registry.blob_redirect(repo, d).await? {
        return Ok(blob_read_response(d, BlobRead::Redirect(url)));
    }
    if range.is_none() && not_modified(req, d) {
        state.registry.blob_size(repo, d).await?;
        let mut r = status_only(StatusCode::NOT_MODIFIED);
        set(&mut r, "ETag", &etag(d));
        return Ok(r);
    }
    Ok(blob_read_response(
        d,
        state.registry.blob_read(repo, d, range).await?,
    ))
}

fn blob_read_response(d: &Digest, read: BlobRead) -> Response<RespBody> {
    match read {
        BlobRead::Redirect(url) => {
            let mut r = status_only(StatusCode::TEMPORARY_REDIRECT);
            set(&mut r, "Location", &url);
            set(&mut r, "Docker-Content-Digest", &d.to_string());
            r
        }
        BlobRead::Content { size, range, body } => {
            let mut r = Response::new(match body {
                BlobBody::Bytes(b) => full(b),
                BlobBody::Stream(s) => stream(s),
            });
            match range {
                Some((s, e)) => {
                    *r.status_mut() = StatusCode::PARTIAL_CONTENT;
                    set(&mut r, "Content-Range", &format!("bytes {s}-{e}/{size}"));
                    set(&mut r, "Content-Length", &(e - s + 1).to_string());
                }
                None => set(&mut r, "Content-Length", &size.to_string()),
            }
            set(&mut r, "Content-Type", "application/octet-stream");
            set(&mut r, "Docker-Content-Digest", &d.to_string());
            set(&mut r, "ETag", &etag(d));
            set(&mut r, "Accept-Ranges", "bytes");
            r
        }
    }
}

// ---- uploads ----

fn parse_digest_param(v: &str) -> Result<Digest, ApiError> {
    v.parse().map_err(ApiError::Digest)
}

async fn upload_start(state: &AppState, repo: &RepoName, req: Request<Incoming>) -> HandlerResult {
    let params = query_params(&req);
    let may_mount = req
        .extensions()
        .get::<crate::auth::MountRefused>()
        .is_none();
    if let Some(mount) = query(&params, "mount") {
        let d = parse_digest_param(mount)?;
        if let Some(from) = query(&params, "from").filter(|_| may_mount) {
            let from: RepoName = from.parse().map_err(ApiError::Name)?;
            if state.registry.mount(repo, &from, &d).await?.is_some() {
                return Ok(blob_created(repo, &d));
            }
        }
    } else if let Some(digest) = query(&params, "digest") {
        let d = parse_digest_param(digest)?;
        // The size is known: over the project's quota, nothing is read.
        if let Some(size) =
            header_str(req.headers(), header::CONTENT_LENGTH).and_then(|v| v.parse::<u64>().ok())
        {
            state.registry.quota_allows_blob(repo, &d, size).await?;
        }
        let body = request_stream(req.into_body(), state.body_pace);
        state.registry.upload_monolithic(repo, &d, body).await?;
        return Ok(blob_created(repo, &d));
    }
    let st = state.registry.upload_start(repo).await?;
    Ok(upload_response(StatusCode::ACCEPTED, repo, &st))
}

/// The chunk's declared start, checking that its range matches its length.
fn chunk_start(headers: &HeaderMap) -> Result<Option<u64>, ApiError> {
    let Some(cr) = header_str(headers, header::CONTENT_RANGE) else {
        return Ok(None);
    };
    let (start, end) = parse_content_range(cr)?;
    if let Some(len) =
        header_str(headers, header::CONTENT_LENGTH).and_then(|v| v.parse::<u64>().ok())
        && len != end - start + 1
    {
        return Err(ApiError::ChunkLengthMismatch { start, end, len });
    }
    Ok(Some(start))
}

async fn upload_patch(
    state: &AppState,
    repo: &RepoName,
    id: &UploadId,
    req: Request<Incoming>,
) -> HandlerResult {
    let start = chunk_start(req.headers())?;
    let body = request_stream(req.into_body(), state.body_pace);
    let st = state.registry.upload_append(repo, id, start, body).await?;
    Ok(upload_response(StatusCode::ACCEPTED, repo, &st))
}

async fn upload_put(
    state: &AppState,
    repo: &RepoName,
    id: &UploadId,
    req: Request<Incoming>,
) -> HandlerResult {
    let params = query_params(&req);
    let d = parse_digest_param(query(&params, "digest").ok_or(ApiError::MissingDigest)?)?;
    let last_chunk = if has_body(req.body(), req.headers()) {
        let start = chunk_start(req.headers())?;
        Some((start, request_stream(req.into_body(), state.body_pace)))
    } else {
        None
    };
    state
        .registry
        .upload_finish(repo, id, &d, last_chunk)
        .await?;
    Ok(blob_created(repo, &d))
}
