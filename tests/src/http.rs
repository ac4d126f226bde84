//! A minimal blocking HTTP/1.1 client over `std::net::TcpStream`.
//!
//! Tests control every byte: the request target is sent exactly as given (no
//! normalisation, no percent-encoding), headers are sent as given, and every request
//! carries `Connection: close`. Responses with `Content-Length`, chunked
//! transfer-encoding or read-to-EOF bodies are decoded; `HEAD`, `1xx`, `204` and `304`
//! responses have no body. Interim `100 Continue` responses are skipped.

use std::fmt;
use std::io::{self, BufRead, BufReader, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

/// How long a single read or write may block before the request fails.
pub const IO_TIMEOUT: Duration = Duration::from_secs(120);

/// A decoded HTTP response.
#[derive(Clone)]
pub struct Response {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl Response {
    /// First value of a header, matched case-insensitively.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    /// Every value of a header, in order.
    pub fn header_all(&self, name: &str) -> Vec<&str> {
        self.headers
            .iter()
            .filter(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
            .collect()
    }

    /// The body as (lossy) UTF-8.
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    /// The body parsed as JSON; panics with the whole response on failure.
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|e| panic!("response body is not JSON ({e}):\n{self}"))
    }

    /// `errors[0].code` of an error body, if the body is one.
    pub fn error_code(&self) -> Option<String> {
        let v: serde_json::Value = serde_json::from_slice(&self.body).ok()?;
        v.get("errors")?
            .get(0)?
            .get("code")?
            .as_str()
            .map(str::to_owned)
    }

    /// Every `errors[].code` of an error body.
    pub fn error_codes(&self) -> Vec<String> {
        let Ok(v) = serde_json::from_slice::<serde_json::Value>(&self.body) else {
            return Vec::new();
        };
        v.get("errors")
            .and_then(|e| e.as_array())
            .map(|a| {
                a.iter()
                    .filter_map(|e| e.get("code").and_then(|c| c.as_str()).map(str::to_owned))
                    .collect()
            })
            .unwrap_or_default()
    }

    /// `Content-Length` parsed as a number.
    pub fn content_length(&self) -> Option<u64> {
        self.header("content-length")
            .and_then(|v| v.trim().parse().ok())
    }

    /// Panics (showing the response) unless the status is `status`.
    #[track_caller]
    pub fn expect_status(&self, status: u16, what: &str) -> &Self {
        assert_eq!(
            self.status, status,
            "{what}: expected HTTP {status}, got {}\n{self}",
            self.status
        );
        self
    }

    /// Panics unless the response is `status` with an OCI error body whose first code
    /// is `code`, and every entry of `errors` has a string `code` and `message`.
    #[track_caller]
    pub fn expect_error(&self, status: u16, code: &str, what: &str) -> &Self {
        self.expect_status(status, what);
        self.expect_error_body(code, what)
    }

    /// Panics unless the body is an OCI error document whose first code is `code`.
    #[track_caller]
    pub fn expect_error_body(&self, code: &str, what: &str) -> &Self {
        let v: serde_json::Value = serde_json::from_slice(&self.body)
            .unwrap_or_else(|e| panic!("{what}: error body is not JSON ({e})\n{self}"));
        let errors = v
            .get("errors")
            .and_then(|e| e.as_array())
            .unwrap_or_else(|| panic!("{what}: error body has no `errors` array\n{self}"));
        assert!(!errors.is_empty(), "{what}: `errors` is empty\n{self}");
        for e in errors {
            assert!(
                e.get("code").is_some_and(|c| c.is_string()),
                "{what}: an error without a string `code`\n{self}"
            );
            if let Some(m) = e.get("message") {
                assert!(m.is_string(), "{what}: `message` is not a string\n{self}");
            }
        }
        assert_eq!(
            errors[0]["code"].as_str(),
            Some(code),
            "{what}: expected error code {code}\n{self}"
        );
        if let Some(ct) = self.header("content-type") {
            assert!(
                ct.to_ascii_lowercase().contains("json"),
                "{what}: error body sent with Content-Type {ct:?}\n{self}"
            );
        }
        self
    }

    /// Panics unless header `name` is present and equal to `value`.
    #[track_caller]
    pub fn expect_header(&self, name: &str, value: &str, what: &str) -> &Self {
        assert_eq!(
            self.header(name),
            Some(value),
            "{what}: header {name}\n{self}"
        );
        self
    }

    /// Panics unless header `name` is present; returns its value.
    #[track_caller]
    pub fn require_header(&self, name: &str, what: &str) -> &str {
        self.header(name)
            .unwrap_or_else(|| panic!("{what}: missing header {name}\n{self}"))
    }
}

impl fmt::Display for Response {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "--- response: HTTP {}", self.status)?;
        for (k, v) in &self.headers {
            writeln!(f, "{k}: {v}")?;
        }
        let shown = &self.body[..self.body.len().min(2048)];
        writeln!(f)?;
        write!(f, "{}", String::from_utf8_lossy(shown))?;
        if self.body.len() > shown.len() {
            write!(f, "... ({} bytes in all)", self.body.len())?;
        }
        write!(f, "\n---")
    }
}

impl fmt::Debug for Response {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

fn has_header(headers: &[(&str, &str)], name: &str) -> bool {
    headers.iter().any(|(k, _)| k.eq_ignore_ascii_case(name))
}

fn is_chunked(headers: &[(&str, &str)]) -> bool {
    headers.iter().any(|(k, v)| {
        k.eq_ignore_ascii_case("transfer-encoding") && v.to_ascii_lowercase().contains("chunked")
    })
}

/// Sends one request and reads the response.
///
/// `path` is the raw request target (path and query) sent byte for byte. A
/// `Content-Length` header is added unless the caller passed one, or passed
/// `Transfer-Encoding: chunked` (then `body` is sent as chunks of at most 64 KiB).
/// For GET, HEAD and DELETE with an empty body no length is sent.
///
/// Panics if no response can be read; a failed write (the server answered early and
/// closed) is ignored so the early response can still be read.
pub fn request(
    addr: SocketAddr,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &[u8],
) -> Response {
    try_request(addr, method, path, headers, body)
        .unwrap_or_else(|e| panic!("{method} {path} on {addr}: {e}"))
}

/// As [`request`], returning I/O errors instead of panicking.
pub fn try_request(
    addr: SocketAddr,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &[u8],
) -> io::Result<Response> {
    let mut s = Streaming::open(addr, method, path, headers, body.len())?;
    if is_chunked(headers) {
        for chunk in body.chunks(64 * 1024) {
            if s.write_chunk(chunk).is_err() {
                break;
            }
        }
        let _ = s.end_chunks();
    } else {
        let _ = s.write_body(body);
    }
    s.response()
}

/// As [`try_request`] with connect, read and write timeouts of `timeout`.
pub fn try_request_timeout(
    addr: SocketAddr,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &[u8],
    timeout: Duration,
) -> io::Result<Response> {
    let mut s = Streaming::open_with_timeout(addr, method, path, headers, body.len(), timeout)?;
    let _ = s.write_body(body);
    s.response()
}

/// A request whose body is written piece by piece (slow uploads, interrupted uploads).
pub struct Streaming {
    stream: TcpStream,
    head_only: bool,
    write_failed: bool,
}

impl Streaming {
    /// Connects and sends the request head. Adds `Content-Length: body_len` unless
    /// the caller passed a `Content-Length` or `Transfer-Encoding` header, or the
    /// method is GET/HEAD/DELETE with `body_len == 0`.
    pub fn open(
        addr: SocketAddr,
        method: &str,
        path: &str,
        headers: &[(&str, &str)],
        body_len: usize,
    ) -> io::Result<Streaming> {
        Self::open_with_timeout(addr, method, path, headers, body_len, IO_TIMEOUT)
    }

    /// As [`Streaming::open`], with connect, read and write timeouts of `timeout`.
    pub fn open_with_timeout(
        addr: SocketAddr,
        method: &str,
        path: &str,
        headers: &[(&str, &str)],
        body_len: usize,
        timeout: Duration,
    ) -> io::Result<Streaming> {
        let stream = TcpStream::connect_timeout(&addr, timeout.min(Duration::from_secs(10)))?;
        stream.set_read_timeout(Some(timeout))?;
        stream.set_write_timeout(Some(timeout))?;
        stream.set_nodelay(true)?;
        let mut head = format!("{method} {path} HTTP/1.1\r\n");
        if !has_header(headers, "host") {
            head.push_str(&format!("Host: {addr}\r\n"));
        }
        if !has_header(headers, "connection") {
            head.push_str("Connection: close\r\n");
        }
        if !has_header(headers, "user-agent") {
            head.push_str("User-Agent: pier-e2e\r\n");
        }
        for (k, v) in headers {
            head.push_str(&format!("{k}: {v}\r\n"));
        }
        let bodyless = matches!(method, "GET" | "HEAD" | "DELETE") && body_len == 0;
        if !has_header(headers, "content-length")
            && !has_header(headers, "transfer-encoding")
            && !bodyless
        {
            head.push_str(&format!("Content-Length: {body_len}\r\n"));
        }
        head.push_str("\r\n");
        let mut s = Streaming {
            stream,
            head_only: method == "HEAD",
            write_failed: false,
        };
        s.stream.write_all(head.as_bytes())?;
        Ok(s)
    }

    /// Writes raw body bytes.
    pub fn write_body(&mut self, data: &[u8]) -> io::Result<()> {
        let r = self
            .stream
            .write_all(data)
            .and_then(|_| self.stream.flush());
        if r.is_err() {
            self.write_failed = true;
        }
        r
    }

    /// Writes one chunk of a `Transfer-Encoding: chunked` body (empty data is skipped).
    pub fn write_chunk(&mut self, data: &[u8]) -> io::Result<()> {
        if data.is_empty() {
            return Ok(());
        }
        let mut buf = format!("{:x}\r\n", data.len()).into_bytes();
        buf.extend_from_slice(data);
        buf.extend_from_slice(b"\r\n");
        self.write_body(&buf)
    }

    /// Ends a chunked body.
    pub fn end_chunks(&mut self) -> io::Result<()> {
        self.write_body(b"0\r\n\r\n")
    }

    /// Drops the connection without finishing the request.
    pub fn abort(self) {
        let _ = self.stream.shutdown(std::net::Shutdown::Both);
    }

    /// Reads the response.
    pub fn response(self) -> io::Result<Response> {
        let head_only = self.head_only;
        let write_failed = self.write_failed;
        let mut r = BufReader::new(self.stream);
        read_response(&mut r, head_only).map_err(|e| {
            if write_failed {
                io::Error::new(e.kind(), format!("{e} (after a failed body write)"))
            } else {
                e
            }
        })
    }
}

fn read_line(r: &mut impl BufRead) -> io::Result<String> {
    let mut buf = Vec::new();
    let n = r.read_until(b'\n', &mut buf)?;
    if n == 0 {
        return Err(io::Error::new(
            io::ErrorKind::UnexpectedEof,
            "connection closed before a complete response head",
        ));
    }
    while buf.last().is_some_and(|b| *b == b'\n' || *b == b'\r') {
        buf.pop();
    }
    String::from_utf8(buf).map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))
}

/// Reads one response (skipping interim 1xx responses other than 101).
pub fn read_response(r: &mut impl BufRead, head_only: bool) -> io::Result<Response> {
    loop {
        let status_line = read_line(r)?;
        let mut parts = status_line.splitn(3, ' ');
        let version = parts.next().unwrap_or_default();
        if !version.starts_with("HTTP/1.") {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                format!("bad status line {status_line:?}"),
            ));
        }
        let status: u16 = parts.next().and_then(|s| s.parse().ok()).ok_or_else(|| {
            io::Error::new(
                io::ErrorKind::InvalidData,
                format!("bad status line {status_line:?}"),
            )
        })?;
        let mut headers = Vec::new();
        loop {
            let line = read_line(r)?;
            if line.is_empty() {
                break;
            }
            let (k, v) = line.split_once(':').ok_or_else(|| {
                io::Error::new(
                    io::ErrorKind::InvalidData,
                    format!("bad header line {line:?}"),
                )
            })?;
            headers.push((k.trim().to_owned(), v.trim().to_owned()));
        }
        if (100..200).contains(&status) && status != 101 {
            continue;
        }
        let mut resp = Response {
            status,
            headers,
            body: Vec::new(),
        };
        if head_only || (100..200).contains(&status) || status == 204 || status == 304 {
            return Ok(resp);
        }
        let chunked = resp
            .header("transfer-encoding")
            .is_some_and(|v| v.to_ascii_lowercase().contains("chunked"));
        if chunked {
            resp.body = read_chunked(r)?;
        } else if let Some(len) = resp.header("content-length") {
            let len: usize = len.trim().parse().map_err(|_| {
                io::Error::new(
                    io::ErrorKind::InvalidData,
                    format!("bad Content-Length {len:?}"),
                )
            })?;
            let mut body = vec![0; len];
            r.read_exact(&mut body)?;
            resp.body = body;
        } else {
            r.read_to_end(&mut resp.body)?;
        }
        return Ok(resp);
    }
}

fn read_chunked(r: &mut impl BufRead) -> io::Result<Vec<u8>> {
    let mut body = Vec::new();
    loop {
        let line = read_line(r)?;
        let size_str = line.split(';').next().unwrap_or_default().trim();
        let size = usize::from_str_radix(size_str, 16).map_err(|_| {
            io::Error::new(
                io::ErrorKind::InvalidData,
                format!("bad chunk size {line:?}"),
            )
        })?;
        if size == 0 {
            // trailers
            loop {
                if read_line(r)?.is_empty() {
                    return Ok(body);
                }
            }
        }
        let start = body.len();
        body.resize(start + size, 0);
        r.read_exact(&mut body[start..])?;
        let crlf = read_line(r)?;
        if !crlf.is_empty() {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                "chunk not followed by CRLF",
            ));
        }
    }
}

/// `GET path` with no headers.
pub fn get(addr: SocketAddr, path: &str) -> Response {
    request(addr, "GET", path, &[], b"")
}

/// `HEAD path` with no headers.
pub fn head(addr: SocketAddr, path: &str) -> Response {
    request(addr, "HEAD", path, &[], b"")
}

/// `DELETE path` with no headers.
pub fn delete(addr: SocketAddr, path: &str) -> Response {
    request(addr, "DELETE", path, &[], b"")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_content_length_and_chunked() {
        let raw = b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 200 OK\r\nContent-Length: 3\r\nX-A: b\r\n\r\nabc";
        let r = read_response(&mut &raw[..], false).unwrap();
        assert_eq!(r.status, 200);
        assert_eq!(r.body, b"abc");
        assert_eq!(r.header("x-a"), Some("b"));
        let raw = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n2;x=y\r\nde\r\n0\r\nT: 1\r\n\r\n";
        let r = read_response(&mut &raw[..], false).unwrap();
        assert_eq!(r.body, b"abcde");
        let raw = b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\n";
        let r = read_response(&mut &raw[..], true).unwrap();
        assert!(r.body.is_empty());
        assert_eq!(r.content_length(), Some(10));
        let raw =
            b"HTTP/1.1 404 Not Found\r\n\r\n{\"errors\":[{\"code\":\"X\",\"message\":\"m\"}]}";
        let r = read_response(&mut &raw[..], false).unwrap();
        assert_eq!(r.error_code().as_deref(), Some("X"));
        r.expect_error(404, "X", "parse");
    }
}
