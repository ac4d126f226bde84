//! Project quota limits on the HA example (three nodes, one S3 bucket, Redis): a limit
//! set through one node's admin API holds on every node, and removing it anywhere lifts
//! it everywhere (limits live in Redis, read at most every 2 s).

use std::net::SocketAddr;
use std::time::Duration;

use pier_e2e::{http, sha256_digest};

use crate::clients_support::*;
use crate::cluster::Cluster;

fn set_limit(admin: SocketAddr, body: &[u8]) {
    http::request(
        admin,
        "PUT",
        "/api/v1/quotas/team",
        &[("Content-Type", "application/json")],
        body,
    )
    .expect_status(200, "PUT /api/v1/quotas/team");
}

/// A monolithic upload of `blob` to `team/app` through `addr`.
fn upload(addr: SocketAddr, blob: &[u8]) -> http::Response {
    http::request(
        addr,
        "POST",
        &format!("/v2/team/app/blobs/uploads/?digest={}", sha256_digest(blob)),
        &[("Content-Type", "application/octet-stream")],
        blob,
    )
}

#[test]
fn a_quota_limit_set_on_one_node_holds_on_every_node() {
    let c = Cluster::start();
    let (a, b, n3) = (c.node(0), c.node(1), c.node(2));
    set_limit(a.admin, br#"{"limit": 100000}"#);
    for n in [b, n3] {
        let r = http::request(n.admin, "GET", "/api/v1/quotas/team", &[], b"");
        r.expect_status(200, "the limit on another node");
        assert_eq!(r.json()["limit"], 100_000, "{r}");
    }
    // An upload bigger than the limit, through another node: refused, nothing kept.
    let blob = unique_bytes(150_000);
    let r = upload(b.addr, &blob);
    r.expect_error(403, "DENIED", "an upload over the limit set on node 1");
    assert!(r.text().contains("quota"), "{r}");
    // Lifted through a third node: the next upload goes through on the second one once
    // its reading of the limits is older than 2 s.
    set_limit(n3.admin, br#"{"limit": null}"#);
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        let r = upload(b.addr, &blob);
        if r.status == 201 {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "still refused 10 s after the limit was removed: {r}"
        );
        std::thread::sleep(Duration::from_millis(250));
    }
}
