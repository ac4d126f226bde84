# shellcheck shell=bash
# Helpers shared by benches/console/run.sh and benches/admin/run.sh; sourced after
# benches/lib.sh. Not meant to run on its own.
#
# Globals a sourcing script must define: REPO_DIR, WORK (the run's temporary directory),
# PID (declare -A), FAILURES (array).
# Globals defined here: PIER_BIN, RBAC_WASM, SEED_REPOS, SEED_TAGS, SEED_BIG, BIG_REPO,
# ADMIN_USER, ADMIN_PASS, REG_PORT, ADMIN_PORT (set by start_pier).

# shellcheck disable=SC2034 # used by the sourcing scripts
{
    SEED_REPOS=10000
    SEED_TAGS=100000
    SEED_BIG=10000
    BIG_REPO="proj00/app000"
    ADMIN_USER="admin"
    ADMIN_PASS="admin-pass"
}
COMMON_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"

# Builds the release `pier` (and the RBAC plugin unless NO_AUTH=1) unless PIER_BIN is set.
build_pier() {
    export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/pier/target}"
    if [[ -z "${PIER_BIN:-}" ]]; then
        log "building release pier"
        (cd "$REPO_DIR" && cargo build -q --release -p pier-server --bin pier) || return 1
        PIER_BIN="$CARGO_TARGET_DIR/release/pier"
    fi
    [[ -x "$PIER_BIN" ]] || { echo "no Pier binary at $PIER_BIN" >&2; return 1; }
    RBAC_WASM="${RBAC_WASM:-$CARGO_TARGET_DIR/wasm-plugins/wasm32-wasip2/release/pier_rbac.wasm}"
    if [[ "${NO_AUTH:-0}" != 1 ]]; then
        log "building the RBAC plugin"
        cargo build -q --release --target wasm32-wasip2 --manifest-path "$REPO_DIR/plugins/Cargo.toml" \
            --target-dir "$CARGO_TARGET_DIR/wasm-plugins" -p pier-rbac || return 1
        [[ -f "$RBAC_WASM" ]] || { echo "no RBAC plugin at $RBAC_WASM" >&2; return 1; }
    fi
}

# Waits until url answers (any status but a connection failure), up to 30 s.
wait_up() {
    local i
    for ((i = 0; i < 300; i++)); do
        curl -s -o /dev/null "$1" && return 0
        sleep 0.1
    done
    return 1
}

# start_pier NAME ROOT [auth]: Pier on free ports (REG_PORT, ADMIN_PORT), the RBAC example
# (token auth, `admin` a system admin, project `library` public) when the third argument is
# `auth` and NO_AUTH is not 1. Log in $WORK/NAME.log.
start_pier() {
    local name=$1 root=$2 mode=${3:-} args=()
    free_port || return 1
    # shellcheck disable=SC2153 # FREE_PORT is set by lib.sh's free_port
    REG_PORT=$FREE_PORT
    free_port || return 1
    ADMIN_PORT=$FREE_PORT
    if [[ "$mode" == auth && "${NO_AUTH:-0}" != 1 ]]; then
        mkdir -p "$WORK/rbac"
        cp "$REPO_DIR"/deploy/examples/rbac/{pier.toml,users.htpasswd,robots.json} "$WORK/rbac/"
        sed -i "s|^path = .*pier_rbac.wasm\"|path = \"$RBAC_WASM\"|" "$WORK/rbac/pier.toml"
        args=(--config "$WORK/rbac/pier.toml")
    fi
    PIER_LOG="${PIER_LOG:-warn}" "$PIER_BIN" serve "${args[@]}" --root "$root" \
        --listen "127.0.0.1:$REG_PORT" --admin-listen "127.0.0.1:$ADMIN_PORT" >"$WORK/$name.log" 2>&1 &
    PID["$name"]=$!
    if ! wait_up "http://127.0.0.1:$REG_PORT/v2/" || ! wait_up "http://127.0.0.1:$ADMIN_PORT/healthz"; then
        fail "$name did not start"; tail -20 "$WORK/$name.log" >&2; return 1
    fi
}

# seed_data DIR: makes DIR a Pier root with SEED_REPOS repositories and SEED_TAGS tags (the
# first, BIG_REPO, with SEED_BIG of them) through the registry API, unless DIR already holds
# a seed of those counts (its marker file). Seeds with access control off.
seed_data() {
    local dir=$1 marker="$1/.pier-console-bench" want out
    want="repos=$SEED_REPOS tags=$SEED_TAGS big=$SEED_BIG"
    if [[ -f "$marker" && "$(cat "$marker")" == "$want" ]]; then
        log "using the seeded data in $dir ($want)"
        return 0
    fi
    [[ -e "$dir" && -n "$(ls -A "$dir" 2>/dev/null)" ]] && { fail "$dir is not empty and holds no seed of $want"; return 1; }
    mkdir -p "$dir"
    log "seeding $dir through the registry API: $want"
    start_pier seed "$dir" || return 1
    out=$(node "$COMMON_DIR/seed.mjs" "http://127.0.0.1:$REG_PORT" "$SEED_REPOS" "$SEED_TAGS" "$SEED_BIG" 64) \
        || { fail "seeding failed: $out"; stop_server seed; return 1; }
    stop_server seed
    log "seeded: $out"
    echo "$out" >"$dir/.pier-console-bench-seed.json"
    echo "$want" >"$marker"
}
