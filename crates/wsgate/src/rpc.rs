//! Running JSON-RPC calls for one connection: the protocol-level state of a
//! session (its subscriptions — the hub's reverse index — and what is known
//! about the peer) and the method implementations. Socket I/O lives in
//! `session`; this module only turns parsed requests into hub/broker calls
//! and responses queued on the connection's [`Outbound`].

use std::net::SocketAddr;
use std::sync::Arc;

use bytes::Bytes;
use rustc_hash::FxHashSet;

use crate::Shared;
use crate::broker::{Publication, Target};
use crate::error::Error;
use crate::protocol::{self, Call, Incoming, Request};
use crate::queue::{Frame, Outbound, Pushed};
use crate::topic::Pattern;
use crate::trie::ConnId;

/// What the upgrade learned about the peer, handed to its session.
#[derive(Debug, Clone, Default)]
pub(crate) struct ConnInfo {
    /// The TCP peer, when the server knows it.
    pub(crate) peer: Option<SocketAddr>,
}

/// Protocol-level state of one connection.
pub(crate) struct Session {
    pub(crate) id: ConnId,
    pub(crate) out: Arc<Outbound>,
    /// The reverse index: every pattern this connection subscribes to.
    pub(crate) subs: FxHashSet<Pattern>,
    pub(crate) gw: Arc<Shared>,
    /// What the upgrade learned about the peer (identity arrives with auth).
    #[allow(dead_code)]
    pub(crate) info: ConnInfo,
}

impl Session {
    pub(crate) fn new(id: ConnId, out: Arc<Outbound>, gw: Arc<Shared>, info: ConnInfo) -> Self {
        Session {
            id,
            out,
            subs: FxHashSet::default(),
            gw,
            info,
        }
    }

    /// Backpressure on requests (see [`Outbound::room_for_responses`]); the
    /// wait is boxed so idle connections do not carry its state.
    pub(crate) async fn wait_for_room(&self) {
        if !self.out.has_room_for_responses() {
            Box::pin(self.out.room_for_responses()).await;
        }
    }

    pub(crate) fn respond(&self, text: String) {
        let pushed = self.out.push(Frame {
            payload: Bytes::from(text),
            published_at: None,
        });
        if pushed == Pushed::Overflow {
            self.gw.metrics.slow_consumer_disconnects.inc();
        }
    }

    pub(crate) async fn handle_text(&mut self, text: &str) {
        let limits = self.gw.config.parse_limits();
        match protocol::parse(text, &limits) {
            Incoming::Invalid(e) => {
                self.gw.metrics.protocol_errors.inc();
                self.respond(protocol::encode_error(None, &e));
            }
            Incoming::Single(req) => {
                if let Some(resp) = self.handle(req).await {
                    self.respond(resp);
                }
            }
            Incoming::Batch(reqs) => {
                let mut parts = Vec::new();
                for req in reqs {
                    if let Some(resp) = self.handle(req).await {
                        parts.push(resp);
                    }
                }
                if !parts.is_empty() {
                    self.respond(format!("[{}]", parts.join(",")));
                }
            }
        }
    }

    /// Runs one request; returns its response unless it is a notification.
    async fn handle(&mut self, req: Request<'_>) -> Option<String> {
        let result = match req.call {
            Ok(call) => self.call(call).await,
            Err(e) => Err(e),
        };
        if result.is_err() {
            self.gw.metrics.protocol_errors.inc();
        }
        let id = req.id?;
        Some(match result {
            Ok(r) => protocol::encode_result(id, &r),
            Err(e) => protocol::encode_error(Some(id), &e),
        })
    }

    async fn call(&mut self, call: Call<'_>) -> Result<String, Error> {
        match call {
            Call::Subscribe(patterns) => self.subscribe(patterns).await,
            Call::Unsubscribe(patterns) => {
                let held: Vec<Pattern> = patterns
                    .into_iter()
                    .filter(|p| self.subs.remove(p))
                    .collect();
                self.gw.hub.unsubscribe(self.id, &held).await;
                Ok(protocol::encode_topic_list("unsubscribed", &held))
            }
            Call::Publish { topic, data } => {
                self.gw
                    .publish(Publication {
                        target: Target::Topic(topic),
                        data: Bytes::copy_from_slice(data.get().as_bytes()),
                    })
                    .await?;
                Ok("{}".into())
            }
            Call::Broadcast { data } => {
                self.gw
                    .publish(Publication {
                        target: Target::Broadcast,
                        data: Bytes::copy_from_slice(data.get().as_bytes()),
                    })
                    .await?;
                Ok("{}".into())
            }
            Call::SelfReply(params) => Ok(params.map_or("null", |p| p.get()).to_string()),
            Call::Ping => Ok("\"pong\"".into()),
        }
    }

    async fn subscribe(&mut self, patterns: Vec<Pattern>) -> Result<String, Error> {
        let mut fresh: Vec<Pattern> = Vec::new();
        {
            let mut seen = FxHashSet::default();
            for p in &patterns {
                if !self.subs.contains(p) && seen.insert(p) {
                    fresh.push(p.clone());
                }
            }
        }
        let limit = self.gw.config.limits.max_subscriptions_per_connection;
        if self.subs.len() + fresh.len() > limit {
            return Err(Error::TooManySubscriptions { limit });
        }
        // Record in the reverse index before awaiting, so that a session torn
        // down mid-call still removes what the hub holds.
        self.gw.hub.add(self.id, &self.out, &fresh);
        self.subs.extend(fresh.iter().cloned());
        if let Err(e) = self.gw.hub.reconcile(patterns.clone(), true).await {
            for p in &fresh {
                self.subs.remove(p);
            }
            self.gw.hub.unsubscribe(self.id, &fresh).await;
            return Err(e.into());
        }
        Ok(protocol::encode_topic_list("subscribed", &patterns))
    }
}
