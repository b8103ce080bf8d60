//! A model's SELECT: the tables it reads (its dependencies), and the statement one run
//! executes, with every source pinned to the version the run read.
//!
//! `stream('layer.t')` marks an incremental source: a run rewrites it into the change data
//! feed between the model's watermark and the version it consumes up to,
//! `(SELECT * FROM table_changes('layer.t', from, to) WHERE <change types>)`. Every other table
//! is pinned with `VERSION AS OF`, so what a commit records as read is what was read. The
//! text produced goes through `engine::sql::parse` like any statement (guards, time travel),
//! and plans in the run-as principal's secure session.

use std::collections::{BTreeMap, BTreeSet};
use std::ops::ControlFlow;

use datafusion::sql::sqlparser::ast::{
    self, Expr, FunctionArg, FunctionArgExpr, ObjectName, ObjectNamePart, Query, TableFactor,
    Value, Visit, VisitMut, Visitor, VisitorMut,
};
use datafusion::sql::sqlparser::parser::Parser;

use crate::engine::sql::StrataDialect;
use crate::error::{Error, Result};
use crate::storage::{TableRef, VersionSpec};

/// The name of the incremental-source marker.
const STREAM: &str = "stream";

/// The tables a SELECT reads.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct Reads {
    /// Read through `stream(…)`: from the watermark.
    pub(crate) streams: BTreeSet<TableRef>,
    /// Read whole.
    pub(crate) tables: BTreeSet<TableRef>,
}

impl Reads {
    pub(crate) fn all(&self) -> impl Iterator<Item = &TableRef> {
        self.streams.iter().chain(self.tables.iter())
    }

    /// Every table read, and whether through `stream(…)`.
    pub(crate) fn tagged(&self) -> impl Iterator<Item = (&TableRef, bool)> {
        self.streams
            .iter()
            .map(|s| (s, true))
            .chain(self.tables.iter().map(|s| (s, false)))
    }
}

pub(super) fn parse_select(sql: &str) -> Result<Query> {
    let dialect = StrataDialect::default();
    let mut statements = Parser::new(&dialect)
        .with_recursion_limit(64)
        .try_with_sql(sql)
        .and_then(|mut p| p.parse_statements())
        .map_err(|e| Error::invalid(format!("the model's SQL does not parse: {e}")))?;
    match (statements.pop(), statements.is_empty()) {
        (Some(ast::Statement::Query(q)), true) => Ok(*q),
        _ => Err(Error::invalid(
            "a model is exactly one SELECT (no other statements, no semicolon-separated list)",
        )),
    }
}

fn resolve(name: &ObjectName, default_layer: &str) -> Result<TableRef> {
    let parts: Vec<String> = name
        .0
        .iter()
        .map(|p| match p {
            ObjectNamePart::Identifier(i) => Ok(i.value.to_ascii_lowercase()),
            other => Err(Error::invalid(format!(
                "unsupported table name part {other}"
            ))),
        })
        .collect::<Result<_>>()?;
    match parts.as_slice() {
        [t] => TableRef::new(default_layer, t),
        [l, t] => TableRef::new(l, t),
        [c, l, t] if c == crate::storage::CATALOG_NAME => TableRef::new(l, t),
        _ => Err(Error::invalid(format!("{name} is not a layer.table name"))),
    }
}

/// The table of `stream('layer.t')`.
fn stream_source(args: &ast::TableFunctionArgs, default_layer: &str) -> Result<TableRef> {
    let usage = "stream('layer.table')";
    match args.args.as_slice() {
        [FunctionArg::Unnamed(FunctionArgExpr::Expr(Expr::Value(v)))] => match &v.value {
            Value::SingleQuotedString(s) => {
                let parts: Vec<&str> = s.split('.').map(str::trim).collect();
                match parts.as_slice() {
                    [t] => TableRef::new(default_layer, &t.to_ascii_lowercase()),
                    [l, t] => TableRef::new(&l.to_ascii_lowercase(), &t.to_ascii_lowercase()),
                    _ => Err(Error::invalid(format!(
                        "{usage}: {s:?} is not a table name"
                    ))),
                }
            }
            other => Err(Error::invalid(format!(
                "{usage}: {other} is not a table name"
            ))),
        },
        _ => Err(Error::invalid(format!("usage: {usage}"))),
    }
}

fn is_stream(name: &ObjectName) -> bool {
    name.0.len() == 1 && name.to_string().eq_ignore_ascii_case(STREAM)
}

/// Names of CTEs, which are not tables.
fn cte_names(q: &Query) -> BTreeSet<String> {
    struct Ctes(BTreeSet<String>);
    impl Visitor for Ctes {
        type Break = ();
        fn pre_visit_query(&mut self, q: &Query) -> ControlFlow<()> {
            if let Some(with) = &q.with {
                for cte in &with.cte_tables {
                    self.0.insert(cte.alias.name.value.to_ascii_lowercase());
                }
            }
            ControlFlow::Continue(())
        }
    }
    let mut c = Ctes(BTreeSet::new());
    let _ = q.visit(&mut c);
    c.0
}

/// The tables `sql` reads. A model reads the change feed only through `stream(…)`.
pub(crate) fn reads(sql: &str, default_layer: &str) -> Result<Reads> {
    struct Collect<'a> {
        default_layer: &'a str,
        ctes: BTreeSet<String>,
        reads: Reads,
        error: Option<Error>,
    }
    impl Visitor for Collect<'_> {
        type Break = ();
        fn pre_visit_table_factor(&mut self, tf: &TableFactor) -> ControlFlow<()> {
            let TableFactor::Table { name, args, .. } = tf else {
                return ControlFlow::Continue(());
            };
            let found = match args {
                Some(args) if is_stream(name) => {
                    stream_source(args, self.default_layer).map(|t| (true, t))
                }
                Some(_) => Err(Error::invalid(format!(
                    "table function {name} cannot be used in a model; read a source's changes with stream('layer.table')"
                ))),
                None if name.0.len() == 1
                    && self.ctes.contains(&name.to_string().to_ascii_lowercase()) =>
                {
                    return ControlFlow::Continue(());
                }
                None => resolve(name, self.default_layer).map(|t| (false, t)),
            };
            match found {
                Ok((true, t)) => {
                    self.reads.streams.insert(t);
                }
                Ok((false, t)) => {
                    self.reads.tables.insert(t);
                }
                Err(e) => {
                    self.error = Some(e);
                    return ControlFlow::Break(());
                }
            }
            ControlFlow::Continue(())
        }
    }
    let q = parse_select(sql)?;
    let mut c = Collect {
        default_layer,
        ctes: cte_names(&q),
        reads: Reads::default(),
        error: None,
    };
    let _ = q.visit(&mut c);
    match c.error {
        Some(e) => Err(e),
        None => Ok(c.reads),
    }
}

/// What a run reads of one source.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Pin {
    /// The whole table at this version.
    Version(u64),
    /// Changes of versions `from..=to`; `None`: no new changes (an empty relation of the
    /// feed's shape, read at `at`).
    Changes { range: Option<(u64, u64)>, at: u64 },
    /// A stream read whole for a full refresh: every row of the table at this version as an
    /// insert (`_commit_version` = the version, `_commit_timestamp` NULL).
    Snapshot(u64),
}

/// Which change rows a `stream(…)` yields.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum ChangeRows {
    /// Inserts and update post-images (`append`).
    Inserted,
    /// Inserts, update post-images and deletes (`merge`, `scd2`).
    WithDeletes,
}

/// `sql` with every source pinned as `pins` says (every source of [`reads`] must have one).
pub(crate) fn pinned(
    sql: &str,
    default_layer: &str,
    pins: &BTreeMap<TableRef, Pin>,
    rows: ChangeRows,
) -> Result<String> {
    struct Rewrite<'a> {
        default_layer: &'a str,
        ctes: BTreeSet<String>,
        pins: &'a BTreeMap<TableRef, Pin>,
        rows: ChangeRows,
        error: Option<Error>,
    }
    impl Rewrite<'_> {
        fn pin(&self, t: &TableRef) -> Result<Pin> {
            self.pins
                .get(t)
                .copied()
                .ok_or_else(|| Error::internal(format!("no version chosen for {t}")))
        }

        /// `layer."name@vN"` where `layer.name` is pinned to `Snapshot(N)`.
        fn is_snapshot(&self, name: &ObjectName) -> bool {
            let [
                ObjectNamePart::Identifier(layer),
                ObjectNamePart::Identifier(relation),
            ] = name.0.as_slice()
            else {
                return false;
            };
            self.pins.iter().any(|(t, pin)| {
                matches!(pin, Pin::Snapshot(v)
                    if layer.value == t.layer.as_str()
                        && relation.value == VersionSpec::Version(*v).relation_name(&t.name))
            })
        }

        fn changes(&self, t: &TableRef, pin: Pin) -> Result<Query> {
            let types = match self.rows {
                ChangeRows::Inserted => "'insert', 'update_postimage'",
                ChangeRows::WithDeletes => "'insert', 'update_postimage', 'delete'",
            };
            let text = match pin {
                Pin::Changes {
                    range: Some((from, to)),
                    ..
                } => format!(
                    "SELECT * FROM table_changes('{t}', {from}, {to}) WHERE _change_type IN ({types})"
                ),
                Pin::Changes { range: None, at } => {
                    format!("SELECT * FROM table_changes('{t}', {at}, {at}) WHERE false")
                }
                Pin::Snapshot(v) => format!(
                    "SELECT *, 'insert' AS _change_type, CAST({v} AS BIGINT) AS _commit_version, \
                     CAST(NULL AS TIMESTAMP) AS _commit_timestamp FROM {layer}.\"{relation}\"",
                    layer = t.layer,
                    relation = VersionSpec::Version(v).relation_name(&t.name)
                ),
                Pin::Version(_) => {
                    return Err(Error::internal(format!("{t} is read as a stream")));
                }
            };
            parse_select(&text)
        }
    }
    impl VisitorMut for Rewrite<'_> {
        type Break = ();
        fn pre_visit_table_factor(&mut self, tf: &mut TableFactor) -> ControlFlow<()> {
            // A stream marker becomes a derived table of its changes.
            if let TableFactor::Table {
                name, args, alias, ..
            } = tf
                && let Some(a) = args.as_ref()
                && is_stream(name)
            {
                let replaced = stream_source(a, self.default_layer).and_then(|t| {
                    let q = self.changes(&t, self.pin(&t)?)?;
                    Ok((t, q))
                });
                match replaced {
                    Ok((t, q)) => {
                        let alias = alias.take().unwrap_or_else(|| ast::TableAlias {
                            explicit: true,
                            name: ast::Ident::new(t.name.clone()),
                            columns: vec![],
                            at: None,
                        });
                        *tf = TableFactor::Derived {
                            lateral: false,
                            subquery: Box::new(q),
                            alias: Some(alias),
                            sample: None,
                        };
                        return ControlFlow::Continue(());
                    }
                    Err(e) => {
                        self.error = Some(e);
                        return ControlFlow::Break(());
                    }
                }
            }
            let result = match tf {
                // The snapshot relation a `Pin::Snapshot` stream became (visited after its
                // rewrite): already pinned.
                TableFactor::Table {
                    name, args: None, ..
                } if self.is_snapshot(name) => Ok(()),
                TableFactor::Table {
                    name,
                    args: None,
                    version,
                    alias,
                    ..
                } if !(name.0.len() == 1
                    && self.ctes.contains(&name.to_string().to_ascii_lowercase())) =>
                {
                    resolve(name, self.default_layer)
                        .and_then(|t| {
                            if version.is_some() {
                                return Err(Error::invalid(format!(
                                    "{t}: a model reads its sources' current versions; time travel is not allowed in models"
                                )));
                            }
                            Ok((t.clone(), self.pin(&t)?))
                        })
                        .and_then(|(t, pin)| match pin {
                            // The versioned relation name the secure catalog resolves (what
                            // `VERSION AS OF` becomes in engine::sql), aliased to the table's
                            // name so `orders.col` keeps working.
                            Pin::Version(v) => {
                                *name = ObjectName(vec![
                                    ObjectNamePart::Identifier(ast::Ident::new(t.layer.as_str())),
                                    ObjectNamePart::Identifier(ast::Ident::with_quote(
                                        '"',
                                        VersionSpec::Version(v).relation_name(&t.name),
                                    )),
                                ]);
                                if alias.is_none() {
                                    *alias = Some(ast::TableAlias {
                                        explicit: true,
                                        name: ast::Ident::new(t.name.clone()),
                                        columns: vec![],
                                        at: None,
                                    });
                                }
                                Ok(())
                            }
                            Pin::Changes { .. } | Pin::Snapshot(_) => {
                                Err(Error::internal(format!("{t} is read whole and as a stream")))
                            }
                        })
                }
                _ => Ok(()),
            };
            match result {
                Ok(()) => ControlFlow::Continue(()),
                Err(e) => {
                    self.error = Some(e);
                    ControlFlow::Break(())
                }
            }
        }
    }
    let mut q = parse_select(sql)?;
    let mut r = Rewrite {
        default_layer,
        ctes: cte_names(&q),
        pins,
        rows,
        error: None,
    };
    let _ = VisitMut::visit(&mut q, &mut r);
    match r.error {
        Some(e) => Err(e),
        None => Ok(q.to_string()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(s: &str) -> TableRef {
        TableRef::parse(s).unwrap()
    }

    #[test]
    fn reads_finds_tables_and_streams_but_not_ctes() -> Result<()> {
        let r = reads(
            "WITH recent AS (SELECT * FROM stream('bronze.orders')) \
             SELECT r.*, c.name FROM recent r JOIN silver.customers c ON r.cid = c.id \
             WHERE r.x IN (SELECT x FROM gold.x)",
            "gold",
        )?;
        assert_eq!(r.streams, [t("bronze.orders")].into());
        assert_eq!(r.tables, [t("silver.customers"), t("gold.x")].into());
        let bare = reads("SELECT * FROM y", "silver")?;
        assert_eq!(bare.tables, [t("silver.y")].into());
        for bad in [
            "SELECT * FROM table_changes('bronze.o', 1)",
            "SELECT 1; SELECT 2",
            "DELETE FROM bronze.o",
            "SELECT * FROM stream(1)",
        ] {
            assert!(
                matches!(reads(bad, "gold"), Err(Error::InvalidArgument(_))),
                "{bad}"
            );
        }
        Ok(())
    }

    #[test]
    fn sources_are_pinned_to_what_the_run_reads() -> Result<()> {
        let pins = [
            (
                t("bronze.orders"),
                Pin::Changes {
                    range: Some((3, 7)),
                    at: 7,
                },
            ),
            (t("silver.customers"), Pin::Version(4)),
        ]
        .into();
        let sql = pinned(
            "SELECT o.id, c.name FROM stream('bronze.orders') o JOIN silver.customers c ON o.cid = c.id",
            "gold",
            &pins,
            ChangeRows::Inserted,
        )?;
        assert!(
            sql.contains("(SELECT * FROM table_changes('bronze.orders', 3, 7) WHERE _change_type IN ('insert', 'update_postimage')) o"),
            "{sql}"
        );
        assert!(sql.contains("silver.\"customers@v4\" c"), "{sql}");
        let bare = pinned(
            "SELECT customers.name FROM silver.customers",
            "gold",
            &pins,
            ChangeRows::Inserted,
        )?;
        assert!(
            bare.contains("silver.\"customers@v4\" AS customers"),
            "{bare}"
        );
        let empty = pinned(
            "SELECT * FROM stream('bronze.orders')",
            "gold",
            &[(t("bronze.orders"), Pin::Changes { range: None, at: 9 })].into(),
            ChangeRows::WithDeletes,
        )?;
        assert!(
            empty.contains("table_changes('bronze.orders', 9, 9) WHERE false) AS orders"),
            "{empty}"
        );
        let travel = pinned(
            "SELECT * FROM silver.customers VERSION AS OF 1",
            "gold",
            &pins,
            ChangeRows::Inserted,
        );
        assert!(
            matches!(travel, Err(Error::InvalidArgument(_))),
            "{travel:?}"
        );
        Ok(())
    }
}
