//! [`PolicyTable`]: the one wrapper every table read goes through.
//!
//! Invariant: rows leave a `PolicyTable` only through its [`PolicyExec`]: the principal's row
//! filter is applied inside it, masks are applied in its projection, and DataFusion can
//! neither push a user predicate below it (so a user expression never sees a hidden row:
//! `1/(CASE WHEN hidden THEN 0 ELSE 1 END)` cannot fail) nor read exact statistics through it
//! (so `COUNT(*)`, `MIN`, `MAX` are never answered from Delta file statistics). The policy
//! predicate (and user predicates on unmasked columns) still reach the Delta scan for file
//! pruning, which reads statistics only.

use std::collections::HashSet;
use std::fmt;
use std::sync::Arc;

use arrow::datatypes::{Field, Schema, SchemaRef};
use async_trait::async_trait;
use datafusion::catalog::{ScanArgs, ScanResult, Session, TableProvider};
use datafusion::common::tree_node::TreeNodeRecursion;
use datafusion::common::{DFSchema, DataFusionError, Result as DfResult, Statistics};
use datafusion::datasource::TableType;
use datafusion::execution::context::SessionState;
use datafusion::execution::{SendableRecordBatchStream, TaskContext};
use datafusion::logical_expr::{Expr, TableProviderFilterPushDown, cast, lit};
use datafusion::physical_expr::PhysicalExpr;
use datafusion::physical_plan::expressions::Column as PhysicalColumn;
use datafusion::physical_plan::filter::FilterExec;
use datafusion::physical_plan::projection::ProjectionExec;
use datafusion::physical_plan::statistics::StatisticsArgs;
use datafusion::physical_plan::{
    DisplayAs, DisplayFormatType, ExecutionPlan, ExecutionPlanProperties, PlanProperties,
};

use crate::error::{Error, Result};
use crate::security::Principal;
use crate::security::policy::expr;
use crate::security::policy::model::TablePolicy;
use crate::security::policy::visible::policy_evaluation_failed;
use crate::storage::TableRef;
use crate::storage::scan::with_session_parquet_options;
use crate::storage::stats::StatisticsExec;

/// A principal's row filter and column masks for one table, as DataFusion expressions.
#[derive(Debug, Clone, Default)]
pub(crate) struct Enforcement {
    /// Rows the principal may see (`false` when filters exist but none is for its roles).
    pub filter: Option<Expr>,
    /// (column index, expression) for each masked column.
    pub masks: Vec<(usize, Expr)>,
}

impl Enforcement {
    pub(crate) fn is_none(&self) -> bool {
        self.filter.is_none() && self.masks.is_empty()
    }

    /// Compiles `policy` for `p` against `schema`. Fails closed: a policy that no longer
    /// plans (a dropped column, a bad expression) is an error, never "no policy".
    pub(crate) fn compile(
        t: &TableRef,
        policy: Option<&TablePolicy>,
        p: &Principal,
        bypass: bool,
        schema: &SchemaRef,
        state: &SessionState,
    ) -> Result<Enforcement> {
        let Some(policy) = policy else {
            return Ok(Enforcement::default());
        };
        if bypass {
            return Ok(Enforcement::default());
        }
        let df_schema = DFSchema::try_from(schema.as_ref().clone())?;
        let fail = |e: Error| Error::internal(format!("policy of {t} cannot be applied: {e}"));
        let filter = if policy.row_filters.is_empty() {
            None
        } else {
            let mine: Vec<Expr> = policy
                .row_filters
                .iter()
                .filter(|f| f.roles.iter().any(|r| p.has_role(r)))
                .map(|f| expr::to_expr(&f.predicate, p, &df_schema, state).map_err(fail))
                .collect::<Result<_>>()?;
            Some(
                mine.into_iter()
                    .reduce(Expr::or)
                    .unwrap_or_else(|| lit(false)),
            )
        };
        let mut masks = Vec::new();
        for m in &policy.column_masks {
            if m.exempt_roles.iter().any(|r| p.has_role(r)) {
                continue;
            }
            let idx = schema.index_of(&m.column).map_err(|_| {
                fail(Error::invalid(format!(
                    "masked column {} does not exist",
                    m.column
                )))
            })?;
            let e = expr::to_expr(&m.mask, p, &df_schema, state).map_err(fail)?;
            masks.push((idx, cast(e, schema.field(idx).data_type().clone())));
        }
        Ok(Enforcement { filter, masks })
    }
}

#[derive(Debug)]
pub(crate) struct PolicyTable {
    table: TableRef,
    version: u64,
    /// The Delta table's id (metadata `id`, new on every CREATE): a dropped and re-created
    /// table at the same version is another table.
    table_id: String,
    principal: Arc<Principal>,
    inner: Arc<dyn TableProvider>,
    enforcement: Enforcement,
    schema: SchemaRef,
    /// Keep the inner plan behind [`PolicyExec`] even without a policy.
    opaque: bool,
    /// A Delta read a cluster executor can rebuild from its [`ScanSpec`] (`src/cluster`).
    shippable: bool,
    /// Column statistics of the table version (over `inner`'s schema), from the Delta log.
    statistics: Option<Arc<Statistics>>,
}

impl PolicyTable {
    pub(crate) fn new(
        table: TableRef,
        version: u64,
        table_id: String,
        principal: Arc<Principal>,
        inner: Arc<dyn TableProvider>,
        enforcement: Enforcement,
    ) -> PolicyTable {
        let inner_schema = inner.schema();
        // A mask may produce NULL in a NOT NULL column.
        let schema = if enforcement.masks.is_empty() {
            inner_schema
        } else {
            let masked: HashSet<usize> = enforcement.masks.iter().map(|(i, _)| *i).collect();
            Arc::new(Schema::new_with_metadata(
                inner_schema
                    .fields()
                    .iter()
                    .enumerate()
                    .map(|(i, f)| {
                        if masked.contains(&i) {
                            Arc::new(Field::new(f.name(), f.data_type().clone(), true))
                        } else {
                            Arc::clone(f)
                        }
                    })
                    .collect::<Vec<_>>(),
                inner_schema.metadata().clone(),
            ))
        };
        PolicyTable {
            table,
            version,
            table_id,
            principal,
            inner,
            enforcement,
            schema,
            opaque: false,
            shippable: false,
            statistics: None,
        }
    }

    /// A plain read of a Delta table version (not the change feed, not a computed view):
    /// in a session marked [`ShipScans`], its scan carries a [`ScanSpec`].
    pub(crate) fn shippable(mut self) -> PolicyTable {
        self.shippable = true;
        self
    }

    /// Rows that a plan of `principal`'s secure session already produced (a model's output
    /// after its expectations), scanned again in that session: every policy applied when
    /// they were read, so nothing is left to enforce. `table` is the table they are bound
    /// for.
    pub(crate) fn derived(
        table: TableRef,
        principal: Arc<Principal>,
        rows: Arc<dyn TableProvider>,
    ) -> PolicyTable {
        PolicyTable::new(
            table,
            0,
            String::new(),
            principal,
            rows,
            Enforcement::default(),
        )
    }

    /// Column statistics for the planner (`storage::stats`). Without a policy they reach it
    /// as the log has them; with a row filter or mask they are the table's, not the
    /// principal's rows, so they pass inexact and masked columns have none ([`PolicyExec`]).
    pub(crate) fn with_statistics(mut self, statistics: Option<Arc<Statistics>>) -> PolicyTable {
        self.statistics = statistics;
        self
    }

    /// The inner scan as it is, with the session's parquet options and the table's column
    /// statistics.
    fn pass_through(
        &self,
        plan: Arc<dyn ExecutionPlan>,
        state: &dyn Session,
    ) -> DfResult<Arc<dyn ExecutionPlan>> {
        let plan = with_session_parquet_options(plan, state)?;
        Ok(match &self.statistics {
            Some(stats) => StatisticsExec::wrap(plan, stats, self.inner.schema().as_ref()),
            None => plan,
        })
    }

    /// What the planner may know of a restricted scan producing `output` (`requested`
    /// columns of the inner schema): the table's statistics, inexact, none for masked
    /// columns.
    fn restricted_statistics(&self, requested: &[usize], output: &Schema) -> Statistics {
        let Some(stats) = &self.statistics else {
            return Statistics::new_unknown(output);
        };
        let inner = self.inner.schema();
        let mut s = crate::storage::stats::project(stats, inner.as_ref(), output);
        for (slot, i) in requested.iter().enumerate() {
            if self.enforcement.masks.iter().any(|(m, _)| m == i)
                && let Some(c) = s.column_statistics.get_mut(slot)
            {
                *c = datafusion::common::ColumnStatistics::new_unknown();
            }
        }
        s.to_inexact()
    }

    /// Always hides the inner plan from the session's physical optimizer (optimized on its
    /// own instead). For the change feed: delta-rs builds it as a union of three parquet
    /// scans, and DataFusion 55's sort pushdown turns `ORDER BY` over that union into a
    /// sort over one empty scan ("does not satisfy distribution requirements …
    /// UnknownPartitioning(0)", the symptom of edgeandnode/amp#1353).
    pub(crate) fn opaque(mut self) -> PolicyTable {
        self.opaque = true;
        self
    }

    /// Whether the scan passes straight through to the inner provider.
    fn passes_through(&self) -> bool {
        self.enforcement.is_none() && !self.opaque
    }

    pub(crate) fn table(&self) -> &TableRef {
        &self.table
    }

    /// The Delta version this provider reads.
    pub(crate) fn version(&self) -> u64 {
        self.version
    }

    /// The Delta table id of the version this provider reads.
    pub(crate) fn table_id(&self) -> &str {
        &self.table_id
    }

    /// Indices (in the table's schema) of the columns masked for this principal.
    pub(crate) fn masked_columns(&self) -> impl Iterator<Item = usize> + '_ {
        self.enforcement.masks.iter().map(|(i, _)| *i)
    }

    /// Whether this provider was resolved for exactly `principal` (same session binding).
    pub(crate) fn is_bound_to(&self, principal: &Arc<Principal>) -> bool {
        Arc::ptr_eq(&self.principal, principal)
    }
}

#[async_trait]
impl TableProvider for PolicyTable {
    fn schema(&self) -> SchemaRef {
        Arc::clone(&self.schema)
    }

    fn table_type(&self) -> TableType {
        TableType::Base
    }

    async fn scan(
        &self,
        state: &dyn Session,
        projection: Option<&Vec<usize>>,
        filters: &[Expr],
        limit: Option<usize>,
    ) -> DfResult<Arc<dyn ExecutionPlan>> {
        let ship = self.shippable && state.config().get_extension::<ShipScans>().is_some();
        if self.passes_through() && !ship {
            let plan = self.inner.scan(state, projection, filters, limit).await?;
            return self.pass_through(plan, state);
        }
        let _ = limit;
        let inner_schema = self.inner.schema();
        let requested: Vec<usize> = match projection {
            Some(p) => p.clone(),
            None => (0..inner_schema.fields().len()).collect(),
        };
        // User predicates are never pushed below a policy (see `restricted_scan`); without
        // one they prune files as they would in a plain scan.
        let pruning = if self.enforcement.is_none() {
            filters.to_vec()
        } else {
            Vec::new()
        };
        let spec = ScanSpec {
            table: self.table.clone(),
            version: self.version,
            table_id: self.table_id.clone(),
            requested,
            enforcement: self.enforcement.clone(),
            pruning,
        };
        let plan = restricted_scan(self.inner.as_ref(), &spec, state).await?;
        let statistics = self.restricted_statistics(&spec.requested, plan.schema().as_ref());
        let ship = self.shippable && state.config().get_extension::<ShipScans>().is_some();
        Ok(Arc::new(PolicyExec::new(
            plan,
            self.table.clone(),
            statistics,
            ship.then(|| Arc::new(spec)),
        )))
    }

    async fn scan_with_args<'a>(
        &self,
        state: &dyn Session,
        args: ScanArgs<'a>,
    ) -> DfResult<ScanResult> {
        let ship = self.shippable && state.config().get_extension::<ShipScans>().is_some();
        if self.passes_through() && !ship {
            let result = self.inner.scan_with_args(state, args).await?;
            return Ok(self.pass_through(result.into_inner(), state)?.into());
        }
        let filters = args.filters().unwrap_or(&[]);
        let projection = args.projection().map(|p| p.to_vec());
        Ok(self
            .scan(state, projection.as_ref(), filters, args.limit())
            .await?
            .into())
    }

    fn supports_filters_pushdown(
        &self,
        filters: &[&Expr],
    ) -> DfResult<Vec<TableProviderFilterPushDown>> {
        if !self.passes_through() {
            // Nothing is Exact here: DataFusion keeps every user predicate above the policy.
            return Ok(vec![TableProviderFilterPushDown::Inexact; filters.len()]);
        }
        // Never claim Exact: DataFusion then keeps its own Filter above the scan.
        Ok(self
            .inner
            .supports_filters_pushdown(filters)?
            .into_iter()
            .map(|p| match p {
                TableProviderFilterPushDown::Exact => TableProviderFilterPushDown::Inexact,
                other => other,
            })
            .collect())
    }

    fn statistics(&self) -> Option<Statistics> {
        None
    }
}

/// Marks a session whose plan may be shipped to a cluster (`src/cluster`): every shippable
/// table's scan is then a [`PolicyExec`] carrying its [`ScanSpec`], policy or not.
#[derive(Debug, Default)]
pub(crate) struct ShipScans;

/// Everything a scan of one table version is built from, but the data: what the front end
/// signs and ships for a cluster executor to rebuild the same scan with
/// [`restricted_scan`].
#[derive(Debug, Clone)]
pub(crate) struct ScanSpec {
    pub table: TableRef,
    pub version: u64,
    /// The Delta table id of `version` (a re-created table is another table).
    pub table_id: String,
    /// Columns of the table's schema the scan produces, in order.
    pub requested: Vec<usize>,
    /// The principal's row filter and masks, claims bound as literals.
    pub enforcement: Enforcement,
    /// User predicates for file pruning: only when there is no policy.
    pub pruning: Vec<Expr>,
}

/// The scan of `inner` a [`PolicyExec`] holds: the columns `spec` requests, the rows its row
/// filter lets through, masked columns replaced by their masks. One function for the front
/// end ([`PolicyTable::scan`]) and cluster executors (`cluster::remote`), so both build the
/// same plan.
///
/// File pruning and parquet pushdown by the policy predicate (and by user predicates only
/// when there is no policy): a user predicate is never pushed below a policy, since the
/// Delta scan evaluates the predicates it receives row by row in parquet, which would run
/// user expressions on hidden rows.
pub(crate) async fn restricted_scan(
    inner: &dyn TableProvider,
    spec: &ScanSpec,
    state: &dyn Session,
) -> DfResult<Arc<dyn ExecutionPlan>> {
    let inner_schema = inner.schema();
    let enforcement = &spec.enforcement;
    let requested = &spec.requested;
    let mut pruning: Vec<Expr> = enforcement.filter.iter().cloned().collect();
    if enforcement.is_none() {
        pruning.extend(spec.pruning.iter().cloned());
    }
    // Read only what the query, the filter and the masks of requested columns need.
    let mut needed: std::collections::BTreeSet<usize> = requested.iter().copied().collect();
    let mut add_refs = |e: &Expr| -> DfResult<()> {
        for c in e.column_refs() {
            needed.insert(inner_schema.index_of(&c.name)?);
        }
        Ok(())
    };
    if let Some(f) = &enforcement.filter {
        add_refs(f)?;
    }
    for (i, m) in &enforcement.masks {
        if requested.contains(i) {
            add_refs(m)?;
        }
    }
    let needed: Vec<usize> = needed.into_iter().collect();
    let read_schema = Arc::new(inner_schema.project(&needed)?);
    let df_schema = DFSchema::try_from(read_schema.as_ref().clone())?;
    let mut plan = with_session_parquet_options(
        inner.scan(state, Some(&needed), &pruning, None).await?,
        state,
    )?;
    if let Some(filter) = &enforcement.filter {
        let predicate = state.create_physical_expr(filter.clone(), &df_schema)?;
        plan = Arc::new(FilterExec::try_new(predicate, plan)?);
    }
    let mut exprs: Vec<(Arc<dyn PhysicalExpr>, String)> = Vec::with_capacity(requested.len());
    for &i in requested {
        let name = inner_schema.field(i).name().clone();
        let e: Arc<dyn PhysicalExpr> = match enforcement.masks.iter().find(|(m, _)| *m == i) {
            Some((_, mask)) => state.create_physical_expr(mask.clone(), &df_schema)?,
            None => {
                let pos = needed.iter().position(|n| *n == i).unwrap_or_default();
                Arc::new(PhysicalColumn::new(&name, pos))
            }
        };
        exprs.push((e, name));
    }
    let mut plan: Arc<dyn ExecutionPlan> = Arc::new(ProjectionExec::try_new(exprs, plan)?);
    // The subtree becomes opaque in its `PolicyExec`, so optimize it now (file-range
    // repartitioning, predicates into parquet). It holds only policy expressions, and user
    // predicates only where no policy applies.
    if let Some(session) = state.as_any().downcast_ref::<SessionState>() {
        for rule in session.physical_optimizers() {
            plan = rule.optimize(plan, session.config_options())?;
        }
    }
    Ok(plan)
}

/// An error computed from a value (a cast, arithmetic), not one of reading the data.
fn is_evaluation_error(e: &DataFusionError) -> bool {
    use arrow::error::ArrowError;
    match e.find_root() {
        DataFusionError::ArrowError(a, _) => !matches!(
            a.as_ref(),
            ArrowError::IoError(..) | ArrowError::ExternalError(_) | ArrowError::MemoryError(_)
        ),
        DataFusionError::Execution(_) => true,
        _ => false,
    }
}

/// The boundary of a restricted table in the physical plan.
///
/// It is a leaf to the optimizer: the filtered, masked subtree is held privately, so no
/// physical optimizer rule can push a user predicate into it (the Delta scan below enables
/// parquet row-level pushdown for the predicates it receives, which would evaluate user
/// expressions on hidden rows), swap projections through it, or read its statistics. The
/// subtree is complete when built: the Delta scan already has its partitions and the policy
/// predicate.
#[derive(Debug)]
pub(crate) struct PolicyExec {
    input: Arc<dyn ExecutionPlan>,
    table: TableRef,
    /// Inexact, never exact: see [`PolicyTable::with_statistics`].
    statistics: Arc<Statistics>,
    /// How to rebuild `input` elsewhere, in a session marked [`ShipScans`].
    spec: Option<Arc<ScanSpec>>,
}

impl PolicyExec {
    fn new(
        input: Arc<dyn ExecutionPlan>,
        table: TableRef,
        statistics: Statistics,
        spec: Option<Arc<ScanSpec>>,
    ) -> PolicyExec {
        PolicyExec {
            input,
            table,
            statistics: Arc::new(statistics),
            spec,
        }
    }

    /// What a cluster executor rebuilds this scan from; `None` when it cannot be shipped
    /// (the change feed, a computed view, a session not marked [`ShipScans`]).
    pub(crate) fn spec(&self) -> Option<&Arc<ScanSpec>> {
        self.spec.as_ref()
    }

    /// The scan it holds (the optimizer never sees it as a child).
    pub(crate) fn scan(&self) -> &Arc<dyn ExecutionPlan> {
        &self.input
    }

    /// [`ExecutionPlan::execute`] of a scan held behind the policy boundary: evaluation
    /// errors name the table, never a value. For `PolicyExec` and the cluster's rebuilt
    /// scans alike.
    pub(crate) fn guarded_execute(
        input: &Arc<dyn ExecutionPlan>,
        table: &TableRef,
        partition: usize,
        context: Arc<TaskContext>,
    ) -> DfResult<SendableRecordBatchStream> {
        use futures::StreamExt;
        let stream = input.execute(partition, context)?;
        let schema = stream.schema();
        let table = table.to_string();
        // Only the row filter and the masks are evaluated in here: a value that fails them
        // may be hidden, so the error says what failed, never on which value.
        Ok(Box::pin(
            datafusion::physical_plan::stream::RecordBatchStreamAdapter::new(
                schema,
                stream.map(move |r| {
                    r.map_err(|e| {
                        if is_evaluation_error(&e) {
                            DataFusionError::External(Box::new(policy_evaluation_failed(
                                &table, &e,
                            )))
                        } else {
                            e
                        }
                    })
                }),
            ),
        ))
    }

    /// The statistics of all partitions together; a single partition's are unknown.
    fn statistics_for(&self, partition: Option<usize>) -> Arc<Statistics> {
        match partition {
            None => Arc::clone(&self.statistics),
            Some(_) => Arc::new(Statistics::new_unknown(&self.schema())),
        }
    }
}

impl DisplayAs for PolicyExec {
    fn fmt_as(&self, t: DisplayFormatType, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "PolicyExec: table={}, partitions={}",
            self.table,
            self.input.output_partitioning().partition_count()
        )?;
        let _ = t;
        let inner = datafusion::physical_plan::displayable(self.input.as_ref())
            .indent(false)
            .to_string();
        write!(f, " [{}]", inner.trim().replace('\n', " <- "))
    }
}

impl ExecutionPlan for PolicyExec {
    fn name(&self) -> &str {
        "PolicyExec"
    }

    fn properties(&self) -> &Arc<PlanProperties> {
        self.input.properties()
    }

    fn children(&self) -> Vec<&Arc<dyn ExecutionPlan>> {
        Vec::new()
    }

    fn apply_expressions(
        &self,
        _f: &mut dyn FnMut(&Arc<dyn PhysicalExpr>) -> DfResult<TreeNodeRecursion>,
    ) -> DfResult<TreeNodeRecursion> {
        Ok(TreeNodeRecursion::Continue)
    }

    fn with_new_children(
        self: Arc<Self>,
        children: Vec<Arc<dyn ExecutionPlan>>,
    ) -> DfResult<Arc<dyn ExecutionPlan>> {
        if children.is_empty() {
            Ok(self)
        } else {
            Err(DataFusionError::Internal("PolicyExec is a leaf".into()))
        }
    }

    fn execute(
        &self,
        partition: usize,
        context: Arc<TaskContext>,
    ) -> DfResult<SendableRecordBatchStream> {
        PolicyExec::guarded_execute(&self.input, &self.table, partition, context)
    }

    fn statistics_from_inputs(
        &self,
        _input_stats: &[Arc<Statistics>],
        args: &StatisticsArgs,
    ) -> DfResult<Arc<Statistics>> {
        Ok(self.statistics_for(args.partition()))
    }

    #[allow(deprecated)]
    fn partition_statistics(&self, partition: Option<usize>) -> DfResult<Arc<Statistics>> {
        Ok(self.statistics_for(partition))
    }
}
