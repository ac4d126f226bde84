//! Shared pieces of the events tests: sites started from a generated config file, the
//! admin API's job and delivery views, a webhook receiver that records every request,
//! a TCP proxy that cuts one upload mid-chunk, and HMAC-SHA256 to check signatures.

use std::collections::HashMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::ops::{Deref, DerefMut};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use pier_e2e::{TestPier, http, plugins};
use serde_json::Value;
use sha2::{Digest as _, Sha256};
use tempfile::TempDir;

/// The signing secret every site of these tests uses.
pub const SECRET: &str = "pier-events-e2e-secret";

// ---------------------------------------------------------------------------------------
// Sites
// ---------------------------------------------------------------------------------------

/// A `pier serve --config FILE` whose file lives as long as the site.
pub struct Site {
    pub pier: TestPier,
    pub config: String,
    _dir: TempDir,
}

impl Deref for Site {
    type Target = TestPier;
    fn deref(&self) -> &TestPier {
        &self.pier
    }
}

impl DerefMut for Site {
    fn deref_mut(&mut self) -> &mut TestPier {
        &mut self.pier
    }
}

/// Starts a site with `config` (TOML) as its configuration file.
#[track_caller]
pub fn start_site(config: &str) -> Site {
    start_site_with_env(config, &[])
}

/// [`start_site`] with extra environment variables for the process.
pub fn start_site_with_env(config: &str, envs: &[(&str, &str)]) -> Site {
    let dir = tempfile::Builder::new()
        .prefix("pier-events-cfg-")
        .tempdir()
        .expect("temp dir");
    let path = dir.path().join("pier.toml");
    std::fs::write(&path, config).expect("write config");
    let mut builder = TestPier::builder().arg("--config").arg(&path);
    for (k, v) in envs {
        builder = builder.env(*k, *v);
    }
    let pier = builder.start();
    Site {
        pier,
        config: config.to_owned(),
        _dir: dir,
    }
}

/// `[events]` and `[replication]` with short backoffs, and the targets.
pub fn base_config(replication: &str, targets: &[(&str, String)]) -> String {
    let mut s = format!(
        "[events]\nsecret = \"{SECRET}\"\nattempts = 200\nbackoff = \"200ms\"\nbackoff_max = \"1s\"\ntimeout = \"5s\"\n\n\
         [replication]\nbackoff = \"200ms\"\nbackoff_max = \"1s\"\n{replication}\n"
    );
    for (name, url) in targets {
        s.push_str(&format!(
            "\n[replication.targets.{name}]\nurl = \"{url}\"\ntimeout = \"10s\"\n"
        ));
    }
    s
}

fn toml_path(p: &std::path::Path) -> String {
    format!("{:?}", p.display().to_string())
}

/// A `replicate` plugin with event-driven push rules `(rule, project, target)`.
pub fn replicator(name: &str, rules: &[(&str, &str, &str)]) -> String {
    let mut s = format!(
        "\n[[plugins]]\nname = \"{name}\"\nhook = \"replicator\"\npath = {}\ngrants = [\"log\", \"config\", \"kv\"]\n",
        toml_path(&plugins::build().replicate)
    );
    for (rule, project, target) in rules {
        s.push_str(&format!(
            "\n[[plugins.config.rules]]\nname = \"{rule}\"\nsource = {{ project = \"{project}\" }}\ntarget = \"{target}\"\ntrigger = \"event\"\n"
        ));
    }
    s
}

/// `host:port` of an `http://` URL.
pub fn host_port(url: &str) -> &str {
    let rest = url.strip_prefix("http://").expect("an http:// URL");
    rest.split('/').next().unwrap_or(rest)
}

/// `allowed_hosts = [...]` with the `host:port` of each URL.
pub fn allowed_hosts(urls: &[String]) -> String {
    let hosts: Vec<String> = urls.iter().map(|u| format!("{:?}", host_port(u))).collect();
    format!("allowed_hosts = [{}]", hosts.join(", "))
}

/// A `webhook` plugin posting every manifest push to each URL (CloudEvents bodies),
/// granted `http` to the URLs' hosts.
pub fn webhook(name: &str, urls: &[String]) -> String {
    let endpoints: Vec<String> = urls
        .iter()
        .map(|u| format!("{{ url = \"{u}\", events = [\"manifest-pushed\"] }}"))
        .collect();
    format!(
        "\n[[plugins]]\nname = \"{name}\"\nhook = \"notifier\"\npath = {}\ngrants = [\"log\", \"config\", \"http\"]\n{}\n\n[plugins.config]\nendpoints = [{}]\n",
        toml_path(&plugins::build().webhook),
        allowed_hosts(urls),
        endpoints.join(", ")
    )
}

/// The hostile-events plugin loaded as `hook` (`notifier` or `replicator`).
pub fn hostile(name: &str, hook: &str) -> String {
    hostile_with(name, hook, "grants = [\"log\"]")
}

/// [`hostile`] with `extra` TOML lines in its `[[plugins]]` entry (grants, config...).
pub fn hostile_with(name: &str, hook: &str, extra: &str) -> String {
    format!(
        "\n[[plugins]]\nname = \"{name}\"\nhook = \"{hook}\"\npath = {}\ntimeout = \"100ms\"\nmemory_limit = \"16MiB\"\n{extra}\n",
        toml_path(&plugins::build().hostile_events)
    )
}

// ---------------------------------------------------------------------------------------
// The admin API
// ---------------------------------------------------------------------------------------

/// `GET path` on the admin listener, as JSON (asserting 200).
#[track_caller]
pub fn admin_json(site: &TestPier, path: &str) -> Value {
    let r = http::get(site.admin_addr, path);
    r.expect_status(200, &format!("admin GET {path}"));
    r.json()
}

/// Every replication job, newest first.
pub fn jobs(site: &TestPier) -> Vec<Value> {
    admin_json(site, "/replication/jobs?limit=1000")["jobs"]
        .as_array()
        .cloned()
        .unwrap_or_default()
}

/// The job copying `repo` at `reference` to `destination`, if any.
pub fn find_job<'a>(
    jobs: &'a [Value],
    destination: &str,
    repo: &str,
    reference: &str,
) -> Option<&'a Value> {
    jobs.iter().find(|j| {
        j["destination"] == destination && j["src_repo"] == repo && j["reference"] == reference
    })
}

/// Waits until the job `(destination, repo, reference)` exists and `pred` holds for it;
/// returns it. Panics with every job and the log tail on timeout.
#[track_caller]
pub fn wait_job(
    site: &TestPier,
    destination: &str,
    repo: &str,
    reference: &str,
    timeout: Duration,
    pred: impl Fn(&Value) -> bool,
) -> Value {
    let deadline = Instant::now() + timeout;
    loop {
        let all = jobs(site);
        if let Some(j) = find_job(&all, destination, repo, reference)
            && pred(j)
        {
            return j.clone();
        }
        if Instant::now() >= deadline {
            panic!(
                "no job {repo}:{reference} -> {destination} in the wanted state within {timeout:?}\njobs: {}\n--- log:\n{}",
                serde_json::to_string_pretty(&all).unwrap_or_default(),
                site.log_tail(40)
            );
        }
        thread::sleep(Duration::from_millis(100));
    }
}

/// Waits until the job has succeeded; returns it.
#[track_caller]
pub fn wait_succeeded(
    site: &TestPier,
    destination: &str,
    repo: &str,
    reference: &str,
    timeout: Duration,
) -> Value {
    wait_job(site, destination, repo, reference, timeout, |j| {
        j["state"] == "succeeded"
    })
}

/// Every webhook delivery of the outbox (`status` filter optional).
pub fn deliveries(site: &TestPier, status: Option<&str>) -> Vec<Value> {
    let path = match status {
        Some(s) => format!("/events/deliveries?limit=1000&status={s}"),
        None => "/events/deliveries?limit=1000".to_owned(),
    };
    admin_json(site, &path)["deliveries"]
        .as_array()
        .cloned()
        .unwrap_or_default()
}

/// A metric's value from the admin `/metrics` text (0 when absent).
pub fn metric(site: &TestPier, series: &str) -> f64 {
    let r = http::get(site.admin_addr, "/metrics");
    r.expect_status(200, "GET /metrics");
    r.text()
        .lines()
        .find_map(|l| {
            let (name, value) = l.rsplit_once(' ')?;
            (name == series).then(|| value.parse().ok())?
        })
        .unwrap_or(0.0)
}

/// The digest of the manifest `repo:reference` on `addr` (sha256 of the bytes served),
/// or `None` when it is not there.
pub fn manifest_digest(addr: SocketAddr, repo: &str, reference: &str) -> Option<String> {
    let r = pier_e2e::get_manifest(addr, repo, reference);
    (r.status == 200).then(|| pier_e2e::sha256_digest(&r.body))
}

// ---------------------------------------------------------------------------------------
// HMAC-SHA256 (RFC 2104) over sha2, to check X-Pier-Signature independently of Pier
// ---------------------------------------------------------------------------------------

pub fn hmac_sha256(key: &[u8], msg: &[u8]) -> [u8; 32] {
    let mut k = [0u8; 64];
    if key.len() > 64 {
        k[..32].copy_from_slice(&Sha256::digest(key));
    } else {
        k[..key.len()].copy_from_slice(key);
    }
    let pad = |b: u8| k.iter().map(|x| x ^ b).collect::<Vec<u8>>();
    let mut inner = Sha256::new();
    inner.update(pad(0x36));
    inner.update(msg);
    let inner = inner.finalize();
    let mut outer = Sha256::new();
    outer.update(pad(0x5c));
    outer.update(inner);
    outer.finalize().into()
}

/// A receiver's check of a request with its `secret`, written here from
/// docs/webhooks.md, independently of Pier: `X-Pier-Signature` is
/// `sha256=HMAC(secret, "<X-Pier-Timestamp>.<X-Pier-Event-Id>.<X-Pier-Delivery>.<body>")`
/// and the timestamp is within 5 minutes of now.
pub fn verify_hook(h: &Hook, secret: &str) -> Result<(), String> {
    let get = |n: &str| h.header(n).ok_or_else(|| format!("no {n} header"));
    let (ts, event, delivery, sig) = (
        get("x-pier-timestamp")?,
        get("x-pier-event-id")?,
        get("x-pier-delivery")?,
        get("x-pier-signature")?,
    );
    let t: u64 = ts.parse().map_err(|_| format!("timestamp {ts:?}"))?;
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    if now.abs_diff(t) > 300 {
        return Err(format!("stale timestamp {t} (now {now})"));
    }
    let mut msg = format!("{ts}.{event}.{delivery}.").into_bytes();
    msg.extend_from_slice(&h.body);
    let want = format!(
        "sha256={}",
        hex::encode(hmac_sha256(secret.as_bytes(), &msg))
    );
    if sig == want {
        Ok(())
    } else {
        Err(format!("signature {sig} is not {want}"))
    }
}

// ---------------------------------------------------------------------------------------
// A webhook receiver
// ---------------------------------------------------------------------------------------

/// One request the receiver got.
#[derive(Debug, Clone)]
pub struct Hook {
    pub path: String,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
    /// The status it was answered with.
    pub answered: u16,
}

impl Hook {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    pub fn json(&self) -> Value {
        serde_json::from_slice(&self.body).unwrap_or(Value::Null)
    }

    /// `data.digest` of a CloudEvents body.
    pub fn digest(&self) -> String {
        self.json()["data"]["digest"]
            .as_str()
            .unwrap_or_default()
            .to_owned()
    }
}

#[derive(Default)]
struct ReceiverState {
    status: u16,
    hooks: Vec<Hook>,
}

/// An HTTP/1.1 server on 127.0.0.1 answering every request with the current status
/// (200 unless told otherwise) and recording it. Keep-alive; Content-Length bodies.
pub struct Receiver {
    pub addr: SocketAddr,
    state: Arc<Mutex<ReceiverState>>,
    stop: Arc<AtomicBool>,
}

impl Receiver {
    pub fn start() -> Receiver {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind receiver");
        listener.set_nonblocking(true).expect("nonblocking");
        let addr = listener.local_addr().unwrap();
        let state = Arc::new(Mutex::new(ReceiverState {
            status: 200,
            hooks: Vec::new(),
        }));
        let stop = Arc::new(AtomicBool::new(false));
        let (st, sp) = (state.clone(), stop.clone());
        thread::spawn(move || {
            while !sp.load(Ordering::Relaxed) {
                match listener.accept() {
                    Ok((conn, _)) => {
                        let st = st.clone();
                        thread::spawn(move || serve_hooks(conn, st));
                    }
                    Err(_) => thread::sleep(Duration::from_millis(5)),
                }
            }
        });
        Receiver { addr, state, stop }
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    /// The status later requests are answered with.
    pub fn answer(&self, status: u16) {
        self.state.lock().unwrap().status = status;
    }

    pub fn hooks(&self) -> Vec<Hook> {
        self.state.lock().unwrap().hooks.clone()
    }
}

impl Drop for Receiver {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

fn serve_hooks(conn: TcpStream, state: Arc<Mutex<ReceiverState>>) {
    let _ = conn.set_nonblocking(false);
    let _ = conn.set_read_timeout(Some(Duration::from_secs(120)));
    let mut out = match conn.try_clone() {
        Ok(c) => c,
        Err(_) => return,
    };
    let mut r = BufReader::new(conn);
    loop {
        let mut line = String::new();
        if r.read_line(&mut line).unwrap_or(0) == 0 {
            return;
        }
        let path = line.split_whitespace().nth(1).unwrap_or("").to_owned();
        let mut headers = Vec::new();
        loop {
            let mut h = String::new();
            if r.read_line(&mut h).unwrap_or(0) == 0 {
                return;
            }
            let h = h.trim_end();
            if h.is_empty() {
                break;
            }
            if let Some((k, v)) = h.split_once(':') {
                headers.push((k.trim().to_owned(), v.trim().to_owned()));
            }
        }
        let len: usize = headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case("content-length"))
            .and_then(|(_, v)| v.parse().ok())
            .unwrap_or(0);
        let mut body = vec![0; len];
        if r.read_exact(&mut body).is_err() {
            return;
        }
        let status = {
            let mut s = state.lock().unwrap();
            let status = s.status;
            s.hooks.push(Hook {
                path,
                headers,
                body,
                answered: status,
            });
            status
        };
        let reply = format!("HTTP/1.1 {status} X\r\nContent-Length: 0\r\n\r\n");
        if out.write_all(reply.as_bytes()).is_err() {
            return;
        }
    }
}

// ---------------------------------------------------------------------------------------
// A proxy that cuts one connection after so many bytes
// ---------------------------------------------------------------------------------------

/// A TCP proxy on 127.0.0.1 to `upstream`. Counts the bytes clients send; the
/// connection that carries the byte at `cut_at` (counted over all connections) is cut
/// there, once: both sockets shut down mid-request.
pub struct Proxy {
    pub addr: SocketAddr,
    sent: Arc<AtomicU64>,
    cut: Arc<AtomicBool>,
    stop: Arc<AtomicBool>,
}

impl Proxy {
    pub fn start(upstream: SocketAddr, cut_at: u64) -> Proxy {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind proxy");
        listener.set_nonblocking(true).expect("nonblocking");
        let addr = listener.local_addr().unwrap();
        let sent = Arc::new(AtomicU64::new(0));
        let cut = Arc::new(AtomicBool::new(false));
        let stop = Arc::new(AtomicBool::new(false));
        let (s, c, sp) = (sent.clone(), cut.clone(), stop.clone());
        thread::spawn(move || {
            while !sp.load(Ordering::Relaxed) {
                match listener.accept() {
                    Ok((client, _)) => {
                        let (s, c) = (s.clone(), c.clone());
                        thread::spawn(move || proxy_conn(client, upstream, s, c, cut_at));
                    }
                    Err(_) => thread::sleep(Duration::from_millis(5)),
                }
            }
        });
        Proxy {
            addr,
            sent,
            cut,
            stop,
        }
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Bytes clients sent through the proxy.
    pub fn sent(&self) -> u64 {
        self.sent.load(Ordering::Relaxed)
    }

    /// Whether the cut happened.
    pub fn did_cut(&self) -> bool {
        self.cut.load(Ordering::Relaxed)
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

fn proxy_conn(
    client: TcpStream,
    upstream: SocketAddr,
    sent: Arc<AtomicU64>,
    cut: Arc<AtomicBool>,
    cut_at: u64,
) {
    let _ = client.set_nonblocking(false);
    let Ok(server) = TcpStream::connect(upstream) else {
        let _ = client.shutdown(Shutdown::Both);
        return;
    };
    let (Ok(mut c_read), Ok(mut s_write), Ok(mut s_read), Ok(mut c_write)) = (
        client.try_clone(),
        server.try_clone(),
        server.try_clone(),
        client.try_clone(),
    ) else {
        return;
    };
    let back = thread::spawn(move || {
        let _ = std::io::copy(&mut s_read, &mut c_write);
        let _ = c_write.shutdown(Shutdown::Write);
    });
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        let n = match c_read.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => n,
        };
        let before = sent.fetch_add(n as u64, Ordering::Relaxed);
        if before + n as u64 >= cut_at && !cut.swap(true, Ordering::Relaxed) {
            let keep = cut_at.saturating_sub(before) as usize;
            let _ = s_write.write_all(&buf[..keep.min(n)]);
            sent.fetch_sub((n - keep.min(n)) as u64, Ordering::Relaxed);
            let _ = client.shutdown(Shutdown::Both);
            let _ = server.shutdown(Shutdown::Both);
            break;
        }
        if s_write.write_all(&buf[..n]).is_err() {
            break;
        }
    }
    let _ = s_write.shutdown(Shutdown::Write);
    let _ = back.join();
}

/// Counts of a value in a list (for messages).
pub fn count_by<T: std::hash::Hash + Eq + Clone>(items: &[T]) -> HashMap<T, usize> {
    let mut m = HashMap::new();
    for i in items {
        *m.entry(i.clone()).or_insert(0) += 1;
    }
    m
}
