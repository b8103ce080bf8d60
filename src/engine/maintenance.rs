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
