//! The sections of the platform layer built on the query server (PLATFORM.md): flows and
//! their scheduler, lineage, ingestion (webhooks, connectors) and the console.

use std::collections::BTreeMap;
use std::path::PathBuf;

use serde::{Deserialize, Serialize};

/// `[console]`: the admin web console (PLATFORM P7), served from the binary on the REST
/// port. Its files need no token; everything it shows comes from the API with the user's.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ConsoleConfig {
    pub enabled: bool,
    /// Where it is served: an absolute path without a trailing slash, outside `/api`.
    pub path: String,
}

impl Default for ConsoleConfig {
    fn default() -> Self {
        ConsoleConfig {
            enabled: true,
            path: "/console".to_string(),
        }
    }
}

/// `[webhooks]`: the receiving route `POST /api/v1/ingest/webhooks/{name}` (PLATFORM P6).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct WebhooksConfig {
    /// The route's body limit, applied before anything else (413); a definition's own
    /// `max_body_bytes` may only be lower.
    pub max_body_bytes: usize,
    /// Deliveries checked per second across every webhook before their signature is: bounds
    /// the work unauthenticated callers can cause (429 above it).
    pub max_unverified_per_second: u32,
    /// Delivery ids each webhook remembers for deduplication (about 60 bytes each); beyond
    /// it the oldest are forgotten before their window ends (and counted).
    pub max_dedupe_keys: usize,
}

impl Default for WebhooksConfig {
    fn default() -> Self {
        WebhooksConfig {
            max_body_bytes: 1024 * 1024,
            max_unverified_per_second: 20_000,
            max_dedupe_keys: 5_000_000,
        }
    }
}

/// `[connectors]`: what definitions deployed through the API may reach and use. Secrets and
/// egress are configuration; a definition names a secret, never holds it.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ConnectorsConfig {
    /// Secrets webhooks (and connectors) name.
    pub secrets: Vec<SecretRef>,
    /// Hosts connectors may reach: names (`api.example.com`), wildcards (`*.example.com`),
    /// addresses (`127.0.0.1`) and networks (`10.1.0.0/16`). A name's resolved addresses
    /// must be public unless an address or network entry lists them; redirects, next-page
    /// URLs and OAuth token URLs are checked too. Empty: no connector reaches anything,
    /// except in dev auth mode, where any public host may be reached.
    pub allowed_hosts: Vec<String>,
}

/// `[[connectors.secrets]]`: a named secret read from an environment variable or a file
/// (read at each use, so a rotated file takes effect without a restart).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SecretRef {
    pub name: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub env: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub file: Option<PathBuf>,
}

/// `[lineage]`: table and column lineage of every write (PLATFORM P5).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct LineageConfig {
    /// Writes record their lineage in their commits (and emit OpenLineage events).
    pub enabled: bool,
    /// Observed lineage older than this many days leaves the lineage API and
    /// `system.lineage_edges` (the commits keep it until the log is cleaned).
    pub retention_days: u32,
    /// Commits read from a table's log the first time the lineage index meets it (the
    /// newest ones; later commits are all read).
    pub first_scan_commits: u64,
    pub openlineage: OpenLineageConfig,
}

impl Default for LineageConfig {
    fn default() -> Self {
        LineageConfig {
            enabled: true,
            retention_days: 30,
            first_scan_commits: 1000,
            openlineage: OpenLineageConfig::default(),
        }
    }
}

/// `[lineage.openlineage]`: OpenLineage 2-0-2 RunEvents to a collector (Marquez, DataHub,
/// OpenMetadata, …), off without `url`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct OpenLineageConfig {
    pub url: Option<String>,
    /// Path appended to `url`.
    pub endpoint: String,
    /// Environment variable holding the collector's API key (sent as a bearer token).
    pub api_key_env: Option<String>,
    /// Namespace of Strata's jobs and datasets.
    pub namespace: String,
    pub timeout_secs: u64,
    /// Events queued for delivery; when full, new events are dropped (and counted).
    pub queue_capacity: usize,
    /// Larger events lose their column lineage; still larger ones are dropped.
    pub max_event_bytes: usize,
}

impl Default for OpenLineageConfig {
    fn default() -> Self {
        OpenLineageConfig {
            url: None,
            endpoint: "/api/v1/lineage".into(),
            api_key_env: None,
            namespace: "strata".into(),
            timeout_secs: 5,
            queue_capacity: 10_000,
            max_event_bytes: 1024 * 1024,
        }
    }
}

/// `[pipelines]`: flows (bronze → silver → gold models).
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct PipelinesConfig {
    /// A directory of pipelines (one sub-directory each, with `pipeline.toml`) deployed at
    /// start; the same content is never deployed twice.
    pub dir: Option<PathBuf>,
    /// The service principals pipelines run as (`run_as` in `pipeline.toml`).
    pub principals: Vec<ServicePrincipalConfig>,
}

/// `[scheduler]`: runs pipelines on their own (PLATFORM P3). One replica among those
/// sharing a warehouse leads, elected through a lease log in the warehouse.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct SchedulerConfig {
    /// Take part in the leader election (off: this replica never leads).
    pub enabled: bool,
    /// A leader that has not renewed for this long is replaced (at least 5: S3 reports
    /// object times to the second). It renews every third of it.
    pub lease_ttl_secs: u64,
    /// The most missed slots one catch-up runs per pipeline (`catchup = "all"`); older
    /// ones are skipped (and logged).
    pub max_catchup_runs: usize,
    /// Worker threads of the runtime pipeline runs and backfills execute on, apart from
    /// the one serving queries, so they cannot take every core; half the cores (at least
    /// one) when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pipeline_threads: Option<usize>,
    /// DataFusion memory pool of pipeline statements (model runs, backfill batches), apart
    /// from the queries' (`query.memory_limit_bytes`): pipeline work spills or fails within
    /// it and never takes the memory interactive queries plan with.
    pub pipeline_memory_bytes: usize,
    /// Model statements (a model's commit, a backfill batch) that run at once on this
    /// replica, across every pipeline (0: half of `query.max_concurrent`'s slots, at least
    /// one). They take their slots from the same admission control as queries, after every
    /// waiting query, so a backfill never holds the slots interactive queries need.
    pub max_concurrent_models: usize,
}

impl Default for SchedulerConfig {
    fn default() -> Self {
        SchedulerConfig {
            enabled: true,
            lease_ttl_secs: 15,
            max_catchup_runs: 10,
            pipeline_threads: None,
            pipeline_memory_bytes: 512 * 1024 * 1024,
            max_concurrent_models: 0,
        }
    }
}

/// `[[pipelines.principals]]`: a principal that is not a person. Its subject is
/// `svc:<name>`, a namespace no token's subject shares; it never holds the admin role.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServicePrincipalConfig {
    pub name: String,
    pub roles: Vec<String>,
    /// Attributes row filters and masks can use, as a token's claims.
    #[serde(default)]
    pub claims: BTreeMap<String, serde_json::Value>,
}
