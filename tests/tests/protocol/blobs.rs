//! Blob GET/HEAD/Range/DELETE and cross-repository mounts.

use super::*;

const REPO: &str = "test/blobs";

#[test]
fn blob_get_and_head() {
    let p = TestPier::start();
    let data = random_bytes(65_537);
    let digest = push_blob(p.addr, REPO, &data);

    let r = head_blob(p.addr, REPO, &digest);
    r.expect_status(200, "HEAD blob");
    assert_eq!(
        r.content_length(),
        Some(data.len() as u64),
        "HEAD Content-Length\n{r}"
    );
    r.expect_header("docker-content-digest", &digest, "HEAD blob");
    let etag = r.require_header("etag", "HEAD blob");
    assert!(
        etag.contains(&digest),
        "ETag {etag:?} should contain {digest}"
    );
    assert!(r.body.is_empty());

    let r = get_blob(p.addr, REPO, &digest);
    r.expect_status(200, "GET blob");
    assert_eq!(
        r.content_length(),
        Some(data.len() as u64),
        "GET Content-Length\n{r}"
    );
    r.expect_header("docker-content-digest", &digest, "GET blob");
    let etag = r.require_header("etag", "GET blob");
    assert!(
        etag.contains(&digest),
        "ETag {etag:?} should contain {digest}"
    );
    assert!(r.body == data, "GET blob body differs");
}

#[test]
fn blob_ranges() {
    let p = TestPier::start();
    let data = random_bytes(100);
    let digest = push_blob(p.addr, REPO, &data);
    let path = format!("/v2/{REPO}/blobs/{digest}");
    for (range, from, to) in [
        ("bytes=0-9", 0usize, 9usize),
        ("bytes=10-", 10, 99),
        ("bytes=-5", 95, 99),
        ("bytes=90-500", 90, 99),
        ("bytes=99-99", 99, 99),
    ] {
        let r = p.request("GET", &path, &[("Range", range)], b"");
        r.expect_status(206, &format!("GET Range {range}"));
        r.expect_header("content-range", &format!("bytes {from}-{to}/100"), range);
        assert_eq!(
            r.content_length(),
            Some((to - from + 1) as u64),
            "{range}: Content-Length\n{r}"
        );
        assert_eq!(r.body, &data[from..=to], "{range}: body");
    }
    let r = p.request("GET", &path, &[("Range", "bytes=1000000-")], b"");
    r.expect_status(416, "unsatisfiable Range");
    r.expect_header("content-range", "bytes */100", "unsatisfiable Range");

    for unsatisfiable in ["bytes=100-", "bytes=-0"] {
        let r = p.request("GET", &path, &[("Range", unsatisfiable)], b"");
        r.expect_status(416, unsatisfiable);
        r.expect_header("content-range", "bytes */100", unsatisfiable);
    }
    for malformed in ["bytes=abc", "bytes=5-2", "bytes="] {
        let r = p.request("GET", &path, &[("Range", malformed)], b"");
        r.expect_error(
            416,
            "RANGE_INVALID",
            &format!("malformed Range {malformed:?}"),
        );
    }
    // HEAD ignores Range (RFC 9110 defines Range for GET only)
    let r = p.request("HEAD", &path, &[("Range", "bytes=0-9")], b"");
    assert!(r.status == 200 || r.status == 206, "HEAD with Range\n{r}");
}

#[test]
fn blob_unknown() {
    let p = TestPier::start();
    push_blob(p.addr, REPO, b"exists");
    let missing = sha256_digest(b"missing");
    assert_no_blob(p.addr, REPO, &missing);
    let r = get_blob(p.addr, REPO, "sha256:xyz");
    r.expect_error(400, "DIGEST_INVALID", "GET blob with a malformed digest");
}

#[test]
fn blob_is_scoped_to_repository_until_mounted() {
    let p = TestPier::start();
    let data = random_bytes(5000);
    let digest = push_blob(p.addr, "repo/a", &data);
    push_blob(p.addr, "repo/b", b"make b exist");
    assert_no_blob(p.addr, "repo/b", &digest);

    let r = p.request(
        "POST",
        &format!("/v2/repo/b/blobs/uploads/?mount={digest}&from=repo/a"),
        &[],
        b"",
    );
    r.expect_status(201, "mount from repo/a");
    assert_eq!(
        location_path(&r),
        format!("/v2/repo/b/blobs/{digest}"),
        "mount Location\n{r}"
    );
    r.expect_header("docker-content-digest", &digest, "mount");
    assert_blob(p.addr, "repo/b", &digest, &data);
    assert_blob(p.addr, "repo/a", &digest, &data);
    assert_eq!(
        files_with(&p.blobs_dir(), &data).len(),
        1,
        "a mount must not copy the blob"
    );
}

#[test]
fn mount_falls_back_to_upload_session() {
    let p = TestPier::start();
    let data = random_bytes(3000);
    // the blob exists in the registry, but not in the repository named by `from`
    let digest = push_blob(p.addr, "holder", &data);
    push_blob(p.addr, "lacking", b"lacking exists");
    for from in ["lacking", "never/pushed"] {
        let r = p.request(
            "POST",
            &format!("/v2/target/blobs/uploads/?mount={digest}&from={from}"),
            &[],
            b"",
        );
        r.expect_status(202, &format!("mount from {from}, which lacks the blob"));
        let loc = location_path(&r);
        assert!(
            loc.starts_with("/v2/target/blobs/uploads/"),
            "fallback Location {loc:?}\n{r}"
        );
        assert_no_blob(p.addr, "target", &digest);
        let r = upload_status(p.addr, &loc);
        r.expect_status(204, "the fallback session is usable");
        http::delete(p.addr, &loc).expect_status(204, "cancel fallback session");
    }
    // a fallback session completes like any other
    let r = p.request(
        "POST",
        &format!("/v2/target/blobs/uploads/?mount={digest}&from=lacking"),
        &[],
        b"",
    );
    r.expect_status(202, "mount fallback");
    put_upload(p.addr, &location_path(&r), &digest, &data)
        .expect_status(201, "PUT into fallback session");
    assert_blob(p.addr, "target", &digest, &data);
    // mounting an unknown digest from a repo that exists also falls back
    let unknown = sha256_digest(b"unknown");
    let r = p.request(
        "POST",
        &format!("/v2/target/blobs/uploads/?mount={unknown}&from=holder"),
        &[],
        b"",
    );
    r.expect_status(202, "mount of an unknown digest");
}

#[test]
fn blob_delete() {
    let p = TestPier::start();
    let data = random_bytes(2000);
    let digest = push_blob(p.addr, "del/a", &data);
    push_blob(p.addr, "del/b", &data);
    let r = http::delete(p.addr, &format!("/v2/del/a/blobs/{digest}"));
    r.expect_status(202, "DELETE blob");
    assert_no_blob(p.addr, "del/a", &digest);
    http::delete(p.addr, &format!("/v2/del/a/blobs/{digest}")).expect_error(
        404,
        "BLOB_UNKNOWN",
        "DELETE blob again",
    );
    // other repositories keep their link
    assert_blob(p.addr, "del/b", &digest, &data);
    // and it can be pushed again
    push_blob(p.addr, "del/a", &data);
    assert_blob(p.addr, "del/a", &digest, &data);
}
