//! How long storage operations take, by operation: one histogram the registry (and the
//! mirror's fills) feed, registered by the binary.

use std::future::Future;
use std::time::Instant;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::family::Family;

use crate::AtomicHistogram;

/// From half a millisecond (a cached stat on a local disk) to half a minute (a large
/// commit to an object store).
const BUCKETS: [f64; 14] = [
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 10.0, 30.0,
];

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct OperationLabels {
    operation: &'static str,
}

/// `pier_storage_operation_duration_seconds{operation}`; clones share the series.
#[derive(Clone)]
pub struct StorageTimings(Family<OperationLabels, AtomicHistogram, fn() -> AtomicHistogram>);

impl Default for StorageTimings {
    fn default() -> StorageTimings {
        StorageTimings(Family::new_with_constructor(|| {
            AtomicHistogram::new(&BUCKETS)
        }))
    }
}

impl StorageTimings {
    /// Runs `op` and records how long it took as `operation` (whether it failed or not).
    pub async fn time<T>(&self, operation: &'static str, op: impl Future<Output = T>) -> T {
        let start = Instant::now();
        let out = op.await;
        self.0
            .get_or_create(&OperationLabels { operation })
            .observe(start.elapsed());
        out
    }

    pub fn register(&self, registry: &mut prometheus_client::registry::Registry) {
        registry.register(
            "pier_storage_operation_duration_seconds",
            "Storage operations by operation (blob_stat, blob_get, blob_put, manifest_get, \
             manifest_put, upload_append, upload_commit); a get until its body starts",
            self.0.clone(),
        );
    }
}
