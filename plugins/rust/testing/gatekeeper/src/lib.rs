//! A policy test plugin for busbar's own tests: the authenticator and the authorizer, and no
//! listener (it subscribes to nothing). Every behaviour is asked for by the request itself, so a
//! test can reach each of busbar's outcomes through a real component.
//!
//! `authenticate`, by the upgrade's query `mode`: `trap` panics, `spin` never returns, `refuse`
//! refuses (forbidden), `frame` asks for the `auth` frame and then wants its `token` to be the
//! config's `frame-token` (a frame token `trap` panics); otherwise (and after a good frame) the connection is query `user` in
//! query `workspace` (both required) for `ttl-seconds`.
//!
//! `authorize`, by the room id's prefix: `trap` panics, `spin` never returns, `undecided` cannot
//! decide, `huge` cannot decide with a 1 MiB error; any other room gets the config's `verdict`
//! (`allow` or `deny`) with `cache-ms`. Every call first stores the room id under kv
//! `last-room`.

use busbar_plugin_sdk::serde_json::Value;
use busbar_plugin_sdk::{
    Action, Authentication, Authenticator, Authorizer, ConnectRequest, Decision, Error, Event, Identity, Plugin, Refusal,
    RefusalKind, Room, config, export_policy, kv,
};
use std::time::{SystemTime, UNIX_EPOCH};

struct Gatekeeper;

impl Plugin for Gatekeeper {
    fn subscriptions() -> Vec<String> {
        vec![]
    }

    fn handle(_event: &Event) -> Result<Vec<Action>, Error> {
        Ok(vec![])
    }
}

impl Authenticator for Gatekeeper {
    fn authenticate(request: ConnectRequest) -> Authentication {
        match request.query("mode") {
            Some("trap") => panic!("gatekeeper asked to trap"),
            Some("spin") => loop {
                std::hint::black_box(());
            },
            Some("refuse") => Authentication::refused(RefusalKind::Forbidden, "refused by gatekeeper"),
            Some("frame") if request.auth_frame.is_none() => Authentication::NeedAuthFrame,
            Some("frame") if frame_token(&request).as_deref() == Some("trap") => panic!("gatekeeper asked to trap on the auth frame"),
            Some("frame") if frame_token(&request).as_deref() != Some(&expected_frame_token()) => {
                Authentication::refused(RefusalKind::InvalidToken, "bad frame token")
            }
            _ => identify(&request).into(),
        }
    }
}

impl Authorizer for Gatekeeper {
    fn authorize(_who: Identity, room: Room) -> Result<Decision, Error> {
        kv::set("last-room", room.id.as_bytes())?;
        let id = room.id.as_str();
        if id.starts_with("trap") {
            panic!("gatekeeper asked to trap in authorize");
        }
        if id.starts_with("spin") {
            loop {
                std::hint::black_box(());
            }
        }
        if id.starts_with("undecided") {
            return Err(Error::new("cannot decide"));
        }
        if id.starts_with("huge") {
            return Err(Error::new("x".repeat(1 << 20)));
        }
        let cache_ms = config::get("cache-ms").and_then(|v| v.parse().ok()).unwrap_or(0);
        Ok(match config::get("verdict").as_deref() {
            Some("deny") => Decision::deny(cache_ms),
            _ => Decision::allow(cache_ms),
        })
    }
}

export_policy!(Gatekeeper);

/// Query `user` in query `workspace`, for `ttl-seconds` from now.
fn identify(request: &ConnectRequest) -> Result<Authentication, Refusal> {
    let required = |name: &str| {
        request.query(name).filter(|v| !v.is_empty()).ok_or_else(|| Refusal::new(RefusalKind::BadRequest, format!("query `{name}` required")))
    };
    let (user, workspace) = (required("user")?, required("workspace")?);
    let ttl: u64 = config::get("ttl-seconds").and_then(|v| v.parse().ok()).unwrap_or(3600);
    let now = SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs());
    Ok(Authentication::identified(user, workspace, now + ttl))
}

/// The `token` of the `auth` frame, if it is a JSON object with a string `token`.
fn frame_token(request: &ConnectRequest) -> Option<String> {
    let frame: Value = request.auth_frame_json().ok()??;
    frame["token"].as_str().map(str::to_string)
}

fn expected_frame_token() -> String {
    config::get("frame-token").unwrap_or_else(|| "letmein".to_string())
}
