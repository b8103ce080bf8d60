//! SQL text → one classified statement.
//!
//! We parse with sqlparser ourselves (not DataFusion's `DFParser`) so that DataFusion's own
//! DDL (`CREATE EXTERNAL TABLE`, `COPY`, `SET`, URL tables) is never reachable: only the
//! statements in [`Statement`] exist, everything else is rejected here. Time travel
//! (`t VERSION AS OF 3`, `t TIMESTAMP AS OF '…'`) is rewritten into versioned relation names
//! that the secure catalog resolves.

use std::any::TypeId;
use std::ops::ControlFlow;

use chrono::{DateTime, NaiveDate, NaiveDateTime, Utc};
use datafusion::sql::sqlparser::ast::{
    self, Expr, HiveDistributionStyle, ObjectName, ObjectNamePart, ObjectType, TableFactor,
    TableVersion, Value, VisitMut, VisitorMut,
};
use datafusion::sql::sqlparser::dialect::{Dialect, GenericDialect};
use datafusion::sql::sqlparser::parser::Parser;

use crate::error::{Error, Result};
use crate::security::policy::catalog::VersionSpec;
use crate::storage::TableRef;
use crate::storage::types::ColumnSpec;

/// GenericDialect plus Databricks-style table versioning (`VERSION AS OF`).
#[derive(Debug, Default)]
pub struct StrataDialect(GenericDialect);

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
    },
    CreateTableAs {
        table: TableRef,
        if_not_exists: bool,
        partition_by: Vec<String>,
        description: Option<String>,
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
        }
    }
}

/// Parses exactly one statement.
pub fn parse(sql: &str, default_layer: &str) -> Result<Statement> {
    let dialect = StrataDialect::default();
    let mut statements = Parser::new(&dialect)
        .with_recursion_limit(MAX_RECURSION)
        .try_with_sql(sql)
        .and_then(|mut p| p.parse_statements())
        .map_err(|e| Error::invalid(format!("SQL parse error: {e}")))?;
    let stmt = match statements.len() {
        0 => return Err(Error::invalid("empty SQL")),
        1 => statements.remove(0),
        n => return Err(Error::invalid(format!("expected one statement, got {n}"))),
    };
    classify(stmt, default_layer)
}

fn classify(mut stmt: ast::Statement, default_layer: &str) -> Result<Statement> {
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
            let description = ct.comment.as_ref().map(comment_text).or_else(|| {
                let options = match &ct.table_options {
                    ast::CreateTableOptions::With(o)
                    | ast::CreateTableOptions::Options(o)
                    | ast::CreateTableOptions::Plain(o)
                    | ast::CreateTableOptions::TableProperties(o) => o.as_slice(),
                    ast::CreateTableOptions::None => &[],
                };
                options.iter().find_map(|o| match o {
                    ast::SqlOption::Comment(c) => Some(comment_text(c)),
                    _ => None,
                })
            });
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
                        query: Box::new(q),
                    })
                }
                None => {
                    let columns = ct
                        .columns
                        .iter()
                        .map(|c| {
                            let mut nullable = true;
                            let mut description = None;
                            for opt in &c.options {
                                match &opt.option {
                                    ast::ColumnOption::NotNull => nullable = false,
                                    ast::ColumnOption::Null => nullable = true,
                                    ast::ColumnOption::Comment(text) => {
                                        description = Some(text.clone())
                                    }
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
                        })
                        .collect::<Result<Vec<_>>>()?;
                    Ok(Statement::CreateTable {
                        table,
                        if_not_exists: ct.if_not_exists,
                        columns,
                        partition_by,
                        description,
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
        other => Err(Error::Unsupported(format!(
            "statement not supported: {}. Strata runs SELECT, EXPLAIN, CREATE TABLE [AS SELECT], INSERT INTO/OVERWRITE and DROP TABLE",
            first_words(&other.to_string())
        ))),
    }
}

fn first_words(sql: &str) -> String {
    sql.split_whitespace().take(3).collect::<Vec<_>>().join(" ")
}

fn comment_text(c: &ast::CommentDef) -> String {
    match c {
        ast::CommentDef::WithEq(s) | ast::CommentDef::WithoutEq(s) => s.clone(),
    }
}

/// `name`, `layer.name` or `strata.layer.name`.
pub fn table_ref(name: &ObjectName, default_layer: &str) -> Result<TableRef> {
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

struct TimeTravel {
    error: Option<Error>,
}

impl VisitorMut for TimeTravel {
    type Break = ();

    fn pre_visit_table_factor(&mut self, tf: &mut TableFactor) -> ControlFlow<()> {
        let TableFactor::Table {
            name,
            alias,
            version,
            ..
        } = tf
        else {
            return ControlFlow::Continue(());
        };
        let Some(v) = version.take() else {
            return ControlFlow::Continue(());
        };
        let spec = match version_spec(&v) {
            Ok(s) => s,
            Err(e) => {
                self.error = Some(e);
                return ControlFlow::Break(());
            }
        };
        let Some(ObjectNamePart::Identifier(last)) = name.0.last_mut() else {
            self.error = Some(Error::invalid(format!("invalid table name {name}")));
            return ControlFlow::Break(());
        };
        let base = last.value.clone();
        if alias.is_none() {
            // Keep `orders.col` references working after the rename.
            *alias = Some(ast::TableAlias {
                explicit: true,
                name: last.clone(),
                columns: vec![],
                at: None,
            });
        }
        *last = ast::Ident::with_quote('"', spec.relation_name(&base.to_ascii_lowercase()));
        ControlFlow::Continue(())
    }
}

fn version_spec(v: &TableVersion) -> Result<VersionSpec> {
    match v {
        TableVersion::VersionAsOf(Expr::Value(val)) => match &val.value {
            Value::Number(n, _) => n.parse::<u64>().map(VersionSpec::Version).map_err(|_| {
                Error::invalid(format!(
                    "VERSION AS OF needs a non-negative integer, not {n}"
                ))
            }),
            other => Err(Error::invalid(format!(
                "VERSION AS OF needs an integer, not {other}"
            ))),
        },
        TableVersion::TimestampAsOf(expr) => {
            let text = match expr {
                Expr::Value(val) => match &val.value {
                    Value::SingleQuotedString(s) | Value::DoubleQuotedString(s) => s.clone(),
                    other => return Err(timestamp_error(&other.to_string())),
                },
                Expr::TypedString(ts) => match &ts.value.value {
                    Value::SingleQuotedString(s) | Value::DoubleQuotedString(s) => s.clone(),
                    other => return Err(timestamp_error(&other.to_string())),
                },
                other => return Err(timestamp_error(&other.to_string())),
            };
            parse_timestamp(&text).map(|ts| VersionSpec::Timestamp(ts.timestamp_millis()))
        }
        other => Err(Error::Unsupported(format!(
            "time travel syntax {other} is not supported; use VERSION AS OF n or TIMESTAMP AS OF '…'"
        ))),
    }
}

fn timestamp_error(got: &str) -> Error {
    Error::invalid(format!(
        "TIMESTAMP AS OF needs a timestamp literal such as '2024-05-01T12:00:00Z', not {got}"
    ))
}

/// RFC 3339, `YYYY-MM-DD HH:MM:SS[.f]` (UTC) or `YYYY-MM-DD` (UTC midnight).
pub fn parse_timestamp(s: &str) -> Result<DateTime<Utc>> {
    let s = s.trim();
    if let Ok(t) = DateTime::parse_from_rfc3339(s) {
        return Ok(t.with_timezone(&Utc));
    }
    for fmt in ["%Y-%m-%d %H:%M:%S%.f", "%Y-%m-%dT%H:%M:%S%.f"] {
        if let Ok(t) = NaiveDateTime::parse_from_str(s, fmt) {
            return Ok(t.and_utc());
        }
    }
    if let Ok(d) = NaiveDate::parse_from_str(s, "%Y-%m-%d")
        && let Some(t) = d.and_hms_opt(0, 0, 0)
    {
        return Ok(t.and_utc());
    }
    Err(timestamp_error(&format!("'{s}'")))
}

/// Numbers `?` placeholders (ADBC/DBAPI "qmark" style) as `$1…$n` in textual order.
/// Mixing `?` with `$n` is ambiguous and rejected.
struct QmarkPlaceholders {
    next: usize,
    numbered: bool,
}

impl VisitorMut for QmarkPlaceholders {
    type Break = ();

    fn pre_visit_expr(&mut self, expr: &mut Expr) -> ControlFlow<()> {
        if let Expr::Value(v) = expr
            && let Value::Placeholder(p) = &mut v.value
        {
            if p == "?" {
                self.next += 1;
                *p = format!("${}", self.next);
            } else {
                self.numbered = true;
            }
        }
        ControlFlow::Continue(())
    }
}

fn number_placeholders(stmt: &mut ast::Statement) -> Result<()> {
    let mut v = QmarkPlaceholders {
        next: 0,
        numbered: false,
    };
    let _ = stmt.visit(&mut v);
    if v.next > 0 && v.numbered {
        return Err(Error::invalid(
            "use either ? or $1, $2, … placeholders, not both",
        ));
    }
    Ok(())
}

fn rewrite_time_travel(stmt: &mut ast::Statement) -> Result<()> {
    let mut v = TimeTravel { error: None };
    let _ = stmt.visit(&mut v);
    match v.error {
        Some(e) => Err(e),
        None => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn time_travel_is_rewritten_to_versioned_names() {
        let Statement::Query(q) =
            parse("SELECT o.id FROM gold.orders VERSION AS OF 3 o JOIN gold.x TIMESTAMP AS OF '2024-01-02' ON true", "gold").unwrap()
        else {
            panic!("not a query")
        };
        let sql = q.to_string();
        assert!(sql.contains("gold.\"orders@v3\" o"), "{sql}");
        assert!(sql.contains("gold.\"x@t1704153600000\" AS x"), "{sql}");
    }

    #[test]
    fn datafusion_ddl_and_other_statements_are_rejected() {
        for sql in [
            "CREATE EXTERNAL TABLE t STORED AS CSV LOCATION '/etc/passwd'",
            "COPY (SELECT 1) TO '/tmp/x'",
            "SET datafusion.execution.batch_size = 1",
            "CREATE VIEW gold.v AS SELECT 1",
            "SELECT 1; SELECT 2",
        ] {
            assert!(parse(sql, "gold").is_err(), "{sql} should be rejected");
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
        } = s
        else {
            panic!("{s:?}")
        };
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

    #[test]
    fn qmark_placeholders_are_numbered_in_order() {
        let Statement::Query(q) =
            parse("SELECT a FROM t WHERE a = ? AND b IN (?, ?)", "gold").unwrap()
        else {
            panic!()
        };
        assert!(q.to_string().contains("a = $1 AND b IN ($2, $3)"), "{q}");
        assert!(parse("SELECT a FROM t WHERE a = ? AND b = $1", "gold").is_err());
        let Statement::Insert { source, .. } =
            parse("INSERT INTO t VALUES (?, ?)", "gold").unwrap()
        else {
            panic!()
        };
        assert!(source.to_string().contains("($1, $2)"), "{source}");
    }

    #[test]
    fn deep_nesting_is_an_error_not_a_crash() {
        let sql = format!("SELECT {}1{}", "(".repeat(5000), ")".repeat(5000));
        assert!(parse(&sql, "gold").is_err());
    }
}
