//! Pier serving HTTPS (`--tls-cert/--tls-key`, ALPN h2 + http/1.1) to real clients that
//! verify the certificate: skopeo (Go), the ORAS Python SDK (requests) and curl over
//! HTTP/2.

mod clients_support;

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

use clients_support::*;
use pier_e2e::TestPier;
use serde_json::Value;

/// A self-signed certificate for 127.0.0.1 and localhost: (cert.pem, key.pem).
fn self_signed(dir: &Path) -> (PathBuf, PathBuf) {
    let cert = dir.join("cert.pem");
    let key = dir.join("key.pem");
    run_ok(
        Command::new(require_bin("openssl"))
            .args([
                "req",
                "-x509",
                "-newkey",
                "ec",
                "-pkeyopt",
                "ec_paramgen_curve:prime256v1",
                "-nodes",
                "-days",
                "2",
                "-subj",
                "/CN=127.0.0.1",
                "-addext",
                "subjectAltName=IP:127.0.0.1,DNS:localhost",
                "-keyout",
            ])
            .arg(&key)
            .arg("-out")
            .arg(&cert),
        CMD_TIMEOUT,
        "openssl self-signed certificate",
    );
    (cert, key)
}

const ORAS_TLS: &str = r#"
import json, sys
import oras.client
host, repo, ca = sys.argv[1], sys.argv[2], sys.argv[3]
client = oras.client.OrasClient(hostname=host, insecure=False, tls_verify=ca)
res = client.push(target=f"{host}/{repo}:v1", files=["payload.bin"], do_chunked=True,
                  chunk_size=256 * 1024, quiet=True)
assert res.status_code == 201, (res.status_code, res.text)
pulled = client.pull(target=f"{host}/{repo}:v1", outdir="pulled")
print(json.dumps({"digest": res.headers.get("Docker-Content-Digest"), "pulled": pulled}))
"#;

#[test]
fn tls_skopeo_oras_and_curl_http2() {
    let dir = temp_dir("tls");
    let (cert, key) = self_signed(dir.path());
    let pier = TestPier::builder()
        .arg("--tls-cert")
        .arg(&cert)
        .arg("--tls-key")
        .arg(&key)
        .start();
    let host = pier.host();

    // curl: verified TLS, HTTP/2 negotiated by ALPN.
    let o = run_ok(
        Command::new(require_bin("curl"))
            .args([
                "-sS",
                "--http2",
                "-o",
                "/dev/null",
                "-w",
                "%{http_code} %{http_version}",
                "--cacert",
            ])
            .arg(&cert)
            .arg(format!("https://{host}/v2/")),
        CMD_TIMEOUT,
        "curl --http2 over TLS",
    );
    assert_eq!(
        o.stdout.trim(),
        "200 2",
        "status and HTTP version over TLS\n{o}"
    );
    let o = run_ok(
        Command::new(require_bin("curl"))
            .args([
                "-sS",
                "--http1.1",
                "-o",
                "/dev/null",
                "-w",
                "%{http_code} %{http_version}",
                "--cacert",
            ])
            .arg(&cert)
            .arg(format!("https://{host}/v2/")),
        CMD_TIMEOUT,
        "curl --http1.1 over TLS",
    );
    assert_eq!(
        o.stdout.trim(),
        "200 1.1",
        "status and HTTP version over TLS\n{o}"
    );

    // skopeo with the certificate as its CA (tls-verify stays on).
    let sk = Skopeo::new();
    let certs = sk.dir.path().join("certs");
    fs::create_dir_all(&certs).unwrap();
    fs::copy(&cert, certs.join("ca.crt")).unwrap();
    let certs_s = certs.display().to_string();
    let img = TestImage::new("v1", 2);
    let layout = sk.dir.path().join("src");
    img.write_oci_layout(&layout);
    sk.ok(
        &[
            "copy",
            "--dest-cert-dir",
            &certs_s,
            &format!("oci:{}:v1", layout.display()),
            &format!("docker://{host}/tls/app:v1"),
        ],
        "skopeo push over verified TLS",
    );
    let o = sk.ok(
        &[
            "inspect",
            "--cert-dir",
            &certs_s,
            &format!("docker://{host}/tls/app:v1"),
        ],
        "skopeo inspect over verified TLS",
    );
    let v: Value = serde_json::from_str(&o.stdout).unwrap();
    assert_eq!(v["Digest"], img.manifest_digest.as_str());
    let out = sk.dir.path().join("out");
    sk.ok(
        &[
            "copy",
            "--src-cert-dir",
            &certs_s,
            &format!("docker://{host}/tls/app:v1"),
            &format!("oci:{}:v1", out.display()),
        ],
        "skopeo pull over verified TLS",
    );
    let l = OciLayoutRead::open(&out, Some("v1"));
    assert_eq!(l.manifest_digest, img.manifest_digest);
    for (gz, d) in &img.layers {
        assert_eq!(&l.blob(d), gz, "pulled layer {d}");
    }
    // Without the CA the certificate is rejected: TLS really is in use.
    let o = sk.run(&["inspect", &format!("docker://{host}/tls/app:v1")]);
    assert!(
        !o.success(),
        "skopeo trusted an unknown self-signed certificate\n{o}"
    );
    assert!(
        o.all().contains("certificate") || o.all().contains("x509"),
        "expected a certificate error\n{o}"
    );

    // The ORAS SDK (requests) with the certificate as its CA bundle.
    let py = oras_python();
    let work = dir.path().join("oras");
    fs::create_dir_all(&work).unwrap();
    let payload = unique_bytes(700 * 1024);
    fs::write(work.join("payload.bin"), &payload).unwrap();
    fs::write(work.join("tls.py"), ORAS_TLS).unwrap();
    let o = run_ok(
        Command::new(&py)
            .current_dir(&work)
            .env("PYTHONDONTWRITEBYTECODE", "1")
            .arg("tls.py")
            .arg(&host)
            .arg("tls/artifact")
            .arg(&cert),
        CMD_TIMEOUT,
        "oras SDK over verified TLS",
    );
    let line = o
        .stdout
        .lines()
        .rev()
        .find(|l| l.starts_with('{'))
        .unwrap_or_default();
    let v: Value =
        serde_json::from_str(line).unwrap_or_else(|e| panic!("no JSON report ({e})\n{o}"));
    assert!(
        v["digest"]
            .as_str()
            .is_some_and(|d| d.starts_with("sha256:")),
        "{v}"
    );
    assert_eq!(
        fs::read(work.join("pulled/payload.bin")).unwrap(),
        payload,
        "payload pulled over TLS"
    );
}
