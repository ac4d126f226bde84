//! Shared helpers for the real-client end-to-end tests (`clients_*.rs`): running external
//! commands with timeouts, daemons killed on drop, OCI image layouts built from scratch,
//! and wrappers that start skopeo, dockerd, containerd and the reference registry
//! (CNCF distribution, Debian's `docker-registry`) isolated in temp dirs on free
//! loopback ports.
//!
//! Every wait has a timeout; every daemon is stopped (SIGTERM, then SIGKILL) when its
//! handle drops, so a failing assertion does not leave processes behind. A missing client
//! binary panics with a hint to run `scripts/install-test-deps.sh`: nothing is skipped.
#![allow(dead_code, unused_imports)]

use std::fmt;
use std::fs::{self, File};
use std::io::{Read, Write};
use std::net::SocketAddr;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::thread;
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use sha2::{Digest as _, Sha256};
use tempfile::TempDir;

/// How long one client command (a push, a pull, an inspect) may take.
pub const CMD_TIMEOUT: Duration = Duration::from_secs(180);
/// How long a daemon may take to become ready.
pub const START_TIMEOUT: Duration = Duration::from_secs(30);

const INSTALL_HINT: &str = "run scripts/install-test-deps.sh (as root) to install the real clients";

// ---------------------------------------------------------------------------------------
// Binaries and commands
// ---------------------------------------------------------------------------------------

/// Finds `name` in `PATH` or the usual sbin/bin directories.
pub fn find_bin(name: &str) -> Option<PathBuf> {
    let mut dirs: Vec<PathBuf> = std::env::var_os("PATH")
        .map(|p| std::env::split_paths(&p).collect())
        .unwrap_or_default();
    for d in [
        "/usr/local/sbin",
        "/usr/local/bin",
        "/usr/sbin",
        "/usr/bin",
        "/sbin",
        "/bin",
    ] {
        dirs.push(PathBuf::from(d));
    }
    dirs.into_iter().map(|d| d.join(name)).find(|p| {
        p.metadata()
            .is_ok_and(|m| m.is_file() && m.mode() & 0o111 != 0)
    })
}

/// Like [`find_bin`], but panics with an install hint when the binary is missing.
#[track_caller]
pub fn require_bin(name: &str) -> PathBuf {
    find_bin(name).unwrap_or_else(|| panic!("`{name}` is not installed: {INSTALL_HINT}"))
}

/// The captured result of a finished command.
pub struct Output {
    pub cmdline: String,
    pub status: ExitStatus,
    pub stdout: String,
    pub stderr: String,
    pub elapsed: Duration,
}

impl Output {
    pub fn success(&self) -> bool {
        self.status.success()
    }
    /// stdout and stderr together (clients print progress on either).
    pub fn all(&self) -> String {
        format!("{}\n{}", self.stdout, self.stderr)
    }
}

impl fmt::Display for Output {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(
            f,
            "$ {}\n[{} after {:.1?}]",
            self.cmdline, self.status, self.elapsed
        )?;
        writeln!(f, "--- stdout\n{}", tail(&self.stdout, 60))?;
        write!(f, "--- stderr\n{}", tail(&self.stderr, 60))
    }
}

/// The last `n` lines of `s`.
pub fn tail(s: &str, n: usize) -> String {
    let lines: Vec<&str> = s.lines().collect();
    let start = lines.len().saturating_sub(n);
    lines[start..].join("\n")
}

fn describe(cmd: &Command) -> String {
    let mut s = cmd.get_program().to_string_lossy().into_owned();
    for a in cmd.get_args() {
        s.push(' ');
        let a = a.to_string_lossy();
        if a.contains(' ') || a.is_empty() {
            s.push_str(&format!("'{a}'"));
        } else {
            s.push_str(&a);
        }
    }
    s
}

/// Runs `cmd` to completion, killing it after `timeout` (then panicking with what it
/// printed so far). stdin is closed.
#[track_caller]
pub fn run(cmd: &mut Command, timeout: Duration) -> Output {
    let cmdline = describe(cmd);
    let started = Instant::now();
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("cannot run `{cmdline}`: {e} ({INSTALL_HINT})"));
    let mut out = child.stdout.take().expect("stdout");
    let mut err = child.stderr.take().expect("stderr");
    let t_out = thread::spawn(move || {
        let mut v = Vec::new();
        let _ = out.read_to_end(&mut v);
        v
    });
    let t_err = thread::spawn(move || {
        let mut v = Vec::new();
        let _ = err.read_to_end(&mut v);
        v
    });
    let status = loop {
        if let Some(st) = child.try_wait().expect("try_wait") {
            break st;
        }
        if started.elapsed() > timeout {
            let _ = child.kill();
            let st = child.wait().expect("wait");
            let stdout = String::from_utf8_lossy(&t_out.join().unwrap_or_default()).into_owned();
            let stderr = String::from_utf8_lossy(&t_err.join().unwrap_or_default()).into_owned();
            let o = Output {
                cmdline,
                status: st,
                stdout,
                stderr,
                elapsed: started.elapsed(),
            };
            panic!("command timed out after {timeout:?}:\n{o}");
        }
        thread::sleep(Duration::from_millis(20));
    };
    let stdout = String::from_utf8_lossy(&t_out.join().unwrap_or_default()).into_owned();
    let stderr = String::from_utf8_lossy(&t_err.join().unwrap_or_default()).into_owned();
    Output {
        cmdline,
        status,
        stdout,
        stderr,
        elapsed: started.elapsed(),
    }
}

/// [`run`], panicking (with the command's output and `context`) unless it exits 0.
#[track_caller]
pub fn run_ok(cmd: &mut Command, timeout: Duration, context: &str) -> Output {
    let o = run(cmd, timeout);
    assert!(o.success(), "{context}: command failed\n{o}");
    o
}

/// Polls `f` every 50 ms until it returns true; panics after `timeout` with `what`.
#[track_caller]
pub fn wait_until(what: &str, timeout: Duration, mut f: impl FnMut() -> bool) {
    let start = Instant::now();
    loop {
        if f() {
            return;
        }
        if start.elapsed() > timeout {
            panic!("timed out after {timeout:?} waiting for {what}");
        }
        thread::sleep(Duration::from_millis(50));
    }
}

/// Polls `f` until it returns true or `timeout` passes; returns whether it succeeded.
pub fn poll(timeout: Duration, mut f: impl FnMut() -> bool) -> bool {
    let start = Instant::now();
    loop {
        if f() {
            return true;
        }
        if start.elapsed() > timeout {
            return false;
        }
        thread::sleep(Duration::from_millis(50));
    }
}

/// A unique temp dir (under `$TMPDIR`, which scripts/test.sh points at a per-run dir).
pub fn temp_dir(prefix: &str) -> TempDir {
    tempfile::Builder::new()
        .prefix(&format!("pier-{prefix}-"))
        .tempdir()
        .expect("create temp dir")
}

pub fn is_root() -> bool {
    fs::metadata("/proc/self")
        .map(|m| m.uid() == 0)
        .unwrap_or(false)
}

/// Sends `signal` (a name like `TERM`) to `pid` through the shell's builtin `kill`.
pub fn send_signal(pid: u32, signal: &str) {
    let _ = Command::new("sh")
        .args(["-c", &format!("kill -{signal} {pid} 2>/dev/null")])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status();
}

/// Whether `pid` is a live (non-zombie) process whose command line contains `marker`.
fn process_alive_with(pid: u32, marker: &str) -> bool {
    let Ok(cmdline) = fs::read(format!("/proc/{pid}/cmdline")) else {
        return false;
    };
    let stat = fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    let zombie = stat
        .rsplit_once(')')
        .is_some_and(|(_, rest)| rest.trim_start().starts_with('Z'));
    !zombie && String::from_utf8_lossy(&cmdline).contains(marker)
}

// ---------------------------------------------------------------------------------------
// Daemons
// ---------------------------------------------------------------------------------------

/// A background process with its output in a log file; stopped on drop.
pub struct Daemon {
    name: String,
    child: Option<Child>,
    log: PathBuf,
    /// Pid files of helper processes the daemon starts (dockerd's containerd), each with a
    /// marker its command line must contain before we signal it.
    helpers: Vec<(PathBuf, String)>,
}

impl Daemon {
    /// Starts `cmd` with stdout and stderr appended to `log`.
    #[track_caller]
    pub fn spawn(name: &str, cmd: &mut Command, log: &Path) -> Daemon {
        let f = File::options()
            .create(true)
            .append(true)
            .open(log)
            .expect("open daemon log");
        let cmdline = describe(cmd);
        let child = cmd
            .stdin(Stdio::null())
            .stdout(f.try_clone().expect("clone log fd"))
            .stderr(f)
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {name} (`{cmdline}`): {e} ({INSTALL_HINT})"));
        Daemon {
            name: name.to_owned(),
            child: Some(child),
            log: log.to_owned(),
            helpers: Vec::new(),
        }
    }

    /// Also stop the process whose pid is in `pidfile` (if its command line contains `marker`).
    pub fn add_helper_pidfile(&mut self, pidfile: PathBuf, marker: &str) {
        self.helpers.push((pidfile, marker.to_owned()));
    }

    pub fn pid(&self) -> u32 {
        self.child.as_ref().map(|c| c.id()).unwrap_or(0)
    }

    pub fn log_path(&self) -> &Path {
        &self.log
    }

    pub fn log(&self) -> String {
        String::from_utf8_lossy(&fs::read(&self.log).unwrap_or_default()).into_owned()
    }

    pub fn log_tail(&self, n: usize) -> String {
        format!(
            "--- last lines of {} log ({})\n{}",
            self.name,
            self.log.display(),
            tail(&self.log(), n)
        )
    }

    /// Whether the process still runs (false once it exited or was stopped).
    pub fn is_running(&mut self) -> bool {
        self.child
            .as_mut()
            .is_some_and(|c| matches!(c.try_wait(), Ok(None)))
    }

    /// Whether the process still runs; panics with its log if it exited.
    #[track_caller]
    pub fn assert_running(&mut self) {
        if let Some(c) = self.child.as_mut()
            && let Ok(Some(st)) = c.try_wait()
        {
            panic!("{} exited early ({st})\n{}", self.name, self.log_tail(40));
        }
    }

    /// Waits for `ready`, failing fast (with the log) if the process dies.
    #[track_caller]
    pub fn wait_ready(&mut self, what: &str, timeout: Duration, mut ready: impl FnMut() -> bool) {
        let start = Instant::now();
        loop {
            self.assert_running();
            if ready() {
                return;
            }
            if start.elapsed() > timeout {
                panic!(
                    "{} not ready ({what}) after {timeout:?}\n{}",
                    self.name,
                    self.log_tail(40)
                );
            }
            thread::sleep(Duration::from_millis(50));
        }
    }

    /// SIGTERM, up to 15 s of grace, then SIGKILL; then the same for helper processes.
    pub fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            if c.try_wait().ok().flatten().is_none() {
                send_signal(c.id(), "TERM");
                let exited = poll(Duration::from_secs(15), || {
                    c.try_wait().ok().flatten().is_some()
                });
                if !exited {
                    eprintln!("{} ignored SIGTERM for 15 s: SIGKILL", self.name);
                    let _ = c.kill();
                }
            }
            let _ = c.wait();
        }
        for (pidfile, marker) in std::mem::take(&mut self.helpers) {
            let Some(pid) = fs::read_to_string(&pidfile)
                .ok()
                .and_then(|s| s.trim().parse::<u32>().ok())
            else {
                continue;
            };
            if process_alive_with(pid, &marker) {
                send_signal(pid, "TERM");
                if !poll(Duration::from_secs(10), || {
                    !process_alive_with(pid, &marker)
                }) {
                    send_signal(pid, "KILL");
                }
            }
        }
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Mount points at or below `dir` (deepest first), from /proc/mounts.
pub fn mounts_under(dir: &Path) -> Vec<PathBuf> {
    let dir = dir.to_string_lossy().into_owned();
    let mut v: Vec<PathBuf> = fs::read_to_string("/proc/mounts")
        .unwrap_or_default()
        .lines()
        .filter_map(|l| l.split_whitespace().nth(1))
        // /proc/mounts escapes blanks as octal; temp dir names have none.
        .filter(|m| *m == dir || m.starts_with(&format!("{dir}/")))
        .map(PathBuf::from)
        .collect();
    v.sort_by_key(|p| std::cmp::Reverse(p.as_os_str().len()));
    v.dedup();
    v
}

/// Lazily unmounts everything at or below `dir` (what a daemon left mounted there), so
/// the temp dir can be removed.
pub fn unmount_under(dir: &Path) {
    for m in mounts_under(dir) {
        let _ = Command::new("umount")
            .arg("-l")
            .arg(&m)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
    }
}

/// Whether something accepts TCP connections on `addr`.
pub fn tcp_open(addr: SocketAddr) -> bool {
    std::net::TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_ok()
}

/// `GET /v2/` answered 200 on `addr` (any registry).
pub fn registry_ready(addr: SocketAddr) -> bool {
    tcp_open(addr)
        && pier_e2e::http::try_request(addr, "GET", "/v2/", &[], b"").is_ok_and(|r| r.status == 200)
}

// ---------------------------------------------------------------------------------------
// Digests and deterministic data
// ---------------------------------------------------------------------------------------

pub fn sha256_hex(data: &[u8]) -> String {
    hex::encode(Sha256::digest(data))
}

/// `sha256:<hex>` of a file, streamed.
pub fn file_digest(path: &Path) -> String {
    let mut f = File::open(path).unwrap_or_else(|e| panic!("open {}: {e}", path.display()));
    let mut h = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = f.read(&mut buf).expect("read");
        if n == 0 {
            break;
        }
        h.update(&buf[..n]);
    }
    format!("sha256:{}", hex::encode(h.finalize()))
}

/// Random bytes for unique test content (not cryptographic; unique per call).
pub fn unique_bytes(n: usize) -> Vec<u8> {
    pier_e2e::random_bytes(n)
}

/// A deterministic byte stream of any length: byte `o` depends only on `seed` and `o`,
/// so any range can be regenerated without keeping the data (large uploads).
#[derive(Clone, Copy)]
pub struct Generator {
    pub seed: u64,
    pub len: u64,
}

fn splitmix64(mut z: u64) -> u64 {
    z = z.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

impl Generator {
    pub fn new(seed: u64, len: u64) -> Generator {
        Generator { seed, len }
    }

    /// Fills `buf` with the bytes at `offset..offset + buf.len()`.
    pub fn fill(&self, offset: u64, buf: &mut [u8]) {
        let mut o = offset;
        let mut i = 0;
        while i < buf.len() {
            let word = splitmix64(self.seed ^ (o / 8).wrapping_mul(0x2545_F491_4F6C_DD1D));
            let bytes = word.to_le_bytes();
            let start = (o % 8) as usize;
            let n = (8 - start).min(buf.len() - i);
            buf[i..i + n].copy_from_slice(&bytes[start..start + n]);
            i += n;
            o += n as u64;
        }
    }

    /// Calls `f` with consecutive pieces (at most 1 MiB) of `start..end`.
    pub fn for_each_piece(&self, start: u64, end: u64, mut f: impl FnMut(&[u8])) {
        let mut buf = vec![0u8; 1 << 20];
        let mut o = start;
        while o < end {
            let n = ((end - o) as usize).min(buf.len());
            self.fill(o, &mut buf[..n]);
            f(&buf[..n]);
            o += n as u64;
        }
    }

    /// `sha256:<hex>` of the whole stream.
    pub fn digest(&self) -> String {
        let mut h = Sha256::new();
        self.for_each_piece(0, self.len, |p| h.update(p));
        format!("sha256:{}", hex::encode(h.finalize()))
    }
}

// ---------------------------------------------------------------------------------------
// tar + gzip layers and OCI image layouts
// ---------------------------------------------------------------------------------------

/// A minimal, deterministic ustar writer (regular files and directories).
#[derive(Default)]
pub struct Tar {
    buf: Vec<u8>,
}

impl Tar {
    pub fn new() -> Tar {
        Tar::default()
    }

    fn header(&mut self, name: &str, mode: u32, size: u64, typeflag: u8) {
        assert!(name.len() < 100, "tar name too long: {name}");
        let mut h = [0u8; 512];
        h[..name.len()].copy_from_slice(name.as_bytes());
        let octal = |field: &mut [u8], v: u64| {
            let s = format!("{:0width$o}\0", v, width = field.len() - 1);
            field.copy_from_slice(s.as_bytes());
        };
        octal(&mut h[100..108], mode as u64);
        octal(&mut h[108..116], 0);
        octal(&mut h[116..124], 0);
        octal(&mut h[124..136], size);
        octal(&mut h[136..148], 1_700_000_000);
        h[148..156].copy_from_slice(b"        ");
        h[156] = typeflag;
        h[257..263].copy_from_slice(b"ustar\0");
        h[263..265].copy_from_slice(b"00");
        h[265..269].copy_from_slice(b"root");
        h[297..301].copy_from_slice(b"root");
        let sum: u32 = h.iter().map(|b| *b as u32).sum();
        let s = format!("{sum:06o}\0 ");
        h[148..156].copy_from_slice(s.as_bytes());
        self.buf.extend_from_slice(&h);
    }

    pub fn dir(mut self, name: &str) -> Tar {
        let n = if name.ends_with('/') {
            name.to_owned()
        } else {
            format!("{name}/")
        };
        self.header(&n, 0o755, 0, b'5');
        self
    }

    pub fn file(mut self, name: &str, data: &[u8]) -> Tar {
        self.header(name, 0o644, data.len() as u64, b'0');
        self.buf.extend_from_slice(data);
        let pad = (512 - data.len() % 512) % 512;
        self.buf.extend(std::iter::repeat_n(0u8, pad));
        self
    }

    pub fn finish(mut self) -> Vec<u8> {
        self.buf.extend(std::iter::repeat_n(0u8, 1024));
        self.buf
    }
}

/// gzip (`gzip -n`, no name or timestamp: deterministic).
pub fn gzip(data: &[u8]) -> Vec<u8> {
    gzip_level(data, 6)
}

/// gzip at a compression level (1 is fast on incompressible layers).
pub fn gzip_level(data: &[u8], level: u8) -> Vec<u8> {
    let gz = require_bin("gzip");
    let mut child = Command::new(gz)
        .args(["-n", "-c", &format!("-{level}")])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("spawn gzip");
    let mut stdin = child.stdin.take().expect("stdin");
    let input = data.to_vec();
    let writer = thread::spawn(move || {
        let _ = stdin.write_all(&input);
    });
    let out = child.wait_with_output().expect("gzip");
    writer.join().expect("gzip writer");
    assert!(out.status.success(), "gzip failed");
    out.stdout
}

pub use pier_e2e::media::{DOCKER_MANIFEST, OCI_CONFIG, OCI_LAYER as OCI_LAYER_GZIP, OCI_MANIFEST};

/// The Go/OCI architecture name of this machine.
pub fn oci_arch() -> &'static str {
    match std::env::consts::ARCH {
        "x86_64" => "amd64",
        "aarch64" => "arm64",
        other => other,
    }
}

/// What a test image consists of, with every digest.
#[derive(Clone, Debug)]
pub struct TestImage {
    pub tag: String,
    pub manifest: Vec<u8>,
    pub manifest_digest: String,
    pub config: Vec<u8>,
    pub config_digest: String,
    /// (gzip bytes, digest) per layer, bottom first.
    pub layers: Vec<(Vec<u8>, String)>,
}

impl TestImage {
    /// An image with `n_layers` small gzip tar layers whose content is unique to this call.
    pub fn new(tag: &str, n_layers: usize) -> TestImage {
        TestImage::for_arch(tag, n_layers, oci_arch())
    }

    /// As [`TestImage::new`], for another architecture.
    pub fn for_arch(tag: &str, n_layers: usize, arch: &str) -> TestImage {
        let mut sizes = vec![0; n_layers];
        if let Some(first) = sizes.first_mut() {
            *first = 4096;
        }
        TestImage::build(tag, &sizes, arch)
    }

    /// An image whose layer `i` holds `random[i]` random bytes (large layers; gzip -1).
    pub fn with_random_layers(tag: &str, random: &[usize]) -> TestImage {
        TestImage::build(tag, random, oci_arch())
    }

    fn build(tag: &str, random: &[usize], arch: &str) -> TestImage {
        let n_layers = random.len();
        let salt = hex::encode(unique_bytes(8));
        let mut layers = Vec::new();
        let mut diff_ids = Vec::new();
        for (i, &n) in random.iter().enumerate() {
            let mut t = Tar::new().dir("etc").file(
                &format!("etc/layer-{i}.txt"),
                format!("pier test layer {i} salt {salt}\n").as_bytes(),
            );
            if n > 0 {
                t = t.dir("data").file("data/random.bin", &unique_bytes(n));
            }
            let tar = t.finish();
            diff_ids.push(format!("sha256:{}", sha256_hex(&tar)));
            let gz = if n > 1 << 20 {
                gzip_level(&tar, 1)
            } else {
                gzip(&tar)
            };
            let d = format!("sha256:{}", sha256_hex(&gz));
            layers.push((gz, d));
        }
        let config = serde_json::to_vec(&json!({
            "architecture": arch,
            "os": "linux",
            "created": "2024-01-01T00:00:00Z",
            "config": { "Env": ["PATH=/usr/bin:/bin"], "Cmd": ["/bin/true"], "Labels": { "pier.test.salt": salt } },
            "rootfs": { "type": "layers", "diff_ids": diff_ids },
            "history": (0..n_layers).map(|i| json!({"created": "2024-01-01T00:00:00Z", "created_by": format!("layer {i}")})).collect::<Vec<_>>(),
        }))
        .unwrap();
        let config_digest = format!("sha256:{}", sha256_hex(&config));
        let manifest = serde_json::to_vec(&json!({
            "schemaVersion": 2,
            "mediaType": OCI_MANIFEST,
            "config": { "mediaType": OCI_CONFIG, "digest": config_digest, "size": config.len() },
            "layers": layers.iter().map(|(gz, d)| json!({"mediaType": OCI_LAYER_GZIP, "digest": d, "size": gz.len()})).collect::<Vec<_>>(),
            "annotations": { "org.opencontainers.image.title": "pier-test" },
        }))
        .unwrap();
        let manifest_digest = format!("sha256:{}", sha256_hex(&manifest));
        TestImage {
            tag: tag.to_owned(),
            manifest,
            manifest_digest,
            config,
            config_digest,
            layers,
        }
    }

    /// Every blob digest (config and layers).
    pub fn blob_digests(&self) -> Vec<String> {
        let mut v = vec![self.config_digest.clone()];
        v.extend(self.layers.iter().map(|(_, d)| d.clone()));
        v
    }

    /// Writes an OCI image layout (`oci-layout`, `index.json`, `blobs/sha256/...`) to `dir`.
    pub fn write_oci_layout(&self, dir: &Path) {
        let blobs = dir.join("blobs/sha256");
        fs::create_dir_all(&blobs).unwrap();
        let put = |data: &[u8], digest: &str| {
            fs::write(blobs.join(digest.trim_start_matches("sha256:")), data).unwrap();
        };
        put(&self.manifest, &self.manifest_digest);
        put(&self.config, &self.config_digest);
        for (gz, d) in &self.layers {
            put(gz, d);
        }
        fs::write(dir.join("oci-layout"), br#"{"imageLayoutVersion":"1.0.0"}"#).unwrap();
        let index = json!({
            "schemaVersion": 2,
            "manifests": [{
                "mediaType": OCI_MANIFEST,
                "digest": self.manifest_digest,
                "size": self.manifest.len(),
                "annotations": { "org.opencontainers.image.ref.name": self.tag },
            }],
        });
        fs::write(dir.join("index.json"), serde_json::to_vec(&index).unwrap()).unwrap();
    }
}

/// A multi-platform image: an OCI image index over two images (this machine's
/// architecture and another), for `skopeo copy --all`.
#[derive(Clone, Debug)]
pub struct TestIndex {
    pub tag: String,
    pub index: Vec<u8>,
    pub index_digest: String,
    pub images: Vec<TestImage>,
}

impl TestIndex {
    pub fn new(tag: &str) -> TestIndex {
        let other_arch = if oci_arch() == "arm64" {
            "amd64"
        } else {
            "arm64"
        };
        let images = vec![
            TestImage::new(tag, 1),
            TestImage::for_arch(tag, 2, other_arch),
        ];
        let index = serde_json::to_vec(&json!({
            "schemaVersion": 2,
            "mediaType": pier_e2e::media::OCI_INDEX,
            "manifests": [
                {"mediaType": OCI_MANIFEST, "digest": images[0].manifest_digest, "size": images[0].manifest.len(),
                 "platform": {"architecture": oci_arch(), "os": "linux"}},
                {"mediaType": OCI_MANIFEST, "digest": images[1].manifest_digest, "size": images[1].manifest.len(),
                 "platform": {"architecture": other_arch, "os": "linux"}},
            ],
        }))
        .unwrap();
        let index_digest = format!("sha256:{}", sha256_hex(&index));
        TestIndex {
            tag: tag.to_owned(),
            index,
            index_digest,
            images,
        }
    }

    /// Writes an OCI layout whose tag names the index.
    pub fn write_oci_layout(&self, dir: &Path) {
        for img in &self.images {
            img.write_oci_layout(dir);
        }
        let blobs = dir.join("blobs/sha256");
        fs::write(
            blobs.join(self.index_digest.trim_start_matches("sha256:")),
            &self.index,
        )
        .unwrap();
        let index = json!({
            "schemaVersion": 2,
            "manifests": [{
                "mediaType": pier_e2e::media::OCI_INDEX,
                "digest": self.index_digest,
                "size": self.index.len(),
                "annotations": { "org.opencontainers.image.ref.name": self.tag },
            }],
        });
        fs::write(dir.join("index.json"), serde_json::to_vec(&index).unwrap()).unwrap();
    }
}

/// Asserts the registry serves `idx` at `name:reference` and every child image by digest.
#[track_caller]
pub fn assert_registry_has_index(addr: SocketAddr, name: &str, reference: &str, idx: &TestIndex) {
    let r = get_manifest(addr, name, reference);
    r.expect_status(200, &format!("GET index {name}:{reference}"));
    assert_eq!(
        format!("sha256:{}", sha256_hex(&r.body)),
        idx.index_digest,
        "index bytes of {name}:{reference}\n{r}"
    );
    assert_eq!(
        r.header("content-type"),
        Some(pier_e2e::media::OCI_INDEX),
        "index Content-Type"
    );
    for img in &idx.images {
        assert_registry_has_image(addr, name, &img.manifest_digest, img);
    }
}

/// Reads an OCI layout written by a client: the manifest descriptor tagged `tag` (or the
/// only one) and the blob bytes it names.
pub struct OciLayoutRead {
    pub manifest_digest: String,
    pub manifest: Vec<u8>,
    pub dir: PathBuf,
}

impl OciLayoutRead {
    #[track_caller]
    pub fn open(dir: &Path, tag: Option<&str>) -> OciLayoutRead {
        let index: Value =
            serde_json::from_slice(&fs::read(dir.join("index.json")).expect("index.json")).unwrap();
        let manifests = index["manifests"].as_array().expect("manifests").clone();
        let desc = manifests
            .iter()
            .find(|m| {
                tag.is_none_or(|t| m["annotations"]["org.opencontainers.image.ref.name"] == t)
            })
            .unwrap_or_else(|| panic!("no manifest for tag {tag:?} in {index}"));
        let manifest_digest = desc["digest"].as_str().unwrap().to_owned();
        let l = OciLayoutRead {
            manifest: Vec::new(),
            manifest_digest,
            dir: dir.to_owned(),
        };
        let manifest = l.blob(&l.manifest_digest);
        OciLayoutRead { manifest, ..l }
    }

    pub fn blob_path(&self, digest: &str) -> PathBuf {
        let (alg, hex) = digest.split_once(':').expect("digest");
        self.dir.join("blobs").join(alg).join(hex)
    }

    #[track_caller]
    pub fn blob(&self, digest: &str) -> Vec<u8> {
        fs::read(self.blob_path(digest)).unwrap_or_else(|e| panic!("blob {digest} in layout: {e}"))
    }
}

// ---------------------------------------------------------------------------------------
// Raw registry helpers
// ---------------------------------------------------------------------------------------

pub use pier_e2e::get_manifest;

/// Asserts the registry serves `image` at `name:reference` byte for byte, and every blob.
#[track_caller]
pub fn assert_registry_has_image(addr: SocketAddr, name: &str, reference: &str, image: &TestImage) {
    let r = get_manifest(addr, name, reference);
    r.expect_status(200, &format!("GET manifest {name}:{reference}"));
    assert_eq!(
        format!("sha256:{}", sha256_hex(&r.body)),
        image.manifest_digest,
        "manifest bytes of {name}:{reference} differ from what was pushed\n{r}"
    );
    if let Some(d) = r.header("docker-content-digest") {
        assert_eq!(
            d, image.manifest_digest,
            "Docker-Content-Digest of {name}:{reference}"
        );
    }
    for d in image.blob_digests() {
        let b = pier_e2e::http::request(addr, "GET", &format!("/v2/{name}/blobs/{d}"), &[], b"");
        b.expect_status(200, &format!("GET blob {d} in {name}"));
        assert_eq!(
            format!("sha256:{}", sha256_hex(&b.body)),
            d,
            "blob bytes of {d} in {name}"
        );
    }
}

// ---------------------------------------------------------------------------------------
// skopeo
// ---------------------------------------------------------------------------------------

/// As root, c/image keeps its blob-info cache in /var/lib/containers/cache whatever HOME
/// says: the skopeo and podman wrappers hide it behind a bind mount in a private mount
/// namespace, entered through the `unshare` this returns (None when not root: HOME decides).
pub fn private_cache_unshare() -> Option<PathBuf> {
    if !is_root() {
        return None;
    }
    let u = require_bin("unshare");
    fs::create_dir_all("/var/lib/containers/cache").expect("mkdir /var/lib/containers/cache");
    Some(u)
}

/// A command running `bin` (through `unshare`, see [`private_cache_unshare`]) with the
/// isolation both c/image clients need from `dir`: blob-info cache `dir/cache`, HOME and XDG
/// dirs, tmp dir, auth file and registries.conf.
pub fn isolated_containers_command(bin: &Path, unshare: Option<&Path>, dir: &Path) -> Command {
    let mut c = match unshare {
        Some(u) => {
            let mut c = Command::new(u);
            c.args(["--mount", "--propagation", "private", "sh", "-c"])
                .arg("mount --bind \"$PIER_CONTAINERS_CACHE\" /var/lib/containers/cache && exec \"$0\" \"$@\"")
                .arg(bin);
            c
        }
        None => Command::new(bin),
    };
    c.env("PIER_CONTAINERS_CACHE", dir.join("cache"))
        .env("HOME", dir.join("home"))
        .env("XDG_RUNTIME_DIR", dir.join("run"))
        .env("XDG_DATA_HOME", dir.join("home/.local/share"))
        .env("XDG_CONFIG_HOME", dir.join("home/.config"))
        .env("REGISTRY_AUTH_FILE", dir.join("auth.json"))
        .env("CONTAINERS_REGISTRIES_CONF", dir.join("registries.conf"))
        .env("TMPDIR", dir.join("tmp"));
    c
}

/// skopeo with its own HOME, auth file, registries.conf, trust policy, tmp dir and — as
/// root, through a private mount namespace — its own blob-info cache, so it never tries
/// cross-repo mounts remembered from earlier runs.
pub struct Skopeo {
    pub dir: TempDir,
    bin: PathBuf,
    unshare: Option<PathBuf>,
}

impl Skopeo {
    pub fn new() -> Skopeo {
        let bin = require_bin("skopeo");
        let dir = temp_dir("skopeo");
        let d = dir.path();
        for sub in ["home", "tmp", "cache", "registries.d", "run"] {
            fs::create_dir_all(d.join(sub)).unwrap();
        }
        fs::write(
            d.join("policy.json"),
            r#"{"default":[{"type":"insecureAcceptAnything"}]}"#,
        )
        .unwrap();
        fs::write(
            d.join("registries.conf"),
            "unqualified-search-registries = []\n",
        )
        .unwrap();
        fs::write(d.join("auth.json"), "{}").unwrap();
        let unshare = private_cache_unshare();
        Skopeo { dir, bin, unshare }
    }

    /// A `skopeo` command with the isolation flags and environment set; add arguments.
    pub fn cmd(&self) -> Command {
        let d = self.dir.path();
        let mut c = isolated_containers_command(&self.bin, self.unshare.as_deref(), d);
        c.arg("--policy")
            .arg(d.join("policy.json"))
            .arg("--registries.d")
            .arg(d.join("registries.d"))
            .arg("--tmpdir")
            .arg(d.join("tmp"));
        c
    }

    /// Runs `skopeo ARGS`, panicking with its output on failure.
    #[track_caller]
    pub fn ok(&self, args: &[&str], context: &str) -> Output {
        run_ok(self.cmd().args(args), CMD_TIMEOUT, context)
    }

    /// Runs `skopeo ARGS` and returns the output whatever the exit status.
    pub fn run(&self, args: &[&str]) -> Output {
        run(self.cmd().args(args), CMD_TIMEOUT)
    }

    /// Copies an image into a fresh OCI layout in this skopeo's dir and returns its path.
    #[track_caller]
    pub fn pull_to_oci(&self, src: &str, name: &str) -> PathBuf {
        let out = self.dir.path().join(format!("out-{name}"));
        self.ok(
            &[
                "copy",
                "--src-tls-verify=false",
                src,
                &format!("oci:{}:{name}", out.display()),
            ],
            &format!("skopeo copy {src} to an OCI layout"),
        );
        out
    }
}

impl Default for Skopeo {
    fn default() -> Self {
        Skopeo::new()
    }
}

// ---------------------------------------------------------------------------------------
// The ORAS Python SDK
// ---------------------------------------------------------------------------------------

/// The Python of the venv holding the `oras` SDK: `$PIER_PYTHON`, else
/// `${PIER_CACHE:-$HOME/.cache/pier}/venv/bin/python`. Panics when it is missing.
#[track_caller]
pub fn oras_python() -> PathBuf {
    let py = match std::env::var_os("PIER_PYTHON") {
        Some(p) => PathBuf::from(p),
        None => std::env::var_os("PIER_CACHE")
            .map(PathBuf::from)
            .unwrap_or_else(|| {
                PathBuf::from(std::env::var_os("HOME").unwrap_or_else(|| "/root".into()))
                    .join(".cache/pier")
            })
            .join("venv/bin/python"),
    };
    assert!(
        py.exists(),
        "no Python with the oras SDK at {} (set PIER_PYTHON, or {INSTALL_HINT})",
        py.display()
    );
    py
}

// ---------------------------------------------------------------------------------------
// Reference registry (CNCF distribution 2.8.2, Debian's docker-registry)
// ---------------------------------------------------------------------------------------

/// The reference registry serving `root` (filesystem driver) on a free loopback port.
pub struct RefRegistry {
    pub addr: SocketAddr,
    pub root: PathBuf,
    /// Its `config.yml`.
    pub config: PathBuf,
    pub daemon: Daemon,
    _dir: TempDir,
}

impl RefRegistry {
    #[track_caller]
    pub fn start(root: &Path) -> RefRegistry {
        RefRegistry::start_on(root, std::net::Ipv4Addr::LOCALHOST.into(), None)
    }

    /// [`RefRegistry::start`] on a free port of `ip`, over TLS with `tls` (certificate
    /// and key PEM files) when given.
    #[track_caller]
    pub fn start_on(root: &Path, ip: std::net::IpAddr, tls: Option<(&Path, &Path)>) -> RefRegistry {
        let bin = require_bin("docker-registry");
        let dir = temp_dir("refreg");
        // A TLS registry is ready when it accepts connections (the probe speaks http).
        let ready = |addr| {
            if tls.is_some() {
                tcp_open(addr)
            } else {
                registry_ready(addr)
            }
        };
        // free_port() can race with another test: retry when the port was taken.
        for attempt in 1.. {
            let port = std::net::TcpListener::bind((ip, 0))
                .and_then(|l| l.local_addr())
                .map(|a| a.port())
                .expect("a free port");
            let addr = SocketAddr::new(ip, port);
            let log = dir.path().join(format!("registry-{attempt}.log"));
            let mut daemon = Self::spawn(&bin, dir.path(), root, addr, tls, &log);
            let ok = poll(START_TIMEOUT, || {
                ready(addr)
                    || daemon
                        .child
                        .as_mut()
                        .is_some_and(|c| c.try_wait().ok().flatten().is_some())
            });
            if ok && ready(addr) {
                return RefRegistry {
                    addr,
                    root: root.to_owned(),
                    config: dir.path().join("config.yml"),
                    daemon,
                    _dir: dir,
                };
            }
            daemon.stop();
            if attempt < 4 && daemon.log().contains("address already in use") {
                continue;
            }
            panic!(
                "docker-registry did not become ready on {addr}\n{}",
                daemon.log_tail(40)
            );
        }
        unreachable!()
    }

    fn spawn(
        bin: &Path,
        dir: &Path,
        root: &Path,
        addr: SocketAddr,
        tls: Option<(&Path, &Path)>,
        log: &Path,
    ) -> Daemon {
        let config = dir.join("config.yml");
        let tls = match tls {
            Some((cert, key)) => format!(
                "  tls:\n    certificate: {}\n    key: {}\n",
                cert.display(),
                key.display()
            ),
            None => String::new(),
        };
        fs::write(
            &config,
            format!(
                "version: 0.1\n\
                 log:\n  level: info\n  accesslog:\n    disabled: false\n\
                 storage:\n  filesystem:\n    rootdirectory: {}\n  delete:\n    enabled: true\n  maintenance:\n    uploadpurging:\n      enabled: false\n\
                 http:\n  addr: {addr}\n{tls}",
                root.display()
            ),
        )
        .unwrap();
        Daemon::spawn(
            "docker-registry",
            Command::new(bin).arg("serve").arg(&config),
            log,
        )
    }

    pub fn host(&self) -> String {
        self.addr.to_string()
    }

    pub fn stop(&mut self) {
        self.daemon.stop();
    }
}

// ---------------------------------------------------------------------------------------
// dockerd
// ---------------------------------------------------------------------------------------

/// A dockerd of its own (data root, exec root, socket, client config in a temp dir).
pub struct Dockerd {
    pub dir: TempDir,
    pub sock: PathBuf,
    pub daemon: Daemon,
    client: PathBuf,
}

fn unix_http_ping(sock: &Path) -> bool {
    use std::os::unix::net::UnixStream;
    let Ok(mut s) = UnixStream::connect(sock) else {
        return false;
    };
    let _ = s.set_read_timeout(Some(Duration::from_secs(2)));
    if s.write_all(b"GET /_ping HTTP/1.0\r\nHost: docker\r\n\r\n")
        .is_err()
    {
        return false;
    }
    let mut resp = String::new();
    let _ = s.read_to_string(&mut resp);
    resp.starts_with("HTTP/1.") && resp.contains(" 200 ") && resp.ends_with("OK")
}

/// The `TAG: digest: sha256:... size: N` line of `docker push`.
#[track_caller]
pub fn pushed_digest(o: &Output) -> String {
    o.stdout
        .lines()
        .find_map(|l| {
            let (_, rest) = l.split_once(": digest: ")?;
            Some(rest.split_whitespace().next()?.to_owned())
        })
        .unwrap_or_else(|| panic!("no digest line in docker push output\n{o}"))
}

impl Dockerd {
    /// The image id of a local image.
    pub fn image_id(&self, reference: &str) -> String {
        self.ok(
            &["image", "inspect", "--format", "{{.Id}}", reference],
            "docker image inspect",
        )
        .stdout
        .trim()
        .to_owned()
    }

    #[track_caller]
    pub fn start() -> Dockerd {
        Dockerd::start_with(None)
    }

    /// As [`Dockerd::start`], with `config` written to a `daemon.json` of its own and
    /// passed with `--config-file` (e.g. `{"registry-mirrors": ["http://127.0.0.1:PORT"]}`).
    #[track_caller]
    pub fn start_with_daemon_json(config: &Value) -> Dockerd {
        Dockerd::start_with(Some(config))
    }

    #[track_caller]
    fn start_with(daemon_json: Option<&Value>) -> Dockerd {
        let bin = require_bin("dockerd");
        // The Debian client matches the daemon (20.10); any docker CLI works.
        let client = if Path::new("/usr/bin/docker").exists() {
            PathBuf::from("/usr/bin/docker")
        } else {
            require_bin("docker")
        };
        // A short path: the exec root holds unix sockets (108-byte limit).
        let dir = temp_dir("dockerd");
        let d = dir.path();
        for sub in ["data", "exec", "config"] {
            fs::create_dir_all(d.join(sub)).unwrap();
        }
        let sock = d.join("docker.sock");
        let mut cmd = Command::new(bin);
        cmd.arg("--iptables=false")
            .arg("--ip6tables=false")
            .arg("--bridge=none")
            .arg("--storage-driver=vfs")
            .arg("--data-root")
            .arg(d.join("data"))
            .arg("--exec-root")
            .arg(d.join("exec"))
            .arg("--pidfile")
            .arg(d.join("docker.pid"))
            .arg("-H")
            .arg(format!("unix://{}", sock.display()));
        if let Some(config) = daemon_json {
            let path = d.join("daemon.json");
            fs::write(&path, serde_json::to_vec_pretty(config).unwrap()).unwrap();
            cmd.arg("--config-file").arg(path);
        }
        cmd.env("DOCKER_CONFIG", d.join("config"))
            .env("HOME", d)
            // Stack dumps (its containerd writes one when signalled) stay in our dir.
            .env("TMPDIR", d);
        let mut daemon = Daemon::spawn("dockerd", &mut cmd, &d.join("dockerd.log"));
        daemon.add_helper_pidfile(
            d.join("exec/containerd/containerd.pid"),
            &d.display().to_string(),
        );
        let s = sock.clone();
        daemon.wait_ready("GET /_ping", Duration::from_secs(60), || unix_http_ping(&s));
        Dockerd {
            dir,
            sock,
            daemon,
            client,
        }
    }

    /// A `docker` client command talking to this daemon.
    pub fn cmd(&self) -> Command {
        let mut c = Command::new(&self.client);
        c.env("DOCKER_HOST", format!("unix://{}", self.sock.display()))
            .env("DOCKER_CONFIG", self.dir.path().join("config"))
            .env_remove("DOCKER_CONTEXT")
            .env("DOCKER_CLI_HINTS", "false");
        c
    }

    /// Stops the daemon (and its containerd) and unmounts what it mounted (dockerd
    /// bind-mounts its data root onto itself and leaves it mounted).
    pub fn stop(&mut self) {
        self.daemon.stop();
        unmount_under(self.dir.path());
    }

    /// Runs `docker ARGS`, panicking with its output and the daemon's log on failure.
    #[track_caller]
    pub fn ok(&self, args: &[&str], context: &str) -> Output {
        let o = run(self.cmd().args(args), CMD_TIMEOUT);
        assert!(
            o.success(),
            "{context}: docker failed\n{o}\n{}",
            self.daemon.log_tail(30)
        );
        o
    }
}

impl Drop for Dockerd {
    fn drop(&mut self) {
        self.stop();
    }
}

// ---------------------------------------------------------------------------------------
// containerd
// ---------------------------------------------------------------------------------------

/// A standalone containerd (own config, root, state and sockets in a temp dir).
pub struct Containerd {
    pub dir: TempDir,
    pub sock: PathBuf,
    pub daemon: Daemon,
    ctr: PathBuf,
}

impl Containerd {
    #[track_caller]
    pub fn start() -> Containerd {
        let bin = require_bin("containerd");
        let ctr = require_bin("ctr");
        let dir = temp_dir("containerd");
        let d = dir.path();
        let sock = d.join("c.sock");
        let config = d.join("config.toml");
        fs::write(
            &config,
            format!(
                "version = 2\n\
                 root = \"{root}\"\n\
                 state = \"{state}\"\n\
                 disabled_plugins = [\"io.containerd.grpc.v1.cri\"]\n\
                 [grpc]\n  address = \"{sock}\"\n\
                 [ttrpc]\n  address = \"{sock}.ttrpc\"\n\
                 [debug]\n  address = \"\"\n\
                 [metrics]\n  address = \"\"\n",
                root = d.join("root").display(),
                state = d.join("state").display(),
                sock = sock.display(),
            ),
        )
        .unwrap();
        let mut daemon = Daemon::spawn(
            "containerd",
            Command::new(bin)
                .arg("--config")
                .arg(&config)
                .env("TMPDIR", d),
            &d.join("containerd.log"),
        );
        let s = sock.clone();
        let c = ctr.clone();
        daemon.wait_ready("ctr version", START_TIMEOUT, || {
            s.exists()
                && Command::new(&c)
                    .arg("-a")
                    .arg(&s)
                    .arg("version")
                    .stdout(Stdio::null())
                    .stderr(Stdio::null())
                    .status()
                    .is_ok_and(|st| st.success())
        });
        Containerd {
            dir,
            sock,
            daemon,
            ctr,
        }
    }

    /// A `ctr -a SOCK` command.
    pub fn cmd(&self) -> Command {
        let mut c = Command::new(&self.ctr);
        c.arg("-a").arg(&self.sock).env("HOME", self.dir.path());
        c
    }

    #[track_caller]
    pub fn ok(&self, args: &[&str], context: &str) -> Output {
        let o = run(self.cmd().args(args), CMD_TIMEOUT);
        assert!(
            o.success(),
            "{context}: ctr failed\n{o}\n{}",
            self.daemon.log_tail(30)
        );
        o
    }

    /// Stops the daemon and unmounts any snapshot it left mounted.
    pub fn stop(&mut self) {
        self.daemon.stop();
        unmount_under(self.dir.path());
    }
}

impl Drop for Containerd {
    fn drop(&mut self) {
        self.stop();
    }
}

// ---------------------------------------------------------------------------------------
// Storage checks
// ---------------------------------------------------------------------------------------

/// Every regular file under `dir`, recursively.
pub fn walk_files(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_owned()];
    while let Some(d) = stack.pop() {
        let Ok(rd) = fs::read_dir(&d) else { continue };
        for e in rd.flatten() {
            let Ok(ft) = e.file_type() else { continue };
            if ft.is_dir() {
                stack.push(e.path());
            } else if ft.is_file() {
                out.push(e.path());
            }
        }
    }
    out.sort();
    out
}

/// Asserts that under `<root>/docker/registry/v2/blobs` every file is a `data` file whose
/// content hashes to its directory name (`blobs/sha256/<2>/<hex>/data`): no partial or
/// temporary blob is visible in the blob store.
#[track_caller]
pub fn assert_blob_store_consistent(root: &Path) {
    let blobs = root.join("docker/registry/v2/blobs");
    for f in walk_files(&blobs) {
        let rel = f
            .strip_prefix(&blobs)
            .unwrap()
            .to_string_lossy()
            .into_owned();
        let parts: Vec<&str> = rel.split('/').collect();
        assert!(
            parts.len() == 4 && parts[3] == "data" && parts[0] == "sha256",
            "unexpected file in the blob store (a partial or temporary blob?): {} ({} bytes)",
            f.display(),
            f.metadata().map(|m| m.len()).unwrap_or(0)
        );
        let want = format!("sha256:{}", parts[2]);
        assert!(
            parts[2].starts_with(parts[1]),
            "blob dir {rel} not under its prefix"
        );
        let got = file_digest(&f);
        assert_eq!(
            got,
            want,
            "blob file {} ({} bytes) does not hold the blob its path names: partial write visible",
            f.display(),
            f.metadata().map(|m| m.len()).unwrap_or(0)
        );
    }
}

/// podman (as root) with its own storage (`--root`, `--runroot`, vfs), tmp dir, HOME,
/// `containers.conf`, `storage.conf`, trust policy, auth file and the given
/// `registries.conf`. As root, podman 4.3 keeps its blob-info cache in
/// /var/lib/containers/cache whatever `--root` says: like [`Skopeo`], it runs in a private
/// mount namespace with a cache dir of its own bound there. Whatever podman left mounted
/// under its dir is unmounted on drop.
pub struct Podman {
    pub dir: TempDir,
    bin: PathBuf,
    unshare: Option<PathBuf>,
}

impl Podman {
    #[track_caller]
    pub fn new(registries_conf: &str) -> Podman {
        let bin = require_bin("podman");
        // Short: podman refuses a runroot path longer than 50 characters.
        let dir = temp_dir("pod");
        let d = dir.path();
        for sub in [
            "root",
            "runroot",
            "tmp",
            "run",
            "networks",
            "cache",
            "home/.config/containers/registries.d",
            "home/.config/containers/registries.conf.d",
        ] {
            fs::create_dir_all(d.join(sub)).unwrap();
        }
        let policy = r#"{"default":[{"type":"insecureAcceptAnything"}]}"#;
        fs::write(d.join("policy.json"), policy).unwrap();
        // Also where c/image looks first ($HOME/.config/containers/policy.json).
        fs::write(d.join("home/.config/containers/policy.json"), policy).unwrap();
        fs::write(d.join("registries.conf"), registries_conf).unwrap();
        fs::write(
            d.join("storage.conf"),
            format!(
                "[storage]\ndriver = \"vfs\"\ngraphroot = \"{}\"\nrunroot = \"{}\"\n",
                d.join("root").display(),
                d.join("runroot").display()
            ),
        )
        .unwrap();
        // File locks (in --tmpdir) instead of the host-wide /dev/shm/libpod_lock; the CNI
        // backend with a config dir of its own, since rootful netavark always writes to
        // /etc/containers/networks and /run/containers/networks (pulls need no network).
        fs::write(
            d.join("containers.conf"),
            format!(
                "[engine]\ncgroup_manager = \"cgroupfs\"\nevents_logger = \"none\"\nlock_type = \"file\"\n\
                 [network]\nnetwork_backend = \"cni\"\nnetwork_config_dir = \"{}\"\n",
                d.join("networks").display()
            ),
        )
        .unwrap();
        fs::write(d.join("auth.json"), "{}").unwrap();
        let unshare = private_cache_unshare();
        Podman { dir, bin, unshare }
    }

    /// A `podman` command with the isolation flags and environment set; add arguments.
    pub fn cmd(&self) -> Command {
        let d = self.dir.path();
        let mut c = isolated_containers_command(&self.bin, self.unshare.as_deref(), d);
        c.env("CONTAINERS_STORAGE_CONF", d.join("storage.conf"))
            .env("CONTAINERS_CONF", d.join("containers.conf"))
            .arg("--root")
            .arg(d.join("root"))
            .arg("--runroot")
            .arg(d.join("runroot"))
            .arg("--tmpdir")
            .arg(d.join("tmp"))
            .args([
                "--storage-driver",
                "vfs",
                "--cgroup-manager",
                "cgroupfs",
                "--events-backend",
                "none",
            ]);
        c
    }

    pub fn run(&self, args: &[&str]) -> Output {
        run(self.cmd().args(args), CMD_TIMEOUT)
    }

    /// The trust policy file, for `--signature-policy`.
    pub fn policy(&self) -> PathBuf {
        self.dir.path().join("policy.json")
    }
}

impl Drop for Podman {
    fn drop(&mut self) {
        unmount_under(self.dir.path());
    }
}
