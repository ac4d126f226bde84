# Helpers shared by the benchmark scripts (benches/load/run.sh, benches/mirror/run.sh).
# Not meant to run on its own; a script sources it near its top, after `set -uo pipefail`:
#
#   source "$(dirname "${BASH_SOURCE[0]}")/../lib.sh"
#
# Globals a sourcing script must define (before calling the helpers that use them):
#   FAILURES   indexed array (FAILURES=()); fail() appends to it
#   PID        associative array name -> server pid (declare -A PID=()); stop_server, running
#   WORK       the run's temporary directory (used by the scripts' own helpers; lib.sh only
#              documents it because its helpers run inside the same shell)
#
# Globals this file defines itself:
#   RES           associative array "metric|system" -> space-separated values (record, med)
#   USED_PORTS    ports handed out by free_port in this run
#   FREE_PORT     free_port's result
#   EPH_LOW, PORT_LO, PORT_N   the port range free_port picks from
#
# Functions of the benchmarks with a docker-registry upstream (mirror, fleet) are in
# benches/upstream.sh; functions that differ between the scripts (row, usage, ...) stay in the
# scripts.

log() { printf '%s\n' "$*"; }
fail() { FAILURES+=("$*"); printf 'FAILED: %s\n' "$*" >&2; }

has() { [[ ",$1," == *",$2,"* ]]; }

# ---------------------------------------------------------------- ports
# Sets FREE_PORT to a port no socket uses (and that this run has not handed out yet). Ports come
# from below the kernel's ephemeral range, so that the client side of the many connections a
# benchmark opens cannot take a port a server is about to bind.
USED_PORTS=""
FREE_PORT=""
read -r EPH_LOW _ </proc/sys/net/ipv4/ip_local_port_range 2>/dev/null || EPH_LOW=32768
if ((EPH_LOW > 21000)); then PORT_LO=20000 PORT_N=$((EPH_LOW - 20000)); else PORT_LO=20000 PORT_N=40000; fi
port_in_use() {
    if command -v ss >/dev/null 2>&1; then
        [[ -n "$(ss -Htan "( sport = :$1 )" 2>/dev/null)" ]]
    else
        (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null
    fi
}
free_port() {
    local p i
    for ((i = 0; i < 200; i++)); do
        p=$((PORT_LO + RANDOM % PORT_N))
        [[ " $USED_PORTS " == *" $p "* ]] && continue
        if ! port_in_use "$p"; then
            USED_PORTS+=" $p"
            FREE_PORT=$p
            return 0
        fi
    done
    fail "no free port"
    return 1
}

# ---------------------------------------------------------------- numbers and results
now_ns() { date +%s%N; }

median() { # values... -> median (empty if none)
    printf '%s\n' "$@" | awk 'NF' | sort -g | awk '{a[NR]=$1} END { if (NR == 0) exit;
        if (NR % 2) printf "%.6g\n", a[(NR+1)/2]; else printf "%.6g\n", (a[NR/2]+a[NR/2+1])/2 }'
}

declare -gA RES=()
record() { # metric system value
    RES["$1|$2"]="${RES["$1|$2"]:-} $3"
}
med() { median ${RES["$1|$2"]:-}; }

ratio() { [[ -n "$1" && -n "$2" ]] && awk -v a="$1" -v b="$2" 'BEGIN { if (b > 0) printf "%.2f", a / b }'; }
verdict() { # value op target; op is >=, <=, < or = (= allows 0.001 either way)
    [[ -z "$1" ]] && { echo "n/a"; return; }
    awk -v v="$1" -v op="$2" -v t="$3" 'BEGIN { if (op == ">=") ok = v >= t; else if (op == "<=") ok = v <= t;
        else if (op == "<") ok = v < t; else ok = (v >= t - 0.001 && v <= t + 0.001); print ok ? "PASS" : "MISS" }'
}

# ---------------------------------------------------------------- files
sha256_of() { openssl dgst -sha256 -r "$1" | awk '{print $1}'; }

gen_random_file() { # path bytes (random content via openssl rand, in 256 MiB pieces)
    local path=$1 left=$2 piece=$((256 << 20)) n
    : >"$path"
    while ((left > 0)); do
        n=$((left < piece ? left : piece))
        openssl rand "$n" >>"$path" || return 1
        left=$((left - n))
    done
}

# ---------------------------------------------------------------- servers
running() { [[ -n "${PID[$1]:-}" ]]; }

stop_server() {
    local name=$1 pid=${PID[$1]:-} i
    [[ -z "$pid" ]] && return 0
    kill -TERM "$pid" 2>/dev/null
    for ((i = 0; i < 100; i++)); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
    kill -0 "$pid" 2>/dev/null && kill -KILL "$pid" 2>/dev/null
    wait "$pid" 2>/dev/null
    unset "PID[$name]"
}

# ---------------------------------------------------------------- registry client (curl)
# Resolve a Location header against a base URL and add ?digest= / &digest=.
resolve_location() { # base location -> absolute url
    case "$2" in
        http://*|https://*) echo "$2" ;;
        /*) echo "$1$2" ;;
        *) echo "$1/$2" ;;
    esac
}
with_digest() { [[ "$1" == *\?* ]] && echo "$1&digest=$2" || echo "$1?digest=$2"; }
header_of() { # file name -> value of the last such header
    awk -v n="$(echo "$2" | tr 'A-Z' 'a-z')" '{ sub(/\r$/, "") }
        tolower(substr($0, 1, length(n) + 1)) == n ":" { v = substr($0, length(n) + 2); sub(/^[ \t]+/, "", v) } END { print v }' "$1"
}

# Overwrites the first 32 bytes of a file with random ones: a new digest, same size.
new_digest_variant() { openssl rand 32 | dd of="$1" bs=32 count=1 conv=notrunc status=none; }

# Chunked upload: POST a session, PATCH each chunk file (DIR/c.*) with Content-Range
# (following the Location each answer gives), PUT ?digest= without a body. Prints the summed
# request seconds. Safe to run in parallel (headers go to a file per subshell).
upload_chunked() { # base repo chunkdir digest
    local base=$1 repo=$2 dir=$3 digest=$4 loc out code t total=0 start=0 size c
    local hdr="$WORK/hdr.$BASHPID"
    out=$(curl -s -o /dev/null -D "$hdr" -w '%{http_code} %{time_total}' -X POST "$base/v2/$repo/blobs/uploads/")
    read -r code t <<<"$out"
    [[ "$code" == 202 ]] || { echo "POST session -> $code" >&2; return 1; }
    total=$(awk -v a="$total" -v b="$t" 'BEGIN { print a + b }')
    loc=$(resolve_location "$base" "$(header_of "$hdr" location)")
    for c in "$dir"/c.*; do
        size=$(stat -c %s "$c")
        out=$(curl -s -o /dev/null -D "$hdr" -w '%{http_code} %{time_total}' -X PATCH -H 'Expect:' \
            -H 'Content-Type: application/octet-stream' -H "Content-Range: $start-$((start + size - 1))" \
            -T "$c" "$loc")
        read -r code t <<<"$out"
        [[ "$code" == 202 ]] || { echo "PATCH $start-$((start + size - 1)) -> $code" >&2; return 1; }
        total=$(awk -v a="$total" -v b="$t" 'BEGIN { print a + b }')
        loc=$(resolve_location "$base" "$(header_of "$hdr" location)")
        start=$((start + size))
    done
    out=$(curl -s -o /dev/null -w '%{http_code} %{time_total}' -X PUT \
        -H 'Content-Type: application/octet-stream' --data-binary '' "$(with_digest "$loc" "$digest")")
    read -r code t <<<"$out"
    rm -f "$hdr"
    [[ "$code" == 201 ]] || { echo "PUT ?digest= (close) -> $code" >&2; return 1; }
    awk -v a="$total" -v b="$t" 'BEGIN { printf "%.6f\n", a + b }'
}

# Exits 2, naming it, at the first of these tools that is not installed.
require_tools() { # tool...
    local t
    for t in "$@"; do
        command -v "$t" >/dev/null 2>&1 || { echo "run.sh: missing tool: $t (see scripts/install-test-deps.sh)" >&2; exit 2; }
    done
}

# Sets PIER_BIN, unless it is set, to the first release build found: $CARGO_TARGET_DIR's,
# /root/.cache/pier/target's, the repository's ($REPO_DIR). Exits 2 when there is none;
# the argument is added to the hint (another way to run without Pier).
find_pier_bin() { # [hint]
    local c
    if [[ -z "${PIER_BIN:-}" ]]; then
        for c in "${CARGO_TARGET_DIR:+$CARGO_TARGET_DIR/release/pier}" /root/.cache/pier/target/release/pier \
                 "$REPO_DIR/target/release/pier"; do
            [[ -n "$c" && -x "$c" ]] && { PIER_BIN="$c"; break; }
        done
    fi
    if [[ -z "${PIER_BIN:-}" || ! -x "$PIER_BIN" ]]; then
        echo "run.sh: Pier binary not found (set PIER_BIN, or build it:" >&2
        echo "  cargo build --release -p pier-server --bin pier)${1:-}" >&2
        exit 2
    fi
}

# Pier's own warnings and errors after its "#### bench: ready" line, one line per kind
# (most frequent first), from the server logs under $WORK given by name; $1 says which are
# expected. Writes $WORK/pier-warnings.
report_pier_warnings() { # expected logname...
    local expected=$1 plogs=() f
    shift
    for f in "$@"; do [[ -f "$WORK/$f" ]] && plogs+=("$WORK/$f"); done
    ((${#plogs[@]})) || return 0
    awk 'FNR == 1 { st = 0 } /^#### bench: ready/ { st = 1; next } st && /WARN|ERROR/ { print FILENAME ": " $0 }' "${plogs[@]}" |
        sed -E "s|$WORK/||; s/\x1b\[[0-9;]*m//g; s/ [^ ]*Z / /; s/[0-9a-f]{64}/<hex>/g; s/[0-9]+\.[0-9]+\.[0-9]+\.[0-9]+:[0-9]+/ADDR/g" >"$WORK/pier-warnings"
    if [[ -s "$WORK/pier-warnings" ]]; then
        log ""
        log "Pier logged $(wc -l <"$WORK/pier-warnings") warnings/errors after startup (kinds, most frequent first; $expected):"
        cut -c1-230 "$WORK/pier-warnings" | sort | uniq -c | sort -rn | head -n 10 | sed 's/^/  /'
    fi
}

# Exits 1 listing FAILURES when some measurement could not be taken, else 0.
finish() {
    if ((${#FAILURES[@]})); then
        log ""
        log "Some measurements could not be taken:"
        printf '  - %s\n' "${FAILURES[@]}"
        exit 1
    fi
    exit 0
}

# Starts server NAME with the script's `launch_pier NAME PORT ADMIN_PORT` (which sets
# URL[NAME]) on two free ports, again on new ports when it lost a port race (wait_ready's
# 2), up to 5 times; marks its log "#### bench: ready" (see report_pier_warnings).
start_pier_retrying() { # name
    local try rc port admin
    for ((try = 0; try < 5; try++)); do
        free_port || return 1; port=$FREE_PORT
        free_port || return 1; admin=$FREE_PORT
        launch_pier "$1" "$port" "$admin"
        wait_ready "$1" "${URL[$1]}/v2/" 30
        rc=$?
        ((rc == 0)) && { echo "#### bench: ready" >>"$WORK/$1/server.log"; return 0; }
        ((rc == 2)) || return 1
    done
    fail "$1: no free ports after 5 tries"
    return 1
}
