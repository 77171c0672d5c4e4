//! One WebSocket connection: a single task owns the socket.
//!
//! The task polls two futures together: the *reader* parses client frames
//! and runs their calls; the *writer* waits on the connection's [`Outbound`]
//! queue, takes everything queued at once, feeds it to the socket and
//! flushes once (write coalescing), and pings on an interval. Responses to the
//! client's own calls go through the same bounded queue as deliveries, so a
//! client that floods requests without reading is a slow consumer like any
//! other.

use std::collections::VecDeque;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

use bytes::Bytes;
use futures_util::stream::{SplitSink, SplitStream};
use futures_util::{SinkExt, StreamExt};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::time::timeout;
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::{self, Message, Utf8Bytes};

use crate::Shared;
use crate::error::{CloseReason, Error};
use crate::protocol;
use crate::queue::{Frame, Outbound, QueueState};
use crate::rpc::{ConnInfo, Session};

/// How a session ended.
#[derive(Debug)]
enum End {
    /// The peer sent a close frame (tungstenite queued the reply).
    PeerClosed,
    /// The socket is gone (EOF, reset); nothing more can be written.
    Gone,
    /// The server closes with this reason.
    Close(CloseReason),
}

/// Runs a connection until it ends, then removes all its state.
pub(crate) async fn run<S>(ws: WebSocketStream<S>, gw: Arc<Shared>, info: ConnInfo)
where
    S: AsyncRead + AsyncWrite + Unpin + Send,
{
    let metrics = gw.metrics.clone();
    metrics.connections.inc();
    metrics.connections_total.inc();
    let out = Arc::new(Outbound::new(gw.config.queue_limits()));
    let id = gw.hub.register(out.clone());
    // Shutdown marks every registered queue; a session registered after
    // that sees the cancelled token instead.
    if gw.shutdown.is_cancelled() {
        out.going_away();
    }
    tracing::debug!(conn = id, peer = ?info.peer, "connected");
    let mut session = Session::new(id, out.clone(), gw.clone(), info);
    let (mut sink, mut stream) = ws.split();
    let start = Instant::now();
    let last_seen = AtomicU64::new(0);

    let end = {
        let reader = read_loop(&mut stream, &mut session, &last_seen, start);
        let writer = write_loop(&mut sink, &out, &gw, &last_seen, start);
        tokio::select! {
            end = reader => end,
            end = writer => end,
        }
    };
    tracing::debug!(conn = id, ?end, "session ending");
    Box::pin(finish(end, sink, stream, session, out, gw)).await;
    metrics.connections.dec();
}

/// Closes the socket as `end` requires and removes the connection's state.
async fn finish<S>(
    end: End,
    mut sink: SplitSink<WebSocketStream<S>, Message>,
    mut stream: SplitStream<WebSocketStream<S>>,
    mut session: Session,
    out: Arc<Outbound>,
    gw: Arc<Shared>,
) where
    S: AsyncRead + AsyncWrite + Unpin,
{
    out.close();
    let write_timeout = gw.config.outbound.write_timeout;
    match end {
        End::Gone => {}
        End::PeerClosed => {
            // Send tungstenite's queued close reply.
            let _ = timeout(write_timeout, sink.flush()).await;
        }
        End::Close(reason) => {
            if reason == CloseReason::GoingAway {
                // Flush what was queued before shutdown began.
                let mut rest = VecDeque::new();
                out.take_all(&mut rest);
                let _ = timeout(write_timeout, write_batch(&mut sink, &mut rest, &gw)).await;
            }
            let frame = CloseFrame {
                code: CloseCode::from(reason.code()),
                reason: Utf8Bytes::from_static(reason.reason()),
            };
            if let Ok(Ok(())) = timeout(write_timeout, sink.send(Message::Close(Some(frame)))).await
            {
                // Wait briefly for the peer's close reply, discarding data.
                let _ = timeout(std::time::Duration::from_secs(2), async {
                    while let Some(Ok(msg)) = stream.next().await {
                        if msg.is_close() {
                            break;
                        }
                    }
                })
                .await;
            }
        }
    }
    let subs = std::mem::take(&mut session.subs);
    gw.hub.unregister(session.id, subs).await;
}

async fn read_loop<S>(
    stream: &mut SplitStream<WebSocketStream<S>>,
    session: &mut Session,
    last_seen: &AtomicU64,
    start: Instant,
) -> End
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let metrics = session.gw.metrics.clone();
    while let Some(msg) = stream.next().await {
        last_seen.store(start.elapsed().as_millis() as u64, Ordering::Relaxed);
        match msg {
            Ok(Message::Text(text)) => {
                session.wait_for_room().await;
                metrics.messages_in.inc();
                metrics.bytes_in.inc_by(text.len() as u64);
                // Boxed: an idle connection's future then carries only the
                // read state, not the request-handling state (measured:
                // docs/benchmarks.md, "memory per idle connection").
                Box::pin(session.handle_text(text.as_str())).await;
            }
            Ok(Message::Binary(bin)) => {
                session.wait_for_room().await;
                metrics.messages_in.inc();
                metrics.bytes_in.inc_by(bin.len() as u64);
                metrics.protocol_errors.inc();
                session.respond(protocol::encode_error(
                    None,
                    &Error::InvalidRequest(
                        "binary frames are not supported: send JSON-RPC requests as text frames"
                            .into(),
                    ),
                ));
            }
            Ok(Message::Close(_)) => return End::PeerClosed,
            Ok(Message::Ping(_) | Message::Pong(_) | Message::Frame(_)) => {}
            Err(e) => return read_error(e),
        }
    }
    End::Gone
}

fn read_error(e: tungstenite::Error) -> End {
    use tungstenite::Error as E;
    match e {
        E::ConnectionClosed | E::AlreadyClosed | E::Io(_) => End::Gone,
        E::Capacity(_) => End::Close(CloseReason::MessageTooBig),
        E::Utf8(_) => End::Close(CloseReason::InvalidUtf8),
        E::Protocol(_) => End::Close(CloseReason::ProtocolError),
        other => {
            tracing::debug!(error = %other, "websocket read error");
            End::Close(CloseReason::ProtocolError)
        }
    }
}

async fn write_loop<S>(
    sink: &mut SplitSink<WebSocketStream<S>, Message>,
    out: &Outbound,
    gw: &Shared,
    last_seen: &AtomicU64,
    start: Instant,
) -> End
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let ws = &gw.config.websocket;
    let write_timeout = gw.config.outbound.write_timeout;
    let silence_limit = (ws.ping_interval + ws.ping_timeout).as_millis() as u64;
    let mut ping = tokio::time::interval_at(
        tokio::time::Instant::now() + ws.ping_interval,
        ws.ping_interval,
    );
    ping.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut batch = VecDeque::new();
    loop {
        tokio::select! {
            biased;
            _ = out.ready() => {
                let state = out.take_all(&mut batch);
                if state == QueueState::Overflowed {
                    return End::Close(CloseReason::SlowConsumer);
                }
                match Box::pin(timeout(write_timeout, write_batch(sink, &mut batch, gw))).await {
                    Ok(Ok(())) => {}
                    Ok(Err(_)) => return End::Gone,
                    Err(_) => return End::Close(CloseReason::WriteTimeout),
                }
                if state == QueueState::GoingAway {
                    return End::Close(CloseReason::GoingAway);
                }
            }
            _ = ping.tick() => {
                let silent = (start.elapsed().as_millis() as u64)
                    .saturating_sub(last_seen.load(Ordering::Relaxed));
                if silent >= silence_limit {
                    gw.metrics.ping_timeouts.inc();
                    return End::Close(CloseReason::PingTimeout);
                }
                match Box::pin(timeout(write_timeout, sink.send(Message::Ping(Bytes::new())))).await {
                    Ok(Ok(())) => {}
                    Ok(Err(_)) => return End::Gone,
                    Err(_) => return End::Close(CloseReason::WriteTimeout),
                }
            }
        }
    }
}

/// Writes a batch with one flush at the end, then records latencies.
async fn write_batch<S>(
    sink: &mut SplitSink<WebSocketStream<S>, Message>,
    batch: &mut VecDeque<Frame>,
    gw: &Shared,
) -> Result<(), tungstenite::Error>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    if batch.is_empty() {
        return Ok(());
    }
    let frames = batch.len() as u64;
    let mut bytes = 0u64;
    let mut stamped: Vec<Instant> = Vec::new();
    for frame in batch.drain(..) {
        bytes += frame.payload.len() as u64;
        if let Some(at) = frame.published_at {
            stamped.push(at);
        }
        sink.feed(Message::Text(frame.payload)).await?;
    }
    sink.flush().await?;
    let now = Instant::now();
    for at in stamped {
        gw.metrics
            .publish_to_write
            .observe_ns(now.saturating_duration_since(at).as_nanos() as u64);
    }
    gw.metrics.messages_out.inc_by(frames);
    gw.metrics.bytes_out.inc_by(bytes);
    if batch.capacity() > 1024 {
        batch.shrink_to(64);
    }
    Ok(())
}
