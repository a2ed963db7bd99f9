//! Uploads cannot take the server's memory. The estimates made from a file's
//! header cover what decoding, resizing and answering really allocate
//! (measured here by a counting allocator), a strip of an image is resized
//! without a strip-sized buffer, and the real `gantry` binary, run under an
//! address-space limit, answers a storm of extreme files (very wide, very
//! tall, huge declared sizes in PNG, TIFF, JPEG, WebP and WAV headers, many
//! at once) with JSON 200/422/429 and stays healthy.

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;
use std::io::Cursor;
use std::time::Duration;

use crate::common::binary::Gantry;
use crate::common::forged::{png_header, tiff_header, wav};
use crate::common::Repo;
use bytes::Bytes;
use fast_image_resize::PixelType;
use gantry::media::audio::{audio_to_tensor, worst_case_bytes};
use gantry::media::estimate::{image_input_bytes, mask_answer_bytes, resize_bytes};
use gantry::media::image::{image_to_tensor, probe, resize_plane, ImageLimits};
use gantry::media::mask::mask_answer;
use gantry::media::sniff::{sniff, FileType};
use gantry_actors::processing::{AudioInput, ColorMode, ImageInput};
use gantry_actors::Tensor;
use image::{DynamicImage, GrayImage, ImageBuffer, ImageFormat, Luma, Rgb, RgbImage, Rgba};
use serde_json::Value;

/// Counts the bytes each thread has allocated, and the peak.
struct Counting;

thread_local! {
    static NOW: Cell<i64> = const { Cell::new(0) };
    static PEAK: Cell<i64> = const { Cell::new(0) };
}

fn count(delta: i64) {
    let _ = NOW.try_with(|now| {
        let v = now.get() + delta;
        now.set(v);
        let _ = PEAK.try_with(|peak| peak.set(peak.get().max(v)));
    });
}

// SAFETY: every call goes to the system allocator unchanged; the counters
// are thread-local cells that never allocate.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        let p = System.alloc(layout);
        if !p.is_null() {
            count(layout.size() as i64);
        }
        p
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        let p = System.alloc_zeroed(layout);
        if !p.is_null() {
            count(layout.size() as i64);
        }
        p
    }

    unsafe fn dealloc(&self, p: *mut u8, layout: Layout) {
        System.dealloc(p, layout);
        count(-(layout.size() as i64));
    }

    unsafe fn realloc(&self, p: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        let q = System.realloc(p, layout, new_size);
        if !q.is_null() {
            // As if the new block came before the old one went.
            count(new_size as i64);
            count(-(layout.size() as i64));
        }
        q
    }
}

#[global_allocator]
static ALLOCATOR: Counting = Counting;

/// What `f` returns and the most bytes it held allocated at once (on this
/// thread) beyond what was allocated before.
fn peak_of<T>(f: impl FnOnce() -> T) -> (T, u64) {
    let base = NOW.with(Cell::get);
    PEAK.with(|p| p.set(base));
    let out = f();
    let peak = PEAK.with(Cell::get) - base;
    (out, peak.max(0) as u64)
}

const MIB: u64 = 1 << 20;

fn encode(image: DynamicImage, format: ImageFormat) -> Vec<u8> {
    let mut out = Cursor::new(Vec::new());
    image.write_to(&mut out, format).unwrap();
    out.into_inner()
}

/// A grey gradient with a bright disc, `w` x `h`.
fn scene(w: u32, h: u32) -> GrayImage {
    let (cx, cy, r) = (w as f32 / 2.0, h as f32 / 2.0, w.min(h) as f32 / 3.0);
    GrayImage::from_fn(w, h, |x, y| {
        let d = ((x as f32 - cx).powi(2) + (y as f32 - cy).powi(2)).sqrt();
        Luma([if d < r { 220 } else { (x % 64) as u8 }])
    })
}

/// A 128 x 128 probability map: a disc, and specks (many small regions).
fn map(pattern: &str) -> Tensor {
    let values: Vec<f32> = (0..128 * 128)
        .map(|i| {
            let (x, y) = ((i % 128) as f32, (i / 128) as f32);
            match pattern {
                "full" => 1.0,
                "specks" => f32::from(u8::from((i * 7919) % 13 < 4)),
                _ => f32::from(u8::from((x - 64.0).powi(2) + (y - 64.0).powi(2) < 1600.0)),
            }
        })
        .collect();
    Tensor::from_f32(vec![1, 1, 128, 128], &values).unwrap()
}

#[test]
fn estimates_cover_what_decoding_resizing_and_answering_allocate() {
    let limits = ImageLimits::default();
    let grey = ImageInput {
        color: ColorMode::Grey,
        ..ImageInput::default()
    };
    let rgb = ImageInput::default();
    let deep: ImageBuffer<Rgb<u16>, Vec<u16>> =
        ImageBuffer::from_fn(600, 400, |x, y| Rgb([x as u16 * 100, y as u16 * 150, 7]));
    let rgba = ImageBuffer::from_fn(500, 300, |x, y| Rgba([x as u8, y as u8, 9, 200]));
    let photo = RgbImage::from_fn(1600, 1200, |x, y| Rgb([(x / 7) as u8, (y / 5) as u8, 99]));
    let cases: Vec<(&str, Vec<u8>, &ImageInput)> = vec![
        (
            "wide grey PNG",
            encode(scene(4000, 40).into(), ImageFormat::Png),
            &grey,
        ),
        (
            "tall grey PNG",
            encode(scene(40, 4000).into(), ImageFormat::Png),
            &grey,
        ),
        (
            "grey PNG photo",
            encode(scene(2000, 1500).into(), ImageFormat::Png),
            &grey,
        ),
        (
            "RGB JPEG photo",
            encode(photo.clone().into(), ImageFormat::Jpeg),
            &rgb,
        ),
        (
            "grey model, RGB JPEG",
            encode(photo.into(), ImageFormat::Jpeg),
            &grey,
        ),
        (
            "16-bit RGB TIFF",
            encode(DynamicImage::ImageRgb16(deep), ImageFormat::Tiff),
            &rgb,
        ),
        (
            "RGBA WebP",
            encode(DynamicImage::ImageRgba8(rgba), ImageFormat::WebP),
            &grey,
        ),
    ];
    for (name, bytes, spec) in cases {
        let file_type = sniff(&bytes).unwrap();
        let header = probe(&bytes, file_type, limits).unwrap();
        let estimate = image_input_bytes(&header, spec.color.channels(), (128, 128));
        let (tensor, used) =
            peak_of(|| image_to_tensor(&bytes, file_type, spec, (128, 128), limits).unwrap());
        eprintln!("{name}: decode used {used} of {estimate} estimated");
        assert!(
            used <= estimate,
            "{name}: decoding used {used} > {estimate}"
        );
        let size = (tensor.width, tensor.height);
        for pattern in ["disc", "specks", "full"] {
            let output = map(pattern);
            let estimate = mask_answer_bytes(size, (128, 128));
            let (_, used) = peak_of(|| {
                let answer = mask_answer(&output, size, 0.5).unwrap();
                serde_json::to_vec(&answer).unwrap()
            });
            eprintln!("{name}, {pattern} mask: used {used} of {estimate} estimated");
            assert!(
                used <= estimate,
                "{name}, {pattern} mask: used {used} > {estimate}"
            );
        }
    }
}

#[test]
fn a_strip_is_resized_without_a_strip_sized_buffer() {
    // One combined pass stretches 1,000,000 x 1 to 1,000,000 x 128 on its
    // way to 128 x 128 (128 MB of 8-bit pixels), and the mask's way back to
    // 1,000,000 x 128 floats (512 MB). Shrinking first needs neither.
    let strip = vec![7u8; 1_000_000];
    let (out, used) =
        peak_of(|| resize_plane(&strip, PixelType::U8, (1_000_000, 1), (128, 128)).unwrap());
    assert_eq!(out.len(), 128 * 128);
    assert!(out.iter().all(|&v| v == 7));
    let estimate = resize_bytes((1_000_000, 1), (128, 128), 1);
    assert!(used <= estimate, "{used} > {estimate}");
    assert!(used < 48 * MIB, "shrinking a strip used {used} bytes");

    let map = vec![0.75f32; 128 * 128];
    let (out, used) = peak_of(|| {
        resize_plane(
            bytemuck::cast_slice(&map),
            PixelType::F32,
            (128, 128),
            (1_000_000, 1),
        )
        .unwrap()
    });
    assert_eq!(out.len(), 4_000_000);
    let estimate = resize_bytes((128, 128), (1_000_000, 1), 4);
    assert!(used <= estimate, "{used} > {estimate}");
    assert!(used < 96 * MIB, "stretching to a strip used {used} bytes");

    // The whole mask answer of that strip: two contour points, not millions.
    let output = Tensor::from_f32(vec![1, 1, 128, 128], &map).unwrap();
    let (answer, used) = peak_of(|| mask_answer(&output, (1_000_000, 1), 0.5).unwrap());
    assert_eq!(answer.contours, [vec![[0, 0], [999_999, 0]]]);
    let estimate = mask_answer_bytes((1_000_000, 1), (128, 128));
    assert!(used <= estimate, "{used} > {estimate}");
    assert!(used < 160 * MIB, "the strip's mask used {used} bytes");
}

#[test]
fn hostile_audio_headers_cost_what_the_model_reads() {
    let spec = AudioInput {
        sample_rate: 16_000,
        length: 16_000,
    };
    let estimate = worst_case_bytes(FileType::Wav, &spec);
    // 32 channels at the highest rate and a prime one (the longest FFTs),
    // claiming 4 GiB of data; hours of audio; a short clip.
    for (rate, channels, declared, frames) in [
        (384_000, 26, u32::MAX, 40_000),
        (383_987, 26, u32::MAX, 20_000),
        (383_987, 1, u32::MAX, 2_000_000),
        (44_100, 2, 400, 100),
    ] {
        let bytes = Bytes::from(wav(rate, channels, declared, frames));
        let (shape, used) = peak_of(|| {
            audio_to_tensor(bytes.clone(), FileType::Wav, &spec, 2).map(|t| t.tensor.shape)
        });
        eprintln!("{rate} Hz x {channels}: used {used} of {estimate} estimated: {shape:?}");
        assert!(
            used <= estimate,
            "{rate} Hz x {channels}: {used} > {estimate}"
        );
        assert_eq!(shape.ok(), Some(vec![1, 16_000]));
    }
    assert!(estimate < 128 * MIB, "{estimate}");
}

/// A real small lossless WebP whose header is changed to declare
/// `width` x `height` (at most 16384 each).
fn webp_declaring(width: u32, height: u32) -> Vec<u8> {
    let small = ImageBuffer::from_fn(16, 16, |x, y| Rgba([x as u8, y as u8, 9, 200]));
    let mut webp = encode(DynamicImage::ImageRgba8(small), ImageFormat::WebP);
    assert_eq!(&webp[12..16], b"VP8L");
    assert_eq!(webp[20], 0x2F);
    let old = u32::from_le_bytes(webp[21..25].try_into().unwrap());
    let bits = (old & 0xF000_0000) | (width - 1) | ((height - 1) << 14);
    webp[21..25].copy_from_slice(&bits.to_le_bytes());
    webp
}

/// A real small JPEG whose frame header is changed to declare
/// `width` x `height`.
fn jpeg_declaring(width: u16, height: u16) -> Vec<u8> {
    let mut jpeg = encode(scene(64, 48).into(), ImageFormat::Jpeg);
    let sof = jpeg
        .windows(2)
        .position(|w| w == [0xFF, 0xC0])
        .expect("a baseline frame header");
    jpeg[sof + 5..sof + 7].copy_from_slice(&height.to_be_bytes());
    jpeg[sof + 7..sof + 9].copy_from_slice(&width.to_be_bytes());
    jpeg
}

/// A field of `/proc/PID/status` in bytes (`VmSize`, `VmHWM`, ...).
fn proc_status(pid: u32, field: &str) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("Linux /proc");
    status
        .lines()
        .find_map(|l| l.strip_prefix(&format!("{field}:")))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        .map(|kb| kb * 1024)
        .unwrap_or_else(|| panic!("no {field} in /proc/{pid}/status"))
}

/// Caps the address space of process `pid` at `bytes` with util-linux's
/// `prlimit` (present on every Debian); false when it is missing or refused.
fn limit_address_space(pid: u32, bytes: u64) -> bool {
    std::process::Command::new("prlimit")
        .args(["--pid", &pid.to_string(), &format!("--as={bytes}:{bytes}")])
        .status()
        .is_ok_and(|s| s.success())
}

const INFLIGHT_MB: u64 = 768;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_server_under_a_memory_limit_answers_every_extreme_upload() {
    let repo = Repo::new()
        .copy("models/spheroid-seg", "spheroid-seg", None)
        .copy("models/night-calls", "night-calls", None);
    let inflight = INFLIGHT_MB.to_string();
    let mut gantry = Gantry::spawn(
        repo.path(),
        &[
            ("MALLOC_ARENA_MAX", "2"),
            ("GANTRY__MEDIA__THREADS", "2"),
            ("GANTRY__MEDIA__MAX_FILE_MEMORY_MB", "512"),
            ("GANTRY__MEDIA__MAX_INFLIGHT_MB", &inflight),
        ],
    );
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(120))
        .build()
        .unwrap();
    gantry.wait_for_200(&client, "/api/optimized/health").await;
    let pid = gantry.child.id();
    // Room for the media jobs in flight and 1.5 GiB for everything else
    // (thread stacks, ONNX Runtime's arenas): the 40,000,000 x 1 PNG alone
    // took over 5 GB before it was bounded.
    let start_rss = proc_status(pid, "VmRSS");
    let limit = proc_status(pid, "VmSize") + (INFLIGHT_MB + 1536) * MIB;
    if !limit_address_space(pid, limit) {
        eprintln!("prlimit is not available: the peak RSS is still checked");
    }

    let wide = encode(GrayImage::new(40_000_000, 1).into(), ImageFormat::Png);
    // A few hundred KB at most (the was 38 KB at a higher level).
    assert!(wide.len() < 256_000, "{}", wide.len());
    // (file, model, statuses allowed besides 429, a word the 422 names)
    type Case = (
        &'static str,
        Vec<u8>,
        &'static str,
        &'static [u16],
        &'static str,
    );
    let cases: Vec<Case> = vec![
        (
            "40000000x1.png",
            wide,
            "spheroid-seg",
            &[422],
            "media.max_image_side",
        ),
        (
            "10000000x1.png",
            encode(GrayImage::new(10_000_000, 1).into(), ImageFormat::Png),
            "spheroid-seg",
            &[422],
            "media.max_image_side",
        ),
        (
            "1x40000000.png",
            encode(GrayImage::new(1, 40_000_000).into(), ImageFormat::Png),
            "spheroid-seg",
            &[422],
            "media.max_image_side",
        ),
        (
            "60000x1.png",
            encode(GrayImage::new(60_000, 1).into(), ImageFormat::Png),
            "spheroid-seg",
            &[422],
            "media.max_aspect_ratio",
        ),
        (
            "6000x60.png",
            encode(scene(6000, 60).into(), ImageFormat::Png),
            "spheroid-seg",
            &[200],
            "",
        ),
        (
            "bomb-65535x65535.png",
            png_header(65_535, 65_535),
            "spheroid-seg",
            &[422],
            "media.max_image_pixels",
        ),
        (
            "bomb-65535x610.png",
            png_header(65_535, 610),
            "spheroid-seg",
            &[422],
            "",
        ),
        (
            "bomb-6324x6324.png",
            png_header(6324, 6324),
            "spheroid-seg",
            &[422],
            "",
        ),
        (
            "bomb.tiff",
            tiff_header(65_000, 65_000),
            "spheroid-seg",
            &[422],
            "media.max_image_pixels",
        ),
        (
            "strip.tiff",
            tiff_header(4_000_000, 1),
            "spheroid-seg",
            &[422],
            "media.max_image_side",
        ),
        (
            "bomb.jpg",
            jpeg_declaring(65_500, 65_500),
            "spheroid-seg",
            &[422],
            "media.max_image_pixels",
        ),
        (
            "strip.jpg",
            jpeg_declaring(65_000, 1),
            "spheroid-seg",
            &[422],
            "media.max_aspect_ratio",
        ),
        (
            "wide.jpg",
            jpeg_declaring(60_000, 600),
            "spheroid-seg",
            &[200, 422],
            "",
        ),
        (
            "bomb.webp",
            webp_declaring(16_384, 16_384),
            "spheroid-seg",
            &[422],
            "",
        ),
        (
            "strip.webp",
            webp_declaring(16_384, 1),
            "spheroid-seg",
            &[422],
            "",
        ),
        (
            "huge.wav",
            wav(384_000, 26, u32::MAX, 2000),
            "night-calls",
            &[200],
            "",
        ),
        (
            "many-channels.wav",
            wav(16_000, 65_535, u32::MAX, 1),
            "night-calls",
            &[415, 422],
            "",
        ),
        (
            "fast.wav",
            wav(4_000_000_000, 1, u32::MAX, 100),
            "night-calls",
            &[422],
            "sample rate",
        ),
    ];
    // Every file three times, all at once.
    let requests = cases
        .iter()
        .flat_map(|case| std::iter::repeat_n(case, 3))
        .map(|(name, bytes, model, _, _)| {
            let form = reqwest::multipart::Form::new()
                .text("model", model.to_string())
                .part(
                    "file",
                    reqwest::multipart::Part::bytes(bytes.clone()).file_name(name.to_string()),
                );
            let request = client
                .post(format!("{}/api/optimized/predict", gantry.base))
                .multipart(form);
            async move {
                let response = request
                    .send()
                    .await
                    .unwrap_or_else(|e| panic!("{name}: no answer (did the server die?): {e}"));
                let status = response.status().as_u16();
                let retry_after = response.headers().contains_key("retry-after");
                let body: Value = response
                    .json()
                    .await
                    .unwrap_or_else(|e| panic!("{name}: the answer is not JSON: {e}"));
                (status, retry_after, body)
            }
        });
    let answers = futures_util::future::join_all(requests).await;
    let expected = cases.iter().flat_map(|case| std::iter::repeat_n(case, 3));
    for ((name, _, _, statuses, needle), (status, retry_after, body)) in expected.zip(answers) {
        if status == 429 {
            assert_eq!(body["code"], "media_busy", "{name}: {body}");
            assert!(retry_after, "{name}: a 429 without Retry-After");
            continue;
        }
        assert!(statuses.contains(&status), "{name}: {status} {body}");
        if status == 422 {
            let message = body["error"].as_str().unwrap_or_default();
            assert!(
                message.contains(needle),
                "{name}: '{message}' lacks '{needle}'"
            );
            assert!(
                matches!(
                    body["code"].as_str(),
                    Some("file_too_large" | "invalid_file")
                ),
                "{name}: {body}"
            );
        }
    }
    // Still up, healthy, serving, and its peak within the bound.
    assert!(
        gantry.child.try_wait().expect("wait").is_none(),
        "the server exited under the uploads"
    );
    let health = client
        .get(format!("{}/api/optimized/health", gantry.base))
        .send()
        .await
        .expect("health answers");
    assert_eq!(health.status(), 200);
    let png =
        std::fs::read(crate::common::root().join("tests/fixtures/media/spheroids.png")).unwrap();
    let form = reqwest::multipart::Form::new()
        .text("model", "spheroid-seg")
        .part(
            "file",
            reqwest::multipart::Part::bytes(png).file_name("ok.png"),
        );
    let ok = client
        .post(format!("{}/api/optimized/predict", gantry.base))
        .multipart(form)
        .send()
        .await
        .expect("an answer");
    assert_eq!(ok.status(), 200);
    let peak = proc_status(pid, "VmHWM");
    assert!(
        peak < start_rss + (INFLIGHT_MB + 1024) * MIB,
        "peak RSS {} MiB from {} MiB at start",
        peak / MIB,
        start_rss / MIB
    );
}
