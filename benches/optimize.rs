//! OPTIMIZE throughput and what compaction buys queries, through the real server (REST, in
//! process, result cache off).
//!
//! `cargo bench --bench optimize` appends `STRATA_BENCH_FILES` batches (default 200, one
//! file each) of `STRATA_BENCH_ROWS_PER_FILE` rows (default 10 000), times two queries
//! (median of 5: a filtered aggregate over every row and a point lookup), runs OPTIMIZE and
//! reports its MB/s (bytes read + written over wall time), then times the queries again and
//! prints the speed-ups.

#![allow(clippy::expect_used, clippy::unwrap_used)]

use std::time::{Duration, Instant};

use serde_json::{Value, json};

mod common;

fn main() {
    common::block_on(run());
}

const QUERIES: [(&str, &str); 2] = [
    (
        "aggregate",
        "SELECT k % 10 AS g, count(*) AS n, sum(amount) AS s FROM gold.facts WHERE amount > 100 GROUP BY 1",
    ),
    ("point", "SELECT * FROM gold.facts WHERE id = 123457"),
];

async fn run() {
    let files = common::env_u64("STRATA_BENCH_FILES", 200);
    let rows_per_file = common::env_u64("STRATA_BENCH_ROWS_PER_FILE", 10_000);
    let server = common::BenchServer::start(|cfg| cfg.cache.enabled = false).await;
    let http = server.http;
    let token = server.token(&["admin"], json!({}));
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(3600))
        .build()
        .unwrap();
    let post = |path: &'static str, body: Value| {
        let (client, token) = (client.clone(), token.clone());
        async move {
            let r = client
                .post(format!("http://{http}{path}"))
                .bearer_auth(token)
                .json(&body)
                .send()
                .await
                .unwrap();
            let status = r.status();
            let body: Value = r.json().await.unwrap();
            assert!(status.is_success(), "{path}: {body}");
            body
        }
    };
    let sql = |sql: String| post("/api/v1/query", json!({ "sql": sql }));
    sql("CREATE TABLE gold.facts (id BIGINT, k BIGINT, amount DOUBLE, note STRING)".into()).await;
    let started = Instant::now();
    for f in 0..files {
        let base = f * rows_per_file;
        sql(format!(
            "INSERT INTO gold.facts SELECT v AS id, v * 7919 % 1000003 AS k, CAST(v % 1000 AS DOUBLE) AS amount, \
             'note-' || CAST(v AS STRING) AS note FROM (SELECT unnest(range({base}, {})) AS v)",
            base + rows_per_file
        ))
        .await;
    }
    println!(
        "optimize/load      {files} appends × {rows_per_file} rows in {:.1} s",
        started.elapsed().as_secs_f64()
    );
    let time_queries = || async {
        let mut out = Vec::new();
        for (label, q) in QUERIES {
            let mut samples = Vec::new();
            for _ in 0..5 {
                let t = Instant::now();
                sql(q.to_string()).await;
                samples.push(t.elapsed().as_secs_f64());
            }
            samples.sort_by(f64::total_cmp);
            out.push((label, samples[2]));
        }
        out
    };
    let before = time_queries().await;

    let t = Instant::now();
    let o = post("/api/v1/tables/gold/facts/optimize", json!({})).await;
    let secs = t.elapsed().as_secs_f64();
    let read = o["bytes_removed"].as_f64().unwrap_or(0.0);
    let written = o["bytes_added"].as_f64().unwrap_or(0.0);
    println!(
        "optimize/compact   {} files → {} in {secs:.2} s; read {:.1} MB, wrote {:.1} MB: {:.1} MB/s read, {:.1} MB/s read+write",
        o["files_removed"],
        o["files_added"],
        read / 1e6,
        written / 1e6,
        read / 1e6 / secs,
        (read + written) / 1e6 / secs
    );

    let after = time_queries().await;
    for ((label, b), (_, a)) in before.iter().zip(&after) {
        println!(
            "optimize/query     {label:<10} median {:.1} ms on {files} files → {:.1} ms compacted: {:.2}× faster",
            b * 1e3,
            a * 1e3,
            b / a
        );
    }
}
