//! OPTIMIZE, VACUUM and RESTORE: `MANAGE` on the table, then `pipelines::maintenance`.

use std::sync::Arc;

use crate::engine::Engine;
use crate::error::{Error, Result};
use crate::pipelines::maintenance::{
    self, OptimizeOutcome, OptimizeSpec, RestoreOutcome, RestoreTo, VacuumOutcome,
};
use crate::security::{Principal, Privilege};
use crate::storage::TableRef;

/// Readers of tables' change feeds that VACUUM must not leave behind (the deployed models of
/// `crate::flows`, which sits above the engine and registers itself at start).
pub trait ChangeReaders: Send + Sync + std::fmt::Debug {
    /// Descriptions of the readers that have not consumed `t`'s latest version.
    fn behind<'a>(&'a self, t: &'a TableRef)
    -> futures::future::BoxFuture<'a, Result<Vec<String>>>;
}

impl Engine {
    /// Registers who reads change feeds (held weakly: the readers hold the engine).
    pub fn set_change_readers(&self, readers: std::sync::Weak<dyn ChangeReaders>) {
        let _ = self.change_readers.set(readers);
    }

    /// Serves `view` as `system.<name>` (held weakly: the view's service holds the engine).
    pub(crate) fn register_view(
        &self,
        name: &str,
        view: std::sync::Weak<dyn crate::security::policy::SystemView>,
    ) {
        self.sessions.views.register(name, view);
    }

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

    /// VACUUM; refused while a deployed model has not consumed the table's changes (their
    /// files would go), unless `force`.
    pub async fn vacuum(
        &self,
        principal: &Arc<Principal>,
        t: &TableRef,
        retain_hours: Option<u64>,
        dry_run: bool,
        force: bool,
    ) -> Result<VacuumOutcome> {
        self.access()
            .await?
            .check(principal, Privilege::Manage, t)?;
        if !dry_run
            && !force
            && let Some(readers) = self.change_readers.get().and_then(std::sync::Weak::upgrade)
        {
            let behind = readers.behind(t).await?;
            if !behind.is_empty() {
                return Err(Error::Conflict(format!(
                    "VACUUM {t} would remove changes deployed models have not consumed: {}; run their pipelines first, or VACUUM {t} FORCE (those models then end watermark_expired)",
                    behind.join("; ")
                )));
            }
        }
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
