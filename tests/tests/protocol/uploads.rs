//! Blob uploads: monolithic, POST+PUT, chunked, streamed, status, cancel, errors.

use super::*;

const REPO: &str = "test/uploads";

#[test]
fn api_version_check() {
    let p = TestPier::start();
    let r = p.get("/v2/");
    r.expect_status(200, "GET /v2/");
    r.expect_header(
        "docker-distribution-api-version",
        "registry/2.0",
        "GET /v2/",
    );
    let r = p.get("/v2");
    assert!(
        r.status == 200 || (300..400).contains(&r.status),
        "GET /v2 (no slash) should answer 200 or redirect to /v2/\n{r}"
    );
}

#[test]
fn monolithic_post_with_digest() {
    let p = TestPier::start();
    let data = random_bytes(70_000);
    let digest = sha256_digest(&data);
    let r = p.request(
        "POST",
        &format!("/v2/{REPO}/blobs/uploads/?digest={digest}"),
        &[("Content-Type", "application/octet-stream")],
        &data,
    );
    r.expect_status(201, "monolithic POST ?digest=");
    assert_eq!(
        location_path(&r),
        format!("/v2/{REPO}/blobs/{digest}"),
        "Location of a monolithic upload\n{r}"
    );
    r.expect_header("docker-content-digest", &digest, "monolithic POST");
    assert_blob(p.addr, REPO, &digest, &data);
    // pushing it again is idempotent
    let r = p.request(
        "POST",
        &format!("/v2/{REPO}/blobs/uploads/?digest={digest}"),
        &[("Content-Type", "application/octet-stream")],
        &data,
    );
    r.expect_status(201, "second monolithic POST of the same blob");
    assert_eq!(
        files_with(&p.blobs_dir(), &data).len(),
        1,
        "one stored copy"
    );
}

#[test]
fn empty_blob_monolithic() {
    let p = TestPier::start();
    let digest = sha256_digest(b"");
    let r = p.request(
        "POST",
        &format!("/v2/{REPO}/blobs/uploads/?digest={digest}"),
        &[("Content-Type", "application/octet-stream")],
        b"",
    );
    r.expect_status(201, "monolithic POST of the empty blob");
    let r = head_blob(p.addr, REPO, &digest);
    r.expect_status(200, "HEAD empty blob");
    assert_eq!(r.content_length(), Some(0), "HEAD empty blob length\n{r}");
    assert_blob(p.addr, REPO, &digest, b"");
}

#[test]
fn post_then_put_with_body() {
    let p = TestPier::start();
    let data = random_bytes(12_345);
    let digest = sha256_digest(&data);
    let r = p.request("POST", &format!("/v2/{REPO}/blobs/uploads/"), &[], b"");
    r.expect_status(202, "POST start upload");
    let loc = location_path(&r);
    assert!(
        loc.starts_with(&format!("/v2/{REPO}/blobs/uploads/")),
        "upload Location {loc:?} must be under /v2/{REPO}/blobs/uploads/\n{r}"
    );
    let uuid = r
        .require_header("docker-upload-uuid", "POST start upload")
        .to_owned();
    assert!(
        !uuid.is_empty() && loc.contains(&uuid),
        "Location {loc:?} should contain the upload UUID {uuid:?}"
    );
    let r = put_upload(p.addr, &loc, &digest, &data);
    r.expect_status(201, "PUT ?digest= with the whole body");
    assert_eq!(
        location_path(&r),
        format!("/v2/{REPO}/blobs/{digest}"),
        "PUT Location\n{r}"
    );
    r.expect_header("docker-content-digest", &digest, "PUT");
    assert_blob(p.addr, REPO, &digest, &data);
    upload_status(p.addr, &loc).expect_error(404, "BLOB_UPLOAD_UNKNOWN", "GET a finished upload");
}

#[test]
fn chunked_patch_with_content_range() {
    let p = TestPier::start();
    let data = random_bytes(300_057);
    let digest = sha256_digest(&data);
    let r = p.request("POST", &format!("/v2/{REPO}/blobs/uploads/"), &[], b"");
    r.expect_status(202, "POST start upload");
    let uuid = r.require_header("docker-upload-uuid", "POST").to_owned();
    let mut loc = location_path(&r);
    let mut off = 0;
    for chunk in [&data[..100_000], &data[100_000..200_000], &data[200_000..]] {
        let r = patch_chunk(p.addr, &loc, off, chunk);
        r.expect_status(202, &format!("PATCH chunk at {off}"));
        off += chunk.len();
        assert_eq!(upload_range(&r), (0, off as u64 - 1), "PATCH Range\n{r}");
        r.expect_header("docker-upload-uuid", &uuid, "PATCH");
        loc = location_path(&r);
        assert!(
            loc.starts_with(&format!("/v2/{REPO}/blobs/uploads/")),
            "PATCH Location {loc:?}"
        );
    }
    let r = upload_status(p.addr, &loc);
    r.expect_status(204, "GET upload status");
    assert_eq!(
        upload_range(&r),
        (0, data.len() as u64 - 1),
        "status Range\n{r}"
    );
    r.expect_header("docker-upload-uuid", &uuid, "GET upload status");
    let sloc = location_path(&r);
    assert!(
        sloc.starts_with(&format!("/v2/{REPO}/blobs/uploads/")),
        "status Location {sloc:?}"
    );
    let r = put_upload(p.addr, &sloc, &digest, b"");
    r.expect_status(201, "PUT ?digest= closing a chunked upload");
    assert_eq!(
        location_path(&r),
        format!("/v2/{REPO}/blobs/{digest}"),
        "PUT Location\n{r}"
    );
    r.expect_header("docker-content-digest", &digest, "PUT");
    assert_blob(p.addr, REPO, &digest, &data);
    let r = head_blob(p.addr, REPO, &digest);
    assert_eq!(
        r.content_length(),
        Some(data.len() as u64),
        "HEAD length\n{r}"
    );
}

#[test]
fn streamed_patch_without_content_range() {
    let p = TestPier::start();
    let data = random_bytes(200_000);
    let digest = sha256_digest(&data);
    let loc = start_upload(p.addr, REPO);
    // first part with Content-Length, no Content-Range
    let r = p.request(
        "PATCH",
        &loc,
        &[("Content-Type", "application/octet-stream")],
        &data[..120_000],
    );
    r.expect_status(202, "streamed PATCH (Content-Length)");
    assert_eq!(
        upload_range(&r),
        (0, 119_999),
        "Range after first streamed PATCH\n{r}"
    );
    let loc = location_path(&r);
    // second part with a chunked request body, as docker streams layers
    let r = p.request(
        "PATCH",
        &loc,
        &[
            ("Content-Type", "application/octet-stream"),
            ("Transfer-Encoding", "chunked"),
        ],
        &data[120_000..],
    );
    r.expect_status(202, "streamed PATCH (chunked transfer-encoding)");
    assert_eq!(
        upload_range(&r),
        (0, 199_999),
        "Range after second streamed PATCH\n{r}"
    );
    let loc = location_path(&r);
    put_upload(p.addr, &loc, &digest, b"").expect_status(201, "PUT after streamed PATCHes");
    assert_blob(p.addr, REPO, &digest, &data);
}

#[test]
fn put_carries_final_chunk() {
    let p = TestPier::start();
    let data = random_bytes(50_000);
    let digest = sha256_digest(&data);
    let loc = start_upload(p.addr, REPO);
    let r = patch_chunk(p.addr, &loc, 0, &data[..30_000]);
    r.expect_status(202, "PATCH first part");
    let loc = location_path(&r);
    let r = put_upload(p.addr, &loc, &digest, &data[30_000..]);
    r.expect_status(201, "PUT with the final chunk");
    assert_blob(p.addr, REPO, &digest, &data);
}

#[test]
fn upload_status_and_cancel() {
    let p = TestPier::start();
    let data = random_bytes(10);
    let r = p.request("POST", &format!("/v2/{REPO}/blobs/uploads/"), &[], b"");
    r.expect_status(202, "POST");
    let uuid = r.require_header("docker-upload-uuid", "POST").to_owned();
    let loc = location_path(&r);
    let r = patch_chunk(p.addr, &loc, 0, &data);
    r.expect_status(202, "PATCH");
    let loc = location_path(&r);
    let r = upload_status(p.addr, &loc);
    r.expect_status(204, "GET upload status");
    assert_eq!(r.header("range"), Some("0-9"), "status Range\n{r}");
    r.expect_header("docker-upload-uuid", &uuid, "status");
    assert!(
        r.header("location").is_some(),
        "status without Location\n{r}"
    );
    assert!(r.body.is_empty(), "204 with a body\n{r}");

    let r = http::delete(p.addr, &loc);
    r.expect_status(204, "DELETE upload");
    upload_status(p.addr, &loc).expect_error(404, "BLOB_UPLOAD_UNKNOWN", "GET cancelled upload");
    patch_chunk(p.addr, &loc, 10, b"more").expect_error(
        404,
        "BLOB_UPLOAD_UNKNOWN",
        "PATCH cancelled upload",
    );
    put_upload(p.addr, &loc, &sha256_digest(&data), b"").expect_error(
        404,
        "BLOB_UPLOAD_UNKNOWN",
        "PUT cancelled upload",
    );
    http::delete(p.addr, &loc).expect_error(
        404,
        "BLOB_UPLOAD_UNKNOWN",
        "DELETE cancelled upload again",
    );
    assert_no_blob(p.addr, REPO, &sha256_digest(&data));
    let leftovers: Vec<_> = paths_under(&p.root)
        .into_iter()
        .filter(|x| x.to_string_lossy().contains(&uuid))
        .collect();
    assert!(leftovers.is_empty(), "cancelled upload left {leftovers:?}");
    assert!(
        files_under(&p.blobs_dir()).is_empty(),
        "blobs after a cancelled upload: {:?}",
        files_under(&p.blobs_dir())
    );
}

#[test]
fn out_of_order_and_repeated_chunks_416() {
    let p = TestPier::start();
    let data = random_bytes(30);
    let loc = start_upload(p.addr, REPO);
    let r = patch_chunk(p.addr, &loc, 0, &data[..10]);
    r.expect_status(202, "PATCH 0-9");
    let loc = location_path(&r);

    let r = patch_chunk(p.addr, &loc, 0, &data[..10]);
    r.expect_status(416, "repeated PATCH 0-9");
    let r = patch_chunk(p.addr, &loc, 20, &data[20..30]);
    r.expect_status(416, "PATCH 20-29 leaving a gap");
    let r = patch_chunk(p.addr, &loc, 5, &data[5..15]);
    r.expect_status(416, "PATCH 5-14 overlapping");

    // a Content-Range that does not match the body length
    let r = http::request(
        p.addr,
        "PATCH",
        &loc,
        &[
            ("Content-Type", "application/octet-stream"),
            ("Content-Range", "10-29"),
        ],
        &data[10..20],
    );
    r.expect_status(416, "PATCH whose Content-Range is longer than its body");
    // a closing PUT whose final chunk leaves a gap
    let r = http::request(
        p.addr,
        "PUT",
        &with_query(&loc, &format!("digest={}", sha256_digest(&data))),
        &[
            ("Content-Type", "application/octet-stream"),
            ("Content-Range", "20-29"),
        ],
        &data[20..30],
    );
    r.expect_status(416, "PUT whose final chunk leaves a gap");
    let r = upload_status(p.addr, &loc);
    r.expect_status(204, "status after refused chunks");
    assert_eq!(
        r.header("range"),
        Some("0-9"),
        "refused chunks must not move the offset\n{r}"
    );

    let r = patch_chunk(p.addr, &loc, 10, &data[10..20]);
    r.expect_status(202, "PATCH 10-19 after refused chunks");
    assert_eq!(r.header("range"), Some("0-19"), "Range\n{r}");
    let loc = location_path(&r);
    let r = patch_chunk(p.addr, &loc, 20, &data[20..30]);
    r.expect_status(202, "PATCH 20-29");
    let loc = location_path(&r);
    let digest = sha256_digest(&data);
    put_upload(p.addr, &loc, &digest, b"").expect_status(201, "PUT");
    assert_blob(p.addr, REPO, &digest, &data);
}

#[test]
fn put_with_wrong_digest_leaves_nothing() {
    let p = TestPier::start();
    let data = random_bytes(40_000);
    let real = sha256_digest(&data);
    let claimed = sha256_digest(b"something else");
    let loc = start_upload(p.addr, REPO);
    let r = patch_chunk(p.addr, &loc, 0, &data);
    r.expect_status(202, "PATCH");
    let loc = location_path(&r);
    put_upload(p.addr, &loc, &claimed, b"").expect_error(
        400,
        "DIGEST_INVALID",
        "PUT with a wrong digest",
    );
    assert_no_blob(p.addr, REPO, &claimed);
    assert_no_blob(p.addr, REPO, &real);
    upload_status(p.addr, &loc).expect_error(
        404,
        "BLOB_UPLOAD_UNKNOWN",
        "GET upload after a rejected PUT",
    );
    assert!(
        files_under(&p.blobs_dir()).is_empty(),
        "stray blobs: {:?}",
        files_under(&p.blobs_dir())
    );
    assert_no_file_with(&p.root, &data, "after a rejected PUT");

    // monolithic with a wrong digest
    let r = p.request(
        "POST",
        &format!("/v2/{REPO}/blobs/uploads/?digest={claimed}"),
        &[("Content-Type", "application/octet-stream")],
        &data,
    );
    r.expect_error(400, "DIGEST_INVALID", "monolithic POST with a wrong digest");
    assert_no_blob(p.addr, REPO, &claimed);
    assert_no_blob(p.addr, REPO, &real);
    assert!(
        files_under(&p.blobs_dir()).is_empty(),
        "stray blobs: {:?}",
        files_under(&p.blobs_dir())
    );
    assert_no_file_with(&p.root, &data, "after a rejected monolithic POST");
}

#[test]
fn put_with_malformed_or_missing_digest() {
    let p = TestPier::start();
    let data = random_bytes(100);
    for (what, query) in [
        ("missing digest", None),
        ("short hex", Some("sha256:abc")),
        (
            "not hex",
            Some("sha256:zzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzz"),
        ),
        ("no algorithm", Some("notadigest")),
        (
            "uppercase hex",
            Some("sha256:E3B0C44298FC1C149AFBF4C8996FB92427AE41E4649B934CA495991B7852B855"),
        ),
    ] {
        let loc = start_upload(p.addr, REPO);
        let r = patch_chunk(p.addr, &loc, 0, &data);
        r.expect_status(202, "PATCH");
        let loc = location_path(&r);
        let target = match query {
            Some(d) => with_query(&loc, &format!("digest={d}")),
            None => loc.clone(),
        };
        p.request(
            "PUT",
            &target,
            &[("Content-Type", "application/octet-stream")],
            b"",
        )
        .expect_error(400, "DIGEST_INVALID", &format!("PUT with {what}"));
    }
    let r = p.request(
        "POST",
        &format!("/v2/{REPO}/blobs/uploads/?digest=sha256:1234"),
        &[("Content-Type", "application/octet-stream")],
        &data,
    );
    r.expect_error(
        400,
        "DIGEST_INVALID",
        "monolithic POST with a malformed digest",
    );
    assert!(
        files_under(&p.blobs_dir()).is_empty(),
        "stray blobs: {:?}",
        files_under(&p.blobs_dir())
    );
}

#[test]
fn unknown_upload_id() {
    let p = TestPier::start();
    // make the repository exist
    push_blob(p.addr, REPO, b"x");
    for id in [
        "3f0b6c8e-6a4f-4c52-9a49-0d1b7d0e9f11",
        "nope",
        "AAAA",
        "..",
        "%2e%2e",
        "..%2F..%2Fx",
    ] {
        let loc = format!("/v2/{REPO}/blobs/uploads/{id}");
        upload_status(p.addr, &loc).expect_error(
            404,
            "BLOB_UPLOAD_UNKNOWN",
            &format!("GET upload {id}"),
        );
        patch_chunk(p.addr, &loc, 0, b"abc").expect_error(
            404,
            "BLOB_UPLOAD_UNKNOWN",
            &format!("PATCH upload {id}"),
        );
        put_upload(p.addr, &loc, &sha256_digest(b"abc"), b"abc").expect_error(
            404,
            "BLOB_UPLOAD_UNKNOWN",
            &format!("PUT upload {id}"),
        );
        http::delete(p.addr, &loc).expect_error(
            404,
            "BLOB_UPLOAD_UNKNOWN",
            &format!("DELETE upload {id}"),
        );
    }
    assert_no_blob(p.addr, REPO, &sha256_digest(b"abc"));
}

#[test]
fn upload_id_is_bound_to_its_repository() {
    let p = TestPier::start();
    let data = random_bytes(1000);
    let digest = sha256_digest(&data);
    push_blob(p.addr, "other/repo", b"make other/repo exist");
    let loc = start_upload(p.addr, REPO);
    let r = patch_chunk(p.addr, &loc, 0, &data[..500]);
    r.expect_status(202, "PATCH");
    let loc = location_path(&r);
    let foreign = loc.replacen(&format!("/v2/{REPO}/"), "/v2/other/repo/", 1);
    assert_ne!(foreign, loc);
    upload_status(p.addr, &foreign).expect_error(
        404,
        "BLOB_UPLOAD_UNKNOWN",
        "GET upload via another repo",
    );
    patch_chunk(p.addr, &foreign, 500, &data[500..]).expect_error(
        404,
        "BLOB_UPLOAD_UNKNOWN",
        "PATCH upload via another repo",
    );
    put_upload(p.addr, &foreign, &digest, &data[500..]).expect_error(
        404,
        "BLOB_UPLOAD_UNKNOWN",
        "PUT upload via another repo",
    );
    http::delete(p.addr, &foreign).expect_error(
        404,
        "BLOB_UPLOAD_UNKNOWN",
        "DELETE upload via another repo",
    );
    assert_no_blob(p.addr, "other/repo", &digest);
    // the session is untouched in its own repository
    let r = upload_status(p.addr, &loc);
    r.expect_status(204, "GET upload in its own repo");
    assert_eq!(r.header("range"), Some("0-499"), "Range\n{r}");
    let r = patch_chunk(p.addr, &loc, 500, &data[500..]);
    r.expect_status(202, "PATCH in own repo");
    put_upload(p.addr, &location_path(&r), &digest, b"").expect_status(201, "PUT in own repo");
    assert_blob(p.addr, REPO, &digest, &data);
    assert_no_blob(p.addr, "other/repo", &digest);
}

#[test]
fn sha512_end_to_end() {
    let p = TestPier::start();
    let data = random_bytes(33_333);
    let digest = sha512_digest(&data);
    let r = p.request(
        "POST",
        &format!("/v2/{REPO}/blobs/uploads/?digest={digest}"),
        &[("Content-Type", "application/octet-stream")],
        &data,
    );
    r.expect_status(201, "monolithic sha512 push");
    assert_eq!(
        location_path(&r),
        format!("/v2/{REPO}/blobs/{digest}"),
        "Location\n{r}"
    );
    assert_blob(p.addr, REPO, &digest, &data);
    let r = head_blob(p.addr, REPO, &digest);
    r.expect_status(200, "HEAD sha512 blob");
    r.expect_header("docker-content-digest", &digest, "HEAD sha512 blob");
    assert_eq!(
        r.content_length(),
        Some(data.len() as u64),
        "HEAD length\n{r}"
    );
    // sha256 of the same bytes is a different (unknown) name
    assert_no_blob(p.addr, REPO, &sha256_digest(&data));

    // chunked upload closed with a sha512 digest
    let data2 = random_bytes(20_000);
    let d2 = sha512_digest(&data2);
    let loc = start_upload(p.addr, REPO);
    let r = patch_chunk(p.addr, &loc, 0, &data2[..7000]);
    r.expect_status(202, "PATCH");
    let r = patch_chunk(p.addr, &location_path(&r), 7000, &data2[7000..]);
    r.expect_status(202, "PATCH");
    let r = put_upload(p.addr, &location_path(&r), &d2, b"");
    r.expect_status(201, "PUT sha512");
    assert_eq!(
        location_path(&r),
        format!("/v2/{REPO}/blobs/{d2}"),
        "Location\n{r}"
    );
    assert_blob(p.addr, REPO, &d2, &data2);

    // a wrong sha512 is refused
    let wrong = sha512_digest(b"other");
    let r = p.request(
        "POST",
        &format!("/v2/{REPO}/blobs/uploads/?digest={wrong}"),
        &[("Content-Type", "application/octet-stream")],
        &data,
    );
    r.expect_error(400, "DIGEST_INVALID", "monolithic push with a wrong sha512");
    assert_no_blob(p.addr, REPO, &wrong);
}

#[test]
fn concurrent_patches_on_one_session() {
    let p = TestPier::start();
    let loc = start_upload(p.addr, REPO);
    let chunks = [random_bytes(1024 * 1024), random_bytes(1024 * 1024)];
    let barrier = std::sync::Arc::new(std::sync::Barrier::new(2));
    let handles: Vec<_> = chunks
        .iter()
        .cloned()
        .map(|c| {
            let (addr, loc, barrier) = (p.addr, loc.clone(), barrier.clone());
            std::thread::spawn(move || {
                barrier.wait();
                patch_chunk(addr, &loc, 0, &c)
            })
        })
        .collect();
    let results: Vec<Response> = handles.into_iter().map(|h| h.join().unwrap()).collect();
    let winners: Vec<usize> = (0..2).filter(|&i| results[i].status == 202).collect();
    assert_eq!(
        winners.len(),
        1,
        "exactly one of two racing PATCHes at offset 0 may succeed:\n{}\n{}",
        results[0],
        results[1]
    );
    let loser = 1 - winners[0];
    assert!(
        (400..500).contains(&results[loser].status),
        "the losing PATCH must be refused\n{}",
        results[loser]
    );
    let r = upload_status(p.addr, &loc);
    r.expect_status(204, "status after racing PATCHes");
    assert_eq!(
        upload_range(&r),
        (0, 1024 * 1024 - 1),
        "offset after racing PATCHes\n{r}"
    );
    let won = &chunks[winners[0]];
    let digest = sha256_digest(won);
    put_upload(p.addr, &location_path(&r), &digest, b"")
        .expect_status(201, "PUT the winning chunk");
    assert_blob(p.addr, REPO, &digest, won);
}

#[test]
fn large_blob_streams_intact() {
    let p = TestPier::start();
    let data = random_bytes(48 * 1024 * 1024 + 123);
    let digest = sha256_digest(&data);
    let r = p.request(
        "POST",
        &format!("/v2/{REPO}/blobs/uploads/?digest={digest}"),
        &[
            ("Content-Type", "application/octet-stream"),
            ("Transfer-Encoding", "chunked"),
        ],
        &data,
    );
    r.expect_status(201, "monolithic POST of 48 MiB with a chunked body");
    assert_blob(p.addr, REPO, &digest, &data);
    let mid = 33 * 1024 * 1024 + 5;
    let r = p.request(
        "GET",
        &format!("/v2/{REPO}/blobs/{digest}"),
        &[("Range", &format!("bytes={mid}-{}", mid + 99))],
        b"",
    );
    r.expect_status(206, "Range in the middle of a large blob");
    assert_eq!(
        r.body,
        &data[mid..mid + 100],
        "bytes in the middle of a large blob"
    );
}
