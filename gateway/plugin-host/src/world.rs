//! The worlds of `wit/` a plugin can implement: one [`Pre`] per loaded plugin, one
//! [`Bindings`] per warm instance. Every world links against the same host state and
//! linker, so the instance pool in [`crate::plugin`] serves them all.

use wasmtime::Store;
use wasmtime::component::InstancePre;

use crate::bindings::admission::{Admission, AdmissionPre};
use crate::bindings::managed::exports::pier::plugin::projects;
use crate::bindings::managed_replicator::exports::pier::plugin::rules;
use crate::bindings::notifier::{Notifier, NotifierPre};
use crate::bindings::replicator::{Replicator, ReplicatorIndices};
use crate::bindings::retention::{Retention, RetentionPre};
use crate::bindings::v0_1;
use crate::compat;
use crate::host::HostState;

/// The package versions a component may be built against, newest first.
pub const VERSIONS: [&str; 2] = ["0.2.0", "0.1.0"];

/// Export indices of one version or the other.
pub(crate) enum Either<N, O> {
    /// Built against 0.2.0.
    New(N),
    /// Built against 0.1.0.
    Old(O),
}

type AuthorizerIndices =
    Either<crate::bindings::AuthorizerIndices, v0_1::authorizer::AuthorizerIndices>;
type ProjectsIndices =
    Either<projects::GuestIndices, v0_1::managed::exports::pier::plugin::projects::GuestIndices>;
type RulesIndices = Either<
    rules::GuestIndices,
    v0_1::managed_replicator::exports::pier::plugin::rules::GuestIndices,
>;

/// The version of `pier:plugin` whose interfaces a component imports or exports:
/// 0.1.0 when any name carries `@0.1.0`, else 0.2.0.
pub(crate) fn built_against(pre: &InstancePre<HostState>) -> &'static str {
    let engine = pre.engine();
    let ty = pre.component().component_type();
    let old = |name: &str| name.starts_with("pier:plugin/") && name.ends_with("@0.1.0");
    if ty.imports(engine).any(|(n, _)| old(n)) || ty.exports(engine).any(|(n, _)| old(n)) {
        VERSIONS[1]
    } else {
        VERSIONS[0]
    }
}

/// A hook of `package pier:plugin`: which world a plugin is loaded as.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum World {
    /// `authorize` and `authenticate` ([`crate::PluginAuthorizer`]).
    Authorizer,
    /// `notify` ([`crate::PluginNotifier`]).
    Notifier,
    /// `on-event` and `on-tick` ([`crate::PluginReplicator`]).
    Replicator,
    /// `admit` ([`crate::PluginAdmission`]).
    Admission,
    /// `plan` ([`crate::PluginRetention`]).
    Retention,
}

impl World {
    pub const ALL: [World; 5] = [
        World::Authorizer,
        World::Notifier,
        World::Replicator,
        World::Admission,
        World::Retention,
    ];

    /// The world's name in WIT, e.g. `authorizer`.
    pub fn as_str(self) -> &'static str {
        match self {
            World::Authorizer => "authorizer",
            World::Notifier => "notifier",
            World::Replicator => "replicator",
            World::Admission => "admission",
            World::Retention => "retention",
        }
    }
}

impl std::fmt::Display for World {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A component linked and checked against one world.
pub(crate) enum Pre {
    /// With the `projects` export when the component has it (world `managed-authorizer`).
    Authorizer {
        pre: InstancePre<HostState>,
        indices: AuthorizerIndices,
        projects: Option<ProjectsIndices>,
    },
    Notifier(NotifierPre<HostState>),
    /// With the `rules` export when the component has it (world `managed-replicator`).
    Replicator {
        pre: InstancePre<HostState>,
        indices: ReplicatorIndices,
        rules: Option<RulesIndices>,
    },
    Admission(AdmissionPre<HostState>),
    Retention(RetentionPre<HostState>),
}

/// The exports of one instance.
pub(crate) enum Bindings {
    Authorizer(compat::Authorizer, Option<compat::Projects>),
    Notifier(Notifier),
    Replicator(Replicator, Option<compat::Rules>),
    Admission(Admission),
    Retention(Retention),
}

impl Pre {
    /// Whether an authorizer also exports `projects`.
    pub(crate) fn manages_projects(&self) -> bool {
        matches!(
            self,
            Pre::Authorizer {
                projects: Some(_),
                ..
            }
        )
    }

    /// Whether a replicator also exports `rules`.
    pub(crate) fn manages_rules(&self) -> bool {
        matches!(self, Pre::Replicator { rules: Some(_), .. })
    }

    /// Fails when the component lacks an export of `world` (or has it with another type).
    /// Exports whose shape is the same in both versions are checked with the 0.2.0
    /// bindings (component types are structural); `authorize`, `projects` and `rules`
    /// with the bindings of the version the component was built against.
    pub(crate) fn new(world: World, pre: InstancePre<HostState>) -> wasmtime::Result<Pre> {
        let old = built_against(&pre) == VERSIONS[1];
        Ok(match world {
            World::Authorizer if old => Pre::Authorizer {
                indices: Either::Old(v0_1::authorizer::AuthorizerIndices::new(&pre)?),
                projects: v0_1::managed::exports::pier::plugin::projects::GuestIndices::new(&pre)
                    .ok()
                    .map(Either::Old),
                pre,
            },
            World::Authorizer => Pre::Authorizer {
                indices: Either::New(crate::bindings::AuthorizerIndices::new(&pre)?),
                projects: projects::GuestIndices::new(&pre).ok().map(Either::New),
                pre,
            },
            World::Notifier => Pre::Notifier(NotifierPre::new(pre)?),
            World::Replicator => Pre::Replicator {
                indices: ReplicatorIndices::new(&pre)?,
                rules: if old {
                    v0_1::managed_replicator::exports::pier::plugin::rules::GuestIndices::new(&pre)
                        .ok()
                        .map(Either::Old)
                } else {
                    rules::GuestIndices::new(&pre).ok().map(Either::New)
                },
                pre,
            },
            World::Admission => Pre::Admission(AdmissionPre::new(pre)?),
            World::Retention => Pre::Retention(RetentionPre::new(pre)?),
        })
    }

    pub(crate) async fn instantiate(
        &self,
        store: &mut Store<HostState>,
    ) -> wasmtime::Result<Bindings> {
        Ok(match self {
            Pre::Authorizer {
                pre,
                indices,
                projects,
            } => {
                let instance = pre.instantiate_async(&mut *store).await?;
                let projects = match projects {
                    Some(Either::New(p)) => {
                        Some(compat::Projects::V2(p.load(&mut *store, &instance)?))
                    }
                    Some(Either::Old(p)) => {
                        Some(compat::Projects::V1(p.load(&mut *store, &instance)?))
                    }
                    None => None,
                };
                let exports = match indices {
                    Either::New(i) => compat::Authorizer::V2(i.load(&mut *store, &instance)?),
                    Either::Old(i) => compat::Authorizer::V1(i.load(&mut *store, &instance)?),
                };
                Bindings::Authorizer(exports, projects)
            }
            Pre::Notifier(p) => Bindings::Notifier(p.instantiate_async(store).await?),
            Pre::Replicator {
                pre,
                indices,
                rules,
            } => {
                let instance = pre.instantiate_async(&mut *store).await?;
                let rules = match rules {
                    Some(Either::New(r)) => {
                        Some(compat::Rules::V2(r.load(&mut *store, &instance)?))
                    }
                    Some(Either::Old(r)) => {
                        Some(compat::Rules::V1(r.load(&mut *store, &instance)?))
                    }
                    None => None,
                };
                Bindings::Replicator(indices.load(&mut *store, &instance)?, rules)
            }
            Pre::Admission(p) => Bindings::Admission(p.instantiate_async(store).await?),
            Pre::Retention(p) => Bindings::Retention(p.instantiate_async(store).await?),
        })
    }
}

fn other_world() -> wasmtime::Error {
    // Unreachable: a plugin's instances all come from its one `Pre`.
    wasmtime::Error::msg("plugin instance of another world")
}

impl Bindings {
    pub(crate) fn authorizer(&self) -> wasmtime::Result<&compat::Authorizer> {
        match self {
            Bindings::Authorizer(b, _) => Ok(b),
            _ => Err(other_world()),
        }
    }

    /// The `projects` export (`None`: the plugin doesn't manage projects).
    pub(crate) fn projects(&self) -> wasmtime::Result<Option<&compat::Projects>> {
        match self {
            Bindings::Authorizer(_, p) => Ok(p.as_ref()),
            _ => Err(other_world()),
        }
    }

    pub(crate) fn notifier(&self) -> wasmtime::Result<&Notifier> {
        match self {
            Bindings::Notifier(b) => Ok(b),
            _ => Err(other_world()),
        }
    }

    pub(crate) fn replicator(&self) -> wasmtime::Result<&Replicator> {
        match self {
            Bindings::Replicator(b, _) => Ok(b),
            _ => Err(other_world()),
        }
    }

    pub(crate) fn admission(&self) -> wasmtime::Result<&Admission> {
        match self {
            Bindings::Admission(b) => Ok(b),
            _ => Err(other_world()),
        }
    }

    pub(crate) fn retention(&self) -> wasmtime::Result<&Retention> {
        match self {
            Bindings::Retention(b) => Ok(b),
            _ => Err(other_world()),
        }
    }

    /// The `rules` export (`None`: the plugin doesn't manage rules).
    pub(crate) fn rules(&self) -> wasmtime::Result<Option<&compat::Rules>> {
        match self {
            Bindings::Replicator(_, r) => Ok(r.as_ref()),
            _ => Err(other_world()),
        }
    }
}
