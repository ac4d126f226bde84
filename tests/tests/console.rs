//! The operator console (`/console` on the admin listener) in a real browser: Debian's
//! Chromium, headless, driven by playwright-core (`console/drive.mjs`, run with node).
//!
//! A Pier running the RBAC example (`deploy/examples/rbac`) with a replicator plugin whose
//! target is down (`[replication] attempts = 1`, so the job fails for good) and a webhook to
//! a closed port. skopeo pushes an image as the system admin; the browser logs in (a wrong
//! password first), sees the dashboard, filters the repositories, opens the repository and
//! checks the tag's digest, opens the manifest, sees the failed replication job, clicks
//! Retry once the test has started the target and waits until the job has succeeded, then
//! the webhook deliveries and plugins pages, and logs out.
//!
//! A second Pier mirrors the first one's target: a pull through it moves the dashboard's
//! hit-ratio card and chart while the browser watches.
//!
//! Each page is saved as a PNG under `$CARGO_TARGET_DIR/console-screenshots/{browse,mirror}`
//! (else `target/console-screenshots`); the path is printed.
//!
//! Needs the binary (`cargo build -p pier-server`), the wasm32-wasip2 target, skopeo,
//! chromium and playwright-core (`scripts/install-test-deps.sh`); then
//! `cargo test -p pier-e2e --test console`.

mod clients_support;
#[allow(dead_code)]
#[path = "policies/cosign.rs"]
mod cosign;
#[allow(dead_code)]
#[path = "events/support.rs"]
mod events_support;
#[allow(dead_code)]
#[path = "auth_clients/support.rs"]
mod support;

use std::fs;
use std::io::{BufRead, BufReader, Write};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::thread;
use std::time::{Duration, Instant};

use pier_e2e::{TestPier, http};
use serde_json::{Value, json};

use crate::clients_support::{CMD_TIMEOUT, Dockerd, Skopeo, TestImage, run, send_signal, temp_dir};
use crate::support::{
    ADMIN, ALICE, RbacPier, assert_refused, basic, manifest_digest_as, rootfs_tar, skopeo_push,
    wait_login_accepted,
};

const DRIVER: &str = include_str!("console/drive.mjs");
const CHROMIUM: &str = "/usr/bin/chromium";
/// The whole browser run, login to logout.
const BROWSER_TIMEOUT: Duration = Duration::from_secs(240);

/// Where playwright-core was installed (`scripts/install-test-deps.sh`).
fn playwright_dir() -> PathBuf {
    let cache = std::env::var_os("PIER_CACHE")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            PathBuf::from(std::env::var_os("HOME").unwrap_or_default()).join(".cache/pier")
        });
    cache.join("console-test")
}

/// `$CARGO_TARGET_DIR/console-screenshots`, else `<repo>/target/console-screenshots`.
fn screenshots_dir() -> PathBuf {
    let target = match std::env::var_os("CARGO_TARGET_DIR") {
        Some(t) if !t.is_empty() => PathBuf::from(t),
        _ => pier_e2e::manifest_dir().join("../target"),
    };
    target.join("console-screenshots")
}

/// `GET path` on the admin listener as the system admin, as JSON (asserting 200).
#[track_caller]
fn admin_json(addr: SocketAddr, path: &str) -> Value {
    let auth = basic(ADMIN);
    let r = http::request(addr, "GET", path, &[("Authorization", &auth)], b"");
    r.expect_status(200, &format!("admin GET {path}"));
    r.json()
}

/// Waits until the replication job of `repo:tag` is in `state`; returns it.
#[track_caller]
fn wait_job_state(pier: &TestPier, repo: &str, tag: &str, state: &str) -> Value {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let jobs = admin_json(pier.admin_addr, "/replication/jobs?limit=1000");
        let job = jobs["jobs"].as_array().and_then(|all| {
            all.iter()
                .find(|j| j["src_repo"] == repo && j["reference"] == tag)
                .cloned()
        });
        if let Some(j) = job.filter(|j| j["state"] == state) {
            return j;
        }
        assert!(
            Instant::now() < deadline,
            "no {state} job for {repo}:{tag} within 60 s\n{jobs}\n--- log:\n{}",
            pier.log_tail(40)
        );
        thread::sleep(Duration::from_millis(100));
    }
}

/// The RBAC example's config with the plugin built from source, plus `extra`.
fn rbac_config(extra: &str) -> String {
    let example = pier_e2e::manifest_dir().join("../deploy/examples/rbac/pier.toml");
    let toml = fs::read_to_string(&example).expect("read the RBAC example's pier.toml");
    let wasm = &pier_e2e::plugins::build().rbac;
    let lines: Vec<String> = toml
        .lines()
        .map(|l| {
            if l.trim_start().starts_with("path") && l.contains("pier_rbac.wasm") {
                format!("path = {:?}", wasm.display().to_string())
            } else {
                l.to_owned()
            }
        })
        .collect();
    lines.join("\n") + "\n" + extra
}

/// Panics with what to run when chromium or playwright-core is missing.
fn require_browser() {
    for (what, path) in [
        ("chromium", PathBuf::from(CHROMIUM)),
        (
            "playwright-core",
            playwright_dir().join("node_modules/playwright-core"),
        ),
    ] {
        assert!(
            path.exists(),
            "{what} is missing at {}: run scripts/install-test-deps.sh",
            path.display()
        );
    }
}

/// What one run of the driver left.
struct BrowserRun {
    /// Its last stdout line, parsed (`{"ok":true,...}`).
    result: Value,
    /// Everything it printed and the server's log tail, for assertion messages.
    context: String,
}

/// Runs the driver against `pier`'s console with `env`, screenshots into
/// `screenshots_dir()/name`; `on_wait` gets the word of each `{"waiting":...}` line and
/// the driver goes on once it returns. Asserts that node exited 0 with `ok: true`, no
/// error in the browser's console, no request to another origin, and non-empty PNGs.
#[track_caller]
fn run_browser(
    pier: &TestPier,
    name: &str,
    env: &[(&str, String)],
    mut on_wait: impl FnMut(&str),
) -> BrowserRun {
    require_browser();
    let dir = temp_dir("console-driver");
    let shots = screenshots_dir().join(name);
    let _ = fs::remove_dir_all(&shots);
    fs::create_dir_all(&shots).unwrap();
    let script = dir.path().join("drive.mjs");
    fs::write(&script, DRIVER).unwrap();
    let stderr_path = dir.path().join("node.stderr");
    let mut child = Command::new("node")
        .arg(&script)
        .envs(env.iter().map(|(k, v)| (k, v)))
        .env("CONSOLE_URL", pier.admin_url())
        .env("SHOTS", &shots)
        .env("PLAYWRIGHT_DIR", playwright_dir())
        .env("CHROMIUM", CHROMIUM)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(fs::File::create(&stderr_path).unwrap())
        .spawn()
        .expect("run node (scripts/install-test-deps.sh installs it)");
    let mut stdin = child.stdin.take().expect("stdin");
    let stdout = child.stdout.take().expect("stdout");
    let (tx, rx) = mpsc::channel();
    thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    let deadline = Instant::now() + BROWSER_TIMEOUT;
    let mut lines = Vec::new();
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match rx.recv_timeout(left) {
            Ok(line) => {
                eprintln!("browser: {line}");
                let waiting = serde_json::from_str::<Value>(&line)
                    .ok()
                    .and_then(|v| v["waiting"].as_str().map(str::to_owned));
                if let Some(w) = waiting {
                    on_wait(&w);
                    writeln!(stdin, "done").expect("answer the driver");
                }
                lines.push(line);
            }
            Err(mpsc::RecvTimeoutError::Disconnected) => break,
            Err(mpsc::RecvTimeoutError::Timeout) => {
                send_signal(child.id(), "KILL");
                let _ = child.wait();
                panic!(
                    "the browser run took longer than {BROWSER_TIMEOUT:?}\n{}\n--- node stderr:\n{}",
                    lines.join("\n"),
                    fs::read_to_string(&stderr_path).unwrap_or_default()
                );
            }
        }
    }
    let status = child.wait().expect("wait for node");
    let stderr = fs::read_to_string(&stderr_path).unwrap_or_default();
    let result: Value = lines
        .last()
        .and_then(|l| serde_json::from_str(l).ok())
        .unwrap_or(Value::Null);
    let context = format!(
        "node exited {status}\n--- stdout:\n{}\n--- stderr:\n{stderr}\n--- pier log:\n{}",
        lines.join("\n"),
        pier.log_tail(30)
    );
    assert!(status.success(), "the browser run failed\n{context}");
    assert_eq!(result["ok"], true, "{context}");
    assert_eq!(result["consoleErrors"], json!([]), "{context}");
    assert_eq!(result["foreignRequests"], json!([]), "{context}");
    for s in result["screenshots"].as_array().into_iter().flatten() {
        let p = PathBuf::from(s.as_str().unwrap_or_default());
        assert!(
            fs::metadata(&p).is_ok_and(|m| m.len() > 1000),
            "screenshot {} missing or empty\n{context}",
            p.display()
        );
    }
    eprintln!("console screenshots: {}", shots.display());
    BrowserRun { result, context }
}

#[test]
fn console_in_chromium_browses_a_pushed_image_and_retries_a_failed_job() {
    require_browser();
    // The replication target, down while the image is pushed.
    let mut target = TestPier::start();
    target.kill9();
    let closed_port = pier_e2e::free_port();
    let extra = format!(
        "\n[events]\nattempts = 1\ntimeout = \"2s\"\n\n[replication]\nattempts = 1\n\n\
         [replication.targets.site-b]\nurl = \"{}\"\ntimeout = \"5s\"\n{}{}",
        target.url(),
        events_support::replicator("replicate", &[("team-to-b", "team", "site-b")]),
        events_support::webhook("hooks", &[format!("http://127.0.0.1:{closed_port}/hook")]),
    );
    let dir = temp_dir("console");
    for f in ["users.htpasswd", "robots.json"] {
        fs::copy(
            pier_e2e::manifest_dir()
                .join("../deploy/examples/rbac")
                .join(f),
            dir.path().join(f),
        )
        .unwrap_or_else(|e| panic!("copy {f} of the RBAC example: {e}"));
    }
    let config = dir.path().join("pier.toml");
    fs::write(&config, rbac_config(&extra)).unwrap();
    let pier = TestPier::builder().arg("--config").arg(&config).start();

    let (repo, tag) = ("team/console", "v1");
    let img = TestImage::new(tag, 2);
    let sk = Skopeo::new();
    let o = skopeo_push(
        &sk,
        &pier.host(),
        &img,
        &format!("{repo}:{tag}"),
        Some(ADMIN),
    );
    assert!(o.success(), "skopeo push as admin\n{o}");
    let failed = wait_job_state(&pier, repo, tag, "failed");
    let job_id = failed["id"].as_u64().expect("job id");

    let env = [
        ("ADMIN_USER", ADMIN.0.to_owned()),
        ("ADMIN_PASS", ADMIN.1.to_owned()),
        ("REPO", repo.to_owned()),
        ("TAG", tag.to_owned()),
        ("JOB_ID", job_id.to_string()),
        ("RULE", "team-to-b".to_owned()),
        ("RULE_REPOSITORY", "team/*".to_owned()),
        ("RULE_TARGET", "site-b".to_owned()),
    ];
    let BrowserRun { result, context } = run_browser(&pier, "browse", &env, |waiting| {
        assert_eq!(waiting, "target", "what the driver waits for");
        target.start_again();
    });
    assert_eq!(
        result["wrongPasswordMessage"], "Wrong username or password.",
        "{context}"
    );
    assert_eq!(result["signedInAs"], ADMIN.0, "{context}");
    assert_eq!(
        result["tagDigest"],
        img.manifest_digest.as_str(),
        "{context}"
    );
    assert_eq!(
        result["manifestDigest"],
        img.manifest_digest.as_str(),
        "{context}"
    );
    assert_eq!(result["layerRows"], 2, "{context}");
    assert!(
        !result["failedJobError"].as_str().unwrap_or("").is_empty(),
        "the failed job shows its error\n{context}"
    );
    assert_eq!(result["jobAttempts"], "2", "{context}");
    let log = result["jobLog"].as_str().unwrap_or_default();
    for line in [
        "attempt 1 started",
        "attempt 1 failed",
        "attempt 2 started",
        "succeeded",
    ] {
        assert!(
            log.contains(line),
            "the job's log shows {line:?}\n{context}"
        );
    }
    assert!(
        result["deliveryRows"].as_u64().unwrap_or(0) >= 1,
        "the failed webhook delivery is listed\n{context}"
    );
    assert!(
        result["redeliverMessage"]
            .as_str()
            .is_some_and(|m| m.ends_with("queued again.")),
        "Redeliver answered\n{context}"
    );
    for p in ["rbac", "replicate", "hooks"] {
        assert!(
            result["plugins"]
                .as_array()
                .is_some_and(|a| a.iter().any(|n| n == p)),
            "plugin {p} listed\n{context}"
        );
    }
    // The Rules page: the TOML's rule, one added in the form (kept by the plugin, as the
    // API says while it exists), then deleted with its button.
    assert_eq!(result["rulesBefore"], json!(["team-to-b"]), "{context}");
    assert_eq!(
        result["rulesAdded"],
        json!(["console-hourly", "team-to-b"]),
        "{context}"
    );
    assert_eq!(
        result["addedRule"],
        json!([
            "console-hourly",
            "repository team/*",
            "v*, stable",
            "push site-b",
            "{repository}",
            "every 3600 s",
            "replicate",
            "Delete"
        ]),
        "{context}"
    );
    assert_eq!(
        result["rulesAfterDelete"],
        json!(["team-to-b"]),
        "{context}"
    );
    let names: Vec<Value> = admin_json(pier.admin_addr, "/api/v1/replication/rules")["rules"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|r| r["name"].clone())
        .collect();
    assert_eq!(names, vec![json!("team-to-b")], "the API agrees");
    assert_eq!(result["sessionAfterLogout"], Value::Null, "{context}");
    assert_eq!(
        result["screenshots"].as_array().map_or(0, Vec::len),
        10,
        "{context}"
    );

    // The job really was copied.
    let done = wait_job_state(&pier, repo, tag, "succeeded");
    assert_eq!(done["id"], job_id, "{done}");
    let r = pier_e2e::get_manifest(target.addr, repo, tag);
    r.expect_status(200, "the replicated manifest on the target");
    assert_eq!(pier_e2e::sha256_digest(&r.body), img.manifest_digest);
}

#[test]
fn a_pull_through_the_mirror_moves_the_hit_ratio_chart() {
    require_browser();
    let upstream = TestPier::start();
    let layer = pier_e2e::random_bytes(64 * 1024);
    let img = pier_e2e::push_image(upstream.addr, "library/app", Some("v1"), &[&layer]);
    let mirror = TestPier::builder()
        .arg("--upstream")
        .arg(upstream.url())
        .arg("--history-every")
        .arg("1s")
        .start();
    let layer_digest = img.layer_digests[0].clone();
    let pull = || {
        let r = mirror.get(&format!("/v2/library/app/blobs/{layer_digest}"));
        r.expect_status(200, "blob through the mirror");
        assert_eq!(pier_e2e::sha256_digest(&r.body), layer_digest);
    };

    // Access control is off: any name and password sign in.
    let env = [
        ("MODE", "mirror".to_owned()),
        ("EXPECTED_RATIO", "75.0 %".to_owned()),
        ("ADMIN_USER", "operator".to_owned()),
        ("ADMIN_PASS", "anything".to_owned()),
    ];
    let BrowserRun { result, context } = run_browser(&mirror, "mirror", &env, |waiting| {
        assert_eq!(waiting, "pull", "what the driver waits for");
        // One miss that fills the cache, then three hits: 75 %.
        for _ in 0..4 {
            pull();
        }
    });
    assert_eq!(result["hitRatioBefore"], "0.0 %", "{context}");
    assert_eq!(result["hitRatioAfter"], "75.0 %", "{context}");
    // Pier's own history (sampled every second here) shows the hits too, and is there
    // again after the page is loaded anew.
    assert!(
        result["historyRatioPoints"].as_u64().unwrap_or(0) >= 2,
        "{context}"
    );
    assert_eq!(result["historyAfterReload"], true, "{context}");
    // What the dashboard calls upstream bytes saved: the three hits' bytes.
    let r = pier_e2e::http::request(mirror.admin_addr, "GET", "/api/v1/mirror", &[], b"");
    r.expect_status(200, "mirror stats");
    let stats = r.json();
    assert_eq!(
        stats["cacheBytes"],
        serde_json::json!(3 * layer.len()),
        "{stats}"
    );
    assert_eq!(
        stats["upstreamBytes"],
        serde_json::json!(layer.len()),
        "{stats}"
    );
}

#[test]
fn console_adds_a_member_whose_docker_login_and_push_then_succeed() {
    require_browser();
    let pier = RbacPier::start();
    let host = pier.host();
    let docker = Dockerd::start();
    let (user, pass) = ("erin", "erin-pass-1");
    let (project, robot) = ("team", "console-ci");
    let image = format!("{host}/{project}/console-member:v1");
    let rootfs = temp_dir("docker-rootfs");
    let tar = rootfs_tar(rootfs.path(), "rootfs");
    docker.ok(
        &["import", &tar.display().to_string(), &image],
        "docker import",
    );
    let env = [
        ("ADMIN_USER", ADMIN.0.to_owned()),
        ("ADMIN_PASS", ADMIN.1.to_owned()),
        ("MODE", "members".to_owned()),
        ("NEW_USER", user.to_owned()),
        ("NEW_PASS", pass.to_owned()),
        ("PROJECT", project.to_owned()),
        ("ROBOT", robot.to_owned()),
        ("PROJECT_ADMIN_USER", ALICE.0.to_owned()),
        ("PROJECT_ADMIN_PASS", ALICE.1.to_owned()),
    ];
    let BrowserRun { result, context } = run_browser(&pier, "members", &env, |waiting| {
        match waiting {
            // Made on the Users page: erin logs in, but may not push to team yet.
            "user-created" => {
                wait_login_accepted(pier.addr, (user, pass));
                let o = run(
                    docker.cmd().args(["login", &host, "-u", user, "-p", pass]),
                    CMD_TIMEOUT,
                );
                assert!(o.success(), "docker login as {user}\n{o}");
                let o = run(docker.cmd().args(["push", &image]), CMD_TIMEOUT);
                assert_refused(&o, &["denied"], "docker push before being a member");
            }
            // Added as developer on the project's page: the push goes through at once.
            "member-added" => {
                let o = run(
                    docker.cmd().args(["login", &host, "-u", user, "-p", pass]),
                    CMD_TIMEOUT,
                );
                assert!(o.success(), "docker login as member {user}\n{o}");
                docker.ok(&["push", &image], "docker push as a new member");
            }
            other => panic!("unexpected wait {other}"),
        }
    });
    assert_eq!(result["memberRole"], "developer", "{context}");
    let digest = manifest_digest_as(
        pier.addr,
        &basic(ADMIN),
        &format!("{project}/console-member"),
        "v1",
    );
    assert!(digest.starts_with("sha256:"), "{digest}");

    // The robot made in the console: its rotated secret works, the first one no longer.
    let first = result["robotSecret"]
        .as_str()
        .unwrap_or_default()
        .to_owned();
    let rotated = result["rotatedSecret"]
        .as_str()
        .unwrap_or_default()
        .to_owned();
    assert!(!first.is_empty() && first != rotated, "{context}");
    let login = format!("robot${robot}");
    let tags = |secret: &str| {
        http::request(
            pier.addr,
            "GET",
            &format!("/v2/{project}/console-member/tags/list"),
            &[("Authorization", &basic((&login, secret)))],
            b"",
        )
        .status
    };
    let start = Instant::now();
    // The old secret is refused: 401, or 429 once its failures throttle the address.
    while tags(&rotated) != 200 || !matches!(tags(&first), 401 | 429) {
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "rotated secret {} / first secret {}\n{context}",
            tags(&rotated),
            tags(&first)
        );
        thread::sleep(Duration::from_millis(200));
    }

    // alice, project admin of team, sees only Projects and only team.
    assert_eq!(result["projectAdminProjects"], json!(["team"]), "{context}");
    assert_eq!(result["projectAdminNav"], json!(["projects"]), "{context}");
    assert_eq!(
        result["screenshots"].as_array().map_or(0, Vec::len),
        7,
        "{context}"
    );
}

/// Two fleet nodes mirroring one upstream; a blob pulled through both reached the node
/// that does not own it from its owner. That node's Fleet page shows the owner healthy and
/// the bytes received from peers, then, after the test stops the owner, shows it down.
#[test]
fn the_fleet_page_shows_peers_their_health_and_bytes() {
    require_browser();
    const KEY: &str = "console-fleet-test-key-0123456789abcdef0123456789";
    let upstream = TestPier::start();
    let layer = pier_e2e::random_bytes(256 * 1024);
    let img = pier_e2e::push_image(upstream.addr, "library/app", Some("v1"), &[&layer]);
    let layer_digest = img.layer_digests[0].clone();
    let ports = [pier_e2e::free_port(), pier_e2e::free_port()];
    let urls: Vec<String> = ports
        .iter()
        .map(|p| format!("http://127.0.0.1:{p}"))
        .collect();
    let dir = temp_dir("console-fleet");
    let mut nodes: Vec<TestPier> = (0..2)
        .map(|i| {
            let cfg = dir.path().join(format!("node-{i}.toml"));
            fs::write(
                &cfg,
                format!(
                    "[[upstreams]]\nurl = \"{}\"\ndefault = true\n\n[fleet]\n\
                     listen = \"127.0.0.1:{}\"\nadvertise = {:?}\npeers = [{:?}, {:?}]\n\
                     secret = {KEY:?}\nhealth_interval = \"500ms\"\n",
                    upstream.url(),
                    ports[i],
                    urls[i],
                    urls[0],
                    urls[1]
                ),
            )
            .unwrap();
            TestPier::builder().arg("--config").arg(&cfg).start()
        })
        .collect();
    let upstream_name = format!("127.0.0.1-{}", upstream.addr.port());
    let order = pier_e2e::fleet_order(&urls, &format!("{upstream_name}/{layer_digest}"));
    let (owner, other) = (order[0], order[1]);
    // Both healthy in each other's eyes first (the first node's first check found the
    // second one not started yet).
    thread::sleep(Duration::from_millis(1200));
    for n in [owner, other] {
        let r = nodes[n].get(&format!("/v2/library/app/blobs/{layer_digest}"));
        r.expect_status(200, "blob through a fleet node");
        assert_eq!(pier_e2e::sha256_digest(&r.body), layer_digest);
    }
    let env = [
        ("MODE", "fleet".to_owned()),
        ("PEER_URL", urls[owner].clone()),
        ("ADMIN_USER", "operator".to_owned()),
        ("ADMIN_PASS", "anything".to_owned()),
    ];
    let mut owner_node = nodes.swap_remove(owner);
    let other_node = nodes.pop().expect("the other node");
    let BrowserRun { result, context } = run_browser(&other_node, "fleet", &env, |waiting| {
        assert_eq!(waiting, "stop-peer", "what the driver waits for");
        owner_node.kill9();
    });
    assert_eq!(result["peerBefore"], "healthy", "{context}");
    assert_eq!(result["peerAfter"], "down", "{context}");
    assert_eq!(result["bytesFromPeers"], "256.0 KiB", "{context}");
    assert_eq!(result["saved"], "1", "{context}");
}

/// A project governed by the `signatures` admission plugin and the `retain` retention
/// plugin: the Policies page lists it, its page shows the plugin, the quota in use, a
/// dry run of retention made by a click and a limit set; the repository page shows
/// each tag's signatures and what the policy says of pulling it.
#[test]
fn the_console_shows_policies_quota_retention_and_signature_status() {
    require_browser();
    let dir = temp_dir("console-policies");
    let key = cosign::Key::new(dir.path(), "team");
    let built = pier_e2e::plugins::build();
    let cfg = dir.path().join("pier.toml");
    fs::write(
        &cfg,
        format!(
            "[[plugins]]\nname = \"signatures\"\nhook = \"admission\"\npath = {:?}\n\
             grants = [\"config\", \"log\", \"registry\", \"crypto\"]\n\n\
             [plugins.config]\nrules = [{{ name = \"team-keys\", projects = [\"team\"], keys = [{:?}] }}]\n\n\
             [[plugins]]\nname = \"retain\"\nhook = \"retention\"\npath = {:?}\n\
             grants = [\"config\"]\n\n\
             [plugins.config]\nrules = [{{ name = \"recent\", projects = [\"team\"], keep_last_pushed = 3 }}]\n",
            built.signatures.display().to_string(),
            key.public_pem(),
            built.retain.display().to_string()
        ),
    )
    .unwrap();
    let pier = TestPier::builder().arg("--config").arg(&cfg).start();
    let a = pier.addr;
    let layer = pier_e2e::random_bytes(2048);
    let push = |tag: &str| pier_e2e::push_image(a, "team/app", Some(tag), &[&layer]);
    push("old");
    let signed = push("signed");
    cosign::cosign_sign(a, "team/app", &signed.digest, &key, false);
    push("unsigned");

    // Access control is off: any name and password sign in.
    let env = [
        ("MODE", "policies".to_owned()),
        ("PROJECT", "team".to_owned()),
        ("REPO", "team/app".to_owned()),
        ("ADMIN_USER", "operator".to_owned()),
        ("ADMIN_PASS", "anything".to_owned()),
    ];
    let BrowserRun { result, context } =
        run_browser(&pier, "policies", &env, |w| panic!("unexpected wait {w}"));
    assert_eq!(
        result["admissionPolicies"],
        json!(["signatures"]),
        "{context}"
    );
    assert!(
        result["quotaUsed"].as_str().unwrap_or("").ends_with("KiB"),
        "{context}"
    );
    assert_eq!(
        result["retentionBefore"], "Plugin retain. Never run.",
        "{context}"
    );
    // Four tags (old, signed, its .sig, unsigned), three kept: the oldest goes.
    assert_eq!(
        result["dryRunMessage"], "Dry run: 1 removal(s).",
        "{context}"
    );
    assert_eq!(result["removalRows"], json!(["team/app:old"]), "{context}");
    assert!(
        result["retentionAfter"]
            .as_str()
            .unwrap_or("")
            .contains("Last dry run"),
        "{context}"
    );
    assert_eq!(result["quotaLimit"], "10.0 MiB", "{context}");
    let r = http::request(pier.admin_addr, "GET", "/api/v1/quotas/team", &[], b"");
    assert_eq!(r.json()["limit"], json!(10 * 1024 * 1024), "{r}");
    // A dry run deleted nothing.
    pier_e2e::get_manifest(a, "team/app", "old").expect_status(403, "old: unsigned, still there");
    let tags = &result["tagPolicies"];
    assert_eq!(tags["signed"], json!(["cosign", "admitted"]), "{context}");
    assert_eq!(tags["unsigned"][0], "none", "{context}");
    let policy = tags["unsigned"][1].as_str().unwrap_or("");
    assert!(
        policy.starts_with("denied signatures:") && policy.contains("no cosign signature"),
        "{context}"
    );
}
