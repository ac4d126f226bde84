//! Docker token auth: JWTs signed ES256 with the gateway's key (generated on first start
//! and kept, or configured), verified with that key or with the public keys of trusted
//! external issuers (a central Harbor: RS256 or ES256, a PEM public key or certificate).
//! Verified tokens are remembered, so a request pays a hash-map lookup, not a signature
//! check.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64;
use ring::rand::{SecureRandom, SystemRandom};
use ring::signature::{self, EcdsaKeyPair, KeyPair, UnparsedPublicKey};
use serde::{Deserialize, Serialize};

use crate::AuthError;
use crate::scope::ResourceActions;
use crate::time::now_secs;

/// DER prefix of a P-256 SubjectPublicKeyInfo, before the 65-byte uncompressed point.
const P256_SPKI_PREFIX: [u8; 26] = [
    0x30, 0x59, 0x30, 0x13, 0x06, 0x07, 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x02, 0x01, 0x06, 0x08, 0x2a,
    0x86, 0x48, 0xce, 0x3d, 0x03, 0x01, 0x07, 0x03, 0x42, 0x00,
];
const OID_EC_PUBLIC_KEY: &[u8] = &[0x2a, 0x86, 0x48, 0xce, 0x3d, 0x02, 0x01];
const OID_RSA_ENCRYPTION: &[u8] = &[0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x01, 0x01];

/// Clock skew tolerated on `nbf` and `iat` from other issuers.
const LEEWAY_SECS: u64 = 30;

/// `aud` is a string or an array of strings in JWTs.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum Audience {
    One(String),
    Many(Vec<String>),
}

impl Audience {
    fn contains(&self, service: &str) -> bool {
        match self {
            Audience::One(a) => a == service,
            Audience::Many(v) => v.iter().any(|a| a == service),
        }
    }
}

/// What Pier puts in (and reads from) a token: distribution's claim set plus three private
/// claims (`groups`; `pier_use` = `refresh` for refresh tokens, and `pier_cred` in them:
/// the credential they are bound to, see [`crate::authn::Authenticator::refresh_binding`]).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Claims {
    pub iss: String,
    #[serde(default)]
    pub sub: String,
    pub aud: Audience,
    pub exp: u64,
    #[serde(default)]
    pub nbf: u64,
    #[serde(default)]
    pub iat: u64,
    #[serde(default)]
    pub jti: String,
    #[serde(default)]
    pub access: Vec<ResourceActions>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub groups: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pier_use: Option<String>,
    /// Refresh tokens: a digest of the account's credential when the token was issued.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pier_cred: Option<String>,
}

impl Claims {
    /// Whether the token grants `action` on the resource.
    pub fn allows(&self, kind: &str, name: &str, action: &str) -> bool {
        self.access
            .iter()
            .any(|a| a.kind == kind && a.name == name && a.allows(action))
    }

    fn is_refresh(&self) -> bool {
        self.pier_use.as_deref() == Some("refresh")
    }
}

#[derive(Serialize, Deserialize)]
struct Header {
    alg: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    typ: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    kid: Option<String>,
}

/// The gateway's own signing key (ECDSA P-256).
pub struct SigningKey {
    pair: EcdsaKeyPair,
    kid: String,
    rng: SystemRandom,
}

impl SigningKey {
    /// Reads a PKCS#8 PEM key, or generates one and writes it (mode 0600) when the file
    /// does not exist yet.
    pub fn load_or_generate(path: &Path) -> Result<SigningKey, AuthError> {
        match std::fs::read(path) {
            Ok(pem) => SigningKey::from_pem(&pem)
                .map_err(|e| AuthError::Key(format!("{}: {e}", path.display()))),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                let rng = SystemRandom::new();
                let doc =
                    EcdsaKeyPair::generate_pkcs8(&signature::ECDSA_P256_SHA256_FIXED_SIGNING, &rng)
                        .map_err(|_| AuthError::Key("could not generate a key".into()))?;
                let pem = pem_encode("PRIVATE KEY", doc.as_ref());
                if let Some(dir) = path.parent() {
                    std::fs::create_dir_all(dir).map_err(|e| AuthError::io(dir, e))?;
                }
                write_private(path, pem.as_bytes()).map_err(|e| AuthError::io(path, e))?;
                SigningKey::from_pem(pem.as_bytes())
            }
            Err(e) => Err(AuthError::io(path, e)),
        }
    }

    pub fn from_pem(pem: &[u8]) -> Result<SigningKey, AuthError> {
        let der = pem_block(pem, "PRIVATE KEY")
            .ok_or_else(|| AuthError::Key("expected a PKCS#8 \"PRIVATE KEY\" PEM block".into()))?;
        let rng = SystemRandom::new();
        let pair =
            EcdsaKeyPair::from_pkcs8(&signature::ECDSA_P256_SHA256_FIXED_SIGNING, &der, &rng)
                .map_err(|e| AuthError::Key(format!("not an ECDSA P-256 PKCS#8 key: {e}")))?;
        let kid = hex_prefix(&ring::digest::digest(&ring::digest::SHA256, &spki(&pair)));
        Ok(SigningKey { pair, kid, rng })
    }

    /// The public half as a PEM `PUBLIC KEY`, for other gateways' `trusted_issuers`.
    pub fn public_key_pem(&self) -> String {
        pem_encode("PUBLIC KEY", &spki(&self.pair))
    }

    fn verify_key(&self) -> VerifyKey {
        VerifyKey::EcP256(self.pair.public_key().as_ref().to_vec())
    }

    fn sign(&self, claims: &Claims) -> Result<String, AuthError> {
        let header = Header {
            alg: "ES256".into(),
            typ: Some("JWT".into()),
            kid: Some(self.kid.clone()),
        };
        let enc = |v: &[u8]| B64.encode(v);
        let h = serde_json::to_vec(&header).map_err(|e| AuthError::Key(e.to_string()))?;
        let c = serde_json::to_vec(claims).map_err(|e| AuthError::Key(e.to_string()))?;
        let input = format!("{}.{}", enc(&h), enc(&c));
        let sig = self
            .pair
            .sign(&self.rng, input.as_bytes())
            .map_err(|_| AuthError::Key("signing failed".into()))?;
        Ok(format!("{input}.{}", enc(sig.as_ref())))
    }

    fn random_id(&self) -> String {
        let mut b = [0u8; 16];
        // SystemRandom only fails when the OS has no randomness at all.
        let _ = self.rng.fill(&mut b);
        b.iter().map(|x| format!("{x:02x}")).collect()
    }
}

fn spki(pair: &EcdsaKeyPair) -> Vec<u8> {
    let mut v = P256_SPKI_PREFIX.to_vec();
    v.extend_from_slice(pair.public_key().as_ref());
    v
}

fn hex_prefix(d: &ring::digest::Digest) -> String {
    d.as_ref()[..12]
        .iter()
        .map(|x| format!("{x:02x}"))
        .collect()
}

#[cfg(unix)]
fn write_private(path: &Path, data: &[u8]) -> std::io::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let tmp = path.with_extension("tmp");
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&tmp)?;
    f.write_all(data)?;
    f.sync_all()?;
    std::fs::rename(&tmp, path)
}

fn pem_encode(label: &str, der: &[u8]) -> String {
    let b64 = base64::engine::general_purpose::STANDARD.encode(der);
    let mut out = format!("-----BEGIN {label}-----\n");
    for chunk in b64.as_bytes().chunks(64) {
        out.push_str(std::str::from_utf8(chunk).unwrap_or_default());
        out.push('\n');
    }
    out.push_str(&format!("-----END {label}-----\n"));
    out
}

/// The DER of the first PEM block with this label (`PRIVATE KEY` is PKCS#8).
fn pem_block(pem: &[u8], label: &str) -> Option<Vec<u8>> {
    use rustls_pki_types::pem::{PemObject, SectionKind};
    let want = match label {
        "PRIVATE KEY" => SectionKind::PrivateKey,
        "CERTIFICATE" => SectionKind::Certificate,
        "PUBLIC KEY" => SectionKind::PublicKey,
        _ => return None,
    };
    <(SectionKind, Vec<u8>)>::pem_slice_iter(pem)
        .map_while(Result::ok)
        .find(|(kind, _)| *kind == want)
        .map(|(_, der)| der)
}

/// A key tokens may be signed with.
#[derive(Clone)]
enum VerifyKey {
    /// Uncompressed P-256 point (ES256).
    EcP256(Vec<u8>),
    /// PKCS#1 RSAPublicKey (RS256).
    Rsa(Vec<u8>),
}

impl VerifyKey {
    /// From a PEM `PUBLIC KEY` or `CERTIFICATE`.
    fn from_pem(pem: &[u8]) -> Result<VerifyKey, String> {
        let spki = if let Some(der) = pem_block(pem, "PUBLIC KEY") {
            der
        } else if let Some(der) = pem_block(pem, "CERTIFICATE") {
            der::certificate_spki(&der).ok_or("could not read the certificate's public key")?
        } else {
            return Err("expected a PEM \"PUBLIC KEY\" or \"CERTIFICATE\"".into());
        };
        let (oid, key) = der::spki_parts(&spki).ok_or("malformed SubjectPublicKeyInfo")?;
        if oid == OID_EC_PUBLIC_KEY && key.len() == 65 {
            Ok(VerifyKey::EcP256(key.to_vec()))
        } else if oid == OID_RSA_ENCRYPTION {
            Ok(VerifyKey::Rsa(key.to_vec()))
        } else {
            Err("unsupported key type: use ECDSA P-256 (ES256) or RSA (RS256)".into())
        }
    }

    fn verify(&self, alg: &str, msg: &[u8], sig: &[u8]) -> bool {
        match (self, alg) {
            (VerifyKey::EcP256(k), "ES256") => {
                UnparsedPublicKey::new(&signature::ECDSA_P256_SHA256_FIXED, k)
                    .verify(msg, sig)
                    .is_ok()
            }
            (VerifyKey::Rsa(k), "RS256") => {
                UnparsedPublicKey::new(&signature::RSA_PKCS1_2048_8192_SHA256, k)
                    .verify(msg, sig)
                    .is_ok()
            }
            _ => false,
        }
    }
}

/// A trusted external issuer: tokens with `iss` = `issuer` signed by `key`.
pub struct TrustedIssuer {
    issuer: String,
    key: VerifyKey,
}

impl TrustedIssuer {
    pub fn from_pem(issuer: &str, pem: &[u8]) -> Result<TrustedIssuer, AuthError> {
        let key = VerifyKey::from_pem(pem)
            .map_err(|e| AuthError::Key(format!("trusted issuer {issuer:?}: {e}")))?;
        Ok(TrustedIssuer {
            issuer: issuer.to_owned(),
            key,
        })
    }
}

/// A freshly issued token and what the token endpoint says about it.
pub struct Issued {
    pub token: String,
    pub expires_in: u64,
    pub issued_at: u64,
}

/// Settings of the token service.
pub struct TokenSettings {
    /// `iss` of the tokens this gateway signs.
    pub issuer: String,
    /// The `service` clients ask for; becomes `aud`.
    pub service: String,
    /// Access token lifetime.
    pub ttl: Duration,
    /// Refresh token lifetime (`offline_token=true`, OAuth2 `access_type=offline`).
    pub refresh_ttl: Duration,
}

/// Issues and verifies tokens.
pub struct TokenService {
    key: SigningKey,
    settings: TokenSettings,
    trusted: Vec<TrustedIssuer>,
    verified: moka::sync::Cache<String, Arc<Claims>>,
}

impl TokenService {
    pub fn new(
        key: SigningKey,
        settings: TokenSettings,
        trusted: Vec<TrustedIssuer>,
    ) -> TokenService {
        TokenService {
            key,
            settings,
            trusted,
            verified: moka::sync::Cache::builder()
                .max_capacity(100_000)
                .time_to_live(Duration::from_secs(300))
                .build(),
        }
    }

    pub fn service(&self) -> &str {
        &self.settings.service
    }

    pub fn issuer(&self) -> &str {
        &self.settings.issuer
    }

    pub fn public_key_pem(&self) -> String {
        self.key.public_key_pem()
    }

    /// Signs an access token for `sub` granting `access`.
    pub fn issue(
        &self,
        sub: &str,
        groups: &[String],
        access: Vec<ResourceActions>,
    ) -> Result<Issued, AuthError> {
        let now = now_secs();
        let ttl = self.settings.ttl.as_secs().max(1);
        let claims = Claims {
            iss: self.settings.issuer.clone(),
            sub: sub.to_owned(),
            aud: Audience::One(self.settings.service.clone()),
            exp: now + ttl,
            nbf: now.saturating_sub(1),
            iat: now,
            jti: self.key.random_id(),
            access,
            groups: groups.to_vec(),
            pier_use: None,
            pier_cred: None,
        };
        Ok(Issued {
            token: self.key.sign(&claims)?,
            expires_in: ttl,
            issued_at: now,
        })
    }

    /// Signs a refresh token for `sub` bound to its credential (`binding`, from
    /// [`crate::authn::Authenticator::refresh_binding`]); only this gateway accepts it, only
    /// at its token endpoint.
    pub fn issue_refresh(&self, sub: &str, binding: &str) -> Result<String, AuthError> {
        let now = now_secs();
        let claims = Claims {
            iss: self.settings.issuer.clone(),
            sub: sub.to_owned(),
            aud: Audience::One(self.settings.service.clone()),
            exp: now + self.settings.refresh_ttl.as_secs().max(1),
            nbf: now.saturating_sub(1),
            iat: now,
            jti: self.key.random_id(),
            access: Vec::new(),
            groups: Vec::new(),
            pier_use: Some("refresh".into()),
            pier_cred: Some(binding.to_owned()),
        };
        self.key.sign(&claims)
    }

    /// Verifies an access token (own or from a trusted issuer). Cached per token.
    pub fn verify(&self, token: &str) -> Result<Arc<Claims>, AuthError> {
        let claims = match self.verified.get(token) {
            Some(c) => c,
            None => {
                let c = Arc::new(self.verify_uncached(token)?);
                if c.is_refresh() {
                    return Err(AuthError::InvalidToken(
                        "a refresh token is not an access token".into(),
                    ));
                }
                self.verified.insert(token.to_owned(), c.clone());
                c
            }
        };
        if claims.exp <= now_secs() {
            self.verified.invalidate(token);
            return Err(AuthError::TokenExpired);
        }
        Ok(claims)
    }

    /// Verifies a refresh token this gateway issued; returns its claims (`sub`, `jti`, and
    /// `pier_cred` for [`crate::authn::Authenticator::refresh_subject`] to check).
    pub fn verify_refresh(&self, token: &str) -> Result<Claims, AuthError> {
        let c = self.verify_any(token)?;
        if !c.is_refresh() || c.iss != self.settings.issuer {
            return Err(AuthError::InvalidToken(
                "not a refresh token of this service".into(),
            ));
        }
        Ok(c)
    }

    /// Verifies an access or refresh token (signature, audience, not expired), uncached:
    /// for revoking it.
    pub fn verify_any(&self, token: &str) -> Result<Claims, AuthError> {
        let c = self.verify_uncached(token)?;
        if c.exp <= now_secs() {
            return Err(AuthError::TokenExpired);
        }
        Ok(c)
    }

    fn verify_uncached(&self, token: &str) -> Result<Claims, AuthError> {
        let bad = |m: &str| AuthError::InvalidToken(m.to_owned());
        let mut parts = token.splitn(3, '.');
        let (h, c, s) = match (parts.next(), parts.next(), parts.next()) {
            (Some(h), Some(c), Some(s)) => (h, c, s),
            _ => return Err(bad("not a JWT")),
        };
        let header: Header =
            serde_json::from_slice(&B64.decode(h).map_err(|_| bad("bad header encoding"))?)
                .map_err(|_| bad("bad header"))?;
        let claims: Claims =
            serde_json::from_slice(&B64.decode(c).map_err(|_| bad("bad claims encoding"))?)
                .map_err(|e| AuthError::InvalidToken(format!("bad claims: {e}")))?;
        let sig = B64.decode(s).map_err(|_| bad("bad signature encoding"))?;
        let msg = &token.as_bytes()[..h.len() + 1 + c.len()];
        let own = claims.iss == self.settings.issuer
            && self.key.verify_key().verify(&header.alg, msg, &sig);
        let trusted = own
            || self
                .trusted
                .iter()
                .filter(|t| t.issuer == claims.iss)
                .any(|t| t.key.verify(&header.alg, msg, &sig));
        if !trusted {
            return Err(bad("signature not valid for any trusted issuer"));
        }
        if !claims.aud.contains(&self.settings.service) {
            return Err(bad("issued for another service"));
        }
        let now = now_secs();
        if claims.nbf > now + LEEWAY_SECS || claims.iat > now + LEEWAY_SECS {
            return Err(bad("not valid yet"));
        }
        if claims.exp <= now {
            return Err(AuthError::TokenExpired);
        }
        Ok(claims)
    }
}

/// Just enough DER to find a public key in a certificate.
mod der {
    /// Reads one TLV: (tag, contents, rest).
    fn tlv(b: &[u8]) -> Option<(u8, &[u8], &[u8])> {
        let tag = *b.first()?;
        let first = *b.get(1)?;
        let (len, hdr) = if first < 0x80 {
            (first as usize, 2)
        } else {
            let n = (first & 0x7f) as usize;
            if n == 0 || n > 4 {
                return None;
            }
            let mut len = 0usize;
            for i in 0..n {
                len = (len << 8) | *b.get(2 + i)? as usize;
            }
            (len, 2 + n)
        };
        let end = hdr.checked_add(len)?;
        Some((tag, b.get(hdr..end)?, b.get(end..)?))
    }

    /// (algorithm OID, key bytes) of a SubjectPublicKeyInfo.
    pub fn spki_parts(spki: &[u8]) -> Option<(&[u8], &[u8])> {
        let (0x30, body, _) = tlv(spki)? else {
            return None;
        };
        let (0x30, alg, rest) = tlv(body)? else {
            return None;
        };
        let (0x06, oid, _) = tlv(alg)? else {
            return None;
        };
        let (0x03, bits, _) = tlv(rest)? else {
            return None;
        };
        let (&unused, key) = bits.split_first()?;
        (unused == 0).then_some((oid, key))
    }

    /// The SubjectPublicKeyInfo (whole TLV) of an X.509 certificate.
    pub fn certificate_spki(cert: &[u8]) -> Option<Vec<u8>> {
        let (0x30, body, _) = tlv(cert)? else {
            return None;
        };
        let (0x30, mut tbs, _) = tlv(body)? else {
            return None;
        };
        // [0] version (optional), serial, signature, issuer, validity, subject, spki
        if tbs.first() == Some(&0xa0) {
            tbs = tlv(tbs)?.2;
        }
        for _ in 0..5 {
            tbs = tlv(tbs)?.2;
        }
        let (tag, contents, rest) = tlv(tbs)?;
        (tag == 0x30)
            .then(|| tbs[..tbs.len() - rest.len()].to_vec())
            .filter(|_| !contents.is_empty())
    }
}

/// Token verification on anything a client may present (the stable-toolchain stand-in
/// for a fuzz target of the JWT parser: it runs with every `cargo test`).
#[cfg(test)]
mod jwt_props {
    use base64::Engine as _;
    use proptest::prelude::*;

    use super::*;

    fn b64(b: &[u8]) -> String {
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(b)
    }

    /// One service for every case (a key is generated once).
    fn service() -> &'static TokenService {
        static SERVICE: std::sync::OnceLock<(tempfile::TempDir, TokenService)> =
            std::sync::OnceLock::new();
        &SERVICE
            .get_or_init(|| {
                let dir = tempfile::tempdir().unwrap();
                let key = SigningKey::load_or_generate(&dir.path().join("k.pem")).unwrap();
                let s = TokenService::new(
                    key,
                    TokenSettings {
                        issuer: "edge".into(),
                        service: "pier".into(),
                        ttl: Duration::from_secs(60),
                        refresh_ttl: Duration::from_secs(60),
                    },
                    vec![],
                );
                (dir, s)
            })
            .1
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(2048))]

        #[test]
        fn any_string_is_refused_without_panicking(t in any::<String>()) {
            let s = service();
            prop_assert!(s.verify(&t).is_err());
            prop_assert!(s.verify_refresh(&t).is_err());
        }

        #[test]
        fn jwt_shaped_tokens_with_any_header_and_claims_are_refused(
            header in prop::collection::vec(any::<u8>(), 0..200),
            claims in prop::collection::vec(any::<u8>(), 0..400),
            sig in prop::collection::vec(any::<u8>(), 0..100),
            alg in prop::sample::select(vec!["ES256", "RS256", "none", "HS256", ""]),
        ) {
            let s = service();
            for h in [header.clone(), format!(r#"{{"alg":"{alg}","typ":"JWT"}}"#).into_bytes()] {
                let t = format!("{}.{}.{}", b64(&h), b64(&claims), b64(&sig));
                prop_assert!(s.verify(&t).is_err());
            }
        }

        #[test]
        fn a_real_token_with_any_byte_changed_is_refused(at in any::<prop::sample::Index>(), to in any::<u8>()) {
            let s = service();
            let t = s.issue("alice", &[], vec![]).unwrap().token;
            let mut b = t.clone().into_bytes();
            let i = at.index(b.len());
            prop_assume!(b[i] != to);
            b[i] = to;
            if let Ok(changed) = String::from_utf8(b) {
                // Base64 may decode two spellings to the same bytes; anything else fails.
                if let Ok(c) = s.verify(&changed) {
                    prop_assert_eq!(&c.sub, "alice");
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn service(dir: &Path, issuer: &str, ttl: u64, trusted: Vec<TrustedIssuer>) -> TokenService {
        let key = SigningKey::load_or_generate(&dir.join(format!("{issuer}.pem"))).unwrap();
        TokenService::new(
            key,
            TokenSettings {
                issuer: issuer.into(),
                service: "pier".into(),
                ttl: Duration::from_secs(ttl),
                refresh_ttl: Duration::from_secs(3600),
            },
            trusted,
        )
    }

    #[test]
    fn issues_and_verifies_with_a_kept_key() {
        let dir = tempfile::tempdir().unwrap();
        let s = service(dir.path(), "edge", 60, vec![]);
        let access = vec![ResourceActions::parse("repository:team/app:pull").unwrap()];
        let t = s.issue("alice", &[], access).unwrap();
        let c = s.verify(&t.token).unwrap();
        assert_eq!(c.sub, "alice");
        assert!(c.allows("repository", "team/app", "pull"));
        assert!(!c.allows("repository", "team/app", "push"));
        // The same key is read back on the next start: old tokens stay valid.
        let again = service(dir.path(), "edge", 60, vec![]);
        assert!(again.verify(&t.token).is_ok());
    }

    #[test]
    fn refuses_tampered_foreign_and_refresh_tokens() {
        let dir = tempfile::tempdir().unwrap();
        let s = service(dir.path(), "edge", 60, vec![]);
        let t = s.issue("bob", &[], vec![]).unwrap().token;
        let mut parts: Vec<&str> = t.split('.').collect();
        let forged = B64.encode(br#"{"iss":"edge","sub":"admin","aud":"pier","exp":99999999999}"#);
        parts[1] = &forged;
        assert!(matches!(
            s.verify(&parts.join(".")),
            Err(AuthError::InvalidToken(_))
        ));
        let other = service(dir.path(), "central", 60, vec![]);
        let foreign = other.issue("bob", &[], vec![]).unwrap().token;
        assert!(s.verify(&foreign).is_err());
        let r = s.issue_refresh("bob", "cred").unwrap();
        assert!(s.verify(&r).is_err(), "refresh token used as access token");
        let c = s.verify_refresh(&r).unwrap();
        assert_eq!(c.sub, "bob");
        assert_eq!(c.pier_cred.as_deref(), Some("cred"));
        assert!(s.verify_refresh(&t).is_err());
    }

    #[test]
    fn accepts_a_trusted_issuers_tokens_by_public_key() {
        let dir = tempfile::tempdir().unwrap();
        let central = service(dir.path(), "central", 60, vec![]);
        let trusted =
            TrustedIssuer::from_pem("central", central.public_key_pem().as_bytes()).unwrap();
        let edge = service(dir.path(), "edge", 60, vec![trusted]);
        let t = central.issue("carol", &[], vec![]).unwrap().token;
        assert_eq!(edge.verify(&t).unwrap().sub, "carol");
        // Same key but a different issuer name is not trusted.
        let wrong = TrustedIssuer::from_pem("other", central.public_key_pem().as_bytes()).unwrap();
        let edge2 = service(dir.path(), "edge2", 60, vec![wrong]);
        assert!(edge2.verify(&t).is_err());
    }

    #[test]
    fn expired_tokens_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let s = service(dir.path(), "edge", 1, vec![]);
        let t = s.issue("alice", &[], vec![]).unwrap().token;
        assert!(s.verify(&t).is_ok());
        std::thread::sleep(Duration::from_millis(2100));
        assert!(matches!(s.verify(&t), Err(AuthError::TokenExpired)));
    }
}
