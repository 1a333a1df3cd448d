//! `busbar serve` end to end: a real server on port 0, real WebSocket clients, real HTTP. Events
//! posted over HTTP pass through the example plugins and reach exactly the right clients.

use std::time::Duration;

use busbar::config::DEV_JWT_SECRET;
use busbar::hub::{Claims, auth};
use futures_util::{SinkExt, StreamExt};
use serde_json::{Value, json};
use tokio::net::TcpStream;
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_util::sync::CancellationToken;

use crate::support::server::{Client, TestServer, barrier, read_until_close, token, types};
use crate::support::wait::eventually_async;

/// Per room (scope and id), the `seq` of the frames a client got must run 1, 2, 3... with no
/// gap: every room here is new and the client missed nothing.
fn assert_consecutive_per_room(who: &str, frames: &[Value]) {
    let mut rooms: std::collections::BTreeMap<(String, String), Vec<u64>> = Default::default();
    for frame in frames.iter().filter(|f| f.get("scope").is_some()) {
        let room = (frame["scope"].as_str().unwrap().to_string(), frame["scope_id"].as_str().unwrap_or_default().to_string());
        rooms.entry(room).or_default().push(frame["seq"].as_u64().unwrap());
    }
    for (room, seqs) in rooms {
        assert_eq!(seqs, (1..=seqs.len() as u64).collect::<Vec<_>>(), "{who}: seq in {room:?}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn events_reach_exactly_the_right_clients() {
    let server = TestServer::start(|_| {}).await;
    let grants = [("ws-1", "task", "task-1"), ("ws-1", "chat", "chat-1")];
    let mut alice = Client::connect(&server, "ws-1", &token("alice", &["ws-1"], &grants)).await;
    let mut bob = Client::connect(&server, "ws-1", &token("bob", &["ws-1"], &[])).await;
    let mut carol = Client::connect(&server, "ws-2", &token("carol", &["ws-2"], &[])).await;
    let mut dave_ws1 = Client::connect(&server, "ws-1", &token("dave", &["ws-1", "ws-2"], &[])).await;
    let mut dave_ws2 = Client::connect(&server, "ws-2", &token("dave", &["ws-1", "ws-2"], &[])).await;
    assert_eq!(alice.subscribe("task", "task-1").await["type"], "subscribe_ack");
    assert_eq!(alice.subscribe("chat", "chat-1").await["type"], "subscribe_ack");

    server
        .publish_ok(json!([
            {"type": "issue:created", "workspace_id": "ws-1", "actor_type": "member", "actor_id": "alice", "payload": {"n": 1}},
            {"type": "issue:created", "workspace_id": "ws-2", "payload": {"n": 2}},
            {"type": "member:added", "workspace_id": "ws-1", "payload": {"member": {"user_id": "dave"}}},
            {"type": "inbox:new", "workspace_id": "ws-1", "payload": {"item": {"recipient_id": "bob"}}},
            {"type": "task:message", "workspace_id": "ws-1", "task_id": "task-1", "payload": {"seq": 1}},
            {"type": "chat:message", "workspace_id": "ws-1", "chat_session_id": "chat-1", "payload": {"content": "private"}},
            {"type": "issue:updated", "workspace_id": "ws-1", "payload": {"n": 3}},
            {"type": "daemon:heartbeat", "payload": {}},
        ]))
        .await;
    barrier(&server).await;

    let alice_frames = alice.until_barrier().await;
    assert_consecutive_per_room("alice", &alice_frames);
    let rooms: std::collections::BTreeSet<&str> = alice_frames.iter().filter_map(|f| f["scope"].as_str()).collect();
    assert_eq!(rooms, ["chat", "everyone", "task", "workspace"].into(), "numbered rooms of every kind");
    assert_eq!(
        types(&alice_frames),
        ["issue:created", "member:added", "task:message", "task:message", "chat:message", "issue:updated", "daemon:heartbeat"]
    );
    // The task event arrives once per scope it was sent to: the task scope and the workspace.
    let task_scopes: Vec<&str> = alice_frames.iter().filter(|f| f["type"] == "task:message").map(|f| f["scope"].as_str().unwrap()).collect();
    assert_eq!(task_scopes, ["task", "workspace"]);
    // Workspace frames are numbered 1, 2, 3... in order.
    let seqs: Vec<u64> = alice_frames.iter().filter(|f| f["scope"] == "workspace").map(|f| f["seq"].as_u64().unwrap()).collect();
    assert_eq!(seqs, (1..=seqs.len() as u64).collect::<Vec<_>>());
    let first = &alice_frames[0];
    assert_eq!(first["payload"], json!({"n": 1}));
    assert_eq!((first["actor_id"].as_str(), first["actor_type"].as_str()), (Some("alice"), Some("member")));
    assert!(first["event_id"].as_str().is_some_and(|id| !id.is_empty()));

    // Bob: the workspace's public events and his own inbox; no chat, no task scope.
    let bob_frames = bob.until_barrier().await;
    assert_consecutive_per_room("bob", &bob_frames);
    assert_eq!(types(&bob_frames), ["issue:created", "member:added", "inbox:new", "task:message", "issue:updated", "daemon:heartbeat"]);
    assert_eq!(bob_frames[2]["scope"], "user");
    // Carol, in another workspace, sees only that workspace.
    let carol_frames = carol.until_barrier().await;
    assert_consecutive_per_room("carol", &carol_frames);
    assert_eq!(types(&carol_frames), ["issue:created", "daemon:heartbeat"]);
    assert_eq!(carol_frames[0]["payload"], json!({"n": 2}));
    // Dave in ws-1 gets member:added once (workspace room); the user copy excludes ws-1, so
    // there his user room shows only its position (`skip`), and its seq has no gap...
    let dave1 = dave_ws1.until_barrier().await;
    assert_consecutive_per_room("dave in ws-1", &dave1);
    assert_eq!(types(&dave1), ["issue:created", "member:added", "skip", "task:message", "issue:updated", "daemon:heartbeat"]);
    let skip = &dave1[2];
    assert_eq!((skip["scope"].as_str(), skip["scope_id"].as_str()), (Some("user"), Some("dave")));
    assert!(skip.get("payload").is_none() && skip.get("event_id").is_none(), "a skip carries no data: {skip}");
    // ...and his ws-2 connection gets it through his user room.
    let dave2 = dave_ws2.until_barrier().await;
    assert_consecutive_per_room("dave in ws-2", &dave2);
    assert_eq!(types(&dave2), ["issue:created", "member:added", "daemon:heartbeat"]);
    assert_eq!(dave2[1]["scope"], "user");
    server.stop().await;
}

/// A token that expired long ago (signed with the server's secret).
fn expired_token() -> String {
    auth::mint(DEV_JWT_SECRET.as_bytes(), &Claims { sub: "u".into(), exp: 1_000, workspaces: vec!["ws-1".into()], grants: Default::default() })
}

/// A WebSocket upgrade request for ws-1 carrying `header: value`.
fn upgrade_with(server: &TestServer, header: &'static str, value: &str) -> tokio_tungstenite::tungstenite::handshake::client::Request {
    let mut request = format!("ws://{}/ws?workspace_id=ws-1", server.addr).into_client_request().unwrap();
    request.headers_mut().insert(header, value.parse().unwrap());
    request
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_auth_frames_are_refused_with_their_close_codes() {
    let server = TestServer::start(|_| {}).await;
    let wrong_alg = jsonwebtoken::encode(
        &jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS512),
        &json!({"sub": "u", "exp": busbar::event::now_ms() / 1000 + 60, "workspaces": ["ws-1"]}),
        &jsonwebtoken::EncodingKey::from_secret(DEV_JWT_SECRET.as_bytes()),
    )
    .unwrap();
    let other_secret = auth::mint(
        b"not-the-server-secret-at-all-0123456789",
        &Claims { sub: "u".into(), exp: busbar::event::now_ms() / 1000 + 60, workspaces: vec!["ws-1".into()], grants: Default::default() },
    );
    for (token, code, close) in [
        ("garbage".to_string(), "invalid_token", 4500),
        (expired_token(), "token_expired", 4501),
        (wrong_alg, "invalid_token", 4500),
        (other_secret, "invalid_token", 4500),
        (token("u", &["ws-9"], &[]), "forbidden_workspace", 4503),
    ] {
        let mut client = Client::open(&server, "ws-1").await;
        client.send(json!({"type": "auth", "payload": {"token": token}})).await;
        let error = client.next().await;
        assert_eq!(error["type"], "error", "{error}");
        assert_eq!(error["payload"]["code"], code, "{error}");
        assert_eq!(client.close_code().await, Some(close));
    }
    // A first frame that is not `auth`.
    let mut client = Client::open(&server, "ws-1").await;
    client.send(json!({"type": "subscribe", "payload": {"scope": "task", "id": "t"}})).await;
    assert_eq!(client.next().await["payload"]["code"], "bad_request");
    assert_eq!(client.close_code().await, Some(4502));
    assert_eq!(server.realtime().await["auth_failures_total"]["token_expired"], 1);
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn header_tokens_are_checked_before_the_upgrade() {
    let server = TestServer::start(|_| {}).await;
    for (token, status) in [(expired_token(), 401), (token("u", &["ws-9"], &[]), 403)] {
        let request = upgrade_with(&server, "authorization", &format!("Bearer {token}"));
        let err = tokio_tungstenite::connect_async(request).await.unwrap_err();
        assert!(err.to_string().contains(&status.to_string()), "{err}");
    }
    // A good header token connects without an auth frame.
    let request = upgrade_with(&server, "authorization", &format!("Bearer {}", token("u", &["ws-1"], &[])));
    let (socket, _) = tokio_tungstenite::connect_async(request).await.unwrap();
    let mut client = Client { socket };
    assert_eq!(client.next().await["type"], "auth_ack");
    assert_eq!(server.realtime().await["auth_failures_total"]["token_expired"], 1);
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upgrades_with_a_url_token_without_a_workspace_or_from_a_foreign_origin_are_refused() {
    let server = TestServer::start(|_| {}).await;
    // Tokens in the URL are refused, even valid ones.
    let url = format!("ws://{}/ws?workspace_id=ws-1&token={}", server.addr, token("u", &["ws-1"], &[]));
    let err = tokio_tungstenite::connect_async(url).await.unwrap_err();
    assert!(err.to_string().contains("400"), "{err}");
    // A workspace is required.
    let err = tokio_tungstenite::connect_async(format!("ws://{}/ws", server.addr)).await.unwrap_err();
    assert!(err.to_string().contains("400"), "{err}");
    // Origins not on the allow-list are refused.
    let err = tokio_tungstenite::connect_async(upgrade_with(&server, "origin", "https://evil.example.com")).await.unwrap_err();
    assert!(err.to_string().contains("403"), "{err}");
    assert_eq!(server.realtime().await["auth_failures_total"]["token_in_url"], 1);
    server.stop().await;
}

/// The original system's rules, from the application's own data: a chat session is visible to
/// its creator only; a task to members of the one workspace it belongs to. Ids starting with
/// `broken` fail the lookup, `slow` ones never answer (the hub's authorizer timeout ends them),
/// `late` ones are counted in `late_started` and allowed once the test says `late_release`.
#[derive(Default)]
struct OriginalRules {
    chat_creators: std::collections::HashMap<&'static str, &'static str>,
    task_workspaces: std::collections::HashMap<&'static str, &'static str>,
    late_started: std::sync::Arc<std::sync::atomic::AtomicUsize>,
    late_release: std::sync::Arc<tokio::sync::Notify>,
}

impl busbar::hub::ScopeAuthorizer for OriginalRules {
    fn authorize<'a>(
        &'a self,
        who: &'a busbar::hub::Identity,
        scope: &'a busbar::action::Scope,
    ) -> busbar::hub::auth::AuthorizeFuture<'a> {
        Box::pin(async move {
            if scope.id.starts_with("broken") {
                return Err(busbar::hub::LookupError::new("the database is down"));
            }
            if scope.id.starts_with("slow") {
                std::future::pending::<()>().await;
            }
            if scope.id.starts_with("late") {
                self.late_started.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                self.late_release.notified().await;
                return Ok(true);
            }
            Ok(match scope.kind {
                busbar::action::ScopeKind::Chat => self.chat_creators.get(scope.id.as_str()) == Some(&who.user_id.as_str()),
                busbar::action::ScopeKind::Task => {
                    self.task_workspaces.get(scope.id.as_str()) == Some(&who.workspace_id.as_str())
                }
                _ => false,
            })
        })
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_application_authorizer_expresses_the_original_rules() {
    let rules = OriginalRules {
        chat_creators: [("chat-a", "alice"), ("chat-b", "bob")].into(),
        task_workspaces: [("task-1", "ws-1"), ("task-2", "ws-2")].into(),
        ..OriginalRules::default()
    };
    let server = TestServer::start_with_authorizer(|c| c.hub.authorize_timeout = Duration::from_millis(200), std::sync::Arc::new(rules))
        .await;
    // No grants in the tokens: the application's rules decide.
    let mut alice = Client::connect(&server, "ws-1", &token("alice", &["ws-1", "ws-2"], &[])).await;
    let mut error_of = async |scope: &str, id: &str| -> Value {
        let reply = alice.subscribe(scope, id).await;
        if reply["type"] == "subscribe_ack" { Value::Null } else { reply["payload"]["error"].clone() }
    };
    assert_eq!(error_of("chat", "chat-a").await, Value::Null, "alice created chat-a");
    assert_eq!(error_of("chat", "chat-b").await, "forbidden", "bob's chat");
    assert_eq!(error_of("task", "task-1").await, Value::Null, "task-1 is in alice's workspace");
    assert_eq!(error_of("task", "task-2").await, "forbidden", "task-2 is in ws-2, not this connection's workspace");
    assert_eq!(error_of("task", "broken-1").await, "lookup_failed");
    assert_eq!(error_of("chat", "slow-1").await, "lookup_failed");
    // The allowed scopes receive their events, the refused ones nothing.
    for (task, chat) in [("task-1", "chat-b"), ("task-2", "chat-a")] {
        server.publish_ok(json!({"type": "task:message", "workspace_id": "ws-1", "task_id": task})).await;
        server.publish_ok(json!({"type": "chat:message", "workspace_id": "ws-1", "chat_session_id": chat})).await;
    }
    barrier(&server).await;
    let scoped: Vec<String> = alice
        .until_barrier()
        .await
        .iter()
        .filter(|f| f["scope"] == "task" || f["scope"] == "chat")
        .map(|f| format!("{}:{}", f["scope"].as_str().unwrap(), f["scope_id"].as_str().unwrap()))
        .collect();
    assert_eq!(scoped, ["task:task-1", "chat:chat-a"]);
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_connection_evicted_while_its_subscribe_is_authorised_leaves_no_room_behind() {
    let rules = OriginalRules::default();
    let (late_started, late_release) = (rules.late_started.clone(), rules.late_release.clone());
    let server = TestServer::start_with_authorizer(|c| c.hub.max_queue_bytes = 4 << 10, std::sync::Arc::new(rules)).await;
    let mut client = stalled_client(&server, &token("u", &["ws-1"], &[])).await;
    client.send(Message::text(json!({"type": "subscribe", "payload": {"scope": "task", "id": "late-1"}}).to_string())).await.unwrap();
    eventually_async("the subscribe reaches the authorizer", async || late_started.load(std::sync::atomic::Ordering::SeqCst) == 1).await;
    // While the authorizer thinks, the connection overflows its outbox and is evicted.
    let padding = "e".repeat(8 << 10);
    server.publish_ok(json!({"type": "bulk:item", "workspace_id": "ws-1", "payload": {"padding": padding}})).await;
    server.realtime_until("the connection is evicted", |m| m["slow_evictions_total"] == 1 && m["active_connections"] == 0).await;
    // The authorizer answers "yes" after the connection is gone (the subscribe is counted, then
    // joined at once): no room may stay open for it.
    late_release.notify_one();
    let metrics = server.realtime_until("the late subscribe is allowed", |m| m["subscribes_total"]["task"] == 1).await;
    assert_eq!(metrics["active_scope_rooms"], json!({}));
    server.stop().await;
}

/// The reply to a subscribe, as `essentials` leaves it.
fn reply(kind: &str, id: &str, error: Option<&str>) -> Value {
    let mut v = json!({"type": if error.is_some() { "subscribe_error" } else { "subscribe_ack" }, "payload": {"scope": kind, "id": id}});
    if let Some(e) = error {
        v["payload"]["error"] = json!(e);
    }
    v
}

/// Acks also carry the room's position and workspace; only the rest is compared.
fn essentials(mut v: Value) -> Value {
    if let Some(payload) = v["payload"].as_object_mut() {
        payload.remove("epoch");
        payload.remove("offset");
        payload.remove("workspace_id");
    }
    v
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scopes_are_authorised_and_capped() {
    let server = TestServer::start(|c| {
        c.hub.max_scopes = 4;
        c.hub.subscribe_burst = 100.0;
    })
    .await;
    let grants = [("ws-1", "task", "t-*"), ("ws-2", "chat", "c-1")];
    let mut client = Client::connect(&server, "ws-1", &token("alice", &["ws-1", "ws-2"], &grants)).await;
    let ack = client.subscribe("task", "t-1").await;
    assert_eq!(ack["payload"]["workspace_id"], "ws-1", "a task room belongs to a workspace: {ack}");
    assert_eq!(essentials(ack), reply("task", "t-1", None));
    assert_eq!(essentials(client.subscribe("task", "x-1").await), reply("task", "x-1", Some("forbidden")));
    // The chat grant is for ws-2: a task or chat belongs to one workspace.
    assert_eq!(essentials(client.subscribe("chat", "c-1").await), reply("chat", "c-1", Some("forbidden")));
    assert_eq!(essentials(client.subscribe("workspace", "ws-1").await), reply("workspace", "ws-1", None));
    assert_eq!(essentials(client.subscribe("workspace", "ws-2").await), reply("workspace", "ws-2", Some("forbidden")));
    assert_eq!(essentials(client.subscribe("user", "bob").await), reply("user", "bob", Some("forbidden")));
    assert_eq!(essentials(client.subscribe("galaxy", "g").await), reply("galaxy", "g", Some("unknown_scope")));
    assert_eq!(essentials(client.subscribe("task", "").await), reply("task", "", Some("invalid payload")));
    // Own workspace + user + t-1 + t-2 = 4 scopes: the cap.
    assert_eq!(essentials(client.subscribe("task", "t-2").await), reply("task", "t-2", None));
    assert_eq!(essentials(client.subscribe("task", "t-3").await), reply("task", "t-3", Some("too_many_scopes")));
    client.send(json!({"type": "unsubscribe", "payload": {"scope": "task", "id": "t-2"}})).await;
    assert_eq!(client.next().await, json!({"type": "unsubscribe_ack", "payload": {"scope": "task", "id": "t-2"}}));
    assert_eq!(essentials(client.subscribe("task", "t-3").await), reply("task", "t-3", None));
    client.send(json!({"type": "ping"})).await;
    assert_eq!(client.next().await, json!({"type": "pong"}));
    // Unknown frames are ignored.
    client.send(json!({"type": "hello"})).await;
    client.socket.send(Message::text("{not json")).await.unwrap();
    client.send(json!({"type": "ping"})).await;
    assert_eq!(client.next().await, json!({"type": "pong"}));
    // Only the granted scope receives scoped events.
    server.publish_ok(json!({"type": "task:message", "workspace_id": "ws-1", "task_id": "x-1"})).await;
    server.publish_ok(json!({"type": "task:message", "workspace_id": "ws-1", "task_id": "t-3"})).await;
    barrier(&server).await;
    let frames = client.until_barrier().await;
    let scoped: Vec<&str> = frames.iter().filter(|f| f["scope"] == "task").map(|f| f["scope_id"].as_str().unwrap()).collect();
    assert_eq!(scoped, ["t-3"]);
    let metrics = server.realtime().await;
    assert_eq!(metrics["subscribe_denied_total"]["task"], 1);
    assert_eq!(metrics["subscribe_denied_total"]["chat"], 1);
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_subscribe_rate_is_capped() {
    let server = TestServer::start(|c| {
        c.hub.subscribe_burst = 2.0;
        c.hub.subscribe_rate = 0.01;
    })
    .await;
    let mut client = Client::connect(&server, "ws-1", &token("a", &["ws-1"], &[("ws-1", "task", "t-*")])).await;
    assert_eq!(client.subscribe("task", "t-1").await["type"], "subscribe_ack");
    assert_eq!(client.subscribe("task", "t-2").await["type"], "subscribe_ack");
    assert_eq!(essentials(client.subscribe("task", "t-3").await), reply("task", "t-3", Some("rate_limited")));
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oversized_frames_close_with_1009() {
    let server = TestServer::start(|_| {}).await;
    let big = "x".repeat(64 * 1024 + 1);
    // Before authentication.
    let mut client = Client::open(&server, "ws-1").await;
    client.socket.send(Message::text(big.clone())).await.unwrap();
    assert_eq!(client.close_code().await, Some(1009));
    // After authentication.
    let mut client = Client::connect(&server, "ws-1", &token("u", &["ws-1"], &[])).await;
    client.socket.send(Message::text(big)).await.unwrap();
    assert_eq!(client.close_code().await, Some(1009));
    // Half the limit is fine.
    let mut client = Client::connect(&server, "ws-1", &token("u", &["ws-1"], &[])).await;
    client.send(json!({"type": "ping", "padding": "y".repeat(32 * 1024)})).await;
    assert_eq!(client.next().await, json!({"type": "pong"}));
    assert_eq!(server.realtime().await["inbound_too_large_total"], 2);
    server.stop().await;
}

/// Opens a client whose socket receive buffer is tiny and never reads from it.
pub(crate) async fn stalled_client(server: &TestServer, token: &str) -> WebSocketStream<TcpStream> {
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.set_recv_buffer_size(4096).unwrap();
    let stream = socket.connect(server.addr).await.unwrap();
    let url = format!("ws://{}/ws?workspace_id=ws-1", server.addr);
    let (mut ws, _) = tokio_tungstenite::client_async(url, stream).await.unwrap();
    ws.send(Message::text(json!({"type": "auth", "payload": {"token": token}}).to_string())).await.unwrap();
    ws
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_stops_reading_is_evicted_and_others_keep_receiving() {
    let server = TestServer::start(|c| {
        c.hub.max_queue_bytes = 512 << 10;
        c.hub.max_queue_age = Duration::from_secs(2);
    })
    .await;
    let mut stalled = stalled_client(&server, &token("slow", &["ws-1"], &[])).await;
    let mut fast = Client::connect(&server, "ws-1", &token("fast", &["ws-1"], &[])).await;
    let reader = tokio::spawn(async move {
        let mut seen = 0;
        loop {
            let frame = fast.next().await;
            if frame["type"] == "daemon:barrier" {
                return (seen, fast);
            }
            seen += 1;
        }
    });
    let padding = "p".repeat(16 << 10);
    let mut published = 0;
    for _ in 0..200 {
        let batch: Vec<Value> = (0..8)
            .map(|i| json!({"type": "bulk:item", "workspace_id": "ws-1", "payload": {"i": i, "padding": padding}}))
            .collect();
        server.publish_ok(Value::Array(batch)).await;
        published += 8;
        if server.realtime().await["slow_evictions_total"].as_u64() == Some(1) {
            break;
        }
    }
    let metrics = server.realtime().await;
    assert_eq!(metrics["slow_evictions_total"], 1, "the stalled client was evicted: {metrics}");
    // Reading again, the evicted client gets what was already on its way, then learns why.
    assert_eq!(read_until_close(&mut stalled).await, Some(4008));
    barrier(&server).await;
    let (seen, _fast) = tokio::time::timeout(Duration::from_secs(30), reader).await.unwrap().unwrap();
    assert_eq!(seen, published, "the reading client received every frame");
    assert_eq!(server.realtime().await["active_connections"], 1);
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connects_disconnects_and_evictions_race_publishing_without_harm() {
    let server = std::sync::Arc::new(
        TestServer::start(|c| {
            c.hub.max_queue_bytes = 32 << 10;
            c.hub.max_queue_age = Duration::from_millis(100);
        })
        .await,
    );
    let stop = CancellationToken::new();
    let publisher = {
        let (server, stop) = (server.clone(), stop.clone());
        tokio::spawn(async move {
            let padding = "q".repeat(4 << 10);
            let mut n = 0u64;
            while !stop.is_cancelled() {
                let batch: Vec<Value> = (0..10)
                    .map(|i| json!({"type": "storm:tick", "workspace_id": "ws-1", "payload": {"i": i, "p": padding}}))
                    .collect();
                assert_eq!(server.publish(Value::Array(batch)).await.status(), 200);
                n += 10;
            }
            n
        })
    };
    let mut churners = Vec::new();
    for worker in 0..8 {
        let server = server.clone();
        churners.push(tokio::spawn(async move {
            for round in 0..15 {
                let t = token(&format!("u{worker}"), &["ws-1"], &[("ws-1", "task", "*")]);
                if (worker + round) % 3 == 0 {
                    // Stalls, to be evicted, then vanishes.
                    let stalled = stalled_client(&server, &t).await;
                    server.realtime_until("a stalled client is evicted", |m| m["slow_evictions_total"].as_u64() > Some(0)).await;
                    drop(stalled);
                } else {
                    // Reads a little, subscribes, and leaves (politely or not). Under this load
                    // it may be evicted itself at any point; that is part of the storm.
                    let mut client = Client::open(&server, "ws-1").await;
                    let _ = client.socket.send(Message::text(json!({"type": "auth", "payload": {"token": t}}).to_string())).await;
                    let subscribe = json!({"type": "subscribe", "payload": {"scope": "task", "id": format!("t{round}")}});
                    let _ = client.socket.send(Message::text(subscribe.to_string())).await;
                    for _ in 0..3 {
                        let _ = tokio::time::timeout(Duration::from_millis(20), client.socket.next()).await;
                    }
                    if round % 2 == 0 {
                        let _ = client.socket.close(None).await;
                    }
                }
            }
        }));
    }
    for churner in churners {
        churner.await.unwrap();
    }
    stop.cancel();
    let published = publisher.await.unwrap();
    assert!(published > 0);
    // Everyone left: the hub drains back to zero connections and no rooms.
    let metrics = server.realtime_until("every connection is gone", |m| m["active_connections"] == 0).await;
    assert!(metrics["slow_evictions_total"].as_u64() > Some(0), "the storm included evictions: {metrics}");
    assert_eq!(metrics["connects_total"], metrics["disconnects_total"]);
    assert_eq!(metrics["active_scope_rooms"], json!({}));
    // And it still serves.
    let mut client = Client::connect(&server, "ws-1", &token("after", &["ws-1"], &[])).await;
    barrier(&server).await;
    assert!(client.until_barrier().await.is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_writes_the_frames_already_queued_before_going_away() {
    let server = TestServer::start(|c| {
        c.hub.max_queue_bytes = 8 << 20;
        c.max_events_body = 4 << 20;
    })
    .await;
    // A client that is not reading yet, with a small receive window: frames wait in its outbox.
    let mut slow = stalled_client(&server, &token("slow", &["ws-1"], &[])).await;
    let padding = "s".repeat(16 << 10);
    let events: Vec<Value> =
        (0..64).map(|i| json!({"type": "bulk:item", "workspace_id": "ws-1", "payload": {"i": i, "padding": padding}})).collect();
    server.publish_ok(Value::Array(events)).await;
    server.shutdown.cancel();
    let mut seen = Vec::new();
    let close = loop {
        let message = tokio::time::timeout(Duration::from_secs(10), slow.next()).await.expect("a frame within 10 s");
        match message {
            Some(Ok(Message::Text(text))) => {
                let frame: Value = serde_json::from_str(&text).unwrap();
                if frame["type"] == "bulk:item" {
                    seen.push(frame["payload"]["i"].as_u64().unwrap());
                }
            }
            Some(Ok(Message::Close(frame))) => break frame.map(|f| u16::from(f.code)),
            Some(Ok(_)) => continue,
            other => panic!("the connection ended without a close frame: {other:?}"),
        }
    };
    assert_eq!(seen, (0..64).collect::<Vec<u64>>(), "every frame published before the shutdown arrived");
    assert_eq!(close, Some(1001));
    let _ = tokio::time::timeout(Duration::from_secs(15), server.handle).await.expect("the server stops");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn silent_connections_are_closed_and_live_ones_are_kept_by_server_pings() {
    let server = TestServer::start(|c| {
        c.hub.auth_timeout = Duration::from_millis(300);
        c.hub.ping_interval = Duration::from_millis(100);
        c.hub.read_timeout = Duration::from_millis(500);
    })
    .await;
    // Never authenticates.
    let mut mute = Client::open(&server, "ws-1").await;
    // Keeps reading: its WebSocket layer answers every server ping with a pong.
    let mut live = Client::connect(&server, "ws-1", &token("live", &["ws-1"], &[])).await;
    let mut pings = 0;
    let until = tokio::time::Instant::now() + Duration::from_millis(1500);
    while let Ok(message) = tokio::time::timeout_at(until, live.socket.next()).await {
        match message {
            Some(Ok(Message::Ping(_))) => pings += 1,
            Some(Ok(Message::Close(frame))) => panic!("the live client was closed: {frame:?}"),
            _ => {}
        }
    }
    assert!(pings >= 5, "the server pinged every 100 ms: {pings} pings in 1.5 s");
    live.send(json!({"type": "ping"})).await;
    assert_eq!(live.next().await, json!({"type": "pong"}), "still connected after three read timeouts");
    assert_eq!(mute.close_code().await, Some(4408));
    server.stop().await;

    // Without server pings to answer, a client that sends nothing is closed at the read timeout.
    // (Pings are off here because a client that reads them late answers each with a pong, and
    // writing to a closed connection fails before it reaches the close frame.)
    let server = TestServer::start(|c| {
        c.hub.ping_interval = Duration::from_secs(3600);
        c.hub.read_timeout = Duration::from_millis(300);
    })
    .await;
    let mut deaf = Client::connect(&server, "ws-1", &token("deaf", &["ws-1"], &[])).await;
    assert_eq!(deaf.close_code().await, Some(4012));
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_closes_sockets_with_going_away() {
    let server = TestServer::start(|_| {}).await;
    let mut client = Client::connect(&server, "ws-1", &token("u", &["ws-1"], &[])).await;
    server.shutdown.cancel();
    assert_eq!(client.close_code().await, Some(1001));
    let _ = tokio::time::timeout(Duration::from_secs(10), server.handle).await.expect("the server stops");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_and_oversized_publishes_are_refused_with_the_field_named() {
    let server = TestServer::start(|c| c.max_events_body = 4096).await;
    let cases = [
        (json!({"payload": {}}), 400, "missing field `type`"),
        (json!({"type": ""}), 400, "field `type`: must not be empty"),
        (json!([{"type": "a"}, {"type": "b", "task_id": 5}]), 400, "events[1]: invalid event JSON: invalid type"),
        (json!([]), 400, "empty array"),
        (json!({"type": "a", "padding": "x"}), 400, "unknown field `padding`"),
        (json!({"type": "a", "payload": "x".repeat(5000)}), 413, "body larger than 4096 bytes"),
    ];
    for (body, status, message) in cases {
        let response = server.publish(body.clone()).await;
        assert_eq!(response.status(), status, "{body}");
        let error: Value = response.json().await.unwrap();
        assert!(error["error"]["message"].as_str().unwrap().contains(message), "{body}: {error}");
    }
    // Nothing from a refused batch was published.
    assert!(server.realtime().await["events_sent_by_type"].get("a").is_none());
    server.stop().await;
}

fn component(group: &str, name: &str) -> Vec<u8> {
    std::fs::read(crate::support::built(group, name)).unwrap()
}

/// Uploads the echo plugin with a manifest that runs it first, for `probe:*` only, with `tag`
/// in its config; returns the plugin's view.
async fn upload_echo(http: &reqwest::Client, server: &TestServer) -> Value {
    let manifest = "order = 1\nsubscriptions = [\"probe:*\"]\n[config]\ntag = \"v1\"\n[capabilities]\ngrants = [\"everyone\"]\n";
    let form = reqwest::multipart::Form::new()
        .part("component", reqwest::multipart::Part::bytes(component("testing", "echo")))
        .text("manifest", manifest);
    let response = http.put(server.url("/v1/plugins/echo")).multipart(form).send().await.unwrap();
    assert_eq!(response.status(), 201);
    response.json().await.unwrap()
}

/// The `tag`s (the echo plugin's frames carry one) `client` receives for a `probe:*` event.
async fn probe_tags(server: &TestServer, client: &mut Client) -> Vec<Value> {
    server.publish_ok(json!({"type": "probe:one", "workspace_id": "ws-1"})).await;
    barrier(server).await;
    client.until_barrier().await.iter().filter_map(|f| f["payload"].get("tag").cloned()).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_plugin_uploaded_over_http_runs_is_replaced_listed_and_deleted() {
    let server = TestServer::start(|_| {}).await;
    let http = reqwest::Client::new();
    let mut client = Client::connect(&server, "ws-1", &token("u", &["ws-1"], &[])).await;
    let view = upload_echo(&http, &server).await;
    assert_eq!(view["status"], "active");
    assert_eq!(view["listener"]["position"], 0);
    assert_eq!(view["plugin"]["subscriptions"], json!(["probe:*"]));
    assert_eq!(probe_tags(&server, &mut client).await, [json!("v1")]);

    // A raw upload without a manifest replaces the code and keeps the manifest.
    let response = http
        .put(server.url("/v1/plugins/echo"))
        .header("content-type", "application/wasm")
        .body(component("testing", "echo"))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    assert_eq!(probe_tags(&server, &mut client).await, [json!("v1")]);

    // The listing and metrics reflect it.
    let list: Value = http.get(server.url("/v1/plugins")).send().await.unwrap().json().await.unwrap();
    let names: Vec<&str> = list["plugins"].as_array().unwrap().iter().map(|p| p["name"].as_str().unwrap()).collect();
    assert_eq!(names, ["echo", "scope-router", "mention-notifier", "workspace-forwarder"]);
    assert_eq!(list["plugins"][0]["listener"]["stats"]["calls"], 2);
    let metrics = http.get(server.url("/metrics")).send().await.unwrap().text().await.unwrap();
    assert!(metrics.contains("busbar_plugin_calls_total{plugin=\"echo\",outcome=\"ok\"} 2"), "{metrics}");
    assert!(metrics.contains("busbar_active_connections 1"), "{metrics}");
    assert_eq!(server.realtime().await["plugins"][0]["name"], "echo");

    // Delete.
    assert_eq!(http.delete(server.url("/v1/plugins/echo")).send().await.unwrap().status(), 204);
    assert_eq!(http.delete(server.url("/v1/plugins/echo")).send().await.unwrap().status(), 404);
    assert_eq!(http.get(server.url("/v1/plugins/echo")).send().await.unwrap().status(), 404);
    let realtime = server.realtime().await;
    assert!(realtime["plugins"].as_array().unwrap().iter().all(|p| p["name"] != "echo"), "{realtime}");
    let metrics = http.get(server.url("/metrics")).send().await.unwrap().text().await.unwrap();
    assert!(!metrics.contains("plugin=\"echo\""), "{metrics}");
    assert_eq!(probe_tags(&server, &mut client).await, Vec::<Value>::new());
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_uploads_are_refused_and_the_running_version_keeps_serving() {
    let server = TestServer::start(|_| {}).await;
    let http = reqwest::Client::new();
    let mut client = Client::connect(&server, "ws-1", &token("u", &["ws-1"], &[])).await;
    upload_echo(&http, &server).await;
    for bad in [b"not wasm".to_vec(), component("testing", "echo")[..1000].to_vec(), component("hostile", "startup-panic")] {
        let response = http.put(server.url("/v1/plugins/echo")).body(bad).send().await.unwrap();
        assert_eq!(response.status(), 422);
        let error: Value = response.json().await.unwrap();
        assert_eq!(error["error"]["code"], "invalid_plugin");
    }
    let view: Value = http.get(server.url("/v1/plugins/echo")).send().await.unwrap().json().await.unwrap();
    assert_eq!(view["status"], "active");
    assert!(view["last_failure"]["error"].as_str().unwrap().contains("start-up"), "{view}");
    assert_eq!(probe_tags(&server, &mut client).await, [json!("v1")]);

    // Bad names and manifests are 400s.
    let response = http.put(server.url("/v1/plugins/bad%20name")).body(component("testing", "echo")).send().await.unwrap();
    assert_eq!(response.status(), 400);
    let form = reqwest::multipart::Form::new()
        .part("component", reqwest::multipart::Part::bytes(component("testing", "echo")))
        .text("manifest", "name = \"other\"\n");
    let response = http.put(server.url("/v1/plugins/echo")).multipart(form).send().await.unwrap();
    assert_eq!(response.status(), 400);
    let view: Value = http.get(server.url("/v1/plugins/echo")).send().await.unwrap().json().await.unwrap();
    assert!(view["last_failure"]["error"].as_str().unwrap().contains("upload refused: manifest names `other`"), "{view}");
    // Three refused components and one refused manifest; the bad name never named a plugin.
    let metrics = http.get(server.url("/metrics")).send().await.unwrap().text().await.unwrap();
    assert!(metrics.contains("busbar_plugin_reloads_total{result=\"failed\"} 4"), "{metrics}");
    assert_eq!(probe_tags(&server, &mut client).await, [json!("v1")]);
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admin_routes_refuse_callers_without_the_token() {
    let admin = "admin-secret-token-0123456789";
    let server = TestServer::start(|c| {
        c.admin_token = Some(admin.into());
        c.publish_token = Some("publish-secret-token-0123".into());
    })
    .await;
    // No connection reuse: a refused upload is answered before its body is read, and the
    // server then closes that connection.
    let http = reqwest::Client::builder().pool_max_idle_per_host(0).build().unwrap();
    for path in ["/v1/plugins", "/v1/plugins/workspace-forwarder", "/health/realtime", "/metrics"] {
        let response = http.get(server.url(path)).send().await.unwrap();
        assert_eq!(response.status(), 401, "{path}");
        assert_eq!(response.headers()["www-authenticate"], "Bearer");
        let response = http.get(server.url(path)).bearer_auth("wrong").send().await.unwrap();
        assert_eq!(response.status(), 401, "{path}");
        let response = http.get(server.url(path)).bearer_auth(admin).send().await.unwrap();
        assert_eq!(response.status(), 200, "{path}");
    }
    let response = http.put(server.url("/v1/plugins/x")).body(component("testing", "echo")).send().await.unwrap();
    assert_eq!(response.status(), 401);
    let response = http.delete(server.url("/v1/plugins/workspace-forwarder")).send().await.unwrap();
    assert_eq!(response.status(), 401);
    let event = json!({"type": "x:y"});
    assert_eq!(http.post(server.url("/v1/events")).json(&event).send().await.unwrap().status(), 401);
    let ok = http.post(server.url("/v1/events")).bearer_auth("publish-secret-token-0123").json(&event).send().await.unwrap();
    assert_eq!(ok.status(), 200);
    // Liveness and the API description stay public.
    assert_eq!(http.get(server.url("/health")).send().await.unwrap().status(), 200);
    assert_eq!(http.get(server.url("/v1/openapi.json")).send().await.unwrap().status(), 200);
    server.stop().await;

    // Without a token, forwarded (proxied) callers do not even learn the routes exist.
    let server = TestServer::start(|_| {}).await;
    let response = http.get(server.url("/metrics")).header("x-forwarded-for", "203.0.113.9").send().await.unwrap();
    assert_eq!(response.status(), 404);
    assert_eq!(http.get(server.url("/metrics")).send().await.unwrap().status(), 200);
    let calls = async || -> Value {
        let plugin: Value = http.get(server.url("/v1/plugins/workspace-forwarder")).send().await.unwrap().json().await.unwrap();
        plugin["listener"]["stats"]["calls"].clone()
    };
    let calls_before = calls().await;
    assert!(calls_before.is_u64(), "{calls_before}");
    // And a web page in the developer's browser cannot use them: not a cross-site form post
    // (it carries `Origin`), not a DNS-rebound name (its `Host`), not a plain GET (`Sec-Fetch-Site`).
    let form = http
        .post(server.url("/v1/events"))
        .header("origin", "https://evil.example")
        .header("content-type", "text/plain")
        .body(r#"{"type":"x:y","workspace_id":"ws-1"}"#);
    assert_eq!(form.send().await.unwrap().status(), 403);
    let rebound = http.get(server.url("/metrics")).header("host", format!("evil.example:{}", server.addr.port()));
    assert_eq!(rebound.send().await.unwrap().status(), 403);
    let page = http.get(server.url("/v1/plugins")).header("sec-fetch-site", "cross-site");
    assert_eq!(page.send().await.unwrap().status(), 403);
    let rollback = http.post(server.url("/v1/plugins/workspace-forwarder/rollback")).header("origin", "null");
    assert_eq!(rollback.send().await.unwrap().status(), 403);
    assert_eq!(calls().await, calls_before, "the refused publish reached no plugin");
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_served_openapi_document_is_the_checked_in_one_and_covers_every_route() {
    let server = TestServer::start(|_| {}).await;
    let served: Value = reqwest::get(server.url("/v1/openapi.json")).await.unwrap().json().await.unwrap();
    let checked_in: Value =
        serde_json::from_str(&std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../docs/openapi.json")).unwrap())
            .unwrap();
    assert_eq!(served, checked_in);
    assert!(served["openapi"].as_str().unwrap().starts_with("3."));
    for (path, methods) in [
        ("/v1/events", &["post"][..]),
        ("/v1/plugins", &["get"]),
        ("/v1/plugins/{name}", &["get", "put", "delete"]),
        ("/v1/plugins/{name}/rollback", &["post"]),
        ("/health", &["get"]),
        ("/health/realtime", &["get"]),
        ("/metrics", &["get"]),
        ("/ws", &["get"]),
        ("/v1/openapi.json", &["get"]),
    ] {
        for method in methods {
            assert!(served["paths"][path][method].is_object(), "{method} {path} is not documented");
        }
    }
    // Every route the router declares is in the document.
    let router = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/src/api/mod.rs")).unwrap();
    let routes: Vec<&str> = router.split(".route(\"").skip(1).filter_map(|rest| rest.split('"').next()).collect();
    assert!(routes.len() >= 9, "found the router's routes: {routes:?}");
    for route in routes {
        assert!(served["paths"][route].is_object(), "{route} is routed but not documented");
    }
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_connection_is_closed_when_its_token_expires() {
    let server = TestServer::start(|_| {}).await;
    let claims = Claims {
        sub: "short".into(),
        exp: busbar::event::now_ms() / 1000 + 2,
        workspaces: vec!["ws-1".into()],
        grants: Default::default(),
    };
    let mut client = Client::connect(&server, "ws-1", &auth::mint(DEV_JWT_SECRET.as_bytes(), &claims)).await;
    let started = std::time::Instant::now();
    assert_eq!(client.close_code().await, Some(4501));
    assert!(started.elapsed() < Duration::from_secs(5));
    server.stop().await;
}

/// A reconnect storm (hundreds of clients at once after a restart) fits in the listen backlog:
/// with nothing accepting, the kernel completes a connection only while the backlog has room,
/// and a client whose SYN is dropped waits a second or more to send it again.
#[tokio::test]
async fn a_reconnect_storm_fits_in_the_listen_backlog() {
    async fn completed(backlog: u32) -> usize {
        let listener = busbar::api::bind("127.0.0.1:0".parse().unwrap(), backlog).unwrap();
        let addr = listener.local_addr().unwrap();
        let attempts = (0..400).map(|_| tokio::time::timeout(Duration::from_millis(500), TcpStream::connect(addr)));
        let connected = futures_util::future::join_all(attempts).await;
        connected.iter().filter(|c| matches!(c, Ok(Ok(_)))).count()
    }
    let default = busbar::api::ConnectionLimits::default().listen_backlog;
    assert!(default >= 1024, "{default}");
    assert_eq!(completed(default).await, 400);
    // std's and tokio's default: the rest of the storm waits.
    let small = completed(128).await;
    assert!(small < 400, "with a backlog of 128, {small} of 400 connected at once");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_publish_report_says_as_much_as_asked() {
    let server = TestServer::start(|_| {}).await;
    let http = reqwest::Client::new();
    let event = json!({"type": "issue:created", "workspace_id": "ws-1", "payload": {"title": "t"}});
    let publish = |report: &str| http.post(server.url(&format!("/v1/events{report}"))).json(&event).send();
    for query in ["", "?report=full"] {
        let full: Value = publish(query).await.unwrap().json().await.unwrap();
        let result = &full["results"][0];
        assert!(result["event_id"].is_string(), "{full}");
        assert!(result["events"][0]["listeners"].as_array().is_some_and(|l| !l.is_empty()), "{query}: {full}");
        assert!(result.get("summary").is_none(), "{full}");
    }
    let summary: Value = publish("?report=summary").await.unwrap().json().await.unwrap();
    assert!(summary["results"][0].get("events").is_none(), "{summary}");
    assert!(summary["results"][0]["summary"].is_object(), "{summary}");
    let none: Value = publish("?report=none").await.unwrap().json().await.unwrap();
    let keys: Vec<&String> = none["results"][0].as_object().unwrap().keys().collect();
    assert_eq!(keys, ["event_id"], "{none}");
    let bad = publish("?report=everything").await.unwrap();
    assert_eq!(bad.status(), 400);
    let error: Value = bad.json().await.unwrap();
    assert!(error["error"]["message"].as_str().unwrap().contains("`report` is `full`, `summary` or `none`"), "{error}");
    // Three publishes went through (full twice, summary, none): the refused one did not.
    assert_eq!(server.realtime().await["events_sent_by_type"]["issue:created"], 4);
    server.stop().await;
}

/// Publishes stuck in a plugin until its deadline (one blocked in WASI's sleep, which blocks on
/// the runtime) leave the server answering other requests and fanning out other events.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn publishes_stuck_in_a_plugin_do_not_stall_the_server() {
    let server = TestServer::start(|_| {}).await;
    let http = reqwest::Client::new();
    let manifest = "subscriptions = [\"sleep:*\"]\n[limits]\ntimeout-ms = 3000\n";
    let form = reqwest::multipart::Form::new()
        .part("component", reqwest::multipart::Part::bytes(component("hostile", "sleeper")))
        .text("manifest", manifest);
    assert_eq!(http.put(server.url("/v1/plugins/sleeper")).multipart(form).send().await.unwrap().status(), 201);
    let mut client = Client::connect(&server, "ws-1", &token("u", &["ws-1"], &[])).await;

    let stuck: Vec<_> = (0..3)
        .map(|_| {
            let request = http.post(server.url("/v1/events")).json(&json!({"type": "sleep:now", "workspace_id": "ws-1", "payload": {"wait": "sleep"}}));
            tokio::spawn(request.send())
        })
        .collect();
    tokio::time::sleep(Duration::from_millis(300)).await;
    let started = std::time::Instant::now();
    assert_eq!(http.get(server.url("/health")).send().await.unwrap().status(), 200);
    server.publish_ok(json!({"type": "issue:created", "workspace_id": "ws-1", "payload": {"n": 1}})).await;
    let frame = tokio::time::timeout(Duration::from_millis(2500), client.next()).await.expect("a frame while plugins sleep");
    assert_eq!(frame["type"], "issue:created");
    // Well under the sleeper's 3 s deadline: nothing above waited for it.
    assert!(started.elapsed() < Duration::from_millis(2500), "{:?}", started.elapsed());
    for request in stuck {
        let report: Value = request.await.unwrap().unwrap().json().await.unwrap();
        assert_eq!(report["results"][0]["events"][0]["listeners"][0]["outcome"], "timeout", "{report}");
    }
    server.stop().await;
}
