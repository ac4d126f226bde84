//! What every listener does before HTTP starts: a bound on concurrent connections
//! (answered with a clean 503 when full), accept errors backed off instead of retried in a
//! busy loop, a deadline for the first bytes and the TLS handshake, and a send timeout on
//! the socket so a client that stops reading is dropped, a cap per client address, and an
//! idle timeout once HTTP runs ([`drive`]). HTTP-level timers (header read, HTTP/2
//! keep-alive pings) are set on the hyper builders from the same [`Limits`].

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use hyper_util::server::graceful::GracefulConnection;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio_io_timeout::TimeoutStream;

/// The socket a connection is served on: writes that make no progress for the send
/// timeout fail the connection.
pub type Io = Pin<Box<TimeoutStream<TcpStream>>>;

/// Bounds on connections; every one has a default a user never needs to touch.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Limits {
    /// Concurrent connections on the registry listener; more are answered 503 and closed.
    pub max_connections: usize,
    /// Concurrent connections on the admin listener.
    pub admin_max_connections: usize,
    /// Concurrent connections from one client address (an IPv6 client's /64) on the
    /// registry listener; `trusted_proxies` are exempt (every client behind a balancer
    /// shares its address). 0 turns the cap off.
    pub max_connections_per_address: usize,
    /// A connection with no request in flight for this long is closed (HTTP/1.1
    /// keep-alive and HTTP/2 alike; HTTP/2 gets a GOAWAY).
    pub idle_timeout: Duration,
    /// A request's headers (and the first bytes of a connection) must arrive within this.
    pub header_read_timeout: Duration,
    /// The TLS handshake must finish within this.
    pub tls_handshake_timeout: Duration,
    /// A response write that makes no progress for this long drops the connection.
    pub send_timeout: Duration,
    /// HTTP/2: concurrent streams per connection.
    pub h2_max_concurrent_streams: u32,
    /// HTTP/2: a PING every this often; no answer within it closes the connection.
    pub h2_keepalive: Duration,
    /// A request body that sends nothing this long fails (a manifest must arrive whole).
    pub body_idle_timeout: Duration,
    /// An upload's body must bring at least this many bytes per second (over 30 s).
    pub upload_min_rate: u64,
}

impl Default for Limits {
    fn default() -> Limits {
        Limits {
            max_connections: 10_000,
            admin_max_connections: 256,
            max_connections_per_address: 1_024,
            idle_timeout: Duration::from_secs(120),
            header_read_timeout: Duration::from_secs(30),
            tls_handshake_timeout: Duration::from_secs(10),
            send_timeout: Duration::from_secs(60),
            h2_max_concurrent_streams: 128,
            h2_keepalive: Duration::from_secs(30),
            body_idle_timeout: Duration::from_secs(60),
            upload_min_rate: 1024,
        }
    }
}

/// Raises the soft limit on open files to the hard limit, so connection bounds, not the
/// kernel's default of 1,024, decide when Pier stops accepting.
pub fn raise_fd_limit() {
    match rlimit::increase_nofile_limit(u64::MAX) {
        Ok(n) => tracing::debug!(limit = n, "open files limit"),
        Err(e) => tracing::warn!(error = %e, "cannot raise the open files limit"),
    }
}

/// Open connections per client address (key: [`address_key`]).
type Counts = Arc<Mutex<HashMap<IpAddr, usize>>>;

/// Admission of connections to one listener.
pub struct Gate {
    listener: &'static str,
    permits: Arc<Semaphore>,
    max: usize,
    per_address: usize,
    exempt: crate::TrustedProxies,
    by_address: Counts,
    last_warning: Mutex<Option<Instant>>,
}

/// A connection's admission: released when the connection ends.
pub struct Admission {
    _permit: OwnedSemaphorePermit,
    address: Option<(IpAddr, Counts)>,
}

impl Drop for Admission {
    fn drop(&mut self) {
        if let Some((ip, map)) = self.address.take() {
            let mut map = map.lock().expect("gate poisoned");
            if let Some(n) = map.get_mut(&ip) {
                *n -= 1;
                if *n == 0 {
                    map.remove(&ip);
                }
            }
        }
    }
}

/// The key a client address is counted under: the address itself, or an IPv6 client's
/// /64 (one subscriber's prefix: its addresses cost an attacker nothing).
fn address_key(ip: IpAddr) -> IpAddr {
    match ip.to_canonical() {
        IpAddr::V6(v6) => {
            let bits = u128::from(v6) & !((1u128 << 64) - 1);
            IpAddr::V6(bits.into())
        }
        v4 => v4,
    }
}

impl Gate {
    /// A gate of `max` connections, at most `per_address` of them (0: no cap) from one
    /// client address other than the `exempt` proxies.
    pub fn new(
        listener: &'static str,
        max: usize,
        per_address: usize,
        exempt: crate::TrustedProxies,
    ) -> Gate {
        Gate {
            listener,
            permits: Arc::new(Semaphore::new(max)),
            max,
            per_address,
            exempt,
            by_address: Arc::default(),
            last_warning: Mutex::new(None),
        }
    }

    /// Held for the connection's life, or `None` when the listener, or this client
    /// address's share of it, is full.
    pub fn admit(&self, peer: IpAddr) -> Option<Admission> {
        let Some(permit) = self.permits.clone().try_acquire_owned().ok() else {
            self.warn("connection limit reached; refusing new connections", peer);
            return None;
        };
        if self.per_address == 0 || self.exempt.trusts(peer) {
            return Some(Admission {
                _permit: permit,
                address: None,
            });
        }
        let key = address_key(peer);
        let mut map = self.by_address.lock().expect("gate poisoned");
        let n = map.entry(key).or_insert(0);
        if *n >= self.per_address {
            drop(map);
            self.warn(
                "connection limit per client address reached; refusing",
                peer,
            );
            return None;
        }
        *n += 1;
        Some(Admission {
            _permit: permit,
            address: Some((key, self.by_address.clone())),
        })
    }

    /// Logs a refusal, at most once every 10 seconds per listener.
    fn warn(&self, what: &str, peer: IpAddr) {
        let mut last = self.last_warning.lock().expect("gate poisoned");
        if last.is_none_or(|t| t.elapsed() > Duration::from_secs(10)) {
            *last = Some(Instant::now());
            tracing::warn!(
                listener = self.listener,
                max = self.max,
                per_address = self.per_address,
                client = %peer,
                "{what}"
            );
        }
    }
}

/// What a connection is doing: requests in flight (a response counts until its body is
/// sent or dropped) and when it last had none.
pub struct Activity {
    in_flight: AtomicUsize,
    since: Mutex<Instant>,
}

/// One request in flight on a connection; dropped with its response body.
pub struct InFlight(Arc<Activity>);

impl Drop for InFlight {
    fn drop(&mut self) {
        *self.0.since.lock().expect("activity poisoned") = Instant::now();
        self.0.in_flight.fetch_sub(1, Ordering::AcqRel);
    }
}

impl Activity {
    pub fn new() -> Arc<Activity> {
        Arc::new(Activity {
            in_flight: AtomicUsize::new(0),
            since: Mutex::new(Instant::now()),
        })
    }

    /// A request starts.
    pub fn begin(self: &Arc<Self>) -> InFlight {
        self.in_flight.fetch_add(1, Ordering::AcqRel);
        InFlight(self.clone())
    }

    fn busy(&self) -> bool {
        self.in_flight.load(Ordering::Acquire) > 0
    }

    /// Resolves once no request has been in flight for `timeout`.
    async fn idle(&self, timeout: Duration) {
        loop {
            let since = *self.since.lock().expect("activity poisoned");
            let wait = if self.busy() {
                timeout
            } else {
                match timeout.checked_sub(since.elapsed()) {
                    None | Some(Duration::ZERO) => return,
                    Some(left) => left,
                }
            };
            tokio::time::sleep(wait).await;
        }
    }
}

/// How long an idle connection asked to close may take to do so (an HTTP/2 client must
/// answer the GOAWAY's PING first) before it is dropped.
const IDLE_CLOSE_GRACE: Duration = Duration::from_secs(10);

/// Runs an HTTP connection until it ends: asked to finish gracefully (in-flight requests
/// complete; HTTP/2 gets a GOAWAY) when the server stops or when the connection has been
/// idle for `idle_timeout`; an idle one that does not close within [`IDLE_CLOSE_GRACE`]
/// while still idle is dropped.
pub async fn drive<C>(
    conn: C,
    activity: &Activity,
    idle_timeout: Duration,
    stop: &mut tokio::sync::watch::Receiver<bool>,
) -> Result<(), C::Error>
where
    C: GracefulConnection,
{
    let mut conn = std::pin::pin!(conn);
    let mut closing = false;
    let mut drop_at: Option<tokio::time::Instant> = None;
    loop {
        let deadline = drop_at.unwrap_or_else(tokio::time::Instant::now);
        tokio::select! {
            r = conn.as_mut() => return r,
            _ = stop.wait_for(|s| *s), if !closing => {
                closing = true;
                conn.as_mut().graceful_shutdown();
            }
            _ = activity.idle(idle_timeout), if !closing => {
                closing = true;
                conn.as_mut().graceful_shutdown();
                drop_at = Some(tokio::time::Instant::now() + IDLE_CLOSE_GRACE);
            }
            _ = tokio::time::sleep_until(deadline), if drop_at.is_some() => {
                if !activity.busy() {
                    return Ok(());
                }
                drop_at = Some(tokio::time::Instant::now() + IDLE_CLOSE_GRACE);
            }
        }
    }
}

/// Accepts the next connection; errors (out of file descriptors, above all) are logged and
/// retried after a pause that doubles up to a second, never in a busy loop.
pub async fn accept(listener: &TcpListener, name: &'static str) -> (TcpStream, SocketAddr) {
    let mut pause = Duration::from_millis(5);
    loop {
        match listener.accept().await {
            Ok(a) => return a,
            Err(e) => {
                tracing::warn!(listener = name, error = %e, pause = ?pause, "accept failed");
                tokio::time::sleep(pause).await;
                pause = (pause * 2).min(Duration::from_secs(1));
            }
        }
    }
}

/// Answers a connection over the limit with `503` (plain HTTP) and closes it: the write
/// side first, then what the client sent is drained (at most 64 KiB, within a second
/// overall), so the close is a FIN and not a reset that could discard the answer before
/// the client reads it.
pub async fn refuse_plain(mut stream: TcpStream) {
    const BODY: &str =
        r#"{"errors":[{"code":"UNAVAILABLE","message":"too many connections; retry later"}]}"#;
    let resp = format!(
        "HTTP/1.1 503 Service Unavailable\r\nContent-Type: application/json\r\nRetry-After: 1\r\n\
         Connection: close\r\nContent-Length: {}\r\n\r\n{BODY}",
        BODY.len()
    );
    let answer = async {
        stream.write_all(resp.as_bytes()).await?;
        stream.shutdown().await?;
        let mut sink = [0u8; 4096];
        let mut left = 64 * 1024usize;
        while left > 0 {
            let n = stream.read(&mut sink).await?;
            if n == 0 {
                break;
            }
            left = left.saturating_sub(n);
        }
        Ok::<_, std::io::Error>(())
    };
    let _ = tokio::time::timeout(Duration::from_secs(1), answer).await;
}

/// Waits until the client has sent something: a connection that never does is closed
/// after the header timeout even before hyper (or protocol detection) sees it.
pub async fn first_bytes(stream: &TcpStream, limits: &Limits) -> std::io::Result<()> {
    let mut b = [0u8; 1];
    match tokio::time::timeout(limits.header_read_timeout, stream.peek(&mut b)).await {
        Ok(Ok(0)) => Err(std::io::ErrorKind::UnexpectedEof.into()),
        Ok(Ok(_)) => Ok(()),
        Ok(Err(e)) => Err(e),
        Err(_) => Err(std::io::Error::new(
            std::io::ErrorKind::TimedOut,
            "no request within the header timeout",
        )),
    }
}

/// The socket with the send timeout on.
pub fn with_send_timeout(stream: TcpStream, limits: &Limits) -> Io {
    let mut s = TimeoutStream::new(stream);
    s.set_write_timeout(Some(limits.send_timeout));
    Box::pin(s)
}

/// Serves HTTP/1.1 on `listener` until the task is aborted: at most `max_connections` at
/// once (over it: [`refuse_plain`]; no cap per address), `limits`' header, send and idle
/// timeouts, every request counted as activity until its response body is sent. `handle`
/// answers each request; the peer's address is in its extensions. The admin and the
/// fleet's peer listeners.
pub async fn serve_http1<F, Fut, B>(
    listener: TcpListener,
    name: &'static str,
    max_connections: usize,
    limits: Limits,
    handle: F,
) where
    F: Fn(http::Request<hyper::body::Incoming>) -> Fut + Clone + Send + Sync + 'static,
    Fut: std::future::Future<Output = Result<http::Response<B>, std::convert::Infallible>>
        + Send
        + 'static,
    B: http_body::Body<Data = bytes::Bytes> + Send + 'static,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    use http_body_util::BodyExt as _;
    use hyper_util::rt::{TokioIo, TokioTimer};
    let mut builder = hyper::server::conn::http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        .header_read_timeout(limits.header_read_timeout);
    let gate = Gate::new(name, max_connections, 0, crate::TrustedProxies::default());
    // These listeners stop with the process; connections end on their own or idle.
    let (_never, stop) = tokio::sync::watch::channel(false);
    loop {
        let (stream, peer) = accept(&listener, name).await;
        let Some(permit) = gate.admit(peer.ip()) else {
            tokio::spawn(refuse_plain(stream));
            continue;
        };
        let _ = stream.set_nodelay(true);
        let (handle, builder) = (handle.clone(), builder.clone());
        let stream = with_send_timeout(stream, &limits);
        let (idle_timeout, mut stop) = (limits.idle_timeout, stop.clone());
        tokio::spawn(async move {
            let _permit = permit;
            let activity = Activity::new();
            let tracker = activity.clone();
            let service = hyper::service::service_fn(move |mut req| {
                req.extensions_mut().insert(peer);
                let flight = tracker.begin();
                let reply = handle(req);
                async move {
                    let resp = reply.await?;
                    Ok::<_, std::convert::Infallible>(resp.map(move |body| {
                        body.map_frame(move |frame| {
                            let _in_flight = &flight;
                            frame
                        })
                    }))
                }
            });
            let conn = builder.serve_connection(TokioIo::new(stream), service);
            let _ = drive(conn, &activity, idle_timeout, &mut stop).await;
        });
    }
}
