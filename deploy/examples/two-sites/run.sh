#!/usr/bin/env bash
# Two sites on one machine: site A (primary, :5200) replicates project `team` to
# site B (:5300) and posts every event to a webhook receiver on :5299 (not included:
# `python3 -m http.server` won't take POSTs; any receiver will do, or leave it down and
# watch the deliveries retry with `pier events deliveries --admin http://127.0.0.1:5201`).
#
#   deploy/examples/two-sites/run.sh        start both (logs and data in ./data)
#   kill $(cat data/*.pid)                  stop them
#
# Needs: pier (PIER_BIN or target/release/pier) and the example plugins
# (cd plugins && cargo build --release --target wasm32-wasip2).
set -euo pipefail
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
PIER="${PIER_BIN:-$HERE/../../../target/release/pier}"
cd "$HERE"
mkdir -p data
for site in site-b site-a; do
    "$PIER" serve --config "$site.toml" >"data/$site.log" 2>&1 &
    echo $! >"data/$site.pid"
done
for port in 5300 5200; do
    for _ in $(seq 100); do (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null && break; sleep 0.1; done
done
echo "site A: http://127.0.0.1:5200 (push here), site B: http://127.0.0.1:5300"
echo "jobs:   $PIER replication jobs --admin http://127.0.0.1:5201"
