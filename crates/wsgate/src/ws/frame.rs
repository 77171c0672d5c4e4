//! RFC 6455 framing, server side (pure: bytes in, messages out).
//!
//! [`Decoder`] turns the bytes a client sent into complete messages:
//! it unmasks, reassembles fragmented messages, enforces the size limit as
//! soon as a frame header announces a length, validates UTF-8 of text
//! messages and close reasons, and rejects what the RFC forbids (unmasked
//! client frames, reserved bits or opcodes, fragmented or oversized control
//! frames, continuation without a start). [`encode_header`] writes the header
//! of an unmasked server frame.

use bytes::{Buf, Bytes, BytesMut};

pub const OP_CONTINUATION: u8 = 0x0;
pub const OP_TEXT: u8 = 0x1;
pub const OP_BINARY: u8 = 0x2;
pub const OP_CLOSE: u8 = 0x8;
pub const OP_PING: u8 = 0x9;
pub const OP_PONG: u8 = 0xA;

/// The longest frame header: 2 bytes, 8 bytes of length, 4 of mask.
pub const MAX_HEADER: usize = 14;

/// A complete message from the client.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Message {
    /// A text message (valid UTF-8).
    Text(Bytes),
    Binary(Bytes),
    Ping(Bytes),
    Pong(Bytes),
    /// A close frame: the code and reason, if the client sent them.
    Close(Option<(u16, String)>),
}

/// Why the client's bytes are unacceptable; each maps to a close code.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FrameError {
    #[error("protocol error: {0}")]
    Protocol(&'static str),
    #[error("message of {size} bytes exceeds the limit of {max}")]
    TooBig { size: u64, max: usize },
    #[error("text is not valid UTF-8")]
    InvalidUtf8,
}

struct Partial {
    text: bool,
    data: BytesMut,
}

/// Incremental decoder for one connection.
pub struct Decoder {
    max_message: usize,
    partial: Option<Partial>,
}

impl Decoder {
    pub fn new(max_message: usize) -> Self {
        Decoder {
            max_message,
            partial: None,
        }
    }

    /// Decodes the next complete message from the front of `buf`, consuming
    /// its frames. `Ok(None)` means more bytes are needed (what was consumed
    /// so far is kept in the decoder).
    pub fn decode(&mut self, buf: &mut BytesMut) -> Result<Option<Message>, FrameError> {
        loop {
            let Some(frame) = self.next_frame(buf)? else {
                return Ok(None);
            };
            if let Some(msg) = self.on_frame(frame)? {
                return Ok(Some(msg));
            }
        }
    }

    /// True while a fragmented message is being assembled.
    pub fn in_message(&self) -> bool {
        self.partial.is_some()
    }

    fn next_frame(&mut self, buf: &mut BytesMut) -> Result<Option<RawFrame>, FrameError> {
        if buf.len() < 2 {
            return Ok(None);
        }
        let b0 = buf[0];
        let b1 = buf[1];
        let fin = b0 & 0x80 != 0;
        if b0 & 0x70 != 0 {
            return Err(FrameError::Protocol(
                "reserved bits set (no extension was negotiated)",
            ));
        }
        let opcode = b0 & 0x0F;
        if b1 & 0x80 == 0 {
            return Err(FrameError::Protocol("client frames must be masked"));
        }
        let (len, mut at) = match b1 & 0x7F {
            126 => {
                if buf.len() < 4 {
                    return Ok(None);
                }
                (u16::from_be_bytes([buf[2], buf[3]]) as u64, 4)
            }
            127 => {
                if buf.len() < 10 {
                    return Ok(None);
                }
                let mut b = [0u8; 8];
                b.copy_from_slice(&buf[2..10]);
                let len = u64::from_be_bytes(b);
                if len >> 63 != 0 {
                    return Err(FrameError::Protocol(
                        "payload length has the most significant bit set",
                    ));
                }
                (len, 10)
            }
            n => (n as u64, 2),
        };
        match opcode {
            OP_CLOSE | OP_PING | OP_PONG => {
                if !fin {
                    return Err(FrameError::Protocol(
                        "control frames must not be fragmented",
                    ));
                }
                if len > 125 {
                    return Err(FrameError::Protocol("control frame payload over 125 bytes"));
                }
            }
            OP_TEXT | OP_BINARY | OP_CONTINUATION => {
                // Enforce the limit before buffering the payload.
                let so_far = self.partial.as_ref().map_or(0, |p| p.data.len()) as u64;
                if so_far + len > self.max_message as u64 {
                    return Err(FrameError::TooBig {
                        size: so_far + len,
                        max: self.max_message,
                    });
                }
            }
            _ => return Err(FrameError::Protocol("reserved opcode")),
        }
        let need = at + 4 + len as usize;
        if buf.len() < need {
            buf.reserve(need - buf.len());
            return Ok(None);
        }
        let mut mask = [0u8; 4];
        mask.copy_from_slice(&buf[at..at + 4]);
        at += 4;
        buf.advance(at);
        let mut payload = buf.split_to(len as usize);
        unmask(&mut payload, mask);
        Ok(Some(RawFrame {
            fin,
            opcode,
            payload,
        }))
    }

    fn on_frame(&mut self, f: RawFrame) -> Result<Option<Message>, FrameError> {
        match f.opcode {
            OP_PING => Ok(Some(Message::Ping(f.payload.freeze()))),
            OP_PONG => Ok(Some(Message::Pong(f.payload.freeze()))),
            OP_CLOSE => parse_close(&f.payload).map(|c| Some(Message::Close(c))),
            OP_TEXT | OP_BINARY => {
                if self.partial.is_some() {
                    return Err(FrameError::Protocol(
                        "new message before the previous one finished",
                    ));
                }
                let text = f.opcode == OP_TEXT;
                if f.fin {
                    finish(text, f.payload).map(Some)
                } else {
                    self.partial = Some(Partial {
                        text,
                        data: f.payload,
                    });
                    Ok(None)
                }
            }
            _ => {
                // OP_CONTINUATION (others were rejected in next_frame).
                let Some(p) = self.partial.as_mut() else {
                    return Err(FrameError::Protocol(
                        "continuation frame without a message to continue",
                    ));
                };
                p.data.extend_from_slice(&f.payload);
                if f.fin {
                    let p = self
                        .partial
                        .take()
                        .ok_or(FrameError::Protocol("no message"))?;
                    finish(p.text, p.data).map(Some)
                } else {
                    Ok(None)
                }
            }
        }
    }
}

struct RawFrame {
    fin: bool,
    opcode: u8,
    payload: BytesMut,
}

fn finish(text: bool, data: BytesMut) -> Result<Message, FrameError> {
    if text {
        if std::str::from_utf8(&data).is_err() {
            return Err(FrameError::InvalidUtf8);
        }
        Ok(Message::Text(data.freeze()))
    } else {
        Ok(Message::Binary(data.freeze()))
    }
}

fn parse_close(payload: &[u8]) -> Result<Option<(u16, String)>, FrameError> {
    match payload.len() {
        0 => Ok(None),
        1 => Err(FrameError::Protocol("close frame with a one-byte payload")),
        _ => {
            let code = u16::from_be_bytes([payload[0], payload[1]]);
            let valid = matches!(code, 1000..=1003 | 1007..=1011 | 3000..=4999);
            if !valid {
                return Err(FrameError::Protocol("invalid close code"));
            }
            let reason = std::str::from_utf8(&payload[2..]).map_err(|_| FrameError::InvalidUtf8)?;
            Ok(Some((code, reason.to_string())))
        }
    }
}

/// XORs `data` with the 4-byte mask, a word at a time.
fn unmask(data: &mut [u8], mask: [u8; 4]) {
    let word = u32::from_ne_bytes(mask);
    let mut chunks = data.chunks_exact_mut(4);
    for c in &mut chunks {
        let v = u32::from_ne_bytes([c[0], c[1], c[2], c[3]]) ^ word;
        c.copy_from_slice(&v.to_ne_bytes());
    }
    for (i, b) in chunks.into_remainder().iter_mut().enumerate() {
        *b ^= mask[i];
    }
}

/// Appends the header of an unmasked, final server frame.
pub fn encode_header(out: &mut Vec<u8>, opcode: u8, len: usize) {
    out.push(0x80 | opcode);
    if len < 126 {
        out.push(len as u8);
    } else if len <= u16::MAX as usize {
        out.push(126);
        out.extend_from_slice(&(len as u16).to_be_bytes());
    } else {
        out.push(127);
        out.extend_from_slice(&(len as u64).to_be_bytes());
    }
}

/// Appends a whole unmasked server frame.
pub fn encode_frame(out: &mut Vec<u8>, opcode: u8, payload: &[u8]) {
    encode_header(out, opcode, payload.len());
    out.extend_from_slice(payload);
}

/// Appends a close frame with `code` and `reason` (reason cut to fit 125 bytes).
pub fn encode_close(out: &mut Vec<u8>, code: u16, reason: &str) {
    let mut end = reason.len().min(123);
    while !reason.is_char_boundary(end) {
        end -= 1;
    }
    let mut payload = Vec::with_capacity(2 + end);
    payload.extend_from_slice(&code.to_be_bytes());
    payload.extend_from_slice(&reason.as_bytes()[..end]);
    encode_frame(out, OP_CLOSE, &payload);
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A masked client frame, as a browser would send it.
    fn client_frame(fin: bool, opcode: u8, payload: &[u8]) -> Vec<u8> {
        let mask = [0x37, 0xfa, 0x21, 0x3d];
        let mut out = vec![(if fin { 0x80 } else { 0 }) | opcode];
        let len = payload.len();
        if len < 126 {
            out.push(0x80 | len as u8);
        } else if len <= 65535 {
            out.push(0x80 | 126);
            out.extend_from_slice(&(len as u16).to_be_bytes());
        } else {
            out.push(0x80 | 127);
            out.extend_from_slice(&(len as u64).to_be_bytes());
        }
        out.extend_from_slice(&mask);
        out.extend(payload.iter().enumerate().map(|(i, b)| b ^ mask[i % 4]));
        out
    }

    fn decode_all(max: usize, bytes: &[u8]) -> Vec<Result<Message, FrameError>> {
        let mut d = Decoder::new(max);
        let mut buf = BytesMut::new();
        let mut out = Vec::new();
        // Feed one byte at a time: every split point must work.
        for b in bytes {
            buf.extend_from_slice(&[*b]);
            loop {
                match d.decode(&mut buf) {
                    Ok(Some(m)) => out.push(Ok(m)),
                    Ok(None) => break,
                    Err(e) => {
                        out.push(Err(e));
                        return out;
                    }
                }
            }
        }
        out
    }

    #[test]
    fn text_binary_and_control_frames() {
        let mut bytes = client_frame(true, OP_TEXT, b"hello");
        bytes.extend(client_frame(true, OP_PING, b"p"));
        bytes.extend(client_frame(true, OP_BINARY, &[0, 1, 2]));
        bytes.extend(client_frame(true, OP_PONG, b""));
        bytes.extend(client_frame(true, OP_CLOSE, &[0x03, 0xe8, b'o', b'k']));
        assert_eq!(
            decode_all(1024, &bytes),
            vec![
                Ok(Message::Text(Bytes::from_static(b"hello"))),
                Ok(Message::Ping(Bytes::from_static(b"p"))),
                Ok(Message::Binary(Bytes::from_static(&[0, 1, 2]))),
                Ok(Message::Pong(Bytes::new())),
                Ok(Message::Close(Some((1000, "ok".into())))),
            ]
        );
    }

    #[test]
    fn lengths_16_and_64_bit() {
        let medium = "m".repeat(300);
        let large = "l".repeat(70_000);
        let mut bytes = client_frame(true, OP_TEXT, medium.as_bytes());
        bytes.extend(client_frame(true, OP_TEXT, large.as_bytes()));
        let got = decode_all(100_000, &bytes);
        assert_eq!(got[0], Ok(Message::Text(Bytes::from(medium))));
        assert_eq!(got[1], Ok(Message::Text(Bytes::from(large))));
    }

    #[test]
    fn fragments_with_interleaved_ping() {
        let mut bytes = client_frame(false, OP_TEXT, b"hel");
        bytes.extend(client_frame(true, OP_PING, b"x"));
        bytes.extend(client_frame(false, OP_CONTINUATION, b"lo "));
        bytes.extend(client_frame(true, OP_CONTINUATION, "wörld".as_bytes()));
        assert_eq!(
            decode_all(1024, &bytes),
            vec![
                Ok(Message::Ping(Bytes::from_static(b"x"))),
                Ok(Message::Text(Bytes::from("hello wörld"))),
            ]
        );
    }

    #[test]
    fn utf8_split_across_fragments_is_valid() {
        let s = "é".as_bytes();
        let mut bytes = client_frame(false, OP_TEXT, &s[..1]);
        bytes.extend(client_frame(true, OP_CONTINUATION, &s[1..]));
        assert_eq!(
            decode_all(16, &bytes),
            vec![Ok(Message::Text(Bytes::from("é")))]
        );
    }

    #[test]
    fn violations() {
        let err = |bytes: Vec<u8>| decode_all(1024, &bytes).pop().and_then(Result::err);
        // Unmasked.
        assert!(matches!(
            err(vec![0x81, 0x01, b'a']),
            Some(FrameError::Protocol(_))
        ));
        // Reserved bit.
        let mut f = client_frame(true, OP_TEXT, b"a");
        f[0] |= 0x40;
        assert!(matches!(err(f), Some(FrameError::Protocol(_))));
        // Reserved opcode.
        assert!(matches!(
            err(client_frame(true, 0x3, b"")),
            Some(FrameError::Protocol(_))
        ));
        // Fragmented control frame.
        assert!(matches!(
            err(client_frame(false, OP_PING, b"")),
            Some(FrameError::Protocol(_))
        ));
        // Control frame over 125 bytes.
        assert!(matches!(
            err(client_frame(true, OP_PING, &[0; 126])),
            Some(FrameError::Protocol(_))
        ));
        // Continuation without start, new message inside a message.
        assert!(matches!(
            err(client_frame(true, OP_CONTINUATION, b"a")),
            Some(FrameError::Protocol(_))
        ));
        let mut f = client_frame(false, OP_TEXT, b"a");
        f.extend(client_frame(true, OP_TEXT, b"b"));
        assert!(matches!(err(f), Some(FrameError::Protocol(_))));
        // Invalid UTF-8, in a message and in a close reason.
        assert_eq!(
            err(client_frame(true, OP_TEXT, &[0xff])),
            Some(FrameError::InvalidUtf8)
        );
        assert_eq!(
            err(client_frame(true, OP_CLOSE, &[0x03, 0xe8, 0xff])),
            Some(FrameError::InvalidUtf8)
        );
        // Bad close payloads.
        assert!(matches!(
            err(client_frame(true, OP_CLOSE, &[0x03])),
            Some(FrameError::Protocol(_))
        ));
        assert!(matches!(
            err(client_frame(true, OP_CLOSE, &[0x03, 0xed])),
            Some(FrameError::Protocol(_))
        ));
    }

    #[test]
    fn size_limit_applies_before_buffering_and_across_fragments() {
        // Only the header of a huge frame is needed to refuse it.
        let mut header = vec![0x81, 0x80 | 127];
        header.extend_from_slice(&(1u64 << 40).to_be_bytes());
        assert!(matches!(
            decode_all(1024, &header).pop(),
            Some(Err(FrameError::TooBig { .. }))
        ));
        let mut f = client_frame(false, OP_TEXT, &[b'a'; 600]);
        f.extend(client_frame(true, OP_CONTINUATION, &[b'a'; 600]));
        assert!(matches!(
            decode_all(1024, &f).pop(),
            Some(Err(FrameError::TooBig { .. }))
        ));
    }

    #[test]
    fn server_frames() {
        let mut out = Vec::new();
        encode_frame(&mut out, OP_TEXT, b"hi");
        assert_eq!(out, [0x81, 2, b'h', b'i']);
        out.clear();
        encode_header(&mut out, OP_TEXT, 300);
        assert_eq!(out, [0x81, 126, 1, 44]);
        out.clear();
        encode_header(&mut out, OP_BINARY, 70_000);
        assert_eq!(out[..2], [0x82, 127]);
        assert_eq!(
            u64::from_be_bytes(out[2..10].try_into().unwrap_or_default()),
            70_000
        );
        out.clear();
        encode_close(&mut out, 1001, &"x".repeat(200));
        assert_eq!(out.len(), 2 + 125);
        assert_eq!(out[2..4], [0x03, 0xe9]);
    }

    #[test]
    fn unmask_round_trips_every_length() {
        for n in 0..20 {
            let data: Vec<u8> = (0..n as u8).collect();
            let mut m = data.clone();
            unmask(&mut m, [1, 2, 3, 4]);
            unmask(&mut m, [1, 2, 3, 4]);
            assert_eq!(m, data);
        }
    }
}
