//! `[broker] kind = "nats"` through every configuration layer (no server needed).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::result_large_err)]

use std::path::Path;
use std::time::Duration;

use wsgate::Config;
use wsgate::broker::{BrokerConfig, NatsConfig};

#[test]
fn nats_from_file_env_and_flags() {
    figment::Jail::expect_with(|jail| {
        jail.create_file(
            "wsgate.toml",
            "[broker]\nkind = \"nats\"\nurl = \"nats://10.0.0.1:4222,nats://10.0.0.2:4222\"\nreconnect_delay_max = \"1s\"\n",
        )?;
        let c = Config::load(Some(Path::new("wsgate.toml")), &[]).map_err(|e| e.to_string())?;
        assert_eq!(
            c.broker,
            BrokerConfig::Nats(NatsConfig {
                url: "nats://10.0.0.1:4222,nats://10.0.0.2:4222".into(),
                reconnect_delay_max: Duration::from_secs(1),
                ..NatsConfig::default()
            })
        );

        // Environment only: kind and url, everything else defaults.
        jail.set_env("WSGATE_BROKER__KIND", "nats");
        jail.set_env("WSGATE_BROKER__URL", "nats://127.0.0.1:4333");
        jail.set_env("WSGATE_BROKER__SUBJECT_PREFIX", "app.ws");
        let c = Config::load(None, &["broker.name=edge-1".into()]).map_err(|e| e.to_string())?;
        let BrokerConfig::Nats(n) = &c.broker else {
            panic!("{:?}", c.broker)
        };
        assert_eq!(n.url, "nats://127.0.0.1:4333");
        assert_eq!(n.subject_prefix, "app.ws");
        assert_eq!(n.name, "edge-1");
        assert_eq!(n.broadcast_subject, "wsgate-broadcast");
        assert_eq!(n.publish_timeout, NatsConfig::default().publish_timeout);

        // The effective configuration prints and parses back.
        let text = toml::to_string_pretty(&c).unwrap();
        assert!(text.contains("kind = \"nats\""), "{text}");
        let back: Config = toml::from_str(&text).unwrap();
        assert_eq!(back, c);

        // Unknown keys in [broker] are errors.
        assert!(Config::load(None, &["broker.uri=nats://x".into()]).is_err());
        Ok(())
    });
}

#[test]
fn defaults_still_print_and_parse() {
    let text = Config::defaults_toml();
    let back: Config = toml::from_str(&text).unwrap();
    assert_eq!(back, Config::default());
    assert!(text.contains("kind = \"memory\""), "{text}");
}

#[tokio::test]
async fn invalid_nats_options_fail_gateway_construction() {
    let config = Config {
        broker: BrokerConfig::Nats(NatsConfig {
            broadcast_subject: "wsgate.all".into(),
            ..NatsConfig::default()
        }),
        ..Config::default()
    };
    let err = wsgate::Gateway::new(config).err().expect("rejected");
    assert!(err.to_string().contains("broadcast_subject"), "{err}");
}
