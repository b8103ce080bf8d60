//! The `scd2` and `time_range` model kinds against the real server: SCD2 history equal to
//! the SCD2 operation applied by hand, late changes skipped or failing, and time ranges
//! replaced one atomic commit per batch; a `merge` model's expectations, and expectations
//! over a batch of many chunks streamed to its write.

use chrono::{Duration, Utc};
use serde_json::{Value, json};

use crate::flows::{ORDERS, SILVER_ORDERS, bundle, deployer, run, with_etl};
use crate::harness::{Backend, TestServer};

const CUSTOMERS: &str = "CREATE TABLE bronze.customers (id BIGINT, tier STRING, op STRING, \
     updated_at TIMESTAMP) TBLPROPERTIES ('delta.enableChangeDataFeed' = 'true')";

const DIM: &str = "/* strata
kind = \"scd2\"
unique_key = [\"id\"]
sequence_by = \"updated_at\"
delete_when = \"op = 'D'\"
*/
SELECT * FROM stream('bronze.customers')";

/// `2026-01-01` plus `s` seconds, as SQL.
fn at(s: i64) -> String {
    format!("TIMESTAMP '2026-01-01T00:00:00Z' + INTERVAL '{s} seconds'")
}

/// What the SCD2 operation does by hand with the same changes the model read.
fn by_hand(from: u64, to: u64) -> String {
    format!(
        "CALL scd2(target => 'silver.dim_hand', keys => 'id', effective_time => 'eff', \
         deleted => 'gone', on_late => 'skip', source => 'SELECT id, tier, op, updated_at, \
         (_change_type = ''delete'' OR op = ''D'') AS gone, CASE WHEN _change_type = ''delete'' \
         THEN CAST(_commit_timestamp AS TIMESTAMP) ELSE CAST(updated_at AS TIMESTAMP) END AS eff \
         FROM table_changes(''bronze.customers'', {from}, {to}) \
         WHERE _change_type IN (''insert'', ''update_postimage'', ''delete'')')"
    )
}

async fn history(s: &TestServer, table: &str) -> Value {
    s.sql_ok(&format!(
        "SELECT id, tier, op, updated_at, valid_from, valid_to, is_current FROM {table} \
         ORDER BY id, valid_from"
    ))
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scd2_models_keep_history_like_scd2_by_hand() {
    let s = TestServer::start_configured(Backend::Local, with_etl).await;
    let token = deployer(&s);
    s.sql_ok(CUSTOMERS).await;
    s.sql_ok(
        "CREATE TABLE silver.dim_hand (id BIGINT, tier STRING, op STRING, updated_at TIMESTAMP, \
         valid_from TIMESTAMP, valid_to TIMESTAMP, is_current BOOLEAN)",
    )
    .await;
    let strict = DIM.replace("delete_when", "on_out_of_order = \"fail\"\ndelete_when");
    let (status, body) = s
        .put_json(
            &token,
            "/api/v1/pipelines/customers",
            bundle(&[("silver/dim.sql", DIM), ("silver/dim_strict.sql", &strict)]),
        )
        .await;
    assert_eq!(status, 200, "{body}");

    let batches = [
        vec![format!(
            "INSERT INTO bronze.customers VALUES (1, 'gold', 'U', {}), (2, 'silver', 'U', {}), \
             (3, 'bronze', 'U', {})",
            at(100),
            at(100),
            at(100)
        )],
        vec![
            format!(
                "UPDATE bronze.customers SET tier = 'platinum', updated_at = {} WHERE id = 1",
                at(200)
            ),
            format!(
                "INSERT INTO bronze.customers VALUES (4, 'gold', 'U', {})",
                at(200)
            ),
            // A soft delete: `delete_when` closes key 3 at its time.
            format!(
                "UPDATE bronze.customers SET op = 'D', updated_at = {} WHERE id = 3",
                at(300)
            ),
        ],
        vec![
            // A hard delete: the change feed's delete closes key 2 when it was committed.
            "DELETE FROM bronze.customers WHERE id = 2".to_string(),
            // Out of order: older than key 4's current version.
            format!(
                "UPDATE bronze.customers SET tier = 'silver', updated_at = {} WHERE id = 4",
                at(150)
            ),
            format!(
                "UPDATE bronze.customers SET tier = 'diamond', updated_at = {} WHERE id = 1",
                at(400)
            ),
        ],
    ];
    let mut strict_version = 0;
    for (i, statements) in batches.iter().enumerate() {
        for sql in statements {
            s.sql_ok(sql).await;
        }
        let record = run(&s, &token, "customers").await;
        let dim = &record["models"]
            .as_array()
            .unwrap()
            .iter()
            .find(|m| m["model"] == "silver.dim")
            .unwrap()
            .clone();
        assert_eq!(dim["status"], "succeeded", "{record}");
        assert_eq!(dim["commits"], 1, "{record}");
        let range = &dim["sources"][0];
        let (from, to) = (
            range["from_version"].as_u64().unwrap(),
            range["to_version"].as_u64().unwrap(),
        );
        s.sql_ok(&by_hand(from, to)).await;
        let strict = record["models"]
            .as_array()
            .unwrap()
            .iter()
            .find(|m| m["model"] == "silver.dim_strict")
            .unwrap()
            .clone();
        if i < 2 {
            assert_eq!(dim["rows_skipped"], 0, "{record}");
            assert_eq!(strict["status"], "succeeded", "{record}");
            strict_version = s.version("silver.dim_strict").await;
        } else {
            // The late change is left out and counted…
            assert_eq!(dim["rows_skipped"], 1, "{record}");
            // …or, with on_out_of_order = "fail", fails the model, which commits nothing.
            assert_eq!(strict["status"], "failed", "{record}");
            let error = strict["error"].as_str().unwrap_or_default();
            assert!(error.contains("late change for key (4)"), "{record}");
            assert_eq!(s.version("silver.dim_strict").await, strict_version);
            assert_eq!(record["status"], "failed", "{record}");
        }
        assert_eq!(
            history(&s, "silver.dim").await,
            history(&s, "silver.dim_hand").await,
            "after batch {}",
            i + 1
        );
    }

    // Independently of the operation: the versions each key must have.
    let rows = s
        .sql_ok(
            "SELECT id, tier, is_current, valid_to IS NULL AS open FROM silver.dim \
             ORDER BY id, valid_from",
        )
        .await;
    let versions: Vec<(i64, String, bool, bool)> = rows
        .as_array()
        .unwrap()
        .iter()
        .map(|r| {
            (
                r["id"].as_i64().unwrap(),
                r["tier"].as_str().unwrap().to_string(),
                r["is_current"].as_bool().unwrap(),
                r["open"].as_bool().unwrap(),
            )
        })
        .collect();
    let expected = [
        (1, "gold", false, false),
        (1, "platinum", false, false),
        (1, "diamond", true, true),
        (2, "silver", false, false),
        (3, "bronze", false, false),
        (4, "gold", true, true),
    ]
    .map(|(id, tier, current, open)| (id, tier.to_string(), current, open));
    assert_eq!(versions, expected);
    let closed = s
        .sql_ok(&format!(
            "SELECT valid_to = {} AS at_soft_delete FROM silver.dim WHERE id = 3",
            at(300)
        ))
        .await;
    assert_eq!(closed, json!([{"at_soft_delete": true}]));

    // Nothing new: no commit.
    let version = s.version("silver.dim").await;
    let record = run(&s, &token, "customers").await;
    let dim = record["models"]
        .as_array()
        .unwrap()
        .iter()
        .find(|m| m["model"] == "silver.dim")
        .unwrap()
        .clone();
    assert_eq!(dim["commits"], 0, "{record}");
    assert_eq!(s.version("silver.dim").await, version);

    // A full refresh (history loss accepted) keeps one open version per current source row.
    let (status, started) = s
        .post_json(
            &token,
            "/api/v1/pipelines/customers/runs",
            json!({"models": ["silver.dim"], "full_refresh": true, "allow_history_loss": true}),
        )
        .await;
    assert_eq!(status, 202, "{started}");
    let record = crate::flows::wait(&s, &token, started["run_id"].as_str().unwrap()).await;
    assert_eq!(record["status"], "succeeded", "{record}");
    let rebuilt = s
        .sql_ok(
            "SELECT id, tier, is_current, valid_to IS NULL AS open, valid_from = updated_at AS from_seq \
             FROM silver.dim ORDER BY id",
        )
        .await;
    assert_eq!(
        rebuilt,
        json!([
            {"id": 1, "tier": "diamond", "is_current": true, "open": true, "from_seq": true},
            {"id": 4, "tier": "silver", "is_current": true, "open": true, "from_seq": true},
        ])
    );
}

pub(crate) const SALES: &str =
    "CREATE TABLE bronze.sales (id BIGINT, amount DOUBLE, qty BIGINT, sold_at TIMESTAMP)";

/// `gold.daily`: revenue per day, one batch per day; `100 / qty` fails on a zero quantity
/// (the injected failure).
pub(crate) fn daily(start: &str) -> String {
    format!(
        "/* strata
kind = \"time_range\"
time_column = \"day\"
batch_size = \"day\"
start = \"{start}\"
lookback = 3
*/
SELECT date_trunc('day', sold_at) AS day, sum(amount) AS revenue, count(*) AS sales,
       sum(100 / qty) AS per_unit
FROM bronze.sales WHERE sold_at >= $start AND sold_at < $end
GROUP BY date_trunc('day', sold_at)"
    )
}

/// (revenue, sales) per day, in day order.
async fn per_day(s: &TestServer) -> Vec<(f64, i64)> {
    s.sql_ok("SELECT revenue, sales FROM gold.daily ORDER BY day")
        .await
        .as_array()
        .unwrap()
        .iter()
        .map(|r| (r["revenue"].as_f64().unwrap(), r["sales"].as_i64().unwrap()))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn time_range_batches_replace_their_range_and_a_failed_batch_leaves_no_hole() {
    let s = TestServer::start_configured(Backend::Local, with_etl).await;
    let token = deployer(&s);
    s.sql_ok(SALES).await;
    let today = Utc::now().date_naive();
    let day = |d: i64| (today - Duration::days(3 - d)).to_string();
    // Four days: three complete ones and today.
    let sale = |id: i64, amount: f64, qty: i64, d: i64| {
        format!(
            "({id}, {amount:.1}, {qty}, TIMESTAMP '{}T06:00:00Z')",
            day(d)
        )
    };
    let rows: Vec<String> = (0..4)
        .map(|d| sale(d, 10.0 * (d + 1) as f64, 1, d))
        .collect();
    s.sql_ok(&format!(
        "INSERT INTO bronze.sales VALUES {}",
        rows.join(", ")
    ))
    .await;
    let (status, body) = s
        .put_json(
            &token,
            "/api/v1/pipelines/sales",
            bundle(&[("gold/daily.sql", &daily(&day(0)))]),
        )
        .await;
    assert_eq!(status, 200, "{body}");

    let record = run(&s, &token, "sales").await;
    assert_eq!(record["status"], "succeeded", "{record}");
    assert_eq!(
        record["models"][0]["commits"], 4,
        "one commit per batch: {record}"
    );
    assert_eq!(
        per_day(&s).await,
        [(10.0, 1), (20.0, 1), (30.0, 1), (40.0, 1)]
    );

    // New sales on every past day, one with a zero quantity on the third: its batch fails.
    let more = [
        sale(10, 1.0, 1, 0),
        sale(11, 2.0, 1, 1),
        sale(12, 3.0, 0, 2),
    ];
    s.sql_ok(&format!(
        "INSERT INTO bronze.sales VALUES {}",
        more.join(", ")
    ))
    .await;
    let version = s.version("gold.daily").await;
    let record = run(&s, &token, "sales").await;
    assert_eq!(record["status"], "failed", "{record}");
    let error = record["models"][0]["error"].as_str().unwrap_or_default();
    assert!(error.to_lowercase().contains("divide by zero"), "{record}");
    assert_eq!(record["models"][0]["commits"], 2, "{record}");
    assert_eq!(s.version("gold.daily").await, version + 2);
    // The first two days are replaced; the failed day keeps its rows (no hole).
    assert_eq!(
        per_day(&s).await,
        [(11.0, 2), (22.0, 2), (30.0, 1), (40.0, 1)]
    );

    // Fixed at the source, the next run fills the range (the lookback reaches back to day 0).
    s.sql_ok("UPDATE bronze.sales SET qty = 1 WHERE id = 12")
        .await;
    let record = run(&s, &token, "sales").await;
    assert_eq!(record["status"], "succeeded", "{record}");
    assert_eq!(record["models"][0]["commits"], 4, "{record}");
    assert_eq!(
        per_day(&s).await,
        [(11.0, 2), (22.0, 2), (33.0, 2), (40.0, 1)]
    );

    // Nothing moved and no day completed: nothing committed.
    let version = s.version("gold.daily").await;
    let record = run(&s, &token, "sales").await;
    assert_eq!(record["status"], "succeeded", "{record}");
    assert_eq!(record["models"][0]["commits"], 0, "{record}");
    assert_eq!(s.version("gold.daily").await, version);

    // A model that writes outside its batch is refused, naming the row.
    let leaky = daily(&day(0)).replace("WHERE sold_at >= $start AND sold_at < $end", "");
    let (status, body) = s
        .put_json(
            &token,
            "/api/v1/pipelines/sales",
            json!({
                "pipeline": {"run_as": "etl"},
                "models": [{"path": "gold/daily.sql", "sql": leaky}],
                "allow_full_refresh": true,
            }),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    s.sql_ok("INSERT INTO bronze.sales VALUES (20, 5.0, 1, TIMESTAMP '2020-01-01T00:00:00Z')")
        .await;
    let record = run(&s, &token, "sales").await;
    assert_eq!(record["status"], "failed", "{record}");
    let error = record["models"][0]["error"].as_str().unwrap_or_default();
    assert!(error.contains("outside its batch"), "{record}");
}

/// Full refreshes: asked for on a run (a `merge` model rebuilt from the source's snapshot
/// in one commit, watermarks moved with it), or needed by a deploy that changes a model's
/// output (refused unless allowed; the next run rebuilds once, with the new schema, and
/// runs carry on incrementally). `append` and `scd2` models refuse unless history loss is
/// accepted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn full_refreshes_rebuild_from_snapshots() {
    use crate::flows::{APPEND, EVENTS, ORDERS, SILVER_ORDERS, ev, ids, insert, reference, silver};
    let s = TestServer::start_configured(Backend::Local, with_etl).await;
    let token = deployer(&s);
    s.sql_ok(ORDERS).await;
    let (status, body) = s
        .put_json(
            &token,
            "/api/v1/pipelines/orders",
            bundle(&[("silver/orders.sql", SILVER_ORDERS)]),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    let mut events = vec![
        ev(1, "ann", 10.0, "I", 1),
        ev(2, "bob", 20.0, "I", 1),
        ev(3, "cy", 30.0, "I", 1),
    ];
    insert(&s, &events).await;
    let record = run(&s, &token, "orders").await;
    assert_eq!(record["status"], "succeeded", "{record}");
    let more = [ev(1, "ann", 11.0, "U", 5), ev(3, "cy", 30.0, "D", 6)];
    insert(&s, &more).await;
    events.extend(more);

    // Asked for: one commit that rebuilds from the snapshot, then nothing is left to read.
    let (status, started) = s
        .post_json(
            &token,
            "/api/v1/pipelines/orders/runs",
            json!({"full_refresh": true}),
        )
        .await;
    assert_eq!(status, 202, "{started}");
    let record = crate::flows::wait(&s, &token, started["run_id"].as_str().unwrap()).await;
    assert_eq!(record["status"], "succeeded", "{record}");
    assert_eq!(record["models"][0]["commits"], 1, "{record}");
    assert_eq!(silver(&s).await, reference(&events));
    let record = run(&s, &token, "orders").await;
    assert_eq!(record["models"][0]["commits"], 0, "{record}");

    // A deploy that stops producing `amount` needs a full refresh: refused unless allowed.
    let cents = SILVER_ORDERS.replace(
        "SELECT order_id, customer, amount, op",
        "SELECT order_id, customer, amount * 100 AS cents, op",
    );
    let changed = bundle(&[("silver/orders.sql", &cents)]);
    let (status, plan) = s
        .put_json(
            &token,
            "/api/v1/pipelines/orders?dry_run=true",
            changed.clone(),
        )
        .await;
    assert_eq!(status, 200, "{plan}");
    assert_eq!(plan["full_refresh_required"], true, "{plan}");
    let (status, body) = s
        .put_json(&token, "/api/v1/pipelines/orders", changed.clone())
        .await;
    assert_eq!(status, 400, "{body}");
    assert!(body.to_string().contains("allow_full_refresh"), "{body}");
    let mut allowed = changed;
    allowed["allow_full_refresh"] = json!(true);
    let (status, body) = s
        .put_json(&token, "/api/v1/pipelines/orders", allowed)
        .await;
    assert_eq!(status, 200, "{body}");
    let record = run(&s, &token, "orders").await;
    assert_eq!(record["status"], "succeeded", "{record}");
    assert_eq!(record["models"][0]["commits"], 1, "{record}");
    let cents_sql = "SELECT order_id, cents FROM silver.orders ORDER BY order_id";
    let expected = |events: &[crate::flows::Event]| {
        json!(
            reference(events)
                .into_iter()
                .map(|(id, (_, amount))| json!({"order_id": id, "cents": amount * 100.0}))
                .collect::<Vec<_>>()
        )
    };
    assert_eq!(s.sql_ok(cents_sql).await, expected(&events));
    let (status, body) = s
        .sql(&s.admin.clone(), "SELECT amount FROM silver.orders")
        .await;
    assert_eq!(status, 400, "the old column is gone: {body}");
    // Rebuilt once: the next runs read changes again.
    let record = run(&s, &token, "orders").await;
    assert_eq!(record["models"][0]["commits"], 0, "{record}");
    let later = [ev(2, "bob", 25.0, "U", 9), ev(4, "dee", 40.0, "I", 9)];
    insert(&s, &later).await;
    events.extend(later);
    let record = run(&s, &token, "orders").await;
    assert_eq!(record["models"][0]["commits"], 1, "{record}");
    assert_eq!(s.sql_ok(cents_sql).await, expected(&events));

    // append (and scd2) rebuild only when the loss of history is accepted.
    s.sql_ok(EVENTS).await;
    s.sql_ok("INSERT INTO bronze.events VALUES (1, 'a'), (2, 'b')")
        .await;
    let (status, body) = s
        .put_json(
            &token,
            "/api/v1/pipelines/events",
            bundle(&[("silver/events.sql", APPEND)]),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    let record = run(&s, &token, "events").await;
    assert_eq!(record["status"], "succeeded", "{record}");
    s.sql_ok("DELETE FROM bronze.events WHERE id = 1").await;
    let (status, body) = s
        .post_json(
            &token,
            "/api/v1/pipelines/events/runs",
            json!({"full_refresh": true}),
        )
        .await;
    assert_eq!(status, 400, "{body}");
    assert!(body.to_string().contains("allow_history_loss"), "{body}");
    let (status, started) = s
        .post_json(
            &token,
            "/api/v1/pipelines/events/runs",
            json!({"full_refresh": true, "allow_history_loss": true}),
        )
        .await;
    assert_eq!(status, 202, "{started}");
    let record = crate::flows::wait(&s, &token, started["run_id"].as_str().unwrap()).await;
    assert_eq!(record["status"], "succeeded", "{record}");
    assert_eq!(ids(&s, "silver.events").await, [2]);
}

/// Delta's expired-log cleanup never removes commits a model still has to read: commits do
/// not clean up logs; VACUUM does, behind the same guard as the change files.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn expired_logs_stay_until_models_consumed_them() {
    use crate::flows::{APPEND, ids};
    let s = TestServer::start_configured(Backend::Local, |cfg| {
        with_etl(cfg);
        cfg.storage.allow_short_vacuum_retention = true;
    })
    .await;
    let token = deployer(&s);
    s.sql_ok(
        "CREATE TABLE bronze.events (id BIGINT, kind STRING) TBLPROPERTIES (\
         'delta.enableChangeDataFeed' = 'true', 'delta.logRetentionDuration' = 'interval 1 second', \
         'delta.checkpointInterval' = '2')",
    )
    .await;
    let (status, body) = s
        .put_json(
            &token,
            "/api/v1/pipelines/events",
            bundle(&[("silver/events.sql", APPEND)]),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    s.sql_ok("INSERT INTO bronze.events VALUES (0, 'a')").await;
    let record = run(&s, &token, "events").await;
    assert_eq!(record["status"], "succeeded", "{record}");
    for id in 1..4 {
        s.sql_ok(&format!("INSERT INTO bronze.events VALUES ({id}, 'a')"))
            .await;
    }
    // Those commits are now past the log retention; more commits write checkpoints, which
    // is when Delta would delete them.
    tokio::time::sleep(std::time::Duration::from_millis(1500)).await;
    for id in 4..7 {
        s.sql_ok(&format!("INSERT INTO bronze.events VALUES ({id}, 'a')"))
            .await;
    }
    // Behind: VACUUM (which now removes expired logs too) is refused.
    let vacuum = json!({"retain_hours": 0, "dry_run": false});
    let admin = s.admin.clone();
    let (status, body) = s
        .post_json(
            &admin,
            "/api/v1/tables/bronze/events/vacuum",
            vacuum.clone(),
        )
        .await;
    assert_eq!(status, 409, "{body}");
    let record = run(&s, &token, "events").await;
    assert_eq!(record["status"], "succeeded", "{record}");
    assert_eq!(ids(&s, "silver.events").await, [0, 1, 2, 3, 4, 5, 6]);

    // Caught up: VACUUM removes the expired log files, and the changes they held are gone
    // for good: a clear 409, not missing rows.
    let (status, body) = s
        .post_json(&admin, "/api/v1/tables/bronze/events/vacuum", vacuum)
        .await;
    assert_eq!(status, 200, "{body}");
    assert!(body["logs_removed"].as_u64().unwrap_or(0) > 0, "{body}");
    let (status, body) = s
        .sql(
            &s.admin.clone(),
            "SELECT id FROM table_changes('bronze.events', 1, 2)",
        )
        .await;
    assert_eq!(status, 409, "{body}");
}

/// A merge model's expectations judge its changes before its MERGE: a dropped change never
/// reaches the table, a quarantined one lands in the quarantine with its rule, and a delete
/// passes unjudged (it carries no new values).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_merge_models_expectations_judge_its_changes_and_pass_its_deletes() {
    let s = TestServer::start_configured(Backend::Local, with_etl).await;
    let token = deployer(&s);
    s.sql_ok(ORDERS).await;
    let model = SILVER_ORDERS.replace(
        "*/",
        "[[expect]]\nname = \"positive\"\ncheck = \"amount > 0\"\non_violation = \"drop\"\n\
         [[expect]]\nname = \"named\"\ncheck = \"customer IS NOT NULL\"\n\
         on_violation = \"quarantine\"\n*/",
    );
    let (status, body) = s
        .put_json(
            &token,
            "/api/v1/pipelines/orders",
            bundle(&[("silver/orders.sql", &model)]),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    s.sql_ok(
        "INSERT INTO bronze.orders VALUES \
         (1, 'c1', 10.0, 'I', TIMESTAMP '2026-01-01 00:00:00'), \
         (2, NULL, 5.0, 'I', TIMESTAMP '2026-01-01 00:00:00'), \
         (3, 'c3', -1.0, 'I', TIMESTAMP '2026-01-01 00:00:00')",
    )
    .await;
    let record = run(&s, &token, "orders").await;
    assert_eq!(record["status"], "succeeded", "{record}");
    let m = &record["models"][0];
    assert_eq!(
        (&m["rows_dropped"], &m["rows_quarantined"]),
        (&json!(1), &json!(1)),
        "{record}"
    );
    let kept = s.sql_ok("SELECT order_id FROM silver.orders").await;
    assert_eq!(kept, json!([{"order_id": 1}]));
    let quarantined = s
        .sql_ok(
            "SELECT order_id, _strata_failed_expectations AS failed FROM silver.orders__quarantine",
        )
        .await;
    assert_eq!(quarantined, json!([{"order_id": 2, "failed": "named"}]));

    // A delete whose values would fail `positive`: it is not judged, and it deletes.
    s.sql_ok(
        "INSERT INTO bronze.orders VALUES (1, 'c1', -5.0, 'D', TIMESTAMP '2026-01-02 00:00:00')",
    )
    .await;
    let record = run(&s, &token, "orders").await;
    assert_eq!(record["status"], "succeeded", "{record}");
    let m = &record["models"][0];
    assert_eq!(m["rows_dropped"], 0, "{record}");
    let positive = m["expectations"]
        .as_array()
        .and_then(|r| r.iter().find(|t| t["name"] == "positive"))
        .unwrap_or_else(|| panic!("{record}"));
    assert_eq!(
        (&positive["rows"], &positive["failed"]),
        (&json!(0), &json!(0)),
        "{record}"
    );
    assert_eq!(s.count("silver.orders").await, 0);
}

/// An append model's rows stream to its write, judged on the way: a `fail` rule broken
/// only by the batch's last rows still commits nothing anywhere (neither the target nor
/// the quarantine), and once it passes, quarantined rows from every chunk land once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_streamed_batch_is_refused_or_quarantined_as_a_whole() {
    let s = TestServer::start_configured(Backend::Local, with_etl).await;
    let token = deployer(&s);
    s.sql_ok(
        "CREATE TABLE bronze.ticks (id BIGINT) \
         TBLPROPERTIES ('delta.enableChangeDataFeed' = 'true')",
    )
    .await;
    s.sql_ok("INSERT INTO bronze.ticks SELECT x AS id FROM (SELECT unnest(range(0, 100000)) AS x)")
        .await;
    let model = |limit: i64| {
        format!(
            "/* strata\nkind = \"append\"\n\
             [[expect]]\nname = \"odd_sevens\"\ncheck = \"id % 1000 <> 7\"\non_violation = \"quarantine\"\n\
             [[expect]]\nname = \"bounded\"\ncheck = \"id < {limit}\"\non_violation = \"fail\"\n\
             */\nSELECT id FROM stream('bronze.ticks')"
        )
    };
    let deploy = |sql: String| {
        let s = &s;
        let token = &token;
        async move {
            let (status, body) = s
                .put_json(
                    token,
                    "/api/v1/pipelines/ticks",
                    bundle(&[("silver/ticks.sql", &sql)]),
                )
                .await;
            assert_eq!(status, 200, "{body}");
        }
    };
    deploy(model(99_999)).await;
    let record = run(&s, &token, "ticks").await;
    assert_eq!(record["status"], "failed", "{record}");
    let error = record["models"][0]["error"].as_str().unwrap_or_default();
    assert!(
        error.contains("bounded") && error.contains("1 of 100000"),
        "{record}"
    );
    assert_eq!(s.count("silver.ticks").await, 0, "{record}");
    let (status, _) = s
        .get(&token, "/api/v1/tables/silver/ticks__quarantine")
        .await;
    assert_eq!(status, 404, "a refused batch quarantines nothing");

    deploy(model(100_000)).await;
    let record = run(&s, &token, "ticks").await;
    assert_eq!(record["status"], "succeeded", "{record}");
    assert_eq!(record["models"][0]["rows_quarantined"], 100, "{record}");
    assert_eq!(s.count("silver.ticks").await, 99_900);
    let q = s
        .sql_ok("SELECT count(*) AS n, count(DISTINCT id) AS d FROM silver.ticks__quarantine")
        .await;
    assert_eq!(q, json!([{"n": 100, "d": 100}]));
}
