//! [`PolicyGuard`]: the last analyzer rule of every session.
//!
//! Invariant: it rejects any plan containing a `TableScan` whose provider is not a
//! [`PolicyTable`] bound to this session's principal. `information_schema` scans are allowed:
//! DataFusion builds them from the session's catalog, which is the [`super::SecureCatalog`].

use std::any::Any;
use std::sync::Arc;

use datafusion::common::tree_node::TreeNodeRecursion;
use datafusion::common::{DataFusionError, Result as DfResult};
use datafusion::config::ConfigOptions;
use datafusion::datasource::source_as_provider;
use datafusion::logical_expr::LogicalPlan;
use datafusion::optimizer::AnalyzerRule;

use crate::security::Principal;
use crate::security::policy::PolicyTable;

#[derive(Debug)]
pub(crate) struct PolicyGuard {
    principal: Arc<Principal>,
}

impl PolicyGuard {
    pub(crate) fn new(principal: Arc<Principal>) -> PolicyGuard {
        PolicyGuard { principal }
    }

    /// Fails unless every scan in `plan` (subqueries included) is allowed.
    pub(crate) fn check(&self, plan: &LogicalPlan) -> DfResult<()> {
        plan.apply_with_subqueries(|node| {
            if let LogicalPlan::TableScan(scan) = node {
                if scan.table_name.schema() == Some("information_schema") {
                    return Ok(TreeNodeRecursion::Continue);
                }
                let provider = source_as_provider(&scan.source)?;
                let any: &dyn Any = provider.as_ref();
                match any.downcast_ref::<PolicyTable>() {
                    Some(t) if t.is_bound_to(&self.principal) => {}
                    _ => {
                        return Err(DataFusionError::Plan(format!(
                            "access denied: {} is not resolved through the secure catalog",
                            scan.table_name
                        )));
                    }
                }
            }
            Ok(TreeNodeRecursion::Continue)
        })?;
        Ok(())
    }
}

impl AnalyzerRule for PolicyGuard {
    fn analyze(&self, plan: LogicalPlan, _config: &ConfigOptions) -> DfResult<LogicalPlan> {
        self.check(&plan)?;
        Ok(plan)
    }

    fn name(&self) -> &str {
        "strata_policy_guard"
    }
}
