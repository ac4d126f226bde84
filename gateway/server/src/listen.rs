//! What every listener does before HTTP starts: a bound on concurrent connections
//! (answered with a clean 503 when full), accept errors backed off instead of retried in a
//! busy loop, a deadline for the first bytes and the TLS handshake, and a send timeout on
//! the socket so a client that stops reading is dropped. HTTP-level timers (header read,
//! HTTP/2 keep-alive pings) are set on the hyper builders from the same [`Limits`].

use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::io::AsyncWriteExt;
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

/// Admission of connections to one listener.
pub struct Gate {
    listener: &'static str,
    permits: Arc<Semaphore>,
    max: usize,
    last_warning: Mutex<Option<Instant>>,
}

impl Gate {
    pub fn new(listener: &'static str, max: usize) -> Gate {
        Gate {
            listener,
            permits: Arc::new(Semaphore::new(max)),
            max,
            last_warning: Mutex::new(None),
        }
    }

    /// A permit held for the connection's life, or `None` when the listener is full.
    pub fn admit(&self) -> Option<OwnedSemaphorePermit> {
        let permit = self.permits.clone().try_acquire_owned().ok();
        if permit.is_none() {
            let mut last = self.last_warning.lock().expect("gate poisoned");
            if last.is_none_or(|t| t.elapsed() > Duration::from_secs(10)) {
                *last = Some(Instant::now());
                tracing::warn!(
                    listener = self.listener,
                    max = self.max,
                    "connection limit reached; refusing new connections"
                );
            }
        }
        permit
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

/// Answers a connection over the limit with `503` (plain HTTP) and closes it.
pub async fn refuse_plain(mut stream: TcpStream) {
    const BODY: &str =
        r#"{"errors":[{"code":"UNAVAILABLE","message":"too many connections; retry later"}]}"#;
    let resp = format!(
        "HTTP/1.1 503 Service Unavailable\r\nContent-Type: application/json\r\nRetry-After: 1\r\n\
         Connection: close\r\nContent-Length: {}\r\n\r\n{BODY}",
        BODY.len()
    );
    let _ = tokio::time::timeout(Duration::from_secs(1), stream.write_all(resp.as_bytes())).await;
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
