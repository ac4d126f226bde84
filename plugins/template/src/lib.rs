//! The smallest useful Pier authorizer: copy this crate to start your own.
//!
//! Policy:
//! - everyone, anonymous included, may `pull` and `search`;
//! - the users listed in the config key `admins` (comma separated) may do everything;
//! - everything else is denied;
//! - `authenticate` leaves logins to Pier's own users and robots.
//!
//! Build with `cargo build --release --target wasm32-wasip2`; README.md shows how to
//! check, configure and reload it.

// The generated bindings have a 14-argument function: keep clippy quiet about it.
#![allow(clippy::too_many_arguments)]

// Generates the Rust side of the `authorizer` world in ../../wit: the `Guest` trait we
// implement below, the WIT types (`AccessRequest`, `Decision`, ...), the host
// capabilities as plain functions (`pier::plugin::log::write`, `config::get`, ...) and
// the `export!` macro. When you copy this crate elsewhere, point `path` at your copy of
// Pier's `wit` directory.
wit_bindgen::generate!({
    path: "../../wit",
    world: "authorizer",
});

use std::sync::OnceLock;

// The world already brought AccessRequest, Decision, Credentials, Identity and
// AuthError into scope; the rest of the vocabulary lives in the `types` interface.
use pier::plugin::types::{Action, Subject};
// Host capabilities. Each works only when granted in pier.toml
// (`grants = ["log", "config"]`); otherwise `log` drops lines and `config` is empty.
use pier::plugin::{config, log};

/// The user names from the `admins` config key.
///
/// Pier keeps an instance of the plugin warm and calls it many times, so globals live
/// as long as that instance: read the configuration once, on the first call. (A reload,
/// or a trap, gives you a fresh instance that reads it again.)
fn admins() -> &'static [String] {
    static ADMINS: OnceLock<Vec<String>> = OnceLock::new();
    ADMINS.get_or_init(|| {
        config::get("admins")
            .unwrap_or_default()
            .split(',')
            .map(|s| s.trim().to_owned())
            .filter(|s| !s.is_empty())
            .collect()
    })
}

/// The type the plugin's exports are implemented on; it holds no data.
struct Template;

impl Guest for Template {
    /// Called for every access decision: keep it fast (Pier gives it a deadline, 100 ms
    /// by default) and don't panic (a panic traps: the client gets 503 and Pier
    /// replaces the instance).
    fn authorize(request: AccessRequest) -> Decision {
        let who = match &request.subject {
            Subject::Anonymous => "anonymous",
            Subject::User(user) => user.name.as_str(),
            // Robots log in as `robot$NAME`; `name` is without the prefix.
            Subject::Robot(robot) => robot.name.as_str(),
        };
        let is_admin = matches!(&request.subject, Subject::User(u) if admins().contains(&u.name));
        let decision = if is_admin || matches!(request.action, Action::Pull | Action::Search) {
            Decision::Allow
        } else {
            // The reason is logged and may be shown to the client: keep it short and
            // free of secrets (Pier cuts it at 256 bytes).
            Decision::Deny(format!("{who} may only pull and search"))
        };
        // `repository` is None for system-wide actions (admin: reload, gc, ...).
        let repository = request.repository.as_deref().unwrap_or("-");
        log::write(
            log::Level::Debug,
            &format!("{who} {:?} {repository}: {decision:?}", request.action),
        );
        decision
    }

    /// Only for plugins that check passwords themselves (LDAP, an identity service).
    /// `NotHandled` lets Pier check its own users and robot accounts.
    fn authenticate(_credentials: Credentials) -> Result<Identity, AuthError> {
        Err(AuthError::NotHandled)
    }
}

// Registers `Template` as the implementation of the world's exports.
export!(Template);
