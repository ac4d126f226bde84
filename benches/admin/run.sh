#!/usr/bin/env bash
# Admin API cost benchmark (issue 7): registry throughput with and without console users
# browsing the admin API at the same time, side by side in one run.
#
#   benches/admin/run.sh [--rounds N] [--duration SECS] [--rates 10,200] [--data DIR]
#                        [--no-auth] [--keep]
#
#   --rounds N       A B C rounds (default 3)
#   --duration SECS  each registry load run (default 10)
#   --rates LIST     admin API request rates of the browsing loads (default 10,200 req/s)
#   --data DIR       the seeded root of benches/console/run.sh (10,000 repositories, 100,000
#                    tags), reused if present, else seeded there; default: a temporary one
#   --no-auth        Pier without access control (default: the RBAC example, token auth)
#   --keep           keep the temporary directory
#
# One release Pier on a free loopback port, on the console benchmark's seeded root, with a
# small image `library/bench` (a 1 MiB layer) pushed beside it. For each registry load
# (wrk -t2 -c32: the manifest GET by tag, the 1 MiB blob GET; an anonymous pull token), in
# rounds: the load alone, then with benches/admin/browse-load.mjs sending the console's API
# calls at each rate. Prints medians, the ratio with/without and PASS/MISS against >= 0.95.
# Environment: PIER_BIN (skip the build), PIER_LOG (default warn), BENCH_TMPDIR.
#
# Exit status: 0 when everything ran (a MISS is a finding), 1 when a measurement could not be
# taken, 2 on bad usage or a missing tool.
set -uo pipefail
# shellcheck source-path=SCRIPTDIR

SCRIPT_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
REPO_DIR="$(cd "$SCRIPT_DIR/../.." && pwd)"
# shellcheck source=SCRIPTDIR/../lib.sh
source "$SCRIPT_DIR/../lib.sh"
# shellcheck source=SCRIPTDIR/../console/common.sh
source "$SCRIPT_DIR/../console/common.sh"

FAILURES=()
declare -A PID=()
ROUNDS=3
DUR=10
RATES="10,200"
DATA=""
KEEP=0
NO_AUTH=0
usage() { sed -n '2,24p' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//'; }
while (($#)); do
    case "$1" in
        --rounds) ROUNDS="${2:?}"; shift ;;
        --duration) DUR="${2:?}"; shift ;;
        --rates) RATES="${2:?}"; shift ;;
        --data) DATA="${2:?}"; shift ;;
        --no-auth) NO_AUTH=1 ;;
        --keep) KEEP=1 ;;
        -h|--help) usage; exit 0 ;;
        *) echo "run.sh: unknown argument: $1" >&2; usage >&2; exit 2 ;;
    esac
    shift
done
((ROUNDS >= 1 && DUR >= 1)) || { echo "run.sh: --rounds and --duration must be >= 1" >&2; exit 2; }
require_tools curl node wrk openssl awk jq

WORK="$(mktemp -d "${BENCH_TMPDIR:-${TMPDIR:-/tmp}}/pier-bench-admin.XXXXXX")"
LOADS=()
cleanup() {
    local n p
    for p in "${LOADS[@]}"; do kill "$p" 2>/dev/null; done
    for n in "${!PID[@]}"; do stop_server "$n"; done
    if ((KEEP)); then echo "kept $WORK"; else rm -rf "$WORK"; fi
}
trap cleanup EXIT
trap 'exit 130' INT TERM

export NO_AUTH
build_pier || exit 1
[[ -n "$DATA" ]] || DATA="$WORK/data"
seed_data "$DATA" || exit 1
start_pier pier "$DATA" auth || exit 1
REG="http://127.0.0.1:$REG_PORT"
ADMIN="http://127.0.0.1:$ADMIN_PORT"
if ((NO_AUTH)); then PUSH_AUTH=(); ADMIN_AUTH=""; else
    PUSH_AUTH=(-u "$ADMIN_USER:$ADMIN_PASS")
    ADMIN_AUTH="Basic $(printf '%s' "$ADMIN_USER:$ADMIN_PASS" | base64 -w0)"
fi

# ---------------------------------------------------------------- the registry's image
openssl rand $((1 << 20)) >"$WORK/layer"
LAYER_D="sha256:$(sha256_of "$WORK/layer")"
printf '{"architecture":"amd64","os":"linux","rootfs":{"type":"layers","diff_ids":["%s"]}}' "$LAYER_D" >"$WORK/config"
CONFIG_D="sha256:$(sha256_of "$WORK/config")"
printf '{"schemaVersion":2,"mediaType":"application/vnd.oci.image.manifest.v1+json","config":{"mediaType":"application/vnd.oci.image.config.v1+json","digest":"%s","size":%d},"layers":[{"mediaType":"application/vnd.oci.image.layer.v1.tar+gzip","digest":"%s","size":%d}]}' \
    "$CONFIG_D" "$(stat -c %s "$WORK/config")" "$LAYER_D" "$(stat -c %s "$WORK/layer")" >"$WORK/manifest"
for b in config layer; do
    d=$([[ $b == config ]] && echo "$CONFIG_D" || echo "$LAYER_D")
    code=$(curl -s -o /dev/null -w '%{http_code}' "${PUSH_AUTH[@]}" -X POST -H 'Content-Type: application/octet-stream' \
        --data-binary "@$WORK/$b" "$REG/v2/library/bench/blobs/uploads/?digest=$d")
    [[ $code == 201 ]] || { fail "push $b: $code"; tail -5 "$WORK/pier.log" >&2; exit 1; }
done
code=$(curl -s -o /dev/null -w '%{http_code}' "${PUSH_AUTH[@]}" -X PUT -H 'Content-Type: application/vnd.oci.image.manifest.v1+json' \
    --data-binary "@$WORK/manifest" "$REG/v2/library/bench/manifests/v1")
[[ $code == 201 ]] || { fail "push manifest: $code"; exit 1; }

# A fresh anonymous pull token (the example's lifetime is 5 min) for every run.
TOKEN_HDR=()
new_token() {
    ((NO_AUTH)) && return 0
    local t
    t=$(curl -sf "$REG/auth/token?service=pier&scope=repository:library/bench:pull" | jq -r '.token')
    [[ -n "$t" && "$t" != null ]] || { fail "anonymous token"; return 1; }
    TOKEN_HDR=(-H "Authorization: Bearer $t")
}
new_token || exit 1
ACCEPT='Accept: application/vnd.oci.image.manifest.v1+json'
code=$(curl -s -o /dev/null -w '%{http_code}' "${TOKEN_HDR[@]}" -H "$ACCEPT" "$REG/v2/library/bench/manifests/v1")
[[ $code == 200 ]] || { fail "manifest GET with the token: $code"; exit 1; }
code=$(curl -s -o /dev/null -w '%{http_code}' -H "Authorization: $ADMIN_AUTH" "$ADMIN/api/v1/repositories?n=50")
[[ $code == 200 ]] || { fail "admin API with the admin's credentials: $code"; exit 1; }

cpu_ticks() { awk '{ print $14 + $15 }' "/proc/$1/stat" 2>/dev/null; }
CLK=$(getconf CLK_TCK)

# run_one TEST LOAD: the registry load for DUR seconds, with the browsing load at LOAD req/s
# (0: none) started just before it and running a second longer. Records req/s, MB/s, Pier's CPU
# seconds per second and, with a load, what the load achieved.
run_one() {
    local test=$1 rate=$2 url hdrs=() out rps mbs c0 c1 lp="" lj
    case $test in
        manifest) url="$REG/v2/library/bench/manifests/v1"; hdrs=(-H "$ACCEPT") ;;
        blob) url="$REG/v2/library/bench/blobs/$LAYER_D" ;;
    esac
    new_token || return 1
    lj="$WORK/load.$test.$rate.json"
    if ((rate > 0)); then
        node "$SCRIPT_DIR/browse-load.mjs" "$ADMIN" "$rate" $((DUR + 2)) "$ADMIN_AUTH" \
            "$SEED_REPOS" "$BIG_REPO" "$SEED_BIG" >"$lj" 2>&1 &
        lp=$!
        LOADS+=("$lp")
        sleep 1
    fi
    c0=$(cpu_ticks "${PID[pier]}")
    out=$(wrk -t2 -c32 -d"${DUR}s" --timeout 30s "${hdrs[@]}" "${TOKEN_HDR[@]}" "$url" 2>&1)
    c1=$(cpu_ticks "${PID[pier]}")
    [[ -n "$lp" ]] && wait "$lp"
    if grep -qE 'Non-2xx|Socket errors' <<<"$out"; then
        fail "$test with load $rate: $(grep -E 'Non-2xx|Socket errors' <<<"$out")"; return 1
    fi
    rps=$(awk '/^Requests\/sec/ { print $2 }' <<<"$out")
    [[ -n "$rps" ]] || { fail "$test with load $rate: wrk said: $out"; return 1; }
    mbs=$(awk '/^Transfer\/sec/ { v = $2; u = substr(v, length(v) - 1); n = v + 0;
        if (u == "GB") n *= 1024; else if (u == "KB") n /= 1024; else if (u != "MB") n /= 1048576; printf "%.1f", n * 1.048576 }' <<<"$out")
    record "rps" "$test|$rate" "$rps"
    record "mbs" "$test|$rate" "$mbs"
    record "cpu" "$test|$rate" "$(awk -v a="$c0" -v b="$c1" -v k="$CLK" -v d="$DUR" 'BEGIN { printf "%.2f", (b - a) / k / d }')"
    if ((rate > 0)); then
        if [[ "$(jq -r '.errors' "$lj" 2>/dev/null)" != 0 ]]; then
            fail "browse load at $rate req/s: $(cat "$lj")"; return 1
        fi
        record "lrate" "$test|$rate" "$(jq -r '.rate' "$lj")"
        record "lp50" "$test|$rate" "$(jq -r '.p50' "$lj")"
        record "lp99" "$test|$rate" "$(jq -r '.p99' "$lj")"
        # Requests not sent because 64 were already waiting: the admin API fell behind the rate.
        record "lskip" "$test|$rate" "$(jq -r '.skipped' "$lj")"
    fi
    log "  $test, browsing ${rate} req/s: $rps req/s$( ((rate > 0)) && printf ', admin load %s' "$(jq -c '{rate,p50,p99,skipped}' "$lj")")"
}

IFS=, read -r -a RATE_LIST <<<"$RATES"
CONDS=(0 "${RATE_LIST[@]}")
# Warm-up: page cache and Pier's caches for both loads and the admin calls.
wrk -t2 -c8 -d2s "${TOKEN_HDR[@]}" "$REG/v2/library/bench/blobs/$LAYER_D" >/dev/null 2>&1
node "$SCRIPT_DIR/browse-load.mjs" "$ADMIN" 50 2 "$ADMIN_AUTH" "$SEED_REPOS" "$BIG_REPO" "$SEED_BIG" >/dev/null 2>&1
for r in $(seq "$ROUNDS"); do
    log "round $r/$ROUNDS"
    for test in manifest blob; do
        for c in "${CONDS[@]}"; do run_one "$test" "$c" || exit 1; done
    done
done

echo
echo "== registry throughput while the admin API is browsed (medians of $ROUNDS rounds, wrk -t2 -c32 ${DUR}s, $(nproc) cores, $( ((NO_AUTH)) && echo "no access control" || echo "token auth + RBAC"), $SEED_REPOS repositories / $SEED_TAGS tags)"
printf '%-34s %12s %9s %10s %8s  %-28s %s\n' "registry load / browsing" "registry" "ratio" "Pier CPU" "" "admin calls achieved" "target >= 0.95"
for test in manifest blob; do
    base=$(med "rps" "$test|0")
    for c in "${CONDS[@]}"; do
        v=$(med "rps" "$test|$c")
        unit="req/s"
        if [[ $test == blob ]]; then v=$(med "mbs" "$test|$c"); base=$(med "mbs" "$test|0"); unit="MB/s"; fi
        rt=$(ratio "$v" "$base")
        if ((c == 0)); then
            printf '%-34s %12s %9s %9s/s %8s  %-28s %s\n' "$test GET, no browsing" "$v $unit" "1.00" "$(med "cpu" "$test|0")" "" "" ""
        else
            printf '%-34s %12s %8sx %9s/s %8s  %-28s %s\n' "$test GET, browsing $c req/s" "$v $unit" "$rt" "$(med "cpu" "$test|$c")" "" \
                "$(med "lrate" "$test|$c")/s p50 $(med "lp50" "$test|$c") p99 $(med "lp99" "$test|$c") ms skipped $(med "lskip" "$test|$c")" "$(verdict "$rt" ">=" 0.95)"
        fi
    done
done
echo "(Pier CPU: CPU seconds per second of the Pier process during the registry run; every ratio is of medians)"
((${#FAILURES[@]} == 0)) || exit 1
