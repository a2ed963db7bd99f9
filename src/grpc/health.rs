//! The standard `grpc.health.v1` service, answered from the service's
//! readiness at the moment it is asked: SERVING for the server (`""`) and
//! for `inference.GRPCInferenceService` while every model has a ready
//! replica and no shutdown has begun, as `/v2/health/ready` answers;
//! NOT_SERVING otherwise; NOT_FOUND for any other name. `Check` reads
//! readiness when it is called (so a probe right after a model load sees
//! the load), and `Watch` sends the status at once and again each time the
//! actor system or shutdown reports a change (no polling).

use std::pin::Pin;
use std::sync::Arc;

use futures_util::Stream;
use tonic::{Request, Response, Status};
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_server::Health;
use tonic_health::pb::{HealthCheckRequest, HealthCheckResponse};

use crate::service::InferenceService;

/// The service name clients and probes ask the health service about.
pub const SERVICE_NAME: &str = "inference.GRPCInferenceService";

/// The health service over the inference service's readiness.
pub struct Readiness {
    pub service: Arc<InferenceService>,
}

fn status_of(service: &InferenceService) -> ServingStatus {
    if service.is_ready() {
        ServingStatus::Serving
    } else {
        ServingStatus::NotServing
    }
}

fn known(name: &str) -> Result<(), Status> {
    match name {
        "" | SERVICE_NAME => Ok(()),
        _ => Err(Status::not_found("service not registered")),
    }
}

fn answer(status: ServingStatus) -> HealthCheckResponse {
    HealthCheckResponse {
        status: status as i32,
    }
}

#[tonic::async_trait]
impl Health for Readiness {
    async fn check(
        &self,
        request: Request<HealthCheckRequest>,
    ) -> Result<Response<HealthCheckResponse>, Status> {
        known(&request.get_ref().service)?;
        Ok(Response::new(answer(status_of(&self.service))))
    }

    type WatchStream = Pin<Box<dyn Stream<Item = Result<HealthCheckResponse, Status>> + Send>>;

    async fn watch(
        &self,
        request: Request<HealthCheckRequest>,
    ) -> Result<Response<Self::WatchStream>, Status> {
        known(&request.get_ref().service)?;
        let service = self.service.clone();
        let changes = service.readiness_changes();
        let updates = futures_util::stream::unfold(
            (service, changes, None::<ServingStatus>),
            |(service, mut changes, last)| async move {
                loop {
                    // Marked seen before readiness is read: a change after
                    // this read wakes the next wait.
                    changes.borrow_and_update();
                    let status = status_of(&service);
                    if last != Some(status) {
                        return Some((Ok(answer(status)), (service, changes, Some(status))));
                    }
                    // Once new requests are refused the answer is final:
                    // the stream ends, so a graceful stop does not wait on it.
                    if service.is_shutting_down() {
                        return None;
                    }
                    changes.changed().await.ok()?;
                }
            },
        );
        Ok(Response::new(Box::pin(updates)))
    }
}
