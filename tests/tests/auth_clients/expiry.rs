//! Access tokens that expire (`token_ttl = "2s"`): an expired token is an
//! `invalid_token`, a new one works; a refresh token (offline access) gets a working
//! access token after the first expired; docker, logged in, pulls again past the TTL.

use std::thread::sleep;
use std::time::Duration;

use serde_json::json;

use crate::clients_support::*;
use crate::docker::docker_login;
use crate::support::*;

/// Longer than the 2 s TTL, whatever second the token was issued in.
const PAST_TTL: Duration = Duration::from_secs(3);

#[test]
fn expired_tokens_are_refused_and_replaced() {
    let pier = RbacPier::start_with_ttl(Some("2s"));
    let addr = pier.addr;
    let img = TestImage::new("1", 1);
    push_image_as(addr, &basic(ADMIN), "team/app", "1", &img);
    let scope = "repository:team/app:pull";

    // GET token, use it, let it expire, get another.
    let r = token_get(addr, Some(CAROL), &[scope]);
    r.expect_status(200, "carol's token");
    assert_eq!(
        r.json()["expires_in"],
        json!(2),
        "expires_in is the TTL\n{r}"
    );
    let t = token(addr, Some(CAROL), &[scope]);
    manifest_as(addr, &bearer(&t), "team/app", "1").expect_status(200, "fresh token");
    sleep(PAST_TTL);
    let r = manifest_as(addr, &bearer(&t), "team/app", "1");
    r.expect_error(401, "UNAUTHORIZED", "expired token");
    let c = challenge(&r);
    assert!(c.contains("error=\"invalid_token\""), "challenge: {c}\n{r}");
    assert!(c.contains(&format!("scope=\"{scope}\"")), "challenge: {c}");
    let t = token(addr, Some(CAROL), &[scope]);
    manifest_as(addr, &bearer(&t), "team/app", "1").expect_status(200, "new token");

    // Offline access: a refresh token outlives the access token.
    let v = password_grant(addr, CAROL, scope, true);
    let access = v["access_token"].as_str().expect("access_token").to_owned();
    let refresh = v["refresh_token"]
        .as_str()
        .unwrap_or_else(|| panic!("no refresh_token with access_type=offline: {v}"))
        .to_owned();
    assert_eq!(v["scope"], json!(scope), "{v}");
    manifest_as(addr, &bearer(&access), "team/app", "1").expect_status(200, "access token");
    sleep(PAST_TTL);
    manifest_as(addr, &bearer(&access), "team/app", "1").expect_error(
        401,
        "UNAUTHORIZED",
        "expired access token",
    );
    let r = token_post(
        addr,
        &[
            ("grant_type", "refresh_token"),
            ("refresh_token", &refresh),
            ("service", "pier"),
            ("client_id", "pier-e2e"),
            ("scope", scope),
        ],
    );
    r.expect_status(200, "refresh_token grant");
    let v = r.json();
    assert_eq!(v["scope"], json!(scope), "{v}");
    let renewed = v["access_token"].as_str().expect("access_token");
    manifest_as(addr, &bearer(renewed), "team/app", "1").expect_status(200, "renewed token");
    // The refresh token keeps the subject's rights: no push for carol.
    let r = token_post(
        addr,
        &[
            ("grant_type", "refresh_token"),
            ("refresh_token", &refresh),
            ("service", "pier"),
            ("scope", "repository:team/app:pull,push"),
        ],
    );
    r.expect_status(200, "refresh_token grant asking for push");
    assert_eq!(r.json()["scope"], json!(scope), "{r}");
    // An access token is not a refresh token.
    token_post(
        addr,
        &[
            ("grant_type", "refresh_token"),
            ("refresh_token", renewed),
            ("service", "pier"),
            ("scope", scope),
        ],
    )
    .expect_error(
        401,
        "UNAUTHORIZED",
        "an access token used as a refresh token",
    );
}

#[test]
fn docker_pulls_again_after_its_token_expired() {
    let pier = RbacPier::start_with_ttl(Some("2s"));
    let host = pier.host();
    let img = TestImage::new("latest", 1);
    push_image_as(pier.addr, &basic(BOB), "team/web", "latest", &img);

    let docker = Dockerd::start();
    let o = docker_login(&docker, &host, CAROL);
    assert!(o.success(), "docker login as carol\n{o}");
    let web = format!("{host}/team/web:latest");
    docker.ok(&["pull", &web], "docker pull team/web");
    sleep(PAST_TTL);
    docker.ok(&["rmi", &web], "docker rmi");
    docker.ok(&["pull", &web], "docker pull team/web past the token TTL");
    let id = docker.ok(
        &["image", "inspect", "--format", "{{.Id}}", &web],
        "docker image inspect",
    );
    assert_eq!(id.stdout.trim(), img.config_digest, "image ID");
}
