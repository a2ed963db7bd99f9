//! The gRPC server's limits, with the tonic client generated from the
//! same `.proto` files: a full queue is RESOURCE_EXHAUSTED with HTTP's
//! message and every call gets one answer; a message over the body limit
//! (sent as is, or gzipped and inflating past it) is RESOURCE_EXHAUSTED,
//! on a unary call and on a stream; answers are gzipped only where
//! `server.grpc_compress_answers` says, whatever a client can read; and
//! SIGTERM on the binary drains an open stream (answered during the drain
//! delay, ended after it, exit 0).
//! The official Python client's view is in tests/it/clients.rs.

use std::sync::Arc;
use std::time::Duration;

use crate::common::binary::Gantry;
use crate::common::{Repo, TestServer};
use gantry::grpc::proto::grpc_inference_service_client::GrpcInferenceServiceClient;
use gantry::grpc::proto::{ModelInferRequest, ModelInferResponse, ModelStreamInferResponse};
use gantry_actors::engine::fake::{FakeEngineFactory, FakeProvider};
use tonic::codec::CompressionEncoding;
use tonic::transport::Channel;
use tonic::Code;

type Client = GrpcInferenceServiceClient<Channel>;

async fn client(addr: &str) -> Client {
    GrpcInferenceServiceClient::connect(format!("http://{addr}"))
        .await
        .expect("gRPC connects")
        .max_decoding_message_size(usize::MAX)
        .max_encoding_message_size(usize::MAX)
}

/// The requests of a stream, as the test sends them on `rx`'s channel.
fn outgoing(
    rx: tokio::sync::mpsc::Receiver<ModelInferRequest>,
) -> impl futures_util::Stream<Item = ModelInferRequest> + Send + 'static {
    futures_util::stream::unfold(rx, |mut rx| async move {
        rx.recv().await.map(|request| (request, rx))
    })
}

/// The fake `x: FP32 [-1, 4]` models: "m" fast, "slow" 600 ms a batch of
/// one with a queue of one; body limit 1 MB, gRPC on a free port.
async fn fake_server() -> (TestServer, Repo) {
    fake_server_with(|_| {}).await
}

/// [`fake_server`] with `tweak` applied to its config.
async fn fake_server_with(tweak: impl FnOnce(&mut gantry::config::Config)) -> (TestServer, Repo) {
    let mut provider = FakeProvider::new(FakeEngineFactory::vector(4));
    provider.per_model.insert(
        "slow".into(),
        FakeEngineFactory::vector(4).with_delay(Duration::from_millis(600), Duration::ZERO),
    );
    let repo = Repo::new()
        .fake("m", "max_batch_size = 4\n")
        .fake("slow", "max_batch_size = 1\nqueue_capacity = 1\n");
    let mut config = crate::common::config(repo.path());
    config.server.grpc_bind = "127.0.0.1:0".into();
    config.server.body_limit_mb = 1;
    config.cache.enabled = false;
    tweak(&mut config);
    (TestServer::ready(config, Arc::new(provider)).await, repo)
}

fn answer_y(answer: &ModelInferResponse) -> Vec<f32> {
    answer.raw_output_contents[0]
        .chunks_exact(4)
        .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_queue_is_resource_exhausted_and_every_call_is_answered() {
    let (server, _repo) = fake_server().await;
    let grpc = client(server.grpc.as_deref().expect("gRPC is on")).await;
    // One runs, one waits at the replica, one in the queue; the rest are
    // refused, as over HTTP (tests/it/errors.rs).
    let calls = (0..8).map(|i| {
        let mut grpc = grpc.clone();
        async move {
            grpc.model_infer(crate::common::grpc_request("slow", "x", &[1, 4], i as f32))
                .await
        }
    });
    let answers = futures_util::future::join_all(calls).await;
    let (mut ok, mut refused) = (0u64, 0u64);
    for answer in answers {
        match answer {
            Ok(_) => ok += 1,
            Err(status) => {
                assert_eq!(status.code(), Code::ResourceExhausted, "{status:?}");
                assert!(status.message().contains("queue"), "{status:?}");
                refused += 1;
            }
        }
    }
    assert_eq!(ok + refused, 8, "every call got exactly one answer");
    assert!(refused >= 1 && ok >= 2, "ok {ok}, refused {refused}");
    let stats = server.stats().await;
    let statuses = &stats["performance_metrics"]["models"]["slow"]["statuses"];
    assert_eq!(statuses["200"].as_u64(), Some(ok), "{statuses}");
    assert_eq!(statuses["429"].as_u64(), Some(refused), "{statuses}");
    assert_eq!(
        stats["model_pools"]["slow"]["batcher"]["items"].as_u64(),
        Some(ok)
    );
}

/// The encoding an answer came in (`grpc-encoding`; none is identity).
fn encoding<T>(answer: &tonic::Response<T>) -> Option<String> {
    answer
        .metadata()
        .get("grpc-encoding")
        .map(|v| v.to_str().unwrap().to_string())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn answers_are_gzipped_only_where_the_config_says() {
    // A client that can read gzip says so on every call, as grpcio does:
    // by default that asks for nothing, and the answer goes out as it is.
    let (server, _repo) = fake_server().await;
    let addr = server.grpc.clone().expect("gRPC is on");
    let mut reads_gzip = client(&addr)
        .await
        .accept_compressed(CompressionEncoding::Gzip)
        .send_compressed(CompressionEncoding::Gzip);
    let small = crate::common::grpc_request("m", "x", &[2, 4], 1.0);
    let answer = reads_gzip.model_infer(small.clone()).await.unwrap();
    assert_eq!(encoding(&answer), None);
    assert_eq!(answer_y(answer.get_ref()), vec![3.0; 8]);
    drop(server);

    // `server.grpc_compress_answers` gzips them for such clients, and only
    // for them.
    let (server, _repo) = fake_server_with(|c| c.server.grpc_compress_answers = true).await;
    let addr = server.grpc.clone().expect("gRPC is on");
    let mut reads_gzip = client(&addr)
        .await
        .accept_compressed(CompressionEncoding::Gzip);
    let answer = reads_gzip.model_infer(small.clone()).await.unwrap();
    assert_eq!(encoding(&answer).as_deref(), Some("gzip"));
    assert_eq!(answer_y(answer.get_ref()), vec![3.0; 8]);
    let answer = client(&addr).await.model_infer(small).await.unwrap();
    assert_eq!(encoding(&answer), None);
    assert_eq!(answer_y(answer.get_ref()), vec![3.0; 8]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn messages_over_the_body_limit_are_resource_exhausted() {
    let (server, _repo) = fake_server().await;
    let addr = server.grpc.clone().expect("gRPC is on");
    let mut grpc = client(&addr).await;
    // 1.2 MB of input: over the 1 MB limit as sent.
    let big = crate::common::grpc_request("m", "x", &[75_000, 4], 1.0);
    let refused = grpc.model_infer(big.clone()).await.unwrap_err();
    assert_eq!(refused.code(), Code::ResourceExhausted, "{refused:?}");
    // The same message gzipped is a few KB on the wire and inflates past
    // the limit: refused alike, without inflating it all.
    let mut gzipped = client(&addr)
        .await
        .send_compressed(CompressionEncoding::Gzip);
    let refused = gzipped.model_infer(big.clone()).await.unwrap_err();
    assert_eq!(refused.code(), Code::ResourceExhausted, "{refused:?}");
    // Under the limit, gzipped or not, it is served.
    let small = crate::common::grpc_request("m", "x", &[2, 4], 1.0);
    let answer = gzipped
        .model_infer(small.clone())
        .await
        .unwrap()
        .into_inner();
    assert_eq!(answer_y(&answer), vec![3.0; 8]);

    // On a stream: the request before the big one is answered, then the
    // stream ends with RESOURCE_EXHAUSTED.
    let (tx, rx) = tokio::sync::mpsc::channel(4);
    let mut answers = grpc
        .model_stream_infer(outgoing(rx))
        .await
        .unwrap()
        .into_inner();
    tx.send(ModelInferRequest {
        id: "first".into(),
        ..small.clone()
    })
    .await
    .unwrap();
    let first: ModelStreamInferResponse = answers.message().await.unwrap().expect("an answer");
    assert_eq!(first.error_message, "");
    assert_eq!(first.infer_response.map(|r| r.id).as_deref(), Some("first"));
    tx.send(big).await.unwrap();
    let ended = answers.message().await.unwrap_err();
    assert_eq!(ended.code(), Code::ResourceExhausted, "{ended:?}");

    // The server goes on serving.
    let answer = grpc.model_infer(small).await.unwrap().into_inner();
    assert_eq!(answer_y(&answer), vec![3.0; 8]);
}

/// SIGTERM on the binary with a stream open: during the drain delay the
/// stream's requests are still answered; once new requests are refused the
/// server stops reading it and ends it cleanly, and the process exits 0
/// without waiting for the client to close its side.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_drains_an_open_grpc_stream() {
    let repo = Repo::new().copy("models/tiny-classifier", "tiny-classifier", None);
    let gantry = Gantry::spawn_with_grpc(
        repo.path(),
        &[
            ("GANTRY__CACHE__ENABLED", "false"),
            ("GANTRY__SERVER__DRAIN_DELAY_S", "2"),
            ("GANTRY__SERVER__SHUTDOWN_TIMEOUT_S", "30"),
        ],
    );
    let http = reqwest::Client::new();
    gantry.wait_for_200(&http, "/v2/health/ready").await;
    let mut grpc = client(gantry.grpc.as_deref().expect("gRPC is on")).await;
    let (tx, rx) = tokio::sync::mpsc::channel(4);
    let mut answers = grpc
        .model_stream_infer(outgoing(rx))
        .await
        .unwrap()
        .into_inner();
    let features = |id: &str| ModelInferRequest {
        id: id.into(),
        ..crate::common::grpc_request("tiny-classifier", "features", &[1, 64], 0.5)
    };
    tx.send(features("before")).await.unwrap();
    let before = answers.message().await.unwrap().expect("an answer");
    assert_eq!(before.error_message, "");

    let signalled = std::time::Instant::now();
    gantry.signal("TERM");
    gantry.wait_for_log("still serving");
    tx.send(features("during")).await.unwrap();
    let during = answers.message().await.unwrap().expect("an answer");
    assert_eq!(during.error_message, "", "served during the drain delay");
    assert_eq!(
        during.infer_response.map(|r| r.id).as_deref(),
        Some("during")
    );

    // The client keeps its side open; the server ends the stream.
    let ended = tokio::time::timeout(Duration::from_secs(15), answers.message())
        .await
        .expect("the stream ends within the drain");
    assert!(matches!(ended, Ok(None)), "ended cleanly: {ended:?}");
    assert!(signalled.elapsed() >= Duration::from_secs(2));
    drop(tx);
    let status = tokio::time::timeout(Duration::from_secs(20), gantry.exit_status())
        .await
        .expect("the process exits without the shutdown timeout");
    assert_eq!(status.code(), Some(0));
}
