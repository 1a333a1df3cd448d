//! What busbar keeps across restarts, through a real `busbar serve` process and its data
//! directory: plugins deployed through the API (versions, positions, rollbacks, deletions),
//! plugins' kv state, the store's errors at start, and `--ephemeral`.

use std::path::Path;
use std::time::Duration;

use serde_json::{Value, json};

use crate::support::process::{KillOnDrop, Lines, busbar, exit_within};
use crate::support::server::TestServer;

/// A running `busbar serve` (the built-in example plugins) and what it printed.
struct Node {
    process: KillOnDrop,
    addr: String,
    _log: Lines,
}

impl Node {
    /// Starts `busbar serve` with `args` and waits until it listens.
    fn start(args: &[&str]) -> Node {
        Node::start_with(args, |_| {})
    }

    /// `start`, with the command changed by `configure` first.
    fn start_with(args: &[&str], configure: impl FnOnce(&mut std::process::Command)) -> Node {
        let mut command = busbar();
        command.args(["serve", "--listen", "127.0.0.1:0", "--no-cache"]).args(args).stderr(std::process::Stdio::piped());
        configure(&mut command);
        let mut child = command.spawn().unwrap();
        let mut log = Lines::of(child.stderr.take().unwrap());
        let listening = log.wait_for("the server listens", |l| l.starts_with("busbar listening on http://"));
        let addr = listening.trim_start_matches("busbar listening on http://").split_whitespace().next().unwrap().to_string();
        Node { process: KillOnDrop(Some(child)), addr, _log: log }
    }

    fn in_dir(dir: &Path) -> Node {
        Node::start(&["--data-dir", dir.to_str().unwrap()])
    }

    /// Sends `request` (built against this node's address); returns the status and the JSON
    /// body (`null` when there is none).
    fn call(&self, request: impl FnOnce(&reqwest::Client, &str) -> reqwest::RequestBuilder) -> (u16, Value) {
        call(&self.addr, request).unwrap()
    }

    fn deploy_echo(&self, subscription: &str) -> u16 {
        deploy_echo(&self.addr, subscription).unwrap()
    }

    /// `GET /v1/plugins`: name -> view.
    fn plugins(&self) -> serde_json::Map<String, Value> {
        let (status, list) = self.call(|http, base| http.get(format!("{base}/v1/plugins")));
        assert_eq!(status, 200);
        list["plugins"].as_array().unwrap().iter().map(|p| (p["name"].as_str().unwrap().to_string(), p.clone())).collect()
    }

    /// Publishes `event`; returns the types of every event the publish dispatched.
    fn publish(&self, event: Value) -> Vec<String> {
        let (status, report) = self.call(|http, base| http.post(format!("{base}/v1/events")).json(&event));
        assert_eq!(status, 200, "{report}");
        let events = report["results"][0]["events"].as_array().unwrap_or_else(|| panic!("{report}"));
        events.iter().map(|e| e["type"].as_str().unwrap().to_string()).collect()
    }

    /// SIGTERM, then the exit status.
    fn stop(mut self) {
        let child = self.process.child();
        // SAFETY: kill(2) on the child's pid, which this test owns.
        assert_eq!(unsafe { libc::kill(child.id() as libc::pid_t, libc::SIGTERM) }, 0);
        assert!(exit_within(child, Duration::from_secs(30)).success());
        self.process.0 = None;
    }
}

/// Sends `request` (built against `addr`); returns the status and the JSON body (`null` when
/// there is none), or the transport's error.
fn call(addr: &str, request: impl FnOnce(&reqwest::Client, &str) -> reqwest::RequestBuilder) -> Result<(u16, Value), reqwest::Error> {
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    runtime.block_on(async {
        let response = request(&reqwest::Client::new(), &format!("http://{addr}")).send().await?;
        let status = response.status().as_u16();
        let text = response.text().await?;
        Ok((status, serde_json::from_str(&text).unwrap_or(Value::Null)))
    })
}

/// `PUT /v1/plugins/echo` with the testing echo component and a manifest subscribing it to
/// `subscription`; returns the status.
fn deploy_echo(addr: &str, subscription: &str) -> Result<u16, reqwest::Error> {
    let manifest = format!("subscriptions = [\"{subscription}\"]\n");
    let bytes = std::fs::read(crate::support::built("testing", "echo")).unwrap();
    let form = reqwest::multipart::Form::new().part("component", reqwest::multipart::Part::bytes(bytes)).text("manifest", manifest);
    Ok(call(addr, |http, base| http.put(format!("{base}/v1/plugins/echo")).multipart(form))?.0)
}

/// Publishes `event` on `node`; returns the root event's listener reports and mention-notifier's.
fn notifier_of(node: &Node, event: &Value) -> (Vec<Value>, Value) {
    let (status, report) = node.call(|http, base| http.post(format!("{base}/v1/events")).json(event));
    assert_eq!(status, 200, "{report}");
    let listeners = report["results"][0]["events"][0]["listeners"].as_array().unwrap().clone();
    let notifier = listeners.iter().find(|l| l["listener"] == "mention-notifier").cloned().unwrap_or_else(|| panic!("{report}"));
    (listeners, notifier)
}

fn comment(id: &str) -> Value {
    json!({"type": "comment:created", "workspace_id": "ws-1", "payload": {"comment": {"id": id, "issue_id": "i-1", "content": "hi @bob"}}})
}

#[test]
fn a_plugins_kv_state_survives_a_restart() {
    let data = tempfile::tempdir().unwrap();
    let node = Node::in_dir(data.path());
    // mention-notifier remembers handled comments in its kv store: a comment delivered twice
    // notifies once.
    assert_eq!(node.publish(comment("c-1")), ["comment:created", "inbox:new"]);
    assert_eq!(node.publish(comment("c-1")), ["comment:created"]);
    node.stop();
    let node = Node::in_dir(data.path());
    assert_eq!(node.publish(comment("c-1")), ["comment:created"], "remembered across the restart");
    assert_eq!(node.publish(comment("c-2")), ["comment:created", "inbox:new"]);
    node.stop();
}

#[test]
fn ephemeral_keeps_nothing() {
    let node = Node::start(&["--ephemeral"]);
    assert_eq!(node.publish(comment("c-1")), ["comment:created", "inbox:new"]);
    node.stop();
    let node = Node::start(&["--ephemeral"]);
    assert_eq!(node.publish(comment("c-1")), ["comment:created", "inbox:new"]);
    node.stop();
}

#[test]
fn a_database_that_is_not_one_is_a_clear_error_at_start_naming_the_file() {
    let data = tempfile::tempdir().unwrap();
    let db = data.path().join("busbar.db");
    std::fs::write(&db, "not a database, but text long enough to fill a SQLite header page....").unwrap();
    let output = busbar().args(["serve", "--listen", "127.0.0.1:0", "--data-dir"]).arg(data.path()).output().unwrap();
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains(&db.display().to_string()) && stderr.contains("not a database"), "{stderr}");
}

#[test]
fn an_unwritable_data_directory_is_a_clear_error_at_start() {
    let data = tempfile::tempdir().unwrap();
    // A file where the directory should be.
    let blocked = data.path().join("blocked");
    std::fs::write(&blocked, "").unwrap();
    let output = busbar().args(["serve", "--listen", "127.0.0.1:0", "--data-dir"]).arg(&blocked).output().unwrap();
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains(&blocked.join("busbar.db").display().to_string()), "{stderr}");
}

/// What a listing says of the echo plugin: its subscriptions, its previous version's hash, its
/// position.
fn echo_state(node: &Node) -> (Value, Value, Value) {
    let plugins = node.plugins();
    let echo = &plugins["echo"];
    (echo["plugin"]["subscriptions"].clone(), echo["previous"]["hash"].clone(), echo["listener"]["position"].clone())
}

#[test]
fn deployed_versions_positions_and_rollbacks_survive_restarts() {
    let data = tempfile::tempdir().unwrap();
    let node = Node::in_dir(data.path());
    assert_eq!(node.deploy_echo("probe:one"), 201);
    assert_eq!(node.deploy_echo("probe:two"), 200);
    let before = echo_state(&node);
    assert_eq!(before.0, json!(["probe:two"]));
    assert!(before.1.is_string(), "a previous version: {before:?}");
    node.stop();

    let node = Node::in_dir(data.path());
    assert_eq!(echo_state(&node), before, "the same version, previous version and position");
    assert_eq!(node.publish(json!({"type": "probe:two", "workspace_id": "ws-1"})), ["probe:two"]);
    // Rollback after the restart, then another restart keeps it.
    let (status, view) = node.call(|http, base| http.post(format!("{base}/v1/plugins/echo/rollback")));
    assert_eq!(status, 200, "{view}");
    assert_eq!(view["plugin"]["subscriptions"], json!(["probe:one"]));
    node.stop();
    let node = Node::in_dir(data.path());
    let (subscriptions, previous, position) = echo_state(&node);
    assert_eq!((subscriptions, position), (json!(["probe:one"]), before.2.clone()));
    assert!(previous.is_string());
    node.stop();
}

#[test]
fn a_deleted_plugin_stays_deleted_and_a_built_in_one_replaced_stays_replaced() {
    let data = tempfile::tempdir().unwrap();
    let node = Node::in_dir(data.path());
    let (status, _) = node.call(|http, base| http.delete(format!("{base}/v1/plugins/workspace-forwarder")));
    assert_eq!(status, 204);
    assert_eq!(node.deploy_echo("probe:*"), 201);
    // A built-in plugin replaced through the API: its base version is the previous one.
    let mention = std::fs::read(crate::support::built("testing", "echo")).unwrap();
    let (status, _) = node.call(|http, base| http.put(format!("{base}/v1/plugins/mention-notifier")).body(mention.clone()));
    assert_eq!(status, 200);
    node.stop();

    let node = Node::in_dir(data.path());
    let plugins = node.plugins();
    assert!(!plugins.contains_key("workspace-forwarder"), "{plugins:?}");
    assert!(plugins.contains_key("echo"));
    assert_eq!(plugins["mention-notifier"]["plugin"]["hash"], busbar::plugins::content_hash(&mention));
    // Rolling back reaches the built-in version, and that is kept too.
    let (status, _) = node.call(|http, base| http.post(format!("{base}/v1/plugins/mention-notifier/rollback")));
    assert_eq!(status, 200);
    node.stop();
    let node = Node::in_dir(data.path());
    let plugins = node.plugins();
    assert_ne!(plugins["mention-notifier"]["plugin"]["hash"], busbar::plugins::content_hash(&mention));
    assert_eq!(plugins["mention-notifier"]["previous"]["hash"], busbar::plugins::content_hash(&mention));
    assert_eq!(node.publish(comment("c-9")), ["comment:created", "inbox:new"], "the built-in version runs");
    node.stop();
}

#[test]
fn a_stored_component_that_does_not_match_its_hash_is_refused_not_run() {
    let data = tempfile::tempdir().unwrap();
    let node = Node::in_dir(data.path());
    assert_eq!(node.deploy_echo("probe:*"), 201);
    node.stop();
    let db = rusqlite::Connection::open(data.path().join("busbar.db")).unwrap();
    let (hash, mut bytes): (String, Vec<u8>) = db.query_row("SELECT hash, bytes FROM components", [], |row| Ok((row.get(0)?, row.get(1)?))).unwrap();
    *bytes.last_mut().unwrap() ^= 0xff;
    assert_eq!(db.execute("UPDATE components SET bytes = ?1 WHERE hash = ?2", rusqlite::params![bytes, hash]).unwrap(), 1);
    drop(db);
    let node = Node::in_dir(data.path());
    let echo = node.plugins()["echo"].clone();
    assert_eq!(echo["status"], "failed", "{echo}");
    assert!(echo["last_failure"]["error"].as_str().unwrap().contains("corrupt"), "{echo}");
    assert_eq!(node.publish(json!({"type": "probe:x", "workspace_id": "ws-1"})), ["probe:x"]);
    node.stop();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn names_the_plugin_directory_manages_are_refused_over_http_with_409() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::copy(crate::support::built("testing", "echo"), dir.path().join("echo.wasm")).unwrap();
    let served = dir.path().to_path_buf();
    let server = TestServer::start(move |c| c.plugins_dir = Some(served)).await;
    let http = reqwest::Client::new();
    let echo = std::fs::read(crate::support::built("testing", "echo")).unwrap();
    let response = http.put(server.url("/v1/plugins/echo")).body(echo.clone()).send().await.unwrap();
    assert_eq!(response.status(), 409);
    let error: Value = response.json().await.unwrap();
    assert!(error["error"]["message"].as_str().unwrap().contains("managed by the plugin directory"), "{error}");
    assert_eq!(http.delete(server.url("/v1/plugins/echo")).send().await.unwrap().status(), 409);
    // A name the directory does not hold can be deployed beside it.
    assert_eq!(http.put(server.url("/v1/plugins/other")).body(echo).send().await.unwrap().status(), 201);
    server.stop().await;
}

/// Uploads new versions of echo (`probe:n1`, `probe:n2`, ...) to `node` back to back, each
/// compiled, stored and swapped in, and kills the node with SIGKILL part-way into one after at
/// least one went through; returns the number of the upload that did not finish.
fn kill_during_uploads(node: &mut Node) -> usize {
    let acknowledged = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let uploader = {
        let (addr, acknowledged) = (node.addr.clone(), acknowledged.clone());
        std::thread::spawn(move || {
            for i in 1.. {
                if !matches!(deploy_echo(&addr, &format!("probe:n{i}")), Ok(200)) {
                    return i;
                }
                acknowledged.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            }
            unreachable!("uploads go on until the node is killed")
        })
    };
    crate::support::wait::eventually("an upload is acknowledged", || acknowledged.load(std::sync::atomic::Ordering::SeqCst) > 0);
    std::thread::sleep(Duration::from_millis(150));
    // SAFETY: kill(2) on the child's pid, which this test owns.
    assert_eq!(unsafe { libc::kill(node.process.child().id() as libc::pid_t, libc::SIGKILL) }, 0);
    uploader.join().unwrap()
}

#[test]
fn a_node_killed_during_uploads_keeps_a_whole_version() {
    let data = tempfile::tempdir().unwrap();
    let mut node = Node::in_dir(data.path());
    assert_eq!(node.deploy_echo("probe:n0"), 201);
    let uploads = kill_during_uploads(&mut node);
    drop(node);

    let node = Node::in_dir(data.path());
    let (subscriptions, previous, _) = echo_state(&node);
    let running = subscriptions[0].as_str().unwrap().trim_start_matches("probe:n").to_string();
    let n: usize = running.parse().unwrap_or_else(|_| panic!("a whole stored version runs: {subscriptions}"));
    assert!(n + 1 >= uploads && n <= uploads, "the last acknowledged upload or the one in flight: {n} of {uploads}");
    assert!(previous.is_string(), "its previous version too");
    assert_eq!(node.publish(json!({"type": format!("probe:n{n}"), "workspace_id": "ws-1"})), [format!("probe:n{n}")]);
    node.stop();
    let db = rusqlite::Connection::open(data.path().join("busbar.db")).unwrap();
    let check: String = db.query_row("PRAGMA integrity_check", [], |row| row.get(0)).unwrap();
    assert_eq!(check, "ok");
}

#[test]
fn deployments_are_exported_and_imported_between_data_directories() {
    let (from, to, exported) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let node = Node::in_dir(from.path());
    assert_eq!(node.deploy_echo("probe:moved"), 201);
    node.stop();
    let data_dir = |dir: &Path| dir.to_str().unwrap().to_string();
    let output = busbar().args(["plugin", "export", "--data-dir", &data_dir(from.path())]).arg(exported.path()).output().unwrap();
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    assert!(exported.path().join("echo.wasm").exists() && exported.path().join("echo.toml").exists());

    // A directory with one bad component is refused whole.
    let broken = tempfile::tempdir().unwrap();
    std::fs::copy(exported.path().join("echo.wasm"), broken.path().join("echo.wasm")).unwrap();
    std::fs::write(broken.path().join("junk.wasm"), b"\0asm junk").unwrap();
    let output = busbar().args(["plugin", "import", "--no-cache", "--data-dir", &data_dir(to.path())]).arg(broken.path()).output().unwrap();
    assert!(!output.status.success());
    assert!(String::from_utf8_lossy(&output.stderr).contains("junk.wasm"), "{}", String::from_utf8_lossy(&output.stderr));

    let output = busbar().args(["plugin", "import", "--no-cache", "--data-dir", &data_dir(to.path())]).arg(exported.path()).output().unwrap();
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    let node = Node::in_dir(to.path());
    let plugins = node.plugins();
    assert!(!plugins.contains_key("junk"));
    assert_eq!(plugins["echo"]["plugin"]["subscriptions"], json!(["probe:moved"]));
    assert_eq!(node.publish(json!({"type": "probe:moved", "workspace_id": "ws-1"})), ["probe:moved"]);
    node.stop();
}

/// The `Store` contract, run against each backend.
fn the_store_contract(store: &dyn busbar::store::Store) {
    use busbar::store::{Deployment, KV_ENTRY_OVERHEAD, KvUsage, StoreError, Version};
    let content_hash = busbar::plugins::content_hash;
    let deployment = |name: &str, current: Option<&[u8]>, previous: Option<&[u8]>| {
        let v = |bytes: &[u8]| Version { hash: content_hash(bytes), manifest: format!("name = \"{name}\"\n") };
        Deployment { name: name.into(), current: current.map(v), previous: previous.map(v) }
    };
    store.save(&deployment("b", Some(b"b1"), None), &[b"b1"]).unwrap();
    store.save(&deployment("a", Some(b"a1"), None), &[b"a1"]).unwrap();
    store.save(&deployment("b", Some(b"b2"), Some(b"b1")), &[b"b2"]).unwrap();
    assert_eq!(store.deployments().unwrap(), vec![deployment("b", Some(b"b2"), Some(b"b1")), deployment("a", Some(b"a1"), None)]);
    assert_eq!(store.component(&content_hash(b"b1")).unwrap(), b"b1");
    let missing = store.save(&deployment("c", Some(b"c1"), None), &[]).unwrap_err();
    assert!(matches!(missing, StoreError::MissingBlob(_)), "{missing}");
    assert_eq!(store.deployments().unwrap().len(), 2);
    store.forget("b").unwrap();
    assert!(matches!(store.component(&content_hash(b"b1")), Err(StoreError::MissingBlob(_))));
    assert_eq!(store.component(&content_hash(b"a1")).unwrap(), b"a1");

    let limit = 2 * KV_ENTRY_OVERHEAD + 10;
    const NOW: Duration = Duration::from_secs(1);
    store.kv_set("p", "k1", b"12345", limit, NOW).unwrap();
    assert_eq!(store.kv_usage("p").unwrap(), KvUsage { bytes: 2 + 5 + KV_ENTRY_OVERHEAD, entries: 1 });
    assert!(matches!(store.kv_set("p", "k2", b"1234", limit, NOW), Err(StoreError::KvFull { .. })));
    assert_eq!(store.kv_get("p", "k2", NOW).unwrap(), None);
    store.kv_set("p", "k1", b"1", limit, NOW).unwrap();
    store.kv_set("p", "k2", b"1", limit, NOW).unwrap();
    assert_eq!(store.kv_usage("p").unwrap(), KvUsage { bytes: 2 * (2 + 1 + KV_ENTRY_OVERHEAD), entries: 2 });
    store.kv_set("q", "k1", b"12345", limit, NOW).unwrap();
    assert!(store.kv_delete("p", "k1", NOW).unwrap());
    assert!(!store.kv_delete("p", "k1", NOW).unwrap());
    assert_eq!(store.kv_usage("p").unwrap(), KvUsage { bytes: 2 + 1 + KV_ENTRY_OVERHEAD, entries: 1 });
    store.kv_clear("p").unwrap();
    assert_eq!(store.kv_usage("p").unwrap(), KvUsage::default());
    assert_eq!(store.kv_get("q", "k1", NOW).unwrap().as_deref(), Some(&b"12345"[..]));
}

#[test]
fn both_backends_keep_the_store_contract() {
    the_store_contract(&busbar::store::SqliteStore::in_memory());
    let redis = crate::support::redis::Redis::start();
    the_store_contract(&busbar::store::RedisStore::open(&redis.url()).unwrap());
}

#[test]
fn nodes_sharing_redis_share_kv_state_and_deployments() {
    let redis = crate::support::redis::Redis::start();
    let url = redis.url();
    let a = Node::start(&["--redis-url", &url]);
    let b = Node::start(&["--redis-url", &url]);
    // mention-notifier's record of handled comments is one for the cluster.
    assert_eq!(a.publish(comment("c-1")), ["comment:created", "inbox:new"]);
    assert_eq!(b.publish(comment("c-1")), ["comment:created"], "B knows A handled it");
    // A deployment on A is what B runs once it starts again.
    assert_eq!(a.deploy_echo("probe:shared"), 201);
    b.stop();
    let b = Node::start(&["--redis-url", &url]);
    assert_eq!(b.plugins()["echo"]["plugin"]["subscriptions"], json!(["probe:shared"]));
    a.stop();
    b.stop();
}

#[test]
fn while_redis_is_away_events_flow_kv_fails_in_the_guest_and_deploys_answer_503() {
    let mut redis = crate::support::redis::Redis::start();
    let node = Node::start(&["--redis-url", &redis.url()]);
    redis.kill();
    // mention-notifier cannot record the comment: its kv call fails inside the plugin (an
    // error outcome, not a trap), and the listeners after it still run.
    let (status, report) = node.call(|http, base| http.post(format!("{base}/v1/events")).json(&comment("c-1")));
    assert_eq!(status, 200, "{report}");
    let listeners = &report["results"][0]["events"][0]["listeners"];
    let outcome = |name: &str| listeners.as_array().unwrap().iter().find(|l| l["listener"] == name).map(|l| l["outcome"].clone());
    assert_eq!(outcome("mention-notifier"), Some(json!("error")), "{report}");
    assert_eq!(outcome("workspace-forwarder"), Some(json!("ok")), "{report}");
    assert_eq!(node.deploy_echo("probe:later"), 503);
    redis.run();
    assert_eq!(node.deploy_echo("probe:later"), 201, "once Redis is back, deployments go through");
    node.stop();
}

/// The echo component with a custom section of `size` bytes of `fill` (a distinct component,
/// as large as asked).
fn padded_echo(fill: u8, size: usize) -> Vec<u8> {
    let mut bytes = std::fs::read(crate::support::built("testing", "echo")).unwrap();
    let name = b"padding";
    let mut section = vec![name.len() as u8];
    section.extend(name);
    section.extend(vec![fill; size]);
    bytes.push(0);
    let mut length = section.len();
    loop {
        let byte = (length & 0x7f) as u8;
        length >>= 7;
        bytes.push(if length > 0 { byte | 0x80 } else { byte });
        if length == 0 {
            break;
        }
    }
    bytes.extend(section);
    bytes
}

/// The echo plugin's subscriptions on `node`, or `null` when it is not there.
fn echo_subscriptions(node: &Node) -> Value {
    node.plugins().get("echo").map_or(Value::Null, |echo| echo["plugin"]["subscriptions"].clone())
}

/// Waits until every node runs `expected` for the echo plugin; returns how long that took.
fn converged(nodes: &[&Node], expected: Value) -> Duration {
    let started = std::time::Instant::now();
    crate::support::wait::eventually(&format!("every node runs {expected}"), || nodes.iter().all(|n| echo_subscriptions(n) == expected));
    started.elapsed()
}

#[test]
fn deployments_on_any_node_run_on_every_node() {
    let redis = crate::support::redis::Redis::start();
    let url = redis.url();
    let nodes = [Node::start(&["--redis-url", &url]), Node::start(&["--redis-url", &url]), Node::start(&["--redis-url", &url])];
    let all: Vec<&Node> = nodes.iter().collect();
    assert_eq!(nodes[0].deploy_echo("probe:one"), 201);
    let took = converged(&all, json!(["probe:one"]));
    assert_eq!(nodes[0].deploy_echo("probe:two"), 200);
    converged(&all, json!(["probe:two"]));
    // Rollback on B, then the same position and the previous version everywhere.
    let (status, _) = nodes[1].call(|http, base| http.post(format!("{base}/v1/plugins/echo/rollback")));
    assert_eq!(status, 200);
    converged(&all, json!(["probe:one"]));
    let positions: Vec<Value> = nodes.iter().map(|n| n.plugins()["echo"]["listener"]["position"].clone()).collect();
    assert!(positions.iter().all(|p| *p == positions[0]), "{positions:?}");
    // Delete on C.
    let (status, _) = nodes[2].call(|http, base| http.delete(format!("{base}/v1/plugins/echo")));
    assert_eq!(status, 204);
    converged(&all, Value::Null);
    // A node started later runs what the cluster runs before it serves.
    assert_eq!(nodes[0].deploy_echo("probe:three"), 201);
    converged(&all, json!(["probe:three"]));
    let late = Node::start(&["--redis-url", &url]);
    assert_eq!(echo_subscriptions(&late), json!(["probe:three"]));
    // Any node's listing says which version every live node runs.
    let hash = nodes[0].plugins()["echo"]["plugin"]["hash"].clone();
    crate::support::wait::eventually("the listing shows all four nodes on the same version", || {
        let listed = nodes[1].plugins()["echo"]["nodes"].clone();
        listed.as_object().is_some_and(|n| n.len() == 4 && n.values().all(|node| node["hash"] == hash && node.get("failure").is_none()))
    });
    eprintln!("an upload on one node ran on the other two after {took:?}");
    for node in nodes {
        node.stop();
    }
    late.stop();
}

#[test]
fn after_redis_restarts_the_nodes_converge_without_an_operator() {
    let mut redis = crate::support::redis::Redis::start();
    let url = redis.url();
    let nodes = [Node::start(&["--redis-url", &url]), Node::start(&["--redis-url", &url])];
    let all: Vec<&Node> = nodes.iter().collect();
    assert_eq!(nodes[0].deploy_echo("probe:before"), 201);
    converged(&all, json!(["probe:before"]));
    // Redis goes away (with its append-only file) and comes back: B's listener reconnects.
    redis.kill();
    assert_eq!(nodes[0].deploy_echo("probe:during"), 503);
    redis.run();
    crate::support::wait::eventually("A deploys again", || nodes[0].deploy_echo("probe:after") == 200);
    converged(&all, json!(["probe:after"]));
    for node in nodes {
        node.stop();
    }
}

#[test]
fn a_full_disk_refuses_the_upload_and_the_running_version_keeps_serving() {
    use std::os::unix::process::CommandExt;
    let data = tempfile::tempdir().unwrap();
    // Files of at most 600 KiB: room for one component in the database's log, not for three
    // more. Past the limit a write fails (EFBIG, as on a full disk) instead of killing busbar.
    let node = Node::start_with(&["--data-dir", data.path().to_str().unwrap()], |command| {
        // SAFETY: between fork and exec, only async-signal-safe calls: setrlimit and signal.
        unsafe {
            command.pre_exec(|| {
                let limit = libc::rlimit { rlim_cur: 600 << 10, rlim_max: 600 << 10 };
                if libc::setrlimit(libc::RLIMIT_FSIZE, &limit) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
                libc::signal(libc::SIGXFSZ, libc::SIG_IGN);
                Ok(())
            });
        }
    });
    assert_eq!(node.deploy_echo("probe:kept"), 201);
    // Uploads of distinct components (each with a 200 KiB custom section) until the store is full.
    let component = |i: u8| padded_echo(i, 200 << 10);
    let mut last = (0, Value::Null);
    for i in 0..10u8 {
        last = node.call(|http, base| http.put(format!("{base}/v1/plugins/big-{i}")).body(component(i)));
        if last.0 != 201 {
            assert!(node.plugins().get(&format!("big-{i}")).is_none_or(|p| p["status"] == "failed"), "a refused upload does not run");
            break;
        }
    }
    let (status, error) = last;
    assert_eq!(status, 503, "{error}");
    assert_eq!(error["error"]["code"], "store_unavailable", "{error}");
    assert!(error["error"]["message"].as_str().unwrap().contains("cannot store the deployment"), "{error}");
    assert_eq!(node.publish(json!({"type": "probe:kept", "workspace_id": "ws-1"})), ["probe:kept"]);
    node.stop();
}

#[test]
fn a_node_killed_during_uploads_leaves_no_half_installed_version_anywhere_in_a_cluster() {
    let redis = crate::support::redis::Redis::start();
    let url = redis.url();
    let mut a = Node::start(&["--redis-url", &url]);
    let b = Node::start(&["--redis-url", &url]);
    assert_eq!(a.deploy_echo("probe:n0"), 201);
    kill_during_uploads(&mut a);
    drop(a);
    // B runs the version the store holds, whole: the same one a restarted A brings back.
    let a = Node::start(&["--redis-url", &url]);
    let on_a = echo_subscriptions(&a);
    assert!(on_a.is_array(), "{on_a}");
    crate::support::wait::eventually("B runs what A runs", || echo_subscriptions(&b) == on_a);
    let n = on_a[0].as_str().unwrap();
    assert_eq!(b.publish(json!({"type": n, "workspace_id": "ws-1"})), [n]);
    a.stop();
    b.stop();
}

#[test]
fn a_kv_call_waits_for_a_stalled_redis_no_longer_than_the_calls_deadline() {
    let redis = crate::support::redis::Redis::start();
    let node = Node::start(&["--redis-url", &redis.url()]);
    assert_eq!(node.publish(comment("c-1")), ["comment:created", "inbox:new"], "warm: connected to Redis");
    // Redis stops answering for 3 s. mention-notifier (100 ms deadline) reads and writes its kv
    // store on every comment: its call must end at its deadline (plus scheduling), not at the
    // store's own 500 ms timeout.
    let _asleep = redis.sleep(3);
    let (listeners, notifier) = notifier_of(&node, &comment("c-2"));
    assert_ne!(notifier["outcome"], "ok", "{notifier}");
    let took = notifier["duration_us"].as_u64().unwrap();
    assert!(took < 400_000, "the kv calls held the plugin's thread for {took} µs: {notifier}");
    assert!(listeners.iter().any(|l| l["listener"] == "workspace-forwarder" && l["outcome"] == "ok"), "{listeners:?}");
    node.stop();
}

#[test]
fn a_node_that_cannot_load_a_deployed_version_says_so_in_every_nodes_listing() {
    let redis = crate::support::redis::Redis::start();
    let url = redis.url();
    let small = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(small.path(), "[limits]\nmax-upload-mib = 1\n").unwrap();
    let a = Node::start(&["--redis-url", &url]);
    let b = Node::start(&["--redis-url", &url, "--config", small.path().to_str().unwrap()]);
    // Two MiB: A takes it, B's limit is one.
    let big = padded_echo(7, 2 << 20);
    let (status, _) = a.call(|http, base| http.put(format!("{base}/v1/plugins/big")).body(big.clone()));
    assert_eq!(status, 201);
    let hash = busbar::plugins::content_hash(&big);
    crate::support::wait::eventually("A's listing shows B's failure", || {
        let nodes = a.plugins().get("big").map(|p| p["nodes"].clone()).unwrap_or_default();
        let Some(nodes) = nodes.as_object() else { return false };
        let (on_a, on_b): (Vec<_>, Vec<_>) = nodes.values().partition(|n| n["hash"] == hash);
        on_a.len() == 1 && on_b.len() == 1 && on_b[0]["failure"].as_str().is_some_and(|f| f.contains("over this node's limit"))
    });
    a.stop();
    b.stop();
}

#[test]
fn a_node_whose_store_is_unreachable_at_start_exits_with_the_reason() {
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let url = format!("redis://127.0.0.1:{port}");
    let output = busbar().args(["serve", "--listen", "127.0.0.1:0", "--redis-url", &url]).output().unwrap();
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains(&format!("store {url}")) && stderr.contains("refused"), "{stderr}");
}

#[test]
fn a_kv_write_waits_for_another_process_holding_the_database_no_longer_than_the_calls_deadline() {
    let data = tempfile::tempdir().unwrap();
    let node = Node::in_dir(data.path());
    assert_eq!(node.publish(comment("c-1")), ["comment:created", "inbox:new"]);
    // Another process (here, the test) holds the database's write lock, as `busbar plugin
    // import` would while it stores: mention-notifier's kv write must give up at its 100 ms
    // deadline, not at the store's 2 s busy timeout.
    let holder = rusqlite::Connection::open(data.path().join("busbar.db")).unwrap();
    holder.execute_batch("BEGIN IMMEDIATE").unwrap();
    let (_, notifier) = notifier_of(&node, &comment("c-2"));
    assert_ne!(notifier["outcome"], "ok", "{notifier}");
    let took = notifier["duration_us"].as_u64().unwrap();
    assert!(took < 400_000, "the kv write held the plugin's thread for {took} µs: {notifier}");
    holder.execute_batch("ROLLBACK").unwrap();
    assert_eq!(node.publish(comment("c-3")), ["comment:created", "inbox:new"], "writes go through once the lock is gone");
    node.stop();
}
