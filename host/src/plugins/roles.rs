//! Policy roles: which plugin authenticates connections and which authorizes task and chat
//! subscriptions.
//!
//! This module owns `Role` and the manifest's `[policy]` section (`PolicyManifest`: the roles a
//! plugin serves, the parts of an upgrade request it may see, the longest it may cache a
//! decision). Which plugin holds a role at run time is `access::RoleHolders`. It must not know
//! about loaded plugins.

use std::collections::BTreeSet;
use std::time::Duration;

use serde::{Deserialize, Serialize};

/// A decision a plugin can take for the hub besides listening to events.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Role {
    /// Who a WebSocket connection is (`authenticate`).
    Authenticator,
    /// Which task and chat rooms a connection may join (`authorize`).
    Authorizer,
}

named_variants!(Role { Authenticator = "authenticator", Authorizer = "authorizer" });

impl Role {
    /// The component export the role needs.
    pub fn export(self) -> &'static str {
        match self {
            Role::Authenticator => "authenticate",
            Role::Authorizer => "authorize",
        }
    }
}

/// The manifest's `[policy]` section, validated.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct PolicyManifest {
    /// The roles this plugin serves; empty for a plain listener.
    pub roles: BTreeSet<Role>,
    /// Upgrade headers `authenticate` sees (lower case).
    pub headers: Vec<String>,
    /// Cookies `authenticate` sees.
    pub cookies: Vec<String>,
    /// Query parameters `authenticate` sees.
    pub query: Vec<String>,
    /// The longest a decision is reused, whatever the plugin asks.
    pub max_cache: Duration,
}

impl Default for PolicyManifest {
    fn default() -> PolicyManifest {
        PolicyManifest { roles: BTreeSet::new(), headers: Vec::new(), cookies: Vec::new(), query: Vec::new(), max_cache: Duration::from_secs(60) }
    }
}

/// `[policy]` as serde reads it.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub(super) struct RawPolicy {
    #[serde(default)]
    roles: Vec<String>,
    #[serde(default)]
    headers: Vec<String>,
    #[serde(default)]
    cookies: Vec<String>,
    #[serde(default)]
    query: Vec<String>,
    max_cache_ms: Option<u64>,
}

/// Most names in each of `headers`, `cookies` and `query`.
const MAX_NAMES: usize = 32;
/// Longest `max-cache-ms`: an hour.
const MAX_CACHE_MS: u64 = 3_600_000;

impl RawPolicy {
    /// Validates the section; the error is `(key, problem)`.
    pub(super) fn validate(self) -> Result<PolicyManifest, (&'static str, String)> {
        let mut roles = BTreeSet::new();
        for role in &self.roles {
            let parsed = Role::from_name(role).ok_or_else(|| ("policy.roles", format!("unknown role `{}`; the roles are `authenticator` and `authorizer`", super::text::sanitize(role, 64))))?;
            roles.insert(parsed);
        }
        let names = |key: &'static str, names: Vec<String>, lower: bool| -> Result<Vec<String>, (&'static str, String)> {
            if names.len() > MAX_NAMES {
                return Err((key, format!("lists {} names; at most {MAX_NAMES}", names.len())));
            }
            let valid = |n: &String| !n.is_empty() && n.len() <= 128 && n.bytes().all(|b| b.is_ascii_graphic() && !b"=;,\"\\".contains(&b));
            if let Some(bad) = names.iter().find(|n| !valid(n)) {
                return Err((key, format!("`{}` is not a valid name", super::text::sanitize(bad, 64))));
            }
            Ok(names.into_iter().map(|n| if lower { n.to_ascii_lowercase() } else { n }).collect())
        };
        let max_cache_ms = self.max_cache_ms.unwrap_or(60_000);
        if max_cache_ms > MAX_CACHE_MS {
            return Err(("policy.max-cache-ms", format!("is {max_cache_ms}; it must be at most {MAX_CACHE_MS}")));
        }
        Ok(PolicyManifest {
            roles,
            headers: names("policy.headers", self.headers, true)?,
            cookies: names("policy.cookies", self.cookies, false)?,
            query: names("policy.query", self.query, false)?,
            max_cache: Duration::from_millis(max_cache_ms),
        })
    }
}

impl PolicyManifest {
    /// The section as TOML (for a stored manifest); `None` for a plain listener's defaults.
    pub(super) fn to_toml(&self) -> Option<toml::Table> {
        if *self == PolicyManifest::default() {
            return None;
        }
        let list = |names: &[String]| toml::Value::Array(names.iter().cloned().map(toml::Value::String).collect());
        let roles: Vec<String> = self.roles.iter().map(|r| r.as_str().to_string()).collect();
        let mut table = toml::Table::new();
        table.insert("roles".into(), list(&roles));
        table.insert("headers".into(), list(&self.headers));
        table.insert("cookies".into(), list(&self.cookies));
        table.insert("query".into(), list(&self.query));
        table.insert("max-cache-ms".into(), toml::Value::Integer(i64::try_from(self.max_cache.as_millis()).unwrap_or(i64::MAX)));
        Some(table)
    }
}
