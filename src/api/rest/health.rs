//! Liveness and readiness (unauthenticated), and metrics.

use std::sync::Arc;
use std::time::Duration;

use axum::extract::State;
use axum::response::{IntoResponse, Response};
use axum::{Extension, Json};
use serde_json::json;

use super::AppState;
use crate::engine::Engine;
use crate::security::Principal;

pub(super) async fn healthz(State(state): State<AppState>) -> Json<serde_json::Value> {
    Json(json!({
        "status": "ok",
        "version": env!("CARGO_PKG_VERSION"),
        "uptime_secs": state.started.elapsed().as_secs(),
    }))
}

/// Ready when the catalog's store answers within 2 s.
pub(super) async fn readyz(State(state): State<AppState>) -> Response {
    let check = tokio::time::timeout(Duration::from_secs(2), state.engine.catalog().ping()).await;
    match check {
        Ok(Ok(())) => {
            Json(json!({"status": "ready", "checks": {"object_store": "ok"}})).into_response()
        }
        Ok(Err(e)) => {
            let trace_id = crate::api::report(&e);
            (
                http::StatusCode::SERVICE_UNAVAILABLE,
                Json(json!({"status": "unavailable", "checks": {"object_store": "error"}, "trace_id": trace_id})),
            )
                .into_response()
        }
        Err(_) => (
            http::StatusCode::SERVICE_UNAVAILABLE,
            Json(json!({"status": "unavailable", "checks": {"object_store": "timeout"}})),
        )
            .into_response(),
    }
}

/// OpenMetrics text metrics: a token with the operator or admin role.
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
