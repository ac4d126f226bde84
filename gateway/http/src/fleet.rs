//! The edge fleet's peer side (see [`pier_core::fleet`]): the `[fleet]` settings, the
//! clients that reach the other nodes, and this node's peer listener.
//!
//! The peer listener is its own port. It serves other nodes a read-only registry API over
//! this node's mirror, one prefix per upstream:
//! `/fleet/<upstream>/v2/<repository>/(manifests|blobs)/<reference>`, answered from this
//! node's cache or its upstream, never from a third node. Every request is signed with the
//! fleet key, which never travels itself:
//!
//! ```text
//! Authorization: PierFleet node="<the asking node's URL, `%` and `:` percent-encoded>",
//!     ts="<unix seconds>", sig="<base64url, no padding, of HMAC-SHA256(key,
//!     "pier-fleet-v1\n" METHOD "\n" PATH?QUERY "\n" ts "\n" node)>"
//! ```
//!
//! accepted within [`MAX_SKEW`] of this node's clock. Someone who sees a request can only
//! repeat that same read for that long. There is nothing else on the port, so ordinary
//! clients get only a `401`. Peers move bytes: a node authorizes its own clients before its
//! mirror asks a peer, and a peer's bytes are verified against their digest before a
//! client receives the last of them.

use std::collections::HashMap;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use http::{HeaderValue, Method, Request, Response, header};
use hyper::body::Incoming;
use pier_core::fleet::{Discovery, Fleet, FleetSettings, PeerConnector};
use pier_upstream::{RequestSigner, Upstream, UpstreamClient, UpstreamConfig};
use serde::Deserialize;

use crate::AppState;
use crate::body::RespBody;
use crate::error::ApiError;
use crate::route::Route;

/// The peer listener's challenge.
const CHALLENGE: &str = "PierFleet realm=\"pier-fleet\"";
/// How far a signed request's time may be from this node's clock.
pub const MAX_SKEW: Duration = Duration::from_secs(60);
/// What the signature covers comes after this.
const SIGNED_PREFIX: &str = "pier-fleet-v1";
/// Shortest fleet key accepted (bytes): a key is a secret, not a password.
const MIN_KEY_LEN: usize = 32;
/// Longest peer name (its URL) a request may claim.
const MAX_PEER_NAME: usize = 512;
/// Per request to a peer: connect and response headers (the body streams as long as
/// bytes arrive). A peer's first bytes wait for its own upstream's, so this is generous.
const PEER_TIMEOUT: Duration = Duration::from_secs(30);

/// The fleet's shared secret, as an HMAC key. Never printed, never sent.
#[derive(Clone)]
pub struct FleetKey(ring::hmac::Key);

impl FleetKey {
    pub fn new(key: &str) -> Result<FleetKey, String> {
        let key = key.trim();
        if key.len() < MIN_KEY_LEN {
            return Err(format!(
                "the fleet key is {} bytes; use at least {MIN_KEY_LEN} random ones (e.g. `openssl rand -hex 32`)",
                key.len()
            ));
        }
        if !key.bytes().all(|b| b.is_ascii_graphic()) {
            return Err("the fleet key must be printable ASCII without spaces".to_owned());
        }
        Ok(FleetKey(ring::hmac::Key::new(
            ring::hmac::HMAC_SHA256,
            key.as_bytes(),
        )))
    }
}

/// What a request's signature covers.
fn signed_text(method: &Method, target: &str, ts: u64, node: &str) -> String {
    format!("{SIGNED_PREFIX}\n{method}\n{target}\n{ts}\n{node}")
}

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// Signs this node's requests to its peers.
struct Signer {
    /// This node's URL, percent-encoded for the header.
    node: String,
    key: FleetKey,
}

impl RequestSigner for Signer {
    fn authorization(&self, method: &Method, target: &str) -> HeaderValue {
        use base64::Engine as _;
        let ts = unix_now();
        let tag = ring::hmac::sign(
            &self.key.0,
            signed_text(method, target, ts, &self.node).as_bytes(),
        );
        let sig = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(tag.as_ref());
        let mut v = HeaderValue::try_from(format!(
            "PierFleet node=\"{}\", ts=\"{ts}\", sig=\"{sig}\"",
            self.node
        ))
        .unwrap_or_else(|_| HeaderValue::from_static("PierFleet"));
        v.set_sensitive(true);
        v
    }
}

impl std::fmt::Debug for FleetKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("FleetKey(..)")
    }
}

/// `[fleet]` as the config file says it.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileFleet {
    /// The peer listener.
    pub listen: Option<SocketAddr>,
    /// This node's peer URL as the others reach it (`http://10.0.0.1:5002`).
    pub advertise: Option<String>,
    /// Every node's peer URL (this node's may be among them).
    #[serde(default)]
    pub peers: Vec<String>,
    /// Or: a DNS name whose addresses are the nodes (a headless Service).
    pub dns: Option<String>,
    /// The peer port of the nodes found by DNS [default: the listen port].
    pub dns_port: Option<u16>,
    pub refresh: Option<String>,
    pub health_interval: Option<String>,
    pub cool_down: Option<String>,
    /// The fleet key (or `secret_file`).
    pub secret: Option<String>,
}

/// The resolved `[fleet]`.
#[derive(Debug, Clone)]
pub struct FleetConfig {
    pub listen: SocketAddr,
    pub settings: FleetSettings,
    pub key: FleetKey,
}

impl FileFleet {
    /// Checks and completes the settings; `parse_duration` reads `30s`-style values.
    pub fn resolve(
        self,
        parse_duration: impl Fn(&str) -> Result<Duration, String>,
    ) -> Result<FleetConfig, String> {
        let listen = self.listen.unwrap_or(([0, 0, 0, 0], 5002).into());
        let key = FleetKey::new(self.secret.as_deref().ok_or(
            "fleet: secret (or secret_file) is required: the key every node of the fleet shares",
        )?)
        .map_err(|e| format!("fleet: {e}"))?;
        let advertise = self
            .advertise
            .ok_or("fleet: advertise is required: this node's peer URL as the others reach it (http://<its address>:<port>)")?;
        let me = peer_url(&advertise).map_err(|e| format!("fleet: advertise: {e}"))?;
        let discovery = match (self.peers.is_empty(), self.dns) {
            (false, None) => Discovery::Static(
                self.peers
                    .iter()
                    .map(|p| peer_url(p).map_err(|e| format!("fleet: peers: {e}")))
                    .collect::<Result<_, _>>()?,
            ),
            (true, Some(name)) => Discovery::Dns {
                name,
                port: self.dns_port.unwrap_or(listen.port()),
                scheme: me.split_once("://").map_or("http", |(s, _)| s).to_owned(),
            },
            (true, None) => return Err("fleet: give peers (a list of URLs) or dns (a name)".into()),
            (false, Some(_)) => return Err("fleet: give peers or dns, not both".into()),
        };
        let duration = |v: Option<String>, key: &str, default: u64| {
            v.map(|s| parse_duration(&s).map_err(|e| format!("fleet: {key}: {e}")))
                .transpose()
                .map(|d| d.unwrap_or(Duration::from_secs(default)))
        };
        let settings = FleetSettings {
            me,
            discovery,
            refresh: duration(self.refresh, "refresh", 30)?.max(Duration::from_secs(1)),
            health_interval: duration(self.health_interval, "health_interval", 5)?
                .max(Duration::from_millis(200)),
            cool_down: duration(self.cool_down, "cool_down", 30)?,
        };
        Ok(FleetConfig {
            listen,
            settings,
            key,
        })
    }
}

/// A peer URL: `http(s)://host:port`, without a path, query or trailing slash.
fn peer_url(s: &str) -> Result<String, String> {
    let uri: http::Uri = s.parse().map_err(|e| format!("{s:?}: {e}"))?;
    match (uri.scheme_str(), uri.authority(), uri.path(), uri.query()) {
        (Some("http" | "https"), Some(a), "" | "/", None) => {
            Ok(format!("{}://{a}", uri.scheme_str().unwrap_or("http")))
        }
        _ => Err(format!("{s:?} is not http(s)://host:port")),
    }
}

/// Reaches peers: one registry client per peer and upstream, over the peer listener.
pub struct Connector {
    me: String,
    key: FleetKey,
    /// The mirror's upstreams, in its order.
    upstreams: Vec<String>,
    probes: Mutex<HashMap<String, Arc<UpstreamClient>>>,
}

impl Connector {
    pub fn new(config: &FleetConfig, upstreams: Vec<String>) -> Connector {
        Connector {
            me: config.settings.me.clone(),
            key: config.key.clone(),
            upstreams,
            probes: Mutex::new(HashMap::new()),
        }
    }

    fn client(&self, peer: &str, upstream: &str) -> Result<UpstreamClient, String> {
        // Peers are private addresses of the site, reached directly (no proxy), every
        // request signed; a failure goes on to the next source at once (no retries).
        let signer = Signer {
            node: node_to_header(&self.me),
            key: self.key.clone(),
        };
        UpstreamClient::with_roots_and_proxies(
            UpstreamConfig {
                name: format!("peer {peer}"),
                url: format!("{peer}/fleet/{upstream}"),
                credentials: None,
                timeout: PEER_TIMEOUT,
                retries: 0,
                allow_private: true,
            },
            pier_upstream::system_roots(),
            Arc::new(pier_upstream::proxy::Proxies::none()),
        )
        .map(|c| c.with_signer(Arc::new(signer)))
        .map_err(|e| e.to_string())
    }
}

#[async_trait::async_trait]
impl PeerConnector for Connector {
    fn clients(&self, url: &str) -> Result<Vec<Arc<dyn Upstream>>, String> {
        self.upstreams
            .iter()
            .map(|u| {
                self.client(url, u)
                    .map(|c| Arc::new(c) as Arc<dyn Upstream>)
            })
            .collect()
    }

    async fn probe(&self, url: &str) -> Result<(), String> {
        let client = {
            let mut probes = self.probes.lock().expect("probes poisoned");
            match probes.get(url) {
                Some(c) => c.clone(),
                None => {
                    let c = Arc::new(self.client(url, "_")?);
                    probes.insert(url.to_owned(), c.clone());
                    c
                }
            }
        };
        client
            .ping()
            .await
            .map_err(|e| pier_upstream::error_chain(&e))
    }
}

/// What the peer listener needs.
pub struct PeerService {
    pub state: Arc<AppState>,
    pub fleet: Arc<Fleet>,
    pub key: FleetKey,
}

/// A node's URL inside the header's quotes: `%` and `:` percent-encoded.
fn node_to_header(node: &str) -> String {
    node.replace('%', "%25").replace(':', "%3A")
}

fn header_to_node(v: &str) -> String {
    v.replace("%3A", ":").replace("%25", "%")
}

/// The asking node's name when the request is signed with the fleet key, recently.
fn authenticate(key: &FleetKey, req: &Request<Incoming>) -> Option<String> {
    use base64::Engine as _;
    let v = req.headers().get(header::AUTHORIZATION)?.to_str().ok()?;
    let params = v.strip_prefix("PierFleet ")?;
    let (mut node, mut ts, mut sig) = (None, None, None);
    for part in params.split(',') {
        let (k, v) = part.trim().split_once('=')?;
        let v = v.strip_prefix('"')?.strip_suffix('"')?;
        match k {
            "node" => node = Some(v),
            "ts" => ts = Some(v),
            "sig" => sig = Some(v),
            _ => return None,
        }
    }
    let (node, ts_text) = (node?, ts?);
    if node.is_empty() || node.len() > MAX_PEER_NAME {
        return None;
    }
    let ts: u64 = ts_text.parse().ok()?;
    if unix_now().abs_diff(ts) > MAX_SKEW.as_secs() {
        return None;
    }
    let sig = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(sig?)
        .ok()?;
    let target = req.uri().path_and_query().map_or("/", |p| p.as_str());
    let text = signed_text(req.method(), target, ts, node);
    ring::hmac::verify(&key.0, text.as_bytes(), &sig).ok()?;
    Some(header_to_node(node))
}

/// Serves one request on the peer listener.
pub async fn serve(
    svc: Arc<PeerService>,
    req: Request<Incoming>,
) -> Result<Response<RespBody>, Infallible> {
    let method = req.method().clone();
    let path = req.uri().path().to_owned();
    let resp = match answer(&svc, req).await {
        Ok(r) => r,
        Err(e) => {
            tracing::debug!(method = %method, path = %path, error = %e, "fleet peer request refused");
            e.into_response()
        }
    };
    tracing::debug!(method = %method, path = %path, status = resp.status().as_u16(), "fleet peer request");
    Ok(resp)
}

async fn answer(svc: &PeerService, req: Request<Incoming>) -> Result<Response<RespBody>, ApiError> {
    let Some(peer) = authenticate(&svc.key, &req) else {
        return Err(ApiError::Unauthorized {
            challenge: CHALLENGE.to_owned(),
            message: "the fleet's peer listener takes only requests signed with the fleet key"
                .to_owned(),
            denied: false,
        });
    };
    if !matches!(*req.method(), Method::GET | Method::HEAD) {
        return Err(ApiError::MethodNotAllowed(req.method().clone()));
    }
    let path = req.uri().path().to_owned();
    let (upstream, rest) = path
        .strip_prefix("/fleet/")
        .and_then(|p| p.split_once('/'))
        .ok_or(crate::route::RouteError::NotFound)?;
    let route = crate::route::parse(&format!("/{rest}"))?;
    let repo = match &route {
        Route::Base => {
            let mut r = Response::new(crate::body::full(bytes::Bytes::from_static(b"{}")));
            r.headers_mut().insert(
                header::CONTENT_TYPE,
                HeaderValue::from_static("application/json"),
            );
            return Ok(r);
        }
        Route::Manifest(repo, _) | Route::Blob(repo, _) => repo.clone(),
        _ => return Err(crate::route::RouteError::NotFound.into()),
    };
    let mirror = svc
        .state
        .mirror
        .as_ref()
        .ok_or(crate::route::RouteError::NotFound)?;
    let target = mirror
        .peer_target(upstream, repo.as_str(), &peer)
        .ok_or_else(|| ApiError::NamespaceUnknown {
            repo: repo.to_string(),
            ns: upstream.to_owned(),
        })?;
    let is_blob_get = matches!(route, Route::Blob(..)) && req.method() == Method::GET;
    let resp = crate::handlers::mirrored(&svc.state, mirror, &target, route, req).await?;
    let bytes = is_blob_get
        .then(|| resp.headers().get(header::CONTENT_LENGTH))
        .flatten()
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    svc.fleet.served(bytes);
    Ok(resp)
}

/// Accepts peer connections until the task is aborted (HTTP/1.1; the registry
/// listener's connection limits and timeouts).
pub async fn listen(
    listener: tokio::net::TcpListener,
    svc: Arc<PeerService>,
    limits: crate::conn::Limits,
) {
    let max = limits.max_connections;
    crate::conn::serve_http1(listener, "fleet", max, limits, move |req| {
        serve(svc.clone(), req)
    })
    .await
}
