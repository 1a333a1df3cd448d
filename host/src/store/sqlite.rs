//! The embedded store: one SQLite database (bundled SQLite, WAL mode), or one in memory.
//!
//! Tables: `components` (hash -> bytes), `deployments` (name, first-deployed order, current and
//! previous version), `kv` (plugin, key -> value) and `kv_usage` (plugin -> bytes, entries), the
//! last kept in step with `kv` inside each write's transaction so that a limit check never
//! scans. One connection behind a mutex: every operation is a few small statements.

use std::path::Path;
use std::time::Duration;

use parking_lot::Mutex;
use rusqlite::{Connection, OptionalExtension, TransactionBehavior, params};

use super::{Deployment, KV_ENTRY_OVERHEAD, KvUsage, Store, StoreError, Version};
use crate::plugins::content_hash;

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS components (hash TEXT PRIMARY KEY, bytes BLOB NOT NULL);
CREATE TABLE IF NOT EXISTS deployments (
    name TEXT PRIMARY KEY,
    seq INTEGER NOT NULL,
    current_hash TEXT, current_manifest TEXT,
    previous_hash TEXT, previous_manifest TEXT
);
CREATE TABLE IF NOT EXISTS kv (plugin TEXT NOT NULL, key TEXT NOT NULL, value BLOB NOT NULL, PRIMARY KEY (plugin, key)) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS kv_usage (plugin TEXT PRIMARY KEY, bytes INTEGER NOT NULL, entries INTEGER NOT NULL);
";

/// How long an operation no plugin call waits on waits for another process's write lock.
const BUSY: Duration = Duration::from_secs(2);

/// The embedded store.
#[derive(Debug)]
pub struct SqliteStore {
    path: String,
    conn: Mutex<Connection>,
}

impl SqliteStore {
    /// Opens (creating if needed) the database at `path`. A file that is not a busbar store,
    /// or cannot be written, is an error naming it.
    pub fn open(path: &Path) -> Result<SqliteStore, StoreError> {
        let name = path.display().to_string();
        let error = |e: rusqlite::Error| StoreError::Database { path: name.clone(), message: e.to_string() };
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent).map_err(|e| StoreError::Database { path: name.clone(), message: format!("creating its directory: {e}") })?;
        }
        let conn = Connection::open(path).map_err(error)?;
        conn.busy_timeout(BUSY).map_err(error)?;
        // WAL: readers never wait for the writer; NORMAL: a commit survives a crash of busbar
        // (not of the machine) without an fsync per write.
        conn.pragma_update(None, "journal_mode", "WAL").map_err(error)?;
        conn.pragma_update(None, "synchronous", "NORMAL").map_err(error)?;
        conn.execute_batch(SCHEMA).map_err(error)?;
        Ok(SqliteStore { path: name, conn: Mutex::new(conn) })
    }

    /// A store in memory, gone with the process.
    pub fn in_memory() -> SqliteStore {
        let conn = Connection::open_in_memory().expect("SQLite opens an in-memory database");
        conn.execute_batch(SCHEMA).expect("the schema is valid SQL");
        SqliteStore { path: ":memory:".into(), conn: Mutex::new(conn) }
    }

    /// The connection, if it is free within `within` (another call may hold it), waiting for
    /// another process's write lock on the file (`busbar plugin import`) no longer either.
    fn conn_within(&self, within: Duration) -> Result<parking_lot::MutexGuard<'_, Connection>, StoreError> {
        let started = std::time::Instant::now();
        let conn = self.conn.try_lock_for(within).ok_or(StoreError::Deadline)?;
        let left = within.saturating_sub(started.elapsed());
        if left.is_zero() {
            return Err(StoreError::Deadline);
        }
        conn.busy_timeout(left).map_err(|e| self.error(e))?;
        Ok(conn)
    }

    /// The connection, for what no plugin call waits on: another process's write lock on the
    /// file is waited for up to `BUSY`.
    fn conn(&self) -> Result<parking_lot::MutexGuard<'_, Connection>, StoreError> {
        let conn = self.conn.lock();
        conn.busy_timeout(BUSY).map_err(|e| self.error(e))?;
        Ok(conn)
    }

    fn error(&self, e: rusqlite::Error) -> StoreError {
        StoreError::Database { path: self.path.clone(), message: e.to_string() }
    }
}

fn version(hash: Option<String>, manifest: Option<String>) -> Option<Version> {
    Some(Version { hash: hash?, manifest: manifest? })
}

impl Store for SqliteStore {
    fn deployments(&self) -> Result<Vec<Deployment>, StoreError> {
        let conn = self.conn()?;
        let mut statement = conn
            .prepare("SELECT name, current_hash, current_manifest, previous_hash, previous_manifest FROM deployments ORDER BY seq")
            .map_err(|e| self.error(e))?;
        let rows = statement
            .query_map([], |row| {
                Ok(Deployment { name: row.get(0)?, current: version(row.get(1)?, row.get(2)?), previous: version(row.get(3)?, row.get(4)?) })
            })
            .map_err(|e| self.error(e))?;
        rows.collect::<Result<Vec<_>, _>>().map_err(|e| self.error(e))
    }

    fn component(&self, hash: &str) -> Result<Vec<u8>, StoreError> {
        let bytes: Option<Vec<u8>> = self
            .conn()?
            .query_row("SELECT bytes FROM components WHERE hash = ?1", [hash], |row| row.get(0))
            .optional()
            .map_err(|e| self.error(e))?;
        super::checked_component(hash, bytes)
    }

    fn save(&self, deployment: &Deployment, components: &[&[u8]]) -> Result<(), StoreError> {
        let mut conn = self.conn()?;
        let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate).map_err(|e| self.error(e))?;
        for bytes in components {
            tx.execute("INSERT OR IGNORE INTO components (hash, bytes) VALUES (?1, ?2)", params![content_hash(bytes), bytes])
                .map_err(|e| self.error(e))?;
        }
        let (current, previous) = (deployment.current.as_ref(), deployment.previous.as_ref());
        tx.execute(
            "INSERT INTO deployments (name, seq, current_hash, current_manifest, previous_hash, previous_manifest)
             VALUES (?1, (SELECT COALESCE(MAX(seq), 0) + 1 FROM deployments), ?2, ?3, ?4, ?5)
             ON CONFLICT (name) DO UPDATE SET current_hash = ?2, current_manifest = ?3, previous_hash = ?4, previous_manifest = ?5",
            params![
                deployment.name,
                current.map(|v| &v.hash),
                current.map(|v| &v.manifest),
                previous.map(|v| &v.hash),
                previous.map(|v| &v.manifest)
            ],
        )
        .map_err(|e| self.error(e))?;
        for hash in [current, previous].into_iter().flatten().map(|v| &v.hash) {
            let stored: bool = tx
                .query_row("SELECT EXISTS (SELECT 1 FROM components WHERE hash = ?1)", [hash], |row| row.get(0))
                .map_err(|e| self.error(e))?;
            if !stored {
                return Err(StoreError::MissingBlob(hash.clone()));
            }
        }
        drop_unnamed_components(&tx).map_err(|e| self.error(e))?;
        tx.commit().map_err(|e| self.error(e))
    }

    fn forget(&self, name: &str) -> Result<(), StoreError> {
        let mut conn = self.conn()?;
        let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate).map_err(|e| self.error(e))?;
        tx.execute("DELETE FROM deployments WHERE name = ?1", [name]).map_err(|e| self.error(e))?;
        drop_unnamed_components(&tx).map_err(|e| self.error(e))?;
        tx.commit().map_err(|e| self.error(e))
    }

    fn kv_get(&self, plugin: &str, key: &str, within: Duration) -> Result<Option<Vec<u8>>, StoreError> {
        let conn = self.conn_within(within)?;
        let mut statement = conn.prepare_cached("SELECT value FROM kv WHERE plugin = ?1 AND key = ?2").map_err(|e| self.error(e))?;
        statement.query_row([plugin, key], |row| row.get(0)).optional().map_err(|e| self.error(e))
    }

    fn kv_set(&self, plugin: &str, key: &str, value: &[u8], max_bytes: usize, within: Duration) -> Result<(), StoreError> {
        let mut conn = self.conn_within(within)?;
        let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate).map_err(|e| self.error(e))?;
        let usage = usage(&tx, plugin).map_err(|e| self.error(e))?;
        let old: Option<usize> = tx
            .prepare_cached("SELECT length(value) FROM kv WHERE plugin = ?1 AND key = ?2")
            .and_then(|mut s| s.query_row([plugin, key], |row| row.get(0)).optional())
            .map_err(|e| self.error(e))?;
        let entry = key.len() + value.len() + KV_ENTRY_OVERHEAD;
        let (after, entries) = match old {
            Some(old) => (usage.bytes - (key.len() + old + KV_ENTRY_OVERHEAD) + entry, usage.entries),
            None => (usage.bytes + entry, usage.entries + 1),
        };
        if after > max_bytes {
            return Err(StoreError::KvFull { after, limit: max_bytes });
        }
        tx.prepare_cached("INSERT INTO kv (plugin, key, value) VALUES (?1, ?2, ?3) ON CONFLICT (plugin, key) DO UPDATE SET value = ?3")
            .and_then(|mut s| s.execute(params![plugin, key, value]))
            .map_err(|e| self.error(e))?;
        set_usage(&tx, plugin, KvUsage { bytes: after, entries }).map_err(|e| self.error(e))?;
        tx.commit().map_err(|e| self.error(e))
    }

    fn kv_delete(&self, plugin: &str, key: &str, within: Duration) -> Result<bool, StoreError> {
        let mut conn = self.conn_within(within)?;
        let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate).map_err(|e| self.error(e))?;
        let old: Option<usize> = tx
            .prepare_cached("SELECT length(value) FROM kv WHERE plugin = ?1 AND key = ?2")
            .and_then(|mut s| s.query_row([plugin, key], |row| row.get(0)).optional())
            .map_err(|e| self.error(e))?;
        let Some(old) = old else { return Ok(false) };
        tx.execute("DELETE FROM kv WHERE plugin = ?1 AND key = ?2", [plugin, key]).map_err(|e| self.error(e))?;
        let usage = usage(&tx, plugin).map_err(|e| self.error(e))?;
        let after = KvUsage { bytes: usage.bytes.saturating_sub(key.len() + old + KV_ENTRY_OVERHEAD), entries: usage.entries.saturating_sub(1) };
        set_usage(&tx, plugin, after).map_err(|e| self.error(e))?;
        tx.commit().map_err(|e| self.error(e))?;
        Ok(true)
    }

    fn kv_clear(&self, plugin: &str) -> Result<(), StoreError> {
        let mut conn = self.conn()?;
        let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate).map_err(|e| self.error(e))?;
        tx.execute("DELETE FROM kv WHERE plugin = ?1", [plugin]).map_err(|e| self.error(e))?;
        tx.execute("DELETE FROM kv_usage WHERE plugin = ?1", [plugin]).map_err(|e| self.error(e))?;
        tx.commit().map_err(|e| self.error(e))
    }

    fn kv_usage(&self, plugin: &str) -> Result<KvUsage, StoreError> {
        usage(&*self.conn()?, plugin).map_err(|e| self.error(e))
    }
}

fn usage(conn: &Connection, plugin: &str) -> rusqlite::Result<KvUsage> {
    let row = conn
        .prepare_cached("SELECT bytes, entries FROM kv_usage WHERE plugin = ?1")?
        .query_row([plugin], |row| Ok(KvUsage { bytes: row.get(0)?, entries: row.get(1)? }))
        .optional()?;
    Ok(row.unwrap_or_default())
}

fn set_usage(conn: &Connection, plugin: &str, usage: KvUsage) -> rusqlite::Result<()> {
    if usage.entries == 0 {
        conn.prepare_cached("DELETE FROM kv_usage WHERE plugin = ?1")?.execute([plugin])?;
    } else {
        conn.prepare_cached("INSERT INTO kv_usage (plugin, bytes, entries) VALUES (?1, ?2, ?3) ON CONFLICT (plugin) DO UPDATE SET bytes = ?2, entries = ?3")?
            .execute(params![plugin, usage.bytes, usage.entries])?;
    }
    Ok(())
}

fn drop_unnamed_components(conn: &Connection) -> rusqlite::Result<usize> {
    conn.execute(
        "DELETE FROM components WHERE hash NOT IN
         (SELECT current_hash FROM deployments WHERE current_hash IS NOT NULL
          UNION SELECT previous_hash FROM deployments WHERE previous_hash IS NOT NULL)",
        [],
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn deployment(name: &str, current: Option<&[u8]>, previous: Option<&[u8]>) -> Deployment {
        let v = |bytes: &[u8]| Version { hash: content_hash(bytes), manifest: format!("name = \"{name}\"\n") };
        Deployment { name: name.into(), current: current.map(v), previous: previous.map(v) }
    }

    // The behaviour both backends share is tested on both in tests/it/store.rs
    // (`the_store_contract`); here, what only a file shows.

    #[test]
    fn deployments_survive_reopening_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("busbar.db");
        SqliteStore::open(&path).unwrap().save(&deployment("a", Some(b"a1"), None), &[b"a1"]).unwrap();
        let store = SqliteStore::open(&path).unwrap();
        assert_eq!(store.deployments().unwrap(), vec![deployment("a", Some(b"a1"), None)]);
        assert_eq!(store.component(&content_hash(b"a1")).unwrap(), b"a1");
    }

    #[test]
    fn a_corrupt_component_is_refused() {
        let store = SqliteStore::in_memory();
        store.save(&deployment("a", Some(b"good"), None), &[b"good"]).unwrap();
        let hash = content_hash(b"good");
        store.conn.lock().execute("UPDATE components SET bytes = ?1 WHERE hash = ?2", params![b"evil".as_slice(), hash]).unwrap();
        assert!(matches!(store.component(&hash), Err(StoreError::Corrupt { .. })));
    }

    #[test]
    fn a_file_that_is_not_a_database_is_an_error_naming_it() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("busbar.db");
        std::fs::write(&path, b"this is not a database, it is a file with some text in it; quite long enough").unwrap();
        let error = SqliteStore::open(&path).unwrap_err().to_string();
        assert!(error.contains(&path.display().to_string()), "{error}");
    }
}
