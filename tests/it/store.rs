//! What busbar keeps across restarts, through a real `busbar serve` process and its data
//! directory: plugins' kv state, the store's errors at start, and `--ephemeral`.

use std::path::Path;
use std::time::Duration;

use serde_json::{Value, json};

use crate::support::process::{KillOnDrop, Lines, busbar, exit_within};

/// A running `busbar serve` (the built-in example plugins) and what it printed.
struct Node {
    process: KillOnDrop,
    addr: String,
    _log: Lines,
}

impl Node {
    /// Starts `busbar serve` with `args` and waits until it listens.
    fn start(args: &[&str]) -> Node {
        let mut child = busbar()
            .args(["serve", "--listen", "127.0.0.1:0", "--no-cache"])
            .args(args)
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        let mut log = Lines::of(child.stderr.take().unwrap());
        let listening = log.wait_for("the server listens", |l| l.starts_with("busbar listening on http://"));
        let addr = listening.trim_start_matches("busbar listening on http://").split_whitespace().next().unwrap().to_string();
        Node { process: KillOnDrop(Some(child)), addr, _log: log }
    }

    fn in_dir(dir: &Path) -> Node {
        Node::start(&["--data-dir", dir.to_str().unwrap()])
    }

    /// Publishes `event`; returns the types of every event the publish dispatched.
    fn publish(&self, event: Value) -> Vec<String> {
        let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        let report: Value = runtime.block_on(async {
            let response = reqwest::Client::new().post(format!("http://{}/v1/events", self.addr)).json(&event).send().await.unwrap();
            assert_eq!(response.status(), 200);
            response.json().await.unwrap()
        });
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
