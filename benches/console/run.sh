#!/usr/bin/env bash
# Console benchmark (issue 7): how fast the operator console renders with 10,000 repositories
# and 100,000 tags, timed in Debian's Chromium driven by playwright-core.
#
#   benches/console/run.sh [--reps N] [--data DIR] [--seed-only] [--no-auth] [--keep]
#
#   --reps N      browser repetitions, each in fresh browser contexts (default 7)
#   --data DIR    keep the seeded Pier root in DIR and reuse it on later runs (seeding takes
#                 ~2-4 min and ~5 GiB); default: a temporary directory, removed on exit
#   --seed-only   seed (DIR) and stop
#   --no-auth     Pier without access control (default: the RBAC example, token auth)
#   --keep        keep the temporary directory (logs, screenshots, the browser's JSON)
#
# Seeds through the registry API (benches/console/seed.mjs), starts a release Pier on free
# loopback ports on that root, times each API call the console makes with curl (server time
# and body size), then runs benches/console/browse.mjs: log in, open the dashboard, the
# repositories pages, a tag page and a manifest, REPS times. Prints medians and the 1 s
# target as PASS/MISS. Environment: PIER_BIN (skip the build), PIER_LOG (default warn),
# BENCH_TMPDIR, PIER_CACHE (where scripts/install-test-deps.sh put playwright-core).
#
# Exit status: 0 when everything ran (a MISS is a finding), 1 when a measurement could not be
# taken, 2 on bad usage or a missing tool.
set -uo pipefail
# shellcheck source-path=SCRIPTDIR

SCRIPT_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
REPO_DIR="$(cd "$SCRIPT_DIR/../.." && pwd)"
# shellcheck source=SCRIPTDIR/../lib.sh
source "$SCRIPT_DIR/../lib.sh"
# shellcheck source=SCRIPTDIR/common.sh
source "$SCRIPT_DIR/common.sh"

FAILURES=()
declare -A PID=()
REPS=7
DATA=""
SEED_ONLY=0
KEEP=0
NO_AUTH=0
usage() { sed -n '2,22p' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//'; }
while (($#)); do
    case "$1" in
        --reps) REPS="${2:?}"; shift ;;
        --data) DATA="${2:?}"; shift ;;
        --seed-only) SEED_ONLY=1 ;;
        --no-auth) NO_AUTH=1 ;;
        --keep) KEEP=1 ;;
        -h|--help) usage; exit 0 ;;
        *) echo "run.sh: unknown argument: $1" >&2; usage >&2; exit 2 ;;
    esac
    shift
done
((REPS >= 1)) || { echo "run.sh: --reps must be >= 1" >&2; exit 2; }

PLAYWRIGHT_DIR="${PIER_CACHE:-$HOME/.cache/pier}/console-test"
CHROMIUM="${CHROMIUM:-/usr/bin/chromium}"
require_tools curl node jq awk
if ((!SEED_ONLY)); then
    [[ -x "$CHROMIUM" ]] || { echo "run.sh: no chromium at $CHROMIUM (scripts/install-test-deps.sh)" >&2; exit 2; }
    [[ -d "$PLAYWRIGHT_DIR/node_modules/playwright-core" ]] \
        || { echo "run.sh: no playwright-core in $PLAYWRIGHT_DIR (scripts/install-test-deps.sh)" >&2; exit 2; }
fi

WORK="$(mktemp -d "${BENCH_TMPDIR:-${TMPDIR:-/tmp}}/pier-bench-console.XXXXXX")"
cleanup() {
    local n
    for n in "${!PID[@]}"; do stop_server "$n"; done
    if ((KEEP)); then echo "kept $WORK"; else rm -rf "$WORK"; fi
}
trap cleanup EXIT
trap 'exit 130' INT TERM

export NO_AUTH
build_pier || exit 1
[[ -n "$DATA" ]] || DATA="$WORK/data"
seed_data "$DATA" || exit 1
((SEED_ONLY)) && exit 0

start_pier pier "$DATA" auth || exit 1
ADMIN="http://127.0.0.1:$ADMIN_PORT"
AUTH=(-u "$ADMIN_USER:$ADMIN_PASS")
log "Pier: registry 127.0.0.1:$REG_PORT, admin $ADMIN ($( ((NO_AUTH)) && echo "no access control" || echo "RBAC example, token auth"))"

# ---------------------------------------------------------------- the API calls, with curl
# The calls the console's pages make (app.js), each timed 10 times on a warm server: curl's
# time_total (connect + server + transfer on loopback) and the body size.
DEEP_LAST="proj98/app099"
FILTER="app042"
FIRST_TAG=v00000
enc_repo() { printf '%s' "$1" | sed 's|/|%2F|g'; }
API_CALLS=(
    "dashboard|/metrics"
    "dashboard|/api/v1/mirror"
    "dashboard|/api/v1/plugins"
    "repositories|/api/v1/repositories?n=50"
    "repositories, deep page|/api/v1/repositories?n=50&last=$(enc_repo "$DEEP_LAST")"
    "repositories, filtered|/api/v1/repositories?n=50&q=$FILTER"
    "tags of $BIG_REPO|/api/v1/repositories/$(enc_repo "$BIG_REPO")/-/tags?n=50"
    "manifest|/api/v1/repositories/$(enc_repo "$BIG_REPO")/-/manifests/$FIRST_TAG"
)
api_table=()
for c in "${API_CALLS[@]}"; do
    what=${c%%|*} path=${c#*|} times=() size="" code=""
    for _ in $(seq 10); do
        read -r code t size < <(curl -s -o /dev/null -w '%{http_code} %{time_total} %{size_download}\n' "${AUTH[@]}" "$ADMIN$path")
        [[ "$code" == 200 ]] || { fail "GET $path answered $code"; break; }
        times+=("$(awk -v t="$t" 'BEGIN { printf "%.2f", t * 1000 }')")
    done
    api_table+=("$(printf '%-26s %-62s %8s ms %9s B' "$what" "$path" "$(median "${times[@]}")" "$size")")
done
# The repository listing of page 1 holds 50 names and a next link; count them to show paging.
page1=$(curl -s "${AUTH[@]}" "$ADMIN/api/v1/repositories?n=50")
page1_n=$(jq '.repositories | length' <<<"$page1")
page1_next=$(jq -r '.next' <<<"$page1")
tags1_n=$(curl -s "${AUTH[@]}" "$ADMIN/api/v1/repositories/$(enc_repo "$BIG_REPO")/-/tags?n=50" | jq '.tags | length')

# ---------------------------------------------------------------- the browser
log "browser: $REPS repetitions"
mkdir -p "$WORK/shots"
CONSOLE_URL="$ADMIN" ADMIN_USER="$ADMIN_USER" ADMIN_PASS="$ADMIN_PASS" PLAYWRIGHT_DIR="$PLAYWRIGHT_DIR" \
    CHROMIUM="$CHROMIUM" REPS="$REPS" BIG_REPO="$BIG_REPO" DEEP_LAST="$DEEP_LAST" FILTER="$FILTER" \
    SHOTS="$WORK/shots" node "$SCRIPT_DIR/browse.mjs" >"$WORK/browse.jsonl" 2>"$WORK/browse.stderr"
grep '"rep"' "$WORK/browse.jsonl" | jq -c '{rep, login: .login.painted, dashboard: .dashboard.painted,
    repos: .repos.painted, tags: .tags.painted} | map_values(if type == "number" then (. * 10 | round / 10) else . end)'
result=$(tail -1 "$WORK/browse.jsonl")
if [[ "$(jq -r '.ok' <<<"$result" 2>/dev/null)" != true ]]; then
    fail "the browser run failed: $(jq -r '.error' <<<"$result" 2>/dev/null || cat "$WORK/browse.stderr")"
    tail -20 "$WORK/pier.log" >&2
    exit 1
fi

echo
echo "== the console with $SEED_REPOS repositories and $SEED_TAGS tags ($BIG_REPO: $SEED_BIG), $(nproc) cores, $( ((NO_AUTH)) && echo "no access control" || echo "token auth + RBAC")"
echo
echo "API calls (curl, median of 10; size of the body):"
printf '  %s\n' "${api_table[@]}"
echo "  paging: /api/v1/repositories?n=50 holds $page1_n names, next = $page1_next; the tags page holds $tags1_n tags"
echo
echo "What the browser fetched (first repetition; bytes of the body, ms to the response's end):"
jq -r '.responses | to_entries[] | .key as $p | .value[] | "  \($p | . + " " * (10 - length)) \(.status) \(.bytes | tostring | " " * (8 - length) + .) B \(.ms | tostring | " " * (7 - length) + .) ms  \(.path)"' <<<"$result"
echo "  checks: $(jq -c '.checks' <<<"$result")"
echo
printf '%-66s %9s %9s %9s  %s\n' "browser, $REPS repetitions (ms; rendered + 2 frames)" median min max "target < 1000 ms"
for k in login dashboard repos deep filter tags manifest; do
    case $k in
        login) label="log in: form submitted -> dashboard rendered" ;;
        dashboard) label="dashboard: fresh context, navigation start -> rendered" ;;
        repos) label="repositories, first page (50 of $SEED_REPOS)" ;;
        deep) label="repositories, page after $DEEP_LAST" ;;
        filter) label="repositories filtered by \"$FILTER\"" ;;
        tags) label="tags of $BIG_REPO, first page (50 of $SEED_BIG)" ;;
        manifest) label="manifest $BIG_REPO:$FIRST_TAG" ;;
    esac
    mapfile -t vals < <(jq -r --arg k "$k" '.reps[][$k].painted' <<<"$result")
    m=$(median "${vals[@]}")
    lo=$(printf '%s\n' "${vals[@]}" | sort -g | head -1)
    hi=$(printf '%s\n' "${vals[@]}" | sort -g | tail -1)
    printf '%-66s %9.1f %9.1f %9.1f  %s\n' "$label" "$m" "$lo" "$hi" "$(verdict "$m" "<" 1000)"
done
mapfile -t rvals < <(jq -r '.reps[].dashboard.rendered' <<<"$result")
echo "  (the dashboard's DOM in place, before the two frames: median $(median "${rvals[@]}") ms)"
((KEEP)) && echo "screenshots: $WORK/shots"
((${#FAILURES[@]} == 0)) || exit 1
