//! `pier plugin check FILE.wasm`: compile a component, check it against the worlds,
//! and list what it imports and exports.

use std::path::Path;
use std::sync::Arc;

use wasmtime::component::Component;

use crate::bindings::AuthorizerPre;
use crate::error::PluginError;
use crate::runtime::Runtime;

/// What `check` found.
#[derive(Debug)]
pub struct CheckReport {
    pub digest: String,
    pub size: u64,
    pub imports: Vec<String>,
    pub exports: Vec<String>,
    /// Worlds the component implements (empty: none).
    pub worlds: Vec<&'static str>,
    /// Why it does not implement the worlds it doesn't.
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
    let (component, digest): (Component, String) = runtime.compile(&name, path)?;
    let ty = component.component_type();
    let engine = &runtime.engine;
    let imports = ty.imports(engine).map(|(n, _)| n.to_owned()).collect();
    let exports = ty.exports(engine).map(|(n, _)| n.to_owned()).collect();
    let mut worlds = Vec::new();
    let mut problems = Vec::new();
    match runtime
        .linker
        .instantiate_pre(&component)
        .map_err(|e| format!("{e:#}"))
        .and_then(|pre| AuthorizerPre::new(pre).map_err(|e| format!("{e:#}")))
    {
        Ok(_) => worlds.push("authorizer"),
        Err(e) => problems.push(format!("authorizer: {e}")),
    }
    Ok(CheckReport {
        digest,
        size,
        imports,
        exports,
        worlds,
        problems,
    })
}
