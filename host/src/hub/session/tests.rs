//! The session's timers, driven through channels on tokio's paused clock: what a client sees
//! (frames, pings, the close code) and when, to the virtual second, with no real waiting.

use std::pin::Pin;
use std::task::{Context, Poll};

use axum::extract::ws::{CloseFrame, Message};
use futures_util::{Sink, Stream};
use serde_json::{Value, json};
use tokio::sync::mpsc;
use tokio::time::Instant;

use super::*;
use crate::hub::HubConfig;
use crate::hub::auth::{Claims, ClaimsAuthorizer, TokenVerifier, mint};

const SECRET: &[u8] = b"session-test";

/// A client's end of an in-memory WebSocket: the session reads what `send` puts in and writes
/// to what `next` takes out.
struct Client {
    to_server: mpsc::UnboundedSender<Result<Message, axum::Error>>,
    from_server: mpsc::UnboundedReceiver<Message>,
    started: Instant,
}

/// The session's end.
struct Socket {
    inbound: mpsc::UnboundedReceiver<Result<Message, axum::Error>>,
    outbound: mpsc::UnboundedSender<Message>,
}

impl Stream for Socket {
    type Item = Result<Message, axum::Error>;
    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        self.inbound.poll_recv(cx)
    }
}

impl Sink<Message> for Socket {
    type Error = axum::Error;
    fn poll_ready(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<Result<(), axum::Error>> {
        Poll::Ready(Ok(()))
    }
    fn start_send(self: Pin<&mut Self>, message: Message) -> Result<(), axum::Error> {
        self.outbound.send(message).map_err(axum::Error::new)
    }
    fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<Result<(), axum::Error>> {
        Poll::Ready(Ok(()))
    }
    fn poll_close(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<Result<(), axum::Error>> {
        Poll::Ready(Ok(()))
    }
}

/// What the client receives, in a form that compares well.
#[derive(Debug, PartialEq)]
enum Seen {
    Frame(Value),
    Ping,
    Close(u16),
}

impl Client {
    fn send(&self, frame: Value) {
        self.to_server.send(Ok(Message::Text(frame.to_string().into()))).expect("the session reads");
    }

    /// The next thing the server sends (pongs the client's layer would send are not modelled),
    /// and the virtual seconds since the connection opened.
    async fn next(&mut self) -> (Seen, u64) {
        let message = self.from_server.recv().await.expect("the session sends a close before it ends");
        let seen = match message {
            Message::Text(text) => Seen::Frame(serde_json::from_str(&text).expect("frames are JSON")),
            Message::Ping(_) => Seen::Ping,
            Message::Close(Some(CloseFrame { code, .. })) => Seen::Close(code),
            other => panic!("unexpected message {other:?}"),
        };
        (seen, self.started.elapsed().as_secs())
    }

    /// Everything until the close, with the virtual second each arrived at.
    async fn until_close(&mut self) -> Vec<(Seen, u64)> {
        let mut seen = Vec::new();
        loop {
            let next = self.next().await;
            let closed = matches!(next.0, Seen::Close(_));
            seen.push(next);
            if closed {
                return seen;
            }
        }
    }
}

fn config() -> HubConfig {
    HubConfig { auth_timeout: Duration::from_secs(10), ping_interval: Duration::from_secs(25), read_timeout: Duration::from_secs(60), ..HubConfig::default() }
}

fn hub() -> Arc<Hub> {
    Arc::new(Hub::new(config(), TokenVerifier::new(SECRET), Arc::new(ClaimsAuthorizer)))
}

/// A token for `carol` in ws-1, valid for `seconds` of wall-clock time.
fn token(seconds: u64) -> String {
    let now = SystemTime::now().duration_since(UNIX_EPOCH).expect("after 1970").as_secs();
    let claims = Claims { sub: "carol".into(), exp: now + seconds, workspaces: vec!["ws-1".into()], grants: Default::default() };
    mint(SECRET, &claims)
}

/// Opens a session on `hub`; with a token, already authenticated as if by the upgrade's header.
fn open(hub: &Arc<Hub>, token: Option<&str>) -> Client {
    let (to_server, inbound) = mpsc::unbounded_channel();
    let (outbound, from_server) = mpsc::unbounded_channel();
    let auth = match token {
        Some(token) => Auth::Identified { identity: hub.verifier().identify(token, "ws-1").expect("a good token"), since: HashMap::new(), request: None },
        None => Auth::Pending { workspace_id: "ws-1".into() },
    };
    tokio::spawn(serve(hub.clone(), Socket { inbound, outbound }, auth, None));
    Client { to_server, from_server, started: Instant::now() }
}

fn auth_ack() -> Seen {
    Seen::Frame(json!({"type": "auth_ack"}))
}

#[tokio::test(start_paused = true)]
async fn a_connection_that_never_authenticates_is_closed_at_the_auth_timeout() {
    let hub = hub();
    let mut client = open(&hub, None);
    let error = json!({"type": "error", "payload": {"code": "auth_timeout", "message": "no auth frame in time"}});
    assert_eq!(client.until_close().await, vec![(Seen::Frame(error), 10), (Seen::Close(4408), 10)]);
    assert_eq!(hub.metrics().snapshot(Default::default()).auth_failures_total.get("auth_timeout"), Some(&1));
}

#[tokio::test(start_paused = true)]
async fn an_auth_frame_before_the_timeout_opens_the_connection() {
    let hub = hub();
    let mut client = open(&hub, None);
    tokio::time::sleep(Duration::from_secs(9)).await;
    client.send(json!({"type": "auth", "payload": {"token": token(3600)}}));
    assert_eq!(client.next().await, (auth_ack(), 9));
    // Past the auth timeout, the connection is alive: the server's first ping comes on time.
    assert_eq!(client.next().await, (Seen::Ping, 9 + 25));
}

#[tokio::test(start_paused = true)]
async fn a_silent_client_gets_pings_then_is_closed_at_the_read_timeout() {
    let hub = hub();
    let mut client = open(&hub, Some(&token(3600)));
    let seen = client.until_close().await;
    assert_eq!(seen, vec![(auth_ack(), 0), (Seen::Ping, 25), (Seen::Ping, 50), (Seen::Close(4012), 60)]);
}

#[tokio::test(start_paused = true)]
async fn any_frame_from_the_client_restarts_the_read_timeout() {
    let hub = hub();
    let mut client = open(&hub, Some(&token(3600)));
    assert_eq!(client.next().await, (auth_ack(), 0));
    assert_eq!(client.next().await, (Seen::Ping, 25));
    assert_eq!(client.next().await, (Seen::Ping, 50));
    // A client ping at 55 s, then silence: the read timeout runs from 55 s.
    tokio::time::sleep(Duration::from_secs(5)).await;
    client.send(json!({"type": "ping"}));
    let seen = client.until_close().await;
    assert_eq!(seen, vec![(Seen::Frame(json!({"type": "pong"})), 55), (Seen::Ping, 75), (Seen::Ping, 100), (Seen::Close(4012), 115)]);
}

/// Asserts that `seen` is exactly a close with `code` at `second`, or a second earlier: token
/// expiries are whole wall-clock seconds, which may tick between minting and connecting.
fn assert_closed_at(seen: &[(Seen, u64)], code: u16, second: u64) {
    match seen {
        [(Seen::Close(c), at)] if *c == code && (second - 1..=second).contains(at) => {}
        _ => panic!("expected only a close {code} at {second} s, saw {seen:?}"),
    }
}

#[tokio::test(start_paused = true)]
async fn a_connection_is_closed_when_its_token_expires() {
    let hub = hub();
    let mut client = open(&hub, Some(&token(20)));
    assert_eq!(client.next().await, (auth_ack(), 0));
    assert_closed_at(&client.until_close().await, 4501, 20);
}

#[tokio::test(start_paused = true)]
async fn a_refreshed_token_moves_the_expiry() {
    let hub = hub();
    let mut client = open(&hub, Some(&token(20)));
    assert_eq!(client.next().await, (auth_ack(), 0));
    tokio::time::sleep(Duration::from_secs(15)).await;
    // The wall clock does not move with the paused one: a token minted now for 25 s expires at
    // 15 + 25 = 40 s of the session's time.
    client.send(json!({"type": "auth", "payload": {"token": token(25)}}));
    let (refreshed, at) = client.next().await;
    assert_eq!(at, 15);
    let Seen::Frame(frame) = refreshed else { panic!("expected auth_ack, got {refreshed:?}") };
    assert_eq!((&frame["type"], frame["payload"]["exp"].is_u64()), (&json!("auth_ack"), true), "{frame}");
    assert_eq!(client.next().await, (Seen::Ping, 25));
    assert_closed_at(&client.until_close().await, 4501, 40);
}

#[tokio::test(start_paused = true)]
async fn a_refresh_for_another_user_is_refused_and_changes_nothing() {
    let hub = hub();
    let mut client = open(&hub, Some(&token(20)));
    assert_eq!(client.next().await, (auth_ack(), 0));
    let now = SystemTime::now().duration_since(UNIX_EPOCH).expect("after 1970").as_secs();
    let other = Claims { sub: "mallory".into(), exp: now + 3600, workspaces: vec!["ws-1".into()], grants: Default::default() };
    client.send(json!({"type": "auth", "payload": {"token": mint(SECRET, &other)}}));
    assert_eq!(client.next().await, (Seen::Frame(json!({"type": "auth_error", "payload": {"error": "other_user"}})), 0));
    assert_closed_at(&client.until_close().await, 4501, 20);
}
