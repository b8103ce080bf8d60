//! OPTIMIZE, VACUUM and RESTORE through SQL and REST.

use serde_json::json;

use crate::harness::{TestServer, message, test_config};

async fn files(s: &TestServer, table: &str) -> u64 {
    let (_, info) = s
        .get(
            &s.admin.clone(),
            &format!("/api/v1/tables/{}", table.replace('.', "/")),
        )
        .await;
    info["file_count"].as_u64().unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn optimize_compacts_200_appends_and_vacuum_guards_time_travel() {
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = test_config(dir.path());
    cfg.storage.allow_short_vacuum_retention = true;
    let s = TestServer::start_with(cfg).await;
    let admin = s.admin.clone();
    s.create_people("bronze.events").await;
    for i in 0..200 {
        let (status, body) = s
            .upload(
                &admin,
                "bronze.events",
                "application/json",
                format!(r#"[{{"id":{i},"name":"e{i}","amount":{i}}}]"#).into_bytes(),
                "",
            )
            .await;
        assert_eq!(status, 200, "{body}");
    }
    assert_eq!(files(&s, "bronze.events").await, 200);
    let before = s
        .sql_ok("SELECT count(*) AS n, sum(id) AS s FROM bronze.events")
        .await;
    let body = s.sql_ok("OPTIMIZE bronze.events").await;
    assert_eq!(body[0]["operation"], "OPTIMIZE");
    assert_eq!(body[0]["rows_affected"], 200, "files removed: {body}");
    assert_eq!(files(&s, "bronze.events").await, 1);
    assert_eq!(
        s.sql_ok("SELECT count(*) AS n, sum(id) AS s FROM bronze.events")
            .await,
        before
    );
    // Time travel to before the compaction still reads the old files …
    let old = s
        .sql_ok("SELECT count(*) AS n FROM bronze.events VERSION AS OF 100")
        .await;
    assert_eq!(old[0]["n"], 100);
    // … and VACUUM keeps them by default (7 days), a dry run deletes nothing.
    let (status, body) = s
        .post_json(
            &admin,
            "/api/v1/tables/bronze/events/vacuum",
            json!({"dry_run": true}),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["files"].as_array().unwrap().len(), 0);
    // With the short retention explicitly allowed, the 200 old files go …
    let (status, body) = s
        .post_json(
            &admin,
            "/api/v1/tables/bronze/events/vacuum",
            json!({"retain_hours": 0, "dry_run": true}),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["files"].as_array().unwrap().len(), 200);
    let body = s.sql_ok("VACUUM bronze.events RETAIN 0 HOURS").await;
    assert_eq!(body[0]["rows_affected"], 200);
    assert_eq!(s.count("bronze.events").await, 200);
    // … and time travel / RESTORE to a vacuumed version fail clearly.
    let (status, body) = s
        .sql(&admin, "RESTORE TABLE bronze.events TO VERSION AS OF 100")
        .await;
    assert_eq!(status, 409, "{body}");
    assert!(message(&body).contains("VACUUM"), "{body}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn vacuum_refuses_short_retention_and_restore_undoes_a_bad_overwrite() {
    let s = TestServer::start().await;
    let admin = s.admin.clone();
    s.seed_people("gold.people", 10).await;
    let (status, body) = s.sql(&admin, "VACUUM gold.people RETAIN 1 HOURS").await;
    assert_eq!(status, 400, "{body}");
    assert!(
        message(&body).contains("allow_short_vacuum_retention"),
        "{body}"
    );
    let good = s.version("gold.people").await;
    // A bad load replaces everything.
    let (status, _) = s
        .upload(
            &admin,
            "gold.people",
            "text/csv",
            b"id,name\n99,oops\n".to_vec(),
            "?mode=overwrite",
        )
        .await;
    assert_eq!(status, 200);
    assert_eq!(s.count("gold.people").await, 1);
    let body = s
        .sql_ok(&format!(
            "RESTORE TABLE gold.people TO VERSION AS OF {good}"
        ))
        .await;
    assert_eq!(body[0]["operation"], "RESTORE");
    assert_eq!(s.count("gold.people").await, 10);
    let restored = s.version("gold.people").await;
    assert_eq!(restored, good + 2, "RESTORE is one new commit");
    // The restore is itself undoable (REST this time).
    let (status, body) = s
        .post_json(
            &admin,
            "/api/v1/tables/gold/people/restore",
            json!({"version": good + 1}),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["restored_version"], good + 1);
    assert_eq!(s.count("gold.people").await, 1);
    // Z-order and syntax errors.
    let (status, body) = s
        .post_json(
            &admin,
            "/api/v1/tables/gold/people/optimize",
            json!({"zorder": ["id", "name"]}),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    for (sql, code) in [
        ("OPTIMIZE gold.people ZORDER BY (nope)", 400),
        ("VACUUM gold.people RETAIN many HOURS", 400),
        ("RESTORE TABLE gold.people TO VERSION AS OF 999", 404),
        ("RESTORE gold.missing TO VERSION AS OF 0", 404),
    ] {
        let (status, body) = s.sql(&admin, sql).await;
        assert_eq!(status, code, "{sql}: {body}");
    }
    // MANAGE only: an analyst (SELECT on gold) may not.
    let ann = s.token("ann", &["analyst"]);
    let (status, _) = s.sql(&ann, "OPTIMIZE gold.people").await;
    assert_eq!(status, 403);
}

/// OPTIMIZE … WHERE compacts only the matching partitions, and appends that commit while an
/// OPTIMIZE runs neither fail nor get lost.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn optimize_where_and_concurrent_appends() {
    let s = std::sync::Arc::new(TestServer::start().await);
    let admin = s.admin.clone();
    s.sql_ok("CREATE TABLE bronze.ev (id BIGINT, region STRING) PARTITIONED BY (region)")
        .await;
    for i in 0..20 {
        for region in ["eu", "us"] {
            s.sql_ok(&format!("INSERT INTO bronze.ev VALUES ({i}, '{region}')"))
                .await;
        }
    }
    assert_eq!(files(&s, "bronze.ev").await, 40);
    let body = s.sql_ok("OPTIMIZE bronze.ev WHERE region = 'eu'").await;
    assert_eq!(body[0]["rows_affected"], 20, "{body}");
    assert_eq!(files(&s, "bronze.ev").await, 21);
    let (status, body) = s
        .post_json(
            &admin,
            "/api/v1/tables/bronze/ev/optimize",
            json!({"where": "region IN ('us', 'apac')"}),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["files_removed"], 20);
    assert_eq!(files(&s, "bronze.ev").await, 2);
    for (sql, needle) in [
        ("OPTIMIZE bronze.ev WHERE id = 1", "partition columns only"),
        (
            "OPTIMIZE bronze.ev WHERE region LIKE 'e%'",
            "partition-column",
        ),
        ("OPTIMIZE bronze.ev WHERE", "OPTIMIZE"),
    ] {
        let (status, body) = s.sql(&admin, sql).await;
        assert_eq!(status, 400, "{sql}: {body}");
        assert!(message(&body).contains(needle), "{sql}: {body}");
    }

    // 4 writers × 25 appends of one row each against back-to-back OPTIMIZEs.
    for i in 0..100 {
        s.sql_ok(&format!(
            "INSERT INTO bronze.ev VALUES ({}, 'eu')",
            1000 + i
        ))
        .await;
    }
    let before = s.count("bronze.ev").await;
    let writers: Vec<_> = (0..4)
        .map(|w| {
            let s = std::sync::Arc::clone(&s);
            tokio::spawn(async move {
                for i in 0..25 {
                    let id = 10_000 + w * 100 + i;
                    let (status, body) = s
                        .sql(
                            &s.admin.clone(),
                            &format!("INSERT INTO bronze.ev VALUES ({id}, 'eu')"),
                        )
                        .await;
                    assert_eq!(status, 200, "append {id} during OPTIMIZE: {body}");
                }
            })
        })
        .collect();
    let mut optimized = 0;
    while !writers.iter().all(|w| w.is_finished()) {
        let (status, body) = s.sql(&admin, "OPTIMIZE bronze.ev").await;
        assert!(
            status == 200 || status == 409,
            "OPTIMIZE during appends: {status} {body}"
        );
        optimized += u64::from(status == 200);
    }
    for w in writers {
        w.await.unwrap();
    }
    assert!(optimized > 0, "no OPTIMIZE committed during the appends");
    assert_eq!(s.count("bronze.ev").await, before + 100);
    let distinct = s
        .sql_ok("SELECT count(DISTINCT id) AS n FROM bronze.ev WHERE id >= 10000")
        .await;
    assert_eq!(distinct[0]["n"], 100);
}
