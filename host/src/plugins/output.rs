//! What a guest returns, checked and turned into host values.
//!
//! This module owns the conversion of a call's lifted result (the generated `action`s, or the
//! error string) into `bus` values, and every check on the way: how many actions and bytes,
//! event types, ids and names validated exactly as for a published event, payloads that are
//! JSON nesting at most `max-json-depth` levels, and error text cut to `max-error-bytes` with
//! control characters escaped. One bad action refuses the whole output. It must not apply
//! anything: the bus does that.

use super::host::bindings::busbar::plugin::types as wit;
use super::manifest::Limits;
use super::text;
use crate::action::{Action, FollowUp, Message, Scope, ScopeKind, Target};
use crate::bus::ListenerError;
use crate::event::{self, Json};

/// Checks a call's actions against `limits` and turns them into host actions: all or none.
pub(super) fn actions(actions: Vec<wit::Action>, event_workspace: &str, limits: &Limits) -> Result<Vec<Action>, ListenerError> {
    if actions.len() > limits.max_actions {
        return Err(ListenerError::InvalidOutput(format!(
            "{} actions returned, the limit is {}",
            actions.len(),
            limits.max_actions
        )));
    }
    let mut out = Vec::with_capacity(actions.len());
    let mut bytes = 0usize;
    for (i, action) in actions.into_iter().enumerate() {
        let action = convert(action, event_workspace, limits).map_err(|e| ListenerError::InvalidOutput(format!("action {i}: {e}")))?;
        bytes += action.size();
        if bytes > limits.max_output_bytes {
            return Err(ListenerError::InvalidOutput(format!("more than {} bytes returned", limits.max_output_bytes)));
        }
        out.push(action);
    }
    Ok(out)
}

/// The plugin's own error, as it will be logged and reported.
pub(super) fn error(message: &str, limits: &Limits) -> ListenerError {
    ListenerError::Failed(text::sanitize(message, limits.max_error_bytes))
}

fn convert(action: wit::Action, event_workspace: &str, limits: &Limits) -> Result<Action, String> {
    let payload = |payload: String| {
        event::check_json_depth(&payload, limits.max_json_depth).map_err(|e| format!("payload {e}"))?;
        Json::parse(payload).map_err(|e| format!("payload is not valid JSON: {e}"))
    };
    let name = |field: &'static str, value: &str| event::check_name(field, value).map_err(|e| e.to_string());
    Ok(match action {
        wit::Action::Send(m) => {
            event::check_type(&m.event_type).map_err(|e| e.to_string())?;
            let target = match m.target {
                wit::Target::Workspace(id) => {
                    name("target.workspace", &id)?;
                    Target::Workspace { id }
                }
                wit::Target::User(u) => {
                    name("target.user-id", &u.user_id)?;
                    if let Some(workspace) = &u.exclude_workspace {
                        name("target.exclude-workspace", workspace)?;
                    }
                    Target::User { id: u.user_id, workspace: None, exclude_workspace: u.exclude_workspace }
                }
                wit::Target::Scope(s) => {
                    name("target.scope.id", &s.id)?;
                    match scope_kind(s.kind) {
                        // The same rooms as the `workspace` and `user` targets, under their rules.
                        ScopeKind::Workspace => Target::Workspace { id: s.id },
                        ScopeKind::User => Target::User { id: s.id, workspace: None, exclude_workspace: None },
                        // A plugin names a task or chat by id: it is one of the event's workspace.
                        kind => Target::Scope { scope: Scope::of(kind, event_workspace, s.id) },
                    }
                }
                wit::Target::Everyone => Target::Everyone,
            };
            Action::Send(Message { target, event_type: m.event_type, payload: payload(m.payload)? })
        }
        wit::Action::Publish(f) => {
            event::check_type(&f.event_type).map_err(|e| e.to_string())?;
            event::check_names(&f.workspace_id, &f.actor_type, &f.actor_id, f.task_id.as_deref(), f.chat_session_id.as_deref())
                .map_err(|e| e.to_string())?;
            Action::Publish(FollowUp {
                event_type: f.event_type,
                workspace_id: f.workspace_id,
                actor_type: f.actor_type,
                actor_id: f.actor_id,
                payload: payload(f.payload)?,
                task_id: f.task_id,
                chat_session_id: f.chat_session_id,
            })
        }
    })
}

fn scope_kind(kind: wit::ScopeKind) -> ScopeKind {
    match kind {
        wit::ScopeKind::Workspace => ScopeKind::Workspace,
        wit::ScopeKind::User => ScopeKind::User,
        wit::ScopeKind::Task => ScopeKind::Task,
        wit::ScopeKind::Chat => ScopeKind::Chat,
    }
}
