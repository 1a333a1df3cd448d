//! Where a plugin's output may go: the output policy, checked on every call before anything
//! is applied.
//!
//! A plugin handling an event of workspace A reaches, by default, only A: A's room, its users'
//! connections to A, A's task and chat scopes; its follow-up events stay in A and are published
//! by the plugin itself (`actor_type` `plugin`, `actor_id` its name). Reaching another workspace,
//! a user's connections to other workspaces, or everyone, and publishing as someone else, each
//! need a grant in the manifest (`capabilities.grants`: `cross-workspace`, `everyone`,
//! `impersonate`). One action over the line refuses the whole call's output. This module owns
//! `Grant` and that check; it must not apply anything.

use std::collections::BTreeSet;
use std::str::FromStr;

use serde::Serialize;

use crate::action::{Action, ScopeKind, Target};
use crate::event::Event;

/// What a manifest may grant beyond the event's own workspace.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Grant {
    /// Messages to other workspaces' rooms and to users' connections to any workspace;
    /// follow-ups in other workspaces.
    CrossWorkspace,
    /// Messages to every connection.
    Everyone,
    /// Follow-ups published as any actor.
    Impersonate,
}

named_variants!(Grant { CrossWorkspace = "cross-workspace", Everyone = "everyone", Impersonate = "impersonate" });

impl FromStr for Grant {
    type Err = String;

    fn from_str(s: &str) -> Result<Grant, String> {
        Grant::from_name(s).ok_or_else(|| {
            format!("unknown grant `{s}`; the grants are `cross-workspace`, `everyone` and `impersonate`")
        })
    }
}

/// The actor type of follow-ups a plugin publishes as itself.
pub const PLUGIN_ACTOR: &str = "plugin";

/// Checks `actions`, returned by plugin `plugin` for `event`, against its grants, and narrows
/// what is allowed to what the policy says: messages to a user reach only their connections to
/// the event's workspace without `cross-workspace`; follow-ups get the plugin as their actor
/// without `impersonate`. The first action over the line refuses them all.
pub(super) fn apply(actions: &mut [Action], event: &Event, plugin: &str, grants: &BTreeSet<Grant>) -> Result<(), String> {
    let cross = grants.contains(&Grant::CrossWorkspace);
    let home = event.workspace_id.as_str();
    let outside = |what: &str, workspace: &str| {
        let home = if home.is_empty() { "no workspace".to_string() } else { format!("workspace `{home}`") };
        format!("{what} in workspace `{workspace}`, but the event is in {home}: that needs the `cross-workspace` grant")
    };
    for (i, action) in actions.iter_mut().enumerate() {
        let refused = |problem: String| format!("action {i}: {problem}");
        match action {
            Action::Send(message) => match &mut message.target {
                Target::Workspace { id } if !cross && id != home => {
                    return Err(refused(outside("a message to the room", id)));
                }
                Target::Workspace { .. } => {}
                Target::User { workspace, .. } => {
                    if !cross {
                        match workspace {
                            Some(w) if w != home => return Err(refused(outside("a message to a user's connections", w))),
                            _ => *workspace = Some(home.to_string()),
                        }
                    }
                }
                Target::Scope { scope } => {
                    let in_home = match scope.kind {
                        ScopeKind::Task | ScopeKind::Chat | ScopeKind::Workspace => scope.workspace == home,
                        ScopeKind::User => false,
                    };
                    if !cross && !in_home {
                        return Err(refused(outside(&format!("a message to the {} scope", scope.kind), &scope.workspace)));
                    }
                }
                Target::Everyone if !grants.contains(&Grant::Everyone) => {
                    return Err(refused("a message to everyone needs the `everyone` grant".to_string()));
                }
                Target::Everyone => {}
            },
            Action::Publish(follow_up) => {
                if !cross && follow_up.workspace_id != home {
                    return Err(refused(outside("a follow-up event", &follow_up.workspace_id)));
                }
                if grants.contains(&Grant::Impersonate) {
                    continue;
                }
                let actor = (follow_up.actor_type.as_str(), follow_up.actor_id.as_str());
                // Left empty, carried over from the event (what SDK helpers do), or itself.
                let allowed = [("", ""), (event.actor_type.as_str(), event.actor_id.as_str()), (PLUGIN_ACTOR, plugin)];
                if !allowed.contains(&actor) {
                    return Err(refused(format!(
                        "a follow-up event acting as `{}/{}`: a plugin publishes as itself unless it has the `impersonate` grant",
                        actor.0, actor.1
                    )));
                }
                follow_up.actor_type = PLUGIN_ACTOR.to_string();
                follow_up.actor_id = plugin.to_string();
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::action::{FollowUp, Message, Scope};
    use crate::event::Json;

    fn send(target: Target) -> Action {
        Action::Send(Message { target, event_type: "x:y".into(), payload: Json::empty_object() })
    }

    fn publish(workspace: &str, actor: (&str, &str)) -> Action {
        Action::Publish(FollowUp {
            event_type: "x:y".into(),
            workspace_id: workspace.into(),
            actor_type: actor.0.into(),
            actor_id: actor.1.into(),
            payload: Json::empty_object(),
            task_id: None,
            chat_session_id: None,
        })
    }

    fn check(action: Action, grants: &[Grant]) -> Result<Action, String> {
        let event = Event::new("a:b", "A").with_actor("member", "u-1");
        let mut actions = [action];
        apply(&mut actions, &event, "p", &grants.iter().copied().collect()).map(|()| actions[0].clone())
    }

    #[test]
    fn by_default_only_the_events_workspace() {
        assert!(check(send(Target::Workspace { id: "A".into() }), &[]).is_ok());
        let err = check(send(Target::Workspace { id: "B".into() }), &[]).unwrap_err();
        assert_eq!(err, "action 0: a message to the room in workspace `B`, but the event is in workspace `A`: that needs the `cross-workspace` grant");
        assert!(check(send(Target::Scope { scope: Scope::task("A", "t") }), &[]).is_ok());
        assert!(check(send(Target::Scope { scope: Scope::chat("B", "c") }), &[]).is_err());
        assert!(check(send(Target::Everyone), &[]).unwrap_err().contains("needs the `everyone` grant"));
        assert!(check(publish("B", ("", "")), &[]).is_err());
        let narrowed = check(send(Target::User { id: "u".into(), workspace: None, exclude_workspace: None }), &[]).unwrap();
        assert_eq!(narrowed, send(Target::User { id: "u".into(), workspace: Some("A".into()), exclude_workspace: None }));
    }

    #[test]
    fn follow_ups_are_the_plugins_own_unless_it_may_impersonate() {
        for carried in [("", ""), ("member", "u-1"), ("plugin", "p")] {
            let Action::Publish(f) = check(publish("A", carried), &[]).unwrap() else { unreachable!() };
            assert_eq!((f.actor_type.as_str(), f.actor_id.as_str()), ("plugin", "p"), "{carried:?}");
        }
        let err = check(publish("A", ("member", "admin")), &[]).unwrap_err();
        assert!(err.contains("acting as `member/admin`"), "{err}");
        let Action::Publish(f) = check(publish("A", ("member", "admin")), &[Grant::Impersonate]).unwrap() else { unreachable!() };
        assert_eq!(f.actor_id, "admin");
    }

    #[test]
    fn grants_open_what_they_name() {
        assert!(check(send(Target::Workspace { id: "B".into() }), &[Grant::CrossWorkspace]).is_ok());
        assert!(check(send(Target::Everyone), &[Grant::Everyone]).is_ok());
        assert!(check(publish("B", ("", "")), &[Grant::CrossWorkspace]).is_ok());
        let all = check(send(Target::User { id: "u".into(), workspace: None, exclude_workspace: None }), &[Grant::CrossWorkspace]).unwrap();
        assert_eq!(all, send(Target::User { id: "u".into(), workspace: None, exclude_workspace: None }));
        assert!(check(send(Target::Everyone), &[Grant::CrossWorkspace]).is_err());
    }
}
