//! What the engine hands back: prepared statements, result streams, command summaries.

use std::sync::Arc;

use arrow::array::{ArrayRef, Int64Array, RecordBatch, StringArray};
use arrow::datatypes::{DataType, Field, Schema, SchemaRef};
use datafusion::execution::SendableRecordBatchStream;
use datafusion::physical_plan::stream::RecordBatchStreamAdapter;

use datafusion::common::ScalarValue;

use crate::error::Result;
use crate::pipelines::merge::DmlOutcome;
use crate::storage::TableRef;

/// A planned but not executed statement.
#[derive(Debug, Clone)]
pub struct Prepared {
    /// Statement kind (`SELECT`, `INSERT`, …).
    pub kind: &'static str,
    /// Result schema of a query; `None` for commands (their result is one summary row).
    pub schema: Option<SchemaRef>,
    /// Types DataFusion inferred for `$1…$n` (`None` where it could not).
    pub parameters: Vec<Option<DataType>>,
    /// For a cacheable query without parameters: where its result is (or will be) cached,
    /// so a later fetch can replay it without planning again ([`Engine::fetch_cached`]).
    pub result_key: Option<ResultKey>,
    /// For each result column that is a column of a table as it is: that table (for client
    /// column metadata); `None` for computed columns.
    pub origins: Vec<Option<TableRef>>,
}

/// What a front end asks the engine to run ([`Engine::submit`]).
#[derive(Debug, Default)]
pub struct Submission<'a> {
    pub sql: &'a str,
    /// Rows of positional parameters `$1…$n`: the statement runs once per row, once without
    /// parameters when empty.
    pub rows: Vec<Vec<ScalarValue>>,
    /// The result key handed out when the statement was prepared for a fetch.
    pub cached: Option<ResultKey>,
    /// The client's entity tags (REST `If-None-Match`): `NotModified` when one matches.
    pub if_none_match: Option<&'a str>,
    /// The client's `x-strata-distributed` (`crate::cluster`): `None` leaves it to
    /// `[cluster] mode`.
    pub distributed: Option<bool>,
}

/// The result cache key of a planned query and the policy version it was computed under.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ResultKey {
    pub key: crate::cache::CacheKey,
    pub policy_version: u64,
}

impl Prepared {
    /// A command: no result schema, no parameters (its result is one summary row).
    pub(super) fn command(kind: &'static str) -> Prepared {
        Prepared {
            kind,
            schema: None,
            parameters: Vec::new(),
            result_key: None,
            origins: Vec::new(),
        }
    }

    pub fn is_query(&self) -> bool {
        self.schema.is_some()
    }
}

/// Schema of the one-row result of commands.
pub fn command_schema() -> SchemaRef {
    Arc::new(Schema::new(vec![
        Field::new("operation", DataType::Utf8, false),
        Field::new("table", DataType::Utf8, false),
        Field::new("rows_affected", DataType::Int64, true),
        Field::new("version", DataType::Int64, true),
        Field::new("rows_inserted", DataType::Int64, true),
        Field::new("rows_updated", DataType::Int64, true),
        Field::new("rows_deleted", DataType::Int64, true),
    ]))
}

/// What a statement produced: a stream of batches (for commands, one summary row).
pub struct QueryOutput {
    /// Statement kind (`SELECT`, `INSERT`, …).
    pub kind: &'static str,
    pub schema: SchemaRef,
    pub stream: SendableRecordBatchStream,
    /// Tables the statement read or wrote (for logs and the cache).
    pub tables: Vec<TableRef>,
    /// Entity tag of a cacheable result (REST `ETag`).
    pub etag: Option<String>,
    /// Whether the result came from the cache.
    pub cache_hit: bool,
}

/// The outcome of a conditional execution.
#[derive(Debug)]
pub enum Executed {
    Output(QueryOutput),
    /// The caller's `If-None-Match` matches the result's entity tag: nothing was executed.
    NotModified(String),
}

impl std::fmt::Debug for QueryOutput {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("QueryOutput")
            .field("kind", &self.kind)
            .field("schema", &self.schema)
            .field("tables", &self.tables)
            .finish()
    }
}

/// The one-row result of a command.
pub(super) fn command_output(
    kind: &'static str,
    table: &TableRef,
    rows: Option<i64>,
    version: Option<i64>,
) -> QueryOutput {
    command_output_with(kind, table, rows, version, None)
}

/// `DESCRIBE HISTORY` rows, newest first (parameters and metrics as JSON text).
pub(super) fn history_output(
    kind: &'static str,
    table: &TableRef,
    entries: &[crate::storage::catalog::HistoryEntry],
) -> Result<QueryOutput> {
    use arrow::array::{BooleanArray, TimestampMillisecondArray};
    let text = |f: fn(&crate::storage::catalog::HistoryEntry) -> Option<String>| -> ArrayRef {
        Arc::new(StringArray::from(entries.iter().map(f).collect::<Vec<_>>()))
    };
    let schema = Arc::new(Schema::new(vec![
        Field::new("version", DataType::Int64, false),
        Field::new(
            "timestamp",
            DataType::Timestamp(arrow::datatypes::TimeUnit::Millisecond, Some("UTC".into())),
            true,
        ),
        Field::new("operation", DataType::Utf8, true),
        Field::new("operation_parameters", DataType::Utf8, true),
        Field::new("operation_metrics", DataType::Utf8, true),
        Field::new("principal", DataType::Utf8, true),
        Field::new("strata_operation", DataType::Utf8, true),
        Field::new("read_version", DataType::Int64, true),
        Field::new("is_blind_append", DataType::Boolean, true),
    ]));
    let columns: Vec<ArrayRef> = vec![
        Arc::new(Int64Array::from(
            entries.iter().map(|e| e.version as i64).collect::<Vec<_>>(),
        )),
        Arc::new(
            TimestampMillisecondArray::from(
                entries
                    .iter()
                    .map(|e| e.timestamp.map(|t| t.timestamp_millis()))
                    .collect::<Vec<_>>(),
            )
            .with_timezone("UTC"),
        ),
        text(|e| e.operation.clone()),
        text(|e| e.operation_parameters.as_ref().map(|v| v.to_string())),
        text(|e| e.operation_metrics.as_ref().map(|v| v.to_string())),
        text(|e| e.principal.clone()),
        text(|e| e.strata_operation.clone()),
        Arc::new(Int64Array::from(
            entries.iter().map(|e| e.read_version).collect::<Vec<_>>(),
        )),
        Arc::new(BooleanArray::from(
            entries
                .iter()
                .map(|e| e.is_blind_append)
                .collect::<Vec<_>>(),
        )),
    ];
    let batch = RecordBatch::try_new(Arc::clone(&schema), columns)?;
    Ok(one_batch(kind, table, schema, Ok(batch)))
}

pub(super) fn dml_output(kind: &'static str, table: &TableRef, o: &DmlOutcome) -> QueryOutput {
    command_output_with(
        kind,
        table,
        Some(o.affected() as i64),
        Some(o.version as i64),
        Some([o.inserted as i64, o.updated as i64, o.deleted as i64]),
    )
}

pub(super) fn command_output_with(
    kind: &'static str,
    table: &TableRef,
    rows: Option<i64>,
    version: Option<i64>,
    changes: Option<[i64; 3]>,
) -> QueryOutput {
    let schema = command_schema();
    let change = |i: usize| -> ArrayRef { Arc::new(Int64Array::from(vec![changes.map(|c| c[i])])) };
    let columns: Vec<ArrayRef> = vec![
        Arc::new(StringArray::from(vec![kind])),
        Arc::new(StringArray::from(vec![table.to_string()])),
        Arc::new(Int64Array::from(vec![rows])),
        Arc::new(Int64Array::from(vec![version])),
        change(0),
        change(1),
        change(2),
    ];
    let batch = RecordBatch::try_new(Arc::clone(&schema), columns);
    one_batch(kind, table, schema, batch)
}

/// The output of a statement on `table` that answers with one batch.
fn one_batch(
    kind: &'static str,
    table: &TableRef,
    schema: SchemaRef,
    batch: std::result::Result<RecordBatch, arrow::error::ArrowError>,
) -> QueryOutput {
    let stream = RecordBatchStreamAdapter::new(
        Arc::clone(&schema),
        futures::stream::iter(vec![batch.map_err(Into::into)]),
    );
    QueryOutput {
        kind,
        schema,
        stream: Box::pin(stream),
        tables: vec![table.clone()],
        etag: None,
        cache_hit: false,
    }
}
