//! Pier's WebAssembly plugins, built from source (the `plugins/` workspace) once per
//! test process, for tests that load them into the plugin host or into a `pier` process.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

/// The built components (`.wasm` files).
#[derive(Debug, Clone)]
pub struct PluginPaths {
    /// `plugins/rbac`: Harbor-style RBAC.
    pub rbac: PathBuf,
    /// `plugins/template`: the starting point for users' own authorizers.
    pub template: PathBuf,
    /// `plugins/hostile`: misbehaves on purpose (tests only).
    pub hostile: PathBuf,
    /// `plugins/webhook`: a notifier, JSON webhooks with filters.
    pub webhook: PathBuf,
    /// `plugins/replicate`: a replicator, Harbor-like rules.
    pub replicate: PathBuf,
    /// `plugins/hostile-events`: a notifier and replicator that misbehaves on purpose.
    pub hostile_events: PathBuf,
    /// `plugins/immutable`: an admission plugin, immutable tags.
    pub immutable: PathBuf,
    /// `plugins/signatures`: an admission plugin, signed images only.
    pub signatures: PathBuf,
    /// `plugins/retain`: a retention plugin, Harbor's rule shapes.
    pub retain: PathBuf,
    /// `plugins/probe`: an authorizer denying with the request's context (tests only).
    pub probe: PathBuf,
    /// `plugins/legacy`: a managed authorizer built against `pier:plugin@0.1.0`.
    pub legacy: PathBuf,
}

/// Environment variables of the outer build that would change the nested one (flags
/// meant for the host target, another target or target directory, a jobserver).
const LEAKY_ENV: [&str; 9] = [
    "RUSTFLAGS",
    "CARGO_ENCODED_RUSTFLAGS",
    "CARGO_BUILD_RUSTFLAGS",
    "CARGO_BUILD_TARGET",
    "CARGO_BUILD_TARGET_DIR",
    "CARGO_TARGET_DIR",
    "CARGO_MAKEFLAGS",
    "MAKEFLAGS",
    "MFLAGS",
];

/// Leaves out of a nested cargo build the outer build's [`LEAKY_ENV`] and its per-target
/// flags, linkers and runners (`CARGO_TARGET_<TRIPLE>_RUSTFLAGS`, ...).
fn without_outer_build_env(cmd: &mut Command) {
    for k in LEAKY_ENV {
        cmd.env_remove(k);
    }
    for (k, _) in std::env::vars_os() {
        if let Some(k) = k.to_str()
            && k.starts_with("CARGO_TARGET_")
        {
            cmd.env_remove(k);
        }
    }
}

/// The repository root (the parent of this crate).
fn repo_root() -> PathBuf {
    crate::manifest_dir()
        .parent()
        .expect("tests/ has a parent")
        .to_path_buf()
}

/// Where the plugins are built: `$CARGO_TARGET_DIR/wasm-plugins`, else
/// `<repo>/target/wasm-plugins`.
pub fn target_dir() -> PathBuf {
    match std::env::var_os("CARGO_TARGET_DIR") {
        Some(t) if !t.is_empty() => PathBuf::from(t).join("wasm-plugins"),
        _ => repo_root().join("target").join("wasm-plugins"),
    }
}

/// Builds the plugins workspace (`cargo build --release --target wasm32-wasip2`) the
/// first time it is called in this process and returns the components. Panics with
/// cargo's output when the build fails. Concurrent test processes are serialized by
/// cargo's own lock on the target directory; a build with nothing to do takes well
/// under a second.
pub fn build() -> &'static PluginPaths {
    static BUILT: OnceLock<PluginPaths> = OnceLock::new();
    BUILT.get_or_init(|| {
        let manifest = repo_root().join("plugins").join("Cargo.toml");
        let target = target_dir();
        let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
        let mut cmd = Command::new(&cargo);
        cmd.args([
            "build",
            "--release",
            "--locked",
            "--target",
            "wasm32-wasip2",
        ])
        .arg("--manifest-path")
        .arg(&manifest)
        .arg("--target-dir")
        .arg(&target);
        without_outer_build_env(&mut cmd);
        let out = cmd.output().unwrap_or_else(|e| {
            panic!(
                "running {} to build the plugins: {e}",
                Path::new(&cargo).display()
            )
        });
        assert!(
            out.status.success(),
            "building the plugins failed ({}): {:?}\n--- stdout:\n{}\n--- stderr:\n{}",
            out.status,
            cmd,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        // The template is a workspace of its own (so that a copy builds anywhere): built
        // into the same target directory.
        let mut template = Command::new(&cargo);
        template
            .args([
                "build",
                "--release",
                "--locked",
                "--target",
                "wasm32-wasip2",
            ])
            .arg("--manifest-path")
            .arg(
                repo_root()
                    .join("plugins")
                    .join("template")
                    .join("Cargo.toml"),
            )
            .arg("--target-dir")
            .arg(&target);
        without_outer_build_env(&mut template);
        let t = template
            .output()
            .unwrap_or_else(|e| panic!("building the template: {e}"));
        assert!(
            t.status.success(),
            "building plugins/template failed: {}",
            String::from_utf8_lossy(&t.stderr)
        );
        let dir = target.join("wasm32-wasip2").join("release");
        let wasm = |name: &str| {
            let p = dir.join(format!("{name}.wasm"));
            assert!(
                p.is_file(),
                "the plugin build succeeded but {} is missing",
                p.display()
            );
            p
        };
        PluginPaths {
            rbac: wasm("pier_rbac"),
            template: wasm("pier_template"),
            hostile: wasm("pier_hostile"),
            webhook: wasm("pier_webhook"),
            replicate: wasm("pier_replicate"),
            hostile_events: wasm("pier_hostile_events"),
            immutable: wasm("pier_immutable"),
            signatures: wasm("pier_signatures"),
            retain: wasm("pier_retain"),
            probe: wasm("pier_probe"),
            legacy: wasm("pier_legacy"),
        }
    })
}
