//! Raw HTTP against the RBAC example: the challenges, Basic and Bearer refusals, and a
//! catalog filtered to what the caller may `search`, with a token or with Basic auth.

use pier_e2e::Response;
use serde_json::json;

use crate::clients_support::*;
use crate::support::*;

/// `GET /v2/_catalog[?query]` with `Authorization: auth`; asserts 200, returns the names.
#[track_caller]
fn catalog_as(pier: &RbacPier, auth: &str, query: &str) -> (Vec<String>, Response) {
    let r = request_as(pier.addr, "GET", &format!("/v2/_catalog{query}"), auth);
    r.expect_status(200, &format!("GET /v2/_catalog{query} as {auth}"));
    let v = r.json();
    let names = v["repositories"]
        .as_array()
        .unwrap_or_else(|| panic!("no repositories array\n{r}"))
        .iter()
        .map(|n| n.as_str().expect("a name").to_owned())
        .collect();
    (names, r)
}

#[test]
fn catalog_lists_what_the_caller_may_search() {
    let pier = RbacPier::start();
    let addr = pier.addr;
    let admin = basic(ADMIN);
    for repo in ["team/app", "library/pub", "other/thing"] {
        push_image_as(addr, &admin, repo, "1", &TestImage::new("1", 1));
    }
    let all = ["library/pub", "other/thing", "team/app"];
    let carols = ["library/pub", "team/app"];

    // Without credentials: challenged for the catalog scope.
    let r = pier.get("/v2/_catalog");
    r.expect_error(401, "UNAUTHORIZED", "anonymous GET /v2/_catalog");
    assert_eq!(
        challenge(&r),
        format!(
            "Bearer realm=\"http://{}/auth/token\",service=\"pier\",scope=\"registry:catalog:*\"",
            pier.host()
        )
    );

    // With tokens for registry:catalog:*.
    let scope = ["registry:catalog:*"];
    for (who, want) in [
        (None, &["library/pub"][..]),
        (Some(CAROL), &carols[..]),
        (Some(ADMIN), &all[..]),
        (Some(BOB), &carols[..]),
        (Some(ROBOT_CI), &carols[..]),
    ] {
        let t = token(addr, who, &scope);
        let (names, _) = catalog_as(&pier, &bearer(&t), "");
        assert_eq!(names, want, "catalog seen by {who:?} with a token");
    }

    // With Basic credentials directly on /v2/_catalog.
    for (who, want) in [
        (CAROL, &carols[..]),
        (ADMIN, &all[..]),
        (ROBOT_CI, &carols[..]),
    ] {
        let (names, _) = catalog_as(&pier, &basic(who), "");
        assert_eq!(names, want, "catalog seen by {} with Basic", who.0);
    }

    // Paging applies to the filtered list: carol's first page of one is full.
    let (names, r) = catalog_as(&pier, &basic(CAROL), "?n=1");
    assert_eq!(names, ["library/pub"], "carol's first page");
    let link = r.require_header("link", "Link to carol's next page");
    assert!(
        link.contains("last=library%2Fpub") || link.contains("last=library/pub"),
        "{r}"
    );
    let (names, _) = catalog_as(&pier, &basic(CAROL), "?n=1&last=library/pub");
    assert_eq!(names, ["team/app"], "carol's second page");
}

#[test]
fn challenges_basic_and_bearer_refusals_over_raw_http() {
    let pier = RbacPier::start();
    let addr = pier.addr;
    let host = pier.host();
    let realm = format!("Bearer realm=\"http://{host}/auth/token\",service=\"pier\"");
    let img = TestImage::new("1", 1);
    push_image_as(addr, &basic(ADMIN), "team/app", "1", &img);

    // Challenges name the scope the request needs.
    let r = pier.get("/v2/");
    r.expect_error(401, "UNAUTHORIZED", "anonymous GET /v2/");
    assert_eq!(challenge(&r), realm, "challenge of /v2/");
    let r = pier.get("/v2/team/app/manifests/1");
    r.expect_error(401, "UNAUTHORIZED", "anonymous GET manifest");
    assert_eq!(
        challenge(&r),
        format!("{realm},scope=\"repository:team/app:pull\"")
    );
    let r = pier.request("POST", "/v2/team/app/blobs/uploads/", &[], b"");
    r.expect_error(401, "UNAUTHORIZED", "anonymous upload");
    assert_eq!(
        challenge(&r),
        format!("{realm},scope=\"repository:team/app:pull,push\"")
    );

    // Granted = requested ∩ allowed, in the OAuth2 answer's `scope`.
    let v = password_grant(
        addr,
        CAROL,
        "repository:team/app:pull,push repository:library/pub:pull repository:other/x:pull",
        false,
    );
    assert_eq!(
        v["scope"],
        json!("repository:team/app:pull repository:library/pub:pull")
    );
    assert!(
        v.get("refresh_token").is_none(),
        "no refresh token unless offline: {v}"
    );
    let v = password_grant(addr, ALICE, "repository:team/app:*", false);
    assert_eq!(v["scope"], json!("repository:team/app:*"));
    let v = password_grant(addr, BOB, "repository:team/app:*", false);
    assert_eq!(v["scope"], json!(""), "bob may not delete: no `*`");

    // A bad password at the token endpoint: 401 (GET and POST).
    token_get(addr, Some(("carol", "nope")), &["repository:team/app:pull"]).expect_error(
        401,
        "UNAUTHORIZED",
        "GET token with a bad password",
    );
    token_post(
        addr,
        &[
            ("grant_type", "password"),
            ("username", "carol"),
            ("password", "nope"),
            ("service", "pier"),
        ],
    )
    .expect_error(401, "UNAUTHORIZED", "POST token with a bad password");

    // Bearer: a token without the scope is refused with insufficient_scope.
    let t = token(addr, Some(CAROL), &["repository:team/app:pull,push"]);
    manifest_as(addr, &bearer(&t), "team/app", "1").expect_status(200, "carol pulls");
    let r = pier_e2e::http::request(
        addr,
        "PUT",
        "/v2/team/app/manifests/2",
        &[
            ("Authorization", &bearer(&t)),
            ("Content-Type", OCI_MANIFEST),
        ],
        &img.manifest,
    );
    r.expect_error(401, "DENIED", "carol's token PUTs a manifest");
    assert_eq!(
        challenge(&r),
        format!("{realm},scope=\"repository:team/app:pull,push\",error=\"insufficient_scope\"")
    );
    // A token for one repository does not open another.
    manifest_as(addr, &bearer(&t), "team/other", "1").expect_error(
        401,
        "DENIED",
        "carol's team/app token on team/other",
    );
    // A garbled token is an invalid token.
    let r = manifest_as(addr, "Bearer not.a.token", "team/app", "1");
    r.expect_error(401, "UNAUTHORIZED", "garbled token");
    assert!(challenge(&r).ends_with(",error=\"invalid_token\""), "{r}");

    // Basic on /v2/: decided per request; refusals are 403 DENIED with the reason.
    manifest_as(addr, &basic(CAROL), "team/app", "1").expect_status(200, "carol with Basic");
    let r = pier_e2e::http::request(
        addr,
        "PUT",
        "/v2/team/app/manifests/2",
        &[
            ("Authorization", &basic(CAROL)),
            ("Content-Type", OCI_MANIFEST),
        ],
        &img.manifest,
    );
    r.expect_error(403, "DENIED", "carol with Basic PUTs a manifest");
    assert!(
        r.text().contains("carol is guest in project team"),
        "the plugin's reason is in the body\n{r}"
    );
    let r = manifest_as(addr, &basic(ROBOT_CI), "other/x", "1");
    r.expect_error(403, "DENIED", "robot$ci with Basic on other/x");
    let r = manifest_as(addr, &basic(("carol", "nope")), "team/app", "1");
    r.expect_error(401, "UNAUTHORIZED", "Basic with a wrong password");
    assert_eq!(
        challenge(&r),
        format!("{realm},scope=\"repository:team/app:pull\"")
    );
}
