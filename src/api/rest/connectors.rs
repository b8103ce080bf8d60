//! Pull connectors under `/api/v1/connectors` (admin role): definitions in TOML (or JSON),
//! runs, progress and the circuit breaker's resume ([`crate::connectors`]).

use std::sync::Arc;

use axum::extract::{Path, State};
use axum::response::{IntoResponse, Response};
use axum::{Extension, Json};
use serde::Deserialize;

use super::body::{JsonBody, QueryParams, RawBody};
use super::openapi::Errors;
use super::{AppState, admin};
use crate::connectors::definition::{Connector, ConnectorSpec};
use crate::connectors::{ConnectorView, RunReport, Status, Window};
use crate::error::{Error, Result};
use crate::security::Principal;

#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Path)]
#[allow(dead_code)] // Handlers extract `String` so a bad name gets our message.
pub(super) struct ConnectorPath {
    /// 1 to 64 of `A-Z a-z 0-9 _ -`.
    name: String,
}

#[derive(Debug, Default, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub(super) struct RunParams {
    /// Answer when the run ended (200 with its report) instead of when it started (202).
    #[serde(default)]
    wait: bool,
}

#[utoipa::path(get, path = "/connectors", tag = "ingestion",
    responses((status = 200, description = "Every connector (admin role)", body = Vec<Connector>), Errors))]
pub(super) async fn list(
    State(state): State<AppState>,
    Extension(principal): Extension<Arc<Principal>>,
) -> Result<Json<Vec<Connector>>> {
    admin(&state, &principal, "listing connectors").await?;
    Ok(Json(state.connectors.list().await?))
}

#[utoipa::path(get, path = "/connectors/{name}", tag = "ingestion", params(ConnectorPath),
    responses((status = 200, description = "The definition (secrets by name only), its state, last run, cursor and checkpoint", body = ConnectorView), Errors))]
pub(super) async fn get(
    State(state): State<AppState>,
    Extension(principal): Extension<Arc<Principal>>,
    Path(name): Path<String>,
) -> Result<Json<ConnectorView>> {
    admin(&state, &principal, "reading a connector").await?;
    Ok(Json(state.connectors.get(&name).await?))
}

#[utoipa::path(put, path = "/connectors/{name}", tag = "ingestion", params(ConnectorPath),
    request_body(content = String, description = "The definition in TOML (or JSON, when it starts with `{`)", content_type = "text/plain"),
    responses((status = 200, description = "Stored (its table created when absent)", body = Connector), Errors))]
pub(super) async fn put(
    State(state): State<AppState>,
    Extension(principal): Extension<Arc<Principal>>,
    Path(name): Path<String>,
    RawBody(body): RawBody,
) -> Result<Json<Connector>> {
    admin(&state, &principal, "deploying a connector").await?;
    let text = std::str::from_utf8(&body)
        .map_err(|_| Error::invalid("the connector definition is not UTF-8 text"))?;
    let spec = ConnectorSpec::parse(text)?;
    Ok(Json(state.connectors.put(&principal, &name, spec).await?))
}

#[utoipa::path(delete, path = "/connectors/{name}", tag = "ingestion", params(ConnectorPath),
    responses((status = 204, description = "Deleted: no more runs; its table, checkpoints and dead letters stay"), Errors))]
pub(super) async fn delete(
    State(state): State<AppState>,
    Extension(principal): Extension<Arc<Principal>>,
    Path(name): Path<String>,
) -> Result<Response> {
    admin(&state, &principal, "deleting a connector").await?;
    state.connectors.delete(&principal, &name).await?;
    Ok(http::StatusCode::NO_CONTENT.into_response())
}

#[utoipa::path(post, path = "/connectors/{name}/runs", tag = "ingestion", params(ConnectorPath, RunParams),
    responses(
        (status = 202, description = "Started", body = RunReport),
        (status = 200, description = "Ended (`wait=true`): the run's report", body = RunReport),
        (status = 409, description = "A run is in progress on this replica, or the circuit breaker paused the connector"),
        Errors))]
pub(super) async fn run(
    State(state): State<AppState>,
    Extension(principal): Extension<Arc<Principal>>,
    Path(name): Path<String>,
    QueryParams(params): QueryParams<RunParams>,
) -> Result<Response> {
    admin(&state, &principal, "running a connector").await?;
    let report = state
        .connectors
        .run(&name, "manual", None, params.wait)
        .await?;
    Ok(started(params.wait, report))
}

#[utoipa::path(post, path = "/connectors/{name}/backfill", tag = "ingestion", params(ConnectorPath, RunParams),
    request_body = Window,
    responses(
        (status = 202, description = "Started: the window's records, under the window's own checkpoints; the main cursor does not move", body = RunReport),
        (status = 200, description = "Ended (`wait=true`): the run's report", body = RunReport),
        (status = 409, description = "A run is in progress here, the connector is paused, or the window was backfilled completely"),
        Errors))]
pub(super) async fn backfill(
    State(state): State<AppState>,
    Extension(principal): Extension<Arc<Principal>>,
    Path(name): Path<String>,
    QueryParams(params): QueryParams<RunParams>,
    JsonBody(window): JsonBody<Window>,
) -> Result<Response> {
    admin(&state, &principal, "backfilling a connector").await?;
    let report = state
        .connectors
        .run(&name, "backfill", Some(window), params.wait)
        .await?;
    Ok(started(params.wait, report))
}

#[utoipa::path(post, path = "/connectors/{name}/resume", tag = "ingestion", params(ConnectorPath),
    responses((status = 200, description = "The circuit breaker's pause lifted", body = Status), Errors))]
pub(super) async fn resume(
    State(state): State<AppState>,
    Extension(principal): Extension<Arc<Principal>>,
    Path(name): Path<String>,
) -> Result<Json<Status>> {
    admin(&state, &principal, "resuming a connector").await?;
    Ok(Json(state.connectors.resume(&name).await?))
}

/// A run's answer: 200 with its report once it ended (`wait`), 202 when it started.
fn started(waited: bool, report: RunReport) -> Response {
    let status = if waited {
        http::StatusCode::OK
    } else {
        http::StatusCode::ACCEPTED
    };
    (status, Json(report)).into_response()
}
