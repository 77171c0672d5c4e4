//! The hub: which local connection wants which topic, and the fan-out.
//!
//! * Exact topics live in sharded hash maps (topic → connections), wildcard
//!   patterns in a [`WildcardTrie`]. A publication costs one hash lookup plus
//!   a trie walk (skipped while no wildcard subscription exists).
//! * The reverse index (connection → its patterns) is owned by each session
//!   task, so subscribe, unsubscribe and disconnect cost O(that connection's
//!   subscriptions), never a scan of all topics.
//! * A publication is encoded once ([`crate::protocol::encode_message`]); every
//!   subscriber's queue gets a reference-counted clone of the same bytes.
//! * When a pattern gets its first local subscriber or loses its last one,
//!   the hub asks the interest task to reconcile the backbone subscription.
//!   The task re-reads the current state when it runs, so racing
//!   subscribe/unsubscribe calls always converge to the right backbone state.
//!
//! Locks are held only for map operations and queue pushes, never across an
//! `.await`. Lock order: `wild` before a shard; no writer holds both.

use std::hash::BuildHasher;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

use bytes::Bytes;
use parking_lot::RwLock;
use rustc_hash::{FxBuildHasher, FxHashMap, FxHashSet};
use tokio::sync::{mpsc, oneshot};

use crate::broker::{Broker, BrokerError, Delivery, DeliverySink, Target};
use crate::metrics::Metrics;
use crate::protocol;
use crate::queue::{Frame, Outbound, Pushed};
use crate::topic::{Pattern, Topic};
use crate::trie::{ConnId, Subscribers, WildcardTrie};

const SHARDS: usize = 32;
/// Bound of the interest task's queue; senders wait when it is full.
const INTEREST_QUEUE: usize = 1024;

type Shard = RwLock<FxHashMap<Topic, Subscribers<Arc<Outbound>>>>;

struct InterestCmd {
    patterns: Vec<Pattern>,
    done: Option<oneshot::Sender<Result<(), BrokerError>>>,
}

pub struct Hub {
    shards: Box<[Shard]>,
    wild: RwLock<WildcardTrie<Arc<Outbound>>>,
    conns: RwLock<FxHashMap<ConnId, Arc<Outbound>>>,
    next_id: AtomicU64,
    metrics: Arc<Metrics>,
    interest: mpsc::Sender<InterestCmd>,
}

impl Hub {
    /// Creates the hub, attaches it to `broker` and starts the interest task.
    pub fn start(broker: Arc<dyn Broker>, metrics: Arc<Metrics>) -> Arc<Hub> {
        let (tx, rx) = mpsc::channel(INTEREST_QUEUE);
        let hub = Arc::new(Hub {
            shards: (0..SHARDS).map(|_| RwLock::default()).collect(),
            wild: RwLock::default(),
            conns: RwLock::default(),
            next_id: AtomicU64::new(1),
            metrics,
            interest: tx,
        });
        broker.attach(Arc::new(HubSink(Arc::downgrade(&hub))));
        tokio::spawn(interest_task(Arc::downgrade(&hub), broker, rx));
        hub
    }

    fn shard(&self, topic: &str) -> &Shard {
        let h = FxBuildHasher.hash_one(topic) as usize;
        &self.shards[h % SHARDS]
    }

    /// Registers a connection's queue (for broadcasts) and returns its id.
    pub fn register(&self, out: Arc<Outbound>) -> ConnId {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        self.conns.write().insert(id, out);
        id
    }

    /// Removes a connection and all its subscriptions (`subs` is the
    /// session's reverse index).
    pub async fn unregister(&self, id: ConnId, subs: impl IntoIterator<Item = Pattern>) {
        self.conns.write().remove(&id);
        let subs: Vec<Pattern> = subs.into_iter().collect();
        self.unsubscribe(id, &subs).await;
    }

    /// Adds subscriptions for a connection (`patterns` must not hold ones it
    /// already has). Synchronous: the caller records them in its reverse
    /// index right away, then awaits [`Hub::reconcile`].
    pub fn add(&self, id: ConnId, out: &Arc<Outbound>, patterns: &[Pattern]) {
        let mut created = 0;
        for p in patterns {
            let first = match p.as_topic() {
                Some(topic) => {
                    let mut shard = self.shard(topic.as_str()).write();
                    let subs = shard.entry(topic).or_default();
                    let first = subs.is_empty();
                    subs.insert(id, out.clone());
                    first
                }
                None => self.wild.write().insert(p, id, out.clone()),
            };
            created += first as i64;
        }
        self.metrics.subscriptions.inc_by(patterns.len() as i64);
        self.metrics.topics.inc_by(created);
    }

    /// Removes subscriptions of a connection and updates the backbone.
    pub async fn unsubscribe(&self, id: ConnId, patterns: &[Pattern]) {
        let emptied = self.remove(id, patterns);
        if !emptied.is_empty() {
            // An error only means the backbone is gone, and with it the
            // backbone-side subscription.
            let _ = self.reconcile(emptied, false).await;
        }
    }

    /// Removes subscriptions; returns the patterns left without a local subscriber.
    fn remove(&self, id: ConnId, patterns: &[Pattern]) -> Vec<Pattern> {
        let mut emptied = Vec::new();
        for p in patterns {
            let empty = match p.as_topic() {
                Some(topic) => {
                    let mut shard = self.shard(topic.as_str()).write();
                    match shard.get_mut(topic.as_str()) {
                        Some(subs) => {
                            let removed = subs.remove(&id).is_some();
                            let empty = removed && subs.is_empty();
                            if empty {
                                shard.remove(topic.as_str());
                            }
                            empty
                        }
                        None => false,
                    }
                }
                None => self.wild.write().remove(p, id),
            };
            if empty {
                emptied.push(p.clone());
            }
        }
        self.metrics.subscriptions.dec_by(patterns.len() as i64);
        self.metrics.topics.dec_by(emptied.len() as i64);
        emptied
    }

    /// Makes the backbone's subscriptions match the hub for `patterns`. With
    /// `wait`, resolves once the backbone delivers every pattern still in
    /// use — including ones whose backbone subscription another connection
    /// started and is still in flight — so a subscribe result means "live".
    pub(crate) async fn reconcile(
        &self,
        patterns: Vec<Pattern>,
        wait: bool,
    ) -> Result<(), BrokerError> {
        let (done, rx) = if wait {
            let (tx, rx) = oneshot::channel();
            (Some(tx), Some(rx))
        } else {
            (None, None)
        };
        self.interest
            .send(InterestCmd { patterns, done })
            .await
            .map_err(|_| BrokerError::Closed)?;
        match rx {
            Some(rx) => rx.await.map_err(|_| BrokerError::Closed)?,
            None => Ok(()),
        }
    }

    /// True if some local connection subscribes to exactly this pattern.
    fn has_local(&self, p: &Pattern) -> bool {
        match p.as_topic() {
            Some(t) => self.shard(t.as_str()).read().contains_key(t.as_str()),
            None => self.wild.read().contains(p),
        }
    }

    /// Fans a backbone delivery out to local subscribers.
    pub fn dispatch(&self, delivery: &Delivery) {
        let Ok(data) = std::str::from_utf8(&delivery.data) else {
            tracing::warn!("dropping a delivery whose data is not UTF-8 JSON");
            return;
        };
        self.metrics.publications.inc();
        match &delivery.target {
            Target::Broadcast => {
                let payload = protocol::encode_broadcast(data);
                let at = Instant::now();
                for out in self.conns.read().values() {
                    self.push(out, &payload, at);
                }
            }
            Target::Topic(topic) => {
                let payload = protocol::encode_message(topic.as_str(), data);
                self.fan_out(topic, &payload);
            }
        }
    }

    fn fan_out(&self, topic: &Topic, payload: &Bytes) {
        let at = Instant::now();
        let wild = self.wild.read();
        let shard = self.shard(topic.as_str()).read();
        let exact = shard.get(topic.as_str());
        if wild.is_empty() {
            if let Some(subs) = exact {
                for out in subs.values() {
                    self.push(out, payload, at);
                }
            }
            return;
        }
        // With wildcards, a connection may match several of its patterns:
        // deliver once.
        let mut seen: FxHashSet<ConnId> = FxHashSet::default();
        if let Some(subs) = exact {
            for (id, out) in subs {
                seen.insert(*id);
                self.push(out, payload, at);
            }
        }
        wild.for_each_match(topic, |id, out| {
            if seen.insert(id) {
                self.push(out, payload, at);
            }
        });
    }

    fn push(&self, out: &Outbound, payload: &Bytes, at: Instant) {
        let frame = Frame {
            payload: payload.clone(),
            published_at: Some(at),
        };
        match out.push(frame) {
            Pushed::Queued | Pushed::Closed => {}
            Pushed::DroppedOldest(n) => {
                self.metrics.deliveries_dropped.inc_by(n as u64);
            }
            Pushed::Overflow => {
                self.metrics.slow_consumer_disconnects.inc();
                self.metrics.deliveries_dropped.inc();
            }
        }
    }

    /// Tells every connection the node is shutting down.
    pub fn going_away(&self) {
        for out in self.conns.read().values() {
            out.going_away();
        }
    }

    /// Number of registered connections.
    pub fn connections(&self) -> usize {
        self.conns.read().len()
    }
}

struct HubSink(std::sync::Weak<Hub>);

impl DeliverySink for HubSink {
    fn deliver(&self, delivery: Delivery) {
        if let Some(hub) = self.0.upgrade() {
            hub.dispatch(&delivery);
        }
    }
}

/// Applies backbone subscription changes one command at a time, making the
/// backbone match the hub's current state for each named pattern.
async fn interest_task(
    hub: std::sync::Weak<Hub>,
    broker: Arc<dyn Broker>,
    mut rx: mpsc::Receiver<InterestCmd>,
) {
    let mut active: FxHashSet<Pattern> = FxHashSet::default();
    while let Some(cmd) = rx.recv().await {
        let Some(hub) = hub.upgrade() else { break };
        let mut add = Vec::new();
        let mut remove = Vec::new();
        for p in cmd.patterns {
            let want = hub.has_local(&p);
            let have = active.contains(&p);
            if want && !have {
                add.push(p);
            } else if !want && have {
                remove.push(p);
            }
        }
        drop(hub);
        let mut result = Ok(());
        if !remove.is_empty() {
            if let Err(e) = broker.unsubscribe(&remove).await {
                tracing::warn!(error = %e, "backbone unsubscribe failed");
            }
            for p in &remove {
                active.remove(p);
            }
        }
        if !add.is_empty() {
            match broker.subscribe(&add).await {
                Ok(()) => active.extend(add),
                Err(e) => {
                    tracing::warn!(error = %e, "backbone subscribe failed");
                    result = Err(e);
                }
            }
        }
        if let Some(done) = cmd.done {
            let _ = done.send(result);
        }
    }
}
