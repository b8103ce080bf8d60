//! MERGE INTO, UPDATE and DELETE through SQL: every clause kind, Delta semantics, policies.

use serde_json::{Value, json};

use crate::harness::{TestServer, message};

async fn all(s: &TestServer, root: &str) -> Value {
    let (status, body) = s
        .sql(
            root,
            "SELECT id, name, amount, region FROM silver.customers ORDER BY id",
        )
        .await;
    assert_eq!(status, 200, "{body}");
    body
}

async fn rows(s: &TestServer, sql: &str) -> Value {
    s.sql_ok(sql).await
}

async fn customers(s: &TestServer) {
    s.sql_ok(
        "CREATE TABLE silver.customers (id BIGINT, name STRING, amount DOUBLE, region STRING)",
    )
    .await;
    s.sql_ok(
        "INSERT INTO silver.customers VALUES (1, 'ann', 1.0, 'eu'), (2, 'bob', 2.0, 'eu'), \
         (3, 'cy', 3.0, 'us'), (4, 'dee', 4.0, 'us'), (5, 'eve', 5.0, 'apac')",
    )
    .await;
    s.sql_ok("CREATE TABLE bronze.changes (id BIGINT, name STRING, amount DOUBLE, region STRING, op STRING)")
        .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_clause_kind_with_counts() {
    let s = TestServer::start().await;
    customers(&s).await;
    s.sql_ok(
        "INSERT INTO bronze.changes VALUES (1, 'ANN', 10.0, 'eu', 'U'), (2, NULL, NULL, NULL, 'D'), \
         (6, 'fay', 6.0, 'eu', 'I'), (7, 'gus', 7.0, 'us', 'I'), (NULL, 'nobody', 0.0, 'eu', 'I')",
    )
    .await;
    let before = s.version("silver.customers").await;
    let body = s
        .sql_ok(
            "MERGE INTO silver.customers AS t USING bronze.changes AS s ON t.id = s.id \
             WHEN MATCHED AND s.op = 'D' THEN DELETE \
             WHEN MATCHED THEN UPDATE SET name = s.name, amount = t.amount + s.amount \
             WHEN NOT MATCHED AND s.op = 'I' THEN INSERT (id, name, amount, region) VALUES (s.id, s.name, s.amount, s.region) \
             WHEN NOT MATCHED BY SOURCE AND t.amount >= 5 THEN UPDATE SET region = 'archived' \
             WHEN NOT MATCHED BY SOURCE THEN DELETE",
        )
        .await;
    // updated: 1 (matched) + 5 (by source); deleted: 2 (matched) + 3, 4 (by source);
    // inserted: 6, 7 and the NULL-key row (NULL never matches).
    assert_eq!(body[0]["operation"], "MERGE");
    assert_eq!(
        (
            &body[0]["rows_inserted"],
            &body[0]["rows_updated"],
            &body[0]["rows_deleted"]
        ),
        (&json!(3), &json!(2), &json!(3)),
        "{body}"
    );
    assert_eq!(body[0]["rows_affected"], 8);
    assert_eq!(body[0]["version"], before + 1);
    let got = rows(
        &s,
        "SELECT id, name, amount, region FROM silver.customers ORDER BY id NULLS FIRST",
    )
    .await;
    assert_eq!(
        got,
        json!([
            {"id": null, "name": "nobody", "amount": 0.0, "region": "eu"},
            {"id": 1, "name": "ANN", "amount": 11.0, "region": "eu"},
            {"id": 5, "name": "eve", "amount": 5.0, "region": "archived"},
            {"id": 6, "name": "fay", "amount": 6.0, "region": "eu"},
            {"id": 7, "name": "gus", "amount": 7.0, "region": "us"},
        ])
    );
    // History records who merged.
    let (_, history) = s
        .get(
            &s.admin.clone(),
            "/api/v1/tables/silver/customers/history?limit=1",
        )
        .await;
    assert_eq!(history["history"][0]["operation"], "MERGE");
    assert_eq!(history["history"][0]["principal"], "admin");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn star_shorthands_subquery_sources_and_coercion() {
    let s = TestServer::start().await;
    customers(&s).await;
    // UPDATE SET * / INSERT * from a subquery with int literals coerced to BIGINT/DOUBLE.
    let body = s
        .sql_ok(
            "MERGE INTO silver.customers c USING (SELECT 2 AS id, 'bobby' AS name, 20 AS amount, 'eu' AS region \
             UNION ALL SELECT 9, 'ivy', 9, 'us') AS u ON c.id = u.id \
             WHEN MATCHED THEN UPDATE SET * WHEN NOT MATCHED THEN INSERT *",
        )
        .await;
    assert_eq!(
        (&body[0]["rows_inserted"], &body[0]["rows_updated"]),
        (&json!(1), &json!(1))
    );
    let got = rows(
        &s,
        "SELECT id, name, amount FROM silver.customers WHERE id IN (2, 9) ORDER BY id",
    )
    .await;
    assert_eq!(
        got,
        json!([{"id": 2, "name": "bobby", "amount": 20.0}, {"id": 9, "name": "ivy", "amount": 9.0}])
    );
    // Running the same upsert again changes values to the same values: no new rows.
    s.sql_ok(
        "MERGE INTO silver.customers c USING (SELECT 9 AS id, 'ivy' AS name, 9 AS amount, 'us' AS region) AS u \
         ON c.id = u.id WHEN MATCHED THEN UPDATE SET * WHEN NOT MATCHED THEN INSERT *",
    )
    .await;
    assert_eq!(s.count("silver.customers").await, 6);
    // `INSERT *` needs every target column in the source.
    let (status, body) = s
        .sql(
            &s.admin.clone(),
            "MERGE INTO silver.customers c USING (SELECT 10 AS id) AS u ON c.id = u.id WHEN NOT MATCHED THEN INSERT *",
        )
        .await;
    assert_eq!(status, 400, "{body}");
    assert!(message(&body).contains("name"), "{body}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_target_row_matched_twice_fails_and_commits_nothing() {
    let s = TestServer::start().await;
    customers(&s).await;
    s.sql_ok(
        "INSERT INTO bronze.changes VALUES (1, 'a', 1.0, 'eu', 'U'), (1, 'b', 2.0, 'eu', 'U')",
    )
    .await;
    let before = s.version("silver.customers").await;
    let (status, body) = s
        .sql(
            &s.admin.clone(),
            "MERGE INTO silver.customers t USING bronze.changes s ON t.id = s.id WHEN MATCHED THEN UPDATE SET name = s.name",
        )
        .await;
    assert_eq!(status, 400, "{body}");
    assert!(
        message(&body).contains("more than one source row"),
        "{body}"
    );
    assert_eq!(s.version("silver.customers").await, before);
    // Bad clauses are clear errors too.
    for (sql, needle) in [
        (
            "MERGE INTO silver.customers t USING bronze.changes s ON t.id = s.id WHEN MATCHED THEN UPDATE SET nope = 1",
            "no column nope",
        ),
        (
            "MERGE INTO silver.customers t USING bronze.changes s ON t.id = s.nope WHEN MATCHED THEN DELETE",
            "nope",
        ),
        (
            "MERGE INTO silver.missing t USING bronze.changes s ON t.id = s.id WHEN MATCHED THEN DELETE",
            "not found",
        ),
    ] {
        let (status, body) = s.sql(&s.admin.clone(), sql).await;
        assert!(status == 400 || status == 404, "{sql}: {status} {body}");
        assert!(message(&body).contains(needle), "{sql}: {body}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn update_and_delete_with_parameters() {
    let s = TestServer::start().await;
    customers(&s).await;
    let (status, body) = s
        .post_json(
            &s.admin.clone(),
            "/api/v1/query",
            json!({"sql": "UPDATE silver.customers SET amount = amount * $1, name = upper(name) WHERE region = $2", "params": [10, "us"]}),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body[0]["rows_updated"], 2);
    let (status, body) = s
        .post_json(
            &s.admin.clone(),
            "/api/v1/query",
            json!({"sql": "DELETE FROM silver.customers WHERE amount > ?", "params": [35]}),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body[0]["rows_deleted"], 1);
    let got = rows(
        &s,
        "SELECT id, name, amount FROM silver.customers ORDER BY id",
    )
    .await;
    assert_eq!(
        got,
        json!([
            {"id": 1, "name": "ann", "amount": 1.0},
            {"id": 2, "name": "bob", "amount": 2.0},
            {"id": 3, "name": "CY", "amount": 30.0},
            {"id": 5, "name": "eve", "amount": 5.0},
        ])
    );
    let body = s.sql_ok("DELETE FROM silver.customers").await;
    assert_eq!(body[0]["rows_deleted"], 4);
    assert_eq!(s.count("silver.customers").await, 0);
}

/// A writer with a row filter: UPDATE/DELETE/MERGE touch only rows it can see, and every
/// row it writes must stay inside its filter (WITH CHECK), or nothing is committed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn writers_touch_only_visible_rows_and_stay_inside_their_filter() {
    let s = TestServer::start().await;
    let admin = s.admin.clone();
    customers(&s).await;
    let mut grants = Vec::new();
    for privilege in ["SELECT", "MODIFY", "INSERT"] {
        grants.push(json!({"role": "eu_writer", "privilege": privilege, "on": "silver.customers"}));
        grants.push(json!({"role": "eu_writer", "privilege": privilege, "on": "bronze.changes"}));
    }
    let (status, body) = s
        .put_json(&admin, "/api/v1/grants", json!({ "grants": grants }))
        .await;
    assert_eq!(status, 200, "{body}");
    let (status, body) = s
        .put_json(
            &admin,
            "/api/v1/tables/silver/customers/policies",
            json!({"row_filters": [{"roles": ["eu_writer"], "predicate": "region = 'eu'"}]}),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    let w = s.token("wes", &["eu_writer"]);
    let root = s.token("root", &["admin", "policy_bypass"]);
    // UPDATE without WHERE: only the two eu rows.
    let (status, body) = s
        .sql(&w, "UPDATE silver.customers SET amount = amount + 100")
        .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body[0]["rows_updated"], 2);
    let snapshot = all(&s, &root).await;
    assert_eq!(
        snapshot[2]["amount"], 3.0,
        "a us row was updated: {snapshot}"
    );

    // Moving a row out of the filter is refused, as a whole.
    let version = s.version("silver.customers").await;
    let (status, body) = s
        .sql(&w, "UPDATE silver.customers SET region = 'us' WHERE id = 1")
        .await;
    assert_eq!(status, 403, "{body}");
    assert!(message(&body).contains("row filter"), "{body}");
    assert_eq!(s.version("silver.customers").await, version);

    // MERGE: hidden rows never match (id 3 is us: the source row is "not matched" and its
    // insert is outside the filter → refused), visible ones do.
    s.sql_ok("INSERT INTO bronze.changes VALUES (3, 'x', 0.0, 'us', 'I')")
        .await;
    let (status, body) = s
        .sql(
            &w,
            "MERGE INTO silver.customers t USING bronze.changes s ON t.id = s.id \
             WHEN MATCHED THEN UPDATE SET name = s.name WHEN NOT MATCHED THEN INSERT *",
        )
        .await;
    // (INSERT * ignores the source's extra column op.)
    assert_eq!(status, 403, "{body}");
    let (status, body) = s
        .sql(
            &w,
            "MERGE INTO silver.customers t USING bronze.changes s ON t.id = s.id \
             WHEN MATCHED THEN UPDATE SET name = s.name \
             WHEN NOT MATCHED THEN INSERT (id, name, amount, region) VALUES (s.id, s.name, s.amount, s.region)",
        )
        .await;
    assert_eq!(status, 403, "{body}");
    assert_eq!(s.version("silver.customers").await, version);
    assert_eq!(all(&s, &root).await, snapshot);

    // NOT MATCHED BY SOURCE … DELETE removes only visible rows.
    let (status, body) = s
        .sql(
            &w,
            "MERGE INTO silver.customers t USING (SELECT 1 AS id) s ON t.id = s.id \
             WHEN NOT MATCHED BY SOURCE THEN DELETE",
        )
        .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body[0]["rows_deleted"], 1);
    // DELETE without WHERE: only the remaining eu row.
    let (status, body) = s.sql(&w, "DELETE FROM silver.customers").await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body[0]["rows_deleted"], 1);
    let left: Vec<i64> = all(&s, &root)
        .await
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["id"].as_i64().unwrap())
        .collect();
    assert_eq!(left, vec![3, 4, 5]);

    // Without MODIFY: refused; a masked writer: refused.
    let reader = s.token("ann", &["analyst"]);
    let (status, _) = s.sql(&reader, "DELETE FROM silver.customers").await;
    assert_eq!(status, 404);
}

/// MERGE against a simple in-memory reference on random data (NULLs included).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn merge_equals_a_reference_on_random_data() {
    use std::collections::BTreeMap;
    let s = TestServer::start().await;
    let mut seed = 0x9e37_79b9_7f4a_7c15_u64;
    let mut next = |n: u64| {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        seed % n
    };
    for round in 0..6 {
        let (target, source) = (format!("silver.t{round}"), format!("bronze.s{round}"));
        s.sql_ok(&format!("CREATE TABLE {target} (id BIGINT, v BIGINT)"))
            .await;
        s.sql_ok(&format!(
            "CREATE TABLE {source} (id BIGINT, v BIGINT, op STRING)"
        ))
        .await;
        let val = |x: u64| {
            if x.is_multiple_of(7) {
                None
            } else {
                Some(x as i64 % 50)
            }
        };
        let mut t: BTreeMap<i64, Option<i64>> = BTreeMap::new();
        for id in 0..30 {
            if next(3) > 0 {
                t.insert(id, val(next(100)));
            }
        }
        let mut src: Vec<(i64, Option<i64>, &str)> = Vec::new();
        for id in 0..40 {
            if next(2) == 0 {
                src.push((id, val(next(100)), ["U", "D", "I"][next(3) as usize]));
            }
        }
        let lit = |v: Option<i64>| v.map_or("NULL".to_string(), |v| v.to_string());
        if !t.is_empty() {
            let values: Vec<String> = t
                .iter()
                .map(|(id, v)| format!("({id}, {})", lit(*v)))
                .collect();
            s.sql_ok(&format!(
                "INSERT INTO {target} VALUES {}",
                values.join(", ")
            ))
            .await;
        }
        if !src.is_empty() {
            let values: Vec<String> = src
                .iter()
                .map(|(id, v, op)| format!("({id}, {}, '{op}')", lit(*v)))
                .collect();
            s.sql_ok(&format!(
                "INSERT INTO {source} VALUES {}",
                values.join(", ")
            ))
            .await;
        }
        s.sql_ok(&format!(
            "MERGE INTO {target} t USING {source} s ON t.id = s.id \
             WHEN MATCHED AND s.op = 'D' THEN DELETE \
             WHEN MATCHED THEN UPDATE SET v = t.v + s.v \
             WHEN NOT MATCHED AND s.op <> 'D' THEN INSERT (id, v) VALUES (s.id, s.v * 2) \
             WHEN NOT MATCHED BY SOURCE AND t.v % 3 = 0 THEN DELETE"
        ))
        .await;
        // The reference, clause by clause (first matching clause wins; NULL is not true).
        let mut expected = BTreeMap::new();
        let by_id: BTreeMap<i64, (Option<i64>, &str)> =
            src.iter().map(|(id, v, op)| (*id, (*v, *op))).collect();
        for (id, tv) in &t {
            match by_id.get(id) {
                Some((_, "D")) => {}
                Some((sv, _)) => {
                    expected.insert(*id, tv.zip(*sv).map(|(a, b)| a + b));
                }
                None if tv.is_some_and(|v| v % 3 == 0) => {}
                None => {
                    expected.insert(*id, *tv);
                }
            }
        }
        for (id, (sv, op)) in &by_id {
            if !t.contains_key(id) && *op != "D" {
                expected.insert(*id, sv.map(|v| v * 2));
            }
        }
        let got = s
            .sql_ok(&format!("SELECT id, v FROM {target} ORDER BY id"))
            .await;
        let got: BTreeMap<i64, Option<i64>> = got
            .as_array()
            .unwrap()
            .iter()
            .map(|r| (r["id"].as_i64().unwrap(), r["v"].as_i64()))
            .collect();
        assert_eq!(got, expected, "round {round}");
    }
}

/// A partitioned target: only the partitions with matches are rewritten.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn partitioned_targets_rewrite_only_matching_partitions() {
    let s = TestServer::start().await;
    s.sql_ok(
        "CREATE TABLE gold.sales (id BIGINT, region STRING, amount DOUBLE) PARTITIONED BY (region)",
    )
    .await;
    s.sql_ok(
        "INSERT INTO gold.sales VALUES (1, 'eu', 1.0), (2, 'eu', 2.0), (3, 'us', 3.0), (4, 'apac', 4.0)",
    )
    .await;
    let (status, body) = s
        .post_json(
            &s.admin.clone(),
            "/api/v1/tables/gold/sales/merge",
            json!({"source": {"rows": [{"id": 3, "region": "us", "amount": 30.5}, {"id": 5, "region": "us", "amount": 5}]},
                   "on": "t.region = s.region AND t.id = s.id"}),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(
        (&body["inserted"], &body["updated"]),
        (&json!(1), &json!(1))
    );
    // Only the us partition's file was replaced.
    assert_eq!(body["files_removed"], 1, "{body}");
    assert_eq!(
        rows(&s, "SELECT id, region, amount FROM gold.sales ORDER BY id").await,
        json!([
            {"id": 1, "region": "eu", "amount": 1.0},
            {"id": 2, "region": "eu", "amount": 2.0},
            {"id": 3, "region": "us", "amount": 30.5},
            {"id": 4, "region": "apac", "amount": 4.0},
            {"id": 5, "region": "us", "amount": 5.0},
        ])
    );
    // UPDATE with a partition predicate touches one partition too.
    let body = s
        .sql_ok("UPDATE gold.sales SET amount = amount * 2 WHERE region = 'eu'")
        .await;
    assert_eq!(body[0]["rows_updated"], 2);
}
