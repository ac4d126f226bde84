//! Helpers shared by the scale-out tests: images with layers of several MiB, and checks
//! of what a client got back and of the bucket's blob keys.

use std::collections::BTreeSet;
use std::path::Path;
use std::time::{Duration, Instant};

use serde_json::json;

use crate::clients_support::*;

/// gzip at level 1 (`gzip -n -1`: deterministic, and fast on incompressible layers).
pub fn gzip_fast(data: &[u8]) -> Vec<u8> {
    gzip_level(data, 1)
}

/// An OCI image whose layer `i` is a gzip tar holding `sizes[i]` random bytes (random
/// data does not compress: a layer blob is a little larger than its size).
pub fn big_image(tag: &str, sizes: &[usize]) -> TestImage {
    let salt = hex::encode(unique_bytes(8));
    let mut layers = Vec::new();
    let mut diff_ids = Vec::new();
    for (i, size) in sizes.iter().enumerate() {
        let tar = Tar::new()
            .dir("data")
            .file(&format!("data/layer-{i}-{salt}.bin"), &unique_bytes(*size))
            .finish();
        diff_ids.push(format!("sha256:{}", sha256_hex(&tar)));
        let gz = gzip_fast(&tar);
        let d = format!("sha256:{}", sha256_hex(&gz));
        layers.push((gz, d));
    }
    let config = serde_json::to_vec(&json!({
        "architecture": oci_arch(),
        "os": "linux",
        "created": "2024-01-01T00:00:00Z",
        "config": { "Cmd": ["/bin/true"], "Labels": { "pier.test.salt": salt } },
        "rootfs": { "type": "layers", "diff_ids": diff_ids },
    }))
    .unwrap();
    let config_digest = format!("sha256:{}", sha256_hex(&config));
    let manifest = serde_json::to_vec(&json!({
        "schemaVersion": 2,
        "mediaType": OCI_MANIFEST,
        "config": { "mediaType": OCI_CONFIG, "digest": config_digest, "size": config.len() },
        "layers": layers.iter().map(|(gz, d)| json!({"mediaType": OCI_LAYER_GZIP, "digest": d, "size": gz.len()})).collect::<Vec<_>>(),
    }))
    .unwrap();
    let manifest_digest = format!("sha256:{}", sha256_hex(&manifest));
    TestImage {
        tag: tag.to_owned(),
        manifest,
        manifest_digest,
        config,
        config_digest,
        layers,
    }
}

/// Writes `img` as an OCI layout in the skopeo's dir and returns `oci:DIR:TAG`.
pub fn oci_source(sk: &Skopeo, img: &TestImage, name: &str) -> String {
    let layout = sk.dir.path().join(format!("layout-{name}"));
    img.write_oci_layout(&layout);
    format!("oci:{}:{}", layout.display(), img.tag)
}

/// `skopeo inspect --raw` of `reference` (`HOST/NAME:TAG`): the manifest's digest.
#[track_caller]
pub fn inspect_raw_digest(sk: &Skopeo, reference: &str) -> String {
    let o = sk.ok(
        &[
            "inspect",
            "--raw",
            "--tls-verify=false",
            &format!("docker://{reference}"),
        ],
        &format!("skopeo inspect --raw {reference}"),
    );
    format!("sha256:{}", sha256_hex(o.stdout.as_bytes()))
}

/// The digests (`sha256:<hex>`) of every blob key in a blob store.
pub fn stored_blob_digests(files: &[std::path::PathBuf], blobs: &Path) -> BTreeSet<String> {
    files
        .iter()
        .filter_map(|f| {
            let rel = f.strip_prefix(blobs).ok()?;
            let parts: Vec<String> = rel
                .components()
                .map(|c| c.as_os_str().to_string_lossy().into_owned())
                .collect();
            (parts.len() == 4).then(|| format!("{}:{}", parts[0], parts[2]))
        })
        .collect()
}

/// Prints how long a step took (visible with `--nocapture`).
pub fn timed<T>(what: &str, f: impl FnOnce() -> T) -> T {
    let t = Instant::now();
    let v = f();
    eprintln!("[scaleout] {what}: {:.1?}", t.elapsed());
    v
}

/// Polls `f` for at most 2 s: what the bus announces arrives in milliseconds, well under
/// the 5 s tag cache a node would otherwise keep.
pub fn within_2s(mut f: impl FnMut() -> bool) -> bool {
    let start = Instant::now();
    while start.elapsed() < Duration::from_secs(2) {
        if f() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    false
}
