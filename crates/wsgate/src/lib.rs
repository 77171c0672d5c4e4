//! wsgate: a real-time WebSocket gateway.
//!
//! Clients hold WebSocket connections and speak JSON-RPC 2.0
//! (`subscribe`, `publish`, ...); backend services publish over the HTTP API,
//! in-process through [`Gateway::publish`], or on the backbone. This crate is
//! the whole gateway as a library; the `wsgate` binary is a thin CLI over it.
//!
//! Layout (see ARCHITECTURE.md for the path of one message):
//!
//! * [`topic`] — topic and pattern grammar (pure).
//! * [`protocol`] — JSON-RPC parsing and encoding (pure: bytes in, typed
//!   values out).
//! * [`trie`] — the wildcard subscription index.
//! * [`queue`] — the bounded per-connection outbound queue and the
//!   slow-consumer policy.
//! * [`hub`] — topic → connections, fan-out, reference-counted backbone
//!   interest.
//! * [`broker`] — the backbone trait and the embedded in-memory broker.
//! * [`ws`] — RFC 6455 framing (pure), used by the session.
//! * `session` — the task that owns one socket (I/O).
//! * `rpc` — a connection's protocol state and the method implementations.
//! * `server` — HTTP routes, the WebSocket upgrade, the accept loop.
//! * [`auth`] — JWT identity, topic permissions, API keys, origins.
//! * [`limits`] — request rate, per-IP/per-user connections, memory
//!   pressure; `tls` — certificates for `serve`, reloaded on change.
//! * [`source`] — inbound sources: Postgres `LISTEN`/`NOTIFY` mapped to
//!   topics by templates.
//! * [`config`], [`metrics`], [`error`] — configuration layers, Prometheus
//!   metrics, and the single mapping of errors to JSON-RPC codes, HTTP
//!   statuses and close codes.
//!
//! Embedding (a Rust service mounting the gateway in its own axum router):
//!
//! ```no_run
//! # async fn demo() -> Result<(), Box<dyn std::error::Error>> {
//! use wsgate::{Config, Gateway};
//! #[derive(serde::Serialize)]
//! struct Price { sku: u32, cents: u64 }
//!
//! let gateway = Gateway::new(Config::default())?;
//! let app = axum::Router::new().nest("/realtime", gateway.router());
//! let prices = gateway.topic::<Price>("prices.eu")?;
//! prices.publish(&Price { sku: 7, cents: 1999 }).await?;
//! # let _ = app; Ok(()) }
//! ```

pub mod auth;
pub mod broker;
pub mod config;
pub mod error;
pub mod hub;
pub mod limits;
pub mod metrics;
pub mod protocol;
pub mod queue;
mod rpc;
mod server;
mod session;
pub mod source;
mod tls;
pub mod topic;
pub mod trie;
pub mod ws;

use std::marker::PhantomData;
use std::sync::Arc;
use std::sync::atomic::AtomicUsize;

use bytes::Bytes;
use serde::Serialize;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

pub use broker::{Broker, MemoryBroker, PublishAck};
pub use config::Config;
pub use error::{CloseReason, Error};
pub use metrics::Metrics;
pub use topic::{Pattern, Topic, TopicError};

use broker::{Publication, Target};
use hub::Hub;

/// Binds a listening socket with a backlog of 4096 connections (the OS caps
/// it at `net.core.somaxconn`), so a burst of reconnecting clients is not
/// turned away with SYN retries.
pub fn bind(addr: std::net::SocketAddr) -> std::io::Result<TcpListener> {
    let socket = if addr.is_ipv4() {
        tokio::net::TcpSocket::new_v4()?
    } else {
        tokio::net::TcpSocket::new_v6()?
    };
    socket.set_reuseaddr(true)?;
    socket.bind(addr)?;
    socket.listen(4096)
}

/// State shared by every part of one node.
pub(crate) struct Shared {
    pub(crate) config: Config,
    pub(crate) hub: Arc<Hub>,
    pub(crate) broker: Arc<dyn Broker>,
    pub(crate) metrics: Arc<Metrics>,
    /// Token verification, permissions, API keys, origins.
    pub(crate) auth: auth::Auth,
    /// Cancelled when the node shuts down; sessions then flush and close 1001.
    pub(crate) shutdown: CancellationToken,
    pub(crate) sessions: TaskTracker,
    /// WebSocket connections admitted (for `limits.max_connections`).
    pub(crate) admitted: AtomicUsize,
    /// Per-IP, per-user and memory-pressure admission state.
    pub(crate) limits: limits::ConnLimits,
    /// `[tls]`: the certificate for `serve`, or why it could not be loaded.
    pub(crate) tls: Result<Option<Arc<tls::Tls>>, String>,
    /// Inbound sources (`[sources]`), running from construction until
    /// shutdown (or drop).
    pub(crate) sources: source::Sources,
}

impl Shared {
    pub(crate) async fn publish(&self, publication: Publication) -> Result<PublishAck, Error> {
        Ok(self.broker.publish(publication).await?)
    }
}

/// A running gateway node. Cheap to clone.
#[derive(Clone)]
pub struct Gateway {
    shared: Arc<Shared>,
}

impl Gateway {
    /// Builds a node with the backbone named in `config.broker`. Must be
    /// called inside a Tokio runtime.
    pub fn new(config: Config) -> Result<Gateway, Error> {
        config
            .validate()
            .map_err(|e| Error::InvalidParams(e.to_string()))?;
        let auth = auth::Auth::new(&config).map_err(Error::InvalidParams)?;
        // Fail early on unreadable certificate files (loaded again below).
        tls::Tls::from_config(&config.tls).map_err(Error::InvalidParams)?;
        let broker = broker::from_config(&config.broker)?;
        Ok(Self::assemble(config, broker, auth))
    }

    /// Builds a node on a given backbone implementation. If the `[auth]`
    /// keys cannot be loaded, the node refuses every connection and API
    /// call (use [`Gateway::new`] to get the error instead).
    pub fn with_broker(config: Config, broker: Arc<dyn Broker>) -> Gateway {
        let auth = auth::Auth::new(&config).unwrap_or_else(|e| {
            tracing::error!(error = %e, "invalid [auth] configuration: refusing all connections");
            auth::Auth::deny_all()
        });
        Self::assemble(config, broker, auth)
    }

    fn assemble(config: Config, broker: Arc<dyn Broker>, auth: auth::Auth) -> Gateway {
        let metrics = Arc::new(Metrics::new());
        let hub = Hub::start(broker.clone(), metrics.clone());
        let shutdown = CancellationToken::new();
        let sources = source::Sources::start(
            &config.sources,
            source::Context {
                hub: hub.clone(),
                broker: broker.clone(),
                metrics: metrics.clone(),
                max_topic_length: config.limits.max_topic_length,
            },
            shutdown.child_token(),
        );
        let conn_limits = limits::ConnLimits::new(&config.limits);
        let tls = tls::Tls::from_config(&config.tls);
        if let Err(e) = &tls {
            tracing::error!(error = %e, "invalid [tls] configuration: serve will fail");
        }
        Gateway {
            shared: Arc::new(Shared {
                config,
                hub,
                broker,
                metrics,
                auth,
                shutdown,
                sessions: TaskTracker::new(),
                admitted: AtomicUsize::new(0),
                limits: conn_limits,
                tls,
                sources,
            }),
        }
    }

    /// The gateway's routes (`/ws`, `/api/*`, `/healthz`, `/readyz`,
    /// `/metrics`, `/`), ready to serve or to `nest` in another router.
    pub fn router(&self) -> axum::Router {
        server::router(self.shared.clone())
    }

    /// Serves on `listener` until `signal` resolves, then shuts down
    /// gracefully (see [`Gateway::shutdown`]).
    pub async fn serve(
        &self,
        listener: TcpListener,
        signal: impl std::future::Future<Output = ()>,
    ) -> std::io::Result<()> {
        server::serve(self, listener, signal).await
    }

    /// Stops the node: new upgrades are refused, every session flushes what
    /// is queued and closes with 1001 (going away), and the call waits up to
    /// `shutdown.grace` for them. Returns false if the grace period ran out.
    pub async fn shutdown(&self) -> bool {
        let s = &self.shared;
        s.shutdown.cancel();
        s.hub.going_away();
        s.sessions.close();
        let grace = s.config.shutdown.grace;
        let done = tokio::time::timeout(grace, s.sessions.wait()).await.is_ok();
        if !done {
            tracing::warn!(
                remaining = s.hub.connections(),
                ?grace,
                "shutdown grace period over; cutting the remaining connections"
            );
        }
        if !s.sources.stop(grace).await {
            tracing::warn!("inbound sources did not stop within the grace period");
        }
        s.broker.close().await;
        done
    }

    /// Publishes any serializable value to `topic`, as every subscriber's
    /// `data`.
    pub async fn publish<T: Serialize + ?Sized>(
        &self,
        topic: &str,
        value: &T,
    ) -> Result<PublishAck, Error> {
        self.publish_to(self.parse_topic(topic)?, value).await
    }

    fn parse_topic(&self, topic: &str) -> Result<Topic, Error> {
        Topic::parse(topic, self.shared.config.limits.max_topic_length).map_err(|reason| {
            Error::InvalidTopic {
                topic: topic.to_string(),
                reason,
            }
        })
    }

    async fn publish_to<T: Serialize + ?Sized>(
        &self,
        topic: Topic,
        value: &T,
    ) -> Result<PublishAck, Error> {
        let data = serde_json::to_vec(value).map_err(|e| Error::InvalidParams(e.to_string()))?;
        self.shared
            .publish(Publication {
                target: Target::Topic(topic),
                data: Bytes::from(data),
            })
            .await
    }

    /// A typed handle on one topic (seed 001's typed topic): only `T` can be
    /// published on it.
    pub fn topic<T: Serialize>(&self, topic: &str) -> Result<TypedTopic<T>, Error> {
        Ok(TypedTopic {
            gateway: self.clone(),
            topic: self.parse_topic(topic)?,
            _type: PhantomData,
        })
    }

    pub fn config(&self) -> &Config {
        &self.shared.config
    }

    pub fn metrics(&self) -> &Metrics {
        &self.shared.metrics
    }

    /// The backbone's name ("memory", "nats", ...).
    pub fn broker_name(&self) -> &'static str {
        self.shared.broker.name()
    }

    /// WebSocket connections currently open on this node.
    pub fn connections(&self) -> usize {
        self.shared.hub.connections()
    }

    /// The state of each inbound source (`[sources]`), in configuration
    /// order. A disconnected source does not make the node unready.
    pub fn sources(&self) -> Vec<source::SourceStatus> {
        self.shared.sources.status()
    }
}

/// A topic on which values of type `T` are published.
pub struct TypedTopic<T> {
    gateway: Gateway,
    topic: Topic,
    _type: PhantomData<fn(&T)>,
}

impl<T> Clone for TypedTopic<T> {
    fn clone(&self) -> Self {
        TypedTopic {
            gateway: self.gateway.clone(),
            topic: self.topic.clone(),
            _type: PhantomData,
        }
    }
}

impl<T: Serialize> TypedTopic<T> {
    pub async fn publish(&self, value: &T) -> Result<PublishAck, Error> {
        self.gateway.publish_to(self.topic.clone(), value).await
    }

    pub fn name(&self) -> &Topic {
        &self.topic
    }
}
