//! Test harness: a real gateway on 127.0.0.1:0, real WebSocket clients.
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)]

use std::net::SocketAddr;
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use serde_json::Value;
use tokio::net::TcpStream;
use tokio::sync::oneshot;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};
use wsgate::{Config, Gateway};

/// Generous: the suite runs on a loaded 2-core machine.
pub const WAIT: Duration = Duration::from_secs(20);

pub type Ws = WebSocketStream<MaybeTlsStream<TcpStream>>;

pub struct TestServer {
    pub addr: SocketAddr,
    pub gateway: Gateway,
    stop: Option<oneshot::Sender<()>>,
    pub task: tokio::task::JoinHandle<std::io::Result<()>>,
}

impl TestServer {
    pub async fn start() -> TestServer {
        Self::with(|_| {}).await
    }

    pub async fn with(tweak: impl FnOnce(&mut Config)) -> TestServer {
        let mut config = Config {
            listen: "127.0.0.1:0".parse().unwrap(),
            ..Config::default()
        };
        tweak(&mut config);
        config.validate().unwrap();
        let listener = tokio::net::TcpListener::bind(config.listen).await.unwrap();
        let addr = listener.local_addr().unwrap();
        let gateway = Gateway::new(config).unwrap();
        let (stop, rx) = oneshot::channel();
        let g = gateway.clone();
        let task = tokio::spawn(async move {
            g.serve(listener, async {
                let _ = rx.await;
            })
            .await
        });
        TestServer {
            addr,
            gateway,
            stop: Some(stop),
            task,
        }
    }

    pub fn ws_url(&self) -> String {
        format!("ws://{}/ws", self.addr)
    }

    pub fn http(&self, path: &str) -> String {
        format!("http://{}{}", self.addr, path)
    }

    pub async fn client(&self) -> wsgate_client::Client {
        wsgate_client::Client::connect(&self.ws_url())
            .await
            .unwrap()
    }

    pub async fn raw(&self) -> Ws {
        tokio_tungstenite::connect_async(self.ws_url())
            .await
            .unwrap()
            .0
    }

    /// Triggers graceful shutdown (as SIGTERM does) and waits for `serve` to return.
    pub async fn stop(mut self) {
        if let Some(s) = self.stop.take() {
            let _ = s.send(());
        }
        tokio::time::timeout(WAIT, &mut self.task)
            .await
            .expect("serve returns after shutdown")
            .unwrap()
            .unwrap();
    }

    pub fn trigger_stop(&mut self) {
        if let Some(s) = self.stop.take() {
            let _ = s.send(());
        }
    }

    /// The value of a metric line (no labels) in `/metrics`.
    pub async fn metric(&self, name: &str) -> f64 {
        let text = reqwest::get(self.http("/metrics"))
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        text.lines()
            .find_map(|l| l.strip_prefix(name).and_then(|rest| rest.strip_prefix(' ')))
            .unwrap_or_else(|| panic!("metric {name} not found in\n{text}"))
            .trim()
            .parse()
            .unwrap()
    }

    /// Polls a metric until `pred` holds (metrics are updated asynchronously).
    pub async fn wait_metric(&self, name: &str, pred: impl Fn(f64) -> bool) -> f64 {
        let deadline = tokio::time::Instant::now() + WAIT;
        loop {
            let v = self.metric(name).await;
            if pred(v) {
                return v;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "metric {name} stuck at {v}"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

/// Sends a text frame.
pub async fn send(ws: &mut Ws, text: &str) {
    ws.send(Message::text(text.to_string())).await.unwrap();
}

/// The next text frame as JSON (skipping pings), or panics after [`WAIT`].
pub async fn recv_json(ws: &mut Ws) -> Value {
    loop {
        let msg = tokio::time::timeout(WAIT, ws.next())
            .await
            .expect("timed out waiting for a frame")
            .expect("stream ended")
            .expect("websocket error");
        match msg {
            Message::Text(t) => return serde_json::from_str(t.as_str()).unwrap(),
            Message::Ping(_) | Message::Pong(_) => continue,
            other => panic!("expected a text frame, got {other:?}"),
        }
    }
}

/// Sends a request and returns the next frame (the response).
pub async fn rpc(ws: &mut Ws, text: &str) -> Value {
    send(ws, text).await;
    recv_json(ws).await
}

/// Reads until the server's close frame; returns its code.
pub async fn recv_close(ws: &mut Ws) -> u16 {
    loop {
        let msg = tokio::time::timeout(WAIT, ws.next())
            .await
            .expect("timed out waiting for close");
        match msg {
            Some(Ok(Message::Close(Some(f)))) => return u16::from(f.code),
            Some(Ok(Message::Close(None))) => return 1005,
            Some(Ok(_)) => continue,
            Some(Err(e)) => panic!("error before a close frame: {e}"),
            None => panic!("stream ended without a close frame"),
        }
    }
}

/// Next notification from a client, or panics after [`WAIT`].
pub async fn next(client: &mut wsgate_client::Client) -> wsgate_client::Notification {
    tokio::time::timeout(WAIT, client.next_notification())
        .await
        .expect("timed out waiting for a notification")
        .expect("connection closed")
}

/// Asserts that the node still serves: a fresh subscriber gets a fresh message.
pub async fn assert_still_serving(server: &TestServer) {
    let mut c = server.client().await;
    c.subscribe(&["health.check"]).await.unwrap();
    let p = server.client().await;
    p.publish("health.check", &serde_json::json!({"ok": true}))
        .await
        .unwrap();
    let n = next(&mut c).await;
    assert_eq!(n.data(), Some(&serde_json::json!({"ok": true})));
}
