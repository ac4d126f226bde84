//! Test support for Pier's end-to-end tests: a [`TestPier`] that runs a real `pier`
//! process on free local ports with a fresh storage root, a raw HTTP/1.1 client
//! ([`http`]) and small helpers for pushing blobs and manifests.
//!
//! The `pier` binary is not built by this crate: build it first with
//! `cargo build -p pier-server --bin pier` (see [`pier_bin`]).
#![forbid(unsafe_code)]
#![deny(rust_2018_idioms)]

pub mod http;
pub mod plugins;
pub mod polyglot;

use std::ffi::OsString;
use std::fs::{self, File, OpenOptions};
use std::io::{Read, Seek, SeekFrom};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

pub use http::Response;

/// How long [`TestPier`] waits for a started server to become ready.
pub const READY_TIMEOUT: Duration = Duration::from_secs(20);

/// Accept header naming every manifest media type Pier serves.
pub const ACCEPT_MANIFESTS: &str = "application/vnd.oci.image.manifest.v1+json, \
application/vnd.oci.image.index.v1+json, \
application/vnd.docker.distribution.manifest.v2+json, \
application/vnd.docker.distribution.manifest.list.v2+json";

/// Media types used by the tests.
pub mod media {
    pub const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
    pub const OCI_INDEX: &str = "application/vnd.oci.image.index.v1+json";
    pub const OCI_CONFIG: &str = "application/vnd.oci.image.config.v1+json";
    pub const OCI_LAYER: &str = "application/vnd.oci.image.layer.v1.tar+gzip";
    pub const OCI_EMPTY: &str = "application/vnd.oci.empty.v1+json";
    pub const DOCKER_MANIFEST: &str = "application/vnd.docker.distribution.manifest.v2+json";
    pub const DOCKER_LIST: &str = "application/vnd.docker.distribution.manifest.list.v2+json";
    pub const DOCKER_CONFIG: &str = "application/vnd.docker.container.image.v1+json";
    pub const DOCKER_LAYER: &str = "application/vnd.docker.image.rootfs.diff.tar.gzip";
}

/// Path of the `pier` binary: `$PIER_BIN`, else `$CARGO_TARGET_DIR/debug/pier`, else
/// `debug/pier` next to this test executable's target directory, else
/// `<workspace>/target/debug/pier`.
pub fn pier_bin() -> PathBuf {
    if let Some(p) = std::env::var_os("PIER_BIN") {
        return PathBuf::from(p);
    }
    if let Some(t) = std::env::var_os("CARGO_TARGET_DIR") {
        let p = PathBuf::from(t).join("debug").join("pier");
        if p.exists() {
            return p;
        }
    }
    // <target>/debug/deps/<test-exe>
    if let Ok(exe) = std::env::current_exe()
        && let Some(debug) = exe.parent().and_then(Path::parent)
    {
        let p = debug.join("pier");
        if p.exists() {
            return p;
        }
    }
    let workspace = manifest_dir()
        .join("..")
        .join("target")
        .join("debug")
        .join("pier");
    match std::env::var_os("CARGO_TARGET_DIR") {
        // nothing exists: name the place the caller asked for in the error
        Some(t) if !workspace.exists() => PathBuf::from(t).join("debug").join("pier"),
        _ => workspace,
    }
}

/// This crate's directory (`tests/`). Read at run time first: `cargo test` sets it, and a
/// test binary built in a shared target directory from another checkout of the same tree
/// would otherwise point at that checkout.
pub fn manifest_dir() -> PathBuf {
    std::env::var_os("CARGO_MANIFEST_DIR")
        .map(PathBuf::from)
        .filter(|p| p.join("Cargo.toml").exists())
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")))
}

/// A port that was free a moment ago on 127.0.0.1.
/// Standard base64 with padding (for `Authorization: Basic`).
pub fn base64(data: &[u8]) -> String {
    const T: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::new();
    for c in data.chunks(3) {
        let n = (u32::from(c[0]) << 16)
            | (u32::from(*c.get(1).unwrap_or(&0)) << 8)
            | u32::from(*c.get(2).unwrap_or(&0));
        for i in 0..4 {
            if i <= c.len() {
                out.push(T[(n >> (18 - 6 * i) & 63) as usize] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}

/// `Basic base64(user:password)`.
pub fn basic_auth(user: &str, password: &str) -> String {
    format!("Basic {}", base64(format!("{user}:{password}").as_bytes()))
}

/// The edge fleet's rendezvous order of `nodes` (peer URLs) for `key` (`<upstream name>/<digest>`,
/// `<upstream name>/<repository>:<tag>`), owner first: Pier's own rule (the highest
/// SHA-256 of `node \0 key`), so tests know which node owns what.
pub fn fleet_order(nodes: &[String], key: &str) -> Vec<usize> {
    use sha2::Digest as _;
    let weight = |i: usize| {
        let mut h = sha2::Sha256::new();
        h.update(nodes[i].as_bytes());
        h.update([0]);
        h.update(key.as_bytes());
        u64::from_be_bytes(h.finalize()[..8].try_into().expect("8 bytes"))
    };
    let mut v: Vec<usize> = (0..nodes.len()).collect();
    v.sort_by_key(|i| std::cmp::Reverse(weight(*i)));
    v
}

pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("bind 127.0.0.1:0")
}

/// `sha256:<hex>` of `data`.
pub fn sha256_digest(data: &[u8]) -> String {
    use sha2::Digest as _;
    format!("sha256:{}", hex::encode(sha2::Sha256::digest(data)))
}

/// `sha512:<hex>` of `data`.
pub fn sha512_digest(data: &[u8]) -> String {
    use sha2::Digest as _;
    format!("sha512:{}", hex::encode(sha2::Sha512::digest(data)))
}

/// `n` pseudo-random bytes, different on every call.
pub fn random_bytes(n: usize) -> Vec<u8> {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(0);
    let mut x = nanos
        ^ (std::process::id() as u64).rotate_left(32)
        ^ COUNTER
            .fetch_add(1, Ordering::Relaxed)
            .wrapping_mul(0x9E37_79B9_7F4A_7C15);
    if x == 0 {
        x = 0x2545_F491_4F6C_DD1D;
    }
    let mut out = Vec::with_capacity(n + 8);
    while out.len() < n {
        // xorshift64*
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        out.extend_from_slice(&x.wrapping_mul(0x2545_F491_4F6C_DD1D).to_le_bytes());
    }
    out.truncate(n);
    out
}

/// Pushes a blob with a monolithic `POST ?digest=`; asserts 201 and returns the digest.
#[track_caller]
pub fn push_blob(addr: SocketAddr, repo: &str, data: &[u8]) -> String {
    let digest = sha256_digest(data);
    let r = http::request(
        addr,
        "POST",
        &format!("/v2/{repo}/blobs/uploads/?digest={digest}"),
        &[("Content-Type", "application/octet-stream")],
        data,
    );
    r.expect_status(201, &format!("monolithic push of {digest} to {repo}"));
    digest
}

/// Pushes a blob with an upload session (POST, then PUT with the bytes), as registries
/// without monolithic POST (docker-registry) take it; asserts 201 and returns the digest.
#[track_caller]
pub fn push_blob_in_session(addr: SocketAddr, repo: &str, data: &[u8]) -> String {
    let digest = sha256_digest(data);
    let loc = start_upload(addr, repo);
    let r = http::request(
        addr,
        "PUT",
        &with_query(&loc, &format!("digest={digest}")),
        &[("Content-Type", "application/octet-stream")],
        data,
    );
    r.expect_status(201, &format!("upload of {digest} to {repo}"));
    digest
}

/// `PUT /v2/<repo>/manifests/<reference>` with `Content-Type: media_type`.
pub fn push_manifest(
    addr: SocketAddr,
    repo: &str,
    reference: &str,
    media_type: &str,
    body: &[u8],
) -> Response {
    http::request(
        addr,
        "PUT",
        &format!("/v2/{repo}/manifests/{reference}"),
        &[("Content-Type", media_type)],
        body,
    )
}

/// `GET /v2/<repo>/manifests/<reference>` accepting every manifest type.
pub fn get_manifest(addr: SocketAddr, repo: &str, reference: &str) -> Response {
    http::request(
        addr,
        "GET",
        &format!("/v2/{repo}/manifests/{reference}"),
        &[("Accept", ACCEPT_MANIFESTS)],
        b"",
    )
}

/// `POST /v2/<repo>/blobs/uploads/`; asserts 202 and returns the session's Location
/// as a path (scheme and authority removed).
#[track_caller]
pub fn start_upload(addr: SocketAddr, repo: &str) -> String {
    let r = http::request(
        addr,
        "POST",
        &format!("/v2/{repo}/blobs/uploads/"),
        &[],
        b"",
    );
    r.expect_status(202, &format!("start upload in {repo}"));
    location_path(&r)
}

/// The response's `Location` header as a request target: an absolute URL loses its
/// scheme and authority. Panics when there is no Location.
#[track_caller]
pub fn location_path(r: &Response) -> String {
    let loc = r.require_header("location", "Location header");
    strip_origin(loc)
}

/// `http://host:port/x?y` -> `/x?y`; a path is returned unchanged.
pub fn strip_origin(url: &str) -> String {
    for scheme in ["http://", "https://"] {
        if let Some(rest) = url.strip_prefix(scheme) {
            return match rest.find('/') {
                Some(i) => rest[i..].to_owned(),
                None => "/".to_owned(),
            };
        }
    }
    url.to_owned()
}

/// Appends a query parameter to a request target that may already have a query.
pub fn with_query(path: &str, param: &str) -> String {
    if path.contains('?') {
        format!("{path}&{param}")
    } else {
        format!("{path}?{param}")
    }
}

/// A descriptor JSON object.
pub fn descriptor(media_type: &str, data: &[u8]) -> serde_json::Value {
    serde_json::json!({
        "mediaType": media_type,
        "digest": sha256_digest(data),
        "size": data.len(),
    })
}

/// An image pushed by [`push_image`].
#[derive(Debug, Clone)]
pub struct PushedImage {
    pub manifest: Vec<u8>,
    pub digest: String,
    pub config_digest: String,
    pub layer_digests: Vec<String>,
}

/// Pushes a config (random unless given), the given layers, and an OCI image manifest
/// tagged `reference` (a tag or a digest; `None` pushes by digest). Asserts success.
#[track_caller]
pub fn push_image(
    addr: SocketAddr,
    repo: &str,
    reference: Option<&str>,
    layers: &[&[u8]],
) -> PushedImage {
    let config = format!(
        "{{\"architecture\":\"amd64\",\"os\":\"linux\",\"rootfs\":{{\"type\":\"layers\",\"diff_ids\":[]}},\"nonce\":\"{}\"}}",
        hex::encode(random_bytes(8))
    )
    .into_bytes();
    let config_digest = push_blob(addr, repo, &config);
    let mut layer_digests = Vec::new();
    let mut layer_descs = Vec::new();
    for l in layers {
        layer_digests.push(push_blob(addr, repo, l));
        layer_descs.push(descriptor(media::OCI_LAYER, l));
    }
    let manifest = serde_json::to_vec_pretty(&serde_json::json!({
        "schemaVersion": 2,
        "mediaType": media::OCI_MANIFEST,
        "config": descriptor(media::OCI_CONFIG, &config),
        "layers": layer_descs,
    }))
    .unwrap();
    let digest = sha256_digest(&manifest);
    let reference = reference
        .map(str::to_owned)
        .unwrap_or_else(|| digest.clone());
    let r = push_manifest(addr, repo, &reference, media::OCI_MANIFEST, &manifest);
    r.expect_status(201, &format!("push manifest {repo}:{reference}"));
    PushedImage {
        manifest,
        digest,
        config_digest,
        layer_digests,
    }
}

/// Every regular file under `dir` (recursively), sorted. A missing dir gives none.
pub fn files_under(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        let Ok(rd) = fs::read_dir(&d) else { continue };
        for e in rd.flatten() {
            let p = e.path();
            match e.file_type() {
                Ok(t) if t.is_dir() => stack.push(p),
                Ok(_) => out.push(p),
                Err(_) => {}
            }
        }
    }
    out.sort();
    out
}

/// Every path (files and directories) under `dir`, sorted.
pub fn paths_under(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        let Ok(rd) = fs::read_dir(&d) else { continue };
        for e in rd.flatten() {
            let p = e.path();
            if e.file_type().is_ok_and(|t| t.is_dir()) {
                stack.push(p.clone());
            }
            out.push(p);
        }
    }
    out.sort();
    out
}

/// Polls `f` every `every` until it returns true or `timeout` passes; returns whether
/// it became true.
pub fn wait_until(timeout: Duration, every: Duration, mut f: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + timeout;
    loop {
        if f() {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        std::thread::sleep(every);
    }
}

/// The last `n` lines of a file (for failure messages).
pub fn tail(path: &Path, n: usize) -> String {
    let mut s = String::new();
    if let Ok(mut f) = File::open(path) {
        let len = f.metadata().map(|m| m.len()).unwrap_or(0);
        let _ = f.seek(SeekFrom::Start(len.saturating_sub(64 * 1024)));
        let mut buf = Vec::new();
        let _ = f.read_to_end(&mut buf);
        s = String::from_utf8_lossy(&buf).into_owned();
    }
    let lines: Vec<&str> = s.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

const PIER_ENV: [&str; 9] = [
    "PIER_LISTEN",
    "PIER_ADMIN_LISTEN",
    "PIER_ROOT",
    "PIER_CONFIG",
    "PIER_TLS_CERT",
    "PIER_TLS_KEY",
    "PIER_H2C",
    "PIER_UPLOAD_IDLE_TIMEOUT",
    "PIER_LOG_FORMAT",
];

/// A `pier` command with Pier's configuration variables removed from its environment.
pub fn pier_command() -> Command {
    let bin = pier_bin();
    assert!(
        bin.exists(),
        "pier binary not found at {} (build it with `cargo build -p pier-server --bin pier`, or set PIER_BIN)",
        bin.display()
    );
    let mut c = Command::new(bin);
    for k in PIER_ENV {
        c.env_remove(k);
    }
    c
}

/// `pier ARGS --admin http://ADMIN [--creds USER:PASS]`, as an operator runs the admin
/// CLI: (exit success, stdout, stderr).
pub fn admin_cli(
    admin: SocketAddr,
    args: &[&str],
    creds: Option<(&str, &str)>,
) -> (bool, String, String) {
    let mut c = pier_command();
    c.args(args).arg("--admin").arg(format!("http://{admin}"));
    if let Some((u, p)) = creds {
        c.arg("--creds").arg(format!("{u}:{p}"));
    }
    let o = c.output().expect("run pier");
    (
        o.status.success(),
        String::from_utf8_lossy(&o.stdout).into_owned(),
        String::from_utf8_lossy(&o.stderr).into_owned(),
    )
}

/// Runs `pier gc --root <root> <args>` and returns its output.
pub fn run_gc(root: &Path, args: &[&str]) -> Output {
    pier_command()
        .arg("gc")
        .arg("--root")
        .arg(root)
        .args(args)
        .stdin(Stdio::null())
        .output()
        .expect("run pier gc")
}

/// A running `pier serve` on free local ports with its own storage root.
pub struct TestPier {
    pub addr: SocketAddr,
    pub admin_addr: SocketAddr,
    pub root: PathBuf,
    child: Option<Child>,
    dir: Option<tempfile::TempDir>,
    log_path: PathBuf,
    args: Vec<OsString>,
    envs: Vec<(OsString, OsString)>,
    tls: bool,
}

/// Options for a [`TestPier`].
#[derive(Default)]
pub struct TestPierBuilder {
    root: Option<PathBuf>,
    args: Vec<OsString>,
    envs: Vec<(OsString, OsString)>,
}

impl TestPierBuilder {
    /// Use this storage root instead of a fresh one (it is not removed on drop).
    pub fn root(mut self, root: impl Into<PathBuf>) -> Self {
        self.root = Some(root.into());
        self
    }

    /// An extra argument to `pier serve`.
    pub fn arg(mut self, a: impl Into<OsString>) -> Self {
        self.args.push(a.into());
        self
    }

    /// Extra arguments to `pier serve`.
    pub fn args<I, S>(mut self, args: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<OsString>,
    {
        self.args.extend(args.into_iter().map(Into::into));
        self
    }

    /// An environment variable for the process.
    pub fn env(mut self, k: impl Into<OsString>, v: impl Into<OsString>) -> Self {
        self.envs.push((k.into(), v.into()));
        self
    }

    /// A temporary directory (kept by the server once it runs), and a server on two
    /// distinct free ports, not started.
    fn unstarted(&self, dir: &Path) -> TestPier {
        loop {
            let (addr, admin) = (free_port(), free_port());
            if addr == admin {
                continue;
            }
            return TestPier {
                addr: SocketAddr::from(([127, 0, 0, 1], addr)),
                admin_addr: SocketAddr::from(([127, 0, 0, 1], admin)),
                root: self.root.clone().unwrap_or_else(|| dir.join("root")),
                child: None,
                dir: None,
                log_path: dir.join("pier.log"),
                args: self.args.clone(),
                envs: self.envs.clone(),
                tls: self.args.iter().any(|a| a == "--tls-cert"),
            };
        }
    }

    fn temp_dir() -> tempfile::TempDir {
        tempfile::Builder::new()
            .prefix("pier-e2e-")
            .tempdir()
            .expect("create temp dir")
    }

    /// Starts the server and returns at once, before it is ready (the caller polls; a
    /// port race is not retried).
    pub fn start_unready(self) -> TestPier {
        let dir = Self::temp_dir();
        let mut p = self.unstarted(dir.path());
        p.spawn();
        p.dir = Some(dir);
        p
    }

    /// Starts the server and waits until it is ready.
    #[track_caller]
    pub fn start(self) -> TestPier {
        let dir = Self::temp_dir();
        let mut attempts = 0;
        loop {
            attempts += 1;
            let mut p = self.unstarted(dir.path());
            p.spawn();
            match p.wait_ready() {
                Ok(()) => {
                    p.dir = Some(dir);
                    return p;
                }
                Err(e) => {
                    let log = tail(&p.log_path, 40);
                    let in_use = log.to_ascii_lowercase().contains("in use");
                    p.kill9();
                    if in_use && attempts < 4 {
                        continue; // lost a port race with another test
                    }
                    panic!(
                        "pier did not become ready: {e}\ncommand: {} serve {:?}\n--- log tail ({}):\n{log}",
                        pier_bin().display(),
                        p.serve_args(),
                        p.log_path.display()
                    );
                }
            }
        }
    }
}

impl TestPier {
    /// A server with a fresh temporary root on free ports.
    #[track_caller]
    pub fn start() -> TestPier {
        TestPier::builder().start()
    }

    pub fn builder() -> TestPierBuilder {
        TestPierBuilder::default()
    }

    /// `http://127.0.0.1:PORT` (`https://` when started with `--tls-cert`).
    pub fn url(&self) -> String {
        let scheme = if self.tls { "https" } else { "http" };
        format!("{scheme}://{}", self.addr)
    }

    /// `127.0.0.1:PORT`.
    pub fn host(&self) -> String {
        self.addr.to_string()
    }

    /// `http://127.0.0.1:ADMIN_PORT`.
    pub fn admin_url(&self) -> String {
        format!("http://{}", self.admin_addr)
    }

    /// Where the process's stdout and stderr go (appended across restarts).
    pub fn log_path(&self) -> &Path {
        &self.log_path
    }

    /// The temp dir holding the log (and the root, unless one was given).
    pub fn temp_dir(&self) -> &Path {
        self.log_path.parent().expect("log has a parent")
    }

    /// The process id of the running server.
    pub fn pid(&self) -> u32 {
        self.child.as_ref().expect("pier is not running").id()
    }

    /// Whether the process is still running.
    pub fn is_running(&mut self) -> bool {
        match self.child.as_mut() {
            Some(c) => matches!(c.try_wait(), Ok(None)),
            None => false,
        }
    }

    fn serve_args(&self) -> Vec<OsString> {
        let mut a: Vec<OsString> = vec![
            "serve".into(),
            "--listen".into(),
            self.addr.to_string().into(),
            "--admin-listen".into(),
            self.admin_addr.to_string().into(),
            "--root".into(),
            self.root.clone().into(),
        ];
        a.extend(self.args.iter().cloned());
        a
    }

    fn spawn(&mut self) {
        let log = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log_path)
            .expect("open pier log");
        let log2 = log.try_clone().expect("clone log handle");
        let mut cmd = pier_command();
        cmd.args(self.serve_args())
            .stdin(Stdio::null())
            .stdout(Stdio::from(log))
            .stderr(Stdio::from(log2));
        for (k, v) in &self.envs {
            cmd.env(k, v);
        }
        let child = cmd
            .spawn()
            .unwrap_or_else(|e| panic!("spawn {}: {e}", pier_bin().display()));
        self.child = Some(child);
    }

    fn wait_ready(&mut self) -> Result<(), String> {
        let deadline = Instant::now() + READY_TIMEOUT;
        loop {
            if let Some(c) = self.child.as_mut()
                && let Ok(Some(st)) = c.try_wait()
            {
                return Err(format!("pier exited early with {st}"));
            }
            let last = match self.probe() {
                Ok(()) => return Ok(()),
                Err(e) => e,
            };
            if Instant::now() >= deadline {
                return Err(format!(
                    "timed out after {READY_TIMEOUT:?}; last probe: {last}"
                ));
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    fn probe(&self) -> Result<(), String> {
        if self.tls {
            TcpStream::connect_timeout(&self.addr, Duration::from_secs(1))
                .map_err(|e| format!("connect {}: {e}", self.addr))?;
        } else {
            let r = http::try_request(self.addr, "GET", "/v2/", &[], b"")
                .map_err(|e| format!("GET /v2/: {e}"))?;
            // With token auth on, an anonymous `GET /v2/` is answered with a Bearer
            // challenge: that answer also means the registry is up.
            let challenged = r.status == 401
                && r.header("www-authenticate")
                    .is_some_and(|c| c.starts_with("Bearer "));
            if r.status != 200 && !challenged {
                return Err(format!("GET /v2/ answered {}", r.status));
            }
        }
        let r = http::try_request(self.admin_addr, "GET", "/readyz", &[], b"")
            .map_err(|e| format!("GET admin /readyz: {e}"))?;
        if r.status != 200 {
            return Err(format!("GET admin /readyz answered {}", r.status));
        }
        Ok(())
    }

    /// SIGKILL and reap the process (no-op when not running).
    pub fn kill9(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Drops an environment variable from later starts ([`TestPier::start_again`]), e.g. the
    /// `FAILPOINTS` a crash test started the first process with.
    pub fn remove_env(&mut self, k: &str) {
        self.envs.retain(|(name, _)| name != k);
    }

    /// Waits (up to `timeout`) for the process to die on its own, as at a fail point that
    /// aborts it; panics with the log tail when it is still running.
    #[track_caller]
    pub fn expect_crash(&mut self, timeout: Duration) -> ExitStatus {
        match self.wait_exit(timeout) {
            Some(st) => st,
            None => {
                let log = tail(&self.log_path, 30);
                self.kill9();
                panic!(
                    "pier did not stop at its fail point within {timeout:?}\n--- log tail:\n{log}"
                );
            }
        }
    }

    /// Sends SIGTERM without waiting.
    pub fn term(&self) {
        let pid = self.pid();
        let st = Command::new("kill")
            .args(["-TERM", &pid.to_string()])
            .status()
            .expect("run kill");
        assert!(st.success(), "kill -TERM {pid} failed");
    }

    /// Waits for the process to exit; `None` on timeout (the process keeps running).
    pub fn wait_exit(&mut self, timeout: Duration) -> Option<ExitStatus> {
        let deadline = Instant::now() + timeout;
        loop {
            let c = self.child.as_mut()?;
            if let Ok(Some(st)) = c.try_wait() {
                self.child = None;
                return Some(st);
            }
            if Instant::now() >= deadline {
                return None;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// SIGTERM and wait (up to 30 s) for exit; returns the exit status. Panics (after
    /// SIGKILL) when the process does not exit.
    #[track_caller]
    pub fn stop_status(&mut self) -> ExitStatus {
        self.term();
        match self.wait_exit(Duration::from_secs(30)) {
            Some(st) => st,
            None => {
                self.kill9();
                panic!(
                    "pier did not exit within 30 s of SIGTERM\n--- log tail:\n{}",
                    tail(&self.log_path, 40)
                );
            }
        }
    }

    /// SIGTERM and wait for exit (no-op when not running).
    #[track_caller]
    pub fn stop(&mut self) {
        if self.is_running() {
            self.stop_status();
        } else {
            self.child = None;
        }
    }

    /// Stops the server if it runs (SIGTERM), then starts it again on the same root
    /// and ports and waits until it is ready.
    #[track_caller]
    pub fn restart(&mut self) {
        self.stop();
        self.start_again();
    }

    /// Starts a stopped or killed server again on the same root and ports.
    #[track_caller]
    pub fn start_again(&mut self) {
        assert!(self.child.is_none(), "pier is still running");
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            self.spawn();
            match self.wait_ready() {
                Ok(()) => return,
                Err(e) => {
                    self.kill9();
                    // The old socket may linger for a moment after a kill.
                    if Instant::now() < deadline
                        && tail(&self.log_path, 10)
                            .to_ascii_lowercase()
                            .contains("in use")
                    {
                        std::thread::sleep(Duration::from_millis(200));
                        continue;
                    }
                    panic!(
                        "pier did not become ready after restart: {e}\n--- log tail:\n{}",
                        tail(&self.log_path, 40)
                    );
                }
            }
        }
    }

    /// The last `n` lines of the server log.
    pub fn log_tail(&self, n: usize) -> String {
        tail(&self.log_path, n)
    }

    /// `GET path` on the registry listener.
    pub fn get(&self, path: &str) -> Response {
        http::get(self.addr, path)
    }

    /// `HEAD path` on the registry listener.
    pub fn head(&self, path: &str) -> Response {
        http::head(self.addr, path)
    }

    /// Any request on the registry listener.
    pub fn request(
        &self,
        method: &str,
        path: &str,
        headers: &[(&str, &str)],
        body: &[u8],
    ) -> Response {
        http::request(self.addr, method, path, headers, body)
    }

    /// `$root/docker/registry/v2`.
    pub fn v2_dir(&self) -> PathBuf {
        self.root.join("docker").join("registry").join("v2")
    }

    /// `$root/docker/registry/v2/blobs`.
    pub fn blobs_dir(&self) -> PathBuf {
        self.v2_dir().join("blobs")
    }
}

impl Drop for TestPier {
    fn drop(&mut self) {
        self.kill9();
        if std::thread::panicking() {
            eprintln!(
                "--- pier log tail ({}):\n{}\n---",
                self.log_path.display(),
                tail(&self.log_path, 60)
            );
        }
        if std::env::var_os("PIER_E2E_KEEP").is_some()
            && let Some(d) = self.dir.take()
        {
            eprintln!("keeping {}", d.keep().display());
        }
    }
}

/// Runs `openssl ARGS` in `dir`; panics with its stderr when it fails.
pub fn openssl(dir: &Path, args: &[&str]) {
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

/// A self-signed certificate for 127.0.0.1 and localhost made by openssl in `dir`;
/// returns (certificate, key) PEM paths.
pub fn self_signed_cert(dir: &Path) -> (PathBuf, PathBuf) {
    openssl(
        dir,
        &[
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-days",
            "2",
            "-subj",
            "/CN=localhost",
            "-addext",
            "subjectAltName=IP:127.0.0.1,DNS:localhost",
            "-keyout",
            "key.pem",
            "-out",
            "cert.pem",
        ],
    );
    (dir.join("cert.pem"), dir.join("key.pem"))
}

/// A private CA and a server certificate for 127.0.0.1 and localhost signed by it, made
/// by openssl in `dir`: a client that trusts [`TestCa::ca`] verifies the server, one
/// that trusts only the system's roots refuses it.
pub struct TestCa {
    /// The CA's certificate (PEM).
    pub ca: PathBuf,
    /// The server's certificate and key (PEM).
    pub cert: PathBuf,
    pub key: PathBuf,
}

pub fn test_ca(dir: &Path) -> TestCa {
    test_ca_for(dir, "IP:127.0.0.1,DNS:localhost")
}

/// [`test_ca`] with a server certificate for `san` (`IP:203.0.113.9,DNS:x.test`).
pub fn test_ca_for(dir: &Path, san: &str) -> TestCa {
    let run = |args: &[&str]| openssl(dir, args);
    run(&[
        "req",
        "-x509",
        "-newkey",
        "rsa:2048",
        "-nodes",
        "-days",
        "2",
        "-subj",
        "/CN=pier test CA",
        "-keyout",
        "ca.key",
        "-out",
        "ca.pem",
    ]);
    run(&[
        "req",
        "-newkey",
        "rsa:2048",
        "-nodes",
        "-subj",
        "/CN=127.0.0.1",
        "-keyout",
        "server.key",
        "-out",
        "server.csr",
    ]);
    fs::write(dir.join("server.ext"), format!("subjectAltName={san}\n")).unwrap();
    run(&[
        "x509",
        "-req",
        "-in",
        "server.csr",
        "-CA",
        "ca.pem",
        "-CAkey",
        "ca.key",
        "-CAcreateserial",
        "-days",
        "2",
        "-extfile",
        "server.ext",
        "-out",
        "server.pem",
    ]);
    TestCa {
        ca: dir.join("ca.pem"),
        cert: dir.join("server.pem"),
        key: dir.join("server.key"),
    }
}
