//! CREATE TABLE clauses and ALTER TABLE: column specs, options, schema changes.

use std::collections::BTreeMap;

use datafusion::sql::sqlparser::ast::{self, Expr, Value};

use super::{Statement, table_ref};
use crate::error::{Error, Result};
use crate::pipelines::schema::TableChange;
use crate::storage::types::ColumnSpec;

/// A table's storage is its name (`{warehouse}/{layer}/{name}`): clauses that would put it,
/// or read it, elsewhere are refused rather than ignored.
pub(super) fn refuse_foreign_storage(ct: &ast::CreateTable) -> Result<()> {
    let hive_location = ct
        .hive_formats
        .as_ref()
        .is_some_and(|h| h.location.is_some() || h.storage.is_some());
    let clause = if ct.external {
        Some("CREATE EXTERNAL TABLE")
    } else if ct.location.is_some() || hive_location {
        Some("LOCATION / STORED AS")
    } else if ct.file_format.is_some() {
        Some("STORED AS")
    } else if ct.like.is_some() || ct.clone.is_some() {
        Some("LIKE / CLONE")
    } else if ct.temporary || ct.global.is_some() || ct.transient || ct.volatile {
        Some("TEMPORARY tables")
    } else {
        None
    };
    match clause {
        Some(c) => Err(Error::Unsupported(format!(
            "{c} is not supported: a table lives in the warehouse under its name; use CREATE TABLE layer.name (…) or CREATE TABLE … AS SELECT"
        ))),
        None => Ok(()),
    }
}

/// `ALTER TABLE`: one change per statement (several `ADD COLUMN`s are one change).
pub(super) fn classify_alter(alter: &ast::AlterTable, default_layer: &str) -> Result<Statement> {
    use ast::{AlterColumnOperation as Col, AlterTableOperation as Op};
    let table = table_ref(&alter.name, default_layer)?;
    let rewrite_hint = "delta-rs cannot yet write tables with Delta column mapping, which this needs; \
        create a new table instead (CREATE TABLE … AS SELECT …) and drop the old one";
    let adds: Vec<_> = alter
        .operations
        .iter()
        .filter_map(|op| match op {
            Op::AddColumn {
                if_not_exists,
                column_def,
                column_position,
                ..
            } => Some((*if_not_exists, column_def, column_position)),
            _ => None,
        })
        .collect();
    if !adds.is_empty() {
        if adds.len() != alter.operations.len() {
            return Err(Error::Unsupported(
                "ALTER TABLE makes one change at a time (several ADD COLUMN are fine)".into(),
            ));
        }
        if adds.iter().any(|(_, _, pos)| pos.is_some()) {
            return Err(Error::Unsupported(
                "ADD COLUMN … FIRST/AFTER is not supported: new columns go last".into(),
            ));
        }
        return Ok(Statement::AlterTable {
            table,
            change: TableChange::AddColumns {
                columns: adds
                    .iter()
                    .map(|(_, c, _)| column_spec(c))
                    .collect::<Result<_>>()?,
                if_not_exists: adds.iter().all(|(ine, _, _)| *ine),
            },
        });
    }
    let [op] = alter.operations.as_slice() else {
        return Err(Error::Unsupported(
            "ALTER TABLE makes one change at a time (several ADD COLUMN are fine)".into(),
        ));
    };
    let change = match op {
        Op::SetTblProperties { table_properties } => {
            let (comment, properties) = table_options(table_properties)?;
            if comment.is_some() {
                return Err(Error::invalid(
                    "set a table comment with COMMENT ON TABLE t IS '…'",
                ));
            }
            TableChange::SetProperties(properties)
        }
        Op::AlterColumn { column_name, op } => {
            let column = column_name.value.clone();
            match op {
                Col::SetDataType {
                    data_type,
                    using: None,
                    ..
                } => TableChange::SetColumnType {
                    column,
                    data_type: data_type.to_string(),
                },
                Col::DropNotNull => TableChange::DropNotNull { column },
                Col::SetNotNull => {
                    return Err(Error::Unsupported(
                        "SET NOT NULL is not supported: existing rows are not re-checked; create the table with NOT NULL instead".into(),
                    ));
                }
                other => {
                    return Err(Error::Unsupported(format!(
                        "ALTER COLUMN … {other} is not supported"
                    )));
                }
            }
        }
        Op::RenameColumn { .. } => {
            return Err(Error::Unsupported(format!(
                "RENAME COLUMN is not supported: {rewrite_hint}"
            )));
        }
        Op::DropColumn { .. } => {
            return Err(Error::Unsupported(format!(
                "DROP COLUMN is not supported: {rewrite_hint}"
            )));
        }
        Op::RenameTable { .. } => {
            return Err(Error::Unsupported(
                "renaming a table is not supported: a table's location is its name; CREATE TABLE new AS SELECT * FROM old, then DROP TABLE old".into(),
            ));
        }
        other => {
            return Err(Error::Unsupported(format!(
                "ALTER TABLE … {other} is not supported"
            )));
        }
    };
    Ok(Statement::AlterTable { table, change })
}

pub(super) fn column_spec(c: &ast::ColumnDef) -> Result<ColumnSpec> {
    let mut nullable = true;
    let mut description = None;
    for opt in &c.options {
        match &opt.option {
            ast::ColumnOption::NotNull => nullable = false,
            ast::ColumnOption::Null => nullable = true,
            ast::ColumnOption::Comment(text) => description = Some(text.clone()),
            other => {
                return Err(Error::Unsupported(format!(
                    "column option {other} is not supported"
                )));
            }
        }
    }
    Ok(ColumnSpec {
        name: c.name.value.clone(),
        data_type: c.data_type.to_string(),
        nullable,
        description,
    })
}

/// `COMMENT '…'` and `'key' = 'value'` table options / `TBLPROPERTIES`.
pub(super) fn table_options(
    options: &[ast::SqlOption],
) -> Result<(Option<String>, BTreeMap<String, String>)> {
    let mut comment = None;
    let mut properties = BTreeMap::new();
    for o in options {
        match o {
            ast::SqlOption::Comment(c) => comment = Some(comment_text(c)),
            ast::SqlOption::KeyValue { key, value } => {
                let value = match value {
                    Expr::Value(v) => match &v.value {
                        Value::SingleQuotedString(s) | Value::DoubleQuotedString(s) => s.clone(),
                        Value::Number(n, _) => n.clone(),
                        Value::Boolean(b) => b.to_string(),
                        other => other.to_string(),
                    },
                    Expr::Identifier(i) => i.value.clone(),
                    other => other.to_string(),
                };
                properties.insert(key.value.clone(), value);
            }
            other => {
                return Err(Error::Unsupported(format!(
                    "table option {other} is not supported"
                )));
            }
        }
    }
    Ok((comment, properties))
}

pub(super) fn comment_text(c: &ast::CommentDef) -> String {
    match c {
        ast::CommentDef::WithEq(s) | ast::CommentDef::WithoutEq(s) => s.clone(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::sql::{Statement, parse};

    #[test]
    fn schema_changes_are_classified() {
        let change = |sql: &str| match parse(sql, "gold") {
            Ok(Statement::AlterTable { table, change }) => (table.to_string(), change),
            other => panic!("{sql}: {other:?}"),
        };
        let (t, c) = change(
            "ALTER TABLE silver.t ADD COLUMN a INT, ADD COLUMN IF NOT EXISTS b STRING COMMENT 'x'",
        );
        assert_eq!(t, "silver.t");
        let TableChange::AddColumns {
            columns,
            if_not_exists,
        } = c
        else {
            panic!("{c:?}")
        };
        assert_eq!(columns.len(), 2);
        assert_eq!(columns[1].description.as_deref(), Some("x"));
        assert!(!if_not_exists);
        assert_eq!(
            change("ALTER TABLE t ALTER COLUMN q TYPE BIGINT").1,
            TableChange::SetColumnType {
                column: "q".into(),
                data_type: "BIGINT".into()
            }
        );
        assert_eq!(
            change("ALTER TABLE t SET TBLPROPERTIES ('delta.enableChangeDataFeed' = 'true')").1,
            TableChange::SetProperties(
                [("delta.enableChangeDataFeed".to_string(), "true".to_string())].into()
            )
        );
        assert_eq!(
            change("COMMENT ON COLUMN gold.t.c IS 'hi'"),
            (
                "gold.t".to_string(),
                TableChange::ColumnComment {
                    column: "c".into(),
                    comment: Some("hi".into())
                }
            )
        );
        assert_eq!(
            change("COMMENT ON TABLE t IS NULL").1,
            TableChange::Description(None)
        );
        for bad in [
            "ALTER TABLE t RENAME COLUMN a TO b",
            "ALTER TABLE t DROP COLUMN a",
            "ALTER TABLE t ADD COLUMN a INT, DROP COLUMN b",
            "ALTER TABLE t RENAME TO u",
        ] {
            assert!(parse(bad, "gold").is_err(), "{bad}");
        }
    }

    #[test]
    fn ddl_is_classified() {
        let s = parse(
            "CREATE TABLE IF NOT EXISTS silver.t (id BIGINT NOT NULL COMMENT 'key', r STRING) PARTITIONED BY (r) COMMENT 'demo'",
            "gold",
        )
        .unwrap();
        let Statement::CreateTable {
            table,
            if_not_exists,
            columns,
            partition_by,
            description,
            properties,
        } = s
        else {
            panic!("{s:?}")
        };
        assert!(properties.is_empty());
        assert_eq!(table.to_string(), "silver.t");
        assert!(if_not_exists);
        assert!(!columns[0].nullable);
        assert_eq!(columns[0].description.as_deref(), Some("key"));
        assert_eq!(partition_by, vec!["r"]);
        assert_eq!(description.as_deref(), Some("demo"));
        assert!(matches!(
            parse("INSERT INTO t SELECT 1", "gold").unwrap(),
            Statement::Insert { .. }
        ));
        assert!(matches!(
            parse("DROP TABLE IF EXISTS gold.a, b", "gold").unwrap(),
            Statement::DropTable { .. }
        ));
    }
}
