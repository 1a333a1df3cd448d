//! The limits of issue #12 through the server: a real `busbar serve` process under a memory
//! limit set by the test meets a compile bomb and a crowd of memory-hungry calls and stays up;
//! responses are bounded whatever the plugins return; plugin names and state over HTTP.

use std::io::Write;
use std::time::Duration;

use serde_json::{Value, json};

use crate::support;
use crate::support::process::{KillOnDrop, Lines, busbar, exit_within};
use crate::support::server::TestServer;

/// A plugin directory holding `plugins` (`(group, name)` of built plugins, with their manifests).
fn plugin_dir(plugins: &[(&str, &str)]) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    for (group, name) in plugins {
        std::fs::copy(support::built(group, name), dir.path().join(format!("{name}.wasm"))).unwrap();
        let toml = support::built(group, name).with_extension("toml");
        if toml.exists() {
            std::fs::copy(toml, dir.path().join(format!("{name}.toml"))).unwrap();
        }
    }
    dir
}

async fn body(response: reqwest::Response) -> Value {
    response.json().await.expect("a JSON body")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_under_a_memory_limit_survives_a_compile_bomb_and_a_crowd_of_hungry_calls() {
    let plugins = plugin_dir(&[("hostile", "ballast")]);
    std::fs::write(plugins.path().join("ballast.toml"), "subscriptions = [\"ballast:*\"]\n[limits]\nmemory-mib = 256\ntimeout-ms = 5000\n[capabilities]\ngrants = [\"everyone\"]\n").unwrap();
    let config = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(
        config.path(),
        "[limits]\nplugin-memory-mib = 320\ncompile-memory-mib = 256\ncompile-timeout-secs = 30\n",
    )
    .unwrap();
    // The whole server may hold 1.5 GiB of data; without the limits, eight 200 MiB calls, or the
    // bomb's compilation, would take it past that.
    let serve = std::process::Command::new("prlimit")
        .arg(format!("--data={}", 1536u64 << 20))
        .arg(env!("CARGO_BIN_EXE_busbar"))
        .args(["serve", "--ephemeral", "--listen", "127.0.0.1:0", "--no-cache", "--config"])
        .arg(config.path())
        .arg("--plugins")
        .arg(plugins.path())
        .env_remove("BUSBAR_JWT_SECRET")
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("prlimit (util-linux) runs busbar serve");
    let mut serve = KillOnDrop(Some(serve));
    let mut log = Lines::of(serve.child().stderr.take().unwrap());
    let listening = log.wait_for("busbar serve started", |l| l.starts_with("busbar listening on http://"));
    let base = format!("http://{}", listening.trim_start_matches("busbar listening on http://").split_whitespace().next().unwrap());
    let http = reqwest::Client::builder().timeout(Duration::from_secs(120)).build().unwrap();

    // The compile bomb: refused with the limit named; the server is untouched.
    let bomb = support::compile_bomb();
    let response = http.put(format!("{base}/v1/plugins/bomb")).header("content-type", "application/wasm").body(bomb).send().await.unwrap();
    assert_eq!(response.status(), 422);
    let error = body(response).await["error"]["message"].as_str().unwrap_or_default().to_string();
    assert!(error.starts_with("compiling needed more than 256 MiB") || error.starts_with("compiling took longer than 30 s"), "{error}");

    // Eight calls at once, each holding 200 MiB: the budget refuses what does not fit.
    let calls = (0..8).map(|_| {
        let (http, base) = (http.clone(), base.clone());
        tokio::spawn(async move {
            let event = json!({"type": "ballast:fill", "workspace_id": "w1", "payload": {"mib": 200, "hold-ms": 200}});
            let report = body(http.post(format!("{base}/v1/events")).json(&event).send().await.unwrap()).await;
            report["results"][0]["events"][0]["listeners"][0]["outcome"].as_str().unwrap().to_string()
        })
    });
    let mut outcomes = Vec::new();
    for call in calls.collect::<Vec<_>>() {
        outcomes.push(call.await.unwrap());
    }
    assert!(outcomes.iter().any(|o| o == "out_of_memory"), "{outcomes:?}");
    assert!(outcomes.iter().all(|o| o == "ok" || o == "out_of_memory"), "{outcomes:?}");

    // Still serving, and every trip is in the metrics.
    let event = json!({"type": "ballast:fill", "workspace_id": "w1", "payload": {"mib": 1}});
    let report = body(http.post(format!("{base}/v1/events")).json(&event).send().await.unwrap()).await;
    assert_eq!(report["results"][0]["events"][0]["listeners"][0]["outcome"], "ok");
    let metrics = http.get(format!("{base}/metrics")).send().await.unwrap().text().await.unwrap();
    let refused = metrics.lines().filter(|l| l.starts_with("busbar_compile_refusals_total{")).map(|l| l.rsplit(' ').next().unwrap()).collect::<Vec<_>>();
    assert!(refused.contains(&"1"), "{metrics}");
    assert!(metrics.lines().any(|l| l.starts_with("busbar_plugin_memory_refusals_total ") && !l.ends_with(" 0")), "{metrics}");
    assert!(metrics.contains("busbar_plugin_memory_budget_bytes 335544320"), "{metrics}");

    let mut serve = serve.0.take().unwrap();
    // SAFETY: kill(2) on the child's pid, which this test owns.
    assert_eq!(unsafe { libc::kill(serve.id() as libc::pid_t, libc::SIGTERM) }, 0);
    let status = tokio::task::spawn_blocking(move || exit_within(&mut serve, Duration::from_secs(30))).await.unwrap();
    assert!(status.success(), "the server exits cleanly, it was never killed: {status:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_response_stays_within_its_report_limit_whatever_the_plugins_return() {
    let plugins = plugin_dir(&[("hostile", "amplifier"), ("hostile", "shouter")]);
    std::fs::write(plugins.path().join("shouter.toml"), "subscriptions = [\"amp:*\"]\n").unwrap();
    let dir = plugins.path().to_path_buf();
    let server = TestServer::start(move |c| {
        c.plugins_dir = Some(dir);
        c.max_report_bytes = 1 << 20;
    })
    .await;
    // Every event fans out to the cap of 256 follow-ups (each returning four more), which the
    // shouter sees too: about 250 KiB of report per event.
    let events: Vec<Value> = (0..20).map(|i| json!({"type": "amp:go", "id": format!("e{i}"), "payload": {"say": "error"}})).collect();
    let response = server.publish(json!(events)).await;
    assert_eq!(response.status(), 200);
    let text = response.text().await.unwrap();
    assert!(text.len() < (1 << 20) + 20 * 1024, "{} bytes", text.len());
    let report: Value = serde_json::from_str(&text).unwrap();
    let results = report["results"].as_array().unwrap();
    assert_eq!(results.len(), 20);
    let summarized: Vec<&Value> = results.iter().filter(|r| r.get("summary").is_some()).collect();
    assert!(!summarized.is_empty() && summarized.len() < 20, "{} of 20 summarized", summarized.len());
    let summary = &summarized[0]["summary"];
    assert_eq!((&summary["events"], &summary["dispatched"]), (&json!(1 + 256 + 772), &json!(257)), "{summary}");
    assert_eq!(summary["not_dispatched"]["event_limit"], 772, "{summary}");
    assert_eq!((&summary["outcomes"]["error"], &summary["outcomes"]["ok"]), (&json!(1), &json!(513)), "{summary}");
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn plugin_names_and_state_over_http() {
    let server = TestServer::start(|_| {}).await;
    let http = reqwest::Client::new();
    let echo = std::fs::read(support::built("testing", "echo")).unwrap();
    for name in [".hidden", "-x", "_x", ".x.wasm"] {
        // Refused before the body is read: a small one, so the refusal is not a reset.
        let response = http.put(server.url(&format!("/v1/plugins/{name}"))).body(echo[..8].to_vec()).send().await.unwrap();
        assert_eq!(response.status(), 400, "{name}");
        let error: Value = response.json().await.unwrap();
        assert!(error["error"]["message"].as_str().unwrap().contains("must start with an ASCII letter or digit"), "{name}: {error}");
    }
    let thief = std::fs::read(support::built("hostile", "kv-thief")).unwrap();
    let install = || async {
        let form = reqwest::multipart::Form::new()
            .part("component", reqwest::multipart::Part::bytes(thief.clone()))
            .text("manifest", "name = \"holder\"\nsubscriptions = [\"kv:*\"]\n[capabilities]\ngrants = [\"everyone\"]\n");
        let response = http.put(server.url("/v1/plugins/holder")).multipart(form).send().await.unwrap();
        assert_eq!(response.status(), 201);
    };
    let serving = &server;
    let said = |op: &'static str| async move {
        let report = serving.publish_ok(json!({"type": "kv:probe", "workspace_id": "w1", "payload": {"op": op}})).await;
        assert_eq!(report["results"][0]["events"][0]["listeners"][0]["outcome"], "ok", "{report}");
    };
    install().await;
    said("write").await;
    let deleted = http.delete(server.url("/v1/plugins/holder")).send().await.unwrap();
    assert_eq!(deleted.status(), 204);
    install().await;
    let metrics_before = http.get(server.url("/v1/plugins/holder")).send().await.unwrap().json::<Value>().await.unwrap();
    assert_eq!(metrics_before["plugin"]["kv_entries"], 0, "the new plugin starts with no state: {metrics_before}");
    said("write").await;
    let kept = http.delete(server.url("/v1/plugins/holder?keep-kv=true")).send().await.unwrap();
    assert_eq!(kept.status(), 204);
    install().await;
    let view = http.get(server.url("/v1/plugins/holder")).send().await.unwrap().json::<Value>().await.unwrap();
    assert_eq!(view["plugin"]["kv_entries"], 1, "kept on request: {view}");
    server.stop().await;
}

#[test]
fn the_compile_worker_refuses_garbage_with_the_validators_message() {
    let mut worker = busbar().arg("compile-worker").stdin(std::process::Stdio::piped()).stdout(std::process::Stdio::piped()).stderr(std::process::Stdio::piped()).spawn().unwrap();
    worker.stdin.take().unwrap().write_all(b"\0asm\x0d\0\x01\0garbage").unwrap();
    let output = worker.wait_with_output().unwrap();
    assert_eq!(output.status.code(), Some(3));
    assert!(output.stdout.is_empty());
    assert!(!String::from_utf8_lossy(&output.stderr).is_empty());
}
