//! The replication executor: copies images (manifests, their blobs, the children of an
//! index and the referrers of every manifest) from a [`Source`] to a [`Destination`].
//!
//! - [`copy_image`] copies one reference: HEAD first to skip what the destination has,
//!   cross-repository mounts when a candidate repository may hold a blob, chunked
//!   uploads that resume from the registry's acknowledged offset, a few blobs at a time;
//!   subjects before their referrers, the tag last; every byte moved is hashed.
//! - [`RemoteSource`] and [`RemoteDestination`] speak the OCI distribution API through
//!   [`pier_upstream::UpstreamClient`]; the server implements both traits over its
//!   storage (pull mode writes to the local store, push mode reads from it).
//! - [`RateLimiter`] bounds the bytes per second to one destination, shared by all of
//!   its transfers.
//! - [`run_with_retries`] and [`JobRunner`] retry a whole job with backoff until it
//!   succeeds, fails for good or runs out of attempts, recording each job in a
//!   [`JobLog`] ([`JsonlJobLog`] keeps it on disk).
#![forbid(unsafe_code)]
#![deny(rust_2018_idioms)]

mod copy;
mod endpoint;
mod error;
mod joblog;
mod limit;
mod remote;
mod retry;

pub use copy::{
    CopyFailed, CopyOptions, JobReport, Meter, MountHints, copy_image, sync_repositories,
};
pub use endpoint::{BlobOpener, BlobTransfer, Destination, Source, SourceBlob, SourceManifest};
pub use error::{ReplicateError, Side};
pub use joblog::{JobId, JobLog, JobLogLine, JobRecord, JobRunner, JobSpec, JobState, JsonlJobLog};
pub use limit::RateLimiter;
pub use remote::{RemoteDestination, RemoteSource, UploadOptions};
pub use retry::{RetryPolicy, run_with_retries};

/// A stream of blob bytes.
pub type ByteStream = pier_upstream::ByteStream;
