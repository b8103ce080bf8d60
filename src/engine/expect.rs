//! Expectations (PLATFORM P4): per-row checks of a model's output, evaluated once per row
//! in one projection over the batch before its commit, and what happens to the rows that
//! fail them.
//!
//! ```text
//! model SELECT (planned as the run-as principal) ─▶ + one boolean column per check
//!   (NULL counts as a violation) ─▶ collected once
//!   ─▶ a rule over its fail_if (or a `fail` rule with any violation): nothing committed,
//!      the error names it, its count and up to 10 rows as the run-as principal saw them
//!   ─▶ per row the strongest action of the rules it fails: quarantine > drop > warn
//!   ─▶ quarantined rows → <layer>.<model>__quarantine, committed FIRST with the batch's
//!      progress markers (its own txn), then the kept rows → the target with the same
//!      markers
//! ```
//!
//! A crash between the two commits leaves the quarantine holding the batch's markers and
//! the target not: the batch runs again over the same source range (flows cap it there),
//! and the rows quarantined then are read back and subtracted from the output, never
//! decided again (a volatile check would put a row in both tables).

use std::collections::HashMap;
use std::sync::Arc;

use arrow::array::{
    Array, AsArray, BooleanArray, RecordBatch, StringArray, TimestampMicrosecondArray,
};
use arrow::compute::kernels::boolean::{and, not, or};
use arrow::compute::{filter_record_batch, prep_null_mask_filter};
use arrow::datatypes::{DataType, Field, Schema, SchemaRef, TimeUnit};
use chrono::{DateTime, Utc};
use datafusion::common::Column;
use datafusion::execution::context::SessionState;
use datafusion::logical_expr::{Expr, LogicalPlan, LogicalPlanBuilder, cast};
use datafusion::prelude::DataFrame;
use serde::{Deserialize, Serialize};

use super::Engine;
use crate::error::{Error, Result};
use crate::pipelines::commit::{self, Progress, WriteMode};
use crate::security::{AccessControl, Principal};
use crate::storage::TableRef;
use crate::storage::changes::CHANGE_COLUMNS;

/// Rows of a failing rule shown in its error and its result row.
pub(crate) const MAX_SAMPLES: usize = 10;

/// The columns a quarantine table adds to the model's.
pub(crate) const RUN_ID: &str = "_strata_run_id";
pub(crate) const FAILED: &str = "_strata_failed_expectations";
pub(crate) const QUARANTINED_AT: &str = "_strata_quarantined_at";
/// The batch a row was quarantined in (a hash of its source ranges): what recovery reads
/// back.
pub(crate) const BATCH: &str = "_strata_batch";

/// What happens to a row that fails a check. Ordered by precedence: when a row fails
/// several rules, the greatest action applies.
#[derive(
    Debug,
    Clone,
    Copy,
    PartialEq,
    Eq,
    PartialOrd,
    Ord,
    Default,
    Serialize,
    Deserialize,
    utoipa::ToSchema,
)]
#[serde(rename_all = "snake_case")]
pub enum OnViolation {
    /// Kept and counted.
    #[default]
    Warn,
    /// Left out and counted.
    Drop,
    /// Written to `<layer>.<model>__quarantine` instead of the target.
    Quarantine,
    /// The batch commits nothing (beyond `fail_if`, when given).
    Fail,
}

impl OnViolation {
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            OnViolation::Warn => "warn",
            OnViolation::Drop => "drop",
            OnViolation::Quarantine => "quarantine",
            OnViolation::Fail => "fail",
        }
    }
}

/// `[[expect]]` of a model header.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Expectation {
    pub name: String,
    /// A SQL condition over the model's output columns that every good row satisfies.
    pub check: String,
    #[serde(default)]
    pub on_violation: OnViolation,
    /// The batch fails (commits nothing) when more rows than this violate the check:
    /// `"> 100"` (rows) or `"> 5%"` (of the batch). A `fail` rule with it fails only past
    /// the threshold (below it, its rows are kept and counted); other actions still apply
    /// to every violating row.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fail_if: Option<String>,
}

/// A parsed `fail_if`.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Threshold {
    Rows(u64),
    Percent(f64),
}

impl Threshold {
    fn parse(text: &str) -> Result<Threshold> {
        let bad = || {
            Error::invalid(format!(
                "fail_if = {text:?}: write \"> 100\" (rows) or \"> 5%\" (of the batch)"
            ))
        };
        let rest = text.trim().strip_prefix('>').ok_or_else(bad)?.trim();
        if let Some(p) = rest.strip_suffix('%') {
            let p: f64 = p.trim().parse().map_err(|_| bad())?;
            if !(0.0..=100.0).contains(&p) {
                return Err(bad());
            }
            Ok(Threshold::Percent(p))
        } else {
            Ok(Threshold::Rows(rest.parse().map_err(|_| bad())?))
        }
    }

    fn exceeded(self, failed: u64, rows: u64) -> bool {
        match self {
            Threshold::Rows(n) => failed > n,
            Threshold::Percent(p) => rows > 0 && (failed as f64) * 100.0 > p * rows as f64,
        }
    }
}

impl Expectation {
    fn threshold(&self) -> Result<Option<Threshold>> {
        self.fail_if.as_deref().map(Threshold::parse).transpose()
    }
}

/// Problems of a model's expectations that need no plan: names, thresholds, SQL syntax.
pub(crate) fn check_rules(rules: &[Expectation]) -> Result<()> {
    let mut seen = std::collections::BTreeSet::new();
    for r in rules {
        crate::storage::validate_name(&r.name).map_err(|_| {
            Error::invalid(format!(
                "expectation name {:?}: use letters, digits and underscores",
                r.name
            ))
        })?;
        if !seen.insert(r.name.as_str()) {
            return Err(Error::invalid(format!(
                "expectation {} is declared twice",
                r.name
            )));
        }
        if r.check.trim().is_empty() {
            return Err(Error::invalid(format!(
                "expectation {}: check is empty",
                r.name
            )));
        }
        crate::security::policy::expr::parse(&r.check).map_err(|e| {
            Error::invalid(format!(
                "expectation {}: check {:?}: {}",
                r.name,
                r.check,
                e.client_message("")
            ))
        })?;
        r.threshold().map_err(|e| {
            Error::invalid(format!("expectation {}: {}", r.name, e.client_message("")))
        })?;
    }
    Ok(())
}

/// The expectations of one model commit.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Checks<'a> {
    pub(crate) rules: &'a [Expectation],
    pub(crate) run_id: &'a str,
    /// Rows the run may still quarantine (`quarantine_max_rows_per_run` less what it did).
    pub(crate) quarantine_room: u64,
    pub(crate) now: DateTime<Utc>,
}

/// One rule's outcome on a batch (or, summed, on a model run).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct RuleTally {
    pub name: String,
    pub action: OnViolation,
    /// Rows evaluated.
    pub rows: u64,
    /// Rows that violated the check.
    pub failed: u64,
    /// Up to 10 violating rows, as the run-as principal saw them.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub samples: Vec<serde_json::Value>,
}

impl RuleTally {
    /// Adds `other` (the same rule on a later batch).
    pub(crate) fn absorb(&mut self, other: &RuleTally) {
        self.rows += other.rows;
        self.failed += other.failed;
        let room = MAX_SAMPLES.saturating_sub(self.samples.len());
        self.samples
            .extend(other.samples.iter().take(room).cloned());
    }
}

/// What the expectations did to one batch.
#[derive(Debug, Clone, Default)]
pub(crate) struct BatchQuality {
    pub(crate) rules: Vec<RuleTally>,
    pub(crate) dropped: u64,
    pub(crate) quarantined: u64,
    /// Rows that failed a `quarantine` rule after the run's cap was reached (left out).
    pub(crate) over_cap: u64,
    /// Why the batch committed nothing (a `fail` rule, or a `fail_if` exceeded).
    pub(crate) refused: Option<String>,
    /// Up to 10 rows of the refusing rule, as the run-as principal saw them.
    pub(crate) refused_samples: Vec<serde_json::Value>,
    /// The quarantine had this batch already (a crash between its two commits): its rows
    /// were read back, not decided again.
    pub(crate) recovered: bool,
}

/// A column of the output that is not the model's data (change feed, Strata's own).
fn internal(name: &str) -> bool {
    CHANGE_COLUMNS.contains(&name) || name.starts_with("__strata_")
}

/// `a` with NULL read as false (`prep_null_mask_filter` wants a null buffer).
fn null_as_false(a: &BooleanArray) -> BooleanArray {
    match a.nulls() {
        Some(_) => prep_null_mask_filter(a),
        None => a.clone(),
    }
}

/// The value of `_strata_batch` for a batch committing `progress`.
fn batch_key(progress: &Progress) -> String {
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
fn quarantine_schema(data: &Schema) -> SchemaRef {
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

/// A row of `batch` (its `columns`) as JSON.
fn row_json(batch: &RecordBatch, row: usize, columns: &[usize]) -> serde_json::Value {
    let Ok(one) = batch.project(columns).map(|b| b.slice(row, 1)) else {
        return serde_json::Value::Null;
    };
    let mut w = arrow::json::ArrayWriter::new(Vec::new());
    if w.write(&one).and_then(|_| w.finish()).is_err() {
        return serde_json::Value::Null;
    }
    serde_json::from_slice::<Vec<serde_json::Value>>(&w.into_inner())
        .ok()
        .and_then(|mut v| v.pop())
        .unwrap_or(serde_json::Value::Null)
}

/// Per output row, whether its data equals one of `taken` (a multiset: each taken row
/// matches one output row once).
fn subtract(
    output: &[RecordBatch],
    columns: &[usize],
    taken: &[RecordBatch],
) -> Result<Vec<Vec<bool>>> {
    use arrow::row::{RowConverter, SortField};
    let Some(first) = output.first() else {
        return Ok(Vec::new());
    };
    let fields: Vec<SortField> = columns
        .iter()
        .map(|&i| SortField::new(first.schema().field(i).data_type().clone()))
        .collect();
    let converter = RowConverter::new(fields)?;
    let mut counts: HashMap<Vec<u8>, usize> = HashMap::new();
    for b in taken {
        let arrays = columns
            .iter()
            .enumerate()
            .map(|(k, &i)| {
                let want = first.schema().field(i).clone();
                let col = b.column_by_name(want.name()).ok_or_else(|| {
                    Error::internal(format!("the quarantine lacks column {}", want.name()))
                })?;
                Ok(arrow::compute::cast(col, want.data_type())?).map(|a| (k, a))
            })
            .collect::<Result<Vec<_>>>()?;
        let rows =
            converter.convert_columns(&arrays.into_iter().map(|(_, a)| a).collect::<Vec<_>>())?;
        for r in rows.iter() {
            *counts.entry(r.as_ref().to_vec()).or_default() += 1;
        }
    }
    output
        .iter()
        .map(|b| {
            let arrays: Vec<_> = columns.iter().map(|&i| Arc::clone(b.column(i))).collect();
            let rows = converter.convert_columns(&arrays)?;
            Ok(rows
                .iter()
                .map(|r| match counts.get_mut(r.as_ref()) {
                    Some(n) if *n > 0 => {
                        *n -= 1;
                        true
                    }
                    _ => false,
                })
                .collect())
        })
        .collect()
}

impl Engine {
    /// Evaluates `checks` over `plan`'s output and commits its quarantined rows to `t`'s
    /// quarantine table with `progress`: the plan of the rows left for the target, and what
    /// happened. A refused batch (see [`BatchQuality::refused`]) commits nothing.
    #[allow(clippy::too_many_arguments)]
    pub(super) async fn apply_expectations(
        &self,
        principal: &Arc<Principal>,
        access: &Arc<AccessControl>,
        state: &SessionState,
        plan: LogicalPlan,
        checks: &Checks<'_>,
        t: &TableRef,
        progress: &Progress,
    ) -> Result<(LogicalPlan, BatchQuality)> {
        let rules = checks.rules;
        let schema = Arc::clone(plan.schema());
        let width = schema.fields().len();
        let mut exprs: Vec<Expr> = schema
            .iter()
            .map(|(q, f)| Expr::Column(Column::from((q, f))))
            .collect();
        for (i, rule) in rules.iter().enumerate() {
            let check = state
                .create_logical_expr(&rule.check, &schema)
                .map_err(|e| {
                    Error::invalid(format!(
                        "expectation {}: check {:?} does not plan over the model's output: {e}",
                        rule.name, rule.check
                    ))
                })?;
            // NULL (unknown) is a violation: read as false when routing (a bitmap AND, cheaper
            // than a coalesce per row here).
            exprs.push(cast(check, DataType::Boolean).alias(format!("__strata_expect_{i}")));
        }
        let projected = LogicalPlanBuilder::from(plan).project(exprs)?.build()?;
        let batches = DataFrame::new(state.clone(), projected).collect().await?;
        // The batches' own types (a scan may produce view types the plan does not name).
        let out_schema: SchemaRef = match batches.first() {
            Some(b) => Arc::new(b.schema().project(&(0..width).collect::<Vec<_>>())?),
            None => Arc::new(Schema::new(
                schema
                    .as_arrow()
                    .fields()
                    .iter()
                    .cloned()
                    .collect::<Vec<_>>(),
            )),
        };
        let data: Vec<usize> = (0..width)
            .filter(|&i| !internal(out_schema.field(i).name()))
            .collect();
        // A delete in a merge or scd2 source carries no new values: it passes.
        let deletes = out_schema.index_of("__strata_delete").ok();
        let qt = t.quarantine()?;
        let quarantines = rules
            .iter()
            .any(|r| r.on_violation == OnViolation::Quarantine);
        let recovering = quarantines
            && !progress.is_empty()
            && match self.catalog.load(&qt).await {
                Ok(q) => commit::progress_reached(&q, progress).await?,
                Err(Error::NotFound(_)) => false,
                Err(e) => return Err(e),
            };
        let key = batch_key(progress);
        let mut quality = BatchQuality {
            rules: rules
                .iter()
                .map(|r| RuleTally {
                    name: r.name.clone(),
                    action: r.on_violation,
                    rows: 0,
                    failed: 0,
                    samples: Vec::new(),
                })
                .collect(),
            recovered: recovering,
            ..BatchQuality::default()
        };
        // Rows the quarantine already holds for this batch (recovery), per output row.
        let held = if recovering {
            let sql = format!(
                "SELECT * FROM {qt} WHERE {BATCH} = '{}'",
                key.replace('\'', "''")
            );
            let (qstate, qplan) = self.plan_model(principal, access, &sql, &[]).await?;
            let taken = DataFrame::new(qstate, qplan).collect().await?;
            for b in &taken {
                let failed = b
                    .column_by_name(FAILED)
                    .and_then(|c| c.as_string_opt::<i32>().cloned());
                if let Some(failed) = failed {
                    for names in failed.iter().flatten() {
                        for name in names.split(',') {
                            if let Some(r) = quality.rules.iter_mut().find(|r| r.name == name) {
                                r.failed += 1;
                            }
                        }
                    }
                }
                quality.quarantined += b.num_rows() as u64;
            }
            Some(subtract(&batches, &data, &taken)?)
        } else {
            None
        };
        let total: u64 = batches.iter().map(|b| b.num_rows() as u64).sum();
        // Per batch, with column kernels: the rows each rule failed, and the rows some
        // quarantine (drop) rule failed. Deletes and rows read back are not judged.
        let mut routes = Vec::with_capacity(batches.len());
        for (bi, b) in batches.iter().enumerate() {
            let n = b.num_rows();
            let mut exempt = BooleanArray::from(vec![false; n]);
            if let Some(d) = deletes
                && let Some(del) = b.column(d).as_boolean_opt()
            {
                exempt = or(&exempt, &null_as_false(del))?;
            }
            if let Some(h) = &held {
                exempt = or(&exempt, &BooleanArray::from(h[bi].clone()))?;
            }
            let judged = not(&exempt)?;
            let judged_rows = judged.true_count() as u64;
            let mut quarantine = BooleanArray::from(vec![false; n]);
            let mut drop = BooleanArray::from(vec![false; n]);
            let mut fails = Vec::with_capacity(rules.len());
            for (i, r) in rules.iter().enumerate() {
                // Recovery never decides quarantine again: the quarantine holds it.
                if recovering && r.on_violation == OnViolation::Quarantine {
                    fails.push(None);
                    continue;
                }
                let column = b.column(width + i).as_boolean_opt().ok_or_else(|| {
                    Error::internal(format!(
                        "expectation {} did not evaluate to booleans",
                        r.name
                    ))
                })?;
                let ok = null_as_false(column);
                let failed = and(&not(&ok)?, &judged)?;
                let tally = &mut quality.rules[i];
                tally.rows += judged_rows;
                let count = failed.true_count();
                tally.failed += count as u64;
                if count > 0 {
                    let room = MAX_SAMPLES.saturating_sub(tally.samples.len());
                    for row in failed.values().set_indices().take(room) {
                        tally.samples.push(row_json(b, row, &data));
                    }
                }
                match r.on_violation {
                    OnViolation::Quarantine => quarantine = or(&quarantine, &failed)?,
                    OnViolation::Drop => drop = or(&drop, &failed)?,
                    OnViolation::Warn | OnViolation::Fail => {}
                }
                fails.push(Some(failed));
            }
            routes.push((quarantine, drop, fails));
        }
        // Refusals: a `fail` rule with any violation, or any rule past its fail_if.
        for (i, r) in rules.iter().enumerate() {
            let tally = &quality.rules[i];
            let refused = match r.threshold()? {
                Some(limit) => limit.exceeded(tally.failed, total),
                None => r.on_violation == OnViolation::Fail && tally.failed > 0,
            };
            if refused {
                quality.refused_samples = tally.samples.clone();
                quality.refused = Some(format!(
                    "expectation {} failed on {} of {} rows{} (check: {}); nothing was committed (sample rows: the model's failure_samples)",
                    r.name,
                    tally.failed,
                    total,
                    r.fail_if
                        .as_deref()
                        .map(|f| format!(", over fail_if {f}"))
                        .unwrap_or_default(),
                    r.check
                ));
                return Ok((LogicalPlanBuilder::empty(false).build()?, quality));
            }
        }
        // Route the rows: quarantine > drop > keep; past the cap, quarantine is left out.
        let mut room = checks.quarantine_room;
        let mut kept = Vec::with_capacity(batches.len());
        let mut quarantined = Vec::new();
        let q_schema = quarantine_schema(&out_schema.project(&data)?);
        let all: Vec<usize> = (0..width).collect();
        // Consumed batch by batch: each output batch is freed once its rows are routed, so
        // the kept copy never doubles the batch's memory.
        for (bi, (b, (quarantine, drop, fails))) in batches.into_iter().zip(&routes).enumerate() {
            let n = b.num_rows();
            let wanted = quarantine.true_count() as u64;
            let take = if wanted <= room {
                room -= wanted;
                quarantine.clone()
            } else {
                let mut left = room;
                room = 0;
                BooleanArray::from(
                    (0..n)
                        .map(|k| {
                            let t = quarantine.value(k) && left > 0;
                            left -= u64::from(t);
                            t
                        })
                        .collect::<Vec<_>>(),
                )
            };
            let taken = take.true_count() as u64;
            quality.quarantined += taken;
            quality.over_cap += wanted - taken;
            let dropped = and(drop, &not(quarantine)?)?;
            quality.dropped += dropped.true_count() as u64;
            let mut out = or(quarantine, &dropped)?;
            if let Some(h) = &held {
                out = or(&out, &BooleanArray::from(h[bi].clone()))?;
            }
            let data_only = b.project(&all)?;
            kept.push(if out.true_count() == 0 {
                data_only
            } else {
                filter_record_batch(&data_only, &not(&out)?)?
            });
            if taken == 0 {
                continue;
            }
            let failed_names: Vec<String> = (0..n)
                .filter(|&k| take.value(k))
                .map(|k| {
                    rules
                        .iter()
                        .zip(fails)
                        .filter(|(_, f)| f.as_ref().is_some_and(|f| f.value(k)))
                        .map(|(r, _)| r.name.as_str())
                        .collect::<Vec<_>>()
                        .join(",")
                })
                .collect();
            let rows = filter_record_batch(&b.project(&data)?, &take)?;
            let n = rows.num_rows();
            let mut columns = rows.columns().to_vec();
            columns.push(Arc::new(StringArray::from(vec![checks.run_id; n])));
            columns.push(Arc::new(StringArray::from(failed_names)));
            columns.push(Arc::new(
                TimestampMicrosecondArray::from(vec![checks.now.timestamp_micros(); n])
                    .with_timezone("UTC"),
            ));
            columns.push(Arc::new(StringArray::from(vec![key.as_str(); n])));
            quarantined.push(RecordBatch::try_new(Arc::clone(&q_schema), columns)?);
        }
        if !quarantined.is_empty() {
            self.commit_quarantine(principal, access, &qt, t, &q_schema, quarantined, progress)
                .await?;
        }
        // As many partitions as the session plans with, so the write reads them in parallel.
        let parts = state.config().target_partitions().max(1);
        let mut partitions = vec![Vec::new(); parts];
        for (i, b) in kept.into_iter().enumerate() {
            partitions[i % parts].push(b);
        }
        let mem = datafusion::datasource::MemTable::try_new(out_schema, partitions)?;
        let checked = crate::security::policy::PolicyTable::derived(
            t.clone(),
            Arc::clone(principal),
            Arc::new(mem),
        );
        let plan = LogicalPlanBuilder::scan(
            "__strata_checked",
            datafusion::datasource::provider_as_source(Arc::new(checked)),
            None,
        )?
        .build()?;
        Ok((plan, quality))
    }

    /// Appends quarantined rows with the batch's `progress`, creating the quarantine table
    /// on first use. A concurrent runner that committed this batch's quarantine first makes
    /// this a conflict: the model reads its watermarks again.
    #[allow(clippy::too_many_arguments)]
    async fn commit_quarantine(
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
