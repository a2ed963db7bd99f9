//! File uploads: `POST /api/optimized/predict` with a multipart form (the
//! handler in `predict` hands those here) and `POST
//! /api/optimized/predict/batch`, several files answered in order, each its
//! own request to the batcher, each failing on its own, and each its own
//! record (metrics and log row) with the status its entry shows.

use actix_web::http::Method;
use actix_web::{web, HttpRequest, HttpResponse, ResponseError};
use futures_util::future::join_all;
use serde::Serialize;

use super::form::{read_upload_form, UploadForm};
use super::tensor_json::{json_outputs, round3, JsonTensorOut};
use super::{cache_allowed, header_priority, header_timeout, route, AppState};
use crate::error::ApiError;
use crate::media::classes::ClassScore;
use crate::media::mask::MaskAnswer;
use crate::request_id::Requested;
use crate::service::uploads::{FileOptions, FilePrediction, FileResult, SourceInfo, UploadedFile};
use crate::service::Pending;

pub fn config_upload_api(cfg: &mut web::ServiceConfig) {
    cfg.service(route(
        Method::POST,
        "/api/optimized/predict/batch",
        predict_batch,
    ));
}

/// The answer to one file.
#[derive(Serialize, utoipa::ToSchema)]
pub(super) struct FileAnswer<'a> {
    request_id: &'a str,
    /// The prediction's own id in the prediction log.
    prediction_id: String,
    model: &'a str,
    model_version: &'a str,
    file: FileInfo<'a>,
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<Object>)]
    mask: Option<&'a MaskAnswer>,
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<Vec<Object>>)]
    classes: Option<&'a [ClassScore]>,
    #[serde(skip_serializing_if = "Option::is_none")]
    outputs: Option<std::collections::BTreeMap<&'a str, JsonTensorOut<'a>>>,
    batch_size: Option<usize>,
    replica: Option<usize>,
    cache: Option<&'static str>,
    timings_ms: FileTimings,
}

/// What was uploaded, as Gantry read it.
#[derive(Serialize, Default, utoipa::ToSchema)]
struct FileInfo<'a> {
    #[serde(skip_serializing_if = "Option::is_none")]
    name: Option<&'a str>,
    #[serde(rename = "type", skip_serializing_if = "Option::is_none")]
    file_type: Option<&'static str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    width: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    height: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    sample_rate: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    channels: Option<usize>,
    #[serde(skip_serializing_if = "Option::is_none")]
    seconds: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    shape: Option<&'a [usize]>,
}

#[derive(Serialize, utoipa::ToSchema)]
struct FileTimings {
    decode: f64,
    queue: f64,
    inference: f64,
    postprocess: f64,
    total: f64,
}

/// One entry of a batch answer: the file's answer or its error.
#[derive(Serialize, utoipa::ToSchema)]
#[serde(untagged)]
enum BatchEntry<'a> {
    Done {
        status: u16,
        #[serde(flatten)]
        answer: FileAnswer<'a>,
    },
    Failed {
        status: u16,
        request_id: &'a str,
        /// Absent when the file never reached its model (nothing is logged).
        #[serde(skip_serializing_if = "Option::is_none")]
        prediction_id: Option<String>,
        file: FileInfo<'a>,
        error: String,
        code: &'static str,
    },
}

#[derive(Serialize, utoipa::ToSchema)]
struct BatchAnswer<'a> {
    request_id: &'a str,
    model: &'a str,
    results: Vec<BatchEntry<'a>>,
}

/// `POST /api/optimized/predict` with a multipart form: exactly one file.
pub async fn predict_upload(
    state: &AppState,
    req: &HttpRequest,
    payload: web::Payload,
    requested: &Requested,
) -> HttpResponse {
    let mut pending = state.service.open(requested);
    let answered = async {
        let form = read_form(state, req, payload, 1).await?;
        let file = form.files.into_iter().next().ok_or_else(|| {
            ApiError::Internal("the upload form was read without its file".into())
        })?;
        let done = state
            .service
            .file_predictor()
            .predict(&form.model, &mut pending, file.clone(), &form.options)
            .await?;
        let id = pending.prediction_id().to_string();
        Ok(HttpResponse::Ok().json(file_answer(&requested.id, id, &file, &done)))
    }
    .await;
    super::answer::finish(pending, answered)
}

/// `POST /api/optimized/predict/batch`: every file predicted concurrently,
/// answered in order. A failure of the whole request (the form, the model)
/// is its one record; otherwise each file is.
#[utoipa::path(post, path = "/api/optimized/predict/batch", tag = "predict",
    params(super::schemas::RequestHeaders),
    request_body(content = super::schemas::BatchUploadForm, content_type = "multipart/form-data"),
    responses((status = 200, description = "One entry per file, in order", body = BatchAnswer), super::schemas::BatchErrors))]
async fn predict_batch(
    state: web::Data<AppState>,
    req: HttpRequest,
    payload: web::Payload,
    requested: Requested,
) -> HttpResponse {
    let mut whole = state.service.open(&requested);
    let max_files = state.service.max_batch_files();
    let form = async {
        let form = read_form(&state, &req, payload, max_files).await?;
        // What concerns the model rather than a file fails the whole request.
        let handle = state.service.model(&form.model)?;
        whole.attribute(handle.clone());
        let deadline = std::time::Instant::now() + state.service.default_timeout();
        state.service.signature_of(&handle, deadline).await?;
        Ok(form)
    }
    .await;
    let form = match form {
        Ok(form) => form,
        Err(e) => return super::answer::finish(whole, Err(e)),
    };
    // Each file is its own record from here on.
    drop(whole);
    let ids: Vec<Requested> = (0..form.files.len())
        .map(|i| Requested {
            id: format!("{}-{i}", requested.id),
            from_client: requested.from_client,
        })
        .collect();
    let mut records: Vec<Pending> = ids.iter().map(|id| state.service.open(id)).collect();
    let predictor = state.service.file_predictor();
    let outcomes = join_all(
        form.files
            .iter()
            .zip(records.iter_mut())
            .map(|(file, pending)| {
                predictor.predict(&form.model, pending, file.clone(), &form.options)
            }),
    )
    .await;
    let results = outcomes
        .iter()
        .zip(&form.files)
        .zip(&ids)
        .zip(records)
        .map(|(((outcome, file), id), pending)| {
            let prediction_id = pending.prediction_id().to_string();
            match outcome {
                Ok(done) => {
                    pending.finish_with(200, None);
                    BatchEntry::Done {
                        status: 200,
                        answer: file_answer(&id.id, prediction_id, file, done),
                    }
                }
                Err(e) => {
                    let status = e.status_code().as_u16();
                    let logged = pending.reached_model().then_some(prediction_id);
                    pending.finish_with(status, Some(e.to_string()));
                    BatchEntry::Failed {
                        status,
                        request_id: &id.id,
                        prediction_id: logged,
                        file: FileInfo {
                            name: file.name.as_deref(),
                            ..FileInfo::default()
                        },
                        error: e.to_string(),
                        code: e.code(),
                    }
                }
            }
        })
        .collect();
    HttpResponse::Ok().json(BatchAnswer {
        request_id: &requested.id,
        model: &form.model,
        results,
    })
}

/// The form, with the `x-request-timeout-ms`, `x-priority` and
/// `Cache-Control` headers applied where the form is silent.
async fn read_form(
    state: &AppState,
    req: &HttpRequest,
    payload: web::Payload,
    max_files: usize,
) -> Result<UploadForm, ApiError> {
    let header_timeout = header_timeout(req)?;
    let header_priority = header_priority(req)?;
    let mut form = read_upload_form(state, req, payload, max_files).await?;
    let options: &mut FileOptions = &mut form.options;
    options.timeout = options.timeout.or(header_timeout);
    options.priority = form.priority.or(header_priority);
    options.use_cache &= cache_allowed(req);
    Ok(form)
}

fn file_answer<'a>(
    request_id: &'a str,
    prediction_id: String,
    file: &'a UploadedFile,
    done: &'a FilePrediction,
) -> FileAnswer<'a> {
    let p = &done.prediction;
    let mut info = FileInfo {
        name: file.name.as_deref(),
        ..FileInfo::default()
    };
    match &done.source {
        SourceInfo::Image {
            file_type,
            width,
            height,
        } => {
            info.file_type = Some(file_type.name());
            info.width = Some(*width);
            info.height = Some(*height);
        }
        SourceInfo::Audio {
            file_type,
            sample_rate,
            channels,
            seconds,
        } => {
            info.file_type = Some(file_type.name());
            info.sample_rate = Some(*sample_rate);
            info.channels = Some(*channels);
            info.seconds = Some(round3(*seconds));
        }
        SourceInfo::Tensor { shape } => {
            info.file_type = Some("npy");
            info.shape = Some(shape);
        }
    }
    FileAnswer {
        request_id,
        prediction_id,
        model: p.model.name(),
        model_version: &p.model.spec.version,
        file: info,
        mask: match &done.result {
            FileResult::Mask(mask) => Some(mask),
            _ => None,
        },
        classes: match &done.result {
            FileResult::Classes(classes) => Some(classes),
            _ => None,
        },
        outputs: matches!(done.result, FileResult::Tensors).then(|| json_outputs(p.outputs.iter())),
        batch_size: p.batch_size,
        replica: p.replica,
        cache: p.cache.map(|level| level.as_str()),
        timings_ms: FileTimings {
            decode: round3(done.decode_ms),
            queue: round3(p.queue_ms),
            inference: round3(p.inference_ms),
            postprocess: round3(done.postprocess_ms),
            total: round3(done.total_ms),
        },
    }
}
