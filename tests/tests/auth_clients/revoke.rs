//! Token revocation (`POST /auth/revoke`, RFC 7009 style): a revoked access token is an
//! `invalid_token` at once, a revoked refresh token mints nothing, other tokens of the same
//! user keep working, and the revocation survives a restart (kill -9) of the gateway.

use crate::clients_support::*;
use crate::support::*;

fn revoke(addr: std::net::SocketAddr, token: &str) -> pier_e2e::http::Response {
    pier_e2e::http::request(
        addr,
        "POST",
        "/auth/revoke",
        &[("Content-Type", "application/x-www-form-urlencoded")],
        format!("token={}", pct(token)).as_bytes(),
    )
}

#[test]
fn revoked_tokens_are_refused_until_they_expire_even_after_a_restart() {
    let mut rb = RbacPier::start();
    let addr = rb.addr;
    let img = TestImage::new("1", 1);
    push_image_as(addr, &basic(ADMIN), "team/app", "1", &img);
    let scope = "repository:team/app:pull";

    let revoked = token(addr, Some(CAROL), &[scope]);
    let kept = token(addr, Some(CAROL), &[scope]);
    assert_ne!(revoked, kept, "two logins give two tokens");
    manifest_as(addr, &bearer(&revoked), "team/app", "1").expect_status(200, "before revoking");

    revoke(addr, &revoked).expect_status(200, "revoke an access token");
    let r = manifest_as(addr, &bearer(&revoked), "team/app", "1");
    r.expect_error(401, "UNAUTHORIZED", "revoked token");
    let c = challenge(&r);
    assert!(c.contains("error=\"invalid_token\""), "challenge: {c}\n{r}");
    assert!(r.text().contains("revoked"), "the error says why\n{r}");
    manifest_as(addr, &bearer(&kept), "team/app", "1").expect_status(200, "another token");

    // RFC 7009: garbage and unknown tokens are answered 200 (nothing to revoke); a request
    // without a token is a client error.
    revoke(addr, "not-a-token").expect_status(200, "revoking garbage");
    pier_e2e::http::request(
        addr,
        "POST",
        "/auth/revoke",
        &[("Content-Type", "application/x-www-form-urlencoded")],
        b"nothing=here",
    )
    .expect_status(400, "revocation without a token");

    // A revoked refresh token mints no access token.
    let v = password_grant(addr, CAROL, scope, true);
    let refresh = v["refresh_token"]
        .as_str()
        .expect("refresh_token")
        .to_owned();
    let grant = |addr, refresh: &str| {
        token_post(
            addr,
            &[
                ("grant_type", "refresh_token"),
                ("refresh_token", refresh),
                ("service", "pier"),
                ("client_id", "pier-e2e"),
                ("scope", scope),
            ],
        )
    };
    grant(addr, &refresh).expect_status(200, "refresh grant before revoking");
    revoke(addr, &refresh).expect_status(200, "revoke a refresh token");
    grant(addr, &refresh).expect_status(401, "refresh grant with a revoked refresh token");

    // kill -9 and start again on the same root and signing key: the kept token is still
    // valid (same key), the revoked ones are still refused.
    rb.pier.kill9();
    let again = pier_e2e::TestPier::builder()
        .arg("--config")
        .arg(&rb.config)
        .root(rb.pier.root.clone())
        .start();
    let addr = again.addr;
    manifest_as(addr, &bearer(&kept), "team/app", "1")
        .expect_status(200, "a token issued before the restart");
    manifest_as(addr, &bearer(&revoked), "team/app", "1").expect_error(
        401,
        "UNAUTHORIZED",
        "a token revoked before the restart",
    );
    grant(addr, &refresh).expect_status(401, "the revoked refresh token after the restart");
}
