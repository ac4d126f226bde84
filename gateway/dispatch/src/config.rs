//! `[events]` and `[replication]` of the configuration file.
//!
//! ```toml
//! [events]
//! dir = "events"                 # journal + outbox [default: ROOT/pier/events]; with [redis]
//!                                # they live in Redis instead and this is unused
//! source = "https://registry.example.com"   # CloudEvents `source` [default: pier://LISTEN]
//! secret = "s3cret"              # signs deliveries to URLs without their own secret below
//!                                # (or secret_file, as every secret); shared: prefer one per endpoint
//! attempts = 10                  # deliveries give up after this many tries
//! backoff = "1s"                 # first retry delay (jitter adds up to as much), doubling ...
//! backoff_max = "5m"             # ... up to this
//! timeout = "10s"                # per delivery request
//! pulls = false                  # also record manifest pulls (busy registries: keep off)
//!
//! [[events.endpoints]]           # a secret of its own for the deliveries to one endpoint
//! url = "https://ci.example.com/pier"   # that URL (and URL?query); a URL ending in `/`:
//!                                       # every URL under it; the longest match wins
//! secret_file = "ci.secret"      # or secret = "..."
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

use pier_storage::{parse_duration, parse_size};

use crate::DispatchError as ServerError;
use crate::{EventsSettings, ReplicationSettings, TargetSettings};

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileEvents {
    dir: Option<PathBuf>,
    source: Option<String>,
    secret: Option<String>,
    attempts: Option<u32>,
    backoff: Option<String>,
    backoff_max: Option<String>,
    timeout: Option<String>,
    pulls: Option<bool>,
    #[serde(default)]
    endpoints: Vec<FileEndpoint>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileEndpoint {
    url: String,
    secret: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileReplication {
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

fn duration(
    v: Option<String>,
    key: &str,
    path: &Path,
    default: Duration,
) -> Result<Duration, ServerError> {
    match v {
        None => Ok(default),
        Some(s) => parse_duration(&s)
            .map_err(|e| ServerError::Start(format!("{}: {key}: {e}", path.display()))),
    }
}

fn relative_to(base: &Path, p: PathBuf) -> PathBuf {
    if p.is_absolute() { p } else { base.join(p) }
}

pub fn events(
    f: Option<FileEvents>,
    base: &Path,
    path: &Path,
    root: &Path,
) -> Result<EventsSettings, ServerError> {
    let f = f.unwrap_or_default();
    let secret = nonempty_secret(f.secret, "events", path)?;
    let mut endpoints: Vec<(String, String)> = Vec::new();
    for (i, e) in f.endpoints.into_iter().enumerate() {
        let at = format!("events.endpoints[{i}]");
        if !(e.url.starts_with("http://") || e.url.starts_with("https://")) {
            return Err(ServerError::Start(format!(
                "{}: {at}.url {:?} must start with http:// or https://",
                path.display(),
                e.url
            )));
        }
        if endpoints.iter().any(|(u, _)| *u == e.url) {
            return Err(ServerError::Start(format!(
                "{}: {at}.url {:?} is listed twice",
                path.display(),
                e.url
            )));
        }
        let Some(s) = nonempty_secret(e.secret, &at, path)? else {
            return Err(ServerError::Start(format!(
                "{}: {at}: set `secret` or `secret_file`",
                path.display()
            )));
        };
        endpoints.push((e.url, s));
    }
    Ok(EventsSettings {
        dir: f
            .dir
            .map(|d| relative_to(base, d))
            .unwrap_or_else(|| root.join("pier").join("events")),
        source: f.source,
        secret,
        endpoints,
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

/// The `secret` of the table at `at` (`secret_file` became `secret` before, in
/// `config_source`); empty secrets are errors.
fn nonempty_secret(
    s: Option<String>,
    at: &str,
    path: &Path,
) -> Result<Option<String>, ServerError> {
    match s {
        Some(s) if s.trim().is_empty() => Err(ServerError::Start(format!(
            "{}: {at}: the secret is empty",
            path.display()
        ))),
        s => Ok(s),
    }
}

pub fn replication(
    f: Option<FileReplication>,
    path: &Path,
    root: &Path,
) -> Result<ReplicationSettings, ServerError> {
    let f = f.unwrap_or_default();
    let err = |m: String| ServerError::Start(format!("{}: {m}", path.display()));
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

    fn parse_events(toml_text: &str) -> Result<EventsSettings, ServerError> {
        let file: FileEvents =
            toml::from_str(toml_text).map_err(|e| ServerError::Start(e.to_string()))?;
        events(
            Some(file),
            Path::new("/etc/pier"),
            Path::new("pier.toml"),
            Path::new("/r"),
        )
    }

    #[test]
    fn endpoints_have_their_own_secrets() {
        let e = parse_events(
            "secret = \"default\"\n\
             [[endpoints]]\nurl = \"http://a.test/hook\"\nsecret = \"secret-a\"\n\
             [[endpoints]]\nurl = \"https://b.test/\"\nsecret = \"secret-b\"\n",
        )
        .unwrap();
        assert_eq!(e.secret.as_deref(), Some("default"));
        assert_eq!(
            e.endpoints,
            [
                ("http://a.test/hook".to_owned(), "secret-a".to_owned()),
                ("https://b.test/".to_owned(), "secret-b".to_owned())
            ]
        );
        for bad in [
            "[[endpoints]]\nurl = \"http://a.test/\"\n",
            "[[endpoints]]\nurl = \"http://a.test/\"\nsecret = \"\"\n",
            "[[endpoints]]\nurl = \"ftp://a.test/\"\nsecret = \"x\"\n",
            "[[endpoints]]\nurl = \"http://a.test/\"\nsecret = \"x\"\n\
             [[endpoints]]\nurl = \"http://a.test/\"\nsecret = \"y\"\n",
            "[[endpoints]]\nurl = \"http://a.test/\"\nsecret = \"x\"\nheaders = {}\n",
        ] {
            assert!(parse_events(bad).is_err(), "{bad}");
        }
    }

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
