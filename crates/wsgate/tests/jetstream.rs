//! The JetStream backbone with a real `nats-server -js` per test: offsets,
//! recovery with `since`, `history`, several nodes on one stream.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;
#[path = "common/nats.rs"]
mod nats;

use std::time::Duration;

use common::*;
use nats::NatsServer;
use serde_json::{Value, json};
use wsgate::broker::{BrokerConfig, JetStreamConfig, NatsConfig};

fn js_config(server: &NatsServer, name: &str) -> JetStreamConfig {
    JetStreamConfig {
        nats: NatsConfig {
            url: server.url(),
            name: name.to_string(),
            reconnect_delay_min: Duration::from_millis(20),
            reconnect_delay_max: Duration::from_millis(200),
            ..NatsConfig::default()
        },
        ..JetStreamConfig::default()
    }
}

async fn node_with(c: JetStreamConfig) -> TestServer {
    let n = TestServer::with(move |cfg| cfg.broker = BrokerConfig::Jetstream(c)).await;
    // Polls /readyz until the stream is set up.
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let status = reqwest::get(n.http("/readyz")).await.unwrap().status();
        if status == 200 {
            return n;
        }
        assert!(tokio::time::Instant::now() < deadline, "node not ready");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

async fn node(server: &NatsServer, name: &str) -> TestServer {
    node_with(js_config(server, name)).await
}

/// Publishes `{"n": n}` through the node; returns (offset, epoch).
async fn publish(n: &TestServer, topic: &str, i: u64) -> (u64, String) {
    let ack = n.gateway.publish(topic, &json!({ "n": i })).await.unwrap();
    let p = ack.position.expect("a JetStream publish has a position");
    (p.offset, p.epoch.to_string())
}

fn offset(n: &wsgate_client::Notification) -> u64 {
    n.params["offset"].as_u64().expect("offset")
}

fn number(n: &wsgate_client::Notification) -> u64 {
    n.params["data"]["n"].as_u64().expect("data.n")
}

async fn subscribe_since(
    c: &wsgate_client::Client,
    topic: &str,
    offset: u64,
    epoch: &str,
) -> Value {
    c.call(
        "subscribe",
        json!({"topic": topic, "since": {"offset": offset, "epoch": epoch}}),
    )
    .await
    .unwrap()
}

#[tokio::test]
async fn offsets_increase_and_appear_in_notifications() {
    let nats = NatsServer::start();
    let a = node(&nats, "a").await;
    let mut sub = a.client().await;
    sub.subscribe(&["room.a", "room.*"]).await.unwrap();
    let mut acked = Vec::new();
    for i in 1..=5 {
        acked.push(publish(&a, "room.a", i).await);
    }
    let epoch = acked[0].1.clone();
    assert!(!epoch.is_empty());
    assert!(acked.windows(2).all(|w| w[0].0 < w[1].0), "{acked:?}");
    for (i, (off, ep)) in acked.iter().enumerate() {
        let n = next(&mut sub).await;
        assert_eq!(n.topic(), Some("room.a"));
        assert_eq!(number(&n), i as u64 + 1, "once each, in order");
        assert_eq!(offset(&n), *off);
        assert_eq!(n.params["epoch"], json!(ep));
    }
    // Broadcasts are not stored and carry no offset.
    let mut all = a.client().await;
    all.broadcast(&json!("hi")).await.unwrap();
    let b = next(&mut all).await;
    assert_eq!(b.method, "broadcast");
    assert!(b.params.get("offset").is_none());
}

#[tokio::test]
async fn since_recovers_exactly_the_missed_messages_while_publishing_continues() {
    let nats = NatsServer::start();
    let a = node(&nats, "a").await;
    let topic = "doc.1";
    // Other topics interleave in the stream's sequence.
    let mut first = a.client().await;
    first.subscribe(&[topic]).await.unwrap();
    publish(&a, topic, 1).await;
    publish(&a, "doc.other", 0).await;
    publish(&a, topic, 2).await;
    next(&mut first).await;
    let seen = next(&mut first).await;
    assert_eq!(number(&seen), 2);
    let (last_offset, epoch) = (
        offset(&seen),
        seen.params["epoch"].as_str().unwrap().to_string(),
    );
    first.close().await;

    // Missed while disconnected.
    for i in 3..=20 {
        publish(&a, topic, i).await;
        publish(&a, "doc.other", i).await;
    }
    // Publishing continues while the client recovers.
    const LAST: u64 = 300;
    let publisher = {
        let g = a.gateway.clone();
        tokio::spawn(async move {
            for i in 21..=LAST {
                g.publish(topic, &json!({ "n": i })).await.unwrap();
            }
        })
    };
    let mut again = a.client().await;
    let result = subscribe_since(&again, topic, last_offset, &epoch).await;
    assert_eq!(result["recovered"], json!(true), "{result}");
    assert_eq!(result["subscribed"], json!([topic]));
    assert_eq!(result["epoch"], json!(epoch));
    assert!(result["replayed"].as_u64().unwrap() >= 18, "{result}");
    let mut prev = last_offset;
    for want in 3..=LAST {
        let n = next(&mut again).await;
        assert_eq!(number(&n), want, "no gap, no duplicate");
        assert!(offset(&n) > prev);
        prev = offset(&n);
    }
    publisher.await.unwrap();
    // Nothing extra after the last one.
    publish(&a, topic, LAST + 1).await;
    assert_eq!(number(&next(&mut again).await), LAST + 1);
}

#[tokio::test]
async fn trimmed_history_or_another_epoch_is_not_recovered() {
    let nats = NatsServer::start();
    let a = node_with(JetStreamConfig {
        max_messages_per_subject: 3,
        ..js_config(&nats, "a")
    })
    .await;
    let topic = "feed";
    let mut acks = Vec::new();
    for i in 1..=10 {
        acks.push(publish(&a, topic, i).await);
    }
    let epoch = acks[0].1.clone();

    // Message 2 was trimmed (only 8, 9, 10 are kept).
    let mut c = a.client().await;
    let r = subscribe_since(&c, topic, acks[1].0, &epoch).await;
    assert_eq!(r["recovered"], json!(false), "{r}");
    assert_eq!(r["replayed"], json!(0));
    // Live delivery still works after an unrecovered subscribe.
    publish(&a, topic, 11).await;
    assert_eq!(number(&next(&mut c).await), 11);

    // Another epoch (the stream was re-created).
    let c2 = a.client().await;
    let r = subscribe_since(&c2, topic, acks[8].0, "not-the-epoch").await;
    assert_eq!(r["recovered"], json!(false), "{r}");

    // Still stored: recovered, exactly what follows.
    let mut c3 = a.client().await;
    let r = subscribe_since(&c3, topic, acks[8].0, &epoch).await;
    assert_eq!(r["recovered"], json!(true), "{r}");
    assert_eq!(r["replayed"], json!(2));
    assert_eq!(number(&next(&mut c3).await), 10);
    assert_eq!(number(&next(&mut c3).await), 11);

    // `since` needs an exact topic.
    let err = c3
        .call(
            "subscribe",
            json!({"topic": "feed.*", "since": {"offset": 1, "epoch": epoch}}),
        )
        .await;
    assert!(err.is_err());
}

#[tokio::test]
async fn history_returns_the_last_n_messages() {
    let nats = NatsServer::start();
    let a = node(&nats, "a").await;
    let mut offsets = Vec::new();
    for i in 1..=5 {
        offsets.push(publish(&a, "h.t", i).await.0);
        publish(&a, "h.other", 100 + i).await;
    }
    let c = a.client().await;
    let r = c
        .call("history", json!({"topic": "h.t", "limit": 3}))
        .await
        .unwrap();
    let msgs = r["messages"].as_array().unwrap();
    let got: Vec<(u64, u64)> = msgs
        .iter()
        .map(|m| {
            (
                m["offset"].as_u64().unwrap(),
                m["data"]["n"].as_u64().unwrap(),
            )
        })
        .collect();
    assert_eq!(
        got,
        vec![(offsets[2], 3), (offsets[3], 4), (offsets[4], 5)],
        "{r}"
    );
    assert!(r["epoch"].as_str().is_some_and(|e| !e.is_empty()));
    let r = c
        .call("history", json!({"topic": "h.t", "limit": 10}))
        .await
        .unwrap();
    assert_eq!(r["messages"].as_array().unwrap().len(), 5);
    let r = c
        .call("history", json!({"topic": "h.none", "limit": 10}))
        .await
        .unwrap();
    assert_eq!(r["messages"], json!([]));
}

#[tokio::test]
async fn two_nodes_see_the_same_offsets() {
    let nats = NatsServer::start();
    let a = node(&nats, "a").await;
    let b = node(&nats, "b").await;
    let mut on_a = a.client().await;
    let mut on_b = b.client().await;
    on_a.subscribe(&["x.>"]).await.unwrap();
    on_b.subscribe(&["x.y"]).await.unwrap();
    let mut acked = Vec::new();
    for i in 1..=4 {
        let from = if i % 2 == 0 { &a } else { &b };
        acked.push(publish(from, "x.y", i).await);
    }
    assert!(acked.iter().all(|(_, e)| *e == acked[0].1), "one epoch");
    for (off, ep) in &acked {
        let na = next(&mut on_a).await;
        let nb = next(&mut on_b).await;
        assert_eq!((offset(&na), offset(&nb)), (*off, *off));
        assert_eq!(na.params["epoch"], json!(ep));
        assert_eq!(nb.params["epoch"], json!(ep));
    }
    // A client that left node b recovers on node a.
    let c = a.client().await;
    let r = subscribe_since(&c, "x.y", acked[1].0, &acked[1].1).await;
    assert_eq!(r["recovered"], json!(true));
    assert_eq!(r["replayed"], json!(2));
}
