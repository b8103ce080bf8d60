//! Runs the scheduler starts (PLATFORM P3): slots claimed in `system.runs`, slots that do
//! not run recorded as such, upstream changes found from the models' watermarks, pausing.
//! The scheduler (crate::scheduler) decides when; this is what it asks of flows.

use std::collections::BTreeMap;
use std::sync::Arc;

use chrono::{DateTime, Utc};
use deltalake::kernel::Transaction;

use super::guard::Origin;
use super::record::{ModelRun, RunRecord, RunStatus};
use super::run;
use super::schedule::TriggerDef;
use super::schedule::parse_every;
use super::store::{Deployment, Pause};
use super::{Flows, RunRequest};
use crate::error::{Error, Result};
use crate::security::Principal;
use crate::storage::TableRef;

/// Table maintenance on schedule.
#[derive(Debug, Clone)]
pub(crate) struct Upkeep {
    pub(crate) target: TableRef,
    pub(crate) op: UpkeepOp,
    pub(crate) every: std::time::Duration,
    /// `QuarantineCleanup`: the pipeline's run-as principal (it wrote the rows) and how
    /// long they are kept.
    pub(crate) cleanup: Option<(String, std::time::Duration)>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) enum UpkeepOp {
    Optimize,
    Vacuum,
    /// Deletes a model's quarantined rows older than its `quarantine_retention` (daily).
    QuarantineCleanup,
    /// A table's standalone checks (`every`).
    Checks,
}

impl UpkeepOp {
    pub(crate) fn name(self) -> &'static str {
        match self {
            UpkeepOp::Optimize => "optimize",
            UpkeepOp::Vacuum => "vacuum",
            UpkeepOp::QuarantineCleanup => "quarantine_cleanup",
            UpkeepOp::Checks => "checks",
        }
    }

    pub(crate) fn key(self) -> &'static str {
        match self {
            UpkeepOp::Optimize => "optimize_every",
            UpkeepOp::Vacuum => "vacuum_every",
            UpkeepOp::QuarantineCleanup => "quarantine_retention",
            UpkeepOp::Checks => "every",
        }
    }
}

/// Quarantined rows are kept this long unless a model says otherwise.
const QUARANTINE_RETENTION: std::time::Duration = std::time::Duration::from_secs(30 * 86_400);

/// The principal named as the requester of triggered runs.
pub(super) const SCHEDULER: &str = "svc:scheduler";

/// The marker of `pipeline`'s newest claimed slot in `system.runs` (microseconds).
/// How stale the leader's view of the deployed pipelines may be (a deploy, pause or resume
/// on another replica reaches it within this). Each look costs a LIST per pipeline and two
/// GETs: once a second that was most of an idle fleet's S3 requests.
const DEPLOYMENTS_MAX_AGE: std::time::Duration = std::time::Duration::from_secs(10);

fn slot_app(unit: &str) -> String {
    format!("strata:slot:{unit}")
}

fn slot_marker(unit: &str, slot: DateTime<Utc>) -> Transaction {
    Transaction::new(slot_app(unit), slot.timestamp_micros())
}

/// What the scheduler triggers on its own: a pipeline's models without a trigger of their
/// own, under `pipeline.toml`'s `[trigger]`; and each model whose header has a `[trigger]`,
/// alone. Each has its own slots (claimed under `strata:slot:<key>`), overlap count and
/// upstream poll.
#[derive(Debug, Clone)]
pub(crate) struct Unit {
    /// `<pipeline>`, or `<pipeline>/<layer>.<model>` for a model's own trigger.
    pub(crate) key: String,
    /// The model whose own trigger this is.
    pub(crate) model: Option<String>,
    pub(crate) trigger: TriggerDef,
    /// The models its runs cover, in the pipeline's order.
    pub(crate) models: Vec<String>,
}

impl Flows {
    /// The scheduling units of `d` ([`Unit`]): none without any trigger.
    pub(crate) fn units(&self, d: &Deployment) -> Result<Vec<Unit>> {
        let dag = self.dag(&d.models)?;
        let (own, rest): (Vec<_>, Vec<_>) = dag
            .nodes
            .iter()
            .partition(|n| n.model.header.trigger.is_some());
        let mut out = Vec::new();
        if let Some(trigger) = &d.pipeline.trigger
            && !rest.is_empty()
        {
            out.push(Unit {
                key: d.name.clone(),
                model: None,
                trigger: trigger.clone(),
                models: rest.iter().map(|n| n.model.target.to_string()).collect(),
            });
        }
        for n in own {
            let model = n.model.target.to_string();
            out.push(Unit {
                key: format!("{}/{model}", d.name),
                trigger: n.model.header.trigger.clone().unwrap_or_default(),
                models: vec![model.clone()],
                model: Some(model),
            });
        }
        Ok(out)
    }

    /// Starts a triggered run of `unit`'s models of `d` as its run-as principal. A `cron`
    /// run claims its slot in `system.runs` first: `None` when another leader claimed it.
    pub(crate) async fn start_triggered(
        self: &Arc<Self>,
        d: &Deployment,
        unit: &Unit,
        origin: Origin,
    ) -> Result<Option<RunRecord>> {
        let dag = self.dag(&d.models)?;
        let request = RunRequest {
            models: Some(unit.models.clone()),
            ..RunRequest::default()
        };
        let (mut record, plan) = self.prepare(d, dag, &request)?;
        record.trigger = origin.trigger.into();
        record.scheduled_for = origin.scheduled_for;
        record.epoch = origin.epoch;
        match origin.scheduled_for {
            Some(slot) => {
                if !self
                    .records
                    .claim(&record, slot_marker(&unit.key, slot))
                    .await?
                {
                    return Ok(None);
                }
            }
            None => self.records.record_start(&record).await?,
        }
        self.launch(record, plan, d, origin).map(Some)
    }

    /// Records a slot of `d` that does not run (`skipped_overlap`, `paused`) as claimed;
    /// false when another leader claimed it.
    pub(crate) async fn record_slot(
        &self,
        d: &Deployment,
        unit: &Unit,
        slot: DateTime<Utc>,
        status: RunStatus,
        epoch: u64,
        why: String,
    ) -> Result<bool> {
        let now = self.clock.now();
        let record = RunRecord {
            run_id: uuid::Uuid::now_v7().to_string(),
            pipeline: d.name.clone(),
            pipeline_version: d.version,
            trigger: "cron".into(),
            scheduled_for: Some(slot),
            epoch: Some(epoch),
            replica: Some(self.replica.clone()),
            resumes: None,
            requested_by: SCHEDULER.into(),
            status,
            queued_at: now,
            started_at: None,
            ended_at: Some(now),
            error: Some(why),
            models: self
                .dag(&d.models)?
                .nodes
                .iter()
                .filter(|n| unit.models.contains(&n.model.target.to_string()))
                .map(|n| ModelRun::new(n.model.target.to_string(), n.model.header.kind, status))
                .collect(),
        };
        self.records
            .claim(&record, slot_marker(&unit.key, slot))
            .await
    }

    /// The newest slot of scheduling unit `key` ([`Unit`]) claimed by any leader.
    pub(crate) async fn claimed_slot(&self, key: &str) -> Result<Option<DateTime<Utc>>> {
        Ok(self
            .records
            .claimed(&slot_app(key))
            .await?
            .and_then(DateTime::from_timestamp_micros))
    }

    /// Runs of `pipeline` this replica is executing that cover one of `models` (they
    /// overlap a run of them), with when each started.
    pub(crate) fn active(&self, pipeline: &str, models: &[String]) -> Vec<DateTime<Utc>> {
        self.runs
            .lock()
            .map(|runs| {
                runs.values()
                    .filter(|a| a.record.pipeline == pipeline && !a.record.status.is_terminal())
                    .filter(|a| a.record.models.iter().any(|m| models.contains(&m.model)))
                    .map(|a| a.started)
                    .collect()
            })
            .unwrap_or_default()
    }

    /// Marks runs orphaned whose replica is not among `alive` (and that are older than
    /// `grace`); their ids.
    pub(crate) async fn mark_orphans(
        &self,
        alive: &[String],
        grace: chrono::Duration,
    ) -> Result<Vec<String>> {
        self.records
            .mark_orphans(alive, self.clock.now(), grace)
            .await
    }

    /// Live deployments, and whether each is paused: as read at most
    /// [`DEPLOYMENTS_MAX_AGE`] ago, or since this replica deployed, paused or resumed one.
    pub(crate) async fn deployments(&self) -> Result<Vec<(Deployment, Option<Pause>)>> {
        self.store.live(DEPLOYMENTS_MAX_AGE).await
    }

    /// The versions of the tables `unit`'s models read from outside it, when one of them
    /// has not consumed a source up to its current version (`None`: nothing to do).
    pub(crate) async fn upstream_moved(
        &self,
        d: &Deployment,
        unit: &Unit,
    ) -> Result<Option<BTreeMap<TableRef, u64>>> {
        let dag = self.dag(&d.models)?;
        let mut versions = BTreeMap::new();
        let mut behind = false;
        for node in dag
            .nodes
            .iter()
            .filter(|n| unit.models.contains(&n.model.target.to_string()))
        {
            for s in node.reads.all() {
                if unit.models.contains(&s.to_string()) {
                    // Made by the same run: it catches up in it.
                    continue;
                }
                let source = match self.engine.catalog().load(s).await {
                    Ok(t) => t,
                    Err(Error::NotFound(_)) => continue,
                    Err(e) => return Err(e),
                };
                let latest = source.version().unwrap_or(0);
                let id = source.snapshot()?.metadata().id().to_string();
                versions.insert(s.clone(), latest);
                if !behind {
                    let consumed = self.consumed(&node.model.target, s, &id).await?;
                    behind = consumed.is_none_or(|c| c < latest);
                }
            }
        }
        Ok(behind.then_some(versions))
    }

    /// The source version model `target` consumed of `source` (table id `id`).
    pub(super) async fn consumed(
        &self,
        target: &TableRef,
        source: &TableRef,
        id: &str,
    ) -> Result<Option<u64>> {
        match self.engine.catalog().load(target).await {
            Ok(table) => Ok(table
                .snapshot()?
                .transaction_version(table.log_store().as_ref(), &run::app_id(target, source, id))
                .await?
                .and_then(|v| u64::try_from(v).ok())),
            Err(Error::NotFound(_)) => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// The table maintenance `d`'s models ask for (`optimize_every`, `vacuum_every`).
    pub(crate) fn upkeep(&self, d: &Deployment) -> Result<Vec<Upkeep>> {
        let mut out = Vec::new();
        for node in self.dag(&d.models)?.nodes {
            let h = &node.model.header;
            for (op, every) in [
                (UpkeepOp::Optimize, &h.optimize_every),
                (UpkeepOp::Vacuum, &h.vacuum_every),
            ] {
                if let Some(every) = every {
                    out.push(Upkeep {
                        target: node.model.target.clone(),
                        op,
                        every: parse_every(op.key(), every)?,
                        cleanup: None,
                    });
                }
            }
            if h.expectations
                .iter()
                .any(|e| e.on_violation == crate::engine::expect::OnViolation::Quarantine)
            {
                let keep = match &h.quarantine_retention {
                    Some(r) => parse_every("quarantine_retention", r)?,
                    None => QUARANTINE_RETENTION,
                };
                out.push(Upkeep {
                    target: node.model.target.quarantine()?,
                    op: UpkeepOp::QuarantineCleanup,
                    // Daily, or more often for a retention under a day.
                    every: keep.min(std::time::Duration::from_secs(86_400)),
                    cleanup: Some((d.pipeline.run_as.clone(), keep)),
                });
            }
        }
        Ok(out)
    }

    /// The tables whose standalone checks run on a period (`every`).
    pub(crate) async fn checks_upkeep(&self) -> Result<Vec<Upkeep>> {
        Ok(self
            .all_checks()
            .await?
            .into_iter()
            .filter_map(|c| {
                Some(Upkeep {
                    target: TableRef::parse(&c.table).ok()?,
                    op: UpkeepOp::Checks,
                    every: c.def.every()?,
                    cleanup: None,
                })
            })
            .collect())
    }

    /// Runs `u` on its table as the server: the deployer's MANAGE on the target's layer,
    /// checked at deploy, allowed it (as it allowed creating the table). A VACUUM keeps
    /// what models downstream still need, as every VACUUM does. What it did, for the log.
    pub(crate) async fn maintain(&self, u: &Upkeep) -> Result<String> {
        let p = Arc::new(Principal {
            subject: SCHEDULER.into(),
            roles: [self.records.admin_role().to_string()].into(),
            claims: Default::default(),
        });
        match u.op {
            UpkeepOp::Optimize => {
                let o = self
                    .engine
                    .optimize(
                        &p,
                        &u.target,
                        crate::pipelines::maintenance::OptimizeSpec::default(),
                    )
                    .await?;
                Ok(format!(
                    "{} files compacted into {}",
                    o.files_removed, o.files_added
                ))
            }
            UpkeepOp::Vacuum => {
                let o = self
                    .engine
                    .vacuum(&p, &u.target, None, false, false)
                    .await?;
                Ok(format!(
                    "{} files and {} log files removed",
                    o.files.len(),
                    o.logs_removed
                ))
            }
            UpkeepOp::QuarantineCleanup => {
                let Some((run_as, keep)) = &u.cleanup else {
                    return Err(Error::internal(
                        "a quarantine cleanup without its retention",
                    ));
                };
                if !self.engine.catalog().exists(&u.target).await? {
                    return Ok("nothing quarantined yet".into());
                }
                // As the pipeline's run-as principal: it wrote the rows, so it sees them.
                let p = self.principal_named(run_as)?;
                let before = self.clock.now()
                    - chrono::Duration::from_std(*keep).unwrap_or(chrono::Duration::MAX);
                self.engine
                    .query_rows(
                        &p,
                        &format!(
                            "DELETE FROM {} WHERE {} < $1",
                            u.target,
                            crate::engine::expect::QUARANTINED_AT
                        ),
                        vec![datafusion::common::ScalarValue::TimestampMicrosecond(
                            Some(before.timestamp_micros()),
                            Some("UTC".into()),
                        )],
                    )
                    .await?;
                Ok(format!(
                    "rows quarantined before {} deleted",
                    before.to_rfc3339()
                ))
            }
            UpkeepOp::Checks => {
                let Some(checks) = self.stored_checks(&u.target).await? else {
                    return Ok("the checks were removed".into());
                };
                let run = self.execute_checks(&u.target, &checks).await?;
                Ok(format!(
                    "{} checks, {} failed",
                    run.results.len(),
                    run.results.iter().filter(|r| !r.passed).count()
                ))
            }
        }
    }

    /// Pauses the scheduling of `name` (manual runs still run); its pause.
    pub async fn pause(&self, p: &Arc<Principal>, name: &str) -> Result<Pause> {
        self.check_manage(p, name).await?;
        let pause = Pause {
            paused_by: p.subject.clone(),
            paused_at: self.clock.now(),
        };
        self.store.pause(name, &pause).await?;
        Ok(pause)
    }

    /// Resumes the scheduling of `name`: slots from now on run (paused ones stay `paused`).
    pub async fn resume(&self, p: &Arc<Principal>, name: &str) -> Result<()> {
        self.check_manage(p, name).await?;
        self.store.resume(name).await
    }

    async fn check_manage(&self, p: &Arc<Principal>, name: &str) -> Result<()> {
        self.managed(p, name).await?;
        Ok(())
    }
}
