//! The Broadcaster seam: where messages returned by listeners leave the bus.
//!
//! This module owns the `Broadcaster` trait (the seed's four fan-out operations), the `Frame`
//! clients receive, and `Recorder`, an in-memory Broadcaster that remembers every call (used by
//! `busbar dispatch` and by tests). It must not know about sockets, rooms or Redis: the realtime
//! hub implements the same trait elsewhere.

use parking_lot::Mutex;
use serde::Serialize;

use crate::action::{Scope, Target};
use crate::event::Json;

/// What a realtime client receives: `{type, payload, actor_id, actor_type, event_id}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Frame {
    #[serde(rename = "type")]
    pub event_type: String,
    pub payload: Json,
    pub actor_id: String,
    pub actor_type: String,
    pub event_id: String,
}

/// Fans frames out to realtime clients. Fire-and-forget: a Broadcaster never blocks the bus on
/// a slow client and never reports per-client failures back to it.
pub trait Broadcaster: Send + Sync {
    /// Every connection of a workspace.
    fn broadcast_to_workspace(&self, workspace_id: &str, frame: Frame);
    /// Every connection of a user, except those to `exclude_workspace`.
    fn send_to_user(&self, user_id: &str, exclude_workspace: Option<&str>, frame: Frame);
    /// Every connection subscribed to a scope.
    fn broadcast_to_scope(&self, scope: &Scope, frame: Frame);
    /// Every connection.
    fn broadcast(&self, frame: Frame);
}

/// Calls the Broadcaster operation that matches `target`.
pub fn deliver(broadcaster: &dyn Broadcaster, target: Target, frame: Frame) {
    match target {
        Target::Workspace { id } => broadcaster.broadcast_to_workspace(&id, frame),
        Target::User { id, exclude_workspace } => {
            broadcaster.send_to_user(&id, exclude_workspace.as_deref(), frame)
        }
        Target::Scope { scope } => broadcaster.broadcast_to_scope(&scope, frame),
        Target::Everyone => broadcaster.broadcast(frame),
    }
}

/// One recorded Broadcaster call.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Delivery {
    pub target: Target,
    pub frame: Frame,
}

impl Delivery {
    /// The call as one JSON line, as `busbar dispatch` prints it:
    /// `{"kind":"broadcast","event_id":...,"target":...,"frame":...}`, with the frame's payload
    /// exactly as the plugin returned it (the bytes clients receive, never re-serialized).
    pub fn to_line(&self) -> String {
        #[derive(Serialize)]
        struct Line<'a> {
            kind: &'static str,
            event_id: &'a str,
            target: &'a Target,
            frame: &'a Frame,
        }
        let line = Line { kind: "broadcast", event_id: &self.frame.event_id, target: &self.target, frame: &self.frame };
        serde_json::to_string(&line).unwrap_or_else(|e| format!("{{\"kind\":\"unprintable\",\"error\":{:?}}}", e.to_string()))
    }
}

/// A Broadcaster that records every call, in order.
#[derive(Debug, Default)]
pub struct Recorder {
    calls: Mutex<Vec<Delivery>>,
}

impl Recorder {
    pub fn new() -> Recorder {
        Recorder::default()
    }

    /// Every call so far, leaving the record empty.
    pub fn take(&self) -> Vec<Delivery> {
        std::mem::take(&mut *self.calls.lock())
    }

    /// A copy of every call so far.
    pub fn calls(&self) -> Vec<Delivery> {
        self.calls.lock().clone()
    }

    fn record(&self, target: Target, frame: Frame) {
        self.calls.lock().push(Delivery { target, frame });
    }
}

impl Broadcaster for Recorder {
    fn broadcast_to_workspace(&self, workspace_id: &str, frame: Frame) {
        self.record(Target::Workspace { id: workspace_id.to_string() }, frame);
    }

    fn send_to_user(&self, user_id: &str, exclude_workspace: Option<&str>, frame: Frame) {
        let target = Target::User {
            id: user_id.to_string(),
            exclude_workspace: exclude_workspace.map(str::to_string),
        };
        self.record(target, frame);
    }

    fn broadcast_to_scope(&self, scope: &Scope, frame: Frame) {
        self.record(Target::Scope { scope: scope.clone() }, frame);
    }

    fn broadcast(&self, frame: Frame) {
        self.record(Target::Everyone, frame);
    }
}
