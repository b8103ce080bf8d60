//! SQL text → one classified statement.
//!
//! We parse with sqlparser ourselves (not DataFusion's `DFParser`) so that DataFusion's own
//! DDL (`CREATE EXTERNAL TABLE`, `COPY`, `SET`, URL tables) is never reachable: only the
//! statements in [`Statement`] exist, everything else is rejected here. Time travel
//! (`t VERSION AS OF 3`, `t TIMESTAMP AS OF '…'`) is rewritten into versioned relation names
//! that the secure catalog resolves.

use std::any::TypeId;
use std::collections::BTreeMap;
use std::ops::ControlFlow;

use chrono::{DateTime, NaiveDate, NaiveDateTime, Utc};
use datafusion::sql::sqlparser::ast::{
    self, Expr, HiveDistributionStyle, ObjectName, ObjectNamePart, ObjectType, TableFactor,
    TableVersion, Value, Visit, VisitMut, Visitor, VisitorMut,
};
use datafusion::sql::sqlparser::dialect::{Dialect, GenericDialect};
use datafusion::sql::sqlparser::keywords::Keyword;
use datafusion::sql::sqlparser::parser::Parser;
use datafusion::sql::sqlparser::tokenizer::{Token, TokenWithSpan, Tokenizer, Word};

use crate::error::{Error, Result};
use crate::pipelines::maintenance::{PartitionFilter, RestoreTo};
use crate::pipelines::merge::{Action, Clause, MergeSpec, When};
use crate::pipelines::scd2::Scd2Spec;
use crate::pipelines::schema::TableChange;
use crate::security::expression::{check_expression_text, check_operator_runs};
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
    /// `VACUUM t [RETAIN n HOURS] [DRY RUN]`.
    Vacuum {
        table: TableRef,
        retain_hours: Option<u64>,
        dry_run: bool,
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

/// A table's storage is its name (`{warehouse}/{layer}/{name}`): clauses that would put it,
/// or read it, elsewhere are refused rather than ignored.
fn refuse_foreign_storage(ct: &ast::CreateTable) -> Result<()> {
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

/// Parses exactly one statement.
pub fn parse(sql: &str, default_layer: &str) -> Result<Statement> {
    let dialect = StrataDialect::default();
    if let Some(maintenance) = parse_maintenance(sql, default_layer)? {
        return Ok(maintenance);
    }
    let tokens = Tokenizer::new(&dialect, sql)
        .tokenize_with_location()
        .map_err(|e| Error::invalid(format!("SQL parse error: {e}")))?;
    check_operator_runs(tokens.iter().map(|t| &t.token))?;
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

/// `OPTIMIZE … WHERE` / REST `where`: a conjunction of comparisons of partition columns with
/// literals (`region = 'eu' AND day >= '2024-05-01'`, `region IN ('eu', 'us')`).
pub fn partition_predicate(text: &str) -> Result<Vec<PartitionFilter>> {
    check_expression_text(text)?;
    let dialect = StrataDialect::default();
    let expr = Parser::new(&dialect)
        .with_recursion_limit(MAX_RECURSION)
        .try_with_sql(text)
        .and_then(|mut p| p.parse_expr())
        .map_err(|e| Error::invalid(format!("OPTIMIZE … WHERE: {e}")))?;
    let mut out = Vec::new();
    collect_partition_filters(&expr, &mut out)?;
    Ok(out)
}

fn collect_partition_filters(expr: &Expr, out: &mut Vec<PartitionFilter>) -> Result<()> {
    use ast::BinaryOperator as B;
    let unsupported = || {
        Error::Unsupported(format!(
            "OPTIMIZE … WHERE takes partition-column comparisons with literals joined by AND (col = 'v', col IN ('a', 'b'), col >= 'v'), not {expr}"
        ))
    };
    let literal = |e: &Expr| match e {
        Expr::Value(v) => match &v.value {
            Value::SingleQuotedString(s) | Value::DoubleQuotedString(s) => Some(s.clone()),
            Value::Number(n, _) => Some(n.clone()),
            Value::Boolean(b) => Some(b.to_string()),
            _ => None,
        },
        _ => None,
    };
    let column = |e: &Expr| match e {
        Expr::Identifier(i) => Some(i.value.to_ascii_lowercase()),
        _ => None,
    };
    match expr {
        Expr::Nested(e) => collect_partition_filters(e, out),
        Expr::BinaryOp {
            left,
            op: B::And,
            right,
        } => {
            collect_partition_filters(left, out)?;
            collect_partition_filters(right, out)
        }
        Expr::BinaryOp { left, op, right } => {
            let op = match op {
                B::Eq => "=",
                B::NotEq => "!=",
                B::Lt => "<",
                B::LtEq => "<=",
                B::Gt => ">",
                B::GtEq => ">=",
                _ => return Err(unsupported()),
            };
            let (Some(c), Some(v)) = (column(left), literal(right)) else {
                return Err(unsupported());
            };
            out.push(PartitionFilter {
                column: c,
                op: op.into(),
                values: vec![v],
            });
            Ok(())
        }
        Expr::InList {
            expr,
            list,
            negated,
        } => {
            let c = column(expr).ok_or_else(unsupported)?;
            let values = list
                .iter()
                .map(|e| literal(e).ok_or_else(unsupported))
                .collect::<Result<Vec<_>>>()?;
            out.push(PartitionFilter {
                column: c,
                op: if *negated { "not in" } else { "in" }.into(),
                values,
            });
            Ok(())
        }
        _ => Err(unsupported()),
    }
}

/// OPTIMIZE, VACUUM and RESTORE (Delta/Databricks syntax, which sqlparser does not know),
/// parsed from tokens. `None` when the statement is something else.
fn parse_maintenance(sql: &str, default_layer: &str) -> Result<Option<Statement>> {
    let dialect = StrataDialect::default();
    let tokens: Vec<Token> = Tokenizer::new(&dialect, sql)
        .tokenize()
        .map_err(|e| Error::invalid(format!("SQL parse error: {e}")))?
        .into_iter()
        .filter(|t| !matches!(t, Token::Whitespace(_)) && *t != Token::SemiColon)
        .collect();
    let word = |i: usize| match tokens.get(i) {
        Some(Token::Word(w)) if w.quote_style.is_none() => Some(w.value.to_ascii_uppercase()),
        _ => None,
    };
    let Some(first) = word(0) else {
        return Ok(None);
    };
    let history = first == "DESCRIBE" && word(1).as_deref() == Some("HISTORY");
    if !history && !matches!(first.as_str(), "OPTIMIZE" | "VACUUM" | "RESTORE") {
        return Ok(None);
    }
    let syntax = || {
        Error::invalid(format!(
            "{first} syntax: DESCRIBE HISTORY t [LIMIT n] | OPTIMIZE t [WHERE partition predicate] [ZORDER BY (col, …)] | VACUUM t [RETAIN n HOURS] [DRY RUN] | RESTORE [TABLE] t TO VERSION AS OF n | TIMESTAMP AS OF '…'"
        ))
    };
    let mut i = 1;
    if (first == "RESTORE" && word(i).as_deref() == Some("TABLE")) || history {
        i += 1;
    }
    // A table name: word (. word)*
    let mut parts = Vec::new();
    loop {
        match tokens.get(i) {
            Some(Token::Word(w)) => parts.push(w.value.clone()),
            _ => return Err(syntax()),
        }
        i += 1;
        if tokens.get(i) == Some(&Token::Period) {
            i += 1;
        } else {
            break;
        }
    }
    let table = match parts.as_slice() {
        [t] => TableRef::new(default_layer, t)?,
        _ => TableRef::parse(&parts.join("."))?,
    };
    let expect = |i: &mut usize, w: &str| -> Result<()> {
        if word(*i).as_deref() == Some(w) {
            *i += 1;
            Ok(())
        } else {
            Err(syntax())
        }
    };
    let statement = match first.as_str() {
        "DESCRIBE" => {
            let mut limit = None;
            if word(i).as_deref() == Some("LIMIT") {
                i += 1;
                limit = match tokens.get(i) {
                    Some(Token::Number(n, _)) => {
                        Some(n.parse::<usize>().ok().filter(|n| *n > 0).ok_or_else(|| {
                            Error::invalid(format!("LIMIT {n}: a positive count"))
                        })?)
                    }
                    _ => return Err(syntax()),
                };
                i += 1;
            }
            Statement::History { table, limit }
        }
        "OPTIMIZE" => {
            let mut zorder = Vec::new();
            let mut partitions = Vec::new();
            if word(i).as_deref() == Some("WHERE") {
                i += 1;
                let end = (i..tokens.len())
                    .find(|j| word(*j).as_deref() == Some("ZORDER"))
                    .unwrap_or(tokens.len());
                let text: String = tokens[i..end].iter().map(|t| format!("{t} ")).collect();
                partitions = partition_predicate(&text)?;
                i = end;
            }
            if word(i).as_deref() == Some("ZORDER") {
                i += 1;
                expect(&mut i, "BY")?;
                let parens = tokens.get(i) == Some(&Token::LParen);
                if parens {
                    i += 1;
                }
                loop {
                    match tokens.get(i) {
                        Some(Token::Word(w)) => zorder.push(w.value.to_ascii_lowercase()),
                        _ => return Err(syntax()),
                    }
                    i += 1;
                    if tokens.get(i) == Some(&Token::Comma) {
                        i += 1;
                    } else {
                        break;
                    }
                }
                if parens {
                    if tokens.get(i) != Some(&Token::RParen) {
                        return Err(syntax());
                    }
                    i += 1;
                }
            }
            Statement::Optimize {
                table,
                zorder,
                partitions,
            }
        }
        "VACUUM" => {
            let mut retain_hours = None;
            let mut dry_run = false;
            if word(i).as_deref() == Some("RETAIN") {
                i += 1;
                let hours = match tokens.get(i) {
                    Some(Token::Number(n, _)) => n
                        .parse::<u64>()
                        .map_err(|_| Error::invalid(format!("RETAIN {n}: whole hours")))?,
                    _ => return Err(syntax()),
                };
                i += 1;
                expect(&mut i, "HOURS")?;
                retain_hours = Some(hours);
            }
            if word(i).as_deref() == Some("DRY") {
                i += 1;
                expect(&mut i, "RUN")?;
                dry_run = true;
            }
            Statement::Vacuum {
                table,
                retain_hours,
                dry_run,
            }
        }
        _ => {
            expect(&mut i, "TO")?;
            let kind = word(i).ok_or_else(syntax)?;
            i += 1;
            expect(&mut i, "AS")?;
            expect(&mut i, "OF")?;
            let to = match (kind.as_str(), tokens.get(i)) {
                ("VERSION", Some(Token::Number(n, _))) => RestoreTo::Version(
                    n.parse::<u64>()
                        .map_err(|_| Error::invalid(format!("VERSION AS OF {n}")))?,
                ),
                ("TIMESTAMP", Some(Token::SingleQuotedString(s))) => {
                    RestoreTo::Timestamp(parse_timestamp(s)?)
                }
                _ => return Err(syntax()),
            };
            i += 1;
            Statement::Restore { table, to }
        }
    };
    if i != tokens.len() {
        return Err(syntax());
    }
    Ok(Some(statement))
}

/// Name the star form assignments get (see [`merge_star_shorthands`]).
const STAR: &str = "__strata_star__";

/// Databricks' `UPDATE SET *` and `INSERT *` in MERGE are not sqlparser syntax: rewrite the
/// tokens to `UPDATE SET __strata_star__ = __strata_star__` and BigQuery's `INSERT ROW`
/// (which means the same), so the parser accepts them. Tokens, not text: string literals
/// and comments are never touched.
fn merge_star_shorthands(mut tokens: Vec<TokenWithSpan>) -> Vec<TokenWithSpan> {
    let is_word =
        |t: &TokenWithSpan, k: Keyword| matches!(&t.token, Token::Word(w) if w.keyword == k);
    let significant: Vec<usize> = tokens
        .iter()
        .enumerate()
        .filter(|(_, t)| !matches!(t.token, Token::Whitespace(_)))
        .map(|(i, _)| i)
        .collect();
    if !significant
        .first()
        .is_some_and(|i| is_word(&tokens[*i], Keyword::MERGE))
    {
        return tokens;
    }
    let star_ident = |span| TokenWithSpan {
        token: Token::Word(Word {
            value: STAR.into(),
            quote_style: None,
            keyword: Keyword::NoKeyword,
        }),
        span,
    };
    let mut replace: Vec<(usize, Vec<TokenWithSpan>)> = Vec::new();
    for w in significant.windows(3) {
        let (a, b, c) = (w[0], w[1], w[2]);
        if is_word(&tokens[a], Keyword::UPDATE)
            && is_word(&tokens[b], Keyword::SET)
            && tokens[c].token == Token::Mul
        {
            let span = tokens[c].span;
            replace.push((
                c,
                vec![
                    star_ident(span),
                    TokenWithSpan {
                        token: Token::Eq,
                        span,
                    },
                    star_ident(span),
                ],
            ));
        }
    }
    for w in significant.windows(2) {
        if is_word(&tokens[w[0]], Keyword::INSERT) && tokens[w[1]].token == Token::Mul {
            let span = tokens[w[1]].span;
            replace.push((
                w[1],
                vec![TokenWithSpan {
                    token: Token::make_keyword("ROW"),
                    span,
                }],
            ));
        }
    }
    replace.sort_by_key(|(i, _)| std::cmp::Reverse(*i));
    for (i, with) in replace {
        tokens.splice(i..=i, with);
    }
    tokens
}

fn assignment_column(target: &ast::AssignmentTarget) -> Result<String> {
    match target {
        ast::AssignmentTarget::ColumnName(name) => match name.0.last() {
            Some(ObjectNamePart::Identifier(i)) => Ok(if i.quote_style.is_some() {
                i.value.clone()
            } else {
                i.value.to_ascii_lowercase()
            }),
            _ => Err(Error::invalid(format!("invalid column {name}"))),
        },
        ast::AssignmentTarget::Tuple(_) => Err(Error::Unsupported(
            "tuple assignments are not supported".into(),
        )),
    }
}

fn classify_merge(merge: &ast::Merge, default_layer: &str) -> Result<Statement> {
    let alias_of =
        |a: &Option<ast::TableAlias>| a.as_ref().map(|a| a.name.value.to_ascii_lowercase());
    let (table, target_alias) = match &merge.table {
        TableFactor::Table {
            name,
            alias,
            version: None,
            args: None,
            ..
        } => {
            let t = table_ref(name, default_layer)?;
            let alias = alias_of(alias).unwrap_or_else(|| t.name.clone());
            (t, alias)
        }
        _ => {
            return Err(Error::Unsupported(
                "MERGE INTO needs a table name (no time travel or functions)".into(),
            ));
        }
    };
    if merge.output.is_some() {
        return Err(Error::Unsupported("MERGE … OUTPUT is not supported".into()));
    }
    // The source as a query of its own; its alias names it in the merge. An alias that
    // names columns (`USING (VALUES …) AS s(id, v)`) stays on the query, which needs it.
    let mut source = merge.source.clone();
    let alias_name = |alias: &mut Option<ast::TableAlias>| match alias {
        Some(a) if !a.columns.is_empty() => Some(a.name.value.to_ascii_lowercase()),
        _ => alias.take().map(|a| a.name.value.to_ascii_lowercase()),
    };
    let source_alias = match &mut source {
        TableFactor::Table { name, alias, .. } => {
            alias_name(alias).or_else(|| name.0.last().map(|p| p.to_string().to_ascii_lowercase()))
        }
        TableFactor::Derived { alias, .. } => alias_name(alias),
        _ => {
            return Err(Error::Unsupported(
                "MERGE … USING takes a table or a subquery".into(),
            ));
        }
    }
    .ok_or_else(|| Error::invalid("MERGE … USING (subquery) needs an alias"))?;
    let source_sql = format!("SELECT * FROM {source}");
    let mut source_stmt = Parser::new(&StrataDialect::default())
        .with_recursion_limit(MAX_RECURSION)
        .try_with_sql(&source_sql)
        .and_then(|mut p| p.parse_statement())
        .map_err(|e| Error::invalid(format!("MERGE source: {e}")))?;
    rewrite_time_travel(&mut source_stmt)?;
    let clauses = merge
        .clauses
        .iter()
        .map(|c| {
            let when = match c.clause_kind {
                ast::MergeClauseKind::Matched => When::Matched,
                ast::MergeClauseKind::NotMatched | ast::MergeClauseKind::NotMatchedByTarget => {
                    When::NotMatched
                }
                ast::MergeClauseKind::NotMatchedBySource => When::NotMatchedBySource,
            };
            let action = match &c.action {
                ast::MergeAction::Delete { .. } => Action::Delete,
                ast::MergeAction::Update(u) => {
                    if u.update_predicate.is_some() || u.delete_predicate.is_some() {
                        return Err(Error::Unsupported(
                            "UPDATE … WHERE / DELETE WHERE inside MERGE is not supported; put the condition after WHEN MATCHED AND".into(),
                        ));
                    }
                    let set = u
                        .assignments
                        .iter()
                        .map(|a| Ok((assignment_column(&a.target)?, a.value.to_string())))
                        .collect::<Result<Vec<_>>>()?;
                    if set.iter().any(|(c, _)| c == STAR) {
                        if set.len() != 1 {
                            return Err(Error::invalid("UPDATE SET * stands alone"));
                        }
                        Action::UpdateAll
                    } else {
                        Action::Update(set)
                    }
                }
                ast::MergeAction::Insert(i) => {
                    if i.insert_predicate.is_some() {
                        return Err(Error::Unsupported(
                            "INSERT … WHERE inside MERGE is not supported; put the condition after WHEN NOT MATCHED AND".into(),
                        ));
                    }
                    let columns = i
                        .columns
                        .iter()
                        .map(|c| match c.0.last() {
                            Some(ObjectNamePart::Identifier(id)) => Ok(id.value.to_ascii_lowercase()),
                            _ => Err(Error::invalid(format!("invalid column {c}"))),
                        })
                        .collect::<Result<Vec<_>>>()?;
                    match &i.kind {
                        ast::MergeInsertKind::Row if columns.is_empty() => Action::InsertAll,
                        ast::MergeInsertKind::Row => {
                            return Err(Error::Unsupported(
                                "INSERT (cols) ROW is not supported; use INSERT * or INSERT (cols) VALUES (…)".into(),
                            ));
                        }
                        ast::MergeInsertKind::Values(v) => {
                            let [row] = v.rows.as_slice() else {
                                return Err(Error::invalid(
                                    "MERGE INSERT takes exactly one VALUES row",
                                ));
                            };
                            if row.len() != columns.len() {
                                return Err(Error::invalid(format!(
                                    "MERGE INSERT lists {} columns and {} values",
                                    columns.len(),
                                    row.len()
                                )));
                            }
                            Action::Insert(
                                columns
                                    .into_iter()
                                    .zip(row.iter().map(ToString::to_string))
                                    .collect(),
                            )
                        }
                    }
                }
            };
            Ok(Clause {
                when,
                predicate: c.predicate.as_ref().map(ToString::to_string),
                action,
            })
        })
        .collect::<Result<Vec<_>>>()?;
    Ok(Statement::Merge {
        table,
        source: Box::new(source_stmt),
        spec: MergeSpec {
            target_alias,
            source_alias,
            on: merge.on.to_string(),
            clauses,
            operation: "MERGE".into(),
        },
    })
}

/// `CALL scd2(target => …, source => …, keys => …, [tracked => …,] [effective_time => …,]
/// [close_missing => true,] [valid_from => …, valid_to => …, is_current => …])`.
fn classify_call(call: &ast::Function, default_layer: &str) -> Result<Statement> {
    let name = call.name.to_string().to_ascii_lowercase();
    if name != "scd2" && name != "strata.scd2" {
        return Err(Error::Unsupported(format!(
            "unknown procedure {name}; Strata has CALL scd2(…)"
        )));
    }
    let ast::FunctionArguments::List(list) = &call.args else {
        return Err(Error::invalid(
            "CALL scd2 takes named arguments: scd2(target => 'silver.dim', source => 'bronze.src', keys => 'id')",
        ));
    };
    let mut args: std::collections::BTreeMap<String, Expr> = std::collections::BTreeMap::new();
    for a in &list.args {
        let (name, value) = match a {
            ast::FunctionArg::Named {
                name,
                arg: ast::FunctionArgExpr::Expr(e),
                ..
            } => (name.value.to_ascii_lowercase(), e.clone()),
            _ => {
                return Err(Error::invalid(
                    "CALL scd2 takes named arguments only (name => value)",
                ));
            }
        };
        if args.insert(name.clone(), value).is_some() {
            return Err(Error::invalid(format!("argument {name} given twice")));
        }
    }
    let text = |args: &mut std::collections::BTreeMap<String, Expr>,
                k: &str|
     -> Result<Option<String>> {
        match args.remove(k) {
            None => Ok(None),
            Some(Expr::Value(v)) => match &v.value {
                Value::SingleQuotedString(s) | Value::DoubleQuotedString(s) => Ok(Some(s.clone())),
                other => Err(Error::invalid(format!(
                    "argument {k} must be a string, not {other}"
                ))),
            },
            Some(other) => Err(Error::invalid(format!(
                "argument {k} must be a string, not {other}"
            ))),
        }
    };
    let list_of = |s: String| -> Vec<String> {
        s.split(',')
            .map(|c| c.trim().to_ascii_lowercase())
            .filter(|c| !c.is_empty())
            .collect()
    };
    let target = text(&mut args, "target")?
        .ok_or_else(|| Error::invalid("CALL scd2 needs target => 'layer.table'"))?;
    let table = TableRef::parse(&target).or_else(|_| TableRef::new(default_layer, &target))?;
    let source = text(&mut args, "source")?
        .ok_or_else(|| Error::invalid("CALL scd2 needs source => 'query or table'"))?;
    let keys = text(&mut args, "keys")?.map(list_of).unwrap_or_default();
    let mut spec = Scd2Spec {
        keys,
        tracked: text(&mut args, "tracked")?.map(list_of),
        effective_time: text(&mut args, "effective_time")?.map(|s| s.trim().to_ascii_lowercase()),
        ..Scd2Spec::default()
    };
    if let Some(v) = text(&mut args, "valid_from")? {
        spec.valid_from = v;
    }
    if let Some(v) = text(&mut args, "valid_to")? {
        spec.valid_to = v;
    }
    if let Some(v) = text(&mut args, "is_current")? {
        spec.is_current = v;
    }
    match args.remove("close_missing") {
        None => {}
        Some(Expr::Value(v)) if matches!(v.value, Value::Boolean(_)) => {
            spec.close_missing = v.value == Value::Boolean(true);
        }
        Some(other) => {
            return Err(Error::invalid(format!(
                "close_missing must be true or false, not {other}"
            )));
        }
    }
    if let Some(unknown) = args.keys().next() {
        return Err(Error::invalid(format!(
            "unknown argument {unknown}; CALL scd2 takes target, source, keys, tracked, effective_time, close_missing, valid_from, valid_to, is_current"
        )));
    }
    Ok(Statement::Scd2 {
        table,
        source,
        spec,
    })
}

fn first_words(sql: &str) -> String {
    sql.split_whitespace().take(3).collect::<Vec<_>>().join(" ")
}

/// `ALTER TABLE`: one change per statement (several `ADD COLUMN`s are one change).
fn classify_alter(alter: &ast::AlterTable, default_layer: &str) -> Result<Statement> {
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

fn column_spec(c: &ast::ColumnDef) -> Result<ColumnSpec> {
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
fn table_options(options: &[ast::SqlOption]) -> Result<(Option<String>, BTreeMap<String, String>)> {
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
            args,
            ..
        } = tf
        else {
            return ControlFlow::Continue(());
        };
        if let Some(function_args) = args.take() {
            match table_changes(name, &function_args) {
                Ok((table, spec)) => {
                    let base = table.last().map(|i| i.value.clone()).unwrap_or_default();
                    if alias.is_none() {
                        *alias = Some(ast::TableAlias {
                            explicit: true,
                            name: ast::Ident::new(base.clone()),
                            columns: vec![],
                            at: None,
                        });
                    }
                    let mut parts: Vec<ObjectNamePart> =
                        table.into_iter().map(ObjectNamePart::Identifier).collect();
                    if let Some(ObjectNamePart::Identifier(last)) = parts.last_mut() {
                        *last = ast::Ident::with_quote('"', spec.relation_name(&base));
                    }
                    *name = ObjectName(parts);
                    return ControlFlow::Continue(());
                }
                Err(e) => {
                    self.error = Some(e);
                    return ControlFlow::Break(());
                }
            }
        }
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

/// `table_changes('layer.t', start[, end])`, the one table function: the table's name parts
/// and the change-feed version range. Any other table function is refused.
fn table_changes(
    name: &ObjectName,
    args: &ast::TableFunctionArgs,
) -> Result<(Vec<ast::Ident>, VersionSpec)> {
    let usage = "table_changes('layer.table', start_version[, end_version])";
    if !name.to_string().eq_ignore_ascii_case("table_changes") {
        return Err(Error::Unsupported(format!(
            "table function {name} is not supported; the one table function is {usage}"
        )));
    }
    let values: Vec<&Value> = args
        .args
        .iter()
        .map(|a| match a {
            ast::FunctionArg::Unnamed(ast::FunctionArgExpr::Expr(Expr::Value(v))) => Ok(&v.value),
            _ => Err(Error::invalid(format!(
                "{usage}: arguments must be literals"
            ))),
        })
        .collect::<Result<_>>()?;
    let version = |v: &Value| match v {
        Value::Number(n, _) => n
            .parse::<u64>()
            .map_err(|_| Error::invalid(format!("{usage}: {n} is not a version"))),
        other => Err(Error::invalid(format!("{usage}: {other} is not a version"))),
    };
    let (table, start, end) = match values.as_slice() {
        [Value::SingleQuotedString(t), s] => (t, version(s)?, None),
        [Value::SingleQuotedString(t), s, e] => (t, version(s)?, Some(version(e)?)),
        _ => return Err(Error::invalid(format!("usage: {usage}"))),
    };
    let parts: Vec<ast::Ident> = table
        .split('.')
        .map(|p| ast::Ident::new(p.trim().to_ascii_lowercase()))
        .collect();
    if parts.is_empty() || parts.len() > 3 || parts.iter().any(|p| p.value.is_empty()) {
        return Err(Error::invalid(format!(
            "{usage}: invalid table name {table:?}"
        )));
    }
    crate::storage::validate_name(&parts[parts.len() - 1].value)?;
    Ok((parts, VersionSpec::Changes { start, end }))
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

/// Deepest expression nesting a statement may have after AND/OR chains are balanced.
/// DataFusion formats, plans and evaluates expressions recursively; a 250-term `1 + 1 + …`
/// overflows a 2 MiB worker stack in a debug build (in `SchemaDisplay`), and a stack
/// overflow aborts the whole process, so deeper statements are refused up front.
const MAX_EXPRESSION_DEPTH: usize = 128;

/// Balances long AND/OR chains (`a = 1 OR a = 2 OR …`, as BI tools write them: depth n
/// becomes log₂ n; AND and OR are associative in SQL's three-valued logic, so results do
/// not change), then refuses anything still nested deeper than [`MAX_EXPRESSION_DEPTH`].
fn limit_expression_depth(stmt: &mut ast::Statement) -> Result<()> {
    struct Balance;
    impl VisitorMut for Balance {
        type Break = ();
        fn pre_visit_expr(&mut self, expr: &mut Expr) -> ControlFlow<()> {
            let Expr::BinaryOp { op, .. } = expr else {
                return ControlFlow::Continue(());
            };
            let op = op.clone();
            if !matches!(op, ast::BinaryOperator::And | ast::BinaryOperator::Or) {
                return ControlFlow::Continue(());
            }
            // Every operand of the same-operator tree rooted here, left to right (an
            // explicit stack: the tree may be thousands deep).
            let mut operands = Vec::new();
            let mut stack = vec![std::mem::replace(expr, Expr::value(Value::Null))];
            while let Some(e) = stack.pop() {
                match e {
                    Expr::BinaryOp {
                        left,
                        op: ref o,
                        right,
                    } if *o == op => {
                        stack.push(*right);
                        stack.push(*left);
                    }
                    other => operands.push(other),
                }
            }
            *expr = balanced(operands, &op);
            ControlFlow::Continue(())
        }
    }
    fn balanced(mut operands: Vec<Expr>, op: &ast::BinaryOperator) -> Expr {
        if operands.len() == 1 {
            return operands.remove(0);
        }
        let right = operands.split_off(operands.len() / 2);
        Expr::BinaryOp {
            left: Box::new(balanced(operands, op)),
            op: op.clone(),
            right: Box::new(balanced(right, op)),
        }
    }
    struct Depth {
        current: usize,
    }
    impl Visitor for Depth {
        type Break = ();
        fn pre_visit_expr(&mut self, _: &Expr) -> ControlFlow<()> {
            self.current += 1;
            if self.current > MAX_EXPRESSION_DEPTH {
                ControlFlow::Break(())
            } else {
                ControlFlow::Continue(())
            }
        }
        fn post_visit_expr(&mut self, _: &Expr) -> ControlFlow<()> {
            self.current -= 1;
            ControlFlow::Continue(())
        }
    }
    let _ = stmt.visit(&mut Balance);
    let mut depth = Depth { current: 0 };
    if Visit::visit(&*stmt, &mut depth).is_break() {
        return Err(Error::invalid(format!(
            "an expression is nested more than {MAX_EXPRESSION_DEPTH} levels deep; \
             write long lists as IN (…) and split long arithmetic"
        )));
    }
    Ok(())
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
    fn table_changes_and_optimize_where_are_parsed() {
        let Statement::Query(q) = parse(
            "SELECT * FROM table_changes('silver.t', 3, 5) JOIN table_changes('u', 1) c ON true",
            "gold",
        )
        .unwrap() else {
            panic!()
        };
        let text = q.to_string();
        assert!(text.contains(r#"silver."t@c3-5" AS t"#), "{text}");
        assert!(text.contains(r#""u@c1-" c ON"#), "{text}");
        for bad in [
            "SELECT * FROM table_changes('t')",
            "SELECT * FROM table_changes('t', 'x')",
            "SELECT * FROM table_changes('a.b.c.d', 1)",
            "SELECT * FROM generate_series(1, 3)",
        ] {
            assert!(parse(bad, "gold").is_err(), "{bad}");
        }
        let Statement::Optimize {
            partitions, zorder, ..
        } = parse(
            "OPTIMIZE t WHERE region = 'eu' AND (day >= 20240501 AND kind NOT IN ('a', 'b')) ZORDER BY (id)",
            "gold",
        )
        .unwrap()
        else {
            panic!()
        };
        assert_eq!(zorder, vec!["id"]);
        let ops: Vec<(&str, &str, usize)> = partitions
            .iter()
            .map(|f| (f.column.as_str(), f.op.as_str(), f.values.len()))
            .collect();
        assert_eq!(
            ops,
            vec![("region", "=", 1), ("day", ">=", 1), ("kind", "not in", 2)]
        );
        assert!(parse("OPTIMIZE t WHERE a = b", "gold").is_err());
        assert!(parse("OPTIMIZE t WHERE a = 1 OR a = 2", "gold").is_err());
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
