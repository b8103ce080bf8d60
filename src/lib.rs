//! # Strata
//!
//! A self-hosted lakehouse query server: Delta Lake tables in `bronze`, `silver` and `gold`
//! layers on local disk or S3, SQL through DataFusion over Flight SQL and REST, JWT
//! authentication and per-principal access control.
//!
//! One query:
//! ```text
//! REST POST /query | Flight ── Bearer JWT ──▶ security::auth ──▶ Principal
//!   ──▶ engine::sql::parse (only our statements; time travel → versioned names)
//!   ──▶ engine::session: per-principal SessionState, catalog = SecureCatalog (granted tables,
//!       each a PolicyTable bound to the principal), no URL tables / DDL / SET
//!   ──▶ plan ──▶ analyzer … PolicyGuard (every scan is a bound PolicyTable, else fail)
//!   ──▶ execute ──▶ stream batches (JSON / CSV / Arrow IPC / Flight)
//! ```
//!
//! One commit:
//! ```text
//! upload / INSERT / CTAS ──▶ AccessControl (INSERT / MODIFY / MANAGE)
//!   ──▶ ingest: decode + validate every row (nothing written on error)
//!   ──▶ pipelines::commit: idempotency txn check ──▶ delta-rs write with CommitProperties
//!   ──▶ put-if-absent _delta_log/<v>.json ──▶ Catalog remembers the new snapshot
//! ```
//!
//! Layering (nothing imports `api`; `engine` knows no HTTP or gRPC types):
//! `api::{rest, flight}` → `engine`, `pipelines`, `ingest` → `security`, `storage` →
//! `config`, `error`, `telemetry`.

pub mod api;
pub mod cache;
pub mod config;
pub mod engine;
pub mod error;
pub mod ingest;
pub(crate) mod pipelines;
pub mod security;
pub mod server;
pub mod storage;
pub mod telemetry;

pub use config::Config;
pub use error::{Error, Result};
pub use server::Server;

/// jemalloc, with background threads returning freed memory to the OS (see
/// [`telemetry::heap`] for why and what it reports). Declared here, in the crate every target
/// links, so the `strata` binary, the tests and the in-process benches all allocate alike.
#[cfg(all(unix, not(target_env = "musl")))]
#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;
