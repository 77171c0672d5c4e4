//! Property tests of the WebSocket frame decoder (`wsgate::ws::frame`):
//!
//! * a stream of valid frames — fragmented messages with control frames
//!   between the fragments, random masks, all three length encodings —
//!   decodes to the messages that were sent, however the bytes are split;
//! * any bytes at all never panic, and decode to the same results (the
//!   same messages, then the same error) whole or split.
//!
//! The fuzz targets in `fuzz/` explore the same decoder without bounds.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use bytes::{Bytes, BytesMut};
use proptest::prelude::*;
use wsgate::ws::frame::{
    Decoder, FrameError, Message, OP_BINARY, OP_CLOSE, OP_CONTINUATION, OP_PING, OP_PONG, OP_TEXT,
};

/// A masked client frame.
fn encode(fin: bool, opcode: u8, payload: &[u8], mask: [u8; 4]) -> Vec<u8> {
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

/// One message as the client sends it.
#[derive(Debug, Clone)]
enum Sent {
    /// Text or binary, cut into fragments at these (sorted) offsets, with
    /// a control frame (ping payload) after some fragments.
    Data {
        text: bool,
        payload: Vec<u8>,
        cuts: Vec<usize>,
        pings_between: Vec<Vec<u8>>,
    },
    Ping(Vec<u8>),
    Pong(Vec<u8>),
}

fn control_payload() -> impl Strategy<Value = Vec<u8>> {
    prop::collection::vec(any::<u8>(), 0..=125)
}

fn data_payload() -> impl Strategy<Value = (bool, Vec<u8>)> {
    prop_oneof![
        // Text: any string (multi-byte characters get split across fragments).
        4 => ".{0,300}".prop_map(|s: String| (true, s.into_bytes())),
        // Long enough for the 16-bit and 64-bit length encodings.
        1 => (0usize..3, any::<u8>()).prop_map(|(k, b)| {
            let len = [130, 70_000, 200][k];
            (true, vec![b'a' + b % 26; len])
        }),
        2 => prop::collection::vec(any::<u8>(), 0..300).prop_map(|b| (false, b)),
    ]
}

fn sent() -> impl Strategy<Value = Sent> {
    prop_oneof![
        6 => (
            data_payload(),
            prop::collection::vec(any::<prop::sample::Index>(), 0..6),
            prop::collection::vec(control_payload(), 0..3),
        )
            .prop_map(|((text, payload), idx, pings_between)| {
                let mut cuts: Vec<usize> = idx.iter().map(|i| i.index(payload.len() + 1)).collect();
                cuts.sort_unstable();
                Sent::Data { text, payload, cuts, pings_between }
            }),
        1 => control_payload().prop_map(Sent::Ping),
        1 => control_payload().prop_map(Sent::Pong),
    ]
}

/// The wire bytes for `msgs`, and the messages the decoder must yield.
fn wire(msgs: &[Sent], masks: &[[u8; 4]]) -> (Vec<u8>, Vec<Message>) {
    let mut mask = masks.iter().cycle().copied();
    let mut bytes = Vec::new();
    let mut expected = Vec::new();
    for m in msgs {
        match m {
            Sent::Ping(p) => {
                bytes.extend(encode(true, OP_PING, p, mask.next().unwrap()));
                expected.push(Message::Ping(Bytes::from(p.clone())));
            }
            Sent::Pong(p) => {
                bytes.extend(encode(true, OP_PONG, p, mask.next().unwrap()));
                expected.push(Message::Pong(Bytes::from(p.clone())));
            }
            Sent::Data {
                text,
                payload,
                cuts,
                pings_between,
            } => {
                let mut bounds = vec![0];
                bounds.extend(cuts.iter().copied());
                bounds.push(payload.len());
                let pieces: Vec<&[u8]> = bounds.windows(2).map(|w| &payload[w[0]..w[1]]).collect();
                let mut pings = pings_between.iter();
                for (i, piece) in pieces.iter().enumerate() {
                    let op = match (i, text) {
                        (0, true) => OP_TEXT,
                        (0, false) => OP_BINARY,
                        _ => OP_CONTINUATION,
                    };
                    let fin = i == pieces.len() - 1;
                    bytes.extend(encode(fin, op, piece, mask.next().unwrap()));
                    if !fin {
                        if let Some(p) = pings.next() {
                            bytes.extend(encode(true, OP_PING, p, mask.next().unwrap()));
                            expected.push(Message::Ping(Bytes::from(p.clone())));
                        }
                    }
                }
                let data = Bytes::from(payload.clone());
                expected.push(if *text {
                    Message::Text(data)
                } else {
                    Message::Binary(data)
                });
            }
        }
    }
    (bytes, expected)
}

/// Feeds `bytes` in chunks ending at `cuts`, decoding after each chunk;
/// returns the messages and the error that stopped decoding, if any.
fn decode_split(max: usize, bytes: &[u8], cuts: &[usize]) -> (Vec<Message>, Option<FrameError>) {
    let mut d = Decoder::new(max);
    let mut buf = BytesMut::new();
    let mut out = Vec::new();
    let mut at = 0;
    let mut ends: Vec<usize> = cuts.iter().map(|c| (*c).min(bytes.len())).collect();
    ends.push(bytes.len());
    ends.sort_unstable();
    for end in ends {
        buf.extend_from_slice(&bytes[at..end]);
        at = end;
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

fn masks() -> impl Strategy<Value = Vec<[u8; 4]>> {
    prop::collection::vec(any::<[u8; 4]>(), 1..8)
}

fn cuts() -> impl Strategy<Value = Vec<usize>> {
    prop::collection::vec(0usize..80_000, 0..40)
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 200, ..ProptestConfig::default() })]

    #[test]
    fn valid_streams_decode_identically_however_split(
        msgs in prop::collection::vec(sent(), 1..8),
        masks in masks(),
        cuts in cuts(),
        small_cuts in prop::collection::vec(0usize..200, 0..20),
    ) {
        let (bytes, expected) = wire(&msgs, &masks);
        let (whole, err) = decode_split(1 << 20, &bytes, &[]);
        prop_assert_eq!(err, None);
        prop_assert_eq!(&whole, &expected);
        let (split, err) = decode_split(1 << 20, &bytes, &cuts);
        prop_assert_eq!(err, None);
        prop_assert_eq!(&split, &expected);
        // Splits concentrated in the first frames' headers.
        let (split, err) = decode_split(1 << 20, &bytes, &small_cuts);
        prop_assert_eq!(err, None);
        prop_assert_eq!(&split, &expected);
    }

    #[test]
    fn a_close_frame_ends_the_stream_with_its_code(
        code in prop_oneof![1000u16..=1003, 1007u16..=1011, 3000u16..=4999],
        reason in ".{0,30}",
        mask in any::<[u8; 4]>(),
        cuts in prop::collection::vec(0usize..64, 0..8),
    ) {
        let mut reason = reason;
        while reason.len() > 123 {
            reason.pop();
        }
        let mut payload = code.to_be_bytes().to_vec();
        payload.extend_from_slice(reason.as_bytes());
        let bytes = encode(true, OP_CLOSE, &payload, mask);
        let (got, err) = decode_split(1024, &bytes, &cuts);
        prop_assert_eq!(err, None);
        prop_assert_eq!(got, vec![Message::Close(Some((code, reason)))]);
    }

    #[test]
    fn arbitrary_bytes_never_panic_and_split_the_same(
        bytes in prop::collection::vec(any::<u8>(), 0..2048),
        max in prop_oneof![Just(0usize), Just(1), Just(125), Just(1024), Just(1 << 20)],
        cuts in prop::collection::vec(0usize..2048, 0..30),
    ) {
        let whole = decode_split(max, &bytes, &[]);
        let split = decode_split(max, &bytes, &cuts);
        prop_assert_eq!(whole, split);
    }

    #[test]
    fn random_frame_headers_never_panic_and_split_the_same(
        frames in prop::collection::vec(
            (any::<u8>(), any::<bool>(), prop_oneof![Just(0u64), 0u64..200, Just(126), Just(65_535), Just(65_536), Just(1 << 40), Just(u64::MAX)], any::<[u8; 4]>(), prop::collection::vec(any::<u8>(), 0..64)),
            1..10,
        ),
        max in prop_oneof![Just(64usize), Just(1024), Just(1 << 20)],
        cuts in prop::collection::vec(0usize..1024, 0..20),
    ) {
        // Headers with any flags and opcode, masked or not, with every
        // length encoding (including lengths that do not match the data).
        let mut bytes = Vec::new();
        for (b0, masked, len, mask, data) in frames {
            bytes.push(b0);
            let m = if masked { 0x80 } else { 0 };
            if len < 126 {
                bytes.push(m | len as u8);
            } else if len <= 65_535 {
                bytes.push(m | 126);
                bytes.extend_from_slice(&(len as u16).to_be_bytes());
            } else {
                bytes.push(m | 127);
                bytes.extend_from_slice(&len.to_be_bytes());
            }
            if masked {
                bytes.extend_from_slice(&mask);
            }
            bytes.extend_from_slice(&data);
        }
        let whole = decode_split(max, &bytes, &[]);
        let split = decode_split(max, &bytes, &cuts);
        prop_assert_eq!(whole, split);
    }

    #[test]
    fn messages_over_the_limit_are_refused_however_fragmented(
        size in 1usize..3000,
        max in 1usize..2000,
        idx in prop::collection::vec(any::<prop::sample::Index>(), 0..5),
        mask in any::<[u8; 4]>(),
    ) {
        let payload = vec![b'x'; size];
        let mut cuts: Vec<usize> = idx.iter().map(|i| i.index(size + 1)).collect();
        cuts.sort_unstable();
        let msg = Sent::Data { text: true, payload, cuts, pings_between: vec![] };
        let (bytes, expected) = wire(&[msg], &[mask]);
        let (got, err) = decode_split(max, &bytes, &[]);
        if size > max {
            prop_assert!(matches!(err, Some(FrameError::TooBig { .. })), "{:?}", err);
            prop_assert!(got.is_empty());
        } else {
            prop_assert_eq!(err, None);
            prop_assert_eq!(got, expected);
        }
    }
}
