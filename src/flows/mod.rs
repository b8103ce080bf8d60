//! Flows: pipelines of declarative models moving data bronze → silver → gold, run exactly
//! once per source change (PLATFORM P1, P2).
//!
//! ```text
//! PUT /api/v1/pipelines/{name} (bundle) ──▶ Flows::deploy
//!   model files parsed (model) ──▶ dependencies from each SELECT, topological order (dag)
//!   ──▶ checks: run-as roles ⊆ deployer's, MANAGE on target layers, sources exist with a
//!       change feed, one pipeline per target ──▶ the plan (added/changed/removed/unchanged,
//!       schemas, full refresh?) ──▶ stored as an immutable version (store)
//! POST /api/v1/pipelines/{name}/runs ──▶ Flows::start_run ──▶ background task (run):
//!   models in order; a failed model marks its downstream upstream_failed
//!   ──▶ engine::commit_model with the watermarks in the same commit
//! ```
//!
//! Everything reads and writes through the engine as the pipeline's run-as principal, so
//! grants, row filters and WITH CHECK apply to flows exactly as to users.

mod audit;
mod backfill;
mod checks;
mod dag;
mod deploy;
mod guard;
pub(crate) mod model;
mod plan;
mod quality;
mod record;
mod records;
mod requests;
mod results;
pub(crate) mod run;
mod runs;
pub(crate) mod schedule;
mod sql;
mod statements;
mod store;
mod triggers;

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex};

use chrono::Utc;
use tokio_util::sync::CancellationToken;

use crate::clock::Clock;
use crate::config::PipelinesConfig;
use crate::engine::Engine;
use crate::error::{Error, Result};
use crate::security::Principal;

pub use crate::engine::expect::{Expectation, OnViolation, RuleTally};
pub use audit::{AuditDef, AuditKind, AuditResult, Severity};
pub use backfill::BackfillRequest;
pub use checks::{ChecksDef, ChecksRun, TableChecks};
pub use dag::DagView;
pub use deploy::read_bundle;
pub use guard::{Fence, Origin};
pub(crate) use model::parse_instant;
pub use model::{Bundle, Header, Kind, ModelFile, PipelineDef};
pub use plan::{DeployPlan, ModelChange, ModelPlan};
pub use quality::{QualityReport, ReplayOutcome};
pub use record::{BackfillModel, ModelRun, RunRecord, RunStatus, SourceRange};
pub(crate) use requests::Route;
pub use schedule::{Catchup, RetryDef, TriggerDef};
pub use store::Deployment;
pub use store::Pause;
pub(crate) use triggers::{Unit, Upkeep, UpkeepOp};

use dag::Dag;
use model::Model;
use store::PipelineStore;

/// Problems of `[pipelines]`: service principals need unique valid names and never hold the
/// admin role.
pub(crate) fn config_problems(cfg: &PipelinesConfig, admin_role: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut seen = BTreeSet::new();
    for p in &cfg.principals {
        if crate::storage::validate_name(&p.name).is_err() {
            out.push(format!(
                "pipelines.principals: {:?} is not a valid name ([A-Za-z_][A-Za-z0-9_]*)",
                p.name
            ));
        }
        if !seen.insert(p.name.as_str()) {
            out.push(format!(
                "pipelines.principals: {} is declared twice",
                p.name
            ));
        }
        if p.roles.iter().any(|r| r == admin_role) {
            out.push(format!(
                "pipelines.principals: {} holds the admin role {admin_role}; service principals get their privileges from grants",
                p.name
            ));
        }
    }
    if let Some(dir) = &cfg.dir {
        out.extend(deploy::dir_problems(dir));
    }
    out
}

/// Runs kept in memory per replica (newest first beyond this are dropped).
const KEPT_RUNS: usize = 1000;

/// A pipeline as `GET /api/v1/pipelines/{name}` shows it.
#[derive(Debug, Clone, serde::Serialize, utoipa::ToSchema)]
pub struct PipelineView {
    pub name: String,
    pub version: u64,
    pub deployed_at: chrono::DateTime<Utc>,
    pub deployed_by: String,
    pub pipeline: PipelineDef,
    pub models: Vec<ModelFile>,
    pub dag: DagView,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub last_run: Option<RunRecord>,
}

/// One line of `GET /api/v1/pipelines`.
#[derive(Debug, Clone, serde::Serialize, utoipa::ToSchema)]
pub struct PipelineSummary {
    pub name: String,
    pub version: u64,
    pub models: Vec<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub last_status: Option<RunStatus>,
}

/// `POST /api/v1/pipelines/{name}/runs`.
#[derive(Debug, Clone, Default, serde::Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RunRequest {
    /// Run only these models (`layer.name`); all when absent.
    #[serde(default)]
    pub models: Option<Vec<String>>,
    /// Rebuild from the sources' current snapshots instead of reading from the watermarks.
    #[serde(default)]
    pub full_refresh: bool,
    /// Let `full_refresh` rebuild `append` and `scd2` models, whose tables hold history the
    /// sources' snapshots do not (it is lost).
    #[serde(default)]
    pub allow_history_loss: bool,
}

/// Filters of `GET /api/v1/runs`.
#[derive(Debug, Clone, Default)]
pub struct RunFilter {
    pub pipeline: Option<String>,
    pub status: Option<RunStatus>,
    pub limit: usize,
    /// Keyset paging: runs started before this run id.
    pub before: Option<String>,
}

#[derive(Debug)]
struct Active {
    record: RunRecord,
    cancel: CancellationToken,
    /// When it started by the clock (a scheduled slot due after it overlaps it).
    started: chrono::DateTime<Utc>,
}

#[derive(Debug)]
pub struct Flows {
    engine: Arc<Engine>,
    store: PipelineStore,
    principals: crate::security::principal::ServicePrincipals,
    default_layer: String,
    /// Runs this replica started (live while they run), the newest [`KEPT_RUNS`].
    runs: Arc<Mutex<BTreeMap<String, Active>>>,
    /// `system.runs` / `system.model_runs`: every run's start and end, on every replica.
    records: records::RunLog,
    /// The time runs are stamped and retries wait by (driven in tests).
    clock: Arc<dyn Clock>,
    /// This process among the replicas (random per process), named in the runs it executes.
    replica: String,
    /// Where runs execute: a runtime of its own (`[scheduler] pipeline_threads`).
    runtime: PipelineRuntime,
    /// Where the runs this replica accepts execute ([`Route`], set by the scheduler).
    route: std::sync::atomic::AtomicU8,
    /// The leader's last listing of standalone checks, and when it was taken
    /// (`checks::CHECKS_MAX_AGE`); dropped by a change through this replica.
    checks: Mutex<Option<(std::time::Instant, Vec<checks::TableChecks>)>>,
}

/// The runtime pipeline runs execute on, apart from the one serving queries: its worker
/// threads bound the cores a run or backfill can take. Shut down in the background when
/// the server drops it (a runtime may not be dropped inside another one's context).
#[derive(Debug)]
struct PipelineRuntime(Option<tokio::runtime::Runtime>);

impl PipelineRuntime {
    fn new(threads: Option<usize>) -> Result<PipelineRuntime> {
        let threads = threads.unwrap_or_else(|| {
            std::thread::available_parallelism().map_or(1, |n| (n.get() / 2).max(1))
        });
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(threads.max(1))
            .thread_name("strata-pipeline")
            // A model's batch nests the engine's write futures (expectations, lineage, the
            // MERGE inside a merge model) and DataFusion's recursive planning: 2 MiB (Tokio's
            // default) overflows in a debug build, and an overflow aborts the process.
            .thread_stack_size(8 * 1024 * 1024)
            .enable_all()
            .build()
            .map_err(|e| Error::internal(format!("pipeline runtime: {e}")))?;
        Ok(PipelineRuntime(Some(rt)))
    }

    fn spawn<F>(&self, f: F)
    where
        F: std::future::Future<Output = ()> + Send + 'static,
    {
        // `None` only once dropped, when nothing can call this any more.
        if let Some(rt) = &self.0 {
            rt.spawn(f);
        }
    }
}

impl Drop for PipelineRuntime {
    fn drop(&mut self) {
        if let Some(rt) = self.0.take() {
            rt.shutdown_background();
        }
    }
}

impl Flows {
    pub fn new(
        engine: Arc<Engine>,
        cfg: &PipelinesConfig,
        default_layer: &str,
        admin_role: &str,
        clock: Arc<dyn Clock>,
        pipeline_threads: Option<usize>,
    ) -> Result<Flows> {
        let principals = crate::security::principal::ServicePrincipals::new(&cfg.principals);
        Ok(Flows {
            store: PipelineStore::new(Arc::clone(engine.catalog().warehouse().store())),
            records: records::RunLog::new(Arc::clone(&engine), admin_role),
            engine,
            principals,
            default_layer: default_layer.to_ascii_lowercase(),
            runs: Arc::new(Mutex::new(BTreeMap::new())),
            clock,
            replica: uuid::Uuid::new_v4().simple().to_string(),
            runtime: PipelineRuntime::new(pipeline_threads)?,
            route: std::sync::atomic::AtomicU8::new(Route::Here as u8),
            checks: Mutex::new(None),
        })
    }

    /// This process's id among the replicas.
    pub fn replica(&self) -> &str {
        &self.replica
    }

    pub(crate) fn clock(&self) -> &Arc<dyn Clock> {
        &self.clock
    }

    /// The warehouse's object store (the scheduler's lease lives there too).
    pub(crate) fn object_store(&self) -> Arc<dyn object_store::ObjectStore> {
        Arc::clone(self.engine.catalog().warehouse().store())
    }

    fn run_as(&self, def: &PipelineDef) -> Result<Arc<Principal>> {
        self.principal_named(&def.run_as)
    }

    /// The service principal `name` (`[[pipelines.principals]]`).
    fn principal_named(&self, name: &str) -> Result<Arc<Principal>> {
        self.principals.get(name)
    }

    /// Per pipeline, the status of the newest run `p` may see (live or recorded), with one
    /// query of `system.runs` for all pipelines.
    async fn last_statuses(&self, p: &Arc<Principal>) -> Result<BTreeMap<String, RunStatus>> {
        let mut last = self.records.last_runs(p).await?;
        let access = self.engine.access().await?;
        if let Ok(runs) = self.runs.lock() {
            for a in runs
                .values()
                .filter(|a| runs::run_visible(&access, p, &a.record))
            {
                let r = &a.record;
                if last.get(&r.pipeline).is_none_or(|(id, _)| r.run_id >= *id) {
                    last.insert(r.pipeline.clone(), (r.run_id.clone(), r.status));
                }
            }
        }
        Ok(last.into_iter().map(|(k, (_, s))| (k, s)).collect())
    }

    /// The newest run of `pipeline` that `p` may see (live or recorded).
    async fn last_run(&self, p: &Arc<Principal>, pipeline: &str) -> Result<Option<RunRecord>> {
        let filter = RunFilter {
            pipeline: Some(pipeline.to_string()),
            limit: 1,
            ..RunFilter::default()
        };
        Ok(self.runs(p, &filter).await?.into_iter().next())
    }

    fn dag(&self, models: &[ModelFile]) -> Result<Dag> {
        if models.is_empty() {
            return Err(Error::invalid("a pipeline needs at least one model"));
        }
        let parsed = models
            .iter()
            .map(Model::parse)
            .collect::<Result<Vec<_>>>()?;
        Dag::build(parsed, &self.default_layer)
    }

    /// The live deployment of `name` and its DAG, when `p` may MANAGE every layer it writes
    /// (what running, pausing, backfilling or undeploying it needs).
    async fn managed(&self, p: &Arc<Principal>, name: &str) -> Result<(Deployment, Dag)> {
        let d = self.deployed(name).await?;
        let dag = self.dag(&d.models)?;
        let access = self.engine.access().await?;
        for layer in layers(&dag) {
            access.check_layer(p, crate::security::Privilege::Manage, layer)?;
        }
        Ok((d, dag))
    }

    /// The live deployment of `name` (not undeployed), or 404.
    async fn deployed(&self, name: &str) -> Result<Deployment> {
        match self.store.latest(name).await? {
            Some(d) if !d.undeployed => Ok(d),
            _ => Err(Error::NotFound(format!("no pipeline {name} is deployed"))),
        }
    }
}

/// The layers a pipeline writes.
fn layers(dag: &Dag) -> BTreeSet<crate::storage::Layer> {
    dag.nodes.iter().map(|n| n.model.target.layer).collect()
}

/// `r` with only the models `p` may read (the others are not named).
/// Failure samples only for those who MANAGE the layers of the model and of every source it
/// read (those whose policies they could lift anyway); without known sources, every layer.
fn redact(access: &crate::security::AccessControl, p: &Principal, mut r: RunRecord) -> RunRecord {
    use crate::security::Privilege;
    use crate::storage::{Layer, TableRef};
    r.models.retain(|m| {
        TableRef::parse(&m.model).is_ok_and(|t| access.allows(p, Privilege::Select, &t))
    });
    for m in &mut r.models {
        if m.failure_samples.is_empty() {
            continue;
        }
        let mut layers: BTreeSet<Layer> = m
            .sources
            .iter()
            .chain([&SourceRange {
                table: m.model.clone(),
                from_version: 0,
                to_version: 0,
            }])
            .filter_map(|s| TableRef::parse(&s.table).ok().map(|t| t.layer))
            .collect();
        if m.sources.is_empty() {
            layers.extend(Layer::ALL);
        }
        let unmanaged = access.unmanaged_layers(p);
        if layers.iter().any(|l| unmanaged.contains(l)) {
            m.failure_samples.clear();
        }
    }
    r
}
