//! MERGE, UPDATE and DELETE through delta-rs, with the writer's row filter enforced.
//!
//! ```text
//! spec (from SQL or REST) + source DataFrame (planned in the principal's secure session)
//!   → expressions planned against target ⋈ source (aliases t / s)
//!   → row filter F of the writer on the target (Postgres RLS semantics):
//!       ON      := on AND F(t)            hidden target rows never match
//!       BY SOURCE clauses  AND F(t)       hidden target rows are never touched
//!       every user expression (ON, clause conditions, values) is evaluated only on rows
//!       inside F, or on source rows (policy::visible): no error oracle on hidden rows
//!       UPDATE / INSERT values wrapped in strata_with_check(F(row as written), …)
//!   → delta-rs merge / update / delete: only files with matches are rewritten
//!   → commit (principal, operation, commit id); a lost race is re-planned and retried
//! ```
//!
//! Column masks: a writer whose reads of the target are masked cannot UPDATE/DELETE/MERGE
//! it (its conditions would see values it must not see); the caller refuses that.

use std::collections::HashMap;
use std::sync::Arc;

use datafusion::common::{DFSchema, ScalarValue};
use datafusion::execution::context::SessionState;
use datafusion::logical_expr::{Expr, lit};
use datafusion::prelude::DataFrame;
use deltalake::DeltaTable;
use deltalake::kernel::Transaction;
use deltalake::kernel::transaction::CommitProperties;
use serde::{Deserialize, Serialize};

use crate::error::{Error, ErrorKind, Result};
use crate::pipelines::commit::{Progress, fence_marker, progress_reached, write_properties};
use crate::security::Principal;
use crate::security::policy::visible::{USER_EXPRESSION_FAILED, Visibility};
use crate::security::policy::write::{WITH_CHECK_VIOLATION, post_image, qualify, with_check};
use crate::storage::{Catalog, TableRef};

/// Attempts of a MERGE/UPDATE/DELETE that keeps losing commit races to conflicting writers.
const MAX_ATTEMPTS: usize = 6;

/// A column added to every MERGE source (true on each source row).
const SOURCE_ROW: &str = "__strata_source_row";

/// Which rows a clause applies to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum When {
    Matched,
    NotMatched,
    NotMatchedBySource,
}

/// What a clause does. Expressions are SQL text over `t.` (target) and `s.` (source).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    /// `UPDATE SET col = expr, …`
    Update(Vec<(String, String)>),
    /// `UPDATE SET *`: every target column from the source column of the same name.
    UpdateAll,
    Delete,
    /// `INSERT (cols) VALUES (exprs)`; columns left out are NULL.
    Insert(Vec<(String, String)>),
    /// `INSERT *`
    InsertAll,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Clause {
    pub when: When,
    pub predicate: Option<String>,
    pub action: Action,
}

/// A MERGE, independent of how it was written (SQL or REST).
#[derive(Debug, Clone)]
pub struct MergeSpec {
    pub target_alias: String,
    pub source_alias: String,
    pub on: String,
    pub clauses: Vec<Clause>,
    /// The operation the commit records (`MERGE`, `SCD2`).
    pub operation: String,
}

/// Who changes which table, in which session, under which row filter.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Dml<'a> {
    pub catalog: &'a Catalog,
    pub table: &'a TableRef,
    pub principal: &'a Principal,
    /// The session delta-rs plans and runs in (`SessionFactory::dml_session`).
    pub state: &'a SessionState,
    /// The writer's row filter on `table` (unqualified columns); `None` without one.
    pub filter: Option<&'a Expr>,
    /// Values of `$n` placeholders in the expressions.
    pub params: &'a [ScalarValue],
    /// Progress markers committed with the change (flows); empty for a user's statement.
    pub progress: &'a Progress,
}

/// What a MERGE, UPDATE or DELETE did.
#[derive(Debug, Clone, Default, Serialize)]
pub struct DmlOutcome {
    pub version: u64,
    pub inserted: u64,
    pub updated: u64,
    pub deleted: u64,
    pub files_added: u64,
    pub files_removed: u64,
    /// Attempts it took (1 unless a concurrent commit conflicted).
    pub attempts: u64,
    /// Late changes skipped (SCD2 with `on_late = skip`).
    #[serde(skip)]
    pub skipped: u64,
    /// The table already held the progress markers (a concurrent runner committed this
    /// range): nothing was written.
    #[serde(skip)]
    pub duplicate: bool,
}

impl DmlOutcome {
    pub fn affected(&self) -> u64 {
        self.inserted + self.updated + self.deleted
    }
}

/// Plans one SQL expression against `schema` and binds `$n` placeholders to `params` as
/// typed literals.
fn plan_expr(
    state: &SessionState,
    sql: &str,
    schema: &DFSchema,
    params: &[ScalarValue],
    what: &str,
) -> Result<Expr> {
    use datafusion::common::tree_node::{Transformed, TreeNode};
    crate::security::expression::check_expression_text(sql)?;
    // The SQL planner names function calls with aliases inside the tree (`length(x)`), which
    // delta-rs cannot write into the commit's operation parameters: drop them.
    let expr = state
        .create_logical_expr(sql, schema)
        .map(|e| e.unalias_nested().data)
        .map_err(|e| {
            let e = Error::from(e);
            match e.kind() {
                ErrorKind::Internal | ErrorKind::Unavailable => e,
                _ => Error::invalid(format!("in {what} `{sql}`: {}", e.client_message(""))),
            }
        })?;
    let bound = expr.transform(|e| match e {
        Expr::Placeholder(p) => {
            let value =
                p.id.strip_prefix('$')
                    .and_then(|n| n.parse::<usize>().ok())
                    .and_then(|n| n.checked_sub(1))
                    .and_then(|i| params.get(i))
                    .ok_or_else(|| {
                        datafusion::error::DataFusionError::Plan(format!(
                            "no value bound for parameter {}",
                            p.id
                        ))
                    })?;
            Ok(Transformed::yes(lit(value.clone())))
        }
        other => Ok(Transformed::no(other)),
    })?;
    Ok(bound.data)
}

fn fenced(props: CommitProperties, fence: Option<Transaction>) -> CommitProperties {
    match fence {
        Some(mark) => props.with_application_transaction(mark),
        None => props,
    }
}

/// Re-plans and re-runs `op` on a fresh snapshot while it loses commit races. Each attempt
/// first checks `progress`: once the table holds it, the change was committed (by a
/// concurrent runner) and is not applied again; and (runs the scheduler started) the
/// lease's fencing marker, which `op` commits with its change when it is `Some`.
async fn with_retries<F, Fut>(
    catalog: &Catalog,
    t: &TableRef,
    progress: &Progress,
    op: F,
) -> Result<DmlOutcome>
where
    F: Fn(DeltaTable, Option<Transaction>) -> Fut,
    Fut: std::future::Future<Output = Result<(DeltaTable, DmlOutcome)>>,
{
    let mut attempt = 1;
    loop {
        let table = catalog.load(t).await?;
        if progress_reached(&table, progress).await? {
            return Ok(DmlOutcome {
                version: table.version().unwrap_or(0),
                attempts: attempt as u64,
                duplicate: true,
                ..DmlOutcome::default()
            });
        }
        let fence = fence_marker(t, &table).await?;
        match op(table, fence).await {
            Ok((table, mut outcome)) => {
                catalog.remember(t, &table).await;
                outcome.version = table.version().unwrap_or(0);
                outcome.attempts = attempt as u64;
                return Ok(outcome);
            }
            Err(e) if e.kind() == ErrorKind::Conflict && attempt < MAX_ATTEMPTS => {
                tracing::info!(table = %t, attempt, error = %e, "commit conflict, re-planning");
                crate::telemetry::metrics().replans.inc();
                // Jittered backoff, so writers that collided do not collide again in step.
                let jitter = rand::random_range(0..20 * attempt as u64);
                tokio::time::sleep(std::time::Duration::from_millis(
                    10 * attempt as u64 + jitter,
                ))
                .await;
                attempt += 1;
            }
            Err(e) if e.kind() == ErrorKind::Conflict => {
                return Err(Error::Conflict(format!(
                    "{e} (gave up after {MAX_ATTEMPTS} attempts against concurrent writers; retry later)"
                )));
            }
            Err(e) => return Err(e),
        }
    }
}

fn target_columns(table: &DeltaTable) -> Result<Vec<(String, arrow::datatypes::DataType)>> {
    let schema = table.snapshot()?.snapshot().arrow_schema();
    Ok(schema
        .fields()
        .iter()
        .map(|f| (f.name().clone(), f.data_type().clone()))
        .collect())
}

fn column_set(
    t: &TableRef,
    columns: &[(String, arrow::datatypes::DataType)],
    assignments: &[(String, String)],
) -> Result<()> {
    let mut seen = std::collections::HashSet::new();
    for (c, _) in assignments {
        if !columns.iter().any(|(name, _)| name == c) {
            return Err(Error::invalid(format!("{t} has no column {c}")));
        }
        if !seen.insert(c) {
            return Err(Error::invalid(format!("column {c} is assigned twice")));
        }
    }
    Ok(())
}

/// Runs a MERGE of `source` into `t`. `filter` is the writer's row filter on `t` (unqualified
/// columns), `None` when it has none.
pub(crate) async fn merge(
    dml: &Dml<'_>,
    source: DataFrame,
    spec: &MergeSpec,
) -> Result<DmlOutcome> {
    let Dml {
        catalog,
        table: t,
        principal: p,
        state,
        filter,
        params,
        progress,
    } = *dml;
    if spec.clauses.is_empty() {
        return Err(Error::invalid("MERGE needs at least one WHEN clause"));
    }
    if spec.target_alias == spec.source_alias {
        return Err(Error::invalid(
            "MERGE target and source need different aliases",
        ));
    }
    let source_columns: Vec<String> = source
        .schema()
        .fields()
        .iter()
        .map(|f| f.name().clone())
        .collect();
    if source_columns.iter().any(|c| c == SOURCE_ROW) {
        return Err(Error::invalid(format!(
            "the MERGE source may not have a column named {SOURCE_ROW}"
        )));
    }
    // Marks rows that come from the source, so conditions of NOT MATCHED clauses can be
    // limited to them (rows of hidden target rows have no source side).
    let source = source.with_column(SOURCE_ROW, lit(true))?;
    with_retries(catalog, t, progress, |table, fence| {
        let source = source.clone();
        let source_columns = source_columns.clone();
        async move {
            let columns = target_columns(&table)?;
            let (ta, sa) = (spec.target_alias.as_str(), spec.source_alias.as_str());
            // Expressions are planned against target ⋈ source, as delta-rs does.
            let target_schema = DFSchema::try_from_qualified_schema(
                ta,
                &table.snapshot()?.snapshot().arrow_schema(),
            )?;
            let join_schema = target_schema.join(&DFSchema::try_from_qualified_schema(
                sa,
                source.schema().as_arrow(),
            )?)?;
            let plan = |sql: &str| -> Result<Expr> {
                plan_expr(state, sql, &join_schema, params, "MERGE expression")
            };
            // User expressions see only target rows inside the writer's filter
            // (policy::visible): hidden target rows never match, never satisfy a clause,
            // and no expression of the statement is evaluated on them. Without a filter the
            // same guard makes a failing user expression a client error.
            let filter_t = filter
                .map(|f| qualify(f, ta))
                .transpose()?
                .unwrap_or_else(|| lit(true));
            let visibility = Visibility {
                table: t,
                schema: &join_schema,
                state,
            };
            let from_source_row = datafusion::prelude::col(format!("{sa}.{SOURCE_ROW}")).is_true();
            let on = visibility.predicate(&filter_t, Some(plan(&spec.on)?))?;
            let from_source = |c: &str| -> Result<Expr> {
                if source_columns.iter().any(|s| s == c) {
                    Ok(datafusion::prelude::col(format!("{sa}.{c}")))
                } else {
                    Err(Error::invalid(format!(
                        "UPDATE SET * / INSERT * need source column {c} (the target has it)"
                    )))
                }
            };
            let mut builder = table
                .merge(source, on)
                .with_source_alias(sa)
                .with_target_alias(ta)
                .with_session_state(Arc::new(state.clone()))
                .with_commit_properties(progress.iter().cloned().chain(fence).fold(
                    write_properties(p, t, &spec.operation),
                    |props, mark| props.with_application_transaction(mark),
                ));
            for clause in &spec.clauses {
                let user_predicate = clause.predicate.as_deref().map(plan).transpose()?;
                // The rows a clause may be evaluated on: matched and by-source rows must be
                // inside the filter; not-matched rows are source rows.
                let condition = match clause.when {
                    When::Matched | When::NotMatchedBySource => filter_t.clone(),
                    When::NotMatched => from_source_row.clone(),
                };
                let predicate = match clause.when {
                    When::NotMatchedBySource if filter.is_some() => {
                        Some(visibility.predicate(&condition, user_predicate)?)
                    }
                    _ => user_predicate
                        .map(|p| visibility.predicate_within(&condition, p))
                        .transpose()?,
                };
                let value = |sql: &str| visibility.value(&condition, plan(sql)?);
                // (column, new value) in assignment order.
                let assignments: Vec<(String, Expr)> = match &clause.action {
                    Action::Update(set) | Action::Insert(set) => {
                        column_set(t, &columns, set)?;
                        set.iter()
                            .map(|(c, e)| Ok((c.clone(), value(e)?)))
                            .collect::<Result<_>>()?
                    }
                    Action::UpdateAll | Action::InsertAll => columns
                        .iter()
                        .map(|(c, _)| Ok((c.clone(), from_source(c)?)))
                        .collect::<Result<_>>()?,
                    Action::Delete => Vec::new(),
                };
                let inserting = matches!(clause.action, Action::Insert(_) | Action::InsertAll);
                let assignments = guard_assignments(t, filter, ta, &columns, assignments, inserting)?;
                builder = match (&clause.when, &clause.action) {
                    (_, Action::Delete) => {
                        let delete = |d: deltalake::operations::merge::DeleteBuilder| match &predicate {
                            Some(p) => d.predicate(p.clone()),
                            None => d,
                        };
                        match clause.when {
                            When::Matched => builder.when_matched_delete(delete)?,
                            When::NotMatchedBySource => builder.when_not_matched_by_source_delete(delete)?,
                            When::NotMatched => {
                                return Err(Error::invalid(
                                    "WHEN NOT MATCHED can only INSERT",
                                ));
                            }
                        }
                    }
                    (When::Matched | When::NotMatchedBySource, Action::Update(_) | Action::UpdateAll) => {
                        let update = |mut u: deltalake::operations::merge::UpdateBuilder| {
                            if let Some(p) = &predicate {
                                u = u.predicate(p.clone());
                            }
                            for (c, e) in &assignments {
                                u = u.update(c.as_str(), e.clone());
                            }
                            u
                        };
                        if clause.when == When::Matched {
                            builder.when_matched_update(update)?
                        } else {
                            if matches!(clause.action, Action::UpdateAll) {
                                return Err(Error::invalid(
                                    "WHEN NOT MATCHED BY SOURCE has no source row: UPDATE SET * is not possible",
                                ));
                            }
                            builder.when_not_matched_by_source_update(update)?
                        }
                    }
                    (When::NotMatched, Action::Insert(_) | Action::InsertAll) => {
                        builder.when_not_matched_insert(|mut i| {
                            if let Some(p) = &predicate {
                                i = i.predicate(p.clone());
                            }
                            for (c, e) in &assignments {
                                i = i.set(c.as_str(), e.clone());
                            }
                            i
                        })?
                    }
                    (When::NotMatched, _) => {
                        return Err(Error::invalid("WHEN NOT MATCHED can only INSERT"));
                    }
                    (_, Action::Insert(_) | Action::InsertAll) => {
                        return Err(Error::invalid(
                            "INSERT is only allowed in WHEN NOT MATCHED",
                        ));
                    }
                };
            }
            let (table, metrics) = builder.await.map_err(dml_error)?;
            Ok((
                table,
                DmlOutcome {
                    inserted: metrics.num_target_rows_inserted as u64,
                    updated: metrics.num_target_rows_updated as u64,
                    deleted: metrics.num_target_rows_deleted as u64,
                    files_added: metrics.num_target_files_added as u64,
                    files_removed: metrics.num_target_files_removed as u64,
                    ..Default::default()
                },
            ))
        }
    })
    .await
}

/// Wraps the first assignment in the writer's WITH CHECK (see the module docs). For an
/// update, columns not assigned keep the target's value; for an insert they are NULL.
fn guard_assignments(
    t: &TableRef,
    filter: Option<&Expr>,
    target_alias: &str,
    columns: &[(String, arrow::datatypes::DataType)],
    mut assignments: Vec<(String, Expr)>,
    inserting: bool,
) -> Result<Vec<(String, Expr)>> {
    let Some(filter) = filter else {
        return Ok(assignments);
    };
    if assignments.is_empty() {
        if !inserting {
            return Ok(assignments);
        }
        // INSERT with no columns: a row of NULLs, still checked.
        let (c, dt) = columns
            .first()
            .ok_or_else(|| Error::internal("table without columns"))?;
        assignments.push((c.clone(), lit(ScalarValue::try_from(dt)?)));
    }
    let new: HashMap<&str, &Expr> = assignments.iter().map(|(c, e)| (c.as_str(), e)).collect();
    let post = post_image(filter, &|c: &str| match new.get(c) {
        Some(e) => (*e).clone(),
        None if inserting => {
            let dt = columns
                .iter()
                .find(|(name, _)| name == c)
                .map(|(_, dt)| dt.clone())
                .unwrap_or(arrow::datatypes::DataType::Null);
            lit(ScalarValue::try_from(&dt).unwrap_or(ScalarValue::Null))
        }
        None => datafusion::prelude::col(format!("{target_alias}.{c}")),
    })?;
    if let Some(first) = assignments.first_mut() {
        first.1 = with_check(t, post, first.1.clone());
    }
    Ok(assignments)
}

/// delta-rs flattens errors raised while it executes (a target row matched twice, our
/// WITH CHECK) into `DeltaTableError::Generic` text; give them their kind back.
fn dml_error(e: deltalake::DeltaTableError) -> Error {
    let msg = e.to_string();
    if msg.contains("multiple source rows") {
        return Error::invalid(
            "MERGE matched a target row with more than one source row; make the source unique on the ON keys (nothing was committed)",
        );
    }
    if let Some(at) = msg.find(WITH_CHECK_VIOLATION) {
        let start = msg[..at].rfind(": ").map_or(0, |i| i + 2);
        return Error::PermissionDenied(msg[start..].to_string());
    }
    if let Some(at) = msg.find(USER_EXPRESSION_FAILED) {
        let start = msg[..at]
            .rfind("an expression of this statement")
            .unwrap_or(0);
        return Error::InvalidArgument(msg[start..].to_string());
    }
    e.into()
}

/// UPDATE t SET … [WHERE …], touching only rows inside the writer's filter and keeping
/// every updated row inside it.
pub(crate) async fn update(
    dml: &Dml<'_>,
    set: &[(String, String)],
    predicate: Option<&str>,
) -> Result<DmlOutcome> {
    let Dml {
        catalog,
        table: t,
        principal: p,
        state,
        filter,
        params,
        progress,
    } = *dml;
    if set.is_empty() {
        return Err(Error::invalid("UPDATE needs at least one SET"));
    }
    with_retries(catalog, t, progress, |table, fence| async move {
        let columns = target_columns(&table)?;
        column_set(t, &columns, set)?;
        let schema =
            DFSchema::try_from(table.snapshot()?.snapshot().arrow_schema().as_ref().clone())?;
        let plan = |sql: &str| -> Result<Expr> {
            plan_expr(state, sql, &schema, params, "UPDATE expression")
        };
        let visibility = Visibility {
            table: t,
            schema: &schema,
            state,
        };
        let condition = filter.cloned().unwrap_or_else(|| lit(true));
        let user_predicate = predicate.map(plan).transpose()?;
        let pred = match (filter, user_predicate) {
            (None, None) => None,
            (_, user_predicate) => Some(visibility.predicate(&condition, user_predicate)?),
        };
        let assignments: Vec<(String, Expr)> = set
            .iter()
            .map(|(c, e)| Ok((c.clone(), visibility.value(&condition, plan(e)?)?)))
            .collect::<Result<_>>()?;
        let assignments = match filter {
            Some(f) => {
                let new: HashMap<&str, &Expr> =
                    assignments.iter().map(|(c, e)| (c.as_str(), e)).collect();
                let post = post_image(f, &|c: &str| match new.get(c) {
                    Some(e) => (*e).clone(),
                    None => datafusion::prelude::col(c),
                })?;
                let mut a = assignments.clone();
                if let Some(first) = a.first_mut() {
                    first.1 = with_check(t, post, first.1.clone());
                }
                a
            }
            None => assignments,
        };
        let mut builder = table
            .update()
            .with_session_state(Arc::new(state.clone()))
            .with_commit_properties(fenced(write_properties(p, t, "UPDATE"), fence));
        if let Some(pred) = pred {
            builder = builder.with_predicate(pred);
        }
        for (c, e) in assignments {
            builder = builder.with_update(c.as_str(), e);
        }
        let (table, metrics) = builder.await.map_err(dml_error)?;
        Ok((
            table,
            DmlOutcome {
                updated: metrics.num_updated_rows as u64,
                files_added: metrics.num_added_files as u64,
                files_removed: metrics.num_removed_files as u64,
                ..Default::default()
            },
        ))
    })
    .await
}

/// DELETE FROM t [WHERE …], deleting only rows inside the writer's filter.
pub(crate) async fn delete(dml: &Dml<'_>, predicate: Option<&str>) -> Result<DmlOutcome> {
    let Dml {
        catalog,
        table: t,
        principal: p,
        state,
        filter,
        params,
        progress,
    } = *dml;
    with_retries(catalog, t, progress, |table, fence| async move {
        let schema =
            DFSchema::try_from(table.snapshot()?.snapshot().arrow_schema().as_ref().clone())?;
        let pred = predicate
            .map(|sql| plan_expr(state, sql, &schema, params, "DELETE condition"))
            .transpose()?;
        let pred = match (filter, pred) {
            (None, None) => None,
            (filter, pred) => Some(
                Visibility {
                    table: t,
                    schema: &schema,
                    state,
                }
                .predicate(filter.unwrap_or(&lit(true)), pred)?,
            ),
        };
        let mut builder = table
            .delete()
            .with_session_state(Arc::new(state.clone()))
            .with_commit_properties(fenced(write_properties(p, t, "DELETE"), fence));
        if let Some(pred) = pred {
            builder = builder.with_predicate(pred);
        }
        let (table, metrics) = builder.await.map_err(dml_error)?;
        Ok((
            table,
            DmlOutcome {
                deleted: metrics.num_deleted_rows.unwrap_or(0) as u64,
                files_added: metrics.num_added_files as u64,
                files_removed: metrics.num_removed_files as u64,
                ..Default::default()
            },
        ))
    })
    .await
}
