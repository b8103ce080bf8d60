//! The engine: the one place both front ends call to run SQL and table operations.
//!
//! It knows no HTTP or gRPC types. Every read plans in a per-principal session
//! ([`session::SessionFactory`]); every write checks privileges through
//! [`crate::security::AccessControl`] and commits through [`crate::pipelines::commit`].

mod bounded;
pub mod dml;
pub mod limits;
pub mod maintenance;
pub mod memory;
pub mod policies;
pub mod session;
pub mod sql;
pub mod tables;

use std::sync::Arc;

use arrow::array::{ArrayRef, Int64Array, RecordBatch, StringArray};
use arrow::datatypes::{DataType, Field, Schema, SchemaRef};
use datafusion::common::tree_node::TreeNodeRecursion;
use datafusion::common::{Column, ScalarValue};
use datafusion::datasource::source_as_provider;
use datafusion::execution::SendableRecordBatchStream;
use datafusion::execution::context::SessionState;
use datafusion::execution::memory_pool::FairSpillPool;
use datafusion::execution::runtime_env::{RuntimeEnv, RuntimeEnvBuilder};
use datafusion::logical_expr::{Expr, LogicalPlan, LogicalPlanBuilder, cast, lit};
use datafusion::physical_plan::stream::RecordBatchStreamAdapter;
use datafusion::prelude::{DataFrame, SQLOptions};
use datafusion::sql::parser::Statement as DfStatement;
use datafusion::sql::sqlparser::ast;

use crate::cache::ResultCache;
use crate::config::Config;
use crate::error::{Error, Result};
use crate::pipelines::commit::{self, WriteMode};
use crate::pipelines::maintenance::OptimizeSpec;
use crate::pipelines::merge::DmlOutcome;
use crate::security::policy::PolicyTable;
use crate::security::policy::store::PolicyStore;
use crate::security::{AccessControl, Principal, Privilege};
use crate::storage::catalog::TableSpec;
use crate::storage::{Catalog, TableRef};

pub use sql::Statement;

/// A planned but not executed statement.
#[derive(Debug, Clone)]
pub struct Prepared {
    /// Statement kind (`SELECT`, `INSERT`, …).
    pub kind: &'static str,
    /// Result schema of a query; `None` for commands (their result is one summary row).
    pub schema: Option<SchemaRef>,
    /// Types DataFusion inferred for `$1…$n` (`None` where it could not).
    pub parameters: Vec<Option<DataType>>,
    /// For a cacheable query without parameters: where its result is (or will be) cached,
    /// so a later fetch can replay it without planning again ([`Engine::fetch_cached`]).
    pub result_key: Option<ResultKey>,
    /// For each result column that is a column of a table as it is: that table (for client
    /// column metadata); `None` for computed columns.
    pub origins: Vec<Option<TableRef>>,
}

/// The result cache key of a planned query and the policy version it was computed under.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ResultKey {
    pub key: crate::cache::CacheKey,
    pub policy_version: u64,
}

impl Prepared {
    pub fn is_query(&self) -> bool {
        self.schema.is_some()
    }
}

/// Schema of the one-row result of commands.
pub fn command_schema() -> SchemaRef {
    Arc::new(Schema::new(vec![
        Field::new("operation", DataType::Utf8, false),
        Field::new("table", DataType::Utf8, false),
        Field::new("rows_affected", DataType::Int64, true),
        Field::new("version", DataType::Int64, true),
        Field::new("rows_inserted", DataType::Int64, true),
        Field::new("rows_updated", DataType::Int64, true),
        Field::new("rows_deleted", DataType::Int64, true),
    ]))
}

/// What a statement produced: a stream of batches (for commands, one summary row).
pub struct QueryOutput {
    /// Statement kind (`SELECT`, `INSERT`, …).
    pub kind: &'static str,
    pub schema: SchemaRef,
    pub stream: SendableRecordBatchStream,
    /// Tables the statement read or wrote (for logs and the cache).
    pub tables: Vec<TableRef>,
    /// Entity tag of a cacheable result (REST `ETag`).
    pub etag: Option<String>,
    /// Whether the result came from the cache.
    pub cache_hit: bool,
}

/// A query planned for a principal, kept briefly (keyed by [`statement_key`]) so the
/// execution that follows — Flight's DoGet after GetFlightInfo, a repeated REST query —
/// does not plan it again: at TPC-DS sizes planning was 10–20 ms of a 30–50 ms query. It is
/// used only while its policy version is in force and its tables are at the versions it
/// read, and runs in a session of the principal it was planned for (whose fingerprint the
/// key holds), so the policy guard sees the scans bound to that session's principal.
#[derive(Debug)]
struct PlannedQuery {
    principal: Arc<Principal>,
    plan: LogicalPlan,
    policy_version: u64,
    versions: Vec<crate::cache::key::TableVersion>,
}

/// Who asks for a cacheable query, and how (see [`Engine::run_cached`]).
#[derive(Debug, Clone, Copy)]
struct Cached<'a> {
    principal: &'a Arc<Principal>,
    access: &'a Arc<AccessControl>,
    if_none_match: Option<&'a str>,
    /// Remember the result key under this statement key ([`statement_key`]).
    statement_key: Option<[u8; 32]>,
}

/// A query's text and parameters as one principal sent them: the key under which the result
/// key of its last run is remembered, so the same request again can replay a cached result
/// without planning. Length-prefixed fields; the principal's fingerprint makes it theirs.
fn statement_key(principal: &Principal, sql: &str, params: &[ScalarValue]) -> [u8; 32] {
    use sha2::{Digest, Sha256};
    let mut h = Sha256::new();
    let mut field = |b: &[u8]| {
        h.update((b.len() as u64).to_le_bytes());
        h.update(b);
    };
    field(b"strata-statement-key-v1");
    field(&crate::security::ticket::fingerprint(principal));
    field(sql.as_bytes());
    for p in params {
        // Debug shows the type and the value (strings quoted and escaped).
        field(format!("{p:?}").as_bytes());
    }
    h.finalize().into()
}

/// The outcome of a conditional execution.
#[derive(Debug)]
pub enum Executed {
    Output(QueryOutput),
    /// The caller's `If-None-Match` matches the result's entity tag: nothing was executed.
    NotModified(String),
}

impl std::fmt::Debug for QueryOutput {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("QueryOutput")
            .field("kind", &self.kind)
            .field("schema", &self.schema)
            .field("tables", &self.tables)
            .finish()
    }
}

#[derive(Debug)]
pub struct Engine {
    catalog: Arc<Catalog>,
    policies: Arc<PolicyStore>,
    sessions: session::SessionFactory,
    cache: Option<Arc<ResultCache>>,
    default_layer: String,
    max_sql_bytes: usize,
    allow_short_vacuum: bool,
    admission: limits::Admission,
    runtime: Arc<RuntimeEnv>,
    /// The result key of each (principal, query text, parameters) last run, so the same
    /// request replays its cached result without planning ([`statement_key`]).
    statement_keys: moka::sync::Cache<[u8; 32], ResultKey>,
    /// Plans kept for the execution that follows ([`PlannedQuery`]).
    plans: moka::sync::Cache<[u8; 32], Arc<PlannedQuery>>,
}

impl Engine {
    pub fn new(cfg: &Config, catalog: Arc<Catalog>, policies: Arc<PolicyStore>) -> Result<Engine> {
        let spill = cfg.server.data_dir.join("spill");
        std::fs::create_dir_all(&spill)
            .map_err(|e| Error::Config(format!("spill dir {}: {e}", spill.display())))?;
        let runtime: Arc<RuntimeEnv> = RuntimeEnvBuilder::new()
            .with_memory_pool(Arc::new(FairSpillPool::new(cfg.query.memory_limit_bytes)))
            .with_temp_file_path(&spill)
            .build_arc()
            .map_err(|e| Error::Config(format!("query runtime: {e}")))?;
        let sessions =
            session::SessionFactory::new(&cfg.query, Arc::clone(&runtime), Arc::clone(&catalog))?;
        Ok(Engine {
            catalog,
            policies,
            sessions,
            cache: ResultCache::new(&cfg.cache),
            default_layer: cfg.query.default_layer.to_ascii_lowercase(),
            max_sql_bytes: cfg.query.max_sql_bytes,
            allow_short_vacuum: cfg.storage.allow_short_vacuum_retention,
            admission: limits::Admission::new(&cfg.query, cfg.server.memory_budget_bytes),
            runtime,
            statement_keys: moka::sync::Cache::builder()
                .max_capacity(100_000)
                .time_to_live(std::time::Duration::from_secs(cfg.cache.ttl_secs.max(1)))
                .build(),
            plans: moka::sync::Cache::builder()
                .max_capacity(256)
                .time_to_live(std::time::Duration::from_secs(60))
                .build(),
        })
    }

    pub fn catalog(&self) -> &Arc<Catalog> {
        &self.catalog
    }

    /// The policies in force now (one cheap freshness check against the store).
    pub async fn access(&self) -> Result<Arc<AccessControl>> {
        self.policies.current().await
    }

    pub fn policies(&self) -> &Arc<PolicyStore> {
        &self.policies
    }

    /// A session state for planning policy expressions outside a query.
    pub fn planning_state(&self) -> &datafusion::execution::context::SessionState {
        self.sessions.template()
    }

    /// Plans one SQL statement without running it: the result schema of a query and the
    /// types of its parameters. Privileges are checked as for execution.
    pub async fn prepare(&self, principal: &Arc<Principal>, sql: &str) -> Result<Prepared> {
        self.prepare_with(principal, sql, false, None).await
    }

    /// [`Engine::prepare`] for a fetch that follows (Flight GetFlightInfo → DoGet): also
    /// the result key of a cacheable query without parameters. With `params` (the first
    /// row bound to a prepared statement) the schema is the bound plan's: a parameter in the
    /// select list has the type of its value, not NULL.
    pub async fn prepare_fetch(
        &self,
        principal: &Arc<Principal>,
        sql: &str,
        params: Option<Vec<ScalarValue>>,
    ) -> Result<Prepared> {
        self.prepare_with(principal, sql, true, params).await
    }

    async fn prepare_with(
        &self,
        principal: &Arc<Principal>,
        sql: &str,
        want_key: bool,
        params: Option<Vec<ScalarValue>>,
    ) -> Result<Prepared> {
        self.check_sql_size(sql)?;
        let statement = sql::parse(sql, &self.default_layer)?;
        let kind = statement.kind();
        // A fetch of a query planned moments ago (a dashboard's refresh, the same ticket
        // asked for again): its kept plan answers without planning.
        if want_key && matches!(statement, Statement::Query(_)) {
            let values = params.clone().unwrap_or_default();
            let access = self.access().await?;
            let key = statement_key(principal, sql, &values);
            if let Some(planned) = self.planned(Some(key), &access).await {
                let schema = Arc::new(planned.plan.schema().as_arrow().clone());
                let result_key = match (&self.cache, values.is_empty()) {
                    (Some(_), true) => {
                        cache_key(&planned.plan, &access, principal)?.map(|(key, _)| ResultKey {
                            key,
                            policy_version: access.version(),
                        })
                    }
                    _ => None,
                };
                return Ok(Prepared {
                    kind,
                    schema: Some(schema),
                    parameters: Vec::new(),
                    result_key,
                    origins: column_origins(&planned.plan),
                });
            }
        }
        match statement {
            Statement::Query(ast) | Statement::Explain { statement: ast, .. } => {
                let access = self.access().await?;
                let state = self.sessions.session(principal, &access);
                let plan = self.plan_unbound(&state, *ast).await?;
                let types = plan.get_parameter_types()?;
                let count = types
                    .keys()
                    .filter_map(|id| id.strip_prefix('$').and_then(|n| n.parse::<usize>().ok()))
                    .max()
                    .unwrap_or(0);
                let parameters = (1..=count)
                    .map(|i| types.get(&format!("${i}")).cloned().flatten())
                    .collect();
                let mut origins = Vec::new();
                let (schema, result_key) = if kind == "EXPLAIN" {
                    // EXPLAIN's output schema is fixed: plan_type, plan.
                    let schema = Arc::new(Schema::new(vec![
                        Field::new("plan_type", DataType::Utf8, false),
                        Field::new("plan", DataType::Utf8, false),
                    ]));
                    (schema, None)
                } else {
                    let values = params.unwrap_or_default();
                    let bound = match values.is_empty() {
                        false => Some(bind_params(plan.clone(), values.clone())?),
                        true => None,
                    };
                    let planned = bound.as_ref().unwrap_or(&plan);
                    // The fetch that follows (DoGet) runs exactly this plan: keep it.
                    if want_key && values.len() == count {
                        self.remember_plan(
                            statement_key(principal, sql, &values),
                            principal,
                            planned,
                            &access,
                        )?;
                    }
                    origins = column_origins(planned);
                    let schema = Arc::new(planned.schema().as_arrow().clone());
                    // The key of exactly the plan an execution without parameters runs.
                    let result_key = match (&self.cache, want_key && types.is_empty()) {
                        (Some(_), true) => {
                            cache_key(&bind_params(plan, Vec::new())?, &access, principal)?.map(
                                |(key, _)| ResultKey {
                                    key,
                                    policy_version: access.version(),
                                },
                            )
                        }
                        _ => None,
                    };
                    (schema, result_key)
                };
                Ok(Prepared {
                    kind,
                    schema: Some(schema),
                    parameters,
                    result_key,
                    origins,
                })
            }
            _ => Ok(Prepared {
                kind,
                schema: None,
                parameters: Vec::new(),
                result_key: None,
                origins: Vec::new(),
            }),
        }
    }

    fn check_sql_size(&self, sql: &str) -> Result<()> {
        if sql.len() > self.max_sql_bytes {
            return Err(Error::PayloadTooLarge(format!(
                "SQL text is {} bytes; the limit is {}",
                sql.len(),
                self.max_sql_bytes
            )));
        }
        Ok(())
    }

    /// Runs one SQL statement for `principal`, with positional parameters `$1…$n`.
    pub async fn execute(
        &self,
        principal: &Arc<Principal>,
        sql: &str,
        params: Vec<ScalarValue>,
    ) -> Result<QueryOutput> {
        match self
            .execute_conditional(principal, sql, params, None)
            .await?
        {
            Executed::Output(o) => Ok(o),
            Executed::NotModified(_) => Err(Error::internal("not modified without a validator")),
        }
    }

    /// [`Engine::execute`], answering `NotModified` without executing when `if_none_match`
    /// holds the result's entity tag.
    pub async fn execute_conditional(
        &self,
        principal: &Arc<Principal>,
        sql: &str,
        params: Vec<ScalarValue>,
        if_none_match: Option<&str>,
    ) -> Result<Executed> {
        self.check_sql_size(sql)?;
        // A query this principal ran before with these parameters: replay its cached result
        // without parsing or planning while its policies and tables are unchanged (as Flight
        // tickets do), else parse and plan as usual below. Only queries are remembered.
        let key = statement_key(principal, sql, &params);
        if let Some(remembered) = self.statement_keys.get(&key)
            && let Some(executed) = self
                .replay_cached(principal, &remembered, if_none_match)
                .await?
        {
            return Ok(executed);
        }
        let statement = sql::parse(sql, &self.default_layer)?;
        let statement_key = matches!(statement, Statement::Query(_)).then_some(key);
        let slot = self.admission.admit().await?;
        // Reads stop at the deadline; writes are not cut off mid-commit (their object
        // store calls are bounded by the storage retry limits instead).
        let deadline = match statement {
            Statement::Query(_) | Statement::Explain { .. } => self
                .admission
                .timeout
                .map(|t| tokio::time::Instant::now() + t),
            _ => None,
        };
        let kind = statement.kind();
        let started = std::time::Instant::now();
        // One freshness check of the policies per statement, shared by the run and the audit.
        let access = match self.access().await {
            Ok(access) => access,
            Err(e) => {
                audit(
                    principal,
                    None,
                    kind,
                    (Vec::new(), false, e.kind().code()),
                    started,
                );
                return Err(e);
            }
        };
        let run = self.execute_admitted(
            principal,
            &access,
            statement,
            params,
            if_none_match,
            statement_key,
        );
        let executed = match deadline {
            // A read also stops when the heap goes over the memory budget (engine::memory).
            Some(d) => {
                let over_budget = slot.over_budget();
                tokio::select! {
                    r = tokio::time::timeout_at(d, run) => {
                        r.unwrap_or_else(|_| Err(self.admission.timeout_error()))
                    }
                    () = over_budget => Err(self.admission.over_budget_error()),
                }
            }
            None => run.await,
        };
        let summary = match &executed {
            Ok(Executed::Output(o)) => (o.tables.clone(), o.cache_hit, "ok"),
            Ok(Executed::NotModified(_)) => (Vec::new(), true, "not_modified"),
            Err(e) => (Vec::new(), false, e.kind().code()),
        };
        audit(principal, Some(&access), kind, summary, started);
        Ok(match executed? {
            Executed::Output(o) => {
                Executed::Output(self.limited(o, deadline, slot, principal, started))
            }
            not_modified => not_modified,
        })
    }

    /// Whether every table is still at the version (and Delta table id) given: one log
    /// listing per table ([`Catalog::is_current`]). Any error counts as not (planning then
    /// reports it). A time-travel read is never latest once its table moved on.
    async fn is_latest(&self, versions: &[crate::cache::key::TableVersion]) -> bool {
        let checks = versions
            .iter()
            .map(|v| self.catalog.is_current(&v.table, v.version, &v.id));
        futures::future::join_all(checks)
            .await
            .into_iter()
            .all(|current| matches!(current, Ok(true)))
    }

    /// A result stream under the statement's limits: deadline, size cap, its slot held
    /// until the stream ends; logged when it does.
    fn limited(
        &self,
        mut o: QueryOutput,
        deadline: Option<tokio::time::Instant>,
        slot: limits::Slot,
        principal: &Principal,
        started: std::time::Instant,
    ) -> QueryOutput {
        o.stream = Box::pin(limits::Limited::new(
            o.stream,
            deadline,
            &self.admission,
            slot,
            limits::Finished {
                principal: principal.subject.clone(),
                statement: o.kind,
                cache_hit: o.cache_hit,
                started,
            },
        ));
        o
    }

    /// Replays the cached result under `key` without planning, if it is still cached, the
    /// policy version it was computed under is still in force and every table it read is
    /// still at the version it read; `None` otherwise (the caller then plans and runs the
    /// statement, which reads the latest versions).
    pub async fn fetch_cached(
        &self,
        principal: &Arc<Principal>,
        key: &ResultKey,
    ) -> Result<Option<QueryOutput>> {
        Ok(match self.replay_cached(principal, key, None).await? {
            Some(Executed::Output(o)) => Some(o),
            _ => None,
        })
    }

    /// [`Engine::fetch_cached`], answering `NotModified` when `if_none_match` holds the
    /// result's entity tag (checked only once the result is known to be current).
    async fn replay_cached(
        &self,
        principal: &Arc<Principal>,
        key: &ResultKey,
        if_none_match: Option<&str>,
    ) -> Result<Option<Executed>> {
        let Some((cache, hit)) = self
            .cache
            .as_ref()
            .and_then(|c| Some((c, c.peek(&key.key)?)))
        else {
            return Ok(None);
        };
        let started = std::time::Instant::now();
        let slot = self.admission.admit().await?;
        let access = self.access().await?;
        if access.version() != key.policy_version || !self.is_latest(&hit.versions).await {
            return Ok(None);
        }
        let etag = key.key.etag();
        if let Some(header) = if_none_match
            && header.split(',').any(|t| t.trim() == etag)
        {
            cache
                .stats()
                .not_modified
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            return Ok(Some(Executed::NotModified(etag)));
        }
        cache.count_hit();
        let output = replay(&hit, "SELECT", etag);
        audit(
            principal,
            Some(&access),
            output.kind,
            (output.tables.clone(), true, "ok"),
            started,
        );
        let deadline = self
            .admission
            .timeout
            .map(|t| tokio::time::Instant::now() + t);
        Ok(Some(Executed::Output(
            self.limited(output, deadline, slot, principal, started),
        )))
    }

    async fn execute_admitted(
        &self,
        principal: &Arc<Principal>,
        access: &Arc<AccessControl>,
        statement: Statement,
        params: Vec<ScalarValue>,
        if_none_match: Option<&str>,
        statement_key: Option<[u8; 32]>,
    ) -> Result<Executed> {
        let kind = statement.kind();
        let access = Arc::clone(access);
        let statement = match statement {
            Statement::Query(ast) => {
                let (state, plan) = match self.planned(statement_key, &access).await {
                    Some(planned) => (
                        self.sessions.session(&planned.principal, &access),
                        planned.plan.clone(),
                    ),
                    None => {
                        let state = self.sessions.session(principal, &access);
                        let plan = self.plan_query(&state, *ast, params).await?;
                        if let Some(k) = statement_key {
                            self.remember_plan(k, principal, &plan, &access)?;
                        }
                        (state, plan)
                    }
                };
                let cached = Cached {
                    principal,
                    access: &access,
                    if_none_match,
                    statement_key,
                };
                return self.run_cached(state, plan, kind, cached).await;
            }
            other => other,
        };
        let state = self.sessions.session(principal, &access);
        self.execute_statement(statement, kind, state, access, principal, params)
            .await
            .map(Executed::Output)
    }

    /// Keeps `plan` (planned for `principal` under `access`) for the execution that follows
    /// under `key`, when every table it reads is versioned.
    fn remember_plan(
        &self,
        key: [u8; 32],
        principal: &Arc<Principal>,
        plan: &LogicalPlan,
        access: &AccessControl,
    ) -> Result<()> {
        if let Some(versions) = table_versions(plan)? {
            self.plans.insert(
                key,
                Arc::new(PlannedQuery {
                    principal: Arc::clone(principal),
                    plan: plan.clone(),
                    policy_version: access.version(),
                    versions,
                }),
            );
        }
        Ok(())
    }

    /// The plan kept under `key`, if the policies it was planned under are still in force
    /// and every table it reads is still at the version it read.
    async fn planned(
        &self,
        key: Option<[u8; 32]>,
        access: &AccessControl,
    ) -> Option<Arc<PlannedQuery>> {
        let planned = self.plans.get(&key?)?;
        (planned.policy_version == access.version() && self.is_latest(&planned.versions).await)
            .then_some(planned)
    }

    /// Everything but plain queries (which [`Engine::run_cached`] handles).
    async fn execute_statement(
        &self,
        statement: Statement,
        kind: &'static str,
        state: SessionState,
        access: Arc<AccessControl>,
        principal: &Arc<Principal>,
        params: Vec<ScalarValue>,
    ) -> Result<QueryOutput> {
        match statement {
            Statement::Query(_) => Err(Error::internal("queries run through run_cached")),
            Statement::Explain { analyze, statement } => {
                let plan = self.plan_query(&state, *statement, params).await?;
                let scanned = scanned_tables(&plan)?;
                let manages_all = scanned
                    .iter()
                    .all(|t| access.allows(principal, Privilege::Manage, t));
                if analyze && !manages_all {
                    // Runtime metrics reveal data volumes: MANAGE on everything scanned.
                    for t in &scanned {
                        access.check(principal, Privilege::Manage, t)?;
                    }
                }
                let mut state = state;
                if !manages_all {
                    // Physical plans list data files; file listings need MANAGE.
                    state.config_mut().options_mut().explain.logical_plan_only = true;
                }
                self.run(state, plan, kind).await
            }
            Statement::CreateTable {
                table,
                if_not_exists,
                columns,
                partition_by,
                description,
                properties,
            } => {
                no_params(&params, kind)?;
                let spec = TableSpec {
                    columns,
                    partition_by,
                    description,
                    properties,
                };
                let created = self
                    .create_table(principal, &table, &spec, if_not_exists)
                    .await?;
                let version = created.and_then(|info| info.version()).map(|v| v as i64);
                Ok(command_output(kind, &table, None, version))
            }
            Statement::CreateTableAs {
                table,
                if_not_exists,
                partition_by,
                description,
                properties,
                query,
            } => {
                access.check_layer(principal, Privilege::Manage, table.layer)?;
                if self.catalog.exists(&table).await? {
                    return if if_not_exists {
                        Ok(command_output(kind, &table, Some(0), None))
                    } else {
                        Err(Error::AlreadyExists(format!(
                            "table {table} already exists"
                        )))
                    };
                }
                let plan = self.plan_query(&state, *query, params).await?;
                let plan = delta_compatible(plan)?;
                let batches = DataFrame::new(state, plan.clone()).collect().await?;
                let rows: usize = batches.iter().map(RecordBatch::num_rows).sum();
                let new_schema = Arc::new(plan.schema().as_arrow().clone());
                self.check_write(
                    &access,
                    principal,
                    &table,
                    WriteMode::Append,
                    &new_schema,
                    &batches,
                )?;
                let spec = TableSpec {
                    columns: Vec::new(),
                    partition_by,
                    description,
                    properties,
                };
                let arrow_schema = Arc::new(plan.schema().as_arrow().clone());
                let version = commit::create_with_data(
                    &self.catalog,
                    &table,
                    principal,
                    &spec,
                    arrow_schema,
                    batches,
                )
                .await?;
                Ok(command_output(
                    kind,
                    &table,
                    Some(rows as i64),
                    Some(version as i64),
                ))
            }
            Statement::Insert {
                table,
                overwrite,
                columns,
                source,
            } => {
                access.check(principal, Privilege::Insert, &table)?;
                if overwrite {
                    access.check(principal, Privilege::Modify, &table)?;
                }
                let current = self.catalog.load(&table).await?;
                let target = current.snapshot()?.snapshot().arrow_schema();
                let plan = self.plan_query(&state, *source, params).await?;
                let plan = project_onto(plan, &target, &columns)?;
                let batches = DataFrame::new(state, plan).collect().await?;
                let batches = crate::ingest::enforce_schema(batches, &target)?;
                let mode = if overwrite {
                    WriteMode::Overwrite
                } else {
                    WriteMode::Append
                };
                self.check_write(&access, principal, &table, mode, &target, &batches)?;
                let outcome =
                    commit::write(&self.catalog, &table, principal, batches, mode, None, kind)
                        .await?;
                Ok(command_output(
                    kind,
                    &table,
                    Some(outcome.rows as i64),
                    Some(outcome.version as i64),
                ))
            }
            Statement::Merge {
                table,
                source,
                spec,
            } => {
                let plan = self.plan_query(&state, *source, params.clone()).await?;
                let outcome = self
                    .run_merge(
                        principal,
                        &access,
                        &table,
                        dml::MergeSource::Plan(plan),
                        &spec,
                        &params,
                    )
                    .await?;
                Ok(dml_output(kind, &table, &outcome))
            }
            Statement::Update {
                table,
                set,
                predicate,
            } => {
                let outcome = self
                    .run_update(
                        principal,
                        &access,
                        &table,
                        &set,
                        predicate.as_deref(),
                        &params,
                    )
                    .await?;
                Ok(dml_output(kind, &table, &outcome))
            }
            Statement::Scd2 {
                table,
                source,
                spec,
            } => {
                no_params(&params, kind)?;
                let outcome = self
                    .scd2(principal, &table, dml::SourceInput::Sql(source), &spec)
                    .await?;
                Ok(dml_output(kind, &table, &outcome))
            }
            Statement::Optimize {
                table,
                zorder,
                partitions,
            } => {
                no_params(&params, kind)?;
                let spec = OptimizeSpec {
                    zorder,
                    partitions,
                    target_size: None,
                };
                let o = self.optimize(principal, &table, spec).await?;
                Ok(command_output(
                    kind,
                    &table,
                    Some(o.files_removed as i64),
                    Some(o.version as i64),
                ))
            }
            Statement::Vacuum {
                table,
                retain_hours,
                dry_run,
            } => {
                no_params(&params, kind)?;
                let o = self
                    .vacuum(principal, &table, retain_hours, dry_run)
                    .await?;
                Ok(command_output(
                    kind,
                    &table,
                    Some(o.files.len() as i64),
                    None,
                ))
            }
            Statement::Restore { table, to } => {
                no_params(&params, kind)?;
                let o = self.restore(principal, &table, to).await?;
                Ok(command_output(
                    kind,
                    &table,
                    Some(o.files_restored as i64),
                    Some(o.version as i64),
                ))
            }
            Statement::History { table, limit } => {
                no_params(&params, kind)?;
                let entries = self
                    .history(principal, &table, limit.unwrap_or(100))
                    .await?;
                history_output(kind, &table, &entries)
            }
            Statement::AlterTable { table, change } => {
                no_params(&params, kind)?;
                let info = self.alter_table(principal, &table, &change).await?;
                Ok(command_output(
                    kind,
                    &table,
                    None,
                    info.version().map(|v| v as i64),
                ))
            }
            Statement::Delete { table, predicate } => {
                let outcome = self
                    .run_delete(principal, &access, &table, predicate.as_deref(), &params)
                    .await?;
                Ok(dml_output(kind, &table, &outcome))
            }
            Statement::DropTable { tables, if_exists } => {
                no_params(&params, kind)?;
                for t in &tables {
                    self.drop_table(principal, t, if_exists).await?;
                }
                let first = tables
                    .first()
                    .cloned()
                    .ok_or_else(|| Error::invalid("DROP TABLE needs a table"))?;
                Ok(command_output(kind, &first, None, None))
            }
        }
    }

    /// Plans a query in `state`, refuses anything but a read, binds parameters.
    async fn plan_query(
        &self,
        state: &SessionState,
        statement: ast::Statement,
        params: Vec<ScalarValue>,
    ) -> Result<LogicalPlan> {
        let plan = self.plan_unbound(state, statement).await?;
        bind_params(plan, params)
    }

    async fn plan_unbound(
        &self,
        state: &SessionState,
        statement: ast::Statement,
    ) -> Result<LogicalPlan> {
        let plan = state
            .statement_to_plan(DfStatement::Statement(Box::new(statement)))
            .await?;
        SQLOptions::new()
            .with_allow_ddl(false)
            .with_allow_dml(false)
            .with_allow_statements(false)
            .verify_plan(&plan)?;
        Ok(plan)
    }

    async fn run(
        &self,
        state: SessionState,
        plan: LogicalPlan,
        kind: &'static str,
    ) -> Result<QueryOutput> {
        let tables = scanned_tables(&plan)?;
        let df = DataFrame::new(state, plan);
        let schema = Arc::new(df.schema().as_arrow().clone());
        let context = Arc::new(df.task_ctx());
        let physical = announced_types(df.create_physical_plan().await?, &schema)?;
        let stream = datafusion::physical_plan::execute_stream(physical, context)?;
        Ok(QueryOutput {
            kind,
            schema,
            stream,
            tables,
            etag: None,
            cache_hit: false,
        })
    }

    /// Runs a query through the result cache (see [`crate::cache`]).
    async fn run_cached(
        &self,
        state: SessionState,
        plan: LogicalPlan,
        kind: &'static str,
        cached: Cached<'_>,
    ) -> Result<Executed> {
        let Cached {
            principal,
            access,
            if_none_match,
            statement_key,
        } = cached;
        let Some(cache) = &self.cache else {
            return self.run(state, plan, kind).await.map(Executed::Output);
        };
        let uncacheable = || {
            cache
                .stats()
                .uncacheable
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        };
        let Some((key, versions)) = cache_key(&plan, access, principal)? else {
            uncacheable();
            return self.run(state, plan, kind).await.map(Executed::Output);
        };
        if let Some(k) = statement_key {
            self.statement_keys.insert(
                k,
                ResultKey {
                    key,
                    policy_version: access.version(),
                },
            );
        }
        let etag = key.etag();
        if let Some(header) = if_none_match
            && header.split(',').any(|t| t.trim() == etag)
        {
            cache
                .stats()
                .not_modified
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            return Ok(Executed::NotModified(etag));
        }
        if let Some(hit) = cache.get(&key) {
            return Ok(Executed::Output(replay(&hit, kind, etag)));
        }
        let mut output = self.run(state, plan, kind).await?;
        output.stream = Box::pin(crate::cache::tee::Tee::new(
            output.stream,
            Arc::clone(cache),
            key,
            versions,
        ));
        output.etag = Some(etag);
        Ok(Executed::Output(output))
    }

    /// Cache metrics in Prometheus text (nothing when the cache is disabled).
    /// The engine's metrics (process registry, memory pool, cache) in Prometheus text.
    pub fn render_metrics(&self, out: &mut String) {
        use std::fmt::Write as _;
        crate::telemetry::metrics().render(out);
        let pool = &self.runtime.memory_pool;
        let limit = match pool.memory_limit() {
            datafusion::execution::memory_pool::MemoryLimit::Finite(n) => n as f64,
            _ => f64::INFINITY,
        };
        let _ = writeln!(
            out,
            "# HELP strata_memory_pool_reserved_bytes Query memory reserved from the pool\n\
             # TYPE strata_memory_pool_reserved_bytes gauge\n\
             strata_memory_pool_reserved_bytes {}\n\
             # HELP strata_memory_pool_limit_bytes Query memory pool size (query.memory_limit_bytes)\n\
             # TYPE strata_memory_pool_limit_bytes gauge\n\
             strata_memory_pool_limit_bytes {limit}",
            pool.reserved()
        );
        if let Some(cache) = &self.cache {
            cache.render_metrics(out);
        }
    }

    /// (entries, bytes) of the result cache.
    pub fn cache_usage(&self) -> Option<(u64, u64)> {
        self.cache.as_ref().map(|c| c.usage())
    }
}

fn no_params(params: &[ScalarValue], kind: &str) -> Result<()> {
    if params.is_empty() {
        Ok(())
    } else {
        Err(Error::invalid(format!("{kind} takes no parameters")))
    }
}

/// Binds `$1…$n`. Each value is cast to the type DataFusion inferred for its placeholder, so
/// `WHERE id = $1` with a JSON number works for an INT column. Indexing is numeric: `$10`
/// is the tenth value, never the second.
fn bind_params(plan: LogicalPlan, params: Vec<ScalarValue>) -> Result<LogicalPlan> {
    let types = plan.get_parameter_types()?;
    let mut max_index = 0usize;
    for id in types.keys() {
        let n = id
            .strip_prefix('$')
            .and_then(|n| n.parse::<usize>().ok())
            .ok_or_else(|| {
                Error::invalid(format!(
                    "named parameter {id} is not supported; use $1, $2, …"
                ))
            })?;
        max_index = max_index.max(n);
    }
    if max_index != params.len() {
        return Err(Error::invalid(format!(
            "the statement uses {max_index} parameter(s) but {} value(s) were given",
            params.len()
        )));
    }
    if params.is_empty() {
        return Ok(plan);
    }
    let mut bound = Vec::with_capacity(params.len());
    for (i, value) in params.into_iter().enumerate() {
        let id = format!("${}", i + 1);
        let value = match types.get(&id) {
            Some(Some(dt)) if value.data_type() != *dt && !value.is_null() => {
                value.cast_to(dt).map_err(|e| {
                    Error::invalid(format!("parameter {id}: cannot use {value} as {dt}: {e}"))
                })?
            }
            Some(Some(dt)) if value.is_null() => ScalarValue::try_from(dt)?,
            _ => value,
        };
        bound.push(value);
    }
    Ok(plan.with_param_values(bound)?)
}

/// The result cache key of `plan` for `principal` under `access`, with the tables it reads;
/// `None` when the result must not be cached: it reads something unversioned
/// (`information_schema`) or calls a non-immutable function.
fn cache_key(
    plan: &LogicalPlan,
    access: &AccessControl,
    principal: &Principal,
) -> Result<Option<(crate::cache::CacheKey, Vec<crate::cache::key::TableVersion>)>> {
    let Some(versions) = table_versions(plan)? else {
        return Ok(None);
    };
    if !crate::cache::key::is_deterministic(plan) {
        return Ok(None);
    }
    let key = crate::cache::key::compute(
        plan,
        &versions,
        access.version(),
        &crate::security::ticket::fingerprint(principal),
    );
    Ok(Some((key, versions)))
}

/// A cached result as a query's output.
fn replay(hit: &crate::cache::CachedResult, kind: &'static str, etag: String) -> QueryOutput {
    let batches: Vec<datafusion::error::Result<RecordBatch>> =
        hit.batches.iter().cloned().map(Ok).collect();
    let stream =
        RecordBatchStreamAdapter::new(Arc::clone(&hit.schema), futures::stream::iter(batches));
    QueryOutput {
        kind,
        schema: Arc::clone(&hit.schema),
        stream: Box::pin(stream),
        tables: hit.versions.iter().map(|v| v.table.clone()).collect(),
        etag: Some(etag),
        cache_hit: true,
    }
}

/// One structured `strata::audit` event per statement: who, what kind, which tables, which of
/// them had a row filter or mask applied, cache hit, outcome, time to result.
fn audit(
    principal: &Principal,
    access: Option<&AccessControl>,
    kind: &str,
    (tables, cache_hit, outcome): (Vec<TableRef>, bool, &str),
    started: std::time::Instant,
) {
    let policies: Vec<String> = match access {
        Some(access) if !access.bypasses_policies(principal) => tables
            .iter()
            .filter(|t| access.table_policy(t).is_some())
            .map(TableRef::to_string)
            .collect(),
        _ => Vec::new(),
    };
    let tables: Vec<String> = tables.iter().map(TableRef::to_string).collect();
    tracing::info!(
        target: "strata::audit",
        principal = %principal.subject,
        statement = kind,
        tables = ?tables,
        policies_applied = ?policies,
        cache_hit,
        outcome,
        elapsed_ms = started.elapsed().as_millis() as u64,
        "statement"
    );
}

/// The table each output column of `plan` comes from unchanged (its qualifier names a
/// table: `gold.orders`, `strata.gold.orders`), else `None`.
fn column_origins(plan: &LogicalPlan) -> Vec<Option<TableRef>> {
    plan.schema()
        .iter()
        .map(|(qualifier, _)| {
            let q = qualifier?;
            match (q.schema(), q.table()) {
                (Some(layer), table) => TableRef::new(layer, table).ok(),
                _ => None,
            }
        })
        .collect()
}

/// `plan`, producing exactly the types of `announced` (the logical plan's schema, which
/// GetFlightInfo, prepared statements and REST announce). DataFusion's physical plan can
/// disagree: with a `COUNT(DISTINCT …)` beside it, `SUM` of a DECIMAL(7,2) is planned as
/// DECIMAL(17,2) and computed in two phases as DECIMAL(27,2), which Flight clients reject
/// ("column types must match schema types"). The result is cast to what was announced (an
/// overflow is an error, never a wrong value).
fn announced_types(
    plan: Arc<dyn datafusion::physical_plan::ExecutionPlan>,
    announced: &SchemaRef,
) -> Result<Arc<dyn datafusion::physical_plan::ExecutionPlan>> {
    use datafusion::physical_expr::expressions::{CastExpr, Column};
    use datafusion::physical_plan::projection::ProjectionExec;
    let actual = plan.schema();
    let differs = actual.fields().len() == announced.fields().len()
        && actual
            .fields()
            .iter()
            .zip(announced.fields())
            .any(|(a, b)| a.data_type() != b.data_type());
    if !differs {
        return Ok(plan);
    }
    let exprs = actual
        .fields()
        .iter()
        .zip(announced.fields())
        .enumerate()
        .map(|(i, (a, b))| {
            let column: Arc<dyn datafusion::physical_expr::PhysicalExpr> =
                Arc::new(Column::new(a.name(), i));
            let expr: Arc<dyn datafusion::physical_expr::PhysicalExpr> =
                if a.data_type() == b.data_type() {
                    column
                } else {
                    Arc::new(CastExpr::new(column, b.data_type().clone(), None))
                };
            (expr, b.name().clone())
        })
        .collect::<Vec<_>>();
    Ok(Arc::new(ProjectionExec::try_new(exprs, plan)?))
}

/// Every scanned table with the version and Delta table id read, or `None` when the plan
/// reads something unversioned (`information_schema`).
fn table_versions(plan: &LogicalPlan) -> Result<Option<Vec<crate::cache::key::TableVersion>>> {
    let mut out = Vec::new();
    let mut versioned = true;
    plan.apply_with_subqueries(|node| {
        if let LogicalPlan::TableScan(scan) = node {
            let provider = source_as_provider(&scan.source)?;
            let any: &dyn std::any::Any = provider.as_ref();
            match any.downcast_ref::<PolicyTable>() {
                Some(t) => out.push(crate::cache::key::TableVersion {
                    table: t.table().clone(),
                    version: t.version(),
                    id: t.table_id().to_string(),
                }),
                None => versioned = false,
            }
        }
        Ok(TreeNodeRecursion::Continue)
    })?;
    out.sort();
    Ok(versioned.then_some(out))
}

/// Tables read by `plan` (subqueries included).
fn scanned_tables(plan: &LogicalPlan) -> Result<Vec<TableRef>> {
    let mut out = Vec::new();
    plan.apply_with_subqueries(|node| {
        if let LogicalPlan::TableScan(scan) = node
            && let Ok(provider) = source_as_provider(&scan.source)
        {
            let any: &dyn std::any::Any = provider.as_ref();
            if let Some(t) = any.downcast_ref::<PolicyTable>()
                && !out.contains(t.table())
            {
                out.push(t.table().clone());
            }
        }
        Ok(TreeNodeRecursion::Continue)
    })?;
    Ok(out)
}

/// Projects a query's output onto a table's columns for INSERT: by position, or by the
/// explicit column list; unlisted columns get NULL; each value is cast to the column type.
fn project_onto(plan: LogicalPlan, target: &SchemaRef, columns: &[String]) -> Result<LogicalPlan> {
    let source: Vec<Expr> = plan
        .schema()
        .iter()
        .map(|(q, f)| Expr::Column(Column::from((q, f))))
        .collect();
    let names: Vec<String> = if columns.is_empty() {
        target.fields().iter().map(|f| f.name().clone()).collect()
    } else {
        for c in columns {
            if target.field_with_name(c).is_err() {
                return Err(Error::invalid(format!("INSERT: unknown column {c}")));
            }
        }
        columns.to_vec()
    };
    if names.len() != source.len() {
        return Err(Error::invalid(format!(
            "INSERT: the query produces {} column(s) but {} are targeted",
            source.len(),
            names.len()
        )));
    }
    let mut exprs = Vec::with_capacity(target.fields().len());
    for field in target.fields() {
        let expr = match names.iter().position(|n| n == field.name()) {
            Some(i) => cast(source[i].clone(), field.data_type().clone()),
            None if field.is_nullable() => cast(lit(ScalarValue::Null), field.data_type().clone()),
            None => {
                return Err(Error::invalid(format!(
                    "INSERT: column {} is NOT NULL and gets no value",
                    field.name()
                )));
            }
        };
        exprs.push(expr.alias(field.name()));
    }
    Ok(LogicalPlanBuilder::from(plan).project(exprs)?.build()?)
}

/// Casts a CTAS query's output to types Delta stores (no views, large or unsigned types,
/// microsecond timestamps), and checks column names.
fn delta_compatible(plan: LogicalPlan) -> Result<LogicalPlan> {
    let mut exprs = Vec::new();
    for (q, f) in plan.schema().iter() {
        crate::storage::validate_name(f.name()).map_err(|_| {
            Error::invalid(format!(
                "column name {:?} is not a valid table column; give it an alias (AS name)",
                f.name()
            ))
        })?;
        let target = crate::storage::types::delta_arrow_type(f.data_type()).ok_or_else(|| {
            Error::Unsupported(format!(
                "column {} has type {}, which Delta tables cannot store",
                f.name(),
                f.data_type()
            ))
        })?;
        let col = Expr::Column(Column::from((q, f)));
        let e = if &target == f.data_type() {
            col
        } else {
            cast(col, target)
        };
        exprs.push(e.alias(f.name().to_ascii_lowercase()));
    }
    Ok(LogicalPlanBuilder::from(plan).project(exprs)?.build()?)
}

/// The one-row result of a command.
fn command_output(
    kind: &'static str,
    table: &TableRef,
    rows: Option<i64>,
    version: Option<i64>,
) -> QueryOutput {
    command_output_with(kind, table, rows, version, None)
}

/// `DESCRIBE HISTORY` rows, newest first (parameters and metrics as JSON text).
fn history_output(
    kind: &'static str,
    table: &TableRef,
    entries: &[crate::storage::catalog::HistoryEntry],
) -> Result<QueryOutput> {
    use arrow::array::{BooleanArray, TimestampMillisecondArray};
    let text = |f: fn(&crate::storage::catalog::HistoryEntry) -> Option<String>| -> ArrayRef {
        Arc::new(StringArray::from(entries.iter().map(f).collect::<Vec<_>>()))
    };
    let schema = Arc::new(Schema::new(vec![
        Field::new("version", DataType::Int64, false),
        Field::new(
            "timestamp",
            DataType::Timestamp(arrow::datatypes::TimeUnit::Millisecond, Some("UTC".into())),
            true,
        ),
        Field::new("operation", DataType::Utf8, true),
        Field::new("operation_parameters", DataType::Utf8, true),
        Field::new("operation_metrics", DataType::Utf8, true),
        Field::new("principal", DataType::Utf8, true),
        Field::new("strata_operation", DataType::Utf8, true),
        Field::new("read_version", DataType::Int64, true),
        Field::new("is_blind_append", DataType::Boolean, true),
    ]));
    let columns: Vec<ArrayRef> = vec![
        Arc::new(Int64Array::from(
            entries.iter().map(|e| e.version as i64).collect::<Vec<_>>(),
        )),
        Arc::new(
            TimestampMillisecondArray::from(
                entries
                    .iter()
                    .map(|e| e.timestamp.map(|t| t.timestamp_millis()))
                    .collect::<Vec<_>>(),
            )
            .with_timezone("UTC"),
        ),
        text(|e| e.operation.clone()),
        text(|e| e.operation_parameters.as_ref().map(|v| v.to_string())),
        text(|e| e.operation_metrics.as_ref().map(|v| v.to_string())),
        text(|e| e.principal.clone()),
        text(|e| e.strata_operation.clone()),
        Arc::new(Int64Array::from(
            entries.iter().map(|e| e.read_version).collect::<Vec<_>>(),
        )),
        Arc::new(BooleanArray::from(
            entries
                .iter()
                .map(|e| e.is_blind_append)
                .collect::<Vec<_>>(),
        )),
    ];
    let batch = RecordBatch::try_new(Arc::clone(&schema), columns)?;
    let stream =
        RecordBatchStreamAdapter::new(Arc::clone(&schema), futures::stream::iter(vec![Ok(batch)]));
    Ok(QueryOutput {
        kind,
        schema,
        stream: Box::pin(stream),
        tables: vec![table.clone()],
        etag: None,
        cache_hit: false,
    })
}

fn dml_output(kind: &'static str, table: &TableRef, o: &DmlOutcome) -> QueryOutput {
    command_output_with(
        kind,
        table,
        Some(o.affected() as i64),
        Some(o.version as i64),
        Some([o.inserted as i64, o.updated as i64, o.deleted as i64]),
    )
}

fn command_output_with(
    kind: &'static str,
    table: &TableRef,
    rows: Option<i64>,
    version: Option<i64>,
    changes: Option<[i64; 3]>,
) -> QueryOutput {
    let schema = command_schema();
    let change = |i: usize| -> ArrayRef { Arc::new(Int64Array::from(vec![changes.map(|c| c[i])])) };
    let columns: Vec<ArrayRef> = vec![
        Arc::new(StringArray::from(vec![kind])),
        Arc::new(StringArray::from(vec![table.to_string()])),
        Arc::new(Int64Array::from(vec![rows])),
        Arc::new(Int64Array::from(vec![version])),
        change(0),
        change(1),
        change(2),
    ];
    let batch = RecordBatch::try_new(Arc::clone(&schema), columns);
    let stream = RecordBatchStreamAdapter::new(
        Arc::clone(&schema),
        futures::stream::iter(vec![batch.map_err(Into::into)]),
    );
    QueryOutput {
        kind,
        schema,
        stream: Box::pin(stream),
        tables: vec![table.clone()],
        etag: None,
        cache_hit: false,
    }
}
