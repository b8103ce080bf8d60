//! The cluster under its own mutual TLS (`cluster.transport = "tls"`): a scheduler and two
//! executors of the real binary with certificates of a test authority, a front end sending
//! every query to them; queries equal the single node, with a row filter and a mask; a
//! client without a certificate, or with one of another authority, reaches nothing; a
//! member of the cluster without the plan key (as the scheduler is) cannot read an
//! executor's shuffle data.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use arrow_flight::Ticket;
use arrow_flight::flight_service_client::FlightServiceClient;
use ballista_core::serde::protobuf::GetJobStatusParams;
use ballista_core::serde::protobuf::scheduler_grpc_client::SchedulerGrpcClient;
use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    SanType,
};
use serde_json::{Value, json};
use strata::config::{ClusterMode, ClusterTransport, Config, Secret};
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint, Identity};

use super::{Node, PLAN_KEY, env, executor_env, filter_and_mask, free_port};
use crate::harness::{TestServer, test_config};

/// The name every node's certificate carries; nodes dial 127.0.0.1 and check this name.
const NAME: &str = "strata-cluster";

/// PEM files of a certificate authority and one certificate it issued.
struct Pki {
    ca: PathBuf,
    cert: PathBuf,
    key: PathBuf,
}

impl Pki {
    fn issue(dir: &Path, label: &str) -> Pki {
        std::fs::create_dir_all(dir).unwrap();
        let ca_key = KeyPair::generate().unwrap();
        let mut ca = CertificateParams::new(Vec::<String>::new()).unwrap();
        ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        ca.distinguished_name
            .push(DnType::CommonName, format!("{label} authority"));
        let ca_cert = ca.self_signed(&ca_key).unwrap();
        let issuer = Issuer::new(ca, ca_key);
        let key = KeyPair::generate().unwrap();
        let mut node = CertificateParams::new(vec![NAME.to_string()]).unwrap();
        node.subject_alt_names
            .push(SanType::IpAddress([127, 0, 0, 1].into()));
        node.extended_key_usages = vec![
            ExtendedKeyUsagePurpose::ServerAuth,
            ExtendedKeyUsagePurpose::ClientAuth,
        ];
        let cert = node.signed_by(&key, &issuer).unwrap();
        let write = |name: &str, pem: String| {
            let path = dir.join(name);
            std::fs::write(&path, pem).unwrap();
            path
        };
        Pki {
            ca: write("ca.pem", ca_cert.pem()),
            cert: write("node.pem", cert.pem()),
            key: write("node.key", key.serialize_pem()),
        }
    }

    fn env(&self) -> Vec<(String, String)> {
        env(&[
            ("STRATA__CLUSTER__TRANSPORT", "tls".into()),
            (
                "STRATA__CLUSTER__TLS__CA_FILE",
                self.ca.display().to_string(),
            ),
            (
                "STRATA__CLUSTER__TLS__CERT_FILE",
                self.cert.display().to_string(),
            ),
            (
                "STRATA__CLUSTER__TLS__KEY_FILE",
                self.key.display().to_string(),
            ),
            ("STRATA__CLUSTER__TLS__SERVER_NAME", NAME.into()),
        ])
    }

    /// A client channel to `port`: this authority's certificate when `identity`, none else.
    async fn channel(&self, port: u16, identity: bool) -> Result<Channel, String> {
        let read = |p: &PathBuf| std::fs::read(p).unwrap();
        let mut tls = ClientTlsConfig::new()
            .ca_certificate(Certificate::from_pem(read(&self.ca)))
            .domain_name(NAME);
        if identity {
            tls = tls.identity(Identity::from_pem(read(&self.cert), read(&self.key)));
        }
        Endpoint::from_shared(format!("https://127.0.0.1:{port}"))
            .unwrap()
            .tls_config(tls)
            .unwrap()
            .connect()
            .await
            .map_err(|e| format!("{e:?}"))
    }
}

/// The answer of the scheduler at `port` to a job status request over `channel`.
async fn ask_scheduler(channel: Result<Channel, String>) -> Result<(), String> {
    let mut client = SchedulerGrpcClient::new(channel?);
    client
        .get_job_status(GetJobStatusParams {
            job_id: "no-such-job".into(),
        })
        .await
        .map(|_| ())
        .map_err(|s| format!("{s:?}"))
}

/// The rows of `sql` as `token`, run where `distributed` says.
async fn rows(s: &TestServer, token: &str, distributed: &str, sql: &str) -> Value {
    let (status, body) = super::distributed(s, token, distributed, sql).await;
    assert_eq!(status, 200, "{sql} ({distributed}): {body}");
    body
}

fn front_end(root: &Path, pki: &Pki, url: &str) -> Config {
    let mut cfg = test_config(root);
    cfg.query.target_partitions = 4;
    cfg.cluster.mode = ClusterMode::Always;
    cfg.cluster.transport = ClusterTransport::Tls;
    cfg.cluster.tls.ca_file = Some(pki.ca.clone());
    cfg.cluster.tls.cert_file = Some(pki.cert.clone());
    cfg.cluster.tls.key_file = Some(pki.key.clone());
    cfg.cluster.tls.server_name = Some(NAME.into());
    cfg.cluster.scheduler_url = Some(url.to_string());
    cfg.cluster.plan_key = Some(Secret::new(PLAN_KEY));
    cfg
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn under_mutual_tls_queries_run_and_strangers_reach_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().to_path_buf();
    let pki = Pki::issue(&root.join("pki"), "cluster");
    let rogue = Pki::issue(&root.join("rogue"), "rogue");

    let port = free_port();
    let url = format!("https://127.0.0.1:{port}");
    let mut e = pki.env();
    e.extend(env(&[(
        "STRATA__CLUSTER__SCHEDULER_BIND",
        format!("127.0.0.1:{port}"),
    )]));
    let scheduler = Node::spawn("scheduler", &e, root.join("scheduler.log"));
    let mut flight_ports = Vec::new();
    let executors: Vec<Node> = (0..2)
        .map(|i| {
            let flight = free_port();
            flight_ports.push(flight);
            let mut e = pki.env();
            e.extend(env(&[(
                "STRATA__STORAGE__WAREHOUSE",
                root.join("data/warehouse").display().to_string(),
            )]));
            e.extend(executor_env(
                &url,
                flight,
                &root.join(format!("executor{i}")),
            ));
            Node::spawn("executor", &e, root.join(format!("executor{i}.log")))
        })
        .collect();

    let front = TestServer::start_with(front_end(&root, &pki, &url)).await;
    for sql in [
        "CREATE TABLE gold.sales (id BIGINT, region STRING, customer STRING, amount DOUBLE)",
        "INSERT INTO gold.sales VALUES (1, 'eu', 'alice', 10.0), (2, 'eu', 'bob', 20.0), (3, 'us', 'carol', 30.0)",
        "INSERT INTO gold.sales VALUES (4, 'us', 'dave', 40.0), (5, 'apac', 'erin', 50.0), (6, 'eu', 'fay', 60.0)",
        "INSERT INTO gold.sales VALUES (7, 'us', 'gus', 70.0), (8, 'eu', 'hal', 80.0)",
        "INSERT INTO gold.sales VALUES (9, 'apac', 'ida', 90.0), (10, 'eu', 'jo', 100.0)",
    ] {
        let (status, body) = front.sql(&front.admin.clone(), sql).await;
        assert_eq!(status, 200, "{sql}: {body}");
    }
    filter_and_mask(
        &front,
        "sales",
        "analyst",
        "region = current_claim('region')",
        "customer",
    )
    .await;
    let analyst = front.token_with("ana", &["analyst"], json!({"region": "eu"}));

    // Both executors registered over TLS (they pull their tasks: no executor gRPC port).
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let (status, body) = front
            .sql(&front.admin.clone(), "SELECT count(*) AS n FROM gold.sales")
            .await;
        if status == 200 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the cluster never ran a query: {body}\nscheduler:\n{}",
            scheduler.log()
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }

    // Queries with a shuffle equal the single node, for the admin and the filtered, masked
    // analyst; the work ran on the executors.
    let queries = [
        "SELECT region, count(*) AS n, sum(amount) AS total FROM gold.sales GROUP BY region ORDER BY region",
        "SELECT a.id, b.customer FROM gold.sales a JOIN gold.sales b ON a.id = b.id + 1 ORDER BY a.id",
        "SELECT count(*) AS n FROM gold.sales",
    ];
    for token in [front.admin.clone(), analyst.clone()] {
        for sql in queries {
            let on = rows(&front, &token, "on", sql).await;
            let off = rows(&front, &token, "off", sql).await;
            assert_eq!(on, off, "{sql}");
        }
    }
    let masked = rows(
        &front,
        &analyst,
        "on",
        "SELECT DISTINCT customer FROM gold.sales",
    )
    .await;
    assert_eq!(masked, json!([{"customer": "***"}]));
    let n = rows(
        &front,
        &analyst,
        "on",
        "SELECT count(*) AS n FROM gold.sales",
    )
    .await;
    assert_eq!(n, json!([{"n": 5}]));
    let tasks: Vec<usize> = executors
        .iter()
        .map(|e| e.log().matches("Received task: [").count())
        .collect();
    assert!(
        tasks.iter().all(|&n| n > 0),
        "tasks per executor: {tasks:?}"
    );

    // The scheduler: no certificate, another authority's certificate, or plain gRPC reach
    // nothing; the cluster's own certificate does.
    assert!(ask_scheduler(pki.channel(port, true).await).await.is_ok());
    assert!(ask_scheduler(pki.channel(port, false).await).await.is_err());
    assert!(
        ask_scheduler(rogue.channel(port, true).await)
            .await
            .is_err()
    );
    let plain = Endpoint::from_shared(format!("http://127.0.0.1:{port}"))
        .unwrap()
        .connect()
        .await
        .map_err(|e| e.to_string());
    assert!(ask_scheduler(plain).await.is_err());

    // An executor's shuffle service: another authority's certificate is refused at the
    // handshake; the cluster's certificate without the plan key's token (the scheduler's
    // position) is refused by the service.
    let flight = flight_ports[0];
    assert!(
        rogue.channel(flight, true).await.is_err() || {
            let c = rogue.channel(flight, true).await.unwrap();
            FlightServiceClient::new(c)
                .do_get(Ticket::new("x"))
                .await
                .is_err()
        }
    );
    let member = pki.channel(flight, true).await.unwrap();
    let refused = FlightServiceClient::new(member)
        .do_get(Ticket::new("any partition"))
        .await
        .err()
        .map(|s| s.code());
    assert_eq!(refused, Some(tonic::Code::Unauthenticated));

    // No secret in any node's log.
    for (name, log) in std::iter::once(("scheduler", scheduler.log()))
        .chain(executors.iter().map(|e| ("executor", e.log())))
    {
        assert!(!log.contains(PLAN_KEY), "{name} logged the plan key");
        assert!(
            !log.contains("strata-shuffle/"),
            "{name} logged the shuffle token"
        );
        assert!(!log.contains("PRIVATE KEY"), "{name} logged a private key");
    }
}
