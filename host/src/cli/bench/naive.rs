//! `busbar bench naive-server` (hidden): the naive Rust broadcast server `busbar bench fanout`
//! measures busbar against, run as a child process of the same executable so that its CPU and
//! memory are read exactly like busbar's. axum's WebSocket with the hub's read buffer (4 KiB),
//! every connection in one tokio `broadcast` channel (axum's chat example: a writer task and a
//! reader task per connection, one `send` and flush per frame), no rooms, no auth, no bounds
//! but the channel's capacity (a receiver that falls that far behind loses frames, which the
//! load generator's delivered count shows). It answers the load generator as busbar does:
//! `{"type":"auth_ack"}` once subscribed, and `POST /v1/events` sends each event as a frame of
//! the same shape and size as busbar's, encoded once and shared. It must stay naive (it is the
//! design busbar is compared against) and nothing outside the benchmark may use it.

use std::process::ExitCode;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use axum::Router;
use axum::extract::ws::{Message, Utf8Bytes, WebSocket, WebSocketUpgrade};
use axum::extract::{Json, State};
use axum::response::Response;
use axum::routing::{get, post};
use clap::Args;
use futures_util::{SinkExt, StreamExt};
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;
use tokio::sync::broadcast;

/// Frames a connection may fall behind before it loses some (about 5 MB of 300-byte frames).
const CAPACITY: usize = 16 << 10;

#[derive(Args, Clone)]
pub struct NaiveArgs {
    /// Address to listen on.
    #[arg(long, default_value = "127.0.0.1:0")]
    listen: String,
}

struct Naive {
    frames: broadcast::Sender<Utf8Bytes>,
    epoch: String,
    seq: AtomicU64,
}

/// What the load generator publishes (busbar's event input; the rest is ignored).
#[derive(Deserialize)]
struct Incoming {
    #[serde(rename = "type")]
    event_type: String,
    #[serde(default)]
    workspace_id: String,
    payload: Option<Box<RawValue>>,
}

/// busbar's event frame, field for field.
#[derive(Serialize)]
struct Frame<'a> {
    #[serde(rename = "type")]
    event_type: &'a str,
    payload: &'a RawValue,
    actor_id: &'a str,
    actor_type: &'a str,
    event_id: String,
    workspace_id: &'a str,
    scope: &'a str,
    scope_id: &'a str,
    epoch: &'a str,
    seq: u64,
}

pub fn run(args: NaiveArgs) -> anyhow::Result<ExitCode> {
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
    runtime.block_on(async {
        let listener = tokio::net::TcpListener::bind(&args.listen).await?;
        eprintln!("naive server listening on http://{}", listener.local_addr()?);
        let epoch = busbar::event::new_id().rsplit('-').next().unwrap_or("naive").to_string();
        let state = Arc::new(Naive { frames: broadcast::channel(CAPACITY).0, epoch, seq: AtomicU64::new(0) });
        let app = Router::new().route("/ws", get(upgrade)).route("/v1/events", post(publish)).with_state(state);
        axum::serve(listener, app).await?;
        anyhow::Ok(ExitCode::SUCCESS)
    })
}

async fn upgrade(upgrade: WebSocketUpgrade, State(state): State<Arc<Naive>>) -> Response {
    upgrade.read_buffer_size(4 << 10).max_message_size(64 << 10).on_upgrade(move |socket| connection(socket, state))
}

async fn connection(socket: WebSocket, state: Arc<Naive>) {
    let mut frames = state.frames.subscribe();
    let (mut sink, mut stream) = socket.split();
    if sink.send(Message::Text(r#"{"type":"auth_ack"}"#.into())).await.is_err() {
        return;
    }
    let mut writer = tokio::spawn(async move {
        loop {
            match frames.recv().await {
                Ok(frame) => {
                    if sink.send(Message::Text(frame)).await.is_err() {
                        break;
                    }
                }
                Err(broadcast::error::RecvError::Lagged(_)) => continue,
                Err(broadcast::error::RecvError::Closed) => break,
            }
        }
    });
    let mut reader = tokio::spawn(async move { while let Some(Ok(_)) = stream.next().await {} });
    tokio::select! {
        _ = &mut writer => reader.abort(),
        _ = &mut reader => writer.abort(),
    }
}

async fn publish(State(state): State<Arc<Naive>>, Json(events): Json<Vec<Incoming>>) -> Json<serde_json::Value> {
    let empty = RawValue::from_string("{}".into()).expect("`{}` is JSON");
    for event in &events {
        let frame = Frame {
            event_type: &event.event_type,
            payload: event.payload.as_deref().unwrap_or(&empty),
            actor_id: "",
            actor_type: "",
            event_id: busbar::event::new_id(),
            workspace_id: &event.workspace_id,
            scope: "workspace",
            scope_id: &event.workspace_id,
            epoch: &state.epoch,
            seq: state.seq.fetch_add(1, Ordering::Relaxed) + 1,
        };
        let text = serde_json::to_string(&frame).expect("a frame serializes");
        // No receivers is not an error: the frame has nowhere to go.
        let _ = state.frames.send(text.into());
    }
    Json(serde_json::json!({ "accepted": events.len() }))
}
