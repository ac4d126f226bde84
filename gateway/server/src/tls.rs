//! rustls server configuration from PEM files.

use std::io::BufReader;
use std::path::Path;
use std::sync::Arc;

use rustls::ServerConfig;

use crate::config::TlsConfig;
use crate::error::ServerError;

fn open(path: &Path) -> Result<BufReader<std::fs::File>, ServerError> {
    std::fs::File::open(path)
        .map(BufReader::new)
        .map_err(|e| ServerError::Tls {
            path: path.to_owned(),
            reason: e.to_string(),
        })
}

/// A rustls config offering HTTP/2 and HTTP/1.1 by ALPN.
pub fn server_config(tls: &TlsConfig) -> Result<Arc<ServerConfig>, ServerError> {
    let bad = |path: &Path, reason: String| ServerError::Tls {
        path: path.to_owned(),
        reason,
    };
    let certs = rustls_pemfile::certs(&mut open(&tls.cert)?)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| bad(&tls.cert, e.to_string()))?;
    if certs.is_empty() {
        return Err(bad(&tls.cert, "no PEM certificate found".into()));
    }
    let key = rustls_pemfile::private_key(&mut open(&tls.key)?)
        .map_err(|e| bad(&tls.key, e.to_string()))?
        .ok_or_else(|| bad(&tls.key, "no PEM private key found".into()))?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| bad(&tls.cert, e.to_string()))?
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .map_err(|e| bad(&tls.key, e.to_string()))?;
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(Arc::new(config))
}
