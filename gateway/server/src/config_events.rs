//! `[events]` and `[replication]` of the configuration file.
//!
//! ```toml
//! [events]
//! dir = "events"                 # journal + outbox [default: ROOT/pier/events]; with [redis]
//!                                # they live in Redis instead and this is unused
//! source = "https://registry.example.com"   # CloudEvents `source` [default: pier://LISTEN]
//! secret = "s3cret"              # HMAC-SHA256 key of X-Pier-Signature (or secret_file)
//! attempts = 10                  # deliveries give up after this many tries
//! backoff = "1s"                 # first retry delay, doubling ...
//! backoff_max = "5m"             # ... up to this
//! timeout = "10s"                # per delivery request
//! pulls = false                  # also record manifest pulls (busy registries: keep off)
//!
//! [replication]
//! tick = "30s"                   # how often replicators' on-tick runs
//! attempts = 0                   # per job; 0 = until it succeeds
//! backoff = "2s"
//! backoff_max = "5m"
//! concurrency = 4                # blobs in flight per job
//! chunk_size = "16MiB"           # PATCH size of uploads to a target (resume granularity)
//!
//! [replication.targets.site-b]
//! url = "https://b.example.com"
//! username = "robot$replicator"  # optional
//! password = "..."
//! bandwidth = "50MiB"            # bytes per second to this target, shared by its jobs
//! allow_private = false          # let its redirects and token realms reach private addresses
//! ```

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

use crate::config::{parse_duration, parse_size};
use crate::error::ServerError;

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct FileEvents {
    dir: Option<PathBuf>,
    source: Option<String>,
    secret: Option<String>,
    secret_file: Option<PathBuf>,
    attempts: Option<u32>,
    backoff: Option<String>,
    backoff_max: Option<String>,
    timeout: Option<String>,
    pulls: Option<bool>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct FileReplication {
    tick: Option<String>,
    attempts: Option<u32>,
    backoff: Option<String>,
    backoff_max: Option<String>,
    concurrency: Option<usize>,
    chunk_size: Option<String>,
    #[serde(default)]
    targets: BTreeMap<String, FileTarget>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileTarget {
    url: String,
    username: Option<String>,
    password: Option<String>,
    bandwidth: Option<String>,
    timeout: Option<String>,
    #[serde(default)]
    allow_private: bool,
}

/// Where events are kept and how deliveries go out.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EventsSettings {
    pub dir: PathBuf,
    /// CloudEvents `source`; `None`: derived from the listen address.
    pub source: Option<String>,
    pub secret: Option<String>,
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

fn duration(
    v: Option<String>,
    key: &str,
    path: &Path,
    default: Duration,
) -> Result<Duration, ServerError> {
    match v {
        None => Ok(default),
        Some(s) => parse_duration(&s)
            .map_err(|e| ServerError::Config(format!("{}: {key}: {e}", path.display()))),
    }
}

fn relative_to(base: &Path, p: PathBuf) -> PathBuf {
    if p.is_absolute() { p } else { base.join(p) }
}

pub(crate) fn events(
    f: Option<FileEvents>,
    base: &Path,
    path: &Path,
    root: &Path,
) -> Result<EventsSettings, ServerError> {
    let f = f.unwrap_or_default();
    let secret = match (f.secret, f.secret_file) {
        (Some(_), Some(_)) => {
            return Err(ServerError::Config(format!(
                "{}: events: set `secret` or `secret_file`, not both",
                path.display()
            )));
        }
        (Some(s), None) => Some(s),
        (None, Some(file)) => {
            let file = relative_to(base, file);
            let s = std::fs::read_to_string(&file).map_err(|e| {
                ServerError::Config(format!(
                    "{}: events.secret_file {}: {e}",
                    path.display(),
                    file.display()
                ))
            })?;
            Some(s.trim().to_owned())
        }
        (None, None) => None,
    };
    Ok(EventsSettings {
        dir: f
            .dir
            .map(|d| relative_to(base, d))
            .unwrap_or_else(|| root.join("pier").join("events")),
        source: f.source,
        secret,
        attempts: f.attempts.unwrap_or(10).max(1),
        backoff: duration(f.backoff, "events.backoff", path, Duration::from_secs(1))?,
        backoff_max: duration(
            f.backoff_max,
            "events.backoff_max",
            path,
            Duration::from_secs(300),
        )?,
        timeout: duration(f.timeout, "events.timeout", path, Duration::from_secs(10))?,
        pulls: f.pulls.unwrap_or(false),
    })
}

pub(crate) fn replication(
    f: Option<FileReplication>,
    path: &Path,
    root: &Path,
) -> Result<ReplicationSettings, ServerError> {
    let f = f.unwrap_or_default();
    let err = |m: String| ServerError::Config(format!("{}: {m}", path.display()));
    let mut targets = Vec::new();
    for (name, t) in f.targets {
        let url = t.url.trim_end_matches('/').to_owned();
        if !(url.starts_with("http://") || url.starts_with("https://")) {
            return Err(err(format!(
                "replication.targets.{name}.url {url:?} must start with http:// or https://"
            )));
        }
        let credentials = match (t.username, t.password) {
            (Some(u), Some(p)) => Some((u, p)),
            (None, None) => None,
            _ => {
                return Err(err(format!(
                    "replication.targets.{name}: set both username and password, or neither"
                )));
            }
        };
        let bandwidth = t
            .bandwidth
            .as_deref()
            .map(parse_size)
            .transpose()
            .map_err(|e| err(format!("replication.targets.{name}.bandwidth: {e}")))?
            .unwrap_or(0);
        targets.push(TargetSettings {
            timeout: duration(
                t.timeout,
                &format!("replication.targets.{name}.timeout"),
                path,
                Duration::from_secs(30),
            )?,
            name,
            url,
            credentials,
            bandwidth,
            allow_private: t.allow_private,
        });
    }
    let chunk_size = f
        .chunk_size
        .as_deref()
        .map(parse_size)
        .transpose()
        .map_err(|e| err(format!("replication.chunk_size: {e}")))?
        .unwrap_or(16 << 20)
        .max(1 << 20);
    Ok(ReplicationSettings {
        tick: duration(f.tick, "replication.tick", path, Duration::from_secs(30))?,
        attempts: f.attempts.unwrap_or(0),
        backoff: duration(
            f.backoff,
            "replication.backoff",
            path,
            Duration::from_secs(2),
        )?,
        backoff_max: duration(
            f.backoff_max,
            "replication.backoff_max",
            path,
            Duration::from_secs(300),
        )?,
        concurrency: f.concurrency.unwrap_or(4).clamp(1, 64),
        chunk_size,
        targets,
        job_log: root.join("pier").join("replication").join("jobs.jsonl"),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn targets_may_allow_private_addresses() {
        let file: FileReplication = toml::from_str(
            "[targets.a]\nurl = \"https://a.example/\"\n\
             [targets.b]\nurl = \"https://b.example\"\nallow_private = true\n",
        )
        .unwrap();
        let r = replication(Some(file), Path::new("pier.toml"), Path::new("/r")).unwrap();
        let seen: Vec<(&str, &str, bool)> = r
            .targets
            .iter()
            .map(|t| (t.name.as_str(), t.url.as_str(), t.allow_private))
            .collect();
        assert_eq!(
            seen,
            [
                ("a", "https://a.example", false),
                ("b", "https://b.example", true)
            ]
        );
    }
}
