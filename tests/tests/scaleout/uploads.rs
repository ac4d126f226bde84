//! One chunked upload whose requests go to different nodes: the session must be shared
//! through S3 (and Redis), not kept in one node's memory.

use pier_e2e::{http, location_path, sha256_digest, with_query};

use crate::clients_support::assert_blob_store_consistent;
use crate::cluster::Cluster;

const CHUNK: usize = 4 << 20;

/// POST on node 1, PATCH chunk 1 on node 2, chunk 2 on node 1, chunk 3 on node 3, PUT on
/// node 2: 4 MiB chunks against 5 MiB S3 parts, so part buffering crosses chunk (and
/// node) boundaries. Every step succeeds and every node serves the exact bytes.
#[test]
fn chunked_upload_hops_between_nodes() {
    let c = Cluster::start();
    let repo = "team/chunks";
    let data = pier_e2e::random_bytes(3 * CHUNK);
    let digest = sha256_digest(&data);
    let node = |i: usize| c.node(i).addr;

    let mut loc = pier_e2e::start_upload(node(0), repo);
    for (k, on) in [(0usize, 1usize), (1, 0), (2, 2)] {
        let (start, end) = (k * CHUNK, (k + 1) * CHUNK);
        let range = format!("{start}-{}", end - 1);
        let r = http::request(
            node(on),
            "PATCH",
            &loc,
            &[
                ("Content-Type", "application/octet-stream"),
                ("Content-Range", &range),
            ],
            &data[start..end],
        );
        let what = format!("PATCH chunk {} ({range}) on node{}", k + 1, on + 1);
        r.expect_status(202, &what);
        assert_eq!(
            r.header("range"),
            Some(format!("0-{}", end - 1).as_str()),
            "{what}: Range\n{r}"
        );
        loc = location_path(&r);
    }
    let r = http::request(
        node(1),
        "PUT",
        &with_query(&loc, &format!("digest={digest}")),
        &[],
        b"",
    );
    r.expect_status(201, "PUT ?digest= on node2");
    assert_eq!(r.header("docker-content-digest"), Some(digest.as_str()));

    for n in &c.nodes {
        let r = http::get(n.addr, &format!("/v2/{repo}/blobs/{digest}"));
        let what = format!("GET the blob from node{}", n.n);
        if r.status != 200 {
            r.expect_status(200, &what);
        }
        assert_eq!(r.body.len(), data.len(), "{what}: length");
        assert!(r.body == data, "{what}: bytes differ from the upload");
    }
    assert_blob_store_consistent(&c.s3_root());
}

/// What skopeo and docker do through a round robin over two nodes: POST on node 1, the
/// whole blob in one PATCH on node 2, PUT `?digest=` back on node 1. The PUT must see the
/// PATCHed bytes (not node 1's memory of an empty session).
#[test]
fn put_on_the_posting_node_after_a_patch_elsewhere() {
    let c = Cluster::start();
    let repo = "team/twohop";
    let data = pier_e2e::random_bytes((7 << 20) + 5);
    let digest = sha256_digest(&data);
    let loc = pier_e2e::start_upload(c.node(0).addr, repo);
    let r = http::request(
        c.node(1).addr,
        "PATCH",
        &loc,
        &[("Content-Type", "application/octet-stream")],
        &data,
    );
    r.expect_status(202, "PATCH the whole blob on node2");
    let loc = location_path(&r);
    let r = http::request(
        c.node(0).addr,
        "PUT",
        &with_query(&loc, &format!("digest={digest}")),
        &[],
        b"",
    );
    r.expect_status(201, "PUT ?digest= on node1, which started the upload");
    for n in &c.nodes {
        let r = http::get(n.addr, &format!("/v2/{repo}/blobs/{digest}"));
        r.expect_status(200, &format!("GET the blob from node{}", n.n));
        assert!(r.body == data, "node{}: bytes differ from the upload", n.n);
    }
    assert_blob_store_consistent(&c.s3_root());
}
