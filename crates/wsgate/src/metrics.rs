//! Prometheus metrics (`GET /metrics`).
//!
//! Counters and gauges are prometheus-client atomics. The publish-to-write
//! latency histogram is our own lock-free [`LatencyHistogram`] because
//! prometheus-client's histogram takes a mutex per observation, and it is
//! observed once per delivered frame.

use std::sync::atomic::{AtomicU64, Ordering};

use prometheus_client::encoding::{EncodeMetric, MetricEncoder, NoLabelSet};
use prometheus_client::metrics::MetricType;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

/// Bucket upper bounds in seconds: 50 µs … 10 s.
const BOUNDS: [f64; 16] = [
    0.000_05, 0.000_1, 0.000_25, 0.000_5, 0.001, 0.002_5, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5,
    1.0, 2.5, 10.0,
];
const BOUNDS_NS: [u64; 16] = [
    50_000,
    100_000,
    250_000,
    500_000,
    1_000_000,
    2_500_000,
    5_000_000,
    10_000_000,
    25_000_000,
    50_000_000,
    100_000_000,
    250_000_000,
    500_000_000,
    1_000_000_000,
    2_500_000_000,
    10_000_000_000,
];

/// A fixed-bucket histogram of durations with atomic counters. Clones share
/// the same counters.
#[derive(Debug, Default, Clone)]
pub struct LatencyHistogram {
    inner: std::sync::Arc<HistogramInner>,
}

#[derive(Debug, Default)]
struct HistogramInner {
    /// One more than the bounds: the +Inf bucket.
    buckets: [AtomicU64; 17],
    sum_ns: AtomicU64,
    count: AtomicU64,
}

impl LatencyHistogram {
    pub fn observe_ns(&self, ns: u64) {
        let i = BOUNDS_NS
            .iter()
            .position(|b| ns <= *b)
            .unwrap_or(BOUNDS_NS.len());
        let h = &self.inner;
        h.buckets[i].fetch_add(1, Ordering::Relaxed);
        h.sum_ns.fetch_add(ns, Ordering::Relaxed);
        h.count.fetch_add(1, Ordering::Relaxed);
    }

    pub fn count(&self) -> u64 {
        self.inner.count.load(Ordering::Relaxed)
    }
}

impl EncodeMetric for LatencyHistogram {
    fn encode(&self, mut encoder: MetricEncoder) -> Result<(), std::fmt::Error> {
        let mut buckets = [(0.0, 0u64); 17];
        for (i, b) in buckets.iter_mut().enumerate() {
            *b = (
                BOUNDS.get(i).copied().unwrap_or(f64::INFINITY),
                self.inner.buckets[i].load(Ordering::Relaxed),
            );
        }
        let sum = self.inner.sum_ns.load(Ordering::Relaxed) as f64 / 1e9;
        encoder.encode_histogram::<NoLabelSet>(sum, self.count(), &buckets, None)
    }

    fn metric_type(&self) -> MetricType {
        MetricType::Histogram
    }
}

/// Every metric the node exports. Cloning a handle is cheap (Arc inside).
pub struct Metrics {
    pub connections: Gauge,
    pub connections_total: Counter,
    pub subscriptions: Gauge,
    pub topics: Gauge,
    pub messages_in: Counter,
    pub messages_out: Counter,
    pub bytes_in: Counter,
    pub bytes_out: Counter,
    pub publications: Counter,
    pub deliveries_dropped: Counter,
    pub slow_consumer_disconnects: Counter,
    pub ping_timeouts: Counter,
    pub rejected_connections: Counter,
    pub protocol_errors: Counter,
    pub publish_to_write: LatencyHistogram,
    /// Requests refused with -32002 (`limits.message_rate`).
    pub rate_limited: Counter,
    /// Connections closed with 4008 (persistent rate-limit abuse).
    pub rate_limit_disconnects: Counter,
    /// Connections closed with 4009 (`limits.idle_timeout`).
    pub idle_timeouts: Counter,
    /// Refused upgrades by `reason` (see [`Metrics::refused`]).
    pub upgrades_refused: Family<Vec<(&'static str, &'static str)>, Counter>,
    /// Resident memory at the last sample (`limits.max_memory`).
    pub memory_rss: Gauge,
    pub tls_reloads: Counter,
    pub tls_reload_failures: Counter,
    /// Inbound sources (`[sources]`): notifications received, notifications
    /// not published (malformed, publish failed, queue full), sources
    /// connected now.
    pub source_notifications: Counter,
    pub source_errors: Counter,
    pub sources_connected: Gauge,
    registry: Registry,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    pub fn new() -> Self {
        let mut registry = Registry::with_prefix("wsgate");
        macro_rules! reg {
            ($name:literal, $help:literal, $m:expr) => {{
                let m = $m;
                registry.register($name, $help, m.clone());
                m
            }};
        }
        let connections = reg!(
            "connections",
            "WebSocket connections open now",
            Gauge::default()
        );
        let connections_total = reg!(
            "connections_accepted",
            "WebSocket connections accepted since start",
            Counter::default()
        );
        let subscriptions = reg!(
            "subscriptions",
            "Subscriptions held by connections on this node",
            Gauge::default()
        );
        let topics = reg!(
            "topics",
            "Distinct topics and patterns with a subscriber on this node",
            Gauge::default()
        );
        let messages_in = reg!(
            "messages_in",
            "WebSocket messages received from clients",
            Counter::default()
        );
        let messages_out = reg!(
            "messages_out",
            "WebSocket text messages written to clients",
            Counter::default()
        );
        let bytes_in = reg!(
            "bytes_in",
            "Payload bytes received from clients",
            Counter::default()
        );
        let bytes_out = reg!(
            "bytes_out",
            "Payload bytes written to clients",
            Counter::default()
        );
        let publications = reg!(
            "publications",
            "Messages accepted for fan-out (publish, broadcast, HTTP API, backbone)",
            Counter::default()
        );
        let deliveries_dropped = reg!(
            "deliveries_dropped",
            "Deliveries dropped because a subscriber's queue was full",
            Counter::default()
        );
        let slow_consumer_disconnects = reg!(
            "slow_consumer_disconnects",
            "Connections closed because their outbound queue overflowed",
            Counter::default()
        );
        let ping_timeouts = reg!(
            "ping_timeouts",
            "Connections closed because the peer stopped answering pings",
            Counter::default()
        );
        let rejected_connections = reg!(
            "rejected_connections",
            "WebSocket upgrades refused (all reasons; see upgrades_refused)",
            Counter::default()
        );
        let protocol_errors = reg!(
            "protocol_errors",
            "Requests answered with a JSON-RPC error",
            Counter::default()
        );
        let rate_limited = reg!(
            "rate_limited",
            "Requests refused with -32002 because the connection exceeded limits.message_rate",
            Counter::default()
        );
        let rate_limit_disconnects = reg!(
            "rate_limit_disconnects",
            "Connections closed with 4008 for exceeding their message rate persistently",
            Counter::default()
        );
        let idle_timeouts = reg!(
            "idle_timeouts",
            "Connections closed with 4009 after limits.idle_timeout without a message",
            Counter::default()
        );
        let upgrades_refused = reg!(
            "upgrades_refused",
            "WebSocket upgrades refused, by reason",
            Family::<Vec<(&'static str, &'static str)>, Counter>::default()
        );
        let memory_rss = reg!(
            "memory_rss_bytes",
            "Resident memory of the process at the last sample (with limits.max_memory)",
            Gauge::default()
        );
        let tls_reloads = reg!(
            "tls_reloads",
            "TLS certificate reloads (SIGHUP or changed files)",
            Counter::default()
        );
        let tls_reload_failures = reg!(
            "tls_reload_failures",
            "TLS certificate reloads that failed (the previous certificate stays)",
            Counter::default()
        );
        let publish_to_write = LatencyHistogram::default();
        registry.register(
            "publish_to_write_seconds",
            "Time from accepting a publication to writing it to a subscriber's socket",
            publish_to_write.clone(),
        );
        let source_notifications = reg!(
            "source_notifications",
            "Notifications received from inbound sources (Postgres LISTEN)",
            Counter::default()
        );
        let source_errors = reg!(
            "source_errors",
            "Source notifications not published: malformed payload, bad topic, publish failure, queue full",
            Counter::default()
        );
        let sources_connected = reg!(
            "sources_connected",
            "Inbound sources connected and listening now",
            Gauge::default()
        );
        Metrics {
            connections,
            connections_total,
            subscriptions,
            topics,
            messages_in,
            messages_out,
            bytes_in,
            bytes_out,
            publications,
            deliveries_dropped,
            slow_consumer_disconnects,
            ping_timeouts,
            rejected_connections,
            protocol_errors,
            publish_to_write,
            rate_limited,
            rate_limit_disconnects,
            idle_timeouts,
            upgrades_refused,
            memory_rss,
            tls_reloads,
            tls_reload_failures,
            source_notifications,
            source_errors,
            sources_connected,
            registry,
        }
    }

    /// Counts a refused WebSocket upgrade, in
    /// `wsgate_rejected_connections_total` and by reason in
    /// `wsgate_upgrades_refused_total{reason=...}`.
    pub fn refused(&self, reason: &'static str) {
        self.rejected_connections.inc();
        self.upgrades_refused
            .get_or_create(&vec![("reason", reason)])
            .inc();
    }

    /// Renders the Prometheus/OpenMetrics text exposition.
    pub fn render(&self) -> String {
        let mut out = String::with_capacity(4096);
        // Writing into a String cannot fail.
        let _ = prometheus_client::encoding::text::encode(&mut out, &self.registry);
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn histogram_buckets_and_render() {
        let m = Metrics::new();
        m.publish_to_write.observe_ns(40_000);
        m.publish_to_write.observe_ns(3_000_000);
        m.publish_to_write.observe_ns(60_000_000_000);
        m.connections.inc();
        let text = m.render();
        assert!(text.contains("wsgate_connections 1"), "{text}");
        assert!(
            text.contains("wsgate_publish_to_write_seconds_bucket{le=\"0.00005\"} 1"),
            "{text}"
        );
        assert!(
            text.contains("wsgate_publish_to_write_seconds_bucket{le=\"0.005\"} 2"),
            "{text}"
        );
        assert!(
            text.contains("wsgate_publish_to_write_seconds_count 3"),
            "{text}"
        );
    }
}
