//! The bounded outbound queue between publishers and one connection's task.
//!
//! Publishers (the hub's fan-out, on any thread) push shared, already encoded
//! frames; the connection task takes everything queued in one go and writes it
//! with a single flush (write coalescing). The queue is bounded by message
//! count and by bytes. When full, the [`SlowConsumerPolicy`] decides: close the
//! connection (default) or drop the oldest queued frames.
//!
//! The lock is a short critical section (a `VecDeque` push); it is never held
//! across an `.await`.

use std::collections::VecDeque;
use std::time::Instant;

use bytes::Bytes;
use parking_lot::Mutex;
use serde::{Deserialize, Serialize};
use tokio::sync::Notify;

/// What to do when a connection's outbound queue is full.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum SlowConsumerPolicy {
    /// Close the connection with close code 4000 ("slow consumer").
    #[default]
    Disconnect,
    /// Drop the oldest queued frames to make room; counted in
    /// `wsgate_deliveries_dropped_total`.
    DropOldest,
}

#[derive(Debug, Clone, Copy)]
pub struct QueueLimits {
    pub max_messages: usize,
    pub max_bytes: usize,
    pub policy: SlowConsumerPolicy,
}

/// One text frame waiting to be written: its payload is UTF-8 JSON, shared
/// by every subscriber of the publication.
pub struct Frame {
    pub payload: Bytes,
    /// When the hub accepted the publication (for the publish-to-write
    /// histogram); `None` for responses to the client's own requests.
    pub published_at: Option<Instant>,
}

/// Outcome of [`Outbound::push`].
#[derive(Debug, PartialEq, Eq)]
pub enum Pushed {
    Queued,
    /// Queued after dropping this many older frames (drop-oldest policy).
    DroppedOldest(usize),
    /// The queue overflowed under the disconnect policy; the frame was not
    /// queued and the connection is now marked closed.
    Overflow,
    /// The connection is already closing; nothing was queued.
    Closed,
}

/// What [`Outbound::take_all`] hands the writer besides the frames.
#[derive(Debug, Default)]
pub struct Taken {
    pub state: QueueState,
    /// Payload of the latest ping to answer (RFC 6455: the last one suffices).
    pub pong: Option<Bytes>,
    /// The keepalive asks for a ping.
    pub ping: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum QueueState {
    #[default]
    Open,
    /// The queue overflowed under the disconnect policy.
    Overflowed,
    /// The node is shutting down: write what was taken, then close 1001.
    GoingAway,
}

#[derive(Default)]
struct State {
    frames: VecDeque<Frame>,
    bytes: usize,
    /// No more pushes are accepted.
    closed: bool,
    /// Set by [`Outbound::going_away`]; pushes are still accepted so that
    /// what is in flight gets flushed.
    going_away: bool,
    pong: Option<Bytes>,
    ping: bool,
}

/// A connection's outbound queue; shared between the hub and the connection task.
pub struct Outbound {
    state: Mutex<State>,
    notify: Notify,
    /// Signalled when the connection task takes the queue.
    drained: Notify,
    limits: QueueLimits,
}

impl Outbound {
    pub fn new(limits: QueueLimits) -> Self {
        Outbound {
            state: Mutex::new(State::default()),
            notify: Notify::new(),
            drained: Notify::new(),
            limits,
        }
    }

    pub fn push(&self, frame: Frame) -> Pushed {
        let len = frame.payload.len();
        let mut st = self.state.lock();
        if st.closed {
            return Pushed::Closed;
        }
        let mut dropped = 0;
        while !st.frames.is_empty()
            && (st.frames.len() >= self.limits.max_messages
                || st.bytes + len > self.limits.max_bytes)
        {
            match self.limits.policy {
                SlowConsumerPolicy::Disconnect => {
                    st.closed = true;
                    st.frames.clear();
                    st.bytes = 0;
                    drop(st);
                    self.notify.notify_one();
                    return Pushed::Overflow;
                }
                SlowConsumerPolicy::DropOldest => {
                    if let Some(old) = st.frames.pop_front() {
                        st.bytes -= old.payload.len();
                        dropped += 1;
                    }
                }
            }
        }
        let was_empty = st.frames.is_empty();
        st.bytes += len;
        st.frames.push_back(frame);
        drop(st);
        if was_empty {
            self.notify.notify_one();
        }
        if dropped > 0 {
            Pushed::DroppedOldest(dropped)
        } else {
            Pushed::Queued
        }
    }

    /// Moves every queued frame into `out` (which should be empty) and
    /// reports the queue's state and pending control frames.
    pub fn take_all(&self, out: &mut VecDeque<Frame>) -> Taken {
        let mut st = self.state.lock();
        std::mem::swap(&mut st.frames, out);
        st.bytes = 0;
        let state = if st.going_away {
            QueueState::GoingAway
        } else if st.closed {
            QueueState::Overflowed
        } else {
            QueueState::Open
        };
        let taken = Taken {
            state,
            pong: st.pong.take(),
            ping: std::mem::take(&mut st.ping),
        };
        drop(st);
        self.drained.notify_waiters();
        taken
    }

    /// Asks the writer to answer a ping (replacing an unanswered one).
    pub fn request_pong(&self, payload: Bytes) {
        self.state.lock().pong = Some(payload);
        self.notify.notify_one();
    }

    /// Asks the writer to send a ping.
    pub fn request_ping(&self) {
        self.state.lock().ping = true;
        self.notify.notify_one();
    }

    /// True once an overflow closed the queue (disconnect policy).
    pub fn overflowed(&self) -> bool {
        let st = self.state.lock();
        st.closed && !st.going_away
    }

    /// Tells the connection task that the node is shutting down.
    pub fn going_away(&self) {
        self.state.lock().going_away = true;
        self.notify.notify_one();
    }

    /// True while the queue is at most half full (or closed).
    pub fn has_room_for_responses(&self) -> bool {
        let st = self.state.lock();
        st.closed
            || (st.frames.len() < self.limits.max_messages / 2
                && st.bytes < self.limits.max_bytes / 2)
    }

    /// Resolves while the queue is at most half full (or closed). The
    /// connection's reader awaits this before running a request, so a
    /// client pipelining requests faster than it reads the responses is
    /// slowed down by TCP backpressure instead of overflowing its queue.
    pub async fn room_for_responses(&self) {
        loop {
            let drained = self.drained.notified();
            tokio::pin!(drained);
            drained.as_mut().enable();
            if self.has_room_for_responses() {
                return;
            }
            drained.await;
        }
    }

    /// Marks the queue closed: later pushes are refused.
    pub fn close(&self) {
        self.state.lock().closed = true;
        self.notify.notify_one();
    }

    pub fn is_closed(&self) -> bool {
        self.state.lock().closed
    }

    /// Resolves when something was pushed (or the queue closed) since the
    /// last `take_all`.
    pub async fn ready(&self) {
        self.notify.notified().await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frame(s: &'static str) -> Frame {
        Frame {
            payload: Bytes::from_static(s.as_bytes()),
            published_at: None,
        }
    }

    #[test]
    fn disconnect_policy_closes_on_overflow() {
        let q = Outbound::new(QueueLimits {
            max_messages: 2,
            max_bytes: 1024,
            policy: SlowConsumerPolicy::Disconnect,
        });
        assert_eq!(q.push(frame("a")), Pushed::Queued);
        assert_eq!(q.push(frame("b")), Pushed::Queued);
        assert_eq!(q.push(frame("c")), Pushed::Overflow);
        assert_eq!(q.push(frame("d")), Pushed::Closed);
        let mut out = VecDeque::new();
        assert_eq!(q.take_all(&mut out).state, QueueState::Overflowed);
        assert!(out.is_empty(), "an overflowed queue is discarded");
    }

    #[test]
    fn drop_oldest_keeps_newest_within_bytes() {
        let q = Outbound::new(QueueLimits {
            max_messages: 100,
            max_bytes: 4,
            policy: SlowConsumerPolicy::DropOldest,
        });
        assert_eq!(q.push(frame("aa")), Pushed::Queued);
        assert_eq!(q.push(frame("bb")), Pushed::Queued);
        assert_eq!(q.push(frame("cc")), Pushed::DroppedOldest(1));
        let mut out = VecDeque::new();
        assert_eq!(q.take_all(&mut out).state, QueueState::Open);
        let got: Vec<&[u8]> = out.iter().map(|f| &f.payload[..]).collect();
        assert_eq!(got, [b"bb", b"cc"]);
    }

    #[test]
    fn going_away_keeps_accepting_until_taken() {
        let q = Outbound::new(QueueLimits {
            max_messages: 10,
            max_bytes: 1024,
            policy: SlowConsumerPolicy::Disconnect,
        });
        q.push(frame("a"));
        q.going_away();
        assert_eq!(q.push(frame("b")), Pushed::Queued);
        let mut out = VecDeque::new();
        assert_eq!(q.take_all(&mut out).state, QueueState::GoingAway);
        assert_eq!(out.len(), 2);
    }

    #[test]
    fn a_single_frame_larger_than_the_byte_limit_is_still_accepted() {
        let q = Outbound::new(QueueLimits {
            max_messages: 10,
            max_bytes: 1,
            policy: SlowConsumerPolicy::Disconnect,
        });
        assert_eq!(q.push(frame("large")), Pushed::Queued);
    }
}
