# Helpers of the benchmarks that run a docker-registry upstream with its access log on
# (benches/mirror/run.sh, benches/fleet/run.sh). Sourced after benches/lib.sh.
#
# Globals the sourcing script defines: WORK (the run's temporary directory), KEEP (1: keep
# it), PID, URL and DATA (associative arrays name -> pid / base URL / data directory),
# FAILURES (see lib.sh), IMG_REPO and IMG_DIGESTS (the image), and a has_blobs function
# (its own arguments, which up_settle passes on).
# Globals set here: UP_HOSTPORT, URL[upstream], PID[upstream].

# Stops every server of the run and removes its directory (unless KEEP).
cleanup() {
    local name
    for name in "${!PID[@]}"; do stop_server "$name"; done
    if ((KEEP)); then
        echo "run.sh: kept $WORK" >&2
    else
        rm -rf "$WORK"
    fi
}

secs_since() { awk -v a="$1" -v b="$(now_ns)" 'BEGIN { printf "%.6f\n", (b - a) / 1e9 }'; }

# CPU time (user + system, all threads) a process has used, in clock ticks.
cpu_ticks() { awk '{ print $14 + $15 }' "/proc/$1/stat" 2>/dev/null || echo 0; }

fmt() { # number -> short human form; "-" if empty
    [[ -z "${1:-}" ]] && { echo "-"; return; }
    awk -v x="$1" 'BEGIN { if (x >= 100) printf "%.0f", x; else if (x >= 10) printf "%.1f", x; else if (x >= 1) printf "%.2f", x; else printf "%.3f", x }'
}

# Waits until URL answers 200. Returns 2 (and records no failure) when the server exited
# because its port was taken, so that the caller can try other ports.
wait_ready() { # name url timeout_s
    local name=$1 url=$2 t=$3 i
    for ((i = 0; i < t * 20; i++)); do
        if ! kill -0 "${PID[$name]}" 2>/dev/null; then
            wait "${PID[$name]}" 2>/dev/null
            if tail -n 5 "$WORK/$name/server.log" 2>/dev/null | grep -qi 'address already in use'; then
                unset "PID[$name]"
                return 2
            fi
            fail "$name exited during startup (log: $WORK/$name/server.log)"
            tail -n 20 "$WORK/$name/server.log" >&2 2>/dev/null
            unset "PID[$name]"
            return 1
        fi
        [[ "$(curl -s -o /dev/null -w '%{http_code}' "$url" 2>/dev/null)" == 200 ]] && return 0
        sleep 0.05
    done
    fail "$name not ready after ${t}s ($url)"
    return 1
}

# The upstream: a plain docker-registry with its access log on (combined log format on stdout;
# the size column is the body bytes the handler wrote), so a run can count upstream GETs and bytes.
start_upstream() {
    local d="$WORK/upstream" port
    mkdir -p "$d/data"
    free_port || return 1
    port=$FREE_PORT
    cat >"$d/config.yml" <<EOF
version: 0.1
log:
  level: info
  accesslog:
    disabled: false
storage:
  filesystem:
    rootdirectory: $d/data
  cache:
    blobdescriptor: inmemory
  maintenance:
    uploadpurging:
      enabled: false
http:
  addr: 127.0.0.1:$port
EOF
    docker-registry serve "$d/config.yml" >>"$d/access.log" 2>>"$d/server.log" &
    PID[upstream]=$!
    URL[upstream]="http://127.0.0.1:$port"
    UP_HOSTPORT="127.0.0.1:$port"
    wait_ready upstream "${URL[upstream]}/v2/" 30
}

# Push a blob: POST a session, PUT ?digest= with the body (distribution wants the
# Content-Type, or it answers 400).
push_blob() { # base repo file digest
    local base=$1 repo=$2 file=$3 digest=$4 hdr="$WORK/hdr.push" code loc
    code=$(curl -s -o /dev/null -D "$hdr" -w '%{http_code}' -X POST "$base/v2/$repo/blobs/uploads/")
    [[ "$code" == 202 ]] || { echo "POST /v2/$repo/blobs/uploads/ -> $code" >&2; return 1; }
    loc=$(resolve_location "$base" "$(header_of "$hdr" location)")
    code=$(curl -s -o /dev/null -w '%{http_code}' -H 'Expect:' -H 'Content-Type: application/octet-stream' \
        -T "$file" "$(with_digest "$loc" "$digest")")
    [[ "$code" == 201 ]] || { echo "PUT ?digest=$digest -> $code" >&2; return 1; }
}

up_mark() { wc -l <"$WORK/upstream/access.log"; }

# Waits until the upstream has logged everything (log unchanged for 0.6 s; a request is logged
# when it ends) and, if given, until the script's has_blobs holds (blobs on disk).
up_settle() { # [has_blobs arguments]: until the access log is still and has_blobs holds
    local i last="" cur stable=0
    for ((i = 0; i < 600; i++)); do
        cur=$(stat -c %s "$WORK/upstream/access.log")
        if [[ "$cur" == "$last" ]] && { (($# == 0)) || has_blobs "$@"; }; then
            stable=$((stable + 1))
            ((stable >= 3)) && return 0
        else
            stable=0
        fi
        last=$cur
        sleep 0.2
    done
    log "  note: upstream log still moving (or blobs missing on disk) after 120 s"
}

# Pier and the reference keep blobs in distribution's layout: is this blob on disk?
has_blob() { # system digest
    local hex=${2#sha256:}
    [[ -f "${DATA[$1]}/docker/registry/v2/blobs/sha256/${hex:0:2}/$hex/data" ]]
}

# Content check: every blob of the image, fetched from the system, has its digest.
verify_image() { # system
    local d got
    for d in "${IMG_DIGESTS[@]}"; do
        got="sha256:$(curl -s "${URL[$1]}/v2/$IMG_REPO/blobs/$d" | openssl dgst -sha256 -r | awk '{print $1}')"
        [[ "$got" == "$d" ]] || { fail "$1: GET /v2/$IMG_REPO/blobs/$d returned other content ($got)"; return 1; }
    done
}
