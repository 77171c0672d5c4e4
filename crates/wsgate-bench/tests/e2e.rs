//! End-to-end: the real `wsgate-bench` binary against a tiny in-process
//! pub/sub server that speaks the same protocol (WebSocket JSON-RPC and
//! `POST /api/publish`), with optional fault injection to check that loss
//! and duplicates are detected.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::process::Output;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use anyhow::{Context, Result};
use futures_util::{SinkExt, StreamExt};
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;

#[derive(Default)]
struct Faults {
    /// Drop every Nth delivery.
    drop_every: Option<u64>,
    /// Deliver every Nth message twice.
    dup_every: Option<u64>,
    /// Instead of the Nth delivery, close that subscriber with 4000.
    close_at: Option<u64>,
}

#[derive(Default)]
struct Mock {
    subs: Mutex<HashMap<String, Vec<mpsc::UnboundedSender<Message>>>>,
    deliveries: AtomicU64,
    faults: Faults,
}

impl Mock {
    fn publish(&self, topic: &str, data: &Value) {
        let text = json!({"jsonrpc":"2.0","method":"message","params":{"topic":topic,"data":data}})
            .to_string();
        let msg = Message::text(text);
        let subs = match self.subs.lock() {
            Ok(s) => s,
            Err(p) => p.into_inner(),
        };
        for tx in subs.get(topic).into_iter().flatten() {
            let n = self.deliveries.fetch_add(1, Ordering::Relaxed) + 1;
            if self.faults.drop_every.is_some_and(|k| n % k == 0) {
                continue;
            }
            if self.faults.close_at == Some(n) {
                let _ = tx.send(Message::Close(Some(CloseFrame {
                    code: CloseCode::from(4000),
                    reason: "slow consumer".into(),
                })));
                continue;
            }
            let _ = tx.send(msg.clone());
            if self.faults.dup_every.is_some_and(|k| n % k == 0) {
                let _ = tx.send(msg.clone());
            }
        }
    }
}

async fn serve(faults: Faults) -> Result<SocketAddr> {
    let listener = TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    let mock = Arc::new(Mock {
        faults,
        ..Mock::default()
    });
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            let mock = mock.clone();
            tokio::spawn(async move {
                let mut head = [0u8; 4];
                let is_post = matches!(stream.peek(&mut head).await, Ok(4) if &head == b"POST");
                let _ = if is_post {
                    http_conn(stream, mock).await
                } else {
                    ws_conn(stream, mock).await
                };
            });
        }
    });
    Ok(addr)
}

async fn http_conn(mut stream: TcpStream, mock: Arc<Mock>) -> Result<()> {
    let mut buf = Vec::new();
    loop {
        // Read one request: headers, then Content-Length bytes of body.
        let header_end = loop {
            if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                break i + 4;
            }
            let mut chunk = [0u8; 4096];
            let n = stream.read(&mut chunk).await?;
            if n == 0 {
                return Ok(());
            }
            buf.extend_from_slice(&chunk[..n]);
        };
        let head = String::from_utf8_lossy(&buf[..header_end]).to_ascii_lowercase();
        let len: usize = head
            .lines()
            .find_map(|l| l.strip_prefix("content-length:"))
            .and_then(|v| v.trim().parse().ok())
            .unwrap_or(0);
        while buf.len() < header_end + len {
            let mut chunk = [0u8; 4096];
            let n = stream.read(&mut chunk).await?;
            if n == 0 {
                return Ok(());
            }
            buf.extend_from_slice(&chunk[..n]);
        }
        let body: Value = serde_json::from_slice(&buf[header_end..header_end + len])?;
        buf.drain(..header_end + len);
        let topic = body["topic"].as_str().unwrap_or_default().to_owned();
        mock.publish(&topic, &body["data"]);
        stream
            .write_all(
                b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: 2\r\n\r\n{}",
            )
            .await?;
    }
}

async fn ws_conn(stream: TcpStream, mock: Arc<Mock>) -> Result<()> {
    let ws = tokio_tungstenite::accept_async(stream).await?;
    let (mut sink, mut stream) = ws.split();
    let (tx, mut rx) = mpsc::unbounded_channel::<Message>();
    let writer = tokio::spawn(async move {
        while let Some(m) = rx.recv().await {
            if sink.send(m).await.is_err() {
                break;
            }
        }
    });
    while let Some(Ok(msg)) = stream.next().await {
        let Message::Text(text) = msg else { continue };
        let req: Value = serde_json::from_str(text.as_str())?;
        let id = req["id"].clone();
        let params = &req["params"];
        let reply = match req["method"].as_str() {
            Some("subscribe") => {
                let topics: Vec<String> = match params.get("topics") {
                    Some(Value::Array(a)) => a
                        .iter()
                        .filter_map(|t| t.as_str().map(str::to_owned))
                        .collect(),
                    _ => params["topic"]
                        .as_str()
                        .map(str::to_owned)
                        .into_iter()
                        .collect(),
                };
                if let Ok(mut subs) = mock.subs.lock() {
                    for t in &topics {
                        subs.entry(t.clone()).or_default().push(tx.clone());
                    }
                }
                json!({"jsonrpc":"2.0","id":id,"result":{"subscribed":topics}})
            }
            Some("publish") => {
                mock.publish(
                    params["topic"].as_str().unwrap_or_default(),
                    &params["data"],
                );
                json!({"jsonrpc":"2.0","id":id,"result":{}})
            }
            _ => {
                json!({"jsonrpc":"2.0","id":id,"error":{"code":-32601,"message":"method not found"}})
            }
        };
        let _ = tx.send(Message::text(reply.to_string()));
    }
    drop(tx);
    writer.abort();
    Ok(())
}

async fn bench(args: Vec<String>) -> Result<(Output, Option<Value>)> {
    let out = tokio::task::spawn_blocking(move || {
        std::process::Command::new(env!("CARGO_BIN_EXE_wsgate-bench"))
            .args(&args)
            .output()
    })
    .await??;
    let stdout = String::from_utf8_lossy(&out.stdout);
    let json = stdout
        .lines()
        .last()
        .and_then(|l| serde_json::from_str(l).ok());
    eprintln!("result: {}", stdout.trim());
    if !out.status.success() {
        eprintln!("stderr: {}", String::from_utf8_lossy(&out.stderr));
    }
    Ok((out, json))
}

fn args(list: &[&str], url: &str) -> Vec<String> {
    let mut v: Vec<String> = list.iter().map(|s| (*s).to_owned()).collect();
    v.push("--url".into());
    v.push(url.to_owned());
    v
}

fn url(addr: SocketAddr) -> String {
    format!("ws://{addr}/ws")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn smoke_passes_on_a_correct_server() -> Result<()> {
    let addr = serve(Faults::default()).await?;
    let pid = std::process::id().to_string();
    let (out, json) = bench(args(&["smoke", "--pid", &pid], &url(addr))).await?;
    assert!(out.status.success(), "smoke failed");
    let r = json.context("no JSON result")?;
    assert_eq!(r["scenario"], "smoke");
    assert_eq!(r["published"], 400);
    // 20 subscribers over 2 topics, 200 messages per topic.
    assert_eq!(r["expected_deliveries"], 4000);
    assert_eq!(r["delivered"], 4000);
    assert_eq!(r["lost"], 0);
    assert_eq!(r["all_delivered"], true);
    assert!(r["latency_us"]["count"].as_u64() == Some(4000));
    assert!(r["server"]["cpu_seconds"].as_f64().is_some());
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn smoke_over_http_with_source_ips() -> Result<()> {
    let addr = serve(Faults::default()).await?;
    let (out, json) = bench(args(
        &[
            "smoke",
            "--publish-via",
            "http",
            "--source-ips",
            "127.0.0.2-127.0.0.5",
        ],
        &url(addr),
    ))
    .await?;
    assert!(out.status.success(), "smoke over http failed");
    let r = json.context("no JSON result")?;
    assert_eq!(r["delivered"], 4000);
    assert_eq!(r["publish_acked"], 400);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn smoke_detects_loss_and_duplicates() -> Result<()> {
    let addr = serve(Faults {
        drop_every: Some(97),
        dup_every: Some(101),
        close_at: None,
    })
    .await?;
    let (out, json) = bench(args(&["smoke"], &url(addr))).await?;
    assert!(!out.status.success(), "smoke should fail on a lossy server");
    let r = json.context("no JSON result")?;
    let lost = r["lost"].as_u64().context("lost")?;
    let dups = r["duplicates"].as_u64().context("duplicates")?;
    // 4000 deliveries: 41 dropped (every 97th), 39 duplicated (every 101st,
    // minus those dropped).
    assert!((35..=45).contains(&lost), "lost {lost}");
    assert!((35..=45).contains(&dups), "dups {dups}");
    assert_eq!(r["reordered"], 0);
    assert_eq!(r["all_delivered"], false);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn smoke_reports_server_closes() -> Result<()> {
    let addr = serve(Faults {
        close_at: Some(1000),
        ..Faults::default()
    })
    .await?;
    let (out, json) = bench(args(&["smoke"], &url(addr))).await?;
    assert!(
        !out.status.success(),
        "smoke should fail when a subscriber is closed"
    );
    let r = json.context("no JSON result")?;
    assert_eq!(r["close_codes"]["4000"], 1);
    assert_eq!(r["subscribers_ended_early"]["count"], 1);
    let first = r["subscribers_ended_early"]["first"][0]
        .as_str()
        .unwrap_or_default();
    assert!(first.contains("4000 slow consumer"), "{first}");
    // The closed subscriber misses the rest of its topic's messages.
    assert!(r["lost"].as_u64().unwrap_or(0) > 0);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn flood_and_connections_run() -> Result<()> {
    let addr = serve(Faults::default()).await?;
    let (out, json) = bench(args(
        &[
            "flood",
            "--subscribers",
            "5",
            "--duration",
            "1",
            "--window",
            "16",
            "--size",
            "100",
        ],
        &url(addr),
    ))
    .await?;
    assert!(out.status.success());
    let r = json.context("no JSON result")?;
    let published = r["published"].as_u64().context("published")?;
    assert!(published > 0);
    assert_eq!(r["delivered"].as_u64(), Some(published * 5));
    assert_eq!(r["publish_acked"].as_u64(), Some(published));

    let pid = std::process::id().to_string();
    let file = std::env::temp_dir().join(format!("wsgate-bench-e2e-{pid}.json"));
    let (out, json) = bench(args(
        &[
            "connections",
            "-n",
            "300",
            "--topics-per-conn",
            "3",
            "--settle",
            "0.2",
            "--hold",
            "0.2",
            "--pid",
            &pid,
            "--json-out",
            file.to_str().context("path")?,
        ],
        &url(addr),
    ))
    .await?;
    assert!(out.status.success());
    let r = json.context("no JSON result")?;
    assert_eq!(r["connected"], 300);
    assert_eq!(r["failed"], 0);
    assert_eq!(r["connect_us"]["count"], 300);
    assert!(r["server"]["rss_delta_per_conn_bytes"].is_number());
    let written: Value = serde_json::from_str(&std::fs::read_to_string(&file)?)?;
    assert_eq!(written["connected"], 300);
    let _ = std::fs::remove_file(&file);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn too_many_connections_is_refused() -> Result<()> {
    let (out, _) = bench(args(
        &["connections", "-n", "1000000"],
        "ws://127.0.0.1:9/ws",
    ))
    .await?;
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("several"), "stderr: {stderr}");
    Ok(())
}
