//! Fan-out through real outboxes, with rooms big enough to have drainers: one order per room
//! under concurrent publishers, members joining and leaving mid-drain, `skip` frames, and a
//! caller without a runtime.

use std::sync::Arc;

use futures_util::FutureExt;
use serde_json::{Value, json};

use super::*;
use crate::event::Json;
use crate::hub::outbox::Next;
use crate::hub::{Claims, ClaimsAuthorizer, HubConfig, Identity, TokenVerifier};

fn hub() -> Arc<Hub> {
    let config = HubConfig { max_connections_per_user: usize::MAX, ..HubConfig::default() };
    Arc::new(Hub::new(config, TokenVerifier::new(b"fanout-test"), Arc::new(ClaimsAuthorizer)))
}

/// A connection of `user` to `workspace`, in its workspace and user rooms.
fn connect(hub: &Hub, user: &str, workspace: &str) -> Arc<Conn> {
    let claims = Claims { sub: user.into(), exp: u64::MAX / 2, workspaces: vec![workspace.into()], grants: Default::default() };
    let identity = Identity { user_id: user.into(), workspace_id: workspace.into(), claims: Arc::new(claims) };
    let conn = hub.register(identity).expect("registered");
    for scope in [Scope::workspace(workspace), Scope::user(user)] {
        hub.join_with_history(&conn, &scope, None, None, Vec::new(), false);
    }
    conn
}

fn frame(publisher: u64, i: u64) -> Frame {
    Frame {
        event_type: "t:tick".into(),
        payload: Json::parse(json!({"p": publisher, "i": i}).to_string()).expect("JSON"),
        actor_id: "a".into(),
        actor_type: "system".into(),
        event_id: format!("e{publisher}-{i}"),
        workspace_id: "w".into(),
    }
}

/// Everything queued for `conn` so far, parsed.
fn taken(conn: &Conn) -> Vec<Value> {
    let mut frames = Vec::new();
    while let Some(Next::Frames) = conn.outbox().next(&mut frames).now_or_never() {
        conn.outbox().written();
    }
    frames.iter().map(|f| serde_json::from_str(f).expect("frames are JSON")).collect()
}

fn seqs(frames: &[Value]) -> Vec<u64> {
    frames.iter().filter_map(|f| f["seq"].as_u64()).collect()
}

/// Waits, off the runtime's threads, until every room pushed what it accepted.
async fn settled(hub: &Arc<Hub>) {
    let hub = hub.clone();
    tokio::task::spawn_blocking(move || hub.settle_rooms()).await.expect("settled");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_publishers_reach_every_member_in_one_order() {
    let hub = hub();
    let conns: Vec<Arc<Conn>> = (0..200).map(|n| connect(&hub, &format!("u{n}"), "w")).collect();
    let publishers: Vec<_> = (0..4)
        .map(|p| {
            let hub = hub.clone();
            tokio::task::spawn_blocking(move || (0..100).for_each(|i| hub.broadcast_to_workspace("w", frame(p, i))))
        })
        .collect();
    for publisher in publishers {
        publisher.await.expect("a publisher");
    }
    settled(&hub).await;
    let first = taken(&conns[0]);
    assert_eq!(seqs(&first), (1..=400).collect::<Vec<u64>>(), "numbered once, in one order, none lost");
    for p in 0..4 {
        let theirs: Vec<u64> = first.iter().filter(|f| f["payload"]["p"] == p).filter_map(|f| f["payload"]["i"].as_u64()).collect();
        assert_eq!(theirs, (0..100).collect::<Vec<u64>>(), "publisher {p}'s frames keep its order");
    }
    for conn in &conns[1..] {
        assert_eq!(taken(conn), first, "every member sees the same sequence");
    }
    assert_eq!(hub.metrics().messages_sent.load(Relaxed), 200 * 400);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn members_joining_and_leaving_mid_drain_get_each_later_frame_once() {
    let hub = hub();
    let task = Scope::task("w", "t-1");
    let stayers: Vec<Arc<Conn>> = (0..100)
        .map(|n| {
            let conn = connect(&hub, &format!("s{n}"), "w");
            hub.join_with_history(&conn, &task, None, None, Vec::new(), false);
            conn
        })
        .collect();
    let publisher = {
        let (hub, task) = (hub.clone(), task.clone());
        tokio::task::spawn_blocking(move || (0..3000).for_each(|i| hub.broadcast_to_scope(&task, frame(0, i))))
    };
    // Joiners come in while the room drains; half of them leave and come back.
    let joiners: Vec<Arc<Conn>> = (0..20).map(|n| connect(&hub, &format!("j{n}"), "w")).collect();
    let mut marks = Vec::new();
    for (n, joiner) in joiners.iter().enumerate() {
        tokio::time::sleep(std::time::Duration::from_micros(300)).await;
        hub.join_with_history(joiner, &task, None, None, Vec::new(), true);
        if n % 2 == 1 {
            tokio::time::sleep(std::time::Duration::from_micros(200)).await;
            hub.unsubscribe(joiner, &task).expect("left");
            let _ = joiner.send_control(json!({"type": "left"}).to_string());
            hub.join_with_history(joiner, &task, None, None, Vec::new(), true);
        }
        marks.push(n);
    }
    publisher.await.expect("the publisher");
    settled(&hub).await;
    let all = seqs(&taken(&stayers[0]));
    assert_eq!(all, (1..=3000).collect::<Vec<u64>>());
    for (n, joiner) in joiners.iter().enumerate() {
        let frames: Vec<Value> = taken(joiner).into_iter().filter(|f| f["scope"] == "task" || f["type"] != "t:tick").collect();
        // Its last join: the ack, then every frame after the ack's offset, once, in order.
        let last_ack = frames.iter().rposition(|f| f["type"] == "subscribe_ack").expect("an ack");
        let offset = frames[last_ack]["payload"]["offset"].as_u64().expect("an offset");
        assert_eq!(seqs(&frames[last_ack + 1..]), (offset + 1..=3000).collect::<Vec<u64>>(), "joiner {n}");
        if n % 2 == 1 {
            // Nothing of the room between leaving and joining again.
            let left = frames.iter().position(|f| f["type"] == "left").expect("the mark");
            assert_eq!(left + 1, last_ack, "joiner {n}: {:?}", &frames[left..=last_ack]);
            let first_ack = frames.iter().position(|f| f["type"] == "subscribe_ack").expect("an ack");
            let first_offset = frames[first_ack]["payload"]["offset"].as_u64().expect("an offset");
            let before: Vec<u64> = seqs(&frames[first_ack + 1..left]);
            assert_eq!(before, (first_offset + 1..first_offset + 1 + before.len() as u64).collect::<Vec<u64>>(), "joiner {n}");
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_big_user_room_gives_skips_where_the_reach_leaves_a_connection_out() {
    let hub = hub();
    let conns: Vec<Arc<Conn>> = (0..40).map(|n| connect(&hub, "u", if n % 2 == 0 { "a" } else { "b" })).collect();
    for i in 0..3 {
        hub.send_to_user("u", &Reach::Only("a".into()), frame(0, i));
    }
    settled(&hub).await;
    for (n, conn) in conns.iter().enumerate() {
        let frames = taken(conn);
        let kinds: Vec<&str> = frames.iter().map(|f| f["type"].as_str().unwrap_or_default()).collect();
        let expected = if n % 2 == 0 { "t:tick" } else { "skip" };
        assert_eq!(kinds, [expected; 3], "connection {n}");
        assert_eq!(seqs(&frames), [1, 2, 3]);
    }
}

#[test]
fn without_a_runtime_the_publisher_drains_before_it_returns() {
    let hub = hub();
    let conns: Vec<Arc<Conn>> = (0..100).map(|n| connect(&hub, &format!("u{n}"), "w")).collect();
    let threads: Vec<_> = (0..2)
        .map(|p| {
            let hub = hub.clone();
            std::thread::spawn(move || (0..50).for_each(|i| hub.broadcast_to_workspace("w", frame(p, i))))
        })
        .collect();
    for thread in threads {
        thread.join().expect("a publisher");
    }
    for conn in &conns {
        assert_eq!(seqs(&taken(conn)), (1..=100).collect::<Vec<u64>>());
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_drainer_evicts_a_member_whose_outbox_overflows_and_the_others_keep_theirs() {
    let config = HubConfig { max_connections_per_user: usize::MAX, max_queue_bytes: 16 << 10, ..HubConfig::default() };
    let hub = Arc::new(Hub::new(config, TokenVerifier::new(b"fanout-test"), Arc::new(ClaimsAuthorizer)));
    let conns: Vec<Arc<Conn>> = (0..50).map(|n| connect(&hub, &format!("u{n}"), "w")).collect();
    // Everyone but the first keeps reading.
    let mut seen = vec![0usize; conns.len()];
    for round in 0..20 {
        for i in 0..10 {
            hub.broadcast_to_workspace("w", frame(round, i));
        }
        settled(&hub).await;
        for (n, conn) in conns.iter().enumerate().skip(1) {
            seen[n] += taken(conn).len();
        }
    }
    assert!(conns[0].gone.is_cancelled(), "the member that never read was closed");
    assert_eq!(conns[0].outbox().closed(), Some(Close::SLOW));
    assert_eq!(hub.metrics().evictions.load(Relaxed), 1);
    assert!(seen[1..].iter().all(|&n| n == 200), "{seen:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_lets_the_drainers_push_what_rooms_accepted_before_closing() {
    let hub = hub();
    let conns: Vec<Arc<Conn>> = (0..2000).map(|n| connect(&hub, &format!("u{n}"), "w")).collect();
    let publisher = hub.clone();
    tokio::task::spawn_blocking(move || (0..300).for_each(|i| publisher.broadcast_to_workspace("w", frame(0, i)))).await.expect("published");
    hub.shutdown(std::time::Duration::from_secs(30)).await;
    for conn in [&conns[0], &conns[1999]] {
        assert_eq!(conn.outbox().closed(), Some(Close::GOING_AWAY));
        assert_eq!(seqs(&taken(conn)), (1..=300).collect::<Vec<u64>>());
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn members_that_leave_get_nothing_more_and_the_last_one_closes_the_room() {
    let hub = hub();
    let task = Scope::task("w", "t-2");
    let conns: Vec<Arc<Conn>> = (0..100)
        .map(|n| {
            let conn = connect(&hub, &format!("u{n}"), "w");
            hub.join_with_history(&conn, &task, None, None, Vec::new(), false);
            conn
        })
        .collect();
    for conn in &conns[..99] {
        hub.unsubscribe(conn, &task).expect("left");
    }
    {
        let cell = hub.shard(&task).read().get(&task).cloned().expect("the room stays for its last member");
        let room = cell.room.lock();
        assert!(room.members.len() < 100, "departed members are taken off the list in passes");
        assert!(!room.is_empty());
    }
    hub.broadcast_to_scope(&task, frame(0, 0));
    settled(&hub).await;
    assert!(conns[..99].iter().all(|c| taken(c).is_empty()));
    assert_eq!(seqs(&taken(&conns[99])), [1]);
    hub.disconnect(&conns[99], Close::NORMAL);
    assert!(!hub.has_room(&task));
    for conn in &conns[..99] {
        hub.disconnect(conn, Close::NORMAL);
    }
    assert_eq!(hub.snapshot().active_scope_rooms.values().sum::<u64>(), 0, "every room closed");
}

/// A room whose queue is full holds its publisher until the drainer took some, and a frame to
/// everyone waits for the rooms: neither may deadlock, whichever thread publishes (a runtime's
/// own thread included, as the relay's tasks do).
async fn publish_through_a_full_queue(hub: Arc<Hub>, conns: &[Arc<Conn>]) {
    for i in 0..200 {
        hub.broadcast_to_workspace("w", frame(0, i));
        if i % 50 == 49 {
            hub.broadcast(frame(1, i));
        }
    }
    settled(&hub).await;
    for conn in conns {
        let frames = taken(conn);
        assert_eq!(seqs(&frames).len(), 204, "200 room frames and 4 to everyone");
        assert_eq!(frames[50]["scope"], "everyone", "after the 50 room frames published before it");
    }
}

fn small_queues() -> Arc<Hub> {
    let config = HubConfig { max_connections_per_user: usize::MAX, max_queue_bytes: 64 << 10, ..HubConfig::default() };
    Arc::new(Hub::new(config, TokenVerifier::new(b"fanout-test"), Arc::new(ClaimsAuthorizer)))
}

#[tokio::test(flavor = "current_thread")]
async fn a_full_queue_and_everyone_frames_do_not_deadlock_a_single_threaded_runtime() {
    let hub = small_queues();
    let conns: Vec<Arc<Conn>> = (0..100).map(|n| connect(&hub, &format!("u{n}"), "w")).collect();
    publish_through_a_full_queue(hub, &conns).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_queue_and_everyone_frames_do_not_deadlock_the_workers() {
    let hub = small_queues();
    let conns: Vec<Arc<Conn>> = (0..100).map(|n| connect(&hub, &format!("u{n}"), "w")).collect();
    // Both workers publish at once, as tasks.
    let other = {
        let hub = hub.clone();
        tokio::spawn(async move { (0..200).for_each(|i| hub.broadcast_to_scope(&Scope::task("w", "none"), frame(2, i))) })
    };
    publish_through_a_full_queue(hub, &conns).await;
    other.await.expect("the other publisher");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_publisher_faster_than_the_drainer_is_held_back_and_the_order_holds() {
    // The room holds its publishers at a quarter of this: 16 KiB, about 90 frames.
    let config = HubConfig { max_connections_per_user: usize::MAX, max_queue_bytes: 64 << 10, ..HubConfig::default() };
    let hub = Arc::new(Hub::new(config, TokenVerifier::new(b"fanout-test"), Arc::new(ClaimsAuthorizer)));
    let conns: Vec<Arc<Conn>> = (0..40).map(|n| connect(&hub, &format!("u{n}"), "w")).collect();
    let done = Arc::new(AtomicBool::new(false));
    let reading = Arc::new(tokio::sync::Notify::new());
    let reader = {
        let (conns, done, reading) = (conns.clone(), done.clone(), reading.clone());
        tokio::task::spawn_blocking(move || {
            reading.notify_one();
            // Raw frames, parsed at the end: this reader must be quick.
            let mut raw = vec![Vec::new(); conns.len()];
            while !done.load(Relaxed) || conns.iter().any(|c| c.queued() > 0) {
                for (conn, raw) in conns.iter().zip(&mut raw) {
                    while let Some(Next::Frames) = conn.outbox().next(raw).now_or_never() {
                        conn.outbox().written();
                    }
                }
            }
            raw.iter().map(|frames| frames.iter().map(|f| serde_json::from_str::<Value>(f).expect("JSON")["seq"].as_u64().expect("a seq")).collect::<Vec<u64>>()).collect::<Vec<_>>()
        })
    };
    reading.notified().await;
    // Publishing from a worker, as the relay does.
    let publisher = hub.clone();
    tokio::spawn(async move { (0..3000).for_each(|i| publisher.broadcast_to_workspace("w", frame(0, i))) }).await.expect("published");
    settled(&hub).await;
    done.store(true, Relaxed);
    // On a loaded machine the reader falls behind and members are evicted (the outboxes are
    // small): every member saw the room's frames from the first, in order, with no gap, up to
    // the end or to its eviction.
    for (n, seen) in reader.await.expect("the reader").iter().enumerate() {
        assert_eq!(*seen, (1..=seen.len() as u64).collect::<Vec<u64>>(), "connection {n}");
        if seen.len() < 3000 {
            assert_eq!(conns[n].outbox().closed(), Some(Close::SLOW), "connection {n}");
        }
    }
}
