//! `GET /dashboard`: a live page of the server, served by Gantry itself.
//! The page, its script and its style sheet are embedded in the binary
//! (`src/api/dashboard/`): no build step, nothing fetched from elsewhere.
//! The script reads `/api/optimized/stats` every second and shows, per
//! model, the request rate, p50/p99 latency, queue depth, 429 and 504
//! counts, the batch fill histogram and the replicas with their states
//! and devices; the memory budget of every device; and the cache's hit
//! rate. It is a page for people, not part of the API, so the OpenAPI
//! description leaves it out.
//!
//! The answers carry a Content-Security-Policy that allows only this
//! origin's script, style and requests (the page has no inline script).

use actix_web::http::header;
use actix_web::{web, HttpResponse};

const PAGE: &str = include_str!("dashboard/index.html");
const SCRIPT: &str = include_str!("dashboard/dashboard.js");
const STYLE: &str = include_str!("dashboard/dashboard.css");
const ICON: &str = include_str!("dashboard/favicon.svg");

const POLICY: &str = "default-src 'none'; script-src 'self'; style-src 'self'; \
                      connect-src 'self'; img-src 'self'; base-uri 'none'; \
                      form-action 'none'; frame-ancestors 'none'";

pub fn config_dashboard_api(cfg: &mut web::ServiceConfig) {
    cfg.service(page_route("/dashboard", page))
        .service(page_route("/dashboard/", page))
        .service(page_route("/dashboard/dashboard.js", script))
        .service(page_route("/dashboard/dashboard.css", style))
        .service(page_route("/dashboard/favicon.svg", icon));
}

/// A `GET` route of the page (a JSON 405 for other methods), kept out of
/// [`super::registered_routes`]: the API's routes, which the OpenAPI
/// description must match.
fn page_route<F>(path: &str, handler: F) -> actix_web::Resource
where
    F: actix_web::Handler<()>,
    F::Output: actix_web::Responder + 'static,
{
    web::resource(path)
        .default_service(web::to(super::method_not_allowed))
        .route(web::get().to(handler))
}

fn asset(content_type: &str, body: &'static str) -> HttpResponse {
    HttpResponse::Ok()
        .content_type(content_type)
        .insert_header((header::CONTENT_SECURITY_POLICY, POLICY))
        .insert_header((header::X_CONTENT_TYPE_OPTIONS, "nosniff"))
        .insert_header((header::CACHE_CONTROL, "no-cache"))
        .body(body)
}

async fn page() -> HttpResponse {
    asset("text/html; charset=utf-8", PAGE)
}

async fn script() -> HttpResponse {
    asset("text/javascript; charset=utf-8", SCRIPT)
}

async fn style() -> HttpResponse {
    asset("text/css; charset=utf-8", STYLE)
}

async fn icon() -> HttpResponse {
    asset("image/svg+xml", ICON)
}
