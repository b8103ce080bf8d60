//! One commit.
//!
//! ```text
//! validated batches → principal checked by the caller
//!   → [idempotency key?] txn(appId) already in the log → report the earlier commit, write nothing
//!   → delta-rs write with CommitProperties { txn(appId, 1), strata.principal, strata.operation }
//!   → put-if-absent of _delta_log/<v>.json (delta-rs retries blind appends on conflict)
//!   → conflict with an idempotent retry of ourselves → read the log back: committed once
//!   → catalog remembers the new snapshot (new version ⇒ new cache keys)
//! ```

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use arrow::array::RecordBatch;
use arrow::datatypes::SchemaRef;
use datafusion::catalog::streaming::StreamingTable;
use datafusion::datasource::provider_as_source;
use datafusion::error::DataFusionError;
use datafusion::execution::{SendableRecordBatchStream, TaskContext};
use datafusion::logical_expr::LogicalPlanBuilder;
use datafusion::physical_plan::stream::RecordBatchStreamAdapter;
use datafusion::physical_plan::streaming::PartitionStream;
use deltalake::kernel::Transaction;
use deltalake::kernel::transaction::CommitProperties;
use deltalake::operations::write::WriteBuilder;
use deltalake::protocol::SaveMode;
use deltalake::{DeltaTable, DeltaTableError};
use futures::TryStreamExt;
use serde::Serialize;

use crate::error::{Error, ErrorKind, Result};
use crate::security::Principal;
use crate::storage::catalog::TableSpec;
use crate::storage::commit_info::{
    COMMIT_ID_KEY, EPOCH_KEY, FENCE_APP_ID, LINEAGE_KEY, LineageScope, OPERATION_KEY,
    PRINCIPAL_KEY, RUN_ID_KEY, RunContext,
};
use crate::storage::{Catalog, TableRef};

const MAX_IDEMPOTENCY_KEY: usize = 200;
/// Commit attempts of a blind append. An append reads nothing, so losing a race never
/// invalidates it: delta-rs just tries the next version. Its default (15) let appends fail
/// with 409 under five busy writers (four appenders and back-to-back OPTIMIZEs on a loaded
/// CI machine); each extra attempt costs one log read.
const APPEND_COMMIT_ATTEMPTS: usize = 100;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, serde::Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum WriteMode {
    Append,
    Overwrite,
}

/// What a write did.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct WriteOutcome {
    /// Table version after the write (the current version for a duplicate).
    pub version: u64,
    /// Rows written (for a duplicate: what the original upload with this key wrote).
    pub rows: u64,
    /// True when the idempotency key had already committed: nothing was written.
    pub duplicate: bool,
}

/// The commit properties of every Strata commit. Post-commit cleanup of expired log files
/// is off: the log holds the change feed deployed models read from their watermarks, so it
/// is pruned by VACUUM only, behind the same guard as the change files
/// (`pipelines::maintenance::vacuum`).
pub(crate) fn commit_properties(p: &Principal, operation: &str) -> CommitProperties {
    CommitProperties::default()
        .with_cleanup_expired_logs(Some(false))
        .with_metadata(commit_metadata(p, operation))
}

/// [`commit_properties`] of a write to `t`, with the current write's lineage when it has
/// one for `t` (`engine::lineage::attached`): delta-rs's `with_metadata` replaces, so the
/// record joins the other keys here.
pub(crate) fn write_properties(p: &Principal, t: &TableRef, operation: &str) -> CommitProperties {
    noted_properties(p, t, operation, &[])
}

/// [`write_properties`] with `notes`, keys of the commit's info besides Strata's own (a
/// connector's checkpoint: its position travels in the commit holding its rows).
fn noted_properties(
    p: &Principal,
    t: &TableRef,
    operation: &str,
    notes: &[(String, serde_json::Value)],
) -> CommitProperties {
    let mut metadata = commit_metadata(p, operation);
    metadata.extend(notes.iter().cloned());
    if let Some(record) = LineageScope::record_for(t) {
        metadata.push((LINEAGE_KEY.to_string(), record));
    }
    CommitProperties::default()
        .with_cleanup_expired_logs(Some(false))
        .with_metadata(metadata)
}

fn commit_metadata(p: &Principal, operation: &str) -> Vec<(String, serde_json::Value)> {
    let run = RunContext::current().map(|r| {
        let mut keys = vec![(RUN_ID_KEY.to_string(), serde_json::Value::String(r.run_id))];
        if let Some(epoch) = r.epoch {
            keys.push((EPOCH_KEY.to_string(), serde_json::Value::from(epoch)));
        }
        keys
    });
    run.into_iter()
        .flatten()
        .chain([
            (
                PRINCIPAL_KEY.to_string(),
                serde_json::Value::String(p.subject.clone()),
            ),
            (
                OPERATION_KEY.to_string(),
                serde_json::Value::String(operation.to_string()),
            ),
            // Makes every commit's bytes unique, so a read-back after an ambiguous create can
            // tell this commit from any other (storage::commit_guard).
            (
                COMMIT_ID_KEY.to_string(),
                serde_json::Value::String(uuid::Uuid::new_v4().to_string()),
            ),
        ])
        .collect()
}

/// The Delta `txn` application id of a client's idempotency key. Keys belong to the
/// principal that sent them (its subject, hashed): the same key from two principals is two
/// uploads, and nobody can learn whether another principal used a key, or make another's
/// upload a "duplicate" that silently drops its rows. Strata's own progress markers live
/// in other namespaces of `strata:`, which no client key can reach.
fn app_id(p: &Principal, key: &str) -> Result<String> {
    use sha2::{Digest, Sha256};
    if key.is_empty()
        || key.len() > MAX_IDEMPOTENCY_KEY
        || !key.chars().all(|c| c.is_ascii_graphic())
    {
        return Err(Error::invalid(format!(
            "idempotency key must be 1–{MAX_IDEMPOTENCY_KEY} printable ASCII characters"
        )));
    }
    if key.starts_with("strata:") {
        return Err(Error::invalid(
            "idempotency keys starting with strata: are reserved for Strata's own progress markers",
        ));
    }
    let who = Sha256::digest(p.subject.as_bytes());
    Ok(format!("strata:user:{}:{key}", hex::encode(&who[..16])))
}

fn version_of(table: &DeltaTable) -> u64 {
    table.version().unwrap_or(0)
}

/// The rows the write under `app_id` committed, if it did (the `txn` version holds them).
async fn already_committed(table: &DeltaTable, app_id: &str) -> Result<Option<u64>> {
    let state = table.snapshot()?;
    Ok(state
        .transaction_version(table.log_store().as_ref(), app_id)
        .await?
        .map(|rows| u64::try_from(rows).unwrap_or(0)))
}

/// The outcome of an earlier commit that makes this write a duplicate: `table` already
/// holds the write's progress markers, or its idempotency key.
async fn committed_before(
    table: &DeltaTable,
    app: Option<&str>,
    progress: &Progress,
) -> Result<Option<WriteOutcome>> {
    let rows = if progress_reached(table, progress).await? {
        Some(0)
    } else {
        match app {
            Some(app) => already_committed(table, app).await?,
            None => None,
        }
    };
    Ok(rows.map(|rows| WriteOutcome {
        version: version_of(table),
        rows,
        duplicate: true,
    }))
}

/// What a write writes.
pub(crate) enum WriteInput {
    /// Batches in memory.
    Batches(Vec<RecordBatch>),
    /// Batches written to data files as they arrive, so memory stays bounded whatever the
    /// size of the upload; an error from the stream fails the write before its commit,
    /// leaving only unreferenced files behind (VACUUM removes them). The caller has made
    /// sure it holds at least one row.
    Stream(SendableRecordBatchStream),
}

impl std::fmt::Debug for WriteInput {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            WriteInput::Batches(b) => write!(f, "Batches({})", b.len()),
            WriteInput::Stream(_) => f.write_str("Stream"),
        }
    }
}

impl From<Vec<RecordBatch>> for WriteInput {
    fn from(batches: Vec<RecordBatch>) -> WriteInput {
        WriteInput::Batches(batches)
    }
}

impl WriteInput {
    fn schema(&self) -> Option<SchemaRef> {
        match self {
            WriteInput::Batches(b) => b.first().map(RecordBatch::schema),
            WriteInput::Stream(s) => Some(s.schema()),
        }
    }

    /// A delta-rs write of this input, and the rows it writes (counted as they pass for a
    /// stream).
    fn into_write(self, table: DeltaTable) -> Result<(WriteBuilder, RowCount)> {
        match self {
            WriteInput::Batches(batches) => {
                let rows = batches.iter().map(|b| b.num_rows() as u64).sum();
                Ok((table.write(batches), RowCount::Known(rows)))
            }
            WriteInput::Stream(stream) => {
                let counter = Arc::new(AtomicU64::new(0));
                let counted = Arc::clone(&counter);
                let schema = stream.schema();
                let stream = RecordBatchStreamAdapter::new(
                    Arc::clone(&schema),
                    stream.inspect_ok(move |b| {
                        counted.fetch_add(b.num_rows() as u64, Ordering::Relaxed);
                    }),
                );
                let source = StreamingTable::try_new(
                    Arc::clone(&schema),
                    vec![Arc::new(OnceStream::new(schema, Box::pin(stream)))],
                )?;
                let plan =
                    LogicalPlanBuilder::scan("input", provider_as_source(Arc::new(source)), None)?
                        .build()?;
                Ok((
                    table.write(Vec::new()).with_input_plan(plan),
                    RowCount::Counted(counter),
                ))
            }
        }
    }
}

enum RowCount {
    Known(u64),
    Counted(Arc<AtomicU64>),
}

impl RowCount {
    fn get(&self) -> u64 {
        match self {
            RowCount::Known(n) => *n,
            RowCount::Counted(n) => n.load(Ordering::Relaxed),
        }
    }
}

/// A partition that hands out its stream once (delta-rs executes its input plan once).
struct OnceStream {
    schema: SchemaRef,
    stream: std::sync::Mutex<Option<SendableRecordBatchStream>>,
}

impl OnceStream {
    fn new(schema: SchemaRef, stream: SendableRecordBatchStream) -> OnceStream {
        OnceStream {
            schema,
            stream: std::sync::Mutex::new(Some(stream)),
        }
    }
}

impl std::fmt::Debug for OnceStream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OnceStream").finish_non_exhaustive()
    }
}

impl PartitionStream for OnceStream {
    fn schema(&self) -> &SchemaRef {
        &self.schema
    }

    fn execute(&self, _ctx: Arc<TaskContext>) -> SendableRecordBatchStream {
        let taken = self.stream.lock().ok().and_then(|mut s| s.take());
        taken.unwrap_or_else(|| {
            Box::pin(RecordBatchStreamAdapter::new(
                Arc::clone(&self.schema),
                futures::stream::once(async {
                    Err(DataFusionError::Internal(
                        "an ingest stream can be read only once".into(),
                    ))
                }),
            ))
        })
    }
}

/// Progress markers (PLATFORM P1): `txn` actions committed with the rows they cover, so the
/// progress can never be ahead of (or behind) the data. Each marker's version is the
/// position the commit reaches (e.g. the last source version a model consumed).
pub(crate) type Progress = [Transaction];

/// Whether `table` already holds progress at or beyond one of `progress`'s markers: another
/// runner committed this range (or a later one), so committing it again would duplicate it.
pub(crate) async fn progress_reached(table: &DeltaTable, progress: &Progress) -> Result<bool> {
    if progress.is_empty() || table.version().is_none() {
        return Ok(false);
    }
    let state = table.snapshot()?;
    for mark in progress {
        if let Some(v) = state
            .transaction_version(table.log_store().as_ref(), &mark.app_id)
            .await?
            && v >= mark.version
        {
            return Ok(true);
        }
    }
    Ok(false)
}

/// The fencing marker a commit of a run the scheduler started carries (`None` for other
/// commits). Refuses the commit when this replica no longer leads, or when a leader of a
/// later term has written the table since (its marker is newer than this leader's term):
/// a deposed leader's late batch commits nothing, even when it stalled past the lease
/// between its last check and this one. The marker goes into the commit only when it
/// raises the table's (the first commit of a term), so a leader's own concurrent commits to
/// one table (a backfill's parallel batches) do not conflict with each other over it; a
/// new leader's first commit does conflict with a deposed one's racing commit that raises
/// it too. The server's own records (`system.*`) are not fenced: a deposed leader's run
/// still records how it ended.
pub(crate) async fn fence_marker(t: &TableRef, table: &DeltaTable) -> Result<Option<Transaction>> {
    let Some(fence) = RunContext::current().and_then(|r| r.fence) else {
        return Ok(None);
    };
    if t.layer == crate::storage::Layer::System {
        return Ok(None);
    }
    let Some(term) = fence.term() else {
        return Err(Error::Cancelled(
            "this replica no longer leads the scheduler: the run commits nothing more (the new leader runs the pipeline from its watermarks)".into(),
        ));
    };
    let written = match table.version() {
        None => None,
        Some(_) => table
            .snapshot()?
            .transaction_version(table.log_store().as_ref(), FENCE_APP_ID)
            .await?
            .and_then(|v| u64::try_from(v).ok()),
    };
    match written {
        Some(w) if w > term => Err(Error::Cancelled(format!(
            "the scheduler leader of term {w} has written this table since this run's leader (term {term}) was deposed: the run commits nothing more"
        ))),
        Some(w) if w == term => Ok(None),
        _ => Ok(Some(Transaction::new(
            FENCE_APP_ID,
            i64::try_from(term).unwrap_or(i64::MAX),
        ))),
    }
}

/// Appends or overwrites `input` in one commit.
pub(crate) async fn write(
    catalog: &Catalog,
    t: &TableRef,
    p: &Principal,
    input: impl Into<WriteInput>,
    mode: WriteMode,
    idempotency_key: Option<&str>,
    operation: &str,
) -> Result<WriteOutcome> {
    write_with_progress(catalog, t, p, input, mode, idempotency_key, operation, &[]).await
}

/// [`write`], with progress markers in the same commit. When the table already holds one of
/// the markers (a concurrent runner won), nothing is written and the outcome is a duplicate.
#[allow(clippy::too_many_arguments)]
pub(crate) async fn write_with_progress(
    catalog: &Catalog,
    t: &TableRef,
    p: &Principal,
    input: impl Into<WriteInput>,
    mode: WriteMode,
    idempotency_key: Option<&str>,
    operation: &str,
    progress: &Progress,
) -> Result<WriteOutcome> {
    let input = input.into();
    let app = idempotency_key.map(|k| app_id(p, k)).transpose()?;
    write_inner(
        catalog,
        t,
        p,
        input,
        mode,
        app,
        operation,
        progress,
        Rewrite::default(),
    )
    .await
}

/// A checkpoint's write: `input` appended, overwriting the table (`Overwrite`), or
/// replacing the rows `replace` matches, in one commit with `progress` and `notes` in its
/// info. A duplicate when the table already holds the progress.
#[allow(clippy::too_many_arguments)]
pub(crate) async fn write_noted(
    catalog: &Catalog,
    t: &TableRef,
    p: &Principal,
    input: impl Into<WriteInput>,
    mode: WriteMode,
    replace: Option<datafusion::logical_expr::Expr>,
    operation: &str,
    progress: &Progress,
    notes: Vec<(String, serde_json::Value)>,
) -> Result<WriteOutcome> {
    let mode = if replace.is_some() {
        WriteMode::Overwrite
    } else {
        mode
    };
    write_inner(
        catalog,
        t,
        p,
        input.into(),
        mode,
        None,
        operation,
        progress,
        Rewrite {
            predicate: replace,
            schema: false,
            resets: Vec::new(),
            notes,
        },
    )
    .await
}

/// The version of `t`'s marker `app_id` (`None`: never set, or no table yet).
pub(crate) async fn marker(catalog: &Catalog, t: &TableRef, app_id: &str) -> Result<Option<i64>> {
    let table = catalog.load(t).await?;
    if table.version().is_none() {
        return Ok(None);
    }
    let state = table.snapshot()?;
    Ok(state
        .transaction_version(table.log_store().as_ref(), app_id)
        .await?)
}

/// What an overwrite replaces besides the rows.
#[derive(Debug, Default)]
struct Rewrite {
    /// Only the rows matching this predicate (replaceWhere).
    predicate: Option<datafusion::logical_expr::Expr>,
    /// The table's schema too: the batches' schema becomes the table's (a full refresh).
    schema: bool,
    /// Markers set in the commit without asking whether the table holds them already (a
    /// full refresh moves watermarks wherever they were).
    resets: Vec<Transaction>,
    /// Keys of the commit's info besides Strata's own.
    notes: Vec<(String, serde_json::Value)>,
}

/// Replaces every row and the schema of `t` with `input` (a model's full refresh), in one
/// commit with progress markers and with `resets` set whatever they were.
pub(crate) async fn replace_all(
    catalog: &Catalog,
    t: &TableRef,
    p: &Principal,
    input: impl Into<WriteInput>,
    operation: &str,
    progress: &Progress,
    resets: &Progress,
) -> Result<WriteOutcome> {
    write_inner(
        catalog,
        t,
        p,
        input.into(),
        WriteMode::Overwrite,
        None,
        operation,
        progress,
        Rewrite {
            predicate: None,
            schema: true,
            resets: resets.to_vec(),
            notes: Vec::new(),
        },
    )
    .await
}

/// Replaces the rows matching `predicate` with `input` (every row of which must match it;
/// delta-rs's replaceWhere checks that too) in one commit, with progress markers.
pub(crate) async fn replace_where(
    catalog: &Catalog,
    t: &TableRef,
    p: &Principal,
    input: impl Into<WriteInput>,
    predicate: datafusion::logical_expr::Expr,
    operation: &str,
    progress: &Progress,
) -> Result<WriteOutcome> {
    let input = input.into();
    write_inner(
        catalog,
        t,
        p,
        input,
        WriteMode::Overwrite,
        None,
        operation,
        progress,
        Rewrite {
            predicate: Some(predicate),
            schema: false,
            resets: Vec::new(),
            notes: Vec::new(),
        },
    )
    .await
}

#[allow(clippy::too_many_arguments)]
async fn write_inner(
    catalog: &Catalog,
    t: &TableRef,
    p: &Principal,
    input: WriteInput,
    mode: WriteMode,
    app: Option<String>,
    operation: &str,
    progress: &Progress,
    rewrite: Rewrite,
) -> Result<WriteOutcome> {
    let table = catalog.load(t).await?;
    if let Some(earlier) = committed_before(&table, app.as_deref(), progress).await? {
        return Ok(earlier);
    }
    if let WriteInput::Batches(batches) = &input
        && batches.iter().all(|b| b.num_rows() == 0)
        && mode == WriteMode::Append
        && progress.is_empty()
    {
        return Ok(WriteOutcome {
            version: version_of(&table),
            rows: 0,
            duplicate: false,
        });
    }
    let mut props = noted_properties(p, t, operation, &rewrite.notes);
    if mode == WriteMode::Append {
        props = props.with_max_retries(APPEND_COMMIT_ATTEMPTS);
    }
    if let Some(app) = &app {
        // The txn version is the row count, so a duplicate reports what the original wrote
        // (unknown for a stream: 0).
        let rows = match &input {
            WriteInput::Batches(b) => b.iter().map(|b| b.num_rows() as i64).sum(),
            WriteInput::Stream(_) => 0,
        };
        props = props.with_application_transaction(Transaction::new(app, rows));
    }
    for mark in progress
        .iter()
        .chain(&rewrite.resets)
        .cloned()
        .chain(fence_marker(t, &table).await?)
    {
        props = props.with_application_transaction(mark);
    }
    let save_mode = match mode {
        WriteMode::Append => SaveMode::Append,
        WriteMode::Overwrite => SaveMode::Overwrite,
    };
    // Batches carry columns the table lacks only when the engine evolved the schema on
    // purpose (`merge_schema`, checked for MANAGE); everything else is conformed to the
    // table's schema first.
    let table_schema = table.snapshot()?.snapshot().arrow_schema();
    let adds_columns = input.schema().is_some_and(|s| {
        s.fields()
            .iter()
            .any(|f| table_schema.field_with_name(f.name()).is_err())
    });
    let (write, rows) = input.into_write(table.clone())?;
    let mut write = write
        .with_save_mode(save_mode)
        .with_commit_properties(props);
    if rewrite.schema {
        write = write.with_schema_mode(deltalake::operations::write::SchemaMode::Overwrite);
    } else if adds_columns {
        write = write.with_schema_mode(deltalake::operations::write::SchemaMode::Merge);
    }
    if let Some(predicate) = rewrite.predicate {
        write = write.with_replace_where(predicate);
    }
    let result = write.await;
    match result {
        Ok(written) => {
            catalog.remember(t, &written).await;
            Ok(WriteOutcome {
                version: version_of(&written),
                rows: rows.get(),
                duplicate: false,
            })
        }
        Err(e) => {
            let err: Error = e.into();
            // A concurrent retry of the same idempotent upload, or a concurrent runner with
            // the same progress, won the race: that is success.
            if err.kind() == ErrorKind::Conflict && (app.is_some() || !progress.is_empty()) {
                let fresh = catalog.load(t).await?;
                if let Some(earlier) = committed_before(&fresh, app.as_deref(), progress).await? {
                    return Ok(earlier);
                }
            }
            Err(err)
        }
    }
}

/// CREATE TABLE AS SELECT: creates the table and its rows in one commit (version 0), so a
/// failed query leaves no empty table behind. delta-rs's write path refuses non-Delta table
/// properties, so the creator is recorded in the commit info (history) rather than as
/// `strata.owner`.
pub(crate) async fn create_with_data(
    catalog: &Catalog,
    t: &TableRef,
    p: &Principal,
    spec: &TableSpec,
    schema: SchemaRef,
    input: impl Into<WriteInput>,
) -> Result<u64> {
    let input = input.into();
    let has_rows = match &input {
        WriteInput::Batches(batches) => batches.iter().any(|b| b.num_rows() > 0),
        WriteInput::Stream(_) => true,
    };
    if !has_rows {
        // Nothing to write: create from the query's schema.
        let columns = schema
            .fields()
            .iter()
            .map(|f| {
                Ok(crate::storage::types::ColumnSpec {
                    name: f.name().clone(),
                    data_type: arrow_type_name(f.data_type())?,
                    nullable: true,
                    description: None,
                })
            })
            .collect::<Result<Vec<_>>>()?;
        let spec = TableSpec {
            columns,
            ..spec.clone()
        };
        let table = catalog
            .create(
                t,
                &spec,
                &p.subject,
                write_properties(p, t, "CREATE TABLE AS SELECT"),
            )
            .await?;
        return Ok(version_of(&table));
    }
    let url = catalog.warehouse().table_url(t)?;
    let table = catalog.warehouse().delta_builder(url)?.build()?;
    let (write, _) = input.into_write(table)?;
    let mut write = write
        .with_save_mode(SaveMode::ErrorIfExists)
        .with_table_name(t.name.clone())
        .with_commit_properties(write_properties(p, t, "CREATE TABLE AS SELECT"));
    if !spec.partition_by.is_empty() {
        write = write.with_partition_columns(spec.partition_by.clone());
    }
    if let Some(d) = &spec.description {
        write = write.with_description(d.clone());
    }
    let properties = crate::storage::properties::validate(&spec.properties)?;
    if !properties.is_empty() {
        write = write.with_configuration(properties.into_iter().map(|(k, v)| (k, Some(v))));
    }
    let written = write.await.map_err(|e| match e {
        DeltaTableError::VersionAlreadyExists(_) => {
            Error::AlreadyExists(format!("table {t} already exists"))
        }
        other => other.into(),
    })?;
    catalog.remember(t, &written).await;
    Ok(version_of(&written))
}

pub(crate) fn arrow_type_name(dt: &arrow::datatypes::DataType) -> Result<String> {
    use arrow::datatypes::DataType as D;
    Ok(match dt {
        D::Boolean => "boolean".into(),
        D::Int8 => "tinyint".into(),
        D::Int16 => "smallint".into(),
        D::Int32 => "int".into(),
        D::Int64 => "bigint".into(),
        D::Float32 => "float".into(),
        D::Float64 => "double".into(),
        D::Utf8 => "string".into(),
        D::Binary => "binary".into(),
        D::Date32 => "date".into(),
        D::Decimal128(p, s) => format!("decimal({p},{s})"),
        D::Timestamp(_, Some(_)) => "timestamp".into(),
        D::Timestamp(_, None) => "timestamp_ntz".into(),
        other => {
            return Err(Error::Unsupported(format!(
                "cannot create a column of type {other}"
            )));
        }
    })
}
