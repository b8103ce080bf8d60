//! Runs of pipelines on this replica: starting them in the background, their records,
//! cancellation; and which deployed models still need a table's changes (for VACUUM).

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use chrono::Utc;
use tokio_util::sync::CancellationToken;

use super::dag::Dag;
use super::model::Kind;
use super::run::{self, ModelRun, ModelTask, Refresh, RunRecord, RunStatus};
use super::{Active, Flows, KEPT_RUNS, RunFilter, RunRequest, layers, redact};
use crate::error::{Error, Result};
use crate::security::{AccessControl, Principal, Privilege};
use crate::storage::TableRef;

impl Flows {
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
        let mut refresh = BTreeMap::new();
        for node in dag
            .nodes
            .iter()
            .filter(|n| selected.contains(&n.model.target))
        {
            let t = &node.model.target;
            if request.full_refresh {
                if matches!(node.model.header.kind, Kind::Append | Kind::Scd2)
                    && !request.allow_history_loss
                {
                    return Err(Error::invalid(format!(
                        "a full refresh of {} model {t} rebuilds it from its sources' current rows: the history its table holds beyond them (appended rows since deleted upstream, closed SCD2 versions) would be lost; send \"allow_history_loss\": true to rebuild anyway",
                        node.model.header.kind.as_str()
                    )));
                }
                refresh.insert(t.clone(), Refresh::Requested);
            } else if d.refresh.iter().any(|m| *m == t.to_string()) {
                refresh.insert(t.clone(), Refresh::Deployed(d.version));
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
                .map(|n| {
                    ModelRun::new(
                        n.model.target.to_string(),
                        n.model.header.kind,
                        RunStatus::Queued,
                    )
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
        let (id, pipeline) = (record.run_id.clone(), record.pipeline.clone());
        tokio::spawn(async move {
            let plan = RunPlan {
                dag,
                selected,
                refresh,
            };
            this.execute(&id, &pipeline, plan, run_as, cancel).await;
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
        pipeline: &str,
        plan: RunPlan,
        run_as: Arc<Principal>,
        cancel: CancellationToken,
    ) {
        let RunPlan {
            dag,
            selected,
            refresh,
        } = plan;
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
            let mut record =
                ModelRun::new(name.clone(), node.model.header.kind, RunStatus::Running);
            let task = ModelTask {
                engine: &self.engine,
                node,
                run_as: &run_as,
                default_layer: &self.default_layer,
                cancel: &cancel,
                refresh: refresh.get(&node.model.target).copied(),
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
        crate::telemetry::metrics().pipeline_run(pipeline, status.as_str());
        // Recorded before the run shows as ended here, so whoever saw it end finds it in
        // system.runs on every replica.
        let snapshot = self
            .runs
            .lock()
            .ok()
            .and_then(|runs| runs.get(id).map(|a| a.record.clone()));
        let error = (!failed.is_empty()).then(|| {
            format!(
                "{} model(s) failed: {}",
                failed.len(),
                failed
                    .iter()
                    .map(ToString::to_string)
                    .collect::<Vec<_>>()
                    .join(", ")
            )
        });
        let ended_at = Utc::now();
        let finish = |r: &mut RunRecord| {
            r.status = status;
            r.ended_at = Some(ended_at);
            if error.is_some() {
                r.error = error.clone();
            }
        };
        if let Some(mut record) = snapshot {
            finish(&mut record);
            if let Err(e) = self.records.record(&record).await {
                // The run's commits stand; only its record is missing from system.runs.
                tracing::error!(run = id, error = %e, "could not record the run in system.runs");
            }
        }
        self.update(id, finish);
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
            Some(_) => Err(Error::NotFound(format!("no run {id}"))),
            None => self
                .records
                .runs(p, &RunFilter::default(), Some(id))
                .await?
                .into_iter()
                .next()
                .ok_or_else(|| Error::NotFound(format!("no run {id}"))),
        }
    }

    /// Runs newest first.
    /// Runs newest first: those this replica holds (live), then the recorded ones of every
    /// replica (`system.runs`, as `p` may see them).
    pub async fn runs(&self, p: &Arc<Principal>, filter: &RunFilter) -> Result<Vec<RunRecord>> {
        let access = self.engine.access().await?;
        let mut out: Vec<RunRecord> = {
            let runs = self
                .runs
                .lock()
                .map_err(|_| Error::internal("run registry poisoned"))?;
            runs.values()
                .rev()
                .map(|a| &a.record)
                .filter(|r| filter.before.as_ref().is_none_or(|b| r.run_id < *b))
                .filter(|r| filter.pipeline.as_ref().is_none_or(|n| &r.pipeline == n))
                .filter(|r| filter.status.is_none_or(|s| r.status == s))
                .filter(|r| run_visible(&access, p, r))
                .take(filter.limit.max(1))
                .map(|r| redact(&access, p, r.clone()))
                .collect()
        };
        for r in self.records.runs(p, filter, None).await? {
            if !out.iter().any(|x| x.run_id == r.run_id) {
                out.push(r);
            }
        }
        out.sort_by(|a, b| b.run_id.cmp(&a.run_id));
        out.truncate(filter.limit.max(1));
        Ok(out)
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

/// What one run does: its DAG, the models it covers, and which of them rebuild.
struct RunPlan {
    dag: Dag,
    selected: BTreeSet<TableRef>,
    refresh: BTreeMap<TableRef, Refresh>,
}

pub(super) fn run_visible(access: &AccessControl, p: &Principal, r: &RunRecord) -> bool {
    r.models
        .iter()
        .any(|m| TableRef::parse(&m.model).is_ok_and(|t| access.allows(p, Privilege::Select, &t)))
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
