//! Inbound sources: external systems whose events the gateway publishes to
//! its subscribers.
//!
//! A source is not a backbone: it only feeds publications in. Each
//! configured source runs one task, started with the gateway
//! ([`crate::Gateway::new`] / [`crate::Gateway::with_broker`], so embedders
//! get them too) and stopped by [`crate::Gateway::shutdown`] (or when the
//! gateway is dropped).
//!
//! * [`template`] — topic templates (`products.{product.productId}`) and
//!   `data` selectors over a JSON payload (pure).
//! * `postgres` — `LISTEN`/`NOTIFY` on PostgreSQL (`[[sources.postgres]]`):
//!   connect, `LISTEN`, forward each notification, reconnect with bounded,
//!   jittered exponential backoff.
//!
//! A disconnected source does **not** make `GET /readyz` fail: the node
//! still serves its clients and every other publisher. Its state is in
//! [`crate::Gateway::sources`], the `wsgate_sources_connected` gauge and the
//! logs.

mod postgres;
pub mod template;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use bytes::Bytes;
use serde::{Deserialize, Serialize};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::broker::{Broker, Publication, Target};
use crate::hub::Hub;
use crate::metrics::Metrics;
pub use template::{DataSelector, RenderError, TemplateError, TopicTemplate};

/// `[sources]`: inbound sources, none by default.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Default)]
#[serde(default, deny_unknown_fields)]
pub struct SourcesConfig {
    /// `[[sources.postgres]]`: one entry per `LISTEN` channel.
    pub postgres: Vec<PostgresSource>,
}

/// Where a source's publications go.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq, Default)]
#[serde(rename_all = "snake_case")]
pub enum Deliver {
    /// Through the broker, like any publish: with a networked backbone every
    /// node's subscribers get it, so configure the source on one node only
    /// (each node running it would publish every notification once).
    #[default]
    Broker,
    /// To this node's subscribers only, bypassing the backbone: run the same
    /// source on every node (each holds its own `LISTEN` connection).
    Local,
}

/// One `[[sources.postgres]]` entry: a `LISTEN` channel mapped to topics.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct PostgresSource {
    /// tokio-postgres connection string: a URL
    /// (`postgres://user:pass@127.0.0.1:5432/shop?application_name=wsgate`)
    /// or `key=value` pairs (`host=127.0.0.1 user=postgres dbname=shop`).
    /// `application_name` defaults to `wsgate`. Plain TCP or Unix socket
    /// only: `sslmode=require` is rejected (TLS is not supported yet).
    pub url: String,
    /// The channel, exactly as given to `pg_notify(channel, payload)`. It is
    /// quoted in `LISTEN`, so case matters (`NOTIFY Foo` with an unquoted
    /// name sends on `foo`). 1–63 bytes, printable characters.
    pub channel: String,
    /// Topic template: `products.{product.productId}`.
    pub topic: TopicTemplate,
    /// Publish this member of the payload (`"{product}"`) instead of the
    /// whole payload.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub data: Option<DataSelector>,
    /// `broker` (default) or `local`.
    #[serde(default)]
    pub deliver: Deliver,
    /// Time allowed for connecting, authenticating and `LISTEN`.
    #[serde(default = "default_connect_timeout", with = "humantime_serde")]
    pub connect_timeout: Duration,
    /// How often the connection is checked with a query; an answer missing
    /// for as long means the connection is dead and is replaced.
    #[serde(default = "default_ping_interval", with = "humantime_serde")]
    pub ping_interval: Duration,
    /// Backoff after a failed or lost connection: the n-th consecutive
    /// failure waits a random time between half and all of
    /// `min(reconnect_delay_min * 2^(n-1), reconnect_delay_max)`.
    #[serde(default = "default_reconnect_min", with = "humantime_serde")]
    pub reconnect_delay_min: Duration,
    #[serde(default = "default_reconnect_max", with = "humantime_serde")]
    pub reconnect_delay_max: Duration,
}

fn default_connect_timeout() -> Duration {
    Duration::from_secs(10)
}
fn default_ping_interval() -> Duration {
    Duration::from_secs(30)
}
fn default_reconnect_min() -> Duration {
    Duration::from_millis(250)
}
fn default_reconnect_max() -> Duration {
    Duration::from_secs(30)
}

impl PostgresSource {
    /// A source with the default timings.
    pub fn new(url: impl Into<String>, channel: impl Into<String>, topic: TopicTemplate) -> Self {
        PostgresSource {
            url: url.into(),
            channel: channel.into(),
            topic,
            data: None,
            deliver: Deliver::Broker,
            connect_timeout: default_connect_timeout(),
            ping_interval: default_ping_interval(),
            reconnect_delay_min: default_reconnect_min(),
            reconnect_delay_max: default_reconnect_max(),
        }
    }

    /// Turns one notification payload into a publication: parses it as
    /// JSON, renders the topic, selects the data (verbatim JSON text).
    pub fn publication(
        &self,
        payload: &str,
        max_topic_len: usize,
    ) -> Result<Publication, RenderError> {
        let root = template::parse_payload(payload)?;
        let topic = self.topic.render(root, max_topic_len)?;
        let data = match &self.data {
            Some(sel) => sel.select(root)?,
            None => root,
        };
        Ok(Publication {
            target: Target::Topic(topic),
            data: Bytes::copy_from_slice(data.get().as_bytes()),
        })
    }

    fn validate(&self, max_topic_length: usize) -> Result<(), String> {
        if self.url.trim().is_empty() {
            return Err("url is empty".into());
        }
        let pg = self
            .url
            .parse::<tokio_postgres::Config>()
            .map_err(|e| format!("url: {}", postgres::error_chain(&e)))?;
        if pg.get_ssl_mode() == tokio_postgres::config::SslMode::Require {
            return Err(
                "url: sslmode=require is not supported yet (plain connections only)".into(),
            );
        }
        postgres::check_channel(&self.channel).map_err(|e| format!("channel: {e}"))?;
        if self.topic.min_len() > max_topic_length {
            return Err(format!(
                "topic template {:?} always renders longer than limits.max_topic_length ({max_topic_length})",
                self.topic.as_str()
            ));
        }
        if self.connect_timeout.is_zero() || self.ping_interval.is_zero() {
            return Err("connect_timeout and ping_interval must be positive".into());
        }
        if self.reconnect_delay_min.is_zero() || self.reconnect_delay_min > self.reconnect_delay_max
        {
            return Err(
                "reconnect_delay_min must be positive and at most reconnect_delay_max".into(),
            );
        }
        Ok(())
    }
}

impl SourcesConfig {
    /// Checks every source (template syntax was checked when parsed).
    pub fn validate(&self, max_topic_length: usize) -> Result<(), String> {
        for (i, s) in self.postgres.iter().enumerate() {
            s.validate(max_topic_length)
                .map_err(|e| format!("sources.postgres[{i}] (channel {:?}): {e}", s.channel))?;
        }
        Ok(())
    }
}

/// The state of one source, as reported by [`crate::Gateway::sources`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct SourceStatus {
    /// `"postgres"`.
    pub kind: &'static str,
    /// The channel (Postgres) the source listens on.
    pub channel: String,
    /// Connected and listening right now.
    pub connected: bool,
    /// Notifications received.
    pub notifications: u64,
    /// Notifications not published (malformed, publish failed, queue full).
    pub errors: u64,
    /// Connections established after the first one.
    pub reconnects: u64,
}

#[derive(Debug, Default)]
pub(crate) struct SourceState {
    connected: AtomicBool,
    notifications: AtomicU64,
    errors: AtomicU64,
    connections: AtomicU64,
}

impl SourceState {
    /// Counts an error; true when it should be logged (the 1st, 2nd, 4th,
    /// 8th, ... error of this source), so a flood of bad notifications does
    /// not flood the log.
    fn error(&self, metrics: &Metrics) -> (bool, u64) {
        metrics.source_errors.inc();
        let n = self.errors.fetch_add(1, Ordering::Relaxed) + 1;
        (n.is_power_of_two(), n)
    }
}

/// What a source task needs from its node.
#[derive(Clone)]
pub(crate) struct Context {
    pub(crate) hub: Arc<Hub>,
    pub(crate) broker: Arc<dyn Broker>,
    pub(crate) metrics: Arc<Metrics>,
    pub(crate) max_topic_length: usize,
}

/// The node's running sources. Dropping it stops them.
pub(crate) struct Sources {
    states: Vec<(&'static str, String, Arc<SourceState>)>,
    cancel: CancellationToken,
    tasks: TaskTracker,
}

impl Sources {
    /// Starts one task per configured source. `cancel` is the node's
    /// shutdown token's child.
    pub(crate) fn start(
        config: &SourcesConfig,
        ctx: Context,
        cancel: CancellationToken,
    ) -> Sources {
        let tasks = TaskTracker::new();
        let mut states = Vec::new();
        for src in &config.postgres {
            let state = Arc::new(SourceState::default());
            states.push(("postgres", src.channel.clone(), state.clone()));
            tasks.spawn(postgres::run(
                src.clone(),
                ctx.clone(),
                state,
                cancel.clone(),
                tasks.clone(),
            ));
        }
        tasks.close();
        Sources {
            states,
            cancel,
            tasks,
        }
    }

    pub(crate) fn status(&self) -> Vec<SourceStatus> {
        self.states
            .iter()
            .map(|(kind, channel, s)| SourceStatus {
                kind,
                channel: channel.clone(),
                connected: s.connected.load(Ordering::Relaxed),
                notifications: s.notifications.load(Ordering::Relaxed),
                errors: s.errors.load(Ordering::Relaxed),
                reconnects: s.connections.load(Ordering::Relaxed).saturating_sub(1),
            })
            .collect()
    }

    /// Stops every source and waits (up to `timeout`) for their connections
    /// to close. Returns false if some did not finish in time.
    pub(crate) async fn stop(&self, timeout: Duration) -> bool {
        self.cancel.cancel();
        tokio::time::timeout(timeout, self.tasks.wait())
            .await
            .is_ok()
    }
}

impl Drop for Sources {
    fn drop(&mut self) {
        self.cancel.cancel();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn source(topic: &str) -> PostgresSource {
        PostgresSource::new(
            "postgres://postgres@127.0.0.1/shop",
            "product_change",
            TopicTemplate::parse(topic).unwrap_or_else(|e| panic!("{e}")),
        )
    }

    #[test]
    fn publication_renders_topic_and_keeps_payload_verbatim() {
        let payload = r#"{"action":"INSERT", "product":{"productId":7,"name":"x"}}"#;
        let mut s = source("products.{product.productId}");
        let p = s
            .publication(payload, 256)
            .unwrap_or_else(|e| panic!("{e}"));
        assert!(matches!(&p.target, Target::Topic(t) if t.as_str() == "products.7"));
        assert_eq!(&p.data[..], payload.as_bytes());
        s.data = Some(DataSelector::parse("{product}").unwrap_or_else(|e| panic!("{e}")));
        let p = s
            .publication(payload, 256)
            .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(&p.data[..], br#"{"productId":7,"name":"x"}"#);
        s.data = Some(DataSelector::parse("{nope}").unwrap_or_else(|e| panic!("{e}")));
        assert!(matches!(
            s.publication(payload, 256),
            Err(RenderError::Missing(_))
        ));
        assert!(matches!(
            s.publication("{", 256),
            Err(RenderError::NotJson(_))
        ));
        assert!(matches!(
            source("a.{b}").publication(r#"{"b":"x"}"#, 2),
            Err(RenderError::Topic { .. })
        ));
    }

    #[test]
    fn validation() {
        let ok = source("products.{product.productId}");
        assert_eq!(ok.validate(256), Ok(()));
        let check = |f: &dyn Fn(&mut PostgresSource)| {
            let mut s = ok.clone();
            f(&mut s);
            s.validate(256)
        };
        assert!(check(&|s| s.url = " ".into()).is_err());
        assert!(check(&|s| s.url = "postgres://[bad".into()).is_err());
        assert!(check(&|s| s.url = "postgres://h/db?sslmode=require".into()).is_err());
        assert!(check(&|s| s.url = "host=/run/postgresql user=postgres".into()).is_ok());
        assert!(check(&|s| s.channel = String::new()).is_err());
        assert!(check(&|s| s.channel = "x".repeat(64)).is_err());
        assert!(check(&|s| s.channel = "a\nb".into()).is_err());
        assert!(check(&|s| s.channel = "Weird \"name\"".into()).is_ok());
        assert!(check(&|s| s.reconnect_delay_min = Duration::ZERO).is_err());
        assert!(check(&|s| s.reconnect_delay_min = Duration::from_secs(60)).is_err());
        assert!(check(&|s| s.ping_interval = Duration::ZERO).is_err());
        assert!(
            ok.validate(5).is_err(),
            "template longer than the topic limit"
        );
    }

    #[test]
    fn toml_shape() {
        let text = r#"
            [[postgres]]
            url = "postgres://postgres@127.0.0.1:5432/shop"
            channel = "product_change"
            topic = "products.{product.productId}"
            data = "{product}"
            deliver = "local"
            reconnect_delay_max = "5s"
        "#;
        let c: SourcesConfig = toml::from_str(text).unwrap_or_else(|e| panic!("{e}"));
        let s = &c.postgres[0];
        assert_eq!(s.topic.as_str(), "products.{product.productId}");
        assert_eq!(s.data.as_ref().map(|d| d.as_str()), Some("{product}"));
        assert_eq!(s.deliver, Deliver::Local);
        assert_eq!(s.reconnect_delay_max, Duration::from_secs(5));
        assert_eq!(s.ping_interval, Duration::from_secs(30));
        let back: SourcesConfig = toml::from_str(&toml::to_string(&c).unwrap_or_default())
            .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(back, c);
        let bad = text.replace(
            "products.{product.productId}",
            "products.{product.productId",
        );
        let Err(e) = toml::from_str::<SourcesConfig>(&bad) else {
            panic!("an unclosed placeholder is rejected")
        };
        assert!(e.to_string().contains("unclosed"), "{e}");
        assert!(toml::from_str::<SourcesConfig>(&text.replace("deliver", "delivr")).is_err());
    }
}
