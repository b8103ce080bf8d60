//! Where tables live: the warehouse (local disk or S3), the three medallion layers, and the
//! [`catalog::Catalog`] that creates, opens, lists and drops Delta tables under
//! `{warehouse}/{layer}/{name}/`.
//!
//! Nothing here checks access: callers go through `engine`, which asks `security` first.

pub(crate) mod catalog;
pub(crate) mod changes;
pub(crate) mod commit_guard;
pub(crate) mod documents;
pub(crate) mod properties;
pub(crate) mod scan;
pub(crate) mod stats;
pub(crate) mod types;
mod version;
pub(crate) mod warehouse;

use std::fmt;

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};

pub use catalog::Catalog;
pub use version::VersionSpec;

/// Keys Strata writes into every commit's `commitInfo` (by `pipelines::commit`) and reads
/// back for the history (`Catalog::history`).
pub mod commit_info {
    /// The principal that made a commit.
    pub const PRINCIPAL_KEY: &str = "strata.principal";
    /// The Strata operation.
    pub const OPERATION_KEY: &str = "strata.operation";
    /// A unique id per commit attempt.
    pub const COMMIT_ID_KEY: &str = "strata.commit_id";
    /// The pipeline run a commit belongs to.
    pub const RUN_ID_KEY: &str = "strata.run_id";
    /// The scheduler lease epoch of the leader that started that run (the fencing token).
    pub const EPOCH_KEY: &str = "strata.scheduler_epoch";
    /// The write's lineage (`engine::lineage::LineageRecord`).
    pub const LINEAGE_KEY: &str = "strata.lineage";

    /// The Delta `txn` application id of the scheduler's fencing token: its version is the
    /// leadership term of the last leader whose run wrote the table.
    pub const FENCE_APP_ID: &str = "strata:scheduler";

    /// The scheduler's lease as the runs it started see it.
    pub trait Fence: std::fmt::Debug + Send + Sync {
        /// The term this replica leads under (the epoch it took the lease at; renewals keep
        /// it), or `None` once it does not lead. Checked before every model, batch and
        /// commit of a run the scheduler started.
        fn term(&self) -> Option<u64>;
    }

    /// The run whose work the current task does: every commit made inside
    /// [`RunContext::scope`] names it, whichever write path commits, and (runs the
    /// scheduler started) is fenced by the lease.
    #[derive(Debug, Clone)]
    pub struct RunContext {
        pub run_id: String,
        /// The pipeline the run belongs to.
        pub pipeline: String,
        pub epoch: Option<u64>,
        pub fence: Option<std::sync::Arc<dyn Fence>>,
    }

    tokio::task_local! {
        static RUN: RunContext;
    }

    /// The lineage of the write the current task makes to `table`: attached to that
    /// table's commits (and its quarantine's) by the write paths, and to nothing else the
    /// task commits (run records, a table created on the way). A write nested in another to
    /// the same table (a merge model's MERGE inside its batch) replaces the record.
    #[derive(Debug, Clone)]
    pub struct LineageScope {
        pub table: super::TableRef,
        record: std::sync::Arc<std::sync::Mutex<serde_json::Value>>,
    }

    tokio::task_local! {
        static LINEAGE: LineageScope;
    }

    impl LineageScope {
        pub fn new(table: super::TableRef, record: serde_json::Value) -> LineageScope {
            LineageScope {
                table,
                record: std::sync::Arc::new(std::sync::Mutex::new(record)),
            }
        }

        pub async fn scope<F: std::future::Future>(self, f: F) -> F::Output {
            LINEAGE.scope(self, f).await
        }

        /// The scope of the current write, if it writes `t`.
        pub fn current_for(t: &super::TableRef) -> Option<LineageScope> {
            LINEAGE
                .try_with(|s| (s.table == *t.governing()).then(|| s.clone()))
                .ok()
                .flatten()
        }

        /// The record to attach to a commit of `t`, if the current write is one of `t`.
        pub fn record_for(t: &super::TableRef) -> Option<serde_json::Value> {
            LineageScope::current_for(t).map(|s| s.record())
        }

        pub fn record(&self) -> serde_json::Value {
            match self.record.lock() {
                Ok(r) => r.clone(),
                Err(poisoned) => poisoned.into_inner().clone(),
            }
        }

        pub fn replace(&self, record: serde_json::Value) {
            match self.record.lock() {
                Ok(mut r) => *r = record,
                Err(poisoned) => *poisoned.into_inner() = record,
            }
        }
    }

    impl RunContext {
        pub async fn scope<F: std::future::Future>(self, f: F) -> F::Output {
            RUN.scope(self, f).await
        }

        /// The run of the current task, if any.
        pub fn current() -> Option<RunContext> {
            RUN.try_with(Clone::clone).ok()
        }
    }
}
pub use warehouse::Warehouse;

/// The catalog name SQL sees: `strata.gold.orders`.
pub const CATALOG_NAME: &str = "strata";

/// A medallion layer: one SQL schema each. `System` is the fourth, read-only schema of the
/// server's own records (`system.runs`, …, under `{warehouse}/_strata/system/`): no user
/// can name it in a write, because [`Layer::parse`] does not know it.
#[derive(
    Debug,
    Clone,
    Copy,
    PartialEq,
    Eq,
    Hash,
    PartialOrd,
    Ord,
    Serialize,
    Deserialize,
    utoipa::ToSchema,
)]
#[serde(rename_all = "lowercase")]
pub enum Layer {
    Bronze,
    Silver,
    Gold,
    System,
}

impl Layer {
    /// The data layers (users' tables).
    pub const ALL: [Layer; 3] = [Layer::Bronze, Layer::Silver, Layer::Gold];

    /// A data layer by name; never [`Layer::System`].
    pub fn parse(s: &str) -> Option<Layer> {
        match s.to_ascii_lowercase().as_str() {
            "bronze" => Some(Layer::Bronze),
            "silver" => Some(Layer::Silver),
            "gold" => Some(Layer::Gold),
            _ => None,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Layer::Bronze => "bronze",
            Layer::Silver => "silver",
            Layer::Gold => "gold",
            Layer::System => "system",
        }
    }

    /// The folder of the layer's tables under the warehouse root.
    pub fn dir(self) -> &'static str {
        match self {
            Layer::System => "_strata/system",
            other => other.as_str(),
        }
    }
}

impl fmt::Display for Layer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A table's identity: `layer.name`. Names are lowercase identifiers, so they never need
/// quoting and map one-to-one onto object store paths.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct TableRef {
    pub layer: Layer,
    pub name: String,
}

impl TableRef {
    /// Validates a layer and a table name.
    pub fn new(layer: &str, name: &str) -> Result<TableRef> {
        let layer = Layer::parse(layer).ok_or_else(|| {
            Error::NotFound(format!(
                "layer {layer:?} does not exist (layers: bronze, silver, gold)"
            ))
        })?;
        validate_name(name)?;
        Ok(TableRef {
            layer,
            name: name.to_ascii_lowercase(),
        })
    }

    /// A table of the read-only `system` schema (the server writes it, users read it).
    pub(crate) fn system(name: &str) -> TableRef {
        TableRef {
            layer: Layer::System,
            name: name.to_string(),
        }
    }

    /// The quarantine table of model table `self` (`<layer>.<name>__quarantine`).
    pub(crate) fn quarantine(&self) -> Result<TableRef> {
        TableRef::new(
            self.layer.as_str(),
            &format!("{}{QUARANTINE_SUFFIX}", self.name),
        )
    }

    /// The table whose grants, row filters and masks govern `self`: a quarantine or
    /// dead-letter table is governed by the table it belongs to (so it can never show a row
    /// that table hides, and never drifts from its policy); every other table by itself.
    pub(crate) fn governing(&self) -> std::borrow::Cow<'_, TableRef> {
        for suffix in RESERVED_SUFFIXES {
            if let Some(base) = self.name.strip_suffix(suffix)
                && !base.is_empty()
            {
                return std::borrow::Cow::Owned(TableRef {
                    layer: self.layer,
                    name: base.to_string(),
                });
            }
        }
        std::borrow::Cow::Borrowed(self)
    }

    /// Names only Strata creates (quarantine and dead-letter tables).
    pub(crate) fn is_reserved(&self) -> bool {
        RESERVED_SUFFIXES.iter().any(|s| self.name.ends_with(s))
    }

    /// Parses `layer.name` or `strata.layer.name`.
    pub fn parse(qualified: &str) -> Result<TableRef> {
        let parts: Vec<&str> = qualified.split('.').collect();
        match parts.as_slice() {
            [layer, name] => TableRef::new(layer, name),
            [catalog, layer, name] if catalog.eq_ignore_ascii_case(CATALOG_NAME) => {
                TableRef::new(layer, name)
            }
            _ => Err(Error::invalid(format!(
                "table name {qualified:?} must be layer.name, e.g. gold.orders"
            ))),
        }
    }
}

impl fmt::Display for TableRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}.{}", self.layer, self.name)
    }
}

/// Problems in `[storage]` and the default layer that need the storage types (see
/// `server::config_problems`).
pub fn config_problems(cfg: &crate::config::StorageConfig, default_layer: &str) -> Vec<String> {
    let mut out = Vec::new();
    if !cfg.warehouse.trim().is_empty()
        && let Err(e) = Warehouse::parse(&cfg.warehouse)
    {
        out.push(format!("storage.warehouse: {e}"));
    }
    if Layer::parse(default_layer).is_none() {
        out.push(format!(
            "query.default_layer must be bronze, silver or gold, not {default_layer:?}"
        ));
    }
    out
}

/// The suffix of a model's quarantine table.
pub(crate) const QUARANTINE_SUFFIX: &str = "__quarantine";
/// Table name suffixes reserved for tables Strata creates.
pub(crate) const RESERVED_SUFFIXES: [&str; 2] = [QUARANTINE_SUFFIX, "__dead_letter"];

/// Table and column names: `[a-z_][a-z0-9_]*`, at most 128 bytes (case-insensitive).
pub fn validate_name(name: &str) -> Result<()> {
    let ok = !name.is_empty()
        && name.len() <= 128
        && name
            .chars()
            .next()
            .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
        && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_');
    if ok {
        Ok(())
    } else {
        Err(Error::invalid(format!(
            "invalid name {name:?}: use letters, digits and underscores, starting with a letter or underscore (at most 128)"
        )))
    }
}

/// delta-rs scans read through a session's object store registry: registers the store of
/// `table`'s warehouse in `runtime` once (idempotent).
pub fn register_table_store(
    runtime: &datafusion::execution::runtime_env::RuntimeEnv,
    table: &deltalake::DeltaTable,
) -> Result<()> {
    let log_store = table.log_store();
    let root = log_store.root_url();
    let url = datafusion::execution::object_store::ObjectStoreUrl::parse(format!(
        "{}://{}",
        root.scheme(),
        &root[url::Position::BeforeHost..url::Position::AfterPort]
    ))?;
    if runtime.object_store(&url).is_err() {
        runtime.register_object_store(url.as_ref(), log_store.root_object_store(None));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn table_refs_parse_and_validate() {
        assert_eq!(
            TableRef::parse("gold.orders").unwrap().to_string(),
            "gold.orders"
        );
        assert_eq!(
            TableRef::parse("STRATA.Gold.Orders").unwrap().to_string(),
            "gold.orders"
        );
        assert!(TableRef::parse("platinum.x").is_err());
        assert!(TableRef::parse("gold.../x").is_err());
        assert!(TableRef::new("gold", "a/b").is_err());
        assert!(TableRef::new("gold", "x@v1").is_err());
        assert!(TableRef::new("gold", "1abc").is_err());
    }
}
