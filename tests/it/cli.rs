//! The `busbar` binary: `dispatch` over the sample events with the example plugins must print
//! exactly the checked-in expected output, and `plugin check` must accept and refuse.

use std::path::Path;
use std::process::Command;

fn busbar() -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_busbar"));
    command.env("BUSBAR_CACHE_DIR", Path::new(env!("CARGO_TARGET_TMPDIR")).join("busbar-cli-cache"));
    command
}

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

    let output = busbar().args(["plugin", "check"]).arg(data("sample-events.jsonl")).output().unwrap();
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("not a WebAssembly file"), "{stderr}");
}
