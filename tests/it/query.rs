//! `POST /api/v1/query`: formats, parameters, SQL DDL/DML, time travel, history.

use arrow::array::{Array, Int64Array};
use serde_json::json;

use crate::harness::{Backend, TestServer, message};

crate::on_both_backends!(
    sql_ddl_and_dml_through_the_query_endpoint,
    time_travel_and_history
);

async fn seeded() -> TestServer {
    let s = TestServer::start().await;
    s.seed_people("gold.people", 20).await;
    s
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn results_in_json_csv_and_arrow() {
    let s = seeded().await;
    let admin = s.admin.clone();
    let body = s
        .sql_ok("SELECT id, name FROM gold.people WHERE id <= 2 ORDER BY id")
        .await;
    assert_eq!(
        body,
        json!([{"id": 1, "name": "p1"}, {"id": 2, "name": "p2"}])
    );
    let empty = s.sql_ok("SELECT id FROM gold.people WHERE id < 0").await;
    assert_eq!(empty, json!([]));

    let r = s
        .client
        .post(s.url("/api/v1/query"))
        .bearer_auth(&admin)
        .header("accept", "text/csv")
        .json(&json!({"sql": "SELECT id, name FROM gold.people WHERE id <= 2 ORDER BY id"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert!(
        r.headers()["content-type"]
            .to_str()
            .unwrap()
            .starts_with("text/csv")
    );
    assert_eq!(r.text().await.unwrap(), "id,name\n1,p1\n2,p2\n");

    let batches = s
        .sql_arrow(&admin, "SELECT id FROM gold.people ORDER BY id", json!([]))
        .await
        .unwrap();
    let ids: Vec<i64> = batches
        .iter()
        .flat_map(|b| {
            b.column(0)
                .as_any()
                .downcast_ref::<Int64Array>()
                .unwrap()
                .values()
                .to_vec()
        })
        .collect();
    assert_eq!(ids, (1..=20).collect::<Vec<_>>());

    let r = s
        .client
        .post(s.url("/api/v1/query"))
        .bearer_auth(&admin)
        .header("accept", "application/xml")
        .json(&json!({"sql": "SELECT 1"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 406);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn parameters_bind_by_number_not_by_text() {
    let s = seeded().await;
    let admin = s.admin.clone();
    // $10 must be the tenth value: sorting "$1,$10,$2…" as text would pick 2 instead of 10.
    let sql = "SELECT id FROM gold.people WHERE id IN ($1,$2,$3,$4,$5,$6,$7,$8,$9) OR id = $10 OR id = $11 ORDER BY id";
    let params = json!([1, 2, 3, 4, 5, 6, 7, 8, 9, 17, 18]);
    let (status, body) = s
        .post_json(
            &admin,
            "/api/v1/query",
            json!({"sql": sql, "params": params}),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    let ids: Vec<i64> = body
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["id"].as_i64().unwrap())
        .collect();
    assert_eq!(ids, vec![1, 2, 3, 4, 5, 6, 7, 8, 9, 17, 18]);

    let (status, body) = s
        .post_json(&admin, "/api/v1/query", json!({"sql": "SELECT name FROM gold.people WHERE name = $1 AND amount > $2", "params": ["p4", 1]}))
        .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body, json!([{"name": "p4"}]));
    // Injection attempts are just values.
    let (status, body) = s
        .post_json(&admin, "/api/v1/query", json!({"sql": "SELECT count(*) AS n FROM gold.people WHERE name = $1", "params": ["p1' OR '1'='1"]}))
        .await;
    assert_eq!(status, 200);
    assert_eq!(body[0]["n"], 0);
    for (params, needle) in [
        (json!([]), "parameter"),
        (json!([1, 2]), "parameter"),
        (json!([[1]]), "scalars"),
    ] {
        let (status, body) = s
            .post_json(
                &admin,
                "/api/v1/query",
                json!({"sql": "SELECT * FROM gold.people WHERE id = $1", "params": params}),
            )
            .await;
        assert_eq!(status, 400, "{body}");
        assert!(message(&body).contains(needle), "{body}");
    }
}

async fn sql_ddl_and_dml_through_the_query_endpoint(backend: Backend) {
    let s = TestServer::start_on(backend).await;
    let body = s
        .sql_ok("CREATE TABLE silver.orders (id BIGINT NOT NULL, region STRING, total DECIMAL(10,2) COMMENT 'gross') PARTITIONED BY (region) COMMENT 'orders'")
        .await;
    assert_eq!(body[0]["operation"], "CREATE TABLE");
    let (_, info) = s
        .get(&s.admin.clone(), "/api/v1/tables/silver/orders")
        .await;
    assert_eq!(info["partition_columns"], json!(["region"]));
    assert_eq!(info["columns"][2]["description"], "gross");
    assert_eq!(info["description"], "orders");

    let body = s
        .sql_ok("INSERT INTO silver.orders VALUES (1, 'eu', 10.50), (2, 'us', 20), (3, 'eu', 1.25)")
        .await;
    assert_eq!(body[0]["rows_affected"], 3);
    assert_eq!(body[0]["version"], 1);
    let body = s.sql_ok("INSERT INTO silver.orders (region, id) SELECT 'apac', id + 10 FROM silver.orders WHERE region = 'eu'").await;
    assert_eq!(body[0]["rows_affected"], 2);
    let body = s.sql_ok("SELECT region, count(*) AS n, sum(total) AS t FROM silver.orders GROUP BY region ORDER BY region").await;
    assert_eq!(
        body,
        json!([
            {"region": "apac", "n": 2, "t": null},
            {"region": "eu", "n": 2, "t": 11.75},
            {"region": "us", "n": 1, "t": 20.0}
        ])
    );

    let body = s.sql_ok("CREATE TABLE gold.region_totals AS SELECT region, sum(total) AS total, count(*) AS orders FROM silver.orders GROUP BY region").await;
    assert_eq!(body[0]["rows_affected"], 3);
    let (_, info) = s
        .get(&s.admin.clone(), "/api/v1/tables/gold/region_totals")
        .await;
    assert_eq!(info["columns"].as_array().unwrap().len(), 3);
    assert_eq!(info["version"], 0, "CTAS is one commit");
    let (status, body) = s
        .sql(
            &s.admin.clone(),
            "CREATE TABLE gold.region_totals AS SELECT 1 AS x",
        )
        .await;
    assert_eq!(status, 409, "{body}");
    s.sql_ok("CREATE TABLE IF NOT EXISTS gold.region_totals AS SELECT 1 AS x")
        .await;
    s.sql_ok("CREATE TABLE gold.empty_ctas AS SELECT id FROM silver.orders WHERE false")
        .await;
    assert_eq!(s.count("gold.empty_ctas").await, 0);

    let body = s
        .sql_ok("INSERT OVERWRITE silver.orders SELECT * FROM silver.orders WHERE region = 'us'")
        .await;
    assert_eq!(body[0]["operation"], "INSERT OVERWRITE");
    assert_eq!(s.count("silver.orders").await, 1);

    // NOT NULL, type and arity errors commit nothing.
    let v = s.version("silver.orders").await;
    for (sql, needle) in [
        (
            "INSERT INTO silver.orders (region) VALUES ('x')",
            "NOT NULL",
        ),
        (
            "INSERT INTO silver.orders VALUES (NULL, 'x', 1)",
            "NOT NULL",
        ),
        ("INSERT INTO silver.orders VALUES (1, 'x')", "column"),
        ("INSERT INTO silver.orders (id, nope) VALUES (1, 2)", "nope"),
        ("INSERT INTO silver.orders VALUES ('abc', 'x', 1)", ""),
        // Rows are written as they are computed: a violation many batches in still fails
        // the whole statement, with its own message, before the commit (the row number
        // counts rows in the order the query produced them).
        (
            "INSERT INTO silver.orders (id, region) SELECT CASE WHEN x = 200000 THEN NULL ELSE x END, 'eu' \
             FROM (SELECT unnest(range(0, 300000)) AS x)",
            "column id is NOT NULL",
        ),
    ] {
        let (status, body) = s.sql(&s.admin.clone(), sql).await;
        assert_eq!(status, 400, "{sql}: {body}");
        assert!(message(&body).contains(needle), "{sql}: {body}");
    }
    assert_eq!(s.version("silver.orders").await, v);

    s.sql_ok("DROP TABLE gold.region_totals, gold.empty_ctas")
        .await;
    s.sql_ok("DROP TABLE IF EXISTS gold.region_totals").await;
    let (status, _) = s
        .sql(&s.admin.clone(), "DROP TABLE gold.region_totals")
        .await;
    assert_eq!(status, 404);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn datafusion_ddl_and_unsafe_sql_never_run() {
    let s = seeded().await;
    let admin = s.admin.clone();
    for sql in [
        "CREATE EXTERNAL TABLE x STORED AS CSV LOCATION '/etc/passwd'",
        "COPY (SELECT 1) TO '/tmp/strata-copy.csv'",
        "SET datafusion.execution.batch_size = 1",
        "SELECT * FROM '/etc/passwd'",
        "SELECT * FROM read_csv('/etc/passwd')",
        "SELECT * FROM generate_series(1, 3)",
        "CREATE VIEW gold.v AS SELECT 1",
        "UPDATE gold.people SET name = 'x' FROM gold.people AS o",
        "DELETE FROM gold.people USING gold.people AS o",
        "MERGE INTO gold.people t USING '/etc/passwd' s ON true WHEN MATCHED THEN DELETE",
        "CALL system.shutdown()",
        "SELECT 1; SELECT 2",
        "",
        "SELEC 1",
    ] {
        let (status, body) = s.sql(&admin, sql).await;
        assert!(status == 400 || status == 404, "{sql}: {status} {body}");
        assert!(body["error"]["message"].is_string(), "{sql}: {body}");
    }
    assert!(!std::path::Path::new("/tmp/strata-copy.csv").exists());
    let deep = format!(
        "SELECT {}1{} FROM gold.people",
        "(".repeat(3000),
        ")".repeat(3000)
    );
    let (status, _) = s.sql(&admin, &deep).await;
    assert_eq!(status, 400);
    let (status, body) = s.sql(&admin, "SELECT 1/0").await;
    assert_eq!(status, 400, "{body}");
    // Still serving.
    assert_eq!(s.count("gold.people").await, 20);
}

async fn time_travel_and_history(backend: Backend) {
    let s = TestServer::start_on(backend).await;
    let admin = s.admin.clone();
    s.create_people("gold.people").await;
    let mut stamps = Vec::new();
    for i in 1..=3 {
        let (status, _) = s
            .upload(
                &admin,
                "gold.people",
                "application/json",
                format!(r#"[{{"id":{i}}}]"#).into_bytes(),
                "",
            )
            .await;
        assert_eq!(status, 200);
        stamps.push(chrono::Utc::now());
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    let body = s
        .sql_ok("SELECT count(*) AS n FROM gold.people VERSION AS OF 2")
        .await;
    assert_eq!(body[0]["n"], 2);
    let body = s
        .sql_ok("SELECT p.id FROM gold.people VERSION AS OF 1 AS p ORDER BY p.id")
        .await;
    assert_eq!(body, json!([{"id": 1}]));
    let body = s
        .sql_ok("SELECT (SELECT count(*) FROM gold.people VERSION AS OF 0) AS v0, (SELECT count(*) FROM gold.people) AS now")
        .await;
    assert_eq!(body, json!([{"v0": 0, "now": 3}]));
    let ts = stamps[0].to_rfc3339_opts(chrono::SecondsFormat::Millis, true);
    let body = s
        .sql_ok(&format!(
            "SELECT count(*) AS n FROM gold.people TIMESTAMP AS OF '{ts}'"
        ))
        .await;
    assert_eq!(body[0]["n"], 1, "as of {ts}");

    let (status, body) = s
        .sql(&admin, "SELECT * FROM gold.people VERSION AS OF 99")
        .await;
    assert_eq!(status, 404, "{body}");
    assert!(message(&body).contains("version 99"), "{body}");
    let (status, body) = s
        .sql(
            &admin,
            "SELECT * FROM gold.people TIMESTAMP AS OF '1999-01-01'",
        )
        .await;
    assert_eq!(status, 404, "{body}");
    let (status, _) = s
        .sql(
            &admin,
            "SELECT * FROM gold.people TIMESTAMP AS OF 'yesterday'",
        )
        .await;
    assert_eq!(status, 400);

    let (status, body) = s.get(&admin, "/api/v1/tables/gold/people/history").await;
    assert_eq!(status, 200, "{body}");
    let history = body["history"].as_array().unwrap();
    let versions: Vec<u64> = history
        .iter()
        .map(|h| h["version"].as_u64().unwrap())
        .collect();
    assert_eq!(versions, vec![3, 2, 1, 0]);
    assert_eq!(history[0]["operation"], "WRITE");
    assert_eq!(history[0]["principal"], "admin");
    assert_eq!(history[3]["operation"], "CREATE TABLE");
    let (_, body) = s
        .get(&admin, "/api/v1/tables/gold/people/history?limit=2")
        .await;
    assert_eq!(body["history"].as_array().unwrap().len(), 2);
}

/// A failure after the first batch must not look like a complete result: the body is cut
/// off (a transfer error), never a well-formed but truncated JSON array or CSV.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stream_that_fails_midway_is_not_a_valid_result() {
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = crate::harness::test_config(dir.path());
    cfg.query.batch_size = 2;
    cfg.query.target_partitions = 1;
    let s = TestServer::start_with(cfg).await;
    s.create_people("gold.people").await;
    let rows: Vec<_> = (1..=20).map(|i| json!({"id": i})).collect();
    let (status, _) = s
        .upload(
            &s.admin.clone(),
            "gold.people",
            "application/json",
            serde_json::to_vec(&rows).unwrap(),
            "",
        )
        .await;
    assert_eq!(status, 200);
    for accept in [
        "application/json",
        "text/csv",
        "application/vnd.apache.arrow.stream",
    ] {
        let sent = s
            .client
            .post(s.url("/api/v1/query"))
            .bearer_auth(&s.admin)
            .header("accept", accept)
            .json(&json!({"sql": "SELECT id, 100 / (id - 15) AS x FROM gold.people"}))
            .send()
            .await;
        // Either the connection drops before the headers are flushed, or the body ends in
        // a transfer error; never a 200 with a complete-looking body.
        if let Ok(r) = sent {
            assert_eq!(r.status(), 200, "{accept}");
            assert!(
                r.bytes().await.is_err(),
                "{accept}: the body must end in a transfer error"
            );
        }
    }
    // The server is fine afterwards.
    assert_eq!(s.count("gold.people").await, 20);
    s.stop().await;
}

/// A selective predicate on a sorted column skips the row groups whose statistics rule it
/// out, while rows are filtered above the Parquet decoder (DataFusion's default), not row
/// by row inside it as delta-rs would set up its scan.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn selective_filters_prune_row_groups_without_row_level_filtering() {
    let s = TestServer::start().await;
    // One file of three row groups (the Parquet writer's default is 1 Mi rows per group).
    s.sql_ok(
        "CREATE TABLE gold.sorted AS SELECT v AS id, v % 7 AS k \
         FROM (SELECT unnest(range(0, 2200000)) AS v)",
    )
    .await;
    let sql = "SELECT count(*) AS n FROM gold.sorted WHERE id < 1000 AND k = 3";
    let body = s.sql_ok(sql).await;
    assert_eq!(body, json!([{"n": 143}]));
    let plan = s
        .sql_ok(&format!("EXPLAIN ANALYZE {sql}"))
        .await
        .to_string();
    assert!(
        plan.contains("row_groups_pruned_statistics=3 total → 1 matched"),
        "row groups not pruned: {plan}"
    );
    assert!(
        plan.contains("pushdown_rows_pruned=0,"),
        "rows filtered inside the Parquet decoder: {plan}"
    );
}
