//! Plugins that decide for the hub: who a connection is, and which task and chat rooms it may
//! join.
//!
//! This module owns `RoleHolders` (which running plugin holds each role; the registry keeps it
//! current) and `PluginAccess`, which implements the hub's `Authenticator` and
//! `ScopeAuthorizer` by calling the holder on a blocking thread, under the plugin's own
//! deadline and limits. It shows the plugin only what its manifest names of the upgrade
//! (`[policy] headers`, `cookies`, `query`), caches authorizer decisions for as long as the
//! plugin asks (capped by `max-cache-ms`; dropped when the holder changes), and counts every
//! decision on the plugin. Fail closed: a failed authenticator refuses the connection, a failed
//! authorizer answers "could not decide" (`lookup_failed`). Without a holder the embedder's
//! fallbacks decide (by default busbar's own token check, and the token's grants). It must not
//! touch sockets or rooms.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use parking_lot::{Mutex, RwLock};

use super::decisions::DecisionOutcome;
use super::host::bindings::busbar::plugin::types as wit;
use super::host::policy_bindings::busbar::plugin::policy_types as pwit;
use super::plugin::Plugin;
use super::roles::{PolicyManifest, Role};
use super::text;
use crate::action::{Scope, ScopeKind};
use crate::bus::ListenerError;
use crate::hub::{
    AuthenticateFuture, Authenticated, Authenticator, AuthorizeFuture, Claims, ConnectRequest, Identity, LookupError, Refusal,
    RefusalKind, ScopeAuthorizer,
};

/// A role's holder, and the version of that holding (a new one whenever the holder changes).
#[derive(Clone)]
struct Held {
    plugin: Arc<Plugin>,
    version: u64,
}

/// Which running plugin holds each role.
#[derive(Default)]
pub struct RoleHolders {
    held: RwLock<[Option<Held>; 2]>,
    versions: AtomicU64,
}

impl RoleHolders {
    /// The plugin holding `role`, if any.
    pub fn holder(&self, role: Role) -> Option<Arc<Plugin>> {
        self.held.read()[role as usize].as_ref().map(|h| h.plugin.clone())
    }

    fn held(&self, role: Role) -> Option<Held> {
        self.held.read()[role as usize].clone()
    }

    /// Which other plugin holds a role `plugin` claims: the first such role and its holder's name.
    pub(super) fn conflict(&self, plugin: &Plugin) -> Option<(Role, String)> {
        let held = self.held.read();
        plugin.roles().iter().find_map(|&role| {
            held[role as usize].as_ref().filter(|h| h.plugin.name() != plugin.name()).map(|h| (role, h.plugin.name().to_string()))
        })
    }

    /// Sets the holders from what runs: for each role, the running plugin that claims it (the
    /// registry refuses a second claimant; were there two, the first by name would hold it).
    pub(super) fn update<'a>(&self, running: impl Iterator<Item = &'a Arc<Plugin>>) {
        let mut claimants: [Option<&Arc<Plugin>>; 2] = [None, None];
        for plugin in running {
            for &role in plugin.roles() {
                claimants[role as usize].get_or_insert(plugin);
            }
        }
        let mut held = self.held.write();
        for role in Role::ALL {
            let slot = &mut held[role as usize];
            match claimants[role as usize] {
                Some(plugin) if slot.as_ref().is_some_and(|h| Arc::ptr_eq(&h.plugin, plugin)) => {}
                Some(plugin) => *slot = Some(Held { plugin: plugin.clone(), version: self.versions.fetch_add(1, Relaxed) + 1 }),
                None => *slot = None,
            }
        }
    }
}

/// The hub's authenticator and authorizer, answered by the plugins holding those roles.
pub struct PluginAccess {
    roles: Arc<RoleHolders>,
    fallback: Arc<dyn ScopeAuthorizer>,
    fallback_authenticator: Arc<dyn Authenticator>,
    cache: DecisionCache,
}

impl PluginAccess {
    /// `authorizer` decides subscriptions while no plugin holds the authorizer role, and
    /// `authenticator` connections while none holds the authenticator role (`TokenOnly`: busbar's
    /// own token check).
    pub fn new(roles: Arc<RoleHolders>, authorizer: Arc<dyn ScopeAuthorizer>, authenticator: Arc<dyn Authenticator>) -> PluginAccess {
        PluginAccess { roles, fallback: authorizer, fallback_authenticator: authenticator, cache: DecisionCache::default() }
    }

    /// Decisions cached now.
    pub fn cached_decisions(&self) -> usize {
        self.cache.entries.lock().len()
    }
}

impl Authenticator for PluginAccess {
    fn authenticate<'a>(&'a self, request: &'a ConnectRequest) -> Option<AuthenticateFuture<'a>> {
        let Some(plugin) = self.roles.holder(Role::Authenticator) else { return self.fallback_authenticator.authenticate(request) };
        let seen = Seen::of(request, &plugin.manifest().policy);
        Some(Box::pin(async move {
            let started = Instant::now();
            let caller = plugin.clone();
            let answer = tokio::task::spawn_blocking(move || seen.ask(&caller)).await;
            let answer = answer.unwrap_or_else(|e| Err(ListenerError::Trap(format!("the call did not finish: {e}"))));
            let (decided, outcome) = authentication(answer, &plugin);
            plugin.decisions().record(Role::Authenticator, outcome, Some(started.elapsed()));
            decided
        }))
    }
}

/// What of an upgrade request the authenticator may see.
struct Seen {
    headers: Vec<(String, String)>,
    cookies: Vec<(String, String)>,
    query: Vec<(String, String)>,
    auth_frame: Option<String>,
}

impl Seen {
    fn of(request: &ConnectRequest, policy: &PolicyManifest) -> Seen {
        fn named<'a>(names: &[String], pairs: impl Iterator<Item = (&'a str, &'a str)>) -> Vec<(String, String)> {
            pairs.filter(|(name, _)| names.iter().any(|n| n == name)).map(|(k, v)| (k.to_string(), v.to_string())).collect()
        }
        let cookies = request
            .headers
            .iter()
            .filter(|(name, _)| name == "cookie")
            .flat_map(|(_, value)| value.split(';'))
            .filter_map(|pair| pair.trim().split_once('='));
        Seen {
            headers: named(&policy.headers, pairs(&request.headers)),
            cookies: named(&policy.cookies, cookies),
            query: named(&policy.query, pairs(&request.query)),
            auth_frame: request.auth_frame.clone(),
        }
    }

    /// Calls the plugin's `authenticate` with this request.
    fn ask(&self, plugin: &Plugin) -> Result<pwit::Authentication, ListenerError> {
        let (headers, cookies, query): (Vec<_>, Vec<_>, Vec<_>) = (pairs(&self.headers).collect(), pairs(&self.cookies).collect(), pairs(&self.query).collect());
        plugin.authenticate(pwit::ConnectRequest { headers: &headers, cookies: &cookies, query: &query, auth_frame: self.auth_frame.as_deref() })
    }
}

/// Name-value pairs as borrowed strings.
fn pairs(list: &[(String, String)]) -> impl Iterator<Item = (&str, &str)> {
    list.iter().map(|(k, v)| (k.as_str(), v.as_str()))
}

/// Longest refusal message passed on to a client.
const MAX_REFUSAL_MESSAGE: usize = 256;

/// The hub's view of an authenticator's answer, and how to count it.
fn authentication(answer: Result<pwit::Authentication, ListenerError>, plugin: &Plugin) -> (Result<Authenticated, Refusal>, DecisionOutcome) {
    let failed = |why: String| {
        tracing::warn!(plugin = plugin.name(), "authenticator failed: {why}");
        (Err(Refusal::new(RefusalKind::Unavailable, "the authenticator failed")), DecisionOutcome::Failed)
    };
    match answer {
        Err(failure) => failed(failure.to_string()),
        Ok(pwit::Authentication::NeedAuthFrame) => (Ok(Authenticated::NeedAuthFrame), DecisionOutcome::NeedAuthFrame),
        Ok(pwit::Authentication::Refused(refusal)) => {
            let kind = match refusal.kind {
                pwit::RefusalKind::BadRequest => RefusalKind::BadRequest,
                pwit::RefusalKind::InvalidToken => RefusalKind::InvalidToken,
                pwit::RefusalKind::Expired => RefusalKind::Expired,
                pwit::RefusalKind::Forbidden => RefusalKind::Forbidden,
                pwit::RefusalKind::NotFound => RefusalKind::NotFound,
            };
            (Err(Refusal::new(kind, text::sanitize(&refusal.message, MAX_REFUSAL_MESSAGE))), DecisionOutcome::Refused)
        }
        Ok(pwit::Authentication::Identified(who)) => {
            let valid = |id: &str| !id.is_empty() && id.len() <= crate::event::MAX_NAME_LEN && !id.chars().any(char::is_control);
            if !valid(&who.user_id) || !valid(&who.workspace_id) {
                return failed("it returned an identity with an empty, overlong or control-character id".into());
            }
            let now = SystemTime::now().duration_since(UNIX_EPOCH).unwrap_or_default().as_secs();
            if who.expires_at <= now {
                return (Err(Refusal::new(RefusalKind::Expired, "the identity has expired")), DecisionOutcome::Refused);
            }
            let claims = Claims { sub: who.user_id.clone(), exp: who.expires_at, workspaces: vec![who.workspace_id.clone()], grants: BTreeMap::new() };
            let identity = Identity { user_id: who.user_id, workspace_id: who.workspace_id, claims: Arc::new(claims) };
            (Ok(Authenticated::Identified(identity)), DecisionOutcome::Identified)
        }
    }
}

impl ScopeAuthorizer for PluginAccess {
    fn authorize<'a>(&'a self, who: &'a Identity, scope: &'a Scope) -> AuthorizeFuture<'a> {
        Box::pin(async move {
            let Some(held) = self.roles.held(Role::Authorizer) else { return self.fallback.authorize(who, scope).await };
            let plugin = held.plugin;
            let key = CacheKey { user: who.user_id.clone(), workspace: scope.workspace.clone(), kind: scope.kind, id: scope.id.clone() };
            if let Some(allow) = self.cache.get(held.version, &key) {
                let outcome = if allow { DecisionOutcome::CachedAllow } else { DecisionOutcome::CachedDeny };
                plugin.decisions().record(Role::Authorizer, outcome, None);
                return Ok(allow);
            }
            let started = Instant::now();
            let (caller, who_, room) = (plugin.clone(), who.clone(), scope.clone());
            let answer = tokio::task::spawn_blocking(move || {
                let kind = match room.kind {
                    ScopeKind::Workspace => wit::ScopeKind::Workspace,
                    ScopeKind::User => wit::ScopeKind::User,
                    ScopeKind::Task => wit::ScopeKind::Task,
                    ScopeKind::Chat => wit::ScopeKind::Chat,
                };
                caller.authorize(
                    pwit::IdentityParam { user_id: &who_.user_id, workspace_id: &who_.workspace_id, expires_at: who_.claims.exp },
                    pwit::Room { kind, workspace_id: &room.workspace, id: &room.id },
                )
            })
            .await
            .unwrap_or_else(|e| Err(ListenerError::Trap(format!("the call did not finish: {e}"))));
            let took = Some(started.elapsed());
            match answer {
                Ok(Ok(decision)) => {
                    let allow = decision.verdict == pwit::Verdict::Allow;
                    let outcome = if allow { DecisionOutcome::Allow } else { DecisionOutcome::Deny };
                    plugin.decisions().record(Role::Authorizer, outcome, took);
                    let ttl = Duration::from_millis(u64::from(decision.cache_ms)).min(plugin.manifest().policy.max_cache);
                    self.cache.put(held.version, key, allow, ttl);
                    Ok(allow)
                }
                Ok(Err(message)) => {
                    plugin.decisions().record(Role::Authorizer, DecisionOutcome::Undecided, took);
                    Err(LookupError::new(format!("authorizer `{}` could not decide: {message}", plugin.name())))
                }
                Err(failure) => {
                    plugin.decisions().record(Role::Authorizer, DecisionOutcome::Failed, took);
                    Err(LookupError::new(format!("authorizer `{}` failed: {failure}", plugin.name())))
                }
            }
        })
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
struct CacheKey {
    user: String,
    workspace: String,
    kind: ScopeKind,
    id: String,
}

/// Most decisions kept; past it, the cache is emptied of expired entries, or entirely.
const MAX_CACHED: usize = 100_000;

/// Authorizer decisions, each valid for one holding of the role until its expiry.
#[derive(Default)]
struct DecisionCache {
    entries: Mutex<HashMap<CacheKey, (u64, bool, Instant)>>,
}

impl DecisionCache {
    fn get(&self, version: u64, key: &CacheKey) -> Option<bool> {
        let entries = self.entries.lock();
        let &(cached_version, allow, until) = entries.get(key)?;
        (cached_version == version && until > Instant::now()).then_some(allow)
    }

    fn put(&self, version: u64, key: CacheKey, allow: bool, ttl: Duration) {
        if ttl.is_zero() {
            return;
        }
        let now = Instant::now();
        let mut entries = self.entries.lock();
        if entries.len() >= MAX_CACHED {
            entries.retain(|_, (v, _, until)| *v == version && *until > now);
            if entries.len() >= MAX_CACHED {
                entries.clear();
            }
        }
        entries.insert(key, (version, allow, now + ttl));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(id: &str) -> CacheKey {
        CacheKey { user: "u1".into(), workspace: "ws-1".into(), kind: ScopeKind::Task, id: id.into() }
    }

    #[test]
    fn a_cached_decision_holds_for_its_holding_and_its_time_only() {
        let cache = DecisionCache::default();
        cache.put(1, key("t-1"), true, Duration::from_secs(60));
        cache.put(1, key("t-2"), false, Duration::ZERO);
        assert_eq!(cache.get(1, &key("t-1")), Some(true));
        assert_eq!(cache.get(2, &key("t-1")), None, "a new holder of the role decides afresh");
        assert_eq!(cache.get(1, &key("t-2")), None, "0 ms is not cached");
        cache.put(1, key("t-3"), false, Duration::from_nanos(1));
        std::thread::sleep(Duration::from_millis(2));
        assert_eq!(cache.get(1, &key("t-3")), None);
    }

    #[test]
    fn the_plugin_sees_only_the_named_headers_cookies_and_query_parameters() {
        let policy = PolicyManifest {
            headers: vec!["authorization".into()],
            cookies: vec!["session".into()],
            query: vec!["workspace_slug".into()],
            ..PolicyManifest::default()
        };
        let request = ConnectRequest {
            headers: vec![
                ("authorization".into(), "Bearer x".into()),
                ("x-secret".into(), "no".into()),
                ("cookie".into(), "theme=dark; session=abc=def; other=1".into()),
            ],
            query: vec![("workspace_slug".into(), "acme".into()), ("client_os".into(), "linux".into())],
            auth_frame: None,
        };
        let seen = Seen::of(&request, &policy);
        assert_eq!(seen.headers, vec![("authorization".to_string(), "Bearer x".to_string())]);
        assert_eq!(seen.cookies, vec![("session".to_string(), "abc=def".to_string())]);
        assert_eq!(seen.query, vec![("workspace_slug".to_string(), "acme".to_string())]);
    }
}
