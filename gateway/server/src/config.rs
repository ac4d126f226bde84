//! Configuration: defaults, then a TOML file, then `PIER_*` environment variables, then
//! flags (clap merges the last two).

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use clap::{Args, ValueEnum};
use serde::Deserialize;

use crate::error::ServerError;

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    #[default]
    Text,
    Json,
}

/// Parses `500ms`, `30s`, `10m`, `2h`, `1d` (a bare number is seconds).
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let s = s.trim();
    let split = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
    let (num, unit) = s.split_at(split);
    let n: u64 = num
        .parse()
        .map_err(|_| format!("invalid duration {s:?}: expected e.g. 30s, 10m, 2h"))?;
    let secs = match unit.trim() {
        "ms" => return Ok(Duration::from_millis(n)),
        "" | "s" => n,
        "m" => n * 60,
        "h" => n * 3600,
        "d" => n * 86_400,
        other => {
            return Err(format!(
                "invalid duration unit {other:?} in {s:?}: use ms, s, m, h or d"
            ));
        }
    };
    Ok(Duration::from_secs(secs))
}

#[derive(Debug, Clone, Args, Default)]
pub struct ServeArgs {
    /// TOML configuration file (same keys as these flags, with `_` for `-`).
    #[arg(long, env = "PIER_CONFIG")]
    pub config: Option<PathBuf>,
    /// Registry listen address [default: 127.0.0.1:5000]
    #[arg(long, env = "PIER_LISTEN")]
    pub listen: Option<SocketAddr>,
    /// Admin listen address for /metrics, /healthz, /readyz [default: 127.0.0.1:5001]
    #[arg(long, env = "PIER_ADMIN_LISTEN")]
    pub admin_listen: Option<SocketAddr>,
    /// Storage root directory [default: ./pier-data]
    #[arg(long, env = "PIER_ROOT")]
    pub root: Option<PathBuf>,
    /// PEM certificate chain; serves HTTPS (HTTP/2 and HTTP/1.1 by ALPN) with --tls-key
    #[arg(long, env = "PIER_TLS_CERT")]
    pub tls_cert: Option<PathBuf>,
    /// PEM private key for --tls-cert
    #[arg(long, env = "PIER_TLS_KEY")]
    pub tls_key: Option<PathBuf>,
    /// Accept cleartext HTTP/2 (prior knowledge) beside HTTP/1.1 [default: false]
    #[arg(long, env = "PIER_H2C", num_args = 0..=1, default_missing_value = "true",
          value_parser = clap::builder::BoolishValueParser::new())]
    pub h2c: Option<bool>,
    /// Upload sessions idle longer than this are removed [default: 24h]
    #[arg(long, env = "PIER_UPLOAD_IDLE_TIMEOUT", value_parser = parse_duration)]
    pub upload_idle_timeout: Option<Duration>,
    /// How long SIGTERM waits for in-flight requests [default: 30s]
    #[arg(long, env = "PIER_SHUTDOWN_TIMEOUT", value_parser = parse_duration)]
    pub shutdown_timeout: Option<Duration>,
    /// Log format [default: text]
    #[arg(long, env = "PIER_LOG_FORMAT", value_enum)]
    pub log_format: Option<LogFormat>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileConfig {
    listen: Option<SocketAddr>,
    admin_listen: Option<SocketAddr>,
    root: Option<PathBuf>,
    h2c: Option<bool>,
    upload_idle_timeout: Option<String>,
    shutdown_timeout: Option<String>,
    log_format: Option<LogFormat>,
    tls: Option<FileTls>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileTls {
    cert: Option<PathBuf>,
    key: Option<PathBuf>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsConfig {
    pub cert: PathBuf,
    pub key: PathBuf,
}

/// The resolved configuration of `pier serve`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Config {
    pub listen: SocketAddr,
    pub admin_listen: SocketAddr,
    pub root: PathBuf,
    pub tls: Option<TlsConfig>,
    pub h2c: bool,
    pub upload_idle_timeout: Duration,
    pub shutdown_timeout: Duration,
    pub log_format: LogFormat,
}

fn file_duration(
    v: Option<String>,
    key: &str,
    path: &Path,
) -> Result<Option<Duration>, ServerError> {
    v.map(|s| {
        parse_duration(&s)
            .map_err(|e| ServerError::Config(format!("{}: {key}: {e}", path.display())))
    })
    .transpose()
}

impl Config {
    /// Merges flags/env (`args`) over the file named by `args.config` over defaults.
    pub fn resolve(args: ServeArgs) -> Result<Config, ServerError> {
        let (file, path) = match &args.config {
            Some(p) => {
                let text = std::fs::read_to_string(p).map_err(|e| {
                    ServerError::Config(format!("cannot read config file {}: {e}", p.display()))
                })?;
                let f: FileConfig = toml::from_str(&text).map_err(|e| {
                    ServerError::Config(format!("invalid config file {}: {e}", p.display()))
                })?;
                (f, p.clone())
            }
            None => (FileConfig::default(), PathBuf::new()),
        };
        let file_tls = file.tls.unwrap_or_default();
        let cert = args.tls_cert.or(file_tls.cert);
        let key = args.tls_key.or(file_tls.key);
        let tls = match (cert, key) {
            (Some(cert), Some(key)) => Some(TlsConfig { cert, key }),
            (None, None) => None,
            _ => {
                return Err(ServerError::Config(
                    "TLS needs both a certificate (--tls-cert) and a key (--tls-key)".into(),
                ));
            }
        };
        Ok(Config {
            listen: args
                .listen
                .or(file.listen)
                .unwrap_or(([127, 0, 0, 1], 5000).into()),
            admin_listen: args
                .admin_listen
                .or(file.admin_listen)
                .unwrap_or(([127, 0, 0, 1], 5001).into()),
            root: args
                .root
                .or(file.root)
                .unwrap_or_else(|| PathBuf::from("./pier-data")),
            tls,
            h2c: args.h2c.or(file.h2c).unwrap_or(false),
            upload_idle_timeout: match args.upload_idle_timeout {
                Some(d) => d,
                None => file_duration(file.upload_idle_timeout, "upload_idle_timeout", &path)?
                    .unwrap_or(Duration::from_secs(24 * 3600)),
            },
            shutdown_timeout: match args.shutdown_timeout {
                Some(d) => d,
                None => file_duration(file.shutdown_timeout, "shutdown_timeout", &path)?
                    .unwrap_or(Duration::from_secs(30)),
            },
            log_format: args.log_format.or(file.log_format).unwrap_or_default(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations() {
        assert_eq!(parse_duration("30s"), Ok(Duration::from_secs(30)));
        assert_eq!(parse_duration("10m"), Ok(Duration::from_secs(600)));
        assert_eq!(parse_duration("2h"), Ok(Duration::from_secs(7200)));
        assert_eq!(parse_duration("15"), Ok(Duration::from_secs(15)));
        assert_eq!(parse_duration("250ms"), Ok(Duration::from_millis(250)));
        assert!(parse_duration("ten").is_err());
        assert!(parse_duration("5y").is_err());
    }

    #[test]
    fn defaults() {
        let c = Config::resolve(ServeArgs::default()).unwrap();
        assert_eq!(c.listen, "127.0.0.1:5000".parse().unwrap());
        assert_eq!(c.admin_listen, "127.0.0.1:5001".parse().unwrap());
        assert_eq!(c.root, PathBuf::from("./pier-data"));
        assert!(!c.h2c && c.tls.is_none());
        assert_eq!(c.upload_idle_timeout, Duration::from_secs(86_400));
    }

    #[test]
    fn flags_override_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("pier.toml");
        std::fs::write(
            &path,
            "listen = \"127.0.0.1:7000\"\nroot = \"/data\"\nupload_idle_timeout = \"5m\"\nh2c = true\n[tls]\ncert = \"c.pem\"\nkey = \"k.pem\"\n",
        )
        .unwrap();
        let args = ServeArgs {
            config: Some(path.clone()),
            root: Some("/override".into()),
            ..Default::default()
        };
        let c = Config::resolve(args).unwrap();
        assert_eq!(c.listen, "127.0.0.1:7000".parse().unwrap());
        assert_eq!(c.root, PathBuf::from("/override"));
        assert_eq!(c.upload_idle_timeout, Duration::from_secs(300));
        assert!(c.h2c);
        assert_eq!(c.tls.unwrap().cert, PathBuf::from("c.pem"));

        std::fs::write(&path, "listne = \"x\"\n").unwrap();
        let err = Config::resolve(ServeArgs {
            config: Some(path),
            ..Default::default()
        })
        .unwrap_err();
        assert!(err.to_string().contains("listne"), "{err}");
    }

    #[test]
    fn half_tls_is_an_error() {
        let err = Config::resolve(ServeArgs {
            tls_cert: Some("c.pem".into()),
            ..Default::default()
        })
        .unwrap_err();
        assert!(err.to_string().contains("--tls-key"));
    }
}
