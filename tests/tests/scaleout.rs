//! Pier scaled out: three `pier serve` nodes on one S3 bucket (s3s-fs) sharing state
//! through Redis, behind Debian's nginx round robin — the deployment of
//! `deploy/examples/ha`, its configs generated from the shipped templates. Real clients
//! push through the load balancer and read back from each node; a chunked upload hops
//! between nodes; a node is killed with SIGKILL mid-push; 30 cold mirror pulls over the
//! three nodes fetch the blob from the upstream once; Redis goes down; a project member
//! added through one node's admin API may push on every node at once; a pull served by one
//! node shows as the tag's last pull on every node.
//!
//! Needs the binary (`cargo build -p pier-server --bin pier`), s3s-fs, redis-server,
//! nginx, skopeo, dockerd and docker-registry (`scripts/install-test-deps.sh`); then
//! `cargo test -p pier-e2e --test scaleout`.

mod clients_support;

#[allow(dead_code)]
#[path = "auth_clients/support.rs"]
mod auth_support;

#[path = "scaleout/activity.rs"]
mod activity;
#[path = "scaleout/caches.rs"]
mod caches;
#[path = "scaleout/clients.rs"]
mod clients;
#[path = "scaleout/cluster.rs"]
mod cluster;
#[path = "scaleout/crash.rs"]
mod crash;
#[path = "scaleout/gc.rs"]
mod gc;
#[path = "scaleout/interop.rs"]
mod interop;
#[path = "scaleout/mirror.rs"]
mod mirror;
#[allow(dead_code)]
#[path = "mirror/support.rs"]
mod mirror_support;
#[path = "scaleout/projects.rs"]
mod projects;
#[path = "scaleout/quotas.rs"]
mod quotas;
#[path = "scaleout/readiness.rs"]
mod readiness;
#[path = "scaleout/redis_down.rs"]
mod redis_down;
#[path = "scaleout/sentinel.rs"]
mod sentinel;
#[path = "scaleout/support.rs"]
mod support;
#[path = "scaleout/uploads.rs"]
mod uploads;
