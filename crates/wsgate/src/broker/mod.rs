//! The backbone seam.
//!
//! A [`Broker`] carries publications between wsgate nodes (and from backend
//! services). The node tells the broker which patterns it has local
//! subscribers for — once per pattern in use, reference-counted by the hub,
//! never once per connection — and the broker hands every matching message
//! to the node's [`DeliverySink`].
//!
//! The embedded [`MemoryBroker`] serves a single node; [`NatsBroker`] (NATS
//! core) joins any number of nodes on one NATS, [`RedisBroker`] (Redis
//! pub/sub) on one Redis, [`JetStreamBroker`] (NATS JetStream) adds a durable
//! history per topic. The optional parts of the contract (stream positions,
//! [`Broker::replay`], [`Broker::history`]) let durable backbones report
//! offsets and replay; the others answer [`BrokerError::Unsupported`].

mod index;
mod jetstream;
mod memory;
mod nats;
mod redis;
mod subscriptions;

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

use bytes::Bytes;
use serde::{Deserialize, Serialize};

use crate::topic::{Pattern, Topic};

pub use self::redis::{RedisBroker, RedisConfig, RedisStats};
pub use jetstream::{JetStreamBroker, JetStreamConfig, StorageKind};
pub use memory::MemoryBroker;
pub use nats::{NatsBroker, NatsConfig, NatsStats};

/// Which backbone carries messages between nodes (`[broker]` in the
/// configuration; each kind's options live in its variant).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Default)]
#[serde(tag = "kind", rename_all = "snake_case", deny_unknown_fields)]
// Built once at startup; boxing the variants would only complicate the API.
#[allow(clippy::large_enum_variant)]
pub enum BrokerConfig {
    /// Embedded in-memory broker: a single node.
    #[default]
    Memory,
    /// NATS core: every node on the same NATS (cluster) forms one gateway.
    Nats(NatsConfig),
    /// Redis pub/sub: every node on the same Redis forms one gateway.
    Redis(RedisConfig),
    /// NATS JetStream: like `nats`, plus a durable history per topic
    /// (offsets, recovery with `since`, `history`).
    Jetstream(JetStreamConfig),
}

/// Builds the broker a configuration names. Must be called inside a Tokio
/// runtime. Never waits for a network: networked backbones connect in the
/// background (and report it through [`Broker::is_ready`]).
pub fn from_config(config: &BrokerConfig) -> Result<Arc<dyn Broker>, BrokerError> {
    match config {
        BrokerConfig::Memory => Ok(Arc::new(MemoryBroker::new())),
        BrokerConfig::Nats(c) => Ok(Arc::new(NatsBroker::new(c)?)),
        BrokerConfig::Redis(c) => Ok(Arc::new(RedisBroker::new(c)?)),
        BrokerConfig::Jetstream(c) => Ok(Arc::new(JetStreamBroker::new(c)?)),
    }
}

/// What a payload published on a backbone by a plain (non-wsgate) client
/// becomes: valid JSON passes through untouched, other UTF-8 becomes a JSON
/// string, anything else is dropped.
pub(crate) enum ForeignPayload {
    Json(Bytes),
    Wrapped(Bytes),
    NotUtf8,
}

pub(crate) fn foreign_payload(payload: Bytes) -> ForeignPayload {
    if serde_json::from_slice::<serde::de::IgnoredAny>(&payload).is_ok() {
        return ForeignPayload::Json(payload);
    }
    match std::str::from_utf8(&payload) {
        Ok(text) => match serde_json::to_vec(text) {
            Ok(v) => ForeignPayload::Wrapped(Bytes::from(v)),
            Err(_) => ForeignPayload::NotUtf8,
        },
        Err(_) => ForeignPayload::NotUtf8,
    }
}

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
    /// The `[broker]` configuration cannot work (found when the broker is built).
    #[error("invalid [broker] configuration: {0}")]
    Config(String),
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

/// One stored message of a topic's history.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HistoryEntry {
    pub offset: u64,
    /// JSON text.
    pub data: Bytes,
}

/// The last messages of a topic ([`Broker::history`]).
#[derive(Debug, Clone)]
pub struct History {
    /// The current epoch of the history.
    pub epoch: Arc<str>,
    /// Oldest first.
    pub messages: Vec<HistoryEntry>,
}

/// What [`Broker::replay`] found after a client's last known position.
#[derive(Debug, Clone)]
pub struct Replay {
    /// True when `messages` is everything published on the topic after the
    /// position (same epoch, nothing trimmed); false means the client must
    /// reload its state (and `messages` is empty).
    pub recovered: bool,
    /// The current epoch of the history.
    pub epoch: Arc<str>,
    /// In offset order.
    pub messages: Vec<HistoryEntry>,
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

    /// Durable backbones: the messages of `topic` stored after `since`, up
    /// to the end of the history at the time of the call. Called after the
    /// node's live subscription for the topic is confirmed, so whatever is
    /// stored later arrives live.
    fn replay<'a>(
        &'a self,
        topic: &'a Topic,
        since: &'a StreamPosition,
    ) -> BoxFuture<'a, Result<Replay, BrokerError>> {
        let _ = (topic, since);
        Box::pin(std::future::ready(Err(BrokerError::Unsupported(
            "message history (since)",
        ))))
    }

    /// Durable backbones: the last `limit` messages of `topic` (oldest first)
    /// and the current epoch.
    fn history<'a>(
        &'a self,
        topic: &'a Topic,
        limit: usize,
    ) -> BoxFuture<'a, Result<History, BrokerError>> {
        let _ = (topic, limit);
        Box::pin(std::future::ready(Err(BrokerError::Unsupported(
            "message history",
        ))))
    }
}
