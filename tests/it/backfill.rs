//! Backfill: a time range rebuilt in resumable batches, against the real server.

use serde_json::{Value, json};

use crate::flows::{bundle, deployer, wait, with_etl};
use crate::flows_kinds::{SALES, daily};
use crate::harness::{Backend, TestServer};

fn day(d: u32) -> String {
    let (m, d) = if d > 31 { (2, d - 31) } else { (1, d) };
    format!("2026-{m:02}-{d:02}")
}

/// Starts a backfill of `body`; the run record once it ended.
async fn backfill(s: &TestServer, token: &str, body: Value) -> Value {
    let (status, started) = s
        .post_json(token, "/api/v1/pipelines/sales/backfill", body)
        .await;
    assert_eq!(status, 202, "{started}");
    assert_eq!(started["trigger"], "backfill");
    wait(s, token, started["run_id"].as_str().unwrap()).await
}

fn interval(from: u32, to: u32) -> Value {
    json!({"start": format!("{}T00:00:00Z", day(from)), "end": format!("{}T00:00:00Z", day(to))})
}

/// 30 daily batches, two at a time, day 17 made to fail: 29 commit and its range stays as
/// it was; resuming re-runs only day 17; `only_missing_or_failed` then picks exactly the
/// days no backfill committed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_backfill_commits_batch_by_batch_and_resumes_only_what_failed() {
    let s = TestServer::start_configured(Backend::Local, with_etl).await;
    let token = deployer(&s);
    s.sql_ok(SALES).await;
    let rows: Vec<String> = (1..=30)
        .map(|d| {
            let qty = if d == 17 { 0 } else { 1 };
            format!(
                "({d}, {}.0, {qty}, TIMESTAMP '{}T06:00:00Z')",
                d * 10,
                day(d)
            )
        })
        .collect();
    s.sql_ok(&format!(
        "INSERT INTO bronze.sales VALUES {}",
        rows.join(", ")
    ))
    .await;
    let (status, body) = s
        .put_json(
            &token,
            "/api/v1/pipelines/sales",
            bundle(&[("gold/daily.sql", &daily(&day(1)))]),
        )
        .await;
    assert_eq!(status, 200, "{body}");

    // Bad requests lose nothing.
    for (bad, expect) in [
        (json!({"from": day(1)}), "needs"),
        (json!({"from": day(5), "to": day(1)}), "before"),
        (
            json!({"from": day(1), "to": day(5), "parallelism": 0}),
            "parallelism",
        ),
        (
            json!({"from": day(1), "to": day(5), "models": ["gold.nope"]}),
            "gold.nope",
        ),
        (
            json!({"from": day(1), "to": day(5), "colour": "red"}),
            "colour",
        ),
    ] {
        let (status, body) = s
            .post_json(&token, "/api/v1/pipelines/sales/backfill", bad.clone())
            .await;
        assert_eq!(status, 400, "{bad}: {body}");
        assert!(body.to_string().contains(expect), "{bad}: {body}");
    }
    let analyst = s.token("ann", &["analyst"]);
    let (status, _) = s
        .post_json(
            &analyst,
            "/api/v1/pipelines/sales/backfill",
            json!({"from": day(1), "to": day(31)}),
        )
        .await;
    assert!(status == 403 || status == 404, "{status}");

    let run = backfill(
        &s,
        &token,
        json!({"from": day(1), "to": day(31), "parallelism": 2}),
    )
    .await;
    assert_eq!(run["status"], "failed", "{run:#}");
    let m = &run["models"][0];
    assert_eq!(m["commits"], 29, "{run:#}");
    let b = &m["backfill"];
    assert_eq!(b["mode"], "range");
    assert_eq!(
        b["succeeded"],
        json!([interval(1, 17), interval(18, 31)]),
        "{b:#}"
    );
    assert_eq!(b["failed"].as_array().unwrap().len(), 1, "{b:#}");
    assert_eq!(b["failed"][0]["start"], format!("{}T00:00:00Z", day(17)));
    assert!(
        b["failed"][0]["error"]
            .as_str()
            .unwrap()
            .contains("ivide by zero"),
        "{b:#}"
    );
    assert_eq!(b["pending"], json!([]));
    let days = s.sql_ok("SELECT count(*) AS n FROM gold.daily").await;
    assert_eq!(
        days,
        json!([{"n": 29}]),
        "day 17 has no hole and no partial rows"
    );

    // Fixed upstream: resume re-runs day 17 only.
    s.sql_ok("UPDATE bronze.sales SET qty = 1 WHERE id = 17")
        .await;
    let id = run["run_id"].as_str().unwrap();
    let (status, resumed) = s
        .post_json(&token, &format!("/api/v1/runs/{id}/resume"), json!({}))
        .await;
    assert_eq!(status, 202, "{resumed}");
    assert_eq!(resumed["resumes"], id);
    let resumed = wait(&s, &token, resumed["run_id"].as_str().unwrap()).await;
    assert_eq!(resumed["status"], "succeeded", "{resumed:#}");
    assert_eq!(resumed["models"][0]["commits"], 1, "{resumed:#}");
    assert_eq!(
        resumed["models"][0]["backfill"]["succeeded"],
        json!([interval(17, 18)])
    );
    assert_eq!(
        s.sql_ok("SELECT count(*) AS n FROM gold.daily").await,
        json!([{"n": 30}])
    );
    // A succeeded backfill does not resume.
    let rid = resumed["run_id"].as_str().unwrap();
    let (status, body) = s
        .post_json(&token, &format!("/api/v1/runs/{rid}/resume"), json!({}))
        .await;
    assert_eq!(status, 409, "{body}");

    // Through February 2nd, only what no backfill committed: January 31st and February 1st.
    let run = backfill(
        &s,
        &token,
        json!({"from": day(1), "to": day(33), "only_missing_or_failed": true}),
    )
    .await;
    assert_eq!(run["status"], "succeeded", "{run:#}");
    assert_eq!(
        run["models"][0]["backfill"]["succeeded"],
        json!([interval(31, 33)]),
        "{run:#}"
    );
    // The records survive the process: a restarted server resumes from system.model_runs.
    let s = s.restart().await;
    let (status, body) = s.get(&token, &format!("/api/v1/runs/{id}")).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(
        body["models"][0]["backfill"]["failed"][0]["start"],
        format!("{}T00:00:00Z", day(17))
    );
    s.stop().await;
}
