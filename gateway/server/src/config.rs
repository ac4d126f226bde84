//! Configuration: defaults, then a TOML file, then `PIER_*` environment variables, then
//! flags (clap merges the last two).

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use clap::{Args, ValueEnum};
use serde::Deserialize;

use crate::error::ServerError;

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    #[default]
    Text,
    Json,
}

pub use pier_storage::{parse_duration, parse_size};

#[derive(Debug, Clone, Args, Default)]
pub struct ServeArgs {
    /// TOML configuration file (same keys as these flags, with `_` for `-`).
    #[arg(long, env = "PIER_CONFIG")]
    pub config: Option<PathBuf>,
    /// Registry listen address [default: 127.0.0.1:5000]
    #[arg(long, env = "PIER_LISTEN")]
    pub listen: Option<SocketAddr>,
    /// Admin listen address for /metrics, /healthz, /readyz [default: 127.0.0.1:5001]
    #[arg(long, env = "PIER_ADMIN_LISTEN")]
    pub admin_listen: Option<SocketAddr>,
    /// Storage root directory [default: ./pier-data]
    #[arg(long, env = "PIER_ROOT")]
    pub root: Option<PathBuf>,
    /// PEM certificate chain; serves HTTPS (HTTP/2 and HTTP/1.1 by ALPN) with --tls-key
    #[arg(long, env = "PIER_TLS_CERT")]
    pub tls_cert: Option<PathBuf>,
    /// PEM private key for --tls-cert
    #[arg(long, env = "PIER_TLS_KEY")]
    pub tls_key: Option<PathBuf>,
    /// Accept cleartext HTTP/2 (prior knowledge) beside HTTP/1.1 [default: false]
    #[arg(long, env = "PIER_H2C", num_args = 0..=1, default_missing_value = "true",
          value_parser = clap::builder::BoolishValueParser::new())]
    pub h2c: Option<bool>,
    /// Upload sessions idle longer than this are removed [default: 24h]
    #[arg(long, env = "PIER_UPLOAD_IDLE_TIMEOUT", value_parser = parse_duration)]
    pub upload_idle_timeout: Option<Duration>,
    /// How long SIGTERM waits for in-flight requests [default: 30s]
    #[arg(long, env = "PIER_SHUTDOWN_TIMEOUT", value_parser = parse_duration)]
    pub shutdown_timeout: Option<Duration>,
    /// Log format [default: text]
    #[arg(long, env = "PIER_LOG_FORMAT", value_enum)]
    pub log_format: Option<LogFormat>,
    /// Mirror this upstream registry (pull-through cache); the first is the default
    /// upstream for every name. Repeatable; more options in the config file.
    #[arg(long = "upstream", env = "PIER_UPSTREAM", value_delimiter = ',')]
    pub upstreams: Vec<String>,
    /// How long a mirrored tag is served before the upstream is asked again [default: 1m]
    #[arg(long, env = "PIER_UPSTREAM_TAG_TTL", value_parser = parse_duration)]
    pub upstream_tag_ttl: Option<Duration>,
    /// Bound on the bytes of mirrored blobs kept; least recently used go first [default: none]
    #[arg(long, env = "PIER_CACHE_MAX_SIZE", value_parser = parse_size)]
    pub cache_max_size: Option<u64>,
    /// How often the cache bound is enforced [default: 30s]
    #[arg(long, env = "PIER_CACHE_EVICT_INTERVAL", value_parser = parse_duration)]
    pub cache_evict_interval: Option<Duration>,
    /// How often the dashboard's history is sampled [default: 10s]
    #[arg(long, env = "PIER_HISTORY_EVERY", value_parser = parse_duration)]
    pub history_every: Option<Duration>,
    /// Serve the admin API on a non-loopback address without access control [default: false]
    #[arg(long, env = "PIER_ADMIN_INSECURE", num_args = 0..=1, default_missing_value = "true",
          value_parser = clap::builder::BoolishValueParser::new())]
    pub admin_insecure: Option<bool>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileConfig {
    listen: Option<SocketAddr>,
    admin_listen: Option<SocketAddr>,
    root: Option<PathBuf>,
    h2c: Option<bool>,
    upload_idle_timeout: Option<String>,
    shutdown_timeout: Option<String>,
    log_format: Option<LogFormat>,
    tls: Option<FileTls>,
    #[serde(default)]
    upstreams: Vec<FileUpstream>,
    #[serde(default)]
    local_namespaces: Vec<String>,
    cache_max_size: Option<String>,
    cache_evict_interval: Option<String>,
    history_every: Option<String>,
    #[serde(default)]
    admin_hostnames: Vec<String>,
    admin_insecure: Option<bool>,
    #[serde(default)]
    trusted_proxies: Vec<String>,
    limits: Option<FileLimits>,
    auth: Option<FileAuth>,
    #[serde(default)]
    plugins: Vec<FilePlugin>,
    storage: Option<FileStorage>,
    redis: Option<pier_cluster::RedisConfig>,
    events: Option<pier_dispatch::config::FileEvents>,
    replication: Option<pier_dispatch::config::FileReplication>,
    fleet: Option<pier_http::fleet::FileFleet>,
}

/// `[limits]`: bounds on connections (see [`pier_http::conn::Limits`] for the defaults).
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileLimits {
    max_connections: Option<usize>,
    admin_max_connections: Option<usize>,
    max_connections_per_address: Option<usize>,
    idle_timeout: Option<String>,
    header_read_timeout: Option<String>,
    tls_handshake_timeout: Option<String>,
    send_timeout: Option<String>,
    h2_max_concurrent_streams: Option<u32>,
    h2_keepalive: Option<String>,
    body_idle_timeout: Option<String>,
    upload_min_rate: Option<String>,
}

impl FileLimits {
    fn resolve(self, path: &Path) -> Result<pier_http::conn::Limits, ServerError> {
        let mut l = pier_http::conn::Limits::default();
        let positive = |d: Option<Duration>, key: &str| -> Result<Option<Duration>, ServerError> {
            match d {
                Some(d) if d.is_zero() => Err(ServerError::Config(format!(
                    "{}: limits.{key} must be more than zero",
                    path.display()
                ))),
                d => Ok(d),
            }
        };
        if let Some(n) = self.max_connections {
            l.max_connections = n.max(1);
        }
        if let Some(n) = self.admin_max_connections {
            l.admin_max_connections = n.max(1);
        }
        if let Some(n) = self.max_connections_per_address {
            l.max_connections_per_address = n;
        }
        if let Some(n) = self.h2_max_concurrent_streams {
            l.h2_max_concurrent_streams = n.max(1);
        }
        let d = |v: Option<String>, key: &str| {
            positive(file_duration(v, &format!("limits.{key}"), path)?, key)
        };
        if let Some(v) = d(self.header_read_timeout, "header_read_timeout")? {
            l.header_read_timeout = v;
        }
        if let Some(v) = d(self.idle_timeout, "idle_timeout")? {
            l.idle_timeout = v;
        }
        if let Some(v) = d(self.tls_handshake_timeout, "tls_handshake_timeout")? {
            l.tls_handshake_timeout = v;
        }
        if let Some(v) = d(self.send_timeout, "send_timeout")? {
            l.send_timeout = v;
        }
        if let Some(v) = d(self.h2_keepalive, "h2_keepalive")? {
            l.h2_keepalive = v;
        }
        if let Some(v) = d(self.body_idle_timeout, "body_idle_timeout")? {
            l.body_idle_timeout = v;
        }
        if let Some(v) = self.upload_min_rate {
            l.upload_min_rate = parse_size(&v).map_err(|e| {
                ServerError::Config(format!("{}: limits.upload_min_rate: {e}", path.display()))
            })?;
        }
        Ok(l)
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct FileStorage {
    backend: String,
    s3: Option<pier_storage::s3::S3Config>,
}

impl std::fmt::Debug for FileStorage {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FileStorage")
            .field("backend", &self.backend)
            .finish_non_exhaustive()
    }
}

/// Where blobs, manifests and uploads live.
#[derive(Clone, Default)]
pub enum StorageChoice {
    /// The filesystem under `root` (CNCF distribution's layout).
    #[default]
    Fs,
    /// An S3 bucket (distribution's S3 key layout under a prefix).
    S3(Box<pier_storage::s3::S3Config>),
}

impl std::fmt::Debug for StorageChoice {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            StorageChoice::Fs => f.write_str("Fs"),
            StorageChoice::S3(c) => write!(f, "S3(bucket {:?}, prefix {:?})", c.bucket, c.prefix),
        }
    }
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileAuth {
    service: Option<String>,
    issuer: Option<String>,
    realm: Option<String>,
    token_ttl: Option<String>,
    refresh_ttl: Option<String>,
    token_key: Option<PathBuf>,
    users_file: Option<PathBuf>,
    robots_file: Option<PathBuf>,
    #[serde(default)]
    trusted_issuers: Vec<FileIssuer>,
    throttle: Option<FileThrottle>,
}

/// `[auth.throttle]`: failed logins, password checks, revocations (defaults in
/// [`ThrottleConfig::default`]).
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileThrottle {
    account_failures: Option<u32>,
    address_failures: Option<u32>,
    max_backoff: Option<String>,
    password_checks: Option<usize>,
    password_check_wait: Option<String>,
    revocations_per_minute: Option<u32>,
}

impl FileThrottle {
    fn resolve(self, path: &Path) -> Result<ThrottleConfig, ServerError> {
        let mut c = ThrottleConfig::default();
        let t = &mut c.login.throttle;
        if let Some(n) = self.account_failures {
            t.account_failures = n.max(1);
        }
        if let Some(n) = self.address_failures {
            t.address_failures = n.max(1);
        }
        if let Some(d) = file_duration(self.max_backoff, "auth.throttle.max_backoff", path)? {
            t.max_backoff = d.max(t.first_backoff);
        }
        if let Some(n) = self.password_checks {
            c.login.password_checks = n.max(1);
        }
        if let Some(d) = file_duration(
            self.password_check_wait,
            "auth.throttle.password_check_wait",
            path,
        )? {
            c.login.password_check_wait = d;
        }
        if let Some(n) = self.revocations_per_minute {
            c.revocations_per_minute = n;
        }
        Ok(c)
    }
}

/// Bounds on what one client can make the token service do.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ThrottleConfig {
    /// The failed-login throttle and the password check pool.
    pub login: pier_auth::authn::LoginLimits,
    /// `/auth/revoke` calls per client address and minute (0: no limit).
    pub revocations_per_minute: u32,
}

impl Default for ThrottleConfig {
    fn default() -> ThrottleConfig {
        ThrottleConfig {
            login: pier_auth::authn::LoginLimits::default(),
            revocations_per_minute: 30,
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileIssuer {
    issuer: String,
    public_key: PathBuf,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct FilePlugin {
    name: String,
    path: PathBuf,
    hook: String,
    timeout: Option<String>,
    memory_limit: Option<String>,
    max_instances: Option<usize>,
    #[serde(default)]
    grants: Vec<String>,
    #[serde(default)]
    allowed_hosts: Vec<String>,
    ldap_url: Option<String>,
    ldap_starttls: Option<bool>,
    ldap_ca_file: Option<PathBuf>,
    watch: Option<bool>,
    config: Option<toml::Table>,
    #[serde(default)]
    repositories: Vec<String>,
    every: Option<String>,
}

/// Access control (`[auth]`): Docker token auth, local users, robots.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuthConfig {
    /// `service` of the challenge and `aud` of tokens.
    pub service: String,
    /// `iss` of the tokens this gateway signs.
    pub issuer: String,
    /// Realm URL to advertise (derived from the request's Host when unset).
    pub realm: Option<String>,
    pub token_ttl: Duration,
    pub refresh_ttl: Duration,
    /// PKCS#8 PEM signing key; generated on first start when missing.
    pub token_key: PathBuf,
    pub users_file: PathBuf,
    pub robots_file: PathBuf,
    /// (issuer, PEM public key or certificate) of tokens accepted from elsewhere.
    pub trusted_issuers: Vec<(String, PathBuf)>,
    pub throttle: ThrottleConfig,
}

impl AuthConfig {
    /// The defaults: files under `ROOT/pier/auth/`.
    pub fn defaults_for(root: &Path) -> AuthConfig {
        AuthConfig::defaults(root)
    }

    fn defaults(root: &Path) -> AuthConfig {
        let dir = root.join("pier").join("auth");
        AuthConfig {
            service: "pier".into(),
            issuer: "pier".into(),
            realm: None,
            token_ttl: Duration::from_secs(300),
            refresh_ttl: Duration::from_secs(7 * 86_400),
            token_key: dir.join("token-key.pem"),
            users_file: dir.join("users.htpasswd"),
            robots_file: dir.join("robots.json"),
            trusted_issuers: Vec::new(),
            throttle: ThrottleConfig::default(),
        }
    }
}

/// One `[[plugins]]` entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PluginEntry {
    pub name: String,
    /// The world it implements, as configured (`hook = "..."`).
    pub hook: Hook,
    pub path: PathBuf,
    pub timeout: Duration,
    pub memory_limit: usize,
    pub max_instances: usize,
    pub grants: Vec<String>,
    pub allowed_hosts: Vec<String>,
    /// The directory of the `ldap` capability (`ldap_url`, `ldap_starttls`,
    /// `ldap_ca_file`).
    pub ldap: Option<pier_plugin_host::LdapDirectory>,
    /// Reload when the file changes.
    pub watch: bool,
    pub config: serde_json::Map<String, serde_json::Value>,
    /// The repositories an admission plugin governs (`*`/`?` patterns); empty: all.
    pub repositories: Vec<String>,
    /// How often a retention plugin runs over every project; `None`: on demand only.
    pub every: Option<Duration>,
}

fn toml_to_json(v: toml::Value) -> serde_json::Value {
    use serde_json::Value as J;
    match v {
        toml::Value::String(s) => J::String(s),
        toml::Value::Integer(i) => J::from(i),
        toml::Value::Float(f) => serde_json::Number::from_f64(f)
            .map(J::Number)
            .unwrap_or(J::Null),
        toml::Value::Boolean(b) => J::Bool(b),
        toml::Value::Datetime(d) => J::String(d.to_string()),
        toml::Value::Array(a) => J::Array(a.into_iter().map(toml_to_json).collect()),
        toml::Value::Table(t) => {
            J::Object(t.into_iter().map(|(k, v)| (k, toml_to_json(v))).collect())
        }
    }
}

/// What a plugin is loaded as.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Hook {
    Authorizer,
    Notifier,
    Replicator,
    Admission,
    Retention,
}

impl Hook {
    /// The world's name in `wit/`.
    pub fn world(self) -> &'static str {
        match self {
            Hook::Authorizer => "authorizer",
            Hook::Notifier => "notifier",
            Hook::Replicator => "replicator",
            Hook::Admission => "admission",
            Hook::Retention => "retention",
        }
    }
}

/// Relative paths in the config file are relative to the file's directory.
fn relative_to(base: &Path, p: PathBuf) -> PathBuf {
    if p.is_absolute() { p } else { base.join(p) }
}

fn plugin_entry(p: FilePlugin, base: &Path, cfg_path: &Path) -> Result<PluginEntry, ServerError> {
    let err = |m: String| {
        ServerError::Config(format!("{}: plugin {:?}: {m}", cfg_path.display(), p.name))
    };
    let hook = match p.hook.as_str() {
        "authorizer" => Hook::Authorizer,
        "notifier" => Hook::Notifier,
        "replicator" => Hook::Replicator,
        "admission" => Hook::Admission,
        "retention" => Hook::Retention,
        other => {
            return Err(err(format!(
                "unknown hook {other:?}: use \"authorizer\", \"notifier\", \"replicator\", \"admission\" or \"retention\""
            )));
        }
    };
    if hook != Hook::Retention && p.every.is_some() {
        return Err(err(
            "`every` is for retention plugins (hook = \"retention\")".into(),
        ));
    }
    let every = file_duration(p.every.clone(), "plugins.every", cfg_path)?;
    if every.is_some_and(|e| e < Duration::from_secs(60)) {
        return Err(err("`every` is at least 1m".into()));
    }
    if hook != Hook::Admission && !p.repositories.is_empty() {
        return Err(err(
            "`repositories` is for admission plugins (hook = \"admission\")".into(),
        ));
    }
    let timeout = file_duration(p.timeout.clone(), "plugins.timeout", cfg_path)?
        .unwrap_or(Duration::from_millis(100));
    let memory_limit = p
        .memory_limit
        .as_deref()
        .map(parse_size)
        .transpose()
        .map_err(err)?
        .unwrap_or(32 << 20) as usize;
    let ldap = p
        .ldap_url
        .as_deref()
        .map(|u| {
            let (scheme, default_port) = if u.starts_with("ldaps://") {
                ("ldaps", 636)
            } else {
                ("ldap", 389)
            };
            let h = u
                .strip_prefix("ldap://")
                .or_else(|| u.strip_prefix("ldaps://"))
                .map(|h| h.trim_end_matches('/'))
                .filter(|h| !h.is_empty() && !h.contains(['/', '?', '@']))
                .ok_or_else(|| {
                    err(format!(
                        "ldap_url {u:?} must be ldap://HOST[:PORT] or ldaps://HOST[:PORT]"
                    ))
                })?;
            let has_port = match h.rfind(']') {
                Some(i) => h[i..].contains(':'),
                None => h.contains(':'),
            };
            let url = if has_port {
                format!("{scheme}://{h}")
            } else {
                format!("{scheme}://{h}:{default_port}")
            };
            let starttls = p.ldap_starttls.unwrap_or(false);
            if starttls && scheme == "ldaps" {
                return Err(err(
                    "ldap_starttls is for ldap:// URLs; ldaps:// is TLS already".into(),
                ));
            }
            Ok(pier_plugin_host::LdapDirectory {
                url,
                starttls,
                ca_file: p.ldap_ca_file.clone().map(|f| relative_to(base, f)),
            })
        })
        .transpose()?;
    if p.ldap_url.is_none() && (p.ldap_starttls.is_some() || p.ldap_ca_file.is_some()) {
        return Err(err("ldap_starttls and ldap_ca_file need ldap_url".into()));
    }
    pier_plugin_host::Grants::parse(&p.grants).map_err(err)?;
    Ok(PluginEntry {
        hook,
        path: relative_to(base, p.path),
        timeout,
        memory_limit,
        max_instances: p.max_instances.unwrap_or(16).max(1),
        grants: p.grants,
        allowed_hosts: p.allowed_hosts,
        ldap,
        watch: p.watch.unwrap_or(true),
        config: p
            .config
            .map(|t| t.into_iter().map(|(k, v)| (k, toml_to_json(v))).collect())
            .unwrap_or_default(),
        repositories: p.repositories,
        every,
        name: p.name,
    })
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileUpstream {
    name: Option<String>,
    url: String,
    namespace: Option<String>,
    username: Option<String>,
    password: Option<String>,
    tag_ttl: Option<String>,
    stale_while_revalidate: Option<String>,
    #[serde(default)]
    default: bool,
    #[serde(default)]
    keep_deleted: bool,
    #[serde(default)]
    allow_private: bool,
    max_concurrent_fetches: Option<usize>,
    max_requests_per_second: Option<f64>,
    #[serde(default)]
    platforms: Vec<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileTls {
    cert: Option<PathBuf>,
    key: Option<PathBuf>,
}

/// One upstream registry of the mirror.
#[derive(Debug, Clone, PartialEq)]
pub struct UpstreamEntry {
    /// A repository name component: `/v2/<name>/...` reaches it; content is kept under it.
    pub name: String,
    pub url: String,
    /// The host containerd sends as `?ns=`.
    pub namespace: String,
    pub docker_hub: bool,
    pub credentials: Option<(String, String)>,
    pub tag_ttl: Duration,
    /// After the TTL, serve the cached tag at once while revalidating in the background.
    pub stale_while_revalidate: Duration,
    /// Keep serving cached tags the upstream deleted.
    pub keep_deleted: bool,
    /// Its redirects and token realms may lead to private addresses.
    pub allow_private: bool,
    /// Its pull budget: concurrent fetches and requests per second (0: no limit).
    pub budget: pier_upstream::BudgetConfig,
    /// Index children fetched with their index (`os/arch[/variant]`); empty: all.
    pub platforms: Vec<String>,
}

/// The part of a URL between `://` and the path.
fn url_host(url: &str) -> Option<&str> {
    let rest = url.split_once("://").map(|(_, r)| r)?;
    let host = rest.split('/').next()?;
    (!host.is_empty()).then_some(host)
}

/// A repository-name component made from a host: `127.0.0.1:5000` -> `127.0.0.1-5000`.
fn name_from_host(host: &str) -> String {
    host.to_ascii_lowercase()
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '.' {
                c
            } else {
                '-'
            }
        })
        .collect::<String>()
        .trim_matches(|c: char| !c.is_ascii_alphanumeric())
        .to_owned()
}

const DOCKER_HUB_HOSTS: [&str; 4] = [
    "registry-1.docker.io",
    "docker.io",
    "index.docker.io",
    "registry.hub.docker.com",
];

fn upstream_entry(
    url: &str,
    name: Option<String>,
    namespace: Option<String>,
    credentials: Option<(String, String)>,
    tag_ttl: Duration,
) -> Result<UpstreamEntry, ServerError> {
    let host = url_host(url)
        .filter(|_| url.starts_with("http://") || url.starts_with("https://"))
        .ok_or_else(|| {
            ServerError::Config(format!(
                "upstream URL {url:?} must be http://HOST[:PORT] or https://..."
            ))
        })?;
    let docker_hub = DOCKER_HUB_HOSTS.contains(&host);
    let namespace = namespace.unwrap_or_else(|| {
        if docker_hub {
            "docker.io".into()
        } else {
            host.to_owned()
        }
    });
    let name = name.unwrap_or_else(|| name_from_host(&namespace));
    if name.parse::<pier_oci::RepoName>().is_err() || name.contains('/') {
        return Err(ServerError::Config(format!(
            "upstream name {name:?} must be one repository name component ([a-z0-9] with . _ -)"
        )));
    }
    Ok(UpstreamEntry {
        name,
        url: url.trim_end_matches('/').to_owned(),
        namespace,
        docker_hub,
        credentials,
        tag_ttl,
        stale_while_revalidate: Duration::ZERO,
        keep_deleted: false,
        allow_private: false,
        budget: pier_upstream::BudgetConfig::default(),
        platforms: Vec::new(),
    })
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsConfig {
    pub cert: PathBuf,
    pub key: PathBuf,
}

/// The resolved configuration of `pier serve`.
#[derive(Debug, Clone)]
pub struct Config {
    pub listen: SocketAddr,
    pub admin_listen: SocketAddr,
    pub root: PathBuf,
    pub tls: Option<TlsConfig>,
    pub h2c: bool,
    pub upload_idle_timeout: Duration,
    pub shutdown_timeout: Duration,
    pub log_format: LogFormat,
    /// Mirrored upstreams.
    pub upstreams: Vec<UpstreamEntry>,
    /// Index of the upstream that names no other rule claims go to.
    pub default_upstream: Option<usize>,
    /// First name components that stay local beside a default upstream.
    pub local_namespaces: Vec<String>,
    /// Bound on mirrored blob bytes.
    pub cache_max_size: Option<u64>,
    pub cache_evict_interval: Duration,
    /// How often the dashboard's history is sampled (kept for a day, in memory).
    pub history_every: Duration,
    /// Host names the admin listener answers to besides IP literals and `localhost`.
    pub admin_hostnames: Vec<String>,
    /// The operator's explicit consent to an unauthenticated admin API off loopback.
    pub admin_insecure: bool,
    /// Peers whose `X-Forwarded-For` names the client (load balancers, ingress).
    pub trusted_proxies: pier_http::TrustedProxies,
    /// Bounds on connections.
    pub limits: pier_http::conn::Limits,
    /// Access control; `None`: everyone may do everything.
    pub auth: Option<AuthConfig>,
    pub plugins: Vec<PluginEntry>,
    /// The file this came from, if any.
    pub config_file: Option<PathBuf>,
    pub storage: StorageChoice,
    /// Shared state of a scaled-out deployment; `None`: a single node.
    pub redis: Option<pier_cluster::RedisConfig>,
    /// Event journal and webhook delivery (used when a notifier or replicator is loaded).
    pub events: pier_dispatch::EventsSettings,
    pub replication: pier_dispatch::ReplicationSettings,
    /// The edge fleet this node belongs to; `None`: alone.
    pub fleet: Option<pier_http::fleet::FleetConfig>,
}

fn file_duration(
    v: Option<String>,
    key: &str,
    path: &Path,
) -> Result<Option<Duration>, ServerError> {
    v.map(|s| {
        parse_duration(&s)
            .map_err(|e| ServerError::Config(format!("{}: {key}: {e}", path.display())))
    })
    .transpose()
}

/// The config file (if any) with the environment's keys over it and secrets read from
/// their files, as [`FileConfig`]; errors name the file and, from the parser, the line.
fn read_file(
    file: Option<&Path>,
    vars: impl IntoIterator<Item = (String, String)>,
) -> Result<(FileConfig, PathBuf), ServerError> {
    let p = file.unwrap_or(Path::new(""));
    let text = match file {
        Some(p) => std::fs::read_to_string(p).map_err(|e| {
            ServerError::Config(format!("cannot read config file {}: {e}", p.display()))
        })?,
        None => String::new(),
    };
    let invalid =
        |e: String| ServerError::Config(format!("invalid config file {}: {e}", p.display()));
    let mut table: toml::Table = toml::from_str(&text).map_err(|e| invalid(e.to_string()))?;
    let from_env = pier_settings::apply_env(&mut table, vars)
        .map_err(|e| ServerError::Config(format!("environment: {e}")))?;
    let base = p.parent().unwrap_or(Path::new("."));
    let from_files = pier_settings::read_secret_files(&mut table, base).map_err(invalid)?;
    match FileConfig::deserialize(toml::Value::Table(table)) {
        Ok(f) => Ok((f, p.to_path_buf())),
        // The text's own error says on which line; with variables or secret files over it,
        // the line may not be the culprit.
        Err(e) if from_env.is_empty() && from_files.is_empty() => Err(invalid(
            toml::from_str::<FileConfig>(&text)
                .err()
                .map_or_else(|| e.to_string(), |e| e.to_string()),
        )),
        Err(e) => Err(invalid(format!(
            "{e} (with {} over it)",
            from_env.join(", ")
        ))),
    }
}

impl Config {
    /// Merges flags/env (`args`) over the file named by `args.config` over defaults.
    pub fn resolve(args: ServeArgs) -> Result<Config, ServerError> {
        Self::resolve_with_env(args, std::env::vars())
    }

    /// [`Config::resolve`] with these environment variables (`PIER_…__…` keys, see
    /// `config_source`) instead of the process's.
    pub fn resolve_with_env(
        args: ServeArgs,
        vars: impl IntoIterator<Item = (String, String)>,
    ) -> Result<Config, ServerError> {
        let (file, path) = read_file(args.config.as_deref(), vars)?;
        let file_tls = file.tls.unwrap_or_default();
        let cert = args.tls_cert.or(file_tls.cert);
        let key = args.tls_key.or(file_tls.key);
        let tls = match (cert, key) {
            (Some(cert), Some(key)) => Some(TlsConfig { cert, key }),
            (None, None) => None,
            _ => {
                return Err(ServerError::Config(
                    "TLS needs both a certificate (--tls-cert) and a key (--tls-key)".into(),
                ));
            }
        };
        let default_ttl = match args.upstream_tag_ttl {
            Some(d) => d,
            None => Duration::from_secs(60),
        };
        let mut upstreams = Vec::new();
        for url in &args.upstreams {
            upstreams.push(upstream_entry(url, None, None, None, default_ttl)?);
        }
        let mut from_file = Vec::new();
        let mut file_default = false;
        for u in file.upstreams {
            let ttl = file_duration(u.tag_ttl, "upstreams.tag_ttl", &path)?.unwrap_or(default_ttl);
            let creds = match (u.username, u.password) {
                (Some(user), Some(pass)) => Some((user, pass)),
                (None, None) => None,
                _ => {
                    return Err(ServerError::Config(format!(
                        "upstream {}: username and password go together",
                        u.url
                    )));
                }
            };
            let mut entry = upstream_entry(&u.url, u.name, u.namespace, creds, ttl)?;
            entry.keep_deleted = u.keep_deleted;
            entry.allow_private = u.allow_private;
            if let Some(bad) = u
                .platforms
                .iter()
                .find(|p| !(2..=3).contains(&p.split('/').count()))
            {
                let msg = format!(
                    "upstream {}: platform {bad:?} is not os/arch[/variant]",
                    u.url
                );
                return Err(ServerError::Config(format!("{}: {msg}", path.display())));
            }
            entry.platforms = u.platforms;
            if let Some(n) = u.max_concurrent_fetches {
                entry.budget.max_concurrent = n;
            }
            if let Some(r) = u.max_requests_per_second {
                let bad =
                    |e| ServerError::Config(format!("{}: upstream {}: {e}", path.display(), u.url));
                entry.budget = entry.budget.with_rate(r).map_err(bad)?;
            }
            entry.stale_while_revalidate = file_duration(
                u.stale_while_revalidate,
                "upstreams.stale_while_revalidate",
                &path,
            )?
            .unwrap_or_default();
            if u.default {
                file_default = true;
                from_file.insert(0, entry);
            } else {
                from_file.push(entry);
            }
        }
        // Flags' upstreams come first (the first is the default), then the file's.
        let default_upstream = (!upstreams.is_empty() || file_default).then_some(0);
        upstreams.extend(from_file);
        let mut names: Vec<&str> = upstreams.iter().map(|u| u.name.as_str()).collect();
        names.sort_unstable();
        if let Some(w) = names.windows(2).find(|w| w[0] == w[1]) {
            return Err(ServerError::Config(format!(
                "two upstreams are named {:?}",
                w[0]
            )));
        }
        let cache_max_size = match args.cache_max_size {
            Some(n) => Some(n),
            None => file
                .cache_max_size
                .map(|v| {
                    parse_size(&v).map_err(|e| {
                        ServerError::Config(format!("{}: cache_max_size: {e}", path.display()))
                    })
                })
                .transpose()?,
        };
        let cache_evict_interval = match args.cache_evict_interval {
            Some(d) => d,
            None => file_duration(file.cache_evict_interval, "cache_evict_interval", &path)?
                .unwrap_or(Duration::from_secs(30)),
        };
        let base = path.parent().map(Path::to_owned).unwrap_or_default();
        let root = args
            .root
            .or(file.root.map(|r| relative_to(&base, r)))
            .unwrap_or_else(|| PathBuf::from("./pier-data"));
        let plugins = file
            .plugins
            .into_iter()
            .map(|p| plugin_entry(p, &base, &path))
            .collect::<Result<Vec<_>, _>>()?;
        let events = pier_dispatch::config::events(file.events, &base, &path, &root)?;
        let replication = pier_dispatch::config::replication(file.replication, &path, &root)?;
        let auth = match file.auth {
            None if !plugins.iter().any(|p| p.hook == Hook::Authorizer) => None,
            None => Some(AuthConfig::defaults(&root)),
            Some(a) => {
                let mut c = AuthConfig::defaults(&root);
                if let Some(v) = a.service {
                    c.service = v;
                }
                if let Some(v) = a.issuer {
                    c.issuer = v;
                }
                c.realm = a.realm;
                if let Some(d) = file_duration(a.token_ttl, "auth.token_ttl", &path)? {
                    c.token_ttl = d;
                }
                if let Some(d) = file_duration(a.refresh_ttl, "auth.refresh_ttl", &path)? {
                    c.refresh_ttl = d;
                }
                if let Some(p) = a.token_key {
                    c.token_key = relative_to(&base, p);
                }
                if let Some(p) = a.users_file {
                    c.users_file = relative_to(&base, p);
                }
                if let Some(p) = a.robots_file {
                    c.robots_file = relative_to(&base, p);
                }
                c.trusted_issuers = a
                    .trusted_issuers
                    .into_iter()
                    .map(|t| (t.issuer, relative_to(&base, t.public_key)))
                    .collect();
                c.throttle = a.throttle.unwrap_or_default().resolve(&path)?;
                Some(c)
            }
        };
        let storage = match file.storage {
            None => StorageChoice::Fs,
            Some(st) => match (st.backend.as_str(), st.s3) {
                ("fs", None) => StorageChoice::Fs,
                ("s3", Some(mut c)) => {
                    // A relative cache directory is relative to the file, like `root`.
                    c.cache_dir = c.cache_dir.map(|d| relative_to(&base, d));
                    StorageChoice::S3(Box::new(c))
                }
                ("s3", None) => {
                    return Err(ServerError::Config(format!(
                        "{}: storage backend \"s3\" needs a [storage.s3] table (bucket, endpoint, ...)",
                        path.display()
                    )));
                }
                (other, _) => {
                    return Err(ServerError::Config(format!(
                        "{}: storage backend {other:?}: use \"fs\" or \"s3\"",
                        path.display()
                    )));
                }
            },
        };
        let fleet = file
            .fleet
            .map(|f| f.resolve(parse_duration))
            .transpose()
            .map_err(|e| ServerError::Config(format!("{}: {e}", path.display())))?;
        if fleet.is_some() && upstreams.is_empty() {
            return Err(ServerError::Config(format!(
                "{}: [fleet] shares upstream fetches between nodes, but no upstream is configured",
                path.display()
            )));
        }
        Ok(Config {
            fleet,
            storage,
            redis: file.redis,
            events,
            replication,
            config_file: args.config.clone(),
            auth,
            plugins,
            cache_max_size,
            cache_evict_interval,
            upstreams,
            default_upstream,
            local_namespaces: file.local_namespaces,
            listen: args
                .listen
                .or(file.listen)
                .unwrap_or(([127, 0, 0, 1], 5000).into()),
            admin_listen: args
                .admin_listen
                .or(file.admin_listen)
                .unwrap_or(([127, 0, 0, 1], 5001).into()),
            root,
            tls,
            h2c: args.h2c.or(file.h2c).unwrap_or(false),
            upload_idle_timeout: match args.upload_idle_timeout {
                Some(d) => d,
                None => file_duration(file.upload_idle_timeout, "upload_idle_timeout", &path)?
                    .unwrap_or(Duration::from_secs(24 * 3600)),
            },
            shutdown_timeout: match args.shutdown_timeout {
                Some(d) => d,
                None => file_duration(file.shutdown_timeout, "shutdown_timeout", &path)?
                    .unwrap_or(Duration::from_secs(30)),
            },
            log_format: args.log_format.or(file.log_format).unwrap_or_default(),
            history_every: match args.history_every {
                Some(d) => d,
                None => file_duration(file.history_every, "history_every", &path)?
                    .unwrap_or(Duration::from_secs(10)),
            }
            .max(Duration::from_millis(100)),
            admin_hostnames: file.admin_hostnames,
            trusted_proxies: pier_http::TrustedProxies::parse(&file.trusted_proxies).map_err(
                |e| ServerError::Config(format!("{}: trusted_proxies: {e}", path.display())),
            )?,
            limits: file.limits.unwrap_or_default().resolve(&path)?,
            admin_insecure: args.admin_insecure.or(file.admin_insecure).unwrap_or(false),
        })
    }

    /// Refuses an admin API anyone on the network could drive: a non-loopback
    /// `admin_listen` without `[auth]`, unless the operator opted in.
    pub fn check_admin_exposure(&self) -> Result<(), ServerError> {
        if self.auth.is_some() || self.admin_listen.ip().is_loopback() || self.admin_insecure {
            return Ok(());
        }
        Err(ServerError::Config(format!(
            "admin_listen {} is reachable from the network but access control is off: anyone \
             could delete, reconfigure and read through the admin API. Bind it to loopback \
             (admin_listen = \"127.0.0.1:5001\"), turn on [auth], or set admin_insecure = true \
             (--admin-insecure) if a network policy already keeps strangers out",
            self.admin_listen
        )))
    }
}

/// The configuration reader on any file an operator (or a config generator gone wrong) may
/// write: an answer, never a panic (the stable-toolchain stand-in for a fuzz target).
#[cfg(test)]
mod config_props {
    use proptest::prelude::*;

    use super::*;

    fn resolve_text(text: &str) -> Result<Config, ServerError> {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("pier.toml");
        std::fs::write(&path, text).unwrap();
        Config::resolve(ServeArgs {
            config: Some(path),
            ..ServeArgs::default()
        })
    }

    /// A value of the kinds the file's keys take, with hostile edges.
    fn value() -> impl Strategy<Value = String> {
        prop_oneof![
            any::<i64>().prop_map(|n| n.to_string()),
            any::<u64>().prop_map(|n| format!("\"{n}h\"")),
            any::<u64>().prop_map(|n| format!("\"{n}d\"")),
            any::<u64>().prop_map(|n| format!("\"{n}ms\"")),
            any::<u64>().prop_map(|n| format!("\"{n}TiB\"")),
            "[ -~]{0,20}".prop_map(|v| format!("{v:?}")),
            Just("true".to_owned()),
            Just("[]".to_owned()),
            Just("[\"\"]".to_owned()),
            Just("{}".to_owned()),
        ]
    }

    fn key() -> impl Strategy<Value = (&'static str, &'static str)> {
        prop::sample::select(vec![
            ("", "listen"),
            ("", "admin_listen"),
            ("", "upload_idle_timeout"),
            ("", "shutdown_timeout"),
            ("", "cache_max_size"),
            ("", "cache_evict_interval"),
            ("", "history_every"),
            ("", "admin_hostnames"),
            ("", "admin_insecure"),
            ("", "local_namespaces"),
            ("limits", "max_connections"),
            ("limits", "header_read_timeout"),
            ("limits", "send_timeout"),
            ("limits", "h2_max_concurrent_streams"),
            ("limits", "body_idle_timeout"),
            ("limits", "upload_min_rate"),
            ("auth", "token_ttl"),
            ("auth", "refresh_ttl"),
            ("auth", "service"),
            ("[upstreams]", "url"),
            ("[upstreams]", "tag_ttl"),
            ("[upstreams]", "stale_while_revalidate"),
            ("[upstreams]", "max_concurrent_fetches"),
            ("[upstreams]", "max_requests_per_second"),
            ("[upstreams]", "platforms"),
            ("redis", "mode"),
            ("redis", "url"),
            ("redis", "op_timeout_ms"),
            ("events", "secret"),
        ])
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(1024))]

        #[test]
        fn any_text_is_read_or_refused(text in any::<String>()) {
            let _ = resolve_text(&text);
        }

        #[test]
        fn known_keys_with_hostile_values_are_read_or_refused(
            entries in prop::collection::vec((key(), value()), 0..8)
        ) {
            let mut text = String::new();
            for ((section, k), v) in &entries {
                match *section {
                    "" => text.insert_str(0, &format!("{k} = {v}\n")),
                    s if s.starts_with('[') => text.push_str(&format!("[{s}]\nurl = \"http://u\"\n{k} = {v}\n")),
                    s => text.push_str(&format!("[{s}]\n{k} = {v}\n")),
                }
            }
            let _ = resolve_text(&text);
        }

        #[test]
        fn durations_never_overflow(n in any::<u64>(), unit in prop::sample::select(vec!["", "ms", "s", "m", "h", "d"])) {
            if let Ok(d) = parse_duration(&format!("{n}{unit}")) {
                prop_assert!(d <= pier_storage::MAX_DURATION);
                prop_assert!(std::time::Instant::now().checked_add(d).is_some());
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations() {
        assert_eq!(parse_duration("30s"), Ok(Duration::from_secs(30)));
        assert_eq!(parse_duration("10m"), Ok(Duration::from_secs(600)));
        assert_eq!(parse_duration("2h"), Ok(Duration::from_secs(7200)));
        assert_eq!(parse_duration("15"), Ok(Duration::from_secs(15)));
        assert_eq!(parse_duration("250ms"), Ok(Duration::from_millis(250)));
        assert_eq!(parse_duration("1h30m"), Ok(Duration::from_secs(5400)));
        assert_eq!(parse_duration("1h 30m"), Ok(Duration::from_secs(5400)));
        assert_eq!(parse_duration("90s"), Ok(Duration::from_secs(90)));
        assert_eq!(parse_duration("2d"), Ok(Duration::from_secs(2 * 86_400)));
        assert!(parse_duration("ten").is_err());
        assert!(parse_duration("").is_err());
        assert!(parse_duration("5 fortnights").is_err());
        assert!(parse_duration("-5s").is_err());
        // Overflow is an error, never a wrap.
        assert!(parse_duration("18446744073709551615d").is_err());
        assert!(parse_duration("99999999999999999999").is_err());
        assert!(parse_duration("101y").is_err());
    }

    #[test]
    fn sizes() {
        assert_eq!(parse_size("123"), Ok(123));
        assert_eq!(parse_size("10GiB"), Ok(10 << 30));
        assert_eq!(parse_size("500MB"), Ok(500_000_000));
        assert_eq!(parse_size("2k"), Ok(2048));
        assert!(parse_size("lots").is_err());
        assert!(parse_size("5XB").is_err());
    }

    #[test]
    fn defaults() {
        let c = Config::resolve(ServeArgs::default()).unwrap();
        assert_eq!(c.listen, "127.0.0.1:5000".parse().unwrap());
        assert_eq!(c.admin_listen, "127.0.0.1:5001".parse().unwrap());
        assert_eq!(c.root, PathBuf::from("./pier-data"));
        assert!(!c.h2c && c.tls.is_none());
        assert_eq!(c.upload_idle_timeout, Duration::from_secs(86_400));
    }

    #[test]
    fn plugin_ldap_directories() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("pier.toml");
        let resolve = |lines: &str| {
            std::fs::write(
                &path,
                format!(
                    "[[plugins]]\nname = \"p\"\npath = \"p.wasm\"\nhook = \"authorizer\"\n{lines}\n"
                ),
            )
            .unwrap();
            Config::resolve(ServeArgs {
                config: Some(path.clone()),
                ..Default::default()
            })
            .map(|c| c.plugins[0].ldap.clone())
        };
        let d = |url: &str, starttls: bool, ca: Option<&str>| {
            Some(pier_plugin_host::LdapDirectory {
                url: url.into(),
                starttls,
                ca_file: ca.map(|f| dir.path().join(f)),
            })
        };
        assert_eq!(resolve("").unwrap(), None);
        assert_eq!(
            resolve("ldap_url = \"ldap://10.0.0.1\"").unwrap(),
            d("ldap://10.0.0.1:389", false, None)
        );
        assert_eq!(
            resolve("ldap_url = \"ldaps://ldap.test/\"\nldap_ca_file = \"ca.pem\"").unwrap(),
            d("ldaps://ldap.test:636", false, Some("ca.pem"))
        );
        assert_eq!(
            resolve("ldap_url = \"ldap://[::1]:1389\"\nldap_starttls = true").unwrap(),
            d("ldap://[::1]:1389", true, None)
        );
        for bad in [
            "ldap_url = \"http://ldap.test\"",
            "ldap_url = \"ldaps://ldap.test\"\nldap_starttls = true",
            "ldap_url = \"ldap://u@ldap.test\"",
            "ldap_url = \"ldap://\"",
            "ldap_starttls = true",
            "ldap_ca_file = \"ca.pem\"",
        ] {
            assert!(resolve(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn s3_read_cache_settings() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("pier.toml");
        std::fs::write(
            &path,
            "[storage]\nbackend = \"s3\"\n[storage.s3]\nbucket = \"b\"\ncache_dir = \"cache\"\ncache_max_size = \"20GiB\"\nmemory_cache_size = \"1MB\"\n",
        )
        .unwrap();
        let c = Config::resolve(ServeArgs {
            config: Some(path.clone()),
            ..Default::default()
        })
        .unwrap();
        let StorageChoice::S3(s3) = c.storage else {
            panic!("not S3")
        };
        assert_eq!(s3.cache_dir, Some(dir.path().join("cache")));
        assert_eq!(s3.cache_max_size, 20 << 30);
        assert_eq!(s3.memory_cache_size, 1_000_000);

        std::fs::write(
            &path,
            "[storage]\nbackend = \"s3\"\n[storage.s3]\nbucket = \"b\"\ncache_max_size = \"lots\"\n",
        )
        .unwrap();
        let err = Config::resolve(ServeArgs {
            config: Some(path),
            ..Default::default()
        })
        .unwrap_err();
        assert!(err.to_string().contains("lots"), "{err}");
    }

    #[test]
    fn flags_override_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("pier.toml");
        std::fs::write(
            &path,
            "listen = \"127.0.0.1:7000\"\nroot = \"/data\"\nupload_idle_timeout = \"5m\"\nh2c = true\n[tls]\ncert = \"c.pem\"\nkey = \"k.pem\"\n",
        )
        .unwrap();
        let args = ServeArgs {
            config: Some(path.clone()),
            root: Some("/override".into()),
            ..Default::default()
        };
        let c = Config::resolve(args).unwrap();
        assert_eq!(c.listen, "127.0.0.1:7000".parse().unwrap());
        assert_eq!(c.root, PathBuf::from("/override"));
        assert_eq!(c.upload_idle_timeout, Duration::from_secs(300));
        assert!(c.h2c);
        assert_eq!(c.tls.unwrap().cert, PathBuf::from("c.pem"));

        std::fs::write(&path, "listne = \"x\"\n").unwrap();
        let err = Config::resolve(ServeArgs {
            config: Some(path),
            ..Default::default()
        })
        .unwrap_err();
        assert!(err.to_string().contains("listne"), "{err}");
    }

    #[test]
    fn upstreams_from_flags_and_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("pier.toml");
        std::fs::write(
            &path,
            "local_namespaces = [\"team\"]\n[[upstreams]]\nname = \"ghcr\"\nurl = \"https://ghcr.io\"\ntag_ttl = \"5m\"\nallow_private = true\n[[upstreams]]\nurl = \"https://registry-1.docker.io/\"\nusername = \"u\"\npassword = \"p\"\n",
        )
        .unwrap();
        let c = Config::resolve(ServeArgs {
            config: Some(path),
            upstreams: vec!["http://127.0.0.1:5000".into()],
            ..Default::default()
        })
        .unwrap();
        let names: Vec<&str> = c.upstreams.iter().map(|u| u.name.as_str()).collect();
        assert_eq!(names, ["127.0.0.1-5000", "ghcr", "docker.io"]);
        assert_eq!(c.upstreams[0].namespace, "127.0.0.1:5000");
        assert_eq!(c.upstreams[1].tag_ttl, Duration::from_secs(300));
        assert!(c.upstreams[2].docker_hub && c.upstreams[2].namespace == "docker.io");
        assert_eq!(c.upstreams[2].url, "https://registry-1.docker.io");
        assert_eq!(c.upstreams[2].credentials, Some(("u".into(), "p".into())));
        let private: Vec<bool> = c.upstreams.iter().map(|u| u.allow_private).collect();
        assert_eq!(private, [false, true, false]);
        assert_eq!(c.local_namespaces, ["team"]);
        assert_eq!(c.default_upstream, Some(0));

        let bad = Config::resolve(ServeArgs {
            upstreams: vec!["ftp://x".into()],
            ..Default::default()
        });
        assert!(bad.unwrap_err().to_string().contains("ftp://x"));
    }

    #[test]
    fn trusted_proxies_and_throttle_settings() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("pier.toml");
        std::fs::write(
            &path,
            "trusted_proxies = [\"127.0.0.1\", \"10.0.0.0/8\"]\n[auth]\n[auth.throttle]\naccount_failures = 3\nmax_backoff = \"1m\"\npassword_checks = 4\nrevocations_per_minute = 0\n",
        )
        .unwrap();
        let c = Config::resolve(ServeArgs {
            config: Some(path.clone()),
            ..Default::default()
        })
        .unwrap();
        assert_eq!(
            c.trusted_proxies,
            pier_http::TrustedProxies::parse(&["127.0.0.1", "10.0.0.0/8"]).unwrap()
        );
        let t = c.auth.unwrap().throttle;
        assert_eq!(t.login.throttle.account_failures, 3);
        assert_eq!(t.login.throttle.address_failures, 30, "default");
        assert_eq!(t.login.throttle.max_backoff, Duration::from_secs(60));
        assert_eq!(t.login.password_checks, 4);
        assert_eq!(t.revocations_per_minute, 0);

        let d = Config::resolve(ServeArgs::default()).unwrap();
        assert!(
            d.trusted_proxies.is_empty(),
            "no proxy is trusted by default"
        );

        std::fs::write(&path, "trusted_proxies = [\"lb.example\"]\n").unwrap();
        let err = Config::resolve(ServeArgs {
            config: Some(path),
            ..Default::default()
        })
        .unwrap_err();
        assert!(err.to_string().contains("lb.example"), "{err}");
    }

    #[test]
    fn half_tls_is_an_error() {
        let err = Config::resolve(ServeArgs {
            tls_cert: Some("c.pem".into()),
            ..Default::default()
        })
        .unwrap_err();
        assert!(err.to_string().contains("--tls-key"));
    }
}
