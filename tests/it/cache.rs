//! The result cache: hits, invalidation by commits and policies, isolation between
//! principals, failed streams, the byte bound, ETag/304, and Flight.

use serde_json::{Value, json};

use crate::harness::{Backend, TestServer, test_config};
use crate::rls::{ann, sales_server};

crate::on_both_backends!(repeat_hits_commit_misses_and_304);
crate::on_both_backends!(flight_tickets_replay_hits_only_while_tables_and_policies_are_unchanged);

/// POST /query returning (status, ETag, x-strata-cache, body).
async fn query(
    s: &TestServer,
    token: &str,
    sql: &str,
    if_none_match: Option<&str>,
) -> (u16, Option<String>, Option<String>, Value) {
    let mut req = s
        .client
        .post(s.url("/api/v1/query"))
        .bearer_auth(token)
        .json(&json!({"sql": sql}));
    if let Some(tag) = if_none_match {
        req = req.header("if-none-match", tag);
    }
    let r = req.send().await.unwrap();
    let status = r.status().as_u16();
    let header = |name: &str| {
        r.headers()
            .get(name)
            .map(|v| v.to_str().unwrap().to_string())
    };
    let (etag, cache) = (header("etag"), header("x-strata-cache"));
    let text = r.text().await.unwrap_or_default();
    let body = serde_json::from_str(&text).unwrap_or(Value::String(text));
    (status, etag, cache, body)
}

async fn metric(s: &TestServer, name: &str) -> u64 {
    let text = s.metrics_text().await;
    text.lines()
        .find_map(|l| l.strip_prefix(&format!("{name} ")))
        .unwrap_or_else(|| panic!("{name} missing from\n{text}"))
        .parse()
        .unwrap()
}

async fn repeat_hits_commit_misses_and_304(backend: Backend) {
    let s = TestServer::start_on(backend).await;
    let admin = s.admin.clone();
    s.create_people("gold.people").await;
    let (status, _) = s
        .upload(
            &admin,
            "gold.people",
            "application/json",
            br#"[{"id":1},{"id":2}]"#.to_vec(),
            "",
        )
        .await;
    assert_eq!(status, 200);
    let sql = "SELECT count(*) AS n FROM gold.people";
    let (_, tag1, cache, body1) = query(&s, &admin, sql, None).await;
    assert_eq!(cache.as_deref(), Some("miss"));
    let tag1 = tag1.expect("cacheable results carry an ETag");
    let (_, tag2, cache, body2) = query(&s, &admin, sql, None).await;
    assert_eq!(cache.as_deref(), Some("hit"));
    assert_eq!((tag2.as_deref(), &body2), (Some(tag1.as_str()), &body1));
    assert!(metric(&s, "strata_cache_hits_total").await >= 1);

    // 304 without executing.
    let (status, tag, _, body) = query(&s, &admin, sql, Some(&tag1)).await;
    assert_eq!(status, 304);
    assert_eq!(tag.as_deref(), Some(tag1.as_str()));
    assert_eq!(body, Value::String(String::new()));
    assert_eq!(metric(&s, "strata_cache_not_modified_total").await, 1);

    // A commit makes a new key: miss, new rows, new tag; the old tag no longer matches.
    let (status, _) = s
        .upload(
            &admin,
            "gold.people",
            "application/json",
            br#"[{"id":3}]"#.to_vec(),
            "",
        )
        .await;
    assert_eq!(status, 200);
    let (status, tag3, cache, body3) = query(&s, &admin, sql, Some(&tag1)).await;
    assert_eq!(status, 200);
    assert_eq!(cache.as_deref(), Some("miss"));
    assert_ne!(tag3.as_deref(), Some(tag1.as_str()));
    assert_eq!(body3[0]["n"], 3);

    // Parameters are part of the key.
    let (_, a, _, _) = query(&s, &admin, "SELECT id FROM gold.people WHERE id > 1", None).await;
    let (_, b, _, _) = query(&s, &admin, "SELECT id FROM gold.people WHERE id > 2", None).await;
    assert_ne!(a, b);

    // Never cached: volatile functions, EXPLAIN, commands, metadata.
    for sql in [
        "SELECT id, random() AS r FROM gold.people",
        "SELECT id, now() AS t FROM gold.people",
        "EXPLAIN SELECT * FROM gold.people",
        "SELECT table_name FROM information_schema.tables",
        "INSERT INTO gold.people VALUES (9, 'x', 1)",
    ] {
        let (status, tag, _, body) = query(&s, &admin, sql, None).await;
        assert_eq!(status, 200, "{sql}: {body}");
        assert_eq!(tag, None, "{sql} must not be cached");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn principals_never_share_entries_and_policy_changes_miss() {
    let s = sales_server().await;
    let ann = ann(&s);
    let bob = s.token_with("bob", &["analyst"], json!({"region": "us"}));
    let sql = "SELECT id FROM gold.sales ORDER BY id";
    // Concurrent first requests from both principals, several times each.
    let mut handles = Vec::new();
    for i in 0..12 {
        let token = if i % 2 == 0 { ann.clone() } else { bob.clone() };
        let client = s.client.clone();
        let url = s.url("/api/v1/query");
        handles.push(tokio::spawn(async move {
            let r = client
                .post(url)
                .bearer_auth(&token)
                .json(&json!({"sql": sql}))
                .send()
                .await
                .unwrap();
            (i % 2, r.json::<Value>().await.unwrap())
        }));
    }
    for h in handles {
        let (who, body) = h.await.unwrap();
        let ids: Vec<i64> = body
            .as_array()
            .unwrap()
            .iter()
            .map(|r| r["id"].as_i64().unwrap())
            .collect();
        assert_eq!(ids, if who == 0 { vec![1, 2, 6] } else { vec![3, 4] });
    }
    let (_, ann_tag, _, _) = query(&s, &ann, sql, None).await;
    let (_, bob_tag, _, _) = query(&s, &bob, sql, None).await;
    assert_ne!(ann_tag, bob_tag);
    // Same subject, other claim: another principal, another key.
    let ann_us = s.token_with("ann", &["analyst"], json!({"region": "us"}));
    let (_, tag, cache, body) = query(&s, &ann_us, sql, None).await;
    assert_ne!(tag, ann_tag);
    assert_eq!(cache.as_deref(), Some("miss"));
    assert_eq!(body, json!([{"id": 3}, {"id": 4}]));

    // A policy change is a miss, with the new policy's rows.
    let (_, before, cache, _) = query(&s, &ann, sql, None).await;
    assert_eq!(cache.as_deref(), Some("hit"));
    let (status, _) = s
        .put_json(&s.admin.clone(), "/api/v1/tables/gold/sales/policies", json!({"row_filters": [{"roles": ["analyst"], "predicate": "region = current_claim('region') AND amount > 15"}]}))
        .await;
    assert_eq!(status, 200);
    let (_, after, cache, body) = query(&s, &ann, sql, before.as_deref()).await;
    assert_eq!(cache.as_deref(), Some("miss"), "{body}");
    assert_ne!(after, before);
    assert_eq!(body, json!([{"id": 2}, {"id": 6}]));
    // So is a grant change.
    let (_, before, _, _) = query(&s, &ann, sql, None).await;
    let (status, _) = s
        .put_json(&s.admin.clone(), "/api/v1/grants", json!({"grants": []}))
        .await;
    assert_eq!(status, 200);
    let (_, after, cache, _) = query(&s, &ann, sql, None).await;
    assert_ne!(after, before);
    assert_eq!(cache.as_deref(), Some("miss"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failed_streams_are_not_cached_and_the_byte_bound_holds() {
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = test_config(dir.path());
    cfg.query.batch_size = 2;
    cfg.query.target_partitions = 1;
    cfg.cache.max_bytes = 256 * 1024;
    cfg.cache.max_entry_bytes = 64 * 1024;
    let s = TestServer::start_with(cfg).await;
    let admin = s.admin.clone();
    s.create_people("gold.people").await;
    let rows: Vec<_> = (1..=20)
        .map(|i| json!({"id": i, "name": "x".repeat(200)}))
        .collect();
    let (status, _) = s
        .upload(
            &admin,
            "gold.people",
            "application/json",
            serde_json::to_vec(&rows).unwrap(),
            "",
        )
        .await;
    assert_eq!(status, 200);
    let failing = "SELECT id, 100 / (id - 15) AS x FROM gold.people";
    for _ in 0..2 {
        let r = s
            .client
            .post(s.url("/api/v1/query"))
            .bearer_auth(&admin)
            .json(&json!({"sql": failing}))
            .send()
            .await;
        if let Ok(r) = r {
            assert!(
                r.bytes().await.is_err(),
                "the failing stream must not complete"
            );
        }
    }
    assert_eq!(
        metric(&s, "strata_cache_inserts_total").await,
        0,
        "a failed stream is never cached"
    );
    assert_eq!(metric(&s, "strata_cache_hits_total").await, 0);

    // Many distinct results: the cache stays under its byte bound by evicting.
    for i in 0..60 {
        let (status, _, _, _) = query(
            &s,
            &admin,
            &format!("SELECT id, name, {i} AS k FROM gold.people"),
            None,
        )
        .await;
        assert_eq!(status, 200);
    }
    let bytes = metric(&s, "strata_cache_bytes").await;
    assert!(bytes <= 256 * 1024, "cache holds {bytes} bytes");
    assert!(metric(&s, "strata_cache_evictions_total").await > 0);
    assert!(metric(&s, "strata_cache_inserts_total").await >= 60);
    // /metrics needs a token.
    let r = s.client.get(s.url("/metrics")).send().await.unwrap();
    assert_eq!(r.status(), 401);
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn flight_shares_the_cache_and_the_cache_can_be_disabled() {
    let s = TestServer::start().await;
    s.create_people("gold.people").await;
    let mut c = s.flight_client(&s.admin).await;
    let before = metric(&s, "strata_cache_hits_total").await;
    for _ in 0..3 {
        let info = c
            .execute("SELECT count(*) FROM gold.people".into(), None)
            .await
            .unwrap();
        let _: Vec<_> = futures::TryStreamExt::try_collect::<Vec<_>>(
            c.do_get(info.endpoint[0].ticket.clone().unwrap())
                .await
                .unwrap(),
        )
        .await
        .unwrap();
    }
    assert_eq!(metric(&s, "strata_cache_hits_total").await, before + 2);

    let dir = tempfile::tempdir().unwrap();
    let mut cfg = test_config(dir.path());
    cfg.cache.enabled = false;
    let off = TestServer::start_with(cfg).await;
    off.create_people("gold.people").await;
    let (status, tag, _, _) = query(
        &off,
        &off.admin.clone(),
        "SELECT count(*) AS n FROM gold.people",
        None,
    )
    .await;
    assert_eq!((status, tag), (200, None));
    off.stop().await;
}

/// A dropped and re-created table restarts at version 0: the cache must still tell it from
/// the old table at the same version (the key carries the Delta table id).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_recreated_table_at_the_same_version_is_a_miss() {
    let s = TestServer::start().await;
    let admin = s.admin.clone();
    let sql = "SELECT sum(n) AS total FROM silver.t";
    s.sql_ok("CREATE TABLE silver.t AS SELECT 1 AS n").await;
    let (_, tag1, cache, body) = query(&s, &admin, sql, None).await;
    assert_eq!(
        (cache.as_deref(), &body),
        (Some("miss"), &json!([{"total": 1}]))
    );
    assert_eq!(query(&s, &admin, sql, None).await.2.as_deref(), Some("hit"));
    s.sql_ok("DROP TABLE silver.t").await;
    s.sql_ok("CREATE TABLE silver.t AS SELECT 2 AS n").await;
    assert_eq!(s.version("silver.t").await, 0);
    let (_, tag2, cache, body) = query(&s, &admin, sql, None).await;
    assert_eq!(
        (cache.as_deref(), &body),
        (Some("miss"), &json!([{"total": 2}]))
    );
    assert_ne!(tag1, tag2);
}

/// Flight tickets of cacheable queries carry their result's cache key, so DoGet replays a
/// hit without planning again; but only while it is still the right answer: a commit, a
/// policy change or a revoked grant between GetFlightInfo and DoGet must reach the client.
async fn flight_tickets_replay_hits_only_while_tables_and_policies_are_unchanged(backend: Backend) {
    let s = crate::rls::sales_server_on(backend).await;
    let mut c = crate::flight::client(&s, &ann(&s)).await;
    let sql = "SELECT id FROM gold.sales ORDER BY id";
    let ids = |batches: Vec<arrow::array::RecordBatch>| -> Vec<i64> {
        batches
            .iter()
            .flat_map(|b| {
                b.column(0)
                    .as_any()
                    .downcast_ref::<arrow::array::Int64Array>()
                    .unwrap()
                    .values()
                    .to_vec()
            })
            .collect()
    };
    let info = c.execute(sql.into(), None).await.unwrap();
    assert_eq!(
        ids(crate::flight::fetch(&mut c, &info).await.unwrap()),
        [1, 2, 6]
    );
    let (hits, misses) = (
        metric(&s, "strata_cache_hits_total").await,
        metric(&s, "strata_cache_misses_total").await,
    );
    // A ticket can be fetched more than once; each fetch is a hit, none plans (no lookup miss).
    let info = c.execute(sql.into(), None).await.unwrap();
    for _ in 0..2 {
        assert_eq!(
            ids(crate::flight::fetch(&mut c, &info).await.unwrap()),
            [1, 2, 6]
        );
    }
    assert_eq!(metric(&s, "strata_cache_hits_total").await, hits + 2);
    assert_eq!(metric(&s, "strata_cache_misses_total").await, misses);

    // A commit after GetFlightInfo: DoGet reads the new version.
    let info = c.execute(sql.into(), None).await.unwrap();
    let root = s.token_with("root", &["admin", "policy_bypass"], json!({}));
    let (status, body) = s
        .sql(
            &root,
            "INSERT INTO gold.sales VALUES (7, 'eu', 'fay', 70.0, 'fay@eu.example')",
        )
        .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(
        ids(crate::flight::fetch(&mut c, &info).await.unwrap()),
        [1, 2, 6, 7]
    );

    // A revoked grant after GetFlightInfo: DoGet is refused (managers read through the
    // grant the server started with).
    let mut mia = crate::flight::client(&s, &s.token_with("mia", &["manager"], json!({}))).await;
    let info = mia.execute(sql.into(), None).await.unwrap();
    let all = [1, 2, 3, 4, 5, 6, 7];
    assert_eq!(
        ids(crate::flight::fetch(&mut mia, &info).await.unwrap()),
        all
    );
    let info = mia.execute(sql.into(), None).await.unwrap();
    assert_eq!(
        ids(crate::flight::fetch(&mut mia, &info).await.unwrap()),
        all
    );
    let (status, body) = s
        .put_json(&s.admin.clone(), "/api/v1/grants", json!({"grants": []}))
        .await;
    assert_eq!(status, 200, "{body}");
    assert!(crate::flight::fetch(&mut mia, &info).await.is_err());

    // A row filter change after GetFlightInfo: DoGet applies the new filter.
    let info = c.execute(sql.into(), None).await.unwrap();
    assert_eq!(
        ids(crate::flight::fetch(&mut c, &info).await.unwrap()),
        [1, 2, 6, 7]
    );
    let (status, body) = s
        .put_json(&s.admin.clone(), "/api/v1/tables/gold/sales/policies", json!({"row_filters": [{"roles": ["analyst"], "predicate": "region = current_claim('region') AND amount > 15"}]}))
        .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(
        ids(crate::flight::fetch(&mut c, &info).await.unwrap()),
        [2, 6, 7]
    );

    // Nobody else can present the ticket.
    let mut bob = crate::flight::client(&s, &s.admin.clone()).await;
    assert!(crate::flight::fetch(&mut bob, &info).await.is_err());
}
