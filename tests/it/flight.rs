//! Flight SQL over the real `FlightSqlServiceClient`: every command, auth, tickets, cancel,
//! message sizes.

use std::sync::Arc;

use arrow::array::{Array, AsArray, Int64Array, RecordBatch, StringArray};
use arrow::datatypes::{DataType, Field, Int64Type, Schema};
use arrow_flight::flight_service_client::FlightServiceClient;
use arrow_flight::sql::client::FlightSqlServiceClient;
use arrow_flight::sql::{
    CommandGetDbSchemas, CommandGetPrimaryKeys, CommandGetTables, CommandGetXdbcTypeInfo,
    CommandStatementIngest, SqlInfo, TableDefinitionOptions, TableExistsOption,
    TableNotExistOption,
};
use arrow_flight::{CancelFlightInfoRequest, CancelStatus, FlightInfo, HandshakeRequest};
use base64::Engine as _;
use futures::{StreamExt, TryStreamExt};
use tonic::transport::Channel;

use crate::harness::TestServer;

async fn channel(s: &TestServer) -> Channel {
    tonic::transport::Endpoint::from_shared(format!("http://{}", s.flight))
        .unwrap()
        .connect()
        .await
        .unwrap()
}

pub(crate) async fn client(s: &TestServer, token: &str) -> FlightSqlServiceClient<Channel> {
    let mut c = FlightSqlServiceClient::new(channel(s).await);
    c.set_token(token.to_string());
    c
}

/// All batches behind a FlightInfo.
pub(crate) async fn fetch(
    c: &mut FlightSqlServiceClient<Channel>,
    info: &FlightInfo,
) -> Result<Vec<RecordBatch>, arrow_flight::error::FlightError> {
    let mut out = Vec::new();
    for ep in &info.endpoint {
        let ticket = ep.ticket.clone().unwrap();
        let batches: Vec<RecordBatch> = c.do_get(ticket).await?.try_collect().await?;
        out.extend(batches);
    }
    Ok(out)
}

async fn query(c: &mut FlightSqlServiceClient<Channel>, sql: &str) -> Vec<RecordBatch> {
    let info = c.execute(sql.to_string(), None).await.unwrap();
    fetch(c, &info).await.unwrap()
}

fn rows(batches: &[RecordBatch]) -> usize {
    batches.iter().map(RecordBatch::num_rows).sum()
}

fn status_code(e: &arrow_flight::error::FlightError) -> tonic::Code {
    match e {
        arrow_flight::error::FlightError::Tonic(s) => s.code(),
        other => panic!("not a gRPC status: {other:?}"),
    }
}

async fn handshake(
    s: &TestServer,
    authorization: &str,
) -> Result<tonic::Response<tonic::Streaming<arrow_flight::HandshakeResponse>>, tonic::Status> {
    let mut client = FlightServiceClient::new(channel(s).await);
    let mut req = tonic::Request::new(futures::stream::iter(vec![HandshakeRequest::default()]));
    req.metadata_mut()
        .insert("authorization", authorization.parse().unwrap());
    client.handshake(req).await
}

async fn cancel(
    c: &mut FlightSqlServiceClient<Channel>,
    info: &FlightInfo,
) -> Result<CancelStatus, arrow_flight::error::FlightError> {
    use prost::Message;
    let action = arrow_flight::Action::new(
        "CancelFlightInfo",
        CancelFlightInfoRequest::new(info.clone()).encode_to_vec(),
    );
    let mut results = c.do_action(action).await?;
    let r = results.message().await?.expect("a result");
    let result = arrow_flight::CancelFlightInfoResult::decode(r.body).unwrap();
    Ok(result.status())
}

async fn seeded() -> TestServer {
    let s = TestServer::start().await;
    s.seed_people("gold.people", 20).await;
    s.create_people("silver.hidden").await;
    s
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn handshake_accepts_basic_with_jwt_password_and_returns_bearer() {
    let s = TestServer::start().await;
    let basic = base64::engine::general_purpose::STANDARD.encode(format!("admin:{}", s.admin));
    let resp = handshake(&s, &format!("Basic {basic}")).await.unwrap();
    let bearer = resp
        .metadata()
        .get("authorization")
        .unwrap()
        .to_str()
        .unwrap()
        .to_string();
    assert_eq!(bearer, format!("Bearer {}", s.admin));
    // The client library's own handshake stores the bearer token and uses it afterwards.
    let mut c = FlightSqlServiceClient::new(channel(&s).await);
    c.handshake("admin", &s.admin).await.unwrap();
    assert_eq!(rows(&query(&mut c, "SELECT 1 AS x").await), 1);

    let bad = base64::engine::general_purpose::STANDARD.encode("admin:not-a-token");
    let err = handshake(&s, &format!("Basic {bad}")).await.unwrap_err();
    assert_eq!(err.code(), tonic::Code::Unauthenticated);
    // Every other RPC needs a token too.
    let mut anon = FlightSqlServiceClient::new(channel(&s).await);
    for e in [
        anon.execute("SELECT 1".into(), None).await.unwrap_err(),
        anon.get_catalogs().await.unwrap_err(),
        anon.get_sql_info(vec![SqlInfo::FlightSqlServerName])
            .await
            .unwrap_err(),
    ] {
        assert_eq!(status_code(&e), tonic::Code::Unauthenticated, "{e:?}");
    }
    let mut wrong = client(&s, "x.y.z").await;
    assert_eq!(
        status_code(
            &wrong
                .get_tables(CommandGetTables::default())
                .await
                .unwrap_err()
        ),
        tonic::Code::Unauthenticated
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn statements_prepared_statements_and_twelve_parameters() {
    let s = seeded().await;
    let mut c = client(&s, &s.admin).await;
    let batches = query(
        &mut c,
        "SELECT id, name FROM gold.people WHERE id <= 3 ORDER BY id",
    )
    .await;
    assert_eq!(rows(&batches), 3);
    // JDBC cannot read view types: strings arrive as Utf8 by default.
    assert_eq!(batches[0].schema().field(1).data_type(), &DataType::Utf8);

    // Twelve parameters, bound by number ($10 is the tenth value, not the second).
    let sql = "SELECT id FROM gold.people WHERE id IN ($1,$2,$3,$4,$5,$6,$7,$8,$9) OR id = $10 OR id = $11 OR name = $12 ORDER BY id";
    let mut stmt = c.prepare(sql.to_string(), None).await.unwrap();
    assert_eq!(stmt.parameter_schema().unwrap().fields().len(), 12);
    let mut fields: Vec<Field> = (1..=11)
        .map(|i| Field::new(format!("${i}"), DataType::Int64, false))
        .collect();
    fields.push(Field::new("$12", DataType::Utf8, false));
    let mut cols: Vec<Arc<dyn Array>> = [1, 2, 3, 4, 5, 6, 7, 8, 9, 17, 18]
        .into_iter()
        .map(|v| Arc::new(Int64Array::from(vec![v as i64])) as Arc<dyn Array>)
        .collect();
    cols.push(Arc::new(StringArray::from(vec!["p20"])));
    stmt.set_parameters(RecordBatch::try_new(Arc::new(Schema::new(fields)), cols).unwrap())
        .unwrap();
    let info = stmt.execute().await.unwrap();
    let batches = fetch(&mut c, &info).await.unwrap();
    let ids: Vec<i64> = batches
        .iter()
        .flat_map(|b| b.column(0).as_primitive::<Int64Type>().values().to_vec())
        .collect();
    assert_eq!(ids, vec![1, 2, 3, 4, 5, 6, 7, 8, 9, 17, 18, 20]);
    stmt.close().await.unwrap();

    // A client may also send the prepared command itself as the DoGet ticket.
    {
        use arrow_flight::sql::{
            ActionCreatePreparedStatementRequest, ActionCreatePreparedStatementResult,
            CommandPreparedStatementQuery, ProstMessageExt,
        };
        use prost::Message;
        let req = ActionCreatePreparedStatementRequest {
            query: "SELECT id FROM gold.people WHERE id <= 2 ORDER BY id".into(),
            transaction_id: None,
        };
        let mut results = c
            .do_action(arrow_flight::Action::new(
                "CreatePreparedStatement",
                req.as_any().encode_to_vec(),
            ))
            .await
            .unwrap();
        let body = results.message().await.unwrap().unwrap().body;
        let created: ActionCreatePreparedStatementResult = arrow_flight::sql::Any::decode(body)
            .unwrap()
            .unpack()
            .unwrap()
            .unwrap();
        let cmd = CommandPreparedStatementQuery {
            prepared_statement_handle: created.prepared_statement_handle,
        };
        let batches: Vec<RecordBatch> = c
            .do_get(arrow_flight::Ticket::new(cmd.as_any().encode_to_vec()))
            .await
            .unwrap()
            .try_collect()
            .await
            .unwrap();
        assert_eq!(rows(&batches), 2);
        // Another principal cannot use the handle.
        let mut other = client(&s, &s.token("eve", &["admin"])).await;
        let r = match other
            .do_get(arrow_flight::Ticket::new(cmd.as_any().encode_to_vec()))
            .await
        {
            Err(e) => Err(e),
            Ok(st) => st.try_collect::<Vec<_>>().await,
        };
        assert_eq!(status_code(&r.unwrap_err()), tonic::Code::PermissionDenied);
    }

    // Updates: DDL and DML with affected counts.
    assert_eq!(
        c.execute_update(
            "CREATE TABLE silver.t (id BIGINT NOT NULL, v STRING)".into(),
            None
        )
        .await
        .unwrap(),
        0
    );
    assert_eq!(
        c.execute_update(
            "INSERT INTO silver.t VALUES (1, 'a'), (2, 'b')".into(),
            None
        )
        .await
        .unwrap(),
        2
    );
    // A prepared update with several parameter rows runs once per row.
    let mut ins = c
        .prepare("INSERT INTO silver.t VALUES ($1, $2)".into(), None)
        .await
        .unwrap();
    let params = RecordBatch::try_new(
        Arc::new(Schema::new(vec![
            Field::new("$1", DataType::Int64, false),
            Field::new("$2", DataType::Utf8, false),
        ])),
        vec![
            Arc::new(Int64Array::from(vec![3, 4, 5])),
            Arc::new(StringArray::from(vec!["c", "d", "e"])),
        ],
    )
    .unwrap();
    ins.set_parameters(params).unwrap();
    assert_eq!(ins.execute_update().await.unwrap(), 3);
    assert_eq!(s.count("silver.t").await, 5);
    // A later parameter row that fails stops the execution with its error: the rows before
    // it committed (each row is its own statement), the rows after it never run.
    let mut bad = c
        .prepare(
            "INSERT INTO silver.t VALUES (CAST($1 AS INT), $2)".into(),
            None,
        )
        .await
        .unwrap();
    let params = RecordBatch::try_new(
        Arc::new(Schema::new(vec![
            Field::new("$1", DataType::Utf8, false),
            Field::new("$2", DataType::Utf8, false),
        ])),
        vec![
            Arc::new(StringArray::from(vec!["10", "eleven", "12"])),
            Arc::new(StringArray::from(vec!["x", "y", "z"])),
        ],
    )
    .unwrap();
    bad.set_parameters(params).unwrap();
    let e = bad.execute_update().await.unwrap_err();
    assert_eq!(status_code(&e), tonic::Code::InvalidArgument, "{e}");
    assert_eq!(
        s.count("silver.t").await,
        6,
        "row 1 committed, row 3 never ran"
    );
    s.sql_ok("DELETE FROM silver.t WHERE id = 10").await;
    // DDL sent as a query (what DBAPI cursor.execute does) runs exactly once.
    let info = c
        .execute("INSERT INTO silver.t VALUES (6, 'f')".into(), None)
        .await
        .unwrap();
    let summary = fetch(&mut c, &info).await.unwrap();
    assert_eq!(
        summary[0]
            .column_by_name("rows_affected")
            .unwrap()
            .as_primitive::<Int64Type>()
            .value(0),
        1
    );
    let again = fetch(&mut c, &info).await.unwrap();
    assert_eq!(rows(&again), 1);
    assert_eq!(
        s.count("silver.t").await,
        6,
        "DoGet replays the summary, it does not re-run the INSERT"
    );

    // Errors map to gRPC codes.
    let e = c.execute("SELEC 1".into(), None).await.unwrap_err();
    assert_eq!(status_code(&e), tonic::Code::InvalidArgument);
    let e = c
        .execute("SELECT * FROM gold.nope".into(), None)
        .await
        .unwrap_err();
    assert_eq!(status_code(&e), tonic::Code::NotFound);
    let e = c
        .execute_update("CREATE TABLE silver.t (a INT)".into(), None)
        .await
        .unwrap_err();
    assert_eq!(status_code(&e), tonic::Code::AlreadyExists);
    let e = c.begin_transaction().await.unwrap_err();
    assert_eq!(status_code(&e), tonic::Code::Unimplemented);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metadata_commands_show_only_what_the_principal_may_see() {
    let s = seeded().await;
    let mut admin = client(&s, &s.admin).await;
    let analyst_token = s.token("ann", &["analyst"]);
    let mut analyst = client(&s, &analyst_token).await;

    let cats = {
        let info = admin.get_catalogs().await.unwrap();
        fetch(&mut admin, &info).await.unwrap()
    };
    assert_eq!(cats[0].column(0).as_string::<i32>().value(0), "strata");
    let schemas = {
        let info = admin
            .get_db_schemas(CommandGetDbSchemas::default())
            .await
            .unwrap();
        fetch(&mut admin, &info).await.unwrap()
    };
    let names: Vec<&str> = schemas[0]
        .column(1)
        .as_string::<i32>()
        .iter()
        .flatten()
        .collect();
    assert_eq!(names, vec!["bronze", "gold", "silver"]);
    let types = {
        let info = admin.get_table_types().await.unwrap();
        fetch(&mut admin, &info).await.unwrap()
    };
    assert_eq!(types[0].column(0).as_string::<i32>().value(0), "TABLE");

    let all_tables = CommandGetTables {
        include_schema: true,
        ..Default::default()
    };
    let t = {
        let info = admin.get_tables(all_tables.clone()).await.unwrap();
        fetch(&mut admin, &info).await.unwrap()
    };
    let names: Vec<&str> = t[0].column(2).as_string::<i32>().iter().flatten().collect();
    let mut sorted = names.clone();
    sorted.sort();
    assert_eq!(sorted, vec!["hidden", "people"]);
    let schema_bytes = t[0].column(4).as_binary::<i32>().value(0);
    let schema = arrow::ipc::convert::try_schema_from_ipc_buffer(schema_bytes).unwrap();
    assert_eq!(schema.field(0).name(), "id");
    // Descriptions: a column's is JDBC's REMARKS, a table's the schema's `comment`.
    s.sql_ok("COMMENT ON TABLE gold.people IS 'Everyone'").await;
    s.sql_ok("COMMENT ON COLUMN gold.people.name IS 'Display name'")
        .await;
    let t = {
        let info = admin.get_tables(all_tables.clone()).await.unwrap();
        fetch(&mut admin, &info).await.unwrap()
    };
    let people = (0..t[0].num_rows())
        .find(|i| t[0].column(2).as_string::<i32>().value(*i) == "people")
        .unwrap();
    let schema_bytes = t[0].column(4).as_binary::<i32>().value(people);
    let schema = arrow::ipc::convert::try_schema_from_ipc_buffer(schema_bytes).unwrap();
    assert_eq!(schema.metadata()["comment"], "Everyone");
    let name = schema.field_with_name("name").unwrap();
    assert_eq!(name.metadata()["ARROW:FLIGHT:SQL:REMARKS"], "Display name");
    let t = {
        let info = analyst.get_tables(all_tables).await.unwrap();
        fetch(&mut analyst, &info).await.unwrap()
    };
    let names: Vec<&str> = t[0].column(2).as_string::<i32>().iter().flatten().collect();
    assert_eq!(names, vec!["people"], "no grant, no table");
    let filtered = CommandGetTables {
        db_schema_filter_pattern: Some("sil%".into()),
        table_name_filter_pattern: Some("hid%".into()),
        ..Default::default()
    };
    let t = {
        let info = admin.get_tables(filtered).await.unwrap();
        fetch(&mut admin, &info).await.unwrap()
    };
    assert_eq!(t[0].num_rows(), 1);

    let info = {
        let info = admin.get_sql_info(vec![]).await.unwrap();
        fetch(&mut admin, &info).await.unwrap()
    };
    assert!(rows(&info) > 60, "complete SqlInfo: {}", rows(&info));
    let info = {
        let info = admin
            .get_sql_info(vec![
                SqlInfo::FlightSqlServerName,
                SqlInfo::SqlIdentifierQuoteChar,
                SqlInfo::SqlAnsi92SupportedLevel,
                SqlInfo::SqlTransactionsSupported,
            ])
            .await
            .unwrap();
        fetch(&mut admin, &info).await.unwrap()
    };
    assert_eq!(rows(&info), 4);
    let xdbc = {
        let info = admin
            .get_xdbc_type_info(CommandGetXdbcTypeInfo::default())
            .await
            .unwrap();
        fetch(&mut admin, &info).await.unwrap()
    };
    let type_names: Vec<&str> = xdbc[0]
        .column(0)
        .as_string::<i32>()
        .iter()
        .flatten()
        .collect();
    for t in [
        "BIGINT",
        "VARCHAR",
        "DOUBLE",
        "DECIMAL",
        "TIMESTAMP",
        "DATE",
        "BOOLEAN",
    ] {
        assert!(type_names.contains(&t), "{t} missing from {type_names:?}");
    }
    let pk = CommandGetPrimaryKeys {
        table: "people".into(),
        db_schema: Some("gold".into()),
        catalog: None,
    };
    let keys = {
        let info = admin.get_primary_keys(pk).await.unwrap();
        fetch(&mut admin, &info).await.unwrap()
    };
    assert_eq!(rows(&keys), 0);
    let exported = arrow_flight::sql::CommandGetExportedKeys {
        table: "people".into(),
        db_schema: Some("gold".into()),
        catalog: None,
    };
    let info = admin.get_exported_keys(exported).await.unwrap();
    assert_eq!(
        info.clone().try_decode_schema().unwrap().field(0).name(),
        "pk_catalog_name"
    );
    assert_eq!(rows(&fetch(&mut admin, &info).await.unwrap()), 0);
    let imported = arrow_flight::sql::CommandGetImportedKeys {
        table: "people".into(),
        db_schema: Some("gold".into()),
        catalog: None,
    };
    let info = admin.get_imported_keys(imported).await.unwrap();
    assert_eq!(rows(&fetch(&mut admin, &info).await.unwrap()), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tickets_cannot_be_replayed_by_another_principal_or_tampered() {
    let s = seeded().await;
    let ann = s.token("ann", &["analyst"]);
    let bob = s.token("bob", &["analyst"]);
    let mut a = client(&s, &ann).await;
    let info = a
        .execute("SELECT * FROM gold.people".into(), None)
        .await
        .unwrap();
    let ticket = info.endpoint[0].ticket.clone().unwrap();
    let mut b = client(&s, &bob).await;
    let err = match b.do_get(ticket.clone()).await {
        Err(e) => e,
        Ok(stream) => stream.try_collect::<Vec<_>>().await.unwrap_err(),
    };
    assert_eq!(status_code(&err), tonic::Code::PermissionDenied);
    // Same subject, more roles: a different principal.
    let ann_admin = s.token("ann", &["analyst", "admin"]);
    let mut a2 = client(&s, &ann_admin).await;
    let err = match a2.do_get(ticket.clone()).await {
        Err(e) => e,
        Ok(stream) => stream.try_collect::<Vec<_>>().await.unwrap_err(),
    };
    assert_eq!(status_code(&err), tonic::Code::PermissionDenied);
    let mut tampered = ticket.ticket.to_vec();
    let n = tampered.len();
    tampered[n - 3] ^= 0x55;
    let err = match a.do_get(arrow_flight::Ticket::new(tampered)).await {
        Err(e) => e,
        Ok(stream) => stream.try_collect::<Vec<_>>().await.unwrap_err(),
    };
    assert!(
        matches!(
            status_code(&err),
            tonic::Code::InvalidArgument | tonic::Code::Unimplemented
        ),
        "{err:?}"
    );
    // The owner can use it.
    assert_eq!(rows(&fetch(&mut a, &info).await.unwrap()), 20);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ingest_create_append_replace() {
    let s = TestServer::start().await;
    let mut c = client(&s, &s.admin).await;
    let schema = Arc::new(Schema::new(vec![
        Field::new("id", DataType::Int64, false),
        Field::new("label", DataType::Utf8View, true),
        Field::new(
            "ts",
            DataType::Timestamp(arrow::datatypes::TimeUnit::Nanosecond, None),
            true,
        ),
    ]));
    let batch = |ids: Vec<i64>| {
        let n = ids.len();
        RecordBatch::try_new(
            Arc::clone(&schema),
            vec![
                Arc::new(Int64Array::from(ids)),
                Arc::new(arrow::array::StringViewArray::from_iter_values(
                    (0..n).map(|i| format!("l{i}")),
                )),
                Arc::new(arrow::array::TimestampNanosecondArray::from(
                    vec![1_700_000_000_000_000_000i64; n],
                )),
            ],
        )
        .unwrap()
    };
    let cmd =
        |if_not_exist: TableNotExistOption, if_exists: TableExistsOption| CommandStatementIngest {
            table_definition_options: Some(TableDefinitionOptions {
                if_not_exist: if_not_exist as i32,
                if_exists: if_exists as i32,
            }),
            table: "events".into(),
            schema: Some("bronze".into()),
            ..Default::default()
        };
    let n = c
        .execute_ingest(
            cmd(TableNotExistOption::Create, TableExistsOption::Fail),
            futures::stream::iter(vec![Ok(batch(vec![1, 2, 3]))]),
        )
        .await
        .unwrap();
    assert_eq!(n, 3);
    let n = c
        .execute_ingest(
            cmd(TableNotExistOption::Fail, TableExistsOption::Append),
            futures::stream::iter(vec![Ok(batch(vec![4])), Ok(batch(vec![5]))]),
        )
        .await
        .unwrap();
    assert_eq!(n, 2);
    assert_eq!(s.count("bronze.events").await, 5);
    let e = c
        .execute_ingest(
            cmd(TableNotExistOption::Create, TableExistsOption::Fail),
            futures::stream::iter(vec![Ok(batch(vec![9]))]),
        )
        .await
        .unwrap_err();
    assert_eq!(status_code(&e), tonic::Code::AlreadyExists);
    let n = c
        .execute_ingest(
            cmd(TableNotExistOption::Create, TableExistsOption::Replace),
            futures::stream::iter(vec![Ok(batch(vec![7]))]),
        )
        .await
        .unwrap();
    assert_eq!(n, 1);
    assert_eq!(s.count("bronze.events").await, 1);
    // Each ingest's commit names its lineage job.
    let (_, history) = s
        .get(&s.admin.clone(), "/api/v1/tables/bronze/events/history")
        .await;
    let jobs: Vec<&str> = history["history"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|h| h["lineage_job"].as_str())
        .collect();
    assert_eq!(jobs, ["INGEST"; 3], "{history}");
    let (_, info) = s
        .get(&s.admin.clone(), "/api/v1/tables/bronze/events")
        .await;
    assert_eq!(info["columns"][1]["type"], "string");
    assert_eq!(info["columns"][2]["type"], "timestamp_ntz");
    // A loader may append to bronze but not create.
    let loader = s.token("lou", &["loader"]);
    let mut l = client(&s, &loader).await;
    let mut new_table = cmd(TableNotExistOption::Create, TableExistsOption::Fail);
    new_table.table = "other".into();
    let e = l
        .execute_ingest(new_table, futures::stream::iter(vec![Ok(batch(vec![1]))]))
        .await
        .unwrap_err();
    assert_eq!(status_code(&e), tonic::Code::PermissionDenied);
    let n = l
        .execute_ingest(
            cmd(TableNotExistOption::Fail, TableExistsOption::Append),
            futures::stream::iter(vec![Ok(batch(vec![8]))]),
        )
        .await
        .unwrap();
    assert_eq!(n, 1);

    // A batch with a column the table lacks: refused, unless the ingest asks for
    // merge_schema, which needs MANAGE (the loader only appends).
    let wider = Arc::new(Schema::new(vec![
        Field::new("id", DataType::Int64, false),
        Field::new("score", DataType::Float64, true),
    ]));
    let wide = RecordBatch::try_new(
        Arc::clone(&wider),
        vec![
            Arc::new(Int64Array::from(vec![20])),
            Arc::new(arrow::array::Float64Array::from(vec![0.5])),
        ],
    )
    .unwrap();
    let mut merging = cmd(TableNotExistOption::Fail, TableExistsOption::Append);
    merging.options.insert("merge_schema".into(), "true".into());
    let e = c
        .execute_ingest(
            cmd(TableNotExistOption::Fail, TableExistsOption::Append),
            futures::stream::iter(vec![Ok(wide.clone())]),
        )
        .await
        .unwrap_err();
    assert_eq!(status_code(&e), tonic::Code::InvalidArgument, "{e}");
    let e = l
        .execute_ingest(
            merging.clone(),
            futures::stream::iter(vec![Ok(wide.clone())]),
        )
        .await
        .unwrap_err();
    assert_eq!(status_code(&e), tonic::Code::PermissionDenied, "{e}");
    let n = c
        .execute_ingest(merging, futures::stream::iter(vec![Ok(wide)]))
        .await
        .unwrap();
    assert_eq!(n, 1);
    let (_, info) = s
        .get(&s.admin.clone(), "/api/v1/tables/bronze/events")
        .await;
    assert_eq!(info["columns"][3]["name"], "score");
    assert_eq!(info["columns"][3]["type"], "double");

    // Batches are written as they arrive; one that fails late (a value that does not
    // convert, in the 40th batch) fails the whole ingest and commits nothing.
    let before = s.count("bronze.events").await;
    let (_, history) = s
        .get(&s.admin.clone(), "/api/v1/tables/bronze/events/history")
        .await;
    let texts = Arc::new(Schema::new(vec![Field::new("id", DataType::Utf8, true)]));
    let text_batch = |first: usize, bad: bool| {
        let values: Vec<String> = (first..first + 1000)
            .map(|i| {
                if bad && i == first + 500 {
                    "x".into()
                } else {
                    i.to_string()
                }
            })
            .collect();
        RecordBatch::try_new(
            Arc::clone(&texts),
            vec![Arc::new(StringArray::from(values))],
        )
        .unwrap()
    };
    let batches: Vec<_> = (0..60).map(|i| Ok(text_batch(i * 1000, i == 39))).collect();
    let e = c
        .execute_ingest(
            cmd(TableNotExistOption::Fail, TableExistsOption::Append),
            futures::stream::iter(batches),
        )
        .await
        .unwrap_err();
    assert_eq!(status_code(&e), tonic::Code::InvalidArgument, "{e}");
    assert!(e.to_string().contains("column id"), "{e}");
    // A client that goes away halfway (its call dropped, the HTTP/2 stream reset after ten
    // batches): nothing committed either. (A client stream that merely ends is a complete
    // upload: the wire can't tell it from one.)
    let mut gone = c.clone();
    let ten: Vec<_> = (0..10).map(|i| Ok(text_batch(i * 1000, false))).collect();
    let call = tokio::spawn(async move {
        gone.execute_ingest(
            cmd(TableNotExistOption::Fail, TableExistsOption::Append),
            futures::stream::iter(ten).chain(futures::stream::pending()),
        )
        .await
    });
    tokio::time::sleep(std::time::Duration::from_millis(1500)).await;
    call.abort();
    tokio::time::sleep(std::time::Duration::from_millis(500)).await;
    assert_eq!(s.count("bronze.events").await, before);
    let (_, after) = s
        .get(&s.admin.clone(), "/api/v1/tables/bronze/events/history")
        .await;
    assert_eq!(after, history);
    // The same 60 batches, all good: 60 000 rows in one commit.
    let batches: Vec<_> = (0..60).map(|i| Ok(text_batch(i * 1000, false))).collect();
    let n = c
        .execute_ingest(
            cmd(TableNotExistOption::Fail, TableExistsOption::Append),
            futures::stream::iter(batches),
        )
        .await
        .unwrap();
    assert_eq!(n, 60_000);
    assert_eq!(s.count("bronze.events").await, before + 60_000);
}

/// Peak resident set size of this process (VmHWM), in KiB.
fn peak_rss_kib() -> usize {
    std::fs::read_to_string("/proc/self/status")
        .unwrap()
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap()
}

/// Sizes of the raw FlightData messages of a DoGet.
async fn message_sizes(s: &TestServer, token: &str, info: &FlightInfo) -> Vec<usize> {
    let mut raw = FlightServiceClient::new(channel(s).await);
    let mut req = tonic::Request::new(info.endpoint[0].ticket.clone().unwrap());
    req.metadata_mut()
        .insert("authorization", format!("Bearer {token}").parse().unwrap());
    let stream = raw.do_get(req).await.unwrap().into_inner();
    stream
        .map_ok(|m| m.data_header.len() + m.data_body.len())
        .try_collect()
        .await
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_twenty_row_slice_of_a_wide_string_table_stays_small_on_the_wire() {
    let s = TestServer::start().await;
    let mut c = client(&s, &s.admin).await;
    // 4,000 rows of 2 KiB strings: 8 MiB of string data in one file.
    c.execute_update("CREATE TABLE gold.wide AS SELECT v AS id, repeat('x', 2048) || CAST(v AS VARCHAR) AS s FROM (SELECT unnest(range(0, 4000)) AS v)".into(), None)
        .await
        .unwrap();
    let info = c
        .execute("SELECT s FROM gold.wide LIMIT 20".into(), None)
        .await
        .unwrap();
    let sizes = message_sizes(&s, &s.admin, &info).await;
    let total: usize = sizes.iter().sum();
    assert!(total < 100 * 1024, "20 rows × 2 KiB sent as {total} bytes");
    // Clients that read views keep them, still compacted.
    c.set_header("x-strata-view-types", "keep");
    let info = c
        .execute("SELECT s FROM gold.wide LIMIT 20".into(), None)
        .await
        .unwrap();
    let total: usize = message_sizes(&s, &s.admin, &info).await.iter().sum();
    assert!(total < 100 * 1024, "views: {total} bytes");
    // The REST Arrow stream compacts the same way (it sent 1 MB for 20 rows before).
    let body = s
        .client
        .post(s.url("/api/v1/query"))
        .bearer_auth(&s.admin)
        .header("accept", "application/vnd.apache.arrow.stream")
        .json(&serde_json::json!({"sql": "SELECT s FROM gold.wide LIMIT 20"}))
        .send()
        .await
        .unwrap()
        .bytes()
        .await
        .unwrap();
    assert!(body.len() < 100 * 1024, "REST: {} bytes", body.len());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_million_rows_stream_in_messages_under_four_mib() {
    let s = TestServer::start().await;
    let mut c = client(&s, &s.admin).await;
    c.execute_update("CREATE TABLE gold.big AS SELECT v AS id, v * 2 AS twice, 'row-' || CAST(v AS VARCHAR) AS label FROM (SELECT unnest(range(0, 1000000)) AS v)".into(), None)
        .await
        .unwrap();
    let info = c
        .execute("SELECT * FROM gold.big".into(), None)
        .await
        .unwrap();
    // Server and client share this process; the client side only counts message sizes, so
    // the peak RSS growth is the server's streaming footprint.
    let before = peak_rss_kib();
    let sizes = message_sizes(&s, &s.admin, &info).await;
    let growth_mib = (peak_rss_kib() - before) / 1024;
    let logical_mib = sizes.iter().sum::<usize>() / (1024 * 1024);
    println!(
        "streamed {logical_mib} MiB in {} messages; peak RSS grew {growth_mib} MiB",
        sizes.len()
    );
    assert!(
        growth_mib < 64,
        "streaming 1M rows grew peak RSS by {growth_mib} MiB (result is {logical_mib} MiB)"
    );
    let max = sizes.iter().max().copied().unwrap_or(0);
    assert!(max <= 4 * 1024 * 1024, "largest message {max} bytes");
    // At most 3 MiB of rows per message: 28 MiB takes at least 10. How batches are joined
    // into messages depends on when they arrive (a batch waits at most 50 ms for the next),
    // so the joining itself is tested on a scripted stream (api::flight::encode's tests).
    assert!(sizes.len() >= 10, "streamed in {} messages", sizes.len());
    let batches = fetch(&mut c, &info).await.unwrap();
    assert_eq!(rows(&batches), 1_000_000);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancel_flight_info_stops_the_query() {
    let s = TestServer::start().await;
    let mut c = client(&s, &s.admin).await;
    c.execute_update(
        "CREATE TABLE gold.n AS SELECT unnest(range(0, 2000)) AS v".into(),
        None,
    )
    .await
    .unwrap();
    // A 4M-row cross join: long enough to cancel midway.
    let info = c
        .execute(
            "SELECT a.v, b.v AS w FROM gold.n a CROSS JOIN gold.n b".into(),
            None,
        )
        .await
        .unwrap();
    let mut stream = c
        .do_get(info.endpoint[0].ticket.clone().unwrap())
        .await
        .unwrap();
    let first = stream.next().await.unwrap().unwrap();
    assert!(first.num_rows() > 0);
    let status = cancel(&mut c, &info).await.unwrap();
    assert_eq!(status, CancelStatus::Cancelled);
    let mut seen = first.num_rows();
    let mut cancelled = false;
    while let Some(item) = stream.next().await {
        match item {
            Ok(b) => seen += b.num_rows(),
            Err(e) => {
                assert_eq!(status_code(&e), tonic::Code::Cancelled, "{e:?}");
                cancelled = true;
                break;
            }
        }
    }
    assert!(
        cancelled,
        "the stream must end with CANCELLED, not look complete ({seen} rows)"
    );
    assert!(seen < 4_000_000);

    // Cancelled before DoGet: the DoGet fails.
    let info = c
        .execute("SELECT * FROM gold.n".into(), None)
        .await
        .unwrap();
    cancel(&mut c, &info).await.unwrap();
    let e = fetch(&mut c, &info).await.unwrap_err();
    assert_eq!(status_code(&e), tonic::Code::Cancelled);
    // Another principal cannot cancel someone else's query.
    let mut other = client(&s, &s.token("eve", &["admin"])).await;
    let info = c
        .execute("SELECT * FROM gold.n".into(), None)
        .await
        .unwrap();
    let e = cancel(&mut other, &info).await.unwrap_err();
    assert_eq!(status_code(&e), tonic::Code::PermissionDenied);
    assert_eq!(rows(&fetch(&mut c, &info).await.unwrap()), 2000);
}

/// Every result sends exactly the schema it announced: DataFusion plans `SUM` of a
/// DECIMAL(7,2) beside a `COUNT(DISTINCT …)` as DECIMAL(17,2) and computes it as
/// DECIMAL(27,2) (TPC-DS q16, q94, q95 failed in ADBC's DoGet on that).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn results_send_exactly_the_announced_schema() {
    let s = TestServer::start().await;
    s.sql_ok("CREATE TABLE gold.t (i INT, d DECIMAL(7,2), k STRING)")
        .await;
    s.sql_ok("INSERT INTO gold.t VALUES (1, 10.50, 'a'), (2, 3.25, 'a'), (2, 1.00, 'b'), (NULL, 99.99, 'b')")
        .await;
    let mut c = client(&s, &s.admin.clone()).await;
    for sql in [
        "SELECT count(DISTINCT i) AS c, sum(d) AS s FROM gold.t",
        "SELECT k, count(DISTINCT i) AS c, sum(d) AS s, avg(d) AS a FROM gold.t GROUP BY k ORDER BY k",
        "SELECT count(DISTINCT i) AS c, sum(d * 2) AS s, sum(DISTINCT d) AS sd FROM gold.t",
    ] {
        let info = c.execute(sql.to_string(), None).await.unwrap();
        let announced = info.clone().try_decode_schema().unwrap();
        let batches = fetch(&mut c, &info).await.unwrap();
        assert!(!batches.is_empty(), "{sql}");
        for b in &batches {
            let sent: Vec<&DataType> = b
                .schema_ref()
                .fields()
                .iter()
                .map(|f| f.data_type())
                .collect();
            let want: Vec<&DataType> = announced.fields().iter().map(|f| f.data_type()).collect();
            assert_eq!(sent, want, "{sql}");
        }
        // REST's Arrow answer has the same types (Flight sends views as plain strings).
        let rest = s
            .sql_arrow(&s.admin.clone(), sql, serde_json::json!([]))
            .await
            .unwrap();
        let plain = |t: &DataType| match t {
            DataType::Utf8View => DataType::Utf8,
            other => other.clone(),
        };
        let rest_types: Vec<DataType> = rest[0]
            .schema()
            .fields()
            .iter()
            .map(|f| plain(f.data_type()))
            .collect();
        let flight_types: Vec<DataType> = announced
            .fields()
            .iter()
            .map(|f| plain(f.data_type()))
            .collect();
        assert_eq!(rest_types, flight_types, "{sql}");
    }
    let info = c
        .execute(
            "SELECT count(DISTINCT i) AS c, sum(d) AS s FROM gold.t".into(),
            None,
        )
        .await
        .unwrap();
    let b = &fetch(&mut c, &info).await.unwrap()[0];
    assert_eq!(b.column(0).as_primitive::<Int64Type>().value(0), 2);
    let sum = arrow::util::display::array_value_to_string(b.column(1), 0).unwrap();
    assert_eq!(sum, "114.74");
}

/// A token over `flight.max_header_list_bytes` gets a definite INVALID_ARGUMENT naming the
/// limit, not the UNAVAILABLE of a dropped connection (which clients retry).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_oversized_token_gets_a_definite_status() {
    let s = TestServer::start().await;
    let big = s.token_with(
        "big",
        &["admin"],
        serde_json::json!({ "pad": "x".repeat(100 * 1024) }),
    );
    let mut c = client(&s, &big).await;
    let e = c.execute("SELECT 1".into(), None).await.unwrap_err();
    let text = format!("{e:?}");
    assert!(text.contains("InvalidArgument"), "{text}");
    assert!(text.contains("max_header_list_bytes"), "{text}");
    // The connection is still good for a normal token.
    let mut c = client(&s, &s.admin.clone()).await;
    assert!(c.execute("SELECT 1".into(), None).await.is_ok());
}
