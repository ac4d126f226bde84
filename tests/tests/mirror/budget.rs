//! The upstream's pull budget through a real Pier: a `429` pauses every request to the
//! upstream for its `Retry-After`; cached tags are served meanwhile without asking, a cold
//! blob waits for the pause to end, and `/metrics` shows the pause.

use std::io::{BufRead, BufReader, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use pier_e2e::sha256_digest;

use crate::clients_support::*;
use crate::support::*;

/// In front of the upstream: a `307` to it for every request, or, while `limited`,
/// `429` with `Retry-After: 5` and Docker Hub's rate-limit headers. Logs each request.
struct Front {
    addr: SocketAddr,
    limited: Arc<AtomicBool>,
    log: Arc<Mutex<Vec<(Instant, String)>>>,
}

impl Front {
    fn start(upstream: SocketAddr) -> Front {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let limited = Arc::new(AtomicBool::new(false));
        let log = Arc::new(Mutex::new(Vec::new()));
        let (l, g) = (limited.clone(), log.clone());
        thread::spawn(move || {
            for conn in listener.incoming().flatten() {
                let (l, g) = (l.clone(), g.clone());
                thread::spawn(move || serve(conn, upstream, &l, &g));
            }
        });
        Front { addr, limited, log }
    }

    /// Requests that came at or after `since`.
    fn requests_since(&self, since: Instant) -> Vec<String> {
        let log = self.log.lock().unwrap();
        log.iter()
            .filter(|(at, _)| *at >= since)
            .map(|(_, line)| line.clone())
            .collect()
    }
}

/// Answers every request on one keep-alive connection.
fn serve(
    conn: TcpStream,
    upstream: SocketAddr,
    limited: &AtomicBool,
    log: &Mutex<Vec<(Instant, String)>>,
) {
    let mut out = conn.try_clone().unwrap();
    let mut reader = BufReader::new(conn);
    loop {
        let mut line = String::new();
        if reader.read_line(&mut line).unwrap_or(0) == 0 {
            return;
        }
        let request = line.trim().to_owned();
        loop {
            let mut h = String::new();
            if reader.read_line(&mut h).unwrap_or(0) == 0 {
                return;
            }
            if h == "\r\n" || h == "\n" {
                break;
            }
        }
        log.lock().unwrap().push((Instant::now(), request.clone()));
        let target = request.split(' ').nth(1).unwrap_or("/");
        let answer = if limited.load(Ordering::SeqCst) {
            "HTTP/1.1 429 Too Many Requests\r\nRetry-After: 5\r\nratelimit-limit: 100;w=21600\r\n\
             ratelimit-remaining: 0;w=21600\r\nContent-Length: 0\r\n\r\n"
                .to_owned()
        } else {
            format!(
                "HTTP/1.1 307 Temporary Redirect\r\nLocation: http://{upstream}{target}\r\n\
                 Content-Length: 0\r\n\r\n"
            )
        };
        if out.write_all(answer.as_bytes()).is_err() {
            return;
        }
    }
}

#[test]
fn a_429_pauses_the_upstream_while_cached_tags_are_served() {
    let sk = Skopeo::new();
    let up = Upstream::start();
    let cached = TestImage::new("v1", 1);
    let cold = TestImage::new("v1", 1);
    up.push_image(&sk, "library/cached", &cached);
    up.push_image(&sk, "library/cold", &cold);
    let front = Front::start(up.addr());
    let (pier, _dir) = pier_with_config(&format!(
        "[[upstreams]]\nname = \"hub\"\nurl = \"http://{}\"\ndefault = true\ntag_ttl = \"1s\"\n",
        front.addr
    ));
    let r = get_manifest(pier.addr, "library/cached", "v1");
    r.expect_status(200, "the first pull of the tag");
    assert_eq!(sha256_digest(&r.body), cached.manifest_digest);

    // The upstream starts answering 429 (Retry-After: 5); the TTL has passed.
    thread::sleep(Duration::from_millis(1100));
    front.limited.store(true, Ordering::SeqCst);
    let limited_at = Instant::now();
    let r = get_manifest(pier.addr, "library/cached", "v1");
    r.expect_status(200, "the cached tag when the upstream answers 429");
    assert_eq!(sha256_digest(&r.body), cached.manifest_digest);
    assert_eq!(
        front.requests_since(limited_at).len(),
        1,
        "the revalidation that met the 429"
    );
    let metrics = pier_e2e::http::get(pier.admin_addr, "/metrics");
    let text = String::from_utf8_lossy(&metrics.body);
    let pause = text
        .lines()
        .find(|l| l.starts_with("pier_upstream_pause_seconds{upstream=\"hub\"}"))
        .and_then(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .unwrap_or_else(|| panic!("no pause series:\n{text}"));
    assert!(pause > 3.0 && pause <= 5.0, "pause left: {pause}");
    assert!(
        text.contains("pier_upstream_pauses_total{upstream=\"hub\"} 1"),
        "{text}"
    );
    assert!(
        text.contains("pier_upstream_ratelimit_remaining{upstream=\"hub\"} 0"),
        "{text}"
    );

    // Meanwhile: the cached tag is served on every pull (past its TTL) and nothing is
    // asked upstream.
    for _ in 0..5 {
        thread::sleep(Duration::from_millis(400));
        let r = get_manifest(pier.addr, "library/cached", "v1");
        r.expect_status(200, "the cached tag during the pause");
        assert_eq!(sha256_digest(&r.body), cached.manifest_digest);
    }
    assert_eq!(
        front.requests_since(limited_at).len(),
        1,
        "requests to the upstream during its pause: {:?}",
        front.requests_since(limited_at)
    );

    // A cold tag during the pause: 429 TOOMANYREQUESTS with the time left, nothing asked
    // upstream; once the pause is over it is fetched.
    let r = get_manifest(pier.addr, "library/cold", "v1");
    r.expect_error(429, "TOOMANYREQUESTS", "a cold tag during the pause");
    let retry_after: u64 = r
        .header("retry-after")
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("no Retry-After\n{r}"));
    assert!((1..=5).contains(&retry_after), "Retry-After {retry_after}");
    assert_eq!(
        front.requests_since(limited_at).len(),
        1,
        "requests to the upstream during its pause: {:?}",
        front.requests_since(limited_at)
    );
    front.limited.store(false, Ordering::SeqCst);
    let wait_until = limited_at + Duration::from_millis(5100);
    if let Some(d) = wait_until.checked_duration_since(Instant::now()) {
        thread::sleep(d);
    }
    let r = get_manifest(pier.addr, "library/cold", "v1");
    r.expect_status(200, "the cold tag after the pause");
    assert_eq!(sha256_digest(&r.body), cold.manifest_digest);
    let r = get_manifest(pier.addr, "library/cached", "v1");
    r.expect_status(200, "the cached tag after the pause");
    assert!(
        front.requests_since(limited_at).len() > 1,
        "the upstream is asked again after its pause"
    );
}
