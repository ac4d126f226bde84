//! podman (isolated storage, auth file and blob-info cache) with `podman login` against
//! the RBAC example: a project admin pushes and pulls, a guest is denied a push.

use crate::clients_support::*;
use crate::support::*;

/// podman with an empty `registries.conf` of its own (see [`Podman`]).
#[track_caller]
fn plain_podman() -> Podman {
    Podman::new("unqualified-search-registries = []\n")
}

trait PodmanExt {
    fn ok(&self, args: &[&str], context: &str) -> Output;
    fn login(&self, host: &str, who: (&str, &str));
    fn push(&self, reference: &str) -> Output;
    fn pull(&self, reference: &str, context: &str) -> Output;
    fn image_id(&self, reference: &str) -> String;
}

impl PodmanExt for Podman {
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

#[test]
fn podman_login_push_pull_follow_the_roles() {
    let pier = RbacPier::start();
    let host = pier.host();
    let addr = pier.addr;
    let admin = basic(ADMIN);
    let p = plain_podman();

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
