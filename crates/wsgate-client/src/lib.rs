//! A Rust client for the wsgate JSON-RPC WebSocket protocol.
//!
//! One background task owns the socket. [`Client::call`] sends a request and
//! waits for the response with the same id; notifications (`message`,
//! `broadcast`) arrive through [`Client::next_notification`] in order.
//!
//! ```no_run
//! # async fn demo() -> Result<(), wsgate_client::ClientError> {
//! let mut client = wsgate_client::Client::connect("ws://127.0.0.1:8080/ws").await?;
//! client.subscribe(&["chat.lobby"]).await?;
//! client.publish("chat.lobby", &serde_json::json!({"text": "hi"})).await?;
//! let n = client.next_notification().await.expect("open");
//! assert_eq!(n.topic(), Some("chat.lobby"));
//! # Ok(()) }
//! ```

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use futures_util::{SinkExt, StreamExt};
use serde::Serialize;
use serde_json::{Value, json};
use tokio::sync::{mpsc, oneshot};
use tokio_tungstenite::tungstenite::Message;

/// Notifications buffered before the client stops reading the socket.
const NOTIFICATION_BUFFER: usize = 65_536;

#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("websocket: {0}")]
    WebSocket(#[from] tokio_tungstenite::tungstenite::Error),
    #[error("server error {code}: {message}")]
    Rpc {
        code: i64,
        message: String,
        data: Option<Value>,
    },
    #[error("connection closed{}", .0.as_ref().map(|c| format!(" ({} {})", c.code, c.reason)).unwrap_or_default())]
    Closed(Option<CloseInfo>),
    #[error("invalid response: {0}")]
    InvalidResponse(String),
}

/// The close frame the server sent.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CloseInfo {
    pub code: u16,
    pub reason: String,
}

/// A server notification (no id): `message` or `broadcast`.
#[derive(Debug, Clone, PartialEq)]
pub struct Notification {
    pub method: String,
    pub params: Value,
}

impl Notification {
    /// The topic of a `message` notification.
    pub fn topic(&self) -> Option<&str> {
        self.params.get("topic").and_then(Value::as_str)
    }

    /// The published data.
    pub fn data(&self) -> Option<&Value> {
        self.params.get("data")
    }
}

type Pending = HashMap<u64, oneshot::Sender<Result<Value, ClientError>>>;

enum Cmd {
    Call {
        method: String,
        params: Value,
        reply: oneshot::Sender<Result<Value, ClientError>>,
    },
    Raw(Message),
    Close,
}

/// A connection to a wsgate node.
pub struct Client {
    cmds: mpsc::Sender<Cmd>,
    notifications: mpsc::Receiver<Notification>,
    close: Arc<Mutex<Option<CloseInfo>>>,
    task: tokio::task::JoinHandle<()>,
}

impl Client {
    /// Connects to `url` (e.g. `ws://127.0.0.1:8080/ws`).
    pub async fn connect(url: &str) -> Result<Client, ClientError> {
        let (ws, _resp) = tokio_tungstenite::connect_async(url).await?;
        Ok(Self::from_stream(ws))
    }

    /// Wraps an already connected WebSocket stream.
    pub fn from_stream<S>(ws: tokio_tungstenite::WebSocketStream<S>) -> Client
    where
        S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
    {
        let (cmds, cmd_rx) = mpsc::channel(1024);
        let (note_tx, notifications) = mpsc::channel(NOTIFICATION_BUFFER);
        let close = Arc::new(Mutex::new(None));
        let task = tokio::spawn(drive(ws, cmd_rx, note_tx, close.clone()));
        Client {
            cmds,
            notifications,
            close,
            task,
        }
    }

    fn closed(&self) -> ClientError {
        ClientError::Closed(self.close_info())
    }

    /// How the server closed the connection, once it has.
    pub fn close_info(&self) -> Option<CloseInfo> {
        self.close.lock().ok().and_then(|c| c.clone())
    }

    /// Calls `method` and waits for its result.
    pub async fn call(&self, method: &str, params: Value) -> Result<Value, ClientError> {
        let (reply, rx) = oneshot::channel();
        self.cmds
            .send(Cmd::Call {
                method: method.to_string(),
                params,
                reply,
            })
            .await
            .map_err(|_| self.closed())?;
        rx.await.map_err(|_| self.closed())?
    }

    /// Subscribes to topics or patterns; returns what the server subscribed.
    pub async fn subscribe(&self, topics: &[&str]) -> Result<Vec<String>, ClientError> {
        let r = self.call("subscribe", json!({ "topics": topics })).await?;
        list(&r, "subscribed")
    }

    pub async fn unsubscribe(&self, topics: &[&str]) -> Result<Vec<String>, ClientError> {
        let r = self
            .call("unsubscribe", json!({ "topics": topics }))
            .await?;
        list(&r, "unsubscribed")
    }

    pub async fn publish<T: Serialize + ?Sized>(
        &self,
        topic: &str,
        data: &T,
    ) -> Result<Value, ClientError> {
        let data =
            serde_json::to_value(data).map_err(|e| ClientError::InvalidResponse(e.to_string()))?;
        self.call("publish", json!({ "topic": topic, "data": data }))
            .await
    }

    pub async fn broadcast<T: Serialize + ?Sized>(&self, data: &T) -> Result<Value, ClientError> {
        let data =
            serde_json::to_value(data).map_err(|e| ClientError::InvalidResponse(e.to_string()))?;
        self.call("broadcast", json!({ "data": data })).await
    }

    pub async fn ping(&self) -> Result<(), ClientError> {
        match self.call("ping", Value::Null).await? {
            Value::String(s) if s == "pong" => Ok(()),
            other => Err(ClientError::InvalidResponse(other.to_string())),
        }
    }

    /// Sends a raw WebSocket message (for tests of malformed input).
    pub async fn send_raw(&self, msg: Message) -> Result<(), ClientError> {
        self.cmds
            .send(Cmd::Raw(msg))
            .await
            .map_err(|_| self.closed())
    }

    /// The next notification; `None` once the connection is closed and every
    /// notification received before was returned.
    pub async fn next_notification(&mut self) -> Option<Notification> {
        self.notifications.recv().await
    }

    /// Waits for the connection to end; returns the server's close frame.
    pub async fn closed_by_server(mut self) -> Option<CloseInfo> {
        while self.notifications.recv().await.is_some() {}
        let _ = (&mut self.task).await;
        self.close_info()
    }

    /// Sends a close frame and waits for the connection to end.
    pub async fn close(mut self) {
        let _ = self.cmds.send(Cmd::Close).await;
        while self.notifications.recv().await.is_some() {}
        let _ = (&mut self.task).await;
    }
}

fn list(v: &Value, key: &str) -> Result<Vec<String>, ClientError> {
    v.get(key)
        .and_then(Value::as_array)
        .map(|a| {
            a.iter()
                .filter_map(|s| s.as_str().map(str::to_string))
                .collect()
        })
        .ok_or_else(|| ClientError::InvalidResponse(v.to_string()))
}

async fn drive<S>(
    ws: tokio_tungstenite::WebSocketStream<S>,
    mut cmds: mpsc::Receiver<Cmd>,
    notes: mpsc::Sender<Notification>,
    close: Arc<Mutex<Option<CloseInfo>>>,
) where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    let (mut sink, mut stream) = ws.split();
    let mut pending: Pending = HashMap::new();
    let mut next_id: u64 = 1;
    let mut cmds_open = true;
    loop {
        tokio::select! {
            cmd = cmds.recv(), if cmds_open => match cmd {
                Some(Cmd::Call { method, params, reply }) => {
                    let id = next_id;
                    next_id += 1;
                    let req = json!({"jsonrpc": "2.0", "id": id, "method": method, "params": params});
                    match sink.send(Message::text(req.to_string())).await {
                        Ok(()) => { pending.insert(id, reply); }
                        Err(e) => { let _ = reply.send(Err(e.into())); }
                    }
                }
                Some(Cmd::Raw(msg)) => { let _ = sink.send(msg).await; }
                Some(Cmd::Close) => { let _ = sink.send(Message::Close(None)).await; }
                None => {
                    cmds_open = false;
                    let _ = sink.send(Message::Close(None)).await;
                }
            },
            msg = stream.next() => match msg {
                Some(Ok(Message::Text(text))) => handle_text(text.as_str(), &mut pending, &notes).await,
                Some(Ok(Message::Close(frame))) => {
                    if let (Some(f), Ok(mut c)) = (frame, close.lock()) {
                        *c = Some(CloseInfo { code: u16::from(f.code), reason: f.reason.to_string() });
                    }
                    // tungstenite queued the close reply; send it.
                    let _ = sink.flush().await;
                }
                Some(Ok(_)) => {}
                Some(Err(_)) | None => break,
            },
        }
    }
    let info = close.lock().ok().and_then(|c| c.clone());
    for (_, reply) in pending.drain() {
        let _ = reply.send(Err(ClientError::Closed(info.clone())));
    }
}

async fn handle_text(text: &str, pending: &mut Pending, notes: &mpsc::Sender<Notification>) {
    let Ok(v) = serde_json::from_str::<Value>(text) else {
        return;
    };
    // A batch response is not produced by this client's calls; ignore it.
    let Value::Object(mut obj) = v else { return };
    if let Some(id) = obj.get("id").and_then(Value::as_u64) {
        if let Some(reply) = pending.remove(&id) {
            let result = match (obj.remove("result"), obj.remove("error")) {
                (Some(r), None) => Ok(r),
                (None, Some(e)) => Err(ClientError::Rpc {
                    code: e.get("code").and_then(Value::as_i64).unwrap_or(0),
                    message: e
                        .get("message")
                        .and_then(Value::as_str)
                        .unwrap_or("")
                        .to_string(),
                    data: e.get("data").cloned(),
                }),
                _ => Err(ClientError::InvalidResponse(text.to_string())),
            };
            let _ = reply.send(result);
        }
        return;
    }
    if obj.contains_key("id") {
        // An error answered with a null id (the request could not be read):
        // nothing to match it to.
        return;
    }
    if let Some(Value::String(method)) = obj.remove("method") {
        let params = obj.remove("params").unwrap_or(Value::Null);
        // Waiting here applies backpressure: the socket is not read while
        // the application is behind.
        let _ = notes.send(Notification { method, params }).await;
    }
}
