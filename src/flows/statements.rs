//! The SQL each model kind commits with: a `merge` model's latest change per key and its
//! MERGE, an `scd2` model's source and SCD2 settings, and a `time_range` batch's bound
//! `$start`/`$end` (the statements [`super::run`] hands to the engine).

use chrono::{DateTime, Utc};
use datafusion::common::ScalarValue;

use super::model::{Header, Kind};
use crate::engine::models::ModelWrite;
use crate::error::{Error, Result};
use crate::pipelines::merge::{Action, Clause, MergeSpec, When};
use crate::pipelines::scd2::{OnLate, Scd2Spec};

/// When a change deletes its key: a delete change (when the output keeps `_change_type`)
/// or the model's `delete_when`.
pub(super) fn delete_condition(header: &Header, output: &[String]) -> String {
    let mut deletes = Vec::new();
    if output.iter().any(|c| c == "_change_type") {
        deletes.push("COALESCE(\"_change_type\" = 'delete', false)".to_string());
    }
    if let Some(d) = &header.delete_when {
        deletes.push(format!("COALESCE(({d}), false)"));
    }
    if deletes.is_empty() {
        "false".to_string()
    } else {
        deletes.join(" OR ")
    }
}

/// An `scd2` model's source and SCD2 settings: the existing SCD2 operation with
/// `effective_time = sequence_by`; a delete change closes the key's current row.
pub(super) fn scd2_statement(
    select: &str,
    header: &Header,
    output: &[String],
) -> Result<(String, ModelWrite)> {
    let seq = header
        .sequence_by
        .clone()
        .ok_or_else(|| Error::invalid("an scd2 model needs sequence_by"))?;
    for c in header.unique_key.iter().chain([&seq]) {
        if !output.contains(c) {
            return Err(Error::invalid(format!(
                "the model's output has no column {c} (unique_key and sequence_by name output columns)"
            )));
        }
    }
    // A delete change of the source's feed carries the deleted row, whose sequence_by is
    // that of the version it deletes: it takes effect when it was committed.
    let has = |c: &str| output.iter().any(|o| o == c);
    let effective = if has("_change_type") && has("_commit_timestamp") {
        format!(
            "CASE WHEN \"_change_type\" = 'delete' THEN CAST(\"_commit_timestamp\" AS TIMESTAMP) \
             ELSE CAST({s} AS TIMESTAMP) END",
            s = quoted(&seq)
        )
    } else {
        quoted(&seq)
    };
    let source = format!(
        "SELECT *, {delete} AS __strata_delete, {effective} AS __strata_effective \
         FROM ({select}) AS __strata_changes",
        delete = delete_condition(header, output)
    );
    let spec = Scd2Spec {
        keys: header.unique_key.clone(),
        effective_time: Some("__strata_effective".into()),
        deleted: Some("__strata_delete".into()),
        on_late: header.on_out_of_order.unwrap_or(OnLate::Skip),
        ..Scd2Spec::default()
    };
    Ok((source, ModelWrite::Scd2(spec)))
}

/// The values a model's `$start`/`$end` take when it is planned outside a batch (deploy
/// plans, table creation): its first batch.
pub(crate) fn planning_params(header: &Header) -> Result<Vec<(&'static str, ScalarValue)>> {
    if header.kind != Kind::TimeRange {
        return Ok(Vec::new());
    }
    let start = header.range_start()?;
    let end = header.batch_size.unwrap_or_default().add(start, 1);
    Ok(range_params(start, end))
}

/// `$start` and `$end` of one batch, as UTC timestamps.
pub(super) fn range_params(
    start: DateTime<Utc>,
    end: DateTime<Utc>,
) -> Vec<(&'static str, ScalarValue)> {
    [("start", start), ("end", end)]
        .map(|(n, t)| (n, timestamp(t)))
        .to_vec()
}

pub(super) fn timestamp(t: DateTime<Utc>) -> ScalarValue {
    ScalarValue::TimestampMicrosecond(Some(t.timestamp_micros()), Some("UTC".into()))
}

pub(crate) fn quoted(c: &str) -> String {
    format!("\"{}\"", c.replace('"', "\"\""))
}

/// Per key, the change with the greatest `sequence_by` (then the latest commit), with
/// `__strata_delete` telling whether it deletes the key: the source of a `merge` model's
/// MERGE, and of a full refresh of `merge` and `scd2` models.
pub(super) fn latest_per_key(select: &str, header: &Header, output: &[String]) -> Result<String> {
    let seq = header
        .sequence_by
        .as_deref()
        .ok_or_else(|| Error::invalid("this model needs sequence_by"))?;
    let keys: Vec<String> = header.unique_key.iter().map(|k| quoted(k)).collect();
    let delete = delete_condition(header, output);
    let mut order = vec![format!("{} DESC", quoted(seq))];
    if output.iter().any(|c| c == "_commit_version") {
        order.push("\"_commit_version\" DESC".into());
    }
    let columns: Vec<String> = output.iter().map(|c| quoted(c)).collect();
    Ok(format!(
        "SELECT {columns}, __strata_delete FROM (\
           SELECT *, \
             row_number() OVER (PARTITION BY {keys} ORDER BY {order}) AS __strata_rank, \
             {delete} AS __strata_delete \
           FROM ({select}) AS __strata_changes\
         ) AS __strata_ranked WHERE __strata_rank = 1",
        columns = columns.join(", "),
        keys = keys.join(", "),
        order = order.join(", "),
    ))
}

/// A `merge` model's source and MERGE: per key, the change with the greatest
/// `sequence_by` (then the latest commit); a delete change or `delete_when` deletes the key;
/// the target row changes only if the change is newer than its stored `sequence_by`, so a
/// late or repeated change never overwrites a newer one.
pub(super) fn merge_statement(
    select: &str,
    header: &Header,
    output: &[String],
    target: &[String],
) -> Result<(String, ModelWrite)> {
    let seq = header
        .sequence_by
        .as_deref()
        .ok_or_else(|| Error::invalid("a merge model needs sequence_by"))?;
    let has = |c: &str| output.iter().any(|o| o == c);
    for c in header.unique_key.iter().map(String::as_str).chain([seq]) {
        if !has(c) || !target.iter().any(|t| t == c) {
            return Err(Error::invalid(format!(
                "the model's output has no column {c} (unique_key and sequence_by name output columns)"
            )));
        }
    }
    let source = latest_per_key(select, header, output)?;
    let on = header
        .unique_key
        .iter()
        .map(|k| format!("t.{k} = s.{k}", k = quoted(k)))
        .collect::<Vec<_>>()
        .join(" AND ");
    let newer = format!("(t.{s} IS NULL OR s.{s} > t.{s})", s = quoted(seq));
    let set: Vec<(String, String)> = target
        .iter()
        .filter(|c| has(c))
        .map(|c| (c.clone(), format!("s.{}", quoted(c))))
        .collect();
    let spec = MergeSpec {
        target_alias: "t".into(),
        source_alias: "s".into(),
        on,
        clauses: vec![
            Clause {
                when: When::Matched,
                predicate: Some(format!("s.__strata_delete AND {newer}")),
                action: Action::Delete,
            },
            Clause {
                when: When::Matched,
                predicate: Some(format!("NOT s.__strata_delete AND {newer}")),
                action: Action::Update(set.clone()),
            },
            Clause {
                when: When::NotMatched,
                predicate: Some("NOT s.__strata_delete".into()),
                action: Action::Insert(set),
            },
        ],
        operation: "MODEL MERGE".into(),
    };
    Ok((source, ModelWrite::Merge(spec)))
}
