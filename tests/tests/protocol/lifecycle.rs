//! Restarts, crashes, idle expiry of upload sessions, graceful shutdown.

use std::thread;
use std::time::{Duration, Instant};

use super::*;

const REPO: &str = "test/lifecycle";

#[test]
fn upload_session_survives_restart() {
    let mut p = TestPier::start();
    let data = random_bytes(150_000);
    let digest = sha256_digest(&data);
    let loc = start_upload(p.addr, REPO);
    let r = patch_chunk(p.addr, &loc, 0, &data[..100_000]);
    r.expect_status(202, "PATCH before restart");
    let loc = location_path(&r);
    let blob = push_blob(p.addr, REPO, b"committed before restart");

    p.restart();

    let r = upload_status(p.addr, &loc);
    r.expect_status(204, "upload status after restart");
    assert_eq!(
        r.header("range"),
        Some("0-99999"),
        "offset after restart\n{r}"
    );
    let r = patch_chunk(p.addr, &location_path(&r), 100_000, &data[100_000..]);
    r.expect_status(202, "PATCH after restart");
    put_upload(p.addr, &location_path(&r), &digest, b"").expect_status(201, "PUT after restart");
    assert_blob(p.addr, REPO, &digest, &data);
    assert_blob(p.addr, REPO, &blob, b"committed before restart");
}

#[test]
fn chunked_upload_resumes_after_kill9_mid_request() {
    let mut p = TestPier::start();
    let data = random_bytes(2 * 1024 * 1024);
    let digest = sha256_digest(&data);
    let first = 512 * 1024;
    let loc = start_upload(p.addr, REPO);
    let r = patch_chunk(p.addr, &loc, 0, &data[..first]);
    r.expect_status(202, "first PATCH");
    let loc = location_path(&r);

    // second chunk: send the head and part of the body, then crash the server
    let range = format!("{}-{}", first, data.len() - 1);
    let len = (data.len() - first).to_string();
    let mut s = http::Streaming::open(
        p.addr,
        "PATCH",
        &loc,
        &[
            ("Content-Type", "application/octet-stream"),
            ("Content-Range", &range),
            ("Content-Length", &len),
        ],
        data.len() - first,
    )
    .expect("open PATCH");
    s.write_body(&data[first..first + 300 * 1024])
        .expect("write part of the chunk");
    thread::sleep(Duration::from_millis(300));
    p.kill9();
    s.abort();
    p.start_again();

    // the session is still there; resume from whatever offset the server reports
    let r = upload_status(p.addr, &loc);
    r.expect_status(204, "upload status after kill -9");
    let (start, end) = upload_range(&r);
    assert_eq!(start, 0, "Range start\n{r}");
    let offset = end as usize + 1;
    assert!(
        offset >= first && offset <= first + 300 * 1024,
        "offset {offset} after the crash should be between {first} and {}\n{r}",
        first + 300 * 1024
    );
    let r = patch_chunk(p.addr, &location_path(&r), offset, &data[offset..]);
    r.expect_status(202, "PATCH the rest after kill -9");
    assert_eq!(
        upload_range(&r),
        (0, data.len() as u64 - 1),
        "Range after resuming\n{r}"
    );
    let r = put_upload(p.addr, &location_path(&r), &digest, b"");
    r.expect_status(201, "PUT after resuming");
    assert_blob(p.addr, REPO, &digest, &data);
}

#[test]
fn idle_upload_sessions_expire() {
    let p = TestPier::builder()
        .args(["--upload-idle-timeout", "2s"])
        .start();
    let idle = start_upload(p.addr, REPO);
    let r = patch_chunk(p.addr, &idle, 0, b"idle bytes");
    r.expect_status(202, "PATCH idle session");
    let idle = location_path(&r);
    let busy = start_upload(p.addr, REPO);
    let started = Instant::now();

    // Keep one session busy with a PATCH every 500 ms while the other idles. The idle
    // one is not touched until it has been idle for longer than the timeout, so a
    // server that counts a status GET as activity is not penalised.
    let mut busy = busy;
    let mut off = 0;
    let mut expired_after = None;
    while started.elapsed() < Duration::from_secs(30) {
        let r = patch_chunk(p.addr, &busy, off, b"0123456789");
        r.expect_status(
            202,
            &format!("busy session PATCH at {:?}", started.elapsed()),
        );
        off += 10;
        busy = location_path(&r);
        if started.elapsed() >= Duration::from_millis(2500) {
            let s = upload_status(p.addr, &idle);
            if s.status == 404 {
                s.expect_error(404, "BLOB_UPLOAD_UNKNOWN", "expired session");
                expired_after = Some(started.elapsed());
                break;
            }
            s.expect_status(204, "idle session before expiry");
        }
        thread::sleep(Duration::from_millis(500));
    }
    expired_after.expect("the idle session never expired within 30 s");
    // the busy session, touched every 500 ms, is alive and complete
    let r = upload_status(p.addr, &busy);
    r.expect_status(204, "busy session after the idle one expired");
    assert_eq!(
        upload_range(&r),
        (0, off as u64 - 1),
        "busy session offset\n{r}"
    );
    let leftovers = files_with(&p.root, b"idle bytes");
    assert!(
        leftovers.is_empty(),
        "expired session left its data: {leftovers:?}"
    );
    // and then the busy one expires too once left alone
    thread::sleep(Duration::from_millis(2500));
    let gone = wait_until(Duration::from_secs(30), Duration::from_millis(1000), || {
        upload_status(p.addr, &busy).status == 404
    });
    assert!(
        gone,
        "the busy session never expired after being left alone"
    );
}

#[test]
fn sigterm_finishes_in_flight_upload() {
    let mut p = TestPier::start();
    let data = random_bytes(1024 * 1024);
    let loc = start_upload(p.addr, REPO);
    let (addr, body, target) = (p.addr, data.clone(), loc.clone());
    let (tx, rx) = std::sync::mpsc::channel();
    let sender = thread::spawn(move || {
        let range = format!("0-{}", body.len() - 1);
        let len = body.len().to_string();
        let mut s = http::Streaming::open(
            addr,
            "PATCH",
            &target,
            &[
                ("Content-Type", "application/octet-stream"),
                ("Content-Range", &range),
                ("Content-Length", &len),
            ],
            body.len(),
        )
        .expect("open PATCH");
        for (i, piece) in body.chunks(body.len() / 8).enumerate() {
            s.write_body(piece).expect("write piece");
            if i == 0 {
                tx.send(()).unwrap();
            }
            thread::sleep(Duration::from_millis(250));
        }
        s.response().expect("response to the in-flight PATCH")
    });
    rx.recv().unwrap();
    thread::sleep(Duration::from_millis(100));
    p.term();
    // new requests are no longer served while the old one finishes
    thread::sleep(Duration::from_millis(300));
    let late = http::try_request_timeout(p.addr, "GET", "/v2/", &[], b"", Duration::from_secs(2));
    assert!(
        !matches!(&late, Ok(r) if r.status == 200),
        "a new request was served after SIGTERM: {late:?}"
    );
    let r = sender.join().expect("sender thread");
    r.expect_status(202, "in-flight PATCH during SIGTERM");
    assert_eq!(
        upload_range(&r),
        (0, data.len() as u64 - 1),
        "in-flight PATCH Range\n{r}"
    );
    let st = p
        .wait_exit(Duration::from_secs(30))
        .unwrap_or_else(|| panic!("pier still running 30 s after SIGTERM\n{}", p.log_tail(30)));
    assert!(
        st.success(),
        "pier exited with {st} after SIGTERM\n{}",
        p.log_tail(30)
    );
    // the accepted bytes were kept
    p.start_again();
    let r = upload_status(p.addr, &location_path(&r));
    r.expect_status(204, "upload status after graceful restart");
    assert_eq!(upload_range(&r), (0, data.len() as u64 - 1), "offset\n{r}");
    let digest = sha256_digest(&data);
    put_upload(p.addr, &location_path(&r), &digest, b"").expect_status(201, "PUT after restart");
    assert_blob(p.addr, REPO, &digest, &data);
}

#[test]
fn sigterm_on_idle_server_exits_zero() {
    let mut p = TestPier::start();
    let st = p.stop_status();
    assert!(
        st.success(),
        "pier exited with {st} after SIGTERM\n{}",
        p.log_tail(30)
    );
    let refused = http::try_request(p.addr, "GET", "/v2/", &[], b"");
    assert!(
        refused.is_err(),
        "a stopped pier still answers: {refused:?}"
    );
}

#[test]
fn registry_state_survives_kill9() {
    let mut p = TestPier::start();
    let img = push_image(
        p.addr,
        REPO,
        Some("v1"),
        &[b"crash layer one", b"crash layer two"],
    );
    push_manifest(p.addr, REPO, "v2", media::OCI_MANIFEST, &img.manifest)
        .expect_status(201, "PUT v2");
    push_blob(p.addr, REPO, b"{}");
    let sig = serde_json::to_vec(&serde_json::json!({
        "schemaVersion": 2,
        "mediaType": media::OCI_MANIFEST,
        "artifactType": "application/vnd.example.sig.v1",
        "config": descriptor(media::OCI_EMPTY, b"{}"),
        "layers": [],
        "subject": descriptor(media::OCI_MANIFEST, &img.manifest),
    }))
    .unwrap();
    push_manifest(
        p.addr,
        REPO,
        &sha256_digest(&sig),
        media::OCI_MANIFEST,
        &sig,
    )
    .expect_status(201, "PUT referrer");
    http::delete(p.addr, &format!("/v2/{REPO}/manifests/v2")).expect_status(202, "DELETE tag v2");
    push_image(p.addr, "test/second", Some("latest"), &[b"second repo"]);

    p.kill9();
    p.start_again();

    let r = get_manifest(p.addr, REPO, "v1");
    r.expect_status(200, "tag after kill -9");
    assert!(r.body == img.manifest, "manifest bytes after kill -9");
    get_manifest(p.addr, REPO, "v2").expect_error(
        404,
        "MANIFEST_UNKNOWN",
        "deleted tag after kill -9",
    );
    for (d, data) in img
        .layer_digests
        .iter()
        .zip([&b"crash layer one"[..], b"crash layer two"])
    {
        assert_blob(p.addr, REPO, d, data);
    }
    let t = p.get(&format!("/v2/{REPO}/tags/list"));
    t.expect_status(200, "tags/list after kill -9");
    assert_eq!(
        t.json()["tags"],
        serde_json::json!(["v1"]),
        "tags after kill -9\n{t}"
    );
    let c = p.get("/v2/_catalog");
    c.expect_status(200, "_catalog after kill -9");
    assert_eq!(
        c.json()["repositories"],
        serde_json::json!(["test/lifecycle", "test/second"]),
        "catalog after kill -9\n{c}"
    );
    let r = p.get(&format!("/v2/{REPO}/referrers/{}", img.digest));
    r.expect_status(200, "referrers after kill -9");
    let listed: Vec<String> = r.json()["manifests"]
        .as_array()
        .map(|a| {
            a.iter()
                .filter_map(|d| d["digest"].as_str().map(str::to_owned))
                .collect()
        })
        .unwrap_or_default();
    assert_eq!(
        listed,
        vec![sha256_digest(&sig)],
        "referrers after kill -9\n{r}"
    );
}

#[test]
fn chunk_resumes_after_client_disconnect() {
    let p = TestPier::start();
    let data = random_bytes(1024 * 1024);
    let digest = sha256_digest(&data);
    let first = 256 * 1024;
    let sent = 200 * 1024;
    let loc = start_upload(p.addr, REPO);
    let r = patch_chunk(p.addr, &loc, 0, &data[..first]);
    r.expect_status(202, "first PATCH");
    let loc = location_path(&r);
    let range = format!("{}-{}", first, data.len() - 1);
    let len = (data.len() - first).to_string();
    let mut s = http::Streaming::open(
        p.addr,
        "PATCH",
        &loc,
        &[
            ("Content-Type", "application/octet-stream"),
            ("Content-Range", &range),
            ("Content-Length", &len),
        ],
        data.len() - first,
    )
    .expect("open PATCH");
    s.write_body(&data[first..first + sent])
        .expect("write part of the chunk");
    thread::sleep(Duration::from_millis(200));
    s.abort();

    // the server notices the disconnect; the session stays usable at some offset
    let mut status = None;
    wait_until(Duration::from_secs(10), Duration::from_millis(100), || {
        let r = upload_status(p.addr, &loc);
        let done = r.status == 204;
        status = Some(r);
        done
    });
    let r = status.unwrap();
    r.expect_status(204, "upload status after the client went away");
    let (start, end) = upload_range(&r);
    assert_eq!(start, 0, "Range start\n{r}");
    let offset = end as usize + 1;
    assert!(
        offset >= first && offset <= first + sent,
        "offset {offset} after the disconnect should be between {first} and {}\n{r}",
        first + sent
    );
    let r = patch_chunk(p.addr, &location_path(&r), offset, &data[offset..]);
    r.expect_status(202, "PATCH the rest");
    put_upload(p.addr, &location_path(&r), &digest, b"").expect_status(201, "PUT after resuming");
    assert_blob(p.addr, REPO, &digest, &data);
}

#[test]
fn sigterm_does_not_wait_for_idle_connections() {
    use std::io::{BufReader, Write};
    let mut p = TestPier::start();
    // a keep-alive connection that finished its request and stays open
    let mut kept = std::net::TcpStream::connect(p.addr).expect("connect");
    kept.set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    kept.write_all(format!("GET /v2/ HTTP/1.1\r\nHost: {}\r\n\r\n", p.addr).as_bytes())
        .unwrap();
    let mut reader = BufReader::new(kept.try_clone().unwrap());
    let r = http::read_response(&mut reader, false).expect("keep-alive response");
    r.expect_status(200, "GET /v2/ on a keep-alive connection");
    // a connection that never sends anything
    let _silent = std::net::TcpStream::connect(p.addr).expect("connect");
    thread::sleep(Duration::from_millis(200));
    let started = Instant::now();
    p.term();
    let st = p.wait_exit(Duration::from_secs(15)).unwrap_or_else(|| {
        panic!(
            "pier still running 15 s after SIGTERM with only idle connections open\n{}",
            p.log_tail(20)
        )
    });
    assert!(st.success(), "exit status {st}");
    assert!(started.elapsed() < Duration::from_secs(15));
    drop(kept);
}
