//! Outbound proxies: Pier's mirror pulls from a real upstream (Debian's
//! `docker-registry`) through a real proxy (Debian's `tinyproxy`) when `HTTP_PROXY` /
//! `HTTPS_PROXY` are set in its environment, byte-exact; a plain-http upstream is asked in
//! absolute form, an https one through a `CONNECT` tunnel (TLS end to end, with a private
//! CA given by `SSL_CERT_FILE`); with the proxy stopped the pull fails at once with a 502
//! and a log line naming the proxy; `NO_PROXY` naming the upstream bypasses the proxy; a
//! webhook goes through the proxy too; the admin CLI reaches a loopback admin listener
//! directly whatever the proxy variables say.
//!
//! Pier never proxies loopback destinations (hyper-util's matcher has no such default;
//! Pier adds it, as Go's net/http), so the upstream and the webhook receiver listen on
//! 203.0.113.9 (TEST-NET-3), added to `lo` by the test: that needs root (`ip addr add`).
//! tinyproxy listens on 127.0.0.1 (a proxy on a loopback or private address is fine: the
//! operator named it) and logs each request it forwards (`Request (file descriptor N):
//! GET http://203.0.113.9:PORT/v2/... HTTP/1.1`, or `CONNECT 203.0.113.9:PORT`).
//!
//! Needs the binary: `cargo build -p pier-server --bin pier`, then
//! `cargo test -p pier-e2e --test proxy`.

mod clients_support;

use std::fs;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{IpAddr, Ipv4Addr, SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::thread;
use std::time::{Duration, Instant};

use pier_e2e::{TestPier, descriptor, media, random_bytes, sha256_digest};
use tempfile::TempDir;

use crate::clients_support::{Daemon, RefRegistry, poll, require_bin, temp_dir};

/// TEST-NET-3 (RFC 5737): not loopback, not private; on `lo` for the test.
const UPSTREAM_IP: Ipv4Addr = Ipv4Addr::new(203, 0, 113, 9);
const WAIT: Duration = Duration::from_secs(20);

/// Makes [`UPSTREAM_IP`] an address of this machine (on `lo`), once per test process.
fn upstream_ip() -> IpAddr {
    static ADDED: OnceLock<Result<(), String>> = OnceLock::new();
    let added = ADDED.get_or_init(|| {
        if TcpListener::bind((UPSTREAM_IP, 0)).is_ok() {
            return Ok(());
        }
        let out = Command::new("ip")
            .args(["addr", "add", &format!("{UPSTREAM_IP}/32"), "dev", "lo"])
            .output()
            .map_err(|e| format!("run ip: {e}"))?;
        let stderr = String::from_utf8_lossy(&out.stderr);
        TcpListener::bind((UPSTREAM_IP, 0)).map(drop).map_err(|e| {
            format!("bind {UPSTREAM_IP}: {e} (ip addr add {UPSTREAM_IP}/32 dev lo: {stderr})")
        })
    });
    if let Err(e) = added {
        panic!("these tests need {UPSTREAM_IP} on lo (run them as root): {e}");
    }
    IpAddr::V4(UPSTREAM_IP)
}

// ---------------------------------------------------------------------------------------
// tinyproxy
// ---------------------------------------------------------------------------------------

/// Debian's tinyproxy in the foreground on a free 127.0.0.1 port, its config and log in
/// a temp dir.
struct Tinyproxy {
    port: u16,
    daemon: Daemon,
    _dir: TempDir,
}

impl Tinyproxy {
    /// A proxy that may `CONNECT` to `connect_ports` (besides plain http anywhere).
    #[track_caller]
    fn start(connect_ports: &[u16]) -> Tinyproxy {
        let bin = require_bin("tinyproxy");
        let dir = temp_dir("tinyproxy");
        for attempt in 1..=4 {
            let port = pier_e2e::free_port();
            let mut config = format!(
                "Port {port}\nListen 127.0.0.1\nTimeout 30\nAllow 127.0.0.1\nLogLevel Info\n\
                 MaxClients 64\nDisableViaHeader Yes\n"
            );
            for p in connect_ports {
                config.push_str(&format!("ConnectPort {p}\n"));
            }
            let conf = dir.path().join(format!("tinyproxy-{attempt}.conf"));
            fs::write(&conf, config).unwrap();
            let log = dir.path().join(format!("tinyproxy-{attempt}.log"));
            let mut daemon = Daemon::spawn(
                "tinyproxy",
                Command::new(&bin).arg("-d").arg("-c").arg(&conf),
                &log,
            );
            let addr = SocketAddr::from(([127, 0, 0, 1], port));
            let up = poll(WAIT, || {
                std::net::TcpStream::connect(addr).is_ok() || !daemon.is_running()
            });
            if up && daemon.is_running() {
                return Tinyproxy {
                    port,
                    daemon,
                    _dir: dir,
                };
            }
            daemon.stop();
            assert!(
                attempt < 4 && daemon.log().contains("in use"),
                "tinyproxy did not start\n{}",
                daemon.log_tail(30)
            );
        }
        unreachable!()
    }

    /// `http://127.0.0.1:PORT`.
    fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// The requests it was asked to forward: `GET http://host:port/path`, `CONNECT
    /// host:port`.
    fn requests(&self) -> Vec<String> {
        self.daemon
            .log()
            .lines()
            .filter_map(|l| l.split_once("Request (file descriptor ").map(|(_, r)| r))
            .filter_map(|r| r.split_once("): ").map(|(_, r)| r))
            .map(|r| {
                r.trim_end_matches(" HTTP/1.1")
                    .trim_end_matches(" HTTP/1.0")
                    .to_owned()
            })
            .collect()
    }

    fn stop(&mut self) {
        self.daemon.stop();
    }
}

// ---------------------------------------------------------------------------------------
// The upstream and its image
// ---------------------------------------------------------------------------------------

/// An image seeded into the upstream: manifest, config and a 1 MiB layer.
struct Image {
    repo: String,
    tag: String,
    manifest: Vec<u8>,
    layer: Vec<u8>,
    layer_digest: String,
}

/// Seeds `repo:tag` into the registry on `addr` (plain http).
#[track_caller]
fn seed(addr: SocketAddr, repo: &str, tag: &str) -> Image {
    let config = format!(
        "{{\"architecture\":\"amd64\",\"os\":\"linux\",\"nonce\":\"{}\"}}",
        hex::encode(random_bytes(8))
    )
    .into_bytes();
    let layer = random_bytes(1 << 20);
    pier_e2e::push_blob_in_session(addr, repo, &config);
    let layer_digest = pier_e2e::push_blob_in_session(addr, repo, &layer);
    let manifest = serde_json::to_vec(&serde_json::json!({
        "schemaVersion": 2,
        "mediaType": media::OCI_MANIFEST,
        "config": descriptor(media::OCI_CONFIG, &config),
        "layers": [descriptor(media::OCI_LAYER, &layer)],
    }))
    .unwrap();
    pier_e2e::push_manifest(addr, repo, tag, media::OCI_MANIFEST, &manifest)
        .expect_status(201, "upstream: PUT the manifest");
    Image {
        repo: repo.to_owned(),
        tag: tag.to_owned(),
        manifest,
        layer,
        layer_digest,
    }
}

/// The upstream registry on [`UPSTREAM_IP`], seeded with one image.
struct Upstream {
    reg: RefRegistry,
    /// A second registry on the same root over TLS, when asked for.
    tls: Option<RefRegistry>,
    ca: Option<PathBuf>,
    image: Image,
    _dir: TempDir,
}

impl Upstream {
    #[track_caller]
    fn start(tls: bool) -> Upstream {
        let ip = upstream_ip();
        let dir = temp_dir("proxy-upstream");
        let root = dir.path().join("root");
        fs::create_dir_all(&root).unwrap();
        let reg = RefRegistry::start_on(&root, ip, None);
        let image = seed(reg.addr, "library/proxied", "v1");
        let (tls, ca) = if tls {
            let pki = dir.path().join("pki");
            fs::create_dir_all(&pki).unwrap();
            let ca = pier_e2e::test_ca_for(&pki, &format!("IP:{UPSTREAM_IP}"));
            let reg = RefRegistry::start_on(&root, ip, Some((&ca.cert, &ca.key)));
            (Some(reg), Some(ca.ca))
        } else {
            (None, None)
        };
        Upstream {
            reg,
            tls,
            ca,
            image,
            _dir: dir,
        }
    }

    /// The plain-http registry's `http://203.0.113.9:PORT`, or the TLS one's `https://...`.
    fn url(&self) -> String {
        match &self.tls {
            Some(tls) => format!("https://{}", tls.addr),
            None => format!("http://{}", self.reg.addr),
        }
    }

    fn addr(&self) -> SocketAddr {
        self.tls.as_ref().map_or(self.reg.addr, |t| t.addr)
    }
}

/// Pier mirroring `up` with `env` in its environment.
#[track_caller]
fn pier_via(up: &Upstream, env: &[(&str, String)]) -> TestPier {
    let mut b = TestPier::builder().arg("--upstream").arg(up.url());
    for (k, v) in env {
        b = b.env(*k, v);
    }
    if let Some(ca) = &up.ca {
        b = b.env("SSL_CERT_FILE", ca);
    }
    b.start()
}

/// Pulls the image through Pier and checks manifest and layer byte for byte.
#[track_caller]
fn assert_pulls_exactly(pier: &TestPier, img: &Image) {
    let r = pier_e2e::get_manifest(pier.addr, &img.repo, &img.tag);
    assert_eq!(
        r.status,
        200,
        "manifest through Pier: {r}\n{}",
        pier.log_tail(30)
    );
    assert!(
        r.body == img.manifest,
        "the manifest differs from the upstream's"
    );
    let r = pier.get(&format!("/v2/{}/blobs/{}", img.repo, img.layer_digest));
    assert_eq!(r.status, 200, "layer through Pier\n{}", pier.log_tail(30));
    assert!(
        r.body == img.layer,
        "the layer differs from the upstream's ({} bytes received)",
        r.body.len()
    );
}

fn pier_log(pier: &TestPier) -> String {
    fs::read_to_string(pier.log_path()).unwrap_or_default()
}

// ---------------------------------------------------------------------------------------
// Mirror pulls
// ---------------------------------------------------------------------------------------

/// `HTTP_PROXY` set: the manifest and blob GETs go to tinyproxy in absolute form, and
/// what Pier serves is the upstream's bytes. Pier says at start which proxy it uses, and
/// the proxy's credentials never appear in its log.
#[test]
fn a_plain_http_upstream_is_pulled_through_the_proxy() {
    let up = Upstream::start(false);
    let proxy = Tinyproxy::start(&[]);
    // tinyproxy does not ask for credentials; they must stay out of the log all the same.
    let with_creds = proxy
        .url()
        .replace("http://", "http://proxyuser:proxysecret@");
    let pier = pier_via(
        &up,
        &[
            ("HTTP_PROXY", with_creds.clone()),
            ("HTTPS_PROXY", with_creds),
        ],
    );
    assert_pulls_exactly(&pier, &up.image);

    // The mirror resolves the tag with a HEAD, then GETs the manifest by digest.
    let base = format!("http://{}/v2/{}", up.addr(), up.image.repo);
    let img = &up.image;
    let expected = [
        format!("HEAD {base}/manifests/{}", img.tag),
        format!("GET {base}/manifests/{}", sha256_digest(&img.manifest)),
        format!("GET {base}/blobs/{}", img.layer_digest),
    ];
    let asked = proxy.requests();
    for e in &expected {
        assert!(
            asked.contains(e),
            "tinyproxy did not forward {e:?}; it forwarded {asked:#?}"
        );
    }
    let log = pier_log(&pier);
    assert!(
        log.contains(&format!("HTTP_PROXY=http://***@127.0.0.1:{}", proxy.port)),
        "no start-up line naming the proxy:\n{}",
        pier.log_tail(40)
    );
    assert!(
        !log.contains("proxysecret"),
        "the proxy's password is in Pier's log"
    );
}

/// An https upstream: a `CONNECT` tunnel through tinyproxy, TLS inside it verified with
/// the private CA, the bytes exact.
#[test]
fn an_https_upstream_is_pulled_through_a_connect_tunnel() {
    let up = Upstream::start(true);
    let proxy = Tinyproxy::start(&[up.addr().port()]);
    let pier = pier_via(&up, &[("https_proxy", proxy.url())]);
    assert_pulls_exactly(&pier, &up.image);
    let connect = format!("CONNECT {}", up.addr());
    let asked = proxy.requests();
    assert!(
        asked.contains(&connect),
        "tinyproxy was not asked to {connect:?}: {asked:#?}"
    );
    // Only tunnels: no request of Pier's went to the proxy in the clear.
    assert!(
        asked.iter().all(|r| r.starts_with("CONNECT ")),
        "requests outside a tunnel: {asked:#?}"
    );
}

/// tinyproxy stopped: the pull fails within the retries (no hang) with a 502, and
/// Pier's log names the proxy it could not reach.
#[test]
fn a_stopped_proxy_fails_the_pull_with_a_502_naming_it() {
    let up = Upstream::start(false);
    let mut proxy = Tinyproxy::start(&[]);
    let proxy_url = proxy.url();
    let pier = pier_via(&up, &[("HTTP_PROXY", proxy_url.clone())]);
    proxy.stop();
    let started = Instant::now();
    let r = pier_e2e::get_manifest(pier.addr, &up.image.repo, &up.image.tag);
    let took = started.elapsed();
    assert_eq!(r.status, 502, "{r}\n{}", pier.log_tail(30));
    assert!(took < WAIT, "the failing pull took {took:?}");
    let needle = format!("through proxy {proxy_url}");
    assert!(
        poll(Duration::from_secs(5), || pier_log(&pier).contains(&needle)),
        "Pier's log does not name the proxy ({needle:?}):\n{}",
        pier.log_tail(30)
    );
    // And nothing reached the upstream directly (the seeding PUT only).
    assert!(
        !up.reg
            .daemon
            .log()
            .contains("\"HEAD /v2/library/proxied/manifests/v1"),
        "the upstream was asked directly:\n{}",
        up.reg.daemon.log_tail(20)
    );
}

/// `NO_PROXY` naming the upstream's address: straight to the upstream, tinyproxy (running)
/// is asked nothing.
#[test]
fn no_proxy_naming_the_upstream_bypasses_the_proxy() {
    let up = Upstream::start(false);
    let proxy = Tinyproxy::start(&[]);
    let pier = pier_via(
        &up,
        &[
            ("HTTP_PROXY", proxy.url()),
            ("HTTPS_PROXY", proxy.url()),
            ("NO_PROXY", format!("example.invalid,{UPSTREAM_IP}")),
        ],
    );
    assert_pulls_exactly(&pier, &up.image);
    assert_eq!(
        proxy.requests(),
        Vec::<String>::new(),
        "tinyproxy was asked"
    );
}

// ---------------------------------------------------------------------------------------
// Webhooks and the admin CLI
// ---------------------------------------------------------------------------------------

/// An HTTP/1.1 server on `ip` that answers `reply` (a whole response) to everything and
/// records `METHOD PATH` of each request.
struct Receiver {
    addr: SocketAddr,
    seen: Arc<Mutex<Vec<String>>>,
    stop: Arc<AtomicBool>,
}

impl Receiver {
    fn start(ip: IpAddr) -> Receiver {
        Receiver::answering(
            ip,
            b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
        )
    }

    fn answering(ip: IpAddr, reply: &'static [u8]) -> Receiver {
        let listener = TcpListener::bind((ip, 0)).expect("bind receiver");
        listener.set_nonblocking(true).unwrap();
        let addr = listener.local_addr().unwrap();
        let seen = Arc::new(Mutex::new(Vec::new()));
        let stop = Arc::new(AtomicBool::new(false));
        let (s, st) = (seen.clone(), stop.clone());
        thread::spawn(move || {
            while !st.load(Ordering::Relaxed) {
                let Ok((conn, _)) = listener.accept() else {
                    thread::sleep(Duration::from_millis(10));
                    continue;
                };
                let s = s.clone();
                thread::spawn(move || {
                    conn.set_nonblocking(false).ok();
                    conn.set_read_timeout(Some(Duration::from_secs(10))).ok();
                    let mut reader = BufReader::new(conn.try_clone().expect("clone"));
                    let mut line = String::new();
                    if reader.read_line(&mut line).is_err() {
                        return;
                    }
                    let mut length = 0usize;
                    loop {
                        let mut h = String::new();
                        if reader.read_line(&mut h).is_err() || h.trim().is_empty() {
                            break;
                        }
                        if let Some((k, v)) = h.split_once(':')
                            && k.eq_ignore_ascii_case("content-length")
                        {
                            length = v.trim().parse().unwrap_or(0);
                        }
                    }
                    let mut body = vec![0; length];
                    let _ = reader.read_exact(&mut body);
                    let mut parts = line.split_whitespace();
                    let (m, p) = (parts.next().unwrap_or(""), parts.next().unwrap_or(""));
                    s.lock().unwrap().push(format!("{m} {p}"));
                    let mut conn = conn;
                    let _ = conn.write_all(reply);
                });
            }
        });
        Receiver { addr, seen, stop }
    }

    fn seen(&self) -> Vec<String> {
        self.seen.lock().unwrap().clone()
    }
}

impl Drop for Receiver {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

fn toml_path(p: &Path) -> String {
    format!("{:?}", p.display().to_string())
}

/// A push's webhook (the `webhook` notifier plugin) to a receiver on 203.0.113.9 goes
/// through the proxy: tinyproxy forwards the POST and the receiver gets it.
#[test]
fn a_webhook_is_delivered_through_the_proxy() {
    let receiver = Receiver::start(upstream_ip());
    let proxy = Tinyproxy::start(&[]);
    let url = format!("http://{}/hooks/proxied", receiver.addr);
    let config = format!(
        "[events]\nattempts = 50\nbackoff = \"200ms\"\nbackoff_max = \"1s\"\ntimeout = \"5s\"\n\n\
         [[plugins]]\nname = \"webhook\"\nhook = \"notifier\"\npath = {}\n\
         grants = [\"log\", \"config\", \"http\"]\nallowed_hosts = [\"{}\"]\n\n\
         [plugins.config]\nendpoints = [{{ url = \"{url}\", events = [\"manifest-pushed\"] }}]\n",
        toml_path(&pier_e2e::plugins::build().webhook),
        receiver.addr
    );
    let dir = temp_dir("proxy-webhook");
    let path = dir.path().join("pier.toml");
    fs::write(&path, config).unwrap();
    let pier = TestPier::builder()
        .arg("--config")
        .arg(&path)
        .env("HTTP_PROXY", proxy.url())
        .start();
    let pushed = pier_e2e::push_image(pier.addr, "hooks/app", Some("v1"), &[b"layer"]);
    assert!(
        poll(WAIT, || receiver
            .seen()
            .iter()
            .any(|r| r == "POST /hooks/proxied")),
        "the receiver got no webhook for {}; it got {:?}\n{}",
        pushed.digest,
        receiver.seen(),
        pier.log_tail(30)
    );
    let forwarded = format!("POST {url}");
    assert!(
        proxy.requests().contains(&forwarded),
        "tinyproxy did not forward {forwarded:?}: {:#?}",
        proxy.requests()
    );
}

/// The admin CLI with proxy variables naming a dead proxy still reaches the admin
/// listener on loopback (loopback is never proxied), and a bad proxy setting is an error
/// that says which variable.
#[test]
fn the_admin_cli_reaches_a_loopback_admin_directly() {
    let pier = TestPier::start();
    let dead = format!("http://127.0.0.1:{}", pier_e2e::free_port());
    let admin = format!("http://{}", pier.admin_addr);
    let run = |var: &str, value: &str| {
        let out = pier_e2e::pier_command()
            .args(["repos", "list", "--admin", &admin])
            .env("HTTP_PROXY", &dead)
            .env("HTTPS_PROXY", &dead)
            .env(var, value)
            .output()
            .expect("run pier");
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    let (ok, stderr) = run("NO_PROXY", "");
    assert!(
        ok,
        "pier repos list through a dead proxy variable: {stderr}"
    );
    let (ok, stderr) = run("ALL_PROXY", "socks5://127.0.0.1:1080");
    assert!(
        !ok && stderr.contains("ALL_PROXY=socks5://127.0.0.1:1080")
            && stderr.contains("only http:// proxies"),
        "{stderr}"
    );
}

/// The outbound-address policy holds through a proxy: an upstream (on a public address)
/// whose answers redirect to a private address gets an error, and the proxy is never
/// asked for that address (Pier resolves and checks it before).
#[test]
fn a_redirect_to_a_private_address_is_refused_before_the_proxy() {
    let hostile = Receiver::answering(
        upstream_ip(),
        b"HTTP/1.1 302 Found\r\nLocation: http://10.11.12.13:9/internal\r\n\
          Content-Length: 0\r\nConnection: close\r\n\r\n",
    );
    let proxy = Tinyproxy::start(&[]);
    let pier = TestPier::builder()
        .arg("--upstream")
        .arg(format!("http://{}", hostile.addr))
        .env("HTTP_PROXY", proxy.url())
        .start();
    let digest = sha256_digest(b"never served");
    let r = pier.get(&format!("/v2/library/x/blobs/{digest}"));
    assert!(
        r.status >= 400,
        "a redirect to a private address was followed: {r}"
    );
    let needle = "redirect to http://10.11.12.13:9/internal (10.11.12.13), a private address";
    assert!(
        poll(Duration::from_secs(5), || pier_log(&pier).contains(needle)),
        "no refusal in Pier's log ({needle:?}):\n{}",
        pier.log_tail(30)
    );
    let asked = proxy.requests();
    assert!(
        !asked.is_empty() && asked.iter().all(|r| !r.contains("10.11.12.13")),
        "the proxy was asked for the private address (or for nothing): {asked:#?}"
    );
}
