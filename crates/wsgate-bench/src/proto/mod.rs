//! Protocol adapters: what the load tool sends and how it reads what comes
//! back, for wsgate's JSON-RPC (also spoken by the Node `ws` peer server),
//! Socket.IO (Engine.IO v4 + Socket.IO v5) and NATS over WebSocket.
//!
//! The scenarios are protocol-neutral: they connect and subscribe through
//! [`crate::conn::open_subscribed`], turn incoming frames into [`Event`]s
//! with a [`Decoder`] and build publishes with [`Publishes`].

pub mod nats;
pub mod sio;

use serde::Serialize;
use tokio_tungstenite::tungstenite::Message;

use crate::payload::{Incoming, PayloadBuilder, has_error_key, scan, scan_delivery, unix_nanos};

/// Which protocol the load tool speaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum Protocol {
    /// wsgate's JSON-RPC 2.0 (docs/protocol.md); also the Node `ws` peer.
    #[default]
    Wsgate,
    /// Socket.IO 4 server (Engine.IO v4, Socket.IO v5) with the events of
    /// bench/peers/socketio-server.js.
    Socketio,
    /// nats-server's WebSocket listener, NATS text protocol.
    Nats,
}

impl Protocol {
    pub fn is_wsgate(&self) -> bool {
        *self == Self::Wsgate
    }

    /// The URL to connect to for a `--url` as given.
    pub fn url_for(self, url: &str) -> String {
        match self {
            Self::Socketio => sio::url_for(url),
            Self::Wsgate | Self::Nats => url.to_owned(),
        }
    }

    pub fn decoder(self) -> Decoder {
        match self {
            Self::Wsgate => Decoder::Wsgate,
            Self::Socketio => Decoder::Socketio,
            Self::Nats => Decoder::Nats(nats::Parser::default()),
        }
    }
}

/// What an incoming frame means to a scenario.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event<'a> {
    /// A delivery on a topic; `seq`/`ts` are `None` when the data is not a
    /// benchmark payload.
    Message {
        topic: Option<&'a [u8]>,
        seq: Option<u64>,
        ts: Option<u64>,
    },
    /// Anything else the server sent (other notifications, unknown frames).
    Other,
    /// The answer to one of our requests: a JSON-RPC result or error, a
    /// Socket.IO ack, or a NATS `PONG` (see [`nats`]: the publish ack) or
    /// `-ERR`. `id` is known for JSON-RPC and Socket.IO.
    Response { id: Option<u64>, error: bool },
    /// A protocol-level ping that must be answered with this frame.
    Reply(Message),
    /// Nothing for the scenario (handshake packets, `+OK`, `INFO`, …).
    Ignored,
}

/// Turns incoming WebSocket messages into [`Event`]s. NATS keeps partial
/// protocol messages between frames.
#[derive(Debug)]
pub enum Decoder {
    Wsgate,
    Socketio,
    Nats(nats::Parser),
}

impl Decoder {
    /// Decode one WebSocket message, calling `f` for each event in it
    /// (control frames and `Close` give none: the caller handles those).
    /// `Err` means the peer broke the protocol.
    pub fn feed(&mut self, msg: &Message, mut f: impl FnMut(Event<'_>)) -> Result<(), String> {
        match self {
            Self::Wsgate => {
                if let Message::Text(text) = msg {
                    f(match scan(text.as_bytes()) {
                        Incoming::Message { topic, seq, ts } => Event::Message { topic, seq, ts },
                        Incoming::OtherNotification | Incoming::Unknown => Event::Other,
                        Incoming::Response { id, error } => Event::Response { id, error },
                    });
                }
                Ok(())
            }
            Self::Socketio => {
                if let Message::Text(text) = msg {
                    f(sio_event(text.as_str())?);
                }
                Ok(())
            }
            Self::Nats(parser) => {
                let bytes: &[u8] = match msg {
                    Message::Binary(b) => b,
                    Message::Text(t) => t.as_bytes(),
                    _ => return Ok(()),
                };
                parser.push(bytes);
                while let Some(op) = parser.next_op()? {
                    f(nats_event(op));
                }
                Ok(())
            }
        }
    }
}

/// The [`Event`] of one Socket.IO text frame.
pub fn sio_event(text: &str) -> Result<Event<'_>, String> {
    Ok(match sio::parse_eio(text)? {
        sio::EioPacket::Ping(probe) => Event::Reply(Message::text(format!("{}{probe}", sio::PONG))),
        sio::EioPacket::Message(m) => {
            let p = sio::parse_sio(m)?;
            match p.kind {
                sio::SioKind::Event => match sio::event_name(p.data) {
                    Some(("message", args)) => {
                        let (topic, seq, ts) = scan_delivery(args.as_bytes());
                        Event::Message { topic, seq, ts }
                    }
                    _ => Event::Other,
                },
                sio::SioKind::Ack => Event::Response {
                    id: p.id,
                    error: has_error_key(p.data.as_bytes()),
                },
                sio::SioKind::ConnectError => Event::Response {
                    id: None,
                    error: true,
                },
                sio::SioKind::Connect => Event::Ignored,
                _ => Event::Other,
            }
        }
        sio::EioPacket::Close => Event::Other,
        _ => Event::Ignored,
    })
}

fn nats_event(op: nats::Op<'_>) -> Event<'_> {
    match op {
        nats::Op::Msg {
            subject, payload, ..
        } => {
            let (_, seq, ts) = scan_delivery(payload);
            Event::Message {
                topic: Some(subject),
                seq,
                ts,
            }
        }
        nats::Op::Ping => Event::Reply(Message::binary(nats::PONG.to_vec())),
        nats::Op::Pong => Event::Response {
            id: None,
            error: false,
        },
        nats::Op::Err(_) => Event::Response {
            id: None,
            error: true,
        },
        nats::Op::Info(_) | nats::Op::Ok => Event::Ignored,
    }
}

/// Builds publish frames for one protocol.
#[derive(Debug, Clone)]
pub struct Publishes {
    protocol: Protocol,
    builder: PayloadBuilder,
    scratch: String,
}

impl Publishes {
    pub fn new(protocol: Protocol, builder: PayloadBuilder) -> Self {
        Self {
            protocol,
            builder,
            scratch: String::new(),
        }
    }

    /// The frame publishing benchmark message `seq` (timestamped now) to a
    /// topic: `name` as is, `name_json` JSON-encoded. Every protocol gets
    /// exactly one answer per publish (see [`Event::Response`]).
    pub fn frame(&mut self, id: u64, name: &str, name_json: &str, seq: u64) -> Message {
        let ts = unix_nanos();
        match self.protocol {
            Protocol::Wsgate => Message::text(self.builder.publish_frame(id, name_json, seq, ts)),
            Protocol::Socketio => {
                self.scratch.clear();
                self.scratch.push_str("{\"topic\":");
                self.scratch.push_str(name_json);
                self.scratch.push_str(",\"data\":");
                self.builder.write_data(&mut self.scratch, seq, ts);
                self.scratch.push('}');
                Message::text(sio::event_frame(Some(id), "publish", &self.scratch))
            }
            Protocol::Nats => {
                self.scratch.clear();
                self.builder.write_data(&mut self.scratch, seq, ts);
                let mut out = Vec::with_capacity(self.scratch.len() + name.len() + 32);
                nats::pub_frame(&mut out, name, self.scratch.as_bytes(), true);
                Message::binary(out)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn events(d: &mut Decoder, msg: &Message) -> Result<Vec<String>, String> {
        let mut v = Vec::new();
        d.feed(msg, |e| v.push(format!("{e:?}")))?;
        Ok(v)
    }

    #[test]
    fn socketio_events() -> Result<(), String> {
        let mut d = Protocol::Socketio.decoder();
        let m = Message::text(
            r#"42["message",{"topic":"bench.0","data":{"seq":5,"ts":77,"pad":"x"}}]"#,
        );
        let mut got = Vec::new();
        d.feed(&m, |e| {
            if let Event::Message { topic, seq, ts } = e {
                got.push((topic.map(<[u8]>::to_vec), seq, ts));
            }
        })?;
        assert_eq!(got, vec![(Some(b"bench.0".to_vec()), Some(5), Some(77))]);
        assert_eq!(
            sio_event("2")?,
            Event::Reply(Message::text("3")),
            "ping → pong"
        );
        assert_eq!(
            sio_event("4312[{}]")?,
            Event::Response {
                id: Some(12),
                error: false
            }
        );
        assert_eq!(
            sio_event(r#"433[{"error":"bad topic"}]"#)?,
            Event::Response {
                id: Some(3),
                error: true
            }
        );
        assert_eq!(sio_event(r#"40{"sid":"a"}"#)?, Event::Ignored);
        assert_eq!(sio_event(r#"0{"sid":"a"}"#)?, Event::Ignored);
        assert_eq!(sio_event(r#"42["other",1]"#)?, Event::Other);
        assert!(sio_event("x").is_err());
        assert_eq!(events(&mut d, &Message::binary(vec![1, 2]))?.len(), 0);
        Ok(())
    }

    #[test]
    fn nats_events_across_frames() -> Result<(), String> {
        let mut d = Protocol::Nats.decoder();
        let a = Message::binary(b"INFO {}\r\nMSG bench.0 1 26\r\n{\"seq\":3,\"t".to_vec());
        let b = Message::binary(b"s\":99,\"pad\":\"\"}\r\nPING\r\nPONG\r\n".to_vec());
        let mut got = Vec::new();
        for m in [&a, &b] {
            d.feed(m, |e| got.push(format!("{e:?}")))?;
        }
        assert_eq!(got.len(), 4, "{got:?}");
        assert_eq!(got[0], "Ignored");
        assert!(got[1].contains("seq: Some(3), ts: Some(99)"), "{}", got[1]);
        assert!(got[2].starts_with("Reply"), "{}", got[2]);
        assert_eq!(got[3], "Response { id: None, error: false }");
        assert!(events(&mut d, &Message::binary(b"BOGUS\r\n".to_vec())).is_err());
        Ok(())
    }

    #[test]
    fn wsgate_decoder_matches_scan() -> Result<(), String> {
        let mut d = Protocol::Wsgate.decoder();
        let got = events(
            &mut d,
            &Message::text(r#"{"jsonrpc":"2.0","id":4,"error":{"code":1,"message":"x"}}"#),
        )?;
        assert_eq!(got, vec!["Response { id: Some(4), error: true }"]);
        assert!(events(&mut d, &Message::binary(vec![0]))?.is_empty());
        Ok(())
    }

    #[test]
    fn publish_frames() -> Result<(), Box<dyn std::error::Error>> {
        let b = PayloadBuilder::new(64);
        let mut p = Publishes::new(Protocol::Socketio, b.clone());
        let Message::Text(t) = p.frame(9, "bench.0", "\"bench.0\"", 4) else {
            return Err("not text".into());
        };
        assert!(
            t.as_str()
                .starts_with(r#"429["publish",{"topic":"bench.0","data":{"seq":4,"#)
        );
        let v: serde_json::Value = serde_json::from_str(&t.as_str()[3..])?;
        assert_eq!(v[1]["data"]["seq"], 4);
        assert_eq!(serde_json::to_string(&v[1]["data"])?.len(), 64);

        let mut p = Publishes::new(Protocol::Nats, b.clone());
        let Message::Binary(bin) = p.frame(1, "bench.0", "\"bench.0\"", 2) else {
            return Err("not binary".into());
        };
        let mut parser = nats::Parser::default();
        // Reuse the server-side shape: turn PUB into MSG to parse it back.
        let text = String::from_utf8(bin.to_vec())?;
        assert!(text.starts_with("PUB bench.0 64\r\n{\"seq\":2,"));
        assert!(text.ends_with("\"}\r\nPING\r\n"));
        parser.push(text.replacen("PUB bench.0", "MSG bench.0 1", 1).as_bytes());
        assert!(
            matches!(parser.next_op()?, Some(nats::Op::Msg { payload, .. }) if payload.len() == 64)
        );
        assert_eq!(parser.next_op()?, Some(nats::Op::Ping));

        let mut p = Publishes::new(Protocol::Wsgate, b);
        let Message::Text(t) = p.frame(3, "bench.0", "\"bench.0\"", 1) else {
            return Err("not text".into());
        };
        assert!(
            t.as_str()
                .starts_with(r#"{"jsonrpc":"2.0","id":3,"method":"publish""#)
        );
        Ok(())
    }
}
