//! The one error type of the service and its one table: [`ApiError::class`]
//! gives each error its stable code, its HTTP status and its gRPC code in
//! one row, so the two protocols cannot disagree. The edges turn a class
//! into an answer: HTTP in `crate::api::error_response` (`{"error": "...",
//! "code": "..."}`, `Retry-After` on 429), gRPC in `crate::grpc::status`
//! (the same message). This module knows no HTTP framework; the gRPC codes
//! are tonic's enum.

use gantry_actors::InferError;
use tonic::Code as Grpc;

use crate::media::MediaError;

/// Everything a request can fail with.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    /// The body is not what the endpoint takes (syntax, missing field).
    #[error("{0}")]
    BadRequest(String),
    /// No such route or resource.
    #[error("{0}")]
    NotFound(String),
    /// The route exists but not for this method.
    #[error("{0}")]
    MethodNotAllowed(String),
    /// The body exceeds `server.body_limit_mb`.
    #[error("request body exceeds the limit of {limit_mb} MiB")]
    PayloadTooLarge { limit_mb: u64 },
    /// An uploaded file of a type the endpoint cannot read.
    #[error("{0}")]
    UnsupportedMedia(String),
    /// The body parses but its tensors do not make sense (422).
    #[error("{0}")]
    InvalidTensor(String),
    /// The actor system's answer.
    #[error(transparent)]
    Infer(#[from] InferError),
    /// An uploaded image or audio file that cannot be used.
    #[error(transparent)]
    Media(#[from] crate::media::MediaError),
    /// An admin route without a valid bearer token.
    #[error("{0}")]
    Unauthorized(String),
    /// An admin route from a non-loopback client while no token is set.
    #[error("{0}")]
    Forbidden(String),
    /// The request body did not arrive within `server.body_timeout_ms`.
    #[error("{0}")]
    RequestTimeout(String),
    /// An error answer the HTTP server itself chose (an extractor or
    /// protocol check), with its status; shaped like every other error.
    #[error("{message}")]
    Http { status: u16, message: String },
    /// A dependency the request needs (the prediction log's database) is down.
    #[error("{0}")]
    Unavailable(String),
    /// A load of a model the repository does not hold, in Triton's words.
    #[error("{0}")]
    NotInRepository(String),
    /// A bug or a broken invariant; logged, answered 500.
    #[error("internal error: {0}")]
    Internal(String),
}

impl From<gantry_actors::lifecycle::LifecycleError> for ApiError {
    fn from(e: gantry_actors::lifecycle::LifecycleError) -> Self {
        use gantry_actors::lifecycle::LifecycleError;
        match e {
            LifecycleError::UnknownModel(m) => ApiError::Infer(InferError::UnknownModel(m)),
            LifecycleError::NotInRepository(why) => ApiError::NotInRepository(why),
            LifecycleError::Repository(why) => ApiError::BadRequest(why),
            LifecycleError::InvalidName(why) => ApiError::BadRequest(why),
            LifecycleError::InvalidOverride(why) => ApiError::BadRequest(why),
        }
    }
}

/// One row of the error table: what an error answers on each protocol.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ErrorClass {
    /// Stable machine-readable code of the JSON body, e.g. `queue_full`.
    pub code: &'static str,
    /// The HTTP status.
    pub http: u16,
    /// The gRPC status code.
    pub grpc: Grpc,
}

const fn row(code: &'static str, http: u16, grpc: Grpc) -> ErrorClass {
    ErrorClass { code, http, grpc }
}

impl ApiError {
    /// The error for an answer the HTTP server wrote with `status` and
    /// `message`: the variant of that status where there is one, else
    /// [`ApiError::Http`].
    pub fn from_status(status: u16, message: String) -> ApiError {
        match status {
            400 => ApiError::BadRequest(message),
            404 => ApiError::NotFound(message),
            405 => ApiError::MethodNotAllowed(message),
            408 => ApiError::RequestTimeout(message),
            415 => ApiError::UnsupportedMedia(message),
            500 => ApiError::Internal(message),
            status => ApiError::Http { status, message },
        }
    }

    /// The error table: every error's code, HTTP status and gRPC code.
    pub fn class(&self) -> ErrorClass {
        match self {
            ApiError::BadRequest(_) => row("bad_request", 400, Grpc::InvalidArgument),
            ApiError::NotFound(_) => row("not_found", 404, Grpc::NotFound),
            ApiError::NotInRepository(_) => row("model_not_found", 404, Grpc::NotFound),
            ApiError::MethodNotAllowed(_) => row("method_not_allowed", 405, Grpc::Unimplemented),
            ApiError::PayloadTooLarge { .. } => {
                row("payload_too_large", 413, Grpc::InvalidArgument)
            }
            ApiError::UnsupportedMedia(_) => {
                row("unsupported_media_type", 415, Grpc::InvalidArgument)
            }
            ApiError::InvalidTensor(_) => row("invalid_input", 422, Grpc::InvalidArgument),
            ApiError::Unavailable(_) => row("dependency_unavailable", 503, Grpc::Unavailable),
            ApiError::RequestTimeout(_) => row("request_timeout", 408, Grpc::DeadlineExceeded),
            ApiError::Unauthorized(_) => row("unauthorized", 401, Grpc::Unauthenticated),
            ApiError::Forbidden(_) => row("forbidden", 403, Grpc::PermissionDenied),
            ApiError::Internal(_) => row("internal", 500, Grpc::Internal),
            ApiError::Http { status, .. } => http_class(*status),
            ApiError::Media(e) => match e {
                MediaError::Unsupported(_) => {
                    row("unsupported_media_type", 415, Grpc::InvalidArgument)
                }
                MediaError::Undecodable(_) => row("invalid_file", 422, Grpc::InvalidArgument),
                MediaError::TooLarge(_) => row("file_too_large", 422, Grpc::InvalidArgument),
                MediaError::Busy(_) => row("media_busy", 429, Grpc::ResourceExhausted),
                MediaError::Internal(_) => row("internal", 500, Grpc::Internal),
            },
            ApiError::Infer(e) => match e {
                InferError::UnknownModel(_) => row("model_not_found", 404, Grpc::NotFound),
                InferError::ModelNotReady(_) | InferError::ModelUnavailable { .. } => {
                    row("model_not_ready", 503, Grpc::Unavailable)
                }
                InferError::InvalidInput(_) => row("invalid_input", 422, Grpc::InvalidArgument),
                InferError::QueueFull { .. } => row("queue_full", 429, Grpc::ResourceExhausted),
                InferError::WouldFinishLate { .. } => {
                    row("would_finish_late", 429, Grpc::ResourceExhausted)
                }
                InferError::DeadlineExceeded { .. } | InferError::LoadTimedOut { .. } => {
                    row("deadline_exceeded", 504, Grpc::DeadlineExceeded)
                }
                InferError::Inference(_) => row("inference_failed", 500, Grpc::Internal),
                InferError::ShuttingDown => row("shutting_down", 503, Grpc::Unavailable),
                InferError::Sequence(_) => row("sequence_error", 400, Grpc::InvalidArgument),
                InferError::TooManySequences { .. } => {
                    row("too_many_sequences", 429, Grpc::ResourceExhausted)
                }
            },
        }
    }

    /// Seconds a client refused with 429 should wait before retrying: the
    /// predicted excess of a request that would finish late, else 1.
    pub fn retry_after_s(&self) -> u64 {
        match self {
            ApiError::Infer(InferError::WouldFinishLate { retry_after_ms, .. }) => {
                retry_after_ms.div_ceil(1000).max(1)
            }
            _ => 1,
        }
    }

    /// Stable machine-readable code for the JSON body.
    pub fn code(&self) -> &'static str {
        self.class().code
    }

    /// The HTTP status this error answers.
    pub fn http_status(&self) -> u16 {
        self.class().http
    }
}

/// The row of an error the HTTP server chose itself, by its status.
fn http_class(status: u16) -> ErrorClass {
    let code = match status {
        413 => "payload_too_large",
        411 => "length_required",
        417 => "expectation_failed",
        431 => "headers_too_large",
        s if s >= 500 => "internal",
        _ => "bad_request",
    };
    let grpc = match status {
        400 | 413 | 415 | 422 => Grpc::InvalidArgument,
        401 => Grpc::Unauthenticated,
        403 => Grpc::PermissionDenied,
        404 => Grpc::NotFound,
        405 | 501 => Grpc::Unimplemented,
        408 | 504 => Grpc::DeadlineExceeded,
        429 => Grpc::ResourceExhausted,
        503 => Grpc::Unavailable,
        _ => Grpc::Internal,
    };
    row(code, status, grpc)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every error's gRPC code is the one its HTTP status stood for before
    /// the table (the two protocols agree on what kind of failure it is).
    #[test]
    fn grpc_codes_follow_the_http_statuses() {
        let errors = [
            ApiError::BadRequest(String::new()),
            ApiError::NotFound(String::new()),
            ApiError::MethodNotAllowed(String::new()),
            ApiError::PayloadTooLarge { limit_mb: 1 },
            ApiError::UnsupportedMedia(String::new()),
            ApiError::InvalidTensor(String::new()),
            ApiError::Unavailable(String::new()),
            ApiError::NotInRepository(String::new()),
            ApiError::RequestTimeout(String::new()),
            ApiError::Unauthorized(String::new()),
            ApiError::Forbidden(String::new()),
            ApiError::Internal(String::new()),
            ApiError::Media(MediaError::Unsupported(String::new())),
            ApiError::Media(MediaError::Undecodable(String::new())),
            ApiError::Media(MediaError::TooLarge(String::new())),
            ApiError::Media(MediaError::Busy(String::new())),
            ApiError::Media(MediaError::Internal(String::new())),
            ApiError::Infer(InferError::UnknownModel(String::new())),
            ApiError::Infer(InferError::ModelNotReady(String::new())),
            ApiError::Infer(InferError::ModelUnavailable {
                model: String::new(),
                reason: String::new(),
            }),
            ApiError::Infer(InferError::LoadTimedOut {
                model: String::new(),
                waited_ms: 1,
            }),
            ApiError::Infer(InferError::InvalidInput(String::new())),
            ApiError::Infer(InferError::QueueFull {
                model: String::new(),
                capacity: 1,
            }),
            ApiError::Infer(InferError::DeadlineExceeded { waited_ms: 1 }),
            ApiError::Infer(InferError::WouldFinishLate {
                model: String::new(),
                predicted_ms: 1,
                target_ms: 1,
                retry_after_ms: 1,
            }),
            ApiError::Infer(InferError::Inference(String::new())),
            ApiError::Infer(InferError::ShuttingDown),
            ApiError::Infer(InferError::Sequence(String::new())),
            ApiError::Infer(InferError::TooManySequences {
                model: String::new(),
                limit: 1,
            }),
            ApiError::from_status(411, String::new()),
            ApiError::from_status(413, String::new()),
            ApiError::from_status(417, String::new()),
            ApiError::from_status(431, String::new()),
            ApiError::from_status(503, String::new()),
        ];
        for e in errors {
            let class = e.class();
            assert_eq!(class.grpc, http_class(class.http).grpc, "{e:?}");
        }
    }
}
