#!/usr/bin/env bash
# Install everything the test suite needs on a fresh Debian 12 machine (run as root).
# Idempotent and fast on a warm machine: apt is skipped when every package is present,
# and the Python venv is only built once.
set -euo pipefail

PIER_CACHE="${PIER_CACHE:-$HOME/.cache/pier}"
VENV="$PIER_CACHE/venv"
ORAS_VERSION="${ORAS_VERSION:-0.2.43}"

APT_PACKAGES=(
    skopeo podman docker.io containerd docker-registry nginx wrk apache2-utils
    python3-venv openssl curl ca-certificates slapd ldap-utils
)

log() { printf 'install-test-deps: %s\n' "$*" >&2; }

missing=()
for pkg in "${APT_PACKAGES[@]}"; do
    if ! dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q '^install ok installed$'; then
        missing+=("$pkg")
    fi
done

if ((${#missing[@]} > 0)); then
    log "installing Debian packages: ${missing[*]}"
    SUDO=""
    if [[ $(id -u) -ne 0 ]]; then SUDO="sudo"; fi
    export DEBIAN_FRONTEND=noninteractive NEEDRESTART_MODE=a
    # The tests start their own daemons on loopback ports: keep the packages' init
    # scripts from starting system-wide ones (dockerd would then share a system
    # containerd) while apt runs, if no policy is in place already.
    POLICY=/usr/sbin/policy-rc.d
    if [[ ! -e $POLICY ]]; then
        printf '#!/bin/sh\nexit 101\n' | $SUDO tee "$POLICY" >/dev/null
        $SUDO chmod 755 "$POLICY"
        trap '$SUDO rm -f "$POLICY"' EXIT
    fi
    $SUDO apt-get update -qq
    $SUDO apt-get install -y -qq "${missing[@]}" >/dev/null
else
    log "Debian packages present"
fi

# Python venv with the oras SDK. Use Debian's python3 (python3-venv belongs to it), not a pyenv shim.
PY=/usr/bin/python3
[[ -x $PY ]] || PY="$(command -v python3)"
if [[ ! -x $VENV/bin/python ]] || ! "$VENV/bin/python" -c 'import oras.client' 2>/dev/null; then
    log "creating venv $VENV with oras==$ORAS_VERSION"
    rm -rf "$VENV"
    mkdir -p "$PIER_CACHE"
    "$PY" -m venv "$VENV"
    "$VENV/bin/python" -m pip install -q --disable-pip-version-check "oras==$ORAS_VERSION"
else
    log "venv $VENV present"
fi

# Plugins: the wasm target for the guest plugins the tests build (plugins/, wasm32-wasip2).
if command -v rustup >/dev/null 2>&1; then
    if ! rustup target list --installed | grep -qx wasm32-wasip2; then
        log "adding the rustup target wasm32-wasip2"
        rustup target add wasm32-wasip2
    else
        log "rustup target wasm32-wasip2 present"
    fi
else
    log "rustup not found: install the wasm32-wasip2 target for your toolchain by hand"
fi

log "done"
