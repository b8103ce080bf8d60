//! Managing grants and table policies (REST `/api/v1/grants`, `…/policies`).
//!
//! Every change is validated before it is stored: grants must parse, row filters must plan
//! to booleans over the table's columns, masks must name existing columns and cast to their
//! types. Stored policies apply to the next query on every replica.

use std::sync::Arc;

use arrow::datatypes::DataType;
use datafusion::common::{DFSchema, ExprSchema};
use datafusion::logical_expr::{ExprSchemable, cast};
use serde::Serialize;

use crate::config::GrantConfig;
use crate::engine::Engine;
use crate::error::{Error, Result};
use crate::security::policy::expr;
use crate::security::policy::model::{ColumnMask, RowFilter, TablePolicy};
use crate::security::{Principal, Privilege};
use crate::storage::TableRef;

/// Run-time grants, as listed and replaced over REST.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct GrantsDoc {
    pub version: u64,
    pub grants: Vec<GrantConfig>,
    /// Grants from the configuration file (read-only here).
    pub config_grants: Vec<GrantConfig>,
}

/// A table's policies, as read and replaced over REST.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct TablePolicyDoc {
    pub version: u64,
    pub row_filters: Vec<RowFilter>,
    pub column_masks: Vec<ColumnMask>,
}

impl TablePolicyDoc {
    fn new(version: u64, policy: TablePolicy) -> TablePolicyDoc {
        TablePolicyDoc {
            version,
            row_filters: policy.row_filters,
            column_masks: policy.column_masks,
        }
    }
}

impl Engine {
    fn require_admin(&self, access: &crate::security::AccessControl, p: &Principal) -> Result<()> {
        if access.is_admin(p) {
            Ok(())
        } else {
            Err(Error::PermissionDenied(
                "managing grants needs the admin role".into(),
            ))
        }
    }

    pub async fn grants(&self, p: &Arc<Principal>, config: &[GrantConfig]) -> Result<GrantsDoc> {
        let access = self.access().await?;
        self.require_admin(&access, p)?;
        let doc = self.policies().document().await?;
        Ok(GrantsDoc {
            version: doc.version,
            grants: doc.grants,
            config_grants: config.to_vec(),
        })
    }

    pub async fn set_grants(
        &self,
        p: &Arc<Principal>,
        grants: Vec<GrantConfig>,
        expected_version: Option<u64>,
        config: &[GrantConfig],
    ) -> Result<GrantsDoc> {
        let access = self.access().await?;
        self.require_admin(&access, p)?;
        for (i, g) in grants.iter().enumerate() {
            crate::security::access::Grant::parse(g)
                .map_err(|e| Error::invalid(format!("grants[{i}]: {e}")))?;
        }
        let doc = self
            .policies()
            .update(expected_version, |doc| {
                doc.grants = grants;
                Ok(())
            })
            .await?;
        Ok(GrantsDoc {
            version: doc.version,
            grants: doc.grants,
            config_grants: config.to_vec(),
        })
    }

    pub async fn table_policy(&self, p: &Arc<Principal>, t: &TableRef) -> Result<TablePolicyDoc> {
        let access = self.access().await?;
        access.check(p, Privilege::Manage, t)?;
        let doc = self.policies().document().await?;
        let policy = doc.tables.get(&t.to_string()).cloned().unwrap_or_default();
        Ok(TablePolicyDoc::new(doc.version, policy))
    }

    pub async fn set_table_policy(
        &self,
        p: &Arc<Principal>,
        t: &TableRef,
        policy: TablePolicy,
        expected_version: Option<u64>,
    ) -> Result<TablePolicyDoc> {
        let access = self.access().await?;
        access.check(p, Privilege::Manage, t)?;
        let table = self.catalog().load(t).await?;
        let schema = table.snapshot()?.snapshot().arrow_schema();
        self.validate_policy(&policy, &schema)?;
        let key = t.to_string();
        let doc = self
            .policies()
            .update(expected_version, |doc| {
                if policy.is_empty() {
                    doc.tables.remove(&key);
                } else {
                    doc.tables.insert(key.clone(), policy.clone());
                }
                Ok(())
            })
            .await?;
        Ok(TablePolicyDoc::new(
            doc.version,
            doc.tables.get(&key).cloned().unwrap_or_default(),
        ))
    }

    /// Plans every predicate and mask against `schema` for a principal with no roles or
    /// claims (the functions bind to typed literals either way).
    fn validate_policy(
        &self,
        policy: &TablePolicy,
        schema: &arrow::datatypes::SchemaRef,
    ) -> Result<()> {
        let df_schema = DFSchema::try_from(schema.as_ref().clone())?;
        let nobody = Principal {
            subject: String::new(),
            roles: Default::default(),
            claims: Default::default(),
        };
        let state = self.planning_state();
        for (i, f) in policy.row_filters.iter().enumerate() {
            let at = |e: Error| Error::invalid(format!("row_filters[{i}]: {e}"));
            if f.roles.is_empty() {
                return Err(at(Error::invalid("a row filter needs at least one role")));
            }
            let e = expr::to_expr(&f.predicate, &nobody, &df_schema, state).map_err(at)?;
            let physical = state
                .create_physical_expr(e, &df_schema)
                .map_err(|e| at(e.into()))?;
            let dt = physical
                .data_type(schema.as_ref())
                .map_err(|e| at(e.into()))?;
            if dt != DataType::Boolean && dt != DataType::Null {
                return Err(at(Error::invalid(format!(
                    "predicate {:?} is {dt}, not boolean",
                    f.predicate
                ))));
            }
        }
        let mut seen = std::collections::HashSet::new();
        for (i, m) in policy.column_masks.iter().enumerate() {
            let at = |e: Error| Error::invalid(format!("column_masks[{i}]: {e}"));
            let column = schema
                .field_with_name(&m.column)
                .map_err(|_| at(Error::invalid(format!("unknown column {:?}", m.column))))?;
            if !seen.insert(m.column.clone()) {
                return Err(at(Error::invalid(format!(
                    "column {} is masked twice",
                    m.column
                ))));
            }
            let e = expr::to_expr(&m.mask, &nobody, &df_schema, state).map_err(at)?;
            let _ = e
                .get_type(&df_schema as &dyn ExprSchema)
                .map_err(|e| at(e.into()))?;
            state
                .create_physical_expr(cast(e, column.data_type().clone()), &df_schema)
                .map_err(|e| at(e.into()))?;
        }
        Ok(())
    }
}
