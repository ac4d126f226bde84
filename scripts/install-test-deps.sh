#!/usr/bin/env bash
# Install everything the test suite needs on a fresh Debian 12 machine (run as root).
# Idempotent and fast on a warm machine: apt is skipped when every package is present,
# and the Python venv is only built once.
set -euo pipefail

PIER_CACHE="${PIER_CACHE:-$HOME/.cache/pier}"
VENV="$PIER_CACHE/venv"
ORAS_VERSION="${ORAS_VERSION:-0.2.43}"
SCHEMATHESIS_VERSION="${SCHEMATHESIS_VERSION:-4.32.5}"

APT_PACKAGES=(
    skopeo podman docker.io containerd docker-registry nginx wrk apache2-utils
    python3-venv openssl curl ca-certificates slapd ldap-utils
    # pier-cluster tests: standalone, Sentinel (`redis-server CONF --sentinel`, same binary)
    # and Cluster (`redis-cli --cluster create`, from redis-tools, a dependency).
    redis-server
    # The console test (tests/tests/console.rs): Debian's Chromium driven by playwright-core.
    chromium
    # The proxy test (tests/tests/proxy.rs): outbound requests through an HTTP proxy.
    tinyproxy
    # The container image test (tests/container-image.sh): its Debian base, offline of Docker Hub.
    debootstrap
    # The metrics test (tests/tests/metrics.rs): `promtool check metrics` and a real
    # Prometheus scraping the admin listener (the test starts its own; the service the
    # package would start is kept off by the policy below, and disabled after).
    prometheus
)
# Node and npm for playwright-core: Debian's, unless a node with its npm is there already
# (NodeSource's nodejs package carries npm and conflicts with Debian's npm package).
if ! command -v node >/dev/null 2>&1 || ! command -v npm >/dev/null 2>&1; then
    APT_PACKAGES+=(nodejs npm)
fi

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
    # containerd; redis-server would take port 6379) while apt runs, if no policy is in
    # place already.
    POLICY=/usr/sbin/policy-rc.d
    if [[ ! -e $POLICY ]]; then
        printf '#!/bin/sh\nexit 101\n' | $SUDO tee "$POLICY" >/dev/null
        $SUDO chmod 755 "$POLICY"
        trap '$SUDO rm -f "$POLICY"' EXIT
    fi
    $SUDO apt-get update -qq
    $SUDO apt-get install -y -qq "${missing[@]}" >/dev/null
    # prometheus's unit is enabled on install: the metrics test runs its own server.
    if command -v systemctl >/dev/null 2>&1 && [[ -d /run/systemd/system ]]; then
        $SUDO systemctl disable --now prometheus >/dev/null 2>&1 || true
    fi
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

# schemathesis in the same venv: tests/tests/admin_api.rs checks the admin API against
# gateway/admin/openapi.json with it.
if [[ "$("$VENV/bin/schemathesis" --version 2>/dev/null)" != *"version $SCHEMATHESIS_VERSION"* ]]; then
    log "installing schemathesis==$SCHEMATHESIS_VERSION into $VENV"
    "$VENV/bin/python" -m pip install -q --disable-pip-version-check "schemathesis==$SCHEMATHESIS_VERSION"
else
    log "schemathesis $SCHEMATHESIS_VERSION present"
fi

# S3 tests (gateway/storage/tests/s3.rs): s3s-fs, a small S3 server that checks SigV4
# signatures, built once from crates.io (0.14.1: later releases need rustc 1.96; about 6
# minutes). First patch: s3s-fs keeps each object's metadata in a file named after the
# base64 of the whole key, so keys longer than about 165 bytes fail with InternalError
# (the file name passes 255 bytes). Distribution's layout has such keys (sha512 blobs,
# referrer links, long repository names and tags; S3 itself allows 1024 bytes), so long
# names are replaced by an MD5 of the key.
# Second patch: ListMultipartUploads, which s3s-fs lacks (501 NotImplemented). Debian's
# docker-registry (distribution 2.8.2, aws-sdk-go v1) calls it to reopen an upload's
# writer on every PATCH/PUT after the first, then ListParts, dereferencing its
# IsTruncated and summing the parts' Size. So: CreateMultipartUpload also records
# [bucket, key] in `.upload-<id>.key.json` (the metadata file name cannot be decoded once
# hashed), removed with the upload's info file on complete/abort; ListMultipartUploads
# lists those records by bucket and prefix; ListParts answers IsTruncated=false, the
# parts in order, and each part's ETag.
# The marker file records the patched build: its content names the patches, and an
# install whose marker differs (an older patch set) is rebuilt.
S3S_FS_VERSION="${S3S_FS_VERSION:-0.14.1}"
S3S_FS_ROOT="$PIER_CACHE/s3s-fs"
S3S_FS_MARKER="$S3S_FS_ROOT/long-keys-patch"
S3S_FS_PATCHES="s3s-fs $S3S_FS_VERSION, metadata file names of long keys hashed; ListMultipartUploads; ListParts IsTruncated+ETag (2)"
if [[ ! -x $S3S_FS_ROOT/bin/s3s-fs || "$(cat "$S3S_FS_MARKER" 2>/dev/null)" != "$S3S_FS_PATCHES" ]]; then
    if ! command -v cargo >/dev/null 2>&1; then
        log "cargo not found: cannot build s3s-fs for the S3 tests"
        exit 1
    fi
    log "building s3s-fs $S3S_FS_VERSION into $S3S_FS_ROOT (a few minutes, once)"
    work="$(mktemp -d)"
    # Fetch the published source with cargo itself: a throwaway package depending on it.
    mkdir -p "$work/fetch/src"
    printf '[package]\nname = "fetch-s3s-fs"\nversion = "0.0.0"\nedition = "2021"\n\n[dependencies]\ns3s-fs = "=%s"\n' \
        "$S3S_FS_VERSION" >"$work/fetch/Cargo.toml"
    : >"$work/fetch/src/lib.rs"
    src_dir="$(cd "$work/fetch" && cargo metadata --format-version 1 2>/dev/null |
        "$PY" -c 'import json,sys; print(next(p["manifest_path"] for p in json.load(sys.stdin)["packages"] if p["name"] == "s3s-fs"))')"
    cp -r "$(dirname "$src_dir")" "$work/s3s-fs"
    fs_rs="$work/s3s-fs/src/fs.rs"
    old='let encode = |s: \&str| base64_simd::URL_SAFE_NO_PAD.encode_to_string(s);'
    new='let encode = |s: \&str| { let e = base64_simd::URL_SAFE_NO_PAD.encode_to_string(s); if e.len() <= 120 { e } else { let mut h = Md5::new(); h.update(s.as_bytes()); format!("md5-{}", hex(h.finalize())) } };'
    sed -i "s/$old/$new/" "$fs_rs"
    if [[ $(grep -c 'format!("md5-{}"' "$fs_rs") -ne 2 ]]; then
        log "the s3s-fs long-key patch did not apply to $fs_rs"
        exit 1
    fi
    # The multipart patch: exact text replacements, each of which must match once.
    "$PY" - "$work/s3s-fs/src" <<'PATCH'
import sys
src = sys.argv[1]

def patch(name, old, new):
    path = f"{src}/{name}"
    text = open(path).read()
    if text.count(old) != 1:
        sys.exit(f"install-test-deps: the s3s-fs multipart patch did not apply to {path}")
    open(path, "w").write(text.replace(old, new))

KEY_FILE = 'format!(".upload-{upload_id}.key.json")'

# CreateMultipartUpload records the upload's bucket and key.
patch("s3.rs",
"""        let upload_id = self.create_upload_id(req.credentials.as_ref()).await?;
""",
"""        let upload_id = self.create_upload_id(req.credentials.as_ref()).await?;
        let key_file = self.resolve_abs_path(%s)?;
        try_!(fs::write(&key_file, try_!(serde_json::to_vec(&(&input.bucket, &input.key)))).await);
""" % KEY_FILE)

# Complete and abort forget it with the upload id.
patch("fs.rs",
"""        let upload_info_path = self.get_upload_info_path(upload_id)?;
        if upload_info_path.exists() {
            fs::remove_file(&upload_info_path).await?;
        }
""",
"""        let upload_info_path = self.get_upload_info_path(upload_id)?;
        if upload_info_path.exists() {
            fs::remove_file(&upload_info_path).await?;
        }
        let _ = fs::remove_file(self.resolve_abs_path(%s)?).await;
""" % KEY_FILE)

# ListParts: each part's ETag, parts in order, IsTruncated.
patch("s3.rs",
"""            let part = Part {
                last_modified: Some(last_modified),
""",
"""            let mut md5 = Md5::new();
            md5.update(&try_!(fs::read(entry.path()).await));
            let part = Part {
                e_tag: Some(ETag::Strong(hex(md5.finalize()))),
                last_modified: Some(last_modified),
""")
patch("s3.rs",
"""            parts: Some(parts),
            ..Default::default()
        };
""",
"""            parts: Some({
                parts.sort_by_key(|p| p.part_number);
                parts
            }),
            is_truncated: Some(false),
            ..Default::default()
        };
""")

# ListMultipartUploads: the recorded uploads of the bucket whose key has the prefix.
patch("s3.rs",
"""    #[tracing::instrument]
    async fn list_parts(""",
"""    #[tracing::instrument]
    async fn list_multipart_uploads(
        &self,
        req: S3Request<ListMultipartUploadsInput>,
    ) -> S3Result<S3Response<ListMultipartUploadsOutput>> {
        let ListMultipartUploadsInput { bucket, prefix, .. } = req.input;
        let want = prefix.clone().unwrap_or_default();
        let mut uploads: Vec<MultipartUpload> = Vec::new();
        let mut iter = try_!(fs::read_dir(&self.root).await);
        while let Some(entry) = try_!(iter.next_entry().await) {
            let file_name = entry.file_name();
            let Some(name) = file_name.to_str() else { continue };
            let Some(id) = name.strip_prefix(".upload-").and_then(|n| n.strip_suffix(".key.json")) else { continue };
            // Gone when the upload completed or aborted meanwhile.
            let Ok(content) = fs::read(entry.path()).await else { continue };
            let Ok(meta) = entry.metadata().await else { continue };
            let (b, key): (String, String) = try_!(serde_json::from_slice(&content));
            if b != bucket || !key.starts_with(want.as_str()) {
                continue;
            }
            uploads.push(MultipartUpload {
                key: Some(key),
                upload_id: Some(id.to_owned()),
                initiated: meta.modified().ok().map(Timestamp::from),
                ..Default::default()
            });
        }
        uploads.sort_by(|x, y| (&x.key, &x.upload_id).cmp(&(&y.key, &y.upload_id)));
        let output = ListMultipartUploadsOutput {
            bucket: Some(bucket),
            prefix,
            uploads: Some(uploads),
            is_truncated: Some(false),
            ..Default::default()
        };
        Ok(S3Response::new(output))
    }

    #[tracing::instrument]
    async fn list_parts(""")
PATCH
    # Built aside, then renamed over the old binary: tests running meanwhile keep one.
    cargo install --path "$work/s3s-fs" --features binary --locked --root "$work/root"
    mkdir -p "$S3S_FS_ROOT/bin"
    cp "$work/root/bin/s3s-fs" "$S3S_FS_ROOT/bin/s3s-fs.new"
    mv -f "$S3S_FS_ROOT/bin/s3s-fs.new" "$S3S_FS_ROOT/bin/s3s-fs"
    echo "$S3S_FS_PATCHES" >"$S3S_FS_MARKER"
    rm -rf "$work"
else
    log "s3s-fs present in $S3S_FS_ROOT"
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

# playwright-core (no browser download: the console test points it at /usr/bin/chromium)
# in its own folder. 1.65 needs Node 20 or later; Debian 12's own nodejs is 18, so an older
# Node gets 1.56.1 (its package.json asks for node >= 18).
CONSOLE_TEST="$PIER_CACHE/console-test"
node_major="$(node --version 2>/dev/null | sed 's/^v\([0-9]*\).*/\1/')"
if [[ ${node_major:-0} -ge 20 ]]; then
    PLAYWRIGHT_VERSION="${PLAYWRIGHT_VERSION:-1.65.1}"
else
    PLAYWRIGHT_VERSION="${PLAYWRIGHT_VERSION:-1.56.1}"
fi
installed="$(node -p "require('$CONSOLE_TEST/node_modules/playwright-core/package.json').version" 2>/dev/null || true)"
if [[ $installed != "$PLAYWRIGHT_VERSION" ]]; then
    log "installing playwright-core@$PLAYWRIGHT_VERSION into $CONSOLE_TEST"
    mkdir -p "$CONSOLE_TEST"
    (cd "$CONSOLE_TEST" && PLAYWRIGHT_SKIP_BROWSER_DOWNLOAD=1 npm install --no-audit --no-fund --silent \
        "playwright-core@$PLAYWRIGHT_VERSION")
else
    log "playwright-core $PLAYWRIGHT_VERSION present in $CONSOLE_TEST"
fi

# @sigstore/sign and @sigstore/verify for the signature tests, pinned in
# tests/tools/sigstore/package-lock.json (node_modules stays in that folder, untracked).
SIGSTORE_TOOLS="$(cd "$(dirname "$0")/.." && pwd)/tests/tools/sigstore"
if ! cmp -s "$SIGSTORE_TOOLS/package-lock.json" "$SIGSTORE_TOOLS/node_modules/.pier-installed-lock"; then
    log "installing the sigstore test tools into $SIGSTORE_TOOLS/node_modules"
    (cd "$SIGSTORE_TOOLS" && npm ci --no-audit --no-fund --silent &&
        cp package-lock.json node_modules/.pier-installed-lock)
else
    log "sigstore test tools present"
fi

# componentize-py and componentize-js for the Python and JavaScript example plugins
# (plugins/polyglot), pinned; under $PIER_POLYGLOT_DIR (default ~/.cache/pier/polyglot).
log "polyglot plugin toolchains"
"$(cd "$(dirname "$0")/.." && pwd)/plugins/polyglot/install.sh"

log "done"
