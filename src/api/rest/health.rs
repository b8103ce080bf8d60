//! Liveness and readiness (unauthenticated), and metrics.

use std::sync::Arc;
use std::time::Duration;

use axum::extract::State;
use axum::response::{IntoResponse, Response};
use axum::{Extension, Json};
use serde::Serialize;
use utoipa::ToSchema;

use super::AppState;
use super::openapi::Errors;
use crate::engine::Engine;
use crate::security::Principal;

#[utoipa::path(get, path = "/healthz", tag = "operations", security(()),
    responses((status = 200, description = "Alive", body = Health)))]
pub(super) async fn healthz(State(state): State<AppState>) -> Json<Health> {
    Json(Health {
        status: "ok".into(),
        version: env!("CARGO_PKG_VERSION").into(),
        uptime_secs: state.started.elapsed().as_secs(),
    })
}

/// `GET /healthz`.
#[derive(Debug, Serialize, ToSchema)]
pub(super) struct Health {
    /// Always `ok`.
    status: String,
    version: String,
    uptime_secs: u64,
}

/// `GET /readyz`.
#[derive(Debug, Serialize, ToSchema)]
pub(super) struct Readiness {
    /// `ready` or `unavailable`.
    status: String,
    checks: ReadinessChecks,
    /// Under which the failure was logged.
    #[serde(skip_serializing_if = "Option::is_none")]
    trace_id: Option<String>,
}

#[derive(Debug, Serialize, ToSchema)]
pub(super) struct ReadinessChecks {
    /// `ok`, `error` or `timeout`.
    object_store: String,
}

fn readiness(ready: bool, object_store: &str, trace_id: Option<String>) -> Json<Readiness> {
    Json(Readiness {
        status: if ready { "ready" } else { "unavailable" }.into(),
        checks: ReadinessChecks {
            object_store: object_store.into(),
        },
        trace_id,
    })
}

/// Ready when the catalog's store answers within 2 s.
#[utoipa::path(get, path = "/readyz", tag = "operations", security(()),
    responses(
        (status = 200, description = "Catalog loaded and object store reachable", body = Readiness),
        (status = 503, description = "Object store unreachable or slow", body = Readiness)))]
pub(super) async fn readyz(State(state): State<AppState>) -> Response {
    let check = tokio::time::timeout(Duration::from_secs(2), state.engine.catalog().ping()).await;
    match check {
        Ok(Ok(())) => readiness(true, "ok", None).into_response(),
        Ok(Err(e)) => {
            let trace_id = crate::api::report(&e);
            (
                http::StatusCode::SERVICE_UNAVAILABLE,
                readiness(false, "error", Some(trace_id)),
            )
                .into_response()
        }
        Err(_) => (
            http::StatusCode::SERVICE_UNAVAILABLE,
            readiness(false, "timeout", None),
        )
            .into_response(),
    }
}

/// OpenMetrics text metrics: a token with the operator or admin role.
#[utoipa::path(get, path = "/metrics", tag = "operations",
    responses((status = 200, description = "OpenMetrics text (operator or admin role)", content_type = "application/openmetrics-text"), Errors))]
pub(super) async fn metrics(
    State(state): State<AppState>,
    Extension(principal): Extension<Arc<Principal>>,
) -> Response {
    match state.engine.access().await {
        Ok(access) => match access.check_observe(&principal) {
            Ok(()) => metrics_text(&state.engine),
            Err(e) => e.into_response(),
        },
        Err(e) => e.into_response(),
    }
}

/// The metrics listener (`server.metrics_addr`): no token, nothing else served.
pub(crate) fn metrics_router(engine: Arc<Engine>) -> axum::Router {
    axum::Router::new().route(
        "/metrics",
        axum::routing::get(move || {
            let engine = Arc::clone(&engine);
            async move { metrics_text(&engine) }
        }),
    )
}

fn metrics_text(engine: &Engine) -> Response {
    (
        [(
            http::header::CONTENT_TYPE,
            crate::telemetry::metrics::CONTENT_TYPE,
        )],
        engine.metrics_text(),
    )
        .into_response()
}
