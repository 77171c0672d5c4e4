//! The Redis pub/sub backbone: any number of nodes on one Redis behave as one
//! gateway.
//!
//! * **Channels.** Topic `t` is the channel `<channel_prefix>.t`. Broadcasts
//!   travel on `broadcast_channel`, which must lie outside the prefix, so no
//!   topic can collide with it.
//! * **Connections.** A node holds one pub/sub connection carrying every
//!   subscription (`SUBSCRIBE` per exact topic, `PSUBSCRIBE` per wildcard
//!   glob) and one multiplexed connection for `PUBLISH`.
//! * **Wildcards.** Redis globs are not token-aware: `*` matches any
//!   characters, dots included. Pattern `a.*` and pattern `a.>` both become
//!   the glob `<prefix>.a.*` (literal tokens are escaped: `?`, `[`, `]`, `\`
//!   are ordinary topic characters), so a glob can deliver channels its
//!   wsgate patterns do not match (`a.b.c` for `a.*`). Every message that
//!   arrives through a glob is therefore re-checked with the wsgate matcher
//!   before delivery and dropped when none of the glob's patterns matches
//!   ([`RedisStats::glob_mismatches`]). Several wsgate patterns sharing one
//!   glob share one `PSUBSCRIBE`; the glob is `PUNSUBSCRIBE`d when its last
//!   pattern goes.
//! * **"Subscribed" means live.** `subscribe` resolves once Redis answered
//!   each `SUBSCRIBE` / `PSUBSCRIBE` with its confirmation. Redis answers a
//!   connection's commands in order and starts delivering a channel the
//!   moment it confirms it.
//! * **Overlapping patterns.** Redis delivers a message once per matching
//!   subscription (channel and each glob), so a node holding `a.b` and `a.*`
//!   receives a message on `a.b` twice. As with NATS, each wsgate pattern gets
//!   an increasing id, and a copy is delivered only if it came through the
//!   subscription serving the *oldest* pattern matching the topic. Adding a
//!   pattern never changes which one is oldest for topics already covered, so
//!   no message is lost or doubled when a pattern is added, and one
//!   publisher's messages on one topic keep arriving through one
//!   subscription, in order.
//! * **Payloads.** As with NATS: JSON passes through, other UTF-8 becomes a
//!   JSON string, non-UTF-8 is dropped ([`RedisStats::dropped_not_utf8`]).
//! * **Reconnects.** One supervisor task connects both connections,
//!   subscribes the broadcast channel and every channel and glob in use, and
//!   only then marks the node ready. When the pub/sub connection ends (Redis
//!   restart, network), a ping goes unanswered, or a publish finds the
//!   connection dropped, the node is not ready, publishes and subscribes fail
//!   at once with [`BrokerError::Unavailable`], and the supervisor reconnects
//!   with capped exponential backoff and jitter. Attempts never stop; a node
//!   started while Redis is down retries in the background.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use ::redis::aio::{MultiplexedConnection, PubSubSink, PubSubStream};
use ::redis::{AsyncConnectionConfig, Client, Msg, RedisError};
use bytes::Bytes;
use futures_util::future::{FutureExt, try_join_all};
use futures_util::stream::StreamExt;
use rustc_hash::FxHashMap;
use serde::{Deserialize, Serialize};
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

use super::nats::reconnect_delay;
use super::{
    BoxFuture, Broker, BrokerError, Delivery, DeliverySink, ForeignPayload, Publication,
    PublishAck, Target, foreign_payload,
};
use crate::topic::{Pattern, Topic};
use crate::trie::WildcardTrie;

/// `[broker] kind = "redis"`: the options of the Redis pub/sub backbone.
/// Every field has a default; see `docs/configuration.md`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct RedisConfig {
    /// `redis://[user:password@]host:port[/db]`. (The db number does not
    /// matter for pub/sub: channels are global to the server.)
    pub url: String,
    /// Topic `t` is the Redis channel `<channel_prefix>.t`.
    pub channel_prefix: String,
    /// Channel for broadcasts (to every connection on every node). Must not
    /// be under `channel_prefix`.
    pub broadcast_channel: String,
    /// Time allowed for one TCP connect + handshake, and for subscribing
    /// everything again after a reconnect.
    #[serde(with = "humantime_serde")]
    pub connect_timeout: Duration,
    /// First delay between reconnect attempts; doubles on each failed
    /// attempt up to `reconnect_delay_max` (the first attempt after a
    /// disconnection is immediate).
    #[serde(with = "humantime_serde")]
    pub reconnect_delay_min: Duration,
    /// Longest delay between reconnect attempts. Attempts never stop.
    #[serde(with = "humantime_serde")]
    pub reconnect_delay_max: Duration,
    /// How often the pub/sub connection is pinged; no answer within the same
    /// time replaces the connection (and makes the node not ready meanwhile).
    #[serde(with = "humantime_serde")]
    pub ping_interval: Duration,
    /// How long `subscribe` waits for Redis to confirm before the client
    /// gets `-32004`.
    #[serde(with = "humantime_serde")]
    pub subscribe_timeout: Duration,
    /// How long a publish waits for Redis' answer before failing with
    /// `-32004` / HTTP 503.
    #[serde(with = "humantime_serde")]
    pub publish_timeout: Duration,
}

impl Default for RedisConfig {
    fn default() -> Self {
        RedisConfig {
            url: "redis://127.0.0.1:6379".into(),
            channel_prefix: "wsgate".into(),
            broadcast_channel: "wsgate-broadcast".into(),
            connect_timeout: Duration::from_secs(5),
            reconnect_delay_min: Duration::from_millis(100),
            reconnect_delay_max: Duration::from_secs(2),
            ping_interval: Duration::from_secs(10),
            subscribe_timeout: Duration::from_secs(5),
            publish_timeout: Duration::from_secs(1),
        }
    }
}

/// Counters of the Redis backbone on this node (since start).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RedisStats {
    /// Messages received from Redis (before deduplication and re-checks).
    pub received: u64,
    /// Messages handed to the hub.
    pub delivered: u64,
    /// Copies of a message skipped because another (older) overlapping
    /// subscription of this node delivered it.
    pub duplicates_skipped: u64,
    /// Messages a glob delivered that none of its wsgate patterns matches
    /// (Redis `*` also matches dots), dropped.
    pub glob_mismatches: u64,
    /// Non-JSON UTF-8 payloads delivered as a JSON string.
    pub wrapped_as_string: u64,
    /// Payloads dropped because they were not UTF-8.
    pub dropped_not_utf8: u64,
    /// Messages dropped because the channel is not a valid topic.
    pub dropped_bad_channel: u64,
    /// Successful connections (the first and every reconnect).
    pub connects: u64,
}

#[derive(Default)]
struct Stats {
    received: AtomicU64,
    delivered: AtomicU64,
    duplicates_skipped: AtomicU64,
    glob_mismatches: AtomicU64,
    wrapped_as_string: AtomicU64,
    dropped_not_utf8: AtomicU64,
    dropped_bad_channel: AtomicU64,
    connects: AtomicU64,
}

/// Bumps a counter; true when the new value is a power of two (1, 2, 4, ...),
/// so that repeated warnings are logged sparsely.
fn bump(c: &AtomicU64) -> bool {
    (c.fetch_add(1, Ordering::Relaxed) + 1).is_power_of_two()
}

/// Messages handled per wake-up before the supervisor looks at its other
/// events again.
const BATCH: usize = 128;

/// The node's patterns in use and what they are subscribed as.
#[derive(Default)]
struct Interest {
    next_id: u64,
    /// Every pattern in use and its id (increasing in the order added).
    ids: FxHashMap<Pattern, u64>,
    /// Exact topics (one `SUBSCRIBE` each) and their ids.
    exact: FxHashMap<Topic, u64>,
    /// Wildcard patterns, with the glob they are subscribed through.
    wild: WildcardTrie<Arc<str>>,
    /// Globs (one `PSUBSCRIBE` each) and how many patterns use them.
    globs: FxHashMap<Arc<str>, usize>,
}

/// Redis commands to send for a change of interest.
#[derive(Default)]
struct Commands {
    subscribe: Vec<String>,
    psubscribe: Vec<Arc<str>>,
}

impl Interest {
    /// Adds the patterns not yet present; returns those added and the
    /// channels and globs that need a (P)SUBSCRIBE.
    fn add(&mut self, prefix: &str, patterns: &[Pattern]) -> (Vec<Pattern>, Commands) {
        let mut added = Vec::new();
        let mut cmds = Commands::default();
        for p in patterns {
            if self.ids.contains_key(p) {
                continue;
            }
            let id = self.next_id;
            self.next_id += 1;
            self.ids.insert(p.clone(), id);
            match p.as_topic() {
                Some(t) => {
                    cmds.subscribe.push(format!("{prefix}{}", t.as_str()));
                    self.exact.insert(t, id);
                }
                None => {
                    let glob: Arc<str> = glob_for(prefix, p).into();
                    let uses = self.globs.entry(glob.clone()).or_insert(0);
                    *uses += 1;
                    if *uses == 1 {
                        cmds.psubscribe.push(glob.clone());
                    }
                    self.wild.insert(p, id, glob);
                }
            }
            added.push(p.clone());
        }
        (added, cmds)
    }

    /// Removes the patterns present; returns the channels and globs no
    /// pattern uses any more.
    fn remove(&mut self, prefix: &str, patterns: &[Pattern]) -> Commands {
        let mut cmds = Commands::default();
        for p in patterns {
            let Some(id) = self.ids.remove(p) else {
                continue;
            };
            match p.as_topic() {
                Some(t) => {
                    self.exact.remove(t.as_str());
                    cmds.subscribe.push(format!("{prefix}{}", t.as_str()));
                }
                None => {
                    self.wild.remove(p, id);
                    let glob: Arc<str> = glob_for(prefix, p).into();
                    if let Some(uses) = self.globs.get_mut(&glob) {
                        *uses -= 1;
                        if *uses == 0 {
                            self.globs.remove(&glob);
                            cmds.psubscribe.push(glob);
                        }
                    }
                }
            }
        }
        cmds
    }

    /// Everything to subscribe on a fresh connection.
    fn all(&self, prefix: &str) -> Commands {
        Commands {
            subscribe: self
                .exact
                .keys()
                .map(|t| format!("{prefix}{}", t.as_str()))
                .collect(),
            psubscribe: self.globs.keys().cloned().collect(),
        }
    }

    /// For a message on `topic` that came through the exact subscription
    /// (`glob` = None) or through `glob`: `Ok(())` to deliver it, or why not.
    fn check(&self, topic: &Topic, glob: Option<&str>) -> Result<(), Skip> {
        let exact = self.exact.get(topic.as_str()).copied();
        if self.wild.is_empty() {
            return match (glob, exact) {
                (None, Some(_)) => Ok(()),
                (None, None) => Err(Skip::Stale),
                (Some(_), _) => Err(Skip::Stale),
            };
        }
        // The oldest pattern matching the topic, and the oldest one served
        // by the subscription this copy came through.
        let mut oldest = exact.unwrap_or(u64::MAX);
        let mut mine = match glob {
            None => exact.unwrap_or(u64::MAX),
            Some(_) => u64::MAX,
        };
        self.wild.for_each_match(topic, |id, g| {
            oldest = oldest.min(id);
            if glob == Some(&**g) {
                mine = mine.min(id);
            }
        });
        if mine == u64::MAX {
            Err(match glob {
                Some(g) if self.globs.contains_key(g) => Skip::GlobMismatch,
                _ => Skip::Stale,
            })
        } else if mine == oldest {
            Ok(())
        } else {
            Err(Skip::Duplicate)
        }
    }
}

enum Skip {
    /// Another subscription of this node delivers it.
    Duplicate,
    /// The glob matched the channel but none of its wsgate patterns matches.
    GlobMismatch,
    /// The subscription is being removed (or was not registered).
    Stale,
}

/// The Redis glob for a wildcard pattern: literal tokens escaped, `*` and `>`
/// both `*` (which also matches dots: deliveries are re-checked).
fn glob_for(prefix: &str, p: &Pattern) -> String {
    let mut g = String::with_capacity(prefix.len() + p.as_str().len() + 4);
    escape_glob(&mut g, prefix);
    for (i, token) in p.tokens().enumerate() {
        if i > 0 {
            g.push('.');
        }
        match token {
            "*" | ">" => g.push('*'),
            lit => escape_glob(&mut g, lit),
        }
    }
    g
}

fn escape_glob(out: &mut String, s: &str) {
    for c in s.chars() {
        if matches!(c, '*' | '?' | '[' | ']' | '\\') {
            out.push('\\');
        }
        out.push(c);
    }
}

/// The connections of the current session with Redis.
#[derive(Clone)]
struct Live {
    sink: PubSubSink,
    publisher: MultiplexedConnection,
}

struct Shared {
    /// `<channel_prefix>.`
    prefix: String,
    broadcast_channel: String,
    config: RedisConfig,
    client: Client,
    sink: std::sync::OnceLock<Arc<dyn DeliverySink>>,
    interest: parking_lot::Mutex<Interest>,
    /// Orders (un)subscribes and the resubscription after a reconnect.
    subscribe_lock: tokio::sync::Mutex<()>,
    /// Set while connected and every subscription is confirmed.
    live: parking_lot::RwLock<Option<Live>>,
    /// Asks the supervisor to replace the connections (a publish found the
    /// connection dropped).
    recycle: Notify,
    closed: AtomicBool,
    stop: CancellationToken,
    stats: Stats,
}

/// The Redis pub/sub backbone (see the module documentation).
pub struct RedisBroker {
    shared: Arc<Shared>,
}

impl RedisBroker {
    /// Validates the configuration and starts connecting in the background;
    /// never waits for the server. Must be called inside a Tokio runtime.
    pub fn new(config: &RedisConfig) -> Result<RedisBroker, BrokerError> {
        let client = Client::open(config.url.as_str())
            .map_err(|e| BrokerError::Config(format!("broker.url {:?}: {e}", config.url)))?;
        let prefix = check_name("broker.channel_prefix", &config.channel_prefix)?;
        let broadcast = check_name("broker.broadcast_channel", &config.broadcast_channel)?;
        if broadcast == prefix || broadcast.starts_with(&format!("{prefix}.")) {
            return Err(BrokerError::Config(format!(
                "broker.broadcast_channel {broadcast:?} must not be under broker.channel_prefix {prefix:?}"
            )));
        }
        for (key, d) in [
            ("connect_timeout", config.connect_timeout),
            ("reconnect_delay_max", config.reconnect_delay_max),
            ("ping_interval", config.ping_interval),
            ("subscribe_timeout", config.subscribe_timeout),
            ("publish_timeout", config.publish_timeout),
        ] {
            if d.is_zero() {
                return Err(BrokerError::Config(format!(
                    "broker.{key} must be positive"
                )));
            }
        }
        let shared = Arc::new(Shared {
            prefix: format!("{prefix}."),
            broadcast_channel: broadcast,
            config: config.clone(),
            client,
            sink: std::sync::OnceLock::new(),
            interest: parking_lot::Mutex::default(),
            subscribe_lock: tokio::sync::Mutex::new(()),
            live: parking_lot::RwLock::new(None),
            recycle: Notify::new(),
            closed: AtomicBool::new(false),
            stop: CancellationToken::new(),
            stats: Stats::default(),
        });
        tokio::spawn(supervise(shared.clone()));
        Ok(RedisBroker { shared })
    }

    /// Counters since start.
    pub fn stats(&self) -> RedisStats {
        let s = &self.shared.stats;
        let get = |c: &AtomicU64| c.load(Ordering::Relaxed);
        RedisStats {
            received: get(&s.received),
            delivered: get(&s.delivered),
            duplicates_skipped: get(&s.duplicates_skipped),
            glob_mismatches: get(&s.glob_mismatches),
            wrapped_as_string: get(&s.wrapped_as_string),
            dropped_not_utf8: get(&s.dropped_not_utf8),
            dropped_bad_channel: get(&s.dropped_bad_channel),
            connects: get(&s.connects),
        }
    }

    /// The Redis channel a topic is published on.
    pub fn channel_for(&self, topic: &str) -> String {
        format!("{}{topic}", self.shared.prefix)
    }
}

impl Drop for RedisBroker {
    fn drop(&mut self) {
        self.shared.stop.cancel();
    }
}

/// A name without wildcards or whitespace (the topic grammar).
fn check_name(key: &str, s: &str) -> Result<String, BrokerError> {
    Topic::parse(s, 1024)
        .map(|t| t.as_str().to_string())
        .map_err(|e| BrokerError::Config(format!("{key} {s:?}: {e}")))
}

fn unavailable(what: &str, e: RedisError) -> BrokerError {
    BrokerError::Unavailable(format!("Redis {what}: {e}"))
}

/// Sends one command per channel / glob, pipelined on the pub/sub
/// connection (one command per name: the client library matches each reply
/// to one waiting command, and a multi-channel `SUBSCRIBE` has one reply per
/// channel). Resolves when Redis confirmed all of them.
async fn send_commands(sink: &PubSubSink, cmds: &Commands, on: bool) -> Result<(), RedisError> {
    let subs = cmds.subscribe.iter().map(|c| {
        let mut s = sink.clone();
        async move {
            if on {
                s.subscribe(c.as_str()).await
            } else {
                s.unsubscribe(c.as_str()).await
            }
        }
        .boxed()
    });
    let psubs = cmds.psubscribe.iter().map(|g| {
        let mut s = sink.clone();
        async move {
            if on {
                s.psubscribe(&**g).await
            } else {
                s.punsubscribe(&**g).await
            }
        }
        .boxed()
    });
    try_join_all(subs.chain(psubs)).await.map(|_| ())
}

impl Shared {
    fn live(&self) -> Result<Live, BrokerError> {
        if self.closed.load(Ordering::Acquire) {
            return Err(BrokerError::Closed);
        }
        self.live
            .read()
            .clone()
            .ok_or_else(|| BrokerError::Unavailable("Redis is not connected".into()))
    }

    async fn subscribe(&self, patterns: &[Pattern]) -> Result<(), BrokerError> {
        self.live()?;
        let limit = self.config.subscribe_timeout;
        let timed_out = || {
            BrokerError::Unavailable(format!(
                "Redis did not confirm the subscription within {limit:?}"
            ))
        };
        let _order = tokio::time::timeout(limit, self.subscribe_lock.lock())
            .await
            .map_err(|_| timed_out())?;
        // Read again under the lock: a reconnect may have happened meanwhile.
        let live = self.live()?;
        // Registered before the commands go out, so the first message of a
        // new subscription already finds its pattern.
        let (added, cmds) = self.interest.lock().add(&self.prefix, patterns);
        let result = match tokio::time::timeout(limit, send_commands(&live.sink, &cmds, true)).await
        {
            Ok(Ok(())) => return Ok(()),
            Ok(Err(e)) => unavailable("subscribe", e),
            Err(_) => timed_out(),
        };
        let undo = self.interest.lock().remove(&self.prefix, &added);
        // Best effort: the connection is probably gone, with its subscriptions.
        let _ = tokio::time::timeout(limit, send_commands(&live.sink, &undo, false)).await;
        Err(result)
    }

    async fn unsubscribe(&self, patterns: &[Pattern]) -> Result<(), BrokerError> {
        let _order = self.subscribe_lock.lock().await;
        let cmds = self.interest.lock().remove(&self.prefix, patterns);
        if let Ok(live) = self.live() {
            // A lost connection loses its subscriptions anyway.
            let _ = tokio::time::timeout(
                self.config.subscribe_timeout,
                send_commands(&live.sink, &cmds, false),
            )
            .await;
        }
        Ok(())
    }

    async fn publish(&self, p: Publication) -> Result<PublishAck, BrokerError> {
        let mut conn = self.live()?.publisher;
        let channel = match &p.target {
            Target::Topic(t) => {
                let mut s = String::with_capacity(self.prefix.len() + t.as_str().len());
                s.push_str(&self.prefix);
                s.push_str(t.as_str());
                s
            }
            Target::Broadcast => self.broadcast_channel.clone(),
        };
        let limit = self.config.publish_timeout;
        let mut cmd = ::redis::cmd("PUBLISH");
        cmd.arg(channel).arg(&p.data[..]);
        match tokio::time::timeout(limit, cmd.query_async::<i64>(&mut conn)).await {
            Ok(Ok(_receivers)) => Ok(PublishAck::default()),
            Ok(Err(e)) => {
                let dropped =
                    e.is_connection_dropped() || e.is_unrecoverable_error() || e.is_io_error();
                // Only while a session is up (a stored permit would end the
                // next, fresh session).
                if dropped && self.live.read().is_some() {
                    self.recycle.notify_one();
                }
                Err(unavailable("publish", e))
            }
            Err(_) => Err(BrokerError::Unavailable(format!(
                "Redis did not answer a publish within {limit:?}"
            ))),
        }
    }

    /// One connection attempt: both connections, the broadcast channel and
    /// every subscription in use, confirmed. Holds the subscribe lock while
    /// resubscribing so that no (un)subscribe interleaves.
    async fn connect(&self) -> Result<(Live, PubSubStream), BrokerError> {
        let limit = self.config.connect_timeout;
        let timeout = |what: &str| {
            BrokerError::Unavailable(format!("Redis {what}: no answer within {limit:?}"))
        };
        let pubsub = tokio::time::timeout(limit, self.client.get_async_pubsub())
            .await
            .map_err(|_| timeout("connect"))?
            .map_err(|e| unavailable("connect", e))?;
        let publisher = self
            .client
            .get_multiplexed_async_connection_with_config(
                &AsyncConnectionConfig::new()
                    .set_connection_timeout(Some(limit))
                    .set_response_timeout(Some(self.config.publish_timeout)),
            )
            .await
            .map_err(|e| unavailable("connect", e))?;
        let (mut sink, stream) = pubsub.split();
        let _order = self.subscribe_lock.lock().await;
        let cmds = self.interest.lock().all(&self.prefix);
        tokio::time::timeout(limit, async {
            sink.subscribe(self.broadcast_channel.as_str()).await?;
            send_commands(&sink, &cmds, true).await
        })
        .await
        .map_err(|_| timeout("resubscribe"))?
        .map_err(|e| unavailable("subscribe", e))?;
        let live = Live { sink, publisher };
        *self.live.write() = Some(live.clone());
        Ok((live, stream))
    }

    fn handle(&self, msg: Msg) {
        let stats = &self.stats;
        stats.received.fetch_add(1, Ordering::Relaxed);
        let channel = msg.get_channel_name();
        let glob: Option<String> = msg.get_pattern().unwrap_or(None);
        let target = if glob.is_none() && channel == self.broadcast_channel {
            Target::Broadcast
        } else {
            let topic = channel
                .strip_prefix(self.prefix.as_str())
                .and_then(|t| Topic::parse(t, usize::MAX).ok());
            let Some(topic) = topic else {
                if bump(&stats.dropped_bad_channel) {
                    tracing::warn!(
                        channel,
                        "dropping a Redis message whose channel is not a valid topic"
                    );
                }
                return;
            };
            match self.interest.lock().check(&topic, glob.as_deref()) {
                Ok(()) => {}
                Err(Skip::Duplicate) => {
                    stats.duplicates_skipped.fetch_add(1, Ordering::Relaxed);
                    return;
                }
                Err(Skip::GlobMismatch) => {
                    stats.glob_mismatches.fetch_add(1, Ordering::Relaxed);
                    return;
                }
                Err(Skip::Stale) => return,
            }
            Target::Topic(topic)
        };
        let payload = Bytes::copy_from_slice(msg.get_payload_bytes());
        let data = match foreign_payload(payload) {
            ForeignPayload::Json(d) => d,
            ForeignPayload::Wrapped(d) => {
                stats.wrapped_as_string.fetch_add(1, Ordering::Relaxed);
                d
            }
            ForeignPayload::NotUtf8 => {
                if bump(&stats.dropped_not_utf8) {
                    tracing::warn!(
                        channel,
                        count = stats.dropped_not_utf8.load(Ordering::Relaxed),
                        "dropping a Redis message whose payload is neither JSON nor UTF-8"
                    );
                }
                return;
            }
        };
        if let Some(sink) = self.sink.get() {
            stats.delivered.fetch_add(1, Ordering::Relaxed);
            sink.deliver(Delivery {
                target,
                data,
                position: None,
            });
        }
    }
}

/// Why a connected session ended.
enum End {
    Stop,
    Lost(String),
}

/// Connects, reads, and reconnects with backoff until the broker stops.
async fn supervise(shared: Arc<Shared>) {
    let (min, max) = (
        shared.config.reconnect_delay_min,
        shared.config.reconnect_delay_max,
    );
    let mut attempt: usize = 0;
    loop {
        attempt += 1;
        let delay = reconnect_delay(attempt, min, max);
        if !delay.is_zero() {
            tokio::select! {
                _ = shared.stop.cancelled() => return,
                _ = tokio::time::sleep(delay) => {}
            }
        }
        let connected = tokio::select! {
            _ = shared.stop.cancelled() => return,
            c = shared.connect() => c,
        };
        let (live, stream) = match connected {
            Ok(c) => c,
            Err(e) => {
                if attempt.is_power_of_two() {
                    tracing::warn!(error = %e, attempts = attempt, "Redis connection attempt failed; retrying");
                }
                continue;
            }
        };
        attempt = 0;
        let connects = shared.stats.connects.fetch_add(1, Ordering::Relaxed) + 1;
        tracing::info!(connects, "Redis connected; subscriptions confirmed");
        let end = read(&shared, live, stream).await;
        *shared.live.write() = None;
        match end {
            End::Stop => return,
            End::Lost(why) => {
                tracing::warn!(reason = %why, "Redis connection lost; reconnecting (node not ready)");
            }
        }
    }
}

/// Reads the pub/sub connection until it ends, a ping fails, a publish
/// reports the connection dropped, or the broker stops.
async fn read(shared: &Shared, live: Live, mut stream: PubSubStream) -> End {
    let interval = shared.config.ping_interval;
    let mut ping = tokio::time::interval_at(tokio::time::Instant::now() + interval, interval);
    ping.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut sink = live.sink;
    loop {
        tokio::select! {
            biased;
            _ = shared.stop.cancelled() => return End::Stop,
            _ = shared.recycle.notified() => return End::Lost("publish connection dropped".into()),
            m = stream.next() => match m {
                Some(m) => {
                    shared.handle(m);
                    for _ in 0..BATCH {
                        match stream.next().now_or_never() {
                            Some(Some(m)) => shared.handle(m),
                            Some(None) => return End::Lost("connection closed".into()),
                            None => break,
                        }
                    }
                }
                None => return End::Lost("connection closed".into()),
            },
            _ = ping.tick() => {
                match tokio::time::timeout(interval, sink.ping::<::redis::Value>()).await {
                    Ok(Ok(_)) => {}
                    Ok(Err(e)) => return End::Lost(format!("ping: {e}")),
                    Err(_) => return End::Lost(format!("no answer to a ping within {interval:?}")),
                }
            }
        }
    }
}

impl Broker for RedisBroker {
    fn name(&self) -> &'static str {
        "redis"
    }

    fn attach(&self, sink: Arc<dyn DeliverySink>) {
        let _ = self.shared.sink.set(sink);
    }

    fn publish(&self, publication: Publication) -> BoxFuture<'_, Result<PublishAck, BrokerError>> {
        Box::pin(self.shared.publish(publication))
    }

    fn subscribe<'a>(&'a self, patterns: &'a [Pattern]) -> BoxFuture<'a, Result<(), BrokerError>> {
        Box::pin(self.shared.subscribe(patterns))
    }

    fn unsubscribe<'a>(
        &'a self,
        patterns: &'a [Pattern],
    ) -> BoxFuture<'a, Result<(), BrokerError>> {
        Box::pin(self.shared.unsubscribe(patterns))
    }

    fn is_ready(&self) -> bool {
        !self.shared.closed.load(Ordering::Acquire) && self.shared.live.read().is_some()
    }

    fn close(&self) -> BoxFuture<'_, ()> {
        Box::pin(async move {
            let s = &self.shared;
            if s.closed.swap(true, Ordering::AcqRel) {
                return;
            }
            s.stop.cancel();
            // Dropping the connections closes them (the supervisor drops
            // the stream as it stops).
            *s.live.write() = None;
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pat(s: &str) -> Pattern {
        Pattern::parse(s, 256).unwrap_or_else(|e| panic!("{e}"))
    }

    fn topic(s: &str) -> Topic {
        Topic::parse(s, 256).unwrap_or_else(|e| panic!("{e}"))
    }

    #[test]
    fn globs_escape_literals_and_map_both_wildcards_to_star() {
        assert_eq!(glob_for("wsgate.", &pat("a.*")), "wsgate.a.*");
        assert_eq!(glob_for("wsgate.", &pat("a.>")), "wsgate.a.*");
        assert_eq!(glob_for("wsgate.", &pat(">")), "wsgate.*");
        assert_eq!(glob_for("wsgate.", &pat("a.*.c")), "wsgate.a.*.c");
        assert_eq!(glob_for("w?.", &pat(r"a[1]\.*")), r"w\?.a\[1\]\\.*");
    }

    #[test]
    fn interest_shares_globs_and_rechecks_matches() {
        let mut i = Interest::default();
        let (added, cmds) = i.add("w.", &[pat("a.*"), pat("a.b")]);
        assert_eq!(added.len(), 2);
        assert_eq!(cmds.subscribe, vec!["w.a.b".to_string()]);
        assert_eq!(cmds.psubscribe, vec![Arc::<str>::from("w.a.*")]);
        // `a.>` shares the glob: no new PSUBSCRIBE.
        let (_, cmds) = i.add("w.", &[pat("a.>")]);
        assert!(cmds.subscribe.is_empty() && cmds.psubscribe.is_empty());
        // a.b: the oldest pattern (a.*) delivers, through the glob.
        assert!(i.check(&topic("a.b"), Some("w.a.*")).is_ok());
        assert!(matches!(i.check(&topic("a.b"), None), Err(Skip::Duplicate)));
        // a.b.c: only a.> matches; the glob copy delivers it.
        assert!(i.check(&topic("a.b.c"), Some("w.a.*")).is_ok());
        // Removing a.> keeps the glob (a.* uses it); a.b.c is now a mismatch.
        let cmds = i.remove("w.", &[pat("a.>")]);
        assert!(cmds.psubscribe.is_empty());
        assert!(matches!(
            i.check(&topic("a.b.c"), Some("w.a.*")),
            Err(Skip::GlobMismatch)
        ));
        let cmds = i.remove("w.", &[pat("a.*")]);
        assert_eq!(cmds.psubscribe, vec![Arc::<str>::from("w.a.*")]);
        assert!(i.check(&topic("a.b"), None).is_ok());
        assert!(matches!(
            i.check(&topic("a.b"), Some("w.a.*")),
            Err(Skip::Stale)
        ));
    }

    #[test]
    fn adding_an_overlapping_pattern_keeps_the_delivering_subscription() {
        let mut i = Interest::default();
        i.add("w.", &[pat("x.t")]);
        i.add("w.", &[pat("x.*"), pat(">")]);
        assert!(i.check(&topic("x.t"), None).is_ok());
        assert!(matches!(
            i.check(&topic("x.t"), Some("w.x.*")),
            Err(Skip::Duplicate)
        ));
        assert!(matches!(
            i.check(&topic("x.t"), Some("w.*")),
            Err(Skip::Duplicate)
        ));
        assert!(i.check(&topic("x.u"), Some("w.x.*")).is_ok());
        assert!(i.check(&topic("y"), Some("w.*")).is_ok());
    }

    #[tokio::test]
    async fn bad_configurations_are_rejected() {
        let bad = [
            RedisConfig {
                url: "http://x".into(),
                ..Default::default()
            },
            RedisConfig {
                channel_prefix: "a.*".into(),
                ..Default::default()
            },
            RedisConfig {
                broadcast_channel: "wsgate.all".into(),
                ..Default::default()
            },
            RedisConfig {
                publish_timeout: Duration::ZERO,
                ..Default::default()
            },
        ];
        for c in bad {
            assert!(
                matches!(RedisBroker::new(&c), Err(BrokerError::Config(_))),
                "{c:?}"
            );
        }
    }

    #[tokio::test]
    async fn starts_without_a_server_and_is_not_ready() {
        let b = RedisBroker::new(&RedisConfig {
            url: "redis://127.0.0.1:9".into(),
            ..Default::default()
        })
        .unwrap_or_else(|e| panic!("{e}"));
        assert!(!b.is_ready());
        let err = b
            .publish(Publication {
                target: Target::Broadcast,
                data: Bytes::from_static(b"1"),
            })
            .await;
        assert!(matches!(err, Err(BrokerError::Unavailable(_))), "{err:?}");
        let err = b.subscribe(std::slice::from_ref(&pat("a.b"))).await;
        assert!(matches!(err, Err(BrokerError::Unavailable(_))), "{err:?}");
        b.close().await;
        assert!(matches!(
            b.publish(Publication {
                target: Target::Broadcast,
                data: Bytes::new(),
            })
            .await,
            Err(BrokerError::Closed)
        ));
    }
}
