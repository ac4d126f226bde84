//! Accounts made with the CLI while Pier runs: a robot with push rights and a short
//! lifetime pushes with skopeo, then can no longer log in; a new user without a role
//! pulls the public library but not the private project.

use std::thread::sleep;
use std::time::Duration;

use serde_json::{Value, json};

use crate::clients_support::*;
use crate::support::*;

#[test]
fn robot_made_with_the_cli_pushes_until_it_expires() {
    let pier = RbacPier::start();
    let host = pier.host();
    let addr = pier.addr;
    let admin = basic(ADMIN);

    let out = pier.cli(
        &[
            "robot",
            "add",
            "deployer",
            "--permission",
            "team:pull,push",
            // Stored as whole seconds (floor(now) + N) and seen by the server within a
            // second: 5 s leaves the login and the push a margin on a loaded machine.
            "--expires-in",
            "5s",
        ],
        b"",
    );
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(lines.len(), 2, "pier robot add prints two lines:\n{out}");
    assert!(lines[0].contains("robot$deployer"), "{out}");
    let secret = lines[1].trim().to_owned();
    assert!(!secret.is_empty(), "{out}");
    let robots: Value =
        serde_json::from_slice(&std::fs::read(pier.robots_file()).unwrap()).unwrap();
    let expires_at = robots["robots"]
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["name"] == "deployer")
        .and_then(|r| r["expires_at"].as_u64())
        .unwrap_or_else(|| panic!("deployer with an expires_at in robots.json: {robots}"));
    let deployer = ("robot$deployer", secret.as_str());

    // The running server picks the new robot up; it gets exactly its permissions.
    wait_login_accepted(addr, deployer);
    let v = password_grant(
        addr,
        deployer,
        "repository:team/app:pull,push,delete repository:other/x:pull",
        false,
    );
    assert_eq!(v["scope"], json!("repository:team/app:pull,push"), "{v}");

    let sk = Skopeo::new();
    let img = TestImage::new("v1", 1);
    let o = skopeo_push(&sk, &host, &img, "team/app:v1", Some(deployer));
    assert!(
        o.success(),
        "robot$deployer pushes to team/app\n{o}\n{}",
        pier.log_tail(20)
    );
    assert_has_image_as(addr, &admin, "team/app", "v1", &img);

    // Expired: no new token.
    while now_secs() <= expires_at {
        sleep(Duration::from_millis(200));
    }
    sleep(Duration::from_secs(1));
    let listed = pier.cli(&["robot", "list"], b"");
    assert!(
        listed
            .lines()
            .any(|l| l.starts_with("robot$deployer") && l.contains("expired")),
        "pier robot list shows deployer expired:\n{listed}"
    );
    // A login remembered from before the expiry must not outlive it (the robots file
    // doesn't change when a robot expires).
    let r = token_get(addr, Some(deployer), &["repository:team/app:pull,push"]);
    r.expect_error(401, "UNAUTHORIZED", "token for the expired robot (GET)");
    let r = token_post(
        addr,
        &[
            ("grant_type", "password"),
            ("username", deployer.0),
            ("password", deployer.1),
            ("service", "pier"),
            ("scope", "repository:team/app:pull"),
        ],
    );
    r.expect_error(401, "UNAUTHORIZED", "token for the expired robot (POST)");
    let o = skopeo_inspect(&sk, &host, "team/app:v1", Some(deployer));
    assert_refused(
        &o,
        &["unauthorized", "invalid username/password"],
        "the expired robot inspects team/app",
    );
}

#[test]
fn user_added_with_the_cli_without_a_role_pulls_only_public_projects() {
    let pier = RbacPier::start();
    let host = pier.host();
    let addr = pier.addr;
    let admin = basic(ADMIN);
    let lib = TestImage::new("1", 1);
    push_image_as(addr, &admin, "library/pub", "1", &lib);
    let team = TestImage::new("1", 1);
    push_image_as(addr, &admin, "team/app", "1", &team);

    let dave = ("dave", "dave-pass-1");
    let out = pier.cli(
        &["user", "add", "dave", "--password-stdin"],
        format!("{}\n", dave.1).as_bytes(),
    );
    assert!(out.contains("dave"), "{out}");
    let listed = pier.cli(&["user", "list"], b"");
    assert!(listed.lines().any(|l| l.trim() == "dave"), "{listed}");

    wait_login_accepted(addr, dave);
    let v = password_grant(
        addr,
        dave,
        "repository:library/pub:pull,push repository:team/app:pull",
        false,
    );
    assert_eq!(v["scope"], json!("repository:library/pub:pull"), "{v}");

    let sk = Skopeo::new();
    let o = skopeo_inspect(&sk, &host, "library/pub:1", Some(dave));
    assert_eq!(
        inspected_digest(&o, "dave inspects library/pub"),
        lib.manifest_digest
    );
    let o = skopeo_inspect(&sk, &host, "team/app:1", Some(dave));
    assert_refused(&o, &["denied", "unauthorized"], "dave inspects team/app");
    let o = skopeo_push(
        &sk,
        &host,
        &TestImage::new("2", 1),
        "library/pub:2",
        Some(dave),
    );
    assert_refused(
        &o,
        &["denied", "unauthorized"],
        "dave pushes to library/pub",
    );
    assert_no_manifest_as(addr, &admin, "library/pub", "2");
    // With Basic: the plugin's reason.
    let r = manifest_as(addr, &basic(dave), "team/app", "1");
    r.expect_error(403, "DENIED", "dave with Basic on team/app");
    assert!(
        r.text()
            .contains("dave is not a member of private project team"),
        "{r}"
    );
}
