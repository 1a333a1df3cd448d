//! The per-plugin key-value store behind the `busbar:plugin/kv` import.
//!
//! This module owns `KvStore` (one plugin's entries and byte accounting) and `KvStores` (every
//! plugin's store, by plugin name). Stores outlive instances and plugin versions: a trap or a
//! reload does not lose state; deleting the plugin does (the registry removes its store). Limits
//! are enforced here, counting each entry's host bookkeeping (`ENTRY_OVERHEAD`) besides its key
//! and value, and reported to the guest as errors, never as traps. It holds data in memory only;
//! nothing here is persisted.

use std::collections::HashMap;
use std::sync::Arc;

use parking_lot::Mutex;

/// Longest key, in bytes.
pub(super) const MAX_KEY_BYTES: usize = 512;

/// Bytes charged per entry besides its key and value: the map slot, the key's and the value's
/// headers and allocator rounding. So a plugin within its byte limit holds about that much.
pub(super) const ENTRY_OVERHEAD: usize = 64;

/// One plugin's store.
#[derive(Debug, Default)]
pub struct KvStore {
    inner: Mutex<Entries>,
}

#[derive(Debug, Default)]
struct Entries {
    map: HashMap<String, Vec<u8>>,
    bytes: usize,
}

/// Size limits, from the plugin's manifest.
#[derive(Debug, Clone, Copy)]
pub struct KvLimits {
    pub max_bytes: usize,
    pub value_max_bytes: usize,
}

impl KvStore {
    pub fn get(&self, key: &str) -> Option<Vec<u8>> {
        self.inner.lock().map.get(key).cloned()
    }

    /// Stores `value`; refuses (and changes nothing) past the limits.
    pub fn set(&self, key: &str, value: Vec<u8>, limits: KvLimits) -> Result<(), String> {
        if key.is_empty() || key.len() > MAX_KEY_BYTES {
            return Err(format!("kv key must be 1 to {MAX_KEY_BYTES} bytes, got {}", key.len()));
        }
        if value.len() > limits.value_max_bytes {
            return Err(format!(
                "kv value of {} bytes is over the {} byte limit",
                value.len(),
                limits.value_max_bytes
            ));
        }
        let mut entries = self.inner.lock();
        let previous = entries.map.get(key).map_or(0, |v| entry_bytes(key, v));
        let after = entries.bytes - previous + entry_bytes(key, &value);
        if after > limits.max_bytes {
            return Err(format!(
                "kv store would hold {after} bytes, over its {} byte limit",
                limits.max_bytes
            ));
        }
        entries.bytes = after;
        entries.map.insert(key.to_string(), value);
        Ok(())
    }

    pub fn delete(&self, key: &str) -> bool {
        let mut entries = self.inner.lock();
        match entries.map.remove(key) {
            Some(value) => {
                entries.bytes -= entry_bytes(key, &value);
                true
            }
            None => false,
        }
    }

    /// Bytes held: keys, values and `ENTRY_OVERHEAD` per entry.
    pub fn bytes(&self) -> usize {
        self.inner.lock().bytes
    }

    pub fn len(&self) -> usize {
        self.inner.lock().map.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

fn entry_bytes(key: &str, value: &[u8]) -> usize {
    key.len() + value.len() + ENTRY_OVERHEAD
}

/// Every plugin's store, by plugin name.
#[derive(Debug, Default)]
pub struct KvStores {
    stores: Mutex<HashMap<String, Arc<KvStore>>>,
}

impl KvStores {
    /// The store of plugin `name`, created empty on first use.
    pub fn store(&self, name: &str) -> Arc<KvStore> {
        self.stores.lock().entry(name.to_string()).or_default().clone()
    }

    /// Forgets plugin `name`'s store.
    pub fn remove(&self, name: &str) {
        self.stores.lock().remove(name);
    }

    /// Makes `store` plugin `name`'s store from now on.
    pub fn replace(&self, name: &str, store: Arc<KvStore>) {
        self.stores.lock().insert(name.to_string(), store);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const LIMITS: KvLimits = KvLimits { max_bytes: 2 * ENTRY_OVERHEAD + 20, value_max_bytes: 8 };

    #[test]
    fn set_get_delete_and_accounting() {
        let kv = KvStore::default();
        kv.set("a", b"1234".to_vec(), LIMITS).unwrap();
        kv.set("a", b"12".to_vec(), LIMITS).unwrap();
        assert_eq!(kv.get("a").unwrap(), b"12");
        assert_eq!(kv.bytes(), 3 + ENTRY_OVERHEAD);
        assert!(kv.delete("a"));
        assert!(!kv.delete("a"));
        assert_eq!(kv.bytes(), 0);
    }

    #[test]
    fn limits_refuse_without_changing_anything() {
        let kv = KvStore::default();
        assert!(kv.set("big", vec![0; 9], LIMITS).unwrap_err().contains("over the 8 byte limit"));
        kv.set("k1", vec![0; 8], LIMITS).unwrap();
        kv.set("k2", vec![0; 8], LIMITS).unwrap();
        let err = kv.set("k3", vec![0; 1], LIMITS).unwrap_err();
        assert!(err.contains("over its 148 byte limit"), "{err}");
        assert_eq!(kv.len(), 2);
        assert_eq!(kv.bytes(), LIMITS.max_bytes);
        assert!(kv.set("", vec![], LIMITS).is_err());
    }

    #[test]
    fn many_tiny_entries_are_charged_their_overhead() {
        let kv = KvStore::default();
        let limits = KvLimits { max_bytes: 100 * ENTRY_OVERHEAD, value_max_bytes: 8 };
        let stored = (0..1000).take_while(|i| kv.set(&i.to_string(), vec![], limits).is_ok()).count();
        assert!(stored < 100, "{stored} empty entries fit in {} bytes", limits.max_bytes);
    }

    #[test]
    fn stores_are_per_plugin_and_shared_by_name() {
        let stores = KvStores::default();
        stores.store("a").set("k", b"v".to_vec(), LIMITS).unwrap();
        assert_eq!(stores.store("a").get("k").unwrap(), b"v");
        assert!(stores.store("b").get("k").is_none());
    }
}
