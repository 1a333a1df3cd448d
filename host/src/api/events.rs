//! `POST /v1/events`: publish one event or an array of them, and report what every listener did.
//!
//! `?report=` says how much: `full` (the default: each event and its follow-ups with every
//! listener's outcome), `summary` (counts only) or `none` (the event ids). The response is
//! bounded whatever the plugins do: each event's full report goes in whole while the response
//! stays under `limits.max-report-kib`; past that, an event's report is replaced by its summary
//! (events by status, listener calls by outcome).

use axum::Json;
use axum::body::Bytes;
use axum::extract::rejection::{BytesRejection, QueryRejection};
use axum::extract::{Query, State};
use serde::Serialize;
use serde_json::value::RawValue;

use super::AppState;
use super::access::Publisher;
use super::stream::{self, Headline};
use super::error::ApiError;
use crate::bus::ReportSummary;
use crate::event::Event;

/// Most events in one request.
pub(super) const MAX_EVENTS_PER_REQUEST: usize = 1000;

#[derive(Serialize)]
pub(super) struct PublishResponse {
    pub results: Vec<PublishResult>,
}

#[derive(Serialize)]
pub(super) struct PublishResult {
    pub event_id: String,
    /// The event, then its follow-ups, each with every listener's outcome; left out when it
    /// would take the response past its size limit.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub events: Option<Box<RawValue>>,
    /// What `events` would have said, in counts, when it was left out.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub summary: Option<ReportSummary>,
}

/// How much the response says about each event.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq, serde::Deserialize)]
#[serde(rename_all = "kebab-case")]
pub(super) enum ReportLevel {
    /// Each event and its follow-ups, with every listener's outcome.
    #[default]
    Full,
    /// Counts: events by status, listener calls by outcome.
    Summary,
    /// The event ids only.
    None,
}

#[derive(Debug, Default, serde::Deserialize)]
#[serde(rename_all = "kebab-case", deny_unknown_fields)]
pub(super) struct PublishQuery {
    #[serde(default)]
    report: ReportLevel,
}

pub(super) async fn publish(
    _: Publisher,
    State(state): State<AppState>,
    query: Result<Query<PublishQuery>, QueryRejection>,
    body: Result<Bytes, BytesRejection>,
) -> Result<Json<PublishResponse>, ApiError> {
    let Query(query) = query.map_err(|e| ApiError::BadRequest(format!("{e}: `report` is `full`, `summary` or `none`")))?;
    let body = body.map_err(|e| {
        if e.status() == axum::http::StatusCode::PAYLOAD_TOO_LARGE {
            ApiError::TooLarge(format!("body larger than {} bytes", state.max_events_body))
        } else {
            ApiError::BadRequest(e.body_text())
        }
    })?;
    let events = parse(&body, state.max_json_depth)?;
    let bus = state.bus.clone();
    let feed = state.feed.clone();
    let max_report = state.max_report_bytes;
    // Plugins run on the blocking pool, never on a runtime worker: WASI's blocking calls inside
    // them block on the runtime, which a worker thread may not do (and `block_in_place`, which
    // allows it, measured dearer than this hop; BENCHMARKS.md "The HTTP publish path").
    let publish = move || {
        let mut report_left = max_report;
        events
            .into_iter()
            .map(|event| {
                let event_id = event.id.clone();
                // The dashboard's stream sees the event only while one is open.
                let report = match feed.watched().then(|| Headline::of(&event)) {
                    Some(headline) => {
                        let (report, frames) = stream::noting_frames(|| bus.publish(event));
                        feed.published(headline, &report, &frames, max_report);
                        report
                    }
                    None => bus.publish(event),
                };
                match query.report {
                    ReportLevel::None => PublishResult { event_id, events: None, summary: None },
                    ReportLevel::Summary => PublishResult { event_id, events: None, summary: Some(report.summary()) },
                    ReportLevel::Full => match serde_json::value::to_raw_value(&report.events) {
                        Ok(raw) if raw.get().len() <= report_left => {
                            report_left -= raw.get().len();
                            PublishResult { event_id, events: Some(raw), summary: None }
                        }
                        _ => PublishResult { event_id, events: None, summary: Some(report.summary()) },
                    },
                }
            })
            .collect()
    };
    let results = tokio::task::spawn_blocking(publish).await.map_err(|e| ApiError::Internal(format!("publish task failed: {e}")))?;
    Ok(Json(PublishResponse { results }))
}

/// One event object or an array of them; every one is validated before any is published.
fn parse(body: &[u8], max_depth: usize) -> Result<Vec<Event>, ApiError> {
    let text = std::str::from_utf8(body).map_err(|_| ApiError::BadRequest("body is not UTF-8".into()))?;
    let is_array = text.trim_start().starts_with('[');
    if !is_array {
        return Event::from_json_with_depth(text, max_depth).map(|e| vec![e]).map_err(|e| ApiError::BadRequest(e.to_string()));
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
        .map(|(i, raw)| {
            Event::from_json_with_depth(raw.get(), max_depth).map_err(|e| ApiError::BadRequest(format!("events[{i}]: {e}")))
        })
        .collect()
}
