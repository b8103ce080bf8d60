//! The engine: the one place both front ends call to run SQL and table operations.
//!
//! It knows no HTTP or gRPC types. Every read plans in a per-principal session
//! ([`session::SessionFactory`]); every write checks privileges through
//! [`crate::security::AccessControl`] and commits through [`crate::pipelines::commit`].

mod audit;
mod bounded;
mod cached;
pub(crate) mod dml;
mod execute;
pub(crate) mod expect;
mod in_strings;
pub(crate) mod limits;
pub(crate) mod lineage;
pub(crate) mod maintenance;
pub(crate) mod memory;
pub(crate) mod models;
pub(crate) mod openlineage;
mod output;
mod params;
pub(crate) mod policies;
mod prepare;
pub(crate) mod session;
pub(crate) mod sql;
mod statement;
mod streamed;
pub(crate) mod tables;

use std::sync::Arc;

use datafusion::execution::context::SessionState;
use datafusion::execution::memory_pool::FairSpillPool;
use datafusion::execution::runtime_env::{RuntimeEnv, RuntimeEnvBuilder};

use crate::cache::ResultCache;
use crate::config::Config;
use crate::error::{Error, Result};
use crate::security::AccessControl;
use crate::security::policy::store::PolicyStore;
use crate::storage::Catalog;

pub use output::{Executed, Prepared, QueryOutput, ResultKey, Submission, command_schema};
pub use sql::Statement;

use cached::PlannedQuery;

#[derive(Debug)]
pub struct Engine {
    catalog: Arc<Catalog>,
    policies: Arc<PolicyStore>,
    sessions: session::SessionFactory,
    cache: Option<Arc<ResultCache>>,
    default_layer: String,
    max_sql_bytes: usize,
    allow_short_vacuum: bool,
    admission: limits::Admission,
    runtime: Arc<RuntimeEnv>,
    /// The runtime of pipeline statements: its memory pool is `[scheduler]
    /// pipeline_memory_bytes`.
    pipeline_runtime: Arc<RuntimeEnv>,
    /// The result key of each (principal, query text, parameters) last run, so the same
    /// request replays its cached result without planning ([`statement_key`]).
    statement_keys: moka::sync::Cache<[u8; 32], ResultKey>,
    /// Plans kept for the execution that follows ([`PlannedQuery`]).
    plans: moka::sync::Cache<[u8; 32], Arc<PlannedQuery>>,
    /// Who VACUUM must not leave behind ([`maintenance::ChangeReaders`]).
    change_readers: std::sync::OnceLock<std::sync::Weak<dyn maintenance::ChangeReaders>>,
    /// Where the OpenLineage events of writes go (`[lineage.openlineage]`).
    openlineage: crate::telemetry::openlineage::Emitter,
    /// `[lineage] enabled`: writes record their lineage (and emit OpenLineage events).
    lineage_enabled: bool,
    /// Where large queries go (`[cluster]`); `None` when `mode = off`.
    cluster: Option<Arc<crate::cluster::Cluster>>,
}

/// Strata's own physical expressions on the cluster's wire (`crate::cluster`).
pub fn expr_codec() -> Arc<dyn crate::cluster::ExprCodec> {
    Arc::new(in_strings::InStringsCodec)
}

/// The session template of every query (Strata's functions, configuration and physical
/// optimizer rules): what cluster executors rebuild scans in.
pub fn session_template(cfg: &crate::config::QueryConfig) -> Result<SessionState> {
    let runtime = RuntimeEnvBuilder::new()
        .build_arc()
        .map_err(|e| Error::Config(format!("runtime: {e}")))?;
    Ok(session::template_state(cfg, runtime)?)
}

impl Engine {
    pub fn new(cfg: &Config, catalog: Arc<Catalog>, policies: Arc<PolicyStore>) -> Result<Engine> {
        let spill = cfg.server.data_dir.join("spill");
        std::fs::create_dir_all(&spill)
            .map_err(|e| Error::Config(format!("spill dir {}: {e}", spill.display())))?;
        let runtime: Arc<RuntimeEnv> = RuntimeEnvBuilder::new()
            .with_memory_pool(Arc::new(FairSpillPool::new(cfg.query.memory_limit_bytes)))
            .with_temp_file_path(&spill)
            .build_arc()
            .map_err(|e| Error::Config(format!("query runtime: {e}")))?;
        // Pipeline statements: a pool of their own, the same object stores (the secure
        // catalog registers each table's store once, for both).
        let pipeline_runtime: Arc<RuntimeEnv> = RuntimeEnvBuilder::new()
            .with_memory_pool(Arc::new(FairSpillPool::new(
                cfg.scheduler.pipeline_memory_bytes,
            )))
            .with_object_store_registry(Arc::clone(&runtime.object_store_registry))
            .with_temp_file_path(&spill)
            .build_arc()
            .map_err(|e| Error::Config(format!("pipeline runtime: {e}")))?;
        let sessions = session::SessionFactory::new(
            &cfg.query,
            Arc::clone(&runtime),
            Arc::clone(&pipeline_runtime),
            Arc::clone(&catalog),
        )?;
        Ok(Engine {
            catalog,
            policies,
            sessions,
            cache: ResultCache::new(&cfg.cache),
            default_layer: cfg.query.default_layer.to_ascii_lowercase(),
            max_sql_bytes: cfg.query.max_sql_bytes,
            allow_short_vacuum: cfg.storage.allow_short_vacuum_retention,
            admission: limits::Admission::new(
                &cfg.query,
                cfg.scheduler.max_concurrent_models,
                cfg.server.memory_budget_bytes,
            ),
            runtime,
            pipeline_runtime,
            statement_keys: moka::sync::Cache::builder()
                .max_capacity(100_000)
                .time_to_live(std::time::Duration::from_secs(cfg.cache.ttl_secs.max(1)))
                .build(),
            plans: moka::sync::Cache::builder()
                .max_capacity(256)
                .time_to_live(std::time::Duration::from_secs(60))
                .build(),
            change_readers: std::sync::OnceLock::new(),
            openlineage: crate::telemetry::openlineage::Emitter::start(&cfg.lineage.openlineage)?,
            lineage_enabled: cfg.lineage.enabled,
            cluster: crate::cluster::Cluster::from_config(&cfg.cluster, expr_codec())?,
        })
    }

    /// The OpenLineage emitter (flushed by the server on shutdown).
    pub fn openlineage(&self) -> &crate::telemetry::openlineage::Emitter {
        &self.openlineage
    }

    pub fn catalog(&self) -> &Arc<Catalog> {
        &self.catalog
    }

    /// The policies in force now (one cheap freshness check against the store).
    pub async fn access(&self) -> Result<Arc<AccessControl>> {
        self.policies.current().await
    }

    pub fn policies(&self) -> &Arc<PolicyStore> {
        &self.policies
    }

    /// A session state for planning policy expressions outside a query.
    pub fn planning_state(&self) -> &datafusion::execution::context::SessionState {
        self.sessions.template()
    }

    /// The metrics of this process as OpenMetrics text: the process's (requests, commits,
    /// admission, heap), the query memory pool's and the result cache's.
    pub fn metrics_text(&self) -> String {
        use crate::telemetry::metrics::{encode, gauge_value};
        use datafusion::execution::memory_pool::MemoryLimit;
        use prometheus_client::metrics::gauge::ConstGauge;
        let mut registry = crate::telemetry::metrics().registry();
        for (runtime, prefix, what, setting) in [
            (
                &self.runtime,
                "strata_memory_pool",
                "Query",
                "query.memory_limit_bytes",
            ),
            (
                &self.pipeline_runtime,
                "strata_pipeline_memory_pool",
                "Pipeline",
                "scheduler.pipeline_memory_bytes",
            ),
        ] {
            let pool = &runtime.memory_pool;
            registry.register(
                format!("{prefix}_reserved_bytes"),
                format!("{what} memory reserved from the pool"),
                ConstGauge::new(gauge_value(pool.reserved() as u64)),
            );
            if let MemoryLimit::Finite(n) = pool.memory_limit() {
                registry.register(
                    format!("{prefix}_limit_bytes"),
                    format!("{what} memory pool size ({setting})"),
                    ConstGauge::new(gauge_value(n as u64)),
                );
            }
        }
        if let Some(cache) = &self.cache {
            cache.register_metrics(&mut registry);
        }
        self.openlineage.register(&mut registry);
        encode(&registry)
    }

    /// (entries, bytes) of the result cache.
    pub fn cache_usage(&self) -> Option<(u64, u64)> {
        self.cache.as_ref().map(|c| c.usage())
    }
}
