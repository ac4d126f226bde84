//! Outbound requests never reach private addresses through what an upstream answers: a
//! hostile upstream whose blob GET redirects to `http://127.0.0.1:PORT/internal`, or whose
//! Bearer challenge names a realm there, gets an error and no request reaches the internal
//! service; with `allow_private = true` on that upstream the same redirect and realm are
//! followed (so the tests do exercise the path).
//!
//! Every test server is on loopback, and an upstream configured on a private address may
//! send Pier to other private addresses, so the hostile upstream listens on 203.0.113.7
//! (TEST-NET-3, not private), added to `lo` by the test: that needs root (`ip addr add`).
//!
//! Needs the binary: `cargo build -p pier-server --bin pier`, then
//! `cargo test -p pier-e2e --test outbound`.

use std::io::{BufRead, BufReader, Write};
use std::net::{IpAddr, Ipv4Addr, SocketAddr, TcpListener, TcpStream};
use std::process::Command;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::thread;
use std::time::Duration;

use pier_e2e::{ACCEPT_MANIFESTS, Response, TestPier, media, sha256_digest};
use tempfile::TempDir;

/// TEST-NET-3 (RFC 5737): documentation space, not in the private list.
const PUBLIC_IP: Ipv4Addr = Ipv4Addr::new(203, 0, 113, 7);
/// What the internal service guards.
const SECRET: &[u8] = b"internal secret: meant for 127.0.0.1 only\n";
/// The token the internal realm hands out (and the hostile upstream accepts).
const TOKEN: &str = "token-from-the-internal-realm";
const CONFIG: &[u8] = b"{\"architecture\":\"amd64\",\"os\":\"linux\"}";

/// Makes [`PUBLIC_IP`] an address of this machine (on `lo`), once per test process.
fn public_ip() -> IpAddr {
    static ADDED: OnceLock<Result<(), String>> = OnceLock::new();
    let added = ADDED.get_or_init(|| {
        if TcpListener::bind((PUBLIC_IP, 0)).is_ok() {
            return Ok(());
        }
        let out = Command::new("ip")
            .args(["addr", "add", &format!("{PUBLIC_IP}/32"), "dev", "lo"])
            .output()
            .map_err(|e| format!("run ip: {e}"))?;
        let stderr = String::from_utf8_lossy(&out.stderr);
        TcpListener::bind((PUBLIC_IP, 0)).map(drop).map_err(|e| {
            format!("bind {PUBLIC_IP}: {e} (ip addr add {PUBLIC_IP}/32 dev lo: {stderr})")
        })
    });
    if let Err(e) = added {
        panic!("these tests need {PUBLIC_IP} on lo (run them as root): {e}");
    }
    IpAddr::V4(PUBLIC_IP)
}

// ---------------------------------------------------------------------------------------
// A small HTTP/1.1 server that records what it was asked
// ---------------------------------------------------------------------------------------

#[derive(Debug, Clone)]
struct Req {
    method: String,
    path: String,
    headers: Vec<(String, String)>,
}

impl Req {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

struct Reply {
    status: u16,
    headers: Vec<(&'static str, String)>,
    body: Vec<u8>,
}

fn reply(status: u16, content_type: &str, body: &[u8]) -> Reply {
    Reply {
        status,
        headers: vec![("Content-Type", content_type.to_owned())],
        body: body.to_vec(),
    }
}

type Handler = Arc<dyn Fn(&Req) -> Reply + Send + Sync>;

struct Server {
    addr: SocketAddr,
    log: Arc<Mutex<Vec<Req>>>,
    connections: Arc<AtomicUsize>,
    stop: Arc<AtomicBool>,
}

impl Server {
    fn start(ip: IpAddr, handler: impl Fn(&Req) -> Reply + Send + Sync + 'static) -> Server {
        let listener = TcpListener::bind((ip, 0)).expect("bind test server");
        listener.set_nonblocking(true).expect("nonblocking");
        let addr = listener.local_addr().unwrap();
        let log = Arc::new(Mutex::new(Vec::new()));
        let connections = Arc::new(AtomicUsize::new(0));
        let stop = Arc::new(AtomicBool::new(false));
        let handler: Handler = Arc::new(handler);
        let (l, c, s) = (log.clone(), connections.clone(), stop.clone());
        thread::spawn(move || {
            while !s.load(Ordering::Relaxed) {
                match listener.accept() {
                    Ok((conn, _)) => {
                        c.fetch_add(1, Ordering::SeqCst);
                        let (l, h) = (l.clone(), handler.clone());
                        thread::spawn(move || serve(conn, l, h));
                    }
                    Err(_) => thread::sleep(Duration::from_millis(5)),
                }
            }
        });
        Server {
            addr,
            log,
            connections,
            stop,
        }
    }

    fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// `METHOD PATH` of every request so far.
    fn requests(&self) -> Vec<String> {
        self.log
            .lock()
            .unwrap()
            .iter()
            .map(|r| format!("{} {}", r.method, r.path))
            .collect()
    }

    fn connections(&self) -> usize {
        self.connections.load(Ordering::SeqCst)
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

/// Requests without bodies (GET, HEAD), kept alive until the client closes.
fn serve(conn: TcpStream, log: Arc<Mutex<Vec<Req>>>, handler: Handler) {
    let _ = conn.set_nonblocking(false);
    let _ = conn.set_read_timeout(Some(Duration::from_secs(30)));
    let Ok(mut out) = conn.try_clone() else {
        return;
    };
    let mut reader = BufReader::new(conn);
    loop {
        let mut line = String::new();
        if reader.read_line(&mut line).unwrap_or(0) == 0 {
            return;
        }
        let mut parts = line.split_whitespace();
        let (Some(method), Some(path)) = (parts.next(), parts.next()) else {
            return;
        };
        let mut req = Req {
            method: method.to_owned(),
            path: path.to_owned(),
            headers: Vec::new(),
        };
        loop {
            let mut header = String::new();
            if reader.read_line(&mut header).unwrap_or(0) == 0 {
                return;
            }
            let header = header.trim_end();
            if header.is_empty() {
                break;
            }
            if let Some((k, v)) = header.split_once(':') {
                req.headers.push((k.trim().to_owned(), v.trim().to_owned()));
            }
        }
        log.lock().unwrap().push(req.clone());
        let r = handler(&req);
        let mut head = format!(
            "HTTP/1.1 {} X\r\nContent-Length: {}\r\n",
            r.status,
            r.body.len()
        );
        for (k, v) in &r.headers {
            head.push_str(&format!("{k}: {v}\r\n"));
        }
        head.push_str("\r\n");
        let mut bytes = head.into_bytes();
        if req.method != "HEAD" {
            bytes.extend_from_slice(&r.body);
        }
        if out.write_all(&bytes).is_err() {
            return;
        }
    }
}

// ---------------------------------------------------------------------------------------
// The internal service and the hostile upstream
// ---------------------------------------------------------------------------------------

/// On 127.0.0.1: the secret at `/internal`, a token at `/token`.
fn internal_service() -> Server {
    Server::start(IpAddr::V4(Ipv4Addr::LOCALHOST), |req| {
        match req.path.split('?').next().unwrap_or("") {
            "/internal" => reply(200, "application/octet-stream", SECRET),
            "/token" => reply(
                200,
                "application/json",
                format!("{{\"token\":\"{TOKEN}\",\"expires_in\":300}}").as_bytes(),
            ),
            _ => reply(404, "text/plain", b"not here"),
        }
    })
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Trick {
    /// The layer's GET answers `307 Location: http://127.0.0.1:PORT/internal`.
    Redirect,
    /// Everything answers `401` with a Bearer realm on the internal service until the
    /// request carries its token.
    Realm,
}

/// `lib/app:v1`, one layer whose bytes are [`SECRET`] (so a followed redirect passes the
/// digest check), on [`PUBLIC_IP`].
struct Hostile {
    server: Server,
    layer: String,
}

impl Hostile {
    fn start(trick: Trick, internal: &Server) -> Hostile {
        let internal = internal.addr;
        let layer = sha256_digest(SECRET);
        let config = sha256_digest(CONFIG);
        let manifest = serde_json::to_vec(&serde_json::json!({
            "schemaVersion": 2,
            "mediaType": media::OCI_MANIFEST,
            "config": {"mediaType": media::OCI_CONFIG, "digest": config, "size": CONFIG.len()},
            "layers": [{"mediaType": media::OCI_LAYER, "digest": layer, "size": SECRET.len()}],
        }))
        .unwrap();
        let manifest_digest = sha256_digest(&manifest);
        let layer_path = format!("/v2/lib/app/blobs/{layer}");
        let config_path = format!("/v2/lib/app/blobs/{config}");
        let server = Server::start(public_ip(), move |req| {
            let bearer = format!("Bearer {TOKEN}");
            if trick == Trick::Realm && req.header("authorization") != Some(bearer.as_str()) {
                let mut r = reply(
                    401,
                    "application/json",
                    br#"{"errors":[{"code":"UNAUTHORIZED","message":"token please"}]}"#,
                );
                r.headers.push((
                    "WWW-Authenticate",
                    format!(
                        "Bearer realm=\"http://{internal}/token\",service=\"hostile\",scope=\"repository:lib/app:pull\""
                    ),
                ));
                return r;
            }
            let path = req.path.as_str();
            if path == "/v2/" {
                reply(200, "application/json", b"{}")
            } else if path == "/v2/lib/app/manifests/v1"
                || path == format!("/v2/lib/app/manifests/{manifest_digest}")
            {
                let mut r = reply(200, media::OCI_MANIFEST, &manifest);
                r.headers
                    .push(("Docker-Content-Digest", manifest_digest.clone()));
                r
            } else if path == config_path {
                reply(200, "application/octet-stream", CONFIG)
            } else if path == layer_path && trick == Trick::Redirect {
                let mut r = reply(307, "text/plain", b"");
                r.headers
                    .push(("Location", format!("http://{internal}/internal")));
                r
            } else if path == layer_path {
                reply(200, "application/octet-stream", SECRET)
            } else {
                reply(
                    404,
                    "application/json",
                    br#"{"errors":[{"code":"NOT_FOUND","message":"unknown"}]}"#,
                )
            }
        });
        Hostile { server, layer }
    }
}

/// Pier mirroring `upstream` (the default upstream), from the config file so that
/// `allow_private` can be set.
fn mirror_of(upstream: &Server, allow_private: bool) -> (TestPier, TempDir) {
    let dir = tempfile::Builder::new()
        .prefix("pier-outbound-")
        .tempdir()
        .unwrap();
    let path = dir.path().join("pier.toml");
    // `allow_private = false` is the default, left out so these tests also start a Pier
    // from before the knob (to see them fail there).
    let mut config = format!(
        "[[upstreams]]\nurl = \"{}\"\ndefault = true\n",
        upstream.url()
    );
    if allow_private {
        config.push_str("allow_private = true\n");
    }
    std::fs::write(&path, config).unwrap();
    let pier = TestPier::builder().arg("--config").arg(&path).start();
    (pier, dir)
}

fn get_manifest(pier: &TestPier) -> Response {
    pier.request(
        "GET",
        "/v2/lib/app/manifests/v1",
        &[("Accept", ACCEPT_MANIFESTS)],
        b"",
    )
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    haystack.windows(needle.len()).any(|w| w == needle)
}

// ---------------------------------------------------------------------------------------
// Tests
// ---------------------------------------------------------------------------------------

/// A blob redirect to 127.0.0.1: `502` with OCI error JSON, not the secret; the internal
/// service sees no connection; the refusal is not retried.
#[test]
fn redirect_to_a_private_address_is_refused() {
    let internal = internal_service();
    let hostile = Hostile::start(Trick::Redirect, &internal);
    let (pier, _dir) = mirror_of(&hostile.server, false);

    get_manifest(&pier).expect_status(200, "manifest from the hostile upstream");
    let path = format!("/v2/lib/app/blobs/{}", hostile.layer);
    let r = pier.get(&path);
    assert!(
        !contains(&r.body, SECRET),
        "the internal secret came through: {}",
        r.text()
    );
    assert_eq!(r.status, 502, "blob GET: {} {}", r.status, r.text());
    assert_eq!(
        r.error_code().as_deref(),
        Some("UNAVAILABLE"),
        "{}",
        r.text()
    );
    assert_eq!(internal.connections(), 0, "{:?}", internal.requests());
    assert!(
        pier.log_tail(200).contains("refused"),
        "no refusal in the log:\n{}",
        pier.log_tail(60)
    );
    // One GET for one client GET: the refusal is final, not retried with backoff.
    let gets = hostile
        .server
        .requests()
        .iter()
        .filter(|r| **r == format!("GET {path}"))
        .count();
    assert_eq!(gets, 1, "{:?}", hostile.server.requests());
}

/// With `allow_private = true` on the upstream, the same redirect is followed.
#[test]
fn redirect_to_a_private_address_is_followed_when_allowed() {
    let internal = internal_service();
    let hostile = Hostile::start(Trick::Redirect, &internal);
    let (pier, _dir) = mirror_of(&hostile.server, true);

    get_manifest(&pier).expect_status(200, "manifest from the hostile upstream");
    let r = pier.get(&format!("/v2/lib/app/blobs/{}", hostile.layer));
    assert_eq!(r.status, 200, "blob GET: {}", r.text());
    assert_eq!(r.body, SECRET);
    assert_eq!(internal.requests(), ["GET /internal"]);
}

/// A Bearer realm on 127.0.0.1: no token request reaches it, the manifest GET fails.
#[test]
fn token_realm_on_a_private_address_is_refused() {
    let internal = internal_service();
    let hostile = Hostile::start(Trick::Realm, &internal);
    let (pier, _dir) = mirror_of(&hostile.server, false);

    let r = get_manifest(&pier);
    assert_eq!(r.status, 502, "manifest GET: {} {}", r.status, r.text());
    assert_eq!(
        r.error_code().as_deref(),
        Some("UNAVAILABLE"),
        "{}",
        r.text()
    );
    assert_eq!(internal.connections(), 0, "{:?}", internal.requests());
    assert!(
        pier.log_tail(200).contains("refused"),
        "no refusal in the log:\n{}",
        pier.log_tail(60)
    );
}

/// With `allow_private = true`, the token comes from the internal realm and the manifest
/// is served.
#[test]
fn token_realm_on_a_private_address_is_used_when_allowed() {
    let internal = internal_service();
    let hostile = Hostile::start(Trick::Realm, &internal);
    let (pier, _dir) = mirror_of(&hostile.server, true);

    get_manifest(&pier).expect_status(200, "manifest with a token from the internal realm");
    let tokens = internal
        .requests()
        .iter()
        .filter(|r| r.starts_with("GET /token?"))
        .count();
    assert_eq!(tokens, 1, "{:?}", internal.requests());
    let r = pier.get(&format!("/v2/lib/app/blobs/{}", hostile.layer));
    assert_eq!(r.status, 200, "blob GET: {}", r.text());
}
