//! A pipeline as written: `pipeline.toml` (as JSON in a deploy bundle) and one `.sql` file per
//! model under a layer folder, each a plain `SELECT` with a TOML header in a leading
//! `/* strata … */` comment.

use std::collections::BTreeMap;

use arrow::datatypes::{DataType, Field, Schema, SchemaRef, TimeUnit};
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use super::schedule::parse_every;
use crate::engine::expect::{Expectation, OnViolation};
use crate::error::{Error, Result};
pub(crate) use crate::pipelines::scd2::OnLate;
use crate::storage::{Layer, TableRef};

/// A deploy bundle: the pipeline definition and its model files.
#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Bundle {
    /// `pipeline.toml`, as JSON.
    pub pipeline: PipelineDef,
    /// One entry per model file.
    pub models: Vec<ModelFile>,
    /// Deploy even when a model needs a full refresh (its next run rebuilds the table).
    #[serde(default)]
    pub allow_full_refresh: bool,
}

/// `pipeline.toml`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct PipelineDef {
    /// Must match the name in the URL when given.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
    /// The service principal the models run as (`[[pipelines.principals]]` of the server
    /// configuration); its roles must be a subset of the deployer's.
    pub run_as: String,
    /// When it runs on its own (the scheduler); only on request when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub trigger: Option<super::schedule::TriggerDef>,
    /// Retries of failed models.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retry: Option<super::schedule::RetryDef>,
    /// How old its sources may be, checked at each run's start (`[freshness]`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub freshness: Option<super::audit::FreshnessDef>,
}

/// One model file of a bundle.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ModelFile {
    /// `<layer>/<name>.sql`, e.g. `silver/orders.sql` (model `silver.orders`).
    pub path: String,
    pub sql: String,
}

/// How a model writes its table.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum Kind {
    /// Rebuilt from whole sources on each run (overwrite); skipped when no source moved.
    #[default]
    Table,
    /// The rows of `stream(…)` sources since the watermark, appended.
    Append,
    /// Changes since the watermark merged by `unique_key`, newest `sequence_by` wins.
    Merge,
    /// Changes since the watermark applied as SCD Type 2 history.
    Scd2,
    /// Time ranges replaced atomically.
    TimeRange,
}

impl Kind {
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            Kind::Table => "table",
            Kind::Append => "append",
            Kind::Merge => "merge",
            Kind::Scd2 => "scd2",
            Kind::TimeRange => "time_range",
        }
    }

    /// Kinds that read `stream(…)` sources from a watermark.
    pub(crate) fn is_incremental(self) -> bool {
        matches!(self, Kind::Append | Kind::Merge | Kind::Scd2)
    }
}

/// What a run does when a source has columns the target lacks.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum OnSchemaChange {
    /// The run fails and reports the difference.
    #[default]
    Fail,
    /// New columns are added (nullable) in the same commit as the rows.
    AppendNewColumns,
}

/// What a run does when a source's changes since the watermark are gone (VACUUM, log
/// retention).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum OnWatermarkExpired {
    /// The model ends `watermark_expired` and commits nothing.
    #[default]
    Fail,
    /// The model rebuilds from its sources' snapshots (a full refresh).
    FullRefresh,
}

/// The `/* strata … */` header of a model.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Header {
    #[serde(default)]
    pub kind: Kind,
    /// Key columns of `merge` and `scd2` models.
    #[serde(default, alias = "keys", skip_serializing_if = "Vec::is_empty")]
    pub unique_key: Vec<String>,
    /// Orders changes of one key: the greatest wins (`merge`), the effective time (`scd2`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sequence_by: Option<String>,
    /// A condition over the model's output that deletes the key (`merge`, `scd2`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub delete_when: Option<String>,
    #[serde(default)]
    pub on_schema_change: OnSchemaChange,
    #[serde(default)]
    pub on_watermark_expired: OnWatermarkExpired,
    /// Source versions one commit consumes at most; a larger backlog runs in several
    /// commits, each with its own watermark.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_versions_per_batch: Option<u64>,
    /// The table's comment.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
    /// Column comments by column name.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub columns: BTreeMap<String, String>,
    /// `scd2`: a change dated at or before its key's latest version is left out and counted
    /// (`skip`, the default) or fails the run, which then commits nothing (`fail`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub on_out_of_order: Option<OnLate>,
    /// `time_range`: the output column whose ranges each batch replaces.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub time_column: Option<String>,
    /// `time_range`: the width of one batch.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub batch_size: Option<BatchSize>,
    /// `time_range`: the first batch starts here (RFC 3339, or a date `YYYY-MM-DD` = its
    /// midnight UTC).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub start: Option<String>,
    /// `time_range`: complete batches re-processed on every run before the new ones (late
    /// rows land there); default 1.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lookback: Option<u32>,
    /// The scheduler's leader compacts the table's small files (OPTIMIZE) once per period
    /// of this length: `"30m"`, `"6h"`, `"1d"` (at least a minute).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub optimize_every: Option<String>,
    /// Likewise VACUUM (keeping what models downstream still need, as any VACUUM does).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub vacuum_every: Option<String>,
    /// A trigger of the model's own, instead of the pipeline's: the scheduler runs the
    /// model alone on it (its slots claimed apart from the pipeline's), and the pipeline's
    /// triggered runs leave it out. Manual runs still cover it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub trigger: Option<super::schedule::TriggerDef>,
    /// Checks of the table version each run commits (`[[audit]]`).
    #[serde(default, rename = "audit", skip_serializing_if = "Vec::is_empty")]
    pub audits: Vec<super::audit::AuditDef>,
    /// Per-row checks of the output before each commit (`[[expect]]`).
    #[serde(default, rename = "expect", skip_serializing_if = "Vec::is_empty")]
    pub expectations: Vec<Expectation>,
    /// Rows one run writes to `<layer>.<model>__quarantine` at most (default 100000); rows
    /// failing a `quarantine` expectation past it are left out of both tables and counted.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub quarantine_max_rows_per_run: Option<u64>,
    /// How long quarantined rows are kept (`"30d"` by default): the scheduler's leader
    /// deletes older ones daily.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub quarantine_retention: Option<String>,
}

/// Rows a run quarantines at most unless the header says otherwise.
pub(crate) const QUARANTINE_MAX_ROWS: u64 = 100_000;

/// The width of a `time_range` batch (UTC calendar units).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum BatchSize {
    Hour,
    #[default]
    Day,
    Month,
}

impl BatchSize {
    /// The start of the batch holding `t`.
    pub(crate) fn floor(self, t: DateTime<Utc>) -> DateTime<Utc> {
        use chrono::{Datelike, TimeZone, Timelike};
        let day = Utc
            .with_ymd_and_hms(t.year(), t.month(), t.day(), 0, 0, 0)
            .single()
            .unwrap_or(t);
        match self {
            BatchSize::Hour => day + chrono::Duration::hours(i64::from(t.hour())),
            BatchSize::Day => day,
            BatchSize::Month => Utc
                .with_ymd_and_hms(t.year(), t.month(), 1, 0, 0, 0)
                .single()
                .unwrap_or(day),
        }
    }

    /// `t` moved by `n` batches (`t` at a batch start).
    pub(crate) fn add(self, t: DateTime<Utc>, n: i32) -> DateTime<Utc> {
        match self {
            BatchSize::Hour => t + chrono::Duration::hours(i64::from(n)),
            BatchSize::Day => t + chrono::Duration::days(i64::from(n)),
            BatchSize::Month => {
                let months = chrono::Months::new(n.unsigned_abs());
                let moved = if n >= 0 {
                    t.checked_add_months(months)
                } else {
                    t.checked_sub_months(months)
                };
                moved.unwrap_or(t)
            }
        }
    }
}

/// An instant given as RFC 3339 or as a date `YYYY-MM-DD` (its midnight UTC).
pub(crate) fn parse_instant(key: &str, text: &str) -> Result<DateTime<Utc>> {
    DateTime::parse_from_rfc3339(text)
        .map(|t| t.with_timezone(&Utc))
        .or_else(|_| {
            chrono::NaiveDate::parse_from_str(text, "%Y-%m-%d")
                .map(|d| d.and_time(chrono::NaiveTime::MIN).and_utc())
        })
        .map_err(|_| {
            Error::invalid(format!(
                "{key} = \"{text}\" is neither RFC 3339 nor a date YYYY-MM-DD"
            ))
        })
}

/// The SCD2 columns an `scd2` model's table adds to its output.
pub(crate) const SCD2_COLUMNS: [&str; 3] = ["valid_from", "valid_to", "is_current"];

impl Header {
    /// The first batch start of a `time_range` model.
    pub(crate) fn range_start(&self) -> Result<DateTime<Utc>> {
        let text = self
            .start
            .as_deref()
            .ok_or_else(|| Error::invalid("a time_range model needs start = \"YYYY-MM-DD\""))?;
        let parsed = parse_instant("start", text)?;
        Ok(self.batch_size.unwrap_or_default().floor(parsed))
    }

    /// The table a model with this header stores, from its SELECT's `output`: an `scd2`
    /// model adds its history columns.
    pub(crate) fn table_schema(&self, output: SchemaRef) -> Result<SchemaRef> {
        if self.kind != Kind::Scd2 {
            return Ok(output);
        }
        let mut fields: Vec<Field> = output.fields().iter().map(|f| f.as_ref().clone()).collect();
        for c in SCD2_COLUMNS {
            if output.field_with_name(c).is_ok() {
                return Err(Error::invalid(format!(
                    "an scd2 model adds the column {c}; its SELECT may not produce one"
                )));
            }
        }
        let ts = DataType::Timestamp(TimeUnit::Microsecond, Some("UTC".into()));
        fields.push(Field::new(SCD2_COLUMNS[0], ts.clone(), true));
        fields.push(Field::new(SCD2_COLUMNS[1], ts, true));
        fields.push(Field::new(SCD2_COLUMNS[2], DataType::Boolean, true));
        Ok(std::sync::Arc::new(Schema::new(fields)))
    }
}

/// A model: its file, its header and the SELECT after it.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Model {
    pub(crate) target: TableRef,
    pub(crate) header: Header,
    /// The SELECT, without the header comment.
    pub(crate) select: String,
}

impl Model {
    pub(crate) fn parse(file: &ModelFile) -> Result<Model> {
        let target = target_of(&file.path)?;
        let (header, select) = split_header(&file.sql)
            .map_err(|e| Error::invalid(format!("{}: {}", file.path, e.client_message(""))))?;
        let model = Model {
            target,
            header,
            select: select.trim().trim_end_matches(';').trim().to_string(),
        };
        model
            .check()
            .map_err(|e| Error::invalid(format!("{}: {}", file.path, e.client_message(""))))?;
        Ok(model)
    }

    fn check(&self) -> Result<()> {
        let h = &self.header;
        if self.select.is_empty() {
            return Err(Error::invalid("the model has no SELECT"));
        }
        if let Some(every) = &h.optimize_every {
            parse_every("optimize_every", every)?;
        }
        if let Some(every) = &h.vacuum_every {
            parse_every("vacuum_every", every)?;
        }
        if let Some(trigger) = &h.trigger {
            trigger.check()?;
        }
        crate::engine::expect::check_rules(&h.expectations)?;
        super::audit::check_audits(&h.audits)?;
        if let Some(every) = &h.quarantine_retention {
            parse_every("quarantine_retention", every)?;
        }
        let quarantines = h
            .expectations
            .iter()
            .any(|e| e.on_violation == OnViolation::Quarantine);
        if quarantines && h.kind == Kind::TimeRange {
            return Err(Error::invalid(
                "on_violation = \"quarantine\" is not available on time_range models (a re-run replaces a range, and its quarantined rows could not be told apart); use drop or fail",
            ));
        }
        match h.kind {
            Kind::Merge | Kind::Scd2 => {
                if h.unique_key.is_empty() {
                    return Err(Error::invalid(format!(
                        "a {} model needs unique_key = [\"…\"]",
                        h.kind.as_str()
                    )));
                }
                if h.sequence_by.is_none() {
                    return Err(Error::invalid(format!(
                        "a {} model needs sequence_by = \"<column>\"",
                        h.kind.as_str()
                    )));
                }
            }
            Kind::Table | Kind::Append => {
                for (field, set) in [
                    ("unique_key", !h.unique_key.is_empty()),
                    ("sequence_by", h.sequence_by.is_some()),
                    ("delete_when", h.delete_when.is_some()),
                ] {
                    if set {
                        return Err(Error::invalid(format!(
                            "{field} applies to merge and scd2 models, not {}",
                            h.kind.as_str()
                        )));
                    }
                }
            }
            Kind::TimeRange => {
                for (field, set) in [
                    ("unique_key", !h.unique_key.is_empty()),
                    ("sequence_by", h.sequence_by.is_some()),
                    ("delete_when", h.delete_when.is_some()),
                    ("max_versions_per_batch", h.max_versions_per_batch.is_some()),
                ] {
                    if set {
                        return Err(Error::invalid(format!(
                            "{field} does not apply to time_range models (they replace time ranges)"
                        )));
                    }
                }
                if h.time_column.is_none() {
                    return Err(Error::invalid(
                        "a time_range model needs time_column = \"<output column>\"",
                    ));
                }
                h.range_start()?;
            }
        }
        if h.kind != Kind::TimeRange {
            for (field, set) in [
                ("time_column", h.time_column.is_some()),
                ("batch_size", h.batch_size.is_some()),
                ("start", h.start.is_some()),
                ("lookback", h.lookback.is_some()),
            ] {
                if set {
                    return Err(Error::invalid(format!(
                        "{field} applies to time_range models, not {}",
                        h.kind.as_str()
                    )));
                }
            }
        }
        if h.kind != Kind::Scd2 && h.on_out_of_order.is_some() {
            return Err(Error::invalid(format!(
                "on_out_of_order applies to scd2 models, not {} (a merge model keeps the newest sequence_by anyway)",
                h.kind.as_str()
            )));
        }
        if h.max_versions_per_batch == Some(0) {
            return Err(Error::invalid("max_versions_per_batch must be at least 1"));
        }
        Ok(())
    }
}

/// `silver/orders.sql` → `silver.orders`.
fn target_of(path: &str) -> Result<TableRef> {
    let usage = "a model path is <layer>/<name>.sql, e.g. silver/orders.sql";
    let (layer, file) = path
        .split_once('/')
        .ok_or_else(|| Error::invalid(format!("{path}: {usage}")))?;
    let name = file
        .strip_suffix(".sql")
        .ok_or_else(|| Error::invalid(format!("{path}: {usage}")))?;
    if Layer::parse(layer).is_none() {
        return Err(Error::invalid(format!(
            "{path}: {layer} is not a layer (bronze, silver or gold)"
        )));
    }
    if name.ends_with("__quarantine") || name.ends_with("__dead_letter") {
        return Err(Error::invalid(format!(
            "{path}: names ending __quarantine or __dead_letter are reserved"
        )));
    }
    TableRef::new(layer, name)
        .map_err(|e| Error::invalid(format!("{path}: {}", e.client_message(""))))
}

/// The TOML header of a leading `/* strata … */` comment, and the rest of the file. A file
/// without one is a `table` model.
fn split_header(sql: &str) -> Result<(Header, &str)> {
    let text = sql.trim_start();
    let Some(after) = text.strip_prefix("/*") else {
        return Ok((Header::default(), text));
    };
    let Some(body) = after.trim_start().strip_prefix("strata") else {
        return Ok((Header::default(), text));
    };
    let end = body
        .find("*/")
        .ok_or_else(|| Error::invalid("the /* strata … */ header is not closed"))?;
    let header: Header = toml::from_str(&body[..end]).map_err(|e| {
        // `schedule = "*/5 * * * *"`: the step ends the SQL comment mid-string.
        let open_string = body[..end]
            .rsplit('\n')
            .next()
            .is_some_and(|l| l.matches('"').count() % 2 == 1);
        let hint = if open_string {
            " (a cron step `*/n` ends the /* … */ comment: write it `0-59/n`, or the step in the pipeline's [trigger])"
        } else {
            ""
        };
        Error::invalid(format!("in the model header: {}{hint}", e.message()))
    })?;
    Ok((header, &body[end + 2..]))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn file(path: &str, sql: &str) -> ModelFile {
        ModelFile {
            path: path.into(),
            sql: sql.into(),
        }
    }

    #[test]
    fn headers_and_paths_are_read() -> Result<()> {
        let m = Model::parse(&file(
            "silver/orders.sql",
            "/* strata\nkind = \"merge\"\nunique_key = [\"id\"]\nsequence_by = \"ts\"\ndescription = \"Orders\"\n[columns]\nid = \"The key\"\n*/\nSELECT * FROM stream('bronze.orders');\n",
        ))?;
        assert_eq!(m.target.to_string(), "silver.orders");
        assert_eq!(m.header.kind, Kind::Merge);
        assert_eq!(m.header.unique_key, vec!["id"]);
        assert_eq!(
            m.header.columns.get("id").map(String::as_str),
            Some("The key")
        );
        assert_eq!(m.select, "SELECT * FROM stream('bronze.orders')");
        let plain = Model::parse(&file("gold/x.sql", "/* a comment */ SELECT 1"))?;
        let h = Header {
            batch_size: Some(BatchSize::Month),
            start: Some("2026-03-17T05:00:00Z".into()),
            ..Header::default()
        };
        let start = h.range_start()?;
        assert_eq!(start.to_rfc3339(), "2026-03-01T00:00:00+00:00");
        assert_eq!(
            BatchSize::Month.add(start, -3).to_rfc3339(),
            "2025-12-01T00:00:00+00:00"
        );
        assert_eq!(
            BatchSize::Hour
                .floor(
                    DateTime::parse_from_rfc3339("2026-03-17T05:42:00Z")
                        .map_err(|e| Error::internal(e.to_string()))?
                        .with_timezone(&Utc)
                )
                .to_rfc3339(),
            "2026-03-17T05:00:00+00:00"
        );
        assert_eq!(plain.header.kind, Kind::Table);
        Ok(())
    }

    #[test]
    fn bad_models_say_what_is_wrong() {
        let cases = [
            ("orders.sql", "SELECT 1", "<layer>/<name>.sql"),
            ("platinum/x.sql", "SELECT 1", "not a layer"),
            ("silver/x.txt", "SELECT 1", "<layer>/<name>.sql"),
            ("silver/x__quarantine.sql", "SELECT 1", "reserved"),
            (
                "silver/x.sql",
                "/* strata kind = \"merge\" */ SELECT 1",
                "unique_key",
            ),
            (
                "silver/x.sql",
                "/* strata kind = \"bogus\" */ SELECT 1",
                "model header",
            ),
            (
                "silver/x.sql",
                "/* strata kind = \"table\"\nsequence_by = \"a\" */ SELECT 1",
                "sequence_by applies",
            ),
            ("silver/x.sql", "/* strata kind = \"table\"", "not closed"),
            ("silver/x.sql", "/* strata */ ;", "no SELECT"),
            (
                "silver/x.sql",
                "/* strata\nkind = \"time_range\"\nstart = \"2026-01-01\" */ SELECT 1",
                "time_column",
            ),
            (
                "silver/x.sql",
                "/* strata\nkind = \"time_range\"\ntime_column = \"t\"\nstart = \"yesterday\" */ SELECT 1",
                "neither RFC 3339",
            ),
            (
                "silver/x.sql",
                "/* strata\nkind = \"merge\"\nunique_key = [\"id\"]\nsequence_by = \"ts\"\nlookback = 2 */ SELECT 1",
                "lookback applies to time_range",
            ),
            (
                "silver/x.sql",
                "/* strata\nkind = \"merge\"\nunique_key = [\"id\"]\nsequence_by = \"ts\"\non_out_of_order = \"fail\" */ SELECT 1",
                "on_out_of_order applies to scd2",
            ),
        ];
        for (path, sql, expected) in cases {
            match Model::parse(&file(path, sql)) {
                Err(Error::InvalidArgument(m)) => assert!(m.contains(expected), "{path}: {m}"),
                other => panic!("{path}: {other:?}"),
            }
        }
    }
}
