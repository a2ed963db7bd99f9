//! `GET /metrics`: the Prometheus page (OpenMetrics text format).

use actix_web::{web, HttpResponse};

use super::{resource, server_snapshot, AppState};
use crate::error::ApiError;
use crate::metrics::prometheus::ScrapeInputs;

pub fn config_metrics_api(cfg: &mut web::ServiceConfig) {
    cfg.service(resource("/metrics").route(web::get().to(metrics)));
}

const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

#[utoipa::path(get, path = "/metrics", tag = "operations",
    responses((status = 200, description = "Prometheus metrics", body = String, content_type = "application/openmetrics-text"), super::openapi::ServerErrors))]
async fn metrics(state: web::Data<AppState>) -> Result<HttpResponse, ApiError> {
    let service = &state.service;
    let snapshot = server_snapshot(&state).await?;
    let cache = service.cache.as_ref().map(|c| c.stats());
    let store = service.log.as_ref().map(|l| l.stats());
    let page = service
        .metrics
        .series
        .render(&ScrapeInputs {
            snapshot: &snapshot,
            cache: cache.as_ref(),
            store: store.as_ref(),
            pool_gate: gantry_actors::engine::pool_gate::POOL_GATE.stats(),
        })
        .map_err(|e| ApiError::Internal(format!("cannot encode metrics: {e}")))?;
    Ok(HttpResponse::Ok().content_type(CONTENT_TYPE).body(page))
}
