//! Cached execution: result-cache keys, replays without planning, plans kept for the fetch
//! that follows, entity tags.

use std::sync::Arc;

use arrow::array::RecordBatch;
use datafusion::common::ScalarValue;
use datafusion::common::tree_node::TreeNodeRecursion;
use datafusion::datasource::source_as_provider;
use datafusion::execution::context::SessionState;
use datafusion::logical_expr::LogicalPlan;
use datafusion::physical_plan::stream::RecordBatchStreamAdapter;

use super::Engine;
use super::audit::audit;
use super::output::{Executed, QueryOutput, ResultKey};
use crate::cache::ResultCache;
use crate::error::Result;
use crate::security::policy::PolicyTable;
use crate::security::{AccessControl, Principal};

/// A query planned for a principal, kept briefly (keyed by [`statement_key`]) so the
/// execution that follows — Flight's DoGet after GetFlightInfo, a repeated REST query —
/// does not plan it again: at TPC-DS sizes planning was 10–20 ms of a 30–50 ms query. It is
/// used only while its policy version is in force and its tables are at the versions it
/// read, and runs in a session of the principal it was planned for (whose fingerprint the
/// key holds), so the policy guard sees the scans bound to that session's principal.
#[derive(Debug)]
pub(super) struct PlannedQuery {
    pub(super) principal: Arc<Principal>,
    pub(super) plan: LogicalPlan,
    pub(super) policy_version: u64,
    pub(super) versions: Vec<crate::cache::key::TableVersion>,
}

/// Who asks for a cacheable query, and how (see [`Engine::run_cached`]).
#[derive(Debug, Clone, Copy)]
pub(super) struct Cached<'a> {
    pub(super) principal: &'a Arc<Principal>,
    pub(super) access: &'a Arc<AccessControl>,
    pub(super) if_none_match: Option<&'a str>,
    /// Remember the result key under this statement key ([`statement_key`]).
    pub(super) statement_key: Option<[u8; 32]>,
}

/// A query's text and parameters as one principal sent them: the key under which the result
/// key of its last run is remembered, so the same request again can replay a cached result
/// without planning. Length-prefixed fields; the principal's fingerprint makes it theirs.
pub(super) fn statement_key(principal: &Principal, sql: &str, params: &[ScalarValue]) -> [u8; 32] {
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

impl Engine {
    /// Whether every table is still at the version (and Delta table id) given: one log
    /// listing per table ([`Catalog::is_current`]). Any error counts as not (planning then
    /// reports it). A time-travel read is never latest once its table moved on.
    pub(super) async fn is_latest(&self, versions: &[crate::cache::key::TableVersion]) -> bool {
        let checks = versions
            .iter()
            .map(|v| self.catalog.is_current(&v.table, v.version, &v.id));
        futures::future::join_all(checks)
            .await
            .into_iter()
            .all(|current| matches!(current, Ok(true)))
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
    pub(super) async fn replay_cached(
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
        if matches_etag(cache, if_none_match, &etag) {
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

    /// Keeps `plan` (planned for `principal` under `access`) for the execution that follows
    /// under `key`, when every table it reads is versioned.
    pub(super) fn remember_plan(
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
    pub(super) async fn planned(
        &self,
        key: Option<[u8; 32]>,
        access: &AccessControl,
    ) -> Option<Arc<PlannedQuery>> {
        let planned = self.plans.get(&key?)?;
        (planned.policy_version == access.version() && self.is_latest(&planned.versions).await)
            .then_some(planned)
    }

    /// Runs a query through the result cache (see [`crate::cache`]).
    pub(super) async fn run_cached(
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
        if matches_etag(cache, if_none_match, &etag) {
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
}

/// The result cache key of `plan` for `principal` under `access`, with the tables it reads;
/// `None` when the result must not be cached: it reads something unversioned
/// (`information_schema`) or calls a non-immutable function.
pub(super) fn cache_key(
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
pub(super) fn replay(
    hit: &crate::cache::CachedResult,
    kind: &'static str,
    etag: String,
) -> QueryOutput {
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

/// Every scanned table with the version and Delta table id read, or `None` when the plan
/// reads something unversioned (`information_schema`).
pub(super) fn table_versions(
    plan: &LogicalPlan,
) -> Result<Option<Vec<crate::cache::key::TableVersion>>> {
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

/// Whether the client's `If-None-Match` holds `etag` (counted as a 304 answered).
fn matches_etag(cache: &ResultCache, if_none_match: Option<&str>, etag: &str) -> bool {
    let matched = if_none_match.is_some_and(|h| h.split(',').any(|t| t.trim() == etag));
    if matched {
        cache
            .stats()
            .not_modified
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    }
    matched
}
