#!/usr/bin/env bash
# Replication and event fan-out benchmark (events issue), side by side in one run:
#   1. replication: an image of N random layers (default 5 x 100 MiB) on site A, copied to a
#      second Pier by Pier's own replication (an event-driven `replicate` rule; measured from
#      the moment the push is answered to the job report's finished_ms) vs
#      `skopeo copy docker://A/... docker://C/...` to a third, fresh Pier; the order alternates
#      per round and every round has new layers (nothing to skip or mount).
#      Target: Pier's replication >= 1.0x skopeo's MB/s.
#   2. fan-out: M manifest pushes (curl, one at a time) to a Pier with a `webhook` notifier,
#      interleaved with the same pushes to a Pier without events; a receiver counts the
#      deliveries (distinct Idempotency-Key, HMAC checked). Targets: all M delivered, none
#      twice with another key; push latency median of the last 100 <= 1.5x the first 100.
#      The latency with events vs without is printed beside them.
#
#   benches/replication/run.sh [--rounds N] [--layers N] [--layer-mib N] [--pushes M]
#                              [--only replication|fanout]
#
# Starts its own Pier processes (release build) on free loopback ports with temp dirs, and
# stops them. Needs skopeo, curl, openssl, python3, the wasm32-wasip2 target.
set -uo pipefail
SCRIPT_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
REPO_DIR="$(cd "$SCRIPT_DIR/../.." && pwd)"
# shellcheck source=../lib.sh
source "$SCRIPT_DIR/../lib.sh"
FAILURES=()
declare -A PID=()
ROUNDS=2
LAYERS=5
LAYER_MIB=100
PUSHES=1000
ONLY=""
while (($#)); do
    case "$1" in
        --rounds) ROUNDS="$2"; shift ;;
        --layers) LAYERS="$2"; shift ;;
        --layer-mib) LAYER_MIB="$2"; shift ;;
        --pushes) PUSHES="$2"; shift ;;
        --only) ONLY="$2"; shift ;;
        *) sed -n '2,19p' "$0"; exit 2 ;;
    esac
    shift
done
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/pier/target}"
(cd "$REPO_DIR" && cargo build -q --release -p pier-server --bin pier) || exit 1
WASM_TARGET="$CARGO_TARGET_DIR/wasm-plugins"
(cd "$REPO_DIR/plugins" && env -u RUSTFLAGS cargo build -q --release --locked --target wasm32-wasip2 \
    --target-dir "$WASM_TARGET") || exit 1
WASM="$WASM_TARGET/wasm32-wasip2/release"
PIER="$CARGO_TARGET_DIR/release/pier"
WORK="$(mktemp -d "${TMPDIR:-/tmp}/pier-bench-repl.XXXXXX")"
cleanup() { local n; for n in "${!PID[@]}"; do stop_server "$n"; done; rm -rf "$WORK"; }
trap cleanup EXIT
SECRET="bench-secret"

now_ms() { date +%s%3N; }

wait_ready() { # port admin_port
    local i
    for ((i = 0; i < 200; i++)); do
        [[ "$(curl -s -o /dev/null -w '%{http_code}' "http://127.0.0.1:$1/v2/")" == 200 &&
            "$(curl -s -o /dev/null -w '%{http_code}' "http://127.0.0.1:$2/readyz")" == 200 ]] && return 0
        sleep 0.1
    done
    return 1
}

# start_pier NAME [CONFIG]: sets PORT[NAME] and ADMIN[NAME].
declare -A PORT=() ADMIN=()
start_pier() {
    local name=$1 cfg=${2:-} args
    free_port; PORT[$name]=$FREE_PORT
    free_port; ADMIN[$name]=$FREE_PORT
    args=(serve --root "$WORK/$name" --listen "127.0.0.1:${PORT[$name]}" --admin-listen "127.0.0.1:${ADMIN[$name]}")
    [[ -n "$cfg" ]] && args+=(--config "$cfg")
    PIER_LOG=warn "$PIER" "${args[@]}" >"$WORK/$name.log" 2>&1 &
    PID[$name]=$!
    wait_ready "${PORT[$name]}" "${ADMIN[$name]}" || { fail "pier $name did not start: $(tail -5 "$WORK/$name.log")"; exit 1; }
}

# A blob POSTed in one request; fails unless 201.
push_blob() { # port repo file digest
    local code
    code=$(curl -s -o /dev/null -w '%{http_code}' -X POST -H 'Expect:' -H 'Content-Type: application/octet-stream' \
        --data-binary @"$3" "http://127.0.0.1:$1/v2/$2/blobs/uploads/?digest=$4")
    [[ "$code" == 201 ]] || { fail "blob push $4 to :$1/$2 answered $code"; return 1; }
}
mount_blob() { # port repo from digest
    local code
    code=$(curl -s -o /dev/null -w '%{http_code}' -X POST "http://127.0.0.1:$1/v2/$2/blobs/uploads/?mount=$4&from=$3")
    [[ "$code" == 201 ]] || { fail "mount $4 into :$1/$2 answered $code"; return 1; }
}
put_manifest() { # port repo tag file -> prints "code time_total"
    curl -s -o /dev/null -w '%{http_code} %{time_total}\n' -X PUT \
        -H 'Content-Type: application/vnd.oci.image.manifest.v1+json' --data-binary @"$4" \
        "http://127.0.0.1:$1/v2/$2/manifests/$3"
}
manifest_digest() { # port repo ref -> sha256:... of the bytes served
    curl -s -H 'Accept: application/vnd.oci.image.manifest.v1+json' "http://127.0.0.1:$1/v2/$2/manifests/$3" |
        openssl dgst -sha256 -r | awk '{print "sha256:" $1}'
}

# The job of site A copying REPO:REF: "state started_ms finished_ms bytes attempts".
job_of() { # admin_port repo ref
    curl -s "http://127.0.0.1:$1/replication/jobs?limit=1000" | python3 -c '
import json, sys
repo, ref = sys.argv[1], sys.argv[2]
for j in json.load(sys.stdin)["jobs"]:
    if j["src_repo"] == repo and j["reference"] == ref:
        r = j.get("report") or {}
        print(j["state"], r.get("started_ms", 0), r.get("finished_ms", 0), r.get("bytes", 0), j["attempts"])
        break' "$2" "$3"
}

# skopeo with a blob-info cache of its own (as root c/image keeps it in
# /var/lib/containers/cache whatever HOME says: hidden behind a bind mount).
skopeo_copy() { # src dst
    mkdir -p "$WORK/skopeo/cache" "$WORK/skopeo/tmp"
    echo '{"default":[{"type":"insecureAcceptAnything"}]}' >"$WORK/skopeo/policy.json"
    local cmd=(skopeo --policy "$WORK/skopeo/policy.json" copy -q --src-tls-verify=false --dest-tls-verify=false "$1" "$2")
    if [[ $(id -u) == 0 ]]; then
        mkdir -p /var/lib/containers/cache
        TMPDIR="$WORK/skopeo/tmp" unshare --mount --propagation private sh -c \
            'mount --bind "$0" /var/lib/containers/cache && shift && exec "$@"' "$WORK/skopeo/cache" _ "${cmd[@]}"
    else
        HOME="$WORK/skopeo" TMPDIR="$WORK/skopeo/tmp" "${cmd[@]}"
    fi
}

# ======================================================================== 1. replication
replication_bench() {
    start_pier site-b
    start_pier site-c
    cat >"$WORK/site-a.toml" <<TOML
[events]
secret = "$SECRET"

[replication]
backoff = "200ms"
backoff_max = "1s"

[replication.targets.site-b]
url = "http://127.0.0.1:${PORT[site-b]}"

[[plugins]]
name = "replicate"
hook = "replicator"
path = "$WASM/pier_replicate.wasm"
grants = ["log", "config", "kv"]

[[plugins.config.rules]]
name = "bench-to-b"
source = { project = "bench" }
target = "site-b"
trigger = "event"
TOML
    start_pier site-a "$WORK/site-a.toml"
    local A=${PORT[site-a]} AA=${ADMIN[site-a]} B=${PORT[site-b]} C=${PORT[site-c]}
    local r i total digests sizes f d s mf md layers_json diff_ids cfg cd t0 t1 out state started finished bytes attempts
    log "replication: $ROUNDS rounds of $LAYERS x $LAYER_MIB MiB random layers; A :$A -> B :$B (Pier) and -> C :$C (skopeo)"
    for ((r = 1; r <= ROUNDS; r++)); do
        # New layers, pushed to src/rR on A (no rule matches `src`).
        digests=() sizes=() total=0
        for ((i = 1; i <= LAYERS; i++)); do
            f="$WORK/layer"
            gen_random_file "$f.raw" $((LAYER_MIB << 20)) || { fail "gen layer"; return 1; }
            gzip -1 -c "$f.raw" >"$f" && rm -f "$f.raw"
            d="sha256:$(sha256_of "$f")"; s=$(stat -c %s "$f")
            push_blob "$A" "src/r$r" "$f" "$d" || return 1
            digests+=("$d"); sizes+=("$s"); total=$((total + s))
        done
        rm -f "$WORK/layer"
        # Layers are gzip streams (of random bytes, so about LAYER_MIB each): skopeo passes
        # compressed layers through as they are (anything else it gzips on the way).
        layers_json="" diff_ids=""
        for ((i = 0; i < LAYERS; i++)); do
            layers_json+="${layers_json:+,}{\"mediaType\":\"application/vnd.oci.image.layer.v1.tar+gzip\",\"digest\":\"${digests[i]}\",\"size\":${sizes[i]}}"
            diff_ids+="${diff_ids:+,}\"${digests[i]}\""
        done
        cfg="$WORK/config.json"
        printf '{"architecture":"amd64","os":"linux","rootfs":{"type":"layers","diff_ids":[%s]},"round":%d}' "$diff_ids" "$r" >"$cfg"
        cd="sha256:$(sha256_of "$cfg")"
        push_blob "$A" "src/r$r" "$cfg" "$cd" || return 1
        mf="$WORK/manifest.json"
        printf '{"schemaVersion":2,"mediaType":"application/vnd.oci.image.manifest.v1+json","config":{"mediaType":"application/vnd.oci.image.config.v1+json","digest":"%s","size":%d},"layers":[%s]}' \
            "$cd" "$(stat -c %s "$cfg")" "$layers_json" >"$mf"
        md="sha256:$(sha256_of "$mf")"
        out=$(put_manifest "$A" "src/r$r" v1 "$mf"); [[ ${out%% *} == 201 ]] || { fail "manifest push: $out"; return 1; }
        total=$((total + $(stat -c %s "$cfg") + $(stat -c %s "$mf")))
        for order in $( ((r % 2)) && echo "pier skopeo" || echo "skopeo pier"); do
            if [[ $order == pier ]]; then
                # The same manifest tagged in project `bench` (blobs mounted on A): the rule
                # turns the push into a job.
                for d in "${digests[@]}" "$cd"; do mount_blob "$A" "bench/r$r" "src/r$r" "$d" || return 1; done
                out=$(put_manifest "$A" "bench/r$r" v1 "$mf"); t0=$(now_ms)
                [[ ${out%% *} == 201 ]] || { fail "manifest push to bench/r$r: $out"; return 1; }
                state=""
                for ((i = 0; i < 6000; i++)); do
                    read -r state started finished bytes attempts <<<"$(job_of "$AA" "bench/r$r" v1)"
                    [[ "$state" == succeeded || "$state" == failed ]] && break
                    sleep 0.05
                done
                [[ "$state" == succeeded ]] || { fail "replication job bench/r$r: ${state:-none}"; return 1; }
                [[ "$(manifest_digest "$B" "bench/r$r" v1)" == "$md" ]] || fail "site B has another manifest for bench/r$r"
                record pier_e2e replication "$(awk -v b="$total" -v ms=$((finished - t0)) 'BEGIN { printf "%.1f", b / 1e6 / (ms / 1000) }')"
                record pier_copy replication "$(awk -v b="$total" -v ms=$((finished - started)) 'BEGIN { printf "%.1f", b / 1e6 / (ms / 1000) }')"
                log "  round $r pier:   push answered -> job finished $((finished - t0)) ms (copy $((finished - started)) ms, $bytes bytes sent, attempts $attempts)"
            else
                t0=$(now_ms)
                skopeo_copy "docker://127.0.0.1:$A/src/r$r:v1" "docker://127.0.0.1:$C/copy/r$r:v1" || { fail "skopeo copy round $r"; return 1; }
                t1=$(now_ms)
                [[ "$(manifest_digest "$C" "copy/r$r" v1)" == "$md" ]] || fail "site C has another manifest for copy/r$r"
                record skopeo replication "$(awk -v b="$total" -v ms=$((t1 - t0)) 'BEGIN { printf "%.1f", b / 1e6 / (ms / 1000) }')"
                log "  round $r skopeo: $((t1 - t0)) ms"
            fi
        done
    done
    REPL_MB=$((total / 1000000))
    stop_server site-a; stop_server site-b; stop_server site-c
    rm -rf "$WORK/site-a" "$WORK/site-b" "$WORK/site-c"
}

# ======================================================================== 2. fan-out
receiver() { # port -> runs until killed; GET /count answers "requests distinct_keys bad_signatures"
    exec python3 - "$1" "$SECRET" <<'PY'
import hashlib, hmac, sys, threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
port, secret = int(sys.argv[1]), sys.argv[2].encode()
lock = threading.Lock()
state = {"requests": 0, "keys": set(), "bad": 0}
class H(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    def log_message(self, *a): pass
    def reply(self, body=b""):
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)
    def do_POST(self):
        body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
        h = self.headers  # docs/webhooks.md: HMAC over "<timestamp>.<event id>.<delivery id>.<body>"
        signed = ("%s.%s.%s." % (h.get("X-Pier-Timestamp"), h.get("X-Pier-Event-Id"), h.get("X-Pier-Delivery"))).encode() + body
        want = "sha256=" + hmac.new(secret, signed, hashlib.sha256).hexdigest()
        with lock:
            state["requests"] += 1
            state["keys"].add(self.headers.get("Idempotency-Key"))
            if self.headers.get("X-Pier-Signature") != want:
                state["bad"] += 1
        self.reply()
    def do_GET(self):
        with lock:
            s = "%d %d %d\n" % (state["requests"], len(state["keys"]), state["bad"])
        self.reply(s.encode())
ThreadingHTTPServer(("127.0.0.1", port), H).serve_forever()
PY
}

fanout_bench() {
    free_port; local PR=$FREE_PORT
    receiver "$PR" >"$WORK/receiver.log" 2>&1 &
    PID[receiver]=$!
    cat >"$WORK/events.toml" <<TOML
[[events.endpoints]]
url = "http://127.0.0.1:$PR/hook"
secret = "$SECRET"

[[plugins]]
name = "webhook"
hook = "notifier"
path = "$WASM/pier_webhook.wasm"
grants = ["log", "config", "http"]
allowed_hosts = ["127.0.0.1:$PR"]

[plugins.config]
endpoints = [ { url = "http://127.0.0.1:$PR/hook", events = ["manifest-pushed"] } ]
TOML
    start_pier events "$WORK/events.toml"
    start_pier plain
    local E=${PORT[events]} N=${PORT[plain]} i out code t cfg cd layer ld m first
    cfg="$WORK/fan-config.json"; layer="$WORK/fan-layer"
    printf '{"architecture":"amd64","os":"linux","rootfs":{"type":"layers","diff_ids":[]}}' >"$cfg"
    openssl rand 1024 >"$layer"
    cd="sha256:$(sha256_of "$cfg")"; ld="sha256:$(sha256_of "$layer")"
    for p in "$E" "$N"; do push_blob "$p" fan/app "$cfg" "$cd" && push_blob "$p" fan/app "$layer" "$ld" || return 1; done
    log "fan-out: $PUSHES manifest pushes to a Pier with a webhook notifier (:$E) and, interleaved, to one without events (:$N)"
    m="$WORK/fan-manifest.json"
    declare -a LAT_E=() LAT_N=()
    for ((i = 1; i <= PUSHES; i++)); do
        printf '{"schemaVersion":2,"mediaType":"application/vnd.oci.image.manifest.v1+json","config":{"mediaType":"application/vnd.oci.image.config.v1+json","digest":"%s","size":%d},"layers":[{"mediaType":"application/vnd.oci.image.layer.v1.tar","digest":"%s","size":1024}],"annotations":{"n":"%d"}}' \
            "$cd" "$(stat -c %s "$cfg")" "$ld" "$i" >"$m"
        for first in $( ((i % 2)) && echo "E N" || echo "N E"); do
            if [[ $first == E ]]; then
                read -r code t <<<"$(put_manifest "$E" fan/app "t$i" "$m")"
                [[ $code == 201 ]] || { fail "push $i to the events Pier: $code"; return 1; }
                LAT_E+=("$(awk -v t="$t" 'BEGIN { printf "%.3f", t * 1000 }')")
            else
                read -r code t <<<"$(put_manifest "$N" fan/app "t$i" "$m")"
                [[ $code == 201 ]] || { fail "push $i to the plain Pier: $code"; return 1; }
                LAT_N+=("$(awk -v t="$t" 'BEGIN { printf "%.3f", t * 1000 }')")
            fi
        done
    done
    local t_last req keys bad waited
    t_last=$(now_ms)
    for ((waited = 0; waited < 1200; waited++)); do
        read -r req keys bad <<<"$(curl -s "http://127.0.0.1:$PR/count")"
        ((keys >= PUSHES)) && break
        sleep 0.1
    done
    FAN_DRAIN_MS=$(($(now_ms) - t_last))
    FAN_REQ=$req FAN_KEYS=$keys FAN_BAD=$bad
    FAN_FAILED=$(curl -s "http://127.0.0.1:${ADMIN[events]}/events/deliveries?status=failed&limit=1000" | python3 -c 'import json,sys; print(len(json.load(sys.stdin)["deliveries"]))')
    FAN_E_FIRST=$(median "${LAT_E[@]:0:100}"); FAN_E_LAST=$(median "${LAT_E[@]: -100}")
    FAN_N_FIRST=$(median "${LAT_N[@]:0:100}"); FAN_N_LAST=$(median "${LAT_N[@]: -100}")
    FAN_E_ALL=$(median "${LAT_E[@]}"); FAN_N_ALL=$(median "${LAT_N[@]}")
    stop_server events; stop_server plain; stop_server receiver
}

REPL_MB=""
if [[ -z "$ONLY" || "$ONLY" == replication ]]; then replication_bench; fi
if [[ -z "$ONLY" || "$ONLY" == fanout ]]; then fanout_bench; fi

echo
if [[ -n "$REPL_MB" ]]; then
    pe=$(med pier_e2e replication); pc=$(med pier_copy replication); sk=$(med skopeo replication)
    echo "== replication of a ${REPL_MB} MB image ($LAYERS layers), medians of $ROUNDS rounds (MB/s, loopback, $(nproc) cores)"
    printf '%-58s %8s  (%sx skopeo; target >= 1.0: %s)\n' "Pier replication, push answered -> job finished" "$pe" "$(ratio "$pe" "$sk")" "$(verdict "$(ratio "$pe" "$sk")" ">=" 1.0)"
    printf '%-58s %8s  (%sx skopeo)\n' "Pier replication, the copy itself (report started->finished)" "$pc" "$(ratio "$pc" "$sk")"
    printf '%-58s %8s\n' "skopeo copy docker://A docker://C (fresh Pier)" "$sk"
fi
if [[ -n "${FAN_KEYS:-}" ]]; then
    echo "== event fan-out: $PUSHES manifest pushes, webhook receiver (python3)"
    printf '%-58s %8s  (%s requests, %s bad signatures, %s failed; target all: %s)\n' "deliveries with distinct Idempotency-Keys" "$FAN_KEYS" \
        "$FAN_REQ" "$FAN_BAD" "$FAN_FAILED" "$(verdict "$( ((FAN_KEYS == PUSHES && FAN_BAD == 0 && FAN_FAILED == 0)) && echo 1 || echo 0)" "=" 1)"
    printf '%-58s %8s ms\n' "drained: last push answered -> last delivery received" "$FAN_DRAIN_MS"
    printf '%-58s %8s ms -> %s ms  (%sx; target <= 1.5: %s)\n' "push latency median, with events, first 100 -> last 100" "$FAN_E_FIRST" "$FAN_E_LAST" \
        "$(ratio "$FAN_E_LAST" "$FAN_E_FIRST")" "$(verdict "$(ratio "$FAN_E_LAST" "$FAN_E_FIRST")" "<=" 1.5)"
    printf '%-58s %8s ms -> %s ms  (%sx)\n' "push latency median, no events, first 100 -> last 100" "$FAN_N_FIRST" "$FAN_N_LAST" "$(ratio "$FAN_N_LAST" "$FAN_N_FIRST")"
    printf '%-58s %8s ms vs %s ms  (%sx)\n' "push latency median, all pushes: with events vs without" "$FAN_E_ALL" "$FAN_N_ALL" "$(ratio "$FAN_E_ALL" "$FAN_N_ALL")"
    ((FAN_KEYS == PUSHES)) || fail "$FAN_KEYS of $PUSHES pushes delivered"
fi
((${#FAILURES[@]} == 0)) || exit 1
