//! Runs Pier's WebAssembly plugins: the only crate that uses wasmtime.
//!
//! - [`Runtime`]: one wasmtime engine (epoch interruption, a ticker thread), one linker
//!   with WASI 0.2 (empty context: no files, sockets, environment) and Pier's host
//!   capabilities, a compile cache on disk keyed by the component's digest.
//! - [`Plugin`]: a loaded component: its `InstancePre`, a pool of warm instances, a
//!   semaphore capping concurrent calls, a deadline and a memory cap per call.
//! - [`PluginAuthorizer`]: implements [`pier_auth::Authorizer`] with the current version
//!   of an authorizer plugin and swaps versions on [`PluginAuthorizer::reload`] without
//!   dropping in-flight calls.
//! - [`PluginNotifier`] and [`PluginReplicator`]: the `notifier` and `replicator` worlds
//!   on the same pools and limits: a [`PluginEvent`] in, [`Delivery`]s or
//!   [`ReplicationAction`]s out, a [`PluginFailure`] when the plugin misbehaved.
//! - [`PluginAdmission`]: implements [`pier_auth::admission::Admission`] with an
//!   admission plugin (world `admission`), whose `registry-read` reads the content of the
//!   repository in question during the call.
//! - [`RuleStore`]: the rules of a replicator plugin that manages them (world
//!   `managed-replicator`), implemented by [`PluginReplicator`].
//! - [`check`]: what `pier plugin check FILE.wasm` prints.
#![deny(unsafe_code)]
#![deny(rust_2018_idioms)]

mod bindings {
    wasmtime::component::bindgen!({
        path: "../../wit",
        world: "authorizer",
        imports: { default: async },
        exports: { default: async },
    });

    /// The other worlds import the same interfaces: reuse the authorizer's types and
    /// host traits (one `HostState` implementation, one linker for every world).
    macro_rules! sharing_the_authorizer_imports {
        ($(#[$doc:meta])* $module:ident, $world:tt) => {
            $(#[$doc])*
            pub(crate) mod $module {
                wasmtime::component::bindgen!({
                    path: "../../wit",
                    world: $world,
                    imports: { default: async },
                    exports: { default: async },
                    with: {
                        "pier:plugin/types": crate::bindings::pier::plugin::types,
                        "pier:plugin/log": crate::bindings::pier::plugin::log,
                        "pier:plugin/config": crate::bindings::pier::plugin::config,
                        "pier:plugin/kv": crate::bindings::pier::plugin::kv,
                        "pier:plugin/http-outbound": crate::bindings::pier::plugin::http_outbound,
                        "pier:plugin/ldap": crate::bindings::pier::plugin::ldap,
                    },
                });
            }
        };
    }

    sharing_the_authorizer_imports!(notifier, "notifier");
    sharing_the_authorizer_imports!(
        /// Only its `projects` export is used: the authorizer part comes from above.
        managed,
        "managed-authorizer"
    );
    sharing_the_authorizer_imports!(
        /// Only its `rules` export is used: the replicator part comes from below.
        managed_replicator,
        "managed-replicator"
    );
    sharing_the_authorizer_imports!(replicator, "replicator");
    sharing_the_authorizer_imports!(
        /// Also generates `registry-read` (its host side is in `crate::admission`).
        admission,
        "admission"
    );
    /// The contract as it was in `pier:plugin@0.1.0` (`wit/v0.1.0`), for components built
    /// against it: the host interfaces under their 0.1.0 names (world `admission`
    /// imports them all), and the exports whose types or names changed in 0.2.0.
    pub(crate) mod v0_1 {
        wasmtime::component::bindgen!({
            path: "../../wit/v0.1.0",
            world: "admission",
            imports: { default: async },
            exports: { default: async },
        });

        macro_rules! sharing_the_old_imports {
            ($module:ident, $world:tt) => {
                pub(crate) mod $module {
                    wasmtime::component::bindgen!({
                        path: "../../wit/v0.1.0",
                        world: $world,
                        imports: { default: async },
                        exports: { default: async },
                        with: {
                            "pier:plugin/types": crate::bindings::v0_1::pier::plugin::types,
                            "pier:plugin/log": crate::bindings::v0_1::pier::plugin::log,
                            "pier:plugin/config": crate::bindings::v0_1::pier::plugin::config,
                            "pier:plugin/kv": crate::bindings::v0_1::pier::plugin::kv,
                            "pier:plugin/http-outbound": crate::bindings::v0_1::pier::plugin::http_outbound,
                            "pier:plugin/ldap": crate::bindings::v0_1::pier::plugin::ldap,
                        },
                    });
                }
            };
        }

        sharing_the_old_imports!(authorizer, "authorizer");
        sharing_the_old_imports!(managed, "managed-authorizer");
        sharing_the_old_imports!(managed_replicator, "managed-replicator");
    }

    /// Retention imports the host interfaces but no shared type.
    pub(crate) mod retention {
        wasmtime::component::bindgen!({
            path: "../../wit",
            world: "retention",
            imports: { default: async },
            exports: { default: async },
            with: {
                "pier:plugin/log": crate::bindings::pier::plugin::log,
                "pier:plugin/config": crate::bindings::pier::plugin::config,
                "pier:plugin/kv": crate::bindings::pier::plugin::kv,
                "pier:plugin/http-outbound": crate::bindings::pier::plugin::http_outbound,
                "pier:plugin/ldap": crate::bindings::pier::plugin::ldap,
            },
        });
    }
}

mod admission;
mod authorizer;
mod check;
mod compat;
mod directory;
mod error;
mod events;
mod hook;
mod host;
pub mod kv;
mod metrics;
mod outbound;
mod plugin;
mod retention;
pub mod rules;
mod runtime;
mod world;

pub use admission::PluginAdmission;
pub use authorizer::PluginAuthorizer;
pub use check::{CheckReport, check};
pub use directory::LdapDirectory;
pub use error::{PluginError, PluginFailure};
pub use events::{
    Delivery, EventKind, MAX_ACTIONS, MAX_DELIVERIES, MAX_DELIVERY_BODY, PluginEvent,
    PluginNotifier, PluginReplicator, ReplicationAction, ReplicationDirection,
};
pub use hook::Announcer;
pub use host::Grants;
pub use kv::{KvFault, KvPlace, KvStore};
pub use metrics::{PluginMetrics, PluginSeries};
pub use plugin::{Plugin, PluginSettings};
pub use retention::PluginRetention;
pub use rules::{Rule, RuleError, RuleSource, RuleStore, RuleTrigger};
pub use runtime::Runtime;
pub use world::World;
