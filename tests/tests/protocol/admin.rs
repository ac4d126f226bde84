//! The admin listener: health, readiness, Prometheus metrics.

use super::*;

/// Sum of every counter sample (name ending `_total`) whose name contains `needle`
/// (labels ignored).
fn sum_samples(text: &str, needle: &str) -> f64 {
    text.lines()
        .filter(|l| !l.starts_with('#') && !l.trim().is_empty())
        .filter_map(|l| {
            let name_end = l.find(['{', ' ']).unwrap_or(l.len());
            let name = &l[..name_end];
            if !name.contains(needle) || !name.ends_with("_total") {
                return None;
            }
            let rest = &l[name_end..];
            let rest = match rest.strip_prefix('{') {
                Some(r) => r.rsplit_once('}').map(|(_, v)| v)?,
                None => rest,
            };
            rest.split_whitespace().next()?.parse::<f64>().ok()
        })
        .sum()
}

#[test]
fn health_and_readiness() {
    let p = TestPier::start();
    http::get(p.admin_addr, "/healthz").expect_status(200, "GET /healthz");
    http::get(p.admin_addr, "/readyz").expect_status(200, "GET /readyz");
    let r = http::get(p.admin_addr, "/no-such-admin-endpoint");
    assert_eq!(r.status, 404, "unknown admin path\n{r}");
}

#[test]
fn metrics_count_requests() {
    let p = TestPier::start();
    let before = http::get(p.admin_addr, "/metrics");
    before.expect_status(200, "GET /metrics");
    let ct = before.require_header("content-type", "GET /metrics");
    assert!(
        ct.starts_with("text/plain") || ct.contains("openmetrics"),
        "metrics Content-Type {ct:?}"
    );
    let text = before.text();
    assert!(
        text.contains("# TYPE "),
        "no # TYPE lines in metrics:\n{text}"
    );
    for line in text
        .lines()
        .filter(|l| !l.starts_with('#') && !l.trim().is_empty())
    {
        let name_ok = line
            .chars()
            .next()
            .is_some_and(|c| c.is_ascii_alphabetic() || c == '_' || c == ':');
        assert!(name_ok, "not a Prometheus sample line: {line:?}");
    }
    let n0 = sum_samples(&text, "request");
    for _ in 0..7 {
        p.get("/v2/").expect_status(200, "GET /v2/");
    }
    p.get("/v2/no/such/tags/list");
    let after = http::get(p.admin_addr, "/metrics");
    after.expect_status(200, "GET /metrics again");
    let n1 = sum_samples(&after.text(), "request");
    // 8 registry requests; a server may also count the /metrics request itself
    assert!(
        (8.0..=9.0).contains(&(n1 - n0)),
        "request metrics grew by {} after 8 requests (before {n0}, after {n1}):\n{}",
        n1 - n0,
        after.text()
    );
}
