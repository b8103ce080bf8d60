//! SCD Type 2 through SQL (`CALL scd2`) and REST, and its invariants on random batches.

use std::collections::BTreeMap;

use serde_json::{Value, json};

use crate::harness::{TestServer, message};

const DIM: &str = "CREATE TABLE silver.dim (id BIGINT, name STRING, city STRING, \
                   valid_from TIMESTAMP, valid_to TIMESTAMP, is_current BOOLEAN)";
const SRC: &str =
    "CREATE TABLE bronze.src (id BIGINT, name STRING, city STRING, changed_at TIMESTAMP)";

async fn dim(s: &TestServer) -> Value {
    s.sql_ok(
        "SELECT id, name, city, CAST(valid_from AS STRING) AS vf, CAST(valid_to AS STRING) AS vt, is_current \
         FROM silver.dim ORDER BY id, valid_from",
    )
    .await
}

const CALL: &str = "CALL scd2(target => 'silver.dim', source => 'bronze.src', keys => 'id', effective_time => 'changed_at')";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chains_reruns_late_changes_and_close_missing() {
    let s = TestServer::start().await;
    s.sql_ok(DIM).await;
    s.sql_ok(SRC).await;
    // Key 1 changes twice in the batch (given out of order), key 2 once, key 3 repeats
    // itself (the second row is no change).
    s.sql_ok(
        "INSERT INTO bronze.src VALUES \
         (1, 'ann', 'zurich', TIMESTAMP '2026-01-02T00:00:00Z'), \
         (1, 'ann', 'paris', TIMESTAMP '2026-01-01T00:00:00Z'), \
         (2, 'bob', NULL, TIMESTAMP '2026-01-01T00:00:00Z'), \
         (3, 'cy', 'rome', TIMESTAMP '2026-01-01T00:00:00Z'), \
         (3, 'cy', 'rome', TIMESTAMP '2026-01-03T00:00:00Z')",
    )
    .await;
    let body = s.sql_ok(CALL).await;
    assert_eq!(body[0]["operation"], "SCD2");
    assert_eq!(body[0]["rows_inserted"], 4, "{body}");
    assert_eq!(
        dim(&s).await,
        json!([
            {"id": 1, "name": "ann", "city": "paris", "vf": "2026-01-01T00:00:00Z", "vt": "2026-01-02T00:00:00Z", "is_current": false},
            {"id": 1, "name": "ann", "city": "zurich", "vf": "2026-01-02T00:00:00Z", "vt": null, "is_current": true},
            {"id": 2, "name": "bob", "city": null, "vf": "2026-01-01T00:00:00Z", "vt": null, "is_current": true},
            {"id": 3, "name": "cy", "city": "rome", "vf": "2026-01-01T00:00:00Z", "vt": null, "is_current": true},
        ])
    );
    // Re-running the same batch is a no-op: no commit at all.
    let version = s.version("silver.dim").await;
    let body = s.sql_ok(CALL).await;
    assert_eq!(body[0]["rows_affected"], 0, "{body}");
    assert_eq!(s.version("silver.dim").await, version);

    // Next batch: bob gets a city (NULL → value is a change), cy unchanged, dee is new.
    s.sql_ok("DELETE FROM bronze.src").await;
    s.sql_ok(
        "INSERT INTO bronze.src VALUES (2, 'bob', 'oslo', TIMESTAMP '2026-02-01T00:00:00Z'), \
         (3, 'cy', 'rome', TIMESTAMP '2026-02-01T00:00:00Z'), (4, 'dee', 'lima', TIMESTAMP '2026-02-01T00:00:00Z')",
    )
    .await;
    let body = s.sql_ok(CALL).await;
    assert_eq!(
        (&body[0]["rows_inserted"], &body[0]["rows_updated"]),
        (&json!(2), &json!(1)),
        "{body}"
    );
    let rows = dim(&s).await;
    assert_eq!(rows.as_array().unwrap().len(), 6);
    assert_eq!(rows[2]["vt"], "2026-02-01T00:00:00Z");
    assert_eq!(rows[3]["city"], "oslo");

    // A late change (before bob's current version) is rejected and commits nothing.
    s.sql_ok("DELETE FROM bronze.src").await;
    s.sql_ok(
        "INSERT INTO bronze.src VALUES (2, 'bob', 'bergen', TIMESTAMP '2026-01-15T00:00:00Z')",
    )
    .await;
    let version = s.version("silver.dim").await;
    let (status, body) = s.sql(&s.admin.clone(), CALL).await;
    assert_eq!(status, 400, "{body}");
    assert!(message(&body).contains("late change"), "{body}");
    assert_eq!(s.version("silver.dim").await, version);

    // A full snapshot with close_missing closes the keys that are gone (at commit time).
    s.sql_ok("DELETE FROM bronze.src").await;
    s.sql_ok(
        "INSERT INTO bronze.src VALUES (1, 'ann', 'zurich', TIMESTAMP '2026-03-01T00:00:00Z')",
    )
    .await;
    let body = s
        .sql_ok("CALL scd2(target => 'silver.dim', source => 'SELECT id, name, city FROM bronze.src', keys => 'id', close_missing => true)")
        .await;
    assert_eq!(body[0]["rows_updated"], 3, "{body}");
    let current = s
        .sql_ok("SELECT id FROM silver.dim WHERE is_current ORDER BY id")
        .await;
    assert_eq!(current, json!([{"id": 1}]));

    // Bad calls are clear.
    for (sql, needle) in [
        (
            "CALL scd2(target => 'silver.dim', source => 'bronze.src')",
            "key",
        ),
        (
            "CALL scd2(target => 'silver.dim', source => 'bronze.src', keys => 'nope')",
            "nope",
        ),
        (
            "CALL scd2(target => 'silver.dim', source => 'bronze.src', keys => 'id', colour => 'x')",
            "unknown argument",
        ),
        ("CALL launch_missiles()", "unknown procedure"),
    ] {
        let (status, body) = s.sql(&s.admin.clone(), sql).await;
        assert_eq!(status, 400, "{sql}: {body}");
        assert!(message(&body).contains(needle), "{sql}: {body}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rest_merge_and_scd2_with_inline_rows() {
    let s = TestServer::start().await;
    let admin = s.admin.clone();
    s.sql_ok(DIM).await;
    s.sql_ok("CREATE TABLE silver.kv (k BIGINT, v STRING)")
        .await;
    s.sql_ok("INSERT INTO silver.kv VALUES (1, 'a'), (2, 'b')")
        .await;
    // Default clauses: upsert.
    let (status, body) = s
        .post_json(
            &admin,
            "/api/v1/tables/silver/kv/merge",
            json!({"source": {"rows": [{"k": 2, "v": "B"}, {"k": 3, "v": "c"}]}, "keys": ["k"]}),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(
        (&body["inserted"], &body["updated"]),
        (&json!(1), &json!(1))
    );
    // Explicit clauses with a source query.
    let (status, body) = s
        .post_json(
            &admin,
            "/api/v1/tables/silver/kv/merge",
            json!({"source": {"sql": "SELECT 1 AS k"}, "on": "t.k = s.k", "clauses": [
                {"when": "matched", "delete": true},
                {"when": "not_matched_by_source", "if": "t.k = 3", "update": {"v": "upper(t.v) || '!'"}}
            ]}),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!((&body["deleted"], &body["updated"]), (&json!(1), &json!(1)));
    assert_eq!(
        s.sql_ok("SELECT k, v FROM silver.kv ORDER BY k").await,
        json!([{"k": 2, "v": "B"}, {"k": 3, "v": "C!"}])
    );
    let (status, body) = s
        .post_json(
            &admin,
            "/api/v1/tables/silver/kv/merge",
            json!({"source": {"rows": [{"k": 2}]}, "keys": ["k"], "clauses": [{"when": "matched", "update": "*", "delete": true}]}),
        )
        .await;
    assert_eq!(status, 400, "{body}");

    // SCD2 over REST, default effective time = commit time.
    let (status, body) = s
        .post_json(
            &admin,
            "/api/v1/tables/silver/dim/scd2",
            json!({"source": {"rows": [{"id": 1, "name": "ann", "city": "paris"}]}, "keys": ["id"]}),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["inserted"], 1);
    let (status, body) = s
        .post_json(
            &admin,
            "/api/v1/tables/silver/dim/scd2",
            json!({"source": {"rows": [{"id": 1, "name": "ann", "city": "rome"}]}, "keys": ["id"], "tracked": ["city"]}),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(
        (&body["inserted"], &body["updated"]),
        (&json!(1), &json!(1))
    );
    let rows = dim(&s).await;
    assert_eq!(rows[0]["vt"], rows[1]["vf"], "{rows}");
    assert_eq!(rows[1]["is_current"], true);
    let (_, history) = s
        .get(&admin, "/api/v1/tables/silver/dim/history?limit=1")
        .await;
    assert_eq!(history["history"][0]["operation"], "MERGE");
    assert_eq!(history["history"][0]["strata_operation"], "SCD2");
}

/// xorshift, so failures reproduce.
struct Rng(u64);

impl Rng {
    fn next(&mut self, n: u64) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0 % n
    }
}

/// Random batches over a few keys: ≤ 1 current row per key, versions of a key tile time
/// without overlap, re-running a batch changes nothing, and applying the batches one by one
/// equals applying their union at once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invariants_hold_on_random_batches() {
    let one_by_one = TestServer::start().await;
    let union = TestServer::start().await;
    for s in [&one_by_one, &union] {
        s.sql_ok(DIM).await;
        s.sql_ok(SRC).await;
    }
    let mut rng = Rng(0x00c0_ffee);
    let mut all_rows = Vec::new();
    for batch in 0..5u64 {
        let mut rows = Vec::new();
        for _ in 0..(3 + rng.next(6)) {
            let id = rng.next(5);
            // Each batch lives in its own month, so nothing is late.
            let day = 1 + rng.next(27);
            let city = ["rome", "oslo", "lima"][rng.next(3) as usize];
            let name = if rng.next(4) == 0 {
                "NULL".to_string()
            } else {
                format!("'n{id}'")
            };
            rows.push(format!(
                "({id}, {name}, '{city}', TIMESTAMP '2026-{:02}-{day:02}T00:00:00Z')",
                batch + 1
            ));
        }
        // Rows of one key at one instant must agree; keep the first.
        rows.sort_by_key(|r| {
            let mut p = r.split(", ");
            (p.next().map(str::to_string), p.nth(2).map(str::to_string))
        });
        rows.dedup_by_key(|r| {
            let mut p = r.split(", ");
            (p.next().map(str::to_string), p.nth(2).map(str::to_string))
        });
        let insert = format!("INSERT INTO bronze.src VALUES {}", rows.join(", "));
        one_by_one.sql_ok("DELETE FROM bronze.src").await;
        one_by_one.sql_ok(&insert).await;
        one_by_one.sql_ok(CALL).await;
        // Re-running changes nothing.
        let v = one_by_one.version("silver.dim").await;
        one_by_one.sql_ok(CALL).await;
        assert_eq!(
            one_by_one.version("silver.dim").await,
            v,
            "batch {batch} re-run"
        );
        all_rows.extend(rows);
    }
    union
        .sql_ok(&format!(
            "INSERT INTO bronze.src VALUES {}",
            all_rows.join(", ")
        ))
        .await;
    union.sql_ok(CALL).await;
    let a = dim(&one_by_one).await;
    assert_eq!(a, dim(&union).await, "one by one ≠ union");

    let mut by_key: BTreeMap<i64, Vec<&Value>> = BTreeMap::new();
    for r in a.as_array().unwrap() {
        by_key.entry(r["id"].as_i64().unwrap()).or_default().push(r);
    }
    for (id, versions) in by_key {
        let current = versions.iter().filter(|v| v["is_current"] == true).count();
        assert_eq!(current, 1, "key {id}: {versions:?}");
        for pair in versions.windows(2) {
            assert_eq!(pair[0]["vt"], pair[1]["vf"], "key {id}: gap or overlap");
            assert_ne!(
                (&pair[0]["name"], &pair[0]["city"]),
                (&pair[1]["name"], &pair[1]["city"]),
                "key {id}: a version without a change"
            );
        }
        let last = versions.last().unwrap();
        assert_eq!(
            (&last["vt"], &last["is_current"]),
            (&Value::Null, &json!(true))
        );
    }
}
