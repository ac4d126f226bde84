//! Manifests: the four media types plus artifacts; PUT/GET/HEAD/DELETE; errors.

use serde_json::json;

use super::*;

const REPO: &str = "test/manifests";

/// Pushes config + layers to `repo` and returns the manifest bytes (not pushed).
fn image_manifest(addr: SocketAddr, repo: &str, extra: serde_json::Value) -> Vec<u8> {
    let config = format!(
        "{{\"os\":\"linux\",\"n\":\"{}\"}}",
        hex::encode(random_bytes(6))
    )
    .into_bytes();
    let layer = random_bytes(3000);
    push_blob(addr, repo, &config);
    push_blob(addr, repo, &layer);
    oci_manifest(&config, &[&layer], extra)
}

/// PUT, then GET and HEAD by tag and by digest: exact bytes, Content-Type, digest.
#[track_caller]
fn put_and_check(addr: SocketAddr, repo: &str, tag: &str, media_type: &str, body: &[u8]) -> String {
    let digest = sha256_digest(body);
    let r = push_manifest(addr, repo, tag, media_type, body);
    r.expect_status(201, &format!("PUT {media_type} as {repo}:{tag}"));
    r.expect_header("docker-content-digest", &digest, "PUT manifest");
    let loc = location_path(&r);
    assert!(
        loc == format!("/v2/{repo}/manifests/{tag}")
            || loc == format!("/v2/{repo}/manifests/{digest}"),
        "PUT manifest Location {loc:?} should name the tag or the digest\n{r}"
    );
    for reference in [tag, digest.as_str()] {
        let r = get_manifest(addr, repo, reference);
        r.expect_status(200, &format!("GET manifest {repo}:{reference}"));
        assert!(r.body == body, "GET {repo}:{reference}: body differs\n{r}");
        r.expect_header("content-type", media_type, "GET manifest");
        r.expect_header("docker-content-digest", &digest, "GET manifest");
        assert_eq!(
            r.content_length(),
            Some(body.len() as u64),
            "GET manifest length\n{r}"
        );
        let h = http::request(
            addr,
            "HEAD",
            &format!("/v2/{repo}/manifests/{reference}"),
            &[("Accept", ACCEPT_MANIFESTS)],
            b"",
        );
        h.expect_status(200, &format!("HEAD manifest {repo}:{reference}"));
        h.expect_header("content-type", media_type, "HEAD manifest");
        h.expect_header("docker-content-digest", &digest, "HEAD manifest");
        assert_eq!(
            h.content_length(),
            Some(body.len() as u64),
            "HEAD manifest length\n{h}"
        );
    }
    // the Location is pullable
    let r = http::request(addr, "GET", &loc, &[("Accept", ACCEPT_MANIFESTS)], b"");
    r.expect_status(200, "GET the PUT Location");
    assert!(r.body == body, "the PUT Location serves other bytes");
    digest
}

#[test]
fn oci_image_manifest() {
    let p = TestPier::start();
    let m = image_manifest(p.addr, REPO, json!({"annotations": {"org.example": "1"}}));
    put_and_check(p.addr, REPO, "v1", media::OCI_MANIFEST, &m);
}

#[test]
fn manifest_put_by_digest() {
    let p = TestPier::start();
    let m = image_manifest(p.addr, REPO, json!({}));
    let digest = sha256_digest(&m);
    let r = push_manifest(p.addr, REPO, &digest, media::OCI_MANIFEST, &m);
    r.expect_status(201, "PUT by digest");
    assert_eq!(
        location_path(&r),
        format!("/v2/{REPO}/manifests/{digest}"),
        "Location\n{r}"
    );
    r.expect_header("docker-content-digest", &digest, "PUT by digest");
    let g = get_manifest(p.addr, REPO, &digest);
    g.expect_status(200, "GET by digest");
    assert!(g.body == m);
    g.expect_header("content-type", media::OCI_MANIFEST, "GET by digest");
    // pushed by digest only: no tag
    let t = p.get(&format!("/v2/{REPO}/tags/list"));
    t.expect_status(200, "tags/list");
    let tags = t.json()["tags"].clone();
    assert!(
        tags.is_null() || tags.as_array().is_some_and(|a| a.is_empty()),
        "a manifest pushed by digest must not create tags\n{t}"
    );
    // PUT the same bytes again is fine
    push_manifest(p.addr, REPO, &digest, media::OCI_MANIFEST, &m)
        .expect_status(201, "PUT by digest again");
}

#[test]
fn oci_index() {
    let p = TestPier::start();
    let m1 = image_manifest(p.addr, REPO, json!({}));
    let m2 = image_manifest(p.addr, REPO, json!({}));
    for m in [&m1, &m2] {
        push_manifest(p.addr, REPO, &sha256_digest(m), media::OCI_MANIFEST, m)
            .expect_status(201, "child");
    }
    let mut d1 = descriptor(media::OCI_MANIFEST, &m1);
    d1["platform"] = json!({"architecture": "amd64", "os": "linux"});
    let mut d2 = descriptor(media::OCI_MANIFEST, &m2);
    d2["platform"] = json!({"architecture": "arm64", "os": "linux"});
    let index = serde_json::to_vec(&json!({
        "schemaVersion": 2,
        "mediaType": media::OCI_INDEX,
        "manifests": [d1, d2],
    }))
    .unwrap();
    put_and_check(p.addr, REPO, "multi", media::OCI_INDEX, &index);
}

fn docker_manifest(addr: SocketAddr, repo: &str) -> Vec<u8> {
    let config = format!(
        "{{\"architecture\":\"amd64\",\"n\":\"{}\"}}",
        hex::encode(random_bytes(6))
    )
    .into_bytes();
    let layer = random_bytes(2000);
    push_blob(addr, repo, &config);
    push_blob(addr, repo, &layer);
    serde_json::to_vec_pretty(&json!({
        "schemaVersion": 2,
        "mediaType": media::DOCKER_MANIFEST,
        "config": descriptor(media::DOCKER_CONFIG, &config),
        "layers": [descriptor(media::DOCKER_LAYER, &layer)],
    }))
    .unwrap()
}

#[test]
fn docker_schema2_manifest_and_list() {
    let p = TestPier::start();
    let m1 = docker_manifest(p.addr, REPO);
    put_and_check(p.addr, REPO, "docker", media::DOCKER_MANIFEST, &m1);
    let m2 = docker_manifest(p.addr, REPO);
    push_manifest(
        p.addr,
        REPO,
        &sha256_digest(&m2),
        media::DOCKER_MANIFEST,
        &m2,
    )
    .expect_status(201, "child");
    let mut d1 = descriptor(media::DOCKER_MANIFEST, &m1);
    d1["platform"] = json!({"architecture": "amd64", "os": "linux"});
    let mut d2 = descriptor(media::DOCKER_MANIFEST, &m2);
    d2["platform"] = json!({"architecture": "arm64", "os": "linux"});
    let list = serde_json::to_vec_pretty(&json!({
        "schemaVersion": 2,
        "mediaType": media::DOCKER_LIST,
        "manifests": [d1, d2],
    }))
    .unwrap();
    put_and_check(p.addr, REPO, "docker-list", media::DOCKER_LIST, &list);
}

#[test]
fn artifact_manifest_with_artifact_type() {
    let p = TestPier::start();
    push_blob(p.addr, REPO, b"{}");
    let payload = b"an sbom".to_vec();
    push_blob(p.addr, REPO, &payload);
    let m = serde_json::to_vec(&json!({
        "schemaVersion": 2,
        "mediaType": media::OCI_MANIFEST,
        "artifactType": "application/vnd.example.sbom.v1+json",
        "config": descriptor(media::OCI_EMPTY, b"{}"),
        "layers": [descriptor("application/vnd.example.sbom.layer.v1+json", &payload)],
        "annotations": {"org.opencontainers.image.created": "2024-01-01T00:00:00Z"},
    }))
    .unwrap();
    put_and_check(p.addr, REPO, "sbom", media::OCI_MANIFEST, &m);
}

#[test]
fn manifest_digest_mismatch() {
    let p = TestPier::start();
    let m = image_manifest(p.addr, REPO, json!({}));
    let wrong = sha256_digest(b"not the manifest");
    push_manifest(p.addr, REPO, &wrong, media::OCI_MANIFEST, &m).expect_error(
        400,
        "DIGEST_INVALID",
        "PUT manifest under a digest it does not have",
    );
    get_manifest(p.addr, REPO, &wrong).expect_error(
        404,
        "MANIFEST_UNKNOWN",
        "GET the wrong digest",
    );
    get_manifest(p.addr, REPO, &sha256_digest(&m)).expect_error(
        404,
        "MANIFEST_UNKNOWN",
        "a refused manifest must not be stored",
    );
}

#[test]
fn manifest_blob_unknown() {
    let p = TestPier::start();
    let config = b"{\"os\":\"linux\"}".to_vec();
    let layer = random_bytes(1000);
    push_blob(p.addr, REPO, &config);
    // missing layer
    let m = oci_manifest(&config, &[&layer], json!({}));
    push_manifest(p.addr, REPO, "missing-layer", media::OCI_MANIFEST, &m).expect_error(
        400,
        "MANIFEST_BLOB_UNKNOWN",
        "manifest naming a missing layer",
    );
    get_manifest(p.addr, REPO, "missing-layer").expect_error(
        404,
        "MANIFEST_UNKNOWN",
        "refused tag",
    );
    // missing config
    push_blob(p.addr, REPO, &layer);
    let other_config = b"{\"os\":\"other\"}".to_vec();
    let m = oci_manifest(&other_config, &[&layer], json!({}));
    push_manifest(p.addr, REPO, "missing-config", media::OCI_MANIFEST, &m).expect_error(
        400,
        "MANIFEST_BLOB_UNKNOWN",
        "manifest naming a missing config",
    );
    // a layer that only exists in another repository
    let foreign = random_bytes(500);
    push_blob(p.addr, "elsewhere", &foreign);
    let m = oci_manifest(&config, &[&foreign], json!({}));
    push_manifest(p.addr, REPO, "foreign-layer", media::OCI_MANIFEST, &m).expect_error(
        400,
        "MANIFEST_BLOB_UNKNOWN",
        "manifest naming a blob of another repository",
    );
    // the docker media type is checked too
    let m = serde_json::to_vec(&json!({
        "schemaVersion": 2,
        "mediaType": media::DOCKER_MANIFEST,
        "config": descriptor(media::DOCKER_CONFIG, &config),
        "layers": [descriptor(media::DOCKER_LAYER, b"absent layer")],
    }))
    .unwrap();
    push_manifest(p.addr, REPO, "docker-missing", media::DOCKER_MANIFEST, &m).expect_error(
        400,
        "MANIFEST_BLOB_UNKNOWN",
        "docker manifest naming a missing layer",
    );
}

#[test]
fn index_with_missing_child() {
    let p = TestPier::start();
    let present = image_manifest(p.addr, REPO, json!({}));
    push_manifest(
        p.addr,
        REPO,
        &sha256_digest(&present),
        media::OCI_MANIFEST,
        &present,
    )
    .expect_status(201, "child");
    let absent = image_manifest(p.addr, REPO, json!({}));
    let index = serde_json::to_vec(&json!({
        "schemaVersion": 2,
        "mediaType": media::OCI_INDEX,
        "manifests": [descriptor(media::OCI_MANIFEST, &present), descriptor(media::OCI_MANIFEST, &absent)],
    }))
    .unwrap();
    push_manifest(p.addr, REPO, "idx", media::OCI_INDEX, &index).expect_error(
        400,
        "MANIFEST_BLOB_UNKNOWN",
        "index naming a missing child manifest",
    );
    get_manifest(p.addr, REPO, "idx").expect_error(404, "MANIFEST_UNKNOWN", "refused index tag");
    let list = serde_json::to_vec(&json!({
        "schemaVersion": 2,
        "mediaType": media::DOCKER_LIST,
        "manifests": [descriptor(media::DOCKER_MANIFEST, &absent)],
    }))
    .unwrap();
    push_manifest(p.addr, REPO, "list", media::DOCKER_LIST, &list).expect_error(
        400,
        "MANIFEST_BLOB_UNKNOWN",
        "manifest list naming a missing child",
    );
}

#[test]
fn manifest_invalid() {
    let p = TestPier::start();
    for (what, ct, body) in [
        ("truncated JSON", media::OCI_MANIFEST, b"{\"schemaVersion\": 2, ".to_vec()),
        ("not JSON", media::OCI_MANIFEST, b"hello".to_vec()),
        ("layers is not an array", media::OCI_MANIFEST, br#"{"schemaVersion":2,"mediaType":"application/vnd.oci.image.manifest.v1+json","config":{"mediaType":"application/vnd.oci.image.config.v1+json","digest":"sha256:44136fa355b3678a1146ad16f7e8649e94fb4fc21fe77e8310c060f61caaff8a","size":2},"layers":"x"}"#.to_vec()),
        ("index without manifests array", media::OCI_INDEX, br#"{"schemaVersion":2,"mediaType":"application/vnd.oci.image.index.v1+json","manifests":{}}"#.to_vec()),
    ] {
        push_manifest(p.addr, REPO, "bad", ct, &body).expect_error(400, "MANIFEST_INVALID", what);
    }
    get_manifest(p.addr, REPO, "bad").expect_error(
        404,
        "MANIFEST_UNKNOWN",
        "nothing stored for refused manifests",
    );
}

#[test]
fn manifest_too_large() {
    let p = TestPier::start();
    let pad = "x".repeat(4 * 1024 * 1024 + 10);
    let config = b"{}".to_vec();
    push_blob(p.addr, REPO, &config);
    let body = serde_json::to_vec(&json!({
        "schemaVersion": 2,
        "mediaType": media::OCI_MANIFEST,
        "config": descriptor(media::OCI_EMPTY, &config),
        "layers": [],
        "annotations": {"pad": pad},
    }))
    .unwrap();
    assert!(body.len() > 4 * 1024 * 1024);
    push_manifest(p.addr, REPO, "big", media::OCI_MANIFEST, &body).expect_error(
        413,
        "SIZE_INVALID",
        "manifest over 4 MiB",
    );
    get_manifest(p.addr, REPO, "big").expect_error(
        404,
        "MANIFEST_UNKNOWN",
        "oversized manifest not stored",
    );
}

#[test]
fn manifest_unknown() {
    let p = TestPier::start();
    let m = image_manifest(p.addr, REPO, json!({}));
    push_manifest(p.addr, REPO, "exists", media::OCI_MANIFEST, &m).expect_status(201, "PUT");
    get_manifest(p.addr, REPO, "nope").expect_error(404, "MANIFEST_UNKNOWN", "GET unknown tag");
    let unknown = sha256_digest(b"unknown manifest");
    get_manifest(p.addr, REPO, &unknown).expect_error(
        404,
        "MANIFEST_UNKNOWN",
        "GET unknown digest",
    );
    p.head(&format!("/v2/{REPO}/manifests/nope"))
        .expect_status(404, "HEAD unknown tag");
    p.head(&format!("/v2/{REPO}/manifests/{unknown}"))
        .expect_status(404, "HEAD unknown digest");
    // a repository that does not exist at all
    let r = get_manifest(p.addr, "no/such/repo", "latest");
    r.expect_status(404, "GET manifest in an unknown repository");
    let code = r.error_code();
    assert!(
        matches!(code.as_deref(), Some("MANIFEST_UNKNOWN" | "NAME_UNKNOWN")),
        "unknown repository: code {code:?}\n{r}"
    );
    // a blob digest is not a manifest
    let blob = push_blob(p.addr, REPO, b"a plain blob");
    get_manifest(p.addr, REPO, &blob).expect_error(
        404,
        "MANIFEST_UNKNOWN",
        "GET a blob as a manifest",
    );
}

#[test]
fn invalid_tag() {
    let p = TestPier::start();
    let m = image_manifest(p.addr, REPO, json!({}));
    push_manifest(p.addr, REPO, &"t".repeat(128), media::OCI_MANIFEST, &m)
        .expect_status(201, "a tag of 128 characters is valid");
    push_manifest(p.addr, REPO, "_under.score-1", media::OCI_MANIFEST, &m)
        .expect_status(201, "a tag starting with _ is valid");
    let long = "a".repeat(129);
    for tag in ["-leading-dash", ".dot", long.as_str(), "bad%21tag"] {
        push_manifest(p.addr, REPO, tag, media::OCI_MANIFEST, &m).expect_error(
            400,
            "TAG_INVALID",
            &format!("PUT with invalid tag {tag:?}"),
        );
    }
    let t = p.get(&format!("/v2/{REPO}/tags/list"));
    t.expect_status(200, "tags/list");
    assert_eq!(
        t.json()["tags"],
        json!(["_under.score-1", "t".repeat(128)]),
        "only the valid tags are stored\n{t}"
    );
}

#[test]
fn delete_by_tag_removes_only_the_tag() {
    let p = TestPier::start();
    let m = image_manifest(p.addr, REPO, json!({}));
    let digest = sha256_digest(&m);
    push_manifest(p.addr, REPO, "v1", media::OCI_MANIFEST, &m).expect_status(201, "PUT v1");
    push_manifest(p.addr, REPO, "v2", media::OCI_MANIFEST, &m).expect_status(201, "PUT v2");
    http::delete(p.addr, &format!("/v2/{REPO}/manifests/v1")).expect_status(202, "DELETE tag v1");
    get_manifest(p.addr, REPO, "v1").expect_error(404, "MANIFEST_UNKNOWN", "GET deleted tag");
    let g = get_manifest(p.addr, REPO, &digest);
    g.expect_status(200, "GET by digest after deleting a tag");
    assert!(g.body == m);
    get_manifest(p.addr, REPO, "v2").expect_status(200, "other tag survives");
    let t = p.get(&format!("/v2/{REPO}/tags/list"));
    t.expect_status(200, "tags/list");
    assert_eq!(
        t.json()["tags"],
        json!(["v2"]),
        "tags after deleting v1\n{t}"
    );
    http::delete(p.addr, &format!("/v2/{REPO}/manifests/v1")).expect_error(
        404,
        "MANIFEST_UNKNOWN",
        "DELETE deleted tag again",
    );
}

#[test]
fn delete_by_digest_removes_manifest_and_its_tags() {
    let p = TestPier::start();
    let m = image_manifest(p.addr, REPO, json!({}));
    let keep = image_manifest(p.addr, REPO, json!({}));
    let digest = sha256_digest(&m);
    push_manifest(p.addr, REPO, "t1", media::OCI_MANIFEST, &m).expect_status(201, "PUT t1");
    push_manifest(p.addr, REPO, "t2", media::OCI_MANIFEST, &m).expect_status(201, "PUT t2");
    push_manifest(p.addr, REPO, "keep", media::OCI_MANIFEST, &keep).expect_status(201, "PUT keep");
    http::delete(p.addr, &format!("/v2/{REPO}/manifests/{digest}"))
        .expect_status(202, "DELETE by digest");
    get_manifest(p.addr, REPO, &digest).expect_error(404, "MANIFEST_UNKNOWN", "GET deleted digest");
    p.head(&format!("/v2/{REPO}/manifests/{digest}"))
        .expect_status(404, "HEAD deleted digest");
    get_manifest(p.addr, REPO, "t1").expect_error(
        404,
        "MANIFEST_UNKNOWN",
        "tag t1 of a deleted manifest",
    );
    get_manifest(p.addr, REPO, "t2").expect_error(
        404,
        "MANIFEST_UNKNOWN",
        "tag t2 of a deleted manifest",
    );
    get_manifest(p.addr, REPO, "keep").expect_status(200, "unrelated tag");
    let t = p.get(&format!("/v2/{REPO}/tags/list"));
    t.expect_status(200, "tags/list");
    assert_eq!(
        t.json()["tags"],
        json!(["keep"]),
        "tags after deleting by digest\n{t}"
    );
    http::delete(p.addr, &format!("/v2/{REPO}/manifests/{digest}")).expect_error(
        404,
        "MANIFEST_UNKNOWN",
        "DELETE deleted digest again",
    );
    // it can be pushed again
    push_manifest(p.addr, REPO, "t1", media::OCI_MANIFEST, &m).expect_status(201, "re-push");
    get_manifest(p.addr, REPO, &digest).expect_status(200, "re-pushed manifest");
}

#[test]
fn subject_sets_oci_subject_header() {
    let p = TestPier::start();
    let base = image_manifest(p.addr, REPO, json!({}));
    push_manifest(p.addr, REPO, "base", media::OCI_MANIFEST, &base).expect_status(201, "PUT base");
    let r = push_manifest(p.addr, REPO, "base2", media::OCI_MANIFEST, &base);
    r.expect_status(201, "PUT without subject");
    assert_eq!(
        r.header("oci-subject"),
        None,
        "OCI-Subject without a subject\n{r}"
    );
    push_blob(p.addr, REPO, b"{}");
    let sig = serde_json::to_vec(&json!({
        "schemaVersion": 2,
        "mediaType": media::OCI_MANIFEST,
        "artifactType": "application/vnd.example.signature.v1",
        "config": descriptor(media::OCI_EMPTY, b"{}"),
        "layers": [],
        "subject": descriptor(media::OCI_MANIFEST, &base),
    }))
    .unwrap();
    let r = push_manifest(
        p.addr,
        REPO,
        &sha256_digest(&sig),
        media::OCI_MANIFEST,
        &sig,
    );
    r.expect_status(201, "PUT manifest with subject");
    r.expect_header(
        "oci-subject",
        &sha256_digest(&base),
        "PUT manifest with subject",
    );
    // a subject that does not exist (yet) is accepted
    let ghost = sha256_digest(b"ghost");
    let sig2 = serde_json::to_vec(&json!({
        "schemaVersion": 2,
        "mediaType": media::OCI_MANIFEST,
        "artifactType": "application/vnd.example.signature.v1",
        "config": descriptor(media::OCI_EMPTY, b"{}"),
        "layers": [],
        "subject": {"mediaType": media::OCI_MANIFEST, "digest": ghost, "size": 100},
    }))
    .unwrap();
    let r = push_manifest(
        p.addr,
        REPO,
        &sha256_digest(&sig2),
        media::OCI_MANIFEST,
        &sig2,
    );
    r.expect_status(201, "PUT manifest whose subject is absent");
    r.expect_header("oci-subject", &ghost, "subject absent");
    let r = p.get(&format!("/v2/{REPO}/referrers/{ghost}"));
    r.expect_status(200, "referrers of an absent subject");
    let listed: Vec<String> = r.json()["manifests"]
        .as_array()
        .map(|a| {
            a.iter()
                .filter_map(|d| d["digest"].as_str().map(str::to_owned))
                .collect()
        })
        .unwrap_or_default();
    assert_eq!(
        listed,
        vec![sha256_digest(&sig2)],
        "referrers of an absent subject\n{r}"
    );
}

#[test]
fn manifest_content_type() {
    let p = TestPier::start();
    let m = image_manifest(p.addr, REPO, json!({}));
    // no Content-Type: the body's mediaType decides
    let r = p.request("PUT", &format!("/v2/{REPO}/manifests/no-ct"), &[], &m);
    r.expect_status(201, "PUT manifest without Content-Type");
    get_manifest(p.addr, REPO, "no-ct").expect_header(
        "content-type",
        media::OCI_MANIFEST,
        "GET manifest pushed without Content-Type",
    );
    // a Content-Type contradicting the body's mediaType
    push_manifest(p.addr, REPO, "mismatch", media::DOCKER_MANIFEST, &m).expect_error(
        400,
        "MANIFEST_INVALID",
        "PUT OCI manifest as a Docker manifest",
    );
    get_manifest(p.addr, REPO, "mismatch").expect_error(404, "MANIFEST_UNKNOWN", "refused tag");
}

#[test]
fn manifests_are_scoped_to_repository() {
    let p = TestPier::start();
    let m = image_manifest(p.addr, REPO, json!({}));
    let digest = sha256_digest(&m);
    push_manifest(p.addr, REPO, "v1", media::OCI_MANIFEST, &m).expect_status(201, "PUT");
    let other = push_image(p.addr, "test/other", Some("v1"), &[b"other layer"]);
    get_manifest(p.addr, "test/other", &digest).expect_error(
        404,
        "MANIFEST_UNKNOWN",
        "GET by digest through another repository",
    );
    let r = get_manifest(p.addr, "test/other", "v1");
    r.expect_header(
        "docker-content-digest",
        &other.digest,
        "same tag name, other repository",
    );
    http::delete(p.addr, &format!("/v2/test/other/manifests/{digest}")).expect_error(
        404,
        "MANIFEST_UNKNOWN",
        "DELETE by digest through another repository",
    );
    get_manifest(p.addr, REPO, &digest).expect_status(200, "the manifest is untouched");
}

#[test]
fn manifest_size_limit_is_inclusive() {
    let p = TestPier::start();
    let config = b"{}".to_vec();
    push_blob(p.addr, REPO, &config);
    let limit = 4 * 1024 * 1024;
    let make = |len: usize| {
        let base = serde_json::to_vec(&json!({
            "schemaVersion": 2,
            "mediaType": media::OCI_MANIFEST,
            "config": descriptor(media::OCI_EMPTY, &config),
            "layers": [],
            "annotations": {"pad": ""},
        }))
        .unwrap();
        let pad = "x".repeat(len - base.len());
        let body = serde_json::to_vec(&json!({
            "schemaVersion": 2,
            "mediaType": media::OCI_MANIFEST,
            "config": descriptor(media::OCI_EMPTY, &config),
            "layers": [],
            "annotations": {"pad": pad},
        }))
        .unwrap();
        assert_eq!(body.len(), len);
        body
    };
    // large manifests up to and including the limit are stored and served in full
    for (tag, len) in [("three-mib", 3 * 1024 * 1024), ("exactly-4mib", limit)] {
        let body = make(len);
        push_manifest(p.addr, REPO, tag, media::OCI_MANIFEST, &body)
            .expect_status(201, &format!("PUT a {len} byte manifest"));
        for reference in [tag.to_string(), sha256_digest(&body)] {
            let g = get_manifest(p.addr, REPO, &reference);
            g.expect_status(200, &format!("GET the {len} byte manifest as {reference}"));
            assert!(g.body == body, "{len} byte manifest body differs");
            let h = p.head(&format!("/v2/{REPO}/manifests/{reference}"));
            h.expect_status(200, &format!("HEAD the {len} byte manifest as {reference}"));
            assert_eq!(h.content_length(), Some(len as u64), "HEAD length\n{h}");
        }
    }
    push_manifest(p.addr, REPO, "over", media::OCI_MANIFEST, &make(limit + 1)).expect_error(
        413,
        "SIZE_INVALID",
        "a manifest of 4 MiB + 1 byte",
    );
}

#[test]
fn index_children_must_be_manifests_of_this_repository() {
    let p = TestPier::start();
    // a child that exists only in another repository
    let foreign = push_image(p.addr, "test/foreign", None, &[b"foreign layer"]);
    let index = serde_json::to_vec(&json!({
        "schemaVersion": 2,
        "mediaType": media::OCI_INDEX,
        "manifests": [descriptor(media::OCI_MANIFEST, &foreign.manifest)],
    }))
    .unwrap();
    push_manifest(p.addr, REPO, "idx", media::OCI_INDEX, &index).expect_error(
        400,
        "MANIFEST_BLOB_UNKNOWN",
        "index naming a manifest of another repository",
    );
    // a child digest that is a plain blob here, not a manifest
    let blob = b"{\"not\":\"a manifest\"}".to_vec();
    push_blob(p.addr, REPO, &blob);
    let index = serde_json::to_vec(&json!({
        "schemaVersion": 2,
        "mediaType": media::OCI_INDEX,
        "manifests": [descriptor(media::OCI_MANIFEST, &blob)],
    }))
    .unwrap();
    push_manifest(p.addr, REPO, "idx", media::OCI_INDEX, &index).expect_error(
        400,
        "MANIFEST_BLOB_UNKNOWN",
        "index naming a blob that is not a manifest",
    );
}

#[test]
fn foreign_layers_need_not_be_pushed() {
    let p = TestPier::start();
    let config = b"{\"architecture\":\"amd64\",\"os\":\"windows\"}".to_vec();
    push_blob(p.addr, REPO, &config);
    let mut foreign = descriptor(
        "application/vnd.docker.image.rootfs.foreign.diff.tar.gzip",
        b"windows base layer, not pushed",
    );
    foreign["urls"] = json!(["https://example.invalid/layer"]);
    let m = serde_json::to_vec(&json!({
        "schemaVersion": 2,
        "mediaType": media::DOCKER_MANIFEST,
        "config": descriptor(media::DOCKER_CONFIG, &config),
        "layers": [foreign],
    }))
    .unwrap();
    push_manifest(p.addr, REPO, "windows", media::DOCKER_MANIFEST, &m)
        .expect_status(201, "manifest with an unpushed foreign layer");
}

#[test]
fn deleted_blob_cannot_be_referenced() {
    let p = TestPier::start();
    let config = b"{\"os\":\"linux\"}".to_vec();
    let layer = random_bytes(700);
    push_blob(p.addr, REPO, &config);
    let ld = push_blob(p.addr, REPO, &layer);
    http::delete(p.addr, &format!("/v2/{REPO}/blobs/{ld}")).expect_status(202, "DELETE layer");
    let m = oci_manifest(&config, &[&layer], json!({}));
    push_manifest(p.addr, REPO, "after-delete", media::OCI_MANIFEST, &m).expect_error(
        400,
        "MANIFEST_BLOB_UNKNOWN",
        "manifest naming a deleted blob",
    );
}

#[test]
fn manifest_with_sha512_layer() {
    let p = TestPier::start();
    let config = b"{\"os\":\"linux\"}".to_vec();
    push_blob(p.addr, REPO, &config);
    let layer = random_bytes(4096);
    let ld = sha512_digest(&layer);
    p.request(
        "POST",
        &format!("/v2/{REPO}/blobs/uploads/?digest={ld}"),
        &[("Content-Type", "application/octet-stream")],
        &layer,
    )
    .expect_status(201, "push sha512 layer");
    let m = serde_json::to_vec(&json!({
        "schemaVersion": 2,
        "mediaType": media::OCI_MANIFEST,
        "config": descriptor(media::OCI_CONFIG, &config),
        "layers": [{"mediaType": media::OCI_LAYER, "digest": ld, "size": layer.len()}],
    }))
    .unwrap();
    put_and_check(p.addr, REPO, "sha512-layer", media::OCI_MANIFEST, &m);
    // the manifest itself addressed by a sha512 digest
    let d512 = sha512_digest(&m);
    let r = push_manifest(p.addr, REPO, &d512, media::OCI_MANIFEST, &m);
    r.expect_status(201, "PUT manifest by sha512 digest");
    r.expect_header("docker-content-digest", &d512, "PUT by sha512");
    let g = get_manifest(p.addr, REPO, &d512);
    g.expect_status(200, "GET manifest by sha512 digest");
    assert!(g.body == m, "manifest by sha512 differs");
    g.expect_header("docker-content-digest", &d512, "GET by sha512");
    let wrong = sha512_digest(b"absent");
    let m = serde_json::to_vec(&json!({
        "schemaVersion": 2,
        "mediaType": media::OCI_MANIFEST,
        "config": descriptor(media::OCI_CONFIG, &config),
        "layers": [{"mediaType": media::OCI_LAYER, "digest": wrong, "size": 6}],
    }))
    .unwrap();
    push_manifest(p.addr, REPO, "sha512-missing", media::OCI_MANIFEST, &m).expect_error(
        400,
        "MANIFEST_BLOB_UNKNOWN",
        "manifest naming a missing sha512 layer",
    );
}

#[test]
fn content_type_of_a_manifest_without_media_type_field() {
    // Without a `mediaType` field only the push's Content-Type says what a manifest is.
    // A registry may refuse such a manifest (Docker schema2 requires the field), but if
    // it accepts one it must serve it with the same Content-Type: a document read as
    // one type on push and another on pull is CVE-2021-41190.
    let p = TestPier::start();
    let config = b"{\"architecture\":\"amd64\"}".to_vec();
    let layer = random_bytes(900);
    push_blob(p.addr, REPO, &config);
    push_blob(p.addr, REPO, &layer);
    let docker = serde_json::to_vec(&json!({
        "schemaVersion": 2,
        "config": descriptor(media::DOCKER_CONFIG, &config),
        "layers": [descriptor(media::DOCKER_LAYER, &layer)],
    }))
    .unwrap();
    // an OCI manifest that also carries a `manifests` field (the ambiguous document)
    let ambiguous = serde_json::to_vec(&json!({
        "schemaVersion": 2,
        "config": descriptor(media::OCI_CONFIG, &config),
        "layers": [descriptor(media::OCI_LAYER, &layer)],
        "manifests": [],
    }))
    .unwrap();
    for (tag, ct, body) in [
        ("docker-no-media-type", media::DOCKER_MANIFEST, &docker),
        ("ambiguous-no-media-type", media::OCI_MANIFEST, &ambiguous),
    ] {
        let r = push_manifest(p.addr, REPO, tag, ct, body);
        if r.status == 400 {
            r.expect_error_body("MANIFEST_INVALID", &format!("{tag}: refused"));
            continue;
        }
        r.expect_status(201, &format!("{tag}: 201 or 400"));
        for reference in [tag.to_string(), sha256_digest(body)] {
            let g = get_manifest(p.addr, REPO, &reference);
            g.expect_status(200, &format!("GET {reference}"));
            g.expect_header(
                "content-type",
                ct,
                &format!("{tag}: a manifest accepted as {ct} must be served as {ct}"),
            );
        }
    }
}
