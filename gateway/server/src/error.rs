use std::path::PathBuf;

/// Why the `pier` binary could not do what it was asked; printed for the operator.
#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    #[error("configuration: {0}")]
    Config(String),
    #[error("cannot listen on {addr}")]
    Bind {
        addr: std::net::SocketAddr,
        #[source]
        source: std::io::Error,
    },
    #[error("TLS setup with {}: {reason}", path.display())]
    Tls { path: PathBuf, reason: String },
    #[error("storage")]
    Storage(#[from] pier_storage::StorageError),
    #[error("garbage collection")]
    Core(#[from] pier_core::CoreError),
    #[error("{0}")]
    Io(#[from] std::io::Error),
    #[error("registry request failed")]
    Upstream(#[from] pier_upstream::UpstreamError),
    #[error("access control")]
    Auth(#[from] pier_auth::AuthError),
    #[error("plugin")]
    Plugin(#[from] pier_plugin_host::PluginError),
}
