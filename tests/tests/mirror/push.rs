//! Mirrored names are read-only (`405 UNSUPPORTED` for every write, under every name
//! form); a `local_namespaces` entry keeps its names local and writable beside a default
//! upstream given in the config file.

use std::time::Duration;

use pier_e2e::{http, sha256_digest};

use crate::clients_support::*;
use crate::support::*;

#[test]
fn pushes_to_mirrored_names_are_refused_and_local_namespaces_stay_writable() {
    let sk = Skopeo::new();
    let up = Upstream::start();
    let img = TestImage::new("1", 1);
    up.push_image(&sk, "library/cfg", &img);
    let (pier, _cfg) = pier_with_config(&format!(
        "local_namespaces = [\"team\"]\n\n[[upstreams]]\nurl = \"{}\"\ndefault = true\n",
        up.url()
    ));
    // The config file's default upstream mirrors every other name.
    assert_registry_has_image(pier.addr, "library/cfg", "1", &img);

    // Every write to a mirrored name: 405 UNSUPPORTED.
    let data = unique_bytes(1000);
    let d = sha256_digest(&data);
    let layer = &img.layers[0].1;
    let upload_id = "0b0c5a52-6a5e-4b53-9a43-6f1f0c2a4c11";
    let prefix = up.name();
    let ns = up.host();
    let writes: Vec<(&str, String, Vec<u8>)> = vec![
        ("POST", "/v2/library/cfg/blobs/uploads/".into(), vec![]),
        (
            "POST",
            format!("/v2/library/cfg/blobs/uploads/?digest={d}"),
            data.clone(),
        ),
        (
            "POST",
            format!("/v2/library/cfg/blobs/uploads/?mount={layer}&from=library/other"),
            vec![],
        ),
        (
            "POST",
            "/v2/library/brand-new/blobs/uploads/".into(),
            vec![],
        ),
        ("POST", "/v2/teams/app/blobs/uploads/".into(), vec![]),
        (
            "PATCH",
            format!("/v2/library/cfg/blobs/uploads/{upload_id}"),
            data.clone(),
        ),
        (
            "PUT",
            format!("/v2/library/cfg/blobs/uploads/{upload_id}?digest={d}"),
            data.clone(),
        ),
        (
            "DELETE",
            format!("/v2/library/cfg/blobs/uploads/{upload_id}"),
            vec![],
        ),
        (
            "PUT",
            "/v2/library/cfg/manifests/2".into(),
            img.manifest.clone(),
        ),
        (
            "PUT",
            format!("/v2/library/cfg/manifests/{}", img.manifest_digest),
            img.manifest.clone(),
        ),
        (
            "DELETE",
            format!("/v2/library/cfg/manifests/{}", img.manifest_digest),
            vec![],
        ),
        ("DELETE", format!("/v2/library/cfg/blobs/{layer}"), vec![]),
        (
            "POST",
            format!("/v2/{prefix}/library/cfg/blobs/uploads/"),
            vec![],
        ),
        (
            "PUT",
            format!("/v2/{prefix}/library/cfg/manifests/2"),
            img.manifest.clone(),
        ),
        (
            "POST",
            format!("/v2/library/cfg/blobs/uploads/?ns={ns}"),
            vec![],
        ),
        (
            "DELETE",
            format!("/v2/library/cfg/manifests/{}?ns={ns}", img.manifest_digest),
            vec![],
        ),
    ];
    for (method, path, body) in &writes {
        let ct = if path.contains("/manifests/") {
            OCI_MANIFEST
        } else {
            "application/octet-stream"
        };
        let r = http::request(pier.addr, method, path, &[("Content-Type", ct)], body);
        r.expect_error(405, "UNSUPPORTED", &format!("{method} {path} (mirrored)"));
    }
    // A real client's push fails too, and nothing reached the upstream.
    let layout = sk.dir.path().join("push-src");
    let local = TestImage::new("1", 1);
    local.write_oci_layout(&layout);
    let src = format!("oci:{}:1", layout.display());
    let o = sk.run(&[
        "copy",
        "--dest-tls-verify=false",
        &src,
        &format!("docker://{}/library/pushed:1", pier.host()),
    ]);
    assert!(
        !o.success(),
        "skopeo push into a mirrored name succeeded\n{o}"
    );
    get_manifest(up.addr(), "library/pushed", "1")
        .expect_status(404, "upstream after refused pushes");
    get_manifest(up.addr(), "library/cfg", "2").expect_status(404, "upstream after refused pushes");
    get_manifest(pier.addr, "library/cfg", "1").expect_status(200, "mirrored name still readable");

    // team/...: local, writable, never sent upstream.
    sk.ok(
        &[
            "copy",
            "--dest-tls-verify=false",
            &src,
            &format!("docker://{}/team/app:1", pier.host()),
        ],
        "skopeo push into a local namespace",
    );
    assert_registry_has_image(pier.addr, "team/app", "1", &local);
    let raw = pier_e2e::push_image(pier.addr, "team/raw", Some("v1"), &[b"layer bytes"]);
    get_manifest(pier.addr, "team/raw", "v1").expect_status(200, "raw push into team/");
    pier.request(
        "DELETE",
        &format!("/v2/team/raw/manifests/{}", raw.digest),
        &[],
        b"",
    )
    .expect_status(202, "DELETE in a local namespace");
    get_manifest(pier.addr, "team/nothing", "1").expect_error(
        404,
        "MANIFEST_UNKNOWN",
        "unknown name in a local namespace",
    );
    std::thread::sleep(Duration::from_millis(200));
    let leaked = up.access_lines("/v2/team/");
    assert!(
        leaked.is_empty(),
        "requests for the local namespace reached the upstream:\n{leaked}"
    );
    get_manifest(up.addr(), "team/app", "1").expect_status(404, "upstream has no team/app");
    assert!(
        pier.v2_dir().join("repositories/team/app").is_dir(),
        "team/app is not stored as a local repository"
    );
}

/// The cache namespace can't be written through a bogus `?ns=`: uploads and manifest
/// puts naming a registry no upstream is answer 405, reads 404 `NAME_UNKNOWN` (so
/// containerd falls back to its next host), and every route still serves the upstream's
/// content afterwards.
#[test]
fn a_bogus_ns_neither_poisons_the_cache_nor_reads_it() {
    let sk = Skopeo::new();
    let up = Upstream::start();
    let img = TestImage::new("v1", 1);
    up.push_image(&sk, "lib/app", &img);
    let pier = pier_mirroring(&up, &[]);
    let name = up.name();
    let ns = up.host();
    // The genuine image, through the default route, fills the cache.
    assert_registry_has_image(pier.addr, "lib/app", "v1", &img);

    // The attacker's image: two blobs and a manifest, all under ?ns=bogus.
    let evil = TestImage::new("v1", 1);
    for (data, digest) in [
        (&evil.config, &evil.config_digest),
        (&evil.layers[0].0, &evil.layers[0].1),
    ] {
        for path in [
            format!("/v2/{name}/lib/app/blobs/uploads/?ns=bogus&digest={digest}"),
            format!("/v2/lib/app/blobs/uploads/?ns=bogus&digest={digest}"),
        ] {
            let r = http::request(
                pier.addr,
                "POST",
                &path,
                &[("Content-Type", "application/octet-stream")],
                data,
            );
            r.expect_error(405, "UNSUPPORTED", &format!("POST {path}"));
        }
    }
    for path in [
        format!("/v2/{name}/lib/app/manifests/v1?ns=bogus"),
        "/v2/lib/app/manifests/v1?ns=bogus".to_owned(),
    ] {
        let r = http::request(
            pier.addr,
            "PUT",
            &path,
            &[("Content-Type", OCI_MANIFEST)],
            &evil.manifest,
        );
        r.expect_error(405, "UNSUPPORTED", &format!("PUT {path}"));
        let r = http::request(pier.addr, "DELETE", &path, &[], b"");
        r.expect_error(405, "UNSUPPORTED", &format!("DELETE {path}"));
        let r = http::request(pier.addr, "GET", &path, &[("Accept", OCI_MANIFEST)], b"");
        r.expect_error(404, "NAME_UNKNOWN", &format!("GET {path}"));
    }
    // Every name form still gives the upstream's image, also with the upstream down.
    let mut up = up;
    up.stop();
    for (repo, query) in [
        ("lib/app".to_owned(), String::new()),
        (format!("{name}/lib/app"), String::new()),
        ("lib/app".to_owned(), format!("?ns={ns}")),
    ] {
        let path = format!("/v2/{repo}/manifests/v1{query}");
        let r = http::request(pier.addr, "GET", &path, &[("Accept", OCI_MANIFEST)], b"");
        r.expect_status(200, &format!("GET {path}"));
        assert_eq!(
            r.header("Docker-Content-Digest"),
            Some(img.manifest_digest.as_str()),
            "GET {path} serves the upstream's manifest"
        );
    }
    assert!(
        !pier
            .v2_dir()
            .join("repositories")
            .join(&name)
            .join("lib/app/_layers/sha256")
            .join(evil.layers[0].1.trim_start_matches("sha256:"))
            .exists(),
        "the attacker's layer is linked into the cache namespace"
    );
}
