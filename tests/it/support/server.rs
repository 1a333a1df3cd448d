//! A real server on port 0 in the test's process, WebSocket clients speaking the protocol, and
//! tokens minted with the development secret.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use busbar::config::{Config, DEV_JWT_SECRET, Overrides};
use busbar::hub::{Claims, Grants, auth};
use futures_util::{SinkExt, StreamExt};
use serde_json::{Value, json};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};
use tokio_util::sync::CancellationToken;

use super::wait::PATIENCE;

pub struct TestServer {
    pub addr: SocketAddr,
    pub shutdown: CancellationToken,
    pub handle: tokio::task::JoinHandle<std::io::Result<()>>,
}

impl TestServer {
    pub async fn start(configure: impl FnOnce(&mut Config)) -> TestServer {
        TestServer::start_with_authorizer(configure, std::sync::Arc::new(busbar::hub::ClaimsAuthorizer)).await
    }

    /// A server whose task and chat subscriptions are decided by `authorizer`.
    pub async fn start_with_authorizer(
        configure: impl FnOnce(&mut Config),
        authorizer: std::sync::Arc<dyn busbar::hub::ScopeAuthorizer>,
    ) -> TestServer {
        TestServer::start_with_policy(configure, authorizer, std::sync::Arc::new(busbar::hub::TokenOnly)).await
    }

    /// A server whose subscriptions are decided by `authorizer` and connections by `authenticator`.
    pub async fn start_with_policy(
        configure: impl FnOnce(&mut Config),
        authorizer: std::sync::Arc<dyn busbar::hub::ScopeAuthorizer>,
        authenticator: std::sync::Arc<dyn busbar::hub::Authenticator>,
    ) -> TestServer {
        let overrides = Overrides {
            listen: Some("127.0.0.1:0".into()),
            cache_dir: Some(PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("busbar-test-cache")),
            ..Overrides::default()
        };
        let mut config = Config::load_with(&overrides, |_| None).expect("test config");
        config.instance_slots = 64;
        configure(&mut config);
        let shutdown = CancellationToken::new();
        let app = busbar::server::build_with_policy(&config, shutdown.clone(), authorizer, authenticator).expect("building the server");
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let handle = tokio::spawn(busbar::server::run(listener, app));
        TestServer { addr, shutdown, handle }
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    pub async fn publish(&self, events: Value) -> reqwest::Response {
        reqwest::Client::new().post(self.url("/v1/events")).json(&events).send().await.unwrap()
    }

    /// Publishes and checks every listener succeeded.
    pub async fn publish_ok(&self, events: Value) -> Value {
        let response = self.publish(events).await;
        assert_eq!(response.status(), 200);
        response.json().await.unwrap()
    }

    pub async fn realtime(&self) -> Value {
        reqwest::get(self.url("/health/realtime")).await.unwrap().json().await.unwrap()
    }

    /// Polls `/health/realtime` every 10 ms until `check` holds of it, and returns it; fails
    /// after `PATIENCE` showing the last one.
    pub async fn realtime_until(&self, what: &str, check: impl Fn(&Value) -> bool) -> Value {
        let started = std::time::Instant::now();
        loop {
            let realtime = self.realtime().await;
            if check(&realtime) {
                return realtime;
            }
            assert!(started.elapsed() < PATIENCE, "timed out waiting for: {what}: {realtime}");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    pub async fn stop(self) {
        self.shutdown.cancel();
        let _ = tokio::time::timeout(Duration::from_secs(10), self.handle).await;
    }
}

pub fn token(user: &str, workspaces: &[&str], grants: &[(&str, &str, &str)]) -> String {
    let mut claims = Claims {
        sub: user.into(),
        exp: busbar::event::now_ms() / 1000 + 600,
        workspaces: workspaces.iter().map(|w| w.to_string()).collect(),
        grants: Default::default(),
    };
    for (workspace, kind, id) in grants {
        let entry: &mut Grants = claims.grants.entry(workspace.to_string()).or_default();
        match *kind {
            "task" => entry.task.push(id.to_string()),
            _ => entry.chat.push(id.to_string()),
        }
    }
    auth::mint(DEV_JWT_SECRET.as_bytes(), &claims)
}

pub struct Client {
    pub socket: WebSocketStream<MaybeTlsStream<TcpStream>>,
}

impl Client {
    /// Connects and authenticates with an `auth` frame.
    pub async fn connect(server: &TestServer, workspace: &str, token: &str) -> Client {
        let mut client = Client::open(server, workspace).await;
        client.send(json!({"type": "auth", "payload": {"token": token}})).await;
        assert_eq!(client.next().await["type"], "auth_ack");
        client
    }

    /// Opens a socket without authenticating.
    pub async fn open(server: &TestServer, workspace: &str) -> Client {
        Client::try_open(server, workspace).await.expect("connecting")
    }

    /// Opens a socket without authenticating, or says why the server refused it.
    pub async fn try_open(server: &TestServer, workspace: &str) -> Result<Client, tokio_tungstenite::tungstenite::Error> {
        let url = format!("ws://{}/ws?workspace_id={workspace}", server.addr);
        let (socket, _) = tokio_tungstenite::connect_async(url).await?;
        Ok(Client { socket })
    }

    pub async fn send(&mut self, frame: Value) {
        self.socket.send(Message::text(frame.to_string())).await.unwrap();
    }

    /// The next text frame, as JSON.
    pub async fn next(&mut self) -> Value {
        loop {
            let message = tokio::time::timeout(Duration::from_secs(10), self.socket.next())
                .await
                .expect("a frame within 10 s")
                .expect("the connection is open")
                .expect("a valid frame");
            match message {
                Message::Text(text) => return serde_json::from_str(&text).unwrap(),
                Message::Close(frame) => panic!("closed: {frame:?}"),
                _ => continue,
            }
        }
    }

    /// The next text frame, or `None` when the server closes the connection instead.
    pub async fn next_or_close(&mut self) -> Option<Value> {
        loop {
            let message = tokio::time::timeout(Duration::from_secs(10), self.socket.next()).await.expect("a frame within 10 s")?;
            match message.ok()? {
                Message::Text(text) => return serde_json::from_str(&text).ok(),
                Message::Close(_) => return None,
                _ => continue,
            }
        }
    }

    /// Every frame up to (not including) the `daemon:barrier` broadcast.
    pub async fn until_barrier(&mut self) -> Vec<Value> {
        let mut frames = Vec::new();
        loop {
            let frame = self.next().await;
            if frame["type"] == "daemon:barrier" {
                return frames;
            }
            frames.push(frame);
        }
    }

    /// Reads until the server closes; returns the close code.
    pub async fn close_code(&mut self) -> Option<u16> {
        read_until_close(&mut self.socket).await
    }

    pub async fn subscribe(&mut self, scope: &str, id: &str) -> Value {
        self.send(json!({"type": "subscribe", "payload": {"scope": scope, "id": id}})).await;
        self.next().await
    }
}

/// Sends a `daemon:barrier` to everyone: the workspace-forwarder broadcasts workspace-less
/// `daemon:*` events, so every client sees it after everything published before it.
pub async fn barrier(server: &TestServer) {
    server.publish_ok(json!({"type": "daemon:barrier"})).await;
}

pub fn types(frames: &[Value]) -> Vec<String> {
    frames.iter().map(|f| f["type"].as_str().unwrap_or_default().to_string()).collect()
}

/// Reads (and discards) frames until the close frame; its code.
pub async fn read_until_close<S>(socket: &mut WebSocketStream<S>) -> Option<u16>
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    let read = async {
        while let Some(message) = socket.next().await {
            match message {
                Ok(Message::Close(frame)) => return frame.map(|f| u16::from(f.code)),
                Ok(_) => continue,
                Err(e) => {
                    eprintln!("connection ended without a close frame: {e}");
                    return None;
                }
            }
        }
        None
    };
    tokio::time::timeout(Duration::from_secs(10), read).await.expect("closed within 10 s")
}
