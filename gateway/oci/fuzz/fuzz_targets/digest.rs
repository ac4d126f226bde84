#![no_main]
use libfuzzer_sys::fuzz_target;
use pier_oci::Digest;

fuzz_target!(|s: &str| {
    if let Ok(d) = s.parse::<Digest>() {
        // A valid digest prints back as it was read and is safe as a path component.
        assert_eq!(d.to_string(), s);
        assert!(!d.hex().contains('/') && !d.hex().contains('.'));
    }
});
