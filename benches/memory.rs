//! Memory under hostile queries: does the server's resident memory stay within
//! `server.memory_budget_bytes` (plus a margin) while analysts send the queries that used to
//! take it down, and does it keep serving everyone else?
//!
//! Runs the real `strata` binary as its own process (so its RSS is the server's alone),
//! samples `/proc/<pid>/status` every 10 ms, and reports per phase the answers by status,
//! an innocent client's success rate and latency, and the peak RSS against the budget.
//!
//! ```sh
//! cargo bench --bench memory                  # release build
//! cargo bench --profile dev --bench memory    # quicker to build; same memory behaviour
//! STRATA_BENCH_BUDGET_MIB=1536 STRATA_BENCH_ROUNDS=3 cargo bench --bench memory
//! STRATA_BENCH_BINARY=/path/to/strata cargo bench --bench memory   # another build
//! ```
//!
//! The last phase is one large `INSERT … SELECT` (30 million rows, about 1.2 GB as Arrow):
//! its rows must reach the data files as they are computed, not gather in memory first.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    missing_debug_implementations
)]

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use serde_json::{Value, json};

use common::{ServerProcess, block_on, env_u64};

/// Queries that allocated past every limit before (lpad aborted the process at 6.4 GB; the
/// others were OOM-killed at 24 GB).
const HOSTILE: [&str; 6] = [
    "SELECT length(lpad('a', 2147483647, 'b')) AS n",
    "SELECT cardinality(range(1, 400000000)) AS n",
    "SELECT length(repeat('a', 2000000000)) AS n",
    "SELECT count(*) AS n FROM (SELECT unnest(range(1, 1000000000)))",
    "SELECT length(string_agg(repeat('x', 100000000), '')) AS n FROM (SELECT unnest(range(1, 50)))",
    "SELECT cardinality(array_repeat('x', 1000000000)) AS n",
];

/// Queries that stay under the per-call bound but, many at once, press on the budget:
/// function outputs near the bound, big sorts and aggregations (the pool spills them).
const HEAVY: [&str; 3] = [
    "SELECT sum(length(repeat(CAST(i AS STRING), 30000000))) AS n FROM (SELECT unnest(range(1, 3)) AS i)",
    "SELECT count(*) AS n FROM (SELECT v, repeat(CAST(v % 97 AS STRING), 40) AS s FROM (SELECT unnest(range(1, 2000000)) AS v) ORDER BY s, v DESC)",
    "SELECT count(DISTINCT s) AS n FROM (SELECT md5(CAST(v AS STRING)) AS s FROM (SELECT unnest(range(1, 3000000)) AS v))",
];

fn start(budget: u64) -> ServerProcess {
    ServerProcess::spawn(&[
        ("STRATA__SERVER__MEMORY_BUDGET_BYTES", budget.to_string()),
        (
            "STRATA__QUERY__MEMORY_LIMIT_BYTES",
            (budget / 3).to_string(),
        ),
        ("STRATA__CACHE__MAX_BYTES", (64u64 << 20).to_string()),
        (
            "STRATA__ACCESS__GRANTS",
            r#"[{role = "analyst", privilege = "SELECT", on = "*"}]"#.to_string(),
        ),
    ])
}

fn rss_kib(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status
        .lines()
        .find(|l| l.starts_with("VmRSS:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())
}

async fn sql(client: &reqwest::Client, s: &str, token: &str, q: &str) -> (u16, Value) {
    match client
        .post(format!("http://{s}/api/v1/query"))
        .bearer_auth(token)
        .json(&json!({ "sql": q }))
        .send()
        .await
    {
        Ok(r) => {
            let status = r.status().as_u16();
            (status, r.json().await.unwrap_or(Value::Null))
        }
        Err(_) => (0, Value::Null),
    }
}

/// Why a statement was refused, in a word.
fn reason(body: &Value) -> &'static str {
    let m = body["error"]["message"].as_str().unwrap_or_default();
    if m.is_empty() {
        ""
    } else if m.contains("max_function_output_bytes") {
        " (function bound)"
    } else if m.contains("memory budget") {
        " (memory budget)"
    } else if m.contains("busy") {
        " (queue full)"
    } else if m.contains("Resources exhausted") || m.contains("memory") {
        " (memory pool)"
    } else {
        " (other)"
    }
}

#[derive(Default)]
struct Innocent {
    ok: AtomicU64,
    failed: AtomicU64,
    latencies_us: std::sync::Mutex<Vec<u64>>,
}

fn percentile(sorted: &[u64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i] as f64 / 1000.0
}

fn main() {
    let budget_mib = env_u64("STRATA_BENCH_BUDGET_MIB", 1536);
    let rounds = env_u64("STRATA_BENCH_ROUNDS", 3);
    let clients = env_u64("STRATA_BENCH_CLIENTS", 8) as usize;
    let budget = budget_mib << 20;
    let server = start(budget);
    let pid = server.child.id();
    let peak = Arc::new(AtomicU64::new(0));
    let sampling = Arc::new(AtomicBool::new(true));
    let sampler = {
        let (peak, sampling) = (Arc::clone(&peak), Arc::clone(&sampling));
        std::thread::spawn(move || {
            while sampling.load(Ordering::Relaxed) {
                if let Some(kib) = rss_kib(pid) {
                    peak.fetch_max(kib, Ordering::Relaxed);
                }
                std::thread::sleep(Duration::from_millis(10));
            }
        })
    };
    let analysts: Vec<String> = (0..clients)
        .map(|i| server.token(&format!("analyst{i}"), "analyst"))
        .collect();
    let admin = server.token("root", "admin");
    let http = server.http.clone();
    println!(
        "memory bench: budget {budget_mib} MiB, pool {} MiB, {clients} analysts, {rounds} rounds",
        budget_mib / 3
    );
    println!(
        "| phase | answers | innocent ok/failed | innocent p50 / p99 ms | peak RSS MiB | peak − budget MiB |"
    );
    println!("|---|---|---|---|---|---|");
    block_on(async move {
        let client = reqwest::Client::new();
        let (status, body) = sql(
            &client,
            &http,
            &admin,
            "CREATE TABLE gold.small AS SELECT v AS id FROM (SELECT unnest(range(1, 1000)) AS v)",
        )
        .await;
        assert_eq!(status, 200, "{body}");
        for (phase, queries) in [("hostile", &HOSTILE[..]), ("heavy", &HEAVY[..])] {
            peak.store(rss_kib(pid).unwrap_or(0), Ordering::Relaxed);
            let innocent = Arc::new(Innocent::default());
            let stop = Arc::new(AtomicBool::new(false));
            let bystander = {
                let (innocent, stop, client, http, t) = (
                    Arc::clone(&innocent),
                    Arc::clone(&stop),
                    client.clone(),
                    http.clone(),
                    analysts[0].clone(),
                );
                tokio::spawn(async move {
                    while !stop.load(Ordering::Relaxed) {
                        let started = Instant::now();
                        let (status, _) =
                            sql(&client, &http, &t, "SELECT count(*) AS n FROM gold.small").await;
                        let us = started.elapsed().as_micros() as u64;
                        if status == 200 {
                            innocent.ok.fetch_add(1, Ordering::Relaxed);
                            innocent.latencies_us.lock().unwrap().push(us);
                        } else {
                            innocent.failed.fetch_add(1, Ordering::Relaxed);
                        }
                        tokio::time::sleep(Duration::from_millis(20)).await;
                    }
                })
            };
            let mut statuses = std::collections::BTreeMap::<(u16, &str), u64>::new();
            for _ in 0..rounds {
                let mut tasks = Vec::new();
                for t in &analysts {
                    for q in queries {
                        let (client, http, t, q) = (client.clone(), http.clone(), t.clone(), *q);
                        tasks.push(tokio::spawn(async move {
                            let (status, body) = sql(&client, &http, &t, q).await;
                            (status, reason(&body))
                        }));
                    }
                }
                for t in tasks {
                    *statuses.entry(t.await.unwrap()).or_default() += 1;
                }
            }
            stop.store(true, Ordering::Relaxed);
            let _ = bystander.await;
            let mut lat = innocent.latencies_us.lock().unwrap().clone();
            lat.sort_unstable();
            let peak_mib = peak.load(Ordering::Relaxed) as f64 / 1024.0;
            let answers = statuses
                .iter()
                .map(|((s, why), n)| format!("{n}× {s}{why}"))
                .collect::<Vec<_>>()
                .join(", ");
            println!(
                "| {phase} | {answers} | {}/{} | {:.1} / {:.1} | {peak_mib:.0} | {:.0} |",
                innocent.ok.load(Ordering::Relaxed),
                innocent.failed.load(Ordering::Relaxed),
                percentile(&lat, 0.5),
                percentile(&lat, 0.99),
                peak_mib - budget_mib as f64
            );
        }
        // One large write: 999 × 30,000 rows.
        for q in [
            "CREATE TABLE gold.wide AS SELECT v AS id FROM (SELECT unnest(range(1, 30001)) AS v)",
            "CREATE TABLE gold.big (id BIGINT, label STRING)",
        ] {
            let (status, body) = sql(&client, &http, &admin, q).await;
            assert_eq!(status, 200, "{body}");
        }
        peak.store(rss_kib(pid).unwrap_or(0), Ordering::Relaxed);
        let started = Instant::now();
        let (status, body) = sql(
            &client,
            &http,
            &admin,
            "INSERT INTO gold.big SELECT a.id * 100000 + b.id, \
             concat('row-', CAST(a.id AS STRING), '-', CAST(b.id AS STRING)) \
             FROM gold.small a CROSS JOIN gold.wide b",
        )
        .await;
        let peak_mib = peak.load(Ordering::Relaxed) as f64 / 1024.0;
        println!(
            "| large INSERT … SELECT (30M rows) | 1× {status}{} in {:.1} s | – | – | {peak_mib:.0} | {:.0} |",
            reason(&body),
            started.elapsed().as_secs_f64(),
            peak_mib - budget_mib as f64
        );
        let (status, _) = sql(&client, &http, &admin, "SELECT 1 AS one").await;
        println!("server alive after the run: {}", status == 200);
    });
    sampling.store(false, Ordering::Relaxed);
    let _ = sampler.join();
    let hwm = std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmHWM:"))
                .and_then(|l| l.split_whitespace().nth(1).map(str::to_string))
        })
        .and_then(|v| v.parse::<f64>().ok())
        .unwrap_or(f64::NAN);
    println!(
        "kernel peak RSS (VmHWM) over the whole run: {:.0} MiB (budget {budget_mib} MiB)",
        hwm / 1024.0
    );
}
