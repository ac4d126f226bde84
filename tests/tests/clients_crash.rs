//! Crash safety of blob uploads: a 200 MiB blob streamed from a generator (never held in
//! memory) through the raw HTTP client, with Pier killed by SIGKILL in the middle of a
//! request. Afterwards no partial blob may be visible in the blob store, the blob must be
//! unknown, the upload session must resume from the offset the server reports, and a
//! fresh push of the same blob must succeed.

mod clients_support;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::thread;
use std::time::Duration;

use clients_support::*;
use pier_e2e::http::{Response, Streaming};
use pier_e2e::{TestPier, location_path, with_query};
use sha2::{Digest as _, Sha256};

const SIZE: u64 = 200 * 1024 * 1024;
const CHUNK: u64 = 64 * 1024 * 1024;

/// Streams `gen[start..end]` as the body of `method path` with the given headers.
fn send_range(
    addr: SocketAddr,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    generator: &Generator,
    start: u64,
    end: u64,
) -> Response {
    let mut s = Streaming::open(addr, method, path, headers, (end - start) as usize)
        .unwrap_or_else(|e| panic!("{method} {path}: {e}"));
    let mut failed = false;
    generator.for_each_piece(start, end, |p| {
        if !failed && s.write_body(p).is_err() {
            failed = true;
        }
    });
    s.response()
        .unwrap_or_else(|e| panic!("{method} {path}: no response ({e})"))
}

/// PATCH `gen[start..end]` with a Content-Range.
fn patch(addr: SocketAddr, path: &str, generator: &Generator, start: u64, end: u64) -> Response {
    let range = format!("{start}-{}", end - 1);
    send_range(
        addr,
        "PATCH",
        path,
        &[
            ("Content-Type", "application/octet-stream"),
            ("Content-Range", &range),
        ],
        generator,
        start,
        end,
    )
}

/// Opens `method path` with `gen[body]` announced as the body, sends only its first
/// `sent` bytes, waits a moment for the server to consume them, and returns the
/// still-open request.
fn send_partial(
    addr: SocketAddr,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    generator: &Generator,
    body: std::ops::Range<u64>,
    sent: u64,
) -> Streaming {
    let mut s = Streaming::open(
        addr,
        method,
        path,
        headers,
        (body.end - body.start) as usize,
    )
    .unwrap_or_else(|e| panic!("{method} {path}: {e}"));
    let mut written = 0u64;
    let mut failed = None;
    generator.for_each_piece(body.start, body.start + sent, |p| {
        if failed.is_none() {
            match s.write_body(p) {
                Ok(()) => written += p.len() as u64,
                Err(e) => failed = Some(e),
            }
        }
    });
    if let Some(e) = failed {
        let resp = s.response();
        panic!(
            "{method} {path}: the server stopped reading the body after {written} bytes ({e}); its answer: {resp:?}"
        );
    }
    thread::sleep(Duration::from_millis(500));
    s
}

/// `GET path`, hashing the body as it arrives: (status, body length, digest).
fn get_digest(addr: SocketAddr, path: &str) -> (u16, u64, String) {
    let mut stream = TcpStream::connect(addr).expect("connect");
    stream
        .set_read_timeout(Some(Duration::from_secs(120)))
        .unwrap();
    write!(
        stream,
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut r = BufReader::with_capacity(1 << 20, stream);
    let mut line = String::new();
    r.read_line(&mut line).unwrap();
    let status: u16 = line
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .expect("status");
    let mut content_length = None;
    let mut chunked = false;
    loop {
        line.clear();
        r.read_line(&mut line).unwrap();
        let l = line.trim_end();
        if l.is_empty() {
            break;
        }
        if let Some((k, v)) = l.split_once(':') {
            if k.eq_ignore_ascii_case("content-length") {
                content_length = v.trim().parse::<u64>().ok();
            }
            if k.eq_ignore_ascii_case("transfer-encoding")
                && v.to_ascii_lowercase().contains("chunked")
            {
                chunked = true;
            }
        }
    }
    let mut h = Sha256::new();
    let mut n = 0u64;
    let mut buf = vec![0u8; 1 << 20];
    let mut copy = |r: &mut BufReader<TcpStream>, mut left: Option<u64>| loop {
        let want = left.map_or(buf.len(), |l| (l as usize).min(buf.len()));
        if want == 0 {
            break;
        }
        let got = r.read(&mut buf[..want]).expect("read body");
        if got == 0 {
            assert!(left.is_none(), "body ended early after {n} bytes");
            break;
        }
        h.update(&buf[..got]);
        n += got as u64;
        left = left.map(|l| l - got as u64);
    };
    if chunked {
        loop {
            line.clear();
            r.read_line(&mut line).unwrap();
            let size = u64::from_str_radix(line.trim().split(';').next().unwrap(), 16)
                .expect("chunk size");
            if size == 0 {
                break;
            }
            copy(&mut r, Some(size));
            line.clear();
            r.read_line(&mut line).unwrap();
        }
    } else {
        copy(&mut r, content_length);
    }
    (status, n, format!("sha256:{}", hex::encode(h.finalize())))
}

/// GET `path` answers 200 with the whole blob (SIZE bytes) of `digest`.
#[track_caller]
fn assert_reads_back(pier: &TestPier, path: &str, digest: &str, what: &str) {
    let (status, len, got) = get_digest(pier.addr, path);
    assert_eq!((status, len, got.as_str()), (200, SIZE, digest), "{what}");
}

/// Closes the upload session at `loc` with an empty `PUT ?digest=`: 201 naming the digest.
#[track_caller]
fn close_upload(pier: &TestPier, loc: &str, digest: &str, what: &str) {
    let r = pier.request(
        "PUT",
        &with_query(loc, &format!("digest={digest}")),
        &[],
        b"",
    );
    r.expect_status(201, what);
    assert_eq!(
        r.header("docker-content-digest"),
        Some(digest),
        "{what}\n{r}"
    );
}

/// The next offset of an upload session from its `Range: 0-<last>` header.
#[track_caller]
fn upload_offset(r: &Response) -> u64 {
    let range = r.require_header("range", "upload status Range");
    let last = range
        .strip_prefix("0-")
        .and_then(|l| l.parse::<u64>().ok())
        .unwrap_or_else(|| panic!("bad Range {range:?}\n{r}"));
    last + 1
}

#[test]
fn kill9_mid_patch_leaves_no_partial_blob_and_the_upload_resumes() {
    let mut pier = TestPier::start();
    let generator = Generator::new(
        u64::from_le_bytes(unique_bytes(8).try_into().unwrap()),
        SIZE,
    );
    let digest = generator.digest();
    let repo = "crash/chunked";

    // One acknowledged chunk, then half of a second one when the server dies.
    let loc = pier_e2e::start_upload(pier.addr, repo);
    let r = patch(pier.addr, &loc, &generator, 0, CHUNK);
    r.expect_status(202, "first PATCH");
    assert_eq!(
        r.header("range"),
        Some(format!("0-{}", CHUNK - 1).as_str()),
        "Range after the first PATCH\n{r}"
    );
    let loc = location_path(&r);
    let range = format!("{CHUNK}-{}", 2 * CHUNK - 1);
    let half = CHUNK / 2;
    let open = send_partial(
        pier.addr,
        "PATCH",
        &loc,
        &[
            ("Content-Type", "application/octet-stream"),
            ("Content-Range", &range),
        ],
        &generator,
        CHUNK..2 * CHUNK,
        half,
    );
    pier.kill9();
    open.abort();

    assert_blob_store_consistent(&pier.root);
    pier.start_again();
    assert_blob_store_consistent(&pier.root);
    pier.head(&format!("/v2/{repo}/blobs/{digest}"))
        .expect_status(404, "HEAD of the never-completed blob after the crash");
    pier.get(&format!("/v2/{repo}/blobs/{digest}"))
        .expect_status(404, "GET of the never-completed blob after the crash");

    // The session survived: its offset is at least the acknowledged chunk and at most
    // what was sent.
    let st = pier.get(&loc);
    st.expect_status(204, "GET upload status after the crash");
    let offset = upload_offset(&st);
    eprintln!(
        "upload offset after the crash: {offset} (acknowledged {CHUNK}, sent {})",
        CHUNK + half
    );
    assert!(
        (CHUNK..=CHUNK + half).contains(&offset),
        "offset {offset} after the crash: acknowledged {CHUNK}, sent {}\n{st}",
        CHUNK + half
    );

    // Resume from there in chunks, then close with PUT ?digest=.
    let mut loc = st
        .header("location")
        .map(pier_e2e::strip_origin)
        .unwrap_or(loc);
    let mut off = offset;
    while off < SIZE {
        let end = (off + CHUNK).min(SIZE);
        let r = patch(pier.addr, &loc, &generator, off, end);
        r.expect_status(202, &format!("resumed PATCH {off}-{}", end - 1));
        assert_eq!(upload_offset(&r), end, "Range after a resumed PATCH\n{r}");
        loc = location_path(&r);
        off = end;
    }
    close_upload(
        &pier,
        &loc,
        &digest,
        "PUT ?digest= completing the resumed upload",
    );

    let h = pier.head(&format!("/v2/{repo}/blobs/{digest}"));
    h.expect_status(200, "HEAD of the completed blob");
    assert_eq!(
        h.content_length(),
        Some(SIZE),
        "Content-Length of the blob\n{h}"
    );
    assert_reads_back(
        &pier,
        &format!("/v2/{repo}/blobs/{digest}"),
        &digest,
        "GET of the resumed upload's blob",
    );
    assert_blob_store_consistent(&pier.root);
}

#[test]
fn kill9_mid_monolithic_push_then_a_fresh_push_succeeds() {
    let mut pier = TestPier::start();
    let generator = Generator::new(
        u64::from_le_bytes(unique_bytes(8).try_into().unwrap()),
        SIZE,
    );
    let digest = generator.digest();
    let repo = "crash/monolithic";
    let post = format!("/v2/{repo}/blobs/uploads/?digest={digest}");
    let headers = [("Content-Type", "application/octet-stream")];

    // A single-request upload (POST ?digest= with the whole body) killed at 60%.
    let open = send_partial(
        pier.addr,
        "POST",
        &post,
        &headers,
        &generator,
        0..SIZE,
        SIZE * 3 / 5,
    );
    pier.kill9();
    open.abort();
    assert_blob_store_consistent(&pier.root);
    pier.start_again();
    assert_blob_store_consistent(&pier.root);
    pier.head(&format!("/v2/{repo}/blobs/{digest}"))
        .expect_status(404, "HEAD of the interrupted blob after the crash");

    // The same blob pushed afresh, monolithically.
    let r = send_range(pier.addr, "POST", &post, &headers, &generator, 0, SIZE);
    r.expect_status(201, "fresh monolithic POST ?digest= after the crash");
    assert_eq!(r.header("docker-content-digest"), Some(digest.as_str()));
    let h = pier.head(&format!("/v2/{repo}/blobs/{digest}"));
    h.expect_status(200, "HEAD after the fresh push");
    assert_eq!(h.content_length(), Some(SIZE));
    assert_reads_back(
        &pier,
        &format!("/v2/{repo}/blobs/{digest}"),
        &digest,
        "GET after the fresh push",
    );

    // And through POST + a single PUT carrying the body, into another repository.
    let other = "crash/monolithic-put";
    let loc = pier_e2e::start_upload(pier.addr, other);
    let r = send_range(
        pier.addr,
        "PUT",
        &with_query(&loc, &format!("digest={digest}")),
        &headers,
        &generator,
        0,
        SIZE,
    );
    r.expect_status(201, "POST + PUT ?digest= with the body");
    pier.head(&format!("/v2/{other}/blobs/{digest}"))
        .expect_status(200, "HEAD in the second repository");
    assert_blob_store_consistent(&pier.root);
}

/// A chunked upload of the whole generator into `repo`, not yet closed: the session's path.
fn upload_every_chunk(pier: &TestPier, repo: &str, generator: &Generator) -> String {
    let mut loc = pier_e2e::start_upload(pier.addr, repo);
    let mut off = 0;
    while off < SIZE {
        let end = (off + CHUNK).min(SIZE);
        let r = patch(pier.addr, &loc, generator, off, end);
        r.expect_status(202, &format!("PATCH {off}-{}", end - 1));
        loc = location_path(&r);
        off = end;
    }
    loc
}

/// The closing `PUT ?digest=` of a 200 MiB upload, with the process aborted by a fail
/// point at `point` (in the commit, on one side of the rename into the blob store); the
/// PUT gets no answer. The process is started again without the fail point.
fn crash_in_the_commit(point: &str) -> (TestPier, Generator, String) {
    let mut pier = TestPier::builder()
        .env("FAILPOINTS", format!("{point}=return"))
        .start();
    let generator = Generator::new(
        u64::from_le_bytes(unique_bytes(8).try_into().unwrap()),
        SIZE,
    );
    let loc = upload_every_chunk(&pier, "crash/commit", &generator);
    let put = with_query(&loc, &format!("digest={}", generator.digest()));
    let open = Streaming::open(pier.addr, "PUT", &put, &[], 0).expect("send PUT ?digest=");
    let answer = open.response();
    let status = pier.expect_crash(Duration::from_secs(60));
    assert!(
        answer.is_err(),
        "the closing PUT was answered although pier stopped at {point} ({status}): {:?}",
        answer.map(|r| r.status)
    );
    assert_blob_store_consistent(&pier.root);
    pier.remove_env("FAILPOINTS");
    pier.start_again();
    assert_blob_store_consistent(&pier.root);
    (pier, generator, loc)
}

/// Killed between writing the upload and renaming it into the blob store: no blob (not
/// even a partial one), and the session, whose bytes are all on disk, finishes with the
/// client's retried `PUT ?digest=`.
#[test]
fn crash_between_the_write_and_the_rename_leaves_no_blob_and_the_upload_finishes() {
    let (pier, generator, loc) = crash_in_the_commit("fs-commit-before-rename");
    let digest = generator.digest();
    let blob = format!("/v2/crash/commit/blobs/{digest}");
    pier.head(&blob)
        .expect_status(404, "HEAD of the blob whose commit was cut short");
    let st = pier.get(&loc);
    st.expect_status(204, "GET upload status after the crash");
    assert_eq!(
        upload_offset(&st),
        SIZE,
        "offset of the interrupted session\n{st}"
    );
    close_upload(&pier, &loc, &digest, "PUT ?digest= again after the crash");
    assert_reads_back(&pier, &blob, &digest, "GET of the blob");
    assert_blob_store_consistent(&pier.root);
}

/// Killed right after the rename, before the repository link and the answer: the blob
/// store holds the whole blob (the check above: never partial), and the client's retry,
/// a fresh push of the same blob, succeeds and reads back byte-exact.
#[test]
fn crash_after_the_rename_keeps_the_whole_blob_and_a_retried_push_succeeds() {
    let (pier, generator, _) = crash_in_the_commit("fs-commit-after-rename");
    let digest = generator.digest();
    let data = pier
        .root
        .join("docker/registry/v2/blobs/sha256")
        .join(&digest["sha256:".len().."sha256:".len() + 2])
        .join(&digest["sha256:".len()..])
        .join("data");
    assert_eq!(
        std::fs::metadata(&data).map(|m| m.len()).ok(),
        Some(SIZE),
        "the renamed blob {} after the crash",
        data.display()
    );
    let post = format!("/v2/crash/commit/blobs/uploads/?digest={digest}");
    let headers = [("Content-Type", "application/octet-stream")];
    send_range(pier.addr, "POST", &post, &headers, &generator, 0, SIZE)
        .expect_status(201, "the client's retried push after the crash");
    let blob = format!("/v2/crash/commit/blobs/{digest}");
    assert_reads_back(&pier, &blob, &digest, "GET of the blob");
    assert_blob_store_consistent(&pier.root);
}

/// An ext4 filesystem on a loop device that can lose power: `commit=600` keeps the
/// journal from committing on its own during a test, so only what Pier synced (fsync of
/// a file commits the journal, and with it every rename before it) is on the disk; the
/// shutdown ioctl with `EXT4_GOING_FLAGS_NOLOGFLUSH` then stops the filesystem without
/// writing anything more, as a power cut would, and a fresh mount shows what survived.
struct LossyDisk {
    image: std::path::PathBuf,
    mnt: std::path::PathBuf,
    _dir: tempfile::TempDir,
}

impl LossyDisk {
    fn new() -> LossyDisk {
        let dir = temp_dir("pier-power-loss");
        let image = dir.path().join("disk.img");
        let mnt = dir.path().join("mnt");
        std::fs::create_dir(&mnt).unwrap();
        std::fs::File::create(&image)
            .and_then(|f| f.set_len(1024 * 1024 * 1024))
            .unwrap();
        sh(std::process::Command::new("mkfs.ext4")
            .args(["-q", "-F"])
            .arg(&image));
        let disk = LossyDisk {
            image,
            mnt,
            _dir: dir,
        };
        disk.mount();
        disk
    }

    fn mount(&self) {
        sh(std::process::Command::new("mount")
            .args(["-o", "loop,commit=600"])
            .arg(&self.image)
            .arg(&self.mnt));
    }

    /// The power cut: nothing not yet synced reaches the disk from now on.
    fn cut_power(&self) {
        // EXT4_IOC_SHUTDOWN = _IOR('X', 125, __u32); EXT4_GOING_FLAGS_NOLOGFLUSH = 2.
        sh(std::process::Command::new("python3")
            .args([
                "-c",
                "import fcntl, os, struct, sys\n\
                 fd = os.open(sys.argv[1], os.O_RDONLY)\n\
                 fcntl.ioctl(fd, 0x8004587d, struct.pack('I', 2))",
            ])
            .arg(&self.mnt));
    }

    /// Mounted again (once no process holds a file on it): what the disk kept.
    fn remount(&self) {
        sh(std::process::Command::new("umount").arg(&self.mnt));
        self.mount();
    }
}

impl Drop for LossyDisk {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount")
            .arg("-l")
            .arg(&self.mnt)
            .status();
    }
}

#[track_caller]
fn sh(cmd: &mut std::process::Command) {
    let out = run(cmd, Duration::from_secs(60));
    assert!(out.success(), "{out}");
}

/// What Pier acknowledged survives a power cut: blobs pushed monolithically and in chunks,
/// the manifest and its tag, all readable byte-exact on the filesystem as the disk kept it.
/// (A kill -9 keeps the page cache, so only a lost disk write proves the fsyncs.)
#[test]
fn acknowledged_pushes_survive_a_power_cut() {
    let disk = LossyDisk::new();
    let root = disk.mnt.join("root");
    let mut pier = TestPier::builder().root(&root).start();

    let repo = "durable/app";
    let layers = [unique_bytes(3 * 1024 * 1024), unique_bytes(70 * 1024)];
    let img = pier_e2e::push_image(
        pier.addr,
        repo,
        Some("v1"),
        &[layers[0].as_slice(), layers[1].as_slice()],
    );
    // A chunked upload, closed by PUT ?digest= (the session's file renamed into place).
    let generator = Generator::new(
        u64::from_le_bytes(unique_bytes(8).try_into().unwrap()),
        8 * 1024 * 1024 + 5,
    );
    let mut loc = pier_e2e::start_upload(pier.addr, repo);
    for (start, end) in [(0, 4 * 1024 * 1024), (4 * 1024 * 1024, generator.len)] {
        let r = patch(pier.addr, &loc, &generator, start, end);
        r.expect_status(202, "PATCH");
        loc = location_path(&r);
    }
    let chunked = generator.digest();
    pier.request(
        "PUT",
        &with_query(&loc, &format!("digest={chunked}")),
        &[],
        b"",
    )
    .expect_status(201, "closing PUT ?digest=");

    disk.cut_power();
    pier.kill9();
    disk.remount();
    pier.start_again();

    let m = pier.get(&format!("/v2/{repo}/manifests/v1"));
    m.expect_status(200, "GET of the tag pushed before the power cut");
    assert_eq!(
        m.header("docker-content-digest"),
        Some(img.digest.as_str()),
        "the tag after the power cut\n{m}"
    );
    assert_eq!(m.body, img.manifest, "the manifest after the power cut");
    for d in std::iter::once(&img.config_digest)
        .chain(&img.layer_digests)
        .chain(std::iter::once(&chunked))
    {
        let (status, _, got) = get_digest(pier.addr, &format!("/v2/{repo}/blobs/{d}"));
        assert_eq!(
            (status, got.as_str()),
            (200, d.as_str()),
            "blob {d} after the power cut\n{}",
            pier.log_tail(20)
        );
    }
    assert_blob_store_consistent(&root);
}
