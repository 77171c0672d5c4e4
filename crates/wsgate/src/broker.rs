//! The backbone seam.
//!
//! A [`Broker`] carries publications between wsgate nodes (and from backend
//! services). The node tells the broker which patterns it has local
//! subscribers for — once per pattern in use, reference-counted by the hub,
//! never once per connection — and the broker hands every matching message
//! to the node's [`DeliverySink`].
//!
//! The embedded [`MemoryBroker`] serves a single node. NATS core, JetStream,
//! Redis and Postgres LISTEN/NOTIFY implement the same trait; the optional
//! parts of the contract (stream positions, history) exist so that durable
//! backbones can report offsets and replay.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use bytes::Bytes;
use parking_lot::RwLock;

use crate::topic::{Pattern, Topic};

pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BrokerError {
    #[error("backbone not connected: {0}")]
    Unavailable(String),
    #[error("backbone rejected the operation: {0}")]
    Rejected(String),
    #[error("this backbone does not support {0}")]
    Unsupported(&'static str),
    #[error("backbone closed")]
    Closed,
}

/// Where a publication goes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Target {
    /// Every subscriber of this topic (on every node).
    Topic(Topic),
    /// Every connection (on every node).
    Broadcast,
}

/// A message handed to the backbone. `data` is JSON text.
#[derive(Debug, Clone)]
pub struct Publication {
    pub target: Target,
    pub data: Bytes,
}

/// A position in a durable topic history (JetStream sequence, Redis stream
/// id). `epoch` changes when the history is reset, so a client can tell that
/// an old offset is meaningless.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StreamPosition {
    pub offset: u64,
    pub epoch: Arc<str>,
}

/// What the backbone says about an accepted publication.
#[derive(Debug, Clone, Default)]
pub struct PublishAck {
    /// Set by durable backbones.
    pub position: Option<StreamPosition>,
}

/// A message coming out of the backbone, for local fan-out.
#[derive(Debug, Clone)]
pub struct Delivery {
    pub target: Target,
    /// JSON text.
    pub data: Bytes,
    pub position: Option<StreamPosition>,
}

/// The node side of the seam: where a broker delivers.
pub trait DeliverySink: Send + Sync + 'static {
    fn deliver(&self, delivery: Delivery);
}

/// A pub/sub backbone.
pub trait Broker: Send + Sync + 'static {
    /// A short name for logs and metrics ("memory", "nats", ...).
    fn name(&self) -> &'static str;

    /// Connects the broker to the node's sink. Called once, before anything else.
    fn attach(&self, sink: Arc<dyn DeliverySink>);

    /// Publishes; resolves when the backbone accepted the message.
    fn publish(&self, publication: Publication) -> BoxFuture<'_, Result<PublishAck, BrokerError>>;

    /// The node now has local subscribers for these patterns; resolves when
    /// the backbone delivers them. Called by the node's interest task, in
    /// order, only for patterns not already subscribed.
    fn subscribe<'a>(&'a self, patterns: &'a [Pattern]) -> BoxFuture<'a, Result<(), BrokerError>>;

    /// The node has no local subscriber left for these patterns.
    fn unsubscribe<'a>(&'a self, patterns: &'a [Pattern])
    -> BoxFuture<'a, Result<(), BrokerError>>;

    /// Connected and able to carry messages (drives `GET /readyz`).
    fn is_ready(&self) -> bool;

    /// Stops the broker; later calls fail with [`BrokerError::Closed`].
    fn close(&self) -> BoxFuture<'_, ()>;
}

/// The embedded, single-node broker: a publication is delivered straight to
/// the local hub, in the publisher's task, with no copy and no hop.
#[derive(Default)]
pub struct MemoryBroker {
    sink: RwLock<Option<Arc<dyn DeliverySink>>>,
    closed: AtomicBool,
}

impl MemoryBroker {
    pub fn new() -> Self {
        Self::default()
    }
}

impl Broker for MemoryBroker {
    fn name(&self) -> &'static str {
        "memory"
    }

    fn attach(&self, sink: Arc<dyn DeliverySink>) {
        *self.sink.write() = Some(sink);
    }

    fn publish(&self, publication: Publication) -> BoxFuture<'_, Result<PublishAck, BrokerError>> {
        let result = if self.closed.load(Ordering::Acquire) {
            Err(BrokerError::Closed)
        } else {
            let sink = self.sink.read().clone();
            match sink {
                Some(sink) => {
                    sink.deliver(Delivery {
                        target: publication.target,
                        data: publication.data,
                        position: None,
                    });
                    Ok(PublishAck::default())
                }
                None => Err(BrokerError::Unavailable(
                    "memory broker not attached".into(),
                )),
            }
        };
        Box::pin(std::future::ready(result))
    }

    fn subscribe<'a>(&'a self, _patterns: &'a [Pattern]) -> BoxFuture<'a, Result<(), BrokerError>> {
        // Every publication already reaches the local hub.
        Box::pin(std::future::ready(Ok(())))
    }

    fn unsubscribe<'a>(
        &'a self,
        _patterns: &'a [Pattern],
    ) -> BoxFuture<'a, Result<(), BrokerError>> {
        Box::pin(std::future::ready(Ok(())))
    }

    fn is_ready(&self) -> bool {
        !self.closed.load(Ordering::Acquire) && self.sink.read().is_some()
    }

    fn close(&self) -> BoxFuture<'_, ()> {
        self.closed.store(true, Ordering::Release);
        Box::pin(std::future::ready(()))
    }
}
