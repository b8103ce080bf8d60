//! OPTIMIZE, VACUUM and RESTORE: `MANAGE` on the table, then `pipelines::maintenance`.

use std::sync::Arc;

use crate::engine::Engine;
use crate::error::Result;
use crate::pipelines::maintenance::{
    self, OptimizeOutcome, OptimizeSpec, RestoreOutcome, RestoreTo, VacuumOutcome,
};
use crate::security::{Principal, Privilege};
use crate::storage::TableRef;

impl Engine {
    pub async fn optimize(
        &self,
        principal: &Arc<Principal>,
        t: &TableRef,
        spec: OptimizeSpec,
    ) -> Result<OptimizeOutcome> {
        self.access()
            .await?
            .check(principal, Privilege::Manage, t)?;
        maintenance::optimize(self.catalog(), t, principal, spec).await
    }

    /// [`Engine::optimize`] with the partition predicate as SQL text (REST `where`), parsed
    /// as `OPTIMIZE … WHERE` is.
    pub async fn optimize_where(
        &self,
        principal: &Arc<Principal>,
        t: &TableRef,
        zorder: Vec<String>,
        predicate: Option<&str>,
        target_size: Option<u64>,
    ) -> Result<OptimizeOutcome> {
        let partitions = match predicate {
            Some(text) => super::sql::partition_predicate(text)?,
            None => Vec::new(),
        };
        let spec = OptimizeSpec {
            zorder,
            partitions,
            target_size,
        };
        self.optimize(principal, t, spec).await
    }

    pub async fn vacuum(
        &self,
        principal: &Arc<Principal>,
        t: &TableRef,
        retain_hours: Option<u64>,
        dry_run: bool,
    ) -> Result<VacuumOutcome> {
        self.access()
            .await?
            .check(principal, Privilege::Manage, t)?;
        maintenance::vacuum(
            self.catalog(),
            t,
            principal,
            retain_hours,
            dry_run,
            self.allow_short_vacuum,
        )
        .await
    }

    pub async fn restore(
        &self,
        principal: &Arc<Principal>,
        t: &TableRef,
        to: RestoreTo,
    ) -> Result<RestoreOutcome> {
        self.access()
            .await?
            .check(principal, Privilege::Manage, t)?;
        maintenance::restore(self.catalog(), t, principal, to).await
    }
}
