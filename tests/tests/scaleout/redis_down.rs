//! Redis stopped: reads of content already in S3 keep working on every node. What a push
//! does then is printed, not asserted.

use std::time::{Duration, Instant};

use pier_e2e::{http, media, sha256_digest};

use crate::cluster::Cluster;

#[test]
fn redis_down_stored_content_still_served_and_push_reported() {
    let mut c = Cluster::start();
    let repo = "team/stored";
    let l1 = pier_e2e::random_bytes((6 << 20) + 99);
    let l2 = pier_e2e::random_bytes(300 * 1024);
    let img = pier_e2e::push_image(c.lb, repo, Some("v1"), &[&l1, &l2]);

    c.stop_redis();

    for n in &c.nodes {
        let what = format!("node{} with Redis down", n.n);
        let r = pier_e2e::get_manifest(n.addr, repo, "v1");
        r.expect_status(200, &format!("{what}: GET manifest by tag"));
        assert_eq!(sha256_digest(&r.body), img.digest, "{what}: manifest bytes");
        let r = pier_e2e::get_manifest(n.addr, repo, &img.digest);
        r.expect_status(200, &format!("{what}: GET manifest by digest"));
        assert_eq!(r.body, img.manifest, "{what}: manifest bytes by digest");
        for (d, bytes) in img.layer_digests.iter().zip([&l1, &l2]) {
            let r = http::get(n.addr, &format!("/v2/{repo}/blobs/{d}"));
            if r.status != 200 {
                r.expect_status(200, &format!("{what}: GET blob {d}"));
            }
            assert!(r.body == **bytes, "{what}: blob {d} bytes differ");
        }
        let r = http::get(n.addr, &format!("/v2/{repo}/blobs/{}", img.config_digest));
        r.expect_status(200, &format!("{what}: GET config"));
        assert_eq!(sha256_digest(&r.body), img.config_digest, "{what}: config");
    }

    // Report what pushes do without Redis (not asserted).
    for n in &c.nodes {
        let t = Instant::now();
        let blob = pier_e2e::random_bytes(64 * 1024);
        let d = sha256_digest(&blob);
        let r = http::try_request_timeout(
            n.addr,
            "POST",
            &format!("/v2/{repo}/blobs/uploads/?digest={d}"),
            &[("Content-Type", "application/octet-stream")],
            &blob,
            Duration::from_secs(60),
        );
        eprintln!(
            "[scaleout] Redis down, node{}: monolithic blob push -> {} after {:.1?}",
            n.n,
            describe(&r),
            t.elapsed()
        );
        let t = Instant::now();
        let r = http::try_request_timeout(
            n.addr,
            "POST",
            &format!("/v2/{repo}/blobs/uploads/"),
            &[],
            b"",
            Duration::from_secs(60),
        );
        eprintln!(
            "[scaleout] Redis down, node{}: POST (start a chunked upload) -> {} after {:.1?}",
            n.n,
            describe(&r),
            t.elapsed()
        );
        if let Ok(r) = &r
            && r.status == 202
        {
            let loc = pier_e2e::location_path(r);
            let t = Instant::now();
            let r = http::try_request_timeout(
                n.addr,
                "PATCH",
                &loc,
                &[("Content-Type", "application/octet-stream")],
                &blob,
                Duration::from_secs(60),
            );
            eprintln!(
                "[scaleout] Redis down, node{}: PATCH -> {} after {:.1?}",
                n.n,
                describe(&r),
                t.elapsed()
            );
            if let Ok(r) = &r
                && r.status == 202
            {
                let loc = pier_e2e::location_path(r);
                let t = Instant::now();
                let r = http::try_request_timeout(
                    n.addr,
                    "PUT",
                    &pier_e2e::with_query(&loc, &format!("digest={d}")),
                    &[],
                    b"",
                    Duration::from_secs(60),
                );
                eprintln!(
                    "[scaleout] Redis down, node{}: PUT ?digest= -> {} after {:.1?}",
                    n.n,
                    describe(&r),
                    t.elapsed()
                );
            }
        }
        let t = Instant::now();
        let r = http::try_request_timeout(
            n.addr,
            "PUT",
            &format!("/v2/{repo}/manifests/redis-down-{}", n.n),
            &[("Content-Type", media::OCI_MANIFEST)],
            &img.manifest,
            Duration::from_secs(60),
        );
        eprintln!(
            "[scaleout] Redis down, node{}: manifest PUT (new tag) -> {} after {:.1?}",
            n.n,
            describe(&r),
            t.elapsed()
        );
    }
    eprintln!(
        "[scaleout] Redis down: node logs mentioning redis:\n{}",
        c.nodes
            .iter()
            .flat_map(|n| {
                n.log_text()
                    .lines()
                    .filter(|l| {
                        !l.contains("pier::access") && l.to_ascii_lowercase().contains("redis")
                    })
                    .map(|l| format!("node{}: {l}", n.n))
                    .collect::<Vec<_>>()
            })
            .collect::<Vec<_>>()
            .join("\n")
    );
}

fn describe(r: &std::io::Result<pier_e2e::Response>) -> String {
    match r {
        Ok(r) => format!(
            "HTTP {} {}",
            r.status,
            String::from_utf8_lossy(&r.body[..r.body.len().min(300)])
        ),
        Err(e) => format!("error: {e}"),
    }
}
