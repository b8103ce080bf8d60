//! The scheduler running pipelines on its own (cron slots, catch-up, overlap, retries,
//! pause, upstream changes), against the real server with a driven clock: minutes of
//! schedule pass without sleeping, and every assertion is on run records.

use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use serde_json::{Value, json};
use strata::clock::ManualClock;

use crate::flows::{APPEND, EVENTS, deployer, ids, with_etl};
use crate::harness::{Backend, TestServer};

/// 2026-03-01T00:00:30Z: half a minute before the first slot of `* * * * *`.
fn start() -> DateTime<Utc> {
    DateTime::parse_from_rfc3339("2026-03-01T00:00:30Z")
        .unwrap()
        .with_timezone(&Utc)
}

fn at(minute: u32, second: u32) -> DateTime<Utc> {
    DateTime::parse_from_rfc3339(&format!("2026-03-01T00:{minute:02}:{second:02}Z"))
        .unwrap()
        .with_timezone(&Utc)
}

/// A server on `clock` that leads the scheduler, with an empty `bronze.events`.
async fn scheduled_server(clock: &ManualClock) -> TestServer {
    let s = TestServer::start_clocked(
        Backend::Local,
        |cfg| {
            with_etl(cfg);
            cfg.scheduler.lease_ttl_secs = 5;
        },
        Arc::new(clock.clone()),
    )
    .await;
    until(&s, "the server leads", |v| v["is_leader"] == true).await;
    s.sql_ok(EVENTS).await;
    s
}

async fn scheduler_view(s: &TestServer) -> Value {
    let (status, body) = s.get(&s.admin.clone(), "/api/v1/scheduler").await;
    assert_eq!(status, 200, "{body}");
    body
}

async fn until(s: &TestServer, what: &str, ok: impl Fn(&Value) -> bool) -> Value {
    for _ in 0..300 {
        let v = scheduler_view(s).await;
        if ok(&v) {
            return v;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("{what}: {}", scheduler_view(s).await);
}

/// Deploys pipeline `name`: `silver/<name>.sql` appending `bronze.events`, with `pipeline`
/// merged into `pipeline.toml`.
async fn deploy(s: &TestServer, name: &str, model: &str, pipeline: Value) {
    let mut def = json!({"run_as": "etl"});
    for (k, v) in pipeline.as_object().unwrap() {
        def[k] = v.clone();
    }
    let (status, body) = s
        .put_json(
            &deployer(s),
            &format!("/api/v1/pipelines/{name}"),
            json!({"pipeline": def, "models": [{"path": format!("silver/{name}.sql"), "sql": model}]}),
        )
        .await;
    assert_eq!(status, 200, "{body}");
}

/// Every run of `pipeline`, oldest first.
async fn runs(s: &TestServer, pipeline: &str) -> Vec<Value> {
    let (status, body) = s
        .get(
            &s.admin.clone(),
            &format!("/api/v1/runs?pipeline={pipeline}&limit=1000"),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    let mut runs = body["runs"].as_array().cloned().unwrap_or_default();
    runs.reverse();
    runs
}

/// Waits until `pipeline` has `n` runs, all ended; them, oldest first.
async fn ended_runs(s: &TestServer, pipeline: &str, n: usize) -> Vec<Value> {
    for _ in 0..300 {
        let r = runs(s, pipeline).await;
        if r.len() >= n
            && r.iter()
                .all(|r| !matches!(r["status"].as_str(), Some("queued" | "running")))
        {
            return r;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!(
        "{pipeline}: expected {n} ended runs: {:#?}",
        runs(s, pipeline).await
    );
}

fn slot(r: &Value) -> Option<DateTime<Utc>> {
    r["scheduled_for"]
        .as_str()
        .map(|t| DateTime::parse_from_rfc3339(t).unwrap().with_timezone(&Utc))
}

fn statuses(runs: &[Value]) -> Vec<&str> {
    runs.iter().map(|r| r["status"].as_str().unwrap()).collect()
}

const EVERY_MINUTE: &str = "* * * * *";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cron_schedule_fires_once_per_slot() {
    let clock = ManualClock::new(start());
    let s = scheduled_server(&clock).await;
    s.sql_ok("INSERT INTO bronze.events VALUES (1, 'a')").await;
    deploy(
        &s,
        "minutely",
        APPEND,
        json!({"trigger": {"schedule": EVERY_MINUTE}}),
    )
    .await;
    let v = scheduler_view(&s).await;
    assert_eq!(
        v["pipelines"][0]["next_run"],
        json!("2026-03-01T00:01:00Z"),
        "{v}"
    );

    clock.set(at(1, 0));
    let r = ended_runs(&s, "minutely", 1).await;
    assert_eq!(statuses(&r), ["succeeded"], "{r:#?}");
    assert_eq!(slot(&r[0]), Some(at(1, 0)));
    assert_eq!(r[0]["trigger"], "cron");
    let epoch = r[0]["epoch"].as_u64().unwrap();
    assert!(epoch >= 1, "{r:#?}");
    assert_eq!(ids(&s, "silver.minutely").await, [1]);
    // The commit names the run and the leader's epoch.
    let (status, history) = s
        .get(&s.admin.clone(), "/api/v1/tables/silver/minutely/history")
        .await;
    assert_eq!(status, 200, "{history}");
    let model_commit = &history["history"][0];
    assert_eq!(model_commit["run_id"], r[0]["run_id"], "{history:#}");
    assert_eq!(model_commit["scheduler_epoch"], epoch, "{history:#}");

    // Between slots nothing runs, however often the scheduler looks.
    clock.set(at(1, 40));
    tokio::time::sleep(Duration::from_millis(2500)).await;
    assert_eq!(runs(&s, "minutely").await.len(), 1);

    // The next slot runs once; with nothing new it is `skipped`.
    clock.set(at(2, 0));
    let r = ended_runs(&s, "minutely", 2).await;
    assert_eq!(statuses(&r), ["succeeded", "skipped"], "{r:#?}");
    assert_eq!(slot(&r[1]), Some(at(2, 0)));
    tokio::time::sleep(Duration::from_millis(2500)).await;
    assert_eq!(runs(&s, "minutely").await.len(), 2, "a slot ran twice");

    s.sql_ok("INSERT INTO bronze.events VALUES (2, 'b')").await;
    clock.set(at(3, 0));
    let r = ended_runs(&s, "minutely", 3).await;
    assert_eq!(statuses(&r)[2], "succeeded", "{r:#?}");
    assert_eq!(ids(&s, "silver.minutely").await, [1, 2]);
    let v = scheduler_view(&s).await;
    assert_eq!(
        v["pipelines"][0]["last_slot"],
        json!("2026-03-01T00:03:00Z"),
        "{v}"
    );
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn missed_slots_are_caught_up_as_the_pipeline_says() {
    let clock = ManualClock::new(start());
    let s = scheduled_server(&clock).await;
    s.sql_ok("INSERT INTO bronze.events VALUES (1, 'a')").await;
    for catchup in ["all", "latest", "none"] {
        deploy(
            &s,
            &format!("catchup_{catchup}"),
            APPEND,
            json!({"trigger": {"schedule": EVERY_MINUTE, "catchup": catchup}}),
        )
        .await;
    }
    // Three slots pass at once (as while no replica led).
    clock.set(at(3, 30));
    let all = ended_runs(&s, "catchup_all", 3).await;
    assert_eq!(
        all.iter().map(slot).collect::<Vec<_>>(),
        [Some(at(1, 0)), Some(at(2, 0)), Some(at(3, 0))],
        "{all:#?}"
    );
    assert_eq!(statuses(&all), ["succeeded", "skipped", "skipped"]);
    // In order, one after the other (max_concurrent_runs = 1): the backlog waits.
    for pair in all.windows(2) {
        assert!(
            pair[0]["ended_at"].as_str().unwrap() <= pair[1]["started_at"].as_str().unwrap(),
            "{pair:#?}"
        );
        assert!(pair[0]["run_id"].as_str() < pair[1]["run_id"].as_str());
    }
    let latest = ended_runs(&s, "catchup_latest", 1).await;
    assert_eq!(latest.len(), 1, "{latest:#?}");
    assert_eq!(slot(&latest[0]), Some(at(3, 0)));
    tokio::time::sleep(Duration::from_millis(2500)).await;
    assert!(runs(&s, "catchup_none").await.is_empty());
    assert_eq!(runs(&s, "catchup_latest").await.len(), 1);
    assert_eq!(runs(&s, "catchup_all").await.len(), 3);
    // On time, `none` runs its slot too.
    clock.set(at(4, 0));
    let none = ended_runs(&s, "catchup_none", 1).await;
    assert_eq!(slot(&none[0]), Some(at(4, 0)));
    assert_eq!(ids(&s, "silver.catchup_none").await, [1]);
    s.stop().await;
}

/// A model that fails on every row (integer division by zero).
const FAILING: &str = "/* strata\nkind = \"append\"\n*/\nSELECT id, kind, 1 / (id - id) AS boom FROM stream('bronze.events')";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn overlapping_slots_are_skipped_and_retries_stay_within_their_bounds() {
    let clock = ManualClock::new(start());
    let s = scheduled_server(&clock).await;
    s.sql_ok("INSERT INTO bronze.events VALUES (1, 'a')").await;
    deploy(
        &s,
        "flaky",
        FAILING,
        json!({
            "trigger": {"schedule": EVERY_MINUTE},
            "retry": {"retries": 2, "backoff_secs": 600, "max_backoff_secs": 900},
        }),
    )
    .await;
    clock.set(at(1, 0));
    // The first attempt fails and the run waits 450–750 s (of the driven clock) to retry.
    until(&s, "the run is waiting to retry", |v| {
        v["pipelines"][0]["running"] == 1
    })
    .await;
    tokio::time::sleep(Duration::from_millis(1500)).await;
    clock.set(at(2, 0));
    for _ in 0..100 {
        if runs(&s, "flaky")
            .await
            .iter()
            .any(|r| r["status"] == "skipped_overlap")
        {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let r = runs(&s, "flaky").await;
    let overlap = r
        .iter()
        .find(|r| r["status"] == "skipped_overlap")
        .unwrap_or_else(|| panic!("no skipped_overlap: {r:#?}"));
    assert_eq!(slot(overlap), Some(at(2, 0)));
    assert!(
        overlap["error"]
            .as_str()
            .unwrap()
            .contains("max_concurrent_runs = 1")
    );
    // Time passes until the retries are spent: 3 attempts, never more.
    let first = r[0]["run_id"].as_str().unwrap().to_string();
    let mut ended = None;
    for _ in 0..60 {
        clock.advance(Duration::from_secs(300));
        tokio::time::sleep(Duration::from_millis(300)).await;
        let (_, run) = s
            .get(&s.admin.clone(), &format!("/api/v1/runs/{first}"))
            .await;
        if run["status"] == "failed" {
            ended = Some(run);
            break;
        }
    }
    let run = ended.expect("the run ends once its retries are spent");
    assert_eq!(run["models"][0]["attempts"], 3, "{run:#}");
    assert!(
        run["models"][0]["error"]
            .as_str()
            .unwrap()
            .contains("ivide by zero"),
        "{run:#}"
    );
    assert!(ids(&s, "silver.flaky").await.is_empty());
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_paused_pipeline_records_its_slots_and_resumes_without_catching_up() {
    let clock = ManualClock::new(start());
    let s = scheduled_server(&clock).await;
    s.sql_ok("INSERT INTO bronze.events VALUES (1, 'a')").await;
    deploy(
        &s,
        "pausable",
        APPEND,
        json!({"trigger": {"schedule": EVERY_MINUTE, "catchup": "all"}}),
    )
    .await;
    let analyst = s.token("ann", &["analyst"]);
    let (status, _) = s
        .post_json(&analyst, "/api/v1/pipelines/pausable/pause", json!({}))
        .await;
    assert!(status == 403 || status == 404, "{status}");
    let (status, body) = s
        .post_json(&deployer(&s), "/api/v1/pipelines/pausable/pause", json!({}))
        .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["paused_by"], "deployer");
    clock.set(at(2, 0));
    let r = ended_runs(&s, "pausable", 2).await;
    assert_eq!(statuses(&r), ["paused", "paused"], "{r:#?}");
    let (status, _) = s
        .sql(&s.admin.clone(), "SELECT * FROM silver.pausable")
        .await;
    assert_eq!(status, 404, "a paused pipeline made its table");
    let (status, _) = s
        .post_json(
            &deployer(&s),
            "/api/v1/pipelines/pausable/resume",
            json!({}),
        )
        .await;
    assert_eq!(status, 204);
    clock.set(at(3, 0));
    let r = ended_runs(&s, "pausable", 3).await;
    assert_eq!(statuses(&r), ["paused", "paused", "succeeded"], "{r:#?}");
    assert_eq!(slot(&r[2]), Some(at(3, 0)));
    assert_eq!(ids(&s, "silver.pausable").await, [1]);
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upstream_changes_trigger_one_run_for_many_commits() {
    let clock = ManualClock::new(start());
    let s = scheduled_server(&clock).await;
    deploy(
        &s,
        "follows",
        APPEND,
        json!({"trigger": {"on_upstream_change": true, "poll_interval_secs": 5}}),
    )
    .await;
    // The first poll: the model never ran, the source has a version → one run.
    clock.advance(Duration::from_secs(5));
    let r = ended_runs(&s, "follows", 1).await;
    assert_eq!(r[0]["trigger"], "upstream", "{r:#?}");
    // Nothing moved: later polls start nothing.
    clock.advance(Duration::from_secs(5));
    tokio::time::sleep(Duration::from_millis(2000)).await;
    assert_eq!(runs(&s, "follows").await.len(), 1);
    // Ten commits in quick succession: one run takes them all.
    for i in 1..=10 {
        s.sql_ok(&format!("INSERT INTO bronze.events VALUES ({i}, 'k')"))
            .await;
    }
    clock.advance(Duration::from_secs(5));
    let r = ended_runs(&s, "follows", 2).await;
    assert_eq!(statuses(&r), ["succeeded", "succeeded"], "{r:#?}");
    assert_eq!(
        ids(&s, "silver.follows").await,
        (1..=10).collect::<Vec<_>>()
    );
    clock.advance(Duration::from_secs(5));
    tokio::time::sleep(Duration::from_millis(2000)).await;
    assert_eq!(runs(&s, "follows").await.len(), 2);
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_triggers_are_refused_at_deploy() {
    let clock = ManualClock::new(start());
    let s = scheduled_server(&clock).await;
    for (trigger, expect) in [
        (json!({"trigger": {"schedule": "61 * * * *"}}), "schedule"),
        (
            json!({"trigger": {"schedule": "* * * * *", "timezone": "Mars/Olympus"}}),
            "timezone",
        ),
        (json!({"trigger": {"cron": "* * * * *"}}), "cron"),
        (json!({"retry": {"retries": 50}}), "retries"),
    ] {
        let mut def = json!({"run_as": "etl"});
        for (k, v) in trigger.as_object().unwrap() {
            def[k] = v.clone();
        }
        let (status, body) = s
            .put_json(
                &deployer(&s),
                "/api/v1/pipelines/bad",
                json!({"pipeline": def, "models": [{"path": "silver/bad.sql", "sql": APPEND}]}),
            )
            .await;
        assert_eq!(status, 400, "{trigger}: {body}");
        assert!(body.to_string().contains(expect), "{trigger}: {body}");
    }
    s.stop().await;
}

/// An append model that asks for hourly compaction and a daily VACUUM.
const TIDY: &str = "/* strata\nkind = \"append\"\noptimize_every = \"1h\"\nvacuum_every = \"1d\"\n*/\nSELECT id, kind FROM stream('bronze.events')";

/// The operations of `t`'s commits, newest first.
async fn operations(s: &TestServer, t: &str) -> Vec<String> {
    let (status, body) = s
        .get(&s.admin.clone(), &format!("/api/v1/tables/{t}/history"))
        .await;
    assert_eq!(status, 200, "{body}");
    body["history"]
        .as_array()
        .unwrap()
        .iter()
        .map(|h| h["operation"].as_str().unwrap_or_default().to_string())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn models_are_compacted_and_vacuumed_on_schedule() {
    let clock = ManualClock::new(start());
    let s = scheduled_server(&clock).await;
    deploy(&s, "tidy", TIDY, json!({})).await;
    let (status, body) = s
        .put_json(
            &deployer(&s),
            "/api/v1/pipelines/tidy_bad",
            json!({"pipeline": {"run_as": "etl"}, "models": [{"path": "silver/tidy_bad.sql", "sql": TIDY.replace("1h", "10s")}]}),
        )
        .await;
    assert_eq!(status, 400, "{body}");
    assert!(body.to_string().contains("optimize_every"), "{body}");
    // Three runs, three small files.
    for i in 1..=3 {
        s.sql_ok(&format!("INSERT INTO bronze.events VALUES ({i}, 'k')"))
            .await;
        let r = crate::flows::run(&s, &deployer(&s), "tidy").await;
        assert_eq!(r["status"], "succeeded", "{r}");
    }
    // The leader has seen the current hour (the count starts there): nothing yet.
    tokio::time::sleep(Duration::from_millis(2500)).await;
    assert!(
        !operations(&s, "silver/tidy")
            .await
            .contains(&"OPTIMIZE".to_string())
    );
    clock.set(at(59, 59));
    clock.advance(Duration::from_secs(1));
    let mut ops = Vec::new();
    for _ in 0..100 {
        ops = operations(&s, "silver/tidy").await;
        if ops.iter().any(|o| o == "OPTIMIZE") {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(
        ops.iter().filter(|o| *o == "OPTIMIZE").count(),
        1,
        "{ops:?}"
    );
    assert_eq!(ids(&s, "silver.tidy").await, [1, 2, 3]);
    // The day turns: VACUUM runs (the files OPTIMIZE replaced are inside the 7-day
    // retention, so it deletes nothing and commits nothing: the metric shows it ran).
    let vacuums = || async {
        let text = s.metrics_text().await;
        text.lines()
            .find(|l| {
                l.starts_with("strata_scheduled_maintenance_total")
                    && l.contains("table=\"silver.tidy\"")
                    && l.contains("op=\"vacuum\"")
                    && l.contains("outcome=\"ok\"")
            })
            .map(|l| l.rsplit(' ').next().unwrap().to_string())
    };
    assert_eq!(vacuums().await, None);
    clock.advance(Duration::from_secs(23 * 3600));
    let mut ran = None;
    for _ in 0..100 {
        ran = vacuums().await;
        if ran.is_some() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(ran.as_deref(), Some("1"));
    assert_eq!(ids(&s, "silver.tidy").await, [1, 2, 3]);
    s.stop().await;
}

/// Pipeline statements run in a memory pool of their own (`[scheduler]
/// pipeline_memory_bytes`): a model whose aggregate outgrows it fails, naming the pool,
/// while the same SELECT as a query (the query pool) answers; the pool shows in /metrics.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pipeline_statements_use_their_own_memory_pool() {
    let s = TestServer::start_configured(Backend::Local, |cfg| {
        with_etl(cfg);
        cfg.scheduler.pipeline_memory_bytes = 32 * 1024 * 1024;
    })
    .await;
    let token = deployer(&s);
    s.sql_ok(EVENTS).await;
    // 60,000 rows: their kinds aggregated into one string are ~60 MB.
    s.sql_ok(
        "INSERT INTO bronze.events SELECT CAST(v AS BIGINT), repeat('x', 1000) \
         FROM (SELECT unnest(range(0, 60000)) AS v)",
    )
    .await;
    let select = "SELECT count(*) AS n, length(string_agg(kind, ',')) AS bytes FROM bronze.events";
    let rows = s.sql_ok(select).await;
    assert_eq!(rows[0]["n"], 60000, "{rows}");
    let model = "/* strata\nkind = \"table\"\n*/\nSELECT count(*) AS n, length(string_agg(kind, ',')) AS bytes FROM bronze.events";
    let (status, body) = s
        .put_json(
            &token,
            "/api/v1/pipelines/pool",
            crate::flows::bundle(&[("silver/pool.sql", model)]),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    let run = crate::flows::run(&s, &token, "pool").await;
    assert_eq!(run["status"], "failed", "{run:#}");
    let error = run["models"][0]["error"].as_str().unwrap_or_default();
    assert!(error.contains("scheduler.pipeline_memory_bytes"), "{run:#}");
    let metrics = s.metrics_text().await;
    assert!(
        metrics.contains(&format!(
            "strata_pipeline_memory_pool_limit_bytes {}",
            32 * 1024 * 1024
        )),
        "{metrics}"
    );
    // The query pool was never the one that ran out.
    let rows = s.sql_ok(select).await;
    assert_eq!(rows[0]["n"], 60000, "{rows}");
}

/// A model with a `[trigger]` of its own runs alone on it, its slots claimed apart from the
/// pipeline's, whose runs leave it out; a bad model trigger is refused at deploy.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_model_with_its_own_trigger_runs_on_it_alone() {
    let clock = ManualClock::new(start());
    let s = scheduled_server(&clock).await;
    s.sql_ok("INSERT INTO bronze.events VALUES (1, 'a')").await;
    // (`*/2` would end the header comment: a step is written `0-59/2` there.)
    let every_two = "/* strata\nkind = \"append\"\n[trigger]\nschedule = \"0-59/2 * * * *\"\n*/\nSELECT id, kind FROM stream('bronze.events')";
    let bundle = |every_two: &str| {
        json!({
            "pipeline": {"run_as": "etl", "trigger": {"schedule": EVERY_MINUTE}},
            "models": [
                {"path": "silver/minute.sql", "sql": APPEND},
                {"path": "silver/every_two.sql", "sql": every_two},
            ],
        })
    };
    let bad = every_two.replace("0-59/2 * * * *", "0-59/2 * * *");
    let (status, body) = s
        .put_json(&deployer(&s), "/api/v1/pipelines/mixed", bundle(&bad))
        .await;
    assert_eq!(status, 400, "{body}");
    assert!(body.to_string().contains("schedule"), "{body}");
    // A step written `*/2` ends the comment early: the error says how to write it.
    let cut = every_two.replace("0-59/2", "*/2");
    let (status, body) = s
        .put_json(&deployer(&s), "/api/v1/pipelines/mixed", bundle(&cut))
        .await;
    assert_eq!(status, 400, "{body}");
    assert!(body.to_string().contains("0-59/n"), "{body}");
    let (status, body) = s
        .put_json(&deployer(&s), "/api/v1/pipelines/mixed", bundle(every_two))
        .await;
    assert_eq!(status, 200, "{body}");
    let v = scheduler_view(&s).await;
    let units: Vec<(Value, Value)> = v["pipelines"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| (p["model"].clone(), p["next_run"].clone()))
        .collect();
    assert_eq!(
        units,
        [
            (Value::Null, json!("2026-03-01T00:01:00Z")),
            (json!("silver.every_two"), json!("2026-03-01T00:02:00Z")),
        ],
        "{v:#}"
    );
    let models = |r: &Value| -> Vec<String> {
        r["models"]
            .as_array()
            .unwrap()
            .iter()
            .map(|m| m["model"].as_str().unwrap().to_string())
            .collect()
    };

    // 00:01: the pipeline's slot, without the model that has its own trigger.
    clock.set(at(1, 0));
    let r = ended_runs(&s, "mixed", 1).await;
    assert_eq!(statuses(&r), ["succeeded"], "{r:#?}");
    assert_eq!(models(&r[0]), ["silver.minute"]);
    assert_eq!(ids(&s, "silver.minute").await, [1]);

    // 00:02: both slots, one run each.
    s.sql_ok("INSERT INTO bronze.events VALUES (2, 'b')").await;
    clock.set(at(2, 0));
    let r = ended_runs(&s, "mixed", 3).await;
    let mut at_two: Vec<Vec<String>> = r[1..].iter().map(models).collect();
    at_two.sort();
    assert_eq!(
        at_two,
        [
            vec!["silver.every_two".to_string()],
            vec!["silver.minute".to_string()]
        ],
        "{r:#?}"
    );
    assert!(r[1..].iter().all(|r| slot(r) == Some(at(2, 0))), "{r:#?}");
    assert_eq!(ids(&s, "silver.minute").await, [1, 2]);
    assert_eq!(ids(&s, "silver.every_two").await, [1, 2]);

    // 00:03: only the pipeline's.
    clock.set(at(3, 0));
    let r = ended_runs(&s, "mixed", 4).await;
    assert_eq!(models(&r[3]), ["silver.minute"], "{r:#?}");
    tokio::time::sleep(Duration::from_millis(2500)).await;
    assert_eq!(runs(&s, "mixed").await.len(), 4, "a slot ran twice");
    s.stop().await;
}
