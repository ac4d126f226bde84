//! Smaller ways in: races, lies and odd requests each get a clear answer and lose nothing.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use pier_e2e::{ACCEPT_MANIFESTS, TestPier, http, media};

use crate::support::pier_with_auth;

const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";

#[test]
fn concurrent_put_and_delete_of_one_tag_never_fail() {
    let pier = TestPier::start();
    let img = pier_e2e::push_image(pier.addr, "team/race", Some("v1"), &[b"race layer"]);
    let addr = pier.addr;
    let threads: Vec<_> = (0..8)
        .map(|t| {
            let manifest = img.manifest.clone();
            std::thread::spawn(move || {
                let mut bad = Vec::new();
                for i in 0..100 {
                    let r = if (i + t) % 2 == 0 {
                        http::request(
                            addr,
                            "PUT",
                            "/v2/team/race/manifests/hot",
                            &[("Content-Type", OCI_MANIFEST)],
                            &manifest,
                        )
                    } else {
                        http::request(addr, "DELETE", "/v2/team/race/manifests/hot", &[], b"")
                    };
                    if r.status >= 500 {
                        bad.push(format!("{}: {}", r.status, r.text()));
                    }
                }
                bad
            })
        })
        .collect();
    let bad: Vec<String> = threads
        .into_iter()
        .flat_map(|t| t.join().unwrap())
        .collect();
    assert!(
        bad.is_empty(),
        "{} of 800 answered 5xx, e.g. {:?}",
        bad.len(),
        bad.first()
    );
    // The final state is whole: either the tag answers with the manifest, or it is gone
    // from both the tag and the list.
    let r = http::request(
        pier.addr,
        "GET",
        "/v2/team/race/manifests/hot",
        &[("Accept", ACCEPT_MANIFESTS)],
        b"",
    );
    let listed = http::get(pier.addr, "/v2/team/race/tags/list")
        .text()
        .contains("\"hot\"");
    match r.status {
        200 => {
            assert_eq!(r.header("Docker-Content-Digest"), Some(img.digest.as_str()));
            assert!(listed, "tag answers but is not listed");
        }
        404 => assert!(!listed, "tag listed but does not answer"),
        s => panic!("final GET answered {s}: {r}"),
    }
}

#[test]
fn descriptor_sizes_must_match_the_stored_blobs() {
    let pier = TestPier::start();
    let config =
        br#"{"architecture":"amd64","os":"linux","rootfs":{"type":"layers","diff_ids":[]}}"#;
    let config_digest = pier_e2e::push_blob(pier.addr, "team/sizes", config);
    let layer_digest = pier_e2e::push_blob(pier.addr, "team/sizes", b"hello");
    let manifest = |size: u64| {
        serde_json::to_vec(&serde_json::json!({
            "schemaVersion": 2,
            "mediaType": OCI_MANIFEST,
            "config": {"mediaType": media::OCI_CONFIG, "digest": config_digest, "size": config.len()},
            "layers": [{"mediaType": media::OCI_LAYER, "digest": layer_digest, "size": size}],
        }))
        .unwrap()
    };
    for lie in [999, 4, 0] {
        let r =
            pier_e2e::push_manifest(pier.addr, "team/sizes", "v1", OCI_MANIFEST, &manifest(lie));
        r.expect_error(
            400,
            "MANIFEST_INVALID",
            &format!("layer size {lie} for a 5-byte blob"),
        );
        assert!(
            r.text().contains(&layer_digest),
            "the error names the descriptor: {r}"
        );
    }
    pier_e2e::push_manifest(pier.addr, "team/sizes", "v1", OCI_MANIFEST, &manifest(5))
        .expect_status(201, "the true size");
}

#[test]
fn a_slow_patch_does_not_hold_its_session_hostage() {
    let pier = TestPier::start();
    let loc = pier_e2e::start_upload(pier.addr, "team/slow");
    let path = pier_e2e::strip_origin(&loc);
    // A PATCH promising 100 bytes, sending one now and then.
    let mut s = crate::support::patch_one_byte_of(pier.addr, &path, 100);
    std::thread::sleep(Duration::from_millis(500));
    let t = Instant::now();
    let r = http::try_request_timeout(pier.addr, "GET", &path, &[], b"", Duration::from_secs(5))
        .expect("status of a session while a PATCH streams");
    r.expect_status(204, "GET the session while a PATCH streams");
    let r = http::try_request_timeout(pier.addr, "DELETE", &path, &[], b"", Duration::from_secs(5))
        .expect("cancel of a session while a PATCH streams");
    r.expect_status(204, "DELETE the session while a PATCH streams");
    assert!(
        t.elapsed() < Duration::from_secs(5),
        "took {:?}",
        t.elapsed()
    );
    // The PATCH, once done, learns its session is gone.
    s.write_all(&[b'x'; 99]).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let mut head = [0u8; 12];
    s.read_exact(&mut head).unwrap();
    assert_eq!(&head[9..12], b"404", "{}", String::from_utf8_lossy(&head));
    http::get(pier.addr, &path).expect_error(404, "BLOB_UPLOAD_UNKNOWN", "the cancelled session");
}

#[test]
fn invalid_tags_are_unknown_manifests_for_reads() {
    let pier = TestPier::start();
    for method in ["GET", "HEAD"] {
        let r = http::request(
            pier.addr,
            method,
            "/v2/team/app/manifests/.INVALID_MANIFEST_NAME",
            &[("Accept", ACCEPT_MANIFESTS)],
            b"",
        );
        r.expect_status(404, &format!("{method} by an invalid tag"));
        if method == "GET" {
            r.expect_error(404, "MANIFEST_UNKNOWN", "GET by an invalid tag");
        }
    }
    let r = http::request(
        pier.addr,
        "PUT",
        "/v2/team/app/manifests/.INVALID_MANIFEST_NAME",
        &[("Content-Type", OCI_MANIFEST)],
        b"{}",
    );
    r.expect_error(400, "TAG_INVALID", "PUT by an invalid tag");
}

#[test]
fn method_names_do_not_become_metric_series() {
    let pier = TestPier::start();
    for i in 0..20 {
        let m = format!("XMETHOD{i}");
        let _ = http::try_request(pier.addr, &m, "/v2/", &[], b"");
    }
    let metrics = http::get(pier.admin_addr, "/metrics").text();
    assert!(
        !metrics.contains("XMETHOD"),
        "client-chosen methods are labels"
    );
    assert!(metrics.contains("method=\"other\""), "{metrics}");
}

#[test]
fn the_realm_comes_from_a_valid_host_and_token_errors_are_oauth_shaped() {
    let (pier, _dir) = pier_with_auth();
    // No Host: no realm made of the client's address.
    let mut s = TcpStream::connect(pier.addr).unwrap();
    s.write_all(b"GET /v2/team/app/manifests/v1 HTTP/1.0\r\n\r\n")
        .unwrap();
    let mut out = String::new();
    let _ = s.read_to_string(&mut out);
    assert!(
        out.starts_with("HTTP/1.0 400") || out.starts_with("HTTP/1.1 400"),
        "{out}"
    );
    assert!(
        !out.contains("127.0.0.1"),
        "the realm names the client: {out}"
    );
    let r = http::request(
        pier.addr,
        "GET",
        "/v2/team/app/manifests/v1",
        &[("Host", "evil\"host")],
        b"",
    );
    assert_eq!(r.status, 400, "{r}");
    let r = http::get(pier.addr, "/v2/team/app/manifests/v1");
    r.expect_status(401, "a valid Host");
    let challenge = r.header("WWW-Authenticate").unwrap_or_default();
    assert!(
        challenge.contains(&format!("realm=\"http://{}/auth/token\"", pier.addr)),
        "{challenge}"
    );

    // The token endpoint: errors in OAuth2's shape, an oversized body is a bad request.
    let big = vec![b'a'; 100 * 1024];
    let r = http::request(
        pier.addr,
        "POST",
        "/auth/token",
        &[("Content-Type", "application/x-www-form-urlencoded")],
        &big,
    );
    assert_eq!(r.status, 400, "{r}");
    assert_eq!(r.json()["error"], "invalid_request", "{r}");
    let r = http::request(
        pier.addr,
        "POST",
        "/auth/token",
        &[("Content-Type", "application/x-www-form-urlencoded")],
        b"grant_type=password&username=admin&password=wrong&service=pier",
    );
    assert_eq!(r.status, 401, "{r}");
    assert_eq!(r.json()["error"], "invalid_grant", "{r}");
    let r = http::request(
        pier.addr,
        "POST",
        "/auth/token",
        &[("Content-Type", "application/x-www-form-urlencoded")],
        b"grant_type=client_credentials&service=pier",
    );
    assert_eq!(r.json()["error"], "unsupported_grant_type", "{r}");
}
