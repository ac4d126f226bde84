//! The admin listener's `/metrics` through Prometheus's own tools: after a push and a
//! pull, `promtool check metrics` (Debian's `prometheus` package) finds no problem in the
//! exposition (every family has HELP and TYPE, counters end in `_total`, the text
//! parses), and a real `prometheus` scraping Pier every second stores the series the
//! dashboard (deploy/grafana/pier.json) is built on: the build, the process and the
//! storage latency histogram.
//!
//! Needs the binary: `cargo build -p pier-server --bin pier`, then
//! `cargo test -p pier-e2e --test metrics`.

use std::io::Write;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use pier_e2e::{TestPier, free_port, get_manifest, http, push_image, random_bytes, tail};

/// An installed program, or a failure naming the package (scripts/install-test-deps.sh).
fn require(name: &str) -> PathBuf {
    std::env::var_os("PATH")
        .iter()
        .flat_map(std::env::split_paths)
        .map(|d| d.join(name))
        .find(|p| p.is_file())
        .unwrap_or_else(|| {
            panic!(
                "`{name}` is not installed: run scripts/install-test-deps.sh (Debian's prometheus)"
            )
        })
}

/// A push (monolithic blob uploads and a manifest) and a pull (manifest and layer).
fn push_and_pull(p: &TestPier) {
    let layer = random_bytes(64 * 1024);
    let image = push_image(p.addr, "metrics/app", Some("v1"), &[&layer]);
    get_manifest(p.addr, "metrics/app", "v1").expect_status(200, "pull the manifest");
    let blob = p.get(&format!("/v2/metrics/app/blobs/{}", image.layer_digests[0]));
    blob.expect_status(200, "pull the layer");
    assert_eq!(blob.body, layer, "pulled layer bytes");
}

fn scrape(p: &TestPier) -> String {
    let r = http::get(p.admin_addr, "/metrics");
    r.expect_status(200, "GET /metrics");
    let ct = r.require_header("content-type", "GET /metrics");
    assert!(
        ct.starts_with("text/plain; version=0.0.4"),
        "Content-Type {ct:?}"
    );
    r.text()
}

/// `promtool check metrics` with `text` on stdin: (success, what it printed).
fn promtool_check(text: &str) -> (bool, String) {
    let mut child = Command::new(require("promtool"))
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start promtool");
    child
        .stdin
        .take()
        .unwrap()
        .write_all(text.as_bytes())
        .unwrap();
    let out = child.wait_with_output().expect("promtool check metrics");
    let said = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), said)
}

#[test]
fn exposition_passes_promtool() {
    let p = TestPier::start();
    push_and_pull(&p);
    let text = scrape(&p);
    for wanted in [
        "# TYPE pier_build_info gauge\n",
        "# TYPE process_cpu_seconds_total counter\n",
        "# TYPE process_resident_memory_bytes gauge\n",
        "# TYPE process_open_fds gauge\n",
        "# TYPE process_max_fds gauge\n",
        "# TYPE process_start_time_seconds gauge\n",
        "# TYPE pier_http_requests_total counter\n",
        "# TYPE pier_http_request_duration_seconds histogram\n",
        "# TYPE pier_storage_operation_duration_seconds histogram\n",
        "pier_storage_operation_duration_seconds_count{operation=\"upload_commit\"} 2\n",
        "pier_storage_operation_duration_seconds_count{operation=\"blob_get\"} 1\n",
        "pier_http_requests_total{route=\"manifest\",method=\"PUT\",status=\"201\"} 1\n",
    ] {
        assert!(
            text.contains(wanted),
            "{wanted:?} missing from /metrics:\n{text}"
        );
    }
    assert!(
        text.contains(&format!(
            "pier_build_info{{version=\"{}\",commit=\"",
            env!("CARGO_PKG_VERSION")
        )),
        "{text}"
    );
    // Every family once, each with its HELP right before its TYPE.
    let types: Vec<&str> = text.lines().filter(|l| l.starts_with("# TYPE ")).collect();
    for t in &types {
        let name = t.split_whitespace().nth(2).unwrap();
        assert_eq!(
            types
                .iter()
                .filter(|o| o.split_whitespace().nth(2) == Some(name))
                .count(),
            1,
            "{name} declared twice:\n{text}"
        );
        assert!(text.contains(&format!("# HELP {name} ")), "{name}: no HELP");
    }
    let (ok, said) = promtool_check(&text);
    assert!(
        ok && said.trim().is_empty(),
        "promtool check metrics: {said}\n{text}"
    );
}

/// A `prometheus` server on a free loopback port scraping `target` every second, with its
/// config, data and log in a temporary directory; killed on drop.
struct Prometheus {
    child: Child,
    addr: SocketAddr,
    log: PathBuf,
    _dir: tempfile::TempDir,
}

impl Prometheus {
    fn start(target: SocketAddr) -> Prometheus {
        let dir = tempfile::tempdir().unwrap();
        let config = dir.path().join("prometheus.yml");
        std::fs::write(
            &config,
            format!(
                "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\n\
                 scrape_configs:\n  - job_name: pier\n    scrape_interval: 1s\n    \
                 scrape_timeout: 1s\n    static_configs:\n      - targets: ['{target}']\n"
            ),
        )
        .unwrap();
        let addr: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
        let log = dir.path().join("prometheus.log");
        let child = Command::new(require("prometheus"))
            .arg(format!("--config.file={}", config.display()))
            .arg(format!(
                "--storage.tsdb.path={}",
                dir.path().join("data").display()
            ))
            .arg(format!("--web.listen-address={addr}"))
            .stdin(Stdio::null())
            .stdout(std::fs::File::create(&log).unwrap())
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .expect("start prometheus");
        Prometheus {
            child,
            addr,
            log,
            _dir: dir,
        }
    }

    /// The result vector of an instant query (empty while the server starts or has no
    /// such series yet).
    fn query(&self, expr: &str) -> Vec<serde_json::Value> {
        let q = percent_encoded(expr);
        let path = format!("/api/v1/query?query={q}");
        let r =
            http::try_request_timeout(self.addr, "GET", &path, &[], b"", Duration::from_secs(5));
        let Some(r) = r.ok().filter(|r| r.status == 200) else {
            return Vec::new();
        };
        let v: serde_json::Value = serde_json::from_slice(&r.body).unwrap_or_default();
        v["data"]["result"].as_array().cloned().unwrap_or_default()
    }

    fn log_tail(&self) -> String {
        tail(&self.log, 30)
    }
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Percent-encodes a query expression for a URL's query string.
fn percent_encoded(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'_' | b'-' | b'.' => (b as char).to_string(),
            _ => format!("%{b:02X}"),
        })
        .collect()
}

fn wait_for_series(prom: &Prometheus, expr: &str, deadline: Instant) -> Vec<serde_json::Value> {
    loop {
        let result = prom.query(expr);
        if !result.is_empty() {
            return result;
        }
        assert!(
            Instant::now() < deadline,
            "prometheus has no {expr} before the deadline; its log:\n{}",
            prom.log_tail()
        );
        std::thread::sleep(Duration::from_millis(250));
    }
}

#[test]
fn prometheus_scrapes_the_new_series() {
    let p = TestPier::start();
    push_and_pull(&p);
    let prom = Prometheus::start(p.admin_addr);
    let deadline = Instant::now() + Duration::from_secs(60);
    let up = wait_for_series(&prom, "up{job=\"pier\"} == 1", deadline);
    assert_eq!(up.len(), 1, "{up:?}");
    let build = wait_for_series(&prom, "pier_build_info", deadline);
    assert_eq!(
        build[0]["metric"]["version"],
        env!("CARGO_PKG_VERSION"),
        "{build:?}"
    );
    assert!(build[0]["metric"]["commit"].is_string(), "{build:?}");
    assert_eq!(build[0]["value"][1], "1", "{build:?}");
    let rss = wait_for_series(&prom, "process_resident_memory_bytes", deadline);
    let bytes: f64 = rss[0]["value"][1].as_str().unwrap().parse().unwrap();
    assert!(bytes > 1e6, "resident memory {bytes}");
    let ops = wait_for_series(
        &prom,
        "pier_storage_operation_duration_seconds_count{operation=\"upload_commit\"}",
        deadline,
    );
    assert_eq!(ops[0]["value"][1], "2", "two blobs committed: {ops:?}");
    let cpu = wait_for_series(&prom, "process_cpu_seconds_total", deadline);
    assert_eq!(cpu.len(), 1, "{cpu:?}");

    // The dashboard's queries parse and evaluate in this Prometheus, on series the
    // README's Metrics table lists.
    let root = pier_e2e::manifest_dir().join("..");
    let readme = std::fs::read_to_string(root.join("README.md")).unwrap();
    let dashboard: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(root.join("deploy/grafana/pier.json")).unwrap(),
    )
    .expect("deploy/grafana/pier.json is JSON");
    assert_eq!(dashboard["__inputs"][0]["name"], "DS_PROMETHEUS");
    let mut exprs = Vec::new();
    for panel in dashboard["panels"].as_array().unwrap() {
        for target in panel["targets"].as_array().into_iter().flatten() {
            exprs.push(target["expr"].as_str().unwrap().to_owned());
        }
    }
    assert!(exprs.len() > 20, "{exprs:?}");
    for expr in &exprs {
        let concrete = expr
            .replace("$__rate_interval", "1m")
            .replace("$job", ".*")
            .replace("$instance", ".*");
        let path = format!("/api/v1/query?query={}", percent_encoded(&concrete));
        let r = http::get(prom.addr, &path);
        assert_eq!(r.status, 200, "{concrete}: {}", r.text());
        for name in concrete
            .split(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
            .filter(|w| w.starts_with("pier_") || w.starts_with("process_"))
        {
            let family = ["_bucket", "_count", "_sum"]
                .iter()
                .find_map(|s| name.strip_suffix(s))
                .unwrap_or(name);
            assert!(
                readme.contains(&format!("`{family}`")),
                "the dashboard's {name} is not in README.md's Metrics"
            );
        }
    }
}
