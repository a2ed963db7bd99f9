//! Files in, answers out, through HTTP against the trained demo models:
//! spheroid images (PNG, TIFF, JPEG, WebP) get masks that match their
//! ground truth, night-call clips (WAV of every kind, FLAC, MP3) get the
//! right label, a batch upload answers each file on its own, and bad files
//! get clear errors while the server keeps serving.

use crate::common::{Repo, TestServer};
use base64::Engine;
use image::GrayImage;
use reqwest::multipart::{Form, Part};
use serde_json::Value;

fn fixture(name: &str) -> Vec<u8> {
    let path = crate::common::root()
        .join("tests/fixtures/media")
        .join(name);
    std::fs::read(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// A server with both trained demo models, and the repository it reads.
async fn server() -> (TestServer, Repo) {
    let repo = Repo::new()
        .copy("models/spheroid-seg", "spheroid-seg", None)
        .copy("models/night-calls", "night-calls", None);
    let server = TestServer::ready(
        crate::common::config(repo.path()),
        crate::common::onnx_provider(),
    )
    .await;
    (server, repo)
}

fn form(model: &str, files: &[(&str, Vec<u8>)], fields: &[(&str, &str)]) -> Form {
    let mut form = Form::new().text("model", model.to_string());
    for (name, bytes) in files {
        form = form.part(
            "file",
            Part::bytes(bytes.clone()).file_name(name.to_string()),
        );
    }
    for (key, value) in fields {
        form = form.text(key.to_string(), value.to_string());
    }
    form
}

async fn upload(server: &TestServer, model: &str, name: &str, bytes: Vec<u8>) -> (u16, Value) {
    server.post_form(form(model, &[(name, bytes)], &[])).await
}

fn mask_image(answer: &Value) -> GrayImage {
    let b64 = answer["mask"]["png_base64"]
        .as_str()
        .unwrap_or_else(|| panic!("no mask: {answer}"));
    let png = base64::engine::general_purpose::STANDARD
        .decode(b64)
        .unwrap();
    image::load_from_memory(&png).unwrap().into_luma8()
}

fn iou(a: &GrayImage, b: &GrayImage) -> f64 {
    assert_eq!(a.dimensions(), b.dimensions());
    let (mut both, mut either) = (0usize, 0usize);
    for (p, q) in a.pixels().zip(b.pixels()) {
        let (p, q) = (p[0] > 127, q[0] > 127);
        both += usize::from(p && q);
        either += usize::from(p || q);
    }
    both as f64 / either.max(1) as f64
}

fn top_label(answer: &Value) -> &str {
    answer["classes"][0]["label"]
        .as_str()
        .unwrap_or_else(|| panic!("no classes: {answer}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn spheroid_masks_match_their_ground_truth_in_every_image_format() {
    let (server, _repo) = server().await;
    let truth = image::load_from_memory(&fixture("spheroids-truth.png"))
        .unwrap()
        .into_luma8();
    let mut masks = Vec::new();
    for (name, kind) in [
        ("spheroids.png", "png"),
        ("spheroids.tiff", "tiff"),
        ("spheroids.jpg", "jpeg"),
        ("spheroids.webp", "webp"),
    ] {
        let (status, answer) = upload(&server, "spheroid-seg", name, fixture(name)).await;
        assert_eq!(status, 200, "{name}: {answer}");
        assert_eq!(answer["file"]["type"], kind, "{answer}");
        assert_eq!(
            (
                answer["mask"]["width"].as_u64(),
                answer["mask"]["height"].as_u64()
            ),
            (Some(truth.width().into()), Some(truth.height().into()))
        );
        let mask = mask_image(&answer);
        let score = iou(&mask, &truth);
        assert!(
            score >= 0.8,
            "{name}: IoU with the ground truth is {score:.3}"
        );
        let fraction = answer["mask"]["foreground_fraction"].as_f64().unwrap();
        let counted = mask.pixels().filter(|p| p[0] == 255).count() as f64
            / (mask.width() * mask.height()) as f64;
        assert!((fraction - counted).abs() < 1e-9, "{fraction} vs {counted}");
        let contours = answer["mask"]["contours"].as_array().unwrap();
        assert!(!contours.is_empty(), "{name}: no contours");
        for point in contours.iter().flat_map(|c| c.as_array().unwrap()) {
            assert!(
                point[0].as_u64().unwrap() < u64::from(truth.width())
                    && point[1].as_u64().unwrap() < u64::from(truth.height())
            );
        }
        for key in ["decode", "queue", "inference", "postprocess", "total"] {
            assert!(answer["timings_ms"][key].is_number(), "{key}: {answer}");
        }
        masks.push((name, mask));
    }
    // The same image as 8-bit PNG and 16-bit TIFF gives the same mask.
    let same = iou(&masks[0].1, &masks[1].1);
    assert!(same >= 0.99, "PNG and TIFF masks differ: IoU {same:.4}");

    // A request's threshold overrides the model's.
    let strict = form(
        "spheroid-seg",
        &[("spheroids.png", fixture("spheroids.png"))],
        &[("threshold", "1.5")],
    );
    let (status, answer) = server.post_form(strict).await;
    assert_eq!(status, 200, "{answer}");
    assert_eq!(answer["mask"]["foreground_fraction"], 0.0);
    assert_eq!(answer["mask"]["threshold"], 1.5);

    // Preparing uploads and shaping answers are timed per model.
    let page = server.metrics_page().await;
    for series in [
        "media_prepare_duration_seconds",
        "media_postprocess_duration_seconds",
    ] {
        let count = format!("gantry_{series}_count{{model=\"spheroid-seg\"}} 5");
        assert!(page.contains(&count), "no '{count}' in /metrics:\n{page}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn night_calls_get_the_right_label_in_every_audio_format() {
    let (server, _repo) = server().await;
    let labels =
        std::fs::read_to_string(crate::common::root().join("models/night-calls/labels.txt"))
            .unwrap();
    for label in labels.lines() {
        let name = format!("call-{label}.wav");
        let (status, answer) = upload(&server, "night-calls", &name, fixture(&name)).await;
        assert_eq!(status, 200, "{name}: {answer}");
        assert_eq!(top_label(&answer), label, "{name}: {answer}");
        let scores: Vec<f64> = answer["classes"]
            .as_array()
            .unwrap()
            .iter()
            .map(|c| c["score"].as_f64().unwrap())
            .collect();
        assert_eq!(scores.len(), 3, "top_k from model.toml");
        assert!(
            scores.windows(2).all(|w| w[0] >= w[1]) && scores.iter().sum::<f64>() <= 1.0 + 1e-6,
            "{scores:?}"
        );
    }
    let wav = upload(
        &server,
        "night-calls",
        "owl.wav",
        fixture("call-owl-hoot.wav"),
    )
    .await
    .1;
    for name in ["call-owl-hoot.flac", "call-owl-hoot.mp3"] {
        let (status, answer) = upload(&server, "night-calls", name, fixture(name)).await;
        assert_eq!(status, 200, "{name}: {answer}");
        assert_eq!(
            top_label(&answer),
            top_label(&wav),
            "{name} and its WAV disagree: {answer}"
        );
        assert_eq!(top_label(&answer), "owl-hoot");
    }
    let (status, answer) = upload(
        &server,
        "night-calls",
        "c.wav",
        fixture("call-bird-chirp-44k-stereo.wav"),
    )
    .await;
    assert_eq!(status, 200, "{answer}");
    assert_eq!(top_label(&answer), "bird-chirp", "{answer}");
    assert_eq!(
        (
            answer["file"]["sample_rate"].as_u64(),
            answer["file"]["channels"].as_u64()
        ),
        (Some(44100), Some(2))
    );
    let f32_wav = form(
        "night-calls",
        &[("c.wav", fixture("call-cricket-trill-f32.wav"))],
        &[("top_k", "1")],
    );
    let (status, answer) = server.post_form(f32_wav).await;
    assert_eq!(status, 200, "{answer}");
    assert_eq!(top_label(&answer), "cricket-trill", "{answer}");
    assert_eq!(answer["classes"].as_array().unwrap().len(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_batch_upload_answers_every_file_in_order_and_one_bad_file_fails_alone() {
    let (server, _repo) = server().await;
    let files = [
        ("owl.wav", fixture("call-owl-hoot.wav")),
        ("broken.wav", fixture("call-bird-chirp.wav")[..30].to_vec()),
        ("chirp.mp3", fixture("call-owl-hoot.mp3")),
        ("picture.png", fixture("spheroids.png")),
        ("frog.wav", fixture("call-frog-croak.wav")),
    ];
    let (status, answer) = server
        .post_form_to(
            "/api/optimized/predict/batch",
            form("night-calls", &files, &[]),
        )
        .await;
    assert_eq!(status, 200, "{answer}");
    let results = answer["results"].as_array().unwrap();
    assert_eq!(results.len(), 5, "{answer}");
    let statuses: Vec<u64> = results
        .iter()
        .map(|r| r["status"].as_u64().unwrap())
        .collect();
    assert_eq!(statuses, [200, 422, 200, 415, 200], "{answer}");
    assert_eq!(top_label(&results[0]), "owl-hoot");
    assert_eq!(top_label(&results[2]), "owl-hoot");
    assert_eq!(top_label(&results[4]), "frog-croak");
    assert_eq!(results[1]["code"], "invalid_file");
    assert_eq!(results[1]["file"]["name"], "broken.wav");
    assert!(
        results[3]["error"].as_str().unwrap().contains("PNG"),
        "{}",
        results[3]
    );
    let ids: Vec<&str> = results
        .iter()
        .map(|r| r["request_id"].as_str().unwrap())
        .collect();
    let base = answer["request_id"].as_str().unwrap();
    assert_eq!(
        ids,
        (0..5).map(|i| format!("{base}-{i}")).collect::<Vec<_>>()
    );

    // One file to /predict is one answer; several are refused there.
    let two = form("night-calls", &files[..2], &[]);
    let (status, answer) = server.post_form(two).await;
    assert_eq!(status, 400, "{answer}");
    assert!(
        answer["error"].as_str().unwrap().contains("/predict/batch"),
        "{answer}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_files_get_clear_errors_and_the_server_keeps_serving() {
    let (server, _repo) = server().await;
    let png = fixture("spheroids.png");
    let mut scrambled = png.clone();
    for b in scrambled.iter_mut().skip(60) {
        *b ^= 0x5A;
    }
    let wav = fixture("call-owl-hoot.wav");
    let jpg = fixture("spheroids.jpg");
    // (model, file name, bytes, status, code, a word the message names)
    type Case<'a> = (&'a str, &'a str, Vec<u8>, u16, &'a str, &'a str);
    let cases: Vec<Case> = vec![
        (
            "spheroid-seg",
            "empty.png",
            vec![],
            422,
            "invalid_file",
            "empty",
        ),
        (
            "spheroid-seg",
            "cut.png",
            png[..png.len() / 3].to_vec(),
            422,
            "invalid_file",
            "PNG",
        ),
        (
            "spheroid-seg",
            "cut.jpg",
            jpg[..jpg.len() / 2].to_vec(),
            422,
            "invalid_file",
            "truncated",
        ),
        (
            "spheroid-seg",
            "scrambled.png",
            scrambled,
            422,
            "invalid_file",
            "PNG",
        ),
        (
            "spheroid-seg",
            "bomb.png",
            crate::common::forged::png_header(100_000, 100_000),
            422,
            "file_too_large",
            "100000x100000",
        ),
        (
            "spheroid-seg",
            "anim.gif",
            b"GIF89a\x01\0\x01\0\0\0\0;".to_vec(),
            415,
            "unsupported_media_type",
            "GIF",
        ),
        (
            "spheroid-seg",
            "notes.png",
            b"just some text".to_vec(),
            415,
            "unsupported_media_type",
            "not recognised",
        ),
        (
            "spheroid-seg",
            "call.png",
            wav.clone(),
            415,
            "unsupported_media_type",
            "WAV",
        ),
        (
            "night-calls",
            "cut.wav",
            wav[..wav.len() / 2].to_vec(),
            422,
            "invalid_file",
            "truncated",
        ),
        (
            "night-calls",
            "image.wav",
            png.clone(),
            415,
            "unsupported_media_type",
            "takes audio",
        ),
        (
            "night-calls",
            "empty.wav",
            vec![],
            422,
            "invalid_file",
            "empty",
        ),
    ];
    for (model, name, bytes, status, code, needle) in cases {
        let (got, answer) = upload(&server, model, name, bytes).await;
        assert_eq!(got, status, "{name}: {answer}");
        assert_eq!(answer["code"], code, "{name}: {answer}");
        let message = answer["error"].as_str().unwrap();
        assert!(
            message.contains(needle),
            "{name}: '{message}' does not mention '{needle}'"
        );
    }
    let (status, answer) = upload(&server, "spheroid-seg", "ok.png", png).await;
    assert_eq!(status, 200, "{answer}");
    let (status, answer) = upload(&server, "night-calls", "ok.wav", wav).await;
    assert_eq!(status, 200, "{answer}");
    // A batch for a model that is not served fails as a whole.
    let unknown = form(
        "no-such-model",
        &[("a.wav", fixture("call-owl-hoot.wav"))],
        &[],
    );
    let (status, answer) = server
        .post_form_to("/api/optimized/predict/batch", unknown)
        .await;
    assert_eq!(
        (status, answer["code"].as_str()),
        (404, Some("model_not_found")),
        "{answer}"
    );
    // Both models still serve, and each refused file was counted.
    let stats = server.stats().await;
    for model in ["spheroid-seg", "night-calls"] {
        assert_eq!(stats["model_pools"][model]["ready"], true, "{stats}");
    }
    assert!(
        stats["performance_metrics"]["errors_total"].as_u64() >= Some(11),
        "{}",
        stats["performance_metrics"]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_model_toml_that_does_not_fit_its_model_fails_the_load_with_the_reason() {
    // dynamic-image takes one channel of any size: rgb and no size do not fit.
    let toml = "[input]\nkind = \"image\"\ncolor = \"rgb\"\nwidth = 32\nheight = 32\n";
    let repo = Repo::new().copy(
        "tests/fixtures/models/dynamic-image",
        "dynamic-image",
        Some(toml),
    );
    let server = TestServer::start(
        crate::common::config(repo.path()),
        crate::common::onnx_provider(),
    );
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    loop {
        let stats = server.stats().await.to_string();
        if stats.contains("model.toml does not fit the model") {
            assert!(stats.contains("color 'rgb' has 3 channels"), "{stats}");
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "no load failure in stats: {stats}"
        );
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    let (status, answer) =
        upload(&server, "dynamic-image", "a.png", fixture("spheroids.png")).await;
    assert_eq!(status, 503, "{answer}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn media_memory_is_reserved_per_file_and_in_flight_and_always_given_back() {
    let repo = Repo::new().copy("models/spheroid-seg", "spheroid-seg", None);
    let mut config = crate::common::config(repo.path());
    config.media.max_file_memory_mb = 48;
    config.media.max_inflight_mb = 64;
    let server = TestServer::ready(config, crate::common::onnx_provider()).await;
    let pool = server.state.service.media_pool();
    let png = fixture("spheroids.png");
    // A file whose mask at its own size would take more than 48 MiB is
    // refused from its header, with the limit and the numbers.
    let large = image::GrayImage::from_pixel(3000, 2000, image::Luma([90]));
    let mut large_png = std::io::Cursor::new(Vec::new());
    large
        .write_to(&mut large_png, image::ImageFormat::Png)
        .unwrap();
    let (status, answer) =
        upload(&server, "spheroid-seg", "large.png", large_png.into_inner()).await;
    assert_eq!(
        (status, answer["code"].as_str()),
        (422, Some("file_too_large")),
        "{answer}"
    );
    let message = answer["error"].as_str().unwrap();
    assert!(
        message.contains("media.max_file_memory_mb") && message.contains("3000x2000"),
        "{message}"
    );
    // With the in-flight budget held elsewhere, an upload is a 429 at once.
    let held = [
        pool.reserve(31 << 20, "a job in flight").unwrap(),
        pool.reserve(31 << 20, "another").unwrap(),
    ];
    let busy = form("spheroid-seg", &[("busy.png", png.clone())], &[]);
    let response = server
        .client
        .post(server.url("/api/optimized/predict"))
        .multipart(busy)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 429);
    assert!(response.headers().contains_key("retry-after"));
    let answer: Value = response.json().await.unwrap();
    assert_eq!(answer["code"], "media_busy", "{answer}");
    assert!(
        answer["error"]
            .as_str()
            .unwrap()
            .contains("media.max_inflight_mb"),
        "{answer}"
    );
    drop(held);
    // Answered, refused, damaged or abandoned: every job gives its bytes back.
    let (status, answer) = upload(&server, "spheroid-seg", "ok.png", png.clone()).await;
    assert_eq!(status, 200, "{answer}");
    assert_eq!(pool.memory().in_use(), 0);
    let (status, _) = upload(
        &server,
        "spheroid-seg",
        "cut.png",
        png[..png.len() / 3].to_vec(),
    )
    .await;
    assert_eq!(status, 422);
    assert_eq!(pool.memory().in_use(), 0);
    let impatient = reqwest::Client::builder()
        .timeout(std::time::Duration::from_millis(1))
        .build()
        .unwrap();
    for _ in 0..5 {
        let gone = form("spheroid-seg", &[("gone.png", png.clone())], &[]);
        let _ = impatient
            .post(server.url("/api/optimized/predict"))
            .multipart(gone)
            .send()
            .await;
    }
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    while pool.memory().in_use() != 0 {
        assert!(
            std::time::Instant::now() < deadline,
            "{} bytes still reserved after the clients left",
            pool.memory().in_use()
        );
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    let (status, answer) = upload(&server, "spheroid-seg", "after.png", png).await;
    assert_eq!(status, 200, "{answer}");
}
