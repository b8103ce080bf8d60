//! Read-side enforcement.
//!
//! Invariant: every `TableScan` that reaches execution is a [`table::PolicyTable`] bound to
//! the session's principal. [`catalog::SecureCatalog`] is the only way a table enters a plan
//! (current versions, time travel and `information_schema` alike), and
//! [`guard::PolicyGuard`] re-checks the finished logical plan, subqueries included, and fails
//! closed if anything else appears.

pub mod catalog;
pub mod guard;
pub mod table;

pub use catalog::SecureCatalog;
pub use guard::PolicyGuard;
pub use table::PolicyTable;
