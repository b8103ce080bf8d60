//! The codec's refusals: an executor runs only scans a front end of its cluster signed,
//! before they expire, and only when its rebuild is the scan that was planned; a stage
//! whose leaves are anything else is refused.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use arrow::array::{Int64Array, RecordBatch};
use arrow::datatypes::{DataType, Field, Schema};
use datafusion::execution::TaskContext;
use datafusion::execution::runtime_env::RuntimeEnvBuilder;
use datafusion::physical_plan::{ExecutionPlan, collect};
use datafusion_proto::physical_plan::AsExecutionPlan;
use datafusion_proto::protobuf::PhysicalPlanNode;
use datafusion_proto::protobuf::physical_plan_node::PhysicalPlanType;
use prost::Message;

use super::codec::{Role, StrataCodec};
use super::remote::Rebuilder;
use crate::config::{Config, StorageConfig};
use crate::security::Principal;
use crate::security::policy::{PolicyExec, ShipScans};
use crate::storage::catalog::TableSpec;
use crate::storage::types::ColumnSpec;
use crate::storage::{Catalog, TableRef, Warehouse};

const KEY: &[u8] = b"0123456789abcdef0123456789abcdef";

struct Fixture {
    _dir: tempfile::TempDir,
    catalog: Arc<Catalog>,
    template: Arc<datafusion::execution::context::SessionState>,
    table: TableRef,
}

async fn fixture() -> Fixture {
    let dir = tempfile::tempdir().unwrap();
    let storage = StorageConfig {
        warehouse: dir.path().join("wh").display().to_string(),
        ..StorageConfig::default()
    };
    let catalog = Arc::new(Catalog::new(Warehouse::open(&storage).unwrap()));
    let table = TableRef::new("gold", "t").unwrap();
    fill(&catalog, &table, |chunk| {
        (chunk * 100..(chunk + 1) * 100).collect()
    })
    .await;
    Fixture {
        _dir: dir,
        catalog,
        template: template(3),
        table,
    }
}

/// Creates `table (id bigint)` and appends three commits of `ids(0..3)`.
async fn fill(catalog: &Catalog, table: &TableRef, ids: impl Fn(i64) -> Vec<i64>) {
    let spec = TableSpec {
        columns: vec![ColumnSpec {
            name: "id".into(),
            data_type: "bigint".into(),
            nullable: true,
            description: None,
        }],
        partition_by: Vec::new(),
        description: None,
        properties: BTreeMap::new(),
    };
    catalog
        .create(table, &spec, "test", Default::default())
        .await
        .unwrap();
    let schema = Arc::new(Schema::new(vec![Field::new("id", DataType::Int64, true)]));
    for chunk in 0..3 {
        let batch = RecordBatch::try_new(
            Arc::clone(&schema),
            vec![Arc::new(Int64Array::from(ids(chunk)))],
        )
        .unwrap();
        crate::pipelines::commit::write(
            catalog,
            table,
            &admin(),
            crate::pipelines::commit::WriteInput::Batches(vec![batch]),
            crate::pipelines::commit::WriteMode::Append,
            None,
            "WRITE",
        )
        .await
        .unwrap();
    }
}

/// Strata's session template with `partitions` target partitions; files of any size are
/// split between them.
fn template(partitions: usize) -> Arc<datafusion::execution::context::SessionState> {
    let runtime = RuntimeEnvBuilder::new().build_arc().unwrap();
    let mut cfg = Config::default();
    cfg.query.target_partitions = partitions;
    let mut state = crate::engine::session::template_state(&cfg.query, runtime).unwrap();
    state
        .config_mut()
        .options_mut()
        .optimizer
        .repartition_file_min_size = 1;
    Arc::new(state)
}

fn admin() -> Principal {
    Principal {
        subject: "admin".into(),
        roles: BTreeSet::from(["admin".to_string()]),
        claims: BTreeMap::new(),
    }
}

/// The front end's plan of a scan of `t` (a `PolicyExec` with its spec), in a session
/// marked to ship its scans.
async fn planned(f: &Fixture) -> Arc<dyn ExecutionPlan> {
    use crate::security::policy::{Enforcement, PolicyTable};
    let table = f.catalog.load(&f.table).await.unwrap();
    crate::storage::register_table_store(f.template.runtime_env(), &table).unwrap();
    let version = table.version().unwrap_or(0);
    let id = table.snapshot().unwrap().metadata().id().to_string();
    let inner = table.table_provider().await.unwrap();
    let provider = PolicyTable::new(
        f.table.clone(),
        version,
        id,
        Arc::new(admin()),
        inner,
        Enforcement::default(),
    )
    .shippable();
    let mut state = f.template.as_ref().clone();
    state.config_mut().set_extension(Arc::new(ShipScans));
    super::plan_options(state.config_mut().options_mut());
    use datafusion::catalog::TableProvider;
    let plan = provider.scan(&state, None, &[], None).await.unwrap();
    assert!(plan.is::<PolicyExec>());
    plan
}

fn front_end() -> StrataCodec {
    StrataCodec::new(
        Role::FrontEnd {
            key: Arc::from(KEY),
            ttl_ms: 60_000,
        },
        crate::engine::expr_codec(),
    )
}

fn executor(f: &Fixture, key: &[u8]) -> StrataCodec {
    StrataCodec::new(
        Role::Executor {
            key: Arc::from(key),
            rebuilder: Arc::new(Rebuilder::new(
                Arc::clone(&f.catalog),
                Arc::clone(&f.template),
            )),
        },
        crate::engine::expr_codec(),
    )
}

fn encode(plan: Arc<dyn ExecutionPlan>, codec: &StrataCodec) -> Vec<u8> {
    PhysicalPlanNode::try_from_physical_plan(plan, codec)
        .unwrap()
        .encode_to_vec()
}

fn decode(
    bytes: &[u8],
    codec: &StrataCodec,
    f: &Fixture,
) -> datafusion::common::Result<Arc<dyn ExecutionPlan>> {
    let ctx = TaskContext::from(f.template.as_ref());
    PhysicalPlanNode::decode(bytes)
        .unwrap()
        .try_into_physical_plan(&ctx, codec)
}

async fn rows(plan: Arc<dyn ExecutionPlan>, f: &Fixture) -> datafusion::common::Result<usize> {
    let ctx = Arc::new(TaskContext::from(f.template.as_ref()));
    let batches = collect(plan, ctx).await?;
    Ok(batches.iter().map(RecordBatch::num_rows).sum())
}

#[tokio::test]
async fn a_signed_scan_is_rebuilt_and_read_on_an_executor() {
    let f = fixture().await;
    let bytes = encode(planned(&f).await, &front_end());
    let plan = decode(&bytes, &executor(&f, KEY), &f).unwrap();
    assert_eq!(rows(Arc::clone(&plan), &f).await.unwrap(), 300);
    super::roles::check_leaves(&plan).unwrap();
    // Its display holds no expression of the policy.
    let shown = datafusion::physical_plan::displayable(plan.as_ref())
        .indent(false)
        .to_string();
    assert!(shown.contains("table=gold.t@v3"), "{shown}");
}

#[tokio::test]
async fn an_executor_refuses_a_scan_signed_with_another_key_or_altered() {
    let f = fixture().await;
    let bytes = encode(planned(&f).await, &front_end());
    let e = decode(
        &bytes,
        &executor(&f, b"another key of at least 32 bytes!!"),
        &f,
    )
    .unwrap_err();
    assert!(e.to_string().contains("not signed by a front end"), "{e}");
    // One byte of the signed part changed (the version it reads, the table, a filter...).
    let at = bytes
        .windows(b"gold".len())
        .position(|w| w == b"gold")
        .unwrap();
    let mut altered = bytes.clone();
    altered[at] = b'b';
    let e = decode(&altered, &executor(&f, KEY), &f).unwrap_err();
    assert!(e.to_string().contains("not signed by a front end"), "{e}");
}

#[tokio::test]
async fn an_executor_refuses_an_expired_scan() {
    let f = fixture().await;
    let expired = StrataCodec::new(
        Role::FrontEnd {
            key: Arc::from(KEY),
            ttl_ms: 0,
        },
        crate::engine::expr_codec(),
    );
    let bytes = encode(planned(&f).await, &expired);
    tokio::time::sleep(std::time::Duration::from_millis(5)).await;
    let e = decode(&bytes, &executor(&f, KEY), &f).unwrap_err();
    assert!(e.to_string().contains("expired"), "{e}");
}

#[tokio::test]
async fn a_rebuild_of_another_snapshot_or_partitioning_is_refused() {
    let f = fixture().await;
    let plan = planned(&f).await;
    let bytes = encode(Arc::clone(&plan), &front_end());
    // The table dropped and re-created under the same name at the same version: another
    // table id.
    let path = f.catalog.warehouse().table_url(&f.table).unwrap();
    let dir = path.to_file_path().unwrap();
    std::fs::remove_dir_all(&dir).unwrap();
    let f2 = fixture_at(f).await;
    let e = rows(decode(&bytes, &executor(&f2, KEY), &f2).unwrap(), &f2)
        .await
        .unwrap_err();
    assert!(
        e.to_string().contains("another table than the one planned"),
        "{e}"
    );

    // The executor's rebuild has another partitioning than the plan (signed by a front end
    // that planned 2 partitions where the executor makes 1).
    let f3 = fixture().await;
    let bytes = encode(planned(&f3).await, &front_end());
    let mut node = PhysicalPlanNode::decode(bytes.as_slice()).unwrap();
    let Some(PhysicalPlanType::Extension(ext)) = &mut node.physical_plan_type else {
        panic!("a shipped scan is an extension node");
    };
    ext.node = super::codec::resigned(&ext.node, KEY, |m| m.partitions = 2);
    let plan = decode(&node.encode_to_vec(), &executor(&f3, KEY), &f3).unwrap();
    let e = rows(plan, &f3).await.unwrap_err();
    assert!(
        e.to_string()
            .contains("has 1 partitions, the one planned 2"),
        "{e}"
    );
}

/// A new table at the same warehouse (re-created: same name, same versions, another id).
async fn fixture_at(old: Fixture) -> Fixture {
    let Fixture {
        _dir,
        catalog,
        template,
        table,
    } = old;
    let catalog = Arc::new(Catalog::new(catalog.warehouse().clone()));
    fill(&catalog, &table, |_| vec![1]).await;
    Fixture {
        _dir,
        catalog,
        template,
        table,
    }
}

#[tokio::test]
async fn a_stage_reading_anything_but_signed_scans_is_refused() {
    let f = fixture().await;
    // The front end's own scan: a Delta scan behind a policy boundary the executor did not
    // verify, and under it the files themselves.
    let plan = planned(&f).await;
    let e = super::roles::check_leaves(&plan).unwrap_err();
    assert!(e.to_string().contains("not PolicyExec"), "{e}");
    let scan = Arc::clone(plan.downcast_ref::<PolicyExec>().unwrap().scan());
    let e = super::roles::check_leaves(&scan).unwrap_err();
    assert!(e.to_string().contains("only signed table scans"), "{e}");
}

#[tokio::test]
async fn only_plans_of_shippable_scans_go_and_their_size_is_what_they_read() {
    let f = fixture().await;
    let plan = planned(&f).await;
    assert!(super::eligible(&plan));
    let on_disk: u64 = walk(&f._dir.path().join("wh/gold/t"));
    assert_eq!(super::scanned_bytes(&plan), on_disk);
    // A VALUES list beside the table stays on this node.
    let values = datafusion::datasource::memory::MemorySourceConfig::try_new_exec(
        &[vec![]],
        plan.schema(),
        None,
    )
    .unwrap();
    let union = datafusion::physical_plan::union::UnionExec::try_new(vec![
        Arc::clone(&plan),
        values as Arc<dyn ExecutionPlan>,
    ])
    .unwrap();
    assert!(!super::eligible(&union));
}

/// Bytes of the Parquet files under `dir`.
fn walk(dir: &std::path::Path) -> u64 {
    std::fs::read_dir(dir)
        .unwrap()
        .filter_map(|e| e.ok())
        .filter(|e| e.path().extension().is_some_and(|x| x == "parquet"))
        .map(|e| e.metadata().unwrap().len())
        .sum()
}

#[test]
fn the_header_is_on_or_off() {
    assert_eq!(super::parse_header(None).unwrap(), None);
    assert_eq!(super::parse_header(Some("ON")).unwrap(), Some(true));
    assert_eq!(super::parse_header(Some(" off ")).unwrap(), Some(false));
    let e = super::parse_header(Some("maybe")).unwrap_err();
    assert!(e.to_string().contains("neither"), "{e}");
}

#[test]
fn the_shuffle_service_answers_only_holders_of_the_plan_key() {
    let token = super::transport::shuffle_token(b"plan-key-0123456789abcdef0123456789").unwrap();
    let call = |agent: Option<&str>| {
        let mut r = tonic::Request::new(());
        if let Some(a) = agent {
            r.metadata_mut().insert("user-agent", a.parse().unwrap());
        }
        super::transport::check_token(&token, r)
    };
    assert!(call(Some(&format!("strata-shuffle/{token} tonic/0.14.9"))).is_ok());
    // No token, another key's token, a prefix of it.
    let other = super::transport::shuffle_token(b"another-key-0123456789abcdef01234567").unwrap();
    for agent in [
        None,
        Some("tonic/0.14.9".to_string()),
        Some(format!("strata-shuffle/{other} tonic/0.14.9")),
        Some(format!("strata-shuffle/{}", &token[..token.len() - 1])),
    ] {
        let e = call(agent.as_deref()).unwrap_err();
        assert_eq!(e.code(), tonic::Code::Unauthenticated, "{agent:?}");
    }
}

#[test]
fn a_cluster_beyond_loopback_needs_mutual_tls_or_a_mesh() {
    use crate::config::{ClusterConfig, ClusterTransport};
    let dir = tempfile::tempdir().unwrap();
    let pem = dir.path().join("x.pem");
    std::fs::write(&pem, "not checked here").unwrap();
    let mut c = ClusterConfig {
        plan_key: Some(crate::config::Secret::new("k".repeat(32))),
        scheduler_url: Some("http://10.0.0.5:50050".into()),
        executor_bind_host: "0.0.0.0".into(),
        ..ClusterConfig::default()
    };
    let joined = |v: Vec<String>| v.join("; ");
    assert!(joined(c.executor_problems()).contains("transport = \"tls\""));
    // TLS: every file, and an https:// scheduler.
    c.transport = ClusterTransport::Tls;
    let p = joined(c.executor_problems());
    assert!(
        p.contains("set cluster.tls.ca_file") && p.contains("https://"),
        "{p}"
    );
    c.tls.ca_file = Some(pem.clone());
    c.tls.cert_file = Some(pem.clone());
    c.tls.key_file = Some(dir.path().join("missing.pem"));
    c.scheduler_url = Some("https://10.0.0.5:50050".into());
    assert!(joined(c.executor_problems()).contains("missing.pem is not a readable file"));
    c.tls.key_file = Some(pem);
    assert_eq!(c.executor_problems(), Vec::<String>::new());
    assert_eq!(c.scheduler_problems(), Vec::<String>::new());
    // https:// without Strata's TLS is a mistake, not a silent downgrade.
    c.transport = ClusterTransport::Mesh;
    assert!(joined(c.executor_problems()).contains("https:// needs cluster.transport"));
}

#[test]
fn the_scheduler_is_recognised_however_its_address_is_spelled() {
    let hp = |u: &str| super::transport::host_port(&u.parse().unwrap());
    assert_eq!(
        hp("https://Scheduler.Data.svc").as_deref(),
        Some("scheduler.data.svc:443")
    );
    assert_eq!(
        hp("https://scheduler.data.svc:443"),
        hp("https://SCHEDULER.data.svc")
    );
    assert_eq!(
        hp("http://127.0.0.1:50050").as_deref(),
        Some("127.0.0.1:50050")
    );
    assert_ne!(hp("http://127.0.0.1:50050"), hp("http://127.0.0.1:50061"));
}
