#![no_main]
use libfuzzer_sys::fuzz_target;
use pier_http::range::{parse_content_range, parse_range};

fuzz_target!(|s: &str| {
    if let Ok(Some(r)) = parse_range(s) {
        for size in [0u64, 1, 10, u64::MAX] {
            if let Some((a, b)) = r.resolve(size) {
                assert!(a <= b && b < size);
            }
        }
    }
    if let Ok((a, b)) = parse_content_range(s) {
        assert!(a <= b);
    }
});
