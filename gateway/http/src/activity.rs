//! Manifest pulls reported to a [`PullRecorder`] (the binary keeps when each tag and
//! digest was last pulled, for the admin API). Unlike an [`crate::events::EventSink`],
//! recording is synchronous and must stay an in-memory update: it runs on every pull.

use pier_oci::{Reference, RepoName};

/// Where pulls are noted.
pub trait PullRecorder: Send + Sync {
    /// A manifest of `repo` was served to a GET, named by tag or by digest.
    fn pulled(&self, repo: &RepoName, reference: &Reference);
}
