use std::path::PathBuf;

use pier_auth::{PolicyError, PolicyFailure};

/// Why a plugin could not be loaded or checked. (Failures of a call are
/// [`PluginFailure`]s.)
#[derive(Debug, thiserror::Error)]
pub enum PluginError {
    #[error("plugin {name:?}: reading {path}: {source}")]
    Read {
        name: String,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("plugin {name:?} ({path}) is not a usable WebAssembly component: {message}")]
    Invalid {
        name: String,
        path: PathBuf,
        message: String,
    },
    #[error("plugin {name:?} ({path}) does not implement the pier:plugin/{world} world: {message}")]
    World {
        name: String,
        path: PathBuf,
        world: &'static str,
        message: String,
    },
    #[error("plugin {name:?}: the ldap directory: {message}")]
    Ldap { name: String, message: String },
    #[error("plugin runtime: {0}")]
    Runtime(String),
}

/// One call of a plugin that gave no usable answer. The instance that failed (trap,
/// timeout, memory) has been replaced; the next call gets a fresh one.
///
/// `kind` says why: `Trap`, `Timeout`, `OutOfMemory`, `Overloaded` (every instance
/// busy), `InvalidResult` (the host refused the answer), `Unavailable` (the plugin
/// answered with an error of its own: an `err(...)` of `notify`, `on-event`, `on-tick`,
/// or `unavailable` of `authenticate`).
#[derive(Debug, Clone, thiserror::Error)]
#[error("plugin {plugin:?} failed ({}): {message}", kind.as_str())]
pub struct PluginFailure {
    pub plugin: String,
    pub kind: PolicyFailure,
    pub message: String,
}

impl From<PluginFailure> for PolicyError {
    fn from(f: PluginFailure) -> PolicyError {
        PolicyError {
            plugin: f.plugin,
            kind: f.kind,
            message: f.message,
        }
    }
}
