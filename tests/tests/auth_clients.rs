//! Real registry clients against Pier with Docker token auth and the RBAC plugin: the
//! runnable example of `deploy/examples/rbac` (users admin, alice, bob, carol; robot
//! `robot$ci`; private project `team`, public `library`), the plugin built from source
//! by [`pier_e2e::plugins::build`]. skopeo, docker, podman and containerd log in, push,
//! pull and delete as each role and are refused the rest; the catalog is filtered per
//! caller; tokens expire and are refreshed, refresh tokens end with the password or
//! secret that minted them; robots and users made with the CLI take effect on the running
//! server.
//!
//! Needs the binary and the clients: `PIER_SKIP_LINT=1 scripts/test.sh -p pier-e2e --test
//! auth_clients` (or `cargo build -p pier-server --bin pier`, then `cargo test -p
//! pier-e2e --test auth_clients`; the wasm32-wasip2 target must be installed).

mod clients_support;

#[path = "auth_clients/accounts.rs"]
mod accounts;
#[path = "auth_clients/catalog.rs"]
mod catalog;
#[path = "auth_clients/containerd.rs"]
mod containerd;
#[path = "auth_clients/docker.rs"]
mod docker;
#[path = "auth_clients/expiry.rs"]
mod expiry;
#[path = "auth_clients/podman.rs"]
mod podman;
#[path = "auth_clients/refresh.rs"]
mod refresh;
#[path = "auth_clients/revoke.rs"]
mod revoke;
#[path = "auth_clients/skopeo.rs"]
mod skopeo;
#[path = "auth_clients/support.rs"]
mod support;
#[path = "auth_clients/throttle.rs"]
mod throttle;
