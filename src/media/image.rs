//! Images to input tensors: decode (PNG, JPEG, TIFF, WebP; 8 or 16 bit,
//! grey or colour), apply the EXIF orientation, convert to the model's colour
//! mode, resize with a SIMD convolution (bilinear, area-aware when
//! shrinking), scale, normalise and lay out as NCHW or NHWC.
//!
//! A file's declared size is checked against the limits before any pixel
//! is decoded, so a small file claiming a huge image costs nothing.

use std::io::Cursor;

use fast_image_resize::images::{Image, ImageRef};
use fast_image_resize::{FilterType, PixelType, ResizeAlg, ResizeOptions, Resizer};
use gantry_actors::processing::{ColorMode, ImageInput, Layout};
use gantry_actors::Tensor;
use image::metadata::Orientation;
use image::{DynamicImage, ImageDecoder, ImageError, ImageFormat, ImageReader, Limits};

use super::jpeg;
use super::sniff::{FileType, IMAGE_TYPES};
use super::MediaError;

/// Limits on what an uploaded image may declare.
#[derive(Debug, Clone, Copy)]
pub struct ImageLimits {
    /// Most pixels (width x height) an image may have.
    pub max_pixels: u64,
    /// Most pixels along either side.
    pub max_side: u32,
    /// Most times longer one side may be than the other.
    pub max_aspect_ratio: u32,
}

impl Default for ImageLimits {
    fn default() -> Self {
        ImageLimits {
            max_pixels: 40_000_000,
            max_side: 65_535,
            max_aspect_ratio: 100,
        }
    }
}

impl ImageLimits {
    /// Most bytes one decoded image may take: the pixel limit at 16-bit
    /// RGB. Deeper images (16-bit with alpha, float) must be smaller.
    pub fn max_decoded_bytes(&self) -> u64 {
        self.max_pixels.saturating_mul(6)
    }

    /// Refuses a declared size over a limit; the message names the limit
    /// and the numbers.
    pub fn check(&self, name: &str, (w, h): (u32, u32)) -> Result<(), MediaError> {
        if w == 0 || h == 0 {
            return Err(MediaError::Undecodable(format!(
                "the {name} image is {w}x{h} pixels"
            )));
        }
        let too_large = |why: String| {
            Err(MediaError::TooLarge(format!(
                "the {name} image declares {w}x{h} pixels, {why}"
            )))
        };
        if u64::from(w) * u64::from(h) > self.max_pixels {
            return too_large(format!(
                "over the limit of {} pixels (media.max_image_pixels)",
                self.max_pixels
            ));
        }
        if w.max(h) > self.max_side {
            return too_large(format!(
                "a side of {} pixels, over the limit of {} (media.max_image_side)",
                w.max(h),
                self.max_side
            ));
        }
        let (long, short) = (u64::from(w.max(h)), u64::from(w.min(h)));
        if long > short * u64::from(self.max_aspect_ratio) {
            return too_large(format!(
                "an aspect ratio of {}:1, over the limit of {}:1 (media.max_aspect_ratio)",
                long / short,
                self.max_aspect_ratio
            ));
        }
        Ok(())
    }
}

/// What an image's header declares, read before any pixel is decoded.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ImageHeader {
    /// The size as stored, before orientation.
    pub stored: (u32, u32),
    /// The size after orientation, which answers are sized to.
    pub oriented: (u32, u32),
    /// Bytes per decoded pixel and channels of the file's colour type.
    pub bytes_per_pixel: u8,
    pub channels: u8,
}

/// An image turned into the model's input.
#[derive(Debug)]
pub struct ImageTensor {
    /// `[1, C, H, W]` or `[1, H, W, C]`, float32.
    pub tensor: Tensor,
    /// The uploaded image's size after orientation, which masks are sized to.
    pub width: u32,
    pub height: u32,
}

/// Decodes `bytes` (of type `file_type`) and builds the `width` x `height`
/// input tensor `spec` describes.
pub fn image_to_tensor(
    bytes: &[u8],
    file_type: FileType,
    spec: &ImageInput,
    (width, height): (u32, u32),
    limits: ImageLimits,
) -> Result<ImageTensor, MediaError> {
    let (image, (source_width, source_height)) =
        decode_for(bytes, file_type, limits, Some((width, height)))?;
    let decoded = (image.width(), image.height());
    let resized = Pixels::of(image, spec.color).resize(decoded.0, decoded.1, width, height)?;
    let values = normalise(&resized, spec, width as usize * height as usize);
    let channels = spec.color.channels();
    let shape = match spec.layout {
        Layout::Nchw => vec![1, channels, height as usize, width as usize],
        Layout::Nhwc => vec![1, height as usize, width as usize, channels],
    };
    let tensor = Tensor::from_f32(shape, &values)
        .map_err(|e| MediaError::Internal(format!("image tensor size mismatch: {e:?}")))?;
    Ok(ImageTensor {
        tensor,
        width: source_width,
        height: source_height,
    })
}

/// Decodes an image, refusing one whose declared size is over the limit.
pub fn decode(
    bytes: &[u8],
    file_type: FileType,
    limits: ImageLimits,
) -> Result<DynamicImage, MediaError> {
    decode_for(bytes, file_type, limits, None).map(|(image, _)| image)
}

/// Reads what an image declares (size, colour type, orientation) and
/// refuses it when that is over the limits, without decoding a pixel.
pub fn probe(
    bytes: &[u8],
    file_type: FileType,
    limits: ImageLimits,
) -> Result<ImageHeader, MediaError> {
    let (mut decoder, name) = open(bytes, file_type, limits)?;
    let broken = |e: ImageError| image_error(&name, e, limits.max_decoded_bytes());
    let (w, h) = decoder.dimensions();
    limits.check(&name, (w, h))?;
    let budget = limits.max_decoded_bytes();
    if decoder.total_bytes() > budget {
        return Err(MediaError::TooLarge(format!(
            "the {name} image declares {w}x{h} pixels of {:?}, {} MiB decoded, over the limit of {} MiB",
            decoder.color_type(),
            decoder.total_bytes() >> 20,
            budget >> 20
        )));
    }
    let color = decoder.color_type();
    let oriented = if is_turned(decoder.orientation().map_err(broken)?) {
        (h, w)
    } else {
        (w, h)
    };
    Ok(ImageHeader {
        stored: (w, h),
        oriented,
        bytes_per_pixel: color.bytes_per_pixel(),
        channels: color.channel_count(),
    })
}

/// A decoder for `bytes` with the decoded-size limit set, and the type's
/// name for messages.
fn open(
    bytes: &[u8],
    file_type: FileType,
    limits: ImageLimits,
) -> Result<(impl ImageDecoder + '_, String), MediaError> {
    let format = match file_type {
        FileType::Png => ImageFormat::Png,
        FileType::Jpeg => ImageFormat::Jpeg,
        FileType::Tiff => ImageFormat::Tiff,
        FileType::WebP => ImageFormat::WebP,
        other => {
            return Err(MediaError::Unsupported(format!(
                "{} images are not supported; send {IMAGE_TYPES}",
                other.name().to_uppercase()
            )))
        }
    };
    let name = file_type.name().to_uppercase();
    if file_type == FileType::Jpeg && !has_jpeg_end(bytes) {
        // The JPEG decoder fills a cut-off image with grey rather than fail.
        return Err(MediaError::Undecodable(format!(
            "the {name} image is truncated: it has no end-of-image marker"
        )));
    }
    let budget = limits.max_decoded_bytes();
    let mut reader = ImageReader::with_format(Cursor::new(bytes), format);
    let mut decoder_limits = Limits::default();
    decoder_limits.max_alloc = Some(budget);
    reader.limits(decoder_limits);
    let decoder = reader
        .into_decoder()
        .map_err(|e| image_error(&name, e, budget))?;
    Ok((decoder, name))
}

fn is_turned(orientation: Orientation) -> bool {
    matches!(
        orientation,
        Orientation::Rotate90
            | Orientation::Rotate270
            | Orientation::Rotate90FlipH
            | Orientation::Rotate270FlipH
    )
}

/// Decodes an image headed for `target` (width, height): a large JPEG may
/// come back smaller than it is (never smaller than the target); the size
/// it is (after orientation) comes back beside it.
fn decode_for(
    bytes: &[u8],
    file_type: FileType,
    limits: ImageLimits,
    target: Option<(u32, u32)>,
) -> Result<(DynamicImage, (u32, u32)), MediaError> {
    let header = probe(bytes, file_type, limits)?;
    let (mut decoder, name) = open(bytes, file_type, limits)?;
    let budget = limits.max_decoded_bytes();
    let broken = |e: ImageError| image_error(&name, e, budget);
    let orientation = decoder.orientation().map_err(broken)?;
    let turned = is_turned(orientation);
    let scaled = target
        .filter(|_| file_type == FileType::Jpeg)
        .and_then(|(tw, th)| {
            let want = if turned { (th, tw) } else { (tw, th) };
            let max_bytes = usize::try_from(budget).unwrap_or(usize::MAX);
            jpeg::decode_scaled(bytes, header.stored, want, max_bytes)
        });
    let mut image = match scaled {
        Some(image) => image,
        None => DynamicImage::from_decoder(decoder).map_err(broken)?,
    };
    image.apply_orientation(orientation);
    Ok((image, header.oriented))
}

/// The error for an image-crate failure: 415 for what it cannot read, the
/// size error for a limit, 422 for a damaged file.
fn image_error(name: &str, e: ImageError, budget: u64) -> MediaError {
    match e {
        ImageError::Unsupported(what) => MediaError::Unsupported(format!(
            "the {name} image uses what Gantry cannot read: {what}"
        )),
        ImageError::Limits(_) => MediaError::TooLarge(format!(
            "the {name} image needs more than {} MiB to decode (media.max_image_pixels)",
            budget >> 20
        )),
        other => {
            MediaError::Undecodable(format!("the {name} image is damaged or truncated: {other}"))
        }
    }
}

/// Whether a JPEG's segments lead to its end-of-image marker. Segments are
/// skipped by their lengths (so an EXIF thumbnail's own end marker never
/// counts) and scan data is read up to the next marker; what follows the end
/// (a phone's motion-photo video, padding) is ignored.
fn has_jpeg_end(bytes: &[u8]) -> bool {
    let mut i = 2; // after SOI
    while let Some(skip) = bytes
        .get(i..)
        .and_then(|rest| rest.iter().position(|&b| b == 0xFF))
    {
        i += skip;
        let Some(&marker) = bytes.get(i + 1) else {
            return false;
        };
        match marker {
            0xD9 => return true,
            // Fill bytes, stuffed 0xFF00 in scan data, restart markers, TEM.
            0xFF => i += 1,
            0x00 | 0x01 | 0xD0..=0xD8 => i += 2,
            // A segment: its length counts its own two bytes.
            _ => match bytes.get(i + 2..i + 4) {
                Some(&[hi, lo]) if u16::from_be_bytes([hi, lo]) >= 2 => {
                    i += 2 + usize::from(u16::from_be_bytes([hi, lo]));
                }
                _ => return false,
            },
        }
    }
    false
}

/// Interleaved pixels in the model's colour mode, at 8 or 16 bits.
enum Pixels {
    Eight { data: Vec<u8>, channels: usize },
    Sixteen { data: Vec<u16>, channels: usize },
}

impl Pixels {
    /// Converts to `color`, keeping 16 bits where the image has more than 8.
    fn of(image: DynamicImage, color: ColorMode) -> Self {
        let deep = image.color().bytes_per_pixel() / image.color().channel_count() > 1;
        let channels = color.channels();
        match (deep, color) {
            (false, ColorMode::Grey) => Pixels::Eight {
                data: image.into_luma8().into_raw(),
                channels,
            },
            (false, ColorMode::Rgb) => Pixels::Eight {
                data: image.into_rgb8().into_raw(),
                channels,
            },
            (true, ColorMode::Grey) => Pixels::Sixteen {
                data: image.into_luma16().into_raw(),
                channels,
            },
            (true, ColorMode::Rgb) => Pixels::Sixteen {
                data: image.into_rgb16().into_raw(),
                channels,
            },
        }
    }

    fn pixel_type(&self) -> PixelType {
        match self {
            Pixels::Eight { channels: 1, .. } => PixelType::U8,
            Pixels::Eight { .. } => PixelType::U8x3,
            Pixels::Sixteen { channels: 1, .. } => PixelType::U16,
            Pixels::Sixteen { .. } => PixelType::U16x3,
        }
    }

    /// Resized to `width` x `height`; unchanged when already that size.
    fn resize(self, src_w: u32, src_h: u32, width: u32, height: u32) -> Result<Pixels, MediaError> {
        if (src_w, src_h) == (width, height) {
            return Ok(self);
        }
        let pixel_type = self.pixel_type();
        let source: &[u8] = match &self {
            Pixels::Eight { data, .. } => data,
            Pixels::Sixteen { data, .. } => bytemuck::cast_slice(data),
        };
        let bytes = resize_plane(source, pixel_type, (src_w, src_h), (width, height))
            .map_err(|e| MediaError::Undecodable(format!("resizing failed: {e}")))?;
        Ok(match self {
            Pixels::Eight { channels, .. } => Pixels::Eight {
                data: bytes,
                channels,
            },
            Pixels::Sixteen { channels, .. } => Pixels::Sixteen {
                data: bytemuck::pod_collect_to_vec(&bytes),
                channels,
            },
        })
    }
}

/// Resizes interleaved `pixel_type` pixels from `from` to `to` (width,
/// height) with the resize every media path uses: a bilinear convolution
/// whose support grows when shrinking, so downscaled images are not aliased.
///
/// The two directions run as two passes, in the order that leaves the
/// smaller image between them ([`resize_middle`]): a 40,000,000 x 1 strip
/// headed for 128 x 128 is shrunk along its width first (128 x 1), never
/// stretched to 40,000,000 x 128 on the way, which is what one combined
/// pass does for 8-bit pixels (and for float pixels the other way round).
pub fn resize_plane(
    pixels: &[u8],
    pixel_type: PixelType,
    from: (u32, u32),
    to: (u32, u32),
) -> Result<Vec<u8>, String> {
    let middle = resize_middle(from, to);
    if middle == from || middle == to {
        return resize_pass(pixels, pixel_type, from, to);
    }
    let between = resize_pass(pixels, pixel_type, from, middle)?;
    resize_pass(&between, pixel_type, middle, to)
}

/// The size between the two passes of a resize from `from` to `to`: the
/// width changed first when that leaves fewer pixels, else the height.
pub fn resize_middle(from: (u32, u32), to: (u32, u32)) -> (u32, u32) {
    let area = |(w, h): (u32, u32)| u64::from(w) * u64::from(h);
    let width_first = (to.0, from.1);
    let height_first = (from.0, to.1);
    if area(width_first) <= area(height_first) {
        width_first
    } else {
        height_first
    }
}

/// One resize call (one direction, or none when the sizes are equal).
fn resize_pass(
    pixels: &[u8],
    pixel_type: PixelType,
    from: (u32, u32),
    to: (u32, u32),
) -> Result<Vec<u8>, String> {
    let src = ImageRef::new(from.0, from.1, pixels, pixel_type).map_err(|e| e.to_string())?;
    let mut dst = Image::new(to.0, to.1, pixel_type);
    let bilinear = ResizeOptions::new().resize_alg(ResizeAlg::Convolution(FilterType::Bilinear));
    Resizer::new()
        .resize(&src, &mut dst, &bilinear)
        .map_err(|e| e.to_string())?;
    Ok(dst.into_vec())
}

/// Scales to `[0, scale]`, normalises per channel and lays the values out.
fn normalise(pixels: &Pixels, spec: &ImageInput, area: usize) -> Vec<f32> {
    let channels = spec.color.channels();
    let mut out = vec![0f32; area * channels];
    // value(c, raw) = (raw / max * scale - mean_c) / std_c = raw * gain_c + bias_c
    let affine = |max: f32| -> Vec<(f32, f32)> {
        (0..channels)
            .map(|c| {
                let (mean, std) = spec.normalisation(c);
                (spec.scale / max / std, -mean / std)
            })
            .collect()
    };
    let mut place = |i: usize, c: usize, v: f32| match spec.layout {
        Layout::Nchw => out[c * area + i] = v,
        Layout::Nhwc => out[i * channels + c] = v,
    };
    match pixels {
        Pixels::Eight { data, .. } => {
            let ab = affine(255.0);
            let lut: Vec<[f32; 256]> = ab
                .iter()
                .map(|&(a, b)| std::array::from_fn(|raw| raw as f32 * a + b))
                .collect();
            for (i, px) in data.chunks_exact(channels).enumerate() {
                for (c, &raw) in px.iter().enumerate() {
                    place(i, c, lut[c][raw as usize]);
                }
            }
        }
        Pixels::Sixteen { data, .. } => {
            let ab = affine(65535.0);
            for (i, px) in data.chunks_exact(channels).enumerate() {
                for (c, &raw) in px.iter().enumerate() {
                    place(i, c, raw as f32 * ab[c].0 + ab[c].1);
                }
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use image::{GrayImage, ImageBuffer, Luma, Rgb, RgbImage};

    const LIMITS: ImageLimits = ImageLimits {
        max_pixels: 1 << 24,
        max_side: 65_535,
        max_aspect_ratio: 100,
    };

    fn encode(image: DynamicImage, format: ImageFormat) -> Vec<u8> {
        let mut out = Cursor::new(Vec::new());
        image.write_to(&mut out, format).unwrap();
        out.into_inner()
    }

    fn grey_spec() -> ImageInput {
        ImageInput {
            color: ColorMode::Grey,
            ..ImageInput::default()
        }
    }

    #[test]
    fn eight_and_sixteen_bit_give_the_same_values() {
        let grey = GrayImage::from_fn(6, 4, |x, y| Luma([(x * 40 + y * 5) as u8]));
        let deep: ImageBuffer<Luma<u16>, Vec<u16>> = ImageBuffer::from_fn(6, 4, |x, y| {
            Luma([u16::from(grey.get_pixel(x, y)[0]) * 257])
        });
        let png = encode(DynamicImage::ImageLuma8(grey), ImageFormat::Png);
        let tiff = encode(DynamicImage::ImageLuma16(deep), ImageFormat::Tiff);
        let a = image_to_tensor(&png, FileType::Png, &grey_spec(), (6, 4), LIMITS).unwrap();
        let b = image_to_tensor(&tiff, FileType::Tiff, &grey_spec(), (6, 4), LIMITS).unwrap();
        assert_eq!(a.tensor.shape, [1, 1, 4, 6]);
        let (a, b) = (a.tensor.to_f32().unwrap(), b.tensor.to_f32().unwrap());
        for (x, y) in a.iter().zip(&b) {
            assert!((x - y).abs() < 1e-6, "{x} vs {y}");
        }
        assert!((a[1] - 40.0 / 255.0).abs() < 1e-6);
    }

    #[test]
    fn colour_is_normalised_per_channel_in_either_layout() {
        let rgb = RgbImage::from_pixel(2, 2, Rgb([255, 0, 51]));
        let png = encode(DynamicImage::ImageRgb8(rgb), ImageFormat::Png);
        let mut spec = ImageInput {
            scale: 255.0,
            mean: vec![255.0, 0.0, 1.0],
            std: vec![1.0, 1.0, 2.0],
            ..ImageInput::default()
        };
        let nchw = image_to_tensor(&png, FileType::Png, &spec, (2, 2), LIMITS).unwrap();
        assert_eq!(
            nchw.tensor.to_f32().unwrap(),
            [0., 0., 0., 0., 0., 0., 0., 0., 25., 25., 25., 25.]
        );
        spec.layout = Layout::Nhwc;
        let nhwc = image_to_tensor(&png, FileType::Png, &spec, (2, 2), LIMITS).unwrap();
        assert_eq!(nhwc.tensor.shape, [1, 2, 2, 3]);
        assert_eq!(&nhwc.tensor.to_f32().unwrap()[..3], [0., 0., 25.]);
    }

    #[test]
    fn resizing_keeps_the_source_size_for_the_answer() {
        let grey = GrayImage::from_pixel(40, 30, Luma([200]));
        let jpeg = encode(DynamicImage::ImageLuma8(grey), ImageFormat::Jpeg);
        let t = image_to_tensor(&jpeg, FileType::Jpeg, &grey_spec(), (8, 8), LIMITS).unwrap();
        assert_eq!((t.width, t.height), (40, 30));
        assert_eq!(t.tensor.shape, [1, 1, 8, 8]);
        for v in t.tensor.to_f32().unwrap() {
            assert!((v - 200.0 / 255.0).abs() < 0.02, "{v}");
        }
    }

    #[test]
    fn damaged_and_oversized_images_are_refused() {
        let grey = GrayImage::from_pixel(64, 64, Luma([9]));
        let png = encode(DynamicImage::ImageLuma8(grey), ImageFormat::Png);
        let cut = &png[..png.len() / 2];
        let err = image_to_tensor(cut, FileType::Png, &grey_spec(), (8, 8), LIMITS).unwrap_err();
        assert!(
            matches!(err, MediaError::Undecodable(ref m) if m.contains("PNG")),
            "{err:?}"
        );
        let small = ImageLimits {
            max_pixels: 1000,
            ..LIMITS
        };
        let err = image_to_tensor(&png, FileType::Png, &grey_spec(), (8, 8), small).unwrap_err();
        assert!(
            matches!(err, MediaError::TooLarge(ref m) if m.contains("64x64")),
            "{err:?}"
        );
        let err = decode(b"GIF89a", FileType::Gif, LIMITS).unwrap_err();
        assert!(matches!(err, MediaError::Unsupported(_)), "{err:?}");
    }

    #[test]
    fn a_jpeg_is_whole_up_to_its_end_marker_whatever_follows() {
        let noise = GrayImage::from_fn(64, 48, |x, y| Luma([((x * 7 + y * 13) % 251) as u8]));
        let jpeg = encode(DynamicImage::ImageLuma8(noise), ImageFormat::Jpeg);
        assert!(has_jpeg_end(&jpeg));
        // A motion photo: a video after the image, longer than any tail scan.
        let mut motion = jpeg.clone();
        motion.extend((0..200_000u32).map(|i| (i.wrapping_mul(2_654_435_761) >> 24) as u8));
        let image = decode(&motion, FileType::Jpeg, LIMITS).unwrap();
        assert_eq!((image.width(), image.height()), (64, 48));
        // Cut anywhere in its scan data, it is truncated, whatever we append.
        let scan = jpeg.windows(2).rposition(|w| w == [0xFF, 0xDA]).unwrap();
        for cut in [scan + 8, (scan + jpeg.len()) / 2, jpeg.len() - 2] {
            assert!(!has_jpeg_end(&jpeg[..cut]), "cut at {cut}");
            let err = decode(&jpeg[..cut], FileType::Jpeg, LIMITS).unwrap_err();
            assert!(
                matches!(err, MediaError::Undecodable(ref m) if m.contains("truncated")),
                "{err:?}"
            );
        }
        // An end marker inside an earlier segment (an EXIF thumbnail's) does not count.
        let mut app = vec![0xFF, 0xD8, 0xFF, 0xE1, 0x00, 0x06, 0xFF, 0xD9, 0xFF, 0xD9];
        app.extend_from_slice(&jpeg[2..scan + 8]);
        assert!(!has_jpeg_end(&app));
    }
}
