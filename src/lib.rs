//! # Strata
//!
//! A self-hosted lakehouse query server: Delta Lake tables in `bronze`, `silver` and `gold`
//! layers on local disk or S3, SQL through DataFusion over Flight SQL and REST, JWT
//! authentication and per-principal access control.
//!
//! One query (Flight `GetFlightInfo` + `DoGet`, or REST `POST /api/v1/query`):
//! ```text
//! api::flight::statement | api::rest::query ── Bearer JWT ──▶ security::auth ──▶ Principal
//!   ──▶ engine::Engine::submit(Submission { sql, parameter rows, result key, If-None-Match })
//!   ──▶ engine::cached: a remembered result key / kept plan replays without planning while the
//!       policy version and every table version still hold
//!   ──▶ engine::sql::parse (only our statements; time travel → storage::VersionSpec names)
//!   ──▶ engine::session: per-principal SessionState whose catalog is security::policy's
//!       SecureCatalog (granted tables only, each a PolicyTable bound to the principal)
//!   ──▶ plan ──▶ PolicyGuard (every scan is a bound PolicyTable, else fail) ──▶ execute
//!   ──▶ engine::limits (deadline, result cap, memory budget) ──▶ cache::tee ──▶ api encoders
//! ```
//!
//! One commit (SQL INSERT/MERGE/UPDATE/DELETE/CALL scd2, REST upload/merge/scd2/patch):
//! ```text
//! engine::statement | engine::tables | engine::dml ──▶ AccessControl (INSERT / MODIFY / MANAGE)
//!   ──▶ ingest: decode + validate every row (nothing written on error)
//!   ──▶ pipelines::{merge, scd2, schema, maintenance} ──▶ pipelines::commit (idempotency txn,
//!       CommitProperties with storage::commit_info keys) ──▶ put-if-absent _delta_log/<v>.json
//!   ──▶ storage::Catalog remembers the new snapshot
//! ```
//!
//! Layering, top to bottom; a module imports only modules below it (no loops):
//! - `server`: start-up (configuration problems from every module, listeners, shutdown).
//! - `api`: the two front ends, `flight` and `rest`, thin adapters from protocols to the
//!   engine and flows; each owns its error → status map (`api::rest::error`,
//!   `api::flight::error`).
//! - `scheduler`: one leader among the replicas (a lease log in the warehouse) runs the
//!   pipelines' cron and upstream triggers, catch-up and scheduled table maintenance,
//!   through `flows`.
//! - `lineage`: table and column lineage from what every write recorded in its commit
//!   (`engine::lineage`), as a graph under access control.
//! - `flows`: pipelines of declarative models (bronze → silver → gold): deploys stored as
//!   versions in the warehouse, runs that read sources through the engine as the pipeline's
//!   run-as principal and commit each batch with its source watermarks (`txn`).
//! - `engine`: the one entry point of both front ends (`Engine::submit`), SQL parsing
//!   (`engine::sql`), sessions, execution, result caching, limits, table and policy admin.
//! - `pipelines`: every write's Delta operation (append/overwrite, MERGE, SCD2, schema
//!   changes, OPTIMIZE/VACUUM/RESTORE) and the one commit path.
//! - `security`: who is asking (`auth`), what they may touch (`access`, grants), row filters
//!   and masks enforced on every scan (`policy`), signed Flight tickets (`ticket`).
//! - `ingest`: uploads decoded and validated into Arrow batches of a table's schema.
//! - `cache`: the result cache (Arrow batches keyed by principal, policy and table versions).
//! - `storage`: the warehouse (local disk or S3), the catalog of Delta tables, column
//!   statistics for the planner, time-travel versions, commit-info keys, change-feed
//!   availability, put-if-absent document logs.
//! - `telemetry`: logging and the process's metrics (prometheus-client).
//! - `config`: the configuration, checked on its own (a leaf).
//! - `clock`: the time the scheduler and flows read (the system's, or a driven one in tests).
//! - `error`: the one error type and its protocol-neutral kinds.
//! - `failpoint`: named crash points for tests, armed only by `STRATA_FAILPOINTS`.

pub mod api;
pub mod cache;
pub mod clock;
pub mod cluster;
pub mod config;
pub mod connectors;
pub mod console;
pub mod engine;
pub mod error;
pub mod failpoint;
pub mod flows;
pub mod ingest;
pub mod lineage;
pub(crate) mod pipelines;
pub mod scheduler;
pub mod security;
pub mod server;
pub mod storage;
pub mod telemetry;
pub mod webhooks;

pub use config::Config;
pub use error::{Error, Result};
pub use server::Server;

/// jemalloc, with background threads returning freed memory to the OS (see
/// [`telemetry::heap`] for why and what it reports). Declared here, in the crate every target
/// links, so the `strata` binary, the tests and the in-process benches all allocate alike.
#[cfg(all(unix, not(target_env = "musl")))]
#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;
