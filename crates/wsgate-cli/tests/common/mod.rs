//! Running the real `wsgate` binary in tests.
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)]

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

pub const WAIT: Duration = Duration::from_secs(30);

/// A `wsgate serve` process, killed on drop.
pub struct Server {
    pub child: Child,
    /// `host:port` it listens on.
    pub addr: String,
    /// Log lines up to and including the one naming the address.
    pub log: Vec<String>,
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Server {
    pub fn port(&self) -> u16 {
        self.addr.rsplit(':').next().unwrap().parse().unwrap()
    }

    pub fn url(&self) -> String {
        format!("ws://{}/ws", self.addr)
    }

    pub fn http(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    pub async fn client(&self) -> wsgate_client::Client {
        wsgate_client::Client::connect(&self.url()).await.unwrap()
    }

    pub async fn readyz(&self) -> u16 {
        reqwest::get(self.http("/readyz"))
            .await
            .unwrap()
            .status()
            .as_u16()
    }

    /// Polls `/readyz` until it answers 200 (`ready`) or 503.
    pub async fn wait_ready(&self, ready: bool) {
        let want = if ready { 200 } else { 503 };
        let deadline = tokio::time::Instant::now() + WAIT;
        loop {
            let got = self.readyz().await;
            if got == want {
                return;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "{}: /readyz stuck at {got}, expected {want}",
                self.addr
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// POSTs a JSON body; returns the status.
    pub async fn post(&self, path: &str, body: &str) -> u16 {
        reqwest::Client::new()
            .post(self.http(path))
            .header("content-type", "application/json")
            .body(body.to_string())
            .send()
            .await
            .unwrap()
            .status()
            .as_u16()
    }

    /// Sends SIGTERM.
    pub fn sigterm(&self) {
        let ok = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status()
            .unwrap()
            .success();
        assert!(ok);
    }
}

/// The binary, without `WSGATE_*` settings inherited from the test's environment.
pub fn wsgate() -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_wsgate"));
    for (k, _) in std::env::vars() {
        if k.starts_with("WSGATE_") {
            cmd.env_remove(k);
        }
    }
    cmd
}

/// Starts `wsgate serve ARGS` with `env` and waits until it logs its address.
/// Its stderr keeps being drained afterwards, so logging never blocks it.
pub fn serve(env: &[(&str, &str)], args: &[&str]) -> Server {
    let mut cmd = wsgate();
    cmd.arg("serve")
        .args(args)
        .env("RUST_LOG", "info")
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    for (k, v) in env {
        cmd.env(k, v);
    }
    let child = cmd.spawn().unwrap();
    // Owned by the guard from here on, so every path kills and waits for it.
    let mut server = Server {
        child,
        addr: String::new(),
        log: Vec::new(),
    };
    let stderr = server.child.stderr.take().unwrap();
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            // The receiver goes away once the address is known; keep reading.
            let _ = tx.send(line);
        }
    });
    loop {
        let line = rx.recv_timeout(WAIT).expect("server logged its address");
        // "... WebSocket at ws://HOST:PORT/ws" (or wss:// with TLS).
        let addr = line
            .split("WebSocket at ")
            .nth(1)
            .and_then(|rest| rest.split("://").nth(1))
            .map(|rest| rest.split('/').next().unwrap_or("").to_string());
        server.log.push(line);
        if let Some(addr) = addr {
            server.addr = addr;
            return server;
        }
    }
}
