//! The HTTP API, health, readiness, metrics and the chat page.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::*;
use serde_json::{Value, json};
use wsgate::error::code;

async fn post(server: &TestServer, path: &str, body: impl Into<reqwest::Body>) -> (u16, Value) {
    let resp = reqwest::Client::new()
        .post(server.http(path))
        .header("content-type", "application/json")
        .body(body)
        .send()
        .await
        .unwrap();
    let status = resp.status().as_u16();
    let ct = resp
        .headers()
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_string();
    let text = resp.text().await.unwrap();
    assert!(
        ct.starts_with("application/json"),
        "{path}: content-type {ct:?} for {text}"
    );
    (status, serde_json::from_str(&text).unwrap())
}

#[tokio::test]
async fn publish_over_http() {
    let server = TestServer::start().await;
    let mut c = server.client().await;
    c.subscribe(&["orders.*"]).await.unwrap();
    let (status, body) = post(
        &server,
        "/api/publish",
        r#"{"topic":"orders.eu","data":{"id":7}}"#,
    )
    .await;
    assert_eq!((status, body), (200, json!({})));
    let n = next(&mut c).await;
    assert_eq!(n.topic(), Some("orders.eu"));
    assert_eq!(n.data(), Some(&json!({"id": 7})));
    server.stop().await;
}

#[tokio::test]
async fn broadcast_over_http_to_many_topics() {
    let server = TestServer::start().await;
    let mut a = server.client().await;
    let mut b = server.client().await;
    a.subscribe(&["t.a"]).await.unwrap();
    b.subscribe(&["t.b"]).await.unwrap();
    let (status, body) = post(
        &server,
        "/api/broadcast",
        r#"{"topics":["t.a","t.b","t.nobody"],"data":"news"}"#,
    )
    .await;
    assert_eq!((status, body), (200, json!({"topics": 3})));
    assert_eq!(next(&mut a).await.topic(), Some("t.a"));
    assert_eq!(next(&mut b).await.topic(), Some("t.b"));
    server.stop().await;
}

#[tokio::test]
async fn bad_input_gets_clear_4xx_json_errors_and_publishes_nothing() {
    let server = TestServer::with(|c| c.limits.max_topics_per_request = 2).await;
    let mut c = server.client().await;
    c.subscribe(&[">"]).await.unwrap();
    let cases: Vec<(&str, String, u16, i32)> = vec![
        ("/api/publish", "{not json".into(), 400, code::PARSE_ERROR),
        (
            "/api/publish",
            r#"{"topic":"a"}"#.into(),
            400,
            code::INVALID_PARAMS,
        ),
        (
            "/api/publish",
            r#"{"topic":"a.*","data":1}"#.into(),
            400,
            code::INVALID_PARAMS,
        ),
        (
            "/api/publish",
            r#"{"topic":"a","data":1,"x":2}"#.into(),
            400,
            code::INVALID_PARAMS,
        ),
        (
            "/api/publish",
            r#"{"topic":"","data":1}"#.into(),
            400,
            code::INVALID_PARAMS,
        ),
        (
            "/api/publish",
            format!(r#"{{"topic":"a","data":"{}"}}"#, "z".repeat(70_000)),
            413,
            code::INVALID_PARAMS,
        ),
        (
            "/api/broadcast",
            r#"{"topics":[],"data":1}"#.into(),
            400,
            code::INVALID_PARAMS,
        ),
        (
            "/api/publish",
            format!(
                r#"{{"topic":"a","data":{}{}}}"#,
                "[".repeat(100),
                "]".repeat(100)
            ),
            400,
            code::INVALID_PARAMS,
        ),
        (
            "/api/broadcast",
            r#"{"topics":["a","b","c"],"data":1}"#.into(),
            400,
            code::INVALID_PARAMS,
        ),
        // All or nothing: "ok" is not published because "b c" is invalid.
        (
            "/api/broadcast",
            r#"{"topics":["ok","b c"],"data":1}"#.into(),
            400,
            code::INVALID_PARAMS,
        ),
    ];
    for (path, body, status, want) in cases {
        let (s, b) = post(&server, path, body.clone()).await;
        assert_eq!(s, status, "{path} {} -> {b}", &body[..body.len().min(60)]);
        assert_eq!(b["error"]["code"], want, "{b}");
        assert!(
            b["error"]["message"]
                .as_str()
                .is_some_and(|m| !m.is_empty())
        );
    }
    // Nothing was delivered: the next notification is this marker.
    post(&server, "/api/publish", r#"{"topic":"marker","data":0}"#).await;
    assert_eq!(next(&mut c).await.topic(), Some("marker"));
    server.stop().await;
}

#[tokio::test]
async fn health_readiness_and_metrics() {
    let server = TestServer::start().await;
    let r = reqwest::get(server.http("/healthz")).await.unwrap();
    assert_eq!(r.status(), 200);
    let r = reqwest::get(server.http("/readyz")).await.unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.json::<Value>().await.unwrap()["broker"], "memory");

    assert_eq!(server.metric("wsgate_connections").await, 0.0);
    let c = server.client().await;
    c.subscribe(&["m.a", "m.*"]).await.unwrap();
    assert_eq!(server.metric("wsgate_connections").await, 1.0);
    assert_eq!(
        server.metric("wsgate_connections_accepted_total").await,
        1.0
    );
    assert_eq!(server.metric("wsgate_subscriptions").await, 2.0);
    assert_eq!(server.metric("wsgate_topics").await, 2.0);
    c.publish("m.a", &"x").await.unwrap();
    server
        .wait_metric("wsgate_messages_out_total", |v| v >= 3.0)
        .await;
    assert_eq!(server.metric("wsgate_publications_total").await, 1.0);
    assert!(server.metric("wsgate_messages_in_total").await >= 2.0);
    assert!(server.metric("wsgate_bytes_in_total").await > 50.0);
    assert!(server.metric("wsgate_bytes_out_total").await > 50.0);
    assert_eq!(
        server.metric("wsgate_publish_to_write_seconds_count").await,
        1.0
    );
    c.close().await;
    server.wait_metric("wsgate_connections", |v| v == 0.0).await;
    assert_eq!(server.metric("wsgate_subscriptions").await, 0.0);
    assert_eq!(server.metric("wsgate_topics").await, 0.0);
    server.stop().await;
}

#[tokio::test]
async fn chat_page_is_served() {
    let server = TestServer::start().await;
    let r = reqwest::get(server.http("/")).await.unwrap();
    assert_eq!(r.status(), 200);
    assert!(
        r.headers()["content-type"]
            .to_str()
            .unwrap()
            .starts_with("text/html")
    );
    let body = r.text().await.unwrap();
    assert!(body.contains("<html") && body.contains("subscribe"));
    let r = reqwest::get(server.http("/ws")).await.unwrap();
    assert_eq!(r.status(), 426, "a plain GET on /ws asks for an upgrade");
    server.stop().await;
}

#[tokio::test]
async fn the_gateway_mounts_in_an_application_router() {
    let gateway = wsgate::Gateway::new(wsgate::Config::default()).unwrap();
    let app = axum::Router::new()
        .route("/app", axum::routing::get(|| async { "app" }))
        .nest("/rt", gateway.router());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await });

    let mut c = wsgate_client::Client::connect(&format!("ws://{addr}/rt/ws"))
        .await
        .unwrap();
    c.subscribe(&["typed"]).await.unwrap();

    #[derive(serde::Serialize)]
    struct Price {
        sku: u32,
        cents: u64,
    }
    let prices = gateway.topic::<Price>("typed").unwrap();
    prices.publish(&Price { sku: 1, cents: 250 }).await.unwrap();
    let n = next(&mut c).await;
    assert_eq!(n.data(), Some(&json!({"sku": 1, "cents": 250})));
    assert!(gateway.topic::<Price>("bad topic").is_err());
    let r = reqwest::get(format!("http://{addr}/app")).await.unwrap();
    assert_eq!(r.text().await.unwrap(), "app");
}
