//! Draining on shutdown. SIGTERM/SIGINT first sets the service's
//! `draining` flag: readiness answers 503 while predictions are still
//! served for `server.drain_delay_s`, so load balancers stop routing here.
//! Once the `shutting_down` flag follows, every new request (on a new connection or on an
//! open keep-alive one) is answered at once with a JSON 503
//! `shutting_down` and `Connection: close`; health and readiness probes
//! still run (and answer 503 themselves). Requests admitted before the flag
//! are counted here, so the signal handler can wait for them before it
//! stops the server.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use actix_web::body::{BoxBody, MessageBody};
use actix_web::dev::{ServiceRequest, ServiceResponse};
use actix_web::http::ConnectionType;
use actix_web::middleware::Next;
use actix_web::{web, ResponseError};
use gantry_actors::InferError;

use super::AppState;
use crate::error::ApiError;

/// Probes that keep running while the server drains.
const PROBES: [&str; 3] = [
    "/api/optimized/health",
    "/v2/health/live",
    "/v2/health/ready",
];

/// Counts the requests admitted before shutdown began.
#[derive(Debug)]
pub struct Drain {
    in_flight: AtomicUsize,
    /// How long requests are still served after the signal while readiness
    /// is 503 (`server.drain_delay_s`).
    pub delay: Duration,
    /// How long shutdown waits for them (`server.shutdown_timeout_s`).
    timeout: Duration,
}

/// One admitted request; uncounted when dropped (answered or abandoned).
pub(crate) struct Admitted<'a>(&'a Drain);

impl Drop for Admitted<'_> {
    fn drop(&mut self) {
        self.0.in_flight.fetch_sub(1, Ordering::AcqRel);
    }
}

impl Drain {
    pub fn new(delay: Duration, timeout: Duration) -> Drain {
        Drain {
            in_flight: AtomicUsize::new(0),
            delay,
            timeout,
        }
    }

    pub(crate) fn admit(&self) -> Admitted<'_> {
        self.in_flight.fetch_add(1, Ordering::AcqRel);
        Admitted(self)
    }

    /// Requests admitted and not yet answered.
    pub fn in_flight(&self) -> usize {
        self.in_flight.load(Ordering::Acquire)
    }

    /// Waits until no admitted request is left, at most the shutdown
    /// timeout; true when none is left.
    pub async fn settled(&self) -> bool {
        let deadline = Instant::now() + self.timeout;
        while self.in_flight() > 0 {
            if Instant::now() >= deadline {
                return false;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        true
    }
}

/// Middleware: admits and counts requests, or answers 503 while draining.
pub async fn guard(
    req: ServiceRequest,
    next: Next<impl MessageBody + 'static>,
) -> Result<ServiceResponse<BoxBody>, actix_web::Error> {
    let Some(state) = req.app_data::<web::Data<AppState>>().cloned() else {
        return Ok(next.call(req).await?.map_into_boxed_body());
    };
    let draining = || state.service.is_shutting_down();
    // Counted before the flag is read: the signal handler sets the flag,
    // then waits for the count, so no admitted request is missed.
    let admitted = state.drain.admit();
    let mut response = if !draining() {
        let response = next.call(req).await?.map_into_boxed_body();
        drop(admitted);
        response
    } else {
        drop(admitted);
        if PROBES.contains(&req.path()) {
            next.call(req).await?.map_into_boxed_body()
        } else {
            let (req, _) = req.into_parts();
            let answer = ApiError::Infer(InferError::ShuttingDown).error_response();
            ServiceResponse::new(req, answer)
        }
    };
    if draining() {
        // The connection closes after this answer instead of idling until
        // the server stops.
        response
            .response_mut()
            .head_mut()
            .set_connection_type(ConnectionType::Close);
    }
    Ok(response)
}
