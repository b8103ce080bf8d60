//! Table management over REST and SQL DDL, and persistence across restarts.

use serde_json::json;

use crate::harness::{Backend, TestServer, message};

crate::on_both_backends!(
    create_list_describe_drop_in_every_layer,
    concurrent_creates_of_one_table_have_one_winner,
    everything_survives_a_restart
);

async fn create_list_describe_drop_in_every_layer(backend: Backend) {
    let s = TestServer::start_on(backend).await;
    let admin = s.admin.clone();
    for layer in ["bronze", "silver", "gold"] {
        let (status, body) = s
            .post_json(&admin, "/api/v1/tables", json!({
                "layer": layer, "name": "events",
                "columns": [
                    {"name": "id", "type": "BIGINT", "nullable": false, "description": "event id"},
                    {"name": "day", "type": "date"},
                    {"name": "price", "type": "decimal(10,2)"}
                ],
                "partition_by": ["day"],
                "description": format!("{layer} events")
            }))
            .await;
        assert_eq!(status, 201, "{body}");
        assert_eq!(body["version"], 0);
        assert_eq!(body["partition_columns"], json!(["day"]));
        assert_eq!(
            body["columns"][0],
            json!({"name": "id", "type": "long", "nullable": false, "description": "event id"})
        );
        assert_eq!(body["columns"][2]["type"], "decimal(10,2)");
        assert_eq!(body["description"], format!("{layer} events"));
        assert_eq!(body["owner"], "admin");
    }
    let (status, body) = s.get(&admin, "/api/v1/tables").await;
    assert_eq!(status, 200);
    let names: Vec<&str> = body["tables"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["full_name"].as_str().unwrap())
        .collect();
    assert_eq!(names, vec!["bronze.events", "silver.events", "gold.events"]);
    let (_, body) = s.get(&admin, "/api/v1/tables?layer=silver").await;
    assert_eq!(body["tables"].as_array().unwrap().len(), 1);

    // Upload a row so file count and size are visible.
    let (status, body) = s
        .upload(
            &admin,
            "gold.events",
            "application/json",
            br#"[{"id":1,"day":"2024-01-02","price":"9.99"}]"#.to_vec(),
            "",
        )
        .await;
    assert_eq!(status, 200, "{body}");
    let (_, body) = s.get(&admin, "/api/v1/tables/gold/events").await;
    assert_eq!(body["version"], 1);
    assert_eq!(body["file_count"], 1);
    assert!(body["size_bytes"].as_u64().unwrap() > 0);

    let (status, body) = s
        .patch_json(
            &admin,
            "/api/v1/tables/gold/events",
            json!({"description": "curated events"}),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    let (_, body) = s.get(&admin, "/api/v1/tables/gold/events").await;
    assert_eq!(body["description"], "curated events");

    let r = s
        .client
        .delete(s.url("/api/v1/tables/gold/events"))
        .bearer_auth(&admin)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 204);
    let (status, body) = s.get(&admin, "/api/v1/tables/gold/events").await;
    assert_eq!(status, 404, "{body}");
    assert_eq!(body["error"]["code"], "not_found");
    let (status, _) = s.sql(&admin, "SELECT * FROM gold.events").await;
    assert_eq!(status, 404);
    // The name can be reused.
    s.create_people("gold.events").await;
    assert_eq!(s.count("gold.events").await, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_table_definitions_are_rejected_clearly() {
    let s = TestServer::start().await;
    let admin = s.admin.clone();
    s.create_people("gold.people").await;
    let cases = [
        (
            json!({"layer": "gold", "name": "people", "columns": [{"name": "a", "type": "int"}]}),
            409,
            "already exists",
        ),
        (
            json!({"layer": "platinum", "name": "t", "columns": [{"name": "a", "type": "int"}]}),
            404,
            "layer",
        ),
        (
            json!({"layer": "gold", "name": "bad-name", "columns": [{"name": "a", "type": "int"}]}),
            400,
            "invalid name",
        ),
        (
            json!({"layer": "gold", "name": "t", "columns": [{"name": "a", "type": "geometry"}]}),
            400,
            "unknown type",
        ),
        (
            json!({"layer": "gold", "name": "t", "columns": []}),
            400,
            "at least one column",
        ),
        (
            json!({"layer": "gold", "name": "t", "columns": [{"name": "a", "type": "int"}, {"name": "A", "type": "int"}]}),
            400,
            "twice",
        ),
        (
            json!({"layer": "gold", "name": "t", "columns": [{"name": "a", "type": "int"}], "partition_by": ["b"]}),
            400,
            "partition column b",
        ),
        (
            json!({"layer": "gold", "name": "t", "columns": [{"name": "a", "type": "int"}], "bogus": 1}),
            400,
            "unknown field",
        ),
    ];
    for (req, status, needle) in cases {
        let (got, body) = s.post_json(&admin, "/api/v1/tables", req.clone()).await;
        assert_eq!(got, status, "{req}: {body}");
        assert!(message(&body).contains(needle), "{req}: {body}");
    }
    // Nothing half-created.
    let (_, body) = s.get(&admin, "/api/v1/tables").await;
    assert_eq!(body["tables"].as_array().unwrap().len(), 1);
}

async fn concurrent_creates_of_one_table_have_one_winner(backend: Backend) {
    let s = TestServer::start_on(backend).await;
    let mut handles = Vec::new();
    for _ in 0..6 {
        let client = s.client.clone();
        let url = s.url("/api/v1/tables");
        let token = s.admin.clone();
        handles.push(tokio::spawn(async move {
            client
                .post(url)
                .bearer_auth(token)
                .json(&json!({"layer": "silver", "name": "race", "columns": [{"name": "a", "type": "int"}]}))
                .send()
                .await
                .unwrap()
                .status()
                .as_u16()
        }));
    }
    let mut statuses = Vec::new();
    for h in handles {
        statuses.push(h.await.unwrap());
    }
    assert_eq!(
        statuses.iter().filter(|s| **s == 201).count(),
        1,
        "{statuses:?}"
    );
    assert!(
        statuses.iter().all(|s| *s == 201 || *s == 409),
        "{statuses:?}"
    );
}

async fn everything_survives_a_restart(backend: Backend) {
    let s = TestServer::start_on(backend).await;
    s.create_people("silver.people").await;
    for i in 0..3 {
        let row = format!(r#"[{{"id":{i},"name":"p{i}","amount":{i}.5}}]"#);
        let (status, body) = s
            .upload(
                &s.admin.clone(),
                "silver.people",
                "application/json",
                row.into_bytes(),
                "",
            )
            .await;
        assert_eq!(status, 200, "{body}");
    }
    s.sql_ok(
        "CREATE TABLE gold.summary COMMENT 'rollup' AS SELECT count(*) AS n FROM silver.people",
    )
    .await;
    let before = s
        .get(&s.admin.clone(), "/api/v1/tables/silver/people")
        .await
        .1;
    let s = s.restart().await;
    let after = s
        .get(&s.admin.clone(), "/api/v1/tables/silver/people")
        .await
        .1;
    assert_eq!(before, after);
    assert_eq!(after["version"], 3);
    assert_eq!(after["description"], "people");
    assert_eq!(after["columns"][0]["description"], "key");
    assert_eq!(s.count("silver.people").await, 3);
    let body = s
        .sql_ok("SELECT count(*) AS n FROM silver.people VERSION AS OF 1")
        .await;
    assert_eq!(body[0]["n"], 1);
    let (_, summary) = s.get(&s.admin.clone(), "/api/v1/tables/gold/summary").await;
    assert_eq!(summary["description"], "rollup");
    let body = s.sql_ok("SELECT n FROM gold.summary").await;
    assert_eq!(body[0]["n"], 3);
    let (_, history) = s
        .get(&s.admin.clone(), "/api/v1/tables/silver/people/history")
        .await;
    assert_eq!(history["history"].as_array().unwrap().len(), 4);
    // The admin token minted before the restart still works: the dev secret persisted.
    s.stop().await;
}
