//! `s IN ('a', 'b', …)` over strings, without hashing each row.
//!
//! DataFusion 55 evaluates an IN list of string literals through its generic
//! `ArrayStaticFilter`: every row is hashed and compared through a dynamic comparator. BI
//! filters (`region IN (…)`, `status NOT IN (…)`) and expectations are full of such lists,
//! and a profile of ten expectations over 10M rows put that filter at about 5% of the run.
//! [`InStrings`] answers the same question from the bytes: for a `Utf8View` column and a list
//! of strings of at most 12 bytes (codes, statuses, regions), each row's 16-byte view *is* its
//! value (length and inline bytes), so membership is a few integer compares per row; longer
//! lists and the other string types compare bytes after a length check.
//!
//! [`FastStringInList`] runs last among the physical optimizer rules and swaps an `InListExpr`
//! for an `InStrings` inside `FilterExec` and `ProjectionExec` only, when the tested value is
//! a string column and every list item is a non-NULL string literal. A list holding NULL keeps
//! DataFusion's expression (its three-valued answer differs), and scan predicates are never
//! touched (parquet pruning reads `InListExpr` by its type). The answer is the same as
//! DataFusion's, NULL rows included: the unit tests compare both over every string type.

use std::fmt;
use std::hash::{Hash, Hasher};
use std::sync::Arc;

use arrow::array::{Array, AsArray, BooleanArray, GenericStringArray, OffsetSizeTrait};
use arrow::buffer::BooleanBuffer;
use arrow::datatypes::{DataType, Schema};
use arrow::record_batch::RecordBatch;
use datafusion::common::ScalarValue;
use datafusion::common::config::ConfigOptions;
use datafusion::common::tree_node::{Transformed, TransformedResult, TreeNode};
use datafusion::error::{DataFusionError, Result as DfResult};
use datafusion::logical_expr::ColumnarValue;
use datafusion::physical_expr::PhysicalExpr;
use datafusion::physical_expr::expressions::{InListExpr, Literal};
use datafusion::physical_optimizer::PhysicalOptimizerRule;
use datafusion::physical_plan::ExecutionPlan;
use datafusion::physical_plan::filter::{FilterExec, FilterExecBuilder};
use datafusion::physical_plan::projection::{ProjectionExec, ProjectionExpr};

/// The longest string a `Utf8View` holds inside its view.
const INLINE: usize = 12;

/// `expr [NOT] IN (list)` for a string `expr` and a list of non-NULL string literals.
#[derive(Debug, Clone)]
pub(crate) struct InStrings {
    expr: Arc<dyn PhysicalExpr>,
    list: Vec<String>,
    negated: bool,
    /// Each item as the view a `Utf8View` array would hold for it, when every item is inline.
    inline: Option<Vec<u128>>,
}

impl InStrings {
    pub(crate) fn new(expr: Arc<dyn PhysicalExpr>, list: Vec<String>, negated: bool) -> Self {
        let mut list = list;
        list.sort();
        list.dedup();
        let inline = list.iter().all(|s| s.len() <= INLINE).then(|| {
            let mut views: Vec<u128> = list.iter().map(|s| inline_view(s.as_bytes())).collect();
            views.sort_unstable();
            views
        });
        Self {
            expr,
            list,
            negated,
            inline,
        }
    }

    /// The `InStrings` equivalent to `e`, when there is one.
    fn from_in_list(e: &InListExpr, schema: &Schema) -> Option<Self> {
        let string = matches!(
            e.expr().data_type(schema).ok()?,
            DataType::Utf8 | DataType::LargeUtf8 | DataType::Utf8View
        );
        if !string || e.list().is_empty() {
            return None;
        }
        let list = e
            .list()
            .iter()
            .map(|item| match item.downcast_ref::<Literal>()?.value() {
                ScalarValue::Utf8(Some(s))
                | ScalarValue::LargeUtf8(Some(s))
                | ScalarValue::Utf8View(Some(s)) => Some(s.clone()),
                _ => None,
            })
            .collect::<Option<Vec<_>>>()?;
        Some(Self::new(Arc::clone(e.expr()), list, e.negated()))
    }

    fn contains(&self, value: &[u8]) -> bool {
        self.list
            .binary_search_by(|item| item.as_bytes().cmp(value))
            .is_ok()
    }

    fn over_views(&self, a: &arrow::array::StringViewArray) -> BooleanBuffer {
        let views = a.views();
        match &self.inline {
            // A short list is scanned (branch-free compares), a long one searched.
            Some(set) if set.len() <= 16 => BooleanBuffer::collect_bool(a.len(), |i| {
                set.iter().any(|s| *s == views[i]) != self.negated
            }),
            Some(set) => BooleanBuffer::collect_bool(a.len(), |i| {
                set.binary_search(&views[i]).is_ok() != self.negated
            }),
            None => BooleanBuffer::collect_bool(a.len(), |i| {
                self.contains(a.value(i).as_bytes()) != self.negated
            }),
        }
    }

    /// Over `Utf8`/`LargeUtf8` (a model's output cast for the write, a CSV upload): when
    /// every item is inline, each row's bytes become the view a `Utf8View` would hold for
    /// them (one 16-byte load and a mask, no call per row) and are compared as above; a
    /// byte-wise search per row cost several `memcmp` calls and made ten expectations over
    /// 10M rows a third slower instead of a few percent.
    fn over_strings<O: OffsetSizeTrait>(&self, a: &GenericStringArray<O>) -> BooleanBuffer {
        let Some(set) = &self.inline else {
            return BooleanBuffer::collect_bool(a.len(), |i| {
                self.contains(a.value(i).as_bytes()) != self.negated
            });
        };
        let offsets = a.value_offsets();
        let data = a.value_data();
        let view = |i: usize| -> Option<u128> {
            let (start, end) = (offsets[i].as_usize(), offsets[i + 1].as_usize());
            let len = end - start;
            if len > INLINE {
                return None;
            }
            let word = match data.get(start..start + 16) {
                Some(chunk) => {
                    let mut raw = [0u8; 16];
                    raw.copy_from_slice(chunk);
                    u128::from_le_bytes(raw)
                }
                // The buffer's last bytes: copied as they are.
                None => return Some(inline_view(&data[start..end])),
            };
            let mask = (1u128 << (8 * len)) - 1;
            Some(((word & mask) << 32) | len as u128)
        };
        if set.len() <= 16 {
            BooleanBuffer::collect_bool(a.len(), |i| {
                view(i).is_some_and(|v| set.contains(&v)) != self.negated
            })
        } else {
            BooleanBuffer::collect_bool(a.len(), |i| {
                view(i).is_some_and(|v| set.binary_search(&v).is_ok()) != self.negated
            })
        }
    }
}

/// The view of an inline string (at most 12 bytes): its length in the low 32 bits, its bytes
/// after, zero-padded. Arrow requires the padding to be zero (`StringViewArray::try_new`
/// refuses a view without it), so equal inline strings have equal views; a longer string's
/// view differs from every inline one in its length field alone.
fn inline_view(bytes: &[u8]) -> u128 {
    let mut raw = [0u8; 16];
    raw[..4].copy_from_slice(&(bytes.len() as u32).to_le_bytes());
    raw[4..4 + bytes.len()].copy_from_slice(bytes);
    u128::from_le_bytes(raw)
}

impl fmt::Display for InStrings {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let op = if self.negated { "NOT IN" } else { "IN" };
        write!(f, "{} {op} (STRINGS) ({:?})", self.expr, self.list)
    }
}

impl PartialEq for InStrings {
    fn eq(&self, other: &Self) -> bool {
        self.expr.eq(&other.expr) && self.list == other.list && self.negated == other.negated
    }
}

impl Eq for InStrings {}

impl Hash for InStrings {
    fn hash<H: Hasher>(&self, state: &mut H) {
        self.expr.hash(state);
        self.list.hash(state);
        self.negated.hash(state);
    }
}

impl PhysicalExpr for InStrings {
    fn data_type(&self, _input_schema: &Schema) -> DfResult<DataType> {
        Ok(DataType::Boolean)
    }

    fn nullable(&self, input_schema: &Schema) -> DfResult<bool> {
        self.expr.nullable(input_schema)
    }

    fn evaluate(&self, batch: &RecordBatch) -> DfResult<ColumnarValue> {
        let array = match self.expr.evaluate(batch)? {
            ColumnarValue::Scalar(s) => {
                let answer = match &s {
                    ScalarValue::Utf8(v) | ScalarValue::LargeUtf8(v) | ScalarValue::Utf8View(v) => {
                        v.as_ref()
                            .map(|v| self.contains(v.as_bytes()) != self.negated)
                    }
                    other => {
                        return Err(datafusion::error::DataFusionError::Internal(format!(
                            "IN over strings evaluated a {} value",
                            other.data_type()
                        )));
                    }
                };
                return Ok(ColumnarValue::Scalar(ScalarValue::Boolean(answer)));
            }
            ColumnarValue::Array(a) => a,
        };
        let values = match array.data_type() {
            DataType::Utf8View => self.over_views(array.as_string_view()),
            DataType::Utf8 => self.over_strings(array.as_string::<i32>()),
            DataType::LargeUtf8 => self.over_strings(array.as_string::<i64>()),
            other => {
                return Err(datafusion::error::DataFusionError::Internal(format!(
                    "IN over strings evaluated a {other} column"
                )));
            }
        };
        // No NULL in the list: a row's answer is NULL exactly when its value is.
        Ok(ColumnarValue::Array(Arc::new(BooleanArray::new(
            values,
            array.nulls().cloned(),
        ))))
    }

    fn children(&self) -> Vec<&Arc<dyn PhysicalExpr>> {
        vec![&self.expr]
    }

    fn with_new_children(
        self: Arc<Self>,
        children: Vec<Arc<dyn PhysicalExpr>>,
    ) -> DfResult<Arc<dyn PhysicalExpr>> {
        let [expr] = <[_; 1]>::try_from(children).map_err(|c| {
            datafusion::error::DataFusionError::Internal(format!(
                "IN over strings has one child, given {}",
                c.len()
            ))
        })?;
        Ok(Arc::new(Self {
            expr,
            ..self.as_ref().clone()
        }))
    }

    fn fmt_sql(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.expr.fmt_sql(f)?;
        f.write_str(if self.negated { " NOT IN (" } else { " IN (" })?;
        for (i, s) in self.list.iter().enumerate() {
            if i > 0 {
                f.write_str(", ")?;
            }
            write!(f, "'{}'", s.replace('\'', "''"))?;
        }
        f.write_str(")")
    }
}

/// Swaps string IN lists for [`InStrings`] in filters and projections.
#[derive(Debug, Default)]
pub(crate) struct FastStringInList;

impl FastStringInList {
    fn rewrite(
        e: &Arc<dyn PhysicalExpr>,
        schema: &Schema,
    ) -> DfResult<Transformed<Arc<dyn PhysicalExpr>>> {
        Arc::clone(e).transform_up(|e| {
            let fast = e
                .downcast_ref::<InListExpr>()
                .and_then(|in_list| InStrings::from_in_list(in_list, schema));
            Ok(match fast {
                Some(fast) => Transformed::yes(Arc::new(fast) as Arc<dyn PhysicalExpr>),
                None => Transformed::no(e),
            })
        })
    }

    fn node(plan: Arc<dyn ExecutionPlan>) -> DfResult<Transformed<Arc<dyn ExecutionPlan>>> {
        if let Some(filter) = plan.downcast_ref::<FilterExec>() {
            let predicate = Self::rewrite(filter.predicate(), &filter.input().schema())?;
            if !predicate.transformed {
                return Ok(Transformed::no(plan));
            }
            let rebuilt = FilterExecBuilder::from(filter)
                .with_predicate(predicate.data)
                .build()?;
            return Ok(Transformed::yes(Arc::new(rebuilt)));
        }
        if let Some(projection) = plan.downcast_ref::<ProjectionExec>() {
            let schema = projection.input().schema();
            let mut changed = false;
            let mut exprs = Vec::with_capacity(projection.expr().len());
            for p in projection.expr() {
                let e = Self::rewrite(&p.expr, &schema)?;
                changed |= e.transformed;
                exprs.push(ProjectionExpr {
                    expr: e.data,
                    alias: p.alias.clone(),
                });
            }
            if !changed {
                return Ok(Transformed::no(plan));
            }
            let rebuilt = ProjectionExec::try_new_with_schema_metadata(
                exprs,
                Arc::clone(projection.input()),
                projection.schema().as_ref(),
            )?;
            return Ok(Transformed::yes(Arc::new(rebuilt)));
        }
        Ok(Transformed::no(plan))
    }
}

impl PhysicalOptimizerRule for FastStringInList {
    fn optimize(
        &self,
        plan: Arc<dyn ExecutionPlan>,
        _config: &ConfigOptions,
    ) -> DfResult<Arc<dyn ExecutionPlan>> {
        plan.transform_up(Self::node).data()
    }

    fn name(&self) -> &str {
        "strata_fast_string_in_list"
    }

    fn schema_check(&self) -> bool {
        true
    }
}

/// [`InStrings`] on the cluster's wire (`crate::cluster`): its list and negation; its one
/// input travels as datafusion-proto's.
#[derive(Debug, Default)]
pub(crate) struct InStringsCodec;

/// The first bytes of an encoded [`InStrings`].
const IN_MAGIC: &[u8] = b"STRATA-IN/1";

#[derive(Clone, PartialEq, prost::Message)]
struct InListMessage {
    #[prost(string, repeated, tag = "1")]
    list: Vec<String>,
    #[prost(bool, tag = "2")]
    negated: bool,
}

impl crate::cluster::ExprCodec for InStringsCodec {
    fn encode(&self, node: &Arc<dyn PhysicalExpr>, buf: &mut Vec<u8>) -> DfResult<bool> {
        use prost::Message;
        let Some(e) = node.downcast_ref::<InStrings>() else {
            return Ok(false);
        };
        buf.extend_from_slice(IN_MAGIC);
        buf.extend(
            InListMessage {
                list: e.list.clone(),
                negated: e.negated,
            }
            .encode_to_vec(),
        );
        Ok(true)
    }

    fn decode(
        &self,
        buf: &[u8],
        inputs: &[Arc<dyn PhysicalExpr>],
    ) -> DfResult<Option<Arc<dyn PhysicalExpr>>> {
        use prost::Message;
        let Some(rest) = buf.strip_prefix(IN_MAGIC) else {
            return Ok(None);
        };
        let m = InListMessage::decode(rest)
            .map_err(|e| DataFusionError::Internal(format!("an IN list: {e}")))?;
        let [expr] = inputs else {
            return Err(DataFusionError::Internal("an IN list has one input".into()));
        };
        Ok(Some(Arc::new(InStrings::new(
            Arc::clone(expr),
            m.list,
            m.negated,
        ))))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use arrow::array::{ArrayRef, LargeStringArray, StringArray, StringViewArray};
    use arrow::datatypes::Field;
    use datafusion::physical_expr::expressions::{col, in_list, lit};

    fn values() -> Vec<Option<&'static str>> {
        vec![
            Some("r0"),
            None,
            Some(""),
            Some("r1"),
            Some("r10"),
            Some("twelve bytes"),
            Some("thirteen byte"),
            Some("a rather long value past the inline limit"),
            Some("r"),
            Some("r0 "),
            Some("é"),
            None,
            Some("twelve bytez"),
        ]
    }

    fn lists() -> Vec<Vec<&'static str>> {
        vec![
            vec!["r0", "r1"],
            vec!["", "r"],
            vec!["twelve bytes", "é", "r1", "r1"],
            vec!["thirteen byte", "r0"],
            vec!["a rather long value past the inline limit"],
            vec!["nothing here"],
            // More than 16 inline items: searched, not scanned.
            vec![
                "a",
                "b",
                "c",
                "d",
                "e",
                "f",
                "g",
                "h",
                "i",
                "j",
                "k",
                "l",
                "m",
                "n",
                "o",
                "p",
                "q",
                "r10",
                "twelve bytes",
                "r0",
            ],
        ]
    }

    fn arrays() -> Vec<ArrayRef> {
        let v = values();
        let view = StringViewArray::from(v.clone());
        vec![
            Arc::new(StringArray::from(v.clone())),
            Arc::new(LargeStringArray::from(v.clone())),
            Arc::new(view.clone()),
            // A slice starts mid-array: offsets and nulls shifted.
            Arc::new(view.slice(3, 7)),
            Arc::new(StringArray::from(v).slice(2, 9)),
        ]
    }

    fn batch(a: &ArrayRef) -> RecordBatch {
        let schema = Schema::new(vec![Field::new("s", a.data_type().clone(), true)]);
        RecordBatch::try_new(Arc::new(schema), vec![Arc::clone(a)]).unwrap()
    }

    fn answer(e: &dyn PhysicalExpr, b: &RecordBatch) -> BooleanArray {
        e.evaluate(b)
            .unwrap()
            .into_array(b.num_rows())
            .unwrap()
            .as_boolean()
            .clone()
    }

    #[test]
    fn answers_exactly_as_datafusion_over_every_string_type() {
        for a in &arrays() {
            let b = batch(a);
            let schema = b.schema();
            for list in lists() {
                for negated in [false, true] {
                    let items = list
                        .iter()
                        .map(|s| {
                            ScalarValue::try_from_string(s.to_string(), a.data_type())
                                .map(lit)
                                .unwrap()
                        })
                        .collect();
                    let reference =
                        in_list(col("s", &schema).unwrap(), items, &negated, &schema).unwrap();
                    let in_list = reference.downcast_ref::<InListExpr>().unwrap();
                    let fast = InStrings::from_in_list(in_list, &schema).unwrap();
                    assert_eq!(
                        answer(&fast, &b),
                        answer(reference.as_ref(), &b),
                        "{} {list:?} negated={negated}",
                        a.data_type()
                    );
                }
            }
        }
    }

    #[test]
    fn a_list_with_null_or_a_non_string_value_keeps_datafusions_expression() {
        let a: ArrayRef = Arc::new(StringViewArray::from(values()));
        let schema = batch(&a).schema();
        let with_null = in_list(
            col("s", &schema).unwrap(),
            vec![lit("r0"), lit(ScalarValue::Utf8View(None))],
            &false,
            &schema,
        )
        .unwrap();
        let in_list_expr = with_null.downcast_ref::<InListExpr>().unwrap();
        assert!(InStrings::from_in_list(in_list_expr, &schema).is_none());

        let ints = Schema::new(vec![Field::new("i", DataType::Int64, true)]);
        let over_ints = in_list(col("i", &ints).unwrap(), vec![lit(1i64)], &false, &ints).unwrap();
        let in_list_expr = over_ints.downcast_ref::<InListExpr>().unwrap();
        assert!(InStrings::from_in_list(in_list_expr, &ints).is_none());
    }

    #[test]
    fn it_crosses_the_clusters_wire_unchanged() {
        use crate::cluster::ExprCodec;
        use datafusion::physical_expr::expressions::Column;
        let col: Arc<dyn PhysicalExpr> = Arc::new(Column::new("s", 0));
        let e: Arc<dyn PhysicalExpr> = Arc::new(InStrings::new(
            Arc::clone(&col),
            vec!["b".into(), "a".into()],
            true,
        ));
        let mut buf = Vec::new();
        assert!(InStringsCodec.encode(&e, &mut buf).unwrap());
        let back = InStringsCodec.decode(&buf, &[col]).unwrap().unwrap();
        assert_eq!(back.to_string(), e.to_string());
        // Anything else is not its business.
        let other: Arc<dyn PhysicalExpr> = Arc::new(Column::new("s", 0));
        assert!(!InStringsCodec.encode(&other, &mut Vec::new()).unwrap());
        assert!(InStringsCodec.decode(b"other", &[]).unwrap().is_none());
    }

    #[test]
    fn a_scalar_value_is_answered_as_a_scalar() {
        let schema = Schema::new(vec![Field::new("s", DataType::Utf8, true)]);
        let b = RecordBatch::new_empty(Arc::new(schema));
        for (value, negated, expected) in [
            (Some("r1"), false, Some(true)),
            (Some("r9"), false, Some(false)),
            (Some("r1"), true, Some(false)),
            (None, false, None),
            (None, true, None),
        ] {
            let e = InStrings::new(
                lit(ScalarValue::Utf8(value.map(str::to_string))),
                vec!["r0".into(), "r1".into()],
                negated,
            );
            match e.evaluate(&b).unwrap() {
                ColumnarValue::Scalar(ScalarValue::Boolean(v)) => assert_eq!(v, expected),
                other => panic!("not a boolean scalar: {other:?}"),
            }
        }
    }

    #[test]
    fn inline_views_are_what_arrow_writes() {
        for s in ["", "r0", "twelve bytes", "é"] {
            let a = StringViewArray::from(vec![s]);
            assert_eq!(a.views()[0], inline_view(s.as_bytes()), "{s:?}");
        }
    }
}
