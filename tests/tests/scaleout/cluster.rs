//! The scale-out harness: s3s-fs, redis-server, three `pier serve` nodes sharing that S3
//! bucket and Redis, and Debian's nginx round-robin in front, all on free loopback ports
//! under one temp dir. The node and nginx configs are generated from the shipped example
//! (`deploy/examples/ha/node.toml.in`, `nginx.conf.in`), so the tests exercise the
//! documented deployment. Everything is stopped when the [`Cluster`] drops.
//!
//! With [`ClusterBuilder::sentinel`], Redis runs under Sentinel instead (a master, a
//! replica, three sentinels) and the nodes' `[redis]` table is rewritten to sentinel mode;
//! [`Cluster::kill9_redis_master`] and [`Cluster::wait_for_new_redis_master`] drive a failover.

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
    pier_e2e::manifest_dir()
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

/// s3s-fs serving `<d>/s3` on `port`.
fn spawn_s3(d: &Path, port: u16, attempt: u32) -> Daemon {
    Daemon::spawn(
        "s3s-fs",
        Command::new(s3s_fs_bin())
            .args(["--host", "127.0.0.1", "--port", &port.to_string()])
            .args(["--access-key", ACCESS_KEY, "--secret-key", SECRET_KEY])
            .arg(d.join("s3")),
        &d.join(format!("s3s-fs-{attempt}.log")),
    )
}

/// A standalone redis-server on `port`, data in `<d>/redis`, nothing saved.
/// A stopped server started again by `spawn` on `port`, once it answers there.
#[track_caller]
fn respawn(name: &str, port: u16, spawn: impl FnOnce() -> Daemon) -> Daemon {
    let mut d = spawn();
    assert!(
        poll(Duration::from_secs(15), || tcp_open(addr(port))),
        "{name} did not come back on {port}\n{}",
        d.log()
    );
    d.assert_running();
    d
}

fn spawn_redis(d: &Path, port: u16, attempt: u32) -> Daemon {
    Daemon::spawn(
        "redis-server",
        Command::new(require_bin("redis-server"))
            .args(["--bind", "127.0.0.1", "--port", &port.to_string()])
            .args(["--save", "", "--appendonly", "no"])
            .arg("--dir")
            .arg(d.join("redis")),
        &d.join(format!("redis-{attempt}.log")),
    )
}

/// `GET /v2/` answered by a ready registry: 200, or with access control on 401 with a
/// bearer challenge.
fn registry_answers(r: &pier_e2e::Response) -> bool {
    r.status == 200
        || (r.status == 401
            && r.header("www-authenticate")
                .is_some_and(|c| c.starts_with("Bearer ")))
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
    /// Extra environment variables.
    env: Vec<(String, String)>,
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
        for (k, v) in &self.env {
            cmd.env(k, v);
        }
        self.daemon = Some(Daemon::spawn(
            &format!("pier node{}", self.n),
            &mut cmd,
            &self.log,
        ));
    }

    /// `GET /readyz` on the admin listener answers 200 and `GET /v2/` 200 (or, with access
    /// control on, 401 with a bearer challenge).
    fn probe(&self) -> Result<(), String> {
        let r = http::try_request(self.admin, "GET", "/readyz", &[], b"")
            .map_err(|e| format!("admin /readyz: {e}"))?;
        if r.status != 200 {
            return Err(format!("admin /readyz answered {}", r.status));
        }
        let r = http::try_request(self.addr, "GET", "/v2/", &[], b"")
            .map_err(|e| format!("GET /v2/: {e}"))?;
        if !registry_answers(&r) {
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
    /// (node number, name, value): environment variables of one node.
    node_env: Vec<(usize, String, String)>,
    /// Sentinel processes; 0: one standalone redis-server.
    sentinels: usize,
}

impl ClusterBuilder {
    /// TOML appended to every node's config (after the example's `[redis]` table, so
    /// only tables such as `[[upstreams]]`).
    pub fn extra_toml(mut self, toml: &str) -> Self {
        self.extra_toml.push_str(toml);
        self
    }

    /// Redis under Sentinel instead of one standalone server: a master, one replica
    /// (`--replicaof`) and three sentinels (quorum 2) monitoring [`SENTINEL_MASTER`], with
    /// every node's `[redis]` in `mode = "sentinel"`. The set is up (replica in sync, each
    /// sentinel knowing the replica and the other sentinels) before the nodes start.
    pub fn sentinel(mut self) -> Self {
        self.sentinels = 3;
        self
    }

    /// An environment variable of node `n` (1-based), e.g. `FAILPOINTS`.
    pub fn node_env(mut self, n: usize, k: &str, v: &str) -> Self {
        self.node_env.push((n, k.to_owned(), v.to_owned()));
        self
    }

    #[track_caller]
    pub fn start(self) -> Cluster {
        Cluster::start_with(&self.extra_toml, self.sentinels, &self.node_env)
    }
}

/// The name the sentinels monitor (`[redis] master` in the nodes' configs).
pub const SENTINEL_MASTER: &str = "pier";
/// `sentinel down-after-milliseconds`: how long a dead master goes unnoticed.
const SENTINEL_DOWN_AFTER_MS: u64 = 1000;
/// `sentinel failover-timeout`.
const SENTINEL_FAILOVER_TIMEOUT_MS: u64 = 10_000;

/// `redis-cli -p PORT ARGS...`'s stdout, or None if it failed or Redis answered an error.
fn redis_cli(port: u16, args: &[&str]) -> Option<String> {
    let o = run(
        Command::new(require_bin("redis-cli"))
            .args(["-h", "127.0.0.1", "-p", &port.to_string()])
            .args(args),
        Duration::from_secs(10),
    );
    (o.success() && !o.stdout.starts_with("ERR") && !o.stdout.starts_with("(error)"))
        .then_some(o.stdout)
}

/// A reply of alternating field and value lines (`SENTINEL MASTER`) as pairs.
fn cli_fields(reply: &str) -> Vec<(String, String)> {
    let lines: Vec<&str> = reply.lines().collect();
    lines
        .chunks(2)
        .filter(|c| c.len() == 2)
        .map(|c| (c[0].to_owned(), c[1].to_owned()))
        .collect()
}

fn field<'a>(fields: &'a [(String, String)], name: &str) -> Option<&'a str> {
    fields
        .iter()
        .find(|(k, _)| k == name)
        .map(|(_, v)| v.as_str())
}

/// Redis under Sentinel: the data servers (master and replica, by port) and the sentinels.
struct SentinelSet {
    servers: Vec<(u16, Daemon)>,
    sentinels: Vec<(u16, Daemon)>,
}

impl SentinelSet {
    #[track_caller]
    fn start(d: &Path, n_sentinels: usize) -> SentinelSet {
        let redis_bin = require_bin("redis-server");
        let server = |role: &'static str, replica_of: Option<u16>| {
            let data = d.join(format!("redis-{role}"));
            fs::create_dir_all(&data).unwrap();
            let bin = redis_bin.clone();
            start_on_free_port(
                &format!("redis-server ({role})"),
                move |port, attempt| {
                    let mut cmd = Command::new(&bin);
                    cmd.args(["--bind", "127.0.0.1", "--port", &port.to_string()])
                        .args(["--save", "", "--appendonly", "no"])
                        .arg("--dir")
                        .arg(&data);
                    if let Some(m) = replica_of {
                        cmd.args(["--replicaof", "127.0.0.1", &m.to_string()]);
                    }
                    Daemon::spawn(
                        &format!("redis-server ({role})"),
                        &mut cmd,
                        &d.join(format!("redis-{role}-{attempt}.log")),
                    )
                },
                |port| tcp_open(addr(port)),
            )
        };
        let (master, master_port) = server("master", None);
        let (replica, replica_port) = server("replica", Some(master_port));
        let quorum = n_sentinels.div_ceil(2).max(1);
        let mut sentinels = Vec::new();
        for i in 1..=n_sentinels {
            let (daemon, port) = start_on_free_port(
                "redis sentinel",
                |port, attempt| {
                    let conf = d.join(format!("sentinel{i}-{attempt}.conf"));
                    fs::write(
                        &conf,
                        format!(
                            "bind 127.0.0.1\nport {port}\ndir {dir}\n\
                             sentinel monitor {SENTINEL_MASTER} 127.0.0.1 {master_port} {quorum}\n\
                             sentinel down-after-milliseconds {SENTINEL_MASTER} {SENTINEL_DOWN_AFTER_MS}\n\
                             sentinel failover-timeout {SENTINEL_MASTER} {SENTINEL_FAILOVER_TIMEOUT_MS}\n\
                             sentinel parallel-syncs {SENTINEL_MASTER} 1\n",
                            dir = d.display()
                        ),
                    )
                    .unwrap();
                    Daemon::spawn(
                        "redis sentinel",
                        Command::new(&redis_bin).arg(&conf).arg("--sentinel"),
                        &d.join(format!("redis-sentinel{i}-{attempt}.log")),
                    )
                },
                |port| tcp_open(addr(port)),
            );
            sentinels.push((port, daemon));
        }
        let set = SentinelSet {
            servers: vec![(master_port, master), (replica_port, replica)],
            sentinels,
        };
        // Up = the replica is in sync and every sentinel knows the replica and its peers
        // (sentinels find each other through the master's hello channel, every 2 s).
        let up = poll(Duration::from_secs(30), || {
            let synced = redis_cli(replica_port, &["info", "replication"])
                .is_some_and(|s| s.contains("master_link_status:up"));
            synced
                && set.sentinels.iter().all(|(p, _)| {
                    redis_cli(*p, &["sentinel", "master", SENTINEL_MASTER]).is_some_and(|r| {
                        let f = cli_fields(&r);
                        field(&f, "num-slaves") == Some("1")
                            && field(&f, "num-other-sentinels")
                                == Some(&(n_sentinels - 1).to_string())
                    })
                })
        });
        assert!(
            up,
            "the sentinel set did not come up in 30 s: {}",
            set.sentinels
                .iter()
                .map(|(p, _)| format!(
                    "\nsentinel :{p}: {:?}",
                    redis_cli(*p, &["sentinel", "master", SENTINEL_MASTER])
                ))
                .collect::<String>()
        );
        set
    }

    /// The master's port as the first sentinel that answers names it.
    fn master_port(&self) -> Option<u16> {
        self.sentinels.iter().find_map(|(p, _)| {
            let r = redis_cli(
                *p,
                &["sentinel", "get-master-addr-by-name", SENTINEL_MASTER],
            )?;
            r.lines().nth(1)?.trim().parse().ok()
        })
    }

    fn stop(&mut self) {
        for (_, d) in self.sentinels.iter_mut().chain(self.servers.iter_mut()) {
            d.stop();
        }
    }
}

/// The example's `[redis]` table (the template's last) replaced by sentinel mode.
fn sentinel_redis_table(toml: &str, sentinel_ports: &[u16]) -> String {
    let start = toml
        .find("\n[redis]\n")
        .expect("node.toml.in has a [redis] table");
    let rest = &toml[start + 1..];
    let end = rest.find("\n[").map_or(toml.len(), |e| start + 1 + e + 1);
    let sentinels = sentinel_ports
        .iter()
        .map(|p| format!("\"127.0.0.1:{p}\""))
        .collect::<Vec<_>>()
        .join(", ");
    format!(
        "{}\n[redis]\nmode = \"sentinel\"\nmaster = \"{SENTINEL_MASTER}\"\nsentinels = [{sentinels}]\n{}",
        &toml[..start],
        &toml[end..]
    )
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
    /// With [`ClusterBuilder::sentinel`] (then `redis` is None and `redis_port` is the
    /// first master's port).
    sentinel: Option<SentinelSet>,
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
    fn start_with(
        extra_toml: &str,
        sentinels: usize,
        node_env: &[(usize, String, String)],
    ) -> Cluster {
        let dir = temp_dir("scaleout");
        let d = dir.path().to_owned();
        // nginx's workers run as `nobody`: let them reach the temp paths under the dir.
        fs::set_permissions(&d, fs::Permissions::from_mode(0o755)).unwrap();
        let s3_dir = d.join("s3");
        fs::create_dir_all(s3_dir.join(BUCKET)).unwrap();
        fs::create_dir_all(d.join("redis")).unwrap();

        let (s3, s3_port) = start_on_free_port(
            "s3s-fs",
            |port, attempt| spawn_s3(&d, port, attempt),
            |port| tcp_open(addr(port)),
        );

        let sentinel = (sentinels > 0).then(|| SentinelSet::start(&d, sentinels));
        let (redis, redis_port) = match &sentinel {
            Some(set) => (None, set.servers[0].0),
            None => {
                let (redis, port) = start_on_free_port(
                    "redis-server",
                    |port, attempt| spawn_redis(&d, port, attempt),
                    |port| tcp_open(addr(port)),
                );
                (Some(redis), port)
            }
        };

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
                if let Some(set) = &sentinel {
                    let ports: Vec<u16> = set.sentinels.iter().map(|(p, _)| *p).collect();
                    toml = sentinel_redis_table(&toml, &ports);
                }
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
                    env: node_env
                        .iter()
                        .filter(|(i, _, _)| *i == n)
                        .map(|(_, k, v)| (k.clone(), v.clone()))
                        .collect(),
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
            |port| {
                tcp_open(addr(port))
                    && http::try_request(addr(port), "GET", "/v2/", &[], b"")
                        .is_ok_and(|r| registry_answers(&r))
            },
        );

        Cluster {
            lb: addr(lb_port),
            nodes,
            s3_port,
            redis_port,
            s3_dir,
            nginx: Some(nginx),
            redis,
            sentinel,
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

    /// Starts redis-server again on its port (empty: nothing was saved).
    #[track_caller]
    pub fn restart_redis(&mut self) {
        assert!(self.redis.is_none(), "redis-server still runs");
        self.redis = Some(respawn("redis-server", self.redis_port, || {
            spawn_redis(self.dir.path(), self.redis_port, 100)
        }));
    }

    /// Stops the S3 server (SIGTERM, reaped).
    pub fn stop_s3(&mut self) {
        if let Some(mut s) = self.s3.take() {
            s.stop();
        }
    }

    /// Starts the S3 server again on its port, over the same data.
    #[track_caller]
    pub fn restart_s3(&mut self) {
        assert!(self.s3.is_none(), "the S3 server still runs");
        self.s3 = Some(respawn("s3s-fs", self.s3_port, || {
            spawn_s3(self.dir.path(), self.s3_port, 100)
        }));
    }

    /// Sentinel mode: the current master's port, as
    /// `SENTINEL GET-MASTER-ADDR-BY-NAME` on the first sentinel that answers names it.
    #[track_caller]
    pub fn redis_master_port(&self) -> u16 {
        let set = self
            .sentinel
            .as_ref()
            .expect("a cluster started with .sentinel()");
        set.master_port().expect("no sentinel names a master")
    }

    /// Sentinel mode: SIGKILL the current master (found through the sentinels) and reap
    /// it; returns its port.
    #[track_caller]
    pub fn kill9_redis_master(&mut self) -> u16 {
        let port = self.redis_master_port();
        let set = self.sentinel.as_mut().expect("sentinel mode");
        let (_, d) = set
            .servers
            .iter_mut()
            .find(|(p, _)| *p == port)
            .unwrap_or_else(|| panic!("the sentinels name :{port}, not a server of the set"));
        send_signal(d.pid(), "KILL");
        d.stop(); // reaps it
        port
    }

    /// Sentinel mode: waits until the sentinels name a master other than `old` that
    /// answers `ROLE` as a master; returns its port and how long that took.
    #[track_caller]
    pub fn wait_for_new_redis_master(&self, old: u16, timeout: Duration) -> (u16, Duration) {
        let set = self.sentinel.as_ref().expect("sentinel mode");
        let start = Instant::now();
        let mut new = None;
        let found = poll(timeout, || {
            new = set.master_port().filter(|p| *p != old);
            new.is_some_and(|p| {
                redis_cli(p, &["role"]).is_some_and(|r| r.lines().next() == Some("master"))
            })
        });
        assert!(
            found,
            "no new redis master within {timeout:?} (old :{old}, sentinels say {:?})\n{}",
            set.master_port(),
            self.logs(30)
        );
        (new.expect("found"), start.elapsed())
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
        if let Some(mut set) = self.sentinel.take() {
            set.stop();
        }
        if let Some(mut d) = self.s3.take() {
            d.stop();
        }
        if std::env::var_os("PIER_E2E_KEEP").is_some() {
            let d = std::mem::replace(&mut self.dir, temp_dir("scaleout-dropped"));
            eprintln!("keeping {}", d.keep().display());
        }
    }
}
