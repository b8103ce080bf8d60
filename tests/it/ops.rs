//! Operations: Prometheus metrics, request ids, admission (429), query timeouts, result and
//! memory limits, hostile SQL, SIGTERM during a write.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use serde_json::{Value, json};

use crate::harness::{StrataProcess, TestServer, message, test_config};

/// Parses Prometheus text format 0.0.4 strictly enough to catch broken output: every sample
/// line is `name{labels} value` with a declared TYPE, values are numbers. Returns
/// `name{labels}` → value.
fn parse_prometheus(text: &str) -> BTreeMap<String, f64> {
    let mut typed = std::collections::BTreeSet::new();
    let mut out = BTreeMap::new();
    for line in text.lines() {
        if let Some(rest) = line.strip_prefix("# TYPE ") {
            let mut parts = rest.split_whitespace();
            let name = parts.next().unwrap();
            let kind = parts.next().unwrap();
            assert!(["counter", "gauge", "histogram"].contains(&kind), "{line}");
            typed.insert(name.to_string());
            continue;
        }
        if line.starts_with('#') || line.is_empty() {
            continue;
        }
        let (series, value) = line.rsplit_once(' ').unwrap_or_else(|| panic!("{line}"));
        let name = series.split('{').next().unwrap();
        assert!(
            name.chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == ':'),
            "{line}"
        );
        // OpenMetrics: a counter family `x` has the sample `x_total`.
        let base = ["_bucket", "_sum", "_count", "_total"]
            .iter()
            .find_map(|s| name.strip_suffix(s).filter(|b| typed.contains(*b)))
            .unwrap_or(name);
        assert!(typed.contains(base), "no TYPE for {name}");
        if series.contains('{') {
            assert!(series.ends_with('}'), "{line}");
        }
        let v: f64 = match value {
            "+Inf" => f64::INFINITY,
            v => v.parse().unwrap_or_else(|_| panic!("{line}")),
        };
        out.insert(series.to_string(), v);
    }
    out
}

async fn metrics(s: &TestServer) -> BTreeMap<String, f64> {
    parse_prometheus(&s.metrics_text().await)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_parse_move_and_requests_carry_ids() {
    let s = TestServer::start().await;
    s.seed_people("gold.people", 10).await;
    let before = metrics(&s).await;
    let query_200 =
        "strata_requests_total{protocol=\"http\",route=\"/api/v1/query\",status=\"200\"}";
    for _ in 0..3 {
        s.sql_ok("SELECT * FROM gold.people WHERE id > 0").await;
    }
    s.sql_ok("INSERT INTO gold.people VALUES (11, 'x', 1)")
        .await;
    let (status, _) = s.sql(&s.admin.clone(), "SELECT nope").await;
    assert_eq!(status, 400);
    let after = metrics(&s).await;
    let get = |m: &BTreeMap<String, f64>, k: &str| m.get(k).copied().unwrap_or(0.0);
    assert_eq!(get(&after, query_200) - get(&before, query_200), 4.0);
    assert_eq!(
        get(
            &after,
            "strata_requests_total{protocol=\"http\",route=\"/api/v1/query\",status=\"400\"}"
        ),
        1.0
    );
    assert!(
        get(&after, "strata_rows_served_total") >= get(&before, "strata_rows_served_total") + 10.0
    );
    assert!(get(&after, "strata_commits_total") > get(&before, "strata_commits_total"));
    assert!(
        get(
            &after,
            "strata_request_duration_seconds_count{protocol=\"http\",route=\"/api/v1/query\"}"
        ) >= 5.0
    );
    assert!(after.contains_key("strata_memory_pool_limit_bytes"));
    assert!(after.contains_key("strata_cache_hits_total"));
    // The server runs on jemalloc: its heap is reported, and it holds what was just used.
    let allocated = get(&after, "strata_heap_allocated_bytes");
    // (A running server holds many MiB; jemalloc alone, not serving the heap, holds next to
    // nothing.)
    assert!(
        allocated > f64::from(1u32 << 20),
        "strata_heap_allocated_bytes {allocated}: is the server allocating through jemalloc?"
    );
    assert!(get(&after, "strata_heap_resident_bytes") >= allocated);
    assert!(after.contains_key("strata_heap_retained_bytes"));
    assert_eq!(get(&after, "strata_queries_running"), 0.0);
    // OpenMetrics text (prometheus-client); metrics need a token like the API.
    let r = s
        .client
        .get(s.url("/metrics"))
        .bearer_auth(&s.admin)
        .send()
        .await
        .unwrap();
    assert!(
        r.headers()["content-type"]
            .to_str()
            .unwrap()
            .starts_with("application/openmetrics-text; version=1.0.0")
    );
    let r = s.client.get(s.url("/metrics")).send().await.unwrap();
    assert_eq!(r.status(), 401);
    // Counters sum over every principal's queries: operators and admins only.
    let analyst = s.token("ann", &["analyst"]);
    let r = s
        .client
        .get(s.url("/metrics"))
        .bearer_auth(&analyst)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 403);
    let operator = s.token("ops", &["operator"]);
    let r = s
        .client
        .get(s.url("/metrics"))
        .bearer_auth(&operator)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);

    // A request id is echoed (the client's, or a fresh one).
    let r = s
        .client
        .get(s.url("/api/v1/tables"))
        .bearer_auth(&s.admin)
        .header("x-request-id", "req-42")
        .send()
        .await
        .unwrap();
    assert_eq!(r.headers()["x-request-id"], "req-42");
    let r = s
        .client
        .get(s.url("/api/v1/tables"))
        .bearer_auth(&s.admin)
        .send()
        .await
        .unwrap();
    assert!(!r.headers()["x-request-id"].is_empty());

    // Flight too, in the response metadata; and its calls are counted.
    let channel = tonic::transport::Endpoint::from_shared(format!("http://{}", s.flight))
        .unwrap()
        .connect()
        .await
        .unwrap();
    let mut raw = arrow_flight::flight_service_client::FlightServiceClient::new(channel);
    let mut req = tonic::Request::new(arrow_flight::Empty {});
    req.metadata_mut().insert(
        "authorization",
        format!("Bearer {}", s.admin).parse().unwrap(),
    );
    req.metadata_mut()
        .insert("x-request-id", "flight-7".parse().unwrap());
    let response = raw.list_actions(req).await.unwrap();
    assert_eq!(response.metadata().get("x-request-id").unwrap(), "flight-7");
    let m = metrics(&s).await;
    assert!(
        get(
            &m,
            "strata_requests_total{protocol=\"flight\",route=\"ListActions\",status=\"Ok\"}"
        ) >= 1.0,
        "{m:?}"
    );
}

/// Seconds of CPU this process (server included) has used.
fn cpu_seconds() -> f64 {
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap();
    let after_name = &stat[stat.rfind(')').unwrap() + 2..];
    let fields: Vec<&str> = after_name.split_whitespace().collect();
    // utime and stime are fields 14 and 15 of the full line (11, 12 after the name).
    let ticks: f64 = fields[11].parse::<f64>().unwrap() + fields[12].parse::<f64>().unwrap();
    ticks / 100.0
}

/// Seconds of work in a debug build, done batch by batch over a Delta scan (so it yields
/// between batches and can be cancelled).
const HEAVY: &str =
    "SELECT count(DISTINCT md5(repeat(name, 200) || CAST(id AS STRING))) AS n FROM gold.big";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admission_timeouts_and_result_limits() {
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = test_config(dir.path());
    cfg.query.max_concurrent = 1;
    cfg.query.max_queued = 0;
    cfg.query.timeout_secs = 2;
    cfg.query.max_result_bytes = 1024 * 1024;
    cfg.cache.enabled = false;
    let s = std::sync::Arc::new(TestServer::start_with(cfg).await);
    s.sql_ok(
        "CREATE TABLE gold.big AS SELECT v AS id, 'name-' || CAST(v AS STRING) AS name \
         FROM (SELECT unnest(range(0, 1000000)) AS v)",
    )
    .await;

    // One heavy query holds the only slot: the next statement is refused with 429 …
    let heavy = {
        let s = std::sync::Arc::clone(&s);
        tokio::spawn(async move {
            let started = Instant::now();
            let r = s.sql(&s.admin.clone(), HEAVY).await;
            (r, started.elapsed())
        })
    };
    let deadline = Instant::now() + Duration::from_secs(10);
    while metrics(&s).await.get("strata_queries_running").copied() != Some(1.0) {
        assert!(Instant::now() < deadline, "the heavy query never started");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let (status, body) = s.sql(&s.admin.clone(), "SELECT 1 AS one").await;
    assert_eq!(status, 429, "{body}");
    assert_eq!(body["error"]["code"], "resource_exhausted");
    assert!(message(&body).contains("busy"), "{body}");

    // … the heavy one stops at its 2 s deadline with 504 …
    let ((status, body), elapsed) = heavy.await.unwrap();
    assert_eq!(status, 504, "{body}");
    assert_eq!(body["error"]["code"], "deadline_exceeded");
    assert!(elapsed < Duration::from_secs(10), "{elapsed:?}");
    // … and really stops. Uncancelled, this query runs for ~35 s (debug build) at 0.6+ CPU
    // seconds per second; cancelled, the batches in flight finish within a few seconds and
    // the process goes idle.
    let mut windows = Vec::new();
    for _ in 0..12 {
        let cpu = cpu_seconds();
        tokio::time::sleep(Duration::from_secs(1)).await;
        windows.push(cpu_seconds() - cpu);
        if windows.last().is_some_and(|w| *w < 0.15) {
            break;
        }
    }
    assert!(
        windows.last().is_some_and(|w| *w < 0.15),
        "still busy after the timeout: CPU seconds per second {windows:?}"
    );

    // The slot is free again; a result over max_result_bytes fails instead of streaming on.
    assert_eq!(s.sql_ok("SELECT 1 AS one").await, json!([{"one": 1}]));
    let sent = s
        .client
        .post(s.url("/api/v1/query"))
        .bearer_auth(&s.admin)
        .header("accept", "application/vnd.apache.arrow.stream")
        .json(&json!({"sql": "SELECT id, name FROM gold.big"}))
        .send()
        .await;
    match sent {
        Ok(r) if r.status() == 200 => {
            assert!(r.bytes().await.is_err(), "the body must end in an error")
        }
        Ok(r) => {
            let (status, body) = crate::harness::status_json(r).await;
            assert_eq!(status, 429, "{body}");
            assert!(message(&body).contains("max_result_bytes"), "{body}");
        }
        Err(_) => {}
    }
    let m = metrics(&s).await;
    assert!(m["strata_queries_rejected_total"] >= 1.0);
    assert!(m["strata_query_timeouts_total"] >= 1.0);
    assert!(m["strata_query_result_too_large_total"] >= 1.0);
    assert_eq!(m["strata_queries_running"], 0.0);
    assert_eq!(s.sql_ok("SELECT 2 AS two").await, json!([{"two": 2}]));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn memory_limit_and_hostile_sql_fail_cleanly() {
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = test_config(dir.path());
    cfg.query.memory_limit_bytes = 64 * 1024 * 1024;
    cfg.cache.enabled = false;
    let s = TestServer::start_with(cfg).await;
    let admin = s.admin.clone();
    // 6M distinct groups do not fit in 64 MiB: the query spills or fails with 429, and the
    // server keeps serving either way.
    let (status, body) = s
        .sql(
            &admin,
            "SELECT v, count(*) AS n FROM (SELECT unnest(range(0, 6000000)) AS v) GROUP BY v ORDER BY v DESC LIMIT 2",
        )
        .await;
    match status {
        200 => assert_eq!(
            body,
            json!([{"v": 5999999, "n": 1}, {"v": 5999998, "n": 1}])
        ),
        429 => assert!(
            message(&body)
                .to_lowercase()
                .contains("resources exhausted"),
            "{body}"
        ),
        other => panic!("{other}: {body}"),
    }
    assert_eq!(s.sql_ok("SELECT 1 AS one").await, json!([{"one": 1}]));

    // Deeply nested or very long expressions: 400, never a stack overflow (which would
    // abort the whole server).
    for sql in [
        format!("SELECT {}1{}", "(".repeat(10_000), ")".repeat(10_000)),
        format!("SELECT 1{}", " + 1".repeat(10_000)),
        format!("SELECT 1{}", " * 1".repeat(50_000)),
        format!("SELECT 'a'{}", " || 'a'".repeat(300)),
        format!("SELECT 1 IS NULL{}", " IS NULL".repeat(5_000)),
        format!(
            "SELECT {} 1 {}",
            "CASE WHEN true THEN".repeat(3_000),
            " END".repeat(3_000)
        ),
        format!("SELECT {}", "-".repeat(10_000) + "1"),
        format!("SELECT {}", "NOT ".repeat(10_000) + "true"),
    ] {
        let (status, body) = s.sql(&admin, &sql).await;
        assert_eq!(status, 400, "{}…: {body}", &sql[..40]);
    }
    // Long AND/OR chains, as BI tools write them, are balanced and run.
    let ors = format!(
        "SELECT count(*) AS n FROM (VALUES (1), (2), (3)) t(a) WHERE {}",
        (0..10_000)
            .map(|i| format!("a = {}", i % 2))
            .collect::<Vec<_>>()
            .join(" OR ")
    );
    assert_eq!(s.sql_ok(&ors).await, json!([{"n": 1}]));
    let ands = format!(
        "SELECT count(*) AS n FROM (VALUES (1), (2)) t(a) WHERE {}",
        vec!["a > 0"; 10_000].join(" AND ")
    );
    assert_eq!(s.sql_ok(&ands).await, json!([{"n": 2}]));
    // Through the REST MERGE body too (its conditions are parsed separately).
    s.sql_ok("CREATE TABLE gold.m (id BIGINT, v BIGINT)").await;
    let (status, body) = s
        .post_json(
            &admin,
            "/api/v1/tables/gold/m/merge",
            json!({"source": {"rows": [{"id": 1, "v": 1}]}, "on": format!("t.id = s.id{}", " + 0".repeat(5_000))}),
        )
        .await;
    assert_eq!(status, 400, "{body}");
    assert_eq!(s.sql_ok("SELECT 1 AS one").await, json!([{"one": 1}]));
}

/// SIGTERM while uploads are in flight: each either commits whole (and was acknowledged)
/// or is not there at all, and the process exits 0 within its grace period.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_during_writes_finishes_or_drops_each_and_exits_zero() {
    let dir = tempfile::tempdir().unwrap();
    let mut p = StrataProcess::spawn(dir.path(), &[]).await;
    let client = reqwest::Client::new();
    let r = client
        .post(format!("{}/api/v1/query", p.http))
        .bearer_auth(&p.token)
        .json(&json!({"sql": "CREATE TABLE bronze.t (id BIGINT NOT NULL, batch BIGINT)"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let upload = |batch: u64| {
        let (client, http, token) = (client.clone(), p.http.clone(), p.token.clone());
        async move {
            let mut csv = String::from("id,batch\n");
            for i in 0..50_000u64 {
                csv.push_str(&format!("{i},{batch}\n"));
            }
            let r = client
                .post(format!("{http}/api/v1/tables/bronze/t/rows"))
                .bearer_auth(token)
                .header("content-type", "text/csv")
                .body(csv)
                .send()
                .await;
            match r {
                Ok(r) => (batch, r.status().as_u16()),
                Err(_) => (batch, 0),
            }
        }
    };
    let writes: Vec<_> = (1..=4).map(|b| tokio::spawn(upload(b))).collect();
    tokio::time::sleep(Duration::from_millis(150)).await;
    let status = std::process::Command::new("kill")
        .args(["-TERM", &p.child.id().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    let mut acked = Vec::new();
    for w in writes {
        let (batch, status) = w.await.unwrap();
        if status == 200 {
            acked.push(batch);
        }
    }
    let mut child = std::mem::replace(
        &mut p.child,
        std::process::Command::new("true").spawn().unwrap(),
    );
    let exit = tokio::task::spawn_blocking(move || child.wait())
        .await
        .unwrap()
        .unwrap();
    assert!(exit.success(), "SIGTERM should exit 0, got {exit:?}");
    drop(p);

    let p = StrataProcess::spawn(dir.path(), &[]).await;
    let r = client
        .post(format!("{}/api/v1/query", p.http))
        .bearer_auth(&p.token)
        .json(&json!({"sql": "SELECT batch, count(*) AS n FROM bronze.t GROUP BY batch"}))
        .send()
        .await
        .unwrap();
    let rows: Value = r.json().await.unwrap();
    let present: BTreeMap<u64, u64> = rows
        .as_array()
        .unwrap()
        .iter()
        .map(|r| (r["batch"].as_u64().unwrap(), r["n"].as_u64().unwrap()))
        .collect();
    for (batch, n) in &present {
        assert_eq!(*n, 50_000, "batch {batch} is partial");
    }
    for batch in &acked {
        assert!(
            present.contains_key(batch),
            "acknowledged batch {batch} lost"
        );
    }
}

/// `server.metrics_addr`: a listener serving only `/metrics`, without a token.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_metrics_listener_serves_only_metrics() {
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = crate::harness::test_config(dir.path());
    cfg.server.metrics_addr = Some("127.0.0.1:0".parse().unwrap());
    let s = TestServer::start_with(cfg).await;
    let addr = s.metrics.expect("metrics listener bound");
    let r = s
        .client
        .get(format!("http://{addr}/metrics"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    // (Labelled families appear with their first sample; plain counters always do.)
    assert!(r.text().await.unwrap().contains("strata_commits_total"));
    for path in ["/api/v1/tables", "/healthz"] {
        let r = s
            .client
            .get(format!("http://{addr}{path}"))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 404, "{path}");
    }
    s.stop().await;
}

/// The queries that took the server down (a 2 GiB allocation inside `lpad`, a 3 GiB
/// `range`, OOM-killed at 24 GB by `repeat` and `unnest(range(…))`) are refused with 429,
/// several at once from several analysts, and the server keeps serving.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn generating_functions_are_bounded_and_the_server_keeps_serving() {
    let s = std::sync::Arc::new(TestServer::start().await);
    let hostile: [&'static str; 6] = [
        "SELECT length(lpad('a', 2147483647, 'b')) AS n",
        "SELECT cardinality(range(1, 400000000)) AS n",
        "SELECT length(repeat('a', 2000000000)) AS n",
        "SELECT count(*) AS n FROM (SELECT unnest(range(1, 1000000000)))",
        "SELECT length(string_agg(repeat('x', 100000000), '')) AS n FROM (SELECT unnest(range(1, 50)))",
        "SELECT cardinality(array_repeat('x', 1000000000)) AS n",
    ];
    let mut running = Vec::new();
    for (i, sql) in hostile.into_iter().enumerate() {
        let s = std::sync::Arc::clone(&s);
        let token = s.token(&format!("analyst{i}"), &["analyst"]);
        running.push(tokio::spawn(async move { (sql, s.sql(&token, sql).await) }));
    }
    for r in running {
        let (sql, (status, body)) = r.await.unwrap();
        assert_eq!(status, 429, "{sql}: {body}");
        assert!(
            message(&body).contains("max_function_output_bytes"),
            "{sql}: {body}"
        );
    }
    assert_eq!(s.sql_ok("SELECT 1 AS one").await, json!([{"one": 1}]));
    let m = metrics(&s).await;
    assert!(m["strata_function_output_refused_total"] >= 6.0, "{m:?}");
}

/// The process-wide budget: with the heap over `server.memory_budget_bytes`, a running
/// query stops with 429, new statements are refused with 429, and once the heap falls back
/// statements run again. (The heap is pushed over by the test itself: the server runs in
/// this process.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn over_the_memory_budget_queries_stop_with_429_and_the_server_recovers() {
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = test_config(dir.path());
    cfg.query.memory_limit_bytes = 64 << 20;
    cfg.cache.max_bytes = 16 << 20;
    cfg.scheduler.pipeline_memory_bytes = 64 << 20;
    cfg.server.memory_budget_bytes = 768 << 20;
    let s = std::sync::Arc::new(TestServer::start_with(cfg).await);
    // Minutes of work in a debug build, yielding between batches.
    let slow = "SELECT count(*) AS n FROM (SELECT unnest(range(1, 4000)) AS a) x, \
                (SELECT unnest(range(1, 4000)) AS b) y, (SELECT unnest(range(1, 400)) AS c) z \
                WHERE (a * b + c) % 7 = 3";
    let query = {
        let s = std::sync::Arc::clone(&s);
        tokio::spawn(async move { s.sql(&s.admin.clone(), slow).await })
    };
    let deadline = Instant::now() + Duration::from_secs(20);
    while metrics(&s).await.get("strata_queries_running").copied() != Some(1.0) {
        assert!(Instant::now() < deadline, "the query never started");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let ballast: Vec<u8> = vec![1u8; 800 << 20];
    let (status, body) = tokio::time::timeout(Duration::from_secs(30), query)
        .await
        .expect("stopped within 30 s")
        .unwrap();
    assert_eq!(status, 429, "{body}");
    assert!(message(&body).contains("memory budget"), "{body}");
    let (status, body) = s.sql(&s.admin.clone(), "SELECT 1 AS one").await;
    assert_eq!(status, 429, "refused while over: {body}");
    assert!(ballast.iter().step_by(1 << 20).all(|b| *b == 1));
    drop(ballast);
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let (status, body) = s.sql(&s.admin.clone(), "SELECT 1 AS one").await;
        if status == 200 {
            assert_eq!(body, json!([{"one": 1}]));
            break;
        }
        assert!(Instant::now() < deadline, "never admitted again: {body}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let m = metrics(&s).await;
    assert!(m["strata_memory_budget_cancelled_total"] >= 1.0, "{m:?}");
    assert!(m["strata_memory_budget_refused_total"] >= 1.0, "{m:?}");
}
