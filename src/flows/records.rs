//! Run records as data: `system.runs` (one row per run) and `system.model_runs` (one row
//! per model of a run), Delta tables under `{warehouse}/_strata/system/`, appended when a
//! run ends and read back through the secure catalog as the caller, whose `system` schema
//! shows a row only to principals who may read the table(s) it is about. So records
//! outlive the process and are the same on every replica; the run a replica is executing
//! is also held live in its memory (`Flows::runs`).

use std::sync::Arc;

use arrow::array::RecordBatch;
use arrow::datatypes::{DataType, Field, Schema, TimeUnit};
use chrono::{DateTime, Utc};
use datafusion::common::ScalarValue;
use serde::{Deserialize, Serialize, de::DeserializeOwned};

use super::run::{ModelRun, RunRecord, RunStatus};
use super::{Kind, RunFilter};
use crate::engine::Engine;
use crate::error::{Error, Result};
use crate::pipelines::commit::{self, WriteMode};
use crate::security::Principal;
use crate::storage::TableRef;
use crate::storage::catalog::TableSpec;
use crate::storage::types::ColumnSpec;

const RUNS: &str = "runs";
const MODEL_RUNS: &str = "model_runs";

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
}

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
}

fn ts() -> DataType {
    DataType::Timestamp(TimeUnit::Microsecond, Some("UTC".into()))
}

/// (name, Arrow type, SQL type) of each table's columns.
fn columns(table: &str) -> Vec<(&'static str, DataType, &'static str)> {
    let s = || (DataType::Utf8, "string");
    let n = || (DataType::Int64, "bigint");
    let t = || (ts(), "timestamp");
    let cols: Vec<(&str, (DataType, &str))> = if table == RUNS {
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

fn to_i64(v: u64) -> i64 {
    i64::try_from(v).unwrap_or(i64::MAX)
}

/// Writes and reads the records.
#[derive(Debug)]
pub(crate) struct RunLog {
    engine: Arc<Engine>,
    /// The writer named in the tables' history.
    writer: Principal,
}

impl RunLog {
    pub(crate) fn new(engine: Arc<Engine>) -> RunLog {
        RunLog {
            engine,
            writer: Principal {
                subject: "svc:strata".into(),
                roles: Default::default(),
                claims: Default::default(),
            },
        }
    }

    /// Appends an ended run: its models first, so a visible run row has its model rows.
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
                })
            })
            .collect::<Result<Vec<_>>>()?;
        self.append(MODEL_RUNS, &models).await?;
        let run = RunRow {
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
        };
        self.append(RUNS, &[run]).await
    }

    async fn append<T: Serialize>(&self, name: &str, rows: &[T]) -> Result<()> {
        if rows.is_empty() {
            return Ok(());
        }
        let t = TableRef::system(name);
        let catalog = self.engine.catalog();
        if !catalog.exists(&t).await? {
            let spec = TableSpec {
                columns: columns(name)
                    .into_iter()
                    .map(|(c, _, sql)| ColumnSpec {
                        name: c.into(),
                        data_type: sql.into(),
                        nullable: true,
                        description: None,
                    })
                    .collect(),
                partition_by: Vec::new(),
                description: Some(format!(
                    "Strata run records ({name}); written by the server"
                )),
                properties: Default::default(),
            };
            let props = commit::commit_properties(&self.writer, "CREATE SYSTEM TABLE");
            match catalog.create(&t, &spec, &self.writer.subject, props).await {
                Ok(_) | Err(Error::AlreadyExists(_)) => {}
                Err(e) => return Err(e),
            }
        }
        let mut decoder = arrow::json::ReaderBuilder::new(schema(name)).build_decoder()?;
        decoder.serialize(rows)?;
        let batch = decoder
            .flush()?
            .ok_or_else(|| Error::internal("no rows decoded"))?;
        commit::write(
            catalog,
            &t,
            &self.writer,
            vec![batch],
            WriteMode::Append,
            None,
            "RECORD RUN",
        )
        .await?;
        Ok(())
    }

    /// Runs matching `filter` (newest first) as `p` may see them; `ids` limits to those runs.
    pub(crate) async fn runs(
        &self,
        p: &Arc<Principal>,
        filter: &RunFilter,
        id: Option<&str>,
    ) -> Result<Vec<RunRecord>> {
        if !self
            .engine
            .catalog()
            .exists(&TableRef::system(RUNS))
            .await?
        {
            return Ok(Vec::new());
        }
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
        if let Some(status) = filter.status {
            bind("status =", status.as_str().to_string());
        }
        if let Some(before) = &filter.before {
            bind("run_id <", before.clone());
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
        let runs: Vec<RunRow> = rows(self.engine.query_rows(p, &sql, params).await?)?;
        if runs.is_empty() {
            return Ok(Vec::new());
        }
        let placeholders: Vec<String> = (1..=runs.len()).map(|i| format!("${i}")).collect();
        let ids = runs
            .iter()
            .map(|r| ScalarValue::Utf8(Some(r.run_id.clone())))
            .collect();
        let models: Vec<ModelRunRow> = rows(
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
        )?;
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
                            error: m.error.clone(),
                        })
                    })
                    .collect::<Result<Vec<_>>>()?;
                Ok(RunRecord {
                    run_id: r.run_id,
                    pipeline: r.pipeline,
                    pipeline_version: r.pipeline_version.max(0) as u64,
                    trigger: r.trigger,
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
