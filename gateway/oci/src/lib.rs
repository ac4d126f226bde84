//! OCI vocabulary for Pier: validated identifiers (digests, repository names, tags,
//! references), manifest parsing and validation, and the OCI error codes with their
//! HTTP statuses. Nothing here does I/O.
#![forbid(unsafe_code)]
#![deny(rust_2018_idioms)]

mod digest;
mod error;
mod manifest;
mod name;
mod resumable;

pub use digest::{Algorithm, Digest, DigestError, Hasher};
pub use error::ErrorCode;
pub use manifest::{
    Descriptor, MAX_MANIFEST_SIZE, Manifest, ManifestError, ManifestKind, media_types,
};
pub use name::{NameError, Reference, RepoName, Tag};
pub use resumable::{ResumableHasher, StateError};
