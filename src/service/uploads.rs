//! Predictions on uploaded files. A file is sniffed from its bytes, turned
//! into the model's input on the media pool as its `[input]` table says
//! (a `.npy` array, an image or an audio clip), run through the
//! [`InferenceService`] like any request (so it batches with everything
//! else), and its outputs shaped as the `[output]` table says (tensors, a
//! mask or class labels).

use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use gantry_actors::processing::{InputProcessing, OutputProcessing};
use gantry_actors::signature::ModelSignature;
use gantry_actors::{InferError, ModelHandle, Priority, Tensor};
use tracing::Instrument;

use crate::error::ApiError;
use crate::media::budget::MemoryBudget;
use crate::media::budget::Reservation;
use crate::media::classes::{top_classes, ClassScore};
use crate::media::estimate::{self, Estimate};
use crate::media::image::{image_to_tensor, probe, ImageLimits};
use crate::media::mask::{mask_answer, MaskAnswer};
use crate::media::npy::{read_npy, NpyError};
use crate::media::pool::MediaPool;
use crate::media::sniff::{describe_unknown, sniff, Family, FileType, AUDIO_TYPES, IMAGE_TYPES};
use crate::media::{audio, MediaError};
use crate::service::{InferenceService, Pending, PredictCall, Prediction};

/// How uploaded files are handled.
pub struct MediaSettings {
    /// Where decoding and post-processing run, within the memory budget
    /// (per file and in flight) their jobs reserve from.
    pub pool: MediaPool,
    pub image_limits: ImageLimits,
    /// Most files in one batch upload.
    pub max_batch_files: usize,
}

impl MediaSettings {
    pub fn from_config(config: &crate::config::MediaConfig) -> Self {
        let threads = match config.threads {
            0 => std::thread::available_parallelism().map_or(1, |n| n.get()),
            n => n,
        };
        let mib = |mb: u64| mb.saturating_mul(1 << 20);
        let memory = MemoryBudget::new(mib(config.max_file_memory_mb), mib(config.max_inflight_mb));
        MediaSettings {
            pool: MediaPool::new(threads, config.queue_capacity).with_memory(memory),
            image_limits: ImageLimits {
                max_pixels: config.max_image_pixels,
                max_side: config.max_image_side,
                max_aspect_ratio: config.max_aspect_ratio,
            },
            max_batch_files: config.max_batch_files,
        }
    }
}

/// One uploaded file.
#[derive(Debug, Clone)]
pub struct UploadedFile {
    /// The name the client gave it, if any (only echoed back).
    pub name: Option<String>,
    pub bytes: Bytes,
}

/// Per-request options of a file prediction.
#[derive(Debug, Clone, Default)]
pub struct FileOptions {
    /// Overrides the mask threshold of `[output]`.
    pub threshold: Option<f32>,
    /// Overrides the `top_k` of `[output]`.
    pub top_k: Option<usize>,
    pub timeout: Option<Duration>,
    pub priority: Option<Priority>,
    pub use_cache: bool,
}

/// What the file was.
#[derive(Debug, Clone)]
pub enum SourceInfo {
    Image {
        file_type: FileType,
        width: u32,
        height: u32,
    },
    Audio {
        file_type: FileType,
        sample_rate: u32,
        channels: usize,
        seconds: f64,
    },
    Tensor {
        shape: Vec<usize>,
    },
}

/// The answer's payload, as the model's `[output]` table asks.
#[derive(Debug)]
pub enum FileResult {
    /// Every output as a tensor: see `prediction.outputs`.
    Tensors,
    Mask(MaskAnswer),
    Classes(Vec<ClassScore>),
}

/// A finished file prediction.
#[derive(Debug)]
pub struct FilePrediction {
    pub prediction: Prediction,
    pub source: SourceInfo,
    pub result: FileResult,
    pub decode_ms: f64,
    pub postprocess_ms: f64,
    pub total_ms: f64,
    /// The memory reserved for this file's job, held until the answer is
    /// sent (dropped with this value).
    pub reservation: Reservation,
}

/// A file turned into the model's input, with the memory its job holds.
struct Prepared {
    input: (String, Tensor),
    source: SourceInfo,
    reservation: Reservation,
}

/// Runs file predictions: decoding and post-processing on `pool`,
/// inference through `service`.
pub struct FilePredictor<'a> {
    pub service: &'a InferenceService,
    pub pool: &'a MediaPool,
    pub limits: ImageLimits,
}

impl FilePredictor<'_> {
    /// One file, end to end, noting on `pending` what its record needs
    /// (the model first, so that a file refused before inference counts
    /// for it); the caller finishes the record with the status it sends.
    pub async fn predict(
        &self,
        model: &str,
        pending: &mut Pending,
        file: UploadedFile,
        options: &FileOptions,
    ) -> Result<FilePrediction, ApiError> {
        let started = Instant::now();
        if let Ok(handle) = self.service.model(model) {
            pending.attribute(handle);
        }
        // The request's deadline covers waiting for the media pool and
        // decoding too; inference gets what is left.
        let budget = options.timeout.unwrap_or(self.service.default_timeout);
        let prepared = tokio::time::timeout(budget, self.prepare(model, file))
            .await
            .unwrap_or(Err(ApiError::Infer(InferError::DeadlineExceeded {
                waited_ms: budget.as_millis() as u64,
            })));
        let Prepared {
            input,
            source,
            reservation,
        } = prepared?;
        let prepare = started.elapsed();
        let left = budget.saturating_sub(prepare).max(Duration::from_millis(1));
        let call = PredictCall {
            request_id: pending.request_id().to_string(),
            inputs: vec![input],
            timeout: Some(left),
            use_cache: options.use_cache,
            priority: options.priority,
            sequence: None,
            pin: None,
        };
        let prediction = self.service.predict(model, call, pending).await?;
        let post_started = Instant::now();
        let result = self
            .shape(&prediction, &source, options, &reservation)
            .await?;
        let postprocess = post_started.elapsed();
        self.service
            .metrics
            .record_media(prediction.model.name(), prepare, postprocess);
        Ok(FilePrediction {
            prediction,
            source,
            result,
            decode_ms: ms(prepare),
            postprocess_ms: ms(postprocess),
            total_ms: ms(started.elapsed()),
            reservation,
        })
    }

    /// The model's input tensor (named) made from the file. What the job
    /// will take in memory is estimated from the file's header and the
    /// model's sizes and reserved before it queues: a file over the per-file
    /// bound is a 422, one that does not fit beside the jobs in flight a 429.
    async fn prepare(&self, model: &str, file: UploadedFile) -> Result<Prepared, ApiError> {
        let handle = self.service.model(model)?;
        let deadline = Instant::now() + self.service.default_timeout;
        let signature = self.service.signature_of(&handle, deadline).await?.clone();
        let (input_name, rank) = single_input(&handle, &signature)?;
        let bytes = file.bytes;
        if bytes.is_empty() {
            return Err(MediaError::Undecodable("the uploaded file is empty".into()).into());
        }
        let file_type = sniff(&bytes);
        let wrong_type = |expected: &str| {
            let found = file_type.map_or_else(
                || describe_unknown(&bytes),
                |t| format!("the file is {}", t.name().to_uppercase()),
            );
            ApiError::from(MediaError::Unsupported(format!(
                "model '{model}' takes {expected}; {found}"
            )))
        };
        match &handle.spec.settings.input {
            InputProcessing::Tensor => {
                if file_type != Some(FileType::Npy) {
                    return Err(wrong_type(
                        "tensors: upload a NumPy .npy array or send JSON",
                    ));
                }
                let file_bytes = bytes.len() as u64;
                let reservation = self.pool.reserve(
                    file_bytes + estimate::npy_bytes(file_bytes),
                    &format!("the {} MiB NPY file", file_bytes >> 20),
                )?;
                let parsed = self
                    .pool
                    .run_reserved(&reservation, move || Ok(read_npy(&bytes)))
                    .instrument(tracing::info_span!("media.decode", media.type = "npy"))
                    .await?;
                let tensor = parsed.map_err(|e| match e {
                    NpyError::NotNpy => ApiError::UnsupportedMedia(e.to_string()),
                    NpyError::Invalid(_) => ApiError::InvalidTensor(e.to_string()),
                })?;
                let shape = tensor.shape.clone();
                Ok(Prepared {
                    input: (input_name, tensor),
                    source: SourceInfo::Tensor { shape },
                    reservation,
                })
            }
            InputProcessing::Image(spec) => {
                let file_type = file_type
                    .filter(|t| t.family() == Family::Image && t.readable())
                    .ok_or_else(|| wrong_type(&format!("images ({IMAGE_TYPES})")))?;
                let size = spec
                    .target_size(&signature.inputs[0])
                    .map_err(|why| failed(format!("model '{model}': {why}")))?;
                // Only the header is read here (its metadata bounded), so a
                // file is refused before it queues.
                let header = probe(&bytes, file_type, self.limits)?;
                let answer = match &handle.spec.settings.output {
                    OutputProcessing::Mask(mask) => {
                        let map = mask_map_size(&signature, mask.output.as_deref(), size);
                        estimate::mask_answer_bytes(header.oriented, map)
                    }
                    _ => 0,
                };
                let estimate = Estimate {
                    file: bytes.len() as u64,
                    prepare: estimate::image_input_bytes(&header, spec.color.channels(), size),
                    answer,
                };
                let (w, h) = header.stored;
                let what = format!("the {w}x{h} {} image", file_type.name().to_uppercase());
                let reservation = self.pool.reserve(estimate.total(), &what)?;
                let (spec, limits) = (spec.clone(), self.limits);
                let image = self
                    .pool
                    .run_reserved(&reservation, move || {
                        image_to_tensor(&bytes, file_type, &spec, size, limits)
                    })
                    .instrument(tracing::info_span!("media.decode", media.type = "image"))
                    .await?;
                let source = SourceInfo::Image {
                    file_type,
                    width: image.width,
                    height: image.height,
                };
                Ok(Prepared {
                    input: (input_name, image.tensor),
                    source,
                    reservation,
                })
            }
            InputProcessing::Audio(spec) => {
                let file_type = file_type
                    .filter(|t| t.family() == Family::Audio && t.readable())
                    .ok_or_else(|| wrong_type(&format!("audio ({AUDIO_TYPES})")))?;
                let estimate = Estimate {
                    file: bytes.len() as u64,
                    prepare: audio::worst_case_bytes(file_type, spec),
                    answer: 0,
                };
                let what = format!("the {} file", file_type.name().to_uppercase());
                let reservation = self.pool.reserve(estimate.total(), &what)?;
                let spec = spec.clone();
                let clip = self
                    .pool
                    .run_reserved(&reservation, move || {
                        audio::audio_to_tensor(bytes, file_type, &spec, rank)
                    })
                    .instrument(tracing::info_span!("media.decode", media.type = "audio"))
                    .await?;
                let source = SourceInfo::Audio {
                    file_type,
                    sample_rate: clip.sample_rate,
                    channels: clip.channels,
                    seconds: clip.seconds,
                };
                Ok(Prepared {
                    input: (input_name, clip.tensor),
                    source,
                    reservation,
                })
            }
        }
    }

    /// The answer's payload from the outputs.
    async fn shape(
        &self,
        prediction: &Prediction,
        source: &SourceInfo,
        options: &FileOptions,
        reservation: &Reservation,
    ) -> Result<FileResult, ApiError> {
        let model = &prediction.model;
        let processing = &model.spec.settings.output;
        if matches!(processing, OutputProcessing::Tensor) {
            return Ok(FileResult::Tensors);
        }
        let index = match processing.output_name() {
            Some(name) => prediction
                .outputs
                .iter()
                .position(|(n, _)| n == name)
                .ok_or_else(|| {
                    failed(format!(
                        "model '{}' has no output '{name}' (named in its [output] table)",
                        model.name()
                    ))
                })?,
            None => 0,
        };
        if index >= prediction.outputs.len() {
            return Err(failed(format!(
                "model '{}' answered no outputs",
                model.name()
            )));
        }
        match processing {
            OutputProcessing::Mask(mask) => {
                let threshold = options.threshold.unwrap_or(mask.threshold);
                let SourceInfo::Image { width, height, .. } = *source else {
                    return Err(failed("a mask answer needs an image upload".into()));
                };
                let outputs = Arc::clone(&prediction.outputs);
                // A map larger than the model's signature promised needs
                // more than was reserved: reserve the difference too.
                let map = output_map_size(&outputs[index].1.shape).unwrap_or((1, 1));
                let needed = estimate::mask_answer_bytes((width, height), map);
                let extra = (needed > reservation.bytes())
                    .then(|| {
                        let what =
                            format!("the {width}x{height} mask of a {}x{} map", map.0, map.1);
                        self.pool.reserve_beyond(needed, reservation, &what)
                    })
                    .transpose()?;
                // The pool's own refusals keep their status (a full queue is
                // 429); an output that is not a mask is the model's fault.
                let answer = self
                    .pool
                    .run_reserved(reservation, move || {
                        let _extra = extra;
                        Ok(mask_answer(&outputs[index].1, (width, height), threshold))
                    })
                    .instrument(tracing::info_span!("media.postprocess"))
                    .await?
                    .map_err(failed)?;
                Ok(FileResult::Mask(answer))
            }
            OutputProcessing::Classes(classes) => {
                let top_k = options.top_k.unwrap_or(classes.top_k);
                let labels = model.spec.labels.as_deref();
                top_classes(&prediction.outputs[index].1, labels, classes.softmax, top_k)
                    .map(FileResult::Classes)
                    .map_err(failed)
            }
            OutputProcessing::Tensor => Ok(FileResult::Tensors),
        }
    }
}

/// The (width, height) of the map a mask output will hold, from the model's
/// signature: the output's fixed height and width, else the input's size.
fn mask_map_size(
    signature: &ModelSignature,
    output: Option<&str>,
    input: (u32, u32),
) -> (u32, u32) {
    let spec = match output {
        Some(name) => signature.outputs.iter().find(|o| o.name == name),
        None => signature.outputs.first(),
    };
    let dims: Vec<usize> = match spec {
        Some(spec) => spec.dims.iter().map(|d| d.unwrap_or(0)).collect(),
        None => return input,
    };
    match output_map_size(&dims) {
        Some((w, h)) if w > 0 && h > 0 => (w, h),
        _ => input,
    }
}

/// (width, height) of a one-channel map shaped `[.., 1, H, W]` or
/// `[.., H, W, 1]` (0 for a dynamic dimension).
fn output_map_size(shape: &[usize]) -> Option<(u32, u32)> {
    let (h, w) = match shape {
        [.., h, w, 1] => (*h, *w),
        [.., h, w] => (*h, *w),
        _ => return None,
    };
    Some((u32::try_from(w).ok()?, u32::try_from(h).ok()?))
}

/// A post-processing failure: the model's outputs do not fit its `[output]` table.
fn failed(why: String) -> ApiError {
    ApiError::Infer(InferError::Inference(why))
}

/// The input an uploaded file feeds (the model's only one) and its rank.
fn single_input(
    handle: &ModelHandle,
    signature: &ModelSignature,
) -> Result<(String, usize), ApiError> {
    match signature.inputs.as_slice() {
        [only] => Ok((only.name.clone(), only.dims.len())),
        many => Err(ApiError::InvalidTensor(format!(
            "model '{}' has {} inputs; a file upload feeds single-input models only, send JSON tensors instead",
            handle.name(),
            many.len()
        ))),
    }
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}
