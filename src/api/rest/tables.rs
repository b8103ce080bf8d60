//! Table management: `/api/v1/tables…`.

use std::collections::BTreeMap;
use std::sync::Arc;

use axum::extract::{Path, State};
use axum::response::{IntoResponse, Response};
use axum::{Extension, Json};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use super::AppState;
use super::body::{JsonBody, QueryParams, RawBody};
use super::openapi::{ErrorBody, Errors, TablePath};
use crate::engine::tables::{TableInfo, Upload};
use crate::error::{Error, Result};
use crate::ingest::UploadFormat;
use crate::pipelines::commit::{WriteMode, WriteOutcome};
use crate::pipelines::schema::TableChange;
use crate::security::Principal;
use crate::storage::catalog::{HistoryEntry, TableSpec};
use crate::storage::types::ColumnSpec;
use crate::storage::{Layer, TableRef};

/// `GET /tables`.
#[derive(Debug, Serialize, ToSchema)]
pub(super) struct TableList {
    tables: Vec<TableInfo>,
}

/// `GET /tables/{layer}/{name}/history`.
#[derive(Debug, Serialize, ToSchema)]
pub(super) struct TableHistory {
    table: String,
    history: Vec<HistoryEntry>,
}

#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub(super) struct ListParams {
    layer: Option<String>,
}

#[utoipa::path(get, path = "/tables", tag = "tables", params(ListParams),
    responses((status = 200, description = "Tables the caller may read", body = TableList), Errors))]
pub(super) async fn list(
    State(state): State<AppState>,
    Extension(principal): Extension<Arc<Principal>>,
    QueryParams(params): QueryParams<ListParams>,
) -> Result<Json<TableList>> {
    let layer = match params.layer.as_deref() {
        Some(l) => Some(Layer::parse(l).ok_or_else(|| {
            Error::invalid(format!("unknown layer {l:?} (bronze, silver, gold)"))
        })?),
        None => None,
    };
    let tables = state.engine.list_tables(&principal, layer).await?;
    Ok(Json(TableList { tables }))
}

#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub(super) struct CreateTable {
    layer: String,
    name: String,
    columns: Vec<ColumnSpec>,
    #[serde(default)]
    partition_by: Vec<String>,
    #[serde(default)]
    description: Option<String>,
    /// Delta table properties, e.g. `{"delta.enableChangeDataFeed": "true"}`.
    #[serde(default)]
    properties: std::collections::BTreeMap<String, String>,
    #[serde(default)]
    if_not_exists: bool,
}

#[utoipa::path(post, path = "/tables", tag = "tables", request_body = CreateTable,
    responses(
        (status = 201, description = "Created", body = TableInfo),
        (status = 200, description = "Already existed (if_not_exists)", body = TableInfo),
        Errors))]
pub(super) async fn create(
    State(state): State<AppState>,
    Extension(principal): Extension<Arc<Principal>>,
    JsonBody(req): JsonBody<CreateTable>,
) -> Result<Response> {
    let t = TableRef::new(&req.layer, &req.name)?;
    let spec = TableSpec {
        columns: req.columns,
        partition_by: req.partition_by,
        description: req.description,
        properties: req.properties,
    };
    match state
        .engine
        .create_table(&principal, &t, &spec, req.if_not_exists)
        .await?
    {
        Some(info) => Ok((http::StatusCode::CREATED, Json(info)).into_response()),
        None => Ok(Json(state.engine.describe_table(&principal, &t).await?).into_response()),
    }
}

#[utoipa::path(get, path = "/tables/{layer}/{name}", tag = "tables", params(TablePath),
    responses((status = 200, description = "The table", body = TableInfo), Errors))]
pub(super) async fn describe(
    State(state): State<AppState>,
    Extension(principal): Extension<Arc<Principal>>,
    Path((layer, name)): Path<(String, String)>,
) -> Result<Response> {
    let t = TableRef::new(&layer, &name)?;
    Ok(Json(state.engine.describe_table(&principal, &t).await?).into_response())
}

#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub(super) struct PatchTable {
    /// New nullable columns, added last.
    #[serde(default)]
    add_columns: Vec<ColumnSpec>,
    #[serde(default)]
    properties: BTreeMap<String, String>,
    /// Column → comment (`null` clears it).
    #[serde(default)]
    column_descriptions: BTreeMap<String, Option<String>>,
    #[serde(default)]
    description: Option<String>,
}

/// Applies each given change in the order above, one commit each
/// ([`crate::engine::Engine::alter_table_with`]).
#[utoipa::path(patch, path = "/tables/{layer}/{name}", tag = "tables", params(TablePath), request_body = PatchTable,
    responses((status = 200, description = "The table after the changes", body = TableInfo), Errors))]
pub(super) async fn patch(
    State(state): State<AppState>,
    Extension(principal): Extension<Arc<Principal>>,
    Path((layer, name)): Path<(String, String)>,
    JsonBody(req): JsonBody<PatchTable>,
) -> Result<Response> {
    let t = TableRef::new(&layer, &name)?;
    let mut changes = Vec::new();
    if !req.add_columns.is_empty() {
        changes.push(TableChange::AddColumns {
            columns: req.add_columns,
            if_not_exists: false,
        });
    }
    if !req.properties.is_empty() {
        changes.push(TableChange::SetProperties(req.properties));
    }
    for (column, comment) in req.column_descriptions {
        changes.push(TableChange::ColumnComment { column, comment });
    }
    if let Some(d) = req.description {
        changes.push(TableChange::Description(Some(d)));
    }
    if changes.is_empty() {
        return Err(Error::invalid(
            "nothing to change: PATCH takes add_columns, properties, column_descriptions and/or description",
        ));
    }
    let info = state
        .engine
        .alter_table_with(&principal, &t, &changes)
        .await?;
    Ok(Json(info).into_response())
}

#[utoipa::path(delete, path = "/tables/{layer}/{name}", tag = "tables", params(TablePath),
    responses((status = 204, description = "Dropped"), Errors))]
pub(super) async fn drop_table(
    State(state): State<AppState>,
    Extension(principal): Extension<Arc<Principal>>,
    Path((layer, name)): Path<(String, String)>,
) -> Result<Response> {
    let t = TableRef::new(&layer, &name)?;
    state.engine.drop_table(&principal, &t, false).await?;
    Ok(http::StatusCode::NO_CONTENT.into_response())
}

#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub(super) struct UploadParams {
    #[serde(default)]
    mode: Option<WriteMode>,
    #[serde(default)]
    idempotency_key: Option<String>,
    /// Add the upload's new columns (nullable; needs MANAGE) instead of refusing them.
    #[serde(default)]
    merge_schema: bool,
}

#[utoipa::path(post, path = "/tables/{layer}/{name}/rows", tag = "tables", params(TablePath, UploadParams,
        ("Idempotency-Key" = Option<String>, Header, description = "Commit at most once per key and principal")),
    request_body(description = "Rows: every row is validated before anything is written", content(
        (Vec<serde_json::Value> = "application/json"),
        ("application/x-ndjson"),
        ("text/csv"),
        ("application/vnd.apache.parquet"),
        ("application/vnd.apache.arrow.stream"))),
    responses(
        (status = 200, description = "Written (or a duplicate of an earlier upload with the same key)", body = WriteOutcome),
        (status = 415, description = "Content-Type missing or not one Strata reads", body = ErrorBody),
        Errors))]
pub(super) async fn upload(
    State(state): State<AppState>,
    Extension(principal): Extension<Arc<Principal>>,
    Path((layer, name)): Path<(String, String)>,
    QueryParams(params): QueryParams<UploadParams>,
    headers: http::HeaderMap,
    RawBody(body): RawBody,
) -> Result<Response> {
    let t = TableRef::new(&layer, &name)?;
    let content_type = headers
        .get(http::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .ok_or_else(|| Error::UnsupportedMediaType("Content-Type is required".into()))?;
    let format = UploadFormat::from_content_type(content_type)?;
    let header_key = headers
        .get("idempotency-key")
        .map(|v| {
            v.to_str()
                .map(str::to_string)
                .map_err(|_| Error::invalid("Idempotency-Key must be ASCII"))
        })
        .transpose()?;
    let idempotency_key = match (header_key, params.idempotency_key) {
        (Some(h), Some(q)) if h != q => {
            return Err(Error::invalid(
                "Idempotency-Key header and idempotency_key query differ",
            ));
        }
        (h, q) => h.or(q),
    };
    let upload = Upload {
        format,
        body,
        mode: params.mode.unwrap_or(WriteMode::Append),
        idempotency_key,
        merge_schema: params.merge_schema,
    };
    let outcome = state.engine.write_rows(&principal, &t, upload).await?;
    Ok(Json(outcome).into_response())
}

#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub(super) struct HistoryParams {
    limit: Option<usize>,
}

#[utoipa::path(get, path = "/tables/{layer}/{name}/history", tag = "tables", params(TablePath, HistoryParams),
    responses((status = 200, description = "Commits, newest first", body = TableHistory), Errors))]
pub(super) async fn history(
    State(state): State<AppState>,
    Extension(principal): Extension<Arc<Principal>>,
    Path((layer, name)): Path<(String, String)>,
    QueryParams(params): QueryParams<HistoryParams>,
) -> Result<Response> {
    let t = TableRef::new(&layer, &name)?;
    let limit = params.limit.unwrap_or(100).clamp(1, 10_000);
    let history = state.engine.history(&principal, &t, limit).await?;
    Ok(Json(TableHistory {
        table: t.to_string(),
        history,
    })
    .into_response())
}
