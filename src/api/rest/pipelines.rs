//! Pipelines and their runs: `/api/v1/pipelines…`, `/api/v1/runs…` (`crate::flows`).

use std::sync::Arc;

use axum::extract::{Path, State};
use axum::response::{IntoResponse, Response};
use axum::{Extension, Json};
use http::StatusCode;
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use super::AppState;
use super::body::{JsonBody, QueryParams};
use super::openapi::Errors;
use crate::error::{Error, Result};
use crate::flows::{
    Bundle, DeployPlan, PipelineSummary, PipelineView, RunFilter, RunRecord, RunRequest, RunStatus,
};
use crate::security::Principal;

/// `GET /pipelines`.
#[derive(Debug, Serialize, ToSchema)]
pub(super) struct PipelineList {
    pipelines: Vec<PipelineSummary>,
}

/// `GET /runs`.
#[derive(Debug, Serialize, ToSchema)]
pub(super) struct RunList {
    runs: Vec<RunRecord>,
    /// Pass as `before` for the next page; absent on the last page.
    #[serde(skip_serializing_if = "Option::is_none")]
    next_before: Option<String>,
}

#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub(super) struct DeployParams {
    /// Return the plan without deploying.
    #[serde(default)]
    dry_run: bool,
}

#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Path)]
#[allow(dead_code)] // Handlers extract a String so a bad name gets our message.
pub(super) struct PipelinePath {
    /// `[A-Za-z_][A-Za-z0-9_]*`, at most 128 bytes.
    #[param(pattern = "^[A-Za-z_][A-Za-z0-9_]{0,127}$")]
    name: String,
}

#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Path)]
#[allow(dead_code)]
pub(super) struct ModelPath {
    /// The pipeline.
    name: String,
    /// The model: `layer.name`, or its name when that is unique in the pipeline.
    model: String,
}

#[derive(Debug, Deserialize, utoipa::IntoParams)]
pub(super) struct SinceParams {
    /// Only results recorded at or after this instant (RFC 3339, or a date `YYYY-MM-DD`).
    #[serde(default)]
    since: Option<String>,
}

#[utoipa::path(get, path = "/pipelines/{name}/models/{model}/quality", tag = "pipelines", params(ModelPath, SinceParams),
    responses((status = 200, description = "The model's expectation and audit results (system.expectation_results, system.audit_results), newest first", body = crate::flows::QualityReport), Errors))]
pub(super) async fn quality(
    State(state): State<AppState>,
    Extension(principal): Extension<Arc<Principal>>,
    Path((name, model)): Path<(String, String)>,
    QueryParams(params): QueryParams<SinceParams>,
) -> Result<Json<crate::flows::QualityReport>> {
    let since = params
        .since
        .as_deref()
        .map(|s| crate::flows::parse_instant("since", s))
        .transpose()?;
    Ok(Json(
        state
            .flows
            .quality(&principal, &name, &model, since)
            .await?,
    ))
}

#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Path)]
#[allow(dead_code)]
pub(super) struct RunPath {
    /// The run id (a UUID).
    id: String,
}

#[utoipa::path(put, path = "/pipelines/{name}", tag = "pipelines", params(PipelinePath, DeployParams),
    request_body = Bundle,
    responses((status = 200, description = "The plan; deployed unless dry_run or unchanged", body = DeployPlan), Errors))]
pub(super) async fn deploy(
    State(state): State<AppState>,
    Extension(principal): Extension<Arc<Principal>>,
    Path(name): Path<String>,
    QueryParams(params): QueryParams<DeployParams>,
    JsonBody(bundle): JsonBody<Bundle>,
) -> Result<Json<DeployPlan>> {
    let plan = state
        .flows
        .deploy(&principal, &name, bundle, params.dry_run)
        .await?;
    Ok(Json(plan))
}

#[utoipa::path(get, path = "/pipelines", tag = "pipelines",
    responses((status = 200, description = "Pipelines with a table the caller may read", body = PipelineList), Errors))]
pub(super) async fn list(
    State(state): State<AppState>,
    Extension(principal): Extension<Arc<Principal>>,
) -> Result<Json<PipelineList>> {
    let pipelines = state.flows.list(&principal).await?;
    Ok(Json(PipelineList { pipelines }))
}

#[utoipa::path(get, path = "/pipelines/{name}", tag = "pipelines", params(PipelinePath),
    responses((status = 200, description = "Definition, version, DAG and last run", body = PipelineView), Errors))]
pub(super) async fn get(
    State(state): State<AppState>,
    Extension(principal): Extension<Arc<Principal>>,
    Path(name): Path<String>,
) -> Result<Json<PipelineView>> {
    Ok(Json(state.flows.get(&principal, &name).await?))
}

#[utoipa::path(delete, path = "/pipelines/{name}", tag = "pipelines", params(PipelinePath),
    responses((status = 204, description = "Undeployed; its tables stay"), Errors))]
pub(super) async fn undeploy(
    State(state): State<AppState>,
    Extension(principal): Extension<Arc<Principal>>,
    Path(name): Path<String>,
) -> Result<StatusCode> {
    state.flows.undeploy(&principal, &name).await?;
    Ok(StatusCode::NO_CONTENT)
}

#[utoipa::path(post, path = "/pipelines/{name}/runs", tag = "pipelines", params(PipelinePath),
    request_body(content = RunRequest, description = "Optional: models and full_refresh"),
    responses((status = 202, description = "Queued; poll GET /runs/{id}", body = RunRecord), Errors))]
pub(super) async fn start_run(
    State(state): State<AppState>,
    Extension(principal): Extension<Arc<Principal>>,
    Path(name): Path<String>,
    body: axum::body::Bytes,
) -> Result<Response> {
    let request = if body.iter().all(u8::is_ascii_whitespace) {
        RunRequest::default()
    } else {
        serde_json::from_slice(&body).map_err(|e| Error::invalid(format!("run request: {e}")))?
    };
    let record = state.flows.start_run(&principal, &name, request).await?;
    Ok((StatusCode::ACCEPTED, Json(record)).into_response())
}

#[utoipa::path(post, path = "/pipelines/{name}/backfill", tag = "pipelines", params(PipelinePath),
    request_body(content = crate::flows::BackfillRequest, description = "The models, the time range and how to cut it"),
    responses((status = 202, description = "Queued; poll GET /runs/{id} (each model's backfill shows its batches)", body = RunRecord), Errors))]
pub(super) async fn backfill(
    State(state): State<AppState>,
    Extension(principal): Extension<Arc<Principal>>,
    Path(name): Path<String>,
    body: axum::body::Bytes,
) -> Result<Response> {
    let request: crate::flows::BackfillRequest = serde_json::from_slice(&body)
        .map_err(|e| Error::invalid(format!("backfill request: {e}")))?;
    let record = state.flows.backfill(&principal, &name, request).await?;
    Ok((StatusCode::ACCEPTED, Json(record)).into_response())
}

#[utoipa::path(post, path = "/runs/{id}/resume", tag = "pipelines", params(RunPath),
    responses((status = 202, description = "A new run of what the backfill did not commit (its `resumes` names the old run)", body = RunRecord), Errors))]
pub(super) async fn resume_run(
    State(state): State<AppState>,
    Extension(principal): Extension<Arc<Principal>>,
    Path(id): Path<String>,
) -> Result<Response> {
    let record = state.flows.resume_run(&principal, &id).await?;
    Ok((StatusCode::ACCEPTED, Json(record)).into_response())
}

#[utoipa::path(post, path = "/pipelines/{name}/pause", tag = "pipelines", params(PipelinePath),
    responses((status = 200, description = "Paused: the scheduler starts none of its runs (its slots are recorded as paused); manual runs still run", body = crate::flows::Pause), Errors))]
pub(super) async fn pause(
    State(state): State<AppState>,
    Extension(principal): Extension<Arc<Principal>>,
    Path(name): Path<String>,
) -> Result<Json<crate::flows::Pause>> {
    Ok(Json(state.flows.pause(&principal, &name).await?))
}

#[utoipa::path(post, path = "/pipelines/{name}/resume", tag = "pipelines", params(PipelinePath),
    responses((status = 204, description = "Resumed: slots due from now on run; paused ones are not caught up"), Errors))]
pub(super) async fn resume(
    State(state): State<AppState>,
    Extension(principal): Extension<Arc<Principal>>,
    Path(name): Path<String>,
) -> Result<StatusCode> {
    state.flows.resume(&principal, &name).await?;
    Ok(StatusCode::NO_CONTENT)
}

#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub(super) struct RunParams {
    pipeline: Option<String>,
    status: Option<RunStatus>,
    /// At most this many (default 50, at most 1000).
    limit: Option<usize>,
    /// Runs older than this run id (the previous page's `next_before`).
    before: Option<String>,
}

#[utoipa::path(get, path = "/runs", tag = "pipelines", params(RunParams),
    responses((status = 200, description = "Runs newest first, with the models the caller may read", body = RunList), Errors))]
pub(super) async fn runs(
    State(state): State<AppState>,
    Extension(principal): Extension<Arc<Principal>>,
    QueryParams(params): QueryParams<RunParams>,
) -> Result<Json<RunList>> {
    let limit = params.limit.unwrap_or(50).clamp(1, 1000);
    let filter = RunFilter {
        pipeline: params.pipeline,
        status: params.status,
        limit,
        before: params.before,
    };
    let runs = state.flows.runs(&principal, &filter).await?;
    let next_before = (runs.len() == limit)
        .then(|| runs.last().map(|r| r.run_id.clone()))
        .flatten();
    Ok(Json(RunList { runs, next_before }))
}

#[utoipa::path(get, path = "/runs/{id}", tag = "pipelines", params(RunPath),
    responses((status = 200, description = "The run, per model", body = RunRecord), Errors))]
pub(super) async fn run(
    State(state): State<AppState>,
    Extension(principal): Extension<Arc<Principal>>,
    Path(id): Path<String>,
) -> Result<Json<RunRecord>> {
    Ok(Json(state.flows.run(&principal, &id).await?))
}

#[utoipa::path(post, path = "/runs/{id}/cancel", tag = "pipelines", params(RunPath),
    responses((status = 200, description = "Cancellation requested: the run stops before its next model or batch", body = RunRecord), Errors))]
pub(super) async fn cancel(
    State(state): State<AppState>,
    Extension(principal): Extension<Arc<Principal>>,
    Path(id): Path<String>,
) -> Result<Json<RunRecord>> {
    Ok(Json(state.flows.cancel(&principal, &id).await?))
}

#[utoipa::path(get, path = "/scheduler", tag = "pipelines",
    responses((status = 200, description = "The scheduler as this replica sees it: leader, epoch, replicas (admin role)", body = crate::scheduler::SchedulerView), Errors))]
pub(super) async fn scheduler(
    State(state): State<AppState>,
    Extension(principal): Extension<Arc<Principal>>,
) -> Result<Json<crate::scheduler::SchedulerView>> {
    if !state.engine.access().await?.is_admin(&principal) {
        return Err(Error::PermissionDenied(
            "GET /api/v1/scheduler shows the server's replicas and needs the admin role".into(),
        ));
    }
    Ok(Json(state.scheduler.view().await?))
}

#[utoipa::path(put, path = "/tables/{layer}/{name}/checks", tag = "quality", params(super::openapi::TablePath),
    request_body = crate::flows::ChecksDef,
    responses((status = 200, description = "The table's checks, stored (they replace any earlier ones)", body = crate::flows::TableChecks), Errors))]
pub(super) async fn put_checks(
    State(state): State<AppState>,
    Extension(principal): Extension<Arc<Principal>>,
    Path((layer, name)): Path<(String, String)>,
    JsonBody(def): JsonBody<crate::flows::ChecksDef>,
) -> Result<Json<crate::flows::TableChecks>> {
    let t = crate::storage::TableRef::new(&layer, &name)?;
    Ok(Json(state.flows.put_checks(&principal, &t, def).await?))
}

#[utoipa::path(get, path = "/tables/{layer}/{name}/checks", tag = "quality", params(super::openapi::TablePath),
    responses((status = 200, description = "The table's checks", body = crate::flows::TableChecks), Errors))]
pub(super) async fn get_checks(
    State(state): State<AppState>,
    Extension(principal): Extension<Arc<Principal>>,
    Path((layer, name)): Path<(String, String)>,
) -> Result<Json<crate::flows::TableChecks>> {
    let t = crate::storage::TableRef::new(&layer, &name)?;
    Ok(Json(state.flows.get_checks(&principal, &t).await?))
}

#[utoipa::path(delete, path = "/tables/{layer}/{name}/checks", tag = "quality", params(super::openapi::TablePath),
    responses((status = 204, description = "The table has no checks any more"), Errors))]
pub(super) async fn delete_checks(
    State(state): State<AppState>,
    Extension(principal): Extension<Arc<Principal>>,
    Path((layer, name)): Path<(String, String)>,
) -> Result<StatusCode> {
    let t = crate::storage::TableRef::new(&layer, &name)?;
    state.flows.delete_checks(&principal, &t).await?;
    Ok(StatusCode::NO_CONTENT)
}

#[utoipa::path(post, path = "/tables/{layer}/{name}/checks/run", tag = "quality", params(super::openapi::TablePath),
    responses((status = 200, description = "What each check found (also in system.audit_results)", body = crate::flows::ChecksRun), Errors))]
pub(super) async fn run_checks(
    State(state): State<AppState>,
    Extension(principal): Extension<Arc<Principal>>,
    Path((layer, name)): Path<(String, String)>,
) -> Result<Json<crate::flows::ChecksRun>> {
    let t = crate::storage::TableRef::new(&layer, &name)?;
    Ok(Json(state.flows.run_checks(&principal, &t).await?))
}

#[utoipa::path(post, path = "/pipelines/{name}/models/{model}/quarantine/replay", tag = "quality", params(ModelPath),
    responses((status = 200, description = "Every quarantined row run through the model's current expectations into its table, and removed from the quarantine", body = crate::flows::ReplayOutcome), Errors))]
pub(super) async fn replay(
    State(state): State<AppState>,
    Extension(principal): Extension<Arc<Principal>>,
    Path((name, model)): Path<(String, String)>,
) -> Result<Json<crate::flows::ReplayOutcome>> {
    Ok(Json(state.flows.replay(&principal, &name, &model).await?))
}
