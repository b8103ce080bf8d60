//! Policy expressions → DataFusion expressions for one principal.
//!
//! `current_user()`, `has_role('r')` and `current_claim('k')` are replaced by literal nodes in
//! the parsed SQL tree (never by editing SQL text), typed from the principal's token: a claim
//! string becomes a string literal, a number a number, a boolean a boolean. A claim that is
//! missing, or is an array or an object, becomes NULL, so a filter on it keeps no rows.
//!
//! Evaluating a compiled policy never fails on a value: every cast in it (written by the
//! admin, or added to compare a claim of another type with a column) is a `TRY_CAST`, so a
//! value that does not convert is NULL (row hidden, fail closed) instead of an error that
//! would quote it, possibly from a row the principal may not see. A claim whose type cannot
//! be compared with the column at all (a boolean against a string) makes the policy plan as
//! if the principal had no claims: NULL, no rows.

use std::ops::ControlFlow;

use datafusion::common::DFSchema;
use datafusion::execution::context::SessionState;
use datafusion::logical_expr::Expr;
use datafusion::sql::sqlparser::ast::{
    self, Expr as SqlExpr, FunctionArg, FunctionArgExpr, FunctionArguments, Value, VisitMut,
    VisitorMut,
};
use datafusion::sql::sqlparser::dialect::GenericDialect;
use datafusion::sql::sqlparser::parser::Parser;

use crate::error::{Error, Result};
use crate::security::Principal;

const MAX_POLICY_EXPR_BYTES: usize = 16 * 1024;

/// Parses a policy expression.
pub(crate) fn parse(sql: &str) -> Result<SqlExpr> {
    if sql.len() > MAX_POLICY_EXPR_BYTES {
        return Err(Error::invalid("policy expression too long"));
    }
    Parser::new(&GenericDialect {})
        .with_recursion_limit(64)
        .try_with_sql(sql)
        .and_then(|mut p| {
            let e = p.parse_expr()?;
            p.expect_token(&datafusion::sql::sqlparser::tokenizer::Token::EOF)?;
            Ok(e)
        })
        .map_err(|e| Error::invalid(format!("policy expression {sql:?}: {e}")))
}

struct Bind<'a> {
    principal: &'a Principal,
    error: Option<Error>,
}

fn string_arg(f: &ast::Function) -> Option<String> {
    let FunctionArguments::List(list) = &f.args else {
        return None;
    };
    match list.args.as_slice() {
        [FunctionArg::Unnamed(FunctionArgExpr::Expr(SqlExpr::Value(v)))] => match &v.value {
            Value::SingleQuotedString(s) => Some(s.clone()),
            _ => None,
        },
        _ => None,
    }
}

fn no_args(f: &ast::Function) -> bool {
    match &f.args {
        FunctionArguments::None => true,
        FunctionArguments::List(l) => l.args.is_empty(),
        FunctionArguments::Subquery(_) => false,
    }
}

fn literal(v: Value) -> SqlExpr {
    SqlExpr::Value(v.into())
}

fn claim_literal(v: Option<&serde_json::Value>) -> SqlExpr {
    match v {
        Some(serde_json::Value::String(s)) => literal(Value::SingleQuotedString(s.clone())),
        Some(serde_json::Value::Bool(b)) => literal(Value::Boolean(*b)),
        Some(serde_json::Value::Number(n)) => literal(Value::Number(n.to_string(), false)),
        None
        | Some(serde_json::Value::Null)
        | Some(serde_json::Value::Array(_))
        | Some(serde_json::Value::Object(_)) => literal(Value::Null),
    }
}

impl VisitorMut for Bind<'_> {
    type Break = ();

    fn post_visit_expr(&mut self, expr: &mut SqlExpr) -> ControlFlow<()> {
        let SqlExpr::Function(f) = expr else {
            return ControlFlow::Continue(());
        };
        let name = f.name.to_string().to_ascii_lowercase();
        let replacement = match name.as_str() {
            "current_user" | "session_user" if no_args(f) => Ok(literal(
                Value::SingleQuotedString(self.principal.subject.clone()),
            )),
            "has_role" => match string_arg(f) {
                Some(role) => Ok(literal(Value::Boolean(self.principal.has_role(&role)))),
                None => Err("has_role takes one string literal".to_string()),
            },
            "current_claim" => match string_arg(f) {
                Some(k) => Ok(claim_literal(self.principal.claims.get(&k))),
                None => Err("current_claim takes one string literal".to_string()),
            },
            _ => return ControlFlow::Continue(()),
        };
        match replacement {
            Ok(e) => {
                *expr = SqlExpr::Nested(Box::new(e));
                ControlFlow::Continue(())
            }
            Err(msg) => {
                self.error = Some(Error::invalid(msg));
                ControlFlow::Break(())
            }
        }
    }
}

/// Binds the session functions for `principal` and plans the expression against `schema`
/// (see the module docs for what a claim of the wrong type becomes).
pub(crate) fn to_expr(
    sql: &str,
    principal: &Principal,
    schema: &DFSchema,
    state: &SessionState,
) -> Result<Expr> {
    match plan(sql, principal, schema, state) {
        Ok(e) => Ok(e),
        Err(_) if !principal.claims.is_empty() => {
            let without_claims = Principal {
                claims: Default::default(),
                ..principal.clone()
            };
            // Only the error of the claim-free plan is reported: it quotes no claim value.
            plan(sql, &without_claims, schema, state)
        }
        Err(e) => Err(e),
    }
}

/// Every `CAST` in `e` as a `TRY_CAST` (see the module docs).
fn never_failing_casts(e: Expr) -> Result<Expr> {
    use datafusion::common::tree_node::{Transformed, TreeNode};
    use datafusion::logical_expr::{Cast, TryCast};
    Ok(e.transform(|e| {
        Ok(match e {
            Expr::Cast(Cast { expr, field }) => {
                Transformed::yes(Expr::TryCast(TryCast { expr, field }))
            }
            other => Transformed::no(other),
        })
    })?
    .data)
}

fn plan(sql: &str, principal: &Principal, schema: &DFSchema, state: &SessionState) -> Result<Expr> {
    crate::security::expression::check_expression_text(sql)?;
    let mut ast = parse(sql)?;
    let mut bind = Bind {
        principal,
        error: None,
    };
    let _ = ast.visit(&mut bind);
    if let Some(e) = bind.error {
        return Err(e);
    }
    let with_alias = datafusion::sql::sqlparser::ast::ExprWithAlias {
        expr: ast,
        alias: None,
    };
    let planned = state
        .create_logical_expr_from_sql_expr(with_alias, schema)
        .map_err(|e| {
            Error::invalid(format!(
                "policy expression {sql:?}: {}",
                Error::from(e).client_message("")
            ))
        })?;
    // Coerce types now: the expression also goes to the Delta scan for file pruning, which
    // compares types strictly (`amount > 15` on a DOUBLE column).
    let context = datafusion::logical_expr::simplify::SimplifyContext::builder()
        .with_schema(std::sync::Arc::new(schema.clone()))
        .build();
    let simplifier = datafusion::optimizer::simplify_expressions::ExprSimplifier::new(context);
    // Simplify after coercing: `region = CAST('eu' AS Dictionary)` must become a literal
    // comparison, or Delta cannot prune partitions by it.
    let failed = |e: datafusion::error::DataFusionError| {
        Error::invalid(format!(
            "policy expression {sql:?}: {}",
            Error::from(e).client_message("")
        ))
    };
    let coerced = simplifier
        .coerce(planned, schema)
        .and_then(|e| simplifier.simplify(e))
        .map_err(failed)?;
    simplifier
        .simplify(never_failing_casts(coerced)?)
        .map_err(failed)
}
