//! `strata cluster scheduler` and `strata cluster executor`: Ballista's scheduler and
//! executor with Strata's codec, each built from its own node's configuration.

use std::sync::Arc;

use ballista_core::config::TaskSchedulingPolicy;
use ballista_core::extension::SessionConfigExt;
use ballista_core::registry::BallistaFunctionRegistry;
use ballista_core::serde::protobuf::scheduler_grpc_server::SchedulerGrpcServer;
use ballista_executor::execution_engine::{
    DefaultExecutionEngine, ExecutionEngine, QueryStageExecutor,
};
use ballista_executor::executor_process::{ExecutorProcessConfig, start_executor_process};
use ballista_scheduler::cluster::BallistaCluster;
use ballista_scheduler::config::SchedulerConfig;
use ballista_scheduler::scheduler_process::create_scheduler;
use ballista_scheduler::scheduler_server::SchedulerServer;
use datafusion::common::Result as DfResult;
use datafusion::common::tree_node::{TreeNode, TreeNodeRecursion};
use datafusion::execution::context::SessionState;
use datafusion::physical_plan::ExecutionPlan;
use datafusion::prelude::SessionConfig;
use datafusion_proto::protobuf::{LogicalPlanNode, PhysicalPlanNode};
use tonic::service::{Routes, RoutesBuilder};

use super::codec::{ExprCodec, Role, StrataCodec};
use super::remote::{Rebuilder, RemoteScanExec};
use super::transport::{MAX_MESSAGE, Transport};
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
    // No plan key here: the scheduler never sends the shuffle token.
    let transport = Transport::from_config(&cfg.cluster, None)?;
    let config = Arc::new(SchedulerConfig {
        bind_host: bind.ip().to_string(),
        bind_port: bind.port(),
        external_host: bind.ip().to_string(),
        override_physical_codec: Some(Arc::new(StrataCodec::new(Role::Scheduler, exprs))),
        scheduling_policy: policy(&transport),
        override_create_grpc_client_endpoint: Some(transport.endpoint_hook()),
        // An executor that stops answering is given up after 15 s, so a query waiting
        // for it fails instead of hanging (`submit`).
        executor_timeout_seconds: 15,
        expire_dead_executor_interval_seconds: 5,
        no_executors_grace_period_seconds: 15,
        min_ready_executors: 1,
        grpc_server_max_decoding_message_size: MAX_MESSAGE as u32,
        grpc_server_max_encoding_message_size: MAX_MESSAGE as u32,
        ..SchedulerConfig::default()
    });
    let failed =
        |e: ballista_core::error::BallistaError| Error::Config(format!("cluster scheduler: {e}"));
    config.validate().map_err(failed)?;
    let cluster = BallistaCluster::new_from_config(&config)
        .await
        .map_err(failed)?;
    let scheduler = create_scheduler::<LogicalPlanNode, PhysicalPlanNode>(cluster, config)
        .await
        .map_err(failed)?;
    tracing::info!(%bind, tls = transport.uses_tls(), "cluster scheduler listening");
    transport
        .server(tonic::transport::Server::builder())?
        .accept_http1(true)
        .add_routes(scheduler_routes(scheduler))
        .serve(bind)
        .await
        .map_err(|e| Error::internal(format!("cluster scheduler: {e}")))
}

/// The scheduler's gRPC service (Ballista's) and its probes, `/healthz` (the process
/// answers) and `/readyz` (an executor is alive: the front end asks before it submits).
/// Nothing else: Ballista's REST API, Flight SQL service and Flight proxy stay off.
fn scheduler_routes(scheduler: SchedulerServer<LogicalPlanNode, PhysicalPlanNode>) -> Routes {
    let ready = scheduler.clone();
    let grpc = SchedulerGrpcServer::new(scheduler)
        .max_decoding_message_size(MAX_MESSAGE)
        .max_encoding_message_size(MAX_MESSAGE);
    let mut routes = RoutesBuilder::default();
    routes.add_service(grpc);
    let probes = axum::Router::new()
        .route("/healthz", axum::routing::get(|| async { "ok\n" }))
        .route(
            "/readyz",
            axum::routing::get(move || {
                let ready = ready.clone();
                async move {
                    match live_executors(&ready).await {
                        0 => (
                            http::StatusCode::SERVICE_UNAVAILABLE,
                            "not ready: no live executor\n".to_string(),
                        ),
                        n => (
                            http::StatusCode::OK,
                            format!("ready: {n} executors registered\n"),
                        ),
                    }
                }
            }),
        );
    let router = routes
        .routes()
        .into_axum_router()
        .merge(probes)
        .layer(axum::middleware::from_fn(peer_address));
    Routes::from(router)
}

/// Ballista's scheduler reads a caller's address (an executor that does not name its own
/// host) as axum's `ConnectInfo`, which its own server sets; tonic's, serving here, keeps
/// it as its connect info (plain or under TLS).
async fn peer_address(
    mut request: axum::extract::Request,
    next: axum::middleware::Next,
) -> axum::response::Response {
    use tonic::transport::server::{TcpConnectInfo, TlsConnectInfo};
    let ext = request.extensions();
    let peer = ext
        .get::<TcpConnectInfo>()
        .and_then(TcpConnectInfo::remote_addr)
        .or_else(|| {
            ext.get::<TlsConnectInfo<TcpConnectInfo>>()
                .and_then(|i| i.get_ref().remote_addr())
        });
    if let Some(peer) = peer {
        request
            .extensions_mut()
            .insert(axum::extract::ConnectInfo(peer));
    }
    next.run(request).await
}

/// Executors with a recent heartbeat that are not stopping (what Ballista's own readiness
/// counts, which it keeps to itself).
async fn live_executors(scheduler: &SchedulerServer<LogicalPlanNode, PhysicalPlanNode>) -> usize {
    use ballista_core::serde::protobuf::executor_status::Status;
    let manager = &scheduler.state.executor_manager;
    let timeout = scheduler.state.config.executor_timeout_seconds;
    let since = ballista_core::utils::get_time_before(timeout);
    let Ok(executors) = manager.get_executors_state().await else {
        return 0;
    };
    executors
        .iter()
        .filter_map(|(meta, _, _)| manager.get_executor_hearbeat(&meta.id))
        .filter(|h| h.timestamp >= since)
        .filter(|h| {
            !matches!(
                h.status.as_ref().and_then(|s| s.status.as_ref()),
                Some(Status::Terminating(_) | Status::Dead(_))
            )
        })
        .count()
}

/// How executors get their tasks: pushed by the scheduler, or pulled under mutual TLS
/// (`transport`'s docs); the scheduler and its executors agree by configuration.
fn policy(transport: &Transport) -> TaskSchedulingPolicy {
    if transport.pull_tasks() {
        TaskSchedulingPolicy::PullStaged
    } else {
        TaskSchedulingPolicy::PushStaged
    }
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
    let transport = Transport::from_config(c, Some(&key))?;
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
        task_scheduling_policy: policy(&transport),
        override_create_grpc_client_endpoint: Some(transport.endpoint_hook()),
        override_arrow_flight_service: Some(transport.flight_service()?),
        override_config_producer: Some(config_producer(&transport)),
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

/// Each task's session: Ballista's, with this node's transport for the shuffle reads it
/// makes from other executors.
fn config_producer(transport: &Transport) -> ballista_core::ConfigProducer {
    let (tls, hook) = (transport.uses_tls(), transport.endpoint_hook());
    Arc::new(move || {
        SessionConfig::new_with_ballista()
            .with_ballista_use_tls(tls)
            .with_ballista_override_create_grpc_client_endpoint(Arc::clone(&hook))
    })
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
