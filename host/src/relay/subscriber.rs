//! The subscriber: what other nodes broadcast, into this node's rooms.
//!
//! One pub/sub connection subscribed to the channels of scopes with local members (the hub
//! reports rooms opening and closing as `Command`s); what arrives is ordered per scope by its
//! cursor (`sequencer`), gaps are filled from the streams, and after a reconnect each scope
//! catches up from where its cursor is. It must not publish.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::sync::atomic::Ordering::Relaxed;
use std::time::Duration;

use futures_util::StreamExt;
use parking_lot::Mutex;
use redis::AsyncCommands;
use tokio::sync::{mpsc, oneshot};
use tokio_util::sync::CancellationToken;

use super::keys::{Channel, WireFrame, parse_message};
use super::sequencer::{Cursor, Entry};
use super::Relay;
use crate::broadcast::{Frame, Reach};
use crate::hub::Position;

pub(super) enum Command {
    Watch(Channel, Option<oneshot::Sender<()>>),
    Unwatch(Channel),
}

impl Relay {
    /// Keeps a pub/sub connection subscribed to the watched scopes, and feeds what arrives to
    /// their cursors. After a reconnect, catches up from the streams.
    pub(super) async fn subscriber(self, mut commands: mpsc::UnboundedReceiver<Command>, shutdown: CancellationToken) {
        let mut watched: HashSet<Channel> = HashSet::new();
        let mut waiting: Vec<(Channel, oneshot::Sender<()>)> = Vec::new();
        let mut first = true;
        loop {
            let pubsub = tokio::select! {
                result = tokio::time::timeout(Duration::from_secs(2), self.inner.client.get_async_pubsub()) => result,
                _ = shutdown.cancelled() => return,
            };
            let (mut sink, mut stream) = match pubsub {
                Ok(Ok(pubsub)) => pubsub.split(),
                failure => {
                    let message = match failure {
                        Ok(Err(e)) => e.to_string(),
                        _ => "timed out".to_string(),
                    };
                    self.error("subscribing", message);
                    // Keep taking watch commands while disconnected; they apply on reconnect.
                    let wait = tokio::time::sleep(Duration::from_millis(250));
                    tokio::pin!(wait);
                    loop {
                        tokio::select! {
                            _ = &mut wait => break,
                            _ = shutdown.cancelled() => return,
                            command = commands.recv() => match command {
                                Some(Command::Watch(target, ack)) => {
                                    watched.insert(target.clone());
                                    if let Some(ack) = ack {
                                        waiting.push((target, ack));
                                    }
                                }
                                Some(Command::Unwatch(target)) => {
                                    self.unwatch(&mut watched, &target);
                                }
                                None => return,
                            },
                        }
                    }
                    continue;
                }
            };
            if !first {
                self.inner.metrics.reconnects_total.fetch_add(1, Relaxed);
            }
            first = false;
            let channels: Vec<String> = watched.iter().map(Channel::channel).collect();
            if !channels.is_empty() && sink.subscribe(&channels).await.is_err() {
                continue;
            }
            // Anything published while this node was not listening is in the streams.
            for target in watched.iter().cloned().collect::<Vec<_>>() {
                self.catch_up(&target).await;
            }
            for (_, ack) in waiting.drain(..) {
                let _ = ack.send(());
            }
            loop {
                tokio::select! {
                    _ = shutdown.cancelled() => return,
                    command = commands.recv() => match command {
                        Some(Command::Watch(target, ack)) => {
                            if watched.insert(target.clone()) {
                                if sink.subscribe(target.channel()).await.is_err() {
                                    if let Some(ack) = ack { waiting.push((target, ack)); }
                                    break;
                                }
                                self.init_cursor(&target).await;
                            }
                            if let Some(ack) = ack {
                                let _ = ack.send(());
                            }
                        }
                        Some(Command::Unwatch(target)) => {
                            if self.unwatch(&mut watched, &target) && sink.unsubscribe(target.channel()).await.is_err() {
                                break;
                            }
                        }
                        None => return,
                    },
                    message = stream.next() => match message {
                        Some(message) => self.receive(message.get_channel_name(), message.get_payload_bytes()),
                        None => break,
                    },
                }
            }
            self.error("subscription", "connection lost; reconnecting");
        }
    }

    /// A room closed: stops following its target (unless the room opened again meanwhile) and
    /// drops its cursor, connected or not, so that a later watch starts from where Redis is
    /// rather than from a stale position (perhaps of an epoch Redis lost meanwhile). True if
    /// the target was followed: unsubscribe from its channel.
    pub(super) fn unwatch(&self, watched: &mut HashSet<Channel>, target: &Channel) -> bool {
        let reopened = match target {
            Channel::Scope(scope) => self.inner.hub.has_room(scope),
            Channel::Everyone => true,
        };
        if reopened || !watched.remove(target) {
            return false;
        }
        self.inner.cursors.lock().remove(target);
        self.inner.ledger.lock().cursor_moved(target, None, None);
        true
    }

    /// The cursor of a watched target.
    pub(super) fn cursor(&self, target: &Channel) -> Option<Arc<Mutex<Cursor>>> {
        self.inner.cursors.lock().get(target).cloned()
    }

    /// Reads the target's position from Redis and starts its cursor there (once subscribed, so
    /// that nothing published after it is missed).
    pub(super) async fn init_cursor(&self, target: &Channel) {
        let position = self.read_position(target).await;
        let mut cursors = self.inner.cursors.lock();
        cursors.entry(target.clone()).or_insert_with(|| {
            let (epoch, offset) = position.map_or((None, 0), |p| (Some(p.epoch), p.offset));
            Arc::new(Mutex::new(Cursor::at(epoch, offset)))
        });
    }

    pub(super) async fn read_position(&self, target: &Channel) -> Option<Position> {
        for _ in 0..2 {
            let mut conn = self.data().await.ok()?;
            let reply: redis::RedisResult<(Option<String>, Option<u64>)> =
                redis::cmd("HMGET").arg(target.meta()).arg("epoch").arg("offset").query_async(&mut conn).await;
            match reply {
                Ok((epoch, offset)) => return Some(Position { epoch: epoch?, offset: offset.unwrap_or(0) }),
                // A connection broken by a Redis restart: reconnect once.
                Err(_) => self.forget_data().await,
            }
        }
        None
    }

    /// Reads `target`'s stream after `after` (at most `limit` entries), reconnecting once if the
    /// connection broke.
    pub(super) async fn read_stream(&self, target: &Channel, after: u64, limit: usize) -> redis::RedisResult<Vec<Entry>> {
        match self.try_read_stream(target, after, limit).await {
            Ok(entries) => Ok(entries),
            Err(_) => {
                self.forget_data().await;
                self.try_read_stream(target, after, limit).await
            }
        }
    }

    pub(super) async fn try_read_stream(&self, target: &Channel, after: u64, limit: usize) -> redis::RedisResult<Vec<Entry>> {
        let mut conn = self.data().await?;
        let epoch: Option<String> = conn.hget(target.meta(), "epoch").await?;
        let Some(epoch) = epoch else { return Ok(Vec::new()) };
        let raw: Vec<(String, HashMap<String, Vec<u8>>)> = redis::cmd("XRANGE")
            .arg(target.stream())
            .arg(format!("{}-0", after + 1))
            .arg("+")
            .arg("COUNT")
            .arg(limit)
            .query_async(&mut conn)
            .await?;
        Ok(raw
            .into_iter()
            .filter_map(|(id, fields)| {
                let offset = id.split_once('-')?.0.parse().ok()?;
                let text = |k: &str| fields.get(k).map(|v| String::from_utf8_lossy(v).into_owned());
                let reach = Reach::decode(&text("x").unwrap_or_default());
                Some(Entry {
                    epoch: epoch.clone(),
                    offset,
                    origin: text("o").unwrap_or_default(),
                    n: text("n").and_then(|n| n.parse().ok()).unwrap_or(0),
                    at_ms: text("t").and_then(|t| t.parse().ok()).unwrap_or(0),
                    reach,
                    frame: text("f")?,
                })
            })
            .collect())
    }

    /// A message from pub/sub: `epoch\noffset\norigin\nn\nat_ms\nreach\nframe`.
    pub(super) fn receive(&self, channel: &str, payload: &[u8]) {
        let Some(target) = Channel::from_channel(channel) else { return };
        let Some(entry) = parse_message(payload) else {
            self.error("receiving", format!("malformed message on {channel}"));
            return;
        };
        self.inner.metrics.received_total.fetch_add(1, Relaxed);
        self.accept(&target, vec![entry]);
    }

    /// Feeds entries to the target's cursor and delivers what is in order. A gap is filled from
    /// the stream after `gap_wait`, unless the missing entries arrive first.
    pub(super) fn accept(&self, target: &Channel, entries: Vec<Entry>) {
        let Some(cursor) = self.cursor(target) else { return };
        let mut cursor = cursor.lock();
        let mut gap = None;
        for entry in entries {
            let accepted = cursor.accept(entry);
            if let Some(left) = &accepted.left_epoch {
                self.inner.ledger.lock().cursor_moved(target, Some(&cursor), Some(left));
            }
            gap = gap.or(accepted.gap);
            self.deliver(target, accepted.deliver);
        }
        drop(cursor);
        if gap.is_some() {
            let relay = self.clone();
            let target = target.clone();
            tokio::spawn(async move {
                tokio::time::sleep(relay.inner.config.gap_wait).await;
                relay.fill_gap(&target).await;
            });
        }
    }

    /// Delivers in-order entries into the hub. Called with the target's cursor locked.
    pub(super) fn deliver(&self, target: &Channel, entries: Vec<Entry>) {
        for entry in entries {
            if entry.origin == self.inner.origin && self.inner.ledger.lock().came_back(entry.n) {
                continue; // delivered locally while Redis was unreachable
            }
            let frame: Frame = match serde_json::from_str::<WireFrame>(&entry.frame) {
                Ok(wire) => wire.into_frame(),
                Err(e) => {
                    self.error("decoding a relayed frame", e);
                    continue;
                }
            };
            let at_ms = entry.at_ms;
            let position = Position { epoch: entry.epoch, offset: entry.offset };
            match target {
                Channel::Scope(scope) => self.inner.hub.fan_out(scope, &entry.reach, &frame, Some(&position)),
                Channel::Everyone => self.inner.hub.fan_out_everyone(&frame, Some(&position)),
            }
            self.inner.metrics.delivered_total.fetch_add(1, Relaxed);
            if at_ms > 0 {
                self.inner.metrics.lag_ms.store(crate::event::now_ms().saturating_sub(at_ms), Relaxed);
            }
        }
    }

    pub(super) async fn fill_gap(&self, target: &Channel) {
        let Some(cursor) = self.cursor(target) else { return };
        let missing = cursor.lock().missing();
        let Some((from, to)) = missing else { return };
        match self.read_stream(target, from - 1, (to - from + 1) as usize).await {
            Ok(entries) => {
                let found: Vec<Entry> = entries.into_iter().filter(|e| e.offset <= to).collect();
                self.inner.metrics.gap_fills_total.fetch_add(found.len() as u64, Relaxed);
                let complete = found.len() as u64 == to - from + 1;
                self.accept(target, found);
                if !complete {
                    // Trimmed from the stream: those frames are gone; move on.
                    let mut cursor = cursor.lock();
                    if let Some((from, to)) = cursor.missing() {
                        self.inner.metrics.gap_unfilled_total.fetch_add(to - from + 1, Relaxed);
                        let ready = cursor.skip_to(to);
                        self.inner.ledger.lock().cursor_moved(target, Some(&cursor), None);
                        self.deliver(target, ready);
                    }
                }
            }
            Err(e) => self.error("filling a gap", e),
        }
    }

    /// After (re)subscribing: delivers what the stream holds beyond the cursor.
    pub(super) async fn catch_up(&self, target: &Channel) {
        if self.cursor(target).is_none() {
            self.init_cursor(target).await;
            return;
        }
        let Some(cursor) = self.cursor(target) else { return };
        let (epoch, after) = {
            let cursor = cursor.lock();
            (cursor.epoch.clone(), cursor.offset)
        };
        let current = self.read_position(target).await;
        let after = match (&epoch, &current) {
            (Some(mine), Some(theirs)) if *mine != theirs.epoch => 0, // a new epoch: from its start
            _ => after,
        };
        match self.read_stream(target, after, self.inner.config.replay_limit.max(1000)).await {
            Ok(entries) => {
                self.inner.metrics.gap_fills_total.fetch_add(entries.len() as u64, Relaxed);
                self.accept(target, entries);
            }
            Err(e) => self.error("catching up", e),
        }
    }

    /// Waits until the target is subscribed and its cursor known.
    pub(super) async fn watch(&self, target: &Channel) -> bool {
        if self.cursor(target).is_some() {
            return true;
        }
        let (ack, done) = oneshot::channel();
        if self.inner.commands.send(Command::Watch(target.clone(), Some(ack))).is_err() {
            return false;
        }
        matches!(tokio::time::timeout(Duration::from_secs(2), done).await, Ok(Ok(()))) && self.cursor(target).is_some()
    }
}
