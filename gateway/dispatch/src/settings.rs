//! What events and replication run with, resolved from the configuration file's
//! `[events]` and `[replication]` (parsed by the binary).

use std::path::PathBuf;
use std::time::Duration;

/// Where events are kept and how deliveries go out.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EventsSettings {
    pub dir: PathBuf,
    /// CloudEvents `source`; `None`: derived from the listen address.
    pub source: Option<String>,
    /// Signs deliveries to URLs no endpoint below matches.
    pub secret: Option<String>,
    /// `(url, secret)`: the secret of the deliveries to that endpoint.
    pub endpoints: Vec<(String, String)>,
    pub attempts: u32,
    pub backoff: Duration,
    pub backoff_max: Duration,
    pub timeout: Duration,
    pub pulls: bool,
}

/// One registry replication copies to or from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TargetSettings {
    pub name: String,
    pub url: String,
    pub credentials: Option<(String, String)>,
    /// Bytes per second; 0 = unlimited.
    pub bandwidth: u64,
    pub timeout: Duration,
    /// Its redirects and token realms may lead to private addresses.
    pub allow_private: bool,
}

/// How replication jobs run.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReplicationSettings {
    pub tick: Duration,
    pub attempts: u32,
    pub backoff: Duration,
    pub backoff_max: Duration,
    pub concurrency: usize,
    pub chunk_size: u64,
    pub targets: Vec<TargetSettings>,
    pub job_log: PathBuf,
}
