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

/// A request's line and header lines (each with its line end), up to the blank line;
/// `None` when the connection ends first.
fn read_head(reader: &mut impl BufRead) -> Option<(String, Vec<String>)> {
    let mut line = String::new();
    if reader.read_line(&mut line).unwrap_or(0) == 0 {
        return None;
    }
    let mut headers = Vec::new();
    loop {
        let mut h = String::new();
        if reader.read_line(&mut h).unwrap_or(0) == 0 {
            return None;
        }
        if h == "\r\n" || h == "\n" {
            return Some((line, headers));
        }
        headers.push(h);
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
        let Some((line, _)) = read_head(&mut reader) else {
            return;
        };
        let request = line.trim().to_owned();
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

/// In front of the upstream: relays each request to it on a connection of its own
/// (`Connection: close`), blob bodies slowed to 64 KiB every 10 ms, and counts the blob
/// GETs in flight (request read to last byte sent), keeping the most seen at once.
struct Relay {
    addr: SocketAddr,
    in_flight: Arc<Mutex<(usize, usize)>>,
}

impl Relay {
    fn start(upstream: SocketAddr) -> Relay {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let in_flight = Arc::new(Mutex::new((0, 0)));
        let counts = in_flight.clone();
        thread::spawn(move || {
            for conn in listener.incoming().flatten() {
                let counts = counts.clone();
                thread::spawn(move || relay(conn, upstream, &counts));
            }
        });
        Relay { addr, in_flight }
    }

    fn most_at_once(&self) -> usize {
        self.in_flight.lock().unwrap().1
    }
}

fn relay(conn: TcpStream, upstream: SocketAddr, counts: &Mutex<(usize, usize)>) {
    use std::io::Read;
    let mut reader = BufReader::new(conn.try_clone().unwrap());
    let Some((line, headers)) = read_head(&mut reader) else {
        return;
    };
    let blob_get = line.starts_with("GET ") && line.contains("/blobs/");
    let mut head = line;
    for h in headers {
        if !h.to_ascii_lowercase().starts_with("connection:") {
            head.push_str(&h);
        }
    }
    head.push_str("Connection: close\r\n\r\n");
    let Ok(mut up) = TcpStream::connect(upstream) else {
        return;
    };
    if blob_get {
        let mut c = counts.lock().unwrap();
        c.0 += 1;
        c.1 = c.1.max(c.0);
    }
    let mut out = conn;
    // The whole answer first, then relayed slowly; a GET stops counting just before its
    // last byte goes out (Pier cannot have ended the fetch before it has that byte).
    let mut answer = Vec::new();
    let read = up
        .write_all(head.as_bytes())
        .and_then(|()| up.read_to_end(&mut answer));
    let (body, last) = answer.split_at(answer.len().saturating_sub(1));
    if read.is_ok() {
        for chunk in body.chunks(64 * 1024) {
            if out.write_all(chunk).is_err() {
                break;
            }
            if blob_get {
                thread::sleep(Duration::from_millis(10));
            }
        }
    }
    if blob_get {
        counts.lock().unwrap().0 -= 1;
    }
    let _ = out.write_all(last);
}

/// Preheating 10 images (two at a time, four blobs of each at a time) through a Pier
/// whose upstream has `max_concurrent_fetches = 2`: never more than 2 blob GETs reach the
/// upstream at once, and every image is cached (then served with the upstream gone).
#[test]
fn preheating_ten_images_keeps_to_max_concurrent_fetches() {
    let sk = Skopeo::new();
    let mut up = Upstream::start();
    let images: Vec<TestImage> = (0..10)
        .map(|i| TestImage::with_random_layers(&format!("v{i}"), &[1 << 20, 1 << 20]))
        .collect();
    for (i, img) in images.iter().enumerate() {
        up.push_image(&sk, &format!("library/pre{i}"), img);
    }
    let relay = Relay::start(up.addr());
    let (pier, _dir) = pier_with_config(&format!(
        "[[upstreams]]\nname = \"hub\"\nurl = \"http://{}\"\ndefault = true\nmax_concurrent_fetches = 2\n",
        relay.addr
    ));
    let names: Vec<String> = (0..10)
        .map(|i| format!("\"library/pre{i}:v{i}\""))
        .collect();
    let body = format!("{{\"images\": [{}]}}", names.join(", "));
    let r = pier_e2e::http::request(
        pier.admin_addr,
        "POST",
        "/api/v1/mirror/preheat",
        &[("Content-Type", "application/json")],
        body.as_bytes(),
    );
    r.expect_status(200, "preheat 10 images");
    let most = relay.most_at_once();
    assert!(
        most <= 2,
        "blob GETs in flight at the upstream at once: {most} (max_concurrent_fetches = 2)"
    );
    assert!(most >= 1, "the relay saw no blob GET");
    up.stop();
    for (i, img) in images.iter().enumerate() {
        for d in img.blob_digests() {
            let r = pier_e2e::http::get(pier.addr, &format!("/v2/library/pre{i}/blobs/{d}"));
            r.expect_status(200, &format!("pre{i}: {d} from the cache, upstream down"));
            assert_eq!(sha256_digest(&r.body), d);
        }
    }
}
