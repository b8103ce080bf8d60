//! `system.lineage_edges`: every edge of the lineage index as rows, queryable with SQL
//! through the secure catalog (a computed `system` view, `security::policy::views`).
//!
//! One row per column edge a write recorded (and per table it read without a column
//! edge: a write whose column lineage could not be resolved, a table read only for its
//! rows), for every write still in retention (history, not just the current graph), plus
//! the static lineage of deployed models (`source = 'deploy'`). A row is shown only to a
//! principal who may SELECT both its input and its output table: the rule of the lineage
//! API, decided by the same `AccessControl`.

use std::collections::{BTreeSet, HashMap};
use std::hash::{Hash, Hasher};
use std::sync::{Arc, LazyLock};

use arrow::array::{
    ArrayRef, BooleanBuilder, RecordBatch, StringBuilder, TimestampMicrosecondBuilder,
    UInt64Builder,
};
use arrow::datatypes::{DataType, Field, Schema, SchemaRef, TimeUnit};
use async_trait::async_trait;

use super::{LineageService, Observed};
use crate::error::{Error, Result};
use crate::security::Principal;
use crate::security::access::{AccessControl, Privilege};
use crate::security::policy::{SystemView, ViewRows};
use crate::storage::TableRef;

/// The view's name in the `system` schema.
pub(super) const NAME: &str = "lineage_edges";

static SCHEMA: LazyLock<SchemaRef> = LazyLock::new(|| {
    let text = |name: &str, nullable: bool| Field::new(name, DataType::Utf8, nullable);
    let version = |name: &str| Field::new(name, DataType::UInt64, true);
    Arc::new(Schema::new(vec![
        text("job", false),
        // `commit` (a write's own commit recorded it) or `deploy` (a model's static
        // lineage, planned by its deploy).
        text("source", false),
        // The pipeline run of a model batch.
        text("run_id", true),
        text("input_table", false),
        text("input_column", true),
        version("input_version"),
        text("output_table", false),
        // NULL: the edge reaches every column (INDIRECT JOIN, FILTER, …) or is a table
        // read without column lineage.
        text("output_column", true),
        version("output_version"),
        // DIRECT / INDIRECT, and the OpenLineage subtype; NULL on a table-only row.
        text("transformation_type", true),
        text("transformation_subtype", true),
        Field::new("masking", DataType::Boolean, false),
        // False when the write's column lineage could not be resolved soundly.
        Field::new("complete", DataType::Boolean, false),
        Field::new(
            "observed_at",
            DataType::Timestamp(TimeUnit::Microsecond, Some("UTC".into())),
            true,
        ),
    ]))
});

#[derive(Default)]
struct Rows {
    job: StringBuilder,
    source: StringBuilder,
    run_id: StringBuilder,
    input_table: StringBuilder,
    input_column: StringBuilder,
    input_version: UInt64Builder,
    output_table: StringBuilder,
    output_column: StringBuilder,
    output_version: UInt64Builder,
    kind: StringBuilder,
    subtype: StringBuilder,
    masking: BooleanBuilder,
    complete: BooleanBuilder,
    observed_at: TimestampMicrosecondBuilder,
}

/// One row's edge part: the input column, the output column, the transformation.
struct EdgeRow<'a> {
    input: usize,
    column: Option<&'a str>,
    output: Option<&'a str>,
    subtype: Option<crate::engine::lineage::Subtype>,
    masking: bool,
}

impl Rows {
    fn push(&mut self, o: &Observed, e: EdgeRow<'_>) {
        let Some(input) = o.record.inputs.get(e.input) else {
            return;
        };
        self.job.append_value(&o.record.job);
        self.source.append_value(if o.deployed.is_some() {
            "deploy"
        } else {
            "commit"
        });
        self.run_id.append_option(o.run_id.as_deref());
        self.input_table.append_value(input.table.to_string());
        self.input_column.append_option(e.column);
        self.input_version.append_value(input.version);
        self.output_table.append_value(o.output.to_string());
        self.output_column.append_option(e.output);
        let planned_before_table = o
            .deployed
            .as_ref()
            .is_some_and(|d| d.table_version.is_none());
        self.output_version
            .append_option((!planned_before_table).then_some(o.version));
        self.kind.append_option(e.subtype.map(|s| s.kind()));
        self.subtype.append_option(e.subtype.map(|s| s.as_str()));
        self.masking.append_value(e.masking);
        self.complete.append_value(o.record.complete);
        self.observed_at
            .append_option(o.at.map(|at| at.timestamp_micros()));
    }

    fn finish(mut self) -> Result<RecordBatch> {
        let columns: Vec<ArrayRef> = vec![
            Arc::new(self.job.finish()),
            Arc::new(self.source.finish()),
            Arc::new(self.run_id.finish()),
            Arc::new(self.input_table.finish()),
            Arc::new(self.input_column.finish()),
            Arc::new(self.input_version.finish()),
            Arc::new(self.output_table.finish()),
            Arc::new(self.output_column.finish()),
            Arc::new(self.output_version.finish()),
            Arc::new(self.kind.finish()),
            Arc::new(self.subtype.finish()),
            Arc::new(self.masking.finish()),
            Arc::new(self.complete.finish()),
            Arc::new(self.observed_at.finish().with_timezone("UTC")),
        ];
        RecordBatch::try_new(Arc::clone(&SCHEMA), columns)
            .map_err(|e| Error::internal(format!("system.lineage_edges: {e}")))
    }
}

/// The rows of `records` whose two ends `visible` allows.
fn rows(
    records: &[Arc<Observed>],
    mut visible: impl FnMut(&TableRef) -> bool,
) -> Result<RecordBatch> {
    let mut out = Rows::default();
    for o in records {
        if !visible(&o.output) {
            continue;
        }
        let shown: Vec<bool> = o.record.inputs.iter().map(|i| visible(&i.table)).collect();
        let mut with_columns = BTreeSet::new();
        for e in &o.record.edges {
            let same = o
                .record
                .inputs
                .get(e.input)
                .is_some_and(|i| i.table == o.output)
                && e.output.as_deref() == Some(e.column.as_str());
            if same || !shown.get(e.input).copied().unwrap_or(false) {
                continue;
            }
            with_columns.insert(e.input);
            out.push(
                o,
                EdgeRow {
                    input: e.input,
                    column: Some(&e.column),
                    output: e.output.as_deref(),
                    subtype: Some(e.subtype),
                    masking: e.masking,
                },
            );
        }
        for (i, input) in o.record.inputs.iter().enumerate() {
            if with_columns.contains(&i) || input.table == o.output || !shown[i] {
                continue;
            }
            out.push(
                o,
                EdgeRow {
                    input: i,
                    column: None,
                    output: None,
                    subtype: None,
                    masking: false,
                },
            );
        }
    }
    out.finish()
}

/// A digest of which records the view holds: the result cache's version of it.
fn fingerprint(records: &[Arc<Observed>]) -> u64 {
    let key = |o: &Observed| {
        let mut h = std::collections::hash_map::DefaultHasher::new();
        (o.output.to_string(), o.version).hash(&mut h);
        if let Some(d) = &o.deployed {
            (&d.pipeline, d.version).hash(&mut h);
        }
        h.finish()
    };
    let mut keys: Vec<u64> = records.iter().map(|o| key(o)).collect();
    keys.sort_unstable();
    let mut h = std::collections::hash_map::DefaultHasher::new();
    keys.hash(&mut h);
    h.finish()
}

#[async_trait]
impl SystemView for LineageService {
    fn schema(&self) -> SchemaRef {
        Arc::clone(&SCHEMA)
    }

    async fn rows(&self, access: &AccessControl, principal: &Principal) -> Result<ViewRows> {
        let mut records = self.observed().await?;
        records.extend(self.deployed().await?);
        records.sort_by(|a, b| (&a.output, a.version).cmp(&(&b.output, b.version)));
        let mut decided: HashMap<TableRef, bool> = HashMap::new();
        let batch = rows(&records, |t| {
            *decided
                .entry(t.clone())
                .or_insert_with(|| access.allows(principal, Privilege::Select, t))
        })?;
        Ok(ViewRows {
            batches: vec![batch],
            fingerprint: fingerprint(&records),
        })
    }
}
