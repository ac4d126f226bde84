//! Projects and members are the same on every node: the rbac plugin's `kv` is in Redis,
//! and a change through one node's admin API is announced on the bus, so the other
//! nodes replace their warm plugin instances and the next request there sees it.

use std::fs;
use std::net::SocketAddr;

use pier_e2e::http;
use serde_json::{Value, json};

use crate::auth_support::{ADMIN, CAROL, basic, bearer, request_as, token};
use crate::cluster::Cluster;
use crate::support::within_2s;

/// The RBAC example's `[auth]` and plugin tables, with every path absolute (the users
/// and robots files copied to `dir`, shared by the nodes; each node keeps its own token
/// key under its root).
fn rbac_tables(dir: &std::path::Path) -> String {
    let example = pier_e2e::manifest_dir().join("../deploy/examples/rbac");
    for f in ["users.htpasswd", "robots.json"] {
        fs::copy(example.join(f), dir.join(f)).unwrap_or_else(|e| panic!("copy {f}: {e}"));
    }
    let toml = fs::read_to_string(example.join("pier.toml")).expect("the RBAC example");
    let wasm = &pier_e2e::plugins::build().rbac;
    toml.lines()
        .map(|l| {
            let t = l.trim_start();
            if t.starts_with("path") && l.contains("pier_rbac.wasm") {
                format!("path = {:?}", wasm.display().to_string())
            } else if let Some(f) = ["users_file", "robots_file"]
                .iter()
                .find(|k| t.starts_with(**k))
            {
                let file = if *f == "users_file" {
                    "users.htpasswd"
                } else {
                    "robots.json"
                };
                format!("{f} = {:?}", dir.join(file).display().to_string())
            } else {
                l.to_owned()
            }
        })
        .collect::<Vec<_>>()
        .join("\n")
        + "\n"
}

/// Whether `who` may start a push to `repo` on `node`: a token from that node, then an
/// upload started there (202), or refused (401/403).
fn may_push(node: SocketAddr, who: (&str, &str), repo: &str) -> bool {
    let t = token(node, Some(who), &[&format!("repository:{repo}:pull,push")]);
    let r = request_as(
        node,
        "POST",
        &format!("/v2/{repo}/blobs/uploads/"),
        &bearer(&t),
    );
    match r.status {
        202 => true,
        401 | 403 => false,
        _ => panic!("unexpected answer to an upload start on {node}\n{r}"),
    }
}

fn admin(node: SocketAddr, method: &str, path: &str, body: Option<Value>) -> pier_e2e::Response {
    let auth = basic(ADMIN);
    let body = body.map(|b| b.to_string()).unwrap_or_default();
    http::request(
        node,
        method,
        path,
        &[
            ("Authorization", &auth),
            ("Content-Type", "application/json"),
        ],
        body.as_bytes(),
    )
}

/// Gives carol `role` in team through the admin API at `node`.
#[track_caller]
fn set_carol(node: SocketAddr, role: &str, what: &str) {
    let path = "/api/v1/projects/team/members/user/carol";
    admin(node, "PUT", path, Some(json!({ "role": role }))).expect_status(200, what);
}

#[test]
fn a_member_added_on_one_node_may_push_on_every_node() {
    let dir = crate::clients_support::temp_dir("scaleout-rbac");
    let cluster = Cluster::builder()
        .extra_toml(&rbac_tables(dir.path()))
        .start();
    let nodes: Vec<(SocketAddr, SocketAddr)> = (0..3)
        .map(|i| (cluster.node(i).addr, cluster.node(i).admin))
        .collect();
    // carol is a guest of team (the TOML's seed): no push anywhere. Every node has read
    // the seeds into its warm instances by now.
    for (addr, _) in &nodes {
        assert!(
            !may_push(*addr, CAROL, "team/app"),
            "a guest pushes on {addr}"
        );
    }

    // Node 1's API makes her a developer: node 2 and 3 let her push at once.
    set_carol(nodes[0].1, "developer", "make carol a developer on node 1");
    for (addr, admin_addr) in &nodes {
        assert!(
            within_2s(|| may_push(*addr, CAROL, "team/app")),
            "carol may not push on {addr} 2 s after the change"
        );
        let team = admin(*admin_addr, "GET", "/api/v1/projects/team", None).json();
        let carol = json!({"kind": "user", "name": "carol", "role": "developer"});
        assert!(
            team["members"]
                .as_array()
                .is_some_and(|m| m.contains(&carol)),
            "the node at {admin_addr} lists the change: {team}"
        );
    }

    // A project created on node 3 and removed on node 2: seen by node 1 each time.
    admin(
        nodes[2].1,
        "POST",
        "/api/v1/projects",
        Some(json!({"name": "apps"})),
    )
    .expect_status(201, "create apps on node 3");
    let apps_on_node1 = || admin(nodes[0].1, "GET", "/api/v1/projects/apps", None).status;
    assert!(within_2s(|| apps_on_node1() == 200), "node 1 sees apps");
    admin(nodes[1].1, "DELETE", "/api/v1/projects/apps", None)
        .expect_status(204, "delete apps on node 2");
    assert!(
        within_2s(|| apps_on_node1() == 404),
        "node 1 sees apps gone"
    );

    // Demoted on node 2: refused on node 1 and 3 again.
    set_carol(nodes[1].1, "guest", "make carol a guest again on node 2");
    for (addr, _) in &nodes {
        assert!(
            within_2s(|| !may_push(*addr, CAROL, "team/app")),
            "carol still pushes on {addr} 2 s after the demotion"
        );
    }
}
