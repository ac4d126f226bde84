//! A notifier and a replicator that spin, eat memory, panic, overflow the stack or
//! return errors (`plugins/hostile-events`, picked by the pushed repository's first
//! component) never fail a push; the failures show in the metrics, and a well-behaved
//! notifier configured after them still delivers every event.

use std::time::Duration;

use pier_e2e::{TestPier, push_image, random_bytes, wait_until};

use crate::support::*;

const REPOS: [&str; 6] = [
    "loop/app",
    "membomb/app",
    "panic/app",
    "stack/app",
    "error/app",
    "team/app",
];

#[test]
fn hostile_notifier_and_replicator_never_fail_a_push() {
    let site_b = TestPier::start();
    let receiver = Receiver::start();
    let config = base_config("", &[("site-b", site_b.url())])
        + &hostile("hostile-notify", "notifier")
        + &hostile("hostile-replicate", "replicator")
        + &webhook("webhook", &[receiver.url("/hooks")]);
    let mut site = start_site(&config);

    let mut pushed = Vec::new();
    for round in 0..2 {
        for repo in REPOS {
            // push_image asserts every blob and manifest answer (201).
            let img = push_image(
                site.addr,
                repo,
                Some(&format!("r{round}")),
                &[&random_bytes(1024)],
            );
            pushed.push(img.digest);
        }
    }
    assert!(site.is_running(), "pier died:\n{}", site.log_tail(40));

    // The well-behaved notifier delivers every push, signed.
    let delivered = |d: &String| {
        receiver
            .hooks()
            .iter()
            .any(|h| h.answered == 200 && h.digest() == *d)
    };
    assert!(
        wait_until(Duration::from_secs(90), Duration::from_millis(100), || {
            pushed.iter().all(delivered)
        }),
        "the webhook beside the hostile plugins missed events: {} of {} delivered\n{}",
        pushed.iter().filter(|d| delivered(d)).count(),
        pushed.len(),
        site.log_tail(40)
    );
    for h in receiver.hooks() {
        assert_eq!(verify_hook(&h, SECRET), Ok(()));
    }

    // Each misbehaviour was caught and counted, for both hooks.
    for plugin in ["hostile-notify", "hostile-replicate"] {
        for (kind, at_least) in [
            ("timeout", 2.0),
            ("out_of_memory", 2.0),
            ("trap", 4.0),
            ("unavailable", 2.0),
        ] {
            let series = format!("pier_plugin_errors_total{{plugin=\"{plugin}\",kind=\"{kind}\"}}");
            let n = metric(&site, &series);
            assert!(
                n >= at_least,
                "{series} is {n}, expected at least {at_least}\n{}",
                pier_e2e::http::get(site.admin_addr, "/metrics").text()
            );
        }
    }

    // The replicator's normal answer (after all those traps) still became a job.
    for round in ["r0", "r1"] {
        wait_succeeded(&site, "site-b", "team/app", round, Duration::from_secs(120));
    }
    assert!(manifest_digest(site_b.addr, "team/app", "r1").is_some());
    assert!(site.is_running());
}
