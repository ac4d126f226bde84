//! The replication executor (work in progress).
#![deny(unsafe_code)]
#![deny(rust_2018_idioms)]
