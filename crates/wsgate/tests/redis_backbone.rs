//! The Redis pub/sub backbone with real processes: one `redis-server` per
//! test (a free port, so tests run in parallel) and several in-process
//! gateways on 127.0.0.1:0 joined through it.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;
#[path = "common/redis.rs"]
mod redis;

use std::sync::Arc;
use std::time::Duration;

use common::*;
use futures_util::{SinkExt, StreamExt};
use redis::RedisServer;
use serde_json::{Value, json};
use tokio_tungstenite::tungstenite::Message;
use wsgate::broker::{BrokerConfig, RedisBroker, RedisConfig};
use wsgate::error::code;
use wsgate::{Config, Gateway};

/// Backbone options for a test node: it reconnects quickly.
fn redis_config(server: &RedisServer) -> RedisConfig {
    RedisConfig {
        url: server.url(),
        reconnect_delay_min: Duration::from_millis(20),
        reconnect_delay_max: Duration::from_millis(200),
        ..RedisConfig::default()
    }
}

async fn node(server: &RedisServer) -> TestServer {
    let c = redis_config(server);
    let n = TestServer::with(move |cfg| cfg.broker = BrokerConfig::Redis(c)).await;
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

/// Runs a blocking harness call off the runtime's threads.
async fn blocking<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> T {
    tokio::task::spawn_blocking(f).await.unwrap()
}

#[tokio::test]
async fn three_nodes_fan_out_wildcards_broadcast_and_http() {
    let redis = RedisServer::start();
    let a = node(&redis).await;
    let b = node(&redis).await;
    let c = node(&redis).await;

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

    // HTTP publish on B to a deeper topic: only `chat.>` (on A) matches;
    // C's glob `wsgate.chat.*` also receives it from Redis and drops it.
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

    // Nothing was delivered twice (nor chat.x.y to `chat.*`): a marker
    // published last is the next frame everywhere.
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

/// A node built on a [`RedisBroker`] we keep a handle on (for its counters).
struct Node {
    addr: std::net::SocketAddr,
    broker: Arc<RedisBroker>,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    task: tokio::task::JoinHandle<std::io::Result<()>>,
}

impl Node {
    async fn start(config: RedisConfig) -> Node {
        let broker = Arc::new(RedisBroker::new(&config).unwrap());
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
async fn plain_redis_clients_publish_and_subscribe() {
    let redis = Arc::new(RedisServer::start());
    let node = Node::start(redis_config(&redis)).await;
    node.wait_ready().await;
    let mut ws = node.raw().await;
    let r = rpc(
        &mut ws,
        r#"{"jsonrpc":"2.0","id":1,"method":"subscribe","params":{"topics":["svc.*"]}}"#,
    )
    .await;
    assert_eq!(r["result"]["subscribed"], json!(["svc.*"]), "{r}");

    // A plain Redis client (redis-cli PUBLISH) publishes under the prefix.
    let publish = |channel: &'static str, payload: &'static [u8]| {
        let redis = redis.clone();
        blocking(move || redis.publish(channel, payload))
    };
    // JSON passes through byte for byte (no re-encoding).
    let raw = r#"{"b": [1, 2.50],  "a":"x"}"#;
    assert_eq!(publish("wsgate.svc.json", raw.as_bytes()).await, 1);
    assert_eq!(
        next_text(&mut ws).await,
        format!(
            r#"{{"jsonrpc":"2.0","method":"message","params":{{"topic":"svc.json","data":{raw}}}}}"#
        )
    );
    // UTF-8 that is not JSON arrives as a JSON string.
    publish("wsgate.svc.text", b"hello \"world\"").await;
    let v: Value = serde_json::from_str(&next_text(&mut ws).await).unwrap();
    assert_eq!(v["params"]["topic"], "svc.text");
    assert_eq!(v["params"]["data"], json!("hello \"world\""));
    // Not UTF-8: dropped and counted. A deeper channel matches the Redis
    // glob `wsgate.svc.*` but not the pattern `svc.*`: dropped too. An
    // invalid topic (empty token) is dropped. The next message still arrives.
    publish("wsgate.svc.bin", &[0xff, 0x00, 0xfe]).await;
    publish("wsgate.svc.deep.er", b"1").await;
    publish("wsgate.svc..x", b"1").await;
    publish("wsgate.svc.after", b"{\"ok\":1}").await;
    let v: Value = serde_json::from_str(&next_text(&mut ws).await).unwrap();
    assert_eq!(v["params"]["topic"], "svc.after");
    let stats = node.broker.stats();
    assert_eq!(stats.dropped_not_utf8, 1, "{stats:?}");
    assert_eq!(stats.wrapped_as_string, 1, "{stats:?}");
    assert_eq!(stats.glob_mismatches, 1, "{stats:?}");
    assert_eq!(stats.dropped_bad_channel, 1, "{stats:?}");

    // A plain Redis subscriber sees WebSocket publications and broadcasts
    // as the raw JSON the client sent (its SUBSCRIBE is confirmed before
    // `subscriber` returns).
    let (r1, r2) = (redis.clone(), redis.clone());
    let mut sub = blocking(move || r1.subscriber(true, "wsgate.orders.*")).await;
    let mut bsub = blocking(move || r2.subscriber(false, "wsgate-broadcast")).await;
    let r = rpc(
        &mut ws,
        r#"{"jsonrpc":"2.0","id":2,"method":"publish","params":{"topic":"orders.eu","data":{"id": 7}}}"#,
    )
    .await;
    assert!(r.get("result").is_some(), "{r}");
    let (m, sub) = blocking(move || (sub.next_message(), sub)).await;
    drop(sub);
    assert_eq!(m.0, "wsgate.orders.eu");
    assert_eq!(m.1, br#"{"id": 7}"#);
    send_text(
        &mut ws,
        r#"{"jsonrpc":"2.0","id":3,"method":"broadcast","params":{"data":"all"}}"#,
    )
    .await;
    let m = blocking(move || bsub.next_message()).await;
    assert_eq!(m, ("wsgate-broadcast".to_string(), br#""all""#.to_vec()));
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

#[tokio::test]
async fn per_topic_order_across_nodes_and_overlapping_patterns_deliver_once() {
    const N: usize = 2000;
    let redis = RedisServer::start();
    let a = node(&redis).await;
    let b = node(&redis).await;

    let mut exact_b = b.client().await;
    exact_b.subscribe(&["ord.t"]).await.unwrap();
    // One connection holding overlapping patterns; node B then holds a
    // channel and a glob (shared by `ord.>` and `ord.*`) that match `ord.t`,
    // plus `>` (glob `wsgate.*`).
    let mut overlap_b = b.client().await;
    overlap_b.subscribe(&["ord.>"]).await.unwrap();
    overlap_b.subscribe(&["ord.*", "ord.t", ">"]).await.unwrap();
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
async fn patterns_sharing_a_glob_share_one_psubscribe() {
    let redis = Arc::new(RedisServer::start());
    let a = node(&redis).await;
    let mut c1 = a.client().await;
    let mut c2 = a.client().await;
    c1.subscribe(&["g.*"]).await.unwrap();
    c2.subscribe(&["g.>"]).await.unwrap();
    assert_eq!(
        redis.numpat(),
        1,
        "g.* and g.> are both the glob wsgate.g.*"
    );
    // g.x.y reaches only g.>; g.x reaches both, once each.
    a.gateway.publish("g.x.y", &1).await.unwrap();
    a.gateway.publish("g.x", &2).await.unwrap();
    assert_eq!(next(&mut c2).await.data(), Some(&json!(1)));
    assert_eq!(next(&mut c2).await.data(), Some(&json!(2)));
    assert_eq!(next(&mut c1).await.data(), Some(&json!(2)));
    // The glob stays while one pattern uses it, and goes with the last.
    c1.unsubscribe(&["g.*"]).await.unwrap();
    assert_eq!(redis.numpat(), 1);
    a.gateway.publish("g.x", &3).await.unwrap();
    assert_eq!(next(&mut c2).await.data(), Some(&json!(3)));
    c2.unsubscribe(&["g.>"]).await.unwrap();
    let r = redis.clone();
    assert!(r.wait_until(|r| r.numpat() == 0).await);
    // A stopped node closes its Redis connections: nobody receives.
    c1.subscribe(&["g.x"]).await.unwrap();
    assert_eq!(redis.publish("wsgate.g.x", b"4"), 1);
    assert_eq!(next(&mut c1).await.data(), Some(&json!(4)));
    a.stop().await;
    assert!(
        redis
            .wait_until(|r| r.publish("wsgate.g.x", b"5") == 0)
            .await
    );
}

#[tokio::test]
async fn redis_restart_mid_test_nodes_recover() {
    let mut redis = RedisServer::start();
    let a = node(&redis).await;
    let b = node(&redis).await;
    let mut on_b = b.client().await;
    on_b.subscribe(&["r.t"]).await.unwrap();
    let mut on_a = a.client().await;
    on_a.subscribe(&["r.*"]).await.unwrap();
    let publisher = a.client().await;
    publisher.publish("r.t", &0).await.unwrap();
    assert_eq!(next(&mut on_b).await.data(), Some(&json!(0)));
    assert_eq!(next(&mut on_a).await.data(), Some(&json!(0)));

    redis.stop();
    wait_ready(&a, false).await;
    wait_ready(&b, false).await;
    // While Redis is down: clear errors, connections stay open.
    let e = publisher.publish("r.t", &"lost").await.unwrap_err();
    assert_eq!(rpc_code(e), code::BACKBONE_UNAVAILABLE as i64);
    let e = on_a.subscribe(&["r.new"]).await.unwrap_err();
    assert_eq!(rpc_code(e), code::BACKBONE_UNAVAILABLE as i64);
    let (status, body) = post(&b, "/api/publish", r#"{"topic":"r.t","data":1}"#).await;
    assert_eq!(status, 503, "{body}");
    assert_eq!(body["error"]["code"], json!(code::BACKBONE_UNAVAILABLE));

    redis.resume();
    wait_ready(&a, true).await;
    wait_ready(&b, true).await;
    // Subscriptions were restored on the new server: one channel (B) and
    // one glob (A).
    assert_eq!(redis.numpat(), 1);
    // Clients connected before the restart get what is published after it,
    // from either node and from plain Redis.
    publisher.publish("r.t", &2).await.unwrap();
    assert_eq!(next(&mut on_b).await.data(), Some(&json!(2)));
    assert_eq!(next(&mut on_a).await.data(), Some(&json!(2)));
    let (status, _) = post(&b, "/api/publish", r#"{"topic":"r.t","data":3}"#).await;
    assert_eq!(status, 200);
    assert_eq!(next(&mut on_b).await.data(), Some(&json!(3)));
    assert_eq!(next(&mut on_a).await.data(), Some(&json!(3)));
    assert_eq!(redis.publish("wsgate.r.t", b"4"), 2, "one per node");
    assert_eq!(next(&mut on_b).await.data(), Some(&json!(4)));
    assert_eq!(next(&mut on_a).await.data(), Some(&json!(4)));
    on_a.subscribe(&["r.new"]).await.unwrap();

    // And again: a second restart is no different.
    // (The nodes may notice and recover before /readyz is polled; the fresh
    // server's own subscription counts show that both resubscribed.)
    redis.restart();
    let ok = redis
        .wait_until(|r| {
            r.numpat() == 1 && r.numsub("wsgate.r.t") == 1 && r.numsub("wsgate.r.new") == 1
        })
        .await;
    assert!(ok, "subscriptions not restored after the second restart");
    wait_ready(&a, true).await;
    wait_ready(&b, true).await;
    publisher.publish("r.new", &5).await.unwrap();
    assert_eq!(next(&mut on_a).await.data(), Some(&json!(5)));
    a.stop().await;
    b.stop().await;
}

#[tokio::test]
async fn node_started_while_redis_is_down_becomes_ready_when_it_comes_up() {
    let mut redis = RedisServer::reserve();
    let c = redis_config(&redis);
    let a = TestServer::with(move |cfg| cfg.broker = BrokerConfig::Redis(c)).await;
    assert_eq!(readyz(&a).await, 503);
    assert_eq!(a.gateway.broker_name(), "redis");
    // The node serves WebSocket clients, but cannot subscribe or publish yet.
    let mut client = a.client().await;
    let e = client.subscribe(&["late.t"]).await.unwrap_err();
    assert_eq!(rpc_code(e), code::BACKBONE_UNAVAILABLE as i64);
    let e = client.publish("late.t", &1).await.unwrap_err();
    assert_eq!(rpc_code(e), code::BACKBONE_UNAVAILABLE as i64);
    assert_eq!(readyz(&a).await, 503);

    redis.resume();
    wait_ready(&a, true).await;
    client.subscribe(&["late.t"]).await.unwrap();
    client.publish("late.t", &2).await.unwrap();
    assert_eq!(next(&mut client).await.data(), Some(&json!(2)));
    a.stop().await;
}

#[test]
fn config_from_toml() {
    let c: BrokerConfig = toml::from_str(
        r#"
        kind = "redis"
        url = "redis://10.0.0.1:6380"
        channel_prefix = "app"
        broadcast_channel = "app-all"
        publish_timeout = "250ms"
        "#,
    )
    .unwrap();
    match c {
        BrokerConfig::Redis(r) => {
            assert_eq!(r.url, "redis://10.0.0.1:6380");
            assert_eq!(r.channel_prefix, "app");
            assert_eq!(r.broadcast_channel, "app-all");
            assert_eq!(r.publish_timeout, Duration::from_millis(250));
            assert_eq!(
                r.subscribe_timeout,
                RedisConfig::default().subscribe_timeout
            );
        }
        other => panic!("{other:?}"),
    }
}
