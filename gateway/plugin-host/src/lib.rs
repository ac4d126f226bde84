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
}

mod authorizer;
mod check;
mod error;
mod host;
mod metrics;
mod plugin;
mod runtime;

pub use authorizer::PluginAuthorizer;
pub use check::{CheckReport, check};
pub use error::PluginError;
pub use host::Grants;
pub use metrics::PluginMetrics;
pub use plugin::{Plugin, PluginSettings};
pub use runtime::Runtime;
