//! Which snapshot of a table a query reads, and its encoding in relation names.
//!
//! The SQL front (`engine::sql`) writes time travel into the relation name (`orders@v3`,
//! `orders@t1700000000000`, `orders@c2-9` for a change feed) because DataFusion resolves a
//! table by name alone; the secure catalog decodes it. Both sides use this type, so the
//! encoding lives in one place. `@` can never appear in a table name ([`super::validate_name`]).

/// Which snapshot of a table a name asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum VersionSpec {
    Latest,
    Version(u64),
    /// Milliseconds since the epoch.
    Timestamp(i64),
    /// The change data feed from `start` to `end` (inclusive; default: the latest version):
    /// `table_changes('layer.t', start[, end])`.
    Changes {
        start: u64,
        end: Option<u64>,
    },
}

impl VersionSpec {
    /// The internal relation name for `name` at this version.
    pub fn relation_name(self, name: &str) -> String {
        match self {
            VersionSpec::Latest => name.to_string(),
            VersionSpec::Version(v) => format!("{name}@v{v}"),
            VersionSpec::Timestamp(ms) => format!("{name}@t{ms}"),
            VersionSpec::Changes { start, end: None } => format!("{name}@c{start}-"),
            VersionSpec::Changes {
                start,
                end: Some(end),
            } => format!("{name}@c{start}-{end}"),
        }
    }

    /// Splits `orders@v3` into (`orders`, Version(3)).
    pub fn parse_relation(name: &str) -> Option<(&str, VersionSpec)> {
        match name.split_once('@') {
            None => Some((name, VersionSpec::Latest)),
            Some((base, rest)) => {
                let spec = if let Some(v) = rest.strip_prefix('v') {
                    VersionSpec::Version(v.parse().ok()?)
                } else if let Some(t) = rest.strip_prefix('t') {
                    VersionSpec::Timestamp(t.parse().ok()?)
                } else if let Some(c) = rest.strip_prefix('c') {
                    let (start, end) = c.split_once('-')?;
                    VersionSpec::Changes {
                        start: start.parse().ok()?,
                        end: match end {
                            "" => None,
                            e => Some(e.parse().ok()?),
                        },
                    }
                } else {
                    return None;
                };
                Some((base, spec))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn versioned_relation_names_round_trip() {
        for spec in [
            VersionSpec::Latest,
            VersionSpec::Version(7),
            VersionSpec::Timestamp(1700),
            VersionSpec::Changes {
                start: 2,
                end: None,
            },
            VersionSpec::Changes {
                start: 2,
                end: Some(9),
            },
        ] {
            let name = spec.relation_name("orders");
            assert_eq!(VersionSpec::parse_relation(&name), Some(("orders", spec)));
        }
        assert_eq!(VersionSpec::parse_relation("orders@x"), None);
        assert_eq!(VersionSpec::parse_relation("orders@vx"), None);
    }
}
