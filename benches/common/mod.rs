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
