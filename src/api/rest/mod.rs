//! REST API (`/api/v1`), for admins and apps.
//!
//! Every route under `/api/v1` sits behind [`auth::require_bearer`]; only `/healthz` and
//! `/readyz` are open. Errors are `{"error": {"code", "message"}}` with the status derived
//! from [`crate::error::ErrorKind`].

mod auth;
mod body;
mod dml;
mod encode;
mod error;
mod health;

pub(crate) use health::metrics_router;
mod openapi;
mod policies;
mod query;
mod tables;

use std::sync::Arc;
use std::time::Instant;

use axum::Router;
use axum::extract::DefaultBodyLimit;
use axum::routing::{get, post};
use http::HeaderName;
use tower_http::request_id::{MakeRequestUuid, PropagateRequestIdLayer, SetRequestIdLayer};
use tower_http::trace::TraceLayer;

use crate::engine::Engine;
use crate::security::Authenticator;

/// Shared state of REST handlers.
#[derive(Debug, Clone)]
pub(crate) struct AppState {
    pub engine: Arc<Engine>,
    pub auth: Arc<Authenticator>,
    pub started: Instant,
    /// Grants from the configuration file (shown read-only next to run-time grants).
    pub config_grants: Vec<crate::config::GrantConfig>,
}

const REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");

/// Every route of the API, as (method, path) — the OpenAPI test checks each is documented.
#[cfg(test)]
pub(crate) const ROUTES: &[(&str, &str)] = &[
    ("post", "/api/v1/query"),
    ("get", "/api/v1/tables"),
    ("post", "/api/v1/tables"),
    ("get", "/api/v1/tables/{layer}/{name}"),
    ("patch", "/api/v1/tables/{layer}/{name}"),
    ("delete", "/api/v1/tables/{layer}/{name}"),
    ("post", "/api/v1/tables/{layer}/{name}/rows"),
    ("get", "/api/v1/tables/{layer}/{name}/history"),
    ("post", "/api/v1/tables/{layer}/{name}/merge"),
    ("post", "/api/v1/tables/{layer}/{name}/scd2"),
    ("post", "/api/v1/tables/{layer}/{name}/optimize"),
    ("post", "/api/v1/tables/{layer}/{name}/vacuum"),
    ("post", "/api/v1/tables/{layer}/{name}/restore"),
    ("get", "/api/v1/tables/{layer}/{name}/policies"),
    ("put", "/api/v1/tables/{layer}/{name}/policies"),
    ("get", "/api/v1/grants"),
    ("put", "/api/v1/grants"),
    ("get", "/api/v1/openapi.json"),
    ("get", "/metrics"),
    ("get", "/healthz"),
    ("get", "/readyz"),
];

/// Counts every routed request by its route template and status, with its latency (to the
/// response head; bodies stream after it).
async fn observe(
    request: axum::extract::Request,
    next: axum::middleware::Next,
) -> axum::response::Response {
    let route = request
        .extensions()
        .get::<axum::extract::MatchedPath>()
        .map_or_else(|| "unmatched".to_string(), |p| p.as_str().to_string());
    let started = Instant::now();
    let response = next.run(request).await;
    crate::telemetry::metrics().request(
        "http",
        &route,
        response.status().as_str(),
        started.elapsed(),
    );
    response
}

pub(crate) fn router(state: AppState, max_body: usize) -> Router {
    let api = Router::new()
        .route("/query", post(query::query))
        .route("/tables", get(tables::list).post(tables::create))
        .route(
            "/tables/{layer}/{name}",
            get(tables::describe)
                .patch(tables::patch)
                .delete(tables::drop_table),
        )
        .route("/tables/{layer}/{name}/rows", post(tables::upload))
        .route("/tables/{layer}/{name}/history", get(tables::history))
        .route("/tables/{layer}/{name}/merge", post(dml::merge))
        .route("/tables/{layer}/{name}/scd2", post(dml::scd2))
        .route("/tables/{layer}/{name}/optimize", post(dml::optimize))
        .route("/tables/{layer}/{name}/vacuum", post(dml::vacuum))
        .route("/tables/{layer}/{name}/restore", post(dml::restore))
        .route(
            "/tables/{layer}/{name}/policies",
            get(policies::get_policies).put(policies::put_policies),
        )
        .route(
            "/grants",
            get(policies::get_grants).put(policies::put_grants),
        )
        .route("/openapi.json", get(openapi::document))
        .route_layer(axum::middleware::from_fn_with_state(
            state.clone(),
            auth::require_bearer,
        ));
    let metrics = Router::new()
        .route("/metrics", get(health::metrics))
        .route_layer(axum::middleware::from_fn_with_state(
            state.clone(),
            auth::require_bearer,
        ));
    Router::new()
        .nest("/api/v1", api)
        .merge(metrics)
        .route("/healthz", get(health::healthz))
        .route("/readyz", get(health::readyz))
        .route_layer(axum::middleware::from_fn(observe))
        .fallback(error::not_found)
        .layer(DefaultBodyLimit::max(max_body))
        .layer(PropagateRequestIdLayer::new(REQUEST_ID))
        .layer(TraceLayer::new_for_http().make_span_with(
            |req: &http::Request<axum::body::Body>| {
                let request_id = req
                    .headers()
                    .get(REQUEST_ID)
                    .and_then(|v| v.to_str().ok())
                    .unwrap_or_default();
                tracing::info_span!(
                    "http",
                    method = %req.method(),
                    path = %req.uri().path(),
                    request_id = %request_id,
                    principal = tracing::field::Empty,
                )
            },
        ))
        .layer(SetRequestIdLayer::new(REQUEST_ID, MakeRequestUuid))
        .with_state(state)
}
