//! The real `wsgate` binary and auth: refusing anonymous access on a public
//! address, `--allow-anonymous`, `wsgate token`, redacted `config show`.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::time::{SystemTime, UNIX_EPOCH};

use serde_json::{Value, json};

const SECRET: &str = "cli-test-only-secret-0123456789abcdef";

use common::{serve as start, wsgate};
use std::process::Stdio;

#[test]
fn serving_anonymously_on_a_public_address_refuses_to_start() {
    let out = wsgate()
        .args(["serve", "--listen", "0.0.0.0:0"])
        .stdin(Stdio::null())
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("refusing to start"), "{err}");
    assert!(err.contains("0.0.0.0:0 is not a loopback address"), "{err}");
    assert!(err.contains("--allow-anonymous"), "{err}");

    // Explicit anonymous access with keys configured is refused too.
    let out = wsgate()
        .args([
            "serve",
            "--listen",
            "0.0.0.0:0",
            "-s",
            "auth.anonymous=true",
        ])
        .env("WSGATE_AUTH__SECRET", SECRET)
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("auth.anonymous = true"));
}

#[tokio::test]
async fn allow_anonymous_starts_with_a_loud_warning() {
    let server = start(&[], &["--listen", "0.0.0.0:0", "--allow-anonymous"]);
    assert!(
        server
            .log
            .iter()
            .any(|l| l.contains("ANONYMOUS ACCESS IS ON")),
        "{:#?}",
        server.log
    );
    // The node serves (reached over loopback).
    let url = format!("ws://127.0.0.1:{}/ws", server.port());
    let c = wsgate_client::Client::connect(&url).await.unwrap();
    c.ping().await.unwrap();

    // The environment does the same as the flag.
    let server = start(
        &[("WSGATE_AUTH__ALLOW_ANONYMOUS_PUBLIC", "true")],
        &["--listen", "0.0.0.0:0"],
    );
    assert!(
        server
            .log
            .iter()
            .any(|l| l.contains("ANONYMOUS ACCESS IS ON"))
    );
}

#[tokio::test]
async fn quick_start_on_loopback_still_works_and_warns() {
    let server = start(&[], &["--listen", "127.0.0.1:0"]);
    assert!(
        server
            .log
            .iter()
            .any(|l| l.contains("ANONYMOUS ACCESS IS ON"))
    );
    let url = format!("ws://127.0.0.1:{}/ws", server.port());
    let c = wsgate_client::Client::connect(&url).await.unwrap();
    c.subscribe(&[">"]).await.unwrap();
}

fn mint(env: &[(&str, &str)], args: &[&str]) -> std::process::Output {
    let mut cmd = wsgate();
    cmd.arg("token").args(args);
    for (k, v) in env {
        cmd.env(k, v);
    }
    cmd.output().unwrap()
}

#[tokio::test]
async fn token_command_mints_a_token_the_configured_node_accepts() {
    let out = mint(
        &[("WSGATE_AUTH__SECRET", SECRET)],
        &[
            "--sub",
            "alice",
            "--subscribe",
            "chat.>",
            "--publish",
            "chat.>",
            "--ttl",
            "1h",
        ],
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let token = String::from_utf8(out.stdout).unwrap().trim().to_string();

    // It verifies with the secret, independently of wsgate.
    let mut v = jsonwebtoken::Validation::new(jsonwebtoken::Algorithm::HS256);
    v.leeway = 0;
    let data = jsonwebtoken::decode::<Value>(
        &token,
        &jsonwebtoken::DecodingKey::from_secret(SECRET.as_bytes()),
        &v,
    )
    .unwrap();
    let c = data.claims;
    assert_eq!(c["sub"], "alice");
    assert_eq!(c["subscribe"], json!(["chat.>"]));
    assert_eq!(c["publish"], json!(["chat.>"]));
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let exp = c["exp"].as_u64().unwrap();
    assert!(
        (now + 3590..=now + 3610).contains(&exp),
        "exp {exp}, now {now}"
    );

    // A node with the same secret (and no anonymous access) takes it.
    let server = start(
        &[("WSGATE_AUTH__SECRET", SECRET)],
        &["--listen", "127.0.0.1:0", "-s", "auth.anonymous=false"],
    );
    let url = format!("ws://127.0.0.1:{}/ws?token={token}", server.port());
    let client = wsgate_client::Client::connect(&url).await.unwrap();
    client.subscribe(&["chat.room1"]).await.unwrap();
    match client.subscribe(&["orders.eu"]).await {
        Err(wsgate_client::ClientError::Rpc { code, .. }) => assert_eq!(code, -32001),
        other => panic!("expected forbidden, got {other:?}"),
    }
    let anonymous = format!("ws://127.0.0.1:{}/ws", server.port());
    match wsgate_client::Client::connect(&anonymous).await {
        Err(wsgate_client::ClientError::WebSocket(
            tokio_tungstenite::tungstenite::Error::Http(r),
        )) => assert_eq!(r.status(), 401),
        other => panic!("expected 401, got {:?}", other.map(|_| ())),
    }
}

#[test]
fn token_command_needs_a_secret_and_valid_patterns() {
    let out = mint(&[], &["--sub", "alice"]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("auth.secret"));
    let out = mint(
        &[("WSGATE_AUTH__SECRET", SECRET)],
        &["--sub", "alice", "--subscribe", "a..b"],
    );
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("a..b"));
}

#[test]
fn config_show_redacts_secrets() {
    let out = wsgate()
        .args([
            "config",
            "show",
            "-s",
            "auth.api_keys=[\"api-key-0123456789abc\"]",
        ])
        .env("WSGATE_AUTH__SECRET", SECRET)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8(out.stdout).unwrap();
    assert!(
        !text.contains(SECRET) && !text.contains("api-key-0123456789abc"),
        "{text}"
    );
    let shown: toml::Table = toml::from_str(&text).unwrap();
    assert_eq!(shown["auth"]["secret"].as_str(), Some("<redacted>"));
    assert_eq!(shown["auth"]["api_keys"][0].as_str(), Some("<redacted>"));
}

/// The first ```toml block after `heading` in a doc.
fn toml_example(doc: &str, heading: &str) -> String {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../docs")
        .join(doc);
    let text = std::fs::read_to_string(path).unwrap();
    let after = &text[text.find(heading).expect(heading)..];
    let start = after.find("```toml\n").expect("a toml block") + "```toml\n".len();
    let len = after[start..].find("```").unwrap();
    after[start..start + len].to_string()
}

#[test]
fn documented_complete_examples_are_valid_configurations() {
    let dir = std::env::temp_dir().join(format!("wsgate-cli-auth-docs-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let security = toml_example("security.md", "## Complete example");
    // Only the [auth] part of configuration.md's example (the other
    // sections belong to other tests).
    let configuration = toml_example("configuration.md", "## Complete example");
    let configuration = format!(
        "listen = \"0.0.0.0:8080\"\n{}",
        &configuration[configuration.find("[auth]").expect("an [auth] section")..]
    );
    for (doc, example) in [
        ("security.md", security),
        ("configuration.md", configuration),
    ] {
        let file = dir.join(doc.replace(".md", ".toml"));
        std::fs::write(&file, example).unwrap();
        let out = wsgate()
            .args(["config", "show", "-c"])
            .arg(&file)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{doc}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let shown: toml::Table = toml::from_str(&String::from_utf8(out.stdout).unwrap()).unwrap();
        assert_eq!(shown["listen"].as_str(), Some("0.0.0.0:8080"), "{doc}");
    }
    let _ = std::fs::remove_dir_all(&dir);
}
