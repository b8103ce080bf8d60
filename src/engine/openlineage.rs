//! The OpenLineage 2-0-2 RunEvents of one write: START before it, then COMPLETE, FAIL (with
//! the error) or ABORT (the write was dropped: the client left, a timeout, a cancelled run),
//! handed to [`crate::telemetry::openlineage::Emitter`], which delivers them in order.
//!
//! One job per model (`model <layer.name>`) and per ad-hoc write kind (`INSERT`, `MERGE`,
//! …); one run per write (a model's batch), whose parent is the pipeline run. Facets: schema,
//! documentation and datasetVersion (the Delta version) of datasets, columnLineage and
//! outputStatistics of the output, dataQualityAssertions of a model's expectations, sql
//! (truncated) and jobType of the job. Nothing carries bound claim values or row-filter
//! text: the SQL is the writer's own, and lineage records name columns only.

use std::sync::Arc;

use arrow::datatypes::Schema;
use chrono::Utc;
use serde_json::{Value, json};

use super::lineage::LineageRecord;
use crate::storage::TableRef;
use crate::storage::commit_info::RunContext;
use crate::telemetry::openlineage::Emitter;

const SPEC: &str = "https://openlineage.io/spec/2-0-2/OpenLineage.json#/$defs/RunEvent";
const FACETS: &str = "https://openlineage.io/spec/facets";
/// The `sql` facet keeps this many characters of the statement.
const MAX_SQL_CHARS: usize = 10_000;

fn producer() -> String {
    format!(
        "https://github.com/strata-lakehouse/strata/tree/v{}",
        env!("CARGO_PKG_VERSION")
    )
}

/// A facet's required `_producer` and `_schemaURL` around `body`.
fn facet(schema: &str, name: &str, mut body: Value) -> Value {
    if let Value::Object(map) = &mut body {
        map.insert("_producer".into(), Value::String(producer()));
        map.insert(
            "_schemaURL".into(),
            Value::String(format!("{FACETS}/{schema}.json#/$defs/{name}")),
        );
    }
    body
}

/// What a finished write reports in its COMPLETE event.
pub(crate) trait Written {
    /// The output table's version after the write.
    fn version(&self) -> Option<u64>;
    /// Rows written (inserted + updated for a MERGE).
    fn rows(&self) -> Option<u64>;
    /// The expectations judged on the rows (a model's batch), as OpenLineage assertions.
    fn assertions(&self) -> Vec<Value> {
        Vec::new()
    }
}

/// The output table as the COMPLETE event describes it.
#[derive(Debug, Clone, Default)]
pub(crate) struct OutputDoc {
    pub(crate) schema: Option<Arc<Schema>>,
    pub(crate) description: Option<String>,
}

/// One write's run: its id, job and where its events go.
#[derive(Debug)]
pub(crate) struct LineageRun {
    emitter: Emitter,
    namespace: String,
    run_id: uuid::Uuid,
    job: String,
    output: TableRef,
    sql: Option<String>,
    /// The pipeline run this write is a batch of: (run id, pipeline).
    parent: Option<(String, String)>,
    /// Set once COMPLETE or FAIL went out; otherwise dropping the run sends ABORT.
    ended: bool,
    record: LineageRecord,
}

impl LineageRun {
    /// Sends START; `None` when emission is off.
    pub(crate) fn start(
        emitter: &Emitter,
        output: &TableRef,
        record: &LineageRecord,
        sql: Option<String>,
    ) -> Option<LineageRun> {
        let namespace = emitter.namespace()?.to_string();
        let run = LineageRun {
            emitter: emitter.clone(),
            namespace,
            run_id: uuid::Uuid::now_v7(),
            job: record.job.clone(),
            output: output.clone(),
            sql: sql.map(|s| s.chars().take(MAX_SQL_CHARS).collect()),
            parent: RunContext::current().map(|r| (r.run_id, r.pipeline)),
            ended: false,
            record: record.clone(),
        };
        run.send("START", None, None, &OutputDoc::default(), &[]);
        Some(run)
    }

    /// The record the write finally committed (a merge model's MERGE replaces its SELECT's).
    pub(crate) fn set_record(&mut self, record: LineageRecord) {
        self.record = record;
    }

    pub(crate) fn complete(mut self, outcome: &dyn Written, doc: &OutputDoc) {
        self.ended = true;
        self.send("COMPLETE", None, Some(outcome), doc, &outcome.assertions());
    }

    pub(crate) fn fail(mut self, error: &str) {
        self.ended = true;
        self.send("FAIL", Some(error), None, &OutputDoc::default(), &[]);
    }

    fn send(
        &self,
        kind: &str,
        error: Option<&str>,
        outcome: Option<&dyn Written>,
        doc: &OutputDoc,
        assertions: &[Value],
    ) {
        let ns = &self.namespace;
        let mut run_facets = serde_json::Map::new();
        run_facets.insert(
            "processing_engine".into(),
            facet(
                "1-1-1/ProcessingEngineRunFacet",
                "ProcessingEngineRunFacet",
                json!({"name": "Strata", "version": env!("CARGO_PKG_VERSION")}),
            ),
        );
        if let Some((run_id, pipeline)) = &self.parent
            && uuid::Uuid::parse_str(run_id).is_ok()
        {
            run_facets.insert(
                "parent".into(),
                facet(
                    "1-2-0/ParentRunFacet",
                    "ParentRunFacet",
                    json!({
                        "run": {"runId": run_id},
                        "job": {"namespace": ns, "name": format!("pipeline {pipeline}")},
                    }),
                ),
            );
        }
        if let Some(message) = error {
            run_facets.insert(
                "errorMessage".into(),
                facet(
                    "1-0-1/ErrorMessageRunFacet",
                    "ErrorMessageRunFacet",
                    json!({"message": message, "programmingLanguage": "RUST"}),
                ),
            );
        }
        let mut job_facets = serde_json::Map::new();
        job_facets.insert(
            "jobType".into(),
            facet(
                "2-0-4/JobTypeJobFacet",
                "JobTypeJobFacet",
                json!({
                    "processingType": "BATCH",
                    "integration": "STRATA",
                    "jobType": if self.job.starts_with("model ") { "MODEL" } else { "QUERY" },
                }),
            ),
        );
        if let Some(sql) = &self.sql {
            job_facets.insert(
                "sql".into(),
                facet("1-1-0/SQLJobFacet", "SQLJobFacet", json!({"query": sql})),
            );
        }
        let inputs: Vec<Value> = self
            .record
            .inputs
            .iter()
            .filter(|i| i.table != self.output)
            .map(|i| {
                json!({
                    "namespace": ns,
                    "name": i.table.to_string(),
                    "facets": {"version": facet(
                        "1-0-1/DatasetVersionDatasetFacet",
                        "DatasetVersionDatasetFacet",
                        json!({"datasetVersion": i.version.to_string()}),
                    )},
                })
            })
            .collect();
        let output = self.output_dataset(outcome, doc, assertions);
        let event = json!({
            "eventType": kind,
            "eventTime": Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Millis, true),
            "producer": producer(),
            "schemaURL": SPEC,
            "run": {"runId": self.run_id.to_string(), "facets": run_facets},
            "job": {"namespace": ns, "name": self.job, "facets": job_facets},
            "inputs": inputs,
            "outputs": [output],
        });
        self.emitter.emit(event);
    }

    fn output_dataset(
        &self,
        outcome: Option<&dyn Written>,
        doc: &OutputDoc,
        assertions: &[Value],
    ) -> Value {
        let ns = &self.namespace;
        let mut facets = serde_json::Map::new();
        if let Some(schema) = &doc.schema {
            let fields: Vec<Value> = schema
                .fields()
                .iter()
                .enumerate()
                .map(|(i, f)| {
                    let mut field = json!({
                        "name": f.name(),
                        "type": f.data_type().to_string(),
                        "ordinal_position": i + 1,
                    });
                    if let Some(d) = f.metadata().get(crate::storage::types::COLUMN_COMMENT_KEY) {
                        field["description"] = Value::String(d.clone());
                    }
                    field
                })
                .collect();
            facets.insert(
                "schema".into(),
                facet(
                    "1-2-0/SchemaDatasetFacet",
                    "SchemaDatasetFacet",
                    json!({"fields": fields}),
                ),
            );
        }
        if let Some(d) = &doc.description {
            facets.insert(
                "documentation".into(),
                facet(
                    "1-1-0/DocumentationDatasetFacet",
                    "DocumentationDatasetFacet",
                    json!({"description": d}),
                ),
            );
        }
        if let Some(v) = outcome.and_then(|o| o.version()) {
            facets.insert(
                "version".into(),
                facet(
                    "1-0-1/DatasetVersionDatasetFacet",
                    "DatasetVersionDatasetFacet",
                    json!({"datasetVersion": v.to_string()}),
                ),
            );
        }
        if self.record.complete {
            facets.insert("columnLineage".into(), self.column_lineage());
        }
        if !assertions.is_empty() {
            facets.insert(
                "dataQualityAssertions".into(),
                facet(
                    "1-1-0/DataQualityAssertionsDatasetFacet",
                    "DataQualityAssertionsDatasetFacet",
                    json!({"assertions": assertions}),
                ),
            );
        }
        let mut dataset =
            json!({"namespace": ns, "name": self.output.to_string(), "facets": facets});
        if let Some(rows) = outcome.and_then(|o| o.rows()) {
            dataset["outputFacets"] = json!({"outputStatistics": facet(
                "1-0-2/OutputStatisticsOutputDatasetFacet",
                "OutputStatisticsOutputDatasetFacet",
                json!({"rowCount": rows}),
            )});
        }
        dataset
    }

    /// The record as the columnLineage facet: per output field its inputs with their
    /// transformations; edges to the whole output under `dataset`.
    fn column_lineage(&self) -> Value {
        let ns = &self.namespace;
        let mut fields: serde_json::Map<String, Value> = serde_json::Map::new();
        let mut dataset = Vec::new();
        for e in &self.record.edges {
            let Some(input) = self.record.inputs.get(e.input) else {
                continue;
            };
            let field = json!({
                "namespace": ns,
                "name": input.table.to_string(),
                "field": e.column,
                "transformations": [{
                    "type": e.subtype.kind(),
                    "subtype": e.subtype.as_str(),
                    "masking": e.masking,
                }],
            });
            match &e.output {
                Some(out) => {
                    let entry = fields
                        .entry(out.clone())
                        .or_insert_with(|| json!({"inputFields": []}));
                    if let Some(list) = entry["inputFields"].as_array_mut() {
                        list.push(field);
                    }
                }
                None => dataset.push(field),
            }
        }
        facet(
            "1-2-0/ColumnLineageDatasetFacet",
            "ColumnLineageDatasetFacet",
            json!({"fields": fields, "dataset": dataset}),
        )
    }
}

impl Drop for LineageRun {
    fn drop(&mut self) {
        if !self.ended {
            self.send("ABORT", None, None, &OutputDoc::default(), &[]);
        }
    }
}

/// A table created with its rows (CTAS).
#[derive(Debug, Clone, Copy)]
pub(crate) struct Created {
    pub(crate) version: u64,
    pub(crate) rows: u64,
}

impl Written for Created {
    fn version(&self) -> Option<u64> {
        Some(self.version)
    }

    fn rows(&self) -> Option<u64> {
        Some(self.rows)
    }
}

impl Written for crate::pipelines::commit::WriteOutcome {
    fn version(&self) -> Option<u64> {
        Some(self.version)
    }

    fn rows(&self) -> Option<u64> {
        Some(if self.duplicate { 0 } else { self.rows })
    }
}

impl Written for crate::pipelines::merge::DmlOutcome {
    fn version(&self) -> Option<u64> {
        Some(self.version)
    }

    fn rows(&self) -> Option<u64> {
        Some(self.inserted + self.updated)
    }
}
