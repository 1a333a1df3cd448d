//! The dashboard's server side: its files, served with a policy that allows only this origin,
//! and its live stream (`/v1/admin/stream`): stats every second, every event published over
//! HTTP with its listeners' outcomes, admin access only.

use std::time::Duration;

use serde_json::{Value, json};

use crate::support::server::TestServer;

/// Reads SSE messages from `response` until `wanted` holds of one (`event` name, data); fails
/// after 10 s.
async fn until_message(response: &mut reqwest::Response, buffer: &mut String, wanted: impl Fn(&str, &Value) -> bool) -> (String, Value) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        while let Some(end) = buffer.find("\n\n") {
            let message: String = buffer.drain(..end + 2).collect();
            let name = message.lines().find_map(|l| l.strip_prefix("event: ")).unwrap_or_default().to_string();
            let data: String = message.lines().filter_map(|l| l.strip_prefix("data: ")).collect();
            if let Ok(value) = serde_json::from_str::<Value>(&data)
                && wanted(&name, &value)
            {
                return (name, value);
            }
        }
        let chunk = tokio::time::timeout_at(deadline, response.chunk()).await.expect("a message within 10 s").unwrap().expect("the stream is open");
        buffer.push_str(&String::from_utf8_lossy(&chunk));
    }
}

#[tokio::test]
async fn the_live_stream_sends_stats_and_every_published_event_with_its_outcomes() {
    let server = TestServer::start(|_| {}).await;
    let mut stream = reqwest::get(server.url("/v1/admin/stream")).await.unwrap();
    assert_eq!(stream.status(), 200);
    assert!(stream.headers()["content-type"].to_str().unwrap().starts_with("text/event-stream"));
    let mut buffer = String::new();
    let (_, stats) = until_message(&mut stream, &mut buffer, |name, _| name == "stats").await;
    assert!(stats["plugins"].as_array().unwrap().iter().any(|p| p["name"] == "workspace-forwarder"), "{stats}");
    assert!(stats["realtime"]["active_connections"].is_number(), "{stats}");
    let published = server.publish_ok(json!({"type": "issue:created", "workspace_id": "ws-1", "payload": {"n": 1}})).await;
    let id = published["results"][0]["event_id"].as_str().unwrap().to_string();
    let (_, seen) = until_message(&mut stream, &mut buffer, |name, v| name == "published" && v["event"]["id"] == id).await;
    assert_eq!(seen["event"]["type"], "issue:created");
    let listeners = &seen["report"][0]["listeners"];
    assert!(listeners.as_array().unwrap().iter().any(|l| l["listener"] == "workspace-forwarder" && l["outcome"] == "ok"), "{seen}");
    assert_eq!(seen["frames"], json!([{"room": "workspace ws-1", "type": "issue:created", "event_id": id, "bytes": 7}]), "the frame it produced");
    drop(stream);
    server.stop().await;
}

#[tokio::test]
async fn the_dashboard_is_served_under_a_strict_policy_and_its_data_needs_admin_access() {
    let server = TestServer::start(|c| c.admin_token = Some("admin-token-for-the-ui".into())).await;
    let http = reqwest::Client::builder().redirect(reqwest::redirect::Policy::none()).build().unwrap();
    for (path, kind) in [("/ui/", "text/html"), ("/ui/app.js", "text/javascript"), ("/ui/app.css", "text/css")] {
        let response = http.get(server.url(path)).send().await.unwrap();
        assert_eq!(response.status(), 200, "{path}");
        assert!(response.headers()["content-type"].to_str().unwrap().starts_with(kind), "{path}");
        let policy = response.headers()["content-security-policy"].to_str().unwrap();
        assert!(policy.contains("script-src 'self'") && policy.contains("frame-ancestors 'none'"), "{policy}");
        // Nothing from elsewhere: the only absolute URL allowed is SVG's namespace name.
        let body = response.text().await.unwrap().replace("http://www.w3.org/2000/svg", "");
        assert!(!body.contains("http://") && !body.contains("https://") && !body.contains("//cdn"), "{path} loads nothing from elsewhere");
    }
    assert_eq!(http.get(server.url("/ui")).send().await.unwrap().status(), 308);
    // The page is public; what it shows is not.
    assert_eq!(http.get(server.url("/v1/admin/stream")).send().await.unwrap().status(), 401);
    let authorised = http.get(server.url("/v1/admin/stream")).bearer_auth("admin-token-for-the-ui").send().await.unwrap();
    assert_eq!(authorised.status(), 200);
    drop(authorised);
    // Another site's page cannot read it through the operator's browser, token or not.
    let cross = http.get(server.url("/v1/plugins")).header("origin", "https://evil.example").header("sec-fetch-site", "cross-site").send().await.unwrap();
    assert_eq!(cross.status(), 401);
    server.stop().await;
}

#[tokio::test]
async fn without_an_admin_token_the_dashboard_reads_from_loopback_but_other_pages_do_not() {
    let server = TestServer::start(|_| {}).await;
    let http = reqwest::Client::new();
    let host = server.addr.to_string();
    let same_origin = http
        .get(server.url("/v1/plugins"))
        .header("sec-fetch-site", "same-origin")
        .header("origin", format!("http://{host}"))
        .send()
        .await
        .unwrap();
    assert_eq!(same_origin.status(), 200);
    let cross = http.get(server.url("/v1/plugins")).header("sec-fetch-site", "cross-site").header("origin", "https://evil.example").send().await.unwrap();
    assert_eq!(cross.status(), 403);
    server.stop().await;
}

#[tokio::test]
async fn a_report_too_large_for_a_response_reaches_the_stream_as_its_summary() {
    let server = TestServer::start(|c| c.max_report_bytes = 16).await;
    let mut stream = reqwest::get(server.url("/v1/admin/stream")).await.unwrap();
    let mut buffer = String::new();
    until_message(&mut stream, &mut buffer, |name, _| name == "stats").await;
    let published = server.publish(json!({"type": "issue:created", "workspace_id": "ws-1"})).await.json::<Value>().await.unwrap();
    let id = published["results"][0]["event_id"].as_str().unwrap().to_string();
    let (_, seen) = until_message(&mut stream, &mut buffer, |name, v| name == "published" && v["event"]["id"] == id).await;
    assert_eq!(seen["report"], json!([]), "{seen}");
    assert_eq!(seen["summary"]["events"], 1, "{seen}");
    assert_eq!(seen["frames"].as_array().map(Vec::len), Some(1), "{seen}");
    drop(stream);
    server.stop().await;
}
