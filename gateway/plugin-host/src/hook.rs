//! The current version of a plugin loaded as one world, and hot reload: shared by
//! [`crate::PluginAuthorizer`], [`crate::PluginNotifier`] and [`crate::PluginReplicator`].

use std::sync::{Arc, OnceLock, RwLock};

use std::time::Duration;

use wasmtime::Store;

use crate::error::{PluginError, PluginFailure};
use crate::host::HostState;
use crate::metrics::PluginMetrics;
use crate::plugin::{Plugin, PluginSettings};
use crate::runtime::Runtime;
use crate::world::{Bindings, World};

/// Told the plugin's name after each change through its management export (projects,
/// rules): Pier's scale-out tells the other nodes, which recycle their instances.
pub type Announcer = Arc<dyn Fn(&str) + Send + Sync>;

pub(crate) struct Hook {
    /// The plugin's name (the same in every version).
    name: String,
    runtime: Arc<Runtime>,
    world: World,
    current: RwLock<Arc<Plugin>>,
    metrics: Arc<PluginMetrics>,
    announcer: OnceLock<Announcer>,
    /// Changes through the management export run one at a time.
    changes: tokio::sync::Mutex<()>,
    /// Bumped by every swap of versions (or settings).
    generation: std::sync::atomic::AtomicU64,
}

impl Hook {
    pub(crate) async fn load(
        runtime: Arc<Runtime>,
        world: World,
        settings: PluginSettings,
    ) -> Result<Hook, PluginError> {
        let metrics = Arc::new(PluginMetrics::new(&settings.name));
        let plugin = Plugin::load_world(&runtime, world, settings, metrics.clone()).await?;
        tracing::info!(
            plugin = plugin.name(),
            world = world.as_str(),
            digest = plugin.digest(),
            "plugin loaded"
        );
        Ok(Hook {
            name: plugin.name().to_owned(),
            runtime,
            world,
            current: RwLock::new(Arc::new(plugin)),
            metrics,
            announcer: OnceLock::new(),
            changes: tokio::sync::Mutex::new(()),
            generation: std::sync::atomic::AtomicU64::new(0),
        })
    }

    pub(crate) fn current(&self) -> Arc<Plugin> {
        match self.current.read() {
            Ok(c) => c.clone(),
            Err(p) => p.into_inner().clone(),
        }
    }

    pub(crate) fn metrics(&self) -> &Arc<PluginMetrics> {
        &self.metrics
    }

    pub(crate) fn set_announcer(&self, a: Announcer) {
        if self.announcer.set(a).is_err() {
            tracing::warn!(
                plugin = self.current().name(),
                "changes are already announced"
            );
        }
    }

    /// One call of a management export (projects, rules) of the current version; `None`
    /// when `has` says that version lacks it. It gets at least `least` (these calls read,
    /// write and sync the plugin's `kv`). A change runs alone, then replaces this node's
    /// instances and is announced (if an announcer is set), so every later call here and
    /// on the other nodes reads the plugin's state again.
    pub(crate) async fn manage<R>(
        &self,
        change: bool,
        least: Duration,
        has: impl Fn(&Plugin) -> bool,
        call: impl AsyncFnOnce(&Bindings, &mut Store<HostState>) -> wasmtime::Result<R>,
    ) -> Option<Result<R, PluginFailure>> {
        let _one_at_a_time = match change {
            true => Some(self.changes.lock().await),
            false => None,
        };
        let plugin = self.current();
        if !has(&plugin) {
            return None;
        }
        let r = plugin
            .with_instance_for(plugin.settings.timeout.max(least), call)
            .await;
        if change {
            plugin.recycle();
            if let Some(a) = self.announcer.get() {
                a(plugin.name());
            }
        }
        Some(r)
    }

    pub(crate) fn name(&self) -> &str {
        &self.name
    }

    /// Changes with every version swapped in.
    pub(crate) fn generation(&self) -> u64 {
        self.generation.load(std::sync::atomic::Ordering::SeqCst)
    }

    pub(crate) fn digest(&self) -> String {
        self.current().digest().to_owned()
    }

    pub(crate) async fn reload(&self) -> Result<bool, PluginError> {
        let settings = self.current().settings.clone();
        self.reload_with(settings).await
    }

    pub(crate) async fn reload_with(&self, settings: PluginSettings) -> Result<bool, PluginError> {
        let old = self.current();
        let same_settings = settings == old.settings;
        let plugin =
            Plugin::load_world(&self.runtime, self.world, settings, self.metrics.clone()).await?;
        if plugin.digest() == old.digest() && same_settings {
            return Ok(false);
        }
        tracing::info!(
            plugin = plugin.name(),
            world = self.world.as_str(),
            from = old.digest(),
            to = plugin.digest(),
            "plugin reloaded"
        );
        self.metrics.reloaded();
        match self.current.write() {
            Ok(mut c) => *c = Arc::new(plugin),
            Err(p) => *p.into_inner() = Arc::new(plugin),
        }
        self.generation
            .fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        Ok(true)
    }
}

/// Declares a plugin type for one world: a [`Hook`] with `load`, `metrics`, `digest`,
/// `reload`, `reload_with`, `announce_changes` and `recycle`; the type's own calls go in
/// a separate `impl`.
macro_rules! hook_type {
    ($(#[$doc:meta])* $name:ident, $world:expr) => {
        $(#[$doc])*
        pub struct $name {
            hook: $crate::hook::Hook,
        }

        impl $name {
            pub async fn load(
                runtime: std::sync::Arc<$crate::runtime::Runtime>,
                settings: $crate::plugin::PluginSettings,
            ) -> Result<$name, $crate::error::PluginError> {
                Ok($name {
                    hook: $crate::hook::Hook::load(runtime, $world, settings).await?,
                })
            }

            pub fn metrics(&self) -> &std::sync::Arc<$crate::metrics::PluginMetrics> {
                self.hook.metrics()
            }

            /// The loaded version's digest.
            pub fn digest(&self) -> String {
                self.hook.digest()
            }

            /// Loads the plugin file again; when its content changed, the new version
            /// takes the next calls while calls in flight finish on the old one. A
            /// version that fails to load leaves the current one in place. Returns
            /// whether a new version was swapped in.
            pub async fn reload(&self) -> Result<bool, $crate::error::PluginError> {
                self.hook.reload().await
            }

            /// Like [`reload`](Self::reload), with new settings (limits, grants,
            /// config); swaps when the file or the settings changed.
            pub async fn reload_with(
                &self,
                settings: $crate::plugin::PluginSettings,
            ) -> Result<bool, $crate::error::PluginError> {
                self.hook.reload_with(settings).await
            }

            /// Calls `announcer` with the plugin's name after each change through its
            /// management export (set once).
            pub fn announce_changes(&self, announcer: $crate::hook::Announcer) {
                self.hook.set_announcer(announcer)
            }

            /// Replaces every warm instance: the next calls read the plugin's state
            /// again (another node changed it in a shared `kv`).
            pub fn recycle(&self) {
                self.hook.current().recycle()
            }
        }
    };
}
pub(crate) use hook_type;
