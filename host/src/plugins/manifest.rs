//! The plugin manifest: the small TOML file beside a component (`name.toml`, or `plugin.toml`
//! in a plugin's source directory) that names it, orders it, limits it and configures it.
//!
//! Read in two steps: `RawManifest` is what serde reads (unknown keys are errors, so typos are
//! caught), `Manifest` is the validated, typed form the runtime uses. Nothing here touches
//! wasmtime; every limit has a default so that a component without a manifest loads too.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::policy::Grant;
use super::roles::{PolicyManifest, RawPolicy};
use crate::bus::Subscription;

/// A validated manifest.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Manifest {
    pub name: String,
    /// Position among listeners: lower runs first; none runs after those with one.
    pub order: Option<i64>,
    /// Overrides the plugin's own `subscriptions()` when set.
    pub subscriptions: Option<Vec<String>>,
    pub limits: Limits,
    pub config: BTreeMap<String, String>,
    pub capabilities: Capabilities,
    /// Start with an empty kv store when a new version replaces a running one (by default the
    /// store, and the state in it, survives reloads).
    pub reset_kv_on_reload: bool,
    /// The policy roles it serves and what they may see (`[policy]`).
    pub policy: PolicyManifest,
}

/// Per-plugin limits. Defaults suit a small Rust or C plugin; JS and Python plugins need more
/// memory.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Limits {
    /// Wall-clock deadline of one call (and of instantiation).
    pub timeout: Duration,
    /// Linear memory cap of one instance, in bytes.
    pub memory_bytes: usize,
    /// Most actions one call may return.
    pub max_actions: usize,
    /// Most bytes (types, ids, payloads) one call may return.
    pub max_output_bytes: usize,
    /// Total bytes of keys and values in the plugin's kv store.
    pub kv_max_bytes: usize,
    /// Largest single kv value.
    pub kv_value_max_bytes: usize,
    /// Consecutive failed calls (trap, timeout, out of memory, invalid output) before the
    /// plugin is quarantined. Errors the plugin returns itself do not count.
    pub failures_to_quarantine: u32,
    /// Calls looked back on for the failure rate (at most 64).
    pub failure_window: u32,
    /// The plugin is also quarantined when at least this share (in percent) of the last
    /// `failure_window` calls failed, in a row or not.
    pub failure_rate_percent: u32,
    /// First quarantine; doubles on each repeated quarantine, up to 32 times this.
    pub quarantine: Duration,
    /// Largest stdout/stderr/log output per call that reaches the host log.
    pub log_bytes_per_call: usize,
    /// Most subscription patterns the plugin may declare.
    pub max_subscriptions: usize,
    /// Longest error text kept from the plugin (its `err(..)`), in bytes; the rest is cut.
    pub max_error_bytes: usize,
    /// Deepest nesting of arrays and objects in a payload the plugin returns.
    pub max_json_depth: usize,
    /// Most WASI resources (streams, pollables, clock subscriptions) one instance may hold.
    pub max_host_resources: usize,
}

impl Default for Limits {
    fn default() -> Limits {
        Limits {
            timeout: Duration::from_millis(100),
            memory_bytes: 64 << 20,
            max_actions: 256,
            max_output_bytes: 1 << 20,
            kv_max_bytes: 1 << 20,
            kv_value_max_bytes: 64 << 10,
            failures_to_quarantine: 5,
            failure_window: 20,
            failure_rate_percent: 50,
            quarantine: Duration::from_secs(30),
            log_bytes_per_call: 16 << 10,
            max_subscriptions: 64,
            max_error_bytes: 1024,
            max_json_depth: crate::event::MAX_JSON_DEPTH,
            max_host_resources: 4096,
        }
    }
}

/// What a plugin may reach beyond its own sandbox. Nothing by default.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct Capabilities {
    /// Environment variables the plugin sees (explicit values; the host's own environment is
    /// never inherited).
    pub env: BTreeMap<String, String>,
    /// Host directories the plugin may read: guest path -> host path. Read-only.
    pub read_dirs: BTreeMap<String, PathBuf>,
    /// Where its output may go beyond the event's workspace (see `policy`).
    pub grants: BTreeSet<Grant>,
}

/// Why a manifest was refused. Messages name the key.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ManifestError {
    #[error("{path}: {message}")]
    Parse { path: String, message: String },
    #[error("{path}: `{key}` {problem}")]
    Invalid { path: String, key: &'static str, problem: String },
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
struct RawManifest {
    name: Option<String>,
    order: Option<i64>,
    subscriptions: Option<Vec<String>>,
    #[serde(default)]
    limits: RawLimits,
    #[serde(default)]
    config: BTreeMap<String, toml::Value>,
    #[serde(default)]
    capabilities: RawCapabilities,
    #[serde(default)]
    reset_kv_on_reload: bool,
    #[serde(default)]
    policy: RawPolicy,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
struct RawLimits {
    timeout_ms: Option<u64>,
    memory_mib: Option<u64>,
    max_actions: Option<u64>,
    max_output_kib: Option<u64>,
    kv_max_kib: Option<u64>,
    kv_value_max_kib: Option<u64>,
    failures_to_quarantine: Option<u32>,
    failure_window: Option<u64>,
    failure_rate_percent: Option<u64>,
    quarantine_secs: Option<u64>,
    log_kib_per_call: Option<u64>,
    max_subscriptions: Option<u64>,
    max_error_bytes: Option<u64>,
    max_json_depth: Option<u64>,
    max_host_resources: Option<u64>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
struct RawCapabilities {
    #[serde(default)]
    env: BTreeMap<String, String>,
    #[serde(default)]
    read_dirs: BTreeMap<String, PathBuf>,
    #[serde(default)]
    grants: Vec<String>,
}

/// Largest memory cap a manifest may ask for.
pub(super) const MAX_MEMORY_MIB: u64 = 4096;

impl Manifest {
    /// The manifest of a component that has none: every default, named `name`.
    pub fn named(name: impl Into<String>) -> Manifest {
        Manifest {
            name: name.into(),
            order: None,
            subscriptions: None,
            limits: Limits::default(),
            config: BTreeMap::new(),
            capabilities: Capabilities::default(),
            reset_kv_on_reload: false,
            policy: PolicyManifest::default(),
        }
    }

    /// Reads a manifest file (a regular file of at most 64 KiB). Relative `read-dirs` are
    /// resolved against its directory.
    pub fn from_file(path: &Path, default_name: &str) -> Result<Manifest, ManifestError> {
        let parse_error = |message: String| ManifestError::Parse { path: path.display().to_string(), message };
        let bytes = super::files::read(path, super::files::MAX_MANIFEST_BYTES).map_err(|e| parse_error(e.to_string()))?;
        let text = String::from_utf8(bytes).map_err(|_| parse_error("not UTF-8".into()))?;
        let base = path.parent().unwrap_or(Path::new("."));
        Manifest::parse(&text, default_name, &path.display().to_string(), base)
    }

    /// Parses manifest text; `origin` names it in errors.
    pub fn parse(text: &str, default_name: &str, origin: &str, base: &Path) -> Result<Manifest, ManifestError> {
        let raw: RawManifest = toml::from_str(text).map_err(|e| ManifestError::Parse {
            path: origin.to_string(),
            message: e.message().to_string(),
        })?;
        let invalid = |key: &'static str, problem: String| ManifestError::Invalid {
            path: origin.to_string(),
            key,
            problem,
        };
        let name = raw.name.unwrap_or_else(|| default_name.to_string());
        check_plugin_name(&name).map_err(|p| invalid("name", p))?;
        if let Some(subscriptions) = &raw.subscriptions {
            Subscription::parse_all(subscriptions).map_err(|e| invalid("subscriptions", e.to_string()))?;
        }
        let declared = raw.subscriptions.as_ref().map_or(0, Vec::len);
        let d = Limits::default();
        let l = raw.limits;
        let ranged = |key: &'static str, value: Option<u64>, min: u64, max: u64, default: u64| {
            match value {
                None => Ok(default),
                Some(v) if (min..=max).contains(&v) => Ok(v),
                Some(v) => Err(invalid(key, format!("is {v}; it must be between {min} and {max}"))),
            }
        };
        let limits = Limits {
            timeout: Duration::from_millis(ranged("limits.timeout-ms", l.timeout_ms, 1, 60_000, d.timeout.as_millis() as u64)?),
            memory_bytes: (ranged("limits.memory-mib", l.memory_mib, 1, MAX_MEMORY_MIB, (d.memory_bytes >> 20) as u64)? << 20) as usize,
            max_actions: ranged("limits.max-actions", l.max_actions, 0, 100_000, d.max_actions as u64)? as usize,
            max_output_bytes: (ranged("limits.max-output-kib", l.max_output_kib, 1, 64 << 10, (d.max_output_bytes >> 10) as u64)? << 10) as usize,
            kv_max_bytes: (ranged("limits.kv-max-kib", l.kv_max_kib, 0, 1 << 20, (d.kv_max_bytes >> 10) as u64)? << 10) as usize,
            kv_value_max_bytes: (ranged("limits.kv-value-max-kib", l.kv_value_max_kib, 0, 64 << 10, (d.kv_value_max_bytes >> 10) as u64)? << 10) as usize,
            failures_to_quarantine: ranged(
                "limits.failures-to-quarantine",
                l.failures_to_quarantine.map(u64::from),
                1,
                1_000_000,
                u64::from(d.failures_to_quarantine),
            )? as u32,
            failure_window: ranged("limits.failure-window", l.failure_window, 2, 64, u64::from(d.failure_window))? as u32,
            failure_rate_percent: ranged("limits.failure-rate-percent", l.failure_rate_percent, 1, 100, u64::from(d.failure_rate_percent))? as u32,
            quarantine: Duration::from_secs(ranged("limits.quarantine-secs", l.quarantine_secs, 0, 86_400, d.quarantine.as_secs())?),
            log_bytes_per_call: (ranged("limits.log-kib-per-call", l.log_kib_per_call, 0, 1 << 10, (d.log_bytes_per_call >> 10) as u64)? << 10) as usize,
            max_subscriptions: ranged("limits.max-subscriptions", l.max_subscriptions, 1, 4096, d.max_subscriptions as u64)? as usize,
            max_error_bytes: ranged("limits.max-error-bytes", l.max_error_bytes, 64, 64 << 10, d.max_error_bytes as u64)? as usize,
            max_json_depth: ranged("limits.max-json-depth", l.max_json_depth, 1, 127, d.max_json_depth as u64)? as usize,
            max_host_resources: ranged("limits.max-host-resources", l.max_host_resources, 16, 1_000_000, d.max_host_resources as u64)? as usize,
        };
        if declared > limits.max_subscriptions {
            return Err(invalid("subscriptions", format!("lists {declared} patterns; `limits.max-subscriptions` is {}", limits.max_subscriptions)));
        }
        let mut config = BTreeMap::new();
        for (key, value) in raw.config {
            let value = match value {
                toml::Value::String(s) => s,
                toml::Value::Integer(i) => i.to_string(),
                toml::Value::Float(f) => f.to_string(),
                toml::Value::Boolean(b) => b.to_string(),
                other => {
                    return Err(invalid("config", format!("value of `{key}` is a {}; only strings, numbers and booleans are allowed", other.type_str())));
                }
            };
            config.insert(key, value);
        }
        let grants = raw
            .capabilities
            .grants
            .iter()
            .map(|g| g.parse::<Grant>())
            .collect::<Result<BTreeSet<Grant>, String>>()
            .map_err(|e| invalid("capabilities.grants", e))?;
        let mut read_dirs = BTreeMap::new();
        for (guest, host) in raw.capabilities.read_dirs {
            if !guest.starts_with('/') {
                return Err(invalid("capabilities.read-dirs", format!("guest path `{guest}` must be absolute")));
            }
            let host = if host.is_relative() { base.join(host) } else { host };
            read_dirs.insert(guest, host);
        }
        Ok(Manifest {
            name,
            order: raw.order,
            subscriptions: raw.subscriptions,
            limits,
            config,
            capabilities: Capabilities { env: raw.capabilities.env, read_dirs, grants },
            reset_kv_on_reload: raw.reset_kv_on_reload,
            policy: raw.policy.validate().map_err(|(key, problem)| invalid(key, problem))?,
        })
    }
}

impl Manifest {
    /// The manifest as manifest-file text that `parse` reads back as this manifest (how the
    /// store keeps a deployed version's manifest). `read-dirs` are written as absolute paths.
    pub fn to_toml(&self) -> String {
        use toml::Value;
        let int = |v: u64| Value::Integer(i64::try_from(v).unwrap_or(i64::MAX));
        let l = &self.limits;
        let limits: toml::Table = [
            ("timeout-ms", int(l.timeout.as_millis() as u64)),
            ("memory-mib", int((l.memory_bytes >> 20) as u64)),
            ("max-actions", int(l.max_actions as u64)),
            ("max-output-kib", int((l.max_output_bytes >> 10) as u64)),
            ("kv-max-kib", int((l.kv_max_bytes >> 10) as u64)),
            ("kv-value-max-kib", int((l.kv_value_max_bytes >> 10) as u64)),
            ("failures-to-quarantine", int(u64::from(l.failures_to_quarantine))),
            ("failure-window", int(u64::from(l.failure_window))),
            ("failure-rate-percent", int(u64::from(l.failure_rate_percent))),
            ("quarantine-secs", int(l.quarantine.as_secs())),
            ("log-kib-per-call", int((l.log_bytes_per_call >> 10) as u64)),
            ("max-subscriptions", int(l.max_subscriptions as u64)),
            ("max-error-bytes", int(l.max_error_bytes as u64)),
            ("max-json-depth", int(l.max_json_depth as u64)),
            ("max-host-resources", int(l.max_host_resources as u64)),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v))
        .collect();
        let strings = |map: &BTreeMap<String, String>| -> toml::Table { map.iter().map(|(k, v)| (k.clone(), Value::String(v.clone()))).collect() };
        let mut capabilities = toml::Table::new();
        capabilities.insert("env".into(), Value::Table(strings(&self.capabilities.env)));
        let read_dirs = self.capabilities.read_dirs.iter().map(|(k, v)| (k.clone(), Value::String(v.display().to_string()))).collect();
        capabilities.insert("read-dirs".into(), Value::Table(read_dirs));
        capabilities.insert("grants".into(), Value::Array(self.capabilities.grants.iter().map(|g| Value::String(g.as_str().into())).collect()));
        let mut table = toml::Table::new();
        table.insert("name".into(), Value::String(self.name.clone()));
        if let Some(order) = self.order {
            table.insert("order".into(), Value::Integer(order));
        }
        if let Some(subscriptions) = &self.subscriptions {
            table.insert("subscriptions".into(), Value::Array(subscriptions.iter().cloned().map(Value::String).collect()));
        }
        table.insert("reset-kv-on-reload".into(), Value::Boolean(self.reset_kv_on_reload));
        table.insert("limits".into(), Value::Table(limits));
        table.insert("config".into(), Value::Table(strings(&self.config)));
        table.insert("capabilities".into(), Value::Table(capabilities));
        if let Some(policy) = self.policy.to_toml() {
            table.insert("policy".into(), Value::Table(policy));
        }
        table.to_string()
    }
}

/// The manifest beside `wasm`, or defaults named after the file.
pub fn read_manifest(wasm: &Path, stem: &str) -> Result<Manifest, ManifestError> {
    let toml = wasm.with_extension("toml");
    if toml.exists() {
        return Manifest::from_file(&toml, stem);
    }
    let name = stem.replace('_', "-");
    check_plugin_name(&name)
        .map_err(|problem| ManifestError::Invalid { path: wasm.display().to_string(), key: "name", problem })?;
    Ok(Manifest::named(name))
}

/// Plugin names are listener names: 1 to 64 of ASCII letters, digits, `-`, `_`, `.`, starting
/// with a letter or a digit (so never `.`, `..` or a hidden file's name).
pub fn check_plugin_name(name: &str) -> Result<(), String> {
    if name.is_empty() || name.len() > 64 {
        return Err(format!("`{}` must be 1 to 64 characters", super::text::sanitize(name, 80)));
    }
    if !name.starts_with(|c: char| c.is_ascii_alphanumeric()) {
        return Err(format!("`{}` must start with an ASCII letter or digit", super::text::sanitize(name, 80)));
    }
    if !name.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.')) {
        return Err(format!("`{}` may only contain ASCII letters, digits, `-`, `_` and `.`", super::text::sanitize(name, 80)));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<Manifest, ManifestError> {
        Manifest::parse(text, "fallback", "plugin.toml", Path::new("/plugins"))
    }

    #[test]
    fn a_manifest_written_as_toml_reads_back_the_same() {
        let full = parse(
            r#"
            name = "router"
            order = -3
            subscriptions = ["task:*", "chat:done"]
            reset-kv-on-reload = true
            [limits]
            timeout-ms = 250
            memory-mib = 128
            kv-max-kib = 0
            quarantine-secs = 0
            [config]
            prefix = "x \" y"
            n = 3
            [capabilities]
            env = { A = "1" }
            read-dirs = { "/data" = "data" }
            grants = ["everyone", "impersonate"]
            [policy]
            roles = ["authorizer"]
            cookies = ["session"]
            headers = ["X-Auth"]
            max-cache-ms = 5000
            "#,
        )
        .unwrap();
        for manifest in [full, Manifest::named("plain")] {
            let text = manifest.to_toml();
            assert_eq!(Manifest::parse(&text, "other", "stored", Path::new("/elsewhere")).unwrap(), manifest, "{text}");
        }
    }

    #[test]
    fn empty_manifest_is_all_defaults() {
        let m = parse("").unwrap();
        assert_eq!(m, Manifest::named("fallback"));
    }

    #[test]
    fn full_manifest_is_read() {
        let m = parse(
            r#"
            name = "router"
            order = 10
            subscriptions = ["task:*", "chat:done"]
            [limits]
            timeout-ms = 250
            memory-mib = 128
            max-actions = 10
            [config]
            greeting = "hi"
            retries = 3
            loud = true
            [capabilities]
            env = { MODE = "test" }
            read-dirs = { "/data" = "data" }
            "#,
        )
        .unwrap();
        assert_eq!(m.name, "router");
        assert_eq!(m.order, Some(10));
        assert_eq!(m.subscriptions.as_deref(), Some(&["task:*".to_string(), "chat:done".to_string()][..]));
        assert_eq!(m.limits.timeout, Duration::from_millis(250));
        assert_eq!(m.limits.memory_bytes, 128 << 20);
        assert_eq!(m.limits.max_actions, 10);
        assert_eq!(m.config["retries"], "3");
        assert_eq!(m.config["loud"], "true");
        assert_eq!(m.capabilities.env["MODE"], "test");
        assert_eq!(m.capabilities.read_dirs["/data"], PathBuf::from("/plugins/data"));
    }

    #[test]
    fn mistakes_name_the_key() {
        let cases = [
            ("nmae = 'x'", "unknown field `nmae`"),
            ("[limits]\ntimeout = 5", "unknown field `timeout`"),
            ("[limits]\ntimeout-ms = 0", "`limits.timeout-ms` is 0; it must be between 1 and 60000"),
            ("[limits]\nmemory-mib = 9999", "`limits.memory-mib` is 9999"),
            ("name = 'a b'", "`name` `a b` may only contain"),
            ("name = '..'", "`name` `..` must start with an ASCII letter or digit"),
            ("name = '.hidden'", "`name` `.hidden` must start with"),
            ("[limits]\nfailure-window = 100", "`limits.failure-window` is 100; it must be between 2 and 64"),
            ("subscriptions = ['a', 'b', 'c']\n[limits]\nmax-subscriptions = 2", "`subscriptions` lists 3 patterns; `limits.max-subscriptions` is 2"),
            ("subscriptions = ['a*b']", "`subscriptions` invalid subscription `a*b`"),
            ("subscriptions = []", "`subscriptions` invalid subscription"),
            ("[config]\nlist = [1]", "value of `list` is a array"),
            ("[capabilities]\nread-dirs = { 'data' = '/x' }", "guest path `data` must be absolute"),
            ("[capabilities]\nnetwork = true", "unknown field `network`"),
            ("[capabilities]\ngrants = ['root']", "`capabilities.grants` unknown grant `root`; the grants are"),
            ("order = 'first'", "invalid type"),
            ("[policy]\nroles = ['admin']", "`policy.roles` unknown role `admin`"),
            ("[policy]\ncookies = ['a;b']", "`policy.cookies` `a;b` is not a valid name"),
            ("[policy]\nmax-cache-ms = 4000000", "`policy.max-cache-ms` is 4000000"),
        ];
        for (text, expected) in cases {
            let err = parse(text).unwrap_err().to_string();
            assert!(err.contains(expected), "{text:?}: {err}");
            assert!(err.starts_with("plugin.toml"), "{err}");
        }
    }
}
