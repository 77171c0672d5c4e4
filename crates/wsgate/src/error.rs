//! Errors at the edges, and the one place they map to JSON-RPC error codes,
//! HTTP statuses and WebSocket close codes.

use http::StatusCode;

use crate::broker::BrokerError;
use crate::topic::TopicError;

/// JSON-RPC error codes used by wsgate (see `docs/protocol.md`).
pub mod code {
    pub const PARSE_ERROR: i32 = -32700;
    pub const INVALID_REQUEST: i32 = -32600;
    pub const METHOD_NOT_FOUND: i32 = -32601;
    pub const INVALID_PARAMS: i32 = -32602;
    pub const INTERNAL: i32 = -32603;
    /// The caller may not do this (topic permissions, origin, refresh).
    pub const FORBIDDEN: i32 = -32001;
    /// Too many requests: the connection's message rate (`limits.message_rate`),
    /// or an upgrade over a per-address or per-user limit (HTTP 429).
    pub const RATE_LIMITED: i32 = -32002;
    pub const TOO_MANY_SUBSCRIPTIONS: i32 = -32003;
    pub const BACKBONE_UNAVAILABLE: i32 = -32004;
    pub const SHUTTING_DOWN: i32 = -32005;
    /// Missing, invalid or expired credentials (a token or an API key).
    pub const UNAUTHORIZED: i32 = -32006;
}

/// A request-level error: answered to the caller, the connection stays open.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Error {
    #[error("parse error: {0}")]
    Parse(String),
    #[error("invalid request: {0}")]
    InvalidRequest(String),
    #[error("method not found: {0}")]
    MethodNotFound(String),
    #[error("invalid params: {0}")]
    InvalidParams(String),
    #[error("invalid topic {topic:?}: {reason}")]
    InvalidTopic { topic: String, reason: TopicError },
    #[error("too many subscriptions: the limit is {limit} per connection")]
    TooManySubscriptions { limit: usize },
    #[error("too many topics in one request: {count} > {limit}")]
    TooManyTopics { count: usize, limit: usize },
    #[error("forbidden: {0}")]
    Forbidden(String),
    #[error("unauthorized: {0}")]
    Unauthorized(String),
    #[error("backbone unavailable: {0}")]
    Backbone(String),
    #[error("server is shutting down")]
    ShuttingDown,
    /// A rate or per-address/per-user connection limit was exceeded.
    #[error("rate limited: {0}")]
    RateLimited(String),
    #[error("request body exceeds the limit of {limit} bytes")]
    TooLarge { limit: usize },
    #[error("internal error: {0}")]
    Internal(String),
}

impl Error {
    /// The JSON-RPC error code for this error.
    pub fn rpc_code(&self) -> i32 {
        match self {
            Error::Parse(_) => code::PARSE_ERROR,
            Error::InvalidRequest(_) => code::INVALID_REQUEST,
            Error::MethodNotFound(_) => code::METHOD_NOT_FOUND,
            Error::InvalidParams(_)
            | Error::InvalidTopic { .. }
            | Error::TooManyTopics { .. }
            | Error::TooLarge { .. } => code::INVALID_PARAMS,
            Error::TooManySubscriptions { .. } => code::TOO_MANY_SUBSCRIPTIONS,
            Error::Forbidden(_) => code::FORBIDDEN,
            Error::Unauthorized(_) => code::UNAUTHORIZED,
            Error::Backbone(_) => code::BACKBONE_UNAVAILABLE,
            Error::ShuttingDown => code::SHUTTING_DOWN,
            Error::RateLimited(_) => code::RATE_LIMITED,
            Error::Internal(_) => code::INTERNAL,
        }
    }

    /// The HTTP status for this error on the HTTP API.
    pub fn http_status(&self) -> StatusCode {
        match self {
            Error::Parse(_)
            | Error::InvalidRequest(_)
            | Error::InvalidParams(_)
            | Error::InvalidTopic { .. }
            | Error::TooManyTopics { .. }
            | Error::TooManySubscriptions { .. } => StatusCode::BAD_REQUEST,
            Error::MethodNotFound(_) => StatusCode::NOT_FOUND,
            Error::TooLarge { .. } => StatusCode::PAYLOAD_TOO_LARGE,
            Error::Forbidden(_) => StatusCode::FORBIDDEN,
            Error::Unauthorized(_) => StatusCode::UNAUTHORIZED,
            Error::Backbone(_) | Error::ShuttingDown => StatusCode::SERVICE_UNAVAILABLE,
            Error::RateLimited(_) => StatusCode::TOO_MANY_REQUESTS,
            Error::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }
}

impl From<BrokerError> for Error {
    fn from(e: BrokerError) -> Self {
        match e {
            BrokerError::Closed => Error::ShuttingDown,
            other => Error::Backbone(other.to_string()),
        }
    }
}

/// Why the server closes a WebSocket connection. Codes are part of the
/// public protocol (`docs/protocol.md`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CloseReason {
    /// The client closed, or the session ended normally.
    Normal,
    /// The node is shutting down; reconnect (to another node).
    GoingAway,
    /// The peer violated the WebSocket protocol.
    ProtocolError,
    /// A text frame was not valid UTF-8.
    InvalidUtf8,
    /// A frame or message exceeded `limits.max_message_size`.
    MessageTooBig,
    /// An unexpected server error.
    InternalError,
    /// The outbound queue overflowed (`outbound.policy = "disconnect"`).
    SlowConsumer,
    /// The peer did not answer pings within `websocket.ping_timeout`.
    PingTimeout,
    /// A write to the peer did not complete within `outbound.write_timeout`.
    WriteTimeout,
    /// The connection's token expired (plus `auth.leeway` and
    /// `auth.expiry_grace`) without a `refresh`.
    TokenExpired,
    /// The connection kept exceeding its message rate
    /// (`limits.rate_limit_close_after` limited requests within
    /// `limits.rate_limit_window`).
    RateLimited,
    /// The connection sent no message for `limits.idle_timeout`.
    IdleTimeout,
}

impl CloseReason {
    pub fn code(self) -> u16 {
        match self {
            CloseReason::Normal => 1000,
            CloseReason::GoingAway => 1001,
            CloseReason::ProtocolError => 1002,
            CloseReason::InvalidUtf8 => 1007,
            CloseReason::MessageTooBig => 1009,
            CloseReason::InternalError => 1011,
            CloseReason::SlowConsumer => 4000,
            CloseReason::PingTimeout => 4001,
            CloseReason::WriteTimeout => 4002,
            CloseReason::TokenExpired => 4003,
            CloseReason::RateLimited => 4008,
            CloseReason::IdleTimeout => 4009,
        }
    }

    pub fn reason(self) -> &'static str {
        match self {
            CloseReason::Normal => "bye",
            CloseReason::GoingAway => "server shutting down",
            CloseReason::ProtocolError => "protocol error",
            CloseReason::InvalidUtf8 => "invalid UTF-8 in text frame",
            CloseReason::MessageTooBig => "message too big",
            CloseReason::InternalError => "internal error",
            CloseReason::SlowConsumer => "slow consumer: outbound queue full",
            CloseReason::PingTimeout => "ping timeout",
            CloseReason::WriteTimeout => "write timeout",
            CloseReason::TokenExpired => "token expired",
            CloseReason::RateLimited => "rate limit exceeded",
            CloseReason::IdleTimeout => "idle timeout",
        }
    }
}
