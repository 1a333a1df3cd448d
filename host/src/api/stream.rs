//! `GET /v1/admin/stream`: the dashboard's live feed, as Server-Sent Events.
//!
//! This module owns `Feed` (what `POST /v1/events` published, each event with every listener's
//! outcome and the frames it produced, fanned out to the streams that are open; nothing is
//! serialized while none is), `Tap` (the Broadcaster in front of the hub or the relay that notes
//! the frames of a publish being watched, on the publishing thread) and the stream itself: a
//! `stats` message every second (the `/health/realtime` body and the plugin list), a `published`
//! message per published event, and `lagged` when a reader fell behind and messages were dropped
//! for it. It must not decide anything about plugins or the hub.

use std::cell::RefCell;
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
use crate::action::Scope;
use crate::broadcast::{Broadcaster, Frame, Reach};
use crate::bus::PublishReport;
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

    /// Tells the open streams that an event was published, what its listeners did, and the
    /// frames it produced.
    /// A report over `max_report_bytes` (what a response to the publisher may hold) goes as its
    /// summary, so the messages waiting for slow streams stay bounded whatever plugins return.
    pub(super) fn published(&self, event: Headline, report: &PublishReport, frames: &[FrameNote], max_report_bytes: usize) {
        let at_ms = crate::event::now_ms();
        let message = match serde_json::value::to_raw_value(&report.events) {
            Ok(events) if events.get().len() <= max_report_bytes => json!({"at_ms": at_ms, "event": event, "report": events, "frames": frames}),
            _ => json!({"at_ms": at_ms, "event": event, "report": [], "summary": report.summary(), "frames": frames}),
        };
        let _ = self.sender.send(Arc::from(message.to_string()));
    }
}

/// Most frames noted for one published event (its follow-ups included).
const MAX_NOTED_FRAMES: usize = 256;

/// A frame a watched publish produced: where it went, its type, event and payload size.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub(super) struct FrameNote {
    room: String,
    #[serde(rename = "type")]
    event_type: String,
    event_id: String,
    bytes: usize,
}

thread_local! {
    /// The frames of the publish running on this thread, while one is being watched.
    static NOTED: RefCell<Option<Vec<FrameNote>>> = const { RefCell::new(None) };
}

/// Runs `publish` on this thread and returns what it returned with the frames it produced.
pub(super) fn noting_frames<R>(publish: impl FnOnce() -> R) -> (R, Vec<FrameNote>) {
    NOTED.with(|noted| *noted.borrow_mut() = Some(Vec::new()));
    let returned = publish();
    let frames = NOTED.with(|noted| noted.borrow_mut().take()).unwrap_or_default();
    (returned, frames)
}

fn note(room: impl FnOnce() -> String, frame: &Frame) {
    NOTED.with(|noted| {
        if let Some(frames) = noted.borrow_mut().as_mut()
            && frames.len() < MAX_NOTED_FRAMES
        {
            let event_type = frame.event_type.clone();
            frames.push(FrameNote { room: room(), event_type, event_id: frame.event_id.clone(), bytes: frame.payload.as_str().len() });
        }
    });
}

/// The Broadcaster the bus is given: notes the frames of a watched publish, then passes every
/// frame on unchanged.
pub struct Tap {
    inner: Arc<dyn Broadcaster>,
}

impl Tap {
    pub fn new(inner: Arc<dyn Broadcaster>) -> Tap {
        Tap { inner }
    }
}

impl Broadcaster for Tap {
    fn broadcast_to_workspace(&self, workspace_id: &str, frame: Frame) {
        note(|| format!("workspace {workspace_id}"), &frame);
        self.inner.broadcast_to_workspace(workspace_id, frame);
    }

    fn send_to_user(&self, user_id: &str, reach: &Reach, frame: Frame) {
        note(|| format!("user {user_id}"), &frame);
        self.inner.send_to_user(user_id, reach, frame);
    }

    fn broadcast_to_scope(&self, scope: &Scope, frame: Frame) {
        note(|| format!("{} {}", scope.kind, scope.id), &frame);
        self.inner.broadcast_to_scope(scope, frame);
    }

    fn broadcast(&self, frame: Frame) {
        note(|| "everyone".to_string(), &frame);
        self.inner.broadcast(frame);
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
