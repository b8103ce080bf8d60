//! Lineage: `/api/v1/lineage/tables/…` and `/api/v1/lineage/columns/…` (`crate::lineage`).

use std::sync::Arc;

use axum::extract::{Path, State};
use axum::{Extension, Json};
use serde::Deserialize;

use super::AppState;
use super::body::QueryParams;
use super::openapi::Errors;
use crate::error::Result;
use crate::lineage::{Direction, LineageGraph};
use crate::security::Principal;
use crate::storage::TableRef;

#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub(super) struct WalkParams {
    /// `upstream`, `downstream` or `both` (the default).
    direction: Option<Direction>,
    /// Hops from the table (default 3, at most 10).
    depth: Option<usize>,
}

#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Path)]
#[allow(dead_code)]
pub(super) struct ColumnPath {
    layer: String,
    name: String,
    column: String,
}

#[utoipa::path(get, path = "/lineage/tables/{layer}/{name}", tag = "lineage", params(super::openapi::TablePath, WalkParams),
    responses((status = 200, description = "Tables feeding and fed by this one; the ones you may not see counted in a {\"hidden\": n} node", body = LineageGraph), Errors))]
pub(super) async fn tables(
    State(state): State<AppState>,
    Extension(principal): Extension<Arc<Principal>>,
    Path((layer, name)): Path<(String, String)>,
    QueryParams(params): QueryParams<WalkParams>,
) -> Result<Json<LineageGraph>> {
    let t = TableRef::new(&layer, &name)?;
    let graph = state
        .lineage
        .tables(
            &principal,
            &t,
            params.direction.unwrap_or_default(),
            params.depth.unwrap_or(3),
        )
        .await?;
    Ok(Json(graph))
}

#[utoipa::path(get, path = "/lineage/columns/{layer}/{name}/{column}", tag = "lineage", params(ColumnPath, WalkParams),
    responses((status = 200, description = "Columns feeding and fed by this one, with their OpenLineage transformations", body = LineageGraph), Errors))]
pub(super) async fn columns(
    State(state): State<AppState>,
    Extension(principal): Extension<Arc<Principal>>,
    Path((layer, name, column)): Path<(String, String, String)>,
    QueryParams(params): QueryParams<WalkParams>,
) -> Result<Json<LineageGraph>> {
    let t = TableRef::new(&layer, &name)?;
    let graph = state
        .lineage
        .columns(
            &principal,
            &t,
            &column.to_ascii_lowercase(),
            params.direction.unwrap_or_default(),
            params.depth.unwrap_or(3),
        )
        .await?;
    Ok(Json(graph))
}
