//! `pier replication jobs` and `pier replication retry ID`: a job that failed for good
//! (`[replication] attempts = 1`, target down) succeeds when retried from the CLI once
//! the target is back.

use std::time::Duration;

use pier_e2e::{TestPier, pier_command, push_image, random_bytes};

use crate::clients_support::{CMD_TIMEOUT, Output, run};
use crate::support::*;

fn pier_cli(site: &TestPier, args: &[&str]) -> Output {
    let mut c = pier_command();
    c.args(args).arg("--admin").arg(site.admin_url());
    run(&mut c, CMD_TIMEOUT)
}

/// The `pier replication jobs` row of job `id`, split on tabs.
fn row(out: &Output, id: u64) -> Vec<String> {
    out.stdout
        .lines()
        .map(|l| l.split('\t').map(str::to_owned).collect::<Vec<_>>())
        .find(|cols| cols.first().map(String::as_str) == Some(id.to_string().as_str()))
        .unwrap_or_else(|| panic!("job {id} is not listed by `pier replication jobs`\n{out}"))
}

#[test]
fn cli_retry_of_a_failed_job_succeeds_once_the_target_is_back() {
    let mut site_b = TestPier::start();
    let config = base_config("attempts = 1", &[("site-b", site_b.url())])
        + &replicator("replicate", &[("team-to-b", "team", "site-b")]);
    let site_a = start_site(&config);
    site_b.kill9();

    let img = push_image(site_a.addr, "team/cli", Some("v1"), &[&random_bytes(4096)]);
    let failed = wait_job(
        &site_a,
        "site-b",
        "team/cli",
        "v1",
        Duration::from_secs(60),
        |j| j["state"] == "failed",
    );
    assert_eq!(failed["attempts"], 1, "attempts = 1 allows one: {failed}");
    let id = failed["id"].as_u64().expect("job id");

    let out = pier_cli(&site_a, &["replication", "jobs"]);
    assert!(out.success(), "pier replication jobs\n{out}");
    let cols = row(&out, id);
    assert_eq!(cols[1], "failed", "state column\n{out}");
    assert!(
        out.stdout.contains("team/cli:v1 -> team/cli"),
        "image column\n{out}"
    );

    site_b.start_again();
    let out = pier_cli(&site_a, &["replication", "retry", &id.to_string()]);
    assert!(out.success(), "pier replication retry {id}\n{out}");
    assert!(
        out.stdout.contains(&format!("job {id} queued again")),
        "{out}"
    );
    let done = wait_succeeded(&site_a, "site-b", "team/cli", "v1", Duration::from_secs(60));
    assert_eq!(done["id"], id, "the retry made a new job instead: {done}");
    assert_eq!(done["attempts"], 2, "{done}");
    assert_eq!(
        manifest_digest(site_b.addr, "team/cli", "v1").as_deref(),
        Some(img.digest.as_str())
    );

    let out = pier_cli(&site_a, &["replication", "jobs"]);
    assert!(out.success(), "{out}");
    assert_eq!(row(&out, id)[1], "succeeded", "{out}");

    // Retrying an unknown job is an error naming it.
    let out = pier_cli(&site_a, &["replication", "retry", "999999"]);
    assert!(!out.success(), "retry of an unknown job succeeded\n{out}");
    assert!(out.all().contains("404"), "{out}");
}
