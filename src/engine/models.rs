//! Model runs (the flows of `crate::flows`): a model's SELECT planned in the run-as
//! principal's secure session, and its rows committed with the run's progress markers.
//!
//! The engine knows nothing of pipelines: it receives a SELECT whose sources are already
//! pinned to versions, how to write it, and the `txn` markers that go into the same commit
//! (PLATFORM P1). Privileges, row filters and WITH CHECK apply exactly as to a user's
//! INSERT, INSERT OVERWRITE or MERGE.

use std::collections::BTreeMap;
use std::sync::Arc;

use arrow::array::{Array, RecordBatch};
use arrow::datatypes::{Schema, SchemaRef};
use datafusion::common::ScalarValue;
use datafusion::execution::context::SessionState;
use datafusion::logical_expr::{Expr, LogicalPlan};
use datafusion::prelude::DataFrame;
use futures::stream::BoxStream;
use futures::{StreamExt, TryStreamExt};

use super::lineage::LineageRecord;
use super::openlineage::Written;
use super::params::{NamedParams, bind_named};
use super::statement::{delta_compatible, project_onto};
use super::streamed::Shape;
use super::{Engine, Statement, dml, expect, lineage, sql};
use crate::error::{Error, Result};
use crate::pipelines::commit::{self, Progress, WriteInput, WriteMode};
use crate::pipelines::merge::MergeSpec;
use crate::pipelines::scd2::Scd2Spec;
use crate::security::{AccessControl, Principal, Privilege};
use crate::storage::catalog::TableSpec;
use crate::storage::types::ColumnSpec;
use crate::storage::{TableRef, properties};

pub(crate) use crate::storage::changes::CHANGE_COLUMNS;

/// How a model writes its table.
#[derive(Debug)]
pub(crate) enum ModelWrite {
    Overwrite,
    Append,
    Merge(MergeSpec),
    Scd2(Scd2Spec),
    /// Replaces the rows whose `column` lies in `[start, end)` (a `time_range` batch): every
    /// output row must lie there.
    Replace {
        column: String,
        start: ScalarValue,
        end: ScalarValue,
    },
}

/// One commit of a model run.
#[derive(Debug)]
pub(crate) struct ModelCommit<'a> {
    pub(crate) table: &'a TableRef,
    /// The SELECT, its sources pinned.
    pub(crate) sql: &'a str,
    /// Values of its named placeholders.
    pub(crate) params: NamedParams<'a>,
    pub(crate) write: ModelWrite,
    /// Committed with the rows.
    pub(crate) progress: &'a Progress,
    /// Columns the output has and the table lacks are added in the same commit; otherwise
    /// they fail the run.
    pub(crate) add_columns: bool,
    /// A full refresh (with [`ModelWrite::Overwrite`]): the table's schema becomes this one,
    /// the output cast onto it, and `resets` (the watermarks) are set in the commit
    /// whatever they were.
    pub(crate) schema: Option<SchemaRef>,
    pub(crate) resets: &'a Progress,
    /// Expectations evaluated over the output before the commit (`engine::expect`).
    pub(crate) checks: Option<super::expect::Checks<'a>>,
}

/// What a model commit did.
#[derive(Debug, Clone, Default)]
pub(crate) struct ModelOutcome {
    /// The table version after the commit.
    pub(crate) version: u64,
    pub(crate) rows_out: u64,
    /// The table already held this progress (a concurrent run committed it): nothing
    /// written.
    pub(crate) duplicate: bool,
    /// Changes left out as out of order (`scd2` with `on_out_of_order = skip`).
    pub(crate) skipped: u64,
    /// What the expectations did (when the model has any). A refused batch committed
    /// nothing.
    pub(crate) quality: Option<super::expect::BatchQuality>,
}

impl Engine {
    pub(super) async fn plan_model(
        &self,
        principal: &Arc<Principal>,
        access: &Arc<AccessControl>,
        select: &str,
        params: NamedParams<'_>,
    ) -> Result<(SessionState, LogicalPlan)> {
        let Statement::Query(ast) = sql::parse(select, &self.default_layer)? else {
            return Err(Error::invalid("a model is one SELECT"));
        };
        let state = self.sessions.session(principal, access);
        let plan = bind_named(self.plan_unbound(&state, *ast).await?, params)?;
        Ok((state, plan))
    }

    /// A model's SELECT planned for `principal`, once, for what the deploy plan and a run
    /// need to know about it (its columns, the table it makes, masked reads).
    pub(crate) async fn plan_select(
        &self,
        principal: &Arc<Principal>,
        select: &str,
        params: NamedParams<'_>,
    ) -> Result<PlannedModel> {
        let access = self.access().await?;
        let (state, plan) = self.plan_model(principal, &access, select, params).await?;
        Ok(PlannedModel { state, plan })
    }

    /// Creates a model's table from `schema`, with the change data feed on (so models
    /// downstream read it incrementally). Created by the flow, not by the run-as principal:
    /// the deployer's MANAGE on the layer allowed it. A concurrent creator is no error.
    pub(crate) async fn create_model_table(
        &self,
        principal: &Principal,
        t: &TableRef,
        schema: &Schema,
        description: Option<&str>,
        comments: &BTreeMap<String, String>,
    ) -> Result<()> {
        let columns = schema
            .fields()
            .iter()
            .map(|f| {
                Ok(ColumnSpec {
                    name: f.name().clone(),
                    data_type: commit::arrow_type_name(f.data_type())?,
                    nullable: true,
                    description: comments.get(f.name()).cloned(),
                })
            })
            .collect::<Result<Vec<_>>>()?;
        let spec = TableSpec {
            columns,
            partition_by: Vec::new(),
            description: description.map(str::to_string),
            properties: [(properties::CHANGE_DATA_FEED.to_string(), "true".to_string())].into(),
        };
        let props = commit::commit_properties(principal, "CREATE MODEL TABLE");
        match self
            .catalog
            .create(t, &spec, &principal.subject, props)
            .await
        {
            Ok(_) | Err(Error::AlreadyExists(_)) => Ok(()),
            Err(e) => Err(e),
        }
    }

    /// Plans `c.sql` for `principal` and commits its rows with `c.progress`.
    pub(crate) async fn commit_model(
        &self,
        principal: &Arc<Principal>,
        c: ModelCommit<'_>,
    ) -> Result<ModelOutcome> {
        // Held until the commit ends: the statement's execution slot, after every waiting
        // query (engine::limits).
        let _slot = self.admission.admit_model().await?;
        self.commit_model_admitted(principal, c)
            .await
            .map_err(|e| self.in_pipeline_pool(e))
    }

    /// A DataFusion allocation refused in the pipeline pool says which pool and setting.
    fn in_pipeline_pool(&self, e: Error) -> Error {
        use datafusion::execution::memory_pool::MemoryLimit;
        if e.kind() != crate::error::ErrorKind::ResourceExhausted
            || matches!(e, Error::ResourceExhausted(_))
        {
            return e;
        }
        let limit = match self.pipeline_runtime.memory_pool.memory_limit() {
            MemoryLimit::Finite(n) => format!(" = {n} bytes"),
            _ => String::new(),
        };
        Error::ResourceExhausted(format!(
            "{e} (the pipeline memory pool, scheduler.pipeline_memory_bytes{limit}: raise it, or give the model smaller batches)"
        ))
    }

    async fn commit_model_admitted(
        &self,
        principal: &Arc<Principal>,
        c: ModelCommit<'_>,
    ) -> Result<ModelOutcome> {
        let access = self.access().await?;
        let (state, plan) = self.plan_model(principal, &access, c.sql, c.params).await?;
        // Its commits (the quarantine's included) carry what the model's SELECT reads; a
        // merge or scd2 model's write replaces it with the MERGE's own (`engine::dml`).
        let lineage = self.lineage(|| lineage::of_rows(&state, &plan));
        let (table, sql) = (c.table.clone(), c.sql.to_string());
        let write = self.checked_write(principal, &access, state, plan, c);
        self.attached(&table, "MODEL RUN", &lineage, Some(sql), write)
            .await
    }

    /// The model's rows through its expectations, then written. A merge or scd2 model's
    /// rows are judged first and handed to its MERGE as a plan; the others are judged as
    /// they stream to the write ([`Engine::write_model`]).
    async fn checked_write(
        &self,
        principal: &Arc<Principal>,
        access: &Arc<AccessControl>,
        state: SessionState,
        plan: LogicalPlan,
        c: ModelCommit<'_>,
    ) -> Result<ModelOutcome> {
        let merges = matches!(c.write, ModelWrite::Merge(_) | ModelWrite::Scd2(_));
        let (plan, quality) = match &c.checks {
            Some(checks) if merges && !checks.rules.is_empty() => {
                let (plan, quality) = self
                    .apply_expectations(
                        principal, access, &state, plan, checks, c.table, c.progress,
                    )
                    .await?;
                if quality.refused.is_some() {
                    return Ok(ModelOutcome {
                        quality: Some(quality),
                        ..ModelOutcome::default()
                    });
                }
                (plan, Some(quality))
            }
            _ => (plan, None),
        };
        let mut outcome = self.write_model(principal, access, state, plan, c).await?;
        if quality.is_some() {
            outcome.quality = quality;
        }
        Ok(outcome)
    }

    /// Writes a model's planned output as `c.write` says.
    async fn write_model(
        &self,
        principal: &Arc<Principal>,
        access: &Arc<AccessControl>,
        state: SessionState,
        plan: LogicalPlan,
        c: ModelCommit<'_>,
    ) -> Result<ModelOutcome> {
        let mut replace = None;
        let mode = match c.write {
            ModelWrite::Merge(spec) => {
                let outcome = self
                    .run_merge(
                        principal,
                        access,
                        c.table,
                        dml::MergeSource::Plan(plan),
                        &spec,
                        dml::Bound {
                            params: &[],
                            progress: c.progress,
                        },
                    )
                    .await?;
                return Ok(ModelOutcome::of(&outcome));
            }
            ModelWrite::Scd2(spec) => {
                let outcome = self
                    .run_scd2(
                        principal,
                        access,
                        c.table,
                        dml::MergeSource::Plan(plan),
                        &spec,
                        c.progress,
                    )
                    .await?;
                return Ok(ModelOutcome::of(&outcome));
            }
            ModelWrite::Append => WriteMode::Append,
            ModelWrite::Overwrite => WriteMode::Overwrite,
            ModelWrite::Replace { column, start, end } => {
                replace = Some(TimeRange::new(column, start, end)?);
                WriteMode::Overwrite
            }
        };
        access.check(principal, Privilege::Insert, c.table)?;
        if mode == WriteMode::Overwrite {
            access.check(principal, Privilege::Modify, c.table)?;
        }
        // The model's output as it planned: what its expectations' checks are written over.
        let model = Arc::clone(plan.schema());
        let plan = delta_compatible(plan)?;
        let output = stored_schema(&plan);
        let current = self.catalog.load(c.table).await?;
        let replacing = c.schema.is_some() && mode == WriteMode::Overwrite && replace.is_none();
        let mut target = match &c.schema {
            Some(schema) if replacing => Arc::clone(schema),
            _ => current.snapshot()?.snapshot().arrow_schema(),
        };
        let added = new_columns(&target, &output);
        if !added.is_empty() && !replacing {
            if !c.add_columns {
                return Err(Error::invalid(format!(
                    "the model's output has columns {} lacks: {}; set on_schema_change = \"append_new_columns\" to add them",
                    c.table,
                    added.join(", ")
                )));
            }
            target = crate::ingest::with_new_columns(&target, &output)?.unwrap_or(target);
        }
        let names: Vec<String> = output.fields().iter().map(|f| f.name().clone()).collect();
        let plan = project_onto(keep_columns(plan, &names)?, &target, &names)?;
        let checks = c.checks.filter(|k| !k.rules.is_empty());
        let plan = match &checks {
            // Judged over the values as written, in the pass that feeds the write.
            Some(k) => {
                let exprs = expect::check_columns(&state, &model, plan.schema(), k.rules)?;
                expect::with_checks(plan, exprs)?
            }
            None => plan,
        };
        let predicate = match &replace {
            Some(range) => Some(range.predicate(&target)?),
            None => None,
        };
        let mut rows: BoxStream<'static, Result<RecordBatch>> = DataFrame::new(state, plan)
            .execute_stream()
            .await?
            .map_err(Error::from)
            .boxed();
        let finish = match &checks {
            Some(k) => {
                let data = names
                    .iter()
                    .filter_map(|n| target.index_of(n).ok())
                    .collect();
                let judge = self
                    .start_judging(principal, access, k, c.table, c.progress, &target, data)
                    .await?;
                let (judged, finish) = expect::judged(judge, rows);
                rows = judged;
                Some(finish)
            }
            None => None,
        };
        if let Some(range) = replace {
            // Every row inside the batch's range, checked as it passes.
            rows = rows
                .and_then(move |b| std::future::ready(range.check(&b).map(|_| b)))
                .boxed();
        }
        let write = async {
            let mut streamed = self
                .streamed(
                    access,
                    principal,
                    c.table,
                    mode,
                    &target,
                    Shape::Enforce,
                    rows,
                )
                .await?;
            let input = match streamed.take_input() {
                // Nothing new passed the model (e.g. the batch's versions hold no rows): the
                // commit still moves the watermarks; delta-rs refuses a write without
                // batches.
                WriteInput::Batches(b) if b.is_empty() => {
                    WriteInput::Batches(vec![RecordBatch::new_empty(Arc::clone(&target))])
                }
                input => input,
            };
            let written = match predicate {
                None if replacing => {
                    commit::replace_all(
                        &self.catalog,
                        c.table,
                        principal,
                        input,
                        "MODEL FULL REFRESH",
                        c.progress,
                        c.resets,
                    )
                    .await
                }
                None => {
                    commit::write_with_progress(
                        &self.catalog,
                        c.table,
                        principal,
                        input,
                        mode,
                        None,
                        "MODEL RUN",
                        c.progress,
                    )
                    .await
                }
                Some(predicate) => {
                    commit::replace_where(
                        &self.catalog,
                        c.table,
                        principal,
                        input,
                        predicate,
                        "MODEL RUN",
                        c.progress,
                    )
                    .await
                }
            };
            written.map_err(|e| streamed.failure(e))
        };
        let judging = async {
            match finish {
                Some(f) => f.run(self, principal, access, c.table, c.progress).await,
                None => None,
            }
        };
        let (written, quality) = futures::join!(write, judging);
        if let Some(q) = &quality
            && q.refused.is_some()
        {
            return Ok(ModelOutcome {
                quality,
                ..ModelOutcome::default()
            });
        }
        let outcome = written?;
        Ok(ModelOutcome {
            version: outcome.version,
            rows_out: outcome.rows,
            duplicate: outcome.duplicate,
            skipped: 0,
            quality,
        })
    }
}

impl ModelOutcome {
    /// Why an expectation refused the batch (nothing was committed), if it did.
    pub(crate) fn refused(&self) -> Option<&str> {
        self.quality.as_ref().and_then(|q| q.refused.as_deref())
    }

    fn of(o: &crate::pipelines::merge::DmlOutcome) -> ModelOutcome {
        ModelOutcome {
            version: o.version,
            rows_out: o.affected(),
            duplicate: o.duplicate,
            skipped: o.skipped,
            quality: None,
        }
    }
}

/// A time-range batch `[start, end)` of `column`: the rows it may write and the rows its
/// commit replaces.
#[derive(Debug, Clone)]
struct TimeRange {
    column: String,
    start: ScalarValue,
    end: ScalarValue,
    /// The bounds in microseconds.
    lo: i64,
    hi: i64,
}

impl TimeRange {
    fn new(column: String, start: ScalarValue, end: ScalarValue) -> Result<TimeRange> {
        let micros = |v: &ScalarValue| match v {
            ScalarValue::TimestampMicrosecond(Some(x), _) => Ok(*x),
            other => Err(Error::internal(format!("a batch bound is {other}"))),
        };
        let (lo, hi) = (micros(&start)?, micros(&end)?);
        Ok(TimeRange {
            column,
            start,
            end,
            lo,
            hi,
        })
    }

    /// The predicate `start <= column < end` over `target` (what the commit replaces).
    fn predicate(&self, target: &Schema) -> Result<Expr> {
        let column = &self.column;
        let field = target.field_with_name(column).map_err(|_| {
            Error::invalid(format!(
                "the model's output has no time column {column} (time_column names an output column)"
            ))
        })?;
        let typed = |v: &ScalarValue| -> Result<Expr> {
            Ok(datafusion::logical_expr::lit(v.cast_to(field.data_type())?))
        };
        let c = datafusion::logical_expr::col(format!("\"{}\"", column.replace('"', "\"\"")));
        Ok(c.clone()
            .gt_eq(typed(&self.start)?)
            .and(c.lt(typed(&self.end)?)))
    }

    /// Every row of `b` lies in the range: a row outside would be written where the batch
    /// replaces nothing.
    fn check(&self, b: &RecordBatch) -> Result<()> {
        use arrow::datatypes::{DataType, TimeUnit};
        let column = &self.column;
        let Some(col) = b.column_by_name(column) else {
            return Ok(());
        };
        let micros = DataType::Timestamp(TimeUnit::Microsecond, Some("UTC".into()));
        let as_micros = arrow::compute::cast(col, &micros)?;
        let values = as_micros
            .as_any()
            .downcast_ref::<arrow::array::TimestampMicrosecondArray>()
            .ok_or_else(|| Error::internal("timestamp cast"))?;
        for i in 0..values.len() {
            let v = values.is_valid(i).then(|| values.value(i));
            if !v.is_some_and(|v| self.lo <= v && v < self.hi) {
                let shown = v
                    .and_then(chrono::DateTime::from_timestamp_micros)
                    .map_or_else(|| "NULL".to_string(), |t| t.to_rfc3339());
                return Err(Error::invalid(format!(
                    "the model wrote a row with {column} = {shown}, outside its batch [{}, {}); filter its sources with {column} >= $start AND {column} < $end",
                    self.start, self.end
                )));
            }
        }
        Ok(())
    }
}

/// A model's SELECT, planned in its run-as principal's secure session.
#[derive(Debug)]
pub(crate) struct PlannedModel {
    state: SessionState,
    plan: LogicalPlan,
}

impl PlannedModel {
    /// Every output column (change-feed columns included).
    pub(crate) fn columns(&self) -> Vec<String> {
        self.plan
            .schema()
            .fields()
            .iter()
            .map(|f| f.name().clone())
            .collect()
    }

    /// Refuses expectations whose check does not plan over the output as a condition.
    pub(crate) fn check_expectations(&self, rules: &[super::expect::Expectation]) -> Result<()> {
        use datafusion::logical_expr::ExprSchemable;
        for r in rules {
            let bad = |why: String| {
                Error::invalid(format!("expectation {}: check {:?} {why}", r.name, r.check))
            };
            let expr = self
                .state
                .create_logical_expr(&r.check, self.plan.schema())
                .map_err(|e| bad(format!("does not plan over the model's output: {e}")))?;
            let ty = expr
                .get_type(self.plan.schema())
                .map_err(|e| bad(format!("does not plan over the model's output: {e}")))?;
            if !matches!(
                ty,
                arrow::datatypes::DataType::Boolean | arrow::datatypes::DataType::Null
            ) {
                return Err(bad(format!("is of type {ty}, not a condition")));
            }
        }
        Ok(())
    }

    /// The table it produces (change-feed columns left out): for the deploy plan and for
    /// creating the model's table.
    pub(crate) fn table_schema(&self) -> Result<SchemaRef> {
        Ok(stored_schema(&delta_compatible(self.plan.clone())?))
    }

    /// The lineage a batch of the model writing `target` would record: its static lineage,
    /// computed at deploy (`None` with `[lineage] enabled = false`).
    pub(crate) fn lineage(&self, engine: &Engine, target: &TableRef) -> Option<LineageRecord> {
        engine
            .lineage_enabled()
            .then(|| lineage::of_rows(&self.state, &self.plan).record(format!("model {target}")))
    }

    /// The `table.column`s it would read masked: a model that reads them would write masked
    /// values into its table, so it is refused at deploy.
    pub(crate) fn masked_reads(&self) -> Result<Vec<String>> {
        use crate::security::policy::PolicyTable;
        use datafusion::common::tree_node::TreeNodeRecursion;
        use datafusion::datasource::source_as_provider;
        // Optimized, so each scan's projection lists the columns it really reads.
        let plan = self.state.optimize(&self.plan)?;
        let mut out = Vec::new();
        plan.apply_with_subqueries(|node| {
            if let LogicalPlan::TableScan(scan) = node
                && let Ok(provider) = source_as_provider(&scan.source)
            {
                let any: &dyn std::any::Any = provider.as_ref();
                if let Some(t) = any.downcast_ref::<PolicyTable>() {
                    let schema = provider.schema();
                    for i in t.masked_columns() {
                        let read = scan.projection.as_ref().is_none_or(|p| p.contains(&i));
                        let name = format!("{}.{}", t.table(), schema.field(i).name());
                        if read && !out.contains(&name) {
                            out.push(name);
                        }
                    }
                }
            }
            Ok(TreeNodeRecursion::Continue)
        })?;
        Ok(out)
    }
}

/// The schema a model's table stores: the plan's columns without the change feed's.
fn stored_schema(plan: &LogicalPlan) -> SchemaRef {
    let arrow = plan.schema().as_arrow();
    Arc::new(Schema::new(
        arrow
            .fields()
            .iter()
            .filter(|f| !CHANGE_COLUMNS.contains(&f.name().as_str()))
            .cloned()
            .collect::<Vec<_>>(),
    ))
}

/// `plan` with only the columns `names`.
fn keep_columns(plan: LogicalPlan, names: &[String]) -> Result<LogicalPlan> {
    use datafusion::common::Column;
    use datafusion::logical_expr::{Expr, LogicalPlanBuilder};
    let exprs: Vec<Expr> = plan
        .schema()
        .iter()
        .filter(|(_, f)| names.contains(f.name()))
        .map(|(q, f)| Expr::Column(Column::from((q, f))))
        .collect();
    Ok(LogicalPlanBuilder::from(plan).project(exprs)?.build()?)
}

/// Columns of `output` that `target` lacks.
fn new_columns(target: &Schema, output: &Schema) -> Vec<String> {
    output
        .fields()
        .iter()
        .filter(|f| target.field_with_name(f.name()).is_err())
        .map(|f| f.name().clone())
        .collect()
}

/// What a model's batch reports in its OpenLineage COMPLETE event.
impl Written for ModelOutcome {
    fn version(&self) -> Option<u64> {
        Some(self.version)
    }

    fn rows(&self) -> Option<u64> {
        Some(self.rows_out)
    }

    fn assertions(&self) -> Vec<serde_json::Value> {
        let Some(quality) = &self.quality else {
            return Vec::new();
        };
        quality
            .rules
            .iter()
            .map(|r| {
                serde_json::json!({
                    "assertion": "expectation",
                    "name": r.name,
                    "success": r.failed == 0,
                    "severity": r.action.as_str(),
                    "expected": "0",
                    "actual": r.failed.to_string(),
                })
            })
            .collect()
    }
}
