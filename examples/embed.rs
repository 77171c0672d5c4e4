//! Embedding wsgate in your own axum service (seed 001's typed topic).
//!
//! The application keeps its own routes and mounts the gateway under
//! `/realtime`. In-process code publishes typed values; browsers subscribe
//! over `ws://127.0.0.1:3000/realtime/ws`.
//!
//! ```text
//! cargo run -p wsgate-examples --bin embed
//! # chat demo page:     http://127.0.0.1:3000/realtime
//! # post a chat line:   curl -d 'hello' http://127.0.0.1:3000/say/alice
//! # watch the topics:   cargo run -p wsgate-cli -- subscribe --url ws://127.0.0.1:3000/realtime/ws 'chat.>' ticks
//! ```

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use axum::Router;
use axum::extract::{Path, State};
use axum::routing::{get, post};
use serde::Serialize;
use wsgate::{Config, Gateway, TypedTopic};

/// What the chat demo page renders: `{"name", "text", "ts"}`.
#[derive(Serialize)]
struct ChatLine {
    name: String,
    text: String,
    ts: u64,
}

#[derive(Serialize)]
struct Tick {
    n: u64,
    unix_ms: u64,
}

#[derive(Clone)]
struct App {
    lobby: TypedTopic<ChatLine>,
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// `POST /say/{name}` with a text body: the application publishes a typed
/// value; every browser in the lobby sees it.
async fn say(State(app): State<App>, Path(name): Path<String>, text: String) -> &'static str {
    let line = ChatLine {
        name,
        text,
        ts: now_ms(),
    };
    match app.lobby.publish(&line).await {
        Ok(_) => "sent\n",
        Err(_) => "gateway unavailable\n",
    }
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt().with_env_filter("info").init();
    let gateway = Gateway::new(Config::default())?;
    let app_state = App {
        lobby: gateway.topic::<ChatLine>("chat.lobby")?,
    };

    // In-process publisher of a typed topic.
    let ticks: TypedTopic<Tick> = gateway.topic("ticks")?;
    tokio::spawn(async move {
        let mut every = tokio::time::interval(Duration::from_secs(1));
        for n in 0.. {
            every.tick().await;
            if ticks
                .publish(&Tick {
                    n,
                    unix_ms: now_ms(),
                })
                .await
                .is_err()
            {
                break;
            }
        }
    });

    let app = Router::new()
        .route("/", get(|| async { "my service; realtime at /realtime\n" }))
        .route("/say/{name}", post(say))
        .with_state(app_state)
        .nest("/realtime", gateway.router());

    let listener = tokio::net::TcpListener::bind("127.0.0.1:3000").await?;
    println!("listening on http://127.0.0.1:3000 (chat demo at /realtime)");
    let g = gateway.clone();
    axum::serve(listener, app)
        .with_graceful_shutdown(async move {
            let _ = tokio::signal::ctrl_c().await;
            // Clients get 1001 and what was queued for them.
            g.shutdown().await;
        })
        .await?;
    Ok(())
}
