#!/usr/bin/env bash
# S3 backend benchmark (scale-out issue), side by side in one run:
#   1. "warm": GET of a 100 MiB blob from Pier on the filesystem backend vs Pier on the S3
#      backend (s3s-fs on loopback) once that blob is in Pier's local read cache
#      (target: ≥ 0.8× the filesystem backend);
#   2. "cold": the first GET from Pier-on-S3 of a blob not in its cache (a new blob each
#      round: streamed from S3 while it is copied into the cache) vs the S3 server's own
#      GET of the same object (curl --aws-sigv4) (target: ≥ 0.8× the S3 server's rate).
#
#   benches/s3/run.sh [--rounds N] [--size-mib N]
#
# Starts s3s-fs and two Pier processes on free loopback ports with temp dirs; stops them.
set -uo pipefail
SCRIPT_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
REPO_DIR="$(cd "$SCRIPT_DIR/../.." && pwd)"
# shellcheck source=../lib.sh
source "$SCRIPT_DIR/../lib.sh"
FAILURES=()
ROUNDS=5
SIZE_MIB=100
while (($#)); do
    case "$1" in
        --rounds) ROUNDS="$2"; shift ;;
        --size-mib) SIZE_MIB="$2"; shift ;;
        *) sed -n '2,13p' "$0"; exit 2 ;;
    esac
    shift
done
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/pier/target}"
(cd "$REPO_DIR" && cargo build -q --release -p pier-server --bin pier) || exit 1
PIER="$CARGO_TARGET_DIR/release/pier"
S3S="${S3S_FS_BIN:-$HOME/.cache/pier/s3s-fs/bin/s3s-fs}"
TMP="$(mktemp -d "${TMPDIR:-/tmp}/pier-bench-s3.XXXXXX")"
PIDS=()
cleanup() { for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null; done; wait 2>/dev/null; rm -rf "$TMP"; }
trap cleanup EXIT

free_port; S3P=$FREE_PORT; free_port; PF=$FREE_PORT; free_port; PFA=$FREE_PORT; free_port; PS=$FREE_PORT; free_port; PSA=$FREE_PORT
mkdir -p "$TMP/s3/pier"
"$S3S" --host 127.0.0.1 --port "$S3P" --access-key bench --secret-key bench-secret "$TMP/s3" >"$TMP/s3.log" 2>&1 &
PIDS+=($!)
cat >"$TMP/s3.toml" <<TOML
[storage]
backend = "s3"
[storage.s3]
endpoint = "http://127.0.0.1:$S3P"
region = "us-east-1"
bucket = "pier"
access_key = "bench"
secret_key = "bench-secret"
force_path_style = true
TOML
sleep 0.5
PIER_LOG=warn "$PIER" serve --root "$TMP/fs" --listen "127.0.0.1:$PF" --admin-listen "127.0.0.1:$PFA" 2>"$TMP/fs.log" &
PIDS+=($!)
PIER_LOG=warn "$PIER" serve --config "$TMP/s3.toml" --root "$TMP/s3root" --listen "127.0.0.1:$PS" --admin-listen "127.0.0.1:$PSA" 2>"$TMP/s3pier.log" &
PIDS+=($!)
for p in $PF $PS; do for _ in $(seq 50); do curl -s -o /dev/null "http://127.0.0.1:$p/v2/" && break; sleep 0.1; done; done

BLOB="$TMP/blob"
gen_random_file "$BLOB" $((SIZE_MIB * 1024 * 1024))
D="sha256:$(sha256_of "$BLOB")"
for p in $PF $PS; do
    code=$(curl -s -o /dev/null -w '%{http_code}' -X POST -H 'Content-Type: application/octet-stream' \
        --data-binary @"$BLOB" "http://127.0.0.1:$p/v2/bench/blob/blobs/uploads/?digest=$D")
    [[ $code == 201 ]] || { fail "push to :$p answered $code"; exit 1; }
done
HEX=${D#sha256:}
# Fill Pier-on-S3's read cache (under its root, the default) with the warm blob; the copy
# is published just after the GET ends.
curl -s -o /dev/null "http://127.0.0.1:$PS/v2/bench/blob/blobs/$D"
CACHED="$TMP/s3root/s3-cache/sha256/${HEX:0:2}/$HEX"
for _ in $(seq 100); do [[ -f $CACHED ]] && break; sleep 0.1; done
[[ -f $CACHED ]] || { fail "the warm blob did not reach Pier's read cache ($CACHED)"; exit 1; }
# One cold blob per round, pushed to Pier-on-S3 only (a push does not fill the cache).
declare -a COLD
for r in $(seq "$ROUNDS"); do
    gen_random_file "$BLOB.cold" $((SIZE_MIB * 1024 * 1024))
    COLD+=("sha256:$(sha256_of "$BLOB.cold")")
    code=$(curl -s -o /dev/null -w '%{http_code}' -X POST -H 'Content-Type: application/octet-stream' \
        --data-binary @"$BLOB.cold" "http://127.0.0.1:$PS/v2/bench/blob/blobs/uploads/?digest=${COLD[-1]}")
    [[ $code == 201 ]] || { fail "cold push answered $code"; exit 1; }
done
rm -f "$BLOB.cold"

mbps() { # url [curl args] -> MB/s of one GET (checks the size)
    local url=$1; shift
    curl -s -o /dev/null -w '%{size_download} %{speed_download}\n' "$@" "$url" | awk -v want=$((SIZE_MIB * 1024 * 1024)) \
        '{ if ($1 != want) { print "" } else { printf "%.1f\n", $2 / 1e6 } }'
}
declare -a FS S3 COLDS RAW
for r in $(seq "$ROUNDS"); do
    C=${COLD[r - 1]}; CH=${C#sha256:}
    KEY="docker/registry/v2/blobs/sha256/${CH:0:2}/$CH/data"
    v=$(mbps "http://127.0.0.1:$PF/v2/bench/blob/blobs/$D"); [[ -n $v ]] && FS+=("$v") || fail "fs GET"
    v=$(mbps "http://127.0.0.1:$PS/v2/bench/blob/blobs/$D"); [[ -n $v ]] && S3+=("$v") || fail "s3 warm GET"
    v=$(mbps "http://127.0.0.1:$PS/v2/bench/blob/blobs/$C"); [[ -n $v ]] && COLDS+=("$v") || fail "s3 cold GET"
    v=$(mbps "http://127.0.0.1:$S3P/pier/$KEY" --aws-sigv4 "aws:amz:us-east-1:s3" --user bench:bench-secret -H "x-amz-content-sha256: e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"); [[ -n $v ]] && RAW+=("$v") || fail "raw S3 GET"
done
mf=$(median "${FS[@]}"); ms=$(median "${S3[@]}"); mc=$(median "${COLDS[@]}"); mr=$(median "${RAW[@]}")
echo
echo "== ${SIZE_MIB} MiB blob GET, medians of $ROUNDS rounds (MB/s, one client, loopback, $(nproc) cores)"
printf '%-44s %8s\n' "Pier, filesystem backend" "$mf"
printf '%-44s %8s  (%sx fs; target >= 0.8: %s)\n' "Pier, S3 backend, warm (local read cache)" "$ms" "$(ratio "$ms" "$mf")" "$(verdict "$(ratio "$ms" "$mf")" ">=" 0.8)"
printf '%-44s %8s  (%sx the S3 server; target >= 0.8: %s)\n' "Pier, S3 backend, cold (first GET, copied in)" "$mc" "$(ratio "$mc" "$mr")" "$(verdict "$(ratio "$mc" "$mr")" ">=" 0.8)"
printf '%-44s %8s\n' "the S3 server's own GET (s3s-fs)" "$mr"
((${#FAILURES[@]} == 0)) || exit 1
