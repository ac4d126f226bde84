//! Pier as a pull-through mirror of a real upstream (Debian's `docker-registry`, the CNCF
//! distribution reference registry, seeded with skopeo), pulled through by real clients:
//! skopeo (cold, warm, upstream down), containerd with a `hosts.toml` mirror (`?ns=`),
//! dockerd with `registry-mirrors`; 50 concurrent cold pulls of one large blob (one
//! upstream GET); a corrupted upstream blob (every client aborted, nothing cached); tag
//! revalidation after the TTL; an index whose children are prefetched; pushes refused on
//! mirrored names and accepted in `local_namespaces`.
//!
//! Needs the binary: `cargo build -p pier-server --bin pier`, then
//! `cargo test -p pier-e2e --test mirror`.

mod clients_support;

#[path = "mirror/blobs.rs"]
mod blobs;
#[path = "mirror/budget.rs"]
mod budget;
#[path = "mirror/fleet.rs"]
mod fleet;
#[path = "mirror/freshness.rs"]
mod freshness;
#[path = "mirror/podman.rs"]
mod podman;
#[path = "mirror/pull.rs"]
mod pull;
#[path = "mirror/push.rs"]
mod push;
#[path = "mirror/support.rs"]
mod support;
#[path = "mirror/warm.rs"]
mod warm;
