//! Builds access control from `[auth]` and `[[plugins]]`, and reloads plugins (SIGHUP,
//! the admin endpoint, file changes).

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use pier_auth::authn::Authenticator;
use pier_auth::robots::RobotFile;
use pier_auth::token::{SigningKey, TokenService, TokenSettings, TrustedIssuer};
use pier_auth::users::UserFile;
use pier_auth::{AllowAll, Authorizer};
use pier_http::AccessControl;
use pier_plugin_host::{Grants, PluginAdmission, PluginAuthorizer, PluginSettings, Runtime};

use crate::config::{Config, PluginEntry};
use crate::error::ServerError;

/// Loads the notifier and replicator plugins and starts events and replication
/// (`pier-dispatch`); `None` when no such plugin is configured.
pub async fn start_events(
    config: &Config,
    registry: Arc<pier_core::Registry>,
    shared: Option<&pier_cluster::Shared>,
) -> Result<Option<Arc<pier_dispatch::EventsRuntime>>, ServerError> {
    use crate::config::Hook;
    use pier_plugin_host::{PluginNotifier, PluginReplicator};
    let entries: Vec<_> = config
        .plugins
        .iter()
        .filter(|p| matches!(p.hook, Hook::Notifier | Hook::Replicator))
        .collect();
    if entries.is_empty() {
        return Ok(None);
    }
    let runtime = runtime(&config.root)?;
    let mut notifiers = Vec::new();
    let mut replicators = Vec::new();
    for e in entries {
        let settings = plugin_settings(e, &config.root, shared)?;
        match e.hook {
            Hook::Notifier => notifiers.push((
                e.name.clone(),
                Arc::new(PluginNotifier::load(runtime.clone(), settings).await?),
            )),
            Hook::Replicator => replicators.push((
                e.name.clone(),
                Arc::new(PluginReplicator::load(runtime.clone(), settings).await?),
            )),
            Hook::Authorizer | Hook::Admission | Hook::Retention => {}
        }
    }
    let setup = pier_dispatch::Setup {
        notifiers,
        replicators,
        events: config.events.clone(),
        replication: config.replication.clone(),
        listen: config.listen.to_string(),
    };
    Ok(Some(pier_dispatch::start(setup, registry, shared).await?))
}

/// Loads the admission plugins, in configuration order; `None` when there is none.
pub async fn admission(
    config: &Config,
    shared: Option<&pier_cluster::Shared>,
) -> Result<Vec<(PluginEntry, Arc<PluginAdmission>)>, ServerError> {
    let entries: Vec<_> = config
        .plugins
        .iter()
        .filter(|p| p.hook == crate::config::Hook::Admission)
        .collect();
    let mut out = Vec::new();
    if entries.is_empty() {
        return Ok(out);
    }
    let rt = runtime(&config.root)?;
    for e in entries {
        let settings = plugin_settings(e, &config.root, shared)?;
        out.push((
            e.clone(),
            Arc::new(PluginAdmission::load(rt.clone(), settings).await?),
        ));
    }
    Ok(out)
}

/// Loads the retention plugin (at most one), with its schedule.
pub async fn retention(
    config: &Config,
    shared: Option<&pier_cluster::Shared>,
) -> Result<Option<(PluginEntry, Arc<pier_plugin_host::PluginRetention>)>, ServerError> {
    let entries: Vec<_> = config
        .plugins
        .iter()
        .filter(|p| p.hook == crate::config::Hook::Retention)
        .collect();
    let entry = match entries.as_slice() {
        [] => return Ok(None),
        [e] => *e,
        _ => {
            return Err(ServerError::Config(
                "one retention plugin at a time is supported".into(),
            ));
        }
    };
    let settings = plugin_settings(entry, &config.root, shared)?;
    let p = pier_plugin_host::PluginRetention::load(runtime(&config.root)?, settings).await?;
    Ok(Some((entry.clone(), Arc::new(p))))
}

/// The loaded plugins, for reloads and metrics.
#[derive(Default)]
pub struct Plugins {
    pub authorizers: Vec<(PluginEntry, Arc<PluginAuthorizer>)>,
    pub admissions: Vec<(PluginEntry, Arc<PluginAdmission>)>,
    pub retention: Option<(PluginEntry, Arc<pier_plugin_host::PluginRetention>)>,
    /// The config file, read again on reload so `[plugins.config]` edits apply.
    config: Option<Config>,
    config_file: Option<std::path::PathBuf>,
    /// `[redis]`: plugins' `kv` is shared (reloads keep it so).
    shared: Option<pier_cluster::Shared>,
}

impl Plugins {
    /// The settings a reload should use: the config file's current entry for the
    /// plugin when the file still parses, else the ones it was started with.
    fn fresh_settings(&self, entry: &PluginEntry) -> Result<PluginSettings, ServerError> {
        let Some(started) = &self.config else {
            return plugin_settings(entry, Path::new("."), self.shared.as_ref());
        };
        if let Some(file) = &self.config_file {
            let args = crate::config::ServeArgs {
                config: Some(file.clone()),
                root: Some(started.root.clone()),
                ..Default::default()
            };
            let now = Config::resolve(args)?;
            if let Some(e) = now.plugins.iter().find(|p| p.name == entry.name) {
                return plugin_settings(e, &started.root, self.shared.as_ref());
            }
        }
        plugin_settings(entry, &started.root, self.shared.as_ref())
    }
}

#[async_trait::async_trait]
impl pier_admin::Plugins for Plugins {
    async fn reload_all(&self) -> Vec<String> {
        let mut out = Vec::new();
        for (entry, p) in &self.authorizers {
            let settings = self.fresh_settings(entry);
            out.push(reloaded(
                entry,
                p.reload_with_settings(settings).await,
                p.digest(),
            ));
        }
        for (entry, p) in &self.admissions {
            let settings = self.fresh_settings(entry);
            out.push(reloaded(
                entry,
                p.reload_with_settings(settings).await,
                p.digest(),
            ));
        }
        if let Some((entry, p)) = &self.retention {
            let settings = self.fresh_settings(entry);
            out.push(reloaded(
                entry,
                p.reload_with_settings(settings).await,
                p.digest(),
            ));
        }
        out
    }

    fn retention(&self) -> Option<(String, Arc<pier_plugin_host::PluginRetention>)> {
        self.retention
            .as_ref()
            .map(|(e, p)| (e.name.clone(), p.clone()))
    }

    fn admissions(&self) -> Vec<(String, Arc<PluginAdmission>)> {
        self.admissions
            .iter()
            .map(|(e, p)| (e.name.clone(), p.clone()))
            .collect()
    }

    fn authorizers(&self) -> Vec<(String, Arc<PluginAuthorizer>)> {
        self.authorizers
            .iter()
            .map(|(e, p)| (e.name.clone(), p.clone()))
            .collect()
    }
}

/// A plugin type that reloads (authorizers, admission plugins).
trait Reload {
    async fn reload_with_settings(
        &self,
        settings: Result<PluginSettings, ServerError>,
    ) -> Result<bool, String>;
    async fn reload_file(&self) -> Result<bool, String>;
}

macro_rules! reloads {
    ($t:ty) => {
        impl Reload for $t {
            async fn reload_with_settings(
                &self,
                settings: Result<PluginSettings, ServerError>,
            ) -> Result<bool, String> {
                match settings {
                    Ok(s) => self.reload_with(s).await.map_err(|e| e.to_string()),
                    Err(e) => Err(format!(
                        "{e}: {}",
                        std::error::Error::source(&e)
                            .map(|s| s.to_string())
                            .unwrap_or_default()
                    )),
                }
            }
            async fn reload_file(&self) -> Result<bool, String> {
                self.reload().await.map_err(|e| e.to_string())
            }
        }
    };
}
reloads!(PluginAuthorizer);
reloads!(PluginAdmission);
reloads!(pier_plugin_host::PluginRetention);

/// One line of a reload's report.
fn reloaded(entry: &PluginEntry, r: Result<bool, String>, digest: String) -> String {
    match r {
        Ok(true) => format!("{}: reloaded, now {digest}", entry.name),
        Ok(false) => format!("{}: unchanged ({digest})", entry.name),
        Err(e) => {
            tracing::error!(plugin = %entry.name, error = %e, "plugin reload failed; the previous version keeps running");
            format!("{}: reload failed, previous version kept: {e}", entry.name)
        }
    }
}

impl Plugins {
    /// Polls the files of plugins with `watch` and reloads one when it changed.
    pub async fn watch(self: Arc<Self>) {
        let stamp = |p: &Path| {
            std::fs::metadata(p)
                .ok()
                .map(|m| (m.modified().unwrap_or(SystemTime::UNIX_EPOCH), m.len()))
        };
        let mut seen: Vec<_> = (self.authorizers.iter().map(|(e, _)| stamp(&e.path)))
            .chain(self.admissions.iter().map(|(e, _)| stamp(&e.path)))
            .collect();
        loop {
            tokio::time::sleep(Duration::from_secs(1)).await;
            let n = self.authorizers.len();
            for (i, last) in seen.iter_mut().enumerate() {
                let entry = match i < n {
                    true => &self.authorizers[i].0,
                    false => &self.admissions[i - n].0,
                };
                if !entry.watch {
                    continue;
                }
                let now = stamp(&entry.path);
                if now != *last && now.is_some() {
                    *last = now;
                    let r = match i < n {
                        true => self.authorizers[i].1.reload_file().await,
                        false => self.admissions[i - n].1.reload_file().await,
                    };
                    if let Err(e) = r {
                        tracing::error!(plugin = %entry.name, error = %e, "plugin file changed but the new version failed to load; the previous version keeps running");
                    }
                }
            }
        }
    }
}

/// `token-key.pem` -> `token-key.pub.pem`.
pub fn public_key_path(key: &Path) -> std::path::PathBuf {
    let stem = key
        .file_stem()
        .and_then(|s| s.to_str())
        .unwrap_or("token-key");
    key.with_file_name(format!("{stem}.pub.pem"))
}

/// How `entry` runs; with `shared` (`[redis]`), its `kv` is in Redis, the same on every
/// node.
pub fn plugin_settings(
    entry: &PluginEntry,
    root: &Path,
    shared: Option<&pier_cluster::Shared>,
) -> Result<PluginSettings, ServerError> {
    let mut s = PluginSettings::new(
        &entry.name,
        entry.path.clone(),
        root.join("pier")
            .join("plugins")
            .join(&entry.name)
            .join("kv"),
    );
    s.timeout = entry.timeout;
    s.memory_limit = entry.memory_limit;
    s.max_instances = entry.max_instances;
    s.grants = Grants::parse(&entry.grants).map_err(ServerError::Config)?;
    s.config = entry.config.clone();
    s.allowed_hosts = entry.allowed_hosts.clone();
    s.ldap = entry.ldap.clone();
    s.repositories = entry.repositories.clone();
    if let Some(shared) = shared {
        s.kv = pier_plugin_host::KvPlace::Shared(Arc::new(pier_cluster::adapters::RedisPluginKv {
            shared: shared.clone(),
            plugin: entry.name.clone(),
        }));
    }
    Ok(s)
}

/// Compiles every configured plugin into the compile cache (`ROOT/pier/plugin-cache`),
/// so that loading them afterwards only reads the cache. Problems are left to the load
/// that follows, which reports them with the plugin's name and configuration.
pub async fn precompile(config: &crate::config::Config) {
    if config.plugins.is_empty() {
        return;
    }
    #[cfg(feature = "failpoints")]
    if let Some(ms) = fail::eval("plugin-precompile", |ms| {
        ms.and_then(|m| m.parse::<u64>().ok()).unwrap_or(0)
    }) {
        // `FAILPOINTS=plugin-precompile=return(MS)`: a compile that takes MS longer.
        tokio::time::sleep(Duration::from_millis(ms)).await;
    }
    let Ok(rt) = runtime(&config.root) else {
        return;
    };
    for p in &config.plugins {
        let t = std::time::Instant::now();
        match rt.precompile(&p.name, &p.path).await {
            Ok(true) => tracing::info!(
                plugin = %p.name,
                seconds = t.elapsed().as_secs_f64(),
                "plugin compiled into the compile cache"
            ),
            Ok(false) => {}
            Err(e) => tracing::debug!(plugin = %p.name, error = %e, "precompiling failed"),
        }
    }
}

pub fn runtime(root: &Path) -> Result<Arc<Runtime>, ServerError> {
    Ok(Arc::new(Runtime::new(
        &root.join("pier").join("plugin-cache"),
    )?))
}

/// Access control, when `[auth]` or an authorizer plugin is configured.
pub async fn build(
    config: &Config,
    shared: Option<&pier_cluster::Shared>,
    admissions: Vec<(PluginEntry, Arc<PluginAdmission>)>,
    retention: Option<(PluginEntry, Arc<pier_plugin_host::PluginRetention>)>,
) -> Result<(Option<Arc<AccessControl>>, Arc<Plugins>), ServerError> {
    let mut plugins = Plugins {
        config: Some(config.clone()),
        config_file: config.config_file.clone(),
        shared: shared.cloned(),
        admissions,
        retention,
        ..Default::default()
    };
    let Some(auth) = &config.auth else {
        return Ok((None, Arc::new(plugins)));
    };
    let authorizers: Vec<&PluginEntry> = config
        .plugins
        .iter()
        .filter(|p| p.hook == crate::config::Hook::Authorizer)
        .collect();
    if authorizers.len() > 1 {
        return Err(ServerError::Config(
            "one authorizer plugin at a time is supported".into(),
        ));
    }
    let authorizer: Arc<dyn Authorizer> = match authorizers.first().copied() {
        Some(entry) => {
            let rt = runtime(&config.root)?;
            let p = Arc::new(
                PluginAuthorizer::load(rt, plugin_settings(entry, &config.root, shared)?).await?,
            );
            plugins.authorizers.push((entry.clone(), p.clone()));
            p
        }
        None => {
            tracing::warn!(
                "[auth] without an authorizer plugin: every authenticated user may do everything, anonymous clients nothing"
            );
            Arc::new(AllowAll)
        }
    };
    let key = SigningKey::load_or_generate(&auth.token_key)?;
    // The public half beside it, for other gateways' `[[auth.trusted_issuers]]`.
    let public = public_key_path(&auth.token_key);
    if std::fs::read_to_string(&public).ok().as_deref() != Some(key.public_key_pem().as_str()) {
        std::fs::write(&public, key.public_key_pem())
            .map_err(|e| ServerError::Config(format!("writing {}: {e}", public.display())))?;
    }
    let mut trusted = Vec::new();
    for (issuer, path) in &auth.trusted_issuers {
        let pem = std::fs::read(path).map_err(|e| {
            ServerError::Config(format!(
                "trusted issuer {issuer:?}: reading {}: {e}",
                path.display()
            ))
        })?;
        trusted.push(TrustedIssuer::from_pem(issuer, &pem)?);
    }
    let tokens = Arc::new(TokenService::new(
        key,
        TokenSettings {
            issuer: auth.issuer.clone(),
            service: auth.service.clone(),
            ttl: auth.token_ttl,
            refresh_ttl: auth.refresh_ttl,
        },
        trusted,
    ));
    let authn = Arc::new(Authenticator::with_limits(
        UserFile::open(&auth.users_file)?,
        RobotFile::open(&auth.robots_file)?,
        auth.throttle.login,
    )?);
    tracing::info!(
        service = %auth.service,
        users = %auth.users_file.display(),
        plugin = authorizers.first().map(|p| p.name.as_str()).unwrap_or("none"),
        "access control on"
    );
    let revocations: Arc<dyn pier_auth::revoke::Revocations> = match shared {
        Some(s) => Arc::new(pier_cluster::adapters::RedisRevocations::new(s.clone())),
        None => Arc::new(pier_auth::revoke::LocalRevocations::open(
            &config.root.join("pier").join("revoked-tokens"),
        )?),
    };
    let control = AccessControl {
        authorizer,
        authn,
        tokens,
        revocations,
        realm: auth.realm.clone(),
        trusted_proxies: config.trusted_proxies.clone(),
        denials: pier_http::auth::Denials::default(),
        revoke_limit: pier_auth::throttle::RateLimit::per_minute(
            auth.throttle.revocations_per_minute,
            100_000,
        ),
    };
    Ok((Some(Arc::new(control)), Arc::new(plugins)))
}
