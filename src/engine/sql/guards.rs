//! Guards applied to every parsed statement: expression depth (AND/OR chains balanced) and
//! `?` placeholders numbered.

use std::ops::ControlFlow;

use datafusion::sql::sqlparser::ast::{self, Expr, Value, Visit, VisitMut, Visitor, VisitorMut};

use crate::error::{Error, Result};

/// Deepest expression nesting a statement may have after AND/OR chains are balanced.
/// DataFusion formats, plans and evaluates expressions recursively; a 250-term `1 + 1 + …`
/// overflows a 2 MiB worker stack in a debug build (in `SchemaDisplay`), and a stack
/// overflow aborts the whole process, so deeper statements are refused up front.
pub(super) const MAX_EXPRESSION_DEPTH: usize = 128;

/// Balances long AND/OR chains (`a = 1 OR a = 2 OR …`, as BI tools write them: depth n
/// becomes log₂ n; AND and OR are associative in SQL's three-valued logic, so results do
/// not change), then refuses anything still nested deeper than [`MAX_EXPRESSION_DEPTH`].
pub(super) fn limit_expression_depth(stmt: &mut ast::Statement) -> Result<()> {
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
pub(super) struct QmarkPlaceholders {
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

pub(super) fn number_placeholders(stmt: &mut ast::Statement) -> Result<()> {
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

#[cfg(test)]
mod tests {
    use crate::engine::sql::{Statement, parse};

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
