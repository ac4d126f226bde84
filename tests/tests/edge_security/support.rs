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

pub use pier_e2e::base64 as base64_encode;

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
