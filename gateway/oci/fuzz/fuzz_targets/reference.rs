#![no_main]
use libfuzzer_sys::fuzz_target;
use pier_oci::{Reference, RepoName};

fuzz_target!(|s: &str| {
    if let Ok(n) = s.parse::<RepoName>() {
        assert!(n.components().all(|c| !c.is_empty() && c != "." && c != ".."));
        assert_eq!(n.as_str(), s);
    }
    if let Ok(r) = s.parse::<Reference>() {
        assert_eq!(r.to_string(), s);
    }
});
