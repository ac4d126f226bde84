//! A standalone containerd (own config, root, state and socket in a temp dir) with `ctr`
//! against a real Pier: pull (and unpack) by tag and by digest with --plain-http, then
//! push the image to another repository.

mod clients_support;

use clients_support::*;
use pier_e2e::TestPier;

#[test]
fn containerd_ctr_pull_and_push() {
    let pier = TestPier::start();
    let host = pier.host();
    let sk = Skopeo::new();
    let img = TestImage::new("v1", 2);
    let layout = sk.dir.path().join("src");
    img.write_oci_layout(&layout);
    sk.ok(
        &[
            "copy",
            "--dest-tls-verify=false",
            &format!("oci:{}:v1", layout.display()),
            &format!("docker://{host}/ctr/src:v1"),
        ],
        "skopeo push of the source image",
    );

    let c = Containerd::start();
    let src = format!("{host}/ctr/src:v1");
    let o = c.ok(
        &["images", "pull", "--plain-http", &src],
        "ctr images pull by tag",
    );
    assert!(
        o.stdout.contains("unpacking"),
        "ctr pull did not unpack\n{o}"
    );
    let ls = c.ok(&["images", "ls"], "ctr images ls");
    let line = ls
        .stdout
        .lines()
        .find(|l| l.starts_with(&src))
        .unwrap_or_else(|| panic!("{src} not in ctr images ls\n{ls}"));
    assert!(
        line.contains(&img.manifest_digest),
        "digest of the pulled image\n{ls}"
    );

    let by_digest = format!("{host}/ctr/src@{}", img.manifest_digest);
    c.ok(
        &["images", "pull", "--plain-http", &by_digest],
        "ctr images pull by digest",
    );
    // The layers were unpacked and verified against the config's diff_ids.
    c.ok(&["images", "check"], "ctr images check");

    // Push under another name: same manifest, blobs now in the second repository.
    let dst = format!("{host}/ctr/pushed/dst:v2");
    c.ok(&["images", "tag", &src, &dst], "ctr images tag");
    c.ok(&["images", "push", "--plain-http", &dst], "ctr images push");
    assert_registry_has_image(pier.addr, "ctr/pushed/dst", "v2", &img);

    // Pushing the same reference again is a no-op that still succeeds.
    c.ok(
        &["images", "push", "--plain-http", &dst],
        "ctr images push again",
    );
    assert_registry_has_image(pier.addr, "ctr/pushed/dst", "v2", &img);
}
