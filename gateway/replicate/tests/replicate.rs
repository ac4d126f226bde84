//! Replication against real registries on 127.0.0.1: Debian's docker-registry (CNCF
//! distribution 2.8.2) and Pier, with a TCP proxy for faults.

mod support;

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use pier_e2e::{TestPier, random_bytes};
use pier_oci::{Reference, RepoName};
use pier_replicate::{
    CopyOptions, JobLog, JobRunner, JobSpec, JobState, JsonlJobLog, MountHints, RateLimiter,
    RemoteDestination, RemoteSource, RetryPolicy, UploadOptions, copy_image,
};
use pier_upstream::{UpstreamClient, UpstreamConfig};
use support::{Proxy, Registry, assert_has_image, seed_image, seed_index};

const MIB: usize = 1024 * 1024;

fn client(url: &str, retries: u32) -> Arc<UpstreamClient> {
    let config = UpstreamConfig {
        name: url.to_owned(),
        url: url.to_owned(),
        credentials: None,
        timeout: Duration::from_secs(5),
        retries,
        allow_private: false,
    };
    Arc::new(
        UpstreamClient::new(config)
            .unwrap()
            .with_backoff(Duration::from_millis(50), Duration::from_millis(200)),
    )
}

fn source(url: &str) -> RemoteSource {
    RemoteSource::new(client(url, 2))
}

fn destination(url: &str, chunk_size: u64, limit: u64) -> RemoteDestination {
    RemoteDestination::new(
        client(url, 1),
        UploadOptions {
            chunk_size,
            retry: RetryPolicy {
                max_attempts: 4,
                base: Duration::from_millis(100),
                cap: Duration::from_millis(400),
            },
        },
        Arc::new(RateLimiter::new(limit)),
    )
}

fn repo(s: &str) -> RepoName {
    s.parse().unwrap()
}

fn tag(s: &str) -> Reference {
    s.parse().unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn copies_an_index_then_skips_then_mounts() {
    let a = Registry::start();
    let b = Registry::start();
    let image = seed_index(a.addr(), "src/app", "v1", 3 * MIB);
    let src = source(&a.url());
    let dst = destination(&b.url(), 2 * MIB as u64, 0);
    let hints = Arc::new(MountHints::new());
    let opts = CopyOptions {
        hints: Some(hints.clone()),
        ..CopyOptions::default()
    };

    let first = copy_image(
        &src,
        &dst,
        &repo("src/app"),
        &repo("dst/app"),
        &tag("v1"),
        &opts,
    )
    .await
    .expect("first copy");
    assert_has_image(b.addr(), "dst/app", &image);
    let tagged = pier_e2e::get_manifest(b.addr(), "dst/app", "v1");
    assert_eq!(
        tagged.header("docker-content-digest"),
        Some(image.top.as_str())
    );
    assert_eq!(first.blobs_copied as usize, image.blobs.len(), "{first:?}");
    assert_eq!(first.manifests, 3, "two platforms and the index: {first:?}");
    let blob_bytes: usize = image.blobs.iter().map(|(_, s)| s).sum();
    assert!(first.bytes as usize >= blob_bytes, "{first:?}");
    assert!(first.bytes as usize <= blob_bytes + 64 * 1024, "{first:?}");
    assert_eq!(
        first.digest.as_ref().map(|d| d.to_string()),
        Some(image.top.clone())
    );

    // Again: the index is there, nothing moves.
    let second = copy_image(
        &src,
        &dst,
        &repo("src/app"),
        &repo("dst/app"),
        &tag("v1"),
        &opts,
    )
    .await
    .expect("second copy");
    assert_eq!(
        (second.bytes, second.blobs_copied, second.manifests),
        (0, 0, 0),
        "{second:?}"
    );
    assert_eq!(second.manifests_skipped, 1, "{second:?}");

    // A platform manifest alone into a repository that has none: the blobs are there
    // after HEAD-by-digest? No: per repository. Mounted from dst/app via the hints.
    let third = copy_image(
        &src,
        &dst,
        &repo("src/app"),
        &repo("dst/other"),
        &tag("v1"),
        &opts,
    )
    .await
    .expect("copy into another repository");
    assert_eq!(third.blobs_mounted as usize, image.blobs.len(), "{third:?}");
    assert_eq!(third.blobs_copied, 0, "{third:?}");
    assert!(third.bytes < 64 * 1024, "only manifests move: {third:?}");
    assert_has_image(b.addr(), "dst/other", &image);

    // Explicit mount candidates work without hints; a skip when the blob is present.
    let fourth = copy_image(
        &src,
        &dst,
        &repo("src/app"),
        &repo("dst/third"),
        &tag("v1"),
        &CopyOptions {
            mount_from: vec![repo("dst/nothing-here"), repo("dst/app")],
            ..CopyOptions::default()
        },
    )
    .await
    .expect("copy with mount_from");
    assert_eq!(
        fourth.blobs_mounted as usize,
        image.blobs.len(),
        "{fourth:?}"
    );
    assert_has_image(b.addr(), "dst/third", &image);
}

/// distribution 2.8.2 cancels a session whose PATCH was cut (its next request finds
/// more bytes than the session's state says): the blob starts again and still lands
/// with the right digest.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cut_upload_to_distribution_starts_the_blob_again() {
    let a = Registry::start();
    let b = Registry::start();
    let layer = random_bytes(6 * MIB);
    let image = seed_image(a.addr(), "src/big", "v1", &[layer]);
    let proxy = Proxy::start(b.addr());
    proxy.cut_once_after(3 * MIB as u64 + 12_345);
    let dst = destination(&proxy.url(), MIB as u64, 0);
    let report = copy_image(
        &source(&a.url()),
        &dst,
        &repo("src/big"),
        &repo("dst/big"),
        &tag("v1"),
        &CopyOptions::default(),
    )
    .await
    .expect("copy through a cut");
    assert_eq!(proxy.cuts.load(Ordering::SeqCst), 1, "the proxy cut once");
    assert!(report.blob_retries >= 1, "{report:?}");
    assert_has_image(b.addr(), "dst/big", &image);
}

/// Pier keeps what a cut PATCH delivered and reports it: the upload goes on from there.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cut_upload_to_pier_resumes_instead_of_restarting() {
    let a = Registry::start();
    let b = TestPier::start();
    let size = 8 * MIB;
    let layer = random_bytes(size);
    let image = seed_image(a.addr(), "src/big", "v1", &[layer]);
    let proxy = Proxy::start(b.addr);
    proxy.cut_once_after(5 * MIB as u64 + 4321);
    let dst = destination(&proxy.url(), 2 * MIB as u64, 0);
    let report = copy_image(
        &source(&a.url()),
        &dst,
        &repo("src/big"),
        &repo("dst/big"),
        &tag("v1"),
        &CopyOptions::default(),
    )
    .await
    .expect("copy through a cut");
    assert_eq!(proxy.cuts.load(Ordering::SeqCst), 1, "the proxy cut once");
    assert!(report.resumes >= 1, "resumed: {report:?}");
    assert!(report.resumed_bytes_saved >= 4 * MIB as u64, "{report:?}");
    assert!(
        (report.bytes as f64) < 1.5 * size as f64,
        "bytes moved {} for a {size} byte layer: {report:?}",
        report.bytes
    );
    assert_has_image(b.addr, "dst/big", &image);
}

/// Site B down during the push: the job fails retryably, is retried with backoff and
/// completes once B is back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn jobs_retry_until_the_destination_returns() {
    let a = Registry::start();
    let b = Registry::start();
    let image = seed_image(
        a.addr(),
        "src/app",
        "v1",
        &[random_bytes(MIB), random_bytes(1000)],
    );
    let proxy = Arc::new(Proxy::start(b.addr()));
    proxy.refuse();
    let dir = tempfile::tempdir().unwrap();
    let log: Arc<dyn JobLog> = Arc::new(JsonlJobLog::open(dir.path().join("jobs.jsonl")).unwrap());
    let runner = JobRunner::new(
        log.clone(),
        RetryPolicy {
            max_attempts: 30,
            base: Duration::from_millis(200),
            cap: Duration::from_millis(500),
        },
    );
    let record = log
        .create(JobSpec {
            rule: "push-all".into(),
            source: a.url(),
            destination: proxy.url(),
            src_repo: "src/app".into(),
            dst_repo: "dst/app".into(),
            reference: "v1".into(),
            delete: false,
            key: None,
        })
        .await
        .unwrap();
    let up = proxy.clone();
    std::thread::spawn(move || {
        std::thread::sleep(Duration::from_millis(2500));
        up.pass();
    });
    let src = source(&a.url());
    let dst = destination(&proxy.url(), MIB as u64, 0);
    let (s, d, r) = record.spec.parse().unwrap();
    let opts = CopyOptions::default();
    let done = runner
        .run(record, || copy_image(&src, &dst, &s, &d, &r, &opts))
        .await
        .unwrap();
    assert_eq!(done.state, JobState::Succeeded, "{done:?}");
    assert!(done.attempts > 1, "{done:?}");
    assert_has_image(b.addr(), "dst/app", &image);
    let logged = log.get(done.id).await.unwrap().unwrap();
    assert_eq!(logged.state, JobState::Succeeded);
    assert_eq!(logged.attempts, done.attempts);
    assert!(logged.report.unwrap().error.is_none());
}

/// A denial is permanent: one attempt, no retries.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn permanent_errors_are_not_retried() {
    let a = Registry::start();
    let b = Registry::start();
    seed_image(a.addr(), "src/app", "v1", &[random_bytes(1000)]);
    let proxy = Proxy::start(b.addr());
    proxy.deny();
    let dir = tempfile::tempdir().unwrap();
    let log: Arc<dyn JobLog> = Arc::new(JsonlJobLog::open(dir.path().join("jobs.jsonl")).unwrap());
    let runner = JobRunner::new(
        log.clone(),
        RetryPolicy {
            max_attempts: 10,
            base: Duration::from_millis(50),
            cap: Duration::from_millis(100),
        },
    );
    let record = log
        .create(JobSpec {
            rule: "r".into(),
            source: a.url(),
            destination: proxy.url(),
            src_repo: "src/app".into(),
            dst_repo: "dst/app".into(),
            reference: "v1".into(),
            delete: false,
            key: None,
        })
        .await
        .unwrap();
    let src = source(&a.url());
    let dst = destination(&proxy.url(), MIB as u64, 0);
    let (s, d, r, opts) = (
        repo("src/app"),
        repo("dst/app"),
        tag("v1"),
        CopyOptions::default(),
    );
    let done = runner
        .run(record, || copy_image(&src, &dst, &s, &d, &r, &opts))
        .await
        .unwrap();
    assert_eq!(
        (done.state, done.attempts),
        (JobState::Failed, 1),
        "{done:?}"
    );
    let error = done.report.unwrap().error.unwrap();
    assert!(error.contains("denied"), "{error}");
    assert_eq!(proxy.denied.load(Ordering::SeqCst), 1, "no request retried");

    // A source image that does not exist is permanent too.
    let missing = copy_image(
        &src,
        &destination(&b.url(), MIB as u64, 0),
        &repo("src/none"),
        &repo("dst/none"),
        &tag("v1"),
        &CopyOptions::default(),
    )
    .await
    .unwrap_err();
    assert!(!missing.error.is_retryable(), "{missing}");
}

/// The per-destination rate limit holds: 2 MiB at 1 MiB/s takes over 1.5 s.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_bandwidth_limit_is_observed() {
    let a = Registry::start();
    let b = Registry::start();
    let image = seed_image(a.addr(), "src/app", "v1", &[random_bytes(2 * MIB)]);
    let dst = destination(&b.url(), 4 * MIB as u64, MIB as u64);
    let started = Instant::now();
    let report = copy_image(
        &source(&a.url()),
        &dst,
        &repo("src/app"),
        &repo("dst/app"),
        &tag("v1"),
        &CopyOptions::default(),
    )
    .await
    .unwrap();
    let elapsed = started.elapsed();
    assert!(
        elapsed >= Duration::from_millis(1500),
        "{elapsed:?}: {report:?}"
    );
    assert!(elapsed < Duration::from_secs(10), "{elapsed:?}");
    assert_has_image(b.addr(), "dst/app", &image);
}

/// Referrers (a signature-like artifact with `subject`) follow their subject, Pier to
/// Pier (distribution 2.8.2 has no referrers API).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn referrers_are_copied_after_their_subject() {
    let a = TestPier::start();
    let b = TestPier::start();
    let mut image = seed_image(a.addr, "src/app", "v1", &[random_bytes(100_000)]);
    let subject_bytes = image.manifests[0].1.clone();
    // An artifact whose subject is the image.
    let empty = b"{}".to_vec();
    let empty_digest = support::push_blob(a.addr, "src/app", &empty);
    let payload = random_bytes(500);
    let payload_digest = support::push_blob(a.addr, "src/app", &payload);
    let artifact = serde_json::to_vec(&serde_json::json!({
        "schemaVersion": 2,
        "mediaType": support::OCI_MANIFEST,
        "artifactType": "application/vnd.example.signature",
        "config": {"mediaType": "application/vnd.oci.empty.v1+json", "digest": empty_digest, "size": 2},
        "layers": [{"mediaType": "application/octet-stream", "digest": payload_digest, "size": payload.len()}],
        "subject": {"mediaType": support::OCI_MANIFEST, "digest": image.top, "size": subject_bytes.len()},
    }))
    .unwrap();
    let artifact_digest = pier_e2e::sha256_digest(&artifact);
    pier_e2e::push_manifest(
        a.addr,
        "src/app",
        &artifact_digest,
        support::OCI_MANIFEST,
        &artifact,
    )
    .expect_status(201, "push artifact");
    let listed = pier_e2e::http::request(
        a.addr,
        "GET",
        &format!("/v2/src/app/referrers/{}", image.top),
        &[],
        b"",
    );
    assert!(String::from_utf8_lossy(&listed.body).contains(&artifact_digest));
    image.blobs.push((empty_digest, 2));
    image.blobs.push((payload_digest, payload.len()));
    image.manifests.push((artifact_digest.clone(), artifact));

    let report = copy_image(
        &source(&a.url()),
        &destination(&b.url(), MIB as u64, 0),
        &repo("src/app"),
        &repo("dst/app"),
        &tag("v1"),
        &CopyOptions::default(),
    )
    .await
    .expect("copy with referrers");
    assert_eq!(report.manifests, 2, "{report:?}");
    assert_has_image(b.addr, "dst/app", &image);
    let listed = pier_e2e::http::request(
        b.addr,
        "GET",
        &format!("/v2/dst/app/referrers/{}", image.top),
        &[],
        b"",
    );
    listed.expect_status(200, "referrers on B");
    assert!(
        String::from_utf8_lossy(&listed.body).contains(&artifact_digest),
        "{}",
        String::from_utf8_lossy(&listed.body)
    );

    // Without referrers the artifact stays behind.
    let c = TestPier::start();
    let report = copy_image(
        &source(&a.url()),
        &destination(&c.url(), MIB as u64, 0),
        &repo("src/app"),
        &repo("dst/app"),
        &tag("v1"),
        &CopyOptions {
            referrers: false,
            ..CopyOptions::default()
        },
    )
    .await
    .unwrap();
    assert_eq!(report.manifests, 1, "{report:?}");
}
