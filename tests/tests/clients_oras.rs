//! The ORAS Python SDK (PyPI `oras`) against a real Pier: a chunked artifact push
//! (POST, PATCH with Content-Range per chunk, PUT ?digest=), tags, pull back, delete.
//!
//! The SDK lives in the venv that scripts/install-test-deps.sh creates; the interpreter is
//! `$PIER_PYTHON`, else `${PIER_CACHE:-$HOME/.cache/pier}/venv/bin/python`.

mod clients_support;

use std::fs;
use std::path::PathBuf;
use std::process::Command;

use clients_support::*;
use pier_e2e::TestPier;
use serde_json::Value;

/// Pushes the given files (relative to the cwd) as one artifact with chunked uploads,
/// tags it more, lists tags, pulls it back, deletes one tag; prints a JSON report.
const SCRIPT: &str = r#"
import json, os, sys
import oras.client

host, repo, chunk = sys.argv[1], sys.argv[2], int(sys.argv[3])
files = sys.argv[4:]
client = oras.client.OrasClient(hostname=host, insecure=True)

counts = {}
ranges = []
orig = client.session.request
def counting(method, url, *a, **kw):
    m = method.upper()
    counts[m] = counts.get(m, 0) + 1
    if m == "PATCH":
        ranges.append((kw.get("headers") or {}).get("Content-Range"))
    return orig(method, url, *a, **kw)
client.session.request = counting

target = f"{host}/{repo}:v1"
res = client.push(
    target=target,
    files=[f + ":application/vnd.pier.test.file.v1" for f in files],
    manifest_annotations={"org.opencontainers.image.description": "pier oras e2e"},
    do_chunked=True,
    chunk_size=chunk,
    quiet=True,
)
assert res.status_code == 201, (res.status_code, res.text)
digest = res.headers.get("Docker-Content-Digest")
patches = counts.get("PATCH", 0)

# More tags: every blob is already there (HEAD), only the manifest is PUT. v3 is
# another artifact (only the last file), so deleting it leaves v1 and v2.
for t, fs in (("v2", files), ("v3", files[-1:])):
    r = client.push(target=f"{host}/{repo}:{t}", files=[f + ":application/vnd.pier.test.file.v1" for f in fs],
                    manifest_annotations={"org.opencontainers.image.description": "pier oras e2e"},
                    do_chunked=True, chunk_size=chunk, quiet=True)
    assert r.status_code == 201, (r.status_code, r.text)
tags = client.get_tags(f"{host}/{repo}")
manifest = client.get_manifest(target)
out = os.path.abspath("pulled")
pulled = client.pull(target=target, outdir=out)
client.delete_tag(f"{host}/{repo}", "v3")
tags_after = client.get_tags(f"{host}/{repo}")
print(json.dumps({
    "digest": digest, "patches": patches, "ranges": ranges, "counts": counts,
    "tags": tags, "tags_after": tags_after, "manifest": manifest, "pulled": pulled,
}))
"#;

#[test]
fn oras_sdk_chunked_push_and_pull() {
    let py = oras_python();
    let pier = TestPier::start();
    let dir = temp_dir("oras");
    let work = dir.path();
    // 5.5 MiB in 1 MiB chunks: five full chunks and a short one; plus a small file.
    let big = unique_bytes(5 * 1024 * 1024 + 512 * 1024 + 7);
    let small = b"hello from the oras SDK\n".to_vec();
    fs::write(work.join("big.bin"), &big).unwrap();
    fs::write(work.join("small.txt"), &small).unwrap();
    fs::write(work.join("push.py"), SCRIPT).unwrap();

    let o = run_ok(
        Command::new(&py)
            .current_dir(work)
            .env("PYTHONDONTWRITEBYTECODE", "1")
            .arg("push.py")
            .arg(pier.host())
            .arg("oras/artifacts/demo")
            .arg((1024 * 1024).to_string())
            .arg("big.bin")
            .arg("small.txt"),
        CMD_TIMEOUT,
        "oras SDK push/pull script",
    );
    let line = o
        .stdout
        .lines()
        .rev()
        .find(|l| l.starts_with('{'))
        .unwrap_or_default();
    let v: Value =
        serde_json::from_str(line).unwrap_or_else(|e| panic!("no JSON report ({e})\n{o}"));

    // Chunked: 6 PATCHes for big.bin and 1 for small.txt, contiguous Content-Ranges.
    assert_eq!(v["patches"], 7, "PATCH requests\n{v:#}");
    let ranges: Vec<&str> = v["ranges"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r.as_str().unwrap())
        .collect();
    assert_eq!(ranges[0], "0-1048575");
    assert_eq!(ranges[5], format!("5242880-{}", big.len() - 1));

    // The manifest as pushed, stored and served.
    let manifest = &v["manifest"];
    let layers = manifest["layers"].as_array().expect("layers");
    assert_eq!(layers.len(), 2);
    assert_eq!(layers[0]["digest"], pier_e2e::sha256_digest(&big));
    assert_eq!(layers[0]["size"], big.len());
    assert_eq!(layers[0]["mediaType"], "application/vnd.pier.test.file.v1");
    assert_eq!(layers[1]["digest"], pier_e2e::sha256_digest(&small));
    let digest = v["digest"]
        .as_str()
        .expect("Docker-Content-Digest of the push");
    let r = get_manifest(pier.addr, "oras/artifacts/demo", "v1");
    r.expect_status(200, "GET the pushed manifest");
    assert_eq!(pier_e2e::sha256_digest(&r.body), digest);
    assert_eq!(r.json(), *manifest);

    // Blobs served byte for byte, and pulled files identical.
    let b = pier.get(&format!(
        "/v2/oras/artifacts/demo/blobs/{}",
        pier_e2e::sha256_digest(&big)
    ));
    b.expect_status(200, "GET the chunk-uploaded blob");
    assert!(b.body == big, "blob bytes differ from the chunked upload");
    let pulled: Vec<PathBuf> = v["pulled"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| PathBuf::from(p.as_str().unwrap()))
        .collect();
    assert_eq!(pulled.len(), 2, "pulled files\n{v:#}");
    assert_eq!(
        fs::read(work.join("pulled/big.bin")).unwrap(),
        big,
        "pulled big.bin"
    );
    assert_eq!(
        fs::read(work.join("pulled/small.txt")).unwrap(),
        small,
        "pulled small.txt"
    );

    // Tags before and after deleting v3.
    let mut tags: Vec<&str> = v["tags"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t.as_str().unwrap())
        .collect();
    tags.sort();
    assert_eq!(tags, ["v1", "v2", "v3"]);
    let mut tags: Vec<&str> = v["tags_after"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t.as_str().unwrap())
        .collect();
    tags.sort();
    assert_eq!(tags, ["v1", "v2"], "tags after delete_tag(v3)");
}
