//! Configuration: `config/strata.toml` documents every key.
//!
//! Precedence: built-in defaults < TOML file < environment `STRATA__SECTION__KEY` < CLI flags.
//! [`Config::validate`] runs once at start and reports every problem together; `strata
//! check-config` prints the effective configuration with secrets redacted.

use std::collections::BTreeMap;
use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};

mod cluster;
mod platform;

pub use cluster::{ClusterConfig, ClusterMode, ClusterTlsConfig, ClusterTransport};

pub use platform::{
    ConnectorsConfig, ConsoleConfig, LineageConfig, OpenLineageConfig, PipelinesConfig,
    SchedulerConfig, SecretRef, ServicePrincipalConfig, WebhooksConfig,
};

/// A secret string: never printed by `Debug`, `Display` or serialization.
#[derive(Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(transparent)]
pub struct Secret(String);

impl Secret {
    pub fn new(s: impl Into<String>) -> Self {
        Secret(s.into())
    }
    pub fn expose(&self) -> &str {
        &self.0
    }
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("\"<redacted>\"")
    }
}

impl Serialize for Secret {
    fn serialize<S: serde::Serializer>(&self, s: S) -> std::result::Result<S::Ok, S::Error> {
        s.serialize_str(if self.0.is_empty() { "" } else { "<redacted>" })
    }
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    pub server: ServerConfig,
    pub storage: StorageConfig,
    pub auth: AuthConfig,
    pub access: AccessConfig,
    pub query: QueryConfig,
    pub flight: FlightConfig,
    pub cache: CacheConfig,
    pub log: LogConfig,
    pub pipelines: PipelinesConfig,
    pub scheduler: SchedulerConfig,
    pub lineage: LineageConfig,
    pub webhooks: WebhooksConfig,
    pub connectors: ConnectorsConfig,
    pub console: ConsoleConfig,
    pub cluster: ClusterConfig,
}

/// `[cache]` configuration.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct CacheConfig {
    pub enabled: bool,
    /// Total size of cached results (Arrow memory), in bytes.
    pub max_bytes: u64,
    /// Results larger than this are not cached, in bytes.
    pub max_entry_bytes: u64,
    /// Lifetime of an entry, in seconds.
    pub ttl_secs: u64,
}

impl Default for CacheConfig {
    fn default() -> Self {
        CacheConfig {
            enabled: true,
            max_bytes: 256 * 1024 * 1024,
            max_entry_bytes: 32 * 1024 * 1024,
            ttl_secs: 300,
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct FlightConfig {
    /// Lifetime of tickets and prepared-statement handles, in seconds.
    pub ticket_ttl_secs: u64,
    /// Send `Utf8`/`Binary` instead of `Utf8View`/`BinaryView` (the Flight SQL JDBC driver
    /// cannot read view types). A connection may override it with the call header
    /// `x-strata-view-types: keep` or `downcast`.
    pub downcast_view_types: bool,
    /// Largest Flight message Strata sends (and accepts), in bytes. Results are split and
    /// compacted to stay below it; ADBC's default limit is 16 MiB.
    pub max_message_bytes: usize,
    /// Largest HTTP/2 header list (all request metadata) a client may send, in bytes.
    pub max_header_list_bytes: u32,
}

impl Default for FlightConfig {
    fn default() -> Self {
        FlightConfig {
            ticket_ttl_secs: 600,
            downcast_view_types: true,
            max_message_bytes: 4 * 1024 * 1024,
            max_header_list_bytes: 64 * 1024,
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ServerConfig {
    /// REST API listen address.
    pub http_addr: SocketAddr,
    /// Flight SQL listen address.
    pub flight_addr: SocketAddr,
    /// Local directory for server state (dev secret, spill files).
    pub data_dir: PathBuf,
    /// Largest accepted REST request body, in bytes.
    pub max_request_bytes: usize,
    /// Seconds in-flight requests get to finish after SIGTERM.
    pub shutdown_grace_secs: u64,
    /// A separate listener serving only `GET /metrics`, without a token (for a Prometheus
    /// scraper on a network only operators reach). Off by default.
    pub metrics_addr: Option<SocketAddr>,
    /// The process's heap budget, in bytes: from 90% of it new statements get 429, at it
    /// running queries are stopped with 429 (`engine::memory`). At least the query memory
    /// pool plus the result cache plus 256 MiB.
    pub memory_budget_bytes: u64,
}

impl Default for ServerConfig {
    fn default() -> Self {
        ServerConfig {
            http_addr: SocketAddr::from(([127, 0, 0, 1], 8080)),
            flight_addr: SocketAddr::from(([127, 0, 0, 1], 50051)),
            data_dir: PathBuf::from("./data"),
            max_request_bytes: 256 * 1024 * 1024,
            shutdown_grace_secs: 30,
            metrics_addr: None,
            memory_budget_bytes: 3 * 1024 * 1024 * 1024,
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct StorageConfig {
    /// A local path, or `s3://bucket/prefix`.
    pub warehouse: String,
    pub s3: S3Config,
    /// Allow VACUUM with a retention under 168 hours (can break readers and time travel).
    pub allow_short_vacuum_retention: bool,
}

impl Default for StorageConfig {
    fn default() -> Self {
        StorageConfig {
            warehouse: "./data/warehouse".to_string(),
            s3: S3Config::default(),
            allow_short_vacuum_retention: false,
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct S3Config {
    pub endpoint: Option<String>,
    pub region: Option<String>,
    pub access_key_id: Option<Secret>,
    pub secret_access_key: Option<Secret>,
    pub allow_http: bool,
    /// Path-style addressing (`endpoint/bucket/key`), needed by most S3-compatible servers.
    pub path_style: bool,
    /// Serve on a store that fails the conditional-put preflight. Only safe when exactly one
    /// writer ever commits; logged loudly at start.
    pub allow_unsafe_single_writer: bool,
    /// Retries of a failed request (connection errors, 5xx, throttling) before giving up.
    pub max_retries: usize,
    /// Total time a request may spend retrying; after it the request fails with 503.
    pub retry_timeout_secs: u64,
    /// Per-request timeout (connect included).
    pub request_timeout_secs: u64,
    pub connect_timeout_secs: u64,
}

impl Default for S3Config {
    fn default() -> Self {
        S3Config {
            endpoint: None,
            region: None,
            access_key_id: None,
            secret_access_key: None,
            allow_http: false,
            path_style: false,
            allow_unsafe_single_writer: false,
            max_retries: 10,
            retry_timeout_secs: 60,
            request_timeout_secs: 30,
            connect_timeout_secs: 5,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AuthMode {
    /// Generate an HS256 secret under `data_dir` and print an admin token at start.
    /// Loopback addresses only.
    Dev,
    /// Validate tokens issued elsewhere with the configured keys.
    Jwt,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct AuthConfig {
    pub mode: AuthMode,
    /// Accepted JWT algorithms (allow-list). `none` is never accepted.
    pub algorithms: Vec<String>,
    /// HS256 secret (at least 32 bytes). Prefer the env var or `hs256_secret_file`.
    pub hs256_secret: Option<Secret>,
    pub hs256_secret_file: Option<PathBuf>,
    /// PEM public keys (RSA, EC or Ed25519) for RS256/ES256/EdDSA tokens.
    pub public_key_files: Vec<PathBuf>,
    /// A JWKS document on disk; keys are selected by `kid`.
    pub jwks_file: Option<PathBuf>,
    /// Required `iss`, when set.
    pub issuer: Option<String>,
    /// Required `aud`, when set.
    pub audience: Option<String>,
    /// Clock skew tolerated on `exp`/`nbf`, in seconds.
    pub leeway_secs: u64,
    /// Holders of this role have every privilege on every table.
    pub admin_role: String,
    /// Lifetime of the admin token printed in dev mode, in seconds.
    pub dev_token_ttl_secs: u64,
    /// HMAC key for Flight tickets and prepared handles (at least 32 bytes). Every replica
    /// needs the same key. Default: derived from the HS256 secret; without one, a random key
    /// per process (tickets then only work on the replica that issued them).
    pub ticket_secret: Option<Secret>,
}

impl Default for AuthConfig {
    fn default() -> Self {
        AuthConfig {
            mode: AuthMode::Dev,
            algorithms: vec!["HS256".to_string()],
            hs256_secret: None,
            hs256_secret_file: None,
            public_key_files: Vec::new(),
            jwks_file: None,
            issuer: None,
            audience: None,
            leeway_secs: 30,
            admin_role: "admin".to_string(),
            dev_token_ttl_secs: 12 * 3600,
            ticket_secret: None,
        }
    }
}

/// Static grants from configuration (run-time grants and policies live in the policy store).
/// Default deny: a role without a grant sees nothing.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct AccessConfig {
    pub grants: Vec<GrantConfig>,
    /// Holders of this role read raw rows and values: row filters and column masks do not
    /// apply to them. The admin role does not imply it.
    pub bypass_role: String,
    /// Holders of this role (or the admin role) read `GET /metrics` on the REST port: server
    /// counters sum over every principal's queries, so they are not for every token.
    pub operator_role: String,
}

impl Default for AccessConfig {
    fn default() -> Self {
        AccessConfig {
            grants: Vec::new(),
            bypass_role: "policy_bypass".to_string(),
            operator_role: "operator".to_string(),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct GrantConfig {
    pub role: String,
    /// `SELECT`, `INSERT`, `MODIFY` or `MANAGE`.
    pub privilege: String,
    /// `*`, a layer (`gold`), or a table (`gold.orders`).
    pub on: String,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct QueryConfig {
    /// Layer used for unqualified table names.
    pub default_layer: String,
    /// DataFusion partitions per query (0 = number of cores).
    pub target_partitions: usize,
    pub batch_size: usize,
    /// Memory pool for query execution, in bytes. Queries beyond it spill or fail.
    pub memory_limit_bytes: usize,
    /// Largest accepted SQL text, in bytes.
    pub max_sql_bytes: usize,
    /// A query (planning, execution and streaming of its result) is stopped after this many
    /// seconds (0 = no limit). Writes are not cut off: a commit is never left ambiguous.
    pub timeout_secs: u64,
    /// Statements that run at once (0 = 4 × cores).
    pub max_concurrent: usize,
    /// Statements that may wait for a slot; beyond that, 429 / RESOURCE_EXHAUSTED.
    pub max_queued: usize,
    /// How long a statement may wait for a slot before 429 / RESOURCE_EXHAUSTED.
    pub queue_timeout_secs: u64,
    /// Largest result a query may stream (Arrow bytes; 0 = no limit).
    pub max_result_bytes: u64,
    /// Most bytes one call of a function whose output outgrows its input (`repeat`, `lpad`,
    /// `range`, …) may produce for one batch (`engine::bounded`); beyond, 429.
    pub max_function_output_bytes: u64,
}

impl Default for QueryConfig {
    fn default() -> Self {
        QueryConfig {
            default_layer: "gold".to_string(),
            target_partitions: 0,
            batch_size: 8192,
            memory_limit_bytes: 2 * 1024 * 1024 * 1024,
            max_sql_bytes: 1024 * 1024,
            timeout_secs: 300,
            max_concurrent: 0,
            max_queued: 64,
            queue_timeout_secs: 10,
            max_result_bytes: 4 * 1024 * 1024 * 1024,
            max_function_output_bytes: 64 * 1024 * 1024,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum LogFormat {
    Text,
    Json,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct LogConfig {
    pub format: LogFormat,
    /// `tracing` env-filter directive; `RUST_LOG` overrides it.
    pub level: String,
}

impl Default for LogConfig {
    fn default() -> Self {
        LogConfig {
            format: LogFormat::Text,
            level: "info".to_string(),
        }
    }
}

/// Environment variable prefix; `STRATA__SERVER__HTTP_ADDR` sets `server.http_addr`.
pub const ENV_PREFIX: &str = "STRATA__";

impl Config {
    /// Loads defaults < `file` (if given) < environment.
    pub fn load(file: Option<&Path>) -> Result<Config> {
        let mut doc = match file {
            Some(path) => {
                let text = std::fs::read_to_string(path)
                    .map_err(|e| Error::Config(format!("cannot read {}: {e}", path.display())))?;
                text.parse::<toml::Table>()
                    .map_err(|e| Error::Config(format!("{}: {e}", path.display())))?
            }
            None => toml::Table::new(),
        };
        let env: BTreeMap<String, String> = std::env::vars()
            .filter(|(k, _)| k.starts_with(ENV_PREFIX))
            .collect();
        apply_env(&mut doc, &env)?;
        Config::deserialize(toml::Value::Table(doc)).map_err(|e| Error::Config(e.to_string()))
    }

    /// Every problem with this configuration; empty means valid.
    pub fn problems(&self) -> Vec<String> {
        let mut out = Vec::new();
        let loopback =
            self.server.http_addr.ip().is_loopback() && self.server.flight_addr.ip().is_loopback();
        if self.auth.mode == AuthMode::Dev && !loopback {
            out.push(
                "auth.mode = \"dev\" may only bind loopback addresses; configure auth.mode = \"jwt\" with real keys to listen on other interfaces".to_string(),
            );
        }
        if self.auth.mode == AuthMode::Jwt {
            let has_hs = self.auth.hs256_secret.is_some() || self.auth.hs256_secret_file.is_some();
            let has_pk = !self.auth.public_key_files.is_empty() || self.auth.jwks_file.is_some();
            if !has_hs && !has_pk {
                out.push("auth.mode = \"jwt\" needs auth.hs256_secret(_file), auth.public_key_files or auth.jwks_file".to_string());
            }
            if let Some(s) = &self.auth.hs256_secret
                && s.expose().len() < 32
            {
                out.push("auth.hs256_secret is weaker than 32 bytes".to_string());
            }
        }
        if self.auth.algorithms.is_empty() {
            out.push("auth.algorithms is empty: no token could ever be accepted".to_string());
        }
        if self.auth.admin_role.trim().is_empty() {
            out.push("auth.admin_role is empty".to_string());
        }
        if self.lineage.retention_days == 0 || self.lineage.first_scan_commits == 0 {
            out.push(
                "lineage.retention_days and lineage.first_scan_commits must be at least 1"
                    .to_string(),
            );
        }
        let floor = self.query.memory_limit_bytes as u64
            + self.scheduler.pipeline_memory_bytes as u64
            + self.cache.max_bytes
            + (256 << 20);
        if self.server.memory_budget_bytes < floor {
            out.push(format!(
                "server.memory_budget_bytes ({}) must be at least query.memory_limit_bytes + scheduler.pipeline_memory_bytes + cache.max_bytes + 256 MiB ({floor})",
                self.server.memory_budget_bytes
            ));
        }
        if self.query.max_function_output_bytes < 1024 * 1024 {
            out.push("query.max_function_output_bytes must be at least 1 MiB".to_string());
        }
        if self.query.memory_limit_bytes < 64 * 1024 * 1024 {
            out.push("query.memory_limit_bytes must be at least 64 MiB".to_string());
        }
        if let Some(s) = &self.auth.ticket_secret
            && s.expose().len() < 32
        {
            out.push("auth.ticket_secret is weaker than 32 bytes".to_string());
        }
        if self.flight.max_message_bytes < 64 * 1024 {
            out.push("flight.max_message_bytes must be at least 64 KiB".to_string());
        }
        if self.query.batch_size == 0 {
            out.push("query.batch_size must be positive".to_string());
        }
        if self.storage.warehouse.trim().is_empty() {
            out.push("storage.warehouse is empty".to_string());
        }
        if self.webhooks.max_body_bytes == 0
            || self.webhooks.max_unverified_per_second == 0
            || self.webhooks.max_dedupe_keys == 0
        {
            out.push("webhooks.max_body_bytes, max_unverified_per_second and max_dedupe_keys must be at least 1".to_string());
        }
        if self.console.enabled {
            let p = &self.console.path;
            let segments_ok = p.len() > 1
                && p.starts_with('/')
                && !p.ends_with('/')
                && p[1..].split('/').all(|s| {
                    !s.is_empty()
                        && s.bytes()
                            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
                });
            let taken = ["/api", "/healthz", "/readyz", "/metrics"]
                .iter()
                .any(|t| p == t || p.starts_with(&format!("{t}/")));
            if !segments_ok || taken {
                out.push(format!(
                    "console.path {p:?} must be like \"/console\": absolute, no trailing slash, segments of letters, digits, - and _, outside /api, /healthz, /readyz and /metrics"
                ));
            }
        }
        out.extend(self.cluster.problems());
        let mut names = std::collections::BTreeSet::new();
        for s in &self.connectors.secrets {
            if s.env.is_some() == s.file.is_some() {
                out.push(format!(
                    "connectors.secrets {:?}: give exactly one of env and file",
                    s.name
                ));
            }
            if s.name.is_empty() || !names.insert(s.name.as_str()) {
                out.push(format!(
                    "connectors.secrets {:?}: names must be non-empty and unique",
                    s.name
                ));
            }
        }
        out
    }

    /// The effective configuration as TOML, secrets redacted.
    pub fn to_redacted_toml(&self) -> Result<String> {
        toml::to_string_pretty(self).map_err(|e| Error::internal(e.to_string()))
    }
}

/// Applies `STRATA__A__B=value` overrides. Values parse as TOML scalars or arrays when they
/// can (`8080`, `true`, `["a","b"]`) and as strings otherwise.
fn apply_env(doc: &mut toml::Table, env: &BTreeMap<String, String>) -> Result<()> {
    for (key, raw) in env {
        let path: Vec<String> = key[ENV_PREFIX.len()..]
            .split("__")
            .map(|s| s.to_ascii_lowercase())
            .collect();
        if path.iter().any(|p| p.is_empty()) {
            return Err(Error::Config(format!("malformed environment key {key}")));
        }
        let value = parse_env_value(raw);
        let mut table = &mut *doc;
        for (i, part) in path.iter().enumerate() {
            if i + 1 == path.len() {
                table.insert(part.clone(), value.clone());
            } else {
                let entry = table
                    .entry(part.clone())
                    .or_insert_with(|| toml::Value::Table(toml::Table::new()));
                table = entry
                    .as_table_mut()
                    .ok_or_else(|| Error::Config(format!("{key}: `{part}` is not a section")))?;
            }
        }
    }
    Ok(())
}

fn parse_env_value(raw: &str) -> toml::Value {
    let probe = format!("v = {raw}");
    match probe.parse::<toml::Table>() {
        Ok(mut t) => t
            .remove("v")
            .unwrap_or_else(|| toml::Value::String(raw.to_string())),
        Err(_) => toml::Value::String(raw.to_string()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_valid() {
        assert_eq!(Config::default().problems(), Vec::<String>::new());
    }

    /// `config/strata.toml` documents every key (set or commented out) and the values it
    /// sets are the defaults.
    #[test]
    fn the_reference_file_documents_every_key_with_its_default() {
        let text = include_str!("../../config/strata.toml");
        let file: toml::Table = text.parse().unwrap();
        let from_file = Config::deserialize(toml::Value::Table(file)).unwrap();
        assert_eq!(
            toml::to_string(&from_file).unwrap(),
            toml::to_string(&Config::default()).unwrap(),
            "values in config/strata.toml differ from the defaults"
        );
        fn keys(prefix: &str, t: &toml::Table, out: &mut Vec<String>) {
            for (k, v) in t {
                match v {
                    toml::Value::Table(inner) => keys(&format!("{prefix}{k}."), inner, out),
                    _ => out.push(format!("{prefix}{k}")),
                }
            }
        }
        let mut all = Vec::new();
        let defaults = toml::Value::try_from(Config::default()).unwrap();
        if let toml::Value::Table(t) = &defaults {
            keys("", t, &mut all);
        }
        for key in &all {
            let leaf = key.rsplit('.').next().unwrap_or(key);
            let documented = text.lines().any(|l| {
                let l = l.trim_start_matches('#').trim_start();
                l.starts_with(&format!("{leaf} ="))
                    || l.starts_with(&format!("{leaf}="))
                    || l.starts_with(&format!("[[{key}]]"))
            });
            assert!(documented, "config/strata.toml does not mention {key}");
        }
        for optional in [
            "storage.s3.endpoint",
            "auth.hs256_secret_file",
            "auth.jwks_file",
            "auth.ticket_secret",
        ] {
            let leaf = optional.rsplit('.').next().unwrap_or(optional);
            assert!(text.contains(&format!("# {leaf} =")), "{optional}");
        }
    }

    #[test]
    fn env_overrides_file_values() {
        let mut doc: toml::Table = "[server]\nhttp_addr = \"127.0.0.1:1\"".parse().unwrap();
        let env = BTreeMap::from([
            (
                "STRATA__SERVER__HTTP_ADDR".to_string(),
                "127.0.0.1:2".to_string(),
            ),
            ("STRATA__QUERY__BATCH_SIZE".to_string(), "100".to_string()),
            (
                "STRATA__STORAGE__WAREHOUSE".to_string(),
                "s3://b/p".to_string(),
            ),
        ]);
        apply_env(&mut doc, &env).unwrap();
        let cfg = Config::deserialize(toml::Value::Table(doc)).unwrap();
        assert_eq!(cfg.server.http_addr.port(), 2);
        assert_eq!(cfg.query.batch_size, 100);
        assert_eq!(cfg.storage.warehouse, "s3://b/p");
    }

    #[test]
    fn every_problem_is_listed() {
        let mut cfg = Config::default();
        cfg.server.http_addr = "0.0.0.0:8080".parse().unwrap();
        cfg.auth.algorithms = Vec::new();
        cfg.query.batch_size = 0;
        let p = cfg.problems();
        assert_eq!(p.len(), 3, "{p:?}");
    }

    #[test]
    fn secrets_are_redacted() {
        let mut cfg = Config::default();
        cfg.auth.hs256_secret = Some(Secret::new("super-secret-value-that-is-long-enough"));
        let text = cfg.to_redacted_toml().unwrap();
        assert!(!text.contains("super-secret"));
        assert!(format!("{cfg:?}").contains("<redacted>"));
        assert!(!format!("{cfg:?}").contains("super-secret"));
    }
}
