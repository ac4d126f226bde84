//! dockerd (started by hand) with `docker login` against the RBAC example: a developer
//! pushes and pulls, a guest pulls but is denied a push, logged out only the public
//! library can be pulled, a wrong password does not log in.

use std::fs;

use crate::clients_support::*;
use crate::support::*;

/// `docker import`s a fresh tiny rootfs as `reference`.
#[track_caller]
pub fn docker_import(docker: &Dockerd, reference: &str) {
    let dir = temp_dir("docker-rootfs");
    let tar = rootfs_tar(dir.path(), "rootfs");
    docker.ok(
        &[
            "import",
            "--change",
            "CMD [\"/bin/true\"]",
            &tar.display().to_string(),
            reference,
        ],
        &format!("docker import as {reference}"),
    );
}

/// `docker login HOST -u USER -p PASS`.
pub fn docker_login(docker: &Dockerd, host: &str, who: (&str, &str)) -> Output {
    run(
        docker.cmd().args(["login", host, "-u", who.0, "-p", who.1]),
        CMD_TIMEOUT,
    )
}

/// The hosts the docker client's config.json holds credentials for.
fn logged_in_hosts(docker: &Dockerd) -> Vec<String> {
    let path = docker.dir.path().join("config/config.json");
    let Ok(b) = fs::read(&path) else {
        return Vec::new();
    };
    let v: serde_json::Value = serde_json::from_slice(&b).unwrap_or_default();
    v["auths"]
        .as_object()
        .map(|m| m.keys().cloned().collect())
        .unwrap_or_default()
}

#[test]
fn docker_login_push_pull_and_logout_follow_the_roles() {
    let pier = RbacPier::start();
    let host = pier.host();
    let addr = pier.addr;
    let admin = basic(ADMIN);
    let docker = Dockerd::start();
    let lib = TestImage::new("1", 1);
    push_image_as(addr, &admin, "library/x", "1", &lib);

    // Log in with -p, out, and in again with --password-stdin.
    let o = docker_login(&docker, &host, BOB);
    assert!(
        o.success(),
        "docker login as bob\n{o}\n{}",
        pier.log_tail(20)
    );
    assert!(
        o.all().contains("Login Succeeded"),
        "docker login as bob\n{o}"
    );
    assert_eq!(
        logged_in_hosts(&docker),
        std::slice::from_ref(&host),
        "config.json after login"
    );
    docker.ok(&["logout", &host], "docker logout");
    assert!(
        logged_in_hosts(&docker).is_empty(),
        "config.json after logout"
    );
    let o = run_input(
        docker
            .cmd()
            .args(["login", &host, "-u", BOB.0, "--password-stdin"]),
        format!("{}\n", BOB.1).as_bytes(),
        CMD_TIMEOUT,
    );
    assert!(o.success(), "docker login --password-stdin as bob\n{o}");
    assert!(o.all().contains("Login Succeeded"), "{o}");

    // bob (developer) pushes, removes and pulls back.
    let web = format!("{host}/team/web:latest");
    docker_import(&docker, &web);
    let id = docker.image_id(&web);
    let o = docker.ok(&["push", &web], "bob: docker push team/web");
    let digest = pushed_digest(&o);
    assert_eq!(
        manifest_digest_as(addr, &admin, "team/web", "latest"),
        digest,
        "what docker pushed"
    );
    docker.ok(&["rmi", &web], "docker rmi");
    docker.ok(&["pull", &web], "bob: docker pull team/web");
    assert_eq!(docker.image_id(&web), id, "image pulled back by bob");

    // carol (guest) pulls, but her push is denied.
    let o = docker_login(&docker, &host, CAROL);
    assert!(o.success(), "docker login as carol\n{o}");
    let carols = format!("{host}/team/web:carol");
    docker_import(&docker, &carols);
    let o = run(docker.cmd().args(["push", &carols]), CMD_TIMEOUT);
    assert_refused(&o, &["denied"], "carol: docker push team/web:carol");
    // The registry's refusal of a token without the scope carries the authorizer's own
    // reason, remembered from the token endpoint (docker 20.10 prints only the code's
    // text, "denied: requested access to the resource is denied"; the JSON has it all).
    let t = token(addr, Some(CAROL), &["repository:team/web:pull,push"]);
    let r = pier_e2e::http::request(
        addr,
        "POST",
        "/v2/team/web/blobs/uploads/",
        &[("Authorization", &bearer(&t))],
        b"",
    );
    r.expect_status(401, "carol's upload with a pull-only token");
    assert!(
        r.text()
            .contains("carol is guest in project team: push not allowed"),
        "the authorizer's reason in the registry's error\n{r}"
    );
    assert_no_manifest_as(addr, &admin, "team/web", "carol");
    docker.ok(&["rmi", &web], "docker rmi");
    docker.ok(&["pull", &web], "carol: docker pull team/web");
    assert_eq!(docker.image_id(&web), id, "image pulled by carol");

    // Logged out: team is private, library is public.
    docker.ok(&["logout", &host], "docker logout");
    docker.ok(&["rmi", &web], "docker rmi");
    let o = run(docker.cmd().args(["pull", &web]), CMD_TIMEOUT);
    assert_refused(
        &o,
        &["denied", "unauthorized"],
        "anonymous: docker pull team/web",
    );
    let x = format!("{host}/library/x:1");
    docker.ok(&["pull", &x], "anonymous: docker pull library/x");
    assert_eq!(
        docker.image_id(&x),
        lib.config_digest,
        "image ID of library/x (its config digest)"
    );

    // A wrong password does not log in.
    let o = docker_login(&docker, &host, ("bob", "not-bobs"));
    assert_refused(&o, &["unauthorized"], "docker login with a wrong password");
    assert!(
        logged_in_hosts(&docker).is_empty(),
        "config.json after a failed login"
    );
}
