//! Flows: pipelines of models deployed over REST and run against the real server, checked
//! against references computed independently of the server.

use std::collections::BTreeMap;
use std::time::Duration;

use serde_json::{Value, json};
use strata::config::{Config, GrantConfig, ServicePrincipalConfig};

use crate::harness::{Backend, TestServer, message};

/// The pipeline's run-as principal `etl` (role `etl`): reads bronze, writes silver and gold.
pub(crate) fn with_etl(cfg: &mut Config) {
    cfg.pipelines.principals = vec![ServicePrincipalConfig {
        name: "etl".into(),
        roles: vec!["etl".into()],
        claims: BTreeMap::new(),
    }];
    for (privilege, on) in [
        ("SELECT", "bronze"),
        ("SELECT", "silver"),
        ("INSERT", "silver"),
        ("MODIFY", "silver"),
        ("SELECT", "gold"),
        ("INSERT", "gold"),
        ("MODIFY", "gold"),
    ] {
        cfg.access.grants.push(GrantConfig {
            role: "etl".into(),
            privilege: privilege.into(),
            on: on.into(),
        });
    }
}

/// An admin who may hand `etl` to a pipeline.
pub(crate) fn deployer(s: &TestServer) -> String {
    s.token("deployer", &["admin", "etl"])
}

pub(crate) const ORDERS: &str = "CREATE TABLE bronze.orders (order_id BIGINT, customer STRING, amount DOUBLE, \
     op STRING, updated_at TIMESTAMP) TBLPROPERTIES ('delta.enableChangeDataFeed' = 'true')";

pub(crate) const SILVER_ORDERS: &str = "/* strata
kind = \"merge\"
unique_key = [\"order_id\"]
sequence_by = \"updated_at\"
delete_when = \"op = 'D'\"
description = \"Orders, latest state\"
[columns]
order_id = \"The order\"
*/
SELECT order_id, customer, amount, op, updated_at FROM stream('bronze.orders')
";

pub(crate) const GOLD_REVENUE: &str = "SELECT customer, sum(amount) AS revenue, count(*) AS orders \
     FROM silver.orders GROUP BY customer";

pub(crate) fn bundle(models: &[(&str, &str)]) -> Value {
    json!({
        "pipeline": {"run_as": "etl", "description": "orders"},
        "models": models.iter().map(|(p, s)| json!({"path": p, "sql": s})).collect::<Vec<_>>(),
    })
}

/// Starts a run of `pipeline` and waits for it to end; the run record.
pub(crate) async fn run(s: &TestServer, token: &str, pipeline: &str) -> Value {
    let (status, started) = s
        .post_json(
            token,
            &format!("/api/v1/pipelines/{pipeline}/runs"),
            json!({}),
        )
        .await;
    assert_eq!(status, 202, "{started}");
    wait(s, token, started["run_id"].as_str().unwrap()).await
}

pub(crate) async fn wait(s: &TestServer, token: &str, id: &str) -> Value {
    for _ in 0..600 {
        let (status, body) = s.get(token, &format!("/api/v1/runs/{id}")).await;
        assert_eq!(status, 200, "{body}");
        if !matches!(body["status"].as_str(), Some("queued" | "running")) {
            return body;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("run {id} did not end");
}

/// One bronze event.
#[derive(Clone)]
pub(crate) struct Event {
    id: i64,
    customer: &'static str,
    amount: f64,
    op: &'static str,
    /// Seconds after 2026-01-01.
    at: i64,
}

pub(crate) async fn insert(s: &TestServer, events: &[Event]) {
    let values: Vec<String> = events
        .iter()
        .map(|e| {
            format!(
                "({}, '{}', {:.1}, '{}', TIMESTAMP '2026-01-01T00:00:00Z' + INTERVAL '{} seconds')",
                e.id, e.customer, e.amount, e.op, e.at
            )
        })
        .collect();
    s.sql_ok(&format!(
        "INSERT INTO bronze.orders VALUES {}",
        values.join(", ")
    ))
    .await;
}

/// The latest event per order (by time), unless it is a delete: what silver must hold.
pub(crate) fn reference(events: &[Event]) -> BTreeMap<i64, (String, f64)> {
    let mut latest: BTreeMap<i64, &Event> = BTreeMap::new();
    for e in events {
        if latest.get(&e.id).is_none_or(|l| e.at > l.at) {
            latest.insert(e.id, e);
        }
    }
    latest
        .into_iter()
        .filter(|(_, e)| e.op != "D")
        .map(|(id, e)| (id, (e.customer.to_string(), e.amount)))
        .collect()
}

pub(crate) async fn silver(s: &TestServer) -> BTreeMap<i64, (String, f64)> {
    let rows = s
        .sql_ok("SELECT order_id, customer, amount FROM silver.orders")
        .await;
    rows.as_array()
        .unwrap()
        .iter()
        .map(|r| {
            (
                r["order_id"].as_i64().unwrap(),
                (
                    r["customer"].as_str().unwrap().to_string(),
                    r["amount"].as_f64().unwrap(),
                ),
            )
        })
        .collect()
}

pub(crate) async fn gold(s: &TestServer) -> BTreeMap<String, (f64, i64)> {
    let rows = s
        .sql_ok("SELECT customer, revenue, orders FROM gold.revenue")
        .await;
    rows.as_array()
        .unwrap()
        .iter()
        .map(|r| {
            (
                r["customer"].as_str().unwrap().to_string(),
                (
                    r["revenue"].as_f64().unwrap(),
                    r["orders"].as_i64().unwrap(),
                ),
            )
        })
        .collect()
}

pub(crate) fn aggregate(silver: &BTreeMap<i64, (String, f64)>) -> BTreeMap<String, (f64, i64)> {
    let mut out: BTreeMap<String, (f64, i64)> = BTreeMap::new();
    for (customer, amount) in silver.values() {
        let e = out.entry(customer.clone()).or_default();
        e.0 += amount;
        e.1 += 1;
    }
    out
}

pub(crate) fn ev(id: i64, customer: &'static str, amount: f64, op: &'static str, at: i64) -> Event {
    Event {
        id,
        customer,
        amount,
        op,
        at,
    }
}

async fn medallion_pipeline(backend: Backend) {
    let s = TestServer::start_configured(backend, with_etl).await;
    let token = deployer(&s);
    s.sql_ok(ORDERS).await;
    let models = [
        ("gold/revenue.sql", GOLD_REVENUE),
        ("silver/orders.sql", SILVER_ORDERS),
    ];

    // Dry run: the plan, nothing stored.
    let (status, plan) = s
        .put_json(
            &token,
            "/api/v1/pipelines/orders?dry_run=true",
            bundle(&models),
        )
        .await;
    assert_eq!(status, 200, "{plan}");
    assert_eq!(plan["dry_run"], true);
    assert_eq!(
        plan["dag"]["models"],
        json!(["silver.orders", "gold.revenue"])
    );
    assert_eq!(plan["models"][0]["change"], "added");
    let planned: Vec<&str> = plan["models"][0]["schema"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["name"].as_str().unwrap())
        .collect();
    assert_eq!(
        planned,
        ["order_id", "customer", "amount", "op", "updated_at"]
    );
    assert!(plan["models"][1]["schema"].is_null(), "{plan}");
    let (status, _) = s.get(&token, "/api/v1/pipelines/orders").await;
    assert_eq!(status, 404, "a dry run deploys nothing");

    // A cycle and a missing source are refused, naming what is wrong.
    let (status, body) = s
        .put_json(
            &token,
            "/api/v1/pipelines/bad",
            bundle(&[
                ("silver/a.sql", "SELECT * FROM gold.b"),
                ("gold/b.sql", "SELECT * FROM silver.a"),
            ]),
        )
        .await;
    assert_eq!(status, 400, "{body}");
    assert!(message(&body).contains("cycle"), "{body}");
    assert!(message(&body).contains("silver.a") && message(&body).contains("gold.b"));
    let (status, body) = s
        .put_json(
            &token,
            "/api/v1/pipelines/bad",
            bundle(&[("silver/a.sql", "SELECT * FROM bronze.nowhere")]),
        )
        .await;
    assert_eq!(status, 400, "{body}");
    assert!(message(&body).contains("bronze.nowhere"), "{body}");

    // Deploy; the same bundle again is unchanged.
    let (status, plan) = s
        .put_json(&token, "/api/v1/pipelines/orders", bundle(&models))
        .await;
    assert_eq!(status, 200, "{plan}");
    assert_eq!(plan["version"], 1);
    let (_, again) = s
        .put_json(&token, "/api/v1/pipelines/orders", bundle(&models))
        .await;
    assert_eq!(
        (again["version"].clone(), again["unchanged"].clone()),
        (json!(1), json!(true))
    );

    // Three batches of events with updates, deletes and a late (older) event.
    let batches = [
        vec![
            ev(1, "ann", 10.0, "I", 1),
            ev(2, "bob", 20.0, "I", 1),
            ev(3, "ann", 30.0, "I", 1),
            ev(4, "cy", 5.0, "I", 1),
        ],
        vec![
            ev(1, "ann", 15.0, "U", 10),
            ev(2, "bob", 0.0, "D", 10),
            ev(5, "bob", 50.0, "I", 10),
            ev(5, "bob", 55.0, "U", 11),
        ],
        vec![
            ev(1, "ann", 12.0, "U", 5),
            ev(3, "cy", 31.0, "U", 20),
            ev(4, "cy", 0.0, "D", 20),
            ev(6, "dee", 7.0, "I", 20),
        ],
    ];
    let mut events = Vec::new();
    insert(&s, &batches[0]).await;
    events.extend(batches[0].clone());
    let record = run(&s, &token, "orders").await;
    assert_eq!(record["status"], "succeeded", "{record}");
    assert_eq!(silver(&s).await, reference(&events));
    for batch in &batches[1..] {
        insert(&s, batch).await;
        events.extend(batch.clone());
    }
    let record = run(&s, &token, "orders").await;
    assert_eq!(record["status"], "succeeded", "{record}");
    let m = &record["models"][0];
    assert_eq!(m["model"], "silver.orders");
    assert_eq!(m["commits"], 1, "{record}");
    assert_eq!(
        m["sources"],
        json!([{"table": "bronze.orders", "from_version": 2, "to_version": 3}]),
        "{record}"
    );
    let expected = reference(&events);
    assert_eq!(silver(&s).await, expected);
    assert_eq!(gold(&s).await, aggregate(&expected));

    // Nothing new: no commit anywhere.
    let versions = (
        s.version("silver.orders").await,
        s.version("gold.revenue").await,
    );
    let record = run(&s, &token, "orders").await;
    assert_eq!(record["status"], "succeeded", "{record}");
    assert_eq!(record["models"][0]["commits"], 0, "{record}");
    assert_eq!(record["models"][1]["commits"], 0, "{record}");
    assert_eq!(
        (
            s.version("silver.orders").await,
            s.version("gold.revenue").await
        ),
        versions
    );

    // The model table carries the header's comments and the change data feed.
    let (_, info) = s.get(&token, "/api/v1/tables/silver/orders").await;
    assert_eq!(info["description"], "Orders, latest state", "{info}");
    assert_eq!(
        info["properties"]["delta.enableChangeDataFeed"], "true",
        "{info}"
    );

    // Listing, the pipeline with its DAG and last run, and visibility: an analyst may read
    // gold only, so it sees the pipeline and only gold.revenue's part of a run.
    let (_, list) = s.get(&token, "/api/v1/pipelines").await;
    assert_eq!(list["pipelines"][0]["name"], "orders", "{list}");
    let (_, p) = s.get(&token, "/api/v1/pipelines/orders").await;
    assert_eq!(p["last_run"]["status"], "succeeded", "{p}");
    let analyst = s.token("ann", &["analyst"]);
    let id = record["run_id"].as_str().unwrap();
    let (status, seen) = s.get(&analyst, &format!("/api/v1/runs/{id}")).await;
    assert_eq!(status, 200, "{seen}");
    assert_eq!(seen["models"].as_array().unwrap().len(), 1, "{seen}");
    assert_eq!(seen["models"][0]["model"], "gold.revenue");
    let stranger = s.token("eve", &["nobody"]);
    let (status, _) = s.get(&stranger, &format!("/api/v1/runs/{id}")).await;
    assert_eq!(status, 404);
    let (status, _) = s.get(&stranger, "/api/v1/pipelines/orders").await;
    assert_eq!(status, 404);

    // Run records are data: system.runs / system.model_runs, the same on another replica
    // (which never held the run), each row visible to those who may read its table.
    let r = s.replica().await;
    let (status, seen) = r.get(&analyst, &format!("/api/v1/runs/{id}")).await;
    assert_eq!(status, 200, "{seen}");
    assert_eq!(seen["status"], "succeeded", "{seen}");
    assert_eq!(seen["models"].as_array().unwrap().len(), 1, "{seen}");
    assert_eq!(seen["models"][0]["model"], "gold.revenue");
    let (status, _) = r.get(&stranger, &format!("/api/v1/runs/{id}")).await;
    assert_eq!(status, 404);
    let (status, listed) = r.get(&token, "/api/v1/runs?pipeline=orders&limit=2").await;
    assert_eq!(status, 200, "{listed}");
    assert_eq!(listed["runs"][0]["run_id"], id, "{listed}");
    let (_, pipelines) = r.get(&token, "/api/v1/pipelines").await;
    assert_eq!(
        pipelines["pipelines"][0]["last_status"], "succeeded",
        "{pipelines}"
    );
    let models = r
        .sql_ok(&format!(
            "SELECT model, status, commits FROM system.model_runs WHERE run_id = '{id}' ORDER BY position"
        ))
        .await;
    assert_eq!(
        models,
        json!([
            {"model": "silver.orders", "status": "succeeded", "commits": 0},
            {"model": "gold.revenue", "status": "succeeded", "commits": 0},
        ])
    );
    let visible = |token: String, sql: String| {
        let r = &r;
        async move {
            let (status, body) = r.sql(&token, &sql).await;
            assert_eq!(status, 200, "{sql}: {body}");
            body
        }
    };
    assert_eq!(
        visible(
            analyst.clone(),
            format!("SELECT model FROM system.model_runs WHERE run_id = '{id}'")
        )
        .await,
        json!([{"model": "gold.revenue"}])
    );
    assert_eq!(
        visible(
            analyst.clone(),
            format!("SELECT count(*) AS n FROM system.runs WHERE run_id = '{id}'")
        )
        .await,
        json!([{"n": 1}])
    );
    assert_eq!(
        visible(
            stranger.clone(),
            "SELECT count(*) AS n FROM system.runs".into()
        )
        .await,
        json!([{"n": 0}])
    );
    // Read-only: nobody writes the server's records.
    for sql in [
        "INSERT INTO system.runs (run_id) VALUES ('x')",
        "DELETE FROM system.model_runs",
        "DROP TABLE system.runs",
    ] {
        let (status, body) = r.sql(&token, sql).await;
        assert!((400..500).contains(&status), "{sql}: {status} {body}");
    }

    // Undeploy: runs are refused, the tables stay.
    let (status, _) = s
        .send_json(
            reqwest::Method::DELETE,
            &token,
            "/api/v1/pipelines/orders",
            json!(null),
        )
        .await;
    assert_eq!(status, 204);
    let (status, _) = s
        .post_json(&token, "/api/v1/pipelines/orders/runs", json!({}))
        .await;
    assert_eq!(status, 404);
    assert_eq!(silver(&s).await, expected);
}

pub(crate) const EVENTS: &str = "CREATE TABLE bronze.events (id BIGINT, kind STRING) \
     TBLPROPERTIES ('delta.enableChangeDataFeed' = 'true')";

pub(crate) const APPEND: &str =
    "/* strata\nkind = \"append\"\n*/\nSELECT id, kind FROM stream('bronze.events')";

/// `bronze.events` with one single-row version per id of `ids`, and pipeline `events`
/// deployed with `model` as `silver/events.sql`.
async fn events_pipeline(s: &TestServer, token: &str, ids: std::ops::Range<i64>, model: &str) {
    s.sql_ok(EVENTS).await;
    for i in ids {
        s.sql_ok(&format!("INSERT INTO bronze.events VALUES ({i}, 'k')"))
            .await;
    }
    let (status, body) = s
        .put_json(
            token,
            "/api/v1/pipelines/events",
            bundle(&[("silver/events.sql", model)]),
        )
        .await;
    assert_eq!(status, 200, "{body}");
}

pub(crate) async fn ids(s: &TestServer, table: &str) -> Vec<i64> {
    let rows = s
        .sql_ok(&format!("SELECT id FROM {table} ORDER BY id"))
        .await;
    rows.as_array()
        .unwrap()
        .iter()
        .map(|r| r["id"].as_i64().unwrap())
        .collect()
}

/// An append model commits every source row once: a re-run with nothing new commits
/// nothing, backlogs split by `max_versions_per_batch` each commit once, and two replicas
/// racing the same model write the rows once.
async fn append_exactly_once(backend: Backend) {
    let s = TestServer::start_configured(backend, with_etl).await;
    let token = deployer(&s);
    s.sql_ok(EVENTS).await;
    let (status, body) = s
        .put_json(
            &token,
            "/api/v1/pipelines/events",
            bundle(&[("silver/events.sql", APPEND)]),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    s.sql_ok("INSERT INTO bronze.events VALUES (1, 'a'), (2, 'b')")
        .await;
    // Updates and deletes in the source: an append model keeps post-images only.
    s.sql_ok("UPDATE bronze.events SET kind = 'bb' WHERE id = 2")
        .await;
    let record = run(&s, &token, "events").await;
    assert_eq!(record["status"], "succeeded", "{record}");
    assert_eq!(ids(&s, "silver.events").await, [1, 2, 2]);
    let history = s.version("silver.events").await;
    let record = run(&s, &token, "events").await;
    assert_eq!(record["models"][0]["commits"], 0, "{record}");
    assert_eq!(
        s.version("silver.events").await,
        history,
        "a no-op run commits nothing"
    );

    // Two replicas race the same model over the same new versions.
    let r = s.replica().await;
    for i in 0..5 {
        s.sql_ok(&format!(
            "INSERT INTO bronze.events VALUES ({}, 'x')",
            10 + i
        ))
        .await;
    }
    let start = |srv: &TestServer| {
        let (url, token) = (srv.url("/api/v1/pipelines/events/runs"), token.clone());
        let client = srv.client.clone();
        async move {
            let resp = client
                .post(url)
                .bearer_auth(token)
                .json(&json!({}))
                .send()
                .await
                .unwrap();
            assert_eq!(resp.status(), 202);
            resp.json::<Value>().await.unwrap()["run_id"]
                .as_str()
                .unwrap()
                .to_string()
        }
    };
    let (a, b) = tokio::join!(start(&s), start(&r));
    let (ra, rb) = tokio::join!(wait(&s, &token, &a), wait(&r, &token, &b));
    assert_eq!(ra["status"], "succeeded", "{ra}");
    assert_eq!(rb["status"], "succeeded", "{rb}");
    let commits =
        ra["models"][0]["commits"].as_u64().unwrap() + rb["models"][0]["commits"].as_u64().unwrap();
    assert_eq!(commits, 1, "one of the racing runs commits: {ra} {rb}");
    assert_eq!(
        ids(&s, "silver.events").await,
        [1, 2, 2, 10, 11, 12, 13, 14]
    );
    r.stop().await;
}

crate::on_both_backends!(medallion_pipeline, append_exactly_once);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn backlogs_run_in_batches_and_schema_changes_follow_the_header() {
    let s = TestServer::start_configured(Backend::Local, with_etl).await;
    let token = deployer(&s);
    let batched = "/* strata\nkind = \"append\"\nmax_versions_per_batch = 2\n*/\nSELECT * FROM stream('bronze.events')";
    events_pipeline(&s, &token, 0..5, batched).await;
    let record = run(&s, &token, "events").await;
    assert_eq!(record["status"], "succeeded", "{record}");
    // Versions 0 (create) … 5: three commits of at most two versions each.
    assert_eq!(record["models"][0]["commits"], 3, "{record}");
    assert_eq!(ids(&s, "silver.events").await, [0, 1, 2, 3, 4]);

    // The source gains a column: `fail` (the default) fails the run, naming it, and
    // commits nothing…
    s.sql_ok("ALTER TABLE bronze.events ADD COLUMN source STRING")
        .await;
    s.sql_ok("INSERT INTO bronze.events VALUES (9, 'k', 'web')")
        .await;
    let version = s.version("silver.events").await;
    let record = run(&s, &token, "events").await;
    assert_eq!(record["status"], "failed", "{record}");
    let error = record["models"][0]["error"].as_str().unwrap_or_default();
    assert!(
        error.contains("source") && error.contains("append_new_columns"),
        "{record}"
    );
    assert_eq!(s.version("silver.events").await, version);
    // …`append_new_columns` adds it in the same commit as the rows.
    let evolving = batched.replace(
        "max_versions_per_batch = 2",
        "on_schema_change = \"append_new_columns\"",
    );
    let (status, body) = s
        .put_json(
            &token,
            "/api/v1/pipelines/events",
            bundle(&[("silver/events.sql", &evolving)]),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    let record = run(&s, &token, "events").await;
    assert_eq!(record["status"], "succeeded", "{record}");
    assert_eq!(
        s.version("silver.events").await,
        version + 1,
        "one commit: column and rows"
    );
    let rows = s
        .sql_ok("SELECT id, source FROM silver.events WHERE source IS NOT NULL")
        .await;
    assert_eq!(rows, json!([{"id": 9, "source": "web"}]));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deploys_check_who_deploys_and_what_the_models_are() {
    let s = TestServer::start_configured(Backend::Local, with_etl).await;
    s.sql_ok(EVENTS).await;
    let models = bundle(&[("silver/events.sql", APPEND)]);
    // Handing `etl` to a pipeline needs the etl role; deploying needs MANAGE on silver.
    let admin_only = s.token("root", &["admin"]);
    let (status, body) = s
        .put_json(&admin_only, "/api/v1/pipelines/events", models.clone())
        .await;
    assert_eq!(status, 403, "{body}");
    assert!(message(&body).contains("etl"), "{body}");
    let etl_only = s.token("worker", &["etl"]);
    let (status, body) = s
        .put_json(&etl_only, "/api/v1/pipelines/events", models.clone())
        .await;
    assert_eq!(status, 403, "{body}");
    // An unknown run_as, a bad header, a source without change feed: 400 with the reason.
    let token = deployer(&s);
    let mut unknown = models.clone();
    unknown["pipeline"]["run_as"] = json!("ghost");
    let (status, body) = s
        .put_json(&token, "/api/v1/pipelines/events", unknown)
        .await;
    assert_eq!(status, 400, "{body}");
    assert!(
        message(&body).contains("ghost") && message(&body).contains("etl"),
        "{body}"
    );
    let (status, body) = s
        .put_json(
            &token,
            "/api/v1/pipelines/events",
            bundle(&[(
                "silver/events.sql",
                "/* strata\nkind = \"merge\" */ SELECT * FROM stream('bronze.events')",
            )]),
        )
        .await;
    assert_eq!(status, 400, "{body}");
    assert!(message(&body).contains("unique_key"), "{body}");
    s.sql_ok("CREATE TABLE bronze.plain (id BIGINT)").await;
    let (status, body) = s
        .put_json(
            &token,
            "/api/v1/pipelines/events",
            bundle(&[(
                "silver/p.sql",
                "/* strata\nkind = \"append\" */ SELECT * FROM stream('bronze.plain')",
            )]),
        )
        .await;
    assert_eq!(status, 400, "{body}");
    assert!(message(&body).contains("change data feed"), "{body}");
    // One pipeline per table.
    let (status, body) = s
        .put_json(&token, "/api/v1/pipelines/events", models.clone())
        .await;
    assert_eq!(status, 200, "{body}");
    let (status, body) = s.put_json(&token, "/api/v1/pipelines/other", models).await;
    assert_eq!(status, 409, "{body}");
    assert!(message(&body).contains("events"), "{body}");
    // A model reading a column masked for its run-as principal would write masked values.
    s.sql_ok("CREATE TABLE bronze.people (id BIGINT, ssn STRING)")
        .await;
    let (status, body) = s
        .put_json(
            &s.admin.clone(),
            "/api/v1/tables/bronze/people/policies",
            json!({"column_masks": [{"column": "ssn", "mask": "'***'"}]}),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    let (status, body) = s
        .put_json(
            &token,
            "/api/v1/pipelines/people",
            bundle(&[("silver/people.sql", "SELECT id, ssn FROM bronze.people")]),
        )
        .await;
    assert_eq!(status, 403, "{body}");
    assert!(message(&body).contains("bronze.people.ssn"), "{body}");
    let (status, body) = s
        .put_json(
            &token,
            "/api/v1/pipelines/people",
            bundle(&[("silver/people.sql", "SELECT id FROM bronze.people")]),
        )
        .await;
    assert_eq!(status, 200, "columns left out are fine: {body}");
    // Strata's own progress markers cannot be forged through idempotency keys.
    let r = s
        .client
        .post(s.url("/api/v1/tables/bronze/events/rows"))
        .bearer_auth(&s.admin)
        .header("content-type", "application/json")
        .header("idempotency-key", "strata:model:silver.events")
        .body(r#"[{"id": 1, "kind": "x"}]"#)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400);
}

/// The run-as principal obeys grants and row filters: with a filter on its target, a run
/// that would write rows outside it fails and commits nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_run_as_principal_cannot_write_outside_its_row_filter() {
    let s = TestServer::start_configured(Backend::Local, |cfg| {
        with_etl(cfg);
        cfg.pipelines.principals[0]
            .claims
            .insert("kind".into(), json!("a"));
    })
    .await;
    let token = deployer(&s);
    s.sql_ok(EVENTS).await;
    s.sql_ok("CREATE TABLE silver.events (id BIGINT, kind STRING) TBLPROPERTIES ('delta.enableChangeDataFeed' = 'true')")
        .await;
    let (status, body) = s
        .put_json(
            &s.admin.clone(),
            "/api/v1/tables/silver/events/policies",
            json!({"row_filters": [{"roles": ["etl"], "predicate": "kind = current_claim('kind')"}]}),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    let (status, body) = s
        .put_json(
            &token,
            "/api/v1/pipelines/events",
            bundle(&[("silver/events.sql", APPEND)]),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    s.sql_ok("INSERT INTO bronze.events VALUES (1, 'a')").await;
    let record = run(&s, &token, "events").await;
    assert_eq!(record["status"], "succeeded", "{record}");
    let version = s.version("silver.events").await;
    s.sql_ok("INSERT INTO bronze.events VALUES (2, 'a'), (3, 'b')")
        .await;
    let record = run(&s, &token, "events").await;
    assert_eq!(record["status"], "failed", "{record}");
    assert!(
        record["models"][0]["error"]
            .as_str()
            .unwrap_or_default()
            .contains("row filter"),
        "{record}"
    );
    assert_eq!(
        s.version("silver.events").await,
        version,
        "nothing committed"
    );
    // (Admins see no rows of a filtered table unless they bypass policies.)
    let raw = s.token("ops", &["admin", "policy_bypass"]);
    let (status, rows) = s.sql(&raw, "SELECT id FROM silver.events").await;
    assert_eq!(status, 200, "{rows}");
    assert_eq!(rows, json!([{"id": 1}]));
}

/// `strata pipelines deploy DIR [--dry-run]` sends the directory to the server, and
/// `[pipelines] dir` deploys it at start without piling up versions.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pipelines_deploy_from_a_directory() {
    let s = TestServer::start_configured(Backend::Local, with_etl).await;
    s.sql_ok(EVENTS).await;
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("events");
    std::fs::create_dir_all(p.join("silver")).unwrap();
    std::fs::write(
        p.join("pipeline.toml"),
        "run_as = \"etl\"\ndescription = \"events\"\n",
    )
    .unwrap();
    std::fs::write(p.join("silver/events.sql"), APPEND).unwrap();
    let deploy = |extra: &[&str]| {
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_strata"))
            .args(["pipelines", "deploy"])
            .arg(&p)
            .args(extra)
            .args(["--url", &s.url("")])
            .env("STRATA_TOKEN", deployer(&s))
            .output()
            .unwrap();
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stdout).to_string(),
            String::from_utf8_lossy(&out.stderr).to_string(),
        )
    };
    let (ok, out, err) = deploy(&["--dry-run"]);
    assert!(ok, "{err}");
    assert!(
        out.contains("\"dry_run\": true") && out.contains("silver.events"),
        "{out}"
    );
    let (status, _) = s.get(&s.admin.clone(), "/api/v1/pipelines/events").await;
    assert_eq!(status, 404);
    let (ok, out, err) = deploy(&[]);
    assert!(ok, "{err}");
    assert!(out.contains("\"version\": 1"), "{out}");
    // A broken model: a failing exit with the server's reason.
    std::fs::write(p.join("silver/bad.sql"), "SELECT * FROM bronze.nowhere").unwrap();
    let (ok, _, err) = deploy(&[]);
    assert!(!ok);
    assert!(
        err.contains("400") && err.contains("bronze.nowhere"),
        "{err}"
    );
    std::fs::remove_file(p.join("silver/bad.sql")).unwrap();

    // Two replicas starting on the same directory: still version 1 (content-addressed).
    let mut cfg = s.config.clone();
    cfg.pipelines.dir = Some(dir.path().to_path_buf());
    let (a, b) = tokio::join!(
        TestServer::start_with(cfg.clone()),
        TestServer::start_with(cfg)
    );
    let (status, body) = a.get(&a.admin.clone(), "/api/v1/pipelines/events").await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["version"], 1, "{body}");
    a.stop().await;
    b.stop().await;
}

/// VACUUM keeps the change files a deployed model has not consumed (unless FORCE); a run
/// whose changes were removed anyway ends `watermark_expired`, and `table_changes` over the
/// removed range is a clear 409.
async fn vacuum_keeps_what_models_need(backend: Backend) {
    let s = TestServer::start_configured(backend, |cfg| {
        with_etl(cfg);
        cfg.storage.allow_short_vacuum_retention = true;
    })
    .await;
    let token = deployer(&s);
    s.sql_ok(EVENTS).await;
    let (status, body) = s
        .put_json(
            &token,
            "/api/v1/pipelines/events",
            bundle(&[("silver/events.sql", APPEND)]),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    s.sql_ok("INSERT INTO bronze.events VALUES (1, 'a'), (2, 'b')")
        .await;
    let record = run(&s, &token, "events").await;
    assert_eq!(record["status"], "succeeded", "{record}");
    // Caught up: VACUUM may run.
    s.sql_ok("VACUUM bronze.events RETAIN 0 HOURS").await;
    // Version 2 adds a file, version 3 removes it again: VACUUM would delete that file,
    // which the model still has to read.
    s.sql_ok("INSERT INTO bronze.events VALUES (3, 'c')").await;
    s.sql_ok("DELETE FROM bronze.events WHERE id = 3").await;
    let latest = s.version("bronze.events").await;
    let (status, body) = s
        .sql(&s.admin.clone(), "VACUUM bronze.events RETAIN 0 HOURS")
        .await;
    assert_eq!(status, 409, "{body}");
    assert!(
        message(&body).contains("silver.events") && message(&body).contains("FORCE"),
        "{body}"
    );
    let changes = format!("SELECT id FROM table_changes('bronze.events', 2, {latest})");
    let (status, body) = s.sql(&s.admin.clone(), &changes).await;
    assert_eq!(status, 200, "the changes are still there: {body}");
    let (status, body) = s
        .sql(
            &s.admin.clone(),
            "VACUUM bronze.events RETAIN 0 HOURS FORCE",
        )
        .await;
    assert_eq!(status, 200, "{body}");
    let (status, body) = s.sql(&s.admin.clone(), &changes).await;
    assert_eq!(status, 409, "{body}");
    assert!(message(&body).contains("no longer available"), "{body}");
    let version = s.version("silver.events").await;
    let record = run(&s, &token, "events").await;
    assert_eq!(record["status"], "failed", "{record}");
    assert_eq!(
        record["models"][0]["status"], "watermark_expired",
        "{record}"
    );
    assert_eq!(s.version("silver.events").await, version);

    // `on_watermark_expired = "full_refresh"`: the model rebuilds from the source's
    // snapshot in one commit (3 was inserted and deleted: gone), and carries on from there.
    let rebuilding = APPEND.replace(
        "kind = \"append\"",
        "kind = \"append\"\non_watermark_expired = \"full_refresh\"",
    );
    assert_ne!(rebuilding, APPEND);
    let (status, body) = s
        .put_json(
            &token,
            "/api/v1/pipelines/events",
            bundle(&[("silver/events.sql", &rebuilding)]),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    let record = run(&s, &token, "events").await;
    assert_eq!(record["status"], "succeeded", "{record}");
    assert_eq!(record["models"][0]["commits"], 1, "{record}");
    assert_eq!(s.version("silver.events").await, version + 1);
    assert_eq!(ids(&s, "silver.events").await, [1, 2]);
    s.sql_ok("INSERT INTO bronze.events VALUES (4, 'd')").await;
    let record = run(&s, &token, "events").await;
    assert_eq!(record["models"][0]["commits"], 1, "{record}");
    assert_eq!(ids(&s, "silver.events").await, [1, 2, 4]);
}

crate::on_both_backends!(vacuum_keeps_what_models_need);

/// The server process dies after a batch's range is chosen and before its commit (the
/// `flows.before_commit` failpoint aborts it, as SIGKILL would): the restarted server's run
/// reads the same range again and every row lands exactly once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_crash_before_the_commit_reruns_the_same_range() {
    use crate::harness::{StrataProcess, armed, deployer_token, etl_env};
    let dir = tempfile::tempdir().unwrap();
    let env = etl_env(dir.path());
    let client = reqwest::Client::new();
    let mut p = StrataProcess::spawn(dir.path(), &armed(&env, "flows.before_commit")).await;
    let token = deployer_token(dir.path(), &env);
    let sql = |http: String, sql: String| {
        let (client, token) = (client.clone(), token.clone());
        async move {
            let r = client
                .post(format!("{http}/api/v1/query"))
                .bearer_auth(token)
                .json(&json!({ "sql": sql }))
                .send()
                .await
                .unwrap();
            let status = r.status();
            let body: Value = r.json().await.unwrap();
            assert_eq!(status, 200, "{sql}: {body}");
            body
        }
    };
    sql(p.http.clone(), EVENTS.into()).await;
    sql(
        p.http.clone(),
        "INSERT INTO bronze.events VALUES (1, 'a'), (2, 'b'), (3, 'c')".into(),
    )
    .await;
    let r = client
        .put(format!("{}/api/v1/pipelines/events", p.http))
        .bearer_auth(&token)
        .json(&bundle(&[("silver/events.sql", APPEND)]))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    // The run starts in the background; the process may die before or after answering.
    let _ = client
        .post(format!("{}/api/v1/pipelines/events/runs", p.http))
        .bearer_auth(&token)
        .json(&json!({}))
        .send()
        .await;
    let mut exited = None;
    for _ in 0..300 {
        if let Some(status) = p.child.try_wait().unwrap() {
            exited = Some(status);
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(
        exited.is_some_and(|s| !s.success()),
        "the failpoint aborts the server"
    );

    let p = StrataProcess::spawn(dir.path(), &env).await;
    let body = sql(
        p.http.clone(),
        "SELECT count(*) AS n FROM silver.events".into(),
    )
    .await;
    assert_eq!(body[0]["n"], 0, "nothing was committed before the crash");
    let run = |http: String| {
        let (client, token) = (client.clone(), token.clone());
        async move {
            let r = client
                .post(format!("{http}/api/v1/pipelines/events/runs"))
                .bearer_auth(&token)
                .json(&json!({}))
                .send()
                .await
                .unwrap();
            assert_eq!(r.status(), 202);
            let id = r.json::<Value>().await.unwrap()["run_id"]
                .as_str()
                .unwrap()
                .to_string();
            for _ in 0..600 {
                let record: Value = client
                    .get(format!("{http}/api/v1/runs/{id}"))
                    .bearer_auth(&token)
                    .send()
                    .await
                    .unwrap()
                    .json()
                    .await
                    .unwrap();
                if !matches!(record["status"].as_str(), Some("queued" | "running")) {
                    return record;
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            panic!("run {id} did not end")
        }
    };
    let record = run(p.http.clone()).await;
    assert_eq!(record["status"], "succeeded", "{record}");
    sql(
        p.http.clone(),
        "INSERT INTO bronze.events VALUES (4, 'd')".into(),
    )
    .await;
    let record = run(p.http.clone()).await;
    assert_eq!(record["status"], "succeeded", "{record}");
    let body = sql(
        p.http.clone(),
        "SELECT id FROM silver.events ORDER BY id".into(),
    )
    .await;
    assert_eq!(
        body,
        json!([{"id": 1}, {"id": 2}, {"id": 3}, {"id": 4}]),
        "every row once"
    );
}

/// Cancelling a run stops it before its next batch: what it committed stays whole (each
/// batch is one commit with its watermark), and the next run carries on from there.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cancelled_run_stops_between_batches_and_the_next_run_carries_on() {
    let s = TestServer::start_configured(Backend::Local, with_etl).await;
    let token = deployer(&s);
    let one_by_one = "/* strata\nkind = \"append\"\nmax_versions_per_batch = 1\n*/\nSELECT * FROM stream('bronze.events')";
    events_pipeline(&s, &token, 0..40, one_by_one).await;
    let (status, started) = s
        .post_json(&token, "/api/v1/pipelines/events/runs", json!({}))
        .await;
    assert_eq!(status, 202, "{started}");
    let id = started["run_id"].as_str().unwrap();
    let (status, body) = s
        .post_json(&token, &format!("/api/v1/runs/{id}/cancel"), json!({}))
        .await;
    assert_eq!(status, 200, "{body}");
    let record = wait(&s, &token, id).await;
    assert_eq!(record["status"], "cancelled", "{record}");
    let commits = record["models"][0]["commits"].as_u64().unwrap();
    assert!(commits < 41, "{record}");
    // Every committed batch is whole: one source version per commit, the first (version
    // 0, the CREATE) without rows, every later one with its row. A cancel that came before
    // the first commit (a loaded machine) left no table at all.
    if commits > 0 {
        assert_eq!(s.count("silver.events").await as u64, commits - 1);
    }
    let record = run(&s, &token, "events").await;
    assert_eq!(record["status"], "succeeded", "{record}");
    assert_eq!(
        ids(&s, "silver.events").await,
        (0..40).collect::<Vec<i64>>()
    );
}
