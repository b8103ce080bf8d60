//! Table operations shared by SQL DDL and the REST table API.

use std::sync::Arc;

use arrow::array::RecordBatch;
use futures::stream::BoxStream;

use deltalake::DeltaTable;
use serde::Serialize;

use crate::engine::Engine;
use crate::engine::lineage::Lineage;
use crate::engine::streamed::Shape;
use crate::error::{Error, Result};
use crate::ingest::{self, UploadFormat};
use crate::pipelines::commit::{self, WriteMode, WriteOutcome};
use crate::pipelines::schema::{self, TableChange};
use crate::security::policy::table::Enforcement;
use crate::security::policy::write;
use crate::security::{AccessControl, Principal, Privilege};
use crate::storage::catalog::{HistoryEntry, OWNER_PROPERTY, TableSpec};
use crate::storage::types::{COLUMN_COMMENT_KEY, type_name};
use crate::storage::{Layer, TableRef};

/// A column as described to users.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct ColumnInfo {
    pub name: String,
    #[serde(rename = "type")]
    pub data_type: String,
    pub nullable: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
}

/// A table as described to users.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct TableInfo {
    pub layer: Layer,
    pub name: String,
    pub full_name: String,
    pub description: Option<String>,
    pub owner: Option<String>,
    pub columns: Vec<ColumnInfo>,
    pub partition_columns: Vec<String>,
    /// Delta table properties (`delta.*`), e.g. `delta.enableChangeDataFeed`.
    pub properties: std::collections::BTreeMap<String, String>,
    pub created_at: Option<chrono::DateTime<chrono::Utc>>,
    /// Version, files and bytes of the whole table: `MANAGE` holders only. They count rows
    /// a filtered reader may not see (another tenant's upload moves them).
    #[serde(flatten, skip_serializing_if = "Option::is_none")]
    pub storage: Option<StorageInfo>,
}

/// Whole-table storage figures (see [`TableInfo::storage`]).
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct StorageInfo {
    pub version: u64,
    pub file_count: usize,
    pub size_bytes: u64,
}

impl TableInfo {
    /// The table's version, when the storage figures are shown.
    pub fn version(&self) -> Option<u64> {
        self.storage.as_ref().map(|s| s.version)
    }

    /// Without the storage figures unless `p` may manage the table.
    fn for_principal(mut self, access: &AccessControl, p: &Principal, t: &TableRef) -> TableInfo {
        if !access.allows(p, Privilege::Manage, t) {
            self.storage = None;
        }
        self
    }
}

/// What to do when the target of an ingest exists.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IfExists {
    Fail,
    Append,
    Replace,
}

/// ADBC ingest modes: create = (create, fail), append = (no create, append),
/// replace = (create, replace), create_append = (create, append).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct IngestMode {
    pub create_if_missing: bool,
    pub if_exists: IfExists,
    /// Add the batches' columns the table lacks (needs MANAGE) instead of refusing them.
    pub merge_schema: bool,
}

/// An upload of rows.
#[derive(Debug)]
pub struct Upload {
    pub format: UploadFormat,
    pub body: bytes::Bytes,
    pub mode: WriteMode,
    pub idempotency_key: Option<String>,
    /// Add the upload's columns the table lacks (needs MANAGE) instead of refusing them.
    pub merge_schema: bool,
}

impl Engine {
    /// Creates a table; `None` when `if_not_exists` and it already existed.
    pub async fn create_table(
        &self,
        p: &Arc<Principal>,
        t: &TableRef,
        spec: &TableSpec,
        if_not_exists: bool,
    ) -> Result<Option<TableInfo>> {
        let access = self.access().await?;
        access.check_layer(p, Privilege::Manage, t.layer)?;
        if t.is_reserved() {
            return Err(Error::invalid(format!(
                "{t}: table names ending {} are reserved for the tables Strata creates",
                crate::storage::RESERVED_SUFFIXES.join(" or ")
            )));
        }
        let props = commit::commit_properties(p, "CREATE TABLE");
        match self.catalog.create(t, spec, &p.subject, props).await {
            Ok(table) => Ok(Some(describe(t, &table)?)),
            Err(Error::AlreadyExists(_)) if if_not_exists => Ok(None),
            Err(e) => Err(e),
        }
    }

    pub async fn drop_table(
        &self,
        p: &Arc<Principal>,
        t: &TableRef,
        if_exists: bool,
    ) -> Result<()> {
        let access = self.access().await?;
        access.check(p, Privilege::Manage, t)?;
        match self.catalog.drop_table(t).await {
            Err(Error::NotFound(_)) if if_exists => Ok(()),
            other => other,
        }
    }

    /// Tables `p` can see, described.
    pub async fn list_tables(
        &self,
        p: &Arc<Principal>,
        layer: Option<Layer>,
    ) -> Result<Vec<TableInfo>> {
        let access = self.access().await?;
        let mut out = Vec::new();
        for t in self.catalog.list(layer).await? {
            if !access.is_visible(p, &t) {
                continue;
            }
            match self.catalog.load(&t).await {
                Ok(table) => out.push(describe(&t, &table)?.for_principal(&access, p, &t)),
                // Dropped between listing and loading.
                Err(Error::NotFound(_)) => {}
                Err(e) => return Err(e),
            }
        }
        Ok(out)
    }

    pub async fn describe_table(&self, p: &Arc<Principal>, t: &TableRef) -> Result<TableInfo> {
        let access = self.access().await?;
        if !access.is_visible(p, t) {
            return Err(Error::NotFound(format!("table {t} not found")));
        }
        let table = self.catalog.load(t).await?;
        Ok(describe(t, &table)?.for_principal(&access, p, t))
    }

    /// One schema or metadata change (`ALTER TABLE`, `COMMENT ON`, REST `PATCH`).
    /// Several changes to one table (REST `PATCH`), one commit each, in order. Everything
    /// that can be checked without the table (column types, property names and values) is
    /// checked before the first commit.
    pub async fn alter_table_with(
        &self,
        p: &Arc<Principal>,
        t: &TableRef,
        changes: &[TableChange],
    ) -> Result<TableInfo> {
        for change in changes {
            match change {
                TableChange::AddColumns { columns, .. } => {
                    for c in columns {
                        c.to_field()?;
                    }
                }
                TableChange::SetProperties(props) => {
                    crate::storage::properties::validate(props)?;
                }
                _ => {}
            }
        }
        let mut info = None;
        for change in changes {
            info = Some(self.alter_table(p, t, change).await?);
        }
        info.ok_or_else(|| Error::invalid("nothing to change"))
    }

    pub async fn alter_table(
        &self,
        p: &Arc<Principal>,
        t: &TableRef,
        change: &TableChange,
    ) -> Result<TableInfo> {
        let access = self.access().await?;
        access.check(p, Privilege::Manage, t)?;
        let state = self.sessions.dml_session(p, &access);
        let updated = schema::alter(&self.catalog, t, p, change, &state).await?;
        describe(t, &updated)
    }

    pub async fn history(
        &self,
        p: &Arc<Principal>,
        t: &TableRef,
        limit: usize,
    ) -> Result<Vec<HistoryEntry>> {
        let access = self.access().await?;
        access.check(p, Privilege::Manage, t)?;
        self.catalog.history(t, limit).await
    }

    /// Decodes, validates and commits an upload: all rows or nothing.
    pub async fn write_rows(
        &self,
        p: &Arc<Principal>,
        t: &TableRef,
        upload: Upload,
    ) -> Result<WriteOutcome> {
        let mut schema = self.writable_schema(p, t, upload.mode).await?;
        let access = self.access().await?;
        if upload.merge_schema {
            let incoming = ingest::upload_schema(upload.format, &upload.body)?;
            schema = self.evolve(&access, p, t, schema, &incoming)?;
        }
        let batches = ingest::decode(upload.format, upload.body, &schema)?;
        self.check_write(&access, p, t, upload.mode, &schema, &batches)?;
        // Rows from outside: no table read, so the record names the job and the output;
        // the commit carries it and the OpenLineage run reports its statistics.
        let write = commit::write(
            &self.catalog,
            t,
            p,
            batches,
            upload.mode,
            upload.idempotency_key.as_deref(),
            "UPLOAD",
        );
        self.attached(t, "UPLOAD", &Lineage::default(), None, write)
            .await
    }

    /// Appends rows already in `t`'s schema as `p` (a service writing rows it built, e.g.
    /// webhook deliveries): INSERT is checked, NOT NULL and the writer's WITH CHECK hold for
    /// every row, and the commit is recorded as `operation`. All or nothing.
    pub(crate) async fn append_batches(
        &self,
        p: &Arc<Principal>,
        t: &TableRef,
        batches: Vec<RecordBatch>,
        operation: &'static str,
    ) -> Result<WriteOutcome> {
        let schema = self.writable_schema(p, t, WriteMode::Append).await?;
        let access = self.access().await?;
        self.check_write(&access, p, t, WriteMode::Append, &schema, &batches)?;
        let write = commit::write(
            &self.catalog,
            t,
            p,
            batches,
            WriteMode::Append,
            None,
            operation,
        );
        self.attached(t, operation, &Lineage::default(), None, write)
            .await
    }

    /// A connector's checkpoint: `batches` (in `t`'s schema) appended, overwriting `t`, or
    /// replacing the rows with the batches' keys, in one commit with `progress` markers and
    /// `notes` in its info, as `p` (INSERT, and MODIFY when it replaces; WITH CHECK). A
    /// duplicate when `t` already holds the progress.
    pub(crate) async fn write_checkpoint(
        &self,
        p: &Arc<Principal>,
        t: &TableRef,
        batches: Vec<RecordBatch>,
        how: CheckpointWrite,
        progress: &commit::Progress,
        notes: Vec<(String, serde_json::Value)>,
    ) -> Result<WriteOutcome> {
        let empty = batches.iter().all(|b| b.num_rows() == 0);
        let (mode, replace) = match how {
            CheckpointWrite::Append => (WriteMode::Append, None),
            CheckpointWrite::Overwrite => (WriteMode::Overwrite, None),
            CheckpointWrite::ReplaceKeys(_) if empty => (WriteMode::Append, None),
            CheckpointWrite::ReplaceKeys(keys) => {
                (WriteMode::Overwrite, Some(keys_predicate(&batches, &keys)?))
            }
        };
        let schema = self.writable_schema(p, t, mode).await?;
        let access = self.access().await?;
        // Replacing by key is an overwrite for WITH CHECK: a writer with a row filter may
        // not replace rows it cannot see.
        self.check_write(&access, p, t, mode, &schema, &batches)?;
        let batches = if batches.is_empty() {
            vec![RecordBatch::new_empty(schema)]
        } else {
            batches
        };
        let write = commit::write_noted(
            &self.catalog,
            t,
            p,
            batches,
            mode,
            replace,
            "CONNECTOR SYNC",
            progress,
            notes,
        );
        self.attached(t, "CONNECTOR SYNC", &Lineage::default(), None, write)
            .await
    }

    /// `t`'s Arrow schema as of its current version (no privilege checked: for the server's
    /// own use, e.g. shaping the rows a service writes).
    pub(crate) async fn table_arrow_schema(
        &self,
        t: &TableRef,
    ) -> Result<arrow::datatypes::SchemaRef> {
        let table = self.catalog.load(t).await?;
        Ok(table.snapshot()?.snapshot().arrow_schema())
    }

    /// WITH CHECK: every written row must satisfy the writer's row filter, and a writer with
    /// a row filter may not overwrite (that would delete rows it cannot see).
    pub(crate) fn check_write(
        &self,
        access: &AccessControl,
        p: &Principal,
        t: &TableRef,
        mode: WriteMode,
        schema: &arrow::datatypes::SchemaRef,
        batches: &[arrow::array::RecordBatch],
    ) -> Result<()> {
        let mut check = self.row_check(access, p, t, mode, schema)?;
        batches.iter().try_for_each(|b| check.check(b))
    }

    /// The WITH CHECK of `p`'s writes of `schema` rows to `t` ([`Engine::check_write`] one
    /// batch at a time).
    pub(super) fn row_check(
        &self,
        access: &AccessControl,
        p: &Principal,
        t: &TableRef,
        mode: WriteMode,
        schema: &arrow::datatypes::SchemaRef,
    ) -> Result<write::RowCheck> {
        let enforcement = Enforcement::compile(
            t,
            access.table_policy(t),
            p,
            access.bypasses_policies(p),
            schema,
            self.planning_state(),
        )?;
        if mode == WriteMode::Overwrite && enforcement.filter.is_some() {
            return Err(Error::PermissionDenied(format!(
                "overwriting {t} would remove rows outside your row filter"
            )));
        }
        write::RowCheck::new(t, &enforcement, schema, self.planning_state())
    }

    /// `merge_schema`: the table's schema plus the incoming columns it lacks. Adding columns
    /// alters the table, so it needs MANAGE as `ALTER TABLE … ADD COLUMN` does; the columns
    /// are added by the write's own commit (Delta schema merge), atomically with the rows.
    fn evolve(
        &self,
        access: &AccessControl,
        p: &Principal,
        t: &TableRef,
        target: arrow::datatypes::SchemaRef,
        incoming: &arrow::datatypes::Schema,
    ) -> Result<arrow::datatypes::SchemaRef> {
        match ingest::with_new_columns(&target, incoming)? {
            None => Ok(target),
            Some(evolved) => {
                access.check(p, Privilege::Manage, t)?;
                Ok(evolved)
            }
        }
    }

    /// Checks write privileges for `mode` and returns the table's Arrow schema.
    async fn writable_schema(
        &self,
        p: &Arc<Principal>,
        t: &TableRef,
        mode: WriteMode,
    ) -> Result<arrow::datatypes::SchemaRef> {
        let access = self.access().await?;
        access.check(p, Privilege::Insert, t)?;
        if mode == WriteMode::Overwrite {
            access.check(p, Privilege::Modify, t)?;
        }
        let table = self.catalog.load(t).await?;
        Ok(table.snapshot()?.snapshot().arrow_schema())
    }

    /// Bulk ingest (Flight `CommandStatementIngest`). Batches are converted, checked (NOT
    /// NULL, the writer's row filter) and written to data files as they arrive, so memory
    /// stays bounded by the writer whatever the size of the upload. A bad batch or a broken
    /// client stream fails the ingest before its commit: nothing is committed. Its lineage
    /// (no table read) is recorded like an upload's.
    pub async fn ingest(
        &self,
        p: &Arc<Principal>,
        t: &TableRef,
        schema: arrow::datatypes::SchemaRef,
        batches: BoxStream<'static, Result<RecordBatch>>,
        mode: IngestMode,
    ) -> Result<WriteOutcome> {
        let write = self.ingest_unrecorded(p, t, schema, batches, mode);
        self.attached(t, "INGEST", &Lineage::default(), None, write)
            .await
    }

    async fn ingest_unrecorded(
        &self,
        p: &Arc<Principal>,
        t: &TableRef,
        schema: arrow::datatypes::SchemaRef,
        batches: BoxStream<'static, Result<RecordBatch>>,
        mode: IngestMode,
    ) -> Result<WriteOutcome> {
        let access = self.access().await?;
        let exists = self.catalog.exists(t).await?;
        // `None`: create the table with the rows.
        let write_mode = match (exists, mode.if_exists, mode.create_if_missing) {
            (true, IfExists::Fail, _) => {
                // Don't reveal existence to principals who can't see the table.
                if !access.is_visible(p, t) {
                    access.check_layer(p, Privilege::Manage, t.layer)?;
                }
                return Err(Error::AlreadyExists(format!("table {t} already exists")));
            }
            (true, IfExists::Append, _) => Some(WriteMode::Append),
            (true, IfExists::Replace, _) => Some(WriteMode::Overwrite),
            (false, _, false) => return Err(Error::NotFound(format!("table {t} not found"))),
            (false, _, true) => {
                access.check_layer(p, Privilege::Manage, t.layer)?;
                None
            }
        };
        let target = match write_mode {
            None => ingest::delta_schema(&schema)?,
            Some(m) => {
                let target = self.writable_schema(p, t, m).await?;
                if mode.merge_schema {
                    self.evolve(&access, p, t, target, &schema)?
                } else {
                    target
                }
            }
        };
        let mut streamed = self
            .streamed(
                &access,
                p,
                t,
                write_mode.unwrap_or(WriteMode::Append),
                &target,
                Shape::Conform,
                batches,
            )
            .await?;
        let spec = TableSpec {
            columns: Vec::new(),
            partition_by: Vec::new(),
            description: None,
            properties: Default::default(),
        };
        // An ingest without rows commits nothing to an existing table (replace empties it)
        // and creates a new one empty.
        let input = streamed.take_input();
        let written = match write_mode {
            None => commit::create_with_data(&self.catalog, t, p, &spec, target, input)
                .await
                .map(|version| WriteOutcome {
                    version,
                    rows: 0,
                    duplicate: false,
                }),
            Some(m) => commit::write(&self.catalog, t, p, input, m, None, "INGEST").await,
        };
        match written {
            Ok(outcome) => Ok(WriteOutcome {
                rows: streamed.rows(),
                ..outcome
            }),
            Err(e) => Err(streamed.failure(e)),
        }
    }

    /// Visible tables with their Arrow schemas (Flight `GetTables include_schema`).
    pub async fn table_schemas(
        &self,
        p: &Arc<Principal>,
    ) -> Result<Vec<(TableRef, arrow::datatypes::SchemaRef)>> {
        let access = self.access().await?;
        let mut out = Vec::new();
        for t in self.catalog.list(None).await? {
            if !access.is_visible(p, &t) {
                continue;
            }
            match self.catalog.load(&t).await {
                Ok(table) => {
                    let snapshot = table.snapshot()?;
                    let schema = snapshot.snapshot().arrow_schema();
                    // The table's description rides in the schema's metadata (`comment`,
                    // as its columns' do); Flight SQL has no table remarks.
                    let schema = match snapshot.metadata().description().filter(|d| !d.is_empty()) {
                        Some(d) => {
                            let mut metadata = schema.metadata().clone();
                            metadata.insert(COLUMN_COMMENT_KEY.to_string(), d.to_string());
                            Arc::new(schema.as_ref().clone().with_metadata(metadata))
                        }
                        None => schema,
                    };
                    out.push((t, schema));
                }
                Err(Error::NotFound(_)) => {}
                Err(e) => return Err(e),
            }
        }
        Ok(out)
    }
}

fn describe(t: &TableRef, table: &DeltaTable) -> Result<TableInfo> {
    let state = table.snapshot()?;
    let metadata = state.metadata();
    let schema = state.schema();
    let columns = schema
        .fields()
        .map(|f| ColumnInfo {
            name: f.name().to_string(),
            data_type: type_name(f.data_type()),
            nullable: f.is_nullable(),
            description: f
                .metadata()
                .get(COLUMN_COMMENT_KEY)
                .map(|v| match v {
                    deltalake::kernel::MetadataValue::String(s) => s.clone(),
                    other => format!("{other:?}"),
                })
                .filter(|s| !s.is_empty()),
        })
        .collect();
    let log_data = state.log_data();
    let file_count = log_data.num_files();
    let size_bytes = log_data.iter().map(|f| f.size().max(0) as u64).sum();
    Ok(TableInfo {
        layer: t.layer,
        name: t.name.clone(),
        full_name: t.to_string(),
        description: metadata
            .description()
            .filter(|d| !d.is_empty())
            .map(str::to_string),
        owner: metadata.configuration().get(OWNER_PROPERTY).cloned(),
        columns,
        partition_columns: metadata.partition_columns().to_vec(),
        properties: metadata
            .configuration()
            .iter()
            .filter(|(k, _)| k.starts_with("delta."))
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect(),
        created_at: metadata
            .created_time()
            .and_then(chrono::DateTime::from_timestamp_millis),
        storage: Some(StorageInfo {
            version: state.version(),
            file_count,
            size_bytes,
        }),
    })
}

/// How a checkpoint lands (`Engine::write_checkpoint`).
#[derive(Debug, Clone)]
pub(crate) enum CheckpointWrite {
    Append,
    Overwrite,
    /// The rows whose key columns equal a written row's are replaced (one row per key).
    ReplaceKeys(Vec<String>),
}

/// `k IN (…)`, or for several key columns `(a = … AND b = …) OR …`, over the batches' keys.
fn keys_predicate(
    batches: &[RecordBatch],
    keys: &[String],
) -> Result<datafusion::logical_expr::Expr> {
    use datafusion::logical_expr::{Expr, col, lit};
    use datafusion::scalar::ScalarValue;
    let column = |b: &RecordBatch, k: &str| {
        b.column_by_name(k)
            .cloned()
            .ok_or_else(|| Error::internal(format!("key column {k} missing from the rows")))
    };
    match keys {
        [] => Err(Error::internal("replacing by key needs key columns")),
        [k] => {
            let mut values = Vec::new();
            for b in batches {
                let c = column(b, k)?;
                for i in 0..b.num_rows() {
                    values.push(lit(ScalarValue::try_from_array(&c, i)?));
                }
            }
            Ok(col(datafusion::common::Column::from_name(k)).in_list(values, false))
        }
        keys => {
            let mut any: Option<Expr> = None;
            for b in batches {
                let cols = keys
                    .iter()
                    .map(|k| column(b, k))
                    .collect::<Result<Vec<_>>>()?;
                for i in 0..b.num_rows() {
                    let mut all: Option<Expr> = None;
                    for (k, c) in keys.iter().zip(&cols) {
                        let eq = col(datafusion::common::Column::from_name(k))
                            .eq(lit(ScalarValue::try_from_array(c, i)?));
                        all = Some(match all {
                            Some(a) => a.and(eq),
                            None => eq,
                        });
                    }
                    if let Some(all) = all {
                        any = Some(match any {
                            Some(a) => a.or(all),
                            None => all,
                        });
                    }
                }
            }
            any.ok_or_else(|| Error::internal("no rows to replace by key"))
        }
    }
}
