//! The hostile plugin as Pier's authorizer: every kind of misbehaviour fails the request
//! closed (503 UNAVAILABLE naming the plugin), is counted and logged, and leaves the
//! process and the next request unharmed. Files that are not components are refused at
//! start and by `pier plugin check`.

use std::ffi::OsStr;
use std::fs;
use std::path::Path;
use std::time::Duration;

use pier_e2e::{TestPier, free_port, http};
use tempfile::TempDir;

use crate::support::{basic, error_message, log_lines, metric, pier_run, token_request};

/// The modes that make the plugin fail, with the failure kind Pier reports.
const FAILING: [(&str, &str); 5] = [
    ("loop", "timeout"),
    ("membomb", "out_of_memory"),
    ("panic", "trap"),
    ("stack", "trap"),
    ("garbage", "invalid_result"),
];

/// A config using `wasm` as the authorizer "hostile" (250 ms, 16 MiB, log only) and a
/// users file beside it. The deadline leaves the memory bomb time to reach the cap on a
/// loaded 2-core machine (at 50 ms it sometimes timed out first: a flaky classification).
fn hostile_config(dir: &Path, wasm: &Path) -> std::path::PathBuf {
    let cfg = dir.join("pier.toml");
    fs::write(
        &cfg,
        format!(
            "[auth]\nusers_file = \"users.htpasswd\"\n\n\
             [[plugins]]\nname = \"hostile\"\nhook = \"authorizer\"\npath = {:?}\n\
             timeout = \"250ms\"\nmemory_limit = \"16MiB\"\ngrants = [\"log\"]\n",
            wasm.display().to_string()
        ),
    )
    .unwrap();
    cfg
}

#[test]
fn hostile_plugin_fails_closed_and_pier_survives() {
    let wasm = &pier_e2e::plugins::build().hostile;
    let dir = TempDir::new().unwrap();
    let cfg = hostile_config(dir.path(), wasm);
    let add = pier_run(
        &[
            OsStr::new("user"),
            OsStr::new("add"),
            OsStr::new("u"),
            OsStr::new("--password-stdin"),
            OsStr::new("--config"),
            cfg.as_os_str(),
        ],
        "u-pass\n",
        Duration::from_secs(60),
    );
    assert!(add.success(), "pier user add\n{add}");
    assert!(
        fs::read_to_string(dir.path().join("users.htpasswd"))
            .unwrap()
            .starts_with("u:$2"),
        "users file has u with a bcrypt hash"
    );

    let mut pier = TestPier::builder().arg("--config").arg(&cfg).start();
    let auth = basic("u", "u-pass");
    for (mode, kind) in FAILING {
        let repo = format!("{mode}/x");
        let r = http::request(
            pier.addr,
            "GET",
            &format!("/v2/{repo}/manifests/latest"),
            &[("Authorization", &auth)],
            b"",
        );
        r.expect_error(503, "UNAVAILABLE", &format!("GET {repo} manifest"));
        r.expect_header("retry-after", "1", mode);
        let msg = r.json()["errors"][0]["message"]
            .as_str()
            .unwrap()
            .to_owned();
        assert!(
            msg.contains("\"hostile\"") && msg.contains(&format!("({kind})")),
            "{mode}: the message names the plugin and the failure: {msg}"
        );
        assert!(pier.is_running(), "pier died on {mode}");

        let t = token_request(
            pier.addr,
            Some(("u", "u-pass")),
            &format!("repository:{repo}:pull"),
        );
        t.expect_error(503, "UNAVAILABLE", &format!("token for {repo}"));
        assert!(error_message(&t).contains("\"hostile\""), "{mode}: {t}");
        assert!(pier.is_running(), "pier died on the token for {mode}");

        // The next request gets a healthy instance: authorized, nothing there.
        let ok = http::request(
            pier.addr,
            "GET",
            "/v2/ok/x/manifests/latest",
            &[("Authorization", &auth)],
            b"",
        );
        ok.expect_status(404, &format!("ok/x right after {mode}"));
        let code = ok.error_code().unwrap_or_default();
        assert!(
            code == "MANIFEST_UNKNOWN" || code == "NAME_UNKNOWN",
            "after {mode}: {ok}"
        );
    }

    // bigreason: a 1 MiB deny reason full of control characters arrives tidy and short.
    let r = http::request(
        pier.addr,
        "GET",
        "/v2/bigreason/x/manifests/latest",
        &[("Authorization", &auth)],
        b"",
    );
    r.expect_error(403, "DENIED", "bigreason");
    let msg = r.json()["errors"][0]["message"]
        .as_str()
        .unwrap()
        .to_owned();
    assert!(
        msg.len() <= 300,
        "a deny reason is cut short: {} bytes",
        msg.len()
    );
    assert!(
        msg.starts_with("requested access to the resource is denied: denied"),
        "{msg}"
    );
    assert!(
        !msg.chars().any(char::is_control),
        "no control characters: {msg:?}"
    );
    assert!(pier.is_running());

    // Counted per kind: each failing mode was called twice (registry request + token).
    let m = |kind: &str| {
        metric(
            &pier,
            &format!("pier_plugin_errors_total{{plugin=\"hostile\",kind=\"{kind}\"}}"),
        )
    };
    assert_eq!(m("timeout"), 2.0, "timeouts");
    assert_eq!(m("out_of_memory"), 2.0, "out of memory");
    assert_eq!(m("trap"), 4.0, "traps (panic and stack)");
    assert_eq!(m("invalid_result"), 2.0, "invalid results");
    assert_eq!(
        metric(&pier, "pier_plugin_traps_total{plugin=\"hostile\"}"),
        8.0
    );
    assert_eq!(
        metric(&pier, "pier_plugin_denials_total{plugin=\"hostile\"}"),
        1.0,
        "bigreason is a denial, not an error"
    );

    // One line per failure names the plugin and the kind.
    for (kind, n) in [
        ("timeout", 2),
        ("out_of_memory", 2),
        ("trap", 4),
        ("invalid_result", 2),
    ] {
        let lines = log_lines(
            &pier,
            &[
                "authorization failed closed",
                "plugin=hostile",
                &format!("kind=\"{kind}\""),
            ],
        );
        assert_eq!(
            lines.len(),
            n,
            "log lines for {kind}:\n{}",
            lines.join("\n")
        );
    }
    assert!(pier.is_running());
    pier.stop();
}

#[test]
fn a_file_that_is_not_a_component_is_refused() {
    let dir = TempDir::new().unwrap();
    let bad = dir.path().join("not-a-component.wasm");
    fs::write(&bad, pier_e2e::random_bytes(4096)).unwrap();
    let cfg = hostile_config(dir.path(), &bad);
    let listen = format!("127.0.0.1:{}", free_port());
    let admin = format!("127.0.0.1:{}", free_port());
    let root = dir.path().join("root");
    let out = pier_run(
        &[
            OsStr::new("serve"),
            OsStr::new("--config"),
            cfg.as_os_str(),
            OsStr::new("--listen"),
            OsStr::new(&listen),
            OsStr::new("--admin-listen"),
            OsStr::new(&admin),
            OsStr::new("--root"),
            root.as_os_str(),
        ],
        "",
        Duration::from_secs(60),
    );
    assert!(!out.success(), "pier serve must refuse to start\n{out}");
    let all = out.all();
    assert!(
        all.contains("plugin \"hostile\"") && all.contains(&bad.display().to_string()),
        "the error names the plugin and the file\n{out}"
    );
    assert!(all.contains("not a usable WebAssembly component"), "{out}");

    let check = pier_run(
        &[OsStr::new("plugin"), OsStr::new("check"), bad.as_os_str()],
        "",
        Duration::from_secs(60),
    );
    assert!(!check.success(), "plugin check on garbage\n{check}");
    assert!(check.all().contains(&bad.display().to_string()), "{check}");

    // A core module (not a component) and an empty component both fail the check.
    let core = dir.path().join("core.wasm");
    fs::write(&core, b"\0asm\x01\0\0\0").unwrap();
    let check = pier_run(
        &[OsStr::new("plugin"), OsStr::new("check"), core.as_os_str()],
        "",
        Duration::from_secs(60),
    );
    assert!(!check.success(), "plugin check on a core module\n{check}");
    let empty = dir.path().join("empty-component.wasm");
    fs::write(&empty, b"\0asm\x0d\0\x01\0").unwrap();
    let check = pier_run(
        &[OsStr::new("plugin"), OsStr::new("check"), empty.as_os_str()],
        "",
        Duration::from_secs(60),
    );
    assert_eq!(check.status.code(), Some(2), "an empty component\n{check}");
    assert!(
        check.stdout.contains("implements no pier:plugin world"),
        "{check}"
    );

    let rbac = &pier_e2e::plugins::build().rbac;
    let check = pier_run(
        &[OsStr::new("plugin"), OsStr::new("check"), rbac.as_os_str()],
        "",
        Duration::from_secs(60),
    );
    assert!(check.success(), "plugin check on rbac\n{check}");
    assert!(
        check.stdout.lines().any(|l| l
            == "implements: pier:plugin/authorizer@0.2.0, pier:plugin/managed-authorizer@0.2.0"),
        "{check}"
    );
    let imports: Vec<&str> = check
        .stdout
        .lines()
        .skip_while(|l| *l != "imports:")
        .skip(1)
        .take_while(|l| l.starts_with("  "))
        .map(str::trim)
        .collect();
    for i in [
        "pier:plugin/log@0.2.0",
        "pier:plugin/config@0.2.0",
        "pier:plugin/kv@0.2.0",
        "pier:plugin/ldap@0.2.0",
    ] {
        assert!(
            imports.contains(&i),
            "rbac imports {i}: {imports:?}\n{check}"
        );
    }
    assert!(
        !imports.iter().any(|i| i.starts_with("pier:plugin/http")),
        "rbac imports no http: {imports:?}"
    );
    let exports: Vec<&str> = check
        .stdout
        .lines()
        .skip_while(|l| *l != "exports:")
        .skip(1)
        .take_while(|l| l.starts_with("  "))
        .map(str::trim)
        .collect();
    assert_eq!(
        exports,
        ["authorize", "authenticate", "pier:plugin/projects@0.2.0"],
        "{check}"
    );
}
