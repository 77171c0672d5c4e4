//! Fan-out: wildcards, ordering, many subscribers, slow consumers.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::time::Duration;

use common::*;
use futures_util::StreamExt;
use serde_json::json;
use tokio_tungstenite::tungstenite::Message;
use wsgate::queue::SlowConsumerPolicy;

#[tokio::test]
async fn wildcard_subscriptions() {
    let server = TestServer::start().await;
    let mut star = server.client().await;
    let mut gt = server.client().await;
    let mut both = server.client().await;
    star.subscribe(&["chat.*"]).await.unwrap();
    gt.subscribe(&["chat.>"]).await.unwrap();
    // Overlapping patterns on one connection deliver once.
    both.subscribe(&["chat.*", "chat.>", "chat.room1"])
        .await
        .unwrap();

    let p = server.client().await;
    p.publish("chat.room1", &1).await.unwrap();
    p.publish("chat.room1.thread", &2).await.unwrap();
    p.publish("other.room1", &3).await.unwrap();
    p.publish("chat.room2", &4).await.unwrap();

    for (client, want) in [
        (&mut star, vec![(1, "chat.room1"), (4, "chat.room2")]),
        (
            &mut gt,
            vec![
                (1, "chat.room1"),
                (2, "chat.room1.thread"),
                (4, "chat.room2"),
            ],
        ),
        (
            &mut both,
            vec![
                (1, "chat.room1"),
                (2, "chat.room1.thread"),
                (4, "chat.room2"),
            ],
        ),
    ] {
        for (data, topic) in want {
            let n = next(client).await;
            assert_eq!(n.topic(), Some(topic));
            assert_eq!(n.data(), Some(&json!(data)));
        }
    }
    // Nothing else is pending: a fresh marker arrives next on every client.
    p.broadcast(&"marker").await.unwrap();
    for c in [&mut star, &mut gt, &mut both] {
        assert_eq!(next(c).await.method, "broadcast");
    }
    server.stop().await;
}

#[tokio::test]
async fn per_topic_order_for_one_publisher() {
    let server = TestServer::start().await;
    let mut subs = Vec::new();
    for _ in 0..5 {
        let c = server.client().await;
        c.subscribe(&["seq.a", "seq.b"]).await.unwrap();
        subs.push(c);
    }
    const N: u64 = 2000;
    // One publisher pipelining its publishes on one socket, in order,
    // without waiting for results.
    let mut p = server.raw().await;
    for i in 0..N {
        let topic = if i % 2 == 0 { "seq.a" } else { "seq.b" };
        send(
            &mut p,
            &format!(r#"{{"jsonrpc":"2.0","id":{i},"method":"publish","params":{{"topic":"{topic}","data":{i}}}}}"#),
        )
        .await;
    }
    for c in &mut subs {
        let (mut last_a, mut last_b) = (None::<u64>, None::<u64>);
        for _ in 0..N {
            let n = next(c).await;
            let v = n.data().and_then(|d| d.as_u64()).unwrap();
            let last = if n.topic() == Some("seq.a") {
                &mut last_a
            } else {
                &mut last_b
            };
            assert_eq!(
                *last,
                if v < 2 { None } else { Some(v - 2) },
                "gap or reorder at {v}"
            );
            *last = Some(v);
        }
    }
    server.stop().await;
}

#[tokio::test]
async fn fan_out_to_1000_subscribers() {
    let server = TestServer::start().await;
    let mut clients = Vec::new();
    for chunk in 0..10 {
        let batch = futures_util::future::join_all((0..100).map(|_| async {
            let mut ws = server.raw().await;
            let r = rpc(
                &mut ws,
                r#"{"jsonrpc":"2.0","id":1,"method":"subscribe","params":{"topic":"fan.out"}}"#,
            )
            .await;
            assert_eq!(r["result"]["subscribed"][0], "fan.out");
            ws
        }))
        .await;
        clients.extend(batch);
        assert_eq!(clients.len(), (chunk + 1) * 100);
    }
    assert_eq!(server.metric("wsgate_connections").await, 1000.0);
    assert_eq!(
        server.metric("wsgate_topics").await,
        1.0,
        "one topic entry for all"
    );

    let p = server.client().await;
    for i in 0..10 {
        p.publish("fan.out", &json!({"i": i})).await.unwrap();
    }
    let counts = futures_util::future::join_all(clients.iter_mut().map(|ws| async move {
        for i in 0..10 {
            let m = recv_json(ws).await;
            assert_eq!(m["params"]["data"]["i"], i);
        }
        10
    }))
    .await;
    assert_eq!(counts.iter().sum::<usize>(), 10_000);
    server
        .wait_metric("wsgate_messages_out_total", |v| v >= 11_000.0)
        .await;
    server.stop().await;
}

/// A subscriber that never reads must not slow down the others; it is cut off.
#[tokio::test]
async fn a_client_that_never_reads_is_disconnected_and_others_are_unaffected() {
    let server = TestServer::with(|c| {
        c.outbound.max_messages = 256;
        c.outbound.max_bytes = 256 * 1024;
        c.outbound.write_timeout = Duration::from_secs(2);
    })
    .await;
    // The stalled client subscribes, then never reads again.
    let mut stalled = server.raw().await;
    rpc(
        &mut stalled,
        r#"{"jsonrpc":"2.0","id":1,"method":"subscribe","params":{"topic":"load"}}"#,
    )
    .await;
    let mut healthy = server.client().await;
    healthy.subscribe(&["load"]).await.unwrap();

    let p = server.client().await;
    let blob = "x".repeat(4000);
    const N: usize = 8000; // ~32 MB: more than the socket buffers can hide
    let publisher = async {
        for i in 0..N {
            p.publish("load", &json!({"i": i, "blob": blob}))
                .await
                .unwrap();
        }
    };
    let reader = async {
        for i in 0..N {
            let n = next(&mut healthy).await;
            assert_eq!(n.data().unwrap()["i"], i);
        }
    };
    tokio::time::timeout(
        Duration::from_secs(120),
        futures_util::future::join(publisher, reader),
    )
    .await
    .expect("publisher and healthy reader finish despite the stalled client");

    // The stalled connection is closed (queue overflow, or write timeout).
    server.wait_metric("wsgate_connections", |v| v == 2.0).await;
    assert!(
        server
            .metric("wsgate_slow_consumer_disconnects_total")
            .await
            >= 1.0
    );
    // What the stalled client finally reads ends with a close frame
    // (4000 slow consumer or 4002 write timeout), or a reset.
    let mut close = None;
    while let Ok(Some(msg)) = tokio::time::timeout(WAIT, stalled.next()).await {
        match msg {
            Ok(Message::Close(Some(f))) => {
                close = Some(u16::from(f.code));
                break;
            }
            Ok(_) => {}
            Err(_) => break,
        }
    }
    if let Some(code) = close {
        assert!(code == 4000 || code == 4002, "close code {code}");
    }
    assert_still_serving(&server).await;
    server.stop().await;
}

#[tokio::test]
async fn drop_oldest_policy_keeps_the_connection_and_counts_drops() {
    let server = TestServer::with(|c| {
        c.outbound.max_messages = 16;
        c.outbound.policy = SlowConsumerPolicy::DropOldest;
        c.outbound.write_timeout = Duration::from_secs(60);
    })
    .await;
    let mut slow = server.raw().await;
    rpc(
        &mut slow,
        r#"{"jsonrpc":"2.0","id":1,"method":"subscribe","params":{"topic":"d"}}"#,
    )
    .await;
    let p = server.client().await;
    let blob = "y".repeat(8000);
    // Publish until drops are counted (the socket buffers fill first).
    let mut sent = 0u64;
    while server.metric("wsgate_deliveries_dropped_total").await == 0.0 {
        for _ in 0..500 {
            p.publish("d", &json!({"i": sent, "blob": blob}))
                .await
                .unwrap();
            sent += 1;
        }
        assert!(sent < 200_000, "no drop counted");
    }
    assert_eq!(
        server
            .metric("wsgate_slow_consumer_disconnects_total")
            .await,
        0.0
    );
    p.publish("d", &json!({"i": "last"})).await.unwrap();
    // The slow client is still connected and eventually sees the newest message,
    // with increasing sequence numbers and a gap.
    let mut last_i: Option<u64> = None;
    let mut gaps = 0;
    loop {
        let m = recv_json(&mut slow).await;
        match m["params"]["data"]["i"].as_u64() {
            Some(i) => {
                if let Some(l) = last_i {
                    assert!(i > l);
                    if i > l + 1 {
                        gaps += 1;
                    }
                }
                last_i = Some(i);
            }
            None => break,
        }
    }
    assert!(gaps >= 1, "some messages were dropped");
    assert_eq!(server.metric("wsgate_connections").await, 2.0);
    server.stop().await;
}

#[tokio::test]
async fn many_topics_many_subscribers_route_correctly() {
    let server = TestServer::start().await;
    let mut clients = Vec::new();
    for i in 0..20 {
        let c = server.client().await;
        c.subscribe(&[&format!("room.{i}")]).await.unwrap();
        clients.push(c);
    }
    let p = server.client().await;
    for i in 0..20 {
        p.publish(&format!("room.{i}"), &i).await.unwrap();
    }
    for (i, c) in clients.iter_mut().enumerate() {
        let n = next(c).await;
        assert_eq!(n.topic(), Some(format!("room.{i}").as_str()));
        assert_eq!(n.data(), Some(&json!(i)));
    }
    server.stop().await;
}
