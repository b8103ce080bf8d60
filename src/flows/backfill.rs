//! Backfill (PLATFORM P3): `POST /api/v1/pipelines/{name}/backfill` rebuilds history in one
//! run. A `time_range` model replaces its time range batch by batch, each batch one atomic
//! replaceWhere commit (a failed batch leaves its range as it was), up to `parallelism`
//! batches at once; any other model is rebuilt by a full refresh. Each model's outcome is
//! kept per batch, compactly (committed and pending batches as merged intervals, failed
//! ones with their error), in the run record and `system.model_runs.backfill`, so
//! `POST /api/v1/runs/{id}/resume` runs only what did not commit, and
//! `only_missing_or_failed` skips what any earlier backfill committed.
//!
//! A backfill does not move a model's progress markers: the regular runs go on from their
//! watermarks, and their lookback re-does the newest batches anyway.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::Instant;

use futures::StreamExt;
use serde::Deserialize;

use super::dag::{Dag, Node};
use super::guard::{Origin, RunGuard};
use super::model::{BatchSize, Kind, parse_instant};
use super::record::{
    BackfillMode, BackfillModel, FailedBatch, Interval, ModelRun, RunRecord, RunStatus, SourceRange,
};
use super::run::{ModelTask, Refresh};
use super::sql::Pin;
use super::store::Deployment;
use super::{Flows, RunRequest};
use crate::error::{Error, ErrorKind, Result};
use crate::security::Principal;
use crate::storage::TableRef;

/// Batches one backfill may hold per model.
const MAX_BATCHES: usize = 10_000;
const MAX_PARALLELISM: usize = 8;

/// `POST /api/v1/pipelines/{name}/backfill`.
#[derive(Debug, Clone, Default, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct BackfillRequest {
    /// The models to rebuild (`layer.name`); every `time_range` model when absent.
    #[serde(default)]
    pub models: Option<Vec<String>>,
    /// The first batch holds this instant (RFC 3339 or `YYYY-MM-DD`); needed for
    /// `time_range` models.
    #[serde(default)]
    pub from: Option<String>,
    /// Batches start before this instant (exclusive).
    #[serde(default)]
    pub to: Option<String>,
    /// The width of a batch; the model's own `batch_size` when absent.
    #[serde(default)]
    pub batch_size: Option<BatchSize>,
    /// Batches of one model committed at once (1..=8, default 1).
    #[serde(default)]
    pub parallelism: Option<usize>,
    /// Leave out the batches an earlier backfill of the model committed.
    #[serde(default)]
    pub only_missing_or_failed: bool,
    /// Then run the models downstream of them (incrementally, as a normal run would).
    #[serde(default)]
    pub downstream: bool,
    /// Let the full refresh of an `append` or `scd2` model lose the history its table holds
    /// beyond its sources.
    #[serde(default)]
    pub allow_history_loss: bool,
}

/// The batches a run replaces for one `time_range` model.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub(crate) struct BatchWork {
    pub(crate) batches: Vec<Interval>,
    pub(crate) size: BatchSize,
    pub(crate) parallelism: usize,
}

/// Adjacent or overlapping intervals merged, in order.
fn merged(mut v: Vec<Interval>) -> Vec<Interval> {
    v.sort();
    let mut out: Vec<Interval> = Vec::new();
    for i in v {
        match out.last_mut() {
            Some(last) if i.start <= last.end => last.end = last.end.max(i.end),
            _ => out.push(i),
        }
    }
    out
}

/// `intervals` cut into batches of `size` (each interval starts on a batch boundary).
fn split(intervals: &[Interval], size: BatchSize) -> Vec<Interval> {
    let mut out = Vec::new();
    for i in intervals {
        let mut start = size.floor(i.start);
        while start < i.end && out.len() <= MAX_BATCHES {
            let end = size.add(start, 1);
            out.push(Interval { start, end });
            start = end;
        }
    }
    out
}

impl Flows {
    /// Starts a backfill of `name` in the background (module docs); its run.
    pub async fn backfill(
        self: &Arc<Self>,
        p: &Arc<Principal>,
        name: &str,
        request: BackfillRequest,
    ) -> Result<RunRecord> {
        let (d, dag) = self.managed(p, name).await?;
        let parallelism = request.parallelism.unwrap_or(1);
        if !(1..=MAX_PARALLELISM).contains(&parallelism) {
            return Err(Error::invalid(format!(
                "parallelism = {parallelism}: give 1..={MAX_PARALLELISM}"
            )));
        }
        let selected: Vec<TableRef> = match &request.models {
            Some(models) => {
                let mut out = Vec::new();
                for m in models {
                    out.push(dag.model_ref(m, &self.default_layer)?);
                }
                out
            }
            None => dag
                .nodes
                .iter()
                .filter(|n| n.model.header.kind == Kind::TimeRange)
                .map(|n| n.model.target.clone())
                .collect(),
        };
        if selected.is_empty() {
            return Err(Error::invalid(
                "the pipeline has no time_range model: name the models to rebuild in \"models\"",
            ));
        }
        let mut plan: BTreeMap<TableRef, (BackfillMode, Option<BatchWork>)> = BTreeMap::new();
        for t in &selected {
            let node = dag
                .node(t)
                .ok_or_else(|| Error::invalid(format!("the pipeline has no model {t}")))?;
            let header = &node.model.header;
            if header.kind != Kind::TimeRange {
                if matches!(header.kind, Kind::Append | Kind::Scd2) && !request.allow_history_loss {
                    return Err(Error::invalid(format!(
                        "backfilling {} model {t} is a full refresh from its sources' current rows, which loses the history its table holds beyond them; send \"allow_history_loss\": true to rebuild anyway",
                        header.kind.as_str()
                    )));
                }
                plan.insert(t.clone(), (BackfillMode::Refresh, None));
                continue;
            }
            let (Some(from), Some(to)) = (&request.from, &request.to) else {
                return Err(Error::invalid(format!(
                    "backfilling time_range model {t} needs \"from\" and \"to\""
                )));
            };
            let (from, to) = (parse_instant("from", from)?, parse_instant("to", to)?);
            if from >= to {
                return Err(Error::invalid(format!(
                    "\"from\" ({from}) must lie before \"to\" ({to})"
                )));
            }
            let size = request.batch_size.or(header.batch_size).unwrap_or_default();
            let mut batches = split(
                &[Interval {
                    start: from,
                    end: to,
                }],
                size,
            );
            if batches.len() > MAX_BATCHES {
                return Err(Error::invalid(format!(
                    "{t}: more than {MAX_BATCHES} batches from {from} to {to}; backfill a shorter range or with a larger batch_size"
                )));
            }
            if request.only_missing_or_failed {
                let done = merged(self.records.backfilled(&t.to_string()).await?);
                batches.retain(|b| !done.iter().any(|d| d.start <= b.start && b.end <= d.end));
            }
            plan.insert(
                t.clone(),
                (
                    BackfillMode::Range,
                    Some(BatchWork {
                        batches,
                        size,
                        parallelism,
                    }),
                ),
            );
        }
        if request.downstream {
            for t in downstream_of(&dag, &selected) {
                plan.entry(t).or_insert((BackfillMode::Downstream, None));
            }
        }
        self.start_backfill(p, &d, dag, plan, None).await
    }

    /// Resumes backfill `id`: a new run of what it did not commit (failed and pending
    /// batches, models that did not succeed); its run.
    pub async fn resume_run(self: &Arc<Self>, p: &Arc<Principal>, id: &str) -> Result<RunRecord> {
        let old = self.run(p, id).await?;
        if old.trigger != "backfill" {
            return Err(Error::invalid(format!(
                "run {id} is a {} run; only backfills resume (start a new run instead)",
                old.trigger
            )));
        }
        if !old.status.is_terminal() || old.status == RunStatus::Succeeded {
            return Err(Error::Conflict(format!(
                "run {id} is {}; only a backfill that ended without succeeding resumes",
                old.status.as_str()
            )));
        }
        let (d, dag) = self.managed(p, &old.pipeline).await?;
        let mut plan = BTreeMap::new();
        for m in &old.models {
            let Some(b) = &m.backfill else { continue };
            let t = TableRef::parse(&m.model)?;
            if dag.node(&t).is_none() {
                return Err(Error::Conflict(format!(
                    "model {t} of run {id} is no longer deployed in pipeline {}",
                    old.pipeline
                )));
            }
            match b.mode {
                BackfillMode::Range => {
                    let size = b.batch_size.unwrap_or_default();
                    let left: Vec<Interval> = b
                        .failed
                        .iter()
                        .map(|f| Interval {
                            start: f.start,
                            end: f.end,
                        })
                        .chain(b.pending.iter().copied())
                        .collect();
                    if left.is_empty() && m.status == RunStatus::Succeeded {
                        continue;
                    }
                    plan.insert(
                        t,
                        (
                            BackfillMode::Range,
                            Some(BatchWork {
                                batches: split(&merged(left), size),
                                size,
                                parallelism: b.parallelism.unwrap_or(1),
                            }),
                        ),
                    );
                }
                mode if m.status != RunStatus::Succeeded => {
                    plan.insert(t, (mode, None));
                }
                _ => {}
            }
        }
        if plan.is_empty() {
            return Err(Error::Conflict(format!("run {id} left nothing to resume")));
        }
        self.start_backfill(p, &d, dag, plan, Some(id.to_string()))
            .await
    }

    async fn start_backfill(
        self: &Arc<Self>,
        p: &Arc<Principal>,
        d: &Deployment,
        dag: Dag,
        plan: BTreeMap<TableRef, (BackfillMode, Option<BatchWork>)>,
        resumes: Option<String>,
    ) -> Result<RunRecord> {
        let request = RunRequest {
            models: Some(plan.keys().map(ToString::to_string).collect()),
            ..RunRequest::default()
        };
        let (mut record, mut run) = self.prepare(d, dag, &request)?;
        record.trigger = "backfill".into();
        record.requested_by = p.subject.clone();
        record.resumes = resumes;
        for (t, (mode, work)) in plan {
            if mode == BackfillMode::Refresh {
                run.refresh.insert(t.clone(), Refresh::Requested);
            }
            if let Some(m) = record.models.iter_mut().find(|m| m.model == t.to_string()) {
                m.backfill = Some(BackfillModel {
                    mode,
                    batch_size: work.as_ref().map(|w| w.size),
                    parallelism: work.as_ref().map(|w| w.parallelism),
                    succeeded: Vec::new(),
                    failed: Vec::new(),
                    pending: work
                        .as_ref()
                        .map(|w| merged(w.batches.clone()))
                        .unwrap_or_default(),
                });
            }
            if let Some(work) = work {
                run.batches.insert(t, work);
            }
        }
        let origin = Origin {
            trigger: "backfill",
            ..Origin::manual()
        };
        self.dispatch(record, run, d, origin).await
    }

    /// One `time_range` model's batches, `parallelism` at a time, each its own commit.
    pub(super) async fn run_batches(
        &self,
        node: &Node,
        run_as: &Arc<Principal>,
        guard: &RunGuard,
        work: &BatchWork,
        run_id: &str,
    ) -> (ModelRun, Result<()>) {
        let name = node.model.target.to_string();
        let mut record = ModelRun::new(name, node.model.header.kind, RunStatus::Running);
        let started = Instant::now();
        let task = ModelTask {
            engine: &self.engine,
            node,
            run_as,
            default_layer: &self.default_layer,
            guard,
            clock: self.clock.as_ref(),
            refresh: None,
            run_id,
        };
        let result = self.batches_of(&task, work, &mut record).await;
        record.duration_ms = started.elapsed().as_millis() as u64;
        (record, result)
    }

    async fn batches_of(
        &self,
        task: &ModelTask<'_>,
        work: &BatchWork,
        record: &mut ModelRun,
    ) -> Result<()> {
        let node = task.node;
        let column = node
            .model
            .header
            .time_column
            .clone()
            .ok_or_else(|| Error::invalid("a time_range model needs time_column"))?;
        task.ensure_table().await?;
        let mut pins = BTreeMap::new();
        for s in &node.reads.tables {
            let (latest, _) = task.source_version(s).await?;
            pins.insert(s.clone(), Pin::Version(latest));
            record.sources.push(SourceRange {
                table: s.to_string(),
                from_version: latest,
                to_version: latest,
            });
        }
        let sql = task.pinned(&pins)?;
        let outcomes: Vec<(Interval, Result<_>)> =
            futures::stream::iter(work.batches.iter().copied())
                .map(|b| {
                    let (sql, column) = (&sql, &column);
                    async move {
                        if let Err(e) = task.guard.check() {
                            return (b, Err(e));
                        }
                        (
                            b,
                            task.replace_range(sql, column, b.start, b.end, &[]).await,
                        )
                    }
                })
                .buffer_unordered(work.parallelism.max(1))
                .collect()
                .await;
        let mut log = BackfillModel {
            mode: BackfillMode::Range,
            batch_size: Some(work.size),
            parallelism: Some(work.parallelism),
            succeeded: Vec::new(),
            failed: Vec::new(),
            pending: Vec::new(),
        };
        let mut cancelled = None;
        for (b, outcome) in outcomes {
            // A batch an expectation refused committed nothing: it failed.
            let outcome = outcome.and_then(|o| {
                if !o.duplicate || o.refused().is_some() {
                    task.judged(record, &o)?;
                }
                Ok(o)
            });
            match outcome {
                Ok(o) => {
                    record.rows_out += o.rows_out;
                    record.commits += u64::from(!o.duplicate);
                    record.target_version = record.target_version.max(Some(o.version));
                    log.succeeded.push(b);
                }
                Err(e) if e.kind() == ErrorKind::Cancelled => {
                    log.pending.push(b);
                    cancelled = Some(e);
                }
                Err(e) => log.failed.push(FailedBatch {
                    start: b.start,
                    end: b.end,
                    error: e.client_message(""),
                }),
            }
        }
        log.succeeded = merged(log.succeeded);
        log.pending = merged(log.pending);
        log.failed.sort_by_key(|f| f.start);
        let failed = log.failed.first().map(|f| (f.start, f.error.clone()));
        let n_failed = log.failed.len();
        record.backfill = Some(log);
        if let Some((start, error)) = failed {
            return Err(Error::invalid(format!(
                "{n_failed} of {} batches failed; the first, from {start}: {error}",
                work.batches.len()
            )));
        }
        match cancelled {
            Some(e) => Err(e),
            None => Ok(()),
        }
    }
}

/// The models that read (transitively) from `from`, not counting them.
fn downstream_of(dag: &Dag, from: &[TableRef]) -> BTreeSet<TableRef> {
    let mut reached: BTreeSet<TableRef> = from.iter().cloned().collect();
    let mut out = BTreeSet::new();
    for n in &dag.nodes {
        if n.upstream.iter().any(|u| reached.contains(u)) && !reached.contains(&n.model.target) {
            reached.insert(n.model.target.clone());
            out.insert(n.model.target.clone());
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use chrono::{DateTime, Utc};

    use super::*;

    fn day(d: u32) -> DateTime<Utc> {
        DateTime::parse_from_rfc3339(&format!("2026-01-{d:02}T00:00:00Z"))
            .unwrap()
            .with_timezone(&Utc)
    }

    #[test]
    fn batches_split_and_merge_back() {
        let b = split(
            &[Interval {
                start: day(1) + chrono::Duration::hours(5),
                end: day(4),
            }],
            BatchSize::Day,
        );
        assert_eq!(b.len(), 3);
        assert_eq!(b[0].start, day(1));
        assert_eq!(
            merged(vec![b[2], b[0]]),
            vec![
                Interval {
                    start: day(1),
                    end: day(2)
                },
                Interval {
                    start: day(3),
                    end: day(4)
                }
            ]
        );
        assert_eq!(
            merged(b),
            vec![Interval {
                start: day(1),
                end: day(4)
            }]
        );
    }
}
