//! Image headers and decoding (`gantry::media::image`) under a small pixel
//! limit (the seeds' size), so each input costs little: what is accepted
//! fits the limit and comes out as the model's 8x8 tensor.

#![no_main]

use gantry::media::image::{image_to_tensor, ImageLimits};
use gantry::media::sniff::{sniff, Family};
use gantry_actors::processing::{ColorMode, ImageInput};
use libfuzzer_sys::fuzz_target;

const LIMITS: ImageLimits = ImageLimits {
    max_pixels: 200 * 200,
    max_side: 4096,
    max_aspect_ratio: 100,
};

fuzz_target!(|input: &[u8]| {
    let Some(file_type) = sniff(input).filter(|t| t.family() == Family::Image) else {
        return;
    };
    let color = match input.len() % 2 {
        0 => ColorMode::Grey,
        _ => ColorMode::Rgb,
    };
    let spec = ImageInput {
        color,
        ..ImageInput::default()
    };
    let Ok(image) = image_to_tensor(input, file_type, &spec, (8, 8), LIMITS) else {
        return;
    };
    assert!(u64::from(image.width) * u64::from(image.height) <= LIMITS.max_pixels);
    assert_eq!(image.tensor.shape, [1, color.channels(), 8, 8]);
    assert!(image.tensor.to_f32().unwrap().iter().all(|v| v.is_finite()));
});
