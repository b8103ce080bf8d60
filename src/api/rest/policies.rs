//! `/api/v1/grants` and `/api/v1/tables/{layer}/{name}/policies`.

use std::sync::Arc;

use axum::extract::{Path, State};
use axum::{Extension, Json};
use serde::Deserialize;

use super::AppState;
use super::body::JsonBody;
use super::openapi::{Errors, TablePath};
use crate::config::GrantConfig;
use crate::engine::policies::{GrantsDoc, TablePolicyDoc};
use crate::error::Result;
use crate::security::Principal;
use crate::security::policy::model::{ColumnMask, RowFilter, TablePolicy};
use crate::storage::TableRef;

#[utoipa::path(get, path = "/grants", tag = "policies",
    responses((status = 200, description = "Run-time grants and those of the configuration", body = GrantsDoc), Errors))]
pub(super) async fn get_grants(
    State(state): State<AppState>,
    Extension(p): Extension<Arc<Principal>>,
) -> Result<Json<GrantsDoc>> {
    Ok(Json(state.engine.grants(&p, &state.config_grants).await?))
}

#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub(super) struct PutGrants {
    grants: Vec<GrantConfig>,
    /// Optimistic locking: fail with 409 if the policies changed since this version.
    #[serde(default)]
    expected_version: Option<u64>,
}

#[utoipa::path(put, path = "/grants", tag = "policies", request_body = PutGrants,
    responses((status = 200, description = "The grants now in force", body = GrantsDoc), Errors))]
pub(super) async fn put_grants(
    State(state): State<AppState>,
    Extension(p): Extension<Arc<Principal>>,
    JsonBody(req): JsonBody<PutGrants>,
) -> Result<Json<GrantsDoc>> {
    Ok(Json(
        state
            .engine
            .set_grants(&p, req.grants, req.expected_version, &state.config_grants)
            .await?,
    ))
}

#[utoipa::path(get, path = "/tables/{layer}/{name}/policies", tag = "policies", params(TablePath),
    responses((status = 200, description = "The table's row filters and column masks", body = TablePolicyDoc), Errors))]
pub(super) async fn get_policies(
    State(state): State<AppState>,
    Extension(p): Extension<Arc<Principal>>,
    Path((layer, name)): Path<(String, String)>,
) -> Result<Json<TablePolicyDoc>> {
    let t = TableRef::new(&layer, &name)?;
    Ok(Json(state.engine.table_policy(&p, &t).await?))
}

#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub(super) struct PutPolicies {
    #[serde(default)]
    row_filters: Vec<RowFilter>,
    #[serde(default)]
    column_masks: Vec<ColumnMask>,
    #[serde(default)]
    expected_version: Option<u64>,
}

#[utoipa::path(put, path = "/tables/{layer}/{name}/policies", tag = "policies", params(TablePath), request_body = PutPolicies,
    responses((status = 200, description = "The policies now in force", body = TablePolicyDoc), Errors))]
pub(super) async fn put_policies(
    State(state): State<AppState>,
    Extension(p): Extension<Arc<Principal>>,
    Path((layer, name)): Path<(String, String)>,
    JsonBody(req): JsonBody<PutPolicies>,
) -> Result<Json<TablePolicyDoc>> {
    let t = TableRef::new(&layer, &name)?;
    let policy = TablePolicy {
        row_filters: req.row_filters,
        column_masks: req.column_masks,
    };
    Ok(Json(
        state
            .engine
            .set_table_policy(&p, &t, policy, req.expected_version)
            .await?,
    ))
}
