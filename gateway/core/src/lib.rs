//! Pier's use cases, over the storage roles: what a push, a pull, a delete, a listing and a
//! garbage collection mean, independent of HTTP.
#![forbid(unsafe_code)]
#![deny(rust_2018_idioms)]

pub mod admission;
mod error;
pub mod fleet;
pub mod gc;
mod histogram;
pub mod lease;
pub mod mirror;
mod page;
pub mod quota;
mod registry;
mod timings;

pub use admission::{Caller, Gate};
pub use error::{CoreError, Result};
pub use histogram::AtomicHistogram;
pub use lease::{Leases, MemoryLeases};
pub use mirror::{FillObserver, Mirror, MirrorBlob, MirrorConfig, Place, Target, UpstreamSpec};
pub use page::{Page, paginate};
pub use registry::{Change, ChangeSink, ManifestContent, PutManifest, Registry, Stores};
pub use timings::StorageTimings;

/// Waits at fail point `name` when the process's `FAILPOINTS` sets it to `return(MS)`: MS
/// milliseconds (1000 without a number), without blocking a runtime thread, so that other
/// tasks (a fill's clients, the other nodes) keep running. The tests pause here to hold a
/// step at the exact moment they claim.
#[cfg(feature = "failpoints")]
pub(crate) async fn fail_pause(name: &str) {
    if let Some(ms) = fail::eval(name, |ms| {
        ms.and_then(|ms| ms.parse::<u64>().ok()).unwrap_or(1000)
    }) {
        tokio::time::sleep(std::time::Duration::from_millis(ms)).await;
    }
}
