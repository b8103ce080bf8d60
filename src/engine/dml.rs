//! MERGE, UPDATE and DELETE: privileges, the writer's policy, the guarded source plan, then
//! `pipelines::merge`.

use std::sync::Arc;

use arrow::array::RecordBatch;
use datafusion::common::ScalarValue;
use datafusion::execution::context::SessionState;
use datafusion::logical_expr::{Expr, LogicalPlan};
use datafusion::prelude::{DataFrame, SessionContext};

use crate::engine::Engine;
use crate::engine::lineage::{self, Lineage};
use crate::engine::sql::{self, Statement};
use crate::error::{Error, Result};
use crate::pipelines::commit::Progress;
use crate::pipelines::merge::{self, Dml, DmlOutcome, MergeSpec};
use crate::pipelines::scd2::{self, Scd2Spec};
use crate::security::Principal;
use crate::security::access::{AccessControl, Privilege};
use crate::security::policy::PolicyGuard;
use crate::security::policy::table::Enforcement;
use crate::storage::TableRef;

/// The table a MERGE, UPDATE, DELETE or SCD2 changes, as the writer may change it.
#[derive(Debug)]
struct Target {
    /// The writer's row filter there (`None` without one).
    filter: Option<Expr>,
    version: u64,
    schema: arrow::datatypes::SchemaRef,
}

impl Target {
    fn of<'a>(&'a self, t: &'a TableRef) -> (&'a TableRef, u64, &'a arrow::datatypes::Schema) {
        (t, self.version, &self.schema)
    }
}

/// What a MERGE or SCD2 reads from.
#[derive(Debug)]
pub(crate) enum MergeSource {
    /// A plan made in the principal's secure session.
    Plan(LogicalPlan),
    /// Rows sent by the client (already decoded and validated).
    Rows(Vec<RecordBatch>),
}

impl MergeSource {
    /// What the source reads (rows sent by the client read no table).
    fn lineage(&self, state: &SessionState) -> Lineage {
        match self {
            MergeSource::Plan(plan) => lineage::of_rows(state, plan),
            MergeSource::Rows(_) => Lineage::default(),
        }
    }
}

/// What a MERGE binds besides its source: `$n` parameter values, and the progress markers
/// committed with it (flows).
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct Bound<'a> {
    pub(crate) params: &'a [ScalarValue],
    pub(crate) progress: &'a Progress,
}

/// A source as an API caller gives it.
#[derive(Debug)]
pub enum SourceInput {
    /// A query, or a table name.
    Sql(String),
    Rows(Vec<RecordBatch>),
}

impl Engine {
    /// MODIFY on `t`, and the writer's row filter there, with the version and schema the
    /// change starts from. A writer whose reads of `t` are masked is refused: its conditions
    /// and SET expressions would see unmasked values.
    async fn modify_target(
        &self,
        access: &AccessControl,
        p: &Principal,
        t: &TableRef,
    ) -> Result<Target> {
        access.check(p, Privilege::Modify, t)?;
        let table = self.catalog().load(t).await?;
        let schema = table.snapshot()?.snapshot().arrow_schema();
        let enforcement = Enforcement::compile(
            t,
            access.table_policy(t),
            p,
            access.bypasses_policies(p),
            &schema,
            self.planning_state(),
        )?;
        if !enforcement.masks.is_empty() {
            return Err(Error::PermissionDenied(format!(
                "column masks apply to you on {t}; UPDATE, DELETE and MERGE need a role exempt from them"
            )));
        }
        Ok(Target {
            filter: enforcement.filter,
            version: table.version().unwrap_or(0),
            schema,
        })
    }

    pub(crate) async fn run_merge(
        &self,
        principal: &Arc<Principal>,
        access: &Arc<AccessControl>,
        t: &TableRef,
        source: MergeSource,
        spec: &MergeSpec,
        bound: Bound<'_>,
    ) -> Result<DmlOutcome> {
        let target = self.modify_target(access, principal, t).await?;
        let state = self.sessions.dml_session(principal, access);
        let read = self.lineage(|| source.lineage(&state));
        let source = self.source_frame(principal, &state, source)?;
        let lineage = self.lineage(|| {
            let schema = source.schema().as_arrow();
            lineage::of_merge(&state, read, schema, target.of(t), spec).filtered_by_writer(
                t,
                target.version,
                target.filter.as_ref(),
            )
        });
        let dml = Dml {
            progress: bound.progress,
            ..self.dml(t, principal, &state, target.filter.as_ref(), bound.params)
        };
        self.attached(
            t,
            &spec.operation,
            &lineage,
            None,
            merge::merge(&dml, source, spec),
        )
        .await
    }

    /// A MERGE/UPDATE/DELETE/SCD2 of `t` by `principal` in `state`.
    fn dml<'a>(
        &'a self,
        t: &'a TableRef,
        principal: &'a Principal,
        state: &'a SessionState,
        filter: Option<&'a Expr>,
        params: &'a [ScalarValue],
    ) -> Dml<'a> {
        Dml {
            catalog: self.catalog(),
            table: t,
            principal,
            state,
            filter,
            params,
            progress: &[],
        }
    }

    /// The source as a DataFrame in the DML session; plans are checked by the guard first.
    fn source_frame(
        &self,
        principal: &Arc<Principal>,
        state: &SessionState,
        source: MergeSource,
    ) -> Result<DataFrame> {
        Ok(match source {
            MergeSource::Plan(plan) => {
                PolicyGuard::new(Arc::clone(principal)).check(&plan)?;
                DataFrame::new(state.clone(), plan)
            }
            MergeSource::Rows(batches) => {
                SessionContext::new_with_state(state.clone()).read_batches(batches)?
            }
        })
    }

    /// Plans `input` for `principal` (SQL through the secure catalog).
    async fn plan_source(
        &self,
        principal: &Arc<Principal>,
        access: &Arc<AccessControl>,
        input: SourceInput,
    ) -> Result<MergeSource> {
        match input {
            SourceInput::Rows(batches) => Ok(MergeSource::Rows(batches)),
            SourceInput::Sql(sql) => {
                let sql = sql.trim();
                let is_name = !sql.is_empty()
                    && sql
                        .chars()
                        .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '.');
                let sql = if is_name {
                    format!("SELECT * FROM {sql}")
                } else {
                    sql.to_string()
                };
                let Statement::Query(ast) = sql::parse(&sql, &self.default_layer)? else {
                    return Err(Error::invalid("the source must be a query or a table name"));
                };
                let state = self.sessions.session(principal, access);
                Ok(MergeSource::Plan(
                    self.plan_query(&state, *ast, Vec::new()).await?,
                ))
            }
        }
    }

    /// MERGE from the REST API.
    pub async fn merge(
        &self,
        principal: &Arc<Principal>,
        t: &TableRef,
        source: SourceInput,
        spec: &MergeSpec,
    ) -> Result<DmlOutcome> {
        let access = self.access().await?;
        access.check(principal, Privilege::Modify, t)?;
        let source = self.plan_source(principal, &access, source).await?;
        self.run_merge(principal, &access, t, source, spec, Bound::default())
            .await
    }

    /// SCD Type 2 (`pipelines::scd2`) from REST or SQL.
    pub async fn scd2(
        &self,
        principal: &Arc<Principal>,
        t: &TableRef,
        source: SourceInput,
        spec: &Scd2Spec,
    ) -> Result<DmlOutcome> {
        let access = self.access().await?;
        access.check(principal, Privilege::Modify, t)?;
        let source = self.plan_source(principal, &access, source).await?;
        self.run_scd2(principal, &access, t, source, spec, &[])
            .await
    }

    /// SCD2 of `source` into `t`, committing `progress` with it (flows).
    pub(crate) async fn run_scd2(
        &self,
        principal: &Arc<Principal>,
        access: &Arc<AccessControl>,
        t: &TableRef,
        source: MergeSource,
        spec: &Scd2Spec,
        progress: &Progress,
    ) -> Result<DmlOutcome> {
        let target = self.modify_target(access, principal, t).await?;
        let state = self.sessions.dml_session(principal, access);
        let read = self.lineage(|| source.lineage(&state));
        let source = self.source_frame(principal, &state, source)?;
        let lineage = self.lineage(|| {
            lineage::of_scd2(read, source.schema().as_arrow(), target.of(t), spec)
                .filtered_by_writer(t, target.version, target.filter.as_ref())
        });
        let dml = Dml {
            progress,
            ..self.dml(t, principal, &state, target.filter.as_ref(), &[])
        };
        self.attached(t, "SCD2", &lineage, None, scd2::scd2(&dml, source, spec))
            .await
    }

    pub(crate) async fn run_update(
        &self,
        principal: &Arc<Principal>,
        access: &Arc<AccessControl>,
        t: &TableRef,
        set: &[(String, String)],
        predicate: Option<&str>,
        params: &[ScalarValue],
    ) -> Result<DmlOutcome> {
        let target = self.modify_target(access, principal, t).await?;
        let state = self.sessions.dml_session(principal, access);
        let lineage = self.lineage(|| {
            lineage::of_update(&state, target.of(t), set, predicate).filtered_by_writer(
                t,
                target.version,
                target.filter.as_ref(),
            )
        });
        let dml = self.dml(t, principal, &state, target.filter.as_ref(), params);
        self.attached(
            t,
            "UPDATE",
            &lineage,
            None,
            merge::update(&dml, set, predicate),
        )
        .await
    }

    pub(crate) async fn run_delete(
        &self,
        principal: &Arc<Principal>,
        access: &Arc<AccessControl>,
        t: &TableRef,
        predicate: Option<&str>,
        params: &[ScalarValue],
    ) -> Result<DmlOutcome> {
        self.delete_with_progress(principal, access, t, predicate, params, &[])
            .await
    }

    /// A DELETE that commits `progress` with the rows it removes (nothing when the table
    /// already holds it).
    pub(crate) async fn delete_with_progress(
        &self,
        principal: &Arc<Principal>,
        access: &Arc<AccessControl>,
        t: &TableRef,
        predicate: Option<&str>,
        params: &[ScalarValue],
        progress: &Progress,
    ) -> Result<DmlOutcome> {
        let target = self.modify_target(access, principal, t).await?;
        let state = self.sessions.dml_session(principal, access);
        let lineage = self.lineage(|| {
            lineage::of_delete(&state, target.of(t), predicate).filtered_by_writer(
                t,
                target.version,
                target.filter.as_ref(),
            )
        });
        let mut dml = self.dml(t, principal, &state, target.filter.as_ref(), params);
        dml.progress = progress;
        self.attached(t, "DELETE", &lineage, None, merge::delete(&dml, predicate))
            .await
    }
}
