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
use crate::broker::{Publication, StreamPosition, Target};
use crate::error::{CloseReason, Error};
use crate::limits::{CallLimiter, Verdict};
use crate::protocol::{self, Call, Incoming, Request, TokenParam};
use crate::queue::{Frame, Outbound, Pushed};
use crate::topic::{Pattern, Topic};
use crate::trie::ConnId;

/// Most messages one `history` call returns.
const MAX_HISTORY: usize = 1000;

/// A topic as the pattern that subscribes to exactly it.
fn topic_pattern(t: &Topic) -> Result<Pattern, Error> {
    Pattern::parse(t.as_str(), usize::MAX).map_err(|reason| Error::InvalidTopic {
        topic: t.as_str().to_string(),
        reason,
    })
}

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
    /// The request rate limit (`limits.message_rate`), if on (boxed: one
    /// pointer per connection when off).
    limiter: Option<Box<CallLimiter>>,
    /// Set when a call decided that the connection must close (persistent
    /// rate-limit abuse); the session's reader takes it after each message.
    pub(crate) close: Option<CloseReason>,
}

impl Session {
    pub(crate) fn new(id: ConnId, out: Arc<Outbound>, gw: Arc<Shared>, info: ConnInfo) -> Self {
        let expiry = info.auth.deadline.map(tokio::sync::watch::Sender::new);
        let limiter =
            CallLimiter::new(&gw.config.limits, tokio::time::Instant::now()).map(Box::new);
        Session {
            id,
            out,
            subs: FxHashSet::default(),
            gw,
            info,
            expiry,
            limiter,
            close: None,
        }
    }

    /// Charges one request against the connection's rate limit. A refused
    /// request is answered -32002 and not run; refusing
    /// `limits.rate_limit_close_after` of them within
    /// `limits.rate_limit_window` also closes the connection (4008).
    fn admit(&mut self) -> Result<(), Error> {
        let Some(limiter) = &mut self.limiter else {
            return Ok(());
        };
        match limiter.check(tokio::time::Instant::now()) {
            Verdict::Allowed => Ok(()),
            verdict => {
                self.gw.metrics.rate_limited.inc();
                if verdict == Verdict::Abusive && self.close.is_none() {
                    tracing::debug!(conn = self.id, peer = ?self.info.peer, "closing: rate limit exceeded persistently");
                    self.gw.metrics.rate_limit_disconnects.inc();
                    self.close = Some(CloseReason::RateLimited);
                }
                Err(Error::RateLimited(format!(
                    "more than {} requests per second",
                    self.gw.config.limits.message_rate
                )))
            }
        }
    }

    /// A binary frame: answered with -32600 (or -32002 when over the rate).
    pub(crate) fn handle_binary(&mut self) {
        self.gw.metrics.protocol_errors.inc();
        let err = self.admit().err().unwrap_or_else(|| {
            Error::InvalidRequest(
                "binary frames are not supported: send JSON-RPC requests as text frames".into(),
            )
        });
        self.respond(protocol::encode_error(None, &err));
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
                let e = self.admit().err().unwrap_or(e);
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
        let result = match (self.admit(), req.call) {
            (Err(e), _) | (Ok(()), Err(e)) => Err(e),
            (Ok(()), Ok(call)) => self.call(call).await,
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
            Call::SubscribeSince {
                topic,
                offset,
                epoch,
            } => {
                let pattern = topic_pattern(&topic)?;
                if !self.info.auth.permissions.can_subscribe(&pattern) {
                    return Err(Error::Forbidden(format!(
                        "not allowed to subscribe to {:?}",
                        topic.as_str()
                    )));
                }
                let since = StreamPosition {
                    offset,
                    epoch: Arc::from(&*epoch),
                };
                self.subscribe_since(topic, pattern, since).await
            }
            Call::History { topic, limit } => {
                if !self
                    .info
                    .auth
                    .permissions
                    .can_read_history(&topic_pattern(&topic)?)
                {
                    return Err(Error::Forbidden(format!(
                        "not allowed to read {:?}",
                        topic.as_str()
                    )));
                }
                let limit = limit.min(MAX_HISTORY);
                let h = self.gw.broker.history(&topic, limit).await?;
                let mut out = String::from("{");
                out.push_str(&protocol::encode_history(
                    &h.epoch,
                    h.messages
                        .iter()
                        .filter_map(|e| Some((e.offset, std::str::from_utf8(&e.data).ok()?))),
                ));
                out.push('}');
                Ok(out)
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

    /// `subscribe` with `since` (one exact topic): subscribes while holding
    /// the topic's live deliveries for this connection, queues the messages
    /// stored after `since`, then the held live ones newer than the last
    /// replayed (no gap, no duplicate), and answers with `recovered`.
    async fn subscribe_since(
        &mut self,
        topic: Topic,
        pattern: Pattern,
        since: StreamPosition,
    ) -> Result<String, Error> {
        if self.subs.contains(&pattern) {
            return Err(Error::InvalidParams(format!(
                "already subscribed to {:?}: unsubscribe before subscribing with \"since\"",
                topic.as_str()
            )));
        }
        let hub = self.gw.hub.clone();
        hub.begin_replay(self.id, &topic);
        if let Err(e) = self.subscribe(vec![pattern.clone()]).await {
            hub.end_replay(self.id, &topic, &self.out, None);
            return Err(e);
        }
        let replay = match self.gw.broker.replay(&topic, &since).await {
            Ok(r) => r,
            Err(e) => {
                hub.end_replay(self.id, &topic, &self.out, None);
                self.subs.remove(&pattern);
                hub.unsubscribe(self.id, std::slice::from_ref(&pattern))
                    .await;
                return Err(e.into());
            }
        };
        let now = std::time::Instant::now();
        for m in &replay.messages {
            let Ok(data) = std::str::from_utf8(&m.data) else {
                continue;
            };
            let payload =
                protocol::encode_message_at(topic.as_str(), data, Some((m.offset, &replay.epoch)));
            if self.out.push(Frame {
                payload,
                published_at: Some(now),
            }) == Pushed::Overflow
            {
                self.gw.metrics.slow_consumer_disconnects.inc();
                break;
            }
        }
        let last = replay.messages.last().map(|m| m.offset);
        let replayed = if replay.recovered {
            last.or(Some(since.offset))
        } else {
            None
        };
        hub.end_replay(self.id, &topic, &self.out, replayed);
        let mut out = protocol::encode_topic_list("subscribed", std::slice::from_ref(&pattern));
        out.pop();
        out.push_str(&format!(
            r#","recovered":{},"replayed":{},"epoch":"#,
            replay.recovered,
            replay.messages.len()
        ));
        out.push_str(&serde_json::to_string(&*replay.epoch).unwrap_or_else(|_| "\"\"".into()));
        out.push('}');
        Ok(out)
    }
}
