//! Operations through the admin REST API: garbage collection while Pier serves (a dry
//! run, then a real one after a tag is deleted: the unreferenced blobs go, the shared and
//! referenced ones stay pullable, the last result is kept across a restart), and mirror
//! preheat (the cache holds the image afterwards: the upstream served each blob once and
//! the image pulls with the upstream stopped).
//!
//! Replication and webhook deliveries through the API on a site that replicates to
//! another and posts webhooks: jobs a page at a time with their logs, a retry, targets,
//! deliveries and a redelivery; then schemathesis checks these operations (and gc and
//! preheat) against the document with content to find.
//!
//! Needs the binary (`cargo build -p pier-server`), the wasm32-wasip2 target, schemathesis
//! and, for preheat, the mirror tests' upstream (`docker-registry`, `skopeo`); then
//! `cargo test -p pier-e2e --test admin_ops`.

mod clients_support;
#[allow(dead_code)]
#[path = "events/support.rs"]
mod events_support;
#[allow(dead_code)]
#[path = "mirror/support.rs"]
mod support;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::Command;
use std::time::{Duration, Instant};

use pier_e2e::{Response, TestPier, get_manifest, http, random_bytes};
use serde_json::{Value, json};

use crate::clients_support::{Skopeo, TestImage, assert_registry_has_image};
use crate::support::{Upstream, pier_mirroring};

fn call(addr: SocketAddr, method: &str, path: &str, body: &[u8]) -> Response {
    let headers: &[(&str, &str)] = if body.is_empty() {
        &[]
    } else {
        &[("Content-Type", "application/json")]
    };
    http::request(addr, method, path, headers, body)
}

#[track_caller]
fn api(pier: &TestPier, method: &str, path: &str, status: u16) -> Value {
    let r = call(pier.admin_addr, method, path, b"");
    r.expect_status(status, &format!("{method} {path}"));
    r.json()
}

/// The blob's data file in Pier's storage.
fn blob_file(pier: &TestPier, digest: &str) -> std::path::PathBuf {
    let hex = digest.strip_prefix("sha256:").unwrap();
    pier.blobs_dir()
        .join("sha256")
        .join(&hex[..2])
        .join(hex)
        .join("data")
}

#[test]
fn gc_through_the_api_removes_only_what_nothing_references() {
    let mut pier = TestPier::start();
    let shared = random_bytes(3000);
    let only_a = random_bytes(5000);
    let a = pier_e2e::push_image(pier.addr, "ops/app", Some("a"), &[&shared, &only_a]);
    let b = pier_e2e::push_image(pier.addr, "ops/app", Some("b"), &[&shared]);

    let status = api(&pier, "GET", "/api/v1/gc", 200);
    assert_eq!(status, json!({"running": false, "last": null}));

    // Without events configured, the replication and delivery endpoints say so.
    for path in [
        "/api/v1/replication/jobs",
        "/api/v1/replication/targets",
        "/api/v1/events/deliveries",
    ] {
        let v = api(&pier, "GET", path, 409);
        assert!(
            v["error"].as_str().unwrap().contains("not configured"),
            "{v}"
        );
    }
    // Bad parameters are refused before anything runs.
    for path in [
        "/api/v1/gc?dry_run=maybe",
        "/api/v1/gc?grace=forever",
        "/api/v1/gc?grace=99999999999h",
        "/api/v1/gc?force=true",
    ] {
        api(&pier, "POST", path, 400);
    }
    let r = call(pier.admin_addr, "DELETE", "/api/v1/gc", b"");
    r.expect_status(405, "DELETE /api/v1/gc");
    assert_eq!(r.header("allow"), Some("GET, POST"), "{r}");

    // Tag a goes: its manifest is untagged, its config and own layer unreferenced.
    api(
        &pier,
        "DELETE",
        "/api/v1/repositories/ops/app/-/tags/a",
        200,
    );
    let garbage = [
        a.digest.clone(),
        a.config_digest.clone(),
        a.layer_digests[1].clone(),
    ];

    // The default grace period (1h) keeps the manifest and blobs just pushed.
    let kept = api(&pier, "POST", "/api/v1/gc?dry_run=true&untagged=true", 200);
    assert_eq!(kept["manifestsRemoved"], 0, "{kept}");
    assert_eq!(kept["blobsRemoved"], 0, "{kept}");

    let dry = api(
        &pier,
        "POST",
        "/api/v1/gc?dry_run=true&untagged=true&grace=0s",
        200,
    );
    assert_eq!(dry["dryRun"], true, "{dry}");
    assert_eq!(dry["manifestsRemoved"], 1, "{dry}");
    assert_eq!(dry["blobsRemoved"], 3, "{dry}");
    assert_eq!(dry["error"], Value::Null);
    for d in &garbage {
        assert!(blob_file(&pier, d).exists(), "a dry run removed {d}");
    }
    let last = api(&pier, "GET", "/api/v1/gc", 200);
    assert_eq!(last["last"]["dryRun"], true, "{last}");

    let config_size = std::fs::metadata(blob_file(&pier, &a.config_digest))
        .unwrap()
        .len();
    let real = api(&pier, "POST", "/api/v1/gc?untagged=true&grace=0s", 200);
    assert_eq!(real["dryRun"], false, "{real}");
    assert_eq!(real["manifestsRemoved"], 1, "{real}");
    assert_eq!(real["blobsRemoved"], 3, "{real}");
    assert_eq!(
        real["bytesFreed"].as_u64().unwrap(),
        a.manifest.len() as u64 + config_size + 5000,
        "{real}"
    );
    for d in &garbage {
        assert!(!blob_file(&pier, d).exists(), "gc left {d}");
    }
    // What b references is all there and pullable, the shared layer too.
    let m = get_manifest(pier.addr, "ops/app", "b");
    m.expect_status(200, "GET ops/app:b after gc");
    for d in b.layer_digests.iter().chain([&b.config_digest]) {
        let r = pier.get(&format!("/v2/ops/app/blobs/{d}"));
        r.expect_status(200, &format!("blob {d} of b after gc"));
        assert_eq!(pier_e2e::sha256_digest(&r.body), *d);
    }
    pier.get(&format!("/v2/ops/app/blobs/{}", a.layer_digests[1]))
        .expect_status(404, "a's own layer after gc");
    get_manifest(pier.addr, "ops/app", &a.digest).expect_status(404, "a's manifest after gc");

    // Audited, and the last result survives a restart.
    let log = std::fs::read_to_string(pier.log_path()).unwrap_or_default();
    assert!(
        log.lines().any(|l| l.contains("audit")
            && l.contains("action=\"gc\"")
            && l.contains("blobs_removed=3")
            && l.contains("result=ok")),
        "no audit line for the collection:\n{}",
        pier.log_tail(30)
    );
    assert!(
        log.lines().any(|l| l.contains("action=\"gc_dry_run\"")),
        "no audit line for the dry run"
    );
    pier.restart();
    let after = api(&pier, "GET", "/api/v1/gc", 200);
    assert_eq!(after["running"], false);
    assert_eq!(after["last"]["blobsRemoved"], 3, "{after}");
    assert_eq!(after["last"]["dryRun"], false, "{after}");
    assert!(after["last"]["started"].as_str().unwrap().ends_with('Z'));

    // No mirror here: nothing to preheat.
    let r = call(
        pier.admin_addr,
        "POST",
        "/api/v1/mirror/preheat",
        br#"{"images":["library/alpine:3.19"]}"#,
    );
    r.expect_status(409, "preheat without a mirror");
}

#[test]
fn preheat_through_the_api_fills_the_mirror_cache() {
    let sk = Skopeo::new();
    let mut up = Upstream::start();
    let img = TestImage::new("1", 2);
    up.push_image(&sk, "library/preheated", &img);
    let pier = pier_mirroring(&up, &[]);

    // Bodies that don't fit are refused before anything is pulled.
    for (body, status) in [
        (&b"not json"[..], 400),
        (br#"{"images":[]}"#, 400),
        (br#"{"images":["Bad Name"]}"#, 400),
        (br#"{"images":["a/b"],"platforms":["linux"]}"#, 400),
        (br#"{"images":["a/b"],"extra":1}"#, 400),
    ] {
        let r = call(pier.admin_addr, "POST", "/api/v1/mirror/preheat", body);
        r.expect_status(status, &String::from_utf8_lossy(body));
        assert!(r.json()["error"].is_string(), "{r}");
    }
    let huge = format!(r#"{{"images":["{}"]}}"#, "a".repeat(70 * 1024));
    call(
        pier.admin_addr,
        "POST",
        "/api/v1/mirror/preheat",
        huge.as_bytes(),
    )
    .expect_status(413, "a body over 64 KiB");
    call(pier.admin_addr, "GET", "/api/v1/mirror/preheat", b"").expect_status(405, "GET preheat");

    let r = call(
        pier.admin_addr,
        "POST",
        "/api/v1/mirror/preheat",
        br#"{"images":["library/preheated:1"],"platforms":["linux/amd64","linux/arm64"]}"#,
    );
    r.expect_status(200, "preheat");
    let v = r.json();
    assert_eq!(v["blobs"], img.blob_digests().len(), "{v}");
    let lines = v["lines"].to_string();
    for d in img.blob_digests() {
        assert!(lines.contains(&d), "preheat lines miss {d}: {v}");
        assert_eq!(
            up.count("GET", &format!("/v2/library/preheated/blobs/{d}")),
            1,
            "the preheat fetched {d} once"
        );
    }
    let stats = api(&pier, "GET", "/api/v1/mirror", 200);
    assert_eq!(stats["blobMisses"], img.blob_digests().len(), "{stats}");
    let log = std::fs::read_to_string(pier.log_path()).unwrap_or_default();
    assert!(
        log.lines()
            .any(|l| l.contains("action=\"preheat\"") && l.contains("result=ok")),
        "no audit line for the preheat"
    );

    // A missing image: 502 with the reason.
    let r = call(
        pier.admin_addr,
        "POST",
        "/api/v1/mirror/preheat",
        br#"{"images":["library/nosuchimage:1"]}"#,
    );
    r.expect_status(502, "preheating a missing image");
    assert!(r.json()["error"].is_string(), "{r}");

    // The first real client finds everything cached, with the upstream gone; the cache
    // answered every blob.
    up.stop();
    assert_registry_has_image(pier.addr, "library/preheated", &img.manifest_digest, &img);
    let stats = api(&pier, "GET", "/api/v1/mirror", 200);
    assert_eq!(stats["blobMisses"], img.blob_digests().len(), "{stats}");
    assert!(
        stats["blobHits"].as_u64().unwrap() >= img.blob_digests().len() as u64,
        "{stats}"
    );
}

/// Polls `GET path` until `pred` holds for its JSON; returns it.
#[track_caller]
fn wait_for(pier: &TestPier, path: &str, what: &str, pred: impl Fn(&Value) -> bool) -> Value {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let v = api(pier, "GET", path, 200);
        if pred(&v) {
            return v;
        }
        assert!(
            Instant::now() < deadline,
            "{what}: not within 60 s\n{v}\n--- log:\n{}",
            pier.log_tail(40)
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// `schemathesis`: `$PIER_SCHEMATHESIS`, else the test venv's.
fn schemathesis() -> PathBuf {
    let bin = match std::env::var_os("PIER_SCHEMATHESIS") {
        Some(p) => PathBuf::from(p),
        None => std::env::var_os("PIER_CACHE")
            .map(PathBuf::from)
            .unwrap_or_else(|| {
                PathBuf::from(std::env::var_os("HOME").unwrap_or_else(|| "/root".into()))
                    .join(".cache/pier")
            })
            .join("venv/bin/schemathesis"),
    };
    assert!(bin.exists(), "no schemathesis at {}", bin.display());
    bin
}

#[test]
fn replication_and_deliveries_through_the_api() {
    use crate::events_support::{Receiver, base_config, replicator, start_site, webhook};

    let site_b = TestPier::start();
    let receiver = Receiver::start();
    let config = base_config("attempts = 1", &[("site-b", site_b.url())])
        + &replicator("replicate", &[("team-to-b", "team", "site-b")])
        + &webhook("hooks", &[receiver.url("/hook")]);
    let site = start_site(&config);
    pier_e2e::push_image(site.addr, "team/ops", Some("v1"), &[&random_bytes(2048)]);
    pier_e2e::push_image(site.addr, "team/ops", Some("v2"), &[&random_bytes(1024)]);

    let done = |v: &Value| {
        let jobs = v["jobs"].as_array().unwrap();
        jobs.len() == 2 && jobs.iter().all(|j| j["state"] == "succeeded")
    };
    let all = wait_for(&site, "/api/v1/replication/jobs", "two jobs succeed", done);
    let jobs = all["jobs"].as_array().unwrap();
    assert!(
        jobs[0]["id"].as_u64() > jobs[1]["id"].as_u64(),
        "newest first: {all}"
    );
    let j = &jobs[1];
    assert_eq!(j["destination"], "site-b", "{j}");
    assert_eq!(j["sourceRepository"], "team/ops", "{j}");
    assert_eq!(j["reference"], "v1", "{j}");
    assert_eq!(j["report"]["blobsCopied"], 2, "config and layer: {j}");
    assert!(j["updated"].as_str().unwrap().ends_with('Z'), "{j}");
    let id = j["id"].as_u64().unwrap();

    // A page at a time, and filtered.
    let first = api(&site, "GET", "/api/v1/replication/jobs?n=1", 200);
    assert_eq!(first["jobs"].as_array().unwrap().len(), 1, "{first}");
    let next = first["next"].as_str().expect("a next link").to_owned();
    let second = api(&site, "GET", &next, 200);
    assert_eq!(second["jobs"][0]["id"], id, "{second}");
    assert!(second["next"].is_null(), "{second}");
    let failed = api(&site, "GET", "/api/v1/replication/jobs?status=failed", 200);
    assert_eq!(failed["jobs"], json!([]), "{failed}");

    // The job's log, then a retry by hand that runs it again.
    let log = api(
        &site,
        "GET",
        &format!("/api/v1/replication/jobs/{id}/log"),
        200,
    );
    let lines: Vec<&str> = log["lines"]
        .as_array()
        .unwrap()
        .iter()
        .map(|l| l["message"].as_str().unwrap())
        .collect();
    assert!(
        lines[0].starts_with("attempt 1 started: local team/ops:v1 -> site-b"),
        "{log}"
    );
    assert!(
        lines
            .iter()
            .any(|l| l.starts_with("succeeded: 2 blobs copied")),
        "{log}"
    );
    let r = api(
        &site,
        "POST",
        &format!("/api/v1/replication/jobs/{id}/retry"),
        202,
    );
    assert_eq!(r["id"], id, "{r}");
    let path = format!("/api/v1/replication/jobs/{id}");
    let again = wait_for(&site, &path, "the retried job succeeds", |j| {
        j["state"] == "succeeded" && j["attempts"] == 2
    });
    assert_eq!(
        again["report"]["manifestsSkipped"], 1,
        "already at B: {again}"
    );
    let log = api(
        &site,
        "GET",
        &format!("/api/v1/replication/jobs/{id}/log"),
        200,
    );
    let text = log["lines"].to_string();
    assert!(
        text.contains("queued again by hand") && text.contains("attempt 2 started"),
        "{log}"
    );
    let audit = std::fs::read_to_string(site.log_path()).unwrap_or_default();
    assert!(
        audit
            .lines()
            .any(|l| l.contains("action=\"retry_replication_job\"")
                && l.contains(&format!("reference={id}"))),
        "no audit line for the retry"
    );
    for (method, path, status) in [
        ("GET", "/api/v1/replication/jobs/999999", 404),
        ("GET", "/api/v1/replication/jobs/abc", 400),
        ("GET", "/api/v1/replication/jobs?status=bogus", 400),
        ("GET", "/api/v1/replication/jobs?limit=5", 400),
        ("POST", "/api/v1/replication/jobs/999999/retry", 404),
        ("GET", "/api/v1/replication/jobs/1/retry", 405),
        ("GET", "/api/v1/events/deliveries/nothex", 400),
        ("GET", "/api/v1/events/deliveries?last=x", 400),
        (
            "GET",
            "/api/v1/events/deliveries/0123456789abcdef0123456789abcdef",
            404,
        ),
    ] {
        let r = call(site.admin_addr, method, path, b"");
        r.expect_status(status, &format!("{method} {path}"));
        assert!(r.json()["error"].is_string(), "{r}");
    }

    let t = api(&site, "GET", "/api/v1/replication/targets", 200);
    assert_eq!(
        t,
        json!({"targets": [{"name": "site-b", "url": site_b.url(), "bandwidth": 0, "authenticated": false}]})
    );

    // Deliveries: one per push, delivered; one redelivered by hand.
    let delivered = wait_for(
        &site,
        "/api/v1/events/deliveries?status=delivered",
        "two deliveries",
        |v| v["deliveries"].as_array().unwrap().len() >= 2,
    );
    let d = &delivered["deliveries"][0];
    let did = d["id"].as_str().unwrap().to_owned();
    assert_eq!(d["url"], receiver.url("/hook"), "{d}");
    let one = api(
        &site,
        "GET",
        &format!("/api/v1/events/deliveries/{did}"),
        200,
    );
    assert_eq!(one["id"], did.as_str());
    let page = api(&site, "GET", "/api/v1/events/deliveries?n=1", 200);
    let next = page["next"].as_str().expect("a next link").to_owned();
    let rest = api(&site, "GET", &next, 200);
    assert_ne!(rest["deliveries"][0]["id"], page["deliveries"][0]["id"]);
    let before = receiver.hooks().len();
    api(
        &site,
        "POST",
        &format!("/api/v1/events/deliveries/{did}/redeliver"),
        202,
    );
    let deadline = Instant::now() + Duration::from_secs(30);
    while receiver.hooks().len() <= before {
        assert!(Instant::now() < deadline, "no redelivery");
        std::thread::sleep(Duration::from_millis(100));
    }

    // The CLI lists through the same API.
    let out = pier_e2e::pier_command()
        .args([
            "replication",
            "log",
            &id.to_string(),
            "--admin",
            &site.admin_url(),
        ])
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success() && stdout.contains("attempt 2 started"),
        "{stdout}"
    );

    // Schemathesis on these operations (and gc and preheat), with content to find.
    // Access control is off here, so the check that refusals are enforced is left out.
    let reports = clients_support::temp_dir("schemathesis-ops");
    let url = format!("{}/api/v1/openapi.json", site.admin_url());
    let mut cmd = Command::new(schemathesis());
    cmd.args([
        "run",
        &url,
        "--checks",
        "all",
        "--exclude-checks",
        "ignored_auth",
    ])
    .args([
        "--include-path-regex",
        "^/api/v1/(replication|events|gc|mirror/preheat)",
    ])
    .args([
        "--max-examples",
        "50",
        // One worker: see admin_api.rs (CPython gh-106905 races ast.parse across threads).
        "--workers",
        "1",
        "--request-timeout",
        "20",
    ])
    .args(["--no-color", "--suppress-health-check", "all"])
    .args(["--generation-database", "none"])
    .args(["--generation-with-security-parameters", "false"])
    .arg("--report-dir")
    .arg(reports.path())
    .current_dir(reports.path())
    .env("NO_COLOR", "1");
    let o = clients_support::run(&mut cmd, Duration::from_secs(180));
    assert!(
        o.success(),
        "schemathesis found problems\n$ {}\n--- stdout\n{}\n--- stderr\n{}",
        o.cmdline,
        o.stdout,
        o.stderr
    );
    assert!(
        o.stdout.contains("Selected: 14/") && o.stdout.contains("Tested: 14"),
        "schemathesis did not test the 14 operations (with the replication rules)\n{o}"
    );
    let log = std::fs::read_to_string(site.log_path()).unwrap_or_default();
    assert!(
        !log.contains("admin API failed"),
        "the API logged an internal error\n{}",
        site.log_tail(50)
    );
}
