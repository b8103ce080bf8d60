//! OPTIMIZE, VACUUM and RESTORE: `MANAGE` on the table, then `pipelines::maintenance`.

use std::sync::Arc;

use crate::engine::Engine;
use crate::error::Result;
use crate::pipelines::maintenance::{
    self, OptimizeOutcome, RestoreOutcome, RestoreTo, VacuumOutcome,
};
use crate::security::{Principal, Privilege};
use crate::storage::TableRef;

impl Engine {
    pub async fn optimize(
        &self,
        principal: &Arc<Principal>,
        t: &TableRef,
        zorder: Vec<String>,
        target_size: Option<u64>,
    ) -> Result<OptimizeOutcome> {
        self.access()
            .await?
            .check(principal, Privilege::Manage, t)?;
        maintenance::optimize(self.catalog(), t, principal, zorder, target_size).await
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
