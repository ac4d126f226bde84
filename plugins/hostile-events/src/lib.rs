//! A misbehaving notifier *and* replicator for the plugin host's tests
//! (`tests/tests/plugin_events.rs`): it exports both worlds, so it loads as either.
//! Never deploy it. `notify` and `on-event` misbehave according to the event's
//! repository's first path component and otherwise answer one delivery / one action
//! for the repository:
//!
//! | repository   | behaviour                                                  |
//! |--------------|------------------------------------------------------------|
//! | `loop/...`   | spins forever (the deadline must stop it)                  |
//! | `membomb/..` | allocates and touches memory until it dies (memory cap)    |
//! | `panic/...`  | panics (traps)                                             |
//! | `stack/...`  | unbounded recursion (stack overflow)                       |
//! | `error/...`  | returns `err(...)` (the plugin's own error)                |
//! | `flood/...`  | 1,000 deliveries / 2,000 actions (over the host's caps)    |
//! | `badurl/...` | a delivery to an `ftp://` URL / an action without a target |
//! | `slow/...`   | spins for about 30 ms, then answers                        |
//!
//! `on-tick(n)`: 1 spins forever, 2 eats memory, 3 panics, 4 returns an error,
//! anything else returns no actions.
#![deny(rust_2018_idioms)]

// A world of its own with the exports of both hooks (the `pier:plugin` package has no
// such world: real plugins implement one hook each). WIT can't `include` both worlds
// (each `use`s `event`), so the exports are spelled out: they must stay identical to
// wit/notifier.wit and wit/replicator.wit.
wit_bindgen::generate!({
    inline: "
        package pier:hostile-events;
        world hostile-events {
            use pier:plugin/types@0.1.0.{event, delivery, replication-action};
            import pier:plugin/config@0.1.0;
            export notify: func(event: event) -> result<list<delivery>, string>;
            export on-event: func(event: event) -> result<list<replication-action>, string>;
            export on-tick: func(unix-secs: u64) -> result<list<replication-action>, string>;
        }
    ",
    path: "../../wit/v0.1.0",
    generate_all,
});

#[path = "../../hostile/src/misbehave.rs"]
mod misbehave;

use std::hint::black_box;
use std::time::Duration;

use misbehave::{eat_memory, recurse, spin_for, spin_forever};
use pier::plugin::types::ReplicationDirection;

struct HostileEvents;

/// Misbehaves as the first path component of `repository` asks, or returns which
/// odd answer to give (`flood`, `badurl`), or none for a normal one.
fn misbehave(repository: &str) -> Result<Option<&'static str>, String> {
    match repository.split('/').next().unwrap_or_default() {
        "loop" => spin_forever(),
        "membomb" => eat_memory(),
        "panic" => panic!("hostile-events plugin panics on {repository}"),
        "stack" => {
            black_box(recurse(0));
            Ok(None)
        }
        "error" => Err(format!("hostile-events refuses {repository}")),
        "flood" => Ok(Some("flood")),
        "badurl" => Ok(Some("badurl")),
        "slow" => {
            spin_for(Duration::from_millis(30));
            Ok(None)
        }
        "forge" => Ok(Some("forge")),
        _ => Ok(None),
    }
}

fn action(repository: &str, target: &str) -> ReplicationAction {
    ReplicationAction {
        direction: ReplicationDirection::Push,
        target: target.to_owned(),
        source_repository: repository.to_owned(),
        destination_repository: repository.to_owned(),
        tags: vec!["*".to_owned()],
        digest: None,
        delete: false,
    }
}

impl Guest for HostileEvents {
    fn notify(event: Event) -> Result<Vec<Delivery>, String> {
        let odd = misbehave(&event.repository)?;
        let base = pier::plugin::config::get("url").unwrap_or_else(|| "http://hostile.test".into());
        let url = match odd {
            Some("badurl") => "ftp://hostile.test/".to_owned(),
            _ => format!("{}/{}", base.trim_end_matches('/'), event.repository),
        };
        let one = Delivery {
            url,
            headers: vec![("x-event".to_owned(), event.id.to_string())],
            body: event.cloudevent.into_bytes(),
        };
        let with = |headers: &[(&str, &str)]| Delivery {
            headers: headers
                .iter()
                .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
                .collect(),
            ..one.clone()
        };
        match odd {
            Some("forge") => Ok(vec![
                with(&[
                    ("X-Pier-Signature", "sha256=forged"),
                    ("X-Pier-Timestamp", "1"),
                ]),
                with(&[("Host", "elsewhere.test")]),
                with(&[("X-Note", "a\r\nX-Pier-Signature: sha256=forged")]),
            ]),
            // small ones: over the host's count cap, well under the memory cap
            Some("flood") => Ok(vec![
                Delivery {
                    body: Vec::new(),
                    ..one
                };
                1_000
            ]),
            _ => Ok(vec![one]),
        }
    }

    fn on_event(event: Event) -> Result<Vec<ReplicationAction>, String> {
        match misbehave(&event.repository)? {
            Some("flood") => Ok(vec![action(&event.repository, "t"); 2_000]),
            Some(_) => Ok(vec![action(&event.repository, "")]),
            None => Ok(vec![action(&event.repository, "site-b")]),
        }
    }

    fn on_tick(unix_secs: u64) -> Result<Vec<ReplicationAction>, String> {
        match unix_secs {
            1 => spin_forever(),
            2 => eat_memory(),
            3 => panic!("hostile-events plugin panics on tick {unix_secs}"),
            4 => Err("hostile-events refuses tick 4".to_owned()),
            _ => Ok(Vec::new()),
        }
    }
}

export!(HostileEvents);
