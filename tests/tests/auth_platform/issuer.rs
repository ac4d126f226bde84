//! An edge Pier (B) that issues no user tokens of its own but trusts a central Pier's (A)
//! signing key: B's challenge sends clients to A, A's tokens work on B (also after A
//! stopped, until they expire), B's own anonymous tokens work, and a third Pier's tokens
//! (even claiming A's issuer name) are refused.

use pier_e2e::TestPier;

use crate::clients_support::Skopeo;
use crate::support::{
    RbacExample, bearer, claims, expect_content, get_blob_as, get_manifest_as, granted,
    public_key_of, push_image_as, token,
};

/// The rbac example as B: issuer "edge", realm at A, A trusted; no users of its own.
fn edge_of(central: &TestPier) -> (RbacExample, TestPier) {
    let mut ex = RbacExample::new();
    ex.issuer("edge")
        .replace_line("users_file = ", "")
        .replace_line("robots_file = ", "")
        .insert_after(
            "[auth]",
            &format!("realm = \"{}/auth/token\"", central.url()),
        );
    // [[auth.trusted_issuers]] must follow the [auth] keys, before [[plugins]].
    let trusted = format!(
        "[[auth.trusted_issuers]]\nissuer = \"central\"\npublic_key = {:?}\n",
        public_key_of(central).display().to_string()
    );
    let at = ex.toml.find("[[plugins]]").expect("[[plugins]]");
    ex.toml.insert_str(at, &format!("{trusted}\n"));
    std::fs::remove_file(ex.dir.path().join("users.htpasswd")).unwrap();
    std::fs::remove_file(ex.dir.path().join("robots.json")).unwrap();
    let pier = ex.start();
    (ex, pier)
}

#[test]
fn edge_accepts_tokens_of_a_trusted_central_issuer() {
    let mut central_ex = RbacExample::new();
    central_ex.issuer("central");
    let mut a = central_ex.start();
    assert!(public_key_of(&a).is_file(), "A wrote its public key");
    let (_edge_ex, b) = edge_of(&a);

    // B's challenge sends clients to A's token endpoint.
    let r = b.get("/v2/team/app/manifests/v1");
    r.expect_error(401, "UNAUTHORIZED", "anonymous request to B");
    assert_eq!(
        r.header("www-authenticate"),
        Some(
            format!(
                "Bearer realm=\"{}/auth/token\",service=\"pier\",scope=\"repository:team/app:pull\"",
                a.url()
            )
            .as_str()
        ),
        "{r}"
    );

    // bob (developer of team) gets a push token from A and pushes to B with it.
    let push = token(
        a.addr,
        Some(("bob", "bob-pass")),
        "repository:team/app:pull,push",
    );
    let c = claims(&push);
    assert_eq!(c["iss"], "central");
    assert_eq!(c["sub"], "bob");
    assert_eq!(granted(&c, "team/app"), ["pull", "push"]);
    let app = push_image_as(b.addr, &bearer(&push), "team/app", "v1");
    expect_content(
        &get_manifest_as(b.addr, &bearer(&push), "team/app", "v1"),
        &app.manifest_digest,
        "pull team/app from B with A's token",
    );
    let blob = get_blob_as(b.addr, &bearer(&push), "team/app", &app.layer_digest);
    expect_content(&blob, &app.layer_digest, "blob from B with A's token");
    assert!(
        !b.root.join("pier/auth/users.htpasswd").exists(),
        "B has no users file"
    );
    // B itself knows no passwords: its own token endpoint refuses bob.
    crate::support::token_request(
        b.addr,
        Some(("bob", "bob-pass")),
        "repository:team/app:pull",
    )
    .expect_error(401, "UNAUTHORIZED", "bob at B's own token endpoint");

    // admin pushes library/base to B with a token from A.
    let admin = token(
        a.addr,
        Some(("admin", "admin-pass")),
        "repository:library/base:pull,push",
    );
    let base = push_image_as(b.addr, &bearer(&admin), "library/base", "v1");

    // A token from A does not reach beyond its scope on B.
    let pull_only = token(
        a.addr,
        Some(("carol", "carol-pass")),
        "repository:team/app:pull,push",
    );
    assert_eq!(
        granted(&claims(&pull_only), "team/app"),
        ["pull"],
        "carol is a guest"
    );
    let r = pier_e2e::http::request(
        b.addr,
        "POST",
        "/v2/team/app/blobs/uploads/",
        &[("Authorization", &bearer(&pull_only))],
        b"",
    );
    r.expect_error(401, "DENIED", "push with a pull-only token");
    assert!(
        r.header("www-authenticate")
            .is_some_and(|h| h.contains("error=\"insufficient_scope\"")),
        "{r}"
    );

    // skopeo follows B's challenge to A with bob's password.
    let sk = Skopeo::new();
    let out = sk.ok(
        &[
            "inspect",
            "--tls-verify=false",
            "--creds",
            "bob:bob-pass",
            "--raw",
            &format!("docker://{}/team/app:v1", b.host()),
        ],
        "skopeo inspect on B with bob's password (token from A)",
    );
    assert_eq!(
        pier_e2e::sha256_digest(out.stdout.as_bytes()),
        app.manifest_digest,
        "skopeo read the pushed manifest"
    );
    let out = sk.run(&[
        "inspect",
        "--tls-verify=false",
        "--creds",
        "bob:wrong",
        "--raw",
        &format!("docker://{}/team/app:v1", b.host()),
    ]);
    assert!(!out.success(), "a wrong password at A fails skopeo\n{out}");

    // A stops; its still-valid token keeps working on B.
    let reader = token(
        a.addr,
        Some(("carol", "carol-pass")),
        "repository:team/app:pull",
    );
    a.stop();
    expect_content(
        &get_manifest_as(b.addr, &bearer(&reader), "team/app", "v1"),
        &app.manifest_digest,
        "A's token on B after A stopped",
    );

    // B's own tokens: anonymous pull of the public library, signed by B.
    let own = token(b.addr, None, "repository:library/base:pull");
    let c = claims(&own);
    assert_eq!(c["iss"], "edge");
    assert_eq!(c["sub"], "");
    assert_eq!(granted(&c, "library/base"), ["pull"]);
    expect_content(
        &get_manifest_as(b.addr, &bearer(&own), "library/base", "v1"),
        &base.manifest_digest,
        "B's anonymous token on B",
    );
    let own_team = token(b.addr, None, "repository:team/app:pull");
    assert!(
        granted(&claims(&own_team), "team/app").is_empty(),
        "B's policy grants anonymous nothing in team"
    );

    // A third Pier calling itself "central", with its own key: not trusted.
    let mut impostor_ex = RbacExample::new();
    impostor_ex.issuer("central");
    let c_pier = impostor_ex.start();
    let forged = token(
        c_pier.addr,
        Some(("admin", "admin-pass")),
        "repository:team/app:pull,push",
    );
    assert_eq!(claims(&forged)["iss"], "central");
    assert_eq!(granted(&claims(&forged), "team/app"), ["pull", "push"]);
    let r = get_manifest_as(b.addr, &bearer(&forged), "team/app", "v1");
    r.expect_error(401, "UNAUTHORIZED", "a token from an untrusted Pier");
    let challenge = r.require_header("www-authenticate", "challenge").to_owned();
    assert!(challenge.contains("error=\"invalid_token\""), "{challenge}");
    let r = pier_e2e::http::request(
        b.addr,
        "POST",
        "/v2/team/app/blobs/uploads/",
        &[("Authorization", &bearer(&forged))],
        b"",
    );
    r.expect_error(
        401,
        "UNAUTHORIZED",
        "push with a token from an untrusted Pier",
    );
}
