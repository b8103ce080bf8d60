//! Column types: one mapping from type names to Delta types, used by the REST table API
//! (`{"type": "bigint"}`) and by SQL `CREATE TABLE` (whose parsed types print to the same
//! names), so both accept exactly the same set.

use deltalake::kernel::{DataType, StructField};
use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::storage::validate_name;

/// A column as users declare it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ColumnSpec {
    pub name: String,
    #[serde(rename = "type")]
    pub data_type: String,
    #[serde(default = "default_true")]
    pub nullable: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
}

fn default_true() -> bool {
    true
}

/// Metadata key Spark and Databricks use for column comments; we use the same so other
/// engines show our descriptions.
pub(crate) const COLUMN_COMMENT_KEY: &str = "comment";

impl ColumnSpec {
    pub fn to_field(&self) -> Result<StructField> {
        validate_name(&self.name).map_err(|e| Error::invalid(format!("column: {e}")))?;
        let dt = parse_type(&self.data_type)
            .map_err(|e| Error::invalid(format!("column {}: {e}", self.name)))?;
        let field = StructField::new(self.name.to_ascii_lowercase(), dt, self.nullable);
        Ok(match &self.description {
            Some(d) => field.with_metadata([(COLUMN_COMMENT_KEY, d.clone())]),
            None => field,
        })
    }
}

/// Parses a type name (`bigint`, `DECIMAL(10, 2)`, `varchar(20)`, `timestamp`…).
pub(crate) fn parse_type(name: &str) -> Result<DataType> {
    let norm = name
        .split_whitespace()
        .collect::<Vec<_>>()
        .join(" ")
        .to_ascii_lowercase();
    let (base, args) = match norm.find('(') {
        Some(i) => {
            let close = norm.rfind(')').ok_or_else(|| bad_type(name))?;
            if close < i {
                return Err(bad_type(name));
            }
            (
                norm[..i].trim().to_string(),
                Some(norm[i + 1..close].to_string()),
            )
        }
        None => (norm.clone(), None),
    };
    let dt = match base.as_str() {
        "boolean" | "bool" => DataType::BOOLEAN,
        "tinyint" | "byte" => DataType::BYTE,
        "smallint" | "short" | "int2" => DataType::SHORT,
        "int" | "integer" | "int4" => DataType::INTEGER,
        "bigint" | "long" | "int8" => DataType::LONG,
        "float" | "real" | "float4" => DataType::FLOAT,
        "double" | "double precision" | "float8" => DataType::DOUBLE,
        "string" | "text" | "varchar" | "char" | "character varying" | "character" => {
            DataType::STRING
        }
        "binary" | "varbinary" | "bytea" | "blob" => DataType::BINARY,
        "date" => DataType::DATE,
        "timestamp" | "timestamptz" | "timestamp with time zone" => DataType::TIMESTAMP,
        "timestamp_ntz" | "timestamp without time zone" | "datetime" => DataType::TIMESTAMP_NTZ,
        "decimal" | "numeric" | "dec" => {
            let (p, s) = match args.as_deref() {
                None => (10u8, 0u8),
                Some(a) => {
                    let nums: Vec<&str> = a.split(',').map(str::trim).collect();
                    let p = nums.first().and_then(|x| x.parse::<u8>().ok());
                    let s = match nums.get(1) {
                        Some(x) => x.parse::<u8>().ok(),
                        None => Some(0),
                    };
                    match (p, s, nums.len()) {
                        (Some(p), Some(s), 1 | 2) => (p, s),
                        _ => return Err(bad_type(name)),
                    }
                }
            };
            return DataType::decimal(p, s).map_err(|e| {
                Error::invalid(format!("{name}: {e} (precision 1–38, scale ≤ precision)"))
            });
        }
        _ => return Err(bad_type(name)),
    };
    // Length arguments (`varchar(20)`) are accepted and ignored: Delta strings are unbounded.
    // Other types take none.
    if args.is_some() && dt != DataType::STRING && dt != DataType::BINARY {
        return Err(bad_type(name));
    }
    Ok(dt)
}

fn bad_type(name: &str) -> Error {
    Error::invalid(format!(
        "unknown type {name:?}; supported: boolean, tinyint, smallint, int, bigint, float, double, decimal(p,s), string, binary, date, timestamp, timestamp_ntz"
    ))
}

/// The Arrow type a Delta table stores for `dt` (no views, large or unsigned types;
/// microsecond timestamps), or `None` if Delta cannot store it.
pub(crate) fn delta_arrow_type(
    dt: &arrow::datatypes::DataType,
) -> Option<arrow::datatypes::DataType> {
    use arrow::datatypes::{DataType as D, TimeUnit};
    Some(match dt {
        D::Boolean
        | D::Int8
        | D::Int16
        | D::Int32
        | D::Int64
        | D::Float32
        | D::Float64
        | D::Utf8
        | D::Binary
        | D::Date32
        | D::Decimal128(..) => dt.clone(),
        D::Null | D::Utf8View | D::LargeUtf8 => D::Utf8,
        D::BinaryView | D::LargeBinary | D::FixedSizeBinary(_) => D::Binary,
        D::UInt8 => D::Int16,
        D::UInt16 => D::Int32,
        D::UInt32 => D::Int64,
        D::UInt64 => D::Decimal128(20, 0),
        D::Float16 => D::Float32,
        D::Date64 => D::Date32,
        D::Timestamp(_, None) => D::Timestamp(TimeUnit::Microsecond, None),
        D::Timestamp(_, Some(_)) => D::Timestamp(TimeUnit::Microsecond, Some("UTC".into())),
        D::Dictionary(_, v) => delta_arrow_type(v)?,
        _ => return None,
    })
}

/// The Delta type name (`long`, `decimal(10,2)`, `array<…>` as JSON) for display.
pub(crate) fn type_name(dt: &DataType) -> String {
    match serde_json::to_value(dt) {
        Ok(serde_json::Value::String(s)) => s,
        Ok(other) => other.to_string(),
        Err(_) => format!("{dt:?}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn common_names_map_to_delta_types() {
        assert_eq!(parse_type("BIGINT").unwrap(), DataType::LONG);
        assert_eq!(parse_type("varchar(20)").unwrap(), DataType::STRING);
        assert_eq!(parse_type("Double  Precision").unwrap(), DataType::DOUBLE);
        assert_eq!(
            parse_type("decimal(10, 2)").unwrap(),
            DataType::decimal(10, 2).unwrap()
        );
        assert_eq!(
            type_name(&parse_type("decimal(10,2)").unwrap()),
            "decimal(10,2)"
        );
        assert_eq!(type_name(&DataType::LONG), "long");
        assert!(parse_type("decimal(99,2)").is_err());
        assert!(parse_type("int(3)").is_err());
        assert!(parse_type("geometry").is_err());
    }
}
