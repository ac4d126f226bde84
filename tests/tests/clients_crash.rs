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
    let r = pier.request(
        "PUT",
        &with_query(&loc, &format!("digest={digest}")),
        &[],
        b"",
    );
    r.expect_status(201, "PUT ?digest= completing the resumed upload");
    assert_eq!(r.header("docker-content-digest"), Some(digest.as_str()));

    let h = pier.head(&format!("/v2/{repo}/blobs/{digest}"));
    h.expect_status(200, "HEAD of the completed blob");
    assert_eq!(
        h.content_length(),
        Some(SIZE),
        "Content-Length of the blob\n{h}"
    );
    let (status, len, got) = get_digest(pier.addr, &format!("/v2/{repo}/blobs/{digest}"));
    assert_eq!((status, len), (200, SIZE), "GET of the completed blob");
    assert_eq!(got, digest, "bytes of the resumed upload");
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
    let (status, len, got) = get_digest(pier.addr, &format!("/v2/{repo}/blobs/{digest}"));
    assert_eq!(
        (status, len, got.as_str()),
        (200, SIZE, digest.as_str()),
        "GET after the fresh push"
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

/// SIGKILL right after the closing `PUT ?digest=` of a 200 MiB upload: whatever moment
/// the kill hits, the blob is afterwards either complete and correct or absent (never
/// partial), a 201 that reached the client is durable, and an absent blob can still be
/// pushed (by finishing the session, or afresh).
#[test]
fn kill9_during_the_closing_put_is_all_or_nothing() {
    let mut pier = TestPier::start();
    let generator = Generator::new(
        u64::from_le_bytes(unique_bytes(8).try_into().unwrap()),
        SIZE,
    );
    let digest = generator.digest();
    let repo = "crash/commit";
    let blob = format!("/v2/{repo}/blobs/{digest}");

    let mut loc = pier_e2e::start_upload(pier.addr, repo);
    let mut off = 0;
    while off < SIZE {
        let end = (off + CHUNK).min(SIZE);
        let r = patch(pier.addr, &loc, &generator, off, end);
        r.expect_status(202, &format!("PATCH {off}-{}", end - 1));
        loc = location_path(&r);
        off = end;
    }
    let put = with_query(&loc, &format!("digest={digest}"));
    let open = Streaming::open(pier.addr, "PUT", &put, &[], 0).expect("send PUT ?digest=");
    thread::sleep(Duration::from_millis(20));
    pier.kill9();
    let answered = open.response().ok().map(|r| r.status);
    eprintln!("closing PUT answered before the kill: {answered:?}");

    assert_blob_store_consistent(&pier.root);
    pier.start_again();
    assert_blob_store_consistent(&pier.root);
    let h = pier.head(&blob);
    match h.status {
        200 => {
            assert_eq!(h.content_length(), Some(SIZE), "Content-Length\n{h}");
        }
        404 => {
            assert_ne!(
                answered,
                Some(201),
                "the PUT was acknowledged with 201, but the blob is gone after kill -9\n{h}"
            );
            let st = pier.get(&loc);
            if st.status == 204 {
                assert_eq!(
                    upload_offset(&st),
                    SIZE,
                    "offset of the interrupted session\n{st}"
                );
                pier.request("PUT", &put, &[], b"")
                    .expect_status(201, "PUT ?digest= again after the crash");
            } else {
                let post = format!("/v2/{repo}/blobs/uploads/?digest={digest}");
                let headers = [("Content-Type", "application/octet-stream")];
                send_range(pier.addr, "POST", &post, &headers, &generator, 0, SIZE)
                    .expect_status(201, "fresh monolithic push after the crash");
            }
            pier.head(&blob)
                .expect_status(200, "HEAD after pushing again");
        }
        other => panic!("HEAD of the blob after the crash answered {other}\n{h}"),
    }
    let (status, len, got) = get_digest(pier.addr, &blob);
    assert_eq!(
        (status, len, got.as_str()),
        (200, SIZE, digest.as_str()),
        "GET of the blob"
    );
    assert_blob_store_consistent(&pier.root);
}
