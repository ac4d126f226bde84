//! The admin listener: `/metrics` (Prometheus), `/healthz` (the process answers),
//! `/readyz` (storage is usable and the server is not shutting down).

use std::convert::Infallible;
use std::path::PathBuf;
use std::sync::Arc;

use bytes::Bytes;
use http::{Request, Response, StatusCode, header};
use http_body_util::Full;
use hyper::body::Incoming;
use pier_http::Metrics;

/// The `[auth]` users and robots files, for the admin API; changes one at a time.
pub struct AccountFiles {
    pub users: PathBuf,
    pub robots: PathBuf,
    pub lock: tokio::sync::Mutex<()>,
}

/// The authorizer plugins as the admin side sees them; the binary loads and reloads them.
#[async_trait::async_trait]
pub trait Plugins: Send + Sync {
    /// Reloads every authorizer plugin (file and settings); one line per plugin.
    async fn reload_all(&self) -> Vec<String>;
    /// The loaded authorizers by name.
    fn authorizers(&self) -> Vec<(String, Arc<pier_plugin_host::PluginAuthorizer>)>;
    /// The loaded admission plugins by name.
    fn admissions(&self) -> Vec<(String, Arc<pier_plugin_host::PluginAdmission>)> {
        Vec::new()
    }
    /// The loaded retention plugin, by name.
    fn retention(&self) -> Option<(String, Arc<pier_plugin_host::PluginRetention>)> {
        None
    }
    /// The project store of the authorizer, when one is loaded (it may still answer
    /// that it doesn't manage projects).
    fn projects(&self) -> Option<Arc<dyn pier_auth::projects::ProjectStore>> {
        self.authorizers()
            .into_iter()
            .next()
            .map(|(_, p)| p as Arc<dyn pier_auth::projects::ProjectStore>)
    }
}

pub struct AdminState {
    /// Host, Origin and content-type checks against browsers.
    pub guard: crate::guard::AdminGuard,
    /// The accounts files, when access control is on.
    pub accounts: Option<AccountFiles>,
    /// The dashboard's counters over time.
    pub history: crate::history::History,
    pub metrics: Arc<Metrics>,
    /// Every series `/metrics` serves (built by the binary: each part registers its own).
    pub series: Arc<prometheus_client::registry::Registry>,
    pub mirror: Option<Arc<pier_core::Mirror>>,
    /// The edge fleet this node belongs to, if any.
    pub fleet: Option<Arc<pier_core::fleet::Fleet>>,
    /// Every upstream's pull budget.
    pub budgets: pier_upstream::UpstreamBudgets,
    /// Whether this node should get traffic (`/readyz`), shared with the registry listener.
    pub ready: Arc<pier_http::ready::Readiness>,
    pub plugins: Arc<dyn Plugins>,
    /// When set, POST endpoints need basic credentials of a system administrator.
    pub access: Option<Arc<pier_http::AccessControl>>,
    pub root: PathBuf,
    /// The registry listener's URL for preheating through it; `None` when it speaks TLS.
    pub registry_url: Option<String>,
    /// Events and replication, when configured.
    pub events: Option<Arc<pier_dispatch::EventsRuntime>>,
    /// The registry, for the admin API (`crate::api`).
    pub registry: Arc<pier_core::Registry>,
    /// When each tag was last pulled from this node (the tag list's `lastPull`).
    pub pulls: Arc<crate::activity::PullLog>,
    /// Whether other nodes share the storage (`[redis]`): online gc is refused then.
    pub clustered: bool,
    /// The retention plugin, when one is configured.
    pub retention: Option<Arc<dyn pier_auth::retention::RetentionPolicy>>,
}

/// `POST /warm?image=NAME:TAG[&image=...][&platform=os/arch]`: pulls the images through
/// the registry listener, as `pier warm` does, and answers with its progress lines.
async fn warm(
    state: &AdminState,
    req: &Request<Incoming>,
    credentials: Option<pier_upstream::Credentials>,
) -> Response<Full<Bytes>> {
    let plain = "text/plain; charset=utf-8";
    let Some(url) = state.registry_url.clone() else {
        return text(
            StatusCode::NOT_IMPLEMENTED,
            plain,
            "the registry listener uses TLS; run `pier warm --server https://...` instead\n",
        );
    };
    let params = pier_http::query::parse(req.uri().query().unwrap_or(""));
    let pick = |key: &str| -> Vec<String> {
        params
            .iter()
            .filter(|(k, _)| k == key)
            .map(|(_, v)| v.clone())
            .collect()
    };
    let (images, platforms) = (pick("image"), pick("platform"));
    if images.is_empty() {
        return text(
            StatusCode::BAD_REQUEST,
            plain,
            "name at least one ?image=NAME[:TAG|@DIGEST]\n",
        );
    }
    let mut out = String::new();
    let result = crate::warm::run(url, platforms, images, credentials, &mut |line| {
        out.push_str(&line);
        out.push('\n');
    })
    .await;
    match result {
        Ok(()) => text(StatusCode::OK, plain, out),
        Err(e) => {
            out.push_str(&format!("error: {e}\n"));
            text(StatusCode::BAD_GATEWAY, plain, out)
        }
    }
}

/// The admin connection's peer (the listener notes it on every request).
pub fn peer_of(req: &Request<Incoming>) -> std::net::SocketAddr {
    req.extensions()
        .get::<std::net::SocketAddr>()
        .copied()
        .unwrap_or_else(|| std::net::SocketAddr::from(([0, 0, 0, 0], 0)))
}

fn text(
    status: StatusCode,
    content_type: &'static str,
    body: impl Into<Bytes>,
) -> Response<Full<Bytes>> {
    let mut r = Response::new(Full::new(body.into()));
    *r.status_mut() = status;
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        http::HeaderValue::from_static(content_type),
    );
    r
}

pub async fn serve(
    state: Arc<AdminState>,
    mut req: Request<Incoming>,
) -> Result<Response<Full<Bytes>>, Infallible> {
    let plain = "text/plain; charset=utf-8";
    if let Err(refused) = state.guard.check(&req) {
        return Ok(refused.into_response());
    }
    // One path for the router and the credentials check alike.
    let normalized = crate::guard::normalize_path(req.uri().path());
    if normalized != req.uri().path() {
        let pq = match req.uri().query() {
            Some(q) => format!("{normalized}?{q}"),
            None => normalized,
        };
        match pq.parse() {
            Ok(uri) => *req.uri_mut() = uri,
            Err(_) => return Ok(text(StatusCode::BAD_REQUEST, plain, "invalid path\n")),
        }
    }
    if req.uri().path().starts_with("/api/") {
        return Ok(crate::api::serve(&state, req).await);
    }
    if let Some(r) = crate::console::serve(req.method(), req.uri().path()) {
        return Ok(r);
    }
    let mut credentials = None;
    let path = req.uri().path().to_owned();
    // Deny by default: only the probes and the scrape target are open.
    let protected = !matches!(path.as_str(), "/metrics" | "/healthz" | "/readyz");
    if protected && let Some(ac) = &state.access {
        let client = ac.client(peer_of(&req), req.headers());
        match ac.check_admin(req.method(), req.headers(), &client).await {
            Ok(c) => {
                credentials = Some(pier_upstream::Credentials {
                    username: c.username,
                    password: c.password,
                })
            }
            Err(e) => {
                let resp = e.into_response();
                let (parts, _) = resp.into_parts();
                let mut r = text(
                    parts.status,
                    plain,
                    format!("{}\n", parts.status.canonical_reason().unwrap_or("refused")),
                );
                for (k, v) in parts
                    .headers
                    .iter()
                    .filter(|(k, _)| *k == header::WWW_AUTHENTICATE || *k == header::RETRY_AFTER)
                {
                    r.headers_mut().insert(k.clone(), v.clone());
                }
                return Ok(r);
            }
        }
    }
    if let Some((status, body)) = crate::legacy::admin(
        state.events.as_deref(),
        req.method(),
        &path,
        req.uri().query().unwrap_or(""),
    )
    .await
    {
        let body = serde_json::to_vec_pretty(&body).unwrap_or_default();
        return Ok(text(status, "application/json", body));
    }
    if req.method() == http::Method::POST && req.uri().path() == "/warm" {
        return Ok(warm(&state, &req, credentials).await);
    }
    if req.method() == http::Method::POST && req.uri().path() == "/plugins/reload" {
        let mut lines = state.plugins.reload_all().await;
        if let Some(e) = &state.events {
            lines.extend(e.reload_all().await);
        }
        let failed = lines.iter().any(|l| l.contains("reload failed"));
        let status = if failed {
            StatusCode::UNPROCESSABLE_ENTITY
        } else {
            StatusCode::OK
        };
        return Ok(text(status, plain, lines.join("\n") + "\n"));
    }
    Ok(match req.uri().path() {
        "/metrics" => {
            use prometheus_client::encoding::prometheus_text;
            let mut body = String::new();
            match prometheus_text::encode(&mut body, &state.series) {
                Ok(()) => text(StatusCode::OK, prometheus_text::CONTENT_TYPE, body),
                Err(_) => text(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    plain,
                    "cannot encode the metrics\n",
                ),
            }
        }
        "/healthz" => text(StatusCode::OK, plain, "ok\n"),
        "/readyz" => match state.ready.check().await {
            Ok(()) => text(StatusCode::OK, plain, "ready\n"),
            Err(what) => text(
                StatusCode::SERVICE_UNAVAILABLE,
                plain,
                format!("not ready: {what}\n"),
            ),
        },
        _ => text(StatusCode::NOT_FOUND, plain, "not found\n"),
    })
}
