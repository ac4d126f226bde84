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

/// `GET /api/v1/history?minutes=5`: (time ms, requests) of each sample.
fn history(pier: &TestPier) -> Vec<(u64, u64)> {
    let r = http::request(
        pier.admin_addr,
        "GET",
        "/api/v1/history?minutes=5",
        &[],
        b"",
    );
    r.expect_status(200, "GET /api/v1/history");
    r.json()["samples"]
        .as_array()
        .expect("a samples array")
        .iter()
        .map(|s| {
            (
                s["timeMs"].as_u64().expect("timeMs"),
                s["requests"].as_u64().expect("requests"),
            )
        })
        .collect()
}

/// Waits until the history has a sample newer than `after_ms`; returns the history.
#[track_caller]
fn history_after(pier: &TestPier, after_ms: u64) -> Vec<(u64, u64)> {
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        let h = history(pier);
        if h.last().is_some_and(|(t, _)| *t > after_ms) {
            return h;
        }
        assert!(std::time::Instant::now() < deadline, "no new sample: {h:?}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64
}

#[test]
fn the_dashboard_history_survives_restarts_and_its_counters_carry_on() {
    let mut pier = TestPier::builder()
        .arg("--history-every")
        .arg("200ms")
        .start();
    for _ in 0..20 {
        http::request(pier.addr, "GET", "/v2/", &[], b"").expect_status(200, "GET /v2/");
    }
    let before = history_after(&pier, now_ms());
    let (last_ms, counted) = *before.last().unwrap();
    assert!(counted >= 20, "the 20 requests are counted: {before:?}");

    // Graceful, then SIGKILL: the samples are still there after each, and the new
    // process's counters continue from the last sample instead of starting at 0.
    pier.restart();
    let mut seen = before;
    for round in 0..2 {
        let after = history_after(&pier, now_ms());
        for s in &seen {
            assert!(
                after.contains(s),
                "round {round}: sample {s:?} lost: {after:?}"
            );
        }
        assert!(
            after
                .windows(2)
                .all(|w| w[0].0 < w[1].0 && w[0].1 <= w[1].1),
            "round {round}: times and counters only grow: {after:?}"
        );
        assert!(after.last().unwrap().0 > last_ms);
        seen = after;
        if round == 0 {
            pier.kill9();
            pier.start_again();
        }
    }
}
