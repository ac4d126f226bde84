//! Connections for the three modes, behind one `ConnectionLike`.

use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use redis::aio::{
    ConnectionLike, ConnectionManager, ConnectionManagerConfig, MultiplexedConnection,
};
use redis::cluster::ClusterClient;
use redis::cluster_async::ClusterConnection;
use redis::sentinel::{SentinelClient, SentinelServerType};
use redis::{AsyncConnectionConfig, Client, Cmd, Pipeline, RedisFuture, RedisResult, Value};

use crate::config::{RedisConfig, RedisMode, as_url};
use crate::error::{ClusterError, needs_new_master};

pub(crate) enum Backend {
    /// Reconnects by itself (with backoff) after a connection loss.
    Standalone {
        manager: ConnectionManager,
        client: Client,
    },
    Sentinel(Box<SentinelBackend>),
    /// Refreshes its slot map and reconnects to nodes by itself.
    Cluster {
        conn: ClusterConnection,
        nodes: Vec<String>,
        /// `ca_file`'s roots, for the pub/sub connections to single nodes.
        roots: Option<redis::TlsCertificates>,
    },
}

/// A connection to the current master, re-resolved through Sentinel after any error that
/// says the master is gone (connection lost, `READONLY` after a demotion, timeout).
pub(crate) struct SentinelBackend {
    client: tokio::sync::Mutex<SentinelClient>,
    current: Mutex<Option<(u64, MultiplexedConnection)>>,
    generation: AtomicU64,
    conn_config: AsyncConnectionConfig,
}

/// A cheap clone of whichever connection the mode uses.
#[derive(Clone)]
pub(crate) enum Conn {
    Manager(ConnectionManager),
    Multiplexed(MultiplexedConnection),
    Cluster(ClusterConnection),
}

impl ConnectionLike for Conn {
    fn req_packed_command<'a>(&'a mut self, cmd: &'a Cmd) -> RedisFuture<'a, Value> {
        match self {
            Conn::Manager(c) => c.req_packed_command(cmd),
            Conn::Multiplexed(c) => c.req_packed_command(cmd),
            Conn::Cluster(c) => c.req_packed_command(cmd),
        }
    }

    fn req_packed_commands<'a>(
        &'a mut self,
        pipeline: &'a Pipeline,
        offset: usize,
        count: usize,
    ) -> RedisFuture<'a, Vec<Value>> {
        match self {
            Conn::Manager(c) => c.req_packed_commands(pipeline, offset, count),
            Conn::Multiplexed(c) => c.req_packed_commands(pipeline, offset, count),
            Conn::Cluster(c) => c.req_packed_commands(pipeline, offset, count),
        }
    }

    fn get_db(&self) -> i64 {
        match self {
            Conn::Manager(c) => c.get_db(),
            Conn::Multiplexed(c) => c.get_db(),
            Conn::Cluster(c) => c.get_db(),
        }
    }
}

fn config_err(e: redis::RedisError) -> ClusterError {
    ClusterError::Config(e.to_string())
}

/// The roots `rediss://` servers are checked against: `ca_file`'s, or the system's.
fn tls_roots(cfg: &RedisConfig) -> Result<Option<redis::TlsCertificates>, ClusterError> {
    let Some(path) = &cfg.ca_file else {
        return Ok(None);
    };
    let pem = std::fs::read(path)
        .map_err(|e| ClusterError::Config(format!("redis ca_file {}: {e}", path.display())))?;
    Ok(Some(redis::TlsCertificates {
        client_tls: None,
        root_cert: Some(pem),
    }))
}

/// A client for `url` (`redis://` or `rediss://`), trusting `roots` when given.
fn open_client(url: &str, roots: Option<&redis::TlsCertificates>) -> RedisResult<Client> {
    match roots {
        Some(r) => Client::build_with_tls(url, r.clone()),
        None => Client::open(url),
    }
}

impl Backend {
    /// Builds the clients and makes the first connection (bounded by the caller's timeout).
    pub(crate) async fn connect(cfg: &RedisConfig) -> Result<Self, ClusterError> {
        let t = cfg.op_timeout;
        match &cfg.mode {
            RedisMode::Standalone { url } => {
                let client = open_client(url, tls_roots(cfg)?.as_ref()).map_err(config_err)?;
                let manager_config = ConnectionManagerConfig::new()
                    .set_connection_timeout(Some(t))
                    .set_response_timeout(Some(t))
                    .set_number_of_retries(2)
                    .set_min_delay(Duration::from_millis(20))
                    .set_max_delay(Duration::from_millis(500));
                let manager = ConnectionManager::new_with_config(client.clone(), manager_config)
                    .await
                    .map_err(|e| ClusterError::from_redis("connect", e))?;
                Ok(Backend::Standalone { manager, client })
            }
            RedisMode::Sentinel { master, sentinels } => {
                let urls: Vec<String> = sentinels.iter().map(|s| as_url(s)).collect();
                let client =
                    SentinelClient::build(urls, master.clone(), None, SentinelServerType::Master)
                        .map_err(config_err)?;
                let backend = SentinelBackend {
                    client: tokio::sync::Mutex::new(client),
                    current: Mutex::new(None),
                    generation: AtomicU64::new(0),
                    conn_config: AsyncConnectionConfig::new()
                        .set_connection_timeout(Some(t))
                        .set_response_timeout(Some(t)),
                };
                backend
                    .connection()
                    .await
                    .map_err(|e| ClusterError::from_redis("connect", e))?;
                Ok(Backend::Sentinel(Box::new(backend)))
            }
            RedisMode::Cluster { nodes } => {
                let urls: Vec<String> = nodes.iter().map(|s| as_url(s)).collect();
                let roots = tls_roots(cfg)?;
                let mut builder = ClusterClient::builder(urls.clone());
                if let Some(r) = &roots {
                    builder = builder.certs(r.clone());
                }
                let client = builder
                    .connection_timeout(t)
                    .response_timeout(t)
                    .retries(3)
                    .min_retry_wait(10)
                    .max_retry_wait(200)
                    .build()
                    .map_err(config_err)?;
                let conn = client
                    .get_async_connection()
                    .await
                    .map_err(|e| ClusterError::from_redis("connect", e))?;
                Ok(Backend::Cluster {
                    conn,
                    nodes: urls,
                    roots,
                })
            }
        }
    }

    /// The connection for one operation, and for Sentinel the generation to invalidate
    /// if the operation shows the master is gone.
    pub(crate) async fn conn(&self) -> RedisResult<(Conn, Option<u64>)> {
        match self {
            Backend::Standalone { manager, .. } => Ok((Conn::Manager(manager.clone()), None)),
            Backend::Cluster { conn, .. } => Ok((Conn::Cluster(conn.clone()), None)),
            Backend::Sentinel(s) => {
                let (generation, conn) = s.connection().await?;
                Ok((Conn::Multiplexed(conn), Some(generation)))
            }
        }
    }

    /// After an operation failed with `err` (None: timed out) on a connection of `generation`.
    pub(crate) fn failed(&self, generation: Option<u64>, err: Option<&redis::RedisError>) {
        if let (Backend::Sentinel(s), Some(generation)) = (self, generation)
            && err.is_none_or(needs_new_master)
        {
            s.invalidate(generation);
        }
    }

    /// How many different places a pub/sub connection can be opened (cluster seed nodes).
    pub(crate) fn pubsub_candidates(&self) -> usize {
        match self {
            Backend::Cluster { nodes, .. } => nodes.len(),
            _ => 1,
        }
    }

    /// A client for a dedicated pub/sub connection; `attempt` rotates through cluster nodes.
    pub(crate) async fn pubsub_client(&self, attempt: usize) -> RedisResult<Client> {
        match self {
            Backend::Standalone { client, .. } => Ok(client.clone()),
            Backend::Sentinel(s) => s.client.lock().await.async_get_client().await,
            Backend::Cluster { nodes, roots, .. } => {
                open_client(&nodes[attempt % nodes.len()], roots.as_ref())
            }
        }
    }
}

impl SentinelBackend {
    async fn connection(&self) -> RedisResult<(u64, MultiplexedConnection)> {
        if let Some(c) = self.cached() {
            return Ok(c);
        }
        // One resolution at a time; whoever waited finds the fresh connection.
        let mut client = self.client.lock().await;
        if let Some(c) = self.cached() {
            return Ok(c);
        }
        let conn = client
            .get_async_connection_with_config(&self.conn_config)
            .await?;
        let generation = self.generation.fetch_add(1, Ordering::Relaxed) + 1;
        tracing::info!(
            generation,
            "connected to the redis master named by sentinel"
        );
        *self.current.lock().unwrap_or_else(|p| p.into_inner()) = Some((generation, conn.clone()));
        Ok((generation, conn))
    }

    fn cached(&self) -> Option<(u64, MultiplexedConnection)> {
        self.current
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    fn invalidate(&self, generation: u64) {
        let mut current = self.current.lock().unwrap_or_else(|p| p.into_inner());
        if current.as_ref().is_some_and(|(g, _)| *g == generation) {
            tracing::warn!(
                generation,
                "dropping the connection to the redis master; asking sentinel again"
            );
            *current = None;
        }
    }
}
