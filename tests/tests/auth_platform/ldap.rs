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
    pier_with_directory(&format!("ldap_url = \"{}\"", slapd.url()))
}

/// [`pier_with_ldap`] with `directory` (the `ldap_*` lines of the plugin).
fn pier_with_directory(directory: &str) -> (RbacExample, TestPier) {
    let mut ex = RbacExample::new();
    ex.replace_line(
        "grants = ",
        &format!("grants = [\"log\", \"config\", \"ldap\"]\n{directory}"),
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

/// lena logs in through `pier`, a wrong password is refused.
fn lena_logs_in(pier: &TestPier, how: &str) {
    let t = token(pier.addr, Some(("lena", "lena-pass")), PUSH_APP);
    let c = claims(&t);
    assert_eq!(c["sub"], "lena", "{how}");
    assert_eq!(granted(&c, "team/app"), ["pull", "push"], "{how}");
    token_request(pier.addr, Some(("lena", "wrong")), PUSH_APP).expect_error(
        401,
        "UNAUTHORIZED",
        &format!("lena with a wrong password, {how}"),
    );
}

/// A login that needs the directory fails closed: 503, naming the plugin, saying `why`;
/// the local users still log in.
fn directory_refused(pier: &TestPier, how: &str, why: &str) {
    let r = token_request(pier.addr, Some(("lena", "lena-pass")), PUSH_APP);
    r.expect_error(503, "UNAVAILABLE", how);
    let message = error_message(&r);
    assert!(
        message.starts_with("authorization plugin \"rbac\" failed (unavailable): ")
            && message.contains(why),
        "{how}: {r}"
    );
    let t = token(pier.addr, Some(("alice", "alice-pass")), PUSH_APP);
    assert_eq!(granted(&claims(&t), "team/app"), ["pull", "push"], "{how}");
}

// The password crosses the network only over TLS: ldaps:// and StartTLS against a slapd
// that refuses a simple bind in the clear, its certificate verified against
// `ldap_ca_file`.
#[test]
fn ldaps_and_starttls_bind_over_verified_tls() {
    let slapd = Slapd::start_tls(&[("lena", "lena-pass")]);
    let (_, ca) = slapd.tls.clone().unwrap();
    let ca = ca.display().to_string();

    let (_ex, pier) = pier_with_directory(&format!(
        "ldap_url = \"{}\"\nldap_ca_file = {ca:?}",
        slapd.ldaps_url()
    ));
    lena_logs_in(&pier, "over ldaps://");
    drop(pier);

    let (_ex, pier) = pier_with_directory(&format!(
        "ldap_url = \"{}\"\nldap_starttls = true\nldap_ca_file = {ca:?}",
        slapd.url()
    ));
    lena_logs_in(&pier, "over StartTLS");
    drop(pier);

    // The same directory without TLS: slapd answers confidentialityRequired, the login
    // fails closed (the password was sent in the clear, which is why ldaps:// and
    // StartTLS exist).
    let (_ex, pier) = pier_with_directory(&format!("ldap_url = \"{}\"", slapd.url()));
    directory_refused(
        &pier,
        "plaintext bind to a directory that requires TLS",
        "result code 13",
    );
}

// A directory whose certificate the configured roots do not vouch for is refused before
// any password is sent, and the login fails closed.
#[test]
fn an_untrusted_directory_certificate_fails_closed() {
    let slapd = Slapd::start_tls(&[("lena", "lena-pass")]);
    // The system's roots don't know the test CA.
    let (_ex, pier) = pier_with_directory(&format!("ldap_url = \"{}\"", slapd.ldaps_url()));
    directory_refused(
        &pier,
        "ldaps:// with the system's roots",
        "invalid peer certificate",
    );
    let (_ex, pier) = pier_with_directory(&format!(
        "ldap_url = \"{}\"\nldap_starttls = true",
        slapd.url()
    ));
    directory_refused(
        &pier,
        "StartTLS with the system's roots",
        "invalid peer certificate",
    );
    // Another CA's certificate as ldap_ca_file.
    let other = tempfile::tempdir().unwrap();
    let other_ca = pier_e2e::test_ca(other.path()).ca;
    let (_ex, pier) = pier_with_directory(&format!(
        "ldap_url = \"{}\"\nldap_ca_file = {:?}",
        slapd.ldaps_url(),
        other_ca.display().to_string()
    ));
    directory_refused(
        &pier,
        "ldaps:// with another CA",
        "invalid peer certificate",
    );
}
