//! Row-level security overhead, measured end to end over REST on one server.
//!
//! `cargo bench --bench policy` builds a 2M-row table partitioned by region, then times
//! (median of 7 runs) the same aggregate
//! - without a policy,
//! - with a policy that evaluates a predicate keeping every row (target: ≤ 5% overhead),
//! - with a selective policy (`region = 'eu'`, a quarter of the rows) against the
//!   unfiltered query (target: at least as fast, since the policy predicate prunes files).

#![allow(clippy::expect_used, clippy::unwrap_used)]

use std::time::Instant;

use serde_json::json;
use strata::config::GrantConfig;

const RUNS: usize = 7;

mod common;

fn main() {
    common::block_on(run());
}

async fn run() {
    let server = common::BenchServer::start(|cfg| {
        cfg.access.grants = vec![GrantConfig {
            role: "analyst".into(),
            privilege: "SELECT".into(),
            on: "gold".into(),
        }];
    })
    .await;
    let http = server.http;
    let mint = |roles: &[&str], claims: serde_json::Value| server.token(roles, claims);
    let admin = mint(&["admin"], json!({}));
    let root = mint(&["admin", "policy_bypass"], json!({}));
    let analyst = mint(&["analyst"], json!({"region": "eu"}));
    let client = reqwest::Client::new();
    let url = format!("http://{http}/api/v1/query");
    let sql = |token: String, sql: String| {
        let client = client.clone();
        let url = url.clone();
        async move {
            let r = client
                .post(&url)
                .bearer_auth(token)
                .json(&json!({"sql": sql}))
                .send()
                .await
                .unwrap();
            assert!(r.status().is_success(), "{}", r.text().await.unwrap());
            r.bytes().await.unwrap()
        }
    };
    sql(
        admin.clone(),
        "CREATE TABLE gold.facts PARTITIONED BY (region) AS SELECT v AS id, \
         CASE v % 4 WHEN 0 THEN 'eu' WHEN 1 THEN 'us' WHEN 2 THEN 'apac' ELSE 'latam' END AS region, \
         CAST(v % 1000 AS DOUBLE) AS amount FROM (SELECT unnest(range(0, 2000000)) AS v)"
            .into(),
    )
    .await;
    let put = |body: serde_json::Value| {
        let client = client.clone();
        let admin = admin.clone();
        async move {
            let r = client
                .put(format!("http://{http}/api/v1/tables/gold/facts/policies"))
                .bearer_auth(admin)
                .json(&body)
                .send()
                .await
                .unwrap();
            assert!(r.status().is_success(), "{}", r.text().await.unwrap());
        }
    };
    let query =
        "SELECT count(*), sum(amount), avg(amount) FROM gold.facts WHERE amount >= 0".to_string();
    let time = |token: String, sql_text: String| {
        let sql = &sql;
        async move {
            sql(token.clone(), sql_text.clone()).await; // warm up
            let mut samples: Vec<f64> = Vec::new();
            for _ in 0..RUNS {
                let start = Instant::now();
                sql(token.clone(), sql_text.clone()).await;
                samples.push(start.elapsed().as_secs_f64() * 1e3);
            }
            samples.sort_by(|a, b| a.total_cmp(b));
            samples[RUNS / 2]
        }
    };

    let baseline = time(root.clone(), query.clone()).await;
    put(json!({"row_filters": [{"roles": ["analyst"], "predicate": "amount >= 0"}]})).await;
    let keep_all = time(analyst.clone(), query.clone()).await;
    put(json!({"row_filters": [{"roles": ["analyst"], "predicate": "region = current_claim('region')"}]})).await;
    let selective = time(analyst.clone(), query.clone()).await;
    // STRATA_BENCH_EXPLAIN=1 prints the restricted plan (PolicyExec shows its subtree).
    if std::env::var("STRATA_BENCH_EXPLAIN").is_ok() {
        let root_mgr = mint(
            &["admin", "policy_bypass", "analyst"],
            json!({"region": "eu"}),
        );
        let _ = root_mgr;
        let plain = sql(
            root.clone(),
            "EXPLAIN ANALYZE SELECT count(*), sum(amount) FROM gold.facts WHERE region = 'eu'"
                .into(),
        )
        .await;
        println!("{}", String::from_utf8_lossy(&plain));
        let manage = mint(&["admin", "analyst"], json!({"region": "eu"}));
        let pol = sql(manage, format!("EXPLAIN {query}")).await;
        println!("{}", String::from_utf8_lossy(&pol));
    }
    println!("policy/no-policy           median {baseline:>8.1} ms");
    println!(
        "policy/keeps-every-row     median {keep_all:>8.1} ms  ratio {:.3} (target <= 1.05)",
        keep_all / baseline
    );
    println!(
        "policy/selective-pruning   median {selective:>8.1} ms  ratio {:.3} (target <= 1.00)",
        selective / baseline
    );
}
