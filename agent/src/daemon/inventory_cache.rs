//! The daemon's inventory cache: collected on tokio's blocking pool (probes read sysfs and may
//! start child processes), converted to its proto and JSON forms once per collection, and
//! refreshed on demand. Concurrent callers share one collection.

use std::sync::Arc;

use fog_proto::v1 as pb;
use tokio::sync::Mutex;
use tonic::Status;

use super::convert;
use crate::inventory::Inventory;

/// Produces an inventory (blocking). Production: `inventory::collect_from(FsRoot::host())`.
pub type InventorySource = Arc<dyn Fn() -> Inventory + Send + Sync>;

/// Called after each collection (capacity totals, telemetry GPU list, benchmark hook).
pub type OnCollected = Arc<dyn Fn(&Inventory) + Send + Sync>;

/// One collected inventory in every form the API serves.
#[derive(Debug)]
pub struct CachedInventory {
    /// The domain value.
    pub inventory: Inventory,
    /// Its structured proto form.
    pub proto: pb::Inventory,
    /// Its `fog-inventory-v1` JSON.
    pub json: Vec<u8>,
}

/// The cache.
pub struct InventoryCache {
    source: InventorySource,
    on_collected: OnCollected,
    current: Mutex<Option<Arc<CachedInventory>>>,
}

impl std::fmt::Debug for InventoryCache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("InventoryCache").finish_non_exhaustive()
    }
}

impl InventoryCache {
    /// An empty cache over `source`.
    pub fn new(source: InventorySource, on_collected: OnCollected) -> Self {
        Self {
            source,
            on_collected,
            current: Mutex::new(None),
        }
    }

    /// The cached inventory, collecting it first when there is none or `refresh` is set.
    pub async fn get(&self, refresh: bool) -> Result<Arc<CachedInventory>, Status> {
        let mut current = self.current.lock().await;
        if let (Some(cached), false) = (current.as_ref(), refresh) {
            return Ok(cached.clone());
        }
        let source = self.source.clone();
        let collected = tokio::task::spawn_blocking(move || {
            let inventory = source();
            let json = serde_json::to_vec(&inventory);
            (inventory, json)
        })
        .await
        .map_err(|err| {
            tracing::error!(error = %err, "inventory collection panicked");
            Status::internal("inventory collection failed unexpectedly")
        })?;
        let (inventory, json) = collected;
        let json = json.map_err(|err| Status::internal(format!("inventory to JSON: {err}")))?;
        (self.on_collected)(&inventory);
        let cached = Arc::new(CachedInventory {
            proto: convert::inventory(&inventory),
            inventory,
            json,
        });
        *current = Some(cached.clone());
        Ok(cached)
    }
}
