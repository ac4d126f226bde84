//! The engine, the linker and the compile cache, shared by every plugin.

use std::hash::{Hash, Hasher};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use sha2::{Digest as _, Sha256};
use wasmtime::component::{Component, HasSelf, Linker};
use wasmtime::{Config, Engine};

use crate::bindings::Authorizer;
use crate::error::PluginError;
use crate::host::HostState;
use crate::outbound::OutboundHttp;

/// How often the epoch advances; deadlines are counted in these ticks.
pub(crate) const TICK: Duration = Duration::from_millis(2);

/// One wasmtime engine and linker for every plugin of the process.
pub struct Runtime {
    pub(crate) engine: Engine,
    pub(crate) linker: Linker<HostState>,
    cache_dir: PathBuf,
    stop: Arc<AtomicBool>,
    /// The client of every plugin's `http-outbound`.
    pub(crate) http: OutboundHttp,
}

impl Runtime {
    /// `cache_dir` keeps compiled components (`<sha256>-<engine>.cwasm`).
    pub fn new(cache_dir: &Path) -> Result<Runtime, PluginError> {
        let mut cfg = Config::new();
        cfg.epoch_interruption(true);
        cfg.wasm_component_model(true);
        cfg.max_wasm_stack(512 << 10);
        // Plugins get their linear memory from the StoreLimits cap; keep the virtual
        // reservation modest so many warm instances don't reserve 4 GiB each.
        cfg.memory_reservation(1 << 30);
        let engine = Engine::new(&cfg).map_err(|e| PluginError::Runtime(format!("{e:#}")))?;
        let mut linker: Linker<HostState> = Linker::new(&engine);
        wasmtime_wasi::p2::add_to_linker_async(&mut linker)
            .map_err(|e| PluginError::Runtime(format!("linking WASI: {e:#}")))?;
        Authorizer::add_to_linker::<HostState, HasSelf<HostState>>(&mut linker, |s| s)
            .map_err(|e| PluginError::Runtime(format!("linking host capabilities: {e:#}")))?;
        crate::bindings::admission::pier::plugin::registry_read::add_to_linker::<
            HostState,
            HasSelf<HostState>,
        >(&mut linker, |s| s)
        .map_err(|e| PluginError::Runtime(format!("linking registry-read: {e:#}")))?;
        crate::bindings::admission::pier::plugin::crypto::add_to_linker::<
            HostState,
            HasSelf<HostState>,
        >(&mut linker, |s| s)
        .map_err(|e| PluginError::Runtime(format!("linking crypto: {e:#}")))?;
        // The same capabilities under their 0.1.0 names, for components built against
        // that version (`crate::compat`).
        crate::bindings::v0_1::Admission::add_to_linker::<HostState, HasSelf<HostState>>(
            &mut linker,
            |s| s,
        )
        .map_err(|e| PluginError::Runtime(format!("linking the 0.1.0 capabilities: {e:#}")))?;
        std::fs::create_dir_all(cache_dir)
            .map_err(|e| PluginError::Runtime(format!("creating {}: {e}", cache_dir.display())))?;
        let stop = Arc::new(AtomicBool::new(false));
        let (e, s) = (engine.clone(), stop.clone());
        std::thread::Builder::new()
            .name("pier-plugin-epoch".into())
            .spawn(move || {
                while !s.load(Ordering::Relaxed) {
                    std::thread::sleep(TICK);
                    e.increment_epoch();
                }
            })
            .map_err(|e| PluginError::Runtime(format!("starting the epoch ticker: {e}")))?;
        Ok(Runtime {
            engine,
            linker,
            cache_dir: cache_dir.to_owned(),
            http: OutboundHttp::from_env()
                .map_err(|e| PluginError::Runtime(format!("proxy settings: {e}")))?,
            stop,
        })
    }

    /// Compiles a component, or loads it from the cache when this exact component was
    /// compiled before by a compatible engine. Returns it with its sha256 digest and a flag:
    /// whether it came from the cache (`true`) or was compiled now.
    pub(crate) fn compile_or_load(
        &self,
        name: &str,
        path: &Path,
    ) -> Result<(Component, String, bool), PluginError> {
        compile(&self.engine, &self.cache_dir, name, path)
    }

    /// Puts a component into the compile cache (on a blocking thread); `Ok(true)` when
    /// it was compiled now, `Ok(false)` when the cache had it (not loaded: the plugin's
    /// own load reads it).
    pub async fn precompile(&self, name: &str, path: &Path) -> Result<bool, PluginError> {
        let (engine, dir) = (self.engine.clone(), self.cache_dir.clone());
        let (n, p) = (name.to_owned(), path.to_owned());
        tokio::task::spawn_blocking(move || {
            let (_, _, cached) = cache_entry(&engine, &dir, &n, &p)?;
            if cached.exists() {
                return Ok(false);
            }
            compile(&engine, &dir, &n, &p).map(|(_, _, c)| !c)
        })
        .await
        .map_err(|e| PluginError::Runtime(format!("compile task failed: {e}")))?
    }

    /// [`compile_or_load`](Self::compile_or_load) on a blocking thread, off the async workers.
    pub(crate) async fn compile_async(
        &self,
        name: &str,
        path: &Path,
    ) -> Result<(Component, String), PluginError> {
        let (engine, dir) = (self.engine.clone(), self.cache_dir.clone());
        let (n, p) = (name.to_owned(), path.to_owned());
        tokio::task::spawn_blocking(move || compile(&engine, &dir, &n, &p).map(|(c, d, _)| (c, d)))
            .await
            .map_err(|e| PluginError::Runtime(format!("compile task failed: {e}")))?
    }
}

/// A component's bytes, sha256 digest and where its compiled form is kept (named by the
/// digest and the engine's compatibility hash).
fn cache_entry(
    engine: &Engine,
    cache_dir: &Path,
    name: &str,
    path: &Path,
) -> Result<(Vec<u8>, String, PathBuf), PluginError> {
    let bytes = std::fs::read(path).map_err(|source| PluginError::Read {
        name: name.to_owned(),
        path: path.to_owned(),
        source,
    })?;
    let digest = hex::encode(Sha256::digest(&bytes));
    let mut h = std::collections::hash_map::DefaultHasher::new();
    engine.precompile_compatibility_hash().hash(&mut h);
    let cached = cache_dir.join(format!("{digest}-{:016x}.cwasm", h.finish()));
    Ok((bytes, digest, cached))
}

fn compile(
    engine: &Engine,
    cache_dir: &Path,
    name: &str,
    path: &Path,
) -> Result<(Component, String, bool), PluginError> {
    let (bytes, digest, cached) = cache_entry(engine, cache_dir, name, path)?;
    if cached.exists() {
        match load_cached(engine, &cached) {
            Ok(c) => return Ok((c, digest, true)),
            Err(e) => {
                tracing::warn!(path = %cached.display(), error = %e, "compile cache entry unusable; recompiling")
            }
        }
    }
    // wasmtime's messages can span lines (byte dumps): keep them on one.
    let invalid = |message: String| PluginError::Invalid {
        name: name.to_owned(),
        path: path.to_owned(),
        message: message.split_whitespace().collect::<Vec<_>>().join(" "),
    };
    let artifact = engine
        .precompile_component(&bytes)
        .map_err(|e| invalid(format!("{e:#}")))?;
    // A temp name of its own: two loads of the same file may race here.
    let tmp = cached.with_extension(
        format!(
            "{}.{:?}.tmp",
            std::process::id(),
            std::thread::current().id()
        )
        .replace(['(', ')'], ""),
    );
    if std::fs::write(&tmp, &artifact)
        .and_then(|_| std::fs::rename(&tmp, &cached))
        .is_err()
    {
        let _ = std::fs::remove_file(&tmp);
        tracing::warn!(dir = %cache_dir.display(), "could not write the compile cache");
        return Component::new(engine, &bytes)
            .map(|c| (c, digest, false))
            .map_err(|e| invalid(format!("{e:#}")));
    }
    load_cached(engine, &cached)
        .map(|c| (c, digest, false))
        .map_err(|e| invalid(format!("{e:#}")))
}

/// Loads a precompiled artifact from the cache.
#[allow(unsafe_code)]
fn load_cached(engine: &Engine, path: &Path) -> wasmtime::Result<Component> {
    // SAFETY: wasmtime requires that deserialized artifacts come from a trusted
    // `precompile_component` of a compatible engine. This cache directory is Pier's
    // own (under its data root), every file in it is written by `Runtime::compile`
    // above through a temp file + rename, and its name carries the engine's
    // compatibility hash; wasmtime also checks the artifact's header and version.
    unsafe { Component::deserialize_file(engine, path) }
}

impl Drop for Runtime {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}
