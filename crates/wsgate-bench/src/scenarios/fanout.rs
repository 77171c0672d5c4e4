//! `fanout`, `flood` and `smoke`: subscribers spread over topics, one
//! publisher, delivery accounting and latency.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use anyhow::{Result, bail};
use serde::Serialize;

use super::publisher::{self, Mode, Outcome, Progress};
use super::{ConnectOpts, SubTopics, open_fleet};
use crate::conn::{Targets, open_subscribed};
use crate::payload::PayloadBuilder;
use crate::proc::{Sampler, Snapshot};
use crate::proto::{Protocol, Publishes};
use crate::report::{ErrorSample, LatencySink, Percentiles, ratio, round3};

/// How the publisher sends.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum Via {
    Ws,
    Http,
}

#[derive(Debug, Clone)]
pub struct Params {
    pub scenario: &'static str,
    pub subscribers: usize,
    pub topics: usize,
    pub topic_prefix: String,
    pub size: usize,
    pub mode: Mode,
    pub via: Via,
    /// Longest wait for deliveries after the last publish.
    pub drain: Duration,
    /// HTTP publish requests in flight (one per topic at most).
    pub http_concurrency: usize,
}

impl Params {
    pub fn duration(&self) -> Duration {
        match self.mode {
            Mode::Rate { duration, .. } | Mode::Window { duration, .. } => duration,
        }
    }

    fn topic_name(&self, t: usize) -> String {
        format!("{}.{t}", self.topic_prefix)
    }
}

#[derive(Debug, Serialize)]
pub struct ParamsOut {
    pub subscribers: usize,
    pub topics: usize,
    pub topic_prefix: String,
    pub size: usize,
    pub rate: Option<f64>,
    pub window: Option<usize>,
    pub duration_s: f64,
    pub drain_s: f64,
    pub publish_via: Via,
}

#[derive(Debug, Serialize)]
pub struct ServerOut {
    pub cpu_seconds: f64,
    pub deliveries_per_cpu_second: Option<f64>,
    pub rss_before_bytes: u64,
    pub rss_after_bytes: u64,
    pub before: Snapshot,
    pub after: Snapshot,
}

#[derive(Debug, Serialize)]
pub struct ClientOut {
    pub cpu_seconds: Option<f64>,
    pub rss_bytes: Option<u64>,
}

#[derive(Debug, Serialize)]
pub struct Report {
    pub scenario: &'static str,
    /// Only shown for peers: wsgate's output is as before.
    #[serde(skip_serializing_if = "Protocol::is_wsgate")]
    pub protocol: Protocol,
    pub unix_time: u64,
    pub urls: Vec<String>,
    pub params: ParamsOut,
    pub subscribers_connected: usize,
    pub connect_errors: ErrorSample,
    pub connect_seconds: f64,
    pub planned: Option<u64>,
    pub published: u64,
    pub publish_acked: u64,
    pub publish_errors: ErrorSample,
    pub publish_seconds: f64,
    pub published_per_sec: Option<f64>,
    pub publisher_max_lag_ms: f64,
    pub publisher_aborted: Option<String>,
    pub expected_deliveries: u64,
    pub delivered: u64,
    pub delivered_per_sec: Option<f64>,
    pub lost: u64,
    pub duplicates: u64,
    pub reordered: u64,
    pub received_total: u64,
    pub other_messages: u64,
    pub rpc_errors: u64,
    pub all_delivered: bool,
    pub drain_seconds: f64,
    pub latency_us: Percentiles,
    pub subscribers_ended_early: ErrorSample,
    pub close_codes: BTreeMap<u16, u64>,
    pub server: Option<ServerOut>,
    pub client: ClientOut,
}

impl Report {
    /// Problems that make `smoke` fail.
    pub fn problems(&self) -> Vec<String> {
        let mut p = Vec::new();
        let mut check = |n: u64, what: &str| {
            if n > 0 {
                p.push(format!("{n} {what}"));
            }
        };
        check(self.connect_errors.count, "connect errors");
        check(self.publish_errors.count, "publish errors");
        check(self.lost, "lost");
        check(self.duplicates, "duplicates");
        check(self.reordered, "reordered");
        check(self.rpc_errors, "JSON-RPC errors on subscribers");
        check(
            self.subscribers_ended_early.count,
            "subscribers ended early",
        );
        if self.published == 0 {
            p.push("nothing published".to_owned());
        }
        if let Some(a) = &self.publisher_aborted {
            p.push(format!("publisher aborted: {a}"));
        }
        p
    }
}

/// Run a fanout / flood.
pub async fn run(
    targets: Arc<Targets>,
    sampler: &Sampler,
    connect: &ConnectOpts,
    p: &Params,
) -> Result<Report> {
    if p.subscribers == 0 || p.topics == 0 {
        bail!("--subscribers and --topics must be at least 1");
    }
    if p.via == Via::Http && !connect.protocol.is_wsgate() {
        bail!("--publish-via http is for --protocol wsgate only");
    }
    let publisher_sockets = match p.via {
        Via::Ws => 1,
        Via::Http => p.http_concurrency.clamp(1, p.topics),
    };
    targets.check_capacity(p.subscribers + publisher_sockets)?;

    let topic_names: Vec<String> = (0..p.topics).map(|t| p.topic_name(t)).collect();
    let shards = 4 * std::thread::available_parallelism().map_or(2, |n| n.get());
    let latency = Arc::new(LatencySink::new(shards)?);

    eprintln!(
        "{}: opening {} subscribers over {} topics ({} url(s))",
        p.scenario,
        p.subscribers,
        p.topics,
        targets.endpoints.len()
    );
    let topics_of = |i: usize| -> SubTopics { vec![(p.topic_name(i % p.topics), i % p.topics)] };
    let fleet = open_fleet(&targets, p.subscribers, topics_of, latency.clone(), connect).await?;
    eprintln!(
        "  {} subscribers connected in {:.2}s ({} failed)",
        fleet.connected(),
        fleet.elapsed.as_secs_f64(),
        fleet.errors.count
    );
    if fleet.connected() == 0 {
        let why = fleet.errors.first.join("; ");
        fleet.stop(Duration::from_secs(5)).await;
        bail!("no subscriber could connect: {why}");
    }
    // Subscribers per topic, for the expected delivery count.
    let mut subs_per_topic = vec![0u64; p.topics];
    for m in &fleet.members {
        for (_, t) in topics_of(m.index) {
            subs_per_topic[t] += 1;
        }
    }

    let builder = PayloadBuilder::new(p.size);
    let progress = Arc::new(Progress::default());
    let pub_ep = targets.endpoint(0).clone();
    let pub_src = targets.source_ip(p.subscribers);

    // Connect the WebSocket publisher before sampling, so the measured
    // window contains only publishing.
    let pub_ws = match p.via {
        Via::Ws => Some(
            open_subscribed(
                &pub_ep,
                pub_src,
                crate::conn::ws_config(64 * 1024).write_buffer_size(128 * 1024),
                &[],
                connect.timeout,
                connect.protocol,
            )
            .await?,
        ),
        Via::Http => None,
    };

    let before = sampler.sample();
    let client_cpu_before = sampler.self_cpu_seconds();
    let start = Instant::now();
    let ticker = {
        let progress = progress.clone();
        let lives: Vec<_> = fleet.members.iter().map(|m| m.live.clone()).collect();
        tokio::spawn(async move {
            let mut iv = tokio::time::interval(Duration::from_secs(1));
            iv.tick().await;
            loop {
                iv.tick().await;
                eprintln!(
                    "  t={:.0}s published={} delivered~{}",
                    start.elapsed().as_secs_f64(),
                    progress.sent.load(Ordering::Relaxed),
                    lives
                        .iter()
                        .map(|l| l.unique.load(Ordering::Relaxed))
                        .sum::<u64>()
                );
            }
        })
    };

    let outcome: Outcome = match (pub_ws, p.mode) {
        (Some((ws, decoder)), mode) => {
            let publishes = Publishes::new(connect.protocol, builder.clone());
            publisher::publish_ws(
                ws,
                decoder,
                &topic_names,
                publishes,
                mode,
                p.drain,
                &progress,
            )
            .await?
        }
        (None, Mode::Rate { rate, duration }) => {
            publisher::publish_http(
                &pub_ep.http_base,
                pub_src,
                &topic_names,
                &builder,
                rate,
                duration,
                p.http_concurrency,
                p.drain,
                &progress,
            )
            .await?
        }
        (None, Mode::Window { .. }) => bail!("closed-loop publishing is WebSocket only"),
    };
    let publish_end = Instant::now();

    // Drain: until every subscriber has all it expects, or the drain limit.
    let finals = Arc::new(outcome.per_topic.clone());
    // Subscriber i has topic i mod T (see `topics_of`).
    let all_delivered = fleet
        .wait_delivered(
            |i| finals[i % p.topics],
            tokio::time::Instant::from_std(publish_end + p.drain),
        )
        .await;
    let drain_seconds = publish_end.elapsed().as_secs_f64();
    let after = sampler.sample();
    let client_cpu_after = sampler.self_cpu_seconds();
    ticker.abort();

    let connected = fleet.connected();
    let connect_errors = fleet.errors.clone();
    let connect_elapsed = fleet.elapsed;
    let totals = fleet.stop(Duration::from_secs(10)).await;

    let expected: u64 = finals
        .iter()
        .zip(&subs_per_topic)
        .map(|(published, subs)| published * subs)
        .sum();
    let delivered = totals.unique;
    let delivery_secs = totals
        .last_recv
        .map(|t| t.saturating_duration_since(start).as_secs_f64())
        .unwrap_or(0.0);
    let latency = latency.merged()?;

    let server = match (before, after) {
        (Some(b), Some(a)) => {
            let cpu = (a.cpu_seconds - b.cpu_seconds).max(0.0);
            Some(ServerOut {
                cpu_seconds: round3(cpu),
                deliveries_per_cpu_second: ratio(delivered as f64, cpu),
                rss_before_bytes: b.rss_bytes,
                rss_after_bytes: a.rss_bytes,
                before: b,
                after: a,
            })
        }
        _ => {
            if !sampler.is_empty() {
                eprintln!("warning: server sampling failed");
            }
            None
        }
    };

    let (rate, window) = match p.mode {
        Mode::Rate { rate, .. } => (Some(rate), None),
        Mode::Window { window, .. } => (None, Some(window)),
    };
    Ok(Report {
        scenario: p.scenario,
        protocol: connect.protocol,
        unix_time: crate::payload::unix_nanos() / 1_000_000_000,
        urls: targets.endpoints.iter().map(|e| e.url.clone()).collect(),
        params: ParamsOut {
            subscribers: p.subscribers,
            topics: p.topics,
            topic_prefix: p.topic_prefix.clone(),
            size: p.size,
            rate,
            window,
            duration_s: p.duration().as_secs_f64(),
            drain_s: p.drain.as_secs_f64(),
            publish_via: p.via,
        },
        subscribers_connected: connected,
        connect_errors,
        connect_seconds: round3(connect_elapsed.as_secs_f64()),
        planned: outcome.planned,
        published: outcome.sent,
        publish_acked: outcome.acked,
        publish_errors: outcome.errors,
        publish_seconds: round3(outcome.elapsed.as_secs_f64()),
        published_per_sec: ratio(outcome.sent as f64, outcome.elapsed.as_secs_f64()),
        publisher_max_lag_ms: round3(outcome.max_lag.as_secs_f64() * 1000.0),
        publisher_aborted: outcome.aborted,
        expected_deliveries: expected,
        delivered,
        delivered_per_sec: ratio(delivered as f64, delivery_secs),
        lost: expected.saturating_sub(delivered),
        duplicates: totals.duplicates,
        reordered: totals.reordered,
        received_total: totals.received,
        other_messages: totals.other,
        rpc_errors: totals.rpc_errors,
        all_delivered: all_delivered && expected == delivered,
        drain_seconds: round3(drain_seconds),
        latency_us: Percentiles::from_histogram(&latency),
        subscribers_ended_early: totals.ended_early,
        close_codes: totals.close_codes,
        server,
        client: ClientOut {
            cpu_seconds: client_cpu_before
                .zip(client_cpu_after)
                .map(|(b, a)| round3(a - b)),
            rss_bytes: sampler.self_rss_bytes(),
        },
    })
}
