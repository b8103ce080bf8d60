//! Table maintenance: OPTIMIZE (bin-packing or Z-order), VACUUM, RESTORE. Each is one
//! delta-rs operation and (except a dry run) one commit carrying the principal.

use std::num::NonZeroU64;

use chrono::{DateTime, Utc};
use serde::Serialize;

use crate::error::{Error, Result};
use crate::pipelines::commit::commit_properties;
use crate::security::Principal;
use crate::storage::{Catalog, TableRef};

/// Delta's default: files removed less than 7 days ago stay, so readers of older
/// snapshots and time travel within that window keep working.
pub(crate) const DEFAULT_RETENTION_HOURS: u64 = 168;

#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct OptimizeOutcome {
    pub version: u64,
    pub files_removed: u64,
    pub files_added: u64,
    pub bytes_removed: i64,
    pub bytes_added: i64,
    pub partitions_optimized: u64,
}

/// `column op value(s)` on a partition column: which partitions OPTIMIZE rewrites.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, serde::Deserialize)]
pub struct PartitionFilter {
    pub column: String,
    /// `=`, `!=`, `<`, `<=`, `>`, `>=`, `in`, `not in`.
    pub op: String,
    /// One value, or the set for `in` / `not in`.
    pub values: Vec<String>,
}

/// What OPTIMIZE does.
#[derive(Debug, Clone, Default)]
pub struct OptimizeSpec {
    /// Z-order by these columns (default: bin-packing only).
    pub zorder: Vec<String>,
    /// Only partitions matching all of these (default: every partition).
    pub partitions: Vec<PartitionFilter>,
    /// Target file size in bytes (default: `delta.targetFileSize`, else delta-rs's).
    pub target_size: Option<u64>,
}

/// Compacts small files toward the target size, Z-ordering when asked, in the matching
/// partitions. Concurrent appends do not conflict with it: it only removes files it rewrote.
pub(crate) async fn optimize(
    catalog: &Catalog,
    t: &TableRef,
    p: &Principal,
    spec: OptimizeSpec,
) -> Result<OptimizeOutcome> {
    let OptimizeSpec {
        zorder,
        partitions,
        target_size,
    } = spec;
    let table = catalog.load(t).await?;
    let schema = table.snapshot()?.snapshot().arrow_schema();
    for c in &zorder {
        if schema.field_with_name(c).is_err() {
            return Err(Error::invalid(format!(
                "{t} has no column {c} to Z-order by"
            )));
        }
    }
    let partition_columns = table.snapshot()?.metadata().partition_columns().to_vec();
    let filters = partitions
        .iter()
        .map(|f| {
            if !partition_columns.contains(&f.column) {
                return Err(Error::invalid(format!(
                    "OPTIMIZE … WHERE filters by partition columns only; {} is not one of {t}'s ({})",
                    f.column,
                    if partition_columns.is_empty() {
                        "it has none".to_string()
                    } else {
                        partition_columns.join(", ")
                    }
                )));
            }
            let value = match f.op.as_str() {
                "in" | "not in" => {
                    deltalake::FilterValue::Set(f.values.iter().map(String::as_str).collect())
                }
                _ => match f.values.as_slice() {
                    [v] => deltalake::FilterValue::Scalar(v.as_str()),
                    _ => return Err(Error::invalid(format!("{} {} needs one value", f.column, f.op))),
                },
            };
            deltalake::filter_literal(&f.column, &f.op, value)
                .map_err(|e| Error::invalid(e.to_string()))
        })
        .collect::<Result<Vec<_>>>()?;
    let mut builder = table
        .optimize()
        .with_filters(&filters)
        .with_commit_properties(commit_properties(p, "OPTIMIZE"));
    if !zorder.is_empty() {
        builder = builder.with_type(deltalake::operations::optimize::OptimizeType::ZOrder(
            zorder,
        ));
    }
    if let Some(size) = target_size {
        let size =
            NonZeroU64::new(size).ok_or_else(|| Error::invalid("target_size must be positive"))?;
        builder = builder.with_target_size(size);
    }
    let (table, metrics) = builder.await?;
    catalog.remember(t, &table).await;
    Ok(OptimizeOutcome {
        version: table.version().unwrap_or(0),
        files_removed: metrics.num_files_removed,
        files_added: metrics.num_files_added,
        bytes_removed: metrics.files_removed.total_size,
        bytes_added: metrics.files_added.total_size,
        partitions_optimized: metrics.partitions_optimized,
    })
}

#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct VacuumOutcome {
    pub dry_run: bool,
    pub retain_hours: u64,
    /// Files deleted (or, for a dry run, that would be).
    pub files: Vec<String>,
    /// Expired log files removed (older than `delta.logRetentionDuration`).
    pub logs_removed: usize,
}

/// Deletes files no longer referenced by any version within `retain_hours` (default 168),
/// and log files past the table's log retention.
/// A shorter retention can break concurrent readers and time travel, so it is refused
/// unless `allow_short` (config `storage.allow_short_vacuum_retention`).
pub(crate) async fn vacuum(
    catalog: &Catalog,
    t: &TableRef,
    p: &Principal,
    retain_hours: Option<u64>,
    dry_run: bool,
    allow_short: bool,
) -> Result<VacuumOutcome> {
    let retain = retain_hours.unwrap_or(DEFAULT_RETENTION_HOURS);
    if retain < DEFAULT_RETENTION_HOURS && !allow_short {
        return Err(Error::invalid(format!(
            "VACUUM with a retention of {retain} hours is refused: below {DEFAULT_RETENTION_HOURS} hours it can delete files that running queries and time travel still read. Set storage.allow_short_vacuum_retention = true to allow it"
        )));
    }
    let table = catalog.load(t).await?;
    let hours = i64::try_from(retain).map_err(|_| Error::invalid("retention is too long"))?;
    let (table, metrics) = table
        .vacuum()
        .with_retention_period(chrono::Duration::hours(hours))
        .with_enforce_retention_duration(!allow_short)
        .with_dry_run(dry_run)
        .with_commit_properties(commit_properties(p, "VACUUM"))
        .await?;
    catalog.remember(t, &table).await;
    // Log files older than `delta.logRetentionDuration` (up to the newest checkpoint before
    // them), which commits never remove (`commit_properties`).
    let logs_removed = if dry_run {
        0
    } else {
        deltalake::protocol::checkpoints::cleanup_metadata(&table, None).await?
    };
    Ok(VacuumOutcome {
        dry_run: metrics.dry_run,
        retain_hours: retain,
        files: metrics.files_deleted,
        logs_removed,
    })
}

/// What to restore to.
#[derive(Debug, Clone, Copy)]
pub enum RestoreTo {
    Version(u64),
    Timestamp(DateTime<Utc>),
}

#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct RestoreOutcome {
    pub version: u64,
    pub restored_version: u64,
    pub files_removed: usize,
    pub files_restored: usize,
}

/// One new commit that returns `t` to an earlier state (itself undoable by another
/// RESTORE). Refuses versions whose data files were vacuumed.
pub(crate) async fn restore(
    catalog: &Catalog,
    t: &TableRef,
    p: &Principal,
    to: RestoreTo,
) -> Result<RestoreOutcome> {
    // Resolve the target version as time travel does (commit timestamps, clear errors).
    let old = match to {
        RestoreTo::Version(v) => catalog.load_version(t, v).await?,
        RestoreTo::Timestamp(ts) => catalog.load_at(t, ts).await?,
    };
    let restored_version = old.version().unwrap_or(0);
    let table = catalog.load(t).await?;
    if table.version() == Some(restored_version) {
        return Err(Error::invalid(format!(
            "{t} is already at version {restored_version}"
        )));
    }
    let (table, metrics) = table
        .restore()
        .with_version_to_restore(restored_version)
        .with_commit_properties(commit_properties(p, "RESTORE"))
        .await
        .map_err(|e| {
            let msg = e.to_string();
            if msg.contains("missing file") {
                Error::Conflict(format!(
                    "cannot restore {t} to version {restored_version}: its data files were removed by VACUUM"
                ))
            } else {
                e.into()
            }
        })?;
    catalog.remember(t, &table).await;
    Ok(RestoreOutcome {
        version: table.version().unwrap_or(0),
        restored_version,
        files_removed: metrics.num_removed_file,
        files_restored: metrics.num_restored_file,
    })
}
