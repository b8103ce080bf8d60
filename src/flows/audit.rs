//! Audits (PLATFORM P4): checks of a table version after it was committed: `unique`,
//! `not_null`, `accepted_values`, `relationships`, `row_count`, `freshness`, and `sql` (a
//! query returning failing rows). Each is one query through the policy-enforcing catalog as
//! the principal that runs it (a model's run-as principal), so it counts only rows that
//! principal may read. Severity `warn` records; `error` also marks the model
//! `audit_failed`, which stops its downstream models.
//!
//! On incremental models `unique` and `not_null` look only at the keys (rows) the run's
//! commits touched, read from the table's change feed: their cost follows the batch.

use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use datafusion::common::ScalarValue;
use serde::{Deserialize, Serialize};

use crate::engine::Engine;
use crate::error::{Error, Result};
use crate::security::Principal;
use crate::storage::TableRef;

/// Columns of `system.audit_results` (name, SQL type).
pub(crate) const COLUMNS: [(&str, &str); 14] = [
    ("run_id", "string"),
    ("pipeline", "string"),
    ("table_name", "string"),
    ("audit", "string"),
    ("audit_type", "string"),
    ("severity", "string"),
    ("passed", "boolean"),
    ("failed", "bigint"),
    ("detail", "string"),
    ("samples", "string"),
    ("sources", "string"),
    ("table_version", "bigint"),
    ("checked_at", "timestamp"),
    ("origin", "string"),
];

/// What an audit checks.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum AuditKind {
    /// No two rows share the values of `columns`.
    Unique,
    /// None of `columns` is NULL.
    NotNull,
    /// `column` (when not NULL) is one of `values`.
    AcceptedValues,
    /// Every non-NULL `column` exists as `field` of table `to`.
    Relationships,
    /// The table holds between `min` and `max` rows.
    RowCount,
    /// The newest `column` (or, without one, the last commit) is at most `max_age` old.
    Freshness,
    /// `sql` (a SELECT) returns the failing rows.
    Sql,
}

impl AuditKind {
    fn as_str(self) -> &'static str {
        match self {
            AuditKind::Unique => "unique",
            AuditKind::NotNull => "not_null",
            AuditKind::AcceptedValues => "accepted_values",
            AuditKind::Relationships => "relationships",
            AuditKind::RowCount => "row_count",
            AuditKind::Freshness => "freshness",
            AuditKind::Sql => "sql",
        }
    }
}

/// How much a failing audit matters.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum Severity {
    /// Recorded only.
    Warn,
    /// Recorded, and the model is `audit_failed`: its downstream models do not run.
    #[default]
    Error,
}

impl Severity {
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            Severity::Warn => "warn",
            Severity::Error => "error",
        }
    }
}

/// `[[audit]]` of a model header, or one audit of a table's standalone checks.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct AuditDef {
    /// Defaults to the type and its columns, e.g. `unique_id`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    #[serde(rename = "type")]
    pub kind: AuditKind,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub columns: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub column: Option<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub values: Vec<String>,
    /// `relationships`: the referenced table (`layer.name`) and its column.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub to: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub field: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub min: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max: Option<u64>,
    /// `freshness`: `"30m"`, `"6h"`, `"1d"`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_age: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sql: Option<String>,
    #[serde(default)]
    pub severity: Severity,
}

/// `"id"` → `"id"` quoted as an identifier.
fn ident(c: &str) -> String {
    format!("\"{}\"", c.replace('"', "\"\""))
}

fn literal(v: &str) -> String {
    format!("'{}'", v.replace('\'', "''"))
}

impl AuditDef {
    /// Its name in results.
    pub(crate) fn label(&self) -> String {
        self.name.clone().unwrap_or_else(|| {
            let mut parts = vec![self.kind.as_str().to_string()];
            parts.extend(self.columns.iter().cloned());
            parts.extend(self.column.iter().cloned());
            parts.join("_")
        })
    }

    /// Problems that need no table.
    pub(crate) fn check(&self) -> Result<()> {
        let bad = |why: &str| Err(Error::invalid(format!("audit {}: {why}", self.label())));
        let named = |c: &String| crate::storage::validate_name(c);
        match self.kind {
            AuditKind::Unique | AuditKind::NotNull => {
                if self.columns.is_empty() {
                    return bad("needs columns = [\"…\"]");
                }
                self.columns.iter().try_for_each(named)?;
            }
            AuditKind::AcceptedValues => {
                if self.column.is_none() || self.values.is_empty() {
                    return bad("needs column = \"…\" and values = [\"…\"]");
                }
            }
            AuditKind::Relationships => {
                let (Some(to), Some(field), Some(_)) = (&self.to, &self.field, &self.column) else {
                    return bad("needs column = \"…\", to = \"layer.table\" and field = \"…\"");
                };
                TableRef::parse(to)?;
                named(field)?;
            }
            AuditKind::RowCount => {
                if self.min.is_none() && self.max.is_none() {
                    return bad("needs min and/or max");
                }
                if let (Some(lo), Some(hi)) = (self.min, self.max)
                    && lo > hi
                {
                    return bad("min is greater than max");
                }
            }
            AuditKind::Freshness => {
                let Some(age) = &self.max_age else {
                    return bad("needs max_age = \"6h\" (and optionally column = \"…\")");
                };
                super::schedule::parse_every("max_age", age)?;
            }
            AuditKind::Sql => {
                let Some(sql) = &self.sql else {
                    return bad("needs sql = \"SELECT … (the failing rows)\"");
                };
                if sql.trim().is_empty() {
                    return bad("sql is empty");
                }
                super::sql::parse_select(sql).map_err(|e| {
                    Error::invalid(format!(
                        "audit {}: sql must be one SELECT returning the failing rows: {}",
                        self.label(),
                        e.client_message("")
                    ))
                })?;
            }
        }
        if let Some(c) = &self.column {
            named(c)?;
        }
        Ok(())
    }
}

/// Problems of a list of audits (each valid, names unique).
pub(crate) fn check_audits(audits: &[AuditDef]) -> Result<()> {
    let mut seen = std::collections::BTreeSet::new();
    for a in audits {
        a.check()?;
        if !seen.insert(a.label()) {
            return Err(Error::invalid(format!(
                "audit {} is declared twice (give one a name)",
                a.label()
            )));
        }
    }
    Ok(())
}

/// What one audit found.
#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
pub struct AuditResult {
    pub audit: String,
    #[serde(rename = "type")]
    pub kind: AuditKind,
    pub severity: Severity,
    pub passed: bool,
    /// Failing rows (or keys, for `unique`; 1 for a failing `row_count` or `freshness`).
    pub failed: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub detail: Option<String>,
    /// Up to 10 failing rows, as the auditing principal saw them.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub samples: Vec<serde_json::Value>,
    pub table_version: Option<u64>,
}

/// Where the rows an audit looks at come from.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Scope {
    /// The whole table at `version`.
    Table { version: u64 },
    /// The rows changed in versions `from..=to` (an incremental model's run): `unique`
    /// checks the keys they touched, `not_null` the rows they wrote.
    Changed { from: u64, to: u64 },
}

/// Runs one audit of `t` as `p`.
pub(crate) async fn run(
    engine: &Engine,
    p: &Arc<Principal>,
    t: &TableRef,
    audit: &AuditDef,
    scope: Scope,
    now: DateTime<Utc>,
) -> Result<AuditResult> {
    let version = match scope {
        Scope::Table { version } => version,
        Scope::Changed { to, .. } => to,
    };
    let at = format!("{t} VERSION AS OF {version}");
    let written = |from: u64, to: u64| {
        format!(
            "(SELECT * FROM table_changes('{t}', {from}, {to}) WHERE _change_type IN ('insert', 'update_postimage'))"
        )
    };
    let mut detail = None;
    // (failing rows query, or a count computed here)
    let failing: Option<String> = match audit.kind {
        AuditKind::Unique => {
            let cols: Vec<String> = audit.columns.iter().map(|c| ident(c)).collect();
            let cols = cols.join(", ");
            let touched = match scope {
                Scope::Changed { from, to } => format!(
                    " WHERE ({cols}) IN (SELECT {cols} FROM {})",
                    written(from, to)
                ),
                Scope::Table { .. } => String::new(),
            };
            // One tuple IN needs one column: a composite key joins instead.
            let touched = if audit.columns.len() > 1 && !touched.is_empty() {
                let Scope::Changed { from, to } = scope else {
                    return Err(Error::internal("unique scope"));
                };
                let on: Vec<String> = audit
                    .columns
                    .iter()
                    .map(|c| format!("__t.{c} = __k.{c}", c = ident(c)))
                    .collect();
                format!(
                    " AS __t WHERE EXISTS (SELECT 1 FROM (SELECT DISTINCT {cols} FROM {}) AS __k WHERE {})",
                    written(from, to),
                    on.join(" AND ")
                )
            } else {
                touched
            };
            Some(format!(
                "SELECT {cols}, count(*) AS duplicates FROM {at}{touched} GROUP BY {cols} HAVING count(*) > 1"
            ))
        }
        AuditKind::NotNull => {
            let any_null: Vec<String> = audit
                .columns
                .iter()
                .map(|c| format!("{} IS NULL", ident(c)))
                .collect();
            let from = match scope {
                Scope::Changed { from, to } => written(from, to),
                Scope::Table { .. } => at.clone(),
            };
            Some(format!(
                "SELECT * FROM {from} AS __t WHERE {}",
                any_null.join(" OR ")
            ))
        }
        AuditKind::AcceptedValues => {
            let c = ident(audit.column.as_deref().unwrap_or_default());
            let values: Vec<String> = audit.values.iter().map(|v| literal(v)).collect();
            Some(format!(
                "SELECT * FROM {at} WHERE {c} IS NOT NULL AND CAST({c} AS VARCHAR) NOT IN ({})",
                values.join(", ")
            ))
        }
        AuditKind::Relationships => {
            let c = ident(audit.column.as_deref().unwrap_or_default());
            let to = TableRef::parse(audit.to.as_deref().unwrap_or_default())?;
            let field = ident(audit.field.as_deref().unwrap_or_default());
            Some(format!(
                "SELECT * FROM {at} AS __c WHERE __c.{c} IS NOT NULL AND NOT EXISTS (SELECT 1 FROM {to} AS __p WHERE __p.{field} = __c.{c})"
            ))
        }
        AuditKind::RowCount => {
            let n = count(engine, p, &format!("SELECT count(*) FROM {at}")).await?;
            let low = audit.min.is_some_and(|m| n < m);
            let high = audit.max.is_some_and(|m| n > m);
            detail = Some(format!(
                "{n} rows (expected {}{})",
                audit
                    .min
                    .map(|m| format!("at least {m}"))
                    .unwrap_or_default(),
                audit
                    .max
                    .map(|m| format!("{}at most {m}", if audit.min.is_some() { ", " } else { "" }))
                    .unwrap_or_default()
            ));
            return Ok(result(
                audit,
                u64::from(low || high),
                detail,
                Vec::new(),
                version,
            ));
        }
        AuditKind::Freshness => {
            let max_age = super::schedule::parse_every(
                "max_age",
                audit.max_age.as_deref().unwrap_or_default(),
            )?;
            let newest = match &audit.column {
                Some(c) => {
                    newest_value(
                        engine,
                        p,
                        &format!("SELECT CAST(max({}) AS TIMESTAMP) FROM {at}", ident(c)),
                    )
                    .await?
                }
                None => Some(last_commit(engine, t).await?),
            };
            let age = newest.map(|n| now - n);
            let stale = age.is_none_or(|a| a.to_std().unwrap_or_default() > max_age);
            detail = Some(match (newest, age) {
                (Some(n), Some(a)) => format!(
                    "newest {} at {} ({}s old; max_age {}s)",
                    audit.column.as_deref().unwrap_or("commit"),
                    n.to_rfc3339(),
                    a.num_seconds(),
                    max_age.as_secs()
                ),
                _ => "the table has no rows".to_string(),
            });
            if let Some(a) = age {
                crate::telemetry::metrics().source_staleness(&t.to_string(), a.num_seconds());
            }
            return Ok(result(audit, u64::from(stale), detail, Vec::new(), version));
        }
        AuditKind::Sql => audit.sql.clone(),
    };
    let failing = failing.ok_or_else(|| Error::internal("an audit without a query"))?;
    let n = if audit.kind == AuditKind::Unique {
        count(
            engine,
            p,
            &format!("SELECT coalesce(sum(duplicates), 0) FROM ({failing}) AS __f"),
        )
        .await?
    } else {
        count(
            engine,
            p,
            &format!("SELECT count(*) FROM ({failing}) AS __f"),
        )
        .await?
    };
    let samples = if n > 0 {
        let batches = engine
            .query_rows(
                p,
                &format!(
                    "SELECT * FROM ({failing}) AS __f LIMIT {}",
                    crate::engine::expect::MAX_SAMPLES
                ),
                Vec::new(),
            )
            .await?;
        json_rows(&batches)
    } else {
        Vec::new()
    };
    Ok(result(audit, n, detail, samples, version))
}

fn result(
    audit: &AuditDef,
    failed: u64,
    detail: Option<String>,
    samples: Vec<serde_json::Value>,
    version: u64,
) -> AuditResult {
    AuditResult {
        audit: audit.label(),
        kind: audit.kind,
        severity: audit.severity,
        passed: failed == 0,
        failed,
        detail,
        samples,
        table_version: Some(version),
    }
}

/// The first value `sql` returns (none for no row), as `p` reads it.
async fn first_value(
    engine: &Engine,
    p: &Arc<Principal>,
    sql: &str,
) -> Result<Option<ScalarValue>> {
    let batches = engine.query_rows(p, sql, Vec::new()).await?;
    Ok(batches
        .iter()
        .find(|b| b.num_rows() > 0)
        .map(|b| ScalarValue::try_from_array(b.column(0), 0))
        .transpose()?)
}

/// The single number `sql` returns (0 for no row).
pub(super) async fn count(engine: &Engine, p: &Arc<Principal>, sql: &str) -> Result<u64> {
    let value = first_value(engine, p, sql).await?;
    Ok(match value {
        Some(ScalarValue::Int64(Some(n))) => n.max(0) as u64,
        Some(ScalarValue::UInt64(Some(n))) => n,
        Some(other) => match other.cast_to(&arrow::datatypes::DataType::Int64)? {
            ScalarValue::Int64(Some(n)) => n.max(0) as u64,
            _ => 0,
        },
        None => 0,
    })
}

async fn newest_value(
    engine: &Engine,
    p: &Arc<Principal>,
    sql: &str,
) -> Result<Option<DateTime<Utc>>> {
    let micros = first_value(engine, p, sql)
        .await?
        .map(|v| {
            v.cast_to(&arrow::datatypes::DataType::Timestamp(
                arrow::datatypes::TimeUnit::Microsecond,
                None,
            ))
        })
        .transpose()?;
    Ok(match micros {
        Some(ScalarValue::TimestampMicrosecond(Some(m), _)) => DateTime::from_timestamp_micros(m),
        _ => None,
    })
}

/// When `t` was last committed to (its latest commit's timestamp).
pub(crate) async fn last_commit(engine: &Engine, t: &TableRef) -> Result<DateTime<Utc>> {
    engine
        .catalog()
        .last_commit_time(t)
        .await?
        .ok_or_else(|| Error::internal(format!("{t} has no commit timestamp")))
}

fn json_rows(batches: &[arrow::array::RecordBatch]) -> Vec<serde_json::Value> {
    let mut w = arrow::json::ArrayWriter::new(Vec::new());
    for b in batches {
        if w.write(b).is_err() {
            return Vec::new();
        }
    }
    if w.finish().is_err() {
        return Vec::new();
    }
    serde_json::from_slice(&w.into_inner()).unwrap_or_default()
}

/// `[freshness]` of `pipeline.toml`: how old (by their last Delta commit) the pipeline's
/// sources may be when a run starts.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct FreshnessDef {
    /// Older than this: recorded as a failed `warn` check, the run goes on.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub warn_after: Option<String>,
    /// Older than this: the run ends `stale_source` before any model runs.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error_after: Option<String>,
    /// The sources checked (`layer.name`); by default every table the pipeline reads and
    /// none of its models writes.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub sources: Vec<String>,
}

impl FreshnessDef {
    /// `warn_after` and `error_after` as durations.
    fn limits(&self) -> Result<(Option<Duration>, Option<Duration>)> {
        let parse = |key: &str, v: &Option<String>| {
            v.as_deref()
                .map(|v| super::schedule::parse_every(key, v))
                .transpose()
        };
        Ok((
            parse("freshness.warn_after", &self.warn_after)?,
            parse("freshness.error_after", &self.error_after)?,
        ))
    }

    pub(crate) fn check(&self) -> Result<()> {
        let (warn, error) = self.limits()?;
        if warn.is_none() && error.is_none() {
            return Err(Error::invalid(
                "[freshness] needs warn_after and/or error_after (e.g. \"6h\")",
            ));
        }
        if let (Some(w), Some(e)) = (warn, error)
            && w > e
        {
            return Err(Error::invalid(
                "freshness.warn_after is longer than error_after",
            ));
        }
        for s in &self.sources {
            TableRef::parse(s)?;
        }
        Ok(())
    }

    /// Checks `sources` as of `now`: a result per source (a `freshness` audit of severity
    /// `error` when past `error_after`, else `warn`), and why the run must stop, if a source
    /// is past `error_after`.
    pub(crate) async fn judge(
        &self,
        engine: &Engine,
        sources: &[TableRef],
        now: DateTime<Utc>,
    ) -> Result<(Vec<(TableRef, AuditResult)>, Option<String>)> {
        let (warn, error) = self.limits()?;
        let mut out = Vec::new();
        let mut stale = Vec::new();
        for t in sources {
            let last = last_commit(engine, t).await?;
            let age = (now - last).to_std().unwrap_or_default();
            crate::telemetry::metrics()
                .source_staleness(&t.to_string(), (now - last).num_seconds());
            let past_error = error.is_some_and(|e| age > e);
            let past_warn = warn.is_some_and(|w| age > w);
            let limit = if past_error { error } else { warn.or(error) };
            let detail = format!(
                "last commit {} ({}s ago{})",
                last.to_rfc3339(),
                age.as_secs(),
                limit
                    .map(|l| format!(
                        "; {} after {}s",
                        if past_error { "error" } else { "warn" },
                        l.as_secs()
                    ))
                    .unwrap_or_default()
            );
            if past_error {
                stale.push(format!("{t} ({detail})"));
            }
            out.push((
                t.clone(),
                AuditResult {
                    audit: "source_freshness".into(),
                    kind: AuditKind::Freshness,
                    severity: if past_error {
                        Severity::Error
                    } else {
                        Severity::Warn
                    },
                    passed: !past_error && !past_warn,
                    failed: u64::from(past_error || past_warn),
                    detail: Some(detail),
                    samples: Vec::new(),
                    table_version: None,
                },
            ));
        }
        let why = (!stale.is_empty()).then(|| {
            format!(
                "source(s) older than freshness.error_after: {}; no model ran",
                stale.join(", ")
            )
        });
        Ok((out, why))
    }
}
