//! `pier serve` configuration: TOML file, environment, flags and their precedence.

use std::process::Command;

use super::*;

fn log_is_json(p: &TestPier) -> bool {
    // one more request so there is an access-log line to look at
    p.get("/v2/").expect_status(200, "GET /v2/");
    let log = std::fs::read_to_string(p.log_path()).unwrap_or_default();
    let lines: Vec<&str> = log.lines().filter(|l| !l.trim().is_empty()).collect();
    assert!(!lines.is_empty(), "empty log");
    let json = lines
        .iter()
        .filter(|l| serde_json::from_str::<serde_json::Value>(l).is_ok())
        .count();
    assert!(
        json == 0 || json == lines.len(),
        "log mixes JSON and text lines:\n{log}"
    );
    json == lines.len()
}

fn h2c_works(p: &TestPier) -> bool {
    let out = Command::new("curl")
        .args([
            "-sS",
            "--max-time",
            "5",
            "--http2-prior-knowledge",
            "-o",
            "/dev/null",
        ])
        .args(["-w", "%{http_version} %{http_code}"])
        .arg(format!("{}/v2/", p.url()))
        .output()
        .expect("run curl");
    String::from_utf8_lossy(&out.stdout).trim() == "2 200"
}

#[test]
fn config_file_env_and_flag_precedence() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("pier.toml");
    std::fs::write(
        &cfg,
        "log_format = \"json\"\nh2c = true\nupload_idle_timeout = \"1h\"\n",
    )
    .unwrap();

    // config file alone
    let p = TestPier::builder().arg("--config").arg(&cfg).start();
    assert!(
        log_is_json(&p),
        "log_format = \"json\" in the config file is ignored"
    );
    assert!(h2c_works(&p), "h2c = true in the config file is ignored");
    drop(p);

    // env beats the config file
    let p = TestPier::builder()
        .arg("--config")
        .arg(&cfg)
        .env("PIER_LOG_FORMAT", "text")
        .start();
    assert!(
        !log_is_json(&p),
        "PIER_LOG_FORMAT=text should beat the config file"
    );
    drop(p);

    // a flag beats the environment
    let p = TestPier::builder()
        .arg("--config")
        .arg(&cfg)
        .env("PIER_LOG_FORMAT", "text")
        .args(["--log-format", "json"])
        .start();
    assert!(
        log_is_json(&p),
        "--log-format json should beat PIER_LOG_FORMAT=text"
    );
    drop(p);

    // the environment alone
    let p = TestPier::builder().env("PIER_CONFIG", &cfg).start();
    assert!(log_is_json(&p), "PIER_CONFIG is ignored");
    drop(p);
    let p = TestPier::builder().env("PIER_H2C", "true").start();
    assert!(h2c_works(&p), "PIER_H2C=true is ignored");
}

#[test]
fn bad_configuration_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    // Runs `pier serve` expecting it to exit within 10 s; returns (status, stderr).
    let run = |args: &[&str]| {
        let err_path = dir.path().join("stderr");
        let mut child = pier_command()
            .arg("serve")
            .args(["--listen", &format!("127.0.0.1:{}", free_port())])
            .args(["--admin-listen", &format!("127.0.0.1:{}", free_port())])
            .arg("--root")
            .arg(dir.path().join("root"))
            .args(args)
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::null())
            .stderr(std::fs::File::create(&err_path).unwrap())
            .spawn()
            .expect("run pier");
        let mut status = None;
        wait_until(
            std::time::Duration::from_secs(10),
            std::time::Duration::from_millis(50),
            || {
                status = child.try_wait().ok().flatten();
                status.is_some()
            },
        );
        if status.is_none() {
            let _ = child.kill();
            let _ = child.wait();
        }
        (
            status,
            std::fs::read_to_string(&err_path).unwrap_or_default(),
        )
    };
    let bad_toml = dir.path().join("bad.toml");
    std::fs::write(&bad_toml, "log_format = \n").unwrap();
    for (what, args) in [
        ("a bad duration", vec!["--upload-idle-timeout", "soon"]),
        ("an unknown log format", vec!["--log-format", "xml"]),
        (
            "a config file that is not TOML",
            vec!["--config", bad_toml.to_str().unwrap()],
        ),
        (
            "a missing config file",
            vec!["--config", "/nonexistent/pier.toml"],
        ),
        (
            "a TLS cert without a key",
            vec!["--tls-cert", "/nonexistent/cert.pem"],
        ),
    ] {
        let (status, stderr) = run(&args);
        let status = status.unwrap_or_else(|| panic!("pier serve with {what} kept running"));
        assert!(
            !status.success(),
            "pier serve with {what} should fail, got {status}\nstderr:\n{stderr}"
        );
        assert!(
            !stderr.trim().is_empty(),
            "pier serve with {what} exited without saying why"
        );
    }
}

#[test]
fn completions_man_page_and_suggestions() {
    let pier = |args: &[&str]| {
        let out = Command::new(pier_e2e::pier_bin())
            .args(args)
            .output()
            .unwrap();
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    // A bash script that bash itself accepts, naming the subcommands.
    let (ok, script, err) = pier(&["completions", "bash"]);
    assert!(ok, "{err}");
    assert!(
        script.contains("_pier") && script.contains("serve"),
        "{script}"
    );
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("pier.bash");
    std::fs::write(&path, &script).unwrap();
    let check = Command::new("bash").arg("-n").arg(&path).output().unwrap();
    assert!(
        check.status.success(),
        "bash -n: {}",
        String::from_utf8_lossy(&check.stderr)
    );
    for shell in ["zsh", "fish"] {
        let (ok, script, err) = pier(&["completions", shell]);
        assert!(ok && script.contains("serve"), "{shell}: {err}");
    }
    let (ok, _, err) = pier(&["completions", "tcsh"]);
    assert!(!ok && err.contains("possible values"), "{err}");
    // The man page: roff with the name, the synopsis and the subcommands.
    let (ok, man, err) = pier(&["man"]);
    assert!(ok, "{err}");
    assert!(man.starts_with(".ie") || man.contains(".TH pier"), "{man}");
    assert!(man.contains("serve") && man.contains("SYNOPSIS"), "{man}");
    // A mistyped subcommand gets a suggestion.
    let (ok, _, err) = pier(&["serv"]);
    assert!(
        !ok && err.contains("similar") && err.contains("serve"),
        "{err}"
    );
}

/// `pier config check`: 0 and a summary for a good file (keys from `PIER_A__B` variables
/// and secrets from `<key>_file` included), 1 with `FILE:LINE:` for a bad value, the
/// parser's line for bad syntax, and the variable's name when a variable is wrong.
#[test]
fn config_check_validates_files_variables_and_secret_files() {
    let dir = tempfile::tempdir().unwrap();
    let check = |text: &str, env: &[(&str, &str)]| {
        let file = dir.path().join("pier.toml");
        std::fs::write(&file, text).unwrap();
        let mut c = pier_e2e::pier_command();
        c.args(["config", "check"]).arg(&file);
        for (k, v) in env {
            c.env(k, v);
        }
        let out = c.output().unwrap();
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    std::fs::write(dir.path().join("hub.password"), "s3cret\n").unwrap();
    let good = "listen = \"127.0.0.1:5999\"\n\n[[upstreams]]\nname = \"hub\"\nurl = \"https://registry-1.docker.io\"\nusername = \"u\"\npassword_file = \"hub.password\"\n";
    let (code, out, err) = check(good, &[]);
    assert_eq!(code, Some(0), "{err}");
    assert!(
        out.contains("ok") && out.contains("upstream hub = https://registry-1.docker.io"),
        "{out}"
    );

    // A variable adds a second upstream and moves the listener.
    let (code, out, err) = check(
        good,
        &[
            ("PIER_UPSTREAMS__1__URL", "https://ghcr.io"),
            ("PIER__LISTEN", "127.0.0.1:6001"),
        ],
    );
    assert_eq!(code, Some(0), "{err}");
    assert!(
        out.contains("upstream ghcr.io = https://ghcr.io") && out.contains("listen 127.0.0.1:6001"),
        "{out}"
    );

    let bad_value = "listen = \"127.0.0.1:5999\"\n\n[[upstreams]]\nurl = \"https://ghcr.io\"\ntag_ttl = \"soon\"\n";
    let (code, _, err) = check(bad_value, &[]);
    assert_eq!(code, Some(1), "{err}");
    assert!(
        err.contains("pier.toml:5:") && err.contains("tag_ttl"),
        "{err}"
    );

    let (code, _, err) = check("listen = \"127.0.0.1:5999\"\n[tls\n", &[]);
    assert_eq!(code, Some(1), "{err}");
    assert!(err.contains("line 2"), "{err}");

    let (code, _, err) = check(good, &[("PIER_UPSTREAMS__0__URL__X", "1")]);
    assert_eq!(code, Some(1), "{err}");
    assert!(err.contains("PIER_UPSTREAMS__0__URL__X"), "{err}");

    let (code, _, err) = check(&good.replace("hub.password", "missing.password"), &[]);
    assert_eq!(code, Some(1), "{err}");
    assert!(
        err.contains("upstreams.0.password_file") && err.contains("missing.password"),
        "{err}"
    );
}
