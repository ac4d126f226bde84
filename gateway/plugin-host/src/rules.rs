//! Replication rules as a replicator that manages them keeps them (the replicate plugin,
//! in its `kv`): the [`RuleStore`] role trait the admin API calls, and its types.
//! Implemented by [`crate::PluginReplicator`] over the plugin's `rules` export.

use async_trait::async_trait;

pub use crate::events::ReplicationDirection;

/// Which repositories a rule takes (patterns with `*` and `?`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RuleSource {
    /// Every repository of the matching projects.
    Project(String),
    /// The repositories whose name matches.
    Repository(String),
}

/// When a rule runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RuleTrigger {
    /// On each matching push (and delete, with `delete`).
    Event,
    /// On the first tick this many seconds after the last run.
    EverySecs(u64),
}

/// One replication rule (`rule` in `wit/rules.wit`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rule {
    pub name: String,
    pub source: RuleSource,
    /// Tag patterns; empty: every tag.
    pub tags: Vec<String>,
    /// A target name from Pier's configuration.
    pub target: String,
    /// The destination repository template; `None`: `{repository}`.
    pub destination: Option<String>,
    pub trigger: RuleTrigger,
    pub delete: bool,
    pub direction: ReplicationDirection,
}

/// Why a rule call failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RuleError {
    #[error("{0}")]
    NotFound(String),
    #[error("{0}")]
    Invalid(String),
    /// The store failed, or the plugin trapped or timed out.
    #[error("{0}")]
    Unavailable(String),
    /// The replicator does not manage rules (rules in TOML only).
    #[error(
        "rules are not managed here: the replicator plugin does not export pier:plugin/rules (use the replicate plugin with the kv grant)"
    )]
    NotManaged,
}

/// The rules of one replicator, changed at once for its later events and ticks.
#[async_trait]
pub trait RuleStore: Send + Sync {
    /// Whether the plugin manages its rules (else every call is [`RuleError::NotManaged`]).
    fn manages_rules(&self) -> bool;
    /// Every rule, sorted by name.
    async fn list_rules(&self) -> Result<Vec<Rule>, RuleError>;
    /// Creates the rule or replaces the one of the same name; returns it as stored.
    async fn put_rule(&self, rule: &Rule) -> Result<Rule, RuleError>;
    async fn delete_rule(&self, name: &str) -> Result<(), RuleError>;
}
