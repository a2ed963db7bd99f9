//! One inference over gRPC, as a unary `ModelInfer` call or one request of
//! a `ModelStreamInfer` stream: the request's tensors (carried or in shared
//! memory), its parameters and deadline, the prediction through the same
//! [`InferenceService`] as HTTP, the answer, the request's record finished
//! with the HTTP status its outcome maps to, and its access line.
//!
//! [`InferenceService`]: crate::service::InferenceService

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use std::sync::Arc;

use prost::Message;
use tonic::metadata::MetadataMap;
use tonic::{Request, Status};
use tracing::Instrument;
use tracing_opentelemetry::OpenTelemetrySpanExt;

use super::caller::{caller_of, model_path};
use super::parameters::json_parameters;
use super::proto::*;
use super::status::GrpcStatus;
use super::tensors;
use super::Arrived;
use crate::access_line;
use crate::error::ApiError;
use crate::request_id::{acceptable_id, Requested};
use crate::service::predict::{call_parameters, select_outputs};
use crate::service::shared_tensors::{self as shm, SharedRef};
use crate::service::{InferenceService, PredictCall};
use crate::triton::classification::{class_count, top_classes};
use gantry_actors::Tensor;

/// `grpc-timeout` (gRPC's deadline: digits and a unit of H, M, S, m, u or
/// n), which becomes the request's timeout as `timeout_ms` does over HTTP.
fn grpc_timeout(metadata: &MetadataMap) -> Result<Option<Duration>, ApiError> {
    let Some(value) = metadata.get("grpc-timeout") else {
        return Ok(None);
    };
    let text = value.to_str().unwrap_or_default();
    let bad = || ApiError::BadRequest(format!("grpc-timeout '{text}' is not a gRPC timeout"));
    let (digits, unit) = text.split_at(text.len().saturating_sub(1));
    let amount: u64 = digits.parse().map_err(|_| bad())?;
    let timeout = match unit {
        "H" => Duration::from_secs(amount.saturating_mul(3600)),
        "M" => Duration::from_secs(amount.saturating_mul(60)),
        "S" => Duration::from_secs(amount),
        "m" => Duration::from_millis(amount),
        "u" => Duration::from_micros(amount),
        "n" => Duration::from_nanos(amount),
        _ => return Err(bad()),
    };
    Ok(Some(timeout.max(Duration::from_millis(1))))
}

/// The deadline the service keeps for a call whose `grpc-timeout` is
/// `timeout`: a little earlier (a twentieth of it, at most 20 ms). tonic
/// itself ends a call CANCELLED ("Timeout expired") once its `grpc-timeout`
/// has passed since the call arrived, before the body was decoded; the
/// service's deadline must pass first, so the client gets the
/// DEADLINE_EXCEEDED that Triton answers, however loaded the machine.
fn ahead_of_transport(timeout: Duration) -> Duration {
    let margin = (timeout / 20).min(Duration::from_millis(20));
    timeout.saturating_sub(margin).max(Duration::from_millis(1))
}

/// Where an inference came from: its metadata and peer (what authorizes
/// its use of shared memory) and the RPC (for its access line).
#[derive(Clone)]
pub(super) struct Origin {
    metadata: MetadataMap,
    peer: Option<SocketAddr>,
    rpc: &'static str,
    /// When a unary call arrived (its `grpc-timeout` counts from then);
    /// `None` for a stream's requests, each timed from when it is read.
    arrived: Option<Instant>,
}

impl Origin {
    pub(super) fn of<T>(request: &Request<T>, rpc: &'static str) -> Origin {
        Origin {
            metadata: request.metadata().clone(),
            peer: request.remote_addr(),
            rpc,
            arrived: Some(
                request
                    .extensions()
                    .get::<Arrived>()
                    .map_or_else(Instant::now, |a| a.0),
            ),
        }
    }

    /// The origin of one request of a stream.
    fn in_stream(&self) -> Origin {
        Origin {
            arrived: None,
            ..self.clone()
        }
    }
}

/// The request's id: the client's `x-request-id` when acceptable, else a
/// new one (as over HTTP).
fn requested(metadata: &MetadataMap) -> Requested {
    let chosen = metadata
        .get("x-request-id")
        .and_then(|v| v.to_str().ok())
        .filter(|v| acceptable_id(v))
        .map(str::to_string);
    Requested {
        from_client: chosen.is_some(),
        id: chosen.unwrap_or_else(|| uuid::Uuid::new_v4().to_string()),
    }
}

/// One inference through the service, its record finished with the status
/// it maps to: the answer and, when it reached its model, the prediction's
/// id in the log. Owns what it uses, so a stream can run many at once.
pub(super) async fn infer(
    service: Arc<InferenceService>,
    origin: Origin,
    request: ModelInferRequest,
) -> Result<(ModelInferResponse, Option<uuid::Uuid>), Status> {
    let started = std::time::Instant::now();
    let bytes_in = request.encoded_len() as u64;
    let requested = requested(&origin.metadata);
    // The call's span (OpenTelemetry's RPC conventions), continuing the
    // client's trace from its `traceparent` metadata.
    let method = origin.rpc.rsplit('/').next().unwrap_or_default();
    let span = tracing::info_span!(
        "request",
        request_id = %requested.id,
        otel.kind = "server",
        otel.name = %origin.rpc.trim_start_matches('/'),
        rpc.system = "grpc",
        rpc.service = "inference.GRPCInferenceService",
        rpc.method = method,
        rpc.grpc.status_code = tracing::field::Empty,
    );
    if crate::telemetry::enabled() {
        let parent = crate::telemetry::parent_from(|key| {
            origin.metadata.get(key).and_then(|v| v.to_str().ok())
        });
        let _ = span.set_parent(parent);
    }
    // What is left of the client's deadline, kept a little ahead of tonic's.
    let deadline = grpc_timeout(&origin.metadata)
        .map_err(|e| e.grpc_status())?
        .map(ahead_of_transport)
        .map(|t| t.saturating_sub(origin.arrived.map_or(Duration::ZERO, |a| a.elapsed())));
    // Counted for shutdown like an HTTP request: a drain waits for it.
    let admitted = service.shutdown().admit();
    let mut pending = service.open(&requested);
    let answered = async {
        let model = service.model_at(&model_path(request.model_name, request.model_version))?;
        pending.attribute(model.clone());
        // `parameters.timeout` may shorten the client's deadline, never
        // lengthen it (the client stops waiting at `grpc-timeout`).
        let (asked, priority, sequence) =
            call_parameters(&json_parameters(request.parameters), None, None)?;
        let timeout = match (asked, deadline) {
            (Some(asked), Some(deadline)) => Some(asked.min(deadline)),
            (asked, deadline) => asked.or(deadline),
        };
        let inputs = tensors::inputs(request.inputs, request.raw_input_contents)?;
        let asked = request
            .outputs
            .into_iter()
            .map(|o| {
                let parameters = json_parameters(o.parameters);
                let at = shm::shared_ref(&parameters, "output", &o.name)?;
                let classes = class_count(&parameters, &o.name)?;
                if classes.is_some() && at.is_some() {
                    return Err(ApiError::BadRequest(format!(
                        "output '{}': classification cannot be written to shared memory",
                        o.name
                    )));
                }
                Ok((o.name, at, classes))
            })
            .collect::<Result<Vec<_>, ApiError>>()?;
        let mut call = PredictCall {
            request_id: requested.id.clone(),
            inputs: inputs.carried,
            timeout,
            use_cache: true,
            priority,
            sequence,
            pin: None,
        };
        let shared_outputs: Vec<(&str, &SharedRef)> = asked
            .iter()
            .filter_map(|(name, at, _)| at.as_ref().map(|at| (name.as_str(), at)))
            .collect();
        let caller = caller_of(&origin.metadata, origin.peer);
        let regions = service.resolve_shared(&caller, &mut call, inputs.shared, shared_outputs)?;
        let prediction = service.predict(model.name(), call, &mut pending).await?;
        regions.write(&prediction.outputs)?;
        let names: Vec<String> = asked.iter().map(|(name, ..)| name.clone()).collect();
        let only = (!names.is_empty()).then_some(names.as_slice());
        let selected = select_outputs(&prediction.outputs, only)?;
        // Outputs asked with `classification`: their top classes instead.
        let classified = asked
            .iter()
            .zip(&selected)
            .map(|((name, _, classes), (_, tensor))| {
                classes
                    .map(|k| {
                        let labels = prediction.model.spec.labels.as_deref();
                        top_classes(tensor, k, labels)
                            .map(|classes| (name.clone(), classes))
                            .map_err(|why| {
                                ApiError::InvalidTensor(format!("output '{name}': {why}"))
                            })
                    })
                    .transpose()
            })
            .collect::<Result<Vec<_>, ApiError>>()?;
        let selected: Vec<&(String, Tensor)> = selected
            .iter()
            .enumerate()
            .map(|(i, output)| classified.get(i).and_then(Option::as_ref).unwrap_or(output))
            .collect();
        let (outputs, raw) = tensors::outputs(&selected, |name| {
            asked
                .iter()
                .find(|(asked, ..)| asked == name)
                .and_then(|(_, at, _)| at.as_ref())
        });
        Ok::<_, ApiError>(ModelInferResponse {
            model_name: model.name().to_string(),
            model_version: model.spec.version.clone(),
            id: request.id,
            parameters: Default::default(),
            outputs,
            raw_output_contents: raw,
        })
    }
    .instrument(span.clone())
    .await;
    let logged = pending.reached_model().then(|| pending.prediction_id());
    let model = pending.model_name().map(str::to_string);
    let (status, bytes_out, answer) = match answered {
        Ok(body) => {
            pending.finish_with(200, None);
            (200, Some(body.encoded_len() as u64), Ok((body, logged)))
        }
        Err(e) => {
            let status = e.http_status();
            pending.finish_with(status, Some(e.to_string()));
            (status, None, Err(e.grpc_status()))
        }
    };
    let code = match &answer {
        Ok(_) => tonic::Code::Ok,
        Err(status) => status.code(),
    };
    span.record("rpc.grpc.status_code", code as i32);
    let _entered = span.enter();
    access_line::line(access_line::Line {
        protocol: "grpc",
        method: "POST",
        path: origin.rpc,
        status,
        model: model.as_deref(),
        duration_ms: started.elapsed().as_secs_f64() * 1000.0,
        bytes_in: Some(bytes_in),
        bytes_out,
        request_id: Some(&requested.id),
        trace_id: origin
            .metadata
            .get("traceparent")
            .and_then(|v| access_line::trace_id(v.to_str().ok()?)),
    });
    drop(admitted);
    answer
}

/// A stream's requests, run as they arrive (many at once, as separate
/// unary calls would be), answered in the order they finish; an error is
/// an answer with its message, and the stream goes on. A message the
/// server cannot read (over the size limit) ends the stream with that
/// error once the requests before it are answered. The stream ends
/// when the client closes its side and every answer is out, or once
/// shutdown begins (no new request is read; those running finish). A
/// client that goes away drops the requests still running, which leave
/// their queues.
pub(super) fn stream(
    service: Arc<InferenceService>,
    origin: Origin,
    mut incoming: tonic::Streaming<ModelInferRequest>,
) -> futures_util::stream::BoxStream<'static, Result<ModelStreamInferResponse, Status>> {
    use futures_util::stream::{FuturesUnordered, StreamExt};
    let (tx, rx) = tokio::sync::mpsc::channel(64);
    tokio::spawn(async move {
        let mut running = FuturesUnordered::new();
        let mut shutdown_check = tokio::time::interval(Duration::from_millis(100));
        let mut reading = true;
        // Why reading stopped, when the client's side failed (a message
        // over the size limit, say): the stream's last answer.
        let mut failure = None;
        while reading || !running.is_empty() {
            tokio::select! {
                next = incoming.message(), if reading => match next {
                    Ok(Some(request)) => {
                        let id = request.id.clone();
                        let model_name = request.model_name.clone();
                        let call = infer(service.clone(), origin.in_stream(), request);
                        running.push(async move {
                            match call.await {
                                Ok((answer, _)) => ModelStreamInferResponse {
                                    error_message: String::new(),
                                    infer_response: Some(answer),
                                },
                                Err(status) => ModelStreamInferResponse {
                                    error_message: status.message().to_string(),
                                    infer_response: Some(ModelInferResponse {
                                        model_name,
                                        id,
                                        ..Default::default()
                                    }),
                                },
                            }
                        });
                    }
                    Ok(None) => reading = false,
                    Err(status) => {
                        reading = false;
                        failure = Some(status);
                    }
                },
                Some(answer) = running.next(), if !running.is_empty() => {
                    if tx.send(Ok(answer)).await.is_err() {
                        return;
                    }
                }
                _ = shutdown_check.tick(), if reading => {
                    if service.is_shutting_down() {
                        reading = false;
                    }
                }
            }
        }
        if let Some(status) = failure {
            // As `too_large_is_resource_exhausted` does for unary calls.
            let status = match status.code() {
                tonic::Code::OutOfRange => Status::resource_exhausted(status.message()),
                _ => status,
            };
            let _ = tx.send(Err(status)).await;
        }
    });
    futures_util::stream::unfold(rx, |mut rx| async move {
        rx.recv().await.map(|item| (item, rx))
    })
    .boxed()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grpc_timeouts_read_every_unit_and_refuse_the_rest() {
        let with = |v: &str| {
            let mut m = MetadataMap::new();
            m.insert("grpc-timeout", v.parse().unwrap());
            grpc_timeout(&m)
        };
        assert_eq!(with("2S").unwrap(), Some(Duration::from_secs(2)));
        assert_eq!(with("1500m").unwrap(), Some(Duration::from_millis(1500)));
        assert_eq!(with("1H").unwrap(), Some(Duration::from_secs(3600)));
        assert_eq!(with("10n").unwrap(), Some(Duration::from_millis(1)));
        assert!(with("5x").is_err());
        assert!(with("S").is_err());
        assert_eq!(grpc_timeout(&MetadataMap::new()).unwrap(), None);
    }

    #[test]
    fn the_service_deadline_passes_before_the_transport_one() {
        let ms = Duration::from_millis;
        assert_eq!(ahead_of_transport(ms(100)), ms(95));
        assert_eq!(ahead_of_transport(Duration::from_secs(10)), ms(9980));
        assert_eq!(ahead_of_transport(ms(1)), ms(1));
    }
}
