//! A segmentation output turned into an answer: the probability map is
//! resized back to the uploaded image's size, thresholded, and answered as
//! a PNG (base64), the foreground fraction and the outer contours.

use base64::Engine;
use fast_image_resize::PixelType;
use gantry_actors::Tensor;
use image::codecs::png::{CompressionType, FilterType, PngEncoder};
use image::{ExtendedColorType, ImageEncoder};
use serde::Serialize;

use super::contours::outer_contours;
use super::image::resize_plane;

/// The mask answer.
#[derive(Debug, Serialize)]
pub struct MaskAnswer {
    pub width: u32,
    pub height: u32,
    pub threshold: f32,
    /// Foreground pixels over all pixels.
    pub foreground_fraction: f64,
    /// An 8-bit greyscale PNG, 255 for foreground, base64 (standard alphabet).
    pub png_base64: String,
    /// One clockwise polygon of `[x, y]` boundary pixels per region: the
    /// [`MAX_CONTOURS`] with the most points when there are more, within
    /// [`MAX_CONTOUR_POINTS`] points in all.
    pub contours: Vec<Vec<[u32; 2]>>,
    /// True when regions beyond those caps were left out.
    pub contours_truncated: bool,
}

/// Most contours in one answer (a noisy mask can hold millions of specks).
pub const MAX_CONTOURS: usize = 1000;

/// Most contour points in one answer, all contours together.
pub const MAX_CONTOUR_POINTS: usize = 200_000;

/// Builds the mask of `output` at `width` x `height`. Each full-size buffer
/// is dropped as soon as the next one is made: the map at the image's size
/// (4 bytes a pixel) becomes the mask (1), which becomes the PNG and its
/// base64; see [`mask_answer_bytes`](super::estimate::mask_answer_bytes).
pub fn mask_answer(
    output: &Tensor,
    (width, height): (u32, u32),
    threshold: f32,
) -> Result<MaskAnswer, String> {
    let (map_h, map_w) = map_size(&output.shape).ok_or_else(|| {
        format!(
            "a mask output has one channel of height x width; this one is {:?}",
            output.shape
        )
    })?;
    let values = output
        .to_f32()
        .ok_or_else(|| format!("a mask output is FP32; this one is {}", output.dtype))?;
    let mask: Vec<bool> = if (map_w, map_h) == (width as usize, height as usize) {
        values.iter().map(|&v| v >= threshold).collect()
    } else {
        let from = (map_w as u32, map_h as u32);
        let bytes = resize_plane(
            bytemuck::cast_slice(&values),
            PixelType::F32,
            from,
            (width, height),
        )?;
        bytes
            .chunks_exact(4)
            .map(|b| f32::from_ne_bytes([b[0], b[1], b[2], b[3]]) >= threshold)
            .collect()
    };
    drop(values);
    let foreground = mask.iter().filter(|&&m| m).count();
    let png = {
        let pixels: Vec<u8> = mask.iter().map(|&m| if m { 255 } else { 0 }).collect();
        let mut png = Vec::new();
        PngEncoder::new_with_quality(&mut png, CompressionType::Fast, FilterType::Adaptive)
            .write_image(&pixels, width, height, ExtendedColorType::L8)
            .map_err(|e| e.to_string())?;
        png
    };
    let png_base64 = base64::engine::general_purpose::STANDARD.encode(&png);
    drop(png);
    let (contours, contours_truncated) = outer_contours(
        &mask,
        width as usize,
        height as usize,
        MAX_CONTOURS,
        MAX_CONTOUR_POINTS,
    );
    Ok(MaskAnswer {
        width,
        height,
        threshold,
        foreground_fraction: foreground as f64 / mask.len().max(1) as f64,
        png_base64,
        contours,
        contours_truncated,
    })
}

/// Height and width of a one-channel map: `[.., 1, H, W]` or `[.., H, W, 1]`
/// once the leading ones are dropped.
fn map_size(shape: &[usize]) -> Option<(usize, usize)> {
    let mut dims: Vec<usize> = shape.to_vec();
    while dims.len() > 2 && dims[0] == 1 {
        dims.remove(0);
    }
    if dims.len() > 2 && dims[dims.len() - 1] == 1 {
        dims.pop();
    }
    match dims[..] {
        [h, w] if h > 0 && w > 0 => Some((h, w)),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn decode_png(b64: &str) -> image::GrayImage {
        let bytes = base64::engine::general_purpose::STANDARD
            .decode(b64)
            .unwrap();
        image::load_from_memory(&bytes).unwrap().into_luma8()
    }

    #[test]
    fn a_square_map_is_resized_thresholded_and_traced() {
        // 4x4 map with a 2x2 square of 0.9 in the middle.
        let mut map = vec![0.1f32; 16];
        for i in [5, 6, 9, 10] {
            map[i] = 0.9;
        }
        let t = Tensor::from_f32(vec![1, 1, 4, 4], &map).unwrap();
        let answer = mask_answer(&t, (8, 8), 0.5).unwrap();
        assert_eq!((answer.width, answer.height), (8, 8));
        let png = decode_png(&answer.png_base64);
        assert_eq!(png.dimensions(), (8, 8));
        assert_eq!(png.get_pixel(4, 4)[0], 255);
        assert_eq!(png.get_pixel(0, 0)[0], 0);
        let fg = png.pixels().filter(|p| p[0] == 255).count() as f64 / 64.0;
        assert_eq!(answer.foreground_fraction, fg);
        assert!(fg > 0.1 && fg < 0.4, "{fg}");
        assert_eq!(answer.contours.len(), 1);
        let strict = mask_answer(&t, (4, 4), 0.95).unwrap();
        assert_eq!(strict.foreground_fraction, 0.0);
        assert!(strict.contours.is_empty());
    }

    #[test]
    fn specks_beyond_the_cap_are_left_out() {
        // A checkerboard of isolated pixels, every other row: 4096 regions.
        let (w, h) = (128usize, 64usize);
        let map: Vec<f32> = (0..w * h)
            .map(|i| f32::from(u8::from((i / w) % 2 == 0 && i % 2 == 0)))
            .collect();
        let t = Tensor::from_f32(vec![1, 1, h, w], &map).unwrap();
        let answer = mask_answer(&t, (w as u32, h as u32), 0.5).unwrap();
        assert_eq!(answer.contours.len(), MAX_CONTOURS);
        assert!(answer.contours_truncated);
    }

    #[test]
    fn shapes_that_are_not_one_map_are_refused() {
        let three = Tensor::from_f32(vec![1, 3, 2, 2], &[0.0; 12]).unwrap();
        assert!(mask_answer(&three, (2, 2), 0.5)
            .unwrap_err()
            .contains("[1, 3, 2, 2]"));
        assert_eq!(map_size(&[1, 4, 5, 1]), Some((4, 5)));
        assert_eq!(map_size(&[4, 5]), Some((4, 5)));
    }
}
