//! What every end-to-end bench needs: a multi-threaded runtime and the real server on
//! `127.0.0.1:0` over a temp warehouse, serving on a background task.

#![allow(
    dead_code,
    unreachable_pub,
    missing_debug_implementations,
    clippy::unwrap_used
)]

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use strata::config::Config;
use strata::security::Authenticator;

/// A numeric setting from the environment (`STRATA_BENCH_…`), else `default`.
pub fn env_u64(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

pub fn block_on<F: std::future::Future>(f: F) -> F::Output {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap()
        .block_on(f)
}

pub struct BenchServer {
    pub http: SocketAddr,
    pub flight: SocketAddr,
    pub auth: Arc<Authenticator>,
    pub engine: Arc<strata::engine::Engine>,
    _dir: tempfile::TempDir,
}

impl BenchServer {
    /// Starts the server; `tweak` adjusts the configuration (grants, cache, …).
    pub async fn start(tweak: impl FnOnce(&mut Config)) -> BenchServer {
        let dir = tempfile::tempdir().unwrap();
        let mut cfg = Config::default();
        cfg.server.http_addr = "127.0.0.1:0".parse().unwrap();
        cfg.server.flight_addr = "127.0.0.1:0".parse().unwrap();
        cfg.server.data_dir = dir.path().join("data");
        cfg.storage.warehouse = dir.path().join("data/warehouse").display().to_string();
        tweak(&mut cfg);
        let server = strata::Server::build(cfg).await.unwrap();
        let (http, flight) = (server.http_addr().unwrap(), server.flight_addr().unwrap());
        let auth = server.authenticator();
        let engine = server.engine();
        tokio::spawn(server.run_until_stopped(std::future::pending()));
        BenchServer {
            http,
            flight,
            auth,
            engine,
            _dir: dir,
        }
    }

    /// A one-hour token for `sub` with `roles` and extra `claims`.
    pub fn token(&self, roles: &[&str], claims: serde_json::Value) -> String {
        let roles: Vec<String> = roles.iter().map(|r| r.to_string()).collect();
        let claims: BTreeMap<String, serde_json::Value> = claims
            .as_object()
            .map(|m| m.iter().map(|(k, v)| (k.clone(), v.clone())).collect())
            .unwrap_or_default();
        self.auth
            .mint("bench", &roles, claims, Duration::from_secs(3600))
            .unwrap()
    }
}

/// The real `strata` binary as a process of its own (its RSS and CPU are the server's
/// alone): this build's, or `STRATA_BENCH_BINARY`.
pub struct ServerProcess {
    pub child: std::process::Child,
    /// `host:port` of the REST API.
    pub http: String,
    pub dir: tempfile::TempDir,
}

impl Drop for ServerProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

pub fn binary() -> String {
    std::env::var("STRATA_BENCH_BINARY").unwrap_or_else(|_| env!("CARGO_BIN_EXE_strata").into())
}

impl ServerProcess {
    /// Starts `strata serve` in a temp directory (embedded warehouse, dev auth) with `env`
    /// on top of ports 0, and waits for its banner.
    pub fn spawn(env: &[(&str, String)]) -> ServerProcess {
        use std::io::BufRead;
        let dir = tempfile::tempdir().unwrap();
        let mut cmd = std::process::Command::new(binary());
        cmd.current_dir(dir.path())
            .env("STRATA__SERVER__HTTP_ADDR", "127.0.0.1:0")
            .env("STRATA__SERVER__FLIGHT_ADDR", "127.0.0.1:0")
            .env("RUST_LOG", "warn")
            .env_remove("STRATA_CONFIG")
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::null());
        for (k, v) in env {
            cmd.env(k, v);
        }
        let mut child = cmd.spawn().unwrap();
        let mut lines = std::io::BufReader::new(child.stdout.take().unwrap()).lines();
        let mut http = None;
        for line in lines.by_ref().map_while(Result::ok) {
            if let Some(rest) = line.trim().strip_prefix("REST") {
                http = rest
                    .split_whitespace()
                    .next()
                    .map(|a| a.trim_start_matches("http://").to_string());
            }
            if line.starts_with("eyJ") {
                break;
            }
        }
        // Keep draining what the server prints, so it never blocks on a full pipe.
        std::thread::spawn(move || lines.for_each(drop));
        ServerProcess {
            child,
            http: http.expect("REST address in the banner"),
            dir,
        }
    }

    /// A token minted by `strata token` in the server's directory (its dev secret).
    pub fn token(&self, sub: &str, role: &str) -> String {
        let out = std::process::Command::new(binary())
            .current_dir(self.dir.path())
            .args(["token", "--sub", sub, "--role", role, "--ttl", "2h"])
            .env_remove("STRATA_CONFIG")
            .output()
            .unwrap();
        String::from_utf8(out.stdout).unwrap().trim().to_string()
    }
}
