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
use datafusion::sql::sqlparser::keywords::Keyword;
use datafusion::sql::sqlparser::parser::Parser;
use datafusion::sql::sqlparser::tokenizer::{Token, TokenWithSpan, Tokenizer, Word};

use crate::error::{Error, Result};
use crate::pipelines::maintenance::RestoreTo;
use crate::pipelines::merge::{Action, Clause, MergeSpec, When};
use crate::pipelines::scd2::Scd2Spec;
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
    /// `OPTIMIZE t [ZORDER BY (c, …)]`.
    Optimize {
        table: TableRef,
        zorder: Vec<String>,
    },
    /// `VACUUM t [RETAIN n HOURS] [DRY RUN]`.
    Vacuum {
        table: TableRef,
        retain_hours: Option<u64>,
        dry_run: bool,
    },
    /// `RESTORE [TABLE] t TO VERSION AS OF n | TIMESTAMP AS OF '…'`.
    Restore { table: TableRef, to: RestoreTo },
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
        }
    }
}

/// Parses exactly one statement.
pub fn parse(sql: &str, default_layer: &str) -> Result<Statement> {
    let dialect = StrataDialect::default();
    if let Some(maintenance) = parse_maintenance(sql, default_layer)? {
        return Ok(maintenance);
    }
    let mut statements = Tokenizer::new(&dialect, sql)
        .tokenize_with_location()
        .map_err(Into::into)
        .map(merge_star_shorthands)
        .and_then(|tokens| {
            Parser::new(&dialect)
                .with_recursion_limit(MAX_RECURSION)
                .with_tokens_with_locations(tokens)
                .parse_statements()
        })
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
    if !matches!(first.as_str(), "OPTIMIZE" | "VACUUM" | "RESTORE") {
        return Ok(None);
    }
    let syntax = || {
        Error::invalid(format!(
            "{first} syntax: OPTIMIZE t [ZORDER BY (col, …)] | VACUUM t [RETAIN n HOURS] [DRY RUN] | RESTORE [TABLE] t TO VERSION AS OF n | TIMESTAMP AS OF '…'"
        ))
    };
    let mut i = 1;
    if first == "RESTORE" && word(i).as_deref() == Some("TABLE") {
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
        "OPTIMIZE" => {
            let mut zorder = Vec::new();
            if word(i).as_deref() == Some("WHERE") {
                return Err(Error::Unsupported(
                    "OPTIMIZE … WHERE is not supported yet; OPTIMIZE compacts every partition"
                        .into(),
                ));
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
            Statement::Optimize { table, zorder }
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
    // The source as a query of its own; its alias names it in the merge.
    let mut source = merge.source.clone();
    let source_alias = match &mut source {
        TableFactor::Table { name, alias, .. } => alias
            .take()
            .map(|a| a.name.value.to_ascii_lowercase())
            .or_else(|| name.0.last().map(|p| p.to_string().to_ascii_lowercase())),
        TableFactor::Derived { alias, .. } => {
            alias.take().map(|a| a.name.value.to_ascii_lowercase())
        }
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
