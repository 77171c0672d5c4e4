//! The NATS client protocol (text, `\r\n`-terminated) over WebSocket, as
//! nats-server's own `websocket` listener speaks it.
//!
//! WebSocket frames carry a byte stream: the server may put several
//! protocol messages in one frame or split one across frames, so incoming
//! bytes go through [`Parser`], which buffers partial messages.
//!
//! Client → server: `CONNECT {json}`, `SUB subject sid`, `PUB subject n` +
//! payload, `PING`, `PONG`. Server → client: `INFO {json}`,
//! `MSG subject sid [reply] n` + payload, `HMSG` (headers; not used here),
//! `PING`, `PONG`, `+OK`, `-ERR 'text'`.
//!
//! Publish acknowledgements: NATS `PUB` has none. The load tool sends each
//! `PUB` followed by `PING` in the same frame; the server handles one
//! connection's protocol in order, so its `PONG` means the `PUB` before it
//! has been routed to the subscribers' outbound buffers — the same point
//! as wsgate's `publish` result ("accepted by the backbone"). One `PONG`
//! acknowledges one publish, which is what the flood window counts.

use std::fmt::Write as _;

/// What the load tool sends in CONNECT.
pub const CONNECT_JSON: &str = r#"{"verbose":false,"pedantic":false,"protocol":1,"lang":"rust","version":"wsgate-bench","name":"wsgate-bench","headers":false,"no_responders":false}"#;

pub const PING: &[u8] = b"PING\r\n";
pub const PONG: &[u8] = b"PONG\r\n";

/// Longest protocol line accepted (INFO can be long; MSG lines are short).
const MAX_LINE: usize = 64 * 1024;
/// Largest payload accepted (nats-server's default max_payload is 1 MiB).
const MAX_PAYLOAD: usize = 64 * 1024 * 1024;

/// The opening frame: CONNECT, one SUB per subject (sids 1…), and PING, so
/// that the PONG confirms the connection and that the subscriptions are
/// live.
pub fn connect_frame(subjects: &[String]) -> Vec<u8> {
    let mut s = String::with_capacity(CONNECT_JSON.len() + 24 + subjects.len() * 24);
    s.push_str("CONNECT ");
    s.push_str(CONNECT_JSON);
    s.push_str("\r\n");
    for (i, subj) in subjects.iter().enumerate() {
        let _ = write!(s, "SUB {subj} {}\r\n", i + 1);
    }
    s.push_str("PING\r\n");
    s.into_bytes()
}

/// `PUB subject n\r\npayload\r\n`, plus `PING\r\n` if `ping`.
pub fn pub_frame(out: &mut Vec<u8>, subject: &str, payload: &[u8], ping: bool) {
    out.reserve(subject.len() + payload.len() + 32);
    out.extend_from_slice(b"PUB ");
    out.extend_from_slice(subject.as_bytes());
    out.push(b' ');
    out.extend_from_slice(payload.len().to_string().as_bytes());
    out.extend_from_slice(b"\r\n");
    out.extend_from_slice(payload);
    out.extend_from_slice(b"\r\n");
    if ping {
        out.extend_from_slice(PING);
    }
}

/// One protocol message from the server.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Op<'a> {
    Info(&'a [u8]),
    Msg {
        subject: &'a [u8],
        sid: &'a [u8],
        reply: Option<&'a [u8]>,
        payload: &'a [u8],
    },
    Ping,
    Pong,
    Ok,
    Err(&'a [u8]),
}

/// Incremental parser of the server's byte stream.
#[derive(Debug, Default)]
pub struct Parser {
    buf: Vec<u8>,
    pos: usize,
}

impl Parser {
    /// Append bytes from one WebSocket frame.
    pub fn push(&mut self, data: &[u8]) {
        if self.pos > 0 {
            self.buf.drain(..self.pos);
            self.pos = 0;
        }
        self.buf.extend_from_slice(data);
    }

    /// Bytes received but not parsed yet (a partial message).
    #[cfg(test)]
    pub fn pending(&self) -> usize {
        self.buf.len() - self.pos
    }

    /// The next complete message, `None` when more bytes are needed.
    pub fn next_op(&mut self) -> Result<Option<Op<'_>>, String> {
        let start = self.pos;
        let Some((op, used)) = parse_one(&self.buf[start..])? else {
            if self.pos == self.buf.len() && self.buf.capacity() > 4096 {
                // Do not keep a large buffer around for an idle connection.
                self.buf = Vec::new();
                self.pos = 0;
            }
            return Ok(None);
        };
        self.pos = start + used;
        // Re-borrow for the returned slices.
        Ok(Some(reslice(op, &self.buf[start..start + used])))
    }
}

/// `parse_one` ran on `buf[start..]`; the offsets are relative to that.
fn reslice<'a>(op: OpAt, base: &'a [u8]) -> Op<'a> {
    match op {
        OpAt::Info(r) => Op::Info(&base[r.0..r.1]),
        OpAt::Msg {
            subject,
            sid,
            reply,
            payload,
        } => Op::Msg {
            subject: &base[subject.0..subject.1],
            sid: &base[sid.0..sid.1],
            reply: reply.map(|r| &base[r.0..r.1]),
            payload: &base[payload.0..payload.1],
        },
        OpAt::Ping => Op::Ping,
        OpAt::Pong => Op::Pong,
        OpAt::Ok => Op::Ok,
        OpAt::Err(r) => Op::Err(&base[r.0..r.1]),
    }
}

type Range = (usize, usize);

/// An [`Op`] as byte ranges into the buffer it was parsed from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum OpAt {
    Info(Range),
    Msg {
        subject: Range,
        sid: Range,
        reply: Option<Range>,
        payload: Range,
    },
    Ping,
    Pong,
    Ok,
    Err(Range),
}

fn trim_range(buf: &[u8], mut a: usize, mut b: usize) -> Range {
    while a < b && matches!(buf[a], b' ' | b'\t') {
        a += 1;
    }
    while b > a && matches!(buf[b - 1], b' ' | b'\t') {
        b -= 1;
    }
    (a, b)
}

fn parse_usize(s: &[u8]) -> Option<usize> {
    if s.is_empty() || s.len() > 12 {
        return None;
    }
    s.iter().try_fold(0usize, |v, &c| {
        c.is_ascii_digit().then(|| v * 10 + usize::from(c - b'0'))
    })
}

/// Parse one message at the start of `buf`: `Some((op, bytes used))`, or
/// `None` when `buf` does not hold a whole message yet.
fn parse_one(buf: &[u8]) -> Result<Option<(OpAt, usize)>, String> {
    let Some(eol) = memchr::memmem::find(buf, b"\r\n") else {
        if buf.len() > MAX_LINE {
            return Err(format!("NATS protocol line longer than {MAX_LINE} bytes"));
        }
        return Ok(None);
    };
    let line = &buf[..eol];
    let after = eol + 2;
    let word_end = line
        .iter()
        .position(|&c| c == b' ' || c == b'\t')
        .unwrap_or(line.len());
    let word = &line[..word_end];
    let args = trim_range(buf, word_end, eol);
    let op = if word.eq_ignore_ascii_case(b"MSG") || word.eq_ignore_ascii_case(b"HMSG") {
        let headers = word.len() == 4;
        // Split the arguments on spaces/tabs.
        let mut fields: [Range; 5] = [(0, 0); 5];
        let mut n = 0;
        let mut i = args.0;
        while i < args.1 {
            while i < args.1 && matches!(buf[i], b' ' | b'\t') {
                i += 1;
            }
            let s = i;
            while i < args.1 && !matches!(buf[i], b' ' | b'\t') {
                i += 1;
            }
            if s < i {
                if n == fields.len() {
                    return Err(format!(
                        "NATS: too many fields in {:?}",
                        String::from_utf8_lossy(line)
                    ));
                }
                fields[n] = (s, i);
                n += 1;
            }
        }
        // MSG subject sid [reply] size / HMSG subject sid [reply] hdr_size total_size
        let sizes = usize::from(headers) + 1;
        if n < 2 + sizes || n > 3 + sizes {
            return Err(format!(
                "NATS: malformed {:?}",
                String::from_utf8_lossy(line)
            ));
        }
        let reply = (n == 3 + sizes).then_some(fields[2]);
        let total_f = fields[n - 1];
        let total = parse_usize(&buf[total_f.0..total_f.1])
            .filter(|&t| t <= MAX_PAYLOAD)
            .ok_or_else(|| format!("NATS: bad size in {:?}", String::from_utf8_lossy(line)))?;
        let hdr = if headers {
            let f = fields[n - 2];
            parse_usize(&buf[f.0..f.1])
                .filter(|&h| h <= total)
                .ok_or_else(|| {
                    format!(
                        "NATS: bad header size in {:?}",
                        String::from_utf8_lossy(line)
                    )
                })?
        } else {
            0
        };
        let end = after + total;
        if buf.len() < end + 2 {
            return Ok(None);
        }
        if &buf[end..end + 2] != b"\r\n" {
            return Err("NATS: payload not followed by CRLF".to_owned());
        }
        return Ok(Some((
            OpAt::Msg {
                subject: fields[0],
                sid: fields[1],
                reply,
                payload: (after + hdr, end),
            },
            end + 2,
        )));
    } else if word.eq_ignore_ascii_case(b"PING") {
        OpAt::Ping
    } else if word.eq_ignore_ascii_case(b"PONG") {
        OpAt::Pong
    } else if word.eq_ignore_ascii_case(b"+OK") {
        OpAt::Ok
    } else if word.eq_ignore_ascii_case(b"-ERR") {
        OpAt::Err(args)
    } else if word.eq_ignore_ascii_case(b"INFO") {
        OpAt::Info(args)
    } else {
        return Err(format!(
            "NATS: unknown protocol message {:?}",
            String::from_utf8_lossy(&line[..line.len().min(80)])
        ));
    };
    Ok(Some((op, after)))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn all(p: &mut Parser) -> Result<Vec<String>, String> {
        let mut v = Vec::new();
        while let Some(op) = p.next_op()? {
            v.push(match op {
                Op::Msg {
                    subject,
                    sid,
                    reply,
                    payload,
                } => format!(
                    "MSG {} {} {:?} {}",
                    String::from_utf8_lossy(subject),
                    String::from_utf8_lossy(sid),
                    reply.map(|r| String::from_utf8_lossy(r).into_owned()),
                    String::from_utf8_lossy(payload)
                ),
                Op::Info(j) => format!("INFO {}", String::from_utf8_lossy(j)),
                Op::Err(e) => format!("ERR {}", String::from_utf8_lossy(e)),
                Op::Ping => "PING".into(),
                Op::Pong => "PONG".into(),
                Op::Ok => "OK".into(),
            });
        }
        Ok(v)
    }

    #[test]
    fn several_in_one_frame() -> Result<(), String> {
        let mut p = Parser::default();
        p.push(b"INFO {\"server_id\":\"x\",\"max_payload\":1048576}\r\n+OK\r\nMSG bench.0 1 5\r\nhello\r\nMSG a.b 22 inbox.1 0\r\n\r\nPING\r\nPONG\r\n-ERR 'Unknown Protocol Operation'\r\n");
        assert_eq!(
            all(&mut p)?,
            vec![
                "INFO {\"server_id\":\"x\",\"max_payload\":1048576}",
                "OK",
                "MSG bench.0 1 None hello",
                "MSG a.b 22 Some(\"inbox.1\") ",
                "PING",
                "PONG",
                "ERR 'Unknown Protocol Operation'",
            ]
        );
        assert_eq!(p.pending(), 0);
        Ok(())
    }

    #[test]
    fn split_across_frames_at_every_byte() -> Result<(), String> {
        let stream: &[u8] =
            b"MSG bench.1 3 25\r\n{\"seq\":7,\"ts\":9,\"pad\":\"\"}\r\nPING\r\nMSG t 1 2\r\n\r\n\r\n";
        let want = vec![
            "MSG bench.1 3 None {\"seq\":7,\"ts\":9,\"pad\":\"\"}".to_owned(),
            "PING".to_owned(),
            "MSG t 1 None \r\n".to_owned(),
        ];
        for cut in 0..=stream.len() {
            for cut2 in cut..=stream.len() {
                let mut p = Parser::default();
                let mut got = Vec::new();
                for part in [&stream[..cut], &stream[cut..cut2], &stream[cut2..]] {
                    p.push(part);
                    got.extend(all(&mut p)?);
                }
                assert_eq!(got, want, "cuts at {cut}, {cut2}");
                assert_eq!(p.pending(), 0);
            }
        }
        Ok(())
    }

    #[test]
    fn partial_payload_waits() -> Result<(), String> {
        let mut p = Parser::default();
        p.push(b"MSG s 1 10\r\n01234");
        assert_eq!(p.next_op()?, None);
        assert_eq!(p.pending(), 17);
        p.push(b"56789\r");
        assert_eq!(p.next_op()?, None);
        p.push(b"\n");
        assert_eq!(
            p.next_op()?,
            Some(Op::Msg {
                subject: b"s",
                sid: b"1",
                reply: None,
                payload: b"0123456789"
            })
        );
        Ok(())
    }

    #[test]
    fn headers_message_payload_skips_headers() -> Result<(), String> {
        let mut p = Parser::default();
        let hdr = b"NATS/1.0\r\nA: b\r\n\r\n";
        let mut s = format!("HMSG s 9 {} {}\r\n", hdr.len(), hdr.len() + 2).into_bytes();
        s.extend_from_slice(hdr);
        s.extend_from_slice(b"hi\r\n");
        p.push(&s);
        assert_eq!(all(&mut p)?, vec!["MSG s 9 None hi"]);
        Ok(())
    }

    #[test]
    fn errors() {
        for bad in [
            &b"MSG s\r\n"[..],
            b"MSG s 1 x\r\n",
            b"MSG s 1 a b c d\r\n",
            b"HELLO\r\n",
            b"MSG s 1 2\r\nabXY",
        ] {
            let mut p = Parser::default();
            p.push(bad);
            assert!(p.next_op().is_err(), "{:?}", String::from_utf8_lossy(bad));
        }
        let mut p = Parser::default();
        p.push(&vec![b'x'; MAX_LINE + 1]);
        assert!(p.next_op().is_err());
    }

    #[test]
    fn encoders() -> Result<(), String> {
        let c = connect_frame(&["bench.0".into(), "bench.1".into()]);
        let c = String::from_utf8(c).map_err(|e| e.to_string())?;
        assert!(c.starts_with("CONNECT {\"verbose\":false,\"pedantic\":false,\"protocol\":1"));
        assert!(c.ends_with("\r\nSUB bench.0 1\r\nSUB bench.1 2\r\nPING\r\n"));
        let json = &c["CONNECT ".len()..c.find("\r\n").unwrap_or(0)];
        let v: serde_json::Value = serde_json::from_str(json).map_err(|e| e.to_string())?;
        assert_eq!(v["verbose"], false);

        let mut out = Vec::new();
        pub_frame(&mut out, "bench.0", b"{\"seq\":1}", true);
        assert_eq!(out, b"PUB bench.0 9\r\n{\"seq\":1}\r\nPING\r\n");
        out.clear();
        pub_frame(&mut out, "x", b"", false);
        assert_eq!(out, b"PUB x 0\r\n\r\n");
        Ok(())
    }

    #[test]
    fn idle_parser_releases_large_buffer() -> Result<(), String> {
        let mut p = Parser::default();
        let mut s = b"MSG s 1 10000\r\n".to_vec();
        s.extend(std::iter::repeat_n(b'a', 10_000));
        s.extend_from_slice(b"\r\n");
        p.push(&s);
        assert!(matches!(p.next_op()?, Some(Op::Msg { .. })));
        assert_eq!(p.next_op()?, None);
        assert_eq!(p.buf.capacity(), 0);
        Ok(())
    }
}
