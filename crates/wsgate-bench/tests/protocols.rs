//! End-to-end for `--protocol socketio` and `--protocol nats`: the real
//! `wsgate-bench` binary against tiny in-process servers that speak
//! Engine.IO v4 / Socket.IO v5 and the NATS text protocol over WebSocket.
//! The NATS mock splits its output at awkward places across frames, and
//! both mocks ping their clients, so the adapters' buffering and ping
//! answers are exercised.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::process::Output;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use anyhow::{Context, Result, bail};
use futures_util::{SinkExt, StreamExt};
use serde_json::{Value, json};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio_tungstenite::tungstenite::Message;

type Subs = Mutex<HashMap<String, Vec<(mpsc::UnboundedSender<Message>, String)>>>;

#[derive(Default)]
struct Mock {
    subs: Subs,
    /// Pongs received from clients (answers to our pings).
    pongs: AtomicU64,
}

async fn serve(
    handler: fn(TcpStream, Arc<Mock>) -> tokio::task::JoinHandle<Result<()>>,
) -> Result<(SocketAddr, Arc<Mock>)> {
    let listener = TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    let mock = Arc::new(Mock::default());
    let m = mock.clone();
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            handler(stream, m.clone());
        }
    });
    Ok((addr, mock))
}

/// Spawn a writer task; returns the sender feeding it.
fn writer(
    mut sink: futures_util::stream::SplitSink<
        tokio_tungstenite::WebSocketStream<TcpStream>,
        Message,
    >,
) -> mpsc::UnboundedSender<Message> {
    let (tx, mut rx) = mpsc::unbounded_channel::<Message>();
    tokio::spawn(async move {
        while let Some(m) = rx.recv().await {
            if sink.send(m).await.is_err() {
                break;
            }
        }
    });
    tx
}

fn subscribe(mock: &Mock, topics: &[String], tx: &mpsc::UnboundedSender<Message>, sid: &str) {
    if let Ok(mut subs) = mock.subs.lock() {
        for t in topics {
            subs.entry(t.clone())
                .or_default()
                .push((tx.clone(), sid.to_owned()));
        }
    }
}

fn subscribers(mock: &Mock, topic: &str) -> Vec<(mpsc::UnboundedSender<Message>, String)> {
    mock.subs
        .lock()
        .map(|s| s.get(topic).cloned().unwrap_or_default())
        .unwrap_or_default()
}

// ------------------------------------------------------------- Socket.IO

// The handshake callback signature is tungstenite's.
#[allow(clippy::result_large_err)]
fn sio_conn(stream: TcpStream, mock: Arc<Mock>) -> tokio::task::JoinHandle<Result<()>> {
    tokio::spawn(async move {
        let ws = tokio_tungstenite::accept_hdr_async(
            stream,
            |req: &tokio_tungstenite::tungstenite::handshake::server::Request, resp| {
                let q = req.uri().query().unwrap_or_default();
                assert!(req.uri().path().starts_with("/socket.io/"), "{}", req.uri());
                assert!(
                    q.contains("EIO=4") && q.contains("transport=websocket"),
                    "{q}"
                );
                Ok(resp)
            },
        )
        .await?;
        let (sink, mut stream) = ws.split();
        let tx = writer(sink);
        tx.send(Message::text(
            r#"0{"sid":"s","upgrades":[],"pingInterval":25000,"pingTimeout":20000,"maxPayload":1000000}"#,
        ))?;
        // An early ping: the client must answer it during the handshake too.
        tx.send(Message::text("2"))?;
        while let Some(Ok(msg)) = stream.next().await {
            let Message::Text(text) = msg else { continue };
            let t = text.as_str();
            if t == "3" {
                mock.pongs.fetch_add(1, Ordering::Relaxed);
                continue;
            }
            if t == "40" {
                tx.send(Message::text(r#"40{"sid":"n"}"#))?;
                continue;
            }
            let Some(rest) = t.strip_prefix("42") else {
                bail!("unexpected packet {t:?}")
            };
            let digits = rest.bytes().take_while(u8::is_ascii_digit).count();
            let id: u64 = rest[..digits].parse()?;
            let args: Value = serde_json::from_str(&rest[digits..])?;
            let ack = match args[0].as_str() {
                Some("subscribe") => {
                    let topics: Vec<String> = match args[1].get("topics") {
                        Some(Value::Array(a)) => a
                            .iter()
                            .filter_map(|t| t.as_str().map(str::to_owned))
                            .collect(),
                        _ => vec![args[1]["topic"].as_str().unwrap_or_default().to_owned()],
                    };
                    subscribe(&mock, &topics, &tx, "");
                    json!([{ "subscribed": topics }])
                }
                Some("publish") => {
                    let topic = args[1]["topic"].as_str().unwrap_or_default();
                    let ev = json!(["message", {"topic": topic, "data": args[1]["data"]}]);
                    let frame = Message::text(format!("42{ev}"));
                    for (sub, _) in subscribers(&mock, topic) {
                        let _ = sub.send(frame.clone());
                        // Ping now and then, in the middle of deliveries.
                        if id % 50 == 0 {
                            let _ = sub.send(Message::text("2"));
                        }
                    }
                    json!([{}])
                }
                _ => json!([{ "error": "unknown event" }]),
            };
            tx.send(Message::text(format!("43{id}{ack}")))?;
        }
        Ok(())
    })
}

// ------------------------------------------------------------- NATS

/// Send `bytes` as two binary frames cut at `cut` (mod length).
fn send_split(tx: &mpsc::UnboundedSender<Message>, bytes: &[u8], cut: usize) {
    let cut = if bytes.len() > 1 {
        1 + cut % (bytes.len() - 1)
    } else {
        bytes.len()
    };
    let _ = tx.send(Message::binary(bytes[..cut].to_vec()));
    if cut < bytes.len() {
        let _ = tx.send(Message::binary(bytes[cut..].to_vec()));
    }
}

fn nats_conn(stream: TcpStream, mock: Arc<Mock>) -> tokio::task::JoinHandle<Result<()>> {
    tokio::spawn(async move {
        let ws = tokio_tungstenite::accept_async(stream).await?;
        let (sink, mut stream) = ws.split();
        let tx = writer(sink);
        // INFO, then a ping, in one frame.
        tx.send(Message::binary(
            b"INFO {\"server_id\":\"mock\",\"max_payload\":1048576}\r\nPING\r\n".to_vec(),
        ))?;
        let mut buf: Vec<u8> = Vec::new();
        let mut connected = false;
        let mut cut = 0usize;
        while let Some(Ok(msg)) = stream.next().await {
            let Message::Binary(bytes) = msg else {
                continue;
            };
            buf.extend_from_slice(&bytes);
            while let Some(eol) = buf.windows(2).position(|w| w == b"\r\n") {
                let line = String::from_utf8_lossy(&buf[..eol]).into_owned();
                let mut words = line.split_whitespace();
                match words.next() {
                    Some("CONNECT") => {
                        let c: Value = serde_json::from_str(&line["CONNECT ".len()..])?;
                        assert_eq!(c["verbose"], false);
                        connected = true;
                        buf.drain(..eol + 2);
                    }
                    Some("SUB") => {
                        let subject = words.next().context("SUB subject")?.to_owned();
                        let sid = words.next().context("SUB sid")?.to_owned();
                        subscribe(&mock, &[subject], &tx, &sid);
                        buf.drain(..eol + 2);
                    }
                    Some("PING") => {
                        tx.send(Message::binary(b"PONG\r\n".to_vec()))?;
                        buf.drain(..eol + 2);
                    }
                    Some("PONG") => {
                        mock.pongs.fetch_add(1, Ordering::Relaxed);
                        buf.drain(..eol + 2);
                    }
                    Some("PUB") => {
                        let subject = words.next().context("PUB subject")?.to_owned();
                        let n: usize = words.next().context("PUB size")?.parse()?;
                        if buf.len() < eol + 2 + n + 2 {
                            break; // payload not complete yet
                        }
                        let payload = buf[eol + 2..eol + 2 + n].to_vec();
                        buf.drain(..eol + 2 + n + 2);
                        assert!(connected, "PUB before CONNECT");
                        for (sub, sid) in subscribers(&mock, &subject) {
                            let mut m = format!("MSG {subject} {sid} {n}\r\n").into_bytes();
                            m.extend_from_slice(&payload);
                            m.extend_from_slice(b"\r\n");
                            cut += 7;
                            if cut % 10 == 0 {
                                m.extend_from_slice(b"PING\r\n");
                            }
                            send_split(&sub, &m, cut);
                        }
                    }
                    other => bail!("unexpected {other:?} in {line:?}"),
                }
            }
        }
        Ok(())
    })
}

// ------------------------------------------------------------- tests

async fn bench(args: Vec<String>) -> Result<(Output, Value)> {
    let out = tokio::task::spawn_blocking(move || {
        std::process::Command::new(env!("CARGO_BIN_EXE_wsgate-bench"))
            .args(&args)
            .output()
    })
    .await??;
    let stdout = String::from_utf8_lossy(&out.stdout);
    eprintln!("result: {}", stdout.trim());
    if !out.status.success() {
        eprintln!("stderr: {}", String::from_utf8_lossy(&out.stderr));
    }
    let json = stdout
        .lines()
        .last()
        .and_then(|l| serde_json::from_str(l).ok())
        .context("no JSON result")?;
    Ok((out, json))
}

fn args(list: &[&str]) -> Vec<String> {
    list.iter().map(|s| (*s).to_owned()).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn socketio_smoke_and_flood() -> Result<()> {
    let (addr, mock) = serve(sio_conn).await?;
    let url = format!("ws://{addr}");
    let (out, r) = bench(args(&["smoke", "--protocol", "socketio", "--url", &url])).await?;
    assert!(out.status.success(), "socketio smoke failed");
    assert_eq!(r["protocol"], "socketio");
    assert_eq!(r["delivered"], 4000);
    assert_eq!(r["publish_acked"], 400);
    assert!(mock.pongs.load(Ordering::Relaxed) >= 21, "pings answered");

    let (out, r) = bench(args(&[
        "flood",
        "--protocol",
        "socketio",
        "--url",
        &url,
        "--subscribers",
        "5",
        "--duration",
        "1",
        "--window",
        "8",
    ]))
    .await?;
    assert!(out.status.success());
    let published = r["published"].as_u64().context("published")?;
    assert!(published > 0);
    assert_eq!(r["delivered"].as_u64(), Some(published * 5));
    assert_eq!(r["publish_acked"].as_u64(), Some(published));
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nats_smoke_flood_and_connections() -> Result<()> {
    let (addr, mock) = serve(nats_conn).await?;
    let url = format!("ws://{addr}");
    let (out, r) = bench(args(&["smoke", "--protocol", "nats", "--url", &url])).await?;
    assert!(out.status.success(), "nats smoke failed");
    assert_eq!(r["protocol"], "nats");
    assert_eq!(r["delivered"], 4000);
    assert_eq!(r["publish_acked"], 400);
    assert_eq!(r["other_messages"], 0);
    // One ping per connection at connect, plus the ones mixed into MSGs.
    assert!(mock.pongs.load(Ordering::Relaxed) > 21, "pings answered");

    let (out, r) = bench(args(&[
        "flood",
        "--protocol",
        "nats",
        "--url",
        &url,
        "--subscribers",
        "5",
        "--duration",
        "1",
        "--window",
        "8",
        "--size",
        "300",
    ]))
    .await?;
    assert!(out.status.success());
    let published = r["published"].as_u64().context("published")?;
    assert!(published > 0);
    assert_eq!(r["delivered"].as_u64(), Some(published * 5));
    assert_eq!(r["publish_acked"].as_u64(), Some(published));
    assert_eq!(r["lost"], 0);

    let pid = std::process::id().to_string();
    let (out, r) = bench(args(&[
        "connections",
        "--protocol",
        "nats",
        "--url",
        &url,
        "-n",
        "50",
        "--topics-per-conn",
        "2",
        "--settle",
        "0.1",
        "--pid",
        &pid,
    ]))
    .await?;
    assert!(out.status.success());
    assert_eq!(r["connected"], 50);
    Ok(())
}

#[test]
fn http_publishing_is_wsgate_only() -> Result<()> {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_wsgate-bench"))
        .args(["smoke", "--protocol", "nats", "--url", "ws://127.0.0.1:9"])
        .args(["--publish-via", "http"])
        .output()?;
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("wsgate only"), "{stderr}");
    Ok(())
}
