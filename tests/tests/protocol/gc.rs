//! `pier gc`: mark and sweep over the storage root.

use std::path::PathBuf;

use super::*;

const REPO: &str = "test/gc";

/// `blobs/<alg>/<2 hex>/<hex>/data` in the CNCF layout.
fn blob_file(p: &TestPier, digest: &str) -> PathBuf {
    let (alg, hex) = digest.split_once(':').unwrap();
    p.blobs_dir()
        .join(alg)
        .join(&hex[..2])
        .join(hex)
        .join("data")
}

fn hex_of(digest: &str) -> &str {
    digest.split_once(':').unwrap().1
}

#[track_caller]
fn gc_ok(p: &TestPier, args: &[&str]) -> String {
    let out = run_gc(&p.root, args);
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(
        out.status.success(),
        "pier gc {args:?} failed with {}\nstdout:\n{stdout}\nstderr:\n{stderr}",
        out.status
    );
    stdout
}

#[test]
fn gc_removes_only_unreferenced_blobs() {
    let mut p = TestPier::start();
    let shared = random_bytes(4000);
    let only_a = random_bytes(3000);
    let only_b = random_bytes(2000);
    let a = push_image(p.addr, REPO, Some("a"), &[&shared, &only_a]);
    let b = push_image(p.addr, REPO, Some("b"), &[&shared, &only_b]);
    http::delete(p.addr, &format!("/v2/{REPO}/manifests/{}", a.digest))
        .expect_status(202, "DELETE manifest a");
    p.stop();

    let a_only = [
        a.layer_digests[1].clone(),
        a.config_digest.clone(),
        a.digest.clone(),
    ];
    let kept = [
        a.layer_digests[0].clone(),
        b.layer_digests[1].clone(),
        b.config_digest.clone(),
        b.digest.clone(),
    ];
    for d in a_only[..2].iter().chain(&kept) {
        assert!(
            blob_file(&p, d).exists(),
            "{d} should be stored before gc at {}",
            blob_file(&p, d).display()
        );
    }

    let dry = gc_ok(&p, &["--grace", "0s", "--dry-run"]);
    for d in &a_only[..2] {
        assert!(dry.contains(hex_of(d)), "dry run should list {d}:\n{dry}");
    }
    for d in &kept {
        assert!(
            !dry.contains(hex_of(d)),
            "dry run lists {d}, which is still referenced:\n{dry}"
        );
    }
    for d in a_only[..2].iter().chain(&kept) {
        assert!(blob_file(&p, d).exists(), "--dry-run removed {d}");
    }

    let real = gc_ok(&p, &["--grace", "0s"]);
    for d in &a_only[..2] {
        assert!(real.contains(hex_of(d)), "gc should list {d}:\n{real}");
    }
    for d in &a_only {
        assert!(
            !blob_file(&p, d).exists(),
            "gc kept unreferenced {d}:\n{real}"
        );
    }
    for d in &kept {
        assert!(
            blob_file(&p, d).exists(),
            "gc removed referenced {d}:\n{real}"
        );
    }

    p.start_again();
    let r = get_manifest(p.addr, REPO, "b");
    r.expect_status(200, "image b after gc");
    assert!(r.body == b.manifest);
    assert_blob(p.addr, REPO, &b.layer_digests[0], &shared);
    assert_blob(p.addr, REPO, &b.layer_digests[1], &only_b);
    let cfg = get_blob(p.addr, REPO, &b.config_digest);
    cfg.expect_status(200, "config of b after gc");
    assert_no_blob(p.addr, REPO, &a.layer_digests[1]);
    assert_no_blob(p.addr, REPO, &a.config_digest);
    get_manifest(p.addr, REPO, &a.digest).expect_error(
        404,
        "MANIFEST_UNKNOWN",
        "deleted manifest after gc",
    );
    p.stop();

    // a second run has nothing to do
    let again = gc_ok(&p, &["--grace", "0s"]);
    for d in a_only.iter().chain(&kept) {
        assert!(!again.contains(hex_of(d)), "second gc lists {d}:\n{again}");
    }
}

#[test]
fn gc_grace_protects_young_blobs() {
    let mut p = TestPier::start();
    let a = push_image(p.addr, REPO, Some("a"), &[b"young layer"]);
    let orphan = push_blob(p.addr, REPO, b"an orphan blob");
    http::delete(p.addr, &format!("/v2/{REPO}/manifests/{}", a.digest))
        .expect_status(202, "DELETE manifest a");
    p.stop();
    let out = gc_ok(&p, &[]);
    for d in [&a.layer_digests[0], &a.config_digest, &orphan] {
        assert!(
            blob_file(&p, d).exists(),
            "gc with the default 1h grace removed young {d}:\n{out}"
        );
    }
    let out = gc_ok(&p, &["--grace", "1h"]);
    assert!(
        blob_file(&p, &orphan).exists(),
        "--grace 1h removed a young blob:\n{out}"
    );
    let out = gc_ok(&p, &["--grace", "0s"]);
    assert!(
        !blob_file(&p, &orphan).exists(),
        "--grace 0s kept an orphan blob:\n{out}"
    );
    assert!(
        !blob_file(&p, &a.layer_digests[0]).exists(),
        "--grace 0s kept an unreferenced layer:\n{out}"
    );
}

#[test]
fn gc_untagged() {
    let mut p = TestPier::start();
    let untagged = push_image(p.addr, REPO, None, &[b"untagged layer"]);
    let tagged = push_image(p.addr, REPO, Some("t"), &[b"tagged layer"]);
    // a child referenced only by a tagged index must survive --untagged
    let child = push_image(p.addr, REPO, None, &[b"child layer"]);
    let index = serde_json::to_vec(&serde_json::json!({
        "schemaVersion": 2,
        "mediaType": media::OCI_INDEX,
        "manifests": [descriptor(media::OCI_MANIFEST, &child.manifest)],
    }))
    .unwrap();
    push_manifest(p.addr, REPO, "idx", media::OCI_INDEX, &index).expect_status(201, "PUT index");
    // a tag moved away leaves the old manifest untagged
    let old = push_image(p.addr, REPO, Some("moving"), &[b"old layer"]);
    let new = push_image(p.addr, REPO, Some("moving"), &[b"new layer"]);
    p.stop();

    // without --untagged, untagged manifests stay
    let out = gc_ok(&p, &["--grace", "0s"]);
    for d in [
        &untagged.digest,
        &untagged.layer_digests[0],
        &old.digest,
        &old.layer_digests[0],
    ] {
        assert!(
            blob_file(&p, d).exists(),
            "gc without --untagged removed {d}:\n{out}"
        );
    }

    let dry = gc_ok(&p, &["--grace", "0s", "--untagged", "--dry-run"]);
    assert!(
        dry.contains(hex_of(&untagged.digest)),
        "dry run should list the untagged manifest:\n{dry}"
    );
    assert!(
        blob_file(&p, &untagged.digest).exists(),
        "--dry-run removed a manifest"
    );

    let out = gc_ok(&p, &["--grace", "0s", "--untagged"]);
    for gone in [&untagged, &old] {
        for d in [&gone.digest, &gone.config_digest, &gone.layer_digests[0]] {
            assert!(!blob_file(&p, d).exists(), "--untagged kept {d}:\n{out}");
        }
    }
    for kept in [&tagged, &child, &new] {
        for d in [&kept.digest, &kept.config_digest, &kept.layer_digests[0]] {
            assert!(
                blob_file(&p, d).exists(),
                "--untagged removed {d}, which is still reachable:\n{out}"
            );
        }
    }
    assert!(
        blob_file(&p, &sha256_digest(&index)).exists(),
        "--untagged removed the tagged index"
    );

    p.start_again();
    get_manifest(p.addr, REPO, &untagged.digest).expect_error(
        404,
        "MANIFEST_UNKNOWN",
        "untagged manifest after gc",
    );
    get_manifest(p.addr, REPO, &old.digest).expect_error(
        404,
        "MANIFEST_UNKNOWN",
        "formerly tagged manifest after gc",
    );
    for (what, reference) in [
        ("t", "t".to_string()),
        ("idx", "idx".to_string()),
        ("child", child.digest.clone()),
        ("moving", "moving".to_string()),
    ] {
        get_manifest(p.addr, REPO, &reference)
            .expect_status(200, &format!("{what} after gc --untagged"));
    }
    let r = get_manifest(p.addr, REPO, "moving");
    r.expect_header("docker-content-digest", &new.digest, "moving tag");
    assert_blob(p.addr, REPO, &child.layer_digests[0], b"child layer");
}

#[test]
fn gc_keeps_blobs_of_large_manifests() {
    let mut p = TestPier::start();
    let config = b"{\"os\":\"linux\",\"big\":true}".to_vec();
    let layer = random_bytes(5000);
    let cd = push_blob(p.addr, REPO, &config);
    let ld = push_blob(p.addr, REPO, &layer);
    let pad = "p".repeat(3 * 1024 * 1024);
    let m = oci_manifest(
        &config,
        &[&layer],
        serde_json::json!({"annotations": {"pad": pad}}),
    );
    push_manifest(p.addr, REPO, "big", media::OCI_MANIFEST, &m)
        .expect_status(201, "PUT a 3 MiB manifest");
    p.stop();
    let out = gc_ok(&p, &["--grace", "0s"]);
    for d in [&cd, &ld, &sha256_digest(&m)] {
        assert!(
            blob_file(&p, d).exists(),
            "gc removed {d}, referenced by the tagged 3 MiB manifest:\n{out}"
        );
    }
    let out = gc_ok(&p, &["--grace", "0s", "--untagged"]);
    for d in [&cd, &ld, &sha256_digest(&m)] {
        assert!(
            blob_file(&p, d).exists(),
            "gc --untagged removed {d}, referenced by the tagged 3 MiB manifest:\n{out}"
        );
    }
}

#[test]
fn gc_keeps_blobs_of_manifest_without_media_type_field() {
    // An OCI manifest pushed with its Content-Type but no `mediaType` field: its config and
    // layers are still referenced.
    let mut p = TestPier::start();
    let config = b"{\"os\":\"linux\",\"plain\":true}".to_vec();
    let layer = random_bytes(3000);
    let cd = push_blob(p.addr, REPO, &config);
    let ld = push_blob(p.addr, REPO, &layer);
    // With a `manifests` key as well, the document could be read as an index: refused,
    // and so nothing for gc to get wrong.
    let ambiguous = serde_json::to_vec(&serde_json::json!({
        "schemaVersion": 2,
        "config": descriptor(media::OCI_CONFIG, &config),
        "layers": [descriptor(media::OCI_LAYER, &layer)],
        "manifests": [],
    }))
    .unwrap();
    push_manifest(p.addr, REPO, "ambiguous", media::OCI_MANIFEST, &ambiguous).expect_error(
        400,
        "MANIFEST_INVALID",
        "a manifest with config, layers and manifests",
    );
    // Without it, the media type comes from the Content-Type alone.
    let m = serde_json::to_vec(&serde_json::json!({
        "schemaVersion": 2,
        "config": descriptor(media::OCI_CONFIG, &config),
        "layers": [descriptor(media::OCI_LAYER, &layer)],
    }))
    .unwrap();
    push_manifest(p.addr, REPO, "plain", media::OCI_MANIFEST, &m)
        .expect_status(201, "PUT manifest without mediaType");
    p.stop();
    let out = gc_ok(&p, &["--grace", "0s"]);
    for d in [&cd, &ld] {
        assert!(
            blob_file(&p, d).exists(),
            "gc removed {d}, referenced by the tagged manifest:\n{out}"
        );
    }
}

#[test]
fn gc_while_serving_spares_pushes_in_progress() {
    // `pier gc` against the root of a running server: the grace period protects blobs
    // whose manifest has not arrived yet, and upload sessions are left alone.
    let p = TestPier::start();
    let keep = push_image(p.addr, REPO, Some("keep"), &[b"kept layer"]);
    let config = b"{\"os\":\"linux\",\"late\":1}".to_vec();
    let layer = random_bytes(4000);
    push_blob(p.addr, REPO, &config);
    push_blob(p.addr, REPO, &layer);
    let upload = random_bytes(5000);
    let loc = start_upload(p.addr, REPO);
    let r = patch_chunk(p.addr, &loc, 0, &upload[..2000]);
    r.expect_status(202, "PATCH before gc");
    let loc = location_path(&r);

    let out = gc_ok(&p, &["--untagged"]);

    let m = oci_manifest(&config, &[&layer], serde_json::json!({}));
    push_manifest(p.addr, REPO, "late", media::OCI_MANIFEST, &m).expect_status(
        201,
        &format!("manifest pushed after a concurrent gc:\n{out}"),
    );
    assert_blob(p.addr, REPO, &sha256_digest(&layer), &layer);
    assert_blob(p.addr, REPO, &keep.layer_digests[0], b"kept layer");
    let r = upload_status(p.addr, &loc);
    r.expect_status(
        204,
        &format!("upload session after a concurrent gc:\n{out}"),
    );
    assert_eq!(upload_range(&r), (0, 1999), "upload offset after gc\n{r}");
    let r = patch_chunk(p.addr, &location_path(&r), 2000, &upload[2000..]);
    r.expect_status(202, "PATCH after gc");
    let d = sha256_digest(&upload);
    put_upload(p.addr, &location_path(&r), &d, b"").expect_status(201, "PUT after gc");
    assert_blob(p.addr, REPO, &d, &upload);
}
