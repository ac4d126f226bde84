//! An edge mirror (E, no access control of its own) of an upstream Pier (U) that requires
//! token auth: E logs in to U as a robot, serves U's private content by the upstream's
//! name (`central/team/secret`), keeps serving it from its cache after U stopped, and
//! with wrong credentials serves nothing it has not cached.

use std::fs;

use pier_e2e::{ACCEPT_MANIFESTS, TestPier, http, sha256_digest};
use tempfile::TempDir;

use crate::clients_support::Skopeo;
use crate::support::{RbacExample, basic, error_message, expect_content, push_image_as};

/// E: a mirror of `upstream` named "central", logging in as `user`/`password`.
fn edge(upstream: &TestPier, user: &str, password: &str) -> (TempDir, TestPier) {
    let dir = TempDir::new().unwrap();
    let cfg = dir.path().join("pier.toml");
    fs::write(
        &cfg,
        format!(
            "[[upstreams]]\nname = \"central\"\nurl = \"{}\"\nusername = {user:?}\npassword = {password:?}\n",
            upstream.url()
        ),
    )
    .unwrap();
    let pier = TestPier::builder().arg("--config").arg(&cfg).start();
    (dir, pier)
}

fn get_manifest(addr: std::net::SocketAddr, repo: &str, reference: &str) -> pier_e2e::Response {
    http::request(
        addr,
        "GET",
        &format!("/v2/{repo}/manifests/{reference}"),
        &[("Accept", ACCEPT_MANIFESTS)],
        b"",
    )
}

#[test]
fn mirror_of_an_authenticated_upstream() {
    // Keep the example's dir: Pier re-reads its users and robots files.
    let u_example = RbacExample::new();
    let mut u = u_example.start();
    let admin = basic("admin", "admin-pass");
    let base = push_image_as(u.addr, &admin, "library/base", "v1");
    let secret = push_image_as(u.addr, &admin, "team/secret", "v1");
    // U is really closed to anonymous clients.
    u.get("/v2/team/secret/manifests/v1")
        .expect_error(401, "UNAUTHORIZED", "anonymous on U");

    let (_e_dir, e) = edge(&u, "robot$ci", "ci-robot-secret");
    // With one upstream and no `default = true`, only the upstream's name reaches it;
    // the plain name is a (missing) local repository.
    get_manifest(e.addr, "team/secret", "v1").expect_status(404, "team/secret is local on E");

    // Raw, anonymous on E (E has no access control).
    expect_content(
        &get_manifest(e.addr, "central/team/secret", "v1"),
        &secret.manifest_digest,
        "central/team/secret through E",
    );
    let blob = http::get(
        e.addr,
        &format!("/v2/central/team/secret/blobs/{}", secret.layer_digest),
    );
    expect_content(
        &blob,
        &secret.layer_digest,
        "a blob of team/secret through E",
    );
    expect_content(
        &get_manifest(e.addr, "central/library/base", "v1"),
        &base.manifest_digest,
        "central/library/base through E",
    );

    // skopeo through E: inspect and a full copy (fills E's cache).
    let sk = Skopeo::new();
    let src = format!("docker://{}/central/team/secret:v1", e.host());
    let out = sk.ok(
        &["inspect", "--tls-verify=false", "--raw", &src],
        "skopeo inspect through E",
    );
    assert_eq!(sha256_digest(out.stdout.as_bytes()), secret.manifest_digest);
    let copy1 = sk.pull_to_oci(&src, "first");
    let blob_path = |dir: &std::path::Path, d: &str| {
        dir.join("blobs/sha256")
            .join(d.trim_start_matches("sha256:"))
    };
    assert_eq!(
        fs::read(blob_path(&copy1, &secret.layer_digest)).unwrap(),
        secret.layer,
        "the layer skopeo copied"
    );

    // With wrong credentials another edge gets nothing from U: U's token endpoint
    // refuses the robot, and E answers 502 UNAVAILABLE saying so (also for the public
    // library, which E would have been allowed to read anonymously).
    let (_bad_dir, bad) = edge(&u, "robot$ci", "wrong-secret");
    let blob_url = format!("/v2/central/team/secret/blobs/{}", secret.layer_digest);
    for (what, r) in [
        (
            "private manifest",
            get_manifest(bad.addr, "central/team/secret", "v1"),
        ),
        (
            "public manifest",
            get_manifest(bad.addr, "central/library/base", "v1"),
        ),
        ("private blob", http::get(bad.addr, &blob_url)),
    ] {
        r.expect_error(
            502,
            "UNAVAILABLE",
            &format!("wrong upstream credentials: {what}"),
        );
        assert!(
            error_message(&r).contains("upstream refused our credentials")
                && error_message(&r).contains("invalid username or password"),
            "{what}: {r}"
        );
    }

    // U stops: E serves from its cache.
    u.stop();
    let out = sk.ok(
        &["inspect", "--tls-verify=false", "--raw", &src],
        "skopeo inspect through E with U down",
    );
    assert_eq!(sha256_digest(out.stdout.as_bytes()), secret.manifest_digest);
    let copy2 = sk.pull_to_oci(&src, "second");
    assert_eq!(
        fs::read(blob_path(&copy2, &secret.layer_digest)).unwrap(),
        secret.layer,
        "the layer from E's cache"
    );
    expect_content(
        &get_manifest(e.addr, "central/library/base", "v1"),
        &base.manifest_digest,
        "central/library/base from E's cache",
    );
    // Never fetched through E: the upstream is needed and down.
    let r = http::get(
        e.addr,
        &format!("/v2/central/library/base/blobs/{}", base.layer_digest),
    );
    r.expect_error(502, "UNAVAILABLE", "an uncached blob with U down");
    assert!(error_message(&r).contains("cannot reach upstream"), "{r}");
}
