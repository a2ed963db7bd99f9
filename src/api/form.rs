//! Multipart forms of the upload endpoints: `model`, one or more `file`
//! parts, and optional `threshold`, `top_k`, `priority`, `timeout_ms` and
//! `cache`. The whole form counts against the body limit and must arrive
//! within `server.body_timeout_ms`; a body that ends before its closing
//! boundary is a 400 at once.

use std::cell::Cell;
use std::pin::Pin;
use std::rc::Rc;
use std::task::Poll;
use std::time::Duration;

use actix_web::error::PayloadError;

use actix_multipart::Multipart;
use actix_web::{web, HttpRequest};
use bytes::BytesMut;
use futures_util::{Stream, StreamExt};

use super::AppState;
use crate::error::ApiError;
use crate::service::uploads::{FileOptions, UploadedFile};

/// A parsed upload form.
#[derive(Debug)]
pub struct UploadForm {
    pub model: String,
    pub files: Vec<UploadedFile>,
    pub options: FileOptions,
    /// The priority the form named, if it named one.
    pub priority: Option<gantry_actors::Priority>,
}

const FIELDS: &str = "model, file, threshold, top_k, priority, timeout_ms, cache";

/// Parts a form may hold besides its files (one per field name).
const MAX_OTHER_PARTS: usize = 16;

/// Reads and checks the whole form, holding at most `max_files` files. The
/// raw body (boundaries and part headers too) counts against the body
/// limit, and a form over either limit is refused as soon as it shows. A
/// form still arriving at `server.body_timeout_ms` is a 408.
pub async fn read_upload_form(
    state: &AppState,
    req: &HttpRequest,
    payload: web::Payload,
    max_files: usize,
) -> Result<UploadForm, ApiError> {
    super::within_body_timeout(state, read_form(state, req, payload, max_files)).await
}

async fn read_form(
    state: &AppState,
    req: &HttpRequest,
    payload: web::Payload,
    max_files: usize,
) -> Result<UploadForm, ApiError> {
    let too_large = || ApiError::PayloadTooLarge {
        limit_mb: state.limit_mb(),
    };
    if super::declared_length(req).is_some_and(|n| n > state.body_limit) {
        return Err(too_large());
    }
    let limit = state.body_limit;
    let overflowed = Rc::new(Cell::new(false));
    let seen = Rc::new(Cell::new(0usize));
    let ended = Rc::new(Cell::new(false));
    let (flag, counter) = (overflowed.clone(), seen.clone());
    let counted = Ending {
        inner: payload,
        ended: ended.clone(),
    }
    .map(move |chunk| {
        let chunk = chunk?;
        counter.set(counter.get() + chunk.len());
        if counter.get() > limit {
            flag.set(true);
            return Err(PayloadError::Overflow);
        }
        Ok(chunk)
    });
    let mut form = Multipart::new(req.headers(), counted);
    let mut model = None;
    let mut files = Vec::new();
    let mut options = FileOptions {
        use_cache: true,
        ..FileOptions::default()
    };
    let mut priority = None;
    let mut other_parts = 0usize;
    let invalid = |e: actix_multipart::MultipartError| match overflowed.get() {
        true => too_large(),
        false => ApiError::BadRequest(format!("invalid multipart body: {e}")),
    };
    while let Some(field) = next_or_truncated(&mut form, &ended).await? {
        let mut field = field.map_err(invalid)?;
        let name = field.name().unwrap_or_default().to_string();
        let filename = field
            .content_disposition()
            .and_then(|d| d.get_filename())
            .map(str::to_string);
        let mut bytes = BytesMut::new();
        while let Some(chunk) = next_or_truncated(&mut field, &ended).await? {
            bytes.extend_from_slice(&chunk.map_err(invalid)?);
        }
        let bytes = bytes.freeze();
        if name == "file" {
            if files.len() == max_files {
                return Err(ApiError::BadRequest(match max_files {
                    1 => "the form holds more than one file; /api/optimized/predict takes one, \
                          send several to /api/optimized/predict/batch"
                        .to_string(),
                    n => format!("the form holds more than {n} files (media.max_batch_files)"),
                }));
            }
        } else {
            other_parts += 1;
            if other_parts > MAX_OTHER_PARTS {
                return Err(ApiError::BadRequest(format!(
                    "the form holds more than {MAX_OTHER_PARTS} fields besides its files"
                )));
            }
        }
        match name.as_str() {
            "file" => files.push(UploadedFile {
                name: filename,
                bytes,
            }),
            "model" => model = Some(text(&name, &bytes)?),
            "threshold" => {
                options.threshold =
                    Some(parsed(&name, &bytes, "a number", |t: &f32| t.is_finite())?)
            }
            "top_k" => {
                options.top_k = Some(parsed(
                    &name,
                    &bytes,
                    "a positive integer",
                    |&k: &usize| k > 0,
                )?)
            }
            "timeout_ms" => {
                let ms = parsed(&name, &bytes, "a positive integer", |&ms: &u64| ms > 0)?;
                options.timeout = Some(Duration::from_millis(ms));
            }
            "priority" => {
                let level = text(&name, &bytes)?
                    .trim()
                    .parse()
                    .map_err(|e| ApiError::BadRequest(format!("priority: {e}")))?;
                priority = Some(level);
            }
            "cache" => {
                options.use_cache = match text(&name, &bytes)?.trim() {
                    "true" | "1" => true,
                    "false" | "0" => false,
                    _ => return Err(ApiError::BadRequest("cache must be true or false".into())),
                }
            }
            other => {
                return Err(ApiError::BadRequest(format!(
                    "unknown form field '{other}'; expected {FIELDS}"
                )))
            }
        }
    }
    let model =
        model.ok_or_else(|| ApiError::BadRequest("form field 'model' is missing".into()))?;
    if files.is_empty() {
        return Err(ApiError::BadRequest("form field 'file' is missing".into()));
    }
    Ok(UploadForm {
        model,
        files,
        options,
        priority,
    })
}

/// The body's stream, noting when it has ended.
struct Ending<S> {
    inner: S,
    ended: Rc<Cell<bool>>,
}

impl<S: Stream + Unpin> Stream for Ending<S> {
    type Item = S::Item;

    fn poll_next(
        mut self: Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> Poll<Option<S::Item>> {
        let next = self.inner.poll_next_unpin(cx);
        if let Poll::Ready(None) = next {
            self.ended.set(true);
        }
        next
    }
}

/// The next item of the form or of a part, or a 400 when the parser waits
/// for more although the body has ended: actix-multipart then waits for
/// bytes that never come (a body cut before its closing boundary), and the
/// request would hang holding what it received.
async fn next_or_truncated<S: Stream + Unpin>(
    stream: &mut S,
    ended: &Cell<bool>,
) -> Result<Option<S::Item>, ApiError> {
    std::future::poll_fn(|cx| match stream.poll_next_unpin(cx) {
        Poll::Pending if ended.get() => Poll::Ready(Err(ApiError::BadRequest(
            "invalid multipart body: the body ended before the form's closing boundary".into(),
        ))),
        next => next.map(Ok),
    })
    .await
}

/// A text field parsed as a `T` that `valid` accepts; else a 400 saying the
/// field must be `what`.
fn parsed<T: std::str::FromStr>(
    name: &str,
    bytes: &[u8],
    what: &str,
    valid: impl Fn(&T) -> bool,
) -> Result<T, ApiError> {
    text(name, bytes)?
        .trim()
        .parse::<T>()
        .ok()
        .filter(valid)
        .ok_or_else(|| ApiError::BadRequest(format!("{name} must be {what}")))
}

fn text(name: &str, bytes: &[u8]) -> Result<String, ApiError> {
    String::from_utf8(bytes.to_vec())
        .map_err(|_| ApiError::BadRequest(format!("form field '{name}' is not UTF-8 text")))
}
