#!/usr/bin/env bash
# Side-by-side benchmark of project quota accounting on pushes (gateway/core/src/quota.rs):
# the same Pier with a limit on project `team` (accounting on: every blob commit and every
# manifest push checks the project's usage) vs one without any limit (no accounting).
#
#   benches/policies/quota.sh [--quick] [--tests new,retag] [--rounds N] [--images N]
#                             [--layers N] [--layer-kib N] [--keep]
#
#   new     pushes with skopeo (`skopeo copy oci:LAYOUT:TAG docker://HOST/team/app:TAG`) of
#           images of N layers (--layers, default 100) of fresh random data, so every push
#           uploads every blob (each layer a gzip'd tar of one random file of --layer-kib
#           KiB, default 64; random data does not compress, so ~64 KiB a blob); per round
#           --images (default 6; --quick: 3) pushes to each server, one at a time, image by
#           image A then B (odd rounds) or B then A (even rounds), 3 rounds (--quick: 2);
#           the wall time of each skopeo run, medians per server and the A/B of each pair
#   retag   the same layers under a new tag: per round as many images again, each with a
#           config of its own but the 100 layers of an image pushed in `new` (skopeo finds
#           them with HEAD and uploads only the config): the manifest-side work of accounting
#
# Both Pier processes (`pier serve --root DIR --listen ... --admin-listen ...`) are started by
# this script on free 127.0.0.1 ports below the ephemeral range with their own temporary
# roots, get the same images and are stopped on exit (trap). Before measuring, one warm-up
# image is pushed to each. After measuring, the script checks that accounting was on: A's
# GET /api/v1/quotas/team shows the limit and `used` equal to the bytes pushed (manifests,
# configs and layers, each once), B's shows no limit; and on A a push into project `small`
# (limit: half the image) is refused at the manifest, one into project `tiny` (limit 1 KiB)
# at the first blob's commit. The summary uses medians of all pushes per server (and per round);
# Pier's access log (on by default here, both servers) splits a push's server time into blob
# HEADs, uploads and the manifest PUT. See benches/README.md.
#
# Environment:
#   PIER_BIN      Pier binary (default: $CARGO_TARGET_DIR/release/pier, then
#                 /root/.cache/pier/target/release/pier, then <repo>/target/release/pier)
#   QUOTA_LIMIT   A's limit on `team` in bytes (default 107374182400, 100 GiB: never refuses)
#   PIER_LOG      Pier's log filter (default here: warn,pier::access=info: the access log on
#                 in both servers, for the time split)
#   BENCH_TMPDIR  where the temporary directory goes (default: $TMPDIR or /tmp; full run
#                 ~0.5 GiB: the OCI layout and both roots)
#
# skopeo remembers where it pushed blobs (/var/lib/containers/cache/blob-info-cache-v1.boltdb
# for root); the layers here are fresh random data, so it never offers a mount for them, and
# the two servers are different hosts to it.
#
# Exit status: 0 when everything ran (a MISS against the target is a finding, not a failure),
# 1 when some measurement could not be taken (a server did not start, a push failed, the
# quota did not refuse what it must or counted wrong), 2 on bad usage or missing tools.
set -uo pipefail

QUOTA_LIMIT="${QUOTA_LIMIT:-107374182400}"

SCRIPT_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
REPO_DIR="$(cd "$SCRIPT_DIR/../.." && pwd)"
# shellcheck source=../lib.sh
source "$SCRIPT_DIR/../lib.sh"
# cleanup, secs_since, cpu_ticks, fmt and wait_ready (this script runs no upstream)
# shellcheck source=../upstream.sh
source "$SCRIPT_DIR/../upstream.sh"

# ---------------------------------------------------------------- options
QUICK=0
TESTS="new,retag"
ROUNDS=""
IMAGES=""
LAYERS=100
LAYER_KIB=64
KEEP=0

usage() { sed -n '2,46p' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//'; }

while (($#)); do
    case "$1" in
        --quick) QUICK=1 ;;
        --tests) TESTS="${2:?--tests needs a list}"; shift ;;
        --tests=*) TESTS="${1#*=}" ;;
        --rounds) ROUNDS="${2:?--rounds needs a number}"; shift ;;
        --rounds=*) ROUNDS="${1#*=}" ;;
        --images) IMAGES="${2:?--images needs a number}"; shift ;;
        --images=*) IMAGES="${1#*=}" ;;
        --layers) LAYERS="${2:?--layers needs a number}"; shift ;;
        --layers=*) LAYERS="${1#*=}" ;;
        --layer-kib) LAYER_KIB="${2:?--layer-kib needs a number}"; shift ;;
        --layer-kib=*) LAYER_KIB="${1#*=}" ;;
        --keep) KEEP=1 ;;
        -h|--help) usage; exit 0 ;;
        *) echo "quota.sh: unknown argument: $1" >&2; usage >&2; exit 2 ;;
    esac
    shift
done

for v in ROUNDS IMAGES; do
    [[ -z "${!v}" || "${!v}" =~ ^[1-9][0-9]*$ ]] || { echo "quota.sh: --${v,,} must be a number >= 1" >&2; exit 2; }
done
[[ "$LAYERS" =~ ^[1-9][0-9]*$ ]] || { echo "quota.sh: --layers must be a number >= 1" >&2; exit 2; }
[[ "$LAYER_KIB" =~ ^[1-9][0-9]*$ ]] || { echo "quota.sh: --layer-kib must be a number >= 1" >&2; exit 2; }
[[ "$QUOTA_LIMIT" =~ ^[1-9][0-9]*$ ]] || { echo "quota.sh: QUOTA_LIMIT must be a number of bytes" >&2; exit 2; }
if ((QUICK)); then NROUNDS=2 NIMG=3; else NROUNDS=3 NIMG=6; fi
[[ -n "$ROUNDS" ]] && NROUNDS=$ROUNDS
[[ -n "$IMAGES" ]] && NIMG=$IMAGES
for t in ${TESTS//,/ }; do
    case "$t" in new|retag) ;; *) echo "quota.sh: --tests: unknown test '$t'" >&2; exit 2 ;; esac
done
has "$TESTS" retag && ! has "$TESTS" new && { echo "quota.sh: --tests retag needs new (it reuses its layers)" >&2; exit 2; }

# ---------------------------------------------------------------- tools
require_tools curl openssl skopeo python3 awk sort grep
find_pier_bin

# ---------------------------------------------------------------- workspace and cleanup
BASE_TMP="${BENCH_TMPDIR:-${TMPDIR:-/tmp}}"
WORK="$(mktemp -d "$BASE_TMP/pier-quota-bench.XXXXXX")" || exit 2
declare -A PID=() URL=() ADMIN=() HOSTPORT=()
FAILURES=()

trap cleanup EXIT
trap 'exit 130' INT TERM

# ---------------------------------------------------------------- small helpers
# (log, fail, has, free_port, now_ns, median, record, med, ratio, verdict, sha256_of, running,
# stop_server: benches/lib.sh; cleanup, secs_since, cpu_ticks, fmt, wait_ready: benches/upstream.sh)
TICK=$(getconf CLK_TCK 2>/dev/null || echo 100)
REPO=team/app
SYSTEMS=(quota plain)
declare -A LABEL=([quota]="A: limit on team" [plain]="B: no limit")

# A number field of a compact JSON object (the admin API's answers): the first "key":N.
json_num() { grep -oE "\"$2\": *[0-9.eE+-]+" <<<"$1" | head -n 1 | sed -E 's/.*: *//'; }

# ---------------------------------------------------------------- servers
launch_pier() { # name port admin_port
    local name=$1 port=$2 admin=$3 d="$WORK/$1"
    mkdir -p "$d/data"
    echo "#### bench: starting $(date -u '+%H:%M:%S')" >>"$d/server.log"
    PIER_LOG="${PIER_LOG:-warn,pier::access=info}" "$PIER_BIN" serve --root "$d/data" \
        --listen "127.0.0.1:$port" --admin-listen "127.0.0.1:$admin" >>"$d/server.log" 2>&1 &
    PID[$name]=$!
    URL[$name]="http://127.0.0.1:$port"
    HOSTPORT[$name]="127.0.0.1:$port"
    ADMIN[$name]="http://127.0.0.1:$admin"
}


# PUT /api/v1/quotas/<project> {"limit": N}; prints the answer.
set_limit() { # name project bytes
    local out code
    out=$(curl -s --max-time 30 -w '\n%{http_code}' -X PUT -H 'Content-Type: application/json' \
        -d "{\"limit\": $3}" "${ADMIN[$1]}/api/v1/quotas/$2")
    code=${out##*$'\n'}
    [[ "$code" == 200 ]] || { fail "$1: PUT /api/v1/quotas/$2 -> $code: $(head -c 300 <<<"${out%$'\n'*}")"; return 1; }
    printf '%s\n' "${out%$'\n'*}"
}
get_quota() { curl -s --max-time 60 "${ADMIN[$1]}/api/v1/quotas/$2" | tr -d '\n' | tr -s ' '; }

# ---------------------------------------------------------------- fixtures
# One OCI image layout holding every image (tags in index.json): per image a config of its
# own; layers in groups (fresh random data per group; `retag` images reuse a group). Writes
# $FIX/refs (lines "tag digest size": manifest, config and layers of each tag).
FIX="$WORK/layout"
cat >"$WORK/gen.py" <<'PY'
import gzip, hashlib, io, json, os, sys, tarfile
out, nlayers, size = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]) * 1024
blobs = os.path.join(out, "blobs", "sha256")
os.makedirs(blobs, exist_ok=True)
def put(data):
    h = hashlib.sha256(data).hexdigest()
    with open(os.path.join(blobs, h), "wb") as f:
        f.write(data)
    return "sha256:" + h, len(data)
groups, index, refs = {}, [], []
for line in sys.stdin:                  # "tag group"
    tag, group = line.split()
    if group not in groups:
        layers = []
        for i in range(nlayers):
            raw = io.BytesIO()
            with tarfile.open(fileobj=raw, mode="w", format=tarfile.PAX_FORMAT) as t:
                ti = tarfile.TarInfo(f"bench/{group}/{i}.bin"); ti.size = size; ti.mtime = 0
                t.addfile(ti, io.BytesIO(os.urandom(size)))
            tar = raw.getvalue()
            gz = gzip.compress(tar, compresslevel=1, mtime=0)
            d, n = put(gz)
            layers.append((d, n, "sha256:" + hashlib.sha256(tar).hexdigest()))
        groups[group] = layers
    layers = groups[group]
    config = json.dumps({"architecture": "amd64", "os": "linux",
        "config": {"Labels": {"bench.image": tag}},
        "rootfs": {"type": "layers", "diff_ids": [l[2] for l in layers]}}, separators=(",", ":")).encode()
    cd, cn = put(config)
    manifest = json.dumps({"schemaVersion": 2, "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": cd, "size": cn},
        "layers": [{"mediaType": "application/vnd.oci.image.layer.v1.tar+gzip", "digest": d, "size": n}
                   for d, n, _ in layers]}, separators=(",", ":")).encode()
    md, mn = put(manifest)
    index.append({"mediaType": "application/vnd.oci.image.manifest.v1+json", "digest": md, "size": mn,
                  "annotations": {"org.opencontainers.image.ref.name": tag}})
    refs += [(tag, md, mn), (tag, cd, cn)] + [(tag, d, n) for d, n, _ in layers]
with open(os.path.join(out, "oci-layout"), "w") as f:
    json.dump({"imageLayoutVersion": "1.0.0"}, f)
with open(os.path.join(out, "index.json"), "w") as f:
    json.dump({"schemaVersion": 2, "mediaType": "application/vnd.oci.image.index.v1+json", "manifests": index}, f)
with open(os.path.join(out, "refs"), "w") as f:
    for r in refs:
        print(*r, file=f)
PY

# The images: w-quota/w-plain (warm-up), n-R-I (new, round R, image I: group gR-I),
# r-R-I (retag: a new config over group gR-I), small and tiny (the refusal checks).
image_list() {
    local r i
    echo "warm gw"
    for ((r = 1; r <= NROUNDS; r++)); do
        for ((i = 1; i <= NIMG; i++)); do
            echo "n-$r-$i g$r-$i"
            has "$TESTS" retag && echo "r-$r-$i g$r-$i"
        done
    done
    echo "small gs"
    echo "tiny gt"
}

# ---------------------------------------------------------------- pushing
# One skopeo copy of tag to name's repo; on success records its seconds and the server-side
# split from the access log (lines written during the push) under metric prefix.
SKOPEO_OUT=""
skopeo_push() { # name repo tag
    local name=$1 repo=$2 tag=$3
    SKOPEO_OUT=$(skopeo --insecure-policy copy --quiet --dest-tls-verify=false \
        "oci:$FIX:$tag" "docker://${HOSTPORT[$name]}/$repo:$tag" 2>&1)
}

push_measured() { # metric name tag
    local metric=$1 name=$2 tag=$3 log="$WORK/$2/server.log" o0 o1 t0 c0 c1 secs split
    o0=$(stat -c %s "$log")
    c0=$(cpu_ticks "${PID[$name]}")
    t0=$(now_ns)
    if ! skopeo_push "$name" "$REPO" "$tag"; then
        fail "$name: push of $tag failed: $(tail -n 3 <<<"$SKOPEO_OUT" | tr '\n' ' ' | cut -c1-400)"
        return 1
    fi
    secs=$(secs_since "$t0")
    c1=$(cpu_ticks "${PID[$name]}")
    sleep 0.05 # the last access lines (written when a body ends)
    o1=$(stat -c %s "$log")
    record "$metric.secs" "$name" "$secs"
    record "$metric.cpu" "$name" "$(awk -v a="$c0" -v b="$c1" -v t="$TICK" 'BEGIN { printf "%.3f", (b - a) / t }')"
    # Access lines: sum duration_ms by kind (blob HEAD, upload POST/PATCH/PUT, manifest PUT).
    # Access lines: sum duration_ms by kind (blob HEAD, upload POST+PATCH, upload PUT: the
    # commit, where the quota is checked, manifest PUT).
    split=$(tail -c +"$((o0 + 1))" "$log" | head -c "$((o1 - o0))" | awk '
        /pier::access/ {
            m = ""; r = ""; ms = 0
            for (i = 1; i <= NF; i++) {
                if ($i ~ /^method=/) m = substr($i, 8)
                else if ($i ~ /^route=/) { r = substr($i, 7); gsub(/"/, "", r) }
                else if ($i ~ /^duration_ms=/) ms = substr($i, 13) + 0
            }
            if (r == "manifest" && m == "PUT") { man += ms; nman++ }
            else if (r == "upload" && m == "PUT") { com += ms; ncom++ }
            else if (r == "upload") { up += ms; nup++ }
            else if (r == "blob" && m == "HEAD") { head += ms; nhead++ }
        }
        END { printf "%.3f %.3f %.3f %.3f %d %d %d %d", man + 0, com + 0, up + 0, head + 0, nman, ncom, nup, nhead }')
    local man com up head nman ncom nup nhead
    read -r man com up head nman ncom nup nhead <<<"$split"
    record "$metric.man" "$name" "$man"
    record "$metric.com" "$name" "$com"
    ((ncom > 0)) && record "$metric.com1" "$name" "$(awk -v a="$com" -v n="$ncom" 'BEGIN { printf "%.4f", a / n }')"
    record "$metric.up" "$name" "$up"
    record "$metric.head" "$name" "$head"
    record "$metric.nreq" "$name" "$((nman + ncom + nup + nhead))"
    LAST="$secs"
}

# ---------------------------------------------------------------- header
log "== Pier quota-accounting push benchmark  $(date -u '+%Y-%m-%d %H:%M:%S UTC')"
log "machine: $(hostname) | $(nproc) cores | $(awk -F': ' '/^model name/ {print $2; exit}' /proc/cpuinfo) |" \
    "$(awk '/^MemTotal/ {printf "%.0f GiB", $2/1048576}' /proc/meminfo) | Linux $(uname -r) | load $(cut -d' ' -f1-3 /proc/loadavg)"
log "tests: $TESTS | $NROUNDS rounds x $NIMG pushes per server | images of $LAYERS layers x $LAYER_KIB KiB random (gzip'd tar) | work dir: $WORK"
log "pier: $PIER_BIN ($("$PIER_BIN" --version 2>/dev/null | head -n 1 || true)," \
    "built $(date -u -r "$PIER_BIN" '+%Y-%m-%d %H:%M:%S UTC'); checkout at $(git -C "$REPO_DIR" log --oneline -1 2>/dev/null || echo '?'))"
log "$(skopeo --version) | $(curl --version | head -n 1 | awk '{print $1, $2}') | A's limit on team: $QUOTA_LIMIT bytes"
log ""

t0=$(now_ns)
image_list | python3 "$WORK/gen.py" "$FIX" "$LAYERS" "$LAYER_KIB" || { fail "gen.py: cannot write the OCI layout"; exit 1; }
log "fixtures: $(grep -o '"digest"' "$FIX/index.json" | wc -l) images, $(ls "$FIX/blobs/sha256" | wc -l) blobs," \
    "$(du -sh "$FIX" | cut -f1) in $(fmt "$(secs_since "$t0")") s"

start_pier_retrying quota || exit 1
start_pier_retrying plain || exit 1
log "A (limit on team): ${URL[quota]} (admin ${ADMIN[quota]}), pid ${PID[quota]}"
log "B (no limit):      ${URL[plain]} (admin ${ADMIN[plain]}), pid ${PID[plain]}"
set_limit quota team "$QUOTA_LIMIT" >/dev/null || exit 1
out=$(get_quota plain team)
[[ "$out" == *'"limit":null'* || "$out" == *'"limit": null'* ]] || { fail "B: team has a limit: $out"; exit 1; }

# Warm-up: one image to each (connections, the first repository, page cache).
for s in "${SYSTEMS[@]}"; do
    skopeo_push "$s" "$REPO" warm || { fail "$s: warm-up push failed: $(tail -n 3 <<<"$SKOPEO_OUT" | tr '\n' ' ')"; exit 1; }
done
log "warm-up: one image pushed to each"
log ""

# ---------------------------------------------------------------- measurements
# Per round, image by image: A then B (odd rounds) or B then A (even rounds), so that both
# servers see the same machine load; each pair gives a ratio A/B.
run_phase() { # test prefix
    local test=$1 prefix=$2 r i s order a b
    log "-- $test: $NROUNDS rounds of $NIMG pushes per server, pairwise"
    for ((r = 1; r <= NROUNDS; r++)); do
        if ((r % 2)); then order=(quota plain); else order=(plain quota); fi
        local -A vals=([quota]="" [plain]="")
        local ratios=""
        for ((i = 1; i <= NIMG; i++)); do
            a="" b=""
            for s in "${order[@]}"; do
                push_measured "$test" "$s" "$prefix-$r-$i" || continue
                vals[$s]+=" $LAST"
                record "$test.r$r.secs" "$s" "$LAST"
                if [[ $s == quota ]]; then a=$LAST; else b=$LAST; fi
            done
            if [[ -n "$a" && -n "$b" ]]; then
                ratios+=" $(awk -v a="$a" -v b="$b" 'BEGIN { printf "%.3f", a / b }')"
                record "$test.pair" all "${ratios##* }"
                record "$test.r$r.pair" all "${ratios##* }"
            fi
        done
        for s in "${order[@]}"; do
            # shellcheck disable=SC2086
            printf '  round %d  %-17s push s:%s | median %.3f\n' "$r" "${LABEL[$s]}" \
                "$(awk '{ for (i = 1; i <= NF; i++) printf " %.3f", $i }' <<<"${vals[$s]}")" "$(median ${vals[$s]})"
        done
        # shellcheck disable=SC2086
        printf '  round %d  pairs A/B:        %s | median %.3f\n' "$r" "$ratios" "$(median $ratios)"
    done
    log ""
}
has "$TESTS" new && run_phase new n
has "$TESTS" retag && run_phase retag r

# ---------------------------------------------------------------- accounting was on
log "-- checks: accounting on A, refusals"
expect=$(awk -v p="$TESTS" '$1 == "warm" || $1 ~ /^n-/ || ($1 ~ /^r-/ && p ~ /retag/) { if (!seen[$2]++) s += $3 } END { printf "%d", s }' "$FIX/refs")
items=$(awk -v p="$TESTS" '$1 == "warm" || $1 ~ /^n-/ || ($1 ~ /^r-/ && p ~ /retag/) { if (!seen[$2]++) n++ } END { print n + 0 }' "$FIX/refs")
out=$(get_quota quota team)
used=$(json_num "$out" used) lim=$(json_num "$out" limit)
log "  A GET /api/v1/quotas/team: $out"
log "  expected used: $expect bytes in $items items (the warm-up and measured images: manifests, configs, layers, each once)"
[[ "$lim" == "$QUOTA_LIMIT" ]] || fail "A: quota of team shows limit '${lim:-?}', not $QUOTA_LIMIT"
if [[ -z "$used" || "$used" -le 0 ]]; then
    fail "A: quota of team shows no usage"
elif [[ "$used" != "$expect" ]]; then
    fail "A: team uses $used bytes by the quota, $expect expected"
fi
log "  B GET /api/v1/quotas/team: $(get_quota plain team)"

small_size=$(awk '$1 == "small" { s += $3 } END { printf "%d", s }' "$FIX/refs")
set_limit quota small "$((small_size / 2))" >/dev/null
if skopeo_push quota small/app small; then
    fail "A: a $small_size-byte image was pushed into project small over its limit of $((small_size / 2))"
else
    log "  A small (limit $((small_size / 2)) bytes, half the image): refused: $(grep -oiE 'denied[^"]*|quota[^"]*' <<<"$SKOPEO_OUT" | head -n 1 | cut -c1-160)"
fi
out=$(get_quota quota small)
log "  A GET /api/v1/quotas/small: $out"
[[ "$(json_num "$out" used)" == 0 ]] || fail "A: small uses $(json_num "$out" used) bytes after a refused push"
set_limit quota tiny 1024 >/dev/null
if skopeo_push quota tiny/app tiny; then
    fail "A: an image with $LAYER_KIB KiB layers was pushed into project tiny over its 1 KiB limit"
else
    log "  A tiny (limit 1 KiB): refused: $(grep -oiE 'denied[^"]*|quota[^"]*' <<<"$SKOPEO_OUT" | head -n 1 | cut -c1-160)"
fi
nrefused=$(grep -c 'pier::access.*status=403' "$WORK/quota/server.log")
log "  A's access log: $nrefused answers 403 (quota refusals)"
log ""

# ---------------------------------------------------------------- summary
hr() { local i; for i in "$@"; do printf '|%s' "$(printf -- '-%.0s' $(seq 1 $((i + 2))))"; done; printf '|\n'; }
row() { # check A B ratio target result
    printf '| %-68s | %9s | %9s | %7s | %-8s | %-6s |\n' "$@"
}
diffms() { [[ -n "$1" && -n "$2" ]] && awk -v a="$1" -v b="$2" 'BEGIN { printf "%+.2f", a - b }'; }
# The lowest and highest of the values recorded under KEY ("NAME|SYSTEM"), as "min-max".
# shellcheck disable=SC2086
minmax() { printf '%s\n' ${RES["$1"]:-} | sort -g | awk 'NR == 1 { a = $1 } { b = $1 } END { if (NR) printf "%.2f-%.2f", a, b }'; }
log "== Summary (medians of all pushes; $(date -u '+%Y-%m-%d'), $(hostname), $(nproc) cores;" \
    "$(git -C "$REPO_DIR" log --oneline -1 2>/dev/null | cut -c1-60))"
row "check" "A: limit" "B: none" "A/B" "target" "result"
hr 68 9 9 7 8 6
for t in new retag; do
    has "$TESTS" "$t" || continue
    if [[ $t == new ]]; then what="(1) push of a $LAYERS-layer image, all blobs new, s"; else what="(2) same layers, new tag (config + manifest), s"; fi
    p=$(med "$t.secs" quota) q=$(med "$t.secs" plain) rr=$(ratio "$p" "$q")
    [[ -n "$p" && -n "$q" ]] && rr=$(awk -v a="$p" -v b="$q" 'BEGIN { printf "%.3f", a / b }')
    if [[ $t == new ]]; then
        row "$what" "$(fmt "$p")" "$(fmt "$q")" "$rr" "<= 1.05" "$(verdict "$rr" "<=" 1.05)"
    else
        row "$what" "$(fmt "$p")" "$(fmt "$q")" "$rr" "" ""
    fi
    # shellcheck disable=SC2086
    pr=$(med "$t.pair" all); [[ -n "$pr" ]] && pr=$(printf '%.3f' "$pr"); rmin=$(printf '%s\n' ${RES["$t.pair|all"]:-} | sort -g | head -n 1); rmax=$(printf '%s\n' ${RES["$t.pair|all"]:-} | sort -g | tail -n 1)
    row "    median of the pairs' A/B (min $rmin, max $rmax)" "" "" "$pr" "" ""
    for ((r = 1; r <= NROUNDS; r++)); do
        p=$(med "$t.r$r.secs" quota) q=$(med "$t.r$r.secs" plain)
        row "    round $r, $( ((r % 2)) && echo "A first" || echo "B first") (median of its pairs' A/B: $(printf '%.3f' "$(med "$t.r$r.pair" all)"))" "$(fmt "$p")" "$(fmt "$q")" \
            "$([[ -n "$p" && -n "$q" ]] && awk -v a="$p" -v b="$q" 'BEGIN { printf "%.3f", a / b }')" "" ""
    done
    row "    min-max of the pushes, s" "$(minmax "$t.secs|quota")" "$(minmax "$t.secs|plain")" "" "" ""
    p=$(med "$t.cpu" quota) q=$(med "$t.cpu" plain)
    row "    Pier CPU per push, s" "$(fmt "$p")" "$(fmt "$q")" "$(ratio "$p" "$q")" "" ""
    for m in "man|manifest PUT" "com|upload commits (PUT, summed)" "com1|one upload commit (mean in a push)" \
        "up|upload POST+PATCH (summed)" "head|blob HEADs (summed)"; do
        p=$(med "$t.${m%%|*}" quota) q=$(med "$t.${m%%|*}" plain)
        row "    server time: ${m#*|}, ms" "$(fmt "$p")" "$(fmt "$q")" "$(diffms "$p" "$q")" "" ""
    done
    p=$(med "$t.nreq" quota) q=$(med "$t.nreq" plain)
    row "    requests per push (HEAD + upload + manifest PUT)" "$p" "$q" "" "" ""
done
row "A's team usage by the quota = bytes pushed" "$(fmt "$used")" "-" "" "exact" "$([[ "$used" == "$expect" ]] && echo PASS || echo MISS)"

report_pier_warnings "the refusals of the checks are expected" quota/server.log plain/server.log
finish
