//! A connection's writer: the task that drains its outbox onto the socket.
//!
//! This module owns the writer loop: it takes every frame queued (one batch), writes them with
//! one flush, sends server pings, watches how long written frames wait in the kernel (`sendq`),
//! and sends the close frame once the outbox is closed. A write that outlasts the outbox's age
//! bound evicts the connection (4008). It must not read from the socket or touch rooms: the
//! session's reader and the `Hub` do.

use std::sync::Arc;

use axum::extract::ws::Message;
use futures_util::{Sink, SinkExt};

use super::close_message;
use crate::hub::outbox::Next;
use crate::hub::sendq::{self, SendQueue};
use crate::hub::{Close, Conn, Hub};

pub(super) async fn write_loop<W>(hub: Arc<Hub>, conn: Arc<Conn>, mut sink: W, mut kernel: Option<SendQueue>)
where
    W: Sink<Message, Error = axum::Error> + Unpin,
{
    let mut ping = tokio::time::interval(hub.config().ping_interval);
    ping.tick().await;
    let max_age = conn.outbox().max_age();
    let mut frames = Vec::new();
    loop {
        let waiting = kernel.as_ref().is_some_and(|k| !k.is_empty());
        // Boxed, and only made while frames wait in the kernel: an idle writer holds no timer.
        let look_again: futures_util::future::OptionFuture<_> = waiting.then(|| Box::pin(tokio::time::sleep(max_age / 4))).into();
        let next = tokio::select! {
            biased;
            next = conn.outbox().next(&mut frames) => Some(Some(next)),
            _ = ping.tick() => Some(None),
            // While written frames wait in the kernel, look again now and then.
            Some(()) = look_again, if waiting => None,
        };
        let sent = match next {
            None => Ok(()),
            Some(None) => {
                let sent = send_all(&hub, &conn, &mut sink, std::iter::once(Message::Ping(Default::default()))).await;
                if let Some(kernel) = &mut kernel {
                    kernel.wrote_bytes(sendq::framed(0));
                }
                sent
            }
            Some(Some(Next::Frames)) => {
                let bytes: u64 = frames.iter().map(|f| sendq::framed(f.len() as u64)).sum();
                let sent = send_all(&hub, &conn, &mut sink, frames.drain(..).map(Message::Text)).await;
                // A burst's memory is not kept while the connection idles.
                if frames.capacity() > crate::hub::outbox::KEPT {
                    frames = Vec::new();
                }
                conn.outbox().written();
                if let Some(kernel) = &mut kernel {
                    kernel.wrote_bytes(bytes);
                }
                sent
            }
            Some(Some(Next::Close(close))) => {
                send_close(&conn, &mut sink, close).await;
                break;
            }
        };
        // A frame that waited in the kernel past the age bound is as late as one that waited in
        // the outbox: the client is not keeping up.
        if let Some(age) = kernel.as_mut().and_then(SendQueue::oldest)
            && age > max_age
        {
            hub.evict_slow(&conn);
        }
        if sent.is_err() {
            // Evicted in the middle of a write, or the socket failed: say why, if the socket
            // still takes it (after whatever part of the batch was buffered).
            if let Some(close) = conn.outbox().closed() {
                send_close(&conn, &mut sink, close).await;
            }
            break;
        }
    }
    hub.disconnect(&conn, Close::NORMAL);
}

/// Sends the close frame, waiting for a client that may not be reading no longer than a frame
/// may wait in its outbox.
async fn send_close<W>(conn: &Conn, sink: &mut W, close: Close)
where
    W: Sink<Message, Error = axum::Error> + Unpin,
{
    // Boxed: once per connection, and the writer's future would otherwise be this big for life.
    let _ = Box::pin(tokio::time::timeout(conn.outbox().max_age(), sink.send(close_message(close)))).await;
}

/// Writes a batch with one flush. A write that takes longer than the outbox's age bound evicts
/// the connection (a client that stopped reading must not hold its frames forever, even when
/// nothing new is pushed to it); an eviction elsewhere stops the write at once. A shutdown does
/// not: its close waits for the queued frames.
async fn send_all<W>(hub: &Hub, conn: &Arc<Conn>, sink: &mut W, messages: impl Iterator<Item = Message>) -> Result<(), ()>
where
    W: Sink<Message, Error = axum::Error> + Unpin,
{
    let write = async {
        for message in messages {
            sink.feed(message).await?;
        }
        sink.flush().await
    };
    let mut write = std::pin::pin!(write);
    // Most writes finish at once (the socket has room): those need no timer.
    if let std::task::Poll::Ready(written) = futures_util::poll!(&mut write) {
        return written.map_err(|_| ());
    }
    // The slow path, boxed: the writer's future is held for the connection's life at the size
    // of its largest state.
    Box::pin(async {
        let evicted = async {
            conn.gone.cancelled().await;
            if conn.outbox().drains() {
                std::future::pending::<()>().await;
            }
        };
        tokio::select! {
            biased;
            _ = evicted => Err(()),
            result = tokio::time::timeout(conn.outbox().max_age(), &mut write) => match result {
                Ok(written) => written.map_err(|_| ()),
                Err(_) => {
                    hub.evict_slow(conn);
                    Err(())
                }
            },
        }
    })
    .await
}
