//! Pier authorizer plugins written in Python (componentize-py) and JavaScript
//! (componentize-js), built from `plugins/polyglot/` for tests that load them into a
//! `pier` process.
//!
//! The toolchains are installed by `plugins/polyglot/install.sh` (pinned versions, run by
//! `scripts/install-test-deps.sh`) under
//! `$PIER_POLYGLOT_DIR`, default `~/.cache/pier/polyglot`. Their builds are not
//! byte-reproducible (a temp path and interpreter state end up in the snapshot), so a
//! build is kept under a key of its inputs: an unchanged tree reuses the same `.wasm`,
//! and so Pier's compile cache (keyed by the component's sha256) keeps hitting.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

use sha2::{Digest, Sha256};

pub const COMPONENTIZE_PY: &str = "0.25.1";
pub const COMPONENTIZE_JS: &str = "0.23.0";

/// The built components.
#[derive(Debug, Clone)]
pub struct PolyglotPaths {
    pub python: PathBuf,
    pub javascript: PathBuf,
}

/// Where the toolchains are: `$PIER_POLYGLOT_DIR`, else `~/.cache/pier/polyglot`.
pub fn toolchain_dir() -> PathBuf {
    match std::env::var_os("PIER_POLYGLOT_DIR") {
        Some(d) if !d.is_empty() => PathBuf::from(d),
        _ => PathBuf::from(std::env::var_os("HOME").unwrap_or_else(|| "/root".into()))
            .join(".cache/pier/polyglot"),
    }
}

/// sha256 over the files under `dirs` (sorted relative paths and contents) and `extra`.
fn inputs_key(dirs: &[&Path], extra: &str) -> String {
    let mut files = Vec::new();
    for d in dirs {
        let mut stack = vec![d.to_path_buf()];
        while let Some(p) = stack.pop() {
            for e in std::fs::read_dir(&p).unwrap_or_else(|e| panic!("{}: {e}", p.display())) {
                let path = e.expect("dir entry").path();
                let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("");
                if name.starts_with('.') || name == "__pycache__" {
                    continue;
                }
                if path.is_dir() {
                    stack.push(path)
                } else {
                    files.push(path)
                }
            }
        }
    }
    files.sort();
    let mut h = Sha256::new();
    h.update(extra.as_bytes());
    for f in files {
        h.update(f.to_string_lossy().as_bytes());
        h.update([0]);
        h.update(std::fs::read(&f).unwrap_or_else(|e| panic!("{}: {e}", f.display())));
        h.update([0]);
    }
    hex::encode(&h.finalize()[..12])
}

fn run(mut cmd: Command, what: &str) {
    let out = cmd.output().unwrap_or_else(|e| {
        panic!("{what}: running {cmd:?}: {e} (run plugins/polyglot/install.sh)")
    });
    assert!(
        out.status.success(),
        "{what} failed ({}): {cmd:?}\n--- stdout:\n{}\n--- stderr:\n{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Builds both plugins against `wit_dir` into `out_root/<key>/` unless that build exists.
/// `src` holds `python/app.py`, `js/authorizer.js`, `build-py.sh`, `build-js.mjs`.
/// The two builds run side by side (about 10 s and 15 s on the 2-core machine).
pub fn build_in(src: &Path, wit_dir: &Path, out_root: &Path) -> PolyglotPaths {
    let tools = toolchain_dir();
    let key = inputs_key(
        &[src, wit_dir],
        &format!("componentize-py {COMPONENTIZE_PY}; componentize-js {COMPONENTIZE_JS}"),
    );
    let dir = out_root.join(&key);
    let paths = PolyglotPaths {
        python: dir.join("authorizer-py.wasm"),
        javascript: dir.join("authorizer-js.wasm"),
    };
    if paths.python.is_file() && paths.javascript.is_file() {
        return paths;
    }
    std::fs::create_dir_all(&dir).expect("create the polyglot output dir");
    // Write to temp names and rename, so that an interrupted build is never reused.
    let (py_tmp, js_tmp) = (dir.join("py.wasm.tmp"), dir.join("js.wasm.tmp"));
    let mut py = Command::new("sh");
    py.arg(src.join("build-py.sh"))
        .arg(wit_dir)
        .arg(&py_tmp)
        .env("COMPONENTIZE_PY", tools.join("venv/bin/componentize-py"));
    let mut js = Command::new("node");
    js.arg(src.join("build-js.mjs"))
        .arg(wit_dir)
        .arg(&js_tmp)
        .env("COMPONENTIZE_JS_DIR", tools.join("js"));
    std::thread::scope(|s| {
        let a = s.spawn(|| run(py, "componentize-py"));
        let b = s.spawn(|| run(js, "componentize-js"));
        a.join().expect("python build thread");
        b.join().expect("javascript build thread");
    });
    std::fs::rename(&py_tmp, &paths.python).expect("rename the python build");
    std::fs::rename(&js_tmp, &paths.javascript).expect("rename the javascript build");
    paths
}

/// [`build_in`] for the repository's `plugins/polyglot` and `wit`, into
/// `<target>/wasm-plugins/polyglot`, once per test process.
pub fn build() -> &'static PolyglotPaths {
    static BUILT: OnceLock<PolyglotPaths> = OnceLock::new();
    BUILT.get_or_init(|| {
        let root = crate::manifest_dir()
            .parent()
            .expect("tests/ has a parent")
            .to_path_buf();
        build_in(
            &root.join("plugins").join("polyglot"),
            &root.join("wit"),
            &crate::plugins::target_dir().join("polyglot"),
        )
    })
}
