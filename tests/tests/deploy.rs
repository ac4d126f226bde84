//! The deployment files (deploy/) only use what the binary has: every `pier` flag they
//! pass is one `pier serve` accepts, every config they ship starts a real `pier serve`,
//! the ports they publish are the ones that config listens on, and the probe paths answer.

use std::path::PathBuf;
use std::process::Command;

use pier_e2e::{TestPier, http, pier_bin};

fn repo() -> PathBuf {
    pier_e2e::manifest_dir().join("..")
}

fn read(rel: &str) -> String {
    std::fs::read_to_string(repo().join(rel)).unwrap_or_else(|e| panic!("read {rel}: {e}"))
}

/// `--flag` words of a command line (`--flag=value` counts as `--flag`).
fn flags(words: &str) -> Vec<String> {
    words
        .split(|c: char| c.is_whitespace() || matches!(c, '"' | ',' | '[' | ']'))
        .filter(|w| w.starts_with("--") && w.len() > 2)
        .map(|w| w.split('=').next().unwrap_or(w).to_owned())
        .collect()
}

fn serve_help() -> String {
    let out = Command::new(pier_bin())
        .args(["serve", "--help"])
        .output()
        .expect("run pier serve --help");
    assert!(out.status.success());
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// The `pier ...` command lines in the deployment files, with where they come from.
fn command_lines() -> Vec<(&'static str, String)> {
    let docker = read("deploy/container/Dockerfile");
    let unit = read("deploy/systemd/pier.service");
    let ds = read("deploy/kubernetes/edge/daemonset.yaml");
    let ha = read("deploy/kubernetes/ha/deployment.yaml");
    let mut out = Vec::new();
    for l in ha.lines().filter(|l| l.trim_start().starts_with("args:")) {
        out.push(("ha/deployment.yaml", l.to_owned()));
    }
    for l in docker
        .lines()
        .filter(|l| l.starts_with("CMD ") || l.starts_with("ENTRYPOINT "))
    {
        out.push(("Dockerfile", l.to_owned()));
    }
    for l in unit.lines().filter(|l| l.starts_with("ExecStart=")) {
        out.push(("pier.service", l.to_owned()));
    }
    for l in ds.lines().filter(|l| l.trim_start().starts_with("args:")) {
        out.push(("daemonset.yaml", l.to_owned()));
    }
    assert!(out.len() >= 5, "found the command lines: {out:?}");
    out
}

#[test]
fn every_flag_the_deployment_files_pass_exists() {
    let help = serve_help();
    for (file, line) in command_lines() {
        if line.starts_with("ENTRYPOINT") {
            // The image runs the binary it copies in.
            let docker = read("deploy/container/Dockerfile");
            assert!(line.contains("\"/usr/local/bin/pier\""), "{line}");
            assert!(
                docker.contains("/src/target/release/pier /usr/local/bin/pier"),
                "COPY of pier"
            );
            continue;
        }
        let f = flags(&line);
        assert!(!f.is_empty(), "{file}: no flags in {line}");
        for flag in f {
            assert!(
                help.contains(&format!("{flag} ")) || help.contains(&format!("{flag}\n")),
                "{file} passes {flag}, which `pier serve --help` doesn't list:\n{line}"
            );
        }
        assert!(
            line.contains("serve"),
            "{file}: the command is `pier serve`: {line}"
        );
    }
}

/// The TOML under `pier.toml: |` in a ConfigMap.
fn configmap_toml(yaml: &str) -> String {
    let mut out = String::new();
    let mut inside = false;
    for l in yaml.lines() {
        if l.trim_end().ends_with("pier.toml: |") {
            inside = true;
            continue;
        }
        if inside {
            if !l.is_empty() && !l.starts_with("    ") {
                break;
            }
            out.push_str(l.strip_prefix("    ").unwrap_or(l));
            out.push('\n');
        }
    }
    assert!(!out.trim().is_empty(), "pier.toml in the ConfigMap");
    out
}

fn toml_port(toml: &str, key: &str) -> u16 {
    let line = toml
        .lines()
        .find(|l| l.trim_start().starts_with(&format!("{key} =")))
        .unwrap_or_else(|| panic!("{key} in\n{toml}"));
    line.rsplit(':')
        .next()
        .and_then(|p| p.trim().trim_matches('"').parse().ok())
        .unwrap_or_else(|| panic!("a port in {line}"))
}

/// Starts `pier serve` on a shipped config (listening on free loopback ports instead of
/// the config's) and checks the probe paths.
fn serves(config_text: &str, what: &str) -> TestPier {
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("pier.toml");
    std::fs::write(&cfg, config_text).unwrap();
    let pier = TestPier::builder().arg("--config").arg(&cfg).start();
    for path in ["/healthz", "/readyz", "/metrics"] {
        let r = http::get(pier.admin_addr, path);
        r.expect_status(200, &format!("{what}: GET {path} on the admin listener"));
    }
    // The probes answer on the registry listener too (the shipped files probe there).
    for path in ["/healthz", "/readyz"] {
        let r = http::get(pier.addr, path);
        r.expect_status(200, &format!("{what}: GET {path} on the registry listener"));
    }
    http::get(pier.addr, "/v2/").expect_status(200, &format!("{what}: GET /v2/"));
    pier
}

#[test]
fn the_edge_configmap_starts_pier_and_its_ports_and_probes_match() {
    let ds = read("deploy/kubernetes/edge/daemonset.yaml");
    let toml = configmap_toml(&read("deploy/kubernetes/edge/configmap.yaml"));
    // Ports the pod publishes are the ones the config listens on.
    let registry = toml_port(&toml, "listen");
    assert!(
        ds.contains(&format!("name: registry, containerPort: {registry}")),
        "{ds}"
    );
    admin_not_exposed(&toml, &ds, "edge");
    // The config mount and the --config path agree.
    assert!(
        ds.contains("mountPath: /etc/pier,")
            && ds.contains("\"--config\", \"/etc/pier/pier.toml\"")
    );
    // Probe paths answer on the registry port (`serves` checks them).
    for probe in [
        "path: /readyz, port: registry",
        "path: /healthz, port: registry",
    ] {
        assert!(ds.contains(probe), "daemonset probes {probe}");
    }
    // The fleet: its port is the pod's `fleet` port and the headless Service's; the pod
    // advertises itself on it; the key comes from the Secret's mount.
    let fleet_port = toml
        .lines()
        .skip_while(|l| l.trim() != "[fleet]")
        .find(|l| l.trim_start().starts_with("listen ="))
        .and_then(|l| l.split('#').next()?.rsplit(':').next())
        .and_then(|p| p.trim().trim_matches('"').parse::<u16>().ok())
        .expect("[fleet] listen in the edge ConfigMap");
    let svc = read("deploy/kubernetes/edge/fleet-service.yaml");
    assert!(
        ds.contains(&format!("name: fleet, containerPort: {fleet_port}"))
            && ds.contains(&format!("value: \"http://$(POD_IP):{fleet_port}\""))
            && svc.contains(&format!("port: {fleet_port}, targetPort: fleet"))
            && svc.contains("clusterIP: None"),
        "fleet port {fleet_port}: the pod, its advertised URL and the headless Service agree"
    );
    assert!(
        toml.contains("dns = \"pier-fleet.pier.svc.cluster.local\"")
            && svc.contains("name: pier-fleet\n  namespace: pier"),
        "the fleet's DNS name is the headless Service's"
    );
    let key_dir = toml
        .lines()
        .find_map(|l| l.trim().strip_prefix("secret_file = \""))
        .and_then(|v| v.split('"').next())
        .and_then(|p| p.rsplit_once('/'))
        .map(|(dir, _)| dir.to_owned())
        .expect("[fleet] secret_file");
    assert!(
        ds.contains(&format!("mountPath: {key_dir}, readOnly: true")),
        "the fleet key's directory {key_dir} is mounted"
    );
    // Here: the key from a file of its own, the advertised address through the same
    // variable the pod sets, the peer port free, and DNS that resolves nowhere (Pier
    // starts anyway and keeps asking).
    let key = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(key.path(), "k".repeat(64)).unwrap();
    let fleet_listen = port();
    let toml = toml
        .replace("/etc/pier-fleet/key", &key.path().display().to_string())
        .replace(
            &format!("listen = \"0.0.0.0:{fleet_port}\""),
            &format!("listen = \"127.0.0.1:{fleet_listen}\""),
        )
        .replace(
            "[fleet]\n",
            &format!("[fleet]\nadvertise = \"http://127.0.0.1:{fleet_listen}\"\n"),
        );
    let pier = serves(&toml, "edge ConfigMap");
    // It really mirrors: the upstream is configured (unreachable from here, so a 502).
    let r = http::get(pier.addr, "/v2/library/alpine/manifests/latest");
    assert!(
        r.status == 502 || r.status == 504,
        "mirrored name goes upstream: {r}"
    );
}

#[test]
fn the_systemd_config_and_the_image_defaults_start_pier() {
    serves(&read("deploy/systemd/pier.toml"), "systemd pier.toml");
    // The image's CMD ports are the ones it EXPOSEs.
    let docker = read("deploy/container/Dockerfile");
    let expose = docker
        .lines()
        .find(|l| l.starts_with("EXPOSE "))
        .expect("EXPOSE");
    let cmd = docker.lines().find(|l| l.starts_with("CMD ")).expect("CMD");
    for port in expose.split_whitespace().skip(1) {
        assert!(
            cmd.contains(&format!(":{port}\"")),
            "CMD listens on {port}: {cmd}"
        );
    }
    // The image has no [auth]: its admin API stays on loopback and is not exposed.
    assert!(
        cmd.contains("\"--admin-listen\", \"127.0.0.1:"),
        "the image's admin listener is loopback only: {cmd}"
    );
    assert!(
        !expose.contains("5001"),
        "the image exposes no admin port: {expose}"
    );
    // The plugins the image copies are the ones the plugins workspace builds.
    let built = pier_e2e::plugins::build();
    for (name, path) in [
        ("pier_rbac.wasm", &built.rbac),
        ("pier_template.wasm", &built.template),
    ] {
        assert!(
            docker.contains(&format!("release/{name}")),
            "Dockerfile copies {name}"
        );
        assert!(
            path.ends_with(name),
            "{} is what the build produces",
            path.display()
        );
    }
}

/// A config without `[auth]` keeps the admin API on loopback, and the pod publishes no
/// admin port.
fn admin_not_exposed(toml: &str, pod: &str, what: &str) {
    let line = toml
        .lines()
        .find(|l| l.trim_start().starts_with("admin_listen ="))
        .unwrap_or_else(|| panic!("{what}: admin_listen in\n{toml}"));
    if !toml.contains("[auth]") {
        assert!(
            line.contains("\"127.0.0.1:") && !toml.contains("admin_insecure"),
            "{what}: an unauthenticated admin API must stay on loopback: {line}"
        );
        assert!(
            !pod.contains("name: admin,"),
            "{what}: the pod publishes the unauthenticated admin port"
        );
    }
}

/// A free loopback port.
fn port() -> u16 {
    pier_e2e::free_port()
}

struct Killed(std::process::Child);

impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn wait_port(p: u16) {
    assert!(
        pier_e2e::wait_until(
            std::time::Duration::from_secs(10),
            std::time::Duration::from_millis(50),
            || std::net::TcpStream::connect(("127.0.0.1", p)).is_ok()
        ),
        "port {p} opened"
    );
}

#[test]
fn the_ha_configmap_runs_on_s3_and_redis() {
    let dep = read("deploy/kubernetes/ha/deployment.yaml");
    let toml = configmap_toml(&read("deploy/kubernetes/ha/configmap.yaml"));
    assert!(dep.contains(&format!(
        "name: registry, containerPort: {}",
        toml_port(&toml, "listen")
    )));
    admin_not_exposed(&toml, &dep, "HA");
    for probe in [
        "path: /readyz, port: registry",
        "path: /healthz, port: registry",
    ] {
        assert!(dep.contains(probe), "deployment probes {probe}");
    }
    assert!(dep.contains("kind: PodDisruptionBudget") && dep.contains("replicas: 3"));
    // The same config, with the in-cluster S3 and Redis addresses pointed at local ones
    // and the keys from the environment, as the Secret gives them.
    let dir = tempfile::tempdir().unwrap();
    let s3s = std::env::var_os("S3S_FS_BIN")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            PathBuf::from(std::env::var("HOME").unwrap_or_default())
                .join(".cache/pier/s3s-fs/bin/s3s-fs")
        });
    let (s3_port, redis_port) = (port(), port());
    std::fs::create_dir_all(dir.path().join("s3/pier")).unwrap();
    let _s3 = Killed(
        Command::new(&s3s)
            .args(["--host", "127.0.0.1", "--port", &s3_port.to_string()])
            .args([
                "--access-key",
                "deploy-test",
                "--secret-key",
                "deploy-test-secret",
            ])
            .arg(dir.path().join("s3"))
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap_or_else(|e| {
                panic!(
                    "start {} (scripts/install-test-deps.sh builds it): {e}",
                    s3s.display()
                )
            }),
    );
    let _redis = Killed(
        Command::new("redis-server")
            .args(["--bind", "127.0.0.1", "--port", &redis_port.to_string()])
            .args(["--save", "", "--appendonly", "no"])
            .arg("--dir")
            .arg(dir.path())
            .stdout(std::process::Stdio::null())
            .spawn()
            .expect("start redis-server"),
    );
    wait_port(s3_port);
    wait_port(redis_port);
    let local = toml
        .replace(
            "http://minio.storage.svc:9000",
            &format!("http://127.0.0.1:{s3_port}"),
        )
        .replace(
            "redis://redis.pier.svc:6379",
            &format!("redis://127.0.0.1:{redis_port}"),
        );
    assert_ne!(local, toml, "the ConfigMap names S3 and Redis endpoints");
    let cfg = dir.path().join("pier.toml");
    std::fs::write(&cfg, &local).unwrap();
    let pier = TestPier::builder()
        .arg("--config")
        .arg(&cfg)
        .env("AWS_ACCESS_KEY_ID", "deploy-test")
        .env("AWS_SECRET_ACCESS_KEY", "deploy-test-secret")
        .start();
    for path in ["/healthz", "/readyz"] {
        http::get(pier.admin_addr, path).expect_status(200, &format!("HA config: {path}"));
        http::get(pier.addr, path).expect_status(200, &format!("HA config: {path} (registry)"));
    }
    let data = pier_e2e::random_bytes(100_000);
    let digest = pier_e2e::push_blob(pier.addr, "team/app", &data);
    let r = http::get(pier.addr, &format!("/v2/team/app/blobs/{digest}"));
    r.expect_status(200, "blob stored in S3");
    assert_eq!(r.body, data);
    // It went to the bucket under the ConfigMap's prefix, in distribution's layout.
    let hex = digest.trim_start_matches("sha256:");
    let key = dir
        .path()
        .join("s3/pier/registry/docker/registry/v2/blobs/sha256")
        .join(&hex[..2])
        .join(hex)
        .join("data");
    assert_eq!(
        std::fs::read(&key).unwrap_or_default(),
        data,
        "{}",
        key.display()
    );
}
