//! `pier warm` preheats a mirror: after it ran, every blob of the image is served with the
//! upstream stopped, and the upstream served each blob once (to the warm-up, not later).

use std::process::Command;

use crate::clients_support::*;
use crate::support::*;

#[test]
fn pier_warm_fills_the_cache_ahead_of_the_first_client() {
    let sk = Skopeo::new();
    let mut up = Upstream::start();
    let img = TestImage::new("1", 2);
    up.push_image(&sk, "library/warmimg", &img);
    let img2 = TestImage::new("2", 1);
    up.push_image(&sk, "library/warmimg2", &img2);
    let pier = pier_mirroring(&up, &[]);

    let out = Command::new(pier_e2e::pier_bin())
        .args(["warm", "--server", &pier.url(), "library/warmimg:1"])
        .output()
        .expect("run pier warm");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "pier warm failed: {stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    for d in img.blob_digests() {
        assert!(
            stdout.contains(d.as_str()),
            "warm output does not name blob {d}:\n{stdout}"
        );
        assert_eq!(
            up.count("GET", &format!("/v2/library/warmimg/blobs/{d}")),
            1,
            "the warm-up fetched {d} once"
        );
    }
    assert!(
        stdout.contains("warm: 1 images"),
        "no summary line:\n{stdout}"
    );

    // The same through the admin endpoint.
    let r = pier_e2e::http::request(
        pier.admin_addr,
        "POST",
        "/warm?image=library%2Fwarmimg2:2",
        &[],
        b"",
    );
    r.expect_status(200, "POST /warm on the admin listener");
    for d in img2.blob_digests() {
        assert!(
            String::from_utf8_lossy(&r.body).contains(d.as_str()),
            "admin warm output misses {d}\n{r}"
        );
        assert_eq!(
            up.count("GET", &format!("/v2/library/warmimg2/blobs/{d}")),
            1,
            "admin warm fetched {d} once"
        );
    }
    let none = pier_e2e::http::request(pier.admin_addr, "POST", "/warm", &[], b"");
    none.expect_status(400, "POST /warm without an image");

    // The first real client finds everything cached, even with the upstream gone.
    up.stop();
    assert_registry_has_image(pier.addr, "library/warmimg", &img.manifest_digest, &img);
    assert_registry_has_image(pier.addr, "library/warmimg2", &img2.manifest_digest, &img2);

    // A name the upstream does not have fails the warm-up with a non-zero exit.
    let bad = Command::new(pier_e2e::pier_bin())
        .args(["warm", "--server", &pier.url(), "library/nosuchimage:1"])
        .output()
        .expect("run pier warm");
    assert!(!bad.status.success(), "warming a missing image must fail");
}
