//! One bucket, two registries: Debian's `docker-registry` (CNCF distribution 2.8.2) with
//! its S3 driver pointed at the cluster's s3s-fs, same bucket and prefix as Pier's
//! nodes. What distribution pushes Pier serves, and what Pier pushes distribution serves,
//! byte for byte: both use distribution's key layout
//! (`<prefix>/docker/registry/v2/{blobs,repositories}/...`).
//!
//! Distribution's S3 driver reopens a multipart upload on every PATCH and PUT with
//! ListMultipartUploads and ListParts, which stock s3s-fs 0.14.1 lacks: the s3s-fs that
//! `scripts/install-test-deps.sh` builds is patched for it.

use std::fs;
use std::net::SocketAddr;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use pier_e2e::{http, location_path, sha256_digest, with_query};
use tempfile::TempDir;

use crate::clients_support::*;
use crate::cluster::{BUCKET, Cluster, PREFIX};
use crate::mirror_support::assert_layout_is;
use crate::support::*;

/// The S3 credentials of the example node config (`deploy/examples/ha/node.toml.in`),
/// which the cluster's s3s-fs checks.
const ACCESS_KEY: &str = "pier-example";
const SECRET_KEY: &str = "pier-example-secret";

/// How long a Pier node may keep answering a tag from its cache after another process
/// moved it (`TAG_TTL` in gateway/core/src/registry.rs).
const TAG_TTL: Duration = Duration::from_secs(5);

/// Distribution's S3 part size: its minimum, 5 MiB, so a 12 MiB layer takes three parts.
const CHUNK_SIZE: usize = 5 << 20;

/// Debian's `docker-registry` on a free loopback port, storing in the cluster's bucket
/// under the cluster's prefix. Stopped on drop.
struct S3RefRegistry {
    addr: SocketAddr,
    daemon: Daemon,
    _dir: TempDir,
}

impl S3RefRegistry {
    #[track_caller]
    fn start(c: &Cluster) -> S3RefRegistry {
        let bin = require_bin("docker-registry");
        let dir = temp_dir("interop-registry");
        for attempt in 1..=4 {
            let addr = SocketAddr::from(([127, 0, 0, 1], pier_e2e::free_port()));
            let config = dir.path().join(format!("config-{attempt}.yml"));
            // Blob GETs are served by the registry itself (no redirect to a presigned S3
            // URL): the test is about what it reads from the bucket.
            fs::write(
                &config,
                format!(
                    "version: 0.1\n\
                     log:\n  level: info\n  accesslog:\n    disabled: true\n\
                     storage:\n  s3:\n    accesskey: {ACCESS_KEY}\n    secretkey: {SECRET_KEY}\n    \
                     region: us-east-1\n    regionendpoint: http://127.0.0.1:{s3}\n    \
                     bucket: {BUCKET}\n    rootdirectory: /{PREFIX}\n    secure: false\n    \
                     v4auth: true\n    chunksize: {CHUNK_SIZE}\n  \
                     redirect:\n    disable: true\n  delete:\n    enabled: true\n  \
                     maintenance:\n    uploadpurging:\n      enabled: false\n\
                     http:\n  addr: {addr}\n  secret: pier-interop\n",
                    s3 = c.s3_port,
                ),
            )
            .unwrap();
            let log = dir.path().join(format!("registry-{attempt}.log"));
            // aws-sdk-go v1 panics at start ("unable to load custom CA bundle, HTTPClient's
            // transport unsupported type") when AWS_CA_BUNDLE is set, as it is on some
            // machines: the endpoint is plain HTTP anyway.
            let mut daemon = Daemon::spawn(
                "docker-registry (S3)",
                Command::new(&bin)
                    .arg("serve")
                    .arg(&config)
                    .env_remove("AWS_CA_BUNDLE"),
                &log,
            );
            let up = poll(Duration::from_secs(15), || {
                registry_ready(addr) || !daemon.is_running()
            });
            if up && registry_ready(addr) {
                return S3RefRegistry {
                    addr,
                    daemon,
                    _dir: dir,
                };
            }
            let text = daemon.log();
            daemon.stop();
            if attempt < 4 && text.contains("address already in use") {
                continue;
            }
            panic!(
                "docker-registry (S3 driver) did not become ready on {addr}\n{}",
                tail(&text, 40)
            );
        }
        unreachable!()
    }

    fn host(&self) -> String {
        self.addr.to_string()
    }

    fn log_tail(&self, n: usize) -> String {
        format!("--- docker-registry log:\n{}", self.daemon.log_tail(n))
    }
}

/// The bucket holds `img` as `name:tag` in distribution's layout under the shared prefix:
/// each blob's `data` with its bytes, the repository's layer links, the manifest's
/// revision link, and the tag's current and index links. A link holds the bare digest
/// (distribution parses it whole: no newline).
#[track_caller]
fn assert_bucket_has_image(c: &Cluster, name: &str, tag: &str, img: &TestImage, who: &str) {
    let v2 = c.s3_root().join("docker/registry/v2");
    let blob = |d: &str| {
        let hex = d.strip_prefix("sha256:").unwrap();
        v2.join(format!("blobs/sha256/{}/{hex}/data", &hex[..2]))
    };
    let repo = v2.join("repositories").join(name);
    let link = |rel: String, want: &str| {
        let p = repo.join(&rel);
        let got = fs::read(&p).unwrap_or_else(|e| {
            panic!(
                "{who}: no link key {} in the bucket ({e}); keys under the repository:\n{}",
                p.display(),
                keys_under(&repo)
            )
        });
        assert_eq!(
            String::from_utf8_lossy(&got),
            want,
            "{who}: content of {}",
            p.display()
        );
    };
    let mut blobs = vec![(img.manifest_digest.clone(), img.manifest.clone())];
    blobs.push((img.config_digest.clone(), img.config.clone()));
    blobs.extend(img.layers.iter().map(|(gz, d)| (d.clone(), gz.clone())));
    for (d, bytes) in &blobs {
        let p = blob(d);
        let got = fs::read(&p)
            .unwrap_or_else(|e| panic!("{who}: no blob key {} in the bucket ({e})", p.display()));
        assert!(got == *bytes, "{who}: bytes of blob key {}", p.display());
    }
    for d in img.blob_digests() {
        let hex = d.strip_prefix("sha256:").unwrap();
        link(format!("_layers/sha256/{hex}/link"), &d);
    }
    let m = &img.manifest_digest;
    let mhex = m.strip_prefix("sha256:").unwrap();
    link(format!("_manifests/revisions/sha256/{mhex}/link"), m);
    link(format!("_manifests/tags/{tag}/current/link"), m);
    link(format!("_manifests/tags/{tag}/index/sha256/{mhex}/link"), m);
}

/// Every key under `dir`, one a line, relative to it (for failure messages).
fn keys_under(dir: &Path) -> String {
    let mut keys: Vec<String> = walk_files(dir)
        .iter()
        .map(|f| f.strip_prefix(dir).unwrap().display().to_string())
        .collect();
    keys.sort();
    keys.join("\n")
}

/// `GET /v2/<name>/tags/list` answers exactly `tags`.
#[track_caller]
fn assert_tags(addr: SocketAddr, name: &str, tags: &[&str], who: &str) {
    let r = http::get(addr, &format!("/v2/{name}/tags/list"));
    r.expect_status(200, &format!("{who}: tags/list of {name}"));
    let j = r.json();
    assert_eq!(j["name"], name, "{who}: tags/list name\n{r}");
    let mut got: Vec<&str> = j["tags"]
        .as_array()
        .unwrap_or_else(|| panic!("{who}: no tags array\n{r}"))
        .iter()
        .filter_map(|t| t.as_str())
        .collect();
    got.sort_unstable();
    assert_eq!(got, tags, "{who}: tags of {name}");
}

/// `GET /v2/_catalog` lists `name`.
#[track_caller]
fn assert_catalog_has(addr: SocketAddr, name: &str, who: &str) {
    let r = http::get(addr, "/v2/_catalog?n=1000");
    r.expect_status(200, &format!("{who}: catalog"));
    let j = r.json();
    let repos = j["repositories"]
        .as_array()
        .unwrap_or_else(|| panic!("{who}: no repositories array\n{r}"));
    assert!(
        repos.iter().any(|n| n == name),
        "{who}: catalog does not list {name}\n{r}"
    );
}

/// Distribution writes, Pier reads: skopeo pushes a three-layer image (a 12 MiB layer,
/// three S3 parts in distribution's multipart upload) to docker-registry; every Pier node
/// then serves the manifest by tag and by digest and every blob, byte for byte; skopeo
/// copies it from Pier with the pushed digests; Pier's tag list and catalog list it.
#[test]
fn distribution_writes_pier_serves() {
    let c = timed("cluster start", Cluster::start);
    let reg = S3RefRegistry::start(&c);
    let sk = Skopeo::new();
    let name = "interop/by-distribution";
    let img = big_image("v1", &[(12 << 20) + 4321, 300 << 10, 2 << 20]);
    let src = oci_source(&sk, &img, "by-distribution");
    let o = timed("skopeo copy to docker-registry on S3 (~14 MiB)", || {
        sk.run(&[
            "copy",
            "--dest-tls-verify=false",
            &src,
            &format!("docker://{}/{name}:v1", reg.host()),
        ])
    });
    assert!(
        o.success(),
        "skopeo copy to docker-registry (S3 driver on s3s-fs) failed\n{}\n{}",
        o.all(),
        reg.log_tail(30)
    );
    assert_eq!(
        inspect_raw_digest(&sk, &format!("{}/{name}:v1", reg.host())),
        img.manifest_digest,
        "docker-registry's own manifest digest"
    );
    assert_bucket_has_image(&c, name, "v1", &img, "written by docker-registry");
    assert!(
        !c.has_upload_keys(),
        "docker-registry left upload keys:\n{}",
        keys_under(&c.s3_root())
    );

    for node in &c.nodes {
        assert_registry_has_image(node.addr, name, "v1", &img);
        assert_registry_has_image(node.addr, name, &img.manifest_digest, &img);
    }
    let out = timed("skopeo copy from Pier", || {
        sk.pull_to_oci(&format!("docker://{}/{name}:v1", c.lb_host()), "from-pier")
    });
    assert_layout_is(&out, &img, "image copied from Pier");
    assert_tags(c.lb, name, &["v1"], "Pier");
    assert_catalog_has(c.lb, name, "Pier");

    // The same image as a Docker schema 2 manifest (skopeo converts it): distribution
    // stores no media type beside a manifest, so Pier must take it from the bytes.
    sk.ok(
        &[
            "copy",
            "--dest-tls-verify=false",
            "--format",
            "v2s2",
            &src,
            &format!("docker://{}/{name}:v1-docker", reg.host()),
        ],
        "skopeo copy --format v2s2 to docker-registry",
    );
    let docker_digest = inspect_raw_digest(&sk, &format!("{}/{name}:v1-docker", reg.host()));
    assert_ne!(
        docker_digest, img.manifest_digest,
        "skopeo converted nothing"
    );
    for reference in ["v1-docker", docker_digest.as_str()] {
        let r = get_manifest(c.lb, name, reference);
        r.expect_status(200, &format!("Pier: GET manifest {name}:{reference}"));
        assert_eq!(
            format!("sha256:{}", sha256_hex(&r.body)),
            docker_digest,
            "Pier: bytes of the Docker manifest {reference}\n{r}"
        );
        r.expect_header(
            "content-type",
            DOCKER_MANIFEST,
            &format!("Pier: Content-Type of {name}:{reference}"),
        );
    }
    assert_tags(c.lb, name, &["v1", "v1-docker"], "Pier");
    assert_blob_store_consistent(&c.s3_root());
}

/// Pier writes, distribution reads: skopeo pushes an image with an 11 MiB layer through
/// Pier's load balancer, and a 13 MiB blob goes up in three chunks on three different
/// nodes; docker-registry on the same bucket then serves the manifest by tag and digest
/// and every blob byte for byte, skopeo copies the image from it with the pushed
/// digests, and its tag list and catalog list the repository.
#[test]
fn pier_writes_distribution_serves() {
    let c = timed("cluster start", Cluster::start);
    let reg = S3RefRegistry::start(&c);
    let sk = Skopeo::new();
    let name = "interop/by-pier";
    let img = big_image("v2", &[(11 << 20) + 777, 1 << 20, 64 << 10]);
    let src = oci_source(&sk, &img, "by-pier");
    timed("skopeo copy to Pier (~12 MiB)", || {
        sk.ok(
            &[
                "copy",
                "--dest-tls-verify=false",
                &src,
                &format!("docker://{}/{name}:v2", c.lb_host()),
            ],
            "skopeo copy to Pier",
        )
    });

    // A chunked upload: POST on node 1, 5 MiB chunks PATCHed on nodes 2, 3 and 1, PUT on
    // node 3.
    let data = pier_e2e::random_bytes((13 << 20) + 99);
    let digest = sha256_digest(&data);
    let mut loc = pier_e2e::start_upload(c.node(0).addr, name);
    for (k, on) in [(0usize, 1usize), (1, 2), (2, 0)] {
        let start = k * CHUNK_SIZE;
        let end = ((k + 1) * CHUNK_SIZE).min(data.len());
        let range = format!("{start}-{}", end - 1);
        let r = http::request(
            c.node(on).addr,
            "PATCH",
            &loc,
            &[
                ("Content-Type", "application/octet-stream"),
                ("Content-Range", &range),
            ],
            &data[start..end],
        );
        r.expect_status(202, &format!("PATCH {range} on node{}", on + 1));
        loc = location_path(&r);
    }
    let r = http::request(
        c.node(2).addr,
        "PUT",
        &with_query(&loc, &format!("digest={digest}")),
        &[],
        b"",
    );
    r.expect_status(201, "PUT ?digest= on node3");

    assert_bucket_has_image(&c, name, "v2", &img, "written by Pier");
    assert!(
        !c.has_upload_keys(),
        "Pier left upload keys:\n{}",
        keys_under(&c.s3_root())
    );
    assert_blob_store_consistent(&c.s3_root());

    let reg = {
        // Started after the pushes too: nothing it serves can come from its own memory.
        drop(reg);
        S3RefRegistry::start(&c)
    };
    assert_registry_has_image(reg.addr, name, "v2", &img);
    assert_registry_has_image(reg.addr, name, &img.manifest_digest, &img);
    let b = http::get(reg.addr, &format!("/v2/{name}/blobs/{digest}"));
    b.expect_status(200, "docker-registry: GET the chunked blob");
    assert!(
        b.body == data,
        "docker-registry: bytes of the chunked blob ({} of {})",
        b.body.len(),
        data.len()
    );
    let out = timed("skopeo copy from docker-registry", || {
        sk.pull_to_oci(
            &format!("docker://{}/{name}:v2", reg.host()),
            "from-distribution",
        )
    });
    assert_layout_is(&out, &img, "image copied from docker-registry");
    assert_eq!(
        inspect_raw_digest(&sk, &format!("{}/{name}:v2", reg.host())),
        img.manifest_digest,
        "docker-registry: manifest digest"
    );
    assert_tags(reg.addr, name, &["v2"], "docker-registry");
    assert_catalog_has(reg.addr, name, "docker-registry");
}

/// A tag moved by the other writer: Pier serves `name:latest` from every node (so each
/// caches the tag), docker-registry then pushes another image as `name:latest`, and every
/// Pier node serves the new manifest once its tag cache expires (`TAG_TTL`, 5 s, in
/// gateway/core/src/registry.rs: a change by another process on the same storage is
/// not announced, so the time to live bounds how long it goes unseen).
#[test]
fn tag_moved_by_distribution_is_seen_by_pier() {
    let c = timed("cluster start", Cluster::start);
    let reg = S3RefRegistry::start(&c);
    let sk = Skopeo::new();
    let name = "interop/moved";
    let old = big_image("latest", &[64 << 10]);
    let new = big_image("latest", &[64 << 10]);
    sk.ok(
        &[
            "copy",
            "--dest-tls-verify=false",
            &oci_source(&sk, &old, "old"),
            &format!("docker://{}/{name}:latest", c.lb_host()),
        ],
        "skopeo copy the old image to Pier",
    );
    for node in &c.nodes {
        assert_registry_has_image(node.addr, name, "latest", &old);
    }
    sk.ok(
        &[
            "copy",
            "--dest-tls-verify=false",
            &oci_source(&sk, &new, "new"),
            &format!("docker://{}/{name}:latest", reg.host()),
        ],
        "skopeo copy the new image to docker-registry",
    );
    let moved = Instant::now();
    assert_bucket_has_image(&c, name, "latest", &new, "moved by docker-registry");
    let serves = |addr: SocketAddr| {
        let r = get_manifest(addr, name, "latest");
        r.expect_status(200, &format!("GET {name}:latest from {addr}"));
        format!("sha256:{}", sha256_hex(&r.body))
    };
    let seen = poll(TAG_TTL + Duration::from_secs(5), || {
        c.nodes
            .iter()
            .all(|n| serves(n.addr) == new.manifest_digest)
    });
    let stale: Vec<String> = c
        .nodes
        .iter()
        .filter(|n| serves(n.addr) != new.manifest_digest)
        .map(|n| format!("node{}", n.n))
        .collect();
    assert!(
        seen && stale.is_empty(),
        "{stale:?} still serve {name}:latest as {} {:?} after docker-registry moved it to {}",
        old.manifest_digest,
        moved.elapsed(),
        new.manifest_digest
    );
    eprintln!(
        "[scaleout] every node serves the moved tag after {:?}",
        moved.elapsed()
    );
    for node in &c.nodes {
        assert_registry_has_image(node.addr, name, "latest", &new);
    }
}

/// Multi-arch images both ways: an OCI index with two child images pushed with
/// `skopeo copy --all` to docker-registry is served by Pier (index by tag, with its media
/// type, each child by digest, every blob), and one pushed to Pier is served by
/// docker-registry.
#[test]
fn multi_arch_index_both_ways() {
    let c = timed("cluster start", Cluster::start);
    let reg = S3RefRegistry::start(&c);
    let sk = Skopeo::new();
    let push_index = |idx: &TestIndex, layout: &str, dest: String| {
        let dir = sk.dir.path().join(layout);
        idx.write_oci_layout(&dir);
        sk.ok(
            &[
                "copy",
                "--all",
                "--dest-tls-verify=false",
                &format!("oci:{}:{}", dir.display(), idx.tag),
                &dest,
            ],
            &format!("skopeo copy --all to {dest}"),
        );
    };

    let by_distribution = TestIndex::new("multi");
    let name = "interop/index-by-distribution";
    push_index(
        &by_distribution,
        "index-a",
        format!("docker://{}/{name}:multi", reg.host()),
    );
    for node in &c.nodes {
        assert_registry_has_index(node.addr, name, "multi", &by_distribution);
    }

    let by_pier = TestIndex::new("multi");
    let name = "interop/index-by-pier";
    push_index(
        &by_pier,
        "index-b",
        format!("docker://{}/{name}:multi", c.lb_host()),
    );
    assert_registry_has_index(reg.addr, name, "multi", &by_pier);
    assert_tags(reg.addr, name, &["multi"], "docker-registry");
    assert_blob_store_consistent(&c.s3_root());
}
