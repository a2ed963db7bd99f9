//! `/dashboard` in a real browser: headless Chromium (Debian's `chromium`,
//! or `GANTRY_TEST_CHROMIUM`) driven by playwright-core
//! (tests/dashboard/check.mjs; `make test` installs it with npm) against a
//! server with two fake models, while this test sends both of them
//! traffic. The page must load without console errors, show every model,
//! and its numbers must move under load; on a phone-sized viewport nothing
//! overflows. `GANTRY_TEST_DASHBOARD_SCREENSHOT=FILE` also saves a
//! screenshot of it under load (`make dashboard-screenshot` writes the
//! picture in docs/operations.md).

use std::process::Stdio;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use crate::common::{tensor, Repo, TestServer};
use gantry_actors::engine::fake::{FakeEngineFactory, FakeProvider};
use serde_json::json;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_dashboard_loads_in_chromium_and_moves_under_load() {
    let script = crate::common::root().join("tests/dashboard/check.mjs");
    let modules = crate::common::root().join("tests/dashboard/node_modules/playwright-core");
    assert!(
        modules.exists(),
        "playwright-core is not installed: run `make test` (or `npm ci` in tests/dashboard)"
    );
    let mut provider = FakeProvider::new(FakeEngineFactory::vector(4));
    provider.per_model.insert(
        "detector".into(),
        FakeEngineFactory::vector(4).with_delay(Duration::from_millis(3), Duration::ZERO),
    );
    let repo = Repo::new()
        .fake("classifier", "replicas = 2\nmax_batch_size = 8\n")
        .fake("detector", "max_batch_size = 4\nlatency_target_ms = 1000\n");
    let mut config = crate::common::config(repo.path());
    config.cache.enabled = false;
    let server = TestServer::ready(config, Arc::new(provider)).await;

    // Traffic for both models until the browser is done.
    let done = Arc::new(AtomicBool::new(false));
    let load = (0..4).map(|i| {
        let (client, url, done) = (
            server.client.clone(),
            server.url("/api/optimized/predict"),
            done.clone(),
        );
        let model = if i % 2 == 0 { "classifier" } else { "detector" };
        tokio::spawn(async move {
            let body = json!({"model": model, "inputs": {"x": tensor(&[1, 4], "FP32", json!([1, 2, 3, i]))}});
            while !done.load(Ordering::Relaxed) {
                let sent = client.post(&url).json(&body).send().await;
                assert_eq!(sent.map(|r| r.status().as_u16()).ok(), Some(200));
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        })
    });
    let load: Vec<_> = load.collect();

    let mut command = tokio::process::Command::new("node");
    command
        .arg(&script)
        .arg(&server.base)
        .arg("classifier,detector")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    if let Some(path) = std::env::var_os("GANTRY_TEST_DASHBOARD_SCREENSHOT") {
        command.arg(path);
    }
    let run = tokio::time::timeout(Duration::from_secs(120), command.output())
        .await
        .expect("the browser check finishes within 2 minutes")
        .expect("node runs (Node 20 on the PATH)");
    done.store(true, Ordering::Relaxed);
    for task in load {
        task.await.expect("every request answered 200");
    }
    let out = String::from_utf8_lossy(&run.stdout);
    let err = String::from_utf8_lossy(&run.stderr);
    assert!(run.status.success(), "{out}\n{err}");
    assert!(out.contains("all dashboard checks passed"), "{out}\n{err}");
}
