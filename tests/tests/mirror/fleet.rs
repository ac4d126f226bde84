//! The edge fleet: three Pier nodes with separate roots, each mirroring the same upstream
//! (Debian's `docker-registry`, whose access log is counted) and peers of each other.
//! Cold pulls on every node at once fetch each blob and manifest from the upstream once;
//! the owner killed mid-fill costs at most one extra fetch per blob; the peer listener
//! takes nobody without the fleet key.

use std::fs;
use std::sync::{Arc, Barrier};
use std::time::Duration;

use pier_e2e::{TestPier, http};
use tempfile::TempDir;

use crate::clients_support::*;
use crate::support::*;

pub const KEY: &str = "fleet-test-key-0123456789abcdef0123456789abcdef";

/// Nodes of one fleet.
pub struct Fleet {
    pub nodes: Vec<TestPier>,
    /// Each node's peer URL, as the fleet names it.
    pub peer_urls: Vec<String>,
    _dirs: Vec<TempDir>,
}

impl Fleet {
    /// `n` nodes mirroring `up` (the default upstream), peers of each other; `extra` is
    /// appended to every node's config, `env` set on every node.
    #[track_caller]
    pub fn start(up: &Upstream, n: usize, extra: &str, env: &[(&str, &str)]) -> Fleet {
        let ports: Vec<u16> = (0..n).map(|_| pier_e2e::free_port()).collect();
        let peer_urls: Vec<String> = ports
            .iter()
            .map(|p| format!("http://127.0.0.1:{p}"))
            .collect();
        let list = peer_urls
            .iter()
            .map(|u| format!("{u:?}"))
            .collect::<Vec<_>>()
            .join(", ");
        let (mut nodes, mut dirs) = (Vec::new(), Vec::new());
        for (i, port) in ports.iter().enumerate() {
            let dir = temp_dir("fleet-node");
            let cfg = dir.path().join("pier.toml");
            fs::write(
                &cfg,
                format!(
                    "[[upstreams]]\nurl = \"{}\"\ndefault = true\ntag_ttl = \"10m\"\n\n\
                     [fleet]\nlisten = \"127.0.0.1:{port}\"\nadvertise = {:?}\npeers = [{list}]\n\
                     secret = {KEY:?}\nhealth_interval = \"1s\"\n{extra}\n",
                    up.url(),
                    peer_urls[i],
                ),
            )
            .unwrap();
            let mut b = TestPier::builder().arg("--config").arg(&cfg);
            for (k, v) in env {
                b = b.env(*k, *v);
            }
            nodes.push(b.start());
            dirs.push(dir);
        }
        let fleet = Fleet {
            nodes,
            peer_urls,
            _dirs: dirs,
        };
        // Started one after the other, the first nodes' first health checks found the
        // later ones down; wait until every node sees every peer healthy.
        let all_healthy = |i: usize| {
            let s = fleet.status(i);
            s["peers"]
                .as_array()
                .is_some_and(|p| p.len() == n - 1 && p.iter().all(|p| p["healthy"] == true))
        };
        assert!(
            pier_e2e::wait_until(Duration::from_secs(10), Duration::from_millis(100), || {
                (0..n).all(all_healthy)
            }),
            "the fleet's nodes never all saw each other healthy: {:?}",
            (0..n).map(|i| fleet.status(i)).collect::<Vec<_>>()
        );
        fleet
    }

    /// The index of the node that owns `key` of upstream `up` (Pier's rendezvous order:
    /// the highest SHA-256 of `node \0 upstream/key`), among `live` nodes.
    pub fn owner(&self, up: &Upstream, key: &str, live: &[usize]) -> usize {
        self.order(up, key, live)[0]
    }

    /// `live` nodes in rendezvous order for `key`, owner first.
    pub fn order(&self, up: &Upstream, key: &str, live: &[usize]) -> Vec<usize> {
        let urls: Vec<String> = live.iter().map(|i| self.peer_urls[*i].clone()).collect();
        pier_e2e::fleet_order(&urls, &format!("{}/{key}", up.name()))
            .into_iter()
            .map(|j| live[j])
            .collect()
    }

    /// `GET /api/v1/fleet` of node `i`.
    pub fn status(&self, i: usize) -> serde_json::Value {
        let r = http::get(self.nodes[i].admin_addr, "/api/v1/fleet");
        r.expect_status(200, "GET /api/v1/fleet");
        serde_json::from_slice(&r.body).expect("fleet status JSON")
    }
}

/// Every blob of `img` in the OCI layout at `out` hashes to its digest.
fn layout_is_exact(out: &std::path::Path, img: &TestImage) -> Result<(), String> {
    let l = OciLayoutRead::open(out, None);
    if l.manifest_digest != img.manifest_digest {
        return Err(format!(
            "manifest {} != {}",
            l.manifest_digest, img.manifest_digest
        ));
    }
    for d in img.blob_digests() {
        let got = file_digest(&l.blob_path(&d));
        if got != d {
            return Err(format!("blob {d} read back as {got}"));
        }
    }
    Ok(())
}

/// 60 concurrent cold pulls, 20 on each of three nodes (19 skopeo and one containerd with
/// a `hosts.toml` mirror per node), of a three-layer image of ~96 MiB: the upstream serves
/// each blob and the manifest exactly once, and every client gets every byte right.
#[test]
fn sixty_cold_pulls_on_three_nodes_fetch_each_blob_and_manifest_once() {
    const PER_NODE: usize = 20;
    let sk = Skopeo::new();
    let up = Upstream::start();
    let img = TestImage::with_random_layers("1", &[32 << 20, 32 << 20, 32 << 20]);
    up.push_image(&sk, "library/big", &img);
    let fleet = Fleet::start(&up, 3, "", &[]);

    // containerd: one per node, its hosts.toml naming that node as the mirror of the
    // upstream host (the server itself a dead port: only the mirror can answer).
    let mut ctrs = Vec::new();
    for node in &fleet.nodes {
        let hosts = temp_dir("fleet-hosts");
        let host_dir = hosts.path().join(up.host());
        fs::create_dir_all(&host_dir).unwrap();
        fs::write(
            host_dir.join("hosts.toml"),
            format!(
                "server = \"http://127.0.0.1:{}\"\n\n[host.\"http://{}\"]\n  capabilities = [\"pull\", \"resolve\"]\n",
                pier_e2e::free_port(),
                node.host()
            ),
        )
        .unwrap();
        ctrs.push((Containerd::start(), hosts));
    }
    let ctrs = Arc::new(ctrs);
    let barrier = Arc::new(Barrier::new(3 * PER_NODE));
    let mut handles = Vec::new();
    for n in 0..3 {
        for c in 0..PER_NODE {
            let (barrier, ctrs, img) = (barrier.clone(), ctrs.clone(), img.clone());
            let node_host = fleet.nodes[n].host();
            let up_host = up.host();
            handles.push(std::thread::spawn(move || -> Result<String, String> {
                if c == 0 {
                    let (ctr, hosts) = &ctrs[n];
                    let reference = format!("{up_host}/library/big:1");
                    barrier.wait();
                    let hosts_dir = hosts.path().display().to_string();
                    let o = run(
                        ctr.cmd()
                            .args(["images", "pull", "--hosts-dir", &hosts_dir, &reference]),
                        CMD_TIMEOUT,
                    );
                    if !o.status.success() {
                        return Err(format!("node {n}: ctr pull failed\n{o}"));
                    }
                    let check = run(ctr.cmd().args(["images", "check"]), CMD_TIMEOUT);
                    if !check.status.success() || !check.stdout.contains("complete") {
                        return Err(format!("node {n}: ctr images check\n{check}"));
                    }
                    return Ok(format!("node {n}: containerd"));
                }
                let sk = Skopeo::new();
                let out = sk.dir.path().join("out");
                barrier.wait();
                let o = sk.run(&[
                    "copy",
                    "--src-tls-verify=false",
                    &format!("docker://{node_host}/library/big:1"),
                    &format!("oci:{}:1", out.display()),
                ]);
                if !o.status.success() {
                    return Err(format!("node {n} client {c}: skopeo copy failed\n{o}"));
                }
                layout_is_exact(&out, &img).map_err(|e| format!("node {n} client {c}: {e}"))?;
                Ok(format!("node {n}: skopeo {c}"))
            }));
        }
    }
    let failures: Vec<String> = handles
        .into_iter()
        .filter_map(|h| h.join().expect("client thread").err())
        .collect();
    assert!(
        failures.is_empty(),
        "{} of 60 pulls failed:\n{}\n--- node logs ---\n{}",
        failures.len(),
        failures.join("\n"),
        fleet
            .nodes
            .iter()
            .map(|n| n.log_tail(30))
            .collect::<Vec<_>>()
            .join("\n---\n")
    );
    std::thread::sleep(Duration::from_millis(300)); // access log lines follow responses
    for d in img.blob_digests() {
        let path = format!("/v2/library/big/blobs/{d}");
        assert_eq!(
            up.count("GET", &path),
            1,
            "upstream GETs of blob {d} for 60 pulls on 3 nodes\n{}",
            up.access_lines(&d)
        );
    }
    let manifest_gets = up.count("GET", "/v2/library/big/manifests/1")
        + up.count(
            "GET",
            &format!("/v2/library/big/manifests/{}", img.manifest_digest),
        );
    assert_eq!(
        manifest_gets,
        1,
        "upstream manifest GETs for 60 pulls on 3 nodes\n{}",
        up.access_lines("/manifests/")
    );
    // The nodes that own no blob received theirs from peers, and say so.
    let mut from_peers = 0;
    for i in 0..3 {
        let s = fleet.status(i);
        assert_eq!(s["enabled"], true);
        assert_eq!(s["peers"].as_array().map(Vec::len), Some(2), "{s}");
        from_peers += s["bytesFromPeers"].as_u64().unwrap_or(0);
    }
    let blob_bytes: u64 = img
        .layers
        .iter()
        .map(|(gz, _)| gz.len() as u64)
        .sum::<u64>()
        + img.config.len() as u64;
    // Each node holds every blob; all but the owner's copy came from peers.
    assert_eq!(
        from_peers,
        2 * blob_bytes,
        "bytes the nodes received from peers (want twice the image: every node but the owner of each blob)"
    );
}

/// The owner of a layer is killed with `kill -9` while it fills it (every byte stored, the
/// last held back for 3 s before the digest check): the other nodes' clients still get the
/// layer whole, and the upstream serves it at most twice.
#[test]
fn the_owner_killed_mid_fill_costs_at_most_one_extra_fetch() {
    let sk = Skopeo::new();
    let up = Upstream::start();
    let img = TestImage::with_random_layers("1", &[24 << 20]);
    up.push_image(&sk, "library/killed", &img);
    let mut fleet = Fleet::start(
        &up,
        3,
        "",
        &[("FAILPOINTS", "mirror-fill-before-verify=return(3000)")],
    );
    let layer = img.layers[0].1.clone();
    let owner = fleet.owner(&up, &layer, &[0, 1, 2]);
    let others: Vec<usize> = (0..3).filter(|i| *i != owner).collect();
    let path = format!("/v2/library/killed/blobs/{layer}");
    let len = img.layers[0].0.len() as u64;

    let mut clients = Vec::new();
    for &i in &others {
        for _ in 0..3 {
            let (addr, path) = (fleet.nodes[i].addr, path.clone());
            clients.push((i, std::thread::spawn(move || stream_get(addr, &path, &[]))));
        }
    }
    // The owner has every byte once the upstream logged its response; it then holds the
    // last one back for 3 s.
    assert!(
        pier_e2e::wait_until(Duration::from_secs(30), Duration::from_millis(50), || {
            up.count("GET", &path) >= 1
        }),
        "the owner never fetched the layer\n{}",
        up.access_lines("/blobs/")
    );
    std::thread::sleep(Duration::from_millis(300));
    // Only the owner went to the upstream: the other nodes stream from it.
    assert_eq!(
        up.count("GET", &path),
        1,
        "upstream GETs of the layer before the kill\n{}",
        up.access_lines(&layer)
    );
    fleet.nodes[owner].kill9();
    for (i, c) in clients {
        let got = c.join().expect("client thread");
        assert!(
            got.is_exactly(&layer, len),
            "a client of node {i} after the owner died: {}\n{}",
            got.summary(),
            fleet.nodes[i].log_tail(20)
        );
    }
    std::thread::sleep(Duration::from_millis(300));
    let fetches = up.count("GET", &path);
    assert!(
        fetches <= 2,
        "upstream GETs of the layer: {fetches} (want at most one more than the dead owner's)\n{}\n--- survivors ---\n{}",
        up.access_lines(&layer),
        others
            .iter()
            .map(|i| fleet.nodes[*i].log_tail(40))
            .collect::<Vec<_>>()
            .join("\n---\n")
    );
    // The survivors cooled the dead owner down and say so.
    let s = fleet.status(others[0]);
    let dead = &fleet.peer_urls[owner];
    let peer = s["peers"]
        .as_array()
        .and_then(|p| p.iter().find(|p| p["url"] == dead.as_str()))
        .unwrap_or_else(|| panic!("{dead} not in {s}"));
    assert_eq!(peer["healthy"], false, "{s}");
}

/// `Authorization` of a peer request: Pier's documented scheme, computed here with ring
/// (`node` already percent-encoded).
fn signed(key: &str, method: &str, target: &str, ts: u64, node: &str) -> String {
    let k = ring::hmac::Key::new(ring::hmac::HMAC_SHA256, key.as_bytes());
    let text = format!("pier-fleet-v1\n{method}\n{target}\n{ts}\n{node}");
    let tag = ring::hmac::sign(&k, text.as_bytes());
    format!(
        "PierFleet node=\"{node}\", ts=\"{ts}\", sig=\"{}\"",
        base64url(tag.as_ref())
    )
}

fn base64url(data: &[u8]) -> String {
    pier_e2e::base64(data)
        .trim_end_matches('=')
        .replace('+', "-")
        .replace('/', "_")
}

fn now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

/// The peer listener serves nobody without the fleet key, and the key never travels:
/// no credentials, the key itself (Basic), a wrong key's signature, a signature 2 minutes
/// old, a signature of another path, and a registry client's path all get nothing; a
/// request signed now with the key reads.
#[test]
fn the_peer_listener_needs_the_fleet_key() {
    let sk = Skopeo::new();
    let up = Upstream::start();
    let img = TestImage::new("1", 1);
    up.push_image(&sk, "library/small", &img);
    let fleet = Fleet::start(&up, 2, "", &[]);
    let url = &fleet.peer_urls[0];
    let addr: std::net::SocketAddr = url.trim_start_matches("http://").parse().unwrap();
    let name = up.name();
    let blob = format!("/fleet/{name}/v2/library/small/blobs/{}", img.layers[0].1);
    let manifest = format!("/fleet/{name}/v2/library/small/manifests/1");
    let node = "http%3A//127.0.0.1%3A1";
    let t = now();
    let refused = [
        (blob.clone(), None, "no credentials"),
        (
            blob.clone(),
            Some(pier_e2e::basic_auth(node, KEY)),
            "the key itself, as Basic",
        ),
        (
            blob.clone(),
            Some(signed(
                "not-the-fleet-key-0123456789abcdef0123",
                "GET",
                &blob,
                t,
                node,
            )),
            "a wrong key's signature",
        ),
        (
            blob.clone(),
            Some(signed(KEY, "GET", &blob, t - 120, node)),
            "a signature 2 minutes old",
        ),
        (
            blob.clone(),
            Some(signed(KEY, "GET", &manifest, t, node)),
            "the signature of another path",
        ),
        (
            format!("/fleet/{name}/v2/"),
            None,
            "the ping without credentials",
        ),
        (
            "/v2/library/small/manifests/1".to_owned(),
            None,
            "a registry path",
        ),
    ];
    for (path, auth, what) in refused {
        let headers: Vec<(&str, &str)> = auth
            .as_deref()
            .map(|a| ("Authorization", a))
            .into_iter()
            .collect();
        let r = http::request(addr, "GET", &path, &headers, b"");
        assert_eq!(r.status, 401, "{what}: {r}");
        assert!(
            r.header("www-authenticate")
                .is_some_and(|h| h.contains("pier-fleet")),
            "{what}: challenge\n{r}"
        );
    }
    // Signed now with the key: a registry client's path is not there, a write is not
    // allowed, the blob reads byte-exact.
    let path = "/v2/library/small/manifests/1";
    let auth = signed(KEY, "GET", path, now(), node);
    let r = http::request(addr, "GET", path, &[("Authorization", auth.as_str())], b"");
    assert_eq!(r.status, 404, "a registry path, signed: {r}");
    let auth = signed(KEY, "PUT", &blob, now(), node);
    let r = http::request(
        addr,
        "PUT",
        &blob,
        &[("Authorization", auth.as_str())],
        b"x",
    );
    assert_eq!(r.status, 405, "a signed write: {r}");
    let auth = signed(KEY, "GET", &blob, now(), node);
    let r = http::request(addr, "GET", &blob, &[("Authorization", auth.as_str())], b"");
    r.expect_status(200, "a blob, signed with the fleet key");
    assert_eq!(pier_e2e::sha256_digest(&r.body), img.layers[0].1);
    // The registry listener knows nothing of /fleet.
    let r = fleet.nodes[0].get(&blob);
    assert_ne!(r.status, 200, "/fleet on the registry listener: {r}");
}
