//! `GET /metrics`: the Prometheus page (OpenMetrics text format).

use actix_web::http::Method;
use actix_web::{web, HttpResponse};

use super::{route, AppState};
use crate::error::ApiError;
use crate::metrics::prometheus::ScrapeInputs;

pub fn config_metrics_api(cfg: &mut web::ServiceConfig) {
    cfg.service(route(Method::GET, "/metrics", metrics));
}

const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

#[utoipa::path(get, path = "/metrics", tag = "operations",
    responses((status = 200, description = "Prometheus metrics", body = String, content_type = "application/openmetrics-text"), super::schemas::ServerErrors))]
async fn metrics(state: web::Data<AppState>) -> Result<HttpResponse, ApiError> {
    let service = &state.service;
    let snapshot = state.service.snapshot().await?;
    let cache = service.cache_stats();
    let store = service.store_stats();
    let page = service
        .metrics()
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
