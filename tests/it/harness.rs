//! `TestServer`: builds the real server on port 0 in a temp dir and serves it on a task.
//! `Server::build` binds both listeners before returning, so the server is ready when
//! `start` returns: no sleeps.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use arrow::array::RecordBatch;
use serde_json::{Value, json};
use strata::config::{Config, GrantConfig};
use strata::security::Authenticator;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

pub struct TestServer {
    pub http: SocketAddr,
    pub flight: SocketAddr,
    /// The token-less metrics listener, when `server.metrics_addr` is set.
    pub metrics: Option<SocketAddr>,
    pub root: PathBuf,
    pub admin: String,
    pub client: reqwest::Client,
    auth: Arc<Authenticator>,
    pub config: Config,
    stop: Option<oneshot::Sender<()>>,
    task: Option<JoinHandle<strata::Result<()>>>,
    _dir: Option<tempfile::TempDir>,
    moto: Option<Arc<Moto>>,
}

/// Where a test's warehouse lives. Storage-dependent tests run on both (see
/// [`on_both_backends`](crate::on_both_backends)).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    Local,
    /// `s3://…` on a moto server process started for the test.
    S3,
}

/// Turns `async fn name(backend: Backend)` functions into two tests each, `name::local` and
/// `name::s3`.
#[macro_export]
macro_rules! on_both_backends {
    ($($name:ident),* $(,)?) => {
        $(
            mod $name {
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn local() {
                    super::$name($crate::harness::Backend::Local).await
                }
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn s3() {
                    super::$name($crate::harness::Backend::S3).await
                }
            }
        )*
    };
}

/// The configuration tests use: dev auth, ports 0, warehouse under `root`, and grants for
/// an `analyst` (SELECT on gold) and a `loader` (SELECT + INSERT on bronze).
pub fn test_config(root: &Path) -> Config {
    let mut cfg = Config::default();
    cfg.server.http_addr = "127.0.0.1:0".parse().unwrap();
    cfg.server.flight_addr = "127.0.0.1:0".parse().unwrap();
    cfg.server.data_dir = root.join("data");
    cfg.server.shutdown_grace_secs = 5;
    cfg.storage.warehouse = root.join("data/warehouse").display().to_string();
    cfg.query.target_partitions = 2;
    cfg.query.memory_limit_bytes = 512 * 1024 * 1024;
    cfg.access.grants = vec![
        GrantConfig {
            role: "analyst".into(),
            privilege: "SELECT".into(),
            on: "gold".into(),
        },
        GrantConfig {
            role: "loader".into(),
            privilege: "SELECT".into(),
            on: "bronze".into(),
        },
        GrantConfig {
            role: "loader".into(),
            privilege: "INSERT".into(),
            on: "bronze".into(),
        },
    ];
    cfg
}

impl TestServer {
    /// A Flight SQL client of this server, holding `token`.
    pub async fn flight_client(
        &self,
        token: &str,
    ) -> arrow_flight::sql::client::FlightSqlServiceClient<tonic::transport::Channel> {
        let channel = tonic::transport::Endpoint::from_shared(format!("http://{}", self.flight))
            .unwrap()
            .connect()
            .await
            .unwrap();
        let mut c = arrow_flight::sql::client::FlightSqlServiceClient::new(channel);
        c.set_token(token.to_string());
        c
    }

    pub async fn start() -> TestServer {
        TestServer::start_on(Backend::Local).await
    }

    /// A server with the test configuration on `backend`.
    pub async fn start_on(backend: Backend) -> TestServer {
        TestServer::start_configured(backend, |_| {}).await
    }

    /// A server with the test configuration on `backend`, changed by `change`.
    pub async fn start_configured(
        backend: Backend,
        change: impl FnOnce(&mut Config),
    ) -> TestServer {
        TestServer::start_clocked(backend, change, strata::clock::system()).await
    }

    /// Another server on the same warehouse (a second replica).
    pub async fn replica(&self) -> TestServer {
        let mut r = TestServer::start_with(self.config.clone()).await;
        r.moto = self.moto.clone();
        r
    }

    /// Stops the server and starts a new one on the same warehouse and data dir.
    pub async fn restart(mut self) -> TestServer {
        let cfg = self.config.clone();
        let moto = self.moto.take();
        let dir = self.stop().await;
        let mut s = TestServer::start_with(cfg).await;
        s._dir = dir;
        s.moto = moto;
        s
    }

    /// A server with the test configuration on `backend`, changed by `change`, whose
    /// scheduler and flows read `clock`.
    pub async fn start_clocked(
        backend: Backend,
        change: impl FnOnce(&mut Config),
        clock: Arc<dyn strata::clock::Clock>,
    ) -> TestServer {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().to_path_buf();
        let (mut cfg, moto) = match backend {
            Backend::Local => (test_config(&root), None),
            Backend::S3 => {
                let moto = Moto::start().await;
                (moto.config(&root, "wh"), Some(Arc::new(moto)))
            }
        };
        change(&mut cfg);
        let mut s = TestServer::start_with_clock(cfg, clock).await;
        s._dir = Some(dir);
        s.root = root;
        s.moto = moto;
        s
    }

    pub async fn start_with(cfg: Config) -> TestServer {
        TestServer::start_with_clock(cfg, strata::clock::system()).await
    }

    pub async fn start_with_clock(cfg: Config, clock: Arc<dyn strata::clock::Clock>) -> TestServer {
        strata::telemetry::init(&strata::config::LogConfig {
            level: "warn".into(),
            ..Default::default()
        });
        let root = cfg
            .server
            .data_dir
            .parent()
            .map(Path::to_path_buf)
            .unwrap_or_default();
        let config = cfg.clone();
        let server = strata::Server::build_with_clock(cfg, clock)
            .await
            .expect("server builds");
        let http = server.http_addr().unwrap();
        let flight = server.flight_addr().unwrap();
        let metrics = server.metrics_addr().unwrap();
        let auth = server.authenticator();
        let (tx, rx) = oneshot::channel::<()>();
        let task = tokio::spawn(server.run_until_stopped(async move {
            let _ = rx.await;
        }));
        let admin = auth
            .mint(
                "admin",
                &["admin".into()],
                BTreeMap::new(),
                Duration::from_secs(3600),
            )
            // Only HS256 setups can mint; others bring their own tokens.
            .unwrap_or_default();
        TestServer {
            http,
            flight,
            metrics,
            root,
            admin,
            client: reqwest::Client::new(),
            auth,
            config,
            stop: Some(tx),
            task: Some(task),
            _dir: None,
            moto: None,
        }
    }

    /// Stops the server and hands back its temp dir (for restart tests).
    pub async fn stop(mut self) -> Option<tempfile::TempDir> {
        if let Some(tx) = self.stop.take() {
            let _ = tx.send(());
        }
        if let Some(task) = self.task.take() {
            task.await.unwrap().unwrap();
        }
        self._dir.take()
    }

    pub fn token(&self, sub: &str, roles: &[&str]) -> String {
        let roles: Vec<String> = roles.iter().map(|r| r.to_string()).collect();
        self.auth
            .mint(sub, &roles, BTreeMap::new(), Duration::from_secs(3600))
            .unwrap()
    }

    /// A token with roles and extra claims (e.g. `region`).
    pub fn token_with(&self, sub: &str, roles: &[&str], claims: serde_json::Value) -> String {
        let roles: Vec<String> = roles.iter().map(|r| r.to_string()).collect();
        let claims: BTreeMap<String, Value> = claims
            .as_object()
            .map(|m| m.iter().map(|(k, v)| (k.clone(), v.clone())).collect())
            .unwrap_or_default();
        self.auth
            .mint(sub, &roles, claims, Duration::from_secs(3600))
            .unwrap()
    }

    /// `method path` with a JSON body; status and JSON answer.
    pub async fn send_json(
        &self,
        method: reqwest::Method,
        token: &str,
        path: &str,
        body: Value,
    ) -> (u16, Value) {
        let r = self
            .client
            .request(method, self.url(path))
            .bearer_auth(token)
            .json(&body)
            .send()
            .await
            .unwrap();
        status_json(r).await
    }

    /// Replaces the grants (as admin) and expects success.
    pub async fn grant(&self, grants: Value) {
        let (status, body) = self
            .put_json(
                &self.admin.clone(),
                "/api/v1/grants",
                json!({ "grants": grants }),
            )
            .await;
        assert_eq!(status, 200, "{body}");
    }

    pub async fn put_json(&self, token: &str, path: &str, body: Value) -> (u16, Value) {
        self.send_json(reqwest::Method::PUT, token, path, body)
            .await
    }

    pub async fn patch_json(&self, token: &str, path: &str, body: Value) -> (u16, Value) {
        self.send_json(reqwest::Method::PATCH, token, path, body)
            .await
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{}", self.http, path)
    }

    pub async fn get(&self, token: &str, path: &str) -> (u16, Value) {
        let r = self
            .client
            .get(self.url(path))
            .bearer_auth(token)
            .send()
            .await
            .unwrap();
        status_json(r).await
    }

    pub async fn post_json(&self, token: &str, path: &str, body: Value) -> (u16, Value) {
        self.send_json(reqwest::Method::POST, token, path, body)
            .await
    }

    /// `GET /metrics` as admin: the Prometheus text.
    pub async fn metrics_text(&self) -> String {
        let r = self
            .client
            .get(self.url("/metrics"))
            .bearer_auth(&self.admin)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200);
        r.text().await.unwrap()
    }

    /// Runs SQL, JSON result.
    pub async fn sql(&self, token: &str, sql: &str) -> (u16, Value) {
        self.post_json(token, "/api/v1/query", json!({ "sql": sql }))
            .await
    }

    /// Runs SQL as admin and expects success.
    pub async fn sql_ok(&self, sql: &str) -> Value {
        let (status, body) = self.sql(&self.admin.clone(), sql).await;
        assert_eq!(status, 200, "{sql}: {body}");
        body
    }

    /// Runs SQL and decodes the Arrow IPC stream result.
    pub async fn sql_arrow(
        &self,
        token: &str,
        sql: &str,
        params: Value,
    ) -> Result<Vec<RecordBatch>, (u16, Value)> {
        let r = self
            .client
            .post(self.url("/api/v1/query"))
            .bearer_auth(token)
            .header("accept", "application/vnd.apache.arrow.stream")
            .json(&json!({ "sql": sql, "params": params }))
            .send()
            .await
            .unwrap();
        if r.status() != 200 {
            return Err(status_json(r).await);
        }
        let bytes = r.bytes().await.unwrap();
        let reader =
            arrow::ipc::reader::StreamReader::try_new(std::io::Cursor::new(bytes), None).unwrap();
        Ok(reader.map(|b| b.unwrap()).collect())
    }

    pub async fn upload(
        &self,
        token: &str,
        table: &str,
        content_type: &str,
        body: Vec<u8>,
        query: &str,
    ) -> (u16, Value) {
        let r = self
            .client
            .post(self.url(&format!(
                "/api/v1/tables/{}/rows{query}",
                table.replace('.', "/")
            )))
            .bearer_auth(token)
            .header("content-type", content_type)
            .body(body)
            .send()
            .await
            .unwrap();
        status_json(r).await
    }

    /// Creates `layer.name (id bigint not null, name string, amount double)` as admin.
    pub async fn create_people(&self, table: &str) {
        let (layer, name) = table.split_once('.').unwrap();
        let (status, body) = self
            .post_json(
                &self.admin.clone(),
                "/api/v1/tables",
                json!({
                    "layer": layer, "name": name,
                    "columns": [
                        {"name": "id", "type": "bigint", "nullable": false, "description": "key"},
                        {"name": "name", "type": "string"},
                        {"name": "amount", "type": "double"}
                    ],
                    "description": "people"
                }),
            )
            .await;
        assert_eq!(status, 201, "{body}");
    }

    /// Creates `table` (see [`TestServer::create_people`]) with rows 1..=n: id, name `p{i}`,
    /// amount `i`.
    pub async fn seed_people(&self, table: &str, n: i64) {
        self.create_people(table).await;
        let rows: Vec<Value> = (1..=n)
            .map(|i| json!({"id": i, "name": format!("p{i}"), "amount": i as f64}))
            .collect();
        let body = serde_json::to_vec(&rows).unwrap();
        let (status, resp) = self
            .upload(&self.admin.clone(), table, "application/json", body, "")
            .await;
        assert_eq!(status, 200, "{resp}");
    }

    pub async fn version(&self, table: &str) -> u64 {
        let (status, body) = self
            .get(
                &self.admin.clone(),
                &format!("/api/v1/tables/{}", table.replace('.', "/")),
            )
            .await;
        assert_eq!(status, 200, "{body}");
        body["version"].as_u64().unwrap()
    }

    pub async fn count(&self, table: &str) -> i64 {
        let body = self
            .sql_ok(&format!("SELECT count(*) AS n FROM {table}"))
            .await;
        body[0]["n"].as_i64().unwrap()
    }
}

pub async fn status_json(r: reqwest::Response) -> (u16, Value) {
    let status = r.status().as_u16();
    let text = r.text().await.unwrap();
    let value = if text.is_empty() {
        Value::Null
    } else {
        serde_json::from_str(&text).unwrap_or(Value::String(text))
    };
    (status, value)
}

/// The error message of an error body.
pub fn message(body: &Value) -> String {
    body["error"]["message"]
        .as_str()
        .unwrap_or_default()
        .to_string()
}

/// The Python interpreter of the test venv, created (and its pinned requirements installed)
/// on first use. A file lock serializes creation across test processes.
pub fn python() -> PathBuf {
    use std::io::Write;
    let base = PathBuf::from(env!("CARGO_TARGET_TMPDIR"));
    std::fs::create_dir_all(&base).unwrap();
    let venv = base.join("strata-test-venv");
    let requirements =
        PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/python/requirements.txt");
    let wanted = std::fs::read_to_string(&requirements).unwrap();
    let lock = std::fs::File::create(base.join("strata-test-venv.lock")).unwrap();
    lock.lock().unwrap();
    let marker = venv.join(".strata-requirements");
    let python = venv.join("bin/python");
    if std::fs::read_to_string(&marker).ok().as_deref() != Some(wanted.as_str()) {
        let _ = std::fs::remove_dir_all(&venv);
        let ok = std::process::Command::new("python3")
            .args(["-m", "venv"])
            .arg(&venv)
            .status()
            .unwrap();
        assert!(ok.success(), "python3 -m venv failed");
        let out = std::process::Command::new(&python)
            .args([
                "-m",
                "pip",
                "install",
                "--quiet",
                "--disable-pip-version-check",
                // The wheels are installed once per venv; keeping a second copy of them in
                // ~/.cache/pip only costs disk (a CI run once hit ENOSPC here).
                "--no-cache-dir",
                "-r",
            ])
            .arg(&requirements)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "pip install failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let mut f = std::fs::File::create(&marker).unwrap();
        f.write_all(wanted.as_bytes()).unwrap();
    }
    lock.unlock().unwrap();
    python
}

/// A moto S3 server process (the S3 stand-in, see ../shared/S3.md) with one bucket; killed
/// on drop. It runs through `tests/python/s3_stand_in.py`, which makes moto's conditional
/// puts atomic under a race, as S3's are.
pub struct Moto {
    child: std::process::Child,
    pub endpoint: String,
    pub bucket: String,
}

impl Drop for Moto {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Moto {
    pub async fn start() -> Moto {
        let python = tokio::task::spawn_blocking(python).await.unwrap();
        let launcher =
            PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/python/s3_stand_in.py");
        let mut child = std::process::Command::new(python)
            .arg(launcher)
            .args(["127.0.0.1", "0"])
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        let rx = line_channel(child.stderr.take().unwrap());
        let endpoint: String = tokio::task::spawn_blocking(move || {
            loop {
                let line = rx
                    .recv_timeout(Duration::from_secs(60))
                    .expect("the S3 stand-in prints its address");
                if let Some(i) = line.find("http://127.0.0.1:") {
                    break line[i..]
                        .chars()
                        .take_while(|c| !c.is_whitespace())
                        .collect();
                }
            }
        })
        .await
        .unwrap();
        let bucket = format!("strata-{}", std::process::id());
        let r = reqwest::Client::new()
            .put(format!("{endpoint}/{bucket}"))
            .send()
            .await
            .unwrap();
        assert!(r.status().is_success(), "create bucket: {}", r.status());
        Moto {
            child,
            endpoint,
            bucket,
        }
    }

    pub fn addr(&self) -> SocketAddr {
        self.endpoint.trim_start_matches("http://").parse().unwrap()
    }

    /// A server configuration whose warehouse is `s3://bucket/prefix` on this moto.
    pub fn config(&self, root: &Path, prefix: &str) -> Config {
        self.config_via(root, prefix, &self.endpoint)
    }

    /// The same, reaching moto through `endpoint` (e.g. a [`FaultProxy`]).
    pub fn config_via(&self, root: &Path, prefix: &str, endpoint: &str) -> Config {
        let mut cfg = test_config(root);
        cfg.storage.warehouse = format!("s3://{}/{prefix}", self.bucket);
        cfg.storage.s3.endpoint = Some(endpoint.to_string());
        cfg.storage.s3.region = Some("us-east-1".into());
        cfg.storage.s3.access_key_id = Some(strata::config::Secret::new("test"));
        cfg.storage.s3.secret_access_key = Some(strata::config::Secret::new("test"));
        cfg.storage.s3.allow_http = true;
        cfg.storage.s3.path_style = true;
        cfg
    }
}

/// A TCP proxy in front of a real server that can cut the network and restore it: cutting
/// closes every open connection and refuses new ones until [`FaultProxy::restore`].
pub struct FaultProxy {
    pub addr: SocketAddr,
    up: Arc<std::sync::atomic::AtomicBool>,
    generation: tokio::sync::watch::Sender<u64>,
    task: JoinHandle<()>,
}

impl Drop for FaultProxy {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl FaultProxy {
    pub async fn start(target: SocketAddr) -> FaultProxy {
        use std::sync::atomic::Ordering;
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let up = Arc::new(std::sync::atomic::AtomicBool::new(true));
        let (generation, _) = tokio::sync::watch::channel(0u64);
        let (flag, gen_tx) = (Arc::clone(&up), generation.clone());
        let task = tokio::spawn(async move {
            while let Ok((mut inbound, _)) = listener.accept().await {
                if !flag.load(Ordering::SeqCst) {
                    drop(inbound);
                    continue;
                }
                let mut cut = gen_tx.subscribe();
                tokio::spawn(async move {
                    let Ok(mut outbound) = tokio::net::TcpStream::connect(target).await else {
                        return;
                    };
                    tokio::select! {
                        _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound) => {}
                        _ = cut.changed() => {}
                    }
                });
            }
        });
        FaultProxy {
            addr,
            up,
            generation,
            task,
        }
    }

    /// The network is down: open connections drop, new ones are refused.
    pub fn cut(&self) {
        self.up.store(false, std::sync::atomic::Ordering::SeqCst);
        self.generation.send_modify(|g| *g += 1);
    }

    pub fn restore(&self) {
        self.up.store(true, std::sync::atomic::Ordering::SeqCst);
    }
}

/// The environment that points a `strata` process at `moto`'s bucket, under `prefix`.
pub fn s3_env(moto: &Moto, prefix: &str) -> Vec<(String, String)> {
    [
        ("WAREHOUSE", format!("s3://{}/{prefix}", moto.bucket)),
        ("S3__ENDPOINT", moto.endpoint.clone()),
        ("S3__REGION", "us-east-1".into()),
        ("S3__ACCESS_KEY_ID", "test".into()),
        ("S3__SECRET_ACCESS_KEY", "test".into()),
        ("S3__ALLOW_HTTP", "true".into()),
        ("S3__PATH_STYLE", "true".into()),
    ]
    .into_iter()
    .map(|(k, v)| (format!("STRATA__STORAGE__{k}"), v))
    .collect()
}

/// A running `strata serve` process (the real binary) and what its banner printed.
pub struct StrataProcess {
    pub child: std::process::Child,
    pub http: String,
    pub token: String,
}

impl Drop for StrataProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl StrataProcess {
    /// Starts `strata serve` in `dir` with `env` on top of ports 0, and waits for the
    /// banner (REST address and the dev admin token).
    pub async fn spawn(dir: &Path, env: &[(String, String)]) -> StrataProcess {
        let mut cmd = std::process::Command::new(env!("CARGO_BIN_EXE_strata"));
        cmd.current_dir(dir)
            .env("STRATA__SERVER__HTTP_ADDR", "127.0.0.1:0")
            .env("STRATA__SERVER__FLIGHT_ADDR", "127.0.0.1:0")
            .env_remove("STRATA_CONFIG")
            .env("RUST_LOG", "warn")
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::null());
        for (k, v) in env {
            cmd.env(k, v);
        }
        let mut child = cmd.spawn().unwrap();
        let rx = line_channel(child.stdout.take().unwrap());
        tokio::task::spawn_blocking(move || {
            let (mut http, mut token) = (None, None);
            while http.is_none() || token.is_none() {
                let line = rx.recv_timeout(Duration::from_secs(60)).expect("banner");
                if let Some(rest) = line.trim().strip_prefix("REST") {
                    http = rest.split_whitespace().next().map(str::to_string);
                } else if line.starts_with("eyJ") {
                    token = Some(line.trim().to_string());
                }
            }
            StrataProcess {
                child,
                http: http.unwrap(),
                token: token.unwrap(),
            }
        })
        .await
        .unwrap()
    }
}

/// The lines `r` produces, read on a thread of their own (child process output).
pub fn line_channel(r: impl std::io::Read + Send + 'static) -> std::sync::mpsc::Receiver<String> {
    use std::io::BufRead;
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in std::io::BufReader::new(r).lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    rx
}

/// `strata.toml` in `dir` declaring `etl` (reads bronze, writes silver); the environment
/// that points a process at it.
pub fn etl_env(dir: &std::path::Path) -> Vec<(String, String)> {
    let config = dir.join("strata.toml");
    let mut toml = String::from("[[pipelines.principals]]\nname = \"etl\"\nroles = [\"etl\"]\n");
    for (privilege, on) in [
        ("SELECT", "bronze"),
        ("SELECT", "silver"),
        ("INSERT", "silver"),
    ] {
        toml.push_str(&format!(
            "\n[[access.grants]]\nrole = \"etl\"\nprivilege = \"{privilege}\"\non = \"{on}\"\n"
        ));
    }
    std::fs::write(&config, toml).unwrap();
    vec![("STRATA_CONFIG".to_string(), config.display().to_string())]
}

/// `env` with `failpoints` armed.
pub fn armed(env: &[(String, String)], failpoints: &str) -> Vec<(String, String)> {
    let mut armed = env.to_vec();
    armed.push((strata::failpoint::ENV.to_string(), failpoints.to_string()));
    armed
}

/// A token of `deployer` (admin and etl: a pipeline's run-as roles are a subset of its
/// deployer's), signed by the key of the process in `dir`.
pub fn deployer_token(dir: &std::path::Path, env: &[(String, String)]) -> String {
    let mut cmd = std::process::Command::new(env!("CARGO_BIN_EXE_strata"));
    cmd.current_dir(dir).args([
        "token", "--sub", "deployer", "--role", "admin", "--role", "etl",
    ]);
    for (k, v) in env {
        cmd.env(k, v);
    }
    String::from_utf8(cmd.output().unwrap().stdout)
        .unwrap()
        .trim()
        .to_string()
}

pub async fn send(
    client: &reqwest::Client,
    token: &str,
    method: reqwest::Method,
    url: &str,
    body: Value,
) -> (u16, Value) {
    let r = client
        .request(method, url)
        .bearer_auth(token)
        .json(&body)
        .send()
        .await
        .unwrap();
    let status = r.status().as_u16();
    (status, r.json().await.unwrap_or(Value::Null))
}
