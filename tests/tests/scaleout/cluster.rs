//! The scale-out harness: s3s-fs, redis-server, three `pier serve` nodes sharing that S3
//! bucket and Redis, and Debian's nginx round-robin in front, all on free loopback ports
//! under one temp dir. The node and nginx configs are generated from the shipped example
//! (`deploy/examples/ha/node.toml.in`, `nginx.conf.in`), so the tests exercise the
//! documented deployment. Everything is stopped when the [`Cluster`] drops.

use std::fs;
use std::net::SocketAddr;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use pier_e2e::http;
use tempfile::TempDir;

use crate::clients_support::*;

/// Credentials of the example config (`node.toml.in`).
const ACCESS_KEY: &str = "pier-example";
const SECRET_KEY: &str = "pier-example-secret";
/// Bucket and key prefix of the example config.
pub const BUCKET: &str = "pier";
pub const PREFIX: &str = "registry";

/// How long a node may take to answer `/readyz`.
const NODE_READY: Duration = Duration::from_secs(30);

fn ha_example(file: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../deploy/examples/ha")
        .join(file)
}

/// The s3s-fs binary: `$S3S_FS_BIN`, else `~/.cache/pier/s3s-fs/bin/s3s-fs`.
#[track_caller]
pub fn s3s_fs_bin() -> PathBuf {
    let p = match std::env::var_os("S3S_FS_BIN") {
        Some(p) => PathBuf::from(p),
        None => PathBuf::from(std::env::var_os("HOME").unwrap_or_else(|| "/root".into()))
            .join(".cache/pier/s3s-fs/bin/s3s-fs"),
    };
    assert!(
        p.exists(),
        "s3s-fs not found at {} (set S3S_FS_BIN, or run scripts/install-test-deps.sh)",
        p.display()
    );
    p
}

fn addr(port: u16) -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], port))
}

/// Two distinct free ports.
fn two_ports() -> (u16, u16) {
    loop {
        let (a, b) = (pier_e2e::free_port(), pier_e2e::free_port());
        if a != b {
            return (a, b);
        }
    }
}

/// Starts a daemon on a free port chosen by `spawn`, retrying (up to 4 times) when the
/// port was taken by someone else between [`pier_e2e::free_port`] and the bind.
#[track_caller]
fn start_on_free_port(
    name: &str,
    mut spawn: impl FnMut(u16, u32) -> Daemon,
    mut ready: impl FnMut(u16) -> bool,
) -> (Daemon, u16) {
    for attempt in 1..=4 {
        let port = pier_e2e::free_port();
        let mut d = spawn(port, attempt);
        let up = poll(Duration::from_secs(15), || {
            ready(port) || d.log().to_ascii_lowercase().contains("in use")
        });
        if up && ready(port) {
            d.assert_running();
            return (d, port);
        }
        let log = d.log();
        d.stop();
        if attempt < 4 && log.to_ascii_lowercase().contains("in use") {
            continue;
        }
        panic!("{name} did not become ready on port {port}\n{log}");
    }
    unreachable!()
}

/// One `pier serve` node.
pub struct Node {
    /// 1-based, as in the example (`node1.toml`).
    pub n: usize,
    pub addr: SocketAddr,
    pub admin: SocketAddr,
    pub config: PathBuf,
    pub root: PathBuf,
    pub log: PathBuf,
    daemon: Option<Daemon>,
}

impl Node {
    /// `127.0.0.1:PORT` (what clients put before the repository name).
    pub fn host(&self) -> String {
        self.addr.to_string()
    }

    /// Bytes received so far on the node's open registry connections (the sum of
    /// `bytes_received` that `ss -ti` reports for established sockets on its port).
    pub fn bytes_received(&self) -> u64 {
        let out = Command::new(require_bin("ss"))
            .args(["-tinH", "state", "established"])
            .arg(format!("( sport = :{} )", self.addr.port()))
            .output()
            .expect("run ss");
        String::from_utf8_lossy(&out.stdout)
            .split_whitespace()
            .filter_map(|w| w.strip_prefix("bytes_received:"))
            .filter_map(|v| v.parse::<u64>().ok())
            .sum()
    }

    pub fn log_text(&self) -> String {
        String::from_utf8_lossy(&fs::read(&self.log).unwrap_or_default()).into_owned()
    }

    pub fn log_tail(&self, n: usize) -> String {
        format!(
            "--- node{} log ({}):\n{}",
            self.n,
            self.log.display(),
            tail(&self.log_text(), n)
        )
    }

    fn spawn(&mut self) {
        let mut cmd = pier_e2e::pier_command();
        cmd.arg("serve")
            .arg("--config")
            .arg(&self.config)
            .arg("--root")
            .arg(&self.root);
        self.daemon = Some(Daemon::spawn(
            &format!("pier node{}", self.n),
            &mut cmd,
            &self.log,
        ));
    }

    /// `GET /readyz` on the admin listener and `GET /v2/` both answer 200.
    fn probe(&self) -> Result<(), String> {
        let r = http::try_request(self.admin, "GET", "/readyz", &[], b"")
            .map_err(|e| format!("admin /readyz: {e}"))?;
        if r.status != 200 {
            return Err(format!("admin /readyz answered {}", r.status));
        }
        let r = http::try_request(self.addr, "GET", "/v2/", &[], b"")
            .map_err(|e| format!("GET /v2/: {e}"))?;
        if r.status != 200 {
            return Err(format!("GET /v2/ answered {}", r.status));
        }
        Ok(())
    }

    /// Waits for readiness; `Err` (with the log) when the process exits or time runs out.
    fn wait_ready(&mut self) -> Result<(), String> {
        let start = Instant::now();
        let mut last = String::new();
        while start.elapsed() < NODE_READY {
            match self.probe() {
                Ok(()) => return Ok(()),
                Err(e) => last = e,
            }
            if let Some(d) = self.daemon.as_mut()
                && !d.is_running()
            {
                return Err(format!(
                    "node{} exited early\n{}",
                    self.n,
                    self.log_tail(40)
                ));
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        Err(format!(
            "node{} not ready after {NODE_READY:?}: {last}\n{}",
            self.n,
            self.log_tail(40)
        ))
    }

    fn kill9(&mut self) {
        if let Some(mut d) = self.daemon.take() {
            send_signal(d.pid(), "KILL");
            d.stop(); // reaps it
        }
    }

    fn stop(&mut self) {
        if let Some(mut d) = self.daemon.take() {
            d.stop();
        }
    }
}

/// Options for a [`Cluster`].
#[derive(Default)]
pub struct ClusterBuilder {
    extra_toml: String,
}

impl ClusterBuilder {
    /// TOML appended to every node's config (after the example's `[redis]` table, so
    /// only tables such as `[[upstreams]]`).
    pub fn extra_toml(mut self, toml: &str) -> Self {
        self.extra_toml.push_str(toml);
        self
    }

    #[track_caller]
    pub fn start(self) -> Cluster {
        Cluster::start_with(&self.extra_toml)
    }
}

/// The whole deployment of `deploy/examples/ha`, on free ports under a temp dir.
pub struct Cluster {
    /// The load balancer (nginx, round robin over the three nodes).
    pub lb: SocketAddr,
    pub nodes: Vec<Node>,
    pub s3_port: u16,
    pub redis_port: u16,
    /// s3s-fs's data dir (`<s3_dir>/<bucket>/<key>`).
    pub s3_dir: PathBuf,
    nginx: Option<Daemon>,
    redis: Option<Daemon>,
    s3: Option<Daemon>,
    /// Last: removed after every process stopped.
    dir: TempDir,
}

impl Cluster {
    #[track_caller]
    pub fn start() -> Cluster {
        Cluster::builder().start()
    }

    pub fn builder() -> ClusterBuilder {
        ClusterBuilder::default()
    }

    #[track_caller]
    fn start_with(extra_toml: &str) -> Cluster {
        let dir = temp_dir("scaleout");
        let d = dir.path().to_owned();
        // nginx's workers run as `nobody`: let them reach the temp paths under the dir.
        fs::set_permissions(&d, fs::Permissions::from_mode(0o755)).unwrap();
        let s3_dir = d.join("s3");
        fs::create_dir_all(s3_dir.join(BUCKET)).unwrap();
        fs::create_dir_all(d.join("redis")).unwrap();

        let s3s = s3s_fs_bin();
        let (s3, s3_port) = start_on_free_port(
            "s3s-fs",
            |port, attempt| {
                Daemon::spawn(
                    "s3s-fs",
                    Command::new(&s3s)
                        .args(["--host", "127.0.0.1", "--port", &port.to_string()])
                        .args(["--access-key", ACCESS_KEY, "--secret-key", SECRET_KEY])
                        .arg(&s3_dir),
                    &d.join(format!("s3s-fs-{attempt}.log")),
                )
            },
            |port| tcp_open(addr(port)),
        );

        let redis_bin = require_bin("redis-server");
        let (redis, redis_port) = start_on_free_port(
            "redis-server",
            |port, attempt| {
                Daemon::spawn(
                    "redis-server",
                    Command::new(&redis_bin)
                        .args(["--bind", "127.0.0.1", "--port", &port.to_string()])
                        .args(["--save", "", "--appendonly", "no"])
                        .arg("--dir")
                        .arg(d.join("redis")),
                    &d.join(format!("redis-{attempt}.log")),
                )
            },
            |port| tcp_open(addr(port)),
        );

        let template = fs::read_to_string(ha_example("node.toml.in")).expect("node.toml.in");
        let mut nodes = Vec::new();
        for n in 1..=3 {
            let mut attempt = 0;
            let node = loop {
                attempt += 1;
                let (port, admin) = two_ports();
                let mut toml = template
                    .replace("@PORT@", &port.to_string())
                    .replace("@ADMIN@", &admin.to_string())
                    .replace("@S3_PORT@", &s3_port.to_string())
                    .replace("@REDIS_PORT@", &redis_port.to_string());
                assert!(
                    !toml.contains('@'),
                    "node.toml.in has a placeholder the harness does not know:\n{toml}"
                );
                if !extra_toml.is_empty() {
                    toml.push('\n');
                    toml.push_str(extra_toml);
                }
                let config = d.join(format!("node{n}.toml"));
                fs::write(&config, toml).unwrap();
                let mut node = Node {
                    n,
                    addr: addr(port),
                    admin: addr(admin),
                    config,
                    root: d.join(format!("node{n}")),
                    log: d.join(format!("node{n}-{attempt}.log")),
                    daemon: None,
                };
                node.spawn();
                match node.wait_ready() {
                    Ok(()) => break node,
                    Err(e) => {
                        node.kill9();
                        if attempt < 4 && e.to_ascii_lowercase().contains("in use") {
                            continue;
                        }
                        panic!("{e}");
                    }
                }
            };
            nodes.push(node);
        }

        let nginx_bin = require_bin("nginx");
        let template = fs::read_to_string(ha_example("nginx.conf.in")).expect("nginx.conf.in");
        let (nginx, lb_port) = start_on_free_port(
            "nginx",
            |port, attempt| {
                let conf = template
                    .replace("@DIR@", &d.display().to_string())
                    .replace("@LB_PORT@", &port.to_string())
                    .replace("@NODE1@", &nodes[0].addr.port().to_string())
                    .replace("@NODE2@", &nodes[1].addr.port().to_string())
                    .replace("@NODE3@", &nodes[2].addr.port().to_string());
                let path = d.join(format!("nginx-{attempt}.conf"));
                fs::write(&path, conf).unwrap();
                Daemon::spawn(
                    "nginx",
                    Command::new(&nginx_bin)
                        .arg("-c")
                        .arg(&path)
                        .args(["-g", "daemon off;"]),
                    &d.join(format!("nginx-{attempt}.log")),
                )
            },
            |port| registry_ready(addr(port)),
        );

        Cluster {
            lb: addr(lb_port),
            nodes,
            s3_port,
            redis_port,
            s3_dir,
            nginx: Some(nginx),
            redis: Some(redis),
            s3: Some(s3),
            dir,
        }
    }

    /// `127.0.0.1:LB_PORT`.
    pub fn lb_host(&self) -> String {
        self.lb.to_string()
    }

    pub fn node(&self, i: usize) -> &Node {
        &self.nodes[i]
    }

    /// SIGKILL node `i` (0-based) and reap it; its ports stay reserved for a restart.
    pub fn kill9_node(&mut self, i: usize) {
        self.nodes[i].kill9();
    }

    /// Stops node `i` if it runs (SIGTERM), starts it again with the same config and
    /// ports, and waits until it is ready.
    #[track_caller]
    pub fn restart_node(&mut self, i: usize) {
        let node = &mut self.nodes[i];
        node.stop();
        let deadline = Instant::now() + Duration::from_secs(15);
        loop {
            node.spawn();
            match node.wait_ready() {
                Ok(()) => return,
                Err(e) => {
                    node.kill9();
                    // The killed process's socket may linger for a moment.
                    if Instant::now() < deadline && e.to_ascii_lowercase().contains("in use") {
                        std::thread::sleep(Duration::from_millis(200));
                        continue;
                    }
                    panic!("restart of node{}: {e}", i + 1);
                }
            }
        }
    }

    /// Stops redis-server (SIGTERM, reaped).
    pub fn stop_redis(&mut self) {
        if let Some(mut r) = self.redis.take() {
            r.stop();
        }
    }

    /// `<s3 dir>/<bucket>/<prefix>`: the registry's root as keys on disk.
    pub fn s3_root(&self) -> PathBuf {
        self.s3_dir.join(BUCKET).join(PREFIX)
    }

    /// Every file under the bucket's blob keys (`.../docker/registry/v2/blobs`).
    pub fn blob_files(&self) -> Vec<PathBuf> {
        walk_files(&self.s3_root().join("docker/registry/v2/blobs"))
    }

    /// Whether any upload session key exists in the bucket.
    pub fn has_upload_keys(&self) -> bool {
        let repos = self.s3_root().join("docker/registry/v2/repositories");
        walk_files(&repos)
            .iter()
            .any(|p| p.components().any(|c| c.as_os_str() == "_uploads"))
    }

    /// The last lines of every log (nodes, nginx, s3s-fs, redis), for failure messages.
    pub fn logs(&self, n: usize) -> String {
        let mut s = format!(
            "=== cluster in {}: LB {}, nodes {}, s3s-fs :{}, redis :{}\n",
            self.dir.path().display(),
            self.lb,
            self.nodes
                .iter()
                .map(|n| format!("{} (admin {})", n.addr, n.admin))
                .collect::<Vec<_>>()
                .join(", "),
            self.s3_port,
            self.redis_port
        );
        for node in &self.nodes {
            s.push_str(&node.log_tail(n));
            s.push('\n');
        }
        for f in walk_files(self.dir.path()) {
            let name = f.file_name().unwrap_or_default().to_string_lossy();
            if (name.starts_with("nginx")
                || name.starts_with("s3s-fs")
                || name.starts_with("redis"))
                && name.ends_with(".log")
            {
                let text = String::from_utf8_lossy(&fs::read(&f).unwrap_or_default()).into_owned();
                s.push_str(&format!(
                    "--- {} (last {n} lines):\n{}\n",
                    f.display(),
                    tail(&text, n)
                ));
            }
        }
        s
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!("{}", self.logs(40));
        }
        if let Some(mut d) = self.nginx.take() {
            d.stop();
        }
        for n in &mut self.nodes {
            n.kill9();
        }
        self.stop_redis();
        if let Some(mut d) = self.s3.take() {
            d.stop();
        }
        if std::env::var_os("PIER_E2E_KEEP").is_some() {
            let d = std::mem::replace(&mut self.dir, temp_dir("scaleout-dropped"));
            eprintln!("keeping {}", d.keep().display());
        }
    }
}
