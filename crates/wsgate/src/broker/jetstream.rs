//! The NATS JetStream backbone: the NATS core backbone's fan-out plus a
//! durable history per topic, so a client can recover what it missed.
//!
//! * **Stream.** On start (and after every failure, until it succeeds) the
//!   node creates or updates the stream `stream` covering
//!   `<subject_prefix>.>` with the configured limits. Every node on the same
//!   JetStream uses the same stream, so offsets are global.
//! * **Publishing** goes through JetStream and waits for the stream's ack,
//!   which carries the message's stream sequence: its **offset**. The
//!   **epoch** is the stream's creation time (nanoseconds since the Unix
//!   epoch, as a string): deleting and re-creating the stream changes it.
//! * **Live fan-out.** Messages stored in a stream reach core subscribers of
//!   the same subject *without* their sequence, so the stream *republishes*
//!   every stored message to `<subject_prefix>-live.<topic>` (a JetStream
//!   stream option); a republished message carries `Nats-Sequence` in its
//!   headers, in stream order. A node holds one core subscription per
//!   pattern in use on those subjects (like `nats`), all read by one driver
//!   task, and delivers each message from its oldest matching subscription
//!   only (overlapping patterns). A subscription counts as live after a
//!   JetStream API round trip on the same connection (the server handles a
//!   connection's operations in order).
//! * **Recovery** ([`Broker::replay`]): the client's last offset must still
//!   be stored on the topic's subject (oldest messages are trimmed first, so
//!   then nothing after it was trimmed) and the epoch must match; the node
//!   then reads the subject's messages after it, one `STREAM.MSG.GET`
//!   (`next_by_subj`) per message, up to the stream's last sequence at the
//!   time of the call. At most [`MAX_REPLAY`] messages; more means
//!   `recovered: false`.
//! * **History** ([`Broker::history`]) scans the subject's stored messages
//!   and keeps the last `limit`: its cost grows with what the stream retains
//!   per subject (`max_messages_per_subject`).
//! * **Broadcasts** are not stored: core NATS on `broadcast_subject`.
//! * **Lost when:** messages older than `max_age` or beyond
//!   `max_messages_per_subject` are trimmed (a client behind them gets
//!   `recovered: false`); with `storage = "memory"` a server restart loses
//!   the history (new epoch). Live delivery is core NATS: a node whose
//!   subscription buffer overflows drops messages for its clients (recovered
//!   by reconnecting with `since`).

use std::collections::{BTreeMap, VecDeque};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use async_nats::connection::State;
use async_nats::jetstream::{self, stream};
use async_nats::{Client, Message, Subject};
use bytes::Bytes;
use serde::{Deserialize, Serialize};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use super::index::SubscriptionIndex;
use super::nats::{check_subject, connect_options, parse_servers};
use super::subscriptions::{Control, Handler, Subscriptions};
use super::{
    BoxFuture, Broker, BrokerError, Delivery, DeliverySink, ForeignPayload, History, HistoryEntry,
    NatsConfig, Publication, PublishAck, Replay, StreamPosition, Target, foreign_payload,
};
use crate::topic::{Pattern, Topic};

/// Most messages one `since` replays; further behind is `recovered: false`.
pub const MAX_REPLAY: usize = 10_000;
/// Longest wait for a JetStream publish ack or API answer.
const API_TIMEOUT: Duration = Duration::from_secs(5);
const BROADCAST_ID: u64 = 0;
const FIRST_PATTERN_ID: u64 = 1;

/// Where the stream keeps its messages.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq, Default)]
#[serde(rename_all = "snake_case")]
pub enum StorageKind {
    #[default]
    File,
    Memory,
}

/// `[broker] kind = "jetstream"`: every `nats` option plus the stream's.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(default)]
pub struct JetStreamConfig {
    /// The connection options (`url`, `subject_prefix`, credentials, ...),
    /// as for `kind = "nats"`.
    #[serde(flatten)]
    pub nats: NatsConfig,
    /// Name of the JetStream stream holding the history.
    pub stream: String,
    /// Messages older than this are removed; 0 keeps them forever.
    #[serde(with = "humantime_serde")]
    pub max_age: Duration,
    /// Messages kept per topic (oldest removed first); 0: no limit.
    pub max_messages_per_subject: i64,
    /// `file` or `memory`.
    pub storage: StorageKind,
    /// Copies of the stream in a JetStream cluster (1–5).
    pub replicas: usize,
    /// Keys neither this struct nor [`NatsConfig`] knows (`deny_unknown_fields`
    /// does not work through `flatten`): the broker refuses to start unless
    /// it is empty, so a misspelt option is an error.
    #[doc(hidden)]
    #[serde(flatten, skip_serializing_if = "BTreeMap::is_empty")]
    pub unknown: BTreeMap<String, serde_json::Value>,
}

impl Default for JetStreamConfig {
    fn default() -> Self {
        JetStreamConfig {
            nats: NatsConfig::default(),
            stream: "WSGATE".into(),
            max_age: Duration::from_secs(24 * 3600),
            max_messages_per_subject: 1000,
            storage: StorageKind::File,
            replicas: 1,
            unknown: BTreeMap::new(),
        }
    }
}

struct Shared {
    /// `<subject_prefix>.` (stored subjects).
    prefix: String,
    /// `<subject_prefix>-live.` (republished subjects).
    live_prefix: String,
    broadcast_subject: Subject,
    stream_config: stream::Config,
    subscribe_timeout: Duration,
    publish_timeout: Duration,
    client: OnceLock<Client>,
    js: OnceLock<jetstream::Context>,
    /// The current epoch; set once the stream exists.
    epoch: parking_lot::RwLock<Option<Arc<str>>>,
    sink: OnceLock<Arc<dyn DeliverySink>>,
    control: mpsc::UnboundedSender<Control>,
    subscribe_lock: tokio::sync::Mutex<()>,
    next_id: AtomicU64,
    closed: AtomicBool,
    stop: CancellationToken,
}

/// The JetStream backbone (see the module documentation).
pub struct JetStreamBroker {
    shared: Arc<Shared>,
}

impl JetStreamBroker {
    /// Validates the configuration and starts connecting (and creating the
    /// stream) in the background. Must be called inside a Tokio runtime.
    pub fn new(config: &JetStreamConfig) -> Result<JetStreamBroker, BrokerError> {
        if !config.unknown.is_empty() {
            let keys: Vec<&str> = config.unknown.keys().map(String::as_str).collect();
            return Err(BrokerError::Config(format!(
                "unknown [broker] option(s) for kind \"jetstream\": {}",
                keys.join(", ")
            )));
        }
        let c = &config.nats;
        let servers = parse_servers(&c.url)?;
        let prefix = check_subject("broker.subject_prefix", &c.subject_prefix)?;
        let broadcast = check_subject("broker.broadcast_subject", &c.broadcast_subject)?;
        let live = format!("{prefix}-live");
        for other in [&prefix, &live] {
            if broadcast == *other || broadcast.starts_with(&format!("{other}.")) {
                return Err(BrokerError::Config(format!(
                    "broker.broadcast_subject {broadcast:?} must not be under {other:?}"
                )));
            }
        }
        let name_ok = !config.stream.is_empty()
            && config
                .stream
                .chars()
                .all(|ch| ch.is_ascii_alphanumeric() || ch == '_' || ch == '-');
        if !name_ok {
            return Err(BrokerError::Config(format!(
                "broker.stream {:?}: use letters, digits, '_' and '-'",
                config.stream
            )));
        }
        if !(1..=5).contains(&config.replicas) {
            return Err(BrokerError::Config("broker.replicas must be 1 to 5".into()));
        }
        if config.max_messages_per_subject < 0 {
            return Err(BrokerError::Config(
                "broker.max_messages_per_subject must not be negative".into(),
            ));
        }
        if c.subscribe_timeout.is_zero() || c.publish_timeout.is_zero() {
            return Err(BrokerError::Config(
                "broker.subscribe_timeout and broker.publish_timeout must be positive".into(),
            ));
        }
        let options = connect_options(c)?;
        let stream_config = stream::Config {
            name: config.stream.clone(),
            subjects: vec![format!("{prefix}.>")],
            max_age: config.max_age,
            max_messages_per_subject: if config.max_messages_per_subject == 0 {
                -1
            } else {
                config.max_messages_per_subject
            },
            storage: match config.storage {
                StorageKind::File => stream::StorageType::File,
                StorageKind::Memory => stream::StorageType::Memory,
            },
            num_replicas: config.replicas,
            republish: Some(stream::Republish {
                source: format!("{prefix}.>"),
                destination: format!("{live}.>"),
                headers_only: false,
            }),
            ..Default::default()
        };
        let (control_tx, control_rx) = mpsc::unbounded_channel();
        let shared = Arc::new(Shared {
            prefix: format!("{prefix}."),
            live_prefix: format!("{live}."),
            broadcast_subject: Subject::from(broadcast),
            stream_config,
            subscribe_timeout: c.subscribe_timeout,
            publish_timeout: c.publish_timeout,
            client: OnceLock::new(),
            js: OnceLock::new(),
            epoch: parking_lot::RwLock::new(None),
            sink: OnceLock::new(),
            control: control_tx,
            subscribe_lock: tokio::sync::Mutex::new(()),
            next_id: AtomicU64::new(FIRST_PATTERN_ID),
            closed: AtomicBool::new(false),
            stop: CancellationToken::new(),
        });
        tokio::spawn(Subscriptions::default().run(
            control_rx,
            shared.stop.clone(),
            Driver {
                shared: shared.clone(),
            },
        ));
        tokio::spawn(start(shared.clone(), options, servers));
        Ok(JetStreamBroker { shared })
    }

    /// The current epoch of the history (the stream's creation time), once
    /// the stream is set up.
    pub fn epoch(&self) -> Option<Arc<str>> {
        self.shared.epoch.read().clone()
    }
}

impl Drop for JetStreamBroker {
    fn drop(&mut self) {
        self.shared.stop.cancel();
    }
}

fn epoch_of(info: &stream::Info) -> Arc<str> {
    Arc::from(info.created.unix_timestamp_nanos().to_string())
}

/// Connects, then creates/updates the stream (retrying until it works) and
/// subscribes to broadcasts.
async fn start(
    shared: Arc<Shared>,
    options: async_nats::ConnectOptions,
    servers: Vec<async_nats::ServerAddr>,
) {
    let connect = options.connect(servers);
    let client = tokio::select! {
        _ = shared.stop.cancelled() => return,
        c = connect => match c {
            Ok(c) => c,
            Err(e) => {
                tracing::error!(error = %e, "NATS client could not start; this node will never be ready");
                return;
            }
        },
    };
    let js = jetstream::new(client.clone());
    let mut delay = Duration::from_millis(50);
    loop {
        if shared.stop.is_cancelled() {
            return;
        }
        match js
            .create_or_update_stream(shared.stream_config.clone())
            .await
        {
            Ok(info) => {
                *shared.epoch.write() = Some(epoch_of(&info));
                tracing::info!(stream = %info.config.name, "JetStream stream ready");
                break;
            }
            Err(e) => {
                tracing::warn!(error = %e, "cannot create the JetStream stream; retrying");
                tokio::time::sleep(delay).await;
                delay = (delay * 2).min(Duration::from_secs(2));
            }
        }
    }
    match client.subscribe(shared.broadcast_subject.clone()).await {
        Ok(sub) => {
            let _ = shared.control.send(Control::Add {
                id: BROADCAST_ID,
                pattern: None,
                sub,
            });
        }
        Err(e) => {
            tracing::error!(error = %e, "NATS client closed at start");
            return;
        }
    }
    let _ = shared.js.set(js);
    let _ = shared.client.set(client);
}

fn unavailable(what: &str, e: impl std::fmt::Display) -> BrokerError {
    BrokerError::Unavailable(format!("JetStream {what}: {e}"))
}

impl Shared {
    fn connected(&self) -> Result<(&Client, &jetstream::Context), BrokerError> {
        if self.closed.load(Ordering::Acquire) {
            return Err(BrokerError::Closed);
        }
        match (self.client.get(), self.js.get()) {
            (Some(c), Some(js)) if c.connection_state() == State::Connected => Ok((c, js)),
            _ => Err(BrokerError::Unavailable(
                "NATS JetStream is not ready".into(),
            )),
        }
    }

    /// The stream's current info; refreshes the epoch.
    async fn stream_info(&self, js: &jetstream::Context) -> Result<stream::Info, BrokerError> {
        let info = tokio::time::timeout(API_TIMEOUT, async {
            js.get_stream_no_info(&self.stream_config.name)
                .await
                .map_err(|e| unavailable("stream", e))?
                .get_info()
                .await
                .map_err(|e| unavailable("stream info", e))
        })
        .await
        .map_err(|_| unavailable("stream info", "timed out"))??;
        *self.epoch.write() = Some(epoch_of(&info));
        Ok(info)
    }

    async fn publish(&self, p: Publication) -> Result<PublishAck, BrokerError> {
        let (client, js) = self.connected()?;
        let topic = match &p.target {
            Target::Topic(t) => t,
            Target::Broadcast => {
                return match tokio::time::timeout(
                    self.publish_timeout,
                    client.publish(self.broadcast_subject.clone(), p.data),
                )
                .await
                {
                    Ok(Ok(())) => Ok(PublishAck::default()),
                    Ok(Err(e)) => Err(unavailable("publish", e)),
                    Err(_) => Err(unavailable("publish", "send buffer full")),
                };
            }
        };
        let subject = format!("{}{}", self.prefix, topic.as_str());
        let ack = tokio::time::timeout(self.publish_timeout.max(API_TIMEOUT), async {
            js.publish(subject, p.data)
                .await
                .map_err(|e| unavailable("publish", e))?
                .await
                .map_err(|e| unavailable("publish ack", e))
        })
        .await
        .map_err(|_| unavailable("publish", "no ack in time"))??;
        let epoch = self.epoch.read().clone().unwrap_or_else(|| Arc::from(""));
        Ok(PublishAck {
            position: Some(StreamPosition {
                offset: ack.sequence,
                epoch,
            }),
        })
    }

    async fn subscribe(&self, patterns: &[Pattern]) -> Result<(), BrokerError> {
        let (client, _) = self.connected()?;
        let result = tokio::time::timeout(self.subscribe_timeout, async {
            let _order = self.subscribe_lock.lock().await;
            let mut created = Vec::with_capacity(patterns.len());
            for p in patterns {
                let id = self.next_id.fetch_add(1, Ordering::Relaxed);
                let subject = format!("{}{}", self.live_prefix, p.as_str());
                let sub = client
                    .subscribe(subject)
                    .await
                    .map_err(|e| unavailable("subscribe", e))?;
                created.push((id, p.clone(), sub));
            }
            for (id, pattern, sub) in created {
                let _ = self.control.send(Control::Add {
                    id,
                    pattern: Some(pattern),
                    sub,
                });
            }
            // A round trip on the same connection: the server has processed
            // the SUBs above when it answers.
            // (The answer's content does not matter.)
            client
                .request("$JS.API.INFO", Bytes::new())
                .await
                .map_err(|e| unavailable("account info", e))?;
            Ok::<_, BrokerError>(())
        })
        .await
        .unwrap_or_else(|_| Err(unavailable("subscribe", "not confirmed in time")));
        if result.is_err() {
            for p in patterns {
                let _ = self.control.send(Control::Remove(p.clone()));
            }
        }
        result
    }

    /// The stored message at `seq` on `subject` or after it (None: none).
    async fn next_on_subject(
        &self,
        stream: &stream::Stream<()>,
        subject: &str,
        seq: u64,
    ) -> Result<Option<(u64, Bytes)>, BrokerError> {
        let got = tokio::time::timeout(
            API_TIMEOUT,
            stream.get_first_raw_message_by_subject(subject, seq),
        )
        .await
        .map_err(|_| unavailable("message get", "timed out"))?;
        match got {
            Ok(m) => Ok(Some((m.sequence, m.payload))),
            Err(e) if matches!(e.kind(), stream::LastRawMessageErrorKind::NoMessageFound) => {
                Ok(None)
            }
            Err(e) => Err(unavailable("message get", e)),
        }
    }

    async fn replay(&self, topic: &Topic, since: &StreamPosition) -> Result<Replay, BrokerError> {
        let (_, js) = self.connected()?;
        let info = self.stream_info(js).await?;
        let epoch = epoch_of(&info);
        let lost = Replay {
            recovered: false,
            epoch: epoch.clone(),
            messages: Vec::new(),
        };
        let last = info.state.last_sequence;
        if since.epoch != epoch || since.offset > last {
            return Ok(lost);
        }
        let stream = js
            .get_stream_no_info(&self.stream_config.name)
            .await
            .map_err(|e| unavailable("stream", e))?;
        let subject = format!("{}{}", self.prefix, topic.as_str());
        if since.offset == 0 {
            // "From the start": only if the stream never removed anything.
            if info.state.messages != last {
                return Ok(lost);
            }
        } else {
            // The client's last message must still be stored: trimming
            // removes the oldest first, so then nothing after it is gone.
            let still_there =
                tokio::time::timeout(API_TIMEOUT, stream.get_raw_message(since.offset))
                    .await
                    .map_err(|_| unavailable("message get", "timed out"))?;
            match still_there {
                Ok(m) if m.subject.as_str() == subject => {}
                Ok(_) => return Ok(lost),
                Err(e) if matches!(e.kind(), stream::LastRawMessageErrorKind::NoMessageFound) => {
                    return Ok(lost);
                }
                Err(e) => return Err(unavailable("message get", e)),
            }
        }
        let mut messages = Vec::new();
        let mut seq = since.offset + 1;
        while seq <= last {
            let Some((offset, payload)) = self.next_on_subject(&stream, &subject, seq).await?
            else {
                break;
            };
            if offset > last {
                break;
            }
            if messages.len() == MAX_REPLAY {
                return Ok(lost);
            }
            if let Some(data) = json(payload) {
                messages.push(HistoryEntry { offset, data });
            }
            seq = offset + 1;
        }
        Ok(Replay {
            recovered: true,
            epoch,
            messages,
        })
    }

    async fn history(&self, topic: &Topic, limit: usize) -> Result<History, BrokerError> {
        let (_, js) = self.connected()?;
        let info = self.stream_info(js).await?;
        let epoch = epoch_of(&info);
        let last = info.state.last_sequence;
        let mut out: VecDeque<HistoryEntry> = VecDeque::with_capacity(limit.min(1024));
        if limit == 0 {
            return Ok(History {
                epoch,
                messages: Vec::new(),
            });
        }
        let stream = js
            .get_stream_no_info(&self.stream_config.name)
            .await
            .map_err(|e| unavailable("stream", e))?;
        let subject = format!("{}{}", self.prefix, topic.as_str());
        let mut seq = info.state.first_sequence.max(1);
        while seq <= last {
            let Some((offset, payload)) = self.next_on_subject(&stream, &subject, seq).await?
            else {
                break;
            };
            if offset > last {
                break;
            }
            if let Some(data) = json(payload) {
                if out.len() == limit {
                    out.pop_front();
                }
                out.push_back(HistoryEntry { offset, data });
            }
            seq = offset + 1;
        }
        Ok(History {
            epoch,
            messages: out.into(),
        })
    }
}

/// A stored payload as JSON text (non-JSON UTF-8 becomes a JSON string,
/// anything else is skipped).
fn json(payload: Bytes) -> Option<Bytes> {
    match foreign_payload(payload) {
        ForeignPayload::Json(b) | ForeignPayload::Wrapped(b) => Some(b),
        ForeignPayload::NotUtf8 => None,
    }
}

impl Broker for JetStreamBroker {
    fn name(&self) -> &'static str {
        "jetstream"
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
        self.shared.connected().is_ok()
    }

    fn close(&self) -> BoxFuture<'_, ()> {
        Box::pin(async move {
            let s = &self.shared;
            if s.closed.swap(true, Ordering::AcqRel) {
                return;
            }
            s.stop.cancel();
            if let Some(client) = s.client.get() {
                let limit = s.publish_timeout;
                if client.connection_state() == State::Connected {
                    let _ = tokio::time::timeout(limit, client.flush()).await;
                }
                let _ = tokio::time::timeout(limit, client.drain()).await;
            }
        })
    }

    fn replay<'a>(
        &'a self,
        topic: &'a Topic,
        since: &'a StreamPosition,
    ) -> BoxFuture<'a, Result<Replay, BrokerError>> {
        Box::pin(self.shared.replay(topic, since))
    }

    fn history<'a>(
        &'a self,
        topic: &'a Topic,
        limit: usize,
    ) -> BoxFuture<'a, Result<History, BrokerError>> {
        Box::pin(self.shared.history(topic, limit))
    }
}

/// Hands what the node's subscriptions receive to the hub.
struct Driver {
    shared: Arc<Shared>,
}

impl Handler for Driver {
    fn handle(&mut self, index: &SubscriptionIndex, id: u64, msg: Message) {
        let (target, position) = if id == BROADCAST_ID {
            (Target::Broadcast, None)
        } else {
            let topic = msg
                .subject
                .as_str()
                .strip_prefix(self.shared.live_prefix.as_str())
                .and_then(|t| Topic::parse(t, usize::MAX).ok());
            let Some(topic) = topic else { return };
            if !index.delivers(&topic, id) {
                return;
            }
            let offset = msg
                .headers
                .as_ref()
                .and_then(|h| h.get(async_nats::header::NATS_SEQUENCE))
                .and_then(|v| v.as_str().parse::<u64>().ok());
            let epoch = self.shared.epoch.read().clone();
            let position = match (offset, epoch) {
                (Some(offset), Some(epoch)) => Some(StreamPosition { offset, epoch }),
                _ => None,
            };
            (Target::Topic(topic), position)
        };
        let Some(data) = json(msg.payload) else {
            return;
        };
        if let Some(sink) = self.shared.sink.get() {
            sink.deliver(Delivery {
                target,
                data,
                position,
            });
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn config_reuses_nats_options_and_rejects_unknown_keys() {
        let c: JetStreamConfig = serde_json::from_str(
            r#"{"url":"nats://h:4222","subject_prefix":"app","stream":"APP","max_age":"1h","max_messages_per_subject":5,"storage":"memory","replicas":1}"#,
        )
        .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(c.nats.url, "nats://h:4222");
        assert_eq!(c.nats.subject_prefix, "app");
        assert_eq!(c.stream, "APP");
        assert_eq!(c.max_age, Duration::from_secs(3600));
        assert_eq!(c.storage, StorageKind::Memory);
        let typo: JetStreamConfig =
            serde_json::from_str(r#"{"max_mesages_per_subject":1}"#).unwrap_or_default();
        assert_eq!(typo.unknown.len(), 1);
        assert!(matches!(
            JetStreamBroker::new(&typo),
            Err(BrokerError::Config(_))
        ));
    }

    #[test]
    fn loads_from_layered_configuration() {
        let c = crate::Config::load(
            None,
            &[
                "broker.kind=jetstream".into(),
                "broker.url=nats://n:4222".into(),
                "broker.stream=HIST".into(),
                "broker.max_age=2h".into(),
                "broker.max_messages_per_subject=10".into(),
                "broker.storage=memory".into(),
                "broker.replicas=3".into(),
            ],
        )
        .unwrap_or_else(|e| panic!("{e}"));
        let crate::broker::BrokerConfig::Jetstream(j) = c.broker else {
            panic!("{:?}", c.broker)
        };
        assert_eq!(j.nats.url, "nats://n:4222");
        assert_eq!(j.stream, "HIST");
        assert_eq!(j.max_age, Duration::from_secs(7200));
        assert_eq!(j.max_messages_per_subject, 10);
        assert_eq!(j.storage, StorageKind::Memory);
        assert_eq!(j.replicas, 3);
        assert_eq!(j.nats.subject_prefix, "wsgate");
    }

    #[tokio::test]
    async fn bad_configurations_are_rejected() {
        let bad = [
            JetStreamConfig {
                stream: "a.b".into(),
                ..Default::default()
            },
            JetStreamConfig {
                replicas: 0,
                ..Default::default()
            },
            JetStreamConfig {
                max_messages_per_subject: -2,
                ..Default::default()
            },
            JetStreamConfig {
                nats: NatsConfig {
                    broadcast_subject: "wsgate-live.x".into(),
                    ..Default::default()
                },
                ..Default::default()
            },
        ];
        for c in bad {
            assert!(
                matches!(JetStreamBroker::new(&c), Err(BrokerError::Config(_))),
                "{c:?}"
            );
        }
    }
}
