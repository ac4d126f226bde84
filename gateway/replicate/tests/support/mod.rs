//! Real servers for the replication tests: Debian's `docker-registry` (CNCF
//! distribution), Pier (via pier-e2e's `TestPier`), a TCP proxy that can refuse
//! connections, deny every request or cut one upload mid-chunk, and a test image.
#![allow(dead_code)]

use std::io::{Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU8, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use pier_e2e::{free_port, http, push_manifest, random_bytes, sha256_digest};
use tempfile::TempDir;

pub const REGISTRY_BIN: &str = "/usr/bin/docker-registry";
pub const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
pub const OCI_INDEX: &str = "application/vnd.oci.image.index.v1+json";

/// Debian's `docker-registry` with filesystem storage and delete enabled; killed on drop.
pub struct Registry {
    child: Child,
    pub port: u16,
    _dir: TempDir,
}

impl Registry {
    pub fn start() -> Registry {
        let dir = TempDir::new().expect("tempdir");
        let port = free_port();
        let root = dir.path().join("data");
        let config = format!(
            "version: 0.1\nlog:\n  level: error\n  accesslog:\n    disabled: true\n\
             storage:\n  filesystem:\n    rootdirectory: {}\n  delete:\n    enabled: true\n\
             http:\n  addr: 127.0.0.1:{port}\n  secret: replication-tests\n",
            root.display()
        );
        let config_path = dir.path().join("config.yml");
        std::fs::write(&config_path, config).expect("write config");
        let log_path = dir.path().join("registry.log");
        let log = std::fs::File::create(&log_path).expect("log file");
        let mut child = Command::new(REGISTRY_BIN)
            .arg("serve")
            .arg(&config_path)
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("dup"))
            .stderr(log)
            .spawn()
            .expect("start docker-registry (apt-get install docker-registry)");
        wait_for_port(port, &mut child, &log_path);
        Registry {
            child,
            port,
            _dir: dir,
        }
    }

    pub fn addr(&self) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], self.port))
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

fn wait_for_port(port: u16, child: &mut Child, log: &Path) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while TcpStream::connect(("127.0.0.1", port)).is_err() {
        if let Ok(Some(status)) = child.try_wait() {
            panic!(
                "docker-registry exited with {status}:\n{}",
                std::fs::read_to_string(log).unwrap_or_default()
            );
        }
        assert!(Instant::now() < deadline, "docker-registry did not listen");
        std::thread::sleep(Duration::from_millis(20));
    }
}

const PASS: u8 = 0;
const REFUSE: u8 = 1;
const DENY: u8 = 2;

/// A TCP proxy in front of a registry.
pub struct Proxy {
    pub port: u16,
    mode: Arc<AtomicU8>,
    /// Cut the connection once this many bytes after a `PATCH` have gone through (0: off).
    cut_after: Arc<AtomicU64>,
    pub cuts: Arc<AtomicU64>,
    /// Bytes sent after a `PATCH` over all connections (uploads spread over several).
    patched: Arc<AtomicU64>,
    /// Requests answered in deny mode.
    pub denied: Arc<AtomicU64>,
    stop: Arc<AtomicBool>,
}

impl Proxy {
    pub fn start(backend: SocketAddr) -> Proxy {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind proxy");
        let port = listener.local_addr().unwrap().port();
        let proxy = Proxy {
            port,
            mode: Arc::new(AtomicU8::new(PASS)),
            cut_after: Arc::new(AtomicU64::new(0)),
            cuts: Arc::new(AtomicU64::new(0)),
            patched: Arc::new(AtomicU64::new(0)),
            denied: Arc::new(AtomicU64::new(0)),
            stop: Arc::new(AtomicBool::new(false)),
        };
        let patched = proxy.patched.clone();
        let (mode, cut_after, cuts, denied, stop) = (
            proxy.mode.clone(),
            proxy.cut_after.clone(),
            proxy.cuts.clone(),
            proxy.denied.clone(),
            proxy.stop.clone(),
        );
        std::thread::spawn(move || {
            for conn in listener.incoming() {
                if stop.load(Ordering::Relaxed) {
                    return;
                }
                let Ok(client) = conn else { continue };
                match mode.load(Ordering::Relaxed) {
                    REFUSE => drop(client),
                    DENY => {
                        let denied = denied.clone();
                        std::thread::spawn(move || deny(client, &denied));
                    }
                    _ => {
                        let Ok(server) = TcpStream::connect(backend) else {
                            continue;
                        };
                        let _ = client.set_nodelay(true);
                        let _ = server.set_nodelay(true);
                        let (c2, s2) = (client.try_clone().unwrap(), server.try_clone().unwrap());
                        let (cut_after, cuts, patched) =
                            (cut_after.clone(), cuts.clone(), patched.clone());
                        std::thread::spawn(move || {
                            pump_up(client, server, &cut_after, &cuts, &patched);
                        });
                        std::thread::spawn(move || pump(s2, c2));
                    }
                }
            }
        });
        proxy
    }

    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    pub fn pass(&self) {
        self.mode.store(PASS, Ordering::Relaxed);
    }

    pub fn refuse(&self) {
        self.mode.store(REFUSE, Ordering::Relaxed);
    }

    pub fn deny(&self) {
        self.mode.store(DENY, Ordering::Relaxed);
    }

    /// Cut the next upload after `n` bytes of PATCH traffic (once).
    pub fn cut_once_after(&self, n: u64) {
        self.patched.store(0, Ordering::SeqCst);
        self.cut_after.store(n, Ordering::Relaxed);
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        let _ = TcpStream::connect(("127.0.0.1", self.port));
    }
}

fn pump(mut from: TcpStream, mut to: TcpStream) {
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        match from.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => {
                if to.write_all(&buf[..n]).is_err() {
                    break;
                }
            }
        }
    }
    let _ = to.shutdown(Shutdown::Write);
}

/// Client to server, cutting both ways once `cut_after` bytes followed a `PATCH`.
fn pump_up(
    mut from: TcpStream,
    mut to: TcpStream,
    cut_after: &AtomicU64,
    cuts: &AtomicU64,
    patched: &AtomicU64,
) {
    let mut buf = vec![0u8; 64 * 1024];
    let mut since_patch: Option<()> = None;
    loop {
        let n = match from.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => n,
        };
        let mut data = &buf[..n];
        if since_patch.is_none()
            && let Some(i) = data.windows(7).position(|w| w == b"PATCH /")
        {
            since_patch = Some(());
            data = &data[i..];
            if to.write_all(&buf[..i]).is_err() {
                break;
            }
        }
        let limit = cut_after.load(Ordering::Relaxed);
        if since_patch.is_some() && limit > 0 {
            let seen = patched.fetch_add(data.len() as u64, Ordering::SeqCst);
            if seen + data.len() as u64 >= limit {
                let keep = limit.saturating_sub(seen).min(data.len() as u64) as usize;
                let _ = to.write_all(&data[..keep]);
                let _ = to.flush();
                if cut_after
                    .compare_exchange(limit, 0, Ordering::SeqCst, Ordering::SeqCst)
                    .is_ok()
                {
                    cuts.fetch_add(1, Ordering::SeqCst);
                }
                std::thread::sleep(Duration::from_millis(50));
                let _ = to.shutdown(Shutdown::Both);
                let _ = from.shutdown(Shutdown::Both);
                return;
            }
        }
        if to.write_all(data).is_err() {
            break;
        }
    }
    let _ = to.shutdown(Shutdown::Write);
}

fn deny(mut client: TcpStream, denied: &AtomicU64) {
    let _ = client.set_read_timeout(Some(Duration::from_secs(2)));
    let mut buf = [0u8; 8192];
    let mut head = Vec::new();
    while !head.windows(4).any(|w| w == b"\r\n\r\n") {
        match client.read(&mut buf) {
            Ok(0) | Err(_) => return,
            Ok(n) => head.extend_from_slice(&buf[..n]),
        }
    }
    denied.fetch_add(1, Ordering::SeqCst);
    let body =
        br#"{"errors":[{"code":"DENIED","message":"requested access to the resource is denied"}]}"#;
    let response = format!(
        "HTTP/1.1 403 Forbidden\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    );
    let _ = client.write_all(response.as_bytes());
    let _ = client.write_all(body);
}

/// Push a blob: POST a session, PUT its bytes with `?digest=` (distribution 2.8.2 has
/// no single-request POST upload).
pub fn push_blob(addr: SocketAddr, repo: &str, data: &[u8]) -> String {
    let digest = sha256_digest(data);
    let location = pier_e2e::start_upload(addr, repo);
    let sep = if location.contains('?') { '&' } else { '?' };
    http::request(
        addr,
        "PUT",
        &format!("{location}{sep}digest={digest}"),
        &[("Content-Type", "application/octet-stream")],
        data,
    )
    .expect_status(201, &format!("push of {digest} to {repo}"));
    digest
}

/// What a seeded image consists of.
pub struct Image {
    /// The digest the tag points at (an index or a manifest).
    pub top: String,
    /// Every manifest: (digest, bytes).
    pub manifests: Vec<(String, Vec<u8>)>,
    /// Every blob: (digest, size).
    pub blobs: Vec<(String, usize)>,
}

fn descriptor(media_type: &str, digest: &str, size: usize) -> serde_json::Value {
    serde_json::json!({"mediaType": media_type, "digest": digest, "size": size})
}

/// Push one image manifest with `layers` (bytes) and a config; returns (digest, bytes).
pub fn push_image(
    addr: SocketAddr,
    repo: &str,
    layers: &[Vec<u8>],
    platform: &str,
    image: &mut Image,
) -> (String, Vec<u8>) {
    let config = serde_json::to_vec(&serde_json::json!({
        "architecture": platform, "os": "linux",
        "rootfs": {"type": "layers", "diff_ids": []},
    }))
    .unwrap();
    let config_digest = push_blob(addr, repo, &config);
    image.blobs.push((config_digest.clone(), config.len()));
    let mut layer_descs = Vec::new();
    for layer in layers {
        let d = push_blob(addr, repo, layer);
        if !image.blobs.iter().any(|(b, _)| *b == d) {
            image.blobs.push((d.clone(), layer.len()));
        }
        layer_descs.push(descriptor(
            "application/vnd.oci.image.layer.v1.tar+gzip",
            &d,
            layer.len(),
        ));
    }
    let manifest = serde_json::to_vec(&serde_json::json!({
        "schemaVersion": 2,
        "mediaType": OCI_MANIFEST,
        "config": descriptor("application/vnd.oci.image.config.v1+json", &config_digest, config.len()),
        "layers": layer_descs,
    }))
    .unwrap();
    let digest = sha256_digest(&manifest);
    push_manifest(addr, repo, &digest, OCI_MANIFEST, &manifest).expect_status(201, "push manifest");
    image.manifests.push((digest.clone(), manifest.clone()));
    (digest, manifest)
}

/// An OCI index of two platforms (a shared base layer plus one layer each) tagged `tag`.
pub fn seed_index(addr: SocketAddr, repo: &str, tag: &str, layer_size: usize) -> Image {
    let mut image = Image {
        top: String::new(),
        manifests: Vec::new(),
        blobs: Vec::new(),
    };
    let base = random_bytes(layer_size);
    let mut children = Vec::new();
    for platform in ["amd64", "arm64"] {
        let own = random_bytes(layer_size / 2 + 1);
        let (d, bytes) = push_image(addr, repo, &[base.clone(), own], platform, &mut image);
        let mut desc = descriptor(OCI_MANIFEST, &d, bytes.len());
        desc["platform"] = serde_json::json!({"architecture": platform, "os": "linux"});
        children.push(desc);
    }
    let index = serde_json::to_vec(&serde_json::json!({
        "schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": children,
    }))
    .unwrap();
    push_manifest(addr, repo, tag, OCI_INDEX, &index).expect_status(201, "push index");
    image.top = sha256_digest(&index);
    image.manifests.push((image.top.clone(), index));
    image
}

/// A single-manifest image of `layers` tagged `tag`.
pub fn seed_image(addr: SocketAddr, repo: &str, tag: &str, layers: &[Vec<u8>]) -> Image {
    let mut image = Image {
        top: String::new(),
        manifests: Vec::new(),
        blobs: Vec::new(),
    };
    let (d, bytes) = push_image(addr, repo, layers, "amd64", &mut image);
    push_manifest(addr, repo, tag, OCI_MANIFEST, &bytes).expect_status(201, "tag");
    image.top = d;
    image
}

/// Assert `repo` on `addr` holds every blob and manifest of `image` with the right bytes.
#[track_caller]
pub fn assert_has_image(addr: SocketAddr, repo: &str, image: &Image) {
    for (digest, size) in &image.blobs {
        let r = http::request(addr, "GET", &format!("/v2/{repo}/blobs/{digest}"), &[], b"");
        r.expect_status(200, &format!("blob {digest} in {repo}"));
        assert_eq!(r.body.len(), *size, "size of {digest}");
        assert_eq!(sha256_digest(&r.body), *digest, "bytes of {digest}");
    }
    for (digest, bytes) in &image.manifests {
        let r = pier_e2e::get_manifest(addr, repo, digest);
        r.expect_status(200, &format!("manifest {digest} in {repo}"));
        assert_eq!(r.body, *bytes, "manifest {digest}");
    }
}
