//! HTTP-level tests of Pier's OCI Distribution Spec 1.1 API (and its admin listener,
//! TLS, shutdown, restart and `pier gc`) against a real `pier` process.
//!
//! Needs the binary: `cargo build -p pier-server --bin pier`, then
//! `cargo test -p pier-e2e --test protocol`.

#[path = "protocol/admin.rs"]
mod admin;
#[path = "protocol/blobs.rs"]
mod blobs;
#[path = "protocol/concurrency.rs"]
mod concurrency;
#[path = "protocol/config.rs"]
mod config;
#[path = "protocol/gc.rs"]
mod gc;
#[path = "protocol/lifecycle.rs"]
mod lifecycle;
#[path = "protocol/listing.rs"]
mod listing;
#[path = "protocol/manifests.rs"]
mod manifests;
#[path = "protocol/names.rs"]
mod names;
#[path = "protocol/referrers.rs"]
mod referrers;
#[path = "protocol/tls.rs"]
mod tls;
#[path = "protocol/uploads.rs"]
mod uploads;

use std::net::SocketAddr;
use std::path::Path;

use pier_e2e::http::{self, Response};
use pier_e2e::*;

/// `PATCH` one chunk at `start` with `Content-Range: start-end`.
pub fn patch_chunk(addr: SocketAddr, loc: &str, start: usize, data: &[u8]) -> Response {
    let range = format!("{}-{}", start, start + data.len() - 1);
    let len = data.len().to_string();
    http::request(
        addr,
        "PATCH",
        loc,
        &[
            ("Content-Type", "application/octet-stream"),
            ("Content-Range", &range),
            ("Content-Length", &len),
        ],
        data,
    )
}

/// `PUT <loc>?digest=<digest>` with `body` (often empty).
pub fn put_upload(addr: SocketAddr, loc: &str, digest: &str, body: &[u8]) -> Response {
    http::request(
        addr,
        "PUT",
        &with_query(loc, &format!("digest={digest}")),
        &[("Content-Type", "application/octet-stream")],
        body,
    )
}

/// `GET /v2/<repo>/blobs/<digest>`.
pub fn get_blob(addr: SocketAddr, repo: &str, digest: &str) -> Response {
    http::get(addr, &format!("/v2/{repo}/blobs/{digest}"))
}

/// `HEAD /v2/<repo>/blobs/<digest>`.
pub fn head_blob(addr: SocketAddr, repo: &str, digest: &str) -> Response {
    http::head(addr, &format!("/v2/{repo}/blobs/{digest}"))
}

/// Asserts the blob is served in full under `repo`.
#[track_caller]
pub fn assert_blob(addr: SocketAddr, repo: &str, digest: &str, data: &[u8]) {
    let r = get_blob(addr, repo, digest);
    r.expect_status(200, &format!("GET blob {digest} in {repo}"));
    assert!(
        r.body == data,
        "GET blob {digest} in {repo}: body differs ({} bytes, want {})",
        r.body.len(),
        data.len()
    );
    r.expect_header("docker-content-digest", digest, "GET blob");
}

/// Asserts the blob is unknown under `repo` (HEAD 404, GET 404 BLOB_UNKNOWN).
#[track_caller]
pub fn assert_no_blob(addr: SocketAddr, repo: &str, digest: &str) {
    head_blob(addr, repo, digest).expect_status(404, &format!("HEAD blob {digest} in {repo}"));
    get_blob(addr, repo, digest).expect_error(
        404,
        "BLOB_UNKNOWN",
        &format!("GET blob {digest} in {repo}"),
    );
}

/// Asserts no file under `dir` holds exactly `data` (nothing partial or committed left).
#[track_caller]
pub fn assert_no_file_with(dir: &Path, data: &[u8], what: &str) {
    for f in files_under(dir) {
        let Ok(meta) = std::fs::metadata(&f) else {
            continue;
        };
        if meta.len() == data.len() as u64 && std::fs::read(&f).is_ok_and(|b| b == data) {
            panic!("{what}: {} still holds the uploaded bytes", f.display());
        }
    }
}

/// The files under `dir` whose content is exactly `data`.
pub fn files_with(dir: &Path, data: &[u8]) -> Vec<std::path::PathBuf> {
    files_under(dir)
        .into_iter()
        .filter(|f| {
            std::fs::metadata(f).is_ok_and(|m| m.len() == data.len() as u64)
                && std::fs::read(f).is_ok_and(|b| b == data)
        })
        .collect()
}

/// The `Range` header of an upload response as `(0, last)`.
#[track_caller]
pub fn upload_range(r: &Response) -> (u64, u64) {
    let v = r.require_header("range", "upload Range");
    let (a, b) = v
        .split_once('-')
        .unwrap_or_else(|| panic!("Range {v:?} is not start-end\n{r}"));
    (
        a.trim()
            .parse()
            .unwrap_or_else(|_| panic!("Range {v:?}\n{r}")),
        b.trim()
            .parse()
            .unwrap_or_else(|_| panic!("Range {v:?}\n{r}")),
    )
}

/// `GET <upload loc>`: the session's status.
pub fn upload_status(addr: SocketAddr, loc: &str) -> Response {
    http::get(addr, loc)
}

/// JSON bytes of an OCI image manifest over existing blobs.
pub fn oci_manifest(config: &[u8], layers: &[&[u8]], extra: serde_json::Value) -> Vec<u8> {
    let mut m = serde_json::json!({
        "schemaVersion": 2,
        "mediaType": media::OCI_MANIFEST,
        "config": descriptor(media::OCI_CONFIG, config),
        "layers": layers.iter().map(|l| descriptor(media::OCI_LAYER, l)).collect::<Vec<_>>(),
    });
    if let serde_json::Value::Object(extra) = extra {
        for (k, v) in extra {
            m[k] = v;
        }
    }
    serde_json::to_vec(&m).unwrap()
}

/// Parses `<url>; rel="next"`; returns the URL (as a request target).
#[track_caller]
pub fn next_link(r: &Response) -> Option<String> {
    let v = r.header("link")?;
    let v = v.trim();
    assert!(v.starts_with('<'), "Link {v:?} does not start with <\n{r}");
    let end = v
        .find('>')
        .unwrap_or_else(|| panic!("Link {v:?} has no >\n{r}"));
    let rest = v[end + 1..].replace(' ', "");
    assert!(
        rest.contains(";rel=\"next\"") || rest.contains(";rel=next"),
        "Link {v:?} is not rel=\"next\"\n{r}"
    );
    Some(strip_origin(&v[1..end]))
}

/// The query parameters of a request target.
pub fn query_params(target: &str) -> Vec<(String, String)> {
    target
        .split_once('?')
        .map(|(_, q)| {
            q.split('&')
                .filter(|kv| !kv.is_empty())
                .map(|kv| {
                    let (k, v) = kv.split_once('=').unwrap_or((kv, ""));
                    (k.to_owned(), v.to_owned())
                })
                .collect()
        })
        .unwrap_or_default()
}
