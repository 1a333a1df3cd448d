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

/// What a realtime client receives: `{type, payload, actor_id, actor_type, event_id,
/// workspace_id}`; `workspace_id` is the workspace of the event the message came from.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Frame {
    #[serde(rename = "type")]
    pub event_type: String,
    pub payload: Json,
    pub actor_id: String,
    pub actor_type: String,
    pub event_id: String,
    pub workspace_id: String,
}

/// Fans frames out to realtime clients. Fire-and-forget: a Broadcaster never blocks the bus on
/// a slow client and never reports per-client failures back to it.
pub trait Broadcaster: Send + Sync {
    /// Every connection of a workspace.
    fn broadcast_to_workspace(&self, workspace_id: &str, frame: Frame);
    /// The connections of a user that `reach` includes. The others see the frame's position only
    /// (a `skip` frame), so a user room's `seq` has no gaps on any connection.
    fn send_to_user(&self, user_id: &str, reach: &Reach, frame: Frame);
    /// Every connection subscribed to a scope.
    fn broadcast_to_scope(&self, scope: &Scope, frame: Frame);
    /// Every connection.
    fn broadcast(&self, frame: Frame);
}

/// Which of a user's connections a message reaches, by the workspace each is connected to.
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash)]
pub enum Reach {
    /// Every connection of the user.
    #[default]
    All,
    /// Only those to this workspace.
    Only(String),
    /// All but those to this workspace.
    Except(String),
}

impl Reach {
    /// What `Target::User`'s `workspace` and `exclude_workspace` reach; `None` when that is no
    /// connection at all (only a workspace that is also excluded).
    pub fn new(only: Option<&str>, except: Option<&str>) -> Option<Reach> {
        match (only, except) {
            (Some(only), Some(except)) if only == except => None,
            (Some(only), _) => Some(Reach::Only(only.to_string())),
            (None, Some(except)) => Some(Reach::Except(except.to_string())),
            (None, None) => Some(Reach::All),
        }
    }

    /// Whether a connection to `workspace` gets the frame.
    pub fn includes(&self, workspace: &str) -> bool {
        match self {
            Reach::All => true,
            Reach::Only(w) => w == workspace,
            Reach::Except(w) => w != workspace,
        }
    }

    /// A compact text form (for the relay's records): empty, `+<workspace>` or `-<workspace>`.
    pub fn encode(&self) -> String {
        match self {
            Reach::All => String::new(),
            Reach::Only(w) => format!("+{w}"),
            Reach::Except(w) => format!("-{w}"),
        }
    }

    /// Reads `encode`'s form; anything else reaches everyone.
    pub fn decode(text: &str) -> Reach {
        if let Some(w) = text.strip_prefix('+') {
            Reach::Only(w.to_string())
        } else if let Some(w) = text.strip_prefix('-') {
            Reach::Except(w.to_string())
        } else {
            Reach::All
        }
    }
}

/// Calls the Broadcaster operation that matches `target`.
pub fn deliver(broadcaster: &dyn Broadcaster, target: Target, frame: Frame) {
    match target {
        Target::Workspace { id } => broadcaster.broadcast_to_workspace(&id, frame),
        Target::User { id, workspace, exclude_workspace } => {
            if let Some(reach) = Reach::new(workspace.as_deref(), exclude_workspace.as_deref()) {
                broadcaster.send_to_user(&id, &reach, frame)
            }
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

    fn send_to_user(&self, user_id: &str, reach: &Reach, frame: Frame) {
        let (workspace, exclude_workspace) = match reach {
            Reach::All => (None, None),
            Reach::Only(w) => (Some(w.clone()), None),
            Reach::Except(w) => (None, Some(w.clone())),
        };
        let target = Target::User { id: user_id.to_string(), workspace, exclude_workspace };
        self.record(target, frame);
    }

    fn broadcast_to_scope(&self, scope: &Scope, frame: Frame) {
        self.record(Target::Scope { scope: scope.clone() }, frame);
    }

    fn broadcast(&self, frame: Frame) {
        self.record(Target::Everyone, frame);
    }
}
