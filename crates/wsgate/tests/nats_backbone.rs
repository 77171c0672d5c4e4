//! The NATS core backbone with real processes: one `nats-server` per test
//! (free ports, so tests run in parallel) and several in-process gateways on
//! 127.0.0.1:0 joined through it.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;
#[path = "common/nats.rs"]
mod nats;

use std::sync::Arc;
use std::time::Duration;

use common::*;
use futures_util::{SinkExt, StreamExt};
use nats::NatsServer;
use serde_json::{Value, json};
use tokio_tungstenite::tungstenite::Message;
use wsgate::broker::{BrokerConfig, NatsBroker, NatsConfig};
use wsgate::error::code;
use wsgate::{Config, Gateway};

/// Backbone options for a test node: its connection is named `name`, and it
/// reconnects quickly.
fn nats_config(server: &NatsServer, name: &str) -> NatsConfig {
    NatsConfig {
        url: server.url(),
        name: name.to_string(),
        reconnect_delay_min: Duration::from_millis(20),
        reconnect_delay_max: Duration::from_millis(200),
        ..NatsConfig::default()
    }
}

async fn node(server: &NatsServer, name: &str) -> TestServer {
    let c = nats_config(server, name);
    let n = TestServer::with(move |cfg| cfg.broker = BrokerConfig::Nats(c)).await;
    wait_ready(&n, true).await;
    n
}

async fn readyz(n: &TestServer) -> u16 {
    reqwest::get(n.http("/readyz"))
        .await
        .unwrap()
        .status()
        .as_u16()
}

/// Polls `/readyz` until it says ready (200) or not (503).
async fn wait_ready(n: &TestServer, ready: bool) {
    let want = if ready { 200 } else { 503 };
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let got = readyz(n).await;
        if got == want {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "/readyz stuck at {got}, expected {want}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

async fn post(n: &TestServer, path: &str, body: &str) -> (u16, Value) {
    let resp = reqwest::Client::new()
        .post(n.http(path))
        .header("content-type", "application/json")
        .body(body.to_string())
        .send()
        .await
        .unwrap();
    let status = resp.status().as_u16();
    (status, resp.json().await.unwrap())
}

fn rpc_code(e: wsgate_client::ClientError) -> i64 {
    match e {
        wsgate_client::ClientError::Rpc { code, .. } => code,
        other => panic!("expected a JSON-RPC error, got {other}"),
    }
}

#[tokio::test]
async fn three_nodes_fan_out_wildcards_broadcast_and_http() {
    let nats = NatsServer::start();
    let a = node(&nats, "node-a").await;
    let b = node(&nats, "node-b").await;
    let c = node(&nats, "node-c").await;

    let mut on_a = a.client().await;
    let mut on_b = b.client().await;
    let mut on_c = c.client().await;
    on_a.subscribe(&["chat.>"]).await.unwrap();
    on_b.subscribe(&["chat.room1"]).await.unwrap();
    on_c.subscribe(&["chat.*"]).await.unwrap();

    // WebSocket publish on A: every node's subscriber gets it exactly once.
    let publisher = a.client().await;
    publisher
        .publish("chat.room1", &json!({"text": "hi"}))
        .await
        .unwrap();
    for sub in [&mut on_a, &mut on_b, &mut on_c] {
        let n = next(sub).await;
        assert_eq!(n.method, "message");
        assert_eq!(n.topic(), Some("chat.room1"));
        assert_eq!(n.data(), Some(&json!({"text": "hi"})));
    }

    // HTTP publish on B to a deeper topic: only `chat.>` (on A) matches.
    let (status, _) = post(&b, "/api/publish", r#"{"topic":"chat.x.y","data":1}"#).await;
    assert_eq!(status, 200);
    let n = next(&mut on_a).await;
    assert_eq!((n.topic(), n.data()), (Some("chat.x.y"), Some(&json!(1))));

    // Gateway::publish on C.
    c.gateway.publish("chat.room2", &json!([2])).await.unwrap();
    for sub in [&mut on_a, &mut on_c] {
        let n = next(sub).await;
        assert_eq!(
            (n.topic(), n.data()),
            (Some("chat.room2"), Some(&json!([2])))
        );
    }

    // Broadcast from B reaches every connection on every node, subscribed or not.
    let mut idle_c = c.client().await;
    on_b.broadcast(&json!({"all": true})).await.unwrap();
    for sub in [&mut on_a, &mut on_b, &mut on_c, &mut idle_c] {
        let n = next(sub).await;
        assert_eq!(n.method, "broadcast");
        assert_eq!(n.data(), Some(&json!({"all": true})));
    }

    // Nothing was delivered twice: a marker published last is the next frame
    // everywhere.
    publisher.publish("chat.end", &"end").await.unwrap();
    for sub in [&mut on_a, &mut on_c] {
        assert_eq!(next(sub).await.topic(), Some("chat.end"));
    }
    on_b.subscribe(&["chat.end2"]).await.unwrap();
    publisher.publish("chat.end2", &"end").await.unwrap();
    assert_eq!(next(&mut on_b).await.topic(), Some("chat.end2"));

    for n in [a, b, c] {
        n.stop().await;
    }
}

/// A node built on a [`NatsBroker`] we keep a handle on (for its counters).
struct Node {
    addr: std::net::SocketAddr,
    broker: Arc<NatsBroker>,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    task: tokio::task::JoinHandle<std::io::Result<()>>,
}

impl Node {
    async fn start(config: NatsConfig) -> Node {
        let broker = Arc::new(NatsBroker::new(&config).unwrap());
        let gateway = Gateway::with_broker(Config::default(), broker.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let g = gateway.clone();
        let task = tokio::spawn(async move {
            g.serve(listener, async {
                let _ = stopped.await;
            })
            .await
        });
        Node {
            addr,
            broker,
            stop: Some(stop),
            task,
        }
    }

    fn ws_url(&self) -> String {
        format!("ws://{}/ws", self.addr)
    }

    async fn raw(&self) -> Ws {
        tokio_tungstenite::connect_async(self.ws_url())
            .await
            .unwrap()
            .0
    }

    async fn wait_ready(&self) {
        let deadline = tokio::time::Instant::now() + WAIT;
        while !wsgate::Broker::is_ready(&*self.broker) {
            assert!(tokio::time::Instant::now() < deadline, "never ready");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    async fn stop(mut self) {
        if let Some(s) = self.stop.take() {
            let _ = s.send(());
        }
        tokio::time::timeout(WAIT, &mut self.task)
            .await
            .unwrap()
            .unwrap()
            .unwrap();
    }
}

#[tokio::test]
async fn plain_nats_services_publish_and_subscribe() {
    let nats = NatsServer::start();
    let node = Node::start(nats_config(&nats, "node-a")).await;
    node.wait_ready().await;
    let mut ws = node.raw().await;
    let r = rpc(
        &mut ws,
        r#"{"jsonrpc":"2.0","id":1,"method":"subscribe","params":{"topics":["svc.*"]}}"#,
    )
    .await;
    assert_eq!(r["result"]["subscribed"], json!(["svc.*"]), "{r}");

    // A plain NATS service (any NATS client) publishes under the prefix.
    let service = async_nats::connect(nats.url()).await.unwrap();
    let send = |subject: &'static str, payload: &'static [u8]| {
        let service = service.clone();
        async move {
            service
                .publish(subject, bytes::Bytes::from_static(payload))
                .await
                .unwrap();
            service.flush().await.unwrap();
        }
    };

    // JSON passes through byte for byte (no re-encoding).
    let raw = r#"{"b": [1, 2.50],  "a":"x"}"#;
    send("wsgate.svc.json", raw.as_bytes()).await;
    assert_eq!(
        next_text(&mut ws).await,
        format!(
            r#"{{"jsonrpc":"2.0","method":"message","params":{{"topic":"svc.json","data":{raw}}}}}"#
        )
    );
    // UTF-8 that is not JSON arrives as a JSON string.
    send("wsgate.svc.text", b"hello \"world\"").await;
    let v: Value = serde_json::from_str(&next_text(&mut ws).await).unwrap();
    assert_eq!(v["params"]["topic"], "svc.text");
    assert_eq!(v["params"]["data"], json!("hello \"world\""));
    // Not UTF-8: dropped and counted; the next message still arrives.
    send("wsgate.svc.bin", &[0xff, 0x00, 0xfe]).await;
    send("wsgate.svc.after", b"{\"ok\":1}").await;
    let v: Value = serde_json::from_str(&next_text(&mut ws).await).unwrap();
    assert_eq!(v["params"]["topic"], "svc.after");
    let stats = node.broker.stats();
    assert_eq!(stats.dropped_not_utf8, 1, "{stats:?}");
    assert_eq!(stats.wrapped_as_string, 1, "{stats:?}");
    // The raw-protocol publisher of the harness is a plain service too.
    nats.publish("wsgate.svc.raw", b"[1,2,3]");
    let v: Value = serde_json::from_str(&next_text(&mut ws).await).unwrap();
    assert_eq!(v["params"]["data"], json!([1, 2, 3]));

    // A plain NATS subscriber sees WebSocket publications and broadcasts as
    // the raw JSON the client sent.
    let mut sub = service.subscribe("wsgate.orders.>").await.unwrap();
    let mut bsub = service.subscribe("wsgate-broadcast").await.unwrap();
    service.flush().await.unwrap();
    // (flush only means "written": wait until the server lists both.)
    assert!(
        nats.wait_until(|subs| subs.iter().any(|s| s == "wsgate.orders.>")
            && subs.iter().filter(|s| *s == "wsgate-broadcast").count() == 2)
            .await
    );
    let r = rpc(
        &mut ws,
        r#"{"jsonrpc":"2.0","id":2,"method":"publish","params":{"topic":"orders.eu","data":{"id": 7}}}"#,
    )
    .await;
    assert!(r.get("result").is_some(), "{r}");
    let m = tokio::time::timeout(WAIT, sub.next())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(m.subject.as_str(), "wsgate.orders.eu");
    assert_eq!(&m.payload[..], br#"{"id": 7}"#);
    send_text(
        &mut ws,
        r#"{"jsonrpc":"2.0","id":3,"method":"broadcast","params":{"data":"all"}}"#,
    )
    .await;
    let m = tokio::time::timeout(WAIT, bsub.next())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(&m.payload[..], br#""all""#);
    // The node's own connection gets the response and the broadcast.
    let mut frames: Vec<Value> = Vec::new();
    for _ in 0..2 {
        frames.push(serde_json::from_str(&next_text(&mut ws).await).unwrap());
    }
    assert!(
        frames
            .iter()
            .any(|f| f["id"] == 3 && f.get("result").is_some()),
        "{frames:?}"
    );
    assert!(
        frames
            .iter()
            .any(|f| f["method"] == "broadcast" && f["params"]["data"] == "all"),
        "{frames:?}"
    );

    node.stop().await;
}

async fn send_text(ws: &mut Ws, text: &str) {
    ws.send(Message::text(text.to_string())).await.unwrap();
}

/// The next text frame, as text.
async fn next_text(ws: &mut Ws) -> String {
    loop {
        let msg = tokio::time::timeout(WAIT, ws.next())
            .await
            .expect("timed out waiting for a frame")
            .expect("stream ended")
            .expect("websocket error");
        match msg {
            Message::Text(t) => return t.as_str().to_string(),
            Message::Ping(_) | Message::Pong(_) => continue,
            other => panic!("expected a text frame, got {other:?}"),
        }
    }
}

#[tokio::test]
async fn per_topic_order_across_nodes_and_overlapping_patterns_deliver_once() {
    const N: usize = 2000;
    let nats = NatsServer::start();
    let a = node(&nats, "node-a").await;
    let b = node(&nats, "node-b").await;

    let mut exact_b = b.client().await;
    exact_b.subscribe(&["ord.t"]).await.unwrap();
    // One connection holding three overlapping patterns; node B then holds
    // three NATS subscriptions that all match `ord.t`.
    let mut overlap_b = b.client().await;
    overlap_b.subscribe(&["ord.>"]).await.unwrap();
    overlap_b.subscribe(&["ord.*", "ord.t"]).await.unwrap();
    let mut exact_a = a.client().await;
    exact_a.subscribe(&["ord.t"]).await.unwrap();

    // Two publishers, one per node, each pipelining N/2 publishes without
    // waiting for responses.
    let pipeline = |url: String, p: usize| async move {
        let (ws, _) = tokio_tungstenite::connect_async(url).await.unwrap();
        let (mut tx, mut rx) = ws.split();
        let reader = tokio::spawn(async move {
            let mut ok = 0;
            while ok < N / 2 {
                match tokio::time::timeout(WAIT, rx.next()).await.unwrap() {
                    Some(Ok(Message::Text(t))) => {
                        let v: Value = serde_json::from_str(t.as_str()).unwrap();
                        assert!(v.get("result").is_some(), "publish failed: {v}");
                        ok += 1;
                    }
                    Some(Ok(_)) => {}
                    other => panic!("publisher connection ended: {other:?}"),
                }
            }
        });
        for i in 0..N / 2 {
            let frame = format!(
                r#"{{"jsonrpc":"2.0","id":{i},"method":"publish","params":{{"topic":"ord.t","data":{{"p":{p},"i":{i}}}}}}}"#
            );
            tx.feed(Message::text(frame)).await.unwrap();
        }
        tx.flush().await.unwrap();
        reader.await.unwrap();
    };
    let (ra, rb) = tokio::join!(
        tokio::spawn(pipeline(a.ws_url(), 0)),
        tokio::spawn(pipeline(b.ws_url(), 1))
    );
    ra.unwrap();
    rb.unwrap();

    for sub in [&mut exact_b, &mut overlap_b, &mut exact_a] {
        let mut seen = [0usize; 2];
        for _ in 0..N {
            let n = next(sub).await;
            let d = n.data().unwrap();
            let (p, i) = (
                d["p"].as_u64().unwrap() as usize,
                d["i"].as_u64().unwrap() as usize,
            );
            assert_eq!(i, seen[p], "publisher {p}: out of order or duplicated");
            seen[p] += 1;
        }
        assert_eq!(seen, [N / 2, N / 2]);
    }
    // No extra copies: a marker is the next frame for everyone.
    a.gateway.publish("ord.t", &"end").await.unwrap();
    for sub in [&mut exact_b, &mut overlap_b, &mut exact_a] {
        assert_eq!(next(sub).await.data(), Some(&json!("end")));
    }
    a.stop().await;
    b.stop().await;
}

#[tokio::test]
async fn one_nats_subscription_per_pattern_in_use() {
    let nats = NatsServer::start();
    let a = node(&nats, "rc-a").await;
    let prefix = "wsgate.rc";
    let mut c1 = a.client().await;
    let c2 = a.client().await;
    c1.subscribe(&["rc.t", "rc.*"]).await.unwrap();
    c2.subscribe(&["rc.t"]).await.unwrap();
    nats.wait_subscriptions(Some("rc-a"), prefix, &["wsgate.rc.*", "wsgate.rc.t"])
        .await;
    // Besides the patterns, a node holds exactly two: its broadcast
    // subject and its private echo inbox.
    let all = nats.subscriptions(Some("rc-a"));
    assert_eq!(all.len(), 4, "{all:?}");
    assert!(all.contains(&"wsgate-broadcast".to_string()), "{all:?}");

    // One of two local subscribers leaves: the NATS subscription stays.
    c1.unsubscribe(&["rc.t"]).await.unwrap();
    a.gateway.publish("rc.t", &1).await.unwrap();
    assert_eq!(next(&mut c1).await.data(), Some(&json!(1)), "via rc.*");
    nats.wait_subscriptions(Some("rc-a"), prefix, &["wsgate.rc.*", "wsgate.rc.t"])
        .await;
    // The last one disconnects: it goes.
    c2.close().await;
    nats.wait_subscriptions(Some("rc-a"), prefix, &["wsgate.rc.*"])
        .await;
    // Unsubscribing the last pattern removes it too.
    c1.unsubscribe(&["rc.*"]).await.unwrap();
    nats.wait_subscriptions(Some("rc-a"), prefix, &[]).await;
    // Subscribing again works (a fresh NATS subscription).
    c1.subscribe(&["rc.t"]).await.unwrap();
    nats.wait_subscriptions(Some("rc-a"), prefix, &["wsgate.rc.t"])
        .await;
    a.gateway.publish("rc.t", &2).await.unwrap();
    assert_eq!(next(&mut c1).await.data(), Some(&json!(2)));

    // A stopped node closes its NATS connection.
    a.stop().await;
    let ok = nats
        .wait_until(|_| nats.subscriptions(Some("rc-a")).is_empty())
        .await;
    assert!(ok, "the node's NATS connection outlived it");
}

#[tokio::test]
async fn nats_restart_mid_test_nodes_recover() {
    let mut nats = NatsServer::start();
    let a = node(&nats, "node-a").await;
    let b = node(&nats, "node-b").await;
    let mut on_b = b.client().await;
    on_b.subscribe(&["r.t"]).await.unwrap();
    let mut on_a = a.client().await;
    on_a.subscribe(&["r.*"]).await.unwrap();
    let publisher = a.client().await;
    publisher.publish("r.t", &0).await.unwrap();
    assert_eq!(next(&mut on_b).await.data(), Some(&json!(0)));
    assert_eq!(next(&mut on_a).await.data(), Some(&json!(0)));

    nats.stop();
    wait_ready(&a, false).await;
    wait_ready(&b, false).await;
    // While NATS is down: clear errors, connections stay open.
    let e = publisher.publish("r.t", &"lost").await.unwrap_err();
    assert_eq!(rpc_code(e), code::BACKBONE_UNAVAILABLE as i64);
    let e = on_a.subscribe(&["r.new"]).await.unwrap_err();
    assert_eq!(rpc_code(e), code::BACKBONE_UNAVAILABLE as i64);
    let (status, body) = post(&b, "/api/publish", r#"{"topic":"r.t","data":1}"#).await;
    assert_eq!(status, 503, "{body}");
    assert_eq!(body["error"]["code"], json!(code::BACKBONE_UNAVAILABLE));

    nats.resume();
    wait_ready(&a, true).await;
    wait_ready(&b, true).await;
    // Subscriptions were restored on the new server.
    let subs = nats.subscriptions_under(None, "wsgate.r");
    assert_eq!(subs, vec!["wsgate.r.*", "wsgate.r.t"]);
    // Clients connected before the restart get what is published after it,
    // from either node and from plain NATS.
    publisher.publish("r.t", &2).await.unwrap();
    assert_eq!(next(&mut on_b).await.data(), Some(&json!(2)));
    assert_eq!(next(&mut on_a).await.data(), Some(&json!(2)));
    let (status, _) = post(&b, "/api/publish", r#"{"topic":"r.t","data":3}"#).await;
    assert_eq!(status, 200);
    assert_eq!(next(&mut on_b).await.data(), Some(&json!(3)));
    assert_eq!(next(&mut on_a).await.data(), Some(&json!(3)));
    nats.publish("wsgate.r.t", b"4");
    assert_eq!(next(&mut on_b).await.data(), Some(&json!(4)));
    assert_eq!(next(&mut on_a).await.data(), Some(&json!(4)));
    on_a.subscribe(&["r.new"]).await.unwrap();

    // And again: a second restart is no different.
    nats.restart();
    wait_ready(&a, true).await;
    wait_ready(&b, true).await;
    publisher.publish("r.new", &5).await.unwrap();
    assert_eq!(next(&mut on_a).await.data(), Some(&json!(5)));
    a.stop().await;
    b.stop().await;
}

#[tokio::test]
async fn node_started_while_nats_is_down_becomes_ready_when_it_comes_up() {
    let mut nats = NatsServer::reserve();
    let c = nats_config(&nats, "late");
    let a = TestServer::with(move |cfg| cfg.broker = BrokerConfig::Nats(c)).await;
    assert_eq!(readyz(&a).await, 503);
    assert_eq!(a.gateway.broker_name(), "nats");
    // The node serves WebSocket clients, but cannot subscribe or publish yet.
    let mut client = a.client().await;
    let e = client.subscribe(&["late.t"]).await.unwrap_err();
    assert_eq!(rpc_code(e), code::BACKBONE_UNAVAILABLE as i64);
    let e = client.publish("late.t", &1).await.unwrap_err();
    assert_eq!(rpc_code(e), code::BACKBONE_UNAVAILABLE as i64);
    assert_eq!(readyz(&a).await, 503);

    nats.resume();
    wait_ready(&a, true).await;
    client.subscribe(&["late.t"]).await.unwrap();
    client.publish("late.t", &2).await.unwrap();
    assert_eq!(next(&mut client).await.data(), Some(&json!(2)));
    a.stop().await;
}
