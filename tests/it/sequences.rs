//! Sequences stick to a replica: with two replicas, each sequence's
//! requests all run on the replica that ran its first one (the batcher
//! honours the pin), while different sequences spread over both. Over
//! real HTTP with the accumulator fixture (ONNX Runtime).

use std::collections::BTreeMap;

use serde_json::{json, Value};

use crate::common::{Repo, TestServer};

/// Batch items each replica has processed, by id.
async fn processed(server: &TestServer) -> BTreeMap<u64, u64> {
    let stats = server.stats().await;
    stats["model_pools"]["accumulator"]["replicas"]
        .as_array()
        .expect("replicas")
        .iter()
        .map(|r| (r["id"].as_u64().unwrap(), r["processed"].as_u64().unwrap()))
        .collect()
}

fn step(sequence: u64, x: f32, start: bool) -> Value {
    json!({
        "inputs": [{"name": "x", "shape": [1, 1], "datatype": "FP32", "data": [x]}],
        "outputs": [{"name": "sum", "parameters": {"binary_data": false}}],
        "parameters": {"sequence_id": sequence, "sequence_start": start},
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_sequence_runs_on_one_replica_and_sequences_spread() {
    let toml = std::fs::read_to_string(
        crate::common::root().join("tests/fixtures/models/accumulator/model.toml"),
    )
    .unwrap()
    .replace("max_batch_size = 8\n", "max_batch_size = 8\nreplicas = 2\n");
    let repo = Repo::new().copy(
        "tests/fixtures/models/accumulator",
        "accumulator",
        Some(&toml),
    );
    let server = TestServer::ready(
        crate::common::config(repo.path()),
        crate::common::onnx_provider(),
    )
    .await;
    let infer = "/v2/models/accumulator/infer";
    let mut used = Vec::new();
    for sequence in [11u64, 12, 13, 14] {
        let before = processed(&server).await;
        let mut sum = 0.0;
        for k in 0..12 {
            let (status, answer) = server.post(infer, &step(sequence, 1.0, k == 0)).await;
            assert_eq!(status, 200, "{answer}");
            sum += 1.0;
            assert_eq!(answer["outputs"][0]["data"][0].as_f64(), Some(sum));
        }
        // A replica counts a batch when it tells its batcher the batch is
        // done, just after it answers: the count may trail the answer.
        let mut after = processed(&server).await;
        for _ in 0..100 {
            let counted: u64 = after
                .iter()
                .map(|(id, n)| n - before.get(id).copied().unwrap_or(0))
                .sum();
            if counted >= 12 {
                break;
            }
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
            after = processed(&server).await;
        }
        let ran: Vec<(u64, u64)> = after
            .iter()
            .map(|(id, n)| (*id, n - before.get(id).copied().unwrap_or(0)))
            .filter(|&(_, n)| n > 0)
            .collect();
        assert_eq!(ran.len(), 1, "sequence {sequence} ran on {ran:?}");
        assert_eq!(ran[0].1, 12);
        used.push(ran[0].0);
    }
    used.sort_unstable();
    used.dedup();
    assert_eq!(used.len(), 2, "sequences start on either replica: {used:?}");
}
