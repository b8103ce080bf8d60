//! Schema evolution (ALTER TABLE, COMMENT ON, PATCH, merge_schema uploads) and the change
//! data feed (`table_changes`) under row filters and masks.

use serde_json::{Value, json};

use crate::harness::{TestServer, message};

async fn describe(s: &TestServer, table: &str) -> Value {
    let (status, body) = s
        .get(
            &s.admin.clone(),
            &format!("/api/v1/tables/{}", table.replace('.', "/")),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    body
}

fn column<'a>(info: &'a Value, name: &str) -> &'a Value {
    info["columns"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["name"] == name)
        .unwrap_or_else(|| panic!("no column {name}: {info}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn schema_evolves_through_alter_table_patch_and_merge_schema_uploads() {
    let s = TestServer::start().await;
    let admin = s.admin.clone();
    s.seed_people("bronze.people", 3).await;

    // ADD COLUMN: nullable, last, old rows read NULL; then an upload fills it.
    s.sql_ok(
        "ALTER TABLE bronze.people ADD COLUMN email STRING COMMENT 'contact', ADD COLUMN qty INT",
    )
    .await;
    let info = describe(&s, "bronze.people").await;
    assert_eq!(column(&info, "email")["description"], "contact");
    assert_eq!(column(&info, "qty")["type"], "integer");
    assert_eq!(info["columns"][3]["name"], "email");
    let (status, body) = s
        .upload(
            &admin,
            "bronze.people",
            "application/json",
            br#"[{"id": 4, "name": "p4", "amount": 4, "email": "p4@x", "qty": 7}]"#.to_vec(),
            "",
        )
        .await;
    assert_eq!(status, 200, "{body}");
    let rows = s
        .sql_ok("SELECT count(email) AS e, count(*) AS n, sum(qty) AS q FROM bronze.people")
        .await;
    assert_eq!(rows, json!([{"e": 1, "n": 4, "q": 7}]));
    let (status, body) = s
        .sql(&admin, "ALTER TABLE bronze.people ADD COLUMN email STRING")
        .await;
    assert_eq!(status, 400, "{body}");
    s.sql_ok("ALTER TABLE bronze.people ADD COLUMN IF NOT EXISTS email STRING")
        .await;
    let (status, body) = s
        .sql(
            &admin,
            "ALTER TABLE bronze.people ADD COLUMN code STRING NOT NULL",
        )
        .await;
    assert_eq!(status, 400, "{body}");
    assert!(message(&body).contains("nullable"), "{body}");

    // An unknown column fails without merge_schema, and with it for a writer without MANAGE;
    // nothing is committed either way.
    let version = s.version("bronze.people").await;
    let extra = br#"[{"id": 5, "name": "p5", "amount": 5, "city": "Oslo", "score": 1.5}]"#;
    let (status, body) = s
        .upload(
            &admin,
            "bronze.people",
            "application/json",
            extra.to_vec(),
            "",
        )
        .await;
    assert_eq!(status, 400, "{body}");
    assert!(message(&body).contains("city"), "{body}");
    let (status, body) = s
        .put_json(
            &admin,
            "/api/v1/grants",
            json!({"grants": [
                {"role": "loader", "privilege": "SELECT", "on": "bronze.people"},
                {"role": "loader", "privilege": "INSERT", "on": "bronze.people"}
            ]}),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    let loader = s.token("lou", &["loader"]);
    let (status, body) = s
        .upload(
            &loader,
            "bronze.people",
            "application/json",
            extra.to_vec(),
            "?merge_schema=true",
        )
        .await;
    assert_eq!(status, 403, "{body}");
    // Known columns only: merge_schema changes nothing and needs no MANAGE.
    let (status, body) = s
        .upload(
            &loader,
            "bronze.people",
            "application/json",
            br#"[{"id": 9, "name": "p9"}]"#.to_vec(),
            "?merge_schema=true",
        )
        .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(s.version("bronze.people").await, version + 1);
    let (status, body) = s
        .upload(
            &admin,
            "bronze.people",
            "application/json",
            extra.to_vec(),
            "?merge_schema=true",
        )
        .await;
    assert_eq!(status, 200, "{body}");
    // One commit carries the new columns and the rows.
    assert_eq!(s.version("bronze.people").await, version + 2);
    let info = describe(&s, "bronze.people").await;
    assert_eq!(column(&info, "city")["type"], "string");
    assert_eq!(column(&info, "score")["type"], "double");
    assert_eq!(column(&info, "city")["nullable"], true);
    let csv = b"id,name,rank\n6,p6,3\n".to_vec();
    let (status, body) = s
        .upload(
            &admin,
            "bronze.people",
            "text/csv",
            csv,
            "?merge_schema=true",
        )
        .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(
        column(&describe(&s, "bronze.people").await, "rank")["type"],
        "long"
    );
    let rows = s
        .sql_ok("SELECT id, city, score, rank FROM bronze.people WHERE id >= 5 ORDER BY id")
        .await;
    assert_eq!(
        rows,
        json!([
            {"id": 5, "city": "Oslo", "score": 1.5, "rank": null},
            {"id": 6, "city": null, "score": null, "rank": 3},
            {"id": 9, "city": null, "score": null, "rank": null}
        ])
    );

    // Widening rewrites the table in one commit; older versions keep the old type.
    let before = s.version("bronze.people").await;
    s.sql_ok("ALTER TABLE bronze.people ALTER COLUMN qty TYPE BIGINT")
        .await;
    assert_eq!(s.version("bronze.people").await, before + 1);
    assert_eq!(
        column(&describe(&s, "bronze.people").await, "qty")["type"],
        "long"
    );
    let rows = s
        .sql_ok(
            "SELECT count(*) AS n, sum(qty) AS q, arrow_typeof(max(qty)) AS t FROM bronze.people",
        )
        .await;
    assert_eq!(rows, json!([{"n": 7, "q": 7, "t": "Int64"}]));
    let old = s
        .sql_ok(&format!(
            "SELECT arrow_typeof(qty) AS t FROM bronze.people VERSION AS OF {before} LIMIT 1"
        ))
        .await;
    assert_eq!(old[0]["t"], "Int32");
    for (sql, needle) in [
        (
            "ALTER TABLE bronze.people ALTER COLUMN qty TYPE INT",
            "widening",
        ),
        (
            "ALTER TABLE bronze.people ALTER COLUMN name TYPE BIGINT",
            "widening",
        ),
        (
            "ALTER TABLE bronze.people RENAME COLUMN name TO full_name",
            "column mapping",
        ),
        (
            "ALTER TABLE bronze.people DROP COLUMN city",
            "column mapping",
        ),
        (
            "ALTER TABLE bronze.people SET TBLPROPERTIES ('delta.columnMapping.mode' = 'name')",
            "cannot be set",
        ),
        (
            "ALTER TABLE bronze.people ALTER COLUMN nope TYPE BIGINT",
            "no column nope",
        ),
    ] {
        let version = s.version("bronze.people").await;
        let (status, body) = s.sql(&admin, sql).await;
        assert_eq!(status, 400, "{sql}: {body}");
        assert!(message(&body).contains(needle), "{sql}: {body}");
        assert_eq!(s.version("bronze.people").await, version, "{sql}");
    }

    // NOT NULL can be dropped; comments and properties are kept in Delta's own metadata.
    s.sql_ok("ALTER TABLE bronze.people ALTER COLUMN id DROP NOT NULL")
        .await;
    s.sql_ok("COMMENT ON TABLE bronze.people IS 'everyone'")
        .await;
    s.sql_ok("COMMENT ON COLUMN bronze.people.name IS 'display name'")
        .await;
    s.sql_ok("ALTER TABLE bronze.people SET TBLPROPERTIES ('delta.checkpointInterval' = '20')")
        .await;
    let info = describe(&s, "bronze.people").await;
    assert_eq!(column(&info, "id")["nullable"], true);
    assert_eq!(info["description"], "everyone");
    assert_eq!(column(&info, "name")["description"], "display name");
    assert_eq!(info["properties"]["delta.checkpointInterval"], "20");
    // … and in information_schema, to those who can see the table only.
    let tables = s
        .sql_ok("SELECT table_name, comment FROM information_schema.tables WHERE table_schema = 'bronze'")
        .await;
    assert_eq!(
        tables,
        json!([{"table_name": "people", "comment": "everyone"}])
    );
    let columns = s
        .sql_ok(
            "SELECT column_name, comment FROM information_schema.columns \
             WHERE table_schema = 'bronze' AND table_name = 'people' ORDER BY ordinal_position",
        )
        .await;
    assert_eq!(columns[1]["column_name"], "name", "{columns}");
    assert_eq!(columns[1]["comment"], "display name", "{columns}");
    assert_eq!(columns[2]["comment"], Value::Null, "{columns}");
    let nobody = s.token("nobody", &["nobody"]);
    let (status, hidden) = s
        .sql(
            &nobody,
            "SELECT comment FROM information_schema.tables WHERE comment IS NOT NULL",
        )
        .await;
    assert_eq!(status, 200, "{hidden}");
    assert_eq!(hidden, json!([]));

    // REST PATCH does the same; a bad change is refused before anything commits.
    let version = s.version("bronze.people").await;
    let (status, body) = s
        .patch_json(
            &admin,
            "/api/v1/tables/bronze/people",
            json!({"add_columns": [{"name": "tier", "type": "smallint"}], "properties": {"delta.appendOnly": "maybe"}}),
        )
        .await;
    assert_eq!(status, 400, "{body}");
    assert_eq!(s.version("bronze.people").await, version);
    let (status, body) = s
        .patch_json(
            &admin,
            "/api/v1/tables/bronze/people",
            json!({
                "add_columns": [{"name": "tier", "type": "smallint", "description": "loyalty"}],
                "column_descriptions": {"name": null},
                "description": "all people"
            }),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(column(&body, "tier")["description"], "loyalty");
    assert!(column(&body, "name").get("description").is_none(), "{body}");
    assert_eq!(body["description"], "all people");

    // Schema changes are MANAGE: a loader can see the table but not alter it.
    let (status, body) = s
        .sql(&loader, "ALTER TABLE bronze.people ADD COLUMN x INT")
        .await;
    assert_eq!(status, 403, "{body}");
    let (status, body) = s
        .sql(&loader, "COMMENT ON TABLE bronze.people IS 'mine'")
        .await;
    assert_eq!(status, 403, "{body}");

    // DESCRIBE HISTORY: newest first, who and what; MANAGE only.
    let history = s.sql_ok("DESCRIBE HISTORY bronze.people LIMIT 3").await;
    let history = history.as_array().unwrap();
    assert_eq!(history.len(), 3);
    let latest = s.version("bronze.people").await;
    assert_eq!(history[0]["version"], latest);
    assert_eq!(history[0]["strata_operation"], "SET DESCRIPTION");
    assert_eq!(history[0]["principal"], "admin");
    assert_eq!(history[2]["version"], latest - 2);
    let (status, body) = s.sql(&loader, "DESCRIBE HISTORY bronze.people").await;
    assert_eq!(status, 403, "{body}");
}

const ACCOUNTS: &str = "CREATE TABLE silver.accounts (id BIGINT NOT NULL, region STRING, balance DOUBLE) \
     TBLPROPERTIES ('delta.enableChangeDataFeed' = 'true')";

const FEED: &str = "SELECT id, _change_type AS k, _commit_version AS v, region, balance \
     FROM table_changes('silver.accounts', 2) ORDER BY v, id, k";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn change_feed_shows_every_write_and_obeys_row_filters_and_masks() {
    let s = TestServer::start().await;
    let admin = s.admin.clone();
    s.sql_ok(ACCOUNTS).await;
    let info = describe(&s, "silver.accounts").await;
    assert_eq!(info["properties"]["delta.enableChangeDataFeed"], "true");
    s.sql_ok("INSERT INTO silver.accounts VALUES (1, 'eu', 10), (2, 'eu', 20), (3, 'us', 30), (4, 'us', 40)")
        .await;
    s.sql_ok(
        "MERGE INTO silver.accounts t USING (VALUES (1, 'eu', 11.0, 'U'), (3, 'us', 0.0, 'D'), (5, 'eu', 50.0, 'I')) \
         AS s(id, region, balance, op) ON t.id = s.id \
         WHEN MATCHED AND s.op = 'D' THEN DELETE \
         WHEN MATCHED THEN UPDATE SET balance = s.balance \
         WHEN NOT MATCHED THEN INSERT (id, region, balance) VALUES (s.id, s.region, s.balance)",
    )
    .await;
    s.sql_ok("UPDATE silver.accounts SET balance = 21 WHERE id = 2")
        .await;
    s.sql_ok("DELETE FROM silver.accounts WHERE id = 4").await;
    let row = |id: i64, k: &str, v: i64, region: &str, balance: f64| json!({"id": id, "k": k, "v": v, "region": region, "balance": balance});
    let everything = vec![
        row(1, "update_postimage", 2, "eu", 11.0),
        row(1, "update_preimage", 2, "eu", 10.0),
        row(3, "delete", 2, "us", 30.0),
        row(5, "insert", 2, "eu", 50.0),
        row(2, "update_postimage", 3, "eu", 21.0),
        row(2, "update_preimage", 3, "eu", 20.0),
        row(4, "delete", 4, "us", 40.0),
    ];
    assert_eq!(s.sql_ok(FEED).await, json!(everything));
    // A bounded range; the appended rows of version 1 are inserts.
    let first = s
        .sql_ok("SELECT count(*) AS n, min(_change_type) AS k FROM table_changes('silver.accounts', 1, 1)")
        .await;
    assert_eq!(first, json!([{"n": 4, "k": "insert"}]));

    // A reader limited to eu rows with masked balances sees exactly that in the feed.
    let (status, body) = s
        .put_json(
            &admin,
            "/api/v1/grants",
            json!({"grants": [{"role": "eu_reader", "privilege": "SELECT", "on": "silver.accounts"}]}),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    let (status, body) = s
        .put_json(
            &admin,
            "/api/v1/tables/silver/accounts/policies",
            json!({
                "row_filters": [{"roles": ["eu_reader"], "predicate": "region = 'eu'"}],
                "column_masks": [{"column": "balance", "mask": "-1.0", "exempt_roles": []}]
            }),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    let reader = s.token("ria", &["eu_reader"]);
    let (status, body) = s.sql(&reader, FEED).await;
    assert_eq!(status, 200, "{body}");
    let expected: Vec<Value> = everything
        .iter()
        .filter(|r| r["region"] == "eu")
        .map(|r| {
            let mut r = r.clone();
            r["balance"] = json!(-1.0);
            r
        })
        .collect();
    assert_eq!(body, json!(expected));
    // Masked columns stay masked in predicates too.
    let (status, body) = s
        .sql(
            &reader,
            "SELECT count(*) AS n FROM table_changes('silver.accounts', 0) WHERE balance > 0",
        )
        .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body[0]["n"], 0);
    // Without a grant the table does not exist, feed included.
    let stranger = s.token("sam", &["nobody"]);
    let (status, body) = s.sql(&stranger, FEED).await;
    assert_eq!(status, 404, "{body}");

    // Bad requests say what is wrong.
    s.seed_people("bronze.plain", 2).await;
    for (sql, status, needle) in [
        (
            "SELECT * FROM table_changes('bronze.plain', 0)",
            400,
            "enableChangeDataFeed",
        ),
        (
            "SELECT * FROM table_changes('silver.accounts', 3, 99)",
            400,
            "latest version",
        ),
        (
            "SELECT * FROM table_changes('silver.accounts', 3, 2)",
            400,
            "start ≤ end",
        ),
        (
            "SELECT * FROM table_changes('silver.accounts')",
            400,
            "usage",
        ),
        (
            "SELECT * FROM read_parquet('/etc/passwd')",
            400,
            "table_changes",
        ),
        ("SELECT * FROM table_changes('silver.nope', 0)", 404, ""),
    ] {
        let (got, body) = s.sql(&admin, sql).await;
        assert_eq!(got, status, "{sql}: {body}");
        assert!(message(&body).contains(needle), "{sql}: {body}");
    }

    // Turning the feed on later: changes from then on, not before.
    s.sql_ok("ALTER TABLE bronze.plain SET TBLPROPERTIES ('delta.enableChangeDataFeed' = 'true')")
        .await;
    let on = s.version("bronze.plain").await;
    s.sql_ok("UPDATE bronze.plain SET amount = 0 WHERE id = 1")
        .await;
    let feed = s
        .sql_ok(&format!(
            "SELECT id, _change_type AS k FROM table_changes('bronze.plain', {on}) ORDER BY k"
        ))
        .await;
    assert_eq!(
        feed,
        json!([{"id": 1, "k": "update_postimage"}, {"id": 1, "k": "update_preimage"}])
    );
    let (status, body) = s
        .sql(&admin, "SELECT * FROM table_changes('bronze.plain', 1)")
        .await;
    assert_eq!(status, 400, "{body}");
    assert!(message(&body).contains("version 1"), "{body}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scd2_changes_reach_the_feed() {
    let s = TestServer::start().await;
    s.sql_ok(
        "CREATE TABLE silver.dim (id BIGINT, city STRING, valid_from TIMESTAMP, valid_to TIMESTAMP, is_current BOOLEAN) \
         TBLPROPERTIES ('delta.enableChangeDataFeed' = 'true')",
    )
    .await;
    s.sql_ok("CREATE TABLE bronze.src (id BIGINT, city STRING)")
        .await;
    s.sql_ok("INSERT INTO bronze.src VALUES (1, 'Oslo'), (2, 'Rome')")
        .await;
    let call = "CALL scd2(target => 'silver.dim', source => 'bronze.src', keys => 'id')";
    s.sql_ok(call).await;
    let v1 = s.version("silver.dim").await;
    s.sql_ok("INSERT OVERWRITE bronze.src VALUES (1, 'Oslo'), (2, 'Lima')")
        .await;
    s.sql_ok(call).await;
    let feed = s
        .sql_ok(&format!(
            "SELECT id, city, is_current, _change_type AS k FROM table_changes('silver.dim', {}) ORDER BY k, city",
            v1 + 1
        ))
        .await;
    // Rome's row is closed (pre/post image), Lima's opened.
    assert_eq!(
        feed,
        json!([
            {"id": 2, "city": "Lima", "is_current": true, "k": "insert"},
            {"id": 2, "city": "Rome", "is_current": false, "k": "update_postimage"},
            {"id": 2, "city": "Rome", "is_current": true, "k": "update_preimage"}
        ])
    );
}
