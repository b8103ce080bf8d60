//! MERGE upsert and SCD2 throughput through the real server (REST, in process).
//!
//! `cargo bench --bench merge` runs a target of `STRATA_BENCH_TARGET_ROWS` rows (default
//! 10 000 000) and a source of `STRATA_BENCH_SOURCE_ROWS` rows (default 1 000 000, half of
//! them updates of existing keys, half new keys), then a daily batch of 10 000 rows, then
//! the same as SCD2 on a dimension (10% of the source changed). It prints wall time, rows/s,
//! files removed/added and the process's peak RSS (server and client share the process).

#![allow(clippy::expect_used, clippy::unwrap_used)]

use std::time::{Duration, Instant};

use serde_json::{Value, json};

/// Peak resident set size of this process so far (Linux), in MiB.
fn peak_rss_mib() -> f64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmHWM:"))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|kb| kb.parse::<f64>().ok())
        })
        .map_or(f64::NAN, |kb| kb / 1024.0)
}

mod common;

fn main() {
    common::block_on(run());
}

async fn run() {
    let target_rows = common::env_u64("STRATA_BENCH_TARGET_ROWS", 10_000_000);
    let source_rows = common::env_u64("STRATA_BENCH_SOURCE_ROWS", 1_000_000);
    let server = common::BenchServer::start(|_| {}).await;
    let http = server.http;
    let token = server.token(&["admin"], json!({}));
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(3600))
        .build()
        .unwrap();
    let sql = |sql: String| {
        let (client, token) = (client.clone(), token.clone());
        async move {
            let r = client
                .post(format!("http://{http}/api/v1/query"))
                .bearer_auth(token)
                .json(&json!({ "sql": sql }))
                .send()
                .await
                .unwrap();
            let status = r.status();
            let body: Value = r.json().await.unwrap();
            assert!(status.is_success(), "{sql}: {body}");
            body
        }
    };
    let timed = |label: &'static str, rows: u64, body: Value, elapsed: Duration| {
        let o = &body[0];
        println!(
            "merge/{label:<14} {rows:>9} source rows  {:>8.2} s  {:>9.0} rows/s  ins {} upd {} del {}  files {}  peak RSS {:.0} MiB",
            elapsed.as_secs_f64(),
            rows as f64 / elapsed.as_secs_f64(),
            o["rows_inserted"],
            o["rows_updated"],
            o["rows_deleted"],
            o["files"].as_str().unwrap_or("-"),
            peak_rss_mib()
        );
    };
    println!("target {target_rows} rows, source {source_rows} rows");

    // Target: ids 0, 2, 4, … so half of the source (all ids < 2 × target) matches.
    sql(format!(
        "CREATE TABLE silver.target AS SELECT v * 2 AS id, 'name-' || CAST(v AS STRING) AS name, \
         CAST(v % 1000 AS DOUBLE) AS amount FROM (SELECT unnest(range(0, {target_rows})) AS v)"
    ))
    .await;
    // Even ids exist in the target, odd ones are new: half updates, half inserts.
    let stride = ((2 * target_rows / source_rows.max(1)) & !1).max(2);
    sql(format!(
        "CREATE TABLE bronze.source AS SELECT v * {stride} + v % 2 AS id, 'new-' || CAST(v AS STRING) AS name, \
         CAST(v AS DOUBLE) AS amount FROM (SELECT unnest(range(0, {source_rows})) AS v)"
    ))
    .await;
    // Upserts through REST `…/merge` (default clauses: UPDATE SET * / INSERT *), which also
    // reports the files rewritten.
    let upsert = |source: &'static str| {
        let (client, token) = (client.clone(), token.clone());
        async move {
            let r = client
                .post(format!("http://{http}/api/v1/tables/silver/target/merge"))
                .bearer_auth(token)
                .json(&json!({"source": {"sql": source}, "keys": ["id"]}))
                .send()
                .await
                .unwrap();
            assert!(r.status().is_success());
            let o: Value = r.json().await.unwrap();
            json!([{"rows_inserted": o["inserted"], "rows_updated": o["updated"], "rows_deleted": o["deleted"],
                    "files": format!("{} removed / {} added", o["files_removed"], o["files_added"])}])
        }
    };
    let start = Instant::now();
    let body = upsert("bronze.source").await;
    timed("upsert", source_rows, body, start.elapsed());

    // A daily batch: 10 000 rows, keys spread over the whole target.
    let daily = 10_000.min(source_rows);
    let daily_stride = ((2 * target_rows / daily) & !1).max(2);
    sql(format!(
        "CREATE TABLE bronze.daily AS SELECT v * {daily_stride} + v % 2 AS id, 'day-' || CAST(v AS STRING) AS name, \
         CAST(v AS DOUBLE) AS amount FROM (SELECT unnest(range(0, {daily})) AS v)"
    ))
    .await;
    let start = Instant::now();
    let body = upsert("bronze.daily").await;
    timed("upsert-daily", daily, body, start.elapsed());

    // SCD2: a dimension with one current row per key; the source changes 10% of them.
    sql("CREATE TABLE gold.dim (id BIGINT, name STRING, valid_from TIMESTAMP, valid_to TIMESTAMP, is_current BOOLEAN)".into())
        .await;
    sql(format!(
        "INSERT INTO gold.dim SELECT v, 'name-' || CAST(v AS STRING), TIMESTAMP '2026-01-01T00:00:00Z', NULL, true \
         FROM (SELECT unnest(range(0, {target_rows})) AS v)"
    ))
    .await;
    sql(format!(
        "CREATE TABLE bronze.dim_src AS SELECT v AS id, \
         CASE WHEN v % 10 = 0 THEN 'changed-' || CAST(v AS STRING) ELSE 'name-' || CAST(v AS STRING) END AS name \
         FROM (SELECT unnest(range(0, {source_rows})) AS v)"
    ))
    .await;
    let start = Instant::now();
    let body = sql(
        "CALL scd2(target => 'gold.dim', source => 'bronze.dim_src', keys => 'id')".to_string(),
    )
    .await;
    timed("scd2", source_rows, body, start.elapsed());
}
