#![no_main]
//! What a client can present as a token, and what an operator can configure as a trusted
//! issuer's key: JWTs whose header and claims are arbitrary JSON (reached before the
//! signature check), whole arbitrary strings, and PEM/DER bytes for a certificate or key.
//! Nothing panics, and nothing unsigned is accepted.
use std::sync::OnceLock;
use std::time::Duration;

use base64::Engine as _;
use libfuzzer_sys::fuzz_target;
use pier_auth::token::{SigningKey, TokenService, TokenSettings, TrustedIssuer};

fn service() -> &'static TokenService {
    static SERVICE: OnceLock<(tempfile::TempDir, TokenService)> = OnceLock::new();
    &SERVICE
        .get_or_init(|| {
            let dir = tempfile::tempdir().unwrap();
            let key = SigningKey::load_or_generate(&dir.path().join("k.pem")).unwrap();
            let settings = TokenSettings {
                issuer: "edge".into(),
                service: "pier".into(),
                ttl: Duration::from_secs(60),
                refresh_ttl: Duration::from_secs(60),
            };
            (dir, TokenService::new(key, settings, vec![]))
        })
        .1
}

fn refused(token: &str) {
    let s = service();
    assert!(s.verify(token).is_err());
    assert!(s.verify_refresh(token).is_err());
    assert!(s.verify_any(token).is_err());
}

fuzz_target!(|data: &[u8]| {
    let Some((&mode, rest)) = data.split_first() else {
        return;
    };
    match mode % 3 {
        // A JWT built from three arbitrary parts (split at 0xff): the header and the claims
        // reach serde_json, the signature reaches ring.
        0 => {
            let b64 = |b: &[u8]| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(b);
            let mut parts = rest.splitn(3, |&b| b == 0xff);
            let (h, c, s) = (
                parts.next().unwrap_or_default(),
                parts.next().unwrap_or_default(),
                parts.next().unwrap_or_default(),
            );
            refused(&format!("{}.{}.{}", b64(h), b64(c), b64(s)));
        }
        // The bytes as the token itself.
        1 => refused(&String::from_utf8_lossy(rest)),
        // A trusted issuer's certificate or public key (PEM, DER inside).
        _ => {
            let _ = TrustedIssuer::from_pem("x", rest);
        }
    }
});
