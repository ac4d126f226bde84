//! Push to site A with docker and skopeo; the images reach site B (Pier) and a
//! docker-registry target with the same digests, and a referrer reaches B's referrers API.

use std::fs;
use std::time::Duration;

use pier_e2e::{TestPier, descriptor, media, push_blob, push_manifest, sha256_digest};
use serde_json::json;

use crate::clients_support::*;
use crate::support::*;

const JOB_TIMEOUT: Duration = Duration::from_secs(120);

/// Asserts `repo:reference` on `addr` is the manifest `digest` and every blob it (or,
/// for an index, each child) names is there.
#[track_caller]
fn assert_copy(addr: std::net::SocketAddr, repo: &str, reference: &str, digest: &str, what: &str) {
    let r = get_manifest(addr, repo, reference);
    r.expect_status(200, &format!("{what}: GET {repo}:{reference}"));
    assert_eq!(
        sha256_digest(&r.body),
        digest,
        "{what}: {repo}:{reference} has other bytes than site A's"
    );
    let m = r.json();
    let mut blobs: Vec<String> = m["layers"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|l| l["digest"].as_str().map(str::to_owned))
        .collect();
    if let Some(c) = m["config"]["digest"].as_str() {
        blobs.push(c.to_owned());
    }
    for b in blobs {
        pier_e2e::http::head(addr, &format!("/v2/{repo}/blobs/{b}"))
            .expect_status(200, &format!("{what}: HEAD blob {b} of {repo}"));
    }
    for child in m["manifests"].as_array().into_iter().flatten() {
        let d = child["digest"].as_str().unwrap();
        assert_copy(addr, repo, d, d, what);
    }
}

#[test]
fn docker_and_skopeo_pushes_reach_site_b_and_docker_registry_with_same_digests() {
    let site_b = TestPier::start();
    let reg_dir = temp_dir("events-refreg");
    let reg = RefRegistry::start(reg_dir.path());
    let config = base_config(
        "",
        &[
            ("site-b", site_b.url()),
            ("distribution", format!("http://{}", reg.host())),
        ],
    ) + &replicator(
        "replicate",
        &[
            ("team-to-b", "team", "site-b"),
            ("team-to-distribution", "team", "distribution"),
        ],
    );
    let site_a = start_site(&config);
    let targets = ["site-b", "distribution"];

    // 1. docker push of a single-platform image (Docker schema 2).
    let docker = Dockerd::start();
    let dir = temp_dir("events-rootfs");
    let rootfs = dir.path().join("rootfs.tar");
    let tar = Tar::new()
        .dir("etc")
        .file("etc/os-release", b"ID=pier-events\n")
        .dir("data")
        .file("data/blob.bin", &unique_bytes(256 * 1024))
        .finish();
    fs::write(&rootfs, tar).unwrap();
    let image = format!("{}/team/app:v1", site_a.host());
    docker.ok(
        &["import", &rootfs.display().to_string(), &image],
        "docker import",
    );
    let pushed = pushed_digest(&docker.ok(&["push", &image], "docker push to site A"));
    for t in targets {
        let job = wait_succeeded(&site_a, t, "team/app", "v1", JOB_TIMEOUT);
        assert_eq!(
            job["report"]["digest"], pushed,
            "job to {t} copied another digest"
        );
    }
    assert_copy(site_b.addr, "team/app", "v1", &pushed, "site B");
    assert_copy(reg.addr, "team/app", "v1", &pushed, "docker-registry");

    // 2. skopeo copy --all of a two-platform OCI index.
    let sk = Skopeo::new();
    let idx = TestIndex::new("multi");
    let layout = sk.dir.path().join("index");
    idx.write_oci_layout(&layout);
    sk.ok(
        &[
            "copy",
            "--all",
            "--dest-tls-verify=false",
            &format!("oci:{}:multi", layout.display()),
            &format!("docker://{}/team/multi:multi", site_a.host()),
        ],
        "skopeo copy --all to site A",
    );
    for t in targets {
        let job = wait_succeeded(&site_a, t, "team/multi", "multi", JOB_TIMEOUT);
        assert_eq!(job["report"]["digest"], idx.index_digest.as_str());
    }
    assert_registry_has_index(site_b.addr, "team/multi", "multi", &idx);
    assert_registry_has_index(reg.addr, "team/multi", "multi", &idx);

    // 3. A referrer (an artifact with `subject`) pushed by HTTP: on B's referrers API.
    let subject = &idx.images[0];
    let payload = unique_bytes(1024);
    push_blob(site_a.addr, "team/multi", b"{}");
    push_blob(site_a.addr, "team/multi", &payload);
    let sbom = serde_json::to_vec(&json!({
        "schemaVersion": 2,
        "mediaType": media::OCI_MANIFEST,
        "artifactType": "application/vnd.example.sbom.v1",
        "config": descriptor(media::OCI_EMPTY, b"{}"),
        "layers": [descriptor("application/vnd.example.sbom.layer", &payload)],
        "subject": descriptor(media::OCI_MANIFEST, &subject.manifest),
    }))
    .unwrap();
    let sbom_digest = sha256_digest(&sbom);
    push_manifest(
        site_a.addr,
        "team/multi",
        &sbom_digest,
        media::OCI_MANIFEST,
        &sbom,
    )
    .expect_status(201, "push the referrer to site A");
    wait_succeeded(&site_a, "site-b", "team/multi", &sbom_digest, JOB_TIMEOUT);
    assert_copy(
        site_b.addr,
        "team/multi",
        &sbom_digest,
        &sbom_digest,
        "site B (referrer)",
    );
    let r = site_b.get(&format!(
        "/v2/team/multi/referrers/{}",
        subject.manifest_digest
    ));
    r.expect_status(200, "referrers API of site B");
    let listed: Vec<_> = r.json()["manifests"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    assert!(
        listed.iter().any(|d| d["digest"] == sbom_digest.as_str()
            && d["artifactType"] == "application/vnd.example.sbom.v1"),
        "site B's referrers of {} do not list the replicated artifact\n{r}",
        subject.manifest_digest
    );

    // Every job of site A ended well, none more than once per target and reference
    // except the referrer to docker-registry (no referrers API there: not checked).
    let all = jobs(&site_a);
    for j in &all {
        eprintln!(
            "sites: job {} {}:{} -> {} {} attempts {} error {}",
            j["id"],
            j["src_repo"],
            j["reference"],
            j["destination"],
            j["state"],
            j["attempts"],
            j["report"]["error"]
        );
        if j["destination"] == "site-b" {
            assert_eq!(j["state"], "succeeded", "job {j}");
        }
    }
}
