#!/usr/bin/env bash
# Side-by-side load benchmark: Pier vs the reference registry (CNCF distribution,
# Debian's `docker-registry`) vs nginx `sendfile` serving the same blob files.
#
#   benches/load/run.sh [--quick] [--only pier,baseline,reference,nginx] [--tests get,manifest,upload,memory]
#                       [--rounds N] [--duration SECS] [--upload-runs N] [--keep]
#
# Every server is started by this script on a free 127.0.0.1 port with its own temporary
# data directory, and stopped again on exit (trap). Measurements alternate between the
# systems (A B C A B C ...), and the summary uses medians. See benches/README.md.
#
# Environment:
#   PIER_BIN        Pier binary (default: $CARGO_TARGET_DIR/release/pier, then
#                   /root/.cache/pier/target/release/pier, then <repo>/target/release/pier)
#   PIER_BASELINE_BIN  another Pier binary (e.g. the previous main's) measured as "baseline"
#                   with `--only pier,baseline,...`: the summary then prints Pier / baseline
#                   (A/B in one run, target >= 0.95x)
#   PIER_LOG        Pier's log filter (default here: warn, so the per-request access log
#                   stays off, as the reference's access log is off)
#   BENCH_TMPDIR    where the temporary directory goes (default: $TMPDIR or /tmp); needs ~8 GiB
#                   (2 GiB memory-test file plus what each registry stores)
#
# Exit status: 0 when everything ran (a MISS against a target is a finding, not a failure),
# 1 when some measurement could not be taken, 2 on bad usage or missing tools.
set -uo pipefail

SCRIPT_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
REPO_DIR="$(cd "$SCRIPT_DIR/../.." && pwd)"
# shellcheck source=../lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/../lib.sh"

# ---------------------------------------------------------------- options
QUICK=0
ONLY="pier,reference,nginx"
TESTS="get,manifest,upload,memory"
ROUNDS=""
DUR=""
UPLOAD_RUNS=""
KEEP=0

usage() { sed -n '2,21p' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//'; }

while (($#)); do
    case "$1" in
        --quick) QUICK=1 ;;
        --only) ONLY="${2:?--only needs a list}"; shift ;;
        --only=*) ONLY="${1#*=}" ;;
        --tests) TESTS="${2:?--tests needs a list}"; shift ;;
        --tests=*) TESTS="${1#*=}" ;;
        --rounds) ROUNDS="${2:?}"; shift ;;
        --rounds=*) ROUNDS="${1#*=}" ;;
        --duration) DUR="${2:?}"; shift ;;
        --duration=*) DUR="${1#*=}" ;;
        --upload-runs) UPLOAD_RUNS="${2:?}"; shift ;;
        --upload-runs=*) UPLOAD_RUNS="${1#*=}" ;;
        --keep) KEEP=1 ;;
        -h|--help) usage; exit 0 ;;
        *) echo "run.sh: unknown argument: $1" >&2; usage >&2; exit 2 ;;
    esac
    shift
done

if ((QUICK)); then
    : "${ROUNDS:=2}" "${DUR:=3}" "${UPLOAD_RUNS:=2}"
else
    : "${ROUNDS:=3}" "${DUR:=10}" "${UPLOAD_RUNS:=3}"
fi
((ROUNDS >= 1)) || { echo "run.sh: --rounds must be >= 1" >&2; exit 2; }

for s in ${ONLY//,/ }; do
    case "$s" in pier|baseline|reference|nginx) ;; *) echo "run.sh: --only: unknown system '$s'" >&2; exit 2 ;; esac
done
for t in ${TESTS//,/ }; do
    case "$t" in get|manifest|upload|memory) ;; *) echo "run.sh: --tests: unknown test '$t'" >&2; exit 2 ;; esac
done
# Registry systems (those that speak /v2/), in measurement order.
REGS=()
has "$ONLY" pier && REGS+=(pier)
has "$ONLY" baseline && REGS+=(baseline)
has "$ONLY" reference && REGS+=(reference)

# ---------------------------------------------------------------- tools
need_tools=(curl wrk ab openssl awk sort split dd)
has "$ONLY" reference && need_tools+=(docker-registry)
has "$ONLY" nginx && need_tools+=(nginx)
require_tools "${need_tools[@]}"

if has "$ONLY" pier; then
    find_pier_bin ", or run with --only reference,nginx"
fi

if has "$ONLY" baseline && [[ -z "${PIER_BASELINE_BIN:-}" || ! -x "${PIER_BASELINE_BIN:-}" ]]; then
    echo "run.sh: --only baseline needs PIER_BASELINE_BIN (another pier binary)" >&2
    exit 2
fi

# ---------------------------------------------------------------- workspace and cleanup
BASE_TMP="${BENCH_TMPDIR:-${TMPDIR:-/tmp}}"
WORK="$(mktemp -d "$BASE_TMP/pier-bench.XXXXXX")" || exit 2
chmod 755 "$WORK"
declare -A PID=()
FAILURES=()

cleanup() {
    local name
    rm -f "$WORK/sampling" 2>/dev/null
    for name in "${!PID[@]}"; do stop_server "$name"; done
    if ((KEEP)); then
        echo "run.sh: kept $WORK" >&2
    else
        rm -rf "$WORK"
    fi
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# ---------------------------------------------------------------- small helpers
# (log, fail, has, free_port, now_ns, median, record, med, sha256_of, gen_random_file, running,
# stop_server: benches/lib.sh)
fmt() { # number -> short human form; "-" if empty
    [[ -z "${1:-}" ]] && { echo "-"; return; }
    awk -v x="$1" 'BEGIN { if (x >= 100) printf "%.0f", x; else if (x >= 10) printf "%.1f", x; else printf "%.2f", x }'
}

# Overwrite the first 32 bytes with fresh random data: a new digest without rewriting the file.
# ---------------------------------------------------------------- servers
declare -A URL=() PORT=()

wait_ready() { # name url timeout_s
    local name=$1 url=$2 t=$3 i
    for ((i = 0; i < t * 10; i++)); do
        if ! kill -0 "${PID[$name]}" 2>/dev/null; then
            fail "$name exited during startup (log: $WORK/$name/server.log)"
            tail -n 20 "$WORK/$name/server.log" >&2 2>/dev/null
            unset "PID[$name]"
            return 1
        fi
        [[ "$(curl -s -o /dev/null -w '%{http_code}' "$url" 2>/dev/null)" == 200 ]] && return 0
        sleep 0.1
    done
    fail "$name not ready after ${t}s ($url)"
    return 1
}

start_pier() { # [name] [binary]
    local name=${1:-pier} bin=${2:-$PIER_BIN}
    local d="$WORK/$name" port admin
    mkdir -p "$d/data"
    free_port || return 1
    port=$FREE_PORT
    free_port || return 1
    admin=$FREE_PORT
    PIER_LOG="${PIER_LOG:-warn}" "$bin" serve --listen "127.0.0.1:$port" \
        --admin-listen "127.0.0.1:$admin" --root "$d/data" >"$d/server.log" 2>&1 &
    PID[$name]=$!
    PORT[$name]=$port
    URL[$name]="http://127.0.0.1:$port"
    wait_ready "$name" "${URL[$name]}/v2/" 30
}

start_baseline() { start_pier baseline "$PIER_BASELINE_BIN"; }

start_reference() {
    local d="$WORK/reference" port
    mkdir -p "$d/data"
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
    rootdirectory: $d/data
  delete:
    enabled: true
  cache:
    blobdescriptor: inmemory
  maintenance:
    uploadpurging:
      enabled: false
http:
  addr: 127.0.0.1:$port
EOF
    docker-registry serve "$d/config.yml" >"$d/server.log" 2>&1 &
    PID[reference]=$!
    PORT[reference]=$port
    URL[reference]="http://127.0.0.1:$port"
    wait_ready reference "${URL[reference]}/v2/" 30
}

start_nginx() {
    local d="$WORK/nginx" port
    mkdir -p "$d/root" "$d/tmp"
    chmod -R a+rX "$d"
    free_port || return 1
    port=$FREE_PORT
    cat >"$d/nginx.conf" <<EOF
worker_processes 2;
daemon off;
pid $d/nginx.pid;
error_log $d/server.log error;
events { worker_connections 4096; }
http {
    access_log off;
    sendfile on;
    tcp_nopush on;
    keepalive_requests 10000000;
    keepalive_timeout 75s;
    default_type application/octet-stream;
    client_body_temp_path $d/tmp/body;
    proxy_temp_path $d/tmp/proxy;
    fastcgi_temp_path $d/tmp/fastcgi;
    uwsgi_temp_path $d/tmp/uwsgi;
    scgi_temp_path $d/tmp/scgi;
    server {
        listen 127.0.0.1:$port;
        root $d/root;
        location = /ping { return 200 "ok"; }
        location / { }
    }
}
EOF
    nginx -p "$d" -e "$d/server.log" -c "$d/nginx.conf" >>"$d/server.log" 2>&1 &
    PID[nginx]=$!
    PORT[nginx]=$port
    URL[nginx]="http://127.0.0.1:$port"
    wait_ready nginx "${URL[nginx]}/ping" 15
}

# ---------------------------------------------------------------- registry client (curl)
# (resolve_location, with_digest, header_of: benches/lib.sh)
start_session() { # base -> upload url (empty on error)
    local base=$1 hdr="$WORK/hdr.$$" code
    code=$(curl -s -o /dev/null -D "$hdr" -w '%{http_code}' -X POST "$base/v2/bench/blobs/uploads/")
    [[ "$code" == 202 ]] || { echo "POST /v2/bench/blobs/uploads/ -> $code" >&2; return 1; }
    resolve_location "$base" "$(header_of "$hdr" location)"
}

# Push a blob: monolithic POST ?digest= with the body (201); registries that answer 202
# instead (start a session, ignoring the body) get a PUT ?digest= with the body.
push_blob() { # base file digest
    local base=$1 file=$2 digest=$3 hdr="$WORK/hdr.$$" code loc
    code=$(curl -s -o /dev/null -D "$hdr" -w '%{http_code}' -X POST -H 'Expect:' \
        -H 'Content-Type: application/octet-stream' --data-binary "@$file" \
        "$base/v2/bench/blobs/uploads/?digest=$digest")
    [[ "$code" == 201 ]] && return 0
    if [[ "$code" == 202 ]]; then
        loc=$(resolve_location "$base" "$(header_of "$hdr" location)")
        code=$(curl -s -o /dev/null -w '%{http_code}' -X PUT -H 'Expect:' \
            -H 'Content-Type: application/octet-stream' --data-binary "@$file" "$(with_digest "$loc" "$digest")")
        [[ "$code" == 201 ]] && return 0
    fi
    echo "push of $digest to $base failed (HTTP $code)" >&2
    return 1
}

# Monolithic upload: POST a session, PUT ?digest= with the whole body (streamed by curl -T).
# Prints the seconds spent in both requests (curl %{time_total}).
upload_monolithic() { # base file digest
    local base=$1 file=$2 digest=$3 loc out code t1 t2
    out=$(curl -s -o /dev/null -D "$WORK/hdr.m" -w '%{http_code} %{time_total}' -X POST "$base/v2/bench/blobs/uploads/")
    read -r code t1 <<<"$out"
    [[ "$code" == 202 ]] || { echo "POST session -> $code" >&2; return 1; }
    loc=$(resolve_location "$base" "$(header_of "$WORK/hdr.m" location)")
    out=$(curl -s -o /dev/null -w '%{http_code} %{time_total}' -H 'Expect:' \
        -H 'Content-Type: application/octet-stream' -T "$file" "$(with_digest "$loc" "$digest")")
    read -r code t2 <<<"$out"
    [[ "$code" == 201 ]] || { echo "PUT ?digest= -> $code" >&2; return 1; }
    awk -v a="$t1" -v b="$t2" 'BEGIN { printf "%.6f\n", a + b }'
}

# ---------------------------------------------------------------- load generators
cat >"$WORK/report.lua" <<'EOF'
done = function(summary, latency, requests)
  local e = summary.errors
  io.write(string.format("BENCH %d %d %d %d %d\n", summary.requests, summary.bytes, summary.duration,
    e.connect + e.read + e.write + e.timeout, e.status))
end
EOF

ACCEPT='application/vnd.oci.image.manifest.v1+json,application/vnd.docker.distribution.manifest.v2+json'

# wrk -c32 -t2; sets OUT="req/s MB/s" (MB = 10^6 bytes; bytes include partially read bodies).
# Helpers set OUT instead of printing so that they run in this shell and fail() is kept.
run_wrk() { # label duration url [wrk args...]
    local label=$1 dur=$2 url=$3 out line req bytes us errs st
    shift 3
    OUT=""
    out=$(wrk -t2 -c32 -d"${dur}s" --timeout 60s -s "$WORK/report.lua" "$@" "$url" 2>&1)
    line=$(grep '^BENCH ' <<<"$out" | tail -n 1)
    if [[ -z "$line" ]]; then
        fail "$label: wrk gave no result: $(tail -n 3 <<<"$out" | tr '\n' ' ')"
        return 1
    fi
    read -r _ req bytes us errs st <<<"$line"
    # A short run of 100 MiB GETs may complete no request at all: judge by bytes read.
    if ((st > 0)) || ((bytes == 0)); then
        fail "$label: $req requests, $bytes bytes, $st answers with status >= 400"
        return 1
    fi
    ((errs > 0)) && log "  note: $label: $errs socket errors/timeouts"
    OUT=$(awk -v r="$req" -v b="$bytes" -v us="$us" 'BEGIN { printf "%.2f %.2f\n", r / (us / 1e6), b / (us / 1e6) / 1e6 }')
}

# ab -k -i (HEAD) -c32, time-bound; sets OUT=req/s.
run_ab_head() { # label duration url
    local label=$1 dur=$2 url=$3 out rps failed non2xx complete ka
    OUT=""
    out=$(ab -k -i -c32 -t "$dur" -n 100000000 -H "Accept: $ACCEPT" "$url" 2>&1)
    rps=$(awk '/^Requests per second:/ {print $4}' <<<"$out")
    complete=$(awk '/^Complete requests:/ {print $3}' <<<"$out")
    failed=$(awk '/^Failed requests:/ {print $3}' <<<"$out")
    non2xx=$(awk '/^Non-2xx responses:/ {print $3}' <<<"$out")
    if [[ -z "$rps" || -z "$complete" || "$complete" == 0 ]]; then
        fail "$label: ab gave no result: $(tail -n 3 <<<"$out" | tr '\n' ' ')"
        return 1
    fi
    if [[ -n "$non2xx" && "$non2xx" != 0 ]] || [[ -n "$failed" && "$failed" != 0 ]]; then
        fail "$label: ab: $failed failed, ${non2xx:-0} non-2xx of $complete"
        return 1
    fi
    ka=$(awk '/^Keep-Alive requests:/ {print $3}' <<<"$out")
    [[ "${ka:-0}" == "$complete" ]] || log "  note: $label: only ${ka:-0} of $complete requests used keep-alive"
    OUT=$rps
}

# ---------------------------------------------------------------- RSS sampling
rss_kb() { # pid [field] -> kB
    local k v _ f=${2:-VmRSS}
    while read -r k v _; do [[ "$k" == "$f:" ]] && { echo "$v"; return 0; }; done <"/proc/$1/status" 2>/dev/null
    echo 0
}
SAMPLER=""
# Writes "peak_VmRSS_kB peak_RssAnon_kB" to outfile while $WORK/sampling exists. VmRSS includes
# mapped file pages (RssFile), so a server that mmaps blobs shows them there; RssAnon does not.
sampler_start() { # pid outfile
    local pid=$1 out=$2
    touch "$WORK/sampling"
    echo "0 0" >"$out"
    (
        max=0 amax=0
        while [[ -e "$WORK/sampling" ]]; do
            v=0 a=0
            while read -r k n _; do
                case "$k" in VmRSS:) v=$n ;; RssAnon:) a=$n ;; esac
            done <"/proc/$pid/status" 2>/dev/null
            if ((v > max || a > amax)); then
                ((v > max)) && max=$v
                ((a > amax)) && amax=$a
                echo "$max $amax" >"$out"
            fi
            sleep 0.05
        done
    ) &
    SAMPLER=$!
}
sampler_stop() {
    rm -f "$WORK/sampling"
    [[ -n "$SAMPLER" ]] && wait "$SAMPLER" 2>/dev/null
    SAMPLER=""
}
kb_to_mib() { awk -v k="$1" 'BEGIN { printf "%.1f\n", k / 1024 }'; }

# ---------------------------------------------------------------- header
log "== Pier load benchmark  $(date -u '+%Y-%m-%d %H:%M:%S UTC')"
log "machine: $(hostname) | $(nproc) cores | $(awk -F': ' '/^model name/ {print $2; exit}' /proc/cpuinfo) |" \
    "$(awk '/^MemTotal/ {printf "%.0f GiB", $2/1048576}' /proc/meminfo) | Linux $(uname -r)"
log "systems: $ONLY | tests: $TESTS | rounds: $ROUNDS | wrk duration: ${DUR}s | upload runs: $UPLOAD_RUNS | work dir: $WORK"
has "$ONLY" pier && log "pier: $PIER_BIN ($("$PIER_BIN" --version 2>/dev/null | head -n 1 || true)," \
    "built $(date -u -r "$PIER_BIN" '+%Y-%m-%d %H:%M:%S UTC'); checkout at $(git -C "$REPO_DIR" rev-parse --short HEAD 2>/dev/null || echo '?'))"
has "$ONLY" reference && log "reference: $(docker-registry --version 2>/dev/null | head -n 1)"
has "$ONLY" nginx && log "nginx: $(nginx -v 2>&1 | head -n 1)"
log "wrk: $(wrk --version 2>&1 | head -n 1 | awk '{print $1, $2}') | ab: $(ab -V 2>&1 | head -n 1) | $(openssl version)"
log ""

# ---------------------------------------------------------------- fixtures
FIX="$WORK/fixtures"
mkdir -p "$FIX"
log "-- generating fixtures"
gen_random_file "$FIX/blob1m" $((1 << 20)) || { fail "cannot generate fixtures"; exit 1; }
gen_random_file "$FIX/blob100m" $((100 << 20)) || { fail "cannot generate fixtures"; exit 1; }
D1M="sha256:$(sha256_of "$FIX/blob1m")"
D100M="sha256:$(sha256_of "$FIX/blob100m")"
printf '{"architecture":"amd64","os":"linux","rootfs":{"type":"layers","diff_ids":["%s"]},"config":{}}' "$D1M" >"$FIX/config.json"
DCFG="sha256:$(sha256_of "$FIX/config.json")"
printf '{"schemaVersion":2,"mediaType":"application/vnd.oci.image.manifest.v1+json","config":{"mediaType":"application/vnd.oci.image.config.v1+json","digest":"%s","size":%d},"layers":[{"mediaType":"application/vnd.oci.image.layer.v1.tar+gzip","digest":"%s","size":%d}]}' \
    "$DCFG" "$(stat -c %s "$FIX/config.json")" "$D1M" $((1 << 20)) >"$FIX/manifest.json"
DMAN="sha256:$(sha256_of "$FIX/manifest.json")"

# ---------------------------------------------------------------- start servers and push
for s in "${REGS[@]}"; do
    "start_$s" || continue
    log "$s: ${URL[$s]} (pid ${PID[$s]}, idle RSS $(kb_to_mib "$(rss_kb "${PID[$s]}")") MiB)"
    ok=1
    for pair in "$FIX/blob1m $D1M" "$FIX/blob100m $D100M" "$FIX/config.json $DCFG"; do
        read -r f d <<<"$pair"
        push_blob "${URL[$s]}" "$f" "$d" || { fail "$s: blob push failed"; ok=0; }
    done
    code=$(curl -s -o /dev/null -w '%{http_code}' -X PUT -H 'Content-Type: application/vnd.oci.image.manifest.v1+json' \
        --data-binary "@$FIX/manifest.json" "${URL[$s]}/v2/bench/manifests/v1")
    [[ "$code" == 201 ]] || { fail "$s: manifest PUT -> $code"; ok=0; }
    # Sanity: what we will load-test answers correctly.
    got=$(curl -s "${URL[$s]}/v2/bench/blobs/$D1M" | openssl dgst -sha256 -r | awk '{print "sha256:" $1}')
    [[ "$got" == "$D1M" ]] || { fail "$s: GET 1 MiB blob returned other content ($got)"; ok=0; }
    code=$(curl -s -o /dev/null -w '%{http_code}' -I -H "Accept: $ACCEPT" "${URL[$s]}/v2/bench/manifests/v1")
    [[ "$code" == 200 ]] || { fail "$s: HEAD manifest by tag -> $code"; ok=0; }
    ((ok)) || { stop_server "$s"; }
done

NGX_PATH1="" NGX_PATH100=""
if has "$ONLY" nginx; then
    # Same files, in the registry's data directory layout (docker/registry/v2/blobs/sha256/ab/<hex>/data).
    for pair in "$FIX/blob1m $D1M" "$FIX/blob100m $D100M"; do
        read -r f d <<<"$pair"
        hex=${d#sha256:}
        p="docker/registry/v2/blobs/sha256/${hex:0:2}/$hex/data"
        mkdir -p "$WORK/nginx/root/$(dirname "$p")"
        cp "$f" "$WORK/nginx/root/$p"
        [[ "$d" == "$D1M" ]] && NGX_PATH1="/$p" || NGX_PATH100="/$p"
    done
    if start_nginx; then
        log "nginx: ${URL[nginx]} (pid ${PID[nginx]})"
        got=$(curl -s "${URL[nginx]}$NGX_PATH1" | openssl dgst -sha256 -r | awk '{print "sha256:" $1}')
        [[ "$got" == "$D1M" ]] || { fail "nginx: GET 1 MiB blob returned other content"; stop_server nginx; }
    fi
fi
log ""

blob_url() { # system 1m|100m
    if [[ "$1" == nginx ]]; then
        [[ "$2" == 1m ]] && echo "${URL[nginx]}$NGX_PATH1" || echo "${URL[nginx]}$NGX_PATH100"
    else
        [[ "$2" == 1m ]] && echo "${URL[$1]}/v2/bench/blobs/$D1M" || echo "${URL[$1]}/v2/bench/blobs/$D100M"
    fi
}
GET_SYSTEMS=("${REGS[@]}")
has "$ONLY" nginx && GET_SYSTEMS+=(nginx)

# ---------------------------------------------------------------- blob GET
if has "$TESTS" get; then
    for size in 1m 100m; do
        label="GET $([[ $size == 1m ]] && echo '1 MiB' || echo '100 MiB') blob"
        log "-- $label: wrk -t2 -c32 -d${DUR}s, $ROUNDS rounds (after a 1 s warm-up)"
        for s in "${GET_SYSTEMS[@]}"; do
            running "$s" && run_wrk "$s warm-up" 1 "$(blob_url "$s" "$size")"
        done
        for ((r = 1; r <= ROUNDS; r++)); do
            for s in "${GET_SYSTEMS[@]}"; do
                running "$s" || continue
                if run_wrk "$s $label" "$DUR" "$(blob_url "$s" "$size")"; then
                    read -r rps mbs <<<"$OUT"
                    record "get$size.rps" "$s" "$rps"
                    record "get$size.mbs" "$s" "$mbs"
                    printf '  round %d  %-9s %10s req/s %10s MB/s\n' "$r" "$s" "$(fmt "$rps")" "$(fmt "$mbs")"
                fi
            done
        done
        for s in "${GET_SYSTEMS[@]}"; do
            printf '  median   %-9s %10s req/s %10s MB/s\n' "$s" "$(fmt "$(med "get$size.rps" "$s")")" "$(fmt "$(med "get$size.mbs" "$s")")"
        done
        log ""
    done
fi

# ---------------------------------------------------------------- manifest GET / HEAD by tag
if has "$TESTS" manifest && ((${#REGS[@]})); then
    log "-- manifest by tag: GET (wrk -t2 -c32 -d${DUR}s) and HEAD (ab -k -i -c32 -t $DUR), $ROUNDS rounds"
    for s in "${REGS[@]}"; do
        running "$s" && run_wrk "$s warm-up" 1 "${URL[$s]}/v2/bench/manifests/v1" -H "Accept: $ACCEPT"
    done
    for ((r = 1; r <= ROUNDS; r++)); do
        for s in "${REGS[@]}"; do
            running "$s" || continue
            if run_wrk "$s manifest GET" "$DUR" "${URL[$s]}/v2/bench/manifests/v1" -H "Accept: $ACCEPT"; then
                read -r rps _ <<<"$OUT"
                record mget.rps "$s" "$rps"
                printf '  round %d  %-9s GET  %10s req/s\n' "$r" "$s" "$(fmt "$rps")"
            fi
        done
        for s in "${REGS[@]}"; do
            running "$s" || continue
            if run_ab_head "$s manifest HEAD" "$DUR" "${URL[$s]}/v2/bench/manifests/v1"; then
                rps=$OUT
                record mhead.rps "$s" "$rps"
                printf '  round %d  %-9s HEAD %10s req/s\n' "$r" "$s" "$(fmt "$rps")"
            fi
        done
    done
    for s in "${REGS[@]}"; do
        printf '  median   %-9s GET  %10s req/s   HEAD %10s req/s\n' "$s" "$(fmt "$(med mget.rps "$s")")" "$(fmt "$(med mhead.rps "$s")")"
    done
    log ""
fi

# ---------------------------------------------------------------- uploads
if has "$TESTS" upload && ((${#REGS[@]})); then
    UP_SIZE=$((256 << 20))
    CHUNK=$((8 << 20))
    log "-- uploads of a 256 MiB blob (new digest each time): monolithic POST+PUT, chunked 8 MiB PATCHes + PUT; $UPLOAD_RUNS runs each"
    gen_random_file "$FIX/up.bin" "$UP_SIZE" || fail "cannot generate upload file"
    # Reads the file once so that every timing below starts from the page cache.
    cat "$FIX/up.bin" >/dev/null
    # Fresh digest + openssl dgst timing on the same file: prints the digest, records openssl MB/s.
    fresh() {
        local t0 t1 hex
        new_digest_variant "$FIX/up.bin"
        t0=$(now_ns)
        hex=$(openssl dgst -sha256 -r "$FIX/up.bin" | awk '{print $1}')
        t1=$(now_ns)
        record up.openssl openssl "$(awk -v b="$UP_SIZE" -v ns=$((t1 - t0)) 'BEGIN { printf "%.2f", b / (ns / 1e9) / 1e6 }')"
        echo "sha256:$hex"
    }
    for ((r = 1; r <= UPLOAD_RUNS; r++)); do
        for kind in mono chunked; do
            for s in "${REGS[@]}"; do
                running "$s" || continue
                # fresh() runs in this shell (not a subshell) so that record() keeps its result.
                fresh >"$WORK/digest"
                dg=$(cat "$WORK/digest")
                if [[ $kind == mono ]]; then
                    secs=$(upload_monolithic "${URL[$s]}" "$FIX/up.bin" "$dg") || { fail "$s monolithic upload"; continue; }
                else
                    rm -rf "$FIX/chunks" && mkdir -p "$FIX/chunks"
                    split -b "$CHUNK" -d -a 4 "$FIX/up.bin" "$FIX/chunks/c."
                    secs=$(upload_chunked "${URL[$s]}" bench "$FIX/chunks" "$dg") || { fail "$s chunked upload"; continue; }
                fi
                mbs=$(awk -v b="$UP_SIZE" -v t="$secs" 'BEGIN { printf "%.2f", b / t / 1e6 }')
                record "up.$kind" "$s" "$mbs"
                printf '  run %d  %-8s %-9s %8.3f s %10s MB/s   (openssl dgst on the same file: %s MB/s)\n' \
                    "$r" "$kind" "$s" "$secs" "$(fmt "$mbs")" "$(fmt "$(echo "${RES["up.openssl|openssl"]}" | awk '{print $NF}')")"
            done
        done
    done
    rm -rf "$FIX/chunks"
    for s in "${REGS[@]}"; do
        printf '  median   %-9s monolithic %10s MB/s   chunked %10s MB/s\n' "$s" "$(fmt "$(med up.mono "$s")")" "$(fmt "$(med up.chunked "$s")")"
    done
    printf '  median   openssl dgst -sha256 %10s MB/s\n' "$(fmt "$(med up.openssl openssl)")"
    log ""
fi

# ---------------------------------------------------------------- memory
if has "$TESTS" memory && ((${#REGS[@]})); then
    BIG=$((2 << 30))
    log "-- memory: peak RSS (VmRSS polled every 50 ms) during 32 concurrent 100 MiB pulls (wrk -c32, ${DUR}s) and a 2 GiB monolithic push"
    log "  generating the 2 GiB file (openssl rand) ..."
    gen_random_file "$FIX/big.bin" "$BIG" || fail "cannot generate the 2 GiB file"
    log "  (each registry is restarted before each phase, so that one phase's retained memory does not count in the other)"
    for s in "${REGS[@]}"; do
        running "$s" || continue
        stop_server "$s"; "start_$s" || continue
        pid=${PID[$s]}
        idle=$(rss_kb "$pid")
        record rss.idle "$s" "$(kb_to_mib "$idle")"
        sampler_start "$pid" "$WORK/rss.pull"
        run_wrk "$s 32x100MiB pulls" "$DUR" "$(blob_url "$s" 100m)"
        res=$OUT
        sampler_stop
        read -r pull pull_anon <"$WORK/rss.pull"
        [[ -n "$res" ]] && record rss.pull "$s" "$(kb_to_mib "$pull")"
        new_digest_variant "$FIX/big.bin"
        dg="sha256:$(sha256_of "$FIX/big.bin")"
        stop_server "$s"; "start_$s" || continue
        pid=${PID[$s]}
        sampler_start "$pid" "$WORK/rss.push"
        secs=$(upload_monolithic "${URL[$s]}" "$FIX/big.bin" "$dg") || fail "$s 2 GiB push"
        sampler_stop
        read -r push push_anon <"$WORK/rss.push"
        [[ -n "$secs" ]] && record rss.push "$s" "$(kb_to_mib "$push")"
        hwm=$(rss_kb "$pid" VmHWM)
        record rss.hwm "$s" "$(kb_to_mib "$hwm")"
        printf '  %-9s idle %s MiB | peak during pulls %s MiB (anon %s; %s MB/s) | peak during 2 GiB push %s MiB (anon %s; %s MB/s) | VmHWM %s MiB\n' \
            "$s" "$(kb_to_mib "$idle")" "$(kb_to_mib "$pull")" "$(kb_to_mib "$pull_anon")" "$(fmt "$(awk '{print $2}' <<<"$res")")" \
            "$(kb_to_mib "$push")" "$(kb_to_mib "$push_anon")" \
            "$(fmt "$([[ -n "$secs" ]] && awk -v b="$BIG" -v t="$secs" 'BEGIN { printf "%.2f", b / t / 1e6 }')")" \
            "$(kb_to_mib "$hwm")"
    done
    rm -f "$FIX/big.bin"
    log ""
fi

# ---------------------------------------------------------------- summary
# (ratio, verdict: benches/lib.sh)
row() { # check pier other other_name target_op target
    local check=$1 p=$2 o=$3 oname=$4 op=$5 t=$6 r
    r=$(ratio "$p" "$o")
    printf '| %-40s | %10s | %10s %-11s | %7s | %-8s | %-6s |\n' "$check" "$(fmt "$p")" "$(fmt "$o")" "($oname)" \
        "${r:+${r}x}" "$op ${t}x" "$(verdict "$r" "$op" "$t")"
}
rss_row() { # check value
    printf '| %-40s | %10s | %10s %-11s | %7s | %-8s | %-6s |\n' "$1" "${2:-"-"}" "" "" "" "< 64 MiB" "$(verdict "$2" "<" 64)"
}

log "== Summary (medians; MB = 10^6 bytes; $(date -u '+%Y-%m-%d'), $(hostname), $(nproc) cores)"
printf '| %-40s | %10s | %-22s | %7s | %-8s | %-6s |\n' "check" "Pier" "other" "ratio" "target" "result"
printf '|%s|%s|%s|%s|%s|%s|\n' "$(printf -- '-%.0s' {1..42})" "$(printf -- '-%.0s' {1..12})" \
    "$(printf -- '-%.0s' {1..24})" "$(printf -- '-%.0s' {1..9})" "$(printf -- '-%.0s' {1..10})" "$(printf -- '-%.0s' {1..8})"
row "GET 1 MiB blob, MB/s (vs reference)" "$(med get1m.mbs pier)" "$(med get1m.mbs reference)" reference ">=" 4
row "GET 1 MiB blob, MB/s (vs nginx)" "$(med get1m.mbs pier)" "$(med get1m.mbs nginx)" nginx ">=" 0.9
row "GET 100 MiB blob, MB/s (vs reference)" "$(med get100m.mbs pier)" "$(med get100m.mbs reference)" reference ">=" 4
row "GET 100 MiB blob, MB/s (vs nginx)" "$(med get100m.mbs pier)" "$(med get100m.mbs nginx)" nginx ">=" 0.9
row "GET manifest by tag, req/s" "$(med mget.rps pier)" "$(med mget.rps reference)" reference ">=" 20
row "HEAD manifest by tag, req/s" "$(med mhead.rps pier)" "$(med mhead.rps reference)" reference ">=" 20
row "monolithic 256 MiB upload, MB/s" "$(med up.mono pier)" "$(med up.mono reference)" reference ">=" 1.5
row "monolithic 256 MiB upload, MB/s" "$(med up.mono pier)" "$(med up.openssl openssl)" openssl ">=" 0.8
row "chunked (8 MiB) 256 MiB upload, MB/s" "$(med up.chunked pier)" "$(med up.chunked reference)" reference ">=" 1.5
row "chunked (8 MiB) 256 MiB upload, MB/s" "$(med up.chunked pier)" "$(med up.openssl openssl)" openssl ">=" 0.8
rss_row "Pier peak RSS, 32x100 MiB pulls, MiB" "$(med rss.pull pier)"
rss_row "Pier peak RSS, 2 GiB push, MiB" "$(med rss.push pier)"
if has "$ONLY" baseline; then
    row "GET 1 MiB blob, MB/s (vs baseline)" "$(med get1m.mbs pier)" "$(med get1m.mbs baseline)" baseline ">=" 0.95
    row "GET 100 MiB blob, MB/s (vs baseline)" "$(med get100m.mbs pier)" "$(med get100m.mbs baseline)" baseline ">=" 0.95
    row "GET manifest by tag, req/s (vs baseline)" "$(med mget.rps pier)" "$(med mget.rps baseline)" baseline ">=" 0.95
    row "HEAD manifest by tag, req/s (vs baseline)" "$(med mhead.rps pier)" "$(med mhead.rps baseline)" baseline ">=" 0.95
    row "monolithic upload, MB/s (vs baseline)" "$(med up.mono pier)" "$(med up.mono baseline)" baseline ">=" 0.95
fi
log ""
log "context (not targets): req/s GET 1 MiB pier/ref/nginx = $(fmt "$(med get1m.rps pier)")/$(fmt "$(med get1m.rps reference)")/$(fmt "$(med get1m.rps nginx)");" \
    "GET 100 MiB = $(fmt "$(med get100m.rps pier)")/$(fmt "$(med get100m.rps reference)")/$(fmt "$(med get100m.rps nginx)");" \
    "RSS MiB idle/pulls/push: Pier $(fmt "$(med rss.idle pier)")/$(fmt "$(med rss.pull pier)")/$(fmt "$(med rss.push pier)")," \
    "reference $(fmt "$(med rss.idle reference)")/$(fmt "$(med rss.pull reference)")/$(fmt "$(med rss.push reference)")"

finish
