//! Commit safety: many writers on one table, on local disk and on the S3 stand-in.

use std::collections::BTreeSet;
use std::sync::Arc;

use crate::harness::{Backend, Moto, TestServer};

crate::on_both_backends!(concurrent_writers_lose_and_duplicate_nothing);

const WRITERS: u64 = 8;

/// Commits per writer: 50 on local disk; 25 on the S3 stand-in, whose single Python process
/// serves every request of 8 writers (8 × 50 there takes six minutes of CI time, 8 × 25 the
/// same races in half of it).
fn commits(backend: Backend) -> u64 {
    match backend {
        Backend::Local => 50,
        Backend::S3 => 25,
    }
}

/// 8 writers × 50 commits (appends and MERGEs), spread over two replicas of the server. Every acknowledged
/// commit must be in the table exactly once at its own version, versions must be gap-free,
/// and the contents must equal a serial replay of the commits in version order.
async fn concurrent_writers_lose_and_duplicate_nothing(backend: Backend) {
    let a = TestServer::start_on(backend).await;
    let b = a.replica().await;
    a.create_people("bronze.events").await;
    let servers = Arc::new([a, b]);
    let per_writer = commits(backend);
    let mut tasks = Vec::new();
    for w in 0..WRITERS {
        let servers = Arc::clone(&servers);
        tasks.push(tokio::spawn(async move {
            let s = &servers[(w % 2) as usize];
            let admin = s.admin.clone();
            let mut acks = Vec::new();
            let mut conflicts = 0;
            for i in 0..per_writer {
                let id = w * 1000 + i;
                let body = format!(r#"[{{"id":{id},"name":"w{w}","amount":{i}}}]"#).into_bytes();
                // Every other commit is a MERGE: it renames the row this writer appended
                // just before and inserts this commit's row. Either way, one new row.
                let merge = format!(
                    "MERGE INTO bronze.events t USING (SELECT {prev} AS id UNION ALL SELECT {id}) s \
                     ON t.id = s.id WHEN MATCHED THEN UPDATE SET name = 'm{w}' \
                     WHEN NOT MATCHED THEN INSERT (id, name, amount) VALUES (s.id, 'w{w}', {i})",
                    prev = id.saturating_sub(1)
                );
                // A lost race is a 409 the client retries (uploads with the same
                // idempotency key; a MERGE that lost committed nothing).
                loop {
                    let (status, resp) = if i % 2 == 1 {
                        let (status, body) = s.sql(&admin, &merge).await;
                        (status, body.get(0).cloned().unwrap_or(body))
                    } else {
                        s.upload(
                            &admin,
                            "bronze.events",
                            "application/json",
                            body.clone(),
                            &format!("?idempotency_key=w{w}-{i}"),
                        )
                        .await
                    };
                    match status {
                        200 if i % 2 == 1 => {
                            assert_eq!(
                                (&resp["rows_inserted"], &resp["rows_updated"]),
                                (&serde_json::json!(1), &serde_json::json!(1)),
                                "{resp}"
                            );
                            acks.push((resp["version"].as_u64().unwrap(), id));
                            break;
                        }
                        200 => {
                            assert_eq!(resp["duplicate"], false, "{resp}");
                            acks.push((resp["version"].as_u64().unwrap(), id));
                            break;
                        }
                        409 => conflicts += 1,
                        _ => panic!("writer {w} commit {i}: {status} {resp}"),
                    }
                }
            }
            (acks, conflicts)
        }));
    }
    let mut acks: Vec<(u64, u64)> = Vec::new();
    let mut conflicts = 0;
    for t in tasks {
        let (a, c) = t.await.unwrap();
        acks.extend(a);
        conflicts += c;
    }
    let s = &servers[0];
    let total = WRITERS * per_writer;
    eprintln!("{backend:?}: {total} commits, {conflicts} client retries after 409");

    // Every acknowledged commit has its own version, and versions 1..=total are exactly them.
    let versions: BTreeSet<u64> = acks.iter().map(|(v, _)| *v).collect();
    assert_eq!(
        versions.len() as u64,
        total,
        "two commits acknowledged at one version"
    );
    assert_eq!(versions, (1..=total).collect::<BTreeSet<_>>());
    assert_eq!(s.version("bronze.events").await, total);
    let (_, history) = s
        .get(
            &s.admin.clone(),
            "/api/v1/tables/bronze/events/history?limit=1000",
        )
        .await;
    let logged: BTreeSet<u64> = history["history"]
        .as_array()
        .unwrap()
        .iter()
        .map(|h| h["version"].as_u64().unwrap())
        .collect();
    assert_eq!(
        logged,
        (0..=total).collect::<BTreeSet<_>>(),
        "gap in the log"
    );

    // Contents = serial replay: each version added exactly the row its writer was told.
    let rows = s
        .sql_ok("SELECT id, count(*) AS n FROM bronze.events GROUP BY id ORDER BY id")
        .await;
    let rows = rows.as_array().unwrap();
    assert_eq!(rows.len() as u64, total, "lost commits");
    assert!(rows.iter().all(|r| r["n"] == 1), "duplicated commits");
    // Every MERGE's update landed (no lost update): each odd commit renamed its predecessor.
    let merged = s
        .sql_ok("SELECT count(*) AS n FROM bronze.events WHERE name LIKE 'm%'")
        .await;
    // Commits 1, 3, 5, … of each writer are MERGEs.
    assert_eq!(
        merged[0]["n"],
        WRITERS * (per_writer / 2),
        "lost MERGE updates"
    );
    acks.sort();
    for (version, id) in acks.iter().step_by(37) {
        let body = s
            .sql_ok(&format!(
                "SELECT count(*) AS n, max(id) AS last FROM bronze.events VERSION AS OF {version}"
            ))
            .await;
        assert_eq!(body[0]["n"], *version, "version {version}");
        let at_prev = s
            .sql_ok(&format!(
                "SELECT count(*) AS n FROM bronze.events VERSION AS OF {} WHERE id = {id}",
                version - 1
            ))
            .await;
        assert_eq!(at_prev[0]["n"], 0, "row {id} before its version {version}");
    }
}

/// The stand-in must honour put-if-absent under a race (see ../shared/S3.md): 16 racing
/// creates of one key, 32 keys, exactly one winner each. Bare moto checks, then writes, and
/// once let two racers win in CI; 256 KiB bodies widen that window (moto hashes the body
/// between check and write), so the test catches a stand-in that is not atomic. Strata's
/// startup preflight runs against it in every S3 test as well.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn s3_stand_in_has_exactly_one_winner_per_racing_create() {
    use object_store::{PutMode, PutOptions};
    let moto = Moto::start().await;
    let store: Arc<dyn object_store::ObjectStore> = Arc::new(
        object_store::aws::AmazonS3Builder::new()
            .with_endpoint(&moto.endpoint)
            .with_bucket_name(&moto.bucket)
            .with_region("us-east-1")
            .with_access_key_id("test")
            .with_secret_access_key("test")
            .with_allow_http(true)
            .with_conditional_put(object_store::aws::S3ConditionalPut::ETagMatch)
            .build()
            .unwrap(),
    );
    let body = bytes::Bytes::from(vec![b'x'; 256 << 10]);
    for key in 0..32 {
        let path = object_store::path::Path::from(format!("race/{key}"));
        let racers = (0..16).map(|i| {
            let store = Arc::clone(&store);
            let path = path.clone();
            let mut body = body.to_vec();
            body[..8].copy_from_slice(&(i as u64).to_le_bytes());
            tokio::spawn(async move {
                let opts = PutOptions {
                    mode: PutMode::Create,
                    ..Default::default()
                };
                store.put_opts(&path, body.into(), opts).await
            })
        });
        let mut winners = 0;
        for r in futures::future::join_all(racers).await {
            match r.unwrap() {
                Ok(_) => winners += 1,
                Err(
                    object_store::Error::AlreadyExists { .. }
                    | object_store::Error::Precondition { .. },
                ) => {}
                Err(e) => panic!("{e}"),
            }
        }
        assert_eq!(winners, 1, "key {key}");
    }
}
