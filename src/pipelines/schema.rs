//! Schema evolution and table metadata: `ALTER TABLE`, `COMMENT ON`, REST `PATCH`.
//!
//! Each change is one Delta commit carrying the principal. delta-rs 1.1 cannot write tables
//! with column mapping, so renaming and dropping columns (which need it) are refused with a
//! way out, and widening a column's type rewrites the table in one overwrite commit (Delta's
//! in-place `typeWidening` feature is not writable either). Time travel to versions before
//! the change keeps the old schema.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use arrow::datatypes::{DataType as ArrowType, TimeUnit};
use datafusion::datasource::provider_as_source;
use datafusion::execution::context::SessionState;
use datafusion::logical_expr::{LogicalPlanBuilder, cast, col};
use deltalake::DeltaTable;
use deltalake::kernel::{DataType, MetadataValue, PrimitiveType, StructField};
use deltalake::operations::update_table_metadata::TableMetadataUpdate;
use deltalake::protocol::SaveMode;

use crate::error::{Error, Result};
use crate::pipelines::commit::commit_properties;
use crate::security::Principal;
use crate::storage::types::{COLUMN_COMMENT_KEY, ColumnSpec, parse_type};
use crate::storage::{Catalog, TableRef, properties};

/// One schema or metadata change.
#[derive(Debug, Clone, PartialEq)]
pub enum TableChange {
    /// `ALTER TABLE t ADD COLUMN c type [COMMENT '…'][, ADD COLUMN …]`: nullable columns.
    AddColumns {
        columns: Vec<ColumnSpec>,
        if_not_exists: bool,
    },
    /// `ALTER TABLE t SET TBLPROPERTIES ('k' = 'v', …)`.
    SetProperties(BTreeMap<String, String>),
    /// `ALTER TABLE t ALTER COLUMN c TYPE wider_type`.
    SetColumnType { column: String, data_type: String },
    /// `ALTER TABLE t ALTER COLUMN c DROP NOT NULL`.
    DropNotNull { column: String },
    /// `COMMENT ON COLUMN t.c IS '…' | NULL`.
    ColumnComment {
        column: String,
        comment: Option<String>,
    },
    /// `COMMENT ON TABLE t IS '…' | NULL`.
    Description(Option<String>),
}

impl TableChange {
    fn operation(&self) -> &'static str {
        match self {
            TableChange::AddColumns { .. } => "ADD COLUMNS",
            TableChange::SetProperties(_) => "SET TBLPROPERTIES",
            TableChange::SetColumnType { .. } => "CHANGE COLUMN TYPE",
            TableChange::DropNotNull { .. } => "DROP NOT NULL",
            TableChange::ColumnComment { .. } => "COMMENT ON COLUMN",
            TableChange::Description(_) => "SET DESCRIPTION",
        }
    }
}

/// Applies `change` to `t` as one commit (none when there is nothing to change) and returns
/// the table after it. `state` runs the rewrite a type change needs.
pub(crate) async fn alter(
    catalog: &Catalog,
    t: &TableRef,
    p: &Principal,
    change: &TableChange,
    state: &SessionState,
) -> Result<DeltaTable> {
    let table = catalog.load(t).await?;
    let props = commit_properties(p, change.operation());
    let schema = table.snapshot()?.schema();
    let field = |name: &str| -> Result<StructField> {
        schema
            .field(name.to_ascii_lowercase())
            .cloned()
            .ok_or_else(|| Error::invalid(format!("{t} has no column {name}")))
    };
    let updated = match change {
        TableChange::AddColumns {
            columns,
            if_not_exists,
        } => {
            let mut fields = Vec::with_capacity(columns.len());
            for c in columns {
                let f = c.to_field()?;
                if !f.is_nullable() {
                    return Err(Error::invalid(format!(
                        "new column {} must be nullable: existing rows have no value for it",
                        c.name
                    )));
                }
                if schema.field(f.name()).is_some() {
                    if *if_not_exists {
                        continue;
                    }
                    return Err(Error::invalid(format!(
                        "{t} already has a column {}",
                        f.name()
                    )));
                }
                if fields.iter().any(|g: &StructField| g.name() == f.name()) {
                    return Err(Error::invalid(format!("column {} added twice", f.name())));
                }
                fields.push(f);
            }
            if fields.is_empty() {
                return Ok(table);
            }
            table
                .add_columns()
                .with_fields(fields)
                .with_commit_properties(props)
                .await?
        }
        TableChange::SetProperties(map) => {
            let valid = properties::validate(map)?;
            if valid.is_empty() {
                return Ok(table);
            }
            table
                .set_tbl_properties()
                .with_properties(valid)
                .with_commit_properties(props)
                .await?
        }
        TableChange::DropNotNull { column } => {
            let f = field(column)?;
            if f.is_nullable() {
                return Ok(table);
            }
            table
                .drop_column_not_null()
                .with_column(f.name().clone())
                .with_commit_properties(props)
                .await?
        }
        TableChange::ColumnComment { column, comment } => {
            let f = field(column)?;
            table
                .update_field_metadata()
                .with_field_name(f.name())
                .with_metadata(HashMap::from([(
                    COLUMN_COMMENT_KEY.to_string(),
                    MetadataValue::String(comment.clone().unwrap_or_default()),
                )]))
                .with_commit_properties(props)
                .await?
        }
        TableChange::Description(text) => {
            table
                .update_table_metadata()
                .with_update(TableMetadataUpdate {
                    name: None,
                    description: Some(text.clone().unwrap_or_default()),
                })
                .with_commit_properties(props)
                .await?
        }
        TableChange::SetColumnType { column, data_type } => {
            let f = field(column)?;
            let to = parse_type(data_type)?;
            if f.data_type() == &to {
                return Ok(table);
            }
            if table
                .snapshot()?
                .metadata()
                .partition_columns()
                .contains(f.name())
            {
                return Err(Error::Unsupported(format!(
                    "{} is a partition column of {t}; its type cannot change",
                    f.name()
                )));
            }
            let arrow_to = widening(f.data_type(), &to).ok_or_else(|| {
                Error::Unsupported(format!(
                    "cannot change column {} from {} to {}: only widening is safe (tinyint → smallint → int → bigint, integers or float → double, date → timestamp_ntz, decimal to more digits)",
                    f.name(),
                    crate::storage::types::type_name(f.data_type()),
                    crate::storage::types::type_name(&to),
                ))
            })?;
            rewrite_with_type(table, f.name(), arrow_to, props, state).await?
        }
    };
    catalog.remember(t, &updated).await;
    Ok(updated)
}

/// The Arrow type to cast to when `from → to` loses nothing, else `None`.
fn widening(from: &DataType, to: &DataType) -> Option<ArrowType> {
    use PrimitiveType as P;
    let (DataType::Primitive(from), DataType::Primitive(to)) = (from, to) else {
        return None;
    };
    let rank = |p: &P| match p {
        P::Byte => Some(1),
        P::Short => Some(2),
        P::Integer => Some(3),
        P::Long => Some(4),
        _ => None,
    };
    match (from, to) {
        (a, b) if rank(a).zip(rank(b)).is_some_and(|(a, b)| a < b) => Some(match b {
            P::Short => ArrowType::Int16,
            P::Integer => ArrowType::Int32,
            _ => ArrowType::Int64,
        }),
        (P::Byte | P::Short | P::Integer | P::Float, P::Double) => Some(ArrowType::Float64),
        (P::Date, P::TimestampNtz) => Some(ArrowType::Timestamp(TimeUnit::Microsecond, None)),
        (P::Decimal(a), P::Decimal(b)) => {
            let (pa, sa) = (a.precision(), a.scale());
            let (pb, sb) = (b.precision(), b.scale());
            (sb >= sa && pb - sb >= pa - sa && (pb, sb) != (pa, sa))
                .then_some(ArrowType::Decimal128(pb, sb as i8))
        }
        _ => None,
    }
}

/// Rewrites every row with `column` cast to `to`, replacing the schema, in one commit.
async fn rewrite_with_type(
    table: DeltaTable,
    column: &str,
    to: ArrowType,
    props: deltalake::kernel::transaction::CommitProperties,
    state: &SessionState,
) -> Result<DeltaTable> {
    crate::storage::register_table_store(state.runtime_env(), &table)?;
    let provider = table.table_provider().await?;
    let schema = provider.schema();
    let exprs = schema.fields().iter().map(|f| {
        if f.name() == column {
            cast(col(f.name()), to.clone()).alias(f.name())
        } else {
            col(f.name())
        }
    });
    let plan = LogicalPlanBuilder::scan("rewrite", provider_as_source(provider), None)?
        .project(exprs)?
        .build()?;
    let partitions = table.snapshot()?.metadata().partition_columns().to_vec();
    let mut write = table
        .write(Vec::new())
        .with_input_plan(plan)
        .with_session_state(Arc::new(state.clone()))
        .with_save_mode(SaveMode::Overwrite)
        .with_schema_mode(deltalake::operations::write::SchemaMode::Overwrite)
        .with_commit_properties(props);
    if !partitions.is_empty() {
        write = write.with_partition_columns(partitions);
    }
    Ok(write.await?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_lossless_type_changes_widen() {
        let t = |s: &str| parse_type(s).unwrap();
        assert_eq!(widening(&t("int"), &t("bigint")), Some(ArrowType::Int64));
        assert_eq!(widening(&t("tinyint"), &t("int")), Some(ArrowType::Int32));
        assert_eq!(
            widening(&t("float"), &t("double")),
            Some(ArrowType::Float64)
        );
        assert_eq!(
            widening(&t("decimal(10,2)"), &t("decimal(12,4)")),
            Some(ArrowType::Decimal128(12, 4))
        );
        for (from, to) in [
            ("bigint", "int"),
            ("double", "float"),
            ("bigint", "double"),
            ("string", "bigint"),
            ("decimal(10,2)", "decimal(10,3)"),
            ("timestamp", "date"),
        ] {
            assert_eq!(widening(&t(from), &t(to)), None, "{from} → {to}");
        }
    }
}
