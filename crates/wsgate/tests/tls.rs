//! TLS (`[tls]`) end to end: `wss://` with a test CA generated at test time,
//! certificate reload (changed files, SIGHUP) without dropping connections,
//! a bad certificate keeping the current one, and HTTP/2 through ALPN with
//! WebSocket over HTTP/2 (RFC 8441 extended CONNECT), driven by a
//! hand-rolled client on the `h2` crate.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use bytes::Bytes;
use common::{TestServer, WAIT};
use rcgen::{BasicConstraints, CertificateParams, CertifiedIssuer, DnType, IsCa, KeyPair};
use rustls_pki_types::{CertificateDer, ServerName};
use serde_json::{Value, json};
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;
use tokio_rustls::client::TlsStream;
use tokio_tungstenite::WebSocketStream;

// ------------------------------------------------------------- test PKI

/// A test CA and the files of one server certificate signed by it.
struct Pki {
    dir: PathBuf,
    ca: CertifiedIssuer<'static, KeyPair>,
}

impl Pki {
    fn new(name: &str) -> Pki {
        static N: AtomicUsize = AtomicUsize::new(0);
        let dir = std::env::temp_dir().join(format!(
            "wsgate-tls-{}-{}-{name}",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        ));
        std::fs::create_dir_all(&dir).unwrap();
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params
            .distinguished_name
            .push(DnType::CommonName, "wsgate test CA");
        let ca = CertifiedIssuer::self_signed(params, KeyPair::generate().unwrap()).unwrap();
        let pki = Pki { dir, ca };
        pki.issue();
        pki
    }

    fn cert_path(&self) -> PathBuf {
        self.dir.join("cert.pem")
    }

    fn key_path(&self) -> PathBuf {
        self.dir.join("key.pem")
    }

    /// Signs a fresh server certificate for `localhost` and installs it
    /// (each file replaced atomically, key first); returns it.
    fn issue(&self) -> CertificateDer<'static> {
        let key = KeyPair::generate().unwrap();
        let cert = CertificateParams::new(vec!["localhost".to_string()])
            .unwrap()
            .signed_by(&key, &self.ca)
            .unwrap();
        self.install("key.pem", key.serialize_pem().as_bytes());
        self.install("cert.pem", cert.pem().as_bytes());
        cert.der().clone()
    }

    fn install(&self, name: &str, contents: &[u8]) {
        let tmp = self.dir.join(format!("{name}.tmp"));
        std::fs::write(&tmp, contents).unwrap();
        std::fs::rename(&tmp, self.dir.join(name)).unwrap();
    }

    fn client_config(&self, alpn: &[&[u8]]) -> Arc<rustls::ClientConfig> {
        let mut roots = rustls::RootCertStore::empty();
        roots.add(self.ca.der().clone()).unwrap();
        let mut c = rustls::ClientConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
        c.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
        Arc::new(c)
    }
}

impl Drop for Pki {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

async fn tls_server(pki: &Pki, tweak: impl FnOnce(&mut wsgate::Config)) -> TestServer {
    let (cert, key) = (pki.cert_path(), pki.key_path());
    TestServer::with(move |c| {
        c.tls.cert = Some(cert);
        c.tls.key = Some(key);
        tweak(c);
    })
    .await
}

/// A TLS connection to the server, as `localhost`.
async fn tls_connect(
    server: &TestServer,
    config: Arc<rustls::ClientConfig>,
) -> std::io::Result<TlsStream<TcpStream>> {
    let tcp = TcpStream::connect(server.addr).await?;
    let name = ServerName::try_from("localhost").unwrap();
    tokio::time::timeout(WAIT, TlsConnector::from(config).connect(name, tcp))
        .await
        .expect("TLS handshake timed out")
}

type Wss = WebSocketStream<TlsStream<TcpStream>>;

/// A `wss://` WebSocket (HTTP/1.1) and the certificate the server showed.
async fn wss(server: &TestServer, pki: &Pki) -> (Wss, CertificateDer<'static>) {
    let tls = tls_connect(server, pki.client_config(&[]))
        .await
        .expect("TLS handshake");
    let cert = tls.get_ref().1.peer_certificates().unwrap()[0].clone();
    let url = format!("wss://localhost:{}/ws", server.addr.port());
    let (ws, _) = tokio::time::timeout(WAIT, tokio_tungstenite::client_async(url, tls))
        .await
        .expect("upgrade timed out")
        .expect("upgrade");
    (ws, cert)
}

/// A metric's value, read in-process (`/metrics` is behind TLS here).
fn metric(server: &TestServer, name: &str) -> f64 {
    let text = server.gateway.metrics().render();
    text.lines()
        .find_map(|l| l.strip_prefix(name).and_then(|r| r.strip_prefix(' ')))
        .unwrap_or_else(|| panic!("metric {name} not found"))
        .trim()
        .parse()
        .unwrap()
}

async fn wait_metric(server: &TestServer, name: &str, pred: impl Fn(f64) -> bool) {
    let deadline = tokio::time::Instant::now() + WAIT;
    while !pred(metric(server, name)) {
        assert!(
            tokio::time::Instant::now() < deadline,
            "metric {name} stuck at {}",
            metric(server, name)
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// The certificate new handshakes get.
async fn served_cert(server: &TestServer, pki: &Pki) -> CertificateDer<'static> {
    let tls = tls_connect(server, pki.client_config(&[])).await.unwrap();
    tls.get_ref().1.peer_certificates().unwrap()[0].clone()
}

// ------------------------------------------------------------------ wss://

#[tokio::test]
async fn wss_end_to_end() {
    let pki = Pki::new("e2e");
    let server = tls_server(&pki, |c| c.limits.max_connections_per_ip = 2).await;
    let (sub, _) = wss(&server, &pki).await;
    let mut sub = wsgate_client::Client::from_stream(sub);
    sub.subscribe(&["secure.room"]).await.unwrap();
    let (publ, _) = wss(&server, &pki).await;
    let publ = wsgate_client::Client::from_stream(publ);
    publ.publish("secure.room", &json!({"over": "tls"}))
        .await
        .unwrap();
    let n = common::next(&mut sub).await;
    assert_eq!(n.data(), Some(&json!({"over": "tls"})));
    // The peer address reaches the upgrade through TLS: the per-IP limit
    // applies.
    assert_eq!(metric(&server, "wsgate_connections"), 2.0);
    let tls = tls_connect(&server, pki.client_config(&[])).await.unwrap();
    let url = format!("wss://localhost:{}/ws", server.addr.port());
    match tokio_tungstenite::client_async(url, tls).await {
        Err(tokio_tungstenite::tungstenite::Error::Http(resp)) => {
            assert_eq!(resp.status(), 429)
        }
        other => panic!("expected 429, got {:?}", other.map(|_| ())),
    }

    // A client that does not trust the CA fails the handshake.
    let untrusting = Arc::new(
        rustls::ClientConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(rustls::RootCertStore::empty())
        .with_no_client_auth(),
    );
    assert!(tls_connect(&server, untrusting).await.is_err());
    // Plain ws:// on the TLS port gets no WebSocket.
    let plain = tokio::time::timeout(
        WAIT,
        tokio_tungstenite::connect_async(format!("ws://{}/ws", server.addr)),
    )
    .await
    .expect("plain connect timed out");
    assert!(plain.is_err());
    // The node still serves.
    publ.publish("secure.room", &2).await.unwrap();
    assert_eq!(common::next(&mut sub).await.data(), Some(&json!(2)));
    server.stop().await;
}

#[tokio::test]
async fn a_slow_tls_handshake_is_cut_off() {
    let pki = Pki::new("slow");
    let server = tls_server(&pki, |c| {
        c.limits.handshake_timeout = Duration::from_millis(300);
    })
    .await;
    let mut tcp = TcpStream::connect(server.addr).await.unwrap();
    // Half a ClientHello record header, then nothing.
    tokio::io::AsyncWriteExt::write_all(&mut tcp, &[0x16, 0x03, 0x01])
        .await
        .unwrap();
    let mut buf = Vec::new();
    let read = tokio::time::timeout(
        WAIT,
        tokio::io::AsyncReadExt::read_to_end(&mut tcp, &mut buf),
    )
    .await;
    assert!(read.is_ok(), "server kept a half-sent handshake open");
    let _ = wss(&server, &pki).await;
    server.stop().await;
}

// ------------------------------------------------------------------ reload

#[tokio::test]
async fn changed_files_are_reloaded_without_dropping_connections() {
    let pki = Pki::new("watch");
    let server = tls_server(&pki, |c| c.tls.watch_interval = Duration::from_millis(50)).await;
    let (old_ws, old_cert) = wss(&server, &pki).await;
    let mut old = wsgate_client::Client::from_stream(old_ws);
    old.subscribe(&["t"]).await.unwrap();

    let new_cert = pki.issue();
    assert_ne!(new_cert, old_cert);
    wait_metric(&server, "wsgate_tls_reloads_total", |v| v >= 1.0).await;
    // New handshakes get the new certificate (a reload of the key alone,
    // before the certificate was replaced, may have failed and been
    // retried: both are fine).
    let deadline = tokio::time::Instant::now() + WAIT;
    while served_cert(&server, &pki).await != new_cert {
        assert!(
            tokio::time::Instant::now() < deadline,
            "still the old certificate"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let (new_ws, cert) = wss(&server, &pki).await;
    assert_eq!(cert, new_cert);
    // The connection from before the reload still works both ways.
    let new = wsgate_client::Client::from_stream(new_ws);
    new.publish("t", &"after reload").await.unwrap();
    assert_eq!(
        common::next(&mut old).await.data(),
        Some(&json!("after reload"))
    );
    server.stop().await;
}

#[tokio::test]
async fn sighup_reloads_and_a_bad_certificate_keeps_the_current_one() {
    let pki = Pki::new("hup");
    // No polling: only SIGHUP reloads.
    let server = tls_server(&pki, |c| c.tls.watch_interval = Duration::ZERO).await;
    let (_kept, first) = wss(&server, &pki).await;

    // A broken certificate file: the reload fails, the old one stays.
    pki.install("cert.pem", b"-----BEGIN CERTIFICATE-----\nnot base64\n");
    hangup();
    wait_metric(&server, "wsgate_tls_reload_failures_total", |v| v >= 1.0).await;
    assert_eq!(served_cert(&server, &pki).await, first);

    // A key that does not belong to the certificate: refused too.
    let second = pki.issue();
    pki.install(
        "key.pem",
        KeyPair::generate().unwrap().serialize_pem().as_bytes(),
    );
    let failures = metric(&server, "wsgate_tls_reload_failures_total");
    hangup();
    wait_metric(&server, "wsgate_tls_reload_failures_total", |v| {
        v > failures
    })
    .await;
    assert_eq!(served_cert(&server, &pki).await, first);

    // A good pair, then SIGHUP: new handshakes get it.
    let third = pki.issue();
    assert_ne!(third, second);
    hangup();
    let deadline = tokio::time::Instant::now() + WAIT;
    while served_cert(&server, &pki).await != third {
        assert!(
            tokio::time::Instant::now() < deadline,
            "SIGHUP did not reload"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(metric(&server, "wsgate_tls_reloads_total") >= 1.0);
    server.stop().await;
}

/// Sends SIGHUP to this process. Only called while a TLS server (which
/// listens for it) is running, so it never terminates the test binary.
fn hangup() {
    let status = std::process::Command::new("kill")
        .args(["-HUP", &std::process::id().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
}

#[tokio::test]
async fn bad_tls_configuration_is_refused_at_startup() {
    let mut c = wsgate::Config::default();
    c.tls.cert = Some("/nonexistent/cert.pem".into());
    assert!(c.validate().unwrap_err().to_string().contains("tls.key"));
    c.tls.key = Some("/nonexistent/key.pem".into());
    c.validate().unwrap();
    let err = wsgate::Gateway::new(c).err().unwrap().to_string();
    assert!(err.contains("/nonexistent/cert.pem"), "{err}");
}

// ------------------------------------------------------------------ HTTP/2

/// A masked client frame.
fn client_frame(opcode: u8, payload: &[u8]) -> Bytes {
    let mask = [7u8, 1, 9, 3];
    let mut out = vec![0x80 | opcode];
    let len = payload.len();
    if len < 126 {
        out.push(0x80 | len as u8);
    } else {
        out.push(0x80 | 126);
        out.extend_from_slice(&(len as u16).to_be_bytes());
    }
    out.extend_from_slice(&mask);
    out.extend(payload.iter().enumerate().map(|(i, b)| b ^ mask[i % 4]));
    Bytes::from(out)
}

/// Reads server frames (unmasked) from an HTTP/2 response body.
struct H2Frames {
    body: h2::RecvStream,
    buf: Vec<u8>,
}

impl H2Frames {
    /// The next (opcode, payload).
    async fn next(&mut self) -> (u8, Vec<u8>) {
        tokio::time::timeout(WAIT, async {
            loop {
                if self.buf.len() >= 2 {
                    let (len, at) = match self.buf[1] & 0x7f {
                        126 if self.buf.len() >= 4 => {
                            (u16::from_be_bytes([self.buf[2], self.buf[3]]) as usize, 4)
                        }
                        126 | 127 => (usize::MAX, 0),
                        n => (n as usize, 2),
                    };
                    if len != usize::MAX && self.buf.len() >= at + len {
                        let op = self.buf[0] & 0x0f;
                        let payload = self.buf[at..at + len].to_vec();
                        self.buf.drain(..at + len);
                        return (op, payload);
                    }
                }
                let data = self.body.data().await.expect("stream ended").unwrap();
                let _ = self.body.flow_control().release_capacity(data.len());
                self.buf.extend_from_slice(&data);
            }
        })
        .await
        .expect("timed out waiting for a frame over HTTP/2")
    }

    /// The next text frame as JSON, skipping control frames.
    async fn json(&mut self) -> Value {
        loop {
            let (op, p) = self.next().await;
            if op == 0x1 {
                return serde_json::from_slice(&p).unwrap();
            }
        }
    }
}

#[tokio::test]
async fn http2_and_websocket_over_http2() {
    let pki = Pki::new("h2");
    let server = tls_server(&pki, |_| {}).await;
    let tls = tls_connect(&server, pki.client_config(&[b"h2", b"http/1.1"]))
        .await
        .unwrap();
    assert_eq!(tls.get_ref().1.alpn_protocol(), Some(&b"h2"[..]));
    let (client, conn) = h2::client::handshake(tls).await.unwrap();
    tokio::spawn(async move {
        let _ = conn.await;
    });
    let base = format!("https://localhost:{}", server.addr.port());

    // A plain HTTP/2 request.
    let mut client = client.ready().await.unwrap();
    let req = http::Request::get(format!("{base}/healthz"))
        .body(())
        .unwrap();
    let (resp, _) = client.send_request(req, true).unwrap();
    let resp = tokio::time::timeout(WAIT, resp).await.unwrap().unwrap();
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.version(), http::Version::HTTP_2);
    // The server's SETTINGS have arrived by now.
    assert!(
        client.is_extended_connect_protocol_enabled(),
        "SETTINGS_ENABLE_CONNECT_PROTOCOL"
    );

    // WebSocket over HTTP/2: extended CONNECT, answered 200.
    let mut client = client.ready().await.unwrap();
    let mut req = http::Request::builder()
        .method(http::Method::CONNECT)
        .uri(format!("{base}/ws"))
        .header("sec-websocket-version", "13")
        .body(())
        .unwrap();
    req.extensions_mut()
        .insert(h2::ext::Protocol::from_static("websocket"));
    let (resp, mut send) = client.send_request(req, false).unwrap();
    let resp = tokio::time::timeout(WAIT, resp).await.unwrap().unwrap();
    assert_eq!(resp.status(), 200);
    let mut frames = H2Frames {
        body: resp.into_body(),
        buf: Vec::new(),
    };
    let call = |id: u32, method: &str, params: Value| {
        let req = json!({"jsonrpc": "2.0", "id": id, "method": method, "params": params});
        client_frame(0x1, req.to_string().as_bytes())
    };
    send.send_data(call(1, "ping", Value::Null), false).unwrap();
    assert_eq!(frames.json().await["result"], "pong");
    send.send_data(call(2, "subscribe", json!({"topic": "h2.room"})), false)
        .unwrap();
    assert_eq!(frames.json().await["id"], 2);
    // A message published over HTTP/1.1 wss:// reaches the HTTP/2 socket.
    let (publ, _) = wss(&server, &pki).await;
    let publ = wsgate_client::Client::from_stream(publ);
    publ.publish("h2.room", &json!({"via": "h2"}))
        .await
        .unwrap();
    let n = frames.json().await;
    assert_eq!(n["method"], "message");
    assert_eq!(n["params"]["data"], json!({"via": "h2"}));
    // WebSocket pings are answered over the stream too.
    send.send_data(client_frame(0x9, b"hi"), false).unwrap();
    loop {
        let (op, p) = frames.next().await;
        if op == 0xA {
            assert_eq!(p, b"hi");
            break;
        }
    }
    assert_eq!(metric(&server, "wsgate_connections"), 2.0);

    // A CONNECT without `:protocol = websocket` is refused.
    let mut client = client.ready().await.unwrap();
    let req = http::Request::builder()
        .method(http::Method::CONNECT)
        .uri(format!("localhost:{}", server.addr.port()))
        .body(())
        .unwrap();
    if let Ok((resp, _)) = client.send_request(req, false) {
        if let Ok(Ok(resp)) = tokio::time::timeout(WAIT, resp).await {
            assert_ne!(resp.status(), 200);
        }
    }

    // Closing: the server echoes the close and the session ends.
    send.send_data(client_frame(0x8, &1000u16.to_be_bytes()), false)
        .unwrap();
    loop {
        let (op, p) = frames.next().await;
        if op == 0x8 {
            assert_eq!(p[..2], 1000u16.to_be_bytes());
            break;
        }
    }
    wait_metric(&server, "wsgate_connections", |v| v == 1.0).await;
    server.stop().await;
}

#[tokio::test]
async fn http2_can_be_turned_off() {
    let pki = Pki::new("h1only");
    let server = tls_server(&pki, |c| c.tls.http2 = false).await;
    // A client offering both gets HTTP/1.1.
    let tls = tls_connect(&server, pki.client_config(&[b"h2", b"http/1.1"]))
        .await
        .unwrap();
    assert_eq!(tls.get_ref().1.alpn_protocol(), Some(&b"http/1.1"[..]));
    let url = format!("wss://localhost:{}/ws", server.addr.port());
    let (ws, _) = tokio_tungstenite::client_async(url, tls).await.unwrap();
    let c = wsgate_client::Client::from_stream(ws);
    c.ping().await.unwrap();
    server.stop().await;
}

#[tokio::test]
async fn shutdown_closes_websockets_over_http2_with_1001() {
    let pki = Pki::new("h2-shutdown");
    let mut server = tls_server(&pki, |_| {}).await;
    let tls = tls_connect(&server, pki.client_config(&[b"h2"]))
        .await
        .unwrap();
    let (client, conn) = h2::client::handshake(tls).await.unwrap();
    tokio::spawn(async move {
        let _ = conn.await;
    });
    let mut client = client.ready().await.unwrap();
    let mut req = http::Request::builder()
        .method(http::Method::CONNECT)
        .uri(format!("https://localhost:{}/ws", server.addr.port()))
        .header("sec-websocket-version", "13")
        .body(())
        .unwrap();
    req.extensions_mut()
        .insert(h2::ext::Protocol::from_static("websocket"));
    let (resp, mut send) = client.send_request(req, false).unwrap();
    let resp = tokio::time::timeout(WAIT, resp).await.unwrap().unwrap();
    assert_eq!(resp.status(), 200);
    let mut frames = H2Frames {
        body: resp.into_body(),
        buf: Vec::new(),
    };
    let ping = json!({"jsonrpc": "2.0", "id": 1, "method": "ping"}).to_string();
    send.send_data(client_frame(0x1, ping.as_bytes()), false)
        .unwrap();
    assert_eq!(frames.json().await["result"], "pong");
    // SIGTERM, as far as the node is concerned: the stream gets 1001.
    server.trigger_stop();
    loop {
        let (op, p) = frames.next().await;
        if op == 0x8 {
            assert_eq!(p[..2], 1001u16.to_be_bytes());
            break;
        }
    }
    send.send_data(client_frame(0x8, &1001u16.to_be_bytes()), true)
        .unwrap();
    server.stop().await;
}
