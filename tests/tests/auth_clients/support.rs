//! What the auth client tests share: Pier running the RBAC example
//! (`deploy/examples/rbac`) with the plugin built from source, the token endpoint and
//! Basic/Bearer requests over raw HTTP, images pushed with credentials, and checks on
//! what a refused client printed.

use std::fs;
use std::io::Write;
use std::net::SocketAddr;
use std::ops::Deref;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::thread;
use std::time::{Duration, Instant};

use pier_e2e::{ACCEPT_MANIFESTS, Response, TestPier, http};
use serde_json::Value;
use tempfile::TempDir;

use crate::clients_support::*;

/// The accounts of the example (`deploy/examples/rbac/README.md`).
pub const ADMIN: (&str, &str) = ("admin", "admin-pass");
pub const ALICE: (&str, &str) = ("alice", "alice-pass");
pub const BOB: (&str, &str) = ("bob", "bob-pass");
pub const CAROL: (&str, &str) = ("carol", "carol-pass");
pub const ROBOT_CI: (&str, &str) = ("robot$ci", "ci-robot-secret");

/// `user:password`, as clients take it on the command line.
pub fn creds((user, pass): (&str, &str)) -> String {
    format!("{user}:{pass}")
}

/// The example's directory in this repository.
fn example_dir() -> PathBuf {
    pier_e2e::manifest_dir().join("../deploy/examples/rbac")
}

/// A `pier serve` running the RBAC example: its pier.toml, users and robots copied to a
/// temp dir of their own, the plugin path pointed at the component built from source.
pub struct RbacPier {
    pub pier: TestPier,
    /// The copied pier.toml (for `pier user` and `pier robot`).
    pub config: PathBuf,
    _dir: TempDir,
}

impl Deref for RbacPier {
    type Target = TestPier;
    fn deref(&self) -> &TestPier {
        &self.pier
    }
}

impl RbacPier {
    /// The example as it is (access tokens live 5 minutes).
    #[track_caller]
    pub fn start() -> RbacPier {
        RbacPier::start_with_ttl(None)
    }

    /// The example with `token_ttl` set to `ttl` (e.g. `"2s"`) when given.
    #[track_caller]
    pub fn start_with_ttl(ttl: Option<&str>) -> RbacPier {
        RbacPier::start_with(ttl, "", "")
    }

    /// The example with `token_ttl` set to `ttl` when given, the top-level keys `top`
    /// (e.g. `trusted_proxies = [...]`) put before its first table, and the tables `tail`
    /// (e.g. `[auth.throttle]`) after its last.
    #[track_caller]
    pub fn start_with(ttl: Option<&str>, top: &str, tail: &str) -> RbacPier {
        let wasm = &pier_e2e::plugins::build().rbac;
        let dir = temp_dir("rbac-example");
        let src = example_dir();
        for f in ["users.htpasswd", "robots.json"] {
            fs::copy(src.join(f), dir.path().join(f))
                .unwrap_or_else(|e| panic!("copy {f} of the example: {e}"));
        }
        let toml = fs::read_to_string(src.join("pier.toml")).expect("read the example's pier.toml");
        let mut replaced_path = false;
        let mut replaced_ttl = false;
        let lines: Vec<String> = toml
            .lines()
            .map(|l| {
                let t = l.trim_start();
                if t.starts_with("path") && t.contains("pier_rbac.wasm") {
                    replaced_path = true;
                    format!("path = {:?}", wasm.display().to_string())
                } else if let (Some(ttl), true) = (ttl, t.starts_with("token_ttl")) {
                    replaced_ttl = true;
                    format!("token_ttl = {ttl:?}")
                } else {
                    l.to_owned()
                }
            })
            .collect();
        assert!(
            replaced_path,
            "no `path = ...pier_rbac.wasm` line in the example\n{toml}"
        );
        assert!(
            ttl.is_none() || replaced_ttl,
            "no `token_ttl` line in the example\n{toml}"
        );
        let config = dir.path().join("pier.toml");
        fs::write(&config, format!("{top}\n{}\n{tail}\n", lines.join("\n"))).unwrap();
        let pier = TestPier::builder().arg("--config").arg(&config).start();
        RbacPier {
            pier,
            config,
            _dir: dir,
        }
    }

    /// The example's robots file (copied).
    pub fn robots_file(&self) -> PathBuf {
        self.config.with_file_name("robots.json")
    }

    /// `pier ARGS --config CONFIG` with `stdin`; panics unless it exits 0; returns stdout.
    #[track_caller]
    pub fn cli(&self, args: &[&str], stdin: &[u8]) -> String {
        let mut cmd = pier_e2e::pier_command();
        cmd.args(args).arg("--config").arg(&self.config);
        let o = run_input(&mut cmd, stdin, CMD_TIMEOUT);
        assert!(o.success(), "pier {args:?} failed\n{o}");
        o.stdout
    }
}

// ---------------------------------------------------------------------------------------
// Raw HTTP: the token endpoint, Basic and Bearer
// ---------------------------------------------------------------------------------------

pub use pier_e2e::base64;

/// `Basic base64(user:pass)`.
pub fn basic(who: (&str, &str)) -> String {
    format!("Basic {}", base64(creds(who).as_bytes()))
}

/// `Bearer TOKEN`.
pub fn bearer(token: &str) -> String {
    format!("Bearer {token}")
}

/// Percent-encodes everything but RFC 3986 unreserved characters.
pub fn pct(s: &str) -> String {
    let mut out = String::new();
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// `GET /auth/token?service=pier&scope=...` with Basic credentials or none.
pub fn token_get(addr: SocketAddr, who: Option<(&str, &str)>, scopes: &[&str]) -> Response {
    let mut path = "/auth/token?service=pier".to_owned();
    for s in scopes {
        path.push_str(&format!("&scope={}", pct(s)));
    }
    let auth = who.map(basic);
    let headers: Vec<(&str, &str)> = auth
        .as_deref()
        .map(|a| vec![("Authorization", a)])
        .unwrap_or_default();
    http::request(addr, "GET", &path, &headers, b"")
}

/// [`token_get`], asserting 200; returns the token.
#[track_caller]
pub fn token(addr: SocketAddr, who: Option<(&str, &str)>, scopes: &[&str]) -> String {
    let r = token_get(addr, who, scopes);
    r.expect_status(200, &format!("token for {who:?} with {scopes:?}"));
    let v = r.json();
    let t = v["token"]
        .as_str()
        .unwrap_or_else(|| panic!("no `token` in the token response\n{r}"))
        .to_owned();
    assert_eq!(v["access_token"], t.as_str(), "access_token == token\n{r}");
    t
}

/// `POST /auth/token` with a form (`application/x-www-form-urlencoded`).
pub fn token_post(addr: SocketAddr, form: &[(&str, &str)]) -> Response {
    let body = form
        .iter()
        .map(|(k, v)| format!("{}={}", pct(k), pct(v)))
        .collect::<Vec<_>>()
        .join("&");
    http::request(
        addr,
        "POST",
        "/auth/token",
        &[("Content-Type", "application/x-www-form-urlencoded")],
        body.as_bytes(),
    )
}

/// The OAuth2 password grant for `who` with `scope` (space separated); asserts 200 and
/// returns the JSON answer.
#[track_caller]
pub fn password_grant(addr: SocketAddr, who: (&str, &str), scope: &str, offline: bool) -> Value {
    let mut form = vec![
        ("grant_type", "password"),
        ("username", who.0),
        ("password", who.1),
        ("service", "pier"),
        ("client_id", "pier-e2e"),
        ("scope", scope),
    ];
    if offline {
        form.push(("access_type", "offline"));
    }
    let r = token_post(addr, &form);
    r.expect_status(200, &format!("password grant for {} ({scope})", who.0));
    r.json()
}

/// A request with `Authorization: auth` (and Accept for manifests).
pub fn request_as(addr: SocketAddr, method: &str, path: &str, auth: &str) -> Response {
    http::request(
        addr,
        method,
        path,
        &[("Authorization", auth), ("Accept", ACCEPT_MANIFESTS)],
        b"",
    )
}

/// `GET /v2/REPO/manifests/REFERENCE` with `Authorization: auth`.
pub fn manifest_as(addr: SocketAddr, auth: &str, repo: &str, reference: &str) -> Response {
    request_as(
        addr,
        "GET",
        &format!("/v2/{repo}/manifests/{reference}"),
        auth,
    )
}

/// The `WWW-Authenticate` header of a response (empty when missing).
pub fn challenge(r: &Response) -> String {
    r.header("www-authenticate").unwrap_or_default().to_owned()
}

/// Pushes `img` to `repo:tag` over raw HTTP with `Authorization: auth` (monolithic blob
/// uploads, then the manifest). Asserts every step.
#[track_caller]
pub fn push_image_as(addr: SocketAddr, auth: &str, repo: &str, tag: &str, img: &TestImage) {
    let mut blobs = vec![(img.config.clone(), img.config_digest.clone())];
    blobs.extend(img.layers.iter().cloned());
    for (data, digest) in &blobs {
        let r = http::request(
            addr,
            "POST",
            &format!("/v2/{repo}/blobs/uploads/?digest={digest}"),
            &[
                ("Authorization", auth),
                ("Content-Type", "application/octet-stream"),
            ],
            data,
        );
        r.expect_status(201, &format!("push blob {digest} to {repo}"));
    }
    let r = http::request(
        addr,
        "PUT",
        &format!("/v2/{repo}/manifests/{tag}"),
        &[("Authorization", auth), ("Content-Type", OCI_MANIFEST)],
        &img.manifest,
    );
    r.expect_status(201, &format!("push manifest {repo}:{tag}"));
}

/// Asserts the registry serves `img` at `repo:reference` (manifest bytes and every blob)
/// to a caller presenting `auth`.
#[track_caller]
pub fn assert_has_image_as(
    addr: SocketAddr,
    auth: &str,
    repo: &str,
    reference: &str,
    img: &TestImage,
) {
    let r = manifest_as(addr, auth, repo, reference);
    r.expect_status(200, &format!("GET manifest {repo}:{reference}"));
    assert_eq!(
        pier_e2e::sha256_digest(&r.body),
        img.manifest_digest,
        "manifest of {repo}:{reference}\n{r}"
    );
    for d in img.blob_digests() {
        let b = request_as(addr, "GET", &format!("/v2/{repo}/blobs/{d}"), auth);
        b.expect_status(200, &format!("GET blob {d} in {repo}"));
        assert_eq!(pier_e2e::sha256_digest(&b.body), d, "blob {d} in {repo}");
    }
}

/// The manifest digest the registry serves at `repo:reference` to `auth`.
#[track_caller]
pub fn manifest_digest_as(addr: SocketAddr, auth: &str, repo: &str, reference: &str) -> String {
    let r = manifest_as(addr, auth, repo, reference);
    r.expect_status(200, &format!("GET manifest {repo}:{reference}"));
    pier_e2e::sha256_digest(&r.body)
}

/// Asserts `repo:reference` is not there (404 `MANIFEST_UNKNOWN`) for `auth`.
#[track_caller]
pub fn assert_no_manifest_as(addr: SocketAddr, auth: &str, repo: &str, reference: &str) {
    manifest_as(addr, auth, repo, reference).expect_error(
        404,
        "MANIFEST_UNKNOWN",
        &format!("GET manifest {repo}:{reference} (must not exist)"),
    );
}

/// Polls the token endpoint until `who` can log in (the server re-reads the users and
/// robots files within a second of a change).
#[track_caller]
pub fn wait_login_accepted(addr: SocketAddr, who: (&str, &str)) {
    let start = Instant::now();
    loop {
        let r = token_get(addr, Some(who), &[]);
        if r.status == 200 {
            return;
        }
        assert!(
            start.elapsed() < Duration::from_secs(15),
            "{} cannot log in 15 s after the account was created\n{r}",
            who.0
        );
        thread::sleep(Duration::from_millis(100));
    }
}

// ---------------------------------------------------------------------------------------
// Clients
// ---------------------------------------------------------------------------------------

/// Asserts a client command failed and printed one of `words` (case-insensitive).
#[track_caller]
pub fn assert_refused(o: &Output, words: &[&str], what: &str) {
    assert!(
        !o.success(),
        "{what}: expected a failure, the command succeeded\n{o}"
    );
    let all = o.all().to_ascii_lowercase();
    assert!(
        words.iter().any(|w| all.contains(w)),
        "{what}: the client's output mentions none of {words:?}\n{o}"
    );
    // Shown with --nocapture: what each client says when it is refused.
    eprintln!("{what}: refused: {}", tail(o.stderr.trim(), 1));
}

/// Runs `cmd` with `input` on stdin (then closed), killing it after `timeout`.
#[track_caller]
pub fn run_input(cmd: &mut Command, input: &[u8], timeout: Duration) -> Output {
    let started = Instant::now();
    let cmdline = format!("{cmd:?}");
    let mut child = cmd
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("cannot run {cmdline}: {e}"));
    let mut stdin = child.stdin.take().expect("stdin");
    let input = input.to_vec();
    let writer = thread::spawn(move || {
        let _ = stdin.write_all(&input);
    });
    let (tx, rx) = std::sync::mpsc::channel();
    let pid = child.id();
    let waiter = thread::spawn(move || {
        let o = child.wait_with_output();
        let _ = tx.send(());
        o
    });
    if rx.recv_timeout(timeout).is_err() {
        send_signal(pid, "KILL");
        let _ = waiter.join();
        panic!("command timed out after {timeout:?}: {cmdline}");
    }
    let _ = writer.join();
    let o = waiter
        .join()
        .expect("waiter")
        .expect("wait for the command");
    Output {
        cmdline,
        status: o.status,
        stdout: String::from_utf8_lossy(&o.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&o.stderr).into_owned(),
        elapsed: started.elapsed(),
    }
}

/// A tiny rootfs tarball unique to this call (for `docker import` / `podman import`).
pub fn rootfs_tar(dir: &Path, name: &str) -> PathBuf {
    let salt = hex::encode(unique_bytes(16));
    let tar = Tar::new()
        .dir("etc")
        .file("etc/os-release", b"ID=pier-auth-test\n")
        .file("etc/salt", salt.as_bytes())
        .dir("data")
        .file("data/blob.bin", &unique_bytes(16 * 1024))
        .finish();
    let p = dir.join(format!("{name}.tar"));
    fs::write(&p, tar).unwrap();
    p
}

/// skopeo copy of `img` (written as an OCI layout in the skopeo's dir) to
/// `docker://HOST/dest`, with `--dest-creds` when given. Returns the output whatever
/// the exit status.
pub fn skopeo_push(
    sk: &Skopeo,
    host: &str,
    img: &TestImage,
    dest: &str,
    who: Option<(&str, &str)>,
) -> Output {
    let layout = sk.dir.path().join(format!("layout-{}", img.tag));
    if !layout.join("index.json").exists() {
        img.write_oci_layout(&layout);
    }
    let src = format!("oci:{}:{}", layout.display(), img.tag);
    let dst = format!("docker://{host}/{dest}");
    let mut args = vec!["copy", "--dest-tls-verify=false"];
    let c = who.map(creds);
    if let Some(c) = c.as_deref() {
        args.extend(["--dest-creds", c]);
    }
    args.extend([src.as_str(), dst.as_str()]);
    sk.run(&args)
}

/// `skopeo inspect --tls-verify=false [--creds ...] docker://HOST/reference`.
pub fn skopeo_inspect(
    sk: &Skopeo,
    host: &str,
    reference: &str,
    who: Option<(&str, &str)>,
) -> Output {
    let c = who.map(creds);
    let target = format!("docker://{host}/{reference}");
    let mut args = vec!["inspect", "--tls-verify=false"];
    if let Some(c) = c.as_deref() {
        args.extend(["--creds", c]);
    }
    args.push(&target);
    sk.run(&args)
}

/// The `Digest` of a successful `skopeo inspect`.
#[track_caller]
pub fn inspected_digest(o: &Output, what: &str) -> String {
    assert!(o.success(), "{what}: skopeo inspect failed\n{o}");
    let v: Value = serde_json::from_str(&o.stdout)
        .unwrap_or_else(|e| panic!("{what}: inspect output is not JSON ({e})\n{o}"));
    v["Digest"]
        .as_str()
        .unwrap_or_else(|| panic!("{what}: no Digest\n{o}"))
        .to_owned()
}

/// Unix seconds now.
pub fn now_secs() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}
