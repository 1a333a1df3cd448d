//! Tenants stay apart (issue #13): rooms belong to a workspace, plugins reach only their event's
//! workspace, `/ws` refuses what a rebinding page or a proxy would bring in on the development
//! secret, connections are bounded in number and in time, and tokens are checked to the edge.

use std::time::{Duration, Instant};

use busbar::config::DEV_JWT_SECRET;
use busbar::hub::{Claims, auth};
use serde_json::json;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::support;
use crate::support::server::{Client, TestServer, barrier, token, types};
use crate::support::wait::until_ok;

async fn install_trespasser(server: &TestServer) {
    let form = reqwest::multipart::Form::new()
        .part("component", reqwest::multipart::Part::bytes(std::fs::read(support::built("hostile", "trespasser")).unwrap()))
        .text("manifest", "name = \"trespasser\"\nsubscriptions = [\"trespass:*\"]\n");
    let response = reqwest::Client::new().put(server.url("/v1/plugins/trespasser")).multipart(form).send().await.unwrap();
    assert_eq!(response.status(), 201);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_grant_in_one_workspace_never_yields_another_workspaces_frames() {
    let server = TestServer::start(|_| {}).await;
    install_trespasser(&server).await;
    let mut alice = Client::connect(&server, "A", &token("alice", &["A"], &[("A", "task", "t-1"), ("A", "chat", "c-1")])).await;
    // Bob's grants in B cover every task and chat id, t-1 and c-1 included.
    let mut bob = Client::connect(&server, "B", &token("bob", &["B"], &[("B", "task", "*"), ("B", "chat", "*")])).await;
    for (scope, id) in [("task", "t-1"), ("chat", "c-1")] {
        assert_eq!(alice.subscribe(scope, id).await["type"], "subscribe_ack");
        let ack = bob.subscribe(scope, id).await;
        assert_eq!((ack["type"].as_str(), ack["payload"]["workspace_id"].as_str()), (Some("subscribe_ack"), Some("B")), "{ack}");
    }
    // Naming A's room from B is refused, whatever B grants.
    bob.send(json!({"type": "subscribe", "payload": {"scope": "task", "id": "t-1", "workspace_id": "A"}})).await;
    assert_eq!(bob.next().await["payload"]["error"], "forbidden");
    // Carol is connected to both workspaces.
    let carol_token = token("carol", &["A", "B"], &[]);
    let mut carol_a = Client::connect(&server, "A", &carol_token).await;
    let mut carol_b = Client::connect(&server, "B", &carol_token).await;

    server
        .publish_ok(json!([
            {"type": "task:message", "workspace_id": "A", "task_id": "t-1", "payload": {"secret": "A's task"}},
            {"type": "chat:message", "workspace_id": "A", "chat_session_id": "c-1", "payload": {"secret": "A's chat"}},
            {"type": "issue:created", "workspace_id": "A", "payload": {"secret": "A's issue"}},
            {"type": "trespass:try", "workspace_id": "A", "payload": {"try": "stay", "user": "carol"}},
            {"type": "task:message", "workspace_id": "B", "task_id": "t-1", "payload": {"n": "B's task"}},
        ]))
        .await;
    barrier(&server).await;

    let seen_by_bob = bob.until_barrier().await;
    assert!(!seen_by_bob.iter().any(|f| f.to_string().contains("A's")), "{seen_by_bob:#?}");
    assert_eq!(types(&seen_by_bob), ["task:message", "task:message"], "B's task, in its task room and B's room");
    assert!(seen_by_bob.iter().all(|f| f["workspace_id"] == "B"), "{seen_by_bob:#?}");

    let seen_by_alice = alice.until_barrier().await;
    assert!(seen_by_alice.iter().all(|f| f["workspace_id"] == "A"), "{seen_by_alice:#?}");
    let rooms: Vec<(&str, &str)> = seen_by_alice
        .iter()
        .filter(|f| f["payload"]["secret"].is_string())
        .map(|f| (f["scope"].as_str().unwrap(), f["type"].as_str().unwrap()))
        .collect();
    assert_eq!(rooms, [("task", "task:message"), ("workspace", "task:message"), ("chat", "chat:message"), ("workspace", "issue:created")]);

    // A plugin's message to Carol, handling an event of A, reaches her connection to A; her
    // connection to B sees only the position.
    let to_a = carol_a.until_barrier().await;
    let message = to_a.iter().find(|f| f["type"] == "trespass:message" && f["scope"] == "user").expect("carol in A got it");
    assert_eq!((message["scope"].as_str(), message["workspace_id"].as_str()), (Some("user"), Some("A")));
    let to_b = carol_b.until_barrier().await;
    assert!(!to_b.iter().any(|f| f.to_string().contains("A's") || f["type"] == "trespass:message"), "{to_b:#?}");
    let skip = to_b.iter().find(|f| f["type"] == "skip").expect("a skip keeps carol's user room gap-free in B");
    assert_eq!((&skip["seq"], &message["seq"]), (&message["seq"], &skip["seq"]));
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_plugins_trespass_is_refused_and_counted_and_its_neighbours_serve() {
    let server = TestServer::start(|_| {}).await;
    install_trespasser(&server).await;
    let mut bob = Client::connect(&server, "B", &token("bob", &["B"], &[])).await;
    for attempt in [json!({"try": "workspace", "to": "B"}), json!({"try": "everyone"}), json!({"try": "user", "user": "bob"})] {
        let report = server.publish_ok(json!({"type": "trespass:try", "workspace_id": "A", "payload": attempt})).await;
        let outcomes = &report["results"][0]["events"][0]["listeners"];
        let trespasser = outcomes.as_array().unwrap().iter().find(|l| l["listener"] == "trespasser").unwrap();
        let expected = if attempt["try"] == "user" { "ok" } else { "policy_denied" };
        assert_eq!(trespasser["outcome"], expected, "{attempt}: {report}");
        assert!(outcomes.as_array().unwrap().iter().filter(|l| l["listener"] != "trespasser").all(|l| l["outcome"] == "ok"), "{report}");
    }
    barrier(&server).await;
    // Bob (connected to B only) got nothing of A's: not the room message, not the broadcast;
    // the user message was for his connections to A, so his user room shows only its position.
    let seen = bob.until_barrier().await;
    assert_eq!(types(&seen), ["skip"], "{seen:#?}");
    let metrics = reqwest::get(server.url("/metrics")).await.unwrap().text().await.unwrap();
    assert!(metrics.contains("busbar_plugin_calls_total{plugin=\"trespasser\",outcome=\"policy_denied\"} 2"), "{metrics}");
    assert!(metrics.contains("busbar_plugin_limit_trips_total{plugin=\"trespasser\",limit=\"policy\"} 2"), "{metrics}");
    server.stop().await;
}

/// An upgrade request to `/ws` with the given headers, raw, so that `Host` can be anything.
async fn upgrade_status(server: &TestServer, host: &str, extra: &str) -> u16 {
    let mut tcp = TcpStream::connect(server.addr).await.unwrap();
    let request = format!(
        "GET /ws?workspace_id=ws-1 HTTP/1.1\r\nHost: {host}\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\
         Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n{extra}\r\n"
    );
    tcp.write_all(request.as_bytes()).await.unwrap();
    let mut response = vec![0u8; 256];
    let n = tokio::time::timeout(Duration::from_secs(10), tcp.read(&mut response)).await.unwrap().unwrap();
    let head = String::from_utf8_lossy(&response[..n]).to_string();
    head.split_whitespace().nth(1).and_then(|s| s.parse().ok()).unwrap_or_else(|| panic!("{head}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn on_the_development_secret_ws_refuses_rebinding_pages_and_proxied_clients() {
    let server = TestServer::start(|_| {}).await;
    let port = server.addr.port();
    let local = format!("localhost:{port}");
    assert_eq!(upgrade_status(&server, &local, "").await, 101, "a local client");
    assert_eq!(upgrade_status(&server, &local, &format!("Origin: http://{local}\r\n")).await, 101, "a local page");
    // A page at http://evil.example:<port> that rebound its name to 127.0.0.1.
    let evil = format!("evil.example:{port}");
    assert_eq!(upgrade_status(&server, &evil, &format!("Origin: http://{evil}\r\n")).await, 403);
    assert_eq!(upgrade_status(&server, &evil, "").await, 403);
    assert_eq!(upgrade_status(&server, &local, "X-Forwarded-For: 203.0.113.9\r\n").await, 403, "a proxied client");
    server.stop().await;

    // With a real secret, anyone who has a token may connect by any name.
    let server = TestServer::start(|c| {
        c.jwt_secret = b"an-actual-secret-0123456789-abcdefghijklmnop".to_vec();
        c.dev_secret = false;
    })
    .await;
    let name = format!("busbar.example:{}", server.addr.port());
    assert_eq!(upgrade_status(&server, &name, &format!("Origin: http://{name}\r\n")).await, 101);
    server.stop().await;
}

/// Reads from `tcp` until the server closes it; returns what it sent and how long that took.
async fn until_closed(tcp: &mut TcpStream, limit: Duration) -> (String, Duration) {
    let started = Instant::now();
    let mut received = Vec::new();
    let mut buffer = [0u8; 1024];
    loop {
        match tokio::time::timeout_at((started + limit).into(), tcp.read(&mut buffer)).await {
            Ok(Ok(0)) | Ok(Err(_)) => return (String::from_utf8_lossy(&received).to_string(), started.elapsed()),
            Ok(Ok(n)) => received.extend_from_slice(&buffer[..n]),
            Err(_) => panic!("still open after {limit:?}"),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_headers_slow_bodies_and_idle_connections_are_closed() {
    let server = TestServer::start(|c| {
        c.connection_limits.header_timeout = Duration::from_secs(1);
        c.connection_limits.body_timeout = Duration::from_secs(1);
    })
    .await;
    // Headers that never end.
    let mut slow = TcpStream::connect(server.addr).await.unwrap();
    slow.write_all(b"GET /health HTTP/1.1\r\nHost: localhost\r\nX-Slow: ").await.unwrap();
    let (_, took) = until_closed(&mut slow, Duration::from_secs(8)).await;
    assert!(took < Duration::from_secs(5), "held {took:?}");
    // A body that never ends.
    let mut slow = TcpStream::connect(server.addr).await.unwrap();
    slow.write_all(b"POST /v1/events HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/json\r\nContent-Length: 1000\r\n\r\n{\"type\":").await.unwrap();
    let (response, took) = until_closed(&mut slow, Duration::from_secs(8)).await;
    assert!(took < Duration::from_secs(5), "held {took:?}");
    assert!(response.is_empty() || response.starts_with("HTTP/1.1 4"), "{response}");
    // A keep-alive connection that goes quiet after a request.
    let mut idle = TcpStream::connect(server.addr).await.unwrap();
    idle.write_all(b"GET /health HTTP/1.1\r\nHost: localhost\r\n\r\n").await.unwrap();
    let (response, took) = until_closed(&mut idle, Duration::from_secs(8)).await;
    assert!(response.starts_with("HTTP/1.1 200"), "{response}");
    assert!(took < Duration::from_secs(5), "idle for {took:?}");
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_are_capped_in_all_per_address_and_per_user() {
    let server = TestServer::start(|c| {
        c.connection_limits.max_connections = 3;
        c.hub.max_connections_per_user = 2;
    })
    .await;
    let user = token("dora", &["ws-1"], &[]);
    let _first = Client::connect(&server, "ws-1", &user).await;
    let _second = Client::connect(&server, "ws-1", &user).await;
    // A third for the same user is refused after authenticating.
    let mut third = Client::open(&server, "ws-1").await;
    third.send(json!({"type": "auth", "payload": {"token": user}})).await;
    let error = third.next().await;
    assert_eq!(error["payload"]["code"], "too_many_connections", "{error}");
    assert_eq!(third.close_code().await, Some(4429));
    drop(third);
    // Two are open and the third's place comes back: one more fits, then 503.
    let mut other = until_ok("the third's place comes back", async || Client::try_open(&server, "ws-1").await).await;
    other.send(json!({"type": "auth", "payload": {"token": token("erin", &["ws-1"], &[])}})).await;
    assert_eq!(other.next().await["type"], "auth_ack");
    let mut refused = TcpStream::connect(server.addr).await.unwrap();
    let (response, _) = until_closed(&mut refused, Duration::from_secs(5)).await;
    assert!(response.starts_with("HTTP/1.1 503"), "{response}");
    server.stop().await;

    let server = TestServer::start(|c| c.connection_limits.max_per_address = 1).await;
    // Connections are admitted in the order they were made, so `_held` counts before `refused`.
    let _held = TcpStream::connect(server.addr).await.unwrap();
    let mut refused = TcpStream::connect(server.addr).await.unwrap();
    let (response, _) = until_closed(&mut refused, Duration::from_secs(5)).await;
    assert!(response.starts_with("HTTP/1.1 429"), "{response}");
    assert!(response.contains("too many connections from this address"), "{response}");
    drop(_held);
    // Until the server has seen `_held` close, asking is itself refused (and counted); a refusal
    // can also reach the client as a reset instead of a 429.
    let (refused_seen, failed) = (std::sync::atomic::AtomicU64::new(0), std::sync::atomic::AtomicU64::new(0));
    let metrics = until_ok("the address's place comes back", async || {
        let response = reqwest::get(server.url("/metrics")).await.map_err(|e| {
            failed.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            e.to_string()
        })?;
        if response.status() != 200 {
            failed.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            if response.status() == 429 {
                refused_seen.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            }
            return Err(response.status().to_string());
        }
        response.text().await.map_err(|e| e.to_string())
    })
    .await;
    let line = metrics.lines().find(|l| l.starts_with("busbar_connections_refused_total{reason=\"per_address\"}")).unwrap();
    let counted: u64 = line.rsplit(' ').next().unwrap().parse().unwrap();
    let (least, most) = (1 + refused_seen.into_inner(), 1 + failed.into_inner());
    assert!((least..=most).contains(&counted), "{counted} refusals counted, expected {least} to {most}: {metrics}");
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reader_whose_buffers_are_full_is_evicted_within_the_age_bound() {
    let server = TestServer::start(|c| c.hub.max_queue_age = Duration::from_secs(1)).await;
    // A client with a tiny receive buffer that never reads: frames pile up in the server's
    // kernel send buffer, where the outbox cannot see them age.
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.set_recv_buffer_size(4096).unwrap();
    let tcp = socket.connect(server.addr).await.unwrap();
    let url = format!("ws://{}/ws?workspace_id=ws-1", server.addr);
    let (mut ws, _) = tokio_tungstenite::client_async(url, tcp).await.unwrap();
    use futures_util::SinkExt;
    let auth = json!({"type": "auth", "payload": {"token": token("slowpoke", &["ws-1"], &[])}}).to_string();
    ws.send(tokio_tungstenite::tungstenite::Message::text(auth)).await.unwrap();
    // 1 KiB every 50 ms: far less than the server's send buffer takes in a second.
    let started = Instant::now();
    let mut evicted = None;
    while started.elapsed() < Duration::from_secs(8) {
        let filler = "x".repeat(1000);
        server.publish_ok(json!({"type": "issue:created", "workspace_id": "ws-1", "payload": {"filler": filler}})).await;
        if server.realtime().await["slow_evictions_total"].as_u64() > Some(0) {
            evicted = Some(started.elapsed());
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let evicted = evicted.expect("the stalled reader was evicted");
    // Its first unread frames filled its 4 KiB in a few hundred ms; the bound is 1 s.
    assert!(evicted < Duration::from_secs(4), "evicted after {evicted:?}");
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_overflowing_exp_and_a_token_refresh() {
    let server = TestServer::start(|_| {}).await;
    let claims = |sub: &str, exp: u64| Claims { sub: sub.into(), exp, workspaces: vec!["ws-1".into()], grants: Default::default() };
    // exp far past any clock: the session lives (at most a year) and answers.
    let mut forever = Client::connect(&server, "ws-1", &auth::mint(DEV_JWT_SECRET.as_bytes(), &claims("fin", u64::MAX))).await;
    forever.send(json!({"type": "ping"})).await;
    assert_eq!(forever.next().await["type"], "pong");

    // A token about to expire, refreshed by a second auth frame.
    let now = busbar::event::now_ms() / 1000;
    let mut client = Client::connect(&server, "ws-1", &auth::mint(DEV_JWT_SECRET.as_bytes(), &claims("gus", now + 2))).await;
    client.send(json!({"type": "auth", "payload": {"token": "garbage"}})).await;
    assert_eq!(client.next().await, json!({"type": "auth_error", "payload": {"error": "invalid_token"}}));
    let someone_else = auth::mint(DEV_JWT_SECRET.as_bytes(), &claims("hal", now + 600));
    client.send(json!({"type": "auth", "payload": {"token": someone_else}})).await;
    assert_eq!(client.next().await, json!({"type": "auth_error", "payload": {"error": "other_user"}}));
    let fresh = auth::mint(DEV_JWT_SECRET.as_bytes(), &claims("gus", now + 600));
    client.send(json!({"type": "auth", "payload": {"token": fresh}})).await;
    assert_eq!(client.next().await, json!({"type": "auth_ack", "payload": {"exp": now + 600}}));
    // Past the first token's exp (whole seconds).
    while busbar::event::now_ms() / 1000 <= now + 2 {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    client.send(json!({"type": "ping"})).await;
    assert_eq!(client.next().await["type"], "pong", "alive past the first token's exp");
    // Without a refresh, the connection ends at exp with 4501.
    let soon = busbar::event::now_ms() / 1000 + 2;
    let mut lapsing = Client::connect(&server, "ws-1", &auth::mint(DEV_JWT_SECRET.as_bytes(), &claims("ivy", soon))).await;
    assert_eq!(lapsing.close_code().await, Some(4501));
    server.stop().await;
}
