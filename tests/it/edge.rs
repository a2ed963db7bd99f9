//! The HTTP edge against clients that misbehave on purpose, over raw TCP:
//! bodies cut before their closing boundary, heads and bodies that stop
//! arriving, idle keep-alive connections, more connections than the cap,
//! admin calls through a proxy, actix's own error answers, requests on
//! open keep-alive connections after SIGTERM, and the drain delay.

use std::time::Duration;

use crate::common::binary::Gantry;
use crate::common::live::{no_cache, provider};
use crate::common::raw::{self, RawResponse};
use crate::common::{Repo, TestServer};
use gantry::config::Config;
use serde_json::Value;

const BOUNDARY: &str = "edge-boundary-7d1f";

async fn server(tune: impl FnOnce(&mut Config)) -> (Repo, TestServer) {
    let repo = Repo::new().fake("m", "");
    let mut config = no_cache(crate::common::config(repo.path()));
    tune(&mut config);
    let server = TestServer::ready(config, provider(0)).await;
    (repo, server)
}

/// A form with `model` and one file of `size` bytes, without its closing
/// boundary: it ends right after the file's bytes and their CRLF.
fn form_without_closing_boundary(size: usize) -> Vec<u8> {
    let mut body = format!(
        "--{BOUNDARY}\r\nContent-Disposition: form-data; name=\"model\"\r\n\r\nm\r\n\
         --{BOUNDARY}\r\nContent-Disposition: form-data; name=\"file\"; filename=\"x.npy\"\r\n\
         Content-Type: application/octet-stream\r\n\r\n"
    )
    .into_bytes();
    body.extend(std::iter::repeat_n(b'a', size));
    body.extend_from_slice(b"\r\n");
    body
}

fn form_type() -> String {
    format!("multipart/form-data; boundary={BOUNDARY}")
}

fn expect_error(response: &RawResponse, status: u16, code: &str) -> String {
    let body = response.json();
    assert_eq!(
        (response.status, body["code"].as_str()),
        (status, Some(code)),
        "{body}"
    );
    assert!(response.header("x-request-id").is_some(), "{response:?}");
    body["error"].as_str().expect("error message").to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_form_cut_before_its_closing_boundary_is_a_400_at_once() {
    let (_repo, server) = server(|_| {}).await;
    // Content-Length reached, then nothing more: the body has ended.
    let body = form_without_closing_boundary(1 << 20);
    let mut stream = raw::connect(&server.base).await;
    raw::send(
        &mut stream,
        &raw::head("POST", "/api/optimized/predict", &form_type(), body.len()),
    )
    .await;
    raw::send(&mut stream, &body).await;
    let response = raw::response(&mut stream).await.expect("an answer");
    let why = expect_error(&response, 400, "bad_request");
    assert!(why.contains("closing boundary"), "{why}");

    // The same over chunked transfer encoding, ended by its last chunk; and
    // a body cut inside the closing boundary itself.
    for tail in [&b""[..], format!("--{BOUNDARY}").as_bytes()] {
        let mut body = form_without_closing_boundary(4096);
        body.extend_from_slice(tail);
        let mut stream = raw::connect(&server.base).await;
        let head = format!(
            "POST /api/optimized/predict/batch HTTP/1.1\r\nHost: gantry\r\n\
             Content-Type: {}\r\nTransfer-Encoding: chunked\r\n\r\n{:x}\r\n",
            form_type(),
            body.len()
        );
        raw::send(&mut stream, head.as_bytes()).await;
        raw::send(&mut stream, &body).await;
        raw::send(&mut stream, b"\r\n0\r\n\r\n").await;
        let response = raw::response(&mut stream).await.expect("an answer");
        expect_error(&response, 400, "bad_request");
    }
    // The server is fine and serves on.
    let (status, _) = server.get("/api/optimized/health").await;
    assert_eq!(status, 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_body_that_stops_arriving_is_a_408_and_the_connection_closes() {
    let (_repo, server) = server(|c| c.server.body_timeout_ms = 1_000).await;
    // A JSON body declared at 1000 bytes, of which 10 arrive.
    let mut stream = raw::connect(&server.base).await;
    raw::send(
        &mut stream,
        &raw::head("POST", "/api/optimized/predict", "application/json", 1000),
    )
    .await;
    raw::send(&mut stream, b"{\"model\": ").await;
    let response = raw::response(&mut stream).await.expect("an answer");
    let why = expect_error(&response, 408, "request_timeout");
    assert!(why.contains("server.body_timeout_ms"), "{why}");
    assert_eq!(response.header("connection"), Some("close"));
    raw::closed(&mut stream).await;

    // A form that stops halfway, on the v2 route, and a form on the upload
    // route: the same.
    for (path, content_type) in [
        ("/v2/models/m/infer", "application/json".to_string()),
        ("/api/optimized/predict", form_type()),
    ] {
        let body = form_without_closing_boundary(64 << 10);
        let mut stream = raw::connect(&server.base).await;
        raw::send(
            &mut stream,
            &raw::head("POST", path, &content_type, body.len() * 2),
        )
        .await;
        raw::send(&mut stream, &body).await;
        let response = raw::response(&mut stream).await.expect("an answer");
        expect_error(&response, 408, "request_timeout");
        raw::closed(&mut stream).await;
    }
    let (status, _) = server.get("/api/optimized/health").await;
    assert_eq!(status, 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_head_that_stops_arriving_is_408_and_an_idle_connection_is_closed() {
    // actix reads its clock at a half-second resolution: timeouts well
    // above it, so a prompt request never meets one.
    let (_repo, server) = server(|c| {
        c.server.header_timeout_ms = 1_500;
        c.server.keep_alive_s = 1;
    })
    .await;
    // Slowloris: a request line and one header, then nothing.
    let mut slow = raw::connect(&server.base).await;
    raw::send(
        &mut slow,
        b"POST /api/optimized/predict HTTP/1.1\r\nHost: gantry\r\n",
    )
    .await;
    let response = raw::response(&mut slow).await.expect("an answer");
    assert_eq!(response.status, 408, "{response:?}");
    raw::closed(&mut slow).await;

    // A keep-alive connection answered once, then left idle: closed.
    let mut idle = raw::connect(&server.base).await;
    raw::send(&mut idle, &raw::get("/v2/health/live")).await;
    let response = raw::response(&mut idle).await.expect("an answer");
    assert_eq!(response.status, 200);
    raw::closed(&mut idle).await;

    // A connection that never sends a byte: closed too.
    let mut silent = raw::connect(&server.base).await;
    raw::closed(&mut silent).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keep_alive_0_closes_each_connection_after_its_answer() {
    let (_repo, server) = server(|c| c.server.keep_alive_s = 0).await;
    let mut stream = raw::connect(&server.base).await;
    raw::send(&mut stream, &raw::get("/v2/health/live")).await;
    let response = raw::response(&mut stream).await.expect("an answer");
    assert_eq!(response.status, 200);
    assert_eq!(response.header("connection"), Some("close"));
    raw::closed(&mut stream).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_beyond_the_cap_wait_while_open_ones_are_served() {
    let repo = Repo::new().fake("m", "");
    let mut config = no_cache(crate::common::config(repo.path()));
    config.server.workers = 1;
    config.server.max_connections = 2;
    config.server.keep_alive_s = 60;
    config.server.header_timeout_ms = 60_000;
    let server = TestServer::start(config, provider(0));
    // Fill the cap with two answered keep-alive connections. Probes that
    // find no free slot are dropped and tried again.
    let mut open = Vec::new();
    while open.len() < 2 {
        let mut stream = raw::connect(&server.base).await;
        raw::send(&mut stream, &raw::get("/v2/health/live")).await;
        if let Some(r) = raw::response_within(&mut stream, Duration::from_secs(2)).await {
            assert_eq!(r.status, 200);
            open.push(stream);
        }
    }
    // A third connection is queued by the kernel, not served.
    let mut third = raw::connect(&server.base).await;
    raw::send(&mut third, &raw::get("/v2/health/live")).await;
    assert!(
        raw::response_within(&mut third, Duration::from_millis(500))
            .await
            .is_none(),
        "a connection beyond server.max_connections was served"
    );
    // The open ones are served meanwhile.
    for stream in &mut open {
        raw::send(stream, &raw::get("/v2/health/ready")).await;
        let response = raw::response(stream).await.expect("an answer");
        assert_eq!(response.status, 200);
    }
    // One leaves: the waiting one is served.
    drop(open.pop());
    let response = raw::response(&mut third).await.expect("an answer");
    assert_eq!(response.status, 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_a_token_admin_refuses_requests_that_came_through_a_proxy() {
    let (_repo, server) = server(|_| {}).await;
    let reload = server.url("/api/optimized/reload");
    for (header, value) in [
        ("x-forwarded-for", "203.0.113.7"),
        ("forwarded", "for=203.0.113.7;proto=https"),
        ("x-real-ip", "203.0.113.7"),
    ] {
        let r = server
            .client
            .post(&reload)
            .header(header, value)
            .send()
            .await
            .unwrap();
        let status = r.status().as_u16();
        let body: Value = r.json().await.unwrap();
        assert_eq!((status, body["code"].as_str()), (403, Some("forbidden")));
        assert!(
            body["error"]
                .as_str()
                .unwrap()
                .contains("server.admin_token"),
            "{body}"
        );
    }
    // The same peer without forwarding headers is a local operator.
    let r = server.client.post(&reload).send().await.unwrap();
    assert_eq!(r.status(), 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn error_answers_actix_writes_inside_the_app_are_json() {
    let (_repo, server) = server(|_| {}).await;
    // A chunked body whose chunk framing breaks halfway.
    let mut stream = raw::connect(&server.base).await;
    raw::send(
        &mut stream,
        b"POST /api/optimized/predict HTTP/1.1\r\nHost: gantry\r\n\
          Content-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n\
          5\r\n{\"mod\r\nzz\r\n",
    )
    .await;
    let response = raw::response(&mut stream).await.expect("an answer");
    expect_error(&response, 400, "bad_request");
}

/// What actix's HTTP/1 parser answers before the App runs (docs/api.md lists
/// these): a status with an empty body, then the connection closes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn heads_the_parser_refuses_get_its_status_and_a_closed_connection() {
    let (_repo, server) = server(|_| {}).await;
    let huge = format!(
        "GET /v2/health/live HTTP/1.1\r\nHost: gantry\r\nX-Filler: {}\r\n\r\n",
        "a".repeat(200 * 1024)
    );
    for (request, status) in [
        (
            b"POST /api/optimized/predict HTTP/1.1\r\nHost: gantry\r\nContent-Length: 4\r\n\
              Transfer-Encoding: chunked\r\n\r\n0\r\n\r\n"
                .to_vec(),
            400,
        ),
        (
            b"GET /v2/health/live HTTP/1.1\r\nHost: gan\x01try\r\n\r\n".to_vec(),
            400,
        ),
        (huge.into_bytes(), 431),
    ] {
        let mut stream = raw::connect(&server.base).await;
        raw::send(&mut stream, &request).await;
        let response = raw::response(&mut stream).await.expect("an answer");
        assert_eq!(response.status, status, "{response:?}");
        raw::closed(&mut stream).await;
    }
    let (status, _) = server.get("/api/optimized/health").await;
    assert_eq!(status, 200);
}

/// SIGTERM on the real binary with a request in flight: a request sent on
/// an already-open, idle keep-alive connection is answered 503
/// `shutting_down` with `Connection: close` (not reset), readiness is 503,
/// the in-flight request finishes, and the process exits 0.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn after_sigterm_keep_alive_requests_get_503_while_in_flight_ones_finish() {
    let repo = Repo::new().copy("models/tiny-classifier", "tiny-classifier", None);
    let gantry = Gantry::spawn(repo.path(), &[("GANTRY__CACHE__ENABLED", "false")]);
    let client = reqwest::Client::new();
    gantry.wait_for_200(&client, "/api/optimized/health").await;

    // An idle keep-alive connection, answered once.
    let mut idle = raw::connect(&gantry.base).await;
    raw::send(&mut idle, &raw::get("/v2/health/live")).await;
    assert_eq!(raw::response(&mut idle).await.expect("answer").status, 200);

    // A request in flight: its head has arrived, its body has not. Its
    // "100 Continue" comes once the server has started handling it.
    let body = br#"{"replicas": 1}"#;
    let mut in_flight = raw::connect(&gantry.base).await;
    let head = format!(
        "PUT /api/optimized/models/tiny-classifier/replicas HTTP/1.1\r\nHost: gantry\r\n\
         Content-Type: application/json\r\nContent-Length: {}\r\n\
         Expect: 100-continue\r\n\r\n",
        body.len()
    );
    raw::send(&mut in_flight, head.as_bytes()).await;
    let continued = raw::response(&mut in_flight).await.expect("100 Continue");
    assert_eq!(continued.status, 100);
    raw::send(&mut in_flight, &body[..4]).await;

    gantry.signal("TERM");
    gantry.wait_for_log("shutting down");

    raw::send(&mut idle, &raw::get("/api/optimized/stats")).await;
    let response = raw::response(&mut idle)
        .await
        .expect("the open connection is answered, not closed");
    expect_error(&response, 503, "shutting_down");
    assert_eq!(response.header("connection"), Some("close"));
    raw::closed(&mut idle).await;

    let (status, _) = get_json(&gantry.base, "/v2/health/ready").await;
    assert_eq!(status, 503, "readiness while draining");

    // The in-flight request finishes.
    raw::send(&mut in_flight, &body[4..]).await;
    let response = raw::response(&mut in_flight).await.expect("an answer");
    assert_eq!(response.status, 200, "{:?}", response.json());
    assert_eq!(response.json()["replicas"], 1);

    assert_eq!(gantry.exit_status().await.code(), Some(0));
}

/// `server.drain_delay_s` on the real binary: from SIGTERM readiness is 503
/// while predictions are still answered 200 (a load balancer takes the
/// instance out of rotation meanwhile); only after the delay are new
/// requests refused, and the process exits 0.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_drain_delay_keeps_serving_while_readiness_is_503() {
    let repo = Repo::new().copy("models/tiny-classifier", "tiny-classifier", None);
    let gantry = Gantry::spawn(
        repo.path(),
        &[
            ("GANTRY__CACHE__ENABLED", "false"),
            ("GANTRY__SERVER__DRAIN_DELAY_S", "2"),
        ],
    );
    let client = reqwest::Client::new();
    gantry.wait_for_200(&client, "/v2/health/ready").await;
    let predict = |client: reqwest::Client| {
        let url = format!("{}/v2/models/tiny-classifier/infer", gantry.base);
        async move {
            let body = serde_json::json!({"inputs": [{"name": "features", "shape": [1, 64],
                "datatype": "FP32", "data": vec![0.5f32; 64]}]});
            let response = client.post(url).json(&body).send().await.unwrap();
            let status = response.status().as_u16();
            (status, response.json::<Value>().await.unwrap())
        }
    };
    assert_eq!(predict(client.clone()).await.0, 200);

    let signalled = std::time::Instant::now();
    gantry.signal("TERM");
    gantry.wait_for_log("still serving");
    let (status, ready) = get_json(&gantry.base, "/v2/health/ready").await;
    assert_eq!(status, 503, "readiness during the delay: {ready}");
    let (status, health) = get_json(&gantry.base, "/api/optimized/health").await;
    assert_eq!(
        (status, health["status"].as_str()),
        (503, Some("shutting_down"))
    );
    let (status, answer) = predict(client.clone()).await;
    assert_eq!(status, 200, "predictions go on during the delay: {answer}");

    gantry.wait_for_log("new requests are refused");
    assert!(
        signalled.elapsed() >= Duration::from_secs(2),
        "requests were refused before the delay was over"
    );
    // Now a new request is refused (503), or meets a closed listener once
    // nothing is left in flight.
    let url = format!("{}/v2/models/tiny-classifier/infer", gantry.base);
    if let Ok(response) = reqwest::Client::new().post(url).body("{}").send().await {
        let answer: Value = response.json().await.unwrap();
        assert_eq!(answer["code"], "shutting_down", "{answer}");
    }
    assert_eq!(gantry.exit_status().await.code(), Some(0));
}

/// GET over a new raw connection: status and JSON body.
async fn get_json(base: &str, path: &str) -> (u16, Value) {
    let mut stream = raw::connect(base).await;
    raw::send(&mut stream, &raw::get(path)).await;
    let response = raw::response(&mut stream).await.expect("an answer");
    (response.status, response.json())
}
