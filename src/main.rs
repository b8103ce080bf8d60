//! The `strata` binary: `serve` (default), `token`, `check-config`.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Parser, Subcommand};
use strata::config::{AuthMode, Config};
use strata::security::Authenticator;
use strata::{Server, telemetry};

#[derive(Debug, Parser)]
#[command(
    name = "strata",
    version,
    about = "Lakehouse query server: Delta Lake + DataFusion over Flight SQL and REST"
)]
struct Cli {
    /// Configuration file (TOML). Environment STRATA__SECTION__KEY overrides it.
    #[arg(long, global = true, env = "STRATA_CONFIG")]
    config: Option<PathBuf>,
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Start the server (the default).
    Serve {
        /// REST listen address (server.http_addr).
        #[arg(long)]
        http_addr: Option<std::net::SocketAddr>,
        /// Flight SQL listen address (server.flight_addr).
        #[arg(long)]
        flight_addr: Option<std::net::SocketAddr>,
        /// Warehouse: a local path or s3://bucket/prefix (storage.warehouse).
        #[arg(long)]
        warehouse: Option<String>,
    },
    /// Mint a token from the configured HS256 secret; prints only the token.
    Token {
        #[arg(long)]
        sub: String,
        #[arg(long = "role")]
        roles: Vec<String>,
        /// Extra claims, KEY=VALUE (VALUE parsed as JSON when it can be).
        #[arg(long = "claim")]
        claims: Vec<String>,
        /// Lifetime: 3600, 90s, 30m, 12h, 7d.
        #[arg(long, default_value = "1h")]
        ttl: String,
    },
    /// Print the effective configuration (secrets redacted) and every problem with it.
    CheckConfig,
    /// Manage pipelines on a running server.
    Pipelines {
        #[command(subcommand)]
        command: PipelinesCommand,
    },
    /// Manage pull connectors on a running server.
    Connectors {
        #[command(subcommand)]
        command: ConnectorsCommand,
    },
    /// Run a node of the query cluster ([cluster] in the configuration).
    Cluster {
        #[command(subcommand)]
        command: ClusterCommand,
    },
}

#[derive(Debug, Subcommand)]
enum ClusterCommand {
    /// The scheduler: splits submitted plans into stages (no storage, no plan key).
    Scheduler,
    /// An executor: runs stages, reading tables with its own storage configuration.
    Executor,
}

#[derive(Debug, Subcommand)]
enum ConnectorsCommand {
    /// Deploy the connector defined in FILE (TOML) through `PUT /api/v1/connectors/{name}`;
    /// the name is the file's stem unless given.
    Deploy {
        file: PathBuf,
        #[arg(long)]
        name: Option<String>,
        /// The server's REST address.
        #[arg(long, env = "STRATA_URL", default_value = "http://127.0.0.1:8080")]
        url: String,
        /// A bearer token (`strata token`, or your identity provider's).
        #[arg(long, env = "STRATA_TOKEN", hide_env_values = true)]
        token: String,
    },
}

#[derive(Debug, Subcommand)]
enum PipelinesCommand {
    /// Deploy the pipeline in DIR (pipeline.toml + <layer>/<model>.sql) through
    /// `PUT /api/v1/pipelines/{name}`; prints the plan. The name is the directory's.
    Deploy {
        dir: PathBuf,
        /// Only print the plan.
        #[arg(long)]
        dry_run: bool,
        /// Deploy even when a model needs a full refresh.
        #[arg(long)]
        allow_full_refresh: bool,
        /// The server's REST address.
        #[arg(long, env = "STRATA_URL", default_value = "http://127.0.0.1:8080")]
        url: String,
        /// A bearer token (`strata token`, or your identity provider's).
        #[arg(long, env = "STRATA_TOKEN", hide_env_values = true)]
        token: String,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command.unwrap_or(Command::Serve {
        http_addr: None,
        flight_addr: None,
        warehouse: None,
    }) {
        Command::Serve {
            http_addr,
            flight_addr,
            warehouse,
        } => serve(cli.config, http_addr, flight_addr, warehouse),
        Command::Token {
            sub,
            roles,
            claims,
            ttl,
        } => token(cli.config, &sub, &roles, &claims, &ttl),
        Command::CheckConfig => check_config(cli.config),
        Command::Pipelines {
            command:
                PipelinesCommand::Deploy {
                    dir,
                    dry_run,
                    allow_full_refresh,
                    url,
                    token,
                },
        } => deploy_pipeline(&dir, dry_run, allow_full_refresh, &url, &token),
        Command::Connectors {
            command:
                ConnectorsCommand::Deploy {
                    file,
                    name,
                    url,
                    token,
                },
        } => deploy_connector(&file, name, &url, &token),
        Command::Cluster { command } => cluster(cli.config, command),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}

fn serve(
    file: Option<PathBuf>,
    http_addr: Option<std::net::SocketAddr>,
    flight_addr: Option<std::net::SocketAddr>,
    warehouse: Option<String>,
) -> Result<(), String> {
    let mut cfg = Config::load(file.as_deref()).map_err(|e| e.to_string())?;
    if let Some(a) = http_addr {
        cfg.server.http_addr = a;
    }
    if let Some(a) = flight_addr {
        cfg.server.flight_addr = a;
    }
    if let Some(w) = warehouse {
        cfg.storage.warehouse = w;
    }
    telemetry::init(&cfg.log);
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .thread_name("strata")
        .build()
        .map_err(|e| e.to_string())?;
    runtime.block_on(async move {
        let server = Server::build(cfg).await.map_err(|e| e.to_string())?;
        let http = server.http_addr().map_err(|e| e.to_string())?;
        let flight = server.flight_addr().map_err(|e| e.to_string())?;
        let c = server.config();
        println!("Strata {} is running", env!("CARGO_PKG_VERSION"));
        println!("  REST        http://{http}  (OpenAPI: /api/v1/openapi.json)");
        println!("  Flight SQL  grpc://{flight}");
        println!("  warehouse   {}", c.storage.warehouse);
        if c.auth.mode == AuthMode::Dev {
            let ttl = Duration::from_secs(c.auth.dev_token_ttl_secs);
            let token = server
                .authenticator()
                .mint(
                    "admin",
                    std::slice::from_ref(&c.auth.admin_role),
                    BTreeMap::new(),
                    ttl,
                )
                .map_err(|e| e.to_string())?;
            println!(
                "  auth        dev mode (secret in {}/dev-secret)",
                c.server.data_dir.display()
            );
            println!(
                "  admin token (valid {}h):\n\n{token}\n",
                ttl.as_secs() / 3600
            );
        }
        server
            .run_until_stopped(shutdown_signal())
            .await
            .map_err(|e| e.to_string())
    })
}

fn cluster(file: Option<PathBuf>, command: ClusterCommand) -> Result<(), String> {
    let cfg = Config::load(file.as_deref()).map_err(|e| e.to_string())?;
    telemetry::init(&cfg.log);
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .thread_name("strata-cluster")
        .build()
        .map_err(|e| e.to_string())?;
    runtime.block_on(async move {
        let node = async {
            match command {
                ClusterCommand::Scheduler => {
                    strata::cluster::run_scheduler(&cfg, strata::engine::expr_codec()).await
                }
                ClusterCommand::Executor => {
                    let template = strata::engine::session_template(&cfg.query)?;
                    strata::cluster::run_executor(&cfg, template, strata::engine::expr_codec())
                        .await
                }
            }
        };
        tokio::select! {
            r = node => r.map_err(|e| e.to_string()),
            () = shutdown_signal() => Ok(()),
        }
    })
}

async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        () = ctrl_c => {},
        () = term => {},
    }
}

fn token(
    file: Option<PathBuf>,
    sub: &str,
    roles: &[String],
    claims: &[String],
    ttl: &str,
) -> Result<(), String> {
    let cfg = Config::load(file.as_deref()).map_err(|e| e.to_string())?;
    let auth = Authenticator::from_config(&cfg.auth, &cfg.server).map_err(|e| e.to_string())?;
    let mut extra = BTreeMap::new();
    for c in claims {
        let (k, v) = c
            .split_once('=')
            .ok_or_else(|| format!("--claim {c}: expected KEY=VALUE"))?;
        if ["sub", "exp", "nbf", "iat", "roles"].contains(&k) {
            return Err(format!("--claim {k}: reserved; use --sub/--role/--ttl"));
        }
        let value =
            serde_json::from_str(v).unwrap_or_else(|_| serde_json::Value::String(v.to_string()));
        extra.insert(k.to_string(), value);
    }
    let ttl = parse_ttl(ttl)?;
    let token = auth
        .mint(sub, roles, extra, ttl)
        .map_err(|e| e.to_string())?;
    println!("{token}");
    Ok(())
}

fn parse_ttl(s: &str) -> Result<Duration, String> {
    let s = s.trim();
    let (num, unit) = s.split_at(s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len()));
    let n: u64 = num.parse().map_err(|_| format!("invalid --ttl {s:?}"))?;
    let secs = match unit {
        "" | "s" => n,
        "m" => n * 60,
        "h" => n * 3600,
        "d" => n * 86400,
        _ => return Err(format!("invalid --ttl unit in {s:?} (s, m, h, d)")),
    };
    if secs == 0 {
        return Err("--ttl must be positive".into());
    }
    Ok(Duration::from_secs(secs))
}

fn check_config(file: Option<PathBuf>) -> Result<(), String> {
    let cfg = Config::load(file.as_deref()).map_err(|e| e.to_string())?;
    print!("{}", cfg.to_redacted_toml().map_err(|e| e.to_string())?);
    let problems = strata::server::config_problems(&cfg);
    if problems.is_empty() {
        eprintln!("configuration OK");
        Ok(())
    } else {
        for p in &problems {
            eprintln!("problem: {p}");
        }
        Err(format!(
            "{} problem(s) in the configuration",
            problems.len()
        ))
    }
}

/// `strata pipelines deploy DIR`: the directory as a bundle, sent to the server.
fn deploy_pipeline(
    dir: &std::path::Path,
    dry_run: bool,
    allow_full_refresh: bool,
    url: &str,
    token: &str,
) -> Result<(), String> {
    let name = dir
        .canonicalize()
        .ok()
        .and_then(|d| d.file_name().and_then(|n| n.to_str()).map(str::to_string))
        .ok_or_else(|| format!("{}: not a directory with a name", dir.display()))?;
    let mut bundle = strata::flows::read_bundle(dir).map_err(|e| e.to_string())?;
    bundle.allow_full_refresh = allow_full_refresh;
    let body = serde_json::to_vec(&bundle).map_err(|e| e.to_string())?;
    let target = format!(
        "{}/api/v1/pipelines/{name}{}",
        url.trim_end_matches('/'),
        if dry_run { "?dry_run=true" } else { "" }
    );
    put(&target, token, "application/json", body)
}

/// Deploys a connector definition file.
fn deploy_connector(
    file: &std::path::Path,
    name: Option<String>,
    url: &str,
    token: &str,
) -> Result<(), String> {
    let name = match name {
        Some(n) => n,
        None => file
            .file_stem()
            .and_then(|n| n.to_str())
            .map(str::to_string)
            .ok_or_else(|| format!("{}: give the connector's name (--name)", file.display()))?,
    };
    let body = std::fs::read(file).map_err(|e| format!("{}: {e}", file.display()))?;
    let target = format!("{}/api/v1/connectors/{name}", url.trim_end_matches('/'));
    put(&target, token, "application/toml", body)
}

/// PUTs `body` to `target` and prints the JSON answer (an error on a non-2xx status).
fn put(target: &str, token: &str, content_type: &str, body: Vec<u8>) -> Result<(), String> {
    use http_body_util::{BodyExt, Full};
    let request = http::Request::put(target)
        .header("authorization", format!("Bearer {token}"))
        .header("content-type", content_type)
        .body(Full::new(bytes::Bytes::from(body)))
        .map_err(|e| format!("{target}: {e}"))?;
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| e.to_string())?;
    let (status, text) = runtime.block_on(async {
        let client =
            hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
                .build_http::<Full<bytes::Bytes>>();
        let response = client
            .request(request)
            .await
            .map_err(|e| format!("{target}: {e}"))?;
        let status = response.status();
        let bytes = response
            .into_body()
            .collect()
            .await
            .map_err(|e| format!("{target}: {e}"))?
            .to_bytes();
        Ok::<_, String>((status, String::from_utf8_lossy(&bytes).into_owned()))
    })?;
    let pretty = serde_json::from_str::<serde_json::Value>(&text)
        .and_then(|v| serde_json::to_string_pretty(&v))
        .unwrap_or(text);
    if status.is_success() {
        println!("{pretty}");
        Ok(())
    } else {
        Err(format!("{status}: {pretty}"))
    }
}
