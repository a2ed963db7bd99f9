//! Who a gRPC call comes from, as the service's admin check reads it (the
//! bearer token in `authorization` metadata, the peer, forwarding
//! metadata), and the model a request names.

use std::net::SocketAddr;

use tonic::metadata::MetadataMap;
use tonic::{Request, Status};

use super::status::GrpcStatus;
use crate::service::admin::{Caller, FORWARDING_HEADERS};
use crate::service::models::ModelPath;
use crate::service::InferenceService;

/// The model a request names, with its version unless empty.
pub(super) fn model_path(name: String, version: String) -> ModelPath {
    ModelPath {
        model: name,
        version: Some(version).filter(|v| !v.is_empty()),
    }
}

/// A call from `peer` with `metadata` as an admin caller.
pub(super) fn caller_of(metadata: &MetadataMap, peer: Option<SocketAddr>) -> Caller<'_> {
    Caller {
        authorization: metadata.get("authorization").and_then(|v| v.to_str().ok()),
        peer,
        forwarded: FORWARDING_HEADERS
            .iter()
            .copied()
            .find(|key| metadata.contains_key(*key)),
    }
}

/// Lets an admin RPC through as HTTP's admin routes do: the bearer token in
/// `authorization` metadata, or with no token set, a loopback peer and no
/// forwarding metadata.
pub(super) fn authorize<T>(service: &InferenceService, request: &Request<T>) -> Result<(), Status> {
    service
        .authorize(&caller_of(request.metadata(), request.remote_addr()))
        .map_err(|e| e.grpc_status())
}
