//! Row-level security, adversarially: every bypass class through REST and Flight SQL.

use std::collections::BTreeSet;

use arrow::array::{AsArray, RecordBatch};
use arrow::datatypes::Int64Type;
use arrow_flight::sql::client::FlightSqlServiceClient;
use futures::TryStreamExt;
use serde_json::{Value, json};

use crate::harness::{Backend, TestServer, message};

crate::on_both_backends!(
    writes_must_stay_inside_the_writers_filter,
    policies_are_validated_versioned_and_shared_by_replicas
);

/// gold.sales with rows in eu/us/apac, a region filter for analysts, an open filter for
/// managers, and an email mask.
pub(crate) async fn sales_server() -> TestServer {
    sales_server_on(Backend::Local).await
}

pub(crate) async fn sales_server_on(backend: Backend) -> TestServer {
    let s = TestServer::start_on(backend).await;
    let admin = s.admin.clone();
    s.sql_ok("CREATE TABLE gold.sales (id BIGINT NOT NULL, region STRING, rep STRING, amount DOUBLE, email STRING)").await;
    s.sql_ok(
        "INSERT INTO gold.sales VALUES \
         (1, 'eu', 'ana', 10.0, 'ana@eu.example'), (2, 'eu', 'ben', 20.0, 'ben@eu.example'), \
         (3, 'us', 'cy', 300.0, 'cy@us.example'), (4, 'us', 'dee', 400.0, 'dee@us.example'), \
         (5, 'apac', 'eli', 5000.0, 'eli@apac.example'), (6, 'eu', 'ana', 30.0, 'ana2@eu.example')",
    )
    .await;
    let (status, body) = s
        .put_json(
            &admin,
            "/api/v1/grants",
            json!({"grants": [
                {"role": "analyst", "privilege": "INSERT", "on": "gold.sales"},
                {"role": "manager", "privilege": "SELECT", "on": "gold"}
            ]}),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    let (status, body) = s
        .put_json(
            &admin,
            "/api/v1/tables/gold/sales/policies",
            json!({
                "row_filters": [
                    {"roles": ["analyst"], "predicate": "region = current_claim('region')"},
                    {"roles": ["manager"], "predicate": "true"}
                ],
                "column_masks": [
                    {"column": "email", "mask": "left(email, 2) || '***'", "exempt_roles": ["pii_reader"]}
                ]
            }),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    s
}

pub(crate) fn ann(s: &TestServer) -> String {
    s.token_with("ann", &["analyst"], json!({"region": "eu"}))
}

fn ids(body: &Value) -> Vec<i64> {
    body.as_array()
        .unwrap()
        .iter()
        .map(|r| r["id"].as_i64().unwrap())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_principal_sees_exactly_its_rows_and_masks() {
    let s = sales_server().await;
    let ann = ann(&s);
    let bob = s.token_with("bob", &["analyst"], json!({"region": "us"}));
    let no_claim = s.token_with("nc", &["analyst"], json!({}));
    let mgr = s.token_with("mia", &["manager"], json!({}));
    let pii = s.token_with("pat", &["manager", "pii_reader"], json!({}));
    let bypass = s.token_with("root", &["admin", "policy_bypass"], json!({}));
    let q = "SELECT id, email FROM gold.sales ORDER BY id";
    let (_, body) = s.sql(&ann, q).await;
    assert_eq!(
        body,
        json!([{"id": 1, "email": "an***"}, {"id": 2, "email": "be***"}, {"id": 6, "email": "an***"}])
    );
    assert_eq!(ids(&s.sql(&bob, q).await.1), vec![3, 4]);
    assert_eq!(
        s.sql(&no_claim, q).await.1,
        json!([]),
        "a missing claim keeps no rows"
    );
    assert_eq!(ids(&s.sql(&mgr, q).await.1), vec![1, 2, 3, 4, 5, 6]);
    assert_eq!(s.sql(&pii, q).await.1[0]["email"], "ana@eu.example");
    assert_eq!(s.sql(&bypass, q).await.1[4]["email"], "eli@apac.example");
    // The admin role alone is filtered like everyone else (no filter for its roles: no rows).
    assert_eq!(s.sql(&s.admin.clone(), q).await.1, json!([]));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_statistics_shortcuts_or_error_oracles() {
    let s = sales_server().await;
    let ann = ann(&s);
    let (status, body) = s.sql(&ann, "SELECT count(*) AS n, min(amount) AS lo, max(amount) AS hi, sum(amount) AS total FROM gold.sales").await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(
        body,
        json!([{"n": 3, "lo": 10.0, "hi": 30.0, "total": 60.0}])
    );
    // A user expression that fails on a hidden row must never see one.
    let (status, body) = s
        .sql(&ann, "SELECT count(*) AS n FROM gold.sales WHERE 1 / (CASE WHEN region <> 'eu' THEN 0 ELSE 1 END) = 1")
        .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body[0]["n"], 3);
    let (status, body) = s
        .sql(&ann, "SELECT id, CAST(CASE WHEN amount > 1000 THEN 'x' ELSE '1' END AS INT) AS v FROM gold.sales ORDER BY id")
        .await;
    assert_eq!(status, 200, "{body}");
    // Structurally: no user predicate is pushed below the policy (the Delta scan would run
    // it row by row in parquet, on hidden rows).
    let manager_of_eu = s.token_with("ann", &["analyst", "admin"], json!({"region": "eu"}));
    let (status, body) = s
        .sql(
            &manager_of_eu,
            "EXPLAIN SELECT id FROM gold.sales WHERE amount > 12345 AND rep <> 'zed'",
        )
        .await;
    assert_eq!(status, 200, "{body}");
    let physical = body
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["plan_type"] == "physical_plan")
        .unwrap()["plan"]
        .as_str()
        .unwrap()
        .to_string();
    let inside = physical
        .split("PolicyExec")
        .nth(1)
        .expect("restricted scans go through PolicyExec");
    assert!(
        !inside.contains("12345") && !inside.contains("zed"),
        "user predicate below the policy: {physical}"
    );
    assert!(
        inside.contains("region"),
        "the policy predicate is inside: {physical}"
    );
    // Masked values are what predicates, joins and grouping see.
    let (_, body) = s
        .sql(
            &ann,
            "SELECT count(*) AS n FROM gold.sales WHERE email = 'ana@eu.example'",
        )
        .await;
    assert_eq!(body[0]["n"], 0);
    let (_, body) = s
        .sql(
            &ann,
            "SELECT count(*) AS n FROM gold.sales WHERE email LIKE 'an%example'",
        )
        .await;
    assert_eq!(body[0]["n"], 0);
    let (_, body) = s
        .sql(
            &ann,
            "SELECT email, count(*) AS n FROM gold.sales GROUP BY email ORDER BY email",
        )
        .await;
    assert_eq!(
        body,
        json!([{"email": "an***", "n": 2}, {"email": "be***", "n": 1}])
    );
    let (_, body) = s
        .sql(&ann, "SELECT a.id AS a, b.id AS b FROM gold.sales a JOIN gold.sales b ON a.email = b.email AND a.id < b.id")
        .await;
    assert_eq!(body, json!([{"a": 1, "b": 6}]), "joins see masked values");
    // Subqueries, CTEs, unions, self-joins, windows: all bounded by the filter.
    for sql in [
        "SELECT count(*) AS n FROM gold.sales WHERE id IN (SELECT id FROM gold.sales WHERE region = 'us')",
        "WITH s AS (SELECT * FROM gold.sales) SELECT count(*) AS n FROM s WHERE region <> 'eu'",
        "SELECT count(*) AS n FROM (SELECT id FROM gold.sales UNION ALL SELECT id FROM gold.sales WHERE amount > 100) t WHERE id > 2 AND id < 6",
        "SELECT count(*) AS n FROM gold.sales a JOIN gold.sales b ON a.rep = b.rep WHERE b.region = 'apac'",
        "SELECT count(*) AS n FROM (SELECT rank() OVER (PARTITION BY region ORDER BY amount) AS r, region FROM gold.sales) t WHERE region = 'us'",
        "SELECT count(*) AS n FROM gold.sales VERSION AS OF 1 WHERE region = 'apac'",
    ] {
        let (status, body) = s.sql(&ann, sql).await;
        assert_eq!(status, 200, "{sql}: {body}");
        assert_eq!(body[0]["n"], 0, "{sql}");
    }
    // Time travel to a version from before the policy existed: the current policy applies.
    let (_, body) = s
        .sql(
            &ann,
            "SELECT id FROM gold.sales VERSION AS OF 1 ORDER BY id",
        )
        .await;
    assert_eq!(ids(&body), vec![1, 2, 6]);
}

async fn writes_must_stay_inside_the_writers_filter(backend: Backend) {
    let s = sales_server_on(backend).await;
    let ann = ann(&s);
    let before = s.version("gold.sales").await;
    let (status, body) = s
        .sql(
            &ann,
            "INSERT INTO gold.sales VALUES (10, 'us', 'x', 1.0, 'x@us')",
        )
        .await;
    assert_eq!(status, 403, "{body}");
    assert!(message(&body).contains("row filter"), "{body}");
    let (status, _) = s
        .sql(
            &ann,
            "INSERT INTO gold.sales VALUES (10, 'eu', 'x', 1.0, 'x@eu'), (11, NULL, 'y', 1.0, 'y')",
        )
        .await;
    assert_eq!(status, 403, "NULL region is outside the filter too");
    let (status, _) = s
        .upload(
            &ann,
            "gold.sales",
            "application/json",
            br#"[{"id":12,"region":"apac"}]"#.to_vec(),
            "",
        )
        .await;
    assert_eq!(status, 403);
    assert_eq!(s.version("gold.sales").await, before, "nothing committed");
    let (status, body) = s
        .sql(
            &ann,
            "INSERT INTO gold.sales VALUES (13, 'eu', 'x', 1.0, 'x@eu')",
        )
        .await;
    assert_eq!(status, 200, "{body}");
    let (_, body) = s.sql(&ann, "SELECT count(*) AS n FROM gold.sales").await;
    assert_eq!(body[0]["n"], 4);
    // Overwrite would delete rows ann cannot see.
    let manage = s.token_with("ann", &["analyst", "admin"], json!({"region": "eu"}));
    let (status, body) = s
        .sql(
            &manage,
            "INSERT OVERWRITE gold.sales SELECT * FROM gold.sales",
        )
        .await;
    assert_eq!(status, 403, "{body}");
    // Ingest over Flight is checked as well.
    let mut c = s.flight_client(&ann).await;
    let batches: Vec<RecordBatch> = {
        let info = c
            .execute("SELECT * FROM gold.sales WHERE id = 1".into(), None)
            .await
            .unwrap();
        c.do_get(info.endpoint[0].ticket.clone().unwrap())
            .await
            .unwrap()
            .try_collect()
            .await
            .unwrap()
    };
    let mut us = batches[0].clone();
    let cols: Vec<std::sync::Arc<dyn arrow::array::Array>> = us
        .columns()
        .iter()
        .enumerate()
        .map(|(i, col)| {
            if us.schema().field(i).name() == "region" {
                std::sync::Arc::new(arrow::array::StringArray::from(vec!["us"])) as _
            } else {
                std::sync::Arc::clone(col)
            }
        })
        .collect();
    us = RecordBatch::try_new(us.schema(), cols).unwrap();
    let cmd = arrow_flight::sql::CommandStatementIngest {
        table_definition_options: Some(arrow_flight::sql::TableDefinitionOptions {
            if_not_exist: arrow_flight::sql::TableNotExistOption::Fail as i32,
            if_exists: arrow_flight::sql::TableExistsOption::Append as i32,
        }),
        table: "sales".into(),
        schema: Some("gold".into()),
        ..Default::default()
    };
    // Ingests are checked batch by batch as they stream in: the row outside the filter is
    // found in the third batch, numbered across the upload, and nothing is committed.
    let before = s.count("gold.sales").await;
    let eu = batches[0].clone();
    let e = c
        .execute_ingest(
            cmd,
            futures::stream::iter(vec![Ok(eu.clone()), Ok(eu), Ok(us)]),
        )
        .await
        .unwrap_err();
    assert!(format!("{e:?}").contains("PermissionDenied"), "{e:?}");
    assert!(format!("{e:?}").contains("row 3 violates"), "{e:?}");
    assert_eq!(s.count("gold.sales").await, before);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn flight_returns_the_same_filtered_rows_and_binds_tickets() {
    let s = sales_server().await;
    let ann = ann(&s);
    let channel = tonic::transport::Endpoint::from_shared(format!("http://{}", s.flight))
        .unwrap()
        .connect()
        .await
        .unwrap();
    let mut c = FlightSqlServiceClient::new(channel.clone());
    c.set_token(ann.clone());
    let info = c
        .execute(
            "SELECT count(*) AS n, max(amount) AS hi FROM gold.sales".into(),
            None,
        )
        .await
        .unwrap();
    let batches: Vec<RecordBatch> = c
        .do_get(info.endpoint[0].ticket.clone().unwrap())
        .await
        .unwrap()
        .try_collect()
        .await
        .unwrap();
    assert_eq!(batches[0].column(0).as_primitive::<Int64Type>().value(0), 3);
    // Prepared statement with parameters: filter still first.
    let mut stmt = c
        .prepare(
            "SELECT id FROM gold.sales WHERE amount > $1 ORDER BY id".into(),
            None,
        )
        .await
        .unwrap();
    let params = RecordBatch::try_new(
        std::sync::Arc::new(arrow::datatypes::Schema::new(vec![
            arrow::datatypes::Field::new("$1", arrow::datatypes::DataType::Float64, false),
        ])),
        vec![std::sync::Arc::new(arrow::array::Float64Array::from(vec![
            15.0,
        ]))],
    )
    .unwrap();
    stmt.set_parameters(params).unwrap();
    let info = stmt.execute().await.unwrap();
    let batches: Vec<RecordBatch> = c
        .do_get(info.endpoint[0].ticket.clone().unwrap())
        .await
        .unwrap()
        .try_collect()
        .await
        .unwrap();
    let got: Vec<i64> = batches
        .iter()
        .flat_map(|b| b.column(0).as_primitive::<Int64Type>().values().to_vec())
        .collect();
    assert_eq!(got, vec![2, 6]);
    // Bob (us) replaying ann's ticket is refused, not served bob's or ann's rows.
    let mut b = FlightSqlServiceClient::new(channel);
    b.set_token(s.token_with("bob", &["analyst"], json!({"region": "us"})));
    let r = match b.do_get(info.endpoint[0].ticket.clone().unwrap()).await {
        Err(e) => Err(e),
        Ok(st) => st.try_collect::<Vec<_>>().await,
    };
    assert!(r.is_err());
    // A same-subject token with another region claim is another principal.
    let mut a2 = s
        .flight_client(&s.token_with("ann", &["analyst"], json!({"region": "us"})))
        .await;
    let r = match a2.do_get(info.endpoint[0].ticket.clone().unwrap()).await {
        Err(e) => Err(e),
        Ok(st) => st.try_collect::<Vec<_>>().await,
    };
    assert!(r.is_err(), "claims are part of the binding");
}

async fn policies_are_validated_versioned_and_shared_by_replicas(backend: Backend) {
    let s = sales_server_on(backend).await;
    let admin = s.admin.clone();
    let path = "/api/v1/tables/gold/sales/policies";
    for (body, needle) in [
        (
            json!({"row_filters": [{"roles": ["x"], "predicate": "nope = 1"}]}),
            "nope",
        ),
        (
            json!({"row_filters": [{"roles": ["x"], "predicate": "amount + 1"}]}),
            "not boolean",
        ),
        (
            json!({"row_filters": [{"roles": ["x"], "predicate": "region = "}]}),
            "policy expression",
        ),
        (
            json!({"row_filters": [{"roles": [], "predicate": "true"}]}),
            "role",
        ),
        (
            json!({"row_filters": [{"roles": ["x"], "predicate": "region = current_claim(region)"}]}),
            "current_claim",
        ),
        (
            json!({"column_masks": [{"column": "ghost", "mask": "'*'"}]}),
            "ghost",
        ),
        (
            json!({"column_masks": [{"column": "email", "mask": "'*'"}, {"column": "email", "mask": "'#'"}]}),
            "twice",
        ),
        (
            json!({"row_filters": [{"roles": ["x"], "predicate": "true"}], "bogus": 1}),
            "unknown field",
        ),
    ] {
        let (status, resp) = s.put_json(&admin, path, body.clone()).await;
        assert_eq!(status, 400, "{body}: {resp}");
        assert!(message(&resp).contains(needle), "{body}: {resp}");
    }
    let (status, current) = s.get(&admin, path).await;
    assert_eq!(status, 200);
    let version = current["version"].as_u64().unwrap();
    // Only MANAGE may read or change policies; only admins manage grants.
    let ann = ann(&s);
    assert_eq!(s.get(&ann, path).await.0, 403);
    assert_eq!(s.put_json(&ann, path, json!({})).await.0, 403);
    assert_eq!(s.get(&ann, "/api/v1/grants").await.0, 403);
    assert_eq!(
        s.put_json(&ann, "/api/v1/grants", json!({"grants": []}))
            .await
            .0,
        403
    );
    let (status, _) = s
        .put_json(
            &admin,
            "/api/v1/grants",
            json!({"grants": [{"role": "a", "privilege": "READ", "on": "*"}]}),
        )
        .await;
    assert_eq!(status, 400);
    // Optimistic locking.
    let (status, _) = s
        .put_json(
            &admin,
            path,
            json!({"row_filters": current["row_filters"], "expected_version": version + 5}),
        )
        .await;
    assert_eq!(status, 409);

    // A second replica on the same warehouse.
    let replica = s.replica().await;
    let (_, body) = replica
        .sql(&ann, "SELECT count(*) AS n FROM gold.sales")
        .await;
    assert_eq!(body[0]["n"], 3);
    // Change the policy on the first: the next query on either sees it.
    let (status, body) = s
        .put_json(&admin, path, json!({"row_filters": [{"roles": ["analyst"], "predicate": "region = current_claim('region') AND amount > 15"}], "expected_version": version}))
        .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["version"], version + 1);
    for server in [&s, &replica] {
        let (_, body) = server
            .sql(&ann, "SELECT id, email FROM gold.sales ORDER BY id")
            .await;
        assert_eq!(
            body,
            json!([{"id": 2, "email": "ben@eu.example"}, {"id": 6, "email": "ana2@eu.example"}]),
            "mask removed, filter narrowed"
        );
    }
    // Revoking the grant hides the table entirely.
    let (status, _) = s
        .put_json(&admin, "/api/v1/grants", json!({"grants": []}))
        .await;
    assert_eq!(status, 200);
    let mgr = s.token_with("mia", &["manager"], json!({}));
    let (status, _) = replica.sql(&mgr, "SELECT * FROM gold.sales").await;
    assert_eq!(status, 404);
    let tables: BTreeSet<String> = replica.get(&mgr, "/api/v1/tables").await.1["tables"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["full_name"].as_str().unwrap().to_string())
        .collect();
    assert!(tables.is_empty(), "{tables:?}");
    replica.stop().await;
}

/// A tiny deterministic generator (no extra dependency): xorshift64*.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

fn sorted_rows(body: &Value) -> Vec<String> {
    let mut rows: Vec<String> = body
        .as_array()
        .unwrap_or(&Vec::new())
        .iter()
        .map(|r| {
            // Compare by values in column order, names aside (copies alias the same columns);
            // floats to 9 significant digits: a sum's last bits follow the order the rows
            // were stored in, which a copy need not keep.
            r.as_object()
                .unwrap()
                .values()
                .map(|v| match v.as_f64() {
                    Some(f) if v.is_f64() => format!("{f:.9e}"),
                    _ => v.to_string(),
                })
                .collect::<Vec<_>>()
                .join("|")
        })
        .collect();
    rows.sort();
    rows
}

/// Differential property: for random queries, the result as principal P equals the same
/// query run with the bypass role over copies of the tables pre-filtered and pre-masked
/// for P.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn differential_results_equal_prefiltered_copies() {
    let s = sales_server().await;
    let root = s.token_with("root", &["admin", "policy_bypass"], json!({}));
    let regions = ["eu", "us", "apac", "latam"];
    let reps = ["ana", "ben", "cy", "dee", "eli", "fay", "gus"];
    let mut rng = Rng(0x9E37_79B9_7F4A_7C15);
    let values: Vec<String> = (100..300)
        .map(|id| {
            let region = regions[rng.below(4) as usize];
            let rep = reps[rng.below(7) as usize];
            let amount = rng.below(10_000) as f64 / 10.0;
            let email = if rng.below(10) == 0 {
                "NULL".to_string()
            } else {
                format!("'{rep}{id}@{region}.example'")
            };
            format!("({id}, '{region}', '{rep}', {amount}, {email})")
        })
        .collect();
    let (status, body) = s
        .sql(
            &root,
            &format!("INSERT INTO gold.sales VALUES {}", values.join(", ")),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    s.sql_ok("CREATE TABLE gold.reps (rep STRING, team STRING)")
        .await;
    s.sql_ok("INSERT INTO gold.reps VALUES ('ana', 'north'), ('ben', 'north'), ('cy', 'south'), ('dee', 'south'), ('eli', 'east'), ('fay', 'east')").await;
    let mask = "left(email, 2) || '***' AS email";
    let principals = [
        (
            "ann",
            ann(&s),
            format!("SELECT id, region, rep, amount, {mask} FROM gold.sales WHERE region = 'eu'"),
        ),
        (
            "bob",
            s.token_with("bob", &["analyst"], json!({"region": "us"})),
            format!("SELECT id, region, rep, amount, {mask} FROM gold.sales WHERE region = 'us'"),
        ),
        (
            "mia",
            s.token_with("mia", &["manager"], json!({})),
            format!("SELECT id, region, rep, amount, {mask} FROM gold.sales"),
        ),
    ];
    for (name, _, copy) in &principals {
        let (status, body) = s
            .sql(&root, &format!("CREATE TABLE gold.sales_{name} AS {copy}"))
            .await;
        assert_eq!(status, 200, "{body}");
    }
    let templates: [&dyn Fn(&mut Rng) -> String; 10] = [
        &|r| {
            format!(
                "SELECT region, count(*) AS n, sum(amount) AS s FROM {{T}} WHERE amount > {} GROUP BY region",
                r.below(1000)
            )
        },
        &|r| {
            format!(
                "SELECT a.id AS a, b.id AS b FROM {{T}} a JOIN {{T}} b ON a.rep = b.rep AND a.id < b.id WHERE a.amount > {}",
                r.below(900)
            )
        },
        &|r| {
            format!(
                "SELECT id FROM {{T}} WHERE id IN (SELECT id FROM {{T}} WHERE amount < {})",
                r.below(1000)
            )
        },
        &|r| {
            format!(
                "WITH c AS (SELECT rep, max(amount) AS m FROM {{T}} GROUP BY rep) SELECT rep, m FROM c WHERE m > {}",
                r.below(1000)
            )
        },
        &|r| {
            format!(
                "SELECT id FROM {{T}} WHERE amount > {} UNION SELECT id FROM {{T}} WHERE rep = '{}'",
                r.below(1000),
                ["ana", "cy", "gus"][r.below(3) as usize]
            )
        },
        &|r| {
            format!(
                "SELECT id, rank() OVER (PARTITION BY region ORDER BY amount DESC, id) AS rk FROM {{T}} WHERE amount > {}",
                r.below(500)
            )
        },
        &|_| "SELECT email, count(*) AS n FROM {T} GROUP BY email".to_string(),
        &|r| {
            format!(
                "SELECT t.id, x.team FROM {{T}} t JOIN gold.reps x ON t.rep = x.rep WHERE x.team = '{}'",
                ["north", "south", "east"][r.below(3) as usize]
            )
        },
        &|_| {
            "SELECT min(amount) AS lo, max(amount) AS hi, count(*) AS n, count(email) AS e FROM {T}"
                .to_string()
        },
        &|r| {
            format!(
                "SELECT rep, count(*) AS n FROM {{T}} WHERE NOT EXISTS (SELECT 1 FROM gold.reps x WHERE x.rep = {{T}}.rep) OR amount > {} GROUP BY rep",
                r.below(1000)
            )
        },
    ];
    let mut checked = 0;
    for i in 0..40 {
        let template = templates[i % templates.len()];
        let q = template(&mut rng);
        for (name, token, _) in &principals {
            let (status, got) = s.sql(token, &q.replace("{T}", "gold.sales")).await;
            assert_eq!(status, 200, "{name}: {q}: {got}");
            let (status, want) = s
                .sql(&root, &q.replace("{T}", &format!("gold.sales_{name}")))
                .await;
            assert_eq!(status, 200, "reference {name}: {q}: {want}");
            assert_eq!(sorted_rows(&got), sorted_rows(&want), "{name}: {q}");
            checked += 1;
        }
    }
    assert_eq!(checked, 120);
}

/// Whole-table figures (version, files, bytes) move with other tenants' writes: only MANAGE
/// holders see them, in the description and the list alike.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn storage_figures_are_for_managers_only() {
    let s = sales_server().await;
    let ann = ann(&s);
    let (status, mine) = s.get(&ann, "/api/v1/tables/gold/sales").await;
    assert_eq!(status, 200, "{mine}");
    let (_, listed) = s.get(&ann, "/api/v1/tables").await;
    let listed = &listed["tables"][0];
    for key in ["version", "file_count", "size_bytes"] {
        assert!(mine.get(key).is_none(), "{key}: {mine}");
        assert!(listed.get(key).is_none(), "{key}: {listed}");
    }
    assert_eq!(mine["columns"].as_array().unwrap().len(), 5);
    let (_, full) = s.get(&s.admin.clone(), "/api/v1/tables/gold/sales").await;
    assert!(full["version"].as_u64().is_some(), "{full}");
    assert!(full["size_bytes"].as_u64().unwrap() > 0, "{full}");
}

/// A claim of the wrong type (numeric, boolean, array, object) is bound as NULL or compared
/// after a TRY_CAST: no rows, never an error quoting a row; a policy that fails on a value
/// reports what failed, never the value.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mistyped_claims_and_failing_policies_never_quote_values() {
    let s = sales_server().await;
    for claim in [
        json!(5),
        json!(true),
        json!(["eu"]),
        json!({"r": "eu"}),
        json!(1.5),
    ] {
        let t = s.token_with("odd", &["analyst"], json!({ "region": claim }));
        let (status, body) = s.sql(&t, "SELECT id FROM gold.sales ORDER BY id").await;
        assert_eq!((status, body.clone()), (200, json!([])), "{claim}: {body}");
    }
    let (status, _) = s
        .put_json(
            &s.admin.clone(),
            "/api/v1/tables/gold/sales/policies",
            json!({"row_filters": [{"roles": ["analyst"], "predicate": "rep = current_claim('rep') OR to_timestamp(email) < now()"}]}),
        )
        .await;
    assert_eq!(status, 200);
    let ana = s.token_with("ana", &["analyst"], json!({"rep": "ana"}));
    let (status, body) = s.sql(&ana, "SELECT id FROM gold.sales").await;
    // to_timestamp fails on every email: the error says a policy failed, not on what.
    assert_eq!(status, 500, "{body}");
    let text = body.to_string();
    for hidden in ["cy@us", "eli@apac", "example"] {
        assert!(!text.contains(hidden), "{text}");
    }
}

/// A plan kept between GetFlightInfo and DoGet (or between two identical REST queries) is
/// only used while the policies it was planned under are in force: a policy change in
/// between is seen by the very next execution.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kept_plans_never_outlive_a_policy_change() {
    let s = sales_server().await;
    let ann = ann(&s);
    let q = "SELECT id FROM gold.sales ORDER BY id";
    assert_eq!(ids(&s.sql(&ann, q).await.1), vec![1, 2, 6]);
    let mut c = s.flight_client(&ann).await;
    let info = c.execute(q.into(), None).await.unwrap();
    let (status, body) = s
        .put_json(
            &s.admin.clone(),
            "/api/v1/tables/gold/sales/policies",
            json!({"row_filters": [{"roles": ["analyst"], "predicate": "region = current_claim('region') AND amount > 15"}]}),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    // REST: the same text by the same principal, planned again under the new policy.
    assert_eq!(ids(&s.sql(&ann, q).await.1), vec![2, 6]);
    // Flight: the ticket from before the change runs under the new policy.
    let batches: Vec<RecordBatch> = c
        .do_get(info.endpoint[0].ticket.clone().unwrap())
        .await
        .unwrap()
        .try_collect()
        .await
        .unwrap();
    let got: Vec<i64> = batches
        .iter()
        .flat_map(|b| b.column(0).as_primitive::<Int64Type>().values().to_vec())
        .collect();
    assert_eq!(got, vec![2, 6]);
}
