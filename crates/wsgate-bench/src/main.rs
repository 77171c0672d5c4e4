//! `wsgate-bench`: load tool for wsgate and peer gateways: anything speaking
//! wsgate's JSON-RPC over WebSocket, Socket.IO 4 servers with the events of
//! bench/peers/socketio-server.js, and nats-server's WebSocket listener
//! (`--protocol`).
//!
//! Results are printed as one JSON object per run on stdout; progress goes
//! to stderr.

mod conn;
mod payload;
mod proc;
mod proto;
mod report;
mod scenarios;
mod track;

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result, anyhow};
use clap::{Args, Parser, Subcommand};

use crate::conn::{Endpoint, Targets, parse_source_ips};
use crate::proc::Sampler;
use crate::proto::Protocol;
use crate::scenarios::ConnectOpts;
use crate::scenarios::fanout::Via;
use crate::scenarios::publisher::Mode;

/// Load tool for wsgate: connection capacity, fan-out and flood throughput,
/// delivery latency and loss.
#[derive(Debug, Parser)]
#[command(name = "wsgate-bench", version, about)]
struct Cli {
    #[command(flatten)]
    common: Common,
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Debug, Args)]
struct Common {
    /// WebSocket URL of a node; repeat for several nodes (connections are
    /// spread round-robin; the publisher uses the first).
    #[arg(long = "url", global = true, default_value = "ws://127.0.0.1:8080/ws")]
    urls: Vec<String>,

    /// Protocol the server speaks: wsgate JSON-RPC (also the Node `ws` peer
    /// in bench/peers), Socket.IO 4 (events subscribe/publish/message with
    /// acks; a URL without a path gets /socket.io/?EIO=4&transport=websocket),
    /// or NATS over WebSocket (each PUB is followed by a PING whose PONG is
    /// the publish acknowledgement).
    #[arg(long, global = true, value_enum, default_value_t = Protocol::Wsgate)]
    protocol: Protocol,

    /// Server process to sample (RSS, CPU) from /proc; repeatable.
    #[arg(long = "pid", global = true)]
    pids: Vec<u32>,

    /// Source addresses to bind client sockets to, round-robin: a range
    /// `127.0.0.2-127.0.0.250`, a count N (127.0.0.1 and the N-1 after it),
    /// or a comma-separated list.
    #[arg(long, global = true)]
    source_ips: Option<String>,

    /// Also write the JSON result (pretty-printed) to this file.
    #[arg(long, global = true)]
    json_out: Option<PathBuf>,

    /// Connections being opened at the same time.
    #[arg(long, global = true, default_value_t = 200)]
    concurrency: usize,

    /// Limit for one connect + handshake + subscribe, seconds.
    #[arg(long, global = true, default_value = "10", value_parser = secs)]
    connect_timeout: Duration,

    /// Limit for opening all connections, seconds.
    #[arg(long, global = true, default_value = "300", value_parser = secs)]
    connect_phase_timeout: Duration,

    /// WebSocket read buffer per subscriber connection, bytes.
    #[arg(long, global = true, default_value_t = 4096)]
    read_buffer: usize,

    /// Runtime worker threads (default: one per core).
    #[arg(long, global = true)]
    threads: Option<usize>,
}

#[derive(Debug, Subcommand)]
enum Cmd {
    /// Open N subscribed connections; report connect time and server memory
    /// per connection; hold; close.
    Connections {
        /// Connections to open.
        #[arg(short = 'n', long)]
        n: usize,
        /// Topic to subscribe to (with --topics-per-conn K > 1: T.0 … T.{K-1}).
        #[arg(long, default_value = "bench.conn")]
        topic: String,
        /// Topics per connection.
        #[arg(long, default_value_t = 1)]
        topics_per_conn: usize,
        /// Seconds to hold the connections open after they are all up.
        #[arg(long, default_value = "0", value_parser = secs)]
        hold: Duration,
        /// Seconds to wait after connecting before sampling server memory.
        #[arg(long, default_value = "2", value_parser = secs)]
        settle: Duration,
    },
    /// S subscribers over T topics; one publisher at a fixed rate.
    Fanout {
        #[command(flatten)]
        sub: SubArgs,
        /// Messages per second (all topics together).
        #[arg(long, default_value_t = 1000.0, value_parser = positive)]
        rate: f64,
        /// Publish through the WebSocket or through POST /api/publish.
        #[arg(long, value_enum, default_value_t = Via::Ws)]
        publish_via: Via,
        /// HTTP publish requests in flight (at most one per topic).
        #[arg(long, default_value_t = 32)]
        http_concurrency: usize,
    },
    /// Closed loop: the publisher keeps at most W publishes unacknowledged;
    /// measures the highest delivery rate.
    Flood {
        #[command(flatten)]
        sub: SubArgs,
        /// Unacknowledged publishes allowed.
        #[arg(long, default_value_t = 64)]
        window: usize,
    },
    /// A tiny fanout that fails (exit 1) on any loss, duplicate, reorder or
    /// error. For CI.
    Smoke {
        #[arg(long, default_value_t = 20)]
        subscribers: usize,
        #[arg(long, default_value_t = 2)]
        topics: usize,
        #[arg(long, default_value_t = 200.0, value_parser = positive)]
        rate: f64,
        #[arg(long, default_value = "2", value_parser = secs)]
        duration: Duration,
        #[arg(long, default_value_t = 128)]
        size: usize,
        #[arg(long, value_enum, default_value_t = Via::Ws)]
        publish_via: Via,
    },
}

/// Options shared by fanout and flood.
#[derive(Debug, Args)]
struct SubArgs {
    /// Subscriber connections.
    #[arg(long, default_value_t = 100)]
    subscribers: usize,
    /// Topics `PREFIX.0` … `PREFIX.{T-1}`; subscriber i takes topic i mod T.
    #[arg(long, default_value_t = 1)]
    topics: usize,
    /// Topic name prefix.
    #[arg(long, default_value = "bench")]
    topic_prefix: String,
    /// Approximate size of each message's data, bytes.
    #[arg(long, default_value_t = 256)]
    size: usize,
    /// Seconds of publishing.
    #[arg(long, default_value = "10", value_parser = secs)]
    duration: Duration,
    /// Longest wait for deliveries after the last publish, seconds.
    #[arg(long, default_value = "2", value_parser = secs)]
    drain: Duration,
}

fn secs(s: &str) -> Result<Duration, String> {
    let v: f64 = s.parse().map_err(|e| format!("{e}"))?;
    if !v.is_finite() || !(0.0..=86_400.0).contains(&v) {
        return Err("expected seconds between 0 and 86400".to_owned());
    }
    Ok(Duration::from_secs_f64(v))
}

fn positive(s: &str) -> Result<f64, String> {
    let v: f64 = s.parse().map_err(|e| format!("{e}"))?;
    if !v.is_finite() || v <= 0.0 {
        return Err("expected a positive number".to_owned());
    }
    Ok(v)
}

/// Slack on top of each run's own time budget before it is cut off.
const DEADLINE_SLACK: Duration = Duration::from_secs(30);

async fn run(cli: Cli) -> Result<ExitCode> {
    let c = &cli.common;
    let mut endpoints = Vec::with_capacity(c.urls.len());
    for url in &c.urls {
        endpoints.push(Endpoint::resolve(&c.protocol.url_for(url)).await?);
    }
    let source_ips = match &c.source_ips {
        Some(spec) => parse_source_ips(spec)?,
        None => Vec::new(),
    };
    let targets = Arc::new(Targets {
        endpoints,
        source_ips,
    });
    let sampler = Sampler::new(c.pids.clone())?;
    let connect = ConnectOpts {
        concurrency: c.concurrency,
        timeout: c.connect_timeout,
        phase_timeout: c.connect_phase_timeout,
        read_buffer: c.read_buffer.max(256),
        protocol: c.protocol,
    };
    let json_out = c.json_out.as_deref();

    let fanout_params =
        |scenario, sub: &SubArgs, mode, via, http_concurrency| scenarios::fanout::Params {
            scenario,
            subscribers: sub.subscribers,
            topics: sub.topics,
            topic_prefix: sub.topic_prefix.clone(),
            size: sub.size,
            mode,
            via,
            drain: sub.drain,
            http_concurrency,
        };

    match &cli.cmd {
        Cmd::Connections {
            n,
            topic,
            topics_per_conn,
            hold,
            settle,
        } => {
            let p = scenarios::connections::Params {
                n: *n,
                topic: topic.clone(),
                topics_per_conn: *topics_per_conn,
                hold: *hold,
                settle: *settle,
            };
            let budget = c.connect_phase_timeout + *settle + *hold + 2 * DEADLINE_SLACK;
            let report = with_deadline(
                budget,
                scenarios::connections::run(targets, &sampler, &connect, &p),
            )
            .await?;
            report::emit(&report, json_out)?;
            Ok(ExitCode::SUCCESS)
        }
        Cmd::Fanout {
            sub,
            rate,
            publish_via,
            http_concurrency,
        } => {
            let mode = Mode::Rate {
                rate: *rate,
                duration: sub.duration,
            };
            let p = fanout_params("fanout", sub, mode, *publish_via, *http_concurrency);
            let report = run_fanout(&targets, &sampler, &connect, &p).await?;
            report::emit(&report, json_out)?;
            Ok(ExitCode::SUCCESS)
        }
        Cmd::Flood { sub, window } => {
            let mode = Mode::Window {
                window: (*window).max(1),
                duration: sub.duration,
            };
            let p = fanout_params("flood", sub, mode, Via::Ws, 1);
            let report = run_fanout(&targets, &sampler, &connect, &p).await?;
            report::emit(&report, json_out)?;
            Ok(ExitCode::SUCCESS)
        }
        Cmd::Smoke {
            subscribers,
            topics,
            rate,
            duration,
            size,
            publish_via,
        } => {
            let p = scenarios::fanout::Params {
                scenario: "smoke",
                subscribers: *subscribers,
                topics: *topics,
                topic_prefix: "bench.smoke".to_owned(),
                size: *size,
                mode: Mode::Rate {
                    rate: *rate,
                    duration: *duration,
                },
                via: *publish_via,
                drain: Duration::from_secs(2),
                http_concurrency: 8,
            };
            let report = run_fanout(&targets, &sampler, &connect, &p).await?;
            report::emit(&report, json_out)?;
            let problems = report.problems();
            if problems.is_empty() {
                eprintln!(
                    "smoke: OK ({} published, {} delivered, p99 {} us)",
                    report.published, report.delivered, report.latency_us.p99
                );
                Ok(ExitCode::SUCCESS)
            } else {
                eprintln!("smoke: FAILED: {}", problems.join(", "));
                Ok(ExitCode::FAILURE)
            }
        }
    }
}

async fn run_fanout(
    targets: &Arc<Targets>,
    sampler: &Sampler,
    connect: &ConnectOpts,
    p: &scenarios::fanout::Params,
) -> Result<scenarios::fanout::Report> {
    let budget = connect.phase_timeout + p.duration() + p.drain + DEADLINE_SLACK;
    with_deadline(
        budget,
        scenarios::fanout::run(targets.clone(), sampler, connect, p),
    )
    .await
}

async fn with_deadline<T>(
    budget: Duration,
    fut: impl std::future::Future<Output = Result<T>>,
) -> Result<T> {
    tokio::time::timeout(budget, fut)
        .await
        .map_err(|_| anyhow!("run exceeded its hard deadline of {budget:?}; giving up"))?
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let mut builder = tokio::runtime::Builder::new_multi_thread();
    builder.enable_all();
    if let Some(t) = cli.common.threads {
        builder.worker_threads(t.max(1));
    }
    let rt = match builder.build().context("building the tokio runtime") {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: {e:#}");
            return ExitCode::FAILURE;
        }
    };
    let res = rt.block_on(run(cli));
    // Do not wait for stragglers (e.g. connections that would not close).
    rt.shutdown_timeout(Duration::from_secs(1));
    match res {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn cli_is_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn cli_parses_examples() -> Result<()> {
        let cli = Cli::try_parse_from([
            "wsgate-bench",
            "fanout",
            "--url",
            "ws://127.0.0.1:1/ws",
            "--url",
            "ws://127.0.0.1:2/ws",
            "--subscribers",
            "10",
            "--topics",
            "3",
            "--rate",
            "500",
            "--duration",
            "1.5",
            "--publish-via",
            "http",
            "--pid",
            "42",
        ])?;
        assert_eq!(cli.common.urls.len(), 2);
        assert_eq!(cli.common.pids, vec![42]);
        match cli.cmd {
            Cmd::Fanout {
                sub, publish_via, ..
            } => {
                assert_eq!(sub.duration, Duration::from_millis(1500));
                assert_eq!(publish_via, Via::Http);
            }
            other => anyhow::bail!("parsed as {other:?}"),
        }
        let cli = Cli::try_parse_from(["wsgate-bench", "connections", "-n", "5", "--hold", "1"])?;
        assert_eq!(cli.common.urls, vec!["ws://127.0.0.1:8080/ws"]);
        assert_eq!(cli.common.protocol, Protocol::Wsgate);
        for (name, p) in [
            ("wsgate", Protocol::Wsgate),
            ("socketio", Protocol::Socketio),
            ("nats", Protocol::Nats),
        ] {
            let cli = Cli::try_parse_from(["wsgate-bench", "flood", "--protocol", name])?;
            assert_eq!(cli.common.protocol, p);
        }
        assert!(Cli::try_parse_from(["wsgate-bench", "flood", "--protocol", "mqtt"]).is_err());
        assert!(Cli::try_parse_from(["wsgate-bench", "fanout", "--rate", "0"]).is_err());
        assert!(Cli::try_parse_from(["wsgate-bench", "smoke", "--duration", "-1"]).is_err());
        Ok(())
    }
}
