//! `runtime.compute_nice`, with ONNX Runtime in this process: the threads
//! that run models (the replica's, the shared intra-op pool's) run at the
//! compute nice value, the threads that serve requests (the HTTP workers,
//! the test's own) at the process's, and a request is still answered.

use crate::common::{tensor, Repo, TestServer};
use serde_json::json;

/// Every thread of this process: its name and nice value
/// (`/proc/self/task/*/stat`: the 19th field, the 17th after the name).
fn thread_nices() -> Vec<(String, i64)> {
    let mut threads = Vec::new();
    for task in std::fs::read_dir("/proc/self/task").expect("/proc/self/task") {
        let path = task.expect("task").path();
        let Ok(stat) = std::fs::read_to_string(path.join("stat")) else {
            continue; // the thread ended
        };
        let (head, tail) = stat.rsplit_once(')').expect("stat has a name");
        let name = head.split_once('(').map_or("", |(_, n)| n).to_string();
        let nice = tail.split_whitespace().nth(16).expect("nice field");
        threads.push((name, nice.parse().expect("a number")));
    }
    threads
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn model_threads_run_below_the_threads_that_serve() {
    let repo = Repo::new().copy("models/tiny-classifier", "m", None);
    let server = TestServer::ready(
        crate::common::config(repo.path()),
        crate::common::onnx_provider(),
    )
    .await;
    let compute = gantry_actors::engine::compute_priority::compute_nice();
    assert_eq!(compute, 10, "the default");
    let before = thread_nices();
    let base = before.iter().map(|(_, nice)| *nice).min().expect("threads");
    let lowered: Vec<_> = before.iter().filter(|(_, n)| *n > base).collect();
    // The replica's thread at least (and the shared pool's, where there
    // are two cores or more), at the compute nice value.
    assert!(!lowered.is_empty(), "{before:?}");
    assert!(
        lowered.iter().all(|(_, n)| *n == base.max(compute.into())),
        "{before:?}"
    );
    // The two HTTP workers (and the acceptor) serve at the process's.
    let workers = before
        .iter()
        .filter(|(name, nice)| name.starts_with("actix-") && *nice == base)
        .count();
    assert!(workers >= 2, "{before:?}");
    let features = tensor(&[1, 64], "FP32", json!(vec![0.5f32; 64]));
    let (status, answer) = server
        .post(
            "/api/optimized/predict",
            &json!({"model": "m", "inputs": {"features": features}}),
        )
        .await;
    assert_eq!(status, 200, "{answer}");
}
