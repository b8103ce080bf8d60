//! Writes: user expressions are evaluated only on rows the writer can see.
//!
//! Invariant: in UPDATE, DELETE, MERGE and SCD2, an expression the user wrote (a WHERE or ON
//! condition, a clause condition, an assigned value) is evaluated only on target rows inside
//! the writer's row filter. A write cannot become an error oracle on hidden rows: whether it
//! fails, and with which message, does not depend on rows the writer cannot read.
//!
//! Reads get this from [`super::table::PolicyExec`], which filters before anything else runs.
//! Writes run inside delta-rs, which evaluates its predicates wherever it likes: as parquet
//! row filters (conjunct by conjunct, in any order), as hash-join keys, as join filters over
//! every candidate pair, in `CASE` branches the optimizer may flatten into `AND`. So a user
//! expression goes to delta-rs in one of two forms:
//!
//! ```text
//! safe conjuncts:    column/literal comparisons of one type, IS NULL, IN (literals), BETWEEN
//!                    (nothing in them can fail on any value), kept as they are so delta-rs
//!                    prunes files and picks hash-join keys with them
//! everything else:   strata_visible_only(columns…) — one opaque function that evaluates the
//!                    condition (the row filter) on the batch, keeps the rows where it holds,
//!                    and only then evaluates the user expression on those rows
//! ```
//!
//! Errors raised by the row filter itself are reported without their text (it may quote a
//! hidden value); errors raised by the user expression come only from visible rows and are
//! client errors ([`USER_EXPRESSION_FAILED`]).

use std::collections::BTreeSet;
use std::hash::{Hash, Hasher};
use std::sync::Arc;

use arrow::array::{Array, ArrayRef, BooleanArray, RecordBatch, RecordBatchOptions, UInt32Array};
use arrow::compute::{and_kleene, filter_record_batch, prep_null_mask_filter, take};
use arrow::datatypes::{DataType, Field, Schema, SchemaRef};
use arrow::error::ArrowError;
use datafusion::common::{Column, DFSchema, DataFusionError, ScalarValue};
use datafusion::error::Result as DfResult;
use datafusion::execution::context::SessionState;
use datafusion::logical_expr::expr::InList;
use datafusion::logical_expr::simplify::SimplifyContext;
use datafusion::logical_expr::utils::{conjunction, split_conjunction_owned};
use datafusion::logical_expr::{
    Between, BinaryExpr, ColumnarValue, Expr, ExprSchemable, Operator, ScalarFunctionArgs,
    ScalarUDF, ScalarUDFImpl, Signature, Volatility, lit,
};
use datafusion::optimizer::simplify_expressions::ExprSimplifier;
use datafusion::physical_expr::PhysicalExpr;

use crate::error::{Error, Result};
use crate::storage::TableRef;

/// The words every failure of a user expression inside [`VisibleOnly`] carries (delta-rs
/// turns execution errors into text; `pipelines::merge` finds them again by these words).
pub(crate) const USER_EXPRESSION_FAILED: &str = "failed on a row you can write";

/// Builds the guarded forms of user expressions for one write.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Visibility<'a> {
    pub table: &'a TableRef,
    /// The schema user expressions and the filter are planned against (the table's, or the
    /// target ⋈ source schema of a MERGE).
    pub schema: &'a DFSchema,
    pub state: &'a SessionState,
}

impl Visibility<'_> {
    /// `predicate`, evaluated only where `condition` holds: `condition AND predicate` as
    /// delta-rs may evaluate it anywhere. `predicate = None` is `condition` alone.
    pub(crate) fn predicate(&self, condition: &Expr, predicate: Option<Expr>) -> Result<Expr> {
        if let (Expr::Literal(ScalarValue::Boolean(Some(true)), _), Some(p)) =
            (condition, &predicate)
        {
            return self.predicate_within(condition, p.clone());
        }
        let (mut conjuncts, unsafe_condition) = self.split(condition.clone());
        let unsafe_predicate = match predicate {
            Some(p) => {
                let (safe, rest) = self.split(p);
                conjuncts.extend(safe);
                rest
            }
            None => None,
        };
        if unsafe_condition.is_some() || unsafe_predicate.is_some() {
            conjuncts.push(self.guarded(condition, unsafe_predicate, Mode::Predicate)?);
        }
        Ok(conjunction(conjuncts).unwrap_or_else(|| lit(true)))
    }

    /// `predicate` on rows where `condition` holds (and `false` elsewhere), without
    /// repeating `condition` as a conjunct: for clauses whose rows already satisfy it.
    pub(crate) fn predicate_within(&self, condition: &Expr, predicate: Expr) -> Result<Expr> {
        let (mut conjuncts, rest) = self.split(predicate);
        if let Some(rest) = rest {
            conjuncts.push(self.guarded(condition, Some(rest), Mode::Predicate)?);
        }
        Ok(conjunction(conjuncts).unwrap_or_else(|| lit(true)))
    }

    /// `value` on rows where `condition` holds, NULL elsewhere (an assigned value: delta-rs
    /// uses it only on the rows its clause applies to, all of which satisfy `condition`).
    pub(crate) fn value(&self, condition: &Expr, value: Expr) -> Result<Expr> {
        if let Ok(coerced) = self.coerce(value.clone())
            && safe_operand(&coerced, self.schema)
        {
            return Ok(value);
        }
        self.guarded(condition, Some(value), Mode::Value)
    }

    /// Splits `e` into conjuncts that cannot fail on any value (coerced, as DataFusion will
    /// run them) and the conjunction of the rest.
    fn split(&self, e: Expr) -> (Vec<Expr>, Option<Expr>) {
        let Ok(coerced) = self.coerce(e.clone()) else {
            return (Vec::new(), Some(e));
        };
        let (safe, rest): (Vec<Expr>, Vec<Expr>) = split_conjunction_owned(coerced)
            .into_iter()
            .partition(|c| safe_predicate(c, self.schema));
        (safe, conjunction(rest))
    }

    fn coerce(&self, e: Expr) -> Result<Expr> {
        let context = SimplifyContext::builder()
            .with_schema(Arc::new(self.schema.clone()))
            .build();
        let simplifier = ExprSimplifier::new(context);
        Ok(simplifier.coerce(e, self.schema)?)
    }

    fn guarded(&self, condition: &Expr, expr: Option<Expr>, mode: Mode) -> Result<Expr> {
        let expr = expr.unwrap_or_else(|| lit(true));
        // Every column either expression reads, in a fixed order: the function's arguments.
        let columns: BTreeSet<Column> = condition
            .column_refs()
            .into_iter()
            .chain(expr.column_refs())
            .cloned()
            .collect();
        if columns.is_empty() {
            // Only literals: nothing depends on a row.
            return Ok(match mode {
                Mode::Predicate => condition.clone().and(expr),
                Mode::Value => expr,
            });
        }
        let fields = columns
            .iter()
            .map(|c| {
                let (qualifier, field) = self.schema.qualified_field_from_column(c)?;
                Ok((qualifier.cloned(), Arc::clone(field)))
            })
            .collect::<Result<Vec<_>>>()?;
        let input = DFSchema::new_with_metadata(fields, Default::default())?;
        let condition_exec = self.state.create_physical_expr(condition.clone(), &input)?;
        let expr_exec = self.state.create_physical_expr(expr.clone(), &input)?;
        let input_schema: SchemaRef = Arc::new(input.as_arrow().clone());
        let return_type = match mode {
            Mode::Predicate => {
                let t = expr_exec.data_type(&input_schema)?;
                if !matches!(t, DataType::Boolean | DataType::Null) {
                    return Err(Error::invalid(format!(
                        "a condition must be boolean, not {t}: {expr}"
                    )));
                }
                DataType::Boolean
            }
            Mode::Value => expr_exec.data_type(&input_schema)?,
        };
        let udf = ScalarUDF::new_from_impl(VisibleOnly {
            table: self.table.to_string(),
            id: uuid::Uuid::new_v4(),
            mode,
            signature: Signature::any(columns.len(), Volatility::Immutable),
            condition: condition_exec,
            expr: expr_exec,
            input: input_schema,
            return_type,
        });
        Ok(udf.call(columns.into_iter().map(Expr::Column).collect()))
    }
}

/// Whether a (coerced) conjunct evaluates without error on every value of its columns.
fn safe_predicate(e: &Expr, schema: &DFSchema) -> bool {
    match e {
        Expr::Literal(ScalarValue::Boolean(_), _) => true,
        Expr::Column(c) => schema
            .qualified_field_from_column(c)
            .is_ok_and(|(_, f)| f.data_type() == &DataType::Boolean),
        Expr::Not(inner) => safe_predicate(inner, schema),
        Expr::BinaryExpr(BinaryExpr { left, op, right }) => match op {
            Operator::And | Operator::Or => {
                safe_predicate(left, schema) && safe_predicate(right, schema)
            }
            Operator::Eq
            | Operator::NotEq
            | Operator::Lt
            | Operator::LtEq
            | Operator::Gt
            | Operator::GtEq
            | Operator::IsDistinctFrom
            | Operator::IsNotDistinctFrom => {
                same_type(left, right, schema)
                    && safe_operand(left, schema)
                    && safe_operand(right, schema)
            }
            _ => false,
        },
        Expr::IsNull(x)
        | Expr::IsNotNull(x)
        | Expr::IsTrue(x)
        | Expr::IsFalse(x)
        | Expr::IsUnknown(x)
        | Expr::IsNotTrue(x)
        | Expr::IsNotFalse(x)
        | Expr::IsNotUnknown(x) => safe_operand(x, schema),
        Expr::InList(InList { expr, list, .. }) => {
            safe_operand(expr, schema)
                && list
                    .iter()
                    .all(|i| matches!(i, Expr::Literal(..)) && same_type(expr, i, schema))
        }
        Expr::Between(Between {
            expr, low, high, ..
        }) => {
            [low, high]
                .iter()
                .all(|b| safe_operand(b, schema) && same_type(expr, b, schema))
                && safe_operand(expr, schema)
        }
        _ => false,
    }
}

fn same_type(a: &Expr, b: &Expr, schema: &DFSchema) -> bool {
    match (a.get_type(schema), b.get_type(schema)) {
        (Ok(x), Ok(y)) => x == y || x == DataType::Null || y == DataType::Null,
        _ => false,
    }
}

/// A column, a literal, or a cast of one that cannot fail (`TRY_CAST`, or a widening).
fn safe_operand(e: &Expr, schema: &DFSchema) -> bool {
    match e {
        Expr::Column(_) | Expr::Literal(..) => true,
        Expr::Alias(a) => safe_operand(&a.expr, schema),
        Expr::TryCast(c) => safe_operand(&c.expr, schema),
        Expr::Cast(c) => {
            safe_operand(&c.expr, schema)
                && c.expr
                    .get_type(schema)
                    .is_ok_and(|from| widens(&from, c.field.data_type()))
        }
        _ => false,
    }
}

/// Casts that succeed for every value of `from`.
fn widens(from: &DataType, to: &DataType) -> bool {
    use DataType as D;
    fn int_digits(t: &DataType) -> Option<u8> {
        match t {
            D::Int8 | D::UInt8 => Some(3),
            D::Int16 | D::UInt16 => Some(5),
            D::Int32 | D::UInt32 => Some(10),
            D::Int64 => Some(19),
            D::UInt64 => Some(20),
            _ => None,
        }
    }
    let rank = |t: &DataType| match t {
        D::Int8 => Some((1, true)),
        D::Int16 => Some((2, true)),
        D::Int32 => Some((4, true)),
        D::Int64 => Some((8, true)),
        D::UInt8 => Some((1, false)),
        D::UInt16 => Some((2, false)),
        D::UInt32 => Some((4, false)),
        D::UInt64 => Some((8, false)),
        _ => None,
    };
    let is_string = |t: &DataType| matches!(t, D::Utf8 | D::LargeUtf8 | D::Utf8View);
    if from == to {
        return true;
    }
    if let (Some((a, signed_a)), Some((b, signed_b))) = (rank(from), rank(to)) {
        return (signed_a == signed_b && b >= a) || (!signed_a && signed_b && b > a);
    }
    match (from, to) {
        (D::Null, _) => true,
        (D::Dictionary(_, v), t) => widens(v, t),
        (f, t) if is_string(f) && is_string(t) => true,
        (D::Float32, D::Float64) => true,
        (f, D::Float64) if rank(f).is_some() => true,
        (D::Date32, D::Date64) => true,
        (D::Decimal128(p1, s1), D::Decimal128(p2, s2)) => {
            s2 >= s1 && i16::from(*p2) - i16::from(*s2) >= i16::from(*p1) - i16::from(*s1)
        }
        (f, D::Decimal128(p, s)) => {
            int_digits(f).is_some_and(|d| i16::from(*p) - i16::from(*s) >= i16::from(d))
        }
        (f, t) if is_string(t) => f.is_numeric() || matches!(f, D::Boolean | D::Date32 | D::Date64),
        _ => false,
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
enum Mode {
    /// A condition: `false` where the row filter does not hold.
    Predicate,
    /// A value: NULL where the row filter does not hold.
    Value,
}

/// `strata_visible_only(columns…)`: see the module docs.
#[derive(Debug)]
struct VisibleOnly {
    table: String,
    /// Instances are never interchangeable (each holds its own expressions).
    id: uuid::Uuid,
    mode: Mode,
    signature: Signature,
    /// The writer's row filter over `input`.
    condition: Arc<dyn PhysicalExpr>,
    /// The user expression over `input`.
    expr: Arc<dyn PhysicalExpr>,
    /// The arguments, as the expressions were planned against them.
    input: SchemaRef,
    return_type: DataType,
}

impl PartialEq for VisibleOnly {
    fn eq(&self, other: &Self) -> bool {
        self.id == other.id
    }
}

impl Eq for VisibleOnly {}

impl Hash for VisibleOnly {
    fn hash<H: Hasher>(&self, state: &mut H) {
        self.id.hash(state);
    }
}

impl ScalarUDFImpl for VisibleOnly {
    fn name(&self) -> &str {
        "strata_visible_only"
    }

    fn signature(&self) -> &Signature {
        &self.signature
    }

    fn return_type(&self, _arg_types: &[DataType]) -> DfResult<DataType> {
        Ok(self.return_type.clone())
    }

    fn invoke_with_args(&self, args: ScalarFunctionArgs) -> DfResult<ColumnarValue> {
        let rows = args.number_rows;
        let batch = self.batch(args.args, rows)?;
        let visible = self
            .condition
            .evaluate(&batch)
            .and_then(|v| v.into_array(rows))
            .map_err(|e| self.filter_failed(&e))?;
        let visible = visible
            .as_any()
            .downcast_ref::<BooleanArray>()
            .ok_or_else(|| DataFusionError::Plan("row filter is not boolean".into()))?;
        // NULL is not visible. (`prep_null_mask_filter` panics on an array without nulls.)
        let visible = if visible.null_count() > 0 {
            prep_null_mask_filter(visible)
        } else {
            visible.clone()
        };
        let selected = visible.true_count();
        let result: ArrayRef = if selected == 0 {
            match self.mode {
                Mode::Predicate => Arc::new(BooleanArray::from(vec![false; rows])),
                Mode::Value => arrow::array::new_null_array(&self.return_type, rows),
            }
        } else if selected == rows {
            self.evaluate(&batch, rows)?
        } else {
            let values = self.evaluate(&filter_record_batch(&batch, &visible)?, selected)?;
            // Back to the batch's rows: value j of the visible rows goes to the j-th visible
            // position; the others are NULL.
            let mut next = 0u32;
            let positions: UInt32Array = visible
                .iter()
                .map(|v| {
                    v.unwrap_or(false).then(|| {
                        next += 1;
                        next - 1
                    })
                })
                .collect();
            let spread = take(values.as_ref(), &positions, None)?;
            match self.mode {
                Mode::Predicate => {
                    let spread = spread
                        .as_any()
                        .downcast_ref::<BooleanArray>()
                        .ok_or_else(|| DataFusionError::Plan("condition is not boolean".into()))?;
                    Arc::new(and_kleene(&visible, spread)?)
                }
                Mode::Value => spread,
            }
        };
        Ok(ColumnarValue::Array(result))
    }
}

impl VisibleOnly {
    /// The arguments as a batch of the planned schema (delta-rs may hand over views or
    /// dictionaries where the table schema says plain strings; those casts cannot fail).
    fn batch(&self, args: Vec<ColumnarValue>, rows: usize) -> DfResult<RecordBatch> {
        let columns = args
            .into_iter()
            .zip(self.input.fields())
            .map(|(a, f)| {
                let a = a.into_array(rows)?;
                Ok(if a.data_type() == f.data_type() {
                    a
                } else {
                    arrow::compute::cast(&a, f.data_type())?
                })
            })
            .collect::<DfResult<Vec<_>>>()?;
        // Nullability is the table's business, not ours: a join makes any column nullable.
        let schema = Arc::new(Schema::new(
            self.input
                .fields()
                .iter()
                .map(|f| Field::new(f.name(), f.data_type().clone(), true))
                .collect::<Vec<_>>(),
        ));
        Ok(RecordBatch::try_new_with_options(
            schema,
            columns,
            &RecordBatchOptions::new().with_row_count(Some(rows)),
        )?)
    }

    fn evaluate(&self, batch: &RecordBatch, rows: usize) -> DfResult<ArrayRef> {
        self.expr
            .evaluate(batch)
            .and_then(|v| v.into_array(rows))
            .map_err(|e| {
                DataFusionError::External(Box::new(Error::InvalidArgument(format!(
                    "an expression of this statement {USER_EXPRESSION_FAILED} of {}: {}; nothing was committed",
                    self.table,
                    Error::from(e).client_message("")
                ))))
            })
    }

    /// The row filter failed: say so without its message, which may quote a hidden value.
    fn filter_failed(&self, e: &DataFusionError) -> DataFusionError {
        DataFusionError::External(Box::new(policy_evaluation_failed(&self.table, e)))
    }
}

/// The error a failing row filter or column mask becomes: what kind of failure, never the
/// text (a cast or overflow message quotes the value it failed on, which may be hidden).
pub(crate) fn policy_evaluation_failed(table: &str, e: &DataFusionError) -> Error {
    let what = match e.find_root() {
        DataFusionError::ArrowError(a, _) => match a.as_ref() {
            ArrowError::CastError(_) => "a cast failed",
            ArrowError::DivideByZero => "a division by zero",
            ArrowError::ArithmeticOverflow(_) => "an arithmetic overflow",
            _ => "an evaluation error",
        },
        _ => "an evaluation error",
    };
    tracing::warn!(
        table,
        failure = what,
        "a row filter or column mask failed to evaluate"
    );
    Error::Internal(format!(
        "the row filter or a column mask of {table} failed to evaluate ({what}); an administrator must fix the policy"
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use arrow::array::{Int64Array, StringArray};
    use datafusion::prelude::{SessionContext, col};

    fn schema() -> DFSchema {
        DFSchema::try_from(Schema::new(vec![
            Field::new("id", DataType::Int64, false),
            Field::new("tenant", DataType::Utf8, true),
            Field::new("secret", DataType::Utf8, true),
        ]))
        .unwrap()
    }

    fn rows() -> RecordBatch {
        RecordBatch::try_new(
            Arc::new(schema().as_arrow().clone()),
            vec![
                Arc::new(Int64Array::from(vec![1, 2, 3])),
                Arc::new(StringArray::from(vec!["t1", "t2", "t1"])),
                Arc::new(StringArray::from(vec!["a", "zero", "b"])),
            ],
        )
        .unwrap()
    }

    async fn run(predicate: Expr) -> Result<Vec<RecordBatch>> {
        let ctx = SessionContext::new();
        let df = ctx.read_batch(rows())?.filter(predicate)?;
        Ok(df.collect().await?)
    }

    fn visibility<'a>(t: &'a TableRef, s: &'a DFSchema, st: &'a SessionState) -> Visibility<'a> {
        Visibility {
            table: t,
            schema: s,
            state: st,
        }
    }

    #[tokio::test]
    async fn user_expression_never_sees_hidden_rows() {
        let t = TableRef::parse("gold.t").unwrap();
        let s = schema();
        let state = SessionContext::new().state();
        let filter = col("tenant").eq(lit("t1"));
        // Fails on the hidden row only: 1 / (CASE WHEN secret = 'zero' THEN 0 ELSE 1 END).
        let oracle = state
            .create_logical_expr("1 / (CASE WHEN secret = 'zero' THEN 0 ELSE 1 END) = 1", &s)
            .unwrap();
        let guarded = visibility(&t, &s, &state)
            .predicate(&filter, Some(oracle.clone()))
            .unwrap();
        let out = run(guarded).await.unwrap();
        assert_eq!(out.iter().map(RecordBatch::num_rows).sum::<usize>(), 2);
        // Without the guard the same predicate fails, whatever the conjunct order.
        assert!(run(oracle.clone().and(filter.clone())).await.is_err());
        assert!(run(filter.and(oracle)).await.is_err());
    }

    #[tokio::test]
    async fn failures_on_visible_rows_are_client_errors() {
        let t = TableRef::parse("gold.t").unwrap();
        let s = schema();
        let state = SessionContext::new().state();
        let filter = col("tenant").eq(lit("t1"));
        let fails = state
            .create_logical_expr("1 / (CASE WHEN secret = 'a' THEN 0 ELSE 1 END) = 1", &s)
            .unwrap();
        let guarded = visibility(&t, &s, &state)
            .predicate(&filter, Some(fails))
            .unwrap();
        let e = run(guarded).await.unwrap_err();
        assert_eq!(e.kind(), crate::error::ErrorKind::InvalidArgument, "{e}");
        assert!(e.to_string().contains(USER_EXPRESSION_FAILED), "{e}");
    }

    #[tokio::test]
    async fn values_are_null_outside_the_filter() {
        let t = TableRef::parse("gold.t").unwrap();
        let s = schema();
        let state = SessionContext::new().state();
        let filter = col("tenant").eq(lit("t1"));
        let value = state.create_logical_expr("upper(secret)", &s).unwrap();
        let guarded = visibility(&t, &s, &state).value(&filter, value).unwrap();
        let ctx = SessionContext::new();
        let out = ctx
            .read_batch(rows())
            .unwrap()
            .select(vec![guarded.alias("v")])
            .unwrap()
            .collect()
            .await
            .unwrap();
        let v = out[0]
            .column(0)
            .as_any()
            .downcast_ref::<StringArray>()
            .unwrap();
        assert_eq!(
            v.iter().collect::<Vec<_>>(),
            vec![Some("A"), None, Some("B")]
        );
    }

    #[test]
    fn comparisons_of_one_type_stay_outside_for_pruning() {
        let t = TableRef::parse("gold.t").unwrap();
        let s = schema();
        let state = SessionContext::new().state();
        let v = visibility(&t, &s, &state);
        let (safe, rest) = v.split(
            state
                .create_logical_expr("id = 3 AND tenant IN ('a', 'b') AND length(secret) > 2", &s)
                .unwrap(),
        );
        assert_eq!(safe.len(), 2, "{safe:?}");
        assert!(rest.is_some());
        // A cast of a string column to a number can fail on a hidden value.
        let (safe, rest) = v.split(state.create_logical_expr("secret = 5", &s).unwrap());
        assert!(safe.is_empty() && rest.is_some(), "{safe:?}");
        // Widening the column cannot fail.
        let (safe, _) = v.split(state.create_logical_expr("id = 3.5", &s).unwrap());
        assert_eq!(safe.len(), 1, "{safe:?}");
    }

    #[tokio::test]
    async fn a_failing_filter_does_not_say_why() {
        let t = TableRef::parse("gold.t").unwrap();
        let s = schema();
        let state = SessionContext::new().state();
        // The admin's filter casts a string column: fails on 'zero', and the cast error would
        // quote it.
        let filter = state
            .create_logical_expr("CAST(secret AS BIGINT) > 0 OR tenant = 't1'", &s)
            .unwrap();
        let guarded = visibility(&t, &s, &state)
            .predicate(
                &filter,
                Some(
                    state
                        .create_logical_expr("upper(secret) = 'A'", &s)
                        .unwrap(),
                ),
            )
            .unwrap();
        let e = run(guarded).await.unwrap_err();
        let text = format!("{e} {e:?}");
        assert!(!text.contains("zero"), "{text}");
        assert!(text.contains("a cast failed"), "{text}");
    }
}
