//! One connection's outgoing queue, bounded in bytes and in the age of its oldest frame.
//!
//! This module owns `Outbox`. Fan-out pushes shared frame bytes into it without waiting; the
//! connection's writer task drains it. A push past either bound refuses the frame and reports
//! `Overflow`, and the hub then evicts the connection; frames the writer has taken but not yet
//! written still count, so a writer stuck on a client that stopped reading cannot hide them.
//! Closing is idempotent and race-free: the first close wins, later pushes are dropped, and
//! nothing can panic on a closed queue (the original crashed the process sending on a closed
//! channel). A close drops what is queued, except a shutdown's, which lets it be written first.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, Ordering::Relaxed};
use std::time::{Duration, Instant};

use axum::extract::ws::Utf8Bytes;
use parking_lot::Mutex;
use tokio::sync::Notify;

/// Why a connection is being closed, as a WebSocket close code and reason.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Close {
    pub code: u16,
    pub reason: &'static str,
}

impl Close {
    pub const NORMAL: Close = Close { code: 1000, reason: "closed" };
    pub const GOING_AWAY: Close = Close { code: 1001, reason: "server shutting down" };
    pub const TOO_BIG: Close = Close { code: 1009, reason: "message too big" };
    pub const SLOW: Close = Close { code: 4008, reason: "slow consumer" };
    pub const NO_PONG: Close = Close { code: 4012, reason: "read timeout" };
    pub const AUTH_TIMEOUT: Close = Close { code: 4408, reason: "authentication timeout" };
    pub const INVALID_TOKEN: Close = Close { code: 4500, reason: "invalid token" };
    pub const TOKEN_EXPIRED: Close = Close { code: 4501, reason: "token expired" };
    pub const BAD_REQUEST: Close = Close { code: 4502, reason: "bad request" };
    pub const FORBIDDEN: Close = Close { code: 4503, reason: "forbidden" };
    pub const AUTH_UNAVAILABLE: Close = Close { code: 4504, reason: "authenticator failed" };
    pub const TOO_MANY_CONNECTIONS: Close = Close { code: 4429, reason: "too many connections for this user" };

    /// Whether the frames queued before this close are still written: only at shutdown, which
    /// is no fault of the client's. Every other close drops them.
    pub fn keeps_queued(self) -> bool {
        self == Close::GOING_AWAY
    }
}

/// What happened to a pushed frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Push {
    Queued,
    /// The queue is past its byte or age bound: the frame was refused.
    Overflow,
    /// The connection is closing: the frame was dropped.
    Closed,
}

/// What the writer gets next: frames (appended to its buffer) or the close.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Next {
    Frames,
    Close(Close),
}

/// Frames of queue capacity an outbox keeps between batches.
pub(crate) const KEPT: usize = 8;

pub(crate) struct Outbox {
    inner: Mutex<Inner>,
    ready: Notify,
    max_bytes: usize,
    max_age: Duration,
}

struct Inner {
    frames: VecDeque<(Instant, Utf8Bytes)>,
    /// Bytes queued plus bytes the writer has taken and not yet written.
    bytes: usize,
    /// The batch the writer is writing: when its oldest frame was queued, and its size.
    in_flight: Option<(Instant, usize)>,
    closed: Option<Close>,
}

impl Outbox {
    pub(crate) fn new(max_bytes: usize, max_age: Duration) -> Outbox {
        Outbox {
            inner: Mutex::new(Inner { frames: VecDeque::new(), bytes: 0, in_flight: None, closed: None }),
            ready: Notify::new(),
            max_bytes,
            max_age,
        }
    }

    /// How long a frame may wait, queued or being written, before its connection is evicted.
    pub(crate) fn max_age(&self) -> Duration {
        self.max_age
    }

    pub(crate) fn push(&self, frame: Utf8Bytes) -> Push {
        let mut inner = self.inner.lock();
        if inner.closed.is_some() {
            return Push::Closed;
        }
        let oldest = inner.in_flight.map(|(since, _)| since).or_else(|| inner.frames.front().map(|(queued, _)| *queued));
        let too_old = oldest.is_some_and(|queued| queued.elapsed() > self.max_age);
        if too_old || inner.bytes + frame.len() > self.max_bytes {
            return Push::Overflow;
        }
        inner.bytes += frame.len();
        inner.frames.push_back((Instant::now(), frame));
        drop(inner);
        self.ready.notify_one();
        Push::Queued
    }

    /// Pushes several frames of one room, in order, under one lock and with one wake-up of the
    /// writer, all stamped `now` (the start of the fan-out that pushes them). Nothing is pushed
    /// once `left` is set: the connection left the room (see `revoke`). Returns what happened to
    /// the last frame tried (frames after an overflow are not tried) and how many were queued.
    /// `frames` is left empty.
    pub(crate) fn push_all(&self, frames: &mut Vec<Utf8Bytes>, left: &AtomicBool, now: Instant) -> (Push, usize) {
        let mut inner = self.inner.lock();
        if inner.closed.is_some() || left.load(Relaxed) {
            frames.clear();
            return (Push::Closed, 0);
        }
        let oldest = inner.in_flight.map(|(since, _)| since).or_else(|| inner.frames.front().map(|(queued, _)| *queued));
        if oldest.is_some_and(|queued| now.saturating_duration_since(queued) > self.max_age) {
            frames.clear();
            return (Push::Overflow, 0);
        }
        let (mut result, mut queued) = (Push::Queued, 0);
        for frame in frames.drain(..) {
            if inner.bytes + frame.len() > self.max_bytes {
                result = Push::Overflow;
                break;
            }
            inner.bytes += frame.len();
            inner.frames.push_back((now, frame));
            queued += 1;
        }
        drop(inner);
        if queued > 0 {
            self.ready.notify_one();
        }
        (result, queued)
    }

    /// Sets `left` under the queue's lock: a fan-out that pushes with it (`push_all`) either
    /// finished before this returns or pushes nothing, so nothing of the room it stands for
    /// follows what the connection is sent next (an `unsubscribe_ack`, a new `subscribe_ack`).
    /// Returns `true` if this call set it.
    pub(crate) fn revoke(&self, left: &AtomicBool) -> bool {
        let _inner = self.inner.lock();
        !left.swap(true, Relaxed)
    }

    /// Closes the queue; the frames still queued are dropped unless the close `keeps_queued`.
    /// Returns `Some(frames dropped)` if this call closed it, `None` if it was already closed.
    pub(crate) fn close(&self, close: Close) -> Option<usize> {
        let mut inner = self.inner.lock();
        if inner.closed.is_some() {
            return None;
        }
        inner.closed = Some(close);
        let mut dropped = 0;
        if !close.keeps_queued() {
            dropped = inner.frames.len();
            inner.frames.clear();
            inner.bytes = inner.in_flight.map_or(0, |(_, bytes)| bytes);
        }
        drop(inner);
        self.ready.notify_one();
        Some(dropped)
    }

    pub(crate) fn closed(&self) -> Option<Close> {
        self.inner.lock().closed
    }

    /// Whether the queue was closed by a close that still writes what was queued.
    pub(crate) fn drains(&self) -> bool {
        self.inner.lock().closed.is_some_and(Close::keeps_queued)
    }

    /// Waits for frames (moves all of them, oldest first, into `into`) or for the close. Frames
    /// taken count against the bounds until the writer reports them `written`.
    pub(crate) async fn next(&self, into: &mut Vec<Utf8Bytes>) -> Next {
        loop {
            let notified = self.ready.notified();
            {
                let mut inner = self.inner.lock();
                let draining = inner.closed.is_none_or(Close::keeps_queued);
                if draining && let Some(&(oldest, _)) = inner.frames.front() {
                    let batch: usize = inner.frames.iter().map(|(_, f)| f.len()).sum();
                    inner.in_flight = Some((oldest, batch));
                    into.extend(inner.frames.drain(..).map(|(_, f)| f));
                    // A burst's memory is not kept for an idle connection; a small queue's is
                    // (freeing it each batch cost more CPU per delivery than its bytes are worth).
                    if inner.frames.capacity() > KEPT {
                        inner.frames = VecDeque::new();
                    }
                    return Next::Frames;
                }
                if let Some(close) = inner.closed {
                    return Next::Close(close);
                }
            }
            notified.await;
        }
    }

    /// The writer has written the batch `next` gave it.
    pub(crate) fn written(&self) {
        let mut inner = self.inner.lock();
        if let Some((_, bytes)) = inner.in_flight.take() {
            inner.bytes = inner.bytes.saturating_sub(bytes);
        }
    }

    /// Frames waiting to be written.
    pub(crate) fn len(&self) -> usize {
        self.inner.lock().frames.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frame(text: &str) -> Utf8Bytes {
        Utf8Bytes::from(text.to_string())
    }

    #[tokio::test]
    async fn frames_come_out_in_order() {
        let outbox = Outbox::new(1024, Duration::from_secs(5));
        assert_eq!(outbox.push(frame("a")), Push::Queued);
        assert_eq!(outbox.push(frame("b")), Push::Queued);
        let mut frames = Vec::new();
        assert_eq!(outbox.next(&mut frames).await, Next::Frames);
        assert_eq!(frames, [frame("a"), frame("b")]);
    }

    #[test]
    fn byte_bound_overflows() {
        let outbox = Outbox::new(10, Duration::from_secs(5));
        assert_eq!(outbox.push(frame("12345")), Push::Queued);
        assert_eq!(outbox.push(frame("12345")), Push::Queued);
        assert_eq!(outbox.push(frame("1")), Push::Overflow);
    }

    #[test]
    fn age_bound_overflows() {
        let outbox = Outbox::new(1024, Duration::from_millis(10));
        assert_eq!(outbox.push(frame("old")), Push::Queued);
        std::thread::sleep(Duration::from_millis(20));
        assert_eq!(outbox.push(frame("new")), Push::Overflow);
    }

    #[tokio::test]
    async fn close_is_idempotent_and_wins_over_frames() {
        let outbox = Outbox::new(1024, Duration::from_secs(5));
        outbox.push(frame("a"));
        assert_eq!(outbox.close(Close::SLOW), Some(1));
        assert_eq!(outbox.close(Close::NORMAL), None);
        assert_eq!(outbox.push(frame("b")), Push::Closed);
        assert_eq!(outbox.next(&mut Vec::new()).await, Next::Close(Close::SLOW));
    }

    #[tokio::test]
    async fn frames_being_written_count_against_both_bounds() {
        let outbox = Outbox::new(10, Duration::from_millis(30));
        assert_eq!(outbox.push(frame("12345678")), Push::Queued);
        let mut frames = Vec::new();
        assert_eq!(outbox.next(&mut frames).await, Next::Frames);
        // Taken by the writer, not yet written: still 8 of the 10 bytes.
        assert_eq!(outbox.push(frame("123")), Push::Overflow);
        outbox.written();
        assert_eq!(outbox.push(frame("123")), Push::Queued);
        assert_eq!(outbox.next(&mut frames).await, Next::Frames);
        // A write that does not finish makes the connection too old for more frames.
        std::thread::sleep(Duration::from_millis(40));
        assert_eq!(outbox.push(frame("1")), Push::Overflow);
    }

    #[tokio::test]
    async fn push_all_queues_in_order_until_a_bound_and_not_after_revoke() {
        let outbox = Outbox::new(10, Duration::from_secs(5));
        let left = AtomicBool::new(false);
        let mut frames = vec![frame("1234"), frame("5678"), frame("9ab"), frame("c")];
        assert_eq!(outbox.push_all(&mut frames, &left, Instant::now()), (Push::Overflow, 2));
        assert!(frames.is_empty());
        let mut taken = Vec::new();
        assert_eq!(outbox.next(&mut taken).await, Next::Frames);
        assert_eq!(taken, [frame("1234"), frame("5678")]);
        outbox.written();
        outbox.revoke(&left);
        assert_eq!(outbox.push_all(&mut vec![frame("d")], &left, Instant::now()), (Push::Closed, 0));
        assert_eq!(outbox.len(), 0);
    }

    #[tokio::test]
    async fn a_shutdown_close_writes_what_was_queued_first() {
        let outbox = Outbox::new(1024, Duration::from_secs(5));
        outbox.push(frame("a"));
        outbox.push(frame("b"));
        assert_eq!(outbox.close(Close::GOING_AWAY), Some(0));
        assert_eq!(outbox.push(frame("c")), Push::Closed);
        let mut frames = Vec::new();
        assert_eq!(outbox.next(&mut frames).await, Next::Frames);
        assert_eq!(frames, [frame("a"), frame("b")]);
        outbox.written();
        assert_eq!(outbox.next(&mut frames).await, Next::Close(Close::GOING_AWAY));
    }
}
