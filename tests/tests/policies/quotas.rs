//! Project quotas: a push that would take a project over its limit is refused with a
//! clear message (docker shows it) and stores nothing; usage counts each blob once per
//! project, and after deletes and a garbage collection it is the bytes really referenced.

use std::fs;

use pier_e2e::{TestPier, get_manifest, http, push_image, sha256_digest};
use serde_json::{Value, json};

use crate::clients_support::*;
use crate::support::blob_data_path;

const MIB: usize = 1 << 20;

fn admin(pier: &TestPier, method: &str, path: &str, body: &Value) -> pier_e2e::Response {
    let b = if body.is_null() {
        Vec::new()
    } else {
        serde_json::to_vec(body).unwrap()
    };
    http::request(
        pier.admin_addr,
        method,
        path,
        &[("Content-Type", "application/json")],
        &b,
    )
}

fn used(pier: &TestPier) -> u64 {
    let r = admin(pier, "GET", "/api/v1/quotas/team", &Value::Null);
    r.expect_status(200, "GET the team quota");
    r.json()["used"].as_u64().unwrap()
}

/// Bytes of each distinct digest the images' manifests reference, and the manifests.
fn referenced(images: &[&pier_e2e::PushedImage]) -> u64 {
    let mut seen = std::collections::HashMap::new();
    for i in images {
        seen.insert(i.digest.clone(), i.manifest.len() as u64);
        let m: Value = serde_json::from_slice(&i.manifest).unwrap();
        for d in std::iter::once(&m["config"]).chain(m["layers"].as_array().unwrap()) {
            seen.insert(
                d["digest"].as_str().unwrap().to_owned(),
                d["size"].as_u64().unwrap(),
            );
        }
    }
    seen.values().sum()
}

#[track_caller]
fn expect_quota_refusal(r: &pier_e2e::Response, what: &str) -> String {
    r.expect_status(403, what);
    let e = &r.json()["errors"][0];
    assert_eq!(e["code"], "DENIED", "{what}: {r}");
    assert_eq!(e["detail"]["project"], "team", "{what}: {r}");
    let m = e["message"].as_str().unwrap().to_owned();
    assert!(
        m.contains("quota exceeded: project team uses"),
        "{what}: {m}"
    );
    m
}

#[test]
fn a_push_over_the_project_quota_is_refused_and_usage_follows_deletes_and_gc() {
    let pier = TestPier::start();
    let a = pier.addr;
    let r = admin(
        &pier,
        "PUT",
        "/api/v1/quotas/team",
        &json!({"limit": 3 * MIB}),
    );
    r.expect_status(200, "set the team quota");
    assert_eq!(r.json()["used"], 0);
    assert_eq!(r.json()["limit"], 3 * MIB);

    // 1 MiB, then another image sharing that layer: the layer counts once.
    let one = unique_bytes(MIB);
    let first = push_image(a, "team/app", Some("one"), &[&one]);
    assert_eq!(used(&pier), referenced(&[&first]));
    let half = unique_bytes(MIB / 2);
    let second = push_image(a, "team/web", Some("two"), &[&one, &half]);
    assert_eq!(used(&pier), referenced(&[&first, &second]));
    let before = used(&pier);

    // A monolithic upload whose size alone is over: refused before its body is read.
    let big = unique_bytes(2 * MIB);
    let digest = sha256_digest(&big);
    let r = http::request(
        a,
        "POST",
        &format!("/v2/team/app/blobs/uploads/?digest={digest}"),
        &[("Content-Type", "application/octet-stream")],
        &big,
    );
    expect_quota_refusal(&r, "monolithic upload over the quota");
    http::request(a, "HEAD", &format!("/v2/team/app/blobs/{digest}"), &[], b"")
        .expect_status(404, "the refused blob");
    assert!(!blob_data_path(&pier.root, &digest).exists());

    // Blobs that each fit, in a manifest that does not: the manifest is refused.
    let parts = [unique_bytes(MIB), unique_bytes(MIB)];
    let blobs: Vec<Value> = parts
        .iter()
        .map(|p| {
            let d = pier_e2e::push_blob(a, "team/app", p);
            json!({"mediaType": "application/vnd.oci.image.layer.v1.tar+gzip", "digest": d, "size": p.len()})
        })
        .collect();
    let m = serde_json::to_vec(&json!({"schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json",
                   "digest": first.config_digest, "size": 0},
        "layers": blobs}))
    .unwrap();
    let cfg: Value = serde_json::from_slice(&first.manifest).unwrap();
    let m = String::from_utf8(m)
        .unwrap()
        .replace("\"size\":0", &format!("\"size\":{}", cfg["config"]["size"]));
    let r = pier_e2e::push_manifest(
        a,
        "team/app",
        "too-big",
        "application/vnd.oci.image.manifest.v1+json",
        m.as_bytes(),
    );
    let message = expect_quota_refusal(&r, "manifest over the quota");
    assert!(message.contains("of its 3.0 MiB quota"), "{message}");
    get_manifest(a, "team/app", "too-big").expect_status(404, "the refused tag");
    get_manifest(a, "team/app", &sha256_digest(m.as_bytes()))
        .expect_status(404, "the refused manifest");
    assert_eq!(used(&pier), before, "nothing counted");

    // docker: the message reaches the user; nothing is stored.
    let docker = Dockerd::start();
    let dir = temp_dir("rootfs");
    let rootfs = dir.path().join("rootfs.tar");
    fs::write(
        &rootfs,
        Tar::new().file("big", &unique_bytes(3 * MIB)).finish(),
    )
    .unwrap();
    let image = format!("{}/team/app:docker", pier.host());
    docker.ok(
        &["import", &rootfs.display().to_string(), &image],
        "docker import",
    );
    let o = run(docker.cmd().args(["push", &image]), CMD_TIMEOUT);
    assert!(!o.success(), "docker push over the quota\n{o}");
    assert!(
        o.all().contains("quota exceeded"),
        "docker shows the reason\n{o}"
    );
    get_manifest(a, "team/app", "docker").expect_status(404, "docker's tag");
    assert_eq!(used(&pier), before, "nothing counted");

    // Other projects are not limited.
    push_image(a, "other/app", Some("big"), &[&big]);

    // Delete the second image and collect: usage is the first image's bytes again.
    http::request(
        a,
        "DELETE",
        &format!("/v2/team/web/manifests/{}", second.digest),
        &[],
        b"",
    )
    .expect_status(202, "delete the second image");
    assert_eq!(used(&pier), referenced(&[&first]), "after the delete");
    admin(&pier, "POST", "/api/v1/gc?grace=0s", &Value::Null).expect_status(200, "gc");
    assert_eq!(used(&pier), referenced(&[&first]), "after the collection");
    for d in &second.layer_digests {
        let kept = blob_data_path(&pier.root, d).exists();
        assert_eq!(kept, first.layer_digests.contains(d), "{d} after gc");
    }
    // The listing shows the limit and the usage.
    let r = admin(&pier, "GET", "/api/v1/quotas", &Value::Null);
    r.expect_status(200, "list quotas");
    assert_eq!(
        r.json()["quotas"],
        json!([{"project": "team", "limit": 3 * MIB, "used": referenced(&[&first]), "items": 3}])
    );
    // Removed: pushes are free again.
    admin(&pier, "PUT", "/api/v1/quotas/team", &json!({"limit": null}))
        .expect_status(200, "remove the quota");
    push_image(a, "team/app", Some("big"), &[&big]);
    let log = fs::read_to_string(pier.log_path()).unwrap();
    assert!(log.contains("set_quota"), "the changes are audited");
}
