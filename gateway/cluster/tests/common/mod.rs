//! Real redis-server processes for the tests, on free 127.0.0.1 ports, stopped on drop.
#![allow(dead_code)]

pub mod suite;

use std::net::TcpListener;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU16, Ordering};
use std::time::{Duration, Instant};

use tempfile::TempDir;

/// Ports are handed out from a per-process range so parallel tests (and test binaries of
/// other runs) rarely collide; each is checked free, with its cluster bus port (+10000).
pub fn free_port() -> u16 {
    static NEXT: AtomicU16 = AtomicU16::new(0);
    let base = 20000 + (std::process::id() % 400) as u16 * 50;
    loop {
        let port = base + NEXT.fetch_add(1, Ordering::Relaxed) % 5000;
        if TcpListener::bind(("127.0.0.1", port)).is_ok()
            && TcpListener::bind(("127.0.0.1", port + 10000)).is_ok()
        {
            return port;
        }
    }
}

/// One redis-server (or sentinel) process.
pub struct Redis {
    pub port: u16,
    child: Option<Child>,
    dir: TempDir,
    args: Vec<String>,
}

impl Redis {
    /// A plain server with no persistence.
    pub fn start(extra: &[&str]) -> Self {
        Self::start_on(free_port(), extra)
    }

    /// A server on a given port (to restart one in place).
    pub fn start_on(port: u16, extra: &[&str]) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let mut args: Vec<String> = [
            "--bind",
            "127.0.0.1",
            "--port",
            &port.to_string(),
            "--save",
            "",
            "--appendonly",
            "no",
            "--dir",
            dir.path().to_str().unwrap(),
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        args.extend(extra.iter().map(|s| s.to_string()));
        let mut redis = Self {
            port,
            child: None,
            dir,
            args,
        };
        redis.spawn(None);
        redis
    }

    /// A sentinel watching `master_port` under the name `pier`, with fast failover.
    pub fn sentinel(master_port: u16) -> Self {
        let port = free_port();
        let dir = tempfile::tempdir().unwrap();
        let conf = dir.path().join("sentinel.conf");
        std::fs::write(
            &conf,
            format!(
                "bind 127.0.0.1\nport {port}\ndir {}\n\
                 sentinel monitor pier 127.0.0.1 {master_port} 2\n\
                 sentinel down-after-milliseconds pier 1000\n\
                 sentinel failover-timeout pier 2000\n\
                 sentinel parallel-syncs pier 1\n",
                dir.path().display()
            ),
        )
        .unwrap();
        let mut redis = Self {
            port,
            child: None,
            dir,
            args: vec![],
        };
        redis.spawn(Some(&conf));
        redis
    }

    fn spawn(&mut self, sentinel_conf: Option<&Path>) {
        let mut cmd = Command::new("redis-server");
        match sentinel_conf {
            Some(conf) => {
                cmd.arg(conf).arg("--sentinel");
            }
            None => {
                cmd.args(&self.args);
            }
        }
        let child = cmd
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("redis-server (Debian package redis-server) must be installed");
        self.child = Some(child);
        wait_until(Duration::from_secs(10), || {
            cli(self.port, &["PING"]) == "PONG"
        });
    }

    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    pub fn addr(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    pub fn pid(&self) -> u32 {
        self.child.as_ref().expect("running").id()
    }

    /// SIGKILL and reap.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// SIGSTOP / SIGCONT: the server keeps its sockets but answers nothing.
    pub fn freeze(&self, frozen: bool) {
        let sig = if frozen { "-STOP" } else { "-CONT" };
        let ok = Command::new("kill")
            .arg(sig)
            .arg(self.pid().to_string())
            .status()
            .unwrap()
            .success();
        assert!(ok, "kill {sig} failed");
    }

    pub fn cli(&self, args: &[&str]) -> String {
        cli(self.port, args)
    }
}

impl Drop for Redis {
    fn drop(&mut self) {
        if let Some(child) = self.child.as_ref() {
            // A frozen process ignores SIGTERM but not SIGKILL; SIGCONT is harmless.
            let _ = Command::new("kill")
                .arg("-CONT")
                .arg(child.id().to_string())
                .status();
        }
        self.kill();
    }
}

/// `redis-cli -p PORT ARGS...`, trimmed stdout ("" when it fails).
pub fn cli(port: u16, args: &[&str]) -> String {
    let out = Command::new("redis-cli")
        .arg("-h")
        .arg("127.0.0.1")
        .arg("-p")
        .arg(port.to_string())
        .args(args)
        .stderr(Stdio::null())
        .output()
        .expect("redis-cli");
    String::from_utf8_lossy(&out.stdout).trim().to_owned()
}

/// Polls `ok` every 50 ms; panics after `limit`.
pub fn wait_until(limit: Duration, mut ok: impl FnMut() -> bool) {
    let start = Instant::now();
    while !ok() {
        assert!(
            start.elapsed() < limit,
            "condition not met within {limit:?}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// `field:value` from an INFO reply.
pub fn info_field(info: &str, field: &str) -> Option<String> {
    info.lines()
        .find_map(|l| l.strip_prefix(field)?.strip_prefix(':'))
        .map(|v| v.trim().to_owned())
}

/// Master + one replica + three sentinels (quorum 2), all agreeing before returning.
pub struct SentinelSet {
    pub master: Redis,
    pub replica: Redis,
    pub sentinels: Vec<Redis>,
}

impl SentinelSet {
    pub fn start() -> Self {
        let master = Redis::start(&[]);
        let master_port = master.port.to_string();
        let replica = Redis::start(&["--replicaof", "127.0.0.1", &master_port]);
        wait_until(Duration::from_secs(10), || {
            info_field(&replica.cli(&["INFO", "replication"]), "master_link_status").as_deref()
                == Some("up")
        });
        let sentinels: Vec<Redis> = (0..3).map(|_| Redis::sentinel(master.port)).collect();
        // Each sentinel must know the replica and the two other sentinels (hello messages
        // every 2 s), or a failover cannot be authorized.
        wait_until(Duration::from_secs(20), || {
            sentinels.iter().all(|s| {
                let m = s.cli(&["SENTINEL", "master", "pier"]);
                let lines: Vec<&str> = m.lines().collect();
                let get = |k: &str| {
                    lines
                        .iter()
                        .position(|l| *l == k)
                        .and_then(|i| lines.get(i + 1))
                        .copied()
                };
                get("num-slaves") == Some("1") && get("num-other-sentinels") == Some("2")
            })
        });
        Self {
            master,
            replica,
            sentinels,
        }
    }

    pub fn sentinel_addrs(&self) -> Vec<String> {
        self.sentinels.iter().map(Redis::addr).collect()
    }

    /// The port the sentinels currently name as master.
    pub fn master_port(&self) -> Option<u16> {
        let out = self.sentinels[0].cli(&["SENTINEL", "get-master-addr-by-name", "pier"]);
        out.lines().nth(1)?.trim().parse().ok()
    }
}

/// Three cluster masters, no replicas, all slots covered.
pub struct ClusterSet {
    pub nodes: Vec<Redis>,
}

impl ClusterSet {
    pub fn start() -> Self {
        let nodes: Vec<Redis> = (0..3)
            .map(|_| {
                Redis::start(&[
                    "--cluster-enabled",
                    "yes",
                    "--cluster-config-file",
                    "nodes.conf",
                    "--cluster-node-timeout",
                    "2000",
                ])
            })
            .collect();
        let mut create = Command::new("redis-cli");
        create.arg("--cluster").arg("create");
        for n in &nodes {
            create.arg(n.addr());
        }
        let out = create
            .args(["--cluster-replicas", "0", "--cluster-yes"])
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "cluster create failed: {}",
            String::from_utf8_lossy(&out.stdout)
        );
        wait_until(Duration::from_secs(20), || {
            nodes.iter().all(|n| {
                let info = n.cli(&["CLUSTER", "INFO"]);
                info_field(&info, "cluster_state").as_deref() == Some("ok")
                    && info_field(&info, "cluster_known_nodes").as_deref() == Some("3")
            })
        });
        Self { nodes }
    }

    pub fn addrs(&self) -> Vec<String> {
        self.nodes.iter().map(Redis::addr).collect()
    }
}
