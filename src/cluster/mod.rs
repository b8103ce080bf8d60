//! Scale-out: queries bigger than one node run on Apache DataFusion Ballista.
//!
//! Roles: the front end (`strata serve`, `[cluster] mode = auto | always`) plans every
//! query as always, in the principal's secure session, and hands the finished physical
//! plan of an eligible query to the scheduler ([`submit`]); `strata cluster scheduler`
//! splits it into stages ([`roles::run_scheduler`]); `strata cluster executor` runs them
//! ([`roles::run_executor`]).
//!
//! Security stays where it is. The plan is planned and optimised on the front end and
//! never re-planned (Ballista's physical-plan submission), so no user predicate is pushed
//! below a policy filter. Every table read crosses the wire inside its `PolicyExec`,
//! signed by the front end ([`codec`]); an executor checks the signature, rebuilds the scan
//! with its own storage through the function the front end used, refuses it if it differs
//! (table id, schema, partitioning), and runs a stage only when every leaf is such a scan
//! or Ballista's shuffle output ([`roles::check_leaves`]).
//!
//! The trust boundary. The cluster network is private. The scheduler holds no storage
//! credentials and not the plan key: it can delay or drop work, never forge a scan, and it
//! never sees a policy in clear (`PolicyExec`'s display redacts the bound claims; it logs
//! and stores plans). Executors read with their own, read-only credentials; no secret
//! travels in session settings (only `datafusion.*` options are sent) or job configs.
//! The cluster's connections (plans, shuffle data and result rows over gRPC and Arrow
//! Flight) are under Strata's own mutual TLS with `cluster.transport = "tls"`, under a
//! service mesh's with `"mesh"`, or on loopback addresses only (`config::cluster`); an
//! executor's shuffle service answers only holders of the plan key, never the scheduler
//! ([`transport`]). The Helm chart adds NetworkPolicies so only the cluster's own pods
//! reach its ports.
//!
//! Which queries go: `always` every eligible one, `auto` those whose planned scan reads
//! more than `min_bytes_scanned`; the header `x-strata-distributed: on|off` overrides per
//! request. Eligible: every leaf of the plan is a shippable table scan (the change feed,
//! `information_schema`, `system` views and `VALUES` stay here), and it is a query (DML
//! never goes).

mod codec;
mod remote;
mod roles;
mod submit;
mod transport;
mod wire;

use std::sync::Arc;

use datafusion::common::tree_node::{TreeNode, TreeNodeRecursion};
use datafusion::datasource::physical_plan::FileScanConfig;
use datafusion::datasource::source::DataSourceExec;
use datafusion::execution::SendableRecordBatchStream;
use datafusion::physical_plan::ExecutionPlan;
use datafusion::prelude::SessionConfig;

pub use codec::ExprCodec;
pub use roles::{run_executor, run_scheduler};

use crate::config::{ClusterConfig, ClusterMode};
use crate::error::{Error, Result};
use crate::security::policy::PolicyExec;

/// The per-request override's header, on REST and Flight.
pub const DISTRIBUTED_HEADER: &str = "x-strata-distributed";

tokio::task_local! {
    /// The request's `x-strata-distributed`, while its statement runs.
    static REQUESTED: Option<bool>;
}

/// Runs `f` with the request's override (`None`: the configured mode decides).
pub async fn with_request<F: std::future::Future>(requested: Option<bool>, f: F) -> F::Output {
    REQUESTED.scope(requested, f).await
}

/// The header's value: `on`, `off`, or absent.
pub fn parse_header(value: Option<&str>) -> Result<Option<bool>> {
    match value.map(|v| v.trim().to_ascii_lowercase()).as_deref() {
        None => Ok(None),
        Some("on") => Ok(Some(true)),
        Some("off") => Ok(Some(false)),
        Some(other) => Err(Error::invalid(format!(
            "{DISTRIBUTED_HEADER}: {other:?} is neither \"on\" nor \"off\""
        ))),
    }
}

/// Where a query may run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Route {
    Local,
    /// On the cluster when the planned scan reads more than this many bytes.
    IfLarger(u64),
    /// On the cluster when eligible.
    Always,
}

/// The front end's handle on the cluster.
#[derive(Debug)]
pub(crate) struct Cluster {
    mode: ClusterMode,
    min_bytes_scanned: u64,
    scheduler: submit::Scheduler,
    codec: codec::StrataCodec,
}

impl Cluster {
    /// `None` when `mode = off`.
    pub(crate) fn from_config(
        cfg: &ClusterConfig,
        exprs: Arc<dyn ExprCodec>,
    ) -> Result<Option<Arc<Cluster>>> {
        if cfg.mode == ClusterMode::Off {
            return Ok(None);
        }
        let url = cfg
            .scheduler_url
            .as_deref()
            .ok_or_else(|| Error::Config("cluster.scheduler_url is not set".into()))?;
        let key = cfg
            .plan_key
            .as_ref()
            .ok_or_else(|| Error::Config("cluster.plan_key is not set".into()))?;
        Ok(Some(Arc::new(Cluster {
            mode: cfg.mode,
            min_bytes_scanned: cfg.min_bytes_scanned,
            scheduler: submit::Scheduler::new(
                url,
                transport::Transport::from_config(cfg, Some(key.expose().as_bytes()))?,
            )?,
            codec: codec::StrataCodec::new(
                codec::Role::FrontEnd {
                    key: Arc::from(key.expose().as_bytes()),
                    ttl_ms: cfg.plan_ttl_secs.saturating_mul(1000),
                },
                exprs,
            ),
        })))
    }

    /// Runs `plan` (planned in a session marked `ShipScans`) on the cluster.
    pub(crate) async fn execute(
        &self,
        plan: Arc<dyn ExecutionPlan>,
        config: &SessionConfig,
    ) -> Result<SendableRecordBatchStream> {
        crate::telemetry::metrics().cluster_queries.inc();
        self.scheduler.execute(plan, &self.codec, config).await
    }
}

/// Where the statement now running may go, given the server's cluster (`None`: off) and
/// the request's header.
pub(crate) fn route(cluster: Option<&Cluster>) -> Result<Route> {
    let requested = REQUESTED.try_with(|r| *r).ok().flatten();
    Ok(match (cluster, requested) {
        (_, Some(false)) => Route::Local,
        (None, Some(true)) => {
            return Err(Error::invalid(format!(
                "{DISTRIBUTED_HEADER}: on, but this server has no cluster (cluster.mode = \"off\")"
            )));
        }
        (None, None) => Route::Local,
        (Some(_), Some(true)) => Route::Always,
        (Some(c), None) => match c.mode {
            ClusterMode::Off => Route::Local,
            ClusterMode::Auto => Route::IfLarger(c.min_bytes_scanned),
            ClusterMode::Always => Route::Always,
        },
    })
}

/// Planning options of a plan that may go to the cluster. Dynamic filters (a join's build
/// side pruning its probe side's scan) cannot cross stages, and the scheduler's own join
/// selection refuses to swap a join that has one ("Cannot swap HashJoinExec inputs after
/// dynamic filters have been constructed"); round-robin repartitioning would only add
/// shuffles (Ballista's scheduler turns it off for the plans it makes itself); a
/// partition running alone must not read its siblings' files.
pub(crate) fn plan_options(options: &mut datafusion::config::ConfigOptions) {
    let o = &mut options.optimizer;
    o.enable_dynamic_filter_pushdown = false;
    o.enable_join_dynamic_filter_pushdown = false;
    o.enable_topk_dynamic_filter_pushdown = false;
    o.enable_aggregate_dynamic_filter_pushdown = false;
    o.enable_round_robin_repartition = false;
    // Each task runs a slice of a scan's partitions (`remote`).
    options.execution.enable_file_stream_work_stealing = false;
}

/// Whether every leaf of `plan` is a table scan the cluster can run (and there is one).
pub(crate) fn eligible(plan: &Arc<dyn ExecutionPlan>) -> bool {
    let (mut scans, mut other) = (0usize, false);
    let _ = plan.apply(|node| {
        if let Some(p) = node.downcast_ref::<PolicyExec>() {
            // A scan with an output order would need it kept across the wire.
            if p.spec().is_some() && p.properties().output_ordering().is_none() {
                scans += 1;
            } else {
                other = true;
            }
        } else if node.children().is_empty()
            && !matches!(node.name(), "EmptyExec" | "PlaceholderRowExec")
        {
            other = true;
        }
        Ok(if other {
            TreeNodeRecursion::Stop
        } else {
            TreeNodeRecursion::Continue
        })
    });
    scans > 0 && !other
}

/// Bytes of the data files `plan` reads (after partition and file pruning), inside policy
/// boundaries too.
pub(crate) fn scanned_bytes(plan: &Arc<dyn ExecutionPlan>) -> u64 {
    let mut total = 0u64;
    let _ = plan.apply(|node| {
        if let Some(p) = node.downcast_ref::<PolicyExec>() {
            total = total.saturating_add(scanned_bytes(p.scan()));
        } else if let Some(source) = node.downcast_ref::<DataSourceExec>()
            && let Some(files) = source.data_source().downcast_ref::<FileScanConfig>()
        {
            for group in &files.file_groups {
                for file in group.iter() {
                    // A file split between partitions is read once, range by range.
                    let bytes = match &file.range {
                        Some(r) => u64::try_from(r.end.saturating_sub(r.start)).unwrap_or(0),
                        None => file.object_meta.size,
                    };
                    total = total.saturating_add(bytes);
                }
            }
        }
        Ok(TreeNodeRecursion::Continue)
    });
    total
}

#[cfg(test)]
mod tests;
