//! "Last pull" over the nodes: a pull served by one node shows in every node's admin API
//! (the nodes merge their pulls into Redis each flush, every 5 s).

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use pier_e2e::{get_manifest, http, push_image};
use serde_json::Value;

use crate::cluster::Cluster;

/// `lastPull` of `tag` in the admin API of the node at `admin`.
fn last_pull(admin: SocketAddr, repo: &str, tag: &str) -> Value {
    let path = format!("/api/v1/repositories/{repo}/-/tags");
    let r = http::request(admin, "GET", &path, &[], b"");
    r.expect_status(200, &format!("GET {path}"));
    let page = r.json();
    page["tags"]
        .as_array()
        .and_then(|t| t.iter().find(|t| t["name"] == tag))
        .unwrap_or_else(|| panic!("no tag {tag} in {page}"))["lastPull"]
        .clone()
}

#[test]
fn a_pull_served_by_one_node_shows_on_every_node() {
    let cluster = Cluster::start();
    let (n1, n2, n3) = (cluster.node(0), cluster.node(1), cluster.node(2));
    push_image(n1.addr, "team/seen", Some("v1"), &[b"layer"]);
    for n in [n1, n2, n3] {
        assert!(
            last_pull(n.admin, "team/seen", "v1").is_null(),
            "never pulled"
        );
    }

    get_manifest(n2.addr, "team/seen", "v1").expect_status(200, "pull v1 from node 2");
    let pulled = last_pull(n2.admin, "team/seen", "v1");
    assert!(
        pulled.is_string(),
        "node 2 shows its own pull at once: {pulled}"
    );
    // The others within the flush interval (5 s), with the same time.
    let deadline = Instant::now() + Duration::from_secs(12);
    for n in [n1, n3] {
        loop {
            let seen = last_pull(n.admin, "team/seen", "v1");
            if !seen.is_null() {
                assert_eq!(seen, pulled, "node {} shows node 2's pull", n.n);
                break;
            }
            assert!(
                Instant::now() < deadline,
                "node {} never shows the pull",
                n.n
            );
            std::thread::sleep(Duration::from_millis(200));
        }
    }
}
