//! A misbehaving authorizer for the plugin host's tests (`tests/tests/plugin_host.rs`).
//! Never deploy it. `authorize` misbehaves according to the repository's first path
//! component and allows everything else; `authenticate` is not handled.
//!
//! | repository   | behaviour                                                  |
//! |--------------|------------------------------------------------------------|
//! | `loop/...`   | spins forever (the deadline must stop it)                  |
//! | `membomb/..` | allocates and touches memory until it dies (memory cap)    |
//! | `panic/...`  | panics (traps)                                             |
//! | `stack/...`  | unbounded recursion (stack overflow)                       |
//! | `garbage/..` | denies with a reason that is not UTF-8 (invalid result)    |
//! | `bigreason/` | denies with a 1 MiB reason full of control characters      |
//! | `slow/...`   | spins for about 30 ms, then allows                         |
//!
//! `authenticate` as `http` or `http-crlf` GETs the URL in the password through
//! `http-outbound` (with a header `x-probe`, whose value carries CR LF for `http-crlf`)
//! and answers the identity `"STATUS BODY"`, or `unavailable` with the error.
#![deny(rust_2018_idioms)]
// The generated bindings have a 14-argument function.
#![allow(clippy::too_many_arguments)]

wit_bindgen::generate!({
    path: "../../wit",
    world: "authorizer",
});

// The misbehaviours, shared with `hostile-events` (the notifier/replicator variant).
mod misbehave;

use misbehave::{eat_memory, recurse, spin_for, spin_forever};
use std::hint::black_box;
use std::time::Duration;

struct Hostile;

impl Guest for Hostile {
    fn authorize(request: AccessRequest) -> Decision {
        let repo = request.repository.unwrap_or_default();
        let prefix = repo.split('/').next().unwrap_or_default();
        match prefix {
            "loop" => spin_forever(),
            "membomb" => eat_memory(),
            "panic" => panic!("hostile plugin panics on {repo}"),
            "stack" => {
                black_box(recurse(0));
                Decision::Allow
            }
            "garbage" => {
                // SAFETY: deliberately not UTF-8: the host must refuse to lift it.
                let s = unsafe { String::from_utf8_unchecked(vec![0xff, 0xfe, 0xfd]) };
                Decision::Deny(s)
            }
            "bigreason" => {
                let mut s = String::with_capacity(1 << 20);
                while s.len() < 1 << 20 {
                    s.push_str("denied\u{0}\u{7}\r\n\u{1b}[31m\t");
                }
                Decision::Deny(s)
            }
            "slow" => {
                spin_for(Duration::from_millis(30));
                Decision::Allow
            }
            _ => Decision::Allow,
        }
    }

    fn authenticate(credentials: Credentials) -> Result<Identity, AuthError> {
        use pier::plugin::http_outbound;
        let probe = match credentials.username.as_str() {
            "http" => "1",
            "http-crlf" => "1\r\nx-injected: 1",
            _ => return Err(AuthError::NotHandled),
        };
        let req = http_outbound::Request {
            method: "GET".into(),
            url: credentials.password,
            headers: vec![("x-probe".into(), probe.into())],
            body: Vec::new(),
        };
        match http_outbound::send(&req) {
            Ok(r) => Ok(Identity {
                name: format!("{} {}", r.status, String::from_utf8_lossy(&r.body)),
                groups: Vec::new(),
            }),
            Err(e) => Err(AuthError::Unavailable(format!("{e:?}"))),
        }
    }
}

export!(Hostile);
