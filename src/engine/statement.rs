//! Every statement but a plain query: planning, DDL, writes, maintenance, history.

use std::sync::Arc;

use arrow::array::RecordBatch;
use arrow::datatypes::SchemaRef;
use datafusion::common::tree_node::TreeNodeRecursion;
use datafusion::common::{Column, ScalarValue};
use datafusion::datasource::source_as_provider;
use datafusion::execution::context::SessionState;
use datafusion::logical_expr::{Expr, LogicalPlan, LogicalPlanBuilder, cast, lit};
use datafusion::prelude::{DataFrame, SQLOptions};
use datafusion::sql::parser::Statement as DfStatement;
use datafusion::sql::sqlparser::ast;

use super::lineage::Lineage;
use super::openlineage::Created;
use super::output::{QueryOutput, command_output, dml_output, history_output};
use super::params::{bind_params, no_params};
use super::streamed::Shape;
use super::{Engine, Statement, dml};
use crate::error::{Error, Result};
use crate::pipelines::commit::{self, WriteMode};
use crate::pipelines::maintenance::OptimizeSpec;
use crate::security::policy::PolicyTable;
use crate::security::{AccessControl, Principal, Privilege};
use crate::storage::TableRef;
use crate::storage::catalog::TableSpec;

impl Engine {
    /// Everything but plain queries (which [`Engine::run_cached`] handles).
    pub(super) async fn execute_statement(
        &self,
        statement: Statement,
        kind: &'static str,
        state: SessionState,
        access: Arc<AccessControl>,
        principal: &Arc<Principal>,
        params: Vec<ScalarValue>,
    ) -> Result<QueryOutput> {
        match statement {
            Statement::Query(_) => Err(Error::internal("queries run through run_cached")),
            Statement::Explain { analyze, statement } => {
                let plan = self.plan_query(&state, *statement, params).await?;
                let scanned = scanned_tables(&plan)?;
                let manages_all = scanned
                    .iter()
                    .all(|t| access.allows(principal, Privilege::Manage, t));
                if analyze && !manages_all {
                    // Runtime metrics reveal data volumes: MANAGE on everything scanned.
                    for t in &scanned {
                        access.check(principal, Privilege::Manage, t)?;
                    }
                }
                let mut state = state;
                if !manages_all {
                    // Physical plans list data files; file listings need MANAGE.
                    state.config_mut().options_mut().explain.logical_plan_only = true;
                }
                self.run(state, plan, kind).await
            }
            Statement::CreateTable {
                table,
                if_not_exists,
                columns,
                partition_by,
                description,
                properties,
            } => {
                no_params(&params, kind)?;
                let spec = TableSpec {
                    columns,
                    partition_by,
                    description,
                    properties,
                };
                let created = self
                    .create_table(principal, &table, &spec, if_not_exists)
                    .await?;
                let version = created.and_then(|info| info.version()).map(|v| v as i64);
                Ok(command_output(kind, &table, None, version))
            }
            Statement::CreateTableAs {
                table,
                if_not_exists,
                partition_by,
                description,
                properties,
                query,
            } => {
                access.check_layer(principal, Privilege::Manage, table.layer)?;
                if self.catalog.exists(&table).await? {
                    return if if_not_exists {
                        Ok(command_output(kind, &table, Some(0), None))
                    } else {
                        Err(Error::AlreadyExists(format!(
                            "table {table} already exists"
                        )))
                    };
                }
                let sql = query.to_string();
                let plan = self.plan_query(&state, *query, params).await?;
                let plan = delta_compatible(plan)?;
                let optimized = state.optimize(&plan)?;
                let lineage = self.lineage(|| Lineage::of_plan(&optimized));
                let new_schema = Arc::new(plan.schema().as_arrow().clone());
                let spec = TableSpec {
                    columns: Vec::new(),
                    partition_by,
                    description,
                    properties,
                };
                // The statement's work, query included, is its OpenLineage run: START before
                // the rows are computed, ABORT if the statement is dropped while they are.
                let created = async {
                    let rows = stream_optimized(&state, &optimized).await?;
                    let mut streamed = self
                        .streamed(
                            &access,
                            principal,
                            &table,
                            WriteMode::Append,
                            &new_schema,
                            Shape::AsIs,
                            rows,
                        )
                        .await?;
                    let input = streamed.take_input();
                    let version = commit::create_with_data(
                        &self.catalog,
                        &table,
                        principal,
                        &spec,
                        Arc::clone(&new_schema),
                        input,
                    )
                    .await
                    .map_err(|e| streamed.failure(e))?;
                    Ok(Created {
                        version,
                        rows: streamed.rows(),
                    })
                };
                let created = self
                    .attached(&table, kind, &lineage, Some(sql), created)
                    .await?;
                Ok(command_output(
                    kind,
                    &table,
                    Some(created.rows as i64),
                    Some(created.version as i64),
                ))
            }
            Statement::Insert {
                table,
                overwrite,
                columns,
                source,
            } => {
                access.check(principal, Privilege::Insert, &table)?;
                if overwrite {
                    access.check(principal, Privilege::Modify, &table)?;
                }
                let current = self.catalog.load(&table).await?;
                let target = current.snapshot()?.snapshot().arrow_schema();
                let sql = source.to_string();
                let plan = self.plan_query(&state, *source, params).await?;
                let plan = project_onto(plan, &target, &columns)?;
                let optimized = state.optimize(&plan)?;
                let lineage = self.lineage(|| Lineage::of_plan(&optimized));
                let mode = if overwrite {
                    WriteMode::Overwrite
                } else {
                    WriteMode::Append
                };
                // The query runs inside the statement's OpenLineage run (see CTAS).
                let write = async {
                    let rows = stream_optimized(&state, &optimized).await?;
                    let mut streamed = self
                        .streamed(
                            &access,
                            principal,
                            &table,
                            mode,
                            &target,
                            Shape::Enforce,
                            rows,
                        )
                        .await?;
                    let input = streamed.take_input();
                    commit::write(&self.catalog, &table, principal, input, mode, None, kind)
                        .await
                        .map_err(|e| streamed.failure(e))
                };
                let outcome = self
                    .attached(&table, kind, &lineage, Some(sql), write)
                    .await?;
                Ok(command_output(
                    kind,
                    &table,
                    Some(outcome.rows as i64),
                    Some(outcome.version as i64),
                ))
            }
            Statement::Merge {
                table,
                source,
                spec,
            } => {
                let plan = self.plan_query(&state, *source, params.clone()).await?;
                let outcome = self
                    .run_merge(
                        principal,
                        &access,
                        &table,
                        dml::MergeSource::Plan(plan),
                        &spec,
                        dml::Bound {
                            params: &params,
                            progress: &[],
                        },
                    )
                    .await?;
                Ok(dml_output(kind, &table, &outcome))
            }
            Statement::Update {
                table,
                set,
                predicate,
            } => {
                let outcome = self
                    .run_update(
                        principal,
                        &access,
                        &table,
                        &set,
                        predicate.as_deref(),
                        &params,
                    )
                    .await?;
                Ok(dml_output(kind, &table, &outcome))
            }
            Statement::Scd2 {
                table,
                source,
                spec,
            } => {
                no_params(&params, kind)?;
                let outcome = self
                    .scd2(principal, &table, dml::SourceInput::Sql(source), &spec)
                    .await?;
                Ok(dml_output(kind, &table, &outcome))
            }
            Statement::Optimize {
                table,
                zorder,
                partitions,
            } => {
                no_params(&params, kind)?;
                let spec = OptimizeSpec {
                    zorder,
                    partitions,
                    target_size: None,
                };
                let o = self.optimize(principal, &table, spec).await?;
                Ok(command_output(
                    kind,
                    &table,
                    Some(o.files_removed as i64),
                    Some(o.version as i64),
                ))
            }
            Statement::Vacuum {
                table,
                retain_hours,
                dry_run,
                force,
            } => {
                no_params(&params, kind)?;
                let o = self
                    .vacuum(principal, &table, retain_hours, dry_run, force)
                    .await?;
                Ok(command_output(
                    kind,
                    &table,
                    Some(o.files.len() as i64),
                    None,
                ))
            }
            Statement::Restore { table, to } => {
                no_params(&params, kind)?;
                let o = self.restore(principal, &table, to).await?;
                Ok(command_output(
                    kind,
                    &table,
                    Some(o.files_restored as i64),
                    Some(o.version as i64),
                ))
            }
            Statement::History { table, limit } => {
                no_params(&params, kind)?;
                let entries = self
                    .history(principal, &table, limit.unwrap_or(100))
                    .await?;
                history_output(kind, &table, &entries)
            }
            Statement::AlterTable { table, change } => {
                no_params(&params, kind)?;
                let info = self.alter_table(principal, &table, &change).await?;
                Ok(command_output(
                    kind,
                    &table,
                    None,
                    info.version().map(|v| v as i64),
                ))
            }
            Statement::Delete { table, predicate } => {
                let outcome = self
                    .run_delete(principal, &access, &table, predicate.as_deref(), &params)
                    .await?;
                Ok(dml_output(kind, &table, &outcome))
            }
            Statement::DropTable { tables, if_exists } => {
                no_params(&params, kind)?;
                for t in &tables {
                    self.drop_table(principal, t, if_exists).await?;
                }
                let first = tables
                    .first()
                    .cloned()
                    .ok_or_else(|| Error::invalid("DROP TABLE needs a table"))?;
                Ok(command_output(kind, &first, None, None))
            }
        }
    }

    /// Plans a query in `state`, refuses anything but a read, binds parameters.
    pub(super) async fn plan_query(
        &self,
        state: &SessionState,
        statement: ast::Statement,
        params: Vec<ScalarValue>,
    ) -> Result<LogicalPlan> {
        let plan = self.plan_unbound(state, statement).await?;
        bind_params(plan, params)
    }

    pub(super) async fn plan_unbound(
        &self,
        state: &SessionState,
        statement: ast::Statement,
    ) -> Result<LogicalPlan> {
        let plan = state
            .statement_to_plan(DfStatement::Statement(Box::new(statement)))
            .await?;
        SQLOptions::new()
            .with_allow_ddl(false)
            .with_allow_dml(false)
            .with_allow_statements(false)
            .verify_plan(&plan)?;
        Ok(plan)
    }

    pub(super) async fn run(
        &self,
        state: SessionState,
        plan: LogicalPlan,
        kind: &'static str,
    ) -> Result<QueryOutput> {
        use crate::cluster::{self, Route};
        let tables = scanned_tables(&plan)?;
        let schema = Arc::new(plan.schema().as_arrow().clone());
        let route = cluster::route(self.cluster.as_deref())?;
        // A query that may go to the cluster is planned with shippable scans
        // (`security::policy::ShipScans`); `auto` first plans as usual and plans again only
        // when the scan turns out large.
        let shipping = |state: &SessionState| {
            let mut state = state.clone();
            let config = state.config_mut();
            config.set_extension(Arc::new(crate::security::policy::ShipScans));
            cluster::plan_options(config.options_mut());
            state
        };
        let (state, physical) = match route {
            Route::Local => {
                let physical = DataFrame::new(state.clone(), plan)
                    .create_physical_plan()
                    .await?;
                (state, physical)
            }
            Route::Always => {
                let state = shipping(&state);
                let physical = DataFrame::new(state.clone(), plan)
                    .create_physical_plan()
                    .await?;
                (state, physical)
            }
            Route::IfLarger(min) => {
                let physical = DataFrame::new(state.clone(), plan.clone())
                    .create_physical_plan()
                    .await?;
                if cluster::scanned_bytes(&physical) > min {
                    let state = shipping(&state);
                    let physical = DataFrame::new(state.clone(), plan)
                        .create_physical_plan()
                        .await?;
                    (state, physical)
                } else {
                    (state, physical)
                }
            }
        };
        let physical = announced_types(physical, &schema)?;
        let stream = match &self.cluster {
            Some(c) if route != Route::Local && cluster::eligible(&physical) => {
                c.execute(physical, state.config()).await?
            }
            _ => datafusion::physical_plan::execute_stream(
                physical,
                Arc::new(datafusion::execution::TaskContext::from(&state)),
            )?,
        };
        Ok(QueryOutput {
            kind,
            schema,
            stream,
            tables,
            etag: None,
            cache_hit: false,
        })
    }
}

/// `plan`, producing exactly the types of `announced` (the logical plan's schema, which
/// GetFlightInfo, prepared statements and REST announce). DataFusion's physical plan can
/// disagree: with a `COUNT(DISTINCT …)` beside it, `SUM` of a DECIMAL(7,2) is planned as
/// DECIMAL(17,2) and computed in two phases as DECIMAL(27,2), which Flight clients reject
/// ("column types must match schema types"). The result is cast to what was announced (an
/// overflow is an error, never a wrong value).
pub(super) fn announced_types(
    plan: Arc<dyn datafusion::physical_plan::ExecutionPlan>,
    announced: &SchemaRef,
) -> Result<Arc<dyn datafusion::physical_plan::ExecutionPlan>> {
    use datafusion::physical_expr::expressions::{CastExpr, Column};
    use datafusion::physical_plan::projection::ProjectionExec;
    let actual = plan.schema();
    let differs = actual.fields().len() == announced.fields().len()
        && actual
            .fields()
            .iter()
            .zip(announced.fields())
            .any(|(a, b)| a.data_type() != b.data_type());
    if !differs {
        return Ok(plan);
    }
    let exprs = actual
        .fields()
        .iter()
        .zip(announced.fields())
        .enumerate()
        .map(|(i, (a, b))| {
            let column: Arc<dyn datafusion::physical_expr::PhysicalExpr> =
                Arc::new(Column::new(a.name(), i));
            let expr: Arc<dyn datafusion::physical_expr::PhysicalExpr> =
                if a.data_type() == b.data_type() {
                    column
                } else {
                    Arc::new(CastExpr::new(column, b.data_type().clone(), None))
                };
            (expr, b.name().clone())
        })
        .collect::<Vec<_>>();
    Ok(Arc::new(ProjectionExec::try_new(exprs, plan)?))
}

/// The rows of a plan `state` already optimized (its lineage came from that plan), planned
/// physically without optimizing it a second time, as a stream.
async fn stream_optimized(
    state: &SessionState,
    optimized: &LogicalPlan,
) -> Result<futures::stream::BoxStream<'static, Result<RecordBatch>>> {
    use futures::TryStreamExt;
    let physical = state
        .query_planner()
        .create_physical_plan(optimized, state)
        .await?;
    let stream = datafusion::physical_plan::execute_stream(physical, state.task_ctx())?;
    Ok(Box::pin(stream.map_err(Error::from)))
}

/// Tables read by `plan` (subqueries included).
pub(super) fn scanned_tables(plan: &LogicalPlan) -> Result<Vec<TableRef>> {
    let mut out = Vec::new();
    plan.apply_with_subqueries(|node| {
        if let LogicalPlan::TableScan(scan) = node
            && let Ok(provider) = source_as_provider(&scan.source)
        {
            let any: &dyn std::any::Any = provider.as_ref();
            if let Some(t) = any.downcast_ref::<PolicyTable>()
                && !out.contains(t.table())
            {
                out.push(t.table().clone());
            }
        }
        Ok(TreeNodeRecursion::Continue)
    })?;
    Ok(out)
}

/// Projects a query's output onto a table's columns for INSERT: by position, or by the
/// explicit column list; unlisted columns get NULL; each value is cast to the column type.
pub(super) fn project_onto(
    plan: LogicalPlan,
    target: &SchemaRef,
    columns: &[String],
) -> Result<LogicalPlan> {
    let source: Vec<Expr> = plan
        .schema()
        .iter()
        .map(|(q, f)| Expr::Column(Column::from((q, f))))
        .collect();
    let names: Vec<String> = if columns.is_empty() {
        target.fields().iter().map(|f| f.name().clone()).collect()
    } else {
        for c in columns {
            if target.field_with_name(c).is_err() {
                return Err(Error::invalid(format!("INSERT: unknown column {c}")));
            }
        }
        columns.to_vec()
    };
    if names.len() != source.len() {
        return Err(Error::invalid(format!(
            "INSERT: the query produces {} column(s) but {} are targeted",
            source.len(),
            names.len()
        )));
    }
    let mut exprs = Vec::with_capacity(target.fields().len());
    for field in target.fields() {
        let expr = match names.iter().position(|n| n == field.name()) {
            Some(i) => cast(source[i].clone(), field.data_type().clone()),
            None if field.is_nullable() => cast(lit(ScalarValue::Null), field.data_type().clone()),
            None => {
                return Err(Error::invalid(format!(
                    "INSERT: column {} is NOT NULL and gets no value",
                    field.name()
                )));
            }
        };
        exprs.push(expr.alias(field.name()));
    }
    Ok(LogicalPlanBuilder::from(plan).project(exprs)?.build()?)
}

/// Casts a CTAS query's output to types Delta stores (no views, large or unsigned types,
/// microsecond timestamps), and checks column names.
pub(super) fn delta_compatible(plan: LogicalPlan) -> Result<LogicalPlan> {
    let mut exprs = Vec::new();
    for (q, f) in plan.schema().iter() {
        crate::storage::validate_name(f.name()).map_err(|_| {
            Error::invalid(format!(
                "column name {:?} is not a valid table column; give it an alias (AS name)",
                f.name()
            ))
        })?;
        let target = crate::storage::types::delta_arrow_type(f.data_type()).ok_or_else(|| {
            Error::Unsupported(format!(
                "column {} has type {}, which Delta tables cannot store",
                f.name(),
                f.data_type()
            ))
        })?;
        let col = Expr::Column(Column::from((q, f)));
        let e = if &target == f.data_type() {
            col
        } else {
            cast(col, target)
        };
        exprs.push(e.alias(f.name().to_ascii_lowercase()));
    }
    Ok(LogicalPlanBuilder::from(plan).project(exprs)?.build()?)
}
