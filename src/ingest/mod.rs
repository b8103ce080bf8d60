//! Uploads → validated Arrow batches in a table's schema.
//!
//! Everything is decoded and checked before anything is written, so a bad upload commits
//! nothing. Errors name the column and, where the format has rows, the row (1-based, data rows
//! only). Unknown columns, missing NOT NULL columns, type errors, malformed or truncated input
//! are all `InvalidArgument`.

use std::collections::{BTreeMap, HashSet};
use std::io::Cursor;
use std::sync::Arc;

use arrow::array::{Array, ArrayRef, RecordBatch, new_null_array};
use arrow::compute::{CastOptions, cast_with_options};
use arrow::datatypes::{Field, Schema, SchemaRef};
use bytes::Bytes;

use crate::error::{Error, Result};

/// Upload formats, chosen by `Content-Type`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UploadFormat {
    /// `application/json`: an array of objects.
    Json,
    /// `application/x-ndjson`: one object per line.
    NdJson,
    /// `text/csv` with a header row.
    Csv,
    /// `application/vnd.apache.parquet`.
    Parquet,
    /// `application/vnd.apache.arrow.stream`.
    ArrowStream,
}

impl UploadFormat {
    pub fn from_content_type(ct: &str) -> Result<UploadFormat> {
        let essence = ct
            .split(';')
            .next()
            .unwrap_or("")
            .trim()
            .to_ascii_lowercase();
        Ok(match essence.as_str() {
            "application/json" => UploadFormat::Json,
            "application/x-ndjson"
            | "application/ndjson"
            | "application/jsonl"
            | "application/x-jsonlines" => UploadFormat::NdJson,
            "text/csv" | "application/csv" => UploadFormat::Csv,
            "application/vnd.apache.parquet" | "application/x-parquet" | "application/parquet" => {
                UploadFormat::Parquet
            }
            "application/vnd.apache.arrow.stream" => UploadFormat::ArrowStream,
            _ => {
                return Err(Error::UnsupportedMediaType(format!(
                    "unsupported content type {ct:?}; use application/json, application/x-ndjson, text/csv, application/vnd.apache.parquet or application/vnd.apache.arrow.stream"
                )));
            }
        })
    }
}

/// Decodes `body` into batches with exactly `target`'s schema.
pub fn decode(format: UploadFormat, body: Bytes, target: &SchemaRef) -> Result<Vec<RecordBatch>> {
    let batches = match format {
        UploadFormat::Json => {
            let value: serde_json::Value = serde_json::from_slice(&body)
                .map_err(|e| Error::invalid(format!("invalid JSON: {e}")))?;
            let serde_json::Value::Array(rows) = value else {
                return Err(Error::invalid(
                    "a JSON upload must be an array of objects (use application/x-ndjson for one object per line)",
                ));
            };
            decode_json_rows(rows, target)?
        }
        UploadFormat::NdJson => {
            let mut rows = Vec::new();
            for (i, line) in body.split(|b| *b == b'\n').enumerate() {
                if line.iter().all(u8::is_ascii_whitespace) {
                    continue;
                }
                let v: serde_json::Value = serde_json::from_slice(line)
                    .map_err(|e| Error::invalid(format!("invalid JSON on line {}: {e}", i + 1)))?;
                rows.push(v);
            }
            decode_json_rows(rows, target)?
        }
        UploadFormat::Csv => decode_csv(body, target)?,
        UploadFormat::Parquet => {
            let reader =
                parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder::try_new(body)
                    .and_then(|b| b.build())
                    .map_err(|e| Error::invalid(format!("invalid Parquet: {e}")))?;
            let mut out = Vec::new();
            for batch in reader {
                let batch = batch.map_err(|e| Error::invalid(format!("invalid Parquet: {e}")))?;
                out.push(conform(&batch, target)?);
            }
            out
        }
        UploadFormat::ArrowStream => {
            let reader = arrow::ipc::reader::StreamReader::try_new(Cursor::new(body), None)
                .map_err(|e| Error::invalid(format!("invalid Arrow IPC stream: {e}")))?;
            let mut out = Vec::new();
            for batch in reader {
                let batch =
                    batch.map_err(|e| Error::invalid(format!("invalid Arrow IPC stream: {e}")))?;
                out.push(conform(&batch, target)?);
            }
            out
        }
    };
    enforce_schema(batches, target)
}

/// The columns an upload carries: typed as the upload states them (Parquet, Arrow) or as
/// inferred from its values (JSON, CSV). For `merge_schema`, which adds the ones the table
/// lacks.
pub fn upload_schema(format: UploadFormat, body: &Bytes) -> Result<Schema> {
    let bad =
        |what: &str, e: &dyn std::fmt::Display| Error::invalid(format!("invalid {what}: {e}"));
    match format {
        UploadFormat::Json => {
            let value: serde_json::Value =
                serde_json::from_slice(body).map_err(|e| bad("JSON", &e))?;
            let serde_json::Value::Array(rows) = value else {
                return Err(Error::invalid("a JSON upload must be an array of objects"));
            };
            arrow::json::reader::infer_json_schema_from_iterator(rows.into_iter().map(Ok))
                .map_err(|e| bad("JSON", &clean_arrow_message(&e)))
        }
        UploadFormat::NdJson => arrow::json::reader::infer_json_schema(Cursor::new(body), None)
            .map(|(schema, _)| schema)
            .map_err(|e| bad("JSON", &clean_arrow_message(&e))),
        UploadFormat::Csv => arrow::csv::reader::Format::default()
            .with_header(true)
            .infer_schema(Cursor::new(body), None)
            .map(|(schema, _)| schema)
            .map_err(|e| bad("CSV", &clean_arrow_message(&e))),
        UploadFormat::Parquet => {
            parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder::try_new(body.clone())
                .map(|b| b.schema().as_ref().clone())
                .map_err(|e| bad("Parquet", &e))
        }
        UploadFormat::ArrowStream => {
            arrow::ipc::reader::StreamReader::try_new(Cursor::new(body.clone()), None)
                .map(|r| r.schema().as_ref().clone())
                .map_err(|e| bad("Arrow IPC stream", &e))
        }
    }
}

/// `target` followed by the columns of `incoming` it lacks (matched case-insensitively),
/// as nullable Delta-storable types. Returns `None` when there are none.
pub fn with_new_columns(target: &SchemaRef, incoming: &Schema) -> Result<Option<SchemaRef>> {
    let mut fields: Vec<Field> = target.fields().iter().map(|f| f.as_ref().clone()).collect();
    let before = fields.len();
    for f in incoming.fields() {
        let name = f.name().trim().to_ascii_lowercase();
        if fields.iter().any(|g| g.name() == &name) {
            continue;
        }
        crate::storage::validate_name(&name).map_err(|e| Error::invalid(format!("column: {e}")))?;
        let dt = crate::storage::types::delta_arrow_type(f.data_type()).ok_or_else(|| {
            Error::Unsupported(format!(
                "new column {name} has type {}, which cannot be added",
                f.data_type()
            ))
        })?;
        fields.push(Field::new(name, dt, true));
    }
    Ok((fields.len() > before).then(|| Arc::new(Schema::new(fields))))
}

/// The target schema with every field nullable: decoders fill absent values with nulls and
/// [`check_not_null`] then reports them with their row.
fn nullable(target: &SchemaRef) -> SchemaRef {
    Arc::new(Schema::new(
        target
            .fields()
            .iter()
            .map(|f| Field::new(f.name(), f.data_type().clone(), true))
            .collect::<Vec<_>>(),
    ))
}

fn decode_json_rows(rows: Vec<serde_json::Value>, target: &SchemaRef) -> Result<Vec<RecordBatch>> {
    let names: HashSet<&str> = target.fields().iter().map(|f| f.name().as_str()).collect();
    let mut objects = Vec::with_capacity(rows.len());
    for (i, row) in rows.into_iter().enumerate() {
        let serde_json::Value::Object(obj) = row else {
            return Err(Error::invalid(format!(
                "row {}: expected a JSON object",
                i + 1
            )));
        };
        let mut norm = BTreeMap::new();
        for (k, v) in obj {
            let key = k.to_ascii_lowercase();
            if !names.contains(key.as_str()) {
                return Err(Error::invalid(format!(
                    "row {}: unknown column {k:?}",
                    i + 1
                )));
            }
            if norm.insert(key, v).is_some() {
                return Err(Error::invalid(format!(
                    "row {}: column {k:?} given twice",
                    i + 1
                )));
            }
        }
        objects.push(norm);
    }
    let schema = nullable(target);
    let decode = |rows: &[BTreeMap<String, serde_json::Value>]| -> std::result::Result<Option<RecordBatch>, arrow::error::ArrowError> {
        let mut decoder = arrow::json::ReaderBuilder::new(Arc::clone(&schema))
            .with_batch_size(rows.len().max(1))
            .build_decoder()?;
        decoder.serialize(rows)?;
        decoder.flush()
    };
    let mut out = Vec::new();
    for (chunk_index, chunk) in objects.chunks(8192).enumerate() {
        match decode(chunk) {
            Ok(Some(batch)) => out.push(with_schema(batch, target)?),
            Ok(None) => {}
            Err(_) => {
                // Find the first bad row so the error can name it.
                for (i, row) in chunk.iter().enumerate() {
                    if let Err(e) = decode(std::slice::from_ref(row)) {
                        return Err(Error::invalid(format!(
                            "row {}: {}",
                            chunk_index * 8192 + i + 1,
                            clean_arrow_message(&e)
                        )));
                    }
                }
                return Err(Error::invalid("rows could not be decoded"));
            }
        }
    }
    Ok(out)
}

fn decode_csv(body: Bytes, target: &SchemaRef) -> Result<Vec<RecordBatch>> {
    let header = {
        let mut rdr = csv::ReaderBuilder::new()
            .has_headers(true)
            .from_reader(body.as_ref());
        rdr.headers()
            .map_err(|e| Error::invalid(format!("invalid CSV header: {e}")))?
            .iter()
            .map(|h| h.trim().to_ascii_lowercase())
            .collect::<Vec<_>>()
    };
    if header.iter().all(String::is_empty) {
        return Err(Error::invalid("CSV upload has no header row"));
    }
    let mut seen = HashSet::new();
    let mut fields = Vec::with_capacity(header.len());
    for h in &header {
        let field = target
            .field_with_name(h)
            .map_err(|_| Error::invalid(format!("CSV header: unknown column {h:?}")))?;
        if !seen.insert(h.clone()) {
            return Err(Error::invalid(format!(
                "CSV header: column {h:?} given twice"
            )));
        }
        fields.push(Field::new(h, field.data_type().clone(), true));
    }
    let csv_schema = Arc::new(Schema::new(fields));
    let reader = arrow::csv::ReaderBuilder::new(Arc::clone(&csv_schema))
        .with_header(true)
        .build(Cursor::new(body))
        .map_err(|e| Error::invalid(format!("invalid CSV: {}", clean_arrow_message(&e))))?;
    let mut out = Vec::new();
    for batch in reader {
        let batch = batch
            .map_err(|e| Error::invalid(format!("invalid CSV: {}", clean_arrow_message(&e))))?;
        out.push(conform(&batch, target)?);
    }
    Ok(out)
}

/// Maps a batch's columns by name onto `target`: unknown columns are errors, absent nullable
/// columns become nulls, absent NOT NULL columns are errors, other types are cast strictly
/// (overflow or unparsable values fail instead of turning into nulls).
pub fn conform(batch: &RecordBatch, target: &SchemaRef) -> Result<RecordBatch> {
    let schema = batch.schema();
    for f in schema.fields() {
        if target
            .field_with_name(&f.name().to_ascii_lowercase())
            .is_err()
        {
            return Err(Error::invalid(format!("unknown column {:?}", f.name())));
        }
    }
    let strict = CastOptions {
        safe: false,
        ..Default::default()
    };
    let mut columns: Vec<ArrayRef> = Vec::with_capacity(target.fields().len());
    for field in target.fields() {
        let found = schema
            .fields()
            .iter()
            .position(|f| f.name().eq_ignore_ascii_case(field.name()));
        let column = match found {
            Some(i) => {
                let col = batch.column(i);
                if col.data_type() == field.data_type() {
                    Arc::clone(col)
                } else {
                    cast_with_options(col, field.data_type(), &strict).map_err(|e| {
                        Error::invalid(format!(
                            "column {}: cannot convert {} to {}: {}",
                            field.name(),
                            col.data_type(),
                            field.data_type(),
                            clean_arrow_message(&e)
                        ))
                    })?
                }
            }
            None if field.is_nullable() => new_null_array(field.data_type(), batch.num_rows()),
            None => {
                return Err(Error::invalid(format!(
                    "column {} is NOT NULL but missing from the upload",
                    field.name()
                )));
            }
        };
        columns.push(column);
    }
    with_schema_columns(columns, target, batch.num_rows())
}

fn with_schema(batch: RecordBatch, target: &SchemaRef) -> Result<RecordBatch> {
    with_schema_columns(batch.columns().to_vec(), target, batch.num_rows())
}

fn with_schema_columns(
    columns: Vec<ArrayRef>,
    target: &SchemaRef,
    rows: usize,
) -> Result<RecordBatch> {
    // Nullability is checked separately with row numbers; build against the nullable twin
    // and then re-label with the target schema once it is known to hold.
    let relaxed = nullable(target);
    let opts = arrow::array::RecordBatchOptions::new().with_row_count(Some(rows));
    let batch = RecordBatch::try_new_with_options(relaxed, columns, &opts)
        .map_err(|e| Error::invalid(clean_arrow_message(&e)))?;
    Ok(batch)
}

/// Fails naming the first row that has no value in a NOT NULL column, then re-labels the
/// batches with `target` (whose nullability now holds).
pub fn enforce_schema(batches: Vec<RecordBatch>, target: &SchemaRef) -> Result<Vec<RecordBatch>> {
    let mut offset = 0usize;
    batches
        .into_iter()
        .map(|b| {
            let rows = b.num_rows();
            let out = enforce_batch(b, target, offset);
            offset += rows;
            out
        })
        .collect()
}

/// [`enforce_schema`] of one batch whose first row is row `offset + 1` of the upload.
pub fn enforce_batch(batch: RecordBatch, target: &SchemaRef, offset: usize) -> Result<RecordBatch> {
    for (i, field) in target.fields().iter().enumerate() {
        if field.is_nullable() {
            continue;
        }
        let Some(col) = batch.columns().get(i) else {
            continue;
        };
        if col.null_count() > 0
            && let Some(row) = (0..col.len()).find(|r| col.is_null(*r))
        {
            return Err(Error::invalid(format!(
                "row {}: column {} is NOT NULL but has no value",
                offset + row + 1,
                field.name()
            )));
        }
    }
    RecordBatch::try_new(Arc::clone(target), batch.columns().to_vec())
        .map_err(|e| Error::invalid(clean_arrow_message(&e)))
}

/// Casts batches of any Arrow schema to types a new Delta table can store (for tables created
/// from client data: ADBC ingest).
pub fn delta_compatible(
    schema: &SchemaRef,
    batches: Vec<RecordBatch>,
) -> Result<(SchemaRef, Vec<RecordBatch>)> {
    let target = delta_schema(schema)?;
    let out = batches
        .iter()
        .map(|b| conform(b, &target))
        .collect::<Result<Vec<_>>>()?;
    Ok((target, out))
}

/// The schema of a new Delta table for client data of `schema`: lower-case names, types a
/// Delta table can store, every column nullable.
pub fn delta_schema(schema: &SchemaRef) -> Result<SchemaRef> {
    let mut fields = Vec::with_capacity(schema.fields().len());
    for f in schema.fields() {
        let name = f.name().to_ascii_lowercase();
        crate::storage::validate_name(&name).map_err(|e| Error::invalid(format!("column: {e}")))?;
        let dt = crate::storage::types::delta_arrow_type(f.data_type()).ok_or_else(|| {
            Error::Unsupported(format!(
                "column {} has type {}, which Delta tables cannot store",
                f.name(),
                f.data_type()
            ))
        })?;
        fields.push(Field::new(name, dt, true));
    }
    Ok(Arc::new(Schema::new(fields)))
}

fn clean_arrow_message(e: &arrow::error::ArrowError) -> String {
    let s = e.to_string();
    for prefix in [
        "Json error: ",
        "Parser error: ",
        "Cast error: ",
        "Invalid argument error: ",
        "Csv error: ",
    ] {
        if let Some(rest) = s.strip_prefix(prefix) {
            return rest.to_string();
        }
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;
    use arrow::datatypes::DataType;

    fn schema() -> SchemaRef {
        Arc::new(Schema::new(vec![
            Field::new("id", DataType::Int64, false),
            Field::new("name", DataType::Utf8, true),
        ]))
    }

    #[test]
    fn json_errors_name_row_and_column() {
        let s = schema();
        let ok = decode(
            UploadFormat::Json,
            Bytes::from(r#"[{"id":1,"name":"a"},{"id":2}]"#),
            &s,
        )
        .unwrap();
        assert_eq!(ok.iter().map(|b| b.num_rows()).sum::<usize>(), 2);
        let e = decode(
            UploadFormat::Json,
            Bytes::from(r#"[{"id":1},{"id":"x"}]"#),
            &s,
        )
        .unwrap_err();
        assert!(e.to_string().starts_with("row 2"), "{e}");
        let e = decode(
            UploadFormat::Json,
            Bytes::from(r#"[{"id":1},{"id":2,"zzz":1}]"#),
            &s,
        )
        .unwrap_err();
        assert!(
            e.to_string().contains("row 2") && e.to_string().contains("zzz"),
            "{e}"
        );
        let e = decode(
            UploadFormat::NdJson,
            Bytes::from("{\"id\":1}\n{\"name\":\"b\"}\n"),
            &s,
        )
        .unwrap_err();
        assert!(
            e.to_string().contains("row 2") && e.to_string().contains("id"),
            "{e}"
        );
        assert!(decode(UploadFormat::Json, Bytes::from("[{\"id\":1"), &s).is_err());
    }

    #[test]
    fn csv_checks_header_and_types() {
        let s = schema();
        let ok = decode(UploadFormat::Csv, Bytes::from("name,id\na,1\n,2\n"), &s).unwrap();
        assert_eq!(ok[0].num_rows(), 2);
        assert!(
            decode(UploadFormat::Csv, Bytes::from("id,bogus\n1,2\n"), &s)
                .unwrap_err()
                .to_string()
                .contains("bogus")
        );
        assert!(
            decode(UploadFormat::Csv, Bytes::from("name\na\n"), &s)
                .unwrap_err()
                .to_string()
                .contains("id")
        );
        assert!(decode(UploadFormat::Csv, Bytes::from("id,name\n1,a\n2\n"), &s).is_err());
        assert!(decode(UploadFormat::Csv, Bytes::from("id,name\nx,a\n"), &s).is_err());
    }

    #[test]
    fn garbage_binary_formats_are_rejected() {
        let s = schema();
        assert!(
            decode(
                UploadFormat::Parquet,
                Bytes::from_static(b"PAR1garbage"),
                &s
            )
            .is_err()
        );
        assert!(
            decode(
                UploadFormat::ArrowStream,
                Bytes::from_static(b"\xff\xff\xff\xffgarbage"),
                &s
            )
            .is_err()
        );
    }
}
