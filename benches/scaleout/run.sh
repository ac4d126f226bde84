#!/usr/bin/env bash
# Scale-out benchmark (scale-out issue): chunked pushes through the load balancer to three
# nodes vs the same pushes through the same kind of balancer to one node, side by side.
#
#   benches/scaleout/run.sh [--rounds N] [--clients N] [--size-mib N] [--chunk-mib N]
#
# Starts deploy/examples/ha/run.sh's set (s3s-fs, Redis, three Pier nodes, nginx) on free
# loopback ports in a temp dir, plus a second nginx whose only upstream is node 1; then,
# alternating, has N clients each push a fresh blob at once in chunks (POST, PATCH per
# chunk, PUT ?digest=) with curl through either balancer: through the first, consecutive
# chunks of one upload land on different nodes. Prints MB/s (total bytes / wall time of the
# round) and the ratio; target: spread over 3 nodes ≥ 1.0× one node (same proxy hop).
set -uo pipefail
SCRIPT_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
REPO_DIR="$(cd "$SCRIPT_DIR/../.." && pwd)"
# shellcheck source=../lib.sh
source "$SCRIPT_DIR/../lib.sh"
FAILURES=()
ROUNDS=3 CLIENTS=4 SIZE_MIB=64 CHUNK_MIB=16
while (($#)); do
    case "$1" in
        --rounds) ROUNDS="$2"; shift ;;
        --clients) CLIENTS="$2"; shift ;;
        --size-mib) SIZE_MIB="$2"; shift ;;
        --chunk-mib) CHUNK_MIB="$2"; shift ;;
        *) sed -n '2,11p' "$0"; exit 2 ;;
    esac
    shift
done
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/pier/target}"
(cd "$REPO_DIR" && cargo build -q --release -p pier-server --bin pier) || exit 1
WORK="$(mktemp -d "${TMPDIR:-/tmp}/pier-bench-scaleout.XXXXXX")"
cleanup() {
    for f in "$WORK"/ha/*.pid; do [[ -f "$f" ]] && kill "$(cat "$f")" 2>/dev/null; done
    sleep 0.5; rm -rf "$WORK"
}
trap cleanup EXIT

free_port; LB=$FREE_PORT; free_port; S3=$FREE_PORT; free_port; RD=$FREE_PORT
free_port; N1=$FREE_PORT; free_port; N2=$FREE_PORT; free_port; N3=$FREE_PORT
# The nodes' admin ports are theirs + 10: make sure those are free too.
for p in $N1 $N2 $N3; do port_in_use $((p + 10)) && { echo "port $((p + 10)) in use; run again" >&2; exit 1; }; done
PIER_BIN="$CARGO_TARGET_DIR/release/pier" LB_PORT=$LB S3_PORT=$S3 REDIS_PORT=$RD NODE1=$N1 NODE2=$N2 NODE3=$N3 \
    "$REPO_DIR/deploy/examples/ha/run.sh" "$WORK/ha" >"$WORK/start.log" 2>&1 || { cat "$WORK/start.log"; exit 1; }
# The same balancer with node 1 only.
free_port; LB1=$FREE_PORT
mkdir -p "$WORK/lb1"
sed -e "s|$WORK/ha/nginx|$WORK/lb1/nginx|g; s|pid $WORK/ha/nginx.pid|pid $WORK/lb1/nginx.pid|; s/listen 127.0.0.1:$LB;/listen 127.0.0.1:$LB1;/" \
    -e "/server 127.0.0.1:$N2 /d; /server 127.0.0.1:$N3 /d" "$WORK/ha/nginx.conf" >"$WORK/lb1/nginx.conf"
nginx -c "$WORK/lb1/nginx.conf" -g 'daemon off;' >"$WORK/lb1/nginx.log" 2>&1 &
echo $! >"$WORK/ha/lb1.pid"
for _ in $(seq 50); do port_in_use "$LB1" && break; sleep 0.1; done
log "scale-out set up: LB :$LB (3 nodes), LB :$LB1 (node 1 only), nodes :$N1 :$N2 :$N3, s3s-fs :$S3, Redis :$RD"

SIZE=$((SIZE_MIB << 20))
for ((c = 0; c < CLIENTS; c++)); do
    gen_random_file "$WORK/blob.$c" "$SIZE" || { echo "cannot generate blobs" >&2; exit 1; }
done

# One round: every client pushes a fresh blob (new first bytes) at once; prints MB/s.
round() { # base
    local base=$1 c t0 t1 ok=1
    for ((c = 0; c < CLIENTS; c++)); do
        new_digest_variant "$WORK/blob.$c"
        rm -rf "$WORK/chunks.$c" && mkdir -p "$WORK/chunks.$c"
        split -b $((CHUNK_MIB << 20)) -d -a 4 "$WORK/blob.$c" "$WORK/chunks.$c/c."
        echo "sha256:$(sha256_of "$WORK/blob.$c")" >"$WORK/digest.$c"
    done
    t0=$(now_ns)
    for ((c = 0; c < CLIENTS; c++)); do
        upload_chunked "$base" "bench/c$c" "$WORK/chunks.$c" "$(cat "$WORK/digest.$c")" >"$WORK/out.$c" 2>&1 &
    done
    wait
    t1=$(now_ns)
    for ((c = 0; c < CLIENTS; c++)); do
        grep -q '^[0-9.]*$' "$WORK/out.$c" || { echo "client $c: $(cat "$WORK/out.$c")" >&2; ok=0; }
        # The blob must be there, whole, from another node than the one that took the PUT.
        got=$(curl -s "http://127.0.0.1:$N3/v2/bench/c$c/blobs/$(cat "$WORK/digest.$c")" | openssl dgst -sha256 -r | awk '{print $1}')
        [[ "sha256:$got" == "$(cat "$WORK/digest.$c")" ]] || { echo "client $c: blob read back from node 3 differs" >&2; ok=0; }
    done
    ((ok)) || return 1
    awk -v b=$((SIZE * CLIENTS)) -v ns=$((t1 - t0)) 'BEGIN { printf "%.2f\n", b / (ns / 1e9) / 1e6 }'
}

log "-- $CLIENTS clients × ${SIZE_MIB} MiB, ${CHUNK_MIB} MiB chunks, $ROUNDS rounds (alternating)"
for ((r = 1; r <= ROUNDS; r++)); do
    for target in lb one; do
        if [[ $target == lb ]]; then base="http://127.0.0.1:$LB"; else base="http://127.0.0.1:$LB1"; fi
        mbs=$(round "$base") || { fail "round $r via $target"; continue; }
        record push "$target" "$mbs"
        printf '  round %d  %-4s %10s MB/s\n' "$r" "$target" "$mbs"
    done
done
lb=$(med push lb) one=$(med push one)
rt=$(ratio "$lb" "$one")
printf '\n  median: through the LB to 3 nodes %s MB/s, through the LB to one node %s MB/s: %s× (target ≥ 1.0: %s)\n' \
    "${lb:-n/a}" "${one:-n/a}" "${rt:-n/a}" "$(verdict "$rt" ">=" 1.0)"
if ((${#FAILURES[@]})); then printf 'FAILED: %s\n' "${FAILURES[@]}"; exit 1; fi
