//! SCD Type 2: keep every version of a dimension row, in one atomic commit.
//!
//! ```text
//! source rows (keys, tracked values, optional effective time; default: commit time)
//!   → history of the batch's keys from the target (only those keys, semi-join)
//!   → per key, in effective-time order (bounded by the source, never the whole target):
//!       already in the history at that time with the same values → skip (re-runs are no-ops)
//!       same tracked values as the version before it (null-safe)  → skip (unchanged)
//!       earlier than or at the current version's start           → rejected (late change)
//!       otherwise a new version, closing the one before it at its effective time
//!   → a staged source for one MERGE: "close" rows match the current row of their key,
//!     "keep" rows match unchanged keys, "insert" rows match nothing
//!   → MERGE … WHEN MATCHED AND close THEN UPDATE valid_to, is_current
//!            WHEN NOT MATCHED AND insert THEN INSERT
//!            [WHEN NOT MATCHED BY SOURCE AND t.is_current THEN close at the batch time]
//! ```
//!
//! Invariants: at most one current row per key; the versions of a key never overlap
//! (`valid_to` of one is `valid_from` of the next, NULL for the current one).
//!
//! Late changes (a change dated at or before the start of the key's current version) are
//! rejected with a clear error rather than spliced into the chain: splicing rewrites closed
//! history, which downstream consumers of the dimension may already have read.

use std::collections::HashMap;
use std::sync::Arc;

use arrow::array::{
    Array, ArrayRef, BooleanArray, RecordBatch, StringArray, TimestampMicrosecondArray,
    new_null_array,
};
use arrow::compute::{cast, concat_batches};
use arrow::datatypes::{DataType, Field, Schema, SchemaRef, TimeUnit};
use datafusion::common::{JoinType, ScalarValue};
use datafusion::logical_expr::{col, lit};
use datafusion::prelude::{DataFrame, SessionContext};
use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::pipelines::merge::{self, Action, Clause, Dml, DmlOutcome, MergeSpec, When};

/// Rows of one SCD2 run (see the module docs).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Scd2Spec {
    /// Business key columns.
    pub keys: Vec<String>,
    /// Columns whose change opens a new version; default: every non-key data column.
    pub tracked: Option<Vec<String>>,
    /// Source column with each change's effective time; default: the commit time.
    pub effective_time: Option<String>,
    /// Close the current version of keys missing from the source (full snapshots).
    pub close_missing: bool,
    pub valid_from: String,
    pub valid_to: String,
    pub is_current: String,
}

impl Default for Scd2Spec {
    fn default() -> Self {
        Scd2Spec {
            keys: Vec::new(),
            tracked: None,
            effective_time: None,
            close_missing: false,
            valid_from: "valid_from".into(),
            valid_to: "valid_to".into(),
            is_current: "is_current".into(),
        }
    }
}

const ACTION: &str = "__scd2_action";
const MATCH_PREFIX: &str = "__scd2_key_";

fn ts_type() -> DataType {
    DataType::Timestamp(TimeUnit::Microsecond, Some("UTC".into()))
}

fn quote(c: &str) -> String {
    format!("\"{}\"", c.replace('"', "\"\""))
}

/// Runs SCD2 of `source` into the target of `dml` (whose `params` must be empty: the batch
/// time is bound here).
pub async fn scd2(dml: &Dml<'_>, source: DataFrame, spec: &Scd2Spec) -> Result<DmlOutcome> {
    let t = dml.table;
    if spec.keys.is_empty() {
        return Err(Error::invalid("SCD2 needs at least one key column"));
    }
    let table = dml.catalog.load(t).await?;
    let target: SchemaRef = table.snapshot()?.snapshot().arrow_schema();
    let field = |name: &str| {
        target
            .field_with_name(name)
            .map_err(|_| Error::invalid(format!("{t} has no column {name}")))
    };
    for (name, kind) in [
        (&spec.valid_from, "timestamp"),
        (&spec.valid_to, "timestamp"),
    ] {
        if !matches!(field(name)?.data_type(), DataType::Timestamp(_, Some(_))) {
            return Err(Error::invalid(format!(
                "SCD2 column {name} of {t} must be a {kind} (with time zone)"
            )));
        }
    }
    if field(&spec.is_current)?.data_type() != &DataType::Boolean {
        return Err(Error::invalid(format!(
            "SCD2 column {} of {t} must be a boolean",
            spec.is_current
        )));
    }
    let scd_cols = [&spec.valid_from, &spec.valid_to, &spec.is_current];
    let data_cols: Vec<String> = target
        .fields()
        .iter()
        .map(|f| f.name().clone())
        .filter(|c| !scd_cols.contains(&c))
        .collect();
    for k in &spec.keys {
        if !data_cols.contains(k) {
            return Err(Error::invalid(format!(
                "key column {k} is not a data column of {t}"
            )));
        }
    }
    let tracked: Vec<String> = match &spec.tracked {
        Some(cols) => {
            for c in cols {
                if !data_cols.contains(c) || spec.keys.contains(c) {
                    return Err(Error::invalid(format!(
                        "tracked column {c} is not a non-key data column of {t}"
                    )));
                }
            }
            cols.clone()
        }
        None => data_cols
            .iter()
            .filter(|c| !spec.keys.contains(c))
            .cloned()
            .collect(),
    };

    // The source: data columns (typed like the target) and the effective time.
    let batch_time = chrono::Utc::now().timestamp_micros();
    let source_schema = source.schema().as_arrow().clone();
    for c in &data_cols {
        if source_schema.field_with_name(c).is_err() {
            return Err(Error::invalid(format!(
                "the SCD2 source has no column {c} (every data column of {t} is needed)"
            )));
        }
    }
    let mut projection: Vec<_> = data_cols
        .iter()
        .map(|c| {
            Ok(
                datafusion::logical_expr::cast(col(quote(c)), field(c)?.data_type().clone())
                    .alias(c.as_str()),
            )
        })
        .collect::<Result<_>>()?;
    projection.push(match &spec.effective_time {
        Some(e) => {
            if source_schema.field_with_name(e).is_err() {
                return Err(Error::invalid(format!(
                    "the SCD2 source has no effective-time column {e}"
                )));
            }
            datafusion::logical_expr::cast(col(quote(e)), ts_type()).alias("__eff")
        }
        None => lit(ScalarValue::TimestampMicrosecond(
            Some(batch_time),
            Some("UTC".into()),
        ))
        .alias("__eff"),
    });
    let source = source.select(projection)?;
    let key_df = source
        .clone()
        .select(spec.keys.iter().map(|k| col(quote(k))).collect::<Vec<_>>())?
        .distinct()?;
    let src_batches = source.collect().await?;
    let src_schema = Arc::new(Schema::new(
        data_cols
            .iter()
            .map(|c| Ok(Field::new(c, field(c)?.data_type().clone(), true)))
            .chain(std::iter::once(Ok(Field::new("__eff", ts_type(), true))))
            .collect::<Result<Vec<_>>>()?,
    ));
    let src = concat_batches(&src_schema, &src_batches)?;

    // The history of the batch's keys (only those keys), under the writer's row filter.
    let ctx = SessionContext::new_with_state(dml.state.clone());
    let mut history = ctx.read_table(table.table_provider().await?)?;
    if let Some(f) = dml.filter {
        history = history.filter(f.clone())?;
    }
    let key_names: Vec<String> = spec.keys.iter().map(|k| format!("__k_{k}")).collect();
    let key_df = key_df.select(
        spec.keys
            .iter()
            .zip(&key_names)
            .map(|(k, alias)| col(quote(k)).alias(alias.as_str()))
            .collect::<Vec<_>>(),
    )?;
    let history = history
        .join(
            key_df,
            JoinType::LeftSemi,
            &spec.keys.iter().map(String::as_str).collect::<Vec<_>>(),
            &key_names.iter().map(String::as_str).collect::<Vec<_>>(),
            None,
        )?
        .collect()
        .await?;

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

    // key → (valid_from → tracked values) of every version, and the current version.
    #[derive(Default)]
    struct Known {
        versions: std::collections::BTreeMap<i64, Vec<ScalarValue>>,
        current: Option<(i64, Vec<ScalarValue>)>,
    }
    let mut known: HashMap<Vec<ScalarValue>, Known> = HashMap::new();
    for b in &history {
        for row in 0..b.num_rows() {
            let key = values_of(b, &spec.keys, row)?;
            let from = micros(value(b, &spec.valid_from, row)?).unwrap_or(i64::MIN);
            let vals = values_of(b, &tracked, row)?;
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
            entry.versions.insert(from, vals);
        }
    }

    // Group the source by key, in effective-time order.
    let mut by_key: HashMap<Vec<ScalarValue>, Vec<(i64, usize)>> = HashMap::new();
    let mut key_order = Vec::new();
    for row in 0..src.num_rows() {
        let key = values_of(&src, &spec.keys, row)?;
        if key.iter().any(ScalarValue::is_null) {
            return Err(Error::invalid(format!(
                "source row {} has a NULL key; SCD2 keys must not be NULL",
                row + 1
            )));
        }
        let eff = micros(value(&src, "__eff", row)?).ok_or_else(|| {
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
    for key in key_order {
        let Some(mut rows) = by_key.remove(&key) else {
            continue;
        };
        rows.sort_by_key(|(eff, _)| *eff);
        let k = known.remove(&key).unwrap_or_default();
        let mut prev: Option<Vec<ScalarValue>> = k.current.as_ref().map(|(_, v)| v.clone());
        let mut chain: Vec<(i64, usize)> = Vec::new();
        let mut last_eff: Option<(i64, Vec<ScalarValue>)> = None;
        for (eff, row) in rows {
            let vals = values_of(&src, &tracked, row)?;
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
            if let Some(existing) = k.versions.get(&eff) {
                if *existing == vals {
                    continue; // already applied by an earlier run
                }
                return Err(Error::invalid(format!(
                    "key {} already has a different version starting at {}",
                    show(&key),
                    show_ts(eff)
                )));
            }
            if prev.as_ref() == Some(&vals) {
                continue; // unchanged
            }
            if chain.is_empty()
                && let Some((from, _)) = &k.current
                && eff <= *from
            {
                // Already reflected if the version in effect at `eff` has these values
                // (e.g. a row that was "unchanged" when its batch first ran).
                if k.versions.range(..=eff).next_back().map(|(_, v)| v) == Some(&vals) {
                    continue;
                }
                return Err(Error::invalid(format!(
                    "late change for key {} at {}: its current version starts at {}; out-of-order changes are rejected",
                    show(&key),
                    show_ts(eff),
                    show_ts(*from)
                )));
            }
            prev = Some(vals);
            chain.push((eff, row));
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
            let next = chain.get(i + 1).map(|(e, _)| *e);
            staged.push(Staged {
                row: Some(*row),
                key: key.clone(),
                action: "insert",
                valid_from: Some(*eff),
                valid_to: next,
                is_current: next.is_none(),
            });
        }
    }
    if staged.iter().all(|s| s.action == "keep") && !spec.close_missing {
        // Nothing changed: no commit at all.
        return Ok(DmlOutcome {
            version: table.version().unwrap_or(0),
            attempts: 1,
            ..Default::default()
        });
    }

    // The staged batch: data columns (source values for inserts), SCD columns, the match
    // keys (only on close/keep rows) and the action.
    let take_rows: Vec<Option<u64>> = staged.iter().map(|s| s.row.map(|r| r as u64)).collect();
    let indices = arrow::array::UInt64Array::from(take_rows);
    let mut fields = Vec::new();
    let mut columns: Vec<ArrayRef> = Vec::new();
    for c in &data_cols {
        let column = src
            .column_by_name(c)
            .ok_or_else(|| Error::internal(format!("missing column {c}")))?;
        columns.push(arrow::compute::take(column.as_ref(), &indices, None)?);
        fields.push(Field::new(c, column.data_type().clone(), true));
    }
    let ts = |f: &dyn Fn(&Staged) -> Option<i64>| -> ArrayRef {
        Arc::new(
            TimestampMicrosecondArray::from(staged.iter().map(f).collect::<Vec<_>>())
                .with_timezone("UTC"),
        )
    };
    let target_ts = |name: &str| -> Result<DataType> { Ok(field(name)?.data_type().clone()) };
    columns.push(cast(&ts(&|s| s.valid_from), &target_ts(&spec.valid_from)?)?);
    fields.push(Field::new(
        &spec.valid_from,
        target_ts(&spec.valid_from)?,
        true,
    ));
    columns.push(cast(&ts(&|s| s.valid_to), &target_ts(&spec.valid_to)?)?);
    fields.push(Field::new(&spec.valid_to, target_ts(&spec.valid_to)?, true));
    columns.push(Arc::new(BooleanArray::from(
        staged.iter().map(|s| s.is_current).collect::<Vec<_>>(),
    )));
    fields.push(Field::new(&spec.is_current, DataType::Boolean, true));
    for (i, k) in spec.keys.iter().enumerate() {
        let dt = field(k)?.data_type().clone();
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
        fields.push(Field::new(format!("{MATCH_PREFIX}{i}"), dt, true));
    }
    columns.push(Arc::new(StringArray::from(
        staged.iter().map(|s| s.action).collect::<Vec<_>>(),
    )));
    fields.push(Field::new(ACTION, DataType::Utf8, false));
    let batch = RecordBatch::try_new(Arc::new(Schema::new(fields)), columns)?;
    let staged_df = ctx.read_batch(batch)?;

    let on = spec
        .keys
        .iter()
        .enumerate()
        .map(|(i, k)| {
            format!(
                "t.{} = s.{}",
                quote(k),
                quote(&format!("{MATCH_PREFIX}{i}"))
            )
        })
        .chain(std::iter::once(format!("t.{}", quote(&spec.is_current))))
        .collect::<Vec<_>>()
        .join(" AND ");
    let mut clauses = vec![
        Clause {
            when: When::Matched,
            predicate: Some(format!("s.{ACTION} = 'close'")),
            action: Action::Update(vec![
                (
                    spec.valid_to.clone(),
                    format!("s.{}", quote(&spec.valid_to)),
                ),
                (spec.is_current.clone(), "false".into()),
            ]),
        },
        Clause {
            when: When::NotMatched,
            predicate: Some(format!("s.{ACTION} = 'insert'")),
            action: Action::Insert(
                data_cols
                    .iter()
                    .chain(scd_cols)
                    .map(|c| (c.clone(), format!("s.{}", quote(c))))
                    .collect(),
            ),
        },
    ];
    if spec.close_missing {
        clauses.push(Clause {
            when: When::NotMatchedBySource,
            predicate: Some(format!("t.{}", quote(&spec.is_current))),
            action: Action::Update(vec![
                (spec.valid_to.clone(), "$1".into()),
                (spec.is_current.clone(), "false".into()),
            ]),
        });
    }
    let merge_spec = MergeSpec {
        target_alias: "t".into(),
        source_alias: "s".into(),
        on,
        clauses,
        operation: "SCD2".into(),
    };
    let params = [ScalarValue::TimestampMicrosecond(
        Some(batch_time),
        Some("UTC".into()),
    )];
    let dml = Dml {
        params: &params,
        ..*dml
    };
    merge::merge(&dml, staged_df, &merge_spec).await
}

/// One representation per value, so that the target's view types (as its scan reads them)
/// and the source's plain types compare equal.
fn normalize(v: ScalarValue) -> ScalarValue {
    match v {
        ScalarValue::Utf8View(s) | ScalarValue::LargeUtf8(s) => ScalarValue::Utf8(s),
        ScalarValue::BinaryView(b) | ScalarValue::LargeBinary(b) => ScalarValue::Binary(b),
        other => other,
    }
}

fn show(key: &[ScalarValue]) -> String {
    let parts: Vec<String> = key.iter().map(ToString::to_string).collect();
    format!("({})", parts.join(", "))
}

fn show_ts(micros: i64) -> String {
    chrono::DateTime::from_timestamp_micros(micros)
        .map(|t| t.to_rfc3339())
        .unwrap_or_else(|| micros.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quoting_escapes_quotes() {
        assert_eq!(quote("a\"b"), "\"a\"\"b\"");
    }

    #[test]
    fn default_columns() {
        let s = Scd2Spec::default();
        assert_eq!(
            (
                s.valid_from.as_str(),
                s.valid_to.as_str(),
                s.is_current.as_str()
            ),
            ("valid_from", "valid_to", "is_current")
        );
    }
}
