//! The planner sees what the Delta log knows: column statistics (min, max, null count) of
//! every table reach DataFusion, so joins are ordered by real sizes; under a row filter they
//! pass inexact, so no aggregate is ever answered from rows the principal cannot see.

use serde_json::{Value, json};

use crate::harness::TestServer;

/// A 20-row dimension `d`, a 1000-row dimension `m`, and a 100k-row fact `f` keyed to both.
async fn star() -> TestServer {
    let s = TestServer::start().await;
    s.sql_ok("CREATE TABLE gold.d AS SELECT v AS k, 'd' || CAST(v AS STRING) AS name FROM (SELECT unnest(range(1, 21)) AS v)").await;
    s.sql_ok("CREATE TABLE gold.m AS SELECT v AS k, 'm' || CAST(v AS STRING) AS name FROM (SELECT unnest(range(1, 1001)) AS v)").await;
    s.sql_ok("CREATE TABLE gold.f AS SELECT v AS id, v % 20 + 1 AS dk, v % 1000 + 1 AS mk FROM (SELECT unnest(range(0, 100000)) AS v)").await;
    s
}

fn physical(body: &Value) -> String {
    body.as_array()
        .unwrap()
        .iter()
        .find(|r| r["plan_type"] == "physical_plan")
        .unwrap()["plan"]
        .as_str()
        .unwrap()
        .to_string()
}

/// The table whose scan is the build (first) side of the top-most hash join.
fn top_build_side(plan: &str) -> String {
    let after_join = plan
        .split_once("HashJoinExec")
        .map(|(_, rest)| rest)
        .unwrap_or_default();
    ["gold/d/", "gold/m/", "gold/f/"]
        .into_iter()
        .filter_map(|t| after_join.find(t).map(|at| (at, t)))
        .min()
        .map(|(_, t)| t.to_string())
        .unwrap_or_default()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn joins_are_ordered_by_the_logs_statistics_with_or_without_a_row_filter() {
    let s = star().await;
    let q = "EXPLAIN SELECT count(*) AS n FROM gold.d JOIN gold.f ON d.k = f.dk JOIN gold.m ON f.mk = m.k";
    // d ⋈ f has as many rows as f (100k); m (1000 rows) must be the build side of the join
    // above it. Without column statistics DataFusion took d ⋈ f for 20 rows and built on it.
    let plan = physical(&s.sql_ok(q).await);
    assert!(plan.contains("DeltaStatistics"), "{plan}");
    assert_eq!(top_build_side(&plan), "gold/m/", "{plan}");

    // The same under a row filter: statistics pass (inexact) through the policy.
    let (status, body) = s
        .put_json(
            &s.admin.clone(),
            "/api/v1/tables/gold/f/policies",
            json!({"row_filters": [{"roles": ["analyst"], "predicate": "dk <= 10"}]}),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    let filtered_admin = s.token("ann", &["analyst", "admin"]);
    let (status, body) = s.sql(&filtered_admin, q).await;
    assert_eq!(status, 200, "{body}");
    let plan = physical(&body);
    assert!(plan.contains("PolicyExec"), "{plan}");
    assert_eq!(top_build_side(&plan), "gold/m/", "{plan}");

    // No aggregate comes from statistics of rows the principal cannot see.
    let (status, body) = s
        .sql(
            &filtered_admin,
            "SELECT count(*) AS n, min(dk) AS lo, max(dk) AS hi, count(id) AS c FROM gold.f",
        )
        .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body, json!([{"n": 50000, "lo": 1, "hi": 10, "c": 50000}]));
    let (_, body) = s
        .sql(
            &s.admin.clone(),
            "SELECT count(*) AS n, max(dk) AS hi FROM gold.f",
        )
        .await;
    assert_eq!(
        body,
        json!([{"n": 0, "hi": null}]),
        "admin alone has no filter: no rows"
    );
}

/// String IN lists run through Strata's byte-comparing expression in filters, projections and
/// row filters, with DataFusion's three-valued answers (NULL rows, NOT IN), while the scan
/// keeps DataFusion's own predicate for file pruning.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn string_in_lists_answer_like_sql_in_filters_projections_and_row_filters() {
    let s = TestServer::start().await;
    let long = "a value longer than twelve bytes";
    s.sql_ok(&format!(
        "CREATE TABLE gold.codes AS SELECT v AS id, CASE WHEN v % 5 = 4 THEN NULL \
         WHEN v % 5 = 3 THEN '{long}' ELSE 'r' || CAST(v % 5 AS STRING) END AS region \
         FROM (SELECT unnest(range(0, 1000)) AS v)"
    ))
    .await;
    let admin = s.admin.clone();
    let count = |sql: String| {
        let s = &s;
        let admin = admin.clone();
        async move {
            let (status, body) = s.sql(&admin, &sql).await;
            assert_eq!(status, 200, "{sql}: {body}");
            body
        }
    };
    let n = |body: Value| body[0]["n"].as_i64().unwrap();
    // 200 rows each of r0, r1, r2, the long value and NULL.
    for (predicate, expected) in [
        ("region IN ('r0', 'r2')".to_string(), 400),
        ("region NOT IN ('r0', 'r2')".to_string(), 400),
        (format!("region IN ('{long}', 'r1')"), 400),
        (format!("region NOT IN ('{long}')"), 600),
        ("region IN ('r9')".to_string(), 0),
        ("region NOT IN ('r0', NULL)".to_string(), 0),
        ("region IN ('r0', NULL)".to_string(), 200),
    ] {
        let q = format!("SELECT count(*) AS n FROM gold.codes WHERE {predicate}");
        assert_eq!(n(count(q).await), expected, "{predicate}");
    }
    // In a projection: NULL rows give NULL, not false.
    let body = count(
        "SELECT count(*) AS n, count(region IN ('r0', 'r1')) AS answered, \
         sum(CASE WHEN region NOT IN ('r0', 'r1') THEN 1 ELSE 0 END) AS outside FROM gold.codes"
            .into(),
    )
    .await;
    assert_eq!(body, json!([{"n": 1000, "answered": 800, "outside": 400}]));

    // (DataFusion turns a list of up to three items into `=` … `OR`.)
    let plan = physical(
        &count("EXPLAIN SELECT id FROM gold.codes WHERE region IN ('r0', 'r2', 'r5', 'r7')".into())
            .await,
    );
    assert!(plan.contains("region@1 IN (STRINGS)"), "{plan}");
    assert!(
        plan.contains("predicate=region@1 IN (SET)") && plan.contains("pruning_predicate="),
        "the scan prunes files with DataFusion's own expression: {plan}"
    );

    // Inside a row filter (planned under the policy).
    let (status, body) = s
        .put_json(
            &admin,
            "/api/v1/tables/gold/codes/policies",
            json!({"row_filters": [{"roles": ["analyst"], "predicate": "region IN ('r1', 'r2')"}]}),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    let analyst = s.token("ann", &["analyst", "admin"]);
    let (status, body) = s
        .sql(
            &analyst,
            "SELECT count(*) AS n FROM gold.codes WHERE region NOT IN ('r2')",
        )
        .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body, json!([{"n": 200}]));
}
