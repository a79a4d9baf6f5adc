//! The daemon's inventory cache: collected on tokio's blocking pool (probes read sysfs and may
//! start child processes), serialized to its `fog-inventory-v1` JSON once per collection, and
//! refreshed on demand. Concurrent callers share one collection, and a refresh asked for within
//! [`MIN_REFRESH_AGE`] of the last collection is answered from the cache (a caller cannot keep
//! the probes busy).

use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::Mutex;

use super::Inventory;

/// A refresh is served from the cache when the cached inventory is younger than this.
pub const MIN_REFRESH_AGE: Duration = Duration::from_secs(10);

/// Produces an inventory (blocking). Production: `inventory::collect_from(FsRoot::host())`.
pub type InventorySource = Arc<dyn Fn() -> Inventory + Send + Sync>;

/// Called after each collection (capacity totals, telemetry GPU list, benchmark hook).
pub type OnCollected = Arc<dyn Fn(&Inventory) + Send + Sync>;

/// Why no inventory could be collected.
#[derive(Debug, thiserror::Error)]
pub enum InventoryError {
    /// The collection task panicked.
    #[error("inventory collection failed unexpectedly")]
    Panicked,
    /// The inventory could not be serialized.
    #[error("cannot serialize the inventory")]
    Serialize(#[source] serde_json::Error),
}

/// One collected inventory and its JSON.
#[derive(Debug)]
pub struct CachedInventory {
    /// The domain value.
    pub inventory: Inventory,
    /// Its `fog-inventory-v1` JSON.
    pub json: Vec<u8>,
    /// When the collection finished.
    pub collected: Instant,
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

    /// The cached inventory, collecting it first when there is none, or when `refresh` is set
    /// and the cached one is older than [`MIN_REFRESH_AGE`].
    pub async fn get(&self, refresh: bool) -> Result<Arc<CachedInventory>, InventoryError> {
        let mut current = self.current.lock().await;
        if let Some(cached) = current.as_ref() {
            if !refresh || cached.collected.elapsed() < MIN_REFRESH_AGE {
                return Ok(cached.clone());
            }
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
            InventoryError::Panicked
        })?;
        let (inventory, json) = collected;
        let json = json.map_err(InventoryError::Serialize)?;
        (self.on_collected)(&inventory);
        let cached = Arc::new(CachedInventory {
            inventory,
            json,
            collected: Instant::now(),
        });
        *current = Some(cached.clone());
        Ok(cached)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};

    #[tokio::test]
    async fn collects_once_and_rate_limits_refresh() {
        let count = Arc::new(AtomicUsize::new(0));
        let source: InventorySource = {
            let count = count.clone();
            Arc::new(move || {
                count.fetch_add(1, Ordering::SeqCst);
                crate::inventory::collect_from(crate::fsroot::FsRoot::new("/nonexistent-root"))
            })
        };
        let seen = Arc::new(AtomicUsize::new(0));
        let on_collected: OnCollected = {
            let seen = seen.clone();
            Arc::new(move |_| {
                seen.fetch_add(1, Ordering::SeqCst);
            })
        };
        let cache = InventoryCache::new(source, on_collected);
        let (a, b) = tokio::join!(cache.get(false), cache.get(false));
        assert!(
            Arc::ptr_eq(&a.unwrap(), &b.unwrap()),
            "concurrent callers share one"
        );
        let refreshed = cache.get(true).await.unwrap();
        assert_eq!(
            count.load(Ordering::SeqCst),
            1,
            "refresh within the minimum age is cached"
        );
        assert_eq!(seen.load(Ordering::SeqCst), 1);
        let json: serde_json::Value = serde_json::from_slice(&refreshed.json).unwrap();
        assert_eq!(
            json["fingerprint"]["value"],
            refreshed.inventory.fingerprint.value
        );
    }
}
