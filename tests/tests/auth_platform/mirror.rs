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

/// An edge mirror with access control of its own: mirrored content is authorized like
/// local content (the project of `central/team/secret` is `central`), writes into the
/// mirror stay refused after authorization.
#[test]
fn an_edge_with_access_control_authorizes_mirrored_content() {
    let u_example = RbacExample::new();
    let u = u_example.start();
    let admin = basic("admin", "admin-pass");
    let secret = push_image_as(u.addr, &admin, "team/secret", "v1");

    // E: the example's accounts, a private project `central` (the mirrored names) where
    // carol is a guest, and U as upstream reached as the robot.
    let mut e_example = RbacExample::new();
    let mut toml = e_example.toml.clone();
    toml.push_str(
        "\n[[plugins.config.projects]]\nname = \"central\"\npublic = false\nmembers = { carol = \"guest\" }\n",
    );
    toml.push_str(&format!(
        "\n[[upstreams]]\nname = \"central\"\nurl = \"{}\"\nusername = \"robot$ci\"\npassword = \"ci-robot-secret\"\n",
        u.url()
    ));
    e_example.toml = toml;
    let e = e_example.start();

    // Anonymous: challenged with the mirrored repository's scope, and an anonymous token
    // grants nothing on it.
    let r = get_manifest(e.addr, "central/team/secret", "v1");
    r.expect_error(401, "UNAUTHORIZED", "anonymous on a mirrored private name");
    let challenge = r.header("www-authenticate").unwrap_or_default().to_owned();
    assert!(
        challenge.contains("scope=\"repository:central/team/secret:pull\""),
        "{challenge}"
    );
    let anon = crate::support::token(e.addr, None, "repository:central/team/secret:pull");
    let claims = crate::support::claims(&anon);
    assert!(
        crate::support::granted(&claims, "central/team/secret").is_empty(),
        "{claims}"
    );

    // carol (guest of `central` on E) pulls through the mirror; bob (no role there) can't.
    let carol = basic("carol", "carol-pass");
    expect_content(
        &crate::support::get_manifest_as(e.addr, &carol, "central/team/secret", "v1"),
        &secret.manifest_digest,
        "carol pulls a mirrored manifest",
    );
    expect_content(
        &crate::support::get_blob_as(e.addr, &carol, "central/team/secret", &secret.layer_digest),
        &secret.layer_digest,
        "carol pulls a mirrored blob",
    );
    let bob = basic("bob", "bob-pass");
    crate::support::get_manifest_as(e.addr, &bob, "central/team/secret", "v1").expect_error(
        403,
        "DENIED",
        "bob has no role in central on E",
    );

    // Preheating through the admin listener needs a system administrator, and pulls with
    // that administrator's credentials through the registry listener.
    let warm = "/warm?image=central/team/secret:v1";
    http::request(e.admin_addr, "POST", warm, &[], b"")
        .expect_status(401, "POST /warm without credentials");
    let r = http::request(
        e.admin_addr,
        "POST",
        warm,
        &[("Authorization", admin.as_str())],
        b"",
    );
    r.expect_status(200, "POST /warm as admin");
    assert!(r.text().contains("warm: 1 images"), "{r}");

    // The admin may write anything, but the mirror is read-only: 405 after authorization.
    let r = http::request(
        e.addr,
        "POST",
        "/v2/central/team/secret/blobs/uploads/",
        &[("Authorization", admin.as_str())],
        b"",
    );
    r.expect_error(405, "UNSUPPORTED", "admin writing into the mirror");
}
