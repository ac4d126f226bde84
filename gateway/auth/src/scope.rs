//! Docker token scopes: `repository:team/app:pull,push`, `registry:catalog:*`.

use std::fmt;

use serde::{Deserialize, Serialize};

use crate::AuthError;

/// One resource with the actions asked for or granted: a scope, and an entry of a
/// token's `access` claim (the same JSON shape distribution uses).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ResourceActions {
    #[serde(rename = "type")]
    pub kind: String,
    pub name: String,
    pub actions: Vec<String>,
}

impl ResourceActions {
    /// Parses `type:name:action[,action...]`. The type may carry a class
    /// (`repository(plugin)`), the name may contain `:` (a registry host with a port).
    pub fn parse(scope: &str) -> Result<ResourceActions, AuthError> {
        let err = |m: &str| AuthError::Scope {
            scope: scope.chars().take(256).collect(),
            message: m.to_owned(),
        };
        let (kind, rest) = scope
            .split_once(':')
            .ok_or_else(|| err("expected type:name:actions"))?;
        let (name, actions) = rest
            .rsplit_once(':')
            .ok_or_else(|| err("expected type:name:actions"))?;
        let kind = kind.split('(').next().unwrap_or(kind);
        if kind.is_empty() || name.is_empty() {
            return Err(err("empty type or name"));
        }
        let mut list: Vec<String> = Vec::new();
        for a in actions.split(',').map(str::trim).filter(|a| !a.is_empty()) {
            if !list.iter().any(|x| x == a) {
                list.push(a.to_owned());
            }
        }
        Ok(ResourceActions {
            kind: kind.to_owned(),
            name: name.to_owned(),
            actions: list,
        })
    }

    pub fn allows(&self, action: &str) -> bool {
        self.actions.iter().any(|a| a == action || a == "*")
    }
}

impl fmt::Display for ResourceActions {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}:{}", self.kind, self.name, self.actions.join(","))
    }
}

/// Merges scopes naming the same resource (clients repeat `scope=` freely).
pub fn merge(scopes: Vec<ResourceActions>) -> Vec<ResourceActions> {
    let mut out: Vec<ResourceActions> = Vec::new();
    for s in scopes {
        match out
            .iter_mut()
            .find(|o| o.kind == s.kind && o.name == s.name)
        {
            Some(o) => {
                for a in s.actions {
                    if !o.actions.contains(&a) {
                        o.actions.push(a);
                    }
                }
            }
            None => out.push(s),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_repository_and_registry_scopes() {
        let s = ResourceActions::parse("repository:team/app:pull,push").unwrap();
        assert_eq!(s.kind, "repository");
        assert_eq!(s.name, "team/app");
        assert_eq!(s.actions, ["pull", "push"]);
        assert_eq!(s.to_string(), "repository:team/app:pull,push");
        let c = ResourceActions::parse("registry:catalog:*").unwrap();
        assert!(c.allows("search") && c.allows("*"));
        let h = ResourceActions::parse("repository(plugin):localhost:5000/x:pull").unwrap();
        assert_eq!(
            (h.kind.as_str(), h.name.as_str()),
            ("repository", "localhost:5000/x")
        );
    }

    #[test]
    fn rejects_malformed_scopes() {
        for bad in [
            "",
            "repository",
            "repository:x",
            ":x:pull",
            "repository::pull",
        ] {
            assert!(ResourceActions::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn merges_repeated_resources() {
        let m = merge(vec![
            ResourceActions::parse("repository:a:pull").unwrap(),
            ResourceActions::parse("repository:b:pull").unwrap(),
            ResourceActions::parse("repository:a:push,pull").unwrap(),
        ]);
        assert_eq!(m.len(), 2);
        assert_eq!(m[0].actions, ["pull", "push"]);
    }
}
