#!/bin/sh
# Build the Python authorizer plugin.  Usage: build-py.sh WITDIR OUT.wasm
# Needs componentize-py 0.25.1 (COMPONENTIZE_PY overrides the binary path).
set -eu
[ $# -eq 2 ] || { echo "usage: $0 WITDIR OUT.wasm" >&2; exit 2; }
here=$(cd "$(dirname "$0")" && pwd)
wit=$1 out=$2
cpy=${COMPONENTIZE_PY:-componentize-py}
# componentize-py resolves the app module against -p (default: cwd); build from the source dir
# so the output path may be relative to the caller's cwd.
case $out in /*) ;; *) out=$(pwd)/$out ;; esac
case $wit in /*) ;; *) wit=$(pwd)/$wit ;; esac
cd "$here/python"
exec "$cpy" -d "$wit" -w authorizer componentize app -o "$out"
