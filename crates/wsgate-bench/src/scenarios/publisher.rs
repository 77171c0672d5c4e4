//! Publishers: open-loop at a fixed rate (WebSocket or HTTP) and closed-loop
//! with a window of unacknowledged publishes (WebSocket).

use std::net::IpAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use futures_util::stream::{SplitSink, SplitStream};
use futures_util::{SinkExt, StreamExt};
use tokio::sync::{Notify, Semaphore, mpsc, watch};
use tokio_tungstenite::tungstenite::Message;

use crate::conn::{Ws, close_text};
use crate::payload::{PayloadBuilder, error_message, json_string, unix_nanos};
use crate::proto::{Decoder, Event, Publishes};
use crate::report::ErrorSample;

/// How publishing is paced.
#[derive(Debug, Clone, Copy)]
pub enum Mode {
    /// Open loop: `rate` messages per second for `duration`.
    Rate { rate: f64, duration: Duration },
    /// Closed loop: at most `window` unacknowledged publishes, for `duration`.
    Window { window: usize, duration: Duration },
}

/// A publisher falling this far behind its schedule stops early.
const MAX_LATE: Duration = Duration::from_secs(5);
/// Frames written before a flush, at most.
const MAX_BATCH: u64 = 1024;

/// What the publisher did.
#[derive(Debug, Default)]
pub struct Outcome {
    /// Per topic: the highest seq published (= messages sent to the topic).
    pub per_topic: Vec<u64>,
    /// Messages the schedule asked for (rate mode).
    pub planned: Option<u64>,
    pub sent: u64,
    /// Successful publish results (JSON-RPC results or HTTP 2xx).
    pub acked: u64,
    pub errors: ErrorSample,
    /// From the first publish to the last one sent.
    pub elapsed: Duration,
    /// Worst lateness against the rate schedule.
    pub max_lag: Duration,
    /// Set when the publisher stopped before its schedule was done.
    pub aborted: Option<String>,
}

/// Counters the publisher exposes while running (for progress output).
#[derive(Default)]
pub struct Progress {
    pub sent: AtomicU64,
}

struct Topics {
    names: Vec<String>,
    json: Vec<String>,
    per_topic: Vec<u64>,
    next: usize,
}

impl Topics {
    fn new(names: &[String]) -> Self {
        Self {
            names: names.to_vec(),
            json: names.iter().map(|n| json_string(n)).collect(),
            per_topic: vec![0; names.len()],
            next: 0,
        }
    }

    /// Round-robin: (topic index, seq).
    fn next(&mut self) -> (usize, u64) {
        let t = self.next;
        self.next = (self.next + 1) % self.json.len();
        self.per_topic[t] += 1;
        (t, self.per_topic[t])
    }
}

/// Acknowledgement bookkeeping shared with the WebSocket reader task.
struct Acks {
    acked: AtomicU64,
    failed: AtomicU64,
    errors: Mutex<ErrorSample>,
    window: Semaphore,
    changed: Notify,
    /// Answers to server pings (Engine.IO, NATS) for the writer to send.
    replies: Mutex<Vec<Message>>,
    replies_due: AtomicBool,
}

impl Acks {
    fn answered(&self) -> u64 {
        self.acked.load(Ordering::Acquire) + self.failed.load(Ordering::Acquire)
    }

    fn push_reply(&self, m: Message) {
        match self.replies.lock() {
            Ok(mut r) => r.push(m),
            Err(p) => p.into_inner().push(m),
        }
        self.replies_due.store(true, Ordering::Release);
    }

    /// Send pending ping answers, if any (a cheap check on every publish).
    async fn send_replies(&self, sink: &mut SplitSink<Ws, Message>) -> Result<()> {
        if !self.replies_due.load(Ordering::Relaxed) {
            return Ok(());
        }
        self.replies_due.store(false, Ordering::Release);
        let due = match self.replies.lock() {
            Ok(mut r) => std::mem::take(&mut *r),
            Err(p) => std::mem::take(&mut *p.into_inner()),
        };
        for m in due {
            sink.feed(m).await.context("ping answer")?;
        }
        Ok(())
    }

    fn add_error(&self, msg: String) {
        let mut e = match self.errors.lock() {
            Ok(e) => e,
            Err(p) => p.into_inner(),
        };
        e.add(msg);
    }
}

async fn read_acks(
    mut stream: SplitStream<Ws>,
    mut decoder: Decoder,
    acks: Arc<Acks>,
    mut stop: watch::Receiver<bool>,
) {
    loop {
        let msg = tokio::select! {
            biased;
            _ = stop.changed() => return,
            m = stream.next() => m,
        };
        match msg {
            Some(Ok(m @ (Message::Text(_) | Message::Binary(_)))) => {
                let res = decoder.feed(&m, |ev| match ev {
                    Event::Response { error, .. } => {
                        if error {
                            acks.add_error(match &m {
                                Message::Text(text) => error_message(text.as_str()),
                                Message::Binary(b) => {
                                    format!("publish failed: {}", String::from_utf8_lossy(b))
                                }
                                _ => "publish failed".to_owned(),
                            });
                            acks.failed.fetch_add(1, Ordering::AcqRel);
                        } else {
                            acks.acked.fetch_add(1, Ordering::AcqRel);
                        }
                        acks.window.add_permits(1);
                        acks.changed.notify_one();
                    }
                    Event::Reply(r) => acks.push_reply(r),
                    _ => {}
                });
                if let Err(e) = res {
                    acks.add_error(format!("publisher connection: protocol error: {e}"));
                    break;
                }
            }
            Some(Ok(Message::Close(frame))) => {
                acks.add_error(format!(
                    "publisher connection closed by server: {}",
                    close_text(frame.as_ref())
                ));
                break;
            }
            Some(Ok(_)) => {}
            Some(Err(e)) => {
                acks.add_error(format!("publisher connection error: {e}"));
                break;
            }
            None => break,
        }
    }
    // Unblock a writer waiting for window permits.
    acks.window.close();
    acks.changed.notify_one();
}

/// Publish over one WebSocket connection, then wait up to `ack_wait` for the
/// outstanding results.
pub async fn publish_ws(
    ws: Ws,
    decoder: Decoder,
    topics: &[String],
    mut publishes: Publishes,
    mode: Mode,
    ack_wait: Duration,
    progress: &Progress,
) -> Result<Outcome> {
    let (mut sink, stream) = ws.split();
    let window = match mode {
        Mode::Window { window, .. } => window.max(1),
        Mode::Rate { .. } => 0,
    };
    let acks = Arc::new(Acks {
        acked: AtomicU64::new(0),
        failed: AtomicU64::new(0),
        errors: Mutex::new(ErrorSample::default()),
        window: Semaphore::new(window),
        changed: Notify::new(),
        replies: Mutex::new(Vec::new()),
        replies_due: AtomicBool::new(false),
    });
    let (stop_tx, stop_rx) = watch::channel(false);
    let reader = tokio::spawn(read_acks(stream, decoder, acks.clone(), stop_rx));

    let mut topics = Topics::new(topics);
    let mut out = Outcome::default();
    let start = Instant::now();
    let res = match mode {
        Mode::Rate { rate, duration } => {
            ws_rate(
                &mut sink,
                &mut topics,
                &mut publishes,
                &acks,
                rate,
                duration,
                &mut out,
                progress,
            )
            .await
        }
        Mode::Window { duration, .. } => {
            ws_window(
                &mut sink,
                &mut topics,
                &mut publishes,
                &acks,
                duration,
                &mut out,
                progress,
            )
            .await
        }
    };
    out.elapsed = start.elapsed();
    if let Err(e) = res {
        out.aborted = Some(format!("{e:#}"));
    }

    // Wait for the outstanding results.
    let deadline = tokio::time::Instant::now() + ack_wait;
    while acks.answered() < out.sent && !reader.is_finished() {
        if tokio::time::timeout_at(deadline, acks.changed.notified())
            .await
            .is_err()
        {
            break;
        }
    }
    stop_tx.send_replace(true);
    let _ = tokio::time::timeout(Duration::from_secs(2), reader).await;
    let _ = tokio::time::timeout(Duration::from_secs(2), sink.close()).await;

    out.acked = acks.acked.load(Ordering::Acquire);
    out.errors = match acks.errors.lock() {
        Ok(e) => e.clone(),
        Err(p) => p.into_inner().clone(),
    };
    let failed = acks.failed.load(Ordering::Acquire);
    if failed > out.errors.count {
        out.errors.count = failed;
    }
    out.per_topic = topics.per_topic;
    Ok(out)
}

fn send_frame(topics: &mut Topics, publishes: &mut Publishes, id: u64) -> Message {
    let (t, seq) = topics.next();
    publishes.frame(id, &topics.names[t], &topics.json[t], seq)
}

#[allow(clippy::too_many_arguments)]
async fn ws_rate(
    sink: &mut SplitSink<Ws, Message>,
    topics: &mut Topics,
    publishes: &mut Publishes,
    acks: &Acks,
    rate: f64,
    duration: Duration,
    out: &mut Outcome,
    progress: &Progress,
) -> Result<()> {
    let total = (rate * duration.as_secs_f64()).round() as u64;
    out.planned = Some(total);
    let start = Instant::now();
    while out.sent < total {
        let now = Instant::now();
        let elapsed = now - start;
        if elapsed > duration + MAX_LATE {
            anyhow::bail!(
                "publisher fell more than {MAX_LATE:?} behind schedule ({} of {total} sent)",
                out.sent
            );
        }
        // Message k is due at k / rate.
        let due = ((elapsed.as_secs_f64() * rate) as u64 + 1).min(total);
        let lag = elapsed.saturating_sub(Duration::from_secs_f64(out.sent as f64 / rate));
        out.max_lag = out.max_lag.max(lag);
        acks.send_replies(sink).await?;
        let mut batch = 0;
        while out.sent < due && batch < MAX_BATCH {
            sink.feed(send_frame(topics, publishes, out.sent + 1))
                .await
                .context("publish")?;
            out.sent += 1;
            batch += 1;
        }
        sink.flush().await.context("publish flush")?;
        progress.sent.store(out.sent, Ordering::Relaxed);
        if out.sent < total && out.sent >= due {
            let next = start + Duration::from_secs_f64(out.sent as f64 / rate);
            tokio::time::sleep_until(next.into()).await;
        } else {
            tokio::task::yield_now().await;
        }
    }
    Ok(())
}

async fn ws_window(
    sink: &mut SplitSink<Ws, Message>,
    topics: &mut Topics,
    publishes: &mut Publishes,
    acks: &Acks,
    duration: Duration,
    out: &mut Outcome,
    progress: &Progress,
) -> Result<()> {
    let stop_at = tokio::time::Instant::now() + duration;
    let mut unflushed = 0u64;
    loop {
        if tokio::time::Instant::now() >= stop_at {
            break;
        }
        let permit = match acks.window.try_acquire() {
            Ok(p) => p,
            Err(tokio::sync::TryAcquireError::Closed) => {
                anyhow::bail!("publisher connection ended")
            }
            Err(tokio::sync::TryAcquireError::NoPermits) => {
                sink.flush().await.context("publish flush")?;
                unflushed = 0;
                progress.sent.store(out.sent, Ordering::Relaxed);
                tokio::select! {
                    p = acks.window.acquire() => p.context("publisher connection ended")?,
                    _ = tokio::time::sleep_until(stop_at) => break,
                }
            }
        };
        permit.forget();
        acks.send_replies(sink).await?;
        sink.feed(send_frame(topics, publishes, out.sent + 1))
            .await
            .context("publish")?;
        out.sent += 1;
        unflushed += 1;
        if unflushed >= MAX_BATCH {
            sink.flush().await.context("publish flush")?;
            unflushed = 0;
            progress.sent.store(out.sent, Ordering::Relaxed);
        }
    }
    sink.flush().await.context("publish flush")?;
    progress.sent.store(out.sent, Ordering::Relaxed);
    Ok(())
}

/// Publish through `POST /api/publish` at a fixed rate. Each topic is
/// served by exactly one worker (sequential requests), so per-topic order
/// is kept; up to `workers` requests are in flight.
#[allow(clippy::too_many_arguments)]
pub async fn publish_http(
    http_base: &str,
    source_ip: Option<IpAddr>,
    topics: &[String],
    builder: &PayloadBuilder,
    rate: f64,
    duration: Duration,
    workers: usize,
    ack_wait: Duration,
    progress: &Progress,
) -> Result<Outcome> {
    let url = format!("{http_base}/api/publish");
    let workers = workers.clamp(1, topics.len().max(1));
    let mut cb = reqwest::Client::builder()
        .tcp_nodelay(true)
        .pool_max_idle_per_host(workers)
        .timeout(Duration::from_secs(10));
    if let Some(ip) = source_ip {
        cb = cb.local_address(ip);
    }
    let client = cb.build().context("building HTTP client")?;
    let json: Arc<Vec<String>> = Arc::new(topics.iter().map(|n| json_string(n)).collect());
    let acked = Arc::new(AtomicU64::new(0));
    let errors = Arc::new(Mutex::new(ErrorSample::default()));

    let mut txs = Vec::with_capacity(workers);
    let mut handles = Vec::with_capacity(workers);
    for _ in 0..workers {
        let (tx, mut rx) = mpsc::channel::<(usize, u64)>(1024);
        txs.push(tx);
        let (client, url, json, builder) =
            (client.clone(), url.clone(), json.clone(), builder.clone());
        let (acked, errors) = (acked.clone(), errors.clone());
        handles.push(tokio::spawn(async move {
            while let Some((t, seq)) = rx.recv().await {
                let body = builder.http_body(&json[t], seq, unix_nanos());
                let res = client
                    .post(&url)
                    .header(reqwest::header::CONTENT_TYPE, "application/json")
                    .body(body)
                    .send()
                    .await;
                let err = match res {
                    Ok(resp) if resp.status().is_success() => {
                        let _ = resp.bytes().await;
                        None
                    }
                    Ok(resp) => {
                        let status = resp.status();
                        let text = resp.text().await.unwrap_or_default();
                        Some(format!(
                            "HTTP {status}: {}",
                            text.chars().take(200).collect::<String>()
                        ))
                    }
                    Err(e) => Some(format!("HTTP publish: {e}")),
                };
                match err {
                    None => {
                        acked.fetch_add(1, Ordering::Relaxed);
                    }
                    Some(e) => match errors.lock() {
                        Ok(mut g) => g.add(e),
                        Err(p) => p.into_inner().add(e),
                    },
                }
            }
        }));
    }

    let mut topics_rr = Topics::new(topics);
    let mut out = Outcome::default();
    let total = (rate * duration.as_secs_f64()).round() as u64;
    out.planned = Some(total);
    let start = Instant::now();
    'outer: while out.sent < total {
        let elapsed = start.elapsed();
        if elapsed > duration + MAX_LATE {
            out.aborted = Some(format!(
                "publisher fell more than {MAX_LATE:?} behind schedule ({} of {total} sent)",
                out.sent
            ));
            break;
        }
        let due = ((elapsed.as_secs_f64() * rate) as u64 + 1).min(total);
        let lag = elapsed.saturating_sub(Duration::from_secs_f64(out.sent as f64 / rate));
        out.max_lag = out.max_lag.max(lag);
        let mut batch = 0;
        while out.sent < due && batch < MAX_BATCH {
            let (t, seq) = topics_rr.next();
            if txs[t % workers].send((t, seq)).await.is_err() {
                out.aborted = Some("HTTP publish worker ended".to_owned());
                break 'outer;
            }
            out.sent += 1;
            batch += 1;
        }
        progress.sent.store(out.sent, Ordering::Relaxed);
        if out.sent < total && out.sent >= due {
            let next = start + Duration::from_secs_f64(out.sent as f64 / rate);
            tokio::time::sleep_until(next.into()).await;
        } else {
            tokio::task::yield_now().await;
        }
    }
    out.elapsed = start.elapsed();
    drop(txs);
    let deadline = tokio::time::Instant::now() + ack_wait;
    for h in handles {
        let abort = h.abort_handle();
        if tokio::time::timeout_at(deadline, h).await.is_err() {
            abort.abort();
        }
    }
    out.acked = acked.load(Ordering::Relaxed);
    out.errors = match errors.lock() {
        Ok(e) => e.clone(),
        Err(p) => p.into_inner().clone(),
    };
    out.per_topic = topics_rr.per_topic;
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn topics_round_robin_seqs() {
        let mut t = Topics::new(&["a".into(), "b".into(), "c".into()]);
        let got: Vec<_> = (0..7).map(|_| t.next()).collect();
        assert_eq!(
            got,
            vec![(0, 1), (1, 1), (2, 1), (0, 2), (1, 2), (2, 2), (0, 3)]
        );
        assert_eq!(t.per_topic, vec![3, 2, 2]);
        assert_eq!(t.json[1], "\"b\"");
    }
}
