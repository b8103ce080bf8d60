//! The staged MERGE source of an SCD2 run: its schema, the per-key row path (chains in
//! effective-time order, re-runs, late changes), and the helpers they share.

use std::collections::HashMap;
use std::sync::Arc;

use arrow::array::{
    Array, ArrayRef, BooleanArray, RecordBatch, StringArray, TimestampMicrosecondArray,
    new_null_array,
};
use arrow::compute::cast;
use arrow::datatypes::{DataType, Field, Schema, SchemaRef};
use datafusion::common::ScalarValue;
use datafusion::datasource::MemTable;

use super::{ACTION, Columns, DELETED, MATCH_PREFIX, OnLate};
use crate::error::{Error, Result};

/// The staged source of the MERGE: data columns (source values for inserts), the SCD
/// columns, the match keys (only on close/keep rows) and the action.
pub(super) fn staged_schema(
    cols: &Columns<'_>,
    target_type: &dyn Fn(&str) -> Result<DataType>,
) -> Result<SchemaRef> {
    let spec = cols.spec;
    let mut fields = Vec::new();
    for c in cols.data {
        fields.push(Field::new(c, target_type(c)?, true));
    }
    for c in [&spec.valid_from, &spec.valid_to] {
        fields.push(Field::new(c, target_type(c)?, true));
    }
    fields.push(Field::new(&spec.is_current, DataType::Boolean, true));
    for (i, k) in cols.keys.iter().enumerate() {
        fields.push(Field::new(
            format!("{MATCH_PREFIX}{i}"),
            target_type(k)?,
            true,
        ));
    }
    fields.push(Field::new(ACTION, DataType::Utf8, false));
    Ok(Arc::new(Schema::new(fields)))
}

/// `batch` with its columns cast to `schema` (same order).
pub(super) fn conform(batch: &RecordBatch, schema: &SchemaRef) -> Result<RecordBatch> {
    let columns = batch
        .columns()
        .iter()
        .zip(schema.fields())
        .map(|(c, f)| Ok(cast(c, f.data_type())?))
        .collect::<Result<Vec<ArrayRef>>>()?;
    Ok(RecordBatch::try_new(Arc::clone(schema), columns)?)
}

pub(super) fn mem(schema: &SchemaRef, batches: Vec<RecordBatch>) -> Result<Arc<MemTable>> {
    Ok(Arc::new(MemTable::try_new(
        Arc::clone(schema),
        vec![batches],
    )?))
}

/// NULL keys and missing effective times are errors, named by their source row.
pub(super) fn check_source(src: &RecordBatch, keys: &[String]) -> Result<()> {
    let first_null = |name: &str| {
        src.column_by_name(name)
            .and_then(|c| c.logical_nulls())
            .and_then(|n| (0..n.len()).find(|i| n.is_null(*i)))
    };
    if let Some(row) = keys.iter().filter_map(|k| first_null(k)).min() {
        return Err(Error::invalid(format!(
            "source row {} has a NULL key; SCD2 keys must not be NULL",
            row + 1
        )));
    }
    if let Some(row) = first_null("__eff") {
        return Err(Error::invalid(format!(
            "source row {} has no effective time",
            row + 1
        )));
    }
    Ok(())
}

/// The row-by-row path for the keys that need it (see [`Columns::complex_keys_sql`]):
/// chains in effective-time order, deletes, re-runs, late changes. Returns the staged rows
/// and how many late changes `on_late = skip` left out.
pub(super) fn stage_rows(
    cols: &Columns<'_>,
    src: &RecordBatch,
    history: &[RecordBatch],
    schema: &SchemaRef,
    target_type: &dyn Fn(&str) -> Result<DataType>,
) -> Result<(RecordBatch, u64)> {
    let spec = cols.spec;
    let tracked = cols.tracked;
    let t = cols.table;
    let value = |b: &RecordBatch, name: &str, row: usize| -> Result<ScalarValue> {
        let c = b
            .column_by_name(name)
            .ok_or_else(|| Error::internal(format!("missing column {name}")))?;
        Ok(normalize(ScalarValue::try_from_array(c, row)?))
    };
    let values_of = |b: &RecordBatch, cols: &[String], row: usize| -> Result<Vec<ScalarValue>> {
        cols.iter().map(|c| value(b, c, row)).collect()
    };
    let micros = |v: ScalarValue| -> Option<i64> {
        match v {
            ScalarValue::TimestampMicrosecond(x, _) => x,
            ScalarValue::TimestampMillisecond(x, _) => x.map(|m| m * 1000),
            ScalarValue::TimestampNanosecond(x, _) => x.map(|n| n / 1000),
            ScalarValue::TimestampSecond(x, _) => x.map(|s| s * 1_000_000),
            _ => None,
        }
    };
    let deleted = src.column_by_name(DELETED).map(|c| {
        c.as_any()
            .downcast_ref::<BooleanArray>()
            .map(|a| (0..a.len()).map(|i| a.is_valid(i) && a.value(i)).collect())
            .unwrap_or_else(|| vec![false; c.len()])
    });
    let is_delete = |row: usize| -> bool { deleted.as_ref().is_some_and(|d: &Vec<bool>| d[row]) };

    // key → (valid_from → tracked values) of every version, the times versions were closed
    // without a successor (deletes), the latest time in the key's history, and the current
    // version.
    #[derive(Default)]
    struct Known {
        versions: std::collections::BTreeMap<i64, Vec<ScalarValue>>,
        ends: std::collections::BTreeSet<i64>,
        latest: Option<i64>,
        current: Option<(i64, Vec<ScalarValue>)>,
    }
    let mut known: HashMap<Vec<ScalarValue>, Known> = HashMap::new();
    for b in history {
        for row in 0..b.num_rows() {
            let key = values_of(b, &spec.keys, row)?;
            let from = micros(value(b, &spec.valid_from, row)?).unwrap_or(i64::MIN);
            let to = micros(value(b, &spec.valid_to, row)?);
            let vals = values_of(b, tracked, row)?;
            let entry = known.entry(key.clone()).or_default();
            if value(b, &spec.is_current, row)? == ScalarValue::Boolean(Some(true)) {
                if entry.current.is_some() {
                    return Err(Error::invalid(format!(
                        "{t} already has two current rows for key {}; fix the table before running SCD2",
                        show(&key)
                    )));
                }
                entry.current = Some((from, vals.clone()));
            }
            if let Some(to) = to {
                entry.ends.insert(to);
            }
            entry.latest = entry.latest.max(Some(from)).max(to);
            entry.versions.insert(from, vals);
        }
    }

    // Group the source by key, in effective-time order.
    let mut by_key: HashMap<Vec<ScalarValue>, Vec<(i64, usize)>> = HashMap::new();
    let mut key_order = Vec::new();
    for row in 0..src.num_rows() {
        let key = values_of(src, &spec.keys, row)?;
        if key.iter().any(ScalarValue::is_null) {
            return Err(Error::invalid(format!(
                "source row {} has a NULL key; SCD2 keys must not be NULL",
                row + 1
            )));
        }
        let eff = micros(value(src, "__eff", row)?).ok_or_else(|| {
            Error::invalid(format!("source row {} has no effective time", row + 1))
        })?;
        let rows = by_key.entry(key.clone()).or_default();
        if rows.is_empty() {
            key_order.push(key);
        }
        rows.push((eff, row));
    }

    // Staged rows: (source row or None, action, match key?, valid_from, valid_to, current).
    struct Staged {
        row: Option<usize>,
        key: Vec<ScalarValue>,
        action: &'static str,
        valid_from: Option<i64>,
        valid_to: Option<i64>,
        is_current: bool,
    }
    let mut staged: Vec<Staged> = Vec::new();
    let mut skipped = 0u64;
    for key in key_order {
        let Some(mut rows) = by_key.remove(&key) else {
            continue;
        };
        rows.sort_by_key(|(eff, _)| *eff);
        let k = known.remove(&key).unwrap_or_default();
        // The tracked values of the open version (None: the key has none, e.g. deleted).
        let mut prev: Option<Vec<ScalarValue>> = k.current.as_ref().map(|(_, v)| v.clone());
        // New events in order: (effective time, Some(source row) = a new version, None = a
        // delete closing the version before it).
        let mut chain: Vec<(i64, Option<usize>)> = Vec::new();
        let mut last_eff: Option<(i64, Option<Vec<ScalarValue>>)> = None;
        for (eff, row) in rows {
            let delete = is_delete(row);
            let vals = if delete {
                None
            } else {
                Some(values_of(src, tracked, row)?)
            };
            if let Some((e, v)) = &last_eff
                && *e == eff
            {
                if *v != vals {
                    return Err(Error::invalid(format!(
                        "the source has two different rows for key {} at the same effective time",
                        show(&key)
                    )));
                }
                continue;
            }
            last_eff = Some((eff, vals.clone()));
            let late = || -> Result<u64> {
                match spec.on_late {
                    OnLate::Skip => Ok(1),
                    OnLate::Fail => Err(Error::invalid(format!(
                        "late change for key {} at {}: its history already reaches {}; out-of-order changes are rejected (on_late = skip leaves them out)",
                        show(&key),
                        show_ts(eff),
                        k.latest.map(show_ts).unwrap_or_default()
                    ))),
                }
            };
            let Some(vals) = vals else {
                // A delete: closes the open version, if any.
                if chain.is_empty()
                    && let Some(latest) = k.latest
                    && eff <= latest
                {
                    // Already applied when a version was closed then, with none after it.
                    let applied = k.ends.contains(&eff) && !k.versions.contains_key(&eff);
                    if !applied {
                        skipped += late()?;
                    }
                    continue;
                }
                if prev.is_some() {
                    chain.push((eff, None));
                    prev = None;
                }
                continue;
            };
            if let Some(existing) = k.versions.get(&eff) {
                if *existing != vals {
                    skipped += late()?;
                }
                continue; // already applied by an earlier run
            }
            if prev.as_ref() == Some(&vals) {
                continue; // unchanged
            }
            if chain.is_empty()
                && let Some(latest) = k.latest
                && eff <= latest
            {
                // Already reflected if the version in effect at `eff` has these values
                // (e.g. a row that was "unchanged" when its batch first ran).
                if k.versions.range(..=eff).next_back().map(|(_, v)| v) != Some(&vals) {
                    skipped += late()?;
                }
                continue;
            }
            prev = Some(vals);
            chain.push((eff, Some(row)));
        }
        match (chain.first(), &k.current) {
            (Some((first, _)), Some(_)) => staged.push(Staged {
                row: None,
                key: key.clone(),
                action: "close",
                valid_from: None,
                valid_to: Some(*first),
                is_current: false,
            }),
            (None, Some(_)) => staged.push(Staged {
                row: None,
                key: key.clone(),
                action: "keep",
                valid_from: None,
                valid_to: None,
                is_current: true,
            }),
            _ => {}
        }
        for (i, (eff, row)) in chain.iter().enumerate() {
            let Some(row) = row else { continue };
            let next = chain.get(i + 1).map(|(e, _)| *e);
            let closed = chain.get(i + 1).is_some();
            staged.push(Staged {
                row: Some(*row),
                key: key.clone(),
                action: "insert",
                valid_from: Some(*eff),
                valid_to: next,
                is_current: !closed,
            });
        }
    }
    // The staged batch: data columns (source values for inserts), SCD columns, the match
    // keys (only on close/keep rows) and the action.
    let take_rows: Vec<Option<u64>> = staged.iter().map(|s| s.row.map(|r| r as u64)).collect();
    let indices = arrow::array::UInt64Array::from(take_rows);
    let mut columns: Vec<ArrayRef> = Vec::new();
    for c in cols.data {
        let column = src
            .column_by_name(c)
            .ok_or_else(|| Error::internal(format!("missing column {c}")))?;
        columns.push(arrow::compute::take(column.as_ref(), &indices, None)?);
    }
    let ts = |f: &dyn Fn(&Staged) -> Option<i64>| -> ArrayRef {
        Arc::new(
            TimestampMicrosecondArray::from(staged.iter().map(f).collect::<Vec<_>>())
                .with_timezone("UTC"),
        )
    };
    columns.push(cast(
        &ts(&|s| s.valid_from),
        &target_type(&spec.valid_from)?,
    )?);
    columns.push(cast(&ts(&|s| s.valid_to), &target_type(&spec.valid_to)?)?);
    columns.push(Arc::new(BooleanArray::from(
        staged.iter().map(|s| s.is_current).collect::<Vec<_>>(),
    )));
    for (i, k) in spec.keys.iter().enumerate() {
        let dt = target_type(k)?;
        let values = staged
            .iter()
            .map(|s| {
                if s.action == "insert" {
                    ScalarValue::try_from(&dt)
                } else {
                    Ok(s.key[i].clone())
                }
            })
            .collect::<datafusion::error::Result<Vec<_>>>()?;
        let array = if values.is_empty() {
            new_null_array(&dt, 0)
        } else {
            ScalarValue::iter_to_array(values)?
        };
        columns.push(cast(&array, &dt)?);
    }
    columns.push(Arc::new(StringArray::from(
        staged.iter().map(|s| s.action).collect::<Vec<_>>(),
    )));
    Ok((RecordBatch::try_new(Arc::clone(schema), columns)?, skipped))
}

/// One representation per value, so that the target's view types (as its scan reads them)
/// and the source's plain types compare equal.
pub(super) fn normalize(v: ScalarValue) -> ScalarValue {
    match v {
        ScalarValue::Utf8View(s) | ScalarValue::LargeUtf8(s) => ScalarValue::Utf8(s),
        ScalarValue::BinaryView(b) | ScalarValue::LargeBinary(b) => ScalarValue::Binary(b),
        other => other,
    }
}

pub(super) fn show(key: &[ScalarValue]) -> String {
    let parts: Vec<String> = key.iter().map(ToString::to_string).collect();
    format!("({})", parts.join(", "))
}

pub(super) fn show_ts(micros: i64) -> String {
    chrono::DateTime::from_timestamp_micros(micros)
        .map(|t| t.to_rfc3339())
        .unwrap_or_else(|| micros.to_string())
}
