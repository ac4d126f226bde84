//! Scale-out wiring: the admin side's shared pull log over Redis; the other roles Redis
//! plays are in `pier_cluster::adapters`.

use async_trait::async_trait;
use pier_cluster::Shared;

/// Last pulls merged over every node in Redis.
pub struct RedisPulls {
    pub shared: Shared,
}

#[async_trait]
impl pier_admin::activity::SharedPulls for RedisPulls {
    async fn merge(&self, pulls: &[(String, u64)]) -> Result<(), String> {
        self.shared
            .pulls_merge(pulls)
            .await
            .map_err(|e| e.to_string())
    }

    async fn get(&self, fields: &[String]) -> Result<Vec<Option<u64>>, String> {
        self.shared
            .pulls_get(fields)
            .await
            .map_err(|e| e.to_string())
    }
}
