//! Storage interop with the reference registry (CNCF distribution 2.8.2, Debian's
//! `docker-registry`): both use the distribution filesystem layout, so each must serve
//! what the other stored, byte for byte.

mod clients_support;

use clients_support::*;
use pier_e2e::TestPier;
use serde_json::Value;

/// What one registry received, to be checked on the other.
struct Pushed {
    image: TestImage,
    schema2_digest: String,
    index: TestIndex,
}

/// Pushes an OCI image (tag `oci`), the same image as Docker schema 2 (tag `s2`) and a
/// two-platform index (tag `multi`, with `--all`) to `host` under `name`.
fn push_set(sk: &Skopeo, host: &str, name: &str) -> Pushed {
    let image = TestImage::new("oci", 2);
    let layout = sk
        .dir
        .path()
        .join(format!("src-{}", name.replace('/', "_")));
    image.write_oci_layout(&layout);
    sk.ok(
        &[
            "copy",
            "--dest-tls-verify=false",
            &format!("oci:{}:oci", layout.display()),
            &format!("docker://{host}/{name}:oci"),
        ],
        "push OCI image",
    );
    let digestfile = sk.dir.path().join("s2.digest");
    sk.ok(
        &[
            "copy",
            "--dest-tls-verify=false",
            "--format",
            "v2s2",
            "--digestfile",
            &digestfile.display().to_string(),
            &format!("oci:{}:oci", layout.display()),
            &format!("docker://{host}/{name}:s2"),
        ],
        "push Docker schema 2 image",
    );
    let schema2_digest = std::fs::read_to_string(&digestfile)
        .unwrap()
        .trim()
        .to_owned();
    let index = TestIndex::new("multi");
    let ilayout = sk
        .dir
        .path()
        .join(format!("idx-{}", name.replace('/', "_")));
    index.write_oci_layout(&ilayout);
    sk.ok(
        &[
            "copy",
            "--all",
            "--dest-tls-verify=false",
            &format!("oci:{}:multi", ilayout.display()),
            &format!("docker://{host}/{name}:multi"),
        ],
        "push multi-platform index",
    );
    Pushed {
        image,
        schema2_digest,
        index,
    }
}

/// Checks that `host` (the other registry) serves everything in `p`, through the raw API
/// and through skopeo.
fn check_set(sk: &Skopeo, addr: std::net::SocketAddr, name: &str, p: &Pushed) {
    let host = addr.to_string();
    assert_registry_has_image(addr, name, "oci", &p.image);
    assert_registry_has_index(addr, name, "multi", &p.index);
    let r = get_manifest(addr, name, "s2");
    r.expect_status(200, "GET the schema 2 manifest");
    assert_eq!(pier_e2e::sha256_digest(&r.body), p.schema2_digest);
    assert_eq!(r.header("content-type"), Some(DOCKER_MANIFEST));

    let tags = pier_e2e::http::get(addr, &format!("/v2/{name}/tags/list"));
    tags.expect_status(200, "tags/list");
    let v: Value = tags.json();
    let mut t: Vec<&str> = v["tags"]
        .as_array()
        .expect("tags")
        .iter()
        .map(|t| t.as_str().unwrap())
        .collect();
    t.sort();
    assert_eq!(t, ["multi", "oci", "s2"], "tags/list\n{tags}");
    assert_eq!(v["name"], name);

    let out = sk.pull_to_oci(
        &format!("docker://{host}/{name}:oci"),
        &format!("check-{}", addr.port()),
    );
    let l = OciLayoutRead::open(&out, None);
    assert_eq!(
        l.manifest_digest, p.image.manifest_digest,
        "skopeo pull digest"
    );
    for (gz, d) in &p.image.layers {
        assert_eq!(&l.blob(d), gz, "pulled layer {d}");
    }
    let o = sk.ok(
        &[
            "inspect",
            "--tls-verify=false",
            &format!("docker://{host}/{name}:s2"),
        ],
        "skopeo inspect schema 2",
    );
    let v: Value = serde_json::from_str(&o.stdout).unwrap();
    assert_eq!(v["Digest"], p.schema2_digest.as_str());
}

#[test]
fn reference_registry_serves_what_pier_stored() {
    let mut pier = TestPier::start();
    let sk = Skopeo::new();
    let name = "interop/from-pier";
    let p = push_set(&sk, &pier.host(), name);
    // A chunked upload through the raw API too.
    let data = unique_bytes(3 * 1024 * 1024 + 11);
    let loc = pier_e2e::start_upload(pier.addr, name);
    let mut loc = loc;
    let mut off = 0;
    for piece in data.chunks(1024 * 1024) {
        let range = format!("{}-{}", off, off + piece.len() - 1);
        let r = pier.request(
            "PATCH",
            &loc,
            &[
                ("Content-Type", "application/octet-stream"),
                ("Content-Range", &range),
            ],
            piece,
        );
        r.expect_status(202, "PATCH chunk");
        loc = pier_e2e::location_path(&r);
        off += piece.len();
    }
    let digest = pier_e2e::sha256_digest(&data);
    pier.request(
        "PUT",
        &pier_e2e::with_query(&loc, &format!("digest={digest}")),
        &[],
        b"",
    )
    .expect_status(201, "PUT ?digest= closing the chunked upload");
    pier.stop();

    let mut reg = RefRegistry::start(&pier.root);
    check_set(&sk, reg.addr, name, &p);
    let b = pier_e2e::http::get(reg.addr, &format!("/v2/{name}/blobs/{digest}"));
    b.expect_status(200, "reference registry GET of Pier's chunk-uploaded blob");
    assert!(b.body == data, "blob bytes differ");

    // And back: what the reference registry adds to Pier's root, Pier serves.
    let more = TestImage::new("more", 1);
    let layout = sk.dir.path().join("more");
    more.write_oci_layout(&layout);
    sk.ok(
        &[
            "copy",
            "--dest-tls-verify=false",
            &format!("oci:{}:more", layout.display()),
            &format!("docker://{}/{name}:more", reg.host()),
        ],
        "push to the reference registry on Pier's root",
    );
    reg.stop();
    pier.start_again();
    assert_registry_has_image(pier.addr, name, "more", &more);
    assert_registry_has_image(pier.addr, name, "oci", &p.image);
}

#[test]
fn pier_serves_what_reference_registry_stored() {
    let dir = temp_dir("refroot");
    let root = dir.path().join("root");
    std::fs::create_dir_all(&root).unwrap();
    let sk = Skopeo::new();
    let name = "interop/from-reference";
    let mut reg = RefRegistry::start(&root);
    let p = push_set(&sk, &reg.host(), name);
    // A second repository sharing the blobs (the reference registry mounts them).
    sk.ok(
        &[
            "copy",
            "--src-tls-verify=false",
            "--dest-tls-verify=false",
            &format!("docker://{}/{name}:oci", reg.host()),
            &format!("docker://{}/interop/second:oci", reg.host()),
        ],
        "copy to a second repository on the reference registry",
    );
    reg.stop();

    // Its config.yml as Pier's TOML (`pier config from-distribution`), checked, then served.
    let out = pier_e2e::pier_command()
        .args(["config", "from-distribution"])
        .arg(&reg.config)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let converted = String::from_utf8(out.stdout).unwrap();
    let t: toml::Table = toml::from_str(&converted).expect(&converted);
    assert_eq!(t["root"].as_str(), root.to_str(), "{converted}");
    assert_eq!(
        t["listen"].as_str(),
        Some(reg.host().as_str()),
        "{converted}"
    );
    assert!(
        converted.contains("log.level"),
        "named as not converted:\n{converted}"
    );
    let toml_path = dir.path().join("pier.toml");
    std::fs::write(&toml_path, &converted).unwrap();
    let out = pier_e2e::pier_command()
        .args(["config", "check"])
        .arg(&toml_path)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    let pier = TestPier::builder()
        .root(&root)
        .arg("--config")
        .arg(&toml_path)
        .start();
    check_set(&sk, pier.addr, name, &p);
    assert_registry_has_image(pier.addr, "interop/second", "oci", &p.image);

    // Pier keeps working on that root: push a new tag to it.
    let more = TestImage::new("more", 1);
    let layout = sk.dir.path().join("more");
    more.write_oci_layout(&layout);
    sk.ok(
        &[
            "copy",
            "--dest-tls-verify=false",
            &format!("oci:{}:more", layout.display()),
            &format!("docker://{}/{name}:more", pier.host()),
        ],
        "push to Pier on the reference registry's root",
    );
    assert_registry_has_image(pier.addr, name, "more", &more);
}
