//! Large JPEGs decoded straight to a smaller size: the JPEG format lets a
//! decoder scale by 1/2, 1/4 or 1/8 inside its inverse DCT, so a camera
//! photo headed for a 128-pixel model input never exists at full size.
//! Used only when the image is at least twice the size it is needed at;
//! anything this path does not handle (CMYK, 16-bit, a decode error) falls
//! back to the full decoder, which reports errors.

use std::io::Cursor;

use image::{DynamicImage, GrayImage, RgbImage};
use jpeg_decoder::{Decoder, PixelFormat};

/// `bytes` decoded at the smallest DCT scale that keeps at least `want`
/// (width, height, in the file's stored orientation), or `None` when the
/// image is under twice that (scaling would not help) or this path cannot
/// decode the file. The scaled IDCT averages each block, so the image
/// stays free of aliasing for the resize that follows.
/// `max_bytes` bounds the decoder's buffers, whatever the header claims.
pub fn decode_scaled(
    bytes: &[u8],
    stored: (u32, u32),
    want: (u32, u32),
    max_bytes: usize,
) -> Option<DynamicImage> {
    let at_least = want;
    if stored.0 < at_least.0.saturating_mul(2) || stored.1 < at_least.1.saturating_mul(2) {
        return None;
    }
    let mut decoder = Decoder::new(Cursor::new(bytes));
    decoder.set_max_decoding_buffer_size(max_bytes);
    decoder.read_info().ok()?;
    let request = |v: u32| u16::try_from(v).unwrap_or(u16::MAX);
    let (width, height) = decoder
        .scale(request(at_least.0), request(at_least.1))
        .ok()?;
    let pixels = decoder.decode().ok()?;
    let (width, height) = (u32::from(width), u32::from(height));
    match decoder.info()?.pixel_format {
        PixelFormat::L8 => GrayImage::from_raw(width, height, pixels).map(DynamicImage::ImageLuma8),
        PixelFormat::RGB24 => {
            RgbImage::from_raw(width, height, pixels).map(DynamicImage::ImageRgb8)
        }
        PixelFormat::L16 | PixelFormat::CMYK32 => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn jpeg(width: u32, height: u32) -> Vec<u8> {
        let image = RgbImage::from_fn(width, height, |x, y| {
            image::Rgb([(x / 8) as u8, (y / 8) as u8, 128])
        });
        let mut out = Cursor::new(Vec::new());
        DynamicImage::ImageRgb8(image)
            .write_to(&mut out, image::ImageFormat::Jpeg)
            .unwrap();
        out.into_inner()
    }

    #[test]
    fn large_images_are_decoded_small_and_small_ones_are_left_alone() {
        let big = jpeg(1600, 1200);
        let scaled = decode_scaled(&big, (1600, 1200), (128, 128), usize::MAX).expect("scaled");
        assert_eq!((scaled.width(), scaled.height()), (200, 150));
        let pixel = scaled.to_rgb8().get_pixel(100, 75).0;
        assert!(
            (i32::from(pixel[0]) - 100).abs() <= 3 && (i32::from(pixel[1]) - 75).abs() <= 3,
            "{pixel:?}"
        );
        assert!(decode_scaled(&jpeg(200, 300), (200, 300), (128, 128), usize::MAX).is_none());
        assert!(
            decode_scaled(b"\xFF\xD8\xFF garbage", (4000, 4000), (64, 64), usize::MAX).is_none()
        );
    }
}
