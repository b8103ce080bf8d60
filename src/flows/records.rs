//! Run records as data: `system.runs` (one row per run) and `system.model_runs` (one row
//! per model of a run), Delta tables under `{warehouse}/_strata/system/`, appended when a
//! run ends and read back through the secure catalog as the caller, whose `system` schema
//! shows a row only to principals who may read the table(s) it is about. So records
//! outlive the process and are the same on every replica; the run a replica is executing
//! is also held live in its memory (`Flows::runs`).

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use arrow::array::RecordBatch;
use arrow::datatypes::{DataType, Field, Schema, TimeUnit};
use chrono::{DateTime, Utc};
use datafusion::common::ScalarValue;
use deltalake::kernel::Transaction;
use serde::{Deserialize, Serialize, de::DeserializeOwned};

use super::record::{ModelRun, RunRecord, RunStatus};
use super::results::to_i64;
pub(crate) use super::results::{AuditRow, ExpectationRow};
use super::{Kind, RunFilter};
use crate::engine::Engine;
use crate::error::{Error, Result};
use crate::pipelines::commit::{self, WriteMode};
use crate::pipelines::schema::{self, TableChange};
use crate::security::Principal;
use crate::storage::TableRef;
use crate::storage::catalog::TableSpec;
use crate::storage::types::ColumnSpec;

const RUNS: &str = "runs";
const MODEL_RUNS: &str = "model_runs";
pub(crate) const EXPECTATION_RESULTS: &str = "expectation_results";
pub(crate) const AUDIT_RESULTS: &str = "audit_results";
/// The tables this log writes (their index is their `ready` flag).
const TABLES: [&str; 4] = [RUNS, MODEL_RUNS, EXPECTATION_RESULTS, AUDIT_RESULTS];

/// A row of `system.runs`.
#[derive(Debug, Serialize, Deserialize)]
struct RunRow {
    run_id: String,
    pipeline: String,
    pipeline_version: i64,
    trigger: String,
    requested_by: String,
    status: RunStatus,
    queued_at: DateTime<Utc>,
    #[serde(default)]
    started_at: Option<DateTime<Utc>>,
    #[serde(default)]
    ended_at: Option<DateTime<Utc>>,
    #[serde(default)]
    error: Option<String>,
    /// The run's models, comma-separated (what the row filter of `system.runs` reads).
    models: String,
    #[serde(default)]
    scheduled_for: Option<DateTime<Utc>>,
    #[serde(default)]
    epoch: Option<i64>,
    #[serde(default)]
    replica: Option<String>,
    /// A run has a row per change of state (queued or running when it starts, its end,
    /// an orphan mark); the highest `seq` is its current state. Rows from before `seq`
    /// existed are ends.
    #[serde(default)]
    seq: Option<i64>,
    #[serde(default)]
    resumes: Option<String>,
}

/// `seq` of the row a run gets when it starts (or its slot is claimed).
const SEQ_START: i64 = 0;
/// `seq` of the row a run handed to the scheduler's leader gets (no replica yet): older than
/// the leader's claim, which is its start row.
const SEQ_REQUESTED: i64 = -1;
/// `seq` of the row a run gets when it ends.
const SEQ_END: i64 = 1;
/// `seq` of the leader's orphan mark (the run's own end, if it ever comes, is no newer).
const SEQ_ORPHANED: i64 = 1;

/// A row of `system.model_runs`.
#[derive(Debug, Serialize, Deserialize)]
struct ModelRunRow {
    run_id: String,
    pipeline: String,
    /// The model's place in the run (topological order).
    position: i64,
    model: String,
    kind: Kind,
    status: RunStatus,
    rows_out: i64,
    rows_skipped: i64,
    commits: i64,
    /// The source version ranges read, as JSON (`[{"table", "from_version", "to_version"}]`).
    sources: String,
    #[serde(default)]
    target_version: Option<i64>,
    duration_ms: i64,
    #[serde(default)]
    error: Option<String>,
    #[serde(default)]
    attempts: Option<i64>,
    /// A backfill's per-batch outcome, as JSON (succeeded and pending batches as merged
    /// intervals, failed ones with their error).
    #[serde(default)]
    backfill: Option<String>,
    #[serde(default)]
    rows_dropped: Option<i64>,
    #[serde(default)]
    rows_quarantined: Option<i64>,
    #[serde(default)]
    quarantine_over_cap: Option<i64>,
}

fn ts() -> DataType {
    DataType::Timestamp(TimeUnit::Microsecond, Some("UTC".into()))
}

/// (name, Arrow type, SQL type) of each table's columns.
fn columns(table: &str) -> Vec<(&'static str, DataType, &'static str)> {
    let s = || (DataType::Utf8, "string");
    let n = || (DataType::Int64, "bigint");
    let t = || (ts(), "timestamp");
    let cols: Vec<(&str, (DataType, &str))> = if table == EXPECTATION_RESULTS {
        vec![
            ("run_id", s()),
            ("pipeline", s()),
            ("model", s()),
            ("expectation", s()),
            ("action", s()),
            ("rows", n()),
            ("passed", n()),
            ("failed", n()),
            ("samples", s()),
            ("sources", s()),
            ("table_version", n()),
            ("status", s()),
            ("recorded_at", t()),
        ]
    } else if table == AUDIT_RESULTS {
        super::audit::COLUMNS
            .iter()
            .map(|(c, sql)| {
                let ty = match *sql {
                    "bigint" => n(),
                    "timestamp" => t(),
                    "boolean" => (DataType::Boolean, "boolean"),
                    _ => s(),
                };
                (*c, ty)
            })
            .collect()
    } else if table == RUNS {
        vec![
            ("run_id", s()),
            ("pipeline", s()),
            ("pipeline_version", n()),
            ("trigger", s()),
            ("requested_by", s()),
            ("status", s()),
            ("queued_at", t()),
            ("started_at", t()),
            ("ended_at", t()),
            ("error", s()),
            ("models", s()),
            ("scheduled_for", t()),
            ("epoch", n()),
            ("replica", s()),
            ("seq", n()),
            ("resumes", s()),
        ]
    } else {
        vec![
            ("run_id", s()),
            ("pipeline", s()),
            ("position", n()),
            ("model", s()),
            ("kind", s()),
            ("status", s()),
            ("rows_out", n()),
            ("rows_skipped", n()),
            ("commits", n()),
            ("sources", s()),
            ("target_version", n()),
            ("duration_ms", n()),
            ("error", s()),
            ("attempts", n()),
            ("backfill", s()),
            ("rows_dropped", n()),
            ("rows_quarantined", n()),
            ("quarantine_over_cap", n()),
        ]
    };
    cols.into_iter().map(|(c, (a, q))| (c, a, q)).collect()
}

fn schema(table: &str) -> Arc<Schema> {
    Arc::new(Schema::new(
        columns(table)
            .into_iter()
            .map(|(c, dt, _)| Field::new(c, dt, true))
            .collect::<Vec<_>>(),
    ))
}

/// Writes and reads the records.
#[derive(Debug)]
pub(crate) struct RunLog {
    engine: Arc<Engine>,
    /// The writer named in the tables' history.
    writer: Principal,
    /// The role that reads every record (the server's own look at open runs).
    admin_role: String,
    /// Each of [`TABLES`] exists with every column this build writes.
    ready: [AtomicBool; 4],
}

/// The `system.runs` row of `r` as of `seq`.
fn run_row(r: &RunRecord, seq: i64) -> RunRow {
    RunRow {
        run_id: r.run_id.clone(),
        pipeline: r.pipeline.clone(),
        pipeline_version: to_i64(r.pipeline_version),
        trigger: r.trigger.clone(),
        requested_by: r.requested_by.clone(),
        status: r.status,
        queued_at: r.queued_at,
        started_at: r.started_at,
        ended_at: r.ended_at,
        error: r.error.clone(),
        models: r
            .models
            .iter()
            .map(|m| m.model.as_str())
            .collect::<Vec<_>>()
            .join(","),
        scheduled_for: r.scheduled_for,
        epoch: r.epoch.map(to_i64),
        replica: r.replica.clone(),
        seq: Some(seq),
        resumes: r.resumes.clone(),
    }
}

impl RunLog {
    pub(crate) fn new(engine: Arc<Engine>, admin_role: &str) -> RunLog {
        RunLog {
            engine,
            writer: Principal {
                subject: "svc:strata".into(),
                roles: Default::default(),
                claims: Default::default(),
            },
            admin_role: admin_role.to_string(),
            ready: Default::default(),
        }
    }

    /// Appends an ended run: its models first, so a visible end row has its model rows.
    pub(crate) async fn record(&self, r: &RunRecord) -> Result<()> {
        let models = r
            .models
            .iter()
            .enumerate()
            .map(|(i, m)| {
                Ok(ModelRunRow {
                    run_id: r.run_id.clone(),
                    pipeline: r.pipeline.clone(),
                    position: i as i64,
                    model: m.model.clone(),
                    kind: m.kind,
                    status: m.status,
                    rows_out: to_i64(m.rows_out),
                    rows_skipped: to_i64(m.rows_skipped),
                    commits: to_i64(m.commits),
                    sources: serde_json::to_string(&m.sources)
                        .map_err(|e| Error::internal(e.to_string()))?,
                    target_version: m.target_version.map(to_i64),
                    duration_ms: to_i64(m.duration_ms),
                    error: m.error.clone(),
                    attempts: Some(i64::from(m.attempts)),
                    backfill: m
                        .backfill
                        .as_ref()
                        .map(serde_json::to_string)
                        .transpose()
                        .map_err(|e| Error::internal(e.to_string()))?,
                    rows_dropped: Some(to_i64(m.rows_dropped)),
                    rows_quarantined: Some(to_i64(m.rows_quarantined)),
                    quarantine_over_cap: Some(to_i64(m.quarantine_over_cap)),
                })
            })
            .collect::<Result<Vec<_>>>()?;
        let now = Utc::now();
        let expectations = ExpectationRow::of_run(r, now);
        // Results first: a run whose end row is visible has its results too. Counters
        // follow the rows they mirror (a crash before the rows loses both).
        self.append(EXPECTATION_RESULTS, &expectations, &[]).await?;
        let metrics = crate::telemetry::metrics();
        for e in &expectations {
            metrics.expectation_violations(
                &e.pipeline,
                &e.model,
                &e.expectation,
                &e.action,
                e.failed.max(0) as u64,
            );
        }
        let audits: Vec<AuditRow> = r
            .models
            .iter()
            .flat_map(|m| {
                m.audits.iter().map(move |a| {
                    AuditRow::of(a, &m.model, Some((&r.run_id, &r.pipeline)), "model", now)
                })
            })
            .collect();
        self.record_audits(&audits).await?;
        self.append(MODEL_RUNS, &models, &[]).await?;
        self.append(RUNS, &[run_row(r, SEQ_END)], &[]).await?;
        Ok(())
    }

    /// Appends audit results, and counts the failed ones.
    pub(crate) async fn record_audits(&self, rows: &[AuditRow]) -> Result<()> {
        self.append(AUDIT_RESULTS, rows, &[]).await?;
        let metrics = crate::telemetry::metrics();
        for a in rows.iter().filter(|a| !a.passed) {
            metrics.audit_failure(&a.table_name, &a.audit, &a.severity);
        }
        Ok(())
    }

    /// Rows of `table` (a results table) about `about` since `since`, newest first, as `p`
    /// may see them; none while the table does not exist.
    pub(crate) async fn results(
        &self,
        p: &Arc<Principal>,
        table: &str,
        about: (&str, &str),
        pipeline: Option<&str>,
        since: Option<DateTime<Utc>>,
    ) -> Result<Vec<serde_json::Value>> {
        if !self
            .engine
            .catalog()
            .exists(&TableRef::system(table))
            .await?
        {
            return Ok(Vec::new());
        }
        let (column, value) = about;
        let at = if table == EXPECTATION_RESULTS {
            "recorded_at"
        } else {
            "checked_at"
        };
        let mut params = vec![ScalarValue::Utf8(Some(value.to_string()))];
        let mut sql = format!("SELECT * FROM system.{table} WHERE {column} = $1");
        if let Some(pipeline) = pipeline {
            params.push(ScalarValue::Utf8(Some(pipeline.to_string())));
            sql.push_str(&format!(" AND pipeline = ${}", params.len()));
        }
        if let Some(since) = since {
            params.push(ScalarValue::TimestampMicrosecond(
                Some(since.timestamp_micros()),
                Some("UTC".into()),
            ));
            sql.push_str(&format!(" AND {at} >= ${}", params.len()));
        }
        sql.push_str(&format!(" ORDER BY {at} DESC LIMIT 1000"));
        rows(self.engine.query_rows(p, &sql, params).await?)
    }

    /// Appends a run's first row (queued or running), so every replica sees it while it runs.
    pub(crate) async fn record_start(&self, r: &RunRecord) -> Result<()> {
        self.append(RUNS, &[run_row(r, SEQ_START)], &[]).await?;
        Ok(())
    }

    /// Appends the row of a run handed to the scheduler's leader (`flows::requests`).
    pub(crate) async fn record_requested(&self, r: &RunRecord) -> Result<()> {
        self.append(RUNS, &[run_row(r, SEQ_REQUESTED)], &[]).await?;
        Ok(())
    }

    /// Appends `r` (a scheduled run, or a slot recorded as skipped or paused) as the claim
    /// of its slot: the commit carries `slot` (the pipeline's claimed-up-to marker), so of
    /// two leaders claiming the same slot one commits and the other finds it taken (false).
    pub(crate) async fn claim(&self, r: &RunRecord, slot: Transaction) -> Result<bool> {
        let seq = if r.status.is_terminal() {
            SEQ_END
        } else {
            SEQ_START
        };
        Ok(!self.append(RUNS, &[run_row(r, seq)], &[slot]).await?)
    }

    /// The version of marker `app` in `system.runs` (the newest slot claimed under it).
    pub(crate) async fn claimed(&self, app: &str) -> Result<Option<i64>> {
        let t = TableRef::system(RUNS);
        let table = match self.engine.catalog().load(&t).await {
            Ok(table) => table,
            Err(Error::NotFound(_)) => return Ok(None),
            Err(e) => return Err(e),
        };
        if table.version().is_none() {
            return Ok(None);
        }
        Ok(table
            .snapshot()?
            .transaction_version(table.log_store().as_ref(), app)
            .await?)
    }

    /// Marks runs `orphaned` that are still queued or running by their last row and whose
    /// replica is not in `alive`; their ids.
    pub(crate) async fn mark_orphans(
        &self,
        alive: &[String],
        now: DateTime<Utc>,
        grace: chrono::Duration,
    ) -> Result<Vec<String>> {
        let filter = RunFilter {
            limit: 1000,
            ..RunFilter::default()
        };
        let open: Vec<RunRow> = self
            .latest_rows(&self.system_reader(), &filter, None, true)
            .await?;
        let mut marked = Vec::new();
        for mut row in open {
            // A run younger than `grace` may be from a replica whose first heartbeat the
            // leader has not listed yet.
            if row.replica.as_ref().is_none_or(|r| alive.contains(r)) || now - row.queued_at < grace
            {
                continue;
            }
            row.error = Some(format!(
                "the replica running it ({}) stopped before it ended; its committed batches stand, the rest runs again on the next trigger",
                row.replica.as_deref().unwrap_or("unknown")
            ));
            row.status = RunStatus::Orphaned;
            row.ended_at = Some(now);
            row.seq = Some(SEQ_ORPHANED);
            self.append(RUNS, std::slice::from_ref(&row), &[]).await?;
            marked.push(row.run_id);
        }
        Ok(marked)
    }

    /// The batches of `model` that earlier backfills committed (their `succeeded`).
    pub(crate) async fn backfilled(&self, model: &str) -> Result<Vec<super::record::Interval>> {
        if !self
            .engine
            .catalog()
            .exists(&TableRef::system(MODEL_RUNS))
            .await?
        {
            return Ok(Vec::new());
        }
        #[derive(Deserialize)]
        struct Row {
            backfill: String,
        }
        let found: Vec<Row> = rows(
            self.engine
                .query_rows(
                    &self.system_reader(),
                    "SELECT backfill FROM system.model_runs WHERE model = $1 AND backfill IS NOT NULL",
                    vec![ScalarValue::Utf8(Some(model.to_string()))],
                )
                .await?,
        )?;
        let mut out = Vec::new();
        for r in found {
            let b: super::record::BackfillModel = serde_json::from_str(&r.backfill)
                .map_err(|e| Error::internal(format!("system.model_runs backfill: {e}")))?;
            out.extend(b.succeeded);
        }
        Ok(out)
    }

    pub(crate) fn admin_role(&self) -> &str {
        &self.admin_role
    }

    /// The server itself, reading every row (orphan marks concern every run).
    fn system_reader(&self) -> Arc<Principal> {
        Arc::new(Principal {
            subject: self.writer.subject.clone(),
            roles: [self.admin_role.clone()].into(),
            claims: Default::default(),
        })
    }

    /// Appends `rows` (with `progress` in the same commit); true when the table already
    /// held the progress and nothing was written.
    async fn append<T: Serialize>(
        &self,
        name: &str,
        rows: &[T],
        progress: &commit::Progress,
    ) -> Result<bool> {
        if rows.is_empty() {
            return Ok(false);
        }
        let t = TableRef::system(name);
        self.ensure_table(name, &t).await?;
        let mut decoder = arrow::json::ReaderBuilder::new(schema(name)).build_decoder()?;
        decoder.serialize(rows)?;
        let batch = decoder
            .flush()?
            .ok_or_else(|| Error::internal("no rows decoded"))?;
        let outcome = commit::write_with_progress(
            self.engine.catalog(),
            &t,
            &self.writer,
            vec![batch],
            WriteMode::Append,
            None,
            "RECORD RUN",
            progress,
        )
        .await?;
        Ok(outcome.duplicate)
    }

    /// Creates the table, or adds the columns a newer server records (once per process).
    async fn ensure_table(&self, name: &str, t: &TableRef) -> Result<()> {
        let index = TABLES
            .iter()
            .position(|n| *n == name)
            .ok_or_else(|| Error::internal(format!("no system table {name}")))?;
        let ready = &self.ready[index];
        if ready.load(Ordering::Acquire) {
            return Ok(());
        }
        let catalog = self.engine.catalog();
        let wanted: Vec<ColumnSpec> = columns(name)
            .into_iter()
            .map(|(c, _, sql)| ColumnSpec {
                name: c.into(),
                data_type: sql.into(),
                nullable: true,
                description: None,
            })
            .collect();
        match catalog.load(t).await {
            Ok(table) => {
                let have = table.snapshot()?.schema();
                let missing: Vec<ColumnSpec> = wanted
                    .into_iter()
                    .filter(|c| have.field(&c.name).is_none())
                    .collect();
                if !missing.is_empty() {
                    let change = TableChange::AddColumns {
                        columns: missing,
                        if_not_exists: true,
                    };
                    schema::alter(
                        catalog,
                        t,
                        &self.writer,
                        &change,
                        self.engine.planning_state(),
                    )
                    .await?;
                }
            }
            Err(Error::NotFound(_)) => {
                let spec = TableSpec {
                    columns: wanted,
                    partition_by: Vec::new(),
                    description: Some(format!(
                        "Strata run records ({name}); written by the server"
                    )),
                    properties: Default::default(),
                };
                let props = commit::commit_properties(&self.writer, "CREATE SYSTEM TABLE");
                match catalog.create(t, &spec, &self.writer.subject, props).await {
                    Ok(_) | Err(Error::AlreadyExists(_)) => {}
                    Err(e) => return Err(e),
                }
            }
            Err(e) => return Err(e),
        }
        ready.store(true, Ordering::Release);
        Ok(())
    }

    /// Runs matching `filter` (newest first) as `p` may see them; `id` limits to that run.
    pub(crate) async fn runs(
        &self,
        p: &Arc<Principal>,
        filter: &RunFilter,
        id: Option<&str>,
    ) -> Result<Vec<RunRecord>> {
        let runs = self.latest_rows(p, filter, id, false).await?;
        if runs.is_empty() {
            return Ok(Vec::new());
        }
        // Model rows are written when a run ends: none yet while the first runs are open.
        let ended_any = self
            .engine
            .catalog()
            .exists(&TableRef::system(MODEL_RUNS))
            .await?;
        let placeholders: Vec<String> = (1..=runs.len()).map(|i| format!("${i}")).collect();
        let ids = runs
            .iter()
            .map(|r| ScalarValue::Utf8(Some(r.run_id.clone())))
            .collect();
        let models: Vec<ModelRunRow> = if !ended_any {
            Vec::new()
        } else {
            rows(
            self.engine
                .query_rows(
                    p,
                    &format!(
                        "SELECT * FROM system.model_runs WHERE run_id IN ({}) ORDER BY run_id, position",
                        placeholders.join(", ")
                    ),
                    ids,
                )
                .await?,
        )?
        };
        runs.into_iter()
            .map(|r| {
                let models = models
                    .iter()
                    .filter(|m| m.run_id == r.run_id)
                    .map(|m| {
                        Ok(ModelRun {
                            model: m.model.clone(),
                            kind: m.kind,
                            status: m.status,
                            rows_out: m.rows_out.max(0) as u64,
                            rows_skipped: m.rows_skipped.max(0) as u64,
                            commits: m.commits.max(0) as u64,
                            sources: serde_json::from_str(&m.sources).map_err(|e| {
                                Error::internal(format!("system.model_runs sources: {e}"))
                            })?,
                            target_version: m.target_version.map(|v| v.max(0) as u64),
                            duration_ms: m.duration_ms.max(0) as u64,
                            attempts: m.attempts.map_or(1, |a| a.clamp(1, 1000) as u32),
                            backfill: m
                                .backfill
                                .as_deref()
                                .map(serde_json::from_str)
                                .transpose()
                                .map_err(|e| {
                                    Error::internal(format!("system.model_runs backfill: {e}"))
                                })?,
                            error: m.error.clone(),
                            expectations: Vec::new(),
                            rows_dropped: m.rows_dropped.unwrap_or(0).max(0) as u64,
                            rows_quarantined: m.rows_quarantined.unwrap_or(0).max(0) as u64,
                            audits: Vec::new(),
                            failure_samples: Vec::new(),
                            quarantine_over_cap: m.quarantine_over_cap.unwrap_or(0).max(0) as u64,
                            refused: false,
                        })
                    })
                    .collect::<Result<Vec<_>>>()?;
                Ok(RunRecord {
                    run_id: r.run_id,
                    pipeline: r.pipeline,
                    pipeline_version: r.pipeline_version.max(0) as u64,
                    trigger: r.trigger,
                    scheduled_for: r.scheduled_for,
                    epoch: r.epoch.map(|e| e.max(0) as u64),
                    replica: r.replica,
                    resumes: r.resumes,
                    requested_by: r.requested_by,
                    status: r.status,
                    queued_at: r.queued_at,
                    started_at: r.started_at,
                    ended_at: r.ended_at,
                    error: r.error,
                    models,
                })
            })
            .collect()
    }
}

impl RunLog {
    /// The current row (highest `seq`) of each run matching `filter` as `p` may see them,
    /// newest first; `open`: only runs still queued or running.
    async fn latest_rows(
        &self,
        p: &Arc<Principal>,
        filter: &RunFilter,
        id: Option<&str>,
        open: bool,
    ) -> Result<Vec<RunRow>> {
        if !self
            .engine
            .catalog()
            .exists(&TableRef::system(RUNS))
            .await?
        {
            return Ok(Vec::new());
        }
        // system.runs shows each run's current row (the secure catalog's view), so every
        // condition applies to the current state.
        let mut conditions = Vec::new();
        let mut params = Vec::new();
        let mut bind = |condition: &str, value: String| {
            params.push(ScalarValue::Utf8(Some(value)));
            conditions.push(format!("{condition} ${}", params.len()));
        };
        if let Some(id) = id {
            bind("run_id =", id.to_string());
        }
        if let Some(pipeline) = &filter.pipeline {
            bind("pipeline =", pipeline.clone());
        }
        if let Some(before) = &filter.before {
            bind("run_id <", before.clone());
        }
        if let Some(status) = filter.status {
            bind("status =", status.as_str().to_string());
        }
        if open {
            conditions.push("status IN ('queued', 'running')".into());
        }
        let sql = format!(
            "SELECT * FROM system.runs{} ORDER BY run_id DESC LIMIT {}",
            if conditions.is_empty() {
                String::new()
            } else {
                format!(" WHERE {}", conditions.join(" AND "))
            },
            filter.limit.max(1)
        );
        rows(self.engine.query_rows(p, &sql, params).await?)
    }
}

/// One row of [`RunLog::last_runs`].
#[derive(Debug, Deserialize)]
struct LastRun {
    pipeline: String,
    run_id: String,
    status: RunStatus,
}

impl RunLog {
    /// Per pipeline, the newest recorded run `p` may see: (run id, status). One query.
    pub(crate) async fn last_runs(
        &self,
        p: &Arc<Principal>,
    ) -> Result<std::collections::BTreeMap<String, (String, RunStatus)>> {
        if !self
            .engine
            .catalog()
            .exists(&TableRef::system(RUNS))
            .await?
        {
            return Ok(Default::default());
        }
        let sql = "SELECT pipeline, run_id, status FROM (\
                     SELECT pipeline, run_id, status, \
                       row_number() OVER (PARTITION BY pipeline ORDER BY run_id DESC) AS rn \
                     FROM system.runs) AS r WHERE rn = 1";
        let last: Vec<LastRun> = rows(self.engine.query_rows(p, sql, Vec::new()).await?)?;
        Ok(last
            .into_iter()
            .map(|l| (l.pipeline, (l.run_id, l.status)))
            .collect())
    }
}

/// Query rows as `T`s.
fn rows<T: DeserializeOwned>(batches: Vec<RecordBatch>) -> Result<Vec<T>> {
    let mut buf = Vec::new();
    {
        let mut w = arrow::json::ArrayWriter::new(&mut buf);
        for b in &batches {
            w.write(b)?;
        }
        w.finish()?;
    }
    if buf.is_empty() {
        return Ok(Vec::new());
    }
    serde_json::from_slice(&buf).map_err(|e| Error::internal(format!("reading run records: {e}")))
}
