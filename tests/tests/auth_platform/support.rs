//! Helpers for the access-control platform tests: the RBAC example configuration made
//! runnable in a temp dir, Basic and Bearer headers, token fetches, JWT claims, admin
//! metrics, authenticated pushes and pulls, and a throwaway `slapd`.

use std::fs;
use std::io::Write as _;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use pier_e2e::{ACCEPT_MANIFESTS, Response, TestPier, free_port, http, media, sha256_digest};
use serde_json::{Value, json};
use tempfile::TempDir;

use crate::clients_support;

// ---------------------------------------------------------------------------------------
// Headers, tokens, claims
// ---------------------------------------------------------------------------------------

/// Decodes base64url without padding (JWT segments); `None` on a bad character.
pub fn base64url_decode(s: &str) -> Option<Vec<u8>> {
    let mut out = Vec::new();
    let (mut acc, mut bits) = (0u32, 0u32);
    for ch in s.trim_end_matches('=').bytes() {
        let v = match ch {
            b'A'..=b'Z' => ch - b'A',
            b'a'..=b'z' => ch - b'a' + 26,
            b'0'..=b'9' => ch - b'0' + 52,
            b'-' | b'+' => 62,
            b'_' | b'/' => 63,
            _ => return None,
        } as u32;
        acc = acc << 6 | v;
        bits += 6;
        if bits >= 8 {
            bits -= 8;
            out.push((acc >> bits) as u8);
            acc &= (1 << bits) - 1;
        }
    }
    Some(out)
}

pub use pier_e2e::basic_auth as basic;

/// `Bearer TOKEN`.
pub fn bearer(token: &str) -> String {
    format!("Bearer {token}")
}

/// `GET /auth/token?service=pier&scope=SCOPE` with Basic credentials (or none).
pub fn token_request(addr: SocketAddr, creds: Option<(&str, &str)>, scope: &str) -> Response {
    let auth = creds.map(|(u, p)| basic(u, p));
    let mut headers = Vec::new();
    if let Some(a) = &auth {
        headers.push(("Authorization", a.as_str()));
    }
    http::request(
        addr,
        "GET",
        &format!("/auth/token?service=pier&scope={scope}"),
        &headers,
        b"",
    )
}

/// A token from the endpoint; panics unless it answers 200 with one.
#[track_caller]
pub fn token(addr: SocketAddr, creds: Option<(&str, &str)>, scope: &str) -> String {
    let r = token_request(addr, creds, scope);
    r.expect_status(200, &format!("token for {scope} as {creds:?}"));
    r.json()["token"]
        .as_str()
        .unwrap_or_else(|| panic!("no token in\n{r}"))
        .to_owned()
}

/// The claims of a JWT (not verified).
#[track_caller]
pub fn claims(token: &str) -> Value {
    let payload = token
        .split('.')
        .nth(1)
        .unwrap_or_else(|| panic!("not a JWT: {token}"));
    let bytes = base64url_decode(payload).unwrap_or_else(|| panic!("bad JWT payload: {token}"));
    serde_json::from_slice(&bytes).unwrap_or_else(|e| panic!("JWT payload is not JSON ({e})"))
}

/// The actions a token's claims grant on `repository:NAME`.
pub fn granted(claims: &Value, repo: &str) -> Vec<String> {
    claims["access"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|a| a["type"] == "repository" && a["name"] == repo)
        .flat_map(|a| a["actions"].as_array().cloned().unwrap_or_default())
        .filter_map(|a| a.as_str().map(str::to_owned))
        .collect()
}

// ---------------------------------------------------------------------------------------
// Requests with credentials
// ---------------------------------------------------------------------------------------

/// `GET /v2/<repo>/manifests/<reference>` with an Authorization header.
pub fn get_manifest_as(addr: SocketAddr, auth: &str, repo: &str, reference: &str) -> Response {
    http::request(
        addr,
        "GET",
        &format!("/v2/{repo}/manifests/{reference}"),
        &[("Accept", ACCEPT_MANIFESTS), ("Authorization", auth)],
        b"",
    )
}

/// `GET /v2/<repo>/blobs/<digest>` with an Authorization header.
pub fn get_blob_as(addr: SocketAddr, auth: &str, repo: &str, digest: &str) -> Response {
    http::request(
        addr,
        "GET",
        &format!("/v2/{repo}/blobs/{digest}"),
        &[("Authorization", auth)],
        b"",
    )
}

/// An image pushed with [`push_image_as`].
#[derive(Debug, Clone)]
pub struct Pushed {
    pub manifest_digest: String,
    pub layer: Vec<u8>,
    pub layer_digest: String,
}

/// Pushes a config, one small gzip tar layer and an OCI manifest tagged `tag` into `repo`, every
/// request carrying `auth`; asserts each step.
#[track_caller]
pub fn push_image_as(addr: SocketAddr, auth: &str, repo: &str, tag: &str) -> Pushed {
    let config = serde_json::to_vec(&json!({
        "architecture": "amd64", "os": "linux",
        "rootfs": {"type": "layers", "diff_ids": []},
        "nonce": hex::encode(pier_e2e::random_bytes(8)),
    }))
    .unwrap();
    // A real gzip tar, so clients copy it as it is (they recompress what isn't gzip).
    let layer = clients_support::gzip(
        &clients_support::Tar::new()
            .file("random.bin", &pier_e2e::random_bytes(4096))
            .finish(),
    );
    for blob in [&config, &layer] {
        let d = sha256_digest(blob);
        let r = http::request(
            addr,
            "POST",
            &format!("/v2/{repo}/blobs/uploads/?digest={d}"),
            &[
                ("Content-Type", "application/octet-stream"),
                ("Authorization", auth),
            ],
            blob,
        );
        r.expect_status(201, &format!("push blob {d} to {repo}"));
    }
    let manifest = serde_json::to_vec(&json!({
        "schemaVersion": 2,
        "mediaType": media::OCI_MANIFEST,
        "config": pier_e2e::descriptor(media::OCI_CONFIG, &config),
        "layers": [pier_e2e::descriptor(media::OCI_LAYER, &layer)],
    }))
    .unwrap();
    let r = http::request(
        addr,
        "PUT",
        &format!("/v2/{repo}/manifests/{tag}"),
        &[
            ("Content-Type", media::OCI_MANIFEST),
            ("Authorization", auth),
        ],
        &manifest,
    );
    r.expect_status(201, &format!("push manifest {repo}:{tag}"));
    Pushed {
        manifest_digest: sha256_digest(&manifest),
        layer_digest: sha256_digest(&layer),
        layer,
    }
}

/// `errors[0].message` of an error response ("" when there is none).
pub fn error_message(r: &Response) -> String {
    serde_json::from_slice::<Value>(&r.body)
        .ok()
        .and_then(|v| v["errors"][0]["message"].as_str().map(str::to_owned))
        .unwrap_or_default()
}

/// Panics unless `r` is a 200 whose body has digest `digest`.
#[track_caller]
pub fn expect_content(r: &Response, digest: &str, what: &str) {
    r.expect_status(200, what);
    assert_eq!(sha256_digest(&r.body), digest, "{what}: wrong content");
}

// ---------------------------------------------------------------------------------------
// Admin listener, logs, processes
// ---------------------------------------------------------------------------------------

/// The value of one exact series (`name{labels}`) on the admin `/metrics`; 0 when absent.
#[track_caller]
pub fn metric(pier: &TestPier, series: &str) -> f64 {
    let r = http::get(pier.admin_addr, "/metrics");
    r.expect_status(200, "GET /metrics");
    r.text()
        .lines()
        .find_map(|l| {
            l.strip_prefix(series)?
                .strip_prefix(' ')?
                .trim()
                .parse()
                .ok()
        })
        .unwrap_or(0.0)
}

/// `POST /plugins/reload` on the admin listener, as the example's system admin (with
/// access control on, administrative endpoints need a system administrator).
pub fn admin_reload(pier: &TestPier) -> Response {
    let admin = basic("admin", "admin-pass");
    http::request(
        pier.admin_addr,
        "POST",
        "/plugins/reload",
        &[("Authorization", admin.as_str())],
        b"",
    )
}

/// The whole server log.
pub fn log_of(pier: &TestPier) -> String {
    String::from_utf8_lossy(&fs::read(pier.log_path()).unwrap_or_default()).into_owned()
}

/// Lines of the server log containing every one of `needles`.
pub fn log_lines(pier: &TestPier, needles: &[&str]) -> Vec<String> {
    log_of(pier)
        .lines()
        .filter(|l| needles.iter().all(|n| l.contains(n)))
        .map(str::to_owned)
        .collect()
}

/// Sends a signal (`HUP`, `TERM`, ...) to a process.
#[track_caller]
pub fn signal(pid: u32, sig: &str) {
    let st = Command::new("kill")
        .arg(format!("-{sig}"))
        .arg(pid.to_string())
        .status()
        .expect("run kill");
    assert!(st.success(), "kill -{sig} {pid} failed");
}

/// Polls `f` every 50 ms up to `timeout`; panics with `what` (and `context()`) on timeout.
#[track_caller]
pub fn wait_for(what: &str, timeout: Duration, mut f: impl FnMut() -> bool) {
    let start = Instant::now();
    while !f() {
        assert!(
            start.elapsed() < timeout,
            "timed out after {timeout:?} waiting for {what}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Runs `pier ARGS` (stdin `input`), killing it after `timeout`.
#[track_caller]
pub fn pier_run(
    args: &[&std::ffi::OsStr],
    input: &str,
    timeout: Duration,
) -> clients_support::Output {
    let mut cmd = pier_e2e::pier_command();
    cmd.args(args);
    if input.is_empty() {
        return clients_support::run(&mut cmd, timeout);
    }
    // clients_support::run closes stdin; this output is small, so the pipes can't fill.
    let mut child = cmd
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn pier");
    child
        .stdin
        .take()
        .expect("stdin")
        .write_all(input.as_bytes())
        .expect("write stdin");
    let start = Instant::now();
    loop {
        if child.try_wait().expect("try_wait").is_some() {
            break;
        }
        if start.elapsed() > timeout {
            let _ = child.kill();
            panic!("pier {args:?} did not finish within {timeout:?}");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let out = child.wait_with_output().expect("collect output");
    clients_support::Output {
        cmdline: format!("pier {args:?}"),
        status: out.status,
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        elapsed: start.elapsed(),
    }
}

// ---------------------------------------------------------------------------------------
// The RBAC example, runnable
// ---------------------------------------------------------------------------------------

/// `deploy/examples/rbac`.
pub fn example_dir() -> PathBuf {
    pier_e2e::manifest_dir()
        .join("..")
        .join("deploy")
        .join("examples")
        .join("rbac")
}

/// A copy of `deploy/examples/rbac` (pier.toml, users, robots) and of the built RBAC
/// plugin in a temp dir, with `pier.toml` pointing at the copy. Edit [`Self::toml`]
/// through the helpers, then [`Self::write`] and start Pier on [`Self::config`].
pub struct RbacExample {
    pub dir: TempDir,
    pub toml: String,
}

impl RbacExample {
    pub fn new() -> RbacExample {
        let dir = tempfile::Builder::new()
            .prefix("pier-rbac-example-")
            .tempdir()
            .expect("temp dir");
        let src = example_dir();
        for f in ["users.htpasswd", "robots.json"] {
            fs::copy(src.join(f), dir.path().join(f)).unwrap_or_else(|e| panic!("copy {f}: {e}"));
        }
        let wasm = dir.path().join("pier_rbac.wasm");
        fs::copy(&pier_e2e::plugins::build().rbac, &wasm).expect("copy the rbac plugin");
        let mut ex = RbacExample {
            toml: fs::read_to_string(src.join("pier.toml")).expect("read the example pier.toml"),
            dir,
        };
        ex.replace_line(
            "path = ",
            &format!("path = {:?}", wasm.display().to_string()),
        );
        ex.write();
        ex
    }

    /// Replaces the one line starting with `prefix` (panics unless exactly one does).
    pub fn replace_line(&mut self, prefix: &str, new: &str) -> &mut Self {
        let hits = self.toml.lines().filter(|l| l.starts_with(prefix)).count();
        assert_eq!(hits, 1, "lines starting with {prefix:?} in\n{}", self.toml);
        self.toml = self
            .toml
            .lines()
            .map(|l| if l.starts_with(prefix) { new } else { l })
            .collect::<Vec<_>>()
            .join("\n")
            + "\n";
        self
    }

    /// Inserts `text` (lines) after the one line equal to `line`.
    pub fn insert_after(&mut self, line: &str, text: &str) -> &mut Self {
        let hits = self.toml.lines().filter(|l| *l == line).count();
        assert_eq!(hits, 1, "lines equal to {line:?} in\n{}", self.toml);
        let mut out = String::new();
        for l in self.toml.lines() {
            out.push_str(l);
            out.push('\n');
            if l == line {
                out.push_str(text.trim_end());
                out.push('\n');
            }
        }
        self.toml = out;
        self
    }

    /// Sets `[auth] issuer`.
    pub fn issuer(&mut self, issuer: &str) -> &mut Self {
        self.replace_line("issuer = ", &format!("issuer = {issuer:?}"))
    }

    /// `public = ...` of project `team` (the first project).
    pub fn team_public(&mut self, public: bool) -> &mut Self {
        let needle = "name = \"team\"\npublic = ";
        let at = self.toml.find(needle).expect("the team project");
        let start = at + needle.len();
        let end = start + self.toml[start..].find('\n').expect("a line end");
        self.toml
            .replace_range(start..end, if public { "true" } else { "false" });
        self
    }

    /// The copied plugin.
    pub fn wasm(&self) -> PathBuf {
        self.dir.path().join("pier_rbac.wasm")
    }

    pub fn config(&self) -> PathBuf {
        self.dir.path().join("pier.toml")
    }

    pub fn write(&self) {
        fs::write(self.config(), &self.toml).expect("write pier.toml");
    }

    /// Writes the config and starts Pier on it. Keep `self` alive while Pier runs: it
    /// re-reads the users and robots files, and a vanished file means no accounts.
    #[track_caller]
    pub fn start(&self) -> TestPier {
        self.write();
        TestPier::builder()
            .arg("--config")
            .arg(self.config())
            .start()
    }
}

/// The public half of a running Pier's token key (`ROOT/pier/auth/token-key.pub.pem`).
pub fn public_key_of(pier: &TestPier) -> PathBuf {
    pier.root
        .join("pier")
        .join("auth")
        .join("token-key.pub.pem")
}

/// Appends a custom section (`name`, `payload`) to a WebAssembly binary: the component
/// means the same, its bytes (and so its digest) differ.
pub fn with_custom_section(wasm: &[u8], name: &str, payload: &[u8]) -> Vec<u8> {
    fn leb(mut n: usize, out: &mut Vec<u8>) {
        loop {
            let b = (n & 0x7f) as u8;
            n >>= 7;
            if n == 0 {
                out.push(b);
                return;
            }
            out.push(b | 0x80);
        }
    }
    let mut body = Vec::new();
    leb(name.len(), &mut body);
    body.extend_from_slice(name.as_bytes());
    body.extend_from_slice(payload);
    let mut out = wasm.to_vec();
    out.push(0);
    leb(body.len(), &mut out);
    out.extend_from_slice(&body);
    out
}

/// Writes `data` to a temp file beside `path`, optionally gives it `mtime`, and renames
/// it over `path` (so a reader never sees half a file).
pub fn replace_file(path: &Path, data: &[u8], mtime: Option<std::time::SystemTime>) {
    let tmp = path.with_extension("tmp");
    {
        let mut f = fs::File::create(&tmp).expect("create temp file");
        f.write_all(data).expect("write temp file");
        if let Some(t) = mtime {
            f.set_modified(t).expect("set mtime");
        }
        f.sync_all().expect("sync");
    }
    fs::rename(&tmp, path).expect("rename over");
}

// ---------------------------------------------------------------------------------------
// slapd
// ---------------------------------------------------------------------------------------

/// The directory's suffix.
pub const LDAP_SUFFIX: &str = "dc=pier,dc=test";

/// `uid=NAME,ou=people,dc=pier,dc=test`.
pub fn ldap_dn(user: &str) -> String {
    format!("uid={user},ou=people,{LDAP_SUFFIX}")
}

/// OpenLDAP's `slapd` on a free loopback port, run as the current user from a temp
/// `slapd.conf` with an mdb database holding `ou=people` and the given users; killed on
/// drop.
pub struct Slapd {
    pub port: u16,
    /// With [`Slapd::start_tls`]: the `ldaps://` port and the CA that signed the server's
    /// certificate.
    pub tls: Option<(u16, PathBuf)>,
    dir: TempDir,
    child: Option<Child>,
}

fn slappasswd(password: &str) -> String {
    let bin = clients_support::require_bin("slappasswd");
    let o = clients_support::run_ok(
        Command::new(bin).args(["-s", password]),
        Duration::from_secs(30),
        "slappasswd",
    );
    o.stdout.trim().to_owned()
}

impl Slapd {
    /// Starts slapd with `users` (uid, password) and waits until the first can bind.
    #[track_caller]
    pub fn start(users: &[(&str, &str)]) -> Slapd {
        Slapd::start_with(users, false)
    }

    /// [`Slapd::start`] with a certificate of a private CA ([`Slapd::tls`]), listening
    /// on `ldaps://` and on `ldap://` for StartTLS, refusing a simple bind that is not
    /// over TLS (`security simple_bind=1`: confidentialityRequired).
    #[track_caller]
    pub fn start_tls(users: &[(&str, &str)]) -> Slapd {
        Slapd::start_with(users, true)
    }

    #[track_caller]
    fn start_with(users: &[(&str, &str)], tls: bool) -> Slapd {
        let slapd = clients_support::require_bin("slapd");
        let slapadd = clients_support::require_bin("slapadd");
        clients_support::require_bin("ldapwhoami");
        let dir = tempfile::Builder::new()
            .prefix("pier-slapd-")
            .tempdir()
            .expect("temp dir");
        let d = dir.path();
        fs::create_dir_all(d.join("db")).unwrap();
        let ca = tls.then(|| {
            fs::create_dir_all(d.join("tls")).unwrap();
            pier_e2e::test_ca(&d.join("tls"))
        });
        let tls_conf = match &ca {
            Some(ca) => format!(
                "TLSCertificateFile {}\nTLSCertificateKeyFile {}\nsecurity simple_bind=1\n",
                ca.cert.display(),
                ca.key.display()
            ),
            None => String::new(),
        };
        let conf = format!(
            "{tls_conf}include /etc/ldap/schema/core.schema\n\
             include /etc/ldap/schema/cosine.schema\n\
             include /etc/ldap/schema/inetorgperson.schema\n\
             pidfile {pid}\n\
             modulepath /usr/lib/ldap\n\
             moduleload back_mdb\n\
             database mdb\n\
             maxsize 16777216\n\
             suffix \"{LDAP_SUFFIX}\"\n\
             rootdn \"cn=admin,{LDAP_SUFFIX}\"\n\
             rootpw {root}\n\
             directory {db}\n",
            pid = d.join("slapd.pid").display(),
            root = slappasswd("admin-secret"),
            db = d.join("db").display(),
        );
        fs::write(d.join("slapd.conf"), conf).unwrap();
        let mut ldif = format!(
            "dn: {LDAP_SUFFIX}\nobjectClass: dcObject\nobjectClass: organization\no: pier\ndc: pier\n\n\
             dn: ou=people,{LDAP_SUFFIX}\nobjectClass: organizationalUnit\nou: people\n"
        );
        for (uid, password) in users {
            ldif.push_str(&format!(
                "\ndn: {}\nobjectClass: inetOrgPerson\nuid: {uid}\ncn: {uid}\nsn: Test\nuserPassword: {}\n",
                ldap_dn(uid),
                slappasswd(password)
            ));
        }
        fs::write(d.join("data.ldif"), ldif).unwrap();
        clients_support::run_ok(
            Command::new(slapadd)
                .arg("-f")
                .arg(d.join("slapd.conf"))
                .arg("-l")
                .arg(d.join("data.ldif")),
            Duration::from_secs(60),
            "slapadd",
        );
        let port = free_port();
        let tls = ca.map(|ca| (free_port(), ca.ca));
        let mut listen = format!("ldap://127.0.0.1:{port}/");
        if let Some((ldaps, _)) = &tls {
            listen.push_str(&format!(" ldaps://127.0.0.1:{ldaps}/"));
        }
        let log = fs::File::create(d.join("slapd.log")).unwrap();
        let child = Command::new(slapd)
            .arg("-f")
            .arg(d.join("slapd.conf"))
            .arg("-h")
            .arg(listen)
            // -d keeps it in the foreground (our child) and logs to stderr
            .args(["-d", "0"])
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .expect("start slapd");
        let mut s = Slapd {
            port,
            tls,
            dir,
            child: Some(child),
        };
        let (uid, password) = users.first().copied().expect("at least one user");
        let start = Instant::now();
        loop {
            if let Some(c) = s.child.as_mut()
                && let Ok(Some(st)) = c.try_wait()
            {
                panic!("slapd exited early ({st}):\n{}", s.log());
            }
            if s.whoami(uid, password) {
                return s;
            }
            assert!(
                start.elapsed() < Duration::from_secs(20),
                "slapd did not accept a bind within 20 s:\n{}",
                s.log()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// `ldap://127.0.0.1:PORT`.
    pub fn url(&self) -> String {
        format!("ldap://127.0.0.1:{}", self.port)
    }

    /// `ldaps://127.0.0.1:PORT` of [`Slapd::start_tls`].
    pub fn ldaps_url(&self) -> String {
        let (port, _) = self.tls.as_ref().expect("slapd started with TLS");
        format!("ldaps://127.0.0.1:{port}")
    }

    /// Whether `ldapwhoami` binds as `uid` with `password` (over `ldaps://` trusting the
    /// CA when started with TLS).
    pub fn whoami(&self, uid: &str, password: &str) -> bool {
        let mut cmd = Command::new("ldapwhoami");
        let url = match &self.tls {
            Some((_, ca)) => {
                cmd.env("LDAPTLS_CACERT", ca);
                self.ldaps_url()
            }
            None => self.url(),
        };
        cmd.args(["-x", "-H", &url, "-D", &ldap_dn(uid), "-w", password])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success())
    }

    pub fn log(&self) -> String {
        fs::read_to_string(self.dir.path().join("slapd.log")).unwrap_or_default()
    }

    /// Kills slapd and waits for it; the port then refuses connections.
    pub fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

impl Drop for Slapd {
    fn drop(&mut self) {
        self.stop();
    }
}
