//! SQL text → one classified statement.
//!
//! We parse with sqlparser ourselves (not DataFusion's `DFParser`) so that DataFusion's own
//! DDL (`CREATE EXTERNAL TABLE`, `COPY`, `SET`, URL tables) is never reachable: only the
//! statements in [`Statement`] exist, everything else is rejected here. Time travel
//! (`t VERSION AS OF 3`, `t TIMESTAMP AS OF '…'`) is rewritten into versioned relation names
//! that the secure catalog resolves.

mod ddl;
mod guards;
mod maintenance;
mod merge;
mod scd2;
mod time_travel;

use std::any::TypeId;
use std::collections::BTreeMap;

use datafusion::sql::sqlparser::ast::{
    self, HiveDistributionStyle, ObjectName, ObjectNamePart, ObjectType, TableFactor,
};
use datafusion::sql::sqlparser::dialect::{Dialect, GenericDialect};
use datafusion::sql::sqlparser::parser::Parser;
use datafusion::sql::sqlparser::tokenizer::Tokenizer;

use crate::error::{Error, Result};
use crate::pipelines::maintenance::{PartitionFilter, RestoreTo};
use crate::pipelines::merge::MergeSpec;
use crate::pipelines::scd2::Scd2Spec;
use crate::pipelines::schema::TableChange;
use crate::security::expression::check_operator_runs;
use crate::storage::TableRef;
use crate::storage::types::ColumnSpec;

use ddl::{classify_alter, column_spec, comment_text, refuse_foreign_storage, table_options};
use guards::{limit_expression_depth, number_placeholders};
use maintenance::parse_maintenance;
pub(crate) use maintenance::partition_predicate;
use merge::{assignment_column, classify_merge, merge_star_shorthands};
use scd2::classify_call;
pub(crate) use time_travel::parse_timestamp;
use time_travel::rewrite_time_travel;

/// GenericDialect plus Databricks-style table versioning (`VERSION AS OF`).
#[derive(Debug, Default)]
pub(crate) struct StrataDialect(GenericDialect);

impl Dialect for StrataDialect {
    fn dialect(&self) -> TypeId {
        // Parse everything else exactly as GenericDialect does.
        TypeId::of::<GenericDialect>()
    }
    fn is_identifier_start(&self, ch: char) -> bool {
        self.0.is_identifier_start(ch)
    }
    fn is_identifier_part(&self, ch: char) -> bool {
        self.0.is_identifier_part(ch)
    }
    fn is_delimited_identifier_start(&self, ch: char) -> bool {
        self.0.is_delimited_identifier_start(ch)
    }
    fn supports_table_versioning(&self) -> bool {
        true
    }
    fn supports_filter_during_aggregation(&self) -> bool {
        self.0.supports_filter_during_aggregation()
    }
    fn supports_comment_on(&self) -> bool {
        true
    }
    fn supports_group_by_expr(&self) -> bool {
        self.0.supports_group_by_expr()
    }
}

/// Deepest expression nesting we parse; deeper SQL gets a clear error instead of a stack
/// overflow.
const MAX_RECURSION: usize = 64;

/// A statement Strata runs.
#[derive(Debug)]
pub enum Statement {
    /// `SELECT …` / `WITH …` / `VALUES …`, time travel already rewritten.
    Query(Box<ast::Statement>),
    /// `EXPLAIN [ANALYZE] <query>`.
    Explain {
        analyze: bool,
        statement: Box<ast::Statement>,
    },
    CreateTable {
        table: TableRef,
        if_not_exists: bool,
        columns: Vec<ColumnSpec>,
        partition_by: Vec<String>,
        description: Option<String>,
        properties: BTreeMap<String, String>,
    },
    CreateTableAs {
        table: TableRef,
        if_not_exists: bool,
        partition_by: Vec<String>,
        description: Option<String>,
        properties: BTreeMap<String, String>,
        query: Box<ast::Statement>,
    },
    Insert {
        table: TableRef,
        overwrite: bool,
        columns: Vec<String>,
        source: Box<ast::Statement>,
    },
    DropTable {
        tables: Vec<TableRef>,
        if_exists: bool,
    },
    /// `MERGE INTO target USING source ON … WHEN …`.
    Merge {
        table: TableRef,
        /// `SELECT * FROM <source>`, time travel rewritten.
        source: Box<ast::Statement>,
        spec: MergeSpec,
    },
    /// `UPDATE t SET … [WHERE …]` (expressions as SQL text over the table's columns).
    Update {
        table: TableRef,
        set: Vec<(String, String)>,
        predicate: Option<String>,
    },
    /// `DELETE FROM t [WHERE …]`.
    Delete {
        table: TableRef,
        predicate: Option<String>,
    },
    /// `OPTIMIZE t [WHERE partition predicate] [ZORDER BY (c, …)]`.
    Optimize {
        table: TableRef,
        zorder: Vec<String>,
        partitions: Vec<PartitionFilter>,
    },
    /// `VACUUM t [RETAIN n HOURS] [DRY RUN] [FORCE]`; FORCE removes change files that
    /// deployed models have not consumed yet.
    Vacuum {
        table: TableRef,
        retain_hours: Option<u64>,
        dry_run: bool,
        force: bool,
    },
    /// `RESTORE [TABLE] t TO VERSION AS OF n | TIMESTAMP AS OF '…'`.
    Restore { table: TableRef, to: RestoreTo },
    /// `DESCRIBE HISTORY t [LIMIT n]`.
    History {
        table: TableRef,
        limit: Option<usize>,
    },
    /// `ALTER TABLE …` and `COMMENT ON TABLE|COLUMN …`.
    AlterTable {
        table: TableRef,
        change: TableChange,
    },
    /// `CALL scd2(target => 'layer.t', source => '<query or table>', keys => 'k1, k2', …)`.
    Scd2 {
        table: TableRef,
        source: String,
        spec: Scd2Spec,
    },
}

impl Statement {
    /// Short name for logs, metrics and command results.
    pub fn kind(&self) -> &'static str {
        match self {
            Statement::Query(_) => "SELECT",
            Statement::Explain { .. } => "EXPLAIN",
            Statement::CreateTable { .. } => "CREATE TABLE",
            Statement::CreateTableAs { .. } => "CREATE TABLE AS SELECT",
            Statement::Insert {
                overwrite: false, ..
            } => "INSERT",
            Statement::Insert {
                overwrite: true, ..
            } => "INSERT OVERWRITE",
            Statement::DropTable { .. } => "DROP TABLE",
            Statement::Merge { .. } => "MERGE",
            Statement::Update { .. } => "UPDATE",
            Statement::Delete { .. } => "DELETE",
            Statement::Scd2 { .. } => "SCD2",
            Statement::Optimize { .. } => "OPTIMIZE",
            Statement::Vacuum { .. } => "VACUUM",
            Statement::Restore { .. } => "RESTORE",
            Statement::History { .. } => "DESCRIBE HISTORY",
            Statement::AlterTable {
                change: TableChange::Description(_) | TableChange::ColumnComment { .. },
                ..
            } => "COMMENT",
            Statement::AlterTable { .. } => "ALTER TABLE",
        }
    }
}

/// Parses exactly one statement.
pub(crate) fn parse(sql: &str, default_layer: &str) -> Result<Statement> {
    let dialect = StrataDialect::default();
    let tokens = Tokenizer::new(&dialect, sql)
        .tokenize_with_location()
        .map_err(|e| Error::invalid(format!("SQL parse error: {e}")))?;
    check_operator_runs(tokens.iter().map(|t| &t.token))?;
    if let Some(maintenance) = parse_maintenance(&tokens, default_layer)? {
        return Ok(maintenance);
    }
    let mut statements = Parser::new(&dialect)
        .with_recursion_limit(MAX_RECURSION)
        .with_tokens_with_locations(merge_star_shorthands(tokens))
        .parse_statements()
        .map_err(|e| Error::invalid(format!("SQL parse error: {e}")))?;
    let stmt = match statements.len() {
        0 => return Err(Error::invalid("empty SQL")),
        1 => statements.remove(0),
        n => return Err(Error::invalid(format!("expected one statement, got {n}"))),
    };
    classify(stmt, default_layer)
}

fn classify(mut stmt: ast::Statement, default_layer: &str) -> Result<Statement> {
    limit_expression_depth(&mut stmt)?;
    number_placeholders(&mut stmt)?;
    match &mut stmt {
        ast::Statement::Query(_) => {
            rewrite_time_travel(&mut stmt)?;
            Ok(Statement::Query(Box::new(stmt)))
        }
        ast::Statement::Explain {
            analyze, statement, ..
        } => {
            if !matches!(**statement, ast::Statement::Query(_)) {
                return Err(Error::Unsupported("EXPLAIN supports queries only".into()));
            }
            let analyze = *analyze;
            rewrite_time_travel(&mut stmt)?;
            Ok(Statement::Explain {
                analyze,
                statement: Box::new(stmt),
            })
        }
        ast::Statement::CreateTable(ct) => {
            refuse_foreign_storage(ct)?;
            let table = table_ref(&ct.name, default_layer)?;
            let partition_by = match &ct.hive_distribution {
                HiveDistributionStyle::PARTITIONED { columns } => columns
                    .iter()
                    .map(|c| c.name.value.to_ascii_lowercase())
                    .collect(),
                HiveDistributionStyle::NONE => Vec::new(),
                _ => {
                    return Err(Error::Unsupported(
                        "only PARTITIONED BY (col, …) is supported".into(),
                    ));
                }
            };
            let options = match &ct.table_options {
                ast::CreateTableOptions::With(o)
                | ast::CreateTableOptions::Options(o)
                | ast::CreateTableOptions::Plain(o)
                | ast::CreateTableOptions::TableProperties(o) => o.as_slice(),
                ast::CreateTableOptions::None => &[],
            };
            let (option_comment, properties) = table_options(options)?;
            let description = ct.comment.as_ref().map(comment_text).or(option_comment);
            if ct.or_replace {
                return Err(Error::Unsupported(
                    "CREATE OR REPLACE TABLE is not supported; use INSERT OVERWRITE".into(),
                ));
            }
            match ct.query.take() {
                Some(query) => {
                    if !ct.columns.is_empty() {
                        return Err(Error::Unsupported(
                            "CREATE TABLE AS SELECT takes its columns from the query; drop the column list".into(),
                        ));
                    }
                    let mut q = ast::Statement::Query(query);
                    rewrite_time_travel(&mut q)?;
                    Ok(Statement::CreateTableAs {
                        table,
                        if_not_exists: ct.if_not_exists,
                        partition_by,
                        description,
                        properties,
                        query: Box::new(q),
                    })
                }
                None => {
                    let columns = ct
                        .columns
                        .iter()
                        .map(column_spec)
                        .collect::<Result<Vec<_>>>()?;
                    Ok(Statement::CreateTable {
                        table,
                        if_not_exists: ct.if_not_exists,
                        columns,
                        partition_by,
                        description,
                        properties,
                    })
                }
            }
        }
        ast::Statement::Insert(insert) => {
            let ast::TableObject::TableName(name) = &insert.table else {
                return Err(Error::Unsupported(
                    "INSERT INTO TABLE FUNCTION is not supported".into(),
                ));
            };
            let table = table_ref(name, default_layer)?;
            let Some(source) = insert.source.take() else {
                return Err(Error::Unsupported("INSERT needs VALUES or a query".into()));
            };
            if insert.on.is_some() || insert.returning.is_some() || !insert.assignments.is_empty() {
                return Err(Error::Unsupported(
                    "INSERT … ON CONFLICT / RETURNING / SET is not supported; use MERGE".into(),
                ));
            }
            let columns = insert
                .columns
                .iter()
                .map(|c| match c.0.last() {
                    Some(ObjectNamePart::Identifier(i)) => Ok(i.value.to_ascii_lowercase()),
                    _ => Err(Error::invalid(format!("invalid column {c}"))),
                })
                .collect::<Result<Vec<_>>>()?;
            let mut q = ast::Statement::Query(source);
            rewrite_time_travel(&mut q)?;
            Ok(Statement::Insert {
                table,
                overwrite: insert.overwrite,
                columns,
                source: Box::new(q),
            })
        }
        ast::Statement::Drop {
            object_type: ObjectType::Table,
            if_exists,
            names,
            ..
        } => {
            let tables = names
                .iter()
                .map(|n| table_ref(n, default_layer))
                .collect::<Result<Vec<_>>>()?;
            Ok(Statement::DropTable {
                tables,
                if_exists: *if_exists,
            })
        }
        ast::Statement::AlterTable(alter) => classify_alter(alter, default_layer),
        ast::Statement::Comment {
            object_type,
            object_name,
            comment,
            ..
        } => {
            let comment = comment.clone();
            match object_type {
                ast::CommentObject::Table => Ok(Statement::AlterTable {
                    table: table_ref(object_name, default_layer)?,
                    change: TableChange::Description(comment),
                }),
                ast::CommentObject::Column => {
                    let mut parts = object_name.0.clone();
                    let column = match parts.pop() {
                        Some(ObjectNamePart::Identifier(c)) if !parts.is_empty() => c.value,
                        _ => {
                            return Err(Error::invalid(format!(
                                "COMMENT ON COLUMN needs table.column, not {object_name}"
                            )));
                        }
                    };
                    Ok(Statement::AlterTable {
                        table: table_ref(&ObjectName(parts), default_layer)?,
                        change: TableChange::ColumnComment { column, comment },
                    })
                }
                other => Err(Error::Unsupported(format!(
                    "COMMENT ON {other} is not supported; comment on a TABLE or COLUMN"
                ))),
            }
        }
        ast::Statement::Merge(merge) => classify_merge(merge, default_layer),
        ast::Statement::Call(call) => classify_call(call, default_layer),
        ast::Statement::Update(update) => {
            let table = match &update.table.relation {
                TableFactor::Table {
                    name, alias: None, ..
                } if update.table.joins.is_empty() => table_ref(name, default_layer)?,
                _ => {
                    return Err(Error::Unsupported(
                        "UPDATE takes one table without alias or joins; use MERGE to update from another table".into(),
                    ));
                }
            };
            if update.from.is_some() || update.returning.is_some() {
                return Err(Error::Unsupported(
                    "UPDATE … FROM / RETURNING is not supported; use MERGE".into(),
                ));
            }
            let set = update
                .assignments
                .iter()
                .map(|a| Ok((assignment_column(&a.target)?, a.value.to_string())))
                .collect::<Result<Vec<_>>>()?;
            Ok(Statement::Update {
                table,
                set,
                predicate: update.selection.as_ref().map(ToString::to_string),
            })
        }
        ast::Statement::Delete(delete) => {
            let tables = match &delete.from {
                ast::FromTable::WithFromKeyword(t) | ast::FromTable::WithoutKeyword(t) => t,
            };
            let table = match tables.as_slice() {
                [
                    ast::TableWithJoins {
                        relation:
                            TableFactor::Table {
                                name, alias: None, ..
                            },
                        joins,
                    },
                ] if joins.is_empty() && delete.tables.is_empty() && delete.using.is_none() => {
                    table_ref(name, default_layer)?
                }
                _ => {
                    return Err(Error::Unsupported(
                        "DELETE takes one table without alias, joins or USING; use MERGE … WHEN MATCHED THEN DELETE".into(),
                    ));
                }
            };
            if delete.returning.is_some() || delete.limit.is_some() || !delete.order_by.is_empty() {
                return Err(Error::Unsupported(
                    "DELETE … RETURNING / ORDER BY / LIMIT is not supported".into(),
                ));
            }
            Ok(Statement::Delete {
                table,
                predicate: delete.selection.as_ref().map(ToString::to_string),
            })
        }
        other => Err(Error::Unsupported(format!(
            "statement not supported: {}. Strata runs SELECT, EXPLAIN, CREATE TABLE [AS SELECT], INSERT INTO/OVERWRITE, UPDATE, DELETE, MERGE and DROP TABLE",
            first_words(&other.to_string())
        ))),
    }
}

fn first_words(sql: &str) -> String {
    sql.split_whitespace().take(3).collect::<Vec<_>>().join(" ")
}

/// `name`, `layer.name` or `strata.layer.name`.
pub(crate) fn table_ref(name: &ObjectName, default_layer: &str) -> Result<TableRef> {
    let parts = name
        .0
        .iter()
        .map(|p| match p {
            ObjectNamePart::Identifier(i) => Ok(i.value.clone()),
            ObjectNamePart::Function(_) => {
                Err(Error::invalid(format!("invalid table name {name}")))
            }
        })
        .collect::<Result<Vec<_>>>()?;
    match parts.as_slice() {
        [t] => TableRef::new(default_layer, t),
        _ => TableRef::parse(&parts.join(".")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn datafusion_ddl_and_other_statements_are_rejected() {
        for sql in [
            "CREATE EXTERNAL TABLE t STORED AS CSV LOCATION '/etc/passwd'",
            "CREATE EXTERNAL TABLE gold.t (a INT) STORED AS PARQUET LOCATION '/tmp/x'",
            "CREATE TABLE gold.t (a INT) LOCATION '/tmp/x'",
            "CREATE TABLE gold.t (a INT) STORED AS PARQUET",
            "CREATE TEMPORARY TABLE gold.t (a INT)",
            "CREATE TABLE gold.t LIKE gold.u",
            "COPY (SELECT 1) TO '/tmp/x'",
            "SET datafusion.execution.batch_size = 1",
            "CREATE VIEW gold.v AS SELECT 1",
            "SELECT 1; SELECT 2",
        ] {
            assert!(parse(sql, "gold").is_err(), "{sql} should be rejected");
        }
    }
}
