//! `POST /api/v1/tables/{layer}/{name}/merge`, `…/scd2`, `…/optimize`, `…/vacuum` and
//! `…/restore`, for apps and admins that do not write SQL.

use std::sync::Arc;

use axum::extract::{Path, State};
use axum::response::{IntoResponse, Response};
use axum::{Extension, Json};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use utoipa::ToSchema;

use super::AppState;
use super::body::JsonBody;
use super::openapi::{Errors, TablePath};
use crate::engine::dml::SourceInput;
use crate::error::{Error, Result};
use crate::pipelines::maintenance::{OptimizeOutcome, RestoreOutcome, RestoreTo, VacuumOutcome};
use crate::pipelines::merge::{Action, Clause, DmlOutcome, MergeSpec, When};
use crate::pipelines::scd2::{OnLate, Scd2Spec};
use crate::security::Principal;
use crate::storage::TableRef;

/// At most this many rows inline; larger sources belong in a table (`{"sql": "…"}`).
const MAX_INLINE_ROWS: usize = 1_000_000;

/// `{"sql": "query or table"}` or `{"rows": [{…}, …]}`.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields, rename_all = "snake_case")]
pub(super) enum SourceBody {
    Sql(String),
    Rows(Vec<Value>),
}

impl SourceBody {
    fn into_input(self) -> Result<SourceInput> {
        match self {
            SourceBody::Sql(sql) => Ok(SourceInput::Sql(sql)),
            SourceBody::Rows(rows) => {
                if rows.is_empty() {
                    return Err(Error::invalid("source rows are empty"));
                }
                if rows.len() > MAX_INLINE_ROWS {
                    return Err(Error::PayloadTooLarge(format!(
                        "at most {MAX_INLINE_ROWS} inline source rows; load them into a table and use {{\"sql\": …}}"
                    )));
                }
                if let Some(i) = rows.iter().position(|r| !r.is_object()) {
                    return Err(Error::invalid(format!(
                        "source row {} is not an object",
                        i + 1
                    )));
                }
                let schema = arrow::json::reader::infer_json_schema_from_iterator(
                    rows.iter().map(Ok::<_, arrow::error::ArrowError>),
                )
                .map_err(|e| Error::invalid(format!("source rows: {e}")))?;
                let mut decoder = arrow::json::ReaderBuilder::new(Arc::new(schema))
                    .build_decoder()
                    .map_err(|e| Error::invalid(format!("source rows: {e}")))?;
                decoder
                    .serialize(&rows)
                    .map_err(|e| Error::invalid(format!("source rows: {e}")))?;
                let batch = decoder
                    .flush()
                    .map_err(|e| Error::invalid(format!("source rows: {e}")))?
                    .ok_or_else(|| Error::invalid("source rows are empty"))?;
                Ok(SourceInput::Rows(vec![batch]))
            }
        }
    }
}

#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub(super) struct ClauseBody {
    when: When,
    /// Extra condition (`WHEN … AND <if>`).
    #[serde(rename = "if")]
    condition: Option<String>,
    /// `"*"` or `{"column": "expression"}`.
    update: Option<Value>,
    /// `"*"` or `{"column": "expression"}`.
    insert: Option<Value>,
    #[serde(default)]
    delete: bool,
}

fn assignments(v: Value, what: &str) -> Result<Option<Vec<(String, String)>>> {
    match v {
        Value::String(s) if s == "*" => Ok(None),
        Value::Object(map) => map
            .into_iter()
            .map(|(c, e)| match e {
                Value::String(e) => Ok((c, e)),
                other => Err(Error::invalid(format!(
                    "{what}: the expression for {c} must be SQL text, got {other}"
                ))),
            })
            .collect::<Result<Vec<_>>>()
            .map(Some),
        other => Err(Error::invalid(format!(
            "{what} must be \"*\" or an object of column → expression, got {other}"
        ))),
    }
}

impl ClauseBody {
    fn into_clause(self) -> Result<Clause> {
        let action = match (self.update, self.insert, self.delete) {
            (Some(u), None, false) => match assignments(u, "update")? {
                None => Action::UpdateAll,
                Some(set) => Action::Update(set),
            },
            (None, Some(i), false) => match assignments(i, "insert")? {
                None => Action::InsertAll,
                Some(set) => Action::Insert(set),
            },
            (None, None, true) => Action::Delete,
            _ => {
                return Err(Error::invalid(
                    "each clause has exactly one of update, insert or delete: true",
                ));
            }
        };
        Ok(Clause {
            when: self.when,
            predicate: self.condition,
            action,
        })
    }
}

#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub(super) struct MergeRequest {
    source: SourceBody,
    /// Join condition over `t.` and `s.`; or give `keys`.
    on: Option<String>,
    /// Columns equal in target and source (`t.k = s.k AND …`).
    keys: Option<Vec<String>>,
    /// Default: upsert (`update: "*"` when matched, `insert: "*"` when not).
    #[serde(default)]
    clauses: Vec<ClauseBody>,
}

/// What a MERGE or SCD2 committed.
#[derive(Debug, Serialize, ToSchema)]
pub(super) struct DmlResult {
    table: String,
    version: u64,
    inserted: u64,
    updated: u64,
    deleted: u64,
    files_added: u64,
    files_removed: u64,
    /// Commit attempts (more than one when concurrent writers won races).
    attempts: u64,
}

fn outcome(t: &TableRef, o: &DmlOutcome) -> Response {
    Json(DmlResult {
        table: t.to_string(),
        version: o.version,
        inserted: o.inserted,
        updated: o.updated,
        deleted: o.deleted,
        files_added: o.files_added,
        files_removed: o.files_removed,
        attempts: o.attempts,
    })
    .into_response()
}

#[utoipa::path(post, path = "/tables/{layer}/{name}/merge", tag = "tables", params(TablePath), request_body = MergeRequest,
    responses((status = 200, description = "Committed", body = DmlResult), Errors))]
pub(super) async fn merge(
    State(state): State<AppState>,
    Extension(principal): Extension<Arc<Principal>>,
    Path((layer, name)): Path<(String, String)>,
    JsonBody(req): JsonBody<MergeRequest>,
) -> Result<Response> {
    let t = TableRef::new(&layer, &name)?;
    let quote = |c: &str| format!("\"{}\"", c.replace('"', "\"\""));
    let on = match (req.on, req.keys) {
        (Some(on), None) => on,
        (None, Some(keys)) if !keys.is_empty() => keys
            .iter()
            .map(|k| format!("t.{} = s.{}", quote(k), quote(k)))
            .collect::<Vec<_>>()
            .join(" AND "),
        _ => return Err(Error::invalid("give exactly one of on or keys")),
    };
    let clauses = if req.clauses.is_empty() {
        vec![
            Clause {
                when: When::Matched,
                predicate: None,
                action: Action::UpdateAll,
            },
            Clause {
                when: When::NotMatched,
                predicate: None,
                action: Action::InsertAll,
            },
        ]
    } else {
        req.clauses
            .into_iter()
            .map(ClauseBody::into_clause)
            .collect::<Result<_>>()?
    };
    let spec = MergeSpec {
        target_alias: "t".into(),
        source_alias: "s".into(),
        on,
        clauses,
        operation: "MERGE".into(),
    };
    let o = state
        .engine
        .merge(&principal, &t, req.source.into_input()?, &spec)
        .await?;
    Ok(outcome(&t, &o))
}

/// The source and the settings of one SCD2 run (`CALL scd2(…)`'s arguments).
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub(super) struct Scd2Request {
    source: SourceBody,
    /// Business key columns.
    #[serde(default)]
    keys: Vec<String>,
    /// Columns whose change opens a new version; default: every non-key data column.
    tracked: Option<Vec<String>>,
    /// Source column with each change's effective time; default: the commit time.
    effective_time: Option<String>,
    /// Close the current version of keys missing from the source (full snapshots).
    #[serde(default)]
    close_missing: bool,
    /// Default `valid_from`.
    valid_from: Option<String>,
    /// Default `valid_to`.
    valid_to: Option<String>,
    /// Default `is_current`.
    is_current: Option<String>,
    /// Boolean source column marking deletes: true closes the key's current version at
    /// the change's effective time.
    deleted: Option<String>,
    /// A change dated at or before the key's latest version: `fail` (default) or `skip`.
    #[serde(default)]
    on_late: OnLate,
}

impl Scd2Request {
    fn spec(&self) -> Scd2Spec {
        let defaults = Scd2Spec::default();
        Scd2Spec {
            keys: self.keys.clone(),
            tracked: self.tracked.clone(),
            effective_time: self.effective_time.clone(),
            close_missing: self.close_missing,
            valid_from: self.valid_from.clone().unwrap_or(defaults.valid_from),
            valid_to: self.valid_to.clone().unwrap_or(defaults.valid_to),
            is_current: self.is_current.clone().unwrap_or(defaults.is_current),
            deleted: self.deleted.clone(),
            on_late: self.on_late,
        }
    }
}

#[utoipa::path(post, path = "/tables/{layer}/{name}/scd2", tag = "tables", params(TablePath), request_body = Scd2Request,
    responses((status = 200, description = "Committed", body = DmlResult), Errors))]
pub(super) async fn scd2(
    State(state): State<AppState>,
    Extension(principal): Extension<Arc<Principal>>,
    Path((layer, name)): Path<(String, String)>,
    JsonBody(req): JsonBody<Scd2Request>,
) -> Result<Response> {
    let t = TableRef::new(&layer, &name)?;
    let spec = req.spec();
    let o = state
        .engine
        .scd2(&principal, &t, req.source.into_input()?, &spec)
        .await?;
    Ok(outcome(&t, &o))
}

#[derive(Debug, Default, Deserialize, utoipa::ToSchema)]
#[serde(default, deny_unknown_fields)]
pub(super) struct OptimizeRequest {
    zorder: Vec<String>,
    /// Target file size in bytes.
    target_size: Option<u64>,
    /// Partition predicate, as in `OPTIMIZE t WHERE …`.
    #[serde(rename = "where")]
    partition_predicate: Option<String>,
}

#[utoipa::path(post, path = "/tables/{layer}/{name}/optimize", tag = "tables", params(TablePath), request_body = OptimizeRequest,
    responses((status = 200, description = "Compacted", body = OptimizeOutcome), Errors))]
pub(super) async fn optimize(
    State(state): State<AppState>,
    Extension(principal): Extension<Arc<Principal>>,
    Path((layer, name)): Path<(String, String)>,
    JsonBody(req): JsonBody<OptimizeRequest>,
) -> Result<Response> {
    let t = TableRef::new(&layer, &name)?;
    let o = state
        .engine
        .optimize_where(
            &principal,
            &t,
            req.zorder,
            req.partition_predicate.as_deref(),
            req.target_size,
        )
        .await?;
    Ok(Json(o).into_response())
}

#[derive(Debug, Default, Deserialize, utoipa::ToSchema)]
#[serde(default, deny_unknown_fields)]
pub(super) struct VacuumRequest {
    retain_hours: Option<u64>,
    dry_run: bool,
    /// Remove change files deployed models have not consumed yet (they then end
    /// `watermark_expired`).
    #[serde(default)]
    force: bool,
}

#[utoipa::path(post, path = "/tables/{layer}/{name}/vacuum", tag = "tables", params(TablePath), request_body = VacuumRequest,
    responses((status = 200, description = "Files deleted (or, for a dry run, that would be)", body = VacuumOutcome), Errors))]
pub(super) async fn vacuum(
    State(state): State<AppState>,
    Extension(principal): Extension<Arc<Principal>>,
    Path((layer, name)): Path<(String, String)>,
    JsonBody(req): JsonBody<VacuumRequest>,
) -> Result<Response> {
    let t = TableRef::new(&layer, &name)?;
    let o = state
        .engine
        .vacuum(&principal, &t, req.retain_hours, req.dry_run, req.force)
        .await?;
    Ok(Json(o).into_response())
}

#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub(super) struct RestoreRequest {
    version: Option<u64>,
    /// RFC 3339 (or `YYYY-MM-DD[ HH:MM:SS]`, UTC).
    timestamp: Option<String>,
}

#[utoipa::path(post, path = "/tables/{layer}/{name}/restore", tag = "tables", params(TablePath), request_body = RestoreRequest,
    responses((status = 200, description = "Restored in one new commit", body = RestoreOutcome), Errors))]
pub(super) async fn restore(
    State(state): State<AppState>,
    Extension(principal): Extension<Arc<Principal>>,
    Path((layer, name)): Path<(String, String)>,
    JsonBody(req): JsonBody<RestoreRequest>,
) -> Result<Response> {
    let t = TableRef::new(&layer, &name)?;
    let to = match (req.version, req.timestamp) {
        (Some(v), None) => RestoreTo::Version(v),
        (None, Some(ts)) => RestoreTo::Timestamp(crate::engine::sql::parse_timestamp(&ts)?),
        _ => return Err(Error::invalid("give exactly one of version or timestamp")),
    };
    let o = state.engine.restore(&principal, &t, to).await?;
    Ok(Json(o).into_response())
}
