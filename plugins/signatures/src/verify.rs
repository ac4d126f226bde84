//! What a signature is, and the decision: no WIT types, so the unit tests run on the host.
//!
//! Two signature layouts are verified, both ECDSA P-256 with SHA-256 against the
//! configured public keys:
//! - cosign's: a manifest tagged `sha256-<hex>.sig` in the same repository whose layers
//!   (`application/vnd.dev.cosign.simplesigning.v1+json`) are "simple signing" payloads
//!   naming the image's digest, each signed in the layer's
//!   `dev.cosignproject.cosign/signature` annotation (base64 DER);
//! - Sigstore bundles attached as referrers (artifact type
//!   `application/vnd.dev.sigstore.bundle.v0.3+json`): a `messageSignature` over the
//!   image manifest's bytes, or a DSSE envelope whose in-toto statement names the
//!   image's digest.
//!
//! No transparency log or certificate is checked: trust comes from the configured keys.

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as B64;
use p256::ecdsa::signature::Verifier as _;
use p256::ecdsa::{DerSignature, Signature, VerifyingKey};
use p256::pkcs8::DecodePublicKey as _;
use pier_glob as glob;
use serde::Deserialize;
use sha2::{Digest as _, Sha256};

pub const SIMPLE_SIGNING: &str = "application/vnd.dev.cosign.simplesigning.v1+json";
pub const COSIGN_SIGNATURE_ANNOTATION: &str = "dev.cosignproject.cosign/signature";
pub const BUNDLE: &str = "application/vnd.dev.sigstore.bundle.v0.3+json";
/// Also accepted: the bundle media types with a `+json;version=0.3` parameter.
const BUNDLE_PREFIX: &str = "application/vnd.dev.sigstore.bundle";
/// Signature payloads and bundles are read up to this size.
pub const MAX_PAYLOAD: u64 = 256 << 10;
/// At most this many signatures (layers, bundles) are tried per manifest.
const MAX_TRIES: usize = 16;

/// `enforce`: refuse what is not signed; `warn`: serve it, and log why it would be refused.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Mode {
    #[default]
    Enforce,
    Warn,
}

/// One rule: images of matching repositories must be signed by one of `keys`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileRule {
    #[serde(default)]
    pub name: Option<String>,
    #[serde(default)]
    pub projects: Vec<String>,
    #[serde(default)]
    pub repositories: Vec<String>,
    /// PEM public keys (`-----BEGIN PUBLIC KEY-----`, ECDSA P-256).
    pub keys: Vec<String>,
    #[serde(default)]
    pub mode: Mode,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileConfig {
    #[serde(default)]
    rules: Vec<FileRule>,
}

/// A rule with its keys parsed.
#[derive(Debug, Clone)]
pub struct Rule {
    pub name: String,
    pub projects: Vec<String>,
    pub repositories: Vec<String>,
    pub keys: Vec<VerifyingKey>,
    pub mode: Mode,
}

#[derive(Debug, Clone)]
pub struct Config {
    pub rules: Vec<Rule>,
}

impl Config {
    pub fn parse(json: &str) -> Result<Config, String> {
        let c: FileConfig = serde_json::from_str(json).map_err(|e| e.to_string())?;
        let mut rules = Vec::new();
        for (i, r) in c.rules.into_iter().enumerate() {
            let name = r.name.unwrap_or_else(|| format!("rule {}", i + 1));
            if r.keys.is_empty() {
                return Err(format!(
                    "{name}: no `keys`: list the PEM public keys to trust"
                ));
            }
            let keys = r
                .keys
                .iter()
                .enumerate()
                .map(|(k, pem)| {
                    VerifyingKey::from_public_key_pem(pem.trim()).map_err(|e| {
                        format!(
                            "{name}: key {} is not an ECDSA P-256 PEM public key: {e}",
                            k + 1
                        )
                    })
                })
                .collect::<Result<Vec<_>, String>>()?;
            rules.push(Rule {
                name,
                projects: r.projects,
                repositories: r.repositories,
                keys,
                mode: r.mode,
            });
        }
        Ok(Config { rules })
    }

    /// The first rule governing `repository` (of `project`).
    pub fn rule_for(&self, project: &str, repository: &str) -> Option<&Rule> {
        self.rules
            .iter()
            .find(|r| glob::any(&r.projects, project) && glob::any(&r.repositories, repository))
    }
}

/// Why a read gave nothing.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ReadError {
    NotFound,
    Other(String),
}

/// A manifest read from the registry.
#[derive(Debug, Clone)]
pub struct Fetched {
    pub digest: String,
    pub bytes: Vec<u8>,
}

/// What the plugin reads (the host's `registry-read`).
pub trait Reader {
    fn manifest(&self, reference: &str) -> Result<Fetched, ReadError>;
    fn blob(&self, digest: &str, max: u64) -> Result<Vec<u8>, ReadError>;
    /// The host's native ECDSA P-256 check (SEC1 key, DER signature); `None` when it
    /// is not offered (not granted): the plugin verifies itself, about 50 times slower.
    fn verify(&self, _key: &[u8], _message: &[u8], _der: &[u8]) -> Option<bool> {
        None
    }
}

/// The stages that matter here.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stage {
    Pull,
    MirrorFill,
    Other,
}

/// A referrer as the request lists it.
#[derive(Debug, Clone)]
pub struct Referrer {
    pub digest: String,
    pub artifact_type: Option<String>,
}

#[derive(Debug, Clone)]
pub struct Request<'a> {
    pub stage: Stage,
    pub project: &'a str,
    pub repository: &'a str,
    pub digest: &'a str,
    pub manifest: &'a [u8],
    pub referrers: &'a [Referrer],
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    Admit,
    /// Admitted, with what was found (logged at debug).
    Signed(String),
    Deny(String),
    /// Not signed, admitted by a `warn` rule: logged.
    Warn(String),
}

#[derive(Deserialize)]
struct Layer {
    #[serde(rename = "mediaType", default)]
    media_type: String,
    #[serde(default)]
    digest: String,
    #[serde(default)]
    annotations: std::collections::BTreeMap<String, String>,
}

#[derive(Deserialize)]
struct ManifestLayers {
    #[serde(default)]
    layers: Vec<Layer>,
}

fn layers(bytes: &[u8]) -> Vec<Layer> {
    serde_json::from_slice::<ManifestLayers>(bytes)
        .map(|m| m.layers)
        .unwrap_or_default()
}

fn is_bundle(media_type: &str) -> bool {
    media_type.starts_with(BUNDLE_PREFIX)
}

/// Whether the manifest is itself a signature (a cosign `.sig` manifest, a bundle
/// artifact): those are served so that clients can verify, never run.
pub fn is_signature_artifact(manifest: &[u8]) -> bool {
    let l = layers(manifest);
    !l.is_empty()
        && l.iter()
            .all(|l| l.media_type == SIMPLE_SIGNING || is_bundle(&l.media_type))
}

/// `sha256:<hex>` -> `sha256-<hex>.sig`.
pub fn cosign_tag(digest: &str) -> Option<String> {
    let (alg, hex) = digest.split_once(':')?;
    Some(format!("{alg}-{hex}.sig"))
}

fn verify_der(keys: &[VerifyingKey], message: &[u8], der: &[u8], reader: &dyn Reader) -> bool {
    // Natively when the host offers it.
    let mut native = None;
    for k in keys {
        let point = k.to_encoded_point(false);
        match reader.verify(point.as_bytes(), message, der) {
            Some(true) => return true,
            Some(false) => native = Some(false),
            None => {
                native = None;
                break;
            }
        }
    }
    if native.is_some() {
        return false;
    }
    let sig = match DerSignature::try_from(der) {
        Ok(s) => s,
        Err(_) => match Signature::from_slice(der) {
            Ok(s) => return keys.iter().any(|k| k.verify(message, &s).is_ok()),
            Err(_) => return false,
        },
    };
    keys.iter().any(|k| k.verify(message, &sig).is_ok())
}

fn sha256_digest(bytes: &[u8]) -> String {
    let h = Sha256::digest(bytes);
    let mut s = String::with_capacity(71);
    s.push_str("sha256:");
    for b in h {
        s.push_str(&format!("{b:02x}"));
    }
    s
}

/// The cosign simple-signing payload's binding to an image.
#[derive(Deserialize)]
struct SimpleSigning {
    critical: Critical,
}
#[derive(Deserialize)]
struct Critical {
    image: Image,
    #[serde(rename = "type")]
    kind: String,
}
#[derive(Deserialize)]
struct Image {
    #[serde(rename = "docker-manifest-digest")]
    digest: String,
}

/// Checks cosign's `.sig` manifest; `Ok(description)` when a layer verifies.
fn cosign(rule: &Rule, req: &Request<'_>, reader: &dyn Reader) -> Result<String, String> {
    let tag = cosign_tag(req.digest).ok_or("not a digest")?;
    let sig = match reader.manifest(&tag) {
        Ok(m) => m,
        Err(ReadError::NotFound) => return Err(format!("no cosign signature ({tag})")),
        Err(ReadError::Other(e)) => return Err(format!("reading {tag}: {e}")),
    };
    let mut why = format!("{tag} holds no signature layer");
    for l in layers(&sig.bytes)
        .iter()
        .filter(|l| l.media_type == SIMPLE_SIGNING)
        .take(MAX_TRIES)
    {
        let Some(b64) = l.annotations.get(COSIGN_SIGNATURE_ANNOTATION) else {
            why = format!("{tag}: a layer without a signature annotation");
            continue;
        };
        let payload = match reader.blob(&l.digest, MAX_PAYLOAD) {
            Ok(p) => p,
            Err(e) => {
                why = format!("{tag}: payload {}: {e:?}", l.digest);
                continue;
            }
        };
        if sha256_digest(&payload) != l.digest {
            why = format!("{tag}: payload does not match its digest");
            continue;
        }
        let Ok(der) = B64.decode(b64.trim()) else {
            why = format!("{tag}: the signature is not base64");
            continue;
        };
        if !verify_der(&rule.keys, &payload, &der, reader) {
            why = format!(
                "{tag}: the signature does not verify with the keys of {}",
                rule.name
            );
            continue;
        }
        match serde_json::from_slice::<SimpleSigning>(&payload) {
            Ok(p)
                if p.critical.kind == "cosign container image signature"
                    && p.critical.image.digest == req.digest =>
            {
                return Ok(format!("cosign signature {tag}"));
            }
            Ok(_) => why = format!("{tag}: a valid signature of another image"),
            Err(e) => why = format!("{tag}: the payload is not a simple signing document: {e}"),
        }
    }
    Err(why)
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct Bundle {
    #[serde(default)]
    media_type: String,
    message_signature: Option<MessageSignature>,
    dsse_envelope: Option<Envelope>,
}
#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct MessageSignature {
    message_digest: Option<MessageDigest>,
    signature: String,
}
#[derive(Deserialize)]
struct MessageDigest {
    algorithm: String,
    digest: String,
}
#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct Envelope {
    payload: String,
    payload_type: String,
    signatures: Vec<EnvelopeSignature>,
}
#[derive(Deserialize)]
struct EnvelopeSignature {
    sig: String,
}
#[derive(Deserialize)]
struct Statement {
    #[serde(default)]
    subject: Vec<StatementSubject>,
}
#[derive(Deserialize)]
struct StatementSubject {
    #[serde(default)]
    digest: std::collections::BTreeMap<String, String>,
}

/// DSSE's pre-authentication encoding.
fn pae(payload_type: &str, payload: &[u8]) -> Vec<u8> {
    let mut v = format!(
        "DSSEv1 {} {} {} ",
        payload_type.len(),
        payload_type,
        payload.len()
    )
    .into_bytes();
    v.extend_from_slice(payload);
    v
}

/// Checks one bundle against the image.
fn bundle(rule: &Rule, req: &Request<'_>, bytes: &[u8], reader: &dyn Reader) -> Result<(), String> {
    let b: Bundle = serde_json::from_slice(bytes).map_err(|e| format!("not a bundle: {e}"))?;
    if !is_bundle(&b.media_type) {
        return Err(format!("bundle media type {:?}", b.media_type));
    }
    let hex = req
        .digest
        .strip_prefix("sha256:")
        .ok_or("not a sha256 digest")?;
    if let Some(m) = b.message_signature {
        // The signed artifact is the image manifest itself.
        if let Some(d) = &m.message_digest {
            let digest = B64
                .decode(d.digest.trim())
                .map_err(|_| "digest not base64")?;
            if d.algorithm != "SHA2_256" || digest.as_slice() != &Sha256::digest(req.manifest)[..] {
                return Err("the bundle signs another artifact".into());
            }
        }
        let der = B64
            .decode(m.signature.trim())
            .map_err(|_| "signature not base64")?;
        return match verify_der(&rule.keys, req.manifest, &der, reader) {
            true => Ok(()),
            false => Err(format!(
                "the signature does not verify with the keys of {}",
                rule.name
            )),
        };
    }
    if let Some(e) = b.dsse_envelope {
        let payload = B64
            .decode(e.payload.trim())
            .map_err(|_| "payload not base64")?;
        let signed = pae(&e.payload_type, &payload);
        let ok = e.signatures.iter().take(MAX_TRIES).any(|s| {
            B64.decode(s.sig.trim())
                .is_ok_and(|der| verify_der(&rule.keys, &signed, &der, reader))
        });
        if !ok {
            return Err(format!(
                "the envelope does not verify with the keys of {}",
                rule.name
            ));
        }
        let st: Statement = serde_json::from_slice(&payload)
            .map_err(|e| format!("not an in-toto statement: {e}"))?;
        return match st
            .subject
            .iter()
            .any(|s| s.digest.get("sha256").is_some_and(|d| d == hex))
        {
            true => Ok(()),
            false => Err("the statement names another image".into()),
        };
    }
    Err("the bundle has no signature".into())
}

/// Checks the bundles attached to the image as referrers.
fn bundles(rule: &Rule, req: &Request<'_>, reader: &dyn Reader) -> Result<String, String> {
    let mut why = "no Sigstore bundle".to_owned();
    for r in req
        .referrers
        .iter()
        .filter(|r| r.artifact_type.as_deref().is_some_and(is_bundle))
        .take(MAX_TRIES)
    {
        let m = match reader.manifest(&r.digest) {
            Ok(m) => m,
            Err(e) => {
                why = format!("bundle {}: {e:?}", r.digest);
                continue;
            }
        };
        for l in layers(&m.bytes).iter().filter(|l| is_bundle(&l.media_type)) {
            let checked = reader
                .blob(&l.digest, MAX_PAYLOAD)
                .map_err(|e| format!("{e:?}"))
                .and_then(|b| match sha256_digest(&b) == l.digest {
                    true => bundle(rule, req, &b, reader),
                    false => Err("does not match its digest".into()),
                });
            match checked {
                Ok(()) => return Ok(format!("Sigstore bundle {}", r.digest)),
                Err(e) => why = format!("bundle {}: {e}", r.digest),
            }
        }
    }
    Err(why)
}

/// The decision for one request.
pub fn decide(c: &Config, req: &Request<'_>, reader: &dyn Reader) -> Outcome {
    if req.stage == Stage::Other {
        return Outcome::Admit;
    }
    let Some(rule) = c.rule_for(req.project, req.repository) else {
        return Outcome::Admit;
    };
    if is_signature_artifact(req.manifest) {
        return Outcome::Admit;
    }
    let cosign = match cosign(rule, req, reader) {
        Ok(found) => return Outcome::Signed(found),
        Err(e) => e,
    };
    let bundles = match bundles(rule, req, reader) {
        Ok(found) => return Outcome::Signed(found),
        Err(e) => e,
    };
    let reason = format!(
        "{} of {} is not signed by a key of {} ({cosign}; {bundles})",
        req.digest, req.repository, rule.name
    );
    match rule.mode {
        Mode::Enforce => Outcome::Deny(reason),
        Mode::Warn => Outcome::Warn(reason),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use p256::ecdsa::SigningKey;
    use p256::ecdsa::signature::Signer as _;
    use p256::pkcs8::EncodePublicKey as _;
    use std::collections::HashMap;

    fn key(n: u8) -> SigningKey {
        SigningKey::from_bytes(&[n; 32].into()).unwrap()
    }

    fn pem(k: &SigningKey) -> String {
        k.verifying_key()
            .to_public_key_pem(p256::pkcs8::LineEnding::LF)
            .unwrap()
    }

    fn sign(k: &SigningKey, msg: &[u8]) -> String {
        let sig: p256::ecdsa::DerSignature = k.sign(msg);
        B64.encode(sig.as_bytes())
    }

    #[derive(Default)]
    struct Fake {
        manifests: HashMap<String, Vec<u8>>,
        blobs: HashMap<String, Vec<u8>>,
        /// What the host's native check answers; `None`: not offered.
        native: Option<bool>,
    }

    impl Fake {
        fn blob(&mut self, b: &[u8]) -> String {
            let d = sha256_digest(b);
            self.blobs.insert(d.clone(), b.to_vec());
            d
        }
    }

    impl Reader for Fake {
        fn manifest(&self, reference: &str) -> Result<Fetched, ReadError> {
            self.manifests
                .get(reference)
                .map(|b| Fetched {
                    digest: sha256_digest(b),
                    bytes: b.clone(),
                })
                .ok_or(ReadError::NotFound)
        }
        fn blob(&self, digest: &str, _max: u64) -> Result<Vec<u8>, ReadError> {
            self.blobs.get(digest).cloned().ok_or(ReadError::NotFound)
        }
        fn verify(&self, key: &[u8], _message: &[u8], _der: &[u8]) -> Option<bool> {
            assert_eq!(key.len(), 65, "an uncompressed SEC1 point");
            self.native
        }
    }

    #[test]
    fn the_hosts_native_check_decides_when_offered() {
        let digest = sha256_digest(IMAGE);
        let (good, other) = (key(7), key(8));
        let c = config(&good, "enforce");
        let none: &[Referrer] = &[];
        // A good signature the host calls bad is refused, a bad one it calls good is
        // accepted: its answer is the one used.
        let mut fake = Fake::default();
        cosign_sig(&mut fake, &good, &digest, &digest);
        fake.native = Some(false);
        assert!(matches!(
            decide(&c, &request(&digest, none), &fake),
            Outcome::Deny(_)
        ));
        let mut fake = Fake::default();
        cosign_sig(&mut fake, &other, &digest, &digest);
        fake.native = Some(true);
        assert!(matches!(
            decide(&c, &request(&digest, none), &fake),
            Outcome::Signed(_)
        ));
    }

    const IMAGE: &[u8] = br#"{"schemaVersion":2,"layers":[{"mediaType":"application/vnd.oci.image.layer.v1.tar+gzip","digest":"sha256:00","size":1}]}"#;

    fn config(k: &SigningKey, mode: &str) -> Config {
        Config::parse(
            &serde_json::json!({"rules": [
                {"name": "team-keys", "projects": ["team"], "keys": [pem(k)], "mode": mode}
            ]})
            .to_string(),
        )
        .unwrap()
    }

    fn request<'a>(digest: &'a str, referrers: &'a [Referrer]) -> Request<'a> {
        Request {
            stage: Stage::Pull,
            project: "team",
            repository: "team/app",
            digest,
            manifest: IMAGE,
            referrers,
        }
    }

    /// A cosign `.sig` manifest over `digest`, signed by `k`.
    fn cosign_sig(fake: &mut Fake, k: &SigningKey, digest: &str, signed_digest: &str) {
        let payload = serde_json::json!({"critical": {
            "identity": {"docker-reference": "pier.test/team/app"},
            "image": {"docker-manifest-digest": signed_digest},
            "type": "cosign container image signature"}, "optional": null})
        .to_string();
        let pd = fake.blob(payload.as_bytes());
        let m = serde_json::json!({"schemaVersion": 2, "layers": [{
            "mediaType": SIMPLE_SIGNING, "digest": pd, "size": payload.len(),
            "annotations": {COSIGN_SIGNATURE_ANNOTATION: sign(k, payload.as_bytes())}}]});
        fake.manifests
            .insert(cosign_tag(digest).unwrap(), m.to_string().into_bytes());
    }

    #[test]
    fn cosign_signatures_by_a_configured_key_of_this_image_are_accepted() {
        let digest = sha256_digest(IMAGE);
        let (good, other) = (key(1), key(2));
        let c = config(&good, "enforce");
        let none: &[Referrer] = &[];
        // Unsigned: refused, saying what was looked for.
        let fake = Fake::default();
        let d = decide(&c, &request(&digest, none), &fake);
        assert!(
            matches!(&d, Outcome::Deny(r) if r.contains("team-keys") && r.contains(".sig")),
            "{d:?}"
        );
        // Signed by the key: accepted.
        let mut fake = Fake::default();
        cosign_sig(&mut fake, &good, &digest, &digest);
        assert!(matches!(
            decide(&c, &request(&digest, none), &fake),
            Outcome::Signed(_)
        ));
        // Signed by another key, or a signature of another image: refused.
        let mut fake = Fake::default();
        cosign_sig(&mut fake, &other, &digest, &digest);
        assert!(matches!(
            decide(&c, &request(&digest, none), &fake),
            Outcome::Deny(_)
        ));
        let mut fake = Fake::default();
        cosign_sig(&mut fake, &good, &digest, &sha256_digest(b"another"));
        let d = decide(&c, &request(&digest, none), &fake);
        assert!(
            matches!(&d, Outcome::Deny(r) if r.contains("another image")),
            "{d:?}"
        );
        // A tampered payload: its digest no longer matches.
        let mut fake = Fake::default();
        cosign_sig(&mut fake, &good, &digest, &digest);
        for b in fake.blobs.values_mut() {
            b[10] ^= 1;
        }
        assert!(matches!(
            decide(&c, &request(&digest, none), &fake),
            Outcome::Deny(_)
        ));
        // warn: served, with the reason.
        let c = config(&good, "warn");
        assert!(matches!(
            decide(&c, &request(&digest, none), &Fake::default()),
            Outcome::Warn(_)
        ));
        // Other repositories, other stages, and signatures themselves: not checked.
        let c = config(&good, "enforce");
        let mut r = request(&digest, none);
        r.project = "other";
        assert_eq!(decide(&c, &r, &Fake::default()), Outcome::Admit);
        let mut r = request(&digest, none);
        r.stage = Stage::Other;
        assert_eq!(decide(&c, &r, &Fake::default()), Outcome::Admit);
        let sig = br#"{"layers":[{"mediaType":"application/vnd.dev.cosign.simplesigning.v1+json","digest":"sha256:1"}]}"#;
        let mut r = request(&digest, none);
        r.manifest = sig;
        assert_eq!(decide(&c, &r, &Fake::default()), Outcome::Admit);
    }

    /// A bundle referrer over the image manifest, as @sigstore/sign makes it.
    fn bundle_referrer(fake: &mut Fake, k: &SigningKey, signed: &[u8]) -> Referrer {
        let b = serde_json::json!({
            "mediaType": BUNDLE,
            "verificationMaterial": {"publicKey": {"hint": "k"}, "tlogEntries": []},
            "messageSignature": {
                "messageDigest": {"algorithm": "SHA2_256", "digest": B64.encode(Sha256::digest(signed))},
                "signature": sign(k, signed)}})
        .to_string();
        let bd = fake.blob(b.as_bytes());
        let m = serde_json::json!({"schemaVersion": 2, "artifactType": BUNDLE,
            "layers": [{"mediaType": BUNDLE, "digest": bd, "size": b.len()}]})
        .to_string();
        let md = sha256_digest(m.as_bytes());
        fake.manifests.insert(md.clone(), m.into_bytes());
        Referrer {
            digest: md,
            artifact_type: Some(BUNDLE.into()),
        }
    }

    #[test]
    fn bundle_referrers_signing_this_manifest_with_a_configured_key_are_accepted() {
        let digest = sha256_digest(IMAGE);
        let (good, other) = (key(3), key(4));
        let c = config(&good, "enforce");
        let mut fake = Fake::default();
        let r = [bundle_referrer(&mut fake, &good, IMAGE)];
        assert!(matches!(
            decide(&c, &request(&digest, &r), &fake),
            Outcome::Signed(_)
        ));
        let mut fake = Fake::default();
        let r = [bundle_referrer(&mut fake, &other, IMAGE)];
        assert!(matches!(
            decide(&c, &request(&digest, &r), &fake),
            Outcome::Deny(_)
        ));
        let mut fake = Fake::default();
        let r = [bundle_referrer(&mut fake, &good, b"another manifest")];
        let d = decide(&c, &request(&digest, &r), &fake);
        assert!(
            matches!(&d, Outcome::Deny(r) if r.contains("another artifact")),
            "{d:?}"
        );
    }

    #[test]
    fn a_dsse_envelope_naming_this_image_verifies() {
        let digest = sha256_digest(IMAGE);
        let k = key(5);
        let hex = digest.strip_prefix("sha256:").unwrap();
        let statement = serde_json::json!({"_type": "https://in-toto.io/Statement/v1",
            "subject": [{"name": "team/app", "digest": {"sha256": hex}}],
            "predicateType": "https://sigstore.dev/cosign/sign/v1", "predicate": {}})
        .to_string();
        let t = "application/vnd.in-toto+json";
        let b = serde_json::json!({"mediaType": BUNDLE, "dsseEnvelope": {
            "payload": B64.encode(&statement), "payloadType": t,
            "signatures": [{"sig": sign(&k, &pae(t, statement.as_bytes())), "keyid": ""}]}})
        .to_string();
        let rule = &config(&k, "enforce").rules[0];
        let fake = Fake::default();
        assert_eq!(
            bundle(rule, &request(&digest, &[]), b.as_bytes(), &fake),
            Ok(())
        );
        let wrong = &config(&key(6), "enforce").rules[0];
        assert!(bundle(wrong, &request(&digest, &[]), b.as_bytes(), &fake).is_err());
    }

    #[test]
    fn keys_must_be_p256_pem_and_rules_must_have_keys() {
        assert!(Config::parse(r#"{"rules":[{"keys":[]}]}"#).is_err());
        let e = Config::parse(r#"{"rules":[{"name":"x","keys":["junk"]}]}"#).unwrap_err();
        assert!(e.contains("x: key 1"), "{e}");
        assert!(Config::parse(r#"{"rules":[{"keys":["k"],"mode":"maybe"}]}"#).is_err());
    }
}
