//! Pull connectors: REST APIs read page by page into a table, exactly once (PLATFORM P6).
//!
//! A definition ([`definition`]) is deployed over REST (admin); a run ([`sync`]) fetches
//! pages through the egress policy ([`egress`]: allow-list, pinned addresses, rate limit,
//! retries, 429 waits, size cap), maps their records ([`records`]) and commits a checkpoint
//! every `checkpoint_pages` pages: the rows and the sync's position in one Delta commit.
//! Runs start on request (`POST /api/v1/connectors/{name}/runs`) or from the schedule the
//! scheduler's leader keeps. Each run ends in a status document
//! (`_strata/connectors/status/<name>/`): the last run, the consecutive failures, and the
//! pause the circuit breaker sets after `pause_after_failures` of them.

pub(crate) mod auth;
pub mod definition;
pub(crate) mod egress;
pub(crate) mod records;
pub mod sync;

use std::collections::HashMap;
use std::num::NonZeroU32;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use governor::{Quota, RateLimiter};
use serde::{Deserialize, Serialize};
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

use crate::clock::Clock;
use crate::config::ConnectorsConfig;
use crate::engine::Engine;
use crate::error::{Error, Result};
use crate::security::Principal;
use crate::security::principal::ServicePrincipals;
use crate::security::secrets::Secrets;
use crate::storage::TableRef;
use crate::storage::catalog::TableSpec;
use crate::storage::types::ColumnSpec;
pub(crate) use auth::Auth;
use definition::{CONNECTOR, Connector, ConnectorSpec, ConnectorStore, EXTRACTED_AT, RUN_ID};
use egress::{Egress, Rules, Session};
use sync::Checkpoint;
pub use sync::Window;

/// Problems of `[connectors]` (its secrets are checked with the rest of the config).
pub(crate) fn config_problems(cfg: &ConnectorsConfig) -> Vec<String> {
    cfg.allowed_hosts
        .iter()
        .filter_map(|h| egress::Allowed::parse(h).err())
        .map(|e| format!("connectors.allowed_hosts: {e}"))
        .collect()
}

/// How a run ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum RunStatus {
    Running,
    Succeeded,
    Failed,
    Cancelled,
}

/// What one run did.
#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
pub struct RunReport {
    pub run_id: String,
    /// A backfill's window (absent: the main sync).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub window: Option<Window>,
    pub status: RunStatus,
    /// `manual` or `schedule`.
    pub trigger: String,
    pub started_at: DateTime<Utc>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ended_at: Option<DateTime<Utc>>,
    /// It went on from an unfinished sync's last checkpoint.
    pub resumed: bool,
    /// The lower bound it asked from (incremental).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub since: Option<String>,
    pub pages: u64,
    pub records: u64,
    pub rows: u64,
    pub dead_letters: u64,
    pub requests: u64,
    pub retries: u64,
    /// Seconds spent waiting on the rate limit and on 429s.
    pub rate_limited_secs: f64,
    pub checkpoints: u64,
    /// The table version of its last checkpoint.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub version: Option<u64>,
    /// The cursor after its last checkpoint.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cursor: Option<String>,
    /// It stopped at `max_pages` with pages left: the next run goes on.
    pub more: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// The circuit breaker's pause.
#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Paused {
    pub at: DateTime<Utc>,
    pub reason: String,
}

/// A connector's status document.
#[derive(Debug, Clone, Default, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Status {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_run: Option<RunReport>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_success: Option<DateTime<Utc>>,
    pub consecutive_failures: u32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub paused: Option<Paused>,
}

/// A run in progress on this replica.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct Running {
    pub run_id: String,
    pub started_at: DateTime<Utc>,
    pub pages: u64,
    pub records: u64,
}

/// What `GET /api/v1/connectors/{name}` shows.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct ConnectorView {
    #[serde(flatten)]
    pub connector: Connector,
    /// `idle`, `running`, `failing` (its last run failed) or `paused`.
    pub state: &'static str,
    pub status: Status,
    /// On this replica.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub running: Option<Running>,
    /// The latest checkpoint: cursor and, mid-sync, where it goes on.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub checkpoint: Option<Checkpoint>,
}

/// Counters of a run in progress.
#[derive(Debug)]
pub(crate) struct Live {
    run_id: String,
    started_at: DateTime<Utc>,
    pages: AtomicU64,
    records: AtomicU64,
    cancel: CancellationToken,
}

impl Live {
    fn progress(&self, pages: u64, records: u64) {
        self.pages.store(pages, Ordering::Relaxed);
        self.records.store(records, Ordering::Relaxed);
    }

    fn view(&self) -> Running {
        Running {
            run_id: self.run_id.clone(),
            started_at: self.started_at,
            pages: self.pages.load(Ordering::Relaxed),
            records: self.records.load(Ordering::Relaxed),
        }
    }
}

/// What the scheduler's leader remembers of a connector's schedule.
#[derive(Debug, Clone, Copy)]
struct Slot {
    last: DateTime<Utc>,
}

#[derive(Debug)]
pub struct Connectors {
    engine: Arc<Engine>,
    store: ConnectorStore,
    secrets: Secrets,
    egress: Egress,
    principals: ServicePrincipals,
    clock: Arc<dyn Clock>,
    running: Mutex<HashMap<String, Arc<Live>>>,
    tokens: Mutex<HashMap<String, (String, Instant)>>,
    slots: Mutex<HashMap<String, Slot>>,
    /// Scheduled definitions as last listed, with when.
    scheduled: Mutex<Option<(Instant, Vec<Connector>)>>,
}

/// How often the leader lists the definitions again for their schedules.
const SCHEDULE_REFRESH: Duration = Duration::from_secs(10);

impl Connectors {
    pub fn new(
        engine: Arc<Engine>,
        cfg: &ConnectorsConfig,
        dev: bool,
        principals: ServicePrincipals,
        clock: Arc<dyn Clock>,
    ) -> Connectors {
        Connectors {
            store: ConnectorStore::new(Arc::clone(engine.catalog().warehouse().store())),
            engine,
            secrets: Secrets::new(&cfg.secrets),
            egress: Egress::new(&cfg.allowed_hosts, dev),
            principals,
            clock,
            running: Mutex::new(HashMap::new()),
            tokens: Mutex::new(HashMap::new()),
            slots: Mutex::new(HashMap::new()),
            scheduled: Mutex::new(None),
        }
    }

    /// Creates or replaces `name` (admin only: the caller checks), creating its table when
    /// absent. Secrets, hosts, the writer and the table are checked now.
    pub async fn put(
        &self,
        p: &Arc<Principal>,
        name: &str,
        spec: ConnectorSpec,
    ) -> Result<Connector> {
        definition::check_name(name)?;
        spec.check()?;
        for s in spec.secrets() {
            self.secrets.resolve(s)?;
        }
        for u in spec.urls() {
            let url = url::Url::parse(u).map_err(|e| Error::invalid(format!("{u}: {e}")))?;
            self.egress.check(&url).await.map_err(|e| match e {
                Error::PermissionDenied(m) => Error::invalid(m),
                other => other,
            })?;
        }
        let writer = self.principals.get(&spec.run_as)?;
        let t = TableRef::parse(&spec.table)?;
        if t.is_reserved() {
            return Err(Error::invalid(format!(
                "table {t}: names ending {} are Strata's own",
                crate::storage::RESERVED_SUFFIXES.join(" or ")
            )));
        }
        if !self.engine.catalog().exists(&t).await? {
            let table = TableSpec {
                columns: table_columns(&spec),
                partition_by: Vec::new(),
                description: Some(format!("Records of connector {name}")),
                properties: [(
                    crate::storage::properties::CHANGE_DATA_FEED.to_string(),
                    "true".to_string(),
                )]
                .into(),
            };
            self.engine.create_table(p, &t, &table, true).await?;
        }
        let schema = self.engine.table_arrow_schema(&t).await?;
        records::Mapper::new(name, &spec, schema)?;
        let access = self.engine.access().await?;
        let mut needed = vec![crate::security::Privilege::Insert];
        if spec.mode != definition::SyncMode::Append {
            needed.push(crate::security::Privilege::Modify);
        }
        for privilege in needed {
            access.check(&writer, privilege, &t).map_err(|_| {
                Error::invalid(format!(
                    "run_as: service principal {} has no {privilege:?} on {t}; grant it first",
                    spec.run_as
                ))
            })?;
        }
        let previous = self.store.latest(name).await?;
        let c = Connector {
            name: name.to_string(),
            version: previous.map_or(0, |c| c.version + 1),
            updated_at: Utc::now(),
            updated_by: p.subject.clone(),
            spec,
            deleted: false,
        };
        self.store.store(&c).await.map_err(|e| match e {
            Error::Conflict(_) => Error::Conflict(format!(
                "connector {name} was changed concurrently; read it again and retry"
            )),
            other => other,
        })?;
        self.forget_schedules();
        Ok(c)
    }

    fn forget_schedules(&self) {
        if let Ok(mut s) = self.scheduled.lock() {
            *s = None;
        }
    }

    async fn definition(&self, name: &str) -> Result<Connector> {
        definition::check_name(name)?;
        match self.store.latest(name).await? {
            Some(c) if !c.deleted => Ok(c),
            _ => Err(Error::NotFound(format!("connector {name} not found"))),
        }
    }

    pub async fn get(&self, name: &str) -> Result<ConnectorView> {
        let c = self.definition(name).await?;
        let status = self
            .store
            .status(name)
            .await?
            .map(|(_, s)| s)
            .unwrap_or_default();
        let running = self
            .running
            .lock()
            .ok()
            .and_then(|r| r.get(name).map(|l| l.view()));
        let t = TableRef::parse(&c.spec.table)?;
        let checkpoint = sync::latest(&self.engine, &t, name, None).await?;
        let state = if running.is_some() {
            "running"
        } else if status.paused.is_some() {
            "paused"
        } else if status
            .last_run
            .as_ref()
            .is_some_and(|r| r.status == RunStatus::Failed)
        {
            "failing"
        } else {
            "idle"
        };
        Ok(ConnectorView {
            connector: c,
            state,
            status,
            running,
            checkpoint,
        })
    }

    pub async fn list(&self) -> Result<Vec<Connector>> {
        let mut out = Vec::new();
        for name in self.store.names().await? {
            if let Some(c) = self.store.latest(&name).await?
                && !c.deleted
            {
                out.push(c);
            }
        }
        Ok(out)
    }

    /// Deletes `name` (its table, checkpoints and dead letters stay); a run in progress here
    /// stops before its next page.
    pub async fn delete(&self, p: &Arc<Principal>, name: &str) -> Result<()> {
        let c = self.definition(name).await?;
        let gone = Connector {
            version: c.version + 1,
            updated_at: Utc::now(),
            updated_by: p.subject.clone(),
            deleted: true,
            ..c
        };
        self.store.store(&gone).await?;
        if let Ok(r) = self.running.lock()
            && let Some(l) = r.get(name)
        {
            l.cancel.cancel();
        }
        self.forget_schedules();
        Ok(())
    }

    /// Lifts the circuit breaker's pause.
    pub async fn resume(&self, name: &str) -> Result<Status> {
        self.definition(name).await?;
        self.update_status(name, |s| {
            s.paused = None;
            s.consecutive_failures = 0;
        })
        .await
    }

    /// Starts a run of `name` here (of a backfill `window`: its own checkpoints, the main
    /// cursor untouched); `wait`: answers once it ended. Refused while one runs on this
    /// replica or the circuit breaker paused it.
    pub async fn run(
        self: &Arc<Self>,
        name: &str,
        trigger: &str,
        window: Option<Window>,
        wait: bool,
    ) -> Result<RunReport> {
        let c = self.definition(name).await?;
        if let Some(w) = &window {
            let Some(inc) = &c.spec.incremental else {
                return Err(Error::invalid(format!(
                    "connector {name} is not incremental: a backfill window bounds its [incremental] field"
                )));
            };
            if inc.until_param.is_none() {
                return Err(Error::invalid(format!(
                    "connector {name} has no incremental.until_param: the API must be told where a backfill window ends"
                )));
            }
            if w.from.is_empty() || w.to.is_empty() || w.from == w.to {
                return Err(Error::invalid(
                    "a backfill window needs from and to, different",
                ));
            }
            let t = TableRef::parse(&c.spec.table)?;
            if let Some(done) = sync::latest(&self.engine, &t, name, Some(w)).await?
                && done.resume.is_none()
            {
                return Err(Error::AlreadyExists(format!(
                    "connector {name}'s window [{}, {}) was backfilled completely (checkpoint {}, run {})",
                    w.from, w.to, done.seq, done.run_id
                )));
            }
        }
        let status = self
            .store
            .status(name)
            .await?
            .map(|(_, s)| s)
            .unwrap_or_default();
        if let Some(p) = &status.paused {
            return Err(Error::Conflict(format!(
                "connector {name} is paused since {}: {}; POST /api/v1/connectors/{name}/resume to run it again",
                p.at, p.reason
            )));
        }
        let run_id = uuid::Uuid::new_v4().to_string();
        let started_at = self.clock.now();
        let live = Arc::new(Live {
            run_id: run_id.clone(),
            started_at,
            pages: AtomicU64::new(0),
            records: AtomicU64::new(0),
            cancel: CancellationToken::new(),
        });
        {
            let mut running = self
                .running
                .lock()
                .map_err(|_| Error::internal("connector runs poisoned"))?;
            if let Some(other) = running.get(name) {
                return Err(Error::Conflict(format!(
                    "connector {name} is running (run {}); wait for it to end",
                    other.run_id
                )));
            }
            running.insert(name.to_string(), Arc::clone(&live));
        }
        let report = RunReport {
            run_id,
            window: window.clone(),
            status: RunStatus::Running,
            trigger: trigger.to_string(),
            started_at,
            ended_at: None,
            resumed: false,
            since: None,
            pages: 0,
            records: 0,
            rows: 0,
            dead_letters: 0,
            requests: 0,
            retries: 0,
            rate_limited_secs: 0.0,
            checkpoints: 0,
            version: None,
            cursor: None,
            more: false,
            error: None,
        };
        let this = Arc::clone(self);
        let started = report.clone();
        let task = tokio::spawn(async move { this.execute(c, live, report).await });
        if !wait {
            return Ok(started);
        }
        task.await
            .map_err(|e| Error::internal(format!("connector run task: {e}")))
    }

    async fn execute(&self, c: Connector, live: Arc<Live>, mut report: RunReport) -> RunReport {
        let name = c.name.clone();
        let span = tracing::info_span!("connector_run", connector = %name, run_id = %report.run_id);
        let trigger = report.trigger.clone();
        let result = async {
            tracing::info!(%trigger, "connector run started");
            self.sync(&c, &live, &mut report).await
        }
        .instrument(span)
        .await;
        report.status = sync::status_of(&result);
        report.ended_at = Some(self.clock.now());
        if let Err(e) = &result {
            report.error = Some(e.to_string());
            tracing::warn!(connector = %name, run_id = %report.run_id, error = %e, "connector run failed");
        } else {
            tracing::info!(connector = %name, run_id = %report.run_id, pages = report.pages, records = report.records, "connector run succeeded");
        }
        crate::telemetry::metrics().connector_run(&name, report_outcome(report.status));
        let breaker = c.spec.pause_after_failures;
        let ended = report.clone();
        let now = self.clock.now();
        let stored = self
            .update_status(&name, move |s| {
                match ended.status {
                    RunStatus::Succeeded => {
                        s.consecutive_failures = 0;
                        s.last_success = ended.ended_at;
                    }
                    RunStatus::Failed => {
                        s.consecutive_failures += 1;
                        if s.consecutive_failures >= breaker && s.paused.is_none() {
                            s.paused = Some(Paused {
                                at: now,
                                reason: format!(
                                    "{} consecutive failed runs (pause_after_failures = {breaker}); last error: {}",
                                    s.consecutive_failures,
                                    ended.error.clone().unwrap_or_default()
                                ),
                            });
                        }
                    }
                    _ => {}
                }
                s.last_run = Some(ended.clone());
            })
            .await;
        if let Err(e) = stored {
            tracing::warn!(connector = %name, error = %e, "recording the connector run failed");
        }
        if let Ok(mut r) = self.running.lock() {
            r.remove(&name);
        }
        report
    }

    async fn sync(&self, c: &Connector, live: &Live, report: &mut RunReport) -> Result<()> {
        let spec = &c.spec;
        let writer = self.principals.get(&spec.run_as)?;
        let table = TableRef::parse(&spec.table)?;
        let dead_table = TableRef {
            layer: table.layer,
            name: format!("{}__dead_letter", table.name),
        };
        let schema = self.engine.table_arrow_schema(&table).await?;
        let mapper = records::Mapper::new(&c.name, spec, schema)?;
        let secret = spec
            .secrets()
            .first()
            .map(|s| self.secrets.resolve(s))
            .transpose()?;
        let limiter = spec.rate_limit.map(|r| {
            let n = |v: u32| NonZeroU32::new(v).unwrap_or(NonZeroU32::MIN);
            // Smooth by default: a burst only when asked for, so the API never sees more
            // than the rate in any second.
            RateLimiter::direct(
                Quota::per_second(n(r.per_second)).allow_burst(n(r.burst.unwrap_or(1))),
            )
        });
        let rules = Rules {
            max_attempts: spec.retry.max_attempts,
            statuses: spec.retry.statuses.clone(),
            base: Duration::from_millis(spec.retry.base_ms),
            cap: Duration::from_millis(spec.retry.max_ms),
            max_rate_limited: Duration::from_secs(spec.retry.max_rate_limited_secs),
            timeout: Duration::from_secs(spec.request.timeout_secs),
            max_bytes: spec.max_response_bytes,
        };
        let s = sync::Sync {
            engine: &self.engine,
            name: &c.name,
            spec,
            writer,
            table,
            dead_table,
            dead_schema: sync::dead_schema(),
            mapper,
            session: Session::new(&self.egress, &c.name, rules, limiter),
            auth: Auth {
                spec: spec.auth.as_ref(),
                secret,
                tokens: &self.tokens,
                connector: &c.name,
            },
            clock: self.clock.as_ref(),
            cancel: live.cancel.clone(),
            live,
            window: report.window.clone(),
        };
        let run_id = report.run_id.clone();
        s.run(&run_id, report).await
    }

    async fn update_status(&self, name: &str, change: impl Fn(&mut Status)) -> Result<Status> {
        for _ in 0..5 {
            let (version, mut status) = match self.store.status(name).await? {
                Some((v, s)) => (v + 1, s),
                None => (0, Status::default()),
            };
            change(&mut status);
            match self.store.put_status(name, version, &status).await {
                Ok(()) => return Ok(status),
                Err(Error::Conflict(_)) => continue,
                Err(e) => return Err(e),
            }
        }
        Err(Error::Conflict(format!(
            "connector {name}'s status kept changing concurrently"
        )))
    }

    /// The scheduler leader's look at the connectors' schedules: starts the runs whose slot
    /// came (at most one per connector per look: missed slots are not caught up), and says
    /// when the next one is due.
    pub async fn schedule(self: &Arc<Self>) -> Result<Option<DateTime<Utc>>> {
        let listed = match self.scheduled.lock().ok().and_then(|s| s.clone()) {
            Some((at, list)) if at.elapsed() < SCHEDULE_REFRESH => list,
            _ => {
                let list: Vec<Connector> = self
                    .list()
                    .await?
                    .into_iter()
                    .filter(|c| c.spec.schedule.is_some())
                    .collect();
                if let Ok(mut s) = self.scheduled.lock() {
                    *s = Some((Instant::now(), list.clone()));
                }
                list
            }
        };
        let now = self.clock.now();
        let mut wake: Option<DateTime<Utc>> = None;
        for c in listed {
            let Some(schedule) = c.spec.trigger().schedule()? else {
                continue;
            };
            let last = {
                let Ok(mut slots) = self.slots.lock() else {
                    continue;
                };
                slots
                    .entry(c.name.clone())
                    .or_insert(Slot { last: now })
                    .last
            };
            let (due, _) = schedule.due(last, now, 1);
            if !due.is_empty() {
                if let Ok(mut slots) = self.slots.lock() {
                    slots.insert(c.name.clone(), Slot { last: now });
                }
                match self.run(&c.name, "schedule", None, false).await {
                    Ok(r) => {
                        tracing::info!(connector = %c.name, run_id = %r.run_id, "scheduled connector run")
                    }
                    Err(e) => {
                        tracing::info!(connector = %c.name, error = %e, "scheduled connector run not started")
                    }
                }
            }
            if let Some(next) = schedule.next_after(now) {
                wake = Some(wake.map_or(next, |w| w.min(next)));
            }
        }
        Ok(wake)
    }

    /// Forgets the schedules' slots (this replica stopped leading).
    pub(crate) fn reset_schedule(&self) {
        if let Ok(mut s) = self.slots.lock() {
            s.clear();
        }
    }
}

fn report_outcome(s: RunStatus) -> &'static str {
    match s {
        RunStatus::Running => "running",
        RunStatus::Succeeded => "succeeded",
        RunStatus::Failed => "failed",
        RunStatus::Cancelled => "cancelled",
    }
}

/// The target's columns when Strata creates it.
fn table_columns(spec: &ConnectorSpec) -> Vec<ColumnSpec> {
    let column = |name: &str, data_type: &str, nullable: bool, description: &str| ColumnSpec {
        name: name.into(),
        data_type: data_type.into(),
        nullable,
        description: Some(description.into()),
    };
    let mut out: Vec<ColumnSpec> = spec
        .records
        .fields
        .iter()
        .map(|f| ColumnSpec {
            name: f.name.clone(),
            data_type: f.data_type.clone(),
            nullable: f.nullable,
            description: f.path.as_ref().map(|p| format!("From {p}")),
        })
        .collect();
    if let Some(raw) = &spec.records.raw_column {
        out.push(column(raw, "STRING", true, "The record as received (JSON)"));
    }
    out.push(column(
        CONNECTOR,
        "STRING",
        false,
        "The connector that wrote it",
    ));
    out.push(column(RUN_ID, "STRING", false, "The run that fetched it"));
    out.push(column(
        EXTRACTED_AT,
        "TIMESTAMP",
        false,
        "When it was fetched (UTC)",
    ));
    out
}
