//! Site B down during pushes: jobs retry and complete once B is back. An upload cut
//! mid-chunk by a proxy between A and B resumes from B's offset instead of starting the
//! layer again. A job cut by kill -9 of site A runs again after the restart. A target
//! that is down does not hold back another target's jobs.

use std::time::Duration;

use pier_e2e::{PushedImage, TestPier, push_image, random_bytes, sha256_digest};

use crate::support::*;

const JOB_TIMEOUT: Duration = Duration::from_secs(120);

#[test]
fn jobs_retry_while_site_b_is_down_and_complete_when_it_returns() {
    let mut site_b = TestPier::start();
    let config = base_config("", &[("site-b", site_b.url())])
        + &replicator("replicate", &[("team-to-b", "team", "site-b")]);
    let site_a = start_site(&config);
    site_b.kill9();

    // Two pushes (two replication workers): both jobs fail and retry while B is down.
    let images: Vec<(String, PushedImage)> = (0..2)
        .map(|i| {
            let tag = format!("v{i}");
            let layer = random_bytes(256 * 1024);
            let img = push_image(site_a.addr, "team/down", Some(&tag), &[&layer]);
            (tag, img)
        })
        .collect();
    for (tag, _) in &images {
        let j = wait_job(&site_a, "site-b", "team/down", tag, JOB_TIMEOUT, |j| {
            j["attempts"].as_u64().unwrap_or(0) >= 2
        });
        assert_ne!(
            j["state"], "succeeded",
            "a job to a stopped site succeeded: {j}"
        );
        assert!(
            j["report"]["error"].is_string(),
            "a failed attempt records its error: {j}"
        );
    }

    site_b.start_again();
    for (tag, img) in &images {
        let j = wait_succeeded(&site_a, "site-b", "team/down", tag, JOB_TIMEOUT);
        assert!(
            j["attempts"].as_u64().unwrap_or(0) > 1,
            "the job succeeded without retrying: {j}"
        );
        assert!(j["report"]["error"].is_null(), "{j}");
        assert_eq!(
            manifest_digest(site_b.addr, "team/down", tag).as_deref(),
            Some(img.digest.as_str()),
            "team/down:{tag} on site B"
        );
    }
}

#[test]
fn upload_cut_mid_chunk_resumes_instead_of_restarting() {
    const LAYER: usize = 10 << 20;
    // Chunks of 2 MiB: the cut at 6.5 MiB falls inside the fourth PATCH. Starting the
    // layer again would move 6.5 + 10 MiB, more than 1.5 x the layer; a resume about
    // 10 MiB plus the part of one chunk B did not keep.
    const CUT_AT: u64 = (13 << 20) / 2;
    let site_b = TestPier::start();
    let proxy = Proxy::start(site_b.addr, CUT_AT);
    let config = base_config(
        "chunk_size = \"2MiB\"\nconcurrency = 1",
        &[("site-b", proxy.url())],
    ) + &replicator("replicate", &[("team-to-b", "team", "site-b")]);
    let site_a = start_site(&config);

    let layer = random_bytes(LAYER);
    let img = push_image(site_a.addr, "team/big", Some("v1"), &[&layer]);
    let job = wait_succeeded(&site_a, "site-b", "team/big", "v1", JOB_TIMEOUT);
    assert!(
        proxy.did_cut(),
        "the proxy never cut (moved {} bytes)",
        proxy.sent()
    );

    let report = &job["report"];
    eprintln!(
        "resume: proxy moved {} bytes for a {LAYER}-byte layer; job report {report}",
        proxy.sent()
    );
    let limit = LAYER as u64 * 3 / 2;
    let bytes = report["bytes"].as_u64().unwrap_or(u64::MAX);
    assert!(
        report["resumes"].as_u64().unwrap_or(0) >= 1,
        "the cut upload was not resumed: {job}"
    );
    assert!(
        report["resumed_bytes_saved"].as_u64().unwrap_or(0) >= 2 << 20,
        "the resume saved less than a chunk: {job}"
    );
    assert!(
        bytes < limit,
        "the job reports {bytes} bytes sent for a {LAYER}-byte layer: {job}"
    );
    assert!(
        bytes >= LAYER as u64,
        "the job reports fewer bytes than the layer: {job}"
    );
    assert!(
        proxy.sent() < limit,
        "{} bytes went through the proxy for a {LAYER}-byte layer: {job}",
        proxy.sent()
    );
    assert_eq!(job["report"]["digest"], img.digest.as_str());

    // B has the image, and the layer's bytes are right.
    assert_eq!(
        manifest_digest(site_b.addr, "team/big", "v1").as_deref(),
        Some(img.digest.as_str())
    );
    let l = &img.layer_digests[0];
    let r = site_b.get(&format!("/v2/team/big/blobs/{l}"));
    r.expect_status(200, "GET the replicated layer from site B");
    assert_eq!(sha256_digest(&r.body), *l, "layer bytes on site B");
}

/// A job waiting to retry must not keep a replication worker: two jobs to a stopped
/// site once held back every other job, to any target.
#[test]
fn a_target_that_is_down_does_not_hold_back_another_target() {
    let mut site_b = TestPier::start();
    let site_c = TestPier::start();
    let config = base_config("", &[("site-b", site_b.url()), ("site-c", site_c.url())])
        + &replicator(
            "replicate",
            &[
                ("team-to-b", "team", "site-b"),
                ("team-to-c", "team", "site-c"),
            ],
        );
    let site_a = start_site(&config);
    site_b.kill9();

    // More jobs to the stopped site than there are replication workers.
    let images: Vec<(String, PushedImage)> = (0..4)
        .map(|i| {
            let tag = format!("v{i}");
            let img = push_image(site_a.addr, "team/hol", Some(&tag), &[&random_bytes(4096)]);
            (tag, img)
        })
        .collect();
    for (tag, img) in &images {
        wait_succeeded(&site_a, "site-c", "team/hol", tag, Duration::from_secs(60));
        assert_eq!(
            manifest_digest(site_c.addr, "team/hol", tag).as_deref(),
            Some(img.digest.as_str())
        );
    }
    site_b.start_again();
    for (tag, _) in &images {
        wait_succeeded(&site_a, "site-b", "team/hol", tag, JOB_TIMEOUT);
    }
}

#[test]
fn a_job_running_when_site_a_is_killed_completes_after_the_restart() {
    let site_b = TestPier::start();
    // 2 MiB/s to B: the 8 MiB layer keeps the job running for about four seconds.
    let config = base_config("", &[])
        + &format!(
            "\n[replication.targets.site-b]\nurl = \"{}\"\nbandwidth = \"2MiB\"\n",
            site_b.url()
        )
        + &replicator("replicate", &[("team-to-b", "team", "site-b")]);
    let mut site_a = start_site(&config);
    let img = push_image(
        site_a.addr,
        "team/crashjob",
        Some("v1"),
        &[&random_bytes(8 << 20)],
    );
    wait_job(&site_a, "site-b", "team/crashjob", "v1", JOB_TIMEOUT, |j| {
        j["state"] == "running"
    });
    std::thread::sleep(Duration::from_secs(1));
    site_a.kill9();
    site_a.start_again();

    let j = wait_succeeded(&site_a, "site-b", "team/crashjob", "v1", JOB_TIMEOUT);
    assert!(
        j["attempts"].as_u64().unwrap_or(0) >= 2,
        "the job cut by kill -9 did not run again: {j}"
    );
    assert_eq!(
        manifest_digest(site_b.addr, "team/crashjob", "v1").as_deref(),
        Some(img.digest.as_str())
    );
    let same: Vec<_> = jobs(&site_a)
        .into_iter()
        .filter(|j| j["destination"] == "site-b" && j["src_repo"] == "team/crashjob")
        .collect();
    assert_eq!(
        same.len(),
        1,
        "the restart made another job for the same push: {same:#?}"
    );
}
