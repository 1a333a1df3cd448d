//! Server configuration: read once at start from a file, the environment and flags, validated
//! with errors that name the key, then handed out as typed values.
//!
//! Two steps, as in ripgrep: `RawConfig` is what serde reads from `busbar.toml` (unknown keys are
//! errors); `Config` is the typed, validated result. Priority: flags, then environment
//! (`BUSBAR_*`), then the file, then defaults. This is the only module that reads environment
//! variables.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

use crate::api::ConnectionLimits;
use crate::bus::BusLimits;
use crate::hub::{HubConfig, TokenRules};
use crate::plugins::{CompileLimits, MemoryBudget};

/// The development secret used when none is configured. Anyone can mint tokens with it, so
/// busbar refuses to use it on anything but a loopback address.
pub const DEV_JWT_SECRET: &str = "busbar-development-secret-do-not-use-in-production";

/// Default address of `busbar serve`.
pub const DEFAULT_LISTEN: &str = "127.0.0.1:8080";

#[derive(Debug, Clone)]
pub struct Config {
    pub listen: SocketAddr,
    /// Directory of plugins; `None` loads the built-in examples.
    pub plugins_dir: Option<PathBuf>,
    /// Compiled-component cache; `None` compiles on every start.
    pub cache_dir: Option<PathBuf>,
    /// Where deployments and plugin state are kept (`busbar.db` in it); `None` keeps them in
    /// memory only (`--ephemeral`).
    pub data_dir: Option<PathBuf>,
    pub jwt_secret: Vec<u8>,
    /// True when `jwt_secret` is the development secret (however it was supplied): the server
    /// then listens on loopback only and accepts loopback clients only.
    pub dev_secret: bool,
    /// The `aud` and `iss` connection tokens must carry, when set.
    pub token_rules: TokenRules,
    /// Bearer token for admin routes; without one they answer loopback callers only.
    pub admin_token: Option<String>,
    /// Bearer token for `POST /v1/events` (the admin token works too).
    pub publish_token: Option<String>,
    /// Origins allowed to open WebSockets, besides same-origin and origin-less clients.
    pub allowed_origins: Vec<String>,
    pub hub: HubConfig,
    /// Largest `POST /v1/events` body.
    pub max_events_body: usize,
    /// Largest plugin upload, and largest component read from the plugin directory.
    pub max_upload: usize,
    /// Bytes all plugins together may hold (guest memories, outputs being lifted).
    pub plugin_memory: usize,
    /// What compiling one component may take, and how many compile at once.
    pub compile_limits: CompileLimits,
    /// The executable that compiles components in a child process (`busbar compile-worker`).
    /// Not read from any setting: `busbar serve` sets it to itself; `None` compiles in-process.
    pub compile_worker: Option<PathBuf>,
    /// The budget of one publish (follow-up depth and count, time, output bytes).
    pub publish_limits: BusLimits,
    /// Deepest JSON nesting accepted in a published event's payload.
    pub max_json_depth: usize,
    /// Largest listener report in one `POST /v1/events` response; past it, results are summarized.
    pub max_report_bytes: usize,
    /// Caps on connections, HTTP timeouts, the kernel send buffer of each socket.
    pub connection_limits: ConnectionLimits,
    /// Instance slots of the plugin runtime's pool (all plugins together).
    pub instance_slots: u32,
    /// Share fan-out with other nodes through Redis; `None` is the single-node mode.
    pub relay: Option<crate::relay::RelayConfig>,
}

/// Values given on the command line; they win over everything else.
#[derive(Debug, Clone, Default)]
pub struct Overrides {
    pub config_file: Option<PathBuf>,
    pub listen: Option<String>,
    pub plugins_dir: Option<PathBuf>,
    pub cache_dir: Option<PathBuf>,
    pub no_cache: bool,
    pub data_dir: Option<PathBuf>,
    /// Keep deployments and plugin state in memory only.
    pub ephemeral: bool,
    pub redis_url: Option<String>,
}

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config file {path}: {message}")]
    File { path: String, message: String },
    #[error("`{key}`: {problem}")]
    Invalid { key: String, problem: String },
}

fn invalid(key: &str, problem: impl Into<String>) -> ConfigError {
    ConfigError::Invalid { key: key.to_string(), problem: problem.into() }
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
struct RawConfig {
    listen: Option<String>,
    plugins: Option<PathBuf>,
    cache_dir: Option<PathBuf>,
    data_dir: Option<PathBuf>,
    instance_slots: Option<u64>,
    #[serde(default)]
    auth: RawAuth,
    #[serde(default)]
    hub: RawHub,
    #[serde(default)]
    limits: RawLimits,
    #[serde(default)]
    relay: RawRelay,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
struct RawRelay {
    redis_url: Option<String>,
    node_id: Option<String>,
    history_ttl_secs: Option<u64>,
    outbox_capacity: Option<u64>,
    replay_limit: Option<u64>,
    workspace_history: Option<u64>,
    user_history: Option<u64>,
    task_history: Option<u64>,
    chat_history: Option<u64>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
struct RawAuth {
    jwt_secret: Option<String>,
    audience: Option<String>,
    issuer: Option<String>,
    admin_token: Option<String>,
    publish_token: Option<String>,
    allowed_origins: Option<Vec<String>>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
struct RawHub {
    max_queue_kib: Option<u64>,
    max_queue_age_ms: Option<u64>,
    max_scopes: Option<u64>,
    subscribe_rate: Option<f64>,
    subscribe_burst: Option<f64>,
    auth_timeout_ms: Option<u64>,
    ping_interval_secs: Option<u64>,
    read_timeout_secs: Option<u64>,
    max_connections_per_user: Option<u64>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
struct RawLimits {
    max_events_body_kib: Option<u64>,
    max_upload_mib: Option<u64>,
    plugin_memory_mib: Option<u64>,
    compile_memory_mib: Option<u64>,
    compile_timeout_secs: Option<u64>,
    compiles_at_once: Option<u64>,
    publish_max_depth: Option<u64>,
    publish_max_events: Option<u64>,
    publish_time_ms: Option<u64>,
    publish_output_kib: Option<u64>,
    max_json_depth: Option<u64>,
    max_report_kib: Option<u64>,
    max_connections: Option<u64>,
    max_connections_per_address: Option<u64>,
    http_header_timeout_secs: Option<u64>,
    http_body_timeout_secs: Option<u64>,
    socket_send_buffer_kib: Option<u64>,
    listen_backlog: Option<u64>,
}

impl Config {
    /// Reads the configuration from the process environment and the given overrides.
    pub fn load(overrides: &Overrides) -> Result<Config, ConfigError> {
        Config::load_with(overrides, |key| std::env::var(key).ok())
    }

    /// Reads the configuration with `env` standing in for the environment (for tests).
    pub fn load_with(overrides: &Overrides, env: impl Fn(&str) -> Option<String>) -> Result<Config, ConfigError> {
        let file = overrides
            .config_file
            .clone()
            .or_else(|| env("BUSBAR_CONFIG").map(PathBuf::from))
            .or_else(|| Path::new("busbar.toml").exists().then(|| PathBuf::from("busbar.toml")));
        let raw = match &file {
            Some(path) => {
                let text = std::fs::read_to_string(path)
                    .map_err(|e| ConfigError::File { path: path.display().to_string(), message: e.to_string() })?;
                toml::from_str::<RawConfig>(&text)
                    .map_err(|e| ConfigError::File { path: path.display().to_string(), message: e.message().to_string() })?
            }
            None => RawConfig::default(),
        };
        let base = file.as_deref().and_then(Path::parent).map(Path::to_path_buf).unwrap_or_default();
        let relative = |p: PathBuf| if p.is_relative() { base.join(p) } else { p };

        let listen_text = overrides
            .listen
            .clone()
            .or_else(|| env("BUSBAR_LISTEN"))
            .or(raw.listen)
            .unwrap_or_else(|| DEFAULT_LISTEN.to_string());
        let listen: SocketAddr = listen_text
            .parse()
            .map_err(|_| invalid("listen", format!("`{listen_text}` is not an address like 127.0.0.1:8080")))?;

        let plugins_dir = overrides
            .plugins_dir
            .clone()
            .or_else(|| env("BUSBAR_PLUGINS").map(PathBuf::from))
            .or(raw.plugins.map(relative));
        if let Some(dir) = &plugins_dir
            && !dir.is_dir()
        {
            return Err(invalid("plugins", format!("{} is not a directory", dir.display())));
        }
        // A directory setting: the flag, else the environment, else the file, else the default;
        // none when switched off.
        let directory = |off: bool, flag: &Option<PathBuf>, key: &str, file: Option<PathBuf>, default: Option<PathBuf>| {
            (!off).then(|| flag.clone().or_else(|| env(key).map(PathBuf::from)).or(file.map(relative)).or(default)).flatten()
        };
        let cache_dir = directory(overrides.no_cache, &overrides.cache_dir, "BUSBAR_CACHE_DIR", raw.cache_dir, default_cache_dir(&env));
        let ephemeral = overrides.ephemeral || env("BUSBAR_EPHEMERAL").is_some_and(|v| v == "1" || v == "true");
        let data_dir = directory(ephemeral, &overrides.data_dir, "BUSBAR_DATA_DIR", raw.data_dir, default_data_dir(&env));

        let secret = env("BUSBAR_JWT_SECRET").or(raw.auth.jwt_secret);
        let (jwt_secret, dev_secret) = match secret {
            // Supplied explicitly, the public secret is still the public secret.
            Some(s) if s == DEV_JWT_SECRET => (s.into_bytes(), true),
            Some(s) => {
                check_secret(&s).map_err(|problem| invalid("auth.jwt-secret", problem))?;
                (s.into_bytes(), false)
            }
            None => (DEV_JWT_SECRET.as_bytes().to_vec(), true),
        };
        if dev_secret && !listen.ip().is_loopback() {
            return Err(invalid(
                "auth.jwt-secret",
                format!("required when listening on {listen}: the development secret is public (set BUSBAR_JWT_SECRET)"),
            ));
        }
        let token_rules = TokenRules {
            audience: env("BUSBAR_JWT_AUDIENCE").or(raw.auth.audience).filter(|a| !a.is_empty()),
            issuer: env("BUSBAR_JWT_ISSUER").or(raw.auth.issuer).filter(|i| !i.is_empty()),
        };
        let admin_token = env("BUSBAR_ADMIN_TOKEN").or(raw.auth.admin_token);
        let publish_token = env("BUSBAR_PUBLISH_TOKEN").or(raw.auth.publish_token);
        for (key, token) in [("auth.admin-token", &admin_token), ("auth.publish-token", &publish_token)] {
            if token.as_ref().is_some_and(|t| t.len() < 16) {
                return Err(invalid(key, "must be at least 16 characters"));
            }
        }
        let allowed_origins = env("BUSBAR_ALLOWED_ORIGINS")
            .map(|list| list.split(',').map(|s| s.trim().to_string()).filter(|s| !s.is_empty()).collect())
            .or(raw.auth.allowed_origins)
            .unwrap_or_default();

        let d = HubConfig::default();
        let h = raw.hub;
        let ranged = |key: &str, value: Option<u64>, min: u64, max: u64, default: u64| match value {
            None => Ok(default),
            Some(v) if (min..=max).contains(&v) => Ok(v),
            Some(v) => Err(invalid(key, format!("is {v}; it must be between {min} and {max}"))),
        };
        let rate = |key: &str, value: Option<f64>, default: f64| match value {
            None => Ok(default),
            Some(v) if v.is_finite() && v > 0.0 && v <= 10_000.0 => Ok(v),
            Some(v) => Err(invalid(key, format!("is {v}; it must be above 0 and at most 10000"))),
        };
        let hub = HubConfig {
            max_queue_bytes: (ranged("hub.max-queue-kib", h.max_queue_kib, 1, 1 << 20, (d.max_queue_bytes >> 10) as u64)? << 10) as usize,
            max_queue_age: Duration::from_millis(ranged("hub.max-queue-age-ms", h.max_queue_age_ms, 1, 600_000, d.max_queue_age.as_millis() as u64)?),
            max_scopes: ranged("hub.max-scopes", h.max_scopes, 2, 10_000, d.max_scopes as u64)? as usize,
            subscribe_rate: rate("hub.subscribe-rate", h.subscribe_rate, d.subscribe_rate)?,
            subscribe_burst: rate("hub.subscribe-burst", h.subscribe_burst, d.subscribe_burst)?,
            auth_timeout: Duration::from_millis(ranged("hub.auth-timeout-ms", h.auth_timeout_ms, 1, 600_000, d.auth_timeout.as_millis() as u64)?),
            ping_interval: Duration::from_secs(ranged("hub.ping-interval-secs", h.ping_interval_secs, 1, 3600, d.ping_interval.as_secs())?),
            read_timeout: Duration::from_secs(ranged("hub.read-timeout-secs", h.read_timeout_secs, 1, 3600, d.read_timeout.as_secs())?),
            max_connections_per_user: ranged("hub.max-connections-per-user", h.max_connections_per_user, 1, 1_000_000, d.max_connections_per_user as u64)? as usize,
            ..d
        };
        if hub.read_timeout <= hub.ping_interval {
            return Err(invalid("hub.read-timeout-secs", "must be longer than hub.ping-interval-secs"));
        }
        let max_events_body = (ranged("limits.max-events-body-kib", raw.limits.max_events_body_kib, 1, 64 << 10, 1024)? << 10) as usize;
        let l = &raw.limits;
        let max_upload = (ranged("limits.max-upload-mib", l.max_upload_mib, 1, 1024, 64)? << 20) as usize;
        let plugin_memory = (ranged("limits.plugin-memory-mib", l.plugin_memory_mib, 64, 1 << 30, (MemoryBudget::default_limit() >> 20) as u64)? << 20) as usize;
        let c = CompileLimits::default();
        let compile_limits = CompileLimits {
            memory_bytes: ranged("limits.compile-memory-mib", l.compile_memory_mib, 64, 1 << 20, c.memory_bytes >> 20)? << 20,
            timeout: Duration::from_secs(ranged("limits.compile-timeout-secs", l.compile_timeout_secs, 1, 3600, c.timeout.as_secs())?),
            at_once: ranged("limits.compiles-at-once", l.compiles_at_once, 1, 64, c.at_once as u64)? as usize,
        };
        let b = BusLimits::default();
        let publish_limits = BusLimits {
            max_depth: ranged("limits.publish-max-depth", l.publish_max_depth, 0, 64, u64::from(b.max_depth))? as u32,
            max_follow_ups: ranged("limits.publish-max-events", l.publish_max_events, 0, 100_000, b.max_follow_ups as u64)? as usize,
            time_budget: Duration::from_millis(ranged("limits.publish-time-ms", l.publish_time_ms, 1, 600_000, b.time_budget.as_millis() as u64)?),
            output_budget: (ranged("limits.publish-output-kib", l.publish_output_kib, 1, 1 << 20, (b.output_budget >> 10) as u64)? << 10) as usize,
        };
        let max_json_depth = ranged("limits.max-json-depth", l.max_json_depth, 1, 127, crate::event::MAX_JSON_DEPTH as u64)? as usize;
        let max_report_bytes = (ranged("limits.max-report-kib", l.max_report_kib, 1, 1 << 20, 1024)? << 10) as usize;
        let c = ConnectionLimits::default();
        let connection_limits = ConnectionLimits {
            max_connections: ranged("limits.max-connections", l.max_connections, 1, 10_000_000, c.max_connections as u64)? as usize,
            max_per_address: ranged("limits.max-connections-per-address", l.max_connections_per_address, 1, 10_000_000, c.max_per_address as u64)? as usize,
            header_timeout: Duration::from_secs(ranged("limits.http-header-timeout-secs", l.http_header_timeout_secs, 1, 3600, c.header_timeout.as_secs())?),
            body_timeout: Duration::from_secs(ranged("limits.http-body-timeout-secs", l.http_body_timeout_secs, 1, 3600, c.body_timeout.as_secs())?),
            send_buffer: (ranged("limits.socket-send-buffer-kib", l.socket_send_buffer_kib, 4, 64 << 10, (c.send_buffer >> 10) as u64)? << 10) as usize,
            listen_backlog: ranged("limits.listen-backlog", l.listen_backlog, 16, 65_535, u64::from(c.listen_backlog))? as u32,
        };
        let instance_slots = ranged("instance-slots", raw.instance_slots, 8, 100_000, 1000)? as u32;
        let r = raw.relay;
        let relay = match overrides.redis_url.clone().or_else(|| env("BUSBAR_REDIS_URL")).or(r.redis_url) {
            None => None,
            Some(url) => {
                crate::relay::check_url(&url).map_err(|problem| invalid("relay.redis-url", problem))?;
                let mut relay = crate::relay::RelayConfig::new(url);
                if let Some(node) = env("BUSBAR_NODE_ID").or(r.node_id) {
                    if node.is_empty() || node.len() > 64 || node.contains(char::is_whitespace) {
                        return Err(invalid("relay.node-id", "must be 1 to 64 characters without spaces"));
                    }
                    relay.node_id = node;
                }
                relay.history_ttl = Duration::from_secs(ranged("relay.history-ttl-secs", r.history_ttl_secs, 1, 30 * 86_400, 3600)?);
                relay.outbox_capacity = ranged("relay.outbox-capacity", r.outbox_capacity, 1, 10_000_000, 100_000)? as usize;
                relay.replay_limit = ranged("relay.replay-limit", r.replay_limit, 1, 100_000, 300)? as usize;
                let h = relay.history;
                relay.history.workspace = ranged("relay.workspace-history", r.workspace_history, 1, 1_000_000, h.workspace as u64)? as usize;
                relay.history.user = ranged("relay.user-history", r.user_history, 1, 1_000_000, h.user as u64)? as usize;
                relay.history.task = ranged("relay.task-history", r.task_history, 1, 1_000_000, h.task as u64)? as usize;
                relay.history.chat = ranged("relay.chat-history", r.chat_history, 1, 1_000_000, h.chat as u64)? as usize;
                Some(relay)
            }
        };

        Ok(Config {
            listen,
            plugins_dir,
            cache_dir,
            data_dir,
            jwt_secret,
            dev_secret,
            token_rules,
            admin_token,
            publish_token,
            allowed_origins,
            hub,
            max_events_body,
            max_upload,
            plugin_memory,
            compile_limits,
            compile_worker: None,
            publish_limits,
            max_json_depth,
            max_report_bytes,
            connection_limits,
            instance_slots,
            relay,
        })
    }
}

/// A real secret must be long and unpredictable: at least 32 bytes, at least 12 different
/// characters, and no character making up more than a quarter of it.
fn check_secret(secret: &str) -> Result<(), String> {
    const HOW: &str = "generate one with `openssl rand -base64 48`";
    if secret.len() < 32 {
        return Err(format!("must be at least 32 bytes ({} given); {HOW}", secret.len()));
    }
    let mut counts = std::collections::HashMap::new();
    for b in secret.bytes() {
        *counts.entry(b).or_insert(0usize) += 1;
    }
    let most = counts.values().copied().max().unwrap_or(0);
    if counts.len() < 12 || most * 4 > secret.len() {
        return Err(format!("is too predictable ({} different characters); {HOW}", counts.len()));
    }
    Ok(())
}

/// `$XDG_DATA_HOME/busbar`, else `~/.local/share/busbar`.
pub fn default_data_dir(env: &impl Fn(&str) -> Option<String>) -> Option<PathBuf> {
    let base = env("XDG_DATA_HOME")
        .map(PathBuf::from)
        .or_else(|| env("HOME").map(|home| PathBuf::from(home).join(".local/share")))?;
    Some(base.join("busbar"))
}

/// `$XDG_CACHE_HOME/busbar`, else `~/.cache/busbar`.
pub fn default_cache_dir(env: &impl Fn(&str) -> Option<String>) -> Option<PathBuf> {
    let base = env("XDG_CACHE_HOME")
        .map(PathBuf::from)
        .or_else(|| env("HOME").map(|home| PathBuf::from(home).join(".cache")))?;
    Some(base.join("busbar"))
}

/// Where `busbar plugin build` installs the guest toolchains: `$BUSBAR_TOOLCHAINS`, else
/// `toolchains` in the cache directory.
pub fn toolchains_dir(env: &impl Fn(&str) -> Option<String>) -> Option<PathBuf> {
    env("BUSBAR_TOOLCHAINS").map(PathBuf::from).or_else(|| Some(default_cache_dir(env)?.join("toolchains")))
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use super::*;

    fn load(file: Option<&str>, env: &[(&str, &str)], overrides: Overrides) -> Result<Config, ConfigError> {
        let dir = tempfile::tempdir().unwrap();
        let mut overrides = overrides;
        if let Some(text) = file {
            let path = dir.path().join("busbar.toml");
            std::fs::write(&path, text).unwrap();
            overrides.config_file = Some(path);
        }
        let env: HashMap<String, String> = env.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
        Config::load_with(&overrides, |k| env.get(k).cloned())
    }

    #[test]
    fn defaults_just_work_on_loopback() {
        let c = load(None, &[], Overrides::default()).unwrap();
        assert_eq!(c.listen.to_string(), DEFAULT_LISTEN);
        assert!(c.dev_secret);
        assert!(c.plugins_dir.is_none());
        assert!(c.admin_token.is_none());
    }

    #[test]
    fn the_data_dir_is_the_flag_then_the_environment_then_the_file_then_the_user_data_dir() {
        let data = |file: Option<&str>, env: &[(&str, &str)], overrides: Overrides| load(file, env, overrides).unwrap().data_dir;
        let home = [("HOME", "/home/u")];
        assert_eq!(data(None, &home, Overrides::default()), Some(PathBuf::from("/home/u/.local/share/busbar")));
        assert_eq!(data(None, &[("XDG_DATA_HOME", "/x")], Overrides::default()), Some(PathBuf::from("/x/busbar")));
        assert_eq!(data(None, &[], Overrides::default()), None, "no home: nothing to keep it in, so memory");
        let file = "data-dir = '/from-file'\n";
        assert_eq!(data(Some(file), &home, Overrides::default()), Some(PathBuf::from("/from-file")));
        assert_eq!(data(Some(file), &[("BUSBAR_DATA_DIR", "/from-env")], Overrides::default()), Some(PathBuf::from("/from-env")));
        let flag = Overrides { data_dir: Some("/from-flag".into()), ..Overrides::default() };
        assert_eq!(data(Some(file), &[("BUSBAR_DATA_DIR", "/from-env")], flag), Some(PathBuf::from("/from-flag")));
        assert_eq!(data(Some(file), &[("BUSBAR_EPHEMERAL", "1")], Overrides::default()), None);
        assert_eq!(data(Some(file), &home, Overrides { ephemeral: true, ..Overrides::default() }), None);
    }

    #[test]
    fn flags_beat_environment_beat_file() {
        let file = "listen = '127.0.0.1:1000'\n[hub]\nmax-scopes = 10\n";
        let c = load(Some(file), &[], Overrides::default()).unwrap();
        assert_eq!(c.listen.port(), 1000);
        assert_eq!(c.hub.max_scopes, 10);
        let c = load(Some(file), &[("BUSBAR_LISTEN", "127.0.0.1:2000")], Overrides::default()).unwrap();
        assert_eq!(c.listen.port(), 2000);
        let flags = Overrides { listen: Some("127.0.0.1:3000".into()), ..Overrides::default() };
        let c = load(Some(file), &[("BUSBAR_LISTEN", "127.0.0.1:2000")], flags).unwrap();
        assert_eq!(c.listen.port(), 3000);
    }

    #[test]
    fn mistakes_name_the_key() {
        let secret = ("BUSBAR_JWT_SECRET", "0123456789abcdef0123456789abcdef");
        type Case<'a> = (Option<&'a str>, Vec<(&'a str, &'a str)>, &'a str);
        let cases: Vec<Case> = vec![
            (Some("lisen = 'x'"), vec![], "unknown field `lisen`"),
            (None, vec![("BUSBAR_LISTEN", "nowhere")], "`listen`: `nowhere` is not an address"),
            (None, vec![("BUSBAR_LISTEN", "0.0.0.0:8080")], "`auth.jwt-secret`: required when listening on 0.0.0.0:8080"),
            (None, vec![("BUSBAR_JWT_SECRET", "short")], "`auth.jwt-secret`: must be at least 32 bytes"),
            (None, vec![("BUSBAR_JWT_SECRET", "                                ")], "`auth.jwt-secret`: is too predictable (1 different characters)"),
            (None, vec![("BUSBAR_JWT_SECRET", "abababababababababababababababab")], "is too predictable"),
            (None, vec![("BUSBAR_JWT_SECRET", DEV_JWT_SECRET), ("BUSBAR_LISTEN", "0.0.0.0:8080")], "`auth.jwt-secret`: required when listening on 0.0.0.0:8080"),
            (Some("[hub]\nmax-scopes = 1"), vec![], "`hub.max-scopes`: is 1; it must be between 2 and 10000"),
            (Some("[hub]\nsubscribe-rate = -1.0"), vec![], "`hub.subscribe-rate`: is -1"),
            (Some("[hub]\nread-timeout-secs = 5\nping-interval-secs = 10"), vec![], "must be longer than"),
            (None, vec![secret, ("BUSBAR_ADMIN_TOKEN", "short")], "`auth.admin-token`: must be at least 16"),
            (None, vec![("BUSBAR_PLUGINS", "/definitely/not/here")], "`plugins`: /definitely/not/here is not a directory"),
            (None, vec![("BUSBAR_REDIS_URL", "localhost:6379")], "`relay.redis-url`: `localhost:6379` is not a redis:// URL"),
            (Some("[relay]\nredis-url = 'redis://x'\nreplay-limit = 0"), vec![], "`relay.replay-limit`: is 0"),
            (Some("[limits]\nplugin-memory-mib = 1"), vec![], "`limits.plugin-memory-mib`: is 1; it must be between 64"),
            (Some("[limits]\npublish-time-ms = 0"), vec![], "`limits.publish-time-ms`: is 0"),
            (Some("[limits]\nmax-json-depth = 500"), vec![], "`limits.max-json-depth`: is 500"),
        ];
        for (file, env, expected) in cases {
            let err = load(file, &env, Overrides::default()).unwrap_err().to_string();
            assert!(err.contains(expected), "{file:?} {env:?}: {err}");
        }
        let ok = load(None, &[secret, ("BUSBAR_LISTEN", "0.0.0.0:8080")], Overrides::default()).unwrap();
        assert!(!ok.dev_secret);
    }
}
