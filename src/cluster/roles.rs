//! `strata cluster scheduler` and `strata cluster executor`: Ballista's scheduler and
//! executor with Strata's codec, each built from its own node's configuration.

use std::sync::Arc;

use ballista_core::registry::BallistaFunctionRegistry;
use ballista_executor::execution_engine::{
    DefaultExecutionEngine, ExecutionEngine, QueryStageExecutor,
};
use ballista_executor::executor_process::{ExecutorProcessConfig, start_executor_process};
use ballista_scheduler::cluster::BallistaCluster;
use ballista_scheduler::config::SchedulerConfig;
use ballista_scheduler::scheduler_process::start_server;
use datafusion::common::Result as DfResult;
use datafusion::common::tree_node::{TreeNode, TreeNodeRecursion};
use datafusion::execution::context::SessionState;
use datafusion::physical_plan::ExecutionPlan;
use datafusion::prelude::SessionConfig;

use super::codec::{ExprCodec, Role, StrataCodec};
use super::remote::{Rebuilder, RemoteScanExec};
use super::wire::refused;
use crate::config::Config;
use crate::error::{Error, Result};
use crate::storage::{Catalog, Warehouse};

/// Runs the scheduler until the process is stopped. It opens no storage and holds no key:
/// it relays signed plans between the front ends and the executors.
/// `exprs`: the engine's expressions (`engine::expr_codec`).
pub async fn run_scheduler(cfg: &Config, exprs: Arc<dyn ExprCodec>) -> Result<()> {
    let problems = cfg.cluster.scheduler_problems();
    if !problems.is_empty() {
        return Err(Error::Config(problems.join("; ")));
    }
    let bind = cfg.cluster.scheduler_bind;
    let config = SchedulerConfig {
        bind_host: bind.ip().to_string(),
        bind_port: bind.port(),
        external_host: bind.ip().to_string(),
        override_physical_codec: Some(Arc::new(StrataCodec::new(Role::Scheduler, exprs))),
        // An executor that stops answering is given up after 15 s, so a query waiting
        // for it fails instead of hanging (`submit`).
        executor_timeout_seconds: 15,
        expire_dead_executor_interval_seconds: 5,
        no_executors_grace_period_seconds: 15,
        grpc_server_max_decoding_message_size: 64 << 20,
        grpc_server_max_encoding_message_size: 64 << 20,
        ..SchedulerConfig::default()
    };
    let cluster = BallistaCluster::new_from_config(&config)
        .await
        .map_err(|e| Error::Config(format!("cluster scheduler: {e}")))?;
    tracing::info!(%bind, "cluster scheduler listening");
    start_server(cluster, bind, Arc::new(config))
        .await
        .map_err(|e| Error::internal(format!("cluster scheduler: {e}")))
}

/// Runs an executor until the process is stopped: it reads tables with its own storage
/// configuration and runs only plans whose table scans a front end signed.
/// `template`: the engine's session template (`engine::session_template`, its functions
/// and physical optimizer rules); `exprs`: the engine's expressions.
pub async fn run_executor(
    cfg: &Config,
    template: SessionState,
    exprs: Arc<dyn ExprCodec>,
) -> Result<()> {
    let c = &cfg.cluster;
    let problems = c.executor_problems();
    if !problems.is_empty() {
        return Err(Error::Config(problems.join("; ")));
    }
    let scheduler = c
        .scheduler_url
        .as_deref()
        .map(url::Url::parse)
        .transpose()
        .map_err(|e| Error::Config(format!("cluster.scheduler_url: {e}")))?
        .ok_or_else(|| Error::Config("cluster.scheduler_url is not set".into()))?;
    let key: Arc<[u8]> = c
        .plan_key
        .as_ref()
        .map(|k| Arc::from(k.expose().as_bytes()))
        .ok_or_else(|| Error::Config("cluster.plan_key is not set".into()))?;
    let catalog = Arc::new(Catalog::new(Warehouse::open(&cfg.storage)?));
    // Strata's bounded `repeat`, `lpad`, … under their own names.
    let functions = BallistaFunctionRegistry {
        scalar_functions: template.scalar_functions().clone(),
        ..BallistaFunctionRegistry::default()
    };
    let codec = StrataCodec::new(
        Role::Executor {
            key,
            rebuilder: Arc::new(Rebuilder::new(catalog, Arc::new(template))),
        },
        exprs,
    );
    let work_dir = c
        .executor_work_dir
        .clone()
        .unwrap_or_else(|| cfg.server.data_dir.join("cluster"));
    std::fs::create_dir_all(&work_dir)
        .map_err(|e| Error::Config(format!("{}: {e}", work_dir.display())))?;
    let config = ExecutorProcessConfig {
        bind_host: c.executor_bind_host.clone(),
        external_host: c.executor_external_host.clone(),
        port: c.executor_flight_port,
        grpc_port: c.executor_grpc_port,
        scheduler_host: scheduler.host_str().unwrap_or("localhost").to_string(),
        scheduler_port: scheduler.port().unwrap_or(50050),
        scheduler_connect_timeout_seconds: 30,
        vcores: c.executor_vcores,
        work_dir: Some(work_dir.display().to_string()),
        memory_pool_size: (c.executor_memory_bytes > 0).then_some(c.executor_memory_bytes),
        executor_heartbeat_interval_seconds: 3,
        override_physical_codec: Some(Arc::new(codec)),
        override_function_registry: Some(Arc::new(functions)),
        override_execution_engine: Some(Arc::new(SignedScansOnly(DefaultExecutionEngine::new()))),
        ..ExecutorProcessConfig::default()
    };
    tracing::info!(
        flight_port = c.executor_flight_port,
        grpc_port = c.executor_grpc_port,
        "cluster executor starting"
    );
    start_executor_process(Arc::new(config))
        .await
        .map_err(|e| Error::internal(format!("cluster executor: {e}")))
}

/// The executor's plan check: a stage runs only when every leaf reads a table through a
/// scan this executor verified, reads Ballista's shuffle output, or reads nothing at all.
/// A plan naming files, a memory table or anything else is refused before it starts.
struct SignedScansOnly(DefaultExecutionEngine);

impl ExecutionEngine for SignedScansOnly {
    fn create_query_stage_exec(
        &self,
        job_id: ballista_core::JobId,
        stage_id: usize,
        task_id: usize,
        global_output_partition_ids: Vec<usize>,
        plan: Arc<dyn ExecutionPlan>,
        work_dir: &str,
        config: &SessionConfig,
    ) -> DfResult<Arc<dyn QueryStageExecutor>> {
        check_leaves(&plan)?;
        self.0.create_query_stage_exec(
            job_id,
            stage_id,
            task_id,
            global_output_partition_ids,
            plan,
            work_dir,
            config,
        )
    }
}

/// Leaves an executor runs: verified table scans, shuffle readers, and the two leaves that
/// read no data (`EmptyExec`, `PlaceholderRowExec`, which the optimizer leaves for a
/// branch it proved empty or a query without a table).
pub(crate) fn check_leaves(plan: &Arc<dyn ExecutionPlan>) -> DfResult<()> {
    let mut bad = None;
    plan.apply(|node| {
        if !node.children().is_empty() {
            return Ok(TreeNodeRecursion::Continue);
        }
        // A `RemoteScanExec` exists here only once its signature was checked (codec).
        let allowed = node.is::<RemoteScanExec>()
            || matches!(
                node.name(),
                "ShuffleReaderExec"
                    | "RangeShuffleReaderExec"
                    | "UnresolvedShuffleExec"
                    | "EmptyExec"
                    | "PlaceholderRowExec"
            );
        if !allowed {
            bad = Some(node.name().to_string());
            return Ok(TreeNodeRecursion::Stop);
        }
        Ok(TreeNodeRecursion::Continue)
    })?;
    match bad {
        Some(name) => Err(refused(&format!(
            "a stage may read only signed table scans and shuffle output, not {name}"
        ))),
        None => Ok(()),
    }
}
