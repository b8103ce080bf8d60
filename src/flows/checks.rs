//! Standalone checks (PLATFORM P4) of tables no pipeline writes (bronze tables loaded by
//! uploads, say): the audit syntax of model headers plus the table's own freshness, stored
//! per table at `_strata/checks/<layer>.<name>.json`, run on demand
//! (`POST /api/v1/tables/{layer}/{name}/checks/run`) or every `every` by the scheduler's
//! leader, as a service principal of the configuration, their results appended to
//! `system.audit_results` (origin `checks`) like a model's audits.

use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use futures::TryStreamExt as _;
use object_store::path::Path;
use object_store::{ObjectStore, ObjectStoreExt, PutPayload};
use serde::{Deserialize, Serialize};

use super::Flows;
use super::audit::{AuditDef, AuditKind, AuditResult, FreshnessDef, Scope, Severity};
use super::records::AuditRow;
use crate::error::{Error, Result};
use crate::security::{Principal, Privilege};
use crate::storage::TableRef;

const PREFIX: &str = "_strata/checks";

/// How stale the leader's view of the stored checks may be (a change through another
/// replica reaches it within this): a LIST and a GET per table, not every second.
const CHECKS_MAX_AGE: Duration = Duration::from_secs(10);

/// `PUT /api/v1/tables/{layer}/{name}/checks`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ChecksDef {
    /// The service principal the checks read as (`[[pipelines.principals]]`); its roles
    /// must be a subset of the caller's.
    pub run_as: String,
    #[serde(
        default,
        rename = "audit",
        alias = "audits",
        skip_serializing_if = "Vec::is_empty"
    )]
    pub audits: Vec<AuditDef>,
    /// How old the table's last commit may be.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub freshness: Option<FreshnessDef>,
    /// The scheduler's leader runs them once per period of this length (`"1h"`, `"1d"`);
    /// only on request when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub every: Option<String>,
}

/// Stored checks: the definition and who set it.
#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
pub struct TableChecks {
    pub table: String,
    #[serde(flatten)]
    pub def: ChecksDef,
    pub updated_by: String,
    pub updated_at: DateTime<Utc>,
}

/// `POST …/checks/run`.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct ChecksRun {
    pub table: String,
    pub table_version: u64,
    /// Whether every check of severity `error` passed.
    pub passed: bool,
    pub results: Vec<AuditResult>,
}

fn path_of(t: &TableRef) -> Path {
    Path::from(format!("{PREFIX}/{t}.json"))
}

impl ChecksDef {
    fn check(&self) -> Result<()> {
        super::audit::check_audits(&self.audits)?;
        if let Some(f) = &self.freshness {
            f.check()?;
            if !f.sources.is_empty() {
                return Err(Error::invalid(
                    "a table's freshness checks the table itself: leave out sources",
                ));
            }
        }
        if self.audits.is_empty() && self.freshness.is_none() {
            return Err(Error::invalid(
                "give at least one [[audit]] or a [freshness] (DELETE removes a table's checks)",
            ));
        }
        if let Some(every) = &self.every {
            super::schedule::parse_every("every", every)?;
        }
        Ok(())
    }

    pub(crate) fn every(&self) -> Option<Duration> {
        self.every
            .as_deref()
            .and_then(|e| super::schedule::parse_every("every", e).ok())
    }
}

impl Flows {
    fn store(&self) -> Arc<dyn ObjectStore> {
        self.object_store()
    }

    /// `t` when `p` may MANAGE it (404 when it may not see it).
    async fn managed_table(&self, p: &Arc<Principal>, t: &TableRef) -> Result<()> {
        let access = self.engine.access().await?;
        access.check(p, Privilege::Manage, t)?;
        if !self.engine.catalog().exists(t).await? {
            return Err(Error::NotFound(format!("table {t} not found")));
        }
        Ok(())
    }

    /// Sets `t`'s checks.
    pub async fn put_checks(
        &self,
        p: &Arc<Principal>,
        t: &TableRef,
        def: ChecksDef,
    ) -> Result<TableChecks> {
        self.managed_table(p, t).await?;
        def.check()?;
        let run_as = self.principal_named(&def.run_as)?;
        let missing: Vec<&str> = run_as
            .roles
            .iter()
            .filter(|r| !p.roles.contains(*r))
            .map(String::as_str)
            .collect();
        if !missing.is_empty() {
            return Err(Error::PermissionDenied(format!(
                "the checks run as {} with roles you do not hold: {}",
                run_as.subject,
                missing.join(", ")
            )));
        }
        let stored = TableChecks {
            table: t.to_string(),
            def,
            updated_by: p.subject.clone(),
            updated_at: self.clock.now(),
        };
        let body =
            serde_json::to_vec_pretty(&stored).map_err(|e| Error::internal(e.to_string()))?;
        self.store()
            .put(&path_of(t), PutPayload::from(body))
            .await?;
        self.forget_checks();
        Ok(stored)
    }

    /// `t`'s checks, to those who may read it.
    pub async fn get_checks(&self, p: &Arc<Principal>, t: &TableRef) -> Result<TableChecks> {
        let access = self.engine.access().await?;
        access.check(p, Privilege::Select, t)?;
        self.stored_checks(t)
            .await?
            .ok_or_else(|| Error::NotFound(format!("{t} has no checks")))
    }

    /// Removes `t`'s checks.
    pub async fn delete_checks(&self, p: &Arc<Principal>, t: &TableRef) -> Result<()> {
        let access = self.engine.access().await?;
        access.check(p, Privilege::Manage, t)?;
        let deleted = match self.store().delete(&path_of(t)).await {
            Ok(()) | Err(object_store::Error::NotFound { .. }) => Ok(()),
            Err(e) => Err(e.into()),
        };
        self.forget_checks();
        deleted
    }

    pub(crate) async fn stored_checks(&self, t: &TableRef) -> Result<Option<TableChecks>> {
        match self.store().get(&path_of(t)).await {
            Ok(r) => {
                let bytes = r.bytes().await?;
                Ok(Some(serde_json::from_slice(&bytes).map_err(|e| {
                    Error::internal(format!("stored checks of {t}: {e}"))
                })?))
            }
            Err(object_store::Error::NotFound { .. }) => Ok(None),
            Err(e) => Err(e.into()),
        }
    }

    /// Every table's stored checks (for the scheduler), at most [`CHECKS_MAX_AGE`] old.
    pub(crate) async fn all_checks(&self) -> Result<Vec<TableChecks>> {
        if let Ok(cached) = self.checks.lock()
            && let Some((at, checks)) = cached.as_ref()
            && at.elapsed() < CHECKS_MAX_AGE
        {
            return Ok(checks.clone());
        }
        let listed = self.list_checks().await?;
        if let Ok(mut cached) = self.checks.lock() {
            *cached = Some((std::time::Instant::now(), listed.clone()));
        }
        Ok(listed)
    }

    fn forget_checks(&self) {
        if let Ok(mut cached) = self.checks.lock() {
            *cached = None;
        }
    }

    async fn list_checks(&self) -> Result<Vec<TableChecks>> {
        let store = self.store();
        let listed: Vec<object_store::ObjectMeta> =
            store.list(Some(&Path::from(PREFIX))).try_collect().await?;
        let mut out = Vec::new();
        for meta in listed {
            let Some(t) = meta
                .location
                .filename()
                .and_then(|f| f.strip_suffix(".json"))
                .and_then(|f| TableRef::parse(f).ok())
            else {
                continue;
            };
            if let Some(c) = self.stored_checks(&t).await? {
                out.push(c);
            }
        }
        Ok(out)
    }

    /// Runs `t`'s checks now, for `p` (who may MANAGE it).
    pub async fn run_checks(&self, p: &Arc<Principal>, t: &TableRef) -> Result<ChecksRun> {
        self.managed_table(p, t).await?;
        let checks = self
            .stored_checks(t)
            .await?
            .ok_or_else(|| Error::NotFound(format!("{t} has no checks")))?;
        self.execute_checks(t, &checks).await
    }

    /// Runs stored checks as their service principal and records the results.
    pub(crate) async fn execute_checks(
        &self,
        t: &TableRef,
        checks: &TableChecks,
    ) -> Result<ChecksRun> {
        let run_as = self.principal_named(&checks.def.run_as)?;
        let version = self.engine.catalog().load(t).await?.version().unwrap_or(0);
        let now = self.clock.now();
        let mut results = Vec::new();
        for a in &checks.def.audits {
            let r =
                match super::audit::run(&self.engine, &run_as, t, a, Scope::Table { version }, now)
                    .await
                {
                    Ok(r) => r,
                    Err(e) => AuditResult {
                        audit: a.label(),
                        kind: a.kind,
                        severity: a.severity,
                        passed: false,
                        failed: 0,
                        detail: Some(format!("the check could not run: {}", e.client_message(""))),
                        samples: Vec::new(),
                        table_version: Some(version),
                    },
                };
            results.push(r);
        }
        if let Some(f) = &checks.def.freshness {
            let (judged, _) = f.judge(&self.engine, std::slice::from_ref(t), now).await?;
            results.extend(judged.into_iter().map(|(_, mut r)| {
                r.audit = "freshness".into();
                r.kind = AuditKind::Freshness;
                r.table_version = Some(version);
                r
            }));
        }
        let rows: Vec<AuditRow> = results
            .iter()
            .map(|r| AuditRow::of(r, &t.to_string(), None, "checks", now))
            .collect();
        self.records.record_audits(&rows).await?;
        Ok(ChecksRun {
            table: t.to_string(),
            table_version: version,
            passed: results
                .iter()
                .all(|r| r.passed || r.severity == Severity::Warn),
            results,
        })
    }
}
