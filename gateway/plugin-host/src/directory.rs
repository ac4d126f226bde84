//! The directory behind the `ldap` capability: a simple bind over `ldap://`, `ldaps://`
//! or `ldap://` upgraded with StartTLS (the `ldap3` crate, rustls on ring), the server's
//! certificate verified against the system's roots or a configured CA file.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use ldap3::{LdapConnAsync, LdapConnSettings};
use rustls_pki_types::CertificateDer;
use rustls_pki_types::pem::PemObject;

/// Where the `ldap` capability binds (`ldap_url`, `ldap_starttls`, `ldap_ca_file`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LdapDirectory {
    /// `ldap://host:port` or `ldaps://host:port`.
    pub url: String,
    /// Upgrade an `ldap://` connection with StartTLS before binding; a directory that
    /// refuses the upgrade is unavailable, never used in the clear.
    pub starttls: bool,
    /// PEM certificates to verify the directory's certificate with instead of the
    /// system's roots.
    pub ca_file: Option<PathBuf>,
}

impl LdapDirectory {
    /// `ldap://host:port`, plaintext.
    pub fn plain(host_port: &str) -> LdapDirectory {
        LdapDirectory {
            url: format!("ldap://{host_port}"),
            starttls: false,
            ca_file: None,
        }
    }

    fn tls(&self) -> bool {
        self.starttls || self.url.starts_with("ldaps://")
    }
}

/// A configured directory, its TLS settings read once at plugin load.
pub(crate) struct Directory {
    url: String,
    starttls: bool,
    /// Set when the connection is TLS (`ldaps://` or StartTLS).
    tls: Option<Arc<rustls::ClientConfig>>,
}

impl Directory {
    /// Reads the CA file (or the system's roots) when the directory is reached over TLS.
    pub(crate) fn new(d: &LdapDirectory) -> Result<Directory, String> {
        if !(d.url.starts_with("ldap://") || d.url.starts_with("ldaps://")) {
            return Err(format!("{:?} is not ldap:// or ldaps://", d.url));
        }
        if d.starttls && d.url.starts_with("ldaps://") {
            return Err("StartTLS is for ldap:// URLs; ldaps:// is TLS already".into());
        }
        let tls = if d.tls() {
            Some(Arc::new(client_config(d.ca_file.as_ref())?))
        } else {
            None
        };
        Ok(Directory {
            url: d.url.clone(),
            starttls: d.starttls,
            tls,
        })
    }

    /// Binds as `dn` with `password` within `deadline` (connect, TLS, bind, unbind):
    /// Ok(true) accepted, Ok(false) invalidCredentials, Err why the directory could not
    /// answer.
    pub(crate) async fn simple_bind(
        &self,
        dn: &str,
        password: &str,
        deadline: Duration,
    ) -> Result<bool, String> {
        // No connect timeout of ldap3's: the one deadline below covers everything.
        let mut settings = LdapConnSettings::new().set_starttls(self.starttls);
        if let Some(tls) = &self.tls {
            settings = settings.set_config(tls.clone());
        }
        let op = async {
            let (conn, mut ldap) = LdapConnAsync::with_settings(settings, &self.url).await?;
            // The connection is driven here, not on a task of its own, so nothing of it
            // outlives the deadline.
            let drive = conn.drive();
            tokio::pin!(drive);
            let res = tokio::select! {
                r = ldap.simple_bind(dn, password) => r?,
                r = &mut drive => {
                    r?;
                    return Err(ldap3::LdapError::EndOfStream);
                }
            };
            // Say goodbye; the answer is known whichever finishes first.
            tokio::select! {
                _ = ldap.unbind() => {}
                _ = &mut drive => {}
            }
            Ok(res)
        };
        let res = tokio::time::timeout(deadline, op)
            .await
            .map_err(|_| format!("{}: timed out", self.url))?
            .map_err(|e| format!("{}: {e}", self.url))?;
        match res.rc {
            0 => Ok(true),
            49 => Ok(false),
            code => Err(format!("{}: bind answered result code {code}", self.url)),
        }
    }
}

/// rustls on ring trusting `ca_file`'s certificates, or the system's roots.
fn client_config(ca_file: Option<&PathBuf>) -> Result<rustls::ClientConfig, String> {
    let mut roots = rustls::RootCertStore::empty();
    match ca_file {
        Some(path) => {
            let certs = CertificateDer::pem_file_iter(path)
                .and_then(|it| it.collect::<Result<Vec<_>, _>>())
                .map_err(|e| format!("ldap_ca_file {}: {e}", path.display()))?;
            let (added, _) = roots.add_parsable_certificates(certs);
            if added == 0 {
                return Err(format!(
                    "ldap_ca_file {}: no usable certificate",
                    path.display()
                ));
            }
        }
        None => {
            let native = rustls_native_certs::load_native_certs();
            for error in &native.errors {
                tracing::debug!(%error, "skipping unreadable system certificate");
            }
            roots.add_parsable_certificates(native.certs);
            if roots.is_empty() {
                tracing::warn!("no system trust roots found: TLS to the LDAP directory will fail");
            }
        }
    }
    pier_upstream::tls_client_config(roots).map_err(|e| format!("TLS setup: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_and_switches_are_checked() {
        assert!(Directory::new(&LdapDirectory::plain("127.0.0.1:389")).is_ok());
        let d = |url: &str, starttls: bool| LdapDirectory {
            url: url.into(),
            starttls,
            ca_file: None,
        };
        assert!(Directory::new(&d("http://x:389", false)).is_err());
        assert!(Directory::new(&d("ldaps://x:636", true)).is_err());
        let mut missing = d("ldaps://x:636", false);
        missing.ca_file = Some("/nonexistent/ca.pem".into());
        let e = Directory::new(&missing).err().unwrap();
        assert!(e.starts_with("ldap_ca_file /nonexistent/ca.pem: "), "{e}");
    }

    #[tokio::test]
    async fn a_silent_directory_is_unavailable_within_the_deadline() {
        // A listener that accepts and never answers.
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = l.local_addr().unwrap();
        let _hold = tokio::spawn(async move {
            let mut held = Vec::new();
            while let Ok((s, _)) = l.accept().await {
                held.push(s);
            }
        });
        for starttls in [false, true] {
            let mut cfg = LdapDirectory::plain(&addr.to_string());
            cfg.starttls = starttls;
            let d = Directory::new(&cfg).unwrap();
            let t = std::time::Instant::now();
            let e = d
                .simple_bind("cn=a", "pw", Duration::from_millis(200))
                .await
                .unwrap_err();
            assert!(e.ends_with("timed out"), "{e}");
            assert!(t.elapsed() < Duration::from_secs(2));
        }
    }
}
