//! Recovery: a client resuming a room gets what it missed from the scope's stream, then live
//! frames, with no gap and no duplicate.
//!
//! This module owns `Relay`'s `Backplane` side: rooms opening and closing (watched and
//! unwatched by the subscriber) and joins with `since`, served from the stream with the scope's
//! cursor locked so that no live frame can pass between history and live. It must not publish.

use std::sync::Arc;

use super::keys::{Channel, WireFrame};
use super::subscriber::Command;
use super::Relay;
use crate::action::Scope;
use crate::hub::{Backplane, BoxFuture, Conn, Hub, Joined, Position};

impl Relay {
    /// Joins with recovery: reads what `conn` missed from the stream, then, with the scope's
    /// cursor locked (so no live frame can pass), pushes the missed frames and joins the room.
    pub(super) async fn join_recovering(
        &self,
        hub: &Hub,
        conn: &Arc<Conn>,
        scope: &Scope,
        since: Option<&Position>,
        announce: bool,
    ) -> Joined {
        let target = Channel::Scope(scope.clone());
        if !self.watch(&target).await {
            // Redis unreachable: join without recovery.
            return hub.join_with_history(conn, scope, since, None, Vec::new(), announce);
        }
        let Some(cursor) = self.cursor(&target) else {
            return hub.join_with_history(conn, scope, since, None, Vec::new(), announce);
        };
        for _ in 0..3 {
            let history = match since {
                Some(since) => match self.read_stream(&target, since.offset, self.inner.config.replay_limit + 1).await {
                    Ok(entries) => entries,
                    Err(e) => {
                        self.error("reading history", e);
                        Vec::new()
                    }
                },
                None => Vec::new(),
            };
            let cursor = cursor.lock();
            // A scope Redis has not numbered yet has no epoch: its rooms start at ("", 0), and a
            // client resuming from ("", 0) resumes from the start of whatever epoch began since.
            let start = Some(Position { epoch: cursor.epoch.clone().unwrap_or_default(), offset: cursor.offset });
            let resumed = since.map(|s| match (&cursor.epoch, s.epoch.is_empty() && s.offset == 0) {
                (Some(epoch), true) => Position { epoch: epoch.clone(), offset: 0 },
                _ => s.clone(),
            });
            let since = resumed.as_ref();
            let behind = history.last().map_or(0, |e| e.offset) < cursor.offset
                && since.is_some_and(|s| s.offset < cursor.offset)
                && history.len() <= self.inner.config.replay_limit;
            if behind && since.is_some_and(|s| Some(&s.epoch) == cursor.epoch.as_ref()) {
                continue; // the room moved on while we read: read again
            }
            let frames = history
                .into_iter()
                .filter(|e| e.offset <= cursor.offset && Some(&e.epoch) == cursor.epoch.as_ref())
                .take(self.inner.config.replay_limit)
                .filter_map(|e| {
                    let frame = serde_json::from_str::<WireFrame>(&e.frame).ok()?.into_frame();
                    Some((Position { epoch: e.epoch, offset: e.offset }, frame, e.reach))
                })
                .collect();
            return hub.join_with_history(conn, scope, since, start, frames, announce);
        }
        hub.join_with_history(conn, scope, since, None, Vec::new(), announce)
    }
}

impl Backplane for Relay {
    fn room_opened(&self, scope: &Scope) {
        let _ = self.inner.commands.send(Command::Watch(Channel::Scope(scope.clone()), None));
    }

    fn room_closed(&self, scope: &Scope) {
        let _ = self.inner.commands.send(Command::Unwatch(Channel::Scope(scope.clone())));
    }

    fn join<'a>(&'a self, hub: &'a Hub, conn: &'a Arc<Conn>, scope: &'a Scope, since: Option<&'a Position>, announce: bool) -> BoxFuture<'a, Joined> {
        Box::pin(self.join_recovering(hub, conn, scope, since, announce))
    }
}
