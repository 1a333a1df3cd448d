//! What busbar keeps across restarts: plugins deployed through the API (their components by
//! content hash, their manifests, which version runs and which is the previous one) and every
//! plugin's kv entries.
//!
//! This module owns the `Store` trait and is the only module that knows its backends:
//! `sqlite`, the embedded default (one SQLite database in the data directory, WAL mode; in
//! memory for `--ephemeral`), and `redis`, shared by every node when `redis-url` is set. Writes are atomic: a deployment and the components it names are
//! committed together, and a kv write is checked against the plugin's byte limit in the same
//! transaction that makes it. A component read back is checked against its hash. It must not
//! load plugins or decide what runs: the registry does, and writes here before it changes what
//! runs, so what is stored is what a restart runs.

mod redis;
mod sqlite;

use std::sync::Arc;
use std::time::Duration;

pub use self::redis::RedisStore;
pub use sqlite::SqliteStore;

/// One version of a deployed plugin: its component (by content hash) and its manifest as
/// manifest-file text.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Version {
    pub hash: String,
    pub manifest: String,
}

/// A plugin deployed through the API. `None` for a version means the plugin's base version:
/// the one busbar loads by itself (built in, or from the plugin directory), e.g. after a
/// rollback from the first uploaded version.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Deployment {
    pub name: String,
    pub current: Option<Version>,
    pub previous: Option<Version>,
}

/// A kv store's size: what the plugin's byte limit counts.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct KvUsage {
    pub bytes: usize,
    pub entries: usize,
}

/// Bytes charged per kv entry besides its key and value (the row, its index entry and
/// bookkeeping), so a plugin within its limit holds about that much.
pub const KV_ENTRY_OVERHEAD: usize = 64;

/// Why the store could not do what was asked.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum StoreError {
    /// The database cannot be opened or used; names the file.
    #[error("store {path}: {message}")]
    Database { path: String, message: String },
    /// A stored component does not match its hash: it is refused, never run.
    #[error("stored component {hash} is corrupt (its bytes hash to {actual})")]
    Corrupt { hash: String, actual: String },
    #[error("no stored component {0}")]
    MissingBlob(String),
    /// A kv write past the plugin's byte limit; nothing was changed.
    #[error("kv store would hold {after} bytes, over its {limit} byte limit")]
    KvFull { after: usize, limit: usize },
    /// The call's deadline passed before the store answered.
    #[error("the store did not answer before the call's deadline")]
    Deadline,
}

/// Where busbar keeps deployments and plugin state.
pub trait Store: Send + Sync + std::fmt::Debug {
    /// Every deployment, in the order they were first deployed.
    fn deployments(&self) -> Result<Vec<Deployment>, StoreError>;
    /// A stored component, checked against its hash.
    fn component(&self, hash: &str) -> Result<Vec<u8>, StoreError>;
    /// Records `deployment`, with the components it names that are not stored yet, in one
    /// transaction; components no deployment names any more are dropped.
    fn save(&self, deployment: &Deployment, components: &[&[u8]]) -> Result<(), StoreError>;
    /// Forgets a deployment (and the components nothing else names).
    fn forget(&self, name: &str) -> Result<(), StoreError>;

    /// The kv calls a plugin makes wait at most `within` (what is left of its call's deadline:
    /// the epoch deadline cannot interrupt a guest waiting in a host call), else fail.
    fn kv_get(&self, plugin: &str, key: &str, within: Duration) -> Result<Option<Vec<u8>>, StoreError>;
    /// Sets `key`, refusing (and changing nothing) when the plugin would hold more than
    /// `max_bytes`, counted as key + value + `KV_ENTRY_OVERHEAD` per entry.
    fn kv_set(&self, plugin: &str, key: &str, value: &[u8], max_bytes: usize, within: Duration) -> Result<(), StoreError>;
    /// Whether the key existed.
    fn kv_delete(&self, plugin: &str, key: &str, within: Duration) -> Result<bool, StoreError>;
    /// Deletes every entry of `plugin`.
    fn kv_clear(&self, plugin: &str) -> Result<(), StoreError>;
    fn kv_usage(&self, plugin: &str) -> Result<KvUsage, StoreError>;

    /// For a store several nodes share: records what node `node` runs of each plugin, for the
    /// next `ttl` (a node that stops reporting drops out).
    fn report_versions(&self, _node: &str, _versions: &std::collections::BTreeMap<String, NodeVersion>, _ttl: Duration) -> Result<(), StoreError> {
        Ok(())
    }

    /// What every live node reported: node -> (plugin -> what it runs). Empty for a store of one
    /// node.
    fn node_versions(&self) -> Result<NodeVersions, StoreError> {
        Ok(NodeVersions::new())
    }

    /// For a store several nodes share: calls `changed(Some(name))` for each deployment another
    /// node (or this one) changes, and `changed(None)` when every deployment should be looked at
    /// again (after a lost connection, and now and then), until the returned `Listening` is
    /// dropped. A store of one node has nobody else to hear from: `None`.
    fn listen(&self, _changed: OnChange) -> Option<Listening> {
        None
    }
}

/// What each node runs of each plugin: node -> (plugin -> version).
pub type NodeVersions = std::collections::BTreeMap<String, std::collections::BTreeMap<String, NodeVersion>>;

/// What one node runs of one plugin: the version's hash (none if no version loaded there), and
/// its last failed load, when one came after the version it runs.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct NodeVersion {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub hash: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub failure: Option<String>,
}

/// What `Store::listen` calls for a changed deployment (`None`: look at all of them).
pub type OnChange = Box<dyn Fn(Option<&str>) + Send>;

/// Keeps a store's listener running; dropping it stops the listener (within a second).
#[derive(Debug)]
pub struct Listening {
    stop: Arc<std::sync::atomic::AtomicBool>,
}

impl Listening {
    pub(crate) fn new(stop: Arc<std::sync::atomic::AtomicBool>) -> Listening {
        Listening { stop }
    }
}

impl Drop for Listening {
    fn drop(&mut self) {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
    }
}

/// A stored component as read back (`None`: not stored), checked against the hash it is
/// stored under.
fn checked_component(hash: &str, bytes: Option<Vec<u8>>) -> Result<Vec<u8>, StoreError> {
    let bytes = bytes.ok_or_else(|| StoreError::MissingBlob(hash.to_string()))?;
    let actual = crate::plugins::content_hash(&bytes);
    if actual != hash {
        return Err(StoreError::Corrupt { hash: hash.to_string(), actual });
    }
    Ok(bytes)
}

/// A store that lasts as long as the process: for `--ephemeral`, tests and embedders that
/// keep nothing.
pub fn ephemeral() -> Arc<dyn Store> {
    Arc::new(SqliteStore::in_memory())
}
