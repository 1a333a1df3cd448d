//! The `busbar` binary: `dispatch` over the sample events with the example plugins must print
//! exactly the checked-in expected output, and `plugin check` must accept and refuse.

use std::path::Path;

use crate::support::process::{Lines, busbar, exit_within};

fn data(name: &str) -> std::path::PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/data").join(name)
}

#[test]
fn dispatch_prints_the_expected_frames_for_the_sample_events() {
    let output = busbar().args(["dispatch", "--event"]).arg(data("sample-events.jsonl")).output().unwrap();
    let stdout = String::from_utf8(output.stdout).unwrap();
    let expected = std::fs::read_to_string(data("sample-events.expected.jsonl")).unwrap();
    if stdout != expected && std::env::var_os("BUSBAR_BLESS").is_some() {
        std::fs::write(data("sample-events.expected.jsonl"), &stdout).unwrap();
        return;
    }
    assert_eq!(stdout, expected, "rerun with BUSBAR_BLESS=1 to accept a deliberate change");
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
}

#[test]
fn dispatch_reports_bad_lines_and_carries_on() {
    let mut child = busbar()
        .args(["dispatch", "--plugins"])
        .arg(Path::new(busbar::BUILT_PLUGINS_DIR).join("examples"))
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    {
        use std::io::Write;
        let mut stdin = child.stdin.take().unwrap();
        writeln!(stdin, "{{not json").unwrap();
        writeln!(stdin, r#"{{"type":"issue:created","id":"ok-1","workspace_id":"w1"}}"#).unwrap();
    }
    let output = child.wait_with_output().unwrap();
    let stdout = String::from_utf8(output.stdout).unwrap();
    let lines: Vec<serde_json::Value> = stdout.lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    assert_eq!(lines[0]["kind"], "invalid_event");
    assert_eq!(lines[0]["line"], 1);
    assert!(lines.iter().any(|l| l["kind"] == "broadcast" && l["event_id"] == "ok-1"), "{stdout}");
    assert!(!output.status.success(), "a bad line makes the exit status non-zero");
}

#[test]
fn plugin_check_accepts_components_and_refuses_others() {
    let good = Path::new(busbar::BUILT_PLUGINS_DIR).join("examples/mention-notifier.wasm");
    let output = busbar().args(["plugin", "check", "--json"]).arg(&good).output().unwrap();
    assert!(output.status.success());
    let info: serde_json::Value = serde_json::from_slice(&output.stdout).unwrap();
    assert_eq!(info["subscriptions"], serde_json::json!(["comment:created"]));
    assert!(info["startup_ms"].is_u64(), "{info}");

    let output = busbar().args(["plugin", "check"]).arg(data("sample-events.jsonl")).output().unwrap();
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("not a WebAssembly file"), "{stderr}");
}

/// `busbar plugin new`, then `build`, then `test`, in a fresh directory; the plugins' shared
/// target directory keeps the build short.
fn scaffold(parent: &Path, name: &str) -> std::path::PathBuf {
    let status = busbar().args(["plugin", "new", name, "--dir"]).arg(parent).status().unwrap();
    assert!(status.success());
    let dir = parent.join(name);
    let target = Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/plugins");
    let output = busbar().args(["plugin", "build"]).arg(&dir).env("CARGO_TARGET_DIR", &target).output().unwrap();
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    assert!(String::from_utf8_lossy(&output.stdout).contains("subscriptions: issue:*"));
    dir
}

#[test]
fn a_scaffolded_plugin_builds_passes_its_test_and_loads_into_serve() {
    let parent = tempfile::tempdir().unwrap();
    let dir = scaffold(parent.path(), "hello-plugin");
    let output = busbar().args(["plugin", "test"]).arg(&dir).output().unwrap();
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    assert!(String::from_utf8_lossy(&output.stdout).starts_with("ok: 2 event(s)"));

    // A change in behaviour fails the plugin's own test, with the difference shown.
    let manifest = dir.join("plugin.toml");
    let text = std::fs::read_to_string(&manifest).unwrap().replace("prefix = \"hello-plugin:\"", "prefix = \"other:\"");
    std::fs::write(&manifest, text).unwrap();
    std::fs::copy(&manifest, dir.join("dist/hello-plugin.toml")).unwrap();
    let output = busbar().args(["plugin", "test"]).arg(&dir).output().unwrap();
    assert!(!output.status.success());
    assert!(String::from_utf8_lossy(&output.stderr).contains("first difference at line 1"));

    // The built component loads into a server as is.
    let output = busbar()
        .args(["dispatch", "--plugins"])
        .arg(dir.join("dist"))
        .args(["--event"])
        .arg(dir.join("tests/events.jsonl"))
        .output()
        .unwrap();
    assert!(String::from_utf8_lossy(&output.stdout).contains(r#""type":"other:issue:created""#));
    let runtime = tokio::runtime::Runtime::new().unwrap();
    runtime.block_on(async {
        let dist = dir.join("dist");
        let server = crate::support::server::TestServer::start(|c| c.plugins_dir = Some(dist)).await;
        let plugins: serde_json::Value = reqwest::get(server.url("/v1/plugins")).await.unwrap().json().await.unwrap();
        assert_eq!(plugins["plugins"][0]["name"], "hello-plugin");
        assert_eq!(plugins["plugins"][0]["status"], "active");
        server.stop().await;
    });
}

#[test]
fn busbar_dev_rebuilds_and_hot_swaps_on_source_changes() {
    let parent = tempfile::tempdir().unwrap();
    let dir = scaffold(parent.path(), "dev-plugin");
    let target = Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/plugins");
    let mut child = busbar()
        .args(["dev", "--listen", "127.0.0.1:0", "--plugins"])
        .arg(parent.path())
        .env("CARGO_TARGET_DIR", &target)
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let stderr = child.stderr.take().unwrap();
    let mut lines = std::io::BufRead::lines(std::io::BufReader::new(stderr));
    let addr = loop {
        let line = lines.next().expect("busbar dev started").unwrap();
        if let Some(rest) = line.strip_prefix("busbar listening on http://") {
            break rest.split_whitespace().next().unwrap().to_string();
        }
    };
    std::thread::spawn(move || for _ in lines.by_ref() {});
    let runtime = tokio::runtime::Runtime::new().unwrap();
    runtime.block_on(async {
        let http = reqwest::Client::new();
        let event = serde_json::json!({"type": "issue:created", "workspace_id": "ws-1"});
        let first: serde_json::Value =
            http.post(format!("http://{addr}/v1/events")).json(&event).send().await.unwrap().json().await.unwrap();
        assert_eq!(first["results"][0]["events"][0]["listeners"][0]["listener"], "dev-plugin");
        let view = || async {
            http.get(format!("http://{addr}/v1/plugins/dev-plugin")).send().await.unwrap().json::<serde_json::Value>().await.unwrap()
        };
        let before = view().await["plugin"]["hash"].clone();
        // Change the code: the plugin is rebuilt and swapped in.
        let lib = dir.join("src/lib.rs");
        let code = std::fs::read_to_string(&lib)
            .unwrap()
            .replace("vec![\"issue:*\".into()]", "vec![\"issue:*\".into(), \"task:*\".into()]");
        std::fs::write(&lib, code).unwrap();
        let started = std::time::Instant::now();
        while view().await["plugin"]["hash"] == before {
            assert!(started.elapsed() < std::time::Duration::from_secs(120), "the change was not hot-swapped");
            tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        }
        assert_eq!(view().await["plugin"]["subscriptions"], serde_json::json!(["issue:*", "task:*"]));
    });
    let _ = child.kill();
    let _ = child.wait();
}

#[test]
fn the_load_tools_run() {
    let output = busbar()
        .args(["bench", "fanout", "--clients", "5", "--deliveries", "500", "--seconds", "1", "--relay"])
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    assert!(stdout.contains("| baseline | 5 |") && stdout.contains("| plugins | 5 |"), "{stdout}");
    assert!(stdout.contains("| relay | 5 |"), "{stdout}");
    assert!(stdout.contains("| naive | 5 |") && stdout.contains("| node | 5 |"), "the peers ran: {stdout}");
    assert_eq!(stdout.matches("500/500").count(), 5, "every delivery arrived, relay and peers included: {stdout}");

    let output = busbar().args(["bench", "reload", "--versions", "2"]).output().unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    let row = stdout.lines().last().unwrap();
    let cells: Vec<&str> = row.split('|').map(str::trim).collect();
    assert_eq!((cells[1], cells[2]), ("2", "2"), "both versions served: {stdout}");
    assert_eq!((cells[4], cells[5], cells[6]), ("0", "0", "0"), "no failed, lost or doubled events: {stdout}");

    let output = busbar().args(["bench", "cluster", "--nodes", "2", "--uploads", "2"]).output().unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    assert!(stdout.starts_with("cluster: 2 nodes, 2 uploads on one; running on every other node after p50 "), "{stdout}");

    let output = busbar().args(["bench", "publish", "--seconds", "1", "--rounds", "1", "--connections", "2", "--batch", "3"]).output().unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    for case in ["| empty route (GET /health) |", "| 1 event |", "| 1 event, no report |", "| batch |", "| batch, no report |"] {
        let row = stdout.lines().find(|line| line.starts_with(case)).unwrap_or_else(|| panic!("{case}: {stdout}"));
        let rate: f64 = row.split('|').nth(2).unwrap().trim().parse().unwrap();
        assert!(rate > 0.0, "every case was answered: {stdout}");
    }
}

#[test]
fn token_tail_and_publish_work_against_a_running_server() {
    let runtime = tokio::runtime::Runtime::new().unwrap();
    runtime.block_on(async {
        let server = crate::support::server::TestServer::start(|_| {}).await;
        let token = busbar().args(["token", "--user", "tia", "--workspace", "ws-1", "--grant", "ws-1:task:t-1"]).output().unwrap();
        assert!(token.status.success());
        let token = String::from_utf8(token.stdout).unwrap().trim().to_string();
        let mut tail = tokio::process::Command::new(env!("CARGO_BIN_EXE_busbar"))
            .args(["tail", "--url", &format!("ws://{}/ws", server.addr), "--workspace", "ws-1", "--subscribe", "task:t-1"])
            .env("BUSBAR_TOKEN", &token)
            .stdout(std::process::Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .unwrap();
        let mut lines = tokio::io::AsyncBufReadExt::lines(tokio::io::BufReader::new(tail.stdout.take().unwrap()));
        macro_rules! next {
            () => {
                tokio::time::timeout(std::time::Duration::from_secs(10), lines.next_line()).await.unwrap().unwrap().unwrap()
            };
        }
        assert!(next!().contains("auth_ack"));
        assert!(next!().contains("subscribe_ack"));
        let publish = busbar()
            .args(["publish", "--url", &server.url(""), "--type", "task:message", "--workspace", "ws-1", "--task", "t-1"])
            .args(["--payload", r#"{"n":1}"#])
            .output()
            .unwrap();
        assert!(publish.status.success(), "{}", String::from_utf8_lossy(&publish.stderr));
        let report: serde_json::Value = serde_json::from_slice(&publish.stdout).unwrap();
        assert_eq!(report["results"][0]["events"][0]["listeners"][0]["outcome"], "ok");
        let frame: serde_json::Value = serde_json::from_str(&next!()).unwrap();
        assert_eq!((frame["type"].as_str(), frame["scope"].as_str()), (Some("task:message"), Some("task")));
        assert_eq!(frame["payload"], serde_json::json!({"n": 1}));
        let _ = tail.kill().await;
        server.stop().await;
    });
}

#[test]
fn busbar_serve_publish_and_tail_end_to_end_and_sigterm_stops_the_server_cleanly() {
    // The README's main command, as a process: the example plugins, the development secret.
    let mut serve = busbar()
        .args(["serve", "--listen", "127.0.0.1:0"])
        .env_remove("BUSBAR_JWT_SECRET")
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut log = Lines::of(serve.stderr.take().unwrap());
    let listening = log.wait_for("busbar serve started", |l| l.starts_with("busbar listening on http://"));
    let addr = listening.trim_start_matches("busbar listening on http://").split_whitespace().next().unwrap().to_string();
    assert!(log.seen().iter().any(|l| l.contains("no JWT secret configured")), "the development secret is announced: {:#?}", log.seen());

    let mut tail = busbar()
        .args(["tail", "--url", &format!("ws://{addr}/ws"), "--workspace", "ws-1"])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut frames = Lines::of(tail.stdout.take().unwrap());
    frames.wait_for("tail authenticated", |l| l.contains("auth_ack"));

    let events = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(
        events.path(),
        r#"[{"type": "issue:created", "workspace_id": "ws-1", "payload": {"issue": {"id": "iss-1"}}},
            {"type": "issue:created", "workspace_id": "ws-2", "payload": {"issue": {"id": "iss-2"}}},
            {"type": "issue:updated", "workspace_id": "ws-1", "payload": {"issue": {"id": "iss-1"}, "prev_title": "x"}}]"#,
    )
    .unwrap();
    let published = busbar().args(["publish", "--url", &format!("http://{addr}"), "--file"]).arg(events.path()).output().unwrap();
    assert!(published.status.success(), "{}", String::from_utf8_lossy(&published.stderr));
    let created = frames.wait_for("issue:created in ws-1", |l| l.contains("\"issue:created\""));
    assert!(created.contains("iss-1") && !created.contains("iss-2"), "{created}");
    let updated = frames.wait_for("issue:updated", |l| l.contains("\"issue:updated\""));
    assert!(!updated.contains("prev_title"), "the forwarder strips internal keys: {updated}");

    // SIGTERM: the server closes the client with 1001 and exits successfully.
    // SAFETY: kill(2) on the child's pid, which this test owns.
    assert_eq!(unsafe { libc::kill(serve.id() as libc::pid_t, libc::SIGTERM) }, 0);
    let mut tail_err = Lines::of(tail.stderr.take().unwrap());
    tail_err.wait_for("tail saw the close", |l| l.starts_with("closed: 1001"));
    assert!(exit_within(&mut tail, std::time::Duration::from_secs(30)).success());
    log.wait_for("the server stopped", |l| l.contains("stopped"));
    let status = exit_within(&mut serve, std::time::Duration::from_secs(30));
    assert!(status.success(), "{status:?}");
}
