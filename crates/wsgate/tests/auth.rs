//! Authentication and authorization over real sockets: tokens (sources,
//! algorithms, expiry, refresh), topic permissions, HTTP API keys, origins.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::path::PathBuf;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use common::*;
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use serde_json::{Value, json};
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::http::HeaderValue;
use wsgate::Config;
use wsgate::auth::{KeyConfig, Rule, Who};
use wsgate::error::code;
use wsgate_client::{Client, ClientError};

const SECRET: &str = "test-only-secret-0123456789abcdef-xyz";

fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

fn fixture(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(name)
}

fn read_fixture(name: &str) -> Vec<u8> {
    std::fs::read(fixture(name)).unwrap()
}

/// Claims for `sub` valid for `ttl` seconds, plus `extra`.
fn claims(sub: &str, ttl: i64, extra: Value) -> Value {
    let mut c = json!({"sub": sub, "exp": (now() as i64 + ttl) as u64});
    if let (Some(c), Value::Object(extra)) = (c.as_object_mut(), extra) {
        c.extend(extra);
    }
    c
}

fn sign(alg: Algorithm, kid: Option<&str>, key: &EncodingKey, claims: &Value) -> String {
    let mut h = Header::new(alg);
    h.kid = kid.map(String::from);
    jsonwebtoken::encode(&h, claims, key).unwrap()
}

fn hs256(claims: &Value) -> String {
    sign(
        Algorithm::HS256,
        None,
        &EncodingKey::from_secret(SECRET.as_bytes()),
        claims,
    )
}

/// A token for `sub` that may subscribe and publish to `patterns`.
fn token_for(sub: &str, patterns: &[&str]) -> String {
    hs256(&claims(
        sub,
        600,
        json!({"subscribe": patterns, "publish": patterns}),
    ))
}

/// An EC P-256 key that is not the configured one (test-only).
fn other_ec() -> EncodingKey {
    EncodingKey::from_ec_pem(&read_fixture("ec-other-private.pem")).unwrap()
}

fn b64url(bytes: &[u8]) -> String {
    const A: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
    let mut out = String::new();
    for chunk in bytes.chunks(3) {
        let n = chunk
            .iter()
            .enumerate()
            .fold(0u32, |n, (i, b)| n | (*b as u32) << (16 - 8 * i));
        for i in 0..=chunk.len() {
            out.push(A[(n >> (18 - 6 * i) & 63) as usize] as char);
        }
    }
    out
}

/// Secret-only auth, no anonymous access, no clock leeway.
fn secured(c: &mut Config) {
    c.auth.secret = Some(SECRET.into());
    c.auth.anonymous = Some(false);
    c.auth.leeway = Duration::ZERO;
}

/// The refusal of an upgrade: status, body, `WWW-Authenticate`.
#[derive(Debug)]
struct Refused {
    status: u16,
    body: Value,
    www_authenticate: Option<String>,
}

/// Opens a WebSocket to `server` with extra request headers and a query.
async fn upgrade(
    server: &TestServer,
    query: &str,
    headers: &[(&str, &str)],
) -> Result<Ws, Refused> {
    let mut req = format!("{}{query}", server.ws_url())
        .into_client_request()
        .unwrap();
    for (k, v) in headers {
        req.headers_mut().insert(
            tokio_tungstenite::tungstenite::http::HeaderName::from_bytes(k.as_bytes()).unwrap(),
            HeaderValue::from_str(v).unwrap(),
        );
    }
    match tokio::time::timeout(WAIT, tokio_tungstenite::connect_async(req))
        .await
        .expect("upgrade timed out")
    {
        Ok((ws, _)) => Ok(ws),
        Err(tokio_tungstenite::tungstenite::Error::Http(resp)) => Err(Refused {
            status: resp.status().as_u16(),
            body: resp
                .body()
                .as_deref()
                .and_then(|b| serde_json::from_slice(b).ok())
                .unwrap_or(Value::Null),
            www_authenticate: resp
                .headers()
                .get("www-authenticate")
                .map(|v| v.to_str().unwrap().to_string()),
        }),
        Err(e) => panic!("unexpected upgrade error: {e}"),
    }
}

async fn client_with(server: &TestServer, token: &str) -> Client {
    let auth = format!("Bearer {token}");
    Client::from_stream(
        upgrade(server, "", &[("authorization", &auth)])
            .await
            .expect("token accepted"),
    )
}

async fn anonymous(server: &TestServer) -> Client {
    Client::from_stream(upgrade(server, "", &[]).await.expect("anonymous accepted"))
}

/// Asserts a 401 with the JSON error body.
fn assert_401(r: Result<Ws, Refused>, reason: &str) {
    let Err(r) = r else {
        panic!("accepted; expected 401 ({reason})")
    };
    assert_eq!(r.status, 401, "{r:?}");
    assert_eq!(r.body["error"]["code"], code::UNAUTHORIZED, "{r:?}");
    let msg = r.body["error"]["message"].as_str().unwrap();
    assert!(msg.contains(reason), "{msg:?} should mention {reason:?}");
    assert_eq!(r.www_authenticate.as_deref(), Some("Bearer"));
}

fn assert_code(r: Result<impl std::fmt::Debug, ClientError>, want: i32) {
    match r {
        Err(ClientError::Rpc { code, .. }) => assert_eq!(code, want as i64),
        other => panic!("expected error {want}, got {other:?}"),
    }
}

fn forbidden(r: Result<impl std::fmt::Debug, ClientError>) {
    assert_code(r, code::FORBIDDEN)
}

async fn raw_call(ws: &mut Ws, id: u32, method: &str, params: Value) -> Value {
    rpc(
        ws,
        &json!({"jsonrpc": "2.0", "id": id, "method": method, "params": params}).to_string(),
    )
    .await
}

// ------------------------------------------------------------------ tokens

/// A token source: its name, a query string, a header.
type Source<'a> = (&'a str, String, Option<(&'a str, String)>);

#[tokio::test]
async fn token_in_header_query_or_cookie_is_accepted() {
    let server = TestServer::with(|c| {
        secured(c);
        c.auth.cookie = Some("wsgate_token".into());
    })
    .await;
    let t = token_for("alice", &["chat.>"]);
    let sources: [Source; 3] = [
        (
            "header",
            String::new(),
            Some(("authorization", format!("Bearer {t}"))),
        ),
        ("query", format!("?x=1&token={t}"), None),
        (
            "cookie",
            String::new(),
            Some(("cookie", format!("theme=dark; wsgate_token={t}"))),
        ),
    ];
    for (name, query, header) in sources {
        let headers: Vec<(&str, &str)> = header.iter().map(|(k, v)| (*k, v.as_str())).collect();
        let ws = upgrade(&server, &query, &headers)
            .await
            .unwrap_or_else(|r| panic!("{name}: {r:?}"));
        let c = Client::from_stream(ws);
        c.subscribe(&["chat.room1"]).await.unwrap();
        forbidden(c.subscribe(&["orders.eu"]).await);
    }
    // A cookie under another name is no token.
    assert_401(
        upgrade(&server, "", &[("cookie", &format!("other={t}"))]).await,
        "missing token",
    );
    server.stop().await;
}

#[tokio::test]
async fn missing_expired_premature_and_forged_tokens_get_401() {
    let server = TestServer::with(|c| {
        secured(c);
        c.auth.issuer = Some("https://issuer.test".into());
        c.auth.audience = vec!["wsgate".into()];
    })
    .await;
    let good = json!({"iss": "https://issuer.test", "aud": "wsgate"});
    let with = |extra: Value| {
        let mut g = good.clone();
        g.as_object_mut()
            .unwrap()
            .extend(extra.as_object().unwrap().clone());
        g
    };
    // The valid one, for contrast.
    let ok = hs256(&claims("alice", 60, good.clone()));
    upgrade(&server, &format!("?token={ok}"), &[])
        .await
        .unwrap();

    assert_401(upgrade(&server, "", &[]).await, "missing token");
    let expired = hs256(&claims("alice", -5, good.clone()));
    assert_401(
        upgrade(&server, &format!("?token={expired}"), &[]).await,
        "token expired",
    );
    let premature = hs256(&claims("alice", 600, with(json!({"nbf": now() + 300}))));
    assert_401(
        upgrade(&server, &format!("?token={premature}"), &[]).await,
        "not yet valid",
    );
    let forged = sign(
        Algorithm::HS256,
        None,
        &EncodingKey::from_secret(b"another-secret-0123456789abcdef-0000"),
        &claims("alice", 60, good.clone()),
    );
    let wrong_iss = hs256(&claims(
        "alice",
        60,
        with(json!({"iss": "https://evil.test"})),
    ));
    let wrong_aud = hs256(&claims("alice", 60, with(json!({"aud": "other"}))));
    let no_iss = hs256(&claims("alice", 60, json!({"aud": "wsgate"})));
    let no_sub = hs256(&json!({"exp": now() + 60, "iss": "https://issuer.test", "aud": "wsgate"}));
    let no_exp = hs256(&json!({"sub": "alice", "iss": "https://issuer.test", "aud": "wsgate"}));
    let bad_claim = hs256(&claims("alice", 60, with(json!({"subscribe": ["a..b"]}))));
    let mut tampered = ok.clone();
    tampered.insert(ok.len() / 2, 'x');
    for (name, t) in [
        ("forged", forged),
        ("wrong iss", wrong_iss),
        ("wrong aud", wrong_aud),
        ("no iss", no_iss),
        ("no sub", no_sub),
        ("no exp", no_exp),
        ("invalid permission claim", bad_claim),
        ("tampered", tampered),
        ("garbage", "not-a-jwt".into()),
    ] {
        let r = upgrade(&server, "", &[("authorization", &format!("Bearer {t}"))]).await;
        assert!(r.is_err(), "{name} accepted");
        assert_401(r, "invalid token");
    }
    server.stop().await;
}

#[tokio::test]
async fn alg_none_and_hs_rs_confusion_are_refused() {
    let server = TestServer::with(|c| {
        c.auth.anonymous = Some(false);
        c.auth.leeway = Duration::ZERO;
        c.auth.keys = vec![KeyConfig {
            kid: None,
            algorithms: vec![Algorithm::RS256],
            secret: None,
            public_key_file: Some(fixture("rsa-public.pem")),
            public_key: None,
        }];
    })
    .await;
    let c = claims("mallory", 60, json!({"subscribe": [">"]}));
    let rsa = EncodingKey::from_rsa_pem(&read_fixture("rsa-private.pem")).unwrap();
    let good = sign(Algorithm::RS256, None, &rsa, &c);
    upgrade(&server, &format!("?token={good}"), &[])
        .await
        .unwrap();

    // alg "none": an unsigned token.
    let none = format!(
        "{}.{}.",
        b64url(br#"{"alg":"none","typ":"JWT"}"#),
        b64url(c.to_string().as_bytes())
    );
    // HS256 "signed" with the RSA public key as the HMAC secret.
    let confused = sign(
        Algorithm::HS256,
        None,
        &EncodingKey::from_secret(&read_fixture("rsa-public.pem")),
        &c,
    );
    // RS512 with the right key: an algorithm the key is not configured for.
    let other_alg = sign(Algorithm::RS512, None, &rsa, &c);
    for (name, t) in [("none", none), ("confused", confused), ("RS512", other_alg)] {
        let r = upgrade(&server, &format!("?token={t}"), &[]).await;
        assert!(r.is_err(), "{name} accepted");
        assert_401(r, "invalid token");
    }
    server.stop().await;
}

#[tokio::test]
async fn rsa_ec_and_eddsa_keys_verify_by_kid() {
    let key = |kid: &str, alg: Algorithm, file: &str| KeyConfig {
        kid: Some(kid.into()),
        algorithms: vec![alg],
        secret: None,
        public_key_file: Some(fixture(file)),
        public_key: None,
    };
    let server = TestServer::with(|c| {
        c.auth.anonymous = Some(false);
        c.auth.keys = vec![
            key("rsa", Algorithm::RS256, "rsa-public.pem"),
            key("ec", Algorithm::ES256, "ec-public.pem"),
            key("ed", Algorithm::EdDSA, "ed25519-public.pem"),
        ];
        // The EC key also as inline PEM, without a kid.
        c.auth.keys.push(KeyConfig {
            kid: None,
            algorithms: vec![Algorithm::ES256],
            secret: None,
            public_key_file: None,
            public_key: Some(String::from_utf8(read_fixture("ec-public.pem")).unwrap()),
        });
    })
    .await;
    let c = claims("alice", 60, json!({"subscribe": ["x"]}));
    let rsa = EncodingKey::from_rsa_pem(&read_fixture("rsa-private.pem")).unwrap();
    let ec = EncodingKey::from_ec_pem(&read_fixture("ec-private.pem")).unwrap();
    let ed = EncodingKey::from_ed_pem(&read_fixture("ed25519-private.pem")).unwrap();
    for t in [
        sign(Algorithm::RS256, Some("rsa"), &rsa, &c),
        sign(Algorithm::ES256, Some("ec"), &ec, &c),
        sign(Algorithm::EdDSA, Some("ed"), &ed, &c),
        sign(Algorithm::ES256, None, &ec, &c),
    ] {
        let c = client_with(&server, &t).await;
        c.subscribe(&["x"]).await.unwrap();
    }
    for t in [
        // Right key, wrong kid.
        sign(Algorithm::ES256, Some("rsa"), &ec, &c),
        sign(Algorithm::EdDSA, Some("nope"), &ed, &c),
        // Right kid and algorithm, another key.
        sign(Algorithm::ES256, Some("ec"), &other_ec(), &c),
    ] {
        assert_401(
            upgrade(&server, &format!("?token={t}"), &[]).await,
            "invalid token",
        );
    }
    server.stop().await;
}

#[tokio::test]
async fn jwks_file_selects_keys_by_kid_and_is_reloaded_when_it_changes() {
    let dir = std::env::temp_dir().join(format!("wsgate-jwks-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("jwks.json");
    let rsa_jwk: Value = serde_json::from_slice(&read_fixture("rsa-public.jwk.json")).unwrap();
    let oct = |kid: &str, secret: &str| json!({"kty": "oct", "kid": kid, "alg": "HS256", "k": b64url(secret.as_bytes())});
    let s1 = "jwks-secret-one-0123456789abcdef-0000";
    let s2 = "jwks-secret-two-0123456789abcdef-00000000";
    std::fs::write(&path, json!({"keys": [rsa_jwk, oct("h1", s1)]}).to_string()).unwrap();
    let p = path.clone();
    let server = TestServer::with(move |c| {
        c.auth.anonymous = Some(false);
        c.auth.jwks_file = Some(p);
    })
    .await;
    let c = claims("alice", 60, json!({"subscribe": ["x"]}));
    let rsa = EncodingKey::from_rsa_pem(&read_fixture("rsa-private.pem")).unwrap();
    let rs = sign(Algorithm::RS256, Some("rsa-1"), &rsa, &c);
    let h1 = sign(
        Algorithm::HS256,
        Some("h1"),
        &EncodingKey::from_secret(s1.as_bytes()),
        &c,
    );
    let h2 = sign(
        Algorithm::HS256,
        Some("h2"),
        &EncodingKey::from_secret(s2.as_bytes()),
        &c,
    );
    client_with(&server, &rs).await.ping().await.unwrap();
    client_with(&server, &h1).await.ping().await.unwrap();
    assert_401(
        upgrade(&server, &format!("?token={h2}"), &[]).await,
        "invalid token",
    );
    // HS/RS confusion through the JWKS: an HS256 token claiming the RSA kid.
    let confused = sign(
        Algorithm::HS256,
        Some("rsa-1"),
        &EncodingKey::from_secret(&read_fixture("rsa-public.pem")),
        &c,
    );
    assert_401(
        upgrade(&server, &format!("?token={confused}"), &[]).await,
        "invalid token",
    );

    // Rotate: h1 out, h2 in.
    std::fs::write(&path, json!({"keys": [rsa_jwk, oct("h2", s2)]}).to_string()).unwrap();
    client_with(&server, &h2).await.ping().await.unwrap();
    assert_401(
        upgrade(&server, &format!("?token={h1}"), &[]).await,
        "invalid token",
    );
    // A broken file keeps the previous keys.
    std::fs::write(&path, "{not json").unwrap();
    client_with(&server, &h2).await.ping().await.unwrap();
    server.stop().await;
    let _ = std::fs::remove_dir_all(&dir);
}

// ------------------------------------------------------- refresh and expiry

#[tokio::test]
async fn expired_token_closes_the_connection_with_4003_after_the_grace_period() {
    let grace = Duration::from_millis(800);
    let server = TestServer::with(move |c| {
        secured(c);
        c.auth.expiry_grace = grace;
    })
    .await;
    let exp = now() + 2;
    let t = hs256(&json!({"sub": "alice", "exp": exp}));
    let started = SystemTime::now();
    let c = client_with(&server, &t).await;
    c.ping().await.unwrap();
    let close = tokio::time::timeout(WAIT, c.closed_by_server())
        .await
        .expect("closed")
        .expect("with a close frame");
    assert_eq!((close.code, close.reason.as_str()), (4003, "token expired"));
    let closed_at = SystemTime::now();
    let earliest = UNIX_EPOCH + Duration::from_secs(exp) + grace;
    assert!(
        closed_at + Duration::from_millis(50) >= earliest,
        "closed {:?} before exp + grace",
        earliest.duration_since(closed_at)
    );
    assert!(closed_at.duration_since(started).unwrap() < WAIT);
    server.stop().await;
}

#[tokio::test]
async fn refresh_before_expiry_keeps_the_connection() {
    let server = TestServer::with(secured).await;
    let short = hs256(&claims("alice", 2, json!({"subscribe": ["chat.>"]})));
    // Two connections with the same short token; only one refreshes.
    let kept = client_with(&server, &short).await;
    let lapsing = client_with(&server, &short).await;
    let long = hs256(&claims("alice", 600, json!({"subscribe": ["chat.>"]})));
    let r = kept.call("refresh", json!({"token": long})).await.unwrap();
    assert_eq!(r["unsubscribed"], json!([]));
    assert!(r["exp"].as_u64().unwrap() >= now() + 590, "{r}");
    // Once the other one has been closed for expiry, the old deadline has
    // passed: the refreshed connection is still open.
    let close = tokio::time::timeout(WAIT, lapsing.closed_by_server())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(close.code, 4003);
    kept.ping().await.unwrap();
    kept.subscribe(&["chat.x"]).await.unwrap();
    server.stop().await;
}

#[tokio::test]
async fn refresh_needs_a_valid_token_for_the_same_sub() {
    let server = TestServer::with(|c| {
        secured(c);
        c.auth.anonymous = Some(true);
    })
    .await;
    let c = client_with(&server, &token_for("alice", &["chat.>"])).await;
    forbidden(
        c.call("refresh", json!({"token": token_for("bob", &[">"])}))
            .await,
    );
    assert_code(
        c.call(
            "refresh",
            json!({"token": hs256(&claims("alice", -10, json!({})))}),
        )
        .await,
        code::UNAUTHORIZED,
    );
    assert_code(
        c.call("refresh", json!({"token": "junk"})).await,
        code::UNAUTHORIZED,
    );
    assert_code(c.call("refresh", json!({})).await, code::INVALID_PARAMS);
    // Nothing changed: still alice with chat.> only.
    c.subscribe(&["chat.x"]).await.unwrap();
    forbidden(c.subscribe(&["orders.x"]).await);
    // An anonymous connection has no identity to refresh.
    let anon = anonymous(&server).await;
    forbidden(
        anon.call("refresh", json!({"token": token_for("alice", &[">"])}))
            .await,
    );
    server.stop().await;
}

#[tokio::test]
async fn refresh_updates_permissions_and_drops_subscriptions_no_longer_allowed() {
    let server = TestServer::with(secured).await;
    let mut c = client_with(&server, &token_for("alice", &["chat.>", "news.>"])).await;
    c.subscribe(&["chat.a", "news.*"]).await.unwrap();
    let narrower = token_for("alice", &["chat.>", "sports.>"]);
    let r = c.call("refresh", json!({"token": narrower})).await.unwrap();
    assert_eq!(r["unsubscribed"], json!(["news.*"]));
    forbidden(c.subscribe(&["news.x"]).await);
    c.subscribe(&["sports.x"]).await.unwrap();
    // news.* no longer delivers; chat.a still does.
    let publisher = client_with(&server, &token_for("svc", &[">"])).await;
    publisher.publish("news.today", &1).await.unwrap();
    publisher.publish("chat.a", &2).await.unwrap();
    let n = next(&mut c).await;
    assert_eq!((n.topic(), n.data()), (Some("chat.a"), Some(&json!(2))));
    server.stop().await;
}

// ------------------------------------------------------------- permissions

#[tokio::test]
async fn claims_grant_exact_and_wildcard_topics() {
    let server = TestServer::with(secured).await;
    let t = hs256(&claims(
        "alice",
        600,
        json!({"subscribe": ["chat.>", "orders.eu"], "publish": ["chat.*"]}),
    ));
    let mut c = client_with(&server, &t).await;
    for ok in [
        "chat.room1",
        "chat.*",
        "chat.>",
        "chat.*.thread",
        "orders.eu",
    ] {
        c.subscribe(&[ok])
            .await
            .unwrap_or_else(|e| panic!("{ok}: {e}"));
    }
    for denied in ["orders.*", "orders.>", ">", "*.room1", "chat", "orders.us"] {
        forbidden(c.subscribe(&[denied]).await);
    }
    // All or nothing: one denied pattern means nothing from the call.
    forbidden(c.subscribe(&["orders.eu.x", "orders.us"]).await);
    c.publish("chat.room1", &"mine").await.unwrap();
    forbidden(c.publish("chat.room1.thread", &1).await);
    forbidden(c.publish("orders.eu", &1).await);
    // Only the allowed publication arrived.
    let n = next(&mut c).await;
    assert_eq!(n.topic(), Some("chat.room1"));

    // History needs read permission, checked before the backbone is asked:
    // denied → -32001; allowed → the embedded broker keeps none (-32004).
    forbidden(
        c.call("history", json!({"topic": "orders.us", "limit": 1}))
            .await,
    );
    match c
        .call("history", json!({"topic": "orders.eu", "limit": 1}))
        .await
    {
        Err(wsgate_client::ClientError::Rpc { code: k, .. }) => {
            assert_eq!(k, code::BACKBONE_UNAVAILABLE as i64)
        }
        other => panic!("{other:?}"),
    }

    // Denied subscriptions deliver nothing.
    let mut raw = upgrade(&server, &format!("?token={t}"), &[]).await.unwrap();
    let r = raw_call(
        &mut raw,
        1,
        "subscribe",
        json!({"topics": ["chat.x", "secret.x"]}),
    )
    .await;
    assert_eq!(r["error"]["code"], code::FORBIDDEN, "{r}");
    let admin = client_with(&server, &token_for("admin", &[">"])).await;
    admin.publish("chat.x", &"not for raw").await.unwrap();
    admin.publish("secret.x", &"not for raw").await.unwrap();
    let r = raw_call(&mut raw, 2, "ping", Value::Null).await;
    assert_eq!(r["result"], "pong", "nothing was delivered before: {r}");
    server.stop().await;
}

fn namespace_rules(c: &mut Config) {
    secured(c);
    c.auth.anonymous = Some(true);
    c.auth.rules = vec![
        Rule {
            pattern: "public.>".into(),
            subscribe: Who::Anyone,
            publish: Who::Authenticated,
        },
        Rule {
            pattern: "user.{sub}.>".into(),
            subscribe: Who::Authenticated,
            publish: Who::Authenticated,
        },
    ];
}

#[tokio::test]
async fn namespace_rules_with_sub_templating_and_anonymous_access() {
    let server = TestServer::with(namespace_rules).await;
    // Anonymous: only what "anyone" gets.
    let anon = anonymous(&server).await;
    anon.subscribe(&["public.news", "public.>"]).await.unwrap();
    forbidden(anon.subscribe(&["user.alice.inbox"]).await);
    forbidden(anon.subscribe(&[">"]).await);
    forbidden(anon.publish("public.news", &1).await);
    forbidden(anon.broadcast(&1).await);

    // alice (no claims): her own namespace and public.
    let mut alice = client_with(&server, &hs256(&claims("alice", 600, json!({})))).await;
    alice
        .subscribe(&["user.alice.>", "user.alice.*.x"])
        .await
        .unwrap();
    for denied in ["user.bob.inbox", "user.*.inbox", "user.>", "user.alice"] {
        forbidden(alice.subscribe(&[denied]).await);
    }
    alice.publish("public.news", &"hello").await.unwrap();
    forbidden(alice.publish("user.bob.inbox", &1).await);

    // bob writes into his own namespace only.
    let bob = client_with(&server, &hs256(&claims("bob", 600, json!({})))).await;
    forbidden(bob.publish("user.alice.inbox", &"spoof").await);
    bob.publish("user.bob.outbox", &1).await.unwrap();
    let admin = client_with(&server, &token_for("admin", &[">"])).await;
    admin
        .publish("user.alice.inbox", &"for alice")
        .await
        .unwrap();
    let n = next(&mut alice).await;
    assert_eq!(
        (n.topic(), n.data()),
        (Some("user.alice.inbox"), Some(&json!("for alice")))
    );

    // Subs that are not plain tokens get no personal namespace, and cannot
    // reach anyone else's.
    for sub in ["alice.x", "*", ">", "a.>"] {
        let c = client_with(&server, &hs256(&claims(sub, 600, json!({})))).await;
        for denied in ["user.alice.x", "user.alice.>", "user.*.>", "user.>", ">"] {
            forbidden(c.subscribe(&[denied]).await);
        }
        forbidden(c.publish("user.alice.x.inbox", &1).await);
        c.subscribe(&["public.x"]).await.unwrap();
    }
    server.stop().await;
}

#[tokio::test]
async fn broadcast_needs_its_own_permission() {
    let server = TestServer::with(secured).await;
    let plain = client_with(&server, &token_for("alice", &[">"])).await;
    forbidden(plain.broadcast(&"no").await);
    let mut listener = client_with(&server, &token_for("bob", &[])).await;
    let allowed = client_with(
        &server,
        &hs256(&claims("ops", 600, json!({"broadcast": true}))),
    )
    .await;
    allowed.broadcast(&"maintenance").await.unwrap();
    let n = next(&mut listener).await;
    assert_eq!(
        (n.method.as_str(), n.params["data"].clone()),
        ("broadcast", json!("maintenance"))
    );
    server.stop().await;

    // Or configured for every authenticated connection.
    let server = TestServer::with(|c| {
        secured(c);
        c.auth.broadcast = Who::Authenticated;
    })
    .await;
    client_with(&server, &token_for("alice", &[]))
        .await
        .broadcast(&1)
        .await
        .unwrap();
    server.stop().await;
}

#[tokio::test]
async fn without_auth_configured_everything_is_allowed_and_tokens_are_ignored() {
    let server = TestServer::start().await;
    let c = anonymous(&server).await;
    c.subscribe(&[">"]).await.unwrap();
    c.publish("any.topic", &1).await.unwrap();
    c.broadcast(&1).await.unwrap();
    let with_token = upgrade(&server, "?token=whatever", &[]).await;
    assert!(with_token.is_ok());
    server.stop().await;
}

// ---------------------------------------------------------- HTTP API keys

#[tokio::test]
async fn http_api_requires_a_configured_key() {
    let server = TestServer::with(|c| {
        c.auth.api_keys = vec![
            "old-api-key-0123456789".into(),
            "new-api-key-0123456789".into(),
        ];
    })
    .await;
    let mut sub = server.client().await;
    sub.subscribe(&["api.>"]).await.unwrap();
    let http = reqwest::Client::new();
    let post = |path: &str, key: Option<&str>, body: Value| {
        let mut req = http.post(server.http(path)).json(&body);
        if let Some(k) = key {
            req = req.header("authorization", format!("Bearer {k}"));
        }
        req.send()
    };
    for key in [
        None,
        Some("wrong-api-key-0123456789"),
        Some("old-api-key-012345678"),
    ] {
        let r = post("/api/publish", key, json!({"topic": "api.leak", "data": 1}))
            .await
            .unwrap();
        assert_eq!(r.status(), 401, "{key:?}");
        assert_eq!(r.headers()["www-authenticate"], "Bearer");
        let body: Value = r.json().await.unwrap();
        assert_eq!(body["error"]["code"], code::UNAUTHORIZED);
        let r = post(
            "/api/broadcast",
            key,
            json!({"topics": ["api.leak"], "data": 1}),
        )
        .await
        .unwrap();
        assert_eq!(r.status(), 401, "{key:?}");
    }
    // Both keys of a rotation work.
    for (i, key) in ["old-api-key-0123456789", "new-api-key-0123456789"]
        .iter()
        .enumerate()
    {
        let r = post(
            "/api/publish",
            Some(key),
            json!({"topic": "api.ok", "data": i}),
        )
        .await
        .unwrap();
        assert_eq!(r.status(), 200);
    }
    // Nothing from the refused calls was published.
    for i in 0..2 {
        let n = next(&mut sub).await;
        assert_eq!((n.topic(), n.data()), (Some("api.ok"), Some(&json!(i))));
    }
    server.stop().await;
}

#[tokio::test]
async fn http_api_is_disabled_without_keys_when_anonymous_access_is_off() {
    let server = TestServer::with(secured).await;
    let r = reqwest::Client::new()
        .post(server.http("/api/publish"))
        .json(&json!({"topic": "a", "data": 1}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);
    server.stop().await;
}

// ----------------------------------------------------------------- origins

#[tokio::test]
async fn origins_outside_the_allowlist_get_403() {
    let server = TestServer::with(|c| {
        c.auth.allowed_origins = vec!["https://app.example.com".into(), "*.example.org".into()];
    })
    .await;
    for ok in ["https://app.example.com", "https://chat.example.org"] {
        upgrade(&server, "", &[("origin", ok)])
            .await
            .unwrap_or_else(|r| panic!("{ok}: {r:?}"));
    }
    upgrade(&server, "", &[])
        .await
        .expect("no Origin: not a browser");
    for bad in [
        "https://evil.example.net",
        "http://app.example.com",
        "null",
        "https://example.org",
    ] {
        let Err(r) = upgrade(&server, "", &[("origin", bad)]).await else {
            panic!("{bad} accepted")
        };
        assert_eq!(r.status, 403, "{bad}");
        assert_eq!(r.body["error"]["code"], code::FORBIDDEN);
    }
    server.stop().await;
}

#[tokio::test]
async fn origin_is_checked_before_the_token() {
    let server = TestServer::with(|c| {
        secured(c);
        c.auth.allowed_origins = vec!["https://app.example.com".into()];
    })
    .await;
    let t = token_for("alice", &[">"]);
    let r = upgrade(
        &server,
        &format!("?token={t}"),
        &[("origin", "https://evil.test")],
    )
    .await;
    assert_eq!(r.err().unwrap().status, 403);
    upgrade(
        &server,
        &format!("?token={t}"),
        &[("origin", "https://app.example.com")],
    )
    .await
    .unwrap();
    server.stop().await;
}
