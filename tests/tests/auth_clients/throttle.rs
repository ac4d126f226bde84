//! Password guessing and revocation abuse against a real gateway: wrong passwords for an
//! account from one address end in `429` with `Retry-After` and no further password
//! check, on `/v2/`, both token endpoint flows and the admin API alike, while the account
//! keeps working from another address; `X-Forwarded-For` names the client only behind a
//! trusted proxy; revocations are rate limited per address, anonymous tokens are not
//! stored, and revocations of expired tokens leave the file without a restart.
//!
//! Two client addresses without a proxy: Linux routes all of 127.0.0.0/8 to loopback, so
//! a socket bound to 127.0.0.2 reaches the server from another address.

use std::io::{BufReader, Write};
use std::net::{IpAddr, SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use pier_e2e::http::{self, Response};
use socket2::{Domain, Socket, Type};

use crate::clients_support::TestImage;
use crate::support::*;

const GUESSER: [u8; 4] = [127, 0, 0, 1];
const ELSEWHERE: [u8; 4] = [127, 0, 0, 2];

/// One HTTP/1.1 request from a socket bound to `local`.
fn request_from(
    local: [u8; 4],
    addr: SocketAddr,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &[u8],
) -> Response {
    let sock = Socket::new(Domain::IPV4, Type::STREAM, None).expect("socket");
    sock.bind(&SocketAddr::from((local, 0)).into())
        .unwrap_or_else(|e| panic!("bind {}: {e}", IpAddr::from(local)));
    sock.connect_timeout(&addr.into(), Duration::from_secs(5))
        .unwrap_or_else(|e| panic!("connect {addr} from {}: {e}", IpAddr::from(local)));
    let mut s: TcpStream = sock.into();
    s.set_read_timeout(Some(Duration::from_secs(60))).unwrap();
    let mut head = format!(
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\nContent-Length: {}\r\n",
        body.len()
    );
    for (k, v) in headers {
        head.push_str(&format!("{k}: {v}\r\n"));
    }
    head.push_str("\r\n");
    s.write_all(head.as_bytes()).unwrap();
    s.write_all(body).unwrap();
    http::read_response(&mut BufReader::new(s), method == "HEAD")
        .unwrap_or_else(|e| panic!("{method} {path} from {}: {e}", IpAddr::from(local)))
}

/// `GET /v2/` with Basic credentials from `local`, with more headers.
fn v2_from(
    local: [u8; 4],
    addr: SocketAddr,
    who: (&str, &str),
    extra: &[(&str, &str)],
) -> Response {
    let auth = basic(who);
    let mut h = vec![("Authorization", auth.as_str())];
    h.extend_from_slice(extra);
    request_from(local, addr, "GET", "/v2/", &h, b"")
}

/// Asserts a throttled answer: 429, `Retry-After` of at least a second, the error code.
#[track_caller]
fn assert_throttled(r: &Response, what: &str) -> u64 {
    r.expect_error(429, "TOOMANYREQUESTS", what);
    let after: u64 = r
        .require_header("retry-after", what)
        .parse()
        .unwrap_or_else(|e| panic!("{what}: Retry-After is no number ({e})\n{r}"));
    assert!(
        (1..=15 * 60).contains(&after),
        "{what}: Retry-After {after}\n{r}"
    );
    after
}

/// The value of an unlabelled (or fully labelled) sample on the admin `/metrics`.
fn metric(admin: SocketAddr, sample: &str) -> u64 {
    let m = http::get(admin, "/metrics");
    m.expect_status(200, "GET /metrics");
    let text = m.text();
    text.lines()
        .find_map(|l| {
            l.strip_prefix(sample)?
                .strip_prefix(' ')?
                .trim()
                .parse()
                .ok()
        })
        .unwrap_or_else(|| panic!("no sample {sample} on /metrics\n{text}"))
}

const FAILURES: &str = "pier_auth_login_failures_total";
const THROTTLED: &str = "pier_auth_login_throttled_total{scope=\"account\"}";

#[test]
fn guessing_bobs_password_is_throttled_from_that_address_only() {
    let rb = RbacPier::start();
    let (addr, admin) = (rb.addr, rb.admin_addr);
    // bcrypt's cost, for comparison: one wrong password.
    let t = Instant::now();
    v2_from(GUESSER, addr, ("bob", "guess-0"), &[]).expect_status(401, "a wrong password");
    let bcrypt = t.elapsed();
    for i in 1..5 {
        v2_from(GUESSER, addr, ("bob", &format!("guess-{i}")), &[]).expect_error(
            401,
            "UNAUTHORIZED",
            "a wrong password",
        );
    }
    assert_eq!(metric(admin, FAILURES), 5);

    // From now on, refused before any password check: fast, and the failure count
    // (which only a check moves) stands still. The right password too.
    let t = Instant::now();
    for i in 5..25 {
        let r = v2_from(GUESSER, addr, ("bob", &format!("guess-{i}")), &[]);
        assert_throttled(&r, "guessing on /v2/");
    }
    let per_throttled = t.elapsed() / 20;
    assert_throttled(
        &v2_from(GUESSER, addr, BOB, &[]),
        "bob's own password, from the guesser",
    );
    assert_eq!(
        metric(admin, FAILURES),
        5,
        "no password was checked while throttled"
    );
    assert_eq!(metric(admin, THROTTLED), 21);
    eprintln!("a bcrypt check answered in {bcrypt:?}, a throttled guess in {per_throttled:?}");

    // The token endpoint, both flows.
    let r = request_from(
        GUESSER,
        addr,
        "GET",
        "/auth/token?service=pier&scope=repository:team/app:pull",
        &[("Authorization", &basic(("bob", "guess-x")))],
        b"",
    );
    assert_throttled(&r, "GET /auth/token");
    let v = r.json();
    assert_eq!(v["error"], "temporarily_unavailable", "OAuth2-shaped\n{r}");
    assert!(
        v["error_description"]
            .as_str()
            .unwrap()
            .contains("failed logins"),
        "{r}"
    );
    let r = request_from(
        GUESSER,
        addr,
        "POST",
        "/auth/token",
        &[("Content-Type", "application/x-www-form-urlencoded")],
        b"grant_type=password&username=bob&password=guess-y&service=pier",
    );
    assert_throttled(&r, "POST /auth/token (password grant)");
    assert!(r.json()["error"].is_string(), "{r}");
    assert_eq!(metric(admin, FAILURES), 5);

    // bob is not locked out: from another address his password works, on every path.
    v2_from(ELSEWHERE, addr, BOB, &[]).expect_status(200, "bob from another address");
    let r = request_from(
        ELSEWHERE,
        addr,
        "POST",
        "/auth/token",
        &[("Content-Type", "application/x-www-form-urlencoded")],
        b"grant_type=password&username=bob&password=bob-pass&service=pier",
    );
    r.expect_status(200, "bob's password grant from another address");
    // Nor is alice from the guesser's address (5 failures there, far from its limit).
    v2_from(GUESSER, addr, ALICE, &[]).expect_status(200, "alice from the guesser's address");

    // The admin API: the same throttle on its Basic checks.
    let api = |local, who: (&str, &str)| {
        request_from(
            local,
            admin,
            "GET",
            "/api/v1/repositories",
            &[("Authorization", &basic(who))],
            b"",
        )
    };
    for i in 0..5 {
        let guess = format!("nope-{i}");
        api(GUESSER, ("admin", &guess)).expect_status(401, "admin API, wrong");
    }
    let r = api(GUESSER, ("admin", "nope-5"));
    r.expect_status(429, "admin API, guessing");
    assert!(r.header("retry-after").is_some(), "{r}");
    assert!(
        r.json()["error"]
            .as_str()
            .unwrap()
            .contains("failed logins"),
        "{r}"
    );
    let r = request_from(
        GUESSER,
        admin,
        "POST",
        "/plugins/reload",
        &[("Authorization", &basic(ADMIN))],
        b"",
    );
    r.expect_status(429, "an admin endpoint outside the API, from the guesser");
    assert!(r.header("retry-after").is_some(), "{r}");
    api(ELSEWHERE, ADMIN).expect_status(200, "admin from another address");
    assert_eq!(metric(admin, FAILURES), 10);

    // The audit log says when throttling started, once per key.
    let log = std::fs::read_to_string(rb.log_path()).unwrap();
    let started: Vec<&str> = log
        .lines()
        .filter(|l| l.contains("login throttled"))
        .collect();
    assert_eq!(started.len(), 2, "bob and admin\n{}", started.join("\n"));
    assert!(
        started
            .iter()
            .all(|l| l.contains("audit") && l.contains("127.0.0.1")),
        "{}",
        started.join("\n")
    );
}

#[test]
fn forwarded_addresses_count_only_behind_a_trusted_proxy() {
    // The proxy is 127.0.0.1; 127.0.0.2 is a client talking to Pier directly.
    let rb = RbacPier::start_with(None, "trusted_proxies = [\"127.0.0.1\"]", "");
    let (addr, admin) = (rb.addr, rb.admin_addr);
    let via = |client: &str, who: (&str, &str)| {
        v2_from(GUESSER, addr, who, &[("X-Forwarded-For", client)])
    };
    for i in 0..5 {
        // The guesser's own claims left of its address change nothing.
        let (xff, guess) = (format!("10.9.9.{i}, 192.0.2.66"), format!("guess-{i}"));
        via(&xff, ("bob", &guess)).expect_status(401, "guess via the proxy");
    }
    assert_throttled(
        &via("192.0.2.66", ("bob", "guess-5")),
        "the guesser behind the proxy",
    );
    via("192.0.2.10", BOB).expect_status(200, "bob behind the same proxy, his own address");
    v2_from(GUESSER, addr, BOB, &[]).expect_status(200, "the proxy itself, no header");

    // A client that is no trusted proxy cannot pick its address with the header.
    for i in 0..5 {
        let xff = format!("198.51.100.{i}");
        v2_from(
            ELSEWHERE,
            addr,
            ("alice", "guess"),
            &[("X-Forwarded-For", &xff)],
        )
        .expect_status(401, "a direct guesser claiming addresses");
    }
    let r = v2_from(
        ELSEWHERE,
        addr,
        ("alice", "guess"),
        &[("X-Forwarded-For", "198.51.100.99")],
    );
    assert_throttled(&r, "a direct guesser is keyed by its own address");
    assert_eq!(metric(admin, FAILURES), 10);
}

fn revoke_from(local: [u8; 4], addr: SocketAddr, token: &str) -> Response {
    request_from(
        local,
        addr,
        "POST",
        "/auth/revoke",
        &[("Content-Type", "application/x-www-form-urlencoded")],
        format!("token={}", pct(token)).as_bytes(),
    )
}

#[test]
fn revocations_are_rate_limited_per_address_and_anonymous_tokens_are_not_kept() {
    let rb = RbacPier::start();
    let (addr, admin) = (rb.addr, rb.admin_addr);
    let file = rb.pier.root.join("pier").join("revoked-tokens");
    let img = TestImage::new("1", 1);
    push_image_as(addr, &basic(ADMIN), "library/app", "1", &img);

    // An anonymous token grants what anyone gets for the asking: revoking it is
    // answered, and nothing is kept.
    let anon = token(addr, None, &["repository:library/app:pull"]);
    revoke_from(GUESSER, addr, &anon).expect_status(200, "revoke an anonymous token");
    assert_eq!(
        std::fs::read_to_string(&file).unwrap(),
        "",
        "nothing stored"
    );
    manifest_as(addr, &bearer(&anon), "library/app", "1")
        .expect_status(200, "an anonymous token is as good as a fresh one");

    // 30 a minute per address (1 used above); then 429 with Retry-After.
    let carol = token(addr, Some(CAROL), &[]);
    for i in 1..30 {
        revoke_from(GUESSER, addr, &carol).expect_status(200, &format!("revocation {i}"));
    }
    let r = revoke_from(GUESSER, addr, &carol);
    r.expect_error(429, "TOOMANYREQUESTS", "revocation 31 within a minute");
    let after: u64 = r
        .require_header("retry-after", "revocation 31")
        .parse()
        .unwrap();
    assert!((1..=2).contains(&after), "one more every 2 s: {after}\n{r}");
    let other = token(addr, Some(CAROL), &[]);
    revoke_from(ELSEWHERE, addr, &other).expect_status(200, "another address");
    manifest_as(addr, &bearer(&other), "library/app", "1").expect_error(
        401,
        "UNAUTHORIZED",
        "the token revoked from the other address",
    );
    assert_eq!(metric(admin, "pier_auth_revocations_limited_total"), 1);
}

#[test]
fn revocations_of_expired_tokens_leave_the_file_without_a_restart() {
    let rb = RbacPier::start_with_ttl(Some("2s"));
    let addr = rb.addr;
    let file = rb.pier.root.join("pier").join("revoked-tokens");
    let lines = || std::fs::read_to_string(&file).unwrap().lines().count();
    for _ in 0..3 {
        let t = token(addr, Some(CAROL), &[]);
        revoke_from(GUESSER, addr, &t).expect_status(200, "revoke");
    }
    assert_eq!(lines(), 3);
    std::thread::sleep(Duration::from_millis(3100));
    // The next revocation finds three dead lines beside one live one: rewritten.
    let live = token(addr, Some(CAROL), &["repository:team/app:pull"]);
    revoke_from(GUESSER, addr, &live).expect_status(200, "revoke");
    assert_eq!(lines(), 1, "{}", std::fs::read_to_string(&file).unwrap());
    manifest_as(addr, &bearer(&live), "team/app", "1").expect_error(
        401,
        "UNAUTHORIZED",
        "the live revocation still holds",
    );
}
