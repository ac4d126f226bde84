//! `/readyz` follows the backends a node cannot serve without: it answers 503 within
//! seconds of the S3 server or Redis stopping and 200 again once they are back, on the
//! admin listener (naming what is down) and on the registry listener (saying only "not
//! ready"); `/healthz` stays 200 (liveness). A push while S3 is down answers 503
//! `UNAVAILABLE` with `Retry-After`, and the same push succeeds once S3 is back.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use pier_e2e::{http, sha256_digest};

use crate::cluster::Cluster;

/// Polls `GET path` on `addr` until it answers `status`; the answer and how long it took.
#[track_caller]
fn wait_for(addr: SocketAddr, path: &str, status: u16, within: Duration) -> (String, Duration) {
    let start = Instant::now();
    loop {
        let r = http::try_request_timeout(addr, "GET", path, &[], b"", Duration::from_secs(10));
        if let Ok(r) = &r
            && r.status == status
        {
            return (
                String::from_utf8_lossy(&r.body).into_owned(),
                start.elapsed(),
            );
        }
        assert!(
            start.elapsed() < within,
            "{addr}{path} did not answer {status} within {within:?}; last: {:?}",
            r.map(|r| (r.status, String::from_utf8_lossy(&r.body).into_owned()))
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

fn push_blob(addr: SocketAddr, blob: &[u8]) -> pier_e2e::Response {
    let d = sha256_digest(blob);
    http::request(
        addr,
        "POST",
        &format!("/v2/team/ready/blobs/uploads/?digest={d}"),
        &[("Content-Type", "application/octet-stream")],
        blob,
    )
}

#[test]
fn readyz_follows_s3_and_redis_and_pushes_get_503_while_s3_is_down() {
    let mut c = Cluster::start();
    let node = (c.node(0).addr, c.node(0).admin);
    let within = Duration::from_secs(15);
    for addr in [node.0, node.1] {
        wait_for(addr, "/readyz", 200, within);
    }

    c.stop_s3();
    let (body, took) = wait_for(node.1, "/readyz", 503, within);
    assert_eq!(
        body, "not ready: storage\n",
        "the admin listener names what is down"
    );
    eprintln!("[readiness] S3 stopped: admin /readyz 503 after {took:.1?}");
    let (body, _) = wait_for(node.0, "/readyz", 503, within);
    assert_eq!(
        body, "not ready\n",
        "the registry listener does not say what"
    );
    wait_for(node.1, "/healthz", 200, within);

    let blob = pier_e2e::random_bytes(100_000);
    let r = push_blob(node.0, &blob);
    assert_eq!(
        r.status,
        503,
        "push with S3 down: {}",
        String::from_utf8_lossy(&r.body)
    );
    assert!(
        String::from_utf8_lossy(&r.body).contains("\"UNAVAILABLE\""),
        "OCI error code: {}",
        String::from_utf8_lossy(&r.body)
    );
    assert_eq!(r.header("Retry-After"), Some("1"));

    c.restart_s3();
    let (_, took) = wait_for(node.1, "/readyz", 200, within);
    eprintln!("[readiness] S3 back: admin /readyz 200 after {took:.1?}");
    wait_for(node.0, "/readyz", 200, within);
    push_blob(node.0, &blob).expect_status(201, "the same push with S3 back");

    c.stop_redis();
    let (body, took) = wait_for(node.1, "/readyz", 503, within);
    assert_eq!(body, "not ready: redis\n");
    eprintln!("[readiness] Redis stopped: admin /readyz 503 after {took:.1?}");
    wait_for(node.0, "/readyz", 503, within);

    c.restart_redis();
    let (_, took) = wait_for(node.1, "/readyz", 200, within);
    eprintln!("[readiness] Redis back: admin /readyz 200 after {took:.1?}");
    wait_for(node.0, "/readyz", 200, within);
}
