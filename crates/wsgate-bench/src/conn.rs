//! Targets, source-address binding, connecting and subscribing.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::time::Duration;

use anyhow::{Context, Result, anyhow, bail, ensure};
use futures_util::{SinkExt, StreamExt};
use tokio::net::{TcpSocket, TcpStream};
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::http::Uri;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;

use crate::payload::{Incoming, error_message, has_error_key, scan, subscribe_frame};
use crate::proto::{Decoder, Protocol, nats, sio};

pub type Ws = WebSocketStream<TcpStream>;

/// File descriptors kept free for everything that is not a client socket.
pub const FD_RESERVE: u64 = 100;

/// Most source addresses a spec may expand to.
const MAX_SOURCE_IPS: usize = 65_536;

/// A server to connect to: the WebSocket URL and its resolved address.
#[derive(Debug, Clone)]
pub struct Endpoint {
    pub url: String,
    pub addr: SocketAddr,
    /// `http://host:port` of the same server, for the HTTP API.
    pub http_base: String,
}

impl Endpoint {
    pub async fn resolve(url: &str) -> Result<Self> {
        let uri: Uri = url
            .parse()
            .with_context(|| format!("invalid URL {url:?}"))?;
        match uri.scheme_str() {
            Some("ws") => {}
            Some("wss") => bail!("{url}: wss:// is not supported by wsgate-bench"),
            _ => bail!("{url}: expected a ws:// URL"),
        }
        let host = uri.host().with_context(|| format!("{url}: no host"))?;
        let host = host.trim_start_matches('[').trim_end_matches(']');
        let port = uri.port_u16().unwrap_or(80);
        let addr = tokio::net::lookup_host((host, port))
            .await
            .with_context(|| format!("resolving {host}:{port}"))?
            .next()
            .with_context(|| format!("{host}:{port} resolves to nothing"))?;
        let authority = uri
            .authority()
            .map(|a| a.as_str().to_owned())
            .unwrap_or_default();
        Ok(Self {
            url: url.to_owned(),
            addr,
            http_base: format!("http://{authority}"),
        })
    }
}

/// Parse a `--source-ips` spec:
/// - `N` (a plain count): `127.0.0.1` … the N-th address after it;
/// - `A-B`: every IPv4 address from A to B inclusive;
/// - `A`: one address (IPv4 or IPv6);
/// - a comma-separated list of the above address forms.
pub fn parse_source_ips(spec: &str) -> Result<Vec<IpAddr>> {
    let spec = spec.trim();
    ensure!(!spec.is_empty(), "empty --source-ips");
    if let Ok(count) = spec.parse::<u32>() {
        ensure!(
            (1..=MAX_SOURCE_IPS as u32).contains(&count),
            "--source-ips count must be 1..={MAX_SOURCE_IPS}"
        );
        let base = u32::from(Ipv4Addr::new(127, 0, 0, 1));
        return Ok((0..count)
            .map(|i| IpAddr::V4(Ipv4Addr::from(base + i)))
            .collect());
    }
    let mut out = Vec::new();
    for item in spec.split(',').map(str::trim).filter(|s| !s.is_empty()) {
        if let Some((a, b)) = item.split_once('-') {
            let a: Ipv4Addr = a
                .trim()
                .parse()
                .with_context(|| format!("bad range start in {item:?}"))?;
            let b: Ipv4Addr = b
                .trim()
                .parse()
                .with_context(|| format!("bad range end in {item:?}"))?;
            let (a, b) = (u32::from(a), u32::from(b));
            ensure!(a <= b, "range {item:?} is reversed");
            ensure!(
                (b - a) as usize + out.len() < MAX_SOURCE_IPS,
                "--source-ips expands to more than {MAX_SOURCE_IPS} addresses"
            );
            out.extend((a..=b).map(|x| IpAddr::V4(Ipv4Addr::from(x))));
        } else {
            let ip: IpAddr = item
                .parse()
                .with_context(|| format!("bad address {item:?}"))?;
            out.push(ip);
        }
    }
    ensure!(!out.is_empty(), "--source-ips {spec:?} names no address");
    ensure!(
        out.len() <= MAX_SOURCE_IPS,
        "--source-ips expands to more than {MAX_SOURCE_IPS} addresses"
    );
    Ok(out)
}

/// Where the i-th connection goes and which source address it binds.
#[derive(Debug, Clone)]
pub struct Targets {
    pub endpoints: Vec<Endpoint>,
    pub source_ips: Vec<IpAddr>,
}

impl Targets {
    pub fn endpoint(&self, i: usize) -> &Endpoint {
        &self.endpoints[i % self.endpoints.len()]
    }

    pub fn source_ip(&self, i: usize) -> Option<IpAddr> {
        (!self.source_ips.is_empty()).then(|| self.source_ips[i % self.source_ips.len()])
    }

    /// Fail when this process cannot hold `sockets` more open files, and
    /// warn when the ephemeral port range is likely too small.
    pub fn check_capacity(&self, sockets: usize) -> Result<()> {
        let limit = crate::proc::open_files_limit()?;
        let max = limit.saturating_sub(FD_RESERVE);
        if sockets as u64 > max {
            bail!(
                "this run needs {sockets} sockets but one process may hold at most {max} \
                 (open-files limit {limit}, {FD_RESERVE} kept in reserve); wsgate-bench does not \
                 raise limits: run several wsgate-bench processes with smaller counts"
            );
        }
        if let Some(ports) = ephemeral_ports() {
            let per_pair = if self.source_ips.is_empty() {
                sockets.div_ceil(self.endpoints.len())
            } else {
                // bind(ip, 0) picks a port per source address.
                sockets.div_ceil(self.source_ips.len())
            };
            if per_pair as u64 > ports {
                eprintln!(
                    "warning: about {per_pair} connections per source address but only {ports} \
                     ephemeral ports: pass --source-ips (e.g. 127.0.0.2-127.0.0.250)"
                );
            }
        }
        Ok(())
    }
}

fn ephemeral_ports() -> Option<u64> {
    let s = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range").ok()?;
    let mut it = s.split_whitespace().map(|x| x.parse::<u64>());
    let (lo, hi) = (it.next()?.ok()?, it.next()?.ok()?);
    Some(hi.saturating_sub(lo) + 1)
}

/// WebSocket settings for client connections: a small eager read buffer so
/// that tens of thousands of idle clients stay cheap.
pub fn ws_config(read_buffer: usize) -> WebSocketConfig {
    WebSocketConfig::default()
        .read_buffer_size(read_buffer)
        .write_buffer_size(0)
}

/// TCP connect (bound to `src` if given) and WebSocket handshake.
pub async fn connect(ep: &Endpoint, src: Option<IpAddr>, cfg: WebSocketConfig) -> Result<Ws> {
    let sock = if ep.addr.is_ipv4() {
        TcpSocket::new_v4()
    } else {
        TcpSocket::new_v6()
    }
    .context("socket()")?;
    if let Some(ip) = src {
        sock.bind(SocketAddr::new(ip, 0))
            .with_context(|| format!("bind to source {ip}"))?;
    }
    let stream = sock
        .connect(ep.addr)
        .await
        .with_context(|| format!("connect to {}", ep.addr))?;
    stream.set_nodelay(true)?;
    let request = ep.url.as_str().into_client_request()?;
    let (ws, _response) = tokio_tungstenite::client_async_with_config(request, stream, Some(cfg))
        .await
        .with_context(|| format!("WebSocket handshake with {}", ep.url))?;
    Ok(ws)
}

/// Send a `subscribe` request and wait for its result. Notifications that
/// arrive meanwhile are ignored (none are expected before the result).
pub async fn subscribe(ws: &mut Ws, id: u64, topics: &[String]) -> Result<()> {
    ws.send(Message::text(subscribe_frame(id, topics))).await?;
    loop {
        let msg = ws
            .next()
            .await
            .ok_or_else(|| anyhow!("connection closed before the subscribe result"))??;
        match msg {
            Message::Text(text) => match scan(text.as_bytes()) {
                Incoming::Response {
                    id: Some(rid),
                    error,
                } if rid == id => {
                    if error {
                        bail!("subscribe failed: {}", error_message(text.as_str()));
                    }
                    return Ok(());
                }
                _ => {}
            },
            Message::Close(frame) => {
                bail!(
                    "server closed during subscribe: {}",
                    close_text(frame.as_ref())
                )
            }
            _ => {}
        }
    }
}

/// Connect, handshake and subscribe within `timeout`, speaking `protocol`.
/// Returns the connection and the decoder for what follows (NATS may have
/// buffered bytes that came after the handshake's answer).
pub async fn open_subscribed(
    ep: &Endpoint,
    src: Option<IpAddr>,
    cfg: WebSocketConfig,
    topics: &[String],
    timeout: Duration,
    protocol: Protocol,
) -> Result<(Ws, Decoder)> {
    tokio::time::timeout(timeout, async {
        let mut ws = connect(ep, src, cfg).await?;
        let mut decoder = protocol.decoder();
        match protocol {
            Protocol::Wsgate => {
                if !topics.is_empty() {
                    subscribe(&mut ws, 1, topics).await?;
                }
            }
            Protocol::Socketio => sio_handshake(&mut ws, topics).await?,
            Protocol::Nats => nats_handshake(&mut ws, &mut decoder, topics).await?,
        }
        Ok((ws, decoder))
    })
    .await
    .map_err(|_| anyhow!("connect+subscribe timed out after {timeout:?}"))?
}

/// The next message that is not a WebSocket control frame; fails on close.
async fn next_data(ws: &mut Ws, during: &str) -> Result<Message> {
    loop {
        let msg = ws
            .next()
            .await
            .ok_or_else(|| anyhow!("connection closed during {during}"))??;
        match msg {
            Message::Close(frame) => bail!(
                "server closed during {during}: {}",
                close_text(frame.as_ref())
            ),
            Message::Text(_) | Message::Binary(_) => return Ok(msg),
            _ => {}
        }
    }
}

/// Engine.IO open, Socket.IO connect to `/`, then (if any topics) the
/// `subscribe` event with ack id 1. Engine.IO pings are answered.
async fn sio_handshake(ws: &mut Ws, topics: &[String]) -> Result<()> {
    // Step 0: wait for the open packet; 1: for the namespace connect;
    // 2: for the subscribe ack.
    let mut step = 0;
    loop {
        let msg = next_data(ws, "the Socket.IO handshake").await?;
        let Message::Text(text) = msg else {
            continue;
        };
        match sio::parse_eio(text.as_str()).map_err(|e| anyhow!(e))? {
            sio::EioPacket::Open(_) if step == 0 => {
                ws.send(Message::text(sio::CONNECT_MAIN)).await?;
                step = 1;
            }
            sio::EioPacket::Ping(probe) => {
                ws.send(Message::text(format!("{}{probe}", sio::PONG)))
                    .await?;
            }
            sio::EioPacket::Close => bail!("Engine.IO close during the handshake"),
            sio::EioPacket::Message(m) => {
                let p = sio::parse_sio(m).map_err(|e| anyhow!(e))?;
                match p.kind {
                    sio::SioKind::Connect if step == 1 && p.nsp == "/" => {
                        if topics.is_empty() {
                            return Ok(());
                        }
                        ws.send(Message::text(sio::subscribe_frame(1, topics)))
                            .await?;
                        step = 2;
                    }
                    sio::SioKind::ConnectError => {
                        bail!("Socket.IO connect refused: {}", p.data)
                    }
                    sio::SioKind::Ack if step == 2 && p.id == Some(1) => {
                        if has_error_key(p.data.as_bytes()) {
                            bail!("subscribe failed: {}", p.data);
                        }
                        return Ok(());
                    }
                    _ => {}
                }
            }
            _ => {}
        }
    }
}

/// CONNECT, SUB each topic, PING; done at the PONG. Bytes after it stay in
/// the decoder.
async fn nats_handshake(ws: &mut Ws, decoder: &mut Decoder, topics: &[String]) -> Result<()> {
    let Decoder::Nats(parser) = decoder else {
        bail!("NATS handshake without a NATS decoder");
    };
    ws.send(Message::binary(nats::connect_frame(topics)))
        .await?;
    loop {
        let msg = next_data(ws, "the NATS handshake").await?;
        let bytes: &[u8] = match &msg {
            Message::Binary(b) => b,
            Message::Text(t) => t.as_bytes(),
            _ => continue,
        };
        parser.push(bytes);
        let mut ping = false;
        while let Some(op) = parser.next_op().map_err(|e| anyhow!(e))? {
            match op {
                nats::Op::Pong => {
                    if ping {
                        ws.send(Message::binary(nats::PONG.to_vec())).await?;
                    }
                    return Ok(());
                }
                nats::Op::Ping => ping = true,
                nats::Op::Err(e) => bail!("NATS: -ERR {}", String::from_utf8_lossy(e)),
                _ => {}
            }
        }
        if ping {
            ws.send(Message::binary(nats::PONG.to_vec())).await?;
        }
    }
}

/// Human text of a close frame.
pub fn close_text(frame: Option<&tokio_tungstenite::tungstenite::protocol::CloseFrame>) -> String {
    match frame {
        Some(f) => format!("{} {}", u16::from(f.code), f.reason.as_str()),
        None => "no close frame".to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn v4(s: &str) -> IpAddr {
        IpAddr::V4(s.parse().unwrap_or(Ipv4Addr::UNSPECIFIED))
    }

    #[test]
    fn source_ip_range() -> Result<()> {
        let ips = parse_source_ips("127.0.0.2-127.0.0.250")?;
        assert_eq!(ips.len(), 249);
        assert_eq!(ips[0], v4("127.0.0.2"));
        assert_eq!(ips[248], v4("127.0.0.250"));
        Ok(())
    }

    #[test]
    fn source_ip_range_across_octets() -> Result<()> {
        let ips = parse_source_ips("127.0.0.254-127.0.1.1")?;
        assert_eq!(
            ips,
            vec![
                v4("127.0.0.254"),
                v4("127.0.0.255"),
                v4("127.0.1.0"),
                v4("127.0.1.1")
            ]
        );
        Ok(())
    }

    #[test]
    fn source_ip_count_and_list() -> Result<()> {
        let ips = parse_source_ips("3")?;
        assert_eq!(ips, vec![v4("127.0.0.1"), v4("127.0.0.2"), v4("127.0.0.3")]);
        let ips = parse_source_ips("127.0.0.9, 127.0.0.2-127.0.0.3,::1")?;
        assert_eq!(ips.len(), 4);
        assert_eq!(ips[3], "::1".parse::<IpAddr>()?);
        Ok(())
    }

    #[test]
    fn source_ip_errors() {
        assert!(parse_source_ips("").is_err());
        assert!(parse_source_ips("0").is_err());
        assert!(parse_source_ips("127.0.0.9-127.0.0.2").is_err());
        assert!(parse_source_ips("127.0.0.1-banana").is_err());
        assert!(parse_source_ips("10.0.0.0-10.255.255.255").is_err());
        assert!(parse_source_ips(",").is_err());
    }

    #[tokio::test]
    async fn endpoint_resolution() -> Result<()> {
        let ep = Endpoint::resolve("ws://127.0.0.1:18080/ws").await?;
        assert_eq!(ep.addr, "127.0.0.1:18080".parse()?);
        assert_eq!(ep.http_base, "http://127.0.0.1:18080");
        let ep = Endpoint::resolve("ws://[::1]/ws").await?;
        assert_eq!(ep.addr.port(), 80);
        assert!(Endpoint::resolve("wss://127.0.0.1/ws").await.is_err());
        assert!(Endpoint::resolve("http://127.0.0.1/ws").await.is_err());
        Ok(())
    }

    #[test]
    fn targets_round_robin() -> Result<()> {
        let ep = |p: u16| Endpoint {
            url: format!("ws://127.0.0.1:{p}/ws"),
            addr: SocketAddr::from(([127, 0, 0, 1], p)),
            http_base: String::new(),
        };
        let t = Targets {
            endpoints: vec![ep(1), ep(2)],
            source_ips: parse_source_ips("127.0.0.2-127.0.0.4")?,
        };
        assert_eq!(t.endpoint(3).addr.port(), 2);
        assert_eq!(t.source_ip(4), Some(v4("127.0.0.3")));
        let none = Targets {
            endpoints: vec![ep(1)],
            source_ips: vec![],
        };
        assert_eq!(none.source_ip(5), None);
        Ok(())
    }
}
