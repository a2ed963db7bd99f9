//! The one error type of the API and its one mapping to HTTP: every error
//! answers `{"error": "...", "code": "..."}` with its status, and a full
//! queue adds `Retry-After`. gRPC answers the same error with the status
//! code that follows from the HTTP one ([`ApiError::grpc_status`]) and the
//! same message.

use actix_web::http::{header, StatusCode};
use actix_web::{HttpResponse, ResponseError};
use gantry_actors::InferError;
use serde::Serialize;

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
    /// An error answer actix itself chose (an extractor or protocol check),
    /// with its status; shaped like every other error.
    #[error("{message}")]
    Http { status: StatusCode, message: String },
    /// A dependency the request needs (the prediction log's database) is down.
    #[error("{0}")]
    Unavailable(String),
    /// A bug or a broken invariant; logged, answered 500.
    #[error("internal error: {0}")]
    Internal(String),
}

/// The body of every error answer.
#[derive(Serialize, utoipa::ToSchema)]
pub struct ErrorBody<'a> {
    /// What went wrong, for people.
    error: String,
    /// Stable machine-readable code, e.g. `model_not_found`, `queue_full`.
    #[schema(example = "bad_request")]
    code: &'a str,
}

impl From<gantry_actors::lifecycle::LifecycleError> for ApiError {
    fn from(e: gantry_actors::lifecycle::LifecycleError) -> Self {
        use gantry_actors::lifecycle::LifecycleError;
        match e {
            LifecycleError::UnknownModel(m) => ApiError::Infer(InferError::UnknownModel(m)),
            LifecycleError::Repository(why) => ApiError::BadRequest(why),
            LifecycleError::InvalidName(why) => ApiError::BadRequest(why),
            LifecycleError::InvalidOverride(why) => ApiError::BadRequest(why),
        }
    }
}

impl ApiError {
    /// The error for an answer actix wrote with `status` and `message`: the
    /// variant of that status where there is one, else [`ApiError::Http`].
    pub fn from_status(status: StatusCode, message: String) -> ApiError {
        match status {
            StatusCode::BAD_REQUEST => ApiError::BadRequest(message),
            StatusCode::NOT_FOUND => ApiError::NotFound(message),
            StatusCode::METHOD_NOT_ALLOWED => ApiError::MethodNotAllowed(message),
            StatusCode::REQUEST_TIMEOUT => ApiError::RequestTimeout(message),
            StatusCode::UNSUPPORTED_MEDIA_TYPE => ApiError::UnsupportedMedia(message),
            StatusCode::INTERNAL_SERVER_ERROR => ApiError::Internal(message),
            status => ApiError::Http { status, message },
        }
    }

    /// Stable machine-readable code for the JSON body.
    pub fn code(&self) -> &'static str {
        match self {
            ApiError::BadRequest(_) => "bad_request",
            ApiError::NotFound(_) => "not_found",
            ApiError::MethodNotAllowed(_) => "method_not_allowed",
            ApiError::PayloadTooLarge { .. } => "payload_too_large",
            ApiError::UnsupportedMedia(_) => "unsupported_media_type",
            ApiError::InvalidTensor(_) => "invalid_input",
            ApiError::Unavailable(_) => "dependency_unavailable",
            ApiError::RequestTimeout(_) => "request_timeout",
            ApiError::Http { status, .. } => match *status {
                StatusCode::PAYLOAD_TOO_LARGE => "payload_too_large",
                StatusCode::LENGTH_REQUIRED => "length_required",
                StatusCode::EXPECTATION_FAILED => "expectation_failed",
                StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE => "headers_too_large",
                s if s.is_server_error() => "internal",
                _ => "bad_request",
            },
            ApiError::Media(e) => match e {
                MediaError::Unsupported(_) => "unsupported_media_type",
                MediaError::Undecodable(_) => "invalid_file",
                MediaError::TooLarge(_) => "file_too_large",
                MediaError::Busy(_) => "media_busy",
                MediaError::Internal(_) => "internal",
            },
            ApiError::Unauthorized(_) => "unauthorized",
            ApiError::Forbidden(_) => "forbidden",
            ApiError::Internal(_) => "internal",
            ApiError::Infer(e) => match e {
                InferError::UnknownModel(_) => "model_not_found",
                InferError::ModelNotReady(_) => "model_not_ready",
                InferError::InvalidInput(_) => "invalid_input",
                InferError::QueueFull { .. } => "queue_full",
                InferError::DeadlineExceeded { .. } => "deadline_exceeded",
                InferError::Inference(_) => "inference_failed",
                InferError::ShuttingDown => "shutting_down",
                InferError::Sequence(_) => "sequence_error",
                InferError::TooManySequences { .. } => "too_many_sequences",
            },
        }
    }
}

impl ResponseError for ApiError {
    fn status_code(&self) -> StatusCode {
        match self {
            ApiError::BadRequest(_) => StatusCode::BAD_REQUEST,
            ApiError::NotFound(_) => StatusCode::NOT_FOUND,
            ApiError::MethodNotAllowed(_) => StatusCode::METHOD_NOT_ALLOWED,
            ApiError::PayloadTooLarge { .. } => StatusCode::PAYLOAD_TOO_LARGE,
            ApiError::UnsupportedMedia(_) => StatusCode::UNSUPPORTED_MEDIA_TYPE,
            ApiError::InvalidTensor(_) => StatusCode::UNPROCESSABLE_ENTITY,
            ApiError::Unavailable(_) => StatusCode::SERVICE_UNAVAILABLE,
            ApiError::RequestTimeout(_) => StatusCode::REQUEST_TIMEOUT,
            ApiError::Http { status, .. } => *status,
            ApiError::Media(e) => match e {
                MediaError::Unsupported(_) => StatusCode::UNSUPPORTED_MEDIA_TYPE,
                MediaError::Undecodable(_) | MediaError::TooLarge(_) => {
                    StatusCode::UNPROCESSABLE_ENTITY
                }
                MediaError::Busy(_) => StatusCode::TOO_MANY_REQUESTS,
                MediaError::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
            },
            ApiError::Unauthorized(_) => StatusCode::UNAUTHORIZED,
            ApiError::Forbidden(_) => StatusCode::FORBIDDEN,
            ApiError::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
            ApiError::Infer(e) => match e {
                InferError::UnknownModel(_) => StatusCode::NOT_FOUND,
                InferError::ModelNotReady(_) => StatusCode::SERVICE_UNAVAILABLE,
                InferError::InvalidInput(_) => StatusCode::UNPROCESSABLE_ENTITY,
                InferError::QueueFull { .. } => StatusCode::TOO_MANY_REQUESTS,
                InferError::DeadlineExceeded { .. } => StatusCode::GATEWAY_TIMEOUT,
                InferError::Inference(_) => StatusCode::INTERNAL_SERVER_ERROR,
                InferError::ShuttingDown => StatusCode::SERVICE_UNAVAILABLE,
                InferError::Sequence(_) => StatusCode::BAD_REQUEST,
                InferError::TooManySequences { .. } => StatusCode::TOO_MANY_REQUESTS,
            },
        }
    }

    fn error_response(&self) -> HttpResponse {
        let status = self.status_code();
        if status.is_server_error() {
            tracing::warn!(status = status.as_u16(), error = %self, "request failed");
        }
        let mut response = HttpResponse::build(status);
        if status == StatusCode::TOO_MANY_REQUESTS {
            response.insert_header((header::RETRY_AFTER, "1"));
        }
        if status == StatusCode::UNAUTHORIZED {
            response.insert_header((header::WWW_AUTHENTICATE, "Bearer"));
        }
        response.json(ErrorBody {
            error: self.to_string(),
            code: self.code(),
        })
    }
}

impl ApiError {
    /// The gRPC status for this error: its code follows from the HTTP
    /// status (so the two protocols cannot disagree), its message is the
    /// same text.
    pub fn grpc_status(&self) -> tonic::Status {
        use tonic::Code;
        let status = self.status_code();
        if status.is_server_error() {
            tracing::warn!(status = status.as_u16(), error = %self, "gRPC request failed");
        }
        let code = match status.as_u16() {
            400 | 413 | 415 | 422 => Code::InvalidArgument,
            401 => Code::Unauthenticated,
            403 => Code::PermissionDenied,
            404 => Code::NotFound,
            405 | 501 => Code::Unimplemented,
            408 | 504 => Code::DeadlineExceeded,
            429 => Code::ResourceExhausted,
            503 => Code::Unavailable,
            _ => Code::Internal,
        };
        tonic::Status::new(code, self.to_string())
    }
}
