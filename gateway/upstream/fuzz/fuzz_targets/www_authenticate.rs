#![no_main]
//! Any `WWW-Authenticate` value an upstream may send: parses without panicking, and every
//! challenge it finds names a scheme in lowercase with lowercase parameter names.
use libfuzzer_sys::fuzz_target;
use pier_upstream::challenge;

fuzz_target!(|data: &[u8]| {
    // Header values reach the parser only through `HeaderValue::to_str`: visible ASCII;
    // the lossy form also covers what a more lenient caller might pass.
    let header = String::from_utf8_lossy(data);
    for c in challenge::parse(&header) {
        assert!(!c.scheme.is_empty());
        assert_eq!(c.scheme, c.scheme.to_ascii_lowercase());
        for (name, _) in &c.params {
            assert_eq!(*name, name.to_ascii_lowercase());
        }
    }
});
