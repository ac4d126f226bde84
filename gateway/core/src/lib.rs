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
