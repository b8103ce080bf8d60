//! S3 mode against a real S3-compatible server process (moto), never a mock.

use serde_json::json;

use crate::harness::{Moto, TestServer};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn s3_warehouse_lifecycle_survives_restart() {
    let moto = Moto::start().await;
    let dir = tempfile::tempdir().unwrap();
    // Server::build runs the conditional-put preflight against moto: it must pass.
    let s = TestServer::start_with(moto.config(dir.path(), "wh")).await;
    let admin = s.admin.clone();
    s.seed_people("gold.people", 20).await;
    let (status, _) = s
        .upload(
            &admin,
            "gold.people",
            "text/csv",
            b"id,name\n21,x\n".to_vec(),
            "?idempotency_key=k1",
        )
        .await;
    assert_eq!(status, 200);
    let (_, again) = s
        .upload(
            &admin,
            "gold.people",
            "text/csv",
            b"id,name\n21,x\n".to_vec(),
            "?idempotency_key=k1",
        )
        .await;
    assert_eq!(again["duplicate"], true);
    assert_eq!(s.count("gold.people").await, 21);
    let body = s
        .sql_ok("SELECT count(*) AS n FROM gold.people VERSION AS OF 1")
        .await;
    assert_eq!(body[0]["n"], 20);
    s.sql_ok("CREATE TABLE silver.summary AS SELECT count(*) AS n FROM gold.people")
        .await;
    let (status, body) = s
        .put_json(
            &admin,
            "/api/v1/tables/gold/people/policies",
            json!({"row_filters": [{"roles": ["analyst"], "predicate": "id <= 5"}]}),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    let (_, history) = s.get(&admin, "/api/v1/tables/gold/people/history").await;
    assert_eq!(history["history"].as_array().unwrap().len(), 3);
    s.stop().await;

    // A new server on the same bucket sees everything, policies included.
    let s = TestServer::start_with(moto.config(dir.path(), "wh")).await;
    let (_, info) = s.get(&s.admin.clone(), "/api/v1/tables/gold/people").await;
    assert_eq!(
        (info["version"].as_u64(), info["file_count"].as_u64()),
        (Some(2), Some(2))
    );
    // The row filter set above applies to everyone but the bypass role (admins included).
    let root = s.token_with("root", &["admin", "policy_bypass"], json!({}));
    let (_, body) = s.sql(&root, "SELECT count(*) AS n FROM gold.people").await;
    assert_eq!(body[0]["n"], 21);
    assert_eq!(
        s.sql(&s.admin.clone(), "SELECT count(*) AS n FROM gold.people")
            .await
            .1[0]["n"],
        0
    );

    let analyst = s.token("ann", &["analyst"]);
    let (_, body) = s
        .sql(&analyst, "SELECT count(*) AS n FROM gold.people")
        .await;
    assert_eq!(body[0]["n"], 5);
    let (_, tables) = s.get(&s.admin.clone(), "/api/v1/tables").await;
    assert_eq!(tables["tables"].as_array().unwrap().len(), 2);
    // Dropping works on S3 too.
    let r = s
        .client
        .delete(s.url("/api/v1/tables/silver/summary"))
        .bearer_auth(&s.admin)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 204);
    assert_eq!(
        s.sql(&s.admin.clone(), "SELECT * FROM silver.summary")
            .await
            .0,
        404
    );
    s.stop().await;
}
