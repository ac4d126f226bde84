#!/usr/bin/env bash
# Keeps the shared cargo target dir from filling the disk.
#
#   scripts/prune-target.sh [TARGET_DIR]     (default: $CARGO_TARGET_DIR)
#
# The target dir outlives every run (CI's fresh clones and the work tree share it), and
# cargo never removes what it built: each new Cargo.lock, feature set or checkout path
# leaves a full set of artefacts behind (70 GB in a week filled a shared disk and failed
# CI with "No space left on device"). While the disk has PIER_MIN_FREE_GB (default 25)
# free this does nothing. Below that it frees space in steps, stopping as soon as there
# is enough:
#   1. incremental caches (rebuilt on the next edit);
#   2. in every deps/ dir, all but the two newest builds of each crate and kind (what a
#      checkout at another path or an older lock file left; the two kept cover the
#      current build and one other);
#   3. the whole debug profile (the next build starts cold: about 25 minutes).
# Everything removed is a cache: cargo rebuilds what it misses.
set -euo pipefail

TARGET=${1:-${CARGO_TARGET_DIR:?set CARGO_TARGET_DIR or pass the target dir}}
MIN_FREE_GB=${PIER_MIN_FREE_GB:-25}
[[ -d $TARGET ]] || exit 0

free_gb() { df --output=avail -B1G "$TARGET" | tail -n 1 | tr -d ' '; }
enough() { (($(free_gb) >= MIN_FREE_GB)); }
say() { printf 'prune-target: %s\n' "$*" >&2; }

enough && exit 0
say "$(free_gb) GB free on the disk of $TARGET (want $MIN_FREE_GB); pruning"

# 1. Incremental compilation caches.
find "$TARGET" -maxdepth 4 -type d -name incremental -prune -exec rm -rf {} +
if enough; then say "removed incremental caches; $(free_gb) GB free"; exit 0; fi

# 2. Stale builds: files named NAME-HASH[.EXT] in deps/, grouped by NAME and EXT,
#    newest first; all after the second of a group go.
stale_in() {
    # (Debian's awk is mawk, which has no {16}: the hash pattern is spelt out.)
    local hex16
    hex16=$(printf '[0-9a-f]%.0s' {1..16})
    find "$1" -maxdepth 1 -type f -printf '%T@ %f\n' | sort -rn | awk -v hash="-$hex16" '
        { f = $2
          if (match(f, hash "([.][A-Za-z0-9_.]+)?$")) {
              key = substr(f, 1, RSTART - 1) "|" substr(f, RSTART + 17)
              if (++seen[key] > 2) print f
          } }'
}
removed=0
while IFS= read -r -d '' deps; do
    while IFS= read -r f; do
        rm -f -- "$deps/$f" && removed=$((removed + 1))
    done < <(stale_in "$deps")
done < <(find "$TARGET" -maxdepth 4 -type d -name deps -print0)
if enough; then say "removed $removed stale build files; $(free_gb) GB free"; exit 0; fi

# 3. The debug profile, whole.
say "removing $TARGET/debug: the next build starts cold"
rm -rf "$TARGET/debug"
if enough; then say "$(free_gb) GB free"; exit 0; fi
say "only $(free_gb) GB free after pruning: a full build needs about 20 GB; free space on" \
    "$(df --output=target "$TARGET" | tail -n 1) or the build may fail with 'No space left on device'"
