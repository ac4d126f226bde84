//! "Last push" and "last pull" of each tag in the admin API's tag list
//! (`GET /api/v1/repositories/{name}/-/tags`, fields `lastPush` and `lastPull`): a pushed
//! tag has a push time and no pull; a HEAD is not a pull; a GET by tag, or by the digest
//! the tag points at, is one and shows at once (no wait for the background flush); the
//! pulls survive a graceful restart (flushed at shutdown) and a SIGKILL after the flush
//! interval (flushed in the background).
//!
//! Needs the binary (`cargo build -p pier-server`); then
//! `cargo test -p pier-e2e --test admin_activity`.

use std::time::Duration;

use pier_e2e::{TestPier, get_manifest, http, push_image};
use serde_json::Value;

const REPO: &str = "team/app";

/// The tag list's entry for `tag`.
#[track_caller]
fn tag_info(pier: &TestPier, tag: &str) -> Value {
    let path = format!("/api/v1/repositories/{REPO}/-/tags");
    let r = http::request(pier.admin_addr, "GET", &path, &[], b"");
    r.expect_status(200, &format!("GET {path}"));
    let page = r.json();
    page["tags"]
        .as_array()
        .expect("a tags array")
        .iter()
        .find(|t| t["name"] == tag)
        .unwrap_or_else(|| panic!("no tag {tag} in {page}"))
        .clone()
}

/// `2026-11-28T04:05:06Z`: RFC 3339 in UTC, to the second.
#[track_caller]
fn time(v: &Value, what: &str) -> String {
    let s = v
        .as_str()
        .unwrap_or_else(|| panic!("{what}: not a time: {v}"));
    let b = s.as_bytes();
    assert!(
        s.len() == 20 && b[4] == b'-' && b[10] == b'T' && b[13] == b':' && s.ends_with('Z'),
        "{what}: not RFC 3339 UTC: {s}"
    );
    s.to_owned()
}

#[test]
fn tags_show_their_last_push_and_last_pull() {
    let mut pier = TestPier::start();
    push_image(pier.addr, REPO, Some("v1"), &[b"layer one"]);
    let v2 = push_image(pier.addr, REPO, Some("v2"), &[b"layer two"]);

    let t = tag_info(&pier, "v1");
    let pushed = time(&t["lastPush"], "v1 lastPush after the push");
    assert!(t["lastPull"].is_null(), "never pulled: {t}");

    // A HEAD checks, it does not pull.
    http::request(
        pier.addr,
        "HEAD",
        &format!("/v2/{REPO}/manifests/v1"),
        &[],
        b"",
    )
    .expect_status(200, "HEAD v1");
    assert!(
        tag_info(&pier, "v1")["lastPull"].is_null(),
        "a HEAD is no pull"
    );

    // By tag: shown at once.
    get_manifest(pier.addr, REPO, "v1").expect_status(200, "pull v1 by tag");
    let t = tag_info(&pier, "v1");
    let pulled = time(&t["lastPull"], "v1 lastPull after a pull");
    assert!(pulled >= pushed, "pulled {pulled} before pushed {pushed}");
    assert_eq!(
        time(&t["lastPush"], "v1 lastPush"),
        pushed,
        "a pull is no push"
    );
    assert!(tag_info(&pier, "v2")["lastPull"].is_null(), "v2 not pulled");

    // By the digest the tag points at (as containerd pulls).
    get_manifest(pier.addr, REPO, &v2.digest).expect_status(200, "pull v2 by digest");
    let v2_pulled = time(&tag_info(&pier, "v2")["lastPull"], "v2 lastPull");

    // A graceful restart writes the pulls out.
    pier.restart();
    let t = tag_info(&pier, "v1");
    assert_eq!(time(&t["lastPull"], "v1 lastPull after restart"), pulled);
    assert_eq!(time(&t["lastPush"], "v1 lastPush after restart"), pushed);
    assert_eq!(
        time(
            &tag_info(&pier, "v2")["lastPull"],
            "v2 lastPull after restart"
        ),
        v2_pulled
    );

    // A crash after the flush interval (5 s) loses nothing either.
    push_image(pier.addr, REPO, Some("v3"), &[b"layer three"]);
    get_manifest(pier.addr, REPO, "v3").expect_status(200, "pull v3 by tag");
    let v3_pulled = time(&tag_info(&pier, "v3")["lastPull"], "v3 lastPull");
    std::thread::sleep(Duration::from_secs(7));
    pier.kill9();
    pier.start_again();
    assert_eq!(
        time(
            &tag_info(&pier, "v3")["lastPull"],
            "v3 lastPull after a crash"
        ),
        v3_pulled
    );
    assert_eq!(
        time(
            &tag_info(&pier, "v1")["lastPull"],
            "v1 lastPull after a crash"
        ),
        pulled
    );
}
