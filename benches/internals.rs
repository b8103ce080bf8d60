//! The hot internals, one at a time (divan): what every query pays before and after the
//! data work.
//!
//! - `plan`: per-principal session build + SQL planning through the policy-enforcing
//!   catalog, with and without a row filter and a column mask;
//! - `cache`: key digest of a bound plan, a lookup, and a whole in-engine cache hit (plan, key,
//!   lookup, replay);
//! - `wire`: batch compaction (view downcast / garbage collection) and Flight encoding;
//! - `write`: MERGE upsert and SCD2 of 1 000 source rows into a 10 000-row table.
//!
//! `cargo bench --bench internals` (release; `--profile dev` for quick relative numbers).
//! Divan prints the fastest/slowest/median/mean of each.

#![allow(
    clippy::expect_used,
    clippy::unwrap_used,
    missing_debug_implementations
)]

use std::collections::BTreeSet;
use std::sync::{Arc, LazyLock};

use arrow::array::{ArrayRef, Float64Array, Int64Array, RecordBatch, StringViewArray};
use arrow::datatypes::{DataType, Field, Schema};
use datafusion::physical_plan::stream::RecordBatchStreamAdapter;
use datafusion::prelude::SessionContext;
use futures::{StreamExt, TryStreamExt};
use serde_json::json;
use strata::cache::{CachedResult, ResultCache, key};
use strata::config::CacheConfig;
use strata::config::GrantConfig;
use strata::engine::{Engine, Executed, QueryOutput, Submission};
use strata::security::Principal;
use strata::storage::TableRef;

mod common;

fn main() {
    divan::main();
}

const QUERY: &str = "SELECT region, count(*), sum(amount) FROM gold.sales \
                     WHERE amount > 10 GROUP BY region ORDER BY region";

struct World {
    rt: tokio::runtime::Runtime,
    engine: Arc<Engine>,
    _server: common::BenchServer,
    admin: Arc<Principal>,
    /// Row filter on `region` and a mask on `email`.
    analyst: Arc<Principal>,
    /// Reads raw rows (no policy applied).
    bypass: Arc<Principal>,
}

fn principal(subject: &str, roles: &[&str], claims: serde_json::Value) -> Arc<Principal> {
    Arc::new(Principal {
        subject: subject.into(),
        roles: roles.iter().map(|r| r.to_string()).collect::<BTreeSet<_>>(),
        claims: claims
            .as_object()
            .map(|m| m.iter().map(|(k, v)| (k.clone(), v.clone())).collect())
            .unwrap_or_default(),
    })
}

static WORLD: LazyLock<World> = LazyLock::new(|| {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let server = rt.block_on(common::BenchServer::start(|cfg| {
        cfg.access.grants = vec![GrantConfig {
            role: "analyst".into(),
            privilege: "SELECT".into(),
            on: "gold".into(),
        }];
    }));
    let engine = Arc::clone(&server.engine);
    let admin = principal("admin", &["admin"], json!({}));
    let world = World {
        analyst: principal("ann", &["analyst"], json!({"region": "eu"})),
        bypass: principal("root", &["admin", "policy_bypass"], json!({})),
        admin,
        engine,
        _server: server,
        rt,
    };
    world.rt.block_on(async {
        for sql in [
            "CREATE TABLE gold.sales AS SELECT v AS id, \
             CASE v % 4 WHEN 0 THEN 'eu' WHEN 1 THEN 'us' WHEN 2 THEN 'apac' ELSE 'latam' END AS region, \
             'user' || CAST(v AS STRING) || '@example.com' AS email, \
             CAST(v % 1000 AS DOUBLE) AS amount FROM (SELECT unnest(range(0, 10000)) AS v)",
            "CREATE TABLE silver.target AS SELECT v * 2 AS id, 'name-' || CAST(v AS STRING) AS name, \
             CAST(v AS DOUBLE) AS amount FROM (SELECT unnest(range(0, 10000)) AS v)",
            "CREATE TABLE bronze.source AS SELECT v * 20 + v % 2 AS id, 'new-' || CAST(v AS STRING) AS name, \
             CAST(v AS DOUBLE) AS amount FROM (SELECT unnest(range(0, 1000)) AS v)",
            "CREATE TABLE silver.dim (id BIGINT, name STRING, amount DOUBLE, \
             valid_from TIMESTAMP, valid_to TIMESTAMP, is_current BOOLEAN)",
            "INSERT INTO silver.dim SELECT v * 2, 'name-' || CAST(v AS STRING), CAST(v AS DOUBLE), \
             TIMESTAMP '2020-01-01T00:00:00Z', NULL, true FROM (SELECT unnest(range(0, 10000)) AS v)",
        ] {
            run(&world.engine, &world.admin, sql).await;
        }
        let client = reqwest::Client::new();
        let token = world._server.token(&["admin"], json!({}));
        let r = client
            .put(format!(
                "http://{}/api/v1/tables/gold/sales/policies",
                world._server.http
            ))
            .bearer_auth(token)
            .json(&json!({
                "row_filters": [{"roles": ["analyst"], "predicate": "region = current_claim('region')"}],
                "column_masks": [{"column": "email", "mask": "left(email, 2) || '***'", "exempt_roles": []}]
            }))
            .send()
            .await
            .unwrap();
        assert!(r.status().is_success(), "{}", r.text().await.unwrap());
    });
    world
});

async fn execute(engine: &Arc<Engine>, p: &Arc<Principal>, sql: &str) -> QueryOutput {
    let submission = Submission {
        sql,
        ..Submission::default()
    };
    match engine.submit(p, submission).await.unwrap() {
        Executed::Output(out) => out,
        Executed::NotModified(_) => unreachable!("no If-None-Match was sent"),
    }
}

async fn run(engine: &Arc<Engine>, p: &Arc<Principal>, sql: &str) -> Vec<RecordBatch> {
    execute(engine, p, sql)
        .await
        .stream
        .try_collect()
        .await
        .unwrap()
}

mod plan {
    use super::*;

    #[divan::bench]
    fn prepare_with_row_filter_and_mask(b: divan::Bencher<'_, '_>) {
        let w = &*WORLD;
        b.bench(|| w.rt.block_on(w.engine.prepare(&w.analyst, QUERY)).unwrap());
    }

    #[divan::bench]
    fn prepare_without_policy(b: divan::Bencher<'_, '_>) {
        let w = &*WORLD;
        b.bench(|| w.rt.block_on(w.engine.prepare(&w.bypass, QUERY)).unwrap());
    }
}

mod cache {
    use super::*;

    /// A plan shaped like TPC-H q1 over an empty table of lineitem's columns.
    fn q1_plan() -> datafusion::logical_expr::LogicalPlan {
        let ctx = SessionContext::new();
        let rt = tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap();
        rt.block_on(async {
            ctx.sql(
                "CREATE TABLE lineitem (l_returnflag VARCHAR, l_linestatus VARCHAR, \
                 l_quantity DOUBLE, l_extendedprice DOUBLE, l_discount DOUBLE, l_tax DOUBLE, \
                 l_shipdate DATE)",
            )
            .await
            .unwrap();
            ctx.sql(
                "SELECT l_returnflag, l_linestatus, sum(l_quantity), sum(l_extendedprice), \
                 sum(l_extendedprice * (1 - l_discount)), \
                 sum(l_extendedprice * (1 - l_discount) * (1 + l_tax)), avg(l_quantity), \
                 avg(l_extendedprice), avg(l_discount), count(*) FROM lineitem \
                 WHERE l_shipdate <= DATE '1998-09-02' GROUP BY 1, 2 ORDER BY 1, 2",
            )
            .await
            .unwrap()
            .into_optimized_plan()
            .unwrap()
        })
    }

    #[divan::bench]
    fn key_of_q1_plan(b: divan::Bencher<'_, '_>) {
        let plan = q1_plan();
        let tables = [key::TableVersion {
            table: TableRef::new("gold", "lineitem").unwrap(),
            version: 42,
            id: "6b1f3c0e-1d2a-4c55-9c4e-0d6f1c2b3a4d".into(),
        }];
        let fingerprint = [7u8; 32];
        b.bench(|| key::compute(&plan, &tables, 3, &fingerprint));
    }

    #[divan::bench]
    fn lookup_hit(b: divan::Bencher<'_, '_>) {
        let cache = ResultCache::new(&CacheConfig::default()).unwrap();
        let keys: Vec<key::CacheKey> = (0..1000u32)
            .map(|i| {
                let mut k = [0u8; 32];
                k[..4].copy_from_slice(&i.to_le_bytes());
                key::CacheKey(k)
            })
            .collect();
        let schema = Arc::new(Schema::new(vec![Field::new("n", DataType::Int64, false)]));
        for k in &keys {
            cache.insert(
                *k,
                CachedResult {
                    schema: Arc::clone(&schema),
                    batches: Vec::new(),
                    bytes: 64,
                    versions: Vec::new(),
                },
            );
        }
        let mut i = 0usize;
        b.bench_local(|| {
            i = (i + 1) % keys.len();
            cache.get(&keys[i]).unwrap()
        });
    }

    /// Plan, key, lookup and replay of a cached 4-row result, in process (no network).
    #[divan::bench]
    fn hit_in_engine(b: divan::Bencher<'_, '_>) {
        let w = &*WORLD;
        w.rt.block_on(run(&w.engine, &w.analyst, QUERY));
        b.bench(|| {
            w.rt.block_on(async {
                let out = execute(&w.engine, &w.analyst, QUERY).await;
                assert!(out.cache_hit);
                out.stream.try_collect::<Vec<_>>().await.unwrap()
            })
        });
    }
}

mod wire {
    use super::*;

    /// 8192 rows: id, two string-view columns, an amount, as the parquet reader yields them.
    fn batch() -> RecordBatch {
        let n = 8192i64;
        let ids: ArrayRef = Arc::new(Int64Array::from_iter_values(0..n));
        let names: ArrayRef = Arc::new(StringViewArray::from_iter_values(
            (0..n).map(|i| format!("customer name number {i:08}")),
        ));
        let flags: ArrayRef = Arc::new(StringViewArray::from_iter_values(
            (0..n).map(|i| if i % 2 == 0 { "A" } else { "R" }),
        ));
        let amounts: ArrayRef = Arc::new(Float64Array::from_iter_values((0..n).map(|i| i as f64)));
        RecordBatch::try_from_iter([
            ("id", ids),
            ("name", names),
            ("flag", flags),
            ("amount", amounts),
        ])
        .unwrap()
    }

    #[divan::bench(args = [true, false])]
    fn compact_8192_rows(b: divan::Bencher<'_, '_>, downcast: bool) {
        let batch = batch();
        let schema = strata::api::wire::wire_schema(&batch.schema(), downcast);
        b.bench(|| strata::api::wire::compact(&batch, &schema, downcast).unwrap());
    }

    /// 100 batches of 8192 rows through compaction and the Flight encoder, 4 MiB messages.
    #[divan::bench]
    fn flight_encode_819k_rows(b: divan::Bencher<'_, '_>) {
        let w = &*WORLD;
        let batch = batch();
        b.bench(|| {
            let batches: Vec<datafusion::error::Result<RecordBatch>> =
                (0..100).map(|_| Ok(batch.clone())).collect();
            let stream = Box::pin(RecordBatchStreamAdapter::new(
                batch.schema(),
                futures::stream::iter(batches),
            ));
            let encoded = strata::api::flight::encode::flight_stream(
                batch.schema(),
                stream,
                true,
                4 << 20,
                None,
                || {},
            );
            w.rt.block_on(encoded.fold(0usize, |n, m| async move {
                n + m.map(|d| d.data_body.len()).unwrap_or(0)
            }))
        });
    }
}

mod write {
    use super::*;

    /// 1 000 source rows (half of them keys of the target) into 10 000 target rows.
    #[divan::bench(sample_count = 10, sample_size = 1)]
    fn merge_1k_into_10k(b: divan::Bencher<'_, '_>) {
        let w = &*WORLD;
        b.bench(|| {
            w.rt.block_on(run(
                &w.engine,
                &w.admin,
                "MERGE INTO silver.target t USING bronze.source s ON t.id = s.id \
                 WHEN MATCHED THEN UPDATE SET * WHEN NOT MATCHED THEN INSERT *",
            ))
        });
    }

    /// Each sample first changes every source row (untimed), so every SCD2 run closes and
    /// opens 1 000 versions.
    #[divan::bench(sample_count = 10, sample_size = 1)]
    fn scd2_1k_into_10k(b: divan::Bencher<'_, '_>) {
        let w = &*WORLD;
        b.with_inputs(|| {
            w.rt.block_on(run(
                &w.engine,
                &w.admin,
                "UPDATE bronze.source SET amount = amount + 1",
            ))
        })
        .bench_values(|_| {
            w.rt.block_on(run(
                &w.engine,
                &w.admin,
                "CALL scd2(target => 'silver.dim', source => 'bronze.source', keys => 'id')",
            ))
        });
    }
}
