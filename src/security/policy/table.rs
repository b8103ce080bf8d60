//! [`PolicyTable`]: the one wrapper every table read goes through.
//!
//! It binds a Delta table snapshot to the principal whose session resolved it. Row filters
//! and column masks attach here (access-control issue); today it enforces that the provider is
//! principal-bound and that exact statistics never leave the table (else `COUNT(*)`, `MIN`,
//! `MAX` could be answered from Delta file statistics, past any future row filter).

use std::sync::Arc;

use arrow::datatypes::SchemaRef;
use async_trait::async_trait;
use datafusion::catalog::{ScanArgs, ScanResult, Session, TableProvider};
use datafusion::common::{Result as DfResult, Statistics};
use datafusion::datasource::TableType;
use datafusion::logical_expr::{Expr, TableProviderFilterPushDown};
use datafusion::physical_plan::ExecutionPlan;

use crate::security::Principal;
use crate::storage::TableRef;

#[derive(Debug)]
pub struct PolicyTable {
    table: TableRef,
    version: u64,
    principal: Arc<Principal>,
    inner: Arc<dyn TableProvider>,
}

impl PolicyTable {
    pub fn new(
        table: TableRef,
        version: u64,
        principal: Arc<Principal>,
        inner: Arc<dyn TableProvider>,
    ) -> PolicyTable {
        PolicyTable {
            table,
            version,
            principal,
            inner,
        }
    }

    pub fn table(&self) -> &TableRef {
        &self.table
    }

    /// The Delta version this provider reads.
    pub fn version(&self) -> u64 {
        self.version
    }

    /// Whether this provider was resolved for exactly `principal` (same session binding).
    pub fn is_bound_to(&self, principal: &Arc<Principal>) -> bool {
        Arc::ptr_eq(&self.principal, principal)
    }
}

#[async_trait]
impl TableProvider for PolicyTable {
    fn schema(&self) -> SchemaRef {
        self.inner.schema()
    }

    fn table_type(&self) -> TableType {
        TableType::Base
    }

    async fn scan(
        &self,
        state: &dyn Session,
        projection: Option<&Vec<usize>>,
        filters: &[Expr],
        limit: Option<usize>,
    ) -> DfResult<Arc<dyn ExecutionPlan>> {
        self.inner.scan(state, projection, filters, limit).await
    }

    async fn scan_with_args<'a>(
        &self,
        state: &dyn Session,
        args: ScanArgs<'a>,
    ) -> DfResult<ScanResult> {
        self.inner.scan_with_args(state, args).await
    }

    fn supports_filters_pushdown(
        &self,
        filters: &[&Expr],
    ) -> DfResult<Vec<TableProviderFilterPushDown>> {
        // Never claim Exact: DataFusion then keeps its own Filter above the scan, so a user
        // predicate is always evaluated on rows this table already released.
        Ok(self
            .inner
            .supports_filters_pushdown(filters)?
            .into_iter()
            .map(|p| match p {
                TableProviderFilterPushDown::Exact => TableProviderFilterPushDown::Inexact,
                other => other,
            })
            .collect())
    }

    fn statistics(&self) -> Option<Statistics> {
        None
    }
}
