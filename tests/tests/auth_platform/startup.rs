//! Starting with plugins: the listeners answer while plugins compile (`/healthz` 200,
//! `/readyz` 503, registry requests 503 `UNAVAILABLE` with `Retry-After`), and
//! `pier plugin check --root` leaves the compiled component in the compile cache that
//! `pier serve` then loads without compiling.

use std::ffi::OsStr;
use std::fs;
use std::time::{Duration, Instant};

use pier_e2e::{TestPier, http};
use tempfile::TempDir;

use crate::support::{log_of, pier_run, wait_for};

fn config(dir: &std::path::Path, root: &std::path::Path) -> std::path::PathBuf {
    let cfg = dir.join("pier.toml");
    fs::write(
        &cfg,
        format!(
            "root = {:?}\n\n[[plugins]]\nname = \"rbac\"\nhook = \"authorizer\"\npath = {:?}\n\
             grants = [\"log\", \"config\"]\n",
            root.display().to_string(),
            pier_e2e::plugins::build().rbac.display().to_string()
        ),
    )
    .unwrap();
    cfg
}

#[test]
fn probes_answer_while_plugins_compile() {
    let dir = TempDir::new().unwrap();
    let root = dir.path().join("root");
    let cfg = config(dir.path(), &root);
    // A compile made 4 s longer (a fail point): the window a big plugin opens.
    let mut pier = TestPier::builder()
        .root(&root)
        .arg("--config")
        .arg(&cfg)
        .env("FAILPOINTS", "plugin-precompile=return(4000)")
        .start_unready();
    let up = Instant::now();
    let mut healthz = None;
    while up.elapsed() < Duration::from_secs(3) {
        if let Ok(r) = http::try_request(pier.admin_addr, "GET", "/healthz", &[], b"") {
            healthz = Some(r);
            break;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let healthz = healthz.expect("/healthz answered within 3 s of the start");
    healthz.expect_status(200, "admin /healthz while compiling");
    assert!(
        !log_of(&pier).contains("plugin loaded"),
        "answered before the plugin was loaded\n{}",
        log_of(&pier)
    );
    http::request(pier.addr, "GET", "/healthz", &[], b"")
        .expect_status(200, "registry /healthz while compiling");
    http::request(pier.admin_addr, "GET", "/readyz", &[], b"")
        .expect_status(503, "admin /readyz while compiling");
    let r = http::request(pier.addr, "GET", "/v2/", &[], b"");
    r.expect_error(503, "UNAVAILABLE", "GET /v2/ while compiling");
    r.expect_header("retry-after", "5", "GET /v2/ while compiling");
    assert!(r.text().contains("starting"), "{r}");
    assert!(pier.is_running());

    wait_for("pier ready", Duration::from_secs(60), || {
        http::try_request(pier.admin_addr, "GET", "/readyz", &[], b"")
            .is_ok_and(|r| r.status == 200)
    });
    // the registry itself now: token auth's challenge
    http::request(pier.addr, "GET", "/v2/", &[], b"").expect_status(401, "GET /v2/ once ready");
    assert!(log_of(&pier).contains("plugin loaded"), "{}", log_of(&pier));
}

#[test]
fn plugin_check_fills_the_compile_cache_serve_uses() {
    let dir = TempDir::new().unwrap();
    let root = dir.path().join("root");
    let cfg = config(dir.path(), &root);
    let rbac = pier_e2e::plugins::build().rbac.clone();
    let check = |extra: &[&OsStr]| {
        let mut args = vec![OsStr::new("plugin"), OsStr::new("check")];
        args.extend_from_slice(extra);
        args.push(rbac.as_os_str());
        let out = pier_run(&args, "", Duration::from_secs(120));
        assert!(out.success(), "pier plugin check\n{out}");
        out.stdout
    };
    let out = check(&[OsStr::new("--config"), cfg.as_os_str()]);
    let cache = root.join("pier").join("plugin-cache");
    assert!(
        out.contains(&format!("kept in the compile cache {}", cache.display())),
        "{out}"
    );
    let cached: Vec<_> = fs::read_dir(&cache).unwrap().collect();
    assert_eq!(
        cached.len(),
        1,
        "one compiled component in {}",
        cache.display()
    );
    let out = check(&[OsStr::new("--root"), root.as_os_str()]);
    assert!(out.contains("(already compiled)"), "{out}");

    // `pier serve` finds it there: nothing is compiled at start.
    let pier = TestPier::builder()
        .root(&root)
        .arg("--config")
        .arg(&cfg)
        .start();
    let log = log_of(&pier);
    assert!(log.contains("plugin loaded"), "{log}");
    assert!(
        !log.contains("plugin compiled into the compile cache"),
        "{log}"
    );
    drop(pier);

    // Without it (a fresh root), serve compiles at start and says how long it took.
    let other = dir.path().join("other");
    let cfg2 = config(dir.path(), &other);
    let pier = TestPier::builder()
        .root(&other)
        .arg("--config")
        .arg(&cfg2)
        .start();
    assert!(
        log_of(&pier).contains("plugin compiled into the compile cache"),
        "{}",
        log_of(&pier)
    );
}
