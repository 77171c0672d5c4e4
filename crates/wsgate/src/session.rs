//! One WebSocket connection: a single task owns the socket.
//!
//! The task polls three futures together over the two halves of the socket:
//!
//! * the **reader** reads into a stack buffer inside one `poll` (so an idle
//!   connection holds no read buffer), keeps bytes on the heap only while a
//!   frame is incomplete, decodes messages ([`crate::ws::frame`]) and runs
//!   their calls ([`crate::rpc`]); pings are answered through the queue;
//! * the **writer** waits on the connection's [`Outbound`] queue, takes
//!   everything queued, encodes it into one buffer — each frame's header plus
//!   the shared payload bytes — and writes it (write coalescing); it keeps
//!   its write position outside the write future, so it can watch for a queue
//!   overflow while a write is stuck without ever duplicating bytes;
//! * the **keepalive** ticks every `min(ping_interval, write_timeout)` (and
//!   `idle_timeout / 4` when that is set): asks for a ping, closes a silent
//!   peer (4001), a write stuck longer than `outbound.write_timeout` (4002)
//!   or a peer that sent no message for `limits.idle_timeout` (4009).
//!
//! Responses to the client's own calls go through the same bounded queue as
//! deliveries, and the reader pauses while that queue is half full.

use std::collections::VecDeque;
use std::future::poll_fn;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::time::timeout;

use crate::Shared;
use crate::error::CloseReason;
use crate::queue::{Frame, Outbound, QueueState};
use crate::rpc::{ConnInfo, Session};
use crate::ws::frame::{self, Decoder, FrameError, Message};

/// Bytes read per syscall, into a buffer on the stack of one poll.
const READ_CHUNK: usize = 4096;
/// Write buffers and batches above this are released after use, so a
/// connection that saw a burst does not keep its peak memory while idle.
const KEEP_CAPACITY: usize = 1024;

/// How a session ended.
#[derive(Debug)]
enum End {
    /// The peer sent a close frame with this code (if any).
    PeerClosed(Option<u16>),
    /// The socket is gone (EOF, reset); nothing more can be written.
    Gone,
    /// The server closes with this reason.
    Close(CloseReason),
}

/// Clock shared by the three futures: milliseconds since the session began.
struct Clock {
    start: Instant,
    /// Last time anything arrived from the peer.
    last_seen: AtomicU64,
    /// Last time a text or binary message arrived (`limits.idle_timeout`).
    last_message: AtomicU64,
    /// When the write in progress began; 0 when not writing.
    writing_since: AtomicU64,
}

impl Clock {
    fn now(&self) -> u64 {
        // +1 so that 0 can mean "not writing".
        self.start.elapsed().as_millis() as u64 + 1
    }
}

/// Runs a connection until it ends, then removes all its state. `early` is
/// what the client sent right after its handshake, before the upgrade.
pub(crate) async fn run<R, W>(
    mut reader: R,
    mut writer: W,
    early: Bytes,
    gw: Arc<Shared>,
    info: ConnInfo,
) where
    R: AsyncRead + Unpin + Send,
    W: AsyncWrite + Unpin + Send,
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
    let clock = Clock {
        start: Instant::now(),
        last_seen: AtomicU64::new(1),
        last_message: AtomicU64::new(1),
        writing_since: AtomicU64::new(0),
    };

    let end = {
        let expired = session.token_expired();
        let read = read_loop(&mut reader, early, &mut session, &clock);
        let write = write_loop(&mut writer, &out, &gw, &clock);
        let keep = keepalive(&out, &gw, &clock);
        tokio::select! {
            end = read => end,
            end = write => end,
            end = keep => end,
            () = expired => End::Close(CloseReason::TokenExpired),
        }
    };
    tracing::debug!(conn = id, ?end, "session ending");
    let mid_write = clock.writing_since.load(Ordering::Relaxed) != 0;
    Box::pin(finish(end, mid_write, reader, writer, session, out, gw)).await;
    metrics.connections.dec();
}

/// Closes the socket as `end` requires and removes the connection's state.
async fn finish<R, W>(
    end: End,
    mid_write: bool,
    mut reader: R,
    mut writer: W,
    mut session: Session,
    out: Arc<Outbound>,
    gw: Arc<Shared>,
) where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    out.close();
    let write_timeout = gw.config.outbound.write_timeout;
    let mut buf = Vec::new();
    match end {
        End::Gone => {}
        // A frame was cut mid-way: no close frame can follow it.
        End::Close(_) if mid_write => {}
        End::PeerClosed(code) => {
            // Echo the peer's close (RFC 6455 §5.5.1).
            match code {
                Some(c) => frame::encode_close(&mut buf, c, ""),
                None => frame::encode_frame(&mut buf, frame::OP_CLOSE, &[]),
            }
            let _ = timeout(write_timeout, writer.write_all(&buf)).await;
        }
        End::Close(reason) => {
            if reason == CloseReason::GoingAway {
                // Flush what was queued before shutdown began.
                let mut rest = VecDeque::new();
                out.take_all(&mut rest);
                encode_batch(&mut buf, &mut rest, &mut Vec::new());
            }
            frame::encode_close(&mut buf, reason.code(), reason.reason());
            if let Ok(Ok(())) = timeout(write_timeout, writer.write_all(&buf)).await {
                let _ = writer.flush().await;
                // Wait briefly for the peer's close reply, discarding data.
                let _ = timeout(Duration::from_secs(2), await_close(&mut reader, &gw)).await;
            }
        }
    }
    let _ = timeout(Duration::from_secs(1), writer.shutdown()).await;
    let subs = std::mem::take(&mut session.subs);
    gw.hub.unregister(session.id, subs).await;
}

/// Reads until the peer's close frame, EOF or an error.
async fn await_close<R: AsyncRead + Unpin>(reader: &mut R, gw: &Shared) {
    let mut decoder = Decoder::new(gw.config.limits.max_message_size);
    let mut buf = BytesMut::new();
    loop {
        match decoder.decode(&mut buf) {
            Ok(Some(Message::Close(_))) | Err(_) => return,
            Ok(Some(_)) => continue,
            Ok(None) => {}
        }
        match poll_fn(|cx| poll_read_into(reader, &mut buf, cx)).await {
            Ok(0) | Err(_) => return,
            Ok(_) => {}
        }
    }
}

/// One read into a stack buffer, appended to `buf`. Nothing is held while
/// the read is pending. The chunk is left uninitialized: the reader is
/// polled on every wake-up of the task (one per delivery), and zeroing 4 KiB
/// each time measured as half of all instructions (docs/benchmarks.md).
fn poll_read_into<R: AsyncRead + Unpin>(
    reader: &mut R,
    buf: &mut BytesMut,
    cx: &mut Context<'_>,
) -> Poll<std::io::Result<usize>> {
    let mut chunk = [std::mem::MaybeUninit::<u8>::uninit(); READ_CHUNK];
    let mut rb = ReadBuf::uninit(&mut chunk);
    match Pin::new(reader).poll_read(cx, &mut rb) {
        Poll::Ready(Ok(())) => {
            let n = rb.filled().len();
            buf.extend_from_slice(rb.filled());
            Poll::Ready(Ok(n))
        }
        Poll::Ready(Err(e)) => Poll::Ready(Err(e)),
        Poll::Pending => Poll::Pending,
    }
}

fn close_for(e: &FrameError) -> CloseReason {
    match e {
        FrameError::Protocol(_) => CloseReason::ProtocolError,
        FrameError::TooBig { .. } => CloseReason::MessageTooBig,
        FrameError::InvalidUtf8 => CloseReason::InvalidUtf8,
    }
}

async fn read_loop<R: AsyncRead + Unpin>(
    reader: &mut R,
    early: Bytes,
    session: &mut Session,
    clock: &Clock,
) -> End {
    let metrics = session.gw.metrics.clone();
    let mut decoder = Decoder::new(session.gw.config.limits.max_message_size);
    // A copy: `early` may be a slice of the HTTP server's read buffer,
    // which must not stay alive with the connection.
    let mut buf = BytesMut::from(&early[..]);
    drop(early);
    loop {
        match decoder.decode(&mut buf) {
            Ok(Some(msg)) => match msg {
                Message::Text(bytes) => {
                    clock.last_message.store(clock.now(), Ordering::Relaxed);
                    session.wait_for_room().await;
                    metrics.messages_in.inc();
                    metrics.bytes_in.inc_by(bytes.len() as u64);
                    // The decoder validated UTF-8; this cannot fail.
                    if let Ok(text) = std::str::from_utf8(&bytes) {
                        // Boxed: an idle connection's future then carries
                        // only the read state (docs/benchmarks.md).
                        Box::pin(session.handle_text(text)).await;
                    }
                    if let Some(reason) = session.close.take() {
                        return End::Close(reason);
                    }
                }
                Message::Binary(bytes) => {
                    clock.last_message.store(clock.now(), Ordering::Relaxed);
                    session.wait_for_room().await;
                    metrics.messages_in.inc();
                    metrics.bytes_in.inc_by(bytes.len() as u64);
                    session.handle_binary();
                    if let Some(reason) = session.close.take() {
                        return End::Close(reason);
                    }
                }
                Message::Ping(payload) => session.out.request_pong(payload),
                Message::Pong(_) => {}
                Message::Close(c) => return End::PeerClosed(c.map(|(code, _)| code)),
            },
            Ok(None) => {
                if buf.is_empty() && !decoder.in_message() && buf.capacity() > 0 {
                    // Idle: hold no read buffer.
                    buf = BytesMut::new();
                }
                match poll_fn(|cx| poll_read_into(reader, &mut buf, cx)).await {
                    Ok(0) | Err(_) => return End::Gone,
                    Ok(_) => clock.last_seen.store(clock.now(), Ordering::Relaxed),
                }
            }
            Err(e) => {
                tracing::debug!(conn = session.id, error = %e, "closing on a frame error");
                return End::Close(close_for(&e));
            }
        }
    }
}

/// Appends the pending control frames and every queued text frame to `buf`;
/// returns (frames, payload bytes) and collects publication timestamps.
fn encode_batch(
    buf: &mut Vec<u8>,
    batch: &mut VecDeque<Frame>,
    stamps: &mut Vec<Instant>,
) -> (u64, u64) {
    let frames = batch.len() as u64;
    let mut bytes = 0u64;
    buf.reserve(batch.iter().map(|f| f.payload.len() + 10).sum());
    for f in batch.drain(..) {
        bytes += f.payload.len() as u64;
        if let Some(at) = f.published_at {
            stamps.push(at);
        }
        frame::encode_header(buf, frame::OP_TEXT, f.payload.len());
        buf.extend_from_slice(&f.payload);
    }
    (frames, bytes)
}

/// Writes `buf[*pos..]`, advancing `pos`; ready when all is written and flushed.
fn poll_write_all<W: AsyncWrite + Unpin>(
    writer: &mut W,
    buf: &[u8],
    pos: &mut usize,
    cx: &mut Context<'_>,
) -> Poll<std::io::Result<()>> {
    while *pos < buf.len() {
        match Pin::new(&mut *writer).poll_write(cx, &buf[*pos..]) {
            Poll::Ready(Ok(0)) => return Poll::Ready(Err(std::io::ErrorKind::WriteZero.into())),
            Poll::Ready(Ok(n)) => *pos += n,
            Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
            Poll::Pending => return Poll::Pending,
        }
    }
    Pin::new(writer).poll_flush(cx)
}

async fn write_loop<W: AsyncWrite + Unpin>(
    writer: &mut W,
    out: &Outbound,
    gw: &Shared,
    clock: &Clock,
) -> End {
    let mut batch = VecDeque::new();
    let mut buf: Vec<u8> = Vec::new();
    let mut stamps: Vec<Instant> = Vec::new();
    loop {
        let taken = out.take_all(&mut batch);
        if taken.state == QueueState::Overflowed {
            return End::Close(CloseReason::SlowConsumer);
        }
        if let Some(p) = &taken.pong {
            frame::encode_frame(&mut buf, frame::OP_PONG, p);
        }
        if taken.ping {
            frame::encode_frame(&mut buf, frame::OP_PING, &[]);
        }
        let (frames, bytes) = encode_batch(&mut buf, &mut batch, &mut stamps);
        if buf.is_empty() {
            if taken.state == QueueState::GoingAway {
                return End::Close(CloseReason::GoingAway);
            }
            out.ready().await;
            continue;
        }
        clock.writing_since.store(clock.now(), Ordering::Relaxed);
        let mut pos = 0;
        loop {
            tokio::select! {
                biased;
                r = poll_fn(|cx| poll_write_all(writer, &buf, &mut pos, cx)) => match r {
                    Ok(()) => break,
                    Err(_) => return End::Gone,
                },
                // New frames arrived while the socket is full: under the
                // disconnect policy an overflow ends the session now.
                _ = out.ready() => {
                    if out.overflowed() {
                        return End::Close(CloseReason::SlowConsumer);
                    }
                }
            }
        }
        clock.writing_since.store(0, Ordering::Relaxed);
        let now = Instant::now();
        for at in stamps.drain(..) {
            gw.metrics
                .publish_to_write
                .observe_ns(now.saturating_duration_since(at).as_nanos() as u64);
        }
        gw.metrics.messages_out.inc_by(frames);
        gw.metrics.bytes_out.inc_by(bytes);
        buf.clear();
        if buf.capacity() > KEEP_CAPACITY {
            buf = Vec::new();
        }
        if batch.capacity() > 64 {
            batch = VecDeque::new();
        }
        if stamps.capacity() > 64 {
            stamps = Vec::new();
        }
        if taken.state == QueueState::GoingAway {
            return End::Close(CloseReason::GoingAway);
        }
    }
}

async fn keepalive(out: &Outbound, gw: &Shared, clock: &Clock) -> End {
    let ws = &gw.config.websocket;
    let write_timeout = gw.config.outbound.write_timeout;
    let idle = gw.config.limits.idle_timeout;
    let idle_limit = idle.as_millis() as u64;
    let mut period = ws.ping_interval.min(write_timeout);
    if !idle.is_zero() {
        // Checked four times per idle_timeout: closed within 1.25 × of it.
        period = period.min(idle / 4);
    }
    let ping_every = ws.ping_interval.as_millis() as u64;
    let silence_limit = (ws.ping_interval + ws.ping_timeout).as_millis() as u64;
    let write_limit = write_timeout.as_millis() as u64;
    let mut tick = tokio::time::interval_at(tokio::time::Instant::now() + period, period);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut last_ping = clock.now();
    loop {
        tick.tick().await;
        let now = clock.now();
        let writing_since = clock.writing_since.load(Ordering::Relaxed);
        if writing_since != 0 && now.saturating_sub(writing_since) >= write_limit {
            return End::Close(CloseReason::WriteTimeout);
        }
        if now.saturating_sub(clock.last_seen.load(Ordering::Relaxed)) >= silence_limit {
            gw.metrics.ping_timeouts.inc();
            return End::Close(CloseReason::PingTimeout);
        }
        if idle_limit > 0
            && now.saturating_sub(clock.last_message.load(Ordering::Relaxed)) >= idle_limit
        {
            gw.metrics.idle_timeouts.inc();
            return End::Close(CloseReason::IdleTimeout);
        }
        if now.saturating_sub(last_ping) + 5 >= ping_every {
            out.request_ping();
            last_ping = now;
        }
    }
}
