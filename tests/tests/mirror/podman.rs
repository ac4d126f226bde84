//! podman pulling a Docker Hub name through a `registries.conf` mirror: this machine has
//! no route to Docker Hub, so only the mirror (Pier, mirroring a local upstream as its
//! default upstream) can serve it. Then, upstream stopped, a podman with fresh storage
//! pulls it again from Pier's cache, by tag and by digest.

use std::time::Duration;

use pier_e2e::sha256_digest;

use crate::clients_support::*;
use crate::support::*;

/// podman whose `registries.conf` has `docker.io` mirrored to `mirror` (plain HTTP) as
/// its only entry.
#[track_caller]
fn mirror_podman(mirror: &str) -> Podman {
    Podman::new(&format!(
        "unqualified-search-registries = []\n\n\
         [[registry]]\nprefix = \"docker.io\"\nlocation = \"docker.io\"\n\n\
         [[registry.mirror]]\nlocation = \"{mirror}\"\ninsecure = true\n"
    ))
}

trait PodmanExt {
    fn ok(&self, args: &[&str], context: &str, extra: impl FnOnce() -> String) -> Output;
    fn pull(&self, reference: &str, context: &str, extra: impl FnOnce() -> String) -> Output;
    fn inspect(&self, reference: &str, format: &str) -> String;
}

impl PodmanExt for Podman {
    /// Runs `podman ARGS`, panicking with its output (and `extra`) on failure.
    #[track_caller]
    fn ok(&self, args: &[&str], context: &str, extra: impl FnOnce() -> String) -> Output {
        let o = self.run(args);
        assert!(o.success(), "{context}: podman failed\n{o}\n{}", extra());
        o
    }

    /// `podman pull REF` with the trust policy of its own.
    #[track_caller]
    fn pull(&self, reference: &str, context: &str, extra: impl FnOnce() -> String) -> Output {
        let policy = self.policy();
        self.ok(
            &[
                "pull",
                "--signature-policy",
                &policy.display().to_string(),
                reference,
            ],
            context,
            extra,
        )
    }

    /// `podman inspect --format FORMAT REF`, trimmed.
    #[track_caller]
    fn inspect(&self, reference: &str, format: &str) -> String {
        self.ok(
            &["image", "inspect", "--format", format, reference],
            &format!("podman image inspect {reference}"),
            String::new,
        )
        .stdout
        .trim()
        .to_owned()
    }
}

/// podman pulls `docker.io/library/podimg:1` with a `registries.conf` mirroring
/// `docker.io` to Pier; the image has the upstream's manifest digest and config (image
/// ID). Upstream stopped (past the tag TTL), a podman with fresh storage pulls it again
/// by tag and by digest from Pier's cache.
#[test]
fn podman_pulls_docker_hub_names_through_a_registries_conf_mirror() {
    let sk = Skopeo::new();
    let mut up = Upstream::start();
    let img = TestImage::new("1", 2);
    up.push_image(&sk, "library/podimg", &img);
    let r = get_manifest(up.addr(), "library/podimg", "1");
    r.expect_status(200, "upstream: GET library/podimg:1");
    let upstream_digest = sha256_digest(&r.body);
    assert_eq!(upstream_digest, img.manifest_digest, "upstream digest");

    let pier = pier_mirroring(&up, &["--upstream-tag-ttl", "1s"]);
    let by_tag = "docker.io/library/podimg:1";
    let by_digest = format!("docker.io/library/podimg@{upstream_digest}");
    let image_id = img.config_digest.trim_start_matches("sha256:");

    // Cold: through Pier from the upstream.
    let p = mirror_podman(&pier.host());
    p.pull(by_tag, "podman pull through the mirror (cold)", || {
        format!("{}\n{}", pier.log_tail(30), up.access_lines("/v2/"))
    });
    assert_eq!(
        p.inspect(by_tag, "{{.Digest}}"),
        upstream_digest,
        "podman's digest of {by_tag} (cold)"
    );
    assert_eq!(
        p.inspect(by_tag, "{{.Id}}"),
        image_id,
        "podman's image ID (config digest) of {by_tag} (cold)"
    );
    let images = p.ok(
        &[
            "images",
            "--digests",
            "--format",
            "{{.Repository}}:{{.Tag}} {{.Digest}}",
        ],
        "podman images --digests",
        String::new,
    );
    assert!(
        images
            .stdout
            .lines()
            .any(|l| l.trim() == format!("{by_tag} {upstream_digest}")),
        "{by_tag} with {upstream_digest} not in podman images --digests\n{images}"
    );
    assert!(
        mirrored_repo_dir(&pier, &up.name(), "library/podimg").is_dir(),
        "Pier stored nothing under {}/library/podimg\n{}",
        up.name(),
        pier.log_tail(30)
    );
    // Every blob reached podman from the upstream through Pier, fetched once.
    std::thread::sleep(Duration::from_millis(200)); // the access log line follows the response
    for d in img.blob_digests() {
        let path = format!("/v2/library/podimg/blobs/{d}");
        assert_eq!(
            up.count("GET", &path),
            1,
            "upstream GETs of {path}\n{}",
            up.access_lines("/blobs/")
        );
    }
    drop(p);

    // Warm: upstream stopped, tag past its TTL, fresh podman storage.
    up.stop();
    std::thread::sleep(Duration::from_millis(1200));
    let p = mirror_podman(&pier.host());
    p.pull(
        by_tag,
        "podman pull by tag from the cache, upstream down",
        || pier.log_tail(30),
    );
    assert_eq!(
        p.inspect(by_tag, "{{.Digest}}"),
        upstream_digest,
        "podman's digest of {by_tag} (warm)"
    );
    p.ok(&["rmi", by_tag], "podman rmi", String::new);
    p.pull(
        &by_digest,
        "podman pull by digest from the cache, upstream down",
        || pier.log_tail(30),
    );
    assert_eq!(
        p.inspect(&by_digest, "{{.Id}}"),
        image_id,
        "podman's image ID of {by_digest} (warm)"
    );
    assert_eq!(
        p.inspect(&by_digest, "{{.Digest}}"),
        upstream_digest,
        "podman's digest of {by_digest} (warm)"
    );
}
