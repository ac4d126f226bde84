//! Cold mirror pulls spread over the nodes: one node takes the cross-node fill lease and
//! fetches the blob from the upstream once; the others wait for it to land in S3.

use std::sync::{Arc, Barrier};
use std::thread;
use std::time::{Duration, Instant};

use crate::clients_support::*;
use crate::cluster::Cluster;
use crate::mirror_support::{Pulled, Upstream, stream_get};

const CLIENTS: usize = 30;
const SIZE: u64 = (20 << 20) + 4321;

#[test]
fn concurrent_cold_mirror_pulls_over_three_nodes_fetch_once() {
    let up = Upstream::start();
    let g = Generator::new(0x7363_616c_656f_7574 ^ unique_bytes(8)[0] as u64, SIZE);
    let digest = up.push_blob("library/big", &g);
    let c = Cluster::builder()
        .extra_toml(&format!(
            "[[upstreams]]\nname = \"up\"\nurl = \"{}\"\n",
            up.url()
        ))
        .start();
    let path = format!("/v2/up/library/big/blobs/{digest}");

    let barrier = Arc::new(Barrier::new(CLIENTS));
    let started = Instant::now();
    let handles: Vec<_> = (0..CLIENTS)
        .map(|i| {
            let b = barrier.clone();
            let addr = c.node(i % 3).addr;
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
        .filter(|(_, p)| !p.is_exactly(&digest, SIZE))
        .map(|(i, p)| format!("client {i} (node{}): {}", i % 3 + 1, p.summary()))
        .collect();
    assert!(
        bad.is_empty(),
        "{} of {CLIENTS} clients did not get the blob ({digest}, {SIZE} bytes) whole:\n{}",
        bad.len(),
        bad.join("\n")
    );
    eprintln!(
        "[scaleout] {CLIENTS} concurrent cold pulls of {} MiB over 3 nodes: {took:.1?}",
        SIZE >> 20
    );

    // The access log line is written when the upstream's response ends.
    let upstream_path = format!("/v2/library/big/blobs/{digest}");
    let _ = pier_e2e::wait_until(Duration::from_secs(5), Duration::from_millis(50), || {
        up.count("GET", &upstream_path) >= 1
    });
    thread::sleep(Duration::from_millis(300));
    assert_eq!(
        up.count("GET", &upstream_path),
        1,
        "upstream GETs of the blob for {CLIENTS} cold pulls over 3 nodes\n{}",
        up.access_lines("/blobs/")
    );
    assert_blob_store_consistent(&c.s3_root());
}
