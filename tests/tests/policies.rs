//! Admission plugins (`wit/admission.wit`) in a real `pier` process with real clients:
//! immutable tags (`plugins/immutable`) against docker pushes, the registry API's deletes
//! and the admin API's; signed images only (`plugins/signatures`) with cosign-layout
//! signatures made by openssl and Sigstore bundles made by sigstore-js, locally and in a
//! mirror.
//!
//! `cargo test -p pier-e2e --test policies` (needs the binary, dockerd and
//! `rustup target add wasm32-wasip2`).

mod clients_support;

#[path = "policies/cosign.rs"]
mod cosign;
#[path = "policies/quotas.rs"]
mod quotas;
#[path = "policies/retention.rs"]
mod retention;
#[path = "policies/signatures.rs"]
mod signatures;
// The mirror tests' upstream (docker-registry with its access log).
#[path = "mirror/support.rs"]
#[allow(dead_code)]
mod support;

use std::fs;
use std::path::Path;

use clients_support::*;
use pier_e2e::{TestPier, http, plugins};

/// A Pier whose `immutable` plugin keeps `v*` tags of project `team` (rule `releases`).
fn immutable_pier(dir: &Path) -> TestPier {
    let config = dir.join("pier.toml");
    fs::write(
        &config,
        format!(
            r#"
[[plugins]]
name = "immutable"
hook = "admission"
path = "{}"
grants = ["config", "log"]

[plugins.config]
rules = [{{ name = "releases", projects = ["team"], tags = ["v*"] }}]
"#,
            plugins::build().immutable.display()
        ),
    )
    .unwrap();
    TestPier::builder().arg("--config").arg(&config).start()
}

/// `docker import`s a fresh one-file rootfs as `reference`.
fn import(docker: &Dockerd, reference: &str) {
    let dir = temp_dir("docker-rootfs");
    let rootfs = dir.path().join("rootfs.tar");
    let salt = hex::encode(unique_bytes(16));
    fs::write(&rootfs, Tar::new().file("salt", salt.as_bytes()).finish()).unwrap();
    docker.ok(
        &["import", &rootfs.display().to_string(), reference],
        "docker import",
    );
}

fn digest_of(pier: &TestPier, repo: &str, tag: &str) -> String {
    let r = pier_e2e::get_manifest(pier.addr, repo, tag);
    r.expect_status(200, &format!("GET {repo}:{tag}"));
    pier_e2e::sha256_digest(&r.body)
}

#[test]
fn docker_cannot_move_or_delete_an_immutable_tag_and_other_tags_stay_free() {
    let dir = temp_dir("policies");
    let pier = immutable_pier(dir.path());
    let docker = Dockerd::start();
    let host = pier.host();
    let v1 = format!("{host}/team/app:v1");

    // The first push of v1 sets it.
    import(&docker, &v1);
    let first = pushed_digest(&docker.ok(&["push", &v1], "first push of v1"));
    assert_eq!(digest_of(&pier, "team/app", "v1"), first);
    // The same image again: nothing moves, so it is fine.
    docker.ok(&["push", &v1], "the same v1 pushed again");

    // Another image under v1: refused, the rule named, v1 unchanged.
    import(&docker, &v1);
    let o = run(docker.cmd().args(["push", &v1]), CMD_TIMEOUT);
    assert!(!o.success(), "moving v1 must fail\n{o}");
    let text = o.all();
    assert!(
        text.contains("denied") && text.contains("immutable") && text.contains("releases"),
        "docker shows why, with the rule\n{o}"
    );
    assert_eq!(digest_of(&pier, "team/app", "v1"), first, "v1 did not move");

    // Tags the rule does not name, and other projects, move freely.
    let latest = format!("{host}/team/app:latest");
    docker.ok(&["tag", &v1, &latest], "docker tag");
    let second = pushed_digest(&docker.ok(&["push", &latest], "push latest"));
    assert_ne!(second, first);
    let other = format!("{host}/other/app:v1");
    docker.ok(&["tag", &v1, &other], "docker tag other");
    docker.ok(&["push", &other], "push other/app:v1");
    import(&docker, &other);
    docker.ok(&["push", &other], "move other/app:v1");

    // Deletes: the tag, the manifest under it (registry API), the tag (admin API).
    for path in [
        "/v2/team/app/manifests/v1".to_owned(),
        format!("/v2/team/app/manifests/{first}"),
    ] {
        let r = http::request(pier.addr, "DELETE", &path, &[], b"");
        r.expect_status(403, &format!("DELETE {path}"));
        let e = &r.json()["errors"][0];
        assert_eq!(e["code"], "DENIED", "{r}");
        let message = e["message"].as_str().unwrap();
        assert!(
            message.contains("policy \"immutable\"") && message.contains("\"releases\""),
            "{message}"
        );
        assert_eq!(e["detail"]["policy"], "immutable", "{r}");
    }
    let r = http::request(
        pier.admin_addr,
        "DELETE",
        "/api/v1/repositories/team/app/-/tags/v1",
        &[],
        b"",
    );
    r.expect_status(403, "the admin API deleting v1");
    assert!(r.text().contains("immutable"), "{r}");
    assert_eq!(digest_of(&pier, "team/app", "v1"), first, "v1 still there");
    // A tag the rule does not name is deleted as usual.
    http::request(
        pier.addr,
        "DELETE",
        "/v2/team/app/manifests/latest",
        &[],
        b"",
    )
    .expect_status(202, "DELETE latest");

    // The operator sees each refusal, and the plugin's counters.
    let log = fs::read_to_string(pier.log_path()).unwrap();
    let denied = log
        .lines()
        .filter(|l| l.contains("admission denied"))
        .count();
    assert!(denied >= 4, "one log line per refusal, saw {denied}\n{log}");
    let r = http::request(pier.admin_addr, "GET", "/api/v1/plugins", &[], b"");
    r.expect_status(200, "GET /api/v1/plugins");
    let plugins = r.json();
    let p = plugins["plugins"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["name"] == "immutable")
        .cloned()
        .unwrap_or_else(|| panic!("immutable listed\n{plugins}"));
    assert_eq!(p["world"], "admission", "{p}");
    assert!(p["denials"].as_u64().unwrap() >= 4, "{p}");
}
