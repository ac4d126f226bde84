//! Logins verified by the RBAC plugin with an LDAP simple bind against a real slapd, and
//! what happens when the directory goes away.

use pier_e2e::{TestPier, http};

use crate::support::{
    RbacExample, Slapd, basic, bearer, claims, error_message, granted, push_image_as, token,
    token_request,
};

/// The rbac example with the `ldap` grant, the directory, `ldap.user_dn`, and lena as a
/// developer of team.
fn pier_with_ldap(slapd: &Slapd) -> (RbacExample, TestPier) {
    let mut ex = RbacExample::new();
    ex.replace_line(
        "grants = ",
        &format!(
            "grants = [\"log\", \"config\", \"ldap\"]\nldap_url = \"{}\"",
            slapd.url()
        ),
    )
    .insert_after(
        "system_admins = [\"admin\"]",
        "ldap = { user_dn = \"uid={username},ou=people,dc=pier,dc=test\" }",
    )
    .replace_line(
        "members = ",
        "members = { alice = \"project-admin\", bob = \"developer\", carol = \"guest\", lena = \"developer\" }",
    );
    let pier = ex.start();
    (ex, pier)
}

const PUSH_APP: &str = "repository:team/app:pull,push";

#[test]
fn ldap_users_log_in_and_a_directory_outage_fails_closed() {
    let mut slapd = Slapd::start(&[("lena", "lena-pass"), ("mia", "mia-pass")]);
    assert!(
        !slapd.whoami("lena", "wrong"),
        "slapd refuses a wrong password"
    );
    let (_ex, pier) = pier_with_ldap(&slapd);

    // lena: verified by the directory, developer of team.
    let t = token(pier.addr, Some(("lena", "lena-pass")), PUSH_APP);
    let c = claims(&t);
    assert_eq!(c["sub"], "lena");
    assert_eq!(granted(&c, "team/app"), ["pull", "push"]);
    let pushed = push_image_as(pier.addr, &bearer(&t), "team/app", "v1");
    // The OAuth2 form says the granted scope too.
    let r = http::request(
        pier.addr,
        "POST",
        "/auth/token",
        &[("Content-Type", "application/x-www-form-urlencoded")],
        format!(
            "grant_type=password&service=pier&username=lena&password=lena-pass&scope={PUSH_APP}"
        )
        .as_bytes(),
    );
    r.expect_status(200, "password grant for lena");
    assert_eq!(r.json()["scope"], PUSH_APP, "{r}");
    // Basic auth on the registry works the same way.
    let m = http::request(
        pier.addr,
        "GET",
        "/v2/team/app/manifests/v1",
        &[
            ("Authorization", &basic("lena", "lena-pass")),
            ("Accept", pier_e2e::ACCEPT_MANIFESTS),
        ],
        b"",
    );
    m.expect_status(200, "lena with Basic auth");
    assert_eq!(pier_e2e::sha256_digest(&m.body), pushed.manifest_digest);

    // A wrong password: the bind is refused, the local users don't know lena.
    token_request(pier.addr, Some(("lena", "wrong")), PUSH_APP).expect_error(
        401,
        "UNAUTHORIZED",
        "lena with a wrong password",
    );
    // mia is in the directory but no member of team: logged in, granted nothing there.
    let t = token(pier.addr, Some(("mia", "mia-pass")), PUSH_APP);
    assert_eq!(claims(&t)["sub"], "mia");
    assert!(granted(&claims(&t), "team/app").is_empty());
    // A name that would change the DN is refused without asking the directory.
    token_request(pier.addr, Some(("lena,ou=people", "lena-pass")), PUSH_APP).expect_error(
        401,
        "UNAUTHORIZED",
        "a DN-injection login name",
    );
    // Local users still log in (the directory refuses the bind, the users file verifies).
    let t = token(pier.addr, Some(("alice", "alice-pass")), PUSH_APP);
    assert_eq!(granted(&claims(&t), "team/app"), ["pull", "push"]);

    // The directory goes away.
    slapd.stop();
    // lena's verified password is remembered for a minute: still in.
    let t = token(pier.addr, Some(("lena", "lena-pass")), PUSH_APP);
    assert_eq!(granted(&claims(&t), "team/app"), ["pull", "push"]);
    // Anything that needs the directory fails closed with 503, naming the plugin.
    for (who, password) in [
        ("lena", "another-wrong"),
        ("mia", "mia-pass-2"),
        ("nobody", "x"),
    ] {
        let r = token_request(pier.addr, Some((who, password)), PUSH_APP);
        r.expect_error(
            503,
            "UNAVAILABLE",
            &format!("{who} with the directory down"),
        );
        r.expect_header("retry-after", "1", who);
        assert!(
            error_message(&r).starts_with("authorization plugin \"rbac\" failed (unavailable): "),
            "{r}"
        );
        let r = http::request(
            pier.addr,
            "GET",
            "/v2/team/app/manifests/v1",
            &[("Authorization", &basic(who, password))],
            b"",
        );
        r.expect_error(
            503,
            "UNAVAILABLE",
            &format!("{who} Basic with the directory down"),
        );
    }
    // Anonymous access needs no directory.
    let t = token(pier.addr, None, "repository:library/x:pull");
    assert_eq!(granted(&claims(&t), "library/x"), ["pull"]);
    // A local user who logged in before the outage is remembered too.
    let t = token(pier.addr, Some(("alice", "alice-pass")), PUSH_APP);
    assert_eq!(granted(&claims(&t), "team/app"), ["pull", "push"]);
    assert_eq!(
        crate::support::log_lines(
            &pier,
            &[
                "authorization failed closed",
                "plugin=rbac",
                "kind=\"unavailable\""
            ]
        )
        .len(),
        6,
        "one log line per login that needed the directory"
    );
    // Each login the directory outage refused counts as `unavailable`.
    assert_eq!(
        crate::support::metric(
            &pier,
            "pier_plugin_errors_total{plugin=\"rbac\",kind=\"unavailable\"}"
        ),
        6.0,
        "each login that needed the directory counts as unavailable"
    );
}

// Local accounts are checked against the users file only, so an LDAP outage doesn't
// lock out the operators who need to log in during it.
#[test]
fn a_local_user_logs_in_while_the_directory_is_down() {
    let mut slapd = Slapd::start(&[("lena", "lena-pass")]);
    let (_ex, pier) = pier_with_ldap(&slapd);
    let t = token(pier.addr, Some(("lena", "lena-pass")), PUSH_APP);
    assert_eq!(granted(&claims(&t), "team/app"), ["pull", "push"]);
    slapd.stop();
    let r = token_request(pier.addr, Some(("bob", "bob-pass")), PUSH_APP);
    r.expect_status(200, "bob (local user) with the directory down");
    assert_eq!(
        granted(&claims(r.json()["token"].as_str().unwrap()), "team/app"),
        ["pull", "push"]
    );
    // And a wrong local password is still refused.
    let r = token_request(pier.addr, Some(("bob", "wrong")), PUSH_APP);
    assert_ne!(r.status, 200, "{r}");
}
