//! Data quality against the real server: expectations (warn, drop, quarantine, fail,
//! fail_if, the quarantine cap), the quarantine's exactly-once across a crash, audits that
//! stop downstream models, and results that agree in `system.*` tables, the run record and
//! the metrics.

use std::collections::BTreeSet;
use std::time::Duration;

use serde_json::{Value, json};

use crate::flows::{bundle, deployer, run, with_etl};
use crate::harness::{
    Backend, StrataProcess, TestServer, armed, deployer_token, etl_env, message, send,
};

const READINGS: &str = "CREATE TABLE bronze.readings (id BIGINT, v DOUBLE, kind STRING) \
     TBLPROPERTIES ('delta.enableChangeDataFeed' = 'true')";

/// Three rules, one of each per-row action, over `bronze.readings`.
const CHECKED: &str = r#"/* strata
kind = "append"
[[expect]]
name = "small"
check = "v < 4"
on_violation = "warn"
[[expect]]
name = "v_positive"
check = "v > 0"
on_violation = "drop"
[[expect]]
name = "kind_valid"
check = "kind IN ('a', 'b')"
on_violation = "quarantine"
*/
SELECT id, v, kind FROM stream('bronze.readings')"#;

/// With `etl` (reads bronze, writes silver and gold) and `silver_reader` (reads silver).
async fn server(backend: Backend) -> (TestServer, String) {
    let s = TestServer::start_configured(backend, |cfg| {
        with_etl(cfg);
        cfg.access.grants.push(strata::config::GrantConfig {
            role: "silver_reader".into(),
            privilege: "SELECT".into(),
            on: "silver".into(),
        });
    })
    .await;
    let token = deployer(&s);
    s.sql_ok(READINGS).await;
    (s, token)
}

async fn deploy(s: &TestServer, token: &str, model: &str) -> (u16, Value) {
    s.put_json(
        token,
        "/api/v1/pipelines/readings",
        bundle(&[("silver/readings.sql", model)]),
    )
    .await
}

/// An INSERT of readings `ids`, each `(id, 1.0, 'a')`.
fn rows(ids: std::ops::RangeInclusive<i64>) -> String {
    let values: Vec<String> = ids.map(|i| format!("({i}, 1.0, 'a')")).collect();
    format!("INSERT INTO bronze.readings VALUES {}", values.join(", "))
}

fn ids_of(rows: &Value) -> Vec<i64> {
    rows.as_array()
        .unwrap()
        .iter()
        .map(|r| r["id"].as_i64().unwrap())
        .collect()
}

fn model_of(record: &Value) -> &Value {
    &record["models"][0]
}

fn tally<'a>(record: &'a Value, name: &str) -> &'a Value {
    model_of(record)["expectations"]
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["name"] == name)
        .unwrap_or_else(|| panic!("no tally of {name} in {record}"))
}

/// The sum of a counter's samples whose labels include every one of `labels`.
fn counter(metrics: &str, name: &str, labels: &[&str]) -> f64 {
    metrics
        .lines()
        .filter(|l| l.starts_with(name) && labels.iter().all(|x| l.contains(x)))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

/// One batch meets every action: warn keeps and counts, drop removes and counts (a NULL
/// check is a violation), quarantine writes the rows with every rule they failed; the run
/// record, `system.expectation_results`, `system.model_runs` and the metrics agree.
async fn each_action_on_one_batch(backend: Backend) {
    let (s, token) = server(backend).await;
    let (status, body) = deploy(&s, &token, CHECKED).await;
    assert_eq!(status, 200, "{body}");
    s.sql_ok(
        "INSERT INTO bronze.readings VALUES (1, 1.0, 'a'), (2, NULL, 'a'), (3, -1.0, 'a'), \
         (4, 5.0, 'x'), (5, -2.0, 'x'), (6, 2.0, NULL), (7, 3.0, 'b'), (8, 10.0, 'b')",
    )
    .await;
    let record = run(&s, &token, "readings").await;
    assert_eq!(record["status"], "succeeded", "{record}");
    let m = model_of(&record);
    assert_eq!(m["rows_dropped"], 2, "{record}");
    assert_eq!(m["rows_quarantined"], 3, "{record}");
    assert_eq!(m["quarantine_over_cap"], 0, "{record}");
    for (name, failed) in [("small", 3), ("v_positive", 3), ("kind_valid", 3)] {
        let t = tally(&record, name);
        assert_eq!(t["failed"], failed, "{name}: {t}");
        assert_eq!(t["rows"], 8, "{name}: {t}");
    }
    let kept = s.sql_ok("SELECT id FROM silver.readings ORDER BY id").await;
    assert_eq!(
        ids_of(&kept),
        [1, 7, 8],
        "warned rows stay, dropped ones go"
    );
    let q = s
        .sql_ok(
            "SELECT id, _strata_failed_expectations AS failed, _strata_run_id AS run \
             FROM silver.readings__quarantine ORDER BY id",
        )
        .await;
    assert_eq!(ids_of(&q), [4, 5, 6]);
    let failed: Vec<&str> = q
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["failed"].as_str().unwrap())
        .collect();
    assert_eq!(
        failed,
        ["small,kind_valid", "v_positive,kind_valid", "kind_valid"]
    );
    assert!(
        q.as_array()
            .unwrap()
            .iter()
            .all(|r| r["run"] == record["run_id"])
    );

    // The same numbers as data.
    let results = s
        .sql_ok(&format!(
            "SELECT expectation, action, rows, passed, failed FROM system.expectation_results \
             WHERE run_id = '{}' ORDER BY expectation",
            record["run_id"].as_str().unwrap()
        ))
        .await;
    assert_eq!(
        results,
        json!([
            {"expectation": "kind_valid", "action": "quarantine", "rows": 8, "passed": 5, "failed": 3},
            {"expectation": "small", "action": "warn", "rows": 8, "passed": 5, "failed": 3},
            {"expectation": "v_positive", "action": "drop", "rows": 8, "passed": 5, "failed": 3},
        ])
    );
    let counts = s
        .sql_ok("SELECT rows_dropped, rows_quarantined FROM system.model_runs WHERE model = 'silver.readings'")
        .await;
    assert_eq!(counts, json!([{"rows_dropped": 2, "rows_quarantined": 3}]));
    let metrics = s.metrics_text().await;
    for (name, action) in [
        ("small", "warn"),
        ("v_positive", "drop"),
        ("kind_valid", "quarantine"),
    ] {
        assert_eq!(
            counter(
                &metrics,
                "strata_expectation_violations_total",
                &[
                    "model=\"silver.readings\"",
                    &format!("expectation=\"{name}\""),
                    &format!("action=\"{action}\"")
                ]
            ),
            3.0,
            "{name}"
        );
    }

    // A reader of silver sees the results, without the samples (it does not manage
    // bronze); a principal without silver sees no row at all.
    let (status, rows) = s
        .sql(
            &s.token("analyst", &["silver_reader"]),
            "SELECT expectation, failed, samples FROM system.expectation_results ORDER BY expectation",
        )
        .await;
    assert_eq!(status, 200, "{rows}");
    assert_eq!(rows.as_array().unwrap().len(), 3, "{rows}");
    assert!(
        rows.as_array()
            .unwrap()
            .iter()
            .all(|r| r["failed"] == 3 && r["samples"].is_null()),
        "{rows}"
    );
    let (status, rows) = s
        .sql(
            &s.token("nobody", &[]),
            "SELECT count(*) AS n FROM system.expectation_results",
        )
        .await;
    assert_eq!(status, 200, "{rows}");
    assert_eq!(rows[0]["n"], 0);
    // The quarantine is governed by its model table's policy: a row filter and a mask set
    // on silver.readings apply to silver.readings__quarantine too.
    let (status, body) = s
        .put_json(
            &token,
            "/api/v1/tables/silver/readings/policies",
            json!({
                "row_filters": [{"roles": ["silver_reader"], "predicate": "kind = 'x'"}],
                "column_masks": [{"column": "v", "mask": "CAST(NULL AS DOUBLE)", "exempt_roles": []}]
            }),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    let (status, rows) = s
        .sql(
            &s.token("analyst", &["silver_reader"]),
            "SELECT id, v FROM silver.readings__quarantine ORDER BY id",
        )
        .await;
    assert_eq!(status, 200, "{rows}");
    assert_eq!(rows, json!([{"id": 4, "v": null}, {"id": 5, "v": null}]));
    let samples = s
        .sql_ok("SELECT samples FROM system.expectation_results WHERE expectation = 'kind_valid'")
        .await;
    let samples: Value =
        serde_json::from_str(samples[0]["samples"].as_str().expect("admins see samples")).unwrap();
    assert_eq!(samples.as_array().unwrap().len(), 3, "{samples}");
}

crate::on_both_backends!(each_action_on_one_batch);

/// `fail` commits nothing anywhere (not even the quarantine rows of the same batch) and
/// names the rule, its count and sample rows; `fail_if` lets a batch under the threshold
/// through and refuses one over it; no retry repeats a refusal.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fail_commits_nothing_and_fail_if_thresholds() {
    let (s, token) = server(Backend::Local).await;
    let model = r#"/* strata
kind = "append"
[[expect]]
name = "kind_valid"
check = "kind IN ('a', 'b')"
on_violation = "quarantine"
[[expect]]
name = "not_huge"
check = "v < 100"
on_violation = "fail"
[[expect]]
name = "v_positive"
check = "v > 0"
on_violation = "drop"
fail_if = "> 30%"
*/
SELECT id, v, kind FROM stream('bronze.readings')"#;
    let (status, body) = s
        .put_json(
            &token,
            "/api/v1/pipelines/readings",
            json!({
                "pipeline": {"run_as": "etl", "retry": {"retries": 2, "backoff_secs": 0.1}},
                "models": [{"path": "silver/readings.sql", "sql": model}],
            }),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    s.sql_ok(
        "INSERT INTO bronze.readings VALUES (1, 1.0, 'a'), (2, 500.0, 'a'), (3, 2.0, 'x'), (4, 700.0, 'b')",
    )
    .await;
    let record = run(&s, &token, "readings").await;
    assert_eq!(record["status"], "failed", "{record}");
    let m = model_of(&record);
    assert_eq!(m["attempts"], 1, "a refusal is not retried: {record}");
    let error = m["error"].as_str().unwrap();
    for needle in ["not_huge", "2 of 4", "nothing was committed"] {
        assert!(error.contains(needle), "{needle}: {error}");
    }
    let samples: Vec<f64> = m["failure_samples"]
        .as_array()
        .unwrap_or_else(|| panic!("the deployer manages every layer: {record}"))
        .iter()
        .map(|r| r["v"].as_f64().unwrap())
        .collect();
    assert_eq!(samples, [500.0, 700.0]);
    let (status, seen) = s
        .get(
            &s.token("analyst", &["silver_reader"]),
            &format!("/api/v1/runs/{}", record["run_id"].as_str().unwrap()),
        )
        .await;
    assert_eq!(status, 200, "{seen}");
    assert!(
        seen["models"][0]["failure_samples"].is_null(),
        "a reader sees no samples: {seen}"
    );
    assert!(
        !error.contains("500"),
        "the error carries no row values: {error}"
    );
    assert_eq!(
        s.version("silver.readings").await,
        0,
        "the target only exists"
    );
    let (status, _) = s
        .sql(&token, "SELECT * FROM silver.readings__quarantine")
        .await;
    assert_ne!(status, 200, "the quarantine was not written either");
    let results = s
        .sql_ok("SELECT expectation, failed, status FROM system.expectation_results WHERE expectation = 'not_huge'")
        .await;
    assert_eq!(
        results,
        json!([{"expectation": "not_huge", "failed": 2, "status": "failed"}])
    );

    // The same batch (the watermark did not move) with more rows, not_huge tolerating 2:
    // its violations are kept; 1 of 6 non-positive (17%) passes fail_if and is dropped.
    let (status, body) = deploy(
        &s,
        &token,
        &model.replace(
            "on_violation = \"fail\"",
            "on_violation = \"fail\"\nfail_if = \"> 2\"",
        ),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    s.sql_ok("INSERT INTO bronze.readings VALUES (5, -1.0, 'a'), (6, 3.0, 'b')")
        .await;
    let record = run(&s, &token, "readings").await;
    assert_eq!(record["status"], "succeeded", "{record}");
    assert_eq!(model_of(&record)["rows_dropped"], 1, "{record}");
    assert_eq!(model_of(&record)["rows_quarantined"], 1, "{record}");
    let kept = s.sql_ok("SELECT id FROM silver.readings ORDER BY id").await;
    assert_eq!(ids_of(&kept), [1, 2, 4, 6]);
    s.sql_ok("INSERT INTO bronze.readings VALUES (7, -1.0, 'a'), (8, -3.0, 'b'), (9, 1.0, 'a'), (10, 2.0, 'a')")
        .await;
    let version = s.version("silver.readings").await;
    let record = run(&s, &token, "readings").await;
    assert_eq!(record["status"], "failed", "{record}");
    let error = model_of(&record)["error"].as_str().unwrap();
    assert!(
        error.contains("v_positive failed on 2 of 4 rows, over fail_if > 30%"),
        "{error}"
    );
    assert_eq!(s.version("silver.readings").await, version);
}

/// A volatile check puts every row in exactly one of the target and the quarantine; the
/// per-run cap counts what it leaves out.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_volatile_check_splits_rows_and_the_cap_counts_the_rest() {
    let (s, token) = server(Backend::Local).await;
    let model = r#"/* strata
kind = "append"
quarantine_max_rows_per_run = 1000
[[expect]]
name = "coin"
check = "random() < 0.5"
on_violation = "quarantine"
*/
SELECT id, v, kind FROM stream('bronze.readings')"#;
    let (status, body) = deploy(&s, &token, model).await;
    assert_eq!(status, 200, "{body}");
    s.sql_ok(&rows(1..=400)).await;
    let record = run(&s, &token, "readings").await;
    assert_eq!(record["status"], "succeeded", "{record}");
    let kept: BTreeSet<i64> = ids_of(&s.sql_ok("SELECT id FROM silver.readings").await)
        .into_iter()
        .collect();
    let held = ids_of(&s.sql_ok("SELECT id FROM silver.readings__quarantine").await);
    let held_set: BTreeSet<i64> = held.iter().copied().collect();
    assert_eq!(held.len(), held_set.len(), "no row quarantined twice");
    assert!(kept.is_disjoint(&held_set));
    assert_eq!(kept.len() + held_set.len(), 400);
    assert!(
        !kept.is_empty() && !held_set.is_empty(),
        "a fair coin split 400 rows"
    );
    assert_eq!(
        model_of(&record)["rows_quarantined"].as_u64().unwrap() as usize,
        held_set.len()
    );

    // The cap: 2 rows per run; the other failing rows are left out of both and counted.
    let capped = r#"/* strata
kind = "append"
quarantine_max_rows_per_run = 2
[[expect]]
name = "kind_valid"
check = "kind IN ('a', 'b')"
on_violation = "quarantine"
*/
SELECT id, v, kind FROM stream('bronze.readings')"#;
    let (status, body) = deploy(&s, &token, capped).await;
    assert_eq!(status, 200, "{body}");
    s.sql_ok("INSERT INTO bronze.readings VALUES (1001, 1.0, 'x'), (1002, 1.0, 'y'), (1003, 1.0, 'z'), (1004, 1.0, 'a')")
        .await;
    let record = run(&s, &token, "readings").await;
    assert_eq!(record["status"], "succeeded", "{record}");
    let m = model_of(&record);
    assert_eq!(m["rows_quarantined"], 2, "{record}");
    assert_eq!(m["quarantine_over_cap"], 1, "{record}");
    let new = s
        .sql_ok("SELECT id FROM silver.readings__quarantine WHERE id > 1000")
        .await;
    assert_eq!(new.as_array().unwrap().len(), 2);
    let kept = s
        .sql_ok("SELECT id FROM silver.readings WHERE id > 1000")
        .await;
    assert_eq!(ids_of(&kept), [1004]);
}

/// Bad expectations and audits are refused at deploy with what is wrong; users cannot
/// create tables with the reserved suffix.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_quality_definitions_are_refused() {
    let (s, token) = server(Backend::Local).await;
    let header = |extra: &str| {
        format!(
            "/* strata\nkind = \"append\"\n{extra}\n*/\nSELECT id, v, kind FROM stream('bronze.readings')"
        )
    };
    for (extra, expected) in [
        (
            "[[expect]]\nname = \"x\"\ncheck = \"nope > 1\"",
            "does not plan",
        ),
        (
            "[[expect]]\nname = \"x\"\ncheck = \"v + 1\"",
            "not a condition",
        ),
        (
            "[[expect]]\nname = \"x\"\ncheck = \"v > 1\"\nfail_if = \"lots\"",
            "fail_if",
        ),
        (
            "[[expect]]\nname = \"x\"\ncheck = \"v > 1\"\n[[expect]]\nname = \"x\"\ncheck = \"v > 2\"",
            "declared twice",
        ),
        (
            "[[expect]]\nname = \"x\"\ncheck = \"v > 1\"\non_violation = \"explode\"",
            "model header",
        ),
        ("[[audit]]\ntype = \"unique\"", "needs columns"),
        (
            "[[audit]]\ntype = \"row_count\"\nmin = 5\nmax = 1",
            "min is greater",
        ),
        (
            "[[audit]]\ntype = \"relationships\"\ncolumn = \"id\"",
            "needs column",
        ),
        (
            "[[audit]]\ntype = \"sql\"\nsql = \"DELETE FROM silver.readings\"",
            "one SELECT",
        ),
    ] {
        let (status, body) = deploy(&s, &token, &header(extra)).await;
        assert_eq!(status, 400, "{extra}: {body}");
        assert!(message(&body).contains(expected), "{extra}: {body}");
    }
    let time_range = "/* strata\nkind = \"time_range\"\ntime_column = \"t\"\nstart = \"2026-01-01\"\n\
        [[expect]]\nname = \"x\"\ncheck = \"v > 1\"\non_violation = \"quarantine\"\n*/\nSELECT 1 AS v, now() AS t";
    let (status, body) = deploy(&s, &token, time_range).await;
    assert_eq!(status, 400, "{body}");
    assert!(
        message(&body).contains("not available on time_range"),
        "{body}"
    );
    let (status, body) = s
        .sql(&token, "CREATE TABLE silver.mine__quarantine (id BIGINT)")
        .await;
    assert_eq!(status, 400, "{body}");
    assert!(message(&body).contains("reserved"), "{body}");
}

/// A `unique` audit of severity error marks the model `audit_failed` and stops the model
/// downstream; with severity warn the downstream runs. `system.audit_results` holds the
/// failing count either way; incremental models audit only the keys their batch touched.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_error_audit_stops_downstream_and_a_warn_audit_does_not() {
    let (s, token) = server(Backend::Local).await;
    let silver = |severity: &str| {
        format!(
            r#"/* strata
kind = "append"
[[audit]]
type = "unique"
columns = ["id"]
severity = "{severity}"
[[audit]]
type = "not_null"
columns = ["kind"]
severity = "warn"
[[audit]]
type = "accepted_values"
column = "kind"
values = ["a", "b"]
severity = "warn"
[[audit]]
name = "few"
type = "row_count"
max = 1000
[[audit]]
name = "no_negatives"
type = "sql"
sql = "SELECT * FROM silver.readings WHERE v < 0"
severity = "warn"
*/
SELECT id, v, kind FROM stream('bronze.readings')"#
        )
    };
    let gold = "SELECT kind, count(*) AS n FROM silver.readings GROUP BY kind";
    let deploy_with = |severity: &'static str| {
        let (s, token, model) = (&s, &token, silver(severity));
        async move {
            let (status, body) = s
                .put_json(
                    token,
                    "/api/v1/pipelines/readings",
                    bundle(&[("silver/readings.sql", &model), ("gold/kinds.sql", gold)]),
                )
                .await;
            assert_eq!(status, 200, "{body}");
        }
    };
    deploy_with("error").await;
    s.sql_ok("INSERT INTO bronze.readings VALUES (1, 1.0, 'a'), (2, -1.0, 'a'), (3, 1.0, NULL)")
        .await;
    let record = run(&s, &token, "readings").await;
    assert_eq!(record["status"], "succeeded", "{record}");
    let audits = &model_of(&record)["audits"];
    let passed = |name: &str| {
        audits
            .as_array()
            .unwrap()
            .iter()
            .find(|a| a["audit"] == name)
            .unwrap_or_else(|| panic!("{name}: {audits}"))["passed"]
            .as_bool()
            .unwrap()
    };
    assert!(passed("unique_id") && passed("few"), "{audits}");
    assert!(
        !passed("not_null_kind") && !passed("no_negatives"),
        "{audits}"
    );
    assert!(
        passed("accepted_values_kind"),
        "NULL is not judged by accepted_values: {audits}"
    );

    // Duplicate ids: the error audit fails, the commit stands, gold does not run.
    s.sql_ok("INSERT INTO bronze.readings VALUES (1, 5.0, 'b'), (1, 6.0, 'b')")
        .await;
    let record = run(&s, &token, "readings").await;
    assert_eq!(record["status"], "failed", "{record}");
    let models = record["models"].as_array().unwrap();
    assert_eq!(models[0]["status"], "audit_failed", "{record}");
    assert!(
        models[0]["error"].as_str().unwrap().contains("unique_id"),
        "{record}"
    );
    assert_eq!(models[1]["status"], "upstream_failed", "{record}");
    assert_eq!(
        s.count("silver.readings").await,
        5,
        "the audited commit stands"
    );
    let failing = s
        .sql_ok(&format!(
            "SELECT audit, passed, failed, severity FROM system.audit_results \
             WHERE run_id = '{}' AND audit = 'unique_id'",
            record["run_id"].as_str().unwrap()
        ))
        .await;
    assert_eq!(
        failing,
        json!([{"audit": "unique_id", "passed": false, "failed": 3, "severity": "error"}])
    );

    // An untouched key stays out of an incremental audit: a new batch of fresh ids passes
    // `unique` though the table still holds the duplicates. With warn, gold runs.
    deploy_with("warn").await;
    s.sql_ok("INSERT INTO bronze.readings VALUES (10, 1.0, 'a')")
        .await;
    let record = run(&s, &token, "readings").await;
    assert_eq!(record["status"], "succeeded", "{record}");
    let models = record["models"].as_array().unwrap();
    let unique = models[0]["audits"]
        .as_array()
        .unwrap()
        .iter()
        .find(|a| a["audit"] == "unique_id")
        .unwrap()
        .clone();
    assert_eq!(unique["passed"], true, "only id 10 was touched: {unique}");
    assert_eq!(models[1]["status"], "succeeded", "{record}");
    s.sql_ok("INSERT INTO bronze.readings VALUES (1, 9.0, 'a')")
        .await;
    let record = run(&s, &token, "readings").await;
    assert_eq!(
        record["status"], "succeeded",
        "a warn audit stops nothing: {record}"
    );
    assert_eq!(record["models"][1]["status"], "succeeded", "{record}");
    let metrics = s.metrics_text().await;
    assert!(
        counter(
            &metrics,
            "strata_audit_failures_total",
            &["audit=\"unique_id\""]
        ) >= 2.0,
        "{metrics}"
    );
}

/// The server dies between a batch's quarantine commit and its target commit. After a
/// restart (and more source rows), the next run finishes that batch from what the
/// quarantine holds, never deciding the volatile check again: every row is in exactly one
/// of the two tables, once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_crash_between_the_quarantine_and_target_commits_leaves_one_copy() {
    let dir = tempfile::tempdir().unwrap();
    let env = etl_env(dir.path());
    let p = StrataProcess::spawn(dir.path(), &armed(&env, "flows.after_quarantine_commit")).await;
    let token = deployer_token(dir.path(), &env);
    let client = reqwest::Client::new();
    let call = |method: reqwest::Method, http: String, path: String, body: Value| {
        let (client, token) = (client.clone(), token.clone());
        async move { send(&client, &token, method, &format!("{http}{path}"), body).await }
    };
    let sql = |http: String, q: &str| {
        let q = q.to_string();
        let call = &call;
        async move {
            let (status, body) = call(
                reqwest::Method::POST,
                http,
                "/api/v1/query".into(),
                json!({ "sql": q }),
            )
            .await;
            assert_eq!(status, 200, "{q}: {body}");
            body
        }
    };
    sql(p.http.clone(), READINGS).await;
    sql(p.http.clone(), &rows(1..=200)).await;
    let model = r#"/* strata
kind = "append"
[[expect]]
name = "coin"
check = "random() < 0.5"
on_violation = "quarantine"
*/
SELECT id, v, kind FROM stream('bronze.readings')"#;
    let (status, body) = call(
        reqwest::Method::PUT,
        p.http.clone(),
        "/api/v1/pipelines/readings".into(),
        json!({"pipeline": {"run_as": "etl"}, "models": [{"path": "silver/readings.sql", "sql": model}]}),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    let _ = call(
        reqwest::Method::POST,
        p.http.clone(),
        "/api/v1/pipelines/readings/runs".into(),
        json!({}),
    )
    .await;
    let mut p = p;
    let mut exited = false;
    for _ in 0..300 {
        if p.child.try_wait().unwrap().is_some() {
            exited = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(
        exited,
        "the failpoint aborts the server after the quarantine commit"
    );
    drop(p);

    let p = StrataProcess::spawn(dir.path(), &env).await;
    let held_before =
        ids_of(&sql(p.http.clone(), "SELECT id FROM silver.readings__quarantine").await);
    assert!(!held_before.is_empty(), "the quarantine commit landed");
    let target = sql(p.http.clone(), "SELECT count(*) AS n FROM silver.readings").await;
    assert_eq!(target[0]["n"], 0, "the target commit did not");
    // New source rows arrive before the re-run: they come in a later batch.
    sql(p.http.clone(), &rows(201..=300)).await;
    let (status, started) = call(
        reqwest::Method::POST,
        p.http.clone(),
        "/api/v1/pipelines/readings/runs".into(),
        json!({}),
    )
    .await;
    assert_eq!(status, 202, "{started}");
    let id = started["run_id"].as_str().unwrap().to_string();
    let mut record = Value::Null;
    for _ in 0..600 {
        let (_, r) = call(
            reqwest::Method::GET,
            p.http.clone(),
            format!("/api/v1/runs/{id}"),
            Value::Null,
        )
        .await;
        if r["ended_at"].is_string() {
            record = r;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(record["status"], "succeeded", "{record}");
    let kept = ids_of(&sql(p.http.clone(), "SELECT id FROM silver.readings").await);
    let held = ids_of(&sql(p.http.clone(), "SELECT id FROM silver.readings__quarantine").await);
    let kept_set: BTreeSet<i64> = kept.iter().copied().collect();
    let held_set: BTreeSet<i64> = held.iter().copied().collect();
    assert_eq!(kept.len(), kept_set.len(), "no row twice in the target");
    assert_eq!(held.len(), held_set.len(), "no row twice in the quarantine");
    assert!(kept_set.is_disjoint(&held_set), "no row in both");
    assert_eq!(
        kept_set.union(&held_set).count(),
        300,
        "every row somewhere"
    );
    let before: BTreeSet<i64> = held_before.into_iter().collect();
    assert!(
        before.is_subset(&held_set),
        "what was quarantined stays quarantined"
    );
}

/// Source freshness by the driven clock: fresh passes, past `warn_after` records a warning
/// and runs, past `error_after` ends the run `stale_source` with nothing committed; the
/// staleness gauge and `system.audit_results` agree.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stale_sources_stop_a_run_by_the_driven_clock() {
    let clock = strata::clock::ManualClock::new(chrono::Utc::now());
    let s = TestServer::start_clocked(Backend::Local, with_etl, std::sync::Arc::new(clock.clone()))
        .await;
    let token = deployer(&s);
    s.sql_ok(READINGS).await;
    s.sql_ok(&rows(1..=3)).await;
    let model =
        "/* strata\nkind = \"append\"\n*/\nSELECT id, v, kind FROM stream('bronze.readings')";
    for (freshness, expected) in [
        (json!({}), "warn_after and/or error_after"),
        (
            json!({"warn_after": "2d", "error_after": "1d"}),
            "longer than error_after",
        ),
        (json!({"warn_after": "soon"}), "period"),
    ] {
        let (status, body) = s
            .put_json(
                &token,
                "/api/v1/pipelines/readings",
                json!({"pipeline": {"run_as": "etl", "freshness": freshness},
                       "models": [{"path": "silver/readings.sql", "sql": model}]}),
            )
            .await;
        assert_eq!(status, 400, "{freshness}: {body}");
        assert!(message(&body).contains(expected), "{freshness}: {body}");
    }
    let (status, body) = s
        .put_json(
            &token,
            "/api/v1/pipelines/readings",
            json!({"pipeline": {"run_as": "etl", "freshness": {"warn_after": "1h", "error_after": "1d"}},
                   "models": [{"path": "silver/readings.sql", "sql": model}]}),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    let record = run(&s, &token, "readings").await;
    assert_eq!(record["status"], "succeeded", "{record}");

    clock.advance(Duration::from_secs(2 * 3600));
    s.sql_ok(&rows(4..=4)).await;
    let record = run(&s, &token, "readings").await;
    assert_eq!(
        record["status"], "succeeded",
        "a warning stops nothing: {record}"
    );
    assert_eq!(s.count("silver.readings").await, 4);

    clock.advance(Duration::from_secs(26 * 3600));
    s.sql_ok(&rows(5..=5)).await;
    // The insert above committed at the real time; the driven clock is a day ahead of it.
    let version = s.version("silver.readings").await;
    let record = run(&s, &token, "readings").await;
    assert_eq!(record["status"], "stale_source", "{record}");
    assert_eq!(record["models"][0]["status"], "stale_source", "{record}");
    assert!(
        record["error"]
            .as_str()
            .unwrap()
            .contains("bronze.readings"),
        "{record}"
    );
    assert_eq!(s.version("silver.readings").await, version, "nothing ran");

    let results = s
        .sql_ok(
            "SELECT passed, severity FROM system.audit_results \
             WHERE table_name = 'bronze.readings' AND audit = 'source_freshness' ORDER BY checked_at",
        )
        .await;
    assert_eq!(
        results,
        json!([
            {"passed": true, "severity": "warn"},
            {"passed": false, "severity": "warn"},
            {"passed": false, "severity": "error"},
        ])
    );
    let metrics = s.metrics_text().await;
    let staleness = counter(
        &metrics,
        "strata_source_staleness_seconds",
        &["table=\"bronze.readings\""],
    );
    assert!(staleness >= 86_400.0, "{staleness}");
}

/// `GET …/models/{m}/quality` returns the model's results since an instant, to those who
/// may read the model's table only.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_quality_endpoint_reports_a_models_results() {
    let (s, token) = server(Backend::Local).await;
    let model = format!(
        "{}\n[[audit]]\ntype = \"unique\"\ncolumns = [\"id\"]\nseverity = \"warn\"\n*/{}",
        CHECKED.split("*/").next().unwrap(),
        CHECKED.split("*/").nth(1).unwrap()
    );
    let (status, body) = deploy(&s, &token, &model).await;
    assert_eq!(status, 200, "{body}");
    s.sql_ok("INSERT INTO bronze.readings VALUES (1, 1.0, 'a'), (1, -1.0, 'x')")
        .await;
    let record = run(&s, &token, "readings").await;
    assert_eq!(record["status"], "succeeded", "{record}");
    let (status, report) = s
        .get(
            &token,
            "/api/v1/pipelines/readings/models/silver.readings/quality",
        )
        .await;
    assert_eq!(status, 200, "{report}");
    assert_eq!(report["model"], "silver.readings");
    assert_eq!(
        report["expectations"].as_array().unwrap().len(),
        3,
        "{report}"
    );
    assert_eq!(report["audits"].as_array().unwrap().len(), 1, "{report}");
    assert_eq!(report["audits"][0]["audit"], "unique_id", "{report}");
    let (status, report) = s
        .get(
            &token,
            "/api/v1/pipelines/readings/models/readings/quality?since=2999-01-01",
        )
        .await;
    assert_eq!(status, 200, "{report}");
    assert_eq!(report["expectations"], json!([]), "{report}");
    let (status, body) = s
        .get(
            &token,
            "/api/v1/pipelines/readings/models/silver.readings/quality?since=yesterday",
        )
        .await;
    assert_eq!(status, 400, "{body}");
    let (status, _) = s
        .get(
            &token,
            "/api/v1/pipelines/readings/models/silver.nope/quality",
        )
        .await;
    assert_eq!(status, 404);
    let (status, _) = s
        .get(
            &s.token("nobody", &[]),
            "/api/v1/pipelines/readings/models/silver.readings/quality",
        )
        .await;
    assert_eq!(status, 404, "a model the caller may not read is not named");
}

/// Standalone checks of a table no pipeline writes: set with `PUT …/checks` (bad ones
/// refused, only by managers), run on demand into `system.audit_results`, and by the
/// scheduler's leader once per `every`; a model's quarantine is cleaned after its retention.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn standalone_checks_and_quarantine_retention_run_on_schedule() {
    let clock = strata::clock::ManualClock::new(chrono::Utc::now());
    let s = TestServer::start_clocked(
        Backend::Local,
        |cfg| {
            with_etl(cfg);
            cfg.scheduler.lease_ttl_secs = 5;
            cfg.access.grants.push(strata::config::GrantConfig {
                role: "bronze_reader".into(),
                privilege: "SELECT".into(),
                on: "bronze".into(),
            });
        },
        std::sync::Arc::new(clock.clone()),
    )
    .await;
    let token = deployer(&s);
    s.sql_ok(READINGS).await;
    s.sql_ok("INSERT INTO bronze.readings VALUES (1, 1.0, 'a'), (1, 2.0, 'x'), (2, NULL, 'b')")
        .await;
    let path = "/api/v1/tables/bronze/readings/checks";
    let checks = json!({
        "run_as": "etl",
        "every": "1h",
        "audit": [
            {"type": "unique", "columns": ["id"]},
            {"type": "not_null", "columns": ["v"], "severity": "warn"},
            {"type": "accepted_values", "column": "kind", "values": ["a", "b"]},
            {"type": "row_count", "min": 1},
        ],
        "freshness": {"warn_after": "1h", "error_after": "1d"},
    });
    for (bad, expected) in [
        (json!({"run_as": "etl"}), "at least one"),
        (
            json!({"run_as": "nobody", "audit": [{"type": "row_count", "min": 1}]}),
            "not a service principal",
        ),
        (
            json!({"run_as": "etl", "audit": [{"type": "unique"}]}),
            "needs columns",
        ),
        (
            json!({"run_as": "etl", "every": "often", "audit": [{"type": "row_count", "min": 1}]}),
            "every",
        ),
    ] {
        let (status, body) = s.put_json(&token, path, bad.clone()).await;
        assert_eq!(status, 400, "{bad}: {body}");
        assert!(message(&body).contains(expected), "{bad}: {body}");
    }
    let reader = s.token("reader", &["bronze_reader"]);
    let (status, _) = s.put_json(&reader, path, checks.clone()).await;
    assert_eq!(status, 403, "reading is not managing");
    let (status, _) = s
        .put_json(&s.token("nobody", &[]), path, checks.clone())
        .await;
    assert_eq!(status, 404, "an invisible table is not named");
    let (status, _) = s
        .put_json(&token, "/api/v1/tables/bronze/nope/checks", checks.clone())
        .await;
    assert_eq!(status, 404);
    let (status, body) = s.put_json(&token, path, checks.clone()).await;
    assert_eq!(status, 200, "{body}");
    let (status, body) = s.get(&reader, path).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["updated_by"], "deployer");

    let (status, ran) = s.post_json(&token, &format!("{path}/run"), json!({})).await;
    assert_eq!(status, 200, "{ran}");
    assert_eq!(ran["passed"], false, "{ran}");
    let outcome: Vec<(String, bool, u64)> = ran["results"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| {
            (
                r["audit"].as_str().unwrap().to_string(),
                r["passed"].as_bool().unwrap(),
                r["failed"].as_u64().unwrap(),
            )
        })
        .collect();
    assert_eq!(
        outcome,
        [
            ("unique_id".to_string(), false, 2),
            ("not_null_v".to_string(), false, 1),
            ("accepted_values_kind".to_string(), false, 1),
            ("row_count".to_string(), true, 0),
            ("freshness".to_string(), true, 0),
        ]
    );
    let (status, _) = s
        .post_json(&reader, &format!("{path}/run"), json!({}))
        .await;
    assert_eq!(status, 403);
    let recorded = || async {
        s.sql_ok(
            "SELECT count(*) AS n FROM system.audit_results WHERE table_name = 'bronze.readings' AND origin = 'checks'",
        )
        .await[0]["n"]
            .as_i64()
            .unwrap()
    };
    assert_eq!(recorded().await, 5);

    // A quarantining model, so its cleanup is scheduled too.
    let model = r#"/* strata
kind = "append"
quarantine_retention = "1d"
[[expect]]
name = "kind_valid"
check = "kind IN ('a', 'b')"
on_violation = "quarantine"
*/
SELECT id, v, kind FROM stream('bronze.readings')"#;
    let (status, body) = deploy(&s, &token, model).await;
    assert_eq!(status, 200, "{body}");
    let record = run(&s, &token, "readings").await;
    assert_eq!(record["status"], "succeeded", "{record}");
    assert_eq!(s.count("silver.readings__quarantine").await, 1);

    // The leader counts periods from the first it sees; two hours on, the checks ran once
    // more by themselves; two days on, the quarantined row is past its retention.
    wait_until(|| async { s.get(&token, "/api/v1/scheduler").await.1["is_leader"] == true }).await;
    tokio::time::sleep(Duration::from_millis(1500)).await;
    clock.advance(Duration::from_secs(3600));
    wait_until(|| async { recorded().await == 10 }).await;
    clock.advance(Duration::from_secs(2 * 86_400));
    wait_until(|| async { s.count("silver.readings__quarantine").await == 0 }).await;
    let (status, _) = s
        .send_json(reqwest::Method::DELETE, &token, path, Value::Null)
        .await;
    assert_eq!(status, 204);
    let (status, _) = s.get(&token, path).await;
    assert_eq!(status, 404);
}

async fn wait_until<F, Fut>(ok: F)
where
    F: Fn() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    for _ in 0..300 {
        if ok().await {
            return;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("timed out");
}

/// Replay runs quarantined rows through the model's current expectations: those that pass
/// now land in the table once, those that still fail are quarantined again under the
/// replay's id; a second replay moves nothing twice.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replay_moves_rows_that_pass_the_current_expectations() {
    let (s, token) = server(Backend::Local).await;
    let (status, body) = deploy(&s, &token, CHECKED).await;
    assert_eq!(status, 200, "{body}");
    s.sql_ok(
        "INSERT INTO bronze.readings VALUES (1, 1.0, 'a'), (4, 3.0, 'x'), (5, 2.0, 'x'), (6, 2.0, NULL)",
    )
    .await;
    let record = run(&s, &token, "readings").await;
    assert_eq!(model_of(&record)["rows_quarantined"], 3, "{record}");
    let path = "/api/v1/pipelines/readings/models/silver.readings/quarantine/replay";
    let (status, _) = s
        .post_json(&s.token("analyst", &["silver_reader"]), path, json!({}))
        .await;
    assert_eq!(status, 403, "replaying needs MANAGE");

    // 'x' is a valid kind now.
    let relaxed = CHECKED.replace("kind IN ('a', 'b')", "kind IN ('a', 'b', 'x')");
    let (status, body) = deploy(&s, &token, &relaxed).await;
    assert_eq!(status, 200, "{body}");
    let (status, replay) = s.post_json(&token, path, json!({})).await;
    assert_eq!(status, 200, "{replay}");
    assert_eq!(replay["rows_in"], 3, "{replay}");
    assert_eq!(replay["rows_out"], 2, "{replay}");
    assert_eq!(replay["rows_quarantined"], 1, "{replay}");
    let kept = s.sql_ok("SELECT id FROM silver.readings ORDER BY id").await;
    assert_eq!(ids_of(&kept), [1, 4, 5]);
    let held = s
        .sql_ok("SELECT id, _strata_run_id AS run FROM silver.readings__quarantine")
        .await;
    assert_eq!(ids_of(&held), [6], "{held}");
    assert_eq!(held[0]["run"], replay["replay_id"]);

    let (status, again) = s.post_json(&token, path, json!({})).await;
    assert_eq!(status, 200, "{again}");
    assert_eq!(again["rows_out"], 0, "{again}");
    assert_eq!(
        ids_of(&s.sql_ok("SELECT id FROM silver.readings ORDER BY id").await),
        [1, 4, 5]
    );
    assert_eq!(
        ids_of(&s.sql_ok("SELECT id FROM silver.readings__quarantine").await),
        [6]
    );

    let (status, _) = s
        .post_json(
            &token,
            "/api/v1/pipelines/readings/models/silver.nope/quarantine/replay",
            json!({}),
        )
        .await;
    assert_eq!(status, 404);
}

/// A run whose task panics (a bug in a dependency, say) ends `failed` with an internal
/// error instead of showing `running` for ever, and the server goes on serving.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_panicking_run_ends_failed_and_the_server_serves_on() {
    let dir = tempfile::tempdir().unwrap();
    let env = etl_env(dir.path());
    let p = StrataProcess::spawn(dir.path(), &armed(&env, "flows.before_commit:panic")).await;
    let token = deployer_token(dir.path(), &env);
    let client = reqwest::Client::new();
    let url = |path: &str| format!("{}{path}", p.http);
    let post = reqwest::Method::POST;
    for q in [READINGS, "INSERT INTO bronze.readings VALUES (1, 1.0, 'a')"] {
        let (status, body) = send(
            &client,
            &token,
            post.clone(),
            &url("/api/v1/query"),
            json!({"sql": q}),
        )
        .await;
        assert_eq!(status, 200, "{body}");
    }
    let (status, body) = send(
        &client,
        &token,
        reqwest::Method::PUT,
        &url("/api/v1/pipelines/readings"),
        json!({"pipeline": {"run_as": "etl"}, "models": [{"path": "silver/readings.sql", "sql": CHECKED}]}),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    let (status, started) = send(
        &client,
        &token,
        post.clone(),
        &url("/api/v1/pipelines/readings/runs"),
        json!({}),
    )
    .await;
    assert_eq!(status, 202, "{started}");
    let id = started["run_id"].as_str().unwrap().to_string();
    let mut record = Value::Null;
    for _ in 0..300 {
        let (_, r) = send(
            &client,
            &token,
            reqwest::Method::GET,
            &url(&format!("/api/v1/runs/{id}")),
            Value::Null,
        )
        .await;
        if r["ended_at"].is_string() {
            record = r;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(record["status"], "failed", "{record}");
    assert!(
        record["error"].as_str().unwrap().contains("internal error"),
        "{record}"
    );
    let (status, body) = send(
        &client,
        &token,
        post,
        &url("/api/v1/query"),
        json!({"sql": "SELECT count(*) AS n FROM bronze.readings"}),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body[0]["n"], 1);
}
