//! `CALL scd2(…)`: named arguments into an [`Scd2Spec`].

use datafusion::sql::sqlparser::ast::{self, Expr, Value};

use super::Statement;
use crate::error::{Error, Result};
use crate::pipelines::scd2::{OnLate, Scd2Spec};
use crate::storage::TableRef;

/// `CALL scd2(target => …, source => …, keys => …, [tracked => …,] [effective_time => …,]
/// [close_missing => true,] [valid_from => …, valid_to => …, is_current => …])`.
pub(super) fn classify_call(call: &ast::Function, default_layer: &str) -> Result<Statement> {
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
    spec.deleted = text(&mut args, "deleted")?.map(|s| s.trim().to_ascii_lowercase());
    if let Some(v) = text(&mut args, "on_late")? {
        spec.on_late = match v.trim().to_ascii_lowercase().as_str() {
            "fail" => OnLate::Fail,
            "skip" => OnLate::Skip,
            other => {
                return Err(Error::invalid(format!(
                    "on_late is 'fail' or 'skip', not '{other}'"
                )));
            }
        };
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
            "unknown argument {unknown}; CALL scd2 takes target, source, keys, tracked, effective_time, close_missing, valid_from, valid_to, is_current, deleted, on_late"
        )));
    }
    Ok(Statement::Scd2 {
        table,
        source,
        spec,
    })
}
