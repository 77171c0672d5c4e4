//! PostgreSQL `LISTEN`/`NOTIFY` source: one task per `[[sources.postgres]]`.
//!
//! The task connects (plain TCP or a Unix socket; TLS is not supported yet),
//! issues `LISTEN "<channel>"` and turns each notification into a
//! publication: the payload is parsed as JSON, the topic template rendered,
//! the optional `data` member selected (verbatim), and the result published
//! through the broker (or, with `deliver = "local"`, to this node's hub).
//!
//! * **Reading never blocks the database.** A driver task polls the
//!   connection and hands notifications to the source task through a queue
//!   of [`QUEUE`] entries; when publishing falls that far behind, further
//!   notifications are dropped and counted, rather than letting the server's
//!   notification queue (shared by every listener of the cluster) fill up.
//! * **Malformed notifications** (not JSON, a missing or non-scalar field, a
//!   value that is not one topic token) are counted in
//!   `wsgate_source_errors_total` and logged at `warn` the 1st, 2nd, 4th,
//!   8th, ... time; the source goes on.
//! * **Reconnects.** A failed connect, a lost connection (the server
//!   restarted, the backend was terminated) or a ping that is not answered
//!   within `ping_interval` starts a new connection after a backoff: the
//!   n-th consecutive failure waits a random time between half and all of
//!   `min(reconnect_delay_min * 2^(n-1), reconnect_delay_max)`; the count starts
//!   over once `LISTEN` succeeds. Notifications sent while disconnected are
//!   lost (`NOTIFY` is not durable).
//! * **Shutdown.** On the node's shutdown the client is dropped, so the
//!   connection sends `Terminate` and closes.

use std::fmt::Write as _;
use std::hash::{BuildHasher, Hasher};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use futures_util::StreamExt;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::sync::mpsc;
use tokio_postgres::config::Host;
use tokio_postgres::{AsyncMessage, Client, Connection, NoTls, Notification};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use super::{Context, Deliver, PostgresSource, SourceState};
use crate::broker::Delivery;

/// Notifications buffered between the connection and the publisher.
const QUEUE: usize = 4096;
/// How long a closing connection gets to say goodbye.
const CLOSE_WAIT: Duration = Duration::from_secs(2);

/// Checks a channel name: 1 to 63 bytes (longer names are truncated by
/// Postgres, which would listen on another channel than configured), no
/// control characters.
pub(crate) fn check_channel(channel: &str) -> Result<(), String> {
    if channel.is_empty() {
        return Err("empty".into());
    }
    if channel.len() > 63 {
        return Err(format!(
            "{} bytes, longer than Postgres' identifier limit of 63",
            channel.len()
        ));
    }
    if let Some(c) = channel.chars().find(|c| c.is_control()) {
        return Err(format!("contains the control character {c:?}"));
    }
    Ok(())
}

/// An error with its causes: tokio-postgres' own message is only the kind
/// ("error connecting to server", "db error"); the cause says why.
pub(crate) fn error_chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut s = e.to_string();
    let mut cause = e.source();
    while let Some(c) = cause {
        let _ = write!(s, ": {c}");
        cause = c.source();
    }
    s
}

/// Quotes an identifier for SQL: `a"b` becomes `"a""b"`.
pub(crate) fn quote_ident(ident: &str) -> String {
    format!("\"{}\"", ident.replace('"', "\"\""))
}

/// The delay before reconnect attempt `failures` (1 = the first failure):
/// a random time in `[d/2, d]` with `d = min(min * 2^(failures-1), max)`.
pub(crate) fn backoff(failures: u32, min: Duration, max: Duration, random: u64) -> Duration {
    let exp = failures.saturating_sub(1).min(31);
    let d = min.saturating_mul(1u32 << exp).min(max);
    let half = d / 2;
    let span = (d - half).as_nanos() as u64;
    let jitter = if span == 0 { 0 } else { random % (span + 1) };
    half + Duration::from_nanos(jitter)
}

fn random() -> u64 {
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u128(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or_default(),
    );
    h.finish()
}

/// `host:port/dbname` for logs (never the password).
fn describe(config: &tokio_postgres::Config) -> String {
    let mut s = String::new();
    for (i, host) in config.get_hosts().iter().enumerate() {
        if i > 0 {
            s.push(',');
        }
        match host {
            Host::Tcp(h) => s.push_str(h),
            #[cfg(unix)]
            Host::Unix(p) => s.push_str(&p.display().to_string()),
        }
        if let Some(port) = config
            .get_ports()
            .get(i)
            .or_else(|| config.get_ports().first())
        {
            let _ = write!(s, ":{port}");
        }
    }
    if let Some(db) = config.get_dbname() {
        let _ = write!(s, "/{db}");
    }
    s
}

/// Why one connection ended.
enum End {
    /// The node is shutting down.
    Cancelled,
    /// Connecting or `LISTEN` failed, or a live connection was lost.
    Failed { listened: bool, error: String },
}

/// The source task: connect, listen, forward; reconnect until cancelled.
pub(super) async fn run(
    src: PostgresSource,
    ctx: Context,
    state: Arc<SourceState>,
    cancel: CancellationToken,
    tasks: TaskTracker,
) {
    let mut pg = match src.url.parse::<tokio_postgres::Config>() {
        Ok(pg) => pg,
        Err(e) => {
            // Config::validate rejects this; only reachable through
            // Gateway::with_broker with an unvalidated configuration.
            tracing::error!(channel = %src.channel, error = %error_chain(&e), "postgres source: invalid url; source disabled");
            return;
        }
    };
    if pg.get_application_name().is_none() {
        pg.application_name("wsgate");
    }
    if pg.get_connect_timeout().is_none() {
        pg.connect_timeout(src.connect_timeout);
    }
    let target = describe(&pg);
    let mut failures: u32 = 0;
    loop {
        match connection(&pg, &src, &ctx, &state, &cancel, &tasks, &target).await {
            End::Cancelled => break,
            End::Failed { listened, error } => {
                if listened {
                    failures = 0;
                }
                failures = failures.saturating_add(1);
                let delay = backoff(
                    failures,
                    src.reconnect_delay_min,
                    src.reconnect_delay_max,
                    random(),
                );
                if listened || failures.is_power_of_two() {
                    tracing::warn!(
                        channel = %src.channel, %target, %error, failures, ?delay,
                        "postgres source disconnected; reconnecting"
                    );
                } else {
                    tracing::debug!(
                        channel = %src.channel, %target, %error, failures, ?delay,
                        "postgres source: reconnect failed"
                    );
                }
                tokio::select! {
                    _ = cancel.cancelled() => break,
                    _ = tokio::time::sleep(delay) => {}
                }
            }
        }
    }
    tracing::debug!(channel = %src.channel, "postgres source stopped");
}

/// Marks the source connected while alive.
struct Connected<'a>(&'a SourceState, &'a Context);

impl<'a> Connected<'a> {
    fn new(state: &'a SourceState, ctx: &'a Context) -> Self {
        state.connected.store(true, Ordering::Relaxed);
        state.connections.fetch_add(1, Ordering::Relaxed);
        ctx.metrics.sources_connected.inc();
        Connected(state, ctx)
    }
}

impl Drop for Connected<'_> {
    fn drop(&mut self) {
        self.0.connected.store(false, Ordering::Relaxed);
        self.1.metrics.sources_connected.dec();
    }
}

/// One connection's life: connect, `LISTEN`, forward until it ends.
async fn connection(
    pg: &tokio_postgres::Config,
    src: &PostgresSource,
    ctx: &Context,
    state: &Arc<SourceState>,
    cancel: &CancellationToken,
    tasks: &TaskTracker,
    target: &str,
) -> End {
    let failed = |listened: bool, error: String| End::Failed { listened, error };
    let connect = tokio::time::timeout(src.connect_timeout, pg.connect(NoTls));
    let (client, conn) = tokio::select! {
        _ = cancel.cancelled() => return End::Cancelled,
        r = connect => match r {
            Ok(Ok(pair)) => pair,
            Ok(Err(e)) => return failed(false, error_chain(&e)),
            Err(_) => return failed(false, format!("connect timed out after {:?}", src.connect_timeout)),
        },
    };
    let (tx, mut rx) = mpsc::channel(QUEUE);
    let driver = tasks.spawn(drive(
        conn,
        tx,
        state.clone(),
        ctx.clone(),
        src.channel.clone(),
    ));

    let end = session(&client, &mut rx, src, ctx, state, cancel, target).await;

    // Dropping the client makes the connection send Terminate and finish.
    drop(client);
    drop(rx);
    let closed = tokio::time::timeout(CLOSE_WAIT, driver).await;
    if closed.is_err() {
        tracing::debug!(channel = %src.channel, "postgres source: connection did not close in time");
    }
    end
}

async fn session(
    client: &Client,
    rx: &mut mpsc::Receiver<Result<Notification, String>>,
    src: &PostgresSource,
    ctx: &Context,
    state: &SourceState,
    cancel: &CancellationToken,
    target: &str,
) -> End {
    let listen = format!("LISTEN {}", quote_ident(&src.channel));
    tokio::select! {
        _ = cancel.cancelled() => return End::Cancelled,
        r = tokio::time::timeout(src.connect_timeout, client.batch_execute(&listen)) => match r {
            Ok(Ok(())) => {}
            Ok(Err(e)) => return End::Failed { listened: false, error: format!("LISTEN: {}", error_chain(&e)) },
            Err(_) => return End::Failed { listened: false, error: "LISTEN timed out".into() },
        },
    }
    let _connected = Connected::new(state, ctx);
    tracing::info!(channel = %src.channel, %target, topic = %src.topic, "postgres source listening");

    let mut ping = tokio::time::interval_at(
        tokio::time::Instant::now() + src.ping_interval,
        src.ping_interval,
    );
    ping.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = cancel.cancelled() => return End::Cancelled,
            n = rx.recv() => match n {
                Some(Ok(n)) => forward(n.payload(), src, ctx, state).await,
                Some(Err(error)) => return End::Failed { listened: true, error },
                None => return End::Failed { listened: true, error: "connection closed".into() },
            },
            _ = ping.tick() => {
                match tokio::time::timeout(src.ping_interval, client.simple_query("SELECT 1")).await {
                    Ok(Ok(_)) => {}
                    Ok(Err(e)) => return End::Failed { listened: true, error: format!("ping: {}", error_chain(&e)) },
                    Err(_) => return End::Failed { listened: true, error: "ping not answered".into() },
                }
            }
        }
    }
}

/// Polls the connection (it must be polled for queries to progress too) and
/// queues notifications; never waits for the publisher.
async fn drive<S, T>(
    mut conn: Connection<S, T>,
    tx: mpsc::Sender<Result<Notification, String>>,
    state: Arc<SourceState>,
    ctx: Context,
    channel: String,
) where
    S: AsyncRead + AsyncWrite + Unpin,
    T: AsyncRead + AsyncWrite + Unpin,
{
    let mut messages = futures_util::stream::poll_fn(move |cx| conn.poll_message(cx));
    while let Some(m) = messages.next().await {
        match m {
            Ok(AsyncMessage::Notification(n)) => {
                ctx.metrics.source_notifications.inc();
                state.notifications.fetch_add(1, Ordering::Relaxed);
                match tx.try_send(Ok(n)) {
                    Ok(()) => {}
                    Err(mpsc::error::TrySendError::Full(_)) => {
                        let (log, count) = state.error(&ctx.metrics);
                        if log {
                            tracing::warn!(%channel, errors = count, queue = QUEUE, "postgres source: publishing is behind; dropping a notification");
                        }
                    }
                    Err(mpsc::error::TrySendError::Closed(_)) => return,
                }
            }
            Ok(AsyncMessage::Notice(n)) => {
                tracing::debug!(%channel, notice = %n, "postgres notice");
            }
            Ok(_) => {}
            Err(e) => {
                let _ = tx.send(Err(error_chain(&e))).await;
                return;
            }
        }
    }
}

/// Publishes one notification; a bad one is counted and logged, never fatal.
async fn forward(payload: &str, src: &PostgresSource, ctx: &Context, state: &SourceState) {
    let error = match src.publication(payload, ctx.max_topic_length) {
        Ok(p) => match src.deliver {
            Deliver::Local => {
                ctx.hub.dispatch(&Delivery {
                    target: p.target,
                    data: p.data,
                    position: None,
                });
                return;
            }
            Deliver::Broker => match ctx.broker.publish(p).await {
                Ok(_) => return,
                Err(e) => format!("publish failed: {e}"),
            },
        },
        Err(e) => e.to_string(),
    };
    let (log, count) = state.error(&ctx.metrics);
    if log {
        tracing::warn!(
            channel = %src.channel, topic = %src.topic, %error, errors = count,
            "postgres source: notification not published (logged at 1, 2, 4, 8, ... errors)"
        );
    }
    tracing::debug!(channel = %src.channel, %error, payload = %truncate(payload, 200), "postgres source: bad notification");
}

fn truncate(s: &str, max: usize) -> &str {
    if s.len() <= max {
        return s;
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    &s[..end]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn identifiers_are_quoted() {
        assert_eq!(quote_ident("product_change"), "\"product_change\"");
        assert_eq!(quote_ident("a\"b"), "\"a\"\"b\"");
        assert_eq!(
            quote_ident("x\"; DROP TABLE t; --"),
            "\"x\"\"; DROP TABLE t; --\""
        );
        assert!(check_channel("Product Change").is_ok());
        assert!(check_channel("").is_err());
        assert!(check_channel(&"é".repeat(32)).is_err(), "64 bytes");
        assert!(check_channel("a\0b").is_err());
    }

    #[test]
    fn backoff_is_bounded_exponential_with_jitter() {
        let min = Duration::from_millis(100);
        let max = Duration::from_secs(5);
        for r in [0, 1, 12345, u64::MAX] {
            for (failures, full) in [
                (1, 100),
                (2, 200),
                (3, 400),
                (7, 5000),
                (40, 5000),
                (u32::MAX, 5000),
            ] {
                let d = backoff(failures, min, max, r);
                let full = Duration::from_millis(full);
                assert!(d >= full / 2 && d <= full, "{failures} {r}: {d:?}");
            }
        }
        assert_eq!(backoff(1, min, max, 0), Duration::from_millis(50));
        assert_eq!(backoff(1, min, max, 50_000_000), Duration::from_millis(100));
        assert_ne!(random(), random());
    }

    #[test]
    fn describe_hides_the_password() {
        let pg: tokio_postgres::Config = "postgres://u:secret@db.example:6543/shop"
            .parse()
            .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(describe(&pg), "db.example:6543/shop");
        assert_eq!(truncate("héllo", 2), "h");
    }
}
