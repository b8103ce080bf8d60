//! Connector throughput: records and pages per second a pull connector reads from a local
//! test API into a table, checkpoints included.
//!
//! The real `strata` binary as its own process; the test API runs in this process on
//! loopback and answers `STRATA_BENCH_PAGES` pages (default 2000) of
//! `STRATA_BENCH_PAGE_SIZE` records (default 100, ~150 bytes of JSON each), page-number
//! pagination, a checkpoint every 50 pages. Reported: the run's wall time, records/s,
//! pages/s, checkpoints, and that the table holds every record once.
//!
//! ```sh
//! cargo bench --bench connectors                         # release build
//! STRATA_BENCH_BINARY=/path/to/strata cargo bench --bench connectors
//! ```

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    missing_debug_implementations
)]

mod common;

use std::collections::BTreeMap;
use std::time::Instant;

use axum::extract::{Query, State};
use serde_json::{Value, json};

use common::{ServerProcess, block_on, env_u64};

async fn page(
    State((pages, size)): State<(u64, u64)>,
    Query(q): Query<BTreeMap<String, String>>,
) -> axum::Json<Value> {
    let n: u64 = q.get("page").and_then(|p| p.parse().ok()).unwrap_or(1);
    let rows: Vec<Value> = if n <= pages {
        (0..size)
            .map(|i| {
                let id = n * size + i;
                json!({"id": id, "email": format!("user{id}@example.com"), "plan": "pro",
                       "seats": id % 50, "updated_at": "2026-12-01T10:00:00Z"})
            })
            .collect()
    } else {
        Vec::new()
    };
    axum::Json(json!({"data": rows}))
}

fn main() {
    let pages = env_u64("STRATA_BENCH_PAGES", 2000);
    let size = env_u64("STRATA_BENCH_PAGE_SIZE", 100);
    let server = ServerProcess::spawn(&[
        (
            "STRATA__CONNECTORS__ALLOWED_HOSTS",
            r#"["127.0.0.1"]"#.to_string(),
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
        let app = axum::Router::new()
            .route("/contacts", axum::routing::get(page))
            .with_state((pages, size));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let api = listener.local_addr().unwrap();
        tokio::spawn(async move { axum::serve(listener, app).await });
        let definition = format!(
            r#"
table = "bronze.bench_contacts"
run_as = "ingest"
checkpoint_pages = 50
max_pages = 1000000
[request]
url = "http://{api}/contacts"
[pagination]
type = "page"
size = {size}
[records]
path = "$.data[*]"
fields = [
  {{ name = "id", type = "bigint", nullable = false }},
  {{ name = "email" }},
  {{ name = "plan" }},
  {{ name = "seats", type = "int" }},
  {{ name = "updated_at", type = "timestamp" }},
]
"#
        );
        let client = reqwest::Client::new();
        let r = client
            .put(format!("http://{http}/api/v1/connectors/bench"))
            .bearer_auth(&admin)
            .body(definition)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200, "{}", r.text().await.unwrap());
        let started = Instant::now();
        let r = client
            .post(format!(
                "http://{http}/api/v1/connectors/bench/runs?wait=true"
            ))
            .bearer_auth(&admin)
            .send()
            .await
            .unwrap();
        let elapsed = started.elapsed().as_secs_f64();
        let report: Value = r.json().await.unwrap();
        assert_eq!(report["status"], "succeeded", "{report}");
        let records = report["records"].as_f64().unwrap();
        let fetched = report["pages"].as_f64().unwrap();
        println!("# Connector sync ({pages} pages of {size} records from a loopback API)");
        println!();
        println!(
            "- {records:.0} records, {fetched:.0} pages in {elapsed:.2} s: {:.0} records/s, {:.0} pages/s, {} checkpoints",
            records / elapsed,
            fetched / elapsed,
            report["checkpoints"]
        );
        let r = client
            .post(format!("http://{http}/api/v1/query"))
            .bearer_auth(&admin)
            .json(&json!({"sql": "SELECT count(*) AS n, count(DISTINCT id) AS ids FROM bronze.bench_contacts"}))
            .send()
            .await
            .unwrap();
        let rows: Value = r.json().await.unwrap();
        println!("- table after the run: {rows}");
        assert_eq!(rows[0]["n"], rows[0]["ids"]);
        assert_eq!(rows[0]["n"].as_f64(), Some(records));
    });
}
