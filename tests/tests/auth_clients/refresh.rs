//! Refresh tokens are bound to the credential that minted them: after `pier user passwd`,
//! a robot's secret rotation and a user deleted and created again under the same name
//! (both through the admin API), the refresh tokens issued before mint nothing (`401`,
//! `invalid_token`) while a fresh login works; an unchanged account's keeps working.

use std::net::SocketAddr;
use std::thread::sleep;
use std::time::{Duration, Instant};

use pier_e2e::{Response, http};
use serde_json::{Value, json};

use crate::clients_support::*;
use crate::support::*;

const SCOPE: &str = "repository:team/app:pull,push";

/// The OAuth2 password grant with `access_type=offline`: the refresh token.
#[track_caller]
fn offline_login(addr: SocketAddr, who: (&str, &str)) -> String {
    let v = password_grant(addr, who, SCOPE, true);
    v["refresh_token"]
        .as_str()
        .unwrap_or_else(|| {
            panic!(
                "no refresh_token for {} with access_type=offline: {v}",
                who.0
            )
        })
        .to_owned()
}

/// The OAuth2 refresh grant.
fn refresh_grant(addr: SocketAddr, refresh: &str) -> Response {
    token_post(
        addr,
        &[
            ("grant_type", "refresh_token"),
            ("refresh_token", refresh),
            ("service", "pier"),
            ("client_id", "pier-e2e"),
            ("scope", SCOPE),
        ],
    )
}

/// The refresh grant answers 200 granting `scope`; returns the access token.
#[track_caller]
fn refreshed(addr: SocketAddr, refresh: &str, scope: &str, what: &str) -> String {
    let r = refresh_grant(addr, refresh);
    r.expect_status(200, what);
    let v = r.json();
    assert_eq!(v["scope"], json!(scope), "{what}: {v}");
    v["access_token"]
        .as_str()
        .unwrap_or_else(|| panic!("{what}: no access_token: {v}"))
        .to_owned()
}

/// The refresh grant answers 401 `invalid_token`, saying `why`.
#[track_caller]
fn refused(addr: SocketAddr, refresh: &str, why: &str, what: &str) {
    let r = refresh_grant(addr, refresh);
    r.expect_error(401, "UNAUTHORIZED", what);
    let c = challenge(&r);
    assert!(
        c.contains("error=\"invalid_token\""),
        "{what}: challenge {c}\n{r}"
    );
    assert!(
        r.text().contains(why),
        "{what}: the answer says {why:?}\n{r}"
    );
}

/// A JSON request to the admin API as the example's system admin.
fn admin_api(admin: SocketAddr, method: &str, path: &str, body: Option<Value>) -> Response {
    let data = body.map(|b| b.to_string()).unwrap_or_default();
    http::request(
        admin,
        method,
        path,
        &[
            ("Authorization", &basic(ADMIN)),
            ("Content-Type", "application/json"),
        ],
        data.as_bytes(),
    )
}

/// Polls until `who` can no longer log in (the users file is re-read within a second).
#[track_caller]
fn wait_login_refused(addr: SocketAddr, who: (&str, &str)) {
    let start = Instant::now();
    loop {
        let r = token_get(addr, Some(who), &[]);
        if r.status == 401 {
            return;
        }
        assert!(
            start.elapsed() < Duration::from_secs(15),
            "{} still logs in 15 s after the account was deleted\n{r}",
            who.0
        );
        sleep(Duration::from_millis(100));
    }
}

#[test]
fn refresh_tokens_end_when_the_password_or_secret_changes_or_the_account_is_re_created() {
    let pier = RbacPier::start();
    let (addr, admin) = (pier.addr, pier.admin_addr);
    let img = TestImage::new("1", 1);
    push_image_as(addr, &basic(ADMIN), "team/app", "1", &img);

    let bob = offline_login(addr, BOB);
    let alice = offline_login(addr, ALICE);
    let robot = offline_login(addr, ROBOT_CI);
    let carol = offline_login(addr, CAROL);
    // Before any change every refresh token mints access tokens, push included.
    let t = refreshed(addr, &bob, SCOPE, "bob's refresh token");
    push_image_as(addr, &bearer(&t), "team/app", "2", &TestImage::new("2", 1));
    refreshed(addr, &alice, SCOPE, "alice's refresh token");
    let pull = "repository:team/app:pull";
    refreshed(addr, &robot, pull, "robot$ci's refresh token");
    refreshed(addr, &carol, pull, "carol's refresh token");

    // (a) `pier user passwd bob`: the old refresh token is refused, a fresh login works
    // and its refresh token does.
    let new_bob = ("bob", "bob-pass-2");
    pier.cli(
        &["user", "passwd", "bob", "--password-stdin"],
        format!("{}\n", new_bob.1).as_bytes(),
    );
    wait_login_accepted(addr, new_bob);
    refused(
        addr,
        &bob,
        "changed",
        "bob's refresh token after pier user passwd",
    );
    token_get(addr, Some(BOB), &[]).expect_status(401, "bob's old password");
    let bob2 = offline_login(addr, new_bob);
    let t = refreshed(
        addr,
        &bob2,
        SCOPE,
        "bob's refresh token from the new password",
    );
    push_image_as(addr, &bearer(&t), "team/app", "3", &TestImage::new("3", 1));

    // (b) robot$ci's secret rotated through the admin API.
    let r = admin_api(admin, "POST", "/api/v1/robots/ci/secret", None);
    r.expect_status(200, "rotate robot$ci's secret");
    let secret = r.json()["secret"]
        .as_str()
        .expect("the new secret")
        .to_owned();
    let new_robot = ("robot$ci", secret.as_str());
    wait_login_accepted(addr, new_robot);
    refused(
        addr,
        &robot,
        "changed",
        "robot$ci's refresh token after a rotation",
    );
    let robot2 = offline_login(addr, new_robot);
    refreshed(
        addr,
        &robot2,
        pull,
        "robot$ci's refresh token from the new secret",
    );

    // (c) alice deleted and created again with the same name and even the same password:
    // a new account, which the old refresh token does not speak for.
    admin_api(admin, "DELETE", "/api/v1/users/alice", None).expect_status(204, "delete alice");
    wait_login_refused(addr, ALICE);
    refused(
        addr,
        &alice,
        "no longer exists",
        "alice's refresh token once deleted",
    );
    admin_api(
        admin,
        "POST",
        "/api/v1/users",
        Some(json!({"name": ALICE.0, "password": ALICE.1})),
    )
    .expect_status(201, "create alice again");
    wait_login_accepted(addr, ALICE);
    refused(
        addr,
        &alice,
        "changed",
        "alice's refresh token after re-creation",
    );
    let alice2 = offline_login(addr, ALICE);
    refreshed(addr, &alice2, SCOPE, "the new alice's refresh token");

    // Control: carol's account did not change; her refresh token still works.
    let t = refreshed(addr, &carol, pull, "carol's refresh token at the end");
    manifest_as(addr, &bearer(&t), "team/app", "1").expect_status(200, "carol pulls");
}
