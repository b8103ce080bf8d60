//! Read-side enforcement.
//!
//! Invariant: every `TableScan` that reaches execution is a [`table::PolicyTable`] bound to
//! the session's principal. [`catalog::SecureCatalog`] is the only way a table enters a plan
//! (current versions, time travel and `information_schema` alike), and
//! [`guard::PolicyGuard`] re-checks the finished logical plan, subqueries included, and fails
//! closed if anything else appears. Row filters and column masks ([`model`]) are compiled for
//! the principal ([`expr`]) and applied inside the `PolicyTable`, below every user predicate;
//! writes check the same filters ([`write`]). The policy document lives on the object store
//! ([`store`]).

pub(crate) mod catalog;
pub(crate) mod expr;
pub(crate) mod guard;
pub(crate) mod information;
pub(crate) mod model;
pub(crate) mod store;
pub(crate) mod table;
pub(crate) mod views;
pub(crate) mod visible;
pub(crate) mod write;

pub(crate) use catalog::SecureCatalog;
pub(crate) use guard::PolicyGuard;
pub(crate) use table::{
    Enforcement, PolicyExec, PolicyTable, ScanSpec, ShipScans, restricted_scan,
};
pub(crate) use views::{SystemView, SystemViews, ViewRows};
