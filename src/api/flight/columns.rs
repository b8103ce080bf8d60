//! Flight SQL column metadata on every schema we announce (statement results, prepared
//! statements, `GetTables` with `include_schema`): the `ARROW:FLIGHT:SQL:*` field metadata
//! JDBC and ODBC drivers turn into `ResultSetMetaData` (type name, precision, scale,
//! nullability, origin table, read-only, searchable). Without it ADBC's `get_objects`
//! reported `xdbc_type_name = None` for every column and BI tools guessed types.
//!
//! Type names are the ones `GetXdbcTypeInfo` lists, so a driver can map one to the other.

use std::collections::HashMap;
use std::sync::Arc;

use arrow::datatypes::{DataType, Field, Schema, SchemaRef};

use crate::storage::{CATALOG_NAME, TableRef};

const PREFIX: &str = "ARROW:FLIGHT:SQL:";

/// The XDBC type name, precision and scale of an Arrow type.
fn describe(dt: &DataType) -> (String, Option<u32>, Option<i32>) {
    use DataType as D;
    match dt {
        D::Boolean => ("BOOLEAN".into(), Some(1), None),
        D::Int8 | D::UInt8 => ("TINYINT".into(), Some(3), Some(0)),
        D::Int16 | D::UInt16 => ("SMALLINT".into(), Some(5), Some(0)),
        D::Int32 | D::UInt32 => ("INTEGER".into(), Some(10), Some(0)),
        D::Int64 | D::UInt64 => ("BIGINT".into(), Some(19), Some(0)),
        D::Float16 | D::Float32 => ("FLOAT".into(), Some(7), None),
        D::Float64 => ("DOUBLE".into(), Some(15), None),
        D::Decimal32(p, s) | D::Decimal64(p, s) | D::Decimal128(p, s) | D::Decimal256(p, s) => {
            ("DECIMAL".into(), Some(u32::from(*p)), Some(i32::from(*s)))
        }
        D::Utf8 | D::LargeUtf8 | D::Utf8View => ("VARCHAR".into(), None, None),
        D::Binary | D::LargeBinary | D::BinaryView | D::FixedSizeBinary(_) => {
            ("VARBINARY".into(), None, None)
        }
        D::Date32 | D::Date64 => ("DATE".into(), Some(10), None),
        D::Timestamp(_, _) => ("TIMESTAMP".into(), Some(29), Some(6)),
        D::Dictionary(_, value) => describe(value),
        other => (other.to_string().to_ascii_uppercase(), None, None),
    }
}

fn metadata(field: &Field, origin: Option<&TableRef>, read_only: bool) -> HashMap<String, String> {
    let (type_name, precision, scale) = describe(field.data_type());
    let flag = |b: bool| if b { "1" } else { "0" }.to_string();
    let mut m = field.metadata().clone();
    let mut set = |k: &str, v: String| {
        m.insert(format!("{PREFIX}{k}"), v);
    };
    set("TYPE_NAME", type_name);
    if let Some(p) = precision {
        set("PRECISION", p.to_string());
    }
    if let Some(s) = scale {
        set("SCALE", s.to_string());
    }
    set("IS_AUTO_INCREMENT", flag(false));
    set(
        "IS_CASE_SENSITIVE",
        flag(matches!(
            field.data_type(),
            DataType::Utf8 | DataType::LargeUtf8 | DataType::Utf8View
        )),
    );
    set("IS_READ_ONLY", flag(read_only));
    set("IS_SEARCHABLE", flag(true));
    // The column's description (`COMMENT ON COLUMN`, Delta field metadata `comment`): JDBC's
    // `getColumns` REMARKS (arrow#46087).
    if let Some(remarks) = field
        .metadata()
        .get(crate::storage::types::COLUMN_COMMENT_KEY)
        .filter(|c| !c.is_empty())
    {
        set("REMARKS", remarks.clone());
    }
    if let Some(t) = origin {
        set("CATALOG_NAME", CATALOG_NAME.to_string());
        set("DB_SCHEMA_NAME", t.layer.as_str().to_string());
        set("TABLE_NAME", t.name.clone());
    }
    m
}

/// `schema` with column metadata; `origins[i]` is the table column `i` comes from, if any.
/// Result sets are read-only; a table's own columns (`GetTables`) are not.
pub(super) fn with_metadata(
    schema: &SchemaRef,
    origins: &[Option<TableRef>],
    read_only: bool,
) -> SchemaRef {
    Arc::new(Schema::new_with_metadata(
        schema
            .fields()
            .iter()
            .enumerate()
            .map(|(i, f)| {
                let origin = origins.get(i).and_then(Option::as_ref);
                Arc::new(
                    Field::new(f.name(), f.data_type().clone(), f.is_nullable())
                        .with_metadata(metadata(f, origin, read_only)),
                )
            })
            .collect::<Vec<_>>(),
        schema.metadata().clone(),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decimals_strings_and_origins() {
        let schema = Arc::new(Schema::new(vec![
            Field::new("amount", DataType::Decimal128(10, 2), true)
                .with_metadata([("comment".to_string(), "Order total".to_string())].into()),
            Field::new("name", DataType::Utf8, false),
        ]));
        let t = TableRef::parse("gold.orders").unwrap();
        let out = with_metadata(&schema, &[Some(t), None], true);
        let m = out.field(0).metadata();
        assert_eq!(m["ARROW:FLIGHT:SQL:TYPE_NAME"], "DECIMAL");
        assert_eq!(m["ARROW:FLIGHT:SQL:PRECISION"], "10");
        assert_eq!(m["ARROW:FLIGHT:SQL:SCALE"], "2");
        assert_eq!(m["ARROW:FLIGHT:SQL:DB_SCHEMA_NAME"], "gold");
        assert_eq!(m["ARROW:FLIGHT:SQL:TABLE_NAME"], "orders");
        assert_eq!(m["ARROW:FLIGHT:SQL:IS_READ_ONLY"], "1");
        assert_eq!(m["ARROW:FLIGHT:SQL:REMARKS"], "Order total");
        let m = out.field(1).metadata();
        assert!(!m.contains_key("ARROW:FLIGHT:SQL:REMARKS"));
        assert_eq!(m["ARROW:FLIGHT:SQL:TYPE_NAME"], "VARCHAR");
        assert_eq!(m["ARROW:FLIGHT:SQL:IS_CASE_SENSITIVE"], "1");
        assert!(!m.contains_key("ARROW:FLIGHT:SQL:TABLE_NAME"));
    }
}
