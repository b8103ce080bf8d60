//! From a response to rows: records selected by JSONPath, fields mapped by JSONPath onto
//! the table's columns, records that do not convert set aside as dead letters with their
//! error, and the incremental cursor's greatest value among the rows.

use std::sync::Arc;

use arrow::array::{Array, ArrayRef, RecordBatch, StringArray, TimestampMicrosecondArray};
use arrow::datatypes::{DataType, Field, Schema, SchemaRef, TimeUnit};
use chrono::{DateTime, SecondsFormat, Utc};
use serde_json::Value;
use serde_json_path::JsonPath;

use super::definition::{CONNECTOR, ConnectorSpec, EXTRACTED_AT, RUN_ID};
use crate::error::{Error, Result};

/// A record that did not become a row.
#[derive(Debug, Clone)]
pub(crate) struct DeadLetter {
    pub url: String,
    pub record: String,
    pub error: String,
}

/// What a cursor's values are, by the incremental field's column type.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) enum CursorKind {
    Timestamp,
    Integer,
    Text,
}

impl CursorKind {
    pub(crate) fn of(dt: &DataType) -> CursorKind {
        match dt {
            DataType::Timestamp(..) | DataType::Date32 | DataType::Date64 => CursorKind::Timestamp,
            d if d.is_integer() => CursorKind::Integer,
            _ => CursorKind::Text,
        }
    }

    /// The greater of two stored cursor values.
    pub(crate) fn max(self, a: Option<String>, b: Option<String>) -> Option<String> {
        match (a, b) {
            (Some(a), Some(b)) => {
                let a_wins = match self {
                    CursorKind::Timestamp => parse_time(&a) >= parse_time(&b),
                    CursorKind::Integer => a.parse::<i64>().ok() >= b.parse::<i64>().ok(),
                    CursorKind::Text => a >= b,
                };
                Some(if a_wins { a } else { b })
            }
            (a, b) => a.or(b),
        }
    }

    /// The lower bound sent for cursor `value`: `lookback` earlier, in `format`.
    pub(crate) fn bound(self, value: &str, lookback: u64, format: Option<&str>) -> Result<String> {
        match self {
            CursorKind::Timestamp => {
                let t = parse_time(value).ok_or_else(|| {
                    Error::invalid(format!("cursor {value:?} is not a timestamp"))
                })?;
                let t = t - chrono::Duration::seconds(
                    i64::try_from(lookback).unwrap_or(i64::MAX / 1000),
                );
                Ok(match format {
                    Some(f) => t.format(f).to_string(),
                    None => t.to_rfc3339_opts(SecondsFormat::AutoSi, true),
                })
            }
            CursorKind::Integer => {
                let n: i64 = value
                    .parse()
                    .map_err(|_| Error::invalid(format!("cursor {value:?} is not an integer")))?;
                Ok(
                    n.saturating_sub(i64::try_from(lookback).unwrap_or(i64::MAX))
                        .to_string(),
                )
            }
            CursorKind::Text => Ok(value.to_string()),
        }
    }
}

fn parse_time(s: &str) -> Option<DateTime<Utc>> {
    DateTime::parse_from_rfc3339(s)
        .ok()
        .map(|t| t.with_timezone(&Utc))
        .or_else(|| {
            chrono::NaiveDateTime::parse_from_str(s, "%Y-%m-%d %H:%M:%S%.f")
                .ok()
                .map(|t| t.and_utc())
        })
        .or_else(|| {
            chrono::NaiveDate::parse_from_str(s, "%Y-%m-%d")
                .ok()
                .and_then(|d| d.and_hms_opt(0, 0, 0))
                .map(|t| t.and_utc())
        })
}

/// The compiled record mapping of one connector onto its table.
#[derive(Debug)]
pub(crate) struct Mapper {
    records: JsonPath,
    /// (column, path) per mapped field, in the decoder schema's order.
    fields: Vec<(String, JsonPath)>,
    /// The mapped fields' columns as the table types them.
    decoded: SchemaRef,
    raw: Option<String>,
    table: SchemaRef,
    connector: String,
    /// The incremental field and its kind.
    cursor: Option<(String, CursorKind)>,
    key: Vec<String>,
}

/// The rows of one page.
#[derive(Debug)]
pub(crate) struct Page {
    pub rows: RecordBatch,
    pub dead: Vec<DeadLetter>,
    /// The greatest cursor value among the rows.
    pub max_cursor: Option<String>,
    /// Records the page held (rows + dead letters).
    pub records: usize,
}

impl Mapper {
    pub(crate) fn new(name: &str, spec: &ConnectorSpec, table: SchemaRef) -> Result<Mapper> {
        let path = |p: &str| {
            JsonPath::parse(p).map_err(|e| Error::invalid(format!("{p:?} is not a JSONPath: {e}")))
        };
        let mut fields = Vec::new();
        let mut decoded = Vec::new();
        for f in &spec.records.fields {
            let column = table.field_with_name(&f.name).map_err(|_| {
                Error::invalid(format!(
                    "table {}: has no column {} (records.fields)",
                    spec.table, f.name
                ))
            })?;
            let p = match &f.path {
                Some(p) => path(p)?,
                None => path(&format!("$['{}']", f.name.replace('\'', "\\'")))?,
            };
            fields.push((f.name.clone(), p));
            // Nullable in the decoder: a missing NOT NULL field becomes a dead letter with a
            // message, not a decoder error for the whole page.
            decoded.push(Field::new(f.name.clone(), column.data_type().clone(), true));
        }
        for c in [CONNECTOR, RUN_ID, EXTRACTED_AT]
            .into_iter()
            .chain(spec.records.raw_column.as_deref())
        {
            if table.field_with_name(c).is_err() {
                return Err(Error::invalid(format!(
                    "table {}: has no column {c}; a connector's table has {CONNECTOR}, {RUN_ID}, {EXTRACTED_AT} (let Strata create it)",
                    spec.table
                )));
            }
        }
        let cursor = match &spec.incremental {
            Some(inc) => {
                let dt = table
                    .field_with_name(&inc.field)
                    .map_err(|_| {
                        Error::invalid(format!("incremental.field: {} is not a column", inc.field))
                    })?
                    .data_type();
                Some((inc.field.clone(), CursorKind::of(dt)))
            }
            None => None,
        };
        Ok(Mapper {
            records: path(&spec.records.path)?,
            fields,
            decoded: Arc::new(Schema::new(decoded)),
            raw: spec.records.raw_column.clone(),
            table,
            connector: name.to_string(),
            cursor,
            key: spec.primary_key.clone(),
        })
    }

    pub(crate) fn cursor_kind(&self) -> Option<CursorKind> {
        self.cursor.as_ref().map(|(_, k)| *k)
    }

    pub(crate) fn schema(&self) -> &SchemaRef {
        &self.table
    }

    /// The records of `body` as rows of the table (and the ones that are not).
    pub(crate) fn page(
        &self,
        body: &Value,
        url: &str,
        run_id: &str,
        at: DateTime<Utc>,
    ) -> Result<Page> {
        let found: Vec<&Value> = self.records.query(body).all();
        let records = found.len();
        let mut dead = Vec::new();
        let mut objects = Vec::with_capacity(found.len());
        let mut raws = Vec::with_capacity(found.len());
        for r in found {
            let mut obj = serde_json::Map::with_capacity(self.fields.len());
            for (name, p) in &self.fields {
                let v = p.query(r).first().cloned().unwrap_or(Value::Null);
                obj.insert(name.clone(), v);
            }
            objects.push(Value::Object(obj));
            raws.push(r);
        }
        let decoded = match self.decode(&objects) {
            Ok(b) => b,
            Err(_) => {
                // One at a time, to tell the bad ones apart.
                let mut good = Vec::new();
                let mut kept = Vec::new();
                for (i, o) in objects.iter().enumerate() {
                    match self.decode(std::slice::from_ref(o)) {
                        Ok(b) => {
                            good.push(b);
                            kept.push(raws[i]);
                        }
                        Err(e) => dead.push(DeadLetter {
                            url: url.to_string(),
                            record: raws[i].to_string(),
                            error: e.to_string(),
                        }),
                    }
                }
                raws = kept;
                arrow::compute::concat_batches(&self.decoded, &good)?
            }
        };
        // NOT NULL columns and keys: a record without them is a dead letter, alone.
        let mut keep = vec![true; decoded.num_rows()];
        for (i, f) in self.decoded.fields().iter().enumerate() {
            let required = self.key.contains(f.name())
                || self
                    .table
                    .field_with_name(f.name())
                    .is_ok_and(|t| !t.is_nullable());
            if !required {
                continue;
            }
            let col = decoded.column(i);
            for (row, k) in keep.iter_mut().enumerate() {
                if *k && col.is_null(row) {
                    *k = false;
                    dead.push(DeadLetter {
                        url: url.to_string(),
                        record: raws[row].to_string(),
                        error: format!("field {} is missing or null", f.name()),
                    });
                }
            }
        }
        let (decoded, raws) = if keep.iter().all(|k| *k) {
            (decoded, raws)
        } else {
            let mask = arrow::array::BooleanArray::from(keep.clone());
            let kept = arrow::compute::filter_record_batch(&decoded, &mask)?;
            let raws = raws
                .into_iter()
                .zip(&keep)
                .filter_map(|(r, k)| k.then_some(r))
                .collect();
            (kept, raws)
        };
        let rows = self.rows(&decoded, &raws, run_id, at)?;
        let max_cursor = self.max_cursor(&rows)?;
        Ok(Page {
            rows,
            dead,
            max_cursor,
            records,
        })
    }

    fn decode(&self, objects: &[Value]) -> Result<RecordBatch> {
        let mut decoder = arrow::json::ReaderBuilder::new(Arc::clone(&self.decoded))
            .with_coerce_primitive(true)
            .build_decoder()?;
        decoder.serialize(objects)?;
        Ok(decoder
            .flush()?
            .unwrap_or_else(|| RecordBatch::new_empty(Arc::clone(&self.decoded))))
    }

    fn rows(
        &self,
        decoded: &RecordBatch,
        raws: &[&Value],
        run_id: &str,
        at: DateTime<Utc>,
    ) -> Result<RecordBatch> {
        let n = decoded.num_rows();
        let mut columns: Vec<ArrayRef> = Vec::with_capacity(self.table.fields().len());
        for f in self.table.fields() {
            let name = f.name().as_str();
            let c: ArrayRef = if let Some(c) = decoded.column_by_name(name) {
                Arc::clone(c)
            } else if name == CONNECTOR {
                Arc::new(StringArray::from(vec![self.connector.as_str(); n]))
            } else if name == RUN_ID {
                Arc::new(StringArray::from(vec![run_id; n]))
            } else if name == EXTRACTED_AT {
                Arc::new(
                    TimestampMicrosecondArray::from(vec![at.timestamp_micros(); n])
                        .with_timezone("UTC"),
                )
            } else if self.raw.as_deref() == Some(name) {
                Arc::new(StringArray::from_iter_values(
                    raws.iter().map(|r| r.to_string()),
                ))
            } else {
                arrow::array::new_null_array(f.data_type(), n)
            };
            let c = if c.data_type() == f.data_type() {
                c
            } else {
                arrow::compute::cast(&c, f.data_type())?
            };
            columns.push(c);
        }
        Ok(RecordBatch::try_new(Arc::clone(&self.table), columns)?)
    }

    fn max_cursor(&self, rows: &RecordBatch) -> Result<Option<String>> {
        let Some((field, kind)) = &self.cursor else {
            return Ok(None);
        };
        let Some(col) = rows.column_by_name(field) else {
            return Ok(None);
        };
        Ok(match kind {
            CursorKind::Timestamp => {
                let micros =
                    arrow::compute::cast(col, &DataType::Timestamp(TimeUnit::Microsecond, None))?;
                let micros = arrow::compute::cast(&micros, &DataType::Int64)?;
                let micros = micros
                    .as_any()
                    .downcast_ref::<arrow::array::Int64Array>()
                    .and_then(arrow::compute::max);
                micros
                    .and_then(DateTime::from_timestamp_micros)
                    .map(|t| t.to_rfc3339_opts(SecondsFormat::AutoSi, true))
            }
            CursorKind::Integer => {
                let n = arrow::compute::cast(col, &DataType::Int64)?;
                n.as_any()
                    .downcast_ref::<arrow::array::Int64Array>()
                    .and_then(arrow::compute::max)
                    .map(|n| n.to_string())
            }
            CursorKind::Text => {
                let s = arrow::compute::cast(col, &DataType::Utf8)?;
                s.as_any()
                    .downcast_ref::<StringArray>()
                    .and_then(arrow::compute::max_string)
                    .map(str::to_string)
            }
        })
    }
}

/// Keeps the last row of each key (a record fetched later replaces an earlier one within
/// a checkpoint).
pub(crate) fn last_per_key(batch: &RecordBatch, key: &[String]) -> Result<RecordBatch> {
    if key.is_empty() || batch.num_rows() < 2 {
        return Ok(batch.clone());
    }
    let columns: Vec<ArrayRef> = key
        .iter()
        .map(|k| {
            batch
                .column_by_name(k)
                .cloned()
                .ok_or_else(|| Error::internal(format!("key column {k} missing")))
        })
        .collect::<Result<_>>()?;
    let fields = columns
        .iter()
        .map(|c| arrow::row::SortField::new(c.data_type().clone()))
        .collect();
    let converter = arrow::row::RowConverter::new(fields)?;
    let rows = converter.convert_columns(&columns)?;
    let mut last = std::collections::HashMap::with_capacity(batch.num_rows());
    for i in 0..batch.num_rows() {
        last.insert(rows.row(i), i);
    }
    let mut keep: Vec<u32> = last.into_values().map(|i| i as u32).collect();
    keep.sort_unstable();
    let idx = arrow::array::UInt32Array::from(keep);
    Ok(arrow::compute::take_record_batch(batch, &idx)?)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::connectors::definition::ConnectorSpec;

    fn mapper() -> Mapper {
        let spec = ConnectorSpec::parse(
            r#"
table = "bronze.t"
run_as = "x"
[request]
url = "http://127.0.0.1/x"
[records]
path = "$.data[*]"
raw_column = "raw"
fields = [
  { name = "id", type = "bigint", nullable = false },
  { name = "email", path = "$.contact.email" },
  { name = "updated_at", type = "timestamp" },
]
[incremental]
field = "updated_at"
param = "since"
"#,
        )
        .unwrap();
        let table = Arc::new(Schema::new(vec![
            Field::new("id", DataType::Int64, false),
            Field::new("email", DataType::Utf8, true),
            Field::new(
                "updated_at",
                DataType::Timestamp(TimeUnit::Microsecond, Some("UTC".into())),
                true,
            ),
            Field::new("raw", DataType::Utf8, true),
            Field::new(CONNECTOR, DataType::Utf8, true),
            Field::new(RUN_ID, DataType::Utf8, true),
            Field::new(
                EXTRACTED_AT,
                DataType::Timestamp(TimeUnit::Microsecond, Some("UTC".into())),
                true,
            ),
        ]));
        Mapper::new("crm", &spec, table).unwrap()
    }

    #[test]
    fn records_map_and_bad_ones_become_dead_letters() {
        let m = mapper();
        let body = serde_json::json!({"data": [
            {"id": 1, "contact": {"email": "a@x"}, "updated_at": "2026-01-02T03:04:05Z"},
            {"id": "not a number", "updated_at": "2026-01-01T00:00:00Z"},
            {"contact": {"email": "no id"}},
            {"id": "7", "updated_at": "2026-03-01T00:00:00Z"},
        ]});
        let p = m.page(&body, "http://api/x", "run", Utc::now()).unwrap();
        assert_eq!(p.records, 4);
        assert_eq!(p.rows.num_rows(), 2);
        assert_eq!(p.dead.len(), 2, "{:?}", p.dead);
        assert!(p.dead.iter().any(|d| d.error.contains("id is missing")));
        assert_eq!(p.max_cursor.as_deref(), Some("2026-03-01T00:00:00Z"));
        let raw = p.rows.column_by_name("raw").unwrap();
        let raw = raw.as_any().downcast_ref::<StringArray>().unwrap();
        assert!(raw.value(0).contains("a@x"));
    }

    #[test]
    fn cursors_compare_by_kind_and_look_back() {
        let t = CursorKind::Timestamp;
        assert_eq!(
            t.max(
                Some("2026-01-02T00:00:00Z".into()),
                Some("2026-01-10T00:00:00Z".into())
            ),
            Some("2026-01-10T00:00:00Z".into())
        );
        assert_eq!(
            t.bound("2026-01-02T00:00:00Z", 3600, None).unwrap(),
            "2026-01-01T23:00:00Z"
        );
        let i = CursorKind::Integer;
        assert_eq!(
            i.max(Some("9".into()), Some("10".into())),
            Some("10".into())
        );
        assert_eq!(i.bound("10", 3, None).unwrap(), "7");
    }

    #[test]
    fn the_last_record_of_a_key_wins() {
        let b = RecordBatch::try_from_iter(vec![
            (
                "id",
                Arc::new(arrow::array::Int64Array::from(vec![1, 2, 1])) as ArrayRef,
            ),
            (
                "v",
                Arc::new(StringArray::from(vec!["a", "b", "c"])) as ArrayRef,
            ),
        ])
        .unwrap();
        let out = last_per_key(&b, &["id".to_string()]).unwrap();
        assert_eq!(out.num_rows(), 2);
        let v = out
            .column(1)
            .as_any()
            .downcast_ref::<StringArray>()
            .unwrap();
        assert_eq!((v.value(0), v.value(1)), ("b", "c"));
    }
}
