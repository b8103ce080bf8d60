//! [`SecureCatalog`]: the DataFusion catalog a principal's session sees.
//!
//! Invariant: it exposes only tables the principal holds a privilege on (default deny), and
//! every provider it returns is a [`PolicyTable`] bound to that principal. Time-travel reads
//! arrive here as versioned names (`orders@v3`, `orders@t1700000000000`, written by
//! `engine::sql`, encoded and decoded by [`VersionSpec`]: DataFusion hands a catalog nothing
//! but a name), so they pass the same checks and the same wrapper as current reads.
//! The read-only `system` schema is served here too, its rows filtered by the same check.

use std::sync::Arc;

use async_trait::async_trait;
use chrono::DateTime;
use datafusion::catalog::{CatalogProvider, SchemaProvider, TableProvider};
use datafusion::common::{DataFusionError, Result as DfResult};
use datafusion::execution::runtime_env::RuntimeEnv;

use crate::error::Error;
use crate::security::policy::PolicyTable;
use crate::security::policy::information::{INFORMATION_SCHEMA, InformationSchema};
use crate::security::policy::table::Enforcement;
use crate::security::policy::views::{SystemView, SystemViews};
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
    views: Arc<SystemViews>,
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
        views: Arc<SystemViews>,
    ) -> SecureCatalog {
        SecureCatalog {
            cx: Context {
                principal,
                access,
                catalog,
                runtime,
                planner,
                views,
            },
        }
    }
}

impl SecureCatalog {
    /// The storage catalog behind it.
    pub(super) fn storage(&self) -> &Catalog {
        &self.cx.catalog
    }
}

impl CatalogProvider for SecureCatalog {
    fn schema_names(&self) -> Vec<String> {
        Layer::ALL
            .iter()
            .chain([&Layer::System])
            .map(|l| l.as_str().to_string())
            .chain([INFORMATION_SCHEMA.to_string()])
            .collect()
    }

    fn schema(&self, name: &str) -> Option<Arc<dyn SchemaProvider>> {
        if name.eq_ignore_ascii_case(INFORMATION_SCHEMA) {
            return Some(Arc::new(InformationSchema::new(Arc::new(SecureCatalog {
                cx: self.cx.clone(),
            }))));
        }
        if name.eq_ignore_ascii_case(Layer::System.as_str()) {
            return Some(Arc::new(SystemSchema {
                cx: self.cx.clone(),
            }));
        }
        let layer = Layer::parse(name)?;
        Some(Arc::new(SecureSchema {
            layer,
            cx: self.cx.clone(),
        }))
    }
}

/// The tables of the read-only `system` schema and the column that names the table(s) each
/// row is about (`layer.name`, or several comma-separated): a row is visible to a principal
/// with SELECT on (one of) them.
const SYSTEM_TABLES: [(&str, &str); 4] = [
    ("runs", "models"),
    ("model_runs", "model"),
    ("expectation_results", "model"),
    ("audit_results", "table_name"),
];

/// Columns of `system` tables that hold rows of user tables (failure samples): shown only
/// to principals who may MANAGE every table named in the row's `sources` column (those
/// whose policies they could lift anyway), NULL to everyone else.
const SAMPLE_COLUMNS: [&str; 1] = ["samples"];

/// `system`: the server's own records (run records of flows, …), written by the server
/// only. Every principal may query it; the row filter built here from the principal's
/// SELECT grants (the rule that decides which tables it sees at all) shows each row only
/// to principals who may read the table it is about.
#[derive(Debug)]
struct SystemSchema {
    cx: Context,
}

impl SystemSchema {
    /// The row filter over `column` for the principal: `None` when it may read everything.
    fn filter(
        &self,
        column: &str,
        schema: &arrow::datatypes::Schema,
    ) -> DfResult<Option<datafusion::logical_expr::Expr>> {
        use crate::security::access::Scope;
        let scopes = self.cx.access.select_scopes(&self.cx.principal);
        let mut terms = Vec::new();
        for scope in scopes {
            // Layer and table names are validated identifiers: no literal needs escaping.
            let needle = match scope {
                Scope::All => return Ok(None),
                Scope::Layer(l) => format!(",{l}."),
                Scope::Table(t) => format!(",{t},"),
            };
            terms.push(format!(
                "strpos(concat(',', {column}, ','), '{needle}') > 0"
            ));
        }
        if terms.is_empty() {
            return Ok(Some(datafusion::logical_expr::lit(false)));
        }
        let df_schema = datafusion::common::DFSchema::try_from(schema.clone())?;
        Ok(Some(
            self.cx
                .planner
                .create_logical_expr(&terms.join(" OR "), &df_schema)?,
        ))
    }
}

impl SystemSchema {
    /// Masks of the sample columns: NULL unless the principal manages every layer the
    /// row's `sources` name.
    fn sample_masks(
        &self,
        schema: &arrow::datatypes::Schema,
    ) -> DfResult<Vec<(usize, datafusion::logical_expr::Expr)>> {
        if schema.index_of("sources").is_err() {
            return Ok(Vec::new());
        }
        let unmanaged = self.cx.access.unmanaged_layers(&self.cx.principal);
        let mut masks = Vec::new();
        for (i, f) in schema.fields().iter().enumerate() {
            if !SAMPLE_COLUMNS.contains(&f.name().as_str()) || unmanaged.is_empty() {
                continue;
            }
            let hidden: Vec<String> = unmanaged
                .iter()
                .map(|l| format!("strpos(concat(',', sources), ',{l}.') > 0"))
                .collect();
            let sql = format!(
                "CASE WHEN sources IS NULL OR sources = '' OR {} THEN NULL ELSE {} END",
                hidden.join(" OR "),
                f.name()
            );
            let df_schema = datafusion::common::DFSchema::try_from(schema.clone())?;
            let e = self.cx.planner.create_logical_expr(&sql, &df_schema)?;
            masks.push((i, datafusion::logical_expr::cast(e, f.data_type().clone())));
        }
        Ok(masks)
    }
}

impl SystemSchema {
    /// A computed view: the principal's rows (chosen by the view with the principal's
    /// access), bound to the principal like every table, versioned by the content's
    /// fingerprint for the result cache.
    async fn view(&self, name: &str, view: &dyn SystemView) -> DfResult<Arc<dyn TableProvider>> {
        let rows = view.rows(&self.cx.access, &self.cx.principal).await?;
        let schema = view.schema();
        let inner = datafusion::datasource::MemTable::try_new(schema, vec![rows.batches])?;
        let t = TableRef::system(&name.to_ascii_lowercase());
        let table_id = format!("view:{}", t.name);
        Ok(Arc::new(PolicyTable::new(
            t,
            rows.fingerprint,
            table_id,
            Arc::clone(&self.cx.principal),
            Arc::new(inner),
            Enforcement::default(),
        )))
    }
}

#[async_trait]
impl SchemaProvider for SystemSchema {
    fn table_names(&self) -> Vec<String> {
        // Every row of every system table is about tables; a principal that may read none
        // is shown none (default deny, also in listings).
        if self.cx.access.select_scopes(&self.cx.principal).is_empty() {
            return Vec::new();
        }
        let known = self.cx.catalog.known_tables();
        SYSTEM_TABLES
            .iter()
            .map(|(name, _)| TableRef::system(name))
            .filter(|t| known.contains(t))
            .map(|t| t.name)
            .chain(self.cx.views.names())
            .collect()
    }

    /// Without building the table: a view's rows are computed only when it is read, never
    /// for a listing (`information_schema.tables`).
    async fn table_type(
        &self,
        name: &str,
    ) -> DfResult<Option<datafusion::logical_expr::TableType>> {
        use datafusion::logical_expr::TableType;
        // Computed views, and `runs` (a view over the stored state changes).
        if self.cx.views.get(name).is_some() || name.eq_ignore_ascii_case("runs") {
            return Ok(self.table_exist(name).then_some(TableType::View));
        }
        Ok(self.table_exist(name).then_some(TableType::Base))
    }

    async fn table(&self, name: &str) -> DfResult<Option<Arc<dyn TableProvider>>> {
        if let Some(view) = self.cx.views.get(name) {
            return self.view(name, view.as_ref()).await.map(Some);
        }
        let Some((_, column)) = SYSTEM_TABLES
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
        else {
            return Ok(None);
        };
        let t = TableRef::system(&name.to_ascii_lowercase());
        let table = match self.cx.catalog.load(&t).await {
            Ok(table) => table,
            Err(Error::NotFound(_)) => return Ok(None),
            Err(e) => return Err(e.into()),
        };
        crate::storage::register_table_store(&self.cx.runtime, &table)?;
        let version = table.version().unwrap_or(0);
        let table_id = table.snapshot()?.metadata().id().to_string();
        let inner = table.table_provider().await?;
        let schema = inner.schema();
        let enforcement = Enforcement {
            filter: self.filter(column, &schema)?,
            masks: self.sample_masks(&schema)?,
        };
        let table: Arc<dyn TableProvider> = Arc::new(PolicyTable::new(
            t.clone(),
            version,
            table_id,
            Arc::clone(&self.cx.principal),
            inner,
            enforcement,
        ));
        if t.name == "runs" {
            return Ok(Some(current_runs(table)?));
        }
        Ok(Some(table))
    }

    fn table_exist(&self, name: &str) -> bool {
        if self.cx.views.get(name).is_some() {
            return true;
        }
        SYSTEM_TABLES
            .iter()
            .any(|(n, _)| n.eq_ignore_ascii_case(name))
            && self
                .cx
                .catalog
                .known_tables()
                .contains(&TableRef::system(&name.to_ascii_lowercase()))
    }
}

/// `system.runs` as users read it: one row per run, its current state. The stored table
/// gets a row each time a run changes state (started, ended, marked orphaned), so a run's
/// state is always one append, never an update; the row with the highest `seq` (rows
/// without one are ends) is the current one. A view over the policy-bound scan, so the row
/// filter applies before the choice.
fn current_runs(events: Arc<dyn TableProvider>) -> DfResult<Arc<dyn TableProvider>> {
    use datafusion::functions::expr_fn::coalesce;
    use datafusion::functions_window::expr_fn::row_number;
    use datafusion::logical_expr::{ExprFunctionExt, LogicalPlanBuilder, col, lit};
    let columns: Vec<_> = events
        .schema()
        .fields()
        .iter()
        .map(|f| col(f.name().as_str()))
        .collect();
    let current = row_number()
        .partition_by(vec![col("run_id")])
        .order_by(vec![
            coalesce(vec![col("seq"), lit(1i64)]).sort(false, false),
            col("ended_at").sort(false, false),
        ])
        .build()?
        .alias("current_");
    let plan = LogicalPlanBuilder::scan(
        "runs",
        datafusion::datasource::provider_as_source(events),
        None,
    )?
    .window(vec![current])?
    .filter(col("current_").eq(lit(1u64)))?
    .project(columns)?
    .build()?;
    Ok(Arc::new(datafusion::catalog::view::ViewTable::new(
        plan, None,
    )))
}

/// What a guarded provider reads.
#[derive(Debug, Clone, Copy)]
enum Scan {
    /// A version of a Delta table: a cluster executor can rebuild its scan.
    Delta,
    /// The change feed: kept opaque ([`PolicyTable::opaque`]) and on this node.
    Changes,
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
        scan: Scan,
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
        Ok(Arc::new(match scan {
            Scan::Delta => table.shippable(),
            Scan::Changes => table.opaque(),
        }))
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
        let first = match self.cx.catalog.load_version(&t, start).await {
            // Version `start` ≤ the latest existed: its commit was removed with the log
            // past the table's retention (VACUUM).
            Err(Error::NotFound(_)) => {
                return Err(Error::Conflict(format!(
                    "the changes of {t} from version {start} are no longer available: its log was cleaned up past delta.logRetentionDuration"
                ))
                .into());
            }
            other => other?,
        };
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
        self.guarded(t, end, table_id, inner, Scan::Changes, None)
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
        self.guarded(t, version, table_id, inner, Scan::Delta, statistics)
            .map(Some)
    }

    fn table_exist(&self, name: &str) -> bool {
        TableRef::new(self.layer.as_str(), name)
            .map(|t| self.visible(&t) && self.cx.catalog.known_tables().contains(&t))
            .unwrap_or(false)
    }
}
