//! `GET /ws`: checks before the upgrade (workspace, origin, no token in the URL, an
//! `Authorization` header if present), then hands the socket to the hub's session.
//!
//! With the development secret, anyone can mint a token, so the endpoint is as strict as the
//! admin routes without a token: direct loopback callers only (no forwarding headers), and a
//! `Host` that is a loopback name, so a web page that rebinds its own name to 127.0.0.1 cannot
//! connect even though its `Origin` matches the `Host` it chose.

use std::collections::HashMap;
use std::net::SocketAddr;

use axum::extract::ws::rejection::WebSocketUpgradeRejection;
use axum::Extension;
use axum::extract::{ConnectInfo, Query, State, WebSocketUpgrade};
use axum::http::{HeaderMap, header};
use axum::response::{IntoResponse, Response};

use super::error::ApiError;
use super::serve::{Admitted, SocketFd};
use super::{AppState, access};
use crate::action::ScopeKind;
use crate::hub::{AuthError, Authenticated, ConnectRequest, Position};
use crate::hub::session::{self, Auth};

/// Query parameters that would carry a token, which must never be in a URL (they end up in
/// proxy and server logs).
const TOKEN_PARAMS: [&str; 4] = ["token", "access_token", "jwt", "auth"];

pub(super) async fn upgrade(
    State(state): State<AppState>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    place: Option<Extension<Admitted>>,
    fd: Option<Extension<SocketFd>>,
    Query(params): Query<HashMap<String, String>>,
    headers: HeaderMap,
    ws: Result<WebSocketUpgrade, WebSocketUpgradeRejection>,
) -> Result<Response, ApiError> {
    if state.dev_secret {
        let forwarded = access::FORWARDING_HEADERS.iter().any(|h| headers.contains_key(*h));
        if !peer.ip().is_loopback() || forwarded || !access::host_is_loopback(&headers) {
            state.hub.metrics().auth_failure("dev_secret_remote");
            return Err(ApiError::Forbidden(
                "this server uses the public development secret: loopback clients only, by a loopback host name; set BUSBAR_JWT_SECRET".into(),
            ));
        }
    }
    if TOKEN_PARAMS.iter().any(|p| params.contains_key(*p)) {
        state.hub.metrics().auth_failure("token_in_url");
        return Err(ApiError::BadRequest(
            "tokens in the URL are refused: send an `auth` frame or an Authorization header".into(),
        ));
    }
    if !origin_allowed(&headers, &state.allowed_origins) {
        state.hub.metrics().auth_failure("origin");
        return Err(ApiError::Forbidden("origin not allowed".into()));
    }
    let auth = match authenticated(&state, &headers, &params).await? {
        Some(auth) => auth,
        None => token_auth(&state, &headers, &params)?,
    };
    let ws = ws.map_err(|e| ApiError::BadRequest(e.body_text()))?;
    // The socket layer stops reading at twice the limit (a hard memory bound); the session
    // enforces the limit itself, after reading the whole message, so that the close frame
    // (1009) reaches the client instead of a connection reset.
    let limit = state.hub.config().max_inbound_bytes * 2;
    let hub = state.hub.clone();
    // The read buffer is allocated (and zeroed: resident) for the connection's whole life, and
    // clients send little (an `auth` frame with its token is under 1 KiB; a bigger message
    // grows it): 1 KiB, not tungstenite's 128 KiB or the 4 KiB this had (issue #18: idle memory).
    Ok(ws
        .read_buffer_size(1 << 10)
        .max_message_size(limit)
        .max_frame_size(limit)
        .on_upgrade(move |socket| {
            let fd = fd.map(|Extension(SocketFd(fd))| fd);
            let session = hub.clone().track_session(session::serve(hub, socket, auth, fd));
            // The connection keeps its place under the connection caps while the session lives.
            async move {
                let _place = place;
                session.await
            }
        })
        .into_response())
}

/// What the authenticator (when one decides) says about the upgrade: an identity, a wait for the
/// `auth` frame, or a refusal with its own status. `None` when busbar's token check applies.
async fn authenticated(state: &AppState, headers: &HeaderMap, params: &HashMap<String, String>) -> Result<Option<Auth>, ApiError> {
    let request = ConnectRequest {
        headers: headers.iter().filter_map(|(name, value)| Some((name.as_str().to_string(), value.to_str().ok()?.to_string()))).collect(),
        query: params.iter().map(|(k, v)| (k.clone(), v.clone())).collect(),
        auth_frame: None,
    };
    let Some(answer) = state.hub.authenticate(&request).await else { return Ok(None) };
    match answer {
        Ok(Authenticated::Identified(identity)) => Ok(Some(Auth::Identified { identity, since: since_from_query(params), request: Some(request) })),
        Ok(Authenticated::NeedAuthFrame) => Ok(Some(Auth::AwaitFrame { request })),
        Err(refusal) => {
            state.hub.metrics().auth_failure(refusal.kind.code());
            Err(ApiError::Refused { status: refusal.kind.status(), code: refusal.kind.code(), message: refusal.message })
        }
    }
}

/// busbar's own token check: `workspace_id` in the query, and a token in the `Authorization`
/// header (checked now) or in the first `auth` frame (checked by the session).
fn token_auth(state: &AppState, headers: &HeaderMap, params: &HashMap<String, String>) -> Result<Auth, ApiError> {
    let workspace_id = params
        .get("workspace_id")
        .filter(|w| !w.is_empty())
        .cloned()
        .ok_or_else(|| ApiError::BadRequest("query parameter `workspace_id` is required".into()))?;
    let Some(value) = headers.get(header::AUTHORIZATION).and_then(|v| v.to_str().ok()) else {
        return Ok(Auth::Pending { workspace_id });
    };
    let token = value.strip_prefix("Bearer ").ok_or(ApiError::Unauthorized)?;
    match state.hub.verifier().identify(token, &workspace_id) {
        Ok(identity) => Ok(Auth::Identified { identity, since: since_from_query(params), request: None }),
        Err(e) => {
            state.hub.metrics().auth_failure(e.code());
            Err(match e {
                AuthError::Workspace(_) => ApiError::Forbidden(e.to_string()),
                _ => ApiError::Unauthorized,
            })
        }
    }
}

/// `since_workspace=EPOCH:OFFSET` and `since_user=EPOCH:OFFSET`: where a header-authenticated
/// connection resumes its own rooms from (positions are not secrets).
fn since_from_query(params: &HashMap<String, String>) -> HashMap<ScopeKind, Position> {
    let mut since = HashMap::new();
    for (kind, key) in [(ScopeKind::Workspace, "since_workspace"), (ScopeKind::User, "since_user")] {
        if let Some((epoch, offset)) = params.get(key).and_then(|v| v.rsplit_once(':'))
            && let Ok(offset) = offset.parse()
        {
            since.insert(kind, Position { epoch: epoch.to_string(), offset });
        }
    }
    since
}

/// No `Origin` (native clients) and same-origin requests are allowed; anything else must be on
/// the allow-list.
fn origin_allowed(headers: &HeaderMap, allowed: &[String]) -> bool {
    let Some(origin) = headers.get(header::ORIGIN).and_then(|v| v.to_str().ok()) else { return true };
    if allowed.iter().any(|a| a == "*" || a.eq_ignore_ascii_case(origin)) {
        return true;
    }
    let host = headers.get(header::HOST).and_then(|v| v.to_str().ok()).unwrap_or_default();
    let origin_host = origin.split_once("://").map_or(origin, |(_, rest)| rest);
    !host.is_empty() && origin_host.eq_ignore_ascii_case(host)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(origin: Option<&str>, host: &str) -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert(header::HOST, host.parse().unwrap());
        if let Some(o) = origin {
            h.insert(header::ORIGIN, o.parse().unwrap());
        }
        h
    }

    #[test]
    fn origins() {
        let allowed = vec!["https://app.example.com".to_string()];
        assert!(origin_allowed(&headers(None, "busbar:8080"), &allowed));
        assert!(origin_allowed(&headers(Some("https://app.example.com"), "busbar:8080"), &allowed));
        assert!(origin_allowed(&headers(Some("https://APP.example.com"), "busbar:8080"), &allowed));
        assert!(origin_allowed(&headers(Some("http://busbar:8080"), "busbar:8080"), &allowed));
        assert!(!origin_allowed(&headers(Some("https://evil.example.com"), "busbar:8080"), &allowed));
        assert!(!origin_allowed(&headers(Some("https://app.example.com.evil"), "busbar:8080"), &allowed));
        assert!(!origin_allowed(&headers(Some("null"), "busbar:8080"), &[]));
    }
}
