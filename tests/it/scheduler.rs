//! The scheduler's leader election among replicas sharing a warehouse (lease log).

use std::time::Duration;

use serde_json::{Value, json};

use crate::harness::{Backend, Moto, StrataProcess, TestServer, s3_env};

async fn view(s: &TestServer) -> Value {
    let (status, body) = s.get(&s.admin.clone(), "/api/v1/scheduler").await;
    assert_eq!(status, 200, "{body}");
    body
}

/// Waits until `ok` holds for the view of `s`.
async fn until(s: &TestServer, what: &str, ok: impl Fn(&Value) -> bool) -> Value {
    for _ in 0..200 {
        let v = view(s).await;
        if ok(&v) {
            return v;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("{what}: {}", view(s).await);
}

async fn leader_election(backend: Backend) {
    let a = TestServer::start_configured(backend, |cfg| cfg.scheduler.lease_ttl_secs = 5).await;
    let va = until(&a, "a leads", |v| v["is_leader"] == true).await;
    let first = va["epoch"].as_u64().unwrap();
    let b = a.replica().await;
    let vb = until(&b, "b follows a", |v| {
        v["leader"]["id"] == va["replica"]["id"]
    })
    .await;
    assert_eq!(vb["is_leader"], false, "{vb}");
    let vb = until(&b, "b sees both replicas", |v| {
        v["replicas"].as_array().is_some_and(|r| r.len() == 2)
    })
    .await;
    assert!(vb["epoch"].as_u64().unwrap() >= first, "{vb}");
    let analyst = a.token("ann", &["analyst"]);
    let (status, _) = a.get(&analyst, "/api/v1/scheduler").await;
    assert_eq!(status, 403);

    // The leader stops: b takes over within two TTLs, under a higher epoch.
    let last = view(&a).await["epoch"].as_u64().unwrap();
    // (b works on a's warehouse directory: keep it.)
    let _warehouse = a.stop().await;
    let vb = until(&b, "b takes over", |v| v["is_leader"] == true).await;
    assert!(vb["epoch"].as_u64().unwrap() > last, "{vb}");
    assert_eq!(vb["leader"]["id"], vb["replica"]["id"], "{vb}");
    b.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_leader_and_a_take_over_local() {
    leader_election(Backend::Local).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_leader_and_a_take_over_s3() {
    leader_election(Backend::S3).await;
}

crate::on_both_backends!(three_replicas_run_every_slot_once_across_a_sigkill);

/// The pipeline's principal and grants, as a config file the processes read.
const FLEET_CONFIG: &str = r#"
[scheduler]
lease_ttl_secs = 5

[[pipelines.principals]]
name = "etl"
roles = ["etl"]

[[access.grants]]
role = "etl"
privilege = "SELECT"
on = "bronze"

[[access.grants]]
role = "etl"
privilege = "SELECT"
on = "silver"

[[access.grants]]
role = "etl"
privilege = "INSERT"
on = "silver"
"#;

/// Every this many seconds (a cron pattern with seconds).
const SLOT_SECS: i64 = 3;

/// A warehouse for `strata` processes (`FLEET_CONFIG`), on the S3 stand-in under `prefix`
/// or on local disk: its directory, the stand-in, the processes' environment.
async fn fleet(
    backend: Backend,
    prefix: &str,
) -> (tempfile::TempDir, Option<Moto>, Vec<(String, String)>) {
    let dir = tempfile::tempdir().unwrap();
    let moto = match backend {
        Backend::S3 => Some(Moto::start().await),
        Backend::Local => None,
    };
    let config = dir.path().join("strata.toml");
    std::fs::write(&config, FLEET_CONFIG).unwrap();
    let mut env = match &moto {
        None => vec![],
        Some(m) => s3_env(m, prefix),
    };
    env.push(("STRATA_CONFIG".into(), config.display().to_string()));
    (dir, moto, env)
}

/// Deploys pipeline `name` through `p`: `silver/<name>.sql` appending `bronze.events`
/// every [`SLOT_SECS`] seconds with `catchup`.
async fn deploy_every_slot(
    client: &reqwest::Client,
    p: &StrataProcess,
    deployer: &str,
    name: &str,
    catchup: &str,
) {
    let r = client
        .put(format!("{}/api/v1/pipelines/{name}", p.http))
        .bearer_auth(deployer)
        .json(&json!({
            "pipeline": {"run_as": "etl", "trigger": {"schedule": format!("*/{SLOT_SECS} * * * * *"), "catchup": catchup}},
            "models": [{"path": format!("silver/{name}.sql"), "sql": crate::flows::APPEND}],
        }))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200, "{}", r.text().await.unwrap());
}

async fn json_of(client: &reqwest::Client, p: &StrataProcess, token: &str, path: &str) -> Value {
    let r = client
        .get(format!("{}{path}", p.http))
        .bearer_auth(token)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200, "{path}");
    r.json().await.unwrap()
}

/// Three `strata` processes on one warehouse: one leads; SIGKILL it and another leads
/// within two TTLs under a higher epoch; the pipeline's slots (every 3 s, `catchup = "all"`)
/// each have exactly one run across the kill, none lost, none doubled, and every source
/// row reaches silver once. Asserted on the run records, not on wall time (but the
/// take-over bound).
async fn three_replicas_run_every_slot_once_across_a_sigkill(backend: Backend) {
    let (dir, _moto, env) = fleet(backend, "fleet").await;
    let mut fleet = Vec::new();
    for _ in 0..3 {
        fleet.push(Some(StrataProcess::spawn(dir.path(), &env).await));
    }
    let client = reqwest::Client::new();
    let admin = fleet[0].as_ref().unwrap().token.clone();
    // Exactly one leader, and every replica names it.
    let leader = wait_for(Duration::from_secs(30), "one leader", || async {
        let mut views = Vec::new();
        for p in fleet.iter().flatten() {
            views.push(json_of(&client, p, &admin, "/api/v1/scheduler").await);
        }
        let leaders: Vec<usize> = (0..views.len())
            .filter(|&i| views[i]["is_leader"] == true)
            .collect();
        let id = views.first().map(|v| v["leader"]["id"].clone());
        (leaders.len() == 1 && views.iter().all(|v| Some(v["leader"]["id"].clone()) == id))
            .then(|| leaders[0])
    })
    .await;

    let deployer = fleet_token(dir.path(), &env, "deployer", &["admin", "etl"]);
    let p0 = fleet[0].as_ref().unwrap();
    let post = |p: &StrataProcess, path: &str, body: Value| {
        client
            .post(format!("{}{path}", p.http))
            .bearer_auth(&admin)
            .json(&body)
            .send()
    };
    let r = post(p0, "/api/v1/query", json!({"sql": crate::flows::EVENTS}))
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    deploy_every_slot(&client, p0, &deployer, "fleet", "all").await;
    let mut next_id = 1;
    let mut insert = |p: &StrataProcess| {
        let sql = format!("INSERT INTO bronze.events VALUES ({next_id}, 'k')");
        next_id += 1;
        post(p, "/api/v1/query", json!({"sql": sql}))
    };
    // A few slots under the first leader.
    let runs_of = |p: &StrataProcess| {
        let (client, http, admin) = (client.clone(), p.http.clone(), admin.clone());
        async move {
            let r = client
                .get(format!("{http}/api/v1/runs?pipeline=fleet&limit=1000"))
                .bearer_auth(&admin)
                .send()
                .await
                .unwrap();
            let body: Value = r.json().await.unwrap();
            body["runs"].as_array().cloned().unwrap_or_default()
        }
    };
    for _ in 0..3 {
        assert_eq!(insert(p0).await.unwrap().status(), 200);
        tokio::time::sleep(Duration::from_secs(SLOT_SECS as u64)).await;
    }
    let lp = fleet[leader].as_ref().unwrap();
    wait_for(
        Duration::from_secs(30),
        "runs under the first leader",
        || async { (runs_of(lp).await.len() >= 2).then_some(()) },
    )
    .await;
    let before = json_of(&client, lp, &admin, "/api/v1/scheduler").await;
    let old_epoch = before["epoch"].as_u64().unwrap();
    let old_id = before["replica"]["id"].as_str().unwrap().to_string();

    // SIGKILL the leader: another leads within two TTLs, under a higher epoch.
    let mut killed = fleet[leader].take().unwrap();
    killed.child.kill().unwrap();
    killed.child.wait().unwrap();
    let killed_at = std::time::Instant::now();
    let survivor = wait_for(Duration::from_secs(30), "a new leader", || async {
        for (i, p) in fleet.iter().enumerate() {
            if let Some(p) = p
                && json_of(&client, p, &admin, "/api/v1/scheduler").await["is_leader"] == true
            {
                return Some(i);
            }
        }
        None
    })
    .await;
    let took = killed_at.elapsed();
    assert!(
        took < Duration::from_secs(10),
        "take-over took {took:?} (TTL 5 s)"
    );
    let sp = fleet[survivor].as_ref().unwrap();
    let after = json_of(&client, sp, &admin, "/api/v1/scheduler").await;
    assert!(
        after["epoch"].as_u64().unwrap() > old_epoch,
        "{before} → {after}"
    );
    for _ in 0..3 {
        assert_eq!(insert(sp).await.unwrap().status(), 200);
        tokio::time::sleep(Duration::from_secs(SLOT_SECS as u64)).await;
    }
    // Until the killed leader's open run (if any) is marked and the backlog has run.
    let runs = wait_for(Duration::from_secs(60), "every run ended", || async {
        let runs = runs_of(sp).await;
        let open = runs
            .iter()
            .any(|r| matches!(r["status"].as_str(), Some("queued" | "running")));
        (!open && runs.len() >= 6).then_some(runs)
    })
    .await;
    let mut slots: Vec<(String, Value)> = runs
        .iter()
        .map(|r| (r["scheduled_for"].as_str().unwrap().to_string(), r.clone()))
        .collect();
    slots.sort_by(|a, b| a.0.cmp(&b.0));
    for pair in slots.windows(2) {
        let t = |s: &str| chrono::DateTime::parse_from_rfc3339(s).unwrap().timestamp();
        assert_eq!(
            t(&pair[1].0) - t(&pair[0].0),
            SLOT_SECS,
            "a slot lost or doubled: {:#?}",
            slots
                .iter()
                .map(|(s, r)| (s, &r["status"], &r["replica"]))
                .collect::<Vec<_>>()
        );
    }
    for (slot, r) in &slots {
        let status = r["status"].as_str().unwrap();
        assert!(
            // A run longer than a slot (a loaded machine) makes the next one skipped_overlap:
            // claimed once and recorded, which is all this test is about.
            matches!(status, "succeeded" | "skipped" | "skipped_overlap")
                || (status == "orphaned" && r["replica"] == old_id.as_str()),
            "{slot}: {r:#}"
        );
    }
    // Epochs never go back along the slots.
    let epochs: Vec<u64> = slots
        .iter()
        .map(|(_, r)| r["epoch"].as_u64().unwrap())
        .collect();
    assert!(epochs.windows(2).all(|w| w[0] <= w[1]), "{epochs:?}");
    // The slots after the kill pick up whatever an orphaned run left: every row reaches
    // silver, once.
    let expected: Vec<i64> = (1..next_id).collect();
    let ids = wait_for(
        Duration::from_secs(60),
        "every row in silver once",
        || async {
            let rows = post(
                sp,
                "/api/v1/query",
                json!({"sql": "SELECT id FROM silver.fleet ORDER BY id"}),
            )
            .await
            .ok()?
            .json::<Value>()
            .await
            .ok()?;
            let ids: Vec<i64> = rows
                .as_array()?
                .iter()
                .filter_map(|r| r["id"].as_i64())
                .collect();
            // More rows than sent would be a duplicate: fail at once rather than wait.
            assert!(ids.len() <= expected.len(), "{ids:?}");
            (ids == expected).then_some(ids)
        },
    )
    .await;
    assert_eq!(ids, expected);
}

/// A token minted by `strata token` with the fleet's environment (its signing key).
fn fleet_token(
    dir: &std::path::Path,
    env: &[(String, String)],
    sub: &str,
    roles: &[&str],
) -> String {
    let mut cmd = std::process::Command::new(env!("CARGO_BIN_EXE_strata"));
    cmd.current_dir(dir)
        .args(["token", "--sub", sub, "--ttl", "1h"]);
    for r in roles {
        cmd.args(["--role", r]);
    }
    for (k, v) in env {
        cmd.env(k, v);
    }
    let out = cmd.output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap().trim().to_string()
}

/// Whether process `pid` is stopped (SIGSTOP): its state in `/proc`.
fn stopped(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|s| {
            s.rsplit_once(')')
                .map(|(_, rest)| rest.trim_start().starts_with('T'))
        })
        .unwrap_or(false)
}

crate::on_both_backends!(a_deposed_leaders_late_commit_commits_nothing);

/// The leader stops (SIGSTOP, every thread) inside a scheduled run, between choosing the
/// batch and committing it; a second replica takes the lease; the old leader wakes up
/// (SIGCONT) and its commit is refused: the target table does not move, the run is recorded
/// `cancelled`, and the rows reach silver once when the new leader runs the pipeline. The
/// pipeline is paused meanwhile, so nothing but the fence stands between the late commit
/// and the table (the new leader has not written it).
async fn a_deposed_leaders_late_commit_commits_nothing(backend: Backend) {
    let (dir, _moto, env) = fleet(backend, "fenced").await;
    let mut stalling = env.clone();
    stalling.push((
        "STRATA_FAILPOINTS".into(),
        "flows.before_commit:stop".into(),
    ));
    let a = StrataProcess::spawn(dir.path(), &stalling).await;
    let client = reqwest::Client::new();
    let admin = a.token.clone();
    let deployer = fleet_token(dir.path(), &env, "deployer", &["admin", "etl"]);
    let send = |p: &StrataProcess, path: &str, body: Value| {
        client
            .post(format!("{}{path}", p.http))
            .bearer_auth(&deployer)
            .json(&body)
            .send()
    };
    let a_view = wait_for(Duration::from_secs(30), "a leads", || async {
        let v = json_of(&client, &a, &admin, "/api/v1/scheduler").await;
        (v["is_leader"] == true).then_some(v)
    })
    .await;
    for sql in [
        crate::flows::EVENTS,
        "INSERT INTO bronze.events VALUES (1, 'k')",
    ] {
        let r = send(&a, "/api/v1/query", json!({"sql": sql}))
            .await
            .unwrap();
        assert_eq!(r.status(), 200);
    }
    deploy_every_slot(&client, &a, &deployer, "fenced", "none").await;
    // The first scheduled run reaches its commit and the process stops itself there.
    let pid = a.child.id();
    wait_for(
        Duration::from_secs(30),
        "a stops before its commit",
        || async { stopped(pid).then_some(()) },
    )
    .await;

    let b = StrataProcess::spawn(dir.path(), &env).await;
    let r = send(&b, "/api/v1/pipelines/fenced/pause", json!({}))
        .await
        .unwrap();
    assert!(r.status().is_success(), "{}", r.text().await.unwrap());
    let b_view = wait_for(Duration::from_secs(30), "b takes over", || async {
        let v = json_of(&client, &b, &admin, "/api/v1/scheduler").await;
        (v["is_leader"] == true).then_some(v)
    })
    .await;
    assert!(
        b_view["epoch"].as_u64().unwrap() > a_view["epoch"].as_u64().unwrap(),
        "{a_view} → {b_view}"
    );
    let count = |p: &StrataProcess| {
        let (client, http, token) = (client.clone(), p.http.clone(), deployer.clone());
        async move {
            let r = client
                .post(format!("{http}/api/v1/query"))
                .bearer_auth(&token)
                .json(&json!({"sql": "SELECT count(*) AS n FROM silver.fenced"}))
                .send()
                .await
                .unwrap();
            let body: Value = r.json().await.unwrap();
            body[0]["n"].as_i64().unwrap_or(-1)
        }
    };

    // The old leader wakes up inside its run.
    let cont = std::process::Command::new("kill")
        .args(["-CONT", &pid.to_string()])
        .status()
        .unwrap();
    assert!(cont.success());
    let a_id = a_view["replica"]["id"].clone();
    let run = wait_for(Duration::from_secs(30), "a's run ends", || async {
        let r = client
            .get(format!("{}/api/v1/runs?pipeline=fenced", b.http))
            .bearer_auth(&deployer)
            .send()
            .await
            .ok()?;
        let body: Value = r.json().await.ok()?;
        body["runs"]
            .as_array()?
            .iter()
            .find(|r| {
                r["replica"] == a_id && !matches!(r["status"].as_str(), Some("queued" | "running"))
            })
            .cloned()
    })
    .await;
    assert_eq!(run["status"], "cancelled", "{run:#}");
    assert!(
        run["models"][0]["error"]
            .as_str()
            .is_some_and(|e| e.contains("no longer leads")),
        "{run:#}"
    );
    // Its batch was refused: the table did not move (the model table may not exist yet).
    assert!(count(&b).await <= 0, "a deposed leader committed");

    // The new leader runs the pipeline from the watermarks: the row arrives once.
    let r = send(&b, "/api/v1/pipelines/fenced/resume", json!({}))
        .await
        .unwrap();
    assert!(r.status().is_success(), "{}", r.text().await.unwrap());
    wait_for(Duration::from_secs(30), "the new leader's run", || async {
        (count(&b).await == 1).then_some(())
    })
    .await;
    drop(a);
    drop(b);
}

/// Polls `probe` until it yields, at most `limit`.
async fn wait_for<T, F: std::future::Future<Output = Option<T>>>(
    limit: Duration,
    what: &str,
    mut probe: impl FnMut() -> F,
) -> T {
    let deadline = std::time::Instant::now() + limit;
    loop {
        if let Some(v) = probe().await {
            return v;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "{what}: not within {limit:?}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// A replica with `[scheduler] enabled = false` never leads but still heartbeats: the
/// leader counts it alive, so the manual runs it executes are never marked orphaned.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replica_that_never_leads_still_counts_as_alive() {
    let a =
        TestServer::start_configured(Backend::Local, |cfg| cfg.scheduler.lease_ttl_secs = 5).await;
    until(&a, "a leads", |v| v["is_leader"] == true).await;
    let mut cfg = a.config.clone();
    cfg.scheduler.enabled = false;
    let b = TestServer::start_with(cfg).await;
    let vb = view(&b).await;
    assert_eq!(vb["enabled"], false, "{vb}");
    assert_eq!(vb["is_leader"], false, "{vb}");
    let id = vb["replica"]["id"].clone();
    until(&a, "the leader sees b", |v| {
        v["replicas"]
            .as_array()
            .is_some_and(|r| r.iter().any(|x| x["id"] == id))
    })
    .await;
    b.stop().await;
    a.stop().await;
}

/// A follower accepts a manual run, a backfill and a cancel; the leader executes them
/// (PLATFORM P3): the follower answers 202 with the run `queued` and no replica, the run
/// record names the leader and its epoch, and the cancel sent to the follower stops the
/// backfill the leader runs.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_follower_hands_manual_runs_and_cancels_to_the_leader() {
    let a = TestServer::start_configured(Backend::Local, |cfg| {
        crate::flows::with_etl(cfg);
        cfg.scheduler.lease_ttl_secs = 5;
    })
    .await;
    let va = until(&a, "a leads", |v| v["is_leader"] == true).await;
    let leader = va["replica"]["id"].clone();
    let b = a.replica().await;
    until(&b, "b follows a", |v| {
        v["leader"]["id"] == leader && v["is_leader"] == false
    })
    .await;
    let token = crate::flows::deployer(&a);
    a.sql_ok(crate::flows::EVENTS).await;
    a.sql_ok("INSERT INTO bronze.events VALUES (1, 'k'), (2, 'k'), (3, 'k')")
        .await;
    let (status, body) = a
        .put_json(
            &token,
            "/api/v1/pipelines/handed",
            crate::flows::bundle(&[("silver/handed.sql", crate::flows::APPEND)]),
        )
        .await;
    assert_eq!(status, 200, "{body}");

    let (status, started) = b
        .post_json(&token, "/api/v1/pipelines/handed/runs", json!({}))
        .await;
    assert_eq!(status, 202, "{started}");
    assert_eq!(started["status"], "queued", "{started}");
    assert!(
        started.get("replica").is_none_or(Value::is_null),
        "{started}"
    );
    let id = started["run_id"].as_str().unwrap();
    let run = crate::flows::wait(&b, &token, id).await;
    assert_eq!(run["status"], "succeeded", "{run:#}");
    assert_eq!(run["replica"], leader, "{run:#}");
    assert!(run["epoch"].as_u64().is_some(), "{run:#}");
    assert_eq!(crate::flows::ids(&b, "silver.handed").await, vec![1, 2, 3]);
    // Bad requests are still answered by the replica that received them.
    let (status, body) = b
        .post_json(
            &token,
            "/api/v1/pipelines/handed/runs",
            json!({"models": ["silver.nope"]}),
        )
        .await;
    assert_eq!(status, 400, "{body}");

    // A year of daily batches on the leader, cancelled through the follower.
    a.sql_ok(crate::flows_kinds::SALES).await;
    let (status, body) = a
        .put_json(
            &token,
            "/api/v1/pipelines/sales",
            crate::flows::bundle(&[("gold/daily.sql", &crate::flows_kinds::daily("2025-01-01"))]),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    let (status, started) = b
        .post_json(
            &token,
            "/api/v1/pipelines/sales/backfill",
            json!({"from": "2025-01-01", "to": "2026-01-01"}),
        )
        .await;
    assert_eq!(status, 202, "{started}");
    let id = started["run_id"].as_str().unwrap().to_string();
    // Until the leader runs it.
    for _ in 0..100 {
        let (_, r) = b.get(&token, &format!("/api/v1/runs/{id}")).await;
        if r["replica"] == leader {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let (status, body) = b
        .post_json(&token, &format!("/api/v1/runs/{id}/cancel"), json!({}))
        .await;
    assert!((200..300).contains(&status), "{status}: {body}");
    let run = crate::flows::wait(&b, &token, &id).await;
    assert_eq!(run["status"], "cancelled", "{run:#}");
    assert_eq!(run["replica"], leader, "{run:#}");
    let pending = &run["models"][0]["backfill"]["pending"];
    assert!(
        pending.as_array().is_some_and(|p| !p.is_empty()),
        "the backfill ended before the cancel reached it: {run:#}"
    );
    b.stop().await;
    a.stop().await;
}

/// Requests that wait for a leader: while nobody leads (the leader stopped, its lease not
/// yet expired), a run cancelled through the follower never starts, and a run whose
/// pipeline is redeployed before a leader claims it fails saying so; the new leader
/// settles both.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_cancelled_or_outdated_before_a_leader_claims_them_never_start() {
    let a = TestServer::start_configured(Backend::Local, |cfg| {
        crate::flows::with_etl(cfg);
        cfg.scheduler.lease_ttl_secs = 5;
    })
    .await;
    let va = until(&a, "a leads", |v| v["is_leader"] == true).await;
    let b = a.replica().await;
    until(&b, "b follows a", |v| {
        v["leader"]["id"] == va["replica"]["id"] && v["is_leader"] == false
    })
    .await;
    let token = crate::flows::deployer(&a);
    a.sql_ok(crate::flows::EVENTS).await;
    a.sql_ok("INSERT INTO bronze.events VALUES (1, 'k')").await;
    let deploy = |sql: &'static str| {
        let (b, token) = (&b, token.clone());
        async move {
            let (status, body) = b
                .put_json(
                    &token,
                    "/api/v1/pipelines/waiting",
                    crate::flows::bundle(&[("silver/waiting.sql", sql)]),
                )
                .await;
            assert_eq!(status, 200, "{body}");
        }
    };
    deploy(crate::flows::APPEND).await;

    // The leader stops; its lease lapses only after the TTL.
    let _warehouse = a.stop().await;
    let start = || {
        let (b, token) = (&b, token.clone());
        async move {
            let (status, started) = b
                .post_json(&token, "/api/v1/pipelines/waiting/runs", json!({}))
                .await;
            assert_eq!(status, 202, "{started}");
            assert_eq!(started["status"], "queued", "{started}");
            started["run_id"].as_str().unwrap().to_string()
        }
    };
    let cancelled = start().await;
    let (status, body) = b
        .post_json(
            &token,
            &format!("/api/v1/runs/{cancelled}/cancel"),
            json!({}),
        )
        .await;
    assert!((200..300).contains(&status), "{status}: {body}");
    let outdated = start().await;
    deploy(
        "/* strata\nkind = \"append\"\n*/\nSELECT id, kind, 1 AS v FROM stream('bronze.events')",
    )
    .await;
    assert_eq!(
        view(&b).await["is_leader"],
        false,
        "b took over before the requests were made: the test would prove nothing"
    );

    let run = crate::flows::wait(&b, &token, &cancelled).await;
    assert_eq!(run["status"], "cancelled", "{run:#}");
    assert!(
        run["error"]
            .as_str()
            .is_some_and(|e| e.contains("before the scheduler's leader started it")),
        "{run:#}"
    );
    let run = crate::flows::wait(&b, &token, &outdated).await;
    assert_eq!(run["status"], "failed", "{run:#}");
    assert!(
        run["error"]
            .as_str()
            .is_some_and(|e| e.contains("redeployed")),
        "{run:#}"
    );
    // Neither committed anything.
    let (status, _) = b
        .post_json(
            &token,
            "/api/v1/query",
            json!({"sql": "SELECT count(*) AS n FROM silver.waiting"}),
        )
        .await;
    assert_ne!(status, 200, "the model table exists: a run started");
    b.stop().await;
}
