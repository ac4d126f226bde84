//! tags/list and _catalog with pagination.

use serde_json::json;

use super::*;

const REPO: &str = "test/listing";

fn tag_all(p: &TestPier, repo: &str, tags: &[&str]) {
    let img = push_image(p.addr, repo, None, &[b"listing layer"]);
    for t in tags {
        push_manifest(p.addr, repo, t, media::OCI_MANIFEST, &img.manifest)
            .expect_status(201, "PUT tag");
    }
}

#[test]
fn tags_list_all_sorted() {
    let p = TestPier::start();
    tag_all(&p, REPO, &["c", "a", "e", "b", "d", "v1.0", "latest"]);
    let r = p.get(&format!("/v2/{REPO}/tags/list"));
    r.expect_status(200, "tags/list");
    assert_eq!(
        r.json(),
        json!({"name": REPO, "tags": ["a", "b", "c", "d", "e", "latest", "v1.0"]}),
        "tags/list body\n{r}"
    );
    assert!(
        r.header("link").is_none(),
        "no Link when everything fits\n{r}"
    );
    let ct = r.require_header("content-type", "tags/list");
    assert!(
        ct.starts_with("application/json"),
        "tags/list Content-Type {ct:?}"
    );
}

#[test]
fn tags_list_pagination() {
    let p = TestPier::start();
    tag_all(&p, REPO, &["c", "a", "e", "b", "d"]);

    let r = p.get(&format!("/v2/{REPO}/tags/list?n=2"));
    r.expect_status(200, "tags/list?n=2");
    assert_eq!(r.json()["tags"], json!(["a", "b"]), "first page\n{r}");
    assert_eq!(r.json()["name"], json!(REPO));
    r.expect_header(
        "link",
        &format!("</v2/{REPO}/tags/list?n=2&last=b>; rel=\"next\""),
        "first page Link",
    );
    let next = next_link(&r).unwrap_or_else(|| panic!("first page without Link\n{r}"));
    assert!(
        next.starts_with(&format!("/v2/{REPO}/tags/list?")),
        "Link target {next:?}"
    );
    let q = query_params(&next);
    assert!(
        q.contains(&("n".into(), "2".into())),
        "Link {next:?} should keep n=2"
    );
    assert!(
        q.contains(&("last".into(), "b".into())),
        "Link {next:?} should say last=b"
    );

    let r = p.get(&next);
    r.expect_status(200, "second page via Link");
    assert_eq!(r.json()["tags"], json!(["c", "d"]), "second page\n{r}");
    let next = next_link(&r).unwrap_or_else(|| panic!("second page without Link\n{r}"));
    assert!(
        query_params(&next).contains(&("last".into(), "d".into())),
        "Link {next:?}"
    );

    let r = p.get(&next);
    r.expect_status(200, "third page");
    assert_eq!(r.json()["tags"], json!(["e"]), "third page\n{r}");
    assert!(
        next_link(&r).is_none(),
        "last page must not have a Link\n{r}"
    );

    let r = p.get(&format!("/v2/{REPO}/tags/list?last=c"));
    r.expect_status(200, "tags/list?last=c");
    assert_eq!(r.json()["tags"], json!(["d", "e"]), "last=c without n\n{r}");

    let r = p.get(&format!("/v2/{REPO}/tags/list?n=2&last=b"));
    r.expect_status(200, "tags/list?n=2&last=b");
    assert_eq!(r.json()["tags"], json!(["c", "d"]), "n=2&last=b\n{r}");

    // `last` need not be an existing tag
    let r = p.get(&format!("/v2/{REPO}/tags/list?n=10&last=bb"));
    r.expect_status(200, "tags/list?last=bb");
    assert_eq!(r.json()["tags"], json!(["c", "d", "e"]), "last=bb\n{r}");

    let r = p.get(&format!("/v2/{REPO}/tags/list?last=zzz"));
    r.expect_status(200, "tags/list?last=zzz");
    assert_eq!(r.json()["tags"], json!([]), "last after every tag\n{r}");
    assert!(
        next_link(&r).is_none(),
        "empty page must not have a Link\n{r}"
    );

    let r = p.get(&format!("/v2/{REPO}/tags/list?n=5"));
    r.expect_status(200, "tags/list?n=5");
    assert_eq!(
        r.json()["tags"],
        json!(["a", "b", "c", "d", "e"]),
        "n equal to the count\n{r}"
    );
    assert!(
        next_link(&r).is_none(),
        "n equal to the count must not have a Link\n{r}"
    );
}

#[test]
fn tags_list_unknown_repository() {
    let p = TestPier::start();
    p.get("/v2/does/not/exist/tags/list").expect_error(
        404,
        "NAME_UNKNOWN",
        "tags/list of an unknown repository",
    );
}

#[test]
fn catalog_pagination() {
    let p = TestPier::start();
    for repo in ["zeta", "alpha/one", "beta", "alpha/two", "gamma"] {
        push_image(p.addr, repo, Some("latest"), &[b"catalog layer"]);
    }
    let r = p.get("/v2/_catalog");
    r.expect_status(200, "_catalog");
    assert_eq!(
        r.json(),
        json!({"repositories": ["alpha/one", "alpha/two", "beta", "gamma", "zeta"]}),
        "_catalog\n{r}"
    );
    assert!(next_link(&r).is_none(), "no Link when everything fits\n{r}");

    let r = p.get("/v2/_catalog?n=2");
    r.expect_status(200, "_catalog?n=2");
    assert_eq!(
        r.json()["repositories"],
        json!(["alpha/one", "alpha/two"]),
        "first page\n{r}"
    );
    let next = next_link(&r).unwrap_or_else(|| panic!("first page without Link\n{r}"));
    assert!(next.starts_with("/v2/_catalog?"), "Link target {next:?}");
    let q = query_params(&next);
    assert!(
        q.contains(&("n".into(), "2".into())),
        "Link {next:?} should keep n=2"
    );
    assert!(
        q.contains(&("last".into(), "alpha/two".into()))
            || q.contains(&("last".into(), "alpha%2Ftwo".into())),
        "Link {next:?} should say last=alpha/two"
    );
    let r = p.get(&next);
    r.expect_status(200, "second page");
    assert_eq!(
        r.json()["repositories"],
        json!(["beta", "gamma"]),
        "second page\n{r}"
    );
    let next = next_link(&r).unwrap_or_else(|| panic!("second page without Link\n{r}"));
    let r = p.get(&next);
    r.expect_status(200, "third page");
    assert_eq!(r.json()["repositories"], json!(["zeta"]), "third page\n{r}");
    assert!(
        next_link(&r).is_none(),
        "last page must not have a Link\n{r}"
    );

    let r = p.get("/v2/_catalog?last=beta");
    r.expect_status(200, "_catalog?last=beta");
    assert_eq!(
        r.json()["repositories"],
        json!(["gamma", "zeta"]),
        "last=beta\n{r}"
    );
}

#[test]
fn catalog_empty_registry() {
    let p = TestPier::start();
    let r = p.get("/v2/_catalog");
    r.expect_status(200, "_catalog on an empty registry");
    let repos = r.json()["repositories"].clone();
    assert!(
        repos.as_array().is_some_and(|a| a.is_empty()),
        "empty catalog should be []\n{r}"
    );
}
