//! pier-cluster over `rediss://` against a real redis-server with `--tls-port`: the
//! server's certificate is verified (against `ca_file`; a server the roots don't vouch for
//! is refused), and the shared state works over TLS.

mod common;

use std::path::Path;

use common::{Redis, suite};
use pier_cluster::{RedisConfig, Shared};

fn tls_config(port: u16, ca: Option<&Path>) -> RedisConfig {
    let mut c = RedisConfig::standalone(format!("rediss://127.0.0.1:{port}"));
    c.ca_file = ca.map(Path::to_owned);
    c
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rediss_verifies_the_server_and_carries_the_shared_state() {
    let certs = tempfile::tempdir().unwrap();
    // ca.pem, server.pem, server.key
    pier_e2e::test_ca(certs.path());
    let p = |f: &str| certs.path().join(f).to_str().unwrap().to_owned();
    let tls_port = common::free_port();
    let _redis = Redis::start(&[
        "--tls-port",
        &tls_port.to_string(),
        "--tls-cert-file",
        &p("server.pem"),
        "--tls-key-file",
        &p("server.key"),
        "--tls-ca-cert-file",
        &p("ca.pem"),
        "--tls-auth-clients",
        "no",
    ]);
    common::wait_until(std::time::Duration::from_secs(5), || {
        std::net::TcpStream::connect(("127.0.0.1", tls_port)).is_ok()
    });
    // The system's roots don't vouch for this server: refused.
    let untrusted = Shared::connect(tls_config(tls_port, None)).await;
    assert!(untrusted.is_err(), "connected to an unverified TLS server");
    // With the CA that signed it: the suite's leases work over TLS.
    let ca = certs.path().join("ca.pem");
    let shared = Shared::connect(tls_config(tls_port, Some(&ca)))
        .await
        .expect("rediss:// with ca_file");
    suite::leases(&shared).await;
}
