//! The quarantine side of expectations: the quarantine table's schema, its commit (with
//! the batch's progress markers, before the target's), and recovery's subtraction of the
//! rows a crashed batch already quarantined.

use std::collections::HashMap;
use std::sync::Arc;

use arrow::array::RecordBatch;
use arrow::datatypes::{DataType, Field, Schema, SchemaRef, TimeUnit};

use super::{BATCH, FAILED, QUARANTINED_AT, RUN_ID};
use crate::engine::Engine;
use crate::error::{Error, Result};
use crate::pipelines::commit::{self, Progress, WriteMode};
use crate::security::{AccessControl, Principal};
use crate::storage::TableRef;

/// The value of `_strata_batch` for a batch committing `progress`.
pub(super) fn batch_key(progress: &Progress) -> String {
    use sha2::{Digest, Sha256};
    let mut h = Sha256::new();
    for t in progress {
        h.update(t.app_id.as_bytes());
        h.update(b"=");
        h.update(t.version.to_string().as_bytes());
        h.update(b";");
    }
    hex::encode(&h.finalize()[..16])
}

/// The quarantine table's schema for a model output with `data` columns.
pub(super) fn quarantine_schema(data: &Schema) -> SchemaRef {
    let mut fields: Vec<Field> = data
        .fields()
        .iter()
        .map(|f| f.as_ref().clone().with_nullable(true))
        .collect();
    fields.push(Field::new(RUN_ID, DataType::Utf8, true));
    fields.push(Field::new(FAILED, DataType::Utf8, true));
    fields.push(Field::new(
        QUARANTINED_AT,
        DataType::Timestamp(TimeUnit::Microsecond, Some("UTC".into())),
        true,
    ));
    fields.push(Field::new(BATCH, DataType::Utf8, true));
    Arc::new(Schema::new(fields))
}

/// Rows a crashed batch already quarantined, as a multiset over the data columns: each
/// output row equal to one of them matches it once (recovery leaves those rows out).
pub(super) struct Held {
    converter: arrow::row::RowConverter,
    counts: HashMap<Vec<u8>, usize>,
    /// The output's data columns and their types.
    columns: Vec<(usize, DataType)>,
}

impl Held {
    /// `taken` (quarantine rows) keyed on the output's data `columns` of `schema`.
    pub(super) fn new(schema: &Schema, columns: &[usize], taken: &[RecordBatch]) -> Result<Held> {
        use arrow::row::{RowConverter, SortField};
        let columns: Vec<(usize, DataType)> = columns
            .iter()
            .map(|&i| (i, schema.field(i).data_type().clone()))
            .collect();
        let converter = RowConverter::new(
            columns
                .iter()
                .map(|(_, t)| SortField::new(t.clone()))
                .collect(),
        )?;
        let mut counts: HashMap<Vec<u8>, usize> = HashMap::new();
        for b in taken {
            let arrays = columns
                .iter()
                .map(|&(i, ref t)| {
                    let name = schema.field(i).name();
                    let col = b.column_by_name(name).ok_or_else(|| {
                        Error::internal(format!("the quarantine lacks column {name}"))
                    })?;
                    Ok(arrow::compute::cast(col, t)?)
                })
                .collect::<Result<Vec<_>>>()?;
            for r in converter.convert_columns(&arrays)?.iter() {
                *counts.entry(r.as_ref().to_vec()).or_default() += 1;
            }
        }
        Ok(Held {
            converter,
            counts,
            columns,
        })
    }

    /// Per row of `b`, whether it is one of the held rows (each held row matches once).
    pub(super) fn take(&mut self, b: &RecordBatch) -> Result<Vec<bool>> {
        if self.counts.is_empty() {
            return Ok(vec![false; b.num_rows()]);
        }
        let arrays: Vec<_> = self
            .columns
            .iter()
            .map(|&(i, ref t)| Ok(arrow::compute::cast(b.column(i), t)?))
            .collect::<Result<Vec<_>>>()?;
        let rows = self.converter.convert_columns(&arrays)?;
        Ok(rows
            .iter()
            .map(|r| match self.counts.get_mut(r.as_ref()) {
                Some(n) if *n > 0 => {
                    *n -= 1;
                    true
                }
                _ => false,
            })
            .collect())
    }
}

impl Engine {
    /// Appends quarantined rows with the batch's `progress`, creating the quarantine table
    /// on first use. A concurrent runner that committed this batch's quarantine first makes
    /// this a conflict: the model reads its watermarks again.
    #[allow(clippy::too_many_arguments)]
    pub(super) async fn commit_quarantine(
        &self,
        principal: &Arc<Principal>,
        access: &AccessControl,
        qt: &TableRef,
        t: &TableRef,
        schema: &SchemaRef,
        rows: Vec<RecordBatch>,
        progress: &Progress,
    ) -> Result<()> {
        if !self.catalog.exists(qt).await? {
            self.create_model_table(
                principal,
                qt,
                schema,
                Some(&format!(
                    "Rows of {t} that failed its expectations (written by its pipeline)"
                )),
                &[
                    (
                        RUN_ID.to_string(),
                        "The run that quarantined the row".to_string(),
                    ),
                    (
                        FAILED.to_string(),
                        "Every expectation the row failed, comma-separated".to_string(),
                    ),
                    (
                        QUARANTINED_AT.to_string(),
                        "When it was quarantined".to_string(),
                    ),
                    (
                        BATCH.to_string(),
                        "The source ranges it came from (a hash)".to_string(),
                    ),
                ]
                .into(),
            )
            .await?;
        }
        let table = self.catalog.load(qt).await?;
        let stored = table.snapshot()?.snapshot().arrow_schema();
        let missing: Vec<&str> = schema
            .fields()
            .iter()
            .filter(|f| stored.field_with_name(f.name()).is_err())
            .map(|f| f.name().as_str())
            .collect();
        if !missing.is_empty() {
            return Err(Error::invalid(format!(
                "{qt} lacks the model's columns {}: add them (ALTER TABLE {qt} ADD COLUMNS …) or drop the quarantine table",
                missing.join(", ")
            )));
        }
        // By name, cast onto the stored types (a scan may have produced view types).
        let rows = rows
            .iter()
            .map(|b| crate::ingest::conform(b, &stored))
            .collect::<Result<Vec<_>>>()?;
        self.check_write(access, principal, qt, WriteMode::Append, &stored, &rows)?;
        crate::failpoint::hit("flows.before_quarantine_commit");
        let outcome = commit::write_with_progress(
            &self.catalog,
            qt,
            principal,
            rows,
            WriteMode::Append,
            None,
            "QUARANTINE",
            progress,
        )
        .await?;
        if outcome.duplicate {
            return Err(Error::Conflict(format!(
                "a concurrent run quarantined this batch of {t} first"
            )));
        }
        crate::failpoint::hit("flows.after_quarantine_commit");
        Ok(())
    }
}
