//! [`pier_auth::admission::Admission`] backed by an admission plugin, with hot reload, and
//! the host side of `registry-read`.

use std::sync::Arc;

use async_trait::async_trait;
use pier_auth::admission::{
    Admission, AdmissionRequest, ContentReader, MAX_READ, ReadError, Stage,
};
use pier_auth::{Decision, PolicyError};

use crate::authorizer::{subject, tidy_reason};
use crate::bindings::admission::pier::plugin::admission_types as wit;
use crate::bindings::admission::pier::plugin::crypto;
use crate::bindings::admission::pier::plugin::registry_read as rr;
use crate::bindings::pier::plugin::types;
use crate::host::HostState;
use crate::world::World;

crate::hook::hook_type!(
    /// The current version of an admission plugin.
    PluginAdmission,
    World::Admission
);

fn stage(s: Stage) -> wit::Stage {
    match s {
        Stage::Push => wit::Stage::Push,
        Stage::MirrorFill => wit::Stage::MirrorFill,
        Stage::Pull => wit::Stage::Pull,
        Stage::Delete => wit::Stage::Delete,
    }
}

fn request(r: &AdmissionRequest) -> wit::AdmissionRequest {
    wit::AdmissionRequest {
        stage: stage(r.stage),
        repository: r.repository.clone(),
        project: r.project().to_owned(),
        tag: r.tag.clone(),
        digest: r.digest.clone(),
        media_type: r.media_type.clone(),
        manifest: r.manifest.to_vec(),
        manifest_size: r.manifest_size,
        subject_digest: r.subject_digest.clone(),
        referrers: r
            .referrers
            .iter()
            .map(|f| wit::Referrer {
                digest: f.digest.clone(),
                media_type: f.media_type.clone(),
                artifact_type: f.artifact_type.clone(),
                annotations: f.annotations.clone(),
            })
            .collect(),
        signature_tags: r.signature_tags.clone(),
        current_digest: r.current_digest.clone(),
        tags: r.tags.clone(),
        caller: subject(&r.caller),
        client: r.client.clone(),
    }
}

impl PluginAdmission {
    /// The `repositories` patterns of the loaded version (empty: every repository).
    pub fn repositories(&self) -> Vec<String> {
        self.hook.current().settings.repositories.clone()
    }
}

#[async_trait]
impl Admission for PluginAdmission {
    fn name(&self) -> &str {
        // The name never changes across reloads: the hook's first version's.
        self.hook.name()
    }

    fn governs(&self, repository: &str) -> bool {
        let plugin = self.hook.current();
        let patterns = &plugin.settings.repositories;
        patterns.is_empty() || pier_glob::any(patterns, repository)
    }

    fn generation(&self) -> u64 {
        self.hook.generation()
    }

    async fn admit(
        &self,
        req: &AdmissionRequest,
        content: Arc<dyn ContentReader>,
    ) -> Result<Decision, PolicyError> {
        let plugin = self.hook.current();
        let wreq = request(req);
        let d = plugin
            .with_instance(async |b, store| {
                store.data_mut().content = Some(content);
                let d = b.admission()?.call_admit(&mut *store, &wreq).await;
                store.data_mut().content = None;
                d
            })
            .await?;
        Ok(match d {
            types::Decision::Allow => Decision::Allow,
            types::Decision::Deny(reason) => {
                self.hook.metrics().denial();
                Decision::Deny(tidy_reason(reason))
            }
        })
    }
}

impl wit::Host for HostState {}

fn read_error(e: ReadError) -> rr::ReadError {
    match e {
        ReadError::NotFound => rr::ReadError::NotFound,
        ReadError::TooLarge => rr::ReadError::TooLarge,
        ReadError::Unavailable(m) => rr::ReadError::Unavailable(m),
    }
}

impl HostState {
    /// The content of the call in progress, when `registry` is granted.
    fn content(&self) -> Result<Arc<dyn ContentReader>, rr::ReadError> {
        match (&self.content, self.caps.grants.registry) {
            (Some(c), true) => Ok(c.clone()),
            _ => Err(rr::ReadError::Denied),
        }
    }
}

impl rr::Host for HostState {
    async fn manifest(&mut self, reference: String) -> Result<rr::ManifestContent, rr::ReadError> {
        let m = self
            .content()?
            .manifest(&reference)
            .await
            .map_err(read_error)?;
        Ok(rr::ManifestContent {
            digest: m.digest,
            media_type: m.media_type,
            bytes: m.bytes.to_vec(),
        })
    }

    async fn blob(&mut self, digest: String, max_size: u64) -> Result<Vec<u8>, rr::ReadError> {
        let b = self
            .content()?
            .blob(&digest, max_size.min(MAX_READ))
            .await
            .map_err(read_error)?;
        Ok(b.to_vec())
    }
}

impl crypto::Host for HostState {
    async fn verify_ecdsa_p256_sha256(
        &mut self,
        public_key: Vec<u8>,
        message: Vec<u8>,
        signature: Vec<u8>,
    ) -> Result<bool, crypto::CryptoError> {
        if !self.caps.grants.crypto {
            return Err(crypto::CryptoError::Denied);
        }
        if public_key.len() != 65 || public_key[0] != 4 {
            return Err(crypto::CryptoError::InvalidKey);
        }
        let key = ring::signature::UnparsedPublicKey::new(
            &ring::signature::ECDSA_P256_SHA256_ASN1,
            public_key,
        );
        Ok(key.verify(&message, &signature).is_ok())
    }
}
