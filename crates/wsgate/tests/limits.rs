//! Limits over real sockets: the per-connection request rate (-32002, then
//! 4008), per-IP and per-user connection limits and the per-IP upgrade rate
//! (429 with Retry-After), the idle timeout (4009) and memory-pressure
//! admission (503). Every limit is off by default; each test turns on the
//! one it checks.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use common::*;
use serde_json::{Value, json};
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::http::HeaderValue;
use wsgate::Config;
use wsgate::error::code;

const SECRET: &str = "test-only-secret-0123456789abcdef-xyz";

/// A refused upgrade: status, `Retry-After`, JSON body (or null).
#[derive(Debug)]
struct Refused {
    status: u16,
    retry_after: Option<u64>,
    body: Value,
}

async fn upgrade(server: &TestServer, query: &str) -> Result<Ws, Refused> {
    let req = format!("{}{query}", server.ws_url())
        .into_client_request()
        .unwrap();
    upgrade_req(req).await
}

async fn upgrade_req(
    req: tokio_tungstenite::tungstenite::handshake::client::Request,
) -> Result<Ws, Refused> {
    match tokio::time::timeout(WAIT, tokio_tungstenite::connect_async(req))
        .await
        .expect("upgrade timed out")
    {
        Ok((ws, _)) => Ok(ws),
        Err(tokio_tungstenite::tungstenite::Error::Http(resp)) => Err(Refused {
            status: resp.status().as_u16(),
            retry_after: resp
                .headers()
                .get("retry-after")
                .map(|v| v.to_str().unwrap().parse().unwrap()),
            body: resp
                .body()
                .as_deref()
                .and_then(|b| serde_json::from_slice(b).ok())
                .unwrap_or(Value::Null),
        }),
        Err(e) => panic!("unexpected upgrade error: {e}"),
    }
}

fn assert_429(r: Result<Ws, Refused>, reason: &str) -> u64 {
    let Err(r) = r else {
        panic!("accepted; expected 429 ({reason})")
    };
    assert_eq!(r.status, 429, "{r:?}");
    assert_eq!(r.body["error"]["code"], code::RATE_LIMITED, "{r:?}");
    let msg = r.body["error"]["message"].as_str().unwrap();
    assert!(msg.contains(reason), "{msg:?} should mention {reason:?}");
    let after = r.retry_after.expect("Retry-After");
    assert!(after >= 1, "{r:?}");
    after
}

async fn refused_metric(server: &TestServer, reason: &str) -> f64 {
    server
        .metric(&format!(
            "wsgate_upgrades_refused_total{{reason=\"{reason}\"}}"
        ))
        .await
}

fn ping(id: u64) -> String {
    json!({"jsonrpc": "2.0", "id": id, "method": "ping"}).to_string()
}

// ------------------------------------------------------------ message rate

#[tokio::test]
async fn requests_over_the_rate_get_32002_and_the_connection_stays() {
    let server = TestServer::with(|c| {
        c.limits.message_rate = 2.0;
        c.limits.message_burst = 5;
        c.limits.rate_limit_close_after = 0;
    })
    .await;
    let mut ws = server.raw().await;
    // 20 pipelined requests: the burst passes, the rest is refused (a
    // slow machine may refill a token or two meanwhile).
    for id in 0..20 {
        send(&mut ws, &ping(id)).await;
    }
    let mut ok = 0;
    let mut limited = 0;
    for id in 0..20u64 {
        let r = recv_json(&mut ws).await;
        assert_eq!(r["id"], id, "responses keep request order: {r}");
        if r["result"] == "pong" {
            ok += 1;
        } else {
            assert_eq!(r["error"]["code"], code::RATE_LIMITED, "{r}");
            assert!(
                r["error"]["message"]
                    .as_str()
                    .unwrap()
                    .starts_with("rate limited")
            );
            limited += 1;
        }
        if id < 5 {
            assert_eq!(r["result"], "pong", "the burst passes: {r}");
        }
    }
    assert!(ok >= 5 && limited >= 10, "ok {ok}, limited {limited}");
    assert_eq!(
        server.metric("wsgate_rate_limited_total").await,
        limited as f64
    );
    // The bucket refills: calls pass again on the same connection.
    let mut id = 100;
    loop {
        let r = rpc(&mut ws, &ping(id)).await;
        id += 1;
        if r["result"] == "pong" {
            break;
        }
    }
    // Notifications that are refused are not answered, as always.
    send(&mut ws, r#"{"jsonrpc":"2.0","method":"ping"}"#).await;
    let r = rpc(&mut ws, &ping(1000)).await;
    assert_eq!(r["id"], 1000, "{r}");
    server.stop().await;
}

#[tokio::test]
async fn batch_entries_count_one_by_one() {
    let server = TestServer::with(|c| {
        c.limits.message_rate = 0.1;
        c.limits.message_burst = 3;
    })
    .await;
    let mut ws = server.raw().await;
    let batch: Vec<Value> = (0..8)
        .map(|id| json!({"jsonrpc": "2.0", "id": id, "method": "ping"}))
        .collect();
    let r = rpc(&mut ws, &Value::Array(batch).to_string()).await;
    let r = r.as_array().unwrap();
    assert_eq!(r.len(), 8);
    for (i, entry) in r.iter().enumerate() {
        if i < 3 {
            assert_eq!(entry["result"], "pong", "{entry}");
        } else {
            assert_eq!(entry["error"]["code"], code::RATE_LIMITED, "{entry}");
        }
    }
    // Binary frames and unparsable frames count too.
    send(&mut ws, "not json").await;
    let r = recv_json(&mut ws).await;
    assert_eq!(r["error"]["code"], code::RATE_LIMITED, "{r}");
    server.stop().await;
}

#[tokio::test]
async fn persistent_abuse_closes_with_4008_and_others_keep_receiving() {
    let server = TestServer::with(|c| {
        c.limits.message_rate = 1.0;
        c.limits.message_burst = 1;
        c.limits.rate_limit_close_after = 10;
        c.limits.rate_limit_window = Duration::from_secs(60);
    })
    .await;
    let mut by = server.client().await;
    by.subscribe(&["bystander"]).await.unwrap();
    let mut ws = server.raw().await;
    for id in 0..50 {
        if tokio::time::timeout(
            WAIT,
            futures_util::SinkExt::send(
                &mut ws,
                tokio_tungstenite::tungstenite::Message::text(ping(id)),
            ),
        )
        .await
        .expect("send")
        .is_err()
        {
            break;
        }
    }
    assert_eq!(recv_close(&mut ws).await, 4008);
    server
        .wait_metric("wsgate_rate_limit_disconnects_total", |v| v == 1.0)
        .await;
    assert!(server.metric("wsgate_rate_limited_total").await >= 10.0);
    // Another connection has its own bucket. (The bystander's subscribe
    // took its one token; publish from a fresh connection.)
    let p = server.client().await;
    p.publish("bystander", &"still here").await.unwrap();
    assert_eq!(next(&mut by).await.data(), Some(&json!("still here")));
    server.stop().await;
}

// ------------------------------------------------------ connections per IP

#[tokio::test]
async fn connections_per_ip_are_capped_with_429() {
    let server = TestServer::with(|c| c.limits.max_connections_per_ip = 3).await;
    let a = upgrade(&server, "").await.unwrap();
    let _b = upgrade(&server, "").await.unwrap();
    let mut c = Client(upgrade(&server, "").await.unwrap());
    let after = assert_429(
        upgrade(&server, "").await,
        "too many connections from this address",
    );
    assert_eq!(after, 5);
    assert_eq!(refused_metric(&server, "ip_connections").await, 1.0);
    assert_eq!(
        server.metric("wsgate_rejected_connections_total").await,
        1.0
    );
    // Existing connections are not affected.
    let r = rpc(&mut c.0, &ping(1)).await;
    assert_eq!(r["result"], "pong");
    // A slot frees up when a connection from the address closes.
    drop(a);
    server.wait_metric("wsgate_connections", |v| v == 2.0).await;
    let mut d = upgrade(&server, "").await.unwrap();
    assert_eq!(rpc(&mut d, &ping(2)).await["result"], "pong");
    server.stop().await;
}

/// A named wrapper so the test reads as "a client".
struct Client(Ws);

#[tokio::test]
async fn upgrade_rate_per_ip_answers_429_with_retry_after() {
    let server = TestServer::with(|c| {
        c.limits.ip_connection_rate = 0.2;
        c.limits.ip_connection_burst = 3;
    })
    .await;
    let mut kept = Vec::new();
    for _ in 0..3 {
        kept.push(upgrade(&server, "").await.unwrap());
    }
    let after = assert_429(
        upgrade(&server, "").await,
        "too many connection attempts from this address",
    );
    assert!(
        (1..=5).contains(&after),
        "one token refills in 5 s: {after}"
    );
    assert_eq!(refused_metric(&server, "ip_rate").await, 1.0);
    // Plain HTTP is not counted, and the rate refills.
    assert_eq!(
        reqwest::get(server.http("/healthz"))
            .await
            .unwrap()
            .status(),
        200
    );
    let deadline = tokio::time::Instant::now() + WAIT;
    let mut ws = loop {
        match upgrade(&server, "").await {
            Ok(ws) => break ws,
            Err(r) => assert_eq!(r.status, 429, "{r:?}"),
        }
        assert!(tokio::time::Instant::now() < deadline, "never refilled");
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert_eq!(rpc(&mut ws, &ping(1)).await["result"], "pong");
    server.stop().await;
}

#[tokio::test]
async fn rate_limited_upgrades_are_refused_before_the_token_is_checked() {
    let server = TestServer::with(|c| {
        secure(c);
        c.limits.ip_connection_rate = 0.1;
        c.limits.ip_connection_burst = 1;
    })
    .await;
    // The first attempt spends the token (and fails on its token: 401).
    let first = upgrade(&server, "?token=garbage").await.unwrap_err();
    assert_eq!(first.status, 401);
    // The second is refused for its rate, not its token.
    assert_429(upgrade(&server, "?token=garbage").await, "attempts");
    assert_eq!(refused_metric(&server, "token").await, 1.0);
    assert_eq!(refused_metric(&server, "ip_rate").await, 1.0);
    server.stop().await;
}

// ---------------------------------------------------- connections per user

fn secure(c: &mut Config) {
    c.auth.secret = Some(SECRET.into());
    c.auth.anonymous = Some(true);
}

fn token(sub: &str) -> String {
    let exp = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
        + 600;
    jsonwebtoken::encode(
        &jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256),
        &json!({"sub": sub, "exp": exp}),
        &jsonwebtoken::EncodingKey::from_secret(SECRET.as_bytes()),
    )
    .unwrap()
}

#[tokio::test]
async fn connections_per_user_are_capped_and_anonymous_ones_are_not_counted() {
    let server = TestServer::with(|c| {
        secure(c);
        c.limits.max_connections_per_user = 2;
    })
    .await;
    let alice = token("alice");
    let a1 = upgrade(&server, &format!("?token={alice}")).await.unwrap();
    let _a2 = upgrade(&server, &format!("?token={alice}")).await.unwrap();
    // A third for alice, even with a fresh token and another header: 429.
    let mut req = server.ws_url().into_client_request().unwrap();
    req.headers_mut().insert(
        "authorization",
        HeaderValue::from_str(&format!("Bearer {}", token("alice"))).unwrap(),
    );
    assert_429(upgrade_req(req).await, "too many connections for this user");
    assert_eq!(refused_metric(&server, "user_connections").await, 1.0);
    // Other users and anonymous connections are not affected.
    let bob = token("bob");
    let _b = upgrade(&server, &format!("?token={bob}")).await.unwrap();
    let mut anon = Vec::new();
    for _ in 0..3 {
        anon.push(upgrade(&server, "").await.unwrap());
    }
    // Alice gets a slot back when one of hers closes.
    drop(a1);
    server.wait_metric("wsgate_connections", |v| v == 5.0).await;
    let mut a3 = upgrade(&server, &format!("?token={alice}")).await.unwrap();
    assert_eq!(rpc(&mut a3, &ping(1)).await["result"], "pong");
    server.stop().await;
}

// ------------------------------------------------------------ idle timeout

#[tokio::test]
async fn idle_connections_are_closed_with_4009_even_when_they_answer_pings() {
    let server = TestServer::with(|c| {
        c.limits.idle_timeout = Duration::from_secs(2);
        c.websocket.ping_interval = Duration::from_millis(100);
    })
    .await;
    // This one only answers pings (tungstenite does so while reading).
    let mut idle = server.raw().await;
    let started = tokio::time::Instant::now();
    // This one sends a request every 100 ms.
    let mut busy = server.raw().await;
    let busy_task = tokio::spawn(async move {
        for id in 0..40 {
            let r = rpc(&mut busy, &ping(id)).await;
            assert_eq!(r["result"], "pong", "{r}");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        busy
    });
    assert_eq!(recv_close(&mut idle).await, 4009);
    assert!(started.elapsed() >= Duration::from_millis(1900));
    assert_eq!(server.metric("wsgate_idle_timeouts_total").await, 1.0);
    assert_eq!(server.metric("wsgate_ping_timeouts_total").await, 0.0);
    let mut busy = busy_task.await.unwrap();
    assert_eq!(rpc(&mut busy, &ping(99)).await["result"], "pong");
    server.stop().await;
}

// ---------------------------------------------------------- memory pressure

#[tokio::test]
async fn memory_pressure_refuses_upgrades_with_503_and_keeps_http() {
    // Any process is above one byte of resident memory.
    let server = TestServer::with(|c| c.limits.max_memory = 1).await;
    let r = upgrade(&server, "").await.unwrap_err();
    assert_eq!(r.status, 503, "{r:?}");
    assert_eq!(r.retry_after, Some(5));
    assert_eq!(refused_metric(&server, "memory").await, 1.0);
    assert!(server.metric("wsgate_memory_rss_bytes").await > 1e6);
    assert_eq!(
        reqwest::get(server.http("/healthz"))
            .await
            .unwrap()
            .status(),
        200
    );
    server.stop().await;
    // A ceiling far above the process: accepted.
    let server = TestServer::with(|c| c.limits.max_memory = 1 << 50).await;
    let mut ws = upgrade(&server, "").await.unwrap();
    assert_eq!(rpc(&mut ws, &ping(1)).await["result"], "pong");
    server.stop().await;
}

// -------------------------------------------------------------- validation

#[test]
fn limits_are_off_by_default_and_validated() {
    let d = Config::default();
    assert_eq!(d.limits.message_rate, 0.0);
    assert_eq!(d.limits.max_connections_per_ip, 0);
    assert_eq!(d.limits.ip_connection_rate, 0.0);
    assert_eq!(d.limits.max_connections_per_user, 0);
    assert!(d.limits.idle_timeout.is_zero());
    assert_eq!(d.limits.max_memory, 0);
    let bad = |f: fn(&mut Config)| {
        let mut c = Config::default();
        f(&mut c);
        c.validate().unwrap_err().to_string()
    };
    assert!(bad(|c| c.limits.message_rate = -1.0).contains("message_rate"));
    assert!(bad(|c| c.limits.ip_connection_rate = f64::NAN).contains("ip_connection_rate"));
    assert!(bad(|c| c.limits.idle_timeout = Duration::from_millis(10)).contains("idle_timeout"));
    assert!(
        bad(|c| {
            c.limits.message_rate = 1.0;
            c.limits.rate_limit_window = Duration::ZERO;
        })
        .contains("rate_limit_window")
    );
    let toml = "[limits]\nmessage_rate = 50\nmessage_burst = 100\nidle_timeout = \"5m\"\nmax_memory = 1073741824\n";
    let c: Config = toml::from_str(toml).unwrap();
    assert_eq!(c.limits.message_rate, 50.0);
    assert_eq!(c.limits.idle_timeout, Duration::from_secs(300));
    c.validate().unwrap();
}
