//! HTTP surface: the WebSocket upgrade, the HTTP publish API, health,
//! readiness, metrics and the demo chat page; plus the accept loop used by
//! `wsgate serve`.

use std::borrow::Cow;
use std::sync::Arc;
use std::sync::atomic::Ordering;

use axum::Router;
use axum::body::Body;
use axum::extract::{Request, State};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use bytes::Bytes;
use http::{HeaderMap, HeaderValue, StatusCode, header};
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use serde::Deserialize;
use serde_json::value::RawValue;
use tokio::net::TcpListener;
use tokio_tungstenite::tungstenite::handshake::derive_accept_key;
use tokio_util::task::TaskTracker;

use crate::broker::{Publication, Target};
use crate::error::Error;
use crate::limits::{Held, Refusal};
use crate::rpc::ConnInfo;
use crate::topic::Topic;
use crate::{Gateway, Shared, session};

const INDEX_HTML: &str = include_str!("../assets/index.html");

/// The gateway's routes, to serve alone or to nest in an application's router.
pub(crate) fn router(shared: Arc<Shared>) -> Router {
    Router::new()
        .route("/", get(index))
        .route("/ws", get(ws_upgrade).connect(ws_upgrade))
        .route("/api/publish", post(api_publish))
        .route("/api/broadcast", post(api_broadcast))
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
        .with_state(shared)
}

async fn index() -> impl IntoResponse {
    (
        [(header::CONTENT_TYPE, "text/html; charset=utf-8")],
        INDEX_HTML,
    )
}

fn json(status: StatusCode, body: String) -> Response {
    (status, [(header::CONTENT_TYPE, "application/json")], body).into_response()
}

/// Maps an [`Error`] to an HTTP response with a JSON body.
fn error_response(e: &Error) -> Response {
    let body = serde_json::json!({"error": {"code": e.rpc_code(), "message": e.to_string()}});
    let mut resp = json(e.http_status(), body.to_string());
    if matches!(e, Error::Unauthorized(_)) {
        resp.headers_mut()
            .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
    }
    resp
}

async fn healthz() -> Response {
    json(StatusCode::OK, r#"{"status":"ok"}"#.into())
}

async fn readyz(State(gw): State<Arc<Shared>>) -> Response {
    let broker = gw.broker.name();
    if gw.shutdown.is_cancelled() {
        json(
            StatusCode::SERVICE_UNAVAILABLE,
            format!(r#"{{"status":"shutting down","broker":"{broker}"}}"#),
        )
    } else if gw.broker.is_ready() {
        json(
            StatusCode::OK,
            format!(r#"{{"status":"ready","broker":"{broker}"}}"#),
        )
    } else {
        json(
            StatusCode::SERVICE_UNAVAILABLE,
            format!(r#"{{"status":"backbone unavailable","broker":"{broker}"}}"#),
        )
    }
}

async fn metrics(State(gw): State<Arc<Shared>>) -> Response {
    (
        [(
            header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        gw.metrics.render(),
    )
        .into_response()
}

fn header_has_token(headers: &HeaderMap, name: header::HeaderName, token: &str) -> bool {
    headers
        .get_all(name)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|t| t.trim().eq_ignore_ascii_case(token))
}

/// A refused upgrade with `Retry-After`, counted by reason.
fn refuse(gw: &Shared, reason: &'static str, mut resp: Response, retry_after: u64) -> Response {
    gw.metrics.refused(reason);
    if let Ok(v) = HeaderValue::from_str(&retry_after.max(1).to_string()) {
        resp.headers_mut().insert(header::RETRY_AFTER, v);
    }
    resp
}

/// The WebSocket upgrade: an HTTP/1.1 `GET` with `Upgrade: websocket`
/// (answered 101), or an HTTP/2 extended `CONNECT` with `:protocol =
/// websocket` (RFC 8441, answered 200). Admission, in order: shutdown (503),
/// memory pressure (503), the address's upgrade rate (429), origin (403),
/// token (401), then the slots: per address (429), per user (429), per node
/// (503). The cheap checks come first, and the rate limit runs before any
/// token is verified.
async fn ws_upgrade(State(gw): State<Arc<Shared>>, req: Request) -> Response {
    let peer = req
        .extensions()
        .get::<axum::extract::ConnectInfo<std::net::SocketAddr>>()
        .map(|c| c.0);
    let headers = req.headers();
    let extended_connect = req.method() == http::Method::CONNECT;
    if extended_connect {
        let websocket = req.version() == http::Version::HTTP_2
            && req
                .extensions()
                .get::<hyper::ext::Protocol>()
                .is_some_and(|p| p.as_str().eq_ignore_ascii_case("websocket"));
        if !websocket {
            return (
                StatusCode::BAD_REQUEST,
                "CONNECT to this endpoint needs HTTP/2 with :protocol = websocket (RFC 8441)\n",
            )
                .into_response();
        }
    } else if !header_has_token(headers, header::CONNECTION, "upgrade")
        || !header_has_token(headers, header::UPGRADE, "websocket")
    {
        return (
            StatusCode::UPGRADE_REQUIRED,
            [(header::UPGRADE, "websocket")],
            "this endpoint speaks WebSocket (JSON-RPC 2.0); see docs/protocol.md\n",
        )
            .into_response();
    }
    if headers
        .get(header::SEC_WEBSOCKET_VERSION)
        .map(HeaderValue::as_bytes)
        != Some(b"13")
    {
        return (
            StatusCode::UPGRADE_REQUIRED,
            [(header::SEC_WEBSOCKET_VERSION, "13")],
            "unsupported WebSocket version; use 13\n",
        )
            .into_response();
    }
    // HTTP/2 has no key and no accept (RFC 8441 §5).
    let accept = if extended_connect {
        None
    } else {
        let Some(key) = headers.get(header::SEC_WEBSOCKET_KEY) else {
            return (StatusCode::BAD_REQUEST, "missing Sec-WebSocket-Key\n").into_response();
        };
        Some(derive_accept_key(key.as_bytes()))
    };
    if gw.shutdown.is_cancelled() {
        gw.metrics.refused("shutdown");
        return error_response(&Error::ShuttingDown);
    }
    if gw.limits.memory.over_limit(&gw.metrics.memory_rss) {
        let resp = (
            StatusCode::SERVICE_UNAVAILABLE,
            "server under memory pressure\n",
        )
            .into_response();
        return refuse(&gw, "memory", resp, 5);
    }
    let ip = peer.map(|p| p.ip());
    if let Err(wait) = gw.limits.check_rate(ip, tokio::time::Instant::now()) {
        let e = Error::RateLimited("too many connection attempts from this address".into());
        return refuse(
            &gw,
            "ip_rate",
            error_response(&e),
            wait.as_secs_f64().ceil() as u64,
        );
    }
    // Origin (403) and credentials (401), before the connection takes a slot.
    if let Err(e) = gw.auth.check_origin(headers) {
        gw.metrics.refused("origin");
        return error_response(&e);
    }
    let auth = match gw.auth.authenticate(headers, req.uri(), peer) {
        Ok(auth) => auth,
        Err(e) => {
            gw.metrics.refused("token");
            return error_response(&e);
        }
    };
    let sub = auth.identity.as_ref().map(|i| i.sub.as_str());
    let held = match gw.limits.acquire(ip, sub) {
        Ok(held) => held,
        Err(Refusal::PerIp) => {
            let e = Error::RateLimited("too many connections from this address".into());
            return refuse(&gw, "ip_connections", error_response(&e), 5);
        }
        Err(Refusal::PerUser) => {
            let e = Error::RateLimited("too many connections for this user".into());
            return refuse(&gw, "user_connections", error_response(&e), 5);
        }
    };
    let info = ConnInfo { peer, auth };
    let Some(permit) = Admission::try_new(&gw, held) else {
        let resp = (
            StatusCode::SERVICE_UNAVAILABLE,
            "connection limit reached\n",
        )
            .into_response();
        return refuse(&gw, "connection_limit", resp, 5);
    };
    let on_upgrade = hyper::upgrade::on(req);
    let tracker = gw.sessions.clone();
    let fut = async move {
        let _permit = permit;
        match on_upgrade.await {
            // A plain TCP connection: split it without a lock.
            Ok(upgraded) => match upgraded.downcast::<TokioIo<tokio::net::TcpStream>>() {
                Ok(parts) => {
                    let (r, w) = parts.io.into_inner().into_split();
                    // Copied: the original slices hyper's whole read buffer.
                    let early = Bytes::copy_from_slice(&parts.read_buf);
                    drop(parts.read_buf);
                    session::run(r, w, early, gw, info).await;
                }
                // Any other transport: TLS, an HTTP/2 stream, an embedding
                // server's own I/O type.
                Err(upgraded) => {
                    let (r, w) = tokio::io::split(TokioIo::new(upgraded));
                    session::run(r, w, Bytes::new(), gw, info).await;
                }
            },
            Err(e) => tracing::debug!(error = %e, "upgrade failed"),
        }
    };
    tracker.spawn(fut);
    let resp = match accept {
        Some(accept) => Response::builder()
            .status(StatusCode::SWITCHING_PROTOCOLS)
            .header(header::UPGRADE, "websocket")
            .header(header::CONNECTION, "upgrade")
            .header(header::SEC_WEBSOCKET_ACCEPT, accept)
            .body(Body::empty()),
        None => Response::builder()
            .status(StatusCode::OK)
            .body(Body::empty()),
    };
    resp.unwrap_or_else(|_| StatusCode::INTERNAL_SERVER_ERROR.into_response())
}

/// Counts an admitted WebSocket connection against `limits.max_connections`
/// and holds its per-address and per-user counts.
struct Admission {
    gw: Arc<Shared>,
    /// Boxed, and `None` when the per-address/user limits are off: an idle
    /// connection then carries one pointer for them.
    held: Option<Box<Held>>,
}

impl Admission {
    /// Takes a node slot; on failure the per-address/user counts in `held`
    /// are given back.
    fn try_new(gw: &Arc<Shared>, held: Held) -> Option<Self> {
        let max = gw.config.limits.max_connections;
        let ok = gw
            .admitted
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                (n < max).then_some(n + 1)
            })
            .is_ok();
        if !ok {
            gw.limits.release(held);
            return None;
        }
        Some(Admission {
            gw: gw.clone(),
            held: (!held.is_empty()).then(|| Box::new(held)),
        })
    }
}

impl Drop for Admission {
    fn drop(&mut self) {
        self.gw.admitted.fetch_sub(1, Ordering::AcqRel);
        if let Some(held) = self.held.take() {
            self.gw.limits.release(*held);
        }
    }
}

/// Every HTTP API call passes through here first: `Authorization: Bearer
/// <key>` against `auth.api_keys` (see [`crate::auth::Auth::authorize_api`]).
fn authorize_api(gw: &Shared, headers: &HeaderMap) -> Result<(), Error> {
    gw.auth.authorize_api(headers)
}

async fn read_body(gw: &Shared, body: Body) -> Result<Bytes, Error> {
    let limit = gw.config.limits.max_message_size;
    axum::body::to_bytes(body, limit)
        .await
        .map_err(|_| Error::TooLarge { limit })
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct PublishBody<'a> {
    #[serde(borrow)]
    topic: Cow<'a, str>,
    #[serde(borrow)]
    data: &'a RawValue,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct BroadcastBody<'a> {
    #[serde(borrow)]
    topics: Vec<Cow<'a, str>>,
    #[serde(borrow)]
    data: &'a RawValue,
}

fn parse_body<'a, T: Deserialize<'a>>(gw: &Shared, bytes: &'a [u8]) -> Result<T, Error> {
    let max = gw.config.limits.max_json_depth;
    if crate::protocol::nesting_exceeds(bytes, max) {
        return Err(Error::InvalidParams(format!(
            "JSON nests deeper than {max} levels"
        )));
    }
    serde_json::from_slice(bytes).map_err(|e| {
        if e.is_syntax() || e.is_eof() {
            Error::Parse(e.to_string())
        } else {
            Error::InvalidParams(e.to_string())
        }
    })
}

fn topic(gw: &Shared, s: &str) -> Result<Topic, Error> {
    Topic::parse(s, gw.config.limits.max_topic_length).map_err(|reason| Error::InvalidTopic {
        topic: s.chars().take(300).collect(),
        reason,
    })
}

async fn api_publish(State(gw): State<Arc<Shared>>, headers: HeaderMap, body: Body) -> Response {
    let result: Result<(), Error> = async {
        authorize_api(&gw, &headers)?;
        let bytes = read_body(&gw, body).await?;
        let p: PublishBody<'_> = parse_body(&gw, &bytes)?;
        let topic = topic(&gw, &p.topic)?;
        gw.publish(Publication {
            target: Target::Topic(topic),
            data: Bytes::copy_from_slice(p.data.get().as_bytes()),
        })
        .await?;
        Ok(())
    }
    .await;
    match result {
        Ok(()) => json(StatusCode::OK, "{}".into()),
        Err(e) => error_response(&e),
    }
}

async fn api_broadcast(State(gw): State<Arc<Shared>>, headers: HeaderMap, body: Body) -> Response {
    let result: Result<usize, Error> = async {
        authorize_api(&gw, &headers)?;
        let bytes = read_body(&gw, body).await?;
        let p: BroadcastBody<'_> = parse_body(&gw, &bytes)?;
        let limit = gw.config.limits.max_topics_per_request;
        if p.topics.is_empty() {
            return Err(Error::InvalidParams(r#""topics" is empty"#.into()));
        }
        if p.topics.len() > limit {
            return Err(Error::TooManyTopics {
                count: p.topics.len(),
                limit,
            });
        }
        // Validate every topic before publishing any: all or nothing.
        let topics = p
            .topics
            .iter()
            .map(|t| topic(&gw, t))
            .collect::<Result<Vec<_>, _>>()?;
        let data = Bytes::copy_from_slice(p.data.get().as_bytes());
        for t in &topics {
            gw.publish(Publication {
                target: Target::Topic(t.clone()),
                data: data.clone(),
            })
            .await?;
        }
        Ok(topics.len())
    }
    .await;
    match result {
        Ok(n) => json(StatusCode::OK, format!(r#"{{"topics":{n}}}"#)),
        Err(e) => error_response(&e),
    }
}

/// Drives one HTTP connection until it ends or the node shuts down, then
/// lets it finish gracefully. A macro: hyper's HTTP/1 (upgradeable) and
/// HTTP/2 connections share the method names but no trait.
macro_rules! drive {
    ($conn:expr, $stop:expr) => {{
        let conn = $conn;
        tokio::pin!(conn);
        tokio::select! {
            res = conn.as_mut() => {
                if let Err(e) = res {
                    tracing::debug!(error = %e, "http connection error");
                }
            }
            _ = $stop.cancelled() => {
                conn.as_mut().graceful_shutdown();
                let _ = conn.await;
            }
        }
    }};
}

/// Accepts connections until `signal` resolves, then shuts the gateway down
/// gracefully. Plain TCP serves HTTP/1.1; with `[tls]`, each connection is
/// served with the protocol its ALPN negotiated (HTTP/2 or HTTP/1.1).
pub(crate) async fn serve(
    gw: &Gateway,
    listener: TcpListener,
    signal: impl std::future::Future<Output = ()>,
) -> std::io::Result<()> {
    let shared = gw.shared.clone();
    let tls = shared
        .tls
        .clone()
        .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidInput, e))?;
    let router = gw.router();
    let mut http1 = hyper::server::conn::http1::Builder::new();
    http1
        .timer(TokioTimer::new())
        .header_read_timeout(shared.config.limits.handshake_timeout)
        .max_buf_size(16 * 1024);
    let mut http2 = hyper::server::conn::http2::Builder::new(TokioExecutor::new());
    http2
        .timer(TokioTimer::new())
        .enable_connect_protocol()
        .max_header_list_size(16 * 1024)
        .max_concurrent_streams(256);
    if let Some(tls) = &tls {
        // Registered before the first connection, so that a SIGHUP from
        // now on reloads instead of terminating the process.
        let hup = crate::tls::hangup();
        tokio::spawn(
            tls.clone()
                .watch(shared.metrics.clone(), hup, shared.shutdown.clone()),
        );
    }
    let connections = TaskTracker::new();
    tokio::pin!(signal);
    loop {
        let (stream, peer) = tokio::select! {
            _ = &mut signal => break,
            accepted = listener.accept() => match accepted {
                Ok(a) => a,
                Err(e) => {
                    // Out of file descriptors and the like: back off, keep serving.
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        let _ = stream.set_nodelay(true);
        // Each request carries the TCP peer (`ConnectInfo`), as axum::serve does.
        let router = router.clone();
        let service =
            hyper::service::service_fn(move |mut req: http::Request<hyper::body::Incoming>| {
                req.extensions_mut()
                    .insert(axum::extract::ConnectInfo(peer));
                tower::ServiceExt::oneshot(router.clone(), req)
            });
        let stop = shared.shutdown.clone();
        let Some(tls) = &tls else {
            let conn = http1
                .serve_connection(TokioIo::new(stream), service)
                .with_upgrades();
            connections.spawn(async move { drive!(conn, stop) });
            continue;
        };
        let acceptor = tls.acceptor.clone();
        let handshake_timeout = shared.config.limits.handshake_timeout;
        let (http1, http2) = (http1.clone(), http2.clone());
        connections.spawn(async move {
            // The TLS handshake shares the slow-loris bound of the HTTP head.
            let stream =
                match tokio::time::timeout(handshake_timeout, acceptor.accept(stream)).await {
                    Ok(Ok(s)) => s,
                    Ok(Err(e)) => {
                        tracing::debug!(?peer, error = %e, "TLS handshake failed");
                        return;
                    }
                    Err(_) => {
                        tracing::debug!(?peer, "TLS handshake timed out");
                        return;
                    }
                };
            if stream.get_ref().1.alpn_protocol() == Some(crate::tls::ALPN_H2) {
                let conn = http2.serve_connection(TokioIo::new(stream), service);
                drive!(conn, stop)
            } else {
                let conn = http1
                    .serve_connection(TokioIo::new(stream), service)
                    .with_upgrades();
                drive!(conn, stop)
            }
        });
    }
    drop(listener);
    tracing::info!("stopped accepting; shutting down");
    gw.shutdown().await;
    connections.close();
    let _ = tokio::time::timeout(std::time::Duration::from_secs(1), connections.wait()).await;
    Ok(())
}
