//! MERGE, UPDATE and DELETE: privileges, the writer's policy, the guarded source plan, then
//! `pipelines::merge`.

use std::sync::Arc;

use datafusion::common::ScalarValue;
use datafusion::logical_expr::{Expr, LogicalPlan};
use datafusion::prelude::DataFrame;

use crate::engine::Engine;
use crate::error::{Error, Result};
use crate::pipelines::merge::{self, Dml, DmlOutcome, MergeSpec};
use crate::security::Principal;
use crate::security::access::{AccessControl, Privilege};
use crate::security::policy::PolicyGuard;
use crate::security::policy::table::Enforcement;
use crate::storage::TableRef;

/// What a MERGE reads from.
#[derive(Debug)]
pub enum MergeSource {
    /// A plan made in the principal's secure session.
    Plan(LogicalPlan),
}

impl Engine {
    /// MODIFY on `t`, and the writer's row filter there. A writer whose reads of `t` are
    /// masked is refused: its conditions and SET expressions would see unmasked values.
    async fn modify_filter(
        &self,
        access: &AccessControl,
        p: &Principal,
        t: &TableRef,
    ) -> Result<Option<Expr>> {
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
        Ok(enforcement.filter)
    }

    pub(crate) async fn run_merge(
        &self,
        principal: &Arc<Principal>,
        access: &Arc<AccessControl>,
        t: &TableRef,
        source: MergeSource,
        spec: &MergeSpec,
        params: &[ScalarValue],
    ) -> Result<DmlOutcome> {
        let filter = self.modify_filter(access, principal, t).await?;
        let MergeSource::Plan(plan) = source;
        PolicyGuard::new(Arc::clone(principal)).check(&plan)?;
        let state = self.sessions.dml_session(principal, access);
        let source = DataFrame::new(state.clone(), plan);
        let dml = Dml {
            catalog: self.catalog(),
            table: t,
            principal,
            state: &state,
            filter: filter.as_ref(),
            params,
        };
        merge::merge(&dml, source, spec).await
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
        let filter = self.modify_filter(access, principal, t).await?;
        let state = self.sessions.dml_session(principal, access);
        let dml = Dml {
            catalog: self.catalog(),
            table: t,
            principal,
            state: &state,
            filter: filter.as_ref(),
            params,
        };
        merge::update(&dml, set, predicate).await
    }

    pub(crate) async fn run_delete(
        &self,
        principal: &Arc<Principal>,
        access: &Arc<AccessControl>,
        t: &TableRef,
        predicate: Option<&str>,
        params: &[ScalarValue],
    ) -> Result<DmlOutcome> {
        let filter = self.modify_filter(access, principal, t).await?;
        let state = self.sessions.dml_session(principal, access);
        let dml = Dml {
            catalog: self.catalog(),
            table: t,
            principal,
            state: &state,
            filter: filter.as_ref(),
            params,
        };
        merge::delete(&dml, predicate).await
    }
}
