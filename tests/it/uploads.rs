//! `POST /api/v1/tables/{layer}/{name}/rows`: every format, validation, idempotency.

use std::sync::Arc;

use arrow::array::{Float64Array, Int32Array, Int64Array, RecordBatch, StringArray};
use arrow::datatypes::{DataType, Field, Schema};
use serde_json::json;

use crate::harness::{Backend, TestServer, message, test_config};

crate::on_both_backends!(
    every_format_appends_and_overwrite_replaces,
    bad_uploads_are_400_and_commit_nothing,
    idempotent_uploads_commit_once
);

fn batch(ids: &[i64]) -> RecordBatch {
    let schema = Arc::new(Schema::new(vec![
        Field::new("id", DataType::Int64, false),
        Field::new("name", DataType::Utf8, true),
    ]));
    RecordBatch::try_new(
        schema,
        vec![
            Arc::new(Int64Array::from(ids.to_vec())),
            Arc::new(StringArray::from(
                ids.iter().map(|i| format!("n{i}")).collect::<Vec<_>>(),
            )),
        ],
    )
    .unwrap()
}

fn parquet_bytes(b: &RecordBatch) -> Vec<u8> {
    let mut out = Vec::new();
    let mut w = parquet::arrow::ArrowWriter::try_new(&mut out, b.schema(), None).unwrap();
    w.write(b).unwrap();
    w.close().unwrap();
    out
}

fn ipc_bytes(b: &RecordBatch) -> Vec<u8> {
    let mut out = Vec::new();
    let mut w = arrow::ipc::writer::StreamWriter::try_new(&mut out, &b.schema()).unwrap();
    w.write(b).unwrap();
    w.finish().unwrap();
    drop(w);
    out
}

async fn every_format_appends_and_overwrite_replaces(backend: Backend) {
    let s = TestServer::start_on(backend).await;
    let admin = s.admin.clone();
    s.create_people("bronze.people").await;
    let uploads: Vec<(&str, Vec<u8>)> = vec![
        (
            "application/json",
            br#"[{"id":1,"name":"a","amount":1.5},{"id":2,"NAME":null}]"#.to_vec(),
        ),
        (
            "application/x-ndjson",
            b"{\"id\":3,\"name\":\"c\"}\n\n{\"id\":4,\"amount\":2}\n".to_vec(),
        ),
        (
            "text/csv; charset=utf-8",
            b"name,id,amount\ne,5,3.25\n,6,\n".to_vec(),
        ),
        (
            "application/vnd.apache.parquet",
            parquet_bytes(&batch(&[7, 8])),
        ),
        (
            "application/vnd.apache.arrow.stream",
            ipc_bytes(&batch(&[9, 10])),
        ),
    ];
    for (i, (ct, body)) in uploads.into_iter().enumerate() {
        let (status, resp) = s.upload(&admin, "bronze.people", ct, body, "").await;
        assert_eq!(status, 200, "{ct}: {resp}");
        assert_eq!(resp["rows"], 2, "{ct}: {resp}");
        assert_eq!(resp["version"], i as u64 + 1);
        assert_eq!(resp["duplicate"], false);
    }
    let rows = s
        .sql_ok("SELECT id, name, amount FROM bronze.people ORDER BY id")
        .await;
    assert_eq!(rows.as_array().unwrap().len(), 10);
    assert_eq!(rows[0], json!({"id": 1, "name": "a", "amount": 1.5}));
    assert_eq!(rows[1], json!({"id": 2, "name": null, "amount": null}));
    assert_eq!(rows[4], json!({"id": 5, "name": "e", "amount": 3.25}));
    assert_eq!(rows[6]["name"], "n7");

    let (status, resp) = s
        .upload(
            &admin,
            "bronze.people",
            "application/json",
            br#"[{"id":100}]"#.to_vec(),
            "?mode=overwrite",
        )
        .await;
    assert_eq!(status, 200, "{resp}");
    assert_eq!(s.count("bronze.people").await, 1);
    // Overwrite keeps history: the old rows are still there by version.
    let old = s
        .sql_ok("SELECT count(*) AS n FROM bronze.people VERSION AS OF 5")
        .await;
    assert_eq!(old[0]["n"], 10);
}

async fn bad_uploads_are_400_and_commit_nothing(backend: Backend) {
    let s = TestServer::start_on(backend).await;
    let admin = s.admin.clone();
    s.create_people("bronze.people").await;
    let good = parquet_bytes(&batch(&[1, 2, 3]));
    let mut truncated_ipc = ipc_bytes(&batch(&[1, 2, 3]));
    truncated_ipc.truncate(truncated_ipc.len() / 2);
    let wrong_type = {
        let schema = Arc::new(Schema::new(vec![Field::new("id", DataType::Utf8, false)]));
        RecordBatch::try_new(schema, vec![Arc::new(StringArray::from(vec!["1", "x"]))]).unwrap()
    };
    let extra_col = {
        let schema = Arc::new(Schema::new(vec![
            Field::new("id", DataType::Int32, false),
            Field::new("surprise", DataType::Float64, true),
        ]));
        RecordBatch::try_new(
            schema,
            vec![
                Arc::new(Int32Array::from(vec![1])),
                Arc::new(Float64Array::from(vec![1.0])),
            ],
        )
        .unwrap()
    };
    let cases: Vec<(&str, Vec<u8>, u16, Vec<&str>)> = vec![
        (
            "application/json",
            br#"[{"id":1},{"id":"abc"}]"#.to_vec(),
            400,
            vec!["row 2"],
        ),
        (
            "application/json",
            br#"[{"id":1},{"id":2,"color":"red"}]"#.to_vec(),
            400,
            vec!["row 2", "color"],
        ),
        (
            "application/json",
            br#"[{"id":1},{"name":"no id"}]"#.to_vec(),
            400,
            vec!["row 2", "id", "NOT NULL"],
        ),
        (
            "application/json",
            br#"[{"id":1},{"id":2"#.to_vec(),
            400,
            vec!["invalid JSON"],
        ),
        (
            "application/json",
            br#"{"id":1}"#.to_vec(),
            400,
            vec!["array"],
        ),
        (
            "application/x-ndjson",
            b"{\"id\":1}\n{\"id\":\n".to_vec(),
            400,
            vec!["line 2"],
        ),
        (
            "text/csv",
            b"id,name\n1,a\n2,b,extra\n".to_vec(),
            400,
            vec!["CSV"],
        ),
        (
            "text/csv",
            b"id,name\n1,a\nxyz,b\n".to_vec(),
            400,
            vec!["xyz"],
        ),
        (
            "text/csv",
            b"id,nickname\n1,a\n".to_vec(),
            400,
            vec!["nickname"],
        ),
        (
            "text/csv",
            b"name\na\n".to_vec(),
            400,
            vec!["id", "NOT NULL"],
        ),
        (
            "application/vnd.apache.parquet",
            good[..good.len() / 2].to_vec(),
            400,
            vec!["Parquet"],
        ),
        (
            "application/vnd.apache.parquet",
            b"not parquet at all".to_vec(),
            400,
            vec!["Parquet"],
        ),
        (
            "application/vnd.apache.arrow.stream",
            truncated_ipc,
            400,
            vec!["Arrow"],
        ),
        (
            "application/vnd.apache.arrow.stream",
            ipc_bytes(&wrong_type),
            400,
            vec!["column id"],
        ),
        (
            "application/vnd.apache.arrow.stream",
            ipc_bytes(&extra_col),
            400,
            vec!["surprise"],
        ),
        (
            "application/xml",
            b"<rows/>".to_vec(),
            415,
            vec!["content type"],
        ),
    ];
    for (ct, body, status, needles) in cases {
        let (got, resp) = s.upload(&admin, "bronze.people", ct, body, "").await;
        assert_eq!(got, status, "{ct}: {resp}");
        for n in needles {
            assert!(message(&resp).contains(n), "{ct}: {n:?} not in {resp}");
        }
    }
    assert_eq!(
        s.version("bronze.people").await,
        0,
        "a rejected upload must not commit"
    );
    assert_eq!(s.count("bronze.people").await, 0);
    let (status, _) = s
        .upload(
            &admin,
            "bronze.nope",
            "application/json",
            b"[]".to_vec(),
            "",
        )
        .await;
    assert_eq!(status, 404);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oversized_bodies_are_413() {
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = test_config(dir.path());
    cfg.server.max_request_bytes = 1024;
    let s = TestServer::start_with(cfg).await;
    s.create_people("bronze.people").await;
    let big = format!(
        "[{}]",
        vec![r#"{"id":1,"name":"xxxxxxxxxxxxxxxx"}"#; 100].join(",")
    );
    let (status, body) = s
        .upload(
            &s.admin.clone(),
            "bronze.people",
            "application/json",
            big.into_bytes(),
            "",
        )
        .await;
    assert_eq!(status, 413, "{body}");
    assert_eq!(s.version("bronze.people").await, 0);
    s.stop().await;
}

async fn idempotent_uploads_commit_once(backend: Backend) {
    let s = TestServer::start_on(backend).await;
    let admin = s.admin.clone();
    s.create_people("bronze.people").await;
    let body = br#"[{"id":1},{"id":2}]"#.to_vec();
    let (status, first) = s
        .upload(
            &admin,
            "bronze.people",
            "application/json",
            body.clone(),
            "?idempotency_key=batch-001",
        )
        .await;
    assert_eq!(status, 200, "{first}");
    assert_eq!(first["duplicate"], false);
    let (status, again) = s
        .upload(
            &admin,
            "bronze.people",
            "application/json",
            body.clone(),
            "?idempotency_key=batch-001",
        )
        .await;
    assert_eq!(status, 200, "{again}");
    assert_eq!(again["duplicate"], true);
    assert_eq!(again["version"], first["version"]);
    assert_eq!(
        again["rows"], 2,
        "a duplicate reports what the original wrote"
    );
    assert_eq!(s.count("bronze.people").await, 2);

    // Eight concurrent retries of a new key: exactly one commit.
    let mut handles = Vec::new();
    for _ in 0..8 {
        let client = s.client.clone();
        let url = s.url("/api/v1/tables/bronze/people/rows");
        let token = admin.clone();
        let body = body.clone();
        handles.push(tokio::spawn(async move {
            let r = client
                .post(url)
                .bearer_auth(token)
                .header("content-type", "application/json")
                .header("idempotency-key", "batch-002")
                .body(body)
                .send()
                .await
                .unwrap();
            (
                r.status().as_u16(),
                r.json::<serde_json::Value>().await.unwrap(),
            )
        }));
    }
    let mut fresh = 0;
    for h in handles {
        let (status, body) = h.await.unwrap();
        assert_eq!(status, 200, "{body}");
        if body["duplicate"] == false {
            fresh += 1;
        }
    }
    assert_eq!(fresh, 1);
    assert_eq!(s.count("bronze.people").await, 4);
    assert_eq!(s.version("bronze.people").await, 2);

    let (status, body) = s
        .upload(
            &admin,
            "bronze.people",
            "application/json",
            body.clone(),
            "?idempotency_key=bad%20key",
        )
        .await;
    assert_eq!(status, 400, "{body}");
    let (status, resp) = s
        .upload(
            &admin,
            "bronze.people",
            "application/json",
            br#"[{"id":9}]"#.to_vec(),
            "?mode=upsert",
        )
        .await;
    assert_eq!(status, 400, "{resp}");
    assert!(message(&resp).contains("invalid query string"), "{resp}");
    assert_eq!(s.count("bronze.people").await, 4);
}

/// Idempotency keys belong to the principal that sent them: another principal's upload with
/// the same key is its own upload (committed, never reported as a duplicate), and it learns
/// nothing about whether the key was used.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idempotency_keys_are_scoped_to_the_principal() {
    let s = TestServer::start().await;
    s.create_people("bronze.people").await;
    let (status, body) = s
        .put_json(
            &s.admin.clone(),
            "/api/v1/grants",
            serde_json::json!({"grants": [{"role": "loader", "privilege": "INSERT", "on": "bronze"}]}),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    let dave = s.token("dave", &["loader"]);
    let carl = s.token("carl", &["loader"]);
    let upload = |token: String, body: &'static [u8], key: &'static str| {
        let s = &s;
        async move {
            s.upload(
                &token,
                "bronze.people",
                "application/json",
                body.to_vec(),
                &format!("?idempotency_key={key}"),
            )
            .await
        }
    };
    // dave's key, then carl probing it with an empty upload: not a duplicate for carl.
    let (status, r) = upload(dave.clone(), br#"[{"id":1}]"#, "t2-batch-0001").await;
    assert_eq!((status, r["duplicate"].clone()), (200, false.into()), "{r}");
    let (status, r) = upload(carl.clone(), b"[]", "t2-batch-0001").await;
    assert_eq!((status, r["duplicate"].clone()), (200, false.into()), "{r}");
    // carl takes a key first; dave's later upload with it still commits dave's row.
    let (status, r) = upload(carl.clone(), br#"[{"id":2}]"#, "t2-batch-0002").await;
    assert_eq!((status, r["duplicate"].clone()), (200, false.into()), "{r}");
    let (status, r) = upload(dave.clone(), br#"[{"id":3}]"#, "t2-batch-0002").await;
    assert_eq!((status, r["duplicate"].clone()), (200, false.into()), "{r}");
    assert_eq!(r["rows"], 1, "{r}");
    // Each principal's own retry is a duplicate, with its own original outcome.
    let (_, r) = upload(dave.clone(), br#"[{"id":3}]"#, "t2-batch-0002").await;
    assert_eq!(
        (r["duplicate"].clone(), r["rows"].clone()),
        (true.into(), 1.into()),
        "{r}"
    );
    let (_, r) = upload(carl, br#"[{"id":2}]"#, "t2-batch-0002").await;
    assert_eq!(
        (r["duplicate"].clone(), r["rows"].clone()),
        (true.into(), 1.into()),
        "{r}"
    );
    let root = s.token("root", &["admin"]);
    let (_, ids) = s
        .sql(&root, "SELECT id FROM bronze.people ORDER BY id")
        .await;
    assert_eq!(ids, serde_json::json!([{"id": 1}, {"id": 2}, {"id": 3}]));
}
