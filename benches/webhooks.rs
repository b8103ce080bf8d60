//! Webhook throughput: signed deliveries per second the server accepts with group commit,
//! and each delivery's latency to its 2xx (which waits for the commit holding it).
//!
//! The real `strata` binary as its own process; `STRATA_BENCH_CLIENTS` senders (default
//! 512, each on its own keep-alive connection) post GitHub-signed ~300-byte JSON bodies,
//! each unique, for `STRATA_BENCH_SECS` (default 10) after a 2 s warm-up. Reported:
//! accepted deliveries/s, p50/p99/max latency, commits and deliveries per commit (from the
//! server's metrics), and that the table holds exactly the accepted deliveries.
//!
//! ```sh
//! cargo bench --bench webhooks                         # release build
//! STRATA_BENCH_BINARY=/path/to/strata cargo bench --bench webhooks
//! ```

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    missing_debug_implementations
)]

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use hmac::{Hmac, Mac};
use serde_json::{Value, json};
use sha2::Sha256;

use common::{ServerProcess, block_on, env_u64};

const SECRET: &str = "bench webhook secret";

fn sign(body: &str) -> String {
    let mut m = Hmac::<Sha256>::new_from_slice(SECRET.as_bytes()).unwrap();
    m.update(body.as_bytes());
    format!("sha256={}", hex::encode(m.finalize().into_bytes()))
}

fn metric(text: &str, prefix: &str) -> f64 {
    text.lines()
        .filter(|l| l.starts_with(prefix))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

fn main() {
    let clients = env_u64("STRATA_BENCH_CLIENTS", 512) as usize;
    let secs = env_u64("STRATA_BENCH_SECS", 10);
    let server = ServerProcess::spawn(&[
        ("BENCH_WEBHOOK_SECRET", SECRET.to_string()),
        (
            "STRATA__CONNECTORS__SECRETS",
            r#"[{name = "gh", env = "BENCH_WEBHOOK_SECRET"}]"#.to_string(),
        ),
        (
            "STRATA__PIPELINES__PRINCIPALS",
            r#"[{name = "ingest", roles = ["ingest"]}]"#.to_string(),
        ),
        (
            "STRATA__ACCESS__GRANTS",
            r#"[{role = "ingest", privilege = "INSERT", on = "bronze"}]"#.to_string(),
        ),
    ]);
    let admin = server.token("root", "admin");
    let http = server.http.clone();
    block_on(async move {
        let client = reqwest::Client::builder()
            .pool_max_idle_per_host(clients)
            .build()
            .unwrap();
        let r = client
            .put(format!("http://{http}/api/v1/webhooks/gh"))
            .bearer_auth(&admin)
            .json(
                &json!({"table": "bronze.gh_events", "scheme": "github", "secrets": ["gh"],
                          "run_as": "ingest", "headers": ["x-github-event"]}),
            )
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200, "{}", r.text().await.unwrap());

        let measuring = Arc::new(AtomicBool::new(false));
        let stop = Arc::new(AtomicBool::new(false));
        let (accepted, failed) = (Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)));
        let seq = Arc::new(AtomicU64::new(0));
        let mut tasks = Vec::new();
        for _ in 0..clients {
            let (client, http) = (client.clone(), http.clone());
            let (measuring, stop, accepted, failed, seq) = (
                Arc::clone(&measuring),
                Arc::clone(&stop),
                Arc::clone(&accepted),
                Arc::clone(&failed),
                Arc::clone(&seq),
            );
            tasks.push(tokio::spawn(async move {
                let mut latencies = Vec::new();
                while !stop.load(Ordering::Relaxed) {
                    let n = seq.fetch_add(1, Ordering::Relaxed);
                    let body = json!({"action": "opened", "number": n,
                        "repository": {"full_name": "acme/strata", "id": 1296269},
                        "sender": {"login": "octocat", "id": 583231},
                        "pull_request": {"title": "Add webhooks", "state": "open", "additions": n % 97}})
                    .to_string();
                    let started = Instant::now();
                    let r = client
                        .post(format!("http://{http}/api/v1/ingest/webhooks/gh"))
                        .header("x-hub-signature-256", sign(&body))
                        .header("x-github-event", "pull_request")
                        .header("content-type", "application/json")
                        .body(body)
                        .send()
                        .await;
                    let ok = matches!(&r, Ok(r) if r.status() == 200);
                    if let Ok(r) = r {
                        let _ = r.bytes().await;
                    }
                    if measuring.load(Ordering::Relaxed) {
                        if ok {
                            accepted.fetch_add(1, Ordering::Relaxed);
                            latencies.push(started.elapsed());
                        } else {
                            failed.fetch_add(1, Ordering::Relaxed);
                        }
                    }
                }
                latencies
            }));
        }
        tokio::time::sleep(Duration::from_secs(2)).await;
        let metrics = |client: reqwest::Client, http: String, admin: String| async move {
            let text = client
                .get(format!("http://{http}/metrics"))
                .bearer_auth(&admin)
                .send()
                .await
                .unwrap()
                .text()
                .await
                .unwrap();
            (
                metric(&text, "strata_webhook_commits_total{webhook=\"gh\"}"),
                metric(
                    &text,
                    "strata_webhook_committed_deliveries_total{webhook=\"gh\"}",
                ),
            )
        };
        let (commits0, committed0) = metrics(client.clone(), http.clone(), admin.clone()).await;
        measuring.store(true, Ordering::Relaxed);
        let started = Instant::now();
        tokio::time::sleep(Duration::from_secs(secs)).await;
        measuring.store(false, Ordering::Relaxed);
        let elapsed = started.elapsed();
        let (commits1, committed1) = metrics(client.clone(), http.clone(), admin.clone()).await;
        stop.store(true, Ordering::Relaxed);
        let mut latencies: Vec<Duration> = Vec::new();
        for t in tasks {
            latencies.extend(t.await.unwrap());
        }
        latencies.sort();
        let q = |p: f64| latencies[((latencies.len() as f64 - 1.0) * p) as usize];
        let accepted = accepted.load(Ordering::Relaxed);
        let commits = commits1 - commits0;
        println!(
            "# Webhook deliveries ({clients} senders, {secs} s, GitHub-signed JSON, group commit 200 ms)"
        );
        println!();
        println!(
            "- accepted {:.0} deliveries/s ({accepted} in {:.1} s), refused or failed {}",
            accepted as f64 / elapsed.as_secs_f64(),
            elapsed.as_secs_f64(),
            failed.load(Ordering::Relaxed)
        );
        println!(
            "- latency to the 2xx: p50 {:.0} ms, p99 {:.0} ms, max {:.0} ms",
            q(0.5).as_secs_f64() * 1e3,
            q(0.99).as_secs_f64() * 1e3,
            q(1.0).as_secs_f64() * 1e3
        );
        println!(
            "- {commits:.0} commits, {:.0} deliveries per commit",
            (committed1 - committed0) / commits.max(1.0)
        );
        let r = client
            .post(format!("http://{http}/api/v1/query"))
            .bearer_auth(&admin)
            .json(&json!({"sql": "SELECT count(*) AS n, count(DISTINCT _delivery_id) AS ids FROM bronze.gh_events"}))
            .send()
            .await
            .unwrap();
        let rows: Value = r.json().await.unwrap();
        println!("- table after the run: {rows} (every 2xx is a row, no id twice)");
        assert_eq!(rows[0]["n"], rows[0]["ids"]);
    });
}
