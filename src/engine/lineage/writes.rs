//! The writes: what each one's commit carries, and its OpenLineage run.

use std::future::Future;

use arrow::datatypes::Schema;
use datafusion::common::DFSchema;
use datafusion::execution::context::SessionState;
use datafusion::logical_expr::{Expr, LogicalPlan};

use super::{Lineage, LineageExpr, LineageRecord, Subtype};
use crate::engine::Engine;
use crate::engine::openlineage::{LineageRun, OutputDoc, Written};
use crate::error::Result;
use crate::pipelines::merge::{Action, MergeSpec};
use crate::pipelines::scd2::Scd2Spec;
use crate::storage::TableRef;
use crate::storage::commit_info::{LineageScope, RunContext};

/// The job a write belongs to: the model whose table it writes when it is part of a
/// pipeline run, else the kind of ad-hoc write.
fn job(t: &TableRef, kind: &str) -> String {
    match RunContext::current() {
        Some(_) => format!("model {}", t.governing()),
        None => kind.to_string(),
    }
}

impl Engine {
    /// `[lineage] enabled`.
    pub(crate) fn lineage_enabled(&self) -> bool {
        self.lineage_enabled
    }

    /// `extract()`, unless lineage is off (`[lineage] enabled = false`).
    pub(crate) fn lineage(&self, extract: impl FnOnce() -> Lineage) -> Lineage {
        if self.lineage_enabled {
            extract()
        } else {
            Lineage::default()
        }
    }

    /// Runs `write` with `lineage` attached to its commits of `t` (and of `t`'s quarantine):
    /// the edges travel in that commit's own commit info, never a commit of their own. Its
    /// OpenLineage run starts before and ends after it (COMPLETE, FAIL, or ABORT when the
    /// write is dropped). A write nested in another to the same table (a merge model's
    /// MERGE inside its batch) only replaces the record: one commit, one run.
    pub(crate) async fn attached<T: Written + Send + Sync, F: Future<Output = Result<T>>>(
        &self,
        t: &TableRef,
        kind: &str,
        lineage: &Lineage,
        sql: Option<String>,
        write: F,
    ) -> Result<T> {
        if !self.lineage_enabled {
            return Box::pin(write).await;
        }
        let record = lineage.record(job(t, kind));
        let value = serde_json::to_value(&record).unwrap_or_default();
        // Boxed: a model's batch nests several writes' futures, too deep for a worker's
        // stack in a debug build otherwise.
        let write = Box::pin(write);
        if let Some(outer) = LineageScope::current_for(t) {
            outer.replace(value);
            return write.await;
        }
        let scope = LineageScope::new(t.clone(), value);
        let run = LineageRun::start(self.openlineage(), t, &record, sql);
        let result = scope.clone().scope(write).await;
        let Some(mut run) = run else {
            return result;
        };
        let doc = match &result {
            Ok(_) => self.output_doc(t).await,
            Err(_) => OutputDoc::default(),
        };
        match &result {
            Ok(out) => {
                if let Ok(last) = serde_json::from_value::<LineageRecord>(scope.record()) {
                    run.set_record(last);
                }
                run.complete(out, doc);
            }
            Err(e) => run.fail(&e.to_string()),
        }
        result
    }

    /// The output table's schema and description, for its COMPLETE event: from the snapshot
    /// the write left in the catalog (no storage request on the write's path; a newer
    /// snapshot another writer left describes the table as it now is, which is as good).
    async fn output_doc(&self, t: &TableRef) -> OutputDoc {
        let Some(table) = self.catalog().cached(t).await else {
            return OutputDoc::default();
        };
        let Ok(snapshot) = table.snapshot() else {
            return OutputDoc::default();
        };
        OutputDoc {
            schema: Some(snapshot.snapshot().arrow_schema()),
            description: snapshot
                .metadata()
                .description()
                .filter(|d| !d.is_empty())
                .map(str::to_string),
        }
    }
}

/// The lineage of a write of `plan`'s rows (CTAS, INSERT, a model), from the plan as
/// `state` optimizes it.
pub(crate) fn of_rows(state: &SessionState, plan: &LogicalPlan) -> Lineage {
    match state.optimize(plan) {
        Ok(optimized) => Lineage::of_plan(&optimized),
        Err(_) => {
            let mut out = Lineage::default();
            out.read_inputs(plan);
            out.degrade("the plan did not optimize");
            out
        }
    }
}

impl Lineage {
    /// The writer's row filter on the target decides which rows it may change: INDIRECT
    /// FILTER edges from the columns it names (never its text or bound values).
    pub(crate) fn filtered_by_writer(
        mut self,
        t: &TableRef,
        version: u64,
        filter: Option<&Expr>,
    ) -> Lineage {
        let Some(filter) = filter else { return self };
        self.read_target(t, version);
        for c in filter.column_refs() {
            self.shaped_by(&LineageExpr::column_of(t, &c.name), Subtype::Filter);
        }
        self
    }
}

/// The target's columns as sources, over `schema` qualified by `alias` (or unqualified).
fn target_scope(
    t: &TableRef,
    target: &Schema,
    alias: Option<&str>,
) -> Option<(DFSchema, Vec<LineageExpr>)> {
    let schema = match alias {
        Some(a) => DFSchema::try_from_qualified_schema(a, target).ok()?,
        None => DFSchema::try_from(target.clone()).ok()?,
    };
    let columns = target
        .fields()
        .iter()
        .map(|f| LineageExpr::column_of(t, f.name()))
        .collect();
    Some((schema, columns))
}

/// Sources of SQL text `sql` over `schema`; `None` (and the lineage degraded) when it does
/// not plan.
fn sql_sources(
    out: &mut Lineage,
    state: &SessionState,
    sql: &str,
    schema: &DFSchema,
    columns: &[LineageExpr],
) -> Option<LineageExpr> {
    // The write refuses what this refuses (with a 400) before it plans anything; lineage
    // must not be the first to parse it (a 5,000-term chain overflows the stack).
    if crate::security::expression::check_expression_text(sql).is_err() {
        out.degrade("an expression was refused");
        return None;
    }
    match state.create_logical_expr(sql, schema) {
        Ok(e) => out.expression(&e, schema, columns),
        Err(_) => {
            out.degrade("an expression did not plan");
            None
        }
    }
}

/// A MERGE of `source` (its lineage and schema) into `t`: the values its clauses write.
/// ON is an INDIRECT JOIN, a clause's condition CONDITIONAL on the columns it writes (a
/// FILTER for a DELETE clause).
pub(crate) fn of_merge(
    state: &SessionState,
    source: Lineage,
    source_schema: &Schema,
    (t, version, target): (&TableRef, u64, &Schema),
    spec: &MergeSpec,
) -> Lineage {
    let mut out = Lineage::default();
    out.absorb_inputs(&source);
    out.read_target(t, version);
    let scope = target_scope(t, target, Some(&spec.target_alias)).and_then(|(ts, mut cols)| {
        let ss =
            DFSchema::try_from_qualified_schema(spec.source_alias.as_str(), source_schema).ok()?;
        cols.extend(
            source_schema
                .fields()
                .iter()
                .map(|f| source.sources_of(f.name()).unwrap_or_default()),
        );
        Some((ts.join(&ss).ok()?, cols))
    });
    let Some((schema, cols)) = scope else {
        out.degrade("MERGE columns did not resolve");
        return out;
    };
    if let Some(on) = sql_sources(&mut out, state, &spec.on, &schema, &cols) {
        out.shaped_by(&on, Subtype::Join);
    }
    let same_name = |name: &str| {
        source_schema
            .index_of(name)
            .ok()
            .map(|i| cols[target.fields().len() + i].clone())
    };
    for clause in &spec.clauses {
        let condition = match &clause.predicate {
            Some(p) => sql_sources(&mut out, state, p, &schema, &cols),
            None => None,
        };
        let written: Vec<(String, LineageExpr)> = match &clause.action {
            Action::Delete => {
                if let Some(c) = &condition {
                    out.shaped_by(c, Subtype::Filter);
                }
                continue;
            }
            Action::Update(assignments) | Action::Insert(assignments) => assignments
                .iter()
                .filter_map(|(column, sql)| {
                    let e = sql_sources(&mut out, state, sql, &schema, &cols)?;
                    Some((column.clone(), e))
                })
                .collect(),
            Action::UpdateAll | Action::InsertAll => target
                .fields()
                .iter()
                .filter_map(|f| Some((f.name().clone(), same_name(f.name())?)))
                .collect(),
        };
        for (column, mut e) in written {
            if let Some(c) = &condition {
                e.merge(&c.clone().into_condition());
            }
            out.assign(&column, &e);
        }
    }
    out
}

/// An UPDATE of `t`: each SET column from its expression over the target, the WHERE an
/// INDIRECT FILTER.
pub(crate) fn of_update(
    state: &SessionState,
    (t, version, target): (&TableRef, u64, &Schema),
    set: &[(String, String)],
    predicate: Option<&str>,
) -> Lineage {
    let mut out = Lineage::default();
    out.read_target(t, version);
    let Some((schema, cols)) = target_scope(t, target, None) else {
        out.degrade("UPDATE columns did not resolve");
        return out;
    };
    for (column, sql) in set {
        if let Some(e) = sql_sources(&mut out, state, sql, &schema, &cols) {
            out.assign(column, &e);
        }
    }
    if let Some(p) = predicate
        && let Some(e) = sql_sources(&mut out, state, p, &schema, &cols)
    {
        out.shaped_by(&e, Subtype::Filter);
    }
    out
}

/// A DELETE from `t`: its WHERE, an INDIRECT FILTER.
pub(crate) fn of_delete(
    state: &SessionState,
    (t, version, target): (&TableRef, u64, &Schema),
    predicate: Option<&str>,
) -> Lineage {
    of_update(state, (t, version, target), &[], predicate)
}

/// SCD2 of `source` into `t`: every data column from the source column of its name; the
/// keys JOIN; the tracked columns decide (CONDITIONAL) the validity columns; the effective
/// time becomes them (TRANSFORMATION).
pub(crate) fn of_scd2(
    source: Lineage,
    source_schema: &Schema,
    (t, version, target): (&TableRef, u64, &Schema),
    spec: &Scd2Spec,
) -> Lineage {
    let mut out = Lineage::default();
    out.absorb_inputs(&source);
    out.read_target(t, version);
    let of = |name: &str| source.sources_of(name).unwrap_or_default();
    for f in source_schema.fields() {
        if target.field_with_name(f.name()).is_ok() {
            out.assign(f.name(), &of(f.name()));
        }
    }
    for key in &spec.keys {
        out.shaped_by(&of(key), Subtype::Join);
    }
    let tracked: Vec<String> = match &spec.tracked {
        Some(cols) => cols.clone(),
        None => source_schema
            .fields()
            .iter()
            .map(|f| f.name().clone())
            .filter(|n| !spec.keys.contains(n))
            .collect(),
    };
    let mut decides = LineageExpr::default();
    for c in tracked.iter().chain(&spec.deleted) {
        decides.merge(&of(c).into_condition());
    }
    if let Some(e) = &spec.effective_time {
        decides.merge(&of(e).transformed());
    }
    for column in [&spec.valid_from, &spec.valid_to, &spec.is_current] {
        out.assign(column, &decides);
    }
    out
}
