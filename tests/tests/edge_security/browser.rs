//! A hostile page in Debian's Chromium (playwright-core, `hostile_page.mjs`) tries the
//! admin API by every way a page has: it changes nothing and reads nothing.

use std::fs;
use std::path::PathBuf;
use std::process::Command;

use pier_e2e::{TestPier, http};

const CHROMIUM: &str = "/usr/bin/chromium";
const PAGE: &str = include_str!("hostile_page.mjs");

/// Where `scripts/install-test-deps.sh` installed playwright-core.
fn playwright_dir() -> PathBuf {
    std::env::var_os("PIER_CACHE")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            PathBuf::from(std::env::var_os("HOME").unwrap_or_default()).join(".cache/pier")
        })
        .join("console-test")
}

#[test]
fn a_cross_origin_page_in_chromium_changes_nothing() {
    let pw = playwright_dir();
    assert!(
        pw.join("node_modules/playwright-core").exists() && PathBuf::from(CHROMIUM).exists(),
        "chromium or playwright-core missing: run scripts/install-test-deps.sh"
    );
    let pier = TestPier::start();
    let untagged = pier_e2e::push_image(pier.addr, "team/app", None, &[b"keep me"]).digest;
    let dir = tempfile::tempdir().unwrap();
    let script = dir.path().join("hostile_page.mjs");
    fs::write(&script, PAGE).unwrap();
    let out = Command::new("node")
        .arg(&script)
        .env("PLAYWRIGHT_DIR", &pw)
        .env("CHROMIUM", CHROMIUM)
        .env("ADMIN", pier.admin_url())
        .output()
        .expect("run node");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let context = format!(
        "{stdout}\n--- stderr:\n{}\n--- pier log:\n{}",
        String::from_utf8_lossy(&out.stderr),
        pier.log_tail(20)
    );
    assert!(out.status.success(), "the page run failed\n{context}");
    let seen: serde_json::Value = serde_json::from_str(stdout.lines().last().unwrap_or(""))
        .unwrap_or_else(|e| panic!("{e}\n{context}"));
    // The rebinding name gets 421: the page reads nothing of the API.
    assert_eq!(seen["rebindStatus"], 421, "{context}");
    assert!(
        !seen["rebindBody"]
            .as_str()
            .unwrap_or("")
            .contains("repositories"),
        "{context}"
    );
    // A cross-origin read fails in the browser (no CORS), and the writes changed nothing.
    assert_ne!(seen["seen"]["cors GET repositories"], 200, "{context}");
    std::thread::sleep(std::time::Duration::from_millis(500));
    let r = http::request(
        pier.addr,
        "HEAD",
        &format!("/v2/team/app/manifests/{untagged}"),
        &[("Accept", pier_e2e::ACCEPT_MANIFESTS)],
        b"",
    );
    r.expect_status(
        200,
        &format!("the untagged manifest after the page\n{context}"),
    );
}
