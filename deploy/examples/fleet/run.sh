#!/usr/bin/env bash
# Three edge nodes of one fleet on one machine, each with its own root, all mirroring
# UPSTREAM (default: Docker Hub). A cold blob is fetched from the upstream once, by its
# owner, and streamed to the other nodes while it arrives.
#
#   deploy/examples/fleet/run.sh [UPSTREAM]   start the nodes (logs and data in ./data)
#   kill $(cat deploy/examples/fleet/data/*.pid)
#
# Registry ports 5400, 5410, 5420; admin 5401, 5411, 5421; peers 5402, 5412, 5422.
# Needs: pier (PIER_BIN or target/release/pier), openssl.
set -euo pipefail
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
PIER="${PIER_BIN:-$HERE/../../../target/release/pier}"
UPSTREAM="${1:-https://registry-1.docker.io}"
cd "$HERE"
mkdir -p data
[ -s data/fleet.key ] || (umask 077 && openssl rand -hex 32 >data/fleet.key)
for n in 0 1 2; do
    sed -e "s|@N@|$n|g" -e "s|@UPSTREAM@|$UPSTREAM|g" node.toml.in >"data/node-$n.toml"
    "$PIER" serve --config "data/node-$n.toml" >"data/node-$n.log" 2>&1 &
    echo $! >"data/node-$n.pid"
done
for port in 5400 5410 5420; do
    for _ in $(seq 100); do (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null && break; sleep 0.1; done
done
echo "nodes: http://127.0.0.1:5400 http://127.0.0.1:5410 http://127.0.0.1:5420"
echo "fleet: curl -s http://127.0.0.1:5401/api/v1/fleet"
