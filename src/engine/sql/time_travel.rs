//! Time travel (`VERSION AS OF`, `TIMESTAMP AS OF`) rewritten into versioned relation
//! names, `table_changes(…)`, and the timestamps both accept.

use std::ops::ControlFlow;

use chrono::{DateTime, NaiveDate, NaiveDateTime, Utc};
use datafusion::sql::sqlparser::ast::{
    self, Expr, ObjectName, ObjectNamePart, TableFactor, TableVersion, Value, VisitMut, VisitorMut,
};

use crate::error::{Error, Result};
use crate::storage::VersionSpec;

pub(super) struct TimeTravel {
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
pub(super) fn table_changes(
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

pub(super) fn version_spec(v: &TableVersion) -> Result<VersionSpec> {
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

pub(super) fn timestamp_error(got: &str) -> Error {
    Error::invalid(format!(
        "TIMESTAMP AS OF needs a timestamp literal such as '2024-05-01T12:00:00Z', not {got}"
    ))
}

/// RFC 3339, `YYYY-MM-DD HH:MM:SS[.f]` (UTC) or `YYYY-MM-DD` (UTC midnight).
pub(crate) fn parse_timestamp(s: &str) -> Result<DateTime<Utc>> {
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

pub(super) fn rewrite_time_travel(stmt: &mut ast::Statement) -> Result<()> {
    let mut v = TimeTravel { error: None };
    let _ = stmt.visit(&mut v);
    match v.error {
        Some(e) => Err(e),
        None => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use crate::engine::sql::{Statement, parse};

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
}
