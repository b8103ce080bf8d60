//! The positional walk of a plan (see the module docs): every node's output positions to
//! their sources.

use std::collections::BTreeSet;
use std::sync::Arc;

use datafusion::common::tree_node::{TreeNode, TreeNodeRecursion};
use datafusion::common::{Column, DFSchema};
use datafusion::datasource::source_as_provider;
use datafusion::logical_expr::utils::grouping_set_to_exprlist;
use datafusion::logical_expr::{Distinct, Expr, JoinType, LogicalPlan, TableSource};

use super::{Col, Degraded, Indirect, Node, Source, Subtype};
use crate::security::policy::PolicyTable;
use crate::storage::TableRef;

/// The table behind a scan's source, with the version it reads and the positions of the
/// columns masked for the reader: every table read is a [`PolicyTable`]; anything else
/// (information_schema, rows held in memory) reads no table.
pub(super) fn policy_scan(source: &Arc<dyn TableSource>) -> Option<(TableRef, u64, Vec<usize>)> {
    let provider = source_as_provider(source).ok()?;
    let any: &dyn std::any::Any = provider.as_ref();
    let t = any.downcast_ref::<PolicyTable>()?;
    Some((t.table().clone(), t.version(), t.masked_columns().collect()))
}

/// Nesting the walk follows (plan nodes plus expression levels) before it gives up: statements
/// are refused past 128 levels of expression (`engine::sql::guards`), so only text parsed
/// elsewhere (REST MERGE conditions) could go deeper, and a stack overflow aborts the
/// process.
const MAX_DEPTH: usize = 512;

thread_local! {
    static DEPTH: std::cell::Cell<usize> = const { std::cell::Cell::new(0) };
}

/// One level of the (synchronous, recursive) walk on this thread.
struct Depth;

impl Depth {
    fn enter() -> Result<Depth, Degraded> {
        let d = DEPTH.with(|d| {
            d.set(d.get() + 1);
            d.get()
        });
        let guard = Depth;
        if d > MAX_DEPTH {
            return Err("nested too deep");
        }
        Ok(guard)
    }
}

impl Drop for Depth {
    fn drop(&mut self) {
        DEPTH.with(|d| d.set(d.get().saturating_sub(1)));
    }
}

/// Bottom-up positional resolution of a relational node.
pub(super) fn resolve(plan: &LogicalPlan) -> Result<Node, Degraded> {
    let _depth = Depth::enter()?;
    let node = match plan {
        LogicalPlan::TableScan(scan) => {
            let Some((table, _, _)) = policy_scan(&scan.source) else {
                // information_schema and rows held in memory: no table behind them.
                return Ok(Node {
                    columns: vec![Col::default(); scan.projected_schema.fields().len()],
                    indirect: Indirect::new(),
                });
            };
            let schema = scan.source.schema();
            let source = |i: usize| Source {
                table: table.clone(),
                column: schema.field(i).name().clone(),
            };
            let columns = (0..scan.projected_schema.fields().len())
                .map(|i| Col::single(source(scan.projection.as_ref().map_or(i, |p| p[i]))))
                .collect();
            // Filters pushed into the scan may name columns it does not project.
            let mut indirect = Indirect::new();
            for filter in &scan.filters {
                if hides_sources(filter) {
                    return Err("subquery in a pushed-down filter");
                }
                for c in filter.column_refs() {
                    let i = schema
                        .index_of(&c.name)
                        .map_err(|_| "pushed-down filter column not in the table")?;
                    indirect
                        .entry(source(i))
                        .or_default()
                        .insert(Subtype::Filter);
                }
            }
            Node { columns, indirect }
        }
        LogicalPlan::Projection(p) => {
            let child = resolve(&p.input)?;
            let columns = p
                .expr
                .iter()
                .map(|e| expr_col(e, p.input.schema(), &child.columns, Subtype::Identity))
                .collect::<Result<_, _>>()?;
            Node {
                columns,
                indirect: child.indirect,
            }
        }
        LogicalPlan::SubqueryAlias(a) => resolve(&a.input)?,
        LogicalPlan::Filter(f) => {
            let mut child = resolve(&f.input)?;
            let refs = referenced(&f.predicate, f.input.schema(), &child.columns)?;
            add(&mut child.indirect, refs, Subtype::Filter);
            child
        }
        LogicalPlan::Aggregate(agg) => {
            let child = resolve(&agg.input)?;
            let groups = grouping_set_to_exprlist(&agg.group_expr)
                .map_err(|_| "unsupported grouping set")?;
            let mut columns = Vec::with_capacity(agg.schema.fields().len());
            let mut indirect = child.indirect.clone();
            for g in &groups {
                let col = expr_col(g, agg.input.schema(), &child.columns, Subtype::Identity)?;
                add(
                    &mut indirect,
                    col.all().cloned().collect(),
                    Subtype::GroupBy,
                );
                columns.push(col);
            }
            // Grouping sets add `__grouping_id` after the keys: derived from no value.
            if matches!(agg.group_expr.as_slice(), [Expr::GroupingSet(_)]) {
                columns.push(Col::default());
            }
            for e in &agg.aggr_expr {
                columns.push(expr_col(
                    e,
                    agg.input.schema(),
                    &child.columns,
                    Subtype::Aggregation,
                )?);
            }
            Node { columns, indirect }
        }
        LogicalPlan::Join(join) => {
            let left = resolve(&join.left)?;
            let right = resolve(&join.right)?;
            let mut indirect = left.indirect.clone();
            merge_indirect(&mut indirect, &right.indirect);
            for (l, r) in &join.on {
                add(
                    &mut indirect,
                    referenced(l, join.left.schema(), &left.columns)?,
                    Subtype::Join,
                );
                add(
                    &mut indirect,
                    referenced(r, join.right.schema(), &right.columns)?,
                    Subtype::Join,
                );
            }
            if let Some(filter) = &join.filter {
                if hides_sources(filter) {
                    return Err("subquery in a join filter");
                }
                for c in filter.column_refs() {
                    let col = if let Some(i) = join.left.schema().maybe_index_of_column(c) {
                        &left.columns[i]
                    } else if let Some(i) = join.right.schema().maybe_index_of_column(c) {
                        &right.columns[i]
                    } else {
                        return Err("join filter column on neither side");
                    };
                    add(&mut indirect, col.all().cloned().collect(), Subtype::Join);
                }
            }
            let mark = std::iter::once(Col::default());
            let columns: Vec<Col> = match join.join_type {
                JoinType::Inner | JoinType::Left | JoinType::Right | JoinType::Full => {
                    left.columns.into_iter().chain(right.columns).collect()
                }
                JoinType::LeftSemi | JoinType::LeftAnti => left.columns,
                JoinType::RightSemi | JoinType::RightAnti => right.columns,
                JoinType::LeftMark => left.columns.into_iter().chain(mark).collect(),
                JoinType::RightMark => right.columns.into_iter().chain(mark).collect(),
            };
            Node { columns, indirect }
        }
        LogicalPlan::Union(union) => {
            let mut columns = vec![Col::default(); union.schema.fields().len()];
            let mut indirect = Indirect::new();
            for input in &union.inputs {
                let child = resolve(input)?;
                if child.columns.len() != columns.len() {
                    return Err("union input arity differs");
                }
                for (m, c) in columns.iter_mut().zip(&child.columns) {
                    m.merge(c);
                }
                merge_indirect(&mut indirect, &child.indirect);
            }
            Node { columns, indirect }
        }
        LogicalPlan::Sort(sort) => {
            let mut child = resolve(&sort.input)?;
            for s in &sort.expr {
                let refs = referenced(&s.expr, sort.input.schema(), &child.columns)?;
                add(&mut child.indirect, refs, Subtype::Sort);
            }
            child
        }
        // Skip and fetch are literals: which rows by position is no column's influence.
        LogicalPlan::Limit(l) => resolve(&l.input)?,
        LogicalPlan::Repartition(r) => resolve(&r.input)?,
        LogicalPlan::Distinct(Distinct::All(input)) => resolve(input)?,
        LogicalPlan::Distinct(Distinct::On(d)) => {
            let child = resolve(&d.input)?;
            let mut indirect = child.indirect.clone();
            for e in &d.on_expr {
                let refs = referenced(e, d.input.schema(), &child.columns)?;
                add(&mut indirect, refs, Subtype::GroupBy);
            }
            for s in d.sort_expr.iter().flatten() {
                let refs = referenced(&s.expr, d.input.schema(), &child.columns)?;
                add(&mut indirect, refs, Subtype::Sort);
            }
            let columns = d
                .select_expr
                .iter()
                .map(|e| expr_col(e, d.input.schema(), &child.columns, Subtype::Identity))
                .collect::<Result<_, _>>()?;
            Node { columns, indirect }
        }
        LogicalPlan::Window(w) => {
            let child = resolve(&w.input)?;
            let mut columns = child.columns.clone();
            let mut indirect = child.indirect.clone();
            for e in &w.window_expr {
                let inner = unalias(e);
                if let Expr::WindowFunction(wf) = inner {
                    let mut col = Col::default();
                    for arg in &wf.params.args {
                        col.merge(&expr_col(
                            arg,
                            w.input.schema(),
                            &child.columns,
                            Subtype::Aggregation,
                        )?);
                    }
                    for key in wf
                        .params
                        .partition_by
                        .iter()
                        .chain(wf.params.order_by.iter().map(|s| &s.expr))
                    {
                        let refs = referenced(key, w.input.schema(), &child.columns)?;
                        add(&mut indirect, refs, Subtype::Window);
                    }
                    columns.push(col);
                } else {
                    columns.push(expr_col(
                        inner,
                        w.input.schema(),
                        &child.columns,
                        Subtype::Transformation,
                    )?);
                }
            }
            Node { columns, indirect }
        }
        LogicalPlan::Unnest(u) => {
            let child = resolve(&u.input)?;
            let unnested: BTreeSet<usize> = u
                .list_type_columns
                .iter()
                .map(|(i, _)| *i)
                .chain(u.struct_type_columns.iter().copied())
                .collect();
            let columns = u
                .dependency_indices
                .iter()
                .map(|&dep| {
                    let col = child.columns.get(dep).cloned()?;
                    Some(if unnested.contains(&dep) {
                        col.upgraded(Subtype::Transformation)
                    } else {
                        col
                    })
                })
                .collect::<Option<_>>()
                .ok_or("unnest dependency out of range")?;
            Node {
                columns,
                indirect: child.indirect,
            }
        }
        // Literal rows have no provenance.
        LogicalPlan::Values(v) => Node {
            columns: vec![Col::default(); v.schema.fields().len()],
            indirect: Indirect::new(),
        },
        LogicalPlan::EmptyRelation(e) => Node {
            columns: vec![Col::default(); e.schema.fields().len()],
            indirect: Indirect::new(),
        },
        // A surviving Subquery (decorrelation failed), a recursive CTE (its work table would
        // read as a table of its own name), extension nodes: not resolved.
        _ => return Err("plan node without column lineage"),
    };
    if node.columns.len() != plan.schema().fields().len() {
        return Err("resolved arity differs from the node's schema");
    }
    Ok(node)
}

/// The sources of one expression over `schema`, whose positions have `columns`. A bare
/// column (through aliases) keeps its sources' kinds, so identity survives projections;
/// anything computed is at least TRANSFORMATION; `min` raises the floor (AGGREGATION for
/// aggregate and window arguments). A CASE's conditions are CONDITIONAL sources of its value.
pub(super) fn expr_col(
    expr: &Expr,
    schema: &DFSchema,
    columns: &[Col],
    min: Subtype,
) -> Result<Col, Degraded> {
    let _depth = Depth::enter()?;
    let inner = unalias(expr);
    match inner {
        Expr::Column(c) => Ok(column(c, schema, columns)?.clone().upgraded(min)),
        Expr::Literal(..) | Expr::Placeholder(_) => Ok(Col::default()),
        // A scalar subquery's value flows in (what it read, and its filters decide it);
        // EXISTS / IN only decide whether the row qualifies. Correlated ones (left when
        // the optimizer could not decorrelate them) are not resolved.
        Expr::ScalarSubquery(q) => {
            let node = subquery(q)?;
            let mut out = node
                .columns
                .into_iter()
                .next()
                .ok_or("scalar subquery without a column")?
                .upgraded(min.max(Subtype::Transformation));
            merge_indirect(&mut out.indirect, &node.indirect);
            Ok(out)
        }
        Expr::Exists(e) => {
            let node = subquery(&e.subquery)?;
            let mut out = Col::default();
            for c in &node.columns {
                out.decided_by(c.all(), Subtype::Filter);
            }
            out.decided_by(node.indirect.keys(), Subtype::Filter);
            Ok(out)
        }
        Expr::InSubquery(e) => {
            let node = subquery(&e.subquery)?;
            let mut out = expr_col(&e.expr, schema, columns, Subtype::Identity)?;
            let values: Vec<Source> = out.all().cloned().collect();
            out.direct.clear();
            out.decided_by(values.iter(), Subtype::Filter);
            for c in &node.columns {
                out.decided_by(c.all(), Subtype::Filter);
            }
            out.decided_by(node.indirect.keys(), Subtype::Filter);
            Ok(out)
        }
        Expr::SetComparison(_) | Expr::OuterReferenceColumn(..) => Err("correlated subquery"),
        Expr::Case(case) => {
            let floor = min.max(Subtype::Transformation);
            let mut out = Col::default();
            let mut conditions = Vec::new();
            if let Some(base) = &case.expr {
                conditions.push(expr_col(base, schema, columns, floor)?);
            }
            for (when, then) in &case.when_then_expr {
                conditions.push(expr_col(when, schema, columns, floor)?);
                out.merge(&expr_col(then, schema, columns, floor)?);
            }
            if let Some(e) = &case.else_expr {
                out.merge(&expr_col(e, schema, columns, floor)?);
            }
            for c in conditions {
                out.decided_by(c.all(), Subtype::Conditional);
            }
            Ok(out.upgraded(floor))
        }
        Expr::AggregateFunction(agg) => {
            let floor = min.max(Subtype::Aggregation);
            let mut out = Col::default();
            for arg in &agg.params.args {
                out.merge(&expr_col(arg, schema, columns, floor)?);
            }
            if let Some(filter) = &agg.params.filter {
                let c = expr_col(filter, schema, columns, floor)?;
                out.decided_by(c.all(), Subtype::Conditional);
            }
            Ok(out.upgraded(floor))
        }
        other => {
            let floor = min.max(Subtype::Transformation);
            let mut out = Col::default();
            let mut failed = None;
            let _ = other.apply_children(|child| {
                match expr_col(child, schema, columns, floor) {
                    Ok(c) => out.merge(&c),
                    Err(why) => failed = Some(why),
                }
                Ok(if failed.is_some() {
                    TreeNodeRecursion::Stop
                } else {
                    TreeNodeRecursion::Continue
                })
            });
            match failed {
                Some(why) => Err(why),
                None => Ok(out.upgraded(floor)),
            }
        }
    }
}

/// An uncorrelated subquery's plan, resolved on its own.
fn subquery(q: &datafusion::logical_expr::Subquery) -> Result<Node, Degraded> {
    if !q.outer_ref_columns.is_empty() {
        return Err("correlated subquery");
    }
    resolve(&q.subquery)
}

fn column<'a>(c: &Column, schema: &DFSchema, columns: &'a [Col]) -> Result<&'a Col, Degraded> {
    schema
        .maybe_index_of_column(c)
        .and_then(|i| columns.get(i))
        .ok_or("column reference not in the input")
}

/// Every source an expression touches (for predicates and keys, where its shape does not
/// matter).
fn referenced(expr: &Expr, schema: &DFSchema, columns: &[Col]) -> Result<Vec<Source>, Degraded> {
    Ok(expr_col(expr, schema, columns, Subtype::Identity)?
        .all()
        .cloned()
        .collect())
}

fn add(indirect: &mut Indirect, sources: Vec<Source>, kind: Subtype) {
    for s in sources {
        indirect.entry(s).or_default().insert(kind);
    }
}

pub(super) fn merge_indirect(into: &mut Indirect, from: &Indirect) {
    for (s, kinds) in from {
        into.entry(s.clone())
            .or_default()
            .extend(kinds.iter().copied());
    }
}

/// `expr` without aliases and casts: a cast keeps the value (an INSERT casts every column to
/// its target type), so a cast column is still IDENTITY.
fn unalias(expr: &Expr) -> &Expr {
    let mut e = expr;
    loop {
        e = match e {
            Expr::Alias(a) => &a.expr,
            Expr::Cast(c) => &c.expr,
            Expr::TryCast(c) => &c.expr,
            _ => return e,
        };
    }
}

/// Whether `expr` hides table reads inside a subquery (whose columns `column_refs` misses).
fn hides_sources(expr: &Expr) -> bool {
    expr.exists(|e| {
        Ok(matches!(
            e,
            Expr::Exists(_)
                | Expr::InSubquery(_)
                | Expr::ScalarSubquery(_)
                | Expr::SetComparison(_)
                | Expr::OuterReferenceColumn(..)
        ))
    })
    .unwrap_or(true)
}
