//! MERGE INTO: Databricks' star shorthands and the classification into a [`MergeSpec`].

use datafusion::sql::sqlparser::ast::{self, ObjectNamePart, TableFactor};
use datafusion::sql::sqlparser::keywords::Keyword;
use datafusion::sql::sqlparser::parser::Parser;
use datafusion::sql::sqlparser::tokenizer::{Token, TokenWithSpan, Word};

use super::time_travel::rewrite_time_travel;
use super::{MAX_RECURSION, Statement, StrataDialect, table_ref};
use crate::error::{Error, Result};
use crate::pipelines::merge::{Action, Clause, MergeSpec, When};

/// Name the star form assignments get (see [`merge_star_shorthands`]).
pub(super) const STAR: &str = "__strata_star__";

/// Databricks' `UPDATE SET *` and `INSERT *` in MERGE are not sqlparser syntax: rewrite the
/// tokens to `UPDATE SET __strata_star__ = __strata_star__` and BigQuery's `INSERT ROW`
/// (which means the same), so the parser accepts them. Tokens, not text: string literals
/// and comments are never touched.
pub(super) fn merge_star_shorthands(mut tokens: Vec<TokenWithSpan>) -> Vec<TokenWithSpan> {
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

pub(super) fn assignment_column(target: &ast::AssignmentTarget) -> Result<String> {
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

pub(super) fn classify_merge(merge: &ast::Merge, default_layer: &str) -> Result<Statement> {
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
