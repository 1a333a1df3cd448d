//! One connection's outgoing queue, bounded in bytes and in the age of its oldest frame.
//!
//! This module owns `Outbox`. Fan-out pushes shared frame bytes into it without waiting; the
//! connection's writer task drains it. A push past either bound refuses the frame and reports
//! `Overflow`, and the hub then evicts the connection. Closing is idempotent and race-free: the
//! first `close` wins, later pushes are dropped, and nothing can panic on a closed queue (the
//! original crashed the process sending on a closed channel).

use std::collections::VecDeque;
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
pub enum Next {
    Frames,
    Close(Close),
}

pub struct Outbox {
    inner: Mutex<Inner>,
    ready: Notify,
    max_bytes: usize,
    max_age: Duration,
}

struct Inner {
    frames: VecDeque<(Instant, Utf8Bytes)>,
    bytes: usize,
    closed: Option<Close>,
}

impl Outbox {
    pub fn new(max_bytes: usize, max_age: Duration) -> Outbox {
        Outbox {
            inner: Mutex::new(Inner { frames: VecDeque::new(), bytes: 0, closed: None }),
            ready: Notify::new(),
            max_bytes,
            max_age,
        }
    }

    pub fn push(&self, frame: Utf8Bytes) -> Push {
        let mut inner = self.inner.lock();
        if inner.closed.is_some() {
            return Push::Closed;
        }
        let too_old = inner.frames.front().is_some_and(|(queued, _)| queued.elapsed() > self.max_age);
        if too_old || inner.bytes + frame.len() > self.max_bytes {
            return Push::Overflow;
        }
        inner.bytes += frame.len();
        inner.frames.push_back((Instant::now(), frame));
        drop(inner);
        self.ready.notify_one();
        Push::Queued
    }

    /// Closes the queue; returns `Some(frames dropped)` if this call closed it, `None` if it was
    /// already closed.
    pub fn close(&self, close: Close) -> Option<usize> {
        let mut inner = self.inner.lock();
        if inner.closed.is_some() {
            return None;
        }
        inner.closed = Some(close);
        let dropped = inner.frames.len();
        inner.frames.clear();
        inner.bytes = 0;
        drop(inner);
        self.ready.notify_one();
        Some(dropped)
    }

    pub fn closed(&self) -> Option<Close> {
        self.inner.lock().closed
    }

    /// Waits for frames (moves all of them, oldest first, into `into`) or for the close.
    pub async fn next(&self, into: &mut Vec<Utf8Bytes>) -> Next {
        loop {
            let notified = self.ready.notified();
            {
                let mut inner = self.inner.lock();
                if let Some(close) = inner.closed {
                    return Next::Close(close);
                }
                if !inner.frames.is_empty() {
                    inner.bytes = 0;
                    into.extend(inner.frames.drain(..).map(|(_, f)| f));
                    return Next::Frames;
                }
            }
            notified.await;
        }
    }

    /// Frames waiting to be written.
    pub fn len(&self) -> usize {
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
}
