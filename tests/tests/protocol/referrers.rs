//! The referrers API.

use serde_json::{Value, json};

use super::*;

const REPO: &str = "test/referrers";
const SBOM: &str = "application/vnd.example.sbom.v1+json";
const SIG_CONFIG: &str = "application/vnd.example.sig.config.v1+json";

struct Fixture {
    p: TestPier,
    subject: PushedImage,
    sbom: Vec<u8>,
    sig: Vec<u8>,
    index: Vec<u8>,
}

fn by_digest(index: &Value) -> Vec<(String, Value)> {
    index["manifests"]
        .as_array()
        .unwrap_or_else(|| panic!("referrers `manifests` is not an array: {index}"))
        .iter()
        .map(|d| {
            (
                d["digest"].as_str().unwrap_or_default().to_owned(),
                d.clone(),
            )
        })
        .collect()
}

fn fixture() -> Fixture {
    let p = TestPier::start();
    let subject = push_image(p.addr, REPO, Some("v1"), &[b"subject layer"]);
    let subject_desc = descriptor(media::OCI_MANIFEST, &subject.manifest);
    push_blob(p.addr, REPO, b"{}");
    let payload = b"sbom payload".to_vec();
    push_blob(p.addr, REPO, &payload);
    // 1. an artifact with artifactType and annotations
    let sbom = serde_json::to_vec(&json!({
        "schemaVersion": 2,
        "mediaType": media::OCI_MANIFEST,
        "artifactType": SBOM,
        "config": descriptor(media::OCI_EMPTY, b"{}"),
        "layers": [descriptor("application/vnd.example.sbom.layer", &payload)],
        "subject": subject_desc,
        "annotations": {"org.example.kind": "sbom", "org.opencontainers.image.created": "2024-05-01T00:00:00Z"},
    }))
    .unwrap();
    // 2. an image-style manifest without artifactType: its config media type stands in
    let sig_config = b"{\"sig\":true}".to_vec();
    push_blob(p.addr, REPO, &sig_config);
    let sig = serde_json::to_vec(&json!({
        "schemaVersion": 2,
        "mediaType": media::OCI_MANIFEST,
        "config": descriptor(SIG_CONFIG, &sig_config),
        "layers": [],
        "subject": subject_desc,
    }))
    .unwrap();
    // 3. an index with artifactType and a subject
    let index = serde_json::to_vec(&json!({
        "schemaVersion": 2,
        "mediaType": media::OCI_INDEX,
        "artifactType": "application/vnd.example.bundle.v1",
        "manifests": [],
        "subject": subject_desc,
        "annotations": {"org.example.kind": "bundle"},
    }))
    .unwrap();
    for (body, mt) in [
        (&sbom, media::OCI_MANIFEST),
        (&sig, media::OCI_MANIFEST),
        (&index, media::OCI_INDEX),
    ] {
        let d = sha256_digest(body);
        let r = push_manifest(p.addr, REPO, &d, mt, body);
        r.expect_status(201, "PUT referrer");
        r.expect_header("oci-subject", &subject.digest, "PUT referrer");
    }
    // pushing a referrer again (by tag) does not list it twice
    push_manifest(p.addr, REPO, "sbom-tag", media::OCI_MANIFEST, &sbom)
        .expect_status(201, "PUT the sbom again by tag");
    // a referrer of the same subject digest in another repository is not listed here
    push_blob(p.addr, "test/elsewhere", b"{}");
    let other = serde_json::to_vec(&json!({
        "schemaVersion": 2,
        "mediaType": media::OCI_MANIFEST,
        "artifactType": SBOM,
        "config": descriptor(media::OCI_EMPTY, b"{}"),
        "layers": [],
        "subject": subject_desc,
    }))
    .unwrap();
    push_manifest(
        p.addr,
        "test/elsewhere",
        &sha256_digest(&other),
        media::OCI_MANIFEST,
        &other,
    )
    .expect_status(201, "PUT referrer elsewhere");
    Fixture {
        p,
        subject,
        sbom,
        sig,
        index,
    }
}

#[test]
fn referrers_list() {
    let f = fixture();
    let r =
        f.p.get(&format!("/v2/{REPO}/referrers/{}", f.subject.digest));
    r.expect_status(200, "GET referrers");
    r.expect_header("content-type", media::OCI_INDEX, "GET referrers");
    assert!(
        r.header("oci-filters-applied").is_none(),
        "unfiltered answer says filtered\n{r}"
    );
    let v = r.json();
    assert_eq!(v["schemaVersion"], json!(2), "referrers index\n{r}");
    assert_eq!(
        v["mediaType"],
        json!(media::OCI_INDEX),
        "referrers index\n{r}"
    );
    let list = by_digest(&v);
    assert_eq!(list.len(), 3, "three referrers expected\n{r}");
    let find = |body: &[u8]| -> Value {
        let d = sha256_digest(body);
        list.iter()
            .find(|(k, _)| *k == d)
            .map(|(_, v)| v.clone())
            .unwrap_or_else(|| panic!("referrer {d} missing\n{r}"))
    };
    let sbom = find(&f.sbom);
    assert_eq!(
        sbom["mediaType"],
        json!(media::OCI_MANIFEST),
        "sbom descriptor {sbom}"
    );
    assert_eq!(sbom["size"], json!(f.sbom.len()), "sbom descriptor {sbom}");
    assert_eq!(sbom["artifactType"], json!(SBOM), "sbom descriptor {sbom}");
    assert_eq!(
        sbom["annotations"],
        json!({"org.example.kind": "sbom", "org.opencontainers.image.created": "2024-05-01T00:00:00Z"}),
        "sbom annotations {sbom}"
    );
    let sig = find(&f.sig);
    assert_eq!(
        sig["artifactType"],
        json!(SIG_CONFIG),
        "config mediaType stands in for artifactType: {sig}"
    );
    assert_eq!(sig["size"], json!(f.sig.len()), "sig descriptor {sig}");
    assert!(
        sig.get("annotations")
            .is_none_or(|a| a.is_null() || a.as_object().is_some_and(|o| o.is_empty())),
        "sig has no annotations: {sig}"
    );
    let idx = find(&f.index);
    assert_eq!(
        idx["mediaType"],
        json!(media::OCI_INDEX),
        "index descriptor {idx}"
    );
    assert_eq!(
        idx["artifactType"],
        json!("application/vnd.example.bundle.v1"),
        "index descriptor {idx}"
    );
    assert_eq!(
        idx["annotations"],
        json!({"org.example.kind": "bundle"}),
        "index annotations {idx}"
    );
}

#[test]
fn referrers_filter_by_artifact_type() {
    let f = fixture();
    // a query string is form-encoded: `+` must be sent as %2B (a raw `+` is a space)
    let plus_encoded = SBOM.replace('+', "%2B");
    let r = f.p.get(&format!(
        "/v2/{REPO}/referrers/{}?artifactType={plus_encoded}",
        f.subject.digest
    ));
    r.expect_status(200, "GET referrers ?artifactType=");
    r.expect_header("oci-filters-applied", "artifactType", "filtered referrers");
    r.expect_header("content-type", media::OCI_INDEX, "filtered referrers");
    let list = by_digest(&r.json());
    assert_eq!(
        list.iter().map(|(d, _)| d.clone()).collect::<Vec<_>>(),
        vec![sha256_digest(&f.sbom)],
        "only the sbom matches\n{r}"
    );
    // fully percent-encoded artifactType, as Go's url.Values sends it
    let enc = SBOM.replace('/', "%2F").replace('+', "%2B");
    let r = f.p.get(&format!(
        "/v2/{REPO}/referrers/{}?artifactType={enc}",
        f.subject.digest
    ));
    r.expect_status(200, "GET referrers with an encoded artifactType");
    assert_eq!(
        by_digest(&r.json()).len(),
        1,
        "encoded artifactType filter\n{r}"
    );
    // no match
    let r = f.p.get(&format!(
        "/v2/{REPO}/referrers/{}?artifactType=application/vnd.none",
        f.subject.digest
    ));
    r.expect_status(200, "GET referrers with a filter matching nothing");
    r.expect_header(
        "oci-filters-applied",
        "artifactType",
        "filter matching nothing",
    );
    assert_eq!(
        r.json()["manifests"],
        json!([]),
        "filter matching nothing\n{r}"
    );
}

#[test]
fn referrers_follow_deletes() {
    let f = fixture();
    let d = sha256_digest(&f.sbom);
    http::delete(f.p.addr, &format!("/v2/{REPO}/manifests/{d}"))
        .expect_status(202, "DELETE referrer");
    let r =
        f.p.get(&format!("/v2/{REPO}/referrers/{}", f.subject.digest));
    r.expect_status(200, "GET referrers after delete");
    let list = by_digest(&r.json());
    assert_eq!(list.len(), 2, "deleted referrer still listed\n{r}");
    assert!(
        list.iter().all(|(x, _)| *x != d),
        "deleted referrer still listed\n{r}"
    );
}

#[test]
fn referrers_unknown_subject_and_bad_digest() {
    let p = TestPier::start();
    push_image(p.addr, REPO, Some("v1"), &[b"layer"]);
    let unknown = sha256_digest(b"no such subject");
    let r = p.get(&format!("/v2/{REPO}/referrers/{unknown}"));
    r.expect_status(200, "referrers of an unknown subject");
    r.expect_header(
        "content-type",
        media::OCI_INDEX,
        "referrers of an unknown subject",
    );
    let v = r.json();
    assert_eq!(
        v["manifests"],
        json!([]),
        "unknown subject lists nothing\n{r}"
    );
    assert_eq!(v["schemaVersion"], json!(2), "\n{r}");
    // an unknown repository also answers 200: a 404 tells clients the API is missing
    let r = p.get(&format!("/v2/never/pushed/referrers/{unknown}"));
    r.expect_status(200, "referrers in an unknown repository");
    assert_eq!(r.json()["manifests"], json!([]), "unknown repository\n{r}");
    for bad in ["sha256:xyz", "sha256:1234", "latest"] {
        p.get(&format!("/v2/{REPO}/referrers/{bad}")).expect_error(
            400,
            "DIGEST_INVALID",
            &format!("referrers of {bad:?}"),
        );
    }
}
