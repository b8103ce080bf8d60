//! The rows of `system.expectation_results` and `system.audit_results` (PLATFORM P4): what
//! a run's expectations and audits, a pipeline's source freshness and a table's standalone
//! checks found, as `flows::records` appends them.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use super::record::{RunRecord, RunStatus};

/// A row of `system.expectation_results`: one expectation of one model in one run.
#[derive(Debug, Serialize, Deserialize)]
pub(crate) struct ExpectationRow {
    pub(crate) run_id: String,
    pub(crate) pipeline: String,
    pub(crate) model: String,
    pub(crate) expectation: String,
    pub(crate) action: String,
    /// Rows evaluated, rows that satisfied the check, rows that did not.
    pub(crate) rows: i64,
    pub(crate) passed: i64,
    pub(crate) failed: i64,
    /// Up to 10 failing rows as JSON (as the run-as principal saw them); shown only to
    /// principals who MANAGE every table in `sources`.
    #[serde(default)]
    pub(crate) samples: Option<String>,
    /// The model's sources, comma-separated.
    pub(crate) sources: String,
    /// The model's table version after the run's last commit (none when nothing was
    /// committed).
    #[serde(default)]
    pub(crate) table_version: Option<i64>,
    /// The run's model status (`failed` when an expectation refused a batch).
    pub(crate) status: RunStatus,
    pub(crate) recorded_at: DateTime<Utc>,
}

/// A row of `system.audit_results`: one audit of one table version.
#[derive(Debug, Serialize, Deserialize)]
pub(crate) struct AuditRow {
    #[serde(default)]
    pub(crate) run_id: Option<String>,
    #[serde(default)]
    pub(crate) pipeline: Option<String>,
    pub(crate) table_name: String,
    pub(crate) audit: String,
    pub(crate) audit_type: String,
    pub(crate) severity: String,
    pub(crate) passed: bool,
    pub(crate) failed: i64,
    #[serde(default)]
    pub(crate) detail: Option<String>,
    /// Up to 10 failing rows as JSON; shown only to principals who MANAGE `sources`.
    #[serde(default)]
    pub(crate) samples: Option<String>,
    pub(crate) sources: String,
    #[serde(default)]
    pub(crate) table_version: Option<i64>,
    pub(crate) checked_at: DateTime<Utc>,
    /// `model` (a pipeline run's audit) or `checks` (a table's standalone checks).
    pub(crate) origin: String,
}

impl ExpectationRow {
    /// A row per expectation of each model of `r`.
    pub(crate) fn of_run(r: &RunRecord, now: DateTime<Utc>) -> Vec<ExpectationRow> {
        r.models
            .iter()
            .flat_map(|m| {
                m.expectations.iter().map(move |e| ExpectationRow {
                    run_id: r.run_id.clone(),
                    pipeline: r.pipeline.clone(),
                    model: m.model.clone(),
                    expectation: e.name.clone(),
                    action: e.action.as_str().to_string(),
                    rows: to_i64(e.rows),
                    passed: to_i64(e.rows.saturating_sub(e.failed)),
                    failed: to_i64(e.failed),
                    samples: (!e.samples.is_empty())
                        .then(|| serde_json::to_string(&e.samples).unwrap_or_default()),
                    sources: m
                        .sources
                        .iter()
                        .map(|s| s.table.as_str())
                        .collect::<Vec<_>>()
                        .join(","),
                    table_version: m.target_version.map(to_i64),
                    status: m.status,
                    recorded_at: now,
                })
            })
            .collect()
    }
}

impl AuditRow {
    pub(crate) fn of(
        r: &super::audit::AuditResult,
        table: &str,
        run: Option<(&str, &str)>,
        origin: &str,
        at: DateTime<Utc>,
    ) -> AuditRow {
        AuditRow {
            run_id: run.map(|(id, _)| id.to_string()),
            pipeline: run.map(|(_, p)| p.to_string()),
            table_name: table.to_string(),
            audit: r.audit.clone(),
            audit_type: serde_json::to_value(r.kind)
                .ok()
                .and_then(|v| v.as_str().map(str::to_string))
                .unwrap_or_default(),
            severity: r.severity.as_str().to_string(),
            passed: r.passed,
            failed: to_i64(r.failed),
            detail: r.detail.clone(),
            samples: (!r.samples.is_empty())
                .then(|| serde_json::to_string(&r.samples).unwrap_or_default()),
            sources: table.to_string(),
            table_version: r.table_version.map(to_i64),
            checked_at: at,
            origin: origin.to_string(),
        }
    }
}

/// A count as the records' BIGINT columns store it (saturating).
pub(super) fn to_i64(v: u64) -> i64 {
    i64::try_from(v).unwrap_or(i64::MAX)
}
