//! `pier plugin check FILE.wasm`: compile a component, check it against the worlds,
//! and list what it imports and exports.

use std::path::Path;
use std::sync::Arc;

use wasmtime::component::Component;

use crate::error::PluginError;
use crate::runtime::Runtime;
use crate::world::{Pre, World};

/// What `check` found.
#[derive(Debug)]
pub struct CheckReport {
    pub digest: String,
    pub size: u64,
    pub imports: Vec<String>,
    pub exports: Vec<String>,
    /// Worlds the component implements (empty: none), in [`World::ALL`] order;
    /// `managed-authorizer` follows `authorizer` when it also exports `projects`,
    /// `managed-replicator` follows `replicator` when it also exports `rules`.
    pub worlds: Vec<&'static str>,
    /// Whether the compiled component came from the compile cache.
    pub cached: bool,
    /// The version of `pier:plugin` it was built against ([`crate::world::VERSIONS`]).
    pub version: &'static str,
    /// When it implements none: why not, one line per world (`authorizer: ...`).
    pub problems: Vec<String>,
}

/// Checks a component file.
pub fn check(runtime: &Arc<Runtime>, path: &Path) -> Result<CheckReport, PluginError> {
    let size = std::fs::metadata(path)
        .map_err(|source| PluginError::Read {
            name: path.display().to_string(),
            path: path.to_owned(),
            source,
        })?
        .len();
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let (component, digest, cached): (Component, String, bool) =
        runtime.compile_or_load(&name, path)?;
    let ty = component.component_type();
    let engine = &runtime.engine;
    let imports = ty.imports(engine).map(|(n, _)| n.to_owned()).collect();
    let exports = ty.exports(engine).map(|(n, _)| n.to_owned()).collect();
    let mut worlds = Vec::new();
    let mut problems = Vec::new();
    let mut version = crate::world::VERSIONS[0];
    match runtime.linker.instantiate_pre(&component) {
        Ok(pre) => {
            version = crate::world::built_against(&pre);
            for world in World::ALL {
                match Pre::new(world, pre.clone()) {
                    Ok(p) => {
                        worlds.push(world.as_str());
                        if p.manages_projects() {
                            worlds.push("managed-authorizer");
                        }
                        if p.manages_rules() {
                            worlds.push("managed-replicator");
                        }
                    }
                    Err(e) => problems.push(format!("{world}: {e:#}")),
                }
            }
        }
        Err(e) => {
            for world in World::ALL {
                problems.push(format!("{world}: {e:#}"));
            }
        }
    }
    if !worlds.is_empty() {
        problems.clear();
    }
    Ok(CheckReport {
        digest,
        size,
        imports,
        exports,
        worlds,
        cached,
        version,
        problems,
    })
}
