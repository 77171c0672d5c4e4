//! A real `nats-server` per test: free ports on 127.0.0.1, JetStream store in
//! a temporary directory, killed on drop. Only std and serde_json, so the CLI
//! crate's tests include this file too (`#[path]`).
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)]

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// How long the server gets to accept connections.
const START_WAIT: Duration = Duration::from_secs(20);

pub struct NatsServer {
    pub port: u16,
    pub monitor_port: u16,
    dir: PathBuf,
    child: Option<Child>,
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn binary() -> &'static str {
    if std::path::Path::new("/usr/sbin/nats-server").exists() {
        "/usr/sbin/nats-server"
    } else {
        "nats-server"
    }
}

impl NatsServer {
    /// Starts a server on free ports and waits until it accepts clients.
    pub fn start() -> NatsServer {
        let dir = std::env::temp_dir().join(format!(
            "wsgate-nats-{}-{}",
            std::process::id(),
            free_port()
        ));
        std::fs::create_dir_all(&dir).unwrap();
        let mut server = NatsServer {
            port: free_port(),
            monitor_port: free_port(),
            dir,
            child: None,
        };
        server.spawn();
        server
    }

    /// Picks free ports for a server that is not running yet (for "NATS is
    /// down at startup" tests); call [`NatsServer::resume`] to start it.
    pub fn reserve() -> NatsServer {
        let server = NatsServer {
            port: free_port(),
            monitor_port: free_port(),
            dir: std::env::temp_dir().join(format!(
                "wsgate-nats-{}-{}",
                std::process::id(),
                free_port()
            )),
            child: None,
        };
        std::fs::create_dir_all(&server.dir).unwrap();
        server
    }

    fn spawn(&mut self) {
        assert!(self.child.is_none());
        let child = Command::new(binary())
            .args(["-a", "127.0.0.1", "-p"])
            .arg(self.port.to_string())
            .arg("-m")
            .arg(self.monitor_port.to_string())
            .arg("-js")
            .arg("-sd")
            .arg(&self.dir)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| {
                panic!("cannot run nats-server ({e}): install it (apt-get install nats-server)")
            });
        self.child = Some(child);
        let deadline = Instant::now() + START_WAIT;
        loop {
            if self.probe() {
                return;
            }
            if let Some(status) = self.child.as_mut().unwrap().try_wait().unwrap() {
                panic!("nats-server exited at start: {status}");
            }
            assert!(Instant::now() < deadline, "nats-server did not start");
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// True if the server answers a PING with a PONG.
    fn probe(&self) -> bool {
        let Ok(mut s) = TcpStream::connect_timeout(&self.addr(), Duration::from_millis(500)) else {
            return false;
        };
        let _ = s.set_read_timeout(Some(Duration::from_secs(2)));
        let mut r = BufReader::new(s.try_clone().unwrap());
        let mut line = String::new();
        if r.read_line(&mut line).is_err() || !line.starts_with("INFO") {
            return false;
        }
        if s.write_all(b"CONNECT {\"verbose\":false}\r\nPING\r\n")
            .is_err()
        {
            return false;
        }
        line.clear();
        r.read_line(&mut line).is_ok() && line.starts_with("PONG")
    }

    pub fn addr(&self) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], self.port))
    }

    pub fn url(&self) -> String {
        format!("nats://127.0.0.1:{}", self.port)
    }

    /// Kills the server (SIGKILL: clients see the connection drop).
    pub fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Starts the server again on the same ports.
    pub fn resume(&mut self) {
        self.spawn();
    }

    /// Kills the server and starts it again on the same ports.
    pub fn restart(&mut self) {
        self.stop();
        self.spawn();
    }

    /// A monitoring endpoint as JSON (`/connz?subs=1`, `/subsz`, ...).
    pub fn monitor(&self, path: &str) -> serde_json::Value {
        let mut s = TcpStream::connect(("127.0.0.1", self.monitor_port)).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        write!(s, "GET {path} HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n").unwrap();
        let mut text = String::new();
        s.read_to_string(&mut text).unwrap();
        let body = text.split_once("\r\n\r\n").map(|x| x.1).unwrap_or("");
        serde_json::from_str(body).unwrap_or_else(|e| panic!("{e}: {text}"))
    }

    /// Subjects subscribed by client connections named `name` (all client
    /// connections with `None`), sorted, one entry per subscription.
    pub fn subscriptions(&self, name: Option<&str>) -> Vec<String> {
        let v = self.monitor("/connz?subs=1&limit=10000");
        let mut out = Vec::new();
        for c in v["connections"].as_array().cloned().unwrap_or_default() {
            if name.is_some_and(|n| c["name"].as_str() != Some(n)) {
                continue;
            }
            for s in c["subscriptions_list"]
                .as_array()
                .cloned()
                .unwrap_or_default()
            {
                out.push(s.as_str().unwrap_or_default().to_string());
            }
        }
        out.sort();
        out
    }

    /// Subscriptions of connections named `name` whose subject starts with `prefix`.
    pub fn subscriptions_under(&self, name: Option<&str>, prefix: &str) -> Vec<String> {
        self.subscriptions(name)
            .into_iter()
            .filter(|s| s.starts_with(prefix))
            .collect()
    }

    /// Polls [`NatsServer::subscriptions_under`] until it equals `want`.
    pub async fn wait_subscriptions(&self, name: Option<&str>, prefix: &str, want: &[&str]) {
        let mut want: Vec<String> = want.iter().map(|s| s.to_string()).collect();
        want.sort();
        let mut got = Vec::new();
        let ok = self
            .wait_until(|_| {
                got = self.subscriptions_under(name, prefix);
                got == want
            })
            .await;
        assert!(ok, "NATS subscriptions {got:?}, expected {want:?}");
    }

    /// Polls the server's subscription list (all clients) until `pred`
    /// holds; false after 20 s.
    pub async fn wait_until(&self, mut pred: impl FnMut(&[String]) -> bool) -> bool {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if pred(&self.subscriptions(None)) {
                return true;
            }
            if Instant::now() > deadline {
                return false;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Publishes like any plain NATS service (raw protocol), and waits for
    /// the server to have processed it.
    pub fn publish(&self, subject: &str, payload: &[u8]) {
        let mut s = TcpStream::connect(self.addr()).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        let mut r = BufReader::new(s.try_clone().unwrap());
        let mut line = String::new();
        r.read_line(&mut line).unwrap();
        assert!(line.starts_with("INFO"), "{line}");
        let mut buf = Vec::new();
        write!(
            buf,
            "CONNECT {{\"verbose\":false,\"name\":\"test-publisher\"}}\r\nPUB {subject} {}\r\n",
            payload.len()
        )
        .unwrap();
        buf.extend_from_slice(payload);
        buf.extend_from_slice(b"\r\nPING\r\n");
        s.write_all(&buf).unwrap();
        line.clear();
        r.read_line(&mut line).unwrap();
        assert!(line.starts_with("PONG"), "{line}");
    }
}

impl Drop for NatsServer {
    fn drop(&mut self) {
        self.stop();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
