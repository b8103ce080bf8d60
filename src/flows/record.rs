//! What a run is, as records show it: `GET /api/v1/runs/{id}`, `system.runs` and
//! `system.model_runs` (a leaf of flows: the modules that run things all use it).

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use super::model::{BatchSize, Kind};
use crate::engine::expect::{BatchQuality, RuleTally};

/// The status of a run or of one model in it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum RunStatus {
    Queued,
    Running,
    Succeeded,
    Failed,
    UpstreamFailed,
    Cancelled,
    /// A source's changes since the watermark are gone (VACUUM or log retention).
    WatermarkExpired,
    /// A triggered run (or one of its models) found nothing new to commit.
    Skipped,
    /// A scheduled slot that came due while `max_concurrent_runs` runs were running.
    SkippedOverlap,
    /// A scheduled slot that came due while the pipeline was paused.
    Paused,
    /// The replica running it stopped (its heartbeat lapsed); marked by the leader.
    Orphaned,
    /// The model committed, and an audit of severity `error` failed on the new version:
    /// its downstream models did not run.
    AuditFailed,
    /// A source was older than its `error_after` at the run's start: nothing ran.
    StaleSource,
}

impl RunStatus {
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            RunStatus::Queued => "queued",
            RunStatus::Running => "running",
            RunStatus::Succeeded => "succeeded",
            RunStatus::Failed => "failed",
            RunStatus::UpstreamFailed => "upstream_failed",
            RunStatus::Cancelled => "cancelled",
            RunStatus::WatermarkExpired => "watermark_expired",
            RunStatus::Skipped => "skipped",
            RunStatus::SkippedOverlap => "skipped_overlap",
            RunStatus::Paused => "paused",
            RunStatus::Orphaned => "orphaned",
            RunStatus::AuditFailed => "audit_failed",
            RunStatus::StaleSource => "stale_source",
        }
    }

    /// The run (or model) will not change any more.
    pub(crate) fn is_terminal(self) -> bool {
        !matches!(self, RunStatus::Queued | RunStatus::Running)
    }
}

/// The versions of one source a model consumed in a run.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct SourceRange {
    pub table: String,
    /// First version read (changes) — for a whole-table read, the version read.
    pub from_version: u64,
    pub to_version: u64,
}

/// One model of a run.
#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
pub struct ModelRun {
    pub model: String,
    pub kind: Kind,
    pub status: RunStatus,
    /// Rows written (appended, overwritten, or inserted + updated + deleted by a merge).
    pub rows_out: u64,
    /// Changes left out as out of order (`scd2` with `on_out_of_order = "skip"`).
    pub rows_skipped: u64,
    /// Commits made (one per batch; 0 when nothing was new).
    pub commits: u64,
    pub sources: Vec<SourceRange>,
    /// The table version after the run's last commit.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub target_version: Option<u64>,
    pub duration_ms: u64,
    /// Attempts made (more than 1 when `[retry]` retried it).
    #[serde(default = "one")]
    pub attempts: u32,
    /// In a backfill: what it did for this model, batch by batch.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub backfill: Option<BackfillModel>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// Each expectation's outcome over the run's batches.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub expectations: Vec<RuleTally>,
    /// Rows left out by `drop` expectations.
    #[serde(default)]
    pub rows_dropped: u64,
    /// Rows written to the quarantine table.
    #[serde(default)]
    pub rows_quarantined: u64,
    /// What the model's audits found on the version the run committed.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub audits: Vec<super::audit::AuditResult>,
    /// Rows that failed a `quarantine` expectation after `quarantine_max_rows_per_run` was
    /// reached (left out of both tables).
    #[serde(default)]
    pub quarantine_over_cap: u64,
    /// An expectation refused a batch (retrying would decide the same).
    #[serde(skip)]
    pub(crate) refused: bool,
    /// The refused batch's sample rows (as the run-as principal saw them): shown only to
    /// principals who MANAGE the layers of the model and of its sources; kept in this
    /// replica's memory, and in `system.expectation_results.samples` under the same rule.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub failure_samples: Vec<serde_json::Value>,
}

fn one() -> u32 {
    1
}

impl ModelRun {
    pub(crate) fn new(model: String, kind: Kind, status: RunStatus) -> ModelRun {
        ModelRun {
            model,
            kind,
            status,
            rows_out: 0,
            rows_skipped: 0,
            commits: 0,
            sources: Vec::new(),
            target_version: None,
            duration_ms: 0,
            attempts: 1,
            backfill: None,
            error: None,
            expectations: Vec::new(),
            rows_dropped: 0,
            rows_quarantined: 0,
            audits: Vec::new(),
            quarantine_over_cap: 0,
            refused: false,
            failure_samples: Vec::new(),
        }
    }

    /// Adds what the expectations did to one batch.
    pub(crate) fn absorb(&mut self, q: &BatchQuality) {
        for rule in &q.rules {
            match self.expectations.iter_mut().find(|r| r.name == rule.name) {
                Some(r) => r.absorb(rule),
                None => self.expectations.push(rule.clone()),
            }
        }
        self.rows_dropped += q.dropped;
        self.rows_quarantined += q.quarantined;
        self.quarantine_over_cap += q.over_cap;
        self.refused |= q.refused.is_some();
        if q.refused.is_some() {
            self.failure_samples = q.refused_samples.clone();
        }
    }
}

/// A run as `GET /api/v1/runs/{id}` shows it.
#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
pub struct RunRecord {
    /// UUID v7: ordered by start.
    pub run_id: String,
    pub pipeline: String,
    pub pipeline_version: u64,
    /// `manual`, `cron` or `upstream`.
    pub trigger: String,
    /// The cron slot a scheduled run is for.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub scheduled_for: Option<DateTime<Utc>>,
    /// The scheduler lease epoch of the leader that started it (the fencing token).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub epoch: Option<u64>,
    /// The replica executing it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub replica: Option<String>,
    /// The backfill run this one resumes (`POST /api/v1/runs/{id}/resume`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resumes: Option<String>,
    pub requested_by: String,
    pub status: RunStatus,
    pub queued_at: DateTime<Utc>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub started_at: Option<DateTime<Utc>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ended_at: Option<DateTime<Utc>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    pub models: Vec<ModelRun>,
}

/// What a backfill does for one model.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum BackfillMode {
    /// Time range batches.
    Range,
    /// A full refresh.
    Refresh,
    /// An incremental run after the models it reads (`downstream`).
    Downstream,
}

/// `[start, end)`.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize, utoipa::ToSchema,
)]
pub struct Interval {
    pub start: DateTime<Utc>,
    pub end: DateTime<Utc>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct FailedBatch {
    pub start: DateTime<Utc>,
    pub end: DateTime<Utc>,
    pub error: String,
}

/// One model of a backfill, batch by batch.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct BackfillModel {
    pub mode: BackfillMode,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub batch_size: Option<BatchSize>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub parallelism: Option<usize>,
    /// Batches committed, merged into intervals.
    #[serde(default)]
    pub succeeded: Vec<Interval>,
    #[serde(default)]
    pub failed: Vec<FailedBatch>,
    /// Batches not committed yet (the run is going, was cancelled, or its replica stopped).
    #[serde(default)]
    pub pending: Vec<Interval>,
}
