#!/usr/bin/env bash
# Side-by-side benchmark of the `signatures` admission plugin (plugins/signatures): the same
# Pier with the plugin enforcing cosign signatures on `team/*` vs without any plugin.
#
#   benches/policies/run.sh [--quick] [--tests get,verify] [--rounds N] [--duration SECS]
#                           [--connections N] [--images N] [--keep]
#
#   get     manifest GET by tag of one signed image, `wrk -t2 -cN` (default 16) for 10 s per
#           run (--quick: 3 s) after a 1 s warm-up, so the pull decision cache is warm;
#           5 rounds (--quick: 2), A B then B A
#   verify  first pulls by tag of N (--images, default 200; --quick: 50) freshly pushed signed
#           images per round, 3 rounds (--quick: 2), each a fresh verification (the `.sig`
#           manifest and the payload read from storage, ECDSA P-256 verify): the plugin's
#           mean call time (GET /api/v1/plugins: callSeconds/calls, after 5 warm-up images),
#           and the client's latency of those first pulls and of a second (warm) pull, with
#           and without the plugin
#
# Both Pier processes are started by this script on free 127.0.0.1 ports below the ephemeral
# range, with their own temporary roots, hold the same content (pushed with curl) and are
# stopped on exit (trap). Before measuring, the script checks that the plugin refuses an
# unsigned image and one signed with another key, and admits the signed ones. The summary uses
# medians of the rounds. See benches/README.md.
#
# Environment:
#   PIER_BIN              Pier binary (default: $CARGO_TARGET_DIR/release/pier, then
#                         /root/.cache/pier/target/release/pier, then <repo>/target/release/pier)
#   PIER_SIGNATURES_WASM  the plugin (default: <repo>/plugins/target/wasm32-wasip2/release/
#                         pier_signatures.wasm, then $CARGO_TARGET_DIR/wasm-plugins/...; build:
#                         cargo build --release --target wasm32-wasip2
#                           --manifest-path plugins/Cargo.toml -p pier-signatures)
#   SIG_GRANTS            the plugin's grants (default: "config", "log", "registry", "crypto":
#                         verification in the host's native code; drop "crypto" to measure
#                         the plugin verifying in its own wasm code)
#   PIER_LOG              Pier's log filter (default here: warn; the access log off)
#   BENCH_TMPDIR          where the temporary directory goes (default: $TMPDIR or /tmp; ~50 MiB)
#
# Exit status: 0 when everything ran (a MISS against a target is a finding, not a failure),
# 1 when some measurement could not be taken (a server did not start, a push failed, the
# plugin did not refuse what it must, a load run got error answers), 2 on bad usage or
# missing tools.
set -uo pipefail

SIG_GRANTS="${SIG_GRANTS:-\"config\", \"log\", \"registry\", \"crypto\"}"

SCRIPT_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
REPO_DIR="$(cd "$SCRIPT_DIR/../.." && pwd)"
# shellcheck source=../lib.sh
source "$SCRIPT_DIR/../lib.sh"
# cleanup, secs_since, cpu_ticks, fmt and wait_ready (this script runs no upstream)
# shellcheck source=../upstream.sh
source "$SCRIPT_DIR/../upstream.sh"

# ---------------------------------------------------------------- options
QUICK=0
TESTS="get,verify"
ROUNDS=""
DURATION=""
CONNS=16
IMAGES=""
KEEP=0
WARMUP_IMAGES=5

usage() { sed -n '2,37p' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//'; }

while (($#)); do
    case "$1" in
        --quick) QUICK=1 ;;
        --tests) TESTS="${2:?--tests needs a list}"; shift ;;
        --tests=*) TESTS="${1#*=}" ;;
        --rounds) ROUNDS="${2:?--rounds needs a number}"; shift ;;
        --rounds=*) ROUNDS="${1#*=}" ;;
        --duration) DURATION="${2:?--duration needs a number}"; shift ;;
        --duration=*) DURATION="${1#*=}" ;;
        --connections) CONNS="${2:?--connections needs a number}"; shift ;;
        --connections=*) CONNS="${1#*=}" ;;
        --images) IMAGES="${2:?--images needs a number}"; shift ;;
        --images=*) IMAGES="${1#*=}" ;;
        --keep) KEEP=1 ;;
        -h|--help) usage; exit 0 ;;
        *) echo "run.sh: unknown argument: $1" >&2; usage >&2; exit 2 ;;
    esac
    shift
done

for v in ROUNDS DURATION IMAGES; do
    [[ -z "${!v}" || "${!v}" =~ ^[1-9][0-9]*$ ]] || { echo "run.sh: --${v,,} must be a number >= 1" >&2; exit 2; }
done
[[ "$CONNS" =~ ^[1-9][0-9]*$ ]] || { echo "run.sh: --connections must be a number >= 1" >&2; exit 2; }
if ((QUICK)); then
    GET_ROUNDS=2 VER_ROUNDS=2 DUR=3 NIMG=50
else
    GET_ROUNDS=5 VER_ROUNDS=3 DUR=10 NIMG=200
fi
[[ -n "$ROUNDS" ]] && GET_ROUNDS=$ROUNDS VER_ROUNDS=$ROUNDS
[[ -n "$DURATION" ]] && DUR=$DURATION
[[ -n "$IMAGES" ]] && NIMG=$IMAGES
for t in ${TESTS//,/ }; do
    case "$t" in get|verify) ;; *) echo "run.sh: --tests: unknown test '$t'" >&2; exit 2 ;; esac
done

# ---------------------------------------------------------------- tools
require_tools curl openssl wrk awk sort grep
find_pier_bin
if [[ -z "${PIER_SIGNATURES_WASM:-}" ]]; then
    for c in "$REPO_DIR/plugins/target/wasm32-wasip2/release/pier_signatures.wasm" \
             "${CARGO_TARGET_DIR:-/root/.cache/pier/target}/wasm-plugins/wasm32-wasip2/release/pier_signatures.wasm"; do
        [[ -f "$c" ]] && { PIER_SIGNATURES_WASM="$c"; break; }
    done
fi
if [[ -z "${PIER_SIGNATURES_WASM:-}" || ! -f "$PIER_SIGNATURES_WASM" ]]; then
    echo "run.sh: the signatures plugin was not found (set PIER_SIGNATURES_WASM, or build it:" >&2
    echo "  cargo build --release --target wasm32-wasip2 --manifest-path plugins/Cargo.toml -p pier-signatures)" >&2
    exit 2
fi
PIER_SIGNATURES_WASM="$(cd "$(dirname "$PIER_SIGNATURES_WASM")" && pwd)/$(basename "$PIER_SIGNATURES_WASM")"

# ---------------------------------------------------------------- workspace and cleanup
BASE_TMP="${BENCH_TMPDIR:-${TMPDIR:-/tmp}}"
WORK="$(mktemp -d "$BASE_TMP/pier-policies-bench.XXXXXX")" || exit 2
declare -A PID=() URL=() ADMIN=()
FAILURES=()

trap cleanup EXIT
trap 'exit 130' INT TERM

# ---------------------------------------------------------------- small helpers
# (log, fail, has, free_port, now_ns, median, record, med, ratio, verdict, sha256_of, running,
# stop_server: benches/lib.sh; cleanup, secs_since, cpu_ticks, fmt, wait_ready: benches/upstream.sh)
TICK=$(getconf CLK_TCK 2>/dev/null || echo 100)
ACCEPT='application/vnd.oci.image.manifest.v1+json'
REPO=team/app
SYSTEMS=(plain sig)
declare -A LABEL=([plain]="no plugin" [sig]="signatures")

# A number field of a compact JSON object (the admin API's answers): the first "key":N.
json_num() { grep -oE "\"$2\": *[0-9.eE+-]+" <<<"$1" | head -n 1 | sed -E 's/.*: *//'; }

# The signatures plugin's counters: sets P_CALLS, P_DENIALS, P_SECS, P_INST (GET /api/v1/plugins).
plugin_stats() { # name
    local out
    out=$(curl -s --max-time 10 "${ADMIN[$1]}/api/v1/plugins")
    P_CALLS=$(json_num "$out" calls) P_DENIALS=$(json_num "$out" denials) P_SECS=$(json_num "$out" callSeconds)
    P_INST=$(json_num "$out" instancesCreated)
    [[ -n "$P_CALLS" && -n "$P_SECS" ]] || { fail "$1: GET /api/v1/plugins: no counters in: $(cut -c1-300 <<<"$out")"; return 1; }
}

# wrk's latency figure (e.g. 512.00us, 1.20ms, 1.01s) in ms.
wrk_ms() {
    awk -v x="$1" 'BEGIN { u = x; sub(/^[0-9.]+/, "", u); v = x + 0;
        if (u == "us") v /= 1000; else if (u == "s") v *= 1000; else if (u == "m") v *= 60000; printf "%.3f", v }'
}

# ---------------------------------------------------------------- servers
# Two Pier processes from config files: plain (no plugin) and sig (the signatures plugin,
# enforcing on projects "team" with the bench key). Same binary, same settings otherwise.
launch_pier() { # name port admin_port
    local name=$1 port=$2 admin=$3 d="$WORK/$1"
    mkdir -p "$d/data"
    cat >"$d/config.toml" <<EOF
listen = "127.0.0.1:$port"
admin_listen = "127.0.0.1:$admin"
root = "$d/data"
EOF
    if [[ $name == sig ]]; then
        cat >>"$d/config.toml" <<EOF

[[plugins]]
name = "signatures"
hook = "admission"
path = "$PIER_SIGNATURES_WASM"
grants = [$SIG_GRANTS]

[plugins.config]
rules = [{ name = "team-keys", projects = ["team"], keys = ["$(awk '{ printf "%s\\n", $0 }' "$KEYS/key.pub.pem")"], mode = "enforce" }]
EOF
    fi
    echo "#### bench: starting $(date -u '+%H:%M:%S')" >>"$d/server.log"
    PIER_LOG="${PIER_LOG:-warn}" "$PIER_BIN" serve --config "$d/config.toml" >>"$d/server.log" 2>&1 &
    PID[$name]=$!
    URL[$name]="http://127.0.0.1:$port"
    ADMIN[$name]="http://127.0.0.1:$admin"
}


# ---------------------------------------------------------------- fixtures
# Every image: a config of its own (so its own digest) and the shared 1 KiB layer, tagged
# <tag> in team/app; signed: a cosign simple-signing payload naming its digest, signed with
# KEY (ECDSA P-256, SHA-256, DER, base64 in the layer's annotation), in a manifest tagged
# sha256-<hex>.sig whose config is the empty descriptor.
FIX="$WORK/fixtures"
KEYS="$WORK/keys"
mkdir -p "$FIX" "$KEYS"
EMPTY_DIGEST=sha256:44136fa355b3678a1146ad16f7e8649e94fb4fc21fe77e8310c060f61caaff8a
SIMPLE_SIGNING=application/vnd.dev.cosign.simplesigning.v1+json

make_key() { # name
    openssl ecparam -name prime256v1 -genkey -noout -out "$KEYS/$1.ec.pem" 2>/dev/null &&
        openssl pkcs8 -topk8 -nocrypt -in "$KEYS/$1.ec.pem" -out "$KEYS/$1.pem" &&
        openssl ec -in "$KEYS/$1.pem" -pubout -out "$KEYS/$1.pub.pem" 2>/dev/null
}

# Writes $FIX/<tag>.{config,manifest}, and when signed with a key, $FIX/<tag>.{payload,sigman};
# appends the pushes (blobs to PUSH_BLOBS, manifests to PUSH_MANIFESTS: "file ref" lines).
PUSH_BLOBS=() PUSH_MANIFESTS=()
make_image() { # tag [key]
    local tag=$1 key=${2:-} f="$FIX/$1" cd md pd sig
    printf '{"architecture":"amd64","os":"linux","rootfs":{"type":"layers","diff_ids":["%s"]},"config":{"Labels":{"bench.image":"%s"}}}' \
        "$LAYER_DIGEST" "$tag" >"$f.config"
    cd="sha256:$(sha256_of "$f.config")"
    printf '{"schemaVersion":2,"mediaType":"application/vnd.oci.image.manifest.v1+json","config":{"mediaType":"application/vnd.oci.image.config.v1+json","digest":"%s","size":%d},"layers":[{"mediaType":"application/vnd.oci.image.layer.v1.tar+gzip","digest":"%s","size":%d}]}' \
        "$cd" "$(stat -c %s "$f.config")" "$LAYER_DIGEST" "$LAYER_SIZE" >"$f.manifest"
    md="sha256:$(sha256_of "$f.manifest")"
    PUSH_BLOBS+=("$f.config $cd")
    PUSH_MANIFESTS+=("$f.manifest $tag")
    [[ -z "$key" ]] && return 0
    printf '{"critical":{"identity":{"docker-reference":"pier.bench/%s"},"image":{"docker-manifest-digest":"%s"},"type":"cosign container image signature"},"optional":null}' \
        "$REPO" "$md" >"$f.payload"
    pd="sha256:$(sha256_of "$f.payload")"
    sig=$(openssl dgst -sha256 -sign "$KEYS/$key.pem" "$f.payload" | openssl base64 -A) || return 1
    printf '{"schemaVersion":2,"mediaType":"application/vnd.oci.image.manifest.v1+json","config":{"mediaType":"application/vnd.oci.empty.v1+json","digest":"%s","size":2},"layers":[{"mediaType":"%s","digest":"%s","size":%d,"annotations":{"dev.cosignproject.cosign/signature":"%s"}}]}' \
        "$EMPTY_DIGEST" "$SIMPLE_SIGNING" "$pd" "$(stat -c %s "$f.payload")" "$sig" >"$f.sigman"
    PUSH_BLOBS+=("$f.payload $pd")
    PUSH_MANIFESTS+=("$f.sigman sha256-${md#sha256:}.sig")
}

# Pushes PUSH_BLOBS then PUSH_MANIFESTS to a server in one curl (a config file with `next`
# between requests, one connection): monolithic POST ?digest= per blob, PUT per manifest;
# every answer must be 201. Empties both lists when called for the last server.
push_pending() { # name
    local name=$1 cfg="$WORK/push.$1.curl" line file ref n codes bad
    : >"$cfg"
    for line in "${PUSH_BLOBS[@]}"; do
        read -r file ref <<<"$line"
        [[ -s "$cfg" ]] && echo next >>"$cfg"
        printf 'url = "%s/v2/%s/blobs/uploads/?digest=%s"\nrequest = "POST"\nheader = "Content-Type: application/octet-stream"\ndata-binary = "@%s"\noutput = "/dev/null"\nwrite-out = "%%{http_code} POST blob %s\\n"\n' \
            "${URL[$name]}" "$REPO" "$ref" "$file" "$ref" >>"$cfg"
    done
    for line in "${PUSH_MANIFESTS[@]}"; do
        read -r file ref <<<"$line"
        [[ -s "$cfg" ]] && echo next >>"$cfg"
        printf 'url = "%s/v2/%s/manifests/%s"\nrequest = "PUT"\nheader = "Content-Type: application/vnd.oci.image.manifest.v1+json"\ndata-binary = "@%s"\noutput = "/dev/null"\nwrite-out = "%%{http_code} PUT manifest %s\\n"\n' \
            "${URL[$name]}" "$REPO" "$ref" "$file" "$ref" >>"$cfg"
    done
    n=$((${#PUSH_BLOBS[@]} + ${#PUSH_MANIFESTS[@]}))
    codes=$(curl -s --max-time 600 -K "$cfg" 2>&1)
    bad=$(awk '$1 != 201' <<<"$codes" | head -n 3 | tr '\n' ';')
    if [[ -n "$bad" || $(grep -c '^201 ' <<<"$codes") -ne $n ]]; then
        fail "$name: push of $n blobs and manifests: $(grep -c '^201 ' <<<"$codes") answered 201; e.g. ${bad:-(no answer)}"
        return 1
    fi
}

# GETs each tag by tag over one connection; prints "code seconds" per tag.
pull_tags() { # name tag...
    local name=$1 t args=()
    shift
    for t in "$@"; do args+=(-o /dev/null "${URL[$name]}/v2/$REPO/manifests/$t"); done
    curl -s --max-time 600 -H "Accept: $ACCEPT" -w '%{http_code} %{time_total}\n' "${args[@]}"
}

# ---------------------------------------------------------------- header
log "== Pier signatures-policy benchmark  $(date -u '+%Y-%m-%d %H:%M:%S UTC')"
log "machine: $(hostname) | $(nproc) cores | $(awk -F': ' '/^model name/ {print $2; exit}' /proc/cpuinfo) |" \
    "$(awk '/^MemTotal/ {printf "%.0f GiB", $2/1048576}' /proc/meminfo) | Linux $(uname -r)"
log "tests: $TESTS | get: $GET_ROUNDS rounds of wrk -t2 -c$CONNS -d${DUR}s | verify: $VER_ROUNDS rounds of $NIMG images | work dir: $WORK"
log "pier: $PIER_BIN ($("$PIER_BIN" --version 2>/dev/null | head -n 1 || true)," \
    "built $(date -u -r "$PIER_BIN" '+%Y-%m-%d %H:%M:%S UTC'); checkout at $(git -C "$REPO_DIR" log --oneline -1 2>/dev/null || echo '?'))"
log "plugin: $PIER_SIGNATURES_WASM ($(stat -c %s "$PIER_SIGNATURES_WASM") bytes, sha256:$(sha256_of "$PIER_SIGNATURES_WASM" | cut -c1-12)…," \
    "built $(date -u -r "$PIER_SIGNATURES_WASM" '+%Y-%m-%d %H:%M:%S UTC'))"
log "$(wrk --version 2>&1 | head -n 1 | awk '{print $1, $2}') | $(curl --version | head -n 1 | awk '{print $1, $2}') | $(openssl version)"
log ""

make_key key || { fail "openssl: cannot make a P-256 key"; exit 1; }
make_key other || { fail "openssl: cannot make a P-256 key"; exit 1; }
openssl rand 1024 >"$FIX/layer"
LAYER_DIGEST="sha256:$(sha256_of "$FIX/layer")"
LAYER_SIZE=1024
printf '{}' >"$FIX/empty"

for s in "${SYSTEMS[@]}"; do
    start_pier_retrying "$s" || exit 1
    log "$s (${LABEL[$s]}): ${URL[$s]}, admin ${ADMIN[$s]}, pid ${PID[$s]}"
done

# Shared blobs, the benchmarked image (v1, signed), and two images the plugin must refuse.
PUSH_BLOBS=("$FIX/layer $LAYER_DIGEST" "$FIX/empty $EMPTY_DIGEST")
PUSH_MANIFESTS=()
make_image v1 key || { fail "cannot sign"; exit 1; }
make_image unsigned
make_image badsig other || { fail "cannot sign"; exit 1; }
for s in "${SYSTEMS[@]}"; do push_pending "$s" || exit 1; done

log "-- checks: $REPO:v1 (signed), :unsigned (no signature), :badsig (signed with another key)"
plugin_stats sig || exit 1
d0=$P_DENIALS c0=$P_CALLS
for s in "${SYSTEMS[@]}"; do
    codes=$(pull_tags "$s" v1 unsigned badsig | awk '{ printf "%s ", $1 }')
    log "  $s: GET by tag v1 unsigned badsig -> $codes"
    want="200 200 200 "
    [[ $s == sig ]] && want="200 403 403 "
    if [[ "$codes" != "$want" ]]; then
        # Any refusal will do (the status is Pier's choice); a refused signed image or an
        # admitted unsigned one will not.
        read -r a b c <<<"$codes"
        if [[ $s == plain || $a != 200 || $b == 200 || $c == 200 ]]; then
            fail "$s: GET v1 / unsigned / badsig answered $codes (want $want)"
            exit 1
        fi
    fi
done
plugin_stats sig || exit 1
log "  sig plugin: $((P_CALLS - c0)) calls, $((P_DENIALS - d0)) denials"
((P_DENIALS - d0 == 2)) || { fail "sig: the plugin denied $((P_DENIALS - d0)) pulls, 2 expected"; exit 1; }
log ""

# ---------------------------------------------------------------- (1) get
# One wrk run: sets W_RPS, W_P50, W_P99 (ms), W_REQS, W_CPU (CPU-s Pier used) and W_CALLS
# (plugin calls during it, sig only).
wrk_run() { # name secs
    local name=$1 url="${URL[$1]}/v2/$REPO/manifests/v1" out c0 t0 pc0=0
    [[ $name == sig ]] && { plugin_stats sig || return 1; pc0=$P_CALLS; }
    c0=$(cpu_ticks "${PID[$name]}")
    out=$(wrk -t2 -c"$CONNS" -d"$2"s --timeout 10s --latency -H "Accept: $ACCEPT" "$url" 2>&1)
    W_CPU=$(awk -v t="$(($(cpu_ticks "${PID[$name]}") - c0))" -v h="$TICK" 'BEGIN { printf "%.2f", t / h }')
    W_CALLS=0
    [[ $name == sig ]] && { plugin_stats sig || return 1; W_CALLS=$((P_CALLS - pc0)); }
    if grep -qE 'Non-2xx|Socket errors' <<<"$out"; then
        fail "$name: wrk GET $url: $(grep -E 'Non-2xx|Socket errors' <<<"$out" | tr -s ' ' | tr '\n' ' ')"
        return 1
    fi
    W_RPS=$(awk '/^Requests\/sec:/ { print $2 }' <<<"$out")
    W_REQS=$(awk '/ requests in / { print $1 }' <<<"$out")
    W_P50=$(wrk_ms "$(awk '$1 == "50%" { print $2 }' <<<"$out")")
    W_P99=$(wrk_ms "$(awk '$1 == "99%" { print $2 }' <<<"$out")")
    [[ -n "$W_RPS" && -n "$W_REQS" ]] || { fail "$name: wrk printed no rate: $(tail -n 3 <<<"$out" | tr '\n' ' ')"; return 1; }
}

if has "$TESTS" get; then
    log "-- (1) get: GET /v2/$REPO/manifests/v1 (Accept: OCI manifest), wrk -t2 -c$CONNS --latency, ${DUR}s after a 1 s"
    log "   warm-up (which leaves the pull decision cached); $GET_ROUNDS rounds, odd rounds ${SYSTEMS[0]} first, even rounds ${SYSTEMS[1]} first"
    for ((r = 1; r <= GET_ROUNDS; r++)); do
        order=("${SYSTEMS[@]}")
        ((r % 2 == 0)) && order=("${SYSTEMS[1]}" "${SYSTEMS[0]}")
        for s in "${order[@]}"; do
            wrk -t2 -c"$CONNS" -d1s -H "Accept: $ACCEPT" "${URL[$s]}/v2/$REPO/manifests/v1" >/dev/null 2>&1
            wrk_run "$s" "$DUR" || continue
            record get.rps "$s" "$W_RPS"
            record get.p50 "$s" "$W_P50"
            record get.p99 "$s" "$W_P99"
            record get.cpu "$s" "$(awk -v c="$W_CPU" -v n="$W_REQS" 'BEGIN { if (n > 0) printf "%.2f", c / n * 1e6 }')"
            record get.cpus "$s" "$(awk -v c="$W_CPU" -v d="$DUR" 'BEGIN { printf "%.2f", c / d }')"
            record get.calls "$s" "$W_CALLS"
            printf '  round %d  %-10s %9.0f req/s  p50 %6.3f ms  p99 %6.3f ms  Pier CPU %5.2f s (%.1f us/request)%s\n' \
                "$r" "${LABEL[$s]}" "$W_RPS" "$W_P50" "$W_P99" "$W_CPU" \
                "$(awk -v c="$W_CPU" -v n="$W_REQS" 'BEGIN { if (n > 0) printf "%.2f", c / n * 1e6 }')" \
                "$([[ $s == sig ]] && echo "  plugin calls $W_CALLS")"
        done
        x=${RES["get.rps|sig"]:-} y=${RES["get.rps|plain"]:-}
        x=${x##* } y=${y##* }
        [[ -n "$x" && -n "$y" ]] && log "  round $r  ratio      $(ratio "$x" "$y")x"
    done
    log ""
fi

# ---------------------------------------------------------------- (2) verify
if has "$TESTS" verify; then
    log "-- (2) verify: per round, $NIMG + $WARMUP_IMAGES new signed images pushed to both; the $WARMUP_IMAGES warm-up images pulled"
    log "   first, then the $NIMG by tag over one connection (curl), each once (a first pull: the plugin verifies),"
    log "   then all $NIMG again (warm: the decision cached); $VER_ROUNDS rounds, the systems alternating"
    for ((r = 1; r <= VER_ROUNDS; r++)); do
        PUSH_BLOBS=() PUSH_MANIFESTS=()
        warm=() tags=()
        for ((i = 0; i < WARMUP_IMAGES; i++)); do make_image "w$r-$i" key || { fail "cannot sign"; exit 1; }; warm+=("w$r-$i"); done
        for ((i = 0; i < NIMG; i++)); do make_image "r$r-$i" key || { fail "cannot sign"; exit 1; }; tags+=("r$r-$i"); done
        ok=1
        for s in "${SYSTEMS[@]}"; do push_pending "$s" || ok=0; done
        ((ok)) || continue
        order=("${SYSTEMS[@]}")
        ((r % 2 == 0)) && order=("${SYSTEMS[1]}" "${SYSTEMS[0]}")
        for s in "${order[@]}"; do
            out=$(pull_tags "$s" "${warm[@]}")
            [[ $(grep -c '^200 ' <<<"$out") -eq $WARMUP_IMAGES ]] || { fail "$s: warm-up pulls: $(awk '{print $1}' <<<"$out" | sort | uniq -c | tr '\n' ' ')"; continue; }
            [[ $s == sig ]] && { plugin_stats sig || continue; c0=$P_CALLS s0=$P_SECS d0=$P_DENIALS i0=$P_INST; }
            first=$(pull_tags "$s" "${tags[@]}")
            [[ $s == sig ]] && { plugin_stats sig || continue; c1=$P_CALLS s1=$P_SECS d1=$P_DENIALS i1=$P_INST; }
            again=$(pull_tags "$s" "${tags[@]}")
            [[ $s == sig ]] && { plugin_stats sig || continue; c2=$P_CALLS; }
            n1=$(grep -c '^200 ' <<<"$first") n2=$(grep -c '^200 ' <<<"$again")
            if ((n1 != NIMG || n2 != NIMG)); then
                fail "$s round $r: first pulls $n1/$NIMG answered 200, warm pulls $n2/$NIMG"
                continue
            fi
            f50=$(median $(awk '{ print $2 * 1000 }' <<<"$first"))
            fmean=$(awk '{ t += $2 } END { printf "%.4f", t / NR * 1000 }' <<<"$first")
            w50=$(median $(awk '{ print $2 * 1000 }' <<<"$again"))
            record ver.first "$s" "$f50"
            record ver.firstmean "$s" "$fmean"
            record ver.warm "$s" "$w50"
            extra=""
            if [[ $s == sig ]]; then
                if ((c1 - c0 != NIMG || d1 != d0)); then
                    fail "sig round $r: $((c1 - c0)) plugin calls and $((d1 - d0)) denials for $NIMG first pulls ($NIMG calls, 0 denials expected)"
                    continue
                fi
                mean_ms=$(awk -v a="$s0" -v b="$s1" -v n="$((c1 - c0))" 'BEGIN { printf "%.4f", (b - a) / n * 1000 }')
                record ver.call sig "$mean_ms"
                record ver.warmcalls sig "$((c2 - c1))"
                extra=" | plugin: $((c1 - c0)) calls, mean $mean_ms ms per verification ($((${i1:-0} - ${i0:-0})) instances created); $((c2 - c1)) calls during the warm pulls"
            fi
            printf '  round %d  %-10s first pulls: median %6.3f ms (mean %6.3f) | warm pulls: median %6.3f ms%s\n' \
                "$r" "${LABEL[$s]}" "$f50" "$fmean" "$w50" "$extra"
        done
    done
    log ""
fi

# ---------------------------------------------------------------- summary
hr() { local i; for i in "$@"; do printf '|%s' "$(printf -- '-%.0s' $(seq 1 $((i + 2))))"; done; printf '|\n'; }
row() { # check plain sig ratio target result
    printf '| %-58s | %9s | %10s | %10s | %-9s | %-6s |\n' "$@"
}
diffms() { [[ -n "$1" && -n "$2" ]] && awk -v a="$1" -v b="$2" 'BEGIN { printf "%+.3f ms", a - b }'; }
log "== Summary (medians of the rounds; $(date -u '+%Y-%m-%d'), $(hostname), $(nproc) cores;" \
    "$(git -C "$REPO_DIR" log --oneline -1 2>/dev/null | cut -c1-60))"
row "check" "no plugin" "signatures" "sig/no" "target" "result"
hr 58 9 10 10 9 6
if has "$TESTS" get; then
    p=$(med get.rps plain) q=$(med get.rps sig) rr=$(ratio "$q" "$p")
    row "(1) manifest GET by tag, decision cached, req/s" "$(fmt "$p")" "$(fmt "$q")" "${rr:+${rr}x}" ">= 0.9x" "$(verdict "$rr" ">=" 0.9)"
    for k in p50 p99; do
        p=$(med get.$k plain) q=$(med get.$k sig) rr=$(ratio "$q" "$p")
        row "    latency $k, ms" "$(fmt "$p")" "$(fmt "$q")" "${rr:+${rr}x}" "" ""
    done
    p=$(med get.cpu plain) q=$(med get.cpu sig) rr=$(ratio "$q" "$p")
    row "    Pier CPU per request, us" "$(fmt "$p")" "$(fmt "$q")" "${rr:+${rr}x}" "" ""
    p=$(med get.cpus plain) q=$(med get.cpus sig)
    row "    Pier CPU, s per s (the rest of the 2 cores: wrk)" "$(fmt "$p")" "$(fmt "$q")" "" "" ""
    row "    plugin calls during a run (the 60 s decision TTL)" "-" "$(median ${RES["get.calls|sig"]:-})" "" "" ""
fi
if has "$TESTS" verify; then
    q=$(med ver.call sig)
    row "(2) one verification (plugin call, mean of $NIMG), ms" "-" "$(fmt "$q")" "" "<= 1 ms" "$(verdict "$q" "<=" 1)"
    p=$(med ver.first plain) q=$(med ver.first sig)
    row "    first pull by tag, client latency, median ms" "$(fmt "$p")" "$(fmt "$q")" "$(diffms "$q" "$p")" "" ""
    p=$(med ver.firstmean plain) q=$(med ver.firstmean sig)
    row "    first pull by tag, client latency, mean ms" "$(fmt "$p")" "$(fmt "$q")" "$(diffms "$q" "$p")" "" ""
    p=$(med ver.warm plain) q=$(med ver.warm sig)
    row "    warm pull by tag (decision cached), median ms" "$(fmt "$p")" "$(fmt "$q")" "$(diffms "$q" "$p")" "" ""
fi

report_pier_warnings "the two refusals of the checks are expected" plain/server.log sig/server.log
finish
