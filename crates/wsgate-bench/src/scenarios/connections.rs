//! `connections`: open N subscribed connections, measure connect time and
//! server memory per connection, hold, close.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Result, bail};
use serde::Serialize;

use super::{ConnectOpts, SubTopics, open_fleet};
use crate::conn::Targets;
use crate::proc::{Sampler, Snapshot};
use crate::proto::Protocol;
use crate::report::{ErrorSample, LatencySink, Percentiles, ratio, round3};

#[derive(Debug, Clone)]
pub struct Params {
    pub n: usize,
    pub topic: String,
    pub topics_per_conn: usize,
    pub hold: Duration,
    /// Wait after the last connection before sampling memory.
    pub settle: Duration,
}

impl Params {
    /// The topics every connection subscribes to: `T` alone, or
    /// `T.0` … `T.{K-1}` for K > 1.
    pub fn topics(&self) -> Vec<String> {
        if self.topics_per_conn <= 1 {
            vec![self.topic.clone()]
        } else {
            (0..self.topics_per_conn)
                .map(|k| format!("{}.{k}", self.topic))
                .collect()
        }
    }
}

#[derive(Debug, Serialize)]
pub struct ServerOut {
    pub rss_before_bytes: u64,
    pub rss_connected_bytes: u64,
    pub rss_after_hold_bytes: u64,
    pub rss_delta_per_conn_bytes: Option<f64>,
    /// Server CPU used while connecting (from before the first connect to
    /// the settled sample).
    pub connect_cpu_seconds: f64,
    pub before: Snapshot,
    pub connected: Snapshot,
    pub after_hold: Snapshot,
}

#[derive(Debug, Serialize)]
pub struct Report {
    pub scenario: &'static str,
    /// Only shown for peers: wsgate's output is as before.
    #[serde(skip_serializing_if = "Protocol::is_wsgate")]
    pub protocol: Protocol,
    pub unix_time: u64,
    pub urls: Vec<String>,
    pub requested: usize,
    pub topics_per_conn: usize,
    pub topics: Vec<String>,
    pub connected: usize,
    pub failed: u64,
    pub connect_errors: ErrorSample,
    pub connect_seconds: f64,
    pub connections_per_sec: Option<f64>,
    /// connect + handshake + subscribe per connection, microseconds.
    pub connect_us: Percentiles,
    pub hold_seconds: f64,
    /// Connections the server closed (or that failed) before we closed them.
    pub dropped_during_hold: ErrorSample,
    pub close_codes: BTreeMap<u16, u64>,
    pub server: Option<ServerOut>,
    pub client_rss_bytes: Option<u64>,
}

pub async fn run(
    targets: Arc<Targets>,
    sampler: &Sampler,
    connect: &ConnectOpts,
    p: &Params,
) -> Result<Report> {
    if p.n == 0 {
        bail!("-n must be at least 1");
    }
    targets.check_capacity(p.n)?;
    let topics = p.topics();
    let latency = Arc::new(LatencySink::new(1)?);

    let before = sampler.sample();
    eprintln!(
        "connections: opening {} connections ({} topic(s) each, {} in flight)",
        p.n,
        topics.len(),
        connect.concurrency
    );
    let topics_of = |_i: usize| -> SubTopics { topics.iter().map(|t| (t.clone(), 0)).collect() };
    let fleet = open_fleet(&targets, p.n, topics_of, latency, connect).await?;
    eprintln!(
        "  {} connected in {:.2}s ({} failed); settling {:?}",
        fleet.connected(),
        fleet.elapsed.as_secs_f64(),
        fleet.errors.count,
        p.settle
    );
    tokio::time::sleep(p.settle).await;
    let connected_snap = sampler.sample();
    let client_rss = sampler.self_rss_bytes();
    if let Some(s) = &connected_snap {
        eprintln!("  server RSS {} MiB", s.rss_bytes / (1024 * 1024));
    }
    if !p.hold.is_zero() {
        eprintln!("  holding {:?}", p.hold);
        tokio::time::sleep(p.hold).await;
    }
    let after_hold = sampler.sample();
    eprintln!("  closing");
    let connected = fleet.connected();
    let (errors, connect_us, elapsed) = (fleet.errors.clone(), fleet.connect_micros, fleet.elapsed);
    let totals = fleet.stop(Duration::from_secs(30)).await;

    let server = match (before, connected_snap, after_hold) {
        (Some(b), Some(c), Some(h)) => Some(ServerOut {
            rss_before_bytes: b.rss_bytes,
            rss_connected_bytes: c.rss_bytes,
            rss_after_hold_bytes: h.rss_bytes,
            rss_delta_per_conn_bytes: ratio(
                c.rss_bytes as f64 - b.rss_bytes as f64,
                connected as f64,
            )
            .map(f64::round),
            connect_cpu_seconds: round3((c.cpu_seconds - b.cpu_seconds).max(0.0)),
            before: b,
            connected: c,
            after_hold: h,
        }),
        _ => None,
    };
    Ok(Report {
        scenario: "connections",
        protocol: connect.protocol,
        unix_time: crate::payload::unix_nanos() / 1_000_000_000,
        urls: targets.endpoints.iter().map(|e| e.url.clone()).collect(),
        requested: p.n,
        topics_per_conn: topics.len(),
        topics,
        connected,
        failed: errors.count,
        connect_errors: errors,
        connect_seconds: round3(elapsed.as_secs_f64()),
        connections_per_sec: ratio(connected as f64, elapsed.as_secs_f64()),
        connect_us,
        hold_seconds: p.hold.as_secs_f64(),
        dropped_during_hold: totals.ended_early,
        close_codes: totals.close_codes,
        server,
        client_rss_bytes: client_rss,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn topic_names() {
        let mut p = Params {
            n: 1,
            topic: "t".into(),
            topics_per_conn: 1,
            hold: Duration::ZERO,
            settle: Duration::ZERO,
        };
        assert_eq!(p.topics(), vec!["t"]);
        p.topics_per_conn = 3;
        assert_eq!(p.topics(), vec!["t.0", "t.1", "t.2"]);
    }
}
