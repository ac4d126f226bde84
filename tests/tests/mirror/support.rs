//! Helpers of the mirror tests: the upstream (a reference registry with its access log
//! captured), Pier started as its mirror, and a streaming blob reader that hashes what
//! it receives instead of keeping it.

use std::fs;
use std::io::{self, BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use pier_e2e::{TestPier, http};
use sha2::{Digest as _, Sha256};
use tempfile::TempDir;

use crate::clients_support::*;

/// The upstream registry: Debian's `docker-registry` (CNCF distribution 2.8.2) on a root
/// of its own, with its access log (one Apache combined-format line per request, after
/// the response) in the daemon's log file.
pub struct Upstream {
    pub reg: RefRegistry,
    pub root: PathBuf,
    _dir: TempDir,
}

impl Upstream {
    #[track_caller]
    pub fn start() -> Upstream {
        let dir = temp_dir("upstream");
        let root = dir.path().join("root");
        fs::create_dir_all(&root).unwrap();
        let reg = RefRegistry::start(&root);
        Upstream {
            reg,
            root,
            _dir: dir,
        }
    }

    pub fn addr(&self) -> SocketAddr {
        self.reg.addr
    }

    /// `127.0.0.1:PORT`: the registry host, and the `?ns=` value that names it.
    pub fn host(&self) -> String {
        self.reg.host()
    }

    /// `http://127.0.0.1:PORT`: what `--upstream` takes.
    pub fn url(&self) -> String {
        format!("http://{}", self.reg.host())
    }

    /// `127.0.0.1-PORT`: the upstream's name in Pier (path prefix, storage directory).
    pub fn name(&self) -> String {
        format!("127.0.0.1-{}", self.reg.addr.port())
    }

    pub fn stop(&mut self) {
        self.reg.stop();
    }

    /// The registry's whole log (application log and access log).
    pub fn log(&self) -> String {
        self.reg.daemon.log()
    }

    /// The access-log lines of requests `METHOD PATH` (any query string) that did not
    /// come from the test itself (its raw client or skopeo seeding the upstream).
    pub fn requests(&self, method: &str, path: &str) -> Vec<String> {
        let exact = format!("\"{method} {path} HTTP/");
        let query = format!("\"{method} {path}?");
        self.log()
            .lines()
            .filter(|l| l.contains(&exact) || l.contains(&query))
            .filter(|l| {
                // Combined format ends with "referer" "user-agent".
                let ua = l.trim_end().trim_end_matches('"').rsplit('"').next();
                !ua.is_some_and(|ua| ua == "pier-e2e" || ua.starts_with("skopeo/"))
            })
            .map(str::to_owned)
            .collect()
    }

    /// How many `METHOD PATH` requests (not the test's own) the upstream served.
    pub fn count(&self, method: &str, path: &str) -> usize {
        self.requests(method, path).len()
    }

    /// Every access-log line mentioning `needle`, for failure messages.
    pub fn access_lines(&self, needle: &str) -> String {
        self.log()
            .lines()
            .filter(|l| l.contains("\" ") && l.contains(needle) && !l.contains("level="))
            .collect::<Vec<_>>()
            .join("\n")
    }

    /// Where the upstream keeps a blob's bytes.
    pub fn blob_data_path(&self, digest: &str) -> PathBuf {
        blob_data_path(&self.root, digest)
    }

    /// Pushes `img` as `name:img.tag` with skopeo from an OCI layout.
    #[track_caller]
    pub fn push_image(&self, sk: &Skopeo, name: &str, img: &TestImage) {
        let layout = sk.dir.path().join(format!("layout-{}", unique_suffix()));
        img.write_oci_layout(&layout);
        sk.ok(
            &[
                "copy",
                "--dest-tls-verify=false",
                &format!("oci:{}:{}", layout.display(), img.tag),
                &format!("docker://{}/{name}:{}", self.host(), img.tag),
            ],
            &format!("seed the upstream with {name}:{}", img.tag),
        );
    }

    /// Pushes a multi-platform index as `name:idx.tag` (with every child) with skopeo.
    #[track_caller]
    pub fn push_index(&self, sk: &Skopeo, name: &str, idx: &TestIndex) {
        let layout = sk.dir.path().join(format!("layout-{}", unique_suffix()));
        idx.write_oci_layout(&layout);
        sk.ok(
            &[
                "copy",
                "--all",
                "--dest-tls-verify=false",
                &format!("oci:{}:{}", layout.display(), idx.tag),
                &format!("docker://{}/{name}:{}", self.host(), idx.tag),
            ],
            &format!("seed the upstream with the index {name}:{}", idx.tag),
        );
    }

    /// Uploads the generator's bytes as a blob of `repo` (POST, one streamed PATCH, PUT
    /// `?digest=`: distribution has no monolithic POST) and returns its digest.
    #[track_caller]
    pub fn push_blob(&self, repo: &str, g: &Generator) -> String {
        let addr = self.addr();
        let r = http::request(
            addr,
            "POST",
            &format!("/v2/{repo}/blobs/uploads/"),
            &[],
            b"",
        );
        r.expect_status(202, "upstream: start an upload");
        let loc = pier_e2e::location_path(&r);
        let mut s = http::Streaming::open(
            addr,
            "PATCH",
            &loc,
            &[("Content-Type", "application/octet-stream")],
            g.len as usize,
        )
        .expect("upstream: open PATCH");
        let mut h = Sha256::new();
        g.for_each_piece(0, g.len, |p| {
            h.update(p);
            s.write_body(p).expect("upstream: write PATCH body");
        });
        let digest = format!("sha256:{}", hex::encode(h.finalize()));
        let r = s.response().expect("upstream: PATCH response");
        r.expect_status(202, "upstream: PATCH the blob");
        let loc = pier_e2e::location_path(&r);
        let r = http::request(
            addr,
            "PUT",
            &pier_e2e::with_query(&loc, &format!("digest={digest}")),
            &[],
            b"",
        );
        r.expect_status(201, "upstream: close the upload");
        digest
    }
}

/// `<root>/docker/registry/v2/blobs/<alg>/<2>/<hex>/data`.
pub fn blob_data_path(root: &Path, digest: &str) -> PathBuf {
    let (alg, hex) = digest.split_once(':').expect("digest");
    root.join("docker/registry/v2/blobs")
        .join(alg)
        .join(&hex[..2])
        .join(hex)
        .join("data")
}

/// A suffix unique within this test process.
pub fn unique_suffix() -> String {
    static N: AtomicU64 = AtomicU64::new(0);
    format!(
        "{}-{}",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    )
}

/// Pier mirroring `up` as its default upstream, with extra `serve` arguments.
#[track_caller]
pub fn pier_mirroring(up: &Upstream, extra: &[&str]) -> TestPier {
    TestPier::builder()
        .arg("--upstream")
        .arg(up.url())
        .args(extra.iter().copied())
        .start()
}

/// Pier started with `--config FILE` holding `toml`; the dir holding the file is
/// returned too (keep it while Pier runs).
#[track_caller]
pub fn pier_with_config(toml: &str) -> (TestPier, TempDir) {
    let dir = temp_dir("mirror-config");
    let path = dir.path().join("pier.toml");
    fs::write(&path, toml).unwrap();
    let pier = TestPier::builder().arg("--config").arg(&path).start();
    (pier, dir)
}

/// Where Pier keeps what it mirrored of `repo` from the upstream named `upstream`.
pub fn mirrored_repo_dir(pier: &TestPier, upstream: &str, repo: &str) -> PathBuf {
    pier.v2_dir().join("repositories").join(upstream).join(repo)
}

/// Asserts an OCI layout skopeo wrote holds exactly `img` (manifest, config, layers).
#[track_caller]
pub fn assert_layout_is(dir: &Path, img: &TestImage, what: &str) {
    let l = OciLayoutRead::open(dir, None);
    assert_eq!(
        l.manifest_digest, img.manifest_digest,
        "{what}: manifest digest"
    );
    assert_eq!(l.manifest, img.manifest, "{what}: manifest bytes");
    assert_eq!(l.blob(&img.config_digest), img.config, "{what}: config");
    for (gz, d) in &img.layers {
        assert!(l.blob(d) == *gz, "{what}: layer {d} differs");
    }
}

/// Asserts `r` is a 502 or 504 with an OCI error body.
#[track_caller]
pub fn assert_upstream_unavailable(r: &pier_e2e::Response, what: &str) {
    assert!(
        r.status == 502 || r.status == 504,
        "{what}: expected 502 or 504 (upstream down, nothing cached), got {}\n{r}",
        r.status
    );
    let code = r
        .error_code()
        .unwrap_or_else(|| panic!("{what}: no OCI error JSON in the {} answer\n{r}", r.status));
    r.expect_error_body(&code, what);
}

/// What a streamed GET received.
#[derive(Debug)]
pub struct Pulled {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub content_length: Option<u64>,
    pub chunked: bool,
    /// Body bytes received.
    pub received: u64,
    /// sha256 of the body bytes received.
    pub digest: String,
    /// The framing said the body was whole (Content-Length bytes, or the last chunk).
    pub complete: bool,
    /// How the body ended early, if it did.
    pub error: Option<String>,
    /// The first few KiB of the body (error documents).
    pub head: Vec<u8>,
}

impl Pulled {
    /// Whole, and hashing to `digest`.
    pub fn is_exactly(&self, digest: &str, len: u64) -> bool {
        self.status == 200 && self.complete && self.received == len && self.digest == digest
    }

    pub fn summary(&self) -> String {
        format!(
            "HTTP {} content-length {:?} chunked {} received {} complete {} digest {} error {:?} body {:?}",
            self.status,
            self.content_length,
            self.chunked,
            self.received,
            self.complete,
            self.digest,
            self.error,
            if self.status == 200 {
                "(blob bytes)".into()
            } else {
                String::from_utf8_lossy(&self.head[..self.head.len().min(300)])
            }
        )
    }
}

fn read_line(r: &mut impl BufRead) -> io::Result<String> {
    let mut buf = Vec::new();
    if r.read_until(b'\n', &mut buf)? == 0 {
        return Err(io::Error::new(
            io::ErrorKind::UnexpectedEof,
            "connection closed in a header line",
        ));
    }
    while buf.last().is_some_and(|b| *b == b'\n' || *b == b'\r') {
        buf.pop();
    }
    Ok(String::from_utf8_lossy(&buf).into_owned())
}

struct Sink {
    h: Sha256,
    received: u64,
    head: Vec<u8>,
}

impl Sink {
    fn feed(&mut self, b: &[u8]) {
        self.h.update(b);
        self.received += b.len() as u64;
        if self.head.len() < 4096 {
            let n = b.len().min(4096 - self.head.len());
            self.head.extend_from_slice(&b[..n]);
        }
    }
}

/// Reads exactly `n` bytes into the sink; an early EOF is an error.
fn pump(r: &mut impl Read, mut n: u64, sink: &mut Sink, buf: &mut [u8]) -> io::Result<()> {
    while n > 0 {
        let want = (n as usize).min(buf.len());
        match r.read(&mut buf[..want]) {
            Ok(0) => {
                return Err(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    format!("connection closed with {n} bytes of the body missing"),
                ));
            }
            Ok(k) => {
                sink.feed(&buf[..k]);
                n -= k as u64;
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

/// `GET path` (with `headers`) read as a stream: the body is hashed as it arrives and
/// only its first KiB are kept. Never panics on a broken body: that is the result.
pub fn stream_get(addr: SocketAddr, path: &str, headers: &[(&str, &str)]) -> Pulled {
    let mut out = Pulled {
        status: 0,
        headers: Vec::new(),
        content_length: None,
        chunked: false,
        received: 0,
        digest: String::new(),
        complete: false,
        error: None,
        head: Vec::new(),
    };
    let mut sink = Sink {
        h: Sha256::new(),
        received: 0,
        head: Vec::new(),
    };
    let res = (|| -> io::Result<()> {
        let s = TcpStream::connect_timeout(&addr, Duration::from_secs(10))?;
        s.set_read_timeout(Some(Duration::from_secs(60)))?;
        s.set_write_timeout(Some(Duration::from_secs(60)))?;
        let mut req = format!(
            "GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\nUser-Agent: pier-e2e\r\n"
        );
        for (k, v) in headers {
            req.push_str(&format!("{k}: {v}\r\n"));
        }
        req.push_str("\r\n");
        (&s).write_all(req.as_bytes())?;
        let mut r = BufReader::with_capacity(256 * 1024, s);
        let status_line = read_line(&mut r)?;
        out.status = status_line
            .split(' ')
            .nth(1)
            .and_then(|s| s.parse().ok())
            .ok_or_else(|| {
                io::Error::new(
                    io::ErrorKind::InvalidData,
                    format!("status {status_line:?}"),
                )
            })?;
        loop {
            let line = read_line(&mut r)?;
            if line.is_empty() {
                break;
            }
            if let Some((k, v)) = line.split_once(':') {
                out.headers.push((k.trim().to_owned(), v.trim().to_owned()));
            }
        }
        for (k, v) in &out.headers {
            if k.eq_ignore_ascii_case("content-length") {
                out.content_length = v.parse().ok();
            }
            if k.eq_ignore_ascii_case("transfer-encoding")
                && v.to_ascii_lowercase().contains("chunked")
            {
                out.chunked = true;
            }
        }
        let mut buf = vec![0u8; 256 * 1024];
        if out.chunked {
            loop {
                let line = read_line(&mut r)?;
                let size = u64::from_str_radix(line.split(';').next().unwrap_or("").trim(), 16)
                    .map_err(|_| {
                        io::Error::new(io::ErrorKind::InvalidData, format!("chunk size {line:?}"))
                    })?;
                if size == 0 {
                    while !read_line(&mut r)?.is_empty() {}
                    return Ok(());
                }
                pump(&mut r, size, &mut sink, &mut buf)?;
                if !read_line(&mut r)?.is_empty() {
                    return Err(io::Error::new(
                        io::ErrorKind::InvalidData,
                        "chunk without CRLF",
                    ));
                }
            }
        } else if let Some(len) = out.content_length {
            pump(&mut r, len, &mut sink, &mut buf)
        } else {
            // Read to EOF: whole as far as anyone can tell.
            loop {
                match r.read(&mut buf) {
                    Ok(0) => return Ok(()),
                    Ok(k) => sink.feed(&buf[..k]),
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                    Err(e) => return Err(e),
                }
            }
        }
    })();
    match res {
        Ok(()) => out.complete = true,
        Err(e) => out.error = Some(e.to_string()),
    }
    out.received = sink.received;
    out.head = sink.head;
    out.digest = format!("sha256:{}", hex::encode(sink.h.finalize()));
    out
}
