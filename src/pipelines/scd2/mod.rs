//! SCD Type 2: keep every version of a dimension row, in one atomic commit.
//!
//! ```text
//! source rows (keys, tracked values, optional effective time; default: commit time)
//!   → history of the batch's keys from the target (only those keys, semi-join)
//!   → per key, in effective-time order (bounded by the source, never the whole target):
//!       already in the history at that time with the same values → skip (re-runs are no-ops)
//!       same tracked values as the version before it (null-safe)  → skip (unchanged)
//!       earlier than or at the current version's start           → rejected (late change)
//!       otherwise a new version, closing the one before it at its effective time
//!   → a staged source for one MERGE: "close" rows match the current row of their key,
//!     "keep" rows match unchanged keys, "insert" rows match nothing
//!   → MERGE … WHEN MATCHED AND close THEN UPDATE valid_to, is_current
//!            WHEN NOT MATCHED AND insert THEN INSERT
//!            [WHEN NOT MATCHED BY SOURCE AND t.is_current THEN close at the batch time]
//! ```
//!
//! Invariants: at most one current row per key; the versions of a key never overlap
//! (`valid_to` of one is `valid_from` of the next, NULL for the current one).
//!
//! Late changes (a change dated at or before the start of the key's current version) are
//! rejected with a clear error rather than spliced into the chain: splicing rewrites closed
//! history, which downstream consumers of the dimension may already have read.

mod stage;

use std::sync::Arc;

use arrow::array::{Array, RecordBatch, StringArray};
use arrow::compute::concat_batches;
use arrow::datatypes::{DataType, Field, Schema, SchemaRef, TimeUnit};
use datafusion::common::{JoinType, ScalarValue};
use datafusion::logical_expr::{col, lit};
use datafusion::prelude::{DataFrame, SessionContext};
use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::pipelines::merge::{self, Action, Clause, Dml, DmlOutcome, MergeSpec, When};
use stage::{check_source, conform, mem, stage_rows, staged_schema};

/// Rows of one SCD2 run (see the module docs).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Scd2Spec {
    /// Business key columns.
    pub keys: Vec<String>,
    /// Columns whose change opens a new version; default: every non-key data column.
    pub tracked: Option<Vec<String>>,
    /// Source column with each change's effective time; default: the commit time.
    pub effective_time: Option<String>,
    /// Close the current version of keys missing from the source (full snapshots).
    pub close_missing: bool,
    pub valid_from: String,
    pub valid_to: String,
    pub is_current: String,
    /// Boolean source column marking a delete: the key's current version closes at the
    /// change's effective time and no new version opens.
    pub deleted: Option<String>,
    /// What a change dated at or before the key's latest version does.
    pub on_late: OnLate,
}

/// What SCD2 does with a late change (dated at or before the key's latest version).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum OnLate {
    /// The whole run fails and commits nothing.
    #[default]
    Fail,
    /// The change is left out and counted (`DmlOutcome::skipped`).
    Skip,
}

impl Default for Scd2Spec {
    fn default() -> Self {
        Scd2Spec {
            keys: Vec::new(),
            tracked: None,
            effective_time: None,
            close_missing: false,
            valid_from: "valid_from".into(),
            valid_to: "valid_to".into(),
            is_current: "is_current".into(),
            deleted: None,
            on_late: OnLate::Fail,
        }
    }
}

const ACTION: &str = "__scd2_action";
/// The source's delete marker, as staged.
const DELETED: &str = "__scd2_deleted";
const MATCH_PREFIX: &str = "__scd2_key_";

fn ts_type() -> DataType {
    DataType::Timestamp(TimeUnit::Microsecond, Some("UTC".into()))
}

fn quote(c: &str) -> String {
    format!("\"{}\"", c.replace('"', "\"\""))
}

/// Runs SCD2 of `source` into the target of `dml` (whose `params` must be empty: the batch
/// time is bound here).
pub(crate) async fn scd2(dml: &Dml<'_>, source: DataFrame, spec: &Scd2Spec) -> Result<DmlOutcome> {
    let t = dml.table;
    if spec.keys.is_empty() {
        return Err(Error::invalid("SCD2 needs at least one key column"));
    }
    let table = dml.catalog.load(t).await?;
    let target: SchemaRef = table.snapshot()?.snapshot().arrow_schema();
    let field = |name: &str| {
        target
            .field_with_name(name)
            .map_err(|_| Error::invalid(format!("{t} has no column {name}")))
    };
    for (name, kind) in [
        (&spec.valid_from, "timestamp"),
        (&spec.valid_to, "timestamp"),
    ] {
        if !matches!(field(name)?.data_type(), DataType::Timestamp(_, Some(_))) {
            return Err(Error::invalid(format!(
                "SCD2 column {name} of {t} must be a {kind} (with time zone)"
            )));
        }
    }
    if field(&spec.is_current)?.data_type() != &DataType::Boolean {
        return Err(Error::invalid(format!(
            "SCD2 column {} of {t} must be a boolean",
            spec.is_current
        )));
    }
    let scd_cols = [&spec.valid_from, &spec.valid_to, &spec.is_current];
    let data_cols: Vec<String> = target
        .fields()
        .iter()
        .map(|f| f.name().clone())
        .filter(|c| !scd_cols.contains(&c))
        .collect();
    for k in &spec.keys {
        if !data_cols.contains(k) {
            return Err(Error::invalid(format!(
                "key column {k} is not a data column of {t}"
            )));
        }
    }
    let tracked: Vec<String> = match &spec.tracked {
        Some(cols) => {
            for c in cols {
                if !data_cols.contains(c) || spec.keys.contains(c) {
                    return Err(Error::invalid(format!(
                        "tracked column {c} is not a non-key data column of {t}"
                    )));
                }
            }
            cols.clone()
        }
        None => data_cols
            .iter()
            .filter(|c| !spec.keys.contains(c))
            .cloned()
            .collect(),
    };

    // The source: data columns (typed like the target) and the effective time.
    let batch_time = chrono::Utc::now().timestamp_micros();
    let source_schema = source.schema().as_arrow().clone();
    for c in &data_cols {
        if source_schema.field_with_name(c).is_err() {
            return Err(Error::invalid(format!(
                "the SCD2 source has no column {c} (every data column of {t} is needed)"
            )));
        }
    }
    let mut projection: Vec<_> = data_cols
        .iter()
        .map(|c| {
            Ok(
                datafusion::logical_expr::cast(col(quote(c)), field(c)?.data_type().clone())
                    .alias(c.as_str()),
            )
        })
        .collect::<Result<_>>()?;
    projection.push(match &spec.effective_time {
        Some(e) => {
            if source_schema.field_with_name(e).is_err() {
                return Err(Error::invalid(format!(
                    "the SCD2 source has no effective-time column {e}"
                )));
            }
            datafusion::logical_expr::cast(col(quote(e)), ts_type()).alias("__eff")
        }
        None => lit(ScalarValue::TimestampMicrosecond(
            Some(batch_time),
            Some("UTC".into()),
        ))
        .alias("__eff"),
    });
    if let Some(d) = &spec.deleted {
        if source_schema.field_with_name(d).is_err() {
            return Err(Error::invalid(format!(
                "the SCD2 source has no delete-marker column {d}"
            )));
        }
        // NULL is not a delete.
        projection.push(
            datafusion::functions::expr_fn::coalesce(vec![
                datafusion::logical_expr::cast(col(quote(d)), DataType::Boolean),
                lit(false),
            ])
            .alias(DELETED),
        );
    }
    let source = source.select(projection)?;
    let src_batches = source.collect().await?;
    let src_schema = Arc::new(Schema::new(
        data_cols
            .iter()
            .map(|c| Ok(Field::new(c, field(c)?.data_type().clone(), true)))
            .chain(std::iter::once(Ok(Field::new("__eff", ts_type(), true))))
            .chain(
                spec.deleted
                    .iter()
                    .map(|_| Ok(Field::new(DELETED, DataType::Boolean, true))),
            )
            .collect::<Result<Vec<_>>>()?,
    ));
    let src = concat_batches(&src_schema, &src_batches)?;
    drop(src_batches);
    check_source(&src, &spec.keys)?;

    // The history of the batch's keys (only those keys), under the writer's row filter.
    let ctx = SessionContext::new_with_state(dml.state.clone());
    let mut history = ctx.read_table(table.table_provider().await?)?;
    if let Some(f) = dml.filter {
        // The filter itself never reports a hidden value when it fails (policy::visible).
        let schema = datafusion::common::DFSchema::try_from(target.as_ref().clone())?;
        let visible = crate::security::policy::visible::Visibility {
            table: t,
            schema: &schema,
            state: dml.state,
        }
        .predicate(f, None)?;
        history = history.filter(visible)?;
    }
    let key_names: Vec<String> = spec.keys.iter().map(|k| format!("__k_{k}")).collect();
    // The keys come from the collected batch: the source query runs exactly once.
    let key_df = ctx
        .read_batch(src.clone())?
        .select(spec.keys.iter().map(|k| col(quote(k))).collect::<Vec<_>>())?
        .distinct()?
        .select(
            spec.keys
                .iter()
                .zip(&key_names)
                .map(|(k, alias)| col(quote(k)).alias(alias.as_str()))
                .collect::<Vec<_>>(),
        )?;
    let history = history.join(
        key_df,
        JoinType::LeftSemi,
        &spec.keys.iter().map(String::as_str).collect::<Vec<_>>(),
        &key_names.iter().map(String::as_str).collect::<Vec<_>>(),
        None,
    )?;
    let history_schema = Arc::new(history.schema().as_arrow().clone());
    let history = history.collect().await?;

    // Most keys take the vectorized path; only keys with several changes in the batch, a
    // change dated at or before their latest version (late changes, re-runs), or not
    // exactly one current row go through the row-by-row chain logic.
    // A delete marker in the batch makes a key complex too (see `complex_keys_sql`).
    let table_name = t.to_string();
    let cols = Columns {
        table: &table_name,
        keys: &spec.keys,
        tracked: &tracked,
        data: &data_cols,
        spec,
    };
    // A private context over the batch's own data (the session's limits and memory pool).
    let work = SessionContext::new_with_config_rt(
        dml.state
            .config()
            .clone()
            .with_create_default_catalog_and_schema(true)
            .with_default_catalog_and_schema("scd2", "work"),
        Arc::clone(dml.state.runtime_env()),
    );
    work.register_table("s", mem(&src_schema, vec![src.clone()])?)?;
    work.register_table("h", mem(&history_schema, history)?)?;
    let complex_df = work.sql(&cols.complex_keys_sql()).await?;
    let complex_schema = Arc::new(complex_df.schema().as_arrow().clone());
    let complex = complex_df.collect().await?;
    let n_complex: usize = complex.iter().map(RecordBatch::num_rows).sum();
    work.register_table("x", mem(&complex_schema, complex)?)?;
    let staged_schema = staged_schema(&cols, &|c: &str| Ok(field(c)?.data_type().clone()))?;
    let mut staged: Vec<RecordBatch> = Vec::new();
    let mut skipped = 0;
    if n_complex > 0 {
        let semi = |t: &str| {
            format!(
                "SELECT {t}.* FROM {t} LEFT SEMI JOIN x ON {}",
                cols.keys_equal(t, "x")
            )
        };
        let src_x = work.sql(&semi("s")).await?.collect().await?;
        let src_x = concat_batches(&src_schema, &src_x)?;
        let hist_x = work.sql(&semi("h")).await?.collect().await?;
        let (rows, late) = stage_rows(&cols, &src_x, &hist_x, &staged_schema, &|name: &str| {
            Ok(field(name)?.data_type().clone())
        })?;
        staged.push(rows);
        skipped = late;
    }
    for b in work.sql(&cols.fast_sql()).await?.collect().await? {
        staged.push(conform(&b, &staged_schema)?);
    }
    let changes: usize = staged
        .iter()
        .map(|b| {
            b.column(b.num_columns() - 1)
                .as_any()
                .downcast_ref::<StringArray>()
                .map(|a| a.iter().filter(|v| *v != Some("keep")).count())
                .unwrap_or(b.num_rows())
        })
        .sum();
    if changes == 0 && !spec.close_missing && dml.progress.is_empty() {
        // Nothing changed: no commit at all (a flow's batch still commits its progress).
        return Ok(DmlOutcome {
            version: table.version().unwrap_or(0),
            attempts: 1,
            skipped,
            ..Default::default()
        });
    }
    let staged_df = ctx.read_table(mem(&staged_schema, staged)?)?;

    let on = spec
        .keys
        .iter()
        .enumerate()
        .map(|(i, k)| {
            format!(
                "t.{} = s.{}",
                quote(k),
                quote(&format!("{MATCH_PREFIX}{i}"))
            )
        })
        .chain(std::iter::once(format!("t.{}", quote(&spec.is_current))))
        .collect::<Vec<_>>()
        .join(" AND ");
    let mut clauses = vec![
        Clause {
            when: When::Matched,
            predicate: Some(format!("s.{ACTION} = 'close'")),
            action: Action::Update(vec![
                (
                    spec.valid_to.clone(),
                    format!("s.{}", quote(&spec.valid_to)),
                ),
                (spec.is_current.clone(), "false".into()),
            ]),
        },
        Clause {
            when: When::NotMatched,
            predicate: Some(format!("s.{ACTION} = 'insert'")),
            action: Action::Insert(
                data_cols
                    .iter()
                    .chain(scd_cols)
                    .map(|c| (c.clone(), format!("s.{}", quote(c))))
                    .collect(),
            ),
        },
    ];
    if spec.close_missing {
        clauses.push(Clause {
            when: When::NotMatchedBySource,
            predicate: Some(format!("t.{}", quote(&spec.is_current))),
            action: Action::Update(vec![
                (spec.valid_to.clone(), "$1".into()),
                (spec.is_current.clone(), "false".into()),
            ]),
        });
    }
    let merge_spec = MergeSpec {
        target_alias: "t".into(),
        source_alias: "s".into(),
        on,
        clauses,
        operation: "SCD2".into(),
    };
    let params = [ScalarValue::TimestampMicrosecond(
        Some(batch_time),
        Some("UTC".into()),
    )];
    let dml = Dml {
        params: &params,
        ..*dml
    };
    let mut outcome = merge::merge(&dml, staged_df, &merge_spec).await?;
    outcome.skipped = skipped;
    Ok(outcome)
}

/// Column roles of one SCD2 run.
struct Columns<'a> {
    /// The target, for error messages.
    table: &'a str,
    keys: &'a [String],
    tracked: &'a [String],
    data: &'a [String],
    spec: &'a Scd2Spec,
}

impl Columns<'_> {
    /// `a.k1 = b.k1 AND …` over the keys.
    fn keys_equal(&self, a: &str, b: &str) -> String {
        self.keys
            .iter()
            .map(|k| format!("{a}.{k} = {b}.{k}", k = quote(k)))
            .collect::<Vec<_>>()
            .join(" AND ")
    }

    /// Keys of `s` (the source) that need the row-by-row path: several rows in the batch,
    /// history but not exactly one current row, or a change dated at or before the key's
    /// latest version (a late change or a re-run).
    fn complex_keys_sql(&self) -> String {
        let keys: Vec<String> = self.keys.iter().map(|k| quote(k)).collect();
        let keys = keys.join(", ");
        let sk: Vec<String> = self
            .keys
            .iter()
            .map(|k| format!("sk.{}", quote(k)))
            .collect();
        format!(
            "SELECT {sk} FROM \
               (SELECT {keys}, count(*) AS __n, min(\"__eff\") AS __min_eff, {deletes} AS __deletes \
                FROM s GROUP BY {keys}) sk \
             LEFT JOIN \
               (SELECT {keys}, max({from}) AS __max_from, count(*) AS __versions, \
                       sum(CASE WHEN {current} THEN 1 ELSE 0 END) AS __current \
                FROM h GROUP BY {keys}) hk \
             ON {on} \
             WHERE sk.__n > 1 OR sk.__deletes > 0 OR (hk.__versions IS NOT NULL \
               AND (hk.__current <> 1 OR sk.__min_eff <= hk.__max_from))",
            sk = sk.join(", "),
            from = quote(&self.spec.valid_from),
            current = quote(&self.spec.is_current),
            on = self.keys_equal("sk", "hk"),
            deletes = if self.spec.deleted.is_some() {
                format!("sum(CASE WHEN {} THEN 1 ELSE 0 END)", quote(DELETED))
            } else {
                "0".to_string()
            },
        )
    }

    /// The staged rows of every other key (one change each, dated after its history): a
    /// changed key closes its current row and opens a new one, a new key opens one, an
    /// unchanged key stays (a `keep` row only matters to `close_missing`). Typed NULLs are
    /// written `CASE WHEN false THEN c END` so no SQL type names are needed.
    fn fast_sql(&self) -> String {
        let null = |rel: &str, c: &str| format!("CASE WHEN false THEN {rel}.{} END", quote(c));
        let same = if self.tracked.is_empty() {
            "true".to_string()
        } else {
            self.tracked
                .iter()
                // Parenthesized: sqlparser binds `AND` tighter than `IS NOT DISTINCT FROM`.
                .map(|c| format!("(ss.{c} IS NOT DISTINCT FROM c.{c})", c = quote(c)))
                .collect::<Vec<_>>()
                .join(" AND ")
        };
        let data = |rel: &str, present: bool| -> String {
            self.data
                .iter()
                .map(|c| {
                    let v = if present {
                        format!("{rel}.{}", quote(c))
                    } else {
                        null(rel, c)
                    };
                    format!("{v} AS {}", quote(c))
                })
                .collect::<Vec<_>>()
                .join(", ")
        };
        let match_keys = |rel: &str, present: bool| -> String {
            self.keys
                .iter()
                .enumerate()
                .map(|(i, k)| {
                    let v = if present {
                        format!("{rel}.{}", quote(k))
                    } else {
                        null(rel, k)
                    };
                    format!("{v} AS {}", quote(&format!("{MATCH_PREFIX}{i}")))
                })
                .collect::<Vec<_>>()
                .join(", ")
        };
        let eff = |rel: &str| format!("{rel}.\"__eff\"");
        let mut sql = format!(
            "WITH ss AS (SELECT s.* FROM s LEFT ANTI JOIN x ON {ss_x}), \
                  c AS (SELECT * FROM h WHERE {current}), \
                  j AS (SELECT ss.*, ({same}) AS __same FROM ss JOIN c ON {ss_c}), \
                  n AS (SELECT ss.* FROM ss LEFT ANTI JOIN h ON {ss_h}) \
             SELECT {j_null}, {j_null_eff} AS {vf}, {j_eff} AS {vt}, false AS {cur}, {j_keys}, 'close' AS {action} \
               FROM j WHERE NOT __same \
             UNION ALL \
             SELECT {j_data}, {j_eff} AS {vf}, {j_null_eff} AS {vt}, true AS {cur}, {j_no_keys}, 'insert' AS {action} \
               FROM j WHERE NOT __same \
             UNION ALL \
             SELECT {n_data}, {n_eff} AS {vf}, {n_null_eff} AS {vt}, true AS {cur}, {n_no_keys}, 'insert' AS {action} \
               FROM n",
            ss_x = self.keys_equal("s", "x"),
            vf = quote(&self.spec.valid_from),
            vt = quote(&self.spec.valid_to),
            cur = quote(&self.spec.is_current),
            action = quote(ACTION),
            current = quote(&self.spec.is_current),
            ss_c = self.keys_equal("ss", "c"),
            ss_h = self.keys_equal("ss", "h"),
            j_null = data("j", false),
            j_null_eff = null("j", "__eff"),
            j_eff = eff("j"),
            j_keys = match_keys("j", true),
            j_data = data("j", true),
            j_no_keys = match_keys("j", false),
            n_data = data("n", true),
            n_eff = eff("n"),
            n_null_eff = null("n", "__eff"),
            n_no_keys = match_keys("n", false),
        );
        if self.spec.close_missing {
            sql.push_str(&format!(
                " UNION ALL SELECT {}, {null_eff} AS {vf}, {null_eff} AS {vt}, true AS {cur}, {}, \
                 'keep' AS {action} FROM j WHERE __same",
                data("j", false),
                match_keys("j", true),
                null_eff = null("j", "__eff"),
                vf = quote(&self.spec.valid_from),
                vt = quote(&self.spec.valid_to),
                cur = quote(&self.spec.is_current),
                action = quote(ACTION),
            ));
        }
        sql
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quoting_escapes_quotes() {
        assert_eq!(quote("a\"b"), "\"a\"\"b\"");
    }

    #[test]
    fn default_columns() {
        let s = Scd2Spec::default();
        assert_eq!(
            (
                s.valid_from.as_str(),
                s.valid_to.as_str(),
                s.is_current.as_str()
            ),
            ("valid_from", "valid_to", "is_current")
        );
    }
}
