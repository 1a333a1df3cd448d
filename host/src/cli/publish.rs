//! `busbar publish`: post events to a running server, from flags or a file, and print the
//! listeners' outcomes.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use clap::Args;
use serde_json::{Value, json};

#[derive(Args)]
pub struct PublishArgs {
    /// The server.
    #[arg(long, default_value = "http://127.0.0.1:8080")]
    url: String,
    /// Bearer token (publish or admin token), if the server requires one.
    #[arg(long, env = "BUSBAR_PUBLISH_TOKEN", hide_env_values = true)]
    token: Option<String>,
    /// A file holding one event (JSON object) or an array of events; `-` for standard input.
    #[arg(long, conflicts_with_all = ["event_type", "workspace", "payload"])]
    file: Option<PathBuf>,
    /// Event type, e.g. `issue:created`.
    #[arg(long = "type", required_unless_present = "file")]
    event_type: Option<String>,
    #[arg(long)]
    workspace: Option<String>,
    /// JSON payload.
    #[arg(long)]
    payload: Option<String>,
    #[arg(long)]
    actor_type: Option<String>,
    #[arg(long)]
    actor_id: Option<String>,
    #[arg(long)]
    task: Option<String>,
    #[arg(long)]
    chat: Option<String>,
}

pub fn run(args: PublishArgs) -> anyhow::Result<ExitCode> {
    let body = match &args.file {
        Some(path) if path.as_os_str() == "-" => std::io::read_to_string(std::io::stdin()).context("reading standard input")?,
        Some(path) => std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?,
        None => {
            let payload: Value = match &args.payload {
                Some(text) => serde_json::from_str(text).context("--payload is not valid JSON")?,
                None => json!({}),
            };
            let mut event = json!({"type": args.event_type, "payload": payload});
            for (key, value) in [
                ("workspace_id", &args.workspace),
                ("actor_type", &args.actor_type),
                ("actor_id", &args.actor_id),
                ("task_id", &args.task),
                ("chat_session_id", &args.chat),
            ] {
                if let Some(value) = value {
                    event[key] = json!(value);
                }
            }
            event.to_string()
        }
    };
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    runtime.block_on(async {
        let mut request = reqwest::Client::new()
            .post(format!("{}/v1/events", args.url.trim_end_matches('/')))
            .header("content-type", "application/json")
            .body(body);
        if let Some(token) = &args.token {
            request = request.bearer_auth(token);
        }
        let response = request.send().await.with_context(|| format!("cannot reach {}", args.url))?;
        let status = response.status();
        let text = response.text().await?;
        let pretty = serde_json::from_str::<Value>(&text)
            .ok()
            .and_then(|v| serde_json::to_string_pretty(&v).ok())
            .unwrap_or(text);
        println!("{pretty}");
        Ok(if status.is_success() { ExitCode::SUCCESS } else { ExitCode::FAILURE })
    })
}
