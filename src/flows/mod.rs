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

mod dag;
pub(crate) mod model;
mod plan;
pub(crate) mod run;
mod sql;
mod store;

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex};

use chrono::Utc;
use tokio_util::sync::CancellationToken;

use crate::config::PipelinesConfig;
use crate::engine::Engine;
use crate::error::{Error, Result};
use crate::security::{AccessControl, Principal, Privilege};
use crate::storage::TableRef;

pub use dag::DagView;
pub use model::{Bundle, Header, Kind, ModelFile, PipelineDef};
pub use plan::{DeployPlan, ModelChange, ModelPlan};
pub use run::{ModelRun, RunRecord, RunStatus, SourceRange};
pub use store::Deployment;

use dag::Dag;
use model::Model;
use run::ModelTask;
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
    /// Rebuild instead of reading from the watermarks.
    #[serde(default)]
    pub full_refresh: bool,
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
}

#[derive(Debug)]
pub struct Flows {
    engine: Arc<Engine>,
    store: PipelineStore,
    principals: BTreeMap<String, Arc<Principal>>,
    default_layer: String,
    runs: Arc<Mutex<BTreeMap<String, Active>>>,
}

impl Flows {
    pub fn new(engine: Arc<Engine>, cfg: &PipelinesConfig, default_layer: &str) -> Flows {
        let principals = cfg
            .principals
            .iter()
            .map(|p| {
                (
                    p.name.clone(),
                    Arc::new(Principal {
                        subject: format!("svc:{}", p.name),
                        roles: p.roles.iter().cloned().collect(),
                        claims: p.claims.clone(),
                    }),
                )
            })
            .collect();
        Flows {
            store: PipelineStore::new(Arc::clone(engine.catalog().warehouse().store())),
            engine,
            principals,
            default_layer: default_layer.to_ascii_lowercase(),
            runs: Arc::new(Mutex::new(BTreeMap::new())),
        }
    }

    fn run_as(&self, def: &PipelineDef) -> Result<Arc<Principal>> {
        self.principals.get(&def.run_as).cloned().ok_or_else(|| {
            let known: Vec<&str> = self.principals.keys().map(String::as_str).collect();
            Error::invalid(format!(
                "run_as = {:?} is not a service principal of this server ([[pipelines.principals]]: {})",
                def.run_as,
                if known.is_empty() {
                    "none declared".to_string()
                } else {
                    known.join(", ")
                }
            ))
        })
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

    /// The live deployment of `name` (not undeployed), or 404.
    async fn deployed(&self, name: &str) -> Result<Deployment> {
        match self.store.latest(name).await? {
            Some(d) if !d.undeployed => Ok(d),
            _ => Err(Error::NotFound(format!("no pipeline {name} is deployed"))),
        }
    }

    /// Deploys `bundle` as pipeline `name` (or only plans it, `dry_run`).
    pub async fn deploy(
        &self,
        deployer: &Arc<Principal>,
        name: &str,
        bundle: Bundle,
        dry_run: bool,
    ) -> Result<DeployPlan> {
        crate::storage::validate_name(name)?;
        if let Some(n) = &bundle.pipeline.name
            && n != name
        {
            return Err(Error::invalid(format!(
                "pipeline.toml names the pipeline {n:?}, the URL {name:?}"
            )));
        }
        let dag = self.dag(&bundle.models)?;
        let access = self.engine.access().await?;
        let run_as = self.run_as(&bundle.pipeline)?;
        check_deployer(&access, deployer, &run_as, &dag)?;
        self.check_sources(&dag).await?;
        self.check_ownership(name, &dag).await?;
        let previous = self.store.latest(name).await?;
        let live = previous.as_ref().filter(|d| !d.undeployed);
        let plan = plan::plan(
            &self.engine,
            &run_as,
            &self.default_layer,
            &dag,
            live.map(|d| d.models.as_slice()).unwrap_or(&[]),
        )
        .await?;
        let hash = store::content_hash(&bundle.pipeline, &bundle.models)?;
        let unchanged = live.is_some_and(|d| d.content_hash == hash);
        let mut plan = DeployPlan {
            pipeline: name.to_string(),
            version: live.map(|d| d.version),
            dry_run,
            unchanged,
            ..plan
        };
        if dry_run || unchanged {
            return Ok(plan);
        }
        if plan.full_refresh_required && !bundle.allow_full_refresh {
            let models: Vec<&str> = plan
                .models
                .iter()
                .filter(|m| m.full_refresh_required)
                .map(|m| m.model.as_str())
                .collect();
            return Err(Error::invalid(format!(
                "deploying needs a full refresh of {}; send \"allow_full_refresh\": true to deploy anyway",
                models.join(", ")
            )));
        }
        let deployment = Deployment {
            name: name.to_string(),
            version: previous.as_ref().map_or(1, |d| d.version + 1),
            deployed_at: Utc::now(),
            deployed_by: deployer.subject.clone(),
            content_hash: hash,
            pipeline: bundle.pipeline,
            models: bundle.models,
            undeployed: false,
        };
        self.store.store(&deployment).await?;
        plan.version = Some(deployment.version);
        Ok(plan)
    }

    /// Every source must exist and, when streamed, have a change data feed.
    async fn check_sources(&self, dag: &Dag) -> Result<()> {
        let targets: BTreeSet<&TableRef> = dag.nodes.iter().map(|n| &n.model.target).collect();
        for node in &dag.nodes {
            for s in node.reads.all() {
                if targets.contains(s) {
                    continue;
                }
                let table = match self.engine.catalog().load(s).await {
                    Ok(t) => t,
                    Err(Error::NotFound(_)) => {
                        return Err(Error::invalid(format!(
                            "model {} reads {s}, which does not exist and no model of the pipeline produces",
                            node.model.target
                        )));
                    }
                    Err(e) => return Err(e),
                };
                if node.reads.streams.contains(s)
                    && !crate::storage::properties::change_data_feed(
                        table.snapshot()?.metadata().configuration(),
                    )
                {
                    return Err(Error::invalid(format!(
                        "model {} streams {s}, which has no change data feed; ALTER TABLE {s} SET TBLPROPERTIES ('delta.enableChangeDataFeed' = 'true') turns it on",
                        node.model.target
                    )));
                }
            }
        }
        Ok(())
    }

    /// One pipeline owns a target.
    async fn check_ownership(&self, name: &str, dag: &Dag) -> Result<()> {
        let targets: BTreeSet<TableRef> =
            dag.nodes.iter().map(|n| n.model.target.clone()).collect();
        for other in self.store.names().await? {
            if other == name {
                continue;
            }
            let Some(d) = self.store.latest(&other).await? else {
                continue;
            };
            if d.undeployed {
                continue;
            }
            for m in d.models.iter().filter_map(|f| Model::parse(f).ok()) {
                if targets.contains(&m.target) {
                    return Err(Error::Conflict(format!(
                        "{} is written by pipeline {other}; a table has one pipeline",
                        m.target
                    )));
                }
            }
        }
        Ok(())
    }

    /// Undeploys `name`: it no longer runs; its tables stay.
    pub async fn undeploy(&self, p: &Arc<Principal>, name: &str) -> Result<()> {
        let d = self.deployed(name).await?;
        let dag = self.dag(&d.models)?;
        let access = self.engine.access().await?;
        for layer in layers(&dag) {
            access.check_layer(p, Privilege::Manage, layer)?;
        }
        let tombstone = Deployment {
            version: d.version + 1,
            deployed_at: Utc::now(),
            deployed_by: p.subject.clone(),
            content_hash: String::new(),
            models: Vec::new(),
            undeployed: true,
            ..d
        };
        self.store.store(&tombstone).await
    }

    /// Pipelines with at least one model table `p` may read.
    pub async fn list(&self, p: &Arc<Principal>) -> Result<Vec<PipelineSummary>> {
        let access = self.engine.access().await?;
        let mut out = Vec::new();
        for name in self.store.names().await? {
            let Ok(d) = self.deployed(&name).await else {
                continue;
            };
            let Ok(dag) = self.dag(&d.models) else {
                continue;
            };
            if !visible(&access, p, &dag) {
                continue;
            }
            out.push(PipelineSummary {
                name: d.name.clone(),
                version: d.version,
                models: dag
                    .nodes
                    .iter()
                    .map(|n| n.model.target.to_string())
                    .collect(),
                last_status: self.last_run(&name).map(|r| r.status),
            });
        }
        Ok(out)
    }

    pub async fn get(&self, p: &Arc<Principal>, name: &str) -> Result<PipelineView> {
        let d = self.deployed(name).await?;
        let dag = self.dag(&d.models)?;
        let access = self.engine.access().await?;
        if !visible(&access, p, &dag) {
            return Err(Error::NotFound(format!("no pipeline {name} is deployed")));
        }
        Ok(PipelineView {
            name: d.name,
            version: d.version,
            deployed_at: d.deployed_at,
            deployed_by: d.deployed_by,
            pipeline: d.pipeline,
            models: d.models,
            dag: dag.view(),
            last_run: self.last_run(name).map(|r| redact(&access, p, r)),
        })
    }

    fn last_run(&self, pipeline: &str) -> Option<RunRecord> {
        let runs = self.runs.lock().ok()?;
        runs.values()
            .rev()
            .find(|a| a.record.pipeline == pipeline)
            .map(|a| a.record.clone())
    }

    /// Starts a run of `name` in the background; its id.
    pub async fn start_run(
        self: &Arc<Self>,
        p: &Arc<Principal>,
        name: &str,
        request: RunRequest,
    ) -> Result<RunRecord> {
        let d = self.deployed(name).await?;
        let dag = self.dag(&d.models)?;
        let access = self.engine.access().await?;
        for layer in layers(&dag) {
            access.check_layer(p, Privilege::Manage, layer)?;
        }
        let run_as = self.run_as(&d.pipeline)?;
        let selected = selection(&dag, request.models.as_deref(), &self.default_layer)?;
        if request.full_refresh {
            for node in dag
                .nodes
                .iter()
                .filter(|n| selected.contains(&n.model.target))
            {
                if node.model.header.kind != Kind::Table {
                    return Err(Error::Unsupported(format!(
                        "a full refresh of {} model {} is not supported yet; table models rebuild on every run",
                        node.model.header.kind.as_str(),
                        node.model.target
                    )));
                }
            }
        }
        let record = RunRecord {
            run_id: uuid::Uuid::now_v7().to_string(),
            pipeline: name.to_string(),
            pipeline_version: d.version,
            trigger: "manual".into(),
            requested_by: p.subject.clone(),
            status: RunStatus::Queued,
            queued_at: Utc::now(),
            started_at: None,
            ended_at: None,
            error: None,
            models: dag
                .nodes
                .iter()
                .filter(|n| selected.contains(&n.model.target))
                .map(|n| ModelRun {
                    model: n.model.target.to_string(),
                    kind: n.model.header.kind,
                    status: RunStatus::Queued,
                    rows_out: 0,
                    commits: 0,
                    sources: Vec::new(),
                    target_version: None,
                    duration_ms: 0,
                    error: None,
                })
                .collect(),
        };
        let cancel = CancellationToken::new();
        {
            let mut runs = self
                .runs
                .lock()
                .map_err(|_| Error::internal("run registry poisoned"))?;
            runs.insert(
                record.run_id.clone(),
                Active {
                    record: record.clone(),
                    cancel: cancel.clone(),
                },
            );
            while runs.len() > KEPT_RUNS {
                runs.pop_first();
            }
        }
        let this = Arc::clone(self);
        let id = record.run_id.clone();
        tokio::spawn(async move {
            this.execute(&id, dag, selected, run_as, cancel).await;
        });
        Ok(record)
    }

    fn update(&self, id: &str, f: impl FnOnce(&mut RunRecord)) {
        if let Ok(mut runs) = self.runs.lock()
            && let Some(a) = runs.get_mut(id)
        {
            f(&mut a.record);
        }
    }

    async fn execute(
        &self,
        id: &str,
        dag: Dag,
        selected: BTreeSet<TableRef>,
        run_as: Arc<Principal>,
        cancel: CancellationToken,
    ) {
        self.update(id, |r| {
            r.status = RunStatus::Running;
            r.started_at = Some(Utc::now());
        });
        let mut failed: BTreeSet<TableRef> = BTreeSet::new();
        let mut cancelled = false;
        for node in dag
            .nodes
            .iter()
            .filter(|n| selected.contains(&n.model.target))
        {
            let name = node.model.target.to_string();
            let set = |status: RunStatus, m: Option<ModelRun>| {
                self.update(id, |r| {
                    if let Some(slot) = r.models.iter_mut().find(|x| x.model == name) {
                        if let Some(m) = m {
                            *slot = m;
                        }
                        slot.status = status;
                    }
                });
            };
            if cancelled || cancel.is_cancelled() {
                cancelled = true;
                set(RunStatus::Cancelled, None);
                continue;
            }
            if node.upstream.iter().any(|u| failed.contains(u)) {
                failed.insert(node.model.target.clone());
                set(RunStatus::UpstreamFailed, None);
                continue;
            }
            set(RunStatus::Running, None);
            let mut record = ModelRun {
                model: name.clone(),
                kind: node.model.header.kind,
                status: RunStatus::Running,
                rows_out: 0,
                commits: 0,
                sources: Vec::new(),
                target_version: None,
                duration_ms: 0,
                error: None,
            };
            let task = ModelTask {
                engine: &self.engine,
                node,
                run_as: &run_as,
                default_layer: &self.default_layer,
                cancel: &cancel,
            };
            let result = task.run(&mut record).await;
            let status = match &result {
                Ok(()) => RunStatus::Succeeded,
                Err(_) if record.status == RunStatus::WatermarkExpired => {
                    failed.insert(node.model.target.clone());
                    RunStatus::WatermarkExpired
                }
                Err(Error::Cancelled(_)) => {
                    cancelled = true;
                    RunStatus::Cancelled
                }
                Err(_) => {
                    failed.insert(node.model.target.clone());
                    RunStatus::Failed
                }
            };
            if let Err(e) = &result {
                tracing::warn!(run = id, model = %name, error = %e, "model failed");
                record.error = Some(e.client_message(id));
            }
            let metrics = crate::telemetry::metrics();
            metrics.model_rows(&name, record.rows_out);
            set(status, Some(record));
        }
        let status = if cancelled {
            RunStatus::Cancelled
        } else if failed.is_empty() {
            RunStatus::Succeeded
        } else {
            RunStatus::Failed
        };
        crate::telemetry::metrics().pipeline_run(&dag_pipeline(self, id), status.as_str());
        self.update(id, |r| {
            r.status = status;
            r.ended_at = Some(Utc::now());
            if !failed.is_empty() {
                r.error = Some(format!(
                    "{} model(s) failed: {}",
                    failed.len(),
                    failed
                        .iter()
                        .map(ToString::to_string)
                        .collect::<Vec<_>>()
                        .join(", ")
                ));
            }
        });
    }

    /// A run, with only the models `p` may read.
    pub async fn run(&self, p: &Arc<Principal>, id: &str) -> Result<RunRecord> {
        let access = self.engine.access().await?;
        let record = self
            .runs
            .lock()
            .map_err(|_| Error::internal("run registry poisoned"))?
            .get(id)
            .map(|a| a.record.clone());
        match record {
            Some(r) if run_visible(&access, p, &r) => Ok(redact(&access, p, r)),
            _ => Err(Error::NotFound(format!("no run {id}"))),
        }
    }

    /// Runs newest first.
    pub async fn runs(&self, p: &Arc<Principal>, filter: &RunFilter) -> Result<Vec<RunRecord>> {
        let access = self.engine.access().await?;
        let runs = self
            .runs
            .lock()
            .map_err(|_| Error::internal("run registry poisoned"))?;
        Ok(runs
            .values()
            .rev()
            .map(|a| &a.record)
            .filter(|r| filter.before.as_ref().is_none_or(|b| r.run_id < *b))
            .filter(|r| filter.pipeline.as_ref().is_none_or(|n| &r.pipeline == n))
            .filter(|r| filter.status.is_none_or(|s| r.status == s))
            .filter(|r| run_visible(&access, p, r))
            .take(filter.limit.max(1))
            .map(|r| redact(&access, p, r.clone()))
            .collect())
    }

    /// Asks a run to stop before its next model or batch.
    pub async fn cancel(&self, p: &Arc<Principal>, id: &str) -> Result<RunRecord> {
        let record = self.run(p, id).await?;
        let d = self.deployed(&record.pipeline).await?;
        let dag = self.dag(&d.models)?;
        let access = self.engine.access().await?;
        for layer in layers(&dag) {
            access.check_layer(p, Privilege::Manage, layer)?;
        }
        if let Ok(runs) = self.runs.lock()
            && let Some(a) = runs.get(id)
        {
            a.cancel.cancel();
        }
        self.run(p, id).await
    }

    /// Deploys every pipeline under `[pipelines] dir` (content-addressed: unchanged ones
    /// are left alone). Runs as the server itself, which the configuration's author trusts.
    pub async fn deploy_dir(&self, dir: &std::path::Path) -> Result<Vec<DeployPlan>> {
        let mut plans = Vec::new();
        let entries = std::fs::read_dir(dir)
            .map_err(|e| Error::Config(format!("[pipelines] dir {}: {e}", dir.display())))?;
        let mut dirs: Vec<_> = entries
            .filter_map(|e| e.ok())
            .map(|e| e.path())
            .filter(|p| p.join("pipeline.toml").is_file())
            .collect();
        dirs.sort();
        for path in dirs {
            let name = path
                .file_name()
                .and_then(|n| n.to_str())
                .unwrap_or_default()
                .to_string();
            let bundle = read_bundle(&path)?;
            plans.push(self.deploy_trusted(&name, bundle).await?);
        }
        Ok(plans)
    }

    async fn deploy_trusted(&self, name: &str, bundle: Bundle) -> Result<DeployPlan> {
        crate::storage::validate_name(name)?;
        let run_as = self.run_as(&bundle.pipeline)?;
        let dag = self.dag(&bundle.models)?;
        self.check_sources(&dag).await?;
        self.check_ownership(name, &dag).await?;
        let previous = self.store.latest(name).await?;
        let live = previous.as_ref().filter(|d| !d.undeployed);
        let hash = store::content_hash(&bundle.pipeline, &bundle.models)?;
        let plan = plan::plan(
            &self.engine,
            &run_as,
            &self.default_layer,
            &dag,
            live.map(|d| d.models.as_slice()).unwrap_or(&[]),
        )
        .await?;
        if live.is_some_and(|d| d.content_hash == hash) {
            return Ok(DeployPlan {
                pipeline: name.to_string(),
                version: live.map(|d| d.version),
                unchanged: true,
                ..plan
            });
        }
        let deployment = Deployment {
            name: name.to_string(),
            version: previous.as_ref().map_or(1, |d| d.version + 1),
            deployed_at: Utc::now(),
            deployed_by: "svc:strata".into(),
            content_hash: hash,
            pipeline: bundle.pipeline,
            models: bundle.models,
            undeployed: false,
        };
        match self.store.store(&deployment).await {
            // Another replica deployed the same directory at the same time.
            Ok(()) | Err(Error::Conflict(_)) => {}
            Err(e) => return Err(e),
        }
        Ok(DeployPlan {
            pipeline: name.to_string(),
            version: Some(deployment.version),
            ..plan
        })
    }
}

impl crate::engine::maintenance::ChangeReaders for Flows {
    fn behind<'a>(
        &'a self,
        t: &'a TableRef,
    ) -> futures::future::BoxFuture<'a, Result<Vec<String>>> {
        Box::pin(async move {
            let source = match self.engine.catalog().load(t).await {
                Ok(table) => table,
                Err(Error::NotFound(_)) => return Ok(Vec::new()),
                Err(e) => return Err(e),
            };
            let latest = source.version().unwrap_or(0);
            let id = source.snapshot()?.metadata().id().to_string();
            let mut behind = Vec::new();
            for name in self.store.names().await? {
                let Ok(d) = self.deployed(&name).await else {
                    continue;
                };
                let Ok(dag) = self.dag(&d.models) else {
                    continue;
                };
                for node in dag.nodes.iter().filter(|n| n.reads.streams.contains(t)) {
                    let target = &node.model.target;
                    let consumed = match self.engine.catalog().load(target).await {
                        Ok(table) => table
                            .snapshot()?
                            .transaction_version(
                                table.log_store().as_ref(),
                                &run::app_id(target, t, &id),
                            )
                            .await?
                            .and_then(|v| u64::try_from(v).ok()),
                        Err(Error::NotFound(_)) => None,
                        Err(e) => return Err(e),
                    };
                    if consumed.is_none_or(|c| c < latest) {
                        behind.push(format!(
                            "{target} (pipeline {name}) has consumed {} of versions up to {latest}",
                            consumed.map_or("none".to_string(), |c| format!("up to {c}"))
                        ));
                    }
                }
            }
            Ok(behind)
        })
    }
}

fn dag_pipeline(flows: &Flows, id: &str) -> String {
    flows
        .runs
        .lock()
        .ok()
        .and_then(|r| r.get(id).map(|a| a.record.pipeline.clone()))
        .unwrap_or_default()
}

/// A pipeline directory as a deploy bundle: `pipeline.toml` and every `<layer>/*.sql`.
pub fn read_bundle(dir: &std::path::Path) -> Result<Bundle> {
    let toml_path = dir.join("pipeline.toml");
    let text = std::fs::read_to_string(&toml_path)
        .map_err(|e| Error::invalid(format!("{}: {e}", toml_path.display())))?;
    let pipeline: PipelineDef = toml::from_str(&text)
        .map_err(|e| Error::invalid(format!("{}: {}", toml_path.display(), e.message())))?;
    let mut models = Vec::new();
    for layer in crate::storage::Layer::ALL {
        let sub = dir.join(layer.as_str());
        let Ok(entries) = std::fs::read_dir(&sub) else {
            continue;
        };
        let mut files: Vec<_> = entries
            .filter_map(|e| e.ok())
            .map(|e| e.path())
            .filter(|p| p.extension().is_some_and(|x| x == "sql"))
            .collect();
        files.sort();
        for f in files {
            let sql = std::fs::read_to_string(&f)
                .map_err(|e| Error::invalid(format!("{}: {e}", f.display())))?;
            let file = f
                .file_name()
                .and_then(|n| n.to_str())
                .ok_or_else(|| Error::invalid(format!("{}: not a UTF-8 name", f.display())))?;
            models.push(ModelFile {
                path: format!("{}/{file}", layer.as_str()),
                sql,
            });
        }
    }
    Ok(Bundle {
        pipeline,
        models,
        allow_full_refresh: false,
    })
}

/// The deployer may hand the run-as principal only roles it holds itself, and needs MANAGE
/// on the layer of every target.
fn check_deployer(
    access: &AccessControl,
    deployer: &Principal,
    run_as: &Principal,
    dag: &Dag,
) -> Result<()> {
    let missing: Vec<&str> = run_as
        .roles
        .iter()
        .filter(|r| !deployer.roles.contains(*r))
        .map(String::as_str)
        .collect();
    if !missing.is_empty() {
        return Err(Error::PermissionDenied(format!(
            "the pipeline runs as {} with roles you do not hold: {}",
            run_as.subject,
            missing.join(", ")
        )));
    }
    for layer in layers(dag) {
        access.check_layer(deployer, Privilege::Manage, layer)?;
    }
    Ok(())
}

fn layers(dag: &Dag) -> BTreeSet<crate::storage::Layer> {
    dag.nodes.iter().map(|n| n.model.target.layer).collect()
}

/// `p` may see a pipeline when it may read one of its tables.
fn visible(access: &AccessControl, p: &Principal, dag: &Dag) -> bool {
    dag.nodes
        .iter()
        .any(|n| access.allows(p, Privilege::Select, &n.model.target))
}

fn run_visible(access: &AccessControl, p: &Principal, r: &RunRecord) -> bool {
    r.models
        .iter()
        .any(|m| TableRef::parse(&m.model).is_ok_and(|t| access.allows(p, Privilege::Select, &t)))
}

/// `r` with only the models `p` may read (the others are not named).
fn redact(access: &AccessControl, p: &Principal, mut r: RunRecord) -> RunRecord {
    r.models.retain(|m| {
        TableRef::parse(&m.model).is_ok_and(|t| access.allows(p, Privilege::Select, &t))
    });
    r
}

/// The models a run covers.
fn selection(
    dag: &Dag,
    models: Option<&[String]>,
    default_layer: &str,
) -> Result<BTreeSet<TableRef>> {
    let all: BTreeSet<TableRef> = dag.nodes.iter().map(|n| n.model.target.clone()).collect();
    let Some(models) = models else {
        return Ok(all);
    };
    let mut out = BTreeSet::new();
    for m in models {
        let t = if m.contains('.') {
            TableRef::parse(m)?
        } else {
            TableRef::new(default_layer, m)?
        };
        if dag.node(&t).is_none() {
            return Err(Error::invalid(format!("the pipeline has no model {t}")));
        }
        out.insert(t);
    }
    Ok(out)
}
