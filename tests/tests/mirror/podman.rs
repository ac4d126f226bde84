//! podman pulling a Docker Hub name through a `registries.conf` mirror: this machine has
//! no route to Docker Hub, so only the mirror (Pier, mirroring a local upstream as its
//! default upstream) can serve it. Then, upstream stopped, a podman with fresh storage
//! pulls it again from Pier's cache, by tag and by digest.

use std::fs;
use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;

use pier_e2e::sha256_digest;
use tempfile::TempDir;

use crate::clients_support::*;
use crate::support::*;

/// podman (as root) with its own storage (`--root`, `--runroot`, vfs), tmp dir, HOME,
/// `containers.conf`, `storage.conf`, trust policy, auth file and a `registries.conf` whose
/// only entry is `docker.io` mirrored to `mirror` (plain HTTP). As root, podman 4.3 keeps
/// its blob-info cache in /var/lib/containers/cache whatever `--root` says: like
/// [`Skopeo`], it runs in a private mount namespace with a cache dir of its own bound
/// there. Whatever podman left mounted under its dir is unmounted on drop.
struct Podman {
    dir: TempDir,
    bin: PathBuf,
    unshare: Option<PathBuf>,
}

impl Podman {
    #[track_caller]
    fn new(mirror: &str) -> Podman {
        let bin = require_bin("podman");
        let dir = temp_dir("podman");
        let d = dir.path();
        for sub in [
            "root",
            "runroot",
            "tmp",
            "run",
            "networks",
            "cache",
            "home/.config/containers/registries.d",
            "home/.config/containers/registries.conf.d",
        ] {
            fs::create_dir_all(d.join(sub)).unwrap();
        }
        let policy = r#"{"default":[{"type":"insecureAcceptAnything"}]}"#;
        fs::write(d.join("policy.json"), policy).unwrap();
        // Also where c/image looks first ($HOME/.config/containers/policy.json).
        fs::write(d.join("home/.config/containers/policy.json"), policy).unwrap();
        fs::write(
            d.join("registries.conf"),
            format!(
                "unqualified-search-registries = []\n\n\
                 [[registry]]\nprefix = \"docker.io\"\nlocation = \"docker.io\"\n\n\
                 [[registry.mirror]]\nlocation = \"{mirror}\"\ninsecure = true\n"
            ),
        )
        .unwrap();
        fs::write(
            d.join("storage.conf"),
            format!(
                "[storage]\ndriver = \"vfs\"\ngraphroot = \"{}\"\nrunroot = \"{}\"\n",
                d.join("root").display(),
                d.join("runroot").display()
            ),
        )
        .unwrap();
        // File locks (in --tmpdir) instead of the host-wide /dev/shm/libpod_lock; the CNI
        // backend with a config dir of its own, since rootful netavark always writes to
        // /etc/containers/networks and /run/containers/networks (pulls need no network).
        fs::write(
            d.join("containers.conf"),
            format!(
                "[engine]\ncgroup_manager = \"cgroupfs\"\nevents_logger = \"none\"\nlock_type = \"file\"\n\
                 [network]\nnetwork_backend = \"cni\"\nnetwork_config_dir = \"{}\"\n",
                d.join("networks").display()
            ),
        )
        .unwrap();
        fs::write(d.join("auth.json"), "{}").unwrap();
        let unshare = private_cache_unshare();
        Podman { dir, bin, unshare }
    }

    /// A `podman` command with the isolation flags and environment set; add arguments.
    fn cmd(&self) -> Command {
        let d = self.dir.path();
        let mut c = isolated_containers_command(&self.bin, self.unshare.as_deref(), d);
        c.env("CONTAINERS_STORAGE_CONF", d.join("storage.conf"))
            .env("CONTAINERS_CONF", d.join("containers.conf"))
            .arg("--root")
            .arg(d.join("root"))
            .arg("--runroot")
            .arg(d.join("runroot"))
            .arg("--tmpdir")
            .arg(d.join("tmp"))
            .args([
                "--storage-driver",
                "vfs",
                "--cgroup-manager",
                "cgroupfs",
                "--events-backend",
                "none",
            ]);
        c
    }

    /// Runs `podman ARGS`, panicking with its output (and `extra`) on failure.
    #[track_caller]
    fn ok(&self, args: &[&str], context: &str, extra: impl FnOnce() -> String) -> Output {
        let o = run(self.cmd().args(args), CMD_TIMEOUT);
        assert!(o.success(), "{context}: podman failed\n{o}\n{}", extra());
        o
    }

    /// `podman pull REF` with the trust policy of its own.
    #[track_caller]
    fn pull(&self, reference: &str, context: &str, extra: impl FnOnce() -> String) -> Output {
        let policy = self.dir.path().join("policy.json");
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

impl Drop for Podman {
    fn drop(&mut self) {
        unmount_under(self.dir.path());
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
    let p = Podman::new(&pier.host());
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
    let p = Podman::new(&pier.host());
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
