//! Repository names: invalid names are refused and never reach the file system.

use super::*;

/// Names the grammar refuses outright: `400 NAME_INVALID` on every route.
const INVALID: [&str; 7] = ["UPPER/x", "abc-", "-abc", "a%2Fb", "a..b", "a___b", "a%20b"];

/// Names that look like paths. Pier matches them as names and refuses them with
/// `400 NAME_INVALID` too (a 404 from the router would also be safe, but is not what
/// Pier does, so a change shows up here).
const PATHLIKE: [&str; 6] = ["a//b", "../etc", "a/%2e%2e/b", "a/../b", "./a", "a/./b"];

fn routes(name: &str) -> Vec<(&'static str, String)> {
    let d = sha256_digest(b"names");
    let mut routes = vec![
        ("GET", format!("/v2/{name}/tags/list")),
        ("GET", format!("/v2/{name}/manifests/latest")),
        ("HEAD", format!("/v2/{name}/manifests/latest")),
        ("PUT", format!("/v2/{name}/manifests/latest")),
        ("GET", format!("/v2/{name}/blobs/{d}")),
        ("POST", format!("/v2/{name}/blobs/uploads/")),
        ("POST", format!("/v2/{name}/blobs/uploads/?digest={d}")),
        ("GET", format!("/v2/{name}/referrers/{d}")),
        ("DELETE", format!("/v2/{name}/manifests/{d}")),
        ("DELETE", format!("/v2/{name}/blobs/{d}")),
        (
            "GET",
            format!("/v2/{name}/blobs/uploads/3f0b6c8e-6a4f-4c52-9a49-0d1b7d0e9f11"),
        ),
        (
            "PATCH",
            format!("/v2/{name}/blobs/uploads/3f0b6c8e-6a4f-4c52-9a49-0d1b7d0e9f11"),
        ),
    ];
    // in a query string %2F is a legitimate encoding of '/', so `from=a%2Fb` names a/b
    if name != "a%2Fb" {
        routes.push((
            "POST",
            format!("/v2/x/blobs/uploads/?mount={d}&from={name}"),
        ));
    }
    routes
}

fn manifest_body() -> Vec<u8> {
    oci_manifest(b"{}", &[], serde_json::json!({}))
}

#[test]
fn invalid_names_are_name_invalid() {
    let p = TestPier::start();
    let body = manifest_body();
    for name in INVALID {
        for (method, path) in routes(name) {
            let b: &[u8] = if method == "PUT" || path.contains("digest=") {
                &body
            } else {
                b""
            };
            let r = p.request(method, &path, &[("Content-Type", media::OCI_MANIFEST)], b);
            if method == "HEAD" {
                r.expect_status(400, &format!("{method} {path}"));
            } else {
                r.expect_error(400, "NAME_INVALID", &format!("{method} {path}"));
            }
        }
    }
    let long = format!("a/{}", "b".repeat(260));
    p.get(&format!("/v2/{long}/tags/list")).expect_error(
        400,
        "NAME_INVALID",
        "a name over 255 characters",
    );
}

#[test]
fn pathlike_names_never_escape_the_root() {
    // root two levels below the temp dir, so escapes land in the temp dir
    let outer = tempfile::tempdir().unwrap();
    let root = outer.path().join("a").join("b").join("root");
    std::fs::create_dir_all(&root).unwrap();
    let p = TestPier::builder().root(&root).start();
    let body = manifest_body();
    let mut seen = Vec::new();
    let evil_names: Vec<String> = PATHLIKE
        .iter()
        .map(|s| s.to_string())
        .chain([
            "../../evil".to_string(),
            "..%2F..%2Fevil".to_string(),
            "%2e%2e/%2e%2e/evil".to_string(),
            "a/%2e%2e/%2e%2e/%2e%2e/evil".to_string(),
        ])
        .collect();
    for name in &evil_names {
        for (method, path) in routes(name) {
            let b: &[u8] = if method == "PUT" || path.contains("digest=") {
                &body
            } else {
                b""
            };
            let r = p.request(method, &path, &[("Content-Type", media::OCI_MANIFEST)], b);
            if method == "HEAD" {
                r.expect_status(400, &format!("{method} {path}"));
            } else {
                r.expect_error(400, "NAME_INVALID", &format!("{method} {path}"));
            }
            seen.push(format!("{method} {path} -> {}", r.status));
        }
    }
    // nothing was written outside the root
    let outside: Vec<_> = paths_under(outer.path())
        .into_iter()
        .filter(|x| !x.starts_with(&root) && !x.ends_with("a") && !x.ends_with("a/b"))
        .collect();
    assert!(
        outside.is_empty(),
        "files appeared outside the root: {outside:?}\nrequests: {seen:#?}"
    );
    let evil: Vec<_> = paths_under(outer.path())
        .into_iter()
        .filter(|x| x.to_string_lossy().contains("evil") || x.to_string_lossy().contains("%2"))
        .collect();
    assert!(evil.is_empty(), "paths from refused names exist: {evil:?}");
    let catalog = p.get("/v2/_catalog");
    catalog.expect_status(200, "_catalog");
    assert_eq!(
        catalog.json()["repositories"],
        serde_json::json!([]),
        "refused names became repositories\n{catalog}"
    );
}

#[test]
fn valid_unusual_names_work() {
    let p = TestPier::start();
    for name in [
        "a",
        "a/b/c/d/e",
        "foo.bar",
        "foo_bar",
        "foo__bar",
        "foo---bar",
        "0/1",
    ] {
        let d = push_blob(p.addr, name, name.as_bytes());
        assert_blob(p.addr, name, &d, name.as_bytes());
    }
}
