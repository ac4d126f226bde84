//! Connection hygiene: nothing a client does with its sockets holds Pier's resources
//! without a bound.

use std::fs;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use pier_e2e::{TestPier, http};

fn pier_with(limits: &str, extra: &[&str]) -> (TestPier, tempfile::TempDir) {
    let text = if limits.is_empty() {
        String::new()
    } else {
        format!("[limits]\n{limits}\n")
    };
    pier_with_config(&text, extra)
}

fn pier_with_config(text: &str, extra: &[&str]) -> (TestPier, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("pier.toml");
    fs::write(&cfg, text).unwrap();
    let pier = TestPier::builder()
        .arg("--config")
        .arg(&cfg)
        .args(extra.iter().copied())
        .start();
    (pier, dir)
}

/// Waits up to `within` for the server to close `s` (EOF, reset, or an error response
/// followed by EOF); returns when it did.
fn closed_by_server(s: &mut TcpStream, within: Duration) -> Option<Duration> {
    let start = Instant::now();
    s.set_read_timeout(Some(Duration::from_millis(200)))
        .unwrap();
    let mut buf = [0u8; 4096];
    while start.elapsed() < within {
        match s.read(&mut buf) {
            Ok(0) => return Some(start.elapsed()),
            Ok(_) => continue, // a 408 or similar before the close
            Err(e)
                if e.kind() == std::io::ErrorKind::WouldBlock
                    || e.kind() == std::io::ErrorKind::TimedOut =>
            {
                continue;
            }
            Err(_) => return Some(start.elapsed()),
        }
    }
    None
}

#[test]
fn silent_and_half_sent_connections_are_closed() {
    let (pier, _dir) = pier_with("header_read_timeout = \"1s\"", &[]);
    let mut conns = Vec::new();
    for i in 0..50 {
        let mut s = TcpStream::connect(pier.addr).unwrap();
        match i % 3 {
            0 => {} // nothing at all
            1 => s.write_all(b"GET /v2/ HTTP/1.1\r\nHost: x\r\n").unwrap(),
            _ => s.write_all(b"GE").unwrap(),
        }
        conns.push(s);
    }
    // A keep-alive connection that finished a request, then went idle.
    let mut idle = TcpStream::connect(pier.addr).unwrap();
    idle.write_all(b"GET /v2/ HTTP/1.1\r\nHost: x\r\n\r\n")
        .unwrap();
    conns.push(idle);
    for (i, s) in conns.iter_mut().enumerate() {
        assert!(
            closed_by_server(s, Duration::from_secs(10)).is_some(),
            "connection {i} still open 10 s after a 1 s header timeout"
        );
    }
    // The admin listener too.
    let mut s = TcpStream::connect(pier.admin_addr).unwrap();
    s.write_all(b"GET /metrics HTTP/1.1\r\n").unwrap();
    assert!(
        closed_by_server(&mut s, Duration::from_secs(10)).is_some(),
        "a half-sent admin request still open"
    );
    http::get(pier.addr, "/v2/").expect_status(200, "a real request afterwards");
}

#[test]
fn tls_connections_without_a_handshake_are_closed() {
    let certs = tempfile::tempdir().unwrap();
    let (cert, key) = pier_e2e::self_signed_cert(certs.path());
    let (pier, _dir) = pier_with(
        "tls_handshake_timeout = \"1s\"\nheader_read_timeout = \"1s\"",
        &[
            "--tls-cert",
            cert.to_str().unwrap(),
            "--tls-key",
            key.to_str().unwrap(),
        ],
    );
    // Nothing sent; half a ClientHello (a TLS record header promising more).
    let mut silent = TcpStream::connect(pier.addr).unwrap();
    let mut half = TcpStream::connect(pier.addr).unwrap();
    half.write_all(&[0x16, 0x03, 0x01, 0x02, 0x00, 0x01, 0x00])
        .unwrap();
    for (what, s) in [("silent", &mut silent), ("half a ClientHello", &mut half)] {
        assert!(
            closed_by_server(s, Duration::from_secs(10)).is_some(),
            "{what} TLS connection still open 10 s after a 1 s handshake timeout"
        );
    }
}

#[test]
fn connections_over_the_cap_get_a_clean_503() {
    let (pier, _dir) = pier_with("max_connections = 4", &[]);
    // Let the readiness probes' connections finish closing on a busy machine.
    std::thread::sleep(Duration::from_secs(1));
    let held: Vec<TcpStream> = (0..4)
        .map(|_| {
            let mut s = TcpStream::connect(pier.addr).unwrap();
            s.write_all(b"GET /v2/ HTTP/1.1\r\n").unwrap();
            s
        })
        .collect();
    std::thread::sleep(Duration::from_millis(300));
    let r = http::get(pier.addr, "/v2/");
    r.expect_error(503, "UNAVAILABLE", "the fifth connection");
    assert_eq!(r.header("Retry-After"), Some("1"), "{r}");
    // The probes on the admin listener keep answering.
    http::get(pier.admin_addr, "/healthz").expect_status(200, "admin while full");
    drop(held);
    assert!(
        pier_e2e::wait_until(Duration::from_secs(5), Duration::from_millis(100), || {
            http::try_request(pier.addr, "GET", "/v2/", &[], b"").is_ok_and(|r| r.status == 200)
        }),
        "served again once the held connections closed"
    );
}

/// A connection whose receive buffer is tiny and never read: the server can send a few
/// kilobytes, then every write waits.
fn non_reading_get(addr: SocketAddr, path: &str) -> TcpStream {
    let sock = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
    sock.set_recv_buffer_size(4096).unwrap();
    sock.connect(&addr.into()).unwrap();
    let mut s: TcpStream = sock.into();
    s.write_all(format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\n\r\n").as_bytes())
        .unwrap();
    s
}

#[test]
fn clients_that_never_read_stall_no_one_else() {
    // More non-reading clients than the runtime has blocking threads (512).
    const STALLED: usize = 600;
    // The defaults: nothing to configure for this.
    let (pier, _dir) = pier_with("", &[]);
    let data = pier_e2e::random_bytes(4 << 20);
    let digest = pier_e2e::push_blob(pier.addr, "team/big", &data);
    let path = format!("/v2/team/big/blobs/{digest}");
    let stalled: Vec<TcpStream> = (0..STALLED)
        .map(|_| non_reading_get(pier.addr, &path))
        .collect();
    std::thread::sleep(Duration::from_secs(2));
    // Everyone else: a blob GET, a manifest push and an upload start all answer.
    let r = http::try_request_timeout(pier.addr, "GET", &path, &[], b"", Duration::from_secs(20))
        .expect("a blob GET while 600 clients don't read");
    r.expect_status(200, "blob GET beside stalled readers");
    assert!(r.body == data, "the blob's bytes");
    let pushed = pier_e2e::push_image(pier.addr, "team/other", Some("v1"), &[b"small layer"]);
    let r = http::try_request_timeout(
        pier.addr,
        "GET",
        &format!("/v2/team/other/manifests/{}", pushed.digest),
        &[("Accept", pier_e2e::ACCEPT_MANIFESTS)],
        b"",
        Duration::from_secs(20),
    )
    .expect("a manifest GET while 600 clients don't read");
    r.expect_status(200, "manifest GET beside stalled readers");
    drop(stalled);
}

#[test]
fn a_client_that_stops_reading_is_dropped_after_the_send_timeout() {
    let (pier, _dir) = pier_with("send_timeout = \"2s\"", &[]);
    let data = pier_e2e::random_bytes(8 << 20);
    let digest = pier_e2e::push_blob(pier.addr, "team/big", &data);
    let mut s = non_reading_get(pier.addr, &format!("/v2/team/big/blobs/{digest}"));
    std::thread::sleep(Duration::from_secs(5));
    // Reading now, the client gets what was buffered, then the server's close: far
    // less than the blob.
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let mut got = Vec::new();
    let _ = s.read_to_end(&mut got);
    assert!(
        got.len() < data.len(),
        "the whole blob arrived ({} bytes): the stalled send was never dropped",
        got.len()
    );
}

#[test]
fn an_upload_body_that_stalls_is_cut_off() {
    let (pier, _dir) = pier_with("body_idle_timeout = \"2s\"", &[]);
    let loc = pier_e2e::start_upload(pier.addr, "team/stall");
    let path = pier_e2e::strip_origin(&loc);
    let mut s = crate::support::patch_one_byte_of(pier.addr, &path, 100);
    let start = Instant::now();
    s.set_read_timeout(Some(Duration::from_secs(15))).unwrap();
    let mut got = Vec::new();
    let _ = s.read_to_end(&mut got);
    assert!(
        start.elapsed() < Duration::from_secs(12),
        "a stalled PATCH held its connection for {:?}",
        start.elapsed()
    );
    let text = String::from_utf8_lossy(&got);
    assert!(
        text.is_empty() || text.starts_with("HTTP/1.1 4"),
        "a stalled body gets a client error or a close: {text}"
    );
    // The session is still there and usable.
    http::get(pier.addr, &path).expect_status(204, "the session after a stalled PATCH");
}

/// A connection to `addr` from `source` (a loopback address).
fn connect_from(source: &str, addr: SocketAddr) -> TcpStream {
    let sock = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
    let from: SocketAddr = format!("{source}:0").parse().unwrap();
    sock.bind(&from.into()).unwrap();
    sock.connect(&addr.into()).unwrap();
    sock.into()
}

/// A connection from `source` that sends a half request and holds.
fn held_from(source: &str, addr: SocketAddr) -> TcpStream {
    let mut s = connect_from(source, addr);
    s.write_all(b"GET /v2/ HTTP/1.1\r\n").unwrap();
    s
}

/// The status line of a `GET /v2/` sent from `source` (a refused connection may be
/// answered before the request is written: the answer is read all the same).
fn status_from(source: &str, addr: SocketAddr) -> String {
    let mut s = connect_from(source, addr);
    let _ = s.write_all(b"GET /v2/ HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n");
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let mut got = Vec::new();
    let _ = s.read_to_end(&mut got);
    String::from_utf8_lossy(&got)
        .lines()
        .next()
        .unwrap_or_default()
        .to_owned()
}

#[test]
fn one_client_address_cannot_take_every_connection() {
    let (pier, _dir) = pier_with("max_connections_per_address = 3", &[]);
    // Let the readiness probes' connections finish closing on a busy machine.
    std::thread::sleep(Duration::from_secs(1));
    let held: Vec<TcpStream> = (0..3).map(|_| held_from("127.0.0.1", pier.addr)).collect();
    std::thread::sleep(Duration::from_millis(300));
    let r = http::get(pier.addr, "/v2/");
    r.expect_error(503, "UNAVAILABLE", "a fourth connection from one address");
    // Another client is served meanwhile.
    assert_eq!(
        status_from("127.0.0.2", pier.addr),
        "HTTP/1.1 200 OK",
        "a client at another address, while 127.0.0.1 holds its share"
    );
    drop(held);
    assert!(
        pier_e2e::wait_until(Duration::from_secs(5), Duration::from_millis(100), || {
            http::try_request(pier.addr, "GET", "/v2/", &[], b"").is_ok_and(|r| r.status == 200)
        }),
        "the address is served again once its connections closed"
    );
}

#[test]
fn a_trusted_proxy_is_not_held_to_one_client_share() {
    let (pier, _dir) = pier_with_config(
        "trusted_proxies = [\"127.0.0.1\"]\n[limits]\nmax_connections_per_address = 3\n",
        &[],
    );
    let held: Vec<TcpStream> = (0..6).map(|_| held_from("127.0.0.1", pier.addr)).collect();
    std::thread::sleep(Duration::from_millis(300));
    http::get(pier.addr, "/v2/").expect_status(200, "the balancer's seventh connection");
    // Everyone else is.
    let others: Vec<TcpStream> = (0..3).map(|_| held_from("127.0.0.3", pier.addr)).collect();
    std::thread::sleep(Duration::from_millis(300));
    assert!(
        status_from("127.0.0.3", pier.addr).starts_with("HTTP/1.1 503"),
        "a direct client over its share"
    );
    drop((held, others));
}

/// Reads HTTP/2 frames (answering the server's SETTINGS) until a GOAWAY; returns when it
/// came, or `None` if the connection stayed quiet for `within`.
fn goaway_within(s: &mut TcpStream, within: Duration) -> Option<Duration> {
    let start = Instant::now();
    s.set_read_timeout(Some(within)).unwrap();
    loop {
        let mut head = [0u8; 9];
        s.read_exact(&mut head).ok()?;
        let len = u32::from_be_bytes([0, head[0], head[1], head[2]]) as usize;
        let mut payload = vec![0u8; len];
        s.read_exact(&mut payload).ok()?;
        match (head[3], head[4]) {
            (0x7, _) => return Some(start.elapsed()),
            // SETTINGS without ACK: acknowledge it.
            (0x4, 0) => s.write_all(&[0, 0, 0, 0x4, 0x1, 0, 0, 0, 0]).ok()?,
            // PING without ACK: answer it (a client that does is alive).
            (0x6, 0) => {
                let mut pong = vec![0, 0, 8, 0x6, 0x1, 0, 0, 0, 0];
                pong.extend_from_slice(&payload);
                s.write_all(&pong).ok()?;
            }
            _ => {}
        }
        if start.elapsed() > within {
            return None;
        }
    }
}

#[test]
fn an_idle_http2_connection_gets_a_goaway() {
    // Keep-alive pings far apart: only the idle timeout can end this connection.
    let (pier, _dir) = pier_with("idle_timeout = \"2s\"\nh2_keepalive = \"1h\"", &["--h2c"]);
    let mut s = TcpStream::connect(pier.addr).unwrap();
    s.write_all(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n").unwrap();
    s.write_all(&[0, 0, 0, 0x4, 0, 0, 0, 0, 0]).unwrap();
    let took = goaway_within(&mut s, Duration::from_secs(20))
        .expect("an idle HTTP/2 connection got no GOAWAY within 20 s of a 2 s idle timeout");
    assert!(
        took >= Duration::from_secs(1),
        "GOAWAY after {took:?}: too soon for idle"
    );
    // A client that answers nothing more (not the GOAWAY's PING) is dropped all the same.
    assert!(
        closed_by_server(&mut s, Duration::from_secs(20)).is_some(),
        "the connection stays open 20 s after its GOAWAY"
    );
}

#[test]
fn a_long_download_is_not_idle() {
    let (pier, _dir) = pier_with("idle_timeout = \"1s\"", &[]);
    let data = pier_e2e::random_bytes(2 << 20);
    let digest = pier_e2e::push_blob(pier.addr, "team/big", &data);
    let mut s = non_reading_get(pier.addr, &format!("/v2/team/big/blobs/{digest}"));
    // Read slowly: the response takes several idle timeouts to deliver.
    let mut got = Vec::new();
    let mut buf = vec![0u8; 1 << 20];
    let start = Instant::now();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    while start.elapsed() < Duration::from_secs(60) {
        match s.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => got.extend_from_slice(&buf[..n]),
        }
        if got.len() > data.len() {
            break;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let body_start = got
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .expect("headers")
        + 4;
    assert!(
        start.elapsed() > Duration::from_secs(2),
        "the download was not slow enough to span idle timeouts ({:?})",
        start.elapsed()
    );
    assert_eq!(
        got.len() - body_start,
        data.len(),
        "a download in progress was cut as idle"
    );
    assert!(got[body_start..] == data[..], "the blob's bytes");
}
