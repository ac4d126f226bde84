//! Cosign-layout signatures made with openssl (ECDSA P-256): a key pair, a signed
//! simple-signing payload and its `sha256-<hex>.sig` manifest, pushed to a registry.
//! Shared by the policy tests and the console's.

use std::fs;
use std::path::{Path, PathBuf};

use pier_e2e::{openssl, push_blob_in_session, sha256_digest};
use serde_json::json;

const SIMPLE_SIGNING: &str = "application/vnd.dev.cosign.simplesigning.v1+json";
pub const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";

/// An ECDSA P-256 key pair made by openssl: (private PKCS#8 PEM, public PEM) paths.
pub struct Key {
    pub private: PathBuf,
    pub public: PathBuf,
}

impl Key {
    pub fn new(dir: &Path, name: &str) -> Key {
        let ec = format!("{name}.ec.pem");
        let private = format!("{name}.pem");
        let public = format!("{name}.pub.pem");
        openssl(
            dir,
            &[
                "ecparam",
                "-name",
                "prime256v1",
                "-genkey",
                "-noout",
                "-out",
                &ec,
            ],
        );
        openssl(
            dir,
            &["pkcs8", "-topk8", "-nocrypt", "-in", &ec, "-out", &private],
        );
        openssl(dir, &["ec", "-in", &private, "-pubout", "-out", &public]);
        Key {
            private: dir.join(private),
            public: dir.join(public),
        }
    }

    pub fn public_pem(&self) -> String {
        fs::read_to_string(&self.public).unwrap()
    }

    /// `openssl dgst -sha256 -sign`: a DER ECDSA signature of `data`.
    pub fn sign(&self, data: &[u8]) -> Vec<u8> {
        let dir = tempfile::tempdir().unwrap();
        let (input, out) = (dir.path().join("in"), dir.path().join("sig"));
        fs::write(&input, data).unwrap();
        let key = self.private.display().to_string();
        openssl(
            dir.path(),
            &["dgst", "-sha256", "-sign", &key, "-out", "sig", "in"],
        );
        fs::read(out).unwrap()
    }
}

pub fn put_manifest(
    addr: std::net::SocketAddr,
    repo: &str,
    reference: &str,
    m: &serde_json::Value,
) -> String {
    let bytes = serde_json::to_vec(m).unwrap();
    pier_e2e::push_manifest(addr, repo, reference, OCI_MANIFEST, &bytes)
        .expect_status(201, &format!("PUT {repo}:{reference}"));
    sha256_digest(&bytes)
}

/// The empty config of artifacts (`{}`), uploaded to `repo`.
pub fn empty_config(addr: std::net::SocketAddr, repo: &str) -> serde_json::Value {
    let d = push_blob_in_session(addr, repo, b"{}");
    json!({"mediaType": "application/vnd.oci.empty.v1+json", "digest": d, "size": 2})
}

/// Signs `digest` of `repo` as cosign does: a simple-signing payload and a manifest
/// tagged `sha256-<hex>.sig`. `tamper` flips a byte of the signature.
pub fn cosign_sign(addr: std::net::SocketAddr, repo: &str, digest: &str, key: &Key, tamper: bool) {
    let payload = serde_json::to_vec(&json!({"critical": {
        "identity": {"docker-reference": format!("registry.test/{repo}")},
        "image": {"docker-manifest-digest": digest},
        "type": "cosign container image signature"}, "optional": null}))
    .unwrap();
    let mut sig = key.sign(&payload);
    if tamper {
        let n = sig.len();
        sig[n - 3] ^= 0x01;
    }
    let pd = push_blob_in_session(addr, repo, &payload);
    let m = json!({"schemaVersion": 2, "mediaType": OCI_MANIFEST,
        "config": empty_config(addr, repo),
        "layers": [{"mediaType": SIMPLE_SIGNING, "digest": pd, "size": payload.len(),
            "annotations": {"dev.cosignproject.cosign/signature": pier_e2e::base64(&sig)}}]});
    let tag = format!("sha256-{}.sig", digest.strip_prefix("sha256:").unwrap());
    put_manifest(addr, repo, &tag, &m);
}
