//! skopeo (containers/image) with `--creds` against the RBAC example: each role pushes,
//! copies, inspects and deletes what its role allows, and is refused the rest.

use crate::clients_support::*;
use crate::support::*;

/// Words c/image prints when a registry refuses access.
const REFUSED: &[&str] = &["denied", "unauthorized"];

#[test]
fn skopeo_with_credentials_follows_the_roles() {
    let pier = RbacPier::start();
    let host = pier.host();
    let addr = pier.addr;
    let admin = basic(ADMIN);
    let img = TestImage::new("v1", 2);

    // bob (developer of team) pushes.
    let sk = Skopeo::new();
    let o = skopeo_push(&sk, &host, &img, "team/app:v1", Some(BOB));
    assert!(
        o.success(),
        "bob pushes to team/app\n{o}\n{}",
        pier.log_tail(20)
    );
    assert_has_image_as(addr, &admin, "team/app", "v1", &img);

    // alice (project-admin) copies it to another repository of the project.
    let alice = creds(ALICE);
    let sk_alice = Skopeo::new();
    sk_alice.ok(
        &[
            "copy",
            "--src-tls-verify=false",
            "--dest-tls-verify=false",
            "--src-creds",
            &alice,
            "--dest-creds",
            &alice,
            &format!("docker://{host}/team/app:v1"),
            &format!("docker://{host}/team/app2:v1"),
        ],
        "alice copies team/app to team/app2",
    );
    assert_has_image_as(addr, &admin, "team/app2", "v1", &img);

    // carol (guest) reads but may not push.
    let sk_carol = Skopeo::new();
    let o = skopeo_inspect(&sk_carol, &host, "team/app:v1", Some(CAROL));
    assert_eq!(
        inspected_digest(&o, "carol inspects team/app"),
        img.manifest_digest
    );
    let other = TestImage::new("v2", 1);
    let o = skopeo_push(&sk_carol, &host, &other, "team/x:v2", Some(CAROL));
    assert_refused(&o, REFUSED, "carol pushes to team/x");
    assert_no_manifest_as(addr, &admin, "team/x", "v2");

    // robot$ci (team:pull) reads team, reads the public library, pushes nothing.
    let lib = TestImage::new("1", 1);
    push_image_as(addr, &admin, "library/pub", "1", &lib);
    let sk_robot = Skopeo::new();
    let o = skopeo_inspect(&sk_robot, &host, "team/app:v1", Some(ROBOT_CI));
    assert_eq!(
        inspected_digest(&o, "robot$ci inspects team/app"),
        img.manifest_digest
    );
    let o = skopeo_push(&sk_robot, &host, &other, "team/y:v2", Some(ROBOT_CI));
    assert_refused(&o, REFUSED, "robot$ci pushes to team/y");
    assert_no_manifest_as(addr, &admin, "team/y", "v2");
    // library is public: every robot may pull from it.
    let o = skopeo_inspect(&sk_robot, &host, "library/pub:1", Some(ROBOT_CI));
    assert_eq!(
        inspected_digest(&o, "robot$ci inspects library/pub"),
        lib.manifest_digest
    );

    // Anonymous: the public library only.
    let sk_anon = Skopeo::new();
    let o = skopeo_inspect(&sk_anon, &host, "library/pub:1", None);
    assert_eq!(
        inspected_digest(&o, "anonymous inspects library/pub"),
        lib.manifest_digest
    );
    let o = skopeo_inspect(&sk_anon, &host, "team/app:v1", None);
    assert_refused(&o, REFUSED, "anonymous inspects team/app");

    // A wrong password is an authentication error, not a missing image.
    let o = skopeo_inspect(&sk_anon, &host, "team/app:v1", Some(("bob", "not-bobs")));
    assert_refused(
        &o,
        &["unauthorized", "invalid username/password"],
        "bob with a wrong password inspects team/app",
    );

    // Delete: bob (developer) may not, alice (project-admin) may.
    let target = format!("docker://{host}/team/app:v1");
    let bob = creds(BOB);
    let o = sk.run(&["delete", "--tls-verify=false", "--creds", &bob, &target]);
    assert_refused(&o, REFUSED, "bob deletes team/app:v1");
    assert_has_image_as(addr, &admin, "team/app", "v1", &img);
    sk_alice.ok(
        &["delete", "--tls-verify=false", "--creds", &alice, &target],
        "alice deletes team/app:v1",
    );
    // Gone, seen with an admin token; the copy in team/app2 stays.
    let t = token(addr, Some(ADMIN), &["repository:team/app:pull"]);
    assert_no_manifest_as(addr, &bearer(&t), "team/app", &img.manifest_digest);
    assert_no_manifest_as(addr, &bearer(&t), "team/app", "v1");
    assert_has_image_as(addr, &admin, "team/app2", "v1", &img);
}
