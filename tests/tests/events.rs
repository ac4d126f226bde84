//! Events, webhooks and replication between sites, end to end: real `pier` processes
//! configured with the `replicate` and `webhook` plugins (built from source), real
//! clients (dockerd, skopeo), CNCF distribution (`docker-registry`) as a second target,
//! a webhook receiver and a connection-cutting proxy written here.
//!
//! - `sites`: docker and skopeo (`--all`, a two-platform index) push to site A; the
//!   images reach site B and docker-registry with the same digests; a referrer reaches
//!   B's referrers API.
//! - `resume`: B down during pushes (jobs retry, then complete); an upload cut
//!   mid-chunk by the proxy resumes instead of starting again; a job running when A is
//!   killed with SIGKILL runs again after the restart (once); a target that is down does
//!   not hold back the jobs of another.
//! - `webhooks`: every event delivered with a valid HMAC signature; kill -9 between
//!   push and delivery, then restart: delivered, one idempotency key per manifest and
//!   endpoint, also for `pier events redeliver`.
//! - `guards`: notifiers without the `http` grant or outside their `allowed_hosts` make
//!   Pier post nothing, forged headers are never sent; each endpoint verifies with its
//!   own secret (docs/webhooks.md's Python and openssl snippets, run as written) and a
//!   replay to another fails; a replication job's event goes to the source project.
//! - `hostile`: a notifier and a replicator that spin, eat memory, panic or fail never
//!   fail a push; a well-behaved notifier beside them still delivers.
//! - `cli`: `pier replication jobs` / `pier replication retry ID` on a failed job.
//!
//! Needs the binary (`cargo build -p pier-server`), the wasm32-wasip2 target, dockerd,
//! skopeo and docker-registry (`scripts/install-test-deps.sh`); then
//! `cargo test -p pier-e2e --test events`.

mod clients_support;

#[path = "events/cli.rs"]
mod cli;
#[path = "events/deletes.rs"]
mod deletes;
#[path = "events/guards.rs"]
mod guards;
#[path = "events/hostile.rs"]
mod hostile;
#[path = "events/resume.rs"]
mod resume;
#[path = "events/sites.rs"]
mod sites;
#[allow(dead_code)]
#[path = "events/support.rs"]
mod support;
#[path = "events/webhooks.rs"]
mod webhooks;

#[test]
fn hmac_matches_rfc4231_case_2() {
    assert_eq!(
        hex::encode(support::hmac_sha256(
            b"Jefe",
            b"what do ya want for nothing?"
        )),
        "5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843"
    );
}
