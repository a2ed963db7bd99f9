//! TLS to Redis and PostgreSQL against real servers that speak TLS only,
//! with a CA and certificates made for the test: the L2 cache is shared
//! through `rediss://`, prediction rows are written through
//! `sslmode=verify-full`, and a wrong CA, a wrong host name, a missing client
//! certificate or plaintext are refused with an error, never a panic.

use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::common::postgres::Cluster;
use crate::common::tls::{display, Certs, TlsRedis};
use crate::common::{tensor, Repo, TestServer};
use gantry::tls::redis::RedisTlsFiles;
use gantry_actors::engine::fake::{FakeEngineFactory, FakeProvider};
use serde_json::{json, Value};

fn provider() -> Arc<FakeProvider> {
    Arc::new(FakeProvider::new(FakeEngineFactory::vector(4)))
}

fn body(value: u32) -> Value {
    json!({"model": "m", "inputs": {"x": tensor(&[1, 4], "FP32", json!([value, 1, 2, 3]))}})
}

fn trusting(ca: &std::path::Path) -> RedisTlsFiles {
    RedisTlsFiles {
        ca_file: Some(ca.to_path_buf()),
        ..RedisTlsFiles::default()
    }
}

/// PING through a fresh connection of `client`: the reply, or the error.
async fn ping(client: &redis::Client) -> Result<String, String> {
    let mut conn = client
        .get_multiplexed_async_connection()
        .await
        .map_err(|e| e.to_string())?;
    redis::cmd("PING")
        .query_async(&mut conn)
        .await
        .map_err(|e| e.to_string())
}

async fn keys(client: &redis::Client) -> Vec<String> {
    let mut conn = client.get_multiplexed_async_connection().await.unwrap();
    redis::cmd("KEYS")
        .arg("gantry:v1:*")
        .query_async(&mut conn)
        .await
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_servers_share_results_through_redis_over_tls() {
    let certs = Certs::generate();
    let redis = TlsRedis::start(&certs, "no");
    let repo = Repo::new().fake("m", "");
    let mut config = crate::common::config(repo.path());
    config.cache.redis_url = redis.url("localhost");
    config.cache.redis_ca_file = certs.path("ca.crt");
    config.cache.redis_timeout_ms = 2000;
    let first = TestServer::ready(config.clone(), provider()).await;
    let second = TestServer::ready(config, provider()).await;

    let (status, computed) = first.post("/api/optimized/predict", &body(7)).await;
    assert_eq!(
        (status, &computed["cache"]),
        (200, &Value::Null),
        "{computed}"
    );
    // The L2 write is off the request path: wait until it is in Redis.
    let client =
        gantry::tls::redis::client(&redis.url("localhost"), &trusting(&certs.path("ca.crt")))
            .unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    while keys(&client).await.is_empty() {
        assert!(
            Instant::now() < deadline,
            "the first server never wrote to Redis"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let (status, answer) = second.post("/api/optimized/predict", &body(7)).await;
    assert_eq!(
        (status, answer["cache"].as_str()),
        (200, Some("l2")),
        "{answer}"
    );
    assert_eq!(answer["outputs"], computed["outputs"]);
    let l2 = &second.stats().await["cache"]["l2"];
    assert_eq!(
        (l2["status"].as_str(), l2["hits"].as_u64()),
        (Some("up"), Some(1)),
        "{l2}"
    );

    // `#insecure` encrypts without checking the certificate at all.
    let insecure = gantry::tls::redis::client(
        &format!("{}/#insecure", redis.url("127.0.0.2")),
        &RedisTlsFiles::default(),
    )
    .unwrap();
    assert_eq!(ping(&insecure).await.as_deref(), Ok("PONG"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_with_a_wrong_ca_or_host_is_refused_and_costs_no_request() {
    let certs = Certs::generate();
    let redis = TlsRedis::start(&certs, "no");
    let ca = trusting(&certs.path("ca.crt"));

    let right = gantry::tls::redis::client(&redis.url("127.0.0.1"), &ca).unwrap();
    assert_eq!(ping(&right).await.as_deref(), Ok("PONG"));
    let wrong_ca = gantry::tls::redis::client(
        &redis.url("localhost"),
        &trusting(&certs.path("other-ca.crt")),
    )
    .unwrap();
    let err = ping(&wrong_ca).await.unwrap_err();
    assert!(err.contains("UnknownIssuer"), "{err}");
    // The public roots do not know the test CA either.
    let public =
        gantry::tls::redis::client(&redis.url("localhost"), &RedisTlsFiles::default()).unwrap();
    let err = ping(&public).await.unwrap_err();
    assert!(err.contains("UnknownIssuer"), "{err}");
    // 127.0.0.2 reaches the same server, but the certificate does not name it.
    let wrong_host = gantry::tls::redis::client(&redis.url("127.0.0.2"), &ca).unwrap();
    let err = ping(&wrong_host).await.unwrap_err();
    assert!(err.contains("not valid for name"), "{err}");

    // A server that cannot verify Redis serves from L1 and reports it down.
    let repo = Repo::new().fake("m", "");
    let mut config = crate::common::config(repo.path());
    config.cache.redis_url = redis.url("localhost");
    config.cache.redis_ca_file = certs.path("other-ca.crt");
    let server = TestServer::ready(config.clone(), provider()).await;
    for value in 0..5 {
        let (status, answer) = server.post("/api/optimized/predict", &body(value)).await;
        assert_eq!(status, 200, "{answer}");
    }
    assert_eq!(server.stats().await["cache"]["l2"]["status"], "down");
    assert!(keys(&right).await.is_empty(), "nothing reached Redis");

    // Unusable files are start-up errors that name the key.
    config.cache.redis_ca_file = certs.path("missing.crt");
    let err = gantry::cache::ResultCache::new(&config.cache_settings().unwrap()).err();
    let err = err.expect("a missing CA file is refused");
    assert!(
        err.contains("cache.redis_ca_file") && err.contains("missing.crt"),
        "{err}"
    );
    config.cache.redis_ca_file = certs.path("server.key");
    let err = gantry::cache::ResultCache::new(&config.cache_settings().unwrap()).err();
    assert!(err.expect("a key is no CA").contains("cache.redis_ca_file"));
    config.cache.redis_ca_file = certs.path("ca.crt");
    config.cache.redis_url = format!("redis://127.0.0.1:{}", redis.port);
    let err = gantry::cache::ResultCache::new(&config.cache_settings().unwrap()).err();
    assert!(err.expect("files need rediss://").contains("rediss://"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_that_requires_client_certificates_accepts_ours() {
    let certs = Certs::generate();
    let redis = TlsRedis::start(&certs, "yes");
    let ca = trusting(&certs.path("ca.crt"));
    let anonymous = gantry::tls::redis::client(&redis.url("localhost"), &ca).unwrap();
    assert!(
        ping(&anonymous).await.is_err(),
        "a client without a certificate is refused"
    );
    let with_cert = RedisTlsFiles {
        cert_file: Some(certs.path("client.crt")),
        key_file: Some(certs.path("client.key")),
        ..ca.clone()
    };
    let mutual = gantry::tls::redis::client(&redis.url("localhost"), &with_cert).unwrap();
    assert_eq!(ping(&mutual).await.as_deref(), Ok("PONG"));
    let half = RedisTlsFiles {
        key_file: None,
        ..with_cert
    };
    let err = gantry::tls::redis::client(&redis.url("localhost"), &half).unwrap_err();
    assert!(err.to_string().contains("cache.redis_key_file"), "{err}");
}

/// A cluster that accepts TLS connections only (`hostssl`), with the test
/// CA's server certificate.
fn tls_only_cluster(certs: &Certs) -> Cluster {
    let cluster = Cluster::create();
    let cert = cluster.install_file(&certs.path("server.crt"), "server.crt");
    let key = cluster.install_file(&certs.path("server.key"), "server.key");
    cluster.configure(
        &format!(
            "ssl = on\nssl_cert_file = '{}'\nssl_key_file = '{}'",
            display(&cert),
            display(&key)
        ),
        "local all all trust\nhostssl all all 127.0.0.1/32 trust\n",
    );
    cluster.start();
    cluster
}

/// Connects with Gantry's own TLS settings for `url`: the client, or the
/// error's text.
async fn connect(url: &str) -> Result<tokio_postgres::Client, String> {
    let target = gantry::tls::postgres::target(url, None).map_err(|e| e.to_string())?;
    let (client, connection) = target
        .config
        .connect(target.tls)
        .await
        .map_err(|e| gantry::tls::with_causes(&e))?;
    tokio::spawn(connection);
    Ok(client)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn prediction_rows_are_written_through_verified_tls() {
    let certs = Certs::generate();
    let cluster = tls_only_cluster(&certs);
    let repo = Repo::new().fake("m", "");
    let mut config = crate::common::config(repo.path());
    config.cache.enabled = false;
    config.store.database_url = format!(
        "postgres://postgres@localhost:{}/postgres?sslmode=verify-full",
        cluster.port()
    );
    config.store.ca_file = certs.path("ca.crt");
    config.store.flush_ms = 20;
    let server = TestServer::ready(config, provider()).await;
    for value in 0..5 {
        let (status, answer) = server.post("/api/optimized/predict", &body(value)).await;
        assert_eq!(status, 200, "{answer}");
    }
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let pool = server.stats().await["connection_pools"]["postgres"].clone();
        if pool["status"] == "up" && pool["rows_written"].as_u64() >= Some(5) {
            break;
        }
        assert!(Instant::now() < deadline, "rows never written: {pool}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    let url = format!(
        "postgres://postgres@localhost:{}/postgres?sslmode=verify-full&sslrootcert={}",
        cluster.port(),
        display(&certs.path("ca.crt"))
    );
    let client = connect(&url).await.unwrap();
    let rows = client
        .query("SELECT model, http_status FROM predictions", &[])
        .await
        .unwrap();
    assert_eq!(rows.len(), 5);
    assert!(rows
        .iter()
        .all(|r| r.get::<_, String>(0) == "m" && r.get::<_, i32>(1) == 200));
    // Every connection of the server's pool, and this one, is encrypted.
    let row = client
        .query_one(
            "SELECT count(*), bool_and(s.ssl) FROM pg_stat_ssl s JOIN pg_stat_activity a \
             USING (pid) WHERE a.application_name = 'gantry'",
            &[],
        )
        .await
        .unwrap();
    let (connections, all_tls): (i64, Option<bool>) = (row.get(0), row.get(1));
    assert!(
        connections >= 1 && all_tls == Some(true),
        "{connections} {all_tls:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_refuses_plaintext_a_wrong_ca_and_a_wrong_host() {
    let certs = Certs::generate();
    let cluster = tls_only_cluster(&certs);
    let port = cluster.port();
    let ca = display(&certs.path("ca.crt"));
    let other_ca = display(&certs.path("other-ca.crt"));
    let url =
        |host: &str, params: &str| format!("postgres://postgres@{host}:{port}/postgres?{params}");

    // The server takes no plaintext, so no test here can pass over it.
    let err = connect(&url("127.0.0.1", "sslmode=disable"))
        .await
        .err()
        .unwrap();
    assert!(err.contains("no encryption"), "{err}");
    let plain = format!("postgres://postgres@127.0.0.1:{port}/postgres");
    let err = tokio_postgres::connect(&plain, tokio_postgres::NoTls)
        .await
        .err()
        .unwrap();
    let err = gantry::tls::with_causes(&err);
    assert!(err.contains("no encryption"), "{err}");

    // prefer and require encrypt; without a root certificate they check nothing.
    for mode in ["prefer", "require"] {
        connect(&url(
            "wrong.example",
            &format!("sslmode={mode}&hostaddr=127.0.0.1"),
        ))
        .await
        .unwrap_or_else(|e| panic!("{mode}: {e}"));
    }
    // With one they check the chain.
    let err = connect(&url(
        "127.0.0.1",
        &format!("sslmode=require&sslrootcert={other_ca}"),
    ))
    .await
    .err()
    .unwrap();
    assert!(err.contains("UnknownIssuer"), "{err}");

    // verify-full: the right CA and host work; a wrong CA or host is refused.
    connect(&url(
        "127.0.0.1",
        &format!("sslmode=verify-full&sslrootcert={ca}"),
    ))
    .await
    .unwrap();
    let err = connect(&url(
        "localhost",
        &format!("sslmode=verify-full&sslrootcert={other_ca}"),
    ))
    .await
    .err()
    .unwrap();
    assert!(err.contains("UnknownIssuer"), "{err}");
    let err = connect(&url("localhost", "sslmode=verify-full"))
        .await
        .err()
        .unwrap();
    assert!(
        err.contains("UnknownIssuer"),
        "public roots do not know the test CA: {err}"
    );
    let wrong_host = format!("sslmode=verify-full&sslrootcert={ca}&hostaddr=127.0.0.1");
    let err = connect(&url("wrong.example", &wrong_host))
        .await
        .err()
        .unwrap();
    assert!(err.contains("not valid for name"), "{err}");
    // verify-ca checks the chain but not the name.
    let chain_only = format!("sslmode=verify-ca&sslrootcert={ca}&hostaddr=127.0.0.1");
    connect(&url("wrong.example", &chain_only)).await.unwrap();
    let err = connect(&url(
        "localhost",
        &format!("sslmode=verify-ca&sslrootcert={other_ca}"),
    ))
    .await
    .err()
    .unwrap();
    assert!(err.contains("UnknownIssuer"), "{err}");

    // The prediction log with the wrong CA says why it cannot connect.
    let mut store = gantry::store::StoreConfig::new(url("localhost", "sslmode=verify-full"));
    store.ca_file = certs.path("other-ca.crt");
    let log = gantry::store::PredictionLog::start(store).unwrap();
    let err = log.get(uuid::Uuid::new_v4()).await.unwrap_err().to_string();
    assert!(err.contains("UnknownIssuer"), "{err}");
    assert_eq!(log.stats().status, "down");

    // Unusable settings are start-up errors of the log, naming what is wrong.
    let mut store = gantry::store::StoreConfig::new(url("localhost", "sslmode=verify-full"));
    store.ca_file = certs.path("missing.crt");
    let err = gantry::store::PredictionLog::start(store)
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("store.ca_file") && err.contains("missing.crt"),
        "{err}"
    );
    let store = gantry::store::StoreConfig::new(url("localhost", "sslmode=verify-everything"));
    let err = gantry::store::PredictionLog::start(store)
        .unwrap_err()
        .to_string();
    assert!(err.contains("sslmode 'verify-everything'"), "{err}");
}
