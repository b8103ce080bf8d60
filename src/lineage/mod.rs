//! Lineage as users query it: which tables and columns feed which, from what every write
//! recorded in its own commit (`engine::lineage`: CTAS, INSERT … SELECT, MERGE, SCD2,
//! UPDATE, DELETE, model batches), as a graph under access control.
//!
//! The index reads each table's commit infos once (the newest `[lineage]
//! first_scan_commits` the first time, then only commits it has not seen) and keeps the
//! records in memory; records older than `[lineage] retention_days` leave it. A model's
//! lineage is its definition now: the static lineage its deploy planned
//! (`flows::plan::StaticLineage`), until a batch committed after that deploy records its
//! own; ad-hoc writes of one kind into a table add up. The same records are
//! `system.lineage_edges` ([`edges`]).
//!
//! A node whose table the caller may not SELECT is never named: it is counted in a `{"hidden": n}` node,
//! and the edges touching it in `hidden_edges`. The walk still passes through it, so a
//! visible table two hops away stays reachable (its edges through the hidden one are
//! counted, not shown).

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Arc;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use tokio::sync::Mutex;

use crate::config::LineageConfig;
use crate::engine::Engine;
use crate::engine::lineage::{LineageRecord, Subtype};
use crate::error::{Error, Result};
use crate::flows::Flows;
use crate::security::Principal;
use crate::security::access::{AccessControl, Privilege};
use crate::storage::commit_info::{LINEAGE_KEY, RUN_ID_KEY};
use crate::storage::{Catalog, TableRef};

mod edges;

/// The deepest walk a request may ask for.
pub const MAX_DEPTH: usize = 10;

/// One write's lineage, as its commit recorded it.
#[derive(Debug, Clone)]
pub struct Observed {
    /// The table the write committed to.
    pub output: TableRef,
    pub version: u64,
    pub at: Option<DateTime<Utc>>,
    pub run_id: Option<String>,
    /// A model's static lineage: the deploy that planned it (its `version` is the model
    /// table's when planned, 0 before the table existed).
    pub deployed: Option<Deployed>,
    pub(crate) record: LineageRecord,
}

/// The deploy that planned a model's static lineage.
#[derive(Debug, Clone)]
pub struct Deployed {
    pub pipeline: String,
    pub version: u64,
    /// The model table's version then (`None`: not created yet).
    pub table_version: Option<u64>,
}

#[derive(Debug, Default)]
struct Indexed {
    /// The Delta table id: a table dropped and created again starts over.
    table_id: String,
    through: Option<u64>,
    records: Vec<Arc<Observed>>,
}

/// The lineage service: the index of commit records and the graph queries over it.
#[derive(Debug)]
pub struct LineageService {
    engine: Arc<Engine>,
    /// Where the static lineage of deployed models comes from.
    flows: Arc<Flows>,
    retention: chrono::Duration,
    first_scan_commits: u64,
    tables: Mutex<HashMap<TableRef, Indexed>>,
}

/// Which way a walk goes from its start.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum Direction {
    Upstream,
    Downstream,
    #[default]
    Both,
}

impl Direction {
    fn up(self) -> bool {
        self != Direction::Downstream
    }

    fn down(self) -> bool {
        self != Direction::Upstream
    }
}

/// A node of a lineage graph: a table (or a column of one), or the count of those the
/// caller may not see.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
#[serde(untagged)]
pub enum Node {
    Table(TableNode),
    Hidden {
        /// Nodes on the walk the caller may not see.
        hidden: usize,
    },
}

#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct TableNode {
    /// `layer.name`, or `layer.name.column` in a column graph.
    pub id: String,
    pub table: String,
    /// The column (column graphs); absent for a whole table (and for edges into every
    /// column of it: INDIRECT JOIN, FILTER, …).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub column: Option<String>,
    /// The table's (or column's) description, from its Delta metadata.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
    /// Hops from the start (0 for the start).
    pub depth: usize,
}

/// An edge between two visible nodes.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct Edge {
    pub from: String,
    pub to: String,
    /// Jobs that wrote it: `model <layer.name>`, or the kind of ad-hoc write.
    pub jobs: Vec<String>,
    /// Column graphs: the OpenLineage transformations.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub transformations: Vec<Transformation>,
    /// The output table's version of the latest write that made it.
    pub version: u64,
    pub observed_at: Option<DateTime<Utc>>,
}

#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Serialize, utoipa::ToSchema)]
pub struct Transformation {
    /// `DIRECT` or `INDIRECT`.
    #[serde(rename = "type")]
    pub kind: &'static str,
    pub subtype: Subtype,
    /// The input was read through a column mask.
    pub masking: bool,
}

#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct LineageGraph {
    pub nodes: Vec<Node>,
    pub edges: Vec<Edge>,
    /// Edges with an end the caller may not see (counted, never shown).
    pub hidden_edges: usize,
}

/// A node key: a table, or a column of one (`None`: the whole table).
type Key = (TableRef, Option<String>);

/// One edge of the merged graph, before visibility.
#[derive(Debug, Clone, Default)]
struct Merged {
    jobs: BTreeSet<String>,
    transformations: BTreeSet<Transformation>,
    version: u64,
    at: Option<DateTime<Utc>>,
}

impl LineageService {
    /// The service, serving `system.lineage_edges` too.
    pub fn start(
        engine: Arc<Engine>,
        flows: Arc<Flows>,
        cfg: &LineageConfig,
    ) -> Arc<LineageService> {
        let service = Arc::new(LineageService {
            engine: Arc::clone(&engine),
            flows,
            retention: chrono::Duration::days(i64::from(cfg.retention_days)),
            first_scan_commits: cfg.first_scan_commits.max(1),
            tables: Mutex::new(HashMap::new()),
        });
        let view: std::sync::Weak<LineageService> = Arc::downgrade(&service);
        engine.register_view(edges::NAME, view);
        service
    }

    /// The static lineage of the live deployments' models.
    async fn deployed(&self) -> Result<Vec<Arc<Observed>>> {
        let mut out = Vec::new();
        for (d, _) in self.flows.deployments().await? {
            for s in &d.lineage {
                let Ok(output) = TableRef::parse(&s.model) else {
                    continue;
                };
                out.push(Arc::new(Observed {
                    output,
                    version: s.table_version.unwrap_or(0),
                    at: Some(d.deployed_at),
                    run_id: None,
                    deployed: Some(Deployed {
                        pipeline: d.name.clone(),
                        version: d.version,
                        table_version: s.table_version,
                    }),
                    record: s.record.clone(),
                }));
            }
        }
        Ok(out)
    }

    /// The records that make the graph now.
    async fn current(&self) -> Result<Vec<Arc<Observed>>> {
        Ok(current(self.observed().await?, self.deployed().await?))
    }

    /// Every write's lineage still in the index, brought up to date with the logs.
    pub async fn observed(&self) -> Result<Vec<Arc<Observed>>> {
        let catalog = self.engine.catalog();
        let tables = catalog.list(None).await?;
        let cutoff = Utc::now() - self.retention;
        let mut index = self.tables.lock().await;
        index.retain(|t, _| tables.contains(t));
        for t in &tables {
            let table = match catalog.load(t).await {
                Ok(table) => table,
                Err(Error::NotFound(_)) => continue,
                Err(e) => return Err(e),
            };
            let Some(version) = table.version() else {
                continue;
            };
            let id = table.snapshot()?.metadata().id().to_string();
            let entry = index.entry(t.clone()).or_default();
            if entry.table_id != id || entry.through.is_some_and(|v| v > version) {
                *entry = Indexed {
                    table_id: id,
                    ..Indexed::default()
                };
            }
            let from = match entry.through {
                Some(v) => v + 1,
                None => version.saturating_sub(self.first_scan_commits - 1),
            };
            if from <= version {
                entry
                    .records
                    .extend(read(catalog, t, from..=version).await?);
                entry.through = Some(version);
            }
            entry.records.retain(|r| r.at.is_none_or(|at| at >= cutoff));
        }
        Ok(index
            .values()
            .flat_map(|i| i.records.iter().cloned())
            .collect())
    }

    /// Table lineage around `t`.
    pub async fn tables(
        &self,
        p: &Principal,
        t: &TableRef,
        direction: Direction,
        depth: usize,
    ) -> Result<LineageGraph> {
        let access = self.starting_at(p, t).await?;
        let edges = table_edges(&self.current().await?);
        self.walk(&access, p, (t.clone(), None), &edges, direction, depth)
            .await
    }

    /// Column lineage around `t.column`.
    pub async fn columns(
        &self,
        p: &Principal,
        t: &TableRef,
        column: &str,
        direction: Direction,
        depth: usize,
    ) -> Result<LineageGraph> {
        let access = self.starting_at(p, t).await?;
        let table = self.engine.catalog().load(t).await?;
        let schema = table.snapshot()?.snapshot().arrow_schema();
        if schema.field_with_name(column).is_err() {
            return Err(Error::NotFound(format!("table {t} has no column {column}")));
        }
        let edges = column_edges(&self.current().await?);
        self.walk(
            &access,
            p,
            (t.clone(), Some(column.to_string())),
            &edges,
            direction,
            depth,
        )
        .await
    }

    /// The caller's access, if it may read `t`: no grant at all is 404 (the table does not
    /// exist for it), a grant without SELECT 403.
    async fn starting_at(&self, p: &Principal, t: &TableRef) -> Result<Arc<AccessControl>> {
        let access = self.engine.access().await?;
        access.check(p, Privilege::Select, t)?;
        if !self.engine.catalog().exists(t).await? {
            return Err(Error::NotFound(format!("table {t} not found")));
        }
        Ok(access)
    }

    /// Breadth-first from `start` up to `depth` hops each way; the invisible collapsed.
    async fn walk(
        &self,
        access: &AccessControl,
        p: &Principal,
        start: Key,
        edges: &BTreeMap<(Key, Key), Merged>,
        direction: Direction,
        depth: usize,
    ) -> Result<LineageGraph> {
        let depth = depth.min(MAX_DEPTH);
        let mut seen: BTreeMap<Key, usize> = BTreeMap::from([(start.clone(), 0)]);
        let mut used: BTreeSet<(Key, Key)> = BTreeSet::new();
        for (up, on) in [(true, direction.up()), (false, direction.down())] {
            if !on {
                continue;
            }
            let mut frontier = vec![start.clone()];
            for hop in 1..=depth {
                let mut next = Vec::new();
                for node in &frontier {
                    for ((from, to), _) in edges.iter() {
                        let (here, there) = if up { (to, from) } else { (from, to) };
                        if !follows(node, here) {
                            continue;
                        }
                        used.insert((from.clone(), to.clone()));
                        if !seen.contains_key(there) {
                            seen.insert(there.clone(), hop);
                            next.push(there.clone());
                        }
                    }
                }
                frontier = next;
            }
        }
        // A node is shown to those who may read its table; an edge when both ends are.
        let visible = |k: &Key| access.allows(p, Privilege::Select, &k.0);
        let mut nodes = Vec::new();
        let mut hidden = 0;
        let mut described = Describer::new(self.engine.catalog());
        for (key, hops) in &seen {
            if !visible(key) {
                hidden += 1;
                continue;
            }
            nodes.push(Node::Table(TableNode {
                id: node_id(key),
                table: key.0.to_string(),
                column: key.1.clone(),
                description: described.of(key).await,
                depth: *hops,
            }));
        }
        if hidden > 0 {
            nodes.push(Node::Hidden { hidden });
        }
        let mut out = Vec::new();
        let mut hidden_edges = 0;
        for (from, to) in used {
            if !visible(&from) || !visible(&to) {
                hidden_edges += 1;
                continue;
            }
            let Some(m) = edges.get(&(from.clone(), to.clone())) else {
                continue;
            };
            out.push(Edge {
                from: node_id(&from),
                to: node_id(&to),
                jobs: m.jobs.iter().cloned().collect(),
                transformations: m.transformations.iter().cloned().collect(),
                version: m.version,
                observed_at: m.at,
            });
        }
        Ok(LineageGraph {
            nodes,
            edges: out,
            hidden_edges,
        })
    }
}

/// Whether a walk at `node` continues along an edge whose near end is `end`: the same
/// node, or (column graphs) an edge into or out of the whole table reaches every column.
fn follows(node: &Key, end: &Key) -> bool {
    node.0 == end.0 && (node.1 == end.1 || end.1.is_none())
}

fn node_id(k: &Key) -> String {
    match &k.1 {
        Some(c) => format!("{}.{c}", k.0),
        None => k.0.to_string(),
    }
}

/// The records that make the current graph: every ad-hoc write, and per model its
/// definition now: its latest batch, unless its deploy planned it after that batch
/// (`deployed`, whose version is the table's when planned).
fn current(mut observed: Vec<Arc<Observed>>, deployed: Vec<Arc<Observed>>) -> Vec<Arc<Observed>> {
    observed.sort_by(|a, b| (&a.output, a.version).cmp(&(&b.output, b.version)));
    let mut latest_model: HashMap<(TableRef, String), u64> = HashMap::new();
    for o in &observed {
        if o.record.job.starts_with("model ") {
            latest_model.insert((o.output.clone(), o.record.job.clone()), o.version);
        }
    }
    let mut planned = Vec::new();
    for d in deployed {
        let key = (d.output.clone(), d.record.job.clone());
        // A batch at a version above the table's at deploy was written by this definition.
        let planned_at = d.deployed.as_ref().and_then(|d| d.table_version);
        let superseded = latest_model
            .get(&key)
            .is_some_and(|v| planned_at.is_none_or(|p| *v > p));
        if !superseded {
            latest_model.remove(&key);
            planned.push(d);
        }
    }
    observed.retain(|o| {
        !o.record.job.starts_with("model ")
            || latest_model.get(&(o.output.clone(), o.record.job.clone())) == Some(&o.version)
    });
    observed.extend(planned);
    observed
}

/// Input table → output table (self-edges left out: a MERGE reads its own target).
fn table_edges(observed: &[Arc<Observed>]) -> BTreeMap<(Key, Key), Merged> {
    let mut out: BTreeMap<(Key, Key), Merged> = BTreeMap::new();
    for o in observed {
        for input in &o.record.inputs {
            if input.table == o.output {
                continue;
            }
            let m = out
                .entry(((input.table.clone(), None), (o.output.clone(), None)))
                .or_default();
            note(m, o);
        }
    }
    out
}

/// Input column → output column (or the whole output, for INDIRECT edges to every column).
fn column_edges(observed: &[Arc<Observed>]) -> BTreeMap<(Key, Key), Merged> {
    let mut out: BTreeMap<(Key, Key), Merged> = BTreeMap::new();
    for o in observed {
        for e in &o.record.edges {
            let Some(input) = o.record.inputs.get(e.input) else {
                continue;
            };
            let from = (input.table.clone(), Some(e.column.clone()));
            let to = (o.output.clone(), e.output.clone());
            if from == to {
                continue;
            }
            let m = out.entry((from, to)).or_default();
            m.transformations.insert(Transformation {
                kind: e.subtype.kind(),
                subtype: e.subtype,
                masking: e.masking,
            });
            note(m, o);
        }
    }
    out
}

fn note(m: &mut Merged, o: &Observed) {
    m.jobs.insert(o.record.job.clone());
    if o.version >= m.version {
        m.version = o.version;
        m.at = o.at;
    }
}

/// The lineage records of `t`'s commits `versions`.
async fn read(
    catalog: &Catalog,
    t: &TableRef,
    versions: std::ops::RangeInclusive<u64>,
) -> Result<Vec<Arc<Observed>>> {
    let infos = catalog.commit_infos(t, versions).await?;
    Ok(infos
        .into_iter()
        .filter_map(|(version, info)| {
            let record: LineageRecord =
                serde_json::from_value(info.get(LINEAGE_KEY)?.clone()).ok()?;
            Some(Arc::new(Observed {
                output: t.clone(),
                version,
                at: info
                    .get("inCommitTimestamp")
                    .or_else(|| info.get("timestamp"))
                    .and_then(|v| v.as_i64())
                    .and_then(DateTime::from_timestamp_millis),
                run_id: info
                    .get(RUN_ID_KEY)
                    .and_then(|v| v.as_str())
                    .map(str::to_string),
                deployed: None,
                record,
            }))
        })
        .collect())
}

/// A table's description and its columns' (by name).
type Docs = (Option<String>, HashMap<String, String>);

/// Descriptions of the visible nodes, one table load each.
struct Describer<'a> {
    catalog: &'a Catalog,
    tables: HashMap<TableRef, Option<Docs>>,
}

impl<'a> Describer<'a> {
    fn new(catalog: &'a Catalog) -> Describer<'a> {
        Describer {
            catalog,
            tables: HashMap::new(),
        }
    }

    async fn of(&mut self, key: &Key) -> Option<String> {
        if !self.tables.contains_key(&key.0) {
            let loaded = self.catalog.load(&key.0).await.ok().and_then(|table| {
                let snapshot = table.snapshot().ok()?;
                let description = snapshot
                    .metadata()
                    .description()
                    .filter(|d| !d.is_empty())
                    .map(str::to_string);
                let schema = snapshot.snapshot().arrow_schema();
                let columns = schema
                    .fields()
                    .iter()
                    .filter_map(|f| {
                        let comment = f
                            .metadata()
                            .get(crate::storage::types::COLUMN_COMMENT_KEY)?;
                        Some((f.name().clone(), comment.clone()))
                    })
                    .collect();
                Some((description, columns))
            });
            self.tables.insert(key.0.clone(), loaded);
        }
        let (description, columns) = self.tables.get(&key.0)?.as_ref()?;
        match &key.1 {
            Some(c) => columns.get(c).cloned(),
            None => description.clone(),
        }
    }
}
