//! Expectations (PLATFORM P4): per-row checks of a model's output, evaluated once per row
//! in one projection over the batch before its commit, and what happens to the rows that
//! fail them.
//!
//! ```text
//! model SELECT (planned as the run-as principal) ─▶ + one boolean column per check
//!   (NULL counts as a violation) ─▶ judged chunk by chunk as the write pulls the rows
//!   (a merge or scd2 model: collected first, its MERGE joins them with the target)
//!   ─▶ per row the strongest action of the rules it fails: quarantine > drop > warn;
//!      kept rows go on to the data files, quarantined ones are held (at most the cap)
//!   ─▶ at the end, a rule over its fail_if (or a `fail` rule with any violation): the
//!      write fails, nothing committed; the error names the rule, its count and up to 10
//!      rows as the run-as principal saw them
//!   ─▶ quarantined rows → <layer>.<model>__quarantine, committed FIRST with the batch's
//!      progress markers (its own txn), then the target's commit with the same markers
//! ```
//!
//! A crash between the two commits leaves the quarantine holding the batch's markers and
//! the target not: the batch runs again over the same source range (flows cap it there),
//! and the rows quarantined then are read back and subtracted from the output, never
//! decided again (a volatile check would put a row in both tables).

use std::sync::Arc;

use arrow::array::{
    Array, AsArray, BooleanArray, RecordBatch, StringArray, TimestampMicrosecondArray,
};
use arrow::compute::kernels::boolean::{and, not, or};
use arrow::compute::{filter_record_batch, prep_null_mask_filter};
use arrow::datatypes::{DataType, Schema, SchemaRef};
use chrono::{DateTime, Utc};
use datafusion::common::{Column, DFSchema};
use datafusion::execution::context::SessionState;
use datafusion::logical_expr::{Expr, LogicalPlan, LogicalPlanBuilder, cast};
use datafusion::prelude::DataFrame;
use serde::{Deserialize, Serialize};

mod quarantine;
mod stream;

pub(super) use self::stream::judged;

use self::quarantine::{Held, batch_key, quarantine_schema};
use super::Engine;
use crate::error::{Error, Result};
use crate::pipelines::commit::{self, Progress};
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

/// `rules` as boolean columns `__strata_expect_{i}`, planned over `schema` after checking
/// each plans over the model's output `output` (its error names the rule).
pub(super) fn check_columns(
    state: &SessionState,
    output: &DFSchema,
    schema: &DFSchema,
    rules: &[Expectation],
) -> Result<Vec<Expr>> {
    rules
        .iter()
        .enumerate()
        .map(|(i, rule)| {
            let planned = |over: &DFSchema| {
                state.create_logical_expr(&rule.check, over).map_err(|e| {
                    Error::invalid(format!(
                        "expectation {}: check {:?} does not plan over the model's output: {e}",
                        rule.name, rule.check
                    ))
                })
            };
            planned(output)?;
            let check = planned(schema)?;
            // NULL (unknown) is a violation: read as false when routing (a bitmap AND,
            // cheaper than a coalesce per row here).
            Ok(cast(check, DataType::Boolean).alias(format!("__strata_expect_{i}")))
        })
        .collect()
}

/// `plan` with `checks` (from [`check_columns`]) after its columns.
pub(super) fn with_checks(plan: LogicalPlan, checks: Vec<Expr>) -> Result<LogicalPlan> {
    let mut exprs: Vec<Expr> = plan
        .schema()
        .iter()
        .map(|(q, f)| Expr::Column(Column::from((q, f))))
        .collect();
    exprs.extend(checks);
    Ok(LogicalPlanBuilder::from(plan).project(exprs)?.build()?)
}

/// `a OR b`, where `None` is all false.
fn either(a: Option<BooleanArray>, b: &BooleanArray) -> Result<Option<BooleanArray>> {
    Ok(Some(match a {
        Some(a) => or(&a, b)?,
        None => b.clone(),
    }))
}

/// Expectations judging one batch of a model's output, chunk by chunk as it is collected
/// or streamed to the write: per row the rules it fails (deletes and rows read back are
/// not judged), then its route (quarantine > drop > keep; past the cap, quarantine is left
/// out). [`Engine::finish_judging`] decides refusals and commits the quarantine.
pub(super) struct Judge {
    rules: Vec<Expectation>,
    run_id: String,
    now: DateTime<Utc>,
    /// Rows the run may still quarantine.
    room: u64,
    /// The output's columns before the rules'.
    width: usize,
    /// The columns that are the model's data (what samples show and the quarantine keeps).
    data: Vec<usize>,
    recovering: bool,
    held: Option<Held>,
    /// `_strata_batch` of the rows quarantined.
    key: String,
    /// Rows seen.
    total: u64,
    quality: BatchQuality,
    quarantined: Vec<RecordBatch>,
    q_schema: SchemaRef,
}

impl std::fmt::Debug for Judge {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Judge")
            .field("total", &self.total)
            .field("quality", &self.quality)
            .finish_non_exhaustive()
    }
}

impl Judge {
    /// Judges `b` (the output's columns, then one boolean per rule): the rows left for the
    /// target, the output's columns only. Quarantined rows are kept for
    /// [`Engine::finish_judging`].
    pub(super) fn batch(&mut self, b: RecordBatch) -> Result<RecordBatch> {
        let n = b.num_rows();
        self.total += n as u64;
        let width = self.width;
        let mut exempt: Option<BooleanArray> = None;
        // A delete in a merge or scd2 source carries no new values: it passes.
        if let Some(del) = b
            .column_by_name("__strata_delete")
            .and_then(|c| c.as_boolean_opt())
        {
            exempt = either(exempt, &null_as_false(del))?;
        }
        let held = match &mut self.held {
            Some(h) => Some(BooleanArray::from(h.take(&b)?)),
            None => None,
        };
        if let Some(h) = &held {
            exempt = either(exempt, h)?;
        }
        let judged = exempt.as_ref().map(not).transpose()?;
        let judged_rows = judged.as_ref().map_or(n, |j| j.true_count()) as u64;
        let mut quarantine: Option<BooleanArray> = None;
        let mut drop: Option<BooleanArray> = None;
        let mut fails = Vec::with_capacity(self.rules.len());
        for (i, r) in self.rules.iter().enumerate() {
            // Recovery never decides quarantine again: the quarantine holds it.
            if self.recovering && r.on_violation == OnViolation::Quarantine {
                fails.push(None);
                continue;
            }
            let column = b.column(width + i).as_boolean_opt().ok_or_else(|| {
                Error::internal(format!(
                    "expectation {} did not evaluate to booleans",
                    r.name
                ))
            })?;
            let tally = &mut self.quality.rules[i];
            tally.rows += judged_rows;
            let ok = null_as_false(column);
            if ok.true_count() == n {
                fails.push(None);
                continue;
            }
            let failed = match &judged {
                Some(j) => and(&not(&ok)?, j)?,
                None => not(&ok)?,
            };
            let count = failed.true_count();
            tally.failed += count as u64;
            if count > 0 {
                let room = MAX_SAMPLES.saturating_sub(tally.samples.len());
                for row in failed.values().set_indices().take(room) {
                    tally.samples.push(row_json(&b, row, &self.data));
                }
            }
            match r.on_violation {
                OnViolation::Quarantine => quarantine = either(quarantine, &failed)?,
                OnViolation::Drop => drop = either(drop, &failed)?,
                OnViolation::Warn | OnViolation::Fail => {}
            }
            fails.push(Some(failed));
        }
        // Route: quarantine > drop > keep; past the cap, quarantine is left out.
        let wanted = quarantine.as_ref().map_or(0, |q| q.true_count()) as u64;
        let take = match &quarantine {
            None => None,
            Some(q) if wanted <= self.room => {
                self.room -= wanted;
                Some(q.clone())
            }
            Some(q) => {
                let mut left = self.room;
                self.room = 0;
                Some(BooleanArray::from(
                    (0..n)
                        .map(|k| {
                            let t = q.value(k) && left > 0;
                            left -= u64::from(t);
                            t
                        })
                        .collect::<Vec<_>>(),
                ))
            }
        };
        let taken = take.as_ref().map_or(0, |t| t.true_count()) as u64;
        self.quality.quarantined += taken;
        self.quality.over_cap += wanted - taken;
        let dropped = match (&drop, &quarantine) {
            (Some(d), Some(q)) => Some(and(d, &not(q)?)?),
            (Some(d), None) => Some(d.clone()),
            (None, _) => None,
        };
        self.quality.dropped += dropped.as_ref().map_or(0, |d| d.true_count()) as u64;
        let mut out = quarantine;
        if let Some(d) = &dropped {
            out = either(out, d)?;
        }
        if let Some(h) = &held {
            out = either(out, h)?;
        }
        if let Some(take) = take.filter(|_| taken > 0) {
            let failed_names: Vec<String> = (0..n)
                .filter(|&k| take.value(k))
                .map(|k| {
                    self.rules
                        .iter()
                        .zip(&fails)
                        .filter(|(_, f)| f.as_ref().is_some_and(|f| f.value(k)))
                        .map(|(r, _)| r.name.as_str())
                        .collect::<Vec<_>>()
                        .join(",")
                })
                .collect();
            let rows = filter_record_batch(&b.project(&self.data)?, &take)?;
            let m = rows.num_rows();
            let mut columns = rows.columns().to_vec();
            columns.push(Arc::new(StringArray::from(vec![self.run_id.as_str(); m])));
            columns.push(Arc::new(StringArray::from(failed_names)));
            columns.push(Arc::new(
                TimestampMicrosecondArray::from(vec![self.now.timestamp_micros(); m])
                    .with_timezone("UTC"),
            ));
            columns.push(Arc::new(StringArray::from(vec![self.key.as_str(); m])));
            self.quarantined
                .push(RecordBatch::try_new(Arc::clone(&self.q_schema), columns)?);
        }
        let data_only = b.project(&(0..width).collect::<Vec<_>>())?;
        Ok(match out {
            Some(out) if out.true_count() > 0 => filter_record_batch(&data_only, &not(&out)?)?,
            _ => data_only,
        })
    }
}

impl Engine {
    /// Evaluates `checks` over `plan`'s output and commits its quarantined rows to `t`'s
    /// quarantine table with `progress`: the plan of the rows left for the target, and what
    /// happened. A refused batch (see [`BatchQuality::refused`]) commits nothing. For
    /// writes that take a plan (merge, scd2, which join it with the target); the others
    /// judge their rows as they stream to the write ([`judged`]).
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
        let schema = Arc::clone(plan.schema());
        let width = schema.fields().len();
        let exprs = check_columns(state, &schema, &schema, checks.rules)?;
        let projected = with_checks(plan, exprs)?;
        let batches = DataFrame::new(state.clone(), projected).collect().await?;
        // The batches' own types (a scan may produce view types the plan does not name).
        let out_schema: SchemaRef = match batches.first() {
            Some(b) => Arc::new(b.schema().project(&(0..width).collect::<Vec<_>>())?),
            None => Arc::new(schema.as_arrow().clone()),
        };
        let data: Vec<usize> = (0..width)
            .filter(|&i| !internal(out_schema.field(i).name()))
            .collect();
        let mut judge = self
            .start_judging(principal, access, checks, t, progress, &out_schema, data)
            .await?;
        let mut kept = Vec::with_capacity(batches.len());
        // Consumed batch by batch: each output batch is freed once its rows are routed, so
        // the kept copy never doubles the batch's memory.
        for b in batches {
            kept.push(judge.batch(b)?);
        }
        let quality = self
            .finish_judging(principal, access, judge, t, progress)
            .await?;
        if quality.refused.is_some() {
            return Ok((LogicalPlanBuilder::empty(false).build()?, quality));
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

    /// A judge of `t`'s model output (`schema`: its columns, each batch then carrying one
    /// boolean per rule after them) for the batch committing `progress`; after a crash between the batch's two commits
    /// it holds the rows the quarantine already has, to leave them out.
    #[allow(clippy::too_many_arguments)]
    pub(super) async fn start_judging(
        &self,
        principal: &Arc<Principal>,
        access: &Arc<AccessControl>,
        checks: &Checks<'_>,
        t: &TableRef,
        progress: &Progress,
        schema: &Schema,
        data: Vec<usize>,
    ) -> Result<Judge> {
        let rules = checks.rules;
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
        // Rows the quarantine already holds for this batch (recovery).
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
            Some(Held::new(schema, &data, &taken)?)
        } else {
            None
        };
        let width = schema.fields().len();
        Ok(Judge {
            rules: rules.to_vec(),
            run_id: checks.run_id.to_string(),
            now: checks.now,
            room: checks.quarantine_room,
            width,
            q_schema: quarantine_schema(&schema.project(&data)?),
            data,
            recovering,
            held,
            key,
            total: 0,
            quality,
            quarantined: Vec::new(),
        })
    }

    /// Refusals (a `fail` rule with any violation, any rule past its `fail_if`), then the
    /// quarantined rows committed to `t`'s quarantine with `progress`, before the target's
    /// commit (see the module docs). A refused batch commits nothing.
    pub(super) async fn finish_judging(
        &self,
        principal: &Arc<Principal>,
        access: &Arc<AccessControl>,
        judge: Judge,
        t: &TableRef,
        progress: &Progress,
    ) -> Result<BatchQuality> {
        let Judge {
            rules,
            total,
            mut quality,
            quarantined,
            q_schema,
            ..
        } = judge;
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
                return Ok(quality);
            }
        }
        if !quarantined.is_empty() {
            let qt = t.quarantine()?;
            self.commit_quarantine(principal, access, &qt, t, &q_schema, quarantined, progress)
                .await?;
        }
        Ok(quality)
    }
}
