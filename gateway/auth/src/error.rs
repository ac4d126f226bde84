use std::path::PathBuf;

/// Everything this crate can fail with; `pier-http` maps it to the wire.
#[derive(Debug, thiserror::Error)]
pub enum AuthError {
    #[error("reading {path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{path}:{line}: {message}")]
    Format {
        path: PathBuf,
        line: usize,
        message: String,
    },
    #[error("invalid token: {0}")]
    InvalidToken(String),
    #[error("token expired")]
    TokenExpired,
    #[error("token key: {0}")]
    Key(String),
    #[error("invalid scope {scope:?}: {message}")]
    Scope { scope: String, message: String },
    #[error("{0}")]
    Invalid(String),
    /// The user or robot named does not exist.
    #[error("{0}")]
    NotFound(String),
    /// The user or robot to create exists already.
    #[error("{0}")]
    Exists(String),
    /// Too many failed logins (see [`crate::throttle`]): refused without checking the
    /// password. Retry after `retry_after`.
    #[error("too many failed logins; retry in {} s", retry_after.as_secs().max(1))]
    Throttled { retry_after: std::time::Duration },
    /// A store the operation needs is unreachable (Redis down), or the gateway is too busy
    /// to do it now (every password check slot taken).
    #[error("{0}")]
    Unavailable(String),
    #[error(transparent)]
    Policy(#[from] crate::PolicyError),
}

impl AuthError {
    pub(crate) fn io(path: &std::path::Path, source: std::io::Error) -> AuthError {
        AuthError::Io {
            path: path.to_owned(),
            source,
        }
    }
}
