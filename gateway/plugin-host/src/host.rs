//! The per-call store data and Pier's host capabilities (`wit/host.wit`). Every
//! capability is denied unless granted in the plugin's configuration.

use std::sync::Arc;
use std::time::Duration;

use wasmtime::StoreLimits;
use wasmtime::component::ResourceTable;
use wasmtime_wasi::{WasiCtx, WasiCtxView, WasiView};

use crate::bindings::pier::plugin::{config, http_outbound, kv, ldap, log, types};
use crate::directory::Directory;
use crate::kv::{KvFault, KvPlace};
use crate::outbound::OutboundHttp;

const KV_MAX_KEY: usize = 256;
const KV_MAX_VALUE: usize = 64 << 10;
const LOG_MAX: usize = 4 << 10;

/// Which host capabilities a plugin may use.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Grants {
    pub log: bool,
    pub config: bool,
    pub kv: bool,
    pub http: bool,
    pub ldap: bool,
    /// `registry-read` (admission plugins).
    pub registry: bool,
    /// `crypto` (native signature checks).
    pub crypto: bool,
}

impl Grants {
    /// From the names in `grants = [...]`.
    pub fn parse(names: &[String]) -> Result<Grants, String> {
        let mut g = Grants::default();
        for n in names {
            match n.as_str() {
                "log" => g.log = true,
                "config" => g.config = true,
                "kv" => g.kv = true,
                "http" | "http-outbound" => g.http = true,
                "ldap" => g.ldap = true,
                "registry" | "registry-read" => g.registry = true,
                "crypto" => g.crypto = true,
                other => {
                    return Err(format!(
                        "unknown capability {other:?}: grant any of log, config, kv, http, ldap, registry, crypto"
                    ));
                }
            }
        }
        Ok(g)
    }
}

/// What a plugin's capabilities work with; shared by all its instances.
pub(crate) struct Capabilities {
    pub plugin: String,
    pub grants: Grants,
    /// The plugin's `config` table as a JSON object.
    pub config: serde_json::Map<String, serde_json::Value>,
    pub kv: KvPlace,
    pub allowed_hosts: Vec<String>,
    /// The runtime's client for `http-outbound`.
    pub http: OutboundHttp,
    /// The directory of the `ldap` capability, when configured.
    pub ldap: Option<Directory>,
    pub io_timeout: Duration,
}

/// Store data of one instance.
pub(crate) struct HostState {
    pub wasi: WasiCtx,
    pub table: ResourceTable,
    pub limits: StoreLimits,
    pub caps: Arc<Capabilities>,
    /// What `registry-read` reads during an `admit` call; `None` between calls.
    pub content: Option<Arc<dyn pier_auth::admission::ContentReader>>,
}

impl WasiView for HostState {
    fn ctx(&mut self) -> WasiCtxView<'_> {
        WasiCtxView {
            ctx: &mut self.wasi,
            table: &mut self.table,
        }
    }
}

/// `host` or `host:port` (`[v6]:port`) as a host and an optional port.
fn split_host_port(s: &str) -> Option<(&str, Option<u16>)> {
    let (host, port) = if s.starts_with('[') {
        let end = s.find(']')?;
        let (h, rest) = s.split_at(end + 1);
        match rest {
            "" => (h, None),
            r => (h, Some(r.strip_prefix(':')?)),
        }
    } else {
        match s.split_once(':') {
            Some((h, p)) => (h, Some(p)),
            None => (s, None),
        }
    };
    let port = match port {
        Some(p) => Some(p.parse::<u16>().ok()?),
        None => None,
    };
    (!host.is_empty()).then_some((host, port))
}

/// Whether the plugin's `allowed_hosts` let it reach `host` on `port`, for a URL whose
/// scheme's port is `default_port`: an entry `host:port` allows that host on that port,
/// an entry `host` on the scheme's port. Hosts compare case-insensitively. Shared by
/// `http-outbound` and notifier deliveries.
pub(crate) fn host_allowed(allowed: &[String], host: &str, port: u16, default_port: u16) -> bool {
    allowed.iter().any(|entry| {
        split_host_port(entry.trim())
            .is_some_and(|(h, p)| h.eq_ignore_ascii_case(host) && p.unwrap_or(default_port) == port)
    })
}

impl Capabilities {
    /// Why a notifier's delivery to `url` must not be sent, or `None`: deliveries obey the
    /// grants of `http-outbound`: the `http` grant, and the URL's host on
    /// `allowed_hosts`. Parsed as the sender parses it (`http::Uri`), so the host checked
    /// is the host connected to.
    pub(crate) fn delivery_refusal(&self, url: &str) -> Option<String> {
        let name = &self.plugin;
        if !self.grants.http {
            return Some(format!(
                "notifier {name:?} is not granted \"http\": a delivery needs that grant and \
                 its host on the plugin's allowed_hosts"
            ));
        }
        let uri: http::Uri = match url.parse() {
            Ok(u) => u,
            Err(e) => return Some(format!("invalid delivery URL: {e}")),
        };
        let default_port = match uri.scheme_str() {
            Some("http") => 80,
            Some("https") => 443,
            _ => return Some("a delivery URL must be http:// or https://".into()),
        };
        let Some(authority) = uri.authority() else {
            return Some("a delivery URL needs a host".into());
        };
        if authority.as_str().contains('@') {
            return Some("a delivery URL must not carry credentials before its host".into());
        }
        let host = authority.host();
        let port = authority.port_u16().unwrap_or(default_port);
        if host_allowed(&self.allowed_hosts, host, port, default_port) {
            None
        } else {
            Some(format!(
                "{host}:{port} is not on the allowed_hosts of notifier {name:?}"
            ))
        }
    }
}

impl types::Host for HostState {}

impl log::Host for HostState {
    async fn write(&mut self, level: log::Level, message: String) {
        if !self.caps.grants.log {
            return;
        }
        let mut m = message;
        if m.len() > LOG_MAX {
            let mut cut = LOG_MAX;
            while !m.is_char_boundary(cut) {
                cut -= 1;
            }
            m.truncate(cut);
        }
        let plugin = &self.caps.plugin;
        match level {
            log::Level::Trace => tracing::trace!(plugin = %plugin, "{m}"),
            log::Level::Debug => tracing::debug!(plugin = %plugin, "{m}"),
            log::Level::Info => tracing::info!(plugin = %plugin, "{m}"),
            log::Level::Warn => tracing::warn!(plugin = %plugin, "{m}"),
            log::Level::Error => tracing::error!(plugin = %plugin, "{m}"),
        }
    }
}

impl config::Host for HostState {
    async fn document(&mut self) -> String {
        if !self.caps.grants.config {
            return "{}".into();
        }
        serde_json::Value::Object(self.caps.config.clone()).to_string()
    }

    async fn get(&mut self, key: String) -> Option<String> {
        if !self.caps.grants.config {
            return None;
        }
        match self.caps.config.get(&key)? {
            serde_json::Value::String(s) => Some(s.clone()),
            serde_json::Value::Number(n) => Some(n.to_string()),
            serde_json::Value::Bool(b) => Some(b.to_string()),
            _ => None,
        }
    }
}

impl HostState {
    /// The grant and the key's size, checked before the store is asked.
    fn kv_key(&self, key: &str) -> Result<(), kv::KvError> {
        if !self.caps.grants.kv {
            return Err(kv::KvError::Denied);
        }
        if key.len() > KV_MAX_KEY {
            return Err(kv::KvError::TooLarge);
        }
        Ok(())
    }
}

fn kv_fault(e: KvFault) -> kv::KvError {
    match e {
        KvFault::TooManyKeys => kv::KvError::TooLarge,
        KvFault::Io(m) => kv::KvError::Io(m),
    }
}

impl kv::Host for HostState {
    async fn get(&mut self, key: String) -> Result<Option<Vec<u8>>, kv::KvError> {
        self.kv_key(&key)?;
        self.caps.kv.get(&key).await.map_err(kv_fault)
    }

    async fn set(&mut self, key: String, value: Vec<u8>) -> Result<(), kv::KvError> {
        self.kv_key(&key)?;
        if value.len() > KV_MAX_VALUE {
            return Err(kv::KvError::TooLarge);
        }
        self.caps.kv.set(&key, &value).await.map_err(kv_fault)
    }

    async fn delete(&mut self, key: String) -> Result<(), kv::KvError> {
        self.kv_key(&key)?;
        self.caps.kv.delete(&key).await.map_err(kv_fault)
    }
}

impl http_outbound::Host for HostState {
    async fn send(
        &mut self,
        req: http_outbound::Request,
    ) -> Result<http_outbound::Response, http_outbound::HttpError> {
        if !self.caps.grants.http {
            return Err(http_outbound::HttpError::Denied);
        }
        self.caps
            .http
            .send(&self.caps.allowed_hosts, req, self.caps.io_timeout)
            .await
    }
}

impl ldap::Host for HostState {
    async fn simple_bind(&mut self, dn: String, password: String) -> Result<bool, ldap::LdapError> {
        use ldap::LdapError;
        if !self.caps.grants.ldap {
            return Err(LdapError::Denied);
        }
        let directory = self.caps.ldap.as_ref().ok_or(LdapError::Denied)?;
        // An empty password is an "unauthenticated bind" that many directories accept:
        // never let it count as a successful login.
        if password.is_empty() {
            return Ok(false);
        }
        directory
            .simple_bind(&dn, &password, self.caps.io_timeout)
            .await
            .map_err(LdapError::Unavailable)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn caps(http: bool, allowed: &[&str]) -> Capabilities {
        Capabilities {
            plugin: "n".into(),
            grants: Grants {
                log: true,
                http,
                ..Grants::default()
            },
            config: serde_json::Map::new(),
            kv: KvPlace::Dir(std::env::temp_dir()),
            allowed_hosts: allowed.iter().map(|h| (*h).to_owned()).collect(),
            http: OutboundHttp::new(),
            ldap: None,
            io_timeout: Duration::from_secs(1),
        }
    }

    #[test]
    fn allowed_hosts_match_host_and_port() {
        let allowed: Vec<String> = ["hooks.test", "127.0.0.1:8080", "[::1]:9000"]
            .map(String::from)
            .to_vec();
        assert!(host_allowed(&allowed, "hooks.test", 80, 80));
        assert!(host_allowed(&allowed, "HOOKS.test", 443, 443));
        assert!(!host_allowed(&allowed, "hooks.test", 8080, 80));
        assert!(host_allowed(&allowed, "127.0.0.1", 8080, 80));
        assert!(!host_allowed(&allowed, "127.0.0.1", 80, 80));
        assert!(host_allowed(&allowed, "[::1]", 9000, 80));
        assert!(!host_allowed(&allowed, "hooks.test.evil", 80, 80));
        assert!(!host_allowed(&[], "hooks.test", 80, 80));
    }

    #[test]
    fn deliveries_need_the_http_grant_and_an_allowed_host() {
        let c = caps(true, &["hooks.test", "127.0.0.1:8080"]);
        for ok in [
            "http://hooks.test/x",
            "https://hooks.test/x",
            "http://hooks.test:80/x",
            "http://HOOKS.TEST/x?y=1",
            "http://127.0.0.1:8080/hook",
        ] {
            assert_eq!(c.delivery_refusal(ok), None, "{ok}");
        }
        for bad in [
            "http://elsewhere.test/x",
            "http://hooks.test:8080/x",
            "http://127.0.0.1/hook",
            "http://127.0.0.1:8081/hook",
            "http://hooks.test.evil/x",
            "http://hooks.test@elsewhere.test/x",
            "http://elsewhere.test#@hooks.test/",
            "http://elsewhere.test\\@hooks.test/",
            "ftp://hooks.test/",
            "http:///x",
        ] {
            assert!(c.delivery_refusal(bad).is_some(), "{bad} allowed");
        }
        let no_grant = caps(false, &["hooks.test"]);
        let why = no_grant.delivery_refusal("http://hooks.test/x").unwrap();
        assert!(why.contains("not granted \"http\""), "{why}");
        let why = c.delivery_refusal("http://elsewhere.test/x").unwrap();
        assert_eq!(
            why,
            "elsewhere.test:80 is not on the allowed_hosts of notifier \"n\""
        );
    }
}
