//! The Python client suite (`tests/python`): pytest with the ADBC Flight SQL driver, pandas
//! and polars, against this real server. The venv is created on first use (see
//! `harness::python`).

use std::process::Command;

use crate::harness::{TestServer, python};

/// Runs `command` off the async runtime; fails the test with its output unless it succeeds.
async fn run(mut command: Command, what: &'static str) -> String {
    let out = tokio::task::spawn_blocking(move || command.output().unwrap())
        .await
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{what}:\n{stdout}\n{stderr}");
    stdout
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn python_adbc_clients() {
    let python = tokio::task::spawn_blocking(python).await.unwrap();
    let s = TestServer::start().await;
    s.seed_people("gold.people", 20).await;
    s.create_people("silver.hidden").await;
    s.seed_people("silver.external", 3).await;
    let warehouse = s.root.join("data/warehouse");
    let suite = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/python");
    let uri = format!("grpc://{}", s.flight);
    let admin = s.admin.clone();
    let analyst = s.token("ann", &["analyst"]);
    let mut command = Command::new(python);
    command
        .args(["-m", "pytest", "-q", "-p", "no:cacheprovider"])
        .arg(&suite)
        .env("STRATA_FLIGHT_URI", uri)
        .env("STRATA_ADMIN_TOKEN", admin)
        .env("STRATA_ANALYST_TOKEN", analyst)
        .env("STRATA_WAREHOUSE", warehouse);
    let stdout = run(command, "pytest failed").await;
    println!("{stdout}");
}

/// TPC-DS at SF 0.01 (`tests/python/tpcds_check.py`): the decimal aggregate that broke
/// DoGet and q16, q72, q94, q95 over Flight SQL, each compared with DuckDB's answer.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn python_tpcds_small_scale() {
    let python = tokio::task::spawn_blocking(python).await.unwrap();
    let s = TestServer::start().await;
    let check =
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/python/tpcds_check.py");
    let uri = format!("grpc://{}", s.flight);
    let admin = s.admin.clone();
    let mut command = Command::new(python);
    command
        .args(["-m", "pytest", "-q", "-p", "no:cacheprovider"])
        .arg(&check)
        .env("STRATA_FLIGHT_URI", uri)
        .env("STRATA_ADMIN_TOKEN", admin);
    let stdout = run(command, "pytest failed").await;
    println!("{stdout}");
}

/// schemathesis against the served OpenAPI document with an admin token, on a throwaway
/// warehouse: every operation, a fixed seed and at most 20 examples each, so it cannot
/// flake. No response may be a server error or contradict the document (status, content
/// type, headers, body schema); requests the document calls invalid must be refused; the
/// token must be required. `positive_data_acceptance` is left out: a schema cannot say which
/// SQL text or which pair of optional fields is valid, and such requests get a documented
/// 400 that names the problem.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn python_schemathesis_rest_api() {
    let python = tokio::task::spawn_blocking(python).await.unwrap();
    let s = TestServer::start().await;
    s.seed_people("gold.people", 5).await;
    let (status, doc) = s.get(&s.admin.clone(), "/api/v1/openapi.json").await;
    assert_eq!(status, 200);
    let schema = s.root.join("openapi.json");
    std::fs::write(&schema, doc.to_string()).unwrap();
    let cli = python.with_file_name("schemathesis");
    let base = format!("http://{}", s.http);
    let auth = format!("Authorization: Bearer {}", s.admin);
    let mut command = Command::new(cli);
    command
        // Its cache (`.schemathesis/`) goes to the throwaway root, not the checkout.
        .current_dir(&s.root)
        .arg("run")
        .arg(&schema)
        .args(["--url", &base, "-H", &auth])
        .args(["--seed", "1", "--max-examples", "20"])
        .args([
            "--checks",
            "all",
            "--exclude-checks",
            "positive_data_acceptance",
        ])
        .args(["--no-color"]);
    run(command, "schemathesis found problems").await;
}
