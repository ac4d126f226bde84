#!/usr/bin/env bash
# Side-by-side edge-fleet benchmark: Pier nodes as one fleet ([fleet]: each blob fetched from
# the upstream once, by its owner, and streamed to the other nodes) vs the same Pier nodes
# as independent mirrors vs the reference registry (Debian's `docker-registry`) as proxies.
#
#   benches/fleet/run.sh [--quick] [--tests fanout,peer] [--rounds N] [--clients N] [--keep]
#
#   fanout  3 nodes x N concurrent cold pulls (--clients, default 20 per node) of a ~100 MiB
#           image, for a fleet of 3 Pier nodes, 3 independent Pier nodes, 3 reference proxies
#   peer    one cold pull through a node of a 2-node fleet whose peer owns blobs of the image,
#           vs one cold pull through a single Pier, vs one straight from the upstream
#
# Every server is started by this script on a free 127.0.0.1 port below the ephemeral range,
# with its own temporary directory, and stopped again on exit (trap). Rounds alternate between
# the systems (A B C A B C ...), every run on fresh roots; the summary uses medians. Rounds:
# 3 fan-out and 7 peer rounds (--quick: 1 and 3; --rounds N: N of each). See benches/README.md.
#
# Environment:
#   PIER_BIN        Pier binary (default: $CARGO_TARGET_DIR/release/pier, then
#                   /root/.cache/pier/target/release/pier, then <repo>/target/release/pier)
#   PIER_LOG        Pier's log filter (default here: warn)
#   BENCH_TMPDIR    where the temporary directory goes (default: $TMPDIR or /tmp); ~0.5 GiB,
#                   ~1 GiB with --keep (the last data directory of every node is kept)
#
# Exit status: 0 when everything ran (a MISS against a target is a finding, not a failure),
# 1 when some measurement could not be taken (a server did not start, a pull failed or came
# back short), 2 on bad usage or missing tools.
set -uo pipefail

SCRIPT_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
REPO_DIR="$(cd "$SCRIPT_DIR/../.." && pwd)"
# shellcheck source=../lib.sh
source "$SCRIPT_DIR/../lib.sh"
# shellcheck source=../upstream.sh
source "$SCRIPT_DIR/../upstream.sh"

# ---------------------------------------------------------------- options
QUICK=0
TESTS="fanout,peer"
ROUNDS=""
CLIENTS=20
KEEP=0
NODES=3            # nodes per system in the fan-out
PULL_TIMEOUT=300   # curl --max-time of each request of a pull, s

usage() { sed -n '2,27p' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//'; }

while (($#)); do
    case "$1" in
        --quick) QUICK=1 ;;
        --tests) TESTS="${2:?--tests needs a list}"; shift ;;
        --tests=*) TESTS="${1#*=}" ;;
        --rounds) ROUNDS="${2:?--rounds needs a number}"; shift ;;
        --rounds=*) ROUNDS="${1#*=}" ;;
        --clients) CLIENTS="${2:?--clients needs a number}"; shift ;;
        --clients=*) CLIENTS="${1#*=}" ;;
        --keep) KEEP=1 ;;
        -h|--help) usage; exit 0 ;;
        *) echo "run.sh: unknown argument: $1" >&2; usage >&2; exit 2 ;;
    esac
    shift
done

[[ -z "$ROUNDS" || "$ROUNDS" =~ ^[1-9][0-9]*$ ]] || { echo "run.sh: --rounds must be a number >= 1" >&2; exit 2; }
[[ "$CLIENTS" =~ ^[1-9][0-9]*$ ]] || { echo "run.sh: --clients must be a number >= 1" >&2; exit 2; }
if [[ -n "$ROUNDS" ]]; then
    FAN_ROUNDS=$ROUNDS PEER_ROUNDS=$ROUNDS
elif ((QUICK)); then
    FAN_ROUNDS=1 PEER_ROUNDS=3
else
    FAN_ROUNDS=3 PEER_ROUNDS=7
fi
for t in ${TESTS//,/ }; do
    case "$t" in fanout|peer) ;; *) echo "run.sh: --tests: unknown test '$t'" >&2; exit 2 ;; esac
done

# ---------------------------------------------------------------- tools
require_tools curl openssl awk sort grep docker-registry
find_pier_bin

# ---------------------------------------------------------------- workspace and cleanup
BASE_TMP="${BENCH_TMPDIR:-${TMPDIR:-/tmp}}"
WORK="$(mktemp -d "$BASE_TMP/pier-fleet-bench.XXXXXX")" || exit 2
chmod 755 "$WORK"
declare -A PID=()
FAILURES=()

trap cleanup EXIT
trap 'exit 130' INT TERM

# ---------------------------------------------------------------- small helpers
# (log, fail, has, free_port, now_ns, median, record, med, ratio, verdict, sha256_of,
# gen_random_file, running, stop_server, resolve_location, with_digest, header_of: benches/lib.sh;
# cleanup, secs_since, cpu_ticks, fmt, wait_ready, start_upstream, push_blob, up_mark, up_settle,
# has_blob, verify_image: benches/upstream.sh)
div() { awk -v a="$1" -v b="$2" 'BEGIN { if (b > 0) printf "%.4f\n", a / b }'; }
mb() { awk -v b="$1" 'BEGIN { printf "%.1f", b / 1e6 }'; }

TICK=$(getconf CLK_TCK 2>/dev/null || echo 100)
ticks_to_s() { awk -v t="$1" -v h="$TICK" 'BEGIN { printf "%.2f\n", t / h }'; }

# A number field of a compact JSON object (the admin API's answers): the first "key":N.
json_num() { grep -oE "\"$2\": *[0-9]+" <<<"$1" | head -n 1 | grep -oE '[0-9]+$'; }

# ---------------------------------------------------------------- servers
# Every server is a name (upstream, fleet0, pier1, ref2, ...) with a directory $WORK/<name>/
# (config, server.log) and, for the mirrors, a data directory made fresh for every run.
declare -A URL=() ADMIN=() PEERURL=() DATA=() FAN_DONE=() FAN_ALL=()
GEN=0
FLEET_SECRET=$(openssl rand -hex 32)

fresh_data() { # name -> sets DATA[name] to a new empty directory (the previous one removed)
    [[ -n "${DATA[$1]:-}" ]] && rm -rf "${DATA[$1]}"
    GEN=$((GEN + 1))
    DATA[$1]="$WORK/$1/data.$GEN"
    mkdir -p "${DATA[$1]}"
}

# Launches (does not wait for) one Pier node from a config file. With peer ports, the node is
# a member of the fleet of those peers ([fleet], the peer listener on its own port).
launch_pier() { # name port admin_port [fleet_port peer_port...]
    local name=$1 port=$2 admin=$3 d="$WORK/$1" f peers=""
    mkdir -p "$d"
    fresh_data "$name"
    cat >"$d/config.toml" <<EOF
listen = "127.0.0.1:$port"
admin_listen = "127.0.0.1:$admin"
root = "${DATA[$name]}"

[[upstreams]]
name = "up"
url = "${URL[upstream]}"
default = true
EOF
    if (($# > 3)); then
        for f in "${@:5}"; do peers+="${peers:+, }\"http://127.0.0.1:$f\""; done
        cat >>"$d/config.toml" <<EOF

[fleet]
listen = "127.0.0.1:$4"
advertise = "http://127.0.0.1:$4"
peers = [$peers]
secret = "$FLEET_SECRET"
health_interval = "1s"
EOF
        PEERURL[$name]="http://127.0.0.1:$4"
    fi
    echo "#### bench: starting $(date -u '+%H:%M:%S')" >>"$d/server.log"
    PIER_LOG="${PIER_LOG:-warn}" "$PIER_BIN" serve --config "$d/config.toml" >>"$d/server.log" 2>&1 &
    PID[$name]=$!
    URL[$name]="http://127.0.0.1:$port"
    ADMIN[$name]="http://127.0.0.1:$admin"
}

# Launches one reference proxy: docker-registry with proxy.remoteurl, access log off and level
# error, as benches/mirror's reference.
launch_ref() { # name port
    local name=$1 port=$2 d="$WORK/$1"
    mkdir -p "$d"
    fresh_data "$name"
    cat >"$d/config.yml" <<EOF
version: 0.1
log:
  level: error
  accesslog:
    disabled: true
storage:
  filesystem:
    rootdirectory: ${DATA[$name]}
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
    PID[$name]=$!
    URL[$name]="http://127.0.0.1:$port"
}

GROUP=()   # the names of the group started last

# Waits until every node of the fleet sees every other node healthy (and has heard from it).
wait_fleet() { # timeout_s name...
    local t=$1 i n name out need
    shift
    need=$(($# - 1))
    for ((i = 0; i < t * 5; i++)); do
        n=0
        for name in "$@"; do
            out=$(curl -s "${ADMIN[$name]}/api/v1/fleet" 2>/dev/null)
            (($(grep -oE '"healthy": *true' <<<"$out" | wc -l) >= need &&
              $(grep -oE '"lastSeen": *[0-9]' <<<"$out" | wc -l) >= need)) && n=$((n + 1))
        done
        ((n == $#)) && return 0
        sleep 0.2
    done
    fail "fleet $*: peers not all healthy after ${t}s (last answer: $(tr -d ' \n' <<<"$out" | cut -c1-400))"
    return 1
}

stop_group() {
    local name
    for name in "${GROUP[@]}"; do
        [[ -f "$WORK/$name/server.log" ]] && echo "#### bench: stopping" >>"$WORK/$name/server.log"
    done
    for name in "${GROUP[@]}"; do
        stop_server "$name"
        # Keep disk use low: only --keep keeps the data of the run that ran last.
        ((KEEP)) || { [[ -n "${DATA[$name]:-}" ]] && rm -rf "${DATA[$name]}"; unset "DATA[$name]"; }
    done
}

# Starts N fresh nodes of one kind: fleet (Pier nodes that are peers of each other), pier
# (independent Pier nodes), ref (reference proxies); names <kind>0 .. <kind>N-1, in GROUP.
start_group() { # kind n
    local kind=$1 n=$2 try i rc ports=() admins=() fports=() name ok
    for ((try = 0; try < 5; try++)); do
        GROUP=()
        ports=() admins=() fports=()
        for ((i = 0; i < n; i++)); do
            free_port || return 1; ports+=("$FREE_PORT")
            free_port || return 1; admins+=("$FREE_PORT")
            free_port || return 1; fports+=("$FREE_PORT")
        done
        for ((i = 0; i < n; i++)); do
            name="$kind$i"
            GROUP+=("$name")
            case "$kind" in
                fleet) launch_pier "$name" "${ports[$i]}" "${admins[$i]}" "${fports[$i]}" "${fports[@]}" ;;
                pier) launch_pier "$name" "${ports[$i]}" "${admins[$i]}" ;;
                ref) launch_ref "$name" "${ports[$i]}" ;;
            esac
        done
        ok=1
        for name in "${GROUP[@]}"; do
            wait_ready "$name" "${URL[$name]}/v2/" 30
            rc=$?
            ((rc == 0)) && continue
            ok=0
            ((rc == 2)) && break
            stop_group
            return 1
        done
        if ((ok)); then
            if [[ $kind == fleet ]] && ! wait_fleet 30 "${GROUP[@]}"; then
                stop_group
                return 1
            fi
            # What a node logs from here on is logged while it is measured (see the end).
            for name in "${GROUP[@]}"; do echo "#### bench: ready" >>"$WORK/$name/server.log"; done
            return 0
        fi
        stop_group   # a port was taken meanwhile: new ports for the whole group
    done
    fail "$kind: no free ports after 5 tries"
    return 1
}

has_blobs() { # "name..." digest...
    local names=$1 name d
    shift
    for name in $names; do
        for d in "$@"; do has_blob "$name" "$d" || return 1; done
    done
}

# ---------------------------------------------------------------- upstream accounting
# For the access log lines after the mark: UP_REQS (all requests), UP_GETS (GETs answered
# 200/206), UP_BLOB_GETS and UP_BLOB_BYTES (those of blobs: their body bytes), UP_MAN_GETS
# (GETs of manifests).
up_count() { # mark
    read -r UP_REQS UP_GETS UP_BLOB_GETS UP_BLOB_BYTES UP_MAN_GETS < <(tail -n +$(($1 + 1)) "$WORK/upstream/access.log" |
        awk '$6 ~ /^"(GET|HEAD|PUT|POST|PATCH|DELETE)$/ { n++ }
            $6 == "\"GET" && ($9 == 200 || $9 == 206) { g++; if (index($7, "/blobs/")) { bg++; bb += $10 } else if (index($7, "/manifests/")) mg++ }
            END { printf "%d %d %d %.0f %d\n", n, g, bg, bb, mg }')
}

# ---------------------------------------------------------------- registry client (curl)
ACCEPT='application/vnd.oci.image.manifest.v1+json,application/vnd.docker.distribution.manifest.v2+json'

# One pull as docker does it (as benches/mirror's pull): GET the manifest by tag, then GET
# every blob it names (config and layers), 3 at a time, over reused connections, to /dev/null.
# Writes PREFIX.res: "<ok 0/1> <blob bytes> <ns>" and, when not ok, PREFIX.err. Safe to run
# many at once (all its files carry the prefix).
one_pull() { # base prefix
    local base=$1 p=$2 t0 code out d args=() ok bytes
    t0=$(now_ns)
    code=$(curl -s --max-time "$PULL_TIMEOUT" -o "$p.manifest" -w '%{http_code}' -H "Accept: $ACCEPT" \
        "$base/v2/$IMG_REPO/manifests/v1")
    if [[ "$code" != 200 ]]; then
        echo "GET manifest by tag -> $code" >"$p.err"
        echo "0 0 $(($(now_ns) - t0))" >"$p.res"
        return
    fi
    for d in $(grep -o '"digest":"sha256:[0-9a-f]*"' "$p.manifest" | cut -d'"' -f4); do
        args+=(-o /dev/null "$base/v2/$IMG_REPO/blobs/$d")
    done
    out=$(curl -s --no-progress-meter --max-time "$PULL_TIMEOUT" -Z --parallel-max 3 --parallel-immediate \
        -w '%{http_code} %{size_download}\n' "${args[@]}" 2>&1)
    read -r ok bytes <<<"$(awk -v n="${#IMG_DIGESTS[@]}" '$1 ~ /^[0-9]+$/ { c++; b += $2; if ($1 != 200) bad++ }
        END { printf "%d %d\n", (bad == 0 && c == n), b }' <<<"$out")"
    ((ok && bytes == IMG_BLOB_BYTES)) || { ok=0; echo "blob GETs: $(tr '\n' ' ' <<<"$out")" >"$p.err"; }
    echo "$ok $bytes $(($(now_ns) - t0))" >"$p.res"
}

# ---------------------------------------------------------------- header
log "== Pier edge-fleet benchmark  $(date -u '+%Y-%m-%d %H:%M:%S UTC')"
log "machine: $(hostname) | $(nproc) cores | $(awk -F': ' '/^model name/ {print $2; exit}' /proc/cpuinfo) |" \
    "$(awk '/^MemTotal/ {printf "%.0f GiB", $2/1048576}' /proc/meminfo) | Linux $(uname -r)"
log "tests: $TESTS | rounds: fan-out $FAN_ROUNDS, peer $PEER_ROUNDS | fan-out: $NODES nodes x $CLIENTS clients | work dir: $WORK"
log "pier: $PIER_BIN ($("$PIER_BIN" --version 2>/dev/null | head -n 1 || true)," \
    "built $(date -u -r "$PIER_BIN" '+%Y-%m-%d %H:%M:%S UTC'); checkout at $(git -C "$REPO_DIR" log --oneline -1 2>/dev/null || echo '?'))"
log "upstream and reference proxy: $(docker-registry --version 2>/dev/null | head -n 1)"
log "$(curl --version | head -n 1 | awk '{print $1, $2}') | $(openssl version)"
log ""

# ---------------------------------------------------------------- fixtures
FIX="$WORK/fixtures"
mkdir -p "$FIX"
LAYERS=4
LAYER_SIZE=$((25 << 20))
IMG_REPO=bench/app
log "-- fixtures: an image of $LAYERS x $((LAYER_SIZE >> 20)) MiB random layers + config ($IMG_REPO:v1)"
LAYER_DIGESTS=()
for ((i = 0; i < LAYERS; i++)); do
    gen_random_file "$FIX/layer$i" "$LAYER_SIZE" || { fail "cannot generate fixtures"; exit 1; }
    LAYER_DIGESTS+=("sha256:$(sha256_of "$FIX/layer$i")")
done
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
declare -A BLOB_SIZE=(["$DCFG"]=$CFG_SIZE)
for d in "${LAYER_DIGESTS[@]}"; do BLOB_SIZE[$d]=$LAYER_SIZE; done
IMG_BLOB_BYTES=$((CFG_SIZE + LAYERS * LAYER_SIZE))

start_upstream || exit 1
log "upstream: ${URL[upstream]} (pid ${PID[upstream]}), access log on"
for ((i = 0; i < LAYERS; i++)); do
    push_blob "${URL[upstream]}" "$IMG_REPO" "$FIX/layer$i" "${LAYER_DIGESTS[$i]}" || { fail "upstream: layer push"; exit 1; }
done
push_blob "${URL[upstream]}" "$IMG_REPO" "$FIX/config.json" "$DCFG" || { fail "upstream: config push"; exit 1; }
code=$(curl -s -o /dev/null -w '%{http_code}' -X PUT -H 'Content-Type: application/vnd.oci.image.manifest.v1+json' \
    --data-binary "@$FIX/manifest.json" "${URL[upstream]}/v2/$IMG_REPO/manifests/v1")
[[ "$code" == 201 ]] || { fail "upstream: manifest PUT -> $code"; exit 1; }
one_pull "${URL[upstream]}" "$WORK/warmup"
read -r ok _ <"$WORK/warmup.res"
((ok)) || { fail "upstream: pull: $(cat "$WORK/warmup.err")"; exit 1; }
rm -f "$FIX"/layer* "$WORK"/warmup.*
log "image: $IMG_BLOB_BYTES blob bytes (config + $LAYERS layers) + a $(stat -c %s "$FIX/manifest.json")-byte manifest"
log ""

# Sums a number field of /api/v1/fleet over Pier nodes.
fleet_sum() { # field name...
    local f=$1 name v t=0
    shift
    for name in "$@"; do
        v=$(json_num "$(curl -s "${ADMIN[$name]}/api/v1/fleet")" "$f")
        t=$((t + ${v:-0}))
    done
    echo "$t"
}
group_cpu() { local name t=0; for name in "$@"; do t=$((t + $(cpu_ticks "${PID[$name]}"))); done; echo "$t"; }

declare -A LABEL=([fleet]="fleet" [pier]="3 x Pier" [ref]="3 x ref" [upstream]="upstream" [single]="1 x Pier")

# ---------------------------------------------------------------- (1) fan-out
PULLS=$((NODES * CLIENTS))
if has "$TESTS" fanout; then
    log "-- (1) fan-out: $NODES nodes x $CLIENTS concurrent cold pulls (GET the manifest by tag, then the ${#IMG_DIGESTS[@]} blobs"
    log "   3 at a time), all $PULLS launched together, fresh roots per run; $FAN_ROUNDS rounds of:"
    log "   a fleet of $NODES Pier nodes, $NODES independent Pier nodes, $NODES reference proxies"
    for ((r = 1; r <= FAN_ROUNDS; r++)); do
        for s in fleet pier ref; do
            start_group "$s" "$NODES" || continue
            nodes=("${GROUP[@]}")
            mark=$(up_mark)
            c0=$(group_cpu "${nodes[@]}")
            rm -rf "$WORK/fan" && mkdir -p "$WORK/fan"
            pids=()
            t0=$(now_ns)
            for ((c = 0; c < CLIENTS; c++)); do
                for ((i = 0; i < NODES; i++)); do
                    one_pull "${URL[${nodes[$i]}]}" "$WORK/fan/$i.$c" &
                    pids+=($!)
                done
            done
            wait "${pids[@]}"
            secs=$(secs_since "$t0")
            read -r complete slowest < <(cat "$WORK"/fan/*.res | awk '{ ok += $1; if ($3 > m) m = $3 } END { printf "%d %.6f\n", ok, m / 1e9 }')
            if ((complete < PULLS)); then
                fail "$s fan-out round $r: $((PULLS - complete)) of $PULLS pulls failed or came back short, e.g. $(cat "$WORK"/fan/*.err 2>/dev/null | sort | uniq -c | sort -rn | head -n 3 | tr '\n' ' ')"
            fi
            up_settle "${nodes[*]}" "${IMG_DIGESTS[@]}"
            up_count "$mark"
            cpu=$(ticks_to_s $(($(group_cpu "${nodes[@]}") - c0)))
            for name in "${nodes[@]}"; do verify_image "$name"; done
            extra=""
            if [[ $s == fleet ]]; then
                extra=" | between nodes: $(mb "$(fleet_sum bytesFromPeers "${nodes[@]}")") MB"
            fi
            stop_group
            record fan.upx "$s" "$(div "$UP_BLOB_BYTES" "$IMG_BLOB_BYTES")"
            record fan.blobgets "$s" "$UP_BLOB_GETS"
            record fan.gets "$s" "$UP_GETS"
            record fan.reqs "$s" "$UP_REQS"
            record fan.secs "$s" "$secs"
            record fan.slowest "$s" "$slowest"
            record fan.cpu "$s" "$cpu"
            record fan.mbs "$s" "$(awk -v n="$complete" -v b="$IMG_BLOB_BYTES" -v t="$secs" 'BEGIN { printf "%.1f", n * b / t / 1e6 }')"
            FAN_DONE[$s]=$((${FAN_DONE[$s]:-0} + complete))
            FAN_ALL[$s]=$((${FAN_ALL[$s]:-0} + PULLS))
            printf '  round %d  %-9s %7.2f s (slowest pull %6.2f s), %d/%d pulls complete, CPU %6.2f s | upstream: %3d requests, %3d GETs (%d of blobs, %d of manifests), blob bytes %sx the image%s\n' \
                "$r" "${LABEL[$s]}" "$secs" "$slowest" "$complete" "$PULLS" "$cpu" "$UP_REQS" "$UP_GETS" "$UP_BLOB_GETS" "$UP_MAN_GETS" \
                "$(awk -v a="$UP_BLOB_BYTES" -v b="$IMG_BLOB_BYTES" 'BEGIN { printf "%.2f", a / b }')" "$extra"
        done
    done
    log ""
fi

# ---------------------------------------------------------------- (2) peer
# The rendezvous order of the fleet (gateway/core/src/fleet.rs): the node with the highest
# weight (the first 8 bytes of SHA-256(node's peer URL, 0, key), big-endian) owns the key; a
# blob's key is "<upstream name>/<digest>". Hex strings of equal length compare like numbers.
rv_weight() { printf '%s\0%s' "$1" "$2" | openssl dgst -sha256 -r | cut -c1-16; }
owner_of() { # key name...  -> the name owning the key
    local key=$1 name best="" bw="" w
    shift
    for name in "$@"; do
        w=$(rv_weight "${PEERURL[$name]}" "$key")
        if [[ -z "$bw" || "$w" > "$bw" ]]; then bw=$w best=$name; fi
    done
    echo "$best"
}

if has "$TESTS" peer; then
    log "-- (2) peer: one cold pull (as in (1), one client) through a node X of a fresh 2-node fleet, X being the node"
    log "   that owns fewer of the image's blob bytes (the rest come through its peer, the owner, which fetches them"
    log "   from the upstream while streaming them to X); vs one through a fresh single Pier; vs one straight from"
    log "   the upstream; $PEER_ROUNDS rounds"
    for ((r = 1; r <= PEER_ROUNDS; r++)); do
        for s in upstream fleet single; do
            mark=$(up_mark)
            case $s in
                upstream)
                    base=${URL[upstream]} ;;
                fleet)
                    start_group fleet 2 || continue
                    nodes=("${GROUP[@]}")
                    # X: the node owning fewer blob bytes; OWNED: its peer's blob bytes.
                    declare -A owned=([fleet0]=0 [fleet1]=0)
                    declare -A nblobs=([fleet0]=0 [fleet1]=0)
                    for d in "${IMG_DIGESTS[@]}"; do
                        o=$(owner_of "up/$d" "${nodes[@]}")
                        owned[$o]=$((owned[$o] + BLOB_SIZE[$d]))
                        nblobs[$o]=$((nblobs[$o] + 1))
                    done
                    if ((owned[fleet1] < owned[fleet0])); then X=fleet1 Y=fleet0; else X=fleet0 Y=fleet1; fi
                    tag_owner=$(owner_of "up/$IMG_REPO:v1" "${nodes[@]}")
                    base=${URL[$X]}
                    c0=$(group_cpu "${nodes[@]}") cx0=$(group_cpu "$X") ;;
                single)
                    start_group pier 1 || continue
                    nodes=("${GROUP[@]}")
                    base=${URL[pier0]} X=pier0
                    c0=$(group_cpu "${nodes[@]}") cx0=$(group_cpu "$X") ;;
            esac
            one_pull "$base" "$WORK/peer.$s"
            read -r ok bytes ns <"$WORK/peer.$s.res"
            secs=$(awk -v n="$ns" 'BEGIN { printf "%.6f", n / 1e9 }')
            if ((!ok)); then
                fail "$s cold pull (peer round $r): $(cat "$WORK/peer.$s.err")"
                [[ $s != upstream ]] && stop_group
                continue
            fi
            case $s in
                upstream) up_settle ;;
                fleet) up_settle "$X" "${IMG_DIGESTS[@]}" ;;
                single) up_settle "pier0" "${IMG_DIGESTS[@]}" ;;
            esac
            up_count "$mark"
            record peer.secs "$s" "$secs"
            extra=""
            if [[ $s != upstream ]]; then
                cpu=$(ticks_to_s $(($(group_cpu "${nodes[@]}") - c0)))
                cpux=$(ticks_to_s $(($(group_cpu "$X") - cx0)))
                record peer.cpu "$s" "$cpu"
                record peer.cpux "$s" "$cpux"
                record peer.upx "$s" "$(div "$UP_BLOB_BYTES" "$IMG_BLOB_BYTES")"
                verify_image "${nodes[0]}"
                extra=" CPU $cpu s$([[ $s == fleet ]] && echo " (X $cpux s)") |"
            fi
            if [[ $s == fleet ]]; then
                from=$(fleet_sum bytesFromPeers "$X")
                share=$(div "${owned[$Y]}" "$IMG_BLOB_BYTES")
                record peer.share fleet "$share"
                extra+=" X=$X, its peer owns ${nblobs[$Y]}/${#IMG_DIGESTS[@]} blobs ($(mb "${owned[$Y]}") MB, the tag: $([[ $tag_owner == "$Y" ]] && echo yes || echo no)); X got $(mb "$from") MB from it |"
                if [[ "$from" != "${owned[$Y]}" ]]; then
                    log "  note: round $r: X received $from bytes from its peer, the rendezvous order says ${owned[$Y]}"
                fi
            fi
            [[ $s != upstream ]] && stop_group
            printf '  round %d  %-9s %7.3f s %7s MB/s |%s upstream: %2d requests, %d blob GETs, blob bytes %sx the image\n' \
                "$r" "${LABEL[$s]}" "$secs" "$(fmt "$(awk -v b="$bytes" -v t="$secs" 'BEGIN { printf "%.1f", b / t / 1e6 }')")" \
                "$extra" "$UP_REQS" "$UP_BLOB_GETS" "$(awk -v a="$UP_BLOB_BYTES" -v b="$IMG_BLOB_BYTES" 'BEGIN { printf "%.2f", a / b }')"
        done
    done
    log ""
fi

# ---------------------------------------------------------------- summary
hr() { local i; for i in "$@"; do printf '|%s' "$(printf -- '-%.0s' $(seq 1 $((i + 2))))"; done; printf '|\n'; }
log "== Summary (medians of the rounds; MB = 10^6 bytes; $(date -u '+%Y-%m-%d'), $(hostname), $(nproc) cores;" \
    "$(git -C "$REPO_DIR" log --oneline -1 2>/dev/null | cut -c1-60))"
if has "$TESTS" fanout; then
    log ""
    log "(1) fan-out: $NODES nodes x $CLIENTS concurrent cold pulls of the ~100 MiB image, $FAN_ROUNDS round(s)"
    cnt() { [[ -z "${1:-}" ]] && echo "-" || awk -v x="$1" 'BEGIN { printf "%g", x }'; }
    frow() { # check key [op target [formatter]]   (target on the fleet's own figure; ratios fleet / other)
        local check=$1 k=$2 op=${3:-} t=${4:-} fm=${5:-fmt} f p r v
        f=$(med "$k" fleet) p=$(med "$k" pier) r=$(med "$k" ref)
        v=""
        [[ -n "$op" ]] && v=$(verdict "$f" "$op" "$t")
        printf '| %-46s | %8s | %8s | %8s | %7s | %7s | %-9s | %-6s |\n' "$check" "$($fm "$f")" "$($fm "$p")" "$($fm "$r")" \
            "$(r1=$(ratio "$f" "$p"); echo "${r1:+${r1}x}")" "$(r2=$(ratio "$f" "$r"); echo "${r2:+${r2}x}")" \
            "${op:+$op $t}" "${v}"
    }
    printf '| %-46s | %8s | %8s | %8s | %7s | %7s | %-9s | %-6s |\n' "check" "fleet" "3 x Pier" "3 x ref" "f/Pier" "f/ref" "target" "result"
    hr 46 8 8 8 7 7 9 6
    frow "upstream blob bytes / image blob bytes" fan.upx "=" 1.00
    frow "upstream blob GETs" fan.blobgets "" "" cnt
    frow "upstream GETs (all, /v2/ probes included)" fan.gets "" "" cnt
    frow "upstream requests (all, HEADs included)" fan.reqs "" "" cnt
    frow "wall time of the $PULLS pulls, s" fan.secs
    frow "slowest pull, s" fan.slowest
    frow "to clients, MB/s (complete pulls x image/wall)" fan.mbs
    frow "CPU of the $NODES nodes, s" fan.cpu
    pc() { echo "${FAN_DONE[$1]:-0}/${FAN_ALL[$1]:-0}"; }
    allok=PASS
    for s in fleet pier ref; do [[ "${FAN_DONE[$s]:-0}" == "${FAN_ALL[$s]:-x}" ]] || allok=MISS; done
    printf '| %-46s | %8s | %8s | %8s | %7s | %7s | %-9s | %-6s |\n' "pulls complete (every blob 200, all bytes)" \
        "$(pc fleet)" "$(pc pier)" "$(pc ref)" "" "" "all" "$allok"
fi
if has "$TESTS" peer; then
    log ""
    log "(2) peer: one cold pull through a fleet node whose peer owns a median $(awk -v s="$(med peer.share fleet)" 'BEGIN { if (s != "") printf "%.0f", s * 100; else printf "-" }')% of the" \
        "blob bytes vs through a single Pier, $PEER_ROUNDS round(s)"
    printf '| %-46s | %8s | %8s | %7s | %-9s | %-6s |\n' "check" "fleet" "1 x Pier" "ratio" "target" "result"
    hr 46 8 8 7 9 6
    prow() { # check key op target
        local f p r
        f=$(med "$2" fleet) p=$(med "$2" single) r=$(ratio "$f" "$p")
        printf '| %-46s | %8s | %8s | %7s | %-9s | %-6s |\n' "$1" "$(fmt "$f")" "$(fmt "$p")" "${r:+${r}x}" \
            "${3:+$3 ${4}x}" "$([[ -n "${3:-}" ]] && verdict "$r" "$3" "$4")"
    }
    prow "first cold pull through a node, s" peer.secs "<=" 1.3
    prow "CPU of both fleet nodes / of the Pier, s" peer.cpu
    prow "CPU of the node pulled through (X) alone, s" peer.cpux
    prow "upstream blob bytes / image blob bytes" peer.upx
    up=$(med peer.secs upstream)
    log ""
    log "context: cold pull straight from the upstream $(fmt "$up") s; a single Pier's cold pull is" \
        "$(fmt "$(ratio "$(med peer.secs single)" "$up")")x that, the fleet node's $(fmt "$(ratio "$(med peer.secs fleet)" "$up")")x"
fi

# Pier's own warnings and errors (PIER_LOG=warn: nothing else is logged), one line per kind;
# those between a node's start and the moment its group was ready (e.g. a fleet node's first
# health check of a peer that did not listen yet), and from the group's stop on (its peers
# going away), are counted apart.
plogs=$(ls "$WORK"/fleet*/server.log "$WORK"/pier*/server.log 2>/dev/null)
if [[ -n "$plogs" ]]; then
    # shellcheck disable=SC2086
    awk '/^#### bench: starting/ { st = "startup"; next } /^#### bench: ready/ { st = "measured"; next }
        /^#### bench: stopping/ { st = "shutdown"; next } /WARN|ERROR/ { print (st ? st : "measured") "\t" $0 }' $plogs |
        sed -E 's/\x1b\[[0-9;]*m//g; s/\t[^ ]*Z /\t/; s/(http:\/\/127\.0\.0\.1:)[0-9]+/\1P/g; s/[0-9a-f]{64}/<hex>/g' >"$WORK/pier-warnings"
    nm=$(grep -c '^measured' "$WORK/pier-warnings")
    ns=$(grep -c '^startup' "$WORK/pier-warnings")
    nd=$(grep -c '^shutdown' "$WORK/pier-warnings")
    if ((nm + ns + nd > 0)); then
        log ""
        log "Pier logged $nm warnings/errors while measured, $ns while its group started and $nd while it was" \
            "stopped (kinds, most frequent first; --keep keeps the logs):"
        cut -c1-230 "$WORK/pier-warnings" | sort | uniq -c | sort -rn | head -n 10 | sed 's/^/  /'
    fi
fi

finish
