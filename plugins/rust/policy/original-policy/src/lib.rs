//! The original system's connection and subscription rules as one policy plugin: the
//! authenticator (who a connection is: a session JWT from the `multica_auth` cookie or a bearer
//! header, or a JWT or personal access token in the first `auth` frame; then workspace
//! membership) and the authorizer (task and chat rooms: a chat and its tasks are its creator's,
//! an issue's task is every member's).
//!
//! It owns what those rules need to know, in its kv store, fed by the events it listens to:
//! workspace slugs, memberships, chat sessions (workspace, creator), tasks (workspace, chat or
//! issue) and personal access tokens (by hash: tokens never travel). It returns no actions and
//! must not: routing events to clients is the forwarders' job. It must not trust the client
//! beyond what a signature or a recorded fact backs, and it never logs a token.
//!
//! Config (`[config]`): `jwt-secret` (required for JWTs: none is accepted until it is set),
//! `cookie` (`multica_auth`), `session-seconds` (86400: how long an identity lasts when its token
//! has no expiry), `allow-cache-ms` (30000), `deny-cache-ms` (0).

mod jwt;

use std::time::{SystemTime, UNIX_EPOCH};

use busbar_plugin_sdk::serde_json::Value;
use busbar_plugin_sdk::{
    Action, Authentication, Authenticator, Authorizer, ConnectRequest, Decision, Error, Event, Identity, Plugin, Refusal,
    RefusalKind, Room, ScopeKind, config, export_policy, kv, log,
};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

struct OriginalPolicy;

/// A chat session: only its creator may follow it (and its tasks).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct ChatRecord {
    workspace: String,
    creator: String,
}

/// A task: of a chat (its creator's), of an issue (every member's), or neither (no one's).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
struct TaskRecord {
    workspace: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    chat: Option<String>,
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    issue: bool,
}

/// A personal access token, stored under the hash of the token.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct TokenRecord {
    user: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    expires_at: Option<u64>,
}

fn slug_key(slug: &str) -> String {
    format!("slug:{slug}")
}
fn workspace_slug_key(workspace: &str) -> String {
    format!("ws-slug:{workspace}")
}
fn member_key(workspace: &str, user: &str) -> String {
    format!("member:{workspace}:{user}")
}
fn chat_key(chat: &str) -> String {
    format!("chat:{chat}")
}
fn task_key(task: &str) -> String {
    format!("task:{task}")
}
fn token_key(hash: &str) -> String {
    format!("pat:{hash}")
}

impl Plugin for OriginalPolicy {
    fn subscriptions() -> Vec<String> {
        ["workspace:*", "member:*", "task:*", "chat:*", "personal_access_token:*"].map(String::from).into()
    }

    fn handle(event: &Event) -> Result<Vec<Action>, Error> {
        let payload: Value = match event.payload_as() {
            Ok(payload) => payload,
            Err(e) => {
                log::debug(format!("ignored: {e}"));
                return Ok(vec![]);
            }
        };
        let (resource, verb) = event.event_type().split_once(':').unwrap_or_default();
        let recorded = match resource {
            "workspace" => record_workspace(&event, verb, &payload),
            "member" => record_member(&event, verb, &payload),
            "chat" => record_chat(&event, verb, &payload),
            "task" => record_task(&event, &payload),
            "personal_access_token" => record_token(verb, &payload),
            _ => Ok(()),
        };
        // A store that refuses (full) loses facts: say so loudly, but keep listening.
        if let Err(e) = recorded {
            log::error(format!("{} {}: not recorded: {e}", event.event_type(), event.id()));
        }
        Ok(vec![])
    }
}

/// The first non-empty string at one of the JSON `pointers`.
fn first_str<'a>(payload: &'a Value, pointers: &[&str]) -> Option<&'a str> {
    pointers.iter().find_map(|p| payload.pointer(p).and_then(Value::as_str).filter(|s| !s.is_empty()))
}

fn non_empty(s: &str) -> Option<&str> {
    Some(s).filter(|s| !s.is_empty())
}

fn record_workspace(event: &Event, verb: &str, payload: &Value) -> Result<(), Error> {
    let Some(id) = first_str(payload, &["/workspace/id", "/id"]).or(non_empty(event.workspace_id())) else {
        log::debug(format!("{}: no workspace id", event.event_type()));
        return Ok(());
    };
    let old_slug = kv::get(&workspace_slug_key(id)).and_then(|bytes| String::from_utf8(bytes).ok());
    match verb {
        "created" | "updated" => {
            let Some(slug) = first_str(payload, &["/workspace/slug", "/slug"]) else { return Ok(()) };
            if let Some(old) = old_slug.filter(|old| old != slug) {
                forget_slug(&old, id);
            }
            kv::set(&slug_key(slug), id.as_bytes())?;
            kv::set(&workspace_slug_key(id), slug.as_bytes())
        }
        "deleted" => {
            if let Some(old) = old_slug {
                forget_slug(&old, id);
            }
            kv::delete(&workspace_slug_key(id));
            Ok(())
        }
        _ => Ok(()),
    }
}

/// Removes `slug` unless it now names another workspace.
fn forget_slug(slug: &str, workspace: &str) {
    if kv::get(&slug_key(slug)).as_deref() == Some(workspace.as_bytes()) {
        kv::delete(&slug_key(slug));
    }
}

fn record_member(event: &Event, verb: &str, payload: &Value) -> Result<(), Error> {
    let user = first_str(payload, &["/member/user_id", "/user_id"]);
    let workspace = non_empty(event.workspace_id()).or(first_str(payload, &["/member/workspace_id"]));
    let (Some(user), Some(workspace)) = (user, workspace) else {
        log::debug(format!("{}: no user or workspace", event.event_type()));
        return Ok(());
    };
    match verb {
        "added" | "updated" => kv::set(&member_key(workspace, user), b"1"),
        "removed" => {
            kv::delete(&member_key(workspace, user));
            Ok(())
        }
        _ => Ok(()),
    }
}

/// A session's creator comes from `session_created|updated` when they name it; otherwise the
/// first member to act in a session not seen before is its creator (only the creator writes).
fn record_chat(event: &Event, verb: &str, payload: &Value) -> Result<(), Error> {
    let id = event.chat_session_id().and_then(non_empty).or(first_str(payload, &["/chat_session_id", "/chat_session/id"]));
    let Some(id) = id else {
        log::debug(format!("{}: no chat session id", event.event_type()));
        return Ok(());
    };
    if verb == "session_deleted" {
        kv::delete(&chat_key(id));
        return Ok(());
    }
    let Some(workspace) = non_empty(event.workspace_id()).or(first_str(payload, &["/chat_session/workspace_id"])) else { return Ok(()) };
    let named = match verb {
        "session_created" | "session_updated" => first_str(payload, &["/chat_session/creator_id", "/creator_id"]),
        _ => None,
    };
    let known: Option<ChatRecord> = kv::get_json(&chat_key(id)).unwrap_or(None);
    let creator = match named {
        Some(creator) => creator,
        None if known.is_none() && event.actor_type() == "member" && !event.actor_id().is_empty() => event.actor_id(),
        None => return Ok(()),
    };
    let chat = ChatRecord { workspace: workspace.to_string(), creator: creator.to_string() };
    if known.as_ref() == Some(&chat) { Ok(()) } else { kv::set_json(&chat_key(id), &chat) }
}

/// Merges what this event says about its task into the record (written only when it changes:
/// `task:message` and `task:progress` are frequent).
fn record_task(event: &Event, payload: &Value) -> Result<(), Error> {
    let id = event.task_id().and_then(non_empty).or(first_str(payload, &["/task_id", "/task/id"]));
    let Some(id) = id else {
        log::debug(format!("{}: no task id", event.event_type()));
        return Ok(());
    };
    let known: Option<TaskRecord> = kv::get_json(&task_key(id)).unwrap_or(None);
    let mut task = known.clone().unwrap_or_default();
    if let Some(workspace) = non_empty(event.workspace_id()) {
        task.workspace = workspace.to_string();
    }
    let chat = first_str(payload, &["/chat_session_id", "/task/chat_session_id"]).or(event.chat_session_id().and_then(non_empty));
    if let Some(chat) = chat {
        task.chat = Some(chat.to_string());
    }
    task.issue |= first_str(payload, &["/issue_id", "/task/issue_id"]).is_some();
    if task.workspace.is_empty() || known.as_ref() == Some(&task) { Ok(()) } else { kv::set_json(&task_key(id), &task) }
}

fn record_token(verb: &str, payload: &Value) -> Result<(), Error> {
    let hash = first_str(payload, &["/token_hash"]).map(str::to_ascii_lowercase);
    let Some(hash) = hash.filter(|h| h.len() == 64 && h.bytes().all(|b| b.is_ascii_hexdigit())) else {
        log::debug(format!("personal_access_token:{verb}: no sha256 token_hash"));
        return Ok(());
    };
    match (verb, first_str(payload, &["/user_id"])) {
        ("created", Some(user)) => {
            let expires_at = payload.pointer("/expires_at").and_then(Value::as_u64);
            kv::set_json(&token_key(&hash), &TokenRecord { user: user.to_string(), expires_at })
        }
        ("revoked", _) => {
            kv::delete(&token_key(&hash));
            Ok(())
        }
        _ => Ok(()),
    }
}

impl Authenticator for OriginalPolicy {
    fn authenticate(request: ConnectRequest) -> Authentication {
        connect(&request).into()
    }
}

/// The original's `HandleWebSocket`: the workspace, then the credentials, then membership. The
/// credentials are the `auth` frame when the call carries one (asked for, or a refresh), else the
/// cookie or bearer header; with neither, ask for the frame. A bad cookie is refused: it does not
/// fall back to the frame.
fn connect(request: &ConnectRequest) -> Result<Authentication, Refusal> {
    let workspace = requested_workspace(request)?;
    let now = now();
    let (user, expires_at) = if request.auth_frame.is_some() {
        frame_identity(request, now)?
    } else if let Some(token) = session_token(request) {
        jwt_identity(token, now)?
    } else {
        return Ok(Authentication::NeedAuthFrame);
    };
    if kv::get(&member_key(&workspace, &user)).is_none() {
        return Err(Refusal::new(RefusalKind::Forbidden, "not a member of this workspace"));
    }
    Ok(Authentication::identified(user, workspace, expires_at))
}

/// Query `workspace_id`, else `workspace_slug` as recorded from `workspace:*` events.
fn requested_workspace(request: &ConnectRequest) -> Result<String, Refusal> {
    let not_found = || Refusal::new(RefusalKind::NotFound, "workspace not found");
    if let Some(id) = request.query("workspace_id").filter(|id| !id.is_empty()) {
        // An id with a colon would make `member:<workspace>:<user>` ambiguous: none has one.
        return if id.len() <= 128 && !id.contains(':') { Ok(id.to_string()) } else { Err(not_found()) };
    }
    match request.query("workspace_slug").filter(|slug| !slug.is_empty()) {
        Some(slug) => kv::get(&slug_key(slug)).and_then(|id| String::from_utf8(id).ok()).ok_or_else(not_found),
        None => Err(Refusal::new(RefusalKind::BadRequest, "workspace_id or workspace_slug required")),
    }
}

/// The session cookie (config `cookie`), else an `authorization: Bearer` header.
fn session_token(request: &ConnectRequest) -> Option<&str> {
    let cookie = config::get("cookie").unwrap_or_else(|| "multica_auth".to_string());
    let bearer = || {
        let (scheme, token) = request.header("authorization")?.split_once(' ')?;
        scheme.eq_ignore_ascii_case("bearer").then_some(token)
    };
    request.cookie(&cookie).or_else(bearer).map(str::trim)
}

/// The `auth` frame's `{"token": ...}`: a personal access token (`mul_...`) or a JWT.
fn frame_identity(request: &ConnectRequest, now: u64) -> Result<(String, u64), Refusal> {
    let frame: Option<Value> = request.auth_frame_json().unwrap_or(None);
    let token = frame.as_ref().and_then(|frame| frame["token"].as_str());
    match token {
        Some(token) if token.starts_with("mul_") => access_token_identity(token, now),
        Some(token) => jwt_identity(token, now),
        None => Err(Refusal::new(RefusalKind::BadRequest, "expected auth message as first frame")),
    }
}

fn jwt_identity(token: &str, now: u64) -> Result<(String, u64), Refusal> {
    let Some(secret) = config::get("jwt-secret").filter(|s| !s.is_empty()) else {
        log::error("config `jwt-secret` is not set: every JWT is refused");
        return Err(Refusal::new(RefusalKind::InvalidToken, "invalid token"));
    };
    let claims = jwt::verify(token, secret.as_bytes(), now)?;
    Ok((claims.sub, claims.exp.unwrap_or(now + session_seconds())))
}

fn access_token_identity(token: &str, now: u64) -> Result<(String, u64), Refusal> {
    let record: Option<TokenRecord> = kv::get_json(&token_key(&sha256_hex(token))).unwrap_or(None);
    let Some(record) = record else { return Err(Refusal::new(RefusalKind::InvalidToken, "invalid token")) };
    match record.expires_at {
        Some(at) if at <= now => Err(Refusal::new(RefusalKind::Expired, "token expired")),
        at => Ok((record.user, at.unwrap_or(now + session_seconds()))),
    }
}

/// Lower-case hex SHA-256, as the `personal_access_token:*` events name a token.
fn sha256_hex(token: &str) -> String {
    Sha256::digest(token.as_bytes()).iter().map(|b| format!("{b:02x}")).collect()
}

impl Authorizer for OriginalPolicy {
    /// The original's `ScopeAuthorizer`: only a room of the connection's workspace; a chat and a
    /// chat's task are the chat creator's; an issue's task is every member's; what is not
    /// recorded is no one's (yet: a denial is not cached by default).
    fn authorize(who: Identity, room: Room) -> Result<Decision, Error> {
        let allowed = room.workspace_id == who.workspace_id
            && match room.kind {
                ScopeKind::Chat => chat_creator_is(&who, &room.id)?,
                ScopeKind::Task => may_follow_task(&who, &room.id)?,
                ScopeKind::Workspace | ScopeKind::User => false,
            };
        Ok(if allowed {
            Decision::allow(config_number("allow-cache-ms", 30_000))
        } else {
            Decision::deny(config_number("deny-cache-ms", 0))
        })
    }
}

fn chat_creator_is(who: &Identity, chat: &str) -> Result<bool, Error> {
    let chat: Option<ChatRecord> = kv::get_json(&chat_key(chat))?;
    Ok(chat.is_some_and(|chat| chat.workspace == who.workspace_id && chat.creator == who.user_id))
}

/// A task of a chat is the chat's even if it also names an issue: the stricter rule wins.
fn may_follow_task(who: &Identity, task: &str) -> Result<bool, Error> {
    let task: Option<TaskRecord> = kv::get_json(&task_key(task))?;
    match task {
        Some(task) if task.workspace == who.workspace_id => match task.chat {
            Some(chat) => chat_creator_is(who, &chat),
            None => Ok(task.issue),
        },
        _ => Ok(false),
    }
}

fn session_seconds() -> u64 {
    config_number("session-seconds", 86_400)
}

fn config_number<T: std::str::FromStr>(key: &str, default: T) -> T {
    config::get(key).and_then(|v| v.trim().parse().ok()).unwrap_or(default)
}

fn now() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs())
}

export_policy!(OriginalPolicy);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_name_what_they_hold() {
        assert_eq!(member_key("w1", "u1"), "member:w1:u1");
        assert_eq!(slug_key("acme"), "slug:acme");
        assert_eq!(workspace_slug_key("w1"), "ws-slug:w1");
        assert_eq!((chat_key("c1"), task_key("t1"), token_key("ab")), ("chat:c1".into(), "task:t1".into(), "pat:ab".into()));
    }

    #[test]
    fn a_token_is_known_by_its_sha256() {
        assert_eq!(sha256_hex("abc"), "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad");
    }

    #[test]
    fn records_stay_small() {
        let task = TaskRecord { workspace: "w1".into(), chat: None, issue: true };
        assert_eq!(busbar_plugin_sdk::serde_json::to_string(&task).unwrap(), r#"{"workspace":"w1","issue":true}"#);
        let parsed: TaskRecord = busbar_plugin_sdk::serde_json::from_str(r#"{"workspace":"w1","chat":"c1"}"#).unwrap();
        assert_eq!(parsed, TaskRecord { workspace: "w1".into(), chat: Some("c1".into()), issue: false });
    }

    #[test]
    fn payload_fields_are_found_where_producers_put_them() {
        let payload: Value = busbar_plugin_sdk::serde_json::from_str(r#"{"member":{"user_id":""},"user_id":"u2"}"#).unwrap();
        assert_eq!(first_str(&payload, &["/member/user_id", "/user_id"]), Some("u2"));
        assert_eq!(first_str(&payload, &["/nothing"]), None);
    }
}
