//! Fan-out into rooms big enough to be pushed by a drainer (more than 32 members), through a real
//! server and real WebSocket clients: one order per room under concurrent publishers, clients
//! joining and leaving while a room drains, a slow client evicted without costing the others
//! a frame, and a shutdown that delivers what rooms had accepted before it closes.

use std::time::Duration;

use futures_util::StreamExt;
use serde_json::{Value, json};
use tokio_tungstenite::tungstenite::Message;

use crate::server::stalled_client;
use crate::support::server::{Client, TestServer, barrier, read_until_close, token};

/// Clients in one room: past the size a publisher pushes to itself.
const CROWD: usize = 40;

/// `CROWD` clients of ws-1 (users `c0`, `c1`...), each granted task `t-1`.
async fn crowd(server: &TestServer) -> Vec<Client> {
    let mut clients = Vec::new();
    for n in 0..CROWD {
        clients.push(Client::connect(server, "ws-1", &token(&format!("c{n}"), &["ws-1"], &[("ws-1", "task", "t-1")])).await);
    }
    clients
}

/// Reads every client's frames up to the barrier, all at once.
async fn until_barrier(clients: Vec<Client>) -> Vec<Vec<Value>> {
    let readers: Vec<_> = clients.into_iter().map(|mut c| tokio::spawn(async move { c.until_barrier().await })).collect();
    let mut seen = Vec::new();
    for reader in readers {
        seen.push(tokio::time::timeout(Duration::from_secs(60), reader).await.expect("in time").expect("a reader"));
    }
    seen
}

fn seqs(frames: &[Value], scope: &str) -> Vec<u64> {
    frames.iter().filter(|f| f["scope"] == scope).filter_map(|f| f["seq"].as_u64()).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_publishes_into_a_big_room_reach_every_client_in_one_order() {
    let server = TestServer::start(|_| {}).await;
    let clients = crowd(&server).await;
    let publishers: Vec<_> = (0..4)
        .map(|p| {
            let url = server.url("/v1/events");
            tokio::spawn(async move {
                let http = reqwest::Client::new();
                for batch in 0..5 {
                    let events: Vec<Value> = (0..10)
                        .map(|i| json!({"type": "issue:created", "workspace_id": "ws-1", "payload": {"p": p, "i": batch * 10 + i}}))
                        .collect();
                    assert_eq!(http.post(&url).json(&events).send().await.unwrap().status(), 200);
                }
            })
        })
        .collect();
    for publisher in publishers {
        publisher.await.unwrap();
    }
    barrier(&server).await;
    let seen = until_barrier(clients).await;
    let first = &seen[0];
    assert_eq!(seqs(first, "workspace"), (1..=200).collect::<Vec<u64>>(), "every frame once, numbered in one order");
    for p in 0..4 {
        let theirs: Vec<u64> = first.iter().filter(|f| f["payload"]["p"] == p).filter_map(|f| f["payload"]["i"].as_u64()).collect();
        assert_eq!(theirs, (0..50).collect::<Vec<u64>>(), "publisher {p}'s events keep its order");
    }
    let ids = |frames: &[Value]| frames.iter().map(|f| f["event_id"].clone()).collect::<Vec<Value>>();
    for (n, frames) in seen.iter().enumerate() {
        assert_eq!(ids(frames), ids(first), "client {n} saw the same sequence");
    }
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clients_joining_a_big_room_while_it_drains_get_each_later_frame_once() {
    let server = TestServer::start(|_| {}).await;
    let mut clients = crowd(&server).await;
    for client in &mut clients {
        assert_eq!(client.subscribe("task", "t-1").await["type"], "subscribe_ack");
    }
    const EVENTS: u64 = 1500;
    let publisher = {
        let url = server.url("/v1/events");
        tokio::spawn(async move {
            let http = reqwest::Client::new();
            for batch in 0..EVENTS / 50 {
                let events: Vec<Value> = (0..50)
                    .map(|i| json!({"type": "task:message", "workspace_id": "ws-1", "task_id": "t-1", "payload": {"i": batch * 50 + i}}))
                    .collect();
                assert_eq!(http.post(&url).json(&events).send().await.unwrap().status(), 200);
            }
        })
    };
    let mut joiners = Vec::new();
    for n in 0..6 {
        tokio::time::sleep(Duration::from_millis(15)).await;
        let mut joiner = Client::connect(&server, "ws-1", &token(&format!("j{n}"), &["ws-1"], &[("ws-1", "task", "t-1")])).await;
        joiner.send(json!({"type": "subscribe", "payload": {"scope": "task", "id": "t-1"}})).await;
        if n % 2 == 1 {
            // Leaves and comes back while the room drains.
            tokio::time::sleep(Duration::from_millis(5)).await;
            joiner.send(json!({"type": "unsubscribe", "payload": {"scope": "task", "id": "t-1"}})).await;
            joiner.send(json!({"type": "subscribe", "payload": {"scope": "task", "id": "t-1"}})).await;
        }
        joiners.push(joiner);
    }
    publisher.await.unwrap();
    barrier(&server).await;
    let everyone = until_barrier(clients).await;
    assert_eq!(seqs(&everyone[0], "task"), (1..=EVENTS).collect::<Vec<u64>>());
    for (n, frames) in until_barrier(joiners).await.iter().enumerate() {
        let acks: Vec<usize> = frames.iter().enumerate().filter(|(_, f)| f["type"] == "subscribe_ack").map(|(i, _)| i).collect();
        let last = *acks.last().expect("a subscribe_ack");
        let offset = frames[last]["payload"]["offset"].as_u64().unwrap();
        assert_eq!(seqs(&frames[last..], "task"), (offset + 1..=EVENTS).collect::<Vec<u64>>(), "joiner {n}: every frame after its ack, once");
        if n % 2 == 1 {
            let left = frames.iter().position(|f| f["type"] == "unsubscribe_ack").expect("an unsubscribe_ack");
            assert_eq!(acks.len(), 2, "joiner {n}");
            assert!(seqs(&frames[left..last], "task").is_empty(), "joiner {n}: nothing of the room between leaving and joining again");
            let first_offset = frames[acks[0]]["payload"]["offset"].as_u64().unwrap();
            let before = seqs(&frames[acks[0]..left], "task");
            assert_eq!(before, (first_offset + 1..=first_offset + before.len() as u64).collect::<Vec<u64>>(), "joiner {n}");
        }
    }
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_client_of_a_big_room_is_evicted_and_the_others_get_every_frame() {
    let server = TestServer::start(|c| {
        c.hub.max_queue_bytes = 256 << 10;
        c.hub.max_queue_age = Duration::from_secs(2);
    })
    .await;
    let mut stalled = stalled_client(&server, &token("slow", &["ws-1"], &[])).await;
    let clients = crowd(&server).await;
    let readers: Vec<_> = clients
        .into_iter()
        .map(|mut c| {
            tokio::spawn(async move {
                let frames = c.until_barrier().await;
                frames.iter().filter(|f| f["type"] == "bulk:item").count()
            })
        })
        .collect();
    let padding = "p".repeat(8 << 10);
    let mut published = 0;
    for _ in 0..100 {
        let batch: Vec<Value> = (0..8).map(|i| json!({"type": "bulk:item", "workspace_id": "ws-1", "payload": {"i": i, "padding": padding}})).collect();
        server.publish_ok(Value::Array(batch)).await;
        published += 8;
        if server.realtime().await["slow_evictions_total"].as_u64() == Some(1) {
            break;
        }
    }
    let metrics = server.realtime_until("the stalled client is evicted", |m| m["slow_evictions_total"] == 1).await;
    assert_eq!(metrics["slow_evictions_total"], 1, "{metrics}");
    assert_eq!(read_until_close(&mut stalled).await, Some(4008));
    barrier(&server).await;
    for reader in readers {
        assert_eq!(tokio::time::timeout(Duration::from_secs(60), reader).await.unwrap().unwrap(), published);
    }
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_delivers_what_a_big_room_accepted_before_going_away() {
    let server = TestServer::start(|c| {
        c.hub.max_queue_bytes = 8 << 20;
        c.max_events_body = 4 << 20;
    })
    .await;
    let clients = crowd(&server).await;
    let padding = "s".repeat(4 << 10);
    let events: Vec<Value> = (0..200).map(|i| json!({"type": "bulk:item", "workspace_id": "ws-1", "payload": {"i": i, "padding": padding}})).collect();
    server.publish_ok(Value::Array(events)).await;
    server.shutdown.cancel();
    let readers: Vec<_> = clients
        .into_iter()
        .map(|mut c| {
            tokio::spawn(async move {
                let mut seen = Vec::new();
                loop {
                    match tokio::time::timeout(Duration::from_secs(20), c.socket.next()).await.expect("a frame within 20 s") {
                        Some(Ok(Message::Text(text))) => {
                            let frame: Value = serde_json::from_str(&text).unwrap();
                            if frame["type"] == "bulk:item" {
                                seen.push(frame["payload"]["i"].as_u64().unwrap());
                            }
                        }
                        Some(Ok(Message::Close(frame))) => return (seen, frame.map(|f| u16::from(f.code))),
                        Some(Ok(_)) => continue,
                        other => panic!("the connection ended without a close frame: {other:?}"),
                    }
                }
            })
        })
        .collect();
    for (n, reader) in readers.into_iter().enumerate() {
        let (seen, close) = reader.await.unwrap();
        assert_eq!(seen, (0..200).collect::<Vec<u64>>(), "client {n}: every frame published before the shutdown");
        assert_eq!(close, Some(1001), "client {n}");
    }
    let _ = tokio::time::timeout(Duration::from_secs(15), server.handle).await.expect("the server stops");
}
