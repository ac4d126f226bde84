use std::path::PathBuf;

/// Why a plugin could not be loaded or checked. (Failures of a call are
/// [`pier_auth::PolicyError`]s.)
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
    #[error("plugin runtime: {0}")]
    Runtime(String),
}
