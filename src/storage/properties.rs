//! Delta table properties users may set: `CREATE TABLE … TBLPROPERTIES (…)`,
//! `ALTER TABLE … SET TBLPROPERTIES (…)` and `properties` in the REST table API.
//!
//! An allow-list. The others either change the on-disk format in ways delta-rs cannot write
//! (column mapping, deletion vectors), are protocol fields, or are Strata's own (`strata.*`).

use std::collections::{BTreeMap, HashMap};

use crate::error::{Error, Result};

/// Turns on the change data feed (`table_changes(…)`).
pub(crate) const CHANGE_DATA_FEED: &str = "delta.enableChangeDataFeed";

#[derive(Clone, Copy)]
enum Kind {
    Bool,
    /// A positive integer.
    Count,
    /// `-1` (all columns) or a non-negative integer.
    ColumnCount,
    /// `interval <n> <unit>`.
    Interval,
}

const ALLOWED: &[(&str, Kind)] = &[
    (CHANGE_DATA_FEED, Kind::Bool),
    ("delta.appendOnly", Kind::Bool),
    ("delta.checkpointInterval", Kind::Count),
    ("delta.targetFileSize", Kind::Count),
    ("delta.dataSkippingNumIndexedCols", Kind::ColumnCount),
    ("delta.logRetentionDuration", Kind::Interval),
    ("delta.deletedFileRetentionDuration", Kind::Interval),
    ("delta.enableExpiredLogCleanup", Kind::Bool),
];

/// Checks `props` against the allow-list and returns them under their canonical names.
pub(crate) fn validate(props: &BTreeMap<String, String>) -> Result<HashMap<String, String>> {
    let mut out = HashMap::with_capacity(props.len());
    for (key, value) in props {
        let Some((name, kind)) = ALLOWED.iter().find(|(k, _)| k.eq_ignore_ascii_case(key)) else {
            let names: Vec<&str> = ALLOWED.iter().map(|(k, _)| *k).collect();
            return Err(Error::invalid(format!(
                "table property {key:?} cannot be set; settable properties: {}",
                names.join(", ")
            )));
        };
        let value = value.trim();
        let ok = match kind {
            Kind::Bool => value.eq_ignore_ascii_case("true") || value.eq_ignore_ascii_case("false"),
            Kind::Count => value.parse::<u64>().is_ok_and(|n| n > 0),
            Kind::ColumnCount => value.parse::<i64>().is_ok_and(|n| n >= -1),
            Kind::Interval => is_interval(value),
        };
        if !ok {
            let expected = match kind {
                Kind::Bool => "true or false",
                Kind::Count => "a positive integer",
                Kind::ColumnCount => "-1 or a non-negative integer",
                Kind::Interval => "an interval such as 'interval 30 days'",
            };
            return Err(Error::invalid(format!(
                "table property {name}: expected {expected}, got {value:?}"
            )));
        }
        let value = match kind {
            Kind::Bool => value.to_ascii_lowercase(),
            _ => value.to_string(),
        };
        out.insert((*name).to_string(), value);
    }
    Ok(out)
}

/// `interval <n> <unit>` as Delta writes it (`interval 7 days`).
fn is_interval(s: &str) -> bool {
    let parts: Vec<&str> = s.split_whitespace().collect();
    let units = [
        "nanosecond",
        "microsecond",
        "millisecond",
        "second",
        "minute",
        "hour",
        "day",
        "week",
    ];
    match parts.as_slice() {
        [kw, n, unit] => {
            kw.eq_ignore_ascii_case("interval")
                && n.parse::<u64>().is_ok()
                && units.iter().any(|u| {
                    let unit = unit.to_ascii_lowercase();
                    unit == *u || unit.strip_suffix('s') == Some(u)
                })
        }
        _ => false,
    }
}

/// Whether the change data feed is on in a table configuration.
pub(crate) fn change_data_feed(config: &HashMap<String, String>) -> bool {
    config
        .get(CHANGE_DATA_FEED)
        .is_some_and(|v| v.eq_ignore_ascii_case("true"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn props(kv: &[(&str, &str)]) -> BTreeMap<String, String> {
        kv.iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn allow_list_and_values_are_checked() {
        let ok = validate(&props(&[
            ("DELTA.enableChangeDataFeed", "TRUE"),
            ("delta.logRetentionDuration", "interval 30 days"),
            ("delta.checkpointInterval", "50"),
        ]))
        .unwrap();
        assert_eq!(ok[CHANGE_DATA_FEED], "true");
        assert_eq!(ok["delta.checkpointInterval"], "50");
        for bad in [
            ("delta.columnMapping.mode", "name"),
            ("strata.owner", "x"),
            ("delta.checkpointInterval", "0"),
            ("delta.enableChangeDataFeed", "yes"),
            ("delta.logRetentionDuration", "30 days"),
        ] {
            assert!(validate(&props(&[bad])).is_err(), "{bad:?}");
        }
    }
}
