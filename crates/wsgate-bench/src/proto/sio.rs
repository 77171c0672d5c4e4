//! Engine.IO v4 and Socket.IO v5 framing over WebSocket text frames, by
//! hand and only what the load tool needs.
//!
//! Engine.IO wraps every WebSocket message in one packet whose first byte is
//! its type: `0` open (`0{"sid":…,"pingInterval":…}`), `1` close, `2` ping,
//! `3` pong, `4` message, `5` upgrade, `6` noop. The server pings; the client
//! answers each `2` with `3` within `pingTimeout`, or it is disconnected.
//!
//! A Socket.IO packet travels inside an Engine.IO message (`4`): a type digit
//! (`0` connect, `1` disconnect, `2` event, `3` ack, `4` connect error,
//! `5`/`6` binary event/ack), an optional attachment count `N-` (binary
//! packets only), an optional namespace `/nsp,` (absent for `/`), an optional
//! ack id (digits) and an optional JSON payload. So `40` connects to `/`,
//! `42["message",{…}]` is an event, `427["publish",{…}]` is an event that
//! asks for ack 7, and `437[{}]` is that ack.

use std::fmt::Write as _;

/// Engine.IO protocol version this speaks.
pub const EIO_VERSION: u32 = 4;

/// The WebSocket path and query Socket.IO servers listen on by default.
pub const DEFAULT_PATH: &str = "/socket.io/";

/// Engine.IO pong (the answer to a server ping `2`).
pub const PONG: &str = "3";

/// Socket.IO connect to the main namespace `/`, inside an Engine.IO message.
pub const CONNECT_MAIN: &str = "40";

/// One Engine.IO packet (WebSocket transport: one packet per frame).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EioPacket<'a> {
    /// Handshake data (JSON).
    Open(&'a str),
    Close,
    /// Server ping, with optional probe data.
    Ping(&'a str),
    Pong(&'a str),
    /// A message: for Socket.IO, one Socket.IO packet.
    Message(&'a str),
    Upgrade,
    Noop,
}

/// Parse one Engine.IO packet from a text frame.
pub fn parse_eio(text: &str) -> Result<EioPacket<'_>, String> {
    let mut chars = text.char_indices();
    let Some((_, kind)) = chars.next() else {
        return Err("empty Engine.IO packet".to_owned());
    };
    let rest = &text[kind.len_utf8()..];
    Ok(match kind {
        '0' => EioPacket::Open(rest),
        '1' => EioPacket::Close,
        '2' => EioPacket::Ping(rest),
        '3' => EioPacket::Pong(rest),
        '4' => EioPacket::Message(rest),
        '5' => EioPacket::Upgrade,
        '6' => EioPacket::Noop,
        other => return Err(format!("unknown Engine.IO packet type {other:?}")),
    })
}

/// Socket.IO packet types.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SioKind {
    Connect,
    Disconnect,
    Event,
    Ack,
    ConnectError,
    BinaryEvent,
    BinaryAck,
}

/// One Socket.IO packet (the body of an Engine.IO message).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SioPacket<'a> {
    pub kind: SioKind,
    /// Namespace; `/` when absent.
    pub nsp: &'a str,
    /// Ack id, if any.
    pub id: Option<u64>,
    /// JSON payload (may be empty).
    pub data: &'a str,
}

/// Parse a Socket.IO packet (without the Engine.IO `4` in front).
pub fn parse_sio(s: &str) -> Result<SioPacket<'_>, String> {
    let b = s.as_bytes();
    let kind = match b.first() {
        Some(b'0') => SioKind::Connect,
        Some(b'1') => SioKind::Disconnect,
        Some(b'2') => SioKind::Event,
        Some(b'3') => SioKind::Ack,
        Some(b'4') => SioKind::ConnectError,
        Some(b'5') => SioKind::BinaryEvent,
        Some(b'6') => SioKind::BinaryAck,
        Some(&c) => return Err(format!("unknown Socket.IO packet type {:?}", c as char)),
        None => return Err("empty Socket.IO packet".to_owned()),
    };
    let mut i = 1;
    if matches!(kind, SioKind::BinaryEvent | SioKind::BinaryAck) {
        // Attachment count: digits then '-'.
        let start = i;
        while i < b.len() && b[i].is_ascii_digit() {
            i += 1;
        }
        if i == start || b.get(i) != Some(&b'-') {
            return Err("binary Socket.IO packet without attachment count".to_owned());
        }
        i += 1;
    }
    let mut nsp = "/";
    if b.get(i) == Some(&b'/') {
        let end = s[i..].find(',').map_or(s.len(), |p| i + p);
        nsp = &s[i..end];
        i = (end + 1).min(s.len());
    }
    let start = i;
    let mut id: Option<u64> = None;
    while i < b.len() && b[i].is_ascii_digit() {
        let d = u64::from(b[i] - b'0');
        id = Some(
            id.unwrap_or(0)
                .checked_mul(10)
                .and_then(|v| v.checked_add(d))
                .ok_or("Socket.IO ack id overflows")?,
        );
        i += 1;
    }
    if i == start {
        id = None;
    }
    Ok(SioPacket {
        kind,
        nsp,
        id,
        data: &s[i..],
    })
}

/// The event name and the rest of the argument array of an event payload
/// `["name",arg1,…]`: returns (`name`, `arg1,…]`). Names with escapes are
/// not needed here and are rejected.
pub fn event_name(data: &str) -> Option<(&str, &str)> {
    let rest = data.trim_start().strip_prefix('[')?.trim_start();
    let rest = rest.strip_prefix('"')?;
    let end = rest.find('"')?;
    let name = &rest[..end];
    if name.contains('\\') {
        return None;
    }
    let after = rest[end + 1..].trim_start();
    let args = after.strip_prefix(',').unwrap_or(after);
    Some((name, args))
}

/// An event frame (Engine.IO message + Socket.IO event) to the main
/// namespace: `42[<id>]["name",<args_json>]`. `args_json` is the already
/// encoded argument (one JSON value).
pub fn event_frame(id: Option<u64>, name: &str, args_json: &str) -> String {
    let mut s = String::with_capacity(args_json.len() + name.len() + 16);
    s.push_str("42");
    if let Some(id) = id {
        let _ = write!(s, "{id}");
    }
    s.push_str("[\"");
    s.push_str(name);
    s.push_str("\",");
    s.push_str(args_json);
    s.push(']');
    s
}

/// A subscribe event for the peer server in bench/peers: one topic as
/// `{"topic":…}`, several as `{"topics":[…]}` (the wsgate params shape).
pub fn subscribe_frame(id: u64, topics: &[String]) -> String {
    let params = match topics {
        [one] => serde_json::json!({ "topic": one }),
        many => serde_json::json!({ "topics": many }),
    };
    event_frame(Some(id), "subscribe", &params.to_string())
}

/// Append a URL's query with what Engine.IO needs, and give it the default
/// Socket.IO path when it has none: `ws://h:p` → `ws://h:p/socket.io/?EIO=4&transport=websocket`.
pub fn url_for(url: &str) -> String {
    let (base, query) = match url.split_once('?') {
        Some((b, q)) => (b.to_owned(), Some(q)),
        None => (url.to_owned(), None),
    };
    let after_scheme = base.find("://").map_or(0, |p| p + 3);
    let has_path = base[after_scheme..]
        .find('/')
        .is_some_and(|p| after_scheme + p + 1 < base.len());
    let mut base = if has_path {
        base
    } else {
        format!("{}{DEFAULT_PATH}", base.trim_end_matches('/'))
    };
    let mut params: Vec<String> = query
        .unwrap_or("")
        .split('&')
        .filter(|p| !p.is_empty())
        .map(str::to_owned)
        .collect();
    if !params.iter().any(|p| p.starts_with("EIO=")) {
        params.push(format!("EIO={EIO_VERSION}"));
    }
    if !params.iter().any(|p| p.starts_with("transport=")) {
        params.push("transport=websocket".to_owned());
    }
    base.push('?');
    base.push_str(&params.join("&"));
    base
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn engine_io_packets() -> Result<(), String> {
        assert_eq!(
            parse_eio(r#"0{"sid":"a","pingInterval":25000}"#)?,
            EioPacket::Open(r#"{"sid":"a","pingInterval":25000}"#)
        );
        assert_eq!(parse_eio("2")?, EioPacket::Ping(""));
        assert_eq!(parse_eio("2probe")?, EioPacket::Ping("probe"));
        assert_eq!(parse_eio("3")?, EioPacket::Pong(""));
        assert_eq!(parse_eio("1")?, EioPacket::Close);
        assert_eq!(parse_eio("6")?, EioPacket::Noop);
        assert_eq!(parse_eio("5")?, EioPacket::Upgrade);
        assert_eq!(parse_eio("42[\"x\"]")?, EioPacket::Message("2[\"x\"]"));
        assert!(parse_eio("").is_err());
        assert!(parse_eio("9").is_err());
        assert!(parse_eio("é").is_err());
        Ok(())
    }

    #[test]
    fn socket_io_packets() -> Result<(), String> {
        let p = parse_sio("0")?;
        assert_eq!(
            (p.kind, p.nsp, p.id, p.data),
            (SioKind::Connect, "/", None, "")
        );
        let p = parse_sio(r#"0{"sid":"xyz"}"#)?;
        assert_eq!((p.kind, p.data), (SioKind::Connect, r#"{"sid":"xyz"}"#));
        let p = parse_sio(r#"2["message",{"topic":"t"}]"#)?;
        assert_eq!(p.kind, SioKind::Event);
        assert_eq!(p.id, None);
        assert_eq!(p.data, r#"["message",{"topic":"t"}]"#);
        let p = parse_sio("3127[{}]")?;
        assert_eq!((p.kind, p.id, p.data), (SioKind::Ack, Some(127), "[{}]"));
        let p = parse_sio(r#"2/admin,5["x",1]"#)?;
        assert_eq!((p.nsp, p.id, p.data), ("/admin", Some(5), r#"["x",1]"#));
        let p = parse_sio("1/admin,")?;
        assert_eq!((p.kind, p.nsp, p.data), (SioKind::Disconnect, "/admin", ""));
        let p = parse_sio(r#"51-["bin",{"_placeholder":true,"num":0}]"#)?;
        assert_eq!(p.kind, SioKind::BinaryEvent);
        assert!(p.data.starts_with("[\"bin\""));
        let p = parse_sio(r#"4{"message":"Invalid namespace"}"#)?;
        assert_eq!(p.kind, SioKind::ConnectError);
        assert!(parse_sio("").is_err());
        assert!(parse_sio("9").is_err());
        assert!(parse_sio("5[").is_err());
        assert!(parse_sio("399999999999999999999999[]").is_err());
        Ok(())
    }

    #[test]
    fn event_names() {
        assert_eq!(
            event_name(r#"["message",{"topic":"t"}]"#),
            Some(("message", r#"{"topic":"t"}]"#))
        );
        assert_eq!(event_name(r#"[ "ping" ]"#), Some(("ping", "]")));
        assert_eq!(event_name(r#"{"a":1}"#), None);
        assert_eq!(event_name(r#"["a\"b",1]"#), None);
        assert_eq!(event_name("[1,2]"), None);
    }

    #[test]
    fn encode_events_roundtrip() -> Result<(), String> {
        let f = event_frame(Some(7), "publish", r#"{"topic":"a","data":1}"#);
        assert_eq!(f, r#"427["publish",{"topic":"a","data":1}]"#);
        let EioPacket::Message(m) = parse_eio(&f)? else {
            return Err("not a message".into());
        };
        let p = parse_sio(m)?;
        assert_eq!((p.kind, p.id), (SioKind::Event, Some(7)));
        assert_eq!(event_name(p.data).map(|x| x.0), Some("publish"));
        let v: serde_json::Value =
            serde_json::from_str(p.data).map_err(|e| format!("invalid JSON: {e}"))?;
        assert_eq!(v[1]["topic"], "a");
        assert_eq!(event_frame(None, "x", "null"), r#"42["x",null]"#);

        let s = subscribe_frame(1, &["bench.0".into()]);
        assert_eq!(s, r#"421["subscribe",{"topic":"bench.0"}]"#);
        let s = subscribe_frame(2, &["a".into(), "b".into()]);
        assert_eq!(s, r#"422["subscribe",{"topics":["a","b"]}]"#);
        Ok(())
    }

    #[test]
    fn urls() {
        assert_eq!(
            url_for("ws://127.0.0.1:3000"),
            "ws://127.0.0.1:3000/socket.io/?EIO=4&transport=websocket"
        );
        assert_eq!(
            url_for("ws://127.0.0.1:3000/"),
            "ws://127.0.0.1:3000/socket.io/?EIO=4&transport=websocket"
        );
        assert_eq!(
            url_for("ws://h:1/custom/?x=1"),
            "ws://h:1/custom/?x=1&EIO=4&transport=websocket"
        );
        assert_eq!(
            url_for("ws://h:1/socket.io/?EIO=4&transport=websocket"),
            "ws://h:1/socket.io/?EIO=4&transport=websocket"
        );
    }
}
