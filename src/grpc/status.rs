//! An [`ApiError`] as a gRPC status: its code from the error table
//! ([`ApiError::class`]), its message the same text HTTP answers.

use crate::error::ApiError;

/// The gRPC answer of an error.
pub trait GrpcStatus {
    fn grpc_status(&self) -> tonic::Status;
}

impl GrpcStatus for ApiError {
    fn grpc_status(&self) -> tonic::Status {
        let class = self.class();
        if class.http >= 500 {
            tracing::warn!(status = class.http, error = %self, "gRPC request failed");
        }
        tonic::Status::new(class.grpc, self.to_string())
    }
}
