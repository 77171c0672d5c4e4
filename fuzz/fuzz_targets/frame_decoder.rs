//! `wsgate::ws::frame::Decoder` on any bytes: it must never panic, and
//! feeding the bytes in chunks must give the same messages and the same
//! error as feeding them at once (the decoder is incremental).
//!
//! Input layout: byte 0 picks the size limit, byte 1 the chunk size, the
//! rest is the stream.
#![no_main]

use bytes::BytesMut;
use libfuzzer_sys::fuzz_target;
use wsgate::ws::frame::{Decoder, FrameError, Message};

fn decode(max: usize, bytes: &[u8], chunk: usize) -> (Vec<Message>, Option<FrameError>) {
    let mut d = Decoder::new(max);
    let mut buf = BytesMut::new();
    let mut out = Vec::new();
    for piece in bytes.chunks(chunk.max(1)) {
        buf.extend_from_slice(piece);
        loop {
            match d.decode(&mut buf) {
                Ok(Some(m)) => out.push(m),
                Ok(None) => break,
                Err(e) => return (out, Some(e)),
            }
        }
    }
    (out, None)
}

fuzz_target!(|data: &[u8]| {
    let [limit, chunk, stream @ ..] = data else {
        return;
    };
    let max = [0, 1, 125, 126, 1024, 65_536, 1 << 20][*limit as usize % 7];
    let whole = decode(max, stream, stream.len());
    let split = decode(max, stream, *chunk as usize % 17 + 1);
    assert_eq!(whole, split);
    for m in &whole.0 {
        match m {
            Message::Text(t) => assert!(std::str::from_utf8(t).is_ok() && t.len() <= max),
            Message::Binary(b) => assert!(b.len() <= max),
            Message::Ping(p) | Message::Pong(p) => assert!(p.len() <= 125),
            Message::Close(_) => {}
        }
    }
});
