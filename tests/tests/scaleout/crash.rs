//! A node killed with SIGKILL in the middle of a push through the load balancer: the
//! client's retry succeeds, the other nodes serve the image exactly, and no partial blob
//! is ever visible in the bucket.

use std::collections::BTreeSet;
use std::thread;
use std::time::{Duration, Instant};

use crate::clients_support::*;
use crate::cluster::Cluster;
use crate::mirror_support::assert_layout_is;
use crate::support::*;

#[test]
fn kill9_node_during_push_then_retry() {
    let mut c = timed("cluster start", Cluster::start);
    let sk = Skopeo::new();
    let img = timed("build a 60 MiB image", || {
        big_image("v1", &[20 << 20, (20 << 20) + 777, 20 << 20])
    });
    let src = oci_source(&sk, &img, "big");
    let dest = format!("docker://{}/team/big:v1", c.lb_host());
    let args = [
        "copy",
        "--dest-tls-verify=false",
        src.as_str(),
        dest.as_str(),
    ];

    // Kill node 2 while it is receiving an upload body: once it has read 2 MiB more
    // than before the push (its PATCH of a 20 MiB layer is under way). Should the round
    // robin never give it a body, it is killed once an upload session exists plus 300 ms.
    let read_before = c.node(1).bytes_received();
    let mut cmd = sk.cmd();
    cmd.args(args);
    let started = Instant::now();
    let push = thread::spawn(move || run(&mut cmd, CMD_TIMEOUT));
    let mid_body = {
        let node2 = c.node(1);
        poll(Duration::from_secs(30), || {
            node2.bytes_received() > read_before + (2 << 20) || push.is_finished()
        }) && !push.is_finished()
    };
    if !mid_body && !push.is_finished() {
        poll(Duration::from_secs(30), || {
            c.has_upload_keys() || push.is_finished()
        });
        thread::sleep(Duration::from_millis(300));
    }
    let read_by_node2 = c.node(1).bytes_received().saturating_sub(read_before);
    let ended_before_kill = push.is_finished();
    c.kill9_node(1);
    let killed_at = started.elapsed();
    let first = push.join().expect("skopeo thread");
    eprintln!(
        "[scaleout] node2 killed {killed_at:.1?} after the push started ({}; it had read {} KiB of the push); first skopeo copy {} after {:.1?}",
        if mid_body {
            "while receiving an upload body"
        } else if ended_before_kill {
            "after the first skopeo copy had already ended"
        } else {
            "no upload body seen on node2: killed after an upload session appeared + 300 ms"
        },
        read_by_node2 >> 10,
        if first.success() {
            "succeeded"
        } else {
            "FAILED"
        },
        first.elapsed
    );
    // Right after the kill, before any retry: every blob key holds exactly the bytes its
    // name hashes to (the killed node's half-received layer is nowhere among them).
    assert_blob_store_consistent(&c.s3_root());
    let blobs = c.s3_root().join("docker/registry/v2/blobs");
    let after_kill = stored_blob_digests(&c.blob_files(), &blobs);
    let image_blobs: BTreeSet<String> = img.blob_digests().into_iter().collect();
    assert!(
        after_kill.is_subset(&image_blobs),
        "blob keys after the kill that are not the image's: {:?}",
        after_kill.difference(&image_blobs).collect::<Vec<_>>()
    );
    eprintln!(
        "[scaleout] blob keys after the kill: {} of the image's {} blobs, all whole",
        after_kill.len(),
        image_blobs.len()
    );
    if !first.success() {
        eprintln!(
            "[scaleout] first attempt's error:\n{}",
            tail(&first.stderr, 8)
        );
        timed("skopeo copy retry", || {
            sk.ok(&args, "skopeo copy retried after node 2 was killed")
        });
    }

    for i in [0, 2] {
        let node = c.node(i);
        let reference = format!("{}/team/big:v1", node.host());
        assert_eq!(
            inspect_raw_digest(&sk, &reference),
            img.manifest_digest,
            "manifest digest from node{}",
            node.n
        );
        let out = sk.pull_to_oci(&format!("docker://{reference}"), &format!("node{}", node.n));
        assert_layout_is(
            &out,
            &img,
            &format!("image copied back from node{}", node.n),
        );
    }

    // Nothing partial: every blob key holds the bytes its name hashes to, and the only
    // blobs are the image's own (config, layers, manifest).
    assert_blob_store_consistent(&c.s3_root());
    let stored = stored_blob_digests(&c.blob_files(), &blobs);
    let mut want = image_blobs.clone();
    want.insert(img.manifest_digest.clone());
    assert_eq!(stored, want, "blob keys in the bucket");

    // The killed node comes back and serves the same image.
    c.restart_node(1);
    assert_eq!(
        inspect_raw_digest(&sk, &format!("{}/team/big:v1", c.node(1).host())),
        img.manifest_digest,
        "manifest digest from the restarted node2"
    );
}
