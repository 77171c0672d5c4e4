//! Every JSON-RPC method and error code, over a real socket.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::*;
use serde_json::json;
use wsgate::error::code;

#[tokio::test]
async fn ping_and_self_reply() {
    let server = TestServer::start().await;
    let mut ws = server.raw().await;
    let r = rpc(&mut ws, r#"{"jsonrpc":"2.0","id":1,"method":"ping"}"#).await;
    assert_eq!(r, json!({"jsonrpc":"2.0","id":1,"result":"pong"}));

    let r = rpc(
        &mut ws,
        r#"{"jsonrpc":"2.0","id":"abc","method":"self.reply","params":{"text":"only me","n":[1,2]}}"#,
    )
    .await;
    assert_eq!(
        r,
        json!({"jsonrpc":"2.0","id":"abc","result":{"text":"only me","n":[1,2]}})
    );
    server.stop().await;
}

#[tokio::test]
async fn self_reply_goes_to_the_caller_only() {
    let server = TestServer::start().await;
    let mut other = server.client().await;
    other.subscribe(&["x"]).await.unwrap();
    let mut ws = server.raw().await;
    rpc(
        &mut ws,
        r#"{"jsonrpc":"2.0","id":1,"method":"self.reply","params":{"a":1}}"#,
    )
    .await;
    // `other` sees the next publication, not the reply.
    let p = server.client().await;
    p.publish("x", &1).await.unwrap();
    assert_eq!(next(&mut other).await.data(), Some(&json!(1)));
    server.stop().await;
}

#[tokio::test]
async fn subscribe_publish_unsubscribe() {
    let server = TestServer::start().await;
    let mut ws = server.raw().await;
    let r = rpc(
        &mut ws,
        r#"{"jsonrpc":"2.0","id":1,"method":"subscribe","params":{"topic":"chat.room1"}}"#,
    )
    .await;
    assert_eq!(r["result"], json!({"subscribed":["chat.room1"]}));

    // The publisher receives its own message when subscribed.
    send(
        &mut ws,
        r#"{"jsonrpc":"2.0","id":2,"method":"publish","params":{"topic":"chat.room1","data":{"text":"hi"}}}"#,
    )
    .await;
    let mut got = [recv_json(&mut ws).await, recv_json(&mut ws).await];
    got.sort_by_key(|v| v.get("id").is_none());
    assert_eq!(got[0], json!({"jsonrpc":"2.0","id":2,"result":{}}));
    assert_eq!(
        got[1],
        json!({"jsonrpc":"2.0","method":"message","params":{"topic":"chat.room1","data":{"text":"hi"}}})
    );

    let r = rpc(
        &mut ws,
        r#"{"jsonrpc":"2.0","id":3,"method":"unsubscribe","params":{"topics":["chat.room1","never.subscribed"]}}"#,
    )
    .await;
    assert_eq!(r["result"], json!({"unsubscribed":["chat.room1"]}));

    // No longer subscribed: only the publish result arrives.
    let r = rpc(
        &mut ws,
        r#"{"jsonrpc":"2.0","id":4,"method":"publish","params":{"topic":"chat.room1","data":1}}"#,
    )
    .await;
    assert_eq!(r["id"], 4);
    let r = rpc(&mut ws, r#"{"jsonrpc":"2.0","id":5,"method":"ping"}"#).await;
    assert_eq!(r["id"], 5, "no stray delivery after unsubscribe");
    server.stop().await;
}

#[tokio::test]
async fn subscribe_to_1024_topics_in_one_call() {
    let server = TestServer::start().await;
    let mut c = server.client().await;
    let topics: Vec<String> = (0..1024).map(|i| format!("products.{i}")).collect();
    let refs: Vec<&str> = topics.iter().map(String::as_str).collect();
    let subscribed = c.subscribe(&refs).await.unwrap();
    assert_eq!(subscribed.len(), 1024);
    assert_eq!(server.metric("wsgate_subscriptions").await, 1024.0);

    let too_many: Vec<String> = (0..1025).map(|i| format!("p.{i}")).collect();
    let refs: Vec<&str> = too_many.iter().map(String::as_str).collect();
    match c.subscribe(&refs).await {
        Err(wsgate_client::ClientError::Rpc { code: c, .. }) => {
            assert_eq!(c, code::INVALID_PARAMS as i64)
        }
        other => panic!("{other:?}"),
    }
    let p = server.client().await;
    p.publish("products.1023", &json!({"price": 5}))
        .await
        .unwrap();
    let n = next(&mut c).await;
    assert_eq!(n.topic(), Some("products.1023"));
    server.stop().await;
}

#[tokio::test]
async fn broadcast_reaches_every_connection() {
    let server = TestServer::start().await;
    let mut a = server.client().await;
    let mut b = server.client().await;
    a.subscribe(&["unrelated"]).await.unwrap();
    let sender = server.client().await;
    sender
        .broadcast(&json!({"text": "to everyone"}))
        .await
        .unwrap();
    for c in [&mut a, &mut b] {
        let n = next(c).await;
        assert_eq!(n.method, "broadcast");
        assert_eq!(n.params, json!({"data": {"text": "to everyone"}}));
    }
    server.stop().await;
}

#[tokio::test]
async fn error_codes() {
    let server = TestServer::start().await;
    let mut ws = server.raw().await;
    let cases: &[(&str, i32, serde_json::Value)] = &[
        ("{oops", code::PARSE_ERROR, json!(null)),
        (
            r#"{"jsonrpc":"2.0","id":1,"method":"nope"}"#,
            code::METHOD_NOT_FOUND,
            json!(1),
        ),
        (
            r#"{"id":2,"method":"ping"}"#,
            code::INVALID_REQUEST,
            json!(2),
        ),
        (r#"[]"#, code::INVALID_REQUEST, json!(null)),
        (r#"42"#, code::INVALID_REQUEST, json!(null)),
        (
            r#"{"jsonrpc":"2.0","id":3,"method":"subscribe"}"#,
            code::INVALID_PARAMS,
            json!(3),
        ),
        (
            r#"{"jsonrpc":"2.0","id":4,"method":"subscribe","params":{"topic":"a..b"}}"#,
            code::INVALID_PARAMS,
            json!(4),
        ),
        (
            r#"{"jsonrpc":"2.0","id":5,"method":"subscribe","params":{"topic":"a.>.b"}}"#,
            code::INVALID_PARAMS,
            json!(5),
        ),
        (
            r#"{"jsonrpc":"2.0","id":6,"method":"publish","params":{"topic":"a.*","data":1}}"#,
            code::INVALID_PARAMS,
            json!(6),
        ),
        (
            r#"{"jsonrpc":"2.0","id":7,"method":"publish","params":{"topic":"a"}}"#,
            code::INVALID_PARAMS,
            json!(7),
        ),
        (
            r#"{"jsonrpc":"2.0","id":8,"method":"broadcast","params":{}}"#,
            code::INVALID_PARAMS,
            json!(8),
        ),
    ];
    for (req, want, id) in cases {
        let r = rpc(&mut ws, req).await;
        assert_eq!(r["error"]["code"], *want, "{req} -> {r}");
        assert_eq!(r["id"], *id, "{req} -> {r}");
        assert!(
            r["error"]["message"]
                .as_str()
                .is_some_and(|m| !m.is_empty())
        );
    }
    let long = "x".repeat(300);
    let r = rpc(
        &mut ws,
        &format!(
            r#"{{"jsonrpc":"2.0","id":9,"method":"subscribe","params":{{"topic":"{long}"}}}}"#
        ),
    )
    .await;
    assert_eq!(r["error"]["code"], code::INVALID_PARAMS);
    assert!(server.metric("wsgate_protocol_errors_total").await >= 12.0);
    server.stop().await;
}

#[tokio::test]
async fn notifications_get_no_response_even_when_invalid() {
    let server = TestServer::start().await;
    let mut ws = server.raw().await;
    send(&mut ws, r#"{"jsonrpc":"2.0","method":"ping"}"#).await;
    send(&mut ws, r#"{"jsonrpc":"2.0","method":"no.such.method"}"#).await;
    send(
        &mut ws,
        r#"{"jsonrpc":"2.0","method":"subscribe","params":{"topic":"n"}}"#,
    )
    .await;
    // The notification-subscribe took effect; the next frame is this response.
    let r = rpc(&mut ws, r#"{"jsonrpc":"2.0","id":"last","method":"ping"}"#).await;
    assert_eq!(r["id"], "last");
    let p = server.client().await;
    p.publish("n", &"x").await.unwrap();
    assert_eq!(recv_json(&mut ws).await["params"]["data"], "x");
    server.stop().await;
}

#[tokio::test]
async fn batches_are_supported() {
    let server = TestServer::start().await;
    let mut ws = server.raw().await;
    let r = rpc(
        &mut ws,
        r#"[{"jsonrpc":"2.0","id":1,"method":"ping"},
            {"jsonrpc":"2.0","method":"ping"},
            {"jsonrpc":"2.0","id":2,"method":"subscribe","params":{"topic":"b"}},
            {"jsonrpc":"2.0","id":3,"method":"nope"},
            7]"#,
    )
    .await;
    let arr = r.as_array().expect("batch response is an array");
    assert_eq!(arr.len(), 4, "the notification gets no entry: {r}");
    assert_eq!(arr[0]["result"], "pong");
    assert_eq!(arr[1]["result"]["subscribed"], json!(["b"]));
    assert_eq!(arr[2]["error"]["code"], code::METHOD_NOT_FOUND);
    assert_eq!(arr[3]["error"]["code"], code::INVALID_REQUEST);

    // A batch of notifications only gets no response at all.
    send(&mut ws, r#"[{"jsonrpc":"2.0","method":"ping"}]"#).await;
    let r = rpc(&mut ws, r#"{"jsonrpc":"2.0","id":9,"method":"ping"}"#).await;
    assert_eq!(r["id"], 9);

    let too_big = format!(
        "[{}]",
        vec![r#"{"jsonrpc":"2.0","id":1,"method":"ping"}"#; 65].join(",")
    );
    let r = rpc(&mut ws, &too_big).await;
    assert_eq!(r["error"]["code"], code::INVALID_REQUEST);
    server.stop().await;
}

#[tokio::test]
async fn too_many_subscriptions() {
    let server = TestServer::with(|c| c.limits.max_subscriptions_per_connection = 3).await;
    let c = server.client().await;
    c.subscribe(&["a", "b"]).await.unwrap();
    // Re-subscribing to held topics does not count twice.
    c.subscribe(&["a", "b", "c"]).await.unwrap();
    match c.subscribe(&["d"]).await {
        Err(wsgate_client::ClientError::Rpc {
            code: c, message, ..
        }) => {
            assert_eq!(c, code::TOO_MANY_SUBSCRIPTIONS as i64);
            assert!(message.contains('3'), "{message}");
        }
        other => panic!("{other:?}"),
    }
    c.unsubscribe(&["a"]).await.unwrap();
    c.subscribe(&["d"]).await.unwrap();
    server.stop().await;
}
