//! The admin REST API (`/api/v1` on the admin listener) of a Pier running the RBAC
//! example (`deploy/examples/rbac`): refused without credentials (401) and for a
//! developer (403); for the system admin, repositories a page at a time, tags with
//! digests, sizes, platforms and referrers, a manifest with its layers, deletes that are
//! audited in the log; plugin and mirror counters. Then schemathesis checks the API
//! against its own OpenAPI document (`gateway/admin/openapi.json`, served at
//! `/api/v1/openapi.json`).
//!
//! Needs the binary (`cargo build -p pier-server`), the wasm32-wasip2 target and
//! schemathesis in the test venv (`scripts/install-test-deps.sh`); then
//! `cargo test -p pier-e2e --test admin_api`.

mod clients_support;
#[allow(dead_code)]
#[path = "auth_clients/support.rs"]
mod support;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;

use pier_e2e::{Response, descriptor, http, media, random_bytes, sha256_digest};
use serde_json::{Value, json};

use crate::support::{ADMIN, BOB, RbacPier, basic};

/// A request to `addr` with `Authorization: auth` when given.
fn call(addr: SocketAddr, method: &str, path: &str, auth: Option<(&str, &str)>) -> Response {
    let a = auth.map(basic);
    let headers: Vec<(&str, &str)> = a
        .as_deref()
        .map(|a| vec![("Authorization", a)])
        .unwrap_or_default();
    http::request(addr, method, path, &headers, b"")
}

/// `GET` on the admin API as the system admin; asserts 200 and returns the JSON.
#[track_caller]
fn admin_get(pier: &RbacPier, path: &str) -> Value {
    let r = call(pier.admin_addr, "GET", path, Some(ADMIN));
    r.expect_status(200, &format!("GET {path} as admin"));
    r.json()
}

/// Pushes a blob with the admin's basic credentials; returns its digest.
#[track_caller]
fn push_blob(pier: &RbacPier, repo: &str, data: &[u8]) -> String {
    let digest = sha256_digest(data);
    let auth = basic(ADMIN);
    http::request(
        pier.addr,
        "POST",
        &format!("/v2/{repo}/blobs/uploads/?digest={digest}"),
        &[
            ("Authorization", &auth),
            ("Content-Type", "application/octet-stream"),
        ],
        data,
    )
    .expect_status(201, &format!("push blob to {repo}"));
    digest
}

/// Pushes a manifest with the admin's basic credentials; returns its digest.
#[track_caller]
fn push_manifest(
    pier: &RbacPier,
    repo: &str,
    reference: Option<&str>,
    mt: &str,
    body: &Value,
) -> (String, Vec<u8>) {
    let bytes = serde_json::to_vec(body).unwrap();
    let digest = sha256_digest(&bytes);
    let auth = basic(ADMIN);
    http::request(
        pier.addr,
        "PUT",
        &format!("/v2/{repo}/manifests/{}", reference.unwrap_or(&digest)),
        &[("Authorization", &auth), ("Content-Type", mt)],
        &bytes,
    )
    .expect_status(201, &format!("push manifest to {repo}"));
    (digest, bytes)
}

/// An image with a random config and `layers`; returns (digest, manifest bytes).
#[track_caller]
fn push_image(
    pier: &RbacPier,
    repo: &str,
    tag: Option<&str>,
    layers: &[&[u8]],
) -> (String, Vec<u8>) {
    let config = format!(
        "{{\"architecture\":\"amd64\",\"os\":\"linux\",\"nonce\":\"{}\"}}",
        sha256_digest(&random_bytes(8))
    )
    .into_bytes();
    push_blob(pier, repo, &config);
    let mut descs = Vec::new();
    for l in layers {
        push_blob(pier, repo, l);
        descs.push(descriptor(media::OCI_LAYER, l));
    }
    let m = json!({
        "schemaVersion": 2,
        "mediaType": media::OCI_MANIFEST,
        "config": descriptor(media::OCI_CONFIG, &config),
        "layers": descs,
    });
    push_manifest(pier, repo, tag, media::OCI_MANIFEST, &m)
}

/// What [`seed`] pushed.
struct Seeded {
    v1: (String, Vec<u8>),
    v2: (String, Vec<u8>),
    index: String,
}

/// team/app:v1 (2 layers, 1 referrer), team/app:v2, team/multi:latest (an index of
/// linux/amd64 and linux/arm64), library/base:1.0.
fn seed(pier: &RbacPier) -> Seeded {
    let v1 = push_image(
        pier,
        "team/app",
        Some("v1"),
        &[&random_bytes(1000), &random_bytes(234)],
    );
    let v2 = push_image(pier, "team/app", Some("v2"), &[&random_bytes(10)]);
    // A signature-like referrer of v1.
    push_blob(pier, "team/app", b"{}");
    let subject = json!({"mediaType": media::OCI_MANIFEST, "digest": v1.0, "size": v1.1.len()});
    push_manifest(
        pier,
        "team/app",
        None,
        media::OCI_MANIFEST,
        &json!({
            "schemaVersion": 2,
            "mediaType": media::OCI_MANIFEST,
            "artifactType": "application/vnd.example.signature",
            "config": descriptor(media::OCI_EMPTY, b"{}"),
            "layers": [descriptor(media::OCI_EMPTY, b"{}")],
            "subject": subject,
        }),
    );
    let amd = push_image(pier, "team/multi", None, &[&random_bytes(50)]);
    let arm = push_image(pier, "team/multi", None, &[&random_bytes(60)]);
    let child = |m: &(String, Vec<u8>), arch: &str| {
        json!({"mediaType": media::OCI_MANIFEST, "digest": m.0, "size": m.1.len(),
               "platform": {"os": "linux", "architecture": arch}})
    };
    let (index, _) = push_manifest(
        pier,
        "team/multi",
        Some("latest"),
        media::OCI_INDEX,
        &json!({
            "schemaVersion": 2,
            "mediaType": media::OCI_INDEX,
            "manifests": [child(&amd, "amd64"), child(&arm, "arm64")],
        }),
    );
    push_image(pier, "library/base", Some("1.0"), &[&random_bytes(5)]);
    Seeded { v1, v2, index }
}

#[test]
fn admin_api_lists_inspects_and_deletes_with_audit() {
    let pier = RbacPier::start();
    let seeded = seed(&pier);
    let admin = pier.admin_addr;

    // The document needs no credentials.
    let r = call(admin, "GET", "/api/v1/openapi.json", None);
    r.expect_status(200, "openapi.json without credentials");
    assert_eq!(r.json()["openapi"], "3.0.3", "{r}");

    // Unauthenticated: 401 with a Basic challenge; a developer: 403; both JSON.
    let r = call(admin, "GET", "/api/v1/repositories", None);
    r.expect_status(401, "no credentials");
    assert!(
        r.header("www-authenticate")
            .unwrap_or_default()
            .starts_with("Basic"),
        "{r}"
    );
    assert!(r.json()["error"].is_string(), "{r}");
    let r = call(
        admin,
        "GET",
        "/api/v1/repositories",
        Some(("admin", "wrong")),
    );
    r.expect_status(401, "wrong password");
    for path in [
        "/api/v1/repositories",
        "/api/v1/repositories/team/app/-/tags",
        "/api/v1/plugins",
        "/api/v1/mirror",
    ] {
        let r = call(admin, "GET", path, Some(BOB));
        r.expect_status(403, &format!("developer on {path}"));
        assert!(r.json()["error"].is_string(), "{r}");
    }
    let r = call(
        admin,
        "DELETE",
        "/api/v1/repositories/team/app/-/tags/v1",
        Some(BOB),
    );
    r.expect_status(403, "developer deleting a tag");

    // Repositories: all, filtered, and a page at a time.
    let all = admin_get(&pier, "/api/v1/repositories");
    let names = |v: &Value| -> Vec<String> {
        v["repositories"]
            .as_array()
            .unwrap()
            .iter()
            .map(|r| r["name"].as_str().unwrap().to_owned())
            .collect()
    };
    assert_eq!(
        names(&all),
        ["library/base", "team/app", "team/multi"],
        "{all}"
    );
    assert!(all["next"].is_null(), "{all}");
    let team = admin_get(&pier, "/api/v1/repositories?q=team");
    assert_eq!(names(&team), ["team/app", "team/multi"], "{team}");
    let mut walked = Vec::new();
    let mut path = "/api/v1/repositories?n=1".to_owned();
    loop {
        let r = call(admin, "GET", &path, Some(ADMIN));
        r.expect_status(200, &path);
        let v = r.json();
        assert_eq!(v["repositories"].as_array().unwrap().len(), 1, "{v}");
        walked.extend(names(&v));
        match v["next"].as_str() {
            Some(next) => {
                assert_eq!(
                    r.header("link"),
                    Some(format!("<{next}>; rel=\"next\"").as_str()),
                    "{r}"
                );
                path = next.to_owned();
            }
            None => break,
        }
        assert!(walked.len() <= 3, "pagination does not end: {walked:?}");
    }
    assert_eq!(walked, names(&all));
    call(admin, "GET", "/api/v1/repositories?n=1001", Some(ADMIN))
        .expect_status(400, "n over the bound");
    call(admin, "GET", "/api/v1/repositories?n=0", Some(ADMIN)).expect_status(400, "n=0");

    // Tags with digest, size (manifest + layers) and referrers.
    let tags = admin_get(&pier, "/api/v1/repositories/team/app/-/tags");
    let t = tags["tags"].as_array().unwrap();
    assert_eq!(t.len(), 2, "{tags}");
    assert_eq!(t[0]["name"], "v1");
    assert_eq!(t[0]["digest"], seeded.v1.0.as_str());
    assert_eq!(t[0]["mediaType"], media::OCI_MANIFEST);
    assert_eq!(
        t[0]["size"],
        seeded.v1.1.len() as u64 + 1000 + 234,
        "{tags}"
    );
    assert_eq!(t[0]["referrers"], 1, "{tags}");
    assert_eq!(t[0]["platforms"], json!([]));
    assert_eq!(t[1]["name"], "v2");
    assert_eq!(t[1]["digest"], seeded.v2.0.as_str());
    assert_eq!(t[1]["referrers"], 0);
    // Percent-encoded names work the same.
    let enc = admin_get(&pier, "/api/v1/repositories/team%2Fapp/-/tags?n=1");
    assert_eq!(enc["tags"].as_array().unwrap().len(), 1, "{enc}");
    assert_eq!(
        enc["next"],
        "/api/v1/repositories/team/app/-/tags?n=1&last=v1"
    );
    // An index: its children's platforms.
    let multi = admin_get(&pier, "/api/v1/repositories/team/multi/-/tags");
    assert_eq!(multi["tags"][0]["digest"], seeded.index.as_str(), "{multi}");
    assert_eq!(multi["tags"][0]["mediaType"], media::OCI_INDEX);
    assert_eq!(
        multi["tags"][0]["platforms"],
        json!(["linux/amd64", "linux/arm64"]),
        "{multi}"
    );

    // One manifest: layers, referrers, tags.
    let m = admin_get(&pier, "/api/v1/repositories/team/app/-/manifests/v1");
    assert_eq!(m["digest"], seeded.v1.0.as_str(), "{m}");
    assert_eq!(m["layers"].as_array().unwrap().len(), 2, "{m}");
    assert_eq!(m["layers"][0]["size"], 1000);
    assert_eq!(m["tags"], json!(["v1"]));
    assert_eq!(m["referrers"].as_array().unwrap().len(), 1, "{m}");
    assert_eq!(
        m["referrers"][0]["artifactType"],
        "application/vnd.example.signature"
    );
    assert_eq!(m["manifest"]["schemaVersion"], 2);
    let by_digest = admin_get(
        &pier,
        &format!("/api/v1/repositories/team/app/-/manifests/{}", seeded.v1.0),
    );
    assert_eq!(by_digest["digest"], seeded.v1.0.as_str());

    // Errors: JSON with the right status.
    for (method, path, status) in [
        ("GET", "/api/v1/repositories/Bad_Name/-/tags", 400),
        ("GET", "/api/v1/repositories/team/nothing/-/tags", 404),
        ("GET", "/api/v1/repositories/team/app/-/manifests/nope", 404),
        (
            "DELETE",
            "/api/v1/repositories/team/app/-/manifests/v1",
            400,
        ),
        ("POST", "/api/v1/repositories", 405),
        ("GET", "/api/v1/repositories?limit=5", 400),
        ("GET", "/api/v1/mirror?x=1", 400),
        ("GET", "/api/v1/repositories/team/app/-/tags/v1", 405),
        ("GET", "/api/v1/nothing", 404),
    ] {
        let r = call(admin, method, path, Some(ADMIN));
        r.expect_status(status, &format!("{method} {path}"));
        assert!(r.json()["error"].is_string(), "{r}");
        if status == 405 {
            assert!(r.header("allow").is_some(), "{r}");
        }
    }

    // Deletes: a tag, then a manifest by digest; both audited.
    let r = call(
        admin,
        "DELETE",
        "/api/v1/repositories/team/app/-/tags/v2",
        Some(ADMIN),
    );
    r.expect_status(200, "delete tag v2");
    assert_eq!(r.json()["kind"], "tag");
    let tags = admin_get(&pier, "/api/v1/repositories/team/app/-/tags");
    assert_eq!(tags["tags"].as_array().unwrap().len(), 1, "{tags}");
    call(
        admin,
        "DELETE",
        "/api/v1/repositories/team/app/-/tags/v2",
        Some(ADMIN),
    )
    .expect_status(404, "delete tag v2 again");
    // The manifest itself is still there by digest.
    admin_get(
        &pier,
        &format!("/api/v1/repositories/team/app/-/manifests/{}", seeded.v2.0),
    );
    let r = call(
        admin,
        "DELETE",
        &format!("/api/v1/repositories/team/app/-/manifests/{}", seeded.v1.0),
        Some(ADMIN),
    );
    r.expect_status(200, "delete manifest v1");
    call(
        admin,
        "GET",
        &format!("/api/v1/repositories/team/app/-/manifests/{}", seeded.v1.0),
        Some(ADMIN),
    )
    .expect_status(404, "deleted manifest");
    let tags = admin_get(&pier, "/api/v1/repositories/team/app/-/tags");
    assert_eq!(
        tags["tags"],
        json!([]),
        "deleting v1's manifest removed its tag"
    );
    let log = std::fs::read_to_string(pier.log_path()).unwrap_or_default();
    let audit: Vec<&str> = log
        .lines()
        .filter(|l| l.contains("audit") && l.contains("admin API change"))
        .collect();
    assert!(
        audit.iter().any(|l| l.contains("actor=admin")
            && l.contains("action=\"delete_tag\"")
            && l.contains("repository=team/app")
            && l.contains("reference=v2")
            && l.contains("result=ok")),
        "no audit line for the tag delete:\n{}",
        audit.join("\n")
    );
    assert!(
        audit
            .iter()
            .any(|l| l.contains("action=\"delete_manifest\"")
                && l.contains(&format!("reference={}", seeded.v1.0))),
        "no audit line for the manifest delete:\n{}",
        audit.join("\n")
    );
    assert!(
        !audit.iter().any(|l| l.contains("actor=bob")),
        "refused calls change nothing and are not audited as changes"
    );

    // Plugins: the RBAC authorizer with its calls and the developer's denials.
    let p = admin_get(&pier, "/api/v1/plugins");
    let rbac = &p["plugins"][0];
    assert_eq!(rbac["name"], "rbac", "{p}");
    assert_eq!(rbac["world"], "authorizer");
    assert!(
        rbac["digest"].as_str().unwrap().starts_with("sha256:"),
        "{p}"
    );
    assert!(rbac["calls"].as_u64().unwrap() > 0, "{p}");
    assert!(rbac["denials"].as_u64().unwrap() >= 5, "{p}");
    assert_eq!(rbac["errors"]["trap"], 0, "{p}");
    // No upstreams: the mirror is off, its counters zero.
    let m = admin_get(&pier, "/api/v1/mirror");
    assert_eq!(m["enabled"], false, "{m}");
    assert_eq!(m["blobHits"], 0);
}

/// `schemathesis`: `$PIER_SCHEMATHESIS`, else the test venv's
/// (`${PIER_CACHE:-$HOME/.cache/pier}/venv/bin/schemathesis`).
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
    assert!(
        bin.exists(),
        "no schemathesis at {} (run scripts/install-test-deps.sh or set PIER_SCHEMATHESIS)",
        bin.display()
    );
    bin
}

#[test]
fn admin_api_conforms_to_its_openapi_document() {
    // schemathesis sends wrong credentials on purpose, hundreds of times, and expects 401
    // for each, as a password guesser would: the failed-login throttle (tested in
    // auth_clients/throttle.rs) would answer 429, and then refuse its right ones too.
    let pier = RbacPier::start_with(
        None,
        "",
        "[auth.throttle]\naccount_failures = 1000000\naddress_failures = 1000000\n",
    );
    seed(&pier);
    let reports = clients_support::temp_dir("schemathesis");
    let url = format!("{}/api/v1/openapi.json", pier.admin_url());
    let mut cmd = Command::new(schemathesis());
    // Every check; a fresh seed each run (printed, with a replay command, on failure).
    // About 1,500 requests, 15-20 s here; the run is killed after 180 s.
    cmd.args(["run", &url, "--checks", "all", "--max-examples", "100"])
        .args(["--auth", &support::creds(ADMIN)])
        // One worker: Debian's Python 3.11 races in ast.parse when two threads build
        // hypothesis's strategy descriptions at once (CPython gh-106905: "AST constructor
        // recursion depth mismatch", reported by schemathesis as a Runtime Error).
        .args(["--workers", "1", "--request-timeout", "10", "--no-color"])
        .args(["--suppress-health-check", "all"])
        .args(["--generation-database", "none"])
        // Credentials come from --auth; generating Authorization values as parameters
        // would make schemathesis expect refusals for requests --auth then fixes.
        .args(["--generation-with-security-parameters", "false"])
        .arg("--report-dir")
        .arg(reports.path())
        .current_dir(reports.path())
        .env("NO_COLOR", "1");
    let mut o = clients_support::run(&mut cmd, Duration::from_secs(180));
    // schemathesis 4.32.5 sometimes crashes inside its own coverage phase (a KeyError
    // in its schema walker, reported as an error, not a failed check): run it once more
    // then. A failed check (❌) is never retried.
    let tool_crashed = |o: &clients_support::Output| {
        !o.success() && o.stdout.contains("KeyError") && !o.stdout.contains("❌")
    };
    if tool_crashed(&o) {
        println!(
            "schemathesis crashed internally; running it again\n{}",
            o.stdout
        );
        o = clients_support::run(&mut cmd, Duration::from_secs(180));
    }
    let summary: Vec<&str> = o
        .stdout
        .lines()
        .filter(|l| {
            l.contains("passed")
                || l.contains("failed")
                || l.contains("generated")
                || l.contains("Selected:")
                || l.contains("Tested:")
        })
        .collect();
    println!("schemathesis summary:\n{}", summary.join("\n"));
    assert!(
        o.success(),
        "schemathesis found problems\n$ {}\n--- stdout\n{}\n--- stderr\n{}",
        o.cmdline,
        o.stdout,
        o.stderr
    );
    // Every operation was tested but the document's own, which schemathesis leaves out
    // as the schema's location.
    let doc: Value = serde_json::from_str(include_str!("../../gateway/admin/openapi.json"))
        .expect("the document");
    let operations = doc["paths"]
        .as_object()
        .expect("paths")
        .values()
        .map(|p| {
            p.as_object().map_or(0, |m| {
                // Path-level `parameters` are not an operation.
                m.keys().filter(|k| *k != "parameters").count()
            })
        })
        .sum::<usize>()
        - 1;
    assert!(
        o.stdout
            .contains(&format!("Selected: {operations}/{operations}"))
            && o.stdout.contains(&format!("Tested: {operations}")),
        "schemathesis did not test every operation ({operations})\n{o}"
    );
    let log = std::fs::read_to_string(pier.log_path()).unwrap_or_default();
    assert!(
        !log.contains("admin API failed"),
        "the API logged an internal error\n{}",
        pier.log_tail(50)
    );
}

/// Runs `pier ARGS --admin URL [--creds ...]`; (exit success, stdout, stderr).
fn cli(pier: &RbacPier, args: &[&str], creds: Option<(&str, &str)>) -> (bool, String, String) {
    pier_e2e::admin_cli(pier.admin_addr, args, creds)
}

#[test]
fn the_cli_lists_and_deletes_through_the_admin_api() {
    let pier = RbacPier::start();
    let seeded = seed(&pier);

    let (ok, out, err) = cli(&pier, &["repos", "list"], Some(ADMIN));
    assert!(ok, "pier repos list: {err}");
    let names: Vec<&str> = out.lines().collect();
    assert_eq!(names, ["library/base", "team/app", "team/multi"], "{out}");
    let (ok, out, err) = cli(
        &pier,
        &["repos", "list", "--filter", "team", "--n", "1"],
        Some(ADMIN),
    );
    assert!(ok, "{err}");
    assert_eq!(out.trim(), "team/app", "first page of one");
    assert!(
        err.contains("--last team/app"),
        "how to get the next page: {err}"
    );

    let (ok, out, err) = cli(&pier, &["repos", "tags", "team/app"], Some(ADMIN));
    assert!(ok, "{err}");
    assert!(out.contains(&format!("v1\t{}", seeded.v1.0)), "{out}");
    assert!(out.contains(&format!("v2\t{}", seeded.v2.0)), "{out}");
    let (ok, out, _) = cli(&pier, &["repos", "tags", "team/multi"], Some(ADMIN));
    assert!(ok && out.contains("linux/amd64,linux/arm64"), "{out}");

    // Refusals come back as the API's answer, with a non-zero exit.
    let (ok, _, err) = cli(&pier, &["repos", "list"], None);
    assert!(!ok && err.contains("401"), "{err}");
    let (ok, _, err) = cli(&pier, &["repos", "list"], Some(BOB));
    assert!(!ok && err.contains("403"), "{err}");

    let (ok, out, err) = cli(&pier, &["repos", "delete", "team/app:v2"], Some(ADMIN));
    assert!(ok, "{err}");
    assert!(out.contains("deleted tag v2 from team/app"), "{out}");
    let (ok, out, err) = cli(
        &pier,
        &["repos", "delete", &format!("team/multi@{}", seeded.index)],
        Some(ADMIN),
    );
    assert!(ok, "{err}");
    assert!(out.contains("deleted manifest"), "{out}");
    let (_, out, _) = cli(&pier, &["repos", "tags", "team/app"], Some(ADMIN));
    assert!(out.contains("v1\t") && !out.contains("v2\t"), "{out}");
    let (_, out, _) = cli(&pier, &["repos", "tags", "team/multi"], Some(ADMIN));
    assert!(!out.contains("latest"), "{out}");
}
