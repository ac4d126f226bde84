#![no_main]
use libfuzzer_sys::fuzz_target;
use pier_oci::Manifest;

fuzz_target!(|data: &[u8]| {
    if let Ok(m) = Manifest::parse(data, None) {
        // Whatever parses names only valid digests and a known kind.
        for d in m.blob_references().chain(m.manifests.iter()) {
            assert!(d.digest.to_string().contains(':'));
        }
        let _ = m.effective_artifact_type();
    }
});
