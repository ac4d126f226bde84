//! Online garbage collection on the HA example (three nodes, one S3 bucket, Redis):
//! node 1 collects while pushes run on the other nodes; one of them references a blob
//! the collection is about to remove. Unreferenced blobs go; nothing a push references
//! is lost: every pushed image pulls back whole from every node.

use std::net::SocketAddr;
use std::thread;
use std::time::{Duration, Instant};

use pier_e2e::{http, sha256_digest};
use serde_json::json;

use crate::clients_support::*;
use crate::cluster::Cluster;

/// Pushes an image (a config and `layers`) as `repo:tag` through `addr`, pushing it all
/// again while a node answers 503 (a collection is removing one of its blobs).
fn push_until_ok(
    addr: SocketAddr,
    repo: &str,
    tag: &str,
    layers: &[&[u8]],
) -> (String, Vec<String>) {
    let config = format!("{{\"architecture\":\"amd64\",\"os\":\"linux\",\"rootfs\":{{\"type\":\"layers\",\"diff_ids\":[]}},\"tag\":\"{tag}\"}}").into_bytes();
    let deadline = Instant::now() + Duration::from_secs(90);
    'again: loop {
        assert!(Instant::now() < deadline, "{repo}:{tag} never went through");
        let mut descs = Vec::new();
        let mut digests = Vec::new();
        for (i, blob) in std::iter::once(config.as_slice())
            .chain(layers.iter().copied())
            .enumerate()
        {
            let d = sha256_digest(blob);
            let r = http::request(
                addr,
                "POST",
                &format!("/v2/{repo}/blobs/uploads/?digest={d}"),
                &[("Content-Type", "application/octet-stream")],
                blob,
            );
            match r.status {
                201 => {}
                503 => {
                    thread::sleep(Duration::from_millis(300));
                    continue 'again;
                }
                s => panic!("blob upload answered {s}: {r}"),
            }
            let mt = if i == 0 {
                "application/vnd.oci.image.config.v1+json"
            } else {
                "application/vnd.oci.image.layer.v1.tar+gzip"
            };
            descs.push(json!({"mediaType": mt, "digest": d, "size": blob.len()}));
            digests.push(d);
        }
        let m = serde_json::to_vec(&json!({"schemaVersion": 2,
            "mediaType": "application/vnd.oci.image.manifest.v1+json",
            "config": descs[0], "layers": descs[1..]}))
        .unwrap();
        let r = pier_e2e::push_manifest(
            addr,
            repo,
            tag,
            "application/vnd.oci.image.manifest.v1+json",
            &m,
        );
        match r.status {
            201 => return (sha256_digest(&m), digests),
            // A blob went meanwhile (MANIFEST_BLOB_UNKNOWN) or a collection is removing one.
            400 | 503 => {
                thread::sleep(Duration::from_millis(300));
                continue 'again;
            }
            s => panic!("manifest push answered {s}: {r}"),
        }
    }
}

/// The manifest and every blob of `repo:tag` come back from `addr` and hash right.
#[track_caller]
fn assert_whole(addr: SocketAddr, repo: &str, tag: &str, manifest: &str, blobs: &[String]) {
    let r = pier_e2e::get_manifest(addr, repo, tag);
    r.expect_status(200, &format!("{repo}:{tag} from {addr}"));
    assert_eq!(sha256_digest(&r.body), manifest);
    for d in blobs {
        let r = http::request(addr, "GET", &format!("/v2/{repo}/blobs/{d}"), &[], b"");
        r.expect_status(200, &format!("{repo}@{d} from {addr}"));
        assert_eq!(&sha256_digest(&r.body), d, "{repo}@{d} from {addr}");
    }
}

#[test]
fn online_gc_across_nodes_removes_garbage_and_loses_nothing_a_push_references() {
    // Node 1 pauses 1.5 s between deciding to remove a blob and removing it.
    let c = Cluster::builder()
        .node_env(1, "FAILPOINTS", "gc-before-remove=return(1500)")
        .start();
    let (n2, n3) = (c.node(1).addr, c.node(2).addr);

    // Garbage: an image whose manifest is deleted; its layer `shared` will be pushed
    // again while the collection runs, `lost` never.
    let shared = gzip(&unique_bytes(200_000));
    let lost = gzip(&unique_bytes(200_000));
    let (g, _) = push_until_ok(n2, "team/old", "1", &[&shared, &lost]);
    http::request(
        n2,
        "DELETE",
        &format!("/v2/team/old/manifests/{g}"),
        &[],
        b"",
    )
    .expect_status(202, "delete the old image");
    let kept = gzip(&unique_bytes(100_000));
    let (k, kb) = push_until_ok(n3, "team/kept", "1", &[&kept]);

    // The collection, on node 1.
    let admin = c.node(0).admin;
    let gc = thread::spawn(move || http::request(admin, "POST", "/api/v1/gc?grace=0s", &[], b""));
    // Past the announcement's settling: pushes on nodes 2 and 3 while it removes.
    thread::sleep(Duration::from_millis(2500));
    let mut pushed = Vec::new();
    for (i, addr) in [n2, n3, n2].into_iter().enumerate() {
        let fresh = gzip(&unique_bytes(50_000));
        let tag = format!("{i}");
        let (m, blobs) = push_until_ok(addr, "team/new", &tag, &[&shared, &fresh]);
        pushed.push((tag, m, blobs));
    }
    let r = gc.join().unwrap();
    r.expect_status(200, "the collection");
    let report = r.json();
    assert!(
        report["blobsRemoved"].as_u64().unwrap_or(0) >= 1,
        "{report}"
    );

    // Nothing a push referenced is lost, on any node.
    for node in &c.nodes {
        assert_whole(node.addr, "team/kept", "1", &k, &kb);
        for (tag, m, blobs) in &pushed {
            assert_whole(node.addr, "team/new", tag, m, blobs);
        }
    }
    // The garbage nobody pushed again is gone from the bucket.
    let lost_hex = sha256_digest(&lost)
        .trim_start_matches("sha256:")
        .to_owned();
    assert!(
        !c.blob_files()
            .iter()
            .any(|f| f.to_string_lossy().contains(&lost_hex)),
        "the unreferenced layer is removed"
    );
    // Offline, `pier gc --config` collects the bucket a node's configuration names: the
    // old image's config (unreferenced since its manifest went) would go; the rest stays.
    let out = pier_e2e::pier_command()
        .args(["gc", "--config"])
        .arg(&c.node(0).config)
        .arg("--root")
        .arg(&c.node(0).root)
        .args(["--dry-run", "--grace", "0s"])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "pier gc --config\n{text}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(text.contains("gc: would remove 0 manifests and"), "{text}");
    assert!(
        !text.contains(&k.trim_start_matches("sha256:")[..12]),
        "kept image listed\n{text}"
    );
    let log = c.node(0).log_text();
    assert!(
        !log.contains("refused when nodes share storage"),
        "{}",
        c.node(0).log_tail(20)
    );
}
