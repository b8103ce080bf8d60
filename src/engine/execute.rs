//! Running one statement: admission, deadlines, the memory budget, the policy freshness
//! check, audit.

use std::sync::Arc;

use datafusion::common::ScalarValue;
use datafusion::error::DataFusionError;
use datafusion::physical_plan::stream::RecordBatchStreamAdapter;
use futures::StreamExt as _;

use super::audit::audit;
use super::cached::{Cached, statement_key};
use super::output::{Executed, QueryOutput, Submission};
use super::{Engine, Statement, limits, sql};
use crate::error::{Error, Result};
use crate::security::{AccessControl, Principal};

impl Engine {
    /// The one entry point of both front ends: runs `request` for `principal`.
    ///
    /// With a result key handed out when the statement was prepared (a Flight ticket), the
    /// cached result replays without planning while its policies and tables are unchanged.
    /// Otherwise the statement runs once per parameter row (once without parameters when
    /// there are none): the first row now, so its errors are the call's; the others one
    /// after the other as the stream reaches them, so a request never holds more than one
    /// execution slot. Their outputs are one stream with the first row's schema.
    pub async fn submit(
        self: &Arc<Self>,
        principal: &Arc<Principal>,
        request: Submission<'_>,
    ) -> Result<Executed> {
        let distributed = request.distributed;
        crate::cluster::with_request(distributed, self.submit_here(principal, request)).await
    }

    async fn submit_here(
        self: &Arc<Self>,
        principal: &Arc<Principal>,
        request: Submission<'_>,
    ) -> Result<Executed> {
        let distributed = request.distributed;
        if let Some(key) = &request.cached
            && let Some(output) = self.fetch_cached(principal, key).await?
        {
            return Ok(Executed::Output(output));
        }
        let mut rows = request.rows.into_iter();
        let first = self
            .execute_conditional(
                principal,
                request.sql,
                rows.next().unwrap_or_default(),
                request.if_none_match,
            )
            .await?;
        let Executed::Output(first) = first else {
            return Ok(first);
        };
        if rows.len() == 0 {
            return Ok(Executed::Output(first));
        }
        let (engine, sql, p) = (
            Arc::clone(self),
            request.sql.to_string(),
            Arc::clone(principal),
        );
        let rest = futures::stream::iter(rows)
            .then(move |params| {
                let (engine, sql, p) = (Arc::clone(&engine), sql.clone(), Arc::clone(&p));
                async move {
                    crate::cluster::with_request(distributed, engine.execute(&p, &sql, params))
                        .await
                }
            })
            .map(|executed| match executed {
                Ok(output) => output.stream,
                Err(e) => Box::pin(RecordBatchStreamAdapter::new(
                    Arc::new(arrow::datatypes::Schema::empty()),
                    futures::stream::once(
                        async move { Err(DataFusionError::External(Box::new(e))) },
                    ),
                )),
            })
            .flatten();
        let schema = Arc::clone(&first.schema);
        Ok(Executed::Output(QueryOutput {
            stream: Box::pin(RecordBatchStreamAdapter::new(
                Arc::clone(&schema),
                first.stream.chain(rest),
            )),
            schema,
            etag: None,
            ..first
        }))
    }

    /// Runs one SQL statement for `principal`, with positional parameters `$1…$n`.
    pub(super) async fn execute(
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

    /// The rows of one query for `principal` (the server reading its own records, e.g.
    /// `system.runs`, as the caller: the secure catalog decides which rows it sees).
    pub(crate) async fn query_rows(
        &self,
        principal: &Arc<Principal>,
        sql: &str,
        params: Vec<ScalarValue>,
    ) -> Result<Vec<arrow::array::RecordBatch>> {
        use futures::TryStreamExt as _;
        let output = self.execute(principal, sql, params).await?;
        Ok(output.stream.try_collect().await?)
    }

    /// [`Engine::execute`], answering `NotModified` without executing when `if_none_match`
    /// holds the result's entity tag.
    async fn execute_conditional(
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

    /// A result stream under the statement's limits: deadline, size cap, its slot held
    /// until the stream ends; logged when it does.
    pub(super) fn limited(
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

    pub(super) async fn execute_admitted(
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
}
