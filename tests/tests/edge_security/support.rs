//! Helpers of the edge security tests.

use std::fs;
use std::io::Write;
use std::net::{SocketAddr, TcpStream};

use pier_e2e::TestPier;

/// `[auth]` without a plugin: every authenticated account is an admin.
pub fn pier_with_auth() -> (TestPier, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let ex = pier_e2e::manifest_dir().join("../deploy/examples/rbac");
    fs::copy(ex.join("users.htpasswd"), dir.path().join("users.htpasswd")).unwrap();
    fs::copy(ex.join("robots.json"), dir.path().join("robots.json")).unwrap();
    let cfg = dir.path().join("pier.toml");
    fs::write(
        &cfg,
        "[auth]\nusers_file = \"users.htpasswd\"\nrobots_file = \"robots.json\"\n",
    )
    .unwrap();
    let pier = TestPier::builder().arg("--config").arg(&cfg).start();
    (pier, dir)
}

/// Standard base64 with padding.
pub fn base64_encode(data: &[u8]) -> String {
    const T: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::new();
    for c in data.chunks(3) {
        let n = (u32::from(c[0]) << 16)
            | (u32::from(*c.get(1).unwrap_or(&0)) << 8)
            | u32::from(*c.get(2).unwrap_or(&0));
        for i in 0..4 {
            if i <= c.len() {
                out.push(T[(n >> (18 - 6 * i) & 63) as usize] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}

/// Opens `PATCH path` promising `len` body bytes and sends only the first one.
pub fn patch_one_byte_of(addr: SocketAddr, path: &str, len: usize) -> TcpStream {
    let mut s = TcpStream::connect(addr).unwrap();
    s.write_all(
        format!(
            "PATCH {path} HTTP/1.1\r\nHost: {addr}\r\nContent-Type: application/octet-stream\r\nContent-Length: {len}\r\n\r\nx"
        )
        .as_bytes(),
    )
    .unwrap();
    s
}
