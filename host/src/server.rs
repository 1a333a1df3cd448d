//! `busbar serve` as a library function: build the parts from a `Config`, then serve on an
//! already-bound listener until a shutdown token is cancelled.
//!
//! This module owns the wiring (runtime -> registry -> bus -> hub) and the shutdown order: stop
//! accepting, let in-flight requests (publishes) finish, let the relay publish what they queued
//! for other nodes, close WebSockets with 1001 after their queued frames. Tests bind port 0 and
//! cancel the token; the binary binds the configured address and cancels on SIGTERM or SIGINT.

use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::api::{self, Access, AppState};
use crate::bus::Bus;
use crate::config::Config;
use crate::hub::{Authenticator, ClaimsAuthorizer, Hub, ScopeAuthorizer, TokenOnly, TokenVerifier};
use crate::plugins::{self, PluginAccess, Registry, RoleHolders, Runtime, RuntimeConfig};
use crate::relay::Relay;

/// The running parts of a server.
#[derive(Clone)]
pub struct App {
    pub bus: Arc<Bus>,
    pub hub: Arc<Hub>,
    pub registry: Arc<Registry>,
    pub state: AppState,
    /// Keeps the plugin directory watched while the server runs.
    pub watcher: Option<Arc<plugins::DirWatcher>>,
    pub relay: Option<Relay>,
    /// Keeps this node following deployments made on the others (a shared store only).
    pub following: Option<Arc<crate::store::Listening>>,
}

#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error(transparent)]
    Store(#[from] crate::store::StoreError),
    #[error("plugin runtime: {0}")]
    Runtime(String),
    #[error("plugin directory {path}: {source}")]
    PluginDir { path: String, source: std::io::Error },
    #[error("example plugins: {0}")]
    Examples(String),
    #[error("relay: {0}")]
    Relay(String),
    #[error("cannot watch plugin directory {path}: {message}")]
    Watch { path: String, message: String },
}

/// Builds the runtime, hub, bus and registry, and loads the plugins. A plugin that fails to load
/// is logged and listed as failed; the others still load. Task and chat subscriptions are
/// decided by the token's grants (`ClaimsAuthorizer`).
pub fn build(config: &Config, shutdown: CancellationToken) -> Result<App, StartError> {
    build_with_authorizer(config, shutdown, Arc::new(ClaimsAuthorizer))
}

/// `build`, with the application's own rules for task and chat subscriptions (for instance a
/// lookup of who created a chat session, or which workspace a task belongs to).
pub fn build_with_authorizer(
    config: &Config,
    shutdown: CancellationToken,
    authorizer: Arc<dyn ScopeAuthorizer>,
) -> Result<App, StartError> {
    build_with_policy(config, shutdown, authorizer, Arc::new(TokenOnly))
}

/// `build`, with the application's own rules for subscriptions and for connections (an
/// `Authenticator` that, for instance, checks a session in the application's database). A plugin
/// holding the authorizer or authenticator role decides instead while it runs.
pub fn build_with_policy(
    config: &Config,
    shutdown: CancellationToken,
    authorizer: Arc<dyn ScopeAuthorizer>,
    authenticator: Arc<dyn Authenticator>,
) -> Result<App, StartError> {
    // Several nodes share one store in Redis; one node keeps its own in the data directory.
    let store: Arc<dyn crate::store::Store> = match (&config.relay, &config.data_dir) {
        (Some(relay), _) => Arc::new(crate::store::RedisStore::open(&relay.url)?),
        (None, Some(dir)) => Arc::new(crate::store::SqliteStore::open(&dir.join("busbar.db"))?),
        (None, None) => crate::store::ephemeral(),
    };
    let runtime = Runtime::new(RuntimeConfig {
        store,
        cache_dir: config.cache_dir.clone(),
        instance_slots: config.instance_slots,
        memory_budget: config.plugin_memory,
        max_component_bytes: config.max_upload as u64,
        compile_worker: config.compile_worker.clone(),
        compile_limits: config.compile_limits.clone(),
        ..RuntimeConfig::default()
    })
    .map_err(|e| StartError::Runtime(format!("{e:#}")))?;
    let runtime = Arc::new(runtime);
    // Plugins holding the authenticator and authorizer roles decide for the hub; without them,
    // `authenticator` (busbar's token check by default) and `authorizer` do.
    let roles = Arc::new(RoleHolders::default());
    let access = Arc::new(PluginAccess::new(roles.clone(), authorizer, authenticator));
    let verifier = TokenVerifier::with_rules(&config.jwt_secret, &config.token_rules);
    let hub = Arc::new(Hub::new(config.hub.clone(), verifier, access.clone()).with_authenticator(access));
    // Several nodes: the relay is the bus's Broadcaster and delivers into the hub.
    let relay = match &config.relay {
        Some(relay) => Some(
            Relay::start(relay.clone(), hub.clone()).map_err(|e| StartError::Relay(e.to_string()))?,
        ),
        None => None,
    };
    let broadcaster: Arc<dyn crate::broadcast::Broadcaster> = match &relay {
        Some(relay) => Arc::new(relay.clone()),
        None => hub.clone(),
    };
    // The dashboard's stream shows the frames of the publishes it watches.
    let broadcaster: Arc<dyn crate::broadcast::Broadcaster> = Arc::new(api::Tap::new(broadcaster));
    let bus = Arc::new(Bus::with_limits(broadcaster, config.publish_limits));
    let mut registry = Registry::new(runtime.clone(), bus.clone()).holding_roles(roles);
    if config.plugins_dir.is_some() {
        registry = registry.managing_files();
    }
    if let Some(relay) = &config.relay {
        registry = registry.reporting_as(&relay.node_id);
    }
    let registry = Arc::new(registry);
    let loaded = match &config.plugins_dir {
        Some(dir) => {
            let (loaded, failures) = plugins::load_dir(&runtime, dir)
                .map_err(|source| StartError::PluginDir { path: dir.display().to_string(), source })?;
            for failure in failures {
                let name = failure.path.file_stem().and_then(|s| s.to_str()).unwrap_or("unknown").replace('_', "-");
                registry.record_failure(&name, &failure.error.to_string());
            }
            loaded
        }
        None => crate::examples::load(&runtime).map_err(|e| StartError::Examples(e.to_string()))?,
    };
    for plugin in loaded {
        let name = plugin.name().to_string();
        if let Err(e) = registry.activate(plugin) {
            registry.record_failure(&name, &e.to_string());
        }
    }
    // What was deployed through the API, over the base versions, before serving; then what
    // other nodes deploy while this one runs.
    registry.restore()?;
    let following = {
        let registry = Arc::downgrade(&registry);
        runtime.store().listen(Box::new(move |name| {
            if let Some(registry) = registry.upgrade() {
                registry.sync(name);
            }
        }))
    };
    let watcher = match &config.plugins_dir {
        Some(dir) => {
            let names = file_names(dir);
            let watcher = plugins::watch(dir, registry.clone(), names)
                .map_err(|e| StartError::Watch { path: dir.display().to_string(), message: e.to_string() })?;
            Some(Arc::new(watcher))
        }
        _ => None,
    };
    let state = AppState {
        bus: bus.clone(),
        hub: hub.clone(),
        registry: registry.clone(),
        access: Arc::new(Access { admin_token: config.admin_token.clone(), publish_token: config.publish_token.clone() }),
        allowed_origins: Arc::new(config.allowed_origins.clone()),
        dev_secret: config.dev_secret,
        max_events_body: config.max_events_body,
        max_upload: config.max_upload,
        max_json_depth: config.max_json_depth,
        max_report_bytes: config.max_report_bytes,
        connection_limits: config.connection_limits.clone(),
        connections: Arc::default(),
        relay: relay.clone(),
        feed: Arc::default(),
        shutdown,
    };
    Ok(App { bus, hub, registry, state, watcher, relay, following: following.map(Arc::new) })
}

/// File stem -> plugin name for the components in `dir`.
fn file_names(dir: &std::path::Path) -> std::collections::HashMap<String, String> {
    let Ok(entries) = std::fs::read_dir(dir) else { return Default::default() };
    entries
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "wasm"))
        .filter_map(|p| {
            let stem = p.file_stem()?.to_str()?.to_string();
            let name = plugins::read_manifest(&p, &stem).ok()?.name;
            Some((stem, name))
        })
        .collect()
}

/// How long in-flight HTTP requests get to finish at shutdown before sockets close anyway.
const REQUEST_GRACE: Duration = Duration::from_secs(10);

/// How long the relay gets to publish the frames still waiting for Redis at shutdown.
const RELAY_GRACE: Duration = Duration::from_secs(5);

/// How long WebSockets get to receive their queued frames and the close at shutdown.
const CLOSE_GRACE: Duration = Duration::from_secs(10);

/// Serves until `state.shutdown` is cancelled, then shuts down gracefully: stop accepting, let
/// in-flight requests (publishes, whose frames are queued for clients) finish, let the relay
/// publish what they queued for other nodes, then close every WebSocket with 1001 once the
/// frames queued for it are written.
pub async fn run(listener: TcpListener, app: App) -> std::io::Result<()> {
    let shutdown = app.state.shutdown.clone();
    let hub = app.hub.clone();
    let relay = app.relay.clone();
    let limits = app.state.connection_limits.clone();
    let connections = app.state.connections.clone();
    let router = api::router(app.state);
    let serving = api::serve(listener, router, limits, connections, shutdown.clone());
    let grace_over = async {
        shutdown.cancelled().await;
        tracing::info!("shutting down: no new connections; waiting for in-flight requests");
        tokio::time::sleep(REQUEST_GRACE).await;
    };
    let served = tokio::select! {
        served = serving => served,
        () = grace_over => {
            tracing::warn!(grace_ms = REQUEST_GRACE.as_millis() as u64, "requests still running at the end of the grace period");
            Ok(())
        }
    };
    if let Some(relay) = relay {
        relay.flush_and_stop(RELAY_GRACE).await;
    }
    tracing::info!("shutting down: closing connections");
    hub.shutdown(CLOSE_GRACE).await;
    served
}
