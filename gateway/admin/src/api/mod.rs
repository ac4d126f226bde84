//! The admin REST API (`/api/v1/...` on the admin listener), described by
//! `gateway/admin/openapi.json`, which `GET /api/v1/openapi.json` serves.
//!
//! Repository names contain `/`, and a component may be any word (`tags`, `manifests`),
//! so the name ends at the first `/-/` component: a lone `-` is not a valid name
//! component. `{name}` may also come percent-encoded (`team%2Fapp`).
//!
//! ```text
//! GET    /api/v1/openapi.json                         (no credentials needed)
//! GET    /api/v1/repositories?q=&n=&last=
//! GET    /api/v1/repositories/{name}/-/tags?n=&last=
//! GET    /api/v1/repositories/{name}/-/manifests/{reference}
//! DELETE /api/v1/repositories/{name}/-/manifests/{digest}
//! DELETE /api/v1/repositories/{name}/-/tags/{tag}
//! GET    /api/v1/plugins
//! GET    /api/v1/mirror
//! GET    /api/v1/fleet                                (peers, their health, bytes, budgets)
//! GET    /api/v1/history?minutes=                     (the dashboard's counters over time)
//! POST   /api/v1/plugins/reload
//! GET    /api/v1/me                                   (any account: who, system admin?)
//! GET    /api/v1/projects?n=&last=                    (the caller's managed projects)
//! POST   /api/v1/projects
//! GET    /api/v1/projects/{name}                      (system or project admin)
//! PATCH  /api/v1/projects/{name}                      (system or project admin)
//! DELETE /api/v1/projects/{name}
//! PUT    /api/v1/projects/{name}/members/{kind}/{member}   (system or project admin)
//! DELETE /api/v1/projects/{name}/members/{kind}/{member}   (system or project admin)
//! GET    /api/v1/robots
//! POST   /api/v1/robots
//! PATCH  /api/v1/robots/{name}
//! DELETE /api/v1/robots/{name}
//! POST   /api/v1/robots/{name}/secret
//! GET    /api/v1/users
//! POST   /api/v1/users
//! DELETE /api/v1/users/{name}
//! GET    /api/v1/replication/jobs?n=&last=&status=
//! GET    /api/v1/replication/jobs/{id}
//! GET    /api/v1/replication/jobs/{id}/log
//! POST   /api/v1/replication/jobs/{id}/retry
//! GET    /api/v1/replication/targets
//! GET    /api/v1/replication/rules                    (of every replicator managing them)
//! PUT    /api/v1/replication/rules/{name}
//! DELETE /api/v1/replication/rules/{name}?plugin=
//! GET    /api/v1/events/deliveries?n=&last=&status=
//! GET    /api/v1/events/deliveries/{id}
//! POST   /api/v1/events/deliveries/{id}/redeliver
//! GET    /api/v1/gc                                   (running? and the last result)
//! POST   /api/v1/gc?dry_run=&untagged=&grace=
//! POST   /api/v1/mirror/preheat
//! GET    /api/v1/quotas                               (projects with a limit, their usage)
//! GET    /api/v1/quotas/{project}                     (project admins too)
//! PUT    /api/v1/quotas/{project}                     {"limit": BYTES | null}
//! GET    /api/v1/retention/{project}                  (the last run)
//! POST   /api/v1/retention/{project}?dry_run=         (dry run by default)
//! ```
//!
//! Every call but the document needs basic credentials when access control is on: a
//! system administrator's, or for a project's own endpoints, one its authorizer lets
//! `manage` the project (a project admin). Every change is logged as an `audit` line.

mod accounts;
mod gc;
mod policies;
mod preheat;
mod projects;
mod quotas;
mod replication;
mod repos;
pub mod retention;
mod rules;
mod status;

use bytes::Bytes;
use http::{HeaderValue, Method, Request, Response, StatusCode, header};
use http_body_util::Full;
use hyper::body::Incoming;
use pier_core::CoreError;
use serde_json::{Value, json};

use crate::router::AdminState;

/// The OpenAPI document, kept in the repository.
pub const OPENAPI: &str = include_str!("../../openapi.json");

/// The most items one page may hold.
pub const MAX_PAGE: usize = 1000;
/// The page size when `n` is not given.
pub const DEFAULT_PAGE: usize = 100;
/// The largest request body the API reads.
pub const MAX_BODY: usize = 64 * 1024;

/// Why an API call failed; [`ApiFailure::response`] is the one place it becomes JSON.
#[derive(Debug, thiserror::Error)]
pub enum ApiFailure {
    #[error("{0}")]
    BadRequest(String),
    #[error("{0}")]
    NotFound(String),
    #[error("{0}")]
    Conflict(String),
    #[error("the request body is larger than {MAX_BODY} bytes")]
    TooLarge,
    /// The feature is not available with this configuration.
    #[error("{0}")]
    NotManaged(String),
    /// A store behind the call failed (a plugin, the accounts files).
    #[error("{0}")]
    Backend(String),
    /// An upstream registry failed (a preheat).
    #[error("{0}")]
    Upstream(String),
    #[error("method {method} is not allowed on {path}")]
    MethodNotAllowed {
        method: Method,
        path: String,
        allow: &'static str,
    },
    /// An admission policy refused the change (an immutable tag).
    #[error("{0}")]
    Denied(String),
    #[error("internal error; see the server log")]
    Internal(#[source] CoreError),
    /// The change took effect but its event could not be recorded.
    #[error("the change was made but its event could not be recorded ({0}); retry it")]
    Unavailable(String),
}

impl From<CoreError> for ApiFailure {
    fn from(e: CoreError) -> Self {
        match e {
            CoreError::NameUnknown(_)
            | CoreError::ManifestUnknown(_)
            | CoreError::BlobUnknown(_) => ApiFailure::NotFound(e.to_string()),
            CoreError::Denied { .. } | CoreError::QuotaExceeded { .. } => {
                ApiFailure::Denied(e.to_string())
            }
            CoreError::QuotaStore(_) => ApiFailure::Backend(e.to_string()),
            CoreError::PolicyFailed(_) => ApiFailure::Backend(e.to_string()),
            other => ApiFailure::Internal(other),
        }
    }
}

impl ApiFailure {
    fn response(self) -> Response<Full<Bytes>> {
        let status = match &self {
            ApiFailure::BadRequest(_) => StatusCode::BAD_REQUEST,
            ApiFailure::NotFound(_) => StatusCode::NOT_FOUND,
            ApiFailure::Conflict(_) => StatusCode::CONFLICT,
            ApiFailure::Denied(_) => StatusCode::FORBIDDEN,
            ApiFailure::TooLarge => StatusCode::PAYLOAD_TOO_LARGE,
            ApiFailure::NotManaged(_) => StatusCode::NOT_IMPLEMENTED,
            ApiFailure::Upstream(_) => StatusCode::BAD_GATEWAY,
            ApiFailure::Backend(e) => {
                tracing::error!(error = %e, "admin API store failed");
                StatusCode::SERVICE_UNAVAILABLE
            }
            ApiFailure::MethodNotAllowed { .. } => StatusCode::METHOD_NOT_ALLOWED,
            ApiFailure::Internal(e) => {
                tracing::error!(error = %chain(e), "admin API failed");
                StatusCode::INTERNAL_SERVER_ERROR
            }
            ApiFailure::Unavailable(e) => {
                tracing::error!(error = %e, "admin API change not recorded as an event");
                StatusCode::SERVICE_UNAVAILABLE
            }
        };
        let mut r = json_response(status, &json!({ "error": self.to_string() }));
        if let ApiFailure::MethodNotAllowed { allow, .. } = self {
            r.headers_mut()
                .insert(header::ALLOW, HeaderValue::from_static(allow));
        }
        r
    }
}

use pier_upstream::error_chain as chain;

pub(crate) fn json_response(status: StatusCode, body: &Value) -> Response<Full<Bytes>> {
    let mut r = Response::new(Full::new(Bytes::from(
        serde_json::to_vec_pretty(body).unwrap_or_default(),
    )));
    *r.status_mut() = status;
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    r
}

/// What a request path names, before its method is looked at.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Route {
    OpenApi,
    Repositories,
    /// `{name}/-/tags`
    Tags(String),
    /// `{name}/-/tags/{tag}`
    Tag(String, String),
    /// `{name}/-/manifests/{reference}`
    Manifest(String, String),
    Plugins,
    Mirror,
    Fleet,
    Me,
    History,
    PluginsReload,
    Projects,
    Project(String),
    /// `{project}/members/{kind}/{member}`
    Member(String, String, String),
    Robots,
    Robot(String),
    /// `{robot}/secret`
    RobotSecret(String),
    Users,
    User(String),
    ReplicationJobs,
    ReplicationJob(String),
    /// `{id}/log`
    ReplicationJobLog(String),
    /// `{id}/retry`
    ReplicationJobRetry(String),
    ReplicationTargets,
    ReplicationRules,
    ReplicationRule(String),
    Deliveries,
    Delivery(String),
    /// `{id}/redeliver`
    Redeliver(String),
    Gc,
    Preheat,
    Quotas,
    Quota(String),
    Retention(String),
    Policies(String),
}

/// Who may call a route.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Scope {
    /// System administrators.
    System,
    /// Whoever may `manage` the project (system and project admins).
    Project(String),
    /// Any verified identity (the handler shows only what it may manage).
    Anyone,
}

impl Route {
    /// Parses the path after `/api/v1`; `None` for paths the API doesn't have.
    fn parse(rest: &str) -> Option<Route> {
        match rest {
            "/openapi.json" => return Some(Route::OpenApi),
            "/repositories" | "/repositories/" => return Some(Route::Repositories),
            "/plugins" => return Some(Route::Plugins),
            "/mirror" => return Some(Route::Mirror),
            "/fleet" => return Some(Route::Fleet),
            "/me" => return Some(Route::Me),
            "/history" => return Some(Route::History),
            "/plugins/reload" => return Some(Route::PluginsReload),
            "/projects" => return Some(Route::Projects),
            "/robots" => return Some(Route::Robots),
            "/users" => return Some(Route::Users),
            "/replication/jobs" => return Some(Route::ReplicationJobs),
            "/replication/targets" => return Some(Route::ReplicationTargets),
            "/replication/rules" => return Some(Route::ReplicationRules),
            "/events/deliveries" => return Some(Route::Deliveries),
            "/gc" => return Some(Route::Gc),
            "/mirror/preheat" => return Some(Route::Preheat),
            "/quotas" => return Some(Route::Quotas),
            _ => {}
        }
        let segments = |p: &str| -> Option<Vec<String>> {
            p.split('/')
                .map(|s| percent_decode(s).filter(|d| !d.is_empty()))
                .collect()
        };
        if let Some(p) = rest.strip_prefix("/projects/") {
            return match segments(p)?.as_slice() {
                [name] => Some(Route::Project(name.clone())),
                [name, m, kind, member] if m == "members" => {
                    Some(Route::Member(name.clone(), kind.clone(), member.clone()))
                }
                _ => None,
            };
        }
        if let Some(p) = rest.strip_prefix("/retention/") {
            return match segments(p)?.as_slice() {
                [name] => Some(Route::Retention(name.clone())),
                _ => None,
            };
        }
        if let Some(p) = rest.strip_prefix("/policies/") {
            return match segments(p)?.as_slice() {
                [name] => Some(Route::Policies(name.clone())),
                _ => None,
            };
        }
        if let Some(p) = rest.strip_prefix("/quotas/") {
            return match segments(p)?.as_slice() {
                [name] => Some(Route::Quota(name.clone())),
                _ => None,
            };
        }
        if let Some(p) = rest.strip_prefix("/robots/") {
            return match segments(p)?.as_slice() {
                [name] => Some(Route::Robot(name.clone())),
                [name, s] if s == "secret" => Some(Route::RobotSecret(name.clone())),
                _ => None,
            };
        }
        if let Some(p) = rest.strip_prefix("/users/") {
            return match segments(p)?.as_slice() {
                [name] => Some(Route::User(name.clone())),
                _ => None,
            };
        }
        if let Some(p) = rest.strip_prefix("/replication/jobs/") {
            return match segments(p)?.as_slice() {
                [id] => Some(Route::ReplicationJob(id.clone())),
                [id, l] if l == "log" => Some(Route::ReplicationJobLog(id.clone())),
                [id, r] if r == "retry" => Some(Route::ReplicationJobRetry(id.clone())),
                _ => None,
            };
        }
        if let Some(p) = rest.strip_prefix("/replication/rules/") {
            return match segments(p)?.as_slice() {
                [name] => Some(Route::ReplicationRule(name.clone())),
                _ => None,
            };
        }
        if let Some(p) = rest.strip_prefix("/events/deliveries/") {
            return match segments(p)?.as_slice() {
                [id] => Some(Route::Delivery(id.clone())),
                [id, r] if r == "redeliver" => Some(Route::Redeliver(id.clone())),
                _ => None,
            };
        }
        let repo_path = rest.strip_prefix("/repositories/")?;
        let (name, tail) = repo_path.split_once("/-/")?;
        let name = percent_decode(name)?;
        let mut parts = tail.splitn(2, '/');
        let kind = parts.next()?;
        let arg = parts.next().map(percent_decode);
        match (kind, arg) {
            ("tags", None) => Some(Route::Tags(name)),
            ("tags", Some(Some(t))) if !t.is_empty() => Some(Route::Tag(name, t)),
            ("manifests", Some(Some(r))) if !r.is_empty() => Some(Route::Manifest(name, r)),
            _ => None,
        }
    }

    /// The query parameters this path takes; others are refused (400), so a typo
    /// doesn't silently list everything.
    fn params(&self) -> &'static [&'static str] {
        match self {
            Route::Repositories => &["q", "n", "last"],
            Route::Tags(_) | Route::Projects => &["n", "last"],
            Route::History => &["minutes"],
            Route::ReplicationJobs | Route::Deliveries => &["n", "last", "status"],
            Route::Gc => &["dry_run", "untagged", "grace"],
            Route::ReplicationRule(_) => &["plugin"],
            Route::Retention(_) => &["dry_run"],
            _ => &[],
        }
    }

    /// The methods this path answers (`Allow`).
    fn allow(&self) -> &'static str {
        match self {
            Route::Tag(..) => "DELETE",
            Route::Manifest(..) => "GET, DELETE",
            Route::Projects | Route::Robots | Route::Users => "GET, POST",
            Route::Project(_) => "GET, PATCH, DELETE",
            Route::Member(..) => "PUT, DELETE",
            Route::Robot(_) => "PATCH, DELETE",
            Route::RobotSecret(_) | Route::PluginsReload => "POST",
            Route::User(_) => "DELETE",
            Route::ReplicationRule(_) => "PUT, DELETE",
            Route::ReplicationJobRetry(_) | Route::Redeliver(_) | Route::Preheat => "POST",
            Route::Gc => "GET, POST",
            Route::Quota(_) => "GET, PUT",
            Route::Retention(_) => "GET, POST",
            _ => "GET",
        }
    }

    /// Who may call it with `method`.
    fn scope(&self, method: &Method) -> Scope {
        match self {
            Route::Me => Scope::Anyone,
            Route::Projects if method == Method::GET => Scope::Anyone,
            Route::Project(p) if method != Method::DELETE => Scope::Project(p.clone()),
            Route::Member(p, ..) => Scope::Project(p.clone()),
            // A project's admins see its usage; only system admins set limits.
            Route::Quota(p) if method == Method::GET => Scope::Project(p.clone()),
            Route::Policies(p) => Scope::Project(p.clone()),
            _ => Scope::System,
        }
    }
}

/// Decodes `%XX` escapes of a path segment (a bad escape stays as written); `None` when
/// the result is not UTF-8.
fn percent_decode(s: &str) -> Option<String> {
    percent_encoding::percent_decode_str(s)
        .decode_utf8()
        .ok()
        .map(|d| d.into_owned())
}

/// Everything but RFC 3986 unreserved characters.
const RESERVED: &percent_encoding::AsciiSet = &percent_encoding::NON_ALPHANUMERIC
    .remove(b'-')
    .remove(b'.')
    .remove(b'_')
    .remove(b'~');

/// Percent-encodes everything but RFC 3986 unreserved characters (for `next` links).
pub(crate) fn percent_encode(s: &str) -> String {
    percent_encoding::utf8_percent_encode(s, RESERVED).to_string()
}

/// Who made a call, for audit lines and per-project listings.
pub(crate) struct Caller {
    pub actor: String,
    pub client: String,
    /// `None` when access control is off.
    pub subject: Option<pier_auth::Subject>,
    /// The caller's basic credentials, to act on the registry listener as the caller
    /// (a preheat pulls with them); `None` when access control is off.
    pub credentials: Option<pier_upstream::Credentials>,
}

impl Caller {
    /// The caller as admission policies see it.
    pub(crate) fn core(&self) -> pier_core::Caller {
        pier_core::Caller {
            subject: self
                .subject
                .clone()
                .unwrap_or(pier_auth::Subject::Anonymous),
            client: self.client.clone(),
        }
    }

    /// Whether the caller may do `action` in `project` (always, with access control off).
    pub(crate) async fn may(
        &self,
        state: &AdminState,
        action: pier_auth::Action,
        project: &str,
    ) -> Result<bool, ApiFailure> {
        match (&state.access, &self.subject) {
            (Some(ac), Some(s)) => ac
                .allows(s, action, project, &self.client)
                .await
                .map_err(|e| ApiFailure::Backend(e.to_string())),
            _ => Ok(true),
        }
    }
}

/// One audit line per change attempted: who, from where, what, on what, and the outcome.
pub(crate) fn audit<T, E: std::fmt::Display>(
    caller: &Caller,
    action: &'static str,
    target: &str,
    outcome: &Result<T, E>,
) {
    let result = match outcome {
        Ok(_) => "ok".to_owned(),
        Err(e) => e.to_string(),
    };
    tracing::info!(
        target: "audit",
        actor = %caller.actor,
        client = %caller.client,
        action,
        target = %target,
        result = %result,
        "admin API change"
    );
}

/// A project name in a path (quotas, retention): one repository path component, at most
/// 128 characters, as the OpenAPI document says.
pub(crate) fn project_name(name: &str) -> Result<String, ApiFailure> {
    if name.len() > 128 {
        return Err(ApiFailure::BadRequest(format!(
            "project names are at most 128 characters, not {}",
            name.len()
        )));
    }
    let repo: pier_oci::RepoName = name.parse().map_err(|e: pier_oci::NameError| {
        ApiFailure::BadRequest(format!("invalid project name {name:?}: {e}"))
    })?;
    if repo.as_str().contains('/') {
        return Err(ApiFailure::BadRequest(format!(
            "{name:?} is a repository; a project is one path segment"
        )));
    }
    Ok(repo.as_str().to_owned())
}

/// Parses a JSON request body into `T`, with a clear 400 when it doesn't fit.
pub(crate) fn parse_json<T: serde::de::DeserializeOwned>(body: &[u8]) -> Result<T, ApiFailure> {
    serde_json::from_slice(body)
        .map_err(|e| ApiFailure::BadRequest(format!("invalid JSON body: {e}")))
}

/// `204 No Content`.
pub(crate) fn no_content() -> Response<Full<Bytes>> {
    let mut r = Response::new(Full::new(Bytes::new()));
    *r.status_mut() = StatusCode::NO_CONTENT;
    r
}

/// Reads a request body up to [`MAX_BODY`] bytes.
async fn read_body(body: Incoming) -> Result<Bytes, ApiFailure> {
    use http_body_util::BodyExt;
    match http_body_util::Limited::new(body, MAX_BODY).collect().await {
        Ok(b) => Ok(b.to_bytes()),
        Err(e) if e.is::<http_body_util::LengthLimitError>() => Err(ApiFailure::TooLarge),
        Err(e) => Err(ApiFailure::BadRequest(format!("reading the body: {e}"))),
    }
}

/// Answers a request under `/api/`.
pub async fn serve(state: &AdminState, req: Request<Incoming>) -> Response<Full<Bytes>> {
    let path = req.uri().path().to_owned();
    let Some(route) = path.strip_prefix("/api/v1").and_then(Route::parse) else {
        return ApiFailure::NotFound(format!("no admin API endpoint at {path}")).response();
    };
    let method = req.method().clone();
    let allowed = route.allow().split(", ").any(|m| m == method.as_str());
    if !allowed {
        return ApiFailure::MethodNotAllowed {
            method,
            path,
            allow: route.allow(),
        }
        .response();
    }
    if route == Route::OpenApi {
        let mut r = Response::new(Full::new(Bytes::from_static(OPENAPI.as_bytes())));
        r.headers_mut().insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        );
        return r;
    }
    let peer = crate::router::peer_of(&req);
    let (client, actor, subject, credentials) = match &state.access {
        Some(ac) => {
            let client = ac.client(peer, req.headers());
            let checked = match route.scope(&method) {
                Scope::System => {
                    ac.check_basic(
                        req.method(),
                        req.headers(),
                        &client,
                        pier_auth::Action::Admin,
                        None,
                    )
                    .await
                }
                Scope::Project(p) => {
                    ac.check_basic(
                        req.method(),
                        req.headers(),
                        &client,
                        pier_auth::Action::Manage,
                        Some(&p),
                    )
                    .await
                }
                Scope::Anyone => ac.authenticate_basic(req.headers(), &client).await,
            };
            match checked {
                Ok((c, s)) => (
                    client.label,
                    c.username.clone(),
                    Some(s),
                    Some(pier_upstream::Credentials {
                        username: c.username,
                        password: c.password,
                    }),
                ),
                Err(e) => return refused(e),
            }
        }
        None => (
            peer.to_string(),
            "anonymous (access control off)".to_owned(),
            None,
            None,
        ),
    };
    let caller = Caller {
        actor,
        client,
        subject,
        credentials,
    };
    let query = pier_http::query::parse(req.uri().query().unwrap_or(""));
    if let Some((k, _)) = query
        .iter()
        .find(|(k, _)| !route.params().contains(&k.as_str()))
    {
        return ApiFailure::BadRequest(format!(
            "unknown query parameter {k:?}; this endpoint takes {:?}",
            route.params()
        ))
        .response();
    }
    let body = match method {
        Method::POST | Method::PUT | Method::PATCH => match read_body(req.into_body()).await {
            Ok(b) => b,
            Err(e) => return e.response(),
        },
        _ => Bytes::new(),
    };
    let result = match route {
        Route::OpenApi => unreachable!("answered above"),
        Route::Me => projects::me(state, &caller).await,
        Route::History => status::history(state, &query),
        Route::PluginsReload => Ok(status::reload(state, &caller).await),
        Route::Projects if method == Method::GET => projects::list(state, &caller, &query).await,
        Route::Projects => projects::create(state, &caller, body).await,
        Route::Project(name) if method == Method::GET => projects::get(state, &name).await,
        Route::Project(name) if method == Method::PATCH => {
            projects::update(state, &caller, &name, body).await
        }
        Route::Project(name) => projects::delete(state, &caller, &name).await,
        Route::Member(p, kind, m) if method == Method::PUT => {
            projects::set_member(state, &caller, &p, &kind, &m, body).await
        }
        Route::Member(p, kind, m) => projects::remove_member(state, &caller, &p, &kind, &m).await,
        Route::Robots if method == Method::GET => accounts::list_robots(state).await,
        Route::Robots => accounts::create_robot(state, &caller, body).await,
        Route::Robot(name) if method == Method::PATCH => {
            accounts::update_robot(state, &caller, &name, body).await
        }
        Route::Robot(name) => accounts::delete_robot(state, &caller, &name).await,
        Route::RobotSecret(name) => accounts::rotate_robot(state, &caller, &name).await,
        Route::Users if method == Method::GET => accounts::list_users(state).await,
        Route::Users => accounts::create_user(state, &caller, body).await,
        Route::User(name) => accounts::delete_user(state, &caller, &name).await,
        Route::Repositories => repos::list(state, &query).await,
        Route::Tags(name) => repos::tags(state, &caller, &name, &query).await,
        Route::Manifest(name, reference) if method == Method::GET => {
            repos::manifest(state, &name, &reference).await
        }
        Route::Manifest(name, digest) => {
            repos::delete_manifest(state, &caller, &name, &digest).await
        }
        Route::Tag(name, tag) => repos::delete_tag(state, &caller, &name, &tag).await,
        Route::Plugins => Ok(status::plugins(state)),
        Route::Mirror => Ok(status::mirror(state)),
        Route::Fleet => Ok(status::fleet(state)),
        Route::ReplicationJobs => replication::jobs(state, &query).await,
        Route::ReplicationJob(id) => replication::job(state, &id).await,
        Route::ReplicationJobLog(id) => replication::job_log(state, &id).await,
        Route::ReplicationJobRetry(id) => replication::retry(state, &caller, &id).await,
        Route::ReplicationTargets => replication::targets(state),
        Route::ReplicationRules => rules::list(state).await,
        Route::ReplicationRule(name) if method == Method::PUT => {
            rules::put(state, &caller, &name, body).await
        }
        Route::ReplicationRule(name) => rules::delete(state, &caller, &name, &query).await,
        Route::Deliveries => replication::deliveries(state, &query).await,
        Route::Delivery(id) => replication::delivery(state, &id).await,
        Route::Redeliver(id) => replication::redeliver(state, &caller, &id).await,
        Route::Gc if method == Method::GET => gc::status(state).await,
        Route::Gc => gc::run(state, &caller, &query).await,
        Route::Preheat => preheat::preheat(state, &caller, body).await,
        Route::Quotas => quotas::list(state).await,
        Route::Quota(name) if method == Method::GET => quotas::get(state, &name).await,
        Route::Quota(name) => quotas::set(state, &caller, &name, body).await,
        Route::Retention(name) if method == Method::GET => retention::last(state, &name).await,
        Route::Policies(name) => policies::get(state, &name).await,
        Route::Retention(name) => retention::post(state, &caller, &name, &query).await,
    };
    result.unwrap_or_else(ApiFailure::response)
}

/// A refused login as JSON, keeping the challenge and Retry-After of the registry's answer.
fn refused(e: pier_http::error::ApiError) -> Response<Full<Bytes>> {
    let message = e.to_string();
    let (parts, _) = e.into_response().into_parts();
    let mut r = json_response(parts.status, &json!({ "error": message }));
    for (k, v) in parts
        .headers
        .iter()
        .filter(|(k, _)| *k == header::WWW_AUTHENTICATE || *k == header::RETRY_AFTER)
    {
        r.headers_mut().insert(k.clone(), v.clone());
    }
    r
}

/// `n` and `last` of a listing: `n` in 1..=1000 (default 100).
pub(crate) fn page_params(
    query: &[(String, String)],
) -> Result<(usize, Option<String>), ApiFailure> {
    let get = |k: &str| {
        query
            .iter()
            .find(|(key, _)| key == k)
            .map(|(_, v)| v.clone())
    };
    let n = match get("n") {
        None => DEFAULT_PAGE,
        Some(v) => match v.parse::<usize>() {
            Ok(n) if (1..=MAX_PAGE).contains(&n) => n,
            _ => {
                return Err(ApiFailure::BadRequest(format!(
                    "invalid page size n={v:?}: expected an integer from 1 to {MAX_PAGE}"
                )));
            }
        },
    };
    Ok((n, get("last")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn routes_parse_names_with_slashes_and_reserved_words() {
        let r = |p: &str| Route::parse(p);
        assert_eq!(r("/repositories"), Some(Route::Repositories));
        assert_eq!(r("/openapi.json"), Some(Route::OpenApi));
        assert_eq!(
            r("/repositories/team/app/-/tags"),
            Some(Route::Tags("team/app".into()))
        );
        assert_eq!(
            r("/repositories/a/tags/manifests/-/tags/tags"),
            Some(Route::Tag("a/tags/manifests".into(), "tags".into()))
        );
        assert_eq!(
            r("/repositories/team%2Fapp/-/manifests/sha256%3Aab"),
            Some(Route::Manifest("team/app".into(), "sha256:ab".into()))
        );
        assert_eq!(r("/repositories/a/-/tags/"), None);
        assert_eq!(r("/repositories/a/-/manifests"), None);
        assert_eq!(r("/repositories/a/-/blobs/x"), None);
        assert_eq!(r("/repositories/a/tags"), None);
        assert_eq!(r("/nothing"), None);
        assert_eq!(
            Route::Manifest("a".into(), "b".into()).allow(),
            "GET, DELETE"
        );
    }

    #[test]
    fn operations_routes_parse() {
        let r = |p: &str| Route::parse(p);
        assert_eq!(r("/replication/jobs"), Some(Route::ReplicationJobs));
        assert_eq!(
            r("/replication/jobs/7"),
            Some(Route::ReplicationJob("7".into()))
        );
        assert_eq!(
            r("/replication/jobs/7/log"),
            Some(Route::ReplicationJobLog("7".into()))
        );
        assert_eq!(
            r("/replication/jobs/7/retry"),
            Some(Route::ReplicationJobRetry("7".into()))
        );
        assert_eq!(r("/replication/jobs/7/other"), None);
        assert_eq!(r("/replication/rules"), Some(Route::ReplicationRules));
        assert_eq!(
            r("/replication/rules/apps-to-b"),
            Some(Route::ReplicationRule("apps-to-b".into()))
        );
        assert_eq!(
            r("/replication/rules/a%2Fb"),
            Some(Route::ReplicationRule("a/b".into()))
        );
        assert_eq!(r("/replication/rules/a/b"), None);
        assert_eq!(r("/replication/rules/"), None);
        assert_eq!(r("/replication/rulesx"), None);
        assert_eq!(Route::ReplicationRule("a".into()).allow(), "PUT, DELETE");
        assert_eq!(Route::ReplicationRules.allow(), "GET");
        assert_eq!(r("/replication/jobs/"), None);
        assert_eq!(r("/events/deliveries"), Some(Route::Deliveries));
        assert_eq!(
            r("/events/deliveries/ab/redeliver"),
            Some(Route::Redeliver("ab".into()))
        );
        assert_eq!(r("/gc"), Some(Route::Gc));
        assert_eq!(r("/mirror/preheat"), Some(Route::Preheat));
        assert_eq!(Route::Gc.allow(), "GET, POST");
        assert_eq!(Route::Preheat.allow(), "POST");
        assert_eq!(Route::ReplicationJobRetry("1".into()).allow(), "POST");
    }

    #[test]
    fn page_size_is_bounded() {
        let q = |v: &str| vec![("n".to_owned(), v.to_owned())];
        assert_eq!(page_params(&[]).unwrap().0, DEFAULT_PAGE);
        assert_eq!(page_params(&q("1000")).unwrap().0, 1000);
        for bad in ["0", "1001", "-1", "x", ""] {
            assert!(page_params(&q(bad)).is_err(), "{bad}");
        }
    }

    #[test]
    fn the_document_is_json_with_every_path() {
        let doc: Value = serde_json::from_str(OPENAPI).expect("openapi.json parses");
        assert_eq!(doc["openapi"], "3.0.3");
        for p in [
            "/api/v1/openapi.json",
            "/api/v1/repositories",
            "/api/v1/repositories/{name}/-/tags",
            "/api/v1/repositories/{name}/-/tags/{tag}",
            "/api/v1/repositories/{name}/-/manifests/{reference}",
            "/api/v1/plugins",
            "/api/v1/mirror",
            "/api/v1/fleet",
            "/api/v1/me",
            "/api/v1/history",
            "/api/v1/plugins/reload",
            "/api/v1/projects",
            "/api/v1/projects/{name}",
            "/api/v1/projects/{name}/members/{kind}/{member}",
            "/api/v1/robots",
            "/api/v1/robots/{name}",
            "/api/v1/robots/{name}/secret",
            "/api/v1/users",
            "/api/v1/users/{name}",
            "/api/v1/replication/jobs",
            "/api/v1/replication/jobs/{id}",
            "/api/v1/replication/jobs/{id}/log",
            "/api/v1/replication/jobs/{id}/retry",
            "/api/v1/replication/targets",
            "/api/v1/replication/rules",
            "/api/v1/replication/rules/{name}",
            "/api/v1/events/deliveries",
            "/api/v1/events/deliveries/{id}",
            "/api/v1/events/deliveries/{id}/redeliver",
            "/api/v1/gc",
            "/api/v1/mirror/preheat",
            "/api/v1/quotas",
            "/api/v1/quotas/{name}",
            "/api/v1/retention/{name}",
        ] {
            assert!(doc["paths"][p].is_object(), "{p} missing from the document");
        }
    }
}
