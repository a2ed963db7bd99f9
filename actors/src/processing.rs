//! What a model takes in and gives back beyond raw tensors, as declared in
//! the `[input]` and `[output]` tables of its `model.toml`: an image or an
//! audio clip turned into the input tensor, and a mask or class labels made
//! of the output. These are plain settings; the application (uploads, media) does the work.

use serde::Deserialize;

use crate::signature::{ModelSignature, TensorSpec};
use crate::tensor::DataType;

/// The `[input]` table: how an uploaded file becomes the model's input.
#[derive(Debug, Clone, PartialEq, Default, Deserialize)]
#[serde(tag = "kind", rename_all = "lowercase")]
pub enum InputProcessing {
    /// `.npy` uploads and JSON tensors, taken as they are.
    #[default]
    Tensor,
    /// PNG, JPEG, TIFF or WebP, decoded, resized and normalised.
    Image(ImageInput),
    /// WAV, FLAC, MP3 or Ogg Vorbis, decoded, mixed to mono, resampled,
    /// padded or trimmed.
    Audio(AudioInput),
}

/// The colour mode an image is converted to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ColorMode {
    /// One channel.
    Grey,
    /// Three channels, red, green, blue.
    #[default]
    Rgb,
}

impl ColorMode {
    pub fn channels(self) -> usize {
        match self {
            ColorMode::Grey => 1,
            ColorMode::Rgb => 3,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            ColorMode::Grey => "grey",
            ColorMode::Rgb => "rgb",
        }
    }
}

/// Largest image side a model may take.
pub const MAX_IMAGE_SIDE: u32 = 16_384;

/// Where the channel axis sits in the image tensor.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Layout {
    /// `[batch, channels, height, width]`.
    #[default]
    Nchw,
    /// `[batch, height, width, channels]`.
    Nhwc,
}

/// `[input] kind = "image"`.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ImageInput {
    pub color: ColorMode,
    /// The model's image size; taken from its input shape when absent.
    pub width: Option<u32>,
    pub height: Option<u32>,
    pub layout: Layout,
    /// Pixels are first mapped to `[0, scale]` (the full range of their bit
    /// depth: 255 for 8-bit, 65535 for 16-bit).
    pub scale: f32,
    /// Per channel (or one for all), subtracted after scaling.
    pub mean: Vec<f32>,
    /// Per channel (or one for all), divided by after subtracting the mean.
    pub std: Vec<f32>,
}

impl Default for ImageInput {
    fn default() -> Self {
        ImageInput {
            color: ColorMode::default(),
            width: None,
            height: None,
            layout: Layout::default(),
            scale: 1.0,
            mean: vec![0.0],
            std: vec![1.0],
        }
    }
}

impl ImageInput {
    /// The channel, height and width dimensions of `input` in this layout.
    fn chw(&self, input: &TensorSpec) -> Result<[Option<usize>; 3], String> {
        match (self.layout, input.dims.as_slice()) {
            (Layout::Nchw, [_, c, h, w]) | (Layout::Nhwc, [_, h, w, c]) => Ok([*c, *h, *w]),
            (_, dims) => Err(format!(
                "input '{}' has {} dimensions; an image input has 4",
                input.name,
                dims.len()
            )),
        }
    }

    /// The size (width, height) images are resized to for `input`: the
    /// configured one, else the input's fixed dimensions.
    pub fn target_size(&self, input: &TensorSpec) -> Result<(u32, u32), String> {
        let [_, h, w] = self.chw(input)?;
        let pick = |configured: Option<u32>, dim: Option<usize>, key: &str| {
            configured
                .or(dim.and_then(|d| u32::try_from(d).ok()))
                .ok_or_else(|| {
                    format!(
                        "input '{}' has a dynamic {key}; set [input] {key}",
                        input.name
                    )
                })
        };
        Ok((
            pick(self.width, w, "width")?,
            pick(self.height, h, "height")?,
        ))
    }

    /// The mean and standard deviation of channel `c`.
    pub fn normalisation(&self, c: usize) -> (f32, f32) {
        let pick = |v: &[f32]| *v.get(c).or(v.first()).unwrap_or(&0.0);
        (pick(&self.mean), pick(&self.std))
    }

    fn check(&self) -> Result<(), (&'static str, String)> {
        let channels = self.color.channels();
        for (key, values) in [("mean", &self.mean), ("std", &self.std)] {
            if values.len() != 1 && values.len() != channels {
                return Err((
                    key,
                    format!(
                        "must hold 1 or {channels} values for color '{}'",
                        self.color.name()
                    ),
                ));
            }
        }
        if self.std.iter().any(|s| *s == 0.0 || !s.is_finite()) {
            return Err(("std", "values must be finite and not 0".into()));
        }
        if !(self.scale.is_finite() && self.scale > 0.0) {
            return Err(("scale", "must be a positive number".into()));
        }
        let side = |v: Option<u32>| v.is_some_and(|v| !(1..=MAX_IMAGE_SIDE).contains(&v));
        if side(self.width) || side(self.height) {
            return Err((
                "width",
                format!("width and height must be between 1 and {MAX_IMAGE_SIDE}"),
            ));
        }
        Ok(())
    }
}

/// `[input] kind = "audio"`.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AudioInput {
    /// The model's sample rate in Hz; clips are resampled to it.
    pub sample_rate: u32,
    /// Samples the model takes; shorter clips are padded with silence at
    /// the end, longer ones keep their start.
    pub length: usize,
}

/// The `[output]` table: what the answer holds.
#[derive(Debug, Clone, PartialEq, Default, Deserialize)]
#[serde(tag = "kind", rename_all = "lowercase")]
pub enum OutputProcessing {
    /// Every output as a tensor.
    #[default]
    Tensor,
    /// A per-pixel probability map thresholded into a mask at the size of
    /// the uploaded image.
    Mask(MaskOutput),
    /// Scores turned into the `top_k` labels.
    Classes(ClassesOutput),
}

/// `[output] kind = "mask"`.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct MaskOutput {
    /// Pixels whose value is at least this are foreground; a request's
    /// `threshold` overrides it.
    pub threshold: f32,
    /// The output holding the map; the model's first output when absent.
    pub output: Option<String>,
}

impl Default for MaskOutput {
    fn default() -> Self {
        MaskOutput {
            threshold: 0.5,
            output: None,
        }
    }
}

/// `[output] kind = "classes"`.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ClassesOutput {
    /// A file next to `model.onnx`, one label per line in score order;
    /// labels are the class indices when absent.
    pub labels: Option<String>,
    /// Apply softmax to the scores (for models that answer logits).
    pub softmax: bool,
    /// Labels in the answer; a request's `top_k` overrides it.
    pub top_k: usize,
    /// The output holding the scores; the model's first output when absent.
    pub output: Option<String>,
}

impl Default for ClassesOutput {
    fn default() -> Self {
        ClassesOutput {
            labels: None,
            softmax: false,
            top_k: 5,
            output: None,
        }
    }
}

impl OutputProcessing {
    /// The output this processing reads, if it names one.
    pub fn output_name(&self) -> Option<&str> {
        match self {
            OutputProcessing::Tensor => None,
            OutputProcessing::Mask(m) => m.output.as_deref(),
            OutputProcessing::Classes(c) => c.output.as_deref(),
        }
    }
}

/// Checks the `[input]` and `[output]` tables; the error names the key.
pub fn check(
    input: &InputProcessing,
    output: &OutputProcessing,
) -> Result<(), (&'static str, String)> {
    match input {
        InputProcessing::Image(image) => image.check()?,
        InputProcessing::Audio(audio) => {
            if audio.sample_rate == 0 {
                return Err(("input.sample_rate", "must be at least 1".into()));
            }
            if audio.length == 0 {
                return Err(("input.length", "must be at least 1".into()));
            }
        }
        InputProcessing::Tensor => {}
    }
    match output {
        OutputProcessing::Mask(mask) if !mask.threshold.is_finite() => {
            Err(("output.threshold", "must be a number".into()))
        }
        OutputProcessing::Mask(_) if !matches!(input, InputProcessing::Image(_)) => Err((
            "output.kind",
            "\"mask\" needs [input] kind = \"image\" (the mask is sized like the upload)".into(),
        )),
        OutputProcessing::Classes(classes) if classes.top_k == 0 => {
            Err(("output.top_k", "must be at least 1".into()))
        }
        _ => Ok(()),
    }
}

/// Checks the tables against the model's signature; the error says what
/// does not fit.
pub fn fits(
    input: &InputProcessing,
    output: &OutputProcessing,
    signature: &ModelSignature,
) -> Result<(), String> {
    let fixed = |d: Option<usize>, want: usize| d.is_none_or(|d| d == want);
    match input {
        InputProcessing::Tensor => {}
        InputProcessing::Image(_) | InputProcessing::Audio(_) if signature.inputs.len() != 1 => {
            return Err(format!(
                "an image or audio input feeds one input; the model has {}",
                signature.inputs.len()
            ))
        }
        InputProcessing::Image(image) => {
            let spec = &signature.inputs[0];
            if spec.dtype != DataType::Fp32 {
                return Err(format!(
                    "input '{}' is {}; an image input is FP32",
                    spec.name, spec.dtype
                ));
            }
            let [c, h, w] = image.chw(spec)?;
            if !fixed(c, image.color.channels()) {
                return Err(format!(
                    "color '{}' has {} channels; input '{}' takes {}",
                    image.color.name(),
                    image.color.channels(),
                    spec.name,
                    c.unwrap_or_default()
                ));
            }
            let (width, height) = image.target_size(spec)?;
            for (key, size, dim) in [("width", width, w), ("height", height, h)] {
                if !fixed(dim, size as usize) {
                    return Err(format!(
                        "[input] {key} is {size}; input '{}' takes {}",
                        spec.name,
                        dim.unwrap_or_default()
                    ));
                }
            }
        }
        InputProcessing::Audio(audio) => {
            let spec = &signature.inputs[0];
            if spec.dtype != DataType::Fp32 {
                return Err(format!(
                    "input '{}' is {}; an audio input is FP32",
                    spec.name, spec.dtype
                ));
            }
            if !fixed(spec.dims.last().copied().flatten(), audio.length) {
                return Err(format!(
                    "[input] length is {}; input '{}' takes {:?} samples",
                    audio.length,
                    spec.name,
                    spec.dims.last().copied().flatten()
                ));
            }
        }
    }
    if *output == OutputProcessing::Tensor {
        return Ok(());
    }
    let read = match output.output_name() {
        Some(name) => signature
            .outputs
            .iter()
            .find(|o| o.name == name)
            .ok_or_else(|| format!("[output] output '{name}' is not an output of the model"))?,
        None => signature
            .outputs
            .first()
            .ok_or("the model has no outputs")?,
    };
    if read.dtype != DataType::Fp32 {
        return Err(format!(
            "output '{}' is {}; a mask or classes output is FP32",
            read.name, read.dtype
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, Deserialize)]
    struct Tables {
        #[serde(default)]
        input: InputProcessing,
        #[serde(default)]
        output: OutputProcessing,
    }

    fn parse(text: &str) -> Result<Tables, String> {
        toml::from_str(text).map_err(|e| e.to_string())
    }

    #[test]
    fn image_and_mask_tables_parse_with_defaults() {
        let t = parse(
            "[input]\nkind = \"image\"\ncolor = \"grey\"\nwidth = 64\n[output]\nkind = \"mask\"\n",
        )
        .unwrap();
        let InputProcessing::Image(image) = t.input else {
            panic!("not an image input")
        };
        assert_eq!(image.color, ColorMode::Grey);
        assert_eq!(image.width, Some(64));
        assert_eq!(image.height, None);
        assert_eq!(image.normalisation(0), (0.0, 1.0));
        assert_eq!(t.output, OutputProcessing::Mask(MaskOutput::default()));
    }

    #[test]
    fn absent_tables_mean_tensors() {
        let t = parse("").unwrap();
        assert_eq!(t.input, InputProcessing::Tensor);
        assert_eq!(t.output, OutputProcessing::Tensor);
    }

    #[test]
    fn unknown_keys_and_kinds_are_refused() {
        let typo = parse("[input]\nkind = \"image\"\ncolour = \"grey\"\n").unwrap_err();
        assert!(typo.contains("colour"), "{typo}");
        let kind = parse("[input]\nkind = \"video\"\n").unwrap_err();
        assert!(kind.contains("video"), "{kind}");
        let missing = parse("[input]\nkind = \"audio\"\nsample_rate = 16000\n").unwrap_err();
        assert!(missing.contains("length"), "{missing}");
    }

    fn signature(input: &[Option<usize>], output: &str) -> ModelSignature {
        let spec =
            |name: &str, dims: Vec<Option<usize>>| TensorSpec::new(name, DataType::Fp32, dims);
        ModelSignature {
            inputs: vec![spec("x", input.to_vec())],
            outputs: vec![spec(output, vec![None, Some(1)])],
            unbatched: false,
        }
    }

    #[test]
    fn tables_are_checked_against_the_signature() {
        let grey = InputProcessing::Image(ImageInput {
            color: ColorMode::Grey,
            ..ImageInput::default()
        });
        let mask = OutputProcessing::Mask(MaskOutput::default());
        let fixed = signature(&[None, Some(1), Some(64), Some(64)], "mask");
        assert_eq!(fits(&grey, &mask, &fixed), Ok(()));
        let rgb_model = signature(&[None, Some(3), Some(64), Some(64)], "mask");
        assert!(fits(&grey, &mask, &rgb_model)
            .unwrap_err()
            .contains("channels"));
        let dynamic = signature(&[None, Some(1), None, None], "mask");
        assert!(fits(&grey, &mask, &dynamic)
            .unwrap_err()
            .contains("set [input] width"));
        let named = OutputProcessing::Mask(MaskOutput {
            output: Some("probs".into()),
            ..MaskOutput::default()
        });
        assert!(fits(&grey, &named, &fixed).unwrap_err().contains("'probs'"));
        let audio = InputProcessing::Audio(AudioInput {
            sample_rate: 16000,
            length: 16000,
        });
        let short = signature(&[None, Some(8000)], "logits");
        assert!(fits(&audio, &OutputProcessing::Tensor, &short)
            .unwrap_err()
            .contains("8000"));
    }

    #[test]
    fn checks_name_the_key() {
        let image = ImageInput {
            color: ColorMode::Rgb,
            mean: vec![0.5, 0.5],
            ..ImageInput::default()
        };
        let input = InputProcessing::Image(image);
        let (key, _) = check(&input, &OutputProcessing::Tensor).unwrap_err();
        assert_eq!(key, "mean");
        let mask = OutputProcessing::Mask(MaskOutput::default());
        let (key, why) = check(&InputProcessing::Tensor, &mask).unwrap_err();
        assert_eq!(key, "output.kind");
        assert!(why.contains("image"), "{why}");
    }
}
