//! Replication rules through the admin API, end to end: site A runs the `replicate`
//! plugin (world `managed-replicator`, `kv` granted) with no rules in its TOML and a
//! target pointing at site B. A rule added with `PUT /api/v1/replication/rules/{name}`
//! replicates the next push at once; once deleted, pushes are not replicated; the
//! rules survive a restart of A; `pier replication rules|set-rule|delete-rule` reads and
//! changes the same rules.
//!
//! Needs the binary (`cargo build -p pier-server`) and the wasm32-wasip2 target; then
//! `cargo test -p pier-e2e --test admin_rules`.

#[allow(dead_code)]
#[path = "events/support.rs"]
mod support;

use std::time::Duration;

use pier_e2e::{http, push_image, random_bytes};
use serde_json::{Value, json};

use crate::support::*;

fn rules(site: &pier_e2e::TestPier) -> Vec<Value> {
    admin_json(site, "/api/v1/replication/rules")["rules"]
        .as_array()
        .cloned()
        .unwrap_or_default()
}

#[test]
fn rules_added_through_the_api_replicate_at_once_and_persist() {
    let b = start_site("");
    let mut config = base_config("", &[("x", b.url())]);
    // No rules in the TOML: the API adds them.
    config.push_str(&replicator("replicate", &[]));
    let mut a = start_site(&config);
    assert!(rules(&a).is_empty(), "no rules yet");
    // A push before the rule: no job, and the plugin's warm instance has read the
    // (empty) rules, so the rule below is only seen if Pier replaces that instance.
    let layer = random_bytes(2048);
    push_image(a.addr, "apps/x", Some("v0"), &[&layer]);
    std::thread::sleep(Duration::from_secs(1));
    assert!(find_job(&jobs(&a), "x", "apps/x", "v0").is_none());

    let rule = json!({
        "source": {"project": "apps"},
        "target": "x",
        "trigger": "event",
    });
    let r = http::request(
        a.admin_addr,
        "PUT",
        "/api/v1/replication/rules/apps-to-x",
        &[("content-type", "application/json")],
        rule.to_string().as_bytes(),
    );
    r.expect_status(200, "PUT the rule");
    let stored = r.json();
    assert_eq!(stored["name"], "apps-to-x");
    assert_eq!(stored["plugin"], "replicate");
    assert_eq!(stored["destination"], "{repository}");
    assert_eq!(stored["direction"], "push");

    // A rule that can not work is refused like in the TOML.
    let bad = json!({"source": {"project": "apps"}, "target": "x", "trigger": "event", "direction": "pull"});
    http::request(
        a.admin_addr,
        "PUT",
        "/api/v1/replication/rules/bad",
        &[("content-type", "application/json")],
        bad.to_string().as_bytes(),
    )
    .expect_status(400, "a pull rule driven by events");
    http::request(
        a.admin_addr,
        "PUT",
        "/api/v1/replication/rules/50%25off",
        &[("content-type", "application/json")],
        rule.to_string().as_bytes(),
    )
    .expect_status(400, "a rule name with '%'");

    let pushed = push_image(a.addr, "apps/x", Some("v1"), &[&layer]);
    wait_succeeded(&a, "x", "apps/x", "v1", Duration::from_secs(60));
    assert_eq!(
        manifest_digest(b.addr, "apps/x", "v1").as_deref(),
        Some(pushed.digest.as_str()),
        "replicated to B"
    );

    // Persisted: the same list after a restart.
    let before = rules(&a);
    assert_eq!(before.len(), 1);
    a.restart();
    assert_eq!(rules(&a), before, "the rules survive a restart");

    // The CLI reads and changes the same rules through the API.
    let (ok, out, err) = cli(&a, &["replication", "rules"]);
    assert!(ok, "{err}");
    assert!(
        out.lines()
            .any(|l| l
                == "apps-to-x\treplicate\tproject:apps\t*\tx\t{repository}\tevent\tpush\tfalse"),
        "{out}"
    );
    let (ok, out, err) = cli(
        &a,
        &[
            "replication",
            "set-rule",
            "mirror-base",
            "--repository",
            "library/base",
            "--to",
            "x",
            "--tag",
            "v*",
            "--tag",
            "stable",
            "--destination",
            "edge/base",
            "--every",
            "3600",
            "--pull",
        ],
    );
    assert!(ok, "{out}{err}");
    let listed = rules(&a);
    let added = listed
        .iter()
        .find(|r| r["name"] == "mirror-base")
        .unwrap_or_else(|| panic!("the CLI's rule is listed: {listed:#?}"));
    assert_eq!(added["source"], json!({"repository": "library/base"}));
    assert_eq!(added["tags"], json!(["v*", "stable"]));
    assert_eq!(added["destination"], "edge/base");
    assert_eq!(added["trigger"], json!({"everySecs": 3600}));
    assert_eq!(added["direction"], "pull");
    // The API's refusal reaches the operator.
    let (ok, _, err) = cli(
        &a,
        &[
            "replication",
            "set-rule",
            "bad",
            "--project",
            "apps",
            "--to",
            "x",
            "--pull",
        ],
    );
    assert!(
        !ok && err.contains("HTTP 400"),
        "a pull rule on events: {err}"
    );
    let (ok, out, err) = cli(&a, &["replication", "delete-rule", "mirror-base"]);
    assert!(ok, "{out}{err}");
    assert_eq!(rules(&a), before, "only the CLI's rule is gone");

    // Deleted: the next push makes no job.
    let (ok, out, err) = cli(&a, &["replication", "delete-rule", "apps-to-x"]);
    assert!(ok, "{out}{err}");
    http::request(
        a.admin_addr,
        "DELETE",
        "/api/v1/replication/rules/apps-to-x",
        &[],
        b"",
    )
    .expect_status(404, "DELETE it again");
    assert!(rules(&a).is_empty());
    push_image(a.addr, "apps/x", Some("v2"), &[&layer]);
    std::thread::sleep(Duration::from_secs(3));
    assert!(
        find_job(&jobs(&a), "x", "apps/x", "v2").is_none(),
        "no job after the rule was deleted: {:#?}",
        jobs(&a)
    );
    assert!(manifest_digest(b.addr, "apps/x", "v2").is_none());
    let log = std::fs::read_to_string(a.log_path()).unwrap_or_default();
    assert!(
        log.contains("replication.rule.put") && log.contains("replication.rule.delete"),
        "the changes are audited"
    );
}

/// `pier ARGS --admin URL`: (success, stdout, stderr).
fn cli(site: &pier_e2e::TestPier, args: &[&str]) -> (bool, String, String) {
    pier_e2e::admin_cli(site.admin_addr, args, None)
}

#[test]
fn without_a_managing_replicator_the_api_says_so() {
    // Events off: 409.
    let plain = start_site("");
    http::get(plain.admin_addr, "/api/v1/replication/rules")
        .expect_status(409, "no events, no rules");
    // A replicator without the rules export (hostile-events): 501.
    let site = start_site(&format!(
        "{}{}",
        base_config("", &[]),
        hostile("h", "replicator")
    ));
    http::get(site.admin_addr, "/api/v1/replication/rules")
        .expect_status(501, "a replicator that does not manage rules");
}
