//! Scenarios and the pieces they share: connecting a fleet of subscribers
//! and the subscriber task itself.

pub mod connections;
pub mod fanout;
pub mod publisher;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::Result;
use futures_util::{SinkExt, StreamExt};
use tokio::sync::{Semaphore, mpsc, oneshot};
use tokio::task::JoinSet;
use tokio_tungstenite::tungstenite::Message;

use crate::conn::{Targets, Ws, close_text, open_subscribed, ws_config};
use crate::payload::unix_nanos;
use crate::proto::{Decoder, Event, Protocol};
use crate::report::{ErrorSample, LatencySink, Percentiles, new_histogram};
use crate::track::{Seen, SeqTracker};

/// Options for opening many connections.
#[derive(Debug, Clone)]
pub struct ConnectOpts {
    /// Connections being opened at the same time.
    pub concurrency: usize,
    /// Limit for one connect + handshake + subscribe.
    pub timeout: Duration,
    /// Limit for opening all connections.
    pub phase_timeout: Duration,
    /// WebSocket read buffer per subscriber connection.
    pub read_buffer: usize,
    /// The protocol spoken to the server.
    pub protocol: Protocol,
}

/// A subscriber's live counters, read by the main task while it runs.
/// Cache-line aligned so subscribers on different threads do not share lines.
#[derive(Debug, Default)]
#[repr(align(64))]
pub struct SubLive {
    /// Unique benchmark deliveries so far.
    pub unique: AtomicU64,
    /// Set when the connection ended before it was told to stop.
    pub ended: AtomicBool,
}

/// One subscriber's topics: (name, index into the per-topic published counts).
pub type SubTopics = Vec<(String, usize)>;

/// What one subscriber saw.
#[derive(Debug, Default, Clone)]
pub struct SubResult {
    /// `message` notifications with a benchmark seq.
    pub received: u64,
    pub unique: u64,
    pub duplicates: u64,
    pub reordered: u64,
    /// Notifications that were not benchmark messages of our topics.
    pub other: u64,
    /// JSON-RPC error responses.
    pub rpc_errors: u64,
    pub last_recv: Option<Instant>,
    /// Close code if the server closed the connection.
    pub close_code: Option<u16>,
    /// Why the connection ended early (server close or I/O error).
    pub ended: Option<String>,
}

const LAT_BATCH: usize = 64;

/// The subscriber loop: reads until told to stop, tracks sequences per
/// topic and records latency into `latency`; then closes the connection.
///
/// The per-message path touches only this task's state (plus one
/// uncontended atomic store); latencies go to the shared sink in batches.
async fn run_subscriber(
    mut ws: Ws,
    mut decoder: Decoder,
    key: usize,
    topics: SubTopics,
    latency: Arc<LatencySink>,
    live: Arc<SubLive>,
    mut stop: oneshot::Receiver<()>,
) -> SubResult {
    let mut r = SubResult::default();
    let mut trackers = vec![SeqTracker::default(); topics.len()];
    let mut lat = Vec::with_capacity(LAT_BATCH);
    let mut stopped = false;

    loop {
        tokio::select! {
            biased;
            _ = &mut stop => {
                stopped = true;
                break;
            }
            msg = ws.next() => match msg {
                Some(Ok(Message::Close(frame))) => {
                    r.close_code = frame.as_ref().map(|f| u16::from(f.code));
                    r.ended = Some(format!("server closed: {}", close_text(frame.as_ref())));
                    break;
                }
                Some(Ok(msg)) => {
                    let mut reply = None;
                    let res = decoder.feed(&msg, |ev| match ev {
                        Event::Message { topic, seq: Some(seq), ts } => {
                            let idx = match (topic, topics.len()) {
                                (Some(t), _) => topics.iter().position(|(n, _)| n.as_bytes() == t),
                                (None, 1) => Some(0),
                                (None, _) => None,
                            };
                            let Some(idx) = idx else {
                                r.other += 1;
                                return;
                            };
                            r.received += 1;
                            r.last_recv = Some(Instant::now());
                            if trackers[idx].observe(seq) != Seen::Duplicate {
                                r.unique += 1;
                                live.unique.store(r.unique, Ordering::Relaxed);
                                if let Some(ts) = ts {
                                    lat.push(unix_nanos().saturating_sub(ts) / 1000);
                                    if lat.len() >= LAT_BATCH {
                                        latency.record_batch(key, &lat);
                                        lat.clear();
                                    }
                                }
                            }
                        }
                        Event::Message { .. } | Event::Other => {
                            r.other += 1;
                        }
                        Event::Response { error, .. } => {
                            if error {
                                r.rpc_errors += 1;
                            }
                        }
                        Event::Reply(m) => reply = Some(m),
                        Event::Ignored => {}
                    });
                    if let Err(e) = res {
                        r.ended = Some(format!("protocol error: {e}"));
                        break;
                    }
                    if let Some(m) = reply
                        && let Err(e) = ws.send(m).await
                    {
                        r.ended = Some(format!("connection error: {e}"));
                        break;
                    }
                }
                Some(Err(e)) => {
                    r.ended = Some(format!("connection error: {e}"));
                    break;
                }
                None => {
                    r.ended = Some("connection ended".to_owned());
                    break;
                }
            }
        }
    }
    latency.record_batch(key, &lat);
    if !stopped {
        live.ended.store(true, Ordering::Release);
    }
    r.duplicates = trackers.iter().map(|t| t.duplicates).sum();
    r.reordered = trackers.iter().map(|t| t.reordered).sum();
    // Close politely (also answers a server close); never wait long.
    let _ = tokio::time::timeout(Duration::from_secs(2), ws.close(None)).await;
    if stopped {
        // Read until the server's close reply / EOF, bounded.
        let _ = tokio::time::timeout(Duration::from_secs(1), async {
            while let Some(Ok(_)) = ws.next().await {}
        })
        .await;
    }
    r
}

/// A connected subscriber as the main task sees it.
pub struct Member {
    pub index: usize,
    pub live: Arc<SubLive>,
    stop: oneshot::Sender<()>,
}

/// The result of opening a fleet of subscribers.
pub struct Fleet {
    tasks: JoinSet<Option<SubResult>>,
    /// The subscribers that connected, by index.
    pub members: Vec<Member>,
    pub errors: ErrorSample,
    /// connect + handshake + subscribe per successful connection, µs.
    pub connect_micros: Percentiles,
    pub elapsed: Duration,
}

impl Fleet {
    pub fn connected(&self) -> usize {
        self.members.len()
    }

    /// Wait until every subscriber still connected has at least
    /// `expected(index)` unique deliveries, or until `deadline`.
    /// Returns true if all of them got there.
    pub async fn wait_delivered(
        &self,
        expected: impl Fn(usize) -> u64,
        deadline: tokio::time::Instant,
    ) -> bool {
        loop {
            let done = self.members.iter().all(|m| {
                m.live.ended.load(Ordering::Acquire)
                    || m.live.unique.load(Ordering::Relaxed) >= expected(m.index)
            });
            if done {
                return true;
            }
            if tokio::time::Instant::now() >= deadline {
                return false;
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }

    /// Stop the subscribers and collect their results (bounded wait).
    pub async fn stop(self, limit: Duration) -> SubTotals {
        let Fleet {
            mut tasks, members, ..
        } = self;
        for m in members {
            let _ = m.stop.send(());
        }
        let mut t = SubTotals::default();
        let deadline = tokio::time::Instant::now() + limit;
        loop {
            match tokio::time::timeout_at(deadline, tasks.join_next()).await {
                Ok(Some(Ok(Some(r)))) => t.add(r),
                Ok(Some(Ok(None))) => {}
                Ok(Some(Err(e))) => t.ended_early.add(format!("subscriber task failed: {e}")),
                Ok(None) => break,
                Err(_) => {
                    let left = tasks.len();
                    eprintln!(
                        "warning: {left} subscriber tasks did not stop in time; aborting them"
                    );
                    tasks.abort_all();
                    t.ended_early
                        .add(format!("{left} subscriber tasks did not stop in time"));
                    break;
                }
            }
        }
        t
    }
}

/// Open `n` subscriber connections (bounded concurrency), each subscribed to
/// `topics_for(i)`, and start their subscriber tasks.
pub async fn open_fleet(
    targets: &Targets,
    n: usize,
    topics_for: impl Fn(usize) -> SubTopics,
    latency: Arc<LatencySink>,
    opts: &ConnectOpts,
) -> Result<Fleet> {
    let start = Instant::now();
    let sem = Arc::new(Semaphore::new(opts.concurrency.max(1)));
    let (tx, mut rx) = mpsc::unbounded_channel::<(usize, Result<Duration, String>)>();
    let mut tasks = JoinSet::new();
    let cfg = ws_config(opts.read_buffer);
    let mut pending: Vec<Option<Member>> = Vec::with_capacity(n);
    let mut members = Vec::with_capacity(n);
    let mut errors = ErrorSample::default();
    let mut hist = new_histogram()?;
    let mut last_progress = Instant::now();
    let deadline = tokio::time::Instant::now() + opts.phase_timeout;

    let mut record = |(i, res): (usize, Result<Duration, String>),
                      pending: &mut Vec<Option<Member>>,
                      members: &mut Vec<Member>,
                      errors: &mut ErrorSample| {
        let member = pending[i].take();
        match (res, member) {
            (Ok(d), Some(m)) => {
                members.push(m);
                hist.saturating_record(u64::try_from(d.as_micros()).unwrap_or(u64::MAX).max(1));
            }
            (Ok(_), None) => {}
            (Err(e), _) => errors.add(e),
        }
    };
    let too_slow = |connected: usize| {
        anyhow::anyhow!(
            "opening connections took longer than {:?} ({connected} of {n} connected)",
            opts.phase_timeout
        )
    };

    for i in 0..n {
        // Wait for a slot, collecting results meanwhile.
        let permit = loop {
            tokio::select! {
                p = sem.clone().acquire_owned() => break p?,
                Some(res) = rx.recv() => record(res, &mut pending, &mut members, &mut errors),
            }
        };
        if tokio::time::Instant::now() > deadline {
            return Err(too_slow(members.len()));
        }
        if last_progress.elapsed() >= Duration::from_secs(1) {
            last_progress = Instant::now();
            eprintln!(
                "  connecting: {}/{n} open, {} failed, {:.1}s",
                members.len(),
                errors.count,
                start.elapsed().as_secs_f64()
            );
        }
        let ep = targets.endpoint(i).clone();
        let src = targets.source_ip(i);
        let topics = topics_for(i);
        let names: Vec<String> = topics.iter().map(|(t, _)| t.clone()).collect();
        let tx = tx.clone();
        let latency = latency.clone();
        let live = Arc::new(SubLive::default());
        let (stop_tx, stop_rx) = oneshot::channel();
        pending.push(Some(Member {
            index: i,
            live: live.clone(),
            stop: stop_tx,
        }));
        let timeout = opts.timeout;
        let protocol = opts.protocol;
        tasks.spawn(async move {
            let t0 = Instant::now();
            let res = open_subscribed(&ep, src, cfg, &names, timeout, protocol).await;
            drop(permit);
            match res {
                Ok((ws, decoder)) => {
                    let _ = tx.send((i, Ok(t0.elapsed())));
                    drop(tx);
                    Some(run_subscriber(ws, decoder, i, topics, latency, live, stop_rx).await)
                }
                Err(e) => {
                    let _ = tx.send((i, Err(format!("{e:#}"))));
                    None
                }
            }
        });
    }
    drop(tx);
    while members.len() + (errors.count as usize) < n {
        match tokio::time::timeout_at(deadline, rx.recv()).await {
            Ok(Some(res)) => record(res, &mut pending, &mut members, &mut errors),
            Ok(None) => break,
            Err(_) => return Err(too_slow(members.len())),
        }
    }
    members.sort_unstable_by_key(|m| m.index);
    Ok(Fleet {
        tasks,
        members,
        errors,
        connect_micros: Percentiles::from_histogram(&hist),
        elapsed: start.elapsed(),
    })
}

/// Totals over all subscribers.
#[derive(Debug, Default, Clone)]
pub struct SubTotals {
    pub received: u64,
    pub unique: u64,
    pub duplicates: u64,
    pub reordered: u64,
    pub other: u64,
    pub rpc_errors: u64,
    pub last_recv: Option<Instant>,
    pub ended_early: ErrorSample,
    pub close_codes: std::collections::BTreeMap<u16, u64>,
}

impl SubTotals {
    fn add(&mut self, r: SubResult) {
        self.received += r.received;
        self.unique += r.unique;
        self.duplicates += r.duplicates;
        self.reordered += r.reordered;
        self.other += r.other;
        self.rpc_errors += r.rpc_errors;
        self.last_recv = self.last_recv.max(r.last_recv);
        if let Some(code) = r.close_code {
            *self.close_codes.entry(code).or_default() += 1;
        }
        if let Some(e) = r.ended {
            self.ended_early.add(e);
        }
    }
}
