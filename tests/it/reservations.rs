//! Reservations always come back: unloading and loading a model, scaling
//! down and up, reloading a changed model (blue-green), loads that fail (a
//! model that cannot start, one that does not fit) and replica crashes,
//! each done many times, leave the memory budget exactly as it was (the
//! whole `memory` section of stats), and the model serves after each round.
//! The budgets are tight, so that a reservation that stays held shows as a
//! replica refused.

use std::sync::Arc;

use crate::common::live::{
    admin, body, no_cache, provider, replica_states, rewrite_and_reload, until,
};
use crate::common::{Repo, TestServer};
use gantry_actors::engine::fake::{FakeEngineFactory, FakeProvider};
use reqwest::Method;
use serde_json::{json, Value};

const ROUNDS: usize = 5;

/// A config whose memory budget holds `slots` replicas of 100 MB.
fn tight(repo: &Repo, slots: u64) -> gantry::config::Config {
    let mut config = no_cache(crate::common::config(repo.path()));
    config.memory.limit_mb = 100 * slots;
    config
}

/// Waits until the budget is back to `before` and `model` serves from
/// exactly `replicas` ready replicas; then asks it for a prediction.
async fn settled(server: &TestServer, model: &str, replicas: usize, before: &Value, round: usize) {
    let what =
        format!("round {round}: {replicas} ready replicas of {model} and the budget as before");
    until(server, &what, |s| {
        replica_states(s, model) == vec!["ready"; replicas] && s["memory"] == before["memory"]
    })
    .await;
    let (status, answer) = server
        .post("/api/optimized/predict", &body(model, round))
        .await;
    assert_eq!(status, 200, "round {round}: {answer}");
    assert_eq!(
        answer["outputs"]["y"]["data"][0].as_f64(),
        Some(2.0 * round as f64 + 1.0)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unload_then_load_serves_again_with_the_same_budget() {
    // Room for one replica: the reloaded replica fits only once the
    // unloaded one has given its memory back.
    let repo = Repo::new().fake("m", "memory_mb = 100\n");
    let server = TestServer::ready(tight(&repo, 1), provider(0)).await;
    let before = server.stats().await;
    assert_eq!(before["memory"]["reserved_mb"], 100);
    for round in 0..ROUNDS {
        let unload = "/v2/repository/models/m/unload";
        let (status, answer) = admin(&server, Method::POST, unload, Some(json!({}))).await;
        assert_eq!(status, 200, "{answer}");
        let load = "/v2/repository/models/m/load";
        let (status, answer) = admin(&server, Method::POST, load, Some(json!({}))).await;
        assert_eq!((status, answer["change"].as_str()), (200, Some("added")));
        settled(&server, "m", 1, &before, round).await;
        let (status, health) = server.get("/api/optimized/health").await;
        assert_eq!(status, 200, "{health}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scaling_down_and_up_again_and_again_keeps_the_budget_exact() {
    // Replicas take a while to warm up, so scaling down catches some still
    // loading (they hold their reservation until their thread reports) and
    // scaling up again finds the memory budget full for a while.
    let repo = Repo::new().fake("m", "memory_mb = 100\n");
    let server = TestServer::ready(tight(&repo, 3), provider(30)).await;
    let before = server.stats().await;
    let path = "/api/optimized/models/m/replicas";
    for round in 0..ROUNDS {
        for replicas in [3, 0, 2, 1] {
            let scale = Some(json!({ "replicas": replicas }));
            let (status, answer) = admin(&server, Method::PUT, path, scale).await;
            assert_eq!(status, 200, "{answer}");
        }
        settled(&server, "m", 1, &before, round).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reloading_a_changed_model_again_and_again_keeps_the_budget_exact() {
    // Room for two: the replacement and the instance it replaces, side by side.
    let repo = Repo::new().fake("m", "memory_mb = 100\n");
    let server = TestServer::ready(tight(&repo, 2), provider(0)).await;
    let before = server.stats().await;
    for round in 0..ROUNDS {
        let cap = 2 + round % 2;
        let toml = format!("memory_mb = 100\nmax_batch_size = {cap}\n");
        let (status, report) = rewrite_and_reload(&server, repo.path(), "m", &toml).await;
        assert_eq!(
            (status, report["models"]["m"].as_str()),
            (200, Some("replacing")),
            "{report}"
        );
        until(&server, "the replacement serving", |s| {
            s["model_pools"]["m"]["batcher"]["max_batch_size"] == cap
        })
        .await;
        settled(&server, "m", 1, &before, round).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn loads_that_fail_leave_the_budget_as_it_was() {
    // `broken` never starts (every load of its engine fails); `huge` does
    // not fit the budget; `garbled` has a model.toml that does not parse.
    let repo = Repo::new().fake("m", "memory_mb = 100\n");
    let mut fakes = FakeProvider::new(FakeEngineFactory::vector(4));
    let mut broken = FakeEngineFactory::vector(4);
    broken.failing_loads = usize::MAX;
    fakes.per_model.insert("broken".into(), broken);
    let server = TestServer::ready(tight(&repo, 2), Arc::new(fakes)).await;
    let before = server.stats().await;
    let repo = repo
        .fake("broken", "memory_mb = 100\n")
        .fake("huge", "memory_mb = 100000\n")
        .fake("garbled", "replicas = \"two\"\n");
    for round in 0..ROUNDS {
        for (model, why) in [("broken", "could not load"), ("huge", "budget")] {
            // The load answers once the model's replica failed or was
            // refused, and the model is gone again.
            let load = format!("/v2/repository/models/{model}/load");
            let (status, answer) = admin(&server, Method::POST, &load, Some(json!({}))).await;
            assert_eq!(status, 400, "{answer}");
            let error = answer["error"].as_str().unwrap_or_default();
            assert!(error.contains(model) && error.contains(why), "{answer}");
            let stats = server.stats().await;
            assert!(stats["model_pools"].get(model).is_none(), "{stats}");
            let unload = format!("/v2/repository/models/{model}/unload");
            let (status, answer) = admin(&server, Method::POST, &unload, Some(json!({}))).await;
            assert_eq!(status, 404, "{answer}");
        }
        let load = "/v2/repository/models/garbled/load";
        let (status, answer) = admin(&server, Method::POST, load, Some(json!({}))).await;
        assert_eq!(
            (status, answer["code"].as_str()),
            (400, Some("bad_request"))
        );
        settled(&server, "m", 1, &before, round).await;
    }
    drop(repo);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replicas_that_crash_and_restart_keep_exactly_their_reservation() {
    let repo = Repo::new().fake("m", "memory_mb = 100\nmax_batch_size = 1\n");
    let mut factory = FakeEngineFactory::vector(4);
    factory.panic_on = Some(666.0);
    let server = TestServer::ready(tight(&repo, 1), Arc::new(FakeProvider::new(factory))).await;
    let before = server.stats().await;
    for round in 0..ROUNDS {
        let (status, answer) = server.post("/api/optimized/predict", &body("m", 666)).await;
        assert_eq!(
            (status, answer["code"].as_str()),
            (500, Some("inference_failed"))
        );
        until(&server, "the replica restarted", |s| {
            s["model_pools"]["m"]["replicas"][0]["restarts"] == round as u64 + 1
        })
        .await;
        settled(&server, "m", 1, &before, round).await;
    }
}
