//! WITH CHECK: rows a principal writes must satisfy its row filter.
//!
//! Invariant: a write whose rows are not all visible to the writer under its own row filter
//! fails as a whole before anything is committed (Postgres `WITH CHECK` semantics).

use arrow::array::{Array, RecordBatch};
use arrow::datatypes::SchemaRef;
use datafusion::common::DFSchema;
use datafusion::execution::context::SessionState;

use crate::error::{Error, Result};
use crate::security::policy::table::Enforcement;
use crate::storage::TableRef;

/// Fails on the first row outside `enforcement`'s filter (NULL counts as outside).
pub fn check_rows(
    t: &TableRef,
    enforcement: &Enforcement,
    schema: &SchemaRef,
    batches: &[RecordBatch],
    state: &SessionState,
) -> Result<()> {
    let Some(filter) = &enforcement.filter else {
        return Ok(());
    };
    let df_schema = DFSchema::try_from(schema.as_ref().clone())?;
    let predicate = state.create_physical_expr(filter.clone(), &df_schema)?;
    let mut offset = 0usize;
    for batch in batches {
        let result = predicate.evaluate(batch)?.into_array(batch.num_rows())?;
        let ok = result
            .as_any()
            .downcast_ref::<arrow::array::BooleanArray>()
            .ok_or_else(|| Error::internal("row filter is not boolean"))?;
        if let Some(row) = (0..ok.len()).find(|i| !ok.is_valid(*i) || !ok.value(*i)) {
            return Err(Error::PermissionDenied(format!(
                "row {} violates your row filter on {t}: you may only write rows you can read",
                offset + row + 1
            )));
        }
        offset += batch.num_rows();
    }
    Ok(())
}
