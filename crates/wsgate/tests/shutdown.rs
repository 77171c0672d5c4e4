//! Graceful shutdown: queued messages are flushed, then every client gets 1001.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::*;
use futures_util::StreamExt;
use serde_json::json;
use tokio_tungstenite::tungstenite::Message;

#[tokio::test]
async fn shutdown_flushes_queued_messages_then_closes_1001() {
    let mut server = TestServer::start().await;
    // Subscribers that are not reading while the messages are published and
    // the shutdown begins, so the messages sit in server queues and socket
    // buffers when the node stops.
    let mut subs = Vec::new();
    for _ in 0..3 {
        let mut ws = server.raw().await;
        rpc(
            &mut ws,
            r#"{"jsonrpc":"2.0","id":1,"method":"subscribe","params":{"topic":"final"}}"#,
        )
        .await;
        subs.push(ws);
    }
    const N: u64 = 3000;
    let pad = "q".repeat(200);
    for i in 0..N {
        server
            .gateway
            .publish("final", &json!({"i": i, "pad": pad}))
            .await
            .unwrap();
    }
    server.trigger_stop();
    for ws in &mut subs {
        let mut expected = 0;
        loop {
            let msg = tokio::time::timeout(WAIT, ws.next())
                .await
                .expect("frames keep coming until the close")
                .expect("stream open until the close frame")
                .expect("no error before the close frame");
            match msg {
                Message::Text(t) => {
                    let v: serde_json::Value = serde_json::from_str(t.as_str()).unwrap();
                    assert_eq!(v["params"]["data"]["i"], expected, "in order, none missing");
                    expected += 1;
                }
                Message::Close(Some(f)) => {
                    assert_eq!(u16::from(f.code), 1001);
                    break;
                }
                Message::Ping(_) | Message::Pong(_) => {}
                other => panic!("unexpected {other:?}"),
            }
        }
        assert_eq!(
            expected, N,
            "every queued message arrived before the close frame"
        );
    }
    server.stop().await;
}

#[tokio::test]
async fn after_shutdown_new_connections_are_refused() {
    let server = TestServer::start().await;
    let c = server.client().await;
    let gateway = server.gateway.clone();
    let url = server.ws_url();
    let stopping = tokio::spawn(async move { gateway.shutdown().await });
    assert_eq!(c.closed_by_server().await.map(|c| c.code), Some(1001));
    assert!(
        stopping.await.unwrap(),
        "all sessions ended within the grace period"
    );
    // The listener may still accept in this in-process setup, but upgrades are refused.
    if let Err(tokio_tungstenite::tungstenite::Error::Http(resp)) =
        tokio_tungstenite::connect_async(&url).await
    {
        assert_eq!(resp.status(), 503);
    }
    server.stop().await;
}

#[tokio::test]
async fn grace_period_bounds_shutdown_with_a_stuck_client() {
    let mut server = TestServer::with(|c| {
        c.shutdown.grace = std::time::Duration::from_millis(1500);
        c.outbound.write_timeout = std::time::Duration::from_secs(60);
    })
    .await;
    // A client that never reads, with far more queued than the socket takes.
    let mut stuck = server.raw().await;
    rpc(
        &mut stuck,
        r#"{"jsonrpc":"2.0","id":1,"method":"subscribe","params":{"topic":"s"}}"#,
    )
    .await;
    let blob = "z".repeat(16_000);
    for i in 0..1000 {
        server
            .gateway
            .publish("s", &json!({"i": i, "b": blob}))
            .await
            .unwrap();
    }
    let started = std::time::Instant::now();
    server.trigger_stop();
    server.stop().await;
    assert!(
        started.elapsed() < std::time::Duration::from_secs(10),
        "shutdown took {:?}",
        started.elapsed()
    );
    drop(stuck);
}
