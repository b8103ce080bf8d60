//! Positional parameters `$1…$n`: binding them to a plan, refusing them where a statement
//! takes none.

use datafusion::common::ScalarValue;
use datafusion::logical_expr::LogicalPlan;

use crate::error::{Error, Result};

pub(super) fn no_params(params: &[ScalarValue], kind: &str) -> Result<()> {
    if params.is_empty() {
        Ok(())
    } else {
        Err(Error::invalid(format!("{kind} takes no parameters")))
    }
}

/// Binds `$1…$n`. Each value is cast to the type DataFusion inferred for its placeholder, so
/// `WHERE id = $1` with a JSON number works for an INT column. Indexing is numeric: `$10`
/// is the tenth value, never the second.
pub(super) fn bind_params(plan: LogicalPlan, params: Vec<ScalarValue>) -> Result<LogicalPlan> {
    let types = plan.get_parameter_types()?;
    let mut max_index = 0usize;
    for id in types.keys() {
        let n = id
            .strip_prefix('$')
            .and_then(|n| n.parse::<usize>().ok())
            .ok_or_else(|| {
                Error::invalid(format!(
                    "named parameter {id} is not supported; use $1, $2, …"
                ))
            })?;
        max_index = max_index.max(n);
    }
    if max_index != params.len() {
        return Err(Error::invalid(format!(
            "the statement uses {max_index} parameter(s) but {} value(s) were given",
            params.len()
        )));
    }
    if params.is_empty() {
        return Ok(plan);
    }
    let mut bound = Vec::with_capacity(params.len());
    for (i, value) in params.into_iter().enumerate() {
        let id = format!("${}", i + 1);
        let value = match types.get(&id) {
            Some(Some(dt)) if value.data_type() != *dt && !value.is_null() => {
                value.cast_to(dt).map_err(|e| {
                    Error::invalid(format!("parameter {id}: cannot use {value} as {dt}: {e}"))
                })?
            }
            Some(Some(dt)) if value.is_null() => ScalarValue::try_from(dt)?,
            _ => value,
        };
        bound.push(value);
    }
    Ok(plan.with_param_values(bound)?)
}

/// Named placeholders bound by the server itself (`$start`, `$end` of a `time_range`
/// model's batch), by name without the `$`.
pub(crate) type NamedParams<'a> = &'a [(&'a str, ScalarValue)];

/// Binds named placeholders to `values`, each cast to the type DataFusion inferred for it;
/// a placeholder with another name is an error that lists the names there are.
pub(super) fn bind_named(plan: LogicalPlan, values: NamedParams<'_>) -> Result<LogicalPlan> {
    let types = plan.get_parameter_types()?;
    if types.is_empty() {
        return Ok(plan);
    }
    let mut bound = Vec::with_capacity(types.len());
    for (id, dt) in &types {
        let name = id.strip_prefix('$').unwrap_or(id);
        let Some((_, value)) = values.iter().find(|(n, _)| *n == name) else {
            let known: Vec<String> = values.iter().map(|(n, _)| format!("${n}")).collect();
            return Err(Error::invalid(if known.is_empty() {
                format!("parameter {id} has no value here: this model binds no parameters")
            } else {
                format!(
                    "parameter {id} has no value here: this model binds {}",
                    known.join(" and ")
                )
            }));
        };
        let value = match dt {
            Some(dt) if value.data_type() != *dt => value.cast_to(dt).map_err(|e| {
                Error::invalid(format!("parameter {id}: cannot use {value} as {dt}: {e}"))
            })?,
            _ => value.clone(),
        };
        bound.push((name.to_string(), value));
    }
    Ok(plan.with_param_values(bound)?)
}
