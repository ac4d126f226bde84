//! rustls server configuration from PEM files.

use std::path::Path;
use std::sync::Arc;

use rustls::ServerConfig;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};

use crate::config::TlsConfig;
use crate::error::ServerError;

/// A rustls config offering HTTP/2 and HTTP/1.1 by ALPN.
pub fn server_config(tls: &TlsConfig) -> Result<Arc<ServerConfig>, ServerError> {
    let bad = |path: &Path, reason: String| ServerError::Tls {
        path: path.to_owned(),
        reason,
    };
    // PEM parsing by rustls-pki-types (rustls-pemfile is unmaintained, RUSTSEC-2025-0134).
    let certs = CertificateDer::pem_file_iter(&tls.cert)
        .and_then(|it| it.collect::<Result<Vec<_>, _>>())
        .map_err(|e| bad(&tls.cert, e.to_string()))?;
    if certs.is_empty() {
        return Err(bad(&tls.cert, "no PEM certificate found".into()));
    }
    let key = PrivateKeyDer::from_pem_file(&tls.key).map_err(|e| match e {
        rustls_pki_types::pem::Error::NoItemsFound => {
            bad(&tls.key, "no PEM private key found".into())
        }
        e => bad(&tls.key, e.to_string()),
    })?;
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
