//! Tag freshness: a mirrored tag is served from the cache for the tag TTL, then
//! revalidated upstream with a HEAD.

use std::thread;
use std::time::{Duration, Instant};

use pier_e2e::sha256_digest;

use crate::clients_support::*;
use crate::support::*;

const TTL: Duration = Duration::from_secs(3);

#[track_caller]
fn sleep_until(t: Instant) {
    let now = Instant::now();
    if t > now {
        thread::sleep(t - now);
    }
}

/// `--upstream-tag-ttl 3s`: the tag is moved upstream right after Pier cached it; Pier
/// keeps serving the old manifest (without asking the upstream) until the TTL passes,
/// then the new one; an unchanged tag is revalidated with a HEAD, not fetched again.
#[test]
fn tags_are_served_from_cache_for_the_ttl_then_revalidated() {
    let sk = Skopeo::new();
    let up = Upstream::start();
    let old = TestImage::new("latest", 1);
    let new = TestImage::new("next", 1);
    up.push_image(&sk, "library/ttl", &old);
    up.push_image(&sk, "library/ttl", &new);
    let pier = pier_mirroring(&up, &["--upstream-tag-ttl", "3s"]);
    let tag_path = "/v2/library/ttl/manifests/latest";
    let gets = || up.count("GET", tag_path);
    let heads = || up.count("HEAD", tag_path);

    let t0 = Instant::now();
    let r = get_manifest(pier.addr, "library/ttl", "latest");
    r.expect_status(200, "first GET of the tag through Pier");
    assert_eq!(sha256_digest(&r.body), old.manifest_digest, "first GET");
    thread::sleep(Duration::from_millis(150));
    let (g0, h0) = (gets(), heads());
    assert!(
        g0 + h0 >= 1,
        "the upstream never saw the tag\n{}",
        up.access_lines("/manifests/")
    );

    // Move the tag upstream.
    pier_e2e::push_manifest(
        up.addr(),
        "library/ttl",
        "latest",
        OCI_MANIFEST,
        &new.manifest,
    )
    .expect_status(201, "upstream: retag latest");
    let r = get_manifest(up.addr(), "library/ttl", "latest");
    assert_eq!(
        sha256_digest(&r.body),
        new.manifest_digest,
        "upstream moved the tag"
    );

    // Within the TTL: the old manifest, from the cache.
    let r = get_manifest(pier.addr, "library/ttl", "latest");
    r.expect_status(200, "GET of the tag within the TTL");
    let o = sk.ok(
        &[
            "inspect",
            "--tls-verify=false",
            &format!("docker://{}/library/ttl:latest", pier.host()),
        ],
        "skopeo inspect through Pier within the TTL",
    );
    let within = t0.elapsed();
    assert!(
        within < TTL - Duration::from_millis(500),
        "this machine is too slow for the test: {within:?} passed of a {TTL:?} TTL"
    );
    assert_eq!(
        sha256_digest(&r.body),
        old.manifest_digest,
        "within the TTL ({within:?}) Pier must serve the cached manifest"
    );
    let v: serde_json::Value = serde_json::from_str(&o.stdout).unwrap();
    assert_eq!(
        v["Digest"],
        old.manifest_digest.as_str(),
        "skopeo inspect within the TTL"
    );
    thread::sleep(Duration::from_millis(150));
    assert_eq!(
        (gets(), heads()),
        (g0, h0),
        "Pier asked the upstream about a tag within its TTL\n{}",
        up.access_lines("/manifests/")
    );

    // After the TTL: revalidated, the new manifest.
    sleep_until(t0 + TTL + Duration::from_millis(300));
    let r = get_manifest(pier.addr, "library/ttl", "latest");
    r.expect_status(200, "GET of the tag after the TTL");
    assert_eq!(
        sha256_digest(&r.body),
        new.manifest_digest,
        "after the TTL Pier must serve the tag's new manifest\n{}",
        up.access_lines("/manifests/")
    );
    thread::sleep(Duration::from_millis(150));
    assert!(
        heads() > h0,
        "the tag was not revalidated with a HEAD\n{}",
        up.access_lines("/manifests/")
    );
    let out = sk.pull_to_oci(
        &format!("docker://{}/library/ttl:latest", pier.host()),
        "after-ttl",
    );
    assert_layout_is(&out, &new, "skopeo pull after the TTL");

    // Unchanged upstream: after another TTL a HEAD suffices, no GET of the tag.
    thread::sleep(Duration::from_millis(150));
    let (g1, h1) = (gets(), heads());
    sleep_until(Instant::now() + TTL + Duration::from_millis(300));
    let r = get_manifest(pier.addr, "library/ttl", "latest");
    r.expect_status(200, "GET of the unchanged tag after a second TTL");
    assert_eq!(sha256_digest(&r.body), new.manifest_digest);
    thread::sleep(Duration::from_millis(150));
    assert!(
        heads() > h1,
        "the unchanged tag was not revalidated with a HEAD\n{}",
        up.access_lines("/manifests/")
    );
    assert_eq!(
        gets(),
        g1,
        "an unchanged tag was fetched again instead of revalidated\n{}",
        up.access_lines("/manifests/")
    );
}
