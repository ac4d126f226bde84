//! Registry operations reported to an [`EventSink`] (the binary records them as events for
//! webhooks and replication). A push is answered only once its event is recorded, so a
//! crash right after the answer loses no event.

use async_trait::async_trait;
use pier_oci::{Digest, RepoName, Tag};

/// What happened to a manifest.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ManifestAction {
    Pushed,
    Pulled,
    Deleted,
}

/// One manifest operation.
#[derive(Debug, Clone)]
pub struct ManifestEvent {
    pub action: ManifestAction,
    pub repository: RepoName,
    pub tag: Option<Tag>,
    pub digest: Option<Digest>,
    pub media_type: Option<String>,
    pub size: Option<u64>,
    /// Who did it (the authenticated subject), when known.
    pub actor: Option<String>,
}

/// Where operations are recorded.
#[async_trait]
pub trait EventSink: Send + Sync {
    /// Records the event durably. An error fails the request with 503 (the operation
    /// itself took effect; the client's retry records it again).
    async fn record(&self, event: ManifestEvent) -> Result<(), String>;
    /// Whether pulls are recorded (they are many; off unless configured).
    fn wants_pulls(&self) -> bool;
}
