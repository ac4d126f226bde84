#!/bin/sh
# Installs the pinned toolchains that build Pier's Python and JavaScript test plugins:
#   componentize-py 0.25.1 (PyPI)           -> $PREFIX/venv/bin/componentize-py
#   @bytecodealliance/componentize-js 0.23.0 (npm, exact lockfile) -> $PREFIX/js/node_modules
# Usage: plugins/polyglot/install.sh [PREFIX]   (default: $PIER_POLYGLOT_DIR or ~/.cache/pier/polyglot)
# Idempotent: does nothing (well under a second) when both are already there at those versions.
# Needs python3 with venv (Debian: python3-venv) and node >= 18 with npm (Debian: nodejs npm).
set -eu
PY_VERSION=0.25.1
JS_VERSION=0.23.0
here=$(cd "$(dirname "$0")" && pwd)
prefix=${1:-${PIER_POLYGLOT_DIR:-$HOME/.cache/pier/polyglot}}
mkdir -p "$prefix"

# --- Python: componentize-py in its own venv (one 17 MB manylinux wheel, no other deps)
if "$prefix/venv/bin/componentize-py" --version 2>/dev/null | grep -qx "componentize-py $PY_VERSION"; then
  echo "componentize-py $PY_VERSION: present"
else
  rm -rf "$prefix/venv"
  # Debian's python3 (python3-venv belongs to it), not a pyenv shim; the wheel is abi3 (>= 3.9).
  py=/usr/bin/python3; [ -x "$py" ] || py=$(command -v python3)
  "$py" -m venv "$prefix/venv"
  "$prefix/venv/bin/pip" install --quiet --disable-pip-version-check "componentize-py==$PY_VERSION"
  "$prefix/venv/bin/componentize-py" --version
fi

# --- JavaScript: componentize-js from the committed package.json + package-lock.json (npm ci)
have=$(node -p "require('$prefix/js/node_modules/@bytecodealliance/componentize-js/package.json').version" 2>/dev/null || true)
if [ "$have" = "$JS_VERSION" ] && cmp -s "$here/js-toolchain/package-lock.json" "$prefix/js/package-lock.json"; then
  echo "componentize-js $JS_VERSION: present"
else
  mkdir -p "$prefix/js"
  cp "$here/js-toolchain/package.json" "$here/js-toolchain/package-lock.json" "$prefix/js/"
  (cd "$prefix/js" && npm ci --no-audit --no-fund --loglevel=error)
  echo "componentize-js $(node -p "require('$prefix/js/node_modules/@bytecodealliance/componentize-js/package.json').version"): installed"
fi
