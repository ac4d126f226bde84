//! Access control at the HTTP edge: Docker token auth (the `401` challenge, the token
//! endpoint, bearer verification), HTTP basic auth, and the mapping of a request to the
//! actions it needs. Decisions come from the configured [`Authorizer`]; a policy that
//! fails makes the request fail closed with `503 UNAVAILABLE`.

use std::net::SocketAddr;
use std::sync::Arc;

use base64::Engine as _;
use bytes::Bytes;
use http::{HeaderMap, Method, Request, Response, StatusCode, header};
use http_body_util::{BodyExt, Limited};
use hyper::body::Incoming;
use pier_auth::authn::Authenticator;
use pier_auth::revoke::Revocations;
use pier_auth::scope::{self, ResourceActions};
use pier_auth::throttle::RateLimit;
use pier_auth::token::{Claims, TokenService};
use pier_auth::{
    AccessRequest, Action, AuthError, Authorizer, Credentials, Decision, RequestContext,
    RequestRoute, Subject,
};
use pier_core::Mirror;
use pier_oci::RepoName;
use serde_json::json;

use crate::body::{RespBody, full};
use crate::client::{ClientAddr, TrustedProxies};
use crate::error::ApiError;
use crate::route::Route;

/// The token endpoint's path (the `realm` of the challenge points here).
pub const TOKEN_PATH: &str = "/auth/token";
/// The revocation endpoint (RFC 7009 style): `POST` a form with `token=...`.
pub const REVOKE_PATH: &str = "/auth/revoke";

/// How the gateway decides who may do what; built by the binary.
pub struct AccessControl {
    pub authorizer: Arc<dyn Authorizer>,
    pub authn: Arc<Authenticator>,
    pub tokens: Arc<TokenService>,
    /// Token ids refused before their expiry.
    pub revocations: Arc<dyn Revocations>,
    /// The realm URL to advertise; derived from the request's Host when `None`.
    pub realm: Option<String>,
    /// Peers whose `X-Forwarded-For` names the client (for throttles and policies).
    pub trusted_proxies: TrustedProxies,
    /// Calls of the revocation endpoint per client address.
    pub revoke_limit: RateLimit,
    /// The authorizer's recent deny reasons per (subject, repository, action), for the
    /// registry's error when a token lacks the scope the authorizer refused.
    pub denials: Denials,
}

/// Deny reasons of the token endpoint, remembered [`DENIAL_TTL`]: the token protocol
/// answers a token with fewer scopes (no error), so the reason reaches the client with
/// the registry's `insufficient_scope` error that follows.
pub struct Denials(moka::sync::Cache<(String, String, Action), String>);

/// How long a deny reason is remembered for the registry's error.
pub const DENIAL_TTL: std::time::Duration = std::time::Duration::from_secs(300);

impl Default for Denials {
    fn default() -> Self {
        Denials(
            moka::sync::Cache::builder()
                .max_capacity(10_000)
                .time_to_live(DENIAL_TTL)
                .build(),
        )
    }
}

impl Denials {
    fn remember(&self, subject: &str, repo: &str, action: Action, reason: &str) {
        self.0.insert(
            (subject.to_owned(), repo.to_owned(), action),
            reason.to_owned(),
        );
    }

    fn reason(&self, subject: &str, repo: &str, action: Action) -> Option<String> {
        self.0.get(&(subject.to_owned(), repo.to_owned(), action))
    }
}

/// The connection a request arrived on.
#[derive(Debug, Clone, Copy)]
pub struct ConnInfo {
    pub peer: SocketAddr,
    pub tls: bool,
}

/// Who the request was verified as, for handlers that filter by caller (catalog).
#[derive(Debug, Clone)]
pub struct Caller(pub Subject);

/// Set on a mount request whose caller may not pull the source repository: the
/// handler then starts a normal upload instead of mounting.
#[derive(Debug, Clone, Copy)]
pub struct MountRefused;

/// An `application/x-www-form-urlencoded` body of at most 64 KiB, as (name, value) pairs.
async fn read_form(req: Request<Incoming>) -> Result<Vec<(String, String)>, ApiError> {
    let body = Limited::new(req.into_body(), 64 << 10)
        .collect()
        .await
        .map_err(|e| ApiError::Body(e.to_string()))?
        .to_bytes();
    Ok(crate::query::parse(&String::from_utf8_lossy(&body)))
}

/// The repository a request is authorized on: the one whose content it reaches (for a
/// mirrored name, the upstream's cache namespace, e.g. `library/app?ns=hub.example` is
/// `hub/library/app`), and the path's own name when a token granted for it also counts.
#[derive(Debug, Clone, Copy)]
pub struct Served<'a> {
    pub repo: Option<&'a RepoName>,
    /// Set when no `?ns=` was given: the token endpoint decides a path name on the
    /// content it routes to, so a token for the path's name grants the same.
    pub alias: Option<&'a RepoName>,
}

/// What a request needs: (repository, action) pairs; none for `/v2/` and the catalog.
fn needs(route: &Route, repo: Option<&RepoName>, method: &Method) -> Vec<(String, Action)> {
    let Some(repo) = repo else {
        return Vec::new();
    };
    let action = match (route, method) {
        (Route::Manifest(..) | Route::Blob(..), &Method::DELETE) => Action::Delete,
        (Route::Manifest(..), &Method::PUT) => Action::Push,
        (Route::UploadStart(_) | Route::Upload(..), _) => Action::Push,
        _ => Action::Pull,
    };
    let mut v = vec![(repo.to_string(), action)];
    if action == Action::Push {
        v.insert(0, (repo.to_string(), Action::Pull));
    }
    v
}

/// What an authorizer is told of a registry request.
fn request_context(route: &Route, req: &Request<Incoming>) -> RequestContext {
    let r = match route {
        Route::Base => RequestRoute::Base,
        Route::Catalog => RequestRoute::Catalog,
        Route::Tags(_) => RequestRoute::Tags,
        Route::Manifest(..) => RequestRoute::Manifest,
        Route::Blob(..) => RequestRoute::Blob,
        Route::UploadStart(_) | Route::Upload(..) => RequestRoute::Upload,
        Route::Referrers(..) => RequestRoute::Referrers,
    };
    let mut c = RequestContext::new(r)
        .with_method(req.method().as_str())
        .with_user_agent(user_agent(req.headers()));
    match route {
        Route::Manifest(_, pier_oci::Reference::Tag(t)) => c.tag = Some(t.to_string()),
        Route::Manifest(_, pier_oci::Reference::Digest(d))
        | Route::Blob(_, d)
        | Route::Referrers(_, d) => c.digest = Some(d.to_string()),
        _ => {}
    }
    c
}

fn user_agent(headers: &HeaderMap) -> Option<&[u8]> {
    headers.get(header::USER_AGENT).map(|v| v.as_bytes())
}

/// The mount source of `POST .../blobs/uploads/?mount=D&from=REPO`.
fn mount_source(route: &Route, req: &Request<Incoming>) -> Option<String> {
    if !matches!(route, Route::UploadStart(_)) {
        return None;
    }
    let q = crate::query::parse(req.uri().query()?);
    q.iter().any(|(k, _)| k == "mount").then_some(())?;
    q.into_iter().find(|(k, _)| k == "from").map(|(_, v)| v)
}

enum Presented {
    None,
    Bearer(String),
    Basic(Credentials),
    Malformed,
}

fn presented(headers: &HeaderMap, client: &str) -> Presented {
    let Some(v) = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
    else {
        return Presented::None;
    };
    let (scheme, rest) = v.split_once(' ').unwrap_or((v, ""));
    if scheme.eq_ignore_ascii_case("bearer") {
        return Presented::Bearer(rest.trim().to_owned());
    }
    if scheme.eq_ignore_ascii_case("basic") {
        let decoded = base64::engine::general_purpose::STANDARD
            .decode(rest.trim())
            .ok()
            .and_then(|b| String::from_utf8(b).ok());
        if let Some((u, p)) = decoded.as_deref().and_then(|d| d.split_once(':')) {
            return Presented::Basic(Credentials {
                username: u.to_owned(),
                password: p.to_owned(),
                client: client.to_owned(),
            });
        }
    }
    Presented::Malformed
}

impl AccessControl {
    /// The client of a request that came from `peer` (see [`TrustedProxies`]).
    pub fn client(&self, peer: SocketAddr, headers: &HeaderMap) -> ClientAddr {
        self.trusted_proxies.client(peer, headers)
    }

    /// Adds the counters of logins and revocations to `registry` (read at scrape time).
    pub fn register_metrics(
        self: &Arc<Self>,
        registry: &mut prometheus_client::registry::Registry,
    ) {
        registry.register_collector(Box::new(AccessMetrics(self.clone())));
    }

    /// The configured realm, or one on the request's `Host` when that is a valid host
    /// name or address (never the client's address, never a string it chose freely).
    fn realm(&self, headers: &HeaderMap, conn: &ConnInfo) -> Option<String> {
        if let Some(r) = &self.realm {
            return Some(r.clone());
        }
        let host = headers
            .get(header::HOST)
            .and_then(|h| h.to_str().ok())
            .filter(|h| valid_host(h))?;
        let scheme = if conn.tls { "https" } else { "http" };
        Some(format!("{scheme}://{host}{TOKEN_PATH}"))
    }

    fn challenge(
        &self,
        headers: &HeaderMap,
        conn: &ConnInfo,
        scope: Option<String>,
        error: Option<&str>,
    ) -> String {
        let mut c = format!(
            "Bearer realm=\"{}\",service=\"{}\"",
            self.realm(headers, conn).unwrap_or_default(),
            self.tokens.service()
        );
        if let Some(s) = scope {
            c.push_str(&format!(",scope=\"{s}\""));
        }
        if let Some(e) = error {
            c.push_str(&format!(",error=\"{e}\""));
        }
        c
    }

    /// Checks a registry request. On success the request carries a [`Caller`] (and a
    /// [`MountRefused`] when it may not mount from the named source).
    pub async fn check(
        &self,
        route: &Route,
        served: Served<'_>,
        req: &mut Request<Incoming>,
        conn: &ConnInfo,
    ) -> Result<(), ApiError> {
        let from = self.client(conn.peer, req.headers());
        let client = from.label.clone();
        if self.realm(req.headers(), conn).is_none() {
            return Err(ApiError::BadHost);
        }
        let needs = needs(route, served.repo, req.method());
        // The challenge names the path's name when a token for it counts (clients such as
        // docker ask for their own name's scope anyway), else the content's.
        let scope = scope_for(
            route,
            &self::needs(route, served.alias.or(served.repo), req.method()),
        );
        let alias_allows = |claims: &Claims, action: &Action| {
            served
                .alias
                .is_some_and(|p| claims.allows("repository", p.as_str(), action.as_str()))
        };
        let challenge =
            |error: Option<&str>| self.challenge(req.headers(), conn, scope.clone(), error);
        let subject = match presented(req.headers(), &client) {
            Presented::None => {
                return Err(ApiError::Unauthorized {
                    challenge: challenge(None),
                    message: "authentication required".into(),
                    denied: false,
                });
            }
            Presented::Malformed => {
                return Err(ApiError::Unauthorized {
                    challenge: challenge(Some("invalid_request")),
                    message: "malformed Authorization header".into(),
                    denied: false,
                });
            }
            Presented::Bearer(t) => {
                let claims = self.tokens.verify(&t).map_err(|e| ApiError::Unauthorized {
                    challenge: challenge(Some("invalid_token")),
                    message: e.to_string(),
                    denied: false,
                })?;
                if self.revoked(&claims.jti).await {
                    return Err(ApiError::Unauthorized {
                        challenge: challenge(Some("invalid_token")),
                        message: "the token was revoked".into(),
                        denied: false,
                    });
                }
                if let Some((repo, action)) = needs.iter().find(|(r, a)| {
                    !claims.allows("repository", r, a.as_str()) && !alias_allows(&claims, a)
                }) {
                    // The authorizer's reason, when it refused this scope lately.
                    let why = self
                        .denials
                        .reason(&claims.sub, repo, *action)
                        .map(|r| format!(" ({r})"))
                        .unwrap_or_default();
                    return Err(ApiError::Unauthorized {
                        challenge: challenge(Some("insufficient_scope")),
                        message: format!(
                            "requested access to the resource is denied: the token does not grant {action} on {repo}{why}"
                        ),
                        denied: true,
                    });
                }
                if let Some(from) = mount_source(route, req)
                    && !claims.allows("repository", &from, "pull")
                {
                    req.extensions_mut().insert(MountRefused);
                }
                req.extensions_mut().insert(TokenClaims(claims.clone()));
                self.authn.subject_of(&claims)
            }
            Presented::Basic(creds) => {
                let subject = self
                    .authn
                    .authenticate(self.authorizer.as_ref(), &creds, from.ip)
                    .await
                    .map_err(ApiError::from)?
                    .ok_or_else(|| ApiError::Unauthorized {
                        challenge: challenge(None),
                        message: "invalid username or password".into(),
                        denied: false,
                    })?;
                let ctx = request_context(route, req);
                for (repo, action) in &needs {
                    if let Decision::Deny(reason) =
                        self.decide(&subject, *action, repo, &client, &ctx).await?
                    {
                        return Err(ApiError::Denied(reason));
                    }
                }
                if let Some(from) = mount_source(route, req)
                    && !self
                        .decide(&subject, Action::Pull, &from, &client, &ctx)
                        .await?
                        .is_allow()
                {
                    req.extensions_mut().insert(MountRefused);
                }
                subject
            }
        };
        req.extensions_mut().insert(pier_core::Caller {
            subject: subject.clone(),
            client,
        });
        req.extensions_mut().insert(Caller(subject));
        Ok(())
    }

    async fn decide(
        &self,
        subject: &Subject,
        action: Action,
        repo: &str,
        client: &str,
        ctx: &RequestContext,
    ) -> Result<Decision, ApiError> {
        let req = AccessRequest {
            subject: subject.clone(),
            action,
            repository: Some(repo.to_owned()),
            client: client.to_owned(),
            context: ctx.clone(),
        };
        let d = self
            .authorizer
            .authorize(&req)
            .await
            .map_err(AuthError::from)?;
        if let Decision::Deny(reason) = &d {
            tracing::debug!(subject = %subject, action = action.as_str(), repository = repo, client, reason = %reason, "authorizer denied");
            self.denials
                .remember(&subject.token_name(), repo, action, reason);
        }
        Ok(d)
    }

    /// Checks an administrative request (admin listener): Basic credentials of an account
    /// the authorizer allows the `admin` action. Returns the verified credentials.
    pub async fn check_admin(
        &self,
        method: &Method,
        headers: &HeaderMap,
        client: &ClientAddr,
    ) -> Result<Credentials, ApiError> {
        self.check_basic(method, headers, client, Action::Admin, None)
            .await
            .map(|(c, _)| c)
    }

    /// Verifies the Basic credentials of an admin API request (no authorization yet).
    pub async fn authenticate_basic(
        &self,
        headers: &HeaderMap,
        client: &ClientAddr,
    ) -> Result<(Credentials, Subject), ApiError> {
        let creds = match presented(headers, &client.label) {
            Presented::Basic(c) => c,
            _ => {
                return Err(ApiError::Unauthorized {
                    challenge: "Basic realm=\"pier-admin\"".into(),
                    message: "administrative endpoints need basic credentials".into(),
                    denied: false,
                });
            }
        };
        let subject = self
            .authn
            .authenticate(self.authorizer.as_ref(), &creds, client.ip)
            .await
            .map_err(ApiError::from)?
            .ok_or_else(|| ApiError::Unauthorized {
                challenge: "Basic realm=\"pier-admin\"".into(),
                message: "invalid username or password".into(),
                denied: false,
            })?;
        Ok((creds, subject))
    }

    /// Checks a request of the admin API: Basic credentials of an account the authorizer
    /// allows `action` on `project` (system-wide when `None`). Returns the verified
    /// credentials and who they belong to.
    pub async fn check_basic(
        &self,
        method: &Method,
        headers: &HeaderMap,
        client: &ClientAddr,
        action: Action,
        project: Option<&str>,
    ) -> Result<(Credentials, Subject), ApiError> {
        let (creds, subject) = self.authenticate_basic(headers, client).await?;
        let client = client.label.as_str();
        let ctx = RequestContext::new(RequestRoute::Admin)
            .with_method(method.as_str())
            .with_user_agent(user_agent(headers));
        let decision = match project {
            Some(p) => self.decide(&subject, action, p, client, &ctx).await?,
            None => self
                .authorizer
                .authorize(&AccessRequest {
                    subject: subject.clone(),
                    action,
                    repository: None,
                    client: client.to_owned(),
                    context: ctx,
                })
                .await
                .map_err(AuthError::from)?,
        };
        match decision {
            Decision::Allow => Ok((creds, subject)),
            Decision::Deny(reason) => Err(ApiError::Denied(reason)),
        }
    }

    /// Whether `subject` may do the system-wide `action` (e.g. `admin`).
    pub async fn allows_system(
        &self,
        subject: &Subject,
        action: Action,
        client: &str,
    ) -> Result<bool, ApiError> {
        let req = AccessRequest {
            subject: subject.clone(),
            action,
            repository: None,
            client: client.to_owned(),
            context: RequestContext::new(RequestRoute::Admin),
        };
        Ok(self
            .authorizer
            .authorize(&req)
            .await
            .map_err(AuthError::from)?
            .is_allow())
    }

    /// Whether `subject` may do `action` in `project` (admin API listings).
    pub async fn allows(
        &self,
        subject: &Subject,
        action: Action,
        project: &str,
        client: &str,
    ) -> Result<bool, ApiError> {
        Ok(self
            .decide(
                subject,
                action,
                project,
                client,
                &RequestContext::new(RequestRoute::Admin),
            )
            .await?
            .is_allow())
    }

    /// Whether `subject` may see `repo` in the catalog.
    pub async fn may_search(
        &self,
        subject: &Subject,
        repo: &str,
        client: &str,
    ) -> Result<bool, ApiError> {
        Ok(self
            .decide(
                subject,
                Action::Search,
                repo,
                client,
                &RequestContext::new(RequestRoute::Catalog),
            )
            .await?
            .is_allow())
    }

    /// Whether the token `jti` was revoked. When the store cannot answer (Redis down) the
    /// token is accepted, logged: revocation is best effort, reads keep working.
    async fn revoked(&self, jti: &str) -> bool {
        if jti.is_empty() {
            return false;
        }
        match self.revocations.is_revoked(jti).await {
            Ok(r) => r,
            Err(e) => {
                tracing::warn!(error = %e, "cannot check token revocation; accepting the token");
                false
            }
        }
    }

    /// The revocation endpoint (RFC 7009 style): `POST` with a form body `token=...` of an
    /// access or refresh token this gateway (or a trusted issuer) signed. Holding the token
    /// is the right to revoke it. Answers 200 also for tokens that are invalid or already
    /// expired (nothing to revoke), as RFC 7009 asks.
    ///
    /// Each revocation is kept until its token expires (a refresh token's lifetime: days),
    /// so calls are rate limited per client address (429 with `Retry-After`). Anonymous
    /// tokens are not stored: one grants only what anyone may have (public pulls), and
    /// anyone can get another for the asking, so revoking it would protect nothing.
    pub async fn revoke_endpoint(
        &self,
        req: Request<Incoming>,
        conn: &ConnInfo,
    ) -> Result<Response<RespBody>, ApiError> {
        if req.method() != Method::POST {
            return Err(ApiError::MethodNotAllowed(req.method().clone()));
        }
        let from = self.client(conn.peer, req.headers());
        self.revoke_limit
            .take(from.ip)
            .map_err(|retry_after| ApiError::RateLimited {
                what: "token revocations",
                retry_after,
            })?;
        let form = read_form(req).await?;
        let Some(token) = form.iter().find(|(k, _)| k == "token").map(|(_, v)| v) else {
            return Err(ApiError::Auth(AuthError::Invalid(
                "the revocation request needs a `token` form field".into(),
            )));
        };
        if let Ok(claims) = self.tokens.verify_any(token)
            && !claims.jti.is_empty()
            && !claims.sub.is_empty()
        {
            self.revocations
                .revoke(&claims.jti, claims.exp)
                .await
                .map_err(ApiError::Auth)?;
            tracing::info!(sub = %claims.sub, jti = %claims.jti, client = %from, "token revoked");
        }
        Ok(Response::builder()
            .status(StatusCode::OK)
            .header(header::CONTENT_TYPE, "application/json")
            .body(full(Bytes::from_static(b"{}")))
            .expect("static response"))
    }

    /// The token endpoint: `GET` (basic or anonymous, `scope`, `service`,
    /// `offline_token`) and `POST` (OAuth2 `password` and `refresh_token` grants).
    pub async fn token_endpoint(
        &self,
        req: Request<Incoming>,
        conn: &ConnInfo,
        mirror: Option<&Mirror>,
    ) -> Result<Response<RespBody>, ApiError> {
        let from = self.client(conn.peer, req.headers());
        let client = from.label.clone();
        let method = req.method().clone();
        let headers = req.headers().clone();
        let query = req
            .uri()
            .query()
            .map(crate::query::parse)
            .unwrap_or_default();
        let (subject, params, oauth) = match method {
            Method::GET => {
                let subject = match presented(&headers, &client) {
                    Presented::None => Subject::Anonymous,
                    Presented::Basic(c) => self.login(&c, &from).await?,
                    _ => {
                        return Err(ApiError::Unauthorized {
                            challenge: String::new(),
                            message: "the token endpoint accepts Basic credentials or none".into(),
                            denied: false,
                        });
                    }
                };
                (subject, query, false)
            }
            Method::POST => {
                let form = read_form(req).await?;
                let get = |k: &str| form.iter().find(|(n, _)| n == k).map(|(_, v)| v.clone());
                let subject = match get("grant_type").as_deref() {
                    Some("password") => {
                        let c = Credentials {
                            username: get("username").unwrap_or_default(),
                            password: get("password").unwrap_or_default(),
                            client: client.clone(),
                        };
                        self.login(&c, &from).await?
                    }
                    Some("refresh_token") => {
                        let t = get("refresh_token").unwrap_or_default();
                        let invalid = |message: String| ApiError::Unauthorized {
                            challenge: self.challenge(&headers, conn, None, Some("invalid_token")),
                            message,
                            denied: false,
                        };
                        let refresh = self
                            .tokens
                            .verify_refresh(&t)
                            .map_err(|e| invalid(e.to_string()))?;
                        if self.revoked(&refresh.jti).await {
                            return Err(invalid("the refresh token was revoked".into()));
                        }
                        // Gone, or its password or secret changed since: refused.
                        self.authn
                            .refresh_subject(&refresh)
                            .map_err(|e| invalid(e.to_string()))?
                    }
                    other => {
                        return Err(ApiError::Auth(AuthError::Invalid(format!(
                            "unsupported grant_type {:?}: use password or refresh_token",
                            other.unwrap_or("")
                        ))));
                    }
                };
                // OAuth2 sends scopes space separated in one field.
                let mut params: Vec<(String, String)> = form
                    .iter()
                    .filter(|(k, _)| k == "scope")
                    .flat_map(|(_, v)| {
                        v.split(' ')
                            .map(|s| ("scope".to_owned(), s.to_owned()))
                            .collect::<Vec<_>>()
                    })
                    .collect();
                if let Some(s) = get("service") {
                    params.push(("service".into(), s));
                }
                if get("access_type").as_deref() == Some("offline") {
                    params.push(("offline_token".into(), "true".into()));
                }
                if let Some(t) = get("refresh_token") {
                    params.push(("refresh_token".into(), t));
                }
                (subject, params, true)
            }
            m => return Err(ApiError::MethodNotAllowed(m)),
        };
        if let Some((_, s)) = params.iter().find(|(k, _)| k == "service")
            && s != self.tokens.service()
        {
            return Err(ApiError::Auth(AuthError::Invalid(format!(
                "unknown service {s:?}; this registry is {:?}",
                self.tokens.service()
            ))));
        }
        let mut requested = Vec::new();
        for (_, s) in params.iter().filter(|(k, _)| k == "scope") {
            if s.is_empty() {
                continue;
            }
            requested.push(ResourceActions::parse(s).map_err(ApiError::Auth)?);
        }
        let granted = self
            .grant(
                &subject,
                scope::merge(requested),
                &client,
                mirror,
                &RequestContext::new(RequestRoute::Token).with_user_agent(user_agent(&headers)),
            )
            .await?;
        let groups = match &subject {
            Subject::User(i) => i.groups.clone(),
            _ => Vec::new(),
        };
        let issued = self
            .tokens
            .issue(&subject.token_name(), &groups, granted.clone())
            .map_err(ApiError::Auth)?;
        let offline = params
            .iter()
            .any(|(k, v)| k == "offline_token" && v == "true");
        let refresh = if offline && let Some(binding) = self.authn.refresh_binding(&subject) {
            Some(
                self.tokens
                    .issue_refresh(&subject.token_name(), &binding)
                    .map_err(ApiError::Auth)?,
            )
        } else {
            params
                .iter()
                .find(|(k, _)| k == "refresh_token")
                .map(|(_, v)| v.clone())
        };
        let mut body = json!({
            "token": issued.token,
            "access_token": issued.token,
            "expires_in": issued.expires_in,
            "issued_at": pier_auth::time::rfc3339(issued.issued_at),
        });
        if oauth {
            body["scope"] = json!(
                granted
                    .iter()
                    .map(|g| g.to_string())
                    .collect::<Vec<_>>()
                    .join(" ")
            );
        }
        if let Some(r) = refresh {
            body["refresh_token"] = json!(r);
        }
        tracing::debug!(subject = %subject, granted = ?granted.iter().map(|g| g.to_string()).collect::<Vec<_>>(), "token issued");
        let bytes = Bytes::from(serde_json::to_vec(&body).unwrap_or_default());
        let mut resp = Response::new(full(bytes.clone()));
        let h = resp.headers_mut();
        h.insert(
            header::CONTENT_TYPE,
            http::HeaderValue::from_static("application/json"),
        );
        h.insert(
            header::CACHE_CONTROL,
            http::HeaderValue::from_static("no-store"),
        );
        h.insert(header::CONTENT_LENGTH, http::HeaderValue::from(bytes.len()));
        *resp.status_mut() = StatusCode::OK;
        Ok(resp)
    }

    async fn login(&self, c: &Credentials, from: &ClientAddr) -> Result<Subject, ApiError> {
        self.authn
            .authenticate(self.authorizer.as_ref(), c, from.ip)
            .await
            .map_err(ApiError::from)?
            .ok_or_else(|| ApiError::Unauthorized {
                challenge: String::new(),
                message: "invalid username or password".into(),
                denied: false,
            })
    }

    /// Granted = requested ∩ allowed by the authorizer.
    async fn grant(
        &self,
        subject: &Subject,
        requested: Vec<ResourceActions>,
        client: &str,
        mirror: Option<&Mirror>,
        ctx: &RequestContext,
    ) -> Result<Vec<ResourceActions>, ApiError> {
        let mut out = Vec::new();
        for r in requested {
            let mut actions = Vec::new();
            // Decided on the content the name reaches (a request without `?ns=`).
            let decided_on = served_name(mirror, &r.name);
            match r.kind.as_str() {
                // The catalog is filtered per caller, so anyone may ask for it.
                "registry" if r.name == "catalog" => actions = r.actions.clone(),
                "repository" => {
                    for a in &r.actions {
                        let wanted: Vec<Action> = if a == "*" {
                            vec![Action::Pull, Action::Push, Action::Delete]
                        } else {
                            Action::parse(a).into_iter().collect()
                        };
                        let mut all = !wanted.is_empty();
                        for w in wanted {
                            all &= self
                                .decide(subject, w, &decided_on, client, ctx)
                                .await?
                                .is_allow();
                        }
                        if all {
                            actions.push(a.clone());
                        }
                    }
                }
                _ => {}
            }
            if !actions.is_empty() {
                out.push(ResourceActions {
                    kind: r.kind,
                    name: r.name,
                    actions,
                });
            }
        }
        Ok(out)
    }
}

/// The verified token of a request, for handlers.
#[derive(Debug, Clone)]
pub struct TokenClaims(pub Arc<Claims>);

/// `host[:port]` with a DNS name or an IP address (`[v6]` with brackets).
fn valid_host(h: &str) -> bool {
    let (host, port) = match h.strip_prefix('[') {
        Some(rest) => match rest.split_once(']') {
            Some((v6, tail)) if v6.parse::<std::net::Ipv6Addr>().is_ok() => ("v6", tail),
            _ => return false,
        },
        None => match h.rsplit_once(':') {
            Some((host, _)) => (host, &h[host.len()..]),
            None => (h, ""),
        },
    };
    let port_ok = port.is_empty()
        || port.strip_prefix(':').is_some_and(|p| {
            !p.is_empty() && p.len() <= 5 && p.bytes().all(|b| b.is_ascii_digit())
        });
    let host_ok = !host.is_empty()
        && host.len() <= 253
        && host.split('.').all(|l| {
            !l.is_empty()
                && l.len() <= 63
                && l.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
        });
    port_ok && host_ok
}

/// The repository a request for `name` without `?ns=` reaches.
fn served_name(mirror: Option<&Mirror>, name: &str) -> String {
    match (mirror, name.parse::<RepoName>()) {
        (Some(m), Ok(n)) => m.place(&n, None).served(&n).to_string(),
        _ => name.to_owned(),
    }
}

/// The scope a client should ask for to make this request.
fn scope_for(route: &Route, needs: &[(String, Action)]) -> Option<String> {
    if matches!(route, Route::Catalog) {
        return Some("registry:catalog:*".into());
    }
    let repo = &needs.first()?.0;
    let actions: Vec<&str> = needs.iter().map(|(_, a)| a.as_str()).collect();
    Some(format!("repository:{repo}:{}", actions.join(",")))
}

/// The access control's series: its counters live in the authenticator and the rate
/// limit, read when scraped.
struct AccessMetrics(Arc<AccessControl>);

impl std::fmt::Debug for AccessMetrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("AccessMetrics")
    }
}

impl prometheus_client::collector::Collector for AccessMetrics {
    fn encode(
        &self,
        mut encoder: prometheus_client::encoding::DescriptorEncoder<'_>,
    ) -> std::fmt::Result {
        use prometheus_client::encoding::EncodeMetric as _;
        use prometheus_client::metrics::MetricType;
        use prometheus_client::metrics::counter::ConstCounter;
        self.0.authn.encode_metrics(&mut encoder)?;
        ConstCounter::new(self.0.revoke_limit.limited()).encode(encoder.encode_descriptor(
            "pier_auth_revocations_limited",
            "Token revocations refused by the per-address rate limit.",
            None,
            MetricType::Counter,
        )?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hosts_for_the_realm() {
        for ok in [
            "registry.example:5000",
            "127.0.0.1:5000",
            "[::1]:5000",
            "localhost",
            "a-b.c",
        ] {
            assert!(valid_host(ok), "{ok}");
        }
        for bad in [
            "", "evil\"", "a b", "x:", "x:123456", "[::1", "a..b", "a/b", "u@h", ":80",
        ] {
            assert!(!valid_host(bad), "{bad}");
        }
    }

    #[test]
    fn requests_map_to_the_actions_they_need() {
        let r = |p: &str| crate::route::parse(p).unwrap();
        let n = |p: &str, m: Method| {
            needs(&r(p), r(p).repository(), &m)
                .into_iter()
                .map(|(_, a)| a)
                .collect::<Vec<_>>()
        };
        assert_eq!(n("/v2/", Method::GET), []);
        assert_eq!(n("/v2/_catalog", Method::GET), []);
        assert_eq!(n("/v2/a/b/manifests/latest", Method::GET), [Action::Pull]);
        assert_eq!(n("/v2/a/b/manifests/latest", Method::HEAD), [Action::Pull]);
        assert_eq!(
            n("/v2/a/b/manifests/latest", Method::PUT),
            [Action::Pull, Action::Push]
        );
        assert_eq!(
            n("/v2/a/b/manifests/latest", Method::DELETE),
            [Action::Delete]
        );
        let d = "sha256:".to_owned() + &"a".repeat(64);
        assert_eq!(
            n(&format!("/v2/a/blobs/{d}"), Method::DELETE),
            [Action::Delete]
        );
        assert_eq!(n(&format!("/v2/a/blobs/{d}"), Method::GET), [Action::Pull]);
        assert_eq!(
            n("/v2/a/blobs/uploads/", Method::POST),
            [Action::Pull, Action::Push]
        );
        assert_eq!(n("/v2/a/tags/list", Method::GET), [Action::Pull]);
        assert_eq!(
            scope_for(
                &r("/v2/a/blobs/uploads/"),
                &needs(
                    &r("/v2/a/blobs/uploads/"),
                    Some(&"a".parse().unwrap()),
                    &Method::POST
                )
            ),
            Some("repository:a:pull,push".into())
        );
    }
}
