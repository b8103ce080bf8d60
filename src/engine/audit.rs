//! The audit log: one line per statement.

use crate::security::{AccessControl, Principal};
use crate::storage::TableRef;

/// One structured `strata::audit` event per statement: who, what kind, which tables, which of
/// them had a row filter or mask applied, cache hit, outcome, time to result.
pub(super) fn audit(
    principal: &Principal,
    access: Option<&AccessControl>,
    kind: &str,
    (tables, cache_hit, outcome): (Vec<TableRef>, bool, &str),
    started: std::time::Instant,
) {
    let policies: Vec<String> = match access {
        Some(access) if !access.bypasses_policies(principal) => tables
            .iter()
            .filter(|t| access.table_policy(t).is_some())
            .map(TableRef::to_string)
            .collect(),
        _ => Vec::new(),
    };
    let tables: Vec<String> = tables.iter().map(TableRef::to_string).collect();
    tracing::info!(
        target: "strata::audit",
        principal = %principal.subject,
        statement = kind,
        tables = ?tables,
        policies_applied = ?policies,
        cache_hit,
        outcome,
        elapsed_ms = started.elapsed().as_millis() as u64,
        "statement"
    );
}
