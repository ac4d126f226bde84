#!/usr/bin/env bash
# The project's test command.
#
#   scripts/test.sh                    install test deps, build pier, fmt check, clippy, every test
#   scripts/test.sh ARGS...            same, but `cargo test ARGS...` instead of `cargo test --workspace`
#                                      (e.g. scripts/test.sh -p pier-e2e --test clients_skopeo)
#   PIER_SKIP_LINT=1 scripts/test.sh   skip cargo fmt --check and clippy (quick local runs)
#   tests/container-image.sh           only the container image test (the full suite runs it)
#
# The tests start their own servers (pier, dockerd, containerd, docker-registry) on free
# loopback ports with files in temp dirs, and stop them. Every temp dir of a run lives
# under one per-run directory ($TMPDIR is pointed at it), so on exit this script can
# find and stop any daemon a killed test left behind, unmount what it mounted there,
# and remove the directory.
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."
REPO_ROOT=$PWD
export HOME="${HOME:-/root}"
[[ -d $HOME/.cargo/bin ]] && export PATH="$HOME/.cargo/bin:$PATH"
export PIER_CACHE="${PIER_CACHE:-$HOME/.cache/pier}"
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$PIER_CACHE/target}"
export CARGO_TERM_COLOR="${CARGO_TERM_COLOR:-never}"
# CI builds a fresh clone at a new path each time: incremental caches would pile up per
# path in the shared target dir (32 GB in one day filled the disk). Off there.
if [[ -n ${CI:-} ]]; then export CARGO_INCREMENTAL="${CARGO_INCREMENTAL:-0}"; fi
export RUST_BACKTRACE="${RUST_BACKTRACE:-1}"

log() { printf '\n==> %s\n' "$*" >&2; }
START=$(date +%s)

# --- per-run temp dir and cleanup -------------------------------------------------------
RUN_TMP="$(mktemp -d "${TMPDIR:-/tmp}/pier-test.XXXXXX")"
export TMPDIR="$RUN_TMP"

# Pids of processes (other than this shell) whose command line or working directory
# points into this run's temp dir: only what this run's tests started.
stray_pids() {
    local p pid cwd cmd
    for p in /proc/[0-9]*; do
        pid=${p#/proc/}
        [[ $pid == "$$" || $pid == "$BASHPID" ]] && continue
        cwd=$(readlink "$p/cwd" 2>/dev/null || true)
        cmd=$( { tr '\0' ' ' <"$p/cmdline"; } 2>/dev/null || true)
        if [[ $cwd == "$RUN_TMP" || $cwd == "$RUN_TMP"/* || $cmd == *"$RUN_TMP"/* ]]; then
            echo "$pid"
        fi
    done
}

cleanup() {
    local rc=$? pids i
    trap - EXIT INT TERM
    pids=$(stray_pids)
    if [[ -n $pids ]]; then
        echo "test.sh: stopping stray test processes: $(echo $pids)" >&2
        kill -TERM $pids 2>/dev/null || true
        for i in $(seq 1 50); do
            pids=$(stray_pids)
            [[ -z $pids ]] && break
            sleep 0.2
        done
        [[ -n $pids ]] && kill -KILL $pids 2>/dev/null || true
    fi
    # Mounts a killed daemon left under the run dir (deepest first).
    awk -v d="$RUN_TMP" 'index($2, d) == 1 { print $2 }' /proc/mounts 2>/dev/null | sort -r |
        while read -r m; do umount -l "$m" 2>/dev/null || true; done
    rm -rf "$RUN_TMP" 2>/dev/null || true
    echo "test.sh: finished in $(($(date +%s) - START)) s (exit $rc)" >&2
    exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

# --- dependencies -----------------------------------------------------------------------
log "installing test dependencies"
scripts/install-test-deps.sh

export PIER_PYTHON="${PIER_PYTHON:-$PIER_CACHE/venv/bin/python}"
export PIER_BIN="${PIER_BIN:-$CARGO_TARGET_DIR/debug/pier}"

FAILED=()

# --- format -----------------------------------------------------------------------------
if [[ -z ${PIER_SKIP_LINT:-} ]]; then
    log "cargo fmt --all -- --check"
    cargo fmt --all -- --check || FAILED+=("cargo fmt --check")
    cargo fmt --manifest-path plugins/Cargo.toml --all -- --check ||
        FAILED+=("cargo fmt --check (plugins)")
fi

# --- disk -------------------------------------------------------------------------------
# The target dir is shared by every run and checkout; below PIER_MIN_FREE_GB free, its
# stale builds go first (scripts/prune-target.sh).
scripts/prune-target.sh "$CARGO_TARGET_DIR"

# --- build ------------------------------------------------------------------------------
# The test binary has the crash tests' fail points compiled in (the `failpoints` feature;
# inert unless FAILPOINTS is set). Release builds never have them. The same features for
# build, clippy and test, so cargo builds each crate once.
FEATURES=(--features pier-server/failpoints)
log "cargo build -p pier-server --bin pier ${FEATURES[*]}"
if ! cargo build -p pier-server --bin pier "${FEATURES[@]}"; then
    echo "test.sh: building pier failed" >&2
    exit 1
fi

# --- lint -------------------------------------------------------------------------------
if [[ -z ${PIER_SKIP_LINT:-} ]]; then
    log "cargo clippy --workspace --all-targets ${FEATURES[*]} -- -D warnings"
    cargo clippy --workspace --all-targets "${FEATURES[@]}" -- -D warnings || FAILED+=("cargo clippy")
fi

# --- tests ------------------------------------------------------------------------------
# --no-fail-fast: one failing test binary must not hide the results of the others.
if (($# > 0)); then
    TEST_ARGS=(--no-fail-fast "$@")
else
    TEST_ARGS=(--no-fail-fast --workspace "${FEATURES[@]}")
fi
log "cargo test ${TEST_ARGS[*]}"
# A hung test must not eat CI's whole budget: the suite gets PIER_TEST_TIMEOUT seconds.
timeout --kill-after=30 "${PIER_TEST_TIMEOUT:-3000}" cargo test "${TEST_ARGS[@]}" ||
    FAILED+=("cargo test ${TEST_ARGS[*]}")

# The plugins' own unit tests (their workspace is not the root's; compiled for the host,
# where their wasm bindings are left out). Only with the full suite.
if (($# == 0)); then
    log "plugins: cargo test --lib and clippy on the host"
    PLUGINS_HOST=(--manifest-path plugins/Cargo.toml --locked --workspace
        --target x86_64-unknown-linux-gnu --target-dir "$CARGO_TARGET_DIR/plugins-host")
    cargo test "${PLUGINS_HOST[@]}" --lib || FAILED+=("plugin unit tests")
    if [[ -z ${PIER_SKIP_LINT:-} ]]; then
        cargo clippy "${PLUGINS_HOST[@]}" --lib --tests -- -D warnings ||
            FAILED+=("cargo clippy (plugins)")
        # The template is a workspace of its own (a copy builds anywhere).
        cargo clippy --manifest-path plugins/template/Cargo.toml --locked \
            --target wasm32-wasip2 --target-dir "$CARGO_TARGET_DIR/wasm-plugins" -- -D warnings ||
            FAILED+=("cargo clippy (plugins/template)")
    fi
fi

# The container image, built and run (tests/container-image.sh): deploy/container/Dockerfile's
# runtime-prebuilt target with this build's pier and plugins, on a debootstrapped Debian
# base, under a dockerd of its own. A script rather than a cargo test: it drives
# debootstrap, docker, skopeo and curl, nothing of pier_e2e. Only with the full suite.
if (($# == 0)); then
    log "container image: tests/container-image.sh"
    if cargo build -q --release --locked --target wasm32-wasip2 --manifest-path plugins/Cargo.toml \
        --target-dir "$CARGO_TARGET_DIR/wasm-plugins"; then
        timeout --kill-after=30 "${PIER_IMAGE_TEST_TIMEOUT:-900}" tests/container-image.sh ||
            FAILED+=("tests/container-image.sh")
    else
        FAILED+=("building the plugins for the container image")
    fi
fi

if ((${#FAILED[@]} > 0)); then
    printf 'test.sh: FAILED: %s\n' "${FAILED[@]}" >&2
    exit 1
fi
echo "test.sh: all checks passed" >&2
