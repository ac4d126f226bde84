//! Tests only: an `authorizer` built against `pier:plugin@0.2.0` that shows what the host
//! tells it of each request. Pulls (and catalog searches) are allowed; anything else is
//! denied with the reason `probe: ACTION route=R method=M tag=T digest=D ua=U` (`-` for
//! none), so a test sees the fields in the client's error.
#![deny(rust_2018_idioms)]

#[cfg(target_arch = "wasm32")]
mod guest {
    wit_bindgen::generate!({
        path: "../../wit",
        world: "authorizer",
    });

    use pier::plugin::types::Action;

    struct Probe;

    fn or_dash(v: &Option<String>) -> &str {
        v.as_deref().unwrap_or("-")
    }

    impl Guest for Probe {
        fn authorize(r: AccessRequest) -> Decision {
            if matches!(r.action, Action::Pull | Action::Search) {
                return Decision::Allow;
            }
            Decision::Deny(format!(
                "probe: {:?} route={:?} method={} tag={} digest={} ua={}",
                r.action,
                r.route,
                or_dash(&r.method),
                or_dash(&r.tag),
                or_dash(&r.digest),
                or_dash(&r.user_agent),
            ))
        }

        fn authenticate(_: Credentials) -> Result<Identity, AuthError> {
            Err(AuthError::NotHandled)
        }
    }

    export!(Probe);
}
