//! Traces over OTLP/HTTP from the real binary to a real receiver in this
//! test (an HTTP server on port 0 decoding the protobuf export requests
//! with `opentelemetry-proto`): a request with a W3C `traceparent`
//! continues the client's trace (its span's parent is the client's span),
//! with the HTTP server conventions and the resource, and the batch that
//! ran it and the prediction log's write that stored it are spans linked
//! to the request's; its cache lookup, queue wait, and an upload's decode
//! and mask are child spans; a gRPC call continues its client's trace; and
//! a collector that is down costs no request: the lost spans are counted.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::common::binary::Gantry;
use crate::common::{tensor, Repo};
use actix_web::{web, App, HttpResponse, HttpServer};
use opentelemetry_proto::tonic::collector::trace::v1::{
    ExportTraceServiceRequest, ExportTraceServiceResponse,
};
use opentelemetry_proto::tonic::common::v1::any_value::Value as AnyValue;
use opentelemetry_proto::tonic::common::v1::KeyValue;
use opentelemetry_proto::tonic::trace::v1::span::SpanKind;
use prost::Message;
use serde_json::json;

/// What the receiver got: every span with its resource's attributes.
#[derive(Default)]
struct Received {
    spans: Vec<(Vec<KeyValue>, opentelemetry_proto::tonic::trace::v1::Span)>,
    content_types: Vec<String>,
}

/// An OTLP/HTTP receiver on 127.0.0.1:0; its base URL.
fn receiver(received: Arc<Mutex<Received>>) -> String {
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        actix_rt::System::new().block_on(async move {
            let server = HttpServer::new(move || {
                let received = received.clone();
                App::new().route(
                    "/v1/traces",
                    web::post().to(move |req: actix_web::HttpRequest, body: web::Bytes| {
                        let received = received.clone();
                        async move {
                            let export = ExportTraceServiceRequest::decode(body.as_ref())
                                .expect("an OTLP protobuf export request");
                            let mut got = received.lock().unwrap();
                            got.content_types.push(
                                req.headers()
                                    .get("content-type")
                                    .and_then(|v| v.to_str().ok())
                                    .unwrap_or_default()
                                    .to_string(),
                            );
                            for resource_spans in export.resource_spans {
                                let resource = resource_spans
                                    .resource
                                    .map(|r| r.attributes)
                                    .unwrap_or_default();
                                for scope in resource_spans.scope_spans {
                                    for span in scope.spans {
                                        got.spans.push((resource.clone(), span));
                                    }
                                }
                            }
                            HttpResponse::Ok()
                                .content_type("application/x-protobuf")
                                .body(ExportTraceServiceResponse::default().encode_to_vec())
                        }
                    }),
                )
            })
            .workers(1)
            .bind("127.0.0.1:0")
            .expect("bind");
            tx.send(server.addrs()[0]).unwrap();
            server.run().await.unwrap();
        });
    });
    let addr = rx
        .recv_timeout(Duration::from_secs(10))
        .expect("receiver up");
    format!("http://{addr}")
}

fn attribute<'a>(attributes: &'a [KeyValue], key: &str) -> Option<&'a AnyValue> {
    attributes
        .iter()
        .find(|kv| kv.key == key)
        .and_then(|kv| kv.value.as_ref()?.value.as_ref())
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

const TRACE: &str = "4bf92f3577b34da6a3ce929d0e0e4736";
const CLIENT_SPAN: &str = "00f067aa0ba902b7";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_continue_the_clients_trace_over_otlp() {
    use gantry::grpc::proto::grpc_inference_service_client::GrpcInferenceServiceClient;

    let received = Arc::new(Mutex::new(Received::default()));
    let endpoint = receiver(received.clone());
    // The prediction log's writes are spans too (the machine's PostgreSQL).
    let database = crate::common::database::TempDatabase::create().await;
    let database_url = database.url();
    let repo = Repo::new()
        .copy("models/tiny-classifier", "tiny-classifier", None)
        .copy("models/spheroid-seg", "spheroid-seg", None);
    let gantry = Gantry::spawn_with_grpc(
        repo.path(),
        &[
            // The cache's lookup is a span of the request (a miss here).
            ("GANTRY__CACHE__ENABLED", "true"),
            ("DATABASE_URL", &database_url),
            ("GANTRY__TELEMETRY__OTLP_ENDPOINT", &endpoint),
            ("GANTRY__TELEMETRY__INSTANCE", "test-instance"),
        ],
    );
    let client = reqwest::Client::new();
    gantry.wait_for_200(&client, "/v2/health/ready").await;
    let traceparent = format!("00-{TRACE}-{CLIENT_SPAN}-01");
    let body = json!({"model": "tiny-classifier",
        "inputs": {"features": tensor(&[1, 64], "FP32", json!(vec![0.25; 64]))}});
    let answer = client
        .post(format!("{}/api/optimized/predict", gantry.base))
        .header("traceparent", &traceparent)
        .json(&body)
        .send()
        .await
        .unwrap();
    assert_eq!(answer.status(), 200);
    // An uploaded image: its decode and its mask are spans of the request.
    let upload_trace = "5bf92f3577b34da6a3ce929d0e0e4737";
    let png =
        std::fs::read(crate::common::root().join("tests/fixtures/media/spheroids.png")).unwrap();
    let form = reqwest::multipart::Form::new()
        .text("model", "spheroid-seg")
        .part(
            "file",
            reqwest::multipart::Part::bytes(png).file_name("spheroids.png"),
        );
    let answer = client
        .post(format!("{}/api/optimized/predict", gantry.base))
        .header("traceparent", format!("00-{upload_trace}-{CLIENT_SPAN}-01"))
        .multipart(form)
        .send()
        .await
        .unwrap();
    assert_eq!(answer.status(), 200, "{:?}", answer.text().await);
    let mut grpc = GrpcInferenceServiceClient::connect(format!(
        "http://{}",
        gantry.grpc.as_deref().expect("gRPC is on")
    ))
    .await
    .unwrap();
    let grpc_trace = "0af7651916cd43dd8448eb211c80319c";
    let mut call = tonic::Request::new(crate::common::grpc_request(
        "tiny-classifier",
        "features",
        &[1, 64],
        0.0,
    ));
    call.metadata_mut().insert(
        "traceparent",
        format!("00-{grpc_trace}-b7ad6b7169203331-01")
            .parse()
            .unwrap(),
    );
    grpc.model_infer(call).await.unwrap();

    // Spans are posted within about a second.
    let deadline = Instant::now() + Duration::from_secs(15);
    let found = |trace: &str| {
        received
            .lock()
            .unwrap()
            .spans
            .iter()
            .find(|(_, s)| hex(&s.trace_id) == trace && s.kind == SpanKind::Server as i32)
            .cloned()
    };
    let linked_batch = || {
        received.lock().unwrap().spans.iter().find_map(|(_, s)| {
            (s.name == "batch" && s.links.iter().any(|l| hex(&l.trace_id) == TRACE))
                .then(|| s.clone())
        })
    };
    // The spans of `trace` whose parent is `parent`, by name.
    let children = |trace: &str, parent: &[u8]| -> Vec<String> {
        let got = received.lock().unwrap();
        let mut names: Vec<String> = got
            .spans
            .iter()
            .filter(|(_, s)| hex(&s.trace_id) == trace && s.parent_span_id == parent)
            .map(|(_, s)| s.name.clone())
            .collect();
        names.sort();
        names
    };
    let upload_children = || {
        found(upload_trace)
            .map(|(_, s)| children(upload_trace, &s.span_id))
            .unwrap_or_default()
    };
    let log_write = || {
        received.lock().unwrap().spans.iter().find_map(|(_, s)| {
            (s.name == "prediction_log.write" && s.links.iter().any(|l| hex(&l.trace_id) == TRACE))
                .then(|| s.clone())
        })
    };
    while (found(TRACE).is_none()
        || found(grpc_trace).is_none()
        || linked_batch().is_none()
        || log_write().is_none()
        || upload_children().len() < 4)
        && Instant::now() < deadline
    {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let (resource, span) = found(TRACE).expect("the HTTP request's span in the client's trace");
    assert_eq!(hex(&span.parent_span_id), CLIENT_SPAN, "{span:?}");
    assert_eq!(span.name, "POST /api/optimized/predict", "{span:?}");
    let attrs = &span.attributes;
    assert_eq!(
        attribute(attrs, "http.request.method"),
        Some(&AnyValue::StringValue("POST".into())),
        "{attrs:?}"
    );
    assert_eq!(
        attribute(attrs, "http.route"),
        Some(&AnyValue::StringValue("/api/optimized/predict".into())),
        "{attrs:?}"
    );
    assert_eq!(
        attribute(attrs, "http.response.status_code"),
        Some(&AnyValue::IntValue(200)),
        "{attrs:?}"
    );
    assert_eq!(
        attribute(&resource, "service.name"),
        Some(&AnyValue::StringValue("gantry".into()))
    );
    assert_eq!(
        attribute(&resource, "service.instance.id"),
        Some(&AnyValue::StringValue("test-instance".into()))
    );
    assert!(attribute(&resource, "service.version").is_some());
    let (_, span) = found(grpc_trace).expect("the gRPC call's span in its client's trace");
    assert_eq!(hex(&span.parent_span_id), "b7ad6b7169203331");
    assert_eq!(
        span.name, "inference.GRPCInferenceService/ModelInfer",
        "{span:?}"
    );
    assert_eq!(
        attribute(&span.attributes, "rpc.grpc.status_code"),
        Some(&AnyValue::IntValue(0))
    );
    // The batch that ran the HTTP request: a span of its own on the
    // replica, linked to the request's span.
    let request_span = found(TRACE).unwrap().1.span_id;
    let batch = linked_batch().expect("a batch span linked to the request's");
    let link = batch
        .links
        .iter()
        .find(|l| hex(&l.trace_id) == TRACE)
        .unwrap();
    assert_eq!(link.span_id, request_span);
    assert_eq!(
        attribute(&batch.attributes, "model"),
        Some(&AnyValue::StringValue("tiny-classifier".into()))
    );
    let request = found(TRACE).unwrap().1;
    assert_eq!(
        children(TRACE, &request.span_id),
        vec!["cache.lookup", "queue"]
    );
    let lookup = received
        .lock()
        .unwrap()
        .spans
        .iter()
        .find(|(_, s)| s.name == "cache.lookup" && hex(&s.trace_id) == TRACE)
        .cloned()
        .unwrap()
        .1;
    assert_eq!(
        attribute(&lookup.attributes, "cache.hit"),
        Some(&AnyValue::BoolValue(false))
    );
    assert_eq!(
        upload_children(),
        vec!["cache.lookup", "media.decode", "media.postprocess", "queue"]
    );
    // The prediction log's write: a span linked to the request it stored.
    let write = log_write().expect("a prediction_log.write span linked to the request's");
    assert!(
        write.links.iter().any(|l| l.span_id == request.span_id),
        "{write:?}"
    );
    let types = received.lock().unwrap().content_types.clone();
    assert!(
        types.iter().all(|t| t == "application/x-protobuf"),
        "{types:?}"
    );
    gantry.signal("TERM");
    assert_eq!(gantry.exit_status().await.code(), Some(0));
}

/// A collector that is not there: every request is still answered, and
/// the spans the exports lost are counted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_collector_that_is_down_costs_no_request() {
    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let endpoint = format!("http://{}", closed.local_addr().unwrap());
    drop(closed);
    let repo = Repo::new().copy("models/tiny-classifier", "tiny-classifier", None);
    let gantry = Gantry::spawn(
        repo.path(),
        &[
            ("GANTRY__CACHE__ENABLED", "false"),
            ("GANTRY__TELEMETRY__OTLP_ENDPOINT", &endpoint),
        ],
    );
    let client = reqwest::Client::new();
    gantry.wait_for_200(&client, "/v2/health/ready").await;
    let body = json!({"model": "tiny-classifier",
        "inputs": {"features": tensor(&[1, 64], "FP32", json!(vec![0.5; 64]))}});
    for _ in 0..50 {
        let answer = client
            .post(format!("{}/api/optimized/predict", gantry.base))
            .json(&body)
            .send()
            .await
            .unwrap();
        assert_eq!(answer.status(), 200);
    }
    let deadline = Instant::now() + Duration::from_secs(15);
    let failed = loop {
        let page = client
            .get(format!("{}/metrics", gantry.base))
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        let failed: u64 = page
            .lines()
            .find_map(|l| l.strip_prefix("gantry_trace_spans_export_failed_total "))
            .and_then(|v| v.trim().parse().ok())
            .expect("the failed-export series");
        if failed >= 50 || Instant::now() > deadline {
            break failed;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    assert!(failed >= 50, "{failed} spans counted lost");
    gantry.signal("TERM");
    assert_eq!(gantry.exit_status().await.code(), Some(0));
}

/// `telemetry.sampling_ratio = 0`: no new trace is recorded (the readiness
/// polls, a request without `traceparent`, the batches), but a request
/// whose client sampled its trace is, as the client decided.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sampling_follows_the_ratio_and_the_clients_decision() {
    let received = Arc::new(Mutex::new(Received::default()));
    let endpoint = receiver(received.clone());
    let repo = Repo::new().copy("models/tiny-classifier", "tiny-classifier", None);
    let gantry = Gantry::spawn(
        repo.path(),
        &[
            ("GANTRY__CACHE__ENABLED", "false"),
            ("GANTRY__TELEMETRY__OTLP_ENDPOINT", &endpoint),
            ("GANTRY__TELEMETRY__SAMPLING_RATIO", "0"),
        ],
    );
    let client = reqwest::Client::new();
    gantry.wait_for_200(&client, "/v2/health/ready").await;
    let body = json!({"model": "tiny-classifier",
        "inputs": {"features": tensor(&[1, 64], "FP32", json!(vec![0.75; 64]))}});
    let url = format!("{}/api/optimized/predict", gantry.base);
    for traceparent in [
        None,
        Some(format!("00-{TRACE}-{CLIENT_SPAN}-01")),
        // The client did not sample this one: neither does the server.
        Some(format!(
            "00-6bf92f3577b34da6a3ce929d0e0e4738-{CLIENT_SPAN}-00"
        )),
    ] {
        let mut request = client.post(&url).json(&body);
        if let Some(value) = traceparent {
            request = request.header("traceparent", value);
        }
        assert_eq!(request.send().await.unwrap().status(), 200);
    }
    // Shutting down posts whatever is queued.
    gantry.signal("TERM");
    assert_eq!(gantry.exit_status().await.code(), Some(0));
    let got = received.lock().unwrap();
    let traces: std::collections::BTreeSet<String> =
        got.spans.iter().map(|(_, s)| hex(&s.trace_id)).collect();
    assert_eq!(
        traces.into_iter().collect::<Vec<_>>(),
        vec![TRACE.to_string()],
        "only the client's sampled trace is recorded"
    );
    assert!(got
        .spans
        .iter()
        .any(|(_, s)| s.name == "POST /api/optimized/predict"));
}
