//! `busbar tail`: connect to a running server as a realtime client and print every frame.

use std::process::ExitCode;

use anyhow::{Context, bail};
use busbar::config::DEV_JWT_SECRET;
use busbar::hub::{Claims, auth};
use clap::Args;
use futures_util::{SinkExt, StreamExt};
use serde_json::json;
use tokio_tungstenite::tungstenite::Message;

#[derive(Args)]
pub struct TailArgs {
    /// The WebSocket endpoint.
    #[arg(long, default_value = "ws://127.0.0.1:8080/ws")]
    url: String,
    /// The workspace to connect to.
    #[arg(long)]
    workspace: String,
    /// A connection token; without one, a development token is minted for `--user`.
    #[arg(long, env = "BUSBAR_TOKEN", hide_env_values = true)]
    token: Option<String>,
    /// User id for a development token.
    #[arg(long, default_value = "dev-user")]
    user: String,
    /// Scopes to subscribe to after connecting, `task:ID` or `chat:ID`; repeatable.
    #[arg(long = "subscribe")]
    subscribe: Vec<String>,
}

pub fn run(args: TailArgs) -> anyhow::Result<ExitCode> {
    let token = match args.token.clone() {
        Some(token) => token,
        None => {
            let claims = Claims {
                sub: args.user.clone(),
                exp: busbar::event::now_ms() / 1000 + 3600,
                workspaces: vec![args.workspace.clone()],
                grants: Default::default(),
            };
            auth::mint(DEV_JWT_SECRET.as_bytes(), &claims)
        }
    };
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    runtime.block_on(async move {
        let separator = if args.url.contains('?') { '&' } else { '?' };
        let url = format!("{}{separator}workspace_id={}", args.url, args.workspace);
        let (mut socket, _) = tokio_tungstenite::connect_async(url.as_str()).await.with_context(|| format!("cannot connect to {url}"))?;
        socket.send(Message::text(json!({"type": "auth", "payload": {"token": token}}).to_string())).await?;
        for scope in &args.subscribe {
            let Some((kind, id)) = scope.split_once(':') else { bail!("--subscribe `{scope}` is not KIND:ID") };
            socket.send(Message::text(json!({"type": "subscribe", "payload": {"scope": kind, "id": id}}).to_string())).await?;
        }
        while let Some(message) = socket.next().await {
            match message? {
                Message::Text(text) => println!("{text}"),
                Message::Close(frame) => {
                    if let Some(frame) = frame {
                        eprintln!("closed: {} {}", u16::from(frame.code), frame.reason);
                    }
                    break;
                }
                _ => {}
            }
        }
        Ok(ExitCode::SUCCESS)
    })
}
