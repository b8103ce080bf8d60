//! Planning without running: result schemas, parameter types, result keys for the fetch
//! that follows.

use std::sync::Arc;

use arrow::datatypes::{DataType, Field, Schema};
use datafusion::common::ScalarValue;
use datafusion::logical_expr::LogicalPlan;

use super::cached::{cache_key, statement_key};
use super::output::{Prepared, ResultKey};
use super::params::bind_params;
use super::{Engine, Statement, sql};
use crate::error::{Error, Result};
use crate::security::Principal;
use crate::storage::TableRef;

impl Engine {
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

    pub(super) async fn prepare_with(
        &self,
        principal: &Arc<Principal>,
        sql: &str,
        want_key: bool,
        params: Option<Vec<ScalarValue>>,
    ) -> Result<Prepared> {
        self.check_sql_size(sql)?;
        let statement = sql::parse(sql, &self.default_layer)?;
        let kind = statement.kind();
        if !matches!(statement, Statement::Query(_) | Statement::Explain { .. }) {
            return Ok(Prepared::command(kind));
        }
        // One freshness check of the policies, shared by the kept plan and planning.
        let access = self.access().await?;
        // A fetch of a query planned moments ago (a dashboard's refresh, the same ticket
        // asked for again): its kept plan answers without planning.
        if want_key && matches!(statement, Statement::Query(_)) {
            let values = params.clone().unwrap_or_default();
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
            _ => Ok(Prepared::command(kind)),
        }
    }

    pub(super) fn check_sql_size(&self, sql: &str) -> Result<()> {
        if sql.len() > self.max_sql_bytes {
            return Err(Error::PayloadTooLarge(format!(
                "SQL text is {} bytes; the limit is {}",
                sql.len(),
                self.max_sql_bytes
            )));
        }
        Ok(())
    }
}

/// The table each output column of `plan` comes from unchanged (its qualifier names a
/// table: `gold.orders`, `strata.gold.orders`), else `None`.
pub(super) fn column_origins(plan: &LogicalPlan) -> Vec<Option<TableRef>> {
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
