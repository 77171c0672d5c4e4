//! The real `wsgate` binary: serve, configuration layering, SIGTERM.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::process::Command;

use common::{Server, WAIT};

/// Starts `wsgate serve` on a free port.
fn start(extra_env: &[(&str, &str)], args: &[&str]) -> Server {
    let mut all = vec!["--listen", "127.0.0.1:0"];
    all.extend_from_slice(args);
    common::serve(extra_env, &all)
}

#[tokio::test]
async fn sigterm_flushes_closes_1001_and_exits_0() {
    let mut server = start(&[], &[]);
    let url = format!("ws://{}/ws", server.addr);
    let mut sub = wsgate_client::Client::connect(&url).await.unwrap();
    sub.subscribe(&["bin.t"]).await.unwrap();
    let publisher = wsgate_client::Client::connect(&url).await.unwrap();
    for i in 0..200 {
        publisher.publish("bin.t", &i).await.unwrap();
    }
    server.sigterm();
    for i in 0..200 {
        let n = tokio::time::timeout(WAIT, sub.next_notification())
            .await
            .unwrap()
            .expect("all queued messages arrive before the close");
        assert_eq!(n.data(), Some(&serde_json::json!(i)));
    }
    assert_eq!(sub.closed_by_server().await.map(|c| c.code), Some(1001));
    let status = tokio::task::spawn_blocking(move || server.child.wait())
        .await
        .unwrap()
        .unwrap();
    assert!(status.success(), "exit status {status}");
}

#[tokio::test]
async fn config_file_env_and_flags_layer() {
    let dir = std::env::temp_dir().join(format!("wsgate-cli-test-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("wsgate.toml");
    std::fs::write(
        &file,
        "[limits]\nmax_connections = 1\nmax_topic_length = 10\n",
    )
    .unwrap();

    let show = |env: &[(&str, &str)], args: &[&str]| {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_wsgate"));
        cmd.args(["config", "show", "--config"])
            .arg(&file)
            .args(args);
        for (k, v) in env {
            cmd.env(k, v);
        }
        let out = cmd.output().unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let cfg: toml::Table = toml::from_str(&String::from_utf8(out.stdout).unwrap()).unwrap();
        cfg
    };
    let c = show(&[], &[]);
    assert_eq!(c["limits"]["max_connections"].as_integer(), Some(1));
    let c = show(
        &[
            ("WSGATE_LIMITS__MAX_CONNECTIONS", "2"),
            ("WSGATE_LISTEN", "127.0.0.1:9999"),
        ],
        &[],
    );
    assert_eq!(c["limits"]["max_connections"].as_integer(), Some(2));
    assert_eq!(c["listen"].as_str(), Some("127.0.0.1:9999"));
    let c = show(
        &[
            ("WSGATE_LIMITS__MAX_CONNECTIONS", "2"),
            ("WSGATE_LISTEN", "127.0.0.1:9999"),
        ],
        &[
            "-s",
            "limits.max_connections=3",
            "--listen",
            "127.0.0.1:7777",
        ],
    );
    assert_eq!(c["limits"]["max_connections"].as_integer(), Some(3));
    assert_eq!(c["listen"].as_str(), Some("127.0.0.1:7777"));

    // Defaults print and parse back.
    let out = Command::new(env!("CARGO_BIN_EXE_wsgate"))
        .args(["config", "defaults"])
        .output()
        .unwrap();
    let d: toml::Table = toml::from_str(&String::from_utf8(out.stdout).unwrap()).unwrap();
    assert_eq!(d["listen"].as_str(), Some("127.0.0.1:8080"));

    // A bad option is a clear error and a non-zero exit.
    let out = Command::new(env!("CARGO_BIN_EXE_wsgate"))
        .args(["serve", "-s", "limits.max_conections=3"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("max_conections"));

    // The file's limit applies to a served node: a second connection gets 503.
    let server = start(&[], &["--config", file.to_str().unwrap()]);
    let url = format!("ws://{}/ws", server.addr);
    let _first = wsgate_client::Client::connect(&url).await.unwrap();
    match wsgate_client::Client::connect(&url).await {
        Err(wsgate_client::ClientError::WebSocket(
            tokio_tungstenite::tungstenite::Error::Http(r),
        )) => {
            assert_eq!(r.status(), 503)
        }
        other => panic!("expected 503, got {:?}", other.map(|_| ())),
    }
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test]
async fn cli_publish_and_http_api_reach_a_subscriber() {
    let server = start(&[], &[]);
    let url = format!("ws://{}/ws", server.addr);
    let mut sub = wsgate_client::Client::connect(&url).await.unwrap();
    sub.subscribe(&["cli.>"]).await.unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_wsgate"))
        .args(["publish", "--url", &url, "cli.x", r#"{"from":"cli"}"#])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let n = tokio::time::timeout(WAIT, sub.next_notification())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(n.data(), Some(&serde_json::json!({"from": "cli"})));

    let resp = reqwest::Client::new()
        .post(format!("http://{}/api/publish", server.addr))
        .body(r#"{"topic":"cli.http","data":2}"#)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let n = tokio::time::timeout(WAIT, sub.next_notification())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(n.topic(), Some("cli.http"));
}
