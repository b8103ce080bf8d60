//! Per-principal DataFusion sessions.
//!
//! A template `SessionState` (functions, config, runtime) is built once; each request clones
//! it and installs a catalog list holding only the principal's [`SecureCatalog`] plus the
//! [`PolicyGuard`] analyzer rule bound to that principal. No table factories, no table
//! functions, no URL tables: the only way to reach data is the secure catalog.
//!
//! Work of a pipeline run (inside a `storage::commit_info::RunContext`) gets a session on
//! the pipeline runtime instead: the same functions and config, the memory pool of
//! `[scheduler] pipeline_memory_bytes`.

use std::collections::HashMap;
use std::sync::Arc;

use datafusion::catalog::{CatalogProviderList, MemoryCatalogProviderList};
use datafusion::execution::SessionStateBuilder;
use datafusion::execution::context::SessionState;
use datafusion::execution::runtime_env::RuntimeEnv;
use datafusion::prelude::SessionConfig;

use crate::config::QueryConfig;
use crate::security::policy::{PolicyGuard, SecureCatalog, SystemViews};
use crate::security::{AccessControl, Principal};
use crate::storage::commit_info::RunContext;
use crate::storage::{CATALOG_NAME, Catalog};

#[derive(Debug)]
pub(crate) struct SessionFactory {
    template: Arc<SessionState>,
    /// The template on the pipeline runtime.
    pipeline_template: Arc<SessionState>,
    runtime: Arc<RuntimeEnv>,
    catalog: Arc<Catalog>,
    /// The computed `system` tables (`system.lineage_edges`).
    pub(crate) views: Arc<SystemViews>,
}

/// Strata's functions, config and physical optimizer rules on `runtime`: the template of
/// every session, and the state cluster executors rebuild table scans in.
pub(crate) fn template_state(
    cfg: &QueryConfig,
    runtime: Arc<RuntimeEnv>,
) -> datafusion::error::Result<SessionState> {
    let partitions = if cfg.target_partitions == 0 {
        std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(2)
    } else {
        cfg.target_partitions
    };
    let config = SessionConfig::new()
        .with_default_catalog_and_schema(CATALOG_NAME, cfg.default_layer.to_ascii_lowercase())
        .with_create_default_catalog_and_schema(false)
        // Served by the secure catalog instead, with descriptions
        // (`security::policy::information`).
        .with_information_schema(false)
        .with_target_partitions(partitions)
        .with_batch_size(cfg.batch_size);
    let mut template = SessionStateBuilder::new()
        .with_config(config)
        .with_runtime_env(runtime)
        .with_default_features()
        .with_table_factories(HashMap::new())
        .with_table_functions(HashMap::new())
        .with_physical_optimizer_rule(Arc::new(super::in_strings::FastStringInList))
        .build();
    super::bounded::install(&mut template, cfg.max_function_output_bytes)?;
    Ok(template)
}

impl SessionFactory {
    pub(crate) fn new(
        cfg: &QueryConfig,
        runtime: Arc<RuntimeEnv>,
        pipeline_runtime: Arc<RuntimeEnv>,
        catalog: Arc<Catalog>,
    ) -> datafusion::error::Result<SessionFactory> {
        let template = template_state(cfg, Arc::clone(&runtime))?;
        let pipeline_template = SessionStateBuilder::new_from_existing(template.clone())
            .with_runtime_env(pipeline_runtime)
            .build();
        Ok(SessionFactory {
            template: Arc::new(template),
            pipeline_template: Arc::new(pipeline_template),
            runtime,
            catalog,
            views: Arc::default(),
        })
    }

    /// The template state (functions, config): for planning policy expressions.
    pub(crate) fn template(&self) -> &SessionState {
        &self.template
    }

    /// A session that can see exactly what `principal` may see under `access`.
    pub(crate) fn session(
        &self,
        principal: &Arc<Principal>,
        access: &Arc<AccessControl>,
    ) -> SessionState {
        self.build(principal, access, true)
    }

    /// The session delta-rs runs a MERGE/UPDATE/DELETE in. Its own scan of the target is not
    /// a `PolicyTable` (delta-rs rewrites files), so the guard rule is left out; the target is
    /// protected by the writer's row filter folded into the operation
    /// (`pipelines::merge`), and the source plan is guarded by the caller before it is
    /// handed over. Tables named in expressions still resolve only through the secure catalog.
    pub(crate) fn dml_session(
        &self,
        principal: &Arc<Principal>,
        access: &Arc<AccessControl>,
    ) -> SessionState {
        self.build(principal, access, false)
    }

    fn build(
        &self,
        principal: &Arc<Principal>,
        access: &Arc<AccessControl>,
        guard: bool,
    ) -> SessionState {
        let template = if RunContext::current().is_some() {
            &self.pipeline_template
        } else {
            &self.template
        };
        let catalogs = MemoryCatalogProviderList::new();
        catalogs.register_catalog(
            CATALOG_NAME.to_string(),
            Arc::new(SecureCatalog::new(
                Arc::clone(principal),
                Arc::clone(access),
                Arc::clone(&self.catalog),
                Arc::clone(&self.runtime),
                Arc::clone(template),
                Arc::clone(&self.views),
            )),
        );
        let catalogs = Arc::new(catalogs) as Arc<dyn CatalogProviderList>;
        let mut state = if guard {
            // A clone of the template, not `SessionStateBuilder::build`, which re-registers
            // every function: that was 12% of the server's CPU per cache hit.
            let mut state = template.as_ref().clone();
            state.register_catalog_list(catalogs);
            state.add_analyzer_rule(Arc::new(PolicyGuard::new(Arc::clone(principal))));
            state
        } else {
            // delta-rs's UPDATE/DELETE plans carry its own extension nodes (metrics, write
            // validation); its planner knows how to execute them.
            SessionStateBuilder::new_from_existing(template.as_ref().clone())
                .with_catalog_list(catalogs)
                .with_query_planner(deltalake::delta_datafusion::planner::DeltaPlanner::new())
                .build()
        };
        // now(), current_date() … are fixed per statement from this instant.
        state.mark_start_execution();
        state
    }
}
