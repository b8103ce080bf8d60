//! Functions whose output can outgrow their input, bounded before they allocate.
//!
//! Invariant: one call of `repeat`, `lpad`, `rpad`, `replace`, `regexp_replace`,
//! `array_repeat`, `array_resize`, `range` or `generate_series` (one batch of rows) fails
//! with `ResourceExhausted` before it allocates more than `query.max_function_output_bytes`.
//!
//! Memory that operators hold (sorts, joins, aggregations, string aggregation) is counted by
//! DataFusion's memory pool; a scalar function's output is not. `lpad('a', 2147483647, 'b')`
//! asked for 2 GiB in one allocation and the allocator aborted the process;
//! `range(1, 400000000)` took 3 GiB past a 2 GiB pool. These are the functions whose output
//! is not bounded by the size of their arguments; every other built-in's output is at most a
//! small multiple of its input, which the pool, the batch size and the memory governor
//! ([`super::memory`]) bound. Each is re-registered wrapped in [`Bounded`], which estimates
//! the call's output from its arguments (an overestimate: UTF-8 characters count 4 bytes)
//! and refuses it beyond the limit, or forwards it unchanged.

use std::sync::Arc;

use arrow::array::{Array, ArrayRef, AsArray};
use arrow::datatypes::{DataType, FieldRef, Int64Type, IntervalUnit, TimeUnit};
use datafusion::common::config::ConfigOptions;
use datafusion::common::{ExprSchema, ScalarValue};
use datafusion::error::{DataFusionError, Result as DfResult};
use datafusion::execution::FunctionRegistry;
use datafusion::execution::context::SessionState;
use datafusion::logical_expr::interval_arithmetic::Interval;
use datafusion::logical_expr::preimage::PreimageResult;
use datafusion::logical_expr::simplify::{ExprSimplifyResult, SimplifyContext};
use datafusion::logical_expr::sort_properties::{ExprProperties, SortProperties};
use datafusion::logical_expr::{
    ColumnarValue, Documentation, Expr, ExpressionPlacement, ReturnFieldArgs, ScalarFunctionArgs,
    ScalarUDF, ScalarUDFImpl, Signature, StructFieldMapping,
};

use crate::error::Error;

/// How a function's output size follows from its arguments.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
enum Growth {
    /// `repeat(s, n)`: |s| × n.
    Repeat,
    /// `lpad/rpad(s, n[, fill])`: n characters.
    Pad,
    /// `replace(s, from, to)`: every occurrence of `from` (between every character when it
    /// is empty) becomes `to`.
    Replace,
    /// `regexp_replace(s, pattern, replacement[, flags])`: at most |s| + 1 matches.
    RegexpReplace,
    /// `array_repeat(element, n)`: n elements.
    ArrayRepeat,
    /// `array_resize(array, n[, value])`: n elements.
    ArrayResize,
    /// `range/generate_series([start,] stop[, step])`: (stop − start) / step elements.
    Range,
}

const GROWING: [(&str, Growth); 9] = [
    ("repeat", Growth::Repeat),
    ("lpad", Growth::Pad),
    ("rpad", Growth::Pad),
    ("replace", Growth::Replace),
    ("regexp_replace", Growth::RegexpReplace),
    ("array_repeat", Growth::ArrayRepeat),
    ("array_resize", Growth::ArrayResize),
    ("range", Growth::Range),
    ("generate_series", Growth::Range),
];

/// Re-registers the growing functions of `state` bounded to `limit` bytes per call.
pub(super) fn install(state: &mut SessionState, limit: u64) -> DfResult<()> {
    for (name, growth) in GROWING {
        let Some(inner) = state.scalar_functions().get(name).cloned() else {
            continue;
        };
        let bounded = ScalarUDF::new_from_impl(Bounded {
            inner: inner.as_ref().clone(),
            growth,
            limit,
        });
        state.register_udf(Arc::new(bounded))?;
    }
    Ok(())
}

/// A built-in function that refuses calls whose output would exceed `limit` bytes.
#[derive(Debug, PartialEq, Eq, Hash)]
struct Bounded {
    inner: ScalarUDF,
    growth: Growth,
    limit: u64,
}

/// One argument, row by row, as a number (a length, a count).
enum PerRow {
    All(f64),
    Each(Vec<f64>),
}

impl PerRow {
    fn get(&self, i: usize) -> f64 {
        match self {
            PerRow::All(v) => *v,
            PerRow::Each(v) => v.get(i).copied().unwrap_or(0.0),
        }
    }
}

fn array_of(v: &ColumnarValue) -> DfResult<ArrayRef> {
    match v {
        ColumnarValue::Array(a) => Ok(Arc::clone(a)),
        ColumnarValue::Scalar(s) => s.to_array_of_size(1),
    }
}

fn per_row(v: &ColumnarValue, f: impl Fn(&ArrayRef) -> DfResult<Vec<f64>>) -> DfResult<PerRow> {
    let values = f(&array_of(v)?)?;
    Ok(match v {
        ColumnarValue::Scalar(_) => PerRow::All(values.first().copied().unwrap_or(0.0)),
        ColumnarValue::Array(_) => PerRow::Each(values),
    })
}

/// Byte length of each string or binary value (NULL: 0).
fn byte_lengths(v: &ColumnarValue) -> DfResult<PerRow> {
    per_row(v, |a| {
        let lengths = arrow::compute::kernels::length::length(a)?;
        let lengths = arrow::compute::cast(&lengths, &DataType::Int64)?;
        Ok(lengths
            .as_primitive::<Int64Type>()
            .iter()
            .map(|l| l.unwrap_or(0).max(0) as f64)
            .collect())
    })
}

/// Each value as an integer (NULL or unconvertible: 0).
fn integers(v: &ColumnarValue) -> DfResult<PerRow> {
    per_row(v, |a| {
        let ints = arrow::compute::cast(a, &DataType::Int64)?;
        Ok(ints
            .as_primitive::<Int64Type>()
            .iter()
            .map(|n| n.unwrap_or(0) as f64)
            .collect())
    })
}

/// Average bytes per value of an argument (for elements of arrays).
fn average_size(v: &ColumnarValue, rows: usize) -> f64 {
    match v {
        ColumnarValue::Scalar(s) => s.size() as f64,
        ColumnarValue::Array(a) => a.get_array_memory_size() as f64 / rows.max(1) as f64,
    }
}

/// Values of a temporal argument in microseconds (dates and timestamps; nanoseconds would
/// overflow past 2262), row by row.
fn micros(v: &ColumnarValue) -> DfResult<PerRow> {
    per_row(v, |a| {
        let ts = arrow::compute::cast(a, &DataType::Timestamp(TimeUnit::Microsecond, None))?;
        let ints = arrow::compute::cast(&ts, &DataType::Int64)?;
        Ok(ints
            .as_primitive::<Int64Type>()
            .iter()
            .map(|n| n.unwrap_or(0) as f64)
            .collect())
    })
}

/// An interval step in microseconds (a month counts 28 days: an overestimate of the count).
fn interval_micros(v: &ColumnarValue) -> DfResult<PerRow> {
    per_row(v, |a| {
        let a = arrow::compute::cast(a, &DataType::Interval(IntervalUnit::MonthDayNano))?;
        Ok(
            a.as_primitive::<arrow::datatypes::IntervalMonthDayNanoType>()
                .iter()
                .map(|i| {
                    i.map_or(0.0, |i| {
                        const DAY: f64 = 86_400e6;
                        f64::from(i.months) * 28.0 * DAY
                            + f64::from(i.days) * DAY
                            + i.nanoseconds as f64 / 1e3
                    })
                })
                .collect(),
        )
    })
}

impl Bounded {
    /// An upper estimate of the call's output in bytes.
    fn estimate(&self, args: &[ColumnarValue], rows: usize) -> DfResult<f64> {
        let arg = |i: usize| args.get(i);
        let sum = |f: &dyn Fn(usize) -> f64| (0..rows).map(f).sum::<f64>();
        Ok(match self.growth {
            Growth::Repeat => {
                let (Some(s), Some(n)) = (arg(0), arg(1)) else {
                    return Ok(0.0);
                };
                let (s, n) = (byte_lengths(s)?, integers(n)?);
                sum(&|i| s.get(i) * n.get(i).max(0.0))
            }
            Growth::Pad => {
                let Some(n) = arg(1) else { return Ok(0.0) };
                let n = integers(n)?;
                sum(&|i| 4.0 * n.get(i).max(0.0))
            }
            Growth::Replace => {
                let (Some(s), Some(from), Some(to)) = (arg(0), arg(1), arg(2)) else {
                    return Ok(0.0);
                };
                let (s, from, to) = (byte_lengths(s)?, byte_lengths(from)?, byte_lengths(to)?);
                sum(&|i| s.get(i) + (s.get(i) / from.get(i).max(1.0) + 1.0) * to.get(i))
            }
            Growth::RegexpReplace => {
                let (Some(s), Some(to)) = (arg(0), arg(2)) else {
                    return Ok(0.0);
                };
                let (s, to) = (byte_lengths(s)?, byte_lengths(to)?);
                sum(&|i| s.get(i) + (s.get(i) + 1.0) * to.get(i))
            }
            Growth::ArrayRepeat => {
                let (Some(e), Some(n)) = (arg(0), arg(1)) else {
                    return Ok(0.0);
                };
                let size = average_size(e, rows).max(1.0);
                let n = integers(n)?;
                sum(&|i| size * n.get(i).max(0.0))
            }
            Growth::ArrayResize => {
                let (Some(a), Some(n)) = (arg(0), arg(1)) else {
                    return Ok(0.0);
                };
                let size = match a {
                    ColumnarValue::Array(arr) => arr
                        .as_list_opt::<i32>()
                        .map(|l| {
                            l.values().get_array_memory_size() as f64
                                / l.values().len().max(1) as f64
                        })
                        .unwrap_or(8.0),
                    ColumnarValue::Scalar(_) => 8.0,
                }
                .max(1.0);
                let n = integers(n)?;
                sum(&|i| size * n.get(i).max(0.0))
            }
            Growth::Range => self.range_estimate(args, rows)?,
        })
    }

    fn range_estimate(&self, args: &[ColumnarValue], rows: usize) -> DfResult<f64> {
        let temporal = args.first().is_some_and(|a| {
            matches!(
                a.data_type(),
                DataType::Date32 | DataType::Date64 | DataType::Timestamp(_, _)
            )
        });
        let count = |start: &PerRow, stop: &PerRow, step: &PerRow, i: usize| {
            let step = step.get(i).abs();
            if step == 0.0 {
                0.0
            } else {
                ((stop.get(i) - start.get(i)).abs() / step).floor() + 1.0
            }
        };
        let per_row_counts: Vec<f64> = if temporal {
            let (Some(start), Some(stop), Some(step)) = (args.first(), args.get(1), args.get(2))
            else {
                return Ok(0.0);
            };
            let (start, stop, step) = (micros(start)?, micros(stop)?, interval_micros(step)?);
            (0..rows).map(|i| count(&start, &stop, &step, i)).collect()
        } else {
            let (start, stop, step) = match args {
                [stop] => (PerRow::All(0.0), integers(stop)?, PerRow::All(1.0)),
                [start, stop] => (integers(start)?, integers(stop)?, PerRow::All(1.0)),
                [start, stop, step, ..] => (integers(start)?, integers(stop)?, integers(step)?),
                [] => return Ok(0.0),
            };
            (0..rows).map(|i| count(&start, &stop, &step, i)).collect()
        };
        Ok(per_row_counts.iter().sum::<f64>() * 8.0)
    }
}

impl ScalarUDFImpl for Bounded {
    fn name(&self) -> &str {
        self.inner.name()
    }

    fn display_name(&self, args: &[Expr]) -> DfResult<String> {
        #[allow(deprecated)]
        self.inner.inner().display_name(args)
    }

    fn schema_name(&self, args: &[Expr]) -> DfResult<String> {
        self.inner.inner().schema_name(args)
    }

    fn signature(&self) -> &Signature {
        self.inner.signature()
    }

    fn return_type(&self, arg_types: &[DataType]) -> DfResult<DataType> {
        self.inner.return_type(arg_types)
    }

    fn return_field_from_args(&self, args: ReturnFieldArgs<'_>) -> DfResult<FieldRef> {
        self.inner.return_field_from_args(args)
    }

    fn is_nullable(&self, args: &[Expr], schema: &dyn ExprSchema) -> bool {
        #[allow(deprecated)]
        self.inner.inner().is_nullable(args, schema)
    }

    fn is_strict(&self) -> bool {
        self.inner.inner().is_strict()
    }

    fn invoke_with_args(&self, args: ScalarFunctionArgs) -> DfResult<ColumnarValue> {
        let estimate = self.estimate(&args.args, args.number_rows)?;
        if estimate > self.limit as f64 {
            crate::telemetry::metrics().function_output_refused.inc();
            return Err(DataFusionError::External(Box::new(
                Error::ResourceExhausted(format!(
                    "{}() would produce about {} MiB for {} rows, over the {} MiB a function call may allocate (query.max_function_output_bytes)",
                    self.inner.name(),
                    (estimate / (1024.0 * 1024.0)).ceil() as u64,
                    args.number_rows,
                    self.limit / (1024 * 1024)
                )),
            )));
        }
        self.inner.invoke_with_args(args)
    }

    fn with_updated_config(&self, config: &ConfigOptions) -> Option<ScalarUDF> {
        let inner = self.inner.inner().with_updated_config(config)?;
        Some(ScalarUDF::new_from_impl(Bounded {
            inner,
            growth: self.growth,
            limit: self.limit,
        }))
    }

    fn aliases(&self) -> &[String] {
        self.inner.aliases()
    }

    fn simplify(&self, args: Vec<Expr>, info: &SimplifyContext) -> DfResult<ExprSimplifyResult> {
        self.inner.simplify(args, info)
    }

    fn preimage(
        &self,
        args: &[Expr],
        lit_expr: &Expr,
        info: &SimplifyContext,
    ) -> DfResult<PreimageResult> {
        self.inner.inner().preimage(args, lit_expr, info)
    }

    fn conditional_arguments<'a>(
        &self,
        args: &'a [Expr],
    ) -> Option<(Vec<&'a Expr>, Vec<&'a Expr>)> {
        self.inner.inner().conditional_arguments(args)
    }

    fn short_circuits(&self) -> bool {
        self.inner.short_circuits()
    }

    fn evaluate_bounds(&self, input: &[&Interval]) -> DfResult<Interval> {
        self.inner.evaluate_bounds(input)
    }

    fn propagate_constraints(
        &self,
        interval: &Interval,
        inputs: &[&Interval],
    ) -> DfResult<Option<Vec<Interval>>> {
        self.inner.propagate_constraints(interval, inputs)
    }

    fn struct_field_mapping(
        &self,
        literal_args: &[Option<ScalarValue>],
    ) -> Option<StructFieldMapping> {
        self.inner.inner().struct_field_mapping(literal_args)
    }

    fn output_ordering(&self, inputs: &[ExprProperties]) -> DfResult<SortProperties> {
        self.inner.output_ordering(inputs)
    }

    fn preserves_lex_ordering(&self, inputs: &[ExprProperties]) -> DfResult<bool> {
        self.inner.preserves_lex_ordering(inputs)
    }

    fn strictly_order_preserving(&self, inputs: &[ExprProperties]) -> DfResult<bool> {
        self.inner.inner().strictly_order_preserving(inputs)
    }

    fn coerce_types(&self, arg_types: &[DataType]) -> DfResult<Vec<DataType>> {
        self.inner.coerce_types(arg_types)
    }

    fn documentation(&self) -> Option<&Documentation> {
        self.inner.documentation()
    }

    fn placement(&self, args: &[ExpressionPlacement]) -> ExpressionPlacement {
        self.inner.inner().placement(args)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use datafusion::execution::SessionStateBuilder;
    use datafusion::prelude::SessionContext;

    async fn run(sql: &str) -> crate::error::Result<usize> {
        let mut state = SessionStateBuilder::new().with_default_features().build();
        install(&mut state, 64 << 20)?;
        let ctx = SessionContext::new_with_state(state);
        let batches = ctx.sql(sql).await?.collect().await?;
        Ok(batches.iter().map(|b| b.num_rows()).sum())
    }

    #[tokio::test]
    async fn growing_calls_are_refused_before_they_allocate() {
        for sql in [
            "SELECT length(lpad('a', 2147483647, 'b'))",
            "SELECT length(rpad('a', 2147483647))",
            "SELECT length(repeat('a', 2000000000))",
            "SELECT cardinality(range(1, 400000000))",
            "SELECT cardinality(generate_series(1, 400000000))",
            "SELECT cardinality(range(TIMESTAMP '1970-01-01', TIMESTAMP '2200-01-01', INTERVAL '1 minute'))",
            "SELECT cardinality(array_repeat(1, 100000000))",
            "SELECT cardinality(array_resize([1], 100000000, 0))",
            "SELECT length(replace(repeat('a', 10000), 'a', repeat('b', 100000)))",
            "SELECT length(regexp_replace(repeat('a', 10000), '', repeat('b', 100000), 'g'))",
            // Small per row, huge per batch.
            "SELECT length(repeat(CAST(i AS STRING), 100000)) FROM (SELECT unnest(range(1, 2000)) AS i)",
        ] {
            let e = run(sql).await.unwrap_err();
            assert_eq!(
                e.kind(),
                crate::error::ErrorKind::ResourceExhausted,
                "{sql}: {e}"
            );
        }
    }

    #[tokio::test]
    async fn ordinary_calls_pass() {
        for sql in [
            "SELECT lpad('7', 5, '0'), rpad('ab', 4), repeat('ab', 3)",
            "SELECT replace('a-b-c', '-', '+'), regexp_replace('a1b2', '[0-9]', 'x', 'g')",
            "SELECT range(1, 10), generate_series(1, 5, 2), range(5)",
            "SELECT range(DATE '2024-01-01', DATE '2024-12-31', INTERVAL '1 day')",
            "SELECT array_repeat('x', 3), array_resize([1, 2], 5, 0)",
            "SELECT lpad(CAST(i AS STRING), 10, '0') FROM (SELECT unnest(range(1, 5000)) AS i)",
        ] {
            assert!(run(sql).await.is_ok(), "{sql}");
        }
    }
}
