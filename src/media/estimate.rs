//! What a media job will take in memory, worked out from a file's header and
//! the model's sizes before anything is decoded, so that a file that would
//! take too much is refused (422) and the jobs in flight stay within their
//! budget (429) — see [`budget`](super::budget).
//!
//! Each estimate is the peak of the job's phases, each phase counting every
//! buffer alive in it, rounded up: the decoder's output and its own buffers,
//! the colour conversion, both passes of the resize (the image between them
//! and the filter coefficients of each), the tensor; and for an answer the
//! probability map at the image's size, the mask, its PNG and base64, the
//! contour tracer's buffers and the JSON. Tests check them against what the
//! code really allocates.

use super::image::{resize_middle, ImageHeader};
use super::mask::MAX_CONTOUR_POINTS;

/// What one file's job reserves.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Estimate {
    /// The upload's own bytes, held while the job runs.
    pub file: u64,
    /// Peak while the file becomes the model's input.
    pub prepare: u64,
    /// Peak while the model's output becomes the answer (and is sent).
    pub answer: u64,
}

impl Estimate {
    /// The bytes to reserve: the file, and the larger of the two phases
    /// (they never run at once; the input's buffers are gone by the answer).
    pub fn total(&self) -> u64 {
        self.file
            .saturating_add(self.prepare.max(self.answer))
            .saturating_add(SLACK)
    }
}

/// A decoder's own state that does not grow with the image (inflate
/// windows and tables, Huffman tables, row buffers of small images).
const DECODER_STATE: u64 = 1 << 20;

/// Allocations of any job that do not grow with the file (decoder state,
/// zlib windows, lookup tables).
const SLACK: u64 = 1 << 20;

fn area((w, h): (u32, u32)) -> u64 {
    u64::from(w) * u64::from(h)
}

/// Filter coefficients of one resize pass from `n` to `m` pixels along its
/// direction: a bilinear window of `2 * ceil(max(n / m, 1)) + 1` weights per
/// output pixel, kept as `f64`, again as 16- or 32-bit integers in a vector
/// of their own, with the bounds and the slices that point at them.
pub fn resize_coefficients(n: u32, m: u32) -> u64 {
    if n == m || m == 0 {
        return 0;
    }
    let window = 2 * u64::from(n.div_ceil(m)) + 1;
    u64::from(m) * (12 * window + 96)
}

/// Working memory of [`resize_plane`](super::image::resize_plane) beyond its
/// source: the output, the image between its two passes, and each pass's
/// coefficients.
pub fn resize_bytes(from: (u32, u32), to: (u32, u32), pixel_bytes: u64) -> u64 {
    let middle = resize_middle(from, to);
    let mut bytes = area(to) * pixel_bytes;
    if middle != from && middle != to {
        bytes += area(middle) * pixel_bytes;
    }
    bytes + resize_coefficients(from.0, to.0) + resize_coefficients(from.1, to.1)
}

/// The peak of turning an image with `header` into a `target` (width,
/// height) input of `channels` float channels.
pub fn image_input_bytes(header: &ImageHeader, channels: usize, target: (u32, u32)) -> u64 {
    let bpp = u64::from(header.bytes_per_pixel);
    let depth = if header.bytes_per_pixel > header.channels {
        2
    } else {
        1
    };
    let decoded = area(header.stored) * bpp;
    // Decoders work on whole blocks (a JPEG's 16 x 16 MCUs) and may hold up
    // to twice the output besides (a progressive JPEG's coefficients, a
    // WebP's planes, a TIFF strip).
    let padded = area((
        header.stored.0.saturating_add(15) & !15,
        header.stored.1.saturating_add(15) & !15,
    ));
    let decode = decoded + 2 * padded * bpp + DECODER_STATE;
    // Orientation turns the image into a copy.
    let orient = 2 * decoded;
    let pixel = channels as u64 * depth;
    let converted = area(header.stored) * pixel;
    let convert = decoded + converted;
    let resize = converted + resize_bytes(header.oriented, target, pixel);
    // The resized pixels, the float values and the tensor's bytes.
    let tensor = area(target) * (pixel + 2 * 4 * channels as u64);
    decode.max(orient).max(convert).max(resize).max(tensor)
}

/// The peak of a mask answer for an image of `image` (width, height) from
/// a `map` (width, height) probability map.
pub fn mask_answer_bytes(image: (u32, u32), map: (u32, u32)) -> u64 {
    let pixels = area(image);
    let (w, h) = (u64::from(image.0), u64::from(image.1));
    // The map's values, the map at the image's size (4 bytes a pixel) and
    // the mask (1).
    let threshold = area(map) * 4 + resize_bytes(map, image, 4) + pixels;
    // The PNG as it is written: the zlib stream (at most a stored copy of
    // filter byte and row, made twice when compressing does not pay) and
    // the file, each a vector that may double.
    let stored = h * (w + 1) + pixels / 16_000 * 5 + 1024;
    let png_len = stored + 1024;
    let encode = 2 * pixels + 2 * 2 * stored + 2 * png_len + 8 * w;
    let base64 = png_len.div_ceil(3) * 4;
    let to_text = pixels + 2 * png_len + base64;
    // Mask, base64, the tracer's marks (1 a pixel), its fill stack (4-byte
    // indices, at most one a pixel, in a vector that doubles) and corners:
    // a boundary is visited at most 4 times a pixel, and at most
    // MAX_CONTOUR_POINTS are kept (8 bytes each) or being traced (in a
    // vector that doubles, then copied out).
    let corners = (MAX_CONTOUR_POINTS as u64).min(4 * pixels + 8);
    let contours = pixels + base64 + pixels + 8 * pixels + corners * 32;
    // The answer and its JSON (the base64 again and at most 14 bytes of
    // text a corner, in a vector that doubles).
    let json = base64 + corners * 8 + 2 * (base64 + corners * 14 + 4096);
    threshold.max(encode).max(to_text).max(contours).max(json)
}

/// The peak of turning an audio clip of at most `rate` Hz, decoded in
/// packets of at most `packet_samples` samples (all channels), into a
/// `length`-sample input at `model_rate` Hz: decoding stops once the
/// model's length is covered, so the clip's own length does not count.
pub fn audio_input_bytes(rate: u32, packet_samples: u64, model_rate: u32, length: u64) -> u64 {
    let frames = (length * u64::from(rate)).div_ceil(u64::from(model_rate.max(1))) + 1024;
    // The decoder's buffer (up to 8-byte samples) and the f32 copy.
    let packets = packet_samples * (8 + 4);
    // The mono clip: a vector that may double past a packet beyond it.
    let mono = 2 * (frames + packet_samples) * 4;
    // The resampled (or copied) clip, doubling, and the resampler itself;
    // the worst ratio is one with no common factor.
    let resample = resampler_bytes(rate, model_rate) + 2 * (frames.max(length) + 4096) * 4;
    // The padded samples and the tensor's bytes.
    let tensor = 2 * length * 4;
    packets + mono + resample + tensor
}

/// The FFT resampler's buffers: its FFT lengths come from the two rates'
/// ratio in lowest terms, so rates with no common factor make FFTs as long
/// as a second of audio; a length with large prime factors needs scratch
/// space several times its size.
fn resampler_bytes(from: u32, to: u32) -> u64 {
    let (from, to) = (u64::from(from.max(1)), u64::from(to.max(1)));
    // Rates with no common factor (the worst case: the largest blocks).
    let (block_in, block_out) = (from, to);
    // As rubato sizes it for chunks of 1024 frames in two sub-chunks.
    let wanted = (1024 * to / from / 2).max(1);
    let chunks = wanted.div_ceil(block_out).max(1);
    let (fft_in, fft_out) = (chunks * block_in, chunks * block_out);
    // Complex f32 (8 bytes) buffers and plans of up to 4x the next power of
    // two (Bluestein), for both lengths, plus the input chunk and output.
    let fft = |n: u64| n.next_power_of_two() * 4 * 8 * 4;
    fft(fft_in) + fft(fft_out) + 4 * (2 * fft_in + 2 * fft_out) * 4
}

/// The peak of reading a `.npy` file of `len` bytes: its array as a tensor.
pub fn npy_bytes(len: u64) -> u64 {
    2 * len
}

#[cfg(test)]
mod tests {
    use super::*;

    fn grey(w: u32, h: u32) -> ImageHeader {
        ImageHeader {
            stored: (w, h),
            oriented: (w, h),
            bytes_per_pixel: 1,
            channels: 1,
        }
    }

    #[test]
    fn the_resize_shrinks_first_so_a_strip_costs_its_own_size() {
        // 40,000,000 x 1 to 128 x 128: the width goes first, 128 x 1 between.
        assert_eq!(resize_middle((40_000_000, 1), (128, 128)), (128, 1));
        assert_eq!(resize_middle((1, 40_000_000), (128, 128)), (1, 128));
        assert_eq!(resize_middle((128, 128), (40_000_000, 1)), (128, 1));
        let strip = resize_bytes((40_000_000, 1), (128, 128), 1);
        // Coefficients for 40,000,000 source columns, about 24 bytes each.
        assert!(strip < 1_100_000_000, "{strip}");
        assert!(strip > 900_000_000, "{strip}");
        // A photo costs almost nothing beyond its pixels.
        assert!(resize_bytes((6000, 4000), (128, 128), 3) < 4 << 20);
    }

    #[test]
    fn coefficients_grow_with_the_sides_not_the_area() {
        assert_eq!(resize_coefficients(100, 100), 0);
        // Enlarging: three weights per output pixel.
        assert_eq!(resize_coefficients(128, 1000), 1000 * (12 * 3 + 96));
        // Shrinking 10,000 to 100: a window of 201 weights per output pixel.
        assert_eq!(resize_coefficients(10_000, 100), 100 * (12 * 201 + 96));
    }

    #[test]
    fn a_wide_strip_and_a_photo_of_the_same_pixels_differ_by_the_resize() {
        let photo = image_input_bytes(&grey(8000, 5000), 1, (128, 128));
        let strip = image_input_bytes(&grey(40_000_000, 1), 1, (128, 128));
        // The photo: its pixels decoded (and up to twice in the decoder).
        assert!(
            (3 * 40_000_000..3 * 40_200_000 + DECODER_STATE).contains(&photo),
            "{photo}"
        );
        // The strip: 16 rows of padding in the decoder, and 1 GB of filter
        // weights for its 40,000,000 columns.
        assert!(strip > 1_000_000_000, "{strip}");
    }

    #[test]
    fn a_mask_at_the_image_size_costs_about_a_dozen_bytes_a_pixel() {
        let photo = mask_answer_bytes((8000, 5000), (128, 128));
        assert!(
            photo > 11 * 40_000_000 && photo < 13 * 40_000_000,
            "{photo}"
        );
        let small = mask_answer_bytes((128, 128), (128, 128));
        assert!(small < 40 << 20, "{small}");
        let total = Estimate {
            file: 10,
            prepare: 5,
            answer: 7,
        }
        .total();
        assert_eq!(total, 17 + SLACK);
    }

    #[test]
    fn audio_is_bounded_by_the_model_not_the_header() {
        // One second at 16 kHz from a clip of at most 48 kHz: a few MB.
        let mp3 = audio_input_bytes(48_000, 2304, 16_000, 16_000);
        assert!(mp3 < 32 << 20, "{mp3}");
        // At up to 384 kHz the resampler's FFTs dominate: tens of MB.
        let wav = audio_input_bytes(384_000, 1152 * 32, 16_000, 16_000);
        assert!(wav > mp3 && wav < 128 << 20, "{wav}");
        // A model reading ten times more takes about ten times the clip.
        let long = audio_input_bytes(384_000, 1152 * 32, 16_000, 160_000);
        assert!(long > wav + 9 * 24 * 16_000 * 4, "{long} vs {wav}");
    }
}
