//! OpenLineage emission against a real HTTP receiver on loopback: every event validates
//! against the vendored 2-0-2 schemas (spec and facets), START comes before the end of each
//! run, a failing receiver never slows or fails writes and loses nothing once it recovers, a
//! hanging one fills the queue and drops are counted, and SIGTERM flushes what is queued.

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicBool, AtomicU16, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::extract::State;
use serde_json::{Value, json};

use crate::flows::{bundle, deployer, run, with_etl};
use crate::harness::{Backend, StrataProcess, TestServer};

/// A collector: records the events it answers 200 to; answers `status`, or never answers.
#[derive(Clone, Default)]
struct Receiver {
    events: Arc<Mutex<Vec<Value>>>,
    status: Arc<AtomicU16>,
    hang: Arc<AtomicBool>,
    delay_ms: Arc<AtomicU16>,
}

impl Receiver {
    async fn start() -> (Receiver, String) {
        let r = Receiver::default();
        r.status.store(200, Ordering::SeqCst);
        let app = axum::Router::new()
            .route("/api/v1/lineage", axum::routing::post(receive))
            .with_state(r.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        tokio::spawn(async move { axum::serve(listener, app).await });
        (r, url)
    }

    fn events(&self) -> Vec<Value> {
        self.events.lock().unwrap().clone()
    }
}

async fn receive(State(r): State<Receiver>, body: String) -> http::StatusCode {
    if r.hang.load(Ordering::SeqCst) {
        tokio::time::sleep(Duration::from_secs(3600)).await;
    }
    let delay = r.delay_ms.load(Ordering::SeqCst);
    if delay > 0 {
        tokio::time::sleep(Duration::from_millis(u64::from(delay))).await;
    }
    let status = r.status.load(Ordering::SeqCst);
    if status == 200 {
        r.events
            .lock()
            .unwrap()
            .push(serde_json::from_str(&body).unwrap());
    }
    http::StatusCode::from_u16(status).unwrap()
}

/// The vendored schemas by `$id`, served to the validator instead of the network.
struct Vendored(HashMap<String, Value>);

impl jsonschema::Retrieve for Vendored {
    fn retrieve(
        &self,
        uri: &jsonschema::Uri<String>,
    ) -> Result<Value, Box<dyn std::error::Error + Send + Sync>> {
        self.0
            .get(uri.as_str())
            .cloned()
            .ok_or_else(|| format!("not vendored: {uri}").into())
    }
}

/// Validators of the event and of each facet Strata emits (by facet key).
struct Schemas {
    event: jsonschema::Validator,
    facets: HashMap<&'static str, jsonschema::Validator>,
}

impl Schemas {
    fn load() -> Schemas {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/it/openlineage");
        let read = |p: std::path::PathBuf| -> Value {
            serde_json::from_str(&std::fs::read_to_string(p).unwrap()).unwrap()
        };
        let spec = read(dir.join("OpenLineage.json"));
        let mut docs = HashMap::new();
        docs.insert(spec["$id"].as_str().unwrap().to_string(), spec.clone());
        let mut names = HashMap::new();
        for entry in std::fs::read_dir(dir.join("facets")).unwrap() {
            let path = entry.unwrap().path();
            let doc = read(path.clone());
            let name = path.file_stem().unwrap().to_str().unwrap().to_string();
            names.insert(name, doc["$id"].as_str().unwrap().to_string());
            docs.insert(doc["$id"].as_str().unwrap().to_string(), doc);
        }
        let build = |schema: &Value| {
            jsonschema::options()
                .should_validate_formats(true)
                .with_retriever(Vendored(docs.clone()))
                .build(schema)
                .unwrap()
        };
        let facet = |name: &str| build(&json!({"$ref": format!("{}#/$defs/{name}", names[name])}));
        let facets = HashMap::from([
            ("schema", facet("SchemaDatasetFacet")),
            ("documentation", facet("DocumentationDatasetFacet")),
            ("version", facet("DatasetVersionDatasetFacet")),
            ("columnLineage", facet("ColumnLineageDatasetFacet")),
            (
                "outputStatistics",
                facet("OutputStatisticsOutputDatasetFacet"),
            ),
            (
                "dataQualityAssertions",
                facet("DataQualityAssertionsDatasetFacet"),
            ),
            ("sql", facet("SQLJobFacet")),
            ("jobType", facet("JobTypeJobFacet")),
            ("parent", facet("ParentRunFacet")),
            ("errorMessage", facet("ErrorMessageRunFacet")),
            ("processing_engine", facet("ProcessingEngineRunFacet")),
        ]);
        Schemas {
            event: build(&spec),
            facets,
        }
    }

    /// Panics with the errors unless `event` and every facet in it validate.
    fn check(&self, event: &Value) {
        let errors: Vec<String> = self
            .event
            .iter_errors(event)
            .map(|e| e.to_string())
            .collect();
        assert!(errors.is_empty(), "{errors:?}\n{event:#}");
        let mut facets: Vec<(&String, &Value)> = Vec::new();
        for group in [&event["run"]["facets"], &event["job"]["facets"]] {
            facets.extend(group.as_object().into_iter().flatten());
        }
        for d in event["inputs"]
            .as_array()
            .unwrap()
            .iter()
            .chain(event["outputs"].as_array().unwrap())
        {
            for key in ["facets", "outputFacets", "inputFacets"] {
                facets.extend(d[key].as_object().into_iter().flatten());
            }
        }
        for (key, facet) in facets {
            let validator = self
                .facets
                .get(key.as_str())
                .unwrap_or_else(|| panic!("no vendored schema for facet {key}"));
            let errors: Vec<String> = validator
                .iter_errors(facet)
                .map(|e| e.to_string())
                .collect();
            assert!(errors.is_empty(), "facet {key}: {errors:?}\n{facet:#}");
        }
    }
}

/// Events by run, in arrival order.
fn runs(events: &[Value]) -> BTreeMap<String, Vec<Value>> {
    let mut out: BTreeMap<String, Vec<Value>> = BTreeMap::new();
    for e in events {
        out.entry(e["run"]["runId"].as_str().unwrap().to_string())
            .or_default()
            .push(e.clone());
    }
    out
}

/// Each run: one START first, then exactly one COMPLETE / FAIL / ABORT.
fn assert_started_then_ended(events: &[Value]) {
    for (id, run) in runs(events) {
        let kinds: Vec<&str> = run
            .iter()
            .map(|e| e["eventType"].as_str().unwrap())
            .collect();
        assert_eq!(kinds.len(), 2, "run {id}: {kinds:?}");
        assert_eq!(kinds[0], "START", "run {id}: {kinds:?}");
        assert!(
            matches!(kinds[1], "COMPLETE" | "FAIL" | "ABORT"),
            "run {id}: {kinds:?}"
        );
    }
}

fn metric(text: &str, name: &str) -> f64 {
    text.lines()
        .filter(|l| l.starts_with(name))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

/// Waits until the server's queue is empty (everything delivered or given up on).
async fn drained(s: &TestServer) {
    for _ in 0..600 {
        let text = s.metrics_text().await;
        if metric(&text, "strata_openlineage_queue_depth") == 0.0 {
            return;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("OpenLineage queue never drained");
}

fn point_at(cfg: &mut strata::Config, url: &str) {
    cfg.lineage.openlineage.url = Some(url.to_string());
    cfg.lineage.openlineage.timeout_secs = 1;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_event_validates_and_each_run_starts_before_it_ends() {
    let (receiver, url) = Receiver::start().await;
    let s = TestServer::start_configured(Backend::Local, |cfg| {
        with_etl(cfg);
        point_at(cfg, &url);
    })
    .await;
    let admin = s.admin.clone();
    for sql in [
        "CREATE TABLE bronze.orders (id BIGINT, amount DOUBLE, region STRING)",
        "INSERT INTO bronze.orders VALUES (1, 10.0, 'eu'), (2, 20.0, 'us'), (2, 25.0, 'us')",
        "CREATE TABLE gold.totals AS SELECT region, sum(amount) AS total FROM bronze.orders GROUP BY region",
        "CREATE TABLE gold.copy (id BIGINT, amount DOUBLE, region STRING)",
        "COMMENT ON TABLE gold.copy IS 'Copied orders'",
        "INSERT INTO gold.copy SELECT id, amount, region FROM bronze.orders WHERE id = 1",
        "MERGE INTO gold.copy AS t USING (SELECT id, amount, region FROM bronze.orders WHERE id = 1) AS s \
         ON t.id = s.id WHEN MATCHED THEN UPDATE SET amount = s.amount",
        "UPDATE gold.copy SET amount = amount + 1 WHERE id = 1",
        "DELETE FROM gold.copy WHERE amount < 0",
    ] {
        s.sql_ok(sql).await;
    }
    // Two source rows for one target row: the MERGE fails after it started.
    let (status, body) = s
        .sql(
            &admin,
            "MERGE INTO gold.copy AS t USING (SELECT 1 AS id, amount, region FROM bronze.orders) AS s \
             ON t.id = s.id WHEN MATCHED THEN UPDATE SET amount = s.amount",
        )
        .await;
    assert!(status >= 400, "{body}");
    // Rows from outside (an upload): a run with the output only.
    let (status, body) = s
        .upload(
            &admin,
            "bronze.orders",
            "application/json",
            br#"[{"id": 7, "amount": 1.5, "region": "eu"}]"#.to_vec(),
            "",
        )
        .await;
    assert_eq!(status, 200, "{body}");

    // A writer under a row filter with a bound claim: its value never leaves the server.
    s.grant(json!([
        {"role": "writer", "privilege": "SELECT", "on": "gold.copy"},
        {"role": "writer", "privilege": "MODIFY", "on": "gold.copy"}
    ]))
    .await;
    let (status, body) = s
        .put_json(
            &admin,
            "/api/v1/tables/gold/copy/policies",
            json!({"row_filters": [{"roles": ["writer"], "predicate": "region = current_claim('region') AND amount <> 424242"}]}),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    let writer = s.token_with("wes", &["writer"], json!({"region": "zz-secret-claim"}));
    let (status, body) = s
        .sql(&writer, "UPDATE gold.copy SET amount = 0 WHERE id = 99")
        .await;
    assert_eq!(status, 200, "{body}");

    // A model batch with an expectation: parent run, job type, quality assertions.
    let deployer = deployer(&s);
    let model = "/* strata\nkind = \"table\"\n[[expect]]\nname = \"positive\"\ncheck = \"amount > 0\"\non_violation = \"warn\"\n*/\nSELECT id, amount FROM bronze.orders";
    let (status, body) = s
        .put_json(
            &deployer,
            "/api/v1/pipelines/p",
            bundle(&[("silver/amounts.sql", model)]),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    let record = run(&s, &deployer, "p").await;
    assert_eq!(record["status"], "succeeded", "{record}");

    drained(&s).await;
    let events = receiver.events();
    let schemas = Schemas::load();
    for e in &events {
        schemas.check(e);
    }
    assert_started_then_ended(&events);
    let text = serde_json::to_string(&events).unwrap();
    assert!(
        !text.contains("zz-secret-claim"),
        "a bound claim value was emitted"
    );
    assert!(
        !text.contains("424242"),
        "a row filter's literal was emitted"
    );

    let complete = |job: &str, output: &str| {
        events
            .iter()
            .find(|e| {
                e["eventType"] == "COMPLETE"
                    && e["job"]["name"] == job
                    && e["outputs"][0]["name"] == output
            })
            .unwrap_or_else(|| panic!("no COMPLETE of {job}: {text}"))
            .clone()
    };
    let ctas = complete("CREATE TABLE AS SELECT", "gold.totals");
    let out = &ctas["outputs"][0];
    assert_eq!(out["name"], "gold.totals");
    assert_eq!(out["facets"]["version"]["datasetVersion"], "0");
    assert_eq!(out["outputFacets"]["outputStatistics"]["rowCount"], 2);
    let fields: Vec<&str> = out["facets"]["schema"]["fields"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| f["name"].as_str().unwrap())
        .collect();
    assert_eq!(fields, ["region", "total"]);
    let total = &out["facets"]["columnLineage"]["fields"]["total"]["inputFields"][0];
    assert_eq!(total["name"], "bronze.orders");
    assert_eq!(total["field"], "amount");
    assert_eq!(total["transformations"][0]["subtype"], "AGGREGATION");
    assert_eq!(ctas["inputs"][0]["name"], "bronze.orders");
    assert!(
        ctas["job"]["facets"]["sql"]["query"]
            .as_str()
            .unwrap()
            .contains("sum(amount)")
    );

    let upload = complete("UPLOAD", "bronze.orders");
    assert_eq!(upload["inputs"], json!([]), "{upload}");
    assert_eq!(
        upload["outputs"][0]["outputFacets"]["outputStatistics"]["rowCount"],
        1
    );

    let insert = complete("INSERT", "gold.copy");
    assert_eq!(
        insert["outputs"][0]["outputFacets"]["outputStatistics"]["rowCount"],
        1
    );
    assert_eq!(
        insert["outputs"][0]["facets"]["documentation"]["description"],
        "Copied orders"
    );

    let failed: Vec<&Value> = events.iter().filter(|e| e["eventType"] == "FAIL").collect();
    assert_eq!(failed.len(), 1, "{text}");
    assert_eq!(failed[0]["job"]["name"], "MERGE");
    assert!(
        !failed[0]["run"]["facets"]["errorMessage"]["message"]
            .as_str()
            .unwrap()
            .is_empty()
    );

    let batch = complete("model silver.amounts", "silver.amounts");
    assert_eq!(batch["job"]["facets"]["jobType"]["jobType"], "MODEL");
    assert_eq!(
        batch["run"]["facets"]["parent"]["run"]["runId"],
        record["run_id"]
    );
    assert_eq!(
        batch["run"]["facets"]["parent"]["job"]["name"],
        "pipeline p"
    );
    let assertions = &batch["outputs"][0]["facets"]["dataQualityAssertions"]["assertions"];
    assert_eq!(assertions[0]["name"], "positive");
    assert_eq!(assertions[0]["success"], true);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_collector_neither_slows_writes_nor_loses_events() {
    let (receiver, url) = Receiver::start().await;
    receiver.status.store(500, Ordering::SeqCst);
    let failing_since = Instant::now();
    let s = TestServer::start_configured(Backend::Local, |cfg| point_at(cfg, &url)).await;
    s.sql_ok("CREATE TABLE bronze.t (id BIGINT)").await;
    for i in 0..5 {
        s.sql_ok(&format!("INSERT INTO bronze.t VALUES ({i})"))
            .await;
        s.sql_ok(&format!(
            "CREATE TABLE gold.c{i} AS SELECT id FROM bronze.t"
        ))
        .await;
    }
    // Every write finished while the collector still refused every event.
    assert_eq!(s.count("bronze.t").await, 5);
    assert!(receiver.events().is_empty());
    let text = s.metrics_text().await;
    assert!(metric(&text, "strata_openlineage_retries") >= 1.0, "{text}");
    tokio::time::sleep(Duration::from_secs(30).saturating_sub(failing_since.elapsed())).await;
    receiver.status.store(200, Ordering::SeqCst);
    drained(&s).await;
    let events = receiver.events();
    // Five CTAS runs, two events each; INSERT … VALUES reads nothing but is a run too.
    assert_eq!(runs(&events).len(), 10, "{events:#?}");
    assert_eq!(events.len(), 20);
    assert_started_then_ended(&events);
    assert_eq!(
        metric(
            &s.metrics_text().await,
            "strata_openlineage_events_total{outcome=\"sent\"}"
        ),
        20.0
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hanging_collector_fills_the_queue_and_drops_are_counted() {
    let (receiver, url) = Receiver::start().await;
    receiver.hang.store(true, Ordering::SeqCst);
    let s = TestServer::start_configured(Backend::Local, |cfg| {
        point_at(cfg, &url);
        cfg.lineage.openlineage.queue_capacity = 4;
    })
    .await;
    s.sql_ok("CREATE TABLE bronze.t (id BIGINT)").await;
    for i in 0..10 {
        s.sql_ok(&format!("INSERT INTO bronze.t VALUES ({i})"))
            .await;
    }
    assert_eq!(s.count("bronze.t").await, 10);
    let text = s.metrics_text().await;
    // 20 events: at most one in flight and four queued; the rest dropped, counted.
    let dropped = metric(
        &text,
        "strata_openlineage_events_total{outcome=\"dropped\"}",
    );
    assert!(dropped >= 15.0, "{text}");
    assert!(
        metric(&text, "strata_openlineage_queue_depth") <= 5.0,
        "{text}"
    );
}

/// A server whose events may be at most `max_event_bytes`, after a wide CTAS (its column
/// lineage is most of its COMPLETE event) whose events were all handled.
async fn wide_ctas_limited_to(max_event_bytes: usize) -> (Receiver, TestServer) {
    let (receiver, url) = Receiver::start().await;
    let s = TestServer::start_configured(Backend::Local, |cfg| {
        point_at(cfg, &url);
        cfg.lineage.openlineage.max_event_bytes = max_event_bytes;
    })
    .await;
    let columns: Vec<String> = (0..200)
        .map(|i| format!("id + {i} AS column_{i}"))
        .collect();
    s.sql_ok("CREATE TABLE bronze.t (id BIGINT)").await;
    s.sql_ok(&format!(
        "CREATE TABLE gold.wide AS SELECT {} FROM bronze.t",
        columns.join(", ")
    ))
    .await;
    drained(&s).await;
    (receiver, s)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_event_over_the_size_limit_loses_its_column_lineage_then_is_dropped() {
    let (receiver, _s) = wide_ctas_limited_to(20_000).await;
    let events = receiver.events();
    let complete = events
        .iter()
        .find(|e| e["eventType"] == "COMPLETE" && e["job"]["name"] == "CREATE TABLE AS SELECT")
        .unwrap_or_else(|| panic!("{events:#?}"));
    let facets = &complete["outputs"][0]["facets"];
    assert!(facets.get("columnLineage").is_none(), "{complete}");
    assert_eq!(facets["schema"]["fields"].as_array().unwrap().len(), 200);
    assert!(serde_json::to_vec(complete).unwrap().len() <= 20_000);
    assert_started_then_ended(&events);

    // Too large even without its column lineage: START and COMPLETE dropped, counted, and
    // the write unharmed.
    let (receiver, s) = wide_ctas_limited_to(200).await;
    assert!(receiver.events().is_empty());
    let text = s.metrics_text().await;
    assert_eq!(
        metric(
            &text,
            "strata_openlineage_events_total{outcome=\"dropped\"}"
        ),
        2.0,
        "{text}"
    );
    assert_eq!(s.count("gold.wide").await, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_flushes_queued_events() {
    let (receiver, url) = Receiver::start().await;
    // A slow collector: events are still queued when the server is told to stop.
    receiver.delay_ms.store(200, Ordering::SeqCst);
    let dir = tempfile::tempdir().unwrap();
    let p = StrataProcess::spawn(
        dir.path(),
        &[("STRATA__LINEAGE__OPENLINEAGE__URL".to_string(), url.clone())],
    )
    .await;
    let client = reqwest::Client::new();
    for sql in [
        "CREATE TABLE bronze.t (id BIGINT)",
        "INSERT INTO bronze.t VALUES (1)",
        "INSERT INTO bronze.t VALUES (2)",
        "CREATE TABLE gold.a AS SELECT id FROM bronze.t",
        "CREATE TABLE gold.b AS SELECT id FROM bronze.t",
    ] {
        let r = client
            .post(format!("{}/api/v1/query", p.http))
            .bearer_auth(&p.token)
            .json(&json!({"sql": sql}))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200, "{sql}");
    }
    let mut child = p;
    let status = std::process::Command::new("kill")
        .args(["-TERM", &child.child.id().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    let exit = tokio::task::spawn_blocking(move || child.child.wait().unwrap())
        .await
        .unwrap();
    assert!(exit.success(), "{exit:?}");
    let events = receiver.events();
    assert_eq!(
        events.len(),
        8,
        "every queued event delivered before exit: {events:#?}"
    );
    assert_started_then_ended(&events);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_write_dropped_midway_ends_its_run_aborted_and_commits_nothing() {
    let (receiver, url) = Receiver::start().await;
    let s = TestServer::start_configured(Backend::Local, |cfg| point_at(cfg, &url)).await;
    s.sql_ok("CREATE TABLE bronze.a AS SELECT v FROM unnest(range(0, 20000)) AS t(v)")
        .await;
    s.sql_ok("CREATE TABLE bronze.big (v BIGINT)").await;
    let version = s.version("bronze.big").await;
    // 400 million rows to write: the Flight SQL client gives up long before (its stream is
    // reset), and the server drops the write with it.
    let mut client = s.flight_client(&s.admin).await;
    let gave_up = tokio::time::timeout(
        Duration::from_millis(2000),
        client.execute_update(
            "INSERT INTO bronze.big SELECT x.v * y.v FROM bronze.a x CROSS JOIN bronze.a y".into(),
            None,
        ),
    )
    .await;
    assert!(gave_up.is_err(), "the write finished: {gave_up:?}");
    drop(client);

    let mut aborted = None;
    for _ in 0..300 {
        aborted = receiver
            .events()
            .into_iter()
            .find(|e| e["eventType"] == "ABORT" && e["outputs"][0]["name"] == "bronze.big");
        if aborted.is_some() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let aborted = aborted.unwrap_or_else(|| {
        panic!(
            "no ABORT event for the dropped write: {:?}",
            receiver.events()
        )
    });
    let events = receiver.events();
    Schemas::load().check(&aborted);
    let run = &aborted["run"]["runId"];
    let kinds: Vec<&str> = events
        .iter()
        .filter(|e| &e["run"]["runId"] == run)
        .map(|e| e["eventType"].as_str().unwrap())
        .collect();
    assert_eq!(kinds, ["START", "ABORT"]);
    assert_eq!(s.version("bronze.big").await, version, "nothing committed");
}
