//! WITH CHECK: rows a principal writes must satisfy its row filter.
//!
//! Invariant: a write whose rows are not all visible to the writer under its own row filter
//! fails as a whole before anything is committed (Postgres `WITH CHECK` semantics).

use std::sync::Arc;

use arrow::array::{Array, BooleanArray, RecordBatch};
use arrow::datatypes::{DataType, SchemaRef};
use datafusion::common::tree_node::{Transformed, TreeNode};
use datafusion::common::{Column, DFSchema, DataFusionError, ScalarValue, TableReference};
use datafusion::error::Result as DfResult;
use datafusion::execution::context::SessionState;
use datafusion::logical_expr::{
    ColumnarValue, Expr, ScalarFunctionArgs, ScalarUDF, ScalarUDFImpl, Signature, Volatility,
};

use crate::error::{Error, Result};
use crate::security::policy::table::Enforcement;
use crate::storage::TableRef;

/// Fails on the first written row outside `enforcement`'s filter (NULL counts as outside),
/// one batch after another (streamed writes), with row numbers counted across them.
pub(crate) struct RowCheck {
    table: TableRef,
    predicate: Option<Arc<dyn datafusion::physical_expr::PhysicalExpr>>,
    offset: usize,
}

impl std::fmt::Debug for RowCheck {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RowCheck")
            .field("table", &self.table)
            .field("offset", &self.offset)
            .finish_non_exhaustive()
    }
}

impl RowCheck {
    pub(crate) fn new(
        t: &TableRef,
        enforcement: &Enforcement,
        schema: &SchemaRef,
        state: &SessionState,
    ) -> Result<RowCheck> {
        let predicate = match &enforcement.filter {
            Some(filter) => {
                let df_schema = DFSchema::try_from(schema.as_ref().clone())?;
                Some(state.create_physical_expr(filter.clone(), &df_schema)?)
            }
            None => None,
        };
        Ok(RowCheck {
            table: t.clone(),
            predicate,
            offset: 0,
        })
    }

    pub(crate) fn check(&mut self, batch: &RecordBatch) -> Result<()> {
        if let Some(predicate) = &self.predicate {
            let result = predicate.evaluate(batch)?.into_array(batch.num_rows())?;
            let ok = result
                .as_any()
                .downcast_ref::<arrow::array::BooleanArray>()
                .ok_or_else(|| Error::internal("row filter is not boolean"))?;
            if let Some(row) = (0..ok.len()).find(|i| !ok.is_valid(*i) || !ok.value(*i)) {
                return Err(Error::PermissionDenied(format!(
                    "row {} violates your row filter on {}: you may only write rows you can read",
                    self.offset + row + 1,
                    self.table
                )));
            }
        }
        self.offset += batch.num_rows();
        Ok(())
    }
}

/// The words every WITH CHECK failure carries (delta-rs turns execution errors into text;
/// `pipelines::merge` finds them again by these words).
pub(crate) const WITH_CHECK_VIOLATION: &str = "violates your row filter";

/// `strata_with_check(ok, value)`: `value`, unless a row's `ok` is not TRUE, in which case
/// the whole statement fails. MERGE and UPDATE wrap one assigned value in it, with `ok` the
/// writer's row filter evaluated over the row as it will be written, so a row leaving the
/// writer's filter aborts the statement before anything is committed. Volatile, so it is
/// never folded away; delta-rs evaluates assignments only for the rows a clause applies to
/// (inside `CASE WHEN <clause> THEN …`), so untouched rows are never checked.
#[derive(Debug, PartialEq, Eq, Hash)]
struct WithCheck {
    table: String,
    signature: Signature,
}

impl ScalarUDFImpl for WithCheck {
    fn name(&self) -> &str {
        "strata_with_check"
    }

    fn signature(&self) -> &Signature {
        &self.signature
    }

    fn return_type(&self, arg_types: &[DataType]) -> DfResult<DataType> {
        arg_types
            .get(1)
            .cloned()
            .ok_or_else(|| DataFusionError::Plan("strata_with_check takes two arguments".into()))
    }

    fn invoke_with_args(&self, args: ScalarFunctionArgs) -> DfResult<ColumnarValue> {
        let [ok, value] = <[ColumnarValue; 2]>::try_from(args.args)
            .map_err(|_| DataFusionError::Plan("strata_with_check takes two arguments".into()))?;
        let violated = match &ok {
            ColumnarValue::Scalar(ScalarValue::Boolean(Some(true))) => false,
            ColumnarValue::Scalar(_) => args.number_rows > 0,
            ColumnarValue::Array(a) => {
                let a = a
                    .as_any()
                    .downcast_ref::<BooleanArray>()
                    .ok_or_else(|| DataFusionError::Plan("row filter is not boolean".into()))?;
                a.null_count() > 0 || a.false_count() > 0
            }
        };
        if violated {
            return Err(DataFusionError::External(Box::new(
                Error::PermissionDenied(format!(
                    "a row this statement writes {WITH_CHECK_VIOLATION} on {}: you may only write rows you can read; nothing was committed",
                    self.table
                )),
            )));
        }
        Ok(value)
    }
}

/// `value`, guarded by `post_filter` (see [`WithCheck`]).
pub(crate) fn with_check(t: &TableRef, post_filter: Expr, value: Expr) -> Expr {
    let udf = ScalarUDF::new_from_impl(WithCheck {
        table: t.to_string(),
        signature: Signature::any(2, Volatility::Volatile),
    });
    udf.call(vec![post_filter, value])
}

/// The row filter over the row as written: each column replaced by its new value
/// (`new_value(name)`), e.g. the SET expression or the target column it keeps.
pub(crate) fn post_image(filter: &Expr, new_value: &dyn Fn(&str) -> Expr) -> Result<Expr> {
    Ok(filter
        .clone()
        .transform(|e| {
            Ok(match e {
                Expr::Column(c) => Transformed::yes(new_value(&c.name)),
                other => Transformed::no(other),
            })
        })
        .map(|t| t.data)?)
}

/// `filter` with every column qualified by `alias` (the target's alias in a MERGE).
pub(crate) fn qualify(filter: &Expr, alias: &str) -> Result<Expr> {
    Ok(filter
        .clone()
        .transform(|e| {
            Ok(match e {
                Expr::Column(c) => Transformed::yes(Expr::Column(Column::new(
                    Some(TableReference::bare(alias)),
                    c.name,
                ))),
                other => Transformed::no(other),
            })
        })
        .map(|t| t.data)?)
}
