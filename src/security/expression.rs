//! Hostile SQL text: operator chains too long to become an expression tree safely.

use datafusion::sql::sqlparser::dialect::GenericDialect;
use datafusion::sql::sqlparser::keywords::Keyword;
use datafusion::sql::sqlparser::tokenizer::{Token, Tokenizer};

use crate::error::{Error, Result};

/// Longest run of binary operators between separators (see [`check_operator_runs`]).
pub(crate) const MAX_OPERATOR_RUN: usize = 1000;

/// Refuses SQL text whose operator chains would build an expression tree too deep to walk.
/// The parser builds `1 + 1 + … + 1` iteratively, but everything after it (our visitors,
/// DataFusion, even dropping the tree) recurses once per level; a chain of 50 000 overflows
/// the stack and aborts the process. Counted on tokens, before any tree exists: consecutive
/// operators at one parenthesis level, reset by AND/OR (balanced later), commas and clause
/// keywords.
pub(crate) fn check_operator_runs<'a>(tokens: impl Iterator<Item = &'a Token>) -> Result<()> {
    let mut runs = vec![0usize];
    for t in tokens {
        let Some(run) = runs.last_mut() else {
            break;
        };
        match t {
            Token::LParen => runs.push(0),
            Token::RParen => {
                if runs.len() > 1 {
                    runs.pop();
                }
            }
            Token::Comma | Token::SemiColon => *run = 0,
            Token::Word(w) if w.quote_style.is_none() => match w.keyword {
                Keyword::IS
                | Keyword::LIKE
                | Keyword::ILIKE
                | Keyword::IN
                | Keyword::BETWEEN
                | Keyword::NOT
                | Keyword::COLLATE
                | Keyword::SIMILAR => *run += 1,
                Keyword::NoKeyword
                | Keyword::NULL
                | Keyword::TRUE
                | Keyword::FALSE
                | Keyword::UNKNOWN => {}
                _ => *run = 0,
            },
            Token::Whitespace(_)
            | Token::Word(_)
            | Token::Number(..)
            | Token::SingleQuotedString(_)
            | Token::DoubleQuotedString(_)
            | Token::Placeholder(_)
            | Token::Period
            | Token::EOF => {}
            _ => *run += 1,
        }
        if runs.last().is_some_and(|r| *r > MAX_OPERATOR_RUN) {
            return Err(Error::invalid(format!(
                "an expression chains more than {MAX_OPERATOR_RUN} operators; write long lists as IN (…) and split long arithmetic"
            )));
        }
    }
    Ok(())
}

/// [`check_operator_runs`] for expression text parsed elsewhere (REST MERGE conditions,
/// policy predicates).
pub(crate) fn check_expression_text(text: &str) -> Result<()> {
    let tokens = Tokenizer::new(&GenericDialect {}, text)
        .tokenize()
        .map_err(|e| Error::invalid(format!("SQL parse error: {e}")))?;
    check_operator_runs(tokens.iter())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn long_chains_are_refused_long_lists_are_not() {
        assert!(check_expression_text(&format!("1{}", " + 1".repeat(5_000))).is_err());
        assert!(check_expression_text(&format!("a{}", " || a".repeat(1_001))).is_err());
        assert!(check_expression_text(&format!("a{}", " IS NULL".repeat(1_001))).is_err());
        assert!(check_expression_text(&format!("1{}", " + 1".repeat(999))).is_ok());
        assert!(check_expression_text(&vec!["a = 1"; 5_000].join(" OR ")).is_ok());
        assert!(check_expression_text(&format!("a IN ({})", vec!["1"; 50_000].join(", "))).is_ok());
        assert!(check_expression_text(&vec!["(a + 1)"; 2_000].join(", ")).is_ok());
    }
}
