//! Column lineage of a write, from its optimized DataFusion logical plan.
//!
//! The plan is walked bottom-up keeping, for every node, one entry per output position: the
//! physical `(table, column)` sources behind that column. Positions, never names: a column
//! reference resolves to its child position through `DFSchema::maybe_index_of_column`, with
//! qualifiers exactly as DataFusion scopes them, so aliases, CTEs and self-joins can neither
//! collide nor invent a table. (The design of `datafusion-openlineage` 0.0.12, which we read
//! and did not adopt: it resolves columns only under DataFusion's own DML/DDL roots, which our
//! writes never plan, knows nothing of column masks, and has no CONDITIONAL.)
//!
//! Every edge carries an OpenLineage transformation: DIRECT (IDENTITY, TRANSFORMATION,
//! AGGREGATION) when the source value reaches the output column; INDIRECT when it only
//! decides which rows or values appear: CONDITIONAL on the one output column whose CASE
//! tests it, JOIN / FILTER / GROUP_BY / SORT / WINDOW on the whole output (no output column).
//! `masking` marks edges from a column the writer read through a column mask.
//!
//! Whatever cannot be resolved soundly (a subquery expression the optimizer kept, a
//! recursive CTE, an extension node) drops the *column* lineage of the whole statement
//! (`complete: false`) rather than publish a partial map that looks complete; the tables
//! read are still listed. Nothing here carries literals: row-filter and predicate text never
//! enters a record, only the column names they reference.

use std::collections::{BTreeMap, BTreeSet};

use datafusion::common::DFSchema;
use datafusion::common::tree_node::TreeNodeRecursion;
use datafusion::logical_expr::{Expr, LogicalPlan};
use serde::{Deserialize, Serialize};

use crate::storage::TableRef;

mod plan;
mod writes;

use plan::{expr_col, merge_indirect, policy_scan, resolve};
pub(crate) use writes::{of_delete, of_merge, of_rows, of_scd2, of_update};

/// An OpenLineage transformation subtype; its type (DIRECT / INDIRECT) follows from it.
#[derive(
    Debug,
    Clone,
    Copy,
    PartialEq,
    Eq,
    PartialOrd,
    Ord,
    Hash,
    Serialize,
    Deserialize,
    utoipa::ToSchema,
)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum Subtype {
    Identity,
    Transformation,
    Aggregation,
    Join,
    Filter,
    GroupBy,
    Sort,
    Window,
    Conditional,
}

impl Subtype {
    /// `DIRECT` or `INDIRECT`.
    pub fn kind(self) -> &'static str {
        match self {
            Subtype::Identity | Subtype::Transformation | Subtype::Aggregation => "DIRECT",
            _ => "INDIRECT",
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Subtype::Identity => "IDENTITY",
            Subtype::Transformation => "TRANSFORMATION",
            Subtype::Aggregation => "AGGREGATION",
            Subtype::Join => "JOIN",
            Subtype::Filter => "FILTER",
            Subtype::GroupBy => "GROUP_BY",
            Subtype::Sort => "SORT",
            Subtype::Window => "WINDOW",
            Subtype::Conditional => "CONDITIONAL",
        }
    }
}

/// A physical column of a table a write read.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub(crate) struct Source {
    pub(crate) table: TableRef,
    pub(crate) column: String,
}

type Indirect = BTreeMap<Source, BTreeSet<Subtype>>;

/// The sources of one output column: the strongest DIRECT kind per source (IDENTITY <
/// TRANSFORMATION < AGGREGATION), and the INDIRECT ones that decide its value (a CASE's
/// conditions; the filters inside a scalar subquery it reads).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
struct Col {
    direct: BTreeMap<Source, Subtype>,
    indirect: Indirect,
}

impl Col {
    fn single(source: Source) -> Col {
        Col {
            direct: BTreeMap::from([(source, Subtype::Identity)]),
            indirect: Indirect::new(),
        }
    }

    fn merge(&mut self, other: &Col) {
        for (s, kind) in &other.direct {
            self.direct
                .entry(s.clone())
                .and_modify(|k| *k = (*k).max(*kind))
                .or_insert(*kind);
        }
        merge_indirect(&mut self.indirect, &other.indirect);
    }

    /// Every DIRECT kind raised to at least `min`.
    fn upgraded(mut self, min: Subtype) -> Col {
        for k in self.direct.values_mut() {
            *k = (*k).max(min);
        }
        self
    }

    /// Every source, whatever its role: what a predicate or key over this value touches.
    fn all(&self) -> impl Iterator<Item = &Source> {
        self.direct.keys().chain(self.indirect.keys())
    }

    /// `sources` decide this value as `kind`.
    fn decided_by<'a>(&mut self, sources: impl Iterator<Item = &'a Source>, kind: Subtype) {
        for s in sources {
            self.indirect.entry(s.clone()).or_default().insert(kind);
        }
    }
}

/// One plan node's output: a [`Col`] per schema position, and what shaped its rows.
#[derive(Debug, Clone, Default)]
struct Node {
    columns: Vec<Col>,
    indirect: Indirect,
}

/// Why column lineage was given up (logged; the record says `complete: false`).
type Degraded = &'static str;

/// A table a write read, at the version it read.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct Input {
    pub(crate) table: TableRef,
    pub(crate) version: u64,
}

/// One edge of a write's lineage: from `column` of input `input` (an index into the
/// record's inputs) to output column `output`, or to the whole output (`None`: INDIRECT
/// JOIN / FILTER / GROUP_BY / SORT / WINDOW).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub(crate) struct Edge {
    #[serde(rename = "o", default, skip_serializing_if = "Option::is_none")]
    pub(crate) output: Option<String>,
    #[serde(rename = "i")]
    pub(crate) input: usize,
    #[serde(rename = "c")]
    pub(crate) column: String,
    #[serde(rename = "t")]
    pub(crate) subtype: Subtype,
    #[serde(rename = "m", default, skip_serializing_if = "std::ops::Not::not")]
    pub(crate) masking: bool,
}

/// The lineage of one write, as its commit carries it (commit info `strata.lineage`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct LineageRecord {
    /// The job: `model <layer.name>`, or the kind of ad-hoc write (`INSERT`, `MERGE`, …).
    pub(crate) job: String,
    pub(crate) inputs: Vec<Input>,
    pub(crate) edges: Vec<Edge>,
    /// False when column lineage could not be resolved soundly: `edges` is empty and only
    /// the tables read are known.
    #[serde(default = "yes", skip_serializing_if = "is_true")]
    pub(crate) complete: bool,
}

fn yes() -> bool {
    true
}

fn is_true(b: &bool) -> bool {
    *b
}

/// Records above this many edges keep the tables read and drop the columns: the record
/// travels in every reader's log replay.
const MAX_EDGES: usize = 4096;

/// Column lineage being assembled for one write (a plan's output columns, then whatever the
/// write adds: MERGE clauses, the writer's row filter).
#[derive(Debug, Clone, Default)]
pub(crate) struct Lineage {
    inputs: BTreeMap<TableRef, u64>,
    masked: BTreeSet<Source>,
    fields: BTreeMap<String, Col>,
    indirect: Indirect,
    degraded: Option<Degraded>,
}

impl Lineage {
    /// The lineage of `plan` (optimized by the caller), its output columns named by its
    /// schema.
    pub(crate) fn of_plan(plan: &LogicalPlan) -> Lineage {
        let mut out = Lineage::default();
        out.read_inputs(plan);
        match resolve(plan) {
            Ok(node) => {
                for ((_, field), col) in plan.schema().iter().zip(node.columns) {
                    out.fields
                        .entry(field.name().clone())
                        .or_default()
                        .merge(&col);
                }
                out.indirect = node.indirect;
            }
            Err(why) => out.degrade(why),
        }
        out
    }

    /// Tables read, with their versions and the columns masked for the reader (subqueries
    /// included).
    fn read_inputs(&mut self, plan: &LogicalPlan) {
        let _ = plan.apply_with_subqueries(|node| {
            if let LogicalPlan::TableScan(scan) = node
                && let Some((table, version, masked)) = policy_scan(&scan.source)
            {
                self.inputs.insert(table.clone(), version);
                let schema = scan.source.schema();
                for i in masked {
                    self.masked.insert(Source {
                        table: table.clone(),
                        column: schema.field(i).name().clone(),
                    });
                }
            }
            Ok(TreeNodeRecursion::Continue)
        });
    }

    fn degrade(&mut self, why: Degraded) {
        tracing::debug!(why, "column lineage not resolved; tables only");
        self.degraded.get_or_insert(why);
        self.fields.clear();
        self.indirect.clear();
    }

    /// The sources of output column `output`.
    pub(crate) fn sources_of(&self, output: &str) -> Option<LineageExpr> {
        self.fields.get(output).map(|c| LineageExpr(c.clone()))
    }

    /// Adds `sources` to output column `output` (a MERGE assignment, an SCD2 column).
    pub(crate) fn assign(&mut self, output: &str, sources: &LineageExpr) {
        self.fields
            .entry(output.to_string())
            .or_default()
            .merge(&sources.0);
    }

    /// Every source of `sources` shapes the whole output as `subtype` (a MERGE's ON, an
    /// UPDATE's WHERE, the writer's row filter).
    pub(crate) fn shaped_by(&mut self, sources: &LineageExpr, subtype: Subtype) {
        for s in sources.0.all() {
            self.indirect.entry(s.clone()).or_default().insert(subtype);
        }
    }

    /// Merges the inputs and indirect influences of another plan's lineage (a MERGE's
    /// source) into this one; its fields are looked up with [`Lineage::sources_of`].
    pub(crate) fn absorb_inputs(&mut self, other: &Lineage) {
        self.inputs
            .extend(other.inputs.iter().map(|(t, v)| (t.clone(), *v)));
        self.masked.extend(other.masked.iter().cloned());
        for (s, kinds) in &other.indirect {
            self.indirect
                .entry(s.clone())
                .or_default()
                .extend(kinds.iter().copied());
        }
        if let Some(why) = other.degraded {
            self.degrade(why);
        }
    }

    /// The target's own columns as sources (an UPDATE's `SET x = x + 1` reads the target).
    pub(crate) fn read_target(&mut self, t: &TableRef, version: u64) {
        self.inputs.entry(t.clone()).or_insert(version);
    }

    /// Resolves `expr` (planned over `schema`) to its sources: `columns` gives the sources
    /// of each schema position. `None` when it cannot be resolved soundly.
    pub(crate) fn expression(
        &mut self,
        expr: &Expr,
        schema: &DFSchema,
        columns: &[LineageExpr],
    ) -> Option<LineageExpr> {
        let cols: Vec<Col> = columns.iter().map(|c| c.0.clone()).collect();
        match expr_col(expr, schema, &cols, Subtype::Identity) {
            Ok(c) => Some(LineageExpr(c)),
            Err(why) => {
                self.degrade(why);
                None
            }
        }
    }

    /// The record a commit carries.
    pub(crate) fn record(&self, job: impl Into<String>) -> LineageRecord {
        let inputs: Vec<Input> = self
            .inputs
            .iter()
            .map(|(t, v)| Input {
                table: t.clone(),
                version: *v,
            })
            .collect();
        let index = |t: &TableRef| inputs.iter().position(|i| &i.table == t);
        let mut edges = Vec::new();
        let mut push = |output: Option<&String>, s: &Source, subtype: Subtype| {
            if let Some(input) = index(&s.table) {
                edges.push(Edge {
                    output: output.cloned(),
                    input,
                    column: s.column.clone(),
                    subtype,
                    masking: self.masked.contains(s),
                });
            }
        };
        for (name, col) in &self.fields {
            for (s, kind) in &col.direct {
                push(Some(name), s, *kind);
            }
            for (s, kinds) in &col.indirect {
                for kind in kinds {
                    push(Some(name), s, *kind);
                }
            }
        }
        for (s, kinds) in &self.indirect {
            for kind in kinds {
                push(None, s, *kind);
            }
        }
        edges.sort();
        edges.dedup();
        let complete = self.degraded.is_none() && edges.len() <= MAX_EDGES;
        if !complete {
            edges.clear();
        }
        LineageRecord {
            job: job.into(),
            inputs,
            edges,
            complete,
        }
    }
}

/// The sources of one expression or column, opaque outside this module.
#[derive(Debug, Clone, Default)]
pub(crate) struct LineageExpr(Col);

impl LineageExpr {
    /// A column of `t` itself (an UPDATE or MERGE reading its target).
    pub(crate) fn column_of(t: &TableRef, column: &str) -> LineageExpr {
        LineageExpr(Col::single(Source {
            table: t.clone(),
            column: column.to_string(),
        }))
    }

    /// The same sources, at least TRANSFORMATION (a value computed from them).
    pub(crate) fn transformed(self) -> LineageExpr {
        LineageExpr(self.0.upgraded(Subtype::Transformation))
    }

    /// The same sources as CONDITIONAL influences only (a column that decides whether a
    /// value changes, e.g. SCD2's tracked columns).
    pub(crate) fn into_condition(self) -> LineageExpr {
        let mut out = Col::default();
        out.decided_by(self.0.all(), Subtype::Conditional);
        LineageExpr(out)
    }

    pub(crate) fn merge(&mut self, other: &LineageExpr) {
        self.0.merge(&other.0);
    }
}
