//! Column statistics of a table version, from its Delta log.
//!
//! Every `add` action carries `numRecords` and per-column `minValues`, `maxValues`,
//! `nullCount`; delta-rs hands DataFusion only the row counts (and column statistics only for
//! columns a scan filters on), so the planner guessed join sizes: `ship_mode ⋈ catalog_sales`
//! came out at 20 rows and later joins built their hash tables on the 1.4M-row side. Here the
//! whole table's statistics are folded from the log once per version (cached by the
//! catalog): row count, bytes, and per column min, max and null count.
//!
//! Everything is [`Precision::Inexact`]: a scan may skip files, strings are truncated by
//! writers, and the numbers describe the table, not a principal's rows. The planner orders
//! joins by them; nothing is ever answered from them (`COUNT(*)` / `MIN` / `MAX` shortcuts
//! need exact values). A column whose statistics are missing in any file has none.

use std::fmt;
use std::sync::Arc;

use arrow::array::{Array, ArrayRef, AsArray, RecordBatch};
use arrow::datatypes::{DataType, Int64Type, Schema};
use datafusion::common::config::ConfigOptions;
use datafusion::common::stats::Precision;
use datafusion::common::tree_node::TreeNodeRecursion;
use datafusion::common::{ColumnStatistics, DataFusionError, ScalarValue, Statistics};
use datafusion::error::Result as DfResult;
use datafusion::execution::{SendableRecordBatchStream, TaskContext};
use datafusion::functions_aggregate::min_max::{MaxAccumulator, MinAccumulator};
use datafusion::logical_expr::Accumulator;
use datafusion::physical_expr::PhysicalExpr;
use datafusion::physical_plan::execution_plan::CardinalityEffect;
use datafusion::physical_plan::filter_pushdown::{
    ChildPushdownResult, FilterDescription, FilterPushdownPhase, FilterPushdownPropagation,
};
use datafusion::physical_plan::{
    ChildStats, DisplayAs, DisplayFormatType, ExecutionPlan, PlanProperties, StatisticsArgs,
};
use deltalake::DeltaTable;

use crate::error::Result;

/// Statistics of `table`'s current version over its full schema (in schema order).
pub(crate) fn table_statistics(table: &DeltaTable) -> Result<Statistics> {
    let snapshot = table.snapshot()?;
    let schema = snapshot.snapshot().arrow_schema();
    let partitions = snapshot.metadata().partition_columns().to_vec();
    let adds = snapshot.add_actions_table(true)?;
    Ok(fold(&adds, &schema, &partitions))
}

fn fold(adds: &RecordBatch, schema: &Schema, partitions: &[String]) -> Statistics {
    let ints = |name: &str| -> Option<Vec<Option<i64>>> {
        let c = adds.column_by_name(name)?;
        let c = arrow::compute::cast(c, &DataType::Int64).ok()?;
        Some(c.as_primitive::<Int64Type>().iter().collect())
    };
    let records = ints("num_records");
    let rows: Option<i64> = records
        .as_ref()
        .and_then(|r| r.iter().try_fold(0i64, |acc, n| n.map(|n| acc + n)));
    let bytes: Option<i64> = ints("size_bytes").map(|s| s.iter().flatten().sum());
    let column_statistics = schema
        .fields()
        .iter()
        .map(|f| {
            if partitions.contains(f.name()) {
                partition_column(adds, f.name(), records.as_deref())
            } else {
                data_column(adds, f.name(), f.data_type(), records.as_deref())
            }
        })
        .collect();
    Statistics {
        num_rows: rows.map_or(Precision::Absent, |n| Precision::Inexact(n.max(0) as usize)),
        total_byte_size: bytes.map_or(Precision::Absent, |n| Precision::Inexact(n.max(0) as usize)),
        column_statistics,
    }
}

fn unknown() -> ColumnStatistics {
    ColumnStatistics::new_unknown()
}

/// Min and max of `values`, ignoring NULLs (`None` when there is none or the type has no
/// ordering DataFusion's accumulators know).
fn min_max(values: &ArrayRef) -> Option<(ScalarValue, ScalarValue)> {
    let mut min = MinAccumulator::try_new(values.data_type()).ok()?;
    let mut max = MaxAccumulator::try_new(values.data_type()).ok()?;
    min.update_batch(std::slice::from_ref(values)).ok()?;
    max.update_batch(std::slice::from_ref(values)).ok()?;
    let (min, max) = (min.evaluate().ok()?, max.evaluate().ok()?);
    (!min.is_null() && !max.is_null()).then_some((min, max))
}

fn data_column(
    adds: &RecordBatch,
    name: &str,
    data_type: &DataType,
    records: Option<&[Option<i64>]>,
) -> ColumnStatistics {
    let (Some(mins), Some(maxs), Some(nulls), Some(records)) = (
        adds.column_by_name(&format!("min.{name}")),
        adds.column_by_name(&format!("max.{name}")),
        adds.column_by_name(&format!("null_count.{name}")),
        records,
    ) else {
        return unknown();
    };
    let Ok(nulls) = arrow::compute::cast(nulls, &DataType::Int64) else {
        return unknown();
    };
    let nulls = nulls.as_primitive::<Int64Type>();
    // A file without statistics for this column leaves the table without them: a NULL min
    // is only fine where every value of the file is NULL.
    let mut null_count = 0i64;
    for i in 0..adds.num_rows() {
        let (Some(rows), true) = (records.get(i).copied().flatten(), nulls.is_valid(i)) else {
            return unknown();
        };
        let n = nulls.value(i);
        if (mins.is_null(i) || maxs.is_null(i)) && n < rows {
            return unknown();
        }
        null_count += n;
    }
    let bounds = min_max(mins)
        .zip(min_max(maxs))
        .and_then(|((lo, _), (_, hi))| {
            // Writers store the column's own type; anything else is not a bound we can use.
            (lo.data_type() == *data_type && hi.data_type() == *data_type).then_some((lo, hi))
        });
    ColumnStatistics {
        null_count: Precision::Inexact(null_count.max(0) as usize),
        min_value: bounds
            .as_ref()
            .map_or(Precision::Absent, |(lo, _)| Precision::Inexact(lo.clone())),
        max_value: bounds.map_or(Precision::Absent, |(_, hi)| Precision::Inexact(hi)),
        ..unknown()
    }
}

fn partition_column(
    adds: &RecordBatch,
    name: &str,
    records: Option<&[Option<i64>]>,
) -> ColumnStatistics {
    let Some(values) = adds.column_by_name(&format!("partition.{name}")) else {
        return unknown();
    };
    let null_count: Option<i64> = records.and_then(|r| {
        (0..values.len()).try_fold(0i64, |acc, i| {
            let rows = r.get(i).copied().flatten()?;
            Some(acc + if values.is_null(i) { rows } else { 0 })
        })
    });
    let bounds = min_max(values);
    ColumnStatistics {
        null_count: null_count.map_or(Precision::Absent, |n| Precision::Inexact(n as usize)),
        min_value: bounds
            .as_ref()
            .map_or(Precision::Absent, |(lo, _)| Precision::Inexact(lo.clone())),
        max_value: bounds.map_or(Precision::Absent, |(_, hi)| Precision::Inexact(hi)),
        ..unknown()
    }
}

/// `stats` (over `table_schema`) for the columns of `output`, matched by name; columns it
/// does not know are unknown. No byte size: the table's is its compressed files, all
/// columns, and DataFusion picks a hash join's build side by bytes before rows — a 4-column
/// 11.7M-row `inventory` (18 MB of Parquet) looked smaller than a 34-column 1.4M-row
/// `catalog_sales` (50 MB) and TPC-DS q72 built its hash table on the 11.7M rows (24 s
/// instead of 5). Without bytes it compares rows.
pub(crate) fn project(stats: &Statistics, table_schema: &Schema, output: &Schema) -> Statistics {
    Statistics {
        num_rows: stats.num_rows,
        total_byte_size: Precision::Absent,
        column_statistics: output
            .fields()
            .iter()
            .map(|f| {
                table_schema
                    .index_of(f.name())
                    .ok()
                    .and_then(|i| stats.column_statistics.get(i).cloned())
                    .unwrap_or_else(unknown)
            })
            .collect(),
    }
}

/// Cached statistics per (Delta table id, version): folding the log once per version.
#[derive(Debug)]
pub(crate) struct StatisticsCache {
    cache: moka::sync::Cache<(String, u64), Arc<Statistics>>,
}

impl Default for StatisticsCache {
    fn default() -> Self {
        StatisticsCache {
            cache: moka::sync::Cache::new(1024),
        }
    }
}

impl StatisticsCache {
    /// The statistics of `table`'s current version (`None` when its log cannot tell).
    pub(crate) fn get(&self, table: &DeltaTable) -> Option<Arc<Statistics>> {
        let snapshot = table.snapshot().ok()?;
        let key = (
            snapshot.metadata().id().to_string(),
            table.version().unwrap_or(0),
        );
        if let Some(hit) = self.cache.get(&key) {
            return Some(hit);
        }
        match table_statistics(table) {
            Ok(stats) => {
                let stats = Arc::new(stats);
                self.cache.insert(key, Arc::clone(&stats));
                Some(stats)
            }
            Err(e) => {
                tracing::debug!(error = %e, "no statistics from the Delta log");
                None
            }
        }
    }
}

/// A Delta scan with the table's column statistics: transparent to execution, filter and
/// limit pushdown, it only answers the planner's statistics question with the scan's own row
/// count (files skipped included) and the log's column statistics, all inexact.
#[derive(Debug)]
pub(crate) struct StatisticsExec {
    input: Arc<dyn ExecutionPlan>,
    /// Over the input's output columns.
    columns: Vec<ColumnStatistics>,
}

impl StatisticsExec {
    /// `input` (a scan of a table with `stats` over `table_schema`) with column statistics.
    pub(crate) fn wrap(
        input: Arc<dyn ExecutionPlan>,
        stats: &Statistics,
        table_schema: &Schema,
    ) -> Arc<dyn ExecutionPlan> {
        let columns = project(stats, table_schema, input.schema().as_ref()).column_statistics;
        Arc::new(StatisticsExec { input, columns })
    }
}

impl DisplayAs for StatisticsExec {
    fn fmt_as(&self, _t: DisplayFormatType, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let known = self
            .columns
            .iter()
            .filter(|c| c.min_value != Precision::Absent)
            .count();
        write!(f, "DeltaStatistics: columns_with_min_max={known}")
    }
}

impl ExecutionPlan for StatisticsExec {
    fn name(&self) -> &str {
        "DeltaStatistics"
    }

    fn properties(&self) -> &Arc<PlanProperties> {
        self.input.properties()
    }

    fn children(&self) -> Vec<&Arc<dyn ExecutionPlan>> {
        vec![&self.input]
    }

    fn apply_expressions(
        &self,
        _f: &mut dyn FnMut(&Arc<dyn PhysicalExpr>) -> DfResult<TreeNodeRecursion>,
    ) -> DfResult<TreeNodeRecursion> {
        Ok(TreeNodeRecursion::Continue)
    }

    fn with_new_children(
        self: Arc<Self>,
        mut children: Vec<Arc<dyn ExecutionPlan>>,
    ) -> DfResult<Arc<dyn ExecutionPlan>> {
        let input = children
            .pop()
            .ok_or_else(|| DataFusionError::Internal("DeltaStatistics has one child".into()))?;
        // A rewritten child (a projection swapped in) may have other columns.
        let columns = if input.schema().fields().len() == self.columns.len() {
            self.columns.clone()
        } else {
            Statistics::unknown_column(input.schema().as_ref())
        };
        Ok(Arc::new(StatisticsExec { input, columns }))
    }

    fn execute(
        &self,
        partition: usize,
        context: Arc<TaskContext>,
    ) -> DfResult<SendableRecordBatchStream> {
        self.input.execute(partition, context)
    }

    fn maintains_input_order(&self) -> Vec<bool> {
        vec![true]
    }

    fn benefits_from_input_partitioning(&self) -> Vec<bool> {
        vec![false]
    }

    fn supports_limit_pushdown(&self) -> bool {
        true
    }

    fn cardinality_effect(&self) -> CardinalityEffect {
        CardinalityEffect::Equal
    }

    fn child_stats_requests(&self, partition: Option<usize>) -> Vec<ChildStats> {
        vec![ChildStats::At(partition)]
    }

    fn statistics_from_inputs(
        &self,
        input_stats: &[Arc<Statistics>],
        _args: &StatisticsArgs,
    ) -> DfResult<Arc<Statistics>> {
        let scan = input_stats.first();
        let columns = self
            .columns
            .iter()
            .enumerate()
            .map(|(i, ours)| {
                // The scan's own statistics (of filtered columns) win where it has them.
                match scan.and_then(|s| s.column_statistics.get(i)) {
                    Some(c) if c.min_value != Precision::Absent => c.clone(),
                    _ => ours.clone(),
                }
            })
            .collect();
        Ok(Arc::new(Statistics {
            num_rows: scan.map_or(Precision::Absent, |s| s.num_rows),
            // The scan's bytes are its files' (see [`project`]): rows decide instead.
            total_byte_size: Precision::Absent,
            column_statistics: columns,
        }))
    }

    fn gather_filters_for_pushdown(
        &self,
        _phase: FilterPushdownPhase,
        parent_filters: Vec<Arc<dyn PhysicalExpr>>,
        _config: &ConfigOptions,
    ) -> DfResult<FilterDescription> {
        FilterDescription::from_children(parent_filters, &self.children())
    }

    fn handle_child_pushdown_result(
        &self,
        _phase: FilterPushdownPhase,
        child_pushdown_result: ChildPushdownResult,
        _config: &ConfigOptions,
    ) -> DfResult<FilterPushdownPropagation<Arc<dyn ExecutionPlan>>> {
        Ok(FilterPushdownPropagation::if_all(child_pushdown_result))
    }

    fn downcast_delegate(&self) -> Option<&dyn ExecutionPlan> {
        Some(self.input.as_ref())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use arrow::array::{Int64Array, StringArray};
    use arrow::datatypes::Field;

    #[test]
    fn folds_files_and_refuses_missing_stats() {
        let adds = RecordBatch::try_from_iter(vec![
            (
                "num_records",
                Arc::new(Int64Array::from(vec![10, 5])) as ArrayRef,
            ),
            ("size_bytes", Arc::new(Int64Array::from(vec![100, 50]))),
            ("min.a", Arc::new(Int64Array::from(vec![Some(3), Some(-2)]))),
            ("max.a", Arc::new(Int64Array::from(vec![Some(9), Some(4)]))),
            ("null_count.a", Arc::new(Int64Array::from(vec![1, 0]))),
            ("min.b", Arc::new(StringArray::from(vec![Some("k"), None]))),
            ("max.b", Arc::new(StringArray::from(vec![Some("z"), None]))),
            ("null_count.b", Arc::new(Int64Array::from(vec![0, 2]))),
            (
                "partition.p",
                Arc::new(StringArray::from(vec![Some("eu"), None])),
            ),
        ])
        .unwrap();
        let schema = Schema::new(vec![
            Field::new("a", DataType::Int64, true),
            Field::new("b", DataType::Utf8, true),
            Field::new("p", DataType::Utf8, true),
        ]);
        let s = fold(&adds, &schema, &["p".to_string()]);
        assert_eq!(s.num_rows, Precision::Inexact(15));
        assert_eq!(s.total_byte_size, Precision::Inexact(150));
        let a = &s.column_statistics[0];
        assert_eq!(
            a.min_value,
            Precision::Inexact(ScalarValue::Int64(Some(-2)))
        );
        assert_eq!(a.max_value, Precision::Inexact(ScalarValue::Int64(Some(9))));
        assert_eq!(a.null_count, Precision::Inexact(1));
        // The second file has 5 rows, 2 NULL, and no min: statistics missing, none at all.
        assert_eq!(s.column_statistics[1].min_value, Precision::Absent);
        assert_eq!(s.column_statistics[1].null_count, Precision::Absent);
        let p = &s.column_statistics[2];
        assert_eq!(p.min_value, Precision::Inexact(ScalarValue::from("eu")));
        assert_eq!(p.null_count, Precision::Inexact(5));
    }
}
