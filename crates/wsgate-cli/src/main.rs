//! `wsgate`: run a gateway node, inspect its configuration, or talk to one.

use std::io::IsTerminal;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;
use clap::{Args, Parser, Subcommand};
use tracing_subscriber::EnvFilter;
use wsgate::config::LogFormat;
use wsgate::{Config, Gateway};

#[derive(Parser)]
#[command(name = "wsgate", version, about = "Real-time WebSocket gateway")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run a gateway node.
    Serve {
        #[command(flatten)]
        config: ConfigArgs,
        /// Accept anonymous access on a non-loopback address
        /// (auth.allow_anonymous_public = true). Without it such a node refuses to start.
        #[arg(long)]
        allow_anonymous: bool,
    },
    /// Show configuration.
    #[command(subcommand)]
    Config(ConfigCommand),
    /// Publish one message through a node (WebSocket JSON-RPC).
    Publish {
        #[arg(long, default_value = "ws://127.0.0.1:8080/ws")]
        url: String,
        topic: String,
        /// JSON data; a value that is not JSON is sent as a string.
        data: String,
    },
    /// Subscribe and print every notification as a JSON line.
    Subscribe {
        #[arg(long, default_value = "ws://127.0.0.1:8080/ws")]
        url: String,
        #[arg(required = true)]
        topics: Vec<String>,
    },
    /// Mint a development token (HS256) from the configured secret
    /// (auth.secret / WSGATE_AUTH__SECRET) and print it on stdout.
    Token(TokenArgs),
}

#[derive(Args)]
struct TokenArgs {
    /// The user id (`sub` claim).
    #[arg(long)]
    sub: String,
    /// A pattern the token may subscribe to (repeatable).
    #[arg(long, value_name = "PATTERN")]
    subscribe: Vec<String>,
    /// A pattern the token may publish to (repeatable).
    #[arg(long, value_name = "PATTERN")]
    publish: Vec<String>,
    /// Allow the `broadcast` method.
    #[arg(long)]
    broadcast: bool,
    /// Lifetime, e.g. 30m, 1h, 7d.
    #[arg(long, default_value = "1h", value_parser = humantime::parse_duration)]
    ttl: Duration,
    #[command(flatten)]
    config: ConfigArgs,
}

#[derive(Subcommand)]
enum ConfigCommand {
    /// Print every option with its default value, as TOML.
    Defaults,
    /// Print the effective configuration (defaults, file, environment, flags).
    Show(ConfigArgs),
}

#[derive(Args)]
struct ConfigArgs {
    /// TOML configuration file.
    #[arg(long, short, env = "WSGATE_CONFIG")]
    config: Option<PathBuf>,
    /// Listen address (overrides the file and WSGATE_LISTEN).
    #[arg(long)]
    listen: Option<String>,
    /// Any option as key.path=value, e.g. -s limits.max_connections=20000 (repeatable).
    #[arg(long = "set", short = 's', value_name = "KEY=VALUE")]
    set: Vec<String>,
}

impl ConfigArgs {
    fn load(&self) -> anyhow::Result<Config> {
        let mut overrides = Vec::new();
        if let Some(listen) = &self.listen {
            overrides.push(format!("listen={listen}"));
        }
        overrides.extend(self.set.iter().cloned());
        Ok(Config::load(self.config.as_deref(), &overrides)?)
    }
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    match cli.command {
        Command::Serve {
            config: mut args,
            allow_anonymous,
        } => {
            if allow_anonymous {
                args.set
                    .insert(0, "auth.allow_anonymous_public=true".into());
            }
            let config = args.load()?;
            init_logging(config.log.format);
            runtime.block_on(serve(config))
        }
        Command::Token(t) => {
            let config = t.config.load()?;
            let max = config.limits.max_topic_length;
            let patterns = |list: &[String]| {
                list.iter()
                    .map(|p| {
                        wsgate::Pattern::parse(p, max).with_context(|| format!("pattern {p:?}"))
                    })
                    .collect::<anyhow::Result<Vec<_>>>()
            };
            let grant = wsgate::auth::Grant {
                subscribe: patterns(&t.subscribe)?,
                publish: patterns(&t.publish)?,
                broadcast: t.broadcast,
            };
            let token = wsgate::auth::mint_dev_token(&config.auth, &t.sub, &grant, t.ttl)
                .map_err(anyhow::Error::msg)?;
            println!("{token}");
            Ok(())
        }
        Command::Config(ConfigCommand::Defaults) => {
            print!("{}", Config::defaults_toml());
            Ok(())
        }
        Command::Config(ConfigCommand::Show(args)) => {
            let mut shown = args.load()?;
            redact_secrets(&mut shown);
            print!("{}", toml::to_string_pretty(&shown)?);
            Ok(())
        }
        Command::Publish { url, topic, data } => runtime.block_on(async {
            let data: serde_json::Value =
                serde_json::from_str(&data).unwrap_or(serde_json::Value::String(data));
            let client = wsgate_client::Client::connect(&url).await?;
            client.publish(&topic, &data).await?;
            client.close().await;
            Ok(())
        }),
        Command::Subscribe { url, topics } => runtime.block_on(async {
            let mut client = wsgate_client::Client::connect(&url).await?;
            let topics: Vec<&str> = topics.iter().map(String::as_str).collect();
            client.subscribe(&topics).await?;
            while let Some(n) = client.next_notification().await {
                println!(
                    "{}",
                    serde_json::json!({"method": n.method, "params": n.params})
                );
            }
            if let Some(c) = client.close_info() {
                eprintln!("closed by server: {} {}", c.code, c.reason);
            }
            Ok(())
        }),
    }
}

/// Replaces secrets (auth.secret, keys' secrets, API keys) in a
/// configuration about to be printed.
fn redact_secrets(config: &mut Config) {
    const HIDDEN: &str = "<redacted>";
    let auth = &mut config.auth;
    if let Some(s) = &mut auth.secret {
        *s = HIDDEN.into();
    }
    for k in &mut auth.api_keys {
        *k = HIDDEN.into();
    }
    for k in &mut auth.keys {
        if let Some(s) = &mut k.secret {
            *s = HIDDEN.into();
        }
    }
}

fn init_logging(format: LogFormat) {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::stderr().is_terminal())
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Text => builder.init(),
        LogFormat::Json => builder.json().init(),
    }
}

async fn serve(config: Config) -> anyhow::Result<()> {
    let listen = config.listen;
    let gateway = Gateway::new(config)?;
    let listener = wsgate::bind(listen).with_context(|| format!("cannot listen on {listen}"))?;
    let local = listener.local_addr()?;
    let (http, ws) = if gateway.config().tls.enabled() {
        ("https", "wss")
    } else {
        ("http", "ws")
    };
    // Tests and scripts read the address from this line.
    tracing::info!(
        %local,
        broker = gateway.broker_name(),
        "wsgate listening: chat demo at {http}://{local}/, WebSocket at {ws}://{local}/ws"
    );
    gateway.serve(listener, shutdown_signal()).await?;
    tracing::info!("stopped");
    Ok(())
}

async fn shutdown_signal() {
    let ctrl_c = async {
        if let Err(e) = tokio::signal::ctrl_c().await {
            tracing::error!(error = %e, "cannot listen for SIGINT");
            std::future::pending::<()>().await;
        }
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(e) => {
                tracing::error!(error = %e, "cannot listen for SIGTERM");
                std::future::pending::<()>().await;
            }
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        _ = ctrl_c => tracing::info!("SIGINT received"),
        _ = term => tracing::info!("SIGTERM received"),
    }
}
