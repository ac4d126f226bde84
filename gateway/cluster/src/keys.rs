//! Every key and channel Pier writes to Redis, in one place. The layout table is on
//! [`Shared`](crate::Shared) (public docs); change both together.
//!
//! Each operation and each Lua script touches exactly one key, so everything works on Redis
//! Cluster without hash tags.

#[derive(Debug, Clone)]
pub(crate) struct Keys {
    prefix: String,
}

pub(crate) const SESSION: &str = "session:";

impl Keys {
    pub(crate) fn new(prefix: &str) -> Self {
        Self {
            prefix: prefix.to_owned(),
        }
    }

    pub(crate) fn lease(&self, name: &str) -> String {
        format!("{}lease:{name}", self.prefix)
    }

    pub(crate) fn session(&self, id: &str) -> String {
        format!("{}{SESSION}{id}", self.prefix)
    }

    /// The session id of a session key, if `key` is one.
    pub(crate) fn session_id<'k>(&self, key: &'k str) -> Option<&'k str> {
        key.strip_prefix(self.prefix.as_str())?
            .strip_prefix(SESSION)
    }

    /// `SCAN MATCH` pattern of every session key (glob characters of the prefix escaped).
    pub(crate) fn session_pattern(&self) -> String {
        let mut p = String::with_capacity(self.prefix.len() + SESSION.len() + 1);
        for c in self.prefix.chars().chain(SESSION.chars()) {
            if matches!(c, '*' | '?' | '[' | ']' | '\\') {
                p.push('\\');
            }
            p.push(c);
        }
        p.push('*');
        p
    }

    pub(crate) fn revoked(&self, jti: &str) -> String {
        format!("{}revoked:{jti}", self.prefix)
    }

    pub(crate) fn pulls(&self) -> String {
        format!("{}pulls", self.prefix)
    }

    pub(crate) fn quota_limits(&self) -> String {
        format!("{}quota:limits", self.prefix)
    }

    pub(crate) fn plugin_kv(&self, plugin: &str) -> String {
        format!("{}plugin-kv:{plugin}", self.prefix)
    }

    /// The running garbage collection's id (`SET NX`), and the digests writes reference
    /// and the collection removes while it runs.
    pub(crate) fn gc_running(&self) -> String {
        format!("{}gc:running", self.prefix)
    }

    pub(crate) fn gc_touched(&self, run: &str) -> String {
        format!("{}gc:touched:{run}", self.prefix)
    }

    pub(crate) fn gc_removing(&self, run: &str) -> String {
        format!("{}gc:removing:{run}", self.prefix)
    }

    pub(crate) fn channel(&self, channel: &str) -> String {
        format!("{}bus:{channel}", self.prefix)
    }

    /// The common start of every event key (`src/events.rs` appends the rest): the
    /// `{events}` hash tag puts them all in one Redis Cluster slot, so the events' Lua
    /// scripts may touch several of them.
    pub(crate) fn events(&self) -> String {
        format!("{}{{events}}:", self.prefix)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn layout() {
        let k = Keys::new("pier:");
        assert_eq!(k.lease("blob/sha256:ab"), "pier:lease:blob/sha256:ab");
        assert_eq!(k.session("u1"), "pier:session:u1");
        assert_eq!(k.session_id("pier:session:u1"), Some("u1"));
        assert_eq!(k.session_id("pier:lease:u1"), None);
        assert_eq!(k.revoked("j"), "pier:revoked:j");
        assert_eq!(k.plugin_kv("rbac"), "pier:plugin-kv:rbac");
        assert_eq!(k.pulls(), "pier:pulls");
        assert_eq!(k.gc_running(), "pier:gc:running");
        assert_eq!(k.gc_touched("n1-5"), "pier:gc:touched:n1-5");
        assert_eq!(k.gc_removing("n1-5"), "pier:gc:removing:n1-5");
        assert_eq!(k.channel("manifests"), "pier:bus:manifests");
        assert_eq!(k.session_pattern(), "pier:session:*");
        assert_eq!(k.events(), "pier:{events}:");
        assert_eq!(
            Keys::new("a*[b]:").session_pattern(),
            "a\\*\\[b\\]:session:*"
        );
    }
}
