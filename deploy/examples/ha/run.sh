#!/usr/bin/env bash
# Three Pier nodes on S3 (s3s-fs) and Redis behind nginx, all on 127.0.0.1.
#
#   deploy/examples/ha/run.sh [DIR]     start everything (data and logs in DIR, default ./ha-data)
#   kill $(cat DIR/*.pid)               stop it
#
# Needs: pier (PIER_BIN or target/release/pier), s3s-fs (S3S_FS_BIN or
# ~/.cache/pier/s3s-fs/bin/s3s-fs: scripts/install-test-deps.sh builds it), redis-server, nginx.
# Ports: LB 5500, nodes 5501-5503 (admin 5511-5513), S3 9500, Redis 6390 (override with env).
set -euo pipefail
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
DIR="$(mkdir -p "${1:-./ha-data}" && cd "${1:-./ha-data}" && pwd)"
PIER="${PIER_BIN:-$HERE/../../../target/release/pier}"
S3S="${S3S_FS_BIN:-$HOME/.cache/pier/s3s-fs/bin/s3s-fs}"
LB_PORT="${LB_PORT:-5500}" S3_PORT="${S3_PORT:-9500}" REDIS_PORT="${REDIS_PORT:-6390}"
NODES=("${NODE1:-5501}" "${NODE2:-5502}" "${NODE3:-5503}")

wait_port() { for _ in $(seq 100); do (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null && return 0; sleep 0.1; done; echo "port $1 did not open" >&2; return 1; }

mkdir -p "$DIR/s3/pier" "$DIR/redis"
"$S3S" --host 127.0.0.1 --port "$S3_PORT" --access-key pier-example --secret-key pier-example-secret "$DIR/s3" \
    >"$DIR/s3s-fs.log" 2>&1 & echo $! >"$DIR/s3s-fs.pid"
redis-server --bind 127.0.0.1 --port "$REDIS_PORT" --save '' --appendonly no --dir "$DIR/redis" \
    >"$DIR/redis.log" 2>&1 & echo $! >"$DIR/redis.pid"
wait_port "$S3_PORT"; wait_port "$REDIS_PORT"

for i in 0 1 2; do
    n=$((i + 1)); port=${NODES[$i]}; admin=$((port + 10))
    sed -e "s/@PORT@/$port/; s/@ADMIN@/$admin/; s/@S3_PORT@/$S3_PORT/; s/@REDIS_PORT@/$REDIS_PORT/" \
        "$HERE/node.toml.in" >"$DIR/node$n.toml"
    "$PIER" serve --config "$DIR/node$n.toml" --root "$DIR/node$n" >"$DIR/node$n.log" 2>&1 &
    echo $! >"$DIR/node$n.pid"
done
for port in "${NODES[@]}"; do wait_port "$port"; done

sed -e "s|@DIR@|$DIR|g; s/@LB_PORT@/$LB_PORT/; s/@NODE1@/${NODES[0]}/; s/@NODE2@/${NODES[1]}/; s/@NODE3@/${NODES[2]}/" \
    "$HERE/nginx.conf.in" >"$DIR/nginx.conf"
nginx -c "$DIR/nginx.conf" -g 'daemon off;' >"$DIR/nginx.log" 2>&1 & echo $! >"$DIR/nginx.pid"
wait_port "$LB_PORT"
echo "Pier HA: registry http://127.0.0.1:$LB_PORT (nodes ${NODES[*]}), S3 :$S3_PORT, Redis :$REDIS_PORT; data in $DIR"
