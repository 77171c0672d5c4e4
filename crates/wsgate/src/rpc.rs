//! Running JSON-RPC calls for one connection: the protocol-level state of a
//! session (its subscriptions — the hub's reverse index — and what is known
//! about the peer) and the method implementations. Socket I/O lives in
//! `session`; this module only turns parsed requests into hub/broker calls
//! and responses queued on the connection's [`Outbound`].

use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;

use bytes::Bytes;
use rustc_hash::FxHashSet;

use crate::Shared;
use crate::auth::ConnAuth;
use crate::broker::{Publication, Target};
use crate::error::Error;
use crate::protocol::{self, Call, Incoming, Request, TokenParam};
use crate::queue::{Frame, Outbound, Pushed};
use crate::topic::Pattern;
use crate::trie::ConnId;

/// What the upgrade learned about the peer, handed to its session.
#[derive(Debug, Clone, Default)]
pub(crate) struct ConnInfo {
    /// The TCP peer, when the server knows it.
    pub(crate) peer: Option<SocketAddr>,
    /// Its verified identity (if any) and permissions. The default is
    /// anonymous with no permissions.
    pub(crate) auth: ConnAuth,
}

/// Protocol-level state of one connection.
pub(crate) struct Session {
    pub(crate) id: ConnId,
    pub(crate) out: Arc<Outbound>,
    /// The reverse index: every pattern this connection subscribes to.
    pub(crate) subs: FxHashSet<Pattern>,
    pub(crate) gw: Arc<Shared>,
    /// What the upgrade learned about the peer, identity and permissions.
    pub(crate) info: ConnInfo,
    /// When the token expires (plus leeway and grace), for connections with
    /// a token; `refresh` moves it. Watched by [`Session::token_expired`].
    expiry: Option<tokio::sync::watch::Sender<tokio::time::Instant>>,
}

impl Session {
    pub(crate) fn new(id: ConnId, out: Arc<Outbound>, gw: Arc<Shared>, info: ConnInfo) -> Self {
        let expiry = info.auth.deadline.map(tokio::sync::watch::Sender::new);
        Session {
            id,
            out,
            subs: FxHashSet::default(),
            gw,
            info,
            expiry,
        }
    }

    /// The deadline after which the connection must close with 4003
    /// (`exp + auth.leeway + auth.expiry_grace`), if it has a token.
    #[allow(dead_code)]
    pub(crate) fn token_expiry(&self) -> Option<tokio::time::Instant> {
        self.expiry.as_ref().map(|tx| *tx.borrow())
    }

    /// Resolves when the connection's token has expired (plus leeway and
    /// grace) without a `refresh`; a `refresh` re-arms it. Never resolves
    /// for connections without a token. Independent of `self`, so the
    /// session can poll it next to the reader; boxed, so an idle connection
    /// only carries a pointer (and nothing is allocated without a token).
    pub(crate) fn token_expired(&self) -> Pin<Box<dyn Future<Output = ()> + Send>> {
        let Some(tx) = &self.expiry else {
            return Box::pin(std::future::pending());
        };
        let mut rx = tx.subscribe();
        Box::pin(async move {
            loop {
                let deadline = *rx.borrow_and_update();
                // Checked here, not trusted from the timer, which may clamp
                // far deadlines and wake early.
                if tokio::time::Instant::now() >= deadline {
                    return;
                }
                tokio::select! {
                    () = tokio::time::sleep_until(deadline) => {}
                    changed = rx.changed() => {
                        if changed.is_err() {
                            // The session is gone.
                            return std::future::pending().await;
                        }
                    }
                }
            }
        })
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
            Call::Subscribe(patterns) => {
                if let Some(p) = patterns
                    .iter()
                    .find(|p| !self.info.auth.permissions.can_subscribe(p))
                {
                    return Err(Error::Forbidden(format!(
                        "not allowed to subscribe to {:?}",
                        p.as_str()
                    )));
                }
                self.subscribe(patterns).await
            }
            Call::Unsubscribe(patterns) => {
                let held: Vec<Pattern> = patterns
                    .into_iter()
                    .filter(|p| self.subs.remove(p))
                    .collect();
                self.gw.hub.unsubscribe(self.id, &held).await;
                Ok(protocol::encode_topic_list("unsubscribed", &held))
            }
            Call::Publish { topic, data } => {
                if !self.info.auth.permissions.can_publish(&topic) {
                    return Err(Error::Forbidden(format!(
                        "not allowed to publish to {:?}",
                        topic.as_str()
                    )));
                }
                self.gw
                    .publish(Publication {
                        target: Target::Topic(topic),
                        data: Bytes::copy_from_slice(data.get().as_bytes()),
                    })
                    .await?;
                Ok("{}".into())
            }
            Call::Broadcast { data } => {
                if !self.info.auth.permissions.can_broadcast() {
                    return Err(Error::Forbidden("not allowed to broadcast".into()));
                }
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
            Call::Refresh(token) => self.refresh(token).await,
        }
    }

    /// `refresh`: verifies a new token for the same `sub`, replaces the
    /// connection's permissions and expiry, and drops the subscriptions the
    /// new permissions no longer cover.
    async fn refresh(&mut self, token: TokenParam<'_>) -> Result<String, Error> {
        let Some(current) = &self.info.auth.identity else {
            return Err(Error::Forbidden(
                "refresh needs a connection opened with a token".into(),
            ));
        };
        let verified = self.gw.auth.verify(token.as_str(), self.info.peer)?;
        if verified.sub != current.sub {
            return Err(Error::Forbidden(
                "the new token is for a different sub".into(),
            ));
        }
        let auth = self.gw.auth.conn_auth(&verified);
        let mut revoked: Vec<Pattern> = self
            .subs
            .iter()
            .filter(|p| !auth.permissions.can_subscribe(p))
            .cloned()
            .collect();
        revoked.sort();
        for p in &revoked {
            self.subs.remove(p);
        }
        if !revoked.is_empty() {
            self.gw.hub.unsubscribe(self.id, &revoked).await;
        }
        if let (Some(tx), Some(deadline)) = (&self.expiry, auth.deadline) {
            tx.send_replace(deadline);
        }
        self.info.auth = auth;
        let mut out = format!(r#"{{"exp":{},"#, verified.exp);
        out.push_str(&protocol::encode_topic_list("unsubscribed", &revoked)[1..]);
        Ok(out)
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
