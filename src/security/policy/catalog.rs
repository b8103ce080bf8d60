//! [`SecureCatalog`]: the DataFusion catalog a principal's session sees.
//!
//! Invariant: it exposes only tables the principal holds a privilege on (default deny), and
//! every provider it returns is a [`PolicyTable`] bound to that principal. Time-travel reads
//! arrive here as versioned names (`orders@v3`, `orders@t1700000000000`, written by
//! `engine::sql`), so they pass the same checks and the same wrapper as current reads.

use std::sync::Arc;

use async_trait::async_trait;
use chrono::DateTime;
use datafusion::catalog::{CatalogProvider, SchemaProvider, TableProvider};
use datafusion::common::{DataFusionError, Result as DfResult};
use datafusion::execution::object_store::ObjectStoreUrl;
use datafusion::execution::runtime_env::RuntimeEnv;

use crate::error::Error;
use crate::security::policy::PolicyTable;
use crate::security::policy::table::Enforcement;
use crate::security::{AccessControl, Principal, Privilege};
use crate::storage::{Catalog, Layer, TableRef};
use datafusion::execution::context::SessionState;

/// Which snapshot of a table a name asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum VersionSpec {
    Latest,
    Version(u64),
    /// Milliseconds since the epoch.
    Timestamp(i64),
}

impl VersionSpec {
    /// The internal relation name for `name` at this version.
    pub fn relation_name(self, name: &str) -> String {
        match self {
            VersionSpec::Latest => name.to_string(),
            VersionSpec::Version(v) => format!("{name}@v{v}"),
            VersionSpec::Timestamp(ms) => format!("{name}@t{ms}"),
        }
    }

    /// Splits `orders@v3` into (`orders`, Version(3)).
    pub fn parse_relation(name: &str) -> Option<(&str, VersionSpec)> {
        match name.split_once('@') {
            None => Some((name, VersionSpec::Latest)),
            Some((base, rest)) => {
                let spec = if let Some(v) = rest.strip_prefix('v') {
                    VersionSpec::Version(v.parse().ok()?)
                } else if let Some(t) = rest.strip_prefix('t') {
                    VersionSpec::Timestamp(t.parse().ok()?)
                } else {
                    return None;
                };
                Some((base, spec))
            }
        }
    }
}

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
pub struct SecureCatalog {
    cx: Context,
}

impl SecureCatalog {
    pub fn new(
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
    fn visible(&self, t: &TableRef) -> bool {
        self.cx
            .access
            .allows(&self.cx.principal, Privilege::Select, t)
    }

    /// delta-rs scans read through the session's object store registry; register the
    /// warehouse store once (idempotent).
    fn ensure_store_registered(&self, table: &deltalake::DeltaTable) -> DfResult<()> {
        let log_store = table.log_store();
        let root = log_store.root_url();
        let url = ObjectStoreUrl::parse(format!(
            "{}://{}",
            root.scheme(),
            &root[url::Position::BeforeHost..url::Position::AfterPort]
        ))?;
        if self.cx.runtime.object_store(&url).is_err() {
            self.cx
                .runtime
                .register_object_store(url.as_ref(), log_store.root_object_store(None));
        }
        Ok(())
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
        let loaded = match spec {
            VersionSpec::Latest => self.cx.catalog.load(&t).await,
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
        self.ensure_store_registered(&table)?;
        let version = table.version().unwrap_or(0);
        let inner = table.table_provider().await?;
        // The current policy applies to every version, time travel included.
        let enforcement = Enforcement::compile(
            &t,
            self.cx.access.table_policy(&t),
            &self.cx.principal,
            self.cx.access.bypasses_policies(&self.cx.principal),
            &inner.schema(),
            &self.cx.planner,
        )?;
        Ok(Some(Arc::new(PolicyTable::new(
            t,
            version,
            Arc::clone(&self.cx.principal),
            inner,
            enforcement,
        ))))
    }

    fn table_exist(&self, name: &str) -> bool {
        TableRef::new(self.layer.as_str(), name)
            .map(|t| self.visible(&t) && self.cx.catalog.known_tables().contains(&t))
            .unwrap_or(false)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn versioned_relation_names_round_trip() {
        for spec in [
            VersionSpec::Latest,
            VersionSpec::Version(7),
            VersionSpec::Timestamp(1700),
        ] {
            let name = spec.relation_name("orders");
            assert_eq!(VersionSpec::parse_relation(&name), Some(("orders", spec)));
        }
        assert_eq!(VersionSpec::parse_relation("orders@x"), None);
        assert_eq!(VersionSpec::parse_relation("orders@vx"), None);
    }
}
