//! Actions: what a listener asks the bus to do after handling an event.
//!
//! A listener returns a list of actions: messages for realtime clients (each with a target)
//! and follow-up events. This module owns those types and their JSON form. It must not apply
//! them: the bus does that, in order, after the listener has returned.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

use crate::event::Json;

/// The kinds of realtime scope.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ScopeKind {
    Workspace,
    User,
    Task,
    Chat,
}

named_variants!(ScopeKind { Workspace = "workspace", User = "user", Task = "task", Chat = "chat" });

impl FromStr for ScopeKind {
    type Err = String;

    fn from_str(s: &str) -> Result<ScopeKind, String> {
        ScopeKind::from_name(s).ok_or_else(|| format!("unknown scope kind `{s}`"))
    }
}

/// A scope: a kind, the id of the workspace, user, task or chat session, and the workspace it
/// belongs to. Task and chat scopes belong to one workspace: `t-1` of workspace A and `t-1` of
/// workspace B are different rooms. A workspace scope belongs to itself; a user scope to no
/// workspace (a user's room spans every workspace the user connects to).
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct Scope {
    pub kind: ScopeKind,
    /// The workspace the scope belongs to: its own id for a workspace, empty for a user.
    pub workspace: String,
    pub id: String,
}

impl Scope {
    /// The scope of `kind` with `id`, in `workspace` (ignored for workspace and user scopes,
    /// which belong to themselves and to none).
    pub fn of(kind: ScopeKind, workspace: impl Into<String>, id: impl Into<String>) -> Scope {
        let id = id.into();
        let workspace = match kind {
            ScopeKind::Workspace => id.clone(),
            ScopeKind::User => String::new(),
            ScopeKind::Task | ScopeKind::Chat => workspace.into(),
        };
        Scope { kind, workspace, id }
    }

    /// The room of every connection to workspace `id`.
    pub fn workspace(id: impl Into<String>) -> Scope {
        Scope::of(ScopeKind::Workspace, "", id)
    }

    /// The room of every connection of user `id`, whatever its workspace.
    pub fn user(id: impl Into<String>) -> Scope {
        Scope::of(ScopeKind::User, "", id)
    }

    /// Task `id` of `workspace`.
    pub fn task(workspace: impl Into<String>, id: impl Into<String>) -> Scope {
        Scope::of(ScopeKind::Task, workspace, id)
    }

    /// Chat session `id` of `workspace`.
    pub fn chat(workspace: impl Into<String>, id: impl Into<String>) -> Scope {
        Scope::of(ScopeKind::Chat, workspace, id)
    }
}

impl fmt::Display for Scope {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.kind {
            ScopeKind::Task | ScopeKind::Chat => write!(f, "{}:{}/{}", self.kind, self.workspace, self.id),
            ScopeKind::Workspace | ScopeKind::User => write!(f, "{}:{}", self.kind, self.id),
        }
    }
}

/// Who receives a message.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Target {
    /// Every connection of a workspace.
    Workspace { id: String },
    /// The connections of a user: only those to `workspace` when it is set (what a plugin's
    /// message reaches by default), else those to every workspace; minus those to
    /// `exclude_workspace`.
    User {
        id: String,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        workspace: Option<String>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        exclude_workspace: Option<String>,
    },
    /// Every connection subscribed to a scope.
    Scope { scope: Scope },
    /// Every connection.
    Everyone,
}

/// A message for realtime clients: the frame's `type` and JSON `payload`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Message {
    pub target: Target,
    #[serde(rename = "type")]
    pub event_type: String,
    pub payload: Json,
}

/// A follow-up event to publish once the current event has been through every listener.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct FollowUp {
    #[serde(rename = "type")]
    pub event_type: String,
    pub workspace_id: String,
    pub actor_type: String,
    pub actor_id: String,
    pub payload: Json,
    pub task_id: Option<String>,
    pub chat_session_id: Option<String>,
}

/// One thing a listener asks the bus to do.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "action", rename_all = "snake_case")]
pub enum Action {
    Send(Message),
    Publish(FollowUp),
}

impl Action {
    /// A message to `target` whose payload is already valid JSON.
    pub fn send(target: Target, event_type: impl Into<String>, payload: Json) -> Action {
        Action::Send(Message { target, event_type: event_type.into(), payload })
    }

    /// Bytes this action carries (types, ids and payloads), for output caps.
    pub fn size(&self) -> usize {
        match self {
            Action::Send(m) => m.event_type.len() + m.payload.as_str().len() + target_size(&m.target),
            Action::Publish(f) => {
                f.event_type.len()
                    + f.workspace_id.len()
                    + f.actor_type.len()
                    + f.actor_id.len()
                    + f.payload.as_str().len()
                    + f.task_id.as_ref().map_or(0, String::len)
                    + f.chat_session_id.as_ref().map_or(0, String::len)
            }
        }
    }
}

fn target_size(target: &Target) -> usize {
    match target {
        Target::Workspace { id } => id.len(),
        Target::User { id, workspace, exclude_workspace } => {
            id.len() + workspace.as_ref().map_or(0, String::len) + exclude_workspace.as_ref().map_or(0, String::len)
        }
        Target::Scope { scope } => scope.workspace.len() + scope.id.len(),
        Target::Everyone => 0,
    }
}
