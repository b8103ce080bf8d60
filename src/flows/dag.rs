//! A pipeline's models in dependency order.
//!
//! Dependencies are the tables each SELECT reads ([`super::sql::reads`]): a table another
//! model of the pipeline produces is an edge, any other table is a source that must exist.
//! A cycle is refused with its path.

use std::collections::{BTreeMap, BTreeSet};

use petgraph::algo::{tarjan_scc, toposort};
use petgraph::graph::{DiGraph, NodeIndex};
use serde::Serialize;

use super::model::{Kind, Model};
use super::sql::{Reads, reads};
use crate::error::{Error, Result};
use crate::storage::TableRef;

/// A model with what it reads.
#[derive(Debug, Clone)]
pub(crate) struct Node {
    pub(crate) model: Model,
    pub(crate) reads: Reads,
    /// Models of the pipeline this one reads.
    pub(crate) upstream: BTreeSet<TableRef>,
}

/// The models of a pipeline in an order where every model comes after those it reads.
#[derive(Debug, Clone)]
pub(crate) struct Dag {
    pub(crate) nodes: Vec<Node>,
}

/// The DAG as the API shows it.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct DagView {
    /// Models in run order.
    pub models: Vec<String>,
    /// `[from, to]`: `to` reads `from` (models and sources).
    pub edges: Vec<[String; 2]>,
    /// Tables read that no model of the pipeline produces.
    pub sources: Vec<String>,
}

impl Dag {
    pub(crate) fn build(models: Vec<Model>, default_layer: &str) -> Result<Dag> {
        let mut by_target: BTreeMap<TableRef, usize> = BTreeMap::new();
        for (i, m) in models.iter().enumerate() {
            if by_target.insert(m.target.clone(), i).is_some() {
                return Err(Error::invalid(format!(
                    "two models write {}; a table has one model",
                    m.target
                )));
            }
        }
        let mut graph = DiGraph::<usize, ()>::new();
        let index: Vec<NodeIndex> = (0..models.len()).map(|i| graph.add_node(i)).collect();
        let mut nodes = Vec::with_capacity(models.len());
        for (i, model) in models.into_iter().enumerate() {
            let r = reads(&model.select, default_layer).map_err(|e| {
                Error::invalid(format!("model {}: {}", model.target, e.client_message("")))
            })?;
            if model.header.kind.is_incremental() && r.streams.is_empty() {
                return Err(Error::invalid(format!(
                    "model {} is {} but reads no stream('layer.table'): it would never see a change",
                    model.target,
                    model.header.kind.as_str()
                )));
            }
            if !model.header.kind.is_incremental() && !r.streams.is_empty() {
                return Err(Error::invalid(format!(
                    "model {} is {}: stream(…) applies to append, merge and scd2 models; read the table by name",
                    model.target,
                    model.header.kind.as_str()
                )));
            }
            let mut upstream = BTreeSet::new();
            for t in r.all() {
                if *t == model.target {
                    return Err(Error::invalid(format!(
                        "model {} reads its own table",
                        model.target
                    )));
                }
                if let Some(&j) = by_target.get(t) {
                    graph.add_edge(index[j], index[i], ());
                    upstream.insert(t.clone());
                }
            }
            nodes.push(Node {
                model,
                reads: r,
                upstream,
            });
        }
        let order = match toposort(&graph, None) {
            Ok(order) => order,
            Err(_) => {
                let cycle = tarjan_scc(&graph)
                    .into_iter()
                    .find(|c| c.len() > 1)
                    .unwrap_or_default();
                let mut names: Vec<String> = cycle
                    .iter()
                    .rev()
                    .map(|n| nodes[graph[*n]].model.target.to_string())
                    .collect();
                if let Some(first) = names.first().cloned() {
                    names.push(first);
                }
                return Err(Error::invalid(format!(
                    "the models form a cycle: {}",
                    names.join(" → ")
                )));
            }
        };
        // An append model downstream of a table model would re-append every row of each
        // overwrite.
        for node in &nodes {
            if node.model.header.kind != Kind::Append {
                continue;
            }
            for s in &node.reads.streams {
                if let Some(&j) = by_target.get(s)
                    && nodes[j].model.header.kind == Kind::Table
                {
                    return Err(Error::invalid(format!(
                        "append model {} streams table model {}: each rebuild of {} would re-append all its rows; make {} a merge model or {} a table model",
                        node.model.target, s, s, node.model.target, node.model.target
                    )));
                }
            }
        }
        let mut slots: Vec<Option<Node>> = nodes.into_iter().map(Some).collect();
        let nodes = order
            .into_iter()
            .filter_map(|n| slots[graph[n]].take())
            .collect();
        Ok(Dag { nodes })
    }

    /// Tables read that no model produces.
    pub(crate) fn sources(&self) -> BTreeSet<TableRef> {
        let targets: BTreeSet<&TableRef> = self.nodes.iter().map(|n| &n.model.target).collect();
        self.nodes
            .iter()
            .flat_map(|n| n.reads.all())
            .filter(|t| !targets.contains(t))
            .cloned()
            .collect()
    }

    pub(crate) fn node(&self, target: &TableRef) -> Option<&Node> {
        self.nodes.iter().find(|n| &n.model.target == target)
    }

    /// Model `m` (`layer.name`, or a name in the default layer), or 400.
    pub(crate) fn model_ref(&self, m: &str, default_layer: &str) -> Result<TableRef> {
        let t = if m.contains('.') {
            TableRef::parse(m)?
        } else {
            TableRef::new(default_layer, m)?
        };
        if self.node(&t).is_none() {
            return Err(Error::invalid(format!("the pipeline has no model {t}")));
        }
        Ok(t)
    }

    pub(crate) fn view(&self) -> DagView {
        let mut edges = Vec::new();
        for n in &self.nodes {
            for t in n.reads.all() {
                edges.push([t.to_string(), n.model.target.to_string()]);
            }
        }
        DagView {
            models: self
                .nodes
                .iter()
                .map(|n| n.model.target.to_string())
                .collect(),
            edges,
            sources: self.sources().iter().map(ToString::to_string).collect(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::flows::model::ModelFile;

    fn models(files: &[(&str, &str)]) -> Vec<Model> {
        files
            .iter()
            .map(|(p, s)| {
                Model::parse(&ModelFile {
                    path: (*p).into(),
                    sql: (*s).into(),
                })
                .unwrap()
            })
            .collect()
    }

    #[test]
    fn models_run_after_what_they_read() -> Result<()> {
        let dag = Dag::build(
            models(&[
                ("gold/revenue.sql", "SELECT sum(amount) FROM silver.orders"),
                (
                    "silver/orders.sql",
                    "/* strata\nkind = \"merge\"\nunique_key = [\"id\"]\nsequence_by = \"ts\" */ SELECT * FROM stream('bronze.orders')",
                ),
            ]),
            "gold",
        )?;
        let order: Vec<String> = dag
            .nodes
            .iter()
            .map(|n| n.model.target.to_string())
            .collect();
        assert_eq!(order, ["silver.orders", "gold.revenue"]);
        assert_eq!(
            dag.sources()
                .iter()
                .map(ToString::to_string)
                .collect::<Vec<_>>(),
            ["bronze.orders"]
        );
        Ok(())
    }

    #[test]
    fn cycles_and_bad_shapes_are_named() {
        let err = |files: &[(&str, &str)]| match Dag::build(models(files), "gold") {
            Err(Error::InvalidArgument(m)) => m,
            other => panic!("{other:?}"),
        };
        let m = err(&[
            ("silver/a.sql", "SELECT * FROM gold.c"),
            ("gold/b.sql", "SELECT * FROM silver.a"),
            ("gold/c.sql", "SELECT * FROM gold.b"),
        ]);
        assert!(
            m.contains("cycle") && m.contains("silver.a") && m.contains("gold.c"),
            "{m}"
        );
        let m = err(&[("silver/a.sql", "SELECT * FROM silver.a")]);
        assert!(m.contains("its own table"), "{m}");
        let m = err(&[(
            "silver/a.sql",
            "/* strata\nkind = \"append\" */ SELECT * FROM bronze.x",
        )]);
        assert!(m.contains("reads no stream"), "{m}");
        let m = err(&[
            ("silver/a.sql", "SELECT * FROM bronze.x"),
            (
                "gold/b.sql",
                "/* strata\nkind = \"append\" */ SELECT * FROM stream('silver.a')",
            ),
        ]);
        assert!(m.contains("re-append"), "{m}");
    }
}
