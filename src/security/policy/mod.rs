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

pub mod catalog;
pub mod expr;
pub mod guard;
pub mod model;
pub mod store;
pub mod table;
pub mod visible;
pub mod write;

pub use catalog::SecureCatalog;
pub use guard::PolicyGuard;
pub use table::PolicyTable;
