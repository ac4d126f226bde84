//! Access is decided on the content served: with the RBAC example and a mirror whose
//! upstream is named `hub` (containerd's `?ns=hub.example`), `library/app?ns=hub.example`
//! is `hub/library/app`, not the public project `library`. Anonymous clients and tokens
//! granted on `library/app` get nothing of it, cache hits included; an account allowed
//! on `hub` gets it by every name. And the mirror's namespace stays read-only to everyone
//! (a bogus `?ns=` can't make a write land in it).

use pier_e2e::{ACCEPT_MANIFESTS, TestPier, http};

use crate::support::{RbacExample, basic, bearer, get_manifest_as, token};

fn get_ns(addr: std::net::SocketAddr, auth: Option<&str>, path: &str) -> pier_e2e::Response {
    let mut h = vec![("Accept", ACCEPT_MANIFESTS)];
    if let Some(a) = auth {
        h.push(("Authorization", a));
    }
    http::request(addr, "GET", path, &h, b"")
}

#[test]
fn access_follows_the_mirrored_content_not_the_path() {
    let upstream = TestPier::start();
    let img = pier_e2e::push_image(upstream.addr, "library/app", Some("v1"), &[b"hub layer"]);

    let mut ex = RbacExample::new();
    ex.toml.push_str(&format!(
        "\n[[upstreams]]\nname = \"hub\"\nurl = \"{}\"\nnamespace = \"hub.example\"\n",
        upstream.url()
    ));
    let edge = ex.start();
    let admin = basic("admin", "admin-pass");

    // The system admin fills the cache under hub/.
    let r = get_manifest_as(edge.addr, &admin, "hub/library/app", "v1");
    r.expect_status(200, "admin pulls hub/library/app");
    assert_eq!(r.header("Docker-Content-Digest"), Some(img.digest.as_str()));

    // Anonymous: refused by the prefix name, and by `?ns=` (a cache hit now).
    get_ns(edge.addr, None, "/v2/hub/library/app/manifests/v1").expect_error(
        401,
        "UNAUTHORIZED",
        "anonymous hub/library/app",
    );
    let ns_path = "/v2/library/app/manifests/v1?ns=hub.example";
    let r = get_ns(edge.addr, None, ns_path);
    r.expect_error(401, "UNAUTHORIZED", "anonymous library/app?ns=hub.example");
    let challenge = r.header("WWW-Authenticate").unwrap_or_default().to_owned();
    assert!(
        challenge.contains("scope=\"repository:hub/library/app:pull\""),
        "the challenge names the content's repository: {challenge}"
    );
    // A token for the public `library/app` does not open hub's content.
    let public = token(edge.addr, None, "repository:library/app:pull");
    get_ns(edge.addr, Some(&bearer(&public)), ns_path).expect_error(
        401,
        "DENIED",
        "a library/app token on library/app?ns=hub.example",
    );
    // An anonymous token asked for the challenge's scope grants nothing.
    let anon_hub = token(edge.addr, None, "repository:hub/library/app:pull");
    get_ns(edge.addr, Some(&bearer(&anon_hub)), ns_path).expect_error(
        401,
        "DENIED",
        "an anonymous hub/library/app token",
    );
    // Basic credentials of someone without access to hub (bob: developer in team only).
    let bob = basic("bob", "bob-pass");
    let r = get_ns(edge.addr, Some(&bob), ns_path);
    assert!(
        r.status == 403 || r.status == 401,
        "bob on library/app?ns=hub.example: {r}"
    );

    // The admin gets it by `?ns=` with Basic and with a token for the challenge's scope.
    let r = get_ns(edge.addr, Some(&admin), ns_path);
    r.expect_status(200, "admin on library/app?ns=hub.example");
    assert_eq!(r.header("Docker-Content-Digest"), Some(img.digest.as_str()));
    let t = token(
        edge.addr,
        Some(("admin", "admin-pass")),
        "repository:hub/library/app:pull",
    );
    get_ns(edge.addr, Some(&bearer(&t)), ns_path)
        .expect_status(200, "admin's hub/library/app token on ?ns=");

    // Nobody writes into the mirror's namespace, whatever the query says.
    for path in [
        "/v2/hub/library/app/manifests/v1?ns=bogus".to_owned(),
        "/v2/hub/library/app/manifests/v1".to_owned(),
        "/v2/library/app/manifests/v1?ns=hub.example".to_owned(),
    ] {
        let r = http::request(
            edge.addr,
            "PUT",
            &path,
            &[
                ("Authorization", &admin),
                ("Content-Type", "application/vnd.oci.image.manifest.v1+json"),
            ],
            &img.manifest,
        );
        r.expect_error(405, "UNSUPPORTED", &format!("admin PUT {path}"));
    }
}

/// An edge fleet of two nodes: A with the RBAC example, B with no access control. B pulls
/// `hub/library/app` (so B holds every blob); on A, anonymous clients and accounts
/// without rights on `hub` still get nothing of it, the blob included: peers move
/// bytes, each node authorizes its own clients. The admin gets it through A.
#[test]
fn a_peer_holding_the_content_opens_nothing_on_a_node_with_access_control() {
    const KEY: &str = "fleet-access-test-key-0123456789abcdef0123456789";
    let upstream = TestPier::start();
    let img = pier_e2e::push_image(upstream.addr, "library/app", Some("v1"), &[b"fleet layer"]);
    let layer_digest = img.layer_digests[0].clone();
    let (pa, pb) = (pier_e2e::free_port(), pier_e2e::free_port());
    let fleet = |me: u16| {
        format!(
            "\n[[upstreams]]\nname = \"hub\"\nurl = \"{}\"\n\n[fleet]\nlisten = \"127.0.0.1:{me}\"\n\
             advertise = \"http://127.0.0.1:{me}\"\n\
             peers = [\"http://127.0.0.1:{pa}\", \"http://127.0.0.1:{pb}\"]\n\
             secret = {KEY:?}\nhealth_interval = \"500ms\"\n",
            upstream.url()
        )
    };
    let b_dir = tempfile::TempDir::new().unwrap();
    let b_cfg = b_dir.path().join("pier.toml");
    std::fs::write(&b_cfg, fleet(pb)).unwrap();
    let b = TestPier::builder().arg("--config").arg(&b_cfg).start();
    let mut ex = RbacExample::new();
    ex.toml.push_str(&fleet(pa));
    let a = ex.start();

    // B (no access control) fills its cache: every blob is on B now.
    get_ns(b.addr, None, "/v2/hub/library/app/manifests/v1").expect_status(200, "B: manifest");
    let blob_path = format!("/v2/hub/library/app/blobs/{layer_digest}");
    let r = http::get(b.addr, &blob_path);
    r.expect_status(200, "B: blob");

    // On A: anonymous, an anonymous token, and bob (no rights on hub) get nothing.
    get_ns(a.addr, None, &blob_path).expect_error(401, "UNAUTHORIZED", "anonymous blob on A");
    get_ns(a.addr, None, "/v2/hub/library/app/manifests/v1").expect_error(
        401,
        "UNAUTHORIZED",
        "anonymous manifest on A",
    );
    let anon = token(a.addr, None, "repository:hub/library/app:pull");
    get_ns(a.addr, Some(&bearer(&anon)), &blob_path).expect_error(
        401,
        "DENIED",
        "an anonymous token's blob on A",
    );
    let bob = token(
        a.addr,
        Some(("bob", "bob-pass")),
        "repository:hub/library/app:pull",
    );
    get_ns(a.addr, Some(&bearer(&bob)), &blob_path).expect_error(
        401,
        "DENIED",
        "bob's token: blob on A",
    );
    let r = get_ns(a.addr, Some(&basic("bob", "bob-pass")), &blob_path);
    assert!(r.status == 401 || r.status == 403, "bob's Basic on A: {r}");
    assert!(
        r.body != b"fleet layer",
        "bob got the blob's bytes through A"
    );

    // The admin gets it through A, byte-exact, wherever A found it.
    let admin = basic("admin", "admin-pass");
    let r = get_ns(a.addr, Some(&admin), &blob_path);
    r.expect_status(200, "admin: blob on A");
    assert_eq!(pier_e2e::sha256_digest(&r.body), layer_digest);
}
