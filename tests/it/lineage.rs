//! Lineage against the real server: column lineage of 35 SQL shapes, five write kinds and a
//! masked read as a reviewed snapshot (`snapshots/it__lineage__column_lineage.snap`), and
//! the lineage API under access control (depth, direction, hidden nodes, model runs).

use std::collections::BTreeSet;

use serde_json::{Value, json};

use crate::flows::{bundle, deployer, run, with_etl};
use crate::harness::{Backend, TestServer, message};

const SOURCES: [&str; 6] = [
    "CREATE TABLE bronze.orders (id BIGINT, customer_id BIGINT, amount DOUBLE, status STRING, \
     region STRING, ordered_at TIMESTAMP)",
    "INSERT INTO bronze.orders VALUES (1, 10, 50.0, 'paid', 'eu', TIMESTAMP '2026-01-01 10:00:00'), \
     (2, 10, 150.0, 'open', 'eu', TIMESTAMP '2026-01-02 10:00:00'), \
     (3, 11, 300.0, 'paid', 'us', TIMESTAMP '2026-01-02 11:00:00')",
    "CREATE TABLE bronze.customers (id BIGINT, name STRING, country STRING, tier STRING)",
    "INSERT INTO bronze.customers VALUES (10, 'ana', 'DE', 'gold'), (11, 'ben', 'US', 'silver')",
    "CREATE TABLE bronze.returns (order_id BIGINT, reason STRING, amount DOUBLE)",
    "INSERT INTO bronze.returns VALUES (2, 'late', 150.0)",
];

/// Shapes written as `CREATE TABLE gold.<name> AS <sql>`.
const SHAPES: [(&str, &str); 35] = [
    ("select_star", "SELECT * FROM bronze.customers"),
    (
        "alias",
        "SELECT id AS order_id, amount AS total FROM bronze.orders",
    ),
    (
        "arithmetic",
        "SELECT id, amount * 1.2 AS gross FROM bronze.orders",
    ),
    (
        "function",
        "SELECT id, upper(status) AS status_uc FROM bronze.orders",
    ),
    ("literal", "SELECT id, 'x' AS tag FROM bronze.orders"),
    (
        "cast",
        "SELECT CAST(id AS STRING) AS id_text FROM bronze.orders",
    ),
    (
        "filter",
        "SELECT id, amount FROM bronze.orders WHERE status = 'paid'",
    ),
    (
        "case_searched",
        "SELECT id, CASE WHEN amount > 100 THEN 'big' ELSE status END AS size FROM bronze.orders",
    ),
    (
        "case_simple",
        "SELECT id, CASE region WHEN 'eu' THEN amount ELSE 0 END AS eu_amount FROM bronze.orders",
    ),
    (
        "coalesce",
        "SELECT id, coalesce(status, region) AS label FROM bronze.orders",
    ),
    (
        "aggregate",
        "SELECT customer_id, sum(amount) AS total, count(*) AS n FROM bronze.orders GROUP BY customer_id",
    ),
    (
        "aggregate_filter",
        "SELECT customer_id, sum(amount) FILTER (WHERE status = 'paid') AS paid FROM bronze.orders GROUP BY customer_id",
    ),
    (
        "having",
        "SELECT region, avg(amount) AS avg_amount FROM bronze.orders GROUP BY region HAVING count(*) > 1",
    ),
    (
        "count_distinct",
        "SELECT count(DISTINCT customer_id) AS customers FROM bronze.orders",
    ),
    (
        "group_by_expression",
        "SELECT date_trunc('day', ordered_at) AS day, count(*) AS n FROM bronze.orders GROUP BY 1",
    ),
    (
        "sum_of_case",
        "SELECT region, sum(CASE WHEN status = 'paid' THEN amount ELSE 0 END) AS paid FROM bronze.orders GROUP BY region",
    ),
    (
        "inner_join",
        "SELECT o.id, c.name FROM bronze.orders o JOIN bronze.customers c ON o.customer_id = c.id",
    ),
    (
        "left_join",
        "SELECT o.id, r.reason FROM bronze.orders o LEFT JOIN bronze.returns r ON r.order_id = o.id",
    ),
    (
        "self_join",
        "SELECT a.id, b.id AS next_id FROM bronze.orders a JOIN bronze.orders b ON b.id = a.id + 1",
    ),
    (
        "join_and_filter",
        "SELECT c.name, o.amount FROM bronze.customers c JOIN bronze.orders o ON o.customer_id = c.id WHERE c.country = 'DE'",
    ),
    (
        "cte",
        "WITH paid AS (SELECT id, amount FROM bronze.orders WHERE status = 'paid') SELECT id AS paid_id, amount FROM paid",
    ),
    (
        "cte_chain",
        "WITH a AS (SELECT id, amount * 2 AS double_amount FROM bronze.orders), b AS (SELECT id, double_amount + 1 AS x FROM a) SELECT * FROM b",
    ),
    (
        "derived_table",
        "SELECT t.id FROM (SELECT id, amount FROM bronze.orders WHERE amount > 5) t",
    ),
    (
        "union_all",
        "SELECT id, amount FROM bronze.orders UNION ALL SELECT order_id, amount FROM bronze.returns",
    ),
    (
        "union_distinct",
        "SELECT region AS place FROM bronze.orders UNION SELECT country FROM bronze.customers",
    ),
    (
        "window_rank",
        "SELECT id, row_number() OVER (PARTITION BY customer_id ORDER BY ordered_at) AS rn FROM bronze.orders",
    ),
    (
        "window_sum",
        "SELECT id, sum(amount) OVER (PARTITION BY region) AS region_total FROM bronze.orders",
    ),
    (
        "order_limit",
        "SELECT id, amount FROM bronze.orders ORDER BY amount DESC LIMIT 2",
    ),
    ("distinct", "SELECT DISTINCT region FROM bronze.orders"),
    (
        "in_subquery",
        "SELECT id FROM bronze.orders WHERE customer_id IN (SELECT id FROM bronze.customers WHERE tier = 'gold')",
    ),
    (
        "exists",
        "SELECT c.id FROM bronze.customers c WHERE EXISTS (SELECT 1 FROM bronze.orders o WHERE o.customer_id = c.id)",
    ),
    (
        "scalar_subquery",
        "SELECT id, amount - (SELECT avg(amount) FROM bronze.orders) AS diff FROM bronze.orders",
    ),
    ("values", "SELECT * FROM (VALUES (1, 'a')) AS v(k, name)"),
    (
        "concatenation",
        "SELECT id, name || '-' || country AS label FROM bronze.customers",
    ),
    (
        "star_and_expression",
        "SELECT *, amount > 100 AS big FROM bronze.returns",
    ),
];

/// Writes other than CTAS: (output table, statements).
const WRITES: [(&str, &[&str]); 5] = [
    (
        "w_insert",
        &[
            "CREATE TABLE gold.w_insert (id BIGINT, total DOUBLE)",
            "INSERT INTO gold.w_insert SELECT id, amount * 2 FROM bronze.orders WHERE region = 'eu'",
        ],
    ),
    (
        "w_insert_columns",
        &[
            "CREATE TABLE gold.w_insert_columns (id BIGINT, note STRING, total DOUBLE)",
            "INSERT INTO gold.w_insert_columns (total, id) SELECT amount, order_id FROM bronze.returns",
        ],
    ),
    (
        "w_merge",
        &[
            "CREATE TABLE gold.w_merge (id BIGINT, total DOUBLE, reason STRING)",
            "MERGE INTO gold.w_merge AS t USING (SELECT o.id, o.amount, r.reason FROM bronze.orders o \
             LEFT JOIN bronze.returns r ON r.order_id = o.id) AS s ON t.id = s.id \
             WHEN MATCHED AND s.amount > 0 THEN UPDATE SET total = s.amount \
             WHEN NOT MATCHED THEN INSERT (id, total, reason) VALUES (s.id, s.amount, upper(s.reason))",
        ],
    ),
    (
        "w_update",
        &[
            "CREATE TABLE gold.w_update (id BIGINT, total DOUBLE, flag STRING)",
            "INSERT INTO gold.w_update VALUES (1, 1.0, 'a')",
            "UPDATE gold.w_update SET flag = CAST(total AS STRING) WHERE id > 0",
        ],
    ),
    (
        "w_delete",
        &[
            "CREATE TABLE gold.w_delete (id BIGINT, total DOUBLE)",
            "INSERT INTO gold.w_delete VALUES (1, 1.0)",
            "DELETE FROM gold.w_delete WHERE total > 0",
        ],
    ),
];

/// The column lineage of every column of `gold.<table>`, one line per edge, from the API
/// (one hop upstream), written by `job`s other than `skip_job`.
async fn render(s: &TestServer, token: &str, table: &str, skip_job: Option<&str>) -> String {
    let (status, info) = s.get(token, &format!("/api/v1/tables/gold/{table}")).await;
    assert_eq!(status, 200, "{info}");
    let mut lines = BTreeSet::new();
    for column in info["columns"].as_array().unwrap() {
        let column = column["name"].as_str().unwrap();
        let (status, graph) = s
            .get(
                token,
                &format!(
                    "/api/v1/lineage/columns/gold/{table}/{column}?direction=upstream&depth=1"
                ),
            )
            .await;
        assert_eq!(status, 200, "{graph}");
        for e in graph["edges"].as_array().unwrap() {
            if skip_job.is_some_and(|j| e["jobs"].as_array().unwrap().iter().all(|x| x == j)) {
                continue;
            }
            let to = e["to"].as_str().unwrap();
            let target = if to == format!("gold.{table}") {
                "*".to_string()
            } else {
                to.rsplit('.').next().unwrap().to_string()
            };
            for t in e["transformations"].as_array().unwrap() {
                let masking = if t["masking"] == true { " masking" } else { "" };
                lines.insert(format!(
                    "{target} <- {} {}/{}{masking}",
                    e["from"].as_str().unwrap(),
                    t["type"].as_str().unwrap(),
                    t["subtype"].as_str().unwrap()
                ));
            }
        }
    }
    lines.into_iter().collect::<Vec<_>>().join("\n")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn column_lineage_of_sql_shapes_matches_the_golden_file() {
    let s = TestServer::start().await;
    let admin = s.admin.clone();
    for sql in SOURCES {
        s.sql_ok(sql).await;
    }
    let mut out = String::new();
    for (name, sql) in SHAPES {
        s.sql_ok(&format!("CREATE TABLE gold.{name} AS {sql}"))
            .await;
        let lines = render(&s, &admin, name, None).await;
        out.push_str(&format!("## {name}: {sql}\n{lines}\n\n"));
    }
    for (name, statements) in WRITES {
        for sql in statements {
            s.sql_ok(sql).await;
        }
        let lines = render(&s, &admin, name, None).await;
        out.push_str(&format!(
            "## {name}: {}\n{lines}\n\n",
            statements.last().unwrap()
        ));
    }

    // A writer who reads a column through a mask: its edges say so.
    s.grant(json!([
        {"role": "masked", "privilege": "SELECT", "on": "bronze"},
        {"role": "masked", "privilege": "MANAGE", "on": "gold"}
    ]))
    .await;
    let (status, body) = s
        .put_json(
            &admin,
            "/api/v1/tables/bronze/customers/policies",
            json!({"column_masks": [{"column": "name", "mask": "left(name, 1) || '***'"}]}),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    let masked = s.token("mia", &["masked"]);
    let sql = "SELECT id, name, country FROM bronze.customers";
    let (status, body) = s
        .sql(&masked, &format!("CREATE TABLE gold.masked AS {sql}"))
        .await;
    assert_eq!(status, 200, "{body}");
    let lines = render(&s, &admin, "masked", None).await;
    out.push_str(&format!("## masked: {sql}\n{lines}\n"));

    // Reviewed by hand; `INSTA_UPDATE=always` rewrites it after a reviewed change.
    insta::assert_snapshot!("column_lineage", out);
}

/// Node ids of a graph, the hidden count apart.
fn node_ids(graph: &Value) -> BTreeSet<String> {
    graph["nodes"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|n| n["id"].as_str().map(str::to_string))
        .collect()
}

fn hidden(graph: &Value) -> u64 {
    graph["nodes"]
        .as_array()
        .unwrap()
        .iter()
        .find_map(|n| n["hidden"].as_u64())
        .unwrap_or(0)
}

fn edges(graph: &Value) -> BTreeSet<(String, String)> {
    graph["edges"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| {
            (
                e["from"].as_str().unwrap().to_string(),
                e["to"].as_str().unwrap().to_string(),
            )
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_lineage_api_walks_both_ways_and_never_names_what_the_caller_cannot_see() {
    let s = TestServer::start_configured(Backend::Local, with_etl).await;
    let admin = s.admin.clone();
    for sql in [
        "CREATE TABLE bronze.raw (id BIGINT, secret STRING)",
        "INSERT INTO bronze.raw VALUES (1, 'x'), (2, 'y')",
    ] {
        s.sql_ok(sql).await;
    }
    // A model (a pipeline run) and two ad-hoc writes: bronze.raw → silver.clean →
    // gold.report, gold.extra.
    let deployer = deployer(&s);
    let (status, body) = s
        .put_json(
            &deployer,
            "/api/v1/pipelines/clean",
            bundle(&[(
                "silver/clean.sql",
                "/* strata\nkind = \"table\"\ndescription = \"Cleaned ids\"\n*/\nSELECT id FROM bronze.raw WHERE secret <> 'z'",
            )]),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    let record = run(&s, &deployer, "clean").await;
    assert_eq!(record["status"], "succeeded", "{record}");
    s.sql_ok("CREATE TABLE gold.report AS SELECT sum(id) AS total FROM silver.clean")
        .await;
    s.sql_ok("CREATE TABLE gold.extra (id BIGINT)").await;
    s.sql_ok("INSERT INTO gold.extra SELECT id FROM silver.clean")
        .await;

    // Both ways from the middle, as an admin: every table, the model's job and description.
    let (status, graph) = s
        .get(&admin, "/api/v1/lineage/tables/silver/clean?depth=1")
        .await;
    assert_eq!(status, 200, "{graph}");
    assert_eq!(
        node_ids(&graph),
        BTreeSet::from(
            ["bronze.raw", "silver.clean", "gold.report", "gold.extra"].map(String::from)
        )
    );
    let into_clean = graph["edges"]
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["to"] == "silver.clean")
        .unwrap();
    assert_eq!(into_clean["jobs"], json!(["model silver.clean"]), "{graph}");
    let clean = graph["nodes"]
        .as_array()
        .unwrap()
        .iter()
        .find(|n| n["id"] == "silver.clean")
        .unwrap();
    assert_eq!(clean["description"], "Cleaned ids", "{graph}");
    let report_edge = graph["edges"]
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["to"] == "gold.report")
        .unwrap();
    assert_eq!(
        report_edge["jobs"],
        json!(["CREATE TABLE AS SELECT"]),
        "{graph}"
    );

    // Direction and depth.
    let (_, down1) = s
        .get(
            &admin,
            "/api/v1/lineage/tables/bronze/raw?direction=downstream&depth=1",
        )
        .await;
    assert_eq!(
        node_ids(&down1),
        BTreeSet::from(["bronze.raw", "silver.clean"].map(String::from))
    );
    let (_, down2) = s
        .get(
            &admin,
            "/api/v1/lineage/tables/bronze/raw?direction=downstream&depth=2",
        )
        .await;
    assert_eq!(node_ids(&down2).len(), 4, "{down2}");
    let (_, up) = s
        .get(
            &admin,
            "/api/v1/lineage/tables/gold/report?direction=upstream&depth=5",
        )
        .await;
    assert_eq!(
        node_ids(&up),
        BTreeSet::from(["bronze.raw", "silver.clean", "gold.report"].map(String::from)),
        "upstream never turns downstream: {up}"
    );

    // An analyst without any grant on bronze: the raw table is counted, never named.
    s.grant(json!([
        {"role": "analyst", "privilege": "SELECT", "on": "silver"},
        {"role": "analyst", "privilege": "SELECT", "on": "gold"}
    ]))
    .await;
    let analyst = s.token("ana", &["analyst"]);
    let (status, graph) = s
        .get(
            &analyst,
            "/api/v1/lineage/tables/gold/report?direction=upstream&depth=2",
        )
        .await;
    assert_eq!(status, 200, "{graph}");
    assert_eq!(
        node_ids(&graph),
        BTreeSet::from(["silver.clean", "gold.report"].map(String::from))
    );
    assert_eq!(hidden(&graph), 1, "{graph}");
    assert_eq!(graph["hidden_edges"], 1, "{graph}");
    assert_eq!(
        edges(&graph),
        BTreeSet::from([("silver.clean".to_string(), "gold.report".to_string())])
    );
    assert!(!graph.to_string().contains("raw"), "{graph}");
    let (_, shallow) = s
        .get(
            &analyst,
            "/api/v1/lineage/tables/gold/report?direction=upstream&depth=1",
        )
        .await;
    assert_eq!(hidden(&shallow), 0, "{shallow}");

    // Column lineage, the same rule: the sum's input is shown, its own input counted.
    let (status, graph) = s
        .get(
            &analyst,
            "/api/v1/lineage/columns/gold/report/total?direction=upstream&depth=2",
        )
        .await;
    assert_eq!(status, 200, "{graph}");
    let sum = graph["edges"]
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["from"] == "silver.clean.id" && e["to"] == "gold.report.total")
        .unwrap_or_else(|| panic!("{graph}"));
    assert_eq!(
        sum["transformations"],
        json!([{"type": "DIRECT", "subtype": "AGGREGATION", "masking": false}])
    );
    assert!(hidden(&graph) >= 1, "{graph}");
    assert!(!graph.to_string().contains("raw"), "{graph}");

    // A writer without SELECT on the upstream table: still counted, never named.
    s.grant(json!([
        {"role": "analyst", "privilege": "SELECT", "on": "silver"},
        {"role": "analyst", "privilege": "SELECT", "on": "gold"},
        {"role": "analyst", "privilege": "INSERT", "on": "bronze.raw"}
    ]))
    .await;
    let (_, graph) = s
        .get(
            &analyst,
            "/api/v1/lineage/tables/gold/report?direction=upstream&depth=2",
        )
        .await;
    assert_eq!(hidden(&graph), 1, "{graph}");
    assert!(!graph.to_string().contains("raw"), "{graph}");
    let (status, body) = s.get(&analyst, "/api/v1/lineage/tables/bronze/raw").await;
    assert_eq!(status, 403, "{body}");

    // A table the caller may not see does not exist for it; bad parameters are 400.
    let analyst = s.token("ann", &["nobody"]);
    let (status, body) = s.get(&analyst, "/api/v1/lineage/tables/bronze/raw").await;
    assert_eq!(status, 404, "{body}");
    assert!(!message(&body).contains("secret"), "{body}");
    let (status, body) = s
        .get(
            &admin,
            "/api/v1/lineage/tables/gold/report?direction=sideways",
        )
        .await;
    assert_eq!(status, 400, "{body}");
    let (status, body) = s
        .get(&admin, "/api/v1/lineage/columns/gold/report/nope")
        .await;
    assert_eq!(status, 404, "{body}");
}

/// `(source, input, output, subtype)` rows of `system.lineage_edges` for `token`.
async fn edge_rows(s: &TestServer, token: &str) -> BTreeSet<(String, String, String, String)> {
    let (status, rows) = s
        .sql(
            token,
            "SELECT source, input_table || coalesce('.' || input_column, '') AS i, \
             output_table || coalesce('.' || output_column, '') AS o, \
             coalesce(transformation_subtype, '-') AS t FROM system.lineage_edges",
        )
        .await;
    assert_eq!(status, 200, "{rows}");
    rows.as_array()
        .unwrap()
        .iter()
        .map(|r| {
            let f = |k: &str| r[k].as_str().unwrap_or_default().to_string();
            (f("source"), f("i"), f("o"), f("t"))
        })
        .collect()
}

fn row(source: &str, i: &str, o: &str, t: &str) -> (String, String, String, String) {
    (source.into(), i.into(), o.into(), t.into())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lineage_edges_are_queryable_and_a_deploy_plans_a_models_lineage_before_it_runs() {
    let s = TestServer::start_configured(Backend::Local, with_etl).await;
    let admin = s.admin.clone();
    s.sql_ok("CREATE TABLE bronze.raw (id BIGINT, secret STRING)")
        .await;
    s.sql_ok("INSERT INTO bronze.raw VALUES (1, 'x'), (2, 'y')")
        .await;
    let deployer = deployer(&s);
    let deploy = |select: &'static str| {
        let (s, deployer) = (&s, deployer.clone());
        async move {
            let sql = format!("/* strata\nkind = \"table\"\n*/\n{select}");
            let (status, body) = s
                .put_json(
                    &deployer,
                    "/api/v1/pipelines/clean",
                    bundle(&[("silver/clean.sql", sql.as_str())]),
                )
                .await;
            assert_eq!(status, 200, "{body}");
        }
    };

    // Deployed, never run: the plan's lineage is already there (static), in the API and
    // in system.lineage_edges.
    deploy("SELECT id, upper(secret) AS s FROM bronze.raw WHERE id > 0").await;
    let (status, graph) = s
        .get(
            &admin,
            "/api/v1/lineage/tables/bronze/raw?direction=downstream",
        )
        .await;
    assert_eq!(status, 200, "{graph}");
    assert_eq!(
        edges(&graph),
        BTreeSet::from([("bronze.raw".to_string(), "silver.clean".to_string())]),
        "{graph}"
    );
    let planned = edge_rows(&s, &admin).await;
    for r in [
        row("deploy", "bronze.raw.id", "silver.clean.id", "IDENTITY"),
        row(
            "deploy",
            "bronze.raw.secret",
            "silver.clean.s",
            "TRANSFORMATION",
        ),
        row("deploy", "bronze.raw.id", "silver.clean", "FILTER"),
    ] {
        assert!(planned.contains(&r), "{r:?} missing from {planned:?}");
    }
    assert!(planned.iter().all(|r| r.0 == "deploy"), "{planned:?}");

    // A run records the same edges in its commit, with its run id.
    let record = run(&s, &deployer, "clean").await;
    assert_eq!(record["status"], "succeeded", "{record}");
    let ran = s
        .sql_ok(
            "SELECT DISTINCT run_id, output_version, input_version FROM system.lineage_edges \
             WHERE source = 'commit'",
        )
        .await;
    assert_eq!(
        ran,
        json!([{"run_id": record["run_id"], "output_version": 1, "input_version": 1}]),
        "{ran}"
    );

    // A redeploy that changes the SQL is the model's lineage now (before its next run), and
    // the run after it supersedes it; the history keeps both.
    deploy("SELECT id, secret AS s FROM bronze.raw").await;
    let column = "/api/v1/lineage/columns/silver/clean/s?direction=upstream&depth=1";
    let subtypes = |graph: &Value| -> Vec<String> {
        graph["edges"]
            .as_array()
            .unwrap()
            .iter()
            .flat_map(|e| e["transformations"].as_array().unwrap().clone())
            .map(|t| t["subtype"].as_str().unwrap().to_string())
            .collect()
    };
    let (_, graph) = s.get(&admin, column).await;
    assert_eq!(subtypes(&graph), ["IDENTITY"], "{graph}");
    s.sql_ok("INSERT INTO bronze.raw VALUES (3, 'z')").await;
    let record = run(&s, &deployer, "clean").await;
    assert_eq!(record["status"], "succeeded", "{record}");
    let (_, graph) = s.get(&admin, column).await;
    assert_eq!(subtypes(&graph), ["IDENTITY"], "{graph}");
    let all = edge_rows(&s, &admin).await;
    assert!(
        all.contains(&row(
            "commit",
            "bronze.raw.secret",
            "silver.clean.s",
            "TRANSFORMATION"
        )) && all.contains(&row(
            "commit",
            "bronze.raw.secret",
            "silver.clean.s",
            "IDENTITY"
        )),
        "{all:?}"
    );

    // Ad-hoc writes appear at once (a cached answer never hides a new commit); an analyst
    // sees only edges whose two ends it may read.
    let before = edge_rows(&s, &admin).await;
    s.sql_ok("CREATE TABLE gold.report AS SELECT count(id) AS n FROM silver.clean")
        .await;
    let after = edge_rows(&s, &admin).await;
    assert!(
        after.contains(&row(
            "commit",
            "silver.clean.id",
            "gold.report.n",
            "AGGREGATION"
        )),
        "{after:?}"
    );
    assert!(after.len() > before.len());
    s.grant(json!([
        {"role": "analyst", "privilege": "SELECT", "on": "silver"},
        {"role": "analyst", "privilege": "SELECT", "on": "gold"}
    ]))
    .await;
    let analyst = s.token("ana", &["analyst"]);
    let seen = edge_rows(&s, &analyst).await;
    assert_eq!(
        seen,
        BTreeSet::from([row(
            "commit",
            "silver.clean.id",
            "gold.report.n",
            "AGGREGATION"
        )]),
    );
    let nobody = s.token("ann", &["nobody"]);
    assert!(edge_rows(&s, &nobody).await.is_empty());
    let (_, tables) = s
        .sql(
            &analyst,
            "SELECT table_name FROM information_schema.tables WHERE table_schema = 'system'",
        )
        .await;
    assert!(tables.to_string().contains("lineage_edges"), "{tables}");
}
