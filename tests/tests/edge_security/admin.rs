//! The admin API against web pages in an operator's browser and path tricks.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Child, Stdio};
use std::time::Duration;

use pier_e2e::{TestPier, http, pier_command};

use crate::support::{base64_encode, pier_with_auth};

/// An image pushed by digest only (untagged): what `gc?untagged=true` deletes.
fn untagged(pier: &TestPier) -> String {
    pier_e2e::push_image(pier.addr, "team/app", None, &[b"untagged layer"]).digest
}

fn manifest_exists(pier: &TestPier, digest: &str) -> bool {
    let r = http::request(
        pier.addr,
        "HEAD",
        &format!("/v2/team/app/manifests/{digest}"),
        &[("Accept", pier_e2e::ACCEPT_MANIFESTS)],
        b"",
    );
    r.status == 200
}

#[test]
fn a_hostile_page_cannot_drive_the_admin_api() {
    let pier = TestPier::start();
    let digest = untagged(&pier);
    let gc = "/api/v1/gc?untagged=true&grace=0s";

    // A cross-site POST (what fetch() or a form on evil.example sends): refused, nothing deleted.
    for origin in ["http://evil.example", "null", "http://127.0.0.1:1"] {
        let r = http::request(pier.admin_addr, "POST", gc, &[("Origin", origin)], b"");
        r.expect_status(403, &format!("POST gc with Origin {origin}"));
    }
    // DNS rebinding: the page's own origin, with the attacker's host name.
    let r = http::request(
        pier.admin_addr,
        "POST",
        gc,
        &[
            ("Host", "evil.example:5001"),
            ("Origin", "http://evil.example:5001"),
        ],
        b"",
    );
    r.expect_status(421, "POST gc with a rebinding Host");
    let r = http::request(
        pier.admin_addr,
        "GET",
        "/api/v1/repositories",
        &[("Host", "evil.example")],
        b"",
    );
    r.expect_status(421, "GET repositories with a rebinding Host");
    std::thread::sleep(Duration::from_millis(300));
    assert!(
        manifest_exists(&pier, &digest),
        "a refused GC deleted the untagged manifest"
    );

    // A "simple" cross-site body (text/plain, a form): 415 before any handler.
    for ct in [
        "text/plain",
        "application/x-www-form-urlencoded",
        "multipart/form-data; boundary=x",
    ] {
        let r = http::request(
            pier.admin_addr,
            "POST",
            "/api/v1/projects",
            &[("Content-Type", ct)],
            br#"{"name":"evil","public":true}"#,
        );
        r.expect_status(415, &format!("POST projects as {ct}"));
    }
    // Same-origin and origin-less calls (the console, curl, the CLI) still work.
    let own = format!("http://{}", pier.admin_addr);
    http::request(
        pier.admin_addr,
        "GET",
        "/api/v1/repositories",
        &[("Origin", &own)],
        b"",
    )
    .expect_status(200, "same-origin GET");
    http::request(
        pier.admin_addr,
        "GET",
        "/metrics",
        &[("Host", "localhost")],
        b"",
    )
    .expect_status(200, "GET /metrics as localhost");
    http::request(pier.admin_addr, "POST", gc, &[("Origin", &own)], b"")
        .expect_status(200, "same-origin POST gc");
    assert!(
        pier_e2e::wait_until(Duration::from_secs(10), Duration::from_millis(100), || {
            !manifest_exists(&pier, &digest)
        }),
        "the operator's own GC ran"
    );
}

#[test]
fn admin_paths_are_checked_as_the_router_sees_them() {
    let (pier, _dir) = pier_with_auth();
    for path in [
        "//replication/jobs",
        "//events/deliveries",
        "/./replication/jobs",
        "/metrics/../replication/jobs",
        "///api/v1/replication/jobs",
        "/api//v1/users",
        "/api/v1/./users",
        "/%2Freplication/jobs",
        "/replication%2Fjobs",
    ] {
        let r = http::get(pier.admin_addr, path);
        r.expect_status(401, &format!("GET {path} without credentials"));
    }
    // With credentials the normalized path reaches its handler.
    let basic = format!("Basic {}", base64_encode(b"admin:admin-pass"));
    let r = http::request(
        pier.admin_addr,
        "GET",
        "/api//v1/users",
        &[("Authorization", &basic)],
        b"",
    );
    r.expect_status(200, "GET /api//v1/users as admin");
    assert!(r.text().contains("admin"), "{r}");
    // A text/plain body that would create a user: 415, and no user appears.
    let r = http::request(
        pier.admin_addr,
        "POST",
        "/api/v1/users",
        &[("Authorization", &basic), ("Content-Type", "text/plain")],
        br#"{"name":"mallory","password":"mallory-pass-123"}"#,
    );
    r.expect_status(415, "POST users as text/plain");
    let r = http::request(
        pier.admin_addr,
        "GET",
        "/api/v1/users",
        &[("Authorization", &basic)],
        b"",
    );
    assert!(
        !r.text().contains("mallory"),
        "a text/plain body created a user: {r}"
    );
    // The probes stay open.
    for p in ["/healthz", "/readyz", "/metrics"] {
        http::get(pier.admin_addr, p).expect_status(200, p);
    }
}

/// `pier serve` with its admin listener on 0.0.0.0 and `extra` flags; its stderr (where
/// the log goes) in `dir/NAME.err`.
fn serve_on_all_addresses(dir: &Path, name: &str, extra: &[&str]) -> (Child, PathBuf) {
    let err = dir.join(format!("{name}.err"));
    let child = pier_command()
        .args([
            "serve",
            "--listen",
            "127.0.0.1:0",
            "--admin-listen",
            "0.0.0.0:0",
        ])
        .args(extra)
        .arg("--root")
        .arg(dir.join("root"))
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::from(fs::File::create(&err).unwrap()))
        .spawn()
        .expect("spawn pier serve");
    (child, err)
}

#[test]
fn an_unauthenticated_admin_api_off_loopback_needs_consent() {
    let dir = tempfile::tempdir().unwrap();
    let (mut child, err_path) = serve_on_all_addresses(dir.path(), "refused", &[]);
    let mut status = None;
    pier_e2e::wait_until(Duration::from_secs(20), Duration::from_millis(100), || {
        status = child.try_wait().ok().flatten();
        status.is_some()
    });
    if status.is_none() {
        let _ = child.kill();
        let _ = child.wait();
        panic!("pier served an unauthenticated admin API on 0.0.0.0");
    }
    assert!(!status.unwrap().success(), "pier exited 0");
    let err = fs::read_to_string(&err_path).unwrap_or_default();
    assert!(
        err.contains("admin_insecure") && err.contains("127.0.0.1:5001"),
        "the refusal says what to do: {err}"
    );
    // The operator's explicit consent starts it.
    let (mut child, log) = serve_on_all_addresses(dir.path(), "consent", &["--admin-insecure"]);
    let started = pier_e2e::wait_until(Duration::from_secs(20), Duration::from_millis(100), || {
        fs::read_to_string(&log)
            .unwrap_or_default()
            .contains("pier serving")
    });
    let _ = child.kill();
    let _ = child.wait();
    assert!(started, "pier serve --admin-insecure did not start");
}
