//! Hostile input. After each case the node is still up and other clients
//! still receive their messages.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::time::Duration;

use common::*;
use futures_util::SinkExt;
use serde_json::json;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::protocol::frame::Frame;
use tokio_tungstenite::tungstenite::protocol::frame::coding::{Data, OpCode};
use wsgate::error::code;

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

#[tokio::test]
async fn invalid_json_and_unknown_methods_keep_the_connection() {
    let server = TestServer::start().await;
    let mut by = bystander(&server).await;
    let mut ws = server.raw().await;
    for junk in [
        "",
        "   ",
        "{",
        "nul",
        "\u{0}",
        "[{]",
        r#"{"jsonrpc":"2.0","id":1,"method":"x"}"#,
    ] {
        let r = rpc(&mut ws, junk).await;
        let c = r["error"]["code"].as_i64().unwrap();
        assert!(
            [code::PARSE_ERROR, code::METHOD_NOT_FOUND].contains(&(c as i32)),
            "{junk:?} -> {r}"
        );
    }
    let r = rpc(&mut ws, r#"{"jsonrpc":"2.0","id":2,"method":"ping"}"#).await;
    assert_eq!(r["result"], "pong");
    bystander_still_receives(&server, &mut by).await;
    server.stop().await;
}

#[tokio::test]
async fn deeply_nested_json_is_rejected_not_fatal() {
    let server = TestServer::start().await;
    let mut by = bystander(&server).await;
    let mut ws = server.raw().await;
    let deep = format!(
        r#"{{"jsonrpc":"2.0","id":1,"method":"publish","params":{{"topic":"t","data":{}{}}}}}"#,
        "[".repeat(5000),
        "]".repeat(5000)
    );
    let r = rpc(&mut ws, &deep).await;
    assert_eq!(r["error"]["code"], code::INVALID_REQUEST, "{r}");
    assert!(
        r["error"]["message"]
            .as_str()
            .unwrap()
            .contains("nests deeper")
    );
    bystander_still_receives(&server, &mut by).await;
    server.stop().await;
}

#[tokio::test]
async fn binary_frames_get_an_error_and_the_connection_stays_open() {
    let server = TestServer::start().await;
    let mut by = bystander(&server).await;
    let mut ws = server.raw().await;
    ws.send(Message::binary(
        b"{\"jsonrpc\":\"2.0\",\"id\":1,\"method\":\"ping\"}".to_vec(),
    ))
    .await
    .unwrap();
    let r = recv_json(&mut ws).await;
    assert_eq!(r["error"]["code"], code::INVALID_REQUEST);
    assert!(r["error"]["message"].as_str().unwrap().contains("binary"));
    let r = rpc(&mut ws, r#"{"jsonrpc":"2.0","id":2,"method":"ping"}"#).await;
    assert_eq!(r["result"], "pong");
    bystander_still_receives(&server, &mut by).await;
    server.stop().await;
}

#[tokio::test]
async fn invalid_utf8_closes_with_1007() {
    let server = TestServer::start().await;
    let mut by = bystander(&server).await;
    let mut ws = server.raw().await;
    let frame = Frame::message(vec![b'"', 0xff, 0xfe, b'"'], OpCode::Data(Data::Text), true);
    ws.send(Message::Frame(frame)).await.unwrap();
    assert_eq!(recv_close(&mut ws).await, 1007);
    bystander_still_receives(&server, &mut by).await;
    server.stop().await;
}

#[tokio::test]
async fn oversized_messages_close_with_1009() {
    let server = TestServer::with(|c| c.limits.max_message_size = 4096).await;
    let mut by = bystander(&server).await;
    let mut ws = server.raw().await;
    let big = format!(
        r#"{{"jsonrpc":"2.0","id":1,"method":"publish","params":{{"topic":"bystander","data":"{}"}}}}"#,
        "a".repeat(5000)
    );
    send(&mut ws, &big).await;
    assert_eq!(recv_close(&mut ws).await, 1009);
    // A message split into small fragments counts as a whole.
    let mut ws = server.raw().await;
    let chunk = "b".repeat(1000);
    for i in 0..6 {
        let op = if i == 0 {
            OpCode::Data(Data::Text)
        } else {
            OpCode::Data(Data::Continue)
        };
        let frame = Frame::message(chunk.clone().into_bytes(), op, false);
        if ws.send(Message::Frame(frame)).await.is_err() {
            break;
        }
    }
    assert_eq!(recv_close(&mut ws).await, 1009);
    bystander_still_receives(&server, &mut by).await;
    server.stop().await;
}

#[tokio::test]
async fn invalid_topics_are_rejected() {
    let server = TestServer::start().await;
    let mut by = bystander(&server).await;
    let c = server.client().await;
    for bad in [
        "",
        "a..b",
        ".a",
        "a.",
        "a b",
        "caf\u{e9}",
        "a.>.b",
        "a*",
        "x\ny",
    ] {
        match c.subscribe(&[bad]).await {
            Err(wsgate_client::ClientError::Rpc { code: k, .. }) => {
                assert_eq!(k, code::INVALID_PARAMS as i64)
            }
            other => panic!("{bad:?}: {other:?}"),
        }
    }
    // One bad topic rejects the whole call: nothing was subscribed.
    assert!(c.subscribe(&["fine", "not fine"]).await.is_err());
    assert_eq!(
        server.metric("wsgate_subscriptions").await,
        1.0,
        "only the bystander's"
    );
    bystander_still_receives(&server, &mut by).await;
    server.stop().await;
}

#[tokio::test]
async fn ten_thousand_subscribe_calls_on_one_connection() {
    let server = TestServer::start().await;
    let mut by = bystander(&server).await;
    let c = server.client().await;
    let limit = server
        .gateway
        .config()
        .limits
        .max_subscriptions_per_connection;
    let calls = (0..10_000).map(|i| {
        let c = &c;
        async move { c.subscribe(&[&format!("many.{i}")]).await }
    });
    let results = futures_util::future::join_all(calls).await;
    let ok = results.iter().filter(|r| r.is_ok()).count();
    let limited = results
        .iter()
        .filter(|r| {
            matches!(r, Err(wsgate_client::ClientError::Rpc { code: k, .. }) if *k == code::TOO_MANY_SUBSCRIPTIONS as i64)
        })
        .count();
    let other: Vec<_> = results
        .iter()
        .filter(|r| {
            !matches!(
                r,
                Ok(_) | Err(wsgate_client::ClientError::Rpc { code: -32003, .. })
            )
        })
        .collect();
    assert!(other.is_empty(), "{other:?}");
    assert_eq!(ok, limit);
    assert_eq!(limited, 10_000 - limit);
    assert_eq!(
        server.metric("wsgate_subscriptions").await,
        (limit + 1) as f64
    );
    drop(c);
    server
        .wait_metric("wsgate_subscriptions", |v| v == 1.0)
        .await;
    bystander_still_receives(&server, &mut by).await;
    server.stop().await;
}

#[tokio::test]
async fn connection_limit_answers_503() {
    let server = TestServer::with(|c| c.limits.max_connections = 3).await;
    let _a = server.raw().await;
    let _b = server.raw().await;
    let mut c = server.client().await;
    c.subscribe(&["bystander"]).await.unwrap();
    match tokio_tungstenite::connect_async(server.ws_url()).await {
        Err(tokio_tungstenite::tungstenite::Error::Http(resp)) => assert_eq!(resp.status(), 503),
        other => panic!("expected 503, got {:?}", other.map(|_| ())),
    }
    assert_eq!(
        server.metric("wsgate_rejected_connections_total").await,
        1.0
    );
    // A slot frees up when a client leaves.
    drop(_a);
    server.wait_metric("wsgate_connections", |v| v == 2.0).await;
    let mut d = server.client().await;
    d.subscribe(&["bystander"]).await.unwrap();
    d.publish("bystander", &1).await.unwrap();
    assert_eq!(next(&mut c).await.data(), Some(&json!(1)));
    assert_eq!(next(&mut d).await.data(), Some(&json!(1)));
    server.stop().await;
}

#[tokio::test]
async fn slow_handshake_is_cut_off() {
    let server =
        TestServer::with(|c| c.limits.handshake_timeout = Duration::from_millis(300)).await;
    let mut by = bystander(&server).await;
    let mut tcp = tokio::net::TcpStream::connect(server.addr).await.unwrap();
    tcp.write_all(b"GET /ws HTTP/1.1\r\nHost: x\r\n")
        .await
        .unwrap();
    // Never finish the head: the server must hang up on its own.
    let mut buf = Vec::new();
    let read = tokio::time::timeout(WAIT, tcp.read_to_end(&mut buf)).await;
    assert!(read.is_ok(), "server kept a half-sent request open");
    bystander_still_receives(&server, &mut by).await;
    server.stop().await;
}

#[tokio::test]
async fn huge_headers_are_refused() {
    let server = TestServer::start().await;
    let mut by = bystander(&server).await;
    let mut tcp = tokio::net::TcpStream::connect(server.addr).await.unwrap();
    let junk = "x".repeat(64 * 1024);
    let req = format!("GET /ws HTTP/1.1\r\nHost: x\r\nX-Junk: {junk}\r\n\r\n");
    let _ = tcp.write_all(req.as_bytes()).await;
    let mut buf = Vec::new();
    let _ = tokio::time::timeout(WAIT, tcp.read_to_end(&mut buf))
        .await
        .expect("server hung up");
    let head = String::from_utf8_lossy(&buf);
    assert!(
        head.is_empty() || head.starts_with("HTTP/1.1 431"),
        "{head}"
    );
    bystander_still_receives(&server, &mut by).await;
    server.stop().await;
}

#[tokio::test]
async fn silent_peers_are_closed_with_4001() {
    let server = TestServer::with(|c| {
        c.websocket.ping_interval = Duration::from_millis(100);
        c.websocket.ping_timeout = Duration::from_millis(100);
    })
    .await;
    let mut by = bystander(&server).await;
    // A raw TCP peer that completes the handshake and then never answers pings.
    let mut tcp = tokio::net::TcpStream::connect(server.addr).await.unwrap();
    tcp.write_all(
        b"GET /ws HTTP/1.1\r\nHost: x\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\
          Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n",
    )
    .await
    .unwrap();
    let mut buf = vec![0u8; 4096];
    let mut seen = Vec::new();
    // Read raw frames until the close frame (opcode 0x8) arrives.
    let found = tokio::time::timeout(WAIT, async {
        loop {
            let n = tcp.read(&mut buf).await.unwrap();
            assert!(n > 0, "closed without a close frame");
            seen.extend_from_slice(&buf[..n]);
            if let Some(pos) = seen.windows(2).position(|w| w[0] == 0x88) {
                let payload = &seen[pos + 2..];
                if payload.len() >= 2 {
                    return u16::from_be_bytes([payload[0], payload[1]]);
                }
            }
        }
    })
    .await
    .expect("closed for silence");
    assert_eq!(found, 4001);
    assert!(server.metric("wsgate_ping_timeouts_total").await >= 1.0);
    // The bystander's client answers pings: it is still connected.
    bystander_still_receives(&server, &mut by).await;
    server.stop().await;
}

#[tokio::test]
async fn unmasked_client_frames_are_a_protocol_error() {
    let server = TestServer::start().await;
    let mut by = bystander(&server).await;
    let mut tcp = tokio::net::TcpStream::connect(server.addr).await.unwrap();
    tcp.write_all(
        b"GET /ws HTTP/1.1\r\nHost: x\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\
          Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n",
    )
    .await
    .unwrap();
    // Wait for the 101 response head.
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        tcp.read_exact(&mut byte).await.unwrap();
        head.push(byte[0]);
    }
    assert!(head.starts_with(b"HTTP/1.1 101"));
    // An unmasked text frame "ping".
    tcp.write_all(&[0x81, 0x04, b'p', b'i', b'n', b'g'])
        .await
        .unwrap();
    let mut rest = Vec::new();
    let _ = tokio::time::timeout(WAIT, tcp.read_to_end(&mut rest))
        .await
        .expect("server closes");
    if let Some(pos) = rest.windows(1).position(|w| w[0] == 0x88) {
        let code = u16::from_be_bytes([rest[pos + 2], rest[pos + 3]]);
        assert_eq!(code, 1002);
    }
    bystander_still_receives(&server, &mut by).await;
    server.stop().await;
}

#[tokio::test]
async fn a_request_flood_without_reading_is_bounded() {
    let server = TestServer::with(|c| {
        c.outbound.max_messages = 128;
        c.outbound.write_timeout = Duration::from_secs(2);
    })
    .await;
    let mut by = bystander(&server).await;
    let mut ws = server.raw().await;
    // Pipelined self.reply calls with large params, never reading the answers.
    let params = json!({"pad": "p".repeat(16_000)}).to_string();
    let req = format!(r#"{{"jsonrpc":"2.0","id":1,"method":"self.reply","params":{params}}}"#);
    let flood = async {
        for _ in 0..5000 {
            if ws.send(Message::text(req.clone())).await.is_err() {
                break;
            }
        }
    };
    // The server stops reading requests while their responses cannot be
    // written (TCP backpressure on the flooder), then closes the stalled
    // connection after the write timeout (4002). Its queue never overflows.
    let _ = tokio::time::timeout(Duration::from_secs(60), flood).await;
    server.wait_metric("wsgate_connections", |v| v == 1.0).await;
    assert_eq!(
        server
            .metric("wsgate_slow_consumer_disconnects_total")
            .await,
        0.0
    );
    bystander_still_receives(&server, &mut by).await;
    server.stop().await;
}
