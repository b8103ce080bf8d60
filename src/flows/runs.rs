//! Runs of pipelines on this replica: starting them in the background, their records,
//! cancellation; and which deployed models still need a table's changes (for VACUUM).

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use tokio_util::sync::CancellationToken;

use super::dag::Dag;
use super::guard::{Origin, RunGuard};
use super::model::Kind;
use super::record::{ModelRun, RunRecord, RunStatus};
use super::run::{ModelTask, Refresh};
use super::schedule::RetryDef;
use super::store::Deployment;
use super::{Active, Flows, KEPT_RUNS, RunFilter, RunRequest, redact};
use crate::error::{Error, ErrorKind, Result};
use crate::security::{AccessControl, Principal, Privilege};
use crate::storage::TableRef;
use crate::storage::commit_info::RunContext;

impl Flows {
    /// Starts a run of `name` in the background; its id.
    pub async fn start_run(
        self: &Arc<Self>,
        p: &Arc<Principal>,
        name: &str,
        request: RunRequest,
    ) -> Result<RunRecord> {
        let (d, dag) = self.managed(p, name).await?;
        let (mut record, plan) = self.prepare(&d, dag, &request)?;
        record.requested_by = p.subject.clone();
        self.dispatch(record, plan, &d, Origin::manual()).await
    }

    /// The record and plan of a run of `d` (nothing started yet).
    pub(super) fn prepare(
        &self,
        d: &Deployment,
        dag: Dag,
        request: &RunRequest,
    ) -> Result<(RunRecord, RunPlan)> {
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
            pipeline: d.name.clone(),
            pipeline_version: d.version,
            trigger: "manual".into(),
            scheduled_for: None,
            epoch: None,
            replica: Some(self.replica.clone()),
            resumes: None,
            requested_by: super::triggers::SCHEDULER.into(),
            status: RunStatus::Queued,
            queued_at: self.clock.now(),
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
        Ok((
            record,
            RunPlan {
                dag,
                selected,
                refresh,
                batches: BTreeMap::new(),
            },
        ))
    }

    /// Registers `record` as live here and runs it in the background.
    pub(super) fn launch(
        self: &Arc<Self>,
        record: RunRecord,
        plan: RunPlan,
        d: &Deployment,
        origin: Origin,
    ) -> Result<RunRecord> {
        let run_as = self.run_as(&d.pipeline)?;
        let settings = RunSettings {
            retry: d.pipeline.retry.clone().unwrap_or_default(),
            freshness: d.pipeline.freshness.clone(),
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
                    started: self.clock.now(),
                },
            );
            while runs.len() > KEPT_RUNS {
                runs.pop_first();
            }
        }
        let this = Arc::clone(self);
        let (id, pipeline) = (record.run_id.clone(), record.pipeline.clone());
        let context = RunContext {
            run_id: id.clone(),
            pipeline: pipeline.clone(),
            epoch: origin.epoch,
            fence: origin.fence.clone(),
        };
        let guard = RunGuard {
            cancel,
            fence: origin.fence,
        };
        // On the pipeline runtime: the run's DataFusion and delta-rs tasks spawn there too.
        self.runtime.spawn(context.scope(async move {
            use futures::FutureExt as _;
            let ran = std::panic::AssertUnwindSafe(
                this.execute(&id, &pipeline, plan, run_as, guard, settings),
            )
            .catch_unwind()
            .await;
            if ran.is_err() {
                this.end_panicked(&id).await;
            }
        }));
        Ok(record)
    }

    /// Ends a run whose task panicked (a bug, in a dependency or here): recorded `failed`,
    /// instead of showing `running` for ever. Its committed batches stand.
    async fn end_panicked(&self, id: &str) {
        tracing::error!(run = id, "the run stopped on a panic; recorded as failed");
        let now = self.clock.now();
        self.update(id, |r| {
            r.status = RunStatus::Failed;
            r.ended_at = Some(now);
            r.error = Some(
                "internal error: the run stopped unexpectedly (see the server log); its committed batches stand"
                    .into(),
            );
            for m in &mut r.models {
                if !m.status.is_terminal() {
                    m.status = RunStatus::Failed;
                }
            }
        });
        let snapshot = self
            .runs
            .lock()
            .ok()
            .and_then(|runs| runs.get(id).map(|a| a.record.clone()));
        if let Some(record) = snapshot
            && let Err(e) = self.records.record(&record).await
        {
            tracing::error!(run = id, error = %e, "could not record the run in system.runs");
        }
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
        guard: RunGuard,
        settings: RunSettings,
    ) {
        let RunSettings { retry, freshness } = settings;
        let RunPlan {
            dag,
            selected,
            refresh,
            batches,
        } = plan;
        self.update(id, |r| {
            r.status = RunStatus::Running;
            r.started_at = Some(self.clock.now());
        });
        let stale = match &freshness {
            Some(f) => self.sources_fresh(f, &dag, id, pipeline).await,
            None => None,
        };
        let mut failed: BTreeSet<TableRef> = BTreeSet::new();
        let mut cancelled = None;
        let mut committed = 0;
        for node in dag
            .nodes
            .iter()
            .filter(|n| selected.contains(&n.model.target))
        {
            let name = node.model.target.to_string();
            let set = |status: RunStatus, m: Option<ModelRun>| {
                self.update(id, |r| {
                    if let Some(slot) = r.models.iter_mut().find(|x| x.model == name) {
                        if let Some(mut m) = m {
                            // A backfill's plan for the model stays unless the run replaced it.
                            if m.backfill.is_none() {
                                m.backfill = slot.backfill.take();
                            }
                            *slot = m;
                        }
                        slot.status = status;
                    }
                });
            };
            if cancelled.is_none()
                && let Err(e) = guard.check()
            {
                cancelled = Some(e.to_string());
            }
            if cancelled.is_some() {
                set(RunStatus::Cancelled, None);
                continue;
            }
            if stale.is_some() {
                set(RunStatus::StaleSource, None);
                continue;
            }
            if node.upstream.iter().any(|u| failed.contains(u)) {
                failed.insert(node.model.target.clone());
                set(RunStatus::UpstreamFailed, None);
                continue;
            }
            set(RunStatus::Running, None);
            let before = match self.engine.catalog().load(&node.model.target).await {
                Ok(t) => t.version(),
                Err(_) => None,
            };
            let (mut record, result) = match batches.get(&node.model.target) {
                Some(work) => self.run_batches(node, &run_as, &guard, work, id).await,
                None => {
                    self.run_model(id, node, &run_as, &guard, &refresh, &retry)
                        .await
                }
            };
            let status = match &result {
                Ok(()) if record.commits > 0 && !node.model.header.audits.is_empty() => {
                    match self.audit(node, &run_as, &mut record, before).await {
                        Some(why) => {
                            failed.insert(node.model.target.clone());
                            record.error = Some(why);
                            RunStatus::AuditFailed
                        }
                        None => RunStatus::Succeeded,
                    }
                }
                Ok(()) => RunStatus::Succeeded,
                Err(_) if record.status == RunStatus::WatermarkExpired => {
                    failed.insert(node.model.target.clone());
                    RunStatus::WatermarkExpired
                }
                Err(e @ Error::Cancelled(_)) => {
                    cancelled = Some(e.to_string());
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
            committed += record.commits;
            let metrics = crate::telemetry::metrics();
            metrics.model_rows(&name, record.rows_out);
            set(status, Some(record));
        }
        let triggered = self
            .runs
            .lock()
            .ok()
            .and_then(|runs| {
                runs.get(id)
                    .map(|a| matches!(a.record.trigger.as_str(), "cron" | "upstream"))
            })
            .unwrap_or(false);
        let status = if cancelled.is_some() {
            RunStatus::Cancelled
        } else if stale.is_some() {
            RunStatus::StaleSource
        } else if !failed.is_empty() {
            RunStatus::Failed
        } else if triggered && committed == 0 {
            RunStatus::Skipped
        } else {
            RunStatus::Succeeded
        };
        crate::telemetry::metrics().pipeline_run(pipeline, status.as_str());
        // Recorded before the run shows as ended here, so whoever saw it end finds it in
        // system.runs on every replica.
        let snapshot = self
            .runs
            .lock()
            .ok()
            .and_then(|runs| runs.get(id).map(|a| a.record.clone()));
        let error = if stale.is_some() {
            stale
        } else if failed.is_empty() {
            cancelled
        } else {
            Some(format!(
                "{} model(s) failed: {}",
                failed.len(),
                failed
                    .iter()
                    .map(ToString::to_string)
                    .collect::<Vec<_>>()
                    .join(", ")
            ))
        };
        let ended_at = self.clock.now();
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

    /// Checks the pipeline's sources against `[freshness]` at a run's start and records
    /// the results (`system.audit_results`); why the run must stop, if a source is past
    /// `error_after`. A check that cannot run is logged and stops nothing.
    async fn sources_fresh(
        &self,
        f: &super::audit::FreshnessDef,
        dag: &super::dag::Dag,
        id: &str,
        pipeline: &str,
    ) -> Option<String> {
        let targets: BTreeSet<&TableRef> = dag.nodes.iter().map(|n| &n.model.target).collect();
        let sources: Vec<TableRef> = if f.sources.is_empty() {
            let all: BTreeSet<&TableRef> = dag
                .nodes
                .iter()
                .flat_map(|n| n.reads.all())
                .filter(|t| !targets.contains(t))
                .collect();
            all.into_iter().cloned().collect()
        } else {
            f.sources
                .iter()
                .filter_map(|s| TableRef::parse(s).ok())
                .collect()
        };
        let now = self.clock.now();
        match f.judge(&self.engine, &sources, now).await {
            Ok((results, why)) => {
                let rows: Vec<super::records::AuditRow> = results
                    .iter()
                    .map(|(t, r)| {
                        super::records::AuditRow::of(
                            r,
                            &t.to_string(),
                            Some((id, pipeline)),
                            "source",
                            now,
                        )
                    })
                    .collect();
                if let Err(e) = self.records.record_audits(&rows).await {
                    tracing::error!(run = id, error = %e, "could not record source freshness");
                }
                why
            }
            Err(e) => {
                tracing::warn!(run = id, error = %e, "source freshness could not be checked");
                None
            }
        }
    }

    /// Runs the model's audits on the version its run committed (the rows its commits
    /// changed, for `unique` and `not_null` on incremental models) into `record`; why the
    /// model is `audit_failed`, when an audit of severity `error` failed.
    async fn audit(
        &self,
        node: &super::dag::Node,
        run_as: &Arc<Principal>,
        record: &mut ModelRun,
        before: Option<u64>,
    ) -> Option<String> {
        use super::audit::{AuditKind, Scope, Severity};
        let t = &node.model.target;
        let version = record.target_version?;
        let now = self.clock.now();
        let mut failing = Vec::new();
        for a in &node.model.header.audits {
            let incremental = node.model.header.kind.is_incremental()
                && matches!(a.kind, AuditKind::Unique | AuditKind::NotNull);
            let scope = match before {
                Some(b) if incremental && b < version => Scope::Changed {
                    from: b + 1,
                    to: version,
                },
                _ => Scope::Table { version },
            };
            let result = match super::audit::run(&self.engine, run_as, t, a, scope, now).await {
                Ok(r) => r,
                Err(e) => super::audit::AuditResult {
                    audit: a.label(),
                    kind: a.kind,
                    severity: a.severity,
                    passed: false,
                    failed: 0,
                    detail: Some(format!("the audit could not run: {}", e.client_message(""))),
                    samples: Vec::new(),
                    table_version: Some(version),
                },
            };
            if !result.passed && result.severity == Severity::Error {
                failing.push(format!(
                    "{} ({} failing{})",
                    result.audit,
                    result.failed,
                    result
                        .detail
                        .as_deref()
                        .map(|d| format!("; {d}"))
                        .unwrap_or_default()
                ));
            }
            record.audits.push(result);
        }
        (!failing.is_empty()).then(|| {
            format!(
                "audit(s) of severity error failed on {t} version {version}: {}; its downstream models did not run",
                failing.join(", ")
            )
        })
    }

    /// One model of a run, tried again after a failure as `[retry]` allows (never after a
    /// cancel, an expired watermark or a missing privilege, which would fail the same way).
    async fn run_model(
        &self,
        id: &str,
        node: &super::dag::Node,
        run_as: &Arc<Principal>,
        guard: &RunGuard,
        refresh: &BTreeMap<TableRef, Refresh>,
        retry: &RetryDef,
    ) -> (ModelRun, Result<()>) {
        let name = node.model.target.to_string();
        let mut attempt = 1;
        loop {
            let mut record =
                ModelRun::new(name.clone(), node.model.header.kind, RunStatus::Running);
            record.attempts = attempt;
            let task = ModelTask {
                engine: &self.engine,
                node,
                run_as,
                default_layer: &self.default_layer,
                guard,
                clock: self.clock.as_ref(),
                refresh: refresh.get(&node.model.target).copied(),
                run_id: id,
            };
            let result = task.run(&mut record).await;
            let retryable = match &result {
                Ok(()) => false,
                Err(e) => {
                    record.status != RunStatus::WatermarkExpired
                        && !record.refused
                        && !matches!(e.kind(), ErrorKind::Cancelled | ErrorKind::PermissionDenied)
                }
            };
            if !retryable || attempt > retry.retries {
                return (record, result);
            }
            attempt += 1;
            let wait = retry.backoff(attempt, rand::random::<f64>());
            if let Err(e) = &result {
                tracing::warn!(run = id, model = %name, error = %e, attempt, wait_ms = wait.as_millis() as u64, "model failed; retrying");
            }
            let until = self.clock.now() + chrono::Duration::from_std(wait).unwrap_or_default();
            tokio::select! {
                () = self.clock.sleep_until(until) => {}
                () = guard.cancel.cancelled() => {
                    return (record, Err(Error::Cancelled("the run was cancelled".into())));
                }
            }
        }
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

    /// Asks a run to stop before its next model or batch: here, when it runs here, else
    /// through a cancel request the leader acts on.
    pub async fn cancel(&self, p: &Arc<Principal>, id: &str) -> Result<RunRecord> {
        let record = self.run(p, id).await?;
        self.managed(p, &record.pipeline).await?;
        let here = match self.runs.lock() {
            Ok(runs) => runs.get(id).map(|a| a.cancel.clone()),
            Err(_) => return Err(Error::internal("run registry poisoned")),
        };
        match here {
            Some(cancel) => cancel.cancel(),
            None if !record.status.is_terminal() => self.request_cancel(id).await?,
            None => {}
        }
        self.run(p, id).await
    }

    /// Stops every run this replica started for the scheduler (it no longer leads).
    pub(crate) fn cancel_triggered(&self) {
        if let Ok(runs) = self.runs.lock() {
            for a in runs.values().filter(|a| {
                matches!(a.record.trigger.as_str(), "cron" | "upstream")
                    && !a.record.status.is_terminal()
            }) {
                a.cancel.cancel();
            }
        }
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
                    let consumed = self.consumed(target, t, &id).await?;
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

/// What a run takes from its pipeline's definition besides the models.
#[derive(Debug)]
struct RunSettings {
    retry: RetryDef,
    freshness: Option<super::audit::FreshnessDef>,
}

/// What one run does: its DAG, the models it covers, and which of them rebuild.
pub(super) struct RunPlan {
    pub(super) dag: Dag,
    pub(super) selected: BTreeSet<TableRef>,
    pub(super) refresh: BTreeMap<TableRef, Refresh>,
    /// Backfills: the batches each `time_range` model replaces (instead of its normal run).
    pub(super) batches: BTreeMap<TableRef, super::backfill::BatchWork>,
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
        out.insert(dag.model_ref(m, default_layer)?);
    }
    Ok(out)
}
