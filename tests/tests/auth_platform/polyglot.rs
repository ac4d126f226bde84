//! Authorizer plugins written in Python (componentize-py 0.25.1) and JavaScript
//! (componentize-js 0.23.0), from `plugins/polyglot`, in a real `pier serve`: the same
//! policy in both languages (pull for everyone; push and delete only for alice under
//! `alice/`; anything else denied with "polyglot: <action> not allowed for <who>").
//!
//! The components (12–18 MB, an interpreter inside) take 25–35 s to compile in a debug
//! `pier`: `pier plugin check --root` compiles each once into a compile cache kept in the
//! target directory between runs, and the server's root gets a copy, so it starts at
//! once (and the test exercises what `plugin check --root` is for).

use std::ffi::OsStr;
use std::path::Path;
use std::time::Duration;

use pier_e2e::{TestPier, http, polyglot};

use crate::support::{basic, error_message, pier_run};

/// Compiles `wasm` into the shared cache (a no-op when it is there) and copies its
/// compiled file into `root`'s compile cache.
fn seed_compile_cache(wasm: &Path, root: &Path) {
    let shared = pier_e2e::plugins::target_dir()
        .join("polyglot")
        .join("root");
    let out = pier_run(
        &[
            OsStr::new("plugin"),
            OsStr::new("check"),
            OsStr::new("--root"),
            shared.as_os_str(),
            wasm.as_os_str(),
        ],
        "",
        Duration::from_secs(300),
    );
    assert!(out.success(), "pier plugin check {}\n{out}", wasm.display());
    assert!(
        out.stdout
            .contains("implements: pier:plugin/authorizer@0.2.0"),
        "{out}"
    );
    let digest = out
        .stdout
        .split("sha256:")
        .nth(1)
        .and_then(|s| s.get(..64))
        .unwrap_or_else(|| panic!("no digest in\n{out}"))
        .to_owned();
    let from = shared.join("pier").join("plugin-cache");
    let to = root.join("pier").join("plugin-cache");
    std::fs::create_dir_all(&to).unwrap();
    let mut copied = 0;
    for e in std::fs::read_dir(&from).unwrap() {
        let p = e.unwrap().path();
        let name = p.file_name().unwrap().to_string_lossy().into_owned();
        if name.starts_with(&digest) && name.ends_with(".cwasm") {
            std::fs::copy(&p, to.join(&name)).unwrap();
            copied += 1;
        }
    }
    assert_eq!(copied, 1, "the compiled {digest} in {}", from.display());
}

fn policy_holds(wasm: &Path, name: &str) {
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("pier.toml");
    // 16 MiB: Python needs 12.3 MiB to instantiate, JavaScript 9.1 MiB.
    std::fs::write(
        &cfg,
        format!(
            "[auth]\nusers_file = \"users.htpasswd\"\n\n\
             [[plugins]]\nname = {name:?}\nhook = \"authorizer\"\npath = {:?}\n\
             timeout = \"1s\"\nmemory_limit = \"16MiB\"\nmax_instances = 4\n",
            wasm.display().to_string()
        ),
    )
    .unwrap();
    for (user, password) in [("alice", "alice-pass"), ("bob", "bob-pass")] {
        let args = ["user", "add", user, "--password-stdin", "--config"].map(OsStr::new);
        let mut args = args.to_vec();
        args.push(cfg.as_os_str());
        let add = pier_run(&args, &format!("{password}\n"), Duration::from_secs(60));
        assert!(add.success(), "pier user add {user}\n{add}");
    }
    let root = dir.path().join("root");
    seed_compile_cache(wasm, &root);
    let pier = TestPier::builder()
        .root(&root)
        .arg("--config")
        .arg(&cfg)
        .start();
    let (alice, bob) = (basic("alice", "alice-pass"), basic("bob", "bob-pass"));
    let call = |method: &str, path: &str, auth: &str| {
        http::request(pier.addr, method, path, &[("Authorization", auth)], b"")
    };
    let zero = format!("sha256:{}", "0".repeat(64));

    // allowed: the request reaches the registry
    call("GET", "/v2/alice/x/tags/list", &alice).expect_error(404, "NAME_UNKNOWN", "alice pull");
    call("GET", "/v2/bob/x/tags/list", &bob).expect_error(404, "NAME_UNKNOWN", "bob pull");
    call("POST", "/v2/alice/x/blobs/uploads/", &alice).expect_status(202, "alice push alice/x");
    call("DELETE", &format!("/v2/alice/x/manifests/{zero}"), &alice)
        .expect_status(404, "alice delete alice/x");

    // denied by the plugin, with its reason
    for (method, path, auth, reason) in [
        (
            "POST",
            "/v2/bob/x/blobs/uploads/".to_owned(),
            &alice,
            "polyglot: push not allowed for alice",
        ),
        (
            "POST",
            "/v2/alice/x/blobs/uploads/".to_owned(),
            &bob,
            "polyglot: push not allowed for bob",
        ),
        (
            "DELETE",
            format!("/v2/bob/x/manifests/{zero}"),
            &bob,
            "polyglot: delete not allowed for bob",
        ),
    ] {
        let r = call(method, &path, auth);
        r.expect_error(403, "DENIED", &format!("{method} {path}"));
        assert!(
            error_message(&r).ends_with(reason),
            "{method} {path}: {}",
            error_message(&r)
        );
    }

    // the token endpoint asks the plugin too: anonymous gets pull, not push
    let t = http::request(
        pier.addr,
        "GET",
        "/auth/token?service=pier&scope=repository:alice/x:pull,push",
        &[],
        b"",
    );
    t.expect_status(200, "anonymous token");
    let bearer = format!("Bearer {}", t.json()["token"].as_str().expect("token"));
    let r = call("POST", "/v2/alice/x/blobs/uploads/", &bearer);
    r.expect_status(401, "anonymous push with a pull-only token");
    assert!(
        r.text()
            .contains("polyglot: push not allowed for anonymous"),
        "{r}"
    );

    // no trap in all of it
    let metrics = http::request(pier.admin_addr, "GET", "/metrics", &[], b"").text();
    assert!(
        metrics
            .lines()
            .any(|l| l.starts_with("pier_plugin_traps_total")
                && l.contains(name)
                && l.ends_with(" 0")),
        "{metrics}"
    );
}

#[test]
fn python_authorizer_in_pier() {
    policy_holds(&polyglot::build().python, "polyglot-py");
}

#[test]
fn javascript_authorizer_in_pier() {
    policy_holds(&polyglot::build().javascript, "polyglot-js");
}
