//! `pier:plugin@0.2.0`: a real `pier` with `plugins/probe` as its authorizer shows what
//! the plugin is told of each request (route, method, tag, digest, user agent; the token
//! endpoint as a route of its own), through the deny reason the client gets. And a
//! component built against 0.1.0 (`plugins/legacy`) serves as authorizer and as the
//! project store of the admin API, unchanged.

use std::ffi::OsStr;
use std::fs;
use std::path::Path;
use std::time::Duration;

use pier_e2e::{TestPier, http};
use tempfile::TempDir;

use crate::support::{basic, bearer, error_message, pier_run, token};

/// A config with `wasm` as the authorizer and a user `u` (password `u-pass`).
fn start(dir: &Path, name: &str, wasm: &Path, grants: &str) -> TestPier {
    let cfg = dir.join("pier.toml");
    fs::write(
        &cfg,
        format!(
            "[auth]\nusers_file = \"users.htpasswd\"\n\n\
             [[plugins]]\nname = \"{name}\"\nhook = \"authorizer\"\npath = {:?}\n\
             grants = [{grants}]\n",
            wasm.display().to_string()
        ),
    )
    .unwrap();
    let args = ["user", "add", "u", "--password-stdin", "--config"].map(OsStr::new);
    let mut args = args.to_vec();
    args.push(cfg.as_os_str());
    let add = pier_run(&args, "u-pass\n", Duration::from_secs(60));
    assert!(add.success(), "pier user add\n{add}");
    TestPier::builder().arg("--config").arg(&cfg).start()
}

#[test]
fn authorizers_are_told_the_route_method_tag_digest_and_user_agent() {
    let dir = TempDir::new().unwrap();
    let pier = start(dir.path(), "probe", &pier_e2e::plugins::build().probe, "");
    let auth = basic("u", "u-pass");
    let ua = "ctx-test/1.0 (+tests)";

    let r = http::request(
        pier.addr,
        "PUT",
        "/v2/team/app/manifests/v1",
        &[("Authorization", &auth), ("User-Agent", ua)],
        b"{}",
    );
    r.expect_error(403, "DENIED", "a manifest push the probe denies");
    assert_eq!(
        error_message(&r),
        format!(
            "requested access to the resource is denied: probe: Action::Push route=Route::Manifest method=PUT tag=v1 digest=- ua={ua}"
        ),
        "{r}"
    );

    let blob = format!("sha256:{}", "a".repeat(64));
    let r = http::request(
        pier.addr,
        "DELETE",
        &format!("/v2/team/app/blobs/{blob}"),
        &[("Authorization", &auth)],
        b"",
    );
    r.expect_error(403, "DENIED", "a blob delete the probe denies");
    assert!(
        error_message(&r).starts_with(&format!(
            "requested access to the resource is denied: probe: Action::Delete route=Route::Blob method=DELETE tag=- digest={blob} ua="
        )),
        "{r}"
    );

    // Pulls are allowed: the same credentials read (404: nothing pushed).
    let r = http::request(
        pier.addr,
        "GET",
        "/v2/team/app/manifests/v1",
        &[("Authorization", &auth)],
        b"",
    );
    r.expect_status(404, "a pull the probe allows");

    // The token endpoint asks with route `token` and no method: the refusal of the
    // token without `push` carries that reason.
    let t = token(
        pier.addr,
        Some(("u", "u-pass")),
        "repository:team/app:pull,push",
    );
    let r = http::request(
        pier.addr,
        "POST",
        "/v2/team/app/blobs/uploads/",
        &[("Authorization", &bearer(&t))],
        b"",
    );
    r.expect_status(401, "an upload with a pull-only token");
    assert!(
        r.text()
            .contains("probe: Action::Push route=Route::Token method=- tag=- digest=-"),
        "{r}"
    );
}

#[test]
fn a_plugin_built_against_0_1_0_still_serves() {
    let dir = TempDir::new().unwrap();
    let pier = start(
        dir.path(),
        "legacy",
        &pier_e2e::plugins::build().legacy,
        "\"log\", \"kv\"",
    );
    let auth = basic("u", "u-pass");
    let r = http::request(
        pier.addr,
        "PUT",
        "/v2/team/app/manifests/v1",
        &[("Authorization", &auth)],
        b"{}",
    );
    r.expect_error(403, "DENIED", "a push the legacy plugin denies");
    assert_eq!(
        error_message(&r),
        "requested access to the resource is denied: legacy 0.1.0: Action::Push on team/app for u",
        "{r}"
    );
    // Its `projects@0.1.0` export is the admin API's project store (it allows `manage`
    // to everyone, so `u` sees the project).
    let r = http::request(
        pier.admin_addr,
        "GET",
        "/api/v1/projects",
        &[("Authorization", &auth)],
        b"",
    );
    r.expect_status(200, "projects from the 0.1.0 plugin");
    assert!(r.text().contains("\"legacy\""), "{r}");
}
