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

use super::codec::{ScanMessage, refused};
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
    ) -> DfResult<Arc<dyn ExecutionPlan>> {
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
        // The front end's settings (they travel with the job): the same partitioning.
        let state = SessionStateBuilder::new_from_existing(self.template.as_ref().clone())
            .with_config(ctx.session_config().clone())
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
        Ok(plan)
    }
}

/// A shipped table scan (see the module).
#[derive(Debug)]
pub(crate) struct RemoteScanExec {
    /// The signed bytes, relayed as they came.
    signed: Arc<[u8]>,
    message: ScanMessage,
    table: TableRef,
    properties: Arc<PlanProperties>,
    /// `Some` on an executor, after the signature was checked.
    rebuilder: Option<Arc<Rebuilder>>,
    built: Arc<OnceCell<Arc<dyn ExecutionPlan>>>,
}

impl RemoteScanExec {
    pub(crate) fn try_new(
        signed: Arc<[u8]>,
        message: ScanMessage,
        rebuilder: Option<Arc<Rebuilder>>,
    ) -> DfResult<RemoteScanExec> {
        let schema: SchemaRef = Arc::new(message.output_schema()?);
        let properties = PlanProperties::new(
            EquivalenceProperties::new(schema),
            Partitioning::UnknownPartitioning(message.partitions as usize),
            EmissionType::Incremental,
            Boundedness::Bounded,
        );
        Ok(RemoteScanExec {
            table: message.table()?,
            signed,
            message,
            properties: Arc::new(properties),
            rebuilder,
            built: Arc::new(OnceCell::new()),
        })
    }

    pub(crate) fn signed_bytes(&self) -> &[u8] {
        &self.signed
    }

    /// Whether this process checked its signature (an executor).
    pub(crate) fn is_verified(&self) -> bool {
        self.rebuilder.is_some()
    }
}

impl DisplayAs for RemoteScanExec {
    /// The scheduler logs and stores plans: the policy's expressions hold the principal's
    /// claims as literals, so they are never displayed, only which columns are masked.
    fn fmt_as(&self, _t: DisplayFormatType, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let masked: Vec<String> = self
            .message
            .masks
            .iter()
            .map(|m| {
                self.properties
                    .eq_properties
                    .schema()
                    .fields()
                    .iter()
                    .zip(&self.message.requested)
                    .find(|(_, i)| **i == m.column)
                    .map(|(f, _)| f.name().clone())
                    .unwrap_or_else(|| format!("#{}", m.column))
            })
            .collect();
        write!(
            f,
            "PolicyExec: table={}@v{}, partitions={}, row_filter={}, masked=[{}]",
            self.table,
            self.message.version,
            self.message.partitions,
            if self.message.filter.is_some() {
                "<redacted>"
            } else {
                "none"
            },
            masked.join(", ")
        )
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
        let Some(rebuilder) = self.rebuilder.clone() else {
            return Err(refused("this process does not run scans"));
        };
        let (built, message, table) = (
            Arc::clone(&self.built),
            self.message.clone(),
            self.table.clone(),
        );
        let schema = self.schema();
        let expected = Arc::clone(&schema);
        let stream = futures::stream::once(async move {
            let plan = built
                .get_or_try_init(|| rebuilder.rebuild(&message, &expected, &context))
                .await?;
            PolicyExec::guarded_execute(plan, &table, partition, context)
        })
        .try_flatten();
        Ok(Box::pin(RecordBatchStreamAdapter::new(schema, stream)))
    }
}
