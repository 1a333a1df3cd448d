//! `POST /v1/events`: publish one event or an array of them, and report what every listener did.

use axum::Json;
use axum::body::Bytes;
use axum::extract::State;
use axum::extract::rejection::BytesRejection;
use serde::Serialize;
use serde_json::value::RawValue;

use super::AppState;
use super::access::Publisher;
use super::error::ApiError;
use crate::bus::EventReport;
use crate::event::Event;

/// Most events in one request.
pub const MAX_EVENTS_PER_REQUEST: usize = 1000;

#[derive(Serialize)]
pub struct PublishResponse {
    pub results: Vec<PublishResult>,
}

#[derive(Serialize)]
pub struct PublishResult {
    pub event_id: String,
    /// The event, then its follow-ups, each with every listener's outcome.
    pub events: Vec<EventReport>,
}

pub async fn publish(
    _: Publisher,
    State(state): State<AppState>,
    body: Result<Bytes, BytesRejection>,
) -> Result<Json<PublishResponse>, ApiError> {
    let body = body.map_err(|e| {
        if e.status() == axum::http::StatusCode::PAYLOAD_TOO_LARGE {
            ApiError::TooLarge(format!("body larger than {} bytes", state.max_events_body))
        } else {
            ApiError::BadRequest(e.body_text())
        }
    })?;
    let events = parse(&body)?;
    let bus = state.bus.clone();
    let results = tokio::task::spawn_blocking(move || {
        events
            .into_iter()
            .map(|event| {
                let event_id = event.id.clone();
                PublishResult { event_id, events: bus.publish(event).events }
            })
            .collect()
    })
    .await
    .map_err(|e| ApiError::Internal(format!("publish task failed: {e}")))?;
    Ok(Json(PublishResponse { results }))
}

/// One event object or an array of them; every one is validated before any is published.
fn parse(body: &[u8]) -> Result<Vec<Event>, ApiError> {
    let text = std::str::from_utf8(body).map_err(|_| ApiError::BadRequest("body is not UTF-8".into()))?;
    let is_array = text.trim_start().starts_with('[');
    if !is_array {
        return Event::from_json(text).map(|e| vec![e]).map_err(|e| ApiError::BadRequest(e.to_string()));
    }
    let items: Vec<&RawValue> =
        serde_json::from_str(text).map_err(|e| ApiError::BadRequest(format!("invalid event JSON: {e}")))?;
    if items.is_empty() {
        return Err(ApiError::BadRequest("empty array: nothing to publish".into()));
    }
    if items.len() > MAX_EVENTS_PER_REQUEST {
        return Err(ApiError::TooLarge(format!("{} events; at most {MAX_EVENTS_PER_REQUEST} per request", items.len())));
    }
    items
        .iter()
        .enumerate()
        .map(|(i, raw)| Event::from_json(raw.get()).map_err(|e| ApiError::BadRequest(format!("events[{i}]: {e}"))))
        .collect()
}
