//! The edge fleet: nodes of one site that do not share storage fetch each blob, manifest
//! and tag from the upstream once for the whole site. Every key (a digest, or an
//! upstream's repository and tag) has an owner, chosen by rendezvous hashing over the live
//! nodes; a node asks the nodes ranked above it for a key before it asks the upstream, so
//! the owner fills it once and streams it to every asking node while it arrives. A peer
//! that fails, or serves bytes that do not verify, is left alone for a cool-down; with no
//! live peer ranked above it, a node is the owner and asks the upstream itself, so the
//! fleet is never worse than no fleet.
//!
//! Peers only move bytes: each node authorizes its own clients before the mirror is asked.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant, SystemTime};

use pier_upstream::Upstream;
use serde::Serialize;
use sha2::{Digest as _, Sha256};

/// Most peers a node keeps (a DNS answer is cut there).
const MAX_PEERS: usize = 256;

/// Another node, as a source of one upstream's content.
#[derive(Clone)]
pub struct PeerSource {
    /// The peer's address as the fleet names it (its peer listener's URL).
    pub id: Arc<str>,
    /// Speaks the registry read API of the peer's listener for one upstream.
    pub client: Arc<dyn Upstream>,
}

/// The fleet as the mirror sees it.
pub trait Peers: Send + Sync {
    /// The live peers ranked above this node for `key` (rendezvous hashing), best first:
    /// whom to ask for it before the upstream `upstream` (an index into the mirror's
    /// upstreams). Empty when this node owns the key.
    fn ahead(&self, upstream: usize, key: &str) -> Vec<PeerSource>;
    /// A peer failed to answer, or served something wrong: leave it alone for a while.
    fn failed(&self, peer: &str, why: &str);
    /// Bytes received from a peer.
    fn received(&self, peer: &str, bytes: u64);
}

/// The rendezvous weight of `node` for `key`: the node with the highest weight owns the
/// key. SHA-256, so every node and every version agrees on the order.
fn weight(node: &str, key: &str) -> u64 {
    let mut h = Sha256::new();
    h.update(node.as_bytes());
    h.update([0]);
    h.update(key.as_bytes());
    let out = h.finalize();
    u64::from_be_bytes(out[..8].try_into().expect("8 bytes"))
}

/// `nodes` in rendezvous order for `key`, owner first.
pub fn rank<'a>(nodes: impl IntoIterator<Item = &'a str>, key: &str) -> Vec<&'a str> {
    let mut v: Vec<(u64, &str)> = nodes.into_iter().map(|n| (weight(n, key), n)).collect();
    v.sort_by(|a, b| b.0.cmp(&a.0).then_with(|| a.1.cmp(b.1)));
    v.into_iter().map(|(_, n)| n).collect()
}

/// How the fleet's nodes are found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Discovery {
    /// Every node's peer URL (this node's may be among them).
    Static(Vec<String>),
    /// A DNS name whose addresses are the nodes (a Kubernetes headless Service),
    /// re-resolved every refresh; each address becomes `scheme://addr:port`.
    Dns {
        name: String,
        port: u16,
        scheme: String,
    },
}

/// Settings of [`Fleet`].
#[derive(Debug, Clone)]
pub struct FleetSettings {
    /// This node's peer URL, as the other nodes reach it.
    pub me: String,
    pub discovery: Discovery,
    /// How often DNS is resolved again.
    pub refresh: Duration,
    /// How often each peer's health is checked.
    pub health_interval: Duration,
    /// How long a failing peer is left alone.
    pub cool_down: Duration,
}

/// Builds the clients that reach a peer, and checks its health.
#[async_trait::async_trait]
pub trait PeerConnector: Send + Sync {
    /// One client per mirror upstream (in the mirror's order) for the peer at `url`.
    fn clients(&self, url: &str) -> Result<Vec<Arc<dyn Upstream>>, String>;
    /// Whether the peer answers, and takes the fleet key.
    async fn probe(&self, url: &str) -> Result<(), String>;
}

struct Peer {
    clients: Vec<Arc<dyn Upstream>>,
    /// The last health check failed: left alone until one passes.
    unhealthy: bool,
    /// A request to it failed: left alone until then (a passing health check does not
    /// end it early).
    down_until: Option<Instant>,
    last_error: Option<String>,
    last_seen: Option<SystemTime>,
    received: Arc<AtomicU64>,
}

/// One peer as operators see it (`/api/v1/fleet`).
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct PeerStatus {
    pub url: String,
    pub healthy: bool,
    /// Seconds of cool-down left, when failing.
    pub cool_down_s: u64,
    pub last_error: Option<String>,
    /// Unix seconds of the last good answer.
    pub last_seen: Option<u64>,
    /// Blob bytes this node received from the peer.
    pub bytes_from: u64,
}

/// The fleet as operators see it.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct FleetStatus {
    pub me: String,
    pub discovery: String,
    pub peers: Vec<PeerStatus>,
    /// Requests other nodes sent to this one, and the blob bytes this node served them.
    pub served_requests: u64,
    pub served_bytes: u64,
}

/// The membership of this node's fleet: who the peers are, which are healthy, and who
/// owns what.
pub struct Fleet {
    settings: FleetSettings,
    connector: Arc<dyn PeerConnector>,
    peers: RwLock<HashMap<String, Peer>>,
    served_requests: AtomicU64,
    served_bytes: AtomicU64,
}

impl Fleet {
    pub fn new(settings: FleetSettings, connector: Arc<dyn PeerConnector>) -> Fleet {
        let fleet = Fleet {
            settings,
            connector,
            peers: RwLock::new(HashMap::new()),
            served_requests: AtomicU64::new(0),
            served_bytes: AtomicU64::new(0),
        };
        if let Discovery::Static(list) = &fleet.settings.discovery {
            fleet.set_members(list.clone());
        }
        fleet
    }

    pub fn me(&self) -> &str {
        &self.settings.me
    }

    /// Replaces the member list (this node's own URL is skipped); peers that stay keep
    /// their state.
    fn set_members(&self, urls: Vec<String>) {
        let mut peers = self.peers.write().expect("fleet poisoned");
        let wanted: Vec<String> = urls
            .into_iter()
            .map(|u| u.trim_end_matches('/').to_owned())
            .filter(|u| *u != self.settings.me)
            .take(MAX_PEERS)
            .collect();
        peers.retain(|url, _| wanted.contains(url));
        for url in wanted {
            if peers.contains_key(&url) {
                continue;
            }
            match self.connector.clients(&url) {
                Ok(clients) => {
                    tracing::info!(peer = %url, "fleet peer added");
                    peers.insert(
                        url,
                        Peer {
                            clients,
                            unhealthy: false,
                            down_until: None,
                            last_error: None,
                            last_seen: None,
                            received: Arc::new(AtomicU64::new(0)),
                        },
                    );
                }
                Err(e) => tracing::warn!(peer = %url, error = %e, "fleet peer skipped"),
            }
        }
    }

    /// Resolves the DNS name once: the members' URLs.
    async fn resolve(&self) -> Result<Vec<String>, String> {
        let Discovery::Dns { name, port, scheme } = &self.settings.discovery else {
            return Ok(Vec::new());
        };
        let addrs = tokio::net::lookup_host((name.as_str(), *port))
            .await
            .map_err(|e| format!("resolving {name}: {e}"))?;
        let mut urls: Vec<String> = addrs.map(|a| format!("{scheme}://{a}")).collect();
        urls.sort();
        urls.dedup();
        Ok(urls)
    }

    /// Keeps the membership current: DNS re-resolved every `refresh`, every peer's health
    /// checked every `health_interval`. Runs until the task is aborted.
    pub async fn run(self: Arc<Self>) {
        let mut last_resolve: Option<Instant> = None;
        loop {
            if matches!(self.settings.discovery, Discovery::Dns { .. })
                && last_resolve.is_none_or(|t| t.elapsed() >= self.settings.refresh)
            {
                last_resolve = Some(Instant::now());
                match self.resolve().await {
                    Ok(urls) if !urls.is_empty() => self.set_members(urls),
                    Ok(_) => tracing::warn!(
                        "fleet DNS name resolved to no address; keeping the peers known"
                    ),
                    Err(e) => {
                        tracing::warn!(error = %e, "fleet DNS resolution failed; keeping the peers known")
                    }
                }
            }
            let urls: Vec<String> = (self.peers.read().expect("fleet poisoned").keys())
                .cloned()
                .collect();
            let limit = self.settings.health_interval.max(Duration::from_secs(1));
            let connector = &self.connector;
            let probes = urls.iter().map(|u| async move {
                let r = tokio::time::timeout(limit, connector.probe(u))
                    .await
                    .unwrap_or_else(|_| Err("health check timed out".to_owned()));
                (u, r)
            });
            for (url, result) in futures_util::future::join_all(probes).await {
                self.checked(url, result);
            }
            tokio::time::sleep(self.settings.health_interval).await;
        }
    }

    /// Records a health check's result.
    fn checked(&self, url: &str, result: Result<(), String>) {
        let mut peers = self.peers.write().expect("fleet poisoned");
        let Some(p) = peers.get_mut(url) else {
            return;
        };
        match result {
            Ok(()) => {
                p.last_seen = Some(SystemTime::now());
                if p.unhealthy {
                    tracing::info!(peer = %url, "fleet peer healthy again");
                }
                p.unhealthy = false;
            }
            Err(e) => {
                // A peer never seen yet is most likely still starting: no warning for it.
                match (p.unhealthy, p.last_seen) {
                    (false, Some(_)) => {
                        tracing::warn!(peer = %url, error = %e, "fleet peer failed its health check; not asked until it passes one")
                    }
                    (false, None) => {
                        tracing::info!(peer = %url, error = %e, "fleet peer not answering yet; not asked until it passes a health check")
                    }
                    (true, _) => {}
                }
                p.unhealthy = true;
                p.last_error = Some(format!(
                    "health check: {}",
                    e.chars().take(300).collect::<String>()
                ));
            }
        }
    }

    fn is_live(p: &Peer, now: Instant) -> bool {
        !p.unhealthy && p.down_until.is_none_or(|t| t <= now)
    }

    /// A request from another node was served (`bytes`: a blob's length, 0 otherwise).
    pub fn served(&self, bytes: u64) {
        self.served_requests.fetch_add(1, Ordering::Relaxed);
        self.served_bytes.fetch_add(bytes, Ordering::Relaxed);
    }

    pub fn status(&self) -> FleetStatus {
        let now = Instant::now();
        let peers = self.peers.read().expect("fleet poisoned");
        let mut list: Vec<PeerStatus> = peers
            .iter()
            .map(|(url, p)| {
                let left = p.down_until.map(|t| t.saturating_duration_since(now));
                PeerStatus {
                    url: url.clone(),
                    healthy: Fleet::is_live(p, now),
                    cool_down_s: left.map_or(0, |l| l.as_secs()),
                    last_error: p.last_error.clone(),
                    last_seen: p.last_seen.and_then(|t| {
                        t.duration_since(SystemTime::UNIX_EPOCH)
                            .ok()
                            .map(|d| d.as_secs())
                    }),
                    bytes_from: p.received.load(Ordering::Relaxed),
                }
            })
            .collect();
        list.sort_by(|a, b| a.url.cmp(&b.url));
        FleetStatus {
            me: self.settings.me.clone(),
            discovery: match &self.settings.discovery {
                Discovery::Static(_) => "static".to_owned(),
                Discovery::Dns { name, port, .. } => format!("dns {name}:{port}"),
            },
            peers: list,
            served_requests: self.served_requests.load(Ordering::Relaxed),
            served_bytes: self.served_bytes.load(Ordering::Relaxed),
        }
    }
}

impl Peers for Fleet {
    fn ahead(&self, upstream: usize, key: &str) -> Vec<PeerSource> {
        let now = Instant::now();
        let peers = self.peers.read().expect("fleet poisoned");
        let live = peers
            .iter()
            .filter(|(_, p)| Fleet::is_live(p, now))
            .map(|(url, _)| url.as_str());
        let order = rank(live.chain([self.settings.me.as_str()]), key);
        order
            .into_iter()
            .take_while(|n| *n != self.settings.me)
            .filter_map(|n| {
                let client = peers.get(n)?.clients.get(upstream)?.clone();
                Some(PeerSource {
                    id: Arc::from(n),
                    client,
                })
            })
            .collect()
    }

    fn failed(&self, peer: &str, why: &str) {
        let mut peers = self.peers.write().expect("fleet poisoned");
        if let Some(p) = peers.get_mut(peer) {
            let was_up = p.down_until.is_none_or(|t| t <= Instant::now());
            p.down_until = Some(Instant::now() + self.settings.cool_down);
            p.last_error = Some(why.chars().take(300).collect());
            if was_up {
                tracing::warn!(peer = %peer, reason = %why, cool_down = ?self.settings.cool_down, "fleet peer cooled down");
            }
        }
    }

    fn received(&self, peer: &str, bytes: u64) {
        if let Some(p) = self.peers.read().expect("fleet poisoned").get(peer) {
            p.received.fetch_add(bytes, Ordering::Relaxed);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Clients that are never used; probes that always pass.
    struct NoConnector;

    #[async_trait::async_trait]
    impl PeerConnector for NoConnector {
        fn clients(&self, _: &str) -> Result<Vec<Arc<dyn Upstream>>, String> {
            Ok(Vec::new())
        }
        async fn probe(&self, _: &str) -> Result<(), String> {
            Ok(())
        }
    }

    fn fleet(discovery: Discovery) -> Fleet {
        Fleet::new(
            FleetSettings {
                me: "http://127.0.0.1:7002".into(),
                discovery,
                refresh: Duration::from_secs(30),
                health_interval: Duration::from_secs(5),
                cool_down: Duration::from_secs(30),
            },
            Arc::new(NoConnector),
        )
    }

    #[tokio::test]
    async fn dns_names_every_address_and_a_node_skips_itself() {
        let f = fleet(Discovery::Dns {
            name: "localhost".into(),
            port: 7002,
            scheme: "http".into(),
        });
        let urls = f.resolve().await.expect("localhost resolves");
        assert!(
            urls.contains(&"http://127.0.0.1:7002".to_owned()),
            "{urls:?}"
        );
        f.set_members(urls);
        // This node's own address is not a peer.
        assert!(
            f.status().peers.iter().all(|p| p.url != f.me()),
            "{:?}",
            f.status()
        );
        let gone = fleet(Discovery::Dns {
            name: "no-such-name.invalid".into(),
            port: 7002,
            scheme: "http".into(),
        });
        assert!(gone.resolve().await.is_err());
    }

    #[test]
    fn a_failed_peer_is_skipped_until_its_cool_down_ends() {
        let f = fleet(Discovery::Static(vec![
            "http://127.0.0.1:7002".into(),
            "http://10.0.0.2:7002/".into(),
        ]));
        let peer = "http://10.0.0.2:7002";
        assert_eq!(
            f.status().peers.len(),
            1,
            "itself skipped, the slash trimmed"
        );
        f.failed(peer, "boom");
        let s = f.status();
        assert!(!s.peers[0].healthy && s.peers[0].cool_down_s > 0, "{s:?}");
        assert_eq!(s.peers[0].last_error.as_deref(), Some("boom"));
        f.checked(peer, Ok(()));
        assert!(
            !f.status().peers[0].healthy,
            "a passing health check does not end a cool-down"
        );
    }

    #[test]
    fn rendezvous_moves_only_the_keys_of_a_node_that_leaves() {
        let all = ["http://a:5001", "http://b:5001", "http://c:5001"];
        let two = ["http://a:5001", "http://b:5001"];
        let (mut moved, mut owned_by_c) = (0, 0);
        let mut owners = HashMap::new();
        for i in 0..3000 {
            let key = format!("sha256:{i:064x}");
            let owner3 = rank(all, &key)[0];
            let owner2 = rank(two, &key)[0];
            *owners.entry(owner3).or_insert(0) += 1;
            if owner3 == "http://c:5001" {
                owned_by_c += 1;
            } else if owner3 != owner2 {
                moved += 1;
            }
        }
        assert_eq!(moved, 0, "keys of the nodes that stayed kept their owner");
        // Spread: each of three nodes owns about a third.
        for (node, n) in owners {
            assert!((800..1200).contains(&n), "{node} owns {n} of 3000");
        }
        assert!(owned_by_c > 0);
        // Every node computes the same order, whatever order it lists the nodes in.
        let key = "library/alpine:latest";
        assert_eq!(rank(all, key), rank(all.iter().rev().copied(), key));
    }
}
