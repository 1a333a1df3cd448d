//! How long what was written to a connection waits in the kernel before the client has it.
//!
//! A write to a socket finishes as soon as the kernel's send buffer takes the bytes, so the
//! outbox's age bound alone would let a client that reads just fast enough keep receiving frames
//! that sat in that buffer for many seconds. This module owns `SendQueue`: it counts the bytes
//! handed to the socket (WebSocket framing included, exactly: `framed`), marks when each batch was
//! handed over, and asks the kernel (`SIOCOUTQ`) how many bytes the peer has not acknowledged,
//! which gives the age of the oldest byte still waiting. The session evicts a connection when
//! that age passes the outbox's bound. It must not write anything.

use std::collections::VecDeque;
use std::time::{Duration, Instant};


/// Most batches remembered; older marks are merged into the newest (the age can only grow).
const MAX_MARKS: usize = 256;

pub(crate) struct SendQueue {
    fd: i32,
    /// Bytes handed to the socket since the session started.
    written: u64,
    /// `(written after the batch, when it was handed over)`, oldest first.
    marks: VecDeque<(u64, Instant)>,
}

impl SendQueue {
    /// Tracks the socket `fd`; what is in its send queue already (the upgrade response) is
    /// counted as written before the session.
    pub(super) fn new(fd: i32) -> Option<SendQueue> {
        let queued = unacknowledged(fd)?;
        Some(SendQueue { fd, written: queued, marks: VecDeque::new() })
    }

    /// `bytes` of WebSocket frames were just handed to the socket.
    pub(super) fn wrote_bytes(&mut self, bytes: u64) {
        if bytes == 0 {
            return;
        }
        self.written += bytes;
        if self.marks.len() == MAX_MARKS {
            self.marks.pop_back();
        }
        self.marks.push_back((self.written, Instant::now()));
    }

    /// How long the oldest byte the client has not acknowledged has waited; `None` when it has
    /// everything (or the kernel cannot say).
    pub(super) fn oldest(&mut self) -> Option<Duration> {
        let pending = unacknowledged(self.fd)?;
        let delivered = self.written.saturating_sub(pending);
        while self.marks.front().is_some_and(|(end, _)| *end <= delivered) {
            self.marks.pop_front();
        }
        self.marks.front().map(|(_, at)| at.elapsed())
    }

    pub(super) fn is_empty(&self) -> bool {
        self.marks.is_empty()
    }
}

/// Bytes in the socket's send queue that the peer has not acknowledged.
fn unacknowledged(fd: i32) -> Option<u64> {
    let mut pending: libc::c_int = 0;
    // SAFETY: an ioctl that writes one int through a pointer to a local.
    let result = unsafe { libc::ioctl(fd, libc::TIOCOUTQ, &mut pending) };
    (result == 0 && pending >= 0).then_some(pending as u64)
}

/// Bytes a server-to-client WebSocket frame (unmasked, uncompressed) carrying `payload` bytes
/// takes on the wire.
pub(crate) fn framed(payload: u64) -> u64 {
    let header = match payload {
        0..=125 => 2,
        126..=65_535 => 4,
        _ => 10,
    };
    header + payload
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frame_sizes_are_exact() {
        assert_eq!(framed(125), 127);
        assert_eq!(framed(126), 130);
        assert_eq!(framed(70_000), 70_010);
        assert_eq!(framed(0), 2);
    }

    #[test]
    fn bytes_a_reader_that_stopped_reading_never_acknowledges_age() {
        use std::io::Write;
        use std::os::fd::AsRawFd;
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let mut writer = std::net::TcpStream::connect(listener.local_addr().unwrap()).unwrap();
        let (_reader, _) = listener.accept().unwrap();
        let mut queue = SendQueue::new(writer.as_raw_fd()).unwrap();
        assert_eq!(queue.oldest(), None);
        // Loopback acknowledges what lands in the reader's receive buffer, read or not.
        writer.write_all(&[0u8; 1004]).unwrap();
        queue.wrote_bytes(framed(1000));
        std::thread::sleep(Duration::from_millis(20));
        assert_eq!(queue.oldest(), None, "acknowledged bytes are delivered");
        // Once that buffer is full, what is written stays unacknowledged, and ages.
        writer.set_nonblocking(true).unwrap();
        let chunk = vec![0u8; 1004];
        let mut stuck = 0;
        while stuck < 64 {
            match writer.write(&chunk) {
                Ok(1004) => queue.wrote_bytes(framed(1000)),
                Ok(_) | Err(_) => stuck += 1,
            }
        }
        std::thread::sleep(Duration::from_millis(60));
        let age = queue.oldest().expect("bytes are waiting");
        assert!(age >= Duration::from_millis(60), "{age:?}");
        assert!(!queue.is_empty());
    }
}
