//! [`pier_auth::retention::RetentionPolicy`] backed by a retention plugin, with hot reload.

use async_trait::async_trait;
use pier_auth::retention::{Removal, RetentionPolicy, RetentionRequest};
use pier_auth::{PolicyError, PolicyFailure};

use crate::authorizer::tidy_reason;
use crate::bindings::retention::pier::plugin::retention_types as wit;
use crate::host::HostState;
use crate::world::World;

/// A plan gets at least this long: it sees a whole project.
const PLAN_DEADLINE: std::time::Duration = std::time::Duration::from_secs(10);
/// At most this many removals per plan.
pub const MAX_REMOVALS: usize = 100_000;

crate::hook::hook_type!(
    /// The current version of a retention plugin.
    PluginRetention,
    World::Retention
);

fn request(r: &RetentionRequest) -> wit::RetentionRequest {
    wit::RetentionRequest {
        project: r.project.clone(),
        now: r.now,
        repositories: r
            .repositories
            .iter()
            .map(|repo| wit::RepositoryInfo {
                repository: repo.repository.clone(),
                tags: repo
                    .tags
                    .iter()
                    .map(|t| wit::TagInfo {
                        tag: t.tag.clone(),
                        digest: t.digest.clone(),
                        pushed: t.pushed,
                        pulled: t.pulled,
                        size: t.size,
                    })
                    .collect(),
                untagged: repo
                    .untagged
                    .iter()
                    .map(|u| wit::UntaggedManifest {
                        digest: u.digest.clone(),
                        pushed: u.pushed,
                        size: u.size,
                    })
                    .collect(),
            })
            .collect(),
    }
}

impl wit::Host for HostState {}

#[async_trait]
impl RetentionPolicy for PluginRetention {
    fn name(&self) -> &str {
        self.hook.name()
    }

    async fn plan(&self, req: &RetentionRequest) -> Result<Vec<Removal>, PolicyError> {
        let plugin = self.hook.current();
        let wreq = request(req);
        let answer = plugin
            .with_instance_for(
                plugin.settings.timeout.max(PLAN_DEADLINE),
                async |b, store| b.retention()?.call_plan(store, &wreq).await,
            )
            .await?;
        let removals = match answer {
            Ok(r) => r,
            Err(m) => {
                return Err(plugin
                    .failure(PolicyFailure::Unavailable, tidy_reason(m))
                    .into());
            }
        };
        if removals.len() > MAX_REMOVALS {
            return Err(plugin
                .failure(
                    PolicyFailure::InvalidResult,
                    format!("{} removals, more than {MAX_REMOVALS}", removals.len()),
                )
                .into());
        }
        Ok(removals
            .into_iter()
            .map(|r| Removal {
                repository: r.repository,
                tag: r.tag,
                digest: r.digest,
                reason: tidy_reason(r.reason),
            })
            .collect())
    }
}
