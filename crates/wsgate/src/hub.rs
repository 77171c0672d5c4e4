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
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
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

/// Live deliveries held back for a connection while it replays a topic's
/// history: (offset, encoded frame).
type Held = Vec<(Option<u64>, Bytes)>;

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
    /// Connections replaying a topic (`subscribe` with `since`): their live
    /// deliveries of that topic are held here until the replay is queued.
    replaying: parking_lot::Mutex<FxHashMap<(ConnId, Topic), Held>>,
    /// Entries in `replaying`, so that fan-out skips its lock when zero.
    replaying_count: AtomicUsize,
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
            replaying: parking_lot::Mutex::default(),
            replaying_count: AtomicUsize::new(0),
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
        if self.replaying_count.load(Ordering::Acquire) > 0 {
            // A session torn down in the middle of a replay.
            let mut r = self.replaying.lock();
            let before = r.len();
            r.retain(|(conn, _), _| *conn != id);
            self.replaying_count
                .fetch_sub(before - r.len(), Ordering::AcqRel);
        }
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
                let position = delivery.position.as_ref();
                let payload = protocol::encode_message_at(
                    topic.as_str(),
                    data,
                    position.map(|p| (p.offset, &*p.epoch)),
                );
                self.fan_out(topic, &payload, position.map(|p| p.offset));
            }
        }
    }

    /// Starts holding back `topic`'s live deliveries to connection `id`
    /// (before it subscribes, for a replay); [`Hub::end_replay`] releases them.
    pub(crate) fn begin_replay(&self, id: ConnId, topic: &Topic) {
        let mut r = self.replaying.lock();
        if r.insert((id, topic.clone()), Vec::new()).is_none() {
            self.replaying_count.fetch_add(1, Ordering::AcqRel);
        }
    }

    /// Queues the held deliveries whose offset is after `replayed` (the last
    /// replayed offset; every held one when `None`), in order, and delivers
    /// live again. Runs under the lock fan-out takes, so nothing interleaves.
    pub(crate) fn end_replay(
        &self,
        id: ConnId,
        topic: &Topic,
        out: &Outbound,
        replayed: Option<u64>,
    ) {
        let mut r = self.replaying.lock();
        let Some(held) = r.remove(&(id, topic.clone())) else {
            return;
        };
        let at = Instant::now();
        for (offset, payload) in held {
            if let (Some(o), Some(last)) = (offset, replayed) {
                if o <= last {
                    continue;
                }
            }
            self.push(out, &payload, at);
        }
        // After the pushes: a fan-out that sees the count drop to zero
        // delivers after them.
        self.replaying_count.fetch_sub(1, Ordering::AcqRel);
    }

    /// [`Hub::fan_out`] while some connection replays: deliveries to
    /// replaying connections are held.
    fn fan_out_holding(&self, topic: &Topic, payload: &Bytes, offset: Option<u64>) {
        let at = Instant::now();
        let mut held = self.replaying.lock();
        let wild = self.wild.read();
        let shard = self.shard(topic.as_str()).read();
        let mut seen: FxHashSet<ConnId> = FxHashSet::default();
        let mut deliver = |id: ConnId, out: &Arc<Outbound>| {
            if !seen.insert(id) {
                return;
            }
            // Key lookups clone an Arc only while some replay runs.
            match held.get_mut(&(id, topic.clone())) {
                Some(h) => h.push((offset, payload.clone())),
                None => self.push(out, payload, at),
            }
        };
        if let Some(subs) = shard.get(topic.as_str()) {
            for (id, out) in subs {
                deliver(*id, out);
            }
        }
        wild.for_each_match(topic, |id, out| deliver(id, out));
    }

    fn fan_out(&self, topic: &Topic, payload: &Bytes, offset: Option<u64>) {
        let at = Instant::now();
        let wild = self.wild.read();
        let shard = self.shard(topic.as_str()).read();
        // Read under the shard lock: a connection that began a replay before
        // subscribing is then seen replaying.
        if self.replaying_count.load(Ordering::Acquire) > 0 {
            drop(shard);
            drop(wild);
            return self.fan_out_holding(topic, payload, offset);
        }
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

#[cfg(test)]
mod tests {
    use std::collections::VecDeque;

    use super::*;
    use crate::broker::{MemoryBroker, StreamPosition};
    use crate::queue::{QueueLimits, SlowConsumerPolicy};

    fn offsets(out: &Outbound) -> Vec<u64> {
        let mut frames = VecDeque::new();
        out.take_all(&mut frames);
        frames
            .iter()
            .map(|f| {
                let v: serde_json::Value = serde_json::from_slice(&f.payload).unwrap_or_default();
                v["params"]["offset"].as_u64().unwrap_or(0)
            })
            .collect()
    }

    #[tokio::test]
    async fn a_replaying_connection_gets_held_deliveries_after_the_replay() {
        let hub = Hub::start(Arc::new(MemoryBroker::new()), Arc::new(Metrics::new()));
        let out = Arc::new(Outbound::new(QueueLimits {
            max_messages: 100,
            max_bytes: 1 << 20,
            policy: SlowConsumerPolicy::Disconnect,
        }));
        let other = Arc::new(Outbound::new(QueueLimits {
            max_messages: 100,
            max_bytes: 1 << 20,
            policy: SlowConsumerPolicy::Disconnect,
        }));
        let topic = Topic::parse("t", 64).unwrap_or_else(|e| panic!("{e}"));
        let pattern = Pattern::parse("t", 64).unwrap_or_else(|e| panic!("{e}"));
        let wild = Pattern::parse("*", 64).unwrap_or_else(|e| panic!("{e}"));
        let id = hub.register(out.clone());
        let id2 = hub.register(other.clone());
        hub.add(id2, &other, std::slice::from_ref(&wild));
        hub.begin_replay(id, &topic);
        hub.add(id, &out, std::slice::from_ref(&pattern));
        let deliver = |offset: u64| {
            hub.dispatch(&Delivery {
                target: Target::Topic(topic.clone()),
                data: Bytes::from_static(b"1"),
                position: Some(StreamPosition {
                    offset,
                    epoch: Arc::from("e"),
                }),
            })
        };
        for o in 3..=6 {
            deliver(o);
        }
        assert_eq!(offsets(&out), Vec::<u64>::new(), "held during the replay");
        assert_eq!(offsets(&other), vec![3, 4, 5, 6], "others are not held");
        // The replay queued up to offset 4: 5 and 6 follow, then live.
        hub.end_replay(id, &topic, &out, Some(4));
        deliver(7);
        assert_eq!(offsets(&out), vec![5, 6, 7]);
        assert_eq!(hub.replaying_count.load(Ordering::Acquire), 0);
    }
}
