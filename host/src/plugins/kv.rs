//! The per-plugin key-value store behind the `busbar:plugin/kv` import.
//!
//! This module owns `KvStore`, one plugin's view of its entries in the `Store` (so they outlive
//! instances, plugin versions and restarts; deleting the plugin deletes them unless the operator
//! keeps them), and `KvStores`, which hands out those views by plugin name. The key and value
//! limits are checked here, the plugin's total in the store's own transaction, counting each
//! entry's bookkeeping (`KV_ENTRY_OVERHEAD`) besides its key and value. Every refusal and every
//! store failure reaches the guest as the import's error result (`get`, whose 0.1.0 signature
//! has no error, reads a failure as absent), never as a trap, and is logged.

use std::sync::Arc;
use std::time::Duration;

use crate::store::{Store, StoreError};

/// Longest key, in bytes.
pub(super) const MAX_KEY_BYTES: usize = 512;

#[cfg(test)]
use crate::store::KV_ENTRY_OVERHEAD as ENTRY_OVERHEAD;

/// One plugin's store.
#[derive(Debug, Clone)]
pub struct KvStore {
    store: Arc<dyn Store>,
    plugin: String,
}

/// Size limits, from the plugin's manifest.
#[derive(Debug, Clone, Copy)]
pub struct KvLimits {
    pub max_bytes: usize,
    pub value_max_bytes: usize,
}

impl KvStore {
    /// Plugin `plugin`'s entries in `store`.
    pub fn new(store: Arc<dyn Store>, plugin: &str) -> KvStore {
        KvStore { store, plugin: plugin.to_string() }
    }

    /// A store of its own in memory, for a plugin loaded outside any registry.
    pub fn detached() -> KvStore {
        KvStore::new(crate::store::ephemeral(), "detached")
    }

    /// The value of `key`; waits for the store at most `within`.
    pub fn get(&self, key: &str, within: Duration) -> Option<Vec<u8>> {
        self.store.kv_get(&self.plugin, key, within).unwrap_or_else(|e| {
            tracing::warn!(plugin = %self.plugin, "kv get failed, read as absent: {e}");
            None
        })
    }

    /// Stores `value`; refuses (and changes nothing) past the limits; waits for the store at
    /// most `within`.
    pub fn set(&self, key: &str, value: Vec<u8>, limits: KvLimits, within: Duration) -> Result<(), String> {
        if key.is_empty() || key.len() > MAX_KEY_BYTES {
            return Err(format!("kv key must be 1 to {MAX_KEY_BYTES} bytes, got {}", key.len()));
        }
        if value.len() > limits.value_max_bytes {
            return Err(format!("kv value of {} bytes is over the {} byte limit", value.len(), limits.value_max_bytes));
        }
        self.store.kv_set(&self.plugin, key, &value, limits.max_bytes, within).map_err(|e| match e {
            StoreError::KvFull { .. } => e.to_string(),
            other => {
                tracing::warn!(plugin = %self.plugin, "kv set failed: {other}");
                format!("kv store unavailable: {other}")
            }
        })
    }

    /// Deletes `key`; waits for the store at most `within`.
    pub fn delete(&self, key: &str, within: Duration) -> bool {
        self.store.kv_delete(&self.plugin, key, within).unwrap_or_else(|e| {
            tracing::warn!(plugin = %self.plugin, "kv delete failed: {e}");
            false
        })
    }

    /// Bytes held: keys, values and `ENTRY_OVERHEAD` per entry.
    pub fn bytes(&self) -> usize {
        self.store.kv_usage(&self.plugin).map(|u| u.bytes).unwrap_or_default()
    }

    pub fn len(&self) -> usize {
        self.store.kv_usage(&self.plugin).map(|u| u.entries).unwrap_or_default()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// Every plugin's store, by plugin name, in one `Store`.
#[derive(Debug, Clone)]
pub struct KvStores {
    store: Arc<dyn Store>,
}

impl KvStores {
    pub fn new(store: Arc<dyn Store>) -> KvStores {
        KvStores { store }
    }

    /// The store of plugin `name`.
    pub fn store(&self, name: &str) -> Arc<KvStore> {
        Arc::new(KvStore::new(self.store.clone(), name))
    }

    /// Deletes plugin `name`'s entries.
    pub fn remove(&self, name: &str) {
        if let Err(e) = self.store.kv_clear(name) {
            tracing::warn!(plugin = %name, "deleting the kv entries failed: {e}");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const LIMITS: KvLimits = KvLimits { max_bytes: 2 * ENTRY_OVERHEAD + 20, value_max_bytes: 8 };
    const NOW: Duration = Duration::from_secs(1);

    #[test]
    fn set_get_delete_and_accounting() {
        let kv = KvStore::detached();
        kv.set("a", b"1234".to_vec(), LIMITS, NOW).unwrap();
        kv.set("a", b"12".to_vec(), LIMITS, NOW).unwrap();
        assert_eq!(kv.get("a", NOW).unwrap(), b"12");
        assert_eq!(kv.bytes(), 3 + ENTRY_OVERHEAD);
        assert!(kv.delete("a", NOW));
        assert!(!kv.delete("a", NOW));
        assert_eq!(kv.bytes(), 0);
    }

    #[test]
    fn limits_refuse_without_changing_anything() {
        let kv = KvStore::detached();
        assert!(kv.set("big", vec![0; 9], LIMITS, NOW).unwrap_err().contains("over the 8 byte limit"));
        kv.set("k1", vec![0; 8], LIMITS, NOW).unwrap();
        kv.set("k2", vec![0; 8], LIMITS, NOW).unwrap();
        let err = kv.set("k3", vec![0; 1], LIMITS, NOW).unwrap_err();
        assert!(err.contains("over its 148 byte limit"), "{err}");
        assert_eq!(kv.len(), 2);
        assert_eq!(kv.bytes(), LIMITS.max_bytes);
        assert!(kv.set("", vec![], LIMITS, NOW).is_err());
    }

    #[test]
    fn many_tiny_entries_are_charged_their_overhead() {
        let kv = KvStore::detached();
        let limits = KvLimits { max_bytes: 100 * ENTRY_OVERHEAD, value_max_bytes: 8 };
        let stored = (0..1000).take_while(|i| kv.set(&i.to_string(), vec![], limits, NOW).is_ok()).count();
        assert!(stored < 100, "{stored} empty entries fit in {} bytes", limits.max_bytes);
    }

    #[test]
    fn stores_are_per_plugin_and_shared_by_name() {
        let stores = KvStores::new(crate::store::ephemeral());
        stores.store("a").set("k", b"v".to_vec(), LIMITS, NOW).unwrap();
        assert_eq!(stores.store("a").get("k", NOW).unwrap(), b"v");
        assert!(stores.store("b").get("k", NOW).is_none());
        stores.remove("a");
        assert!(stores.store("a").get("k", NOW).is_none());
    }
}
