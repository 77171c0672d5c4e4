//! Several real `wsgate serve` processes joined by one real `nats-server`
//! (`[broker] kind = "nats"` through the environment).
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;
#[path = "../../wsgate/tests/common/nats.rs"]
mod nats;

use nats::NatsServer;
use serde_json::json;
use tokio_tungstenite::tungstenite::Message;
use wsgate_client::{Client, Notification};

use common::{Server as Node, WAIT};

/// Starts `wsgate serve` on a free port with the NATS backbone; returns once
/// it logged its address (not necessarily ready).
fn start(nats: &NatsServer, name: &str) -> Node {
    let url = nats.url();
    common::serve(
        &[
            ("WSGATE_BROKER__KIND", "nats"),
            ("WSGATE_BROKER__URL", url.as_str()),
            ("WSGATE_BROKER__NAME", name),
            ("WSGATE_BROKER__RECONNECT_DELAY_MIN", "20ms"),
            ("WSGATE_BROKER__RECONNECT_DELAY_MAX", "200ms"),
        ],
        &["--listen", "127.0.0.1:0"],
    )
}

async fn next(c: &mut Client) -> Notification {
    tokio::time::timeout(WAIT, c.next_notification())
        .await
        .expect("timed out waiting for a notification")
        .expect("connection closed")
}

#[tokio::test]
async fn three_processes_behave_as_one() {
    let nats = NatsServer::start();
    let nodes = [
        start(&nats, "proc-a"),
        start(&nats, "proc-b"),
        start(&nats, "proc-c"),
    ];
    for n in &nodes {
        n.wait_ready(true).await;
    }
    let [a, b, c] = &nodes;
    let mut subs = Vec::new();
    for (n, pattern) in [(a, "room.1"), (b, "room.*"), (c, "room.>")] {
        let s = n.client().await;
        s.subscribe(&[pattern]).await.unwrap();
        subs.push(s);
    }
    // One NATS subscription per pattern per node.
    nats.wait_subscriptions(
        None,
        "wsgate.room",
        &["wsgate.room.1", "wsgate.room.*", "wsgate.room.>"],
    )
    .await;

    // WebSocket publish on A, HTTP publish on B, a plain NATS publish: every
    // node's subscriber gets each once.
    let publisher = a.client().await;
    publisher.publish("room.1", &json!({"n": 1})).await.unwrap();
    assert_eq!(
        b.post("/api/publish", r#"{"topic":"room.1","data":{"n":2}}"#)
            .await,
        200
    );
    nats.publish("wsgate.room.1", br#"{"n":3}"#);
    for s in subs.iter_mut() {
        for i in 1..=3 {
            let n = next(s).await;
            assert_eq!(n.topic(), Some("room.1"));
            assert_eq!(n.data(), Some(&json!({"n": i})));
        }
    }

    // Broadcast from C reaches every connection, including unsubscribed ones.
    let mut idle = b.client().await;
    subs[2].broadcast(&"hello all").await.unwrap();
    for s in subs.iter_mut().chain(std::iter::once(&mut idle)) {
        let n = next(s).await;
        assert_eq!(n.method, "broadcast");
        assert_eq!(n.data(), Some(&json!("hello all")));
    }

    // 2,000 pipelined publishes on A (sent without waiting for responses)
    // arrive in order on B and C.
    const N: usize = 2000;
    for i in 0..N {
        publisher
            .send_raw(Message::text(format!(
                r#"{{"jsonrpc":"2.0","id":{},"method":"publish","params":{{"topic":"room.seq","data":{i}}}}}"#,
                1_000_000 + i
            )))
            .await
            .unwrap();
    }
    // Responses come in request order: after this one, every publish was accepted.
    publisher.ping().await.unwrap();
    for s in &mut subs[1..] {
        for i in 0..N {
            assert_eq!(next(s).await.data(), Some(&json!(i)));
        }
    }
}

#[tokio::test]
async fn processes_start_before_nats_and_survive_its_restart() {
    let mut nats = NatsServer::reserve();
    let a = start(&nats, "early-a");
    // Serving, but not ready: NATS is down.
    assert_eq!(a.readyz().await, 503);
    let mut early = a.client().await;
    assert!(early.subscribe(&["x.t"]).await.is_err());

    nats.resume();
    a.wait_ready(true).await;
    let b = start(&nats, "early-b");
    b.wait_ready(true).await;
    early.subscribe(&["x.t"]).await.unwrap();
    let mut on_b = b.client().await;
    on_b.subscribe(&["x.*"]).await.unwrap();

    nats.stop();
    a.wait_ready(false).await;
    b.wait_ready(false).await;
    assert_eq!(
        b.post("/api/publish", r#"{"topic":"x.t","data":0}"#).await,
        503
    );
    nats.resume();
    a.wait_ready(true).await;
    b.wait_ready(true).await;

    // Clients connected before the restart get what is published after it.
    assert_eq!(
        b.post("/api/publish", r#"{"topic":"x.t","data":1}"#).await,
        200
    );
    assert_eq!(next(&mut early).await.data(), Some(&json!(1)));
    assert_eq!(next(&mut on_b).await.data(), Some(&json!(1)));
}
