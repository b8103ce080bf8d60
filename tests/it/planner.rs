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
