//! One WebSocket connection's protocol: authentication, then frames in and out.
//!
//! This module owns the session loop. It is generic over the socket (`Stream` + `Sink` of
//! axum WebSocket messages), so the protocol can be driven by a real socket or by channels. The
//! reader handles `auth` (the first authenticates; a later one is verified like the first and,
//! for the same user and workspace, extends the connection's life: a token refresh),
//! `subscribe`, `unsubscribe` and `ping` frames; the writer drains the connection's outbox and
//! sends server pings (`writer`). Every error frame carries a `type`. The session never touches
//! rooms directly: it asks the `Hub`.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use axum::extract::ws::{CloseFrame, Message};
use futures_util::stream::{SplitSink, SplitStream};
use futures_util::{Sink, SinkExt, Stream, StreamExt};
use serde_json::Value;
use tokio_tungstenite::tungstenite;

use super::protocol::{Control, Inbound};
use super::sendq::SendQueue;
use super::connect::ConnectRequest;
use super::{AuthError, Close, Conn, Hub, Identity, Position, SubscribeError};
use crate::action::{Scope, ScopeKind};

/// How a connection arrives: already authenticated (a header at upgrade, or the authenticator
/// identified it from what the upgrade carried), expected to send an `auth` frame for
/// `workspace_id` (busbar's own token check), or expected to send one for the authenticator.
/// `since` holds positions to resume its own workspace and user rooms from (from the `auth`
/// frame, or the upgrade's query string). `request` is what the authenticator saw, kept so that
/// a later `auth` frame (a token refresh) goes to it again.
pub enum Auth {
    Identified { identity: Identity, since: HashMap<ScopeKind, Position>, request: Option<ConnectRequest> },
    Pending { workspace_id: String },
    AwaitFrame { request: ConnectRequest },
}

/// Serves one connection until it closes (the client leaves, the hub evicts it, or the hub
/// shuts down).
/// `fd` is the socket's descriptor, when the session runs on a real socket: it lets the writer
/// see how long written frames wait in the kernel (see `sendq`).
pub async fn serve<S>(hub: Arc<Hub>, socket: S, auth: Auth, fd: Option<i32>)
where
    S: Stream<Item = Result<Message, axum::Error>> + Sink<Message, Error = axum::Error> + Send + 'static,
{
    // What happens before the connection is registered is boxed and freed: the future held for
    // the connection's life is this one's last state, not the union of every state it passed.
    let Some((conn, sink, stream, request)) = Box::pin(open(&hub, socket, auth)).await else { return };
    let writer = tokio::spawn(write_loop(hub.clone(), conn.clone(), sink, fd.and_then(SendQueue::new)));
    connected(hub, conn, stream, request, writer).await;
}

/// The connection's halves, authenticated, registered and in its own rooms; `None` once it was
/// refused (and told so).
async fn open<S>(hub: &Arc<Hub>, socket: S, auth: Auth) -> Option<(Arc<Conn>, SplitSink<S, Message>, SplitStream<S>, Option<ConnectRequest>)>
where
    S: Stream<Item = Result<Message, axum::Error>> + Sink<Message, Error = axum::Error> + Send + 'static,
{
    let (mut sink, mut stream) = socket.split();
    let (identity, since, request) = match auth {
        Auth::Identified { identity, since, request } => (Some(identity), since, request),
        Auth::Pending { workspace_id } => authenticated(hub, &mut sink, &mut stream, First::Token { workspace_id }).await,
        Auth::AwaitFrame { request } => authenticated(hub, &mut sink, &mut stream, First::Authenticator { request }).await,
    };
    let identity = identity?;
    let conn = match hub.register(identity) {
        Ok(conn) => conn,
        Err(close) => {
            let _ = sink.send(text(error_frame("too_many_connections", close.reason))).await;
            let _ = sink.send(close_message(close)).await;
            linger(&mut stream).await;
            return None;
        }
    };
    conn.send_control(Control::AuthAck.to_text());
    hub.join_own_rooms(&conn, &since).await;
    tracing::debug!(conn = conn.id, user = %conn.identity.user_id, workspace = %conn.identity.workspace_id, "connected");
    Some((conn, sink, stream, request))
}

/// A registered connection's life: reads until it closes, then waits for the writer and
/// lingers.
async fn connected<R>(hub: Arc<Hub>, conn: Arc<Conn>, mut stream: R, request: Option<ConnectRequest>, writer: tokio::task::JoinHandle<()>)
where
    R: Stream<Item = Result<Message, axum::Error>> + Unpin,
{
    let close = read_loop(&hub, &conn, &mut stream, request.as_ref()).await;
    hub.disconnect(&conn, close);
    let _ = writer.await;
    linger(&mut stream).await;
    tracing::debug!(conn = conn.id, code = close.code, "disconnected");
}

/// After the close frame is sent, reads (and discards) what the client still sends for up to a
/// second, so that unread bytes (the rest of an oversized message) do not turn the close into a
/// connection reset that loses the close frame.
async fn linger<R>(stream: &mut R)
where
    R: Stream<Item = Result<Message, axum::Error>> + Unpin,
{
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(1);
    while let Ok(Some(Ok(message))) = tokio::time::timeout_at(deadline, stream.next()).await {
        if matches!(message, Message::Close(_)) {
            break;
        }
    }
}

/// Who checks a connection's first `auth` frame.
enum First {
    /// busbar's own token check, for this workspace.
    Token { workspace_id: String },
    /// The authenticator, given what the upgrade carried and the frame.
    Authenticator { request: ConnectRequest },
}

/// The identity the first `auth` frame proves, with the positions to resume from and what the
/// authenticator saw; `None` (the refusal sent, the socket closed) when it proves nothing.
async fn authenticated<W, R>(
    hub: &Hub,
    sink: &mut W,
    stream: &mut R,
    first: First,
) -> (Option<Identity>, HashMap<ScopeKind, Position>, Option<ConnectRequest>)
where
    W: Sink<Message, Error = axum::Error> + Unpin,
    R: Stream<Item = Result<Message, axum::Error>> + Unpin,
{
    match authenticate(hub, stream, first).await {
        Ok((identity, since, request)) => (Some(identity), since, request),
        Err((close, code, message)) => {
            hub.metrics().auth_failure(code);
            let _ = sink.send(text(error_frame(code, &message))).await;
            let _ = sink.send(close_message(close)).await;
            linger(stream).await;
            (None, HashMap::new(), None)
        }
    }
}

type Refused = (Close, &'static str, String);

async fn authenticate<R>(
    hub: &Hub,
    stream: &mut R,
    first: First,
) -> Result<(Identity, HashMap<ScopeKind, Position>, Option<ConnectRequest>), Refused>
where
    R: Stream<Item = Result<Message, axum::Error>> + Unpin,
{
    let payload = first_auth_frame(hub, stream).await?;
    // Positions to resume the connection's own rooms from: {"workspace": {"epoch", "offset"}, ...}.
    let mut since = HashMap::new();
    for kind in [ScopeKind::Workspace, ScopeKind::User] {
        if let Some(position) = parse_position(&payload["since"][kind.as_str()]) {
            since.insert(kind, position);
        }
    }
    match first {
        First::Token { workspace_id } => {
            let token = payload["token"]
                .as_str()
                .ok_or_else(|| (Close::BAD_REQUEST, "bad_request", "auth frame without payload.token".to_string()))?;
            let identity = hub.verifier().identify(token, &workspace_id).map_err(|e| {
                let close = match e {
                    AuthError::Expired => Close::TOKEN_EXPIRED,
                    AuthError::Workspace(_) => Close::FORBIDDEN,
                    AuthError::Invalid(_) | AuthError::TooLarge => Close::INVALID_TOKEN,
                };
                (close, e.code(), e.to_string())
            })?;
            Ok((identity, since, None))
        }
        First::Authenticator { request } => {
            match hub.authenticate_frame(&request, &payload).await {
                Ok(identity) => Ok((identity, since, Some(request))),
                Err(refusal) => Err((refusal.kind.close(), refusal.kind.code(), refusal.message)),
            }
        }
    }
}

/// Waits for the connection's first frame, which must be `auth`, and returns its payload.
async fn first_auth_frame<R>(hub: &Hub, stream: &mut R) -> Result<Value, Refused>
where
    R: Stream<Item = Result<Message, axum::Error>> + Unpin,
{
    let deadline = tokio::time::Instant::now() + hub.config().auth_timeout;
    loop {
        let message = match tokio::time::timeout_at(deadline, stream.next()).await {
            Err(_) => return Err((Close::AUTH_TIMEOUT, "auth_timeout", "no auth frame in time".into())),
            Ok(None) => return Err((Close::NORMAL, "closed", "closed before authenticating".into())),
            Ok(Some(Err(e))) => {
                if is_too_big(&e) {
                    hub.metrics().inbound_too_large.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    return Err((Close::TOO_BIG, "message_too_big", "frame larger than the limit".into()));
                }
                return Err((Close::NORMAL, "read_error", e.to_string()));
            }
            Ok(Some(Ok(message))) => message,
        };
        if message_len(&message) > hub.config().max_inbound_bytes {
            hub.metrics().inbound_too_large.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            return Err((Close::TOO_BIG, "message_too_big", "frame larger than the limit".into()));
        }
        let body = match message {
            Message::Text(body) => body,
            Message::Ping(_) | Message::Pong(_) => continue,
            Message::Close(_) => return Err((Close::NORMAL, "closed", "closed before authenticating".into())),
            Message::Binary(_) => return Err((Close::BAD_REQUEST, "bad_request", "expected an auth frame first".into())),
        };
        let frame: Inbound = serde_json::from_str(&body)
            .map_err(|_| (Close::BAD_REQUEST, "bad_request", "expected an auth frame first".to_string()))?;
        if frame.kind != "auth" {
            return Err((Close::BAD_REQUEST, "bad_request", "expected an auth frame first".into()));
        }
        return Ok(frame.payload);
    }
}

async fn read_loop<R>(hub: &Hub, conn: &Arc<Conn>, stream: &mut R, request: Option<&ConnectRequest>) -> Close
where
    R: Stream<Item = Result<Message, axum::Error>> + Unpin,
{
    // A connection lives no longer than its token: at `exp` it is closed with 4501, unless the
    // client sent a fresh token in an `auth` frame before then. One that sends nothing for the
    // read timeout is closed with 4012. One timer serves both (it is held for the connection's
    // whole life: issue #18, idle memory), set to whichever comes first.
    let mut expiry = tokio::time::Instant::now() + until(conn.identity.claims.exp);
    let mut silent_until = tokio::time::Instant::now() + hub.config().read_timeout;
    let deadline = tokio::time::sleep_until(expiry.min(silent_until));
    tokio::pin!(deadline);
    loop {
        let next = tokio::select! {
            biased;
            _ = conn.gone.cancelled() => return conn.outbox().closed().unwrap_or(Close::NORMAL),
            () = &mut deadline => {
                return if tokio::time::Instant::now() >= expiry { Close::TOKEN_EXPIRED } else { Close::NO_PONG };
            }
            next = stream.next() => next,
        };
        silent_until = tokio::time::Instant::now() + hub.config().read_timeout;
        deadline.as_mut().reset(expiry.min(silent_until));
        let message = match next {
            None => return Close::NORMAL,
            Some(Err(e)) => {
                if is_too_big(&e) {
                    hub.metrics().inbound_too_large.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    return Close::TOO_BIG;
                }
                return Close::NORMAL;
            }
            Some(Ok(message)) => message,
        };
        if message_len(&message) > hub.config().max_inbound_bytes {
            hub.metrics().inbound_too_large.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            return Close::TOO_BIG;
        }
        match message {
            Message::Text(body) => {
                if let Some(exp) = Box::pin(handle(hub, conn, &body, request)).await {
                    expiry = tokio::time::Instant::now() + until(exp);
                    deadline.as_mut().reset(expiry.min(silent_until));
                }
            }
            Message::Close(_) => return Close::NORMAL,
            // Pings are answered by the WebSocket layer; any frame counts as liveness.
            Message::Ping(_) | Message::Pong(_) | Message::Binary(_) => {}
        }
    }
}

/// Longest a connection is kept open on one token, whatever its `exp` says.
const MAX_TOKEN_LIFE: Duration = Duration::from_secs(365 * 86_400);

/// How long until `exp` (seconds since the Unix epoch), without overflowing on any value.
fn until(exp: u64) -> Duration {
    let now = SystemTime::now().duration_since(UNIX_EPOCH).unwrap_or_default().as_secs();
    Duration::from_secs(exp.saturating_sub(now)).min(MAX_TOKEN_LIFE)
}

/// Handles one frame; returns the new expiry when it was a verified token refresh.
async fn handle(hub: &Hub, conn: &Arc<Conn>, body: &str, request: Option<&ConnectRequest>) -> Option<u64> {
    // Unknown types and invalid JSON are ignored, for forward compatibility.
    let Ok(frame) = serde_json::from_str::<Inbound>(body) else { return None };
    match frame.kind.as_str() {
        "ping" => {
            conn.send_control(Control::Pong.to_text());
        }
        "auth" => return refresh(hub, conn, &frame.payload, request).await,
        "subscribe" | "unsubscribe" => {
            let (raw_scope, raw_id) = (
                frame.payload["scope"].as_str().unwrap_or_default().to_string(),
                frame.payload["id"].as_str().unwrap_or_default().to_string(),
            );
            let since = &frame.payload["since"];
            // A task or chat belongs to a workspace: the connection's own, unless the frame names
            // another (which the hub then refuses).
            let workspace = frame.payload["workspace_id"].as_str().unwrap_or(&conn.identity.workspace_id);
            let result = match parse_scope(&raw_scope, workspace, &raw_id) {
                Err(e) => Err(e),
                Ok(_) if !since.is_null() && parse_position(since).is_none() => Err(SubscribeError::InvalidPayload),
                Ok(scope) if frame.kind == "subscribe" => hub.subscribe(conn, scope, parse_position(since)).await.map(Some),
                Ok(scope) => hub.unsubscribe(conn, &scope).map(|()| None),
            };
            let (scope, id) = (raw_scope.as_str(), raw_id.as_str());
            let reply = match result {
                // A subscribe's ack was sent by the hub, ahead of any replayed frame.
                Ok(Some(_)) => return None,
                Ok(None) => Control::UnsubscribeAck { scope, id },
                Err(e) if frame.kind == "subscribe" => Control::SubscribeError { scope, id, error: e.code() },
                Err(e) => Control::UnsubscribeError { scope, id, error: e.code() },
            };
            conn.send_control(reply.to_text());
        }
        _ => {}
    }
    None
}

/// A later `auth` frame: verified exactly like the first (by the authenticator when it
/// identified the connection, else by busbar's token check). A token for the same user and
/// workspace extends the connection's life to its expiry (`auth_ack` with `exp`); anything else
/// gets `auth_error` and changes nothing.
async fn refresh(hub: &Hub, conn: &Arc<Conn>, payload: &Value, request: Option<&ConnectRequest>) -> Option<u64> {
    let refused = |code: &str| {
        hub.metrics().auth_failure(if code == "invalid_token" { "refresh_invalid" } else { "refresh_refused" });
        conn.send_control(Control::AuthError { error: code }.to_text());
        None
    };
    let identity = match request {
        Some(request) => {
            match hub.authenticate_frame(request, payload).await {
                Ok(identity) => identity,
                Err(refusal) => return refused(refusal.kind.code()),
            }
        }
        None => {
            let Some(token) = payload["token"].as_str() else { return refused("bad_request") };
            match hub.verifier().identify(token, &conn.identity.workspace_id) {
                Ok(identity) => identity,
                Err(e) => return refused(e.code()),
            }
        }
    };
    if identity.user_id != conn.identity.user_id || identity.workspace_id != conn.identity.workspace_id {
        return refused("other_user");
    }
    let exp = identity.claims.exp;
    conn.send_control(Control::Refreshed { exp }.to_text());
    Some(exp)
}

/// `{"epoch": "...", "offset": N}`.
fn parse_position(value: &Value) -> Option<Position> {
    let epoch = value["epoch"].as_str()?;
    let offset = value["offset"].as_u64()?;
    (epoch.len() <= 128).then(|| Position { epoch: epoch.to_string(), offset })
}

fn parse_scope(kind: &str, workspace: &str, id: &str) -> Result<Scope, SubscribeError> {
    if kind.is_empty() || id.is_empty() {
        return Err(SubscribeError::InvalidPayload);
    }
    let kind: ScopeKind = kind.parse().map_err(|_| SubscribeError::UnknownScope)?;
    Ok(Scope::of(kind, workspace, id))
}

fn is_too_big(error: &axum::Error) -> bool {
    let mut source: Option<&(dyn std::error::Error + 'static)> = std::error::Error::source(error);
    while let Some(e) = source {
        if let Some(tungstenite::Error::Capacity(_)) = e.downcast_ref::<tungstenite::Error>() {
            return true;
        }
        source = e.source();
    }
    false
}

fn message_len(message: &Message) -> usize {
    match message {
        Message::Text(t) => t.len(),
        Message::Binary(b) => b.len(),
        _ => 0,
    }
}

fn text(frame: String) -> Message {
    Message::Text(frame.into())
}

fn error_frame(code: &str, message: &str) -> String {
    Control::Error { code, message }.to_text()
}

fn close_message(close: Close) -> Message {
    Message::Close(Some(CloseFrame { code: close.code, reason: close.reason.into() }))
}

#[cfg(test)]
mod tests;
mod writer;

use writer::write_loop;
