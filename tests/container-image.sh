#!/usr/bin/env bash
# The container image is built and run, not only written: deploy/container/Dockerfile's
# runtime-prebuilt target, with this tree's `pier` and plugins, under a dockerd of our own.
#
#   tests/container-image.sh          (run by scripts/test.sh with the full suite; root)
#
#   PIER_BIN            the binary to put in the image (default: $CARGO_TARGET_DIR/debug/pier)
#   PIER_PLUGINS_DIR    where pier_rbac.wasm and pier_template.wasm are
#                       (default: $CARGO_TARGET_DIR/wasm-plugins/wasm32-wasip2/release)
#   PIER_IMAGE_DOCKERFILE  another Dockerfile to test (default: deploy/container/Dockerfile)
#   PIER_DEBIAN_MIRROR  for debootstrap (default: http://deb.debian.org/debian)
#
# Docker Hub cannot be reached from the test machines, so the image's base,
# debian:bookworm-slim, is made locally: `debootstrap --variant=minbase
# --include=ca-certificates bookworm` (with ca-certificates the Dockerfile needs no apt),
# kept as a tarball under $PIER_CACHE/container-base/ named by a key of that recipe (built
# once, about 20-90 s; later runs import the tarball) and `docker import`ed.
#
# Checks: the image builds; it runs as 10001:10001 with its default ENTRYPOINT and CMD
# and a named volume; the registry port published on 127.0.0.1 answers /readyz; an OCI
# image pushed with skopeo comes back byte-exact (manifest and blobs, by skopeo and by
# plain GETs); the blobs are in the volume, owned by 10001; a new container on the same
# volume serves them; the admin API answers inside the container (`pier repos list`
# lists the pushed repository) but not from outside (no published admin port, the
# container's address refuses 5001 while its 5000 answers); both plugins are in
# /etc/pier/plugins and pass `pier plugin check`. Containers, images, the network and
# the volume are removed and the dockerd stopped on exit, whatever happened.
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."
REPO_ROOT=$PWD
export HOME="${HOME:-/root}"
PIER_CACHE="${PIER_CACHE:-$HOME/.cache/pier}"
CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$PIER_CACHE/target}"
PIER_BIN="${PIER_BIN:-$CARGO_TARGET_DIR/debug/pier}"
PIER_PLUGINS_DIR="${PIER_PLUGINS_DIR:-$CARGO_TARGET_DIR/wasm-plugins/wasm32-wasip2/release}"
DOCKERFILE="${PIER_IMAGE_DOCKERFILE:-$REPO_ROOT/deploy/container/Dockerfile}"
MIRROR="${PIER_DEBIAN_MIRROR:-http://deb.debian.org/debian}"
SUITE=bookworm
PLUGINS=(pier_rbac.wasm pier_template.wasm)

START=$(date +%s)
log() { printf 'container-image: %s\n' "$*" >&2; }
fail() {
    printf 'container-image: FAIL: %s\n' "$*" >&2
    exit 1
}

for tool in dockerd debootstrap skopeo curl sha256sum gzip tar; do
    command -v "$tool" >/dev/null || fail "$tool not found (scripts/install-test-deps.sh installs it)"
done
[[ $(id -u) -eq 0 ]] || fail "needs root (debootstrap, dockerd)"
[[ -x $PIER_BIN ]] || fail "no pier binary at $PIER_BIN (set PIER_BIN)"
for p in "${PLUGINS[@]}"; do
    [[ -f $PIER_PLUGINS_DIR/$p ]] || fail "no $p in $PIER_PLUGINS_DIR (set PIER_PLUGINS_DIR)"
done
# The Debian client matches the daemon (20.10) and uses the classic builder.
DOCKER_CLI=/usr/bin/docker
[[ -x $DOCKER_CLI ]] || DOCKER_CLI=$(command -v docker) || fail "no docker client"

WORK="$(mktemp -d "${TMPDIR:-/tmp}/pier-image.XXXXXX")"
DOCKERD_PID=""
ID="$$-$RANDOM"
IMAGE="pier-image-test:$ID"
NET="pier-image-net-$ID"
VOL="pier-image-data-$ID"
CONTAINERS=()

docker() { DOCKER_HOST="unix://$WORK/docker.sock" DOCKER_CONFIG="$WORK/config" "$DOCKER_CLI" "$@"; }

dump() {
    local c
    for c in "${CONTAINERS[@]}"; do
        log "--- docker logs $c (last 30 lines)"
        docker logs --tail 30 "$c" 2>&1 | sed 's/^/    /' >&2 || true
    done
    if [[ -f $WORK/dockerd.log ]]; then
        log "--- dockerd.log (last 15 lines)"
        tail -n 15 "$WORK/dockerd.log" | sed 's/^/    /' >&2
    fi
}

cleanup() {
    local rc=$? c i
    # A second signal must not cut the cleanup short (a timeout's KILL still does).
    trap - EXIT
    trap '' INT TERM
    ((rc != 0)) && dump
    if [[ -n $DOCKERD_PID ]]; then
        for c in "${CONTAINERS[@]}"; do docker rm -f "$c" >/dev/null 2>&1 || true; done
        docker network rm "$NET" >/dev/null 2>&1 || true
        docker volume rm "$VOL" >/dev/null 2>&1 || true
        docker rmi "$IMAGE" "debian:$SUITE-slim" >/dev/null 2>&1 || true
        kill -TERM "$DOCKERD_PID" 2>/dev/null || true
        for i in $(seq 1 100); do
            kill -0 "$DOCKERD_PID" 2>/dev/null || break
            sleep 0.2
        done
        kill -KILL "$DOCKERD_PID" 2>/dev/null || true
        # Its containerd, if dockerd left it behind.
        if [[ -f $WORK/exec/containerd/containerd.pid ]]; then
            kill -KILL "$(cat "$WORK/exec/containerd/containerd.pid")" 2>/dev/null || true
        fi
    fi
    awk -v d="$WORK" 'index($2, d) == 1 { print $2 }' /proc/mounts 2>/dev/null | sort -r |
        while read -r m; do umount -l "$m" 2>/dev/null || true; done
    rm -rf "$WORK" 2>/dev/null || true
    if ((rc == 0)); then
        log "passed in $(($(date +%s) - START)) s"
    else
        log "failed (exit $rc) after $(($(date +%s) - START)) s"
    fi
    exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

# --- the base image's rootfs, built once -------------------------------------------------
BASE_DIR="$PIER_CACHE/container-base"
# Cleanup steps after debootstrap: bump the tag when they change, so the key changes.
CLEANUP_RECIPE="apt caches, lists, docs, man, locales (1)"
RECIPE="$(debootstrap --version) --variant=minbase --include=ca-certificates $SUITE $MIRROR; $CLEANUP_RECIPE"
KEY=$(printf '%s' "$RECIPE" | sha256sum | cut -c1-16)
BASE_TAR="$BASE_DIR/$SUITE-minbase-$KEY.tar"
mkdir -p "$BASE_DIR"
(
    flock 9
    if [[ ! -s $BASE_TAR ]]; then
        log "building the $SUITE base with debootstrap (once; key $KEY)"
        t0=$(date +%s)
        rootfs="$WORK/rootfs"
        if ! debootstrap --variant=minbase --include=ca-certificates "$SUITE" "$rootfs" "$MIRROR" \
            >"$WORK/debootstrap.log" 2>&1; then
            tail -n 20 "$WORK/debootstrap.log" >&2
            exit 1
        fi
        rm -rf "$rootfs"/var/cache/apt/archives/*.deb "$rootfs"/var/cache/apt/*.bin \
            "$rootfs"/var/lib/apt/lists/* "$rootfs"/usr/share/doc/* "$rootfs"/usr/share/man/* \
            "$rootfs"/usr/share/locale/* "$rootfs"/var/log/* "$rootfs"/tmp/*
        tar --numeric-owner -C "$rootfs" -cf "$BASE_TAR.tmp" .
        mv "$BASE_TAR.tmp" "$BASE_TAR"
        rm -rf "$rootfs"
        # Bases of older recipes.
        find "$BASE_DIR" -maxdepth 1 -name "$SUITE-minbase-*.tar" ! -name "$(basename "$BASE_TAR")" -delete
        log "base built in $(($(date +%s) - t0)) s: $(du -h "$BASE_TAR" | cut -f1)"
    fi
) 9>"$BASE_DIR/.lock" || fail "debootstrap of the base failed"

# --- a dockerd of our own ---------------------------------------------------------------
# overlay2 (a 70 MB binary layer would be copied at every step with vfs); vfs where the
# temp dir's filesystem cannot take overlay mounts.
start_dockerd() {
    local driver=$1 i
    mkdir -p "$WORK/data" "$WORK/exec" "$WORK/config"
    # TMPDIR: its containerd's stack dumps (written when it is signalled) stay in WORK.
    TMPDIR="$WORK" dockerd --iptables=false --ip6tables=false --bridge=none --storage-driver="$driver" \
        --data-root "$WORK/data" --exec-root "$WORK/exec" --pidfile "$WORK/docker.pid" \
        -H "unix://$WORK/docker.sock" >"$WORK/dockerd.log" 2>&1 &
    DOCKERD_PID=$!
    for i in $(seq 1 300); do
        if docker version >/dev/null 2>&1; then return 0; fi
        kill -0 "$DOCKERD_PID" 2>/dev/null || break
        sleep 0.2
    done
    kill -TERM "$DOCKERD_PID" 2>/dev/null || true
    wait "$DOCKERD_PID" 2>/dev/null || true
    DOCKERD_PID=""
    return 1
}
if ! start_dockerd overlay2; then
    log "dockerd did not start with overlay2, trying vfs: $(tail -n 3 "$WORK/dockerd.log")"
    awk -v d="$WORK" 'index($2, d) == 1 { print $2 }' /proc/mounts | sort -r | xargs -r -n1 umount -l
    rm -rf "$WORK/data" "$WORK/exec"
    start_dockerd vfs || fail "dockerd did not start: $(tail -n 5 "$WORK/dockerd.log")"
fi
log "dockerd $(docker version --format '{{.Server.Version}}') ($(docker info --format '{{.Driver}}'))"

docker import - "debian:$SUITE-slim" <"$BASE_TAR" >/dev/null || fail "docker import of the base"

# --- the image, from the prebuilt binary and plugins ------------------------------------
CTX="$WORK/context"
mkdir -p "$CTX/dist/plugins"
# Debug info is most of a debug build's size; the image does not need it.
if command -v strip >/dev/null; then
    strip -o "$CTX/dist/pier" "$PIER_BIN"
else
    cp "$PIER_BIN" "$CTX/dist/pier"
fi
for p in "${PLUGINS[@]}"; do cp "$PIER_PLUGINS_DIR/$p" "$CTX/dist/plugins/"; done
t0=$(date +%s)
if ! docker build --network host -f "$DOCKERFILE" --target runtime-prebuilt -t "$IMAGE" "$CTX" \
    >"$WORK/build.log" 2>&1; then
    tail -n 30 "$WORK/build.log" >&2
    fail "docker build --target runtime-prebuilt"
fi
size=$(docker image inspect --format '{{.Size}}' "$IMAGE")
log "image built in $(($(date +%s) - t0)) s, $((size / 1000000)) MB"
user=$(docker image inspect --format '{{.Config.User}}' "$IMAGE")
[[ $user == 10001:10001 ]] || fail "the image's USER is '$user', not 10001:10001"

# --- run it ------------------------------------------------------------------------------
docker network create --driver bridge "$NET" >/dev/null || fail "docker network create"
docker volume create "$VOL" >/dev/null || fail "docker volume create"
PORT=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
REG="127.0.0.1:$PORT"

# Starts a container of the image with its defaults (user, entrypoint, command) on the
# volume, the registry port published on loopback; waits for /readyz.
run_pier() {
    local name="pier-image-$ID-$1" i
    CONTAINERS+=("$name")
    docker run -d --name "$name" --network "$NET" -p "$REG:5000" -v "$VOL:/var/lib/pier" \
        "$IMAGE" >/dev/null || fail "docker run $name"
    for i in $(seq 1 150); do
        if [[ $(curl -s -o /dev/null -w '%{http_code}' "http://$REG/readyz") == 200 ]]; then
            CONTAINER=$name
            return 0
        fi
        if [[ $(docker inspect --format '{{.State.Running}}' "$name") != true ]]; then
            fail "container $name exited: $(docker inspect --format '{{.State.Status}} {{.State.ExitCode}} {{.State.Error}}' "$name")"
        fi
        sleep 0.2
    done
    fail "http://$REG/readyz did not answer 200 within 30 s"
}
run_pier 1
log "pier up in the container, registry on $REG"

uid=$(docker exec "$CONTAINER" id -u)
gid=$(docker exec "$CONTAINER" id -g)
[[ $uid == 10001 && $gid == 10001 ]] || fail "the server runs as $uid:$gid, not 10001:10001"
pid1_uid=$(docker exec "$CONTAINER" sh -c 'awk "/^Uid:/ { print \$2 }" /proc/1/status')
[[ $pid1_uid == 10001 ]] || fail "pid 1 runs as uid $pid1_uid"
[[ $(docker exec "$CONTAINER" cat /proc/1/cmdline | tr '\0' ' ') == "/usr/local/bin/pier serve "* ]] ||
    fail "pid 1 is not /usr/local/bin/pier serve"
docker exec "$CONTAINER" test -s /etc/ssl/certs/ca-certificates.crt || fail "no CA bundle in the image"
for p in "${PLUGINS[@]}"; do
    docker exec "$CONTAINER" pier plugin check "/etc/pier/plugins/$p" >/dev/null ||
        fail "pier plugin check /etc/pier/plugins/$p in the container"
done

# --- push an OCI image with skopeo, pull it back byte-exact ------------------------------
sha() { sha256sum "$1" | cut -d' ' -f1; }
add_blob() { # FILE -> prints "DIGEST SIZE", the file moved into the layout
    local h
    h=$(sha "$1")
    mv "$1" "$LAYOUT/blobs/sha256/$h"
    echo "sha256:$h $(stat -c %s "$LAYOUT/blobs/sha256/$h")"
}
LAYOUT="$WORK/oci-in"
mkdir -p "$LAYOUT/blobs/sha256" "$WORK/layer"
head -c 1048576 /dev/urandom >"$WORK/layer/payload.bin"
tar --owner=0 --group=0 --numeric-owner -C "$WORK/layer" -cf "$WORK/layer.tar" payload.bin
diff_id="sha256:$(sha "$WORK/layer.tar")"
gzip -n -c "$WORK/layer.tar" >"$WORK/layer.tar.gz"
read -r layer_digest layer_size < <(add_blob "$WORK/layer.tar.gz")
printf '{"architecture":"amd64","os":"linux","config":{},"rootfs":{"type":"layers","diff_ids":["%s"]}}' \
    "$diff_id" >"$WORK/config.json"
read -r config_digest config_size < <(add_blob "$WORK/config.json")
printf '{"schemaVersion":2,"mediaType":"application/vnd.oci.image.manifest.v1+json","config":{"mediaType":"application/vnd.oci.image.config.v1+json","digest":"%s","size":%s},"layers":[{"mediaType":"application/vnd.oci.image.layer.v1.tar+gzip","digest":"%s","size":%s}]}' \
    "$config_digest" "$config_size" "$layer_digest" "$layer_size" >"$WORK/manifest.json"
read -r manifest_digest manifest_size < <(add_blob "$WORK/manifest.json")
printf '{"schemaVersion":2,"manifests":[{"mediaType":"application/vnd.oci.image.manifest.v1+json","digest":"%s","size":%s,"annotations":{"org.opencontainers.image.ref.name":"v1"}}]}' \
    "$manifest_digest" "$manifest_size" >"$LAYOUT/index.json"
echo '{"imageLayoutVersion":"1.0.0"}' >"$LAYOUT/oci-layout"

# skopeo's blob-info cache (cross-repo mount attempts) cannot know these blobs: the
# layer is random and the port new.
SKOPEO=(skopeo --insecure-policy)
"${SKOPEO[@]}" copy --dest-tls-verify=false "oci:$LAYOUT:v1" "docker://$REG/test/app:v1" \
    >"$WORK/skopeo-push.log" 2>&1 || { cat "$WORK/skopeo-push.log" >&2; fail "skopeo copy to the container"; }

# Pulled back by skopeo into a new layout: the same manifest digest, every blob the same bytes.
OUT="$WORK/oci-out"
"${SKOPEO[@]}" copy --src-tls-verify=false "docker://$REG/test/app:v1" "oci:$OUT:v1" \
    >"$WORK/skopeo-pull.log" 2>&1 || { cat "$WORK/skopeo-pull.log" >&2; fail "skopeo copy from the container"; }
grep -q "\"$manifest_digest\"" "$OUT/index.json" || fail "pulled manifest digest differs: $(cat "$OUT/index.json")"
for d in "$manifest_digest" "$config_digest" "$layer_digest"; do
    cmp -s "$LAYOUT/blobs/sha256/${d#sha256:}" "$OUT/blobs/sha256/${d#sha256:}" ||
        fail "blob $d pulled back differs"
done
# And by plain GETs: the manifest by tag with its digest header, the layer byte-exact.
curl -sSf -D "$WORK/manifest.headers" -o "$WORK/manifest.got" \
    -H 'Accept: application/vnd.oci.image.manifest.v1+json' "http://$REG/v2/test/app/manifests/v1" ||
    fail "GET the manifest"
[[ sha256:$(sha "$WORK/manifest.got") == "$manifest_digest" ]] || fail "GET manifest: other bytes"
grep -qi "^docker-content-digest: $manifest_digest" "$WORK/manifest.headers" ||
    fail "GET manifest: Docker-Content-Digest is not $manifest_digest"
curl -sSf -o "$WORK/layer.got" "http://$REG/v2/test/app/blobs/$layer_digest" || fail "GET the layer"
cmp -s "$WORK/layer.got" "$LAYOUT/blobs/sha256/${layer_digest#sha256:}" || fail "GET layer: other bytes"
log "pushed and pulled back byte-exact: test/app:v1 $manifest_digest"

# --- the data is in the named volume ------------------------------------------------------
MOUNT=$(docker volume inspect --format '{{.Mountpoint}}' "$VOL")
[[ $(docker inspect --format '{{range .Mounts}}{{.Name}}={{.Destination}}{{end}}' "$CONTAINER") == "$VOL=/var/lib/pier" ]] ||
    fail "the container's mounts are not the volume on /var/lib/pier"
for d in "$config_digest" "$layer_digest" "$manifest_digest"; do
    h=${d#sha256:}
    f="$MOUNT/docker/registry/v2/blobs/sha256/${h:0:2}/$h/data"
    cmp -s "$f" "$LAYOUT/blobs/sha256/$h" || fail "blob $d is not in the volume at $f"
    [[ $(stat -c %u "$f") == 10001 ]] || fail "$f is owned by uid $(stat -c %u "$f"), not 10001"
done

# --- the admin API: inside on loopback, not from outside ----------------------------------
docker exec "$CONTAINER" pier repos list >"$WORK/repos.txt" 2>&1 ||
    { cat "$WORK/repos.txt" >&2; fail "pier repos list (admin API on 127.0.0.1:5001) inside the container"; }
grep -q 'test/app' "$WORK/repos.txt" || fail "pier repos list does not list test/app: $(cat "$WORK/repos.txt")"
ports=$(docker port "$CONTAINER")
[[ $ports == "5000/tcp -> $REG" ]] || fail "published ports are not only 5000 on $REG: $ports"
IP=$(docker inspect --format '{{range .NetworkSettings.Networks}}{{.IPAddress}}{{end}}' "$CONTAINER")
[[ -n $IP ]] || fail "no container address"
[[ $(curl -s -m 5 -o /dev/null -w '%{http_code}' "http://$IP:5000/v2/") == 200 ]] ||
    fail "the registry does not answer on the container's address $IP:5000"
rc=0
curl -s -m 5 -o /dev/null "http://$IP:5001/healthz" || rc=$?
((rc == 7)) || fail "the admin port on the container's address $IP:5001: curl exit $rc, not 7 (refused)"
log "admin API: answers inside, refused on $IP:5001, not published"

# --- a new container on the same volume serves what the first stored -----------------------
docker rm -f "$CONTAINER" >/dev/null
run_pier 2
curl -sSf -o "$WORK/manifest.again" -H 'Accept: application/vnd.oci.image.manifest.v1+json' \
    "http://$REG/v2/test/app/manifests/v1" || fail "GET the manifest from a new container on the volume"
cmp -s "$WORK/manifest.again" "$WORK/manifest.got" || fail "the new container serves another manifest"
curl -sSf -o "$WORK/layer.again" "http://$REG/v2/test/app/blobs/$layer_digest" ||
    fail "GET the layer from a new container on the volume"
cmp -s "$WORK/layer.again" "$WORK/layer.got" || fail "the new container serves other layer bytes"
log "a second container on the volume serves the same image"
