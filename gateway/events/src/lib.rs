//! Registry events, the durable outbox and webhook delivery (work in progress).
#![deny(unsafe_code)]
#![deny(rust_2018_idioms)]
