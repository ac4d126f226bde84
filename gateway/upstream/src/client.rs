//! The real [`Upstream`]: hyper 1 over rustls (or plain HTTP for local upstreams), with
//! Docker token auth, redirects, retries with backoff and streamed blob bodies.
//!
//! One request goes through three layers:
//! - [`UpstreamClient::with_retries`] repeats a whole attempt after connection errors,
//!   timeouts, 5xx and 429 (backoff with jitter doubling from 200 ms, [`Backoff`];
//!   `Retry-After` honoured);
//! - [`UpstreamClient::exchange`] is one attempt: it answers `401` challenges (Bearer
//!   token from the realm, or Basic) and follows redirects, and hands back a response
//!   whose status is a success, or the error it maps to;
//! - [`UpstreamClient::send_one`] is one HTTP exchange bounded by the timeout; its
//!   connections go through [`outbound::Connector`], which refuses private addresses the
//!   upstream's answers lead to ([`UpstreamError::Refused`], never retried), or through
//!   the proxy the environment names ([`crate::proxy`], the same policy checked first).
//!
//! A blob body is handed to the caller only once its headers are good, so nothing is
//! retried after the caller has seen bytes; the body then streams for as long as bytes
//! keep arriving and fails after `timeout` without one.

use std::collections::HashMap;
use std::fmt;
use std::future::Future;
use std::io;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use base64::Engine as _;
use bytes::{Bytes, BytesMut};
use http::header::{
    ACCEPT, AUTHORIZATION, CONTENT_LENGTH, CONTENT_RANGE, CONTENT_TYPE, HeaderMap, HeaderName,
    HeaderValue, LOCATION, PROXY_AUTHORIZATION, RANGE, RETRY_AFTER, USER_AGENT, WWW_AUTHENTICATE,
};
use http::uri::{Authority, Scheme};
use http::{Method, Request, Response, StatusCode, Uri};
use http_body_util::combinators::UnsyncBoxBody;
use http_body_util::{BodyExt, Empty, Full, StreamBody};
use hyper::body::Incoming;
use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioTimer};
use pier_oci::{Digest, MAX_MANIFEST_SIZE, Reference, RepoName, media_types};
use tracing::{debug, warn};

mod push;
pub use push::{Mount, UploadSession};

use crate::backoff::Backoff;
use crate::outbound::{self, Connector, Policy};
use crate::proxy::{Proxies, ProxyConnector};
use crate::{
    BlobFetched, ByteStream, Credentials, ManifestFetched, ManifestHead, Upstream, UpstreamConfig,
    UpstreamError,
};

/// Redirects followed per request (Docker Hub sends blobs to a CDN: one hop).
const MAX_REDIRECTS: usize = 5;
/// Largest error or token body read.
const MAX_SMALL_BODY: usize = 64 * 1024;
/// How much of an error body goes into an error message.
const MAX_ERROR_TEXT: usize = 300;
/// Token lifetime when the token endpoint does not say (the Docker token spec's default).
const DEFAULT_TOKEN_LIFETIME: Duration = Duration::from_secs(60);
/// A cached token is replaced this long before it expires (at most half its lifetime).
const TOKEN_REFRESH_MARGIN: Duration = Duration::from_secs(10);
/// The manifest types Pier stores, in the `Accept` header of every manifest request.
const MANIFEST_ACCEPT: &str = "application/vnd.oci.image.manifest.v1+json, \
     application/vnd.oci.image.index.v1+json, \
     application/vnd.docker.distribution.manifest.v2+json, \
     application/vnd.docker.distribution.manifest.list.v2+json";
const USER_AGENT_VALUE: &str = concat!("pier/", env!("CARGO_PKG_VERSION"));
const DOCKER_CONTENT_DIGEST: HeaderName = HeaderName::from_static("docker-content-digest");

/// Request bodies: empty, a few bytes (manifests) or a streamed upload chunk.
type ReqBody = UnsyncBoxBody<Bytes, io::Error>;
type HttpClient = Client<HttpsConnector<ProxyConnector<Connector>>, ReqBody>;

/// The real registry client. Cheap to share behind an `Arc`; holds a connection pool and
/// the token cache for one upstream.
pub struct UpstreamClient {
    name: String,
    scheme: Scheme,
    authority: Authority,
    /// Path before `/v2/`, without a trailing slash (usually empty).
    prefix: String,
    credentials: Option<Credentials>,
    timeout: Duration,
    retries: u32,
    backoff: Backoff,
    http: HttpClient,
    proxies: Arc<Proxies>,
    auth: AuthState,
    timings: Option<crate::UpstreamTimings>,
    /// The upstream's pull budget (concurrency, rate, 429 pauses); none: unlimited.
    budget: Option<Arc<crate::Budget>>,
    /// Signs every request to the origin instead of any credentials (fleet peers).
    signer: Option<Arc<dyn crate::RequestSigner>>,
}

impl fmt::Debug for UpstreamClient {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("UpstreamClient")
            .field("name", &self.name)
            .field(
                "url",
                &format_args!("{}://{}{}", self.scheme, self.authority, self.prefix),
            )
            .field(
                "credentials",
                &self.credentials.as_ref().map(|c| &c.username),
            )
            .field("timeout", &self.timeout)
            .field("retries", &self.retries)
            .finish_non_exhaustive()
    }
}

/// What the client learned about how the upstream authenticates.
#[derive(Default)]
struct AuthState {
    /// The last Bearer challenge's realm and service: later scopes fetch their token
    /// before the first request instead of after a `401`.
    bearer: Mutex<Option<BearerRealm>>,
    /// The upstream asked for Basic credentials: send them from the start.
    basic: AtomicBool,
    /// Tokens per realm, service and scope; one fetch at a time per key.
    tokens: Mutex<HashMap<String, Arc<tokio::sync::Mutex<Option<CachedToken>>>>>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
struct BearerRealm {
    realm: Uri,
    service: Option<String>,
}

#[derive(Clone)]
struct CachedToken {
    token: String,
    /// When to stop handing it out (shortly before it expires).
    refresh_at: Instant,
}

/// The credentials one request carried to the origin.
#[derive(Clone)]
enum Sent {
    Anonymous,
    Basic,
    Bearer { token: String, fresh: bool },
}

/// A failed attempt: the error, and how long the upstream asked us to wait.
struct Failure {
    error: UpstreamError,
    retry_after: Option<Duration>,
}

impl Failure {
    /// Name what led to a refused address (`send_one` cannot tell).
    fn via(mut self, what: &'static str) -> Failure {
        if let UpstreamError::Refused { via, .. } = &mut self.error {
            *via = what;
        }
        self
    }
}

impl From<UpstreamError> for Failure {
    fn from(error: UpstreamError) -> Self {
        Failure {
            error,
            retry_after: None,
        }
    }
}

/// One logical request to the upstream's `/v2/` API.
struct Call<'a> {
    method: Method,
    /// Path after the base URL's prefix, starting with `/v2/`.
    path: String,
    /// Token scope, e.g. `repository:library/alpine:pull`.
    scope: String,
    headers: Vec<(HeaderName, HeaderValue)>,
    repo: &'a RepoName,
    /// A full URL to use instead of the origin + `path` (an upload `Location`).
    target: Option<Uri>,
    body: Payload,
}

/// What a request carries.
pub(crate) enum Payload {
    Empty,
    /// Small bytes (a manifest), sent again on every attempt.
    Bytes(Bytes),
    /// A streamed body: it can be sent once only.
    Stream(Mutex<Option<ByteStream>>),
}

impl Payload {
    /// The body for the next send, with whether it streams (idle timeout) or not.
    fn take(&self) -> Result<(ReqBody, Option<Arc<Activity>>), UpstreamError> {
        match self {
            Payload::Empty => Ok((
                Empty::new().map_err(|never| match never {}).boxed_unsync(),
                None,
            )),
            Payload::Bytes(bytes) => Ok((
                Full::new(bytes.clone())
                    .map_err(|never| match never {})
                    .boxed_unsync(),
                None,
            )),
            Payload::Stream(slot) => {
                let stream = slot.lock().expect("payload lock").take().ok_or_else(|| {
                    UpstreamError::Connect {
                        url: String::new(),
                        source: "a streamed request body was already sent; retry with a new stream"
                            .into(),
                    }
                })?;
                let activity = Arc::new(Activity::new());
                let touch = activity.clone();
                let body = StreamBody::new(futures_util::StreamExt::map(stream, move |item| {
                    touch.touch();
                    item.map(hyper::body::Frame::data)
                }));
                Ok((BodyExt::boxed_unsync(body), Some(activity)))
            }
        }
    }

    fn is_consumed_stream(&self) -> bool {
        matches!(self, Payload::Stream(slot) if slot.lock().expect("payload lock").is_none())
    }
}

/// When a streamed request body last made progress: the request times out only after
/// `timeout` without any (a large chunk may take longer than `timeout` in total).
pub(crate) struct Activity {
    base: Instant,
    last_ms: std::sync::atomic::AtomicU64,
}

impl Activity {
    fn new() -> Activity {
        Activity {
            base: Instant::now(),
            last_ms: std::sync::atomic::AtomicU64::new(0),
        }
    }

    fn touch(&self) {
        let ms = self.base.elapsed().as_millis() as u64;
        self.last_ms.store(ms, Ordering::Relaxed);
    }

    fn idle(&self) -> Duration {
        let now = self.base.elapsed().as_millis() as u64;
        Duration::from_millis(now.saturating_sub(self.last_ms.load(Ordering::Relaxed)))
    }
}

impl UpstreamClient {
    /// A client with the system's trusted roots (rustls-native-certs) for https upstreams.
    pub fn new(config: UpstreamConfig) -> Result<UpstreamClient, UpstreamError> {
        let roots = crate::system_roots();
        if roots.is_empty() && config.url.starts_with("https:") {
            warn!(upstream = %config.name, "no system trust roots found: https to this upstream will fail");
        }
        Self::with_roots(config, roots)
    }

    /// Records each exchange's latency in `timings`, labelled with this upstream's name.
    pub fn with_timings(mut self, timings: crate::UpstreamTimings) -> UpstreamClient {
        self.timings = Some(timings);
        self
    }

    /// Signs every request to the origin with `signer` (its `Authorization`), instead of
    /// credentials and challenges.
    pub fn with_signer(mut self, signer: Arc<dyn crate::RequestSigner>) -> UpstreamClient {
        self.signer = Some(signer);
        self
    }

    /// Keeps this client inside `budget` ([`crate::budget`]).
    pub fn with_budget(mut self, budget: Arc<crate::Budget>) -> UpstreamClient {
        self.budget = Some(budget);
        self
    }

    /// One of the budget's concurrent fetches (none without a budget).
    async fn fetch_permit(&self) -> Result<Option<crate::budget::Permit>, UpstreamError> {
        match &self.budget {
            Some(b) => b.fetch_permit().await.map(Some),
            None => Ok(None),
        }
    }

    /// A client that trusts exactly `roots` (a private CA; tests), through the proxies
    /// the environment names.
    pub fn with_roots(
        config: UpstreamConfig,
        roots: rustls::RootCertStore,
    ) -> Result<UpstreamClient, UpstreamError> {
        let proxies = Proxies::from_env()
            .map_err(|e| UpstreamError::Protocol(format!("proxy settings: {e}")))?;
        Self::with_roots_and_proxies(config, roots, Arc::new(proxies))
    }

    /// A client that trusts exactly `roots` and goes through `proxies`.
    pub fn with_roots_and_proxies(
        config: UpstreamConfig,
        roots: rustls::RootCertStore,
        proxies: Arc<Proxies>,
    ) -> Result<UpstreamClient, UpstreamError> {
        let base: Uri = config.url.parse().map_err(|e| {
            UpstreamError::Protocol(format!("invalid upstream url {:?}: {e}", config.url))
        })?;
        let scheme = base
            .scheme()
            .cloned()
            .filter(|s| *s == Scheme::HTTP || *s == Scheme::HTTPS);
        let (Some(scheme), Some(authority)) = (scheme, base.authority().cloned()) else {
            return Err(UpstreamError::Protocol(format!(
                "invalid upstream url {:?}: need http:// or https:// and a host",
                config.url
            )));
        };
        if base.query().is_some() {
            return Err(UpstreamError::Protocol(format!(
                "invalid upstream url {:?}: no query string allowed",
                config.url
            )));
        }
        let prefix = base.path().trim_end_matches('/').to_owned();

        let tls = crate::tls_client_config(roots)
            .map_err(|e| UpstreamError::Protocol(format!("TLS setup: {e}")))?;
        // Redirects, realms and upload locations are the upstream's to choose; where they
        // may lead is the operator's (see `outbound`).
        let policy = Arc::new(Policy::new(authority.host(), config.allow_private));
        let direct = Connector::new(policy.clone(), config.timeout);
        // Through a proxy, the same policy is checked on the destination first (the
        // proxy connects: see `proxy`).
        let tcp = ProxyConnector::new(direct, proxies.clone(), config.timeout).with_policy(policy);
        proxies.log(&format!("upstream {}", config.name));
        let connector = crate::proxy::https_connector(tls, tcp, true);
        let http = Client::builder(TokioExecutor::new())
            .pool_idle_timeout(Duration::from_secs(90))
            .pool_timer(TokioTimer::new())
            .build(connector);

        Ok(UpstreamClient {
            name: config.name,
            scheme,
            authority,
            prefix,
            credentials: config.credentials,
            timeout: config.timeout,
            retries: config.retries,
            backoff: Backoff::new(Duration::from_millis(200), Duration::from_secs(5)),
            http,
            proxies,
            auth: AuthState::default(),
            timings: None,
            budget: None,
            signer: None,
        })
    }

    /// `GET /v2/`: whether the registry answers, and takes this client's credentials (a
    /// health check; fleet peers are probed with it).
    pub async fn ping(&self) -> Result<(), UpstreamError> {
        let repo: RepoName = "pier/ping"
            .parse()
            .map_err(|e| UpstreamError::Protocol(format!("{e}")))?;
        let mut call = self.call(Method::GET, &repo, String::new());
        call.path = "/v2/".to_owned();
        call.scope = String::new();
        let call = &call;
        self.with_retries(call, |attempt| self.exchange(call, attempt))
            .await
            .map(drop)
    }

    /// Change the retry backoff: the first wait is from `base`, each next one doubles, up
    /// to `cap`, with jitter ([`Backoff`]).
    pub fn with_backoff(mut self, base: Duration, cap: Duration) -> Self {
        self.backoff = Backoff::new(base, cap.max(base));
        self
    }

    fn call<'a>(&self, method: Method, repo: &'a RepoName, rest: String) -> Call<'a> {
        Call {
            method,
            path: format!("/v2/{repo}/{rest}"),
            scope: format!("repository:{repo}:pull"),
            headers: Vec::new(),
            repo,
            target: None,
            body: Payload::Empty,
        }
    }

    /// A call that writes to `repo`: its token asks for `pull,push`.
    fn push_call<'a>(&self, method: Method, repo: &'a RepoName, rest: String) -> Call<'a> {
        let mut call = self.call(method, repo, rest);
        call.scope = format!("repository:{repo}:pull,push");
        call
    }

    fn origin_uri(&self, path: &str) -> Result<Uri, UpstreamError> {
        Uri::builder()
            .scheme(self.scheme.clone())
            .authority(self.authority.clone())
            .path_and_query(format!("{}{path}", self.prefix))
            .build()
            .map_err(|e| UpstreamError::Protocol(format!("cannot build a URL for {path:?}: {e}")))
    }

    fn is_origin(&self, uri: &Uri) -> bool {
        uri.scheme() == Some(&self.scheme) && uri.authority() == Some(&self.authority)
    }

    /// The longest `Retry-After` worth waiting for inside one request; beyond it the
    /// error goes back to the caller at once.
    fn max_retry_after(&self) -> Duration {
        self.backoff.cap().max(self.timeout)
    }

    /// Run `op` (one attempt) until it succeeds, fails for good, or `retries` run out.
    async fn with_retries<T, F, Fut>(&self, call: &Call<'_>, mut op: F) -> Result<T, UpstreamError>
    where
        F: FnMut(u32) -> Fut,
        Fut: Future<Output = Result<T, Failure>>,
    {
        let mut attempt = 0;
        let mut waits = self.backoff.waits();
        loop {
            let failure = match op(attempt).await {
                Ok(value) => return Ok(value),
                Err(failure) => failure,
            };
            if attempt >= self.retries || !failure.error.is_retryable() {
                return Err(failure.error);
            }
            // Under a budget a 429 paused the upstream: no request waits for it here.
            if self.budget.is_some()
                && matches!(failure.error, UpstreamError::TooManyRequests { .. })
            {
                return Err(failure.error);
            }
            let mut wait = waits.next().unwrap_or(self.backoff.cap());
            if let Some(asked) = failure.retry_after {
                if asked > self.max_retry_after() {
                    warn!(upstream = %self.name, method = %call.method, path = %call.path, attempt,
                        retry_after_s = asked.as_secs(), "upstream asks for a longer wait than a request may take; giving up");
                    return Err(failure.error);
                }
                wait = wait.max(asked);
            }
            attempt += 1;
            warn!(upstream = %self.name, method = %call.method, path = %call.path, attempt,
                wait_ms = wait.as_millis() as u64, error = %failure.error, "retrying upstream request");
            tokio::time::sleep(wait).await;
        }
    }

    /// One attempt: auth challenges and redirects handled, a successful response back.
    async fn exchange(&self, call: &Call<'_>, attempt: u32) -> Result<Response<Incoming>, Failure> {
        let mut uri = match &call.target {
            Some(target) => target.clone(),
            None => self.origin_uri(&call.path)?,
        };
        let mut sent = self.initial_auth(&call.scope).await?;
        let mut redirects = 0;
        let mut auth_rounds = 0;
        loop {
            let on_origin = self.is_origin(&uri);
            let authorization = match (&self.signer, on_origin) {
                (_, false) => None,
                (Some(signer), true) => {
                    let target = uri.path_and_query().map_or("/", |p| p.as_str());
                    Some(signer.authorization(&call.method, target))
                }
                (None, true) => self.authorization(&sent)?,
            };
            let response = self
                .send_one(
                    &call.method,
                    &uri,
                    &call.headers,
                    authorization,
                    &call.body,
                    attempt,
                )
                .await
                .map_err(|f| {
                    f.via(if redirects > 0 {
                        "redirect"
                    } else if call.target.is_some() {
                        "upload location"
                    } else {
                        "request"
                    })
                })?;
            let status = response.status();

            if is_followed_redirect(status)
                && (call.method == Method::GET || call.method == Method::HEAD)
            {
                redirects += 1;
                if redirects > MAX_REDIRECTS {
                    return Err(UpstreamError::Protocol(format!(
                        "more than {MAX_REDIRECTS} redirects for {}",
                        call.path
                    ))
                    .into());
                }
                let location = response
                    .headers()
                    .get(LOCATION)
                    .and_then(|v| v.to_str().ok())
                    .ok_or_else(|| {
                        UpstreamError::Protocol(format!("{status} without a usable Location"))
                    })?;
                let next = resolve_location(&uri, location)?;
                debug!(upstream = %self.name, method = %call.method, from = %uri.path(),
                    to_host = %next.authority().map(|a| a.as_str()).unwrap_or(""),
                    to_path = %next.path(), status = status.as_u16(), "following redirect");
                uri = next;
                continue;
            }

            if status == StatusCode::UNAUTHORIZED && on_origin && auth_rounds < 3 {
                auth_rounds += 1;
                if let Some(next) = self
                    .answer_challenge(response.headers(), call, &sent)
                    .await?
                {
                    if call.body.is_consumed_stream() {
                        // The token is renewed for the next attempt; this body is gone.
                        return Err(UpstreamError::Connect {
                            url: uri.to_string(),
                            source: "token expired during a streamed upload".into(),
                        }
                        .into());
                    }
                    sent = next;
                    continue;
                }
            }

            if status.is_success() {
                return Ok(response);
            }
            let mut failure = self.status_failure(response).await;
            if let UpstreamError::Unauthorized(message) = &mut failure.error
                && self.credentials.is_none()
            {
                message.push_str(" (no credentials configured)");
            }
            debug!(upstream = %self.name, repo = %call.repo, error = %failure.error, "upstream request failed");
            return Err(failure);
        }
    }

    /// What to send before any challenge: a token when the upstream is known to use
    /// Bearer auth, Basic credentials when it asked for them.
    async fn initial_auth(&self, scope: &str) -> Result<Sent, Failure> {
        let known = self.auth.bearer.lock().expect("auth state lock").clone();
        if let Some(realm) = known {
            let (token, fresh) = self.token(&realm, scope, None).await?;
            return Ok(Sent::Bearer { token, fresh });
        }
        if self.credentials.is_some() && self.auth.basic.load(Ordering::Relaxed) {
            return Ok(Sent::Basic);
        }
        Ok(Sent::Anonymous)
    }

    fn authorization(&self, sent: &Sent) -> Result<Option<HeaderValue>, Failure> {
        let value = match sent {
            Sent::Anonymous => return Ok(None),
            Sent::Basic => match &self.credentials {
                Some(credentials) => basic_auth(credentials),
                None => return Ok(None),
            },
            Sent::Bearer { token, .. } => format!("Bearer {token}"),
        };
        let mut value = HeaderValue::try_from(value).map_err(|_| {
            UpstreamError::Protocol("credentials or token not usable in a header".to_owned())
        })?;
        value.set_sensitive(true);
        Ok(Some(value))
    }

    /// Answer a `401` from the origin: `Some(what to send next)`, or `None` when there is
    /// nothing better to try (the `401` then becomes `Unauthorized`).
    async fn answer_challenge(
        &self,
        headers: &HeaderMap,
        call: &Call<'_>,
        sent: &Sent,
    ) -> Result<Option<Sent>, Failure> {
        let challenges: Vec<crate::challenge::Challenge> = headers
            .get_all(WWW_AUTHENTICATE)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(crate::challenge::parse)
            .collect();
        if let Some(bearer) = challenges.iter().find(|c| c.scheme == "bearer") {
            if let Sent::Bearer { fresh: true, .. } = sent {
                return Ok(None);
            }
            let Some(realm) = bearer.param("realm") else {
                return Ok(None);
            };
            let realm = parse_realm(realm)?;
            let realm = BearerRealm {
                realm,
                service: bearer.param("service").map(str::to_owned),
            };
            *self.auth.bearer.lock().expect("auth state lock") = Some(realm.clone());
            let stale = match sent {
                Sent::Bearer { token, .. } => Some(token.as_str()),
                _ => None,
            };
            let (token, fresh) = self.token(&realm, &call.scope, stale).await?;
            return Ok(Some(Sent::Bearer { token, fresh }));
        }
        if challenges.iter().any(|c| c.scheme == "basic")
            && self.credentials.is_some()
            && !matches!(sent, Sent::Basic)
        {
            self.auth.basic.store(true, Ordering::Relaxed);
            return Ok(Some(Sent::Basic));
        }
        Ok(None)
    }

    /// A token for `scope`: the cached one unless it is `stale` or near expiry, else a
    /// new one from the realm. The flag says whether it was fetched just now.
    async fn token(
        &self,
        realm: &BearerRealm,
        scope: &str,
        stale: Option<&str>,
    ) -> Result<(String, bool), Failure> {
        let key = format!(
            "{} {} {scope}",
            realm.realm,
            realm.service.as_deref().unwrap_or("")
        );
        let slot = self
            .auth
            .tokens
            .lock()
            .expect("token cache lock")
            .entry(key)
            .or_default()
            .clone();
        let mut cached = slot.lock().await;
        if let Some(token) = cached.as_ref()
            && Instant::now() < token.refresh_at
            && Some(token.token.as_str()) != stale
        {
            return Ok((token.token.clone(), false));
        }
        let token = self.fetch_token(realm, scope).await?;
        let value = token.token.clone();
        *cached = Some(token);
        Ok((value, true))
    }

    async fn fetch_token(&self, realm: &BearerRealm, scope: &str) -> Result<CachedToken, Failure> {
        let mut query = String::new();
        if let Some(service) = &realm.service {
            query.push_str("service=");
            query.push_str(&percent_encode(service));
            query.push('&');
        }
        // Several scopes (a cross-repository mount) go as several `scope` parameters.
        for (i, one) in scope.split(' ').filter(|s| !s.is_empty()).enumerate() {
            if i > 0 {
                query.push('&');
            }
            query.push_str("scope=");
            query.push_str(&percent_encode(one));
        }
        let base = realm.realm.to_string();
        let separator = if realm.realm.query().is_some() {
            '&'
        } else {
            '?'
        };
        let uri: Uri = format!("{base}{separator}{query}").parse().map_err(|e| {
            UpstreamError::Protocol(format!("bad token URL from realm {base}: {e}"))
        })?;
        // Anonymous when no credentials are configured (`authorization` gives `None`).
        let authorization = self.authorization(&Sent::Basic)?;
        let started = Instant::now();
        let response = self
            .send_one(&Method::GET, &uri, &[], authorization, &Payload::Empty, 0)
            .await
            .map_err(|f| f.via("token realm"))?;
        if !response.status().is_success() {
            let mut failure = self.status_failure(response).await;
            if let UpstreamError::Unauthorized(message) | UpstreamError::Denied(message) =
                &mut failure.error
            {
                *message = format!(
                    "token endpoint {}{} refused: {message}",
                    uri_host(&uri),
                    uri.path()
                );
            }
            return Err(failure);
        }
        let body = read_limited(response.into_body(), MAX_SMALL_BODY, self.timeout, &uri).await?;
        #[derive(serde::Deserialize)]
        struct TokenResponse {
            token: Option<String>,
            access_token: Option<String>,
            expires_in: Option<u64>,
        }
        let parsed: TokenResponse = serde_json::from_slice(&body).map_err(|e| {
            UpstreamError::Protocol(format!("token endpoint sent invalid JSON: {e}"))
        })?;
        let token = parsed
            .token
            .filter(|t| !t.is_empty())
            .or(parsed.access_token.filter(|t| !t.is_empty()))
            .ok_or_else(|| UpstreamError::Protocol("token endpoint sent no token".to_owned()))?;
        let lifetime = match parsed.expires_in {
            Some(seconds) if seconds > 0 => Duration::from_secs(seconds),
            _ => DEFAULT_TOKEN_LIFETIME,
        };
        let margin = TOKEN_REFRESH_MARGIN.min(lifetime / 2);
        debug!(upstream = %self.name, scope, lifetime_s = lifetime.as_secs(), "got upstream token");
        Ok(CachedToken {
            token,
            refresh_at: started + lifetime - margin,
        })
    }

    /// One HTTP exchange, bounded by the timeout (connect + response headers).
    async fn send_one(
        &self,
        method: &Method,
        uri: &Uri,
        headers: &[(HeaderName, HeaderValue)],
        authorization: Option<HeaderValue>,
        payload: &Payload,
        attempt: u32,
    ) -> Result<Response<Incoming>, Failure> {
        // The budget counts requests to the upstream itself (not its CDN or token
        // service); while a 429's pause runs, none is sent.
        let budgeted = self.budget.as_ref().filter(|_| self.is_origin(uri));
        if let Some(b) = budgeted {
            b.admit().await.map_err(|error| {
                let retry_after = match &error {
                    UpstreamError::TooManyRequests { retry_after } => *retry_after,
                    _ => None,
                };
                Failure { error, retry_after }
            })?;
        }
        let mut request = Request::builder()
            .method(method.clone())
            .uri(uri.clone())
            .header(USER_AGENT, USER_AGENT_VALUE);
        for (name, value) in headers {
            request = request.header(name, value);
        }
        if let Some(value) = authorization {
            request = request.header(AUTHORIZATION, value);
        }
        // A plain-http request through a proxy with credentials: they are the proxy's.
        if let Some(value) = self.proxies.http_authorization(uri) {
            request = request.header(PROXY_AUTHORIZATION, value);
        }
        let (body, activity) = payload.take()?;
        let request = request
            .body(body)
            .map_err(|e| UpstreamError::Protocol(format!("cannot build request: {e}")))?;
        let started = Instant::now();
        let activity = activity.unwrap_or_else(|| {
            let a = Arc::new(Activity::new());
            a.touch();
            a
        });
        let exchange = self.http.request(request);
        tokio::pin!(exchange);
        // Bounded by `timeout` without progress: for an empty or small body that is the
        // whole exchange; a streamed body extends it while its bytes keep flowing.
        let outcome = loop {
            let left = self.timeout.saturating_sub(activity.idle());
            if left.is_zero() {
                break Err(());
            }
            if let Ok(result) = tokio::time::timeout(left, &mut exchange).await {
                break Ok(result);
            }
        };
        if let Some(t) = &self.timings {
            t.observe(&self.name, started.elapsed());
        }
        match outcome {
            Err(()) => {
                debug!(upstream = %self.name, method = %method, host = uri_host(uri), path = uri.path(),
                    attempt, "upstream request timed out");
                Err(UpstreamError::Timeout(self.timeout).into())
            }
            Ok(Err(error)) => {
                if let Some(refused) = outbound::refusal(&error) {
                    let error = UpstreamError::Refused {
                        via: "request",
                        url: format!(
                            "{}://{}{}",
                            uri.scheme_str().unwrap_or("http"),
                            uri_host(uri),
                            uri.path()
                        ),
                        addr: refused.addr,
                    };
                    warn!(upstream = %self.name, method = %method, host = uri_host(uri), path = uri.path(),
                        addr = %refused.addr, "refused to connect to a private address");
                    return Err(error.into());
                }
                debug!(upstream = %self.name, method = %method, host = uri_host(uri), path = uri.path(),
                    attempt, error = %error, "upstream request failed");
                Err(UpstreamError::Connect {
                    url: format!(
                        "{}://{}{}",
                        uri.scheme_str().unwrap_or("http"),
                        uri_host(uri),
                        uri.path()
                    ),
                    source: Box::new(error),
                }
                .into())
            }
            Ok(Ok(response)) => {
                if let Some(b) = budgeted {
                    b.observe_headers(response.headers());
                    if response.status() == StatusCode::TOO_MANY_REQUESTS {
                        b.pause(retry_after(response.headers()));
                    }
                }
                debug!(upstream = %self.name, method = %method, host = uri_host(uri), path = uri.path(),
                    status = response.status().as_u16(), attempt,
                    elapsed_ms = started.elapsed().as_millis() as u64, "upstream response");
                Ok(response)
            }
        }
    }

    /// The error a non-success response maps to, with a short text from its body.
    async fn status_failure(&self, response: Response<Incoming>) -> Failure {
        let status = response.status();
        let retry_after = retry_after(response.headers());
        let body = tokio::time::timeout(self.timeout, async {
            let mut body = response.into_body();
            let mut text = BytesMut::new();
            while let Some(Ok(frame)) = body.frame().await {
                if let Ok(data) = frame.into_data() {
                    text.extend_from_slice(&data);
                    if text.len() >= MAX_SMALL_BODY {
                        break;
                    }
                }
            }
            text
        })
        .await
        .unwrap_or_default();
        let message = error_text(status, &body);
        let error = match status.as_u16() {
            404 => UpstreamError::NotFound,
            401 => UpstreamError::Unauthorized(message),
            403 => UpstreamError::Denied(message),
            429 => UpstreamError::TooManyRequests { retry_after },
            code => UpstreamError::Status {
                status: code,
                body: message,
            },
        };
        Failure { error, retry_after }
    }
}

#[async_trait::async_trait]
impl Upstream for UpstreamClient {
    fn name(&self) -> &str {
        &self.name
    }

    async fn referrers(
        &self,
        repo: &RepoName,
        digest: &Digest,
    ) -> Result<Vec<pier_oci::Descriptor>, UpstreamError> {
        UpstreamClient::referrers(self, repo, digest).await
    }

    fn paused_for(&self) -> Option<Duration> {
        self.budget.as_ref().and_then(|b| b.paused_for())
    }

    async fn get_manifest(
        &self,
        repo: &RepoName,
        reference: &Reference,
    ) -> Result<ManifestFetched, UpstreamError> {
        let mut call = self.call(Method::GET, repo, format!("manifests/{reference}"));
        call.headers
            .push((ACCEPT, HeaderValue::from_static(MANIFEST_ACCEPT)));
        let call = &call;
        let _permit = self.fetch_permit().await?;
        let (headers, bytes) = self
            .with_retries(call, |attempt| async move {
                let response = self.exchange(call, attempt).await?;
                if let Some(length) = content_length(response.headers())
                    && length > MAX_MANIFEST_SIZE as u64
                {
                    return Err(UpstreamError::Protocol(format!(
                        "manifest of {length} bytes is over the {MAX_MANIFEST_SIZE} byte limit"
                    ))
                    .into());
                }
                let (parts, body) = response.into_parts();
                let uri = self.origin_uri(&call.path)?;
                let bytes = read_limited(body, MAX_MANIFEST_SIZE, self.timeout, &uri).await?;
                Ok((parts.headers, bytes))
            })
            .await?;
        if let Reference::Digest(expected) = reference {
            let actual = Digest::of(expected.algorithm(), &bytes);
            if actual != *expected {
                return Err(UpstreamError::Protocol(format!(
                    "upstream sent manifest {actual} for {expected}"
                )));
            }
        }
        let media_type = match content_type(&headers) {
            Some(media_type) => media_type,
            None => embedded_media_type(&bytes).ok_or_else(|| {
                UpstreamError::Protocol("manifest without a Content-Type or mediaType".to_owned())
            })?,
        };
        Ok(ManifestFetched {
            media_type,
            digest: header_digest(&headers),
            bytes,
        })
    }

    async fn head_manifest(
        &self,
        repo: &RepoName,
        reference: &Reference,
    ) -> Result<ManifestHead, UpstreamError> {
        let mut call = self.call(Method::HEAD, repo, format!("manifests/{reference}"));
        call.headers
            .push((ACCEPT, HeaderValue::from_static(MANIFEST_ACCEPT)));
        let call = &call;
        let _permit = self.fetch_permit().await?;
        let response = self
            .with_retries(call, |attempt| self.exchange(call, attempt))
            .await?;
        let headers = response.headers();
        let digest = match (header_digest(headers), reference) {
            (Some(digest), _) => digest,
            (None, Reference::Digest(digest)) => digest.clone(),
            (None, Reference::Tag(_)) => {
                return Err(UpstreamError::Protocol(
                    "manifest HEAD without Docker-Content-Digest".to_owned(),
                ));
            }
        };
        let size = content_length(headers).ok_or_else(|| {
            UpstreamError::Protocol("manifest HEAD without Content-Length".to_owned())
        })?;
        Ok(ManifestHead {
            digest,
            media_type: content_type(headers).unwrap_or_default(),
            size,
        })
    }

    async fn head_blob(&self, repo: &RepoName, digest: &Digest) -> Result<u64, UpstreamError> {
        let call = &self.call(Method::HEAD, repo, format!("blobs/{digest}"));
        let _permit = self.fetch_permit().await?;
        let response = self
            .with_retries(call, |attempt| self.exchange(call, attempt))
            .await?;
        content_length(response.headers())
            .ok_or_else(|| UpstreamError::Protocol("blob HEAD without Content-Length".to_owned()))
    }

    async fn get_blob(
        &self,
        repo: &RepoName,
        digest: &Digest,
        offset: u64,
    ) -> Result<BlobFetched, UpstreamError> {
        let mut call = self.call(Method::GET, repo, format!("blobs/{digest}"));
        if offset > 0 {
            let range = HeaderValue::try_from(format!("bytes={offset}-"))
                .map_err(|e| UpstreamError::Protocol(e.to_string()))?;
            call.headers.push((RANGE, range));
        }
        let call = &call;
        // Held until the body ends: a blob in transfer is a fetch in flight.
        let permit = self.fetch_permit().await?;
        let response = self
            .with_retries(call, |attempt| self.exchange(call, attempt))
            .await?;
        let status = response.status();
        let headers = response.headers();
        let (size, skip) = match status {
            StatusCode::PARTIAL_CONTENT if offset > 0 => {
                let range = headers
                    .get(CONTENT_RANGE)
                    .and_then(|v| v.to_str().ok())
                    .and_then(parse_content_range)
                    .ok_or_else(|| {
                        UpstreamError::Protocol("206 without a valid Content-Range".to_owned())
                    })?;
                if range.start != offset {
                    return Err(UpstreamError::Protocol(format!(
                        "asked for bytes from {offset}, upstream sent from {}",
                        range.start
                    )));
                }
                (range.total, 0)
            }
            StatusCode::OK => {
                let size = content_length(headers);
                if let Some(size) = size
                    && size < offset
                {
                    return Err(UpstreamError::Protocol(format!(
                        "offset {offset} is past the end of a {size} byte blob"
                    )));
                }
                (size, offset)
            }
            other => {
                return Err(UpstreamError::Protocol(format!(
                    "unexpected {other} for a blob GET (offset {offset})"
                )));
            }
        };
        debug!(upstream = %self.name, repo = %repo, %digest, offset, size, skip, "streaming blob from upstream");
        let stream = body_stream(response.into_body(), self.timeout, skip);
        let stream: ByteStream = match permit {
            Some(permit) => Box::pin(futures_util::StreamExt::map(stream, move |item| {
                let _held = &permit;
                item
            })),
            None => stream,
        };
        Ok(BlobFetched { size, stream })
    }
}

/// A `Retry-After` in seconds (the HTTP-date form is not used by registries).
fn retry_after(headers: &HeaderMap) -> Option<Duration> {
    headers
        .get(RETRY_AFTER)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<u64>().ok())
        .map(Duration::from_secs)
}

/// The body as a stream: each chunk must arrive within `idle` of the previous one; the
/// first `skip` bytes are dropped (a `200` answered to a range request).
fn body_stream(body: Incoming, idle: Duration, skip: u64) -> ByteStream {
    struct State {
        body: Incoming,
        idle: Duration,
        skip: u64,
        done: bool,
    }
    let state = State {
        body,
        idle,
        skip,
        done: false,
    };
    Box::pin(futures_util::stream::unfold(state, |mut st| async move {
        if st.done {
            return None;
        }
        loop {
            let error = match tokio::time::timeout(st.idle, st.body.frame()).await {
                Err(_) => io::Error::new(
                    io::ErrorKind::TimedOut,
                    format!("upstream sent no data for {:?}", st.idle),
                ),
                Ok(Some(Err(error))) => io::Error::other(error),
                Ok(None) if st.skip > 0 => io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    "upstream body ended before the requested offset",
                ),
                Ok(None) => return None,
                Ok(Some(Ok(frame))) => {
                    let Ok(mut data) = frame.into_data() else {
                        continue;
                    };
                    if st.skip > 0 {
                        let n = st.skip.min(data.len() as u64);
                        data = data.slice(n as usize..);
                        st.skip -= n;
                    }
                    if data.is_empty() {
                        continue;
                    }
                    return Some((Ok(data), st));
                }
            };
            st.done = true;
            return Some((Err(error), st));
        }
    }))
}

/// Read a whole (small) body: at most `limit` bytes, each chunk within `idle`.
async fn read_limited(
    mut body: Incoming,
    limit: usize,
    idle: Duration,
    uri: &Uri,
) -> Result<Bytes, Failure> {
    let mut out = BytesMut::new();
    loop {
        match tokio::time::timeout(idle, body.frame()).await {
            Err(_) => return Err(UpstreamError::Timeout(idle).into()),
            Ok(None) => return Ok(out.freeze()),
            Ok(Some(Err(error))) => {
                return Err(UpstreamError::Connect {
                    url: format!(
                        "{}://{}{}",
                        uri.scheme_str().unwrap_or("http"),
                        uri_host(uri),
                        uri.path()
                    ),
                    source: Box::new(error),
                }
                .into());
            }
            Ok(Some(Ok(frame))) => {
                if let Ok(data) = frame.into_data() {
                    if out.len() + data.len() > limit {
                        return Err(UpstreamError::Protocol(format!(
                            "upstream body is over the {limit} byte limit"
                        ))
                        .into());
                    }
                    out.extend_from_slice(&data);
                }
            }
        }
    }
}

fn is_followed_redirect(status: StatusCode) -> bool {
    matches!(status.as_u16(), 301 | 302 | 303 | 307 | 308)
}

fn uri_host(uri: &Uri) -> &str {
    uri.authority().map(Authority::as_str).unwrap_or("")
}

fn basic_auth(credentials: &Credentials) -> String {
    let raw = format!("{}:{}", credentials.username, credentials.password);
    format!(
        "Basic {}",
        base64::engine::general_purpose::STANDARD.encode(raw)
    )
}

fn content_length(headers: &HeaderMap) -> Option<u64> {
    headers
        .get(CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse().ok())
}

/// `Content-Type` without parameters.
fn content_type(headers: &HeaderMap) -> Option<String> {
    let value = headers.get(CONTENT_TYPE)?.to_str().ok()?;
    let media_type = value.split(';').next().unwrap_or("").trim();
    (!media_type.is_empty()).then(|| media_type.to_ascii_lowercase())
}

fn header_digest(headers: &HeaderMap) -> Option<Digest> {
    let value = headers.get(DOCKER_CONTENT_DIGEST)?.to_str().ok()?;
    match value.trim().parse() {
        Ok(digest) => Some(digest),
        Err(_) => {
            debug!(value, "ignoring unparsable Docker-Content-Digest");
            None
        }
    }
}

/// The `mediaType` field of a manifest served without a `Content-Type`.
fn embedded_media_type(bytes: &[u8]) -> Option<String> {
    #[derive(serde::Deserialize)]
    struct Probe {
        #[serde(rename = "mediaType")]
        media_type: Option<String>,
    }
    let probe: Probe = serde_json::from_slice(bytes).ok()?;
    probe.media_type.filter(|m| {
        [
            media_types::OCI_MANIFEST,
            media_types::OCI_INDEX,
            media_types::DOCKER_MANIFEST,
            media_types::DOCKER_MANIFEST_LIST,
        ]
        .contains(&m.as_str())
    })
}

/// A short human text for an error response: the first OCI error's code and message
/// when the body is OCI error JSON, else the start of the body.
fn error_text(status: StatusCode, body: &[u8]) -> String {
    #[derive(serde::Deserialize)]
    struct Errors {
        errors: Vec<OciError>,
    }
    #[derive(serde::Deserialize)]
    struct OciError {
        #[serde(default)]
        code: String,
        #[serde(default)]
        message: String,
    }
    if let Ok(parsed) = serde_json::from_slice::<Errors>(body)
        && let Some(first) = parsed.errors.first()
    {
        return truncate(format!("{}: {}", first.code, first.message));
    }
    let text = String::from_utf8_lossy(body);
    let text = text.trim();
    if text.is_empty() {
        status.to_string()
    } else {
        truncate(text.to_owned())
    }
}

fn truncate(mut text: String) -> String {
    if text.len() > MAX_ERROR_TEXT {
        let mut end = MAX_ERROR_TEXT;
        while !text.is_char_boundary(end) {
            end -= 1;
        }
        text.truncate(end);
        text.push('…');
    }
    text
}

fn parse_realm(realm: &str) -> Result<Uri, UpstreamError> {
    let uri: Uri = realm
        .parse()
        .map_err(|e| UpstreamError::Protocol(format!("bad token realm {realm:?}: {e}")))?;
    match (uri.scheme_str(), uri.authority()) {
        (Some("http" | "https"), Some(_)) => Ok(uri),
        _ => Err(UpstreamError::Protocol(format!(
            "token realm {realm:?} is not an http(s) URL"
        ))),
    }
}

/// Where a redirect goes: `Location` resolved against the URL that answered.
fn resolve_location(base: &Uri, location: &str) -> Result<Uri, UpstreamError> {
    let location = location.trim();
    let bad =
        |why: String| UpstreamError::Protocol(format!("bad redirect Location {location:?}: {why}"));
    let scheme = base.scheme_str().unwrap_or("http");
    let authority = uri_host(base);
    let absolute = if location.starts_with("http://") || location.starts_with("https://") {
        location.to_owned()
    } else if location.starts_with("//") {
        format!("{scheme}:{location}")
    } else if location.starts_with('/') {
        format!("{scheme}://{authority}{location}")
    } else if location.contains("://") {
        return Err(bad("not an http(s) URL".to_owned()));
    } else {
        let dir = match base.path().rfind('/') {
            Some(i) => &base.path()[..=i],
            None => "/",
        };
        format!("{scheme}://{authority}{dir}{location}")
    };
    let uri: Uri = absolute.parse().map_err(|e| bad(format!("{e}")))?;
    if uri.authority().is_none() {
        return Err(bad("no host".to_owned()));
    }
    Ok(uri)
}

/// Everything but RFC 3986 unreserved characters.
const RESERVED: &percent_encoding::AsciiSet = &percent_encoding::NON_ALPHANUMERIC
    .remove(b'-')
    .remove(b'.')
    .remove(b'_')
    .remove(b'~');

/// Percent-encode a query value (everything but RFC 3986 unreserved characters).
fn percent_encode(value: &str) -> String {
    percent_encoding::utf8_percent_encode(value, RESERVED).to_string()
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct ContentRange {
    start: u64,
    total: Option<u64>,
}

/// `bytes START-END/TOTAL` (TOTAL may be `*`).
fn parse_content_range(value: &str) -> Option<ContentRange> {
    let rest = value.trim().strip_prefix("bytes")?.trim_start();
    let (range, total) = rest.split_once('/')?;
    let (start, end) = range.trim().split_once('-')?;
    let start: u64 = start.trim().parse().ok()?;
    let end: u64 = end.trim().parse().ok()?;
    if end < start {
        return None;
    }
    let total = match total.trim() {
        "*" => None,
        t => Some(t.parse().ok()?),
    };
    Some(ContentRange { start, total })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn resolves_redirect_locations() {
        let base: Uri = "https://reg.example:5000/v2/a/blobs/sha256:x?q=1"
            .parse()
            .unwrap();
        let r = |l: &str| resolve_location(&base, l).unwrap().to_string();
        assert_eq!(
            r("https://cdn.example/b?sig=1&x=2"),
            "https://cdn.example/b?sig=1&x=2"
        );
        assert_eq!(r("//cdn.example/b"), "https://cdn.example/b");
        assert_eq!(r("/other/path?x"), "https://reg.example:5000/other/path?x");
        assert_eq!(r("sibling"), "https://reg.example:5000/v2/a/blobs/sibling");
        assert!(resolve_location(&base, "ftp://x/y").is_err());
    }

    #[test]
    fn parses_content_ranges() {
        assert_eq!(
            parse_content_range("bytes 10-99/100"),
            Some(ContentRange {
                start: 10,
                total: Some(100)
            })
        );
        assert_eq!(
            parse_content_range("bytes 10-99/*"),
            Some(ContentRange {
                start: 10,
                total: None
            })
        );
        assert_eq!(parse_content_range("bytes 99-10/100"), None);
        assert_eq!(parse_content_range("items 1-2/3"), None);
    }

    #[test]
    fn percent_encodes_scopes() {
        assert_eq!(
            percent_encode("repository:library/alpine:pull"),
            "repository%3Alibrary%2Falpine%3Apull"
        );
        assert_eq!(percent_encode("registry.docker.io"), "registry.docker.io");
    }

    #[test]
    fn error_text_prefers_oci_errors() {
        let body =
            br#"{"errors":[{"code":"MANIFEST_UNKNOWN","message":"manifest unknown","detail":{}}]}"#;
        assert_eq!(
            error_text(StatusCode::NOT_FOUND, body),
            "MANIFEST_UNKNOWN: manifest unknown"
        );
        assert_eq!(error_text(StatusCode::BAD_GATEWAY, b""), "502 Bad Gateway");
        assert_eq!(
            error_text(StatusCode::BAD_GATEWAY, &[b'x'; 1000])
                .chars()
                .count(),
            MAX_ERROR_TEXT + 1
        );
    }

    #[test]
    fn content_type_drops_parameters() {
        let mut headers = HeaderMap::new();
        headers.insert(
            CONTENT_TYPE,
            HeaderValue::from_static("application/vnd.oci.image.index.v1+json; charset=utf-8"),
        );
        assert_eq!(
            content_type(&headers).as_deref(),
            Some(media_types::OCI_INDEX)
        );
    }

    #[test]
    fn backoff_doubles_with_jitter_up_to_the_cap() {
        let config = UpstreamConfig {
            name: "t".into(),
            url: "http://127.0.0.1:1".into(),
            credentials: None,
            timeout: Duration::from_secs(1),
            retries: 3,
            allow_private: false,
        };
        let client = UpstreamClient::with_roots(config, rustls::RootCertStore::empty())
            .unwrap()
            .with_backoff(Duration::from_millis(200), Duration::from_secs(1));
        // Each wait in [d, min(2d, cap)] for d = 200 ms doubling (backon computes in f32
        // seconds: a microsecond of slack below).
        let floors = [200, 400, 800, 1000, 1000];
        for _ in 0..100 {
            for (wait, floor) in client.backoff.waits().zip(floors) {
                let floor = Duration::from_millis(floor);
                assert!(
                    wait + Duration::from_micros(1) >= floor,
                    "{wait:?} < {floor:?}"
                );
                assert!(wait <= (floor * 2).min(Duration::from_secs(1)), "{wait:?}");
            }
        }
        assert!(client.backoff.wait(40) <= Duration::from_secs(1));
    }

    #[test]
    fn refusals_are_final_and_say_how_to_allow_them() {
        let refused = UpstreamError::Refused {
            via: "request",
            url: "http://127.0.0.1:9/internal".into(),
            addr: "127.0.0.1".parse().unwrap(),
        };
        let failure = Failure::from(refused).via("redirect");
        assert!(!failure.error.is_retryable());
        assert_eq!(
            failure.error.to_string(),
            "refused: redirect to http://127.0.0.1:9/internal (127.0.0.1), a private address; \
             set allow_private = true on this upstream to allow it"
        );
    }

    #[test]
    fn rejects_bad_base_urls() {
        for url in ["ftp://x", "127.0.0.1:5000", "http://x/?a=b", "not a url"] {
            let config = UpstreamConfig {
                name: "t".into(),
                url: url.into(),
                credentials: None,
                timeout: Duration::from_secs(1),
                retries: 0,
                allow_private: false,
            };
            assert!(
                UpstreamClient::with_roots(config, rustls::RootCertStore::empty()).is_err(),
                "{url}"
            );
        }
    }
}
