//! Result-cache latency: a cache hit vs the uncached TPC-H-Q1-like aggregate, and vs a
//! trivial query, over REST and Flight SQL. `cargo bench --bench cache` prints p50/p99 over
//! 40 requests each; misses use a varying literal so every run plans and executes.

#![allow(clippy::expect_used, clippy::unwrap_used)]

use std::time::Instant;

use arrow_flight::sql::client::FlightSqlServiceClient;
use futures::TryStreamExt;
use serde_json::json;

const RUNS: usize = 40;

fn pct(mut v: Vec<f64>, p: f64) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    v[((v.len() - 1) as f64 * p).round() as usize]
}

mod common;

fn main() {
    common::block_on(run());
}

async fn run() {
    let server = common::BenchServer::start(|_| {}).await;
    let (http, flight) = (server.http, server.flight);
    let token = server.token(&["admin"], json!({}));
    let client = reqwest::Client::new();
    let rest = |sql: String| {
        let (client, token) = (client.clone(), token.clone());
        async move {
            let r = client
                .post(format!("http://{http}/api/v1/query"))
                .bearer_auth(token)
                .header("accept", "application/vnd.apache.arrow.stream")
                .json(&json!({"sql": sql}))
                .send()
                .await
                .unwrap();
            assert!(r.status().is_success());
            r.bytes().await.unwrap();
        }
    };
    rest("CREATE TABLE gold.lineitem AS SELECT v AS l_orderkey, CAST(v % 50 + 1 AS DOUBLE) AS l_quantity, \
          CAST(v % 1000 AS DOUBLE) * 1.5 AS l_extendedprice, CAST(v % 10 AS DOUBLE) / 100 AS l_discount, \
          CAST(v % 8 AS DOUBLE) / 100 AS l_tax, CASE v % 3 WHEN 0 THEN 'A' WHEN 1 THEN 'N' ELSE 'R' END AS l_returnflag, \
          CASE v % 2 WHEN 0 THEN 'F' ELSE 'O' END AS l_linestatus FROM (SELECT unnest(range(0, 1000000)) AS v)".into()).await;
    let q1 = |k: usize| {
        format!(
            "SELECT l_returnflag, l_linestatus, sum(l_quantity) AS sum_qty, sum(l_extendedprice) AS sum_base, \
             sum(l_extendedprice * (1 - l_discount)) AS sum_disc, sum(l_extendedprice * (1 - l_discount) * (1 + l_tax)) AS sum_charge, \
             avg(l_quantity) AS avg_qty, avg(l_discount) AS avg_disc, count(*) AS n FROM gold.lineitem \
             WHERE l_quantity < {} GROUP BY l_returnflag, l_linestatus ORDER BY l_returnflag, l_linestatus",
            1000 + k
        )
    };
    let mut fc = FlightSqlServiceClient::new(
        tonic::transport::Endpoint::from_shared(format!("http://{flight}"))
            .unwrap()
            .connect()
            .await
            .unwrap(),
    );
    fc.set_token(token.clone());
    // Warm the cached query on both front ends (the first run is a miss).
    rest(q1(0)).await;
    let info = fc.execute(q1(0), None).await.unwrap();
    let _: Vec<_> = fc
        .do_get(info.endpoint[0].ticket.clone().unwrap())
        .await
        .unwrap()
        .try_collect()
        .await
        .unwrap();
    let mut report = Vec::new();
    for (name, kind) in [
        ("uncached q1", 0),
        ("cache hit q1", 1),
        ("trivial (uncached)", 2),
    ] {
        let mut rest_ms = Vec::new();
        let mut flight_ms = Vec::new();
        for i in 0..RUNS {
            let sql = match kind {
                0 => q1(i + 1),
                1 => q1(0),
                _ => format!("SELECT {} AS x", i + 1_000_000),
            };
            let start = Instant::now();
            rest(sql.clone()).await;
            rest_ms.push(start.elapsed().as_secs_f64() * 1e3);
            let sql = match kind {
                0 => q1(i + 1000),
                1 => q1(0),
                _ => format!("SELECT {} AS x", i + 2_000_000),
            };
            let start = Instant::now();
            let info = fc.execute(sql, None).await.unwrap();
            let _: Vec<_> = fc
                .do_get(info.endpoint[0].ticket.clone().unwrap())
                .await
                .unwrap()
                .try_collect()
                .await
                .unwrap();
            flight_ms.push(start.elapsed().as_secs_f64() * 1e3);
        }
        report.push((
            name,
            pct(rest_ms.clone(), 0.5),
            pct(rest_ms, 0.99),
            pct(flight_ms.clone(), 0.5),
            pct(flight_ms, 0.99),
        ));
    }
    println!(
        "{:<20} {:>10} {:>10} {:>12} {:>12}",
        "query", "REST p50", "REST p99", "Flight p50", "Flight p99"
    );
    for (name, a, b, c, d) in &report {
        println!("{name:<20} {a:>8.2}ms {b:>8.2}ms {c:>10.2}ms {d:>10.2}ms");
    }
    let (u, h) = (&report[0], &report[1]);
    println!(
        "hit/uncached p50: REST {:.3}  Flight {:.3}  (target <= 0.02)",
        h.1 / u.1,
        h.3 / u.3
    );
    // A bare HTTP round trip on the same connection pool: what a REST cache hit costs on
    // top of the network and HTTP stack (target <= 3×).
    let mut bare_ms = Vec::new();
    for _ in 0..RUNS * 5 {
        let start = Instant::now();
        let r = client
            .get(format!("http://{http}/healthz"))
            .send()
            .await
            .unwrap();
        r.bytes().await.unwrap();
        bare_ms.push(start.elapsed().as_secs_f64() * 1e3);
    }
    let bare = pct(bare_ms, 0.5);
    println!(
        "bare HTTP round trip p50 {bare:.3}ms; REST cache hit ÷ bare {:.2} (target <= 3)",
        h.1 / bare
    );
}
