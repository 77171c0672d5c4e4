//! The NATS core backbone: any number of nodes on one NATS (cluster) behave
//! as one gateway.
//!
//! * **Subjects.** Topic `t` is the subject `<subject_prefix>.t`; pattern
//!   `a.*` / `a.>` is the NATS wildcard `<subject_prefix>.a.*` /
//!   `<subject_prefix>.a.>` (the grammars are the same). Broadcasts travel on
//!   `broadcast_subject`, which must lie outside the prefix, so no topic can
//!   collide with it.
//! * **Interest.** The hub's interest task calls [`Broker::subscribe`] /
//!   [`Broker::unsubscribe`] once per pattern transition, so a node holds one
//!   NATS subscription per pattern in use. All subscriptions are read by one
//!   driver task through a [`SelectAll`] (a `FuturesUnordered` underneath):
//!   only subscriptions that have a message are polled, so 100k idle topics
//!   cost nothing per message (a `tokio_stream::StreamMap` polls every stream
//!   on each wake-up). Each subscription is wrapped in an [`Abortable`]; an
//!   unsubscribe aborts it, the driver drops the `Subscriber`, and async-nats
//!   sends `UNSUB`.
//! * **"Subscribed" means live.** `subscribe` resolves after a round trip
//!   through the server: the broker publishes a token to its own private
//!   inbox subscription and waits for it to come back. The server handles a
//!   connection's operations in order, so the echo proves it holds every
//!   `SUB` sent before it (a flush only proves the bytes left the socket).
//! * **Overlapping patterns.** NATS delivers a message once per matching
//!   subscription, so a node holding `a.b` and `a.*` receives a message on
//!   `a.b` twice, on two channels. The hub already fans a delivery out to
//!   every local subscriber that matches, so the driver delivers each message
//!   only from its *canonical* subscription: the oldest one that matches the
//!   subject. Adding a pattern never changes which subscription is canonical
//!   for subjects an older one covers, so no message is lost or doubled when a
//!   pattern is added, and one publisher's messages on one topic keep coming
//!   through one channel, in order.
//! * **Payloads.** A payload that is valid JSON is delivered as is. A payload
//!   from a plain NATS service that is UTF-8 but not JSON is delivered as a
//!   JSON string; one that is not UTF-8 is dropped (counted in
//!   [`NatsStats::dropped_not_utf8`], warned in the log).
//! * **Readiness and reconnects.** async-nats reconnects by itself (with the
//!   configured, capped exponential backoff) and re-sends every `SUB`.
//!   [`Broker::is_ready`] is true only while connected *and* after an echo on
//!   the current connection came back, i.e. after the resubscriptions were
//!   processed. A node started while NATS is down retries in the background.
//! * **Publishing while disconnected** fails at once with
//!   [`BrokerError::Unavailable`] instead of queueing: async-nats would hold
//!   commands until it reconnects. While connected, a publish waits at most
//!   `publish_timeout` for room in the client's bounded send buffer.

use std::hash::BuildHasher;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use async_nats::connection::State;
use async_nats::{Client, ConnectOptions, Event, Message, ServerAddr, Subject};
use bytes::Bytes;
use rustc_hash::FxHashMap;
use serde::{Deserialize, Serialize};
use tokio::sync::{mpsc, oneshot};
use tokio_util::sync::CancellationToken;

use super::index::SubscriptionIndex;
use super::subscriptions::{Control, Handler, Subscriptions};
use super::{
    BoxFuture, Broker, BrokerError, Delivery, DeliverySink, Publication, PublishAck, Target,
};
use crate::topic::{Pattern, Topic};

/// `[broker] kind = "nats"`: the options of the NATS core backbone. Every
/// field has a default; see `docs/configuration.md`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct NatsConfig {
    /// Server URL, or several separated by commas
    /// (`nats://10.0.0.1:4222,nats://10.0.0.2:4222`). Credentials may be
    /// given in the URL (`nats://user:pass@host:4222`).
    pub url: String,
    /// Topic `t` is the NATS subject `<subject_prefix>.t`.
    pub subject_prefix: String,
    /// Subject for broadcasts (to every connection on every node). Must not
    /// be under `subject_prefix`.
    pub broadcast_subject: String,
    /// Connection name shown by the NATS server (`/connz`).
    pub name: String,
    /// Time allowed for one TCP connect + NATS handshake.
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
    /// How often the client pings the server; two unanswered pings mark the
    /// connection dead (and the node not ready).
    #[serde(with = "humantime_serde")]
    pub ping_interval: Duration,
    /// How long `subscribe` waits for the server to confirm it holds the new
    /// subscriptions before the client gets `-32004`.
    #[serde(with = "humantime_serde")]
    pub subscribe_timeout: Duration,
    /// How long a publish waits for room in the client's send buffer before
    /// failing with `-32004` / HTTP 503.
    #[serde(with = "humantime_serde")]
    pub publish_timeout: Duration,
    /// Commands (publishes, subscribes) the client buffers for its
    /// connection task.
    pub send_buffer: usize,
    /// Messages buffered per NATS subscription for the node's driver task;
    /// beyond it NATS messages are dropped (a slow consumer).
    pub subscription_buffer: usize,
    /// User name (with `password`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub user: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub password: Option<String>,
    /// Authentication token.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub token: Option<String>,
    /// File holding an NKey seed (`SU...`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub nkey_seed_file: Option<PathBuf>,
    /// A `.creds` file (user JWT and NKey seed).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub credentials_file: Option<PathBuf>,
}

impl Default for NatsConfig {
    fn default() -> Self {
        NatsConfig {
            url: "nats://127.0.0.1:4222".into(),
            subject_prefix: "wsgate".into(),
            broadcast_subject: "wsgate-broadcast".into(),
            name: "wsgate".into(),
            connect_timeout: Duration::from_secs(5),
            reconnect_delay_min: Duration::from_millis(100),
            reconnect_delay_max: Duration::from_secs(2),
            ping_interval: Duration::from_secs(10),
            subscribe_timeout: Duration::from_secs(5),
            publish_timeout: Duration::from_secs(1),
            send_buffer: 8192,
            subscription_buffer: 65536,
            user: None,
            password: None,
            token: None,
            nkey_seed_file: None,
            credentials_file: None,
        }
    }
}

/// Counters of the NATS backbone on this node (since start).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct NatsStats {
    /// Messages received from NATS (before deduplication).
    pub received: u64,
    /// Messages handed to the hub.
    pub delivered: u64,
    /// Copies of a message skipped because another (older) overlapping
    /// subscription of this node delivered it.
    pub duplicates_skipped: u64,
    /// Non-JSON UTF-8 payloads delivered as a JSON string.
    pub wrapped_as_string: u64,
    /// Payloads dropped because they were not UTF-8.
    pub dropped_not_utf8: u64,
    /// Messages dropped because the subject is not a valid topic.
    pub dropped_bad_subject: u64,
    /// Slow-consumer events: NATS messages async-nats dropped because a
    /// subscription's buffer was full.
    pub slow_consumer_events: u64,
    /// Successful connections (the first and every reconnect).
    pub connects: u64,
}

#[derive(Default)]
struct Stats {
    received: AtomicU64,
    delivered: AtomicU64,
    duplicates_skipped: AtomicU64,
    wrapped_as_string: AtomicU64,
    dropped_not_utf8: AtomicU64,
    dropped_bad_subject: AtomicU64,
    slow_consumer_events: AtomicU64,
}

/// Bumps a counter; true when the new value is a power of two (1, 2, 4, ...),
/// so that repeated warnings are logged sparsely.
fn bump(c: &AtomicU64) -> bool {
    (c.fetch_add(1, Ordering::Relaxed) + 1).is_power_of_two()
}

/// Stream ids: the echo (barrier) inbox, the broadcast subject, then one per
/// pattern subscription, increasing in the order the `SUB`s are sent.
const ECHO_ID: u64 = 0;
const BROADCAST_ID: u64 = 1;
const FIRST_PATTERN_ID: u64 = 2;

struct Shared {
    prefix: String,
    broadcast_subject: Subject,
    subscribe_timeout: Duration,
    publish_timeout: Duration,
    client: OnceLock<Client>,
    echo_subject: OnceLock<Subject>,
    sink: OnceLock<Arc<dyn DeliverySink>>,
    control: mpsc::UnboundedSender<Control>,
    /// Keeps subscription ids in the order their `SUB`s are sent.
    subscribe_lock: tokio::sync::Mutex<()>,
    next_id: AtomicU64,
    echoes: parking_lot::Mutex<FxHashMap<u64, oneshot::Sender<()>>>,
    next_token: AtomicU64,
    /// The connection count (async-nats `connects`) at which the last echo
    /// came back; ready while it equals the current count.
    ready_at_connect: AtomicU64,
    closed: AtomicBool,
    stop: CancellationToken,
    stats: Stats,
}

/// The NATS core backbone (see the module documentation).
pub struct NatsBroker {
    shared: Arc<Shared>,
}

impl NatsBroker {
    /// Validates the configuration, reads credential files and starts
    /// connecting in the background; never waits for the server. Must be
    /// called inside a Tokio runtime.
    pub fn new(config: &NatsConfig) -> Result<NatsBroker, BrokerError> {
        let servers = parse_servers(&config.url)?;
        let prefix = check_subject("broker.subject_prefix", &config.subject_prefix)?;
        let broadcast = check_subject("broker.broadcast_subject", &config.broadcast_subject)?;
        if broadcast == prefix || broadcast.starts_with(&format!("{prefix}.")) {
            return Err(BrokerError::Config(format!(
                "broker.broadcast_subject {broadcast:?} must not be under broker.subject_prefix {prefix:?}"
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
        if config.send_buffer == 0 || config.subscription_buffer == 0 {
            return Err(BrokerError::Config(
                "broker.send_buffer and broker.subscription_buffer must be positive".into(),
            ));
        }
        let options = connect_options(config)?;

        let (control_tx, control_rx) = mpsc::unbounded_channel();
        let (events_tx, events_rx) = mpsc::unbounded_channel();
        let options = options.event_callback(move |event| {
            let tx = events_tx.clone();
            async move {
                let _ = tx.send(event);
            }
        });
        let shared = Arc::new(Shared {
            prefix: format!("{prefix}."),
            broadcast_subject: Subject::from(broadcast),
            subscribe_timeout: config.subscribe_timeout,
            publish_timeout: config.publish_timeout,
            client: OnceLock::new(),
            echo_subject: OnceLock::new(),
            sink: OnceLock::new(),
            control: control_tx,
            subscribe_lock: tokio::sync::Mutex::new(()),
            next_id: AtomicU64::new(FIRST_PATTERN_ID),
            echoes: parking_lot::Mutex::default(),
            next_token: AtomicU64::new(0),
            ready_at_connect: AtomicU64::new(u64::MAX),
            closed: AtomicBool::new(false),
            stop: CancellationToken::new(),
            stats: Stats::default(),
        });
        tokio::spawn(Subscriptions::default().run(
            control_rx,
            shared.stop.clone(),
            Driver {
                shared: shared.clone(),
            },
        ));
        tokio::spawn(start(shared.clone(), options, servers, events_rx));
        Ok(NatsBroker { shared })
    }

    /// Counters since start.
    pub fn stats(&self) -> NatsStats {
        let s = &self.shared.stats;
        let get = |c: &AtomicU64| c.load(Ordering::Relaxed);
        NatsStats {
            received: get(&s.received),
            delivered: get(&s.delivered),
            duplicates_skipped: get(&s.duplicates_skipped),
            wrapped_as_string: get(&s.wrapped_as_string),
            dropped_not_utf8: get(&s.dropped_not_utf8),
            dropped_bad_subject: get(&s.dropped_bad_subject),
            slow_consumer_events: get(&s.slow_consumer_events),
            connects: self
                .shared
                .client
                .get()
                .map_or(0, |c| c.statistics().connects.load(Ordering::Relaxed)),
        }
    }

    /// The NATS subject a topic is published on.
    pub fn subject_for(&self, topic: &str) -> String {
        format!("{}{topic}", self.shared.prefix)
    }
}

impl Drop for NatsBroker {
    fn drop(&mut self) {
        self.shared.stop.cancel();
    }
}

pub(super) fn parse_servers(url: &str) -> Result<Vec<ServerAddr>, BrokerError> {
    let servers: Vec<ServerAddr> = url
        .split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(|s| {
            s.parse::<ServerAddr>()
                .map_err(|e| BrokerError::Config(format!("broker.url {s:?}: {e}")))
        })
        .collect::<Result<_, _>>()?;
    if servers.is_empty() {
        return Err(BrokerError::Config("broker.url is empty".into()));
    }
    Ok(servers)
}

/// A subject without wildcards or whitespace (the topic grammar).
pub(super) fn check_subject(key: &str, s: &str) -> Result<String, BrokerError> {
    Topic::parse(s, 1024)
        .map(|t| t.as_str().to_string())
        .map_err(|e| BrokerError::Config(format!("{key} {s:?}: {e}")))
}

pub(super) fn connect_options(c: &NatsConfig) -> Result<ConnectOptions, BrokerError> {
    let auth_methods = [
        c.user.is_some() || c.password.is_some(),
        c.token.is_some(),
        c.nkey_seed_file.is_some(),
        c.credentials_file.is_some(),
    ];
    if auth_methods.iter().filter(|m| **m).count() > 1 {
        return Err(BrokerError::Config(
            "broker: set at most one of user/password, token, nkey_seed_file, credentials_file"
                .into(),
        ));
    }
    let read = |key: &str, path: &PathBuf| {
        std::fs::read_to_string(path)
            .map_err(|e| BrokerError::Config(format!("broker.{key} {}: {e}", path.display())))
    };
    let mut o = ConnectOptions::new();
    match (&c.user, &c.password) {
        (Some(u), Some(p)) => o = o.user_and_password(u.clone(), p.clone()),
        (None, None) => {}
        _ => {
            return Err(BrokerError::Config(
                "broker.user and broker.password go together".into(),
            ));
        }
    }
    if let Some(t) = &c.token {
        o = o.token(t.clone());
    }
    if let Some(path) = &c.nkey_seed_file {
        let seed = read("nkey_seed_file", path)?;
        o = o.nkey(seed.trim().to_string());
    }
    if let Some(path) = &c.credentials_file {
        let creds = read("credentials_file", path)?;
        o = o
            .credentials(&creds)
            .map_err(|e| BrokerError::Config(format!("broker.credentials_file: {e}")))?;
    }
    let (min, max) = (c.reconnect_delay_min, c.reconnect_delay_max);
    Ok(o.name(&c.name)
        .retry_on_initial_connect()
        .max_reconnects(None)
        .connection_timeout(c.connect_timeout)
        .ping_interval(c.ping_interval)
        .client_capacity(c.send_buffer)
        .subscription_capacity(c.subscription_buffer)
        .reconnect_delay_callback(move |attempt| reconnect_delay(attempt, min, max)))
}

/// Attempt 1 (right after a disconnection) is immediate; then `min`,
/// doubling, capped at `max`, each scaled by a random 75–100% so that many
/// nodes do not reconnect in lockstep.
pub(crate) fn reconnect_delay(attempt: usize, min: Duration, max: Duration) -> Duration {
    if attempt <= 1 {
        return Duration::ZERO;
    }
    let exp = (attempt - 2).min(30) as u32;
    let d = min.saturating_mul(1u32 << exp).min(max);
    let r = std::hash::RandomState::new().hash_one(attempt) % 1024;
    d.mul_f64(0.75 + 0.25 * (r as f64 / 1024.0))
}

/// Creates the client (it connects in the background), the echo and
/// broadcast subscriptions, then follows connection events to keep the
/// readiness flag.
async fn start(
    shared: Arc<Shared>,
    options: ConnectOptions,
    servers: Vec<ServerAddr>,
    mut events: mpsc::UnboundedReceiver<Event>,
) {
    let client = match options.connect(servers).await {
        Ok(c) => c,
        Err(e) => {
            // With retry_on_initial_connect only an unusable address fails
            // here, and addresses were validated already.
            tracing::error!(error = %e, "NATS client could not start; this node will never be ready");
            return;
        }
    };
    let echo = Subject::from(client.new_inbox());
    let subs = async {
        let e = client.subscribe(echo.clone()).await?;
        let b = client.subscribe(shared.broadcast_subject.clone()).await?;
        Ok::<_, async_nats::SubscribeError>((e, b))
    }
    .await;
    let (echo_sub, broadcast_sub) = match subs {
        Ok(s) => s,
        Err(e) => {
            tracing::error!(error = %e, "NATS client closed at start");
            return;
        }
    };
    let _ = shared.control.send(Control::Add {
        id: ECHO_ID,
        pattern: None,
        sub: echo_sub,
    });
    let _ = shared.control.send(Control::Add {
        id: BROADCAST_ID,
        pattern: None,
        sub: broadcast_sub,
    });
    let _ = shared.echo_subject.set(echo);
    let _ = shared.client.set(client.clone());

    let mut failures: u64 = 0;
    loop {
        let event = tokio::select! {
            _ = shared.stop.cancelled() => break,
            e = events.recv() => match e {
                Some(e) => e,
                None => break,
            },
        };
        match event {
            Event::Connected => {
                failures = 0;
                confirm_ready(&shared, &client).await;
            }
            Event::Disconnected => {
                shared.ready_at_connect.store(u64::MAX, Ordering::Release);
                tracing::warn!("NATS connection lost; reconnecting (node not ready)");
            }
            Event::Closed => {
                shared.ready_at_connect.store(u64::MAX, Ordering::Release);
                tracing::info!("NATS connection closed");
            }
            Event::SlowConsumer(sid) => {
                if bump(&shared.stats.slow_consumer_events) {
                    tracing::warn!(
                        sid,
                        count = shared.stats.slow_consumer_events.load(Ordering::Relaxed),
                        "NATS slow consumer: messages dropped for a subscription whose buffer is full (broker.subscription_buffer)"
                    );
                }
            }
            Event::ClientError(e) => {
                failures += 1;
                if failures.is_power_of_two() {
                    tracing::warn!(error = %e, attempts = failures, "NATS connection attempt failed; retrying");
                }
            }
            Event::ServerError(e) => tracing::warn!(error = %e, "NATS server error"),
            Event::LameDuckMode => {
                tracing::info!("NATS server entering lame duck mode; will reconnect elsewhere");
            }
            Event::Draining => {}
        }
    }
}

/// After a (re)connection: waits for an echo on the new connection, which
/// proves the server processed every resubscription, then marks the node
/// ready for that connection.
async fn confirm_ready(shared: &Shared, client: &Client) {
    loop {
        if shared.closed.load(Ordering::Acquire) || client.connection_state() != State::Connected {
            return;
        }
        let connects = client.statistics().connects.load(Ordering::Acquire);
        match shared.echo(client, shared.subscribe_timeout).await {
            Ok(()) => {
                shared.ready_at_connect.store(connects, Ordering::Release);
                tracing::info!(connects, "NATS connected; subscriptions confirmed");
                return;
            }
            Err(e) => {
                tracing::warn!(error = %e, "NATS did not confirm readiness; retrying");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }
}

impl Shared {
    fn connected_client(&self) -> Result<&Client, BrokerError> {
        if self.closed.load(Ordering::Acquire) {
            return Err(BrokerError::Closed);
        }
        match self.client.get() {
            Some(c) if c.connection_state() == State::Connected => Ok(c),
            _ => Err(BrokerError::Unavailable("NATS is not connected".into())),
        }
    }

    /// Round trip through the server on this connection: publish a token to
    /// our own inbox and wait for it to come back.
    async fn echo(&self, client: &Client, limit: Duration) -> Result<(), BrokerError> {
        let Some(subject) = self.echo_subject.get() else {
            return Err(BrokerError::Unavailable("NATS client starting".into()));
        };
        let token = self.next_token.fetch_add(1, Ordering::Relaxed);
        let (tx, rx) = oneshot::channel();
        self.echoes.lock().insert(token, tx);
        let result = tokio::time::timeout(limit, async {
            client
                .publish(subject.clone(), Bytes::from(token.to_string()))
                .await
                .map_err(|e| BrokerError::Unavailable(format!("NATS publish: {e}")))?;
            rx.await.map_err(|_| BrokerError::Closed)
        })
        .await;
        self.echoes.lock().remove(&token);
        match result {
            Ok(r) => r,
            Err(_) => Err(BrokerError::Unavailable(format!(
                "NATS did not answer within {limit:?}"
            ))),
        }
    }

    async fn subscribe(&self, patterns: &[Pattern]) -> Result<(), BrokerError> {
        let client = self.connected_client()?;
        let deadline = tokio::time::Instant::now() + self.subscribe_timeout;
        let timed_out = || {
            BrokerError::Unavailable(format!(
                "NATS did not confirm the subscription within {:?}",
                self.subscribe_timeout
            ))
        };
        let created = tokio::time::timeout_at(deadline, async {
            let _order = self.subscribe_lock.lock().await;
            let mut created = Vec::with_capacity(patterns.len());
            for p in patterns {
                let id = self.next_id.fetch_add(1, Ordering::Relaxed);
                let subject = format!("{}{}", self.prefix, p.as_str());
                let sub = client
                    .subscribe(subject)
                    .await
                    .map_err(|e| BrokerError::Unavailable(format!("NATS subscribe: {e}")))?;
                created.push((id, p.clone(), sub));
            }
            // Dropped subscribers (on an error or a timeout above) unsubscribe.
            for (id, pattern, sub) in created {
                let _ = self.control.send(Control::Add {
                    id,
                    pattern: Some(pattern),
                    sub,
                });
            }
            Ok::<_, BrokerError>(())
        })
        .await;
        match created {
            Ok(Ok(())) => {}
            Ok(Err(e)) => return Err(e),
            Err(_) => return Err(timed_out()),
        }
        let remaining = deadline.saturating_duration_since(tokio::time::Instant::now());
        if let Err(e) = self.echo(client, remaining).await {
            for p in patterns {
                let _ = self.control.send(Control::Remove(p.clone()));
            }
            return Err(match e {
                BrokerError::Unavailable(_) => timed_out(),
                other => other,
            });
        }
        Ok(())
    }

    async fn publish(&self, p: Publication) -> Result<PublishAck, BrokerError> {
        let client = self.connected_client()?;
        let subject = match &p.target {
            Target::Topic(t) => {
                let mut s = String::with_capacity(self.prefix.len() + t.as_str().len());
                s.push_str(&self.prefix);
                s.push_str(t.as_str());
                Subject::from(s)
            }
            Target::Broadcast => self.broadcast_subject.clone(),
        };
        match tokio::time::timeout(self.publish_timeout, client.publish(subject, p.data)).await {
            Ok(Ok(())) => Ok(PublishAck::default()),
            Ok(Err(e)) => match e.kind() {
                async_nats::client::PublishErrorKind::MaxPayloadExceeded
                | async_nats::client::PublishErrorKind::BadSubject => {
                    Err(BrokerError::Rejected(e.to_string()))
                }
                _ => Err(BrokerError::Unavailable(format!("NATS publish: {e}"))),
            },
            Err(_) => Err(BrokerError::Unavailable(format!(
                "NATS send buffer full for {:?} (connection backlogged)",
                self.publish_timeout
            ))),
        }
    }
}

impl Broker for NatsBroker {
    fn name(&self) -> &'static str {
        "nats"
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
        for p in patterns {
            let _ = self.shared.control.send(Control::Remove(p.clone()));
        }
        Box::pin(std::future::ready(Ok(())))
    }

    fn is_ready(&self) -> bool {
        let s = &self.shared;
        if s.closed.load(Ordering::Acquire) {
            return false;
        }
        match s.client.get() {
            Some(c) => {
                c.connection_state() == State::Connected
                    && c.statistics().connects.load(Ordering::Acquire)
                        == s.ready_at_connect.load(Ordering::Acquire)
            }
            None => false,
        }
    }

    fn close(&self) -> BoxFuture<'_, ()> {
        Box::pin(async move {
            let s = &self.shared;
            if s.closed.swap(true, Ordering::AcqRel) {
                return;
            }
            s.stop.cancel();
            if let Some(client) = s.client.get() {
                // Push out what is queued, then close the connection; both
                // bounded, as the server may be gone.
                let limit = s.publish_timeout;
                if client.connection_state() == State::Connected {
                    let _ = tokio::time::timeout(limit, client.flush()).await;
                }
                let _ = tokio::time::timeout(limit, client.drain()).await;
            }
        })
    }
}

/// Hands what the node's subscriptions receive to the hub.
struct Driver {
    shared: Arc<Shared>,
}

impl Handler for Driver {
    fn handle(&mut self, index: &SubscriptionIndex, id: u64, msg: Message) {
        let stats = &self.shared.stats;
        if id == ECHO_ID {
            let token = std::str::from_utf8(&msg.payload)
                .ok()
                .and_then(|s| s.parse::<u64>().ok());
            let waiter = token.and_then(|t| self.shared.echoes.lock().remove(&t));
            if let Some(tx) = waiter {
                let _ = tx.send(());
            }
            return;
        }
        stats.received.fetch_add(1, Ordering::Relaxed);
        let target = if id == BROADCAST_ID {
            Target::Broadcast
        } else {
            let topic = msg
                .subject
                .as_str()
                .strip_prefix(self.shared.prefix.as_str())
                .and_then(|t| Topic::parse(t, usize::MAX).ok());
            let Some(topic) = topic else {
                if bump(&stats.dropped_bad_subject) {
                    tracing::warn!(subject = %msg.subject, "dropping a NATS message whose subject is not a valid topic");
                }
                return;
            };
            // Only one subscription can match when no wildcard is held.
            if !index.delivers(&topic, id) {
                stats.duplicates_skipped.fetch_add(1, Ordering::Relaxed);
                return;
            }
            Target::Topic(topic)
        };
        let Some(data) = json_payload(msg.payload, stats, &msg.subject) else {
            return;
        };
        if let Some(sink) = self.shared.sink.get() {
            stats.delivered.fetch_add(1, Ordering::Relaxed);
            sink.deliver(Delivery {
                target,
                data,
                position: None,
            });
        }
    }
}

/// Valid JSON passes through untouched; other UTF-8 becomes a JSON string;
/// anything else is dropped.
fn json_payload(payload: Bytes, stats: &Stats, subject: &Subject) -> Option<Bytes> {
    if serde_json::from_slice::<serde::de::IgnoredAny>(&payload).is_ok() {
        return Some(payload);
    }
    match std::str::from_utf8(&payload) {
        Ok(text) => {
            stats.wrapped_as_string.fetch_add(1, Ordering::Relaxed);
            serde_json::to_vec(text).ok().map(Bytes::from)
        }
        Err(_) => {
            if bump(&stats.dropped_not_utf8) {
                tracing::warn!(
                    %subject,
                    count = stats.dropped_not_utf8.load(Ordering::Relaxed),
                    "dropping a NATS message whose payload is neither JSON nor UTF-8"
                );
            }
            None
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_is_capped_and_starts_immediately() {
        let (min, max) = (Duration::from_millis(100), Duration::from_secs(2));
        assert_eq!(reconnect_delay(1, min, max), Duration::ZERO);
        let d2 = reconnect_delay(2, min, max);
        assert!(d2 >= Duration::from_millis(75) && d2 <= min, "{d2:?}");
        for attempt in 2..200 {
            assert!(reconnect_delay(attempt, min, max) <= max);
        }
        assert!(reconnect_delay(100, min, max) >= max.mul_f64(0.75));
    }

    #[test]
    fn payloads_json_passes_text_wrapped_binary_dropped() {
        let stats = Stats::default();
        let subj = Subject::from("s");
        let j = Bytes::from_static(br#" {"a": [1, 2]} "#);
        assert_eq!(json_payload(j.clone(), &stats, &subj), Some(j));
        assert_eq!(
            json_payload(Bytes::from_static(b"hello \"x\""), &stats, &subj),
            Some(Bytes::from_static(br#""hello \"x\"""#))
        );
        assert_eq!(
            json_payload(Bytes::from_static(b""), &stats, &subj),
            Some(Bytes::from_static(br#""""#))
        );
        assert_eq!(
            json_payload(Bytes::from_static(b"1},\"x\":{"), &stats, &subj),
            Some(Bytes::from_static(br#""1},\"x\":{""#))
        );
        assert_eq!(
            json_payload(Bytes::from_static(&[0xff, 0xfe]), &stats, &subj),
            None
        );
        assert_eq!(stats.dropped_not_utf8.load(Ordering::Relaxed), 1);
        assert_eq!(stats.wrapped_as_string.load(Ordering::Relaxed), 3);
    }

    #[tokio::test]
    async fn bad_configurations_are_rejected() {
        let bad = [
            NatsConfig {
                url: "".into(),
                ..Default::default()
            },
            NatsConfig {
                subject_prefix: "a.*".into(),
                ..Default::default()
            },
            NatsConfig {
                subject_prefix: "".into(),
                ..Default::default()
            },
            NatsConfig {
                broadcast_subject: "wsgate.all".into(),
                ..Default::default()
            },
            NatsConfig {
                user: Some("u".into()),
                ..Default::default()
            },
            NatsConfig {
                user: Some("u".into()),
                password: Some("p".into()),
                token: Some("t".into()),
                ..Default::default()
            },
            NatsConfig {
                credentials_file: Some("/nonexistent/wsgate.creds".into()),
                ..Default::default()
            },
            NatsConfig {
                publish_timeout: Duration::ZERO,
                ..Default::default()
            },
        ];
        for c in bad {
            assert!(
                matches!(NatsBroker::new(&c), Err(BrokerError::Config(_))),
                "{c:?}"
            );
        }
    }

    #[tokio::test]
    async fn starts_without_a_server_and_is_not_ready() {
        // Port 9 (discard) on loopback: nothing listens.
        let b = NatsBroker::new(&NatsConfig {
            url: "nats://127.0.0.1:9".into(),
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
        let t = Pattern::parse("a.b", 64).unwrap_or_else(|e| panic!("{e}"));
        let err = b.subscribe(std::slice::from_ref(&t)).await;
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
