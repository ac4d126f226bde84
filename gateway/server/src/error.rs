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
    #[error(transparent)]
    Tls(#[from] pier_http::tls::TlsError),
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

impl From<pier_dispatch::DispatchError> for ServerError {
    fn from(e: pier_dispatch::DispatchError) -> Self {
        match e {
            pier_dispatch::DispatchError::Start(m) => ServerError::Config(m),
            pier_dispatch::DispatchError::Io(e) => ServerError::Io(e),
        }
    }
}

impl From<pier_admin::AdminError> for ServerError {
    fn from(e: pier_admin::AdminError) -> Self {
        match e {
            pier_admin::AdminError::Failed(m) => ServerError::Config(m),
            pier_admin::AdminError::Io(e) => ServerError::Io(e),
            pier_admin::AdminError::Upstream(e) => ServerError::Upstream(e),
        }
    }
}

/// An error with its sources, on one line.
pub use pier_upstream::error_chain as chain;
