#!/usr/bin/env bash
# Access-control benchmark (issue 3), side by side in one run:
#   1. authorize() through the plugin host on warm instances (cargo bench, RBAC plugin);
#   2. manifest HEAD with token auth + the RBAC plugin vs the same Pier without auth (ab -i -k);
#   3. token issuance: anonymous, and repeated logins of one user (Basic on the token endpoint);
#   4. manifest HEAD with HTTP basic auth on every request;
#   5. a legitimate login (alice, the right password, from 127.0.0.1) while another address
#      (127.0.0.2) guesses alice's password, vs the same client load on /v2/ instead of
#      guesses: the failed-login throttle must not slow the real user down.
#
#   benches/auth/run.sh [--quick] [--rounds N] [--requests N]
#
# Builds what it needs (release pier unless PIER_BIN is set, the plugins), starts two Pier processes on free
# loopback ports with temp data dirs, stops them on exit. Ratios and medians are
# printed; a MISS is a finding (exit 0), a measurement that could not be taken exits 1.
set -uo pipefail

SCRIPT_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
REPO_DIR="$(cd "$SCRIPT_DIR/../.." && pwd)"
# shellcheck source=../lib.sh
source "$SCRIPT_DIR/../lib.sh"

FAILURES=()
ROUNDS=3
REQS=40000
while (($#)); do
    case "$1" in
        --quick) ROUNDS=2; REQS=15000 ;;
        --rounds) ROUNDS="$2"; shift ;;
        --requests) REQS="$2"; shift ;;
        *) sed -n '2,12p' "$0"; exit 2 ;;
    esac
    shift
done

export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/pier/target}"
WASM_DIR="$CARGO_TARGET_DIR/wasm-plugins"
log "building release pier (unless PIER_BIN names one) and the plugins"
if [[ -z "${PIER_BIN:-}" ]]; then
    (cd "$REPO_DIR" && cargo build -q --release -p pier-server --bin pier) || exit 1
fi
cargo build -q --release --target wasm32-wasip2 --manifest-path "$REPO_DIR/plugins/Cargo.toml" \
    --target-dir "$WASM_DIR" || exit 1
PIER="${PIER_BIN:-$CARGO_TARGET_DIR/release/pier}"
RBAC="$WASM_DIR/wasm32-wasip2/release/pier_rbac.wasm"

TMP="$(mktemp -d "${TMPDIR:-/tmp}/pier-bench-auth.XXXXXX")"
PIDS=()
cleanup() { for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null; done; wait 2>/dev/null; rm -rf "$TMP"; }
trap cleanup EXIT

log "== 1. authorize() through the host"
(cd "$REPO_DIR" && PIER_RBAC_WASM="$RBAC" cargo bench -q -p pier-plugin-host --bench authorize 2>/dev/null) \
    | tee "$TMP/authorize.txt" || fail "authorize bench"

# Two Pier processes: plain, and the RBAC example with token auth.
cp "$REPO_DIR"/deploy/examples/rbac/{pier.toml,users.htpasswd,robots.json} "$TMP/"
sed -i "s|^path = .*pier_rbac.wasm\"|path = \"$RBAC\"|" "$TMP/pier.toml"
free_port; PA=$FREE_PORT; free_port; PAA=$FREE_PORT; free_port; PB=$FREE_PORT; free_port; PBA=$FREE_PORT
PIER_LOG=warn "$PIER" serve --root "$TMP/plain" --listen "127.0.0.1:$PA" --admin-listen "127.0.0.1:$PAA" 2>"$TMP/plain.log" &
PIDS+=($!)
PIER_LOG=warn "$PIER" serve --config "$TMP/pier.toml" --root "$TMP/auth" --listen "127.0.0.1:$PB" --admin-listen "127.0.0.1:$PBA" 2>"$TMP/auth.log" &
PIDS+=($!)
for p in $PA $PB; do
    for _ in $(seq 50); do curl -s -o /dev/null "http://127.0.0.1:$p/v2/" && break; sleep 0.1; done
done

push_small_image() { # base-url curl-auth-args... -> manifest digest
    local base=$1; shift
    local cfg='{"architecture":"amd64","os":"linux","rootfs":{"type":"layers","diff_ids":[]}}'
    local cd; cd="sha256:$(printf '%s' "$cfg" | sha256sum | cut -d' ' -f1)"
    curl -sf "$@" -X POST -H 'Content-Type: application/octet-stream' --data-binary "$cfg" \
        "$base/v2/library/bench/blobs/uploads/?digest=$cd" -o /dev/null || return 1
    local m="{\"schemaVersion\":2,\"mediaType\":\"application/vnd.oci.image.manifest.v1+json\",\"config\":{\"mediaType\":\"application/vnd.oci.image.config.v1+json\",\"digest\":\"$cd\",\"size\":${#cfg}},\"layers\":[]}"
    curl -sf "$@" -X PUT -H 'Content-Type: application/vnd.oci.image.manifest.v1+json' --data-binary "$m" \
        "$base/v2/library/bench/manifests/latest" -o /dev/null || return 1
}
push_small_image "http://127.0.0.1:$PA" || { fail "push to plain Pier"; tail -5 "$TMP/plain.log"; exit 1; }
push_small_image "http://127.0.0.1:$PB" -u admin:admin-pass || { fail "push to auth Pier"; tail -5 "$TMP/auth.log"; exit 1; }
TOKEN=$(curl -sf "http://127.0.0.1:$PB/auth/token?service=pier&scope=repository:library/bench:pull" \
    | sed 's/.*"token":"\([^"]*\)".*/\1/')
[[ -n $TOKEN ]] || { fail "anonymous token"; exit 1; }
code=$(curl -s -o /dev/null -w '%{http_code}' -I -H "Authorization: Bearer $TOKEN" "http://127.0.0.1:$PB/v2/library/bench/manifests/latest")
[[ $code == 200 ]] || { fail "HEAD with token answered $code"; exit 1; }

ab_rps() { # ab args... -> requests per second (empty on failure)
    local out; out=$(ab -q -k -c 16 -n "$REQS" "$@" 2>&1)
    if grep -q '^Non-2xx responses' <<<"$out" || grep -q '^Failed requests: *[1-9]' <<<"$out"; then
        echo "ab: failures: $(grep -E '^(Non-2xx|Failed)' <<<"$out" | tr '\n' ' ')" >&2
        return 1
    fi
    awk '/^Requests per second/ {print $4}' <<<"$out"
}

declare -a PLAIN AUTH ANON LOGIN BASIC
for r in $(seq "$ROUNDS"); do
    log "round $r/$ROUNDS"
    v=$(ab_rps -i "http://127.0.0.1:$PA/v2/library/bench/manifests/latest") && PLAIN+=("$v") || fail "HEAD plain"
    v=$(ab_rps -i -H "Authorization: Bearer $TOKEN" "http://127.0.0.1:$PB/v2/library/bench/manifests/latest") && AUTH+=("$v") || fail "HEAD with token"
    v=$(ab_rps "http://127.0.0.1:$PB/auth/token?service=pier&scope=repository:library/bench:pull") && ANON+=("$v") || fail "anonymous tokens"
    v=$(ab_rps -A alice:alice-pass "http://127.0.0.1:$PB/auth/token?service=pier&scope=repository:team/app:pull,push") && LOGIN+=("$v") || fail "login tokens"
    v=$(ab_rps -i -A admin:admin-pass "http://127.0.0.1:$PB/v2/library/bench/manifests/latest") && BASIC+=("$v") || fail "HEAD with basic auth"
done

# 5. Login latency beside a guesser. The background load is the same number of curl
# processes either way (their own CPU is no part of the comparison): wrong passwords for
# alice, or anonymous /v2/ pings.
background() { # url-suffix curl-args...: 16 at a time from 127.0.0.2 until killed
    local suffix=$1; shift
    while :; do
        seq 64 | xargs -P 16 -I{} curl -s -o /dev/null --interface 127.0.0.2 "$@" \
            "http://127.0.0.1:$PB$suffix" 2>/dev/null
    done
}
login_ms() { # mean ms per login of alice (ab -c 4)
    ab -q -c 4 -n 2000 -A alice:alice-pass \
        "http://127.0.0.1:$PB/auth/token?service=pier&scope=repository:team/app:pull" 2>&1 \
        | awk '/^Time per request:.*\(mean\)$/ {print $4; exit}'
}
declare -a QUIET GUESSED
GUESS_URL="/auth/token?service=pier&scope=repository:team/app:pull"
for r in $(seq "$ROUNDS"); do
    log "round $r/$ROUNDS: login beside a guesser"
    background /v2/ & bg=$!
    sleep 1
    v=$(login_ms) && [[ -n $v ]] && QUIET+=("$v") || fail "login beside /v2/ load"
    kill $bg 2>/dev/null; wait $bg 2>/dev/null
    background "$GUESS_URL" -u "alice:wrong-guess" & bg=$!
    sleep 1
    v=$(login_ms) && [[ -n $v ]] && GUESSED+=("$v") || fail "login beside a guesser"
    kill $bg 2>/dev/null; wait $bg 2>/dev/null
done
throttled=$(curl -s -o /dev/null -w '%{http_code}' --interface 127.0.0.2 -u alice:wrong-guess "http://127.0.0.1:$PB$GUESS_URL")
# A guesser in the background is pkill'd by name pattern if the loop above left one.
pkill -f -- "--interface 127.0.0.2" 2>/dev/null || true

mp=$(median "${PLAIN[@]}"); ma=$(median "${AUTH[@]}"); mn=$(median "${ANON[@]}"); ml=$(median "${LOGIN[@]}"); mb=$(median "${BASIC[@]}")
echo
echo "== results (medians of $ROUNDS rounds, ab -k -c 16 -n $REQS, $(nproc) cores)"
printf '%-48s %10s req/s\n' "manifest HEAD, no auth" "$mp"
printf '%-48s %10s req/s  (%sx no auth; target >= 0.9: %s)\n' "manifest HEAD, token auth + RBAC plugin" "$ma" "$(ratio "$ma" "$mp")" "$(verdict "$(ratio "$ma" "$mp")" ">=" 0.9)"
printf '%-48s %10s req/s  (%s, target 5000/s: %s)\n' "manifest HEAD, basic auth each request" "$mb" "$(ratio "$mb" "$mp")x no auth" "$(verdict "$mb" ">=" 5000)"
printf '%-48s %10s tokens/s (target >= 5000: %s)\n' "token issuance, anonymous" "$mn" "$(verdict "$mn" ">=" 5000)"
printf '%-48s %10s tokens/s (target >= 5000: %s)\n' "token issuance, repeated login (bcrypt once)" "$ml" "$(verdict "$ml" ">=" 5000)"
mq=$(median "${QUIET[@]}"); mg=$(median "${GUESSED[@]}")
printf '%-48s %10s ms (beside the same load on /v2/: %s ms; %sx, target <= 1.1: %s; the guesser now gets %s)\n' \
    "alice's login while 127.0.0.2 guesses her password" "$mg" "$mq" "$(ratio "$mg" "$mq")" \
    "$(verdict "$(ratio "$mg" "$mq")" "<=" 1.1)" "$throttled"
((${#FAILURES[@]} == 0)) || exit 1
