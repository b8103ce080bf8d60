//! The scheduler (PLATFORM P3): one leader among the replicas sharing a warehouse runs
//! pipelines on their own.
//!
//! ```text
//! every replica, a third of the TTL:  lease tick (lease) ─▶ leads? epoch? replicas alive?
//! the leader, every second or when its clock jumps or a slot is due:
//!   per deployed pipeline with [trigger] (flows::triggered):
//!     cron: slots in (newest claimed slot, now] (flows::schedule::Schedule::due)
//!           ─▶ catchup all | latest | none ─▶ per slot, oldest first:
//!              paused                          → recorded `paused`
//!              max_concurrent_runs running     → due before they started: waits (a backlog)
//!                                                due after: recorded `skipped_overlap`
//!              otherwise                       → a run, its slot claimed in system.runs
//!     upstream: every poll_interval, a source moved past a model's watermark → a run
//!   per model with optimize_every / vacuum_every: once per period, OPTIMIZE / VACUUM
//!   every TTL: runs still open whose replica's heartbeat lapsed → `orphaned`
//! ```
//!
//! A slot is claimed by the commit of its `system.runs` row, which carries the marker
//! `strata:slot:<pipeline>` = the slot (a Delta `txn`): two leaders (a deposed one still
//! acting, say) cannot both claim it, and a new leader resumes after the newest claimed
//! slot. One marker per pipeline, its version the newest slot, rather than one `txn` per
//! slot: slots are claimed in order, so "claimed up to" says as much, and checkpoints do
//! not grow with every minute a schedule ever fired. Runs started by the scheduler carry
//! the epoch in their record and in every commit's info, and stop before their next model
//! or batch once this replica no longer leads; the data stays exactly once either way,
//! because every commit carries the watermarks it consumed (PLATFORM P1).

pub(crate) mod lease;

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, RwLock, Weak};
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use serde::Serialize;
use tokio_util::sync::CancellationToken;

use crate::clock::Clock;
use crate::config::SchedulerConfig;
use crate::error::Result;
use crate::flows::schedule::to_claim;
use crate::flows::{
    Catchup, Deployment, Fence, Flows, Origin, Pause, Route, RunStatus, Unit, UpkeepOp,
};
use crate::storage::TableRef;
pub use lease::Replica;
use lease::{Leadership, LeaseLog};

/// The least TTL a lease may have: S3 (and its stand-ins) report object times to the second.
pub(crate) const MIN_LEASE_TTL_SECS: u64 = 5;
/// How often the leader looks at its pipelines at the latest (it also wakes when a slot is
/// due or its clock jumps).
const TICK: Duration = Duration::from_secs(1);

/// Problems of `[scheduler]`.
pub(crate) fn config_problems(cfg: &SchedulerConfig) -> Vec<String> {
    let mut out = Vec::new();
    if cfg.lease_ttl_secs < MIN_LEASE_TTL_SECS {
        out.push(format!(
            "scheduler.lease_ttl_secs = {} is below {MIN_LEASE_TTL_SECS}: object stores report times to the second, so a shorter lease can be taken over while its holder still acts",
            cfg.lease_ttl_secs
        ));
    }
    if cfg.pipeline_memory_bytes < 32 * 1024 * 1024 {
        out.push("scheduler.pipeline_memory_bytes must be at least 32 MiB".to_string());
    }
    if cfg.pipeline_threads == Some(0) {
        out.push("scheduler.pipeline_threads must be at least 1".to_string());
    }
    if !(1..=1000).contains(&cfg.max_catchup_runs) {
        out.push(format!(
            "scheduler.max_catchup_runs = {} must lie in 1..=1000",
            cfg.max_catchup_runs
        ));
    }
    out
}

/// A replica as the scheduler last saw it.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct ReplicaSeen {
    pub id: String,
    /// When the store recorded its last heartbeat (the store's clock).
    pub last_seen: DateTime<Utc>,
}

/// A scheduled pipeline in `GET /api/v1/scheduler`.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct PipelineSchedule {
    pub pipeline: String,
    /// The model whose own trigger this is (`[trigger]` in its header); absent for the
    /// pipeline's trigger (its models without one of their own).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub model: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub schedule: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub timezone: Option<String>,
    pub catchup: Catchup,
    pub on_upstream_change: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub paused: Option<Pause>,
    /// The next slot after now.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub next_run: Option<DateTime<Utc>>,
    /// Its newest claimed slot.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub last_slot: Option<DateTime<Utc>>,
    /// Due slots waiting for a running run to end (`catchup = "all"`), as the leader last saw.
    pub queued: usize,
    /// Runs of it this replica is executing.
    pub running: usize,
}

/// `GET /api/v1/scheduler`, answered by every replica.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct SchedulerView {
    /// `[scheduler] enabled` on this replica.
    pub enabled: bool,
    /// This replica.
    pub replica: Replica,
    /// This replica leads now.
    pub is_leader: bool,
    /// The holder of the newest lease, when known.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub leader: Option<Replica>,
    /// The newest lease epoch (the fencing token; every renewal raises it).
    pub epoch: u64,
    pub lease_ttl_secs: u64,
    /// Replicas whose heartbeat the store saw within three TTLs.
    pub replicas: Vec<ReplicaSeen>,
    /// The scheduler's clock now.
    pub now: DateTime<Utc>,
    /// Pipelines with a `[trigger]`.
    pub pipelines: Vec<PipelineSchedule>,
    /// Why the last tick failed, while it does (this replica does not lead meanwhile).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// What the leader remembers of a pipeline between passes (lost on failover, on purpose:
/// nothing in it decides whether a slot runs).
#[derive(Debug, Default, Clone)]
struct Memory {
    next_poll: Option<DateTime<Utc>>,
    /// The sources' versions the last upstream run was started for.
    triggered_at: Option<BTreeMap<TableRef, u64>>,
    queued: usize,
}

#[derive(Debug)]
pub struct Scheduler {
    enabled: bool,
    lease: LeaseLog,
    state: RwLock<(Option<Leadership>, Option<String>)>,
    /// The epoch this replica took the lease at, while it holds it (renewals keep it): the
    /// fencing token its runs' commits carry (`storage::commit_info::FENCE_APP_ID`).
    term: Mutex<Option<u64>>,
    flows: Arc<Flows>,
    clock: Arc<dyn Clock>,
    max_catchup_runs: usize,
    memory: Mutex<BTreeMap<String, Memory>>,
    /// The period each scheduled OPTIMIZE / VACUUM last ran in (leader only).
    maintained: Mutex<BTreeMap<(TableRef, UpkeepOp), i64>>,
    /// Pull connectors with schedules, run by the leader too.
    connectors: std::sync::OnceLock<Arc<crate::connectors::Connectors>>,
}

/// The lease as the runs this leader started see it.
#[derive(Debug)]
struct LeaseFence(Weak<Scheduler>);

impl Fence for LeaseFence {
    fn term(&self) -> Option<u64> {
        let s = self.0.upgrade()?;
        s.leads_epoch()?;
        *s.term.lock().ok()?
    }
}

impl Scheduler {
    /// `address` is where this replica's REST API listens (shown to the others).
    pub fn new(flows: Arc<Flows>, address: String, cfg: &SchedulerConfig) -> Scheduler {
        let me = Replica {
            id: flows.replica().to_string(),
            address,
        };
        if cfg.enabled {
            // Until it leads, what it accepts goes to the leader (flows::requests).
            flows.set_route(Route::Leader);
        }
        Scheduler {
            enabled: cfg.enabled,
            lease: LeaseLog::new(
                flows.object_store(),
                me,
                Duration::from_secs(cfg.lease_ttl_secs),
            ),
            state: RwLock::new((None, None)),
            term: Mutex::new(None),
            clock: Arc::clone(flows.clock()),
            flows,
            max_catchup_runs: cfg.max_catchup_runs.max(1),
            memory: Mutex::new(BTreeMap::new()),
            maintained: Mutex::new(BTreeMap::new()),
            connectors: std::sync::OnceLock::new(),
        }
    }

    /// The connectors whose schedules the leader keeps as well.
    pub fn set_connectors(&self, connectors: Arc<crate::connectors::Connectors>) {
        let _ = self.connectors.set(connectors);
    }

    /// Takes part in the election and, while leading, runs the triggers, until `stop`.
    pub async fn run(self: Arc<Self>, stop: CancellationToken) {
        if !self.enabled {
            // Never leads, but still says it is alive: the leader marks runs `orphaned`
            // whose replica's heartbeat lapsed, and this replica runs manual runs too.
            let every = self.lease.ttl() / 3;
            loop {
                if let Err(e) = self.lease.heartbeat().await {
                    tracing::warn!(error = %e, "scheduler heartbeat failed");
                }
                tokio::select! {
                    () = stop.cancelled() => return,
                    () = tokio::time::sleep(every) => {}
                }
            }
        }
        tokio::join!(
            Arc::clone(&self).elect(stop.clone()),
            Arc::clone(&self).trigger(stop)
        );
        crate::telemetry::metrics().scheduler_is_leader.set(0);
    }

    /// The lease loop: a tick every third of the TTL.
    async fn elect(self: Arc<Self>, stop: CancellationToken) {
        let every = self.lease.ttl() / 3;
        loop {
            let led = self.leads_epoch().is_some();
            // The epoch won last, even if its validity lapsed locally: renewing it is safe
            // while nobody took over (creating the next epoch would then conflict).
            let held = self
                .state
                .read()
                .ok()
                .and_then(|s| s.0.as_ref().filter(|l| l.is_leader).map(|l| l.epoch));
            let result = self.lease.tick(held).await;
            let leads = match &result {
                Ok(l) => l.leads(),
                Err(_) => false,
            };
            if leads != led {
                let epoch = result.as_ref().map(|l| l.epoch).unwrap_or_default();
                tracing::info!(leads, epoch, "scheduler leadership changed");
            }
            if let Ok(mut term) = self.term.lock() {
                *term = match &result {
                    // Renewed what it held (nobody led in between, or the renewal would
                    // have conflicted): the same term.
                    Ok(l) if l.is_leader && held.is_some() => term.or(Some(l.epoch)),
                    Ok(l) if l.is_leader => Some(l.epoch),
                    _ => None,
                };
            }
            crate::telemetry::metrics()
                .scheduler_is_leader
                .set(i64::from(leads));
            self.flows
                .set_route(if leads { Route::Here } else { Route::Leader });
            if let Ok(mut state) = self.state.write() {
                *state = match result {
                    Ok(l) => (Some(l), None),
                    Err(e) => {
                        tracing::warn!(error = %e, "scheduler lease tick failed; not leading");
                        (
                            state.0.take().map(|mut l| {
                                l.is_leader = false;
                                l
                            }),
                            Some(e.to_string()),
                        )
                    }
                };
            }
            if led && !leads {
                // Deposed: what it started stops before its next model or batch.
                self.flows.cancel_triggered();
            }
            tokio::select! {
                () = stop.cancelled() => break,
                () = tokio::time::sleep(every) => {}
            }
        }
    }

    /// The trigger loop: a pass over the pipelines while leading.
    async fn trigger(self: Arc<Self>, stop: CancellationToken) {
        let mut orphans_checked: Option<Instant> = None;
        loop {
            let mut wake = None;
            if let Some(epoch) = self.leads_epoch() {
                if orphans_checked.is_none_or(|t| t.elapsed() >= self.lease.ttl()) {
                    orphans_checked = Some(Instant::now());
                    self.mark_orphans().await;
                }
                // Runs other replicas accepted (flows::requests).
                if let Err(e) = self.flows.take_requests(epoch).await {
                    tracing::warn!(error = %e, "taking run requests failed");
                }
                match self.pass(epoch).await {
                    Ok(next) => wake = next,
                    Err(e) => tracing::warn!(error = %e, "scheduler pass failed"),
                }
            } else {
                orphans_checked = None;
                if let Ok(mut m) = self.memory.lock() {
                    m.clear();
                }
                if let Ok(mut m) = self.maintained.lock() {
                    m.clear();
                }
                if let Some(c) = self.connectors.get() {
                    c.reset_schedule();
                }
            }
            let due = match wake {
                Some(t) => self.clock.sleep_until(t),
                None => Box::pin(std::future::pending()),
            };
            tokio::select! {
                () = stop.cancelled() => break,
                () = due => {}
                () = self.clock.changed() => {}
                () = tokio::time::sleep(TICK) => {}
            }
        }
    }

    async fn mark_orphans(&self) {
        let alive: Vec<String> = self
            .state
            .read()
            .ok()
            .and_then(|s| {
                s.0.as_ref()
                    .map(|l| l.replicas.iter().map(|(id, _)| id.clone()).collect())
            })
            .unwrap_or_default();
        // Heartbeats count as alive for three TTLs: a run younger than that may belong to a
        // replica that started since the last tick.
        let grace = chrono::Duration::from_std(self.lease.ttl() * 3).unwrap_or_default();
        match self.flows.mark_orphans(&alive, grace).await {
            Ok(marked) if !marked.is_empty() => {
                tracing::warn!(runs = ?marked, "runs of stopped replicas marked orphaned");
            }
            Ok(_) => {}
            Err(e) => tracing::warn!(error = %e, "looking for orphaned runs failed"),
        }
    }

    /// One look at every triggered pipeline; the earliest time something is due next.
    async fn pass(self: &Arc<Self>, epoch: u64) -> Result<Option<DateTime<Utc>>> {
        let mut wake: Option<DateTime<Utc>> = None;
        let mut soonest = |t: Option<DateTime<Utc>>| {
            if let Some(t) = t {
                wake = Some(wake.map_or(t, |w| w.min(t)));
            }
        };
        for (d, paused) in self.flows.deployments().await? {
            let name = d.name.clone();
            for unit in self.flows.units(&d)? {
                match self.unit(epoch, &d, &unit, paused.as_ref()).await {
                    Ok(next) => soonest(next),
                    Err(e) => {
                        tracing::warn!(pipeline = %name, unit = %unit.key, error = %e, "scheduling the pipeline failed")
                    }
                }
            }
            if paused.is_none() {
                match self.flows.upkeep(&d) {
                    Ok(work) => soonest(self.upkeep(work)),
                    Err(e) => {
                        tracing::warn!(pipeline = %name, error = %e, "scheduling table maintenance failed")
                    }
                }
            }
        }
        match self.flows.checks_upkeep().await {
            Ok(work) => soonest(self.upkeep(work)),
            Err(e) => tracing::warn!(error = %e, "scheduling standalone checks failed"),
        }
        if let Some(c) = self.connectors.get() {
            match c.schedule().await {
                Ok(next) => soonest(next),
                Err(e) => tracing::warn!(error = %e, "scheduling connectors failed"),
            }
        }
        Ok(wake)
    }

    /// Starts the periodic work (OPTIMIZE / VACUUM of models, quarantine cleanup, standalone
    /// checks) whose period turned: each once per period, counted from the Unix epoch; the
    /// first period a leader sees only starts the count. When the next period turns.
    fn upkeep(self: &Arc<Self>, work: Vec<crate::flows::Upkeep>) -> Option<DateTime<Utc>> {
        let now = self.clock.now();
        let mut next: Option<DateTime<Utc>> = None;
        for u in work {
            let every = i64::try_from(u.every.as_secs()).unwrap_or(i64::MAX).max(1);
            let period = now.timestamp().div_euclid(every);
            let turned = {
                let Ok(mut seen) = self.maintained.lock() else {
                    continue;
                };
                match seen.insert((u.target.clone(), u.op), period) {
                    Some(p) => p < period,
                    None => false,
                }
            };
            if turned {
                let flows = Arc::clone(&self.flows);
                tokio::spawn(async move {
                    let table = u.target.to_string();
                    let outcome = match flows.maintain(&u).await {
                        Ok(what) => {
                            tracing::info!(%table, op = u.op.key(), what, "scheduled table maintenance");
                            "ok"
                        }
                        Err(e) => {
                            tracing::warn!(%table, op = u.op.key(), error = %e, "scheduled table maintenance failed");
                            "failed"
                        }
                    };
                    crate::telemetry::metrics().scheduled_maintenance(&table, u.op.name(), outcome);
                });
            }
            let due = DateTime::from_timestamp(period.saturating_add(1).saturating_mul(every), 0);
            next = match (next, due) {
                (Some(a), Some(b)) => Some(a.min(b)),
                (a, b) => a.or(b),
            };
        }
        next
    }

    fn origin(
        self: &Arc<Self>,
        trigger: &'static str,
        slot: Option<DateTime<Utc>>,
        epoch: u64,
    ) -> Origin {
        Origin {
            trigger,
            scheduled_for: slot,
            epoch: Some(epoch),
            fence: Some(Arc::new(LeaseFence(Arc::downgrade(self)))),
        }
    }

    /// One scheduling unit's due slots and upstream poll (a pipeline's, or a model's own
    /// trigger: `flows::Unit`); when it is due next.
    async fn unit(
        self: &Arc<Self>,
        epoch: u64,
        d: &Deployment,
        unit: &Unit,
        paused: Option<&Pause>,
    ) -> Result<Option<DateTime<Utc>>> {
        let trigger = &unit.trigger;
        let name = &unit.key;
        let max = trigger.max_concurrent_runs();
        let mut memory = self
            .memory
            .lock()
            .map(|m| m.get(name).cloned().unwrap_or_default())
            .unwrap_or_default();
        let mut next = None;
        if let Some(schedule) = trigger.schedule()? {
            let now = self.clock.now();
            let anchor = self
                .flows
                .claimed_slot(name)
                .await?
                .unwrap_or(d.deployed_at);
            let (due, more) = schedule.due(anchor, now, self.max_catchup_runs);
            if more {
                tracing::warn!(pipeline = %name, kept = self.max_catchup_runs, "more slots were missed than [scheduler] max_catchup_runs; the older ones are skipped");
            }
            let late = chrono::Duration::from_std(self.lease.ttl()).unwrap_or_default();
            let slots = to_claim(trigger.catchup, &due, now, late);
            memory.queued = 0;
            for (i, slot) in slots.iter().copied().enumerate() {
                if let Some(p) = paused {
                    let why = format!(
                        "the pipeline was paused by {} at {}",
                        p.paused_by, p.paused_at
                    );
                    self.flows
                        .record_slot(d, unit, slot, RunStatus::Paused, epoch, why)
                        .await?;
                    continue;
                }
                let active = self.flows.active(&d.name, &unit.models);
                if active.len() >= max {
                    if active.iter().any(|started| *started >= slot) {
                        // Due before the running run started: a backlog, run in order.
                        memory.queued = slots.len() - i;
                        break;
                    }
                    let why = format!(
                        "{} run(s) of {} were still running (max_concurrent_runs = {max})",
                        active.len(),
                        unit.model.as_deref().unwrap_or("the pipeline")
                    );
                    self.flows
                        .record_slot(d, unit, slot, RunStatus::SkippedOverlap, epoch, why)
                        .await?;
                    continue;
                }
                let origin = self.origin("cron", Some(slot), epoch);
                if self.flows.start_triggered(d, unit, origin).await?.is_none() {
                    tracing::info!(pipeline = %name, %slot, "slot already claimed by another leader");
                }
            }
            next = schedule.next_after(now);
        }
        if trigger.on_upstream_change && paused.is_none() {
            let now = self.clock.now();
            if memory.next_poll.is_none_or(|t| now >= t) {
                memory.next_poll = Some(
                    now + chrono::Duration::from_std(trigger.poll_interval()).unwrap_or_default(),
                );
                if self.flows.active(&d.name, &unit.models).len() < max
                    && let Some(versions) = self.flows.upstream_moved(d, unit).await?
                    && memory.triggered_at.as_ref() != Some(&versions)
                {
                    let origin = self.origin("upstream", None, epoch);
                    self.flows.start_triggered(d, unit, origin).await?;
                    memory.triggered_at = Some(versions);
                }
            }
            next = match (next, memory.next_poll) {
                (Some(a), Some(b)) => Some(a.min(b)),
                (a, b) => a.or(b),
            };
        }
        if let Ok(mut m) = self.memory.lock() {
            m.insert(name.clone(), memory);
        }
        Ok(next)
    }

    /// The epoch this replica leads under, while it leads.
    pub(crate) fn leads_epoch(&self) -> Option<u64> {
        let state = self.state.read().ok()?;
        state.0.as_ref().filter(|l| l.leads()).map(|l| l.epoch)
    }

    pub async fn view(&self) -> Result<SchedulerView> {
        let (leadership, error) = self
            .state
            .read()
            .map(|s| s.clone())
            .unwrap_or((None, Some("scheduler state unreadable".into())));
        let now = self.clock.now();
        let memory = self.memory.lock().map(|m| m.clone()).unwrap_or_default();
        let mut pipelines = Vec::new();
        for (d, paused) in self.flows.deployments().await? {
            for unit in self.flows.units(&d)? {
                let trigger = unit.trigger;
                let schedule = trigger.schedule().ok().flatten();
                pipelines.push(PipelineSchedule {
                    next_run: schedule.as_ref().and_then(|s| s.next_after(now)),
                    last_slot: match schedule {
                        Some(_) => self.flows.claimed_slot(&unit.key).await?,
                        None => None,
                    },
                    queued: memory.get(&unit.key).map_or(0, |m| m.queued),
                    running: self.flows.active(&d.name, &unit.models).len(),
                    pipeline: d.name.clone(),
                    model: unit.model,
                    schedule: trigger.schedule,
                    timezone: trigger.timezone,
                    catchup: trigger.catchup,
                    on_upstream_change: trigger.on_upstream_change,
                    paused: paused.clone(),
                });
            }
        }
        Ok(SchedulerView {
            enabled: self.enabled,
            replica: self.lease.me().clone(),
            is_leader: leadership.as_ref().is_some_and(Leadership::leads),
            leader: leadership.as_ref().and_then(|l| l.leader.clone()),
            epoch: leadership.as_ref().map_or(0, |l| l.epoch),
            lease_ttl_secs: self.lease.ttl().as_secs(),
            replicas: leadership
                .map(|l| {
                    l.replicas
                        .into_iter()
                        .map(|(id, last_seen)| ReplicaSeen { id, last_seen })
                        .collect()
                })
                .unwrap_or_default(),
            now,
            pipelines,
            error,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn leases_shorter_than_the_stores_time_resolution_are_refused() {
        let cfg = |lease_ttl_secs| SchedulerConfig {
            lease_ttl_secs,
            ..SchedulerConfig::default()
        };
        assert!(config_problems(&cfg(15)).is_empty());
        assert!(config_problems(&cfg(MIN_LEASE_TTL_SECS)).is_empty());
        let p = config_problems(&cfg(2));
        assert!(
            p.len() == 1 && p[0].starts_with("scheduler.lease_ttl_secs"),
            "{p:?}"
        );
    }
}
