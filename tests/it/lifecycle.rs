//! Operators changing a live server: scaling replicas up and down under
//! load fails no request, reload adds, rescales, replaces and removes models,
//! the Triton repository API loads and unloads, admin routes need the token,
//! and shutting down refuses new work. (Engine failures: `supervision.rs`.)

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::common::live::{
    admin, body, no_cache, provider, replica_states, rewrite_and_reload, until,
};
use crate::common::{Repo, TestServer};
use serde_json::json;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scaling_1_to_4_to_1_under_load_fails_no_request() {
    let repo = Repo::new().fake(
        "m",
        "replicas = 1\nmax_batch_size = 4\nbatch_window_ms = 5\nmemory_mb = 100\n",
    );
    let server = Arc::new(
        TestServer::ready(no_cache(crate::common::config(repo.path())), provider(20)).await,
    );
    let running = Arc::new(AtomicBool::new(true));
    let sent = Arc::new(AtomicUsize::new(0));
    let load: Vec<_> = (0..8)
        .map(|worker| {
            let (server, running, sent) = (server.clone(), running.clone(), sent.clone());
            tokio::spawn(async move {
                let mut i = worker * 1_000_000;
                while running.load(Ordering::Relaxed) {
                    let (status, answer) =
                        server.post("/api/optimized/predict", &body("m", i)).await;
                    assert_eq!(status, 200, "a request failed while scaling: {answer}");
                    assert_eq!(
                        answer["outputs"]["y"]["data"][0].as_f64(),
                        Some(2.0 * i as f64 + 1.0)
                    );
                    sent.fetch_add(1, Ordering::Relaxed);
                    i += 1;
                }
            })
        })
        .collect();
    tokio::time::sleep(Duration::from_millis(300)).await;
    let (status, answer) = admin(
        &server,
        reqwest::Method::PUT,
        "/api/optimized/models/m/replicas",
        Some(json!({"replicas": 4})),
    )
    .await;
    assert_eq!(
        (status, answer["previous_replicas"].as_u64()),
        (200, Some(1)),
        "{answer}"
    );
    let stats = until(&server, "4 ready replicas", |s| {
        replica_states(s, "m") == ["ready"; 4]
    })
    .await;
    assert_eq!(stats["memory"]["reserved_mb"], 400);
    tokio::time::sleep(Duration::from_millis(300)).await;
    let (status, _) = admin(
        &server,
        reqwest::Method::PUT,
        "/api/optimized/models/m/replicas",
        Some(json!({"replicas": 1})),
    )
    .await;
    assert_eq!(status, 200);
    // A drained replica's reservation is held until its thread has dropped
    // the engine, a moment after the slot leaves the stats: wait for both.
    let stats = until(&server, "back to one replica, its memory given back", |s| {
        replica_states(s, "m") == ["ready"] && s["memory"]["reserved_mb"] == 100
    })
    .await;
    assert_eq!(
        stats["memory"]["reserved_mb"], 100,
        "drained replicas give their memory back"
    );
    tokio::time::sleep(Duration::from_millis(300)).await;
    running.store(false, Ordering::Relaxed);
    for worker in load {
        worker.await.expect("no request failed");
    }
    let served: u64 = stats["model_pools"]["m"]["replicas"][0]["processed"]
        .as_u64()
        .unwrap();
    assert!(served > 0);
    assert!(sent.load(Ordering::Relaxed) > 50, "load ran");
    let (_, health) = server.get("/api/optimized/health").await;
    assert_eq!(health["models"]["m"]["replicas"], 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reload_adds_rescales_replaces_and_removes_models() {
    let repo = Repo::new()
        .fake("a", "replicas = 1\nmax_batch_size = 4\n")
        .fake("gone", "replicas = 1\n");
    let server = TestServer::ready(no_cache(crate::common::config(repo.path())), provider(0)).await;
    std::fs::write(
        repo.path().join("a/model.toml"),
        "replicas = 2\nmax_batch_size = 4\n",
    )
    .unwrap();
    std::fs::remove_dir_all(repo.path().join("gone")).unwrap();
    let repo = repo.fake("new", "replicas = 1\n");
    let (status, report) = admin(
        &server,
        reqwest::Method::POST,
        "/api/optimized/reload",
        None,
    )
    .await;
    assert_eq!(status, 200, "{report}");
    assert_eq!(
        report["models"],
        json!({"a": "rescaled", "new": "added", "gone": "removed"})
    );
    until(&server, "a at 2 and new ready", |s| {
        replica_states(s, "a") == ["ready", "ready"] && replica_states(s, "new") == ["ready"]
    })
    .await;
    let (status, _) = server.post("/api/optimized/predict", &body("new", 1)).await;
    assert_eq!(status, 200);
    let (status, answer) = server
        .post("/api/optimized/predict", &body("gone", 1))
        .await;
    assert_eq!(
        (status, answer["code"].as_str()),
        (404, Some("model_not_found"))
    );

    // A settings change replaces the model blue-green; it serves throughout.
    let (_, report) = rewrite_and_reload(
        &server,
        repo.path(),
        "a",
        "replicas = 1\nmax_batch_size = 2\n",
    )
    .await;
    assert_eq!(report["models"]["a"], "replacing");
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let (status, _) = server.post("/api/optimized/predict", &body("a", 7)).await;
        assert_eq!(status, 200, "the model serves while it is replaced");
        let stats = server.stats().await;
        if stats["model_pools"]["a"]["batcher"]["max_batch_size"] == 2 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "replacement never took over: {stats}"
        );
    }
    let (_, report) = admin(
        &server,
        reqwest::Method::POST,
        "/api/optimized/reload",
        None,
    )
    .await;
    assert_eq!(report["models"]["a"], "unchanged");

    // A broken model.toml is reported and leaves the others alone.
    let (_, report) =
        rewrite_and_reload(&server, repo.path(), "new", "replicas = \"many\"\n").await;
    assert!(
        report["failed_models"]["new"]
            .as_str()
            .unwrap()
            .contains("replicas"),
        "{report}"
    );
    let (status, _) = server.post("/api/optimized/predict", &body("new", 1)).await;
    assert_eq!(
        status, 200,
        "a failed reload of a model keeps the running one"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_triton_repository_api_loads_and_unloads() {
    let repo = Repo::new().fake("a", "").fake("b", "");
    let server = TestServer::ready(no_cache(crate::common::config(repo.path())), provider(0)).await;
    let (status, index) = admin(
        &server,
        reqwest::Method::POST,
        "/v2/repository/index",
        Some(json!({})),
    )
    .await;
    assert_eq!(status, 200);
    let names: Vec<&str> = index
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["a", "b"]);
    assert!(index
        .as_array()
        .unwrap()
        .iter()
        .all(|e| e["state"] == "READY"));

    let (status, _) = admin(
        &server,
        reqwest::Method::POST,
        "/v2/repository/models/b/unload",
        Some(json!({})),
    )
    .await;
    assert_eq!(status, 200);
    let (status, _) = server.get("/v2/models/b/ready").await;
    assert_eq!(status, 404);
    let (status, answer) = admin(
        &server,
        reqwest::Method::POST,
        "/v2/repository/models/b/load",
        Some(json!({})),
    )
    .await;
    assert_eq!((status, answer["change"].as_str()), (200, Some("added")));
    until(&server, "b ready again", |s| {
        replica_states(s, "b") == ["ready"]
    })
    .await;
    let (status, body) = admin(
        &server,
        reqwest::Method::POST,
        "/v2/repository/models/nope/load",
        Some(json!({})),
    )
    .await;
    assert_eq!(
        (status, body["code"].as_str()),
        (404, Some("model_not_found"))
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admin_routes_need_the_token_when_one_is_set() {
    let repo = Repo::new().fake("a", "");
    let mut config = no_cache(crate::common::config(repo.path()));
    config.server.admin_token = "s3cret".into();
    let server = TestServer::ready(config, provider(0)).await;
    let url = server.url("/api/optimized/models/a/replicas");
    let scale = json!({"replicas": 2});
    let r = server.client.put(&url).json(&scale).send().await.unwrap();
    assert_eq!(r.status(), 401);
    assert_eq!(r.headers()["www-authenticate"], "Bearer");
    let r = server
        .client
        .put(&url)
        .bearer_auth("wrong")
        .json(&scale)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);
    let r = server
        .client
        .put(&url)
        .bearer_auth("s3cret")
        .json(&scale)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let r = server
        .client
        .post(server.url("/api/optimized/reload"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);
    let r = server
        .client
        .post(server.url("/v2/repository/models/a/unload"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutting_down_turns_readiness_503_and_refuses_new_predictions() {
    let repo = Repo::new().fake("m", "");
    let server = TestServer::ready(no_cache(crate::common::config(repo.path())), provider(0)).await;
    server.state.service.shutdown().begin_refusing();
    let (status, _) = server.get("/v2/health/ready").await;
    assert_eq!(status, 503);
    let (status, health) = server.get("/api/optimized/health").await;
    assert_eq!(
        (status, health["status"].as_str()),
        (503, Some("shutting_down"))
    );
    let (status, answer) = server.post("/api/optimized/predict", &body("m", 1)).await;
    assert_eq!(
        (status, answer["code"].as_str()),
        (503, Some("shutting_down"))
    );
    let (status, _) = server.get("/v2/health/live").await;
    assert_eq!(status, 200, "still alive while draining");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replaced_model_keeps_exactly_its_own_reservation() {
    let repo = Repo::new().fake("a", "memory_mb = 100\n");
    let server = TestServer::ready(no_cache(crate::common::config(repo.path())), provider(0)).await;
    let (_, report) = rewrite_and_reload(
        &server,
        repo.path(),
        "a",
        "memory_mb = 100\nmax_batch_size = 2\n",
    )
    .await;
    assert_eq!(report["models"]["a"], "replacing");
    until(&server, "the replacement serving", |s| {
        s["model_pools"]["a"]["batcher"]["max_batch_size"] == 2
            && replica_states(s, "a") == ["ready"]
    })
    .await;
    // The old instance drains (after a one-second grace) and releases its
    // own reservation, not the new one's.
    until(&server, "the old reservation released", |s| {
        s["memory"]["reserved_mb"] == 100
    })
    .await;
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let stats = server.stats().await;
    assert_eq!(stats["memory"]["reserved_mb"], 100, "{}", stats["memory"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scaling_up_and_straight_back_down_leaks_no_reservation() {
    let repo = Repo::new().fake("m", "memory_mb = 100\n");
    let server = TestServer::ready(no_cache(crate::common::config(repo.path())), provider(0)).await;
    let path = "/api/optimized/models/m/replicas";
    for replicas in [6, 1, 5, 1] {
        let (status, _) = admin(
            &server,
            reqwest::Method::PUT,
            path,
            Some(json!({ "replicas": replicas })),
        )
        .await;
        assert_eq!(status, 200);
    }
    let stats = until(&server, "one replica and its reservation only", |s| {
        replica_states(s, "m") == ["ready"] && s["memory"]["reserved_mb"] == 100
    })
    .await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let later = server.stats().await;
    assert_eq!(later["memory"]["reserved_mb"], 100, "{}", later["memory"]);
    assert_eq!(replica_states(&later, "m"), ["ready"]);
    assert_eq!(stats["memory"]["reserved_mb"], 100, "{}", stats["memory"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn back_to_back_reloads_end_on_the_newest_settings() {
    let repo = Repo::new().fake("a", "memory_mb = 100\n");
    let server = TestServer::ready(no_cache(crate::common::config(repo.path())), provider(0)).await;
    for cap in [2, 3] {
        let toml = format!("memory_mb = 100\nmax_batch_size = {cap}\n");
        let (status, _) = rewrite_and_reload(&server, repo.path(), "a", &toml).await;
        assert_eq!(status, 200);
    }
    until(
        &server,
        "the newest settings serving with one reservation",
        |s| {
            s["model_pools"]["a"]["batcher"]["max_batch_size"] == 3
                && s["memory"]["reserved_mb"] == 100
        },
    )
    .await;
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let stats = server.stats().await;
    assert_eq!(stats["model_pools"]["a"]["batcher"]["max_batch_size"], 3);
    assert_eq!(stats["memory"]["reserved_mb"], 100, "{}", stats["memory"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scaling_while_a_replacement_is_pending_carries_over_to_the_new_instance() {
    let repo = Repo::new().fake("m", "memory_mb = 100\n");
    // Warmup runs two slow inferences, so a replacement stays pending a while.
    let server =
        TestServer::ready(no_cache(crate::common::config(repo.path())), provider(300)).await;
    let (status, report) = rewrite_and_reload(
        &server,
        repo.path(),
        "m",
        "memory_mb = 100\nmax_batch_size = 4\n",
    )
    .await;
    assert_eq!(
        (status, report["models"]["m"].as_str()),
        (200, Some("replacing")),
        "{report}"
    );
    let (status, answer) = admin(
        &server,
        reqwest::Method::PUT,
        "/api/optimized/models/m/replicas",
        Some(json!({ "replicas": 2 })),
    )
    .await;
    assert_eq!(status, 200, "{answer}");
    let stats = until(&server, "the new instance with two ready replicas", |s| {
        s["model_pools"]["m"]["batcher"]["max_batch_size"] == 4
            && replica_states(s, "m") == ["ready", "ready"]
    })
    .await;
    // The previous instance drains and gives its reservations back.
    let later = until(&server, "only the new instance's reservations", |s| {
        s["memory"]["reserved_mb"] == 200
    })
    .await;
    assert_eq!(
        replica_states(&later, "m"),
        ["ready", "ready"],
        "{}",
        stats["model_pools"]["m"]
    );
}
