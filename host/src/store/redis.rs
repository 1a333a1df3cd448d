//! The store shared by every node of a cluster: the same data as `sqlite`, in Redis (used when
//! `redis-url` is set).
//!
//! Keys (beside the relay's `busbar:{<scope>}:*`):
//! - `busbar:store:kv:{<plugin>}` (hash key -> value) and `busbar:store:kv-usage:{<plugin>}`
//!   (hash `bytes`, `entries`): a plugin's kv entries and what its byte limit counts, changed
//!   together by one Lua script, so the limit holds across nodes;
//! - `busbar:store:deployments` (hash name -> JSON `{seq, current, previous}`) and
//!   `busbar:store:deployment-seq` (the first-deployed order);
//! - `busbar:store:component:<sha256>`: a component's bytes, written before any deployment
//!   names it, dropped by the script that stops the last deployment naming it;
//! - `busbar:store:node:<node-id>` (hash plugin -> JSON `{hash, failure}`, expiring): what each
//!   live node runs;
//! - `busbar:store:changes` (pub/sub): the name of each deployment that changed, published by
//!   the same script, which every node listens to (and every `RESYNC` it looks at all of them).
//!
//! One synchronous connection behind a mutex, with connect, read and write timeouts, so a call
//! waits at most `TIMEOUT` for a Redis that is away; a failed connection is dropped and the
//! next call connects again. Consistency: last writer wins across nodes; a write is visible to
//! the next call on any node.

use std::time::Duration;

use parking_lot::Mutex;
use redis::{Commands, Connection, Script};
use serde::{Deserialize, Serialize};

use super::{Deployment, KV_ENTRY_OVERHEAD, KvUsage, Store, StoreError, Version};
use crate::plugins::content_hash;

/// Longest a store call waits for Redis.
const TIMEOUT: Duration = Duration::from_millis(500);

const DEPLOYMENTS: &str = "busbar:store:deployments";
const SEQ: &str = "busbar:store:deployment-seq";
/// Where every deployment change is announced (the deployment's name).
const CHANGES: &str = "busbar:store:changes";
/// How often a listening node looks at every deployment again, whatever it heard.
const RESYNC: Duration = Duration::from_secs(10);

fn kv_key(plugin: &str) -> String {
    format!("busbar:store:kv:{{{plugin}}}")
}

fn usage_key(plugin: &str) -> String {
    format!("busbar:store:kv-usage:{{{plugin}}}")
}

fn node_key(node: &str) -> String {
    format!("busbar:store:node:{node}")
}

fn component_key(hash: &str) -> String {
    format!("busbar:store:component:{hash}")
}

/// Sets a kv entry within the byte limit: `{1, bytes}` when set, `{0, bytes it would hold}`.
const KV_SET: &str = r#"
local key, value, limit, overhead = ARGV[1], ARGV[2], tonumber(ARGV[3]), tonumber(ARGV[4])
local bytes = tonumber(redis.call('HGET', KEYS[2], 'bytes') or '0')
local entries = tonumber(redis.call('HGET', KEYS[2], 'entries') or '0')
if redis.call('HEXISTS', KEYS[1], key) == 1 then
  bytes = bytes - (#key + redis.call('HSTRLEN', KEYS[1], key) + overhead)
else
  entries = entries + 1
end
bytes = bytes + #key + #value + overhead
if bytes > limit then return {0, bytes} end
redis.call('HSET', KEYS[1], key, value)
redis.call('HSET', KEYS[2], 'bytes', bytes, 'entries', entries)
return {1, bytes}
"#;

/// Deletes a kv entry: 1 when it existed.
const KV_DELETE: &str = r#"
local key, overhead = ARGV[1], tonumber(ARGV[2])
if redis.call('HEXISTS', KEYS[1], key) == 0 then return 0 end
local freed = #key + redis.call('HSTRLEN', KEYS[1], key) + overhead
redis.call('HDEL', KEYS[1], key)
local entries = redis.call('HINCRBY', KEYS[2], 'entries', -1)
local bytes = redis.call('HINCRBY', KEYS[2], 'bytes', -freed)
if entries <= 0 then redis.call('DEL', KEYS[2]) end
return 1
"#;

/// Records (ARGV[2], JSON without `seq`) or forgets (no ARGV[2]) deployment ARGV[1], keeping
/// its first-deployed order, then drops the components no deployment names. Refuses with an
/// error naming a component that is not stored.
const DEPLOY: &str = r#"
local name, record = ARGV[1], ARGV[2]
if record then
  local r = cjson.decode(record)
  for _, v in ipairs({r.current, r.previous}) do
    if type(v) == 'table' and redis.call('EXISTS', 'busbar:store:component:' .. v.hash) == 0 then
      return redis.error_reply('MISSING ' .. v.hash)
    end
  end
  local old = redis.call('HGET', KEYS[1], name)
  if old then r.seq = cjson.decode(old).seq else r.seq = redis.call('INCR', KEYS[2]) end
  redis.call('HSET', KEYS[1], name, cjson.encode(r))
else
  redis.call('HDEL', KEYS[1], name)
end
local named = {}
for _, text in ipairs(redis.call('HVALS', KEYS[1])) do
  local r = cjson.decode(text)
  for _, v in ipairs({r.current, r.previous}) do
    if type(v) == 'table' then named[v.hash] = true end
  end
end
local cursor = '0'
repeat
  local page = redis.call('SCAN', cursor, 'MATCH', 'busbar:store:component:*', 'COUNT', 100)
  cursor = page[1]
  for _, key in ipairs(page[2]) do
    if not named[string.sub(key, 24)] then redis.call('DEL', key) end
  end
until cursor == '0'
redis.call('PUBLISH', KEYS[3], name)
return 1
"#;

#[derive(Serialize, Deserialize)]
struct Record {
    #[serde(default)]
    seq: u64,
    current: Option<Stored>,
    previous: Option<Stored>,
}

#[derive(Serialize, Deserialize)]
struct Stored {
    hash: String,
    manifest: String,
}

impl From<&Version> for Stored {
    fn from(v: &Version) -> Stored {
        Stored { hash: v.hash.clone(), manifest: v.manifest.clone() }
    }
}

impl From<Stored> for Version {
    fn from(s: Stored) -> Version {
        Version { hash: s.hash, manifest: s.manifest }
    }
}

/// The Redis store.
pub struct RedisStore {
    client: redis::Client,
    url: String,
    conn: Mutex<Option<Connection>>,
    scripts: [Script; 3],
}

impl std::fmt::Debug for RedisStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisStore").field("url", &self.url).finish_non_exhaustive()
    }
}

impl RedisStore {
    /// A store at `url`; connects on first use (and again after a failure).
    pub fn open(url: &str) -> Result<RedisStore, StoreError> {
        let client = redis::Client::open(url).map_err(|e| StoreError::Database { path: redacted(url), message: e.to_string() })?;
        let scripts = [Script::new(KV_SET), Script::new(KV_DELETE), Script::new(DEPLOY)];
        Ok(RedisStore { client, url: redacted(url), conn: Mutex::new(None), scripts })
    }

    /// Runs `op` on the connection, connecting first if needed, waiting at most `TIMEOUT`; a
    /// failure drops the connection.
    fn with<T>(&self, op: impl FnOnce(&mut Connection, &[Script; 3]) -> redis::RedisResult<T>) -> Result<T, StoreError> {
        self.within(TIMEOUT, op)
    }

    /// `with`, waiting at most `within` (for the connection, connecting, and each read and write).
    fn within<T>(&self, within: Duration, op: impl FnOnce(&mut Connection, &[Script; 3]) -> redis::RedisResult<T>) -> Result<T, StoreError> {
        let started = std::time::Instant::now();
        let mut slot = self.conn.try_lock_for(within).ok_or(StoreError::Deadline)?;
        let left = within.saturating_sub(started.elapsed()).min(TIMEOUT);
        if left.is_zero() {
            return Err(StoreError::Deadline);
        }
        if slot.is_none() {
            *slot = Some(self.client.get_connection_with_timeout(left).map_err(|e| self.error(e))?);
        }
        let Some(conn) = slot.as_mut() else { unreachable!("connected above") };
        let timeouts = conn.set_read_timeout(Some(left)).and_then(|()| conn.set_write_timeout(Some(left)));
        if let Err(e) = timeouts {
            *slot = None;
            return Err(self.error(e));
        }
        op(conn, &self.scripts).map_err(|e| {
            if e.is_io_error() || e.is_timeout() || e.is_connection_dropped() || e.is_connection_refusal() {
                *slot = None;
            }
            self.error(e)
        })
    }

    fn error(&self, e: redis::RedisError) -> StoreError {
        StoreError::Database { path: self.url.clone(), message: e.to_string() }
    }
}

/// The URL without its password, for messages.
fn redacted(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(scheme), Some(at)) if at > scheme => format!("{}://…@{}", &url[..scheme], &url[at + 1..]),
        _ => url.to_string(),
    }
}

impl Store for RedisStore {
    fn deployments(&self) -> Result<Vec<Deployment>, StoreError> {
        let all: Vec<(String, String)> = self.with(|c, _| c.hgetall(DEPLOYMENTS))?;
        let mut records = Vec::new();
        for (name, text) in all {
            let record: Record = serde_json::from_str(&text)
                .map_err(|e| StoreError::Database { path: self.url.clone(), message: format!("deployment `{name}`: {e}") })?;
            records.push((record.seq, Deployment { name, current: record.current.map(Into::into), previous: record.previous.map(Into::into) }));
        }
        records.sort_by_key(|(seq, _)| *seq);
        Ok(records.into_iter().map(|(_, d)| d).collect())
    }

    fn component(&self, hash: &str) -> Result<Vec<u8>, StoreError> {
        let bytes: Option<Vec<u8>> = self.with(|c, _| c.get(component_key(hash)))?;
        super::checked_component(hash, bytes)
    }

    fn save(&self, deployment: &Deployment, components: &[&[u8]]) -> Result<(), StoreError> {
        for bytes in components {
            let _: () = self.with(|c, _| c.set(component_key(&content_hash(bytes)), *bytes))?;
        }
        let record = Record { seq: 0, current: deployment.current.as_ref().map(Into::into), previous: deployment.previous.as_ref().map(Into::into) };
        let json = serde_json::to_string(&record).map_err(|e| StoreError::Database { path: self.url.clone(), message: e.to_string() })?;
        // A `MISSING <hash>` error reply names a component no save stored.
        self.with(|c, s| match s[2].key(DEPLOYMENTS).key(SEQ).key(CHANGES).arg(&deployment.name).arg(json).invoke::<i64>(c) {
            Err(e) if e.code() == Some("MISSING") => Ok(Err(StoreError::MissingBlob(e.detail().unwrap_or_default().to_string()))),
            other => other.map(|_| Ok(())),
        })?
    }

    fn forget(&self, name: &str) -> Result<(), StoreError> {
        self.with(|c, s| s[2].key(DEPLOYMENTS).key(SEQ).key(CHANGES).arg(name).invoke::<i64>(c))?;
        Ok(())
    }

    fn kv_get(&self, plugin: &str, key: &str, within: Duration) -> Result<Option<Vec<u8>>, StoreError> {
        self.within(within, |c, _| c.hget(kv_key(plugin), key))
    }

    fn kv_set(&self, plugin: &str, key: &str, value: &[u8], max_bytes: usize, within: Duration) -> Result<(), StoreError> {
        let (set, bytes): (i64, usize) = self.within(within, |c, s| {
            s[0].key(kv_key(plugin)).key(usage_key(plugin)).arg(key).arg(value).arg(max_bytes).arg(KV_ENTRY_OVERHEAD).invoke(c)
        })?;
        if set == 1 { Ok(()) } else { Err(StoreError::KvFull { after: bytes, limit: max_bytes }) }
    }

    fn kv_delete(&self, plugin: &str, key: &str, within: Duration) -> Result<bool, StoreError> {
        let deleted: i64 = self.within(within, |c, s| s[1].key(kv_key(plugin)).key(usage_key(plugin)).arg(key).arg(KV_ENTRY_OVERHEAD).invoke(c))?;
        Ok(deleted == 1)
    }

    fn kv_clear(&self, plugin: &str) -> Result<(), StoreError> {
        self.with(|c, _| redis::pipe().atomic().del(kv_key(plugin)).del(usage_key(plugin)).query::<()>(c))
    }

    fn report_versions(&self, node: &str, versions: &std::collections::BTreeMap<String, super::NodeVersion>, ttl: Duration) -> Result<(), StoreError> {
        let key = node_key(node);
        let mut pipe = redis::pipe();
        pipe.atomic().del(&key);
        let fields: Vec<(&String, String)> =
            versions.iter().map(|(name, version)| (name, serde_json::to_string(version).unwrap_or_default())).collect();
        if !fields.is_empty() {
            pipe.hset_multiple(&key, &fields).pexpire(&key, ttl.as_millis() as i64);
        }
        self.with(|c, _| pipe.query::<()>(c))
    }

    fn node_versions(&self) -> Result<super::NodeVersions, StoreError> {
        let keys: Vec<String> = self.with(|c, _| c.scan_match::<_, String>("busbar:store:node:*")?.collect::<redis::RedisResult<Vec<String>>>())?;
        let mut nodes = super::NodeVersions::new();
        for key in keys {
            let fields: std::collections::BTreeMap<String, String> = self.with(|c, _| c.hgetall(&key))?;
            let versions = fields.into_iter().filter_map(|(name, json)| Some((name, serde_json::from_str(&json).ok()?))).collect();
            nodes.insert(key.trim_start_matches("busbar:store:node:").to_string(), versions);
        }
        Ok(nodes)
    }

    fn listen(&self, changed: super::OnChange) -> Option<super::Listening> {
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let (client, stopped) = (self.client.clone(), stop.clone());
        let spawned = std::thread::Builder::new().name("busbar-store-listen".into()).spawn(move || listen(&client, &stopped, &*changed));
        match spawned {
            Ok(_) => Some(super::Listening::new(stop)),
            Err(e) => {
                tracing::error!("cannot start listening for deployment changes: {e}");
                None
            }
        }
    }

    fn kv_usage(&self, plugin: &str) -> Result<KvUsage, StoreError> {
        let (bytes, entries): (Option<usize>, Option<usize>) = self.with(|c, _| redis::cmd("HMGET").arg(usage_key(plugin)).arg("bytes").arg("entries").query(c))?;
        Ok(KvUsage { bytes: bytes.unwrap_or_default(), entries: entries.unwrap_or_default() })
    }
}

/// Hears `CHANGES` until `stop`: each name to `changed`, and `changed(None)` after every
/// (re)connection and every `RESYNC`. Reconnects after a failure, a second later.
fn listen(client: &redis::Client, stop: &std::sync::atomic::AtomicBool, changed: &dyn Fn(Option<&str>)) {
    use std::sync::atomic::Ordering::Relaxed;
    while !stop.load(Relaxed) {
        let heard = (|| -> redis::RedisResult<()> {
            let mut conn = client.get_connection_with_timeout(TIMEOUT)?;
            let mut pubsub = conn.as_pubsub();
            pubsub.set_read_timeout(Some(Duration::from_secs(1)))?;
            pubsub.subscribe(CHANGES)?;
            changed(None);
            let mut resynced = std::time::Instant::now();
            while !stop.load(Relaxed) {
                match pubsub.get_message() {
                    Ok(message) => {
                        let name: String = message.get_payload()?;
                        changed(Some(&name));
                    }
                    Err(e) if e.is_timeout() => {}
                    Err(e) => return Err(e),
                }
                if resynced.elapsed() >= RESYNC {
                    changed(None);
                    resynced = std::time::Instant::now();
                }
            }
            Ok(())
        })();
        if let Err(e) = heard {
            tracing::warn!("listening for deployment changes: {e}; again in a second");
            std::thread::sleep(Duration::from_secs(1));
        }
    }
}
