//! `/health` (liveness), `/health/realtime` (JSON counters) and `/metrics` (Prometheus text).


use axum::Json;
use axum::extract::State;
use axum::http::header;
use axum::response::IntoResponse;
use serde_json::json;

use super::AppState;
use super::access::Admin;
use super::error::ApiError;

pub(super) async fn live() -> Json<serde_json::Value> {
    Json(json!({"status": "ok"}))
}

pub(super) async fn realtime(_: Admin, State(state): State<AppState>) -> Result<impl IntoResponse, ApiError> {
    Ok(([(header::CACHE_CONTROL, "no-store")], Json(realtime_body(&state))))
}

/// The hub's counters, the plugins, reloads and the relay's state: `/health/realtime`'s body
/// (and the dashboard's `stats`).
pub(super) fn realtime_body(state: &AppState) -> serde_json::Value {
    let mut body = serde_json::to_value(state.hub.snapshot()).unwrap_or_default();
    body["plugins"] = serde_json::to_value(state.registry.list()).unwrap_or_default();
    body["plugin_reloads"] = serde_json::to_value(state.registry.stats()).unwrap_or_default();
    body["relay"] = match &state.relay {
        Some(relay) => {
            let mut value = serde_json::to_value(relay.snapshot()).unwrap_or_default();
            value["enabled"] = json!(true);
            value
        }
        None => json!({"enabled": false}),
    };
    body
}

pub(super) async fn metrics(_: Admin, State(state): State<AppState>) -> Result<impl IntoResponse, ApiError> {
    let text = super::metrics::render(&state).map_err(|e| ApiError::Internal(format!("encoding metrics: {e}")))?;
    Ok(([(header::CONTENT_TYPE, super::metrics::CONTENT_TYPE)], text))
}
