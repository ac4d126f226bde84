//! HTTPS with ALPN (h2 and http/1.1) and cleartext HTTP/2 (h2c), checked with curl.

use std::process::Command;

use super::*;

/// Runs curl; returns (exit success, stdout, stderr).
fn curl(args: &[&str]) -> (bool, String, String) {
    let out = Command::new("curl")
        .args(["-sS", "--max-time", "10"])
        .args(args)
        .output()
        .expect("run curl");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn https_serves_http1_and_http2() {
    let certs = tempfile::tempdir().unwrap();
    let (cert, key) = pier_e2e::self_signed_cert(certs.path());
    let p = TestPier::builder()
        .arg("--tls-cert")
        .arg(&cert)
        .arg("--tls-key")
        .arg(&key)
        .start();
    let url = format!("https://{}/v2/", p.host());
    let cacert = cert.to_str().unwrap();
    for (flag, want) in [("--http1.1", "1.1"), ("--http2", "2")] {
        let (ok, out, err) = curl(&[
            "--cacert",
            cacert,
            flag,
            "-o",
            "/dev/null",
            "-w",
            "%{http_version} %{http_code}",
            &url,
        ]);
        assert!(ok, "curl {flag} {url} failed: {err}");
        assert_eq!(
            out.trim(),
            format!("{want} 200"),
            "curl {flag}: version and status ({err})"
        );
    }
    // a real round trip over HTTP/2 + TLS: push and pull a blob with curl
    let data_path = certs.path().join("blob");
    let data = random_bytes(100_000);
    std::fs::write(&data_path, &data).unwrap();
    let digest = sha256_digest(&data);
    let (ok, out, err) = curl(&[
        "--cacert",
        cacert,
        "--http2",
        "-X",
        "POST",
        "-H",
        "Content-Type: application/octet-stream",
        "--data-binary",
        &format!("@{}", data_path.display()),
        "-o",
        "/dev/null",
        "-w",
        "%{http_code}",
        &format!("https://{}/v2/tls/blobs/uploads/?digest={digest}", p.host()),
    ]);
    assert!(ok, "curl push failed: {err}");
    assert_eq!(out.trim(), "201", "push over h2+TLS ({err})");
    let out_path = certs.path().join("pulled");
    let (ok, out, err) = curl(&[
        "--cacert",
        cacert,
        "--http2",
        "-o",
        out_path.to_str().unwrap(),
        "-w",
        "%{http_code}",
        &format!("https://{}/v2/tls/blobs/{digest}", p.host()),
    ]);
    assert!(ok, "curl pull failed: {err}");
    assert_eq!(out.trim(), "200", "pull over h2+TLS ({err})");
    assert!(
        std::fs::read(&out_path).unwrap() == data,
        "pulled bytes differ"
    );
    // plain HTTP on the TLS port is not served as the registry
    let r = http::try_request(p.addr, "GET", "/v2/", &[], b"");
    assert!(
        r.as_ref().map(|r| r.status != 200).unwrap_or(true),
        "cleartext request on the TLS port answered 200: {r:?}"
    );
}

#[test]
fn h2c_refused_by_default() {
    let p = TestPier::start();
    let url = format!("{}/v2/", p.url());
    let (ok, out, _err) = curl(&[
        "--http2-prior-knowledge",
        "-o",
        "/dev/null",
        "-w",
        "%{http_version} %{http_code}",
        &url,
    ]);
    assert!(
        !ok || out.trim() != "2 200",
        "cleartext HTTP/2 was served without --h2c: {out}"
    );
    // HTTP/1.1 still works
    let (ok, out, err) = curl(&[
        "--http1.1",
        "-o",
        "/dev/null",
        "-w",
        "%{http_version} %{http_code}",
        &url,
    ]);
    assert!(ok, "curl --http1.1 failed: {err}");
    assert_eq!(out.trim(), "1.1 200");
}

#[test]
fn h2c_with_flag() {
    let p = TestPier::builder().arg("--h2c").start();
    let url = format!("{}/v2/", p.url());
    let (ok, out, err) = curl(&[
        "--http2-prior-knowledge",
        "-o",
        "/dev/null",
        "-w",
        "%{http_version} %{http_code}",
        &url,
    ]);
    assert!(ok, "curl --http2-prior-knowledge failed: {err}");
    assert_eq!(out.trim(), "2 200", "h2c with --h2c ({err})");
    // HTTP/1.1 is still served beside it
    let (ok, out, err) = curl(&[
        "--http1.1",
        "-o",
        "/dev/null",
        "-w",
        "%{http_version} %{http_code}",
        &url,
    ]);
    assert!(ok, "curl --http1.1 failed: {err}");
    assert_eq!(out.trim(), "1.1 200");
    // and the raw client too
    p.get("/v2/").expect_status(200, "HTTP/1.1 with --h2c");
    // a push and a pull over h2c
    let dir = tempfile::tempdir().unwrap();
    let data = random_bytes(70_000);
    let digest = sha256_digest(&data);
    std::fs::write(dir.path().join("blob"), &data).unwrap();
    let (ok, out, err) = curl(&[
        "--http2-prior-knowledge",
        "-X",
        "POST",
        "-H",
        "Content-Type: application/octet-stream",
        "--data-binary",
        &format!("@{}", dir.path().join("blob").display()),
        "-o",
        "/dev/null",
        "-w",
        "%{http_version} %{http_code}",
        &format!("{}/v2/h2c/blobs/uploads/?digest={digest}", p.url()),
    ]);
    assert!(ok, "curl h2c push failed: {err}");
    assert_eq!(out.trim(), "2 201", "push over h2c ({err})");
    let pulled = dir.path().join("pulled");
    let (ok, out, err) = curl(&[
        "--http2-prior-knowledge",
        "-o",
        pulled.to_str().unwrap(),
        "-w",
        "%{http_version} %{http_code}",
        &format!("{}/v2/h2c/blobs/{digest}", p.url()),
    ]);
    assert!(ok, "curl h2c pull failed: {err}");
    assert_eq!(out.trim(), "2 200", "pull over h2c ({err})");
    assert!(
        std::fs::read(&pulled).unwrap() == data,
        "bytes pulled over h2c differ"
    );
}
