//! Postgres LISTEN/NOTIFY source against a real PostgreSQL on
//! 127.0.0.1:5432 (trust auth, user `postgres`). Each test creates its own
//! database (dropped by a guard) and loads examples/postgres/products.sql,
//! the seed's table and trigger.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use common::*;
use serde_json::{Value, json};
use wsgate::source::{DataSelector, Deliver, PostgresSource, SourceStatus, TopicTemplate};

/// The server the tests use; `WSGATE_TEST_POSTGRES` may name another one
/// (a URL without the database, with a superuser that needs no password).
fn server() -> String {
    std::env::var("WSGATE_TEST_POSTGRES")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432".to_string())
}
const PRODUCTS_SQL: &str = include_str!("../../../examples/postgres/products.sql");

/// A fresh database, dropped (with `FORCE`, closing its connections) when
/// the guard goes out of scope.
struct TestDb {
    name: String,
}

async fn admin() -> tokio_postgres::Client {
    let url = format!("{}/postgres", server());
    let (client, conn) = match tokio_postgres::connect(&url, tokio_postgres::NoTls).await {
        Ok(pair) => pair,
        Err(e) => panic!(
            "PostgreSQL is not reachable at {url} ({e}: {}). These tests need a running server \
             on 127.0.0.1:5432 with trust auth for user postgres (or WSGATE_TEST_POSTGRES); \
             scripts/test starts the Debian cluster \
             (pg_ctlcluster --skip-systemctl-redirect <version> main start).",
            std::error::Error::source(&e)
                .map(|c| c.to_string())
                .unwrap_or_default()
        ),
    };
    tokio::spawn(conn);
    client
}

impl TestDb {
    /// Creates the database `wsgate_<tag>_<pid>_<n>` (no trigger yet).
    async fn empty(tag: &str) -> TestDb {
        static N: AtomicU32 = AtomicU32::new(0);
        let name = format!(
            "wsgate_{tag}_{}_{}",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        );
        admin()
            .await
            .batch_execute(&format!("CREATE DATABASE {name}"))
            .await
            .unwrap();
        TestDb { name }
    }

    /// A database with the seed's products table and trigger.
    async fn products(tag: &str) -> TestDb {
        let db = Self::empty(tag).await;
        db.exec(PRODUCTS_SQL).await;
        db
    }

    fn url(&self) -> String {
        format!("{}/{}?application_name={}", server(), self.name, self.app())
    }

    /// The application_name the source's connection carries.
    fn app(&self) -> String {
        format!("src_{}", self.name)
    }

    async fn client(&self) -> tokio_postgres::Client {
        let (client, conn) = tokio_postgres::connect(
            &format!("{}/{}", server(), self.name),
            tokio_postgres::NoTls,
        )
        .await
        .unwrap();
        tokio::spawn(conn);
        client
    }

    async fn exec(&self, sql: &str) {
        self.client().await.batch_execute(sql).await.unwrap();
    }

    async fn notify(&self, channel: &str, payload: &str) {
        self.client()
            .await
            .execute("SELECT pg_notify($1, $2)", &[&channel, &payload])
            .await
            .unwrap();
    }

    /// Backends of the source (by application_name) connected to this database.
    async fn source_backends(&self) -> i64 {
        admin()
            .await
            .query_one(
                "SELECT count(*) FROM pg_stat_activity WHERE datname = $1 AND application_name = $2",
                &[&self.name, &self.app()],
            )
            .await
            .unwrap()
            .get(0)
    }
}

impl Drop for TestDb {
    fn drop(&mut self) {
        let name = self.name.clone();
        // Drop runs outside any await point: use a private runtime on a
        // thread of its own.
        let dropped = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            rt.block_on(async {
                admin()
                    .await
                    .batch_execute(&format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)"))
                    .await
            })
        })
        .join();
        if !matches!(dropped, Ok(Ok(()))) {
            eprintln!("could not drop test database {}: {dropped:?}", self.name);
        }
    }
}

fn template(s: &str) -> TopicTemplate {
    TopicTemplate::parse(s).unwrap()
}

/// A source with fast reconnects (the suite shares a loaded machine, so
/// nothing here depends on timing; short delays only make it quicker).
fn source(db: &TestDb, channel: &str, topic: &str) -> PostgresSource {
    let mut s = PostgresSource::new(db.url(), channel, template(topic));
    s.reconnect_delay_min = Duration::from_millis(20);
    s.reconnect_delay_max = Duration::from_millis(300);
    s
}

async fn start(sources: Vec<PostgresSource>) -> TestServer {
    TestServer::with(|c| c.sources.postgres = sources).await
}

/// Waits until `pred` holds for the gateway's sources.
async fn wait_sources(server: &TestServer, what: &str, pred: impl Fn(&[SourceStatus]) -> bool) {
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let s = server.gateway.sources();
        if pred(&s) {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out waiting for sources to be {what}: {s:?}"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

async fn wait_listening(server: &TestServer) {
    wait_sources(server, "listening", |s| s.iter().all(|s| s.connected)).await;
}

async fn expect(client: &mut wsgate_client::Client, topic: &str) -> Value {
    let n = next(client).await;
    assert_eq!(n.topic(), Some(topic), "{n:?}");
    n.data().cloned().unwrap()
}

#[tokio::test]
async fn trigger_insert_update_delete_reach_subscribers() {
    let db = TestDb::products("crud").await;
    let server = start(vec![source(
        &db,
        "product_change",
        "products.{product.productId}",
    )])
    .await;
    wait_listening(&server).await;
    let mut one = server.client().await;
    one.subscribe(&["products.1"]).await.unwrap();
    let mut two = server.client().await;
    two.subscribe(&["products.2"]).await.unwrap();
    let mut all = server.client().await;
    all.subscribe(&["products.>"]).await.unwrap();

    db.exec(
        r#"INSERT INTO products VALUES (1, 'Apple', '500EUR', 6, 'MacBook Pro');
           UPDATE products SET "unitsAvailable" = 5 WHERE "productId" = 1;
           DELETE FROM products WHERE "productId" = 1;
           INSERT INTO products VALUES (2, 'Lenovo', '300EUR', 2, 'ThinkPad');"#,
    )
    .await;

    let row = |units: i64| {
        json!({"productId": 1, "manufacturer": "Apple", "pricePerUnit": "500EUR",
               "unitsAvailable": units, "productName": "MacBook Pro"})
    };
    let expected = [
        json!({"action": "INSERT", "product": row(6)}),
        json!({"action": "UPDATE", "product": row(5)}),
        json!({"action": "DELETE", "product": row(5)}),
    ];
    for e in &expected {
        assert_eq!(&expect(&mut one, "products.1").await, e);
        assert_eq!(&expect(&mut all, "products.1").await, e);
    }
    let insert_two = json!({"action": "INSERT", "product": {"productId": 2,
        "manufacturer": "Lenovo", "pricePerUnit": "300EUR", "unitsAvailable": 2,
        "productName": "ThinkPad"}});
    // products.2's subscriber got none of product 1's changes: its first
    // message is its own.
    assert_eq!(expect(&mut two, "products.2").await, insert_two);
    assert_eq!(expect(&mut all, "products.2").await, insert_two);

    assert_eq!(
        server.metric("wsgate_source_notifications_total").await,
        4.0
    );
    assert_eq!(server.metric("wsgate_source_errors_total").await, 0.0);
    assert_eq!(server.metric("wsgate_sources_connected").await, 1.0);
    let status = &server.gateway.sources()[0];
    assert_eq!(
        (status.kind, status.channel.as_str(), status.notifications),
        ("postgres", "product_change", 4)
    );
    server.stop().await;
}

#[tokio::test]
async fn topic_templates_numbers_strings_and_data_selector() {
    let db = TestDb::products("tpl").await;
    // The seed's trigger with the row only as data, under a topic built
    // from a string and a number; and a second channel keyed by strings,
    // booleans and negative numbers, delivered to this node only.
    let mut rows = source(&db, "product_change", "shop.{action}.{product.productId}");
    rows.data = Some(DataSelector::parse("{product}").unwrap());
    let mut skus = source(&db, "Sku Events", "sku.{sku}.{flag}-{n}");
    skus.deliver = Deliver::Local;
    let server = start(vec![rows, skus]).await;
    wait_listening(&server).await;

    let mut c = server.client().await;
    c.subscribe(&["shop.*.7", "sku.>"]).await.unwrap();
    db.exec(r#"INSERT INTO products VALUES (7, 'Apple', '500EUR', 6, 'MacBook Pro')"#)
        .await;
    assert_eq!(
        expect(&mut c, "shop.INSERT.7").await,
        json!({"productId": 7, "manufacturer": "Apple", "pricePerUnit": "500EUR",
               "unitsAvailable": 6, "productName": "MacBook Pro"}),
        "data is the product object alone"
    );
    let payload = json!({"sku": "mbp-14", "flag": true, "n": -3, "extra": [1, 2]});
    db.notify("Sku Events", &payload.to_string()).await;
    assert_eq!(expect(&mut c, "sku.mbp-14.true--3").await, payload);
    // The channel name is quoted, so case and spaces matter: this one is
    // another channel and nothing is delivered from it.
    db.notify("sku events", &payload.to_string()).await;
    db.notify("Sku Events", r#"{"sku":"last","flag":false,"n":0}"#)
        .await;
    assert_eq!(
        expect(&mut c, "sku.last.false-0").await,
        json!({"sku": "last", "flag": false, "n": 0})
    );
    server.stop().await;
}

#[tokio::test]
async fn malformed_notifications_are_counted_and_not_fatal() {
    let db = TestDb::empty("bad").await;
    let server = start(vec![source(&db, "items", "items.{id}")]).await;
    wait_listening(&server).await;
    let mut c = server.client().await;
    c.subscribe(&["items.>", ">"]).await.unwrap();

    let bad = [
        "not json",
        "",
        r#"{"no_id":1}"#,
        r#"{"id":null}"#,
        r#"{"id":{"x":1}}"#,
        r#"{"id":[1]}"#,
        r#"{"id":"a.b"}"#,
        r#"{"id":"has space"}"#,
        r#"{"id":"*"}"#,
        r#"{"id":">"}"#,
        r#"{"id":""}"#,
        r#"{"id":1.5}"#,
        r#"{"id":"ünï"}"#,
    ];
    for p in bad {
        db.notify("items", p).await;
    }
    db.notify("items", r#"{"id":"ok-1"}"#).await;
    // The first delivery is the good one: nothing malformed got through.
    assert_eq!(expect(&mut c, "items.ok-1").await, json!({"id": "ok-1"}));
    assert_eq!(
        server.metric("wsgate_source_errors_total").await,
        bad.len() as f64
    );
    assert_eq!(
        server.metric("wsgate_source_notifications_total").await,
        bad.len() as f64 + 1.0
    );
    let s = &server.gateway.sources()[0];
    assert!(s.connected && s.errors == bad.len() as u64, "{s:?}");
    db.notify("items", "42").await;
    db.notify("items", r#"{"id":42}"#).await;
    assert_eq!(expect(&mut c, "items.42").await, json!({"id": 42}));
    assert_still_serving(&server).await;
    server.stop().await;
}

#[tokio::test]
async fn reconnects_after_the_backend_is_terminated() {
    let db = TestDb::products("reconnect").await;
    let server = start(vec![source(
        &db,
        "product_change",
        "products.{product.productId}",
    )])
    .await;
    wait_listening(&server).await;
    let mut c = server.client().await;
    c.subscribe(&["products.>"]).await.unwrap();
    db.exec("INSERT INTO products VALUES (1, 'A', '1EUR', 1, 'one')")
        .await;
    assert_eq!(expect(&mut c, "products.1").await["action"], "INSERT");

    for round in 1..=2u64 {
        // What an operator (or a database restart) does to the session.
        let killed: i64 = admin()
            .await
            .query_one(
                "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity \
                 WHERE datname = $1 AND application_name = $2",
                &[&db.name, &db.app()],
            )
            .await
            .unwrap()
            .get(0);
        assert_eq!(killed, 1, "the source's backend was found and terminated");
        wait_sources(&server, "reconnected", |s| {
            s[0].connected && s[0].reconnects == round
        })
        .await;
        db.exec(&format!(
            r#"UPDATE products SET "unitsAvailable" = {round} WHERE "productId" = 1"#
        ))
        .await;
        let data = expect(&mut c, "products.1").await;
        assert_eq!(
            (&data["action"], &data["product"]["unitsAvailable"]),
            (&json!("UPDATE"), &json!(round))
        );
    }
    assert_eq!(db.source_backends().await, 1, "one LISTEN connection");
    server.stop().await;
}

#[tokio::test]
async fn waits_for_a_database_that_does_not_exist_yet() {
    // The source starts before its database: connecting fails ("database
    // does not exist"), the source retries with backoff, the node is ready
    // meanwhile, and the source listens as soon as the database is there.
    let db = TestDb::empty("late").await;
    let late = format!("{}_x", db.name);
    let url = format!("{}/{late}?application_name={}", server(), db.app());
    let mut src = source(&db, "product_change", "products.{product.productId}");
    src.url = url;
    let server = start(vec![src]).await;
    let ready = reqwest::get(server.http("/readyz")).await.unwrap();
    assert_eq!(
        ready.status(),
        200,
        "a disconnected source keeps the node ready"
    );
    assert!(!server.gateway.sources()[0].connected);
    assert_eq!(server.metric("wsgate_sources_connected").await, 0.0);

    let late_db = TestDb { name: late.clone() };
    admin()
        .await
        .batch_execute(&format!("CREATE DATABASE {late}"))
        .await
        .unwrap();
    late_db.exec(PRODUCTS_SQL).await;
    wait_listening(&server).await;
    let mut c = server.client().await;
    c.subscribe(&["products.9"]).await.unwrap();
    late_db
        .exec("INSERT INTO products VALUES (9, 'A', '1EUR', 1, 'nine')")
        .await;
    assert_eq!(
        expect(&mut c, "products.9").await["product"]["productName"],
        "nine"
    );
    server.stop().await;
}

#[tokio::test]
async fn shutdown_closes_the_listen_connection() {
    let db = TestDb::products("shutdown").await;
    let server = start(vec![source(
        &db,
        "product_change",
        "products.{product.productId}",
    )])
    .await;
    wait_listening(&server).await;
    assert_eq!(db.source_backends().await, 1);
    let gateway = server.gateway.clone();
    server.stop().await;
    assert!(!gateway.sources()[0].connected);
    // The client said goodbye: the backend is gone (the server removes it
    // from pg_stat_activity once the connection is closed).
    let deadline = tokio::time::Instant::now() + WAIT;
    while db.source_backends().await != 0 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the source's connection is still open after shutdown"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // The source task is over: nothing reconnects afterwards.
    assert!(!gateway.sources()[0].connected);
}

#[test]
fn example_configuration_loads() {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../examples/postgres/wsgate.toml");
    let config = wsgate::Config::load(Some(&path), &[]).unwrap();
    let s = &config.sources.postgres[0];
    assert_eq!(
        (s.channel.as_str(), s.topic.as_str()),
        ("product_change", "products.{product.productId}")
    );
    // A bad template or channel is an error at load, naming the source.
    let text = std::fs::read_to_string(&path).unwrap();
    for (from, to, message) in [
        (
            "products.{product.productId}",
            "products.{product.productId",
            "unclosed",
        ),
        (
            "products.{product.productId}",
            "products.*.{product.productId}",
            "wildcards",
        ),
        ("\"product_change\"", "\"\"", "sources.postgres[0]"),
        (
            "postgres://postgres@",
            "postgres://[",
            "sources.postgres[0]",
        ),
    ] {
        let bad = std::env::temp_dir().join(format!("wsgate-pg-{}.toml", std::process::id()));
        std::fs::write(&bad, text.replace(from, to)).unwrap();
        let err = wsgate::Config::load(Some(&bad), &[])
            .unwrap_err()
            .to_string();
        let _ = std::fs::remove_file(&bad);
        assert!(err.contains(message), "{to}: {err}");
    }
}
