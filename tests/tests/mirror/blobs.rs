//! Blob fills: concurrent cold pulls share one upstream GET and each client gets every
//! byte; a blob whose upstream bytes do not match its digest reaches no client whole and
//! is not cached.

use std::fs;
use std::sync::{Arc, Barrier};
use std::thread;
use std::time::{Duration, Instant};

use crate::clients_support::*;
use crate::support::*;
use pier_e2e::TestPier;

const BIG: u64 = 100 * 1024 * 1024;
const CLIENTS: usize = 50;

/// 50 clients GET the same uncached ~100 MiB blob at once: each receives exactly its
/// bytes (hashed while read), and the upstream served one GET of it.
#[test]
fn concurrent_cold_pulls_share_one_upstream_get() {
    let up = Upstream::start();
    let g = Generator::new(
        0x6d69_7272_6f72_0001 ^ unique_bytes(8)[0] as u64,
        BIG + 12_345,
    );
    let digest = up.push_blob("library/big", &g);
    let pier = pier_mirroring(&up, &[]);
    let path = format!("/v2/library/big/blobs/{digest}");

    let barrier = Arc::new(Barrier::new(CLIENTS));
    let started = Instant::now();
    let handles: Vec<_> = (0..CLIENTS)
        .map(|_| {
            let b = barrier.clone();
            let addr = pier.addr;
            let path = path.clone();
            thread::spawn(move || {
                b.wait();
                stream_get(addr, &path, &[])
            })
        })
        .collect();
    let results: Vec<Pulled> = handles
        .into_iter()
        .map(|h| h.join().expect("client thread"))
        .collect();
    let took = started.elapsed();
    let bad: Vec<String> = results
        .iter()
        .enumerate()
        .filter(|(_, p)| !p.is_exactly(&digest, g.len))
        .map(|(i, p)| format!("client {i}: {}", p.summary()))
        .collect();
    assert!(
        bad.is_empty(),
        "{} of {CLIENTS} clients did not get the blob ({digest}, {} bytes) whole:\n{}\n{}",
        bad.len(),
        g.len,
        bad.join("\n"),
        pier.log_tail(30)
    );
    eprintln!(
        "{CLIENTS} concurrent cold pulls of {} MiB took {took:.1?}",
        g.len >> 20
    );

    // The access log line is written when the upstream response ends.
    let _ = pier_e2e::wait_until(Duration::from_secs(5), Duration::from_millis(50), || {
        up.count("GET", &path) >= 1
    });
    thread::sleep(Duration::from_millis(200));
    assert_eq!(
        up.count("GET", &path),
        1,
        "upstream GETs of the blob for {CLIENTS} concurrent cold pulls\n{}",
        up.access_lines("/blobs/")
    );
    // Clients have every byte once the digest matched; the commit (fsync, rename) may
    // still be running.
    assert!(
        pier_e2e::wait_until(Duration::from_secs(15), Duration::from_millis(50), || {
            blob_data_path(&pier.root, &digest).is_file()
        }),
        "the blob was not cached"
    );
    assert_blob_store_consistent(&pier.root);

    // Warm: served from the cache, no further upstream GET.
    let p = stream_get(pier.addr, &path, &[]);
    assert!(p.is_exactly(&digest, g.len), "warm pull: {}", p.summary());
    thread::sleep(Duration::from_millis(200));
    assert_eq!(up.count("GET", &path), 1, "a warm pull went upstream");
}

/// The upstream's stored bytes are replaced (same length): three concurrent pulls through
/// Pier all fail (an aborted or error response, never the whole body), nothing lands in
/// Pier's blob store; once the upstream's file is restored the next pull succeeds.
#[test]
fn corrupted_upstream_blob_reaches_no_client_and_is_not_cached() {
    let (up, g, digest) = upstream_with_blob("library/corrupt", 0x636f_7272_7570_7401, 16 << 20);
    let file = up.blob_data_path(&digest);
    assert_eq!(
        fs::metadata(&file).map(|m| m.len()).ok(),
        Some(g.len),
        "upstream blob file {}",
        file.display()
    );
    let original = fs::read(&file).unwrap();
    let mut corrupt = vec![0u8; original.len()];
    Generator::new(g.seed ^ 0xdead_beef, g.len).fill(0, &mut corrupt);
    fs::write(&file, &corrupt).unwrap();

    // With every byte stored, the fill waits 1.5 s before it checks the digest: time for
    // each client to receive whatever Pier releases before the check, so a Pier that
    // released the last byte early is caught on every run, not only when it loses a race.
    let pier = pier_with_fail_point(&up, "mirror-fill-before-verify=return(1500)");
    let path = format!("/v2/library/corrupt/blobs/{digest}");
    let barrier = Arc::new(Barrier::new(3));
    let handles: Vec<_> = (0..3)
        .map(|_| {
            let b = barrier.clone();
            let addr = pier.addr;
            let path = path.clone();
            thread::spawn(move || {
                b.wait();
                stream_get(addr, &path, &[])
            })
        })
        .collect();
    for (i, h) in handles.into_iter().enumerate() {
        let p = h.join().expect("client thread");
        eprintln!("corrupt blob, client {i}: {}", p.summary());
        let whole = p.status == 200 && p.complete;
        assert!(
            !whole,
            "client {i} received a whole 200 body for a blob whose upstream bytes do not match its digest: {}",
            p.summary()
        );
        if p.status == 200 {
            assert!(
                p.received < g.len,
                "client {i} received every byte of a corrupt blob: {}",
                p.summary()
            );
        }
    }
    // Nothing of it is cached, now or after the fill's clean-up.
    thread::sleep(Duration::from_millis(500));
    let cached = blob_data_path(&pier.root, &digest);
    assert!(
        !cached.exists(),
        "the corrupt blob was cached at {}",
        cached.display()
    );
    assert_blob_store_consistent(&pier.root);

    // Repaired upstream: the next pull gets the right bytes and caches them.
    fs::write(&file, &original).unwrap();
    let p = stream_get(pier.addr, &path, &[]);
    assert!(
        p.is_exactly(&digest, g.len),
        "pull after the upstream was repaired: {}\n{}",
        p.summary(),
        pier.log_tail(20)
    );
    assert!(
        pier_e2e::wait_until(Duration::from_secs(5), Duration::from_millis(50), || cached
            .is_file()),
        "the repaired blob was not cached"
    );
    assert_blob_store_consistent(&pier.root);
}

/// A cold blob's clients have every byte once the digest matched, before the store has
/// made it durable (the fsync and the rename into place are no client's wait): with the
/// commit held for 4 s, two clients at once finish, exactly right, while the blob is not
/// yet in the store; then it lands there, and the upstream sent it once.
#[test]
fn cold_clients_finish_before_the_fill_is_made_durable() {
    let (up, g, digest) = upstream_with_blob("library/durable", 0x6475_7261_626c_6501, 8 << 20);
    let pier = pier_with_fail_point(&up, "mirror-fill-before-commit=return(4000)");
    let path = format!("/v2/library/durable/blobs/{digest}");
    let cached = blob_data_path(&pier.root, &digest);

    let first = {
        let (addr, path) = (pier.addr, path.clone());
        thread::spawn(move || stream_get(addr, &path, &[]))
    };
    let second = stream_get(pier.addr, &path, &[]);
    let first = first.join().expect("client thread");
    for (i, p) in [&first, &second].into_iter().enumerate() {
        assert!(
            p.is_exactly(&digest, g.len),
            "client {i}: {}\n{}",
            p.summary(),
            pier.log_tail(20)
        );
    }
    assert!(
        !cached.exists(),
        "the blob was already stored when its clients finished: they waited for the commit \
         held 4 s by the fail point"
    );
    // A request while the commit runs is a hit: every byte is here and verified.
    let stats = || {
        let r = pier_e2e::http::request(pier.admin_addr, "GET", "/api/v1/mirror", &[], b"");
        r.expect_status(200, "mirror stats");
        r.json()
    };
    let before = stats();
    let third = stream_get(pier.addr, &path, &[]);
    assert!(
        third.is_exactly(&digest, g.len),
        "client 2: {}",
        third.summary()
    );
    let after = stats();
    assert!(
        !cached.exists(),
        "the commit ended before the third client was served"
    );
    for (field, more) in [("blobHits", 1), ("cacheBytes", g.len), ("blobMisses", 0)] {
        assert_eq!(
            after[field].as_u64().unwrap() - before[field].as_u64().unwrap(),
            more,
            "{field}: before {before}, after {after}"
        );
    }
    assert!(
        pier_e2e::wait_until(Duration::from_secs(15), Duration::from_millis(50), || {
            cached.is_file()
        }),
        "the blob was not stored after the commit's hold\n{}",
        pier.log_tail(20)
    );
    assert_blob_store_consistent(&pier.root);
    // From the store now: no second upstream GET.
    let p = stream_get(pier.addr, &path, &[]);
    assert!(p.is_exactly(&digest, g.len), "warm pull: {}", p.summary());
    assert_eq!(
        up.count("GET", &format!("/v2/library/durable/blobs/{digest}")),
        1,
        "upstream GETs of the blob:\n{}",
        up.access_lines(&digest)
    );
}

/// An upstream holding one blob of `repo`: a little over `len` bytes (so that no chunk
/// boundary lines up with the end) from `seed` and this run's random bytes.
fn upstream_with_blob(repo: &str, seed: u64, len: u64) -> (Upstream, Generator, String) {
    let up = Upstream::start();
    let g = Generator::new(seed ^ unique_bytes(8)[0] as u64, len + 7);
    let digest = up.push_blob(repo, &g);
    (up, g, digest)
}

/// Pier mirroring `up`, with one fail point set.
fn pier_with_fail_point(up: &Upstream, fail_point: &str) -> TestPier {
    TestPier::builder()
        .arg("--upstream")
        .arg(up.url())
        .env("FAILPOINTS", fail_point)
        .start()
}
