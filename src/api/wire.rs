//! Result batches as they go on the wire, for both front ends.
//!
//! Every batch is compacted before encoding: view arrays (`Utf8View`, `BinaryView`) are
//! downcast to `Utf8`/`Binary` for clients that need it (Flight, by default), or
//! garbage-collected otherwise, so a 20-row slice of a large batch never drags the whole data
//! buffers onto the wire (the IPC writer sends a view array's data buffers whole).

use std::sync::Arc;

use arrow::array::{ArrayRef, AsArray, RecordBatch};
use arrow::datatypes::{DataType, Field, Schema, SchemaRef};

use crate::error::Error;

/// The type a column is sent as.
fn wire_type(dt: &DataType, downcast: bool) -> DataType {
    match dt {
        DataType::Utf8View if downcast => DataType::Utf8,
        DataType::BinaryView if downcast => DataType::Binary,
        other => other.clone(),
    }
}

/// The schema clients see for `schema`.
pub fn wire_schema(schema: &SchemaRef, downcast: bool) -> SchemaRef {
    Arc::new(Schema::new_with_metadata(
        schema
            .fields()
            .iter()
            .map(|f| {
                Arc::new(
                    Field::new(
                        f.name(),
                        wire_type(f.data_type(), downcast),
                        f.is_nullable(),
                    )
                    .with_metadata(f.metadata().clone()),
                )
            })
            .collect::<Vec<_>>(),
        schema.metadata().clone(),
    ))
}

fn compact_column(col: &ArrayRef, downcast: bool) -> Result<ArrayRef, Error> {
    Ok(match col.data_type() {
        DataType::Utf8View | DataType::BinaryView if downcast => {
            arrow::compute::cast(col, &wire_type(col.data_type(), true))?
        }
        DataType::Utf8View => Arc::new(col.as_string_view().gc()),
        DataType::BinaryView => Arc::new(col.as_binary_view().gc()),
        _ => Arc::clone(col),
    })
}

/// Compacts `batch` to `schema` (its wire schema).
pub fn compact(
    batch: &RecordBatch,
    schema: &SchemaRef,
    downcast: bool,
) -> Result<RecordBatch, Error> {
    let columns = batch
        .columns()
        .iter()
        .map(|c| compact_column(c, downcast))
        .collect::<Result<Vec<_>, _>>()?;
    Ok(RecordBatch::try_new(Arc::clone(schema), columns)?)
}
