//! Runs any replica accepts and the scheduler's leader executes (PLATFORM P3).
//!
//! ```text
//! follower: POST …/runs | …/backfill | /runs/{id}/resume
//!   checks, plan (as on the leader: 400s are answered here) ──▶ system.runs row `queued`
//!   (no replica yet) ──▶ _strata/scheduler/requests/<run id>.json (put-if-absent:
//!   the record and the plan) ──▶ 202
//! leader, every pass: list requests ──▶ claim: the run's next system.runs row committed
//!   with txn strata:request:<run id> (of two leaders one commits) ──▶ launch ──▶ delete
//! POST /runs/{id}/cancel where the run is not executing ──▶ …/requests/<run id>.cancel
//!   ──▶ the leader cancels it if it executes it, or records a request it has not claimed
//!   `cancelled` under the same claim marker (so it can never start after)
//! ```
//!
//! A replica with `[scheduler] enabled = false`, and the leader itself, run what they
//! accept at once (as before the scheduler existed): there may be no leader to hand to.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::Ordering;

use deltalake::kernel::Transaction;
use futures::TryStreamExt;
use object_store::path::Path;
use object_store::{ObjectStore, ObjectStoreExt, PutMode, PutOptions, PutPayload};
use serde::{Deserialize, Serialize};

use super::Flows;
use super::backfill::BatchWork;
use super::guard::Origin;
use super::record::{RunRecord, RunStatus};
use super::run::Refresh;
use super::runs::RunPlan;
use super::store::Deployment;
use crate::error::{Error, Result};
use crate::storage::TableRef;

/// Requests (`<run id>.json`) and cancels (`<run id>.cancel`): one listing a pass.
const REQUESTS: &str = "_strata/scheduler/requests";

/// Where the runs a replica accepts execute.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub(crate) enum Route {
    /// Here, at once: this replica leads, or takes no part in the election.
    Here = 0,
    /// On the leader, through a request object.
    Leader = 1,
}

/// A run handed to the leader.
#[derive(Debug, Serialize, Deserialize)]
struct RequestDoc {
    record: RunRecord,
    plan: PlanDoc,
}

/// A [`RunPlan`] without its DAG (rebuilt from the deployment the record names).
#[derive(Debug, Serialize, Deserialize)]
struct PlanDoc {
    selected: Vec<TableRef>,
    refresh: Vec<(TableRef, Refresh)>,
    batches: Vec<(TableRef, BatchWork)>,
}

/// The claim marker of requested run `id` in `system.runs`.
fn claim_marker(id: &str) -> Transaction {
    Transaction::new(format!("strata:request:{id}"), 1)
}

fn request_path(id: &str) -> Path {
    Path::from(format!("{REQUESTS}/{id}.json"))
}

fn cancel_path(id: &str) -> Path {
    Path::from(format!("{REQUESTS}/{id}.cancel"))
}

/// The run id of a cancel object.
fn cancelled_id(path: &Path) -> Option<String> {
    path.filename()
        .and_then(|f| f.strip_suffix(".cancel"))
        .filter(|id| !id.is_empty())
        .map(str::to_string)
}

impl Flows {
    /// Where the runs this replica accepts execute (the scheduler sets it).
    pub(crate) fn set_route(&self, route: Route) {
        self.route.store(route as u8, Ordering::SeqCst);
    }

    fn route(&self) -> Route {
        match self.route.load(Ordering::SeqCst) {
            1 => Route::Leader,
            _ => Route::Here,
        }
    }

    /// Runs `record` as planned: here, or (a follower) through a request to the leader.
    pub(super) async fn dispatch(
        self: &Arc<Self>,
        mut record: RunRecord,
        plan: RunPlan,
        d: &Deployment,
        origin: Origin,
    ) -> Result<RunRecord> {
        if self.route() == Route::Here {
            self.records.record_start(&record).await?;
            return self.launch(record, plan, d, origin);
        }
        record.replica = None;
        let doc = RequestDoc {
            record: record.clone(),
            plan: PlanDoc {
                selected: plan.selected.into_iter().collect(),
                refresh: plan.refresh.into_iter().collect(),
                batches: plan.batches.into_iter().collect(),
            },
        };
        let body =
            serde_json::to_vec(&doc).map_err(|e| Error::internal(format!("run request: {e}")))?;
        // Recorded first: whoever asks for the run finds it queued on every replica.
        self.records.record_requested(&record).await?;
        let handed = self
            .object_store()
            .put_opts(
                &request_path(&record.run_id),
                PutPayload::from(body),
                PutOptions::from(PutMode::Create),
            )
            .await;
        if let Err(e) = handed {
            // Never left `queued` with nobody to run it.
            let mut failed = record;
            failed.status = RunStatus::Failed;
            failed.ended_at = Some(self.clock.now());
            failed.error = Some(format!(
                "could not hand the run to the scheduler's leader: {e}"
            ));
            if let Err(e) = self.records.record(&failed).await {
                tracing::error!(run = %failed.run_id, error = %e, "could not record a run that was never handed over");
            }
            return Err(e.into());
        }
        Ok(record)
    }

    /// Asks the replica executing run `id` to cancel it (it is not executing here).
    pub(super) async fn request_cancel(&self, id: &str) -> Result<()> {
        let path = cancel_path(id);
        match self
            .object_store()
            .put_opts(&path, PutPayload::new(), PutOptions::from(PutMode::Create))
            .await
        {
            Ok(_) | Err(object_store::Error::AlreadyExists { .. }) => Ok(()),
            Err(e) => Err(e.into()),
        }
    }

    /// The leader's pass over cancels and requests, oldest first; the runs it started.
    pub(crate) async fn take_requests(self: &Arc<Self>, epoch: u64) -> Result<Vec<String>> {
        let store = self.object_store();
        let (cancels, requests): (Vec<Path>, Vec<Path>) = listed(&store, REQUESTS)
            .await?
            .into_iter()
            .partition(|p| cancelled_id(p).is_some());
        for path in cancels {
            if let Some(id) = cancelled_id(&path)
                && let Err(e) = self.cancel_requested(&store, &id).await
            {
                tracing::warn!(run = id, error = %e, "could not act on a cancel request");
                continue;
            }
            delete(&store, &path).await?;
        }
        let mut started = Vec::new();
        for path in requests {
            let Some(doc) = read(&store, &path).await? else {
                continue;
            };
            let id = doc.record.run_id.clone();
            match self.start_requested(doc, epoch).await {
                Ok(true) => started.push(id),
                Ok(false) => {}
                Err(e) => {
                    // Left for the next pass (a store error); the run stays queued.
                    tracing::warn!(run = id, error = %e, "could not start a requested run");
                    continue;
                }
            }
            delete(&store, &path).await?;
        }
        Ok(started)
    }

    /// Claims and launches a requested run; false when it was claimed before (by another
    /// leader, or by a cancel) or could not start (recorded `failed`).
    async fn start_requested(self: &Arc<Self>, doc: RequestDoc, epoch: u64) -> Result<bool> {
        let RequestDoc { mut record, plan } = doc;
        record.replica = Some(self.replica.clone());
        record.epoch = Some(epoch);
        let deployed = self
            .store
            .latest(&record.pipeline)
            .await?
            .filter(|d| !d.undeployed);
        let d = match deployed {
            Some(d) if d.version == record.pipeline_version => d,
            other => {
                let why = match other {
                    Some(d) => format!(
                        "pipeline {} was redeployed (version {} → {}) before the scheduler's leader started this run; start it again",
                        record.pipeline, record.pipeline_version, d.version
                    ),
                    None => format!(
                        "pipeline {} was undeployed before the scheduler's leader started this run",
                        record.pipeline
                    ),
                };
                self.end_unstarted(record, RunStatus::Failed, why).await?;
                return Ok(false);
            }
        };
        let dag = self.dag(&d.models)?;
        if !self
            .records
            .claim(&record, claim_marker(&record.run_id))
            .await?
        {
            return Ok(false);
        }
        let plan = RunPlan {
            dag,
            selected: plan.selected.into_iter().collect(),
            refresh: plan.refresh.into_iter().collect::<BTreeMap<_, _>>(),
            batches: plan.batches.into_iter().collect(),
        };
        let origin = Origin {
            epoch: Some(epoch),
            ..Origin::manual()
        };
        self.launch(record, plan, &d, origin)?;
        Ok(true)
    }

    /// Acts on a cancel request for run `id`: cancels it if it runs here, or ends its
    /// request unclaimed.
    async fn cancel_requested(&self, store: &Arc<dyn ObjectStore>, id: &str) -> Result<()> {
        if let Ok(runs) = self.runs.lock()
            && let Some(a) = runs.get(id)
        {
            a.cancel.cancel();
            return Ok(());
        }
        let path = request_path(id);
        if let Some(doc) = read(store, &path).await? {
            self.end_unstarted(
                doc.record,
                RunStatus::Cancelled,
                "cancelled before the scheduler's leader started it".into(),
            )
            .await?;
            delete(store, &path).await?;
        }
        Ok(())
    }

    /// Records a requested run that never starts, under its claim marker.
    async fn end_unstarted(
        &self,
        mut record: RunRecord,
        status: RunStatus,
        why: String,
    ) -> Result<()> {
        record.status = status;
        record.ended_at = Some(self.clock.now());
        record.error = Some(why);
        for m in &mut record.models {
            m.status = status;
        }
        self.records
            .claim(&record, claim_marker(&record.run_id))
            .await?;
        Ok(())
    }
}

/// The objects under `prefix`, by name (run ids are UUIDv7: oldest first).
async fn listed(store: &Arc<dyn ObjectStore>, prefix: &str) -> Result<Vec<Path>> {
    let mut paths: Vec<Path> = store
        .list(Some(&Path::from(prefix)))
        .map_ok(|m| m.location)
        .try_collect()
        .await?;
    paths.sort();
    Ok(paths)
}

async fn read(store: &Arc<dyn ObjectStore>, path: &Path) -> Result<Option<RequestDoc>> {
    let bytes = match store.get(path).await {
        Ok(r) => r.bytes().await?,
        Err(object_store::Error::NotFound { .. }) => return Ok(None),
        Err(e) => return Err(e.into()),
    };
    match serde_json::from_slice(&bytes) {
        Ok(doc) => Ok(Some(doc)),
        Err(e) => {
            // Written by a newer or broken replica: nothing here can run it.
            tracing::error!(request = %path, error = %e, "unreadable run request; removed");
            delete(store, path).await?;
            Ok(None)
        }
    }
}

async fn delete(store: &Arc<dyn ObjectStore>, path: &Path) -> Result<()> {
    match store.delete(path).await {
        Ok(()) | Err(object_store::Error::NotFound { .. }) => Ok(()),
        Err(e) => Err(e.into()),
    }
}
