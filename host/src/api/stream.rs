//! `GET /v1/admin/stream`: the dashboard's live feed, as Server-Sent Events.
//!
//! This module owns `Feed` (what `POST /v1/events` published, each event with every listener's
//! outcome, fanned out to the streams that are open; nothing is serialized while none is) and
//! the stream itself: a `stats` message every second (the `/health/realtime` body and the plugin
//! list), a `published` message per published event, and `lagged` when a reader fell behind
//! and messages were dropped for it. It must not decide anything about plugins or the hub.

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::State;
use axum::response::sse::{Event as SseEvent, KeepAlive, Sse};
use futures_util::Stream;
use serde_json::json;
use tokio::sync::{broadcast, mpsc};

use super::AppState;
use super::access::Admin;
use super::error::ApiError;
use crate::bus::EventReport;
use crate::event::Event;

/// Published events waiting for slow streams; past it, a stream is told how many it lost.
const FEED_BACKLOG: usize = 256;
/// How often `stats` goes out.
const STATS_EVERY: Duration = Duration::from_secs(1);

/// What was published through the API, for the open streams.
pub struct Feed {
    sender: broadcast::Sender<Arc<str>>,
}

impl Default for Feed {
    fn default() -> Feed {
        Feed { sender: broadcast::channel(FEED_BACKLOG).0 }
    }
}

impl Feed {
    /// Whether a stream is open to be told about published events.
    pub(super) fn watched(&self) -> bool {
        self.sender.receiver_count() > 0
    }

    /// Tells the open streams that an event was published and what its listeners did.
    pub(super) fn published(&self, event: Headline, report: &[EventReport]) {
        let message = json!({"at_ms": crate::event::now_ms(), "event": event, "report": report});
        let _ = self.sender.send(Arc::from(message.to_string()));
    }
}

/// What the stream says of a published event besides its report.
#[derive(serde::Serialize)]
pub(super) struct Headline {
    id: String,
    #[serde(rename = "type")]
    event_type: String,
    workspace_id: String,
    actor_type: String,
    actor_id: String,
}

impl Headline {
    pub(super) fn of(event: &Event) -> Headline {
        Headline {
            id: event.id.clone(),
            event_type: event.event_type.clone(),
            workspace_id: event.workspace_id.clone(),
            actor_type: event.actor_type.clone(),
            actor_id: event.actor_id.clone(),
        }
    }
}

pub(super) async fn stream(_: Admin, State(state): State<AppState>) -> Result<Sse<impl Stream<Item = Result<SseEvent, Infallible>>>, ApiError> {
    let (out, receiver) = mpsc::channel::<SseEvent>(16);
    let mut published = state.feed.sender.subscribe();
    tokio::spawn(async move {
        let mut ticks = tokio::time::interval(STATS_EVERY);
        loop {
            let message = tokio::select! {
                _ = state.shutdown.cancelled() => return,
                _ = ticks.tick() => SseEvent::default().event("stats").data(stats(&state).to_string()),
                next = published.recv() => match next {
                    Ok(text) => SseEvent::default().event("published").data(&*text),
                    Err(broadcast::error::RecvError::Lagged(skipped)) => SseEvent::default().event("lagged").data(json!({"skipped": skipped}).to_string()),
                    Err(broadcast::error::RecvError::Closed) => return,
                },
            };
            // The reader went away (or is too far behind to matter): stop.
            if out.send(message).await.is_err() {
                return;
            }
        }
    });
    let messages = futures_util::stream::unfold(receiver, |mut receiver| async move { receiver.recv().await.map(|m| (Ok(m), receiver)) });
    Ok(Sse::new(messages).keep_alive(KeepAlive::default()))
}

/// What the dashboard's overview and plugin table show.
fn stats(state: &AppState) -> serde_json::Value {
    json!({"at_ms": crate::event::now_ms(), "realtime": super::health::realtime_body(state), "plugins": state.registry.list()})
}
