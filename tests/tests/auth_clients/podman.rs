//! podman (isolated storage, auth file and blob-info cache) with `podman login` against
//! the RBAC example: a project admin pushes and pulls, a guest is denied a push.

use std::fs;
use std::path::PathBuf;
use std::process::Command;

use tempfile::TempDir;

use crate::clients_support::*;
use crate::support::*;

/// podman (as root) with storage, tmp dir, HOME, `containers.conf`, `storage.conf`,
/// trust policy, auth file and an empty `registries.conf` of its own; its blob-info cache
/// hidden like [`Skopeo`]'s. Whatever it left mounted under its dir is unmounted on drop.
struct Podman {
    dir: TempDir,
    bin: PathBuf,
    unshare: Option<PathBuf>,
}

impl Podman {
    #[track_caller]
    fn new() -> Podman {
        let bin = require_bin("podman");
        // Short: podman refuses a runroot path longer than 50 characters.
        let dir = temp_dir("pod");
        let d = dir.path();
        for sub in [
            "root",
            "runroot",
            "tmp",
            "run",
            "networks",
            "cache",
            "home/.config/containers/registries.d",
        ] {
            fs::create_dir_all(d.join(sub)).unwrap();
        }
        let policy = r#"{"default":[{"type":"insecureAcceptAnything"}]}"#;
        fs::write(d.join("policy.json"), policy).unwrap();
        fs::write(d.join("home/.config/containers/policy.json"), policy).unwrap();
        fs::write(
            d.join("registries.conf"),
            "unqualified-search-registries = []\n",
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

    fn run(&self, args: &[&str]) -> Output {
        run(self.cmd().args(args), CMD_TIMEOUT)
    }

    #[track_caller]
    fn ok(&self, args: &[&str], context: &str) -> Output {
        let o = self.run(args);
        assert!(o.success(), "{context}: podman failed\n{o}");
        o
    }

    #[track_caller]
    fn login(&self, host: &str, who: (&str, &str)) {
        let o = self.ok(
            &[
                "login",
                "--tls-verify=false",
                "-u",
                who.0,
                "-p",
                who.1,
                host,
            ],
            &format!("podman login as {}", who.0),
        );
        assert!(o.all().contains("Login Succeeded"), "{o}");
    }

    fn push(&self, reference: &str) -> Output {
        self.run(&["push", "--tls-verify=false", reference])
    }

    #[track_caller]
    fn pull(&self, reference: &str, context: &str) -> Output {
        let policy = self.dir.path().join("policy.json").display().to_string();
        self.ok(
            &[
                "pull",
                "--tls-verify=false",
                "--signature-policy",
                &policy,
                reference,
            ],
            context,
        )
    }

    #[track_caller]
    fn image_id(&self, reference: &str) -> String {
        self.ok(
            &["image", "inspect", "--format", "{{.Id}}", reference],
            "podman image inspect",
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

#[test]
fn podman_login_push_pull_follow_the_roles() {
    let pier = RbacPier::start();
    let host = pier.host();
    let addr = pier.addr;
    let admin = basic(ADMIN);
    let p = Podman::new();

    // alice (project-admin) pushes, removes and pulls back.
    p.login(&host, ALICE);
    let pod = format!("{host}/team/pod:v1");
    let tar = rootfs_tar(p.dir.path(), "rootfs");
    p.ok(
        &["import", &tar.display().to_string(), &pod],
        "podman import",
    );
    let id = p.image_id(&pod);
    let o = p.push(&pod);
    assert!(
        o.success(),
        "alice: podman push team/pod\n{o}\n{}",
        pier.log_tail(20)
    );
    let r = manifest_as(addr, &admin, "team/pod", "v1");
    r.expect_status(200, "the manifest podman pushed");
    p.ok(&["rmi", &pod], "podman rmi");
    p.pull(&pod, "alice: podman pull team/pod");
    assert_eq!(p.image_id(&pod), id, "image pulled back by alice");

    // carol (guest) pulls, but her push is refused.
    p.login(&host, CAROL);
    let carols = format!("{host}/team/pod:carol");
    p.ok(&["tag", &pod, &carols], "podman tag");
    let o = p.push(&carols);
    assert_refused(
        &o,
        &["denied", "unauthorized"],
        "carol: podman push team/pod:carol",
    );
    assert_no_manifest_as(addr, &admin, "team/pod", "carol");
    p.ok(&["rmi", &pod, &carols], "podman rmi");
    p.pull(&pod, "carol: podman pull team/pod");
    assert_eq!(p.image_id(&pod), id, "image pulled by carol");
}
