//! Several nodes sharing fan-out through a real `redis-server` (started here, on a free port):
//! delivery across nodes in order for every target kind, recovery with `since` after a Redis
//! restart and after a node restart, scopes only reaching nodes that have subscribers, a retried
//! publish batch appended once, live clients carried through a Redis restart, one order per scope
//! with every node publishing at once, history caps and TTL as Redis holds them, and resumes that
//! cannot be proven complete (trimmed history, an epoch Redis lost) answered `recovered: false`.

use std::sync::Arc;
use std::time::{Duration, Instant};

use busbar::hub::Position;
use busbar::relay::RelayConfig;
use serde_json::{Value, json};

use crate::support::redis::Redis;
use crate::support::server::{Client, TestServer, token};

async fn node(redis: &Redis, name: &str) -> TestServer {
    node_with(redis, name, |_| {}).await
}

/// A node whose relay settings are changed by `configure`.
async fn node_with(redis: &Redis, name: &str, configure: impl FnOnce(&mut RelayConfig)) -> TestServer {
    let url = redis.url();
    let name = name.to_string();
    TestServer::start(move |c| {
        let mut relay = RelayConfig::new(url);
        relay.node_id = name;
        configure(&mut relay);
        c.relay = Some(relay);
    })
    .await
}

/// Frames until `done` says enough, within 15 s.
async fn collect(client: &mut Client, done: impl Fn(&[Value]) -> bool) -> Vec<Value> {
    let mut frames = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(15);
    while !done(&frames) {
        assert!(Instant::now() < deadline, "timed out; got {frames:#?}");
        frames.push(client.next().await);
    }
    frames
}

fn of_type<'a>(frames: &'a [Value], event_type: &str) -> Vec<&'a Value> {
    frames.iter().filter(|f| f["type"] == event_type).collect()
}

/// The `i` of every `feed:item` frame, in the order received.
fn items(frames: &[Value]) -> Vec<u64> {
    of_type(frames, "feed:item").iter().map(|f| f["payload"]["i"].as_u64().unwrap()).collect()
}

/// A client's frames through `feed:item` number `last`.
async fn items_through(client: &mut Client, last: u64) -> Vec<Value> {
    collect(client, |f| items(f).contains(&last)).await
}

/// The `seq` of every frame of `scope`, which must all be of one epoch.
fn offsets(frames: &[Value], scope: &str) -> Vec<u64> {
    let frames: Vec<&Value> = frames.iter().filter(|f| f["scope"] == scope).collect();
    assert!(frames.windows(2).all(|w| w[0]["epoch"] == w[1]["epoch"]), "one epoch: {frames:#?}");
    frames.iter().map(|f| f["seq"].as_u64().unwrap()).collect()
}

/// Posts `feed:item` number `i` to `workspace` on `node`; asserts it succeeds without waiting for
/// Redis (whose connect and response timeouts are 1 and 2 s).
async fn publish_item(http: &reqwest::Client, node: &TestServer, workspace: &str, i: u64) {
    let started = Instant::now();
    let event = json!({"type": "feed:item", "workspace_id": workspace, "payload": {"i": i}});
    let response = http.post(node.url("/v1/events")).json(&event).send().await;
    assert!(response.is_ok_and(|r| r.status() == 200), "publish {i} failed");
    assert!(started.elapsed() < Duration::from_secs(2), "publish {i} took {:?}", started.elapsed());
}

/// Waits until `node`'s relay says `what` is true of it.
async fn relay_until(node: &TestServer, what: &str, check: impl Fn(&Value) -> bool) -> Value {
    node.realtime_until(what, |realtime| check(&realtime["relay"])).await["relay"].clone()
}

fn position(frame: &Value) -> Position {
    Position { epoch: frame["epoch"].as_str().unwrap().to_string(), offset: frame["seq"].as_u64().unwrap() }
}

/// Connects to `node`'s `workspace` and resumes its workspace room from `since`; returns the
/// client and the room's `subscribe_ack` (which comes before any replayed frame).
async fn resume(node: &TestServer, workspace: &str, token: &str, since: &Position) -> (Client, Value) {
    let mut client = Client::open(node, workspace).await;
    client.send(json!({"type": "auth", "payload": {"token": token, "since": {"workspace": since}}})).await;
    assert_eq!(client.next().await["type"], "auth_ack");
    let ack = client.next().await;
    assert_eq!((ack["type"].as_str(), ack["payload"]["scope"].as_str()), (Some("subscribe_ack"), Some("workspace")), "{ack}");
    (client, ack)
}

/// `(from, i)` of every `task:message` frame of `scope`, in the order received.
fn messages(frames: &[Value], scope: &str) -> Vec<(u64, u64)> {
    of_type(frames, "task:message")
        .into_iter()
        .filter(|f| f["scope"] == scope)
        .map(|f| (f["payload"]["from"].as_u64().unwrap(), f["payload"]["i"].as_u64().unwrap()))
        .collect()
}

/// Waits until the node watches `n` scopes or more (subscriptions are asynchronous).
async fn watching(server: &TestServer, n: u64) {
    relay_until(server, &format!("the node watches {n} scopes"), |relay| {
        relay["connected"] == true && relay["watched_scopes"].as_u64().unwrap_or(0) >= n
    })
    .await;
}

/// Nodes A and B.
async fn two_nodes(redis: &Redis) -> (TestServer, TestServer) {
    (node(redis, "node-a").await, node(redis, "node-b").await)
}

/// Nodes A and B, and a client of `user` on B in ws-1, with B watching its rooms.
async fn a_reader_on_b(redis: &Redis, user: &str) -> (TestServer, TestServer, Client) {
    let (a, b) = two_nodes(redis).await;
    let reader = Client::connect(&b, "ws-1", &token(user, &["ws-1"], &[])).await;
    watching(&b, 3).await;
    (a, b, reader)
}

/// Nodes A and B, a client of `remote_user` on B and `lou` on A, both in ws-1, with both nodes
/// watching their rooms.
async fn two_nodes_with_readers(redis: &Redis, remote_user: &str) -> (TestServer, TestServer, Client, Client) {
    let (a, b) = two_nodes(redis).await;
    let remote = Client::connect(&b, "ws-1", &token(remote_user, &["ws-1"], &[])).await;
    let local = Client::connect(&a, "ws-1", &token("lou", &["ws-1"], &[])).await;
    watching(&b, 3).await;
    watching(&a, 3).await;
    (a, b, remote, local)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn what_is_published_on_one_node_reaches_clients_of_another_in_order() {
    let redis = Redis::start();
    let (a, b) = two_nodes(&redis).await;
    let grants = [("ws-1", "task", "t-1"), ("ws-1", "chat", "c-1")];
    let mut alice = Client::connect(&b, "ws-1", &token("alice", &["ws-1"], &grants)).await;
    assert_eq!(alice.subscribe("task", "t-1").await["type"], "subscribe_ack");
    assert_eq!(alice.subscribe("chat", "c-1").await["type"], "subscribe_ack");
    let mut dave_ws1 = Client::connect(&b, "ws-1", &token("dave", &["ws-1", "ws-2"], &[])).await;
    let mut dave_ws2 = Client::connect(&b, "ws-2", &token("dave", &["ws-1", "ws-2"], &[])).await;
    // workspace ws-1, ws-2, user alice, user dave, task, chat, everyone.
    watching(&b, 7).await;

    let mut events = Vec::new();
    for i in 0..5 {
        events.push(json!({"type": "issue:updated", "workspace_id": "ws-1", "payload": {"i": i}}));
        events.push(json!({"type": "task:message", "workspace_id": "ws-1", "task_id": "t-1", "payload": {"i": i}}));
        events.push(json!({"type": "chat:message", "workspace_id": "ws-1", "chat_session_id": "c-1", "payload": {"i": i}}));
    }
    events.push(json!({"type": "inbox:new", "workspace_id": "ws-1", "payload": {"item": {"recipient_id": "alice"}}}));
    events.push(json!({"type": "member:added", "workspace_id": "ws-1", "payload": {"member": {"user_id": "dave"}}}));
    events.push(json!({"type": "daemon:tick", "payload": {}}));
    a.publish_ok(json!(events)).await;

    // alice: 5 workspace + 5 task (task scope) + 5 task (workspace) + 5 chat + inbox + member + daemon.
    let frames = collect(&mut alice, |f| f.iter().any(|x| x["type"] == "daemon:tick") && f.len() >= 23).await;
    for (event_type, scope) in [("issue:updated", "workspace"), ("task:message", "task"), ("chat:message", "chat")] {
        let seen: Vec<i64> = of_type(&frames, event_type)
            .into_iter()
            .filter(|f| f["scope"] == scope)
            .map(|f| f["payload"]["i"].as_i64().unwrap())
            .collect();
        assert_eq!(seen, [0, 1, 2, 3, 4], "{event_type} in order through the {scope} scope");
    }
    for scope in ["workspace", "task", "chat"] {
        let offsets: Vec<u64> = frames.iter().filter(|f| f["scope"] == scope).map(|f| f["seq"].as_u64().unwrap()).collect();
        assert!(offsets.windows(2).all(|w| w[1] == w[0] + 1), "{scope} offsets increase by one: {offsets:?}");
    }
    assert_eq!(of_type(&frames, "inbox:new")[0]["scope"], "user");
    assert_eq!(of_type(&frames, "daemon:tick")[0]["scope"], "everyone");
    // dave: member:added once in ws-1 (workspace room), and in ws-2 through his user room.
    let d1 = collect(&mut dave_ws1, |f| f.iter().any(|x| x["type"] == "daemon:tick")).await;
    assert_eq!(of_type(&d1, "member:added").len(), 1);
    assert_eq!(of_type(&d1, "member:added")[0]["scope"], "workspace");
    let d2 = collect(&mut dave_ws2, |f| f.iter().any(|x| x["type"] == "daemon:tick")).await;
    assert_eq!(of_type(&d2, "member:added").len(), 1);
    assert_eq!(of_type(&d2, "member:added")[0]["scope"], "user");
    assert!(of_type(&d2, "issue:updated").is_empty(), "ws-2 sees nothing of ws-1");
    a.stop().await;
    b.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_receives_only_scopes_it_has_subscribers_for() {
    let redis = Redis::start();
    let (a, b, mut bob) = a_reader_on_b(&redis, "bob").await;
    let before = b.realtime().await["relay"]["received_total"].as_u64().unwrap();
    let events: Vec<Value> =
        (0..20).map(|i| json!({"type": "task:message", "workspace_id": "ws-77", "task_id": "t-77", "payload": {"i": i}})).collect();
    a.publish_ok(json!(events)).await;
    a.publish_ok(json!({"type": "issue:created", "workspace_id": "ws-1"})).await;
    let frames = collect(&mut bob, |f| !f.is_empty()).await;
    assert_eq!(frames[0]["type"], "issue:created");
    let after = b.realtime().await["relay"]["received_total"].as_u64().unwrap();
    assert_eq!(after - before, 1, "node b received only the ws-1 frame, none of ws-77's 40");
    assert!(a.realtime().await["relay"]["published_total"].as_u64().unwrap() >= 41);
    a.stop().await;
    b.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clients_recover_what_they_missed_across_a_redis_restart() {
    let mut redis = Redis::start();
    let (a, b) = two_nodes(&redis).await;
    let t = token("carol", &["ws-1"], &[]);
    let mut carol = Client::connect(&b, "ws-1", &t).await;
    // A client on the publishing node, to see local delivery go on while Redis is away.
    let mut local = Client::connect(&a, "ws-1", &token("lou", &["ws-1"], &[])).await;
    watching(&b, 3).await;
    watching(&a, 3).await;
    let http = reqwest::Client::new();
    let publish = |i: u64| {
        let http = http.clone();
        let url = a.url("/v1/events");
        async move {
            let started = Instant::now();
            let response = http.post(url).json(&json!({"type": "feed:item", "workspace_id": "ws-1", "payload": {"i": i}})).send().await;
            assert!(response.is_ok_and(|r| r.status() == 200), "publish {i} failed");
            assert!(started.elapsed() < Duration::from_secs(2), "publish {i} took {:?}", started.elapsed());
        }
    };
    for i in 0..10 {
        publish(i).await;
    }
    let seen = collect(&mut carol, |f| of_type(f, "feed:item").len() == 10).await;
    let last = position(seen.iter().rev().find(|f| f["scope"] == "workspace").unwrap());
    drop(carol);

    // Redis goes away mid-stream; publishing goes on and never hangs.
    redis.kill();
    for i in 10..20 {
        publish(i).await;
    }
    let during = collect(&mut local, |f| of_type(f, "feed:item").iter().any(|x| x["payload"]["i"] == 19)).await;
    let local_items: Vec<u64> = of_type(&during, "feed:item").iter().map(|f| f["payload"]["i"].as_u64().unwrap()).collect();
    assert!(local_items.ends_with(&(10..20).collect::<Vec<_>>()), "local delivery went on without Redis: {local_items:?}");
    redis.run();
    for i in 20..30 {
        publish(i).await;
    }
    // Everything published, outage included, reaches the streams.
    relay_until(&a, "the outbox drains", |relay| relay["outbox_depth"] == 0).await;

    // Carol reconnects and resumes from her last position.
    let mut carol = Client::open(&b, "ws-1").await;
    carol.send(json!({"type": "auth", "payload": {"token": t, "since": {"workspace": last}}})).await;
    assert_eq!(carol.next().await["type"], "auth_ack");
    let ack = carol.next().await;
    assert_eq!((ack["type"].as_str(), ack["payload"]["scope"].as_str()), (Some("subscribe_ack"), Some("workspace")), "{ack}");
    assert_eq!(ack["payload"]["recovered"], true, "{ack}");
    let frames = collect(&mut carol, |f| of_type(f, "feed:item").iter().any(|x| x["payload"]["i"] == 29)).await;
    let items: Vec<u64> = of_type(&frames, "feed:item").iter().map(|f| f["payload"]["i"].as_u64().unwrap()).collect();
    assert_eq!(items, (10..30).collect::<Vec<_>>(), "every missed event, in order, once");
    let offsets: Vec<u64> = frames.iter().filter(|f| f["scope"] == "workspace").map(|f| f["seq"].as_u64().unwrap()).collect();
    assert_eq!(offsets, (last.offset + 1..=last.offset + 20).collect::<Vec<_>>());
    let metrics = b.realtime().await;
    assert_eq!(metrics["recoveries_total"]["recovered"], 1);
    a.stop().await;
    b.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clients_of_a_restarted_node_reconnect_and_recover() {
    let redis = Redis::start();
    let (a, b) = two_nodes(&redis).await;
    let grants = [("ws-1", "task", "t-5")];
    let t = token("erin", &["ws-1"], &grants);
    let mut erin = Client::connect(&b, "ws-1", &t).await;
    assert_eq!(erin.subscribe("task", "t-5").await["type"], "subscribe_ack");
    watching(&b, 4).await;
    let step = |i: u64| json!({"type": "task:progress", "workspace_id": "ws-1", "task_id": "t-5", "payload": {"i": i}});
    a.publish_ok(json!((0..5).map(step).collect::<Vec<_>>())).await;
    let seen = collect(&mut erin, |f| f.iter().filter(|x| x["type"] == "task:progress").count() == 10).await;
    let last_task = position(seen.iter().rev().find(|f| f["scope"] == "task").unwrap());
    let last_ws = position(seen.iter().rev().find(|f| f["scope"] == "workspace").unwrap());
    drop(erin);
    b.stop().await;

    a.publish_ok(json!((5..12).map(step).collect::<Vec<_>>())).await;
    let b2 = node(&redis, "node-b").await;
    let mut erin = Client::open(&b2, "ws-1").await;
    erin.send(json!({"type": "auth", "payload": {"token": t, "since": {"workspace": last_ws}}})).await;
    assert_eq!(erin.next().await["type"], "auth_ack");
    assert_eq!(erin.next().await["payload"]["recovered"], true);
    erin.send(json!({"type": "subscribe", "payload": {"scope": "task", "id": "t-5", "since": last_task}})).await;
    let frames = collect(&mut erin, |f| f.iter().filter(|x| x["scope"] == "task").count() == 7).await;
    let ack = frames.iter().find(|f| f["type"] == "subscribe_ack").expect("an ack");
    assert_eq!(ack["payload"]["recovered"], true, "{ack}");
    let task_items: Vec<u64> =
        frames.iter().filter(|f| f["scope"] == "task").map(|f| f["payload"]["i"].as_u64().unwrap()).collect();
    assert_eq!(task_items, (5..12).collect::<Vec<_>>());
    let ws_items: Vec<u64> =
        frames.iter().filter(|f| f["scope"] == "workspace").map(|f| f["payload"]["i"].as_u64().unwrap()).collect();
    assert_eq!(ws_items, (5..12).collect::<Vec<_>>());

    // A position from another epoch, or too far back, cannot be recovered: the client is told.
    let stale = Position { epoch: "gone".into(), offset: 3 };
    let mut late = Client::connect(&b2, "ws-1", &t).await;
    late.send(json!({"type": "subscribe", "payload": {"scope": "task", "id": "t-5", "since": stale}})).await;
    let ack = collect(&mut late, |f| f.iter().any(|x| x["type"] == "subscribe_ack")).await;
    assert_eq!(ack.last().unwrap()["payload"]["recovered"], false);
    a.stop().await;
    b2.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_batch_retried_after_its_reply_was_lost_is_delivered_once() {
    let redis = Redis::start();
    let (a, b, mut bob, mut lou) = two_nodes_with_readers(&redis, "bob").await;
    let http = reqwest::Client::new();
    for i in 0..3 {
        publish_item(&http, &a, "ws-1", i).await;
    }
    let mut remote = items_through(&mut bob, 2).await;

    // Redis stops answering with a batch sent: node A's reply times out while Redis holds the
    // batch unread; A delivers locally and sends the batch again; Redis wakes and runs both.
    let sleeper = redis.sleep(4);
    let item = |i: u64| json!({"type": "feed:item", "workspace_id": "ws-1", "payload": {"i": i}});
    let batch: Vec<Value> = (3..8).map(item).collect();
    a.publish_ok(json!(batch)).await;
    let retried = |r: &Value| r["duplicates_total"].as_u64() >= Some(1) && r["outbox_depth"] == 0;
    let relay = relay_until(&a, "skipped a frame Redis already had", retried).await;
    assert!(relay["publish_errors_total"].as_u64() >= Some(1), "the first attempt failed: {relay}");
    drop(sleeper);
    publish_item(&http, &a, "ws-1", 8).await;

    remote.extend(items_through(&mut bob, 8).await);
    assert_eq!(items(&remote), (0..=8).collect::<Vec<_>>(), "another node's client gets each event once, in order");
    assert_eq!(offsets(&remote, "workspace"), (1..=9).collect::<Vec<_>>(), "each appended once");
    let local = items_through(&mut lou, 8).await;
    assert_eq!(items(&local), (0..=8).collect::<Vec<_>>(), "delivered early on node A, and not again");
    a.stop().await;
    b.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_connected_through_a_redis_restart_gets_every_event_once_in_order() {
    let mut redis = Redis::start();
    let (a, b, mut carol, mut lou) = two_nodes_with_readers(&redis, "carol").await;
    let http = reqwest::Client::new();
    for i in 0..10 {
        publish_item(&http, &a, "ws-1", i).await;
    }
    let mut remote = items_through(&mut carol, 9).await;
    let mut local = items_through(&mut lou, 9).await;

    // Redis goes away with carol still connected to node B; publishing on A goes on.
    redis.kill();
    for i in 10..20 {
        publish_item(&http, &a, "ws-1", i).await;
        // A workspace with no room on A: nobody to deliver to early, nothing to come back.
        publish_item(&http, &a, "ws-9", i).await;
    }
    local.extend(items_through(&mut lou, 19).await);
    redis.run();
    for i in 20..30 {
        publish_item(&http, &a, "ws-1", i).await;
    }
    relay_until(&a, "drained its outbox", |r| r["outbox_depth"] == 0).await;
    // A last event, after everything else reached Redis: whatever came twice comes before it.
    publish_item(&http, &a, "ws-1", 30).await;

    remote.extend(items_through(&mut carol, 30).await);
    let every: Vec<u64> = (0..=30).collect();
    assert_eq!(items(&remote), every, "node B's client got every event once, in order");
    let offsets = offsets(&remote, "workspace");
    assert!(offsets.windows(2).all(|w| w[1] == w[0] + 1), "consecutive offsets: {offsets:?}");
    local.extend(items_through(&mut lou, 30).await);
    assert_eq!(items(&local), every, "node A's client got every event once, in order");
    // Node A remembers none of the frames it delivered early: all came back or went nowhere.
    relay_until(&a, "forgot its early frames", |r| r["own_frames_tracked"] == 0).await;
    // The outage and the recovery are visible to Prometheus too.
    let metrics = http.get(a.url("/metrics")).send().await.unwrap().text().await.unwrap();
    for line in ["busbar_relay_connected 1", "busbar_relay_outbox_depth 0", "busbar_relay_own_frames_tracked 0"] {
        assert!(metrics.lines().any(|l| l == line), "{line} in /metrics:\n{metrics}");
    }
    let counter = |name: &str| -> f64 {
        metrics.lines().find_map(|l| l.strip_prefix(name)?.trim().parse().ok()).unwrap_or_else(|| panic!("{name} in /metrics"))
    };
    assert!(counter("busbar_relay_degraded_local_total") >= 10.0, "frames delivered locally while Redis was away");
    assert!(counter("busbar_relay_publish_errors_total") >= 1.0, "failed batches were counted");
    assert!(counter("busbar_relay_reconnects_total") >= 1.0, "the pub/sub connection came back");
    a.stop().await;
    b.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn per_scope_order_holds_across_nodes_all_publishing_at_once() {
    const PER_NODE: u64 = 40;
    let redis = Redis::start();
    let nodes = [node(&redis, "node-a").await, node(&redis, "node-b").await, node(&redis, "node-c").await];
    let mut clients = Vec::new();
    for (k, node) in nodes.iter().enumerate() {
        for user in ["ann", "ben"] {
            let t = token(&format!("{user}-{k}"), &["ws-1"], &[("ws-1", "task", "t-1")]);
            let mut client = Client::connect(node, "ws-1", &t).await;
            assert_eq!(client.subscribe("task", "t-1").await["type"], "subscribe_ack");
            clients.push(client);
        }
        // ws-1, t-1, both users, everyone.
        watching(node, 5).await;
    }
    // Every node publishes its own events over HTTP, all at the same time.
    let message = |from: usize, i: u64| {
        json!({"type": "task:message", "workspace_id": "ws-1", "task_id": "t-1", "payload": {"from": from, "i": i}})
    };
    let start = Arc::new(tokio::sync::Barrier::new(nodes.len()));
    let publishers: Vec<_> = nodes
        .iter()
        .enumerate()
        .map(|(k, node)| {
            let (url, start) = (node.url("/v1/events"), start.clone());
            tokio::spawn(async move {
                let http = reqwest::Client::new();
                start.wait().await;
                for i in 0..PER_NODE {
                    let response = http.post(&url).json(&message(k, i)).send().await;
                    assert!(response.is_ok_and(|r| r.status() == 200), "publish {k}/{i} failed");
                }
            })
        })
        .collect();
    for publisher in publishers {
        publisher.await.unwrap();
    }
    // A last event once every other one is in Redis: anything duplicated would come before it.
    for node in &nodes {
        relay_until(node, "drained its outbox", |r| r["outbox_depth"] == 0).await;
    }
    nodes[0].publish_ok(message(nodes.len(), 0)).await;

    let last = (nodes.len() as u64, 0);
    let total = PER_NODE * nodes.len() as u64 + 1;
    let mut orders = Vec::new();
    for (c, client) in clients.iter_mut().enumerate() {
        let frames = collect(client, |f| messages(f, "task").contains(&last) && messages(f, "workspace").contains(&last)).await;
        let (task, workspace) = (messages(&frames, "task"), messages(&frames, "workspace"));
        for (scope, seen) in [("task", &task), ("workspace", &workspace)] {
            assert_eq!(offsets(&frames, scope), (1..=total).collect::<Vec<_>>(), "client {c}: {scope} offsets, no gap or duplicate");
            assert_eq!(seen.len() as u64, total, "client {c}: every {scope} event once");
            for k in 0..nodes.len() as u64 {
                let from_k: Vec<u64> = seen.iter().filter(|m| m.0 == k).map(|m| m.1).collect();
                assert_eq!(from_k, (0..PER_NODE).collect::<Vec<_>>(), "client {c}: node {k}'s events in its order in {scope}");
            }
        }
        orders.push((task, workspace));
    }
    for (c, (task, workspace)) in orders.iter().enumerate().skip(1) {
        assert_eq!(task, &orders[0].0, "client {c} saw the task scope in the same order as client 0");
        assert_eq!(workspace, &orders[0].1, "client {c} saw the workspace scope in the same order as client 0");
    }
    for node in nodes {
        node.stop().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_scope_history_keeps_exactly_its_cap_and_expires() {
    let redis = Redis::start();
    let a = node_with(&redis, "node-a", |r| {
        r.history.task = 5;
        r.history.workspace = 8;
        r.history_ttl = Duration::from_secs(60);
    })
    .await;
    let events: Vec<Value> = (0..12)
        .map(|i| json!({"type": "task:message", "workspace_id": "ws-1", "task_id": "t-1", "payload": {"i": i}}))
        .collect();
    a.publish_ok(json!(events)).await;
    // 12 frames each to the task and the workspace scopes.
    relay_until(&a, "published 24 frames", |r| r["published_total"] == 24 && r["outbox_depth"] == 0).await;

    let mut conn = redis.conn().await;
    for (scope, cap) in [("task:ws-1:t-1", 5u64), ("workspace:ws-1", 8)] {
        let (meta, stream) = (format!("busbar:{{{scope}}}:meta"), format!("busbar:{{{scope}}}:stream"));
        let len: u64 = redis::cmd("XLEN").arg(&stream).query_async(&mut conn).await.unwrap();
        assert_eq!(len, cap, "{stream} holds exactly its cap");
        let kept: Vec<(String, Vec<(String, String)>)> =
            redis::cmd("XRANGE").arg(&stream).arg("-").arg("+").query_async(&mut conn).await.unwrap();
        let ids: Vec<String> = kept.iter().map(|(id, _)| id.clone()).collect();
        let newest: Vec<String> = (12 - cap + 1..=12).map(|o| format!("{o}-0")).collect();
        assert_eq!(ids, newest, "{stream} keeps the newest frames");
        let offset: u64 = redis::cmd("HGET").arg(&meta).arg("offset").query_async(&mut conn).await.unwrap();
        assert_eq!(offset, 12, "trimming does not move the offset");
        for key in [&meta, &stream] {
            let ttl: i64 = redis::cmd("PTTL").arg(key).query_async(&mut conn).await.unwrap();
            assert!(ttl > 0 && ttl <= 60_000, "{key} expires within the history TTL: PTTL {ttl}");
        }
    }
    a.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_resume_from_before_the_trimmed_history_is_not_recovered() {
    let redis = Redis::start();
    let capped = |r: &mut RelayConfig| r.history.workspace = 5;
    let a = node_with(&redis, "node-a", capped).await;
    let b = node_with(&redis, "node-b", capped).await;
    let t = token("carol", &["ws-1"], &[]);
    let mut carol = Client::connect(&b, "ws-1", &t).await;
    watching(&b, 3).await;
    let http = reqwest::Client::new();
    for i in 0..3 {
        publish_item(&http, &a, "ws-1", i).await;
    }
    let seen = items_through(&mut carol, 2).await;
    let at = position(seen.iter().rev().find(|f| f["scope"] == "workspace").unwrap());
    assert_eq!(at.offset, 3);
    drop(carol);
    // Ten more: offsets 4 to 13, of which the stream keeps 9 to 13.
    for i in 3..13 {
        publish_item(&http, &a, "ws-1", i).await;
    }
    relay_until(&a, "published 13 frames", |r| r["published_total"] == 13 && r["outbox_depth"] == 0).await;

    // From carol's position, and from the last one the stream cannot complete: not recovered.
    let (mut carol, ack) = resume(&b, "ws-1", &t, &at).await;
    assert_eq!(ack["payload"], json!({"scope": "workspace", "id": "ws-1", "epoch": at.epoch, "offset": 13, "workspace_id": "ws-1", "recovered": false}));
    let before_trim = Position { epoch: at.epoch.clone(), offset: 7 };
    let (mut edgar, ack) = resume(&b, "ws-1", &token("edgar", &["ws-1"], &[]), &before_trim).await;
    assert_eq!(ack["payload"]["recovered"], false, "offset 8 was trimmed: {ack}");
    // From the oldest position the stream can complete: recovered, with exactly what was missed.
    let in_window = Position { epoch: at.epoch.clone(), offset: 8 };
    let (mut fay, ack) = resume(&b, "ws-1", &token("fay", &["ws-1"], &[]), &in_window).await;
    assert_eq!(ack["payload"]["recovered"], true, "offsets 9 to 13 are all there: {ack}");

    publish_item(&http, &a, "ws-1", 13).await;
    for (name, client) in [("carol", &mut carol), ("edgar", &mut edgar)] {
        let frames = items_through(client, 13).await;
        assert_eq!(items(&frames), [13], "{name}: nothing replayed, then live frames");
        assert_eq!(offsets(&frames, "workspace"), [14], "{name}: live from the room's offset");
    }
    let frames = items_through(&mut fay, 13).await;
    assert_eq!(items(&frames), (8..=13).collect::<Vec<_>>(), "the missed frames, then live ones");
    assert_eq!(offsets(&frames, "workspace"), (9..=14).collect::<Vec<_>>());
    let metrics = b.realtime().await;
    assert_eq!(metrics["recoveries_total"], json!({"recovered": 1, "not_recovered": 2}));
    a.stop().await;
    b.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_resume_into_an_epoch_redis_lost_is_not_recovered() {
    let mut redis = Redis::start();
    let (a, b) = two_nodes(&redis).await;
    // carol's room closes while Redis is up, dan's while it is away.
    let (carol_t, dan_t) = (token("carol", &["ws-1"], &[]), token("dan", &["ws-2"], &[]));
    let mut carol = Client::connect(&b, "ws-1", &carol_t).await;
    let mut dan = Client::connect(&b, "ws-2", &dan_t).await;
    watching(&b, 5).await;
    let http = reqwest::Client::new();
    for i in 0..5 {
        publish_item(&http, &a, "ws-1", i).await;
        publish_item(&http, &a, "ws-2", i).await;
    }
    let last_of = |frames: Vec<Value>| position(frames.iter().rev().find(|f| f["scope"] == "workspace").unwrap());
    let carol_at = last_of(items_through(&mut carol, 4).await);
    let dan_at = last_of(items_through(&mut dan, 4).await);
    assert_eq!((carol_at.offset, dan_at.offset), (5, 5));

    drop(carol);
    relay_until(&b, "stopped watching carol's scopes", |r| r["watched_scopes"] == 3).await;
    redis.kill();
    relay_until(&b, "lost its subscription", |r| r["last_error"].as_str().is_some_and(|e| e.starts_with("subscribing"))).await;
    drop(dan);
    relay_until(&b, "stopped watching dan's scopes", |r| r["watched_scopes"] == 1).await;
    // Redis comes back without its data: the next frames start new epochs.
    redis.restart_empty();
    for i in 5..8 {
        publish_item(&http, &a, "ws-1", i).await;
        publish_item(&http, &a, "ws-2", i).await;
    }
    relay_until(&a, "published into the new Redis", |r| r["published_total"] == 16 && r["outbox_depth"] == 0).await;
    relay_until(&b, "subscribed again", |r| r["reconnects_total"].as_u64() >= Some(1)).await;

    for (workspace, t, at) in [("ws-1", &carol_t, &carol_at), ("ws-2", &dan_t, &dan_at)] {
        let (mut client, ack) = resume(&b, workspace, t, at).await;
        assert_eq!(ack["payload"]["recovered"], false, "{workspace}: {ack}");
        let epoch = ack["payload"]["epoch"].as_str().unwrap().to_string();
        assert!(!epoch.is_empty() && epoch != at.epoch, "{workspace}: a new epoch: {ack}");
        assert_eq!(ack["payload"]["offset"], 3, "{workspace}: {ack}");
        publish_item(&http, &a, workspace, 8).await;
        let frames = items_through(&mut client, 8).await;
        assert_eq!(items(&frames), [8], "{workspace}: nothing replayed, then live frames");
        assert_eq!(position(of_type(&frames, "feed:item")[0]), Position { epoch, offset: 4 });
    }
    assert_eq!(b.realtime().await["recoveries_total"], json!({"recovered": 0, "not_recovered": 2}));
    a.stop().await;
    b.stop().await;
}

#[test]
fn relay_config_is_validated() {
    let env = |k: &str| (k == "BUSBAR_REDIS_URL").then(|| "redis://127.0.0.1:1".to_string());
    let config = busbar::config::Config::load_with(&busbar::config::Overrides::default(), env).unwrap();
    assert_eq!(config.relay.unwrap().url, "redis://127.0.0.1:1");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_shutting_down_still_relays_what_it_accepted() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let redis = Redis::start();
    let (a, b, mut carol) = a_reader_on_b(&redis, "carol").await;
    // A publish in flight on A when A starts shutting down: its handler is reading the body (the
    // server said `100 Continue`), which is not sent yet.
    let events: Vec<Value> = (0..50).map(|i| json!({"type": "feed:item", "workspace_id": "ws-1", "payload": {"i": i}})).collect();
    let body = serde_json::to_vec(&events).unwrap();
    let mut request = tokio::net::TcpStream::connect(a.addr).await.unwrap();
    let head = format!(
        "POST /v1/events HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\nContent-Length: {}\r\nExpect: 100-continue\r\n\r\n",
        body.len()
    );
    request.write_all(head.as_bytes()).await.unwrap();
    let mut interim = Vec::new();
    while !interim.ends_with(b"\r\n\r\n") {
        let mut byte = [0u8; 1];
        assert_eq!(request.read(&mut byte).await.unwrap(), 1, "the server answers the expectation");
        interim.push(byte[0]);
    }
    assert!(interim.starts_with(b"HTTP/1.1 100"), "{}", String::from_utf8_lossy(&interim));
    a.shutdown.cancel();
    // Long enough for every part of A to see the shutdown before the request completes. There
    // is nothing to wait for instead: A's sockets close only after in-flight requests finish.
    tokio::time::sleep(Duration::from_millis(300)).await;
    request.write_all(&body).await.unwrap();
    let mut response = vec![0; 64];
    let read = request.read(&mut response).await.unwrap();
    let status = String::from_utf8_lossy(&response[..read]).to_string();
    assert!(status.starts_with("HTTP/1.1 200"), "the in-flight publish finished: {status}");
    drop(request);
    a.stop().await;
    // A marker through B itself: everything relayed from A came before it.
    let http = reqwest::Client::new();
    publish_item(&http, &b, "ws-1", 1000).await;
    let frames = items_through(&mut carol, 1000).await;
    assert_eq!(items(&frames), (0..50).chain([1000]).collect::<Vec<u64>>(), "what A accepted while stopping reached B, once, in order");
    b.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_publishes_on_one_node_all_reach_another_once() {
    let redis = Redis::start();
    let (a, b, mut carol) = a_reader_on_b(&redis, "carol").await;
    // Many publishes at once on A: their frames enter A's relay outbox from several threads.
    let http = reqwest::Client::new();
    let publishers: Vec<_> = (0..8u64)
        .map(|p| {
            let (http, url) = (http.clone(), a.url("/v1/events"));
            tokio::spawn(async move {
                for i in 0..25 {
                    let event = json!({"type": "feed:item", "workspace_id": "ws-1", "payload": {"i": p * 25 + i}});
                    assert_eq!(http.post(&url).json(&event).send().await.unwrap().status(), 200);
                }
            })
        })
        .collect();
    for publisher in publishers {
        publisher.await.unwrap();
    }
    relay_until(&a, "drained its outbox", |r| r["outbox_depth"] == 0).await;
    publish_item(&http, &a, "ws-1", 1000).await;
    let frames = items_through(&mut carol, 1000).await;
    let mut received = items(&frames);
    received.sort();
    assert_eq!(received, (0..200).chain([1000]).collect::<Vec<u64>>(), "every event once");
    let offsets = offsets(&frames, "workspace");
    assert!(offsets.windows(2).all(|w| w[1] == w[0] + 1), "consecutive offsets: {offsets:?}");
    a.stop().await;
    b.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_task_of_one_workspace_is_never_relayed_or_replayed_to_another() {
    let redis = Redis::start();
    let (a, b) = two_nodes(&redis).await;
    // The same task id in two workspaces: two rooms, two streams.
    let events: Vec<Value> = [("A", 0), ("A", 1), ("A", 2), ("B", 3), ("B", 4)]
        .into_iter()
        .map(|(w, i)| json!({"type": "task:message", "workspace_id": w, "task_id": "t-1", "payload": {"i": i}}))
        .collect();
    a.publish_ok(json!(events)).await;
    relay_until(&a, "published 10 frames", |r| r["published_total"] == 10 && r["outbox_depth"] == 0).await;
    let mut conn = redis.conn().await;
    for (key, len) in [("busbar:{task:A:t-1}:stream", 3u64), ("busbar:{task:B:t-1}:stream", 2)] {
        let got: u64 = redis::cmd("XLEN").arg(key).query_async(&mut conn).await.unwrap();
        assert_eq!(got, len, "{key}");
    }

    // Bob, granted every task of B, resumes t-1 from the start on the other node: B's history only.
    let mut bob = Client::connect(&b, "B", &token("bob", &["B"], &[("B", "task", "*")])).await;
    bob.send(json!({"type": "subscribe", "payload": {"scope": "task", "id": "t-1", "since": {"epoch": "", "offset": 0}}})).await;
    let ack = bob.next().await;
    assert_eq!((&ack["payload"]["recovered"], &ack["payload"]["workspace_id"]), (&json!(true), &json!("B")), "{ack}");
    let replayed = collect(&mut bob, |f| f.len() == 2).await;
    assert_eq!(replayed.iter().map(|f| f["payload"]["i"].as_u64().unwrap()).collect::<Vec<_>>(), [3, 4]);
    assert!(replayed.iter().all(|f| f["workspace_id"] == "B" && f["scope"] == "task"), "{replayed:#?}");

    // Live: A's next frame for t-1 reaches A's subscriber on node b, and never Bob.
    let mut alice = Client::connect(&b, "A", &token("alice", &["A"], &[("A", "task", "t-1")])).await;
    assert_eq!(alice.subscribe("task", "t-1").await["type"], "subscribe_ack");
    // Each client's workspace, user and task rooms.
    watching(&b, 6).await;
    a.publish_ok(json!([
        {"type": "task:message", "workspace_id": "A", "task_id": "t-1", "payload": {"i": 5}},
        {"type": "task:message", "workspace_id": "B", "task_id": "t-1", "payload": {"i": 6}},
    ]))
    .await;
    let live = collect(&mut alice, |f| f.iter().any(|f| f["scope"] == "task")).await;
    let task = live.iter().find(|f| f["scope"] == "task").unwrap();
    assert_eq!((&task["payload"]["i"], &task["workspace_id"]), (&json!(5), &json!("A")));
    let to_bob = collect(&mut bob, |f| f.len() == 1).await;
    assert_eq!((&to_bob[0]["payload"]["i"], &to_bob[0]["workspace_id"]), (&json!(6), &json!("B")), "{to_bob:#?}");
}

/// A room big enough for a drainer (40 clients on node B) fed from node A: every client gets
/// every frame once, in order, and a client resuming on B while frames stream in (from a
/// position another client just saw) recovers exactly what followed it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_big_room_fed_from_another_node_stays_in_order_and_a_resume_mid_stream_recovers() {
    let redis = Redis::start();
    let (a, b) = two_nodes(&redis).await;
    let mut readers = Vec::new();
    for n in 0..40 {
        readers.push(Client::connect(&b, "ws-1", &token(&format!("r{n}"), &["ws-1"], &[])).await);
    }
    watching(&b, 41).await;
    const LAST: u64 = 400;
    let publisher = {
        let url = a.url("/v1/events");
        tokio::spawn(async move {
            let http = reqwest::Client::new();
            for batch in 0..LAST / 10 {
                let events: Vec<Value> = (1..=10).map(|i| json!({"type": "feed:item", "workspace_id": "ws-1", "payload": {"i": batch * 10 + i}})).collect();
                assert_eq!(http.post(&url).json(&events).send().await.unwrap().status(), 200);
            }
        })
    };
    // Reader 0 sees the first 100; a client resumes from there while the rest stream in.
    let early = collect(&mut readers[0], |f| items(f).len() >= 100).await;
    let since = position(of_type(&early, "feed:item").last().unwrap());
    let (mut late, ack) = resume(&b, "ws-1", &token("late", &["ws-1"], &[]), &since).await;
    assert_eq!(ack["payload"]["recovered"], true, "{ack}");
    let resumed = items_through(&mut late, LAST).await;
    let after = offsets(&resumed, "workspace");
    assert_eq!(after, (since.offset + 1..=since.offset + after.len() as u64).collect::<Vec<u64>>(), "each offset after `since` once");
    assert_eq!(items(&resumed), (items(&early).last().unwrap() + 1..=LAST).collect::<Vec<u64>>());
    publisher.await.unwrap();
    let mut rest = items_through(&mut readers[0], LAST).await;
    let mut all = early;
    all.append(&mut rest);
    assert_eq!(items(&all), (1..=LAST).collect::<Vec<u64>>());
    for (n, reader) in readers.iter_mut().enumerate().skip(1) {
        let frames = items_through(reader, LAST).await;
        assert_eq!(items(&frames), (1..=LAST).collect::<Vec<u64>>(), "reader {n}");
        let seen = offsets(&frames, "workspace");
        assert!(seen.windows(2).all(|w| w[1] == w[0] + 1), "reader {n}: {seen:?}");
    }
    a.stop().await;
    b.stop().await;
}
