//! The policy document: grants, row filters and column masks, as users manage them.
//!
//! It is persisted as one JSON document on the object store (`_strata/policies.json`),
//! replaced with conditional puts, so every replica sees the same, versioned state.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::config::GrantConfig;

/// Everything the policy store holds.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PolicyDoc {
    /// Incremented on every change.
    #[serde(default)]
    pub version: u64,
    /// Grants managed at run time (configuration grants are added on top).
    #[serde(default)]
    pub grants: Vec<GrantConfig>,
    /// Per table (`layer.name`): row filters and column masks.
    #[serde(default)]
    pub tables: BTreeMap<String, TablePolicy>,
}

/// Row filters and column masks of one table.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct TablePolicy {
    #[serde(default)]
    pub row_filters: Vec<RowFilter>,
    #[serde(default)]
    pub column_masks: Vec<ColumnMask>,
}

impl TablePolicy {
    pub fn is_empty(&self) -> bool {
        self.row_filters.is_empty() && self.column_masks.is_empty()
    }
}

/// Principals holding any of `roles` see the rows where `predicate` is true. A principal's
/// rows are the OR of the filters of its roles; a table with filters and none for the
/// principal's roles shows no rows.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RowFilter {
    pub roles: Vec<String>,
    /// SQL over the table's columns; may call `current_user()`, `has_role('r')`,
    /// `current_claim('k')`.
    pub predicate: String,
}

/// `column` reads as `mask` (an SQL expression over the table's columns) unless the
/// principal holds one of `exempt_roles`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ColumnMask {
    pub column: String,
    pub mask: String,
    #[serde(default)]
    pub exempt_roles: Vec<String>,
}
