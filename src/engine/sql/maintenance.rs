//! OPTIMIZE, VACUUM, RESTORE and DESCRIBE HISTORY (Delta/Databricks syntax sqlparser does
//! not know) and partition predicates.

use datafusion::sql::sqlparser::ast::{self, Expr, Value};
use datafusion::sql::sqlparser::parser::Parser;
use datafusion::sql::sqlparser::tokenizer::{Token, TokenWithSpan, Tokenizer};

use super::time_travel::parse_timestamp;
use super::{MAX_RECURSION, Statement, StrataDialect};
use crate::error::{Error, Result};
use crate::pipelines::maintenance::{PartitionFilter, RestoreTo};
use crate::security::expression::check_operator_runs;
use crate::storage::TableRef;

/// REST `where` of an optimize request: a conjunction of comparisons of partition columns
/// with literals (`region = 'eu' AND day >= '2024-05-01'`, `region IN ('eu', 'us')`).
pub(crate) fn partition_predicate(text: &str) -> Result<Vec<PartitionFilter>> {
    let tokens = Tokenizer::new(&StrataDialect::default(), text)
        .tokenize_with_location()
        .map_err(|e| Error::invalid(format!("SQL parse error: {e}")))?;
    check_operator_runs(tokens.iter().map(|t| &t.token))?;
    partition_filters(tokens)
}

/// The partition predicate in `tokens` (`OPTIMIZE … WHERE` takes them from the statement's
/// own tokens): one expression and nothing after it.
fn partition_filters(tokens: Vec<TokenWithSpan>) -> Result<Vec<PartitionFilter>> {
    let dialect = StrataDialect::default();
    let mut parser = Parser::new(&dialect)
        .with_recursion_limit(MAX_RECURSION)
        .with_tokens_with_locations(tokens);
    let expr = parser
        .parse_expr()
        .map_err(|e| Error::invalid(format!("OPTIMIZE … WHERE: {e}")))?;
    if parser.peek_token().token != Token::EOF {
        return Err(Error::invalid(format!(
            "OPTIMIZE … WHERE: unexpected {} after the predicate",
            parser.peek_token().token
        )));
    }
    let mut out = Vec::new();
    collect_partition_filters(&expr, &mut out)?;
    Ok(out)
}

pub(super) fn collect_partition_filters(expr: &Expr, out: &mut Vec<PartitionFilter>) -> Result<()> {
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
pub(super) fn parse_maintenance(
    tokens: &[TokenWithSpan],
    default_layer: &str,
) -> Result<Option<Statement>> {
    let significant = |t: &&TokenWithSpan| {
        !matches!(t.token, Token::Whitespace(_)) && t.token != Token::SemiColon
    };
    let maintenance = tokens.iter().find(significant).is_some_and(|t| {
        matches!(&t.token, Token::Word(w) if w.quote_style.is_none()
            && ["OPTIMIZE", "VACUUM", "RESTORE", "DESCRIBE"]
                .iter()
                .any(|k| w.value.eq_ignore_ascii_case(k)))
    });
    if !maintenance {
        return Ok(None);
    }
    let with_spans: Vec<TokenWithSpan> = tokens.iter().filter(significant).cloned().collect();
    let tokens: Vec<Token> = with_spans.iter().map(|t| t.token.clone()).collect();
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
            "{first} syntax: DESCRIBE HISTORY t [LIMIT n] | OPTIMIZE t [WHERE partition predicate] [ZORDER BY (col, …)] | VACUUM t [RETAIN n HOURS] [DRY RUN] [FORCE] | RESTORE [TABLE] t TO VERSION AS OF n | TIMESTAMP AS OF '…'"
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
                partitions = partition_filters(with_spans[i..end].to_vec())?;
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
            let force = word(i).as_deref() == Some("FORCE");
            if force {
                i += 1;
            }
            Statement::Vacuum {
                table,
                retain_hours,
                dry_run,
                force,
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

#[cfg(test)]
mod tests {
    use super::partition_predicate;
    use crate::engine::sql::{Statement, parse};

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
        // Nothing after the predicate is ignored, in SQL or in REST's `where`.
        assert!(parse("OPTIMIZE t WHERE a = 1 junk", "gold").is_err());
        assert!(partition_predicate("a = 1 junk").is_err());
        assert_eq!(partition_predicate("a IN (1, 2)").unwrap().len(), 1);
    }
}
