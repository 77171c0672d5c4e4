//! A real `redis-server` per test: a free port on 127.0.0.1, no persistence,
//! killed on drop. Only std, so other test crates can include it (`#[path]`).
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)]

use std::io::{BufRead, BufReader, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// How long the server gets to accept connections.
const START_WAIT: Duration = Duration::from_secs(20);

pub struct RedisServer {
    pub port: u16,
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
    if std::path::Path::new("/usr/bin/redis-server").exists() {
        "/usr/bin/redis-server"
    } else {
        "redis-server"
    }
}

/// One RESP command (an array of bulk strings).
fn encode(args: &[&[u8]]) -> Vec<u8> {
    let mut out = format!("*{}\r\n", args.len()).into_bytes();
    for a in args {
        out.extend_from_slice(format!("${}\r\n", a.len()).as_bytes());
        out.extend_from_slice(a);
        out.extend_from_slice(b"\r\n");
    }
    out
}

impl RedisServer {
    /// Starts a server on a free port and waits until it answers PING.
    pub fn start() -> RedisServer {
        let mut server = RedisServer::reserve();
        server.spawn();
        server
    }

    /// Picks a free port for a server that is not running yet (for "Redis
    /// is down at startup" tests); call [`RedisServer::resume`] to start it.
    pub fn reserve() -> RedisServer {
        RedisServer {
            port: free_port(),
            child: None,
        }
    }

    fn spawn(&mut self) {
        assert!(self.child.is_none());
        let child = Command::new(binary())
            .args(["--port", &self.port.to_string()])
            .args(["--bind", "127.0.0.1"])
            .args(["--save", ""])
            .args(["--appendonly", "no"])
            .args(["--dir", std::env::temp_dir().to_str().unwrap()])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| {
                panic!("cannot run redis-server ({e}): install it (apt-get install redis-server)")
            });
        self.child = Some(child);
        let deadline = Instant::now() + START_WAIT;
        loop {
            if self.probe() {
                return;
            }
            if let Some(status) = self.child.as_mut().unwrap().try_wait().unwrap() {
                panic!("redis-server exited at start: {status}");
            }
            assert!(Instant::now() < deadline, "redis-server did not start");
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// True if the server answers a PING with +PONG.
    fn probe(&self) -> bool {
        let Ok(mut s) = TcpStream::connect_timeout(&self.addr(), Duration::from_millis(500)) else {
            return false;
        };
        let _ = s.set_read_timeout(Some(Duration::from_secs(2)));
        if s.write_all(b"PING\r\n").is_err() {
            return false;
        }
        let mut line = String::new();
        BufReader::new(s).read_line(&mut line).is_ok() && line.starts_with("+PONG")
    }

    pub fn addr(&self) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], self.port))
    }

    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    /// Kills the server (SIGKILL: clients see the connection drop).
    pub fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Starts the server again on the same port.
    pub fn resume(&mut self) {
        self.spawn();
    }

    /// Kills the server and starts it again on the same port.
    pub fn restart(&mut self) {
        self.stop();
        self.spawn();
    }

    /// Runs one command on a fresh connection (like `redis-cli`) and returns
    /// the first line of the reply.
    pub fn command(&self, args: &[&[u8]]) -> String {
        let mut s = TcpStream::connect(self.addr()).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        s.write_all(&encode(args)).unwrap();
        let mut line = String::new();
        BufReader::new(s).read_line(&mut line).unwrap();
        line.trim_end().to_string()
    }

    /// `PUBLISH channel payload`, as any plain Redis client does; returns the
    /// number of receivers Redis reports (one per node, or more with
    /// overlapping patterns).
    pub fn publish(&self, channel: &str, payload: &[u8]) -> i64 {
        let reply = self.command(&[b"PUBLISH", channel.as_bytes(), payload]);
        reply
            .strip_prefix(':')
            .unwrap_or_else(|| panic!("PUBLISH: {reply}"))
            .parse()
            .unwrap()
    }

    /// `PUBSUB NUMPAT` (patterns subscribed by all clients).
    pub fn numpat(&self) -> i64 {
        let reply = self.command(&[b"PUBSUB", b"NUMPAT"]);
        reply.strip_prefix(':').unwrap().parse().unwrap()
    }

    /// `PUBSUB NUMSUB channel` (clients subscribed to exactly this channel).
    pub fn numsub(&self, channel: &str) -> i64 {
        let mut s = TcpStream::connect(self.addr()).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        s.write_all(&encode(&[b"PUBSUB", b"NUMSUB", channel.as_bytes()]))
            .unwrap();
        let mut sub = Subscriber {
            r: BufReader::new(s),
        };
        let reply = sub.read_reply();
        String::from_utf8(reply[1].clone())
            .unwrap()
            .parse()
            .unwrap()
    }

    /// Polls `pred` until it holds; false after 20 s.
    pub async fn wait_until(&self, mut pred: impl FnMut(&RedisServer) -> bool) -> bool {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if pred(self) {
                return true;
            }
            if Instant::now() > deadline {
                return false;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// A plain subscriber connection (blocking I/O; use from a thread).
    pub fn subscriber(&self, pattern: bool, name: &str) -> Subscriber {
        let s = TcpStream::connect(self.addr()).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
        let mut w = s.try_clone().unwrap();
        let cmd: &[u8] = if pattern { b"PSUBSCRIBE" } else { b"SUBSCRIBE" };
        w.write_all(&encode(&[cmd, name.as_bytes()])).unwrap();
        let mut sub = Subscriber {
            r: BufReader::new(s),
        };
        // The confirmation: [kind, name, count].
        let confirm = sub.read_reply();
        assert_eq!(confirm[0].to_ascii_lowercase(), cmd.to_ascii_lowercase());
        sub
    }
}

/// A plain Redis pub/sub connection.
pub struct Subscriber {
    r: BufReader<TcpStream>,
}

impl Subscriber {
    fn read_line(&mut self) -> String {
        let mut line = String::new();
        self.r.read_line(&mut line).unwrap();
        assert!(!line.is_empty(), "connection closed");
        line.trim_end_matches("\r\n").to_string()
    }

    /// Reads one array-of-bulk-strings / integers reply.
    fn read_reply(&mut self) -> Vec<Vec<u8>> {
        let head = self.read_line();
        let n: usize = head
            .strip_prefix('*')
            .unwrap_or_else(|| panic!("unexpected reply {head}"))
            .parse()
            .unwrap();
        let mut out = Vec::with_capacity(n);
        for _ in 0..n {
            let h = self.read_line();
            if let Some(len) = h.strip_prefix('$') {
                let len: usize = len.parse().unwrap();
                let mut buf = vec![0; len + 2];
                std::io::Read::read_exact(&mut self.r, &mut buf).unwrap();
                buf.truncate(len);
                out.push(buf);
            } else {
                out.push(h.trim_start_matches(':').as_bytes().to_vec());
            }
        }
        out
    }

    /// The next message: (channel, payload).
    pub fn next_message(&mut self) -> (String, Vec<u8>) {
        let mut m = self.read_reply();
        match m[0].as_slice() {
            b"message" => {
                let payload = m.pop().unwrap();
                (String::from_utf8(m.pop().unwrap()).unwrap(), payload)
            }
            b"pmessage" => {
                let payload = m.pop().unwrap();
                (String::from_utf8(m.pop().unwrap()).unwrap(), payload)
            }
            other => panic!("unexpected {}", String::from_utf8_lossy(other)),
        }
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        self.stop();
    }
}
