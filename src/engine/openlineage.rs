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

/// What every event of one run says about it.
#[derive(Debug)]
struct Run {
    namespace: String,
    run_id: uuid::Uuid,
    job: String,
    output: TableRef,
    sql: Option<String>,
    /// The pipeline run this write is a batch of: (run id, pipeline).
    parent: Option<(String, String)>,
}

/// One write's run: START went out when it was made; COMPLETE, FAIL or ABORT (on drop)
/// ends it.
#[derive(Debug)]
pub(crate) struct LineageRun {
    emitter: Emitter,
    run: Arc<Run>,
    /// Set once COMPLETE or FAIL went out; otherwise dropping the run sends ABORT.
    ended: bool,
    record: Arc<LineageRecord>,
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
            run: Arc::new(Run {
                namespace,
                run_id: uuid::Uuid::now_v7(),
                job: record.job.clone(),
                output: output.clone(),
                sql: sql.map(|s| s.chars().take(MAX_SQL_CHARS).collect()),
                parent: RunContext::current().map(|r| (r.run_id, r.pipeline)),
            }),
            ended: false,
            record: Arc::new(record.clone()),
        };
        run.send(Event::new("START"));
        Some(run)
    }

    /// The record the write finally committed (a merge model's MERGE replaces its SELECT's).
    pub(crate) fn set_record(&mut self, record: LineageRecord) {
        self.record = Arc::new(record);
    }

    pub(crate) fn complete(mut self, outcome: &dyn Written, doc: OutputDoc) {
        self.ended = true;
        self.send(Event {
            version: outcome.version(),
            rows: outcome.rows(),
            doc,
            assertions: outcome.assertions(),
            ..Event::new("COMPLETE")
        });
    }

    pub(crate) fn fail(mut self, error: &str) {
        self.ended = true;
        self.send(Event {
            error: Some(error.to_string()),
            ..Event::new("FAIL")
        });
    }

    /// Hands `event` to the emitter; its JSON is built by the sender, off the write's path.
    fn send(&self, event: Event) {
        let run = Arc::clone(&self.run);
        let record = Arc::clone(&self.record);
        self.emitter.emit(move || event.json(&run, &record));
    }
}

/// One event of a run, as taken when it happened.
#[derive(Debug)]
struct Event {
    kind: &'static str,
    time: chrono::DateTime<Utc>,
    error: Option<String>,
    version: Option<u64>,
    rows: Option<u64>,
    doc: OutputDoc,
    assertions: Vec<Value>,
}

impl Event {
    fn new(kind: &'static str) -> Event {
        Event {
            kind,
            time: Utc::now(),
            error: None,
            version: None,
            rows: None,
            doc: OutputDoc::default(),
            assertions: Vec::new(),
        }
    }

    fn json(&self, run: &Run, record: &LineageRecord) -> Value {
        let ns = &run.namespace;
        let mut run_facets = serde_json::Map::new();
        run_facets.insert(
            "processing_engine".into(),
            facet(
                "1-1-1/ProcessingEngineRunFacet",
                "ProcessingEngineRunFacet",
                json!({"name": "Strata", "version": env!("CARGO_PKG_VERSION")}),
            ),
        );
        if let Some((run_id, pipeline)) = &run.parent
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
        if let Some(message) = &self.error {
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
                    "jobType": if run.job.starts_with("model ") { "MODEL" } else { "QUERY" },
                }),
            ),
        );
        if let Some(sql) = &run.sql {
            job_facets.insert(
                "sql".into(),
                facet("1-1-0/SQLJobFacet", "SQLJobFacet", json!({"query": sql})),
            );
        }
        let inputs: Vec<Value> = record
            .inputs
            .iter()
            .filter(|i| i.table != run.output)
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
        let output = self.output_dataset(run, record);
        json!({
            "eventType": self.kind,
            "eventTime": self.time.to_rfc3339_opts(chrono::SecondsFormat::Millis, true),
            "producer": producer(),
            "schemaURL": SPEC,
            "run": {"runId": run.run_id.to_string(), "facets": run_facets},
            "job": {"namespace": ns, "name": run.job, "facets": job_facets},
            "inputs": inputs,
            "outputs": [output],
        })
    }

    fn output_dataset(&self, run: &Run, record: &LineageRecord) -> Value {
        let ns = &run.namespace;
        let doc = &self.doc;
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
        if let Some(v) = self.version {
            facets.insert(
                "version".into(),
                facet(
                    "1-0-1/DatasetVersionDatasetFacet",
                    "DatasetVersionDatasetFacet",
                    json!({"datasetVersion": v.to_string()}),
                ),
            );
        }
        if record.complete {
            facets.insert("columnLineage".into(), column_lineage(ns, record));
        }
        if !self.assertions.is_empty() {
            facets.insert(
                "dataQualityAssertions".into(),
                facet(
                    "1-1-0/DataQualityAssertionsDatasetFacet",
                    "DataQualityAssertionsDatasetFacet",
                    json!({"assertions": self.assertions}),
                ),
            );
        }
        let mut dataset =
            json!({"namespace": ns, "name": run.output.to_string(), "facets": facets});
        if let Some(rows) = self.rows {
            dataset["outputFacets"] = json!({"outputStatistics": facet(
                "1-0-2/OutputStatisticsOutputDatasetFacet",
                "OutputStatisticsOutputDatasetFacet",
                json!({"rowCount": rows}),
            )});
        }
        dataset
    }
}

/// `record` as the columnLineage facet: per output field its inputs with their
/// transformations; edges to the whole output under `dataset`.
fn column_lineage(ns: &str, record: &LineageRecord) -> Value {
    let mut fields: serde_json::Map<String, Value> = serde_json::Map::new();
    let mut dataset = Vec::new();
    for e in &record.edges {
        let Some(input) = record.inputs.get(e.input) else {
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

impl Drop for LineageRun {
    fn drop(&mut self) {
        if !self.ended {
            self.send(Event::new("ABORT"));
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
