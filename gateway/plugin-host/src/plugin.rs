//! A loaded plugin: compiled component, `InstancePre`, warm instances, limits.

use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use pier_auth::PolicyFailure;
use tokio::sync::Semaphore;
use wasmtime::component::ResourceTable;
use wasmtime::{Store, StoreLimitsBuilder, Trap};
use wasmtime_wasi::WasiCtx;

use crate::directory::{Directory, LdapDirectory};
use crate::error::{PluginError, PluginFailure};
use crate::host::{Capabilities, Grants, HostState};
use crate::kv::KvPlace;
use crate::metrics::PluginMetrics;
use crate::runtime::{Runtime, TICK};
use crate::world::{Bindings, Pre, World};

/// How one plugin runs.
#[derive(Debug, Clone, PartialEq)]
pub struct PluginSettings {
    pub name: String,
    pub path: PathBuf,
    /// Deadline of one call (the instance is interrupted and replaced after it).
    pub timeout: Duration,
    /// Linear memory cap of one instance.
    pub memory_limit: usize,
    /// Instances (and so concurrent calls) at most; callers beyond wait up to `timeout`.
    pub max_instances: usize,
    pub grants: Grants,
    /// The `config` table, as a JSON object.
    pub config: serde_json::Map<String, serde_json::Value>,
    /// Where the `kv` capability keeps this plugin's keys.
    pub kv: KvPlace,
    /// `host:port`s the `http` capability may reach.
    pub allowed_hosts: Vec<String>,
    /// The directory of the `ldap` capability.
    pub ldap: Option<LdapDirectory>,
    /// The repositories an admission plugin governs (`*`/`?` patterns); empty: all.
    pub repositories: Vec<String>,
}

impl PluginSettings {
    /// Defaults: 100 ms deadline, 32 MiB memory, 16 instances, nothing granted, `kv` in
    /// `kv_dir` on this node.
    pub fn new(name: &str, path: PathBuf, kv_dir: PathBuf) -> PluginSettings {
        PluginSettings {
            name: name.to_owned(),
            path,
            timeout: Duration::from_millis(100),
            memory_limit: 32 << 20,
            max_instances: 16,
            grants: Grants::default(),
            config: serde_json::Map::new(),
            kv: KvPlace::Dir(kv_dir),
            allowed_hosts: Vec::new(),
            ldap: None,
            repositories: Vec::new(),
        }
    }
}

/// Epoch ticks for a deadline.
fn ticks(deadline: Duration) -> u64 {
    (deadline.as_micros() / TICK.as_micros()).max(1) as u64 + 1
}

pub(crate) struct Warm {
    store: Store<HostState>,
    bindings: Bindings,
    /// The plugin's [`Plugin::recycle`] generation it was made in.
    generation: u64,
}

/// One version of a loaded plugin, as one world (an authorizer unless loaded otherwise).
pub struct Plugin {
    pub(crate) settings: PluginSettings,
    digest: String,
    world: World,
    pre: Pre,
    pub(crate) caps: Arc<Capabilities>,
    pool: Mutex<Vec<Warm>>,
    /// Bumped by [`Plugin::recycle`]: instances of older generations are dropped.
    generation: AtomicU64,
    permits: Semaphore,
    engine: wasmtime::Engine,
    pub(crate) metrics: Arc<PluginMetrics>,
}

impl Plugin {
    /// Compiles (or loads from the cache), links as an authorizer, and instantiates
    /// once to prove the component starts under its limits.
    pub async fn load(
        runtime: &Runtime,
        settings: PluginSettings,
        metrics: Arc<PluginMetrics>,
    ) -> Result<Plugin, PluginError> {
        Plugin::load_world(runtime, World::Authorizer, settings, metrics).await
    }

    /// [`load`](Self::load) as any world.
    pub(crate) async fn load_world(
        runtime: &Runtime,
        world_kind: World,
        settings: PluginSettings,
        metrics: Arc<PluginMetrics>,
    ) -> Result<Plugin, PluginError> {
        let (component, digest) = runtime
            .compile_async(&settings.name, &settings.path)
            .await?;
        let world = |message: String| PluginError::World {
            name: settings.name.clone(),
            path: settings.path.clone(),
            world: world_kind.as_str(),
            message,
        };
        let pre = runtime
            .linker
            .instantiate_pre(&component)
            .map_err(|e| world(format!("{e:#}")))?;
        let pre = Pre::new(world_kind, pre).map_err(|e| world(format!("{e:#}")))?;
        let ldap = settings
            .ldap
            .as_ref()
            .map(Directory::new)
            .transpose()
            .map_err(|message| PluginError::Ldap {
                name: settings.name.clone(),
                message,
            })?;
        let caps = Arc::new(Capabilities {
            plugin: settings.name.clone(),
            grants: settings.grants.clone(),
            config: settings.config.clone(),
            kv: settings.kv.clone(),
            allowed_hosts: settings.allowed_hosts.clone(),
            http: runtime.http.clone(),
            ldap,
            io_timeout: settings.timeout,
        });
        let plugin = Plugin {
            permits: Semaphore::new(settings.max_instances.max(1)),
            settings,
            digest,
            world: world_kind,
            pre,
            caps,
            pool: Mutex::new(Vec::new()),
            generation: AtomicU64::new(0),
            engine: runtime.engine.clone(),
            metrics,
        };
        let warm = plugin
            .instantiate()
            .await
            .map_err(|e| PluginError::Invalid {
                name: plugin.settings.name.clone(),
                path: plugin.settings.path.clone(),
                message: format!("could not start an instance: {}", e.message),
            })?;
        plugin.put_back(warm);
        Ok(plugin)
    }

    pub fn name(&self) -> &str {
        &self.settings.name
    }

    /// sha256 of the component file.
    pub fn digest(&self) -> &str {
        &self.digest
    }

    /// The world it was loaded as.
    pub fn world(&self) -> World {
        self.world
    }

    /// Whether it was loaded as an authorizer that also exports `projects`.
    pub fn manages_projects(&self) -> bool {
        self.pre.manages_projects()
    }

    /// Whether it was loaded as a replicator that also exports `rules`.
    pub fn manages_rules(&self) -> bool {
        self.pre.manages_rules()
    }

    /// Drops every warm instance, and instances in use when they return: the next
    /// calls start fresh ones (after a change to state instances remember).
    pub(crate) fn recycle(&self) {
        self.generation.fetch_add(1, Ordering::SeqCst);
        if let Ok(mut p) = self.pool.lock() {
            p.clear();
        }
    }

    pub(crate) fn failure(&self, kind: PolicyFailure, message: String) -> PluginFailure {
        self.metrics.error(kind);
        PluginFailure {
            plugin: self.settings.name.clone(),
            kind,
            message,
        }
    }

    async fn instantiate(&self) -> Result<Warm, PluginFailure> {
        let limits = StoreLimitsBuilder::new()
            .memory_size(self.settings.memory_limit)
            .table_elements(100_000)
            .instances(64)
            .tables(64)
            .memories(16)
            .trap_on_grow_failure(true)
            .build();
        let state = HostState {
            wasi: WasiCtx::builder().build(),
            table: ResourceTable::new(),
            limits,
            caps: self.caps.clone(),
            content: None,
        };
        let generation = self.generation.load(Ordering::SeqCst);
        let mut store = Store::new(&self.engine, state);
        store.limiter(|s| &mut s.limits);
        store.set_epoch_deadline(self.deadline_ticks());
        let bindings = self
            .pre
            .instantiate(&mut store)
            .await
            .map_err(|e| self.classify(e))?;
        self.metrics.instance_created();
        Ok(Warm {
            store,
            bindings,
            generation,
        })
    }

    fn deadline_ticks(&self) -> u64 {
        ticks(self.settings.timeout)
    }

    fn put_back(&self, warm: Warm) {
        if warm.generation != self.generation.load(Ordering::SeqCst) {
            return;
        }
        if let Ok(mut p) = self.pool.lock() {
            p.push(warm);
        }
    }

    /// Runs `call` on a warm instance under the deadline; an instance that failed in
    /// any way is dropped (a fresh one is made for the next call).
    pub(crate) async fn with_instance<R>(
        &self,
        call: impl AsyncFnOnce(&Bindings, &mut Store<HostState>) -> wasmtime::Result<R>,
    ) -> Result<R, PluginFailure> {
        self.with_instance_for(self.settings.timeout, call).await
    }

    /// [`with_instance`](Self::with_instance) with another deadline for the call (e.g.
    /// administrative calls that write the plugin's `kv`).
    pub(crate) async fn with_instance_for<R>(
        &self,
        deadline: Duration,
        call: impl AsyncFnOnce(&Bindings, &mut Store<HostState>) -> wasmtime::Result<R>,
    ) -> Result<R, PluginFailure> {
        let _permit = match self.permits.try_acquire() {
            Ok(p) => p,
            Err(_) => {
                match tokio::time::timeout(self.settings.timeout, self.permits.acquire()).await {
                    Ok(Ok(p)) => p,
                    _ => {
                        return Err(self.failure(
                            PolicyFailure::Overloaded,
                            format!(
                                "all {} instances busy for {:?}",
                                self.settings.max_instances, self.settings.timeout
                            ),
                        ));
                    }
                }
            }
        };
        let pooled = self.pool.lock().ok().and_then(|mut p| p.pop());
        let mut warm = match pooled {
            Some(w) => w,
            None => self.instantiate().await?,
        };
        let start = Instant::now();
        warm.store.set_epoch_deadline(ticks(deadline));
        let result = call(&warm.bindings, &mut warm.store).await;
        self.metrics.call(start.elapsed());
        match result {
            Ok(r) => {
                self.put_back(warm);
                Ok(r)
            }
            Err(e) => Err(self.classify(e)),
        }
    }

    fn classify(&self, e: wasmtime::Error) -> PluginFailure {
        let text = format!("{e:#}");
        let (kind, message) = match e.downcast_ref::<Trap>() {
            Some(Trap::Interrupt) => (
                PolicyFailure::Timeout,
                format!("ran past its {:?} deadline", self.settings.timeout),
            ),
            Some(Trap::StackOverflow) => (PolicyFailure::Trap, "stack overflow".to_owned()),
            Some(t) => (PolicyFailure::Trap, format!("trapped: {t}")),
            None if text.contains("growing memory") => (
                PolicyFailure::OutOfMemory,
                format!(
                    "exceeded its {} byte memory cap",
                    self.settings.memory_limit
                ),
            ),
            None => (PolicyFailure::InvalidResult, text.clone()),
        };
        tracing::error!(plugin = %self.settings.name, kind = kind.as_str(), detail = %text, "plugin call failed; instance replaced");
        self.failure(kind, message)
    }
}
