use std::time::Duration;

use redis::{ErrorKind, RedisError, ServerErrorKind};

/// Everything that can go wrong talking to the shared state.
#[derive(Debug, thiserror::Error)]
pub enum ClusterError {
    /// Redis could not be reached or did not answer within the operation timeout, or is
    /// between masters (failover, cluster resharding, loading). Transient: callers answer
    /// `503 Service Unavailable` (with `Retry-After`) and may retry.
    #[error("shared state (redis) unavailable during {op}")]
    Unavailable {
        /// The operation that failed.
        op: &'static str,
        /// Timeout or the connection error.
        #[source]
        source: UnavailableCause,
    },
    /// Redis answered with an error that retrying will not fix (a bug on our side: wrong
    /// type, script error, unexpected reply). Callers answer 500.
    #[error("shared state (redis) refused {op}")]
    Redis {
        /// The operation that failed.
        op: &'static str,
        /// Redis's answer.
        #[source]
        source: RedisError,
    },
    /// The `[redis]` configuration cannot be used.
    #[error("invalid redis configuration: {0}")]
    Config(String),
    /// A stored record is not in the shape this crate writes (another program wrote the key).
    #[error("corrupt record at {key}: {reason}")]
    Corrupt {
        /// The key (or command) whose reply was unexpected.
        key: String,
        /// What was wrong with it.
        reason: &'static str,
    },
}

/// Why Redis was unavailable.
#[derive(Debug, thiserror::Error)]
pub enum UnavailableCause {
    /// No answer within the operation timeout.
    #[error("no answer within {0:?}")]
    TimedOut(Duration),
    /// Connection refused or lost, failover or resharding in progress, ...
    #[error(transparent)]
    Redis(RedisError),
}

impl ClusterError {
    /// True for the transient kind that maps to 503.
    pub fn is_unavailable(&self) -> bool {
        matches!(self, Self::Unavailable { .. })
    }

    /// True when a connection that used to work broke (its server died or failed over):
    /// a fresh connection may succeed at once.
    pub fn is_connection_dropped(&self) -> bool {
        matches!(
            self,
            Self::Unavailable {
                source: UnavailableCause::Redis(e),
                ..
            } if e.is_connection_dropped()
        )
    }

    pub(crate) fn timed_out(op: &'static str, after: Duration) -> Self {
        Self::Unavailable {
            op,
            source: UnavailableCause::TimedOut(after),
        }
    }

    pub(crate) fn from_redis(op: &'static str, err: RedisError) -> Self {
        if is_transient(&err) {
            Self::Unavailable {
                op,
                source: UnavailableCause::Redis(err),
            }
        } else {
            Self::Redis { op, source: err }
        }
    }
}

/// Errors about reaching Redis (or reaching the right node), as opposed to errors about
/// the request itself.
pub(crate) fn is_transient(err: &RedisError) -> bool {
    err.is_io_error()
        || err.is_connection_dropped()
        || err.is_timeout()
        || err.is_cluster_error()
        || err.is_unrecoverable_error()
        || matches!(
            err.kind(),
            ErrorKind::Server(
                ServerErrorKind::ReadOnly
                    | ServerErrorKind::MasterDown
                    | ServerErrorKind::BusyLoading
                    | ServerErrorKind::TryAgain
                    | ServerErrorKind::ClusterDown
            ) | ErrorKind::ClusterConnectionNotFound
                | ErrorKind::MasterNameNotFoundBySentinel
                | ErrorKind::NoValidReplicasFoundBySentinel
        )
}

/// Errors after which a cached connection to a Sentinel-resolved master must be dropped
/// and the master resolved again.
pub(crate) fn needs_new_master(err: &RedisError) -> bool {
    is_transient(err)
}
