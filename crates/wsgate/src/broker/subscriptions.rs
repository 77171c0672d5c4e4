//! The driver shared by the NATS and JetStream backbones: one task owns
//! every core NATS subscription of the node (one per pattern in use), reads
//! them all through one `SelectAll`, and hands each message to the backbone's
//! [`Handler`] together with the [`SubscriptionIndex`] that decides which
//! copy of an overlapping-pattern message is delivered.

use std::pin::Pin;
use std::task::{Context, Poll};

use async_nats::{Message, Subscriber};
use futures_util::future::FutureExt;
use futures_util::stream::{AbortHandle, Abortable, SelectAll, Stream, StreamExt};
use rustc_hash::FxHashMap;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use super::index::SubscriptionIndex;
use crate::topic::Pattern;

/// Messages handled per driver wake-up before it looks at its control
/// channel again.
const DRIVER_BATCH: usize = 128;

/// Changes to the driver's subscriptions, in order.
pub(super) enum Control {
    /// A new subscription; with a pattern it replaces the pattern's previous
    /// one. Without a pattern it is an internal subscription (an inbox).
    Add {
        id: u64,
        pattern: Option<Pattern>,
        sub: Subscriber,
    },
    Remove(Pattern),
}

/// What a backbone does with each message its subscriptions receive.
pub(super) trait Handler {
    fn handle(&mut self, index: &SubscriptionIndex, id: u64, msg: Message);
}

/// One subscription as a stream of (subscription id, message).
struct Tagged {
    id: u64,
    sub: Subscriber,
}

impl Stream for Tagged {
    type Item = (u64, Message);

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let id = self.id;
        self.sub.poll_next_unpin(cx).map(|m| m.map(|m| (id, m)))
    }
}

/// Every subscription of the node.
#[derive(Default)]
pub(super) struct Subscriptions {
    streams: SelectAll<Abortable<Tagged>>,
    handles: FxHashMap<Pattern, (u64, AbortHandle)>,
    /// Which subscription serves each exact topic / wildcard pattern.
    index: SubscriptionIndex,
}

impl Subscriptions {
    /// Runs until `stop` fires or the control channel closes. Dropping the
    /// streams at the end unsubscribes.
    pub(super) async fn run(
        mut self,
        mut control: mpsc::UnboundedReceiver<Control>,
        stop: CancellationToken,
        mut handler: impl Handler,
    ) {
        loop {
            tokio::select! {
                biased;
                _ = stop.cancelled() => break,
                cmd = control.recv() => match cmd {
                    Some(cmd) => self.apply(cmd),
                    None => break,
                },
                Some((id, msg)) = self.streams.next(), if !self.streams.is_empty() => {
                    handler.handle(&self.index, id, msg);
                    // Take what else is ready in this wake-up. (`now_or_never`
                    // polls with a no-op waker; the next `select!` round polls
                    // the streams again with this task's waker before it sleeps.)
                    for _ in 0..DRIVER_BATCH {
                        match self.streams.next().now_or_never() {
                            Some(Some((id, msg))) => handler.handle(&self.index, id, msg),
                            _ => break,
                        }
                    }
                }
            }
        }
    }

    fn apply(&mut self, cmd: Control) {
        match cmd {
            Control::Add { id, pattern, sub } => {
                let (handle, reg) = AbortHandle::new_pair();
                if let Some(p) = pattern {
                    self.remove(&p);
                    self.index.insert(&p, id);
                    self.handles.insert(p, (id, handle));
                }
                self.streams.push(Abortable::new(Tagged { id, sub }, reg));
            }
            Control::Remove(p) => self.remove(&p),
        }
    }

    fn remove(&mut self, p: &Pattern) {
        if let Some((id, handle)) = self.handles.remove(p) {
            handle.abort();
            self.index.remove(p, id);
        }
    }
}
