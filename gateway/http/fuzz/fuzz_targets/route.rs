#![no_main]
use libfuzzer_sys::fuzz_target;
use pier_http::route::parse;

fuzz_target!(|path: &str| {
    if let Ok(route) = parse(path)
        && let Some(name) = route.repository()
    {
        // No route may name a repository that escapes the storage root.
        assert!(name.components().all(|c| !c.is_empty() && c != "." && c != ".."));
        assert!(!name.as_str().contains('%'));
    }
});
