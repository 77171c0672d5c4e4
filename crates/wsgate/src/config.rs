//! Configuration: defaults, then a TOML file, then `WSGATE_*` environment
//! variables, then command-line overrides (later sources win). Every option
//! is documented in `docs/configuration.md`; `wsgate config defaults` prints
//! them all.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use figment::Figment;
use figment::providers::{Env, Format, Serialized, Toml};
use serde::{Deserialize, Serialize};

pub use crate::auth::AuthConfig;
pub use crate::broker::BrokerConfig;
use crate::protocol::ParseLimits;
use crate::queue::{QueueLimits, SlowConsumerPolicy};
pub use crate::source::SourcesConfig;

/// The whole node configuration.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    /// Address the HTTP/WebSocket server listens on.
    pub listen: SocketAddr,
    pub limits: Limits,
    pub outbound: Outbound,
    pub websocket: WebSocket,
    pub shutdown: Shutdown,
    pub broker: BrokerConfig,
    pub log: Log,
    /// Authentication and authorization (`docs/security.md`).
    pub auth: AuthConfig,
    /// Inbound sources: `[[sources.postgres]]` (`docs/backbones.md`).
    #[serde(default)]
    pub sources: SourcesConfig,
    /// TLS (`wss://`, `https://`) and HTTP/2.
    pub tls: TlsConfig,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            listen: SocketAddr::from(([127, 0, 0, 1], 8080)),
            limits: Limits::default(),
            outbound: Outbound::default(),
            websocket: WebSocket::default(),
            shutdown: Shutdown::default(),
            broker: BrokerConfig::default(),
            log: Log::default(),
            auth: AuthConfig::default(),
            sources: SourcesConfig::default(),
            tls: TlsConfig::default(),
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct Limits {
    /// Largest WebSocket message (and HTTP API body) accepted, in bytes.
    pub max_message_size: usize,
    /// Subscriptions one connection may hold.
    pub max_subscriptions_per_connection: usize,
    /// Concurrent WebSocket connections on this node; more get HTTP 503.
    pub max_connections: usize,
    /// Longest topic or pattern, in bytes.
    pub max_topic_length: usize,
    /// Topics in one subscribe/unsubscribe call or one HTTP broadcast.
    pub max_topics_per_request: usize,
    /// Requests in one JSON-RPC batch array.
    pub max_batch_requests: usize,
    /// Deepest nesting of JSON arrays/objects in a message or API body.
    pub max_json_depth: usize,
    /// Time allowed for a client to send its HTTP request head (slow-loris guard).
    #[serde(with = "humantime_serde")]
    pub handshake_timeout: Duration,
    /// Requests per second one connection may make (token bucket refill
    /// rate; each request of a batch counts). 0 turns the limit off.
    pub message_rate: f64,
    /// Token bucket size for `message_rate`: requests allowed in a burst.
    /// 0 means "the same as `message_rate`" (at least 1).
    pub message_burst: u32,
    /// Close a connection (4008) after this many rate-limited requests
    /// within `rate_limit_window`. 0 never closes.
    pub rate_limit_close_after: u32,
    /// Window for `rate_limit_close_after`.
    #[serde(with = "humantime_serde")]
    pub rate_limit_window: Duration,
    /// Concurrent WebSocket connections from one IP address (IPv6: one
    /// /64); more get HTTP 429. 0 turns the limit off.
    pub max_connections_per_ip: usize,
    /// WebSocket upgrades per second from one IP address (IPv6: one /64),
    /// as a token bucket; more get HTTP 429. 0 turns the limit off.
    pub ip_connection_rate: f64,
    /// Token bucket size for `ip_connection_rate`. 0 means "the same as
    /// `ip_connection_rate`" (at least 1).
    pub ip_connection_burst: u32,
    /// Concurrent WebSocket connections per user (token `sub`); more get
    /// HTTP 429. Anonymous connections are not counted here. 0: off.
    pub max_connections_per_user: usize,
    /// Close a connection (4009) that sent no text or binary message for
    /// this long, even if it answers pings. 0 turns it off.
    #[serde(with = "humantime_serde")]
    pub idle_timeout: Duration,
    /// Resident memory (bytes) above which new upgrades are refused with
    /// HTTP 503. Sampled from /proc at most every 100 ms. 0 turns it off.
    pub max_memory: u64,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_message_size: 64 * 1024,
            max_subscriptions_per_connection: 4096,
            max_connections: 10_000,
            max_topic_length: 256,
            max_topics_per_request: 1024,
            max_batch_requests: 64,
            max_json_depth: 32,
            handshake_timeout: Duration::from_secs(10),
            message_rate: 0.0,
            message_burst: 0,
            rate_limit_close_after: 100,
            rate_limit_window: Duration::from_secs(10),
            max_connections_per_ip: 0,
            ip_connection_rate: 0.0,
            ip_connection_burst: 0,
            max_connections_per_user: 0,
            idle_timeout: Duration::ZERO,
            max_memory: 0,
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct Outbound {
    /// Frames queued for one connection before the slow-consumer policy applies.
    pub max_messages: usize,
    /// Bytes queued for one connection before the slow-consumer policy applies.
    pub max_bytes: usize,
    /// `disconnect` (close 4000) or `drop_oldest`.
    pub policy: SlowConsumerPolicy,
    /// A write to a client socket taking longer than this closes it (4002).
    #[serde(with = "humantime_serde")]
    pub write_timeout: Duration,
}

impl Default for Outbound {
    fn default() -> Self {
        Outbound {
            max_messages: 4096,
            max_bytes: 4 * 1024 * 1024,
            policy: SlowConsumerPolicy::Disconnect,
            write_timeout: Duration::from_secs(10),
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct WebSocket {
    /// How often the server pings each client.
    #[serde(with = "humantime_serde")]
    pub ping_interval: Duration,
    /// A client silent for `ping_interval + ping_timeout` is closed (4001).
    #[serde(with = "humantime_serde")]
    pub ping_timeout: Duration,
}

impl Default for WebSocket {
    fn default() -> Self {
        WebSocket {
            ping_interval: Duration::from_secs(25),
            ping_timeout: Duration::from_secs(20),
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct Shutdown {
    /// How long clients get to receive what is queued after SIGINT/SIGTERM.
    #[serde(with = "humantime_serde")]
    pub grace: Duration,
}

impl Default for Shutdown {
    fn default() -> Self {
        Shutdown {
            grace: Duration::from_secs(10),
        }
    }
}

/// The `[tls]` section: with `cert` and `key`, the node serves `https://`
/// and `wss://` only (see `docs/security.md#tls`).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct TlsConfig {
    /// PEM file with the certificate chain (leaf first).
    pub cert: Option<PathBuf>,
    /// PEM file with the private key (PKCS#8, PKCS#1 or SEC1).
    pub key: Option<PathBuf>,
    /// Offer HTTP/2 through ALPN (`h2`, then `http/1.1`), with WebSocket
    /// over HTTP/2 (RFC 8441). HTTP/1.1 always works.
    pub http2: bool,
    /// How often the files are checked for changes (then reloaded; SIGHUP
    /// reloads at once). 0 turns the check off.
    #[serde(with = "humantime_serde")]
    pub watch_interval: Duration,
}

impl Default for TlsConfig {
    fn default() -> Self {
        TlsConfig {
            cert: None,
            key: None,
            http2: true,
            watch_interval: Duration::from_secs(5),
        }
    }
}

impl TlsConfig {
    /// True when TLS is configured.
    pub fn enabled(&self) -> bool {
        self.cert.is_some()
    }

    fn validate(&self) -> Result<(), String> {
        if self.cert.is_some() != self.key.is_some() {
            return Err("tls.cert and tls.key must be set together".into());
        }
        Ok(())
    }
}

#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Default)]
#[serde(rename_all = "snake_case")]
pub enum LogFormat {
    #[default]
    Text,
    Json,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct Log {
    /// `text` or `json`. The filter comes from `RUST_LOG` (default `info`).
    pub format: LogFormat,
}

impl Default for Log {
    fn default() -> Self {
        Log {
            format: LogFormat::Text,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("configuration: {0}")]
    Load(#[from] Box<figment::Error>),
    #[error("configuration: {0}")]
    Invalid(String),
    #[error("configuration: cannot parse override {0:?}: expected key.path=value")]
    Override(String),
}

impl Config {
    /// Layers defaults, the TOML file (if given), `WSGATE_*` variables and
    /// `key.path=value` overrides. Nested keys in variables use `__`:
    /// `WSGATE_LIMITS__MAX_CONNECTIONS=20000`.
    pub fn load(file: Option<&Path>, overrides: &[String]) -> Result<Config, ConfigError> {
        let mut fig = Figment::from(Serialized::defaults(Config::default()));
        if let Some(file) = file {
            if !file.exists() {
                return Err(ConfigError::Invalid(format!(
                    "config file {} does not exist",
                    file.display()
                )));
            }
            fig = fig.merge(Toml::file_exact(file));
        }
        fig = fig.merge(Env::prefixed("WSGATE_").split("__").ignore(&["config"]));
        for o in overrides {
            let (key, value) = o
                .split_once('=')
                .ok_or_else(|| ConfigError::Override(o.clone()))?;
            let key = key.trim();
            let value = value.trim();
            // Accept TOML values (numbers, booleans, quoted strings) and bare strings.
            let doc = if toml::from_str::<toml::Table>(&format!("v = {value}")).is_ok() {
                format!("{key} = {value}")
            } else {
                format!("{key} = {}", toml::Value::String(value.to_string()))
            };
            if toml::from_str::<toml::Table>(&doc).is_err() {
                return Err(ConfigError::Override(o.clone()));
            }
            fig = fig.merge(Toml::string(&doc));
        }
        let config: Config = fig.extract().map_err(Box::new)?;
        config.validate()?;
        Ok(config)
    }

    /// Rejects combinations that cannot work.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let bad = |m: &str| Err(ConfigError::Invalid(m.to_string()));
        let l = &self.limits;
        if l.max_message_size < 256 {
            return bad("limits.max_message_size must be at least 256");
        }
        if l.max_topic_length == 0 || l.max_topics_per_request == 0 || l.max_batch_requests == 0 {
            return bad(
                "limits.max_topic_length, max_topics_per_request and max_batch_requests must be positive",
            );
        }
        if l.max_connections == 0 || l.max_subscriptions_per_connection == 0 {
            return bad(
                "limits.max_connections and max_subscriptions_per_connection must be positive",
            );
        }
        let rate_ok = |r: f64| r.is_finite() && r >= 0.0;
        if !rate_ok(l.message_rate) || !rate_ok(l.ip_connection_rate) {
            return bad(
                "limits.message_rate and ip_connection_rate must be finite and not negative",
            );
        }
        if l.message_rate > 0.0 && l.rate_limit_close_after > 0 && l.rate_limit_window.is_zero() {
            return bad("limits.rate_limit_window must be positive");
        }
        if !l.idle_timeout.is_zero() && l.idle_timeout < Duration::from_millis(100) {
            return bad("limits.idle_timeout must be 0 (off) or at least 100ms");
        }
        self.tls.validate().map_err(ConfigError::Invalid)?;
        if self.outbound.max_messages == 0 {
            return bad("outbound.max_messages must be positive");
        }
        if self.outbound.max_bytes < l.max_message_size {
            return bad("outbound.max_bytes must be at least limits.max_message_size");
        }
        if self.websocket.ping_interval.is_zero() || self.websocket.ping_timeout.is_zero() {
            return bad("websocket.ping_interval and ping_timeout must be positive");
        }
        self.auth
            .validate(self.listen, l.max_topic_length)
            .map_err(ConfigError::Invalid)?;
        self.sources
            .validate(l.max_topic_length)
            .map_err(ConfigError::Invalid)?;
        Ok(())
    }

    /// The defaults as a TOML document.
    pub fn defaults_toml() -> String {
        toml::to_string_pretty(&Config::default()).unwrap_or_default()
    }

    pub(crate) fn parse_limits(&self) -> ParseLimits {
        ParseLimits {
            max_topic_length: self.limits.max_topic_length,
            max_topics_per_request: self.limits.max_topics_per_request,
            max_batch_requests: self.limits.max_batch_requests,
            max_json_depth: self.limits.max_json_depth,
        }
    }

    pub(crate) fn queue_limits(&self) -> QueueLimits {
        QueueLimits {
            max_messages: self.outbound.max_messages,
            max_bytes: self.outbound.max_bytes,
            policy: self.outbound.policy,
        }
    }
}

#[cfg(test)]
// figment's Jail API fixes the closure's error type.
#[allow(clippy::result_large_err)]
mod tests {
    use super::*;

    #[test]
    fn defaults_round_trip_through_toml() {
        let text = Config::defaults_toml();
        let back: Config = toml::from_str(&text).unwrap_or_else(|e| panic!("{e}\n{text}"));
        assert_eq!(back, Config::default());
        assert!(text.contains("handshake_timeout = \"10s\""), "{text}");
    }

    #[test]
    fn file_env_and_overrides_layer_in_order() {
        figment::Jail::expect_with(|jail| {
            jail.create_file(
                "wsgate.toml",
                "listen = \"127.0.0.1:9000\"\n[limits]\nmax_connections = 5\nmax_topic_length = 100\n",
            )?;
            jail.set_env("WSGATE_LIMITS__MAX_CONNECTIONS", "6");
            jail.set_env("WSGATE_CONFIG", "ignored.toml");
            let c = Config::load(Some(Path::new("wsgate.toml")), &[]).map_err(|e| e.to_string())?;
            assert_eq!(c.listen.port(), 9000);
            assert_eq!(c.limits.max_connections, 6, "env beats file");
            assert_eq!(c.limits.max_topic_length, 100);
            let c = Config::load(
                Some(Path::new("wsgate.toml")),
                &[
                    "limits.max_connections=7".into(),
                    "outbound.policy=drop_oldest".into(),
                    "shutdown.grace=3s".into(),
                ],
            )
            .map_err(|e| e.to_string())?;
            assert_eq!(c.limits.max_connections, 7, "overrides beat env");
            assert_eq!(c.outbound.policy, SlowConsumerPolicy::DropOldest);
            assert_eq!(c.shutdown.grace, Duration::from_secs(3));
            Ok(())
        });
    }

    #[test]
    fn unknown_keys_and_bad_values_are_errors() {
        figment::Jail::expect_with(|jail| {
            jail.create_file("a.toml", "[limits]\nmax_conections = 5\n")?;
            assert!(Config::load(Some(Path::new("a.toml")), &[]).is_err());
            assert!(Config::load(None, &["limits.max_message_size=10".into()]).is_err());
            assert!(Config::load(None, &["nonsense".into()]).is_err());
            assert!(Config::load(Some(Path::new("missing.toml")), &[]).is_err());
            Ok(())
        });
    }
}
