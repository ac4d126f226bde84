//! Pier's client for other registries (the upstreams of the mirror, the targets of
//! replication): Docker token auth, redirects, retries with backoff, streaming; where
//! redirects and token realms may lead is [`outbound`]'s policy. Also what every outbound
//! client of Pier shares: the retry policy ([`backoff`]) and the proxies ([`proxy`]).
#![forbid(unsafe_code)]
#![deny(rust_2018_idioms)]

use std::io;
use std::net::IpAddr;
use std::pin::Pin;
use std::time::Duration;

use bytes::Bytes;
use futures_util::Stream;
use pier_oci::{Digest, Reference, RepoName};

pub mod backoff;
pub mod budget;
pub mod challenge;
pub mod client;
pub mod outbound;
pub mod proxy;
mod timings;
pub use backoff::Backoff;
pub use budget::{Budget, BudgetConfig, UpstreamBudgets};

/// The TLS client configuration every outbound client of Pier uses: ring, TLS 1.2 and 1.3,
/// `roots`, no client certificate.
pub fn tls_client_config(
    roots: rustls::RootCertStore,
) -> Result<rustls::ClientConfig, rustls::Error> {
    let provider = std::sync::Arc::new(rustls::crypto::ring::default_provider());
    Ok(rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .with_root_certificates(roots)
        .with_no_client_auth())
}

/// The system's trusted roots (rustls-native-certs); unreadable certificates are skipped.
pub fn system_roots() -> rustls::RootCertStore {
    let mut roots = rustls::RootCertStore::empty();
    let native = rustls_native_certs::load_native_certs();
    for error in &native.errors {
        tracing::debug!(%error, "skipping unreadable system certificate");
    }
    let (added, ignored) = roots.add_parsable_certificates(native.certs);
    tracing::debug!(added, ignored, "loaded system trust roots");
    roots
}

/// `e` and its sources, `: `-separated, on one line (hyper-util's errors say only "client
/// error (Connect)" themselves).
pub fn error_chain(e: &dyn std::error::Error) -> String {
    let mut out = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        out.push_str(": ");
        out.push_str(&s.to_string());
        source = s.source();
    }
    out
}
pub use client::{Mount, UploadSession, UpstreamClient};
pub use timings::UpstreamTimings;

/// A stream of bytes from an upstream.
pub type ByteStream = Pin<Box<dyn Stream<Item = io::Result<Bytes>> + Send + 'static>>;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Credentials {
    pub username: String,
    pub password: String,
}

/// How to reach one upstream registry.
#[derive(Debug, Clone)]
pub struct UpstreamConfig {
    /// Name used in logs, metrics and path prefixes.
    pub name: String,
    /// Base URL, e.g. `https://registry-1.docker.io` or `http://127.0.0.1:5000`.
    pub url: String,
    pub credentials: Option<Credentials>,
    /// Per request (connect + headers; a body streams as long as bytes keep arriving).
    pub timeout: Duration,
    /// Attempts after the first on connection errors, 5xx and 429.
    pub retries: u32,
    /// Let redirects, token realms and upload locations lead to private addresses
    /// (loopback, RFC 1918, link-local, ...; see [`outbound`]). Off (the default): only
    /// the configured host may be on one, and if it is, every other host may be too.
    pub allow_private: bool,
}

/// Why an upstream request failed, and whose fault it is.
#[derive(Debug, thiserror::Error)]
pub enum UpstreamError {
    #[error("not found upstream")]
    NotFound,
    #[error("upstream refused our credentials: {0}")]
    Unauthorized(String),
    #[error("upstream denied access: {0}")]
    Denied(String),
    #[error("upstream is rate limiting (retry after {retry_after:?})")]
    TooManyRequests { retry_after: Option<Duration> },
    #[error("upstream answered {status}: {body}")]
    Status { status: u16, body: String },
    #[error("cannot reach upstream {url}")]
    Connect {
        url: String,
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    #[error("upstream timed out after {0:?}")]
    Timeout(Duration),
    #[error("upstream protocol error: {0}")]
    Protocol(String),
    /// The upstream sent Pier to a private address, which the outbound policy refuses.
    #[error(
        "refused: {via} to {url} ({addr}), a private address; \
         set allow_private = true on this upstream to allow it"
    )]
    Refused {
        /// What led there: `redirect`, `token realm`, `upload location`.
        via: &'static str,
        url: String,
        addr: IpAddr,
    },
}

impl UpstreamError {
    /// The upstream does not have it (as opposed to: the upstream is unwell).
    pub fn is_not_found(&self) -> bool {
        matches!(self, UpstreamError::NotFound)
    }

    /// Worth another attempt: the upstream could not be reached, was too slow, failed
    /// (5xx) or is rate limiting. A [`UpstreamError::Refused`] is final.
    pub fn is_retryable(&self) -> bool {
        match self {
            UpstreamError::Connect { .. }
            | UpstreamError::Timeout(_)
            | UpstreamError::TooManyRequests { .. } => true,
            UpstreamError::Status { status, .. } => *status >= 500,
            _ => false,
        }
    }
}

/// A manifest as the upstream served it.
#[derive(Debug, Clone)]
pub struct ManifestFetched {
    pub bytes: Bytes,
    pub media_type: String,
    /// `Docker-Content-Digest`, when the upstream sent one.
    pub digest: Option<Digest>,
}

/// What a HEAD of a manifest says.
#[derive(Debug, Clone)]
pub struct ManifestHead {
    pub digest: Digest,
    pub media_type: String,
    pub size: u64,
}

/// A blob body being received.
pub struct BlobFetched {
    /// Total size of the blob, when the upstream said.
    pub size: Option<u64>,
    /// The bytes from the requested offset on.
    pub stream: ByteStream,
}

/// Signs a request (its method and path with query) for its `Authorization` header: the
/// fleet's peers prove they hold the key without sending it.
pub trait RequestSigner: Send + Sync {
    fn authorization(&self, method: &http::Method, path_and_query: &str) -> http::HeaderValue;
}

/// The operations the mirror and replication need from an upstream registry.
/// `client::UpstreamClient` is the real one.
#[async_trait::async_trait]
pub trait Upstream: Send + Sync + 'static {
    fn name(&self) -> &str;
    /// GET a manifest by tag or digest, accepting OCI and Docker schema 2 types.
    async fn get_manifest(
        &self,
        repo: &RepoName,
        reference: &Reference,
    ) -> Result<ManifestFetched, UpstreamError>;
    /// HEAD a manifest: cheap revalidation (Docker Hub does not count it as a pull).
    async fn head_manifest(
        &self,
        repo: &RepoName,
        reference: &Reference,
    ) -> Result<ManifestHead, UpstreamError>;
    /// HEAD a blob: its size.
    async fn head_blob(&self, repo: &RepoName, digest: &Digest) -> Result<u64, UpstreamError>;
    /// GET a blob from `offset` on (a Range request when offset > 0), following redirects.
    async fn get_blob(
        &self,
        repo: &RepoName,
        digest: &Digest,
        offset: u64,
    ) -> Result<BlobFetched, UpstreamError>;
    /// How long the upstream has asked Pier to leave it alone (a `429`'s pause), if it
    /// has: the mirror then serves what it holds without asking.
    fn paused_for(&self) -> Option<std::time::Duration> {
        None
    }
    /// The referrers of a manifest (`GET /v2/<name>/referrers/<digest>`): what an
    /// admission policy checks of a manifest being cached (Sigstore bundles). None when
    /// the upstream has no referrers API.
    async fn referrers(
        &self,
        _repo: &RepoName,
        _digest: &Digest,
    ) -> Result<Vec<pier_oci::Descriptor>, UpstreamError> {
        Ok(Vec::new())
    }
}
