//! Registry caches across nodes: a tag moved or deleted through one node is seen by the
//! others at once (announced over Redis pub/sub), not after their 5 s tag cache.

use pier_e2e::{ACCEPT_MANIFESTS, http, push_image};

use crate::cluster::Cluster;
use crate::support::within_2s;

fn digest_of_tag(addr: std::net::SocketAddr, repo: &str, tag: &str) -> Option<String> {
    let r = http::request(
        addr,
        "HEAD",
        &format!("/v2/{repo}/manifests/{tag}"),
        &[("Accept", ACCEPT_MANIFESTS)],
        b"",
    );
    (r.status == 200).then(|| {
        r.header("docker-content-digest")
            .unwrap_or_default()
            .to_owned()
    })
}

#[test]
fn a_tag_moved_on_one_node_is_seen_on_the_others_at_once() {
    let cluster = Cluster::start();
    let (n1, n2, n3) = (
        cluster.node(0).addr,
        cluster.node(1).addr,
        cluster.node(2).addr,
    );
    let v1 = push_image(n1, "team/app", Some("latest"), &[b"layer one"]);
    // Nodes 2 and 3 read (and cache) the tag.
    assert_eq!(
        digest_of_tag(n2, "team/app", "latest").as_deref(),
        Some(v1.digest.as_str())
    );
    assert_eq!(
        digest_of_tag(n3, "team/app", "latest").as_deref(),
        Some(v1.digest.as_str())
    );
    // Moved through node 1.
    let v2 = push_image(n1, "team/app", Some("latest"), &[b"layer two"]);
    assert_ne!(v1.digest, v2.digest);
    for (name, node) in [("node 2", n2), ("node 3", n3)] {
        assert!(
            within_2s(
                || digest_of_tag(node, "team/app", "latest").as_deref() == Some(v2.digest.as_str())
            ),
            "{name} still answers the old digest for a moved tag"
        );
    }
    // Deleted through node 3: gone on node 2 at once.
    let r = http::request(
        n3,
        "DELETE",
        &format!("/v2/team/app/manifests/{}", v2.digest),
        &[],
        b"",
    );
    r.expect_status(202, "delete the manifest on node 3");
    assert!(
        within_2s(|| digest_of_tag(n2, "team/app", "latest").is_none()),
        "node 2 still answers a deleted tag"
    );
}
