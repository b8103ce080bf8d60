//! One run of a pipeline: its models in dependency order, each in as many commits as its
//! backlog needs, every commit carrying the source versions it consumed (PLATFORM P1).
//!
//! ```text
//! per model, per batch:
//!   source versions now, the model's watermarks (txn of its table per source)
//!   → nothing moved: skipped, nothing committed
//!   → SELECT with stream(…) → table_changes(from, to), other tables VERSION AS OF
//!   → engine::commit_model as the run-as principal (grants, row filters, WITH CHECK)
//!     with txn `strata:model:<model>:<source>:<source table id>` = to, in the same commit
//!   → a concurrent run committed it first: its txn is there, nothing written, re-read
//! ```
//!
//! A crash before the commit leaves the watermarks where they were: the next run reads the
//! same range again. Two runners racing the same model produce one commit (the second finds
//! the markers, or loses the commit race on them).

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Instant;

use chrono::{DateTime, Utc};
use deltalake::kernel::Transaction;

use super::dag::Node;
use super::model::QUARANTINE_MAX_ROWS;
use super::model::{Kind, OnSchemaChange, OnWatermarkExpired};
use super::record::{ModelRun, RunStatus, SourceRange};
use super::sql::{ChangeRows, Pin, pinned};
use super::statements::{
    latest_per_key, merge_statement, planning_params, quoted, range_params, scd2_statement,
    timestamp,
};
use crate::engine::Engine;
use crate::engine::expect::{Checks, OnViolation};
use crate::engine::models::{CHANGE_COLUMNS, ModelCommit, ModelOutcome, ModelWrite};
use crate::error::{Error, ErrorKind, Result};
use crate::security::Principal;
use crate::storage::TableRef;

/// The reserved prefix of model watermarks (refused in client idempotency keys).
pub(crate) const MODEL_APP_PREFIX: &str = "strata:model:";

/// Commits one model attempts against concurrent writers before it fails.
const MAX_CONFLICTS: u32 = 8;

/// What one model's run needs.
#[derive(Debug)]
pub(crate) struct ModelTask<'a> {
    pub(crate) engine: &'a Engine,
    pub(crate) node: &'a Node,
    pub(crate) run_as: &'a Arc<Principal>,
    pub(crate) default_layer: &'a str,
    /// Checked before every batch: a cancel, or the scheduler's lease lost.
    pub(crate) guard: &'a super::guard::RunGuard,
    /// What "now" is for time ranges (the scheduler's clock).
    pub(crate) clock: &'a dyn crate::clock::Clock,
    /// Rebuild the table instead of reading from the watermarks.
    pub(crate) refresh: Option<Refresh>,
    /// The run (named in quarantined rows).
    pub(crate) run_id: &'a str,
}

/// Why a model rebuilds its table from its sources' snapshots.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub(crate) enum Refresh {
    /// `"full_refresh": true` on the run.
    Requested,
    /// Deploying this pipeline version needed it (and `allow_full_refresh` allowed it); done
    /// once: the rebuild commits `strata:model:<model>:refresh` = the version.
    Deployed(u64),
}

/// The watermark `txn` app id of `model` for `source` (whose Delta table id is `id`): a
/// re-created source is a new id, so a model never silently restarts it at version 0.
pub(crate) fn app_id(model: &TableRef, source: &TableRef, id: &str) -> String {
    format!("{MODEL_APP_PREFIX}{model}:{source}:{id}")
}

/// What one batch reads.
struct Batch {
    pins: BTreeMap<TableRef, Pin>,
    progress: Vec<Transaction>,
    ranges: Vec<SourceRange>,
    /// Some stream source has versions left after this batch.
    more: bool,
}

impl ModelTask<'_> {
    /// Runs the model to the sources' current versions; `Ok` carries its record.
    pub(crate) async fn run(&self, record: &mut ModelRun) -> Result<()> {
        let started = Instant::now();
        let result = match self.refresh {
            Some(refresh) if !self.refreshed(refresh).await? => self.rebuild(record, refresh).await,
            _ => {
                let result = if self.node.model.header.kind == Kind::TimeRange {
                    self.ranges(record).await
                } else {
                    self.batches(record).await
                };
                match result {
                    Err(e)
                        if record.status == RunStatus::WatermarkExpired
                            && self.node.model.header.on_watermark_expired
                                == OnWatermarkExpired::FullRefresh =>
                    {
                        tracing::warn!(model = %self.node.model.target, error = %e,
                            "the watermark expired; rebuilding (on_watermark_expired = full_refresh)");
                        record.status = RunStatus::Running;
                        self.rebuild(record, Refresh::Requested).await
                    }
                    other => other,
                }
            }
        };
        record.duration_ms = started.elapsed().as_millis() as u64;
        result
    }

    async fn batches(&self, record: &mut ModelRun) -> Result<()> {
        let t = &self.node.model.target;
        let mut conflicts = 0;
        loop {
            self.guard.check()?;
            self.ensure_table().await?;
            let Some(batch) = self.next_batch().await? else {
                return Ok(());
            };
            for (s, pin) in &batch.pins {
                if let Pin::Changes {
                    range: Some((from, to)),
                    ..
                } = pin
                {
                    let table = self.engine.catalog().load(s).await?;
                    if let Err(e) =
                        crate::storage::changes::check_available(&table, s, *from, *to).await
                    {
                        if e.kind() == ErrorKind::Conflict {
                            record.status = RunStatus::WatermarkExpired;
                        }
                        return Err(e);
                    }
                }
            }
            let sql = pinned(
                &self.node.model.select,
                self.default_layer,
                &batch.pins,
                match self.node.model.header.kind {
                    Kind::Append => ChangeRows::Inserted,
                    _ => ChangeRows::WithDeletes,
                },
            )?;
            let header = &self.node.model.header;
            let output = || async {
                Ok::<_, Error>(
                    self.engine
                        .plan_select(self.run_as, &sql, &[])
                        .await?
                        .columns(),
                )
            };
            let (sql, write) = match header.kind {
                Kind::Table => (sql, ModelWrite::Overwrite),
                Kind::Append => (sql, ModelWrite::Append),
                Kind::Merge => {
                    let table = self.engine.catalog().load(t).await?;
                    merge_statement(&sql, header, &output().await?, &columns_of(&table)?)?
                }
                Kind::Scd2 => scd2_statement(&sql, header, &output().await?)?,
                Kind::TimeRange => {
                    return Err(Error::internal("time_range models run by ranges"));
                }
            };
            let commit = ModelCommit {
                table: t,
                sql: &sql,
                params: &[],
                write,
                progress: &batch.progress,
                add_columns: header.on_schema_change == OnSchemaChange::AppendNewColumns,
                schema: None,
                resets: &[],
                checks: self.checks(record.rows_quarantined),
            };
            // Crash tests: the batch's range is chosen, its commit not made.
            crate::failpoint::hit("flows.before_commit");
            match self.engine.commit_model(self.run_as, commit).await {
                Ok(outcome) if outcome.refused().is_some() => {
                    return self.judged(record, &outcome);
                }
                Ok(outcome) if outcome.duplicate => {
                    // A concurrent run committed this range: read the watermarks again.
                    tracing::info!(model = %t, "a concurrent run committed this range");
                    conflicts += 1;
                }
                Ok(outcome) => {
                    self.judged(record, &outcome)?;
                    record.rows_out += outcome.rows_out;
                    record.rows_skipped += outcome.skipped;
                    record.commits += 1;
                    record.target_version = Some(outcome.version);
                    merge_ranges(&mut record.sources, batch.ranges);
                    if !batch.more {
                        return Ok(());
                    }
                }
                Err(e) if e.kind() == ErrorKind::Conflict && conflicts < MAX_CONFLICTS => {
                    tracing::info!(model = %t, error = %e, "model commit conflict, re-reading");
                    conflicts += 1;
                }
                Err(e) => return Err(e),
            }
            if conflicts >= MAX_CONFLICTS {
                return Err(Error::Conflict(format!(
                    "{t}: gave up after {MAX_CONFLICTS} attempts against concurrent writers"
                )));
            }
        }
    }

    /// A `time_range` model: from the first incomplete batch (less `lookback` complete ones)
    /// through the batch holding now, each batch planned with `$start`/`$end` bound and
    /// replacing exactly that range of the table in one commit (delta-rs replaceWhere), so a
    /// failed batch leaves its range as it was, never empty. The end of the last complete
    /// batch is a `txn` of the table (`strata:model:<model>:range`, microseconds), committed
    /// with that batch; the sources' versions go with the last batch. Skipped when no source
    /// moved and no batch completed since the last run.
    async fn ranges(&self, record: &mut ModelRun) -> Result<()> {
        let model = &self.node.model;
        let t = &model.target;
        let header = &model.header;
        let size = header.batch_size.unwrap_or_default();
        let column = header
            .time_column
            .clone()
            .ok_or_else(|| Error::invalid("a time_range model needs time_column"))?;
        self.ensure_table().await?;
        let target = self.engine.catalog().load(t).await?;
        let state = target.snapshot()?;
        let log = target.log_store();
        let range_app = format!("{MODEL_APP_PREFIX}{t}:range");
        let done = state
            .transaction_version(log.as_ref(), &range_app)
            .await?
            .and_then(DateTime::from_timestamp_micros);
        let mut pins = BTreeMap::new();
        let mut moved_sources = Vec::new();
        let mut ranges = Vec::new();
        for s in &self.node.reads.tables {
            let (latest, id) = self.source_version(s).await?;
            let app = app_id(t, s, &id);
            pins.insert(s.clone(), Pin::Version(latest));
            let seen = state
                .transaction_version(log.as_ref(), &app)
                .await?
                .and_then(|v| u64::try_from(v).ok());
            if seen != Some(latest) {
                moved_sources.push(Transaction::new(app, latest as i64));
            }
            ranges.push(SourceRange {
                table: s.to_string(),
                from_version: latest,
                to_version: latest,
            });
        }
        let now = self.clock.now();
        let current = size.floor(now);
        let completed = done.is_none_or(|d| d < current);
        if moved_sources.is_empty() && !completed {
            return Ok(());
        }
        let first = header.range_start()?;
        let lookback = i32::try_from(header.lookback.unwrap_or(1)).unwrap_or(i32::MAX);
        let mut start = match done {
            None => first,
            Some(d) => first.max(size.add(d, -lookback)),
        };
        let sql = self.pinned(&pins)?;
        while start <= current {
            self.guard.check()?;
            let end = size.add(start, 1);
            let mut progress = Vec::new();
            if end <= now && done.is_none_or(|d| end > d) {
                progress.push(Transaction::new(range_app.clone(), end.timestamp_micros()));
            }
            if start == current {
                progress.extend(moved_sources.iter().cloned());
            }
            let outcome = self
                .replace_range(&sql, &column, start, end, &progress)
                .await?;
            if !outcome.duplicate || outcome.refused().is_some() {
                self.judged(record, &outcome)?;
            }
            if outcome.duplicate {
                tracing::info!(model = %t, %start, "a concurrent run committed this batch");
            } else {
                record.rows_out += outcome.rows_out;
                record.commits += 1;
                record.target_version = Some(outcome.version);
            }
            start = end;
        }
        merge_ranges(&mut record.sources, ranges);
        Ok(())
    }

    /// One `time_range` batch: `sql` with `$start`/`$end` bound replaces `[start, end)` of
    /// the table in one commit, with `progress`.
    pub(super) async fn replace_range(
        &self,
        sql: &str,
        column: &str,
        start: DateTime<Utc>,
        end: DateTime<Utc>,
        progress: &[Transaction],
    ) -> Result<crate::engine::models::ModelOutcome> {
        let t = &self.node.model.target;
        let params = range_params(start, end);
        let commit = ModelCommit {
            table: t,
            sql,
            params: &params,
            write: ModelWrite::Replace {
                column: column.to_string(),
                start: timestamp(start),
                end: timestamp(end),
            },
            progress,
            add_columns: self.node.model.header.on_schema_change
                == OnSchemaChange::AppendNewColumns,
            schema: None,
            resets: &[],
            // A time_range model quarantines nothing (Model::check).
            checks: self.checks(0),
        };
        crate::failpoint::hit("flows.before_commit");
        self.engine
            .commit_model(self.run_as, commit)
            .await
            .inspect_err(
                |e| tracing::warn!(model = %t, %start, %end, error = %e, "time_range batch failed"),
            )
    }

    /// The model's expectations for its next commit (none when it has none).
    fn checks(&self, quarantined: u64) -> Option<Checks<'_>> {
        let h = &self.node.model.header;
        (!h.expectations.is_empty()).then(|| Checks {
            rules: &h.expectations,
            run_id: self.run_id,
            quarantine_room: h
                .quarantine_max_rows_per_run
                .unwrap_or(QUARANTINE_MAX_ROWS)
                .saturating_sub(quarantined),
            now: self.clock.now(),
        })
    }

    /// Takes what the expectations did to a committed (or refused) batch into `record`;
    /// the error a refused batch fails the model with.
    pub(super) fn judged(&self, record: &mut ModelRun, outcome: &ModelOutcome) -> Result<()> {
        if let Some(q) = &outcome.quality {
            if q.recovered {
                tracing::info!(model = %self.node.model.target, quarantined = q.quarantined,
                    "the batch's quarantine commit had landed before a crash: its rows were read back, not checked again");
            }
            record.absorb(q);
        }
        match outcome.refused() {
            Some(why) => Err(Error::invalid(format!("{}: {why}", self.node.model.target))),
            None => Ok(()),
        }
    }

    /// The model's SELECT with its sources pinned, every change type kept.
    pub(super) fn pinned(&self, pins: &BTreeMap<TableRef, Pin>) -> Result<String> {
        pinned(
            &self.node.model.select,
            self.default_layer,
            pins,
            ChangeRows::WithDeletes,
        )
    }

    /// Whether a deployed refresh already happened (a requested one never has).
    async fn refreshed(&self, refresh: Refresh) -> Result<bool> {
        let Refresh::Deployed(version) = refresh else {
            return Ok(false);
        };
        let t = &self.node.model.target;
        let table = match self.engine.catalog().load(t).await {
            Ok(table) => table,
            Err(Error::NotFound(_)) => return Ok(false),
            Err(e) => return Err(e),
        };
        let done = table
            .snapshot()?
            .transaction_version(table.log_store().as_ref(), &refresh_app(t))
            .await?;
        Ok(done.is_some_and(|v| v >= version as i64))
    }

    /// A full refresh: the table rebuilt from its sources' current snapshots in one commit
    /// that replaces its rows and schema and moves every watermark to the versions read
    /// (`table` and `merge` lose nothing; `append` and `scd2` keep only what the snapshots
    /// hold, which is why they rebuild only when asked explicitly). A `time_range` model is
    /// emptied in that commit and its batches re-run from `start`.
    async fn rebuild(&self, record: &mut ModelRun, refresh: Refresh) -> Result<()> {
        let model = &self.node.model;
        let t = &model.target;
        let header = &model.header;
        self.ensure_table().await?;
        let mut pins = BTreeMap::new();
        let mut resets = Vec::new();
        let mut ranges = Vec::new();
        for (s, stream) in self.node.reads.tagged() {
            let (latest, id) = self.source_version(s).await?;
            pins.insert(
                s.clone(),
                if stream {
                    Pin::Snapshot(latest)
                } else {
                    Pin::Version(latest)
                },
            );
            if header.kind != Kind::TimeRange {
                resets.push(Transaction::new(app_id(t, s, &id), latest as i64));
            }
            ranges.push(SourceRange {
                table: s.to_string(),
                from_version: latest,
                to_version: latest,
            });
        }
        // Only a deployed refresh is done once (a concurrent runner's commit of it counts).
        let progress: Vec<Transaction> = match refresh {
            Refresh::Deployed(version) => {
                vec![Transaction::new(refresh_app(t), version as i64)]
            }
            Refresh::Requested => Vec::new(),
        };
        let sql = self.pinned(&pins)?;
        let params = planning_params(header)?;
        // Planned once: its columns build the statement, its output the new table schema.
        let planned = self.engine.plan_select(self.run_as, &sql, &params).await?;
        let output = planned.columns();
        let schema = header.table_schema(planned.table_schema()?)?;
        // The output's own columns (the change feed's left out), for the latest state.
        let data_columns = output
            .iter()
            .filter(|c| !CHANGE_COLUMNS.contains(&c.as_str()))
            .map(|c| quoted(c))
            .collect::<Vec<_>>()
            .join(", ");
        let sql = match header.kind {
            Kind::Table | Kind::Append => sql,
            Kind::TimeRange => {
                // Emptied; the batches below refill it from `start`.
                let start = header.range_start()?;
                resets.push(Transaction::new(
                    format!("{MODEL_APP_PREFIX}{t}:range"),
                    start.timestamp_micros(),
                ));
                format!("SELECT * FROM ({sql}) AS __strata_rebuild WHERE false")
            }
            Kind::Merge => format!(
                "SELECT {data_columns} FROM ({}) AS __strata_latest WHERE NOT __strata_delete",
                latest_per_key(&sql, header, &output)?
            ),
            Kind::Scd2 => {
                let seq = header
                    .sequence_by
                    .as_deref()
                    .ok_or_else(|| Error::invalid("an scd2 model needs sequence_by"))?;
                format!(
                    "SELECT {data_columns}, CAST({} AS TIMESTAMP) AS valid_from, CAST(NULL AS TIMESTAMP) AS valid_to, \
                     true AS is_current FROM ({}) AS __strata_latest WHERE NOT __strata_delete",
                    quoted(seq),
                    latest_per_key(&sql, header, &output)?
                )
            }
        };
        let commit = ModelCommit {
            table: t,
            sql: &sql,
            params: &params,
            write: ModelWrite::Overwrite,
            progress: &progress,
            add_columns: false,
            schema: Some(schema),
            resets: &resets,
            checks: self.checks(record.rows_quarantined),
        };
        crate::failpoint::hit("flows.before_commit");
        let outcome = self.engine.commit_model(self.run_as, commit).await?;
        if !outcome.duplicate || outcome.refused().is_some() {
            self.judged(record, &outcome)?;
        }
        if !outcome.duplicate {
            record.rows_out += outcome.rows_out;
            record.commits += 1;
            record.target_version = Some(outcome.version);
        }
        merge_ranges(&mut record.sources, ranges);
        if header.kind == Kind::TimeRange {
            return self.ranges(record).await;
        }
        Ok(())
    }

    /// Creates the model's table from its planned output on the first run.
    pub(super) async fn ensure_table(&self) -> Result<()> {
        let t = &self.node.model.target;
        if self.engine.catalog().exists(t).await? {
            return Ok(());
        }
        let mut pins = BTreeMap::new();
        for s in &self.node.reads.streams {
            let v = self.source_version(s).await?.0;
            pins.insert(s.clone(), Pin::Changes { range: None, at: v });
        }
        for s in &self.node.reads.tables {
            let v = self.source_version(s).await?.0;
            pins.insert(s.clone(), Pin::Version(v));
        }
        let sql = self.pinned(&pins)?;
        let header = &self.node.model.header;
        let params = planning_params(header)?;
        let planned = self.engine.plan_select(self.run_as, &sql, &params).await?;
        let schema = header.table_schema(planned.table_schema()?)?;
        self.engine
            .create_model_table(
                self.run_as,
                t,
                &schema,
                header.description.as_deref(),
                &header.columns,
            )
            .await
    }

    /// A source's current version and Delta table id.
    pub(super) async fn source_version(&self, s: &TableRef) -> Result<(u64, String)> {
        let table = self.engine.catalog().load(s).await.map_err(|e| match e {
            Error::NotFound(_) => Error::NotFound(format!(
                "model {} reads {s}, which does not exist",
                self.node.model.target
            )),
            other => other,
        })?;
        let id = table.snapshot()?.metadata().id().to_string();
        Ok((table.version().unwrap_or(0), id))
    }

    /// What the next commit reads, or `None` when nothing moved since the last one.
    async fn next_batch(&self) -> Result<Option<Batch>> {
        let model = &self.node.model;
        let target = self.engine.catalog().load(&model.target).await?;
        let state = target.snapshot()?;
        let log = target.log_store();
        let watermark = |app: String| {
            let state = state.clone();
            let log = Arc::clone(&log);
            async move {
                state
                    .transaction_version(log.as_ref(), &app)
                    .await
                    .map(|v| v.and_then(|v| u64::try_from(v).ok()))
            }
        };
        let limit = model.header.max_versions_per_batch.unwrap_or(u64::MAX);
        // A batch whose quarantine commit landed and whose target commit did not (a crash
        // between them) runs again over exactly its source range: the quarantine holds its
        // markers, ahead of the target's.
        let held = self.quarantine_marks().await?;
        let mut pending = false;
        let mut sources = Vec::new();
        for (s, stream) in self.node.reads.tagged() {
            let (latest, id) = self.source_version(s).await?;
            let app = app_id(&model.target, s, &id);
            let seen = watermark(app.clone()).await?;
            let quarantined = match &held {
                Some((state, log)) => state
                    .transaction_version(log.as_ref(), &app)
                    .await?
                    .and_then(|v| u64::try_from(v).ok()),
                None => None,
            };
            let ahead = quarantined.filter(|q| seen.is_none_or(|w| *q > w));
            pending |= ahead.is_some();
            sources.push((s, stream, latest, app, seen, ahead));
        }
        let mut batch = Batch {
            pins: BTreeMap::new(),
            progress: Vec::new(),
            ranges: Vec::new(),
            more: false,
        };
        let mut moved = false;
        for (s, _, latest, app, seen, ahead) in sources.iter().filter(|x| x.1) {
            let (s, app) = (*s, app.clone());
            // After a pending batch, the versions past it run in the next one.
            batch.more |= pending && ahead.is_some_and(|q| q < *latest);
            let latest = match (pending, ahead) {
                (false, _) => *latest,
                (true, Some(q)) => *q,
                (true, None) => {
                    // Not part of the pending batch: read nothing new from it (yet).
                    batch.more |= seen.is_none_or(|w| w < *latest);
                    batch.pins.insert(
                        s.clone(),
                        Pin::Changes {
                            range: None,
                            at: seen.unwrap_or(*latest).min(*latest),
                        },
                    );
                    continue;
                }
            };
            let from = match seen {
                Some(w) => w + 1,
                None => 0,
            };
            crate::telemetry::metrics().watermark_lag(
                &model.target.to_string(),
                &s.to_string(),
                (latest + 1).saturating_sub(from),
            );
            if from > latest {
                batch.pins.insert(
                    s.clone(),
                    Pin::Changes {
                        range: None,
                        at: latest,
                    },
                );
                continue;
            }
            let to = latest.min(from.saturating_add(limit - 1));
            batch.more |= to < latest;
            moved = true;
            batch.pins.insert(
                s.clone(),
                Pin::Changes {
                    range: Some((from, to)),
                    at: to,
                },
            );
            batch.progress.push(Transaction::new(app, to as i64));
            batch.ranges.push(SourceRange {
                table: s.to_string(),
                from_version: from,
                to_version: to,
            });
        }
        for (s, _, latest, app, seen, ahead) in sources.iter().filter(|x| !x.1) {
            let (s, app) = (*s, app.clone());
            let latest = match (pending, ahead, seen) {
                (true, Some(q), _) => *q,
                (true, None, Some(w)) => *w,
                _ => *latest,
            };
            batch.pins.insert(s.clone(), Pin::Version(latest));
            if *seen != Some(latest) {
                if model.header.kind == Kind::Table {
                    moved = true;
                }
                batch.progress.push(Transaction::new(app, latest as i64));
                batch.ranges.push(SourceRange {
                    table: s.to_string(),
                    from_version: latest,
                    to_version: latest,
                });
            }
        }
        Ok(moved.then_some(batch))
    }
}

impl ModelTask<'_> {
    /// The quarantine table's snapshot, when the model quarantines rows and it exists.
    async fn quarantine_marks(
        &self,
    ) -> Result<
        Option<(
            deltalake::table::state::DeltaTableState,
            deltalake::logstore::LogStoreRef,
        )>,
    > {
        let header = &self.node.model.header;
        if !header
            .expectations
            .iter()
            .any(|e| e.on_violation == OnViolation::Quarantine)
        {
            return Ok(None);
        }
        let qt = self.node.model.target.quarantine()?;
        match self.engine.catalog().load(&qt).await {
            Ok(table) if table.version().is_some() => {
                Ok(Some((table.snapshot()?.clone(), table.log_store())))
            }
            Ok(_) | Err(Error::NotFound(_)) => Ok(None),
            Err(e) => Err(e),
        }
    }
}

/// The columns of `table`'s current schema.
pub(super) fn columns_of(table: &deltalake::DeltaTable) -> Result<Vec<String>> {
    Ok(table
        .snapshot()?
        .snapshot()
        .arrow_schema()
        .fields()
        .iter()
        .map(|f| f.name().clone())
        .collect())
}

/// The run's ranges of each source: a later batch extends an earlier one.
fn merge_ranges(into: &mut Vec<SourceRange>, batch: Vec<SourceRange>) {
    for r in batch {
        match into.iter_mut().find(|x| x.table == r.table) {
            Some(x) => {
                x.from_version = x.from_version.min(r.from_version);
                x.to_version = x.to_version.max(r.to_version);
            }
            None => into.push(r),
        }
    }
}

/// The txn a deployed full refresh commits (its pipeline version).
fn refresh_app(model: &TableRef) -> String {
    format!("{MODEL_APP_PREFIX}{model}:refresh")
}
