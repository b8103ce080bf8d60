//! [`SecureCatalog`]: the DataFusion catalog a principal's session sees.
//!
//! Invariant: it exposes only tables the principal holds a privilege on (default deny), and
//! every provider it returns is a [`PolicyTable`] bound to that principal. Time-travel reads
//! arrive here as versioned names (`orders@v3`, `orders@t1700000000000`, written by
//! `engine::sql`, encoded and decoded by [`VersionSpec`]: DataFusion hands a catalog nothing
//! but a name), so they pass the same checks and the same wrapper as current reads.

use std::sync::Arc;

use async_trait::async_trait;
use chrono::DateTime;
use datafusion::catalog::{CatalogProvider, SchemaProvider, TableProvider};
use datafusion::common::{DataFusionError, Result as DfResult};
use datafusion::execution::runtime_env::RuntimeEnv;

use crate::error::Error;
use crate::security::policy::PolicyTable;
use crate::security::policy::table::Enforcement;
use crate::security::{AccessControl, Principal, Privilege};
use crate::storage::{Catalog, Layer, TableRef, VersionSpec, properties};
use datafusion::execution::context::SessionState;
use deltalake::delta_datafusion::DeltaCdfTableProvider;

#[derive(Debug, Clone)]
struct Context {
    principal: Arc<Principal>,
    access: Arc<AccessControl>,
    catalog: Arc<Catalog>,
    runtime: Arc<RuntimeEnv>,
    /// For compiling policy expressions.
    planner: Arc<SessionState>,
}

#[derive(Debug)]
pub(crate) struct SecureCatalog {
    cx: Context,
}

impl SecureCatalog {
    pub(crate) fn new(
        principal: Arc<Principal>,
        access: Arc<AccessControl>,
        catalog: Arc<Catalog>,
        runtime: Arc<RuntimeEnv>,
        planner: Arc<SessionState>,
    ) -> SecureCatalog {
        SecureCatalog {
            cx: Context {
                principal,
                access,
                catalog,
                runtime,
                planner,
            },
        }
    }
}

impl CatalogProvider for SecureCatalog {
    fn schema_names(&self) -> Vec<String> {
        Layer::ALL.iter().map(|l| l.as_str().to_string()).collect()
    }

    fn schema(&self, name: &str) -> Option<Arc<dyn SchemaProvider>> {
        let layer = Layer::parse(name)?;
        Some(Arc::new(SecureSchema {
            layer,
            cx: self.cx.clone(),
        }))
    }
}

#[derive(Debug)]
struct SecureSchema {
    layer: Layer,
    cx: Context,
}

impl SecureSchema {
    /// `inner` wrapped in the principal's policy. The current policy applies to every
    /// version: time travel and the change feed included.
    fn guarded(
        &self,
        t: TableRef,
        version: u64,
        table_id: String,
        inner: Arc<dyn TableProvider>,
        opaque: bool,
        statistics: Option<Arc<datafusion::common::Statistics>>,
    ) -> DfResult<Arc<dyn TableProvider>> {
        let enforcement = Enforcement::compile(
            &t,
            self.cx.access.table_policy(&t),
            &self.cx.principal,
            self.cx.access.bypasses_policies(&self.cx.principal),
            &inner.schema(),
            &self.cx.planner,
        )?;
        let table = PolicyTable::new(
            t,
            version,
            table_id,
            Arc::clone(&self.cx.principal),
            inner,
            enforcement,
        )
        .with_statistics(statistics);
        Ok(Arc::new(if opaque { table.opaque() } else { table }))
    }

    /// The change data feed of `t` between two versions, with the table's row filter and
    /// masks applied to every change row exactly as to the table.
    async fn changes(
        &self,
        t: TableRef,
        start: u64,
        end: Option<u64>,
    ) -> DfResult<Arc<dyn TableProvider>> {
        let table = self.cx.catalog.load(&t).await?;
        let latest = table.version().unwrap_or(0);
        let end = end.unwrap_or(latest);
        let cdf_hint = format!(
            "ALTER TABLE {t} SET TBLPROPERTIES ('{}' = 'true') turns it on",
            properties::CHANGE_DATA_FEED
        );
        if !properties::change_data_feed(table.snapshot()?.metadata().configuration()) {
            return Err(Error::invalid(format!("{t} has no change data feed; {cdf_hint}")).into());
        }
        if start > end || end > latest {
            return Err(Error::invalid(format!(
                "table_changes({t}, {start}, {end}): versions must satisfy start ≤ end ≤ {latest} (the latest version)"
            ))
            .into());
        }
        // Versions before the feed was turned on have no change files: reading them would
        // report whole rewritten files as deletes and inserts.
        let first = self.cx.catalog.load_version(&t, start).await?;
        if !properties::change_data_feed(first.snapshot()?.metadata().configuration()) {
            return Err(Error::invalid(format!(
                "{t} had no change data feed at version {start}; start at a version after it was turned on"
            ))
            .into());
        }
        crate::storage::changes::check_available(&table, &t, start, end).await?;
        crate::storage::register_table_store(&self.cx.runtime, &table)?;
        let table_id = table.snapshot()?.metadata().id().to_string();
        let cdf = table
            .scan_cdf()
            .with_starting_version(start)
            .with_ending_version(end);
        let inner = Arc::new(DeltaCdfTableProvider::try_new(cdf)?);
        self.guarded(t, end, table_id, inner, true, None)
    }

    fn visible(&self, t: &TableRef) -> bool {
        self.cx
            .access
            .allows(&self.cx.principal, Privilege::Select, t)
    }
}

#[async_trait]
impl SchemaProvider for SecureSchema {
    fn table_names(&self) -> Vec<String> {
        self.cx
            .catalog
            .known_tables()
            .into_iter()
            .filter(|t| t.layer == self.layer && self.visible(t))
            .map(|t| t.name)
            .collect()
    }

    async fn table(&self, name: &str) -> DfResult<Option<Arc<dyn TableProvider>>> {
        let Some((base, spec)) = VersionSpec::parse_relation(name) else {
            return Ok(None);
        };
        let Ok(t) = TableRef::new(self.layer.as_str(), base) else {
            return Ok(None);
        };
        if !self.visible(&t) {
            return Ok(None);
        }
        if let VersionSpec::Changes { start, end } = spec {
            return self.changes(t, start, end).await.map(Some);
        }
        let loaded = match spec {
            VersionSpec::Latest | VersionSpec::Changes { .. } => self.cx.catalog.load(&t).await,
            VersionSpec::Version(v) => self.cx.catalog.load_version(&t, v).await,
            VersionSpec::Timestamp(ms) => {
                let ts = DateTime::from_timestamp_millis(ms).ok_or_else(|| {
                    DataFusionError::Plan(format!("timestamp {ms} is out of range"))
                })?;
                self.cx.catalog.load_at(&t, ts).await
            }
        };
        let table = match loaded {
            Ok(table) => table,
            Err(Error::NotFound(_)) if spec == VersionSpec::Latest => return Ok(None),
            Err(e) => return Err(e.into()),
        };
        crate::storage::register_table_store(&self.cx.runtime, &table)?;
        let version = table.version().unwrap_or(0);
        let table_id = table.snapshot()?.metadata().id().to_string();
        let inner = table.table_provider().await?;
        let statistics = self.cx.catalog.statistics(&table);
        self.guarded(t, version, table_id, inner, false, statistics)
            .map(Some)
    }

    fn table_exist(&self, name: &str) -> bool {
        TableRef::new(self.layer.as_str(), name)
            .map(|t| self.visible(&t) && self.cx.catalog.known_tables().contains(&t))
            .unwrap_or(false)
    }
}
