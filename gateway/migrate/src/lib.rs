//! Ways in from other registries: CNCF distribution's `config.yml` as Pier's TOML
//! (`pier config from-distribution`), every setting without an equivalent named in a
//! comment. Pier serves distribution's storage layout as it is, so the data stays.

use std::fmt::Write as _;

use serde_yaml_ng::Value as Yaml;

/// Why a configuration could not be converted.
#[derive(Debug, thiserror::Error)]
#[error("not a distribution configuration: {0}")]
pub struct MigrateError(#[from] serde_yaml_ng::Error);

/// Distribution's `config.yml` as Pier's TOML, with a comment for every setting that has
/// no equivalent (and is left out).
pub fn from_distribution(yaml: &str) -> Result<String, MigrateError> {
    let y: Yaml = serde_yaml_ng::from_str(yaml)?;
    Ok(Converter::default().run(&y))
}

#[derive(Default)]
struct Converter {
    top: String,
    tables: String,
    skipped: Vec<String>,
}

fn get<'a>(y: &'a Yaml, path: &str) -> Option<&'a Yaml> {
    path.split('.').try_fold(y, |v, k| v.get(k))
}

fn string(y: &Yaml, path: &str) -> Option<String> {
    match get(y, path)? {
        Yaml::String(s) => Some(s.clone()),
        Yaml::Number(n) => Some(n.to_string()),
        Yaml::Bool(b) => Some(b.to_string()),
        _ => None,
    }
}

/// A TOML basic string: JSON's string escapes (`\"`, `\\`, `\n`, `\uXXXX`) are TOML's too.
fn quoted(s: &str) -> String {
    serde_json::Value::from(s).to_string()
}

impl Converter {
    fn key(&mut self, out: Target, k: &str, v: &str) {
        let s = match out {
            Target::Top => &mut self.top,
            Target::Table => &mut self.tables,
        };
        let _ = writeln!(s, "{k} = {}", quoted(v));
    }

    fn skip_all(&mut self, y: &Yaml, at: &str, known: &[&str]) {
        if let Some(Yaml::Mapping(m)) = get(y, at) {
            for k in m.keys().filter_map(Yaml::as_str) {
                if !known.contains(&k) {
                    self.skipped.push(format!("{at}.{k}"));
                }
            }
        }
    }

    fn run(mut self, y: &Yaml) -> String {
        let root = y.as_mapping().map(|m| {
            m.keys()
                .filter_map(Yaml::as_str)
                .map(str::to_owned)
                .collect::<Vec<_>>()
        });
        for k in root.unwrap_or_default() {
            if ![
                "version",
                "log",
                "storage",
                "http",
                "auth",
                "proxy",
                "notifications",
            ]
            .contains(&k.as_str())
            {
                self.skipped.push(k);
            }
        }
        self.log(y);
        self.storage(y);
        self.http(y);
        self.auth(y);
        self.proxy(y);
        self.notifications(y);
        let mut out = String::from(
            "# Converted by `pier config from-distribution` from distribution's config.yml.\n",
        );
        if !self.skipped.is_empty() {
            out.push_str("# Not converted (no equivalent, or Pier's default already does it):\n");
            for s in &self.skipped {
                let _ = writeln!(out, "#   {s}");
            }
        }
        out.push('\n');
        out.push_str(&self.top);
        out.push_str(&self.tables);
        out
    }

    fn log(&mut self, y: &Yaml) {
        if let Some(f) = string(y, "log.formatter") {
            let f = if f == "json" { "json" } else { "text" };
            self.key(Target::Top, "log_format", f);
        }
        // Pier's log level is PIER_LOG (an env filter), not a config key.
        self.skip_all(y, "log", &["formatter"]);
    }

    fn storage(&mut self, y: &Yaml) {
        if let Some(dir) = string(y, "storage.filesystem.rootdirectory") {
            self.key(Target::Top, "root", &dir);
        }
        if get(y, "storage.s3").is_some() {
            self.tables
                .push_str("\n[storage]\nbackend = \"s3\"\n\n[storage.s3]\n");
            for (from, to) in [
                ("bucket", "bucket"),
                ("region", "region"),
                ("regionendpoint", "endpoint"),
                ("accesskey", "access_key"),
                ("secretkey", "secret_key"),
            ] {
                if let Some(v) = string(y, &format!("storage.s3.{from}")) {
                    self.key(Target::Table, to, &v);
                }
            }
            if let Some(p) = string(y, "storage.s3.rootdirectory") {
                self.key(Target::Table, "prefix", p.trim_matches('/'));
            }
            if string(y, "storage.s3.forcepathstyle").as_deref() == Some("true") {
                self.tables.push_str("force_path_style = true\n");
            }
            self.skip_all(
                y,
                "storage.s3",
                &[
                    "bucket",
                    "region",
                    "regionendpoint",
                    "accesskey",
                    "secretkey",
                    "rootdirectory",
                    "forcepathstyle",
                ],
            );
        }
        // Named as not converted: cache (Pier has its own), maintenance (Pier expires idle
        // uploads itself: upload_idle_timeout), other drivers.
        self.skip_all(y, "storage", &["filesystem", "s3", "delete"]);
        if get(y, "storage.delete").is_some()
            && string(y, "storage.delete.enabled").as_deref() != Some("true")
        {
            self.skipped
                .push("storage.delete.enabled = false (Pier always allows deletes)".into());
        }
        self.skip_all(y, "storage.filesystem", &["rootdirectory"]);
    }

    fn http(&mut self, y: &Yaml) {
        if let Some(addr) = string(y, "http.addr") {
            // `:5000` listens on every address.
            let addr = if addr.starts_with(':') {
                format!("0.0.0.0{addr}")
            } else {
                addr
            };
            self.key(Target::Top, "listen", &addr);
        }
        if let Some(host) = string(y, "http.host") {
            // Distribution's externally reachable URL: the token realm's host.
            self.skipped.push(format!(
                "http.host = {host} (Pier takes the realm from [auth] realm)"
            ));
        }
        let cert = string(y, "http.tls.certificate");
        let key = string(y, "http.tls.key");
        if cert.is_some() || key.is_some() {
            self.tables.push_str("\n[tls]\n");
            if let Some(c) = cert {
                self.key(Target::Table, "cert", &c);
            }
            if let Some(k) = key {
                self.key(Target::Table, "key", &k);
            }
        }
        self.skip_all(y, "http.tls", &["certificate", "key"]);
        self.skip_all(y, "http", &["addr", "tls", "host"]);
    }

    fn auth(&mut self, y: &Yaml) {
        if let Some(path) = string(y, "auth.htpasswd.path") {
            self.tables.push_str(
                "\n# htpasswd: every authenticated user may push and pull, anonymous clients\n\
                 # nothing (as distribution's htpasswd auth); bcrypt entries only.\n[auth]\n",
            );
            self.key(Target::Table, "users_file", &path);
            if let Some(realm) = string(y, "auth.htpasswd.realm") {
                self.skipped.push(format!(
                    "auth.htpasswd.realm = {realm} (Pier names its own Basic realm)"
                ));
            }
        } else if get(y, "auth.token").is_some() {
            self.tables.push_str(
                "\n# token: tokens of this issuer are accepted; Pier's own token endpoint\n\
                 # stays on (users_file) and access control follows them.\n[auth]\n",
            );
            for (from, to) in [("service", "service"), ("realm", "realm")] {
                if let Some(v) = string(y, &format!("auth.token.{from}")) {
                    self.key(Target::Table, to, &v);
                }
            }
            if let (Some(iss), Some(bundle)) = (
                string(y, "auth.token.issuer"),
                string(y, "auth.token.rootcertbundle"),
            ) {
                self.tables.push_str("\n[[auth.trusted_issuers]]\n");
                self.key(Target::Table, "issuer", &iss);
                // Distribution verifies against the bundle's certificates; Pier wants the
                // issuer's public key: extract it (`openssl x509 -pubkey -noout`).
                self.key(Target::Table, "public_key", &bundle);
                self.skipped.push(format!(
                    "auth.token.rootcertbundle {bundle}: Pier wants the issuer's public key in PEM \
                     (`openssl x509 -in {bundle} -pubkey -noout`)"
                ));
            }
        }
        for k in ["silly", "accesscontroller"] {
            if get(y, &format!("auth.{k}")).is_some() {
                self.skipped.push(format!("auth.{k}"));
            }
        }
    }

    fn proxy(&mut self, y: &Yaml) {
        let Some(url) = string(y, "proxy.remoteurl") else {
            return;
        };
        self.tables.push_str("\n[[upstreams]]\n");
        self.key(Target::Table, "url", &url);
        for k in ["username", "password"] {
            if let Some(v) = string(y, &format!("proxy.{k}")) {
                self.key(Target::Table, k, &v);
            }
        }
        if let Some(ttl) = string(y, "proxy.ttl") {
            // Distribution's ttl is how long cached content is kept; Pier keeps blobs until
            // evicted (cache_max_size) and revalidates tags after tag_ttl.
            self.skipped.push(format!(
                "proxy.ttl = {ttl} (Pier keeps blobs until cache_max_size evicts them)"
            ));
        }
        self.skip_all(y, "proxy", &["remoteurl", "username", "password", "ttl"]);
    }

    fn notifications(&mut self, y: &Yaml) {
        let Some(Yaml::Sequence(eps)) = get(y, "notifications.endpoints") else {
            return;
        };
        let mut urls = Vec::new();
        for (i, ep) in eps.iter().enumerate() {
            let Some(url) = string(ep, "url") else {
                self.skipped
                    .push(format!("notifications.endpoints[{i}] (no url)"));
                continue;
            };
            if string(ep, "disabled").as_deref() == Some("true") {
                self.skipped
                    .push(format!("notifications.endpoints[{i}] (disabled)"));
                continue;
            }
            for k in [
                "headers",
                "timeout",
                "threshold",
                "backoff",
                "ignoredmediatypes",
                "ignore",
            ] {
                if get(ep, k).is_some() {
                    self.skipped
                        .push(format!("notifications.endpoints[{i}].{k}"));
                }
            }
            urls.push(url);
        }
        if urls.is_empty() {
            return;
        }
        // Webhooks are a notifier plugin in Pier: the webhook plugin posts each event
        // (CloudEvents JSON) to its endpoints; docs/webhooks.md.
        let mut hosts: Vec<&str> = urls.iter().map(|u| url_host(u)).collect();
        hosts.dedup();
        let hosts: Vec<String> = hosts.iter().map(|h| quoted(h)).collect();
        let _ = write!(
            self.tables,
            "\n# Webhooks: the webhook plugin (plugins/webhook, built as pier_webhook.wasm).\n\
             [[plugins]]\nname = \"webhook\"\nhook = \"notifier\"\npath = \"pier_webhook.wasm\"\n\
             grants = [\"log\", \"config\", \"http\"]\nallowed_hosts = [{}]\n",
            hosts.join(", ")
        );
        for u in &urls {
            let _ = write!(
                self.tables,
                "[[plugins.config.endpoints]]\nurl = {}\n",
                quoted(u)
            );
        }
    }
}

#[derive(Clone, Copy)]
enum Target {
    Top,
    Table,
}

/// `host[:port]` of a URL.
fn url_host(url: &str) -> &str {
    let rest = url.split_once("://").map_or(url, |(_, r)| r);
    rest.split(['/', '?']).next().unwrap_or(rest)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn convert(yaml: &str) -> String {
        from_distribution(yaml).unwrap()
    }

    #[test]
    fn a_full_distribution_config_converts_and_names_what_it_leaves_out() {
        let toml_text = convert(
            "version: 0.1\nlog:\n  level: info\n  formatter: json\n\
             storage:\n  s3:\n    bucket: b\n    region: eu-west-1\n    regionendpoint: http://127.0.0.1:9000\n    \
             accesskey: AK\n    secretkey: SK\n    rootdirectory: /reg\n    forcepathstyle: true\n    encrypt: true\n  \
             delete:\n    enabled: true\n  cache:\n    blobdescriptor: inmemory\n\
             http:\n  addr: :5000\n  secret: x\n  tls:\n    certificate: /c.pem\n    key: /k.pem\n\
             auth:\n  htpasswd:\n    realm: r\n    path: /etc/htpasswd\n\
             proxy:\n  remoteurl: https://registry-1.docker.io\n  username: u\n  password: p\n  ttl: 168h\n\
             notifications:\n  endpoints:\n    - name: ci\n      url: https://ci.example.com/hook\n      timeout: 1s\n\
             redis:\n  addr: localhost:6379\n",
        );
        let t: toml::Table = toml::from_str(&toml_text).expect(&toml_text);
        assert_eq!(t["listen"].as_str(), Some("0.0.0.0:5000"));
        assert_eq!(t["log_format"].as_str(), Some("json"));
        assert_eq!(t["storage"]["backend"].as_str(), Some("s3"));
        let s3 = &t["storage"]["s3"];
        assert_eq!(s3["endpoint"].as_str(), Some("http://127.0.0.1:9000"));
        assert_eq!(s3["prefix"].as_str(), Some("reg"));
        assert_eq!(s3["secret_key"].as_str(), Some("SK"));
        assert_eq!(s3["force_path_style"].as_bool(), Some(true));
        assert_eq!(t["tls"]["cert"].as_str(), Some("/c.pem"));
        assert_eq!(t["auth"]["users_file"].as_str(), Some("/etc/htpasswd"));
        assert_eq!(
            t["upstreams"][0]["url"].as_str(),
            Some("https://registry-1.docker.io")
        );
        assert_eq!(t["upstreams"][0]["password"].as_str(), Some("p"));
        assert_eq!(t["plugins"][0]["hook"].as_str(), Some("notifier"));
        assert_eq!(
            t["plugins"][0]["config"]["endpoints"][0]["url"].as_str(),
            Some("https://ci.example.com/hook")
        );
        assert_eq!(
            t["plugins"][0]["allowed_hosts"][0].as_str(),
            Some("ci.example.com")
        );
        for left in [
            "log.level",
            "storage.s3.encrypt",
            "storage.cache",
            "http.secret",
            "proxy.ttl",
            "notifications.endpoints[0].timeout",
            "#   redis",
        ] {
            assert!(toml_text.contains(left), "{left} named in\n{toml_text}");
        }
    }
}
