//! Real clients pulling through the mirror: skopeo (all three name forms, upstream up and
//! down), containerd (`hosts.toml` mirror, `?ns=`), dockerd (`registry-mirrors`), and a
//! multi-platform index whose children the mirror fetches by itself.

use std::fs;
use std::time::Duration;

use pier_e2e::{ACCEPT_MANIFESTS, http, sha256_digest};
use serde_json::json;

use crate::clients_support::*;
use crate::support::*;

/// skopeo pulls cold (by digest, by tag, through the path-prefix name), then the upstream
/// stops: everything pulled is still served (tags stale-if-error, past their TTL) under
/// every name form; what was never pulled is a 502/504 with an OCI error.
#[test]
fn skopeo_pulls_cold_then_warm_with_the_upstream_down() {
    let sk = Skopeo::new();
    let mut up = Upstream::start();
    let img = TestImage::new("3", 2);
    up.push_image(&sk, "library/alpine", &img);
    let other = TestImage::new("1", 1);
    up.push_image(&sk, "library/busybox", &other);
    // A tag the upstream has that nobody pulls through Pier.
    pier_e2e::push_manifest(
        up.addr(),
        "library/alpine",
        "edge",
        OCI_MANIFEST,
        &img.manifest,
    )
    .expect_status(201, "upstream: tag edge");
    let r = get_manifest(up.addr(), "library/alpine", "3");
    r.expect_status(200, "upstream: GET library/alpine:3");
    assert_eq!(
        sha256_digest(&r.body),
        img.manifest_digest,
        "upstream digest"
    );

    let pier = pier_mirroring(&up, &["--upstream-tag-ttl", "1s"]);
    let host = pier.host();
    let by_digest = format!("docker://{host}/library/alpine@{}", img.manifest_digest);
    let by_tag = format!("docker://{host}/library/alpine:3");
    // The path-prefix form names the same upstream repository.
    let prefixed = format!("docker://{host}/{}/library/busybox:1", up.name());

    // Cold.
    let out = sk.pull_to_oci(&by_digest, "cold-digest");
    assert_layout_is(&out, &img, "cold pull by digest");
    let out = sk.pull_to_oci(&by_tag, "cold-tag");
    assert_layout_is(&out, &img, "cold pull by tag");
    let out = sk.pull_to_oci(&prefixed, "cold-prefixed");
    assert_layout_is(&out, &other, "cold pull by the path-prefix name");
    assert!(
        mirrored_repo_dir(&pier, &up.name(), "library/alpine").is_dir()
            && mirrored_repo_dir(&pier, &up.name(), "library/busybox").is_dir(),
        "mirrored content is not stored under <upstream-name>/<repo>: {:#?}",
        pier_e2e::paths_under(&pier.v2_dir().join("repositories"))
    );

    // A manifest by digest is fetched once and never revalidated.
    let by_digest_path = format!("/v2/library/alpine/manifests/{}", img.manifest_digest);
    let upstream_digest_hits =
        || up.count("GET", &by_digest_path) + up.count("HEAD", &by_digest_path);
    // Checked at the end (the rest of the test does not depend on it).
    let mut problems = Vec::new();
    std::thread::sleep(Duration::from_millis(200)); // the access log line follows the response
    let before = upstream_digest_hits();
    if before != 1 {
        problems.push(format!(
            "cold pulls by digest then by tag: the upstream served the manifest by digest {before} times (want 1: once stored, a digest is never fetched again)\n{}",
            up.access_lines("/manifests/")
        ));
    }
    for _ in 0..3 {
        let r = get_manifest(pier.addr, "library/alpine", &img.manifest_digest);
        r.expect_status(200, "GET the cached manifest by digest");
        assert_eq!(sha256_digest(&r.body), img.manifest_digest);
    }
    std::thread::sleep(Duration::from_millis(300)); // the access log line follows the response
    assert_eq!(
        upstream_digest_hits(),
        before,
        "a cached manifest by digest was revalidated upstream\n{}",
        up.access_lines("/manifests/")
    );

    // What the upstream does not have is a 404, with the upstream up.
    get_manifest(pier.addr, "library/alpine", "no-such-tag").expect_error(
        404,
        "MANIFEST_UNKNOWN",
        "unknown tag, upstream up",
    );
    let missing = sha256_digest(&unique_bytes(64));
    pier.get(&format!("/v2/library/alpine/blobs/{missing}"))
        .expect_error(404, "BLOB_UNKNOWN", "unknown blob, upstream up");
    let o = sk.run(&[
        "inspect",
        "--tls-verify=false",
        &format!("docker://{host}/library/alpine:no-such-tag"),
    ]);
    assert!(
        !o.success(),
        "skopeo inspect of an unknown tag succeeded\n{o}"
    );

    // The upstream goes away; wait out the tag TTL so tags need revalidation.
    up.stop();
    std::thread::sleep(Duration::from_millis(1300));

    let out = sk.pull_to_oci(&by_tag, "warm-tag");
    assert_layout_is(
        &out,
        &img,
        "warm pull by tag, upstream down (stale-if-error)",
    );
    let out = sk.pull_to_oci(&by_digest, "warm-digest");
    assert_layout_is(&out, &img, "warm pull by digest, upstream down");
    let out = sk.pull_to_oci(&prefixed, "warm-prefixed");
    assert_layout_is(
        &out,
        &other,
        "warm pull by the path-prefix name, upstream down",
    );

    // The three name forms share one cache.
    for (path, what) in [
        (
            format!("/v2/{}/library/alpine/manifests/3", up.name()),
            "path-prefix name of what was pulled by the default name",
        ),
        (
            format!("/v2/library/alpine/manifests/3?ns={}", up.host()),
            "?ns= name of what was pulled by the default name",
        ),
        (
            "/v2/library/busybox/manifests/1".to_owned(),
            "default name of what was pulled by the path-prefix name",
        ),
    ] {
        let r = http::request(
            pier.addr,
            "GET",
            &path,
            &[("Accept", ACCEPT_MANIFESTS)],
            b"",
        );
        r.expect_status(200, what);
        let want = if path.contains("busybox") {
            &other.manifest_digest
        } else {
            &img.manifest_digest
        };
        assert_eq!(&sha256_digest(&r.body), want, "{what}");
    }
    let layer = &img.layers[0].1;
    let r = pier.get(&format!("/v2/{}/library/alpine/blobs/{layer}", up.name()));
    r.expect_status(200, "cached layer by the path-prefix name, upstream down");
    assert_eq!(&sha256_digest(&r.body), layer);

    // Never pulled, upstream down: 502/504 with an OCI error, never a 404 or a hang.
    let r = get_manifest(pier.addr, "library/alpine", "edge");
    assert_upstream_unavailable(&r, "uncached tag, upstream down");
    let never = sha256_digest(&unique_bytes(64));
    let r = pier.get(&format!("/v2/library/alpine/blobs/{never}"));
    assert_upstream_unavailable(&r, "uncached blob, upstream down");
    let r = get_manifest(pier.addr, "library/never-pulled", "1");
    assert_upstream_unavailable(&r, "uncached repository, upstream down");
    let o = sk.run(&[
        "inspect",
        "--tls-verify=false",
        &format!("docker://{host}/library/alpine:edge"),
    ]);
    assert!(
        !o.success(),
        "skopeo inspect of an uncached tag with the upstream down succeeded\n{o}"
    );
    assert!(problems.is_empty(), "{}", problems.join("\n\n"));
}

/// containerd pulls `UPSTREAM/library/ctrimg:1` with a `hosts.toml` whose mirror is Pier
/// and whose server is a dead port: only the mirror can answer, and only through
/// `?ns=UPSTREAM` (the upstream is not Pier's default upstream). Then, upstream stopped,
/// a fresh containerd pulls it again from Pier's cache.
#[test]
fn containerd_pulls_through_a_hosts_toml_mirror_with_ns() {
    let sk = Skopeo::new();
    let mut up = Upstream::start();
    let img = TestImage::new("1", 2);
    up.push_image(&sk, "library/ctrimg", &img);
    let (pier, _cfg) = pier_with_config(&format!(
        "[[upstreams]]\nurl = \"{}\"\ntag_ttl = \"1s\"\n",
        up.url()
    ));
    // No default upstream: without ?ns= the name is a local, empty repository.
    get_manifest(pier.addr, "library/ctrimg", "1").expect_error(
        404,
        "MANIFEST_UNKNOWN",
        "a name without ?ns= (no default upstream) is local",
    );

    let hosts = temp_dir("ctr-hosts");
    let host_dir = hosts.path().join(up.host());
    fs::create_dir_all(&host_dir).unwrap();
    let dead = pier_e2e::free_port();
    fs::write(
        host_dir.join("hosts.toml"),
        format!(
            "server = \"http://127.0.0.1:{dead}\"\n\n[host.\"http://{}\"]\n  capabilities = [\"pull\", \"resolve\"]\n",
            pier.host()
        ),
    )
    .unwrap();
    let hosts_dir = hosts.path().display().to_string();
    let reference = format!("{}/library/ctrimg:1", up.host());
    let pinned = format!("{}/library/ctrimg@{}", up.host(), img.manifest_digest);

    let mut c = Containerd::start();
    let o = c.ok(
        &["images", "pull", "--hosts-dir", &hosts_dir, &reference],
        "ctr pull through the mirror (cold)",
    );
    assert!(
        o.stdout.contains("unpacking"),
        "ctr pull did not unpack\n{o}"
    );
    let ls = c.ok(&["images", "ls"], "ctr images ls");
    assert!(
        ls.stdout
            .lines()
            .any(|l| l.starts_with(&reference) && l.contains(&img.manifest_digest)),
        "{reference} with {} not in ctr images ls\n{ls}",
        img.manifest_digest
    );
    assert!(
        mirrored_repo_dir(&pier, &up.name(), "library/ctrimg").is_dir(),
        "Pier stored nothing under {}/library/ctrimg: {:#?}\n{}",
        up.name(),
        pier_e2e::paths_under(&pier.v2_dir().join("repositories")),
        pier.log_tail(30)
    );
    // The blobs reached containerd from the upstream through Pier (each fetched once).
    for d in img.blob_digests() {
        let path = format!("/v2/library/ctrimg/blobs/{d}");
        assert_eq!(
            up.count("GET", &path),
            1,
            "upstream GETs of {path}\n{}",
            up.access_lines("/blobs/")
        );
    }
    c.stop();
    drop(c);

    up.stop();
    std::thread::sleep(Duration::from_millis(1200)); // past the tag TTL
    let c = Containerd::start();
    c.ok(
        &["images", "pull", "--hosts-dir", &hosts_dir, &reference],
        "ctr pull by tag from the cache, upstream down",
    );
    c.ok(
        &["images", "pull", "--hosts-dir", &hosts_dir, &pinned],
        "ctr pull by digest from the cache, upstream down",
    );
    c.ok(&["images", "check"], "ctr images check");
    let ls = c.ok(&["images", "ls"], "ctr images ls");
    assert!(
        ls.stdout
            .lines()
            .any(|l| l.starts_with(&reference) && l.contains(&img.manifest_digest)),
        "warm pull: {reference} not in ctr images ls\n{ls}"
    );
}

/// dockerd with `registry-mirrors: ["http://PIER"]` pulls the Docker Hub name `testimg:1`:
/// this machine has no route to Docker Hub, so only the mirror can serve it.
#[test]
fn dockerd_pulls_docker_hub_names_through_registry_mirrors() {
    let sk = Skopeo::new();
    let up = Upstream::start();
    let img = TestImage::new("1", 2);
    up.push_image(&sk, "library/testimg", &img);
    let pier = pier_mirroring(&up, &[]);
    let docker = Dockerd::start_with_daemon_json(&json!({ "registry-mirrors": [pier.url()] }));

    let o = docker.ok(&["pull", "testimg:1"], "docker pull through the mirror");
    assert!(
        o.stdout
            .contains(&format!("Digest: {}", img.manifest_digest)),
        "docker pull digest\n{o}"
    );
    let id = docker.ok(
        &["image", "inspect", "--format", "{{.Id}}", "testimg:1"],
        "docker image inspect",
    );
    assert_eq!(id.stdout.trim(), img.config_digest, "image id");
    assert!(
        mirrored_repo_dir(&pier, &up.name(), "library/testimg").is_dir(),
        "Pier stored nothing under {}/library/testimg\n{}",
        up.name(),
        pier.log_tail(30)
    );
    // By digest too, after removing the image and its layers.
    docker.ok(&["rmi", "testimg:1"], "docker rmi");
    docker.ok(
        &["pull", &format!("testimg@{}", img.manifest_digest)],
        "docker pull by digest through the mirror",
    );
}

/// An index pulled by tag makes Pier fetch its child manifests in the background: with
/// the upstream stopped afterwards, each child is served by digest and skopeo pulls
/// either platform with `--override-arch`, though no client asked for a child before.
#[test]
fn index_children_are_prefetched_and_served_with_the_upstream_down() {
    let sk = Skopeo::new();
    let mut up = Upstream::start();
    let idx = TestIndex::new("multi");
    up.push_index(&sk, "library/multi", &idx);
    let pier = pier_mirroring(&up, &[]);

    let r = get_manifest(pier.addr, "library/multi", "multi");
    r.expect_status(200, "GET the index through Pier");
    assert_eq!(sha256_digest(&r.body), idx.index_digest, "index digest");
    assert_eq!(r.header("content-type"), Some(pier_e2e::media::OCI_INDEX));

    // Wait (without asking Pier for them) until both children are stored.
    let children: Vec<_> = idx
        .images
        .iter()
        .map(|i| i.manifest_digest.clone())
        .collect();
    let stored = pier_e2e::wait_until(Duration::from_secs(10), Duration::from_millis(50), || {
        children
            .iter()
            .all(|d| blob_data_path(&pier.root, d).is_file())
    });
    assert!(
        stored,
        "the index's children were not prefetched within 10 s\nupstream:\n{}\n{}",
        up.access_lines("/manifests/"),
        pier.log_tail(30)
    );
    for d in &children {
        let path = format!("/v2/library/multi/manifests/{d}");
        assert_eq!(
            up.count("GET", &path),
            1,
            "upstream GETs of child {d}\n{}",
            up.access_lines("/manifests/")
        );
    }
    // Give the prefetch a moment to finish writing its tag/revision links.
    std::thread::sleep(Duration::from_millis(300));
    // The layers and configs of both platforms, fetched through Pier (blobs only).
    for img in &idx.images {
        for d in img.blob_digests() {
            let b = pier.get(&format!("/v2/library/multi/blobs/{d}"));
            b.expect_status(200, &format!("GET blob {d} through Pier"));
            assert_eq!(sha256_digest(&b.body), d);
        }
    }

    up.stop();
    for img in &idx.images {
        let r = get_manifest(pier.addr, "library/multi", &img.manifest_digest);
        r.expect_status(200, "prefetched child by digest, upstream down");
        assert_eq!(r.body, img.manifest, "prefetched child bytes");
    }
    let archs = [
        oci_arch(),
        if oci_arch() == "arm64" {
            "amd64"
        } else {
            "arm64"
        },
    ];
    for (img, arch) in idx.images.iter().zip(archs) {
        let out = sk.dir.path().join(format!("platform-{arch}"));
        sk.ok(
            &[
                "--override-arch",
                arch,
                "--override-os",
                "linux",
                "copy",
                "--src-tls-verify=false",
                &format!("docker://{}/library/multi:multi", pier.host()),
                &format!("oci:{}:p", out.display()),
            ],
            &format!("skopeo pull of the {arch} image from the cache, upstream down"),
        );
        assert_layout_is(&out, img, &format!("{arch} image from the cache"));
    }
}

/// `platforms = ["linux/<this machine's arch>"]` on the upstream: pulling the index
/// fetches that child with it and not the other; the other platform still pulls (skopeo
/// `--override-arch`), its child fetched on demand.
#[test]
fn only_the_configured_platforms_are_fetched_with_an_index() {
    let sk = Skopeo::new();
    let up = Upstream::start();
    let idx = TestIndex::new("plat");
    up.push_index(&sk, "library/plat", &idx);
    let (pier, _dir) = pier_with_config(&format!(
        "[[upstreams]]\nname = \"up\"\nurl = \"{}\"\ndefault = true\nplatforms = [\"linux/{}\"]\n",
        up.url(),
        oci_arch()
    ));
    let r = get_manifest(pier.addr, "library/plat", "plat");
    r.expect_status(200, "GET the index through Pier");
    assert_eq!(sha256_digest(&r.body), idx.index_digest, "index digest");
    let (mine, other) = (&idx.images[0], &idx.images[1]);
    let child_gets = |d: &str| up.count("GET", &format!("/v2/library/plat/manifests/{d}"));
    assert!(
        pier_e2e::wait_until(Duration::from_secs(10), Duration::from_millis(50), || {
            blob_data_path(&pier.root, &mine.manifest_digest).is_file()
        }),
        "this platform's child was not fetched with the index\n{}",
        up.access_lines("/manifests/")
    );
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(
        child_gets(&mine.manifest_digest),
        1,
        "{}",
        up.access_lines("/manifests/")
    );
    assert_eq!(
        child_gets(&other.manifest_digest),
        0,
        "the other platform's child was fetched with the index\n{}",
        up.access_lines("/manifests/")
    );

    let other_arch = if oci_arch() == "arm64" {
        "amd64"
    } else {
        "arm64"
    };
    let out = sk.dir.path().join("other-platform");
    sk.ok(
        &[
            "--override-arch",
            other_arch,
            "--override-os",
            "linux",
            "copy",
            "--src-tls-verify=false",
            &format!("docker://{}/library/plat:plat", pier.host()),
            &format!("oci:{}:p", out.display()),
        ],
        "skopeo pull of the other platform through Pier",
    );
    assert_layout_is(&out, other, "the other platform, fetched on demand");
    assert_eq!(
        child_gets(&other.manifest_digest),
        1,
        "{}",
        up.access_lines("/manifests/")
    );
}
