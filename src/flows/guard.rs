//! Why a run starts and what stops it: a cancel, or (runs the scheduler started) the
//! replica losing the lease.

use std::sync::Arc;

use chrono::{DateTime, Utc};
use tokio_util::sync::CancellationToken;

use crate::error::{Error, Result};

/// Why a run starts, and who may still act on its behalf.
#[derive(Debug, Clone)]
pub struct Origin {
    /// `manual`, `cron` or `upstream`.
    pub trigger: &'static str,
    /// The cron slot (scheduled runs).
    pub scheduled_for: Option<DateTime<Utc>>,
    /// The lease epoch the leader started it under.
    pub epoch: Option<u64>,
    /// Whether this replica still leads; a run started by the scheduler stops (commits
    /// nothing more) once it does not.
    pub fence: Option<Arc<dyn Fence>>,
}

impl Origin {
    pub(crate) fn manual() -> Origin {
        Origin {
            trigger: "manual",
            scheduled_for: None,
            epoch: None,
            fence: None,
        }
    }
}

pub use crate::storage::commit_info::Fence;

/// What stops a run: a cancel, or (scheduled runs) the replica losing the lease.
#[derive(Debug)]
pub(crate) struct RunGuard {
    pub(crate) cancel: CancellationToken,
    pub(crate) fence: Option<Arc<dyn Fence>>,
}

impl RunGuard {
    /// Err when the run must commit nothing more.
    pub(crate) fn check(&self) -> Result<()> {
        if self.cancel.is_cancelled() {
            return Err(Error::Cancelled("the run was cancelled".into()));
        }
        if self.fence.as_ref().is_some_and(|f| f.term().is_none()) {
            self.cancel.cancel();
            return Err(Error::Cancelled(
                "this replica no longer leads the scheduler: the new leader runs the pipeline from its watermarks".into(),
            ));
        }
        Ok(())
    }
}
