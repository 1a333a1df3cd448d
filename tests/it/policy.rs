//! Policy plugins: an authenticator and an authorizer deployed through the API decide who
//! connects and what they may join. The original system's clients, spoken exactly as they speak
//! (the web client's cookie and slug, the desktop client's first-frame token), against the
//! example `original-policy` plugin fed by events; a hostile `gatekeeper` that traps and loops;
//! hot swaps under load; the decision cache and its counters.

use std::net::SocketAddr;
use std::time::Duration;

use serde_json::{Value, json};
use sha2::Digest;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::http::HeaderValue;

use crate::support::server::{Client, TestServer, barrier, types};
use crate::support::built;

const APP_SECRET: &str = "the-application's-jwt-secret";

/// Uploads built plugin `group/component` as `name` with `manifest` (TOML text).
async fn deploy(server: &TestServer, name: &str, group: &str, component: &str, manifest: &str) -> reqwest::Response {
    let bytes = std::fs::read(built(group, component)).expect("a built plugin");
    let form = reqwest::multipart::Form::new().part("component", reqwest::multipart::Part::bytes(bytes)).text("manifest", manifest.to_string());
    let response = reqwest::Client::new().put(server.url(&format!("/v1/plugins/{name}"))).multipart(form).send().await.unwrap();
    if response.status() == 422 {
        panic!("{name} refused: {}", response.text().await.unwrap_or_default());
    }
    response
}

/// The checked-in manifest of a built plugin with `config` keys set.
fn manifest_with(group: &str, component: &str, config: &[(&str, &str)]) -> String {
    let text = std::fs::read_to_string(built(group, component).with_extension("toml")).expect("a checked-in manifest");
    let mut table: toml::Table = text.parse().expect("valid TOML");
    let section = table.entry("config").or_insert_with(|| toml::Value::Table(toml::Table::new()));
    for (key, value) in config {
        section.as_table_mut().expect("[config] is a table").insert(key.to_string(), toml::Value::String(value.to_string()));
    }
    table.to_string()
}

/// A JWT as the original application issues it: HS256, `sub`, `exp`, `email`, no `workspaces`.
fn original_jwt(user: &str, secret: &str, lifetime_secs: i64) -> String {
    let exp = busbar::event::now_ms() as i64 / 1000 + lifetime_secs;
    let claims = json!({"sub": user, "exp": exp, "email": format!("{user}@example.com")});
    let key = jsonwebtoken::EncodingKey::from_secret(secret.as_bytes());
    jsonwebtoken::encode(&jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256), &claims, &key).unwrap()
}

/// Opens `/ws?query` with `headers`, as a client of the original system does; the refusal
/// (HTTP status and body) when the upgrade is refused.
async fn open(server: &TestServer, query: &str, headers: &[(&str, &str)]) -> Result<Client, (u16, String)> {
    open_at(server.addr, query, headers).await
}

async fn open_at(addr: SocketAddr, query: &str, headers: &[(&str, &str)]) -> Result<Client, (u16, String)> {
    let mut request = format!("ws://{addr}/ws?{query}").into_client_request().unwrap();
    for (name, value) in headers {
        let name = tokio_tungstenite::tungstenite::http::HeaderName::from_bytes(name.as_bytes()).unwrap();
        request.headers_mut().insert(name, HeaderValue::from_str(value).unwrap());
    }
    match tokio_tungstenite::connect_async(request).await {
        Ok((socket, _)) => Ok(Client { socket }),
        Err(tokio_tungstenite::tungstenite::Error::Http(response)) => {
            let body = response.body().as_ref().map(|b| String::from_utf8_lossy(b).to_string()).unwrap_or_default();
            Err((response.status().as_u16(), body))
        }
        Err(e) => panic!("connecting: {e}"),
    }
}

/// The original web client: cookie at the upgrade, the workspace by slug, no `auth` frame.
async fn web_client(server: &TestServer, slug: &str, jwt: &str) -> Result<Client, (u16, String)> {
    let cookie = format!("theme=dark; multica_auth={jwt}");
    open(server, &format!("workspace_slug={slug}&client_platform=web&client_version=1.0&client_os=linux"), &[("cookie", &cookie)]).await
}

/// The original desktop client: the workspace by slug, the token in the first frame, then
/// waits for `auth_ack`; the error frame and close code when refused.
async fn desktop_client(server: &TestServer, slug: &str, token: &str) -> Result<Client, (Value, Option<u16>)> {
    let mut client = open(server, &format!("workspace_slug={slug}&client_platform=desktop"), &[]).await.expect("the upgrade");
    client.send(json!({"type": "auth", "payload": {"token": token}})).await;
    let first = client.next_or_close().await;
    match first {
        Some(frame) if frame["type"] == "auth_ack" => Ok(client),
        Some(frame) => Err((frame, client.close_code().await)),
        None => Err((Value::Null, None)),
    }
}

/// Frames up to the barrier, without busbar's own control frames (which the original clients
/// ignore: they route on the event types they know).
async fn events(client: &mut Client) -> Vec<Value> {
    client.until_barrier().await.into_iter().filter(|f| !f["type"].as_str().unwrap_or_default().starts_with("auth")).collect()
}

/// A server with the example policy plugin deployed (the application's secret in its config)
/// and the example forwarder delivering chat to the workspace, as the original did; fed with
/// the events that tell the plugin about workspace `acme`, its members and a desktop token.
async fn original_setup() -> TestServer {
    let server = TestServer::start(|_| {}).await;
    let policy = manifest_with("policy", "original-policy", &[("jwt-secret", APP_SECRET)]);
    assert_eq!(deploy(&server, "original-policy", "policy", "original-policy", &policy).await.status(), 201);
    let forwarder = manifest_with("examples", "workspace-forwarder", &[("chat-to-workspace", "true")]);
    assert_eq!(deploy(&server, "workspace-forwarder", "examples", "workspace-forwarder", &forwarder).await.status(), 200);
    let pat_hash = hex::encode(sha2::Sha256::digest(b"mul_bobs-desktop-token"));
    server
        .publish_ok(json!([
            {"type": "workspace:updated", "workspace_id": "ws-acme", "payload": {"workspace": {"id": "ws-acme", "slug": "acme"}}},
            {"type": "member:added", "workspace_id": "ws-acme", "payload": {"member": {"user_id": "alice", "role": "owner"}}},
            {"type": "member:added", "workspace_id": "ws-acme", "payload": {"member": {"user_id": "bob", "role": "member"}}},
            {"type": "personal_access_token:created", "payload": {"token_hash": pat_hash, "user_id": "bob"}},
            {"type": "task:queued", "workspace_id": "ws-acme", "task_id": "t-issue", "payload": {"task_id": "t-issue", "issue_id": "i-1"}},
            {"type": "chat:message", "workspace_id": "ws-acme", "actor_type": "member", "actor_id": "alice", "chat_session_id": "c-alice",
             "payload": {"chat_session_id": "c-alice", "message_id": "m-0", "role": "user", "content": "first"}},
            {"type": "task:queued", "workspace_id": "ws-acme", "task_id": "t-chat", "chat_session_id": "c-alice",
             "payload": {"task_id": "t-chat", "chat_session_id": "c-alice"}},
        ]))
        .await;
    server
}

#[tokio::test]
async fn the_original_web_and_desktop_clients_connect_unchanged_and_get_what_the_original_delivered() {
    let server = original_setup().await;
    let mut web = web_client(&server, "acme", &original_jwt("alice", APP_SECRET, 600)).await.expect("the web client connects");
    let mut desktop = desktop_client(&server, "acme", "mul_bobs-desktop-token").await.expect("the desktop client's PAT is accepted");
    let mut desktop_jwt = desktop_client(&server, "acme", &original_jwt("bob", APP_SECRET, 600)).await.expect("a JWT in the first frame too");
    barrier(&server).await;
    for client in [&mut web, &mut desktop, &mut desktop_jwt] {
        events(client).await;
    }
    server
        .publish_ok(json!([
            {"type": "issue:created", "workspace_id": "ws-acme", "actor_type": "member", "actor_id": "alice", "payload": {"issue": {"id": "i-2"}}},
            {"type": "comment:created", "workspace_id": "ws-acme", "actor_type": "member", "actor_id": "bob", "payload": {"comment": {"id": "k-1"}}},
            {"type": "chat:message", "workspace_id": "ws-acme", "actor_type": "member", "actor_id": "alice", "chat_session_id": "c-alice",
             "payload": {"chat_session_id": "c-alice", "message_id": "m-1", "role": "user", "content": "hello"}},
            {"type": "inbox:new", "workspace_id": "ws-acme", "payload": {"item": {"id": "n-1", "recipient_id": "alice"}}},
            {"type": "inbox:unread", "workspace_id": "ws-acme", "payload": {"recipient_id": "alice", "count": 1}},
            {"type": "invitation:created", "workspace_id": "ws-acme", "payload": {"invitee_user_id": "bob"}},
            {"type": "invitation:accepted", "workspace_id": "ws-acme", "payload": {"invitee_user_id": "carol"}},
            {"type": "issue:created", "workspace_id": "ws-other", "payload": {"issue": {"id": "elsewhere"}}},
        ]))
        .await;
    barrier(&server).await;
    let web_frames = events(&mut web).await;
    assert_eq!(
        types(&web_frames),
        ["issue:created", "comment:created", "chat:message", "inbox:new", "inbox:unread", "invitation:accepted"],
        "{web_frames:?}"
    );
    for frame in &web_frames {
        for key in ["type", "payload", "actor_id", "actor_type"] {
            assert!(frame.get(key).is_some(), "every frame carries `{key}`, as the original's: {frame}");
        }
    }
    assert_eq!(web_frames[0]["actor_id"], "alice");
    for client in [&mut desktop, &mut desktop_jwt] {
        let frames = events(client).await;
        assert_eq!(
            types(&frames),
            ["issue:created", "comment:created", "chat:message", "inbox:unread", "invitation:created", "invitation:accepted"],
            "bob gets his invitation and not alice's inbox item: {frames:?}"
        );
    }
    server.stop().await;
}

#[tokio::test]
async fn the_original_clients_are_refused_where_the_original_refused_them() {
    let server = original_setup().await;
    let refused = |status: u16, text: &str, got: Result<Client, (u16, String)>| match got {
        Err((code, body)) => {
            assert_eq!(code, status, "{body}");
            assert!(body.contains(text), "{body} should say {text:?}");
        }
        Ok(_) => panic!("expected {status} {text:?}, the upgrade succeeded"),
    };
    let alice = original_jwt("alice", APP_SECRET, 600);
    refused(401, "invalid token", web_client(&server, "acme", &original_jwt("alice", "another-secret", 600)).await);
    refused(401, "token expired", web_client(&server, "acme", &original_jwt("alice", APP_SECRET, -600)).await);
    refused(403, "not a member of this workspace", web_client(&server, "acme", &original_jwt("carol", APP_SECRET, 600)).await);
    refused(404, "workspace not found", web_client(&server, "no-such-slug", &alice).await);
    refused(400, "workspace_id or workspace_slug required", open(&server, "client_platform=web", &[("cookie", &format!("multica_auth={alice}"))]).await);
    // A bad cookie does not fall back to the auth frame.
    refused(401, "invalid token", web_client(&server, "acme", "garbage").await);
    for (token, close) in [("mul_unknown-token", 4500), ("not-a-jwt", 4500), (original_jwt("carol", APP_SECRET, 600).as_str(), 4503)] {
        let (frame, code) = desktop_client(&server, "acme", token).await.err().expect("refused");
        assert_eq!(code, Some(close), "{token}: {frame}");
        assert_eq!(frame["type"], "error", "{frame}");
    }
    // Membership follows the events: a removed member is refused at the next connect.
    server.publish_ok(json!({"type": "member:removed", "workspace_id": "ws-acme", "payload": {"member": {"user_id": "bob"}}})).await;
    refused(403, "not a member of this workspace", web_client(&server, "acme", &original_jwt("bob", APP_SECRET, 600)).await);
    server.stop().await;
}

#[tokio::test]
async fn the_example_authorizer_applies_the_original_rules_to_task_and_chat_rooms() {
    let server = original_setup().await;
    let mut alice = web_client(&server, "acme", &original_jwt("alice", APP_SECRET, 600)).await.expect("alice connects");
    let mut bob = desktop_client(&server, "acme", "mul_bobs-desktop-token").await.expect("bob connects");
    let answer = async |client: &mut Client, scope: &str, id: &str| {
        client.send(json!({"type": "subscribe", "payload": {"scope": scope, "id": id}})).await;
        loop {
            // The web client never read its `auth_ack`; events may come first too.
            let frame = client.next().await;
            if frame["type"].as_str().is_some_and(|t| t.starts_with("subscribe")) {
                assert_eq!(frame["payload"]["id"], id, "{frame}");
                return (frame["type"].as_str().unwrap_or_default().to_string(), frame["payload"]["error"].as_str().unwrap_or_default().to_string());
            }
        }
    };
    let ack = ("subscribe_ack".to_string(), String::new());
    let forbidden = ("subscribe_error".to_string(), "forbidden".to_string());
    assert_eq!(answer(&mut alice, "chat", "c-alice").await, ack, "the creator joins her chat");
    assert_eq!(answer(&mut bob, "chat", "c-alice").await, forbidden, "a chat is its creator's only");
    assert_eq!(answer(&mut bob, "task", "t-issue").await, ack, "any member joins an issue's task");
    assert_eq!(answer(&mut bob, "task", "t-chat").await, forbidden, "a chat's task is its creator's only");
    assert_eq!(answer(&mut alice, "task", "t-chat").await, ack);
    assert_eq!(answer(&mut alice, "task", "t-unknown").await, forbidden, "an unknown task is a plain denial");
    // A task created a moment later is not hidden by a cached denial.
    server.publish_ok(json!({"type": "task:queued", "workspace_id": "ws-acme", "task_id": "t-unknown", "payload": {"task_id": "t-unknown", "issue_id": "i-9"}})).await;
    assert_eq!(answer(&mut alice, "task", "t-unknown").await, ack);
    // Chat traffic reaches a chat room's members.
    server
        .publish_ok(json!({"type": "chat:done", "workspace_id": "ws-acme", "chat_session_id": "c-alice", "payload": {"chat_session_id": "c-alice", "task_id": "t-chat"}}))
        .await;
    barrier(&server).await;
    assert!(types(&alice.until_barrier().await).contains(&"chat:done".to_string()));
    server.stop().await;
}

/// A server with the `gatekeeper` test plugin as authenticator and authorizer, `config` set,
/// and subscribe limits out of the way.
async fn gatekeeper(config: &[(&str, &str)]) -> TestServer {
    // Room for the hot-swap test's hundreds of subscribes on one connection.
    let server = TestServer::start(|c| {
        c.hub.subscribe_rate = 10_000.0;
        c.hub.subscribe_burst = 10_000.0;
        c.hub.max_scopes = 1024;
    })
    .await;
    let manifest = manifest_with("testing", "gatekeeper", config);
    assert_eq!(deploy(&server, "gatekeeper", "testing", "gatekeeper", &manifest).await.status(), 201);
    server
}

async fn gatekeeper_client(addr: SocketAddr, user: &str) -> Client {
    let mut client = open_at(addr, &format!("user={user}&workspace=ws-1"), &[]).await.expect("the gatekeeper lets it in");
    assert_eq!(client.next().await["type"], "auth_ack");
    client
}

async fn metrics(server: &TestServer) -> String {
    reqwest::get(server.url("/metrics")).await.unwrap().text().await.unwrap()
}

fn metric(text: &str, series: &str) -> f64 {
    text.lines().find_map(|l| l.strip_prefix(series).and_then(|v| v.trim().parse().ok())).unwrap_or(0.0)
}

#[tokio::test]
async fn a_trapping_or_looping_authorizer_answers_lookup_failed_and_the_hub_keeps_serving() {
    let server = gatekeeper(&[]).await;
    let mut client = gatekeeper_client(server.addr, "u1").await;
    for room in ["trap-1", "spin-1", "undecided", "huge", "trap-2"] {
        let frame = client.subscribe("task", room).await;
        assert_eq!((frame["type"].as_str(), frame["payload"]["error"].as_str()), (Some("subscribe_error"), Some("lookup_failed")), "{room}: {frame}");
    }
    assert_eq!(client.subscribe("task", "t-fine").await["type"], "subscribe_ack", "the authorizer still answers");
    server.publish_ok(json!({"type": "probe:after", "workspace_id": "ws-1"})).await;
    let text = metrics(&server).await;
    let series = |outcome: &str| format!("busbar_policy_decisions_total{{plugin=\"gatekeeper\",role=\"authorizer\",outcome=\"{outcome}\"}}");
    assert_eq!(metric(&text, &series("failed")), 3.0, "two traps and a loop: {text}");
    assert_eq!(metric(&text, &series("undecided")), 2.0, "its own error, however long (cut)");
    assert_eq!(metric(&text, &series("allow")), 1.0);
    let all_calls = text.lines().find(|l| {
        l.starts_with("busbar_policy_decision_seconds_bucket{") && ["le=\"+Inf\"", "plugin=\"gatekeeper\"", "role=\"authorizer\""].iter().all(|label| l.contains(label))
    });
    assert_eq!(all_calls.and_then(|l| l.rsplit(' ').next()), Some("6"), "every call reached the plugin: {text}");
    server.stop().await;
}

#[tokio::test]
async fn an_authenticator_that_fails_refuses_the_connection_with_the_documented_code() {
    let server = gatekeeper(&[]).await;
    for mode in ["trap", "spin"] {
        let (status, body) = open(&server, &format!("user=u1&workspace=ws-1&mode={mode}"), &[]).await.err().expect("refused");
        assert_eq!(status, 503, "{mode}: {body}");
        assert!(body.contains("authenticator_failed"), "{body}");
    }
    let (status, body) = open(&server, "user=u1&workspace=ws-1&mode=refuse", &[]).await.err().expect("refused");
    assert_eq!((status, body.contains("refused by gatekeeper")), (403, true), "{body}");
    // Asked for in the first frame: a wrong token closes with 4500, a right one is let in.
    let mut client = open(&server, "user=u1&workspace=ws-1&mode=frame", &[]).await.expect("the upgrade waits for the frame");
    client.send(json!({"type": "auth", "payload": {"token": "wrong"}})).await;
    assert_eq!(client.next().await["payload"]["code"], "invalid_token");
    assert_eq!(client.close_code().await, Some(4500));
    // Failing on the frame closes with 4504.
    let mut client = open(&server, "user=u1&workspace=ws-1&mode=frame", &[]).await.expect("the upgrade");
    client.send(json!({"type": "auth", "payload": {"token": "trap"}})).await;
    assert_eq!(client.next().await["payload"]["code"], "authenticator_failed");
    assert_eq!(client.close_code().await, Some(4504));
    let mut client = open(&server, "user=u1&workspace=ws-1&mode=frame", &[]).await.expect("the upgrade");
    client.send(json!({"type": "auth", "payload": {"token": "letmein"}})).await;
    assert_eq!(client.next().await["type"], "auth_ack");
    // A refresh goes to the authenticator again.
    client.send(json!({"type": "auth", "payload": {"token": "letmein"}})).await;
    let refreshed = client.next().await;
    assert_eq!(refreshed["type"], "auth_ack", "{refreshed}");
    assert!(refreshed["payload"]["exp"].as_u64().is_some(), "{refreshed}");
    let _ok = gatekeeper_client(server.addr, "u2").await;
    server.stop().await;
}

#[tokio::test]
async fn decisions_are_cached_for_as_long_as_the_plugin_asks_and_a_new_version_decides_afresh() {
    let server = gatekeeper(&[("cache-ms", "60000")]).await;
    let mut client = gatekeeper_client(server.addr, "u1").await;
    for _ in 0..3 {
        assert_eq!(client.subscribe("task", "t-1").await["type"], "subscribe_ack");
        client.send(json!({"type": "unsubscribe", "payload": {"scope": "task", "id": "t-1"}})).await;
        assert_eq!(client.next().await["type"], "unsubscribe_ack");
    }
    let text = metrics(&server).await;
    let series = |outcome: &str| format!("busbar_policy_decisions_total{{plugin=\"gatekeeper\",role=\"authorizer\",outcome=\"{outcome}\"}}");
    assert_eq!((metric(&text, &series("allow")), metric(&text, &series("cached_allow"))), (1.0, 2.0), "{text}");
    let manifest = manifest_with("testing", "gatekeeper", &[("cache-ms", "60000"), ("verdict", "deny")]);
    assert_eq!(deploy(&server, "gatekeeper", "testing", "gatekeeper", &manifest).await.status(), 200);
    let frame = client.subscribe("task", "t-1").await;
    assert_eq!(frame["payload"]["error"], "forbidden", "the cached allow went with the old version: {frame}");
    server.stop().await;
}

#[tokio::test]
async fn policy_plugins_are_hot_swapped_under_load_without_a_failed_decision() {
    let server = gatekeeper(&[]).await;
    let load = {
        let addr = server.addr;
        tokio::spawn(async move {
            let mut client = gatekeeper_client(addr, "u1").await;
            let mut answers = Vec::new();
            for i in 0..300 {
                let frame = client.subscribe("task", &format!("t-{i}")).await;
                answers.push(frame["payload"]["error"].as_str().unwrap_or("ack").to_string());
                if i % 10 == 0 {
                    // New connections are authenticated throughout.
                    drop(gatekeeper_client(addr, &format!("u-{i}")).await);
                }
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
            answers
        })
    };
    tokio::time::sleep(Duration::from_millis(200)).await;
    for verdict in ["deny", "allow", "deny"] {
        let manifest = manifest_with("testing", "gatekeeper", &[("verdict", verdict)]);
        assert_eq!(deploy(&server, "gatekeeper", "testing", "gatekeeper", &manifest).await.status(), 200);
        tokio::time::sleep(Duration::from_millis(150)).await;
    }
    let answers = load.await.unwrap();
    assert!(answers.iter().all(|a| a == "ack" || a == "forbidden"), "only allow or deny, never a failure: {answers:?}");
    assert_eq!(answers.first().map(String::as_str), Some("ack"));
    assert_eq!(answers.last().map(String::as_str), Some("forbidden"), "the last version denies");
    assert!(answers.iter().any(|a| a == "forbidden") && answers.iter().filter(|a| *a == "ack").count() > 1);
    server.stop().await;
}

#[tokio::test]
async fn a_role_has_one_holder_and_is_released_when_its_plugin_goes() {
    let server = gatekeeper(&[]).await;
    let manifest = manifest_with("testing", "gatekeeper", &[]).replace("name = \"gatekeeper\"", "name = \"second\"");
    let response = deploy(&server, "second", "testing", "gatekeeper", &manifest).await;
    assert_eq!(response.status(), 409);
    let body: Value = response.json().await.unwrap();
    assert!(body["error"]["message"].as_str().unwrap_or_default().contains("held by plugin `gatekeeper`"), "{body}");
    let listed: Value = reqwest::get(server.url("/v1/plugins/gatekeeper")).await.unwrap().json().await.unwrap();
    assert_eq!(listed["plugin"]["roles"], json!(["authenticator", "authorizer"]), "{listed}");
    let deleted = reqwest::Client::new().delete(server.url("/v1/plugins/gatekeeper")).send().await.unwrap();
    assert!(deleted.status().is_success());
    // busbar's own token check is back: `workspace_id` and a token.
    let (status, _) = open(&server, "user=u1&workspace=ws-1", &[]).await.err().expect("refused without workspace_id");
    assert_eq!(status, 400);
    let mut client = Client::connect(&server, "ws-1", &crate::support::server::token("u1", &["ws-1"], &[])).await;
    assert_eq!(client.subscribe("task", "t-1").await["payload"]["error"], "forbidden", "the token grants no task");
    assert_eq!(deploy(&server, "second", "testing", "gatekeeper", &manifest).await.status(), 201);
    let mut client = gatekeeper_client(server.addr, "u9").await;
    assert_eq!(client.subscribe("task", "t-1").await["type"], "subscribe_ack");
    server.stop().await;
}

/// An embedding application's own authenticator: sessions it knows, by a header.
struct Sessions;

impl busbar::hub::Authenticator for Sessions {
    fn authenticate<'a>(&'a self, request: &'a busbar::hub::ConnectRequest) -> Option<busbar::hub::AuthenticateFuture<'a>> {
        let session = request.headers.iter().find(|(name, _)| name == "x-session").map(|(_, v)| v.clone());
        Some(Box::pin(async move {
            use busbar::hub::{Authenticated, Claims, Identity, Refusal, RefusalKind};
            match session.as_deref() {
                Some("s-alice") => {
                    let claims = Claims { sub: "alice".into(), exp: busbar::event::now_ms() / 1000 + 60, workspaces: vec!["ws-1".into()], grants: Default::default() };
                    Ok(Authenticated::Identified(Identity { user_id: "alice".into(), workspace_id: "ws-1".into(), claims: std::sync::Arc::new(claims) }))
                }
                Some(_) => Err(Refusal::new(RefusalKind::InvalidToken, "unknown session")),
                None => Ok(Authenticated::NeedAuthFrame),
            }
        }))
    }
}

#[tokio::test]
async fn an_embedder_authenticates_with_its_own_rules_until_a_plugin_takes_the_role() {
    let server = TestServer::start_with_policy(|_| {}, std::sync::Arc::new(busbar::hub::ClaimsAuthorizer), std::sync::Arc::new(Sessions)).await;
    let mut alice = open(&server, "", &[("x-session", "s-alice")]).await.expect("the embedder's session");
    assert_eq!(alice.next().await["type"], "auth_ack");
    let (status, _) = open(&server, "", &[("x-session", "s-mallory")]).await.err().expect("refused");
    assert_eq!(status, 401);
    let manifest = manifest_with("testing", "gatekeeper", &[]);
    assert_eq!(deploy(&server, "gatekeeper", "testing", "gatekeeper", &manifest).await.status(), 201);
    let (status, _) = open(&server, "", &[("x-session", "s-alice")]).await.err().expect("the plugin decides now");
    assert_eq!(status, 400, "the gatekeeper wants `user` and `workspace`");
    let _gated = gatekeeper_client(server.addr, "u1").await;
    server.stop().await;
}

#[test]
fn listeners_keep_the_listener_shape_and_policy_plugins_serve_every_world() {
    let runtime = &*crate::support::RUNTIME;
    // Built with the SDK that also exports policy worlds: a listener imports nothing of them.
    for (group, name) in [("examples", "workspace-forwarder"), ("testing", "echo")] {
        let info = runtime.check(&std::fs::read(built(group, name)).unwrap()).unwrap();
        assert_eq!(info.worlds, ["listener"], "{name}");
        assert!(info.imports.iter().all(|i| !i.contains("policy-types")), "{name}: {:?}", info.imports);
    }
    let info = runtime.check(&std::fs::read(built("policy", "original-policy")).unwrap()).unwrap();
    assert_eq!(info.worlds, ["listener", "authenticator", "authorizer"]);
    // A manifest that gives a plain listener a role is refused, naming the export it lacks.
    let mut manifest = busbar::plugins::Manifest::named("pretender");
    manifest.policy.roles.insert(busbar::plugins::Role::Authorizer);
    let refused = runtime.load(&std::fs::read(built("testing", "echo")).unwrap(), manifest).unwrap_err().to_string();
    assert!(refused.contains("needs the export `authorize`"), "{refused}");
}
