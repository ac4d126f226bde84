//! Tag retention (`plugins/retain`): on a project of 50 tags the dry run lists exactly
//! what the rules say, the run deletes it (one audit line each; an immutable tag stays),
//! and a garbage collection reclaims the bytes.

use std::collections::BTreeSet;
use std::fs;
use std::time::Duration;

use pier_e2e::{TestPier, http, plugins, push_image};
use serde_json::Value;

use crate::clients_support::*;
use crate::support::blob_data_path;

fn admin(pier: &TestPier, method: &str, path: &str) -> Value {
    let r = http::request(pier.admin_addr, method, path, &[], b"");
    r.expect_status(200, &format!("{method} {path}"));
    r.json()
}

fn tags(pier: &TestPier) -> BTreeSet<String> {
    let r = http::request(pier.addr, "GET", "/v2/team/app/tags/list", &[], b"");
    r.expect_status(200, "tag list");
    r.json()["tags"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t.as_str().unwrap().to_owned())
        .collect()
}

fn removed(report: &Value) -> BTreeSet<String> {
    report["removals"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["tag"].as_str().unwrap().to_owned())
        .collect()
}

#[test]
fn retention_plans_deletes_with_audit_lines_and_gc_reclaims_the_bytes() {
    let dir = temp_dir("retention");
    let config = dir.path().join("pier.toml");
    let built = plugins::build();
    fs::write(
        &config,
        format!(
            r#"
[[plugins]]
name = "retain"
hook = "retention"
path = "{}"
grants = ["config", "log"]

[plugins.config]
rules = [
  {{ name = "recent", projects = ["team"], keep_last_pushed = 10 }},
  {{ name = "releases", projects = ["team"], tags = ["v*"], keep_always = true }},
]

[[plugins]]
name = "immutable"
hook = "admission"
path = "{}"
grants = ["config"]

[plugins.config]
rules = [{{ name = "pinned", projects = ["team"], tags = ["keep-*"] }}]
"#,
            built.retain.display(),
            built.immutable.display()
        ),
    )
    .unwrap();
    let pier = TestPier::builder().arg("--config").arg(&config).start();
    let a = pier.addr;

    // 50 tags, oldest first: keep-me, v1, v2, t00 .. t46; each its own image.
    let mut order: Vec<String> = vec!["keep-me".into(), "v1".into(), "v2".into()];
    order.extend((0..47).map(|i| format!("t{i:02}")));
    let mut images = std::collections::BTreeMap::new();
    for t in &order {
        let layer = gzip(&unique_bytes(4096));
        images.insert(t.clone(), push_image(a, "team/app", Some(t), &[&layer]));
        // Tags are dated by the storage: keep their push times apart.
        std::thread::sleep(Duration::from_millis(20));
    }
    // Another project: no rule there.
    push_image(a, "other/app", Some("t00"), &[&gzip(&unique_bytes(64))]);
    assert_eq!(tags(&pier).len(), 50);

    // What the rules say: the 10 newest (t37..t46) and v*; the rest goes.
    let kept: BTreeSet<String> = (37..47)
        .map(|i| format!("t{i:02}"))
        .chain(["v1".to_owned(), "v2".to_owned()])
        .collect();
    let expected: BTreeSet<String> = order
        .iter()
        .filter(|t| !kept.contains(*t))
        .cloned()
        .collect();
    assert_eq!(expected.len(), 38);

    let dry = admin(&pier, "POST", "/api/v1/retention/team");
    assert_eq!(dry["dryRun"], true);
    assert_eq!(
        removed(&dry),
        expected,
        "the dry run lists exactly what the rules say"
    );
    assert!(
        dry["removals"]
            .as_array()
            .unwrap()
            .iter()
            .all(|r| r["result"] == "would delete")
    );
    assert!(
        dry["removals"][0]["reason"]
            .as_str()
            .unwrap()
            .contains("recent: the 10 most recently pushed"),
        "{dry}"
    );
    assert_eq!(tags(&pier).len(), 50, "a dry run deletes nothing");

    let run = admin(&pier, "POST", "/api/v1/retention/team?dry_run=false");
    assert_eq!(run["dryRun"], false);
    assert_eq!(removed(&run), expected);
    for r in run["removals"].as_array().unwrap() {
        let want = match r["tag"] == "keep-me" {
            true => "kept: denied by policy \"immutable\"",
            false => "deleted",
        };
        assert!(r["result"].as_str().unwrap().starts_with(want), "{r}");
    }
    let mut left = kept.clone();
    left.insert("keep-me".into());
    assert_eq!(tags(&pier), left, "what the run left");
    // Their manifests went with their last tag.
    let deleted: Vec<&Value> = run["manifestsDeleted"].as_array().unwrap().iter().collect();
    assert_eq!(deleted.len(), 37, "{run}");
    for t in expected.iter().filter(|t| *t != "keep-me") {
        pier_e2e::get_manifest(a, "team/app", &images[t].digest)
            .expect_status(404, &format!("the manifest of {t}"));
    }
    // One audit line per deletion.
    let log = fs::read_to_string(pier.log_path()).unwrap();
    let audits = log
        .lines()
        .filter(|l| l.contains("retention_delete") && l.contains("result=ok"))
        .count();
    assert_eq!(audits, 37 + 37, "tags and manifests\n{}", pier.log_tail(20));
    assert_eq!(
        admin(&pier, "GET", "/api/v1/retention/team")["dryRun"],
        false
    );

    // The collection reclaims the deleted images' bytes and keeps the rest.
    admin(&pier, "POST", "/api/v1/gc?grace=0s");
    for (t, img) in &images {
        let gone = expected.contains(t) && t != "keep-me";
        for d in &img.layer_digests {
            assert_eq!(
                !blob_data_path(&pier.root, d).exists(),
                gone,
                "{t}'s layer {d}"
            );
        }
    }
    // Another project is untouched.
    http::request(a, "GET", "/v2/other/app/manifests/t00", &[], b"")
        .expect_status(200, "other/app");
}
