//! The plan of a deploy: what changes per model, the output schema against the table's,
//! and whether the change needs a full refresh.

use std::collections::BTreeMap;
use std::sync::Arc;

use arrow::datatypes::Schema;
use serde::Serialize;

use super::dag::{Dag, DagView, Node};
use super::model::{Kind, Model, ModelFile};

use super::sql::{ChangeRows, Pin, pinned};
use crate::engine::Engine;
use crate::engine::lineage::LineageRecord;
use crate::error::{Error, Result};
use crate::security::Principal;

/// What a deploy does to one model.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum ModelChange {
    Added,
    Changed,
    Removed,
    Unchanged,
}

/// A column as the plan shows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, utoipa::ToSchema)]
pub struct PlannedColumn {
    pub name: String,
    #[serde(rename = "type")]
    pub data_type: String,
}

/// One model of a deploy plan.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct ModelPlan {
    pub model: String,
    pub change: ModelChange,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub kind: Option<Kind>,
    /// The model's output, planned now (absent until its upstream models have run).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub schema: Option<Vec<PlannedColumn>>,
    /// The table's schema now, when the table exists.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub table_schema: Option<Vec<PlannedColumn>>,
    pub full_refresh_required: bool,
    /// Why, or why something could not be planned.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub note: Option<String>,
    /// Its static lineage, from the plan (stored with the deployment).
    #[serde(skip)]
    pub(crate) lineage: Option<StaticLineage>,
}

/// A model's lineage as its deployed definition plans it, before (or between) its runs.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, serde::Deserialize)]
pub(crate) struct StaticLineage {
    /// `layer.name` of the model's table.
    pub(crate) model: String,
    /// The table's version when it was planned (`None`: not created yet): a batch
    /// committed after it supersedes it.
    pub(crate) table_version: Option<u64>,
    pub(crate) record: LineageRecord,
}

/// `PUT /api/v1/pipelines/{name}` (and `?dry_run=true`).
#[derive(Debug, Clone, Default, Serialize, utoipa::ToSchema)]
pub struct DeployPlan {
    pub pipeline: String,
    /// The version deployed (or current, for a dry run or an unchanged bundle).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub version: Option<u64>,
    pub dry_run: bool,
    /// The bundle is the deployed one: nothing stored.
    pub unchanged: bool,
    pub full_refresh_required: bool,
    pub models: Vec<ModelPlan>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub dag: Option<DagView>,
}

fn type_label(dt: &arrow::datatypes::DataType) -> String {
    crate::pipelines::commit::arrow_type_name(dt).unwrap_or_else(|_| dt.to_string())
}

fn columns(schema: &Schema) -> Vec<PlannedColumn> {
    schema
        .fields()
        .iter()
        .map(|f| PlannedColumn {
            name: f.name().clone(),
            data_type: type_label(f.data_type()),
        })
        .collect()
}

/// Plans `dag` against the deployed `previous` models.
pub(crate) async fn plan(
    engine: &Engine,
    run_as: &Arc<Principal>,
    default_layer: &str,
    dag: &Dag,
    previous: &[ModelFile],
) -> Result<DeployPlan> {
    let before: BTreeMap<String, Model> = previous
        .iter()
        .filter_map(|f| Model::parse(f).ok())
        .map(|m| (m.target.to_string(), m))
        .collect();
    let mut models = Vec::new();
    for node in &dag.nodes {
        let name = node.model.target.to_string();
        let change = match before.get(&name) {
            None => ModelChange::Added,
            Some(m) if *m == node.model => ModelChange::Unchanged,
            Some(_) => ModelChange::Changed,
        };
        let mut p = ModelPlan {
            model: name.clone(),
            change,
            kind: Some(node.model.header.kind),
            schema: None,
            table_schema: None,
            full_refresh_required: false,
            note: None,
            lineage: None,
        };
        let (table, table_version) = match engine.catalog().load(&node.model.target).await {
            Ok(t) => (Some(t.snapshot()?.snapshot().arrow_schema()), t.version()),
            Err(Error::NotFound(_)) => (None, None),
            Err(e) => return Err(e),
        };
        p.table_schema = table.as_deref().map(columns);
        match output_schema(engine, run_as, default_layer, node).await {
            Ok(Some((schema, lineage))) => {
                p.lineage = lineage.map(|record| StaticLineage {
                    model: name.clone(),
                    table_version,
                    record,
                });
                if let Some(table) = &table {
                    let reason = refresh_reason(before.get(&name), &node.model, table, &schema);
                    p.full_refresh_required = reason.is_some();
                    p.note = reason;
                }
                p.schema = Some(columns(&schema));
            }
            Ok(None) => {
                p.note = Some("planned once the models it reads have run".into());
            }
            Err(e @ Error::PermissionDenied(_)) => return Err(e),
            Err(e) => {
                return Err(Error::invalid(format!(
                    "model {name}: {}",
                    e.client_message("")
                )));
            }
        }
        models.push(p);
    }
    for (name, _) in before
        .iter()
        .filter(|(n, _)| !dag.nodes.iter().any(|x| x.model.target.to_string() == **n))
    {
        models.push(ModelPlan {
            model: name.clone(),
            change: ModelChange::Removed,
            kind: None,
            schema: None,
            table_schema: None,
            full_refresh_required: false,
            note: Some("no longer run; the table stays".into()),
            lineage: None,
        });
    }
    Ok(DeployPlan {
        full_refresh_required: models.iter().any(|m| m.full_refresh_required),
        models,
        dag: Some(dag.view()),
        ..DeployPlan::default()
    })
}

/// The model's output planned against the sources' current versions, with the lineage
/// that plan records, or `None` while a table it reads does not exist yet (an upstream
/// model that has not run).
async fn output_schema(
    engine: &Engine,
    run_as: &Arc<Principal>,
    default_layer: &str,
    node: &Node,
) -> Result<Option<(Arc<Schema>, Option<LineageRecord>)>> {
    let mut pins = BTreeMap::new();
    for t in node.reads.all() {
        let table = match engine.catalog().load(t).await {
            Ok(table) => table,
            Err(Error::NotFound(_)) => return Ok(None),
            Err(e) => return Err(e),
        };
        let v = table.version().unwrap_or(0);
        let pin = if node.reads.streams.contains(t) {
            Pin::Changes { range: None, at: v }
        } else {
            Pin::Version(v)
        };
        pins.insert(t.clone(), pin);
    }
    let sql = pinned(
        &node.model.select,
        default_layer,
        &pins,
        ChangeRows::WithDeletes,
    )?;
    let params = super::statements::planning_params(&node.model.header)?;
    let planned = engine.plan_select(run_as, &sql, &params).await?;
    let masked = planned.masked_reads()?;
    if !masked.is_empty() {
        return Err(Error::PermissionDenied(format!(
            "{} would read columns masked for its run-as principal {}: {}; it would write masked values (exempt its role from those masks, or leave the columns out)",
            node.model.target,
            run_as.subject,
            masked.join(", ")
        )));
    }
    planned
        .check_expectations(&node.model.header.expectations)
        .map_err(|e| Error::invalid(format!("{}: {}", node.model.target, e.client_message(""))))?;
    let output = planned.table_schema()?;
    let lineage = planned.lineage(engine, &node.model.target);
    Ok(Some((node.model.header.table_schema(output)?, lineage)))
}

/// Why the new definition cannot continue the existing table, if it cannot.
fn refresh_reason(
    before: Option<&Model>,
    model: &Model,
    table: &Schema,
    output: &Schema,
) -> Option<String> {
    if let Some(before) = before
        && model.header.kind.is_incremental()
        && (before.header.kind != model.header.kind
            || before.header.unique_key != model.header.unique_key)
    {
        return Some("the kind or unique_key of an incremental model changed".into());
    }
    let mut problems = Vec::new();
    for f in table.fields() {
        match output.field_with_name(f.name()) {
            Err(_) => problems.push(format!("column {} is no longer produced", f.name())),
            Ok(o)
                if o.data_type() != f.data_type()
                    && crate::storage::types::delta_arrow_type(o.data_type()).as_ref()
                        != Some(f.data_type()) =>
            {
                problems.push(format!(
                    "column {} changes type from {} to {}",
                    f.name(),
                    type_label(f.data_type()),
                    type_label(o.data_type())
                ))
            }
            Ok(_) => {}
        }
    }
    (!problems.is_empty()).then(|| problems.join("; "))
}
