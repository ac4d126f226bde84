//! Pier's access-control platform end to end, with real `pier` processes and the real
//! plugins of `plugins/` (built from source by [`pier_e2e::plugins::build`]):
//!
//! - `hostile`: the hostile plugin as authorizer — every misbehaviour (deadline, memory
//!   cap, panic, stack overflow, invalid UTF-8) fails the request closed with 503, is
//!   counted and logged, and the process and the next request are unharmed; files that
//!   are not components are refused at start and by `pier plugin check`.
//! - `reload`: hot reload of the RBAC plugin (file watch, SIGHUP, admin endpoint with a
//!   configuration change, a corrupt file) while a client pulls without a single failure.
//! - `issuer`: an edge Pier trusting a central Pier's token key; skopeo follows the
//!   edge's challenge to the central token endpoint; untrusted keys are refused.
//! - `mirror`: an edge mirror logging in to an authenticated upstream Pier as a robot.
//! - `mirror_access`: access decided on the mirrored content (`?ns=` is no way around it).
//! - `ldap`: logins verified by LDAP simple bind against a real slapd, and an outage.
//!
//! `PIER_SKIP_LINT=1 scripts/test.sh -p pier-e2e --test auth_platform` (needs skopeo,
//! slapd and ldap-utils: scripts/install-test-deps.sh; and the wasm32-wasip2 target).

mod clients_support;

#[path = "auth_platform/context.rs"]
mod context;
#[path = "auth_platform/hostile.rs"]
mod hostile;
#[path = "auth_platform/issuer.rs"]
mod issuer;
#[path = "auth_platform/ldap.rs"]
mod ldap;
#[path = "auth_platform/mirror.rs"]
mod mirror;
#[path = "auth_platform/mirror_access.rs"]
mod mirror_access;
#[path = "auth_platform/polyglot.rs"]
mod polyglot;
#[path = "auth_platform/reload.rs"]
mod reload;
#[path = "auth_platform/startup.rs"]
mod startup;
#[path = "auth_platform/support.rs"]
mod support;
