//! Building publish frames and cheaply scanning incoming frames.
//!
//! The benchmark payload (`data`) is `{"seq":N,"ts":<unix nanos>,"pad":"xxxx…"}`
//! padded so the serialized object is about `size` bytes. Deliveries are not
//! parsed with serde: the scanner looks for the few keys it needs with a
//! byte search, which stays cheap even for large padded payloads.

use std::fmt::Write as _;
use std::sync::LazyLock;
use std::time::{SystemTime, UNIX_EPOCH};

use memchr::memmem::Finder;

/// Current wall-clock time as unix nanoseconds (0 if the clock is before 1970).
pub fn unix_nanos() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| u64::try_from(d.as_nanos()).unwrap_or(u64::MAX))
        .unwrap_or(0)
}

/// JSON-encode a string (topic names), including the surrounding quotes.
pub fn json_string(s: &str) -> String {
    serde_json::Value::String(s.to_owned()).to_string()
}

/// Builds benchmark payloads and publish frames of a fixed target size.
#[derive(Debug, Clone)]
pub struct PayloadBuilder {
    size: usize,
    pad: String,
}

impl PayloadBuilder {
    /// `size` is the target size in bytes of the serialized `data` object.
    pub fn new(size: usize) -> Self {
        Self {
            size,
            pad: "x".repeat(size),
        }
    }

    /// Append the `data` object for `seq`/`ts` to `out`.
    pub fn write_data(&self, out: &mut String, seq: u64, ts_nanos: u64) {
        let start = out.len();
        // `write!` into a String cannot fail.
        let _ = write!(out, "{{\"seq\":{seq},\"ts\":{ts_nanos},\"pad\":\"");
        // Written so far + the closing `"}`.
        let used = out.len() - start + 2;
        let pad = self.size.saturating_sub(used);
        out.push_str(&self.pad[..pad]);
        out.push_str("\"}");
    }

    /// The `data` object alone.
    #[cfg(test)]
    pub fn data(&self, seq: u64, ts_nanos: u64) -> String {
        let mut s = String::with_capacity(self.size + 8);
        self.write_data(&mut s, seq, ts_nanos);
        s
    }

    /// A JSON-RPC `publish` request frame. `topic_json` is the already
    /// JSON-encoded topic (with quotes), see [`json_string`].
    pub fn publish_frame(&self, id: u64, topic_json: &str, seq: u64, ts_nanos: u64) -> String {
        let mut s = String::with_capacity(self.size + topic_json.len() + 96);
        let _ = write!(
            s,
            "{{\"jsonrpc\":\"2.0\",\"id\":{id},\"method\":\"publish\",\"params\":{{\"topic\":{topic_json},\"data\":"
        );
        self.write_data(&mut s, seq, ts_nanos);
        s.push_str("}}");
        s
    }

    /// The body of `POST /api/publish`.
    pub fn http_body(&self, topic_json: &str, seq: u64, ts_nanos: u64) -> String {
        let mut s = String::with_capacity(self.size + topic_json.len() + 32);
        let _ = write!(s, "{{\"topic\":{topic_json},\"data\":");
        self.write_data(&mut s, seq, ts_nanos);
        s.push('}');
        s
    }
}

/// A JSON-RPC `subscribe` request for one or several topics.
pub fn subscribe_frame(id: u64, topics: &[String]) -> String {
    let params = match topics {
        [one] => serde_json::json!({ "topic": one }),
        many => serde_json::json!({ "topics": many }),
    };
    serde_json::json!({"jsonrpc": "2.0", "id": id, "method": "subscribe", "params": params})
        .to_string()
}

/// What an incoming text frame is, as far as the cheap scan can tell.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Incoming<'a> {
    /// A `message` notification. `seq`/`ts` are `None` when the data is not
    /// a benchmark payload.
    Message {
        topic: Option<&'a [u8]>,
        seq: Option<u64>,
        ts: Option<u64>,
    },
    /// A notification with another method.
    OtherNotification,
    /// A response to one of our requests.
    Response { id: Option<u64>, error: bool },
    /// Anything else (not JSON-RPC as far as we can tell).
    Unknown,
}

static F_METHOD: LazyLock<Finder<'static>> = LazyLock::new(|| Finder::new(b"\"method\""));
static F_TOPIC: LazyLock<Finder<'static>> = LazyLock::new(|| Finder::new(b"\"topic\""));
static F_SEQ: LazyLock<Finder<'static>> = LazyLock::new(|| Finder::new(b"\"seq\""));
static F_TS: LazyLock<Finder<'static>> = LazyLock::new(|| Finder::new(b"\"ts\""));
static F_ID: LazyLock<Finder<'static>> = LazyLock::new(|| Finder::new(b"\"id\""));
static F_ERROR: LazyLock<Finder<'static>> = LazyLock::new(|| Finder::new(b"\"error\""));
static F_RESULT: LazyLock<Finder<'static>> = LazyLock::new(|| Finder::new(b"\"result\""));

fn skip_ws(buf: &[u8], mut i: usize) -> usize {
    while i < buf.len() && matches!(buf[i], b' ' | b'\t' | b'\n' | b'\r') {
        i += 1;
    }
    i
}

/// Index of the first byte of the value of the first occurrence of `key`
/// (a quoted key, e.g. `"seq"`) that is followed by a colon.
fn value_pos(buf: &[u8], finder: &Finder<'_>) -> Option<usize> {
    let mut from = 0;
    while let Some(rel) = finder.find(&buf[from..]) {
        let after_key = from + rel + finder.needle().len();
        let colon = skip_ws(buf, after_key);
        if buf.get(colon) == Some(&b':') {
            return Some(skip_ws(buf, colon + 1));
        }
        // The needle was a string value, not a key: keep looking.
        from = after_key;
    }
    None
}

fn str_value<'a>(buf: &'a [u8], finder: &Finder<'_>) -> Option<&'a [u8]> {
    let start = value_pos(buf, finder)?;
    if buf.get(start) != Some(&b'"') {
        return None;
    }
    let body = &buf[start + 1..];
    let end = memchr::memchr(b'"', body)?;
    Some(&body[..end])
}

fn u64_value(buf: &[u8], finder: &Finder<'_>) -> Option<u64> {
    let start = value_pos(buf, finder)?;
    let mut v: u64 = 0;
    let mut any = false;
    for &b in &buf[start..] {
        if !b.is_ascii_digit() {
            break;
        }
        v = v.checked_mul(10)?.checked_add(u64::from(b - b'0'))?;
        any = true;
    }
    any.then_some(v)
}

/// Classify an incoming frame with a few byte searches.
pub fn scan(buf: &[u8]) -> Incoming<'_> {
    if let Some(method) = str_value(buf, &F_METHOD) {
        if method != b"message" {
            return Incoming::OtherNotification;
        }
        return Incoming::Message {
            topic: str_value(buf, &F_TOPIC),
            seq: u64_value(buf, &F_SEQ),
            ts: u64_value(buf, &F_TS),
        };
    }
    let error = value_pos(buf, &F_ERROR).is_some();
    if error || value_pos(buf, &F_RESULT).is_some() {
        return Incoming::Response {
            id: u64_value(buf, &F_ID),
            error,
        };
    }
    Incoming::Unknown
}

/// `topic`, `seq` and `ts` of a delivery whose envelope is not JSON-RPC
/// (a Socket.IO event argument, a NATS payload): the same byte scan as
/// [`scan`] uses.
pub fn scan_delivery(buf: &[u8]) -> (Option<&[u8]>, Option<u64>, Option<u64>) {
    (
        str_value(buf, &F_TOPIC),
        u64_value(buf, &F_SEQ),
        u64_value(buf, &F_TS),
    )
}

/// Whether `buf` has an `"error"` key (a Socket.IO ack reporting a failure).
pub fn has_error_key(buf: &[u8]) -> bool {
    value_pos(buf, &F_ERROR).is_some()
}

/// The `error.message` of an error response, for human reports (full parse;
/// only used on the rare error path).
pub fn error_message(text: &str) -> String {
    serde_json::from_str::<serde_json::Value>(text)
        .ok()
        .and_then(|v| {
            let e = v.get("error")?;
            Some(format!(
                "{} (code {})",
                e.get("message").and_then(|m| m.as_str()).unwrap_or("?"),
                e.get("code").map(ToString::to_string).unwrap_or_default()
            ))
        })
        .unwrap_or_else(|| text.chars().take(200).collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn data_has_target_size_and_is_valid_json() -> anyhow::Result<()> {
        for size in [0usize, 10, 40, 64, 100, 1000, 4096] {
            let b = PayloadBuilder::new(size);
            let d = b.data(123_456, 1_700_000_000_123_456_789);
            let v: serde_json::Value = serde_json::from_str(&d)?;
            assert_eq!(v["seq"], 123_456);
            assert_eq!(v["ts"], 1_700_000_000_123_456_789u64);
            let min = b.data(123_456, 1_700_000_000_123_456_789).len().min(size);
            if size >= 60 {
                assert_eq!(d.len(), size, "size {size}");
            } else {
                assert!(d.len() >= min);
            }
        }
        Ok(())
    }

    #[test]
    fn publish_frame_is_valid_jsonrpc() -> anyhow::Result<()> {
        let b = PayloadBuilder::new(200);
        let topic = json_string("bench.3");
        let f = b.publish_frame(7, &topic, 5, 99);
        let v: serde_json::Value = serde_json::from_str(&f)?;
        assert_eq!(v["jsonrpc"], "2.0");
        assert_eq!(v["id"], 7);
        assert_eq!(v["method"], "publish");
        assert_eq!(v["params"]["topic"], "bench.3");
        assert_eq!(v["params"]["data"]["seq"], 5);
        assert_eq!(v["params"]["data"]["ts"], 99);
        assert_eq!(serde_json::to_string(&v["params"]["data"])?.len(), 200);

        let body = b.http_body(&topic, 6, 100);
        let v: serde_json::Value = serde_json::from_str(&body)?;
        assert_eq!(v["topic"], "bench.3");
        assert_eq!(v["data"]["seq"], 6);
        Ok(())
    }

    #[test]
    fn subscribe_frames() -> anyhow::Result<()> {
        let one: serde_json::Value = serde_json::from_str(&subscribe_frame(1, &["a".into()]))?;
        assert_eq!(one["params"]["topic"], "a");
        assert_eq!(one["method"], "subscribe");
        let many: serde_json::Value =
            serde_json::from_str(&subscribe_frame(2, &["a".into(), "b".into()]))?;
        assert_eq!(many["params"]["topics"][1], "b");
        Ok(())
    }

    #[test]
    fn scan_notification_roundtrip() {
        let b = PayloadBuilder::new(300);
        let data = b.data(42, 1_000_000_007);
        let n = format!(
            "{{\"jsonrpc\":\"2.0\",\"method\":\"message\",\"params\":{{\"topic\":\"bench.1\",\"data\":{data}}}}}"
        );
        assert_eq!(
            scan(n.as_bytes()),
            Incoming::Message {
                topic: Some(b"bench.1"),
                seq: Some(42),
                ts: Some(1_000_000_007)
            }
        );
    }

    #[test]
    fn scan_tolerates_key_order_and_whitespace() {
        let n = br#"{ "params": { "data": { "pad": "xx", "ts": 77, "seq" : 9 }, "topic": "t" }, "method" : "message", "jsonrpc": "2.0" }"#;
        assert_eq!(
            scan(n),
            Incoming::Message {
                topic: Some(b"t"),
                seq: Some(9),
                ts: Some(77)
            }
        );
    }

    #[test]
    fn scan_other_kinds() {
        assert_eq!(
            scan(br#"{"jsonrpc":"2.0","method":"other","params":{}}"#),
            Incoming::OtherNotification
        );
        assert_eq!(
            scan(br#"{"jsonrpc":"2.0","id":12,"result":{}}"#),
            Incoming::Response {
                id: Some(12),
                error: false
            }
        );
        assert_eq!(
            scan(br#"{"jsonrpc":"2.0","id":3,"error":{"code":-32602,"message":"bad"}}"#),
            Incoming::Response {
                id: Some(3),
                error: true
            }
        );
        assert_eq!(scan(b"hello"), Incoming::Unknown);
        // Non-benchmark data: a message without seq/ts.
        assert_eq!(
            scan(br#"{"jsonrpc":"2.0","method":"message","params":{"topic":"t","data":"seq"}}"#),
            Incoming::Message {
                topic: Some(b"t"),
                seq: None,
                ts: None
            }
        );
    }

    #[test]
    fn scan_rejects_overflow() {
        let n = br#"{"method":"message","params":{"topic":"t","data":{"seq":99999999999999999999999,"ts":1}}}"#;
        assert_eq!(
            scan(n),
            Incoming::Message {
                topic: Some(b"t"),
                seq: None,
                ts: Some(1)
            }
        );
    }

    #[test]
    fn delivery_scan_and_error_key() {
        let d = PayloadBuilder::new(80).data(11, 22);
        assert_eq!(scan_delivery(d.as_bytes()), (None, Some(11), Some(22)));
        let ev = format!("{{\"topic\":\"a.b\",\"data\":{d}}}]");
        assert_eq!(
            scan_delivery(ev.as_bytes()),
            (Some(&b"a.b"[..]), Some(11), Some(22))
        );
        assert!(has_error_key(br#"[{"error":"x"}]"#));
        assert!(!has_error_key(br#"[{"subscribed":["error"]}]"#));
    }

    #[test]
    fn error_message_extracts() {
        let m =
            error_message(r#"{"jsonrpc":"2.0","id":1,"error":{"code":-32601,"message":"nope"}}"#);
        assert_eq!(m, "nope (code -32601)");
    }
}
