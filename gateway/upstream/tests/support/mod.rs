//! Real servers for the upstream client's tests: Debian's `docker-registry` (CNCF
//! distribution) in a temp dir, a raw HTTP/1.0 helper to seed it, a tiny threaded HTTP
//! server for redirects, faults and a Docker token endpoint, and openssl-made keys.
#![allow(dead_code)]

use std::io::{self, BufRead, BufReader, Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use base64::Engine as _;
use pier_oci::{Algorithm, Digest, RepoName};
use tempfile::TempDir;

pub const REGISTRY_BIN: &str = "/usr/bin/docker-registry";

/// A free loopback port (bound, read, released).
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("bind a free port")
        .port()
}

fn wait_for_port(port: u16, child: &mut Child, log: &Path, within: Duration) {
    let deadline = Instant::now() + within;
    loop {
        if TcpStream::connect(("127.0.0.1", port)).is_ok() {
            return;
        }
        if let Ok(Some(status)) = child.try_wait() {
            let log = std::fs::read_to_string(log).unwrap_or_default();
            panic!("docker-registry exited with {status} before listening:\n{log}");
        }
        assert!(
            Instant::now() < deadline,
            "docker-registry did not listen on {port} within {within:?}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Debian's `docker-registry` serving `root`; killed on drop.
pub struct Registry {
    child: Child,
    pub port: u16,
    _dir: TempDir,
}

impl Registry {
    /// `http_extra` goes under `http:` (indented two spaces), `extra` at the top level.
    pub fn start(root: &Path, http_extra: &str, extra: &str) -> Registry {
        let dir = TempDir::new().expect("tempdir");
        let port = free_port();
        let config = format!(
            "version: 0.1\n\
             log:\n  level: error\n  accesslog:\n    disabled: true\n\
             storage:\n  filesystem:\n    rootdirectory: {root}\n\
             http:\n  addr: 127.0.0.1:{port}\n{http_extra}\
             {extra}",
            root = root.display()
        );
        let config_path = dir.path().join("config.yml");
        std::fs::write(&config_path, config).expect("write registry config");
        let log_path = dir.path().join("registry.log");
        let log = std::fs::File::create(&log_path).expect("registry log");
        let mut child = Command::new(REGISTRY_BIN)
            .arg("serve")
            .arg(&config_path)
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("dup log"))
            .stderr(log)
            .spawn()
            .expect("start docker-registry (apt-get install docker-registry)");
        wait_for_port(port, &mut child, &log_path, Duration::from_secs(10));
        Registry {
            child,
            port,
            _dir: dir,
        }
    }

    pub fn plain(root: &Path) -> Registry {
        Registry::start(root, "", "")
    }

    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }
}

impl Drop for Registry {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A response read by [`raw`].
#[derive(Debug)]
pub struct RawResponse {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl RawResponse {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

/// One HTTP/1.0 request over a fresh connection (no chunked answers, read to close).
pub fn raw(
    port: u16,
    method: &str,
    target: &str,
    headers: &[(&str, &str)],
    body: &[u8],
) -> io::Result<RawResponse> {
    let mut stream = TcpStream::connect(("127.0.0.1", port))?;
    stream.set_read_timeout(Some(Duration::from_secs(5)))?;
    let mut head = format!(
        "{method} {target} HTTP/1.0\r\nHost: 127.0.0.1:{port}\r\nContent-Length: {}\r\n",
        body.len()
    );
    for (name, value) in headers {
        head.push_str(&format!("{name}: {value}\r\n"));
    }
    head.push_str("\r\n");
    stream.write_all(head.as_bytes())?;
    stream.write_all(body)?;
    let mut data = Vec::new();
    stream.read_to_end(&mut data)?;
    let end = data
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .ok_or_else(|| io::Error::other("no end of headers"))?;
    let head = String::from_utf8_lossy(&data[..end]).into_owned();
    let mut lines = head.split("\r\n");
    let status = lines
        .next()
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| io::Error::other("bad status line"))?;
    let headers = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_owned(), v.trim().to_owned()))
        .collect();
    Ok(RawResponse {
        status,
        headers,
        body: data[end + 4..].to_vec(),
    })
}

/// What [`seed`] pushed.
#[derive(Debug, Clone)]
pub struct Image {
    pub repo: RepoName,
    pub tag: String,
    pub manifest: Vec<u8>,
    pub manifest_digest: Digest,
    pub layer: Vec<u8>,
    pub layer_digest: Digest,
}

/// Deterministic, incompressible-looking bytes.
pub fn pseudo_random(len: usize, seed: u64) -> Vec<u8> {
    let mut x = seed
        .wrapping_mul(6364136223846793005)
        .wrapping_add(1442695040888963407);
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            (x >> 24) as u8
        })
        .collect()
}

fn push_blob(port: u16, repo: &str, data: &[u8]) -> Digest {
    let digest = Digest::of(Algorithm::Sha256, data);
    let started = raw(
        port,
        "POST",
        &format!("/v2/{repo}/blobs/uploads/"),
        &[],
        b"",
    )
    .expect("start upload");
    assert_eq!(started.status, 202, "start upload: {started:?}");
    let location = started.header("Location").expect("upload Location");
    let location = match location.find("/v2/") {
        Some(i) => &location[i..],
        None => panic!("odd upload Location {location}"),
    };
    let separator = if location.contains('?') { '&' } else { '?' };
    let done = raw(
        port,
        "PUT",
        &format!("{location}{separator}digest={digest}"),
        &[("Content-Type", "application/octet-stream")],
        data,
    )
    .expect("finish upload");
    assert_eq!(done.status, 201, "finish upload: {done:?}");
    digest
}

/// Push a one-layer OCI image (a 100 KiB layer) to a registry without auth.
pub fn seed(port: u16, repo: &str, tag: &str) -> Image {
    let layer = pseudo_random(100 * 1024 + 7, 7);
    let config =
        br#"{"architecture":"amd64","os":"linux","rootfs":{"type":"layers","diff_ids":[]}}"#;
    let layer_digest = push_blob(port, repo, &layer);
    let config_digest = push_blob(port, repo, config);
    let manifest = format!(
        concat!(
            r#"{{"schemaVersion":2,"mediaType":"application/vnd.oci.image.manifest.v1+json","#,
            r#""config":{{"mediaType":"application/vnd.oci.image.config.v1+json","digest":"{}","size":{}}},"#,
            r#""layers":[{{"mediaType":"application/vnd.oci.image.layer.v1.tar+gzip","digest":"{}","size":{}}}]}}"#
        ),
        config_digest,
        config.len(),
        layer_digest,
        layer.len()
    )
    .into_bytes();
    let put = raw(
        port,
        "PUT",
        &format!("/v2/{repo}/manifests/{tag}"),
        &[("Content-Type", "application/vnd.oci.image.manifest.v1+json")],
        &manifest,
    )
    .expect("put manifest");
    assert_eq!(put.status, 201, "put manifest: {put:?}");
    Image {
        repo: repo.parse().expect("repo name"),
        tag: tag.to_owned(),
        manifest_digest: Digest::of(Algorithm::Sha256, &manifest),
        manifest,
        layer,
        layer_digest,
    }
}

/// A storage root holding one image, written by a registry that is gone again (so a
/// registry with auth can serve it without a push through that auth).
pub fn seeded_root(repo: &str, tag: &str) -> (TempDir, Image) {
    let root = TempDir::new().expect("tempdir");
    let registry = Registry::plain(root.path());
    let image = seed(registry.port, repo, tag);
    drop(registry);
    (root, image)
}

/// A request as the tiny server saw it.
#[derive(Debug, Clone)]
pub struct Req {
    pub method: String,
    pub target: String,
    pub headers: Vec<(String, String)>,
}

impl Req {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    pub fn path(&self) -> &str {
        self.target.split('?').next().unwrap_or("")
    }

    pub fn query(&self, name: &str) -> Option<String> {
        let query = self.target.split_once('?')?.1;
        query.split('&').find_map(|pair| {
            let (k, v) = pair.split_once('=')?;
            (k == name).then(|| percent_decode(v))
        })
    }
}

fn percent_decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::new();
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%'
            && i + 2 < bytes.len()
            && let Some(b) = std::str::from_utf8(&bytes[i + 1..i + 3])
                .ok()
                .and_then(|hex| u8::from_str_radix(hex, 16).ok())
        {
            out.push(b);
            i += 3;
            continue;
        }
        out.push(if bytes[i] == b'+' { b' ' } else { bytes[i] });
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

type Handler = dyn Fn(Req, &mut TcpStream) + Send + Sync + 'static;

/// A threaded HTTP/1.1 server for one request per connection; every request is logged.
/// Stops accepting on drop (handlers still sleeping finish on their own threads).
pub struct TinyServer {
    pub port: u16,
    pub log: Arc<Mutex<Vec<Req>>>,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl TinyServer {
    pub fn start<F>(handler: F) -> TinyServer
    where
        F: Fn(Req, &mut TcpStream) + Send + Sync + 'static,
    {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind tiny server");
        let port = listener.local_addr().expect("addr").port();
        let stop = Arc::new(AtomicBool::new(false));
        let log = Arc::new(Mutex::new(Vec::new()));
        let handler: Arc<Handler> = Arc::new(handler);
        let thread = {
            let stop = stop.clone();
            let log = log.clone();
            std::thread::spawn(move || {
                for stream in listener.incoming() {
                    if stop.load(Ordering::SeqCst) {
                        break;
                    }
                    let Ok(mut stream) = stream else { continue };
                    let handler = handler.clone();
                    let log = log.clone();
                    std::thread::spawn(move || {
                        let _ = stream.set_read_timeout(Some(Duration::from_secs(5)));
                        let Some(req) = read_request(&mut stream) else {
                            return;
                        };
                        log.lock().unwrap().push(req.clone());
                        handler(req, &mut stream);
                        let _ = stream.flush();
                        let _ = stream.shutdown(Shutdown::Write);
                    });
                }
            })
        };
        TinyServer {
            port,
            log,
            stop,
            thread: Some(thread),
        }
    }

    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    pub fn requests(&self) -> Vec<Req> {
        self.log.lock().unwrap().clone()
    }
}

impl Drop for TinyServer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        let _ = TcpStream::connect(("127.0.0.1", self.port));
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

fn read_request(stream: &mut TcpStream) -> Option<Req> {
    let mut reader = BufReader::new(stream.try_clone().ok()?);
    let mut line = String::new();
    reader.read_line(&mut line).ok()?;
    let mut parts = line.split_whitespace();
    let method = parts.next()?.to_owned();
    let target = parts.next()?.to_owned();
    let mut headers = Vec::new();
    loop {
        let mut line = String::new();
        if reader.read_line(&mut line).ok()? == 0 {
            break;
        }
        let line = line.trim_end();
        if line.is_empty() {
            break;
        }
        if let Some((k, v)) = line.split_once(':') {
            headers.push((k.trim().to_owned(), v.trim().to_owned()));
        }
    }
    Some(Req {
        method,
        target,
        headers,
    })
}

/// Write a complete response (with `Connection: close`).
pub fn respond(stream: &mut TcpStream, status: u16, headers: &[(&str, &str)], body: &[u8]) {
    let mut head = format!(
        "HTTP/1.1 {status} X\r\nContent-Length: {}\r\nConnection: close\r\n",
        body.len()
    );
    for (name, value) in headers {
        head.push_str(&format!("{name}: {value}\r\n"));
    }
    head.push_str("\r\n");
    let _ = stream.write_all(head.as_bytes());
    let _ = stream.write_all(body);
}

fn openssl(args: &[&str], dir: &Path) {
    let out = Command::new("openssl")
        .args(args)
        .current_dir(dir)
        .output()
        .expect("run openssl");
    assert!(
        out.status.success(),
        "openssl {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// An RSA key and self-signed certificate (for signing tokens).
pub struct SigningKey {
    pub key: PathBuf,
    pub cert: PathBuf,
    /// The certificate, DER, standard base64 (a JWT `x5c` entry).
    pub cert_b64: String,
}

pub fn signing_key(dir: &Path) -> SigningKey {
    openssl(
        &[
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-keyout",
            "token.key",
            "-out",
            "token.pem",
            "-days",
            "2",
            "-subj",
            "/CN=pier-test-token-signer",
        ],
        dir,
    );
    openssl(
        &[
            "x509",
            "-in",
            "token.pem",
            "-outform",
            "der",
            "-out",
            "token.der",
        ],
        dir,
    );
    let der = std::fs::read(dir.join("token.der")).expect("read der");
    SigningKey {
        key: dir.join("token.key"),
        cert: dir.join("token.pem"),
        cert_b64: base64::engine::general_purpose::STANDARD.encode(der),
    }
}

/// A test CA and a server certificate for 127.0.0.1 signed by it.
pub struct TlsFiles {
    pub ca_der: Vec<u8>,
    pub cert: PathBuf,
    pub key: PathBuf,
}

pub fn tls_files(dir: &Path) -> TlsFiles {
    openssl(
        &[
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-keyout",
            "ca.key",
            "-out",
            "ca.pem",
            "-days",
            "2",
            "-subj",
            "/CN=pier-test-ca",
        ],
        dir,
    );
    openssl(
        &[
            "req",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-keyout",
            "tls.key",
            "-out",
            "tls.csr",
            "-subj",
            "/CN=127.0.0.1",
        ],
        dir,
    );
    std::fs::write(dir.join("san.ext"), "subjectAltName=IP:127.0.0.1\n").expect("write ext");
    openssl(
        &[
            "x509",
            "-req",
            "-in",
            "tls.csr",
            "-CA",
            "ca.pem",
            "-CAkey",
            "ca.key",
            "-CAcreateserial",
            "-out",
            "tls.pem",
            "-days",
            "2",
            "-extfile",
            "san.ext",
        ],
        dir,
    );
    openssl(
        &["x509", "-in", "ca.pem", "-outform", "der", "-out", "ca.der"],
        dir,
    );
    TlsFiles {
        ca_der: std::fs::read(dir.join("ca.der")).expect("read ca der"),
        cert: dir.join("tls.pem"),
        key: dir.join("tls.key"),
    }
}

/// A JWT as CNCF distribution's token auth verifies it: RS256, the signer's
/// certificate in `x5c`, `iss`/`aud` as configured, `access` for the granted actions.
pub fn sign_jwt(
    key: &SigningKey,
    issuer: &str,
    audience: &str,
    subject: &str,
    access: &serde_json::Value,
) -> String {
    let b64 = base64::engine::general_purpose::URL_SAFE_NO_PAD;
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("clock")
        .as_secs();
    let header = serde_json::json!({"typ": "JWT", "alg": "RS256", "x5c": [key.cert_b64]});
    let claims = serde_json::json!({
        "iss": issuer, "sub": subject, "aud": audience,
        "exp": now + 300, "nbf": now - 10, "iat": now,
        "jti": format!("{now}-{}", pseudo_random(4, now).iter().map(|b| format!("{b:02x}")).collect::<String>()),
        "access": access,
    });
    let signing_input = format!(
        "{}.{}",
        b64.encode(header.to_string()),
        b64.encode(claims.to_string())
    );
    let mut child = Command::new("openssl")
        .args(["dgst", "-sha256", "-sign"])
        .arg(&key.key)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run openssl dgst");
    child
        .stdin
        .take()
        .expect("stdin")
        .write_all(signing_input.as_bytes())
        .expect("write signing input");
    let out = child.wait_with_output().expect("openssl dgst");
    assert!(
        out.status.success(),
        "openssl dgst: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    format!("{signing_input}.{}", b64.encode(out.stdout))
}
