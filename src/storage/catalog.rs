//! The table catalog: Delta tables under `{warehouse}/{layer}/{name}/`.
//!
//! All table metadata is Delta's own (schema, partitioning, description, column comments,
//! owner in the table configuration), so it lives on the object store with the data and every
//! replica sees the same state. The in-process map only caches opened snapshots: a load
//! refreshes incrementally (one listing of `_delta_log` past the cached version), never
//! replays the whole log.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Arc;

use chrono::{DateTime, Utc};
use deltalake::kernel::transaction::CommitProperties;
use deltalake::protocol::SaveMode;
use deltalake::{DeltaTable, DeltaTableBuilder, DeltaTableError};
use futures::{StreamExt, TryStreamExt};
use object_store::ObjectStoreExt;
use object_store::path::Path;
use serde::Serialize;
use tokio::sync::RwLock;

use crate::error::{Error, Result};
use crate::storage::types::ColumnSpec;
use crate::storage::{Layer, TableRef, Warehouse};

/// Table configuration key recording who created the table.
pub(crate) const OWNER_PROPERTY: &str = "strata.owner";

/// What `CREATE TABLE` / `POST /tables` asks for.
#[derive(Debug, Clone)]
pub struct TableSpec {
    pub columns: Vec<ColumnSpec>,
    pub partition_by: Vec<String>,
    pub description: Option<String>,
    /// Delta table properties (see [`crate::storage::properties`]).
    pub properties: BTreeMap<String, String>,
}

/// One commit in a table's history.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct HistoryEntry {
    pub version: u64,
    pub timestamp: Option<DateTime<Utc>>,
    pub operation: Option<String>,
    pub operation_parameters: Option<serde_json::Value>,
    /// Principal that made the commit, when Strata made it.
    pub principal: Option<String>,
    /// Strata's name for the operation (e.g. `SCD2`, which Delta records as `MERGE`).
    pub strata_operation: Option<String>,
    pub read_version: Option<i64>,
    pub is_blind_append: Option<bool>,
    pub operation_metrics: Option<serde_json::Value>,
    pub engine_info: Option<String>,
    /// The pipeline run that made the commit (`GET /api/v1/runs/{id}`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub run_id: Option<String>,
    /// The scheduler lease epoch that run was started under.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub scheduler_epoch: Option<u64>,
    /// The lineage job that wrote it (`model silver.x`, `INSERT`, `UPLOAD`, `INGEST`, …).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub lineage_job: Option<String>,
}

/// Versions an open table is brought forward before it is loaded fresh again (see
/// [`Catalog::load`]); Delta's default checkpoint interval.
const RELOAD_AFTER_VERSIONS: u64 = 100;

/// Whether `table` is still the newest snapshot: no commit after its version, and its
/// version's commit file is the one it read (a table dropped and re-created has other
/// files). Two HEAD requests instead of delta-rs's update, which re-reads the commits since
/// the snapshot's checkpoint even when none is new (~60 ms for 100 commits in a debug
/// build). S3 reports `Last-Modified` in whole seconds on HEAD, hence the tolerance.
async fn still_current(table: &DeltaTable) -> bool {
    let Some(v) = table.version() else {
        return false;
    };
    let Some(seen) = table.snapshot().ok().and_then(|s| s.version_timestamp(v)) else {
        return false;
    };
    let log = table.log_store();
    let store = log.object_store(None);
    let commit = |v: u64| log.log_path().clone().join(format!("{v:020}.json"));
    match store.head(&commit(v + 1)).await {
        Err(object_store::Error::NotFound { .. }) => {}
        _ => return false,
    }
    matches!(store.head(&commit(v)).await,
        Ok(meta) if (meta.last_modified.timestamp_millis() - seen).abs() < 1000)
}

fn version_of(table: &DeltaTable) -> u64 {
    table.version().unwrap_or(0)
}

#[derive(Debug)]
pub struct Catalog {
    warehouse: Warehouse,
    /// Open tables, each with the version it was last loaded fresh at (see [`Catalog::load`]).
    open: RwLock<HashMap<TableRef, (DeltaTable, u64)>>,
    /// Tables seen by the last listing, creates and loads; answers DataFusion's synchronous
    /// `table_names()`. Reads never rely on it: they check the store.
    known: std::sync::RwLock<BTreeSet<TableRef>>,
    /// Column statistics per table version, folded from the log once.
    statistics: super::stats::StatisticsCache,
}

impl Catalog {
    pub fn new(warehouse: Warehouse) -> Catalog {
        Catalog {
            warehouse,
            open: RwLock::new(HashMap::new()),
            known: std::sync::RwLock::new(BTreeSet::new()),
            statistics: super::stats::StatisticsCache::default(),
        }
    }

    pub fn warehouse(&self) -> &Warehouse {
        &self.warehouse
    }

    /// Column statistics of `table`'s version, from its Delta log ([`super::stats`]).
    pub fn statistics(
        &self,
        table: &DeltaTable,
    ) -> Option<std::sync::Arc<datafusion::common::Statistics>> {
        self.statistics.get(table)
    }

    fn builder(&self, t: &TableRef) -> Result<DeltaTableBuilder> {
        let url = self.warehouse.table_url(t)?;
        self.warehouse.delta_builder(url)
    }

    /// Cheap reachability check of the store (used by `/readyz`).
    pub async fn ping(&self) -> Result<()> {
        self.warehouse.store().list_with_delimiter(None).await?;
        Ok(())
    }

    /// Whether `_delta_log/` has at least one entry.
    pub async fn exists(&self, t: &TableRef) -> Result<bool> {
        let prefix = Warehouse::table_path(t).join("_delta_log");
        let mut listing = self.warehouse.store().list(Some(&prefix));
        match listing.next().await {
            Some(Ok(_)) => Ok(true),
            Some(Err(object_store::Error::NotFound { .. })) | None => Ok(false),
            Some(Err(e)) => Err(e.into()),
        }
    }

    /// Whether `t` is still at `version`, as the table whose Delta id is `id`: one listing
    /// of `_delta_log` from that version, no snapshot update. For checking that a result
    /// read from that version is still current. The id is checked against the snapshot
    /// this replica has open (a drop forgets it); like [`Catalog::load`], a table dropped
    /// and re-created to the same version by another writer in between is not told apart.
    pub async fn is_current(&self, t: &TableRef, version: u64, id: &str) -> Result<bool> {
        let same_table = self
            .open
            .read()
            .await
            .get(t)
            .is_some_and(|(table, _)| table.snapshot().is_ok_and(|s| s.metadata().id() == id));
        if !same_table {
            return Ok(false);
        }
        let log = Warehouse::table_path(t).join("_delta_log");
        // Just before `{version}.json`, so the listing shows that commit and anything later.
        let offset = log.clone().join(format!("{version:020}"));
        let mut listing = self.warehouse.store().list_with_offset(Some(&log), &offset);
        let mut found = false;
        while let Some(meta) = listing.next().await {
            let meta = match meta {
                Ok(meta) => meta,
                Err(object_store::Error::NotFound { .. }) => return Ok(false),
                Err(e) => return Err(e.into()),
            };
            match meta.location.filename().and_then(commit_version) {
                Some(n) if n > version => return Ok(false),
                Some(n) => found |= n == version,
                None => {}
            }
        }
        Ok(found)
    }

    /// Tables in `layer` (or all layers), sorted.
    pub async fn list(&self, layer: Option<Layer>) -> Result<Vec<TableRef>> {
        let layers: Vec<Layer> = layer
            .map(|l| vec![l])
            .unwrap_or_else(|| Layer::ALL.to_vec());
        let mut out = Vec::new();
        for &layer in &layers {
            let prefix = Path::from(layer.dir());
            let listing = match self
                .warehouse
                .store()
                .list_with_delimiter(Some(&prefix))
                .await
            {
                Ok(l) => l,
                Err(object_store::Error::NotFound { .. }) => continue,
                Err(e) => return Err(e.into()),
            };
            for dir in listing.common_prefixes {
                let Some(name) = dir.filename() else { continue };
                let t = match layer {
                    Layer::System => TableRef::system(name),
                    _ => match TableRef::new(layer.as_str(), name) {
                        Ok(t) => t,
                        Err(_) => continue,
                    },
                };
                if self.exists(&t).await? {
                    out.push(t);
                }
            }
        }
        out.sort();
        if let Ok(mut known) = self.known.write() {
            known.retain(|t| !layers.contains(&t.layer));
            known.extend(out.iter().cloned());
        }
        Ok(out)
    }

    /// The latest version of `t`.
    ///
    /// An open table is brought forward commit by commit, but its snapshot then keeps every
    /// commit since it was loaded in its log segment (delta-rs never moves it onto a newer
    /// checkpoint), so each later update costs more: measured, a no-op update of a table
    /// that took 1,000 single-row commits in this process cost ~100 ms, against ~3 ms for
    /// a fresh load from its newest checkpoint. So a table that moved
    /// [`RELOAD_AFTER_VERSIONS`] since its last fresh load is loaded fresh again.
    pub async fn load(&self, t: &TableRef) -> Result<DeltaTable> {
        let cached = self.open.read().await.get(t).cloned();
        let (table, base) = match cached {
            Some((table, base)) if still_current(&table).await => (table, base),
            Some((mut table, base)) => match table.update_incremental(None).await {
                Ok(()) if version_of(&table).saturating_sub(base) < RELOAD_AFTER_VERSIONS => {
                    (table, base)
                }
                Ok(()) => {
                    let fresh = self.load_fresh(t).await?;
                    let v = version_of(&fresh);
                    (fresh, v)
                }
                // Dropped (and maybe re-created) under us: forget the cached snapshot.
                Err(_) => {
                    self.open.write().await.remove(t);
                    let fresh = self.load_fresh(t).await?;
                    let v = version_of(&fresh);
                    (fresh, v)
                }
            },
            None => {
                let fresh = self.load_fresh(t).await?;
                let v = version_of(&fresh);
                (fresh, v)
            }
        };
        self.remember_from(t, &table, base).await;
        Ok(table)
    }

    async fn load_fresh(&self, t: &TableRef) -> Result<DeltaTable> {
        if !self.exists(t).await? {
            self.set_known(t, false);
            return Err(not_found(t));
        }
        self.builder(t)?
            .load()
            .await
            .map_err(|e| map_load_error(t, e))
    }

    /// The newest snapshot of `t` this process loaded or committed, without asking the store
    /// whether it is still the newest (for descriptions, never for reads).
    pub async fn cached(&self, t: &TableRef) -> Option<DeltaTable> {
        self.open
            .read()
            .await
            .get(t)
            .map(|(table, _)| table.clone())
    }

    /// Tables known to exist (see the field's doc).
    pub fn known_tables(&self) -> BTreeSet<TableRef> {
        self.known.read().map(|k| k.clone()).unwrap_or_default()
    }

    fn set_known(&self, t: &TableRef, exists: bool) {
        if let Ok(mut known) = self.known.write() {
            if exists {
                known.insert(t.clone());
            } else {
                known.remove(t);
            }
        }
    }

    /// Records a newer snapshot (after a commit) so the next load starts from it.
    pub async fn remember(&self, t: &TableRef, table: &DeltaTable) {
        let base = self
            .open
            .read()
            .await
            .get(t)
            .map_or_else(|| version_of(table), |(_, base)| *base);
        self.remember_from(t, table, base).await;
    }

    async fn remember_from(&self, t: &TableRef, table: &DeltaTable, base: u64) {
        self.set_known(t, true);
        let mut open = self.open.write().await;
        let newer = match open.get(t) {
            Some((old, _)) => table.version() > old.version(),
            None => true,
        };
        if newer {
            crate::telemetry::metrics().commits.inc();
            open.insert(t.clone(), (table.clone(), base));
        } else if let Some(entry) = open.get_mut(t)
            && base > entry.1
            && table.version() == entry.0.version()
        {
            // The same version, loaded fresh: start counting from it.
            *entry = (table.clone(), base);
        }
    }

    /// `t` as of `version`.
    pub async fn load_version(&self, t: &TableRef, version: u64) -> Result<DeltaTable> {
        if !self.exists(t).await? {
            return Err(not_found(t));
        }
        match self.builder(t)?.with_version(version).load().await {
            Ok(table) => Ok(table),
            Err(e) => {
                // The kernel reports a version past the end in several ways; ask the log.
                let latest = self.builder(t)?.build()?.get_latest_version().await.ok();
                match latest {
                    Some(latest) if version > latest => Err(Error::NotFound(format!(
                        "table {t} has no version {version} (latest is {latest})"
                    ))),
                    _ => match e {
                        DeltaTableError::InvalidVersion(_) | DeltaTableError::NotATable(_) => Err(
                            Error::NotFound(format!("table {t} has no version {version}")),
                        ),
                        other => Err(map_load_error(t, other)),
                    },
                }
            }
        }
    }

    /// `t` as it was at `ts`: the last version committed at or before it.
    ///
    /// Versions are dated by their commit timestamp (`inCommitTimestamp`, else the
    /// commit info's `timestamp`, the time `DESCRIBE HISTORY` shows), not by the log file's
    /// modification time, which S3 and most S3-compatible stores report to the second only.
    /// A binary search reads O(log n) commits.
    pub async fn load_at(&self, t: &TableRef, ts: DateTime<Utc>) -> Result<DeltaTable> {
        let latest = self.load(t).await?;
        let log_store = latest.log_store();
        let target = ts.timestamp_millis();
        let too_early = || {
            Error::NotFound(format!(
                "table {t} has no version at or before {}",
                ts.to_rfc3339()
            ))
        };
        let commit_time = async |v: u64| -> Result<Option<i64>> {
            let bytes = log_store.read_commit_entry(v).await?;
            Ok(bytes.and_then(|b| {
                parse_commit_info(v, &b)
                    .timestamp
                    .map(|t| t.timestamp_millis())
            }))
        };
        // Invariant: lo is at or before ts (once checked), hi is the latest version.
        let (mut lo, mut hi) = (0u64, latest.version().unwrap_or(0));
        match commit_time(lo).await? {
            Some(first) if first > target => return Err(too_early()),
            Some(_) => {}
            // Version 0 is gone (log cleanup): time travel before the oldest kept commit is
            // not possible, and delta-rs finds the oldest one for us.
            None => return self.load_by_file_time(t, ts).await,
        }
        while lo < hi {
            let mid = lo + (hi - lo).div_ceil(2);
            match commit_time(mid).await? {
                Some(at) if at <= target => lo = mid,
                Some(_) => hi = mid - 1,
                None => return self.load_by_file_time(t, ts).await,
            }
        }
        self.load_version(t, lo).await
    }

    /// delta-rs's own timestamp resolution (log file modification times).
    async fn load_by_file_time(&self, t: &TableRef, ts: DateTime<Utc>) -> Result<DeltaTable> {
        let table = self
            .builder(t)?
            .with_timestamp(ts)
            .load()
            .await
            .map_err(|e| match e {
                DeltaTableError::InvalidVersion(_)
                | DeltaTableError::NotATable(_)
                | DeltaTableError::Generic(_) => Error::NotFound(format!(
                    "table {t} has no version at or before {}",
                    ts.to_rfc3339()
                )),
                other => map_load_error(t, other),
            })?;
        // delta-rs falls back to the first version for a timestamp before it; that version
        // did not exist at `ts`.
        let state = table.snapshot()?;
        if let Some(created) = state.version_timestamp(state.version())
            && ts.timestamp_millis() < created
        {
            return Err(Error::NotFound(format!(
                "table {t} has no version at or before {}",
                ts.to_rfc3339()
            )));
        }
        Ok(table)
    }

    /// Creates `t`. Fails with `AlreadyExists` if it exists, including when another writer
    /// wins a concurrent create (version 0 is written with put-if-absent).
    pub async fn create(
        &self,
        t: &TableRef,
        spec: &TableSpec,
        owner: &str,
        commit: CommitProperties,
    ) -> Result<DeltaTable> {
        let fields = spec
            .columns
            .iter()
            .map(ColumnSpec::to_field)
            .collect::<Result<Vec<_>>>()?;
        if fields.is_empty() {
            return Err(Error::invalid("a table needs at least one column"));
        }
        let mut seen = std::collections::HashSet::new();
        for f in &fields {
            if !seen.insert(f.name().to_string()) {
                return Err(Error::invalid(format!(
                    "column {} is declared twice",
                    f.name()
                )));
            }
        }
        let mut partitions = Vec::new();
        for p in &spec.partition_by {
            let p = p.to_ascii_lowercase();
            if !seen.contains(&p) {
                return Err(Error::invalid(format!(
                    "partition column {p} is not a column of the table"
                )));
            }
            partitions.push(p);
        }
        if !partitions.is_empty() && partitions.len() == fields.len() {
            return Err(Error::invalid(
                "a table needs at least one non-partition column",
            ));
        }
        let properties = crate::storage::properties::validate(&spec.properties)?;
        if self.exists(t).await? {
            return Err(already_exists(t));
        }
        let table = self.builder(t)?.build()?;
        let mut create = table
            .create()
            .with_table_name(t.name.clone())
            .with_columns(fields)
            .with_save_mode(SaveMode::ErrorIfExists)
            .with_configuration_property(deltalake::TableProperty::AppendOnly, Some("false"))
            // Our own `strata.*` keys are not Delta properties; let them through.
            .with_raise_if_key_not_exists(false)
            .with_configuration(
                properties
                    .into_iter()
                    .map(|(k, v)| (k, Some(v)))
                    .chain([(OWNER_PROPERTY.to_string(), Some(owner.to_string()))]),
            )
            // A create is only valid as version 0: never let delta-rs retry it as version 1
            // on top of a concurrent create (that would replace the winner's metadata).
            .with_commit_properties(commit.with_max_retries(0));
        if !partitions.is_empty() {
            create = create.with_partition_columns(partitions);
        }
        if let Some(d) = &spec.description {
            create = create.with_comment(d.clone());
        }
        let table = create.await.map_err(|e| match e {
            DeltaTableError::VersionAlreadyExists(_) | DeltaTableError::GenericError { .. } => {
                already_exists(t)
            }
            DeltaTableError::Transaction {
                source: deltalake::kernel::transaction::TransactionError::VersionAlreadyExists(_),
            } => already_exists(t),
            other => other.into(),
        })?;
        self.remember(t, &table).await;
        Ok(table)
    }

    /// Drops `t`: deletes the log first, so a half-finished drop leaves no readable table,
    /// then the data files.
    pub async fn drop_table(&self, t: &TableRef) -> Result<()> {
        if !self.exists(t).await? {
            return Err(not_found(t));
        }
        self.open.write().await.remove(t);
        let store = Arc::clone(self.warehouse.store());
        let root = Warehouse::table_path(t);
        let log = root.clone().join("_delta_log");
        delete_prefix(&store, &log).await?;
        delete_prefix(&store, &root).await?;
        self.open.write().await.remove(t);
        self.set_known(t, false);
        Ok(())
    }

    /// Commits of `t`, newest first. Versions come from the log file names, so they are exact
    /// even for commits without provenance.
    /// The info of `t`'s newest commit at or below `from` that `matches`, reading at most
    /// `max` commits, newest first (`None`: none of them matches).
    pub(crate) async fn find_commit_info(
        &self,
        t: &TableRef,
        from: u64,
        max: u64,
        matches: impl Fn(&serde_json::Map<String, serde_json::Value>) -> bool,
    ) -> Result<Option<(u64, serde_json::Map<String, serde_json::Value>)>> {
        let store = self.warehouse.store();
        let log = Warehouse::table_path(t).join("_delta_log");
        for version in (from.saturating_sub(max.saturating_sub(1))..=from).rev() {
            let path = log.clone().join(format!("{version:020}.json"));
            let bytes = match store.get(&path).await {
                Ok(r) => r.bytes().await?,
                Err(object_store::Error::NotFound { .. }) => continue,
                Err(e) => return Err(e.into()),
            };
            for line in bytes.split(|b| *b == b'\n') {
                if let Ok(serde_json::Value::Object(mut action)) = serde_json::from_slice(line)
                    && let Some(serde_json::Value::Object(info)) = action.remove("commitInfo")
                    && matches(&info)
                {
                    return Ok(Some((version, info)));
                }
            }
        }
        Ok(None)
    }

    pub async fn history(&self, t: &TableRef, limit: usize) -> Result<Vec<HistoryEntry>> {
        if !self.exists(t).await? {
            return Err(not_found(t));
        }
        let store = self.warehouse.store();
        let log = Warehouse::table_path(t).join("_delta_log");
        let mut versions: Vec<(u64, Path)> = store
            .list(Some(&log))
            .try_filter_map(|meta| async move {
                let name = meta.location.filename().unwrap_or_default().to_string();
                let version = name
                    .strip_suffix(".json")
                    .filter(|stem| stem.len() == 20)
                    .and_then(|stem| stem.parse::<u64>().ok());
                Ok(version.map(|v| (v, meta.location)))
            })
            .try_collect()
            .await?;
        versions.sort_by_key(|v| std::cmp::Reverse(v.0));
        versions.truncate(limit);
        let mut out = Vec::with_capacity(versions.len());
        for (version, path) in versions {
            let bytes = match store.get(&path).await {
                Ok(r) => r.bytes().await?,
                // Removed by log cleanup between list and get.
                Err(object_store::Error::NotFound { .. }) => continue,
                Err(e) => return Err(e.into()),
            };
            out.push(parse_commit_info(version, &bytes));
        }
        Ok(out)
    }
}

impl Catalog {
    /// When `t`'s latest commit was made (its commit info's timestamp): one read of that
    /// commit, not a listing of the log.
    pub async fn last_commit_time(
        &self,
        t: &TableRef,
    ) -> Result<Option<chrono::DateTime<chrono::Utc>>> {
        let table = self.load(t).await?;
        let Some(version) = table.version() else {
            return Ok(None);
        };
        let path = Warehouse::table_path(t)
            .join("_delta_log")
            .join(format!("{version:020}.json"));
        let bytes = self.warehouse.store().get(&path).await?.bytes().await?;
        Ok(parse_commit_info(version, &bytes).timestamp)
    }
}

impl Catalog {
    /// The commit infos of `t`'s commits `versions` (those still in the log), read
    /// concurrently, in version order.
    pub async fn commit_infos(
        &self,
        t: &TableRef,
        versions: std::ops::RangeInclusive<u64>,
    ) -> Result<Vec<(u64, serde_json::Map<String, serde_json::Value>)>> {
        let store = self.warehouse.store();
        let log = Warehouse::table_path(t).join("_delta_log");
        let mut out: Vec<_> = futures::stream::iter(versions)
            .map(|version| {
                let path = log.clone().join(format!("{version:020}.json"));
                let store = Arc::clone(store);
                async move {
                    match store.get(&path).await {
                        Ok(r) => Ok(Some((version, commit_info(&r.bytes().await?)))),
                        Err(object_store::Error::NotFound { .. }) => Ok(None),
                        Err(e) => Err(Error::from(e)),
                    }
                }
            })
            .buffer_unordered(16)
            .try_filter_map(
                |found| async move { Ok(found.and_then(|(v, info)| info.map(|i| (v, i)))) },
            )
            .try_collect()
            .await?;
        out.sort_by_key(|(v, _)| *v);
        Ok(out)
    }
}

/// The `commitInfo` action of a commit file.
fn commit_info(bytes: &[u8]) -> Option<serde_json::Map<String, serde_json::Value>> {
    bytes.split(|b| *b == b'\n').find_map(|line| {
        let serde_json::Value::Object(mut action) = serde_json::from_slice(line).ok()? else {
            return None;
        };
        match action.remove("commitInfo")? {
            serde_json::Value::Object(info) => Some(info),
            _ => None,
        }
    })
}

fn parse_commit_info(version: u64, bytes: &[u8]) -> HistoryEntry {
    let mut entry = HistoryEntry {
        version,
        timestamp: None,
        operation: None,
        operation_parameters: None,
        principal: None,
        strata_operation: None,
        read_version: None,
        is_blind_append: None,
        operation_metrics: None,
        engine_info: None,
        run_id: None,
        scheduler_epoch: None,
        lineage_job: None,
    };
    for line in bytes.split(|b| *b == b'\n') {
        let Ok(serde_json::Value::Object(mut action)) = serde_json::from_slice(line) else {
            continue;
        };
        let Some(serde_json::Value::Object(info)) = action.remove("commitInfo") else {
            continue;
        };
        let get = |k: &str| info.get(k).cloned();
        entry.timestamp = get("inCommitTimestamp")
            .or_else(|| get("timestamp"))
            .and_then(|v| v.as_i64())
            .and_then(DateTime::from_timestamp_millis);
        entry.operation = get("operation").and_then(|v| v.as_str().map(str::to_string));
        entry.operation_parameters = get("operationParameters");
        entry.principal =
            get(super::commit_info::PRINCIPAL_KEY).and_then(|v| v.as_str().map(str::to_string));
        entry.strata_operation =
            get(super::commit_info::OPERATION_KEY).and_then(|v| v.as_str().map(str::to_string));
        entry.read_version = get("readVersion").and_then(|v| v.as_i64());
        entry.is_blind_append = get("isBlindAppend").and_then(|v| v.as_bool());
        entry.operation_metrics = get("operationMetrics");
        entry.engine_info = get("engineInfo").and_then(|v| v.as_str().map(str::to_string));
        entry.run_id =
            get(super::commit_info::RUN_ID_KEY).and_then(|v| v.as_str().map(str::to_string));
        entry.scheduler_epoch = get(super::commit_info::EPOCH_KEY).and_then(|v| v.as_u64());
        entry.lineage_job = info
            .get(super::commit_info::LINEAGE_KEY)
            .and_then(|l| l.get("job"))
            .and_then(|j| j.as_str())
            .map(str::to_string);
        break;
    }
    entry
}

async fn delete_prefix(store: &Arc<dyn object_store::ObjectStore>, prefix: &Path) -> Result<()> {
    let locations = store.list(Some(prefix)).map_ok(|m| m.location).boxed();
    let mut deleted = store.delete_stream(locations);
    while let Some(r) = deleted.next().await {
        match r {
            Ok(_) | Err(object_store::Error::NotFound { .. }) => {}
            Err(e) => return Err(e.into()),
        }
    }
    Ok(())
}

/// The version of a commit file name (`00000000000000000012.json`).
fn commit_version(name: &str) -> Option<u64> {
    let digits = name.strip_suffix(".json")?;
    if digits.len() != 20 || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    digits.parse().ok()
}

fn not_found(t: &TableRef) -> Error {
    Error::NotFound(format!("table {t} not found"))
}

fn already_exists(t: &TableRef) -> Error {
    Error::AlreadyExists(format!("table {t} already exists"))
}

fn map_load_error(t: &TableRef, e: DeltaTableError) -> Error {
    match e {
        DeltaTableError::NotATable(_) => not_found(t),
        other => other.into(),
    }
}

#[cfg(test)]
mod tests {
    use super::commit_version;

    #[test]
    fn only_commit_files_have_a_version() {
        assert_eq!(commit_version("00000000000000000012.json"), Some(12));
        assert_eq!(commit_version("00000000000000000000.json"), Some(0));
        for other in [
            "00000000000000000010.checkpoint.parquet",
            "00000000000000000003.00000000000000000005.compacted.json",
            "00000000000000000012.crc",
            "_last_checkpoint",
            "0000000000000000012.json",
            "0000000000000000001a.json",
            "00000000000000000012.7d5c0f0e-9a7e-4c1b-9f5e-3f1a2b3c4d5e.json",
        ] {
            assert_eq!(commit_version(other), None, "{other}");
        }
    }
}
