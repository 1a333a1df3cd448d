//! Several nodes sharing fan-out through a real `redis-server` (started here, on a free port):
//! delivery across nodes in order for every target kind, recovery with `since` after a Redis
//! restart and after a node restart, scopes only reaching nodes that have subscribers, a retried
//! publish batch appended once, and live clients carried through a Redis restart.

use std::io::{Read, Write};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use busbar::hub::Position;
use busbar::relay::RelayConfig;
use serde_json::{Value, json};

use crate::server::{Client, TestServer, token};

/// A `redis-server` of our own, persisting every write (so a restart keeps the streams), with
/// `DEBUG` allowed from this machine (to make it stop answering for a while).
struct Redis {
    port: u16,
    dir: tempfile::TempDir,
    child: Option<Child>,
}

impl Redis {
    fn start() -> Redis {
        let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        let mut redis = Redis { port, dir: tempfile::tempdir().unwrap(), child: None };
        redis.run();
        redis
    }

    fn run(&mut self) {
        let child = Command::new("redis-server")
            .args(["--port", &self.port.to_string(), "--bind", "127.0.0.1", "--save", "", "--appendonly", "yes"])
            .args(["--appendfsync", "always", "--enable-debug-command", "local", "--dir"])
            .arg(self.dir.path())
            .stdout(Stdio::null())
            .spawn()
            .expect("redis-server is installed (.ci/run installs it)");
        self.child = Some(child);
        let started = Instant::now();
        while std::net::TcpStream::connect(("127.0.0.1", self.port)).is_err() {
            assert!(started.elapsed() < Duration::from_secs(10), "redis-server did not start");
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    /// Makes Redis stop doing anything for `seconds` (`DEBUG SLEEP`: it reads nothing, answers
    /// nothing, then runs what was sent meanwhile), and returns once it is asleep.
    fn sleep(&self, seconds: u64) -> std::net::TcpStream {
        let mut sleeper = std::net::TcpStream::connect(("127.0.0.1", self.port)).unwrap();
        sleeper.write_all(format!("DEBUG SLEEP {seconds}\r\n").as_bytes()).unwrap();
        let deadline = Instant::now() + Duration::from_secs(5);
        while self.answers_ping() {
            assert!(Instant::now() < deadline, "redis-server never went to sleep");
        }
        sleeper
    }

    /// Whether a fresh connection's PING is answered within 300 ms.
    fn answers_ping(&self) -> bool {
        let mut probe = std::net::TcpStream::connect(("127.0.0.1", self.port)).unwrap();
        probe.set_read_timeout(Some(Duration::from_millis(300))).unwrap();
        probe.write_all(b"PING\r\n").unwrap();
        probe.read(&mut [0u8; 16]).is_ok_and(|n| n > 0)
    }
}

impl Drop for Redis {
    fn drop(&mut self) {
        self.kill();
    }
}

async fn node(redis: &Redis, name: &str) -> TestServer {
    let url = redis.url();
    let name = name.to_string();
    TestServer::start(move |c| {
        let mut relay = RelayConfig::new(url);
        relay.node_id = name;
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

/// Waits until `node`'s relay says `what` is true of it (within 15 s).
async fn relay_until(node: &TestServer, what: &str, check: impl Fn(&Value) -> bool) -> Value {
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let relay = node.realtime().await["relay"].clone();
        if check(&relay) {
            return relay;
        }
        assert!(Instant::now() < deadline, "never {what}: {relay}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn position(frame: &Value) -> Position {
    Position { epoch: frame["epoch"].as_str().unwrap().to_string(), offset: frame["seq"].as_u64().unwrap() }
}

/// Waits until the node watches `n` scopes or more (subscriptions are asynchronous).
async fn watching(server: &TestServer, n: u64) {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let relay = server.realtime().await["relay"].clone();
        if relay["connected"] == true && relay["watched_scopes"].as_u64().unwrap_or(0) >= n {
            return;
        }
        assert!(Instant::now() < deadline, "node never watched {n} scopes: {relay}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn what_is_published_on_one_node_reaches_clients_of_another_in_order() {
    let redis = Redis::start();
    let a = node(&redis, "node-a").await;
    let b = node(&redis, "node-b").await;
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
    let a = node(&redis, "node-a").await;
    let b = node(&redis, "node-b").await;
    let mut bob = Client::connect(&b, "ws-1", &token("bob", &["ws-1"], &[])).await;
    watching(&b, 3).await;
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
    let a = node(&redis, "node-a").await;
    let b = node(&redis, "node-b").await;
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
    let deadline = Instant::now() + Duration::from_secs(15);
    while a.realtime().await["relay"]["outbox_depth"] != 0 {
        assert!(Instant::now() < deadline, "the outbox never drained");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

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
    let a = node(&redis, "node-a").await;
    let b = node(&redis, "node-b").await;
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
    let a = node(&redis, "node-a").await;
    let b = node(&redis, "node-b").await;
    let mut bob = Client::connect(&b, "ws-1", &token("bob", &["ws-1"], &[])).await;
    let mut lou = Client::connect(&a, "ws-1", &token("lou", &["ws-1"], &[])).await;
    watching(&b, 3).await;
    watching(&a, 3).await;
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
    let a = node(&redis, "node-a").await;
    let b = node(&redis, "node-b").await;
    let mut carol = Client::connect(&b, "ws-1", &token("carol", &["ws-1"], &[])).await;
    let mut lou = Client::connect(&a, "ws-1", &token("lou", &["ws-1"], &[])).await;
    watching(&b, 3).await;
    watching(&a, 3).await;
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

#[test]
fn relay_config_is_validated() {
    let env = |k: &str| (k == "BUSBAR_REDIS_URL").then(|| "redis://127.0.0.1:1".to_string());
    let config = busbar::config::Config::load_with(&busbar::config::Overrides::default(), env).unwrap();
    assert_eq!(config.relay.unwrap().url, "redis://127.0.0.1:1");
    let _ = PathBuf::new();
}
