//! Deploying pipelines: checks, the plan, immutable versions; listing and undeploying.

use std::collections::BTreeSet;
use std::sync::Arc;

use super::dag::Dag;
use super::model::{Bundle, Model, ModelFile, PipelineDef};
use super::plan::{self, DeployPlan};
use super::store::{self, Deployment};
use super::{Flows, PipelineSummary, PipelineView, layers};
use crate::error::{Error, Result};
use crate::security::{AccessControl, Principal, Privilege};
use crate::storage::TableRef;

/// Who deploys `[pipelines] dir`.
const SERVER: &str = "svc:strata";

impl Flows {
    /// Deploys `bundle` as pipeline `name` (or only plans it, `dry_run`).
    pub async fn deploy(
        &self,
        deployer: &Arc<Principal>,
        name: &str,
        bundle: Bundle,
        dry_run: bool,
    ) -> Result<DeployPlan> {
        self.deploy_as(Some(deployer), name, bundle, dry_run).await
    }

    /// [`Flows::deploy`]; `deployer` is `None` for the server itself (`[pipelines] dir`,
    /// trusted as the configuration is), which skips the deployer's checks and takes a
    /// concurrent deploy of the same content by another replica as its own.
    async fn deploy_as(
        &self,
        deployer: Option<&Arc<Principal>>,
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
        if let Some(trigger) = &bundle.pipeline.trigger {
            trigger.check()?;
        }
        if let Some(retry) = &bundle.pipeline.retry {
            retry.check()?;
        }
        if let Some(freshness) = &bundle.pipeline.freshness {
            freshness.check()?;
        }
        let dag = self.dag(&bundle.models)?;
        let access = self.engine.access().await?;
        let run_as = self.run_as(&bundle.pipeline)?;
        if let Some(deployer) = deployer {
            check_deployer(&access, deployer, &run_as, &dag)?;
        }
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
            deployed_at: self.clock.now(),
            deployed_by: deployer.map_or_else(|| SERVER.to_string(), |d| d.subject.clone()),
            content_hash: hash,
            pipeline: bundle.pipeline,
            models: bundle.models,
            undeployed: false,
            refresh: plan
                .models
                .iter()
                .filter(|m| m.full_refresh_required)
                .map(|m| m.model.clone())
                .collect(),
            lineage: plan
                .models
                .iter()
                .filter_map(|m| m.lineage.clone())
                .collect(),
        };
        match self.store.store(&deployment).await {
            Ok(()) => {}
            // Replicas starting on the same directory: another one stored it first.
            Err(Error::Conflict(_))
                if deployer.is_none()
                    && self
                        .store
                        .latest(name)
                        .await?
                        .is_some_and(|d| d.content_hash == deployment.content_hash) => {}
            Err(e) => return Err(e),
        }
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
        let (d, _) = self.managed(p, name).await?;
        let tombstone = Deployment {
            version: d.version + 1,
            deployed_at: self.clock.now(),
            deployed_by: p.subject.clone(),
            content_hash: String::new(),
            models: Vec::new(),
            undeployed: true,
            lineage: Vec::new(),
            ..d
        };
        self.store.store(&tombstone).await
    }

    /// Pipelines with at least one model table `p` may read.
    pub async fn list(&self, p: &Arc<Principal>) -> Result<Vec<PipelineSummary>> {
        let access = self.engine.access().await?;
        let last = self.last_statuses(p).await?;
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
                last_status: last.get(&name).copied(),
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
            last_run: self.last_run(p, name).await?,
        })
    }

    /// Deploys every pipeline under `[pipelines] dir` (content-addressed: unchanged ones
    /// are left alone). Runs as the server itself, which the configuration's author trusts.
    pub async fn deploy_dir(&self, dir: &std::path::Path) -> Result<Vec<DeployPlan>> {
        let mut plans = Vec::new();
        for path in pipeline_dirs(dir)? {
            let name = path
                .file_name()
                .and_then(|n| n.to_str())
                .unwrap_or_default()
                .to_string();
            let bundle = read_bundle(&path)?;
            plans.push(self.deploy_as(None, &name, bundle, false).await?);
        }
        Ok(plans)
    }
}

/// The pipelines of `[pipelines] dir`: its sub-directories holding a `pipeline.toml`.
fn pipeline_dirs(dir: &std::path::Path) -> Result<Vec<std::path::PathBuf>> {
    let entries = std::fs::read_dir(dir)
        .map_err(|e| Error::Config(format!("[pipelines] dir {}: {e}", dir.display())))?;
    let mut dirs: Vec<_> = entries
        .filter_map(|e| e.ok())
        .map(|e| e.path())
        .filter(|p| p.join("pipeline.toml").is_file())
        .collect();
    dirs.sort();
    Ok(dirs)
}

/// Problems of the pipelines in `[pipelines] dir` that need no warehouse to find
/// (`strata check-config`): unreadable files, bad `[trigger]` (cron patterns, time zones)
/// and `[retry]` sections, model headers that do not parse. Nothing when the directory does not exist (yet).
pub(crate) fn dir_problems(dir: &std::path::Path) -> Vec<String> {
    if !dir.is_dir() {
        return Vec::new();
    }
    let dirs = match pipeline_dirs(dir) {
        Ok(d) => d,
        Err(e) => return vec![e.to_string()],
    };
    let mut out = Vec::new();
    for path in dirs {
        let checked = read_bundle(&path).and_then(|b| {
            if let Some(t) = &b.pipeline.trigger {
                t.check()?;
            }
            if let Some(r) = &b.pipeline.retry {
                r.check()?;
            }
            // Model headers (their own `[trigger]`s among them).
            for m in &b.models {
                super::model::Model::parse(m)?;
            }
            Ok(())
        });
        if let Err(e) = checked {
            out.push(format!("pipeline {}: {e}", path.display()));
        }
    }
    out
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
pub(super) fn check_deployer(
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

/// `p` may see a pipeline when it may read one of its tables.
pub(super) fn visible(access: &AccessControl, p: &Principal, dag: &Dag) -> bool {
    dag.nodes
        .iter()
        .any(|n| access.allows(p, Privilege::Select, &n.model.target))
}
