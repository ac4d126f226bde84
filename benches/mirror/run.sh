#!/usr/bin/env bash
# Side-by-side mirror benchmark: Pier as a pull-through mirror vs pulling straight from the
# upstream vs the reference registry (CNCF distribution, Debian's `docker-registry`) in proxy mode.
#
#   benches/mirror/run.sh [--quick] [--tests cold,warm,fanout] [--rounds N] [--duration SECS]
#                         [--clients N] [--keep]
#
# Every server is started by this script on a free 127.0.0.1 port with its own temporary
# data directory, and stopped again on exit (trap). Measurements alternate between the
# systems (A B C A B C ...), and the summary uses medians. See benches/README.md.
#
# Environment:
#   PIER_BIN        Pier binary (default: $CARGO_TARGET_DIR/release/pier, then
#                   /root/.cache/pier/target/release/pier, then <repo>/target/release/pier)
#   PIER_LOG        Pier's log filter (default here: warn, so the per-request access log
#                   stays off, as the reference proxy's access log is off)
#   BENCH_TMPDIR    where the temporary directory goes (default: $TMPDIR or /tmp); needs ~2 GiB
#
# Exit status: 0 when everything ran (a MISS against a target is a finding, not a failure),
# 1 when some measurement could not be taken, 2 on bad usage or missing tools.
set -uo pipefail

SCRIPT_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
REPO_DIR="$(cd "$SCRIPT_DIR/../.." && pwd)"
# shellcheck source=../lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/../lib.sh"
# shellcheck source=../upstream.sh
source "$(dirname "${BASH_SOURCE[0]}")/../upstream.sh"

# ---------------------------------------------------------------- options
QUICK=0
TESTS="cold,warm,fanout"
ROUNDS=""
DUR=""
CLIENTS=50
KEEP=0

usage() { sed -n '2,20p' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//'; }

while (($#)); do
    case "$1" in
        --quick) QUICK=1 ;;
        --tests) TESTS="${2:?--tests needs a list}"; shift ;;
        --tests=*) TESTS="${1#*=}" ;;
        --rounds) ROUNDS="${2:?}"; shift ;;
        --rounds=*) ROUNDS="${1#*=}" ;;
        --duration) DUR="${2:?}"; shift ;;
        --duration=*) DUR="${1#*=}" ;;
        --clients) CLIENTS="${2:?}"; shift ;;
        --clients=*) CLIENTS="${1#*=}" ;;
        --keep) KEEP=1 ;;
        -h|--help) usage; exit 0 ;;
        *) echo "run.sh: unknown argument: $1" >&2; usage >&2; exit 2 ;;
    esac
    shift
done

if ((QUICK)); then
    : "${ROUNDS:=2}" "${DUR:=3}"
else
    : "${ROUNDS:=3}" "${DUR:=10}"
fi
((ROUNDS >= 1)) || { echo "run.sh: --rounds must be >= 1" >&2; exit 2; }
((CLIENTS >= 2)) || { echo "run.sh: --clients must be >= 2" >&2; exit 2; }

for t in ${TESTS//,/ }; do
    case "$t" in cold|warm|fanout) ;; *) echo "run.sh: --tests: unknown test '$t'" >&2; exit 2 ;; esac
done

# ---------------------------------------------------------------- tools
require_tools curl wrk openssl awk sort docker-registry
find_pier_bin

# ---------------------------------------------------------------- workspace and cleanup
BASE_TMP="${BENCH_TMPDIR:-${TMPDIR:-/tmp}}"
WORK="$(mktemp -d "$BASE_TMP/pier-mirror-bench.XXXXXX")" || exit 2
chmod 755 "$WORK"
declare -A PID=()
FAILURES=()

trap cleanup EXIT
trap 'exit 130' INT TERM

# ---------------------------------------------------------------- small helpers
# (log, fail, has, free_port, now_ns, median, record, med, sha256_of, gen_random_file, running,
# stop_server: benches/lib.sh; cleanup, secs_since, cpu_ticks, fmt, wait_ready, start_upstream,
# push_blob, up_mark, up_settle, has_blob, verify_image: benches/upstream.sh)

# CPU seconds a process has used since cpu_ticks said ticks_before.
TICK=$(getconf CLK_TCK 2>/dev/null || echo 100)
cpu_since() { # pid ticks_before -> seconds
    awk -v a="$2" -v b="$(cpu_ticks "$1")" -v t="$TICK" 'BEGIN { printf "%.2f\n", (b - a) / t }'
}

# ---------------------------------------------------------------- servers
declare -A URL=() DATA=()
GEN=0   # bumps for every fresh data directory

# Pier, mirroring the upstream as its default upstream, on a fresh root unless told "keep".
start_pier() { # [keep]
    local d="$WORK/pier" port admin
    mkdir -p "$d"
    if [[ "${1:-}" != keep || -z "${DATA[pier]:-}" ]]; then
        [[ -n "${DATA[pier]:-}" ]] && rm -rf "${DATA[pier]}"
        GEN=$((GEN + 1))
        DATA[pier]="$d/data.$GEN"
        mkdir -p "${DATA[pier]}"
    fi
    free_port || return 1
    port=$FREE_PORT
    free_port || return 1
    admin=$FREE_PORT
    PIER_LOG="${PIER_LOG:-warn}" "$PIER_BIN" serve --listen "127.0.0.1:$port" \
        --admin-listen "127.0.0.1:$admin" --root "${DATA[pier]}" --upstream "${URL[upstream]}" \
        >>"$d/server.log" 2>&1 &
    PID[pier]=$!
    URL[pier]="http://127.0.0.1:$port"
    ADMIN_URL="http://127.0.0.1:$admin"
    wait_ready pier "${URL[pier]}/v2/" 30
}

# The reference: docker-registry in proxy mode (pull-through cache of the upstream),
# access log off and log level error as in benches/load, on a fresh directory unless "keep".
start_proxy() { # [keep]
    local d="$WORK/proxy" port
    mkdir -p "$d"
    if [[ "${1:-}" != keep || -z "${DATA[proxy]:-}" ]]; then
        [[ -n "${DATA[proxy]:-}" ]] && rm -rf "${DATA[proxy]}"
        GEN=$((GEN + 1))
        DATA[proxy]="$d/data.$GEN"
        mkdir -p "${DATA[proxy]}"
    fi
    free_port || return 1
    port=$FREE_PORT
    cat >"$d/config.yml" <<EOF
version: 0.1
log:
  level: error
  accesslog:
    disabled: true
storage:
  filesystem:
    rootdirectory: ${DATA[proxy]}
  cache:
    blobdescriptor: inmemory
  maintenance:
    uploadpurging:
      enabled: false
proxy:
  remoteurl: ${URL[upstream]}
http:
  addr: 127.0.0.1:$port
EOF
    docker-registry serve "$d/config.yml" >>"$d/server.log" 2>&1 &
    PID[proxy]=$!
    URL[proxy]="http://127.0.0.1:$port"
    wait_ready proxy "${URL[proxy]}/v2/" 30
}

start() { # name [keep]
    local i rc
    for ((i = 0; i < 5; i++)); do
        "start_$1" "${@:2}"
        rc=$?
        ((rc == 2)) || return $rc
    done
    fail "$1: no free port after 5 tries"
    return 1
}
restart_fresh() { stop_server "$1"; start "$1"; }

# Both mirrors keep blobs in distribution's layout: is this blob complete on disk?

# ---------------------------------------------------------------- upstream accounting
# Whether the system has these blobs on disk (for up_settle: the reference proxy stores a
# blob in a background goroutine that may outlive the client's request).
has_blobs() { # system digest...
    local s=$1 d
    shift
    for d in "$@"; do has_blob "$s" "$d" || return 1; done
}
# Sets UP_GETS (GETs answered 200/206), UP_BYTES (their body bytes), UP_REQS (all requests),
# UP_BLOB_GETS (GETs of the given digest) for the access log lines after the mark.
up_count() { # mark [digest]
    read -r UP_REQS UP_GETS UP_BYTES UP_BLOB_GETS < <(tail -n +$(($1 + 1)) "$WORK/upstream/access.log" |
        awk -v d="${2:-none}" '$6 ~ /^"(GET|HEAD|PUT|POST|PATCH|DELETE)$/ { n++ }
            $6 == "\"GET" && ($9 == 200 || $9 == 206) { g++; b += $10 }
            $6 == "\"GET" && index($7, "/blobs/" d) { bg++ }
            END { printf "%d %d %.0f %d\n", n, g, b, bg }')
}

# ---------------------------------------------------------------- registry client (curl)
# (resolve_location, with_digest, header_of: benches/lib.sh)
ACCEPT='application/vnd.oci.image.manifest.v1+json,application/vnd.docker.distribution.manifest.v2+json'

# One pull as docker does it: GET the manifest by tag, then GET every blob it names (config and
# layers), 3 at a time, over reused connections, to /dev/null. Sets PULL_SECS (wall time of both
# curl runs) and PULL_BYTES; returns 1 (PULL_ERR says why) on an error answer or a short body.
pull() { # base repo tag
    local base=$1 repo=$2 tag=$3 t0 code out d ok args=()
    PULL_SECS="" PULL_BYTES=0 PULL_ERR=""
    t0=$(now_ns)
    code=$(curl -s -o "$WORK/pull.manifest" -w '%{http_code}' -H "Accept: $ACCEPT" "$base/v2/$repo/manifests/$tag")
    [[ "$code" == 200 ]] || { PULL_ERR="GET /v2/$repo/manifests/$tag -> $code"; return 1; }
    for d in $(grep -o '"digest":"sha256:[0-9a-f]*"' "$WORK/pull.manifest" | cut -d'"' -f4); do
        args+=(-o /dev/null "$base/v2/$repo/blobs/$d")
    done
    out=$(curl -s --no-progress-meter -Z --parallel-max 3 --parallel-immediate -w '%{http_code} %{size_download}\n' "${args[@]}")
    PULL_SECS=$(secs_since "$t0")
    read -r ok PULL_BYTES <<<"$(awk '{ b += $2; if ($1 != 200) bad++ } END { printf "%d %d\n", (bad == 0 && NR > 0), b }' <<<"$out")"
    ((ok)) || { PULL_ERR="blob GETs: $(tr '\n' ' ' <<<"$out")"; return 1; }
    ((PULL_BYTES == IMG_BLOB_BYTES)) || { PULL_ERR="blob bytes $PULL_BYTES, expected $IMG_BLOB_BYTES"; return 1; }
    PULL_BYTES=$((PULL_BYTES + $(stat -c %s "$WORK/pull.manifest")))
}

# N concurrent curls of one blob to /dev/null (one of them writes into openssl dgst instead, as a
# content check). Sets FAN_SECS (wall time from the first launch until the last curl ends) and
# FAN_MAX (the slowest curl's time_total); returns 1 (FAN_ERR says why) on an error answer, a
# short body or a wrong digest.
fan() { # base repo digest size n
    local base=$1 repo=$2 digest=$3 size=$4 n=$5 t0 i summary bad pids=()
    FAN_SECS="" FAN_MAX="" FAN_ERR=""
    rm -f "$WORK"/fan.*
    mkfifo "$WORK/fan.fifo"
    openssl dgst -sha256 -r <"$WORK/fan.fifo" >"$WORK/fan.sum" &
    pids+=($!)
    t0=$(now_ns)
    for ((i = 0; i < n; i++)); do
        curl -s -o "$([[ $i == 0 ]] && echo "$WORK/fan.fifo" || echo /dev/null)" \
            -w '%{http_code} %{size_download} %{time_total}\n' "$base/v2/$repo/blobs/$digest" >"$WORK/fan.$i" &
        pids+=($!)
    done
    wait "${pids[@]}"
    FAN_SECS=$(secs_since "$t0")
    summary=$(cat "$WORK"/fan.[0-9]* | awk -v s="$size" -v n="$n" '{ c++; if ($1 != 200 || $2 != s) bad++; if ($3 > m) m = $3 }
        END { printf "%d %d %.6f\n", c, bad + (n - c), m }')
    read -r _ bad FAN_MAX <<<"$summary"
    ((bad == 0)) || { FAN_ERR="$bad of $n GETs failed or came back short: $(sort "$WORK"/fan.[0-9]* | uniq -c | head -n 5 | tr '\n' ' ')"; return 1; }
    [[ "sha256:$(awk '{print $1}' "$WORK/fan.sum")" == "$digest" ]] || { FAN_ERR="body digest differs: $(cat "$WORK/fan.sum")"; return 1; }
}

# ---------------------------------------------------------------- header
log "== Pier mirror benchmark  $(date -u '+%Y-%m-%d %H:%M:%S UTC')"
log "machine: $(hostname) | $(nproc) cores | $(awk -F': ' '/^model name/ {print $2; exit}' /proc/cpuinfo) |" \
    "$(awk '/^MemTotal/ {printf "%.0f GiB", $2/1048576}' /proc/meminfo) | Linux $(uname -r)"
log "tests: $TESTS | rounds: $ROUNDS | warm duration: ${DUR}s | fan-out clients: $CLIENTS | work dir: $WORK"
log "pier: $PIER_BIN ($("$PIER_BIN" --version 2>/dev/null | head -n 1 || true)," \
    "built $(date -u -r "$PIER_BIN" '+%Y-%m-%d %H:%M:%S UTC'); checkout at $(git -C "$REPO_DIR" rev-parse --short HEAD 2>/dev/null || echo '?'))"
log "upstream and reference proxy: $(docker-registry --version 2>/dev/null | head -n 1)"
log "$(curl --version | head -n 1 | awk '{print $1, $2}') | wrk: $(wrk --version 2>&1 | head -n 1 | awk '{print $1, $2}') | $(openssl version)"
log ""
# ---------------------------------------------------------------- fixtures
FIX="$WORK/fixtures"
mkdir -p "$FIX"
LAYERS=4
LAYER_SIZE=$((25 << 20))
BIG_SIZE=$((100 << 20))
IMG_REPO=bench/app
BIG_REPO=bench/big
log "-- fixtures: an image of $LAYERS x $((LAYER_SIZE >> 20)) MiB random layers + config ($IMG_REPO:v1), a $((BIG_SIZE >> 20)) MiB random blob ($BIG_REPO)"
LAYER_DIGESTS=()
for ((i = 0; i < LAYERS; i++)); do
    gen_random_file "$FIX/layer$i" "$LAYER_SIZE" || { fail "cannot generate fixtures"; exit 1; }
    LAYER_DIGESTS+=("sha256:$(sha256_of "$FIX/layer$i")")
done
gen_random_file "$FIX/big" "$BIG_SIZE" || { fail "cannot generate fixtures"; exit 1; }
DBIG="sha256:$(sha256_of "$FIX/big")"
diff_ids=$(printf '"%s",' "${LAYER_DIGESTS[@]}")
printf '{"architecture":"amd64","os":"linux","rootfs":{"type":"layers","diff_ids":[%s]},"config":{}}' "${diff_ids%,}" >"$FIX/config.json"
DCFG="sha256:$(sha256_of "$FIX/config.json")"
CFG_SIZE=$(stat -c %s "$FIX/config.json")
layers_json=""
for ((i = 0; i < LAYERS; i++)); do
    layers_json+=$(printf '{"mediaType":"application/vnd.oci.image.layer.v1.tar+gzip","digest":"%s","size":%d},' "${LAYER_DIGESTS[$i]}" "$LAYER_SIZE")
done
printf '{"schemaVersion":2,"mediaType":"application/vnd.oci.image.manifest.v1+json","config":{"mediaType":"application/vnd.oci.image.config.v1+json","digest":"%s","size":%d},"layers":[%s]}' \
    "$DCFG" "$CFG_SIZE" "${layers_json%,}" >"$FIX/manifest.json"
IMG_DIGESTS=("$DCFG" "${LAYER_DIGESTS[@]}")
IMG_BLOB_BYTES=$((CFG_SIZE + LAYERS * LAYER_SIZE))
IMG_BYTES=$((IMG_BLOB_BYTES + $(stat -c %s "$FIX/manifest.json")))
IMG_MB=$(awk -v b="$IMG_BYTES" 'BEGIN { printf "%.3f", b / 1e6 }')

# ---------------------------------------------------------------- upstream
start upstream || exit 1
log "upstream: ${URL[upstream]} (pid ${PID[upstream]}), access log on"
for ((i = 0; i < LAYERS; i++)); do
    push_blob "${URL[upstream]}" "$IMG_REPO" "$FIX/layer$i" "${LAYER_DIGESTS[$i]}" || { fail "upstream: layer push"; exit 1; }
done
push_blob "${URL[upstream]}" "$IMG_REPO" "$FIX/config.json" "$DCFG" || { fail "upstream: config push"; exit 1; }
push_blob "${URL[upstream]}" "$BIG_REPO" "$FIX/big" "$DBIG" || { fail "upstream: big blob push"; exit 1; }
code=$(curl -s -o /dev/null -w '%{http_code}' -X PUT -H 'Content-Type: application/vnd.oci.image.manifest.v1+json' \
    --data-binary "@$FIX/manifest.json" "${URL[upstream]}/v2/$IMG_REPO/manifests/v1")
[[ "$code" == 201 ]] || { fail "upstream: manifest PUT -> $code"; exit 1; }
pull "${URL[upstream]}" "$IMG_REPO" v1 || { fail "upstream: pull: $PULL_ERR"; exit 1; }
# The fixtures are not needed any more (the upstream holds them); the page cache holds the upstream's files.
rm -f "$FIX"/layer* "$FIX/big"
log "image: $IMG_BYTES bytes (manifest + config + $LAYERS layers); blob: $BIG_SIZE bytes"
log ""

mbs() { awk -v b="$1" -v t="$2" 'BEGIN { if (t > 0) printf "%.2f\n", b / t / 1e6 }'; }
declare -A LABEL=([upstream]="upstream" [pier]="Pier" [proxy]="reference")

# ---------------------------------------------------------------- (1) cold pull
if has "$TESTS" cold; then
    log "-- (1) cold pull of the image (GET manifest, then ${#IMG_DIGESTS[@]} blobs 3 at a time): straight from the"
    log "   upstream, through a fresh Pier, through a fresh reference proxy (new data dir, restarted, per pull); $ROUNDS rounds"
    for ((r = 1; r <= ROUNDS; r++)); do
        for s in upstream pier proxy; do
            if [[ $s != upstream ]]; then
                restart_fresh "$s" || continue
            fi
            mark=$(up_mark)
            c0=$(cpu_ticks "${PID[$s]}") u0=$(cpu_ticks "${PID[upstream]}")
            if ! pull "${URL[$s]}" "$IMG_REPO" v1; then
                fail "$s cold pull: $PULL_ERR"
                continue
            fi
            secs=$PULL_SECS bytes=$PULL_BYTES
            if [[ $s == upstream ]]; then
                up_settle
            else
                up_settle "$s" "${IMG_DIGESTS[@]}"
            fi
            up_count "$mark"
            cpu=$(cpu_since "${PID[$s]}" "$c0") ucpu=$(cpu_since "${PID[upstream]}" "$u0")
            record cold.secs "$s" "$secs"
            record cold.cpu "$s" "$cpu"
            [[ $s != upstream ]] && record cold.upbytes "$s" "$UP_BYTES"
            printf '  round %d  %-9s %7.3f s %6s MB/s | CPU s: %-9s %5s, upstream %5s | upstream: %2d requests, %2d GETs, %9d bytes (%sx the image)\n' \
                "$r" "${LABEL[$s]}" "$secs" "$(fmt "$(mbs "$bytes" "$secs")")" "${LABEL[$s]}" \
                "$([[ $s == upstream ]] && echo - || echo "$cpu")" "$ucpu" "$UP_REQS" "$UP_GETS" "$UP_BYTES" \
                "$(awk -v a="$UP_BYTES" -v b="$IMG_BYTES" 'BEGIN { printf "%.2f", a / b }')"
        done
    done
    for s in upstream pier proxy; do
        printf '  median   %-9s %7s s | CPU s: %s\n' "${LABEL[$s]}" "$(fmt "$(med cold.secs "$s")")" "$(fmt "$(med cold.cpu "$s")")"
    done
    log ""
fi

# ---------------------------------------------------------------- (2) warm pulls
if has "$TESTS" warm; then
    log "-- (2) warm pulls: Pier vs the reference proxy, both holding the image (pulled once through each, content checked)"
    for s in pier proxy; do
        running "$s" || start "$s" keep || continue
        pull "${URL[$s]}" "$IMG_REPO" v1 || { fail "$s warm-up pull: $PULL_ERR"; stop_server "$s"; continue; }
        up_settle "$s" "${IMG_DIGESTS[@]}"
        verify_image "$s" || stop_server "$s"
    done
    # wrk: 32 connections, each cycling through the pull's requests (manifest by tag, config, layers).
    {
        printf 'local paths = {"/v2/%s/manifests/v1"' "$IMG_REPO"
        for d in "${IMG_DIGESTS[@]}"; do printf ', "/v2/%s/blobs/%s"' "$IMG_REPO" "$d"; done
        printf '}\n'
        cat <<LUA
local i = 0
request = function()
  i = i % #paths + 1
  return wrk.format("GET", paths[i], { ["Accept"] = "$ACCEPT" })
end
done = function(summary, latency, requests)
  local e = summary.errors
  io.write(string.format("BENCH %d %d %d %d %d\n", summary.requests, summary.bytes, summary.duration,
    e.connect + e.read + e.write + e.timeout, e.status))
end
LUA
    } >"$WORK/image.lua"
    log "   (a) sequential pulls for ${DUR}s (each as in (1)); (b) wrk -t2 -c32 -d${DUR}s cycling over the pull's ${#IMG_DIGESTS[@]}+1 URLs; $ROUNDS rounds"
    for ((r = 1; r <= ROUNDS; r++)); do
        for s in pier proxy; do
            running "$s" || continue
            mark=$(up_mark)
            n=0 total=0 t0=$(now_ns) err=""
            while :; do
                pull "${URL[$s]}" "$IMG_REPO" v1 || { err=$PULL_ERR; break; }
                n=$((n + 1)) total=$((total + PULL_BYTES))
                (($(now_ns) - t0 >= DUR * 1000000000)) && break
            done
            el=$(secs_since "$t0")
            [[ -n "$err" ]] && { fail "$s warm pull: $err"; continue; }
            up_settle
            up_count "$mark"
            pps=$(awk -v n="$n" -v t="$el" 'BEGIN { printf "%.3f", n / t }')
            m=$(mbs "$total" "$el")
            record warm.pps "$s" "$pps"
            record warm.mbs "$s" "$m"
            record warm.upreq "$s" "$(awk -v a="$UP_REQS" -v n="$n" 'BEGIN { printf "%.2f", a / n }')"
            printf '  round %d  %-9s (a) %4d pulls in %6.2f s = %7s pulls/s %8s MB/s   upstream requests: %d\n' \
                "$r" "${LABEL[$s]}" "$n" "$el" "$(fmt "$pps")" "$(fmt "$m")" "$UP_REQS"
        done
        for s in pier proxy; do
            running "$s" || continue
            out=$(wrk -t2 -c32 -d"${DUR}s" --timeout 60s -s "$WORK/image.lua" "${URL[$s]}" 2>&1)
            line=$(grep '^BENCH ' <<<"$out" | tail -n 1)
            [[ -n "$line" ]] || { fail "$s wrk: no result: $(tail -n 3 <<<"$out" | tr '\n' ' ')"; continue; }
            read -r _ req bytes us errs st <<<"$line"
            ((st == 0 && bytes > 0)) || { fail "$s wrk: $req requests, $st answers with status >= 400"; continue; }
            ((errs > 0)) && log "  note: $s wrk: $errs socket errors/timeouts"
            m=$(awk -v b="$bytes" -v us="$us" 'BEGIN { printf "%.2f", b / (us / 1e6) / 1e6 }')
            rps=$(awk -v r="$req" -v us="$us" 'BEGIN { printf "%.2f", r / (us / 1e6) }')
            pps=$(awk -v m="$m" -v i="$IMG_MB" 'BEGIN { printf "%.3f", m / i }')
            record wrk.mbs "$s" "$m"
            record wrk.pps "$s" "$pps"
            printf '  round %d  %-9s (b) %8s req/s %8s MB/s = %7s pulls/s (MB/s / image size)\n' \
                "$r" "${LABEL[$s]}" "$(fmt "$rps")" "$(fmt "$m")" "$(fmt "$pps")"
        done
    done
    for s in pier proxy; do
        printf '  median   %-9s (a) %7s pulls/s %8s MB/s (%s upstream requests per pull)   (b) %8s MB/s = %7s pulls/s\n' "${LABEL[$s]}" \
            "$(fmt "$(med warm.pps "$s")")" "$(fmt "$(med warm.mbs "$s")")" "$(fmt "$(med warm.upreq "$s")")" \
            "$(fmt "$(med wrk.mbs "$s")")" "$(fmt "$(med wrk.pps "$s")")"
    done
    log ""
fi

# ---------------------------------------------------------------- (3) fan-out
if has "$TESTS" fanout; then
    log "-- (3) $CLIENTS concurrent cold pulls of the $((BIG_SIZE >> 20)) MiB blob (curl to /dev/null) vs one cold pull;"
    log "   fresh data dir per run; upstream GETs and bytes from its access log; $ROUNDS rounds"
    for ((r = 1; r <= ROUNDS; r++)); do
        for s in pier proxy; do
            for n in 1 "$CLIENTS" warm; do
                if [[ $n == warm ]]; then
                    # Context: the same fan-out served from the cache this run just filled.
                    running "$s" || continue
                    n=$CLIENTS kind=warm
                else
                    restart_fresh "$s" || continue
                    kind=cold
                fi
                mark=$(up_mark)
                c0=$(cpu_ticks "${PID[$s]}")
                if ! fan "${URL[$s]}" "$BIG_REPO" "$DBIG" "$BIG_SIZE" "$n"; then
                    fail "$s $n x $kind GET of the blob: $FAN_ERR"
                    continue
                fi
                up_settle "$s" "$DBIG"
                up_count "$mark" "$DBIG"
                cpu=$(cpu_since "${PID[$s]}" "$c0")
                key="fan.$kind$n"
                record "$key.secs" "$s" "$FAN_SECS"
                record "$key.upbytes" "$s" "$(awk -v a="$UP_BYTES" -v b="$BIG_SIZE" 'BEGIN { printf "%.4f", a / b }')"
                record "$key.upgets" "$s" "$UP_BLOB_GETS"
                printf '  round %d  %-9s %3d x %-4s %7.3f s (slowest curl %7.3f s) %6s MB/s to clients, CPU %5s s | upstream: %3d GETs of the blob, %11d bytes (%sx the blob)\n' \
                    "$r" "${LABEL[$s]}" "$n" "$kind" "$FAN_SECS" "$FAN_MAX" "$(fmt "$(mbs $((n * BIG_SIZE)) "$FAN_SECS")")" "$cpu" \
                    "$UP_BLOB_GETS" "$UP_BYTES" "$(awk -v a="$UP_BYTES" -v b="$BIG_SIZE" 'BEGIN { printf "%.2f", a / b }')"
            done
        done
    done
    for s in pier proxy; do
        printf '  median   %-9s 1 x cold %7s s | %d x cold %7s s, upstream %sx the blob in %s GETs | %d x warm %7s s\n' "${LABEL[$s]}" \
            "$(fmt "$(med fan.cold1.secs "$s")")" "$CLIENTS" "$(fmt "$(med "fan.cold$CLIENTS.secs" "$s")")" \
            "$(fmt "$(med "fan.cold$CLIENTS.upbytes" "$s")")" "$(med "fan.cold$CLIENTS.upgets" "$s")" \
            "$CLIENTS" "$(fmt "$(med "fan.warm$CLIENTS.secs" "$s")")"
    done
    log ""
fi

# ---------------------------------------------------------------- summary
# (ratio, verdict: benches/lib.sh)
row() { # check pier other other_name op target [ratio]
    local check=$1 p=$2 o=$3 oname=$4 op=$5 t=$6 r=${7:-}
    [[ -z "$r" ]] && r=$(ratio "$p" "$o")
    printf '| %-52s | %9s | %9s %-11s | %7s | %-7s | %-6s |\n' "$check" "$(fmt "$p")" "$(fmt "$o")" "${oname:+($oname)}" \
        "${r:+${r}x}" "$op ${t}x" "$(verdict "$r" "$op" "$t")"
}

log "== Summary (medians of $ROUNDS rounds; MB = 10^6 bytes; $(date -u '+%Y-%m-%d'), $(hostname), $(nproc) cores)"
printf '| %-52s | %9s | %-21s | %7s | %-7s | %-6s |\n' "check" "Pier" "other" "ratio" "target" "result"
printf '|%s|%s|%s|%s|%s|%s|\n' "$(printf -- '-%.0s' {1..54})" "$(printf -- '-%.0s' {1..11})" \
    "$(printf -- '-%.0s' {1..23})" "$(printf -- '-%.0s' {1..9})" "$(printf -- '-%.0s' {1..9})" "$(printf -- '-%.0s' {1..8})"
row "(1) cold pull of the ~100 MiB image, s" "$(med cold.secs pier)" "$(med cold.secs upstream)" upstream "<=" 1.1
row "(2a) warm sequential pulls, pulls/s" "$(med warm.pps pier)" "$(med warm.pps proxy)" reference ">=" 4
row "(2a) warm sequential pulls, MB/s" "$(med warm.mbs pier)" "$(med warm.mbs proxy)" reference ">=" 4
row "(2b) warm wrk -c32 over the image's URLs, MB/s" "$(med wrk.mbs pier)" "$(med wrk.mbs proxy)" reference ">=" 4
row "(2b) same, in pulls/s (MB/s / image size)" "$(med wrk.pps pier)" "$(med wrk.pps proxy)" reference ">=" 4
row "(3) $CLIENTS cold pulls: upstream bytes / blob size" "$(med "fan.cold$CLIENTS.upbytes" pier)" "$(med "fan.cold$CLIENTS.upbytes" proxy)" reference "=" 1 \
    "$(ratio "$(med "fan.cold$CLIENTS.upbytes" pier)" 1)"
row "(3) $CLIENTS cold pulls wall time / 1 cold pull (Pier), s" "$(med "fan.cold$CLIENTS.secs" pier)" "$(med fan.cold1.secs pier)" "1 pull" "<=" 1.3
log ""
log "context (not targets): cold pull through the reference proxy $(fmt "$(med cold.secs proxy)") s" \
    "($(fmt "$(ratio "$(med cold.secs proxy)" "$(med cold.secs upstream)")")x the upstream), upstream bytes per cold pull" \
    "Pier $(fmt "$(ratio "$(med cold.upbytes pier)" "$IMG_BYTES")")x / reference $(fmt "$(ratio "$(med cold.upbytes proxy)" "$IMG_BYTES")")x the image;" \
    "upstream requests per warm pull: Pier $(fmt "$(med warm.upreq pier)"), reference $(fmt "$(med warm.upreq proxy)");" \
    "$CLIENTS cold pulls: upstream GETs of the blob Pier $(med "fan.cold$CLIENTS.upgets" pier), reference $(med "fan.cold$CLIENTS.upgets" proxy)," \
    "wall time reference $(fmt "$(med "fan.cold$CLIENTS.secs" proxy)") s ($(fmt "$(ratio "$(med "fan.cold$CLIENTS.secs" proxy)" "$(med fan.cold1.secs proxy)")")x its 1 cold pull);" \
    "$CLIENTS warm pulls from the filled cache: Pier $(fmt "$(med "fan.warm$CLIENTS.secs" pier)") s, reference $(fmt "$(med "fan.warm$CLIENTS.secs" proxy)") s" \
    "(Pier's $CLIENTS cold / $CLIENTS warm = $(fmt "$(ratio "$(med "fan.cold$CLIENTS.secs" pier)" "$(med "fan.warm$CLIENTS.secs" pier)")")x)"

finish
