//! The host HTTP API (`/v1`), the health and metrics routes, and the WebSocket endpoint.
//!
//! This module owns the router and its state. Handlers are thin: they check access, parse, and
//! call the bus, the plugin registry or the hub; errors become responses only in `error`. It is
//! the only module that uses axum's routing (the hub's session uses its WebSocket types).

mod access;
mod error;
mod events;
mod health;
mod metrics;
mod plugins;
mod serve;
mod stream;
mod ui;
mod ws;

use std::sync::Arc;

use axum::Router;
use axum::extract::DefaultBodyLimit;
use axum::http::header;
use axum::routing::{get, post};
use tokio_util::sync::CancellationToken;
use tower_http::timeout::RequestBodyTimeoutLayer;
use tower_http::trace::TraceLayer;

pub use access::Access;
pub use error::ApiError;
pub use serve::{Admitted, ConnectionLimits, ConnectionMetrics, SocketFd, bind, serve};
pub use stream::{Feed, Tap};

use crate::bus::Bus;
use crate::hub::Hub;
use crate::plugins::Registry;

/// The OpenAPI document of this API, checked in at `docs/openapi.json`.
pub const OPENAPI: &str = include_str!("../../../docs/openapi.json");

/// What every handler can reach.
#[derive(Clone)]
pub struct AppState {
    pub bus: Arc<Bus>,
    pub hub: Arc<Hub>,
    pub registry: Arc<Registry>,
    pub access: Arc<Access>,
    pub allowed_origins: Arc<Vec<String>>,
    /// The server uses the public development secret: `/ws` serves loopback clients only.
    pub dev_secret: bool,
    pub max_events_body: usize,
    pub max_upload: usize,
    /// Deepest JSON nesting accepted in a published event's payload.
    pub max_json_depth: usize,
    /// Largest listener report in one `POST /v1/events` response.
    pub max_report_bytes: usize,
    /// Caps on connections and HTTP timeouts (the body timeout is a layer of the router).
    pub connection_limits: ConnectionLimits,
    pub connections: Arc<ConnectionMetrics>,
    /// The Redis relay, when several nodes share fan-out.
    pub relay: Option<crate::relay::Relay>,
    /// What `POST /v1/events` published, for the dashboard's live stream.
    pub feed: Arc<Feed>,
    /// Cancelled when the server is to shut down (see `server::run` for the order).
    pub shutdown: CancellationToken,
}

pub fn router(state: AppState) -> Router {
    let events = post(events::publish).layer(DefaultBodyLimit::max(state.max_events_body));
    let plugin = get(plugins::get)
        .put(plugins::put)
        .delete(plugins::delete)
        .layer(DefaultBodyLimit::max(state.max_upload));
    Router::new()
        .route("/v1/events", events)
        .route("/v1/plugins", get(plugins::list))
        .route("/v1/plugins/{name}", plugin)
        .route("/v1/plugins/{name}/rollback", post(plugins::rollback))
        .route("/v1/openapi.json", get(|| async { ([(header::CONTENT_TYPE, "application/json")], OPENAPI) }))
        .route("/health", get(health::live))
        .route("/health/realtime", get(health::realtime))
        .route("/metrics", get(health::metrics))
        .route("/v1/admin/stream", get(stream::stream))
        .route("/ui", get(ui::to_index))
        .route("/ui/", get(ui::index))
        .route("/ui/app.js", get(ui::script))
        .route("/ui/app.css", get(ui::style))
        .route("/ws", get(ws::upgrade))
        .layer(RequestBodyTimeoutLayer::new(state.connection_limits.body_timeout))
        .layer(TraceLayer::new_for_http())
        .with_state(state)
}
