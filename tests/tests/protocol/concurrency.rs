//! Concurrent pushes of the same blob and the same tag.

use std::sync::{Arc, Barrier};
use std::thread;

use super::*;

const REPO: &str = "test/concurrency";

#[test]
fn same_blob_pushed_concurrently() {
    let p = TestPier::start();
    let data = Arc::new(random_bytes(3 * 1024 * 1024 + 7));
    let digest = sha256_digest(&data);
    let threads = 4;
    let barrier = Arc::new(Barrier::new(threads));
    let handles: Vec<_> = (0..threads)
        .map(|i| {
            let (addr, data, digest, barrier) =
                (p.addr, data.clone(), digest.clone(), barrier.clone());
            thread::spawn(move || {
                let loc = start_upload(addr, REPO);
                barrier.wait();
                if i % 2 == 0 {
                    // chunked
                    let mut loc = loc;
                    let mut off = 0;
                    for chunk in data.chunks(512 * 1024) {
                        let r = patch_chunk(addr, &loc, off, chunk);
                        r.expect_status(202, &format!("thread {i}: PATCH at {off}"));
                        off += chunk.len();
                        loc = location_path(&r);
                    }
                    put_upload(addr, &loc, &digest, b"")
                } else {
                    put_upload(addr, &loc, &digest, &data)
                }
            })
        })
        .collect();
    for (i, h) in handles.into_iter().enumerate() {
        let r = h.join().expect("push thread panicked");
        r.expect_status(201, &format!("thread {i}: PUT"));
        assert_eq!(location_path(&r), format!("/v2/{REPO}/blobs/{digest}"));
    }
    assert_blob(p.addr, REPO, &digest, &data);
    assert_eq!(
        files_with(&p.blobs_dir(), &data).len(),
        1,
        "exactly one stored copy"
    );
    // and nothing partial left in upload areas
    let copies = files_with(&p.root, &data);
    assert_eq!(
        copies.len(),
        1,
        "copies of the blob under the root: {copies:?}"
    );
}

#[test]
fn same_monolithic_blob_pushed_concurrently() {
    let p = TestPier::start();
    let data = Arc::new(random_bytes(1024 * 1024));
    let digest = sha256_digest(&data);
    let barrier = Arc::new(Barrier::new(2));
    let handles: Vec<_> = (0..2)
        .map(|_| {
            let (addr, data, digest, barrier) =
                (p.addr, data.clone(), digest.clone(), barrier.clone());
            thread::spawn(move || {
                barrier.wait();
                http::request(
                    addr,
                    "POST",
                    &format!("/v2/{REPO}/blobs/uploads/?digest={digest}"),
                    &[("Content-Type", "application/octet-stream")],
                    &data,
                )
            })
        })
        .collect();
    for h in handles {
        h.join()
            .unwrap()
            .expect_status(201, "concurrent monolithic POST");
    }
    assert_blob(p.addr, REPO, &digest, &data);
    assert_eq!(
        files_with(&p.root, &data).len(),
        1,
        "exactly one stored copy"
    );
}

#[test]
fn same_tag_pushed_concurrently() {
    let p = TestPier::start();
    let a = push_image(p.addr, REPO, None, &[b"layer a"]);
    let b = push_image(p.addr, REPO, None, &[b"layer b"]);
    for round in 0..5 {
        let barrier = Arc::new(Barrier::new(2));
        let handles: Vec<_> = [a.manifest.clone(), b.manifest.clone()]
            .into_iter()
            .map(|m| {
                let (addr, barrier) = (p.addr, barrier.clone());
                thread::spawn(move || {
                    barrier.wait();
                    push_manifest(addr, REPO, "racy", media::OCI_MANIFEST, &m)
                })
            })
            .collect();
        for h in handles {
            h.join()
                .unwrap()
                .expect_status(201, &format!("round {round}: concurrent tag PUT"));
        }
        let r = get_manifest(p.addr, REPO, "racy");
        r.expect_status(200, "GET racy tag");
        let dcd = r
            .require_header("docker-content-digest", "GET racy")
            .to_owned();
        assert_eq!(
            sha256_digest(&r.body),
            dcd,
            "round {round}: body and Docker-Content-Digest disagree\n{r}"
        );
        assert!(
            dcd == a.digest || dcd == b.digest,
            "round {round}: tag resolves to neither manifest: {dcd}"
        );
        let h = p.head(&format!("/v2/{REPO}/manifests/racy"));
        h.expect_header("docker-content-digest", &dcd, "HEAD agrees with GET");
        let t = p.get(&format!("/v2/{REPO}/tags/list"));
        t.expect_status(200, "tags/list");
        assert_eq!(
            t.json()["tags"],
            serde_json::json!(["racy"]),
            "round {round}: tags\n{t}"
        );
    }
}

/// Spins HEAD requests on `path` from two threads until `stop` is set.
fn spin_heads(
    addr: SocketAddr,
    path: String,
    stop: Arc<std::sync::atomic::AtomicBool>,
) -> Vec<thread::JoinHandle<()>> {
    (0..2)
        .map(|_| {
            let (path, stop) = (path.clone(), stop.clone());
            thread::spawn(move || {
                while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                    let _ = http::try_request(addr, "HEAD", &path, &[], b"");
                }
            })
        })
        .collect()
}

/// After a DELETE has answered, reads must see the deletion, even when other reads of
/// the same manifest or blob were in flight (a cache filled by one of them must not
/// resurrect it). Rounds: `PIER_E2E_RACE_ROUNDS` (default 40).
#[test]
fn delete_wins_over_concurrent_reads() {
    use std::sync::atomic::{AtomicBool, Ordering};
    let p = TestPier::start();
    let config = b"{\"os\":\"linux\"}".to_vec();
    push_blob(p.addr, REPO, &config);
    let rounds: usize = std::env::var("PIER_E2E_RACE_ROUNDS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(40);
    for i in 0..rounds {
        // a manifest deleted by digest while others read it
        let layer = random_bytes(64);
        let ld = push_blob(p.addr, REPO, &layer);
        let m = oci_manifest(&config, &[&layer], serde_json::json!({}));
        let md = sha256_digest(&m);
        push_manifest(p.addr, REPO, &md, media::OCI_MANIFEST, &m).expect_status(201, "PUT");
        let stop = Arc::new(AtomicBool::new(false));
        let readers = spin_heads(p.addr, format!("/v2/{REPO}/manifests/{md}"), stop.clone());
        thread::sleep(std::time::Duration::from_millis(5));
        http::delete(p.addr, &format!("/v2/{REPO}/manifests/{md}"))
            .expect_status(202, "DELETE manifest");
        let after = p.head(&format!("/v2/{REPO}/manifests/{md}"));
        thread::sleep(std::time::Duration::from_millis(20));
        let later = p.head(&format!("/v2/{REPO}/manifests/{md}"));
        stop.store(true, Ordering::Relaxed);
        for r in readers {
            r.join().unwrap();
        }
        after.expect_status(
            404,
            &format!("round {i}: HEAD manifest right after its DELETE"),
        );
        later.expect_status(
            404,
            &format!("round {i}: HEAD manifest 20 ms after its DELETE"),
        );

        // a blob deleted while others read it
        let stop = Arc::new(AtomicBool::new(false));
        let readers = spin_heads(p.addr, format!("/v2/{REPO}/blobs/{ld}"), stop.clone());
        thread::sleep(std::time::Duration::from_millis(5));
        http::delete(p.addr, &format!("/v2/{REPO}/blobs/{ld}")).expect_status(202, "DELETE blob");
        let after = head_blob(p.addr, REPO, &ld);
        thread::sleep(std::time::Duration::from_millis(20));
        let later = head_blob(p.addr, REPO, &ld);
        stop.store(true, Ordering::Relaxed);
        for r in readers {
            r.join().unwrap();
        }
        after.expect_status(404, &format!("round {i}: HEAD blob right after its DELETE"));
        later.expect_status(404, &format!("round {i}: HEAD blob 20 ms after its DELETE"));
    }
}
