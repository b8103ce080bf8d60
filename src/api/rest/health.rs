//! Liveness and readiness (unauthenticated).

use std::time::Duration;

use axum::Json;
use axum::extract::State;
use axum::response::{IntoResponse, Response};
use serde_json::json;

use super::AppState;

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
            let trace_id = e.log();
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

/// Prometheus text metrics (authenticated like the API).
pub(super) async fn metrics(State(state): State<AppState>) -> Response {
    let mut out = String::new();
    state.engine.render_metrics(&mut out);
    (
        [(
            http::header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        out,
    )
        .into_response()
}
