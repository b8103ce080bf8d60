//! [`RemoteScanExec`]: a signed table scan on the scheduler and on executors.
//!
//! On the scheduler it is only a shape (schema, partition count) for stage planning and the
//! bytes to relay. On an executor, whose codec checked the signature, the first execute
//! rebuilds the scan through [`restricted_scan`], the function the front end's
//! `PolicyTable::scan` uses, against the executor's own storage, and refuses to run when
//! the rebuilt scan is not the one the front end planned: another table behind the name
//! (table id), another schema, another partitioning.

use std::fmt;
use std::sync::Arc;

use arrow::datatypes::SchemaRef;
use datafusion::common::tree_node::TreeNodeRecursion;
use datafusion::common::{DataFusionError, Result as DfResult};
use datafusion::execution::context::SessionState;
use datafusion::execution::{SendableRecordBatchStream, SessionStateBuilder, TaskContext};
use datafusion::physical_expr::{EquivalenceProperties, PhysicalExpr};
use datafusion::physical_plan::execution_plan::{Boundedness, EmissionType};
use datafusion::physical_plan::stream::RecordBatchStreamAdapter;
use datafusion::physical_plan::{
    DisplayAs, DisplayFormatType, ExecutionPlan, ExecutionPlanProperties, Partitioning,
    PlanProperties,
};
use futures::TryStreamExt;
use tokio::sync::OnceCell;

use arrow::datatypes::Schema;
use datafusion::datasource::listing::PartitionedFile;
use datafusion::datasource::physical_plan::{
    FileGroup, FileOpener, FileScanConfig, FileScanConfigBuilder, FileSource,
};
use datafusion::datasource::source::DataSourceExec;
use datafusion::datasource::table_schema::TableSchema;
use datafusion::execution::object_store::ObjectStoreUrl;
use datafusion::physical_plan::metrics::ExecutionPlanMetricsSet;
use object_store::ObjectStore;

use super::wire::{ScanMessage, Signed, refused};
use crate::security::policy::{PolicyExec, restricted_scan};
use crate::storage::{Catalog, TableRef};

/// What an executor rebuilds scans with: its own storage (its own, read-only credentials)
/// and Strata's functions and physical optimizer rules.
#[derive(Debug)]
pub(crate) struct Rebuilder {
    catalog: Arc<Catalog>,
    template: Arc<SessionState>,
}

impl Rebuilder {
    pub(crate) fn new(catalog: Arc<Catalog>, template: Arc<SessionState>) -> Rebuilder {
        Rebuilder { catalog, template }
    }

    async fn rebuild(
        &self,
        message: &ScanMessage,
        expected: &SchemaRef,
        ctx: &TaskContext,
    ) -> DfResult<Built> {
        let t = message.table()?;
        let table = self.catalog.load_version(&t, message.version).await?;
        let id = table
            .snapshot()
            .map_err(|e| DataFusionError::External(Box::new(e)))?
            .metadata()
            .id()
            .to_string();
        if id != message.table_id {
            return Err(refused(&format!(
                "{t} at version {} is another table than the one planned (it was dropped and re-created)",
                message.version
            )));
        }
        crate::storage::register_table_store(&ctx.runtime_env(), &table)?;
        let inner = table
            .table_provider()
            .await
            .map_err(|e| DataFusionError::External(Box::new(e)))?;
        // The front end's settings (they travel with the job): the same partitioning. A
        // task runs some partitions of the scan, never all: partitions must not steal
        // each other's files (DataFusion's default), or a partition running alone would
        // read its absent siblings' files too.
        let mut config = ctx.session_config().clone();
        config
            .options_mut()
            .execution
            .enable_file_stream_work_stealing = false;
        let state = SessionStateBuilder::new_from_existing(self.template.as_ref().clone())
            .with_config(config)
            .with_runtime_env(ctx.runtime_env())
            .build();
        let spec = message.spec(ctx)?;
        let plan = restricted_scan(inner.as_ref(), &spec, &state).await?;
        let rebuilt = plan.schema();
        let same_schema = rebuilt.fields().len() == expected.fields().len()
            && rebuilt
                .fields()
                .iter()
                .zip(expected.fields())
                .all(|(a, b)| a.name() == b.name() && a.data_type() == b.data_type());
        if !same_schema {
            return Err(refused(&format!(
                "the scan of {t} rebuilt here has another schema than the one planned"
            )));
        }
        let partitions = plan.output_partitioning().partition_count();
        if partitions != message.partitions as usize {
            return Err(refused(&format!(
                "the scan of {t} rebuilt here has {partitions} partitions, the one planned {}",
                message.partitions
            )));
        }
        tracing::debug!(
            table = %t,
            version = message.version,
            plan = %datafusion::physical_plan::displayable(plan.as_ref()).indent(false),
            "scan rebuilt"
        );
        Ok(Built {
            plan,
            context: Arc::new(TaskContext::from(&state)),
        })
    }
}

/// A rebuilt scan and the context it runs in.
#[derive(Debug)]
struct Built {
    plan: Arc<dyn ExecutionPlan>,
    context: Arc<TaskContext>,
}

/// A shipped table scan on an executor, its signature checked (see the module).
#[derive(Debug)]
pub(crate) struct RemoteScanExec {
    message: ScanMessage,
    table: TableRef,
    /// The scan's partitions this task runs (global indices, in order); all when `None`.
    selection: Option<Vec<usize>>,
    properties: Arc<PlanProperties>,
    rebuilder: Arc<Rebuilder>,
    built: Arc<OnceCell<Built>>,
}

impl RemoteScanExec {
    pub(crate) fn try_new(
        message: ScanMessage,
        selection: Option<Vec<usize>>,
        rebuilder: Arc<Rebuilder>,
    ) -> DfResult<RemoteScanExec> {
        let all = message.partitions as usize;
        if let Some(s) = &selection
            && s.iter().any(|p| *p >= all)
        {
            return Err(refused(
                "a task asked for a partition the scan does not have",
            ));
        }
        let count = selection.as_ref().map_or(all, Vec::len);
        let schema: SchemaRef = Arc::new(message.output_schema()?);
        let properties = PlanProperties::new(
            EquivalenceProperties::new(schema),
            Partitioning::UnknownPartitioning(count),
            EmissionType::Incremental,
            Boundedness::Bounded,
        );
        Ok(RemoteScanExec {
            table: message.table()?,
            message,
            selection,
            properties: Arc::new(properties),
            rebuilder,
            built: Arc::new(OnceCell::new()),
        })
    }
}

/// What the scheduler plans with: the scan's shape as a file scan with one group per
/// partition (`strata-scan/<partition>`), which Ballista knows how to slice per task. It
/// never runs: its source only describes the scan and carries the signed bytes on.
#[derive(Clone)]
pub(crate) struct ShapeSource {
    signed: Signed,
    message: ScanMessage,
    table_schema: TableSchema,
    metrics: ExecutionPlanMetricsSet,
}

const SHAPE_PREFIX: &str = "strata-scan/";

/// The scheduler's form of a shipped scan (see [`ShapeSource`]).
pub(crate) fn scan_shape(
    signed: Signed,
    message: ScanMessage,
    selection: Option<Vec<usize>>,
) -> DfResult<Arc<dyn ExecutionPlan>> {
    let schema: SchemaRef = Arc::new(message.output_schema()?);
    let partitions: Vec<usize> =
        selection.unwrap_or_else(|| (0..message.partitions as usize).collect());
    let source = ShapeSource {
        signed,
        message,
        table_schema: TableSchema::from(schema),
        metrics: ExecutionPlanMetricsSet::new(),
    };
    let url = ObjectStoreUrl::parse("strata-scan://shape")?;
    let groups = partitions
        .iter()
        .map(|p| FileGroup::new(vec![PartitionedFile::new(format!("{SHAPE_PREFIX}{p}"), 0)]))
        .collect();
    let config = FileScanConfigBuilder::new(url, Arc::new(source))
        .with_file_groups(groups)
        .build();
    Ok(DataSourceExec::from_data_source(config))
}

/// The signed bytes and the partitions of a scheduler's shipped scan, after Ballista
/// sliced it for a task.
pub(crate) fn shape_of(node: &Arc<dyn ExecutionPlan>) -> Option<(Signed, Vec<u32>)> {
    let exec = node.downcast_ref::<DataSourceExec>()?;
    let config = exec.data_source().downcast_ref::<FileScanConfig>()?;
    let source = config.file_source().downcast_ref::<ShapeSource>()?;
    let partitions = config
        .file_groups
        .iter()
        .map(|g| {
            g.iter()
                .next()
                .and_then(|f| f.object_meta.location.as_ref().strip_prefix(SHAPE_PREFIX))
                .and_then(|p| p.parse().ok())
                .unwrap_or(u32::MAX)
        })
        .collect();
    Some((source.signed.clone(), partitions))
}

impl FileSource for ShapeSource {
    fn create_file_opener(
        &self,
        _object_store: Arc<dyn ObjectStore>,
        _base_config: &FileScanConfig,
        _partition: usize,
    ) -> DfResult<Arc<dyn FileOpener>> {
        Err(refused("the scheduler does not run scans"))
    }

    fn table_schema(&self) -> &TableSchema {
        &self.table_schema
    }

    fn with_batch_size(&self, _batch_size: usize) -> Arc<dyn FileSource> {
        Arc::new(self.clone())
    }

    fn metrics(&self) -> &ExecutionPlanMetricsSet {
        &self.metrics
    }

    fn apply_expressions(
        &self,
        _f: &mut dyn FnMut(&Arc<dyn PhysicalExpr>) -> DfResult<TreeNodeRecursion>,
    ) -> DfResult<TreeNodeRecursion> {
        Ok(TreeNodeRecursion::Continue)
    }

    fn file_type(&self) -> &str {
        "strata-signed-scan"
    }

    /// The scheduler logs and stores plans: see [`describe`].
    fn fmt_extra(&self, _t: DisplayFormatType, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, ", ")?;
        describe(&self.message, self.table_schema.file_schema(), f)
    }
}

/// A shipped scan for plan displays. The policy's expressions hold the principal's claims
/// as literals, so they are never shown, only whether there is a row filter and which
/// columns are masked.
fn describe(message: &ScanMessage, schema: &Schema, f: &mut fmt::Formatter<'_>) -> fmt::Result {
    // Masks of the columns this scan produces (the others do not apply to it).
    let masked: Vec<String> = message
        .masks
        .iter()
        .filter_map(|m| {
            schema
                .fields()
                .iter()
                .zip(&message.requested)
                .find(|(_, i)| **i == m.column)
                .map(|(f, _)| f.name().clone())
        })
        .collect();
    write!(
        f,
        "PolicyExec: table={}.{}@v{}, partitions={}, row_filter={}, masked=[{}]",
        message.layer,
        message.name,
        message.version,
        message.partitions,
        if message.filter.is_some() {
            "<redacted>"
        } else {
            "none"
        },
        masked.join(", ")
    )
}

impl DisplayAs for RemoteScanExec {
    fn fmt_as(&self, _t: DisplayFormatType, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        describe(&self.message, self.properties.eq_properties.schema(), f)?;
        if let Some(s) = &self.selection {
            write!(f, ", running={s:?}")?;
        }
        Ok(())
    }
}

impl ExecutionPlan for RemoteScanExec {
    fn name(&self) -> &str {
        "PolicyExec"
    }

    fn properties(&self) -> &Arc<PlanProperties> {
        &self.properties
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
        let rebuilder = Arc::clone(&self.rebuilder);
        let partition = match &self.selection {
            Some(s) => *s.get(partition).ok_or_else(|| {
                DataFusionError::Internal(format!("no partition {partition} in this task"))
            })?,
            None => partition,
        };
        let (built, message, table) = (
            Arc::clone(&self.built),
            self.message.clone(),
            self.table.clone(),
        );
        let schema = self.schema();
        let expected = Arc::clone(&schema);
        let stream = futures::stream::once(async move {
            let built = built
                .get_or_try_init(|| rebuilder.rebuild(&message, &expected, &context))
                .await?;
            PolicyExec::guarded_execute(&built.plan, &table, partition, Arc::clone(&built.context))
        })
        .try_flatten();
        Ok(Box::pin(RecordBatchStreamAdapter::new(schema, stream)))
    }
}
