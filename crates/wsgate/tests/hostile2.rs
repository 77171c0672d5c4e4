//! More hostile clients, over raw TCP where a WebSocket library would not
//! misbehave on purpose: many connections from one address, ping floods,
//! fragment abuse, oversized control frames, close-frame abuse. After each
//! case the node is still up, its memory is bounded, and a bystander still
//! receives its messages.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::time::Duration;

use common::*;
use serde_json::json;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};

const OP_CONT: u8 = 0x0;
const OP_TEXT: u8 = 0x1;
const OP_CLOSE: u8 = 0x8;
const OP_PING: u8 = 0x9;
const OP_PONG: u8 = 0xA;

/// A bystander subscribed before the abuse, checked after it.
async fn bystander(server: &TestServer) -> wsgate_client::Client {
    let c = server.client().await;
    c.subscribe(&["bystander"]).await.unwrap();
    c
}

async fn bystander_still_receives(server: &TestServer, c: &mut wsgate_client::Client) {
    let p = server.client().await;
    p.publish("bystander", &"still here").await.unwrap();
    assert_eq!(next(c).await.data(), Some(&json!("still here")));
    assert_still_serving(server).await;
}

/// The process's resident memory (the server runs in this process).
fn rss() -> u64 {
    wsgate::limits::resident_bytes().expect("/proc/self/statm")
}

/// Asserts that resident memory grew by less than 64 MiB since `before`.
fn assert_memory_bounded(before: u64) {
    let after = rss();
    assert!(
        after < before + 64 * 1024 * 1024,
        "resident memory grew from {before} to {after}"
    );
}

/// A masked client frame.
fn frame(fin: bool, opcode: u8, payload: &[u8]) -> Vec<u8> {
    let mask = [0x1b, 0x2c, 0x3d, 0x4e];
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

fn close_payload(code: u16, reason: &[u8]) -> Vec<u8> {
    let mut p = code.to_be_bytes().to_vec();
    p.extend_from_slice(reason);
    p
}

/// The read half of a raw WebSocket connection: parses the server's
/// (unmasked) frames.
struct RawReader {
    r: OwnedReadHalf,
    buf: Vec<u8>,
}

impl RawReader {
    /// The next frame (opcode, payload), or `None` at EOF or on an error.
    async fn next_frame(&mut self) -> Option<(u8, Vec<u8>)> {
        loop {
            if self.buf.len() >= 2 {
                let op = self.buf[0] & 0x0f;
                let (len, at) = match self.buf[1] & 0x7f {
                    126 if self.buf.len() >= 4 => {
                        (u16::from_be_bytes([self.buf[2], self.buf[3]]) as usize, 4)
                    }
                    127 if self.buf.len() >= 10 => (
                        u64::from_be_bytes(self.buf[2..10].try_into().unwrap()) as usize,
                        10,
                    ),
                    126 | 127 => (usize::MAX, 0),
                    n => (n as usize, 2),
                };
                if len != usize::MAX && self.buf.len() >= at + len {
                    let payload = self.buf[at..at + len].to_vec();
                    self.buf.drain(..at + len);
                    return Some((op, payload));
                }
            }
            let mut chunk = [0u8; 8192];
            match self.r.read(&mut chunk).await {
                Ok(0) | Err(_) => return None,
                Ok(n) => self.buf.extend_from_slice(&chunk[..n]),
            }
        }
    }

    /// Reads until the server's close frame: its code (1005 for none), or
    /// `None` if the connection ended without one.
    async fn close_code(&mut self) -> Option<u16> {
        tokio::time::timeout(WAIT, async {
            while let Some((op, p)) = self.next_frame().await {
                if op == OP_CLOSE {
                    return Some(if p.len() >= 2 {
                        u16::from_be_bytes([p[0], p[1]])
                    } else {
                        1005
                    });
                }
            }
            None
        })
        .await
        .expect("timed out waiting for a close frame")
    }

    /// Every frame until EOF.
    async fn rest(&mut self) -> Vec<(u8, Vec<u8>)> {
        tokio::time::timeout(WAIT, async {
            let mut out = Vec::new();
            while let Some(f) = self.next_frame().await {
                out.push(f);
            }
            out
        })
        .await
        .expect("timed out waiting for EOF")
    }
}

/// Opens a WebSocket with a hand-written handshake; returns its halves.
async fn raw(server: &TestServer) -> (RawReader, OwnedWriteHalf) {
    let tcp = TcpStream::connect(server.addr).await.unwrap();
    let (r, mut w) = tcp.into_split();
    w.write_all(
        b"GET /ws HTTP/1.1\r\nHost: x\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\
          Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n",
    )
    .await
    .unwrap();
    let mut reader = RawReader { r, buf: Vec::new() };
    let head_end = tokio::time::timeout(WAIT, async {
        loop {
            if let Some(pos) = reader.buf.windows(4).position(|w| w == b"\r\n\r\n") {
                return pos + 4;
            }
            let mut chunk = [0u8; 1024];
            let n = reader.r.read(&mut chunk).await.unwrap();
            assert!(n > 0, "closed during the handshake");
            reader.buf.extend_from_slice(&chunk[..n]);
        }
    })
    .await
    .expect("handshake timed out");
    let head = String::from_utf8_lossy(&reader.buf[..head_end]).to_string();
    assert!(head.starts_with("HTTP/1.1 101"), "{head}");
    reader.buf.drain(..head_end);
    (reader, w)
}

/// Sends `bytes` on a fresh connection and returns the server's close code.
async fn close_code_after(server: &TestServer, bytes: &[u8]) -> Option<u16> {
    let (mut r, mut w) = raw(server).await;
    let _ = w.write_all(bytes).await;
    r.close_code().await
}

// ------------------------------------------------------------------ tests

#[tokio::test]
async fn many_connections_from_one_address_are_capped() {
    let server = TestServer::with(|c| c.limits.max_connections_per_ip = 20).await;
    let mut by = bystander(&server).await;
    let before = rss();
    // 60 upgrades at once from 127.0.0.1; the bystander holds one slot.
    let attempts = (0..60).map(|_| tokio_tungstenite::connect_async(server.ws_url()));
    let results = futures_util::future::join_all(attempts).await;
    let mut open = Vec::new();
    let mut refused = 0;
    for r in results {
        match r {
            Ok((ws, _)) => open.push(ws),
            Err(tokio_tungstenite::tungstenite::Error::Http(resp)) => {
                assert_eq!(resp.status(), 429);
                assert!(resp.headers().contains_key("retry-after"));
                refused += 1;
            }
            Err(e) => panic!("{e}"),
        }
    }
    assert_eq!(open.len(), 19);
    assert_eq!(refused, 41);
    assert_eq!(server.metric("wsgate_connections").await, 20.0);
    // The bystander's connection was never at risk; free slots for the
    // helper clients of the final check.
    drop(open);
    server.wait_metric("wsgate_connections", |v| v == 1.0).await;
    assert_memory_bounded(before);
    bystander_still_receives(&server, &mut by).await;
    server.stop().await;
}

#[tokio::test]
async fn a_ping_flood_gets_coalesced_pongs_and_others_keep_receiving() {
    let server = TestServer::start().await;
    let mut by = bystander(&server).await;
    let before = rss();
    let (mut r, mut w) = raw(&server).await;
    const CHUNKS: u32 = 100;
    const PER_CHUNK: u32 = 1000;
    let last = CHUNKS * PER_CHUNK - 1;
    let flood = tokio::spawn(async move {
        let mut n = 0u32;
        for _ in 0..CHUNKS {
            let mut chunk = Vec::with_capacity(PER_CHUNK as usize * 10);
            for _ in 0..PER_CHUNK {
                chunk.extend(frame(true, OP_PING, &n.to_be_bytes()));
                n += 1;
            }
            w.write_all(&chunk).await.unwrap();
        }
        w
    });
    // The server answers (only the latest ping it has seen each time it
    // writes): the last ping of the flood is answered.
    let pongs = tokio::spawn(async move {
        let mut pongs = 0u32;
        loop {
            let (op, p) = r.next_frame().await.expect("connection dropped");
            assert_eq!(op, OP_PONG);
            pongs += 1;
            if p == last.to_be_bytes() {
                return (pongs, r);
            }
        }
    });
    // Meanwhile, other clients are served.
    bystander_still_receives(&server, &mut by).await;
    let mut w = tokio::time::timeout(WAIT, flood).await.unwrap().unwrap();
    let (pongs, mut r) = tokio::time::timeout(WAIT, pongs).await.unwrap().unwrap();
    assert!(
        pongs >= 1 && pongs * 10 < CHUNKS * PER_CHUNK,
        "{pongs} pongs for {} pings",
        CHUNKS * PER_CHUNK
    );
    // The flooder's connection still works.
    let req = r#"{"jsonrpc":"2.0","id":1,"method":"ping"}"#;
    w.write_all(&frame(true, OP_TEXT, req.as_bytes()))
        .await
        .unwrap();
    let (op, p) = r.next_frame().await.unwrap();
    assert_eq!(op, OP_TEXT);
    assert_eq!(
        serde_json::from_slice::<serde_json::Value>(&p).unwrap()["result"],
        "pong"
    );
    assert_memory_bounded(before);
    bystander_still_receives(&server, &mut by).await;
    server.stop().await;
}

#[tokio::test]
async fn a_message_in_thousands_of_one_byte_fragments_is_reassembled() {
    let server = TestServer::start().await;
    let mut by = bystander(&server).await;
    let (mut r, mut w) = raw(&server).await;
    let req =
        json!({"jsonrpc": "2.0", "id": 7, "method": "self.reply", "params": "x".repeat(3000)})
            .to_string();
    let bytes = req.as_bytes();
    let mut wire = Vec::new();
    for (i, b) in bytes.iter().enumerate() {
        let op = if i == 0 { OP_TEXT } else { OP_CONT };
        wire.extend(frame(i == bytes.len() - 1, op, &[*b]));
        // A ping in the middle of the message is allowed (RFC 6455 §5.4).
        if i == 1500 {
            wire.extend(frame(true, OP_PING, b"mid"));
        }
    }
    w.write_all(&wire).await.unwrap();
    let mut reply = None;
    while reply.is_none() {
        let (op, p) = r.next_frame().await.unwrap();
        if op == OP_TEXT {
            reply = Some(serde_json::from_slice::<serde_json::Value>(&p).unwrap());
        }
    }
    let reply = reply.unwrap();
    assert_eq!(reply["id"], 7);
    assert_eq!(reply["result"].as_str().unwrap().len(), 3000);
    bystander_still_receives(&server, &mut by).await;
    server.stop().await;
}

#[tokio::test]
async fn a_fragment_stream_that_never_finishes_hits_the_size_limit() {
    let server = TestServer::with(|c| c.limits.max_message_size = 4096).await;
    let mut by = bystander(&server).await;
    let before = rss();
    let (mut r, mut w) = raw(&server).await;
    let mut wire = frame(false, OP_TEXT, b"[");
    for _ in 0..10_000 {
        wire.extend(frame(false, OP_CONT, b" "));
    }
    let writer = tokio::spawn(async move {
        let _ = w.write_all(&wire).await;
    });
    assert_eq!(r.close_code().await, Some(1009));
    let _ = writer.await;
    assert_memory_bounded(before);
    bystander_still_receives(&server, &mut by).await;
    server.stop().await;
}

#[tokio::test]
async fn endless_empty_fragments_hit_the_idle_timeout() {
    let server = TestServer::with(|c| c.limits.idle_timeout = Duration::from_secs(2)).await;
    let by = bystander(&server).await;
    let before = rss();
    let (mut r, mut w) = raw(&server).await;
    // Bytes keep coming, but no message ever completes.
    let stop = tokio_util::sync::CancellationToken::new();
    let writer = {
        let stop = stop.clone();
        tokio::spawn(async move {
            if w.write_all(&frame(false, OP_TEXT, b"{")).await.is_err() {
                return;
            }
            let batch: Vec<u8> = (0..100).flat_map(|_| frame(false, OP_CONT, b"")).collect();
            let mut tick = tokio::time::interval(Duration::from_millis(10));
            while !stop.is_cancelled() {
                tick.tick().await;
                if w.write_all(&batch).await.is_err() {
                    return;
                }
            }
        })
    };
    assert_eq!(r.close_code().await, Some(4009));
    stop.cancel();
    let _ = writer.await;
    // The bystander sent nothing either: it is closed too, by design.
    assert!(server.metric("wsgate_idle_timeouts_total").await >= 1.0);
    assert_memory_bounded(before);
    drop(by);
    let mut by = bystander(&server).await;
    bystander_still_receives(&server, &mut by).await;
    server.stop().await;
}

#[tokio::test]
async fn oversized_and_fragmented_control_frames_close_with_1002() {
    let server = TestServer::start().await;
    let mut by = bystander(&server).await;
    for (name, bytes) in [
        ("ping of 126 bytes", frame(true, OP_PING, &[b'p'; 126])),
        ("pong of 200 bytes", frame(true, OP_PONG, &[b'p'; 200])),
        (
            "close of 126 bytes",
            frame(true, OP_CLOSE, &close_payload(1000, &[b'r'; 124])),
        ),
        ("fragmented ping", frame(false, OP_PING, b"x")),
        ("reserved opcode", frame(true, 0x3, b"")),
        ("reserved bit", {
            let mut f = frame(true, OP_TEXT, b"{}");
            f[0] |= 0x40;
            f
        }),
        ("continuation without a start", frame(true, OP_CONT, b"{}")),
        ("new message inside a message", {
            let mut f = frame(false, OP_TEXT, b"[");
            f.extend(frame(true, OP_TEXT, b"{}"));
            f
        }),
    ] {
        assert_eq!(
            close_code_after(&server, &bytes).await,
            Some(1002),
            "{name}"
        );
    }
    bystander_still_receives(&server, &mut by).await;
    server.stop().await;
}

#[tokio::test]
async fn close_frame_abuse() {
    let server = TestServer::start().await;
    let mut by = bystander(&server).await;
    // Codes a peer must not send (RFC 6455 §7.4): protocol error.
    for code in [0u16, 999, 1004, 1005, 1006, 1015, 1016, 2999, 5000, 65535] {
        let f = frame(true, OP_CLOSE, &close_payload(code, b""));
        assert_eq!(
            close_code_after(&server, &f).await,
            Some(1002),
            "code {code}"
        );
    }
    // A one-byte close payload.
    let f = frame(true, OP_CLOSE, &[0x03]);
    assert_eq!(close_code_after(&server, &f).await, Some(1002));
    // A close reason that is not UTF-8.
    let f = frame(true, OP_CLOSE, &close_payload(1000, &[0xff, 0xfe]));
    assert_eq!(close_code_after(&server, &f).await, Some(1007));
    // Valid codes are echoed.
    for code in [1000u16, 1001, 3000, 4321] {
        let f = frame(true, OP_CLOSE, &close_payload(code, b"bye"));
        assert_eq!(close_code_after(&server, &f).await, Some(code));
    }
    // Data after the close frame is ignored: the server echoes the close,
    // answers nothing else and ends the connection.
    let (mut r, mut w) = raw(&server).await;
    let mut bytes = frame(true, OP_CLOSE, &close_payload(1000, b""));
    for id in 0..10 {
        let req = format!(r#"{{"jsonrpc":"2.0","id":{id},"method":"ping"}}"#);
        bytes.extend(frame(true, OP_TEXT, req.as_bytes()));
    }
    let _ = w.write_all(&bytes).await;
    let frames = r.rest().await;
    assert_eq!(frames.len(), 1, "{frames:?}");
    assert_eq!(frames[0].0, OP_CLOSE);
    assert_eq!(frames[0].1[..2], 1000u16.to_be_bytes());
    bystander_still_receives(&server, &mut by).await;
    server.stop().await;
}
